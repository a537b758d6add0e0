"""The four convolution operations of a CNN layer.

Conventions (the reference tutorial's, NCHW, cross-correlation):

- ``conv2d_forward(x, kernels, bias)``: ``y[n, j] = bias[j] + Σ_i xcorr(x[n, i], kernels[j, i])``
- ``conv2d_kernel_gradient(dE_dY, x)``: ``dK[j, i] = (1/N) Σ_n xcorr(x[n, i], dE_dY[n, j])`` (batch mean)
- ``conv2d_bias_gradient(dE_dY)``: ``dB[j] = (1/N) Σ_{n, p, q} dE_dY[n, j, p, q]`` (batch mean)
- ``conv2d_input_gradient(dE_dY, kernels)``: ``dX[n, i] = Σ_j conv_full(dE_dY[n, j], kernels[j, i])`` (not averaged)

Each operation reads check -> choose -> run: the arguments are checked (:mod:`cnn_ext._checks`), a plan is
made from the shapes (the method, :mod:`cnn_ext._methods`, and its runner, :mod:`cnn_ext._runners`), and the
plan runs on the arrays. Inputs are never modified; results are new arrays (or ``out=``) that cnn_ext never
writes again.
"""
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from numpy.typing import ArrayLike

from . import _checks, _methods, _runners
from ._methods import Geometry
from ._threads import current_threads, threads_for
from ._typing import ConvMethod, FloatArray, IntPair, Padding

__all__ = [
    "conv2d_forward",
    "conv2d_kernel_gradient",
    "conv2d_bias_gradient",
    "conv2d_input_gradient",
    "conv2d_output_shape",
]

# A plan (the result's shape and run(...)) follows from the shapes, the dtype, the options and the thread count
# of the moment (_threads.current_threads) only, and costs more in Python than a small layer's whole kernel: each is made once and kept here. Options
# that are not plain ints, strings or None (NumPy scalars, True == 1, 1.0 == 1) are checked at every call.
_PLANS: Optional[Dict[tuple, Any]] = {}
_PLANS_MAX = 512  # distinct plans kept (then the cache starts over)
_PLAIN = (int, str, type(None))


def _plain(value):
    """Whether an option is built of exact ints, strings and None only (loops: a generator costs more)."""
    if type(value) in _PLAIN:
        return True
    if type(value) is not tuple:
        return False
    for v in value:
        if type(v) not in _PLAIN and not _plain(v):
            return False
    return True


def _key(make, shapes, dtype, options):
    """The plan's key in _PLANS, or None when an option is not built of plain values."""
    for o in options:
        if type(o) not in _PLAIN and not _plain(o):
            return None
    return (make, current_threads(), shapes, dtype, options)


def _plan(make, shapes, dtype, options):
    """``make(*shapes, dtype, *options)``, kept for the next call with the same key; refusals are not kept."""
    key = None if _PLANS is None else _key(make, shapes, dtype, options)
    if key is None:
        return make(*shapes, dtype, *options)
    plan = _PLANS.get(key)
    if plan is None:
        plan = make(*shapes, dtype, *options)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


def _arrays(arrays, names, layouts) -> Tuple[List[np.ndarray], np.dtype]:
    """The arrays checked (real numbers, ndim) and their computation dtype."""
    arrays = list(map(_checks.as_real_array, arrays, names))
    dtype = _checks.compute_dtype(arrays, names)
    for a, name, layout in zip(arrays, names, layouts):
        if a.ndim != len(layout):
            _checks.check_ndim(a, len(layout), name, f"({', '.join(layout)})")
    return arrays, dtype


def conv2d_output_shape(input_hw: IntPair, kernel_hw: IntPair, stride: IntPair = 1,
                        padding: Padding = 0) -> Tuple[int, int]:
    """Output (OH, OW) of a cross-correlation: ``OH = (H + pad_top + pad_bottom - KH) // SH + 1``."""
    H, W = _checks.ints(input_hw, "input_hw", 0)
    KH, KW = _checks.ints(kernel_hw, "kernel_hw", 1)
    SH, SW = _checks.ints(stride, "stride", 1)
    pads = _checks.padding_sides(padding, KH, KW, (SH, SW))
    return _checks.output_hw(H, W, KH, KW, SH, SW, pads, "x", "kernels")


# ---- forward -------------------------------------------------------------------------------------

