"""One-hot targets and the tutorial's list-of-batches form."""
from typing import List, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _checks
from .._typing import FloatArray
from .._checks import float_dtype as _check_dtype, positive_int as _positive_int

__all__ = ["one_hot", "batches"]


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
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes - 1}], got values in [{y.min()}, {y.max()}]")
    dtype = _check_dtype(dtype)
    _check_targets_size(y.size, num_classes, dtype)
    out = np.zeros((y.size, num_classes), dtype=dtype)
    out[np.arange(y.size), y] = 1
    return out


def batches(x: ArrayLike, labels: ArrayLike, batch_size: int = 16, *, num_classes: Optional[int] = None,
            shuffle: bool = False, seed: Union[int, np.random.Generator, None] = None,
            drop_last: bool = False) -> Tuple[List[FloatArray], List[FloatArray]]:
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
    """
    batch_size = _positive_int(batch_size, "batch_size")
    x = np.asarray(x)
    y = np.asarray(labels)
    if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x has shape {x.shape} and labels {y.shape}: need (N, ...) and (N,)")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 1
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    num_classes = _positive_int(num_classes, "num_classes", _checks.INT_MAX)
    _check_targets_size(y.shape[0], num_classes, dtype)
    targets = one_hot(y, num_classes, dtype)
    if shuffle:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        order = rng.permutation(x.shape[0])
        x, targets = x[order], targets[order]
    stop = x.shape[0] - x.shape[0] % batch_size if drop_last else x.shape[0]
    starts = range(0, stop, batch_size)
    return [x[i:i + batch_size] for i in starts], [targets[i:i + batch_size] for i in starts]
