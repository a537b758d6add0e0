"""Reuse of large result arrays once nothing refers to them any more (Python's reference count tells).

A fresh multi-megabyte array is fresh memory: the kernel page-faults and clears every 4 KiB page on first touch,
and when two OpenMP threads touch their halves at once the faults contend (float32 (64, 64, 64, 28, 3) forward
on 2 threads: 17.7 ms into an array written before, 22.3 ms into fresh memory; 34.4 / 35.3 ms on 1 thread). So:

- the layers keep, per large output (activations, input gradients, pooling positions), up to
  ``SPARES_PER_OUTPUT`` arrays of their own and write into one again once only the layer refers to it
  (:func:`spare`);
- the operations (``conv2d_forward``, ``conv2d_input_gradient`` without ``out=``) take their result from
  :data:`OUTPUTS`, a small pool shared by shape and dtype: an array it handed out before and that nobody holds
  any more (not the caller, not a view, not a cache) is handed out again; at most ``POOL_PER_SHAPE`` arrays per
  shape and ``POOL_MAX_BYTES`` in all are kept alive between calls.

An array the caller still holds, even through a view or a memoryview, is never handed out again (a weak
reference does not hold it: through one, a dropped result can show a later call's values). Only arrays of at least
``MIN_BYTES`` take part (below, malloc's free lists already return mapped memory). Reference counts cannot
tell on free-threaded builds (deferred counts) or without ``sys.getrefcount``: there nothing is reused.
:func:`cnn_ext.set_buffer_reuse` turns both off (and empties the pool).
"""
import math
import sys
import threading

import numpy as np

MIN_BYTES = 1 << 20
SPARES_PER_OUTPUT = 3  # a layer needs 2 per output (its last output is still cached by the next layer)
POOL_PER_SHAPE = 2  # a loop `y = op(...)` needs 2: the last result is still bound while the next is made
POOL_MAX_BYTES = 256 << 20


def _free_refcount():
    """sys.getrefcount of an array only a list refers to, read the way this module reads it (the count of the
    argument itself differs between Python versions); None where counts cannot tell."""
    if not hasattr(sys, "getrefcount") or not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None
    pool = [np.empty(0)]
    return sys.getrefcount(pool[0])


FREE_REFCOUNT = _free_refcount()
ENABLED = FREE_REFCOUNT is not None


def taking_part(shape, dtype):
    """The dtype (as np.dtype) when reuse is on and an array of this shape and dtype is large enough to take
    part, else None. The size test runs first, for any dtype (~0.1 µs: most arrays are small)."""
    n = math.prod(shape)
    if not ENABLED or n * 8 < MIN_BYTES:
        return None
    dtype = np.dtype(dtype)
    return dtype if n * dtype.itemsize >= MIN_BYTES else None


def _find_free(pool, shape, dtype):
    """(index of a free array of this shape and dtype or None, index of a free array of any other or None)."""
    other = None
    for i in range(len(pool)):
        if sys.getrefcount(pool[i]) == FREE_REFCOUNT:  # only the list refers to it
            if pool[i].shape == shape and pool[i].dtype == dtype:
                return i, other
            other = i
    return None, other


_SPARES_LOCK = threading.Lock()


def spare(layer, key, shape, dtype):
    """An uninitialised array for the layer's output ``key``: one the layer made earlier if only the layer
    refers to it, else a new one, kept for later steps (up to SPARES_PER_OUTPUT per key; a free one of
    another shape, after a change of batch size, is replaced).

    Under a lock, as in :class:`_Pool`: between the reference-count test and the return, another Python thread
    running the same layer (inference on one shared network) could find the same array free and both would
    write their outputs into it. The returned reference is taken before the lock is released.
    """
    if taking_part(shape, dtype) is None:
        return np.empty(shape, dtype=dtype)
    dtype = np.dtype(dtype)
    with _SPARES_LOCK:
        pool = layer.__dict__.setdefault("_spares", {}).setdefault(key, [])
        same, other = _find_free(pool, shape, dtype)
        if same is not None:
            return pool[same]
        out = np.empty(shape, dtype=dtype)
        if other is not None:
            pool[other] = out
        elif len(pool) < SPARES_PER_OUTPUT:
            pool.append(out)
        return out


class _Pool:
    """The operations' results by (shape, dtype); thread-safe (a lock around the choice, so two threads never
    take the same free array)."""

    def __init__(self):
        self._arrays = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def empty(self, shape, dtype):
        if taking_part(shape, dtype) is None:
            return np.empty(shape, dtype=dtype)
        dtype = np.dtype(dtype)
        key = (tuple(shape), dtype.str)
        with self._lock:
            pool = self._arrays.setdefault(key, [])
            same, _ = _find_free(pool, shape, dtype)
            if same is not None:
                return pool[same]
            out = np.empty(shape, dtype=dtype)
            if len(pool) < POOL_PER_SHAPE and self._bytes + out.nbytes <= POOL_MAX_BYTES:
                pool.append(out)
                self._bytes += out.nbytes
            return out

    def clear(self):
        with self._lock:
            self._arrays.clear()
            self._bytes = 0

    @property
    def nbytes(self):
        return self._bytes


OUTPUTS = _Pool()
