"""Train the reference tutorial's CNN on MNIST (or Fashion-MNIST) with cnn_ext.

    python examples/train_mnist.py                       # data from --data-dir, $CNN_EXT_DATA, the cache or a download
    CNN_EXT_DATA=../shared/data/mnist python examples/train_mnist.py --epochs 12

The network, batch size, learning rate and loss are the tutorial's: Conv2D(1, 4, 5), Flatten, Dense(2304, 256),
ReLU, Dense(256, 128), ReLU, Dense(128, 32), ReLU, Dense(32, 10), Sigmoid; batches of 16, plain SGD with lr 0.1,
MSE on one-hot targets, float32 by default. A validation split (--val-size samples) is held out of the training
set: training stops early once the validation accuracy reaches --target (MNIST: the tutorial's 96.8%), and the
test set is evaluated once, at the end. When no full dataset can be found or downloaded, it trains on the
2,000-digit MNIST sample shipped in the package and says so. With matplotlib installed, the train and validation
curves and the target line are written to train_<dataset>_curves.png in --out (default: the working directory).
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import cnn_ext
from cnn_ext import (Conv2D, Dense, Flatten, Network, ReLU, Sigmoid, get_current_accuracy, mse, mse_loss)
from cnn_ext.datasets import batches, load_fashion_mnist, load_mnist, load_mnist_sample, one_hot

if str(Path(__file__).resolve().parent) not in sys.path:  # examples/curves.py, also when run from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import hold_out, save_curves  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the bar is a nicety: train without it
    tqdm = None

TUTORIAL_TARGET = 0.968
VAL_SIZE = {True: 5000, False: 300}  # validation samples held out of the full training set / of the sample


def build_network(dtype, seed):
    rng = np.random.default_rng(seed)
    kw = dict(rng=rng, dtype=dtype)
    return Network([
        Conv2D(1, 4, 5, **kw), Flatten(),
        Dense(2304, 256, **kw), ReLU(),
        Dense(256, 128, **kw), ReLU(),
        Dense(128, 32, **kw), ReLU(),
        Dense(32, 10, **kw), Sigmoid(),
    ])


def load_data(args, dtype):
    """(train, test, description); falls back to the shipped sample when the full set is unreachable."""
    loader, title = (load_mnist, "MNIST") if args.dataset == "mnist" else (load_fashion_mnist, "Fashion-MNIST")
    try:
        train, test = loader(args.data_dir, dtype=dtype, download=not args.no_download)
        return train, test, f"{title} ({len(train[1])} train / {len(test[1])} test images)", True
    except FileNotFoundError as exc:
        print(f"Full {title} not available:\n{exc}\n", file=sys.stderr)
    train, test = load_mnist_sample(dtype=dtype)
    note = "" if args.dataset == "mnist" else f" (digits, not {title})"
    print(f"Training on the MNIST sample shipped with cnn_ext{note}: {len(train[1])} train / {len(test[1])} test "
          "digits. Accuracy will be far below the full set's; put the four files named above in the directory "
          "shown, or point --data-dir / CNN_EXT_DATA at them, for the real run.")
    return train, test, f"MNIST sample ({len(train[1])} train / {len(test[1])} test digits)", False


def train_epoch(net, x_batches, y_batches, lr, desc):
    """One pass of SGD over the batches; returns the mean MSE and the accuracy on the batches as they were trained."""
    n_images = sum(len(x) for x in x_batches)
    bar = tqdm(total=n_images, desc=desc, unit="img", unit_scale=True, leave=True) if tqdm else None
    total_loss, correct = 0.0, 0
    for i, (x, y) in enumerate(zip(x_batches, y_batches)):
        out = net.forward(x)
        total_loss += mse(out, y)
        correct += int(np.count_nonzero(out.argmax(axis=1) == y.argmax(axis=1)))
        net.update(lr, net.backward(mse_loss(out, y)))
        if bar is not None:
            bar.update(len(x))
            if i % 50 == 0:
                bar.set_postfix(loss=f"{total_loss / (i + 1):.4f}", refresh=False)
    if bar is not None:
        bar.set_postfix(loss=f"{total_loss / len(x_batches):.4f}")
        bar.close()
    return total_loss / len(x_batches), correct / n_images


def evaluate(net, x, labels):
    """(MSE against one-hot targets, accuracy) of the network on (x, labels)."""
    out = net.predict(x)
    return mse(out, one_hot(labels, 10, out.dtype)), float(np.mean(out.argmax(axis=1) == labels))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train the tutorial's CNN on MNIST / Fashion-MNIST with cnn_ext.")
    ap.add_argument("--epochs", type=int, default=15, help="maximum number of epochs (default 15)")
    ap.add_argument("--target", type=float, default=None,
                    help="stop once the validation accuracy reaches this fraction (default 0.968 for MNIST, "
                         "none for Fashion-MNIST and the sample; 0 disables)")
    ap.add_argument("--val-size", type=int, default=None,
                    help="training samples held out for validation (default 5000; 300 of the shipped sample)")
    ap.add_argument("--data-dir", default=None, help="directory with the IDX .gz files (default $CNN_EXT_DATA, "
                                                     "else ~/.cache/cnn_ext)")
    ap.add_argument("--dataset", choices=("mnist", "fashion"), default="mnist")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--threads", type=int, default=cnn_ext.get_num_threads(),
                    help="threads for the conv kernels (default: cnn_ext.get_num_threads(), i.e. OMP_NUM_THREADS "
                         "or all cores). BLAS stays on 1 thread: the Dense products of a batch of 16 are too "
                         "small to gain from BLAS threads, which would only fight the kernel threads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--no-download", action="store_true", help="never try to download the dataset")
    ap.add_argument("--out", default=".", help="directory for the curves' PNG (default: the working directory)")
    ap.add_argument("--plot", default=None, help="PNG path for the curves (default <out>/train_<dataset>_curves.png)")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.batch_size < 1:
        ap.error("--epochs, --threads and --batch-size must be >= 1")
    if args.val_size is not None and args.val_size < 1:
        ap.error("--val-size must be >= 1")
    return args


def run(args):
    """Load the data, hold out the validation split, train, print the per-epoch lines and the summary (with the
    test accuracy, measured once), write the curves.

    Returns a dict: description, full (False for the shipped sample), n_train, n_val, n_test, history (per-epoch
    loss, accuracy, val_loss, val_accuracy), test_accuracy, minutes, target, reached (the epoch whose validation
    accuracy reached the target, or None), plot (the PNG written, or None) and plot_lines (its lines' labels).
    """
    dtype = np.dtype(args.dtype)
    (x_full, y_full), (x_test, y_test), description, full = load_data(args, dtype)
    n_val = VAL_SIZE[full] if args.val_size is None else args.val_size
    (x_train, y_train), (x_val, y_val) = hold_out(x_full, y_full, n_val, args.seed)
    target = args.target if args.target is not None else (TUTORIAL_TARGET if full and args.dataset == "mnist" else 0)
    net = build_network(dtype, args.seed)
    shuffle_rng = np.random.default_rng(args.seed + 1)
    print(f"{description}; {len(y_train)} train / {len(y_val)} validation images held out of the training set; "
          f"{args.dtype}, {args.threads} thread(s), batch {args.batch_size}, lr {args.lr}")
    print(net)

    history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
    reached = None
    previous_threads = cnn_ext.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        # Measured on 2 cores: BLAS threads gain nothing on these (16 x 2304) @ (2304 x 256) products and their
        # spinning workers fight the kernel threads; with another process busy a step went from 2.5 ms to 115 ms.
        with threadpool_limits(limits=1, user_api="blas"):
            for epoch in range(1, args.epochs + 1):
                x_batches, y_batches = batches(x_train, y_train, args.batch_size, num_classes=10, shuffle=True,
                                               seed=shuffle_rng)
                loss, accuracy = train_epoch(net, x_batches, y_batches, args.lr, f"epoch {epoch}/{args.epochs}")
                val_loss, val_accuracy = evaluate(net, x_val, y_val)
                for key, value in zip(history, (loss, accuracy, val_loss, val_accuracy)):
                    history[key].append(value)
                minutes = (time.perf_counter() - start) / 60
                print(f"epoch {epoch}: loss {loss:.4f}, validation loss {val_loss:.4f}, validation accuracy "
                      f"{100 * val_accuracy:.2f}% ({minutes:.2f} min)", flush=True)
                if target and val_accuracy >= target:
                    reached = epoch
                    break
            test_accuracy = get_current_accuracy(net, x_test, y_test)  # once, after every choice was made
    finally:
        cnn_ext.set_num_threads(previous_threads)
    minutes = (time.perf_counter() - start) / 60

    epochs_run = len(history["loss"])
    print(f"\nSummary: {description}; {epochs_run} epoch(s) in {minutes:.2f} min "
          f"({60 * minutes / epochs_run:.1f} s/epoch); validation accuracy {100 * history['val_accuracy'][-1]:.2f}%, "
          f"test accuracy {100 * test_accuracy:.2f}% ({len(y_test)} images, measured once).")
    if target:
        if reached:
            print(f"Reached the {100 * target:.1f}% target on the validation split after {reached} epoch(s), "
                  f"{minutes:.2f} min.")
        else:
            print(f"Did not reach the {100 * target:.1f}% target in {args.epochs} epoch(s).")
    plot = Path(args.plot) if args.plot else Path(args.out) / f"train_{args.dataset}_curves.png"
    lines = save_curves(plot, history, f"{description}, {args.dtype}", target, loss_name="MSE")
    if lines is not None:
        print(f"Curves written to {plot}")
    return dict(description=description, full=full, n_train=len(y_train), n_val=len(y_val), n_test=len(y_test),
                history=history, test_accuracy=test_accuracy, minutes=minutes, target=target, reached=reached,
                plot=plot if lines is not None else None, plot_lines=lines)


def main(argv=None):
    result = run(parse_args(argv))
    return 0 if not result["target"] or result["reached"] else 1


if __name__ == "__main__":
    sys.exit(main())
