"""Data-parallel training with ``fit(comm=...)``: every rank trains on its slice of each batch, gradients averaged.

    pip install mpi4py mpich        # or: pip install "cnn_ext[mpi]"
    mpiexec -n 2 python examples/train_mpi.py

A small CNN on the MNIST sample shipped in the package; 32 samples per rank and step, so 2 ranks take the steps of
one process with batches of 64. The last fifth of the training images is held out for validation
(``validation_split``), and the test set is evaluated once, at the end. Only rank 0 prints and saves the network. For the same training in
a loop of your own (``allreduce_gradients`` after each ``backward``) see ``train_mnist_mpi.py``.
"""
import argparse

import numpy as np
from mpi4py import MPI

import cnn_ext
from cnn_ext import Adam, Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU
from cnn_ext.datasets import load_mnist_sample


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="samples per rank and step")
    parser.add_argument("--save", default=None, help="write the trained network here (rank 0 only)")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be >= 1")
    comm = MPI.COMM_WORLD
    cnn_ext.set_num_threads(1)  # one process per core

    (x_train, y_train), (x_test, y_test) = load_mnist_sample(dtype=np.float32)  # the same data on every rank
    # every rank builds the network (fit checks they match) and gets rank 0's initial values
    net = Network([Conv2D(1, 8, 3, init="he_normal", seed=comm.Get_rank(), dtype=np.float32), ReLU(), MaxPool2D(2),
                   Flatten(), Dense(8 * 13 * 13, 10, init="glorot_uniform", seed=1, dtype=np.float32)])
    history = cnn_ext.fit(net, x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                          optimizer=Adam(1e-3), loss="softmax_cross_entropy", seed=0,
                          validation_split=0.2, progress=False, comm=comm)
    if comm.Get_rank() == 0:
        test_loss, test_accuracy = cnn_ext.evaluate(net, x_test, y_test, loss="softmax_cross_entropy")
        print(f"{comm.Get_size()} rank(s), {history['epochs_run']} epoch(s): validation accuracy "
              f"{100 * history['val_accuracy'][-1]:.2f}%, test accuracy {100 * test_accuracy:.2f}% (once, at the end)",
              flush=True)
        if args.save:
            cnn_ext.save(net, args.save)


if __name__ == "__main__":
    main()
