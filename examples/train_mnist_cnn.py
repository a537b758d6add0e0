"""Train a modern small CNN on MNIST or Fashion-MNIST with cnn_ext (float32, Adam, softmax cross-entropy).

    CNN_EXT_DATA=../shared/data/mnist python examples/train_mnist_cnn.py                 # MNIST, >= 99.0%
    python examples/train_mnist_cnn.py --dataset fashion --epochs 12                      # Fashion-MNIST, >= 91%

Network (PyTorch's shape conventions, 28x28 inputs):

    Conv2D(1, 32, 3, padding='same') -> ReLU -> MaxPool2D(2)       # 32 x 14 x 14
    Conv2D(32, 64, 3, padding='same') -> ReLU -> MaxPool2D(2)      # 64 x 7 x 7
    Flatten -> Dense(3136, 128) -> ReLU -> Dense(128, 10)          # logits

He-normal initialisation, batches of 64, Adam(lr=1e-3) with the learning rate multiplied by --lr-decay (0.7)
after every epoch (a StepLR schedule), softmax cross-entropy on the logits. A validation split (--val-size images)
is held out of the training set: its accuracy is measured after every epoch and training stops early once it reaches --target; the
test set is evaluated once, at the end. With matplotlib installed, the train and validation curves and the
target line are written to train_cnn_<dataset>_curves.png in --out (default: the working directory).
Data: --data-dir, else
$CNN_EXT_DATA or the cache (see cnn_ext.datasets); for Fashion-MNIST also the Debian package location
/usr/share/datasets/fashion-mnist. --save writes the trained network with cnn_ext.save.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import cnn_ext
from cnn_ext import Adam, Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, fit, get_current_accuracy
from cnn_ext.datasets import load_fashion_mnist, load_mnist
from cnn_ext.schedules import StepLR

if str(Path(__file__).resolve().parent) not in sys.path:  # examples/curves.py, also when run from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from curves import hold_out, save_curves  # noqa: E402

DATASETS = {
    "mnist": (load_mnist, "MNIST", 0.990, 6),
    "fashion": (load_fashion_mnist, "Fashion-MNIST", 0.910, 15),
}
SYSTEM_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package


def build_network(seed, dtype=np.float32):
    """The small CNN above, He-initialised from one seeded generator."""
    rng = np.random.default_rng(seed)
    kw = dict(init="he_normal", rng=rng, dtype=dtype)
    return Network([
        Conv2D(1, 32, 3, padding="same", **kw), ReLU(), MaxPool2D(2),
        Conv2D(32, 64, 3, padding="same", **kw), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(64 * 7 * 7, 128, **kw), ReLU(),
        Dense(128, 10, **kw),
    ])


def load_data(dataset, data_dir, download, dtype=np.float32):
    loader, title, _, _ = DATASETS[dataset]
    if data_dir is None and dataset == "fashion" and SYSTEM_FASHION_DIR.is_dir():
        data_dir, download = SYSTEM_FASHION_DIR, False
    (x_train, y_train), (x_test, y_test) = loader(data_dir, dtype=dtype, download=download)
    return (x_train, y_train), (x_test, y_test), title


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--epochs", type=int, default=None,
                        help="maximum epochs (default: 6 for MNIST, 15 for Fashion-MNIST)")
    parser.add_argument("--target", type=float, default=None,
                        help="stop once the validation accuracy reaches this fraction (default: 0.99 / 0.91); "
                             "0 disables")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--out", default=".", help="directory for the curves' PNG (default: the working directory)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lr-decay", type=float, default=0.7, help="learning-rate factor after each epoch")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--no-download", action="store_true", help="never download missing files")
    parser.add_argument("--threads", type=int, default=None, help="threads for cnn_ext and BLAS (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="write the trained network to this .npz file")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    _, title, default_target, default_epochs = DATASETS[args.dataset]
    if any(v is not None and v < 1 for v in (args.epochs, args.threads, args.batch_size)):
        parser.error("--epochs, --threads and --batch-size must be >= 1")
    if args.val_size < 1:
        parser.error("--val-size must be >= 1")
    epochs = default_epochs if args.epochs is None else args.epochs
    target = default_target if args.target is None else args.target
    if args.threads is not None:
        cnn_ext.set_num_threads(args.threads)
    threads = cnn_ext.get_num_threads()
    # every step allocates and frees the same large arrays: keep their memory rather than page-fault it
    # back in each step (Linux with glibc; elsewhere this does nothing)
    cnn_ext.keep_freed_memory()

    (x_full, y_full), (x_test, y_test), title = load_data(args.dataset, args.data_dir, not args.no_download)
    (x_train, y_train), (x_val, y_val) = hold_out(x_full, y_full, args.val_size, args.seed)
    net = build_network(args.seed)
    print(f"{title}: {len(y_train)} train / {len(y_val)} validation (held out of the training set) / "
          f"{len(y_test)} test images; {threads} thread(s); float32\n{net}")

    optimizer = Adam(args.lr)
    schedule = StepLR(optimizer, step_size=1, gamma=args.lr_decay)

    def end_of_epoch(epoch, history):
        return target > 0 and history["val_accuracy"][-1] >= target

    start = time.perf_counter()
    with threadpool_limits(threads, user_api="blas"):
        history = fit(net, x_train, y_train, epochs=epochs, batch_size=args.batch_size, optimizer=optimizer,
                      seed=args.seed, validation_data=(x_val, y_val), on_epoch_end=end_of_epoch,
                      callbacks=[schedule], progress=not args.no_progress)
        accuracy = get_current_accuracy(net, x_test, y_test)  # once, after every choice was made
    minutes = (time.perf_counter() - start) / 60
    per_epoch = np.mean(history["time"])
    reached = target > 0 and history["val_accuracy"][-1] >= target
    print(f"\n{title}: validation accuracy {100 * history['val_accuracy'][-1]:.2f}% after "
          f"{history['epochs_run']} epoch(s) (target {100 * target:.1f}% {'reached' if reached else 'NOT reached'}); "
          f"test accuracy {100 * accuracy:.2f}%, measured once; {minutes:.1f} min in all "
          f"({per_epoch:.0f} s per epoch incl. validation)")
    plot = Path(args.out) / f"train_cnn_{args.dataset}_curves.png"
    if save_curves(plot, history, f"{title}, float32, Adam", target, loss_name="cross-entropy") is not None:
        print(f"Curves written to {plot}")
    if args.save:
        print(f"saved to {cnn_ext.save(net, args.save)}")
    return accuracy


if __name__ == "__main__":
    main()