_FORWARD_NAMES = ("x", "kernels", "bias")
_FORWARD_LAYOUTS = (("N", "C_in", "H", "W"), ("C_out", "C_in", "KH", "KW"), ("C_out",))
_DY, _X, _K = ("N", "C_out", "OH", "OW"), ("N", "C_in", "H", "W"), ("C_out", "C_in", "KH", "KW")


def conv2d_forward(x: ArrayLike, kernels: ArrayLike, bias: ArrayLike, *, stride: IntPair = 1, padding: Padding = 0,
                   method: ConvMethod = "auto", out: Optional[FloatArray] = None) -> FloatArray:
    """Batched 2-D cross-correlation plus bias: the forward pass of a convolution layer.

    Parameters
    ----------
    x : array_like, shape (N, C_in, H, W)
    kernels : array_like, shape (C_out, C_in, KH, KW)
    bias : array_like, shape (C_out,)
    stride : int or (int, int), default 1
    padding : 'valid', 'same', int, (ph, pw) or ((top, bottom), (left, right)), default 0 ('valid')
        Zero padding; 'same' (stride 1 only) keeps H x W, putting the odd extra row/column at the end.
    method : str, default 'auto'
        'auto' picks the fastest kernel for the shape; 'direct' picks among the direct (non-BLAS) kernels
        (stride 1); 'gemm' is im2col + BLAS; or one kernel by name: 'row_tiles' (stride 1, no padding),
        'row_tiles_padded', 'wide', 'shifted', 'channels' (stride 1; C_out a multiple of the vector width).
        All give the same result up to rounding.
    out : ndarray, optional
        Where to write y: C-contiguous, aligned, writeable, of y's shape and dtype, sharing no memory with the
        inputs.

    Returns
    -------
    y : ndarray, shape (N, C_out, OH, OW)
        ``y[n, j] = bias[j] + Σ_i xcorr(x[n, i], kernels[j, i])`` with
        ``OH = (H + pad_top + pad_bottom - KH) // SH + 1`` (``H - KH + 1`` by default), same for OW.
        float32 if every input is float32, else float64. ``out`` when given.
    """
    (x, k, b), dtype = _arrays((x, kernels, bias), _FORWARD_NAMES, _FORWARD_LAYOUTS)
    shape, run = _plan(_forward_plan, (x.shape, k.shape, b.shape), dtype, (stride, padding, method))
    y = _checks.output(out, shape, dtype, (x, k, b), _FORWARD_NAMES)
    if shape[0]:
        run(_checks.contiguous(x, dtype), _checks.contiguous(k, dtype), _checks.contiguous(b, dtype), y)
    return y


def _forward_plan(xshape, kshape, bshape, dtype, stride, padding, method):
    """conv2d_forward's checks and choice: (y's shape, run(x, k, b, y))."""
    N, C_in, H, W = xshape
    C_out, Ck, KH, KW = kshape
    if C_out * Ck * KH * KW == 0:
        raise ValueError(f"kernels must not be empty, got shape {kshape}")
    if Ck != C_in:
        raise ValueError(f"x has {C_in} channels (shape {xshape}) but kernels expect {Ck} (shape {kshape})")
    if bshape[0] != C_out:
        raise ValueError(f"bias has {bshape[0]} entries (shape {bshape}) but kernels have {C_out} output channels "
                         f"(shape {kshape})")
    SH, SW = _checks.ints(stride, "stride", 1)
    pads = _checks.padding_sides(padding, KH, KW, (SH, SW))
    OH, OW = _checks.output_hw(H, W, KH, KW, SH, SW, pads, "x", "kernels", xshape, kshape)
    g = Geometry(N, C_in, C_out, H, W, KH, KW, OH, OW, SH, SW, pads)
    chosen = _methods.forward(method, g, dtype)
    _checks.allocation((N, C_out, OH, OW), dtype, lambda: f"conv2d_forward: x {xshape} with kernels {kshape}, "
                       f"stride {(SH, SW)} and padding {pads} gives y")
    return (N, C_out, OH, OW), _runners.forward(chosen, g, dtype, threads_for(N, g.macs))


# ---- kernel gradient -----------------------------------------------------------------------------

