"""Datasets for the examples and tests: the tutorial's toy shapes, MNIST, Fashion-MNIST and a shipped MNIST sample.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` with float images (N, 1, H, W) and integer
labels (N,); :func:`batches` turns a split into the tutorial's list-of-batches form with one-hot targets.
"""
from ._batching import BatchIterator, batches, one_hot
from ._mnist import (
    FASHION_MNIST_MIRRORS,
    MNIST_MIRRORS,
    default_data_dir,
    load_fashion_mnist,
    load_mnist,
    load_mnist_sample,
    read_idx,
)
from ._shapes import SHAPE_BLUEPRINTS, SHAPE_NAMES, make_shapes

__all__ = [
    "SHAPE_NAMES",
    "SHAPE_BLUEPRINTS",
    "make_shapes",
    "one_hot",
    "batches",
    "BatchIterator",
    "MNIST_MIRRORS",
    "FASHION_MNIST_MIRRORS",
    "default_data_dir",
    "load_mnist",
    "load_fashion_mnist",
    "load_mnist_sample",
    "read_idx",
]
