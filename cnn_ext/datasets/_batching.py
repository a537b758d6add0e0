"""One-hot targets, the tutorial's list-of-batches form and a lazy batch iterator.

:class:`BatchIterator` never copies the data set: an epoch is one index permutation (8 bytes a sample), and each
batch gathers its rows with one fancy index (a view when not shuffled) and one-hots its labels on the way, so the
memory of an epoch is that of one batch. :func:`batches` builds the same batches, all at once, as lists.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .. import _checks
from .._typing import FloatArray
from .._checks import float_dtype as _check_dtype, positive_int as _positive_int

__all__ = ["one_hot", "batches", "BatchIterator"]


def _check_targets_size(n, num_classes, dtype):
    """ValueError naming num_classes, before allocating, for one-hot targets larger than the machine's memory
    (NumPy's MemoryError names no argument, and 10**12 classes are a typo, not a dataset); a row counts even
    when there are no labels, as NumPy refuses a shape whose row is too big for an array."""
    _checks.allocation((max(n, 1), num_classes), dtype,
                       lambda: f"num_classes={num_classes} for {n} labels needs one-hot targets")


def one_hot(labels: ArrayLike, num_classes: int, dtype: DTypeLike = np.float64) -> FloatArray:
    """``(N, num_classes)`` array with ``out[n, labels[n]] = 1`` and zeros elsewhere.

    Parameters
    ----------
    labels : array_like of int, shape (N,), values in [0, num_classes)
    num_classes : int, at most 2**31 - 1 (and the targets must fit in memory)
    dtype : float32 or float64, default float64
    """
    num_classes = _positive_int(num_classes, "num_classes", _checks.INT_MAX)
    y = _checked_labels(labels, num_classes)
    dtype = _check_dtype(dtype)
    _check_targets_size(y.size, num_classes, dtype)
    return _encode(y, num_classes, dtype)


def _checked_labels(labels, num_classes):
    """``labels`` as a 1-D integer array with values in [0, num_classes)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got values in [{y.min()}, {y.max()}]")
    return y


def _encode(y, num_classes, dtype):
    """One-hot rows of checked labels."""
    out = np.zeros((y.size, num_classes), dtype=dtype)
    out[np.arange(y.size), y] = 1
    return out


class BatchIterator:
    """The batches of one epoch, made one at a time: ``for x, y in BatchIterator(x, labels, 16, shuffle=True)``.

    Batch ``i`` holds the samples ``order[i * batch_size:(i + 1) * batch_size]`` of one permutation ``order``
    (``numpy.random.default_rng(seed).permutation(N)``, or ``0, 1, ..., N - 1`` without shuffling), gathered when
    the batch is asked for: the whole shuffled data set is never copied. For the same arguments and seed the
    batches are those of :func:`batches`; with a ``numpy.random.Generator`` as ``seed`` each new iterator takes
    the generator's next permutation, so one iterator per epoch on one generator gives the epochs of one seeded run.

    Parameters
    ----------
    x : ndarray, shape (N, ...)
    labels : array_like of int, shape (N,)
        Checked once here (values in [0, num_classes)), before the first batch.
    batch_size : int, default 16
    num_classes : int, optional
        Default ``labels.max() + 1``.
    shuffle : bool, default False
    seed : int or numpy.random.Generator, optional
    drop_last : bool, default False
        Drop a last batch smaller than ``batch_size``.
    one_hot_targets : bool, default True
        Yield one-hot targets ``(B, num_classes)`` in ``x``'s float dtype (the tutorial's), else the labels ``(B,)``
        (what ``softmax_cross_entropy`` takes).

    Yields
    ------
    x_batch : ndarray, shape (B, ...)
        A view of ``x`` when not shuffled, else a new array of B samples.
    y_batch : ndarray, shape (B, num_classes) or (B,)

    Notes
    -----
    ``len()`` is the number of batches; an iterator is single-use (an epoch), as a generator is.
    """

    def __init__(self, x: ArrayLike, labels: ArrayLike, batch_size: int = 16, *, num_classes: int | None = None,
                 shuffle: bool = False, seed: int | np.random.Generator | None = None, drop_last: bool = False,
                 one_hot_targets: bool = True) -> None:
        batch_size = _positive_int(batch_size, "batch_size")
        x = np.asarray(x)
        y = np.asarray(labels)
        if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"x has shape {x.shape} and labels {y.shape}: need (N, ...) and (N,)")
        if num_classes is None:
            num_classes = int(y.max()) + 1 if y.size and y.dtype.kind in "iu" else 1
        self.dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        self.num_classes = _positive_int(num_classes, "num_classes", _checks.INT_MAX)
        self._labels = _checked_labels(y, self.num_classes)
        self._x, self.batch_size, self.one_hot_targets = x, batch_size, bool(one_hot_targets)
        self._order: NDArray | None = None
        if shuffle:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            self._order = rng.permutation(x.shape[0])
        n = x.shape[0]
        self._stop = n - n % batch_size if drop_last else n
        self._next = 0

    def __len__(self) -> int:
        return -(-self._stop // self.batch_size)

    def __iter__(self) -> Iterator[tuple[NDArray, NDArray]]:
        return self

    def __next__(self) -> tuple[NDArray, NDArray]:
        start = self._next
        if start >= self._stop:
            raise StopIteration
        self._next = end = min(start + self.batch_size, self._stop)
        idx = slice(start, end) if self._order is None else self._order[start:end]
        yb = self._labels[idx]
        return self._x[idx], (_encode(yb, self.num_classes, self.dtype) if self.one_hot_targets else yb)


def batches(x: ArrayLike, labels: ArrayLike, batch_size: int = 16, *, num_classes: int | None = None,
            shuffle: bool = False, seed: int | np.random.Generator | None = None,
            drop_last: bool = False) -> tuple[list[FloatArray], list[FloatArray]]:
    """Split a dataset into the tutorial's form: a list of input batches and a list of one-hot target batches.

    Parameters
    ----------
    x : ndarray, shape (N, ...)
    labels : array_like of int, shape (N,)
    batch_size : int, default 16
    num_classes : int, optional
        Default ``labels.max() + 1``.
    shuffle : bool, default False
        Permute the samples first (seeded by ``seed``: int or numpy.random.Generator).
    drop_last : bool, default False
        Drop a last batch smaller than ``batch_size``.

    Returns
    -------
    x_batches : list of ndarray, each (batch_size, ...) (views of ``x`` when not shuffled)
    y_batches : list of ndarray, each (batch_size, num_classes), one-hot in ``x``'s float dtype

    See Also
    --------
    BatchIterator : the same batches one at a time, without holding the whole shuffled data set.
    """
    it = BatchIterator(x, labels, batch_size, num_classes=num_classes, shuffle=shuffle, seed=seed,
                       drop_last=drop_last)
    _check_targets_size(it._labels.shape[0], it.num_classes, it.dtype)  # all the targets are held at once
    pairs = list(it)
    return [xb for xb, _ in pairs], [yb for _, yb in pairs]