def conv2d_kernel_gradient(dE_dY: ArrayLike, x: ArrayLike, *, stride: IntPair = 1, padding: Padding = 0,
                           kernel_size: Optional[IntPair] = None, method: ConvMethod = "auto") -> FloatArray:
    """Gradient of the loss with respect to the kernels, averaged over the batch.

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)
    x : array_like, shape (N, C_in, H, W)
        The forward pass's input.
    stride, padding : as in :func:`conv2d_forward`
    kernel_size : int or (int, int), optional
        Needed only when it cannot be derived (stride > 1 or padding='same'); with stride 1 it is
        ``KH = H + pad_top + pad_bottom - OH + 1``.
    method : str, default 'auto'
        'auto', 'direct' (stride 1), 'gemm', or one kernel by name: 'loops' (stride 1, no padding), 'wide',
        'shifted' (stride 1), 'row_tiles' (stride 1, one input channel, OW a multiple of the vector width).

    Returns
    -------
    dK : ndarray, shape (C_out, C_in, KH, KW)
        ``dK[j, i] = (1/N) Σ_n xcorr(x[n, i], dE_dY[n, j])``: the true gradient (the tutorial's
        ``correlate2d(dE_dY, x)`` returns it rotated by 180° because SciPy swaps the operands).
    """
    (dy, x), dtype = _arrays((dE_dY, x), ("dE_dY", "x"), (_DY, _X))
    shape, run = _plan(_kernel_gradient_plan, (dy.shape, x.shape), dtype, (stride, padding, kernel_size, method))
    dk = np.empty(shape, dtype=dtype)
    run(_checks.contiguous(dy, dtype), _checks.contiguous(x, dtype), dk)
    return dk


def _kernel_gradient_plan(dyshape, xshape, dtype, stride, padding, kernel_size, method):
    """conv2d_kernel_gradient's checks and choice: (dK's shape, run(dy, x, dk))."""
    N, C_out, OH, OW = dyshape
    Nx, C_in, H, W = xshape
    if Nx != N:
        raise ValueError(f"dE_dY has batch size {N} (shape {dyshape}) but x has {Nx} (shape {xshape})")
    if C_out == 0 or C_in == 0:
        raise ValueError(f"dE_dY {dyshape} and x {xshape} must have at least one channel each")
    SH, SW = _checks.ints(stride, "stride", 1)
    if kernel_size is None:
        if (SH, SW) != (1, 1) or isinstance(padding, str) and padding.lower() == "same":
            raise ValueError("kernel_size is required when stride > 1 or padding='same'")
        pads = _checks.padding_sides(padding, 1, 1, (SH, SW))
        KH, KW = H + pads[0] + pads[1] - OH + 1, W + pads[2] + pads[3] - OW + 1
        if KH < 1 or KW < 1 or OH < 1 or OW < 1:
            raise ValueError(f"dE_dY {dyshape} is larger than x {xshape} allows: no kernel size fits")
    else:
        KH, KW = _checks.ints(kernel_size, "kernel_size", 1)
        pads = _checks.padding_sides(padding, KH, KW, (SH, SW))
    eOH, eOW = _checks.output_hw(H, W, KH, KW, SH, SW, pads, "x", "kernel_size", xshape, (KH, KW))
    if (eOH, eOW) != (OH, OW):
        raise ValueError(f"dE_dY has spatial shape {(OH, OW)} (shape {dyshape}) but x {xshape} with a "
                         f"{KH}x{KW} kernel gives {(eOH, eOW)}")
    g = Geometry(N, C_in, C_out, H, W, KH, KW, OH, OW, SH, SW, pads)
    chosen = _methods.kernel_gradient(method, g, dtype)
    _checks.allocation((C_out, C_in, KH, KW), dtype, lambda: f"conv2d_kernel_gradient: dE_dY {dyshape} and x "
                       f"{xshape} with padding {pads} give dK")
    nt = threads_for(max(1, min(N, _methods.NCHUNK)), g.macs)
    return (C_out, C_in, KH, KW), _runners.kernel_gradient(chosen, g, dtype, nt)


# ---- bias gradient -------------------------------------------------------------------------------

def conv2d_bias_gradient(dE_dY: ArrayLike) -> FloatArray:
    """Gradient of the loss with respect to the biases, averaged over the batch.

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)

    Returns
    -------
    dB : ndarray, shape (C_out,)
        ``dB[j] = (1/N) Σ_{n, p, q} dE_dY[n, j, p, q]`` (zeros when N = 0).
    """
    (dy,), dtype = _arrays((dE_dY,), ("dE_dY",), (_DY,))
    dy = _checks.contiguous(dy, dtype)
    C_out = dy.shape[1]
    db = np.empty(C_out, dtype)
    if C_out == 0:
        return db
    _runners.bias_gradient(dy, db)
    return db


