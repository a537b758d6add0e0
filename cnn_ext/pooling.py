"""2-D max and average pooling (NCHW): the operations and the layers, computed by ``cnn_ext._kernels.pooling``.

Conventions (PyTorch's ``MaxPool2d`` / ``AvgPool2d`` with no padding, ``ceil_mode=False``):

- windows of ``kernel_size`` start every ``stride`` pixels (``stride`` defaults to ``kernel_size``); windows that
  do not fit are dropped: ``OH = (H - KH) // SH + 1``, same for OW, and rows/columns no window reaches get a zero
  gradient;
- max pooling ties: the **first** maximum in row-major window order receives the whole gradient (deterministic);
  NaN counts as the maximum (the first NaN of a window), so NaN propagates;
- average pooling divides by ``KH * KW`` (every window lies inside the input).

Checks (:mod:`cnn_ext._checks`) raise ``ValueError`` (shapes, values) or ``TypeError`` (types) naming the
argument and the shapes. Inputs are never modified.
"""
from typing import Dict, Literal, Optional, Tuple, Union, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks
from ._kernels import pooling as _pooling
from ._threads import threads_for
from ._typing import FloatArray, IntPair
from .layers import Layer, register_layer

__all__ = [
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "MaxPool2D",
    "AvgPool2D",
    "GlobalAvgPool2D",
]

_NO_INDICES = np.empty(0, dtype=np.int32)
_INT32_MAX = 2**31 - 1  # argmax positions are int32 (one lane width with float32 in the kernel)


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------

def _window(kernel_size, stride) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """((KH, KW), (SH, SW)) with stride defaulting to kernel_size."""
    KH, KW = _checks.ints(kernel_size, "kernel_size", 1)
    SH, SW = (KH, KW) if stride is None else _checks.ints(stride, "stride", 1)
    return (KH, KW), (SH, SW)


def _pool_out_hw(H, W, KH, KW, SH, SW, xname, xshape):
    return _checks.output_hw(H, W, KH, KW, SH, SW, (0, 0, 0, 0), xname, "kernel_size", xshape, (KH, KW))


def _input_4d(x, name) -> Tuple[np.ndarray, np.dtype]:
    x = _checks.as_real_array(x, name)
    dtype = _checks.compute_dtype((x,), (name,))
    _checks.check_ndim(x, 4, name, "(N, C, H, W)")
    return x, dtype


def _grad_4d(dE_dY, ref_dtype_arrays=(), ref_names=()) -> Tuple[np.ndarray, np.dtype]:
    dy = _checks.as_real_array(dE_dY, "dE_dY")
    dtype = _checks.compute_dtype((dy, *ref_dtype_arrays), ("dE_dY", *ref_names))
    _checks.check_ndim(dy, 4, "dE_dY", "(N, C, OH, OW)")
    return dy, dtype


def _check_grad_shape(dy, expected, xdesc):
    if dy.shape != expected:
        raise ValueError(f"dE_dY has shape {dy.shape} but {xdesc} gives a pooled output of shape {expected}")


# ----------------------------------------------------------------------------------------------
# kernel calls on checked arguments (the layers call these directly)
# ----------------------------------------------------------------------------------------------

def _check_plane(x_shape):
    if x_shape[2] * x_shape[3] > _INT32_MAX:
        raise ValueError(f"x {x_shape}: H*W = {x_shape[2] * x_shape[3]} exceeds the int32 positions max pooling "
                         f"records")


def _forward(x, dtype, ksize, stride, use_max, want_indices=False, relu=False):
    """(y, int32 first-max positions or None) for a checked x; ``relu`` (max only): of ReLU(x), without making
    it (bitwise a ReLU layer's output pooled, positions included)."""
    N, C, H, W = x.shape
    OH, OW = _pool_out_hw(H, W, *ksize, *stride, "x", x.shape)
    y = np.empty((N, C, OH, OW), dtype)
    if want_indices:
        _check_plane(x.shape)
    idx = np.empty((N, C, OH, OW), np.int32) if want_indices else None
    if y.size:
        _pooling.pool2d_forward(_checks.contiguous(x, dtype), y, _NO_INDICES if idx is None else idx.reshape(-1),
                             *ksize, *stride, use_max, relu, threads_for(N * C, y.size * ksize[0] * ksize[1]))
    return y, idx


