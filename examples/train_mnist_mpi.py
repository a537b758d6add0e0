"""examples/train_mnist.py over MPI: the tutorial's CNN on MNIST, each step's batch of 16 split over the ranks.

    pip install mpi4py mpich                # or: pip install "cnn_ext[mpi]"
    CNN_EXT_DATA=../shared/data/mnist mpiexec -n 2 python examples/train_mnist_mpi.py

The same network, initialisation, shuffled batches, MSE gradient, learning rate and target (96.8%) as
examples/train_mnist.py, whose options it takes. Every rank draws the same shuffled global batches of
--batch-size (16) samples and trains on its contiguous slice (8 + 8 on 2 ranks); cnn_ext.distributed's
allreduce_gradients combines the slices' gradients into the whole batch's, weighting each by the measured
batch power of its gradient (the tutorial's layers mix batch means and batch sums: see batch_powers), so each
step is the single-process step up to the order of the sums, and the run reaches the target in the same number
of epochs. The same validation split is held out of the training set on every rank; it decides when to stop, and
the test set is evaluated once, at the end. One OpenMP thread per rank unless --threads is given. Only rank 0
loads the data verbosely, evaluates, prints (per epoch: loss, validation loss and accuracy, training throughput in
images per second and the share of the time spent in the Allreduce) and writes the curves; its stop decision is
broadcast. An exception on any rank ends the job.
"""
import contextlib
import io
import sys
import time

import numpy as np
from mpi4py import MPI
from threadpoolctl import threadpool_limits

import cnn_ext
from cnn_ext import get_current_accuracy, mse, mse_loss
from cnn_ext.datasets import batches
from cnn_ext.distributed import abort_on_error, allreduce_gradients, batch_powers, broadcast_parameters
from train_mnist import TUTORIAL_TARGET, VAL_SIZE, build_network, evaluate, hold_out, load_data, parse_args, save_curves


def _mse_pair(prediction, target):
    """(loss, dE_dY) of the tutorial's MSE, as batch_powers measures a loss."""
    return mse(prediction, target), mse_loss(prediction, target)


def _zero_gradients(net):
    """The gradient dicts of a rank without samples in a step: zeros, so it adds nothing to the Allreduce."""
    grads = [{} for _ in net.layers]
    for name, key, p in net.parameters():
        grads[int(name.split(".")[0])][key] = np.zeros_like(p)
    return grads


def train_epoch(comm, net, x_batches, y_batches, lr, powers):
    """One epoch of this rank's slices; (mean MSE of the global batches, training accuracy, seconds, seconds in
    Allreduce)."""
    rank, size = comm.Get_rank(), comm.Get_size()
    local_loss, local_correct, comm_seconds = 0.0, 0, 0.0
    start = time.perf_counter()
    for x, y in zip(x_batches, y_batches):
        n = len(x)
        lo, hi = rank * n // size, (rank + 1) * n // size  # sizes differ by at most one
        if hi > lo:
            out = net.forward(x[lo:hi])
            local_loss += mse(out, y[lo:hi]) * (hi - lo) / n
            local_correct += int(np.sum(out.argmax(axis=1) == y[lo:hi].argmax(axis=1)))
            grads = net.backward(mse_loss(out, y[lo:hi]))
        else:
            grads = _zero_gradients(net)
        t = time.perf_counter()
        grads = allreduce_gradients(grads, comm, n_local=hi - lo, n_total=n, powers=powers)
        comm_seconds += time.perf_counter() - t
        net.update(lr, grads)
    seconds = time.perf_counter() - start
    total = comm.allreduce(local_loss, op=MPI.SUM)  # the global batches' mean MSEs, summed
    correct = comm.allreduce(local_correct, op=MPI.SUM)
    n_images = sum(len(y) for y in y_batches)
    return total / len(x_batches), correct / n_images, seconds, comm.allreduce(comm_seconds, op=MPI.MAX)


