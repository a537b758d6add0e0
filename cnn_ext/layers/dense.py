"""Fully connected layers: Dense and the Flatten in front of it."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _checks
from .._kernels import dense as _dense
from .. import _threads
from .._threads import blas_single_thread, threads_for
from .base import (EXACT, Gradients, Layer, ParamLayer, batch_mean, checked_init, grad_rule, init_params,
                   random_source, register_layer)

if TYPE_CHECKING:
    from .._typing import FloatArray, RandomSource

__all__ = ["Dense", "Flatten"]

# float64 products are cut into blocks of output columns, one single-threaded BLAS call each, shared over the
# kernels' threads; the blocks follow from the shape alone, so the result is the same on any thread count
_BLOCK_COLS = 128  # output columns per block at least: each block repacks the shared operand
_MAX_BLOCKS = 4
_WORK_FACTOR = 5  # a product splits only from 5x the work per thread of a convolution (BLAS calls cost more)


def _matmul(a, b, trans_a=False, trans_b=False, split=True):
    """op(a) @ op(b) for arrays of one float dtype, with BLAS held to one thread: large products (split) in column
    blocks over the kernels' threads, others in one BLAS call. One threading layer at a time, as in the kernels:
    OpenBLAS's own threads keep spinning after a call and stall the next kernel's threads (in a loop that calls
    the layers itself, outside a Network)."""
    M = a.shape[1] if trans_a else a.shape[0]
    K = a.shape[0] if trans_a else a.shape[1]
    N = b.shape[0] if trans_b else b.shape[1]
    nblk = 1 if max(M, N, K) > _checks.INT_MAX or not split else min(
        _MAX_BLOCKS, N // _BLOCK_COLS, M * N * K // (_threads.MIN_WORK_PER_THREAD * _WORK_FACTOR))
    if nblk <= 1 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        with blas_single_thread():
            return np.matmul(a.T if trans_a else a, b.T if trans_b else b)
    c = np.empty((M, N), dtype=a.dtype)
    with blas_single_thread():
        _dense.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b), c, trans_a, trans_b, nblk,
                      threads_for(nblk))
    return c


@register_layer
class Dense(ParamLayer):
    """Fully connected layer: ``y = x @ w + b``.

    Parameters
    ----------
    n_in, n_out : int
        ``Dense(n_out)`` (or ``Dense(None, n_out)``) is lazy, as PyTorch's ``LazyLinear``: ``n_in`` is taken from
        the first input (a forward pass, or :meth:`cnn_ext.Network.summary`), and the weights are drawn then,
        from ``rng`` / ``seed`` or NumPy's global state. Until then ``parameters()`` is empty, ``built`` is False
        and ``save`` / ``state_dict`` refuse the network by name.
    init : None, 'he_normal', 'he_uniform', 'glorot_normal' or 'glorot_uniform'
        None is the tutorial's: w and b ~ 0.1 * N(0, 1). The others draw w and zero b.
    rng, seed, dtype : as in :class:`Conv2D`

    Attributes
    ----------
    w : ndarray, shape (n_in, n_out)
    b : ndarray, shape (n_out,)

    Notes
    -----
    x (N, n_in) -> y (N, n_out). ``backward(dE_dY, need_dX=True)`` returns ``{"dW", "dB", "dX"}`` (a
    :class:`Gradients` dict): ``dW = xᵀ·dE_dY`` (summed over the batch), ``dX = dE_dY·wᵀ``, and ``dB`` the batch
    mean of dE_dY under the tutorial's rule (a plain ``dE_dY``) or its batch sum, the exact gradient, when
    ``dE_dY`` is an :class:`~cnn_ext.losses.ExactGradient`. An empty batch (N = 0) gives zero dW and dB.
    """

    _config_keys = ("n_in", "n_out", "init")
    _params = (("w", "dW"), ("b", "dB"))
    # a lazy layer has no weights (None) until its first input
    w: FloatArray
    b: FloatArray
    n_in: int | None
    n_out: int

    def __init__(self, n_in: int | None, n_out: int | None = None, *, init: str | None = None,
                 rng: RandomSource | None = None, seed: int | None = None, dtype: DTypeLike = np.float64) -> None:
        super().__init__()
        if n_out is None:  # Dense(n_out): the input size comes with the first input
            n_in, n_out = None, n_in
        self.n_in = None if n_in is None else _checks.positive_int(n_in, "n_in", _checks.INT_MAX)
        self.n_out = _checks.positive_int(n_out, "n_out", _checks.INT_MAX)
        self.init = checked_init(init)
        self.dtype = _checks.float_dtype(dtype)
        self._source = random_source(rng, seed)
        self.w = self.b = None  # type: ignore[assignment]  # a lazy layer's, until its first input
        if self.n_in is not None:
            self._draw(self.n_in)

    def _draw(self, n_in: int) -> None:
        """Draw w and b for ``n_in`` inputs (a lazy layer's n_in is known only from its first input)."""
        self.w, self.b = init_params(self.init, self._source, (n_in, self.n_out), (self.n_out,),
                                      n_in, self.n_out, 0.1, self.dtype,
                                      lambda: f"Dense: n_in={n_in}, n_out={self.n_out} give weights")
        self._source = None  # drawn once: the layer holds no random state after that

    @property
    def built(self) -> bool:
        """False for a lazy Dense before its first input (no weights yet), else True."""
        return self.n_in is not None

    def parameters(self) -> list[tuple[str, str, FloatArray]]:
        """``[("w", "dW", w), ("b", "dB", b)]``, or ``[]`` while a lazy layer's input size is unknown."""
        return super().parameters() if self.n_in is not None else []

    def param_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """``{"w": ((n_in, n_out), dtype), "b": ((n_out,), dtype)}``, from the config alone."""
        if self.n_in is None:
            raise ValueError(f"{self!r} has not inferred n_in yet: run a forward pass or summary(input_shape) first")
        return {"w": ((self.n_in, self.n_out), self.dtype), "b": ((self.n_out,), self.dtype)}

    def forward(self, x: ArrayLike) -> FloatArray:
        """``y = x @ w + b``; x (N, n_in) -> y (N, n_out)."""
        x = _checks.as_float_array(x, "x").astype(self.dtype, copy=False)
        if self.n_in is None and x.ndim == 2 and x.shape[1] >= 1:
            self.n_in = n_in = _checks.positive_int(x.shape[1], "n_in", _checks.INT_MAX)
            try:
                self._draw(n_in)
            except ValueError:
                self.n_in = None  # a refused call changes nothing
                raise
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise self._shape_error("x", f"(N, {self.n_in or 'n_in'})", x.shape)
        # aligned for BLAS: NumPy's matmul takes its own loops, with other rounding, on misaligned data
        x = np.asarray(_checks.contiguous(x, self.dtype))
        y = _matmul(x, self.w, split=self.dtype == np.float64)  # float32: one sgemm, as dW (below)
        y += self.b  # y is ours: add in place instead of allocating x @ w + b
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dE_dY: ArrayLike, *, need_dX: bool = True) -> Gradients:
        """``{"dW": xᵀ·dE_dY, "dB": mean_n dE_dY (tutorial) or Σ_n dE_dY (exact), "dX": dE_dY·wᵀ}``."""
        x = self._cached_input()
        rule = grad_rule(dE_dY)
        dy = _checks.contiguous(self._grad_output(dE_dY, self.dtype), self.dtype)  # a plain, aligned array
        dB = dy.sum(axis=0) if rule == EXACT else batch_mean(dy)
        # float64: products split over the kernels' threads; float32: y and dW in one sgemm (their column blocks each
        # repack x: slower on 1 thread), dX split (its n_in columns make blocks that pay on 1 thread too)
        dW = _matmul(x, dy, trans_a=True, split=self.dtype == np.float64)
        grads = Gradients(rule, ("dB",), {"dW": dW, "dB": dB})
        if need_dX:
            grads["dX"] = _matmul(dy, self.w, trans_b=True)
        return grads

    def extra_repr(self) -> str:
        if self.n_in is None:
            return f"{self.n_out}" + self._repr_tail()
        return f"n_in={self.n_in}, n_out={self.n_out}" + self._repr_tail()


@register_layer
class Flatten(Layer):
    """Flattens every axis but the first: x (N, d1, d2, ...) -> y (N, d1·d2·...). Returns a view when it can."""

    def forward(self, x: ArrayLike) -> FloatArray:
        x = _checks.as_float_array(x, "x")
        if x.ndim < 2:
            raise self._shape_error("x", "(N, ...) with at least 2 dimensions", x.shape)
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: NumPy cannot infer it when N = 0
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dE_dY: ArrayLike) -> dict[str, FloatArray]:
        x = self._cached_input()
        return {"dX": self._grad_output(dE_dY, x.dtype).reshape(x.shape)}