# ---- input gradient ------------------------------------------------------------------------------

_IGRAD_NAMES = ("dE_dY", "kernels")


def conv2d_input_gradient(dE_dY: ArrayLike, kernels: ArrayLike, *, stride: IntPair = 1, padding: Padding = 0,
                          input_size: Optional[IntPair] = None, method: ConvMethod = "auto",
                          out: Optional[FloatArray] = None) -> FloatArray:
    """Gradient of the loss with respect to the layer's input (not averaged).

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)
    kernels : array_like, shape (C_out, C_in, KH, KW)
    stride, padding : as in :func:`conv2d_forward`
    input_size : int or (int, int), optional
        (H, W) of the forward input; needed only with stride > 1, where several sizes give the same
        output. By default ``H = (OH - 1) * SH + KH - pad_top - pad_bottom``.
    method : str, default 'auto'
        'auto', 'direct' (stride 1, padding <= kernel size - 1: the forward's direct kernels on dE_dY padded by
        kernel size - 1 - padding with the transposed, 180°-rotated kernels), 'gemm' (BLAS + col2im), or one
        kernel by name: 'scatter' (stride 1, no padding), 'wide', 'band' (one input channel), 'channels'.
    out : ndarray, optional
        Where to write dX, as in :func:`conv2d_forward`.

    Returns
    -------
    dX : ndarray, shape (N, C_in, H, W)
        ``dX[n, i] = Σ_j conv_full(dE_dY[n, j], kernels[j, i])`` (the adjoint of the forward map); ``out``
        when given.
    """
    (dy, k), dtype = _arrays((dE_dY, kernels), _IGRAD_NAMES, (_DY, _K))
    shape, run = _plan(_input_gradient_plan, (dy.shape, k.shape), dtype, (stride, padding, input_size, method))
    dx = _checks.output(out, shape, dtype, (dy, k), _IGRAD_NAMES)
    if shape[0]:
        run(_checks.contiguous(dy, dtype), _checks.contiguous(k, dtype), dx)
    return dx


def _input_gradient_plan(dyshape, kshape, dtype, stride, padding, input_size, method):
    """conv2d_input_gradient's checks and choice: (dX's shape, run(dy, k, dx))."""
    N, C_out, OH, OW = dyshape
    Ck, C_in, KH, KW = kshape
    if Ck * C_in * KH * KW == 0:
        raise ValueError(f"kernels must not be empty, got shape {kshape}")
    if Ck != C_out:
        raise ValueError(f"dE_dY has {C_out} channels (shape {dyshape}) but kernels have {Ck} output channels "
                         f"(shape {kshape})")
    if OH < 1 or OW < 1:
        raise ValueError(f"dE_dY must have a non-empty spatial shape, got {dyshape}")
    SH, SW = _checks.ints(stride, "stride", 1)
    pads = _checks.padding_sides(padding, KH, KW, (SH, SW))
    if input_size is None:
        H, W = (OH - 1) * SH + KH - pads[0] - pads[1], (OW - 1) * SW + KW - pads[2] - pads[3]
        if H < 1 or W < 1:
            raise ValueError(f"dE_dY {dyshape} with kernels {kshape} and padding {padding!r} gives no valid "
                             f"input size")
    else:
        H, W = _checks.ints(input_size, "input_size", 1)
    eOH, eOW = _checks.output_hw(H, W, KH, KW, SH, SW, pads, "input_size", "kernels", (H, W), kshape)
    if (eOH, eOW) != (OH, OW):
        raise ValueError(f"dE_dY has spatial shape {(OH, OW)} (shape {dyshape}) but an input of {(H, W)} with "
                         f"kernels {kshape} gives {(eOH, eOW)}")
    _checks.allocation((N, C_in, H, W), dtype, lambda: f"conv2d_input_gradient: dE_dY {dyshape} with kernels "
                       f"{kshape}, stride {(SH, SW)} and padding {pads} gives dX")
    g = Geometry(N, C_in, C_out, H, W, KH, KW, OH, OW, SH, SW, pads)
    chosen = _methods.input_gradient(method, g, dtype)
    return (N, C_in, H, W), _runners.input_gradient(chosen, g, dtype, threads_for(N, g.macs))