def _backward(dy, idx, input_shape, dtype, ksize, stride, use_max, y_relu=None):
    """dX for a checked dy (N, C, OH, OW) with OH, OW >= 1; idx (max pooling only) from :func:`_forward`.
    ``y_relu``: the y of a relu ``_forward`` (with idx from it); dX is then that of the ReLU's input."""
    N, C = dy.shape[:2]
    dx = np.empty(input_shape, dtype)
    relu = y_relu is not None
    y_relu = _checks.contiguous(y_relu, dtype) if relu else np.empty((0, 0, 0, 0), dtype)
    _pooling.pool2d_backward(_checks.contiguous(dy, dtype), _NO_INDICES if idx is None else idx.reshape(-1), y_relu,
                             dx, *ksize, *stride, use_max, relu, threads_for(N * C, dy.size * ksize[0] * ksize[1]))
    return dx


# ----------------------------------------------------------------------------------------------
# the operations
# ----------------------------------------------------------------------------------------------

@overload
def maxpool2d_forward(x: ArrayLike, kernel_size: IntPair, stride: Optional[IntPair] = None, *,
                      return_indices: Literal[False] = False) -> FloatArray: ...
@overload
def maxpool2d_forward(x: ArrayLike, kernel_size: IntPair, stride: Optional[IntPair] = None, *,
                      return_indices: Literal[True]) -> Tuple[FloatArray, NDArray[np.int32]]: ...
@overload
def maxpool2d_forward(x: ArrayLike, kernel_size: IntPair, stride: Optional[IntPair] = None, *,
                      return_indices: bool) -> Union[FloatArray, Tuple[FloatArray, NDArray[np.int32]]]: ...


def maxpool2d_forward(x: ArrayLike, kernel_size: IntPair, stride: Optional[IntPair] = None, *,
                      return_indices: bool = False) -> Union[FloatArray, Tuple[FloatArray, NDArray[np.int32]]]:
    """Max pooling over ``kernel_size`` windows every ``stride`` pixels.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size`` (non-overlapping windows).
    return_indices : bool, default False
        Also return where each maximum was taken.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        ``y[n, c, p, q] = max_{kh, kw} x[n, c, p*SH + kh, q*SW + kw]`` with ``OH = (H - KH) // SH + 1``,
        ``OW = (W - KW) // SW + 1``; float32 for float32 input, else float64.
    indices : ndarray of int32, shape (N, C, OH, OW)
        Only with ``return_indices=True``: the flat position ``r * W + c`` in the (H, W) plane of the first
        maximum of each window in row-major order (PyTorch's convention), for :func:`maxpool2d_backward`.
    """
    x, dtype = _input_4d(x, "x")
    ksize, stride = _window(kernel_size, stride)
    y, idx = _forward(x, dtype, ksize, stride, True, bool(return_indices))
    return y if idx is None else (y, idx)


