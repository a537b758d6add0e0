"""Element-wise activations (ReLU, LeakyReLU, Sigmoid, Tanh) and Softmax.

Large arrays take the fused one-pass kernels of ``cnn_ext._kernels.elementwise`` (bitwise NumPy's formulas);
small ones NumPy, whose call costs less than setting up the kernel's memoryviews.
"""
from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import expit

from .. import _checks
from .._kernels import elementwise as _elementwise
from .._threads import current_threads
from .base import Layer, register_layer

if TYPE_CHECKING:
    from .._typing import FloatArray

__all__ = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax"]

_FUSED_MIN = 16_384  # elements from which the fused kernels beat NumPy's call
_FUSED_PER_THREAD = 65_536  # elements per thread from which a second thread pays


def fused_threads(arrays) -> int:
    """Threads for a fused kernel of ``cnn_ext._kernels.elementwise`` over these arrays, or 0 (the caller then
    takes NumPy) for small arrays and any array that is not C-contiguous and aligned in the float dtype and shape
    of the first (the kernels read every array as one flat run of that dtype)."""
    first = arrays[0]
    n = first.size
    if n < _FUSED_MIN or first.dtype not in (np.float32, np.float64):
        return 0
    for a in arrays:
        if a.dtype != first.dtype or a.shape != first.shape or not (a.flags.c_contiguous and a.flags.aligned):
            return 0
    return max(1, min(current_threads(), n // _FUSED_PER_THREAD))


def _fused(kernel, arrays, *args):
    """A new array shaped like ``arrays[0]`` filled by ``kernel(*arrays flat, out flat, *args, threads)``, or
    None (the caller then takes NumPy) where ``fused_threads`` says no."""
    threads = fused_threads(arrays)
    if not threads:
        return None
    out = np.empty(arrays[0].shape, dtype=arrays[0].dtype)
    kernel(*[a.reshape(-1) for a in arrays], out.reshape(-1), *args, threads)
    return out


def add(a: FloatArray, b: FloatArray, relu: bool = False) -> FloatArray:
    """``a + b`` as NumPy's ``np.add`` gives it, then ``max(., 0)`` with ``relu`` (a ReLU layer's output), a new
    array: one threaded pass for large arrays of one dtype and shape (residual blocks), else NumPy."""
    out = _fused(_elementwise.add_relu if relu else _elementwise.add, (a, b))
    if out is None:
        out = np.add(a, b, dtype=np.result_type(a, b))
        if relu:
            np.maximum(out, 0, out=out)
    return out


class _Activation(Layer):
    """Element-wise activation: keeps the float dtype it is given; caches what backward needs."""

    if TYPE_CHECKING:  # each subclass's function and derivative
        def _f(self, x: FloatArray) -> FloatArray: ...

        def _df(self, x: FloatArray, y: FloatArray, dy: FloatArray) -> FloatArray: ...

    def forward(self, x: ArrayLike) -> FloatArray:
        x = _checks.as_float_array(x, "x")
        y = self._f(x)
        self._x, self._y, self._y_shape = x, y, y.shape
        return y

    def backward(self, dE_dY: ArrayLike) -> dict[str, FloatArray]:
        x = self._cached_input()
        return {"dX": self._df(x, self._y, self._grad_output(dE_dY, x.dtype))}


@register_layer
class ReLU(_Activation):
    """``y = max(x, 0)``; ``dX = dE_dY · [x > 0]``."""

    def _f(self, x):
        y = _fused(_elementwise.relu_forward, (x,))
        return np.maximum(x, 0) if y is None else y

    def _df(self, x, y, dy):
        # the fused kernel computes the same product with the mask (dy * 0 is -0.0 for dy < 0, NaN for inf)
        dx = _fused(_elementwise.relu_backward, (x, dy))
        return dy * (x > 0) if dx is None else dx


@register_layer
class LeakyReLU(_Activation):
    """``y = x`` where ``x > 0``, else ``alpha · x``; ``dX = dE_dY`` or ``alpha · dE_dY``."""

    _config_keys = ("alpha",)

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = _checks.real(alpha, "alpha", minimum=-math.inf)

    def _f(self, x):
        y = _fused(_elementwise.leaky_relu_forward, (x,), self.alpha)
        return np.where(x > 0, x, x * x.dtype.type(self.alpha)) if y is None else y

    def _df(self, x, y, dy):
        dx = _fused(_elementwise.leaky_relu_backward, (x, dy), self.alpha)
        return np.where(x > 0, dy, dy * dy.dtype.type(self.alpha)) if dx is None else dx


@register_layer
class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))`` (overflow-free); ``dX = dE_dY · y · (1 - y)``."""

    def _f(self, x):
        return expit(x)

    def _df(self, x, y, dy):
        dx = _fused(_elementwise.sigmoid_backward, (y, dy))
        if dx is None:
            dx = 1 - y
            dx *= y
            dx *= dy
        return dx


@register_layer
class Tanh(_Activation):
    """``y = tanh(x)``; ``dX = dE_dY · (1 - y²)``."""

    def _f(self, x):
        return np.tanh(x)

    def _df(self, x, y, dy):
        dx = _fused(_elementwise.tanh_backward, (y, dy))
        if dx is None:
            dx = y * y
            np.subtract(1, dx, out=dx)
            dx *= dy
        return dx


@register_layer
class Softmax(_Activation):
    """``y = exp(x - max) / Σ exp(x - max)`` along ``axis`` (default the last);
    ``dX = y · (dE_dY - Σ_axis dE_dY · y)``.

    For classification prefer :func:`cnn_ext.losses.softmax_cross_entropy` on the logits, which is more
    stable and cheaper than this layer followed by a loss.
    """

    _config_keys = ("axis",)

    def __init__(self, axis: int = -1) -> None:
        super().__init__()
        if isinstance(axis, (bool, np.bool_)):
            raise TypeError(f"axis must be an int, got {axis!r}")
        try:
            self.axis = operator.index(axis)
        except TypeError:
            raise TypeError(f"axis must be an int, got {axis!r}") from None

    def _f(self, x):
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self!r}: axis {self.axis} is out of range for x of shape {x.shape}")
        if x.size == 0:  # e.g. an empty batch along axis: nothing to normalise (and max has no identity)
            return np.empty_like(x)
        y = x - x.max(axis=self.axis, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=self.axis, keepdims=True)
        return y

    def _df(self, x, y, dy):
        dx = dy - (dy * y).sum(axis=self.axis, keepdims=True)
        dx *= y
        return dx
