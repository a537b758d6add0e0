"""Train a small ResNet with BatchNorm on MNIST or Fashion-MNIST with cnn_ext (float32, Adam, softmax cross-entropy).

    CNN_EXT_DATA=../shared/data/mnist python examples/train_resnet.py                     # MNIST, target 99.4%
    python examples/train_resnet.py --dataset fashion                                      # target 92.5%
    python examples/train_resnet.py --limit 2000 --epochs 1                                # a quick smoke run

Network (28x28 inputs, width w = --width: 16 by default for MNIST, 24 for Fashion-MNIST):

    Conv2D(1, w, 3, padding=1) -> BatchNorm2D -> ReLU                          # w x 28 x 28
    Residual.basic_block(w, w) -> ReLU                                           # w x 28 x 28
    Residual.basic_block(w, 2w, stride=2) -> ReLU                                # 2w x 14 x 14 (1x1 conv shortcut)
    Residual.basic_block(2w, 4w, stride=2) -> ReLU                               # 4w x 7 x 7
    GlobalAvgPool2D -> Dropout(0.2) -> Dense(4w, 10)                             # logits

Training batches are augmented (cnn_ext.augment): random shifts of up to 2 pixels, and for Fashion-MNIST also
random horizontal flips (--augment none trains on the images as they are).
The last --val images of the training set (5000, after a seeded shuffle) are held out for validation: the
learning rate is chosen by it (Adam, multiplied by --lr-decay after every epoch) and the network of the best
validation epoch is kept (weights and BatchNorm statistics, through state_dict). The test set is evaluated once,
at the end, and reported with the accuracy, the epochs and the wall time.
Data: --data-dir, else $CNN_EXT_DATA or the cache (see cnn_ext.datasets); for Fashion-MNIST also the Debian
package location /usr/share/datasets/fashion-mnist.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import cnn_ext
from cnn_ext import (Adam, BatchNorm2D, Conv2D, Dense, Dropout, GlobalAvgPool2D, Network, ReLU, Residual, fit)
from cnn_ext.augment import Compose, RandomHorizontalFlip, RandomShift

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_mnist_cnn import load_data  # noqa: E402  (the same data, found the same way)

# title, target, width, epochs, learning-rate decay per epoch, augmentation (digits are not mirror images; clothes
# are); width 16 underfits Fashion-MNIST, and 14 or 20 epochs stopped on the target's edge in some runs
# (benchmarks/results/mnist_resnet.md)
DATASETS = {"mnist": ("MNIST", 0.994, 16, 10, 0.7, "shift"),
            "fashion": ("Fashion-MNIST", 0.925, 24, 30, 0.9, "shift+flip")}
AUGMENTATIONS = {"none": None, "shift": RandomShift(2), "shift+flip": Compose([RandomShift(2), RandomHorizontalFlip()])}


def build_network(width=16, seed=0, dtype=np.float32):
    """The small ResNet above; every convolution He-initialised from its own seed."""
    w = width
    kw = dict(init="he_normal", dtype=dtype)
    return Network([
        Conv2D(1, w, 3, padding=1, seed=seed, **kw), BatchNorm2D(w, dtype=dtype), ReLU(),
        Residual.basic_block(w, w, seed=seed + 10, dtype=dtype), ReLU(),
        Residual.basic_block(w, 2 * w, stride=2, seed=seed + 20, dtype=dtype), ReLU(),
        Residual.basic_block(2 * w, 4 * w, stride=2, seed=seed + 30, dtype=dtype), ReLU(),
        GlobalAvgPool2D(), Dropout(0.2, seed=seed + 40), Dense(4 * w, 10, seed=seed + 50, **kw),
    ])


def split_validation(x, y, n_val, seed):
    """(train, validation): the last n_val samples of a seeded permutation are held out."""
    order = np.random.default_rng(seed).permutation(len(y))
    train, val = order[:-n_val], order[-n_val:]
    return (x[train], y[train]), (x[val], y[val])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    mnist, fashion = DATASETS["mnist"], DATASETS["fashion"]
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default: {mnist[3]} for MNIST, {fashion[3]} for Fashion-MNIST")
    parser.add_argument("--width", type=int, default=None,
                        help=f"channels of the first stage (default: {mnist[2]} for MNIST, {fashion[2]} for "
                             "Fashion-MNIST)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lr-decay", type=float, default=None,
                        help=f"learning-rate factor after each epoch (default: {mnist[4]} for MNIST, {fashion[4]} for "
                             "Fashion-MNIST)")
    parser.add_argument("--augment", choices=["auto", *AUGMENTATIONS], default="auto",
                        help="training-batch augmentation (auto: shift for MNIST, shift+flip for Fashion-MNIST)")
    parser.add_argument("--val", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--limit", type=int, default=None, help="use only this many training images (smoke runs)")
    for flag, kw in [("--data-dir", dict(default=None)),
                     ("--no-download", dict(action="store_true", help="never download missing files")),
                     ("--threads", dict(type=int, default=None, help="threads for cnn_ext and BLAS (default: all)")),
                     ("--seed", dict(type=int, default=0)),
                     ("--save", dict(default=None, help="write the trained network to this .npz file")),
                     ("--no-progress", dict(action="store_true"))]:
        parser.add_argument(flag, **kw)
    args = parser.parse_args(argv)

    title, target, default_width, default_epochs, default_decay, default_augment = DATASETS[args.dataset]
    lr_decay = default_decay if args.lr_decay is None else args.lr_decay
    augment = AUGMENTATIONS[default_augment if args.augment == "auto" else args.augment]
    if any(v is not None and v < 1 for v in (args.epochs, args.threads, args.batch_size, args.width, args.val,
                                             args.limit)):
        parser.error("--epochs, --threads, --batch-size, --width, --val and --limit must be >= 1")
    epochs = default_epochs if args.epochs is None else args.epochs
    width = default_width if args.width is None else args.width
    if args.threads is not None:
        cnn_ext.set_num_threads(args.threads)
    threads = cnn_ext.get_num_threads()
    # every step allocates and frees the same large arrays: keep their memory rather than page-fault it
    # back in each step (Linux with glibc; elsewhere this does nothing)
    cnn_ext.keep_freed_memory()
    (x_all, y_all), (x_test, y_test), _ = load_data(args.dataset, args.data_dir, not args.no_download)
    if args.limit is not None:
        x_all, y_all = x_all[:args.limit + args.val], y_all[:args.limit + args.val]
    if args.val >= len(y_all):
        parser.error(f"--val {args.val} leaves no training images of {len(y_all)}")
    (x_train, y_train), (x_val, y_val) = split_validation(x_all, y_all, args.val, args.seed)
    net = build_network(width, args.seed)
    print(f"{title}: {len(y_train)} train / {len(y_val)} validation / {len(y_test)} test images; "
          f"{threads} thread(s); float32; augmentation: {augment}")
    net.summary(x_train.shape[1:])

    optimizer = Adam(args.lr)
    best = {"acc": -1.0, "epoch": 0, "state": None}

    def end_of_epoch(epoch, history):
        optimizer.lr *= lr_decay
        if history["val_accuracy"][-1] > best["acc"]:  # keep the best epoch, running statistics included
            best.update(acc=history["val_accuracy"][-1], epoch=epoch, state=net.state_dict())
        return False

    start = time.perf_counter()
    with threadpool_limits(threads, user_api="blas"):
        history = fit(net, x_train, y_train, epochs=epochs, batch_size=args.batch_size, optimizer=optimizer,
                      seed=args.seed, loss="softmax_cross_entropy", validation_data=(x_val, y_val),
                      on_epoch_end=end_of_epoch, progress=not args.no_progress, augment=augment)
        net.load_state_dict(best["state"])
        train_minutes = (time.perf_counter() - start) / 60
        accuracy = float(np.mean(net.predict_classes(x_test) == y_test))  # the test set, once
    saved = f"; saved to {cnn_ext.save(net, args.save)}" if args.save else ""
    reached = "reached" if accuracy >= target else "NOT reached"
    print(f"\n{title}: test accuracy {100 * accuracy:.2f}% (target {100 * target:.1f}% {reached}) with the "
          f"network of epoch {best['epoch']} (validation {100 * best['acc']:.2f}%) of {history['epochs_run']} "
          f"epoch(s); "
          f"{train_minutes:.1f} min of training, {np.mean(history['time']):.0f} s per epoch incl. validation{saved}")
    return accuracy


if __name__ == "__main__":
    main()