def maxpool2d_backward(dE_dY: ArrayLike, x: ArrayLike, kernel_size: IntPair, stride: Optional[IntPair] = None, *,
                       indices: Optional[ArrayLike] = None) -> FloatArray:
    """Gradient of the loss with respect to the input of :func:`maxpool2d_forward`.

    Parameters
    ----------
    dE_dY : array_like, shape (N, C, OH, OW)
    x : array_like, shape (N, C, H, W)
        The forward input: its shape, and its values to find the maxima when ``indices`` is not given.
    kernel_size, stride : as in :func:`maxpool2d_forward`
    indices : array_like of ints, shape (N, C, OH, OW), optional
        From ``maxpool2d_forward(..., return_indices=True)``; saves the search for the maxima.

    Returns
    -------
    dX : ndarray, shape (N, C, H, W)
        Each ``dE_dY[n, c, p, q]`` added at its window's first maximum; zero elsewhere.
    """
    x, _ = _input_4d(x, "x")
    dy, dtype = _grad_4d(dE_dY, (x,), ("x",))
    ksize, stride = _window(kernel_size, stride)
    N, C, H, W = x.shape
    expected = (N, C, *_pool_out_hw(H, W, *ksize, *stride, "x", x.shape))
    _check_grad_shape(dy, expected, f"x of shape {x.shape} with kernel_size {ksize}, stride {stride}")
    if indices is None:
        _, idx = _forward(x, dtype, ksize, stride, True, True)
    else:
        _check_plane(x.shape)
        idx = _checks.as_real_array(indices, "indices")
        if idx.dtype.kind not in "iu":
            raise TypeError(f"indices must hold integers, got dtype {idx.dtype}")
        if idx.shape != dy.shape:
            raise ValueError(f"indices has shape {idx.shape} but dE_dY has shape {dy.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= H * W):
            raise ValueError(f"indices must lie in [0, H*W) = [0, {H * W}) for x of shape {x.shape}, "
                             f"got values in [{idx.min()}, {idx.max()}]")
        idx = _checks.contiguous(idx, np.dtype(np.int32))  # aligned too: the kernel reads it as int32s
    return _backward(dy, idx, x.shape, dtype, ksize, stride, True)


def avgpool2d_forward(x: ArrayLike, kernel_size: IntPair, stride: Optional[IntPair] = None) -> FloatArray:
    """Average pooling over ``kernel_size`` windows every ``stride`` pixels.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.

    Returns
    -------
    y : ndarray, shape (N, C, OH, OW)
        ``y[n, c, p, q] = (1 / (KH*KW)) Σ_{kh, kw} x[n, c, p*SH + kh, q*SW + kw]`` with
        ``OH = (H - KH) // SH + 1``, ``OW = (W - KW) // SW + 1``.
    """
    x, dtype = _input_4d(x, "x")
    ksize, stride = _window(kernel_size, stride)
    return _forward(x, dtype, ksize, stride, False)[0]


def avgpool2d_backward(dE_dY: ArrayLike, kernel_size: IntPair, stride: Optional[IntPair] = None, *,
                       input_size: Optional[IntPair] = None) -> FloatArray:
    """Gradient of the loss with respect to the input of :func:`avgpool2d_forward`.

    Parameters
    ----------
    dE_dY : array_like, shape (N, C, OH, OW)
    kernel_size, stride : as in :func:`avgpool2d_forward`
    input_size : int or (int, int), optional
        (H, W) of the forward input; needed when windows were dropped (several sizes pool to the same
        output). By default ``H = (OH - 1) * SH + KH``, same for W.

    Returns
    -------
    dX : ndarray, shape (N, C, H, W)
        ``dX[n, c, p*SH + kh, q*SW + kw] += dE_dY[n, c, p, q] / (KH*KW)``; zero where no window reaches.
    """
    dy, dtype = _grad_4d(dE_dY)
    ksize, stride = _window(kernel_size, stride)
    N, C, OH, OW = dy.shape
    if OH < 1 or OW < 1:
        raise ValueError(f"dE_dY must have a non-empty spatial shape, got {dy.shape}")
    if input_size is None:
        H, W = (OH - 1) * stride[0] + ksize[0], (OW - 1) * stride[1] + ksize[1]
    else:
        H, W = _checks.ints(input_size, "input_size", 1)
    expected = (N, C, *_pool_out_hw(H, W, *ksize, *stride, "input_size", (H, W)))
    _check_grad_shape(dy, expected, f"an input of {(H, W)} with kernel_size {ksize}, stride {stride}")
    _checks.allocation((N, C, H, W), dtype, lambda: f"avgpool2d_backward: dE_dY {dy.shape} with kernel_size {ksize}, "
                 f"stride {stride} gives dX")
    return _backward(dy, None, (N, C, H, W), dtype, ksize, stride, False)


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------

class _Pool2D(Layer):
    """Shared constructor, checks, forward, backward and config of the pooling layers (no parameters; they keep
    the float dtype of their input)."""

    _config_keys = ("kernel_size", "stride")
    _use_max: bool  # set by each subclass

    def __init__(self, kernel_size: IntPair, stride: Optional[IntPair] = None) -> None:
        super().__init__()
        self.kernel_size, self.stride = _window(kernel_size, stride)
        self._relu = self._y = None  # the ReLU whose output the last forward pooled (layers/chain.py), and y

    def forward(self, x: ArrayLike) -> FloatArray:
        return self._forward(x, None)

    def _forward(self, x, relu):
        """forward; given ``relu`` (the ReLU layer before this MaxPool2D, layers/chain.py), ``forward`` of that
        ReLU's output, which is never made: x is pooled as ReLU(x), bitwise, positions included. Both caches are
        then what the two forwards leave (x stands in for the ReLU's output, of its shape, in this layer's; the
        ReLU keeps its input and output shape, all its backward reads), so either backward path works after; y is
        kept for the pair's backward (y > 0 where the ReLU's input was at each window's maximum)."""
        self._relu = self._y = None
        try:
            x, dtype = _input_4d(x, "x")
            _pool_out_hw(x.shape[2], x.shape[3], *self.kernel_size, *self.stride, "x", x.shape)
        except ValueError as exc:
            raise ValueError(f"{self!r}: input of shape {np.shape(x)}: {exc}") from None
        y, self._idx = _forward(x, dtype, self.kernel_size, self.stride, self._use_max, self._use_max,
                                relu is not None)
        self._x, self._y_shape = x, y.shape
        if relu is not None:
            relu._x, relu._y, relu._y_shape, self._relu, self._y = x, None, x.shape, relu, y
        return y

    def _backward(self, dE_dY, relu):
        """backward of this layer then of ``relu``, the ReLU its ``_forward`` pooled the output of: dX is the
        ReLU's (its own dX is never made); bitwise the two backwards one after the other."""
        x = self._cached_input()
        dtype = _checks.compute_dtype((x,), ("x",))
        dy = self._grad_output(dE_dY, dtype)
        return {"dX": _backward(dy, self._idx, x.shape, dtype, self.kernel_size, self.stride, True, self._y)}

    def backward(self, dE_dY: ArrayLike) -> Dict[str, FloatArray]:
        x = self._cached_input()
        dtype = _checks.compute_dtype((x,), ("x",))
        dy = self._grad_output(dE_dY, dtype)
        return {"dX": _backward(dy, self._idx, x.shape, dtype, self.kernel_size, self.stride, self._use_max)}

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}"
        return s if self.stride == self.kernel_size else f"{s}, stride={self.stride}"