def run(comm, args):
    rank, size = comm.Get_rank(), comm.Get_size()
    root = rank == 0
    dtype = np.dtype(args.dtype)
    with contextlib.ExitStack() as quiet:
        if not root:  # load_data says where it looked and what it fell back to: once is enough
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        (x_full, y_full), (x_test, y_test), description, full = load_data(args, dtype)
    n_val = VAL_SIZE[full] if args.val_size is None else args.val_size
    (x_train, y_train), (x_val, y_val) = hold_out(x_full, y_full, n_val, args.seed)  # the same split on every rank
    target = args.target if args.target is not None else (TUTORIAL_TARGET if full and args.dataset == "mnist" else 0)
    net = build_network(dtype, args.seed)
    broadcast_parameters(net, comm)  # checks first that every rank built the same network
    shuffle_rng = np.random.default_rng(args.seed + 1)  # the same stream on every rank: the same global batches
    powers = batch_powers(net, x_train[:8], np.eye(10, dtype=dtype)[y_train[:8]], _mse_pair)
    if root:
        print(f"{description}; {len(y_train)} train / {len(y_val)} validation images held out of the training set; "
              f"{args.dtype}, {size} rank(s) x {args.threads} thread(s), global batch "
              f"{args.batch_size} ({args.batch_size // size}-{-(-args.batch_size // size)} per rank), lr {args.lr}")
        print(net)
    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    reached, times = None, []
    cnn_ext.set_num_threads(args.threads)
    start = time.perf_counter()
    with threadpool_limits(limits=1, user_api="blas"):  # as examples/train_mnist.py: BLAS threads gain nothing here
        for epoch in range(1, args.epochs + 1):
            x_batches, y_batches = batches(x_train, y_train, args.batch_size, num_classes=10, shuffle=True,
                                           seed=shuffle_rng)
            loss, accuracy, seconds, comm_seconds = train_epoch(comm, net, x_batches, y_batches, args.lr, powers)
            times.append(seconds)
            stop = False
            if root:
                val_loss, val_accuracy = evaluate(net, x_val, y_val)
                for key, value in zip(history, (loss, accuracy, val_loss, val_accuracy)):
                    history[key].append(value)
                print(f"epoch {epoch}: loss {loss:.4f}, validation loss {val_loss:.4f}, validation accuracy "
                      f"{100 * val_accuracy:.2f}% ({len(y_train) / seconds:.0f} images/s, {seconds:.1f} s, "
                      f"{100 * comm_seconds / seconds:.0f}% in Allreduce; {(time.perf_counter() - start) / 60:.2f} min)",
                      flush=True)
                if target and val_accuracy >= target:
                    reached = epoch
                    stop = True
            if comm.bcast(stop, root=0):
                break
    minutes = (time.perf_counter() - start) / 60
    if root:
        test_accuracy = get_current_accuracy(net, x_test, y_test)  # once, after every choice was made
        print(f"\nSummary: {description}; {size} ranks; {len(times)} epoch(s) in {minutes:.2f} min "
              f"({np.median(times):.1f} s per epoch of training, median; {len(y_train) / np.median(times):.0f} "
              f"images/s); validation accuracy {100 * history['val_accuracy'][-1]:.2f}%, test accuracy "
              f"{100 * test_accuracy:.2f}% ({len(y_test)} images, measured once).")
        if target:
            print(f"Reached the {100 * target:.1f}% target on the validation split after {reached} epoch(s)."
                  if reached else f"Did not reach the {100 * target:.1f}% target in {args.epochs} epoch(s).")
        if args.plot and save_curves(args.plot, history, f"{description}, {size} ranks", target, loss_name="MSE"):
            print(f"Curves written to {args.plot}")
    return reached, target


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if "--threads" not in argv:
        args.threads = 1  # one process per core
    comm = MPI.COMM_WORLD
    with abort_on_error(comm):
        reached, target = run(comm, args)
    return 0 if not target or reached else 1


if __name__ == "__main__":
    sys.exit(main())