_LAYER_DOC = """{what} pooling layer, NCHW (PyTorch's ``{torch}`` without padding).

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.

    Notes
    -----
    x (N, C, H, W) -> y (N, C, OH, OW) with ``OH = (H - KH) // SH + 1``, ``OW = (W - KW) // SW + 1``.
    ``backward(dE_dY)`` returns ``{{"dX"}}``: {grad}.
    """


@register_layer
class MaxPool2D(_Pool2D):
    __doc__ = _LAYER_DOC.format(what="Max", torch="MaxPool2d",
                                grad="each gradient goes to its window's first maximum (row-major order)")
    _use_max = True
    _POOLS_RELU = True  # a ReLU before the layer runs in its forward and backward passes (layers/chain.py)


@register_layer
class AvgPool2D(_Pool2D):
    __doc__ = _LAYER_DOC.format(what="Average", torch="AvgPool2d", grad="each gradient is shared equally over its window")
    _use_max = False


@register_layer
class GlobalAvgPool2D(Layer):
    """Global average pooling, NCHW -> NC (PyTorch's ``AdaptiveAvgPool2d(1)`` followed by ``Flatten()``).

    One average pooling window of the whole (H, W) plane, through the same compiled kernels as
    :class:`AvgPool2D`.

    Notes
    -----
    x (N, C, H, W) -> y (N, C) with ``y[n, c] = mean(x[n, c])``. ``backward(dE_dY)`` returns ``{"dX"}``:
    ``dE_dY[n, c] / (H * W)`` at every pixel of the plane.
    """

    def forward(self, x: ArrayLike) -> NDArray[np.floating]:
        x, dtype = _input_4d(x, "x")
        N, C, H, W = x.shape
        if H < 1 or W < 1:
            raise ValueError(f"{self!r}: expected x of shape (N, C, H, W) with H, W >= 1, got shape {x.shape}")
        y, _ = _forward(x, dtype, (H, W), (H, W), False)
        self._x, self._y_shape = x, (N, C)
        return y.reshape(N, C)

    def backward(self, dE_dY: ArrayLike) -> dict:
        x = self._cached_input()
        dtype = _checks.compute_dtype((x,), ("x",))
        dy = self._grad_output(dE_dY, dtype)
        N, C, H, W = x.shape
        if dy.size == 0:
            return {"dX": np.zeros(x.shape, dtype)}
        return {"dX": _backward(dy.reshape(N, C, 1, 1), None, x.shape, dtype, (H, W), (H, W), False)}

    def extra_repr(self) -> str:
        return ""
