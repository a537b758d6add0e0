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
from ._kernels import depthwise, tiled
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


def conv2d_output_shape(input_hw: IntPair, kernel_hw: IntPair, stride: IntPair = 1, padding: Padding = 0, *,
                        dilation: IntPair = 1) -> Tuple[int, int]:
    """Output (OH, OW) of a cross-correlation, PyTorch's formula:
    ``OH = (H + pad_top + pad_bottom - DH * (KH - 1) - 1) // SH + 1``, same for OW (groups do not change it)."""
    H, W = _checks.ints(input_hw, "input_hw", 0)
    KH, KW = _checks.ints(kernel_hw, "kernel_hw", 1)
    SH, SW = _checks.ints(stride, "stride", 1)
    if dilation != 1:
        DH, DW = _checks.dilation(dilation)
        KH, KW = _checks.dilated(KH, KW, DH, DW, "kernel_hw", (KH, KW))
    pads = _checks.padding_sides(padding, KH, KW, (SH, SW))
    return _checks.output_hw(H, W, KH, KW, SH, SW, pads, "x", "kernels")


# ---- forward -------------------------------------------------------------------------------------

_FORWARD_NAMES = ("x", "kernels", "bias")
_FORWARD_LAYOUTS = (("N", "C_in", "H", "W"), ("C_out", "C_in", "KH", "KW"), ("C_out",))
_DY, _X, _K = ("N", "C_out", "OH", "OW"), ("N", "C_in", "H", "W"), ("C_out", "C_in", "KH", "KW")


def conv2d_forward(x: ArrayLike, kernels: ArrayLike, bias: ArrayLike, *, stride: IntPair = 1, padding: Padding = 0,
                   dilation: IntPair = 1, groups: int = 1, method: ConvMethod = "auto",
                   out: Optional[FloatArray] = None) -> FloatArray:
    """Batched 2-D cross-correlation plus bias: the forward pass of a convolution layer.

    Parameters
    ----------
    x : array_like, shape (N, C_in, H, W)
    kernels : array_like, shape (C_out, C_in // groups, KH, KW)
    bias : array_like, shape (C_out,)
    stride : int or (int, int), default 1
    padding : 'valid', 'same', int, (ph, pw) or ((top, bottom), (left, right)), default 0 ('valid')
        Zero padding; 'same' (stride 1 only) keeps H x W, putting the odd extra row/column at the end.
    dilation : int or (int, int), default 1
        Spacing between kernel taps, as in PyTorch. The depthwise kernel (below) takes it directly. With
        stride 1, the input is cut into its DH x DW phases (every DH-th row, every DW-th column), stacked
        along the batch, and run through the plain compiled methods with the undilated kernels: the plain
        multiply-adds plus a copy of x and of y. With stride > 1, the methods run the kernels with DH - 1
        (DW - 1) zeros inserted between taps: a (DH*(KH-1)+1) x (DW*(KW-1)+1) kernel, so it costs that
        kernel's multiply-adds (3x3 with dilation 2: 25 instead of 9 per output). Calls whose inputs hold an
        inf or NaN where those zeros would multiply them take a loop over the real taps instead (NumPy
        products), so they never make a NaN that PyTorch's would not.
    groups : int, default 1
        Input and output channels split into ``groups`` blocks, block g of y seeing block g of x only, as in
        PyTorch. Must divide C_in and C_out. Depthwise (``groups == C_in``, any C_out = m * C_in) with method
        'auto' runs its own compiled kernel, which takes stride, padding and dilation directly (no inserted
        zeros, no product with padding). Other groups > 1 (and depthwise with a forced method) run the
        compiled method of one group's shape once per group, on contiguous copies of each group's channels
        (one copy of x and one of y in all); each group's call splits its samples over the threads.
    method : str, default 'auto'
        'auto' picks the fastest kernel for the shape; 'direct' picks among the direct (non-BLAS) kernels
        (stride 1, or 'channels' at any stride); 'gemm' is im2col + BLAS; or one kernel by name: 'row_tiles'
        (stride 1, no padding), 'row_tiles_padded', 'wide', 'shifted' (stride 1), 'channels' (any stride; C_out a
        multiple of the vector width). All give the same result up to rounding.
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
    if type(groups) is int and type(dilation) is int and groups == 1 == dilation:  # the default: plain path
        shape, run = _plan(_forward_plan, (x.shape, k.shape, b.shape), dtype, (stride, padding, method))
    else:
        shape, run = _plan(_grouped_forward_plan, (x.shape, k.shape, b.shape), dtype,
                           (stride, padding, method, dilation, groups))
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
                           dilation: IntPair = 1, groups: int = 1, kernel_size: Optional[IntPair] = None,
                           method: ConvMethod = "auto") -> FloatArray:
    """Gradient of the loss with respect to the kernels, averaged over the batch.

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)
    x : array_like, shape (N, C_in, H, W)
        The forward pass's input.
    stride, padding, dilation, groups : as in :func:`conv2d_forward`
        With stride > 1, dilation computes the gradient of the zero-inserted (dilated) kernel with the compiled
        methods and keeps its taps at the dilation's positions: it costs the dilated kernel's multiply-adds.
    kernel_size : int or (int, int), optional
        Needed only when it cannot be derived (stride > 1 or padding='same'); with stride 1 it is
        ``KH = (H + pad_top + pad_bottom - OH) // DH + 1``.
    method : str, default 'auto'
        'auto', 'direct' (stride 1), 'gemm', or one kernel by name: 'loops' (stride 1, no padding), 'wide',
        'shifted' (stride 1), 'row_tiles' (stride 1, one input channel, OW a multiple of the vector width).

    Returns
    -------
    dK : ndarray, shape (C_out, C_in // groups, KH, KW)
        ``dK[j, i] = (1/N) Σ_n xcorr(x[n, i], dE_dY[n, j])``: the true gradient (the tutorial's
        ``correlate2d(dE_dY, x)`` returns it rotated by 180° because SciPy swaps the operands).
    """
    (dy, x), dtype = _arrays((dE_dY, x), ("dE_dY", "x"), (_DY, _X))
    if type(groups) is int and type(dilation) is int and groups == 1 == dilation:
        shape, run = _plan(_kernel_gradient_plan, (dy.shape, x.shape), dtype,
                           (stride, padding, kernel_size, method))
    else:
        shape, run = _plan(_grouped_kernel_gradient_plan, (dy.shape, x.shape), dtype,
                           (stride, padding, kernel_size, method, dilation, groups))
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
    nt = threads_for(_methods.nchunk(g, dtype), g.macs)
    return (C_out, C_in, KH, KW), _runners.kernel_gradient(chosen, g, dtype, nt)


# ---- bias gradient -------------------------------------------------------------------------------

def conv2d_bias_gradient(dE_dY: ArrayLike, *, dilation: IntPair = 1, groups: int = 1) -> FloatArray:
    """Gradient of the loss with respect to the biases, averaged over the batch.

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)
    dilation, groups : as in :func:`conv2d_forward`
        They do not change the bias gradient; accepted so that the four operations take the same options,
        and checked (dilation >= 1, groups dividing C_out).

    Returns
    -------
    dB : ndarray, shape (C_out,)
        ``dB[j] = (1/N) Σ_{n, p, q} dE_dY[n, j, p, q]`` (zeros when N = 0).
    """
    (dy,), dtype = _arrays((dE_dY,), ("dE_dY",), (_DY,))
    if not (type(groups) is int and type(dilation) is int and groups == 1 == dilation):
        _checks.dilation(dilation)
        _checks.groups(groups, dy.shape[1], dy.shape[1], "dE_dY", dy.shape, "dE_dY", dy.shape)
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
                          dilation: IntPair = 1, groups: int = 1, input_size: Optional[IntPair] = None,
                          method: ConvMethod = "auto", out: Optional[FloatArray] = None) -> FloatArray:
    """Gradient of the loss with respect to the layer's input (not averaged).

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)
    kernels : array_like, shape (C_out, C_in // groups, KH, KW)
    stride, padding, dilation, groups : as in :func:`conv2d_forward` (with the same costs)
    input_size : int or (int, int), optional
        (H, W) of the forward input; needed only with stride > 1, where several sizes give the same
        output. By default ``H = (OH - 1) * SH + DH * (KH - 1) + 1 - pad_top - pad_bottom``.
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
    if type(groups) is int and type(dilation) is int and groups == 1 == dilation:
        shape, run = _plan(_input_gradient_plan, (dy.shape, k.shape), dtype, (stride, padding, input_size, method))
    else:
        shape, run = _plan(_grouped_input_gradient_plan, (dy.shape, k.shape), dtype,
                           (stride, padding, input_size, method, dilation, groups))
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


# ---- groups and dilation -------------------------------------------------------------------------
# Each runs the plain plan of one group's shapes, with the dilated (zero-inserted) kernels, once per group.

def _dilate(k, DH, DW):
    """``k`` with DH - 1 (DW - 1) zeros between its taps: the dilated kernel as a plain one (``k`` itself at 1)."""
    if DH == 1 and DW == 1:
        return k
    C_out, C, KH, KW = k.shape
    kd = np.zeros((C_out, C, (KH - 1) * DH + 1, (KW - 1) * DW + 1), k.dtype)
    kd[:, :, ::DH, ::DW] = k
    return kd


def _by_group(a, G):
    """(N, G * C, H, W) -> (G, N, C, H, W), C-contiguous: each group's channels as one contiguous batch."""
    N, C, H, W = a.shape
    return np.ascontiguousarray(a.reshape(N, G, C // G, H, W).transpose(1, 0, 2, 3, 4))


def _pad_pairs(pads):
    top, bottom, left, right = pads
    return ((top, bottom), (left, right))


def _inner(make, shapes, dtype, options, G, D):
    """The plain plan of one group's shapes; its refusal restated with the groups and the dilation."""
    try:
        return make(*shapes, dtype, *options)
    except ValueError as exc:
        raise ValueError(f"with groups={G} and dilation={D} (each group's call: {', '.join(map(str, shapes))}): "
                         f"{exc}") from None


def _exact_taps(x, k, dy, G, S, pads, D, forward):
    """The dilated convolution (``forward``: y += Σ over taps) or its adjoint (dx += ...) over the real taps only,
    in NumPy: what non-finite inputs take, where a zero-inserted tap would make 0 * inf = NaN."""
    (SH, SW), (top, _, left, _), (DH, DW) = S, pads, D
    C_out, cig, KH, KW = k.shape
    cog = C_out // G
    N, _, H, W = x.shape
    OH, OW = dy.shape[2:]
    for a in range(KH):
        # output rows p whose input row p*SH - top + a*DH lies in [0, H)
        p0 = max(0, -(-(top - a * DH) // SH))
        p1 = min(OH, (H - 1 + top - a * DH) // SH + 1)
        for c in range(KW):
            q0 = max(0, -(-(left - c * DW) // SW))
            q1 = min(OW, (W - 1 + left - c * DW) // SW + 1)
            if p0 >= p1 or q0 >= q1:
                continue
            rows = slice(p0 * SH - top + a * DH, (p1 - 1) * SH - top + a * DH + 1, SH)
            cols = slice(q0 * SW - left + c * DW, (q1 - 1) * SW - left + c * DW + 1, SW)
            for g in range(G):
                ci, co = slice(g * cig, (g + 1) * cig), slice(g * cog, (g + 1) * cog)
                if forward:
                    dy[:, co, p0:p1, q0:q1] += np.einsum("ncpq,jc->njpq", x[:, ci, rows, cols], k[co, :, a, c])
                else:
                    x[:, ci, rows, cols] += np.einsum("njpq,jc->ncpq", dy[:, co, p0:p1, q0:q1], k[co, :, a, c])


def _typed(kernel, dtype):
    """The kernel's version for this dtype: skips Cython's dispatch on the arguments' types at every call."""
    return kernel["float" if dtype == np.float32 else "double"]


def _depthwise(G, C_in, Ck, method, g):
    """Whether the compiled depthwise kernels run this call: groups == C_in (one input channel per kernel),
    method 'auto', no empty array."""
    return G == C_in and Ck == 1 and G > 1 and method == "auto" and g.N * g.H * g.W > 0


def _depthwise_run(kernel, wide, g, D, dtype, parts, checked, taps=0):
    """run(*arrays) of a depthwise kernel split over ``parts``: with stride 1 its wide-row twin ``wide`` when the
    arrays at the indices ``checked`` are finite (no inf meets padding or dropped columns there), else the
    row loops. ``taps`` partial rows per slab for the kernel gradient."""
    kernel, wide, (top, bottom, left, right) = _typed(kernel, dtype), _typed(wide, dtype), g.pads
    nt = threads_for(parts, g.macs)
    Hp, Wp = g.H + top + bottom, g.W + left + right
    L = (g.OH - 1) * Wp + g.OW
    stride1 = g.SH == 1 and g.SW == 1

    def run(*arrays):
        if stride1 and _finite(*(arrays[i] for i in checked)):
            wide(*arrays, np.empty((nt, Hp * Wp + L * (1 + taps)), dtype), *D, top, left, nt)
        else:
            kernel(*arrays, *((np.empty((nt, g.OW), dtype),) if taps else ()), g.SH, g.SW, *D, top, left, nt)

    return run


def _depthwise_kgrad_in_chunks(run, g, nt):
    """run(dy, x, dk) of the depthwise kernel gradient on consecutive groups of output channels when the call is long
    (_runners.per_call; Ctrl-C acts between them); a channel's batch sum is the one of a single call, so the bits
    are too."""
    m = g.C_out // g.C_in  # output channels per input channel: groups of whole input channels
    step = _runners.per_call(g.N * g.OH * g.OW * g.KH * g.KW, g.C_out, nt, m)
    if step is None:
        return run

    def run_chunks(dy, x, dk):
        for c0 in range(0, g.C_out, step):
            c1 = min(g.C_out, c0 + step)
            # the kernels take C-contiguous arrays: copies of the channels, a small cost beside their 9+ taps
            run(np.ascontiguousarray(dy[:, c0:c1]), np.ascontiguousarray(x[:, c0 // m:c1 // m]), dk[c0:c1])

    return run_chunks


def _to_phases(a, D, top, left, rows, cols):
    """(N, C, h, w) placed at (top, left) in zeros of (rows * DH, cols * DW), cut into its DH * DW phases (every
    DH-th row from r, every DW-th column from s) stacked along the batch: (DH * DW * N, C, rows, cols), C-contiguous.
    A stride-1 convolution dilated by D is the plain one of each phase, interleaved back (_from_phases)."""
    DH, DW = D
    N, C, h, w = a.shape
    full = np.zeros((N, C, rows * DH, cols * DW), a.dtype)
    full[:, :, top:top + h, left:left + w] = a
    phases = np.ascontiguousarray(full.reshape(N, C, rows, DH, cols, DW).transpose(3, 5, 0, 1, 2, 4))
    return phases.reshape(DH * DW * N, C, rows, cols)


def _from_phases(a, D, N):
    """_to_phases' interleave undone: (DH * DW * N, C, rows, cols) -> (N, C, rows * DH, cols * DW)."""
    DH, DW = D
    _, C, rows, cols = a.shape
    return a.reshape(DH, DW, N, C, rows, cols).transpose(2, 3, 4, 0, 5, 1).reshape(N, C, rows * DH, cols * DW)


def _finite(*arrays):
    return all(tiled.all_finite(a.reshape(-1)) for a in arrays if a.size)


def _per_group(run1, inner, G, D, S, pads, forward):
    """run(x, k, b, y) (``forward``) or run(dy, k, dx) from ``run1``, the plain run of one group's shapes
    (``inner``: its result's shape), with the dilated kernels, once per group."""
    DH, DW = D

    def run(a, k, *rest):
        *b, out = rest
        if D != (1, 1) and a.size and not tiled.all_finite(a.reshape(-1)):
            if forward:
                out[...] = b[0][:, None, None]
                _exact_taps(a, k, out, G, S, pads, D, True)
            else:
                out[...] = 0
                _exact_taps(out, k, a, G, S, pads, D, False)
            return
        kd = _dilate(k, DH, DW)
        if G == 1:
            run1(a, kd, *b, out)
            return
        a_by_group = _by_group(a, G)
        part = np.empty(inner, out.dtype)
        out_by_group = out.reshape(out.shape[0], G, inner[1], *inner[2:])
        cog = k.shape[0] // G
        for g in range(G):
            block = slice(g * cog, (g + 1) * cog)
            run1(a_by_group[g], kd[block], *(v[block] for v in b), part)
            out_by_group[:, g] = part

    return run


def _kernels_dilation(kshape, dilation):
    """(DH, DW), after the checks of the kernels' shape and the dilation that the grouped plans share."""
    if 0 in kshape:
        raise ValueError(f"kernels must not be empty, got shape {kshape}")
    return _checks.dilation(dilation)


def _grouped_forward_plan(xshape, kshape, bshape, dtype, stride, padding, method, dilation, groups):
    """conv2d_forward's plan with groups and dilation: the plain plan of one group, run per group."""
    N, C_in, H, W = xshape
    (C_out, Ck, KH, KW), (DH, DW) = kshape, _kernels_dilation(kshape, dilation)
    G = _checks.groups(groups, C_in, C_out, "x", xshape, "kernels", kshape)
    if G == 1 and (DH, DW) == (1, 1):
        return _forward_plan(xshape, kshape, bshape, dtype, stride, padding, method)
    if Ck * G != C_in:
        raise ValueError(f"x has {C_in} channels (shape {xshape}) but kernels with groups={G} expect "
                         f"groups * {Ck} = {Ck * G} (shape {kshape})")
    if bshape[0] != C_out:
        raise ValueError(f"bias has {bshape[0]} entries (shape {bshape}) but kernels have {C_out} output channels "
                         f"(shape {kshape})")
    KDH, KDW = _checks.dilated(KH, KW, DH, DW, "kernels", kshape)
    S = _checks.ints(stride, "stride", 1)
    pads = _checks.padding_sides(padding, KDH, KDW, S)
    OH, OW = _checks.output_hw(H, W, KDH, KDW, *S, pads, "x", f"kernels dilated by {(DH, DW)}", xshape, kshape)
    cog = C_out // G
    _checks.allocation((C_out, Ck, KDH, KDW), dtype, lambda: f"conv2d_forward: kernels {kshape} with dilation "
                       f"{(DH, DW)} give dilated kernels")
    inner, run1 = _inner(_forward_plan, ((N, Ck, H, W), (cog, Ck, KDH, KDW), (cog,)), dtype,
                         (S, _pad_pairs(pads), method), G, (DH, DW))
    _checks.allocation((N, C_out, OH, OW), dtype, lambda: f"conv2d_forward: x {xshape} with kernels {kshape}, "
                       f"groups {G} and dilation {(DH, DW)} gives y")
    geo = Geometry(N, C_in, C_out, H, W, KH, KW, OH, OW, *S, pads)
    if _depthwise(G, C_in, Ck, method, geo):
        return (N, C_out, OH, OW), _runners.in_chunks(_depthwise_run(
            depthwise.depthwise_forward, depthwise.depthwise_forward_wide, geo, (DH, DW), dtype, N * C_out, (1,)),
            geo, threads_for(N * C_out, geo.macs))
    if S == (1, 1) and (DH, DW) != (1, 1):
        # the plain convolution of each phase (no inserted zeros; extra zero rows only feed outputs cut off)
        D, rows, cols = (DH, DW), -(-(H + pads[0] + pads[1]) // DH), -(-(W + pads[2] + pads[3]) // DW)
        _checks.allocation((DH * DW * N, C_in, rows, cols), dtype, lambda: f"conv2d_forward: x {xshape} with "
                           f"dilation {D} gives phases")
        pinner, prun = _inner(_grouped_forward_plan, ((DH * DW * N, C_in, rows, cols), kshape, bshape), dtype,
                              (1, 0, method, 1, G), G, D)

        def run_phases(x, k, b, y):
            part = np.empty(pinner, dtype)
            prun(_to_phases(x, D, pads[0], pads[2], rows, cols), k, b, part)
            y[...] = _from_phases(part, D, N)[:, :, :OH, :OW]

        return (N, C_out, OH, OW), run_phases
    return (N, C_out, OH, OW), _per_group(run1, inner, G, (DH, DW), S, pads, True)


def _grouped_kernel_gradient_plan(dyshape, xshape, dtype, stride, padding, kernel_size, method, dilation, groups):
    """conv2d_kernel_gradient's plan with groups and dilation: the dilated kernel's gradient per group, at the
    dilation's taps."""
    N, C_out, OH, OW = dyshape
    Nx, C_in, H, W = xshape
    DH, DW = _checks.dilation(dilation)
    if Nx != N:
        raise ValueError(f"dE_dY has batch size {N} (shape {dyshape}) but x has {Nx} (shape {xshape})")
    if C_out == 0 or C_in == 0:
        raise ValueError(f"dE_dY {dyshape} and x {xshape} must have at least one channel each")
    G = _checks.groups(groups, C_in, C_out, "x", xshape, "dE_dY", dyshape)
    if G == 1 and (DH, DW) == (1, 1):
        return _kernel_gradient_plan(dyshape, xshape, dtype, stride, padding, kernel_size, method)
    S = _checks.ints(stride, "stride", 1)
    if kernel_size is None:
        if S != (1, 1) or isinstance(padding, str) and padding.lower() == "same":
            raise ValueError("kernel_size is required when stride > 1 or padding='same'")
        pads = _checks.padding_sides(padding, 1, 1, S)
        KDH, KDW = H + pads[0] + pads[1] - OH + 1, W + pads[2] + pads[3] - OW + 1
        if KDH < 1 or KDW < 1 or OH < 1 or OW < 1 or (KDH - 1) % DH or (KDW - 1) % DW:
            raise ValueError(f"dE_dY {dyshape} does not fit x {xshape} with dilation {(DH, DW)}: no kernel size "
                             f"gives it (a dilated kernel spans DH * (KH - 1) + 1 rows)")
        KH, KW = (KDH - 1) // DH + 1, (KDW - 1) // DW + 1
    else:
        KH, KW = _checks.ints(kernel_size, "kernel_size", 1)
        KDH, KDW = _checks.dilated(KH, KW, DH, DW, "kernel_size", (KH, KW))
        pads = _checks.padding_sides(padding, KDH, KDW, S)
    eOH, eOW = _checks.output_hw(H, W, KDH, KDW, *S, pads, "x", f"kernel_size dilated by {(DH, DW)}", xshape,
                                 (KH, KW))
    if (eOH, eOW) != (OH, OW):
        raise ValueError(f"dE_dY has spatial shape {(OH, OW)} (shape {dyshape}) but x {xshape} with a "
                         f"{KH}x{KW} kernel dilated by {(DH, DW)} gives {(eOH, eOW)}")
    cig, cog = C_in // G, C_out // G
    _checks.allocation((cog, cig, KDH, KDW), dtype, lambda: f"conv2d_kernel_gradient: kernel_size {(KH, KW)} with "
                       f"dilation {(DH, DW)} gives dilated kernels")
    inner, run1 = _inner(_kernel_gradient_plan, ((N, cog, OH, OW), (N, cig, H, W)), dtype,
                         (S, _pad_pairs(pads), (KDH, KDW), method), G, (DH, DW))

    geo = Geometry(N, C_in, C_out, H, W, KH, KW, OH, OW, *S, pads)
    if _depthwise(G, C_in, cig, method, geo):
        run_dw = _depthwise_run(depthwise.depthwise_kernel_gradient, depthwise.depthwise_kernel_gradient_wide, geo,
                                (DH, DW), dtype, C_out, (0, 1), KH * KW)
        return (C_out, 1, KH, KW), _depthwise_kgrad_in_chunks(run_dw, geo, threads_for(C_out, geo.macs))

    def run(dy, x, dk):
        if G == 1:
            dyg, xg = (dy,), (x,)
        else:
            dyg, xg = _by_group(dy, G), _by_group(x, G)
        part = np.empty(inner, dtype)
        for g in range(G):
            run1(dyg[g], xg[g], part)
            dk[g * cog:(g + 1) * cog] = part[:, :, ::DH, ::DW]

    if S == (1, 1) and (DH, DW) != (1, 1):
        # per phase (see _grouped_forward_plan), the batch mean over N * DH * DW samples times DH * DW
        D, rows, cols = (DH, DW), -(-(H + pads[0] + pads[1]) // DH), -(-(W + pads[2] + pads[3]) // DW)
        _checks.allocation((DH * DW * N, C_in, rows, cols), dtype, lambda: f"conv2d_kernel_gradient: x {xshape} "
                           f"with dilation {D} gives phases")
        pshapes = ((DH * DW * N, C_out, rows - KH + 1, cols - KW + 1), (DH * DW * N, C_in, rows, cols))
        _, prun = _inner(_grouped_kernel_gradient_plan, pshapes, dtype, (1, 0, (KH, KW), method, 1, G), G, D)

        def run_phases(dy, x, dk):
            if not _finite(dy, x):  # dE_dY's extra zero rows would meet x's values: 0 * inf
                return run(dy, x, dk)
            prun(_to_phases(dy, D, 0, 0, *pshapes[0][2:]), _to_phases(x, D, pads[0], pads[2], rows, cols), dk)
            dk *= dtype.type(DH * DW)

        return (C_out, cig, KH, KW), run_phases
    return (C_out, cig, KH, KW), run


def _grouped_input_gradient_plan(dyshape, kshape, dtype, stride, padding, input_size, method, dilation, groups):
    """conv2d_input_gradient's plan with groups and dilation: the plain plan of one group, run per group."""
    N, C_out, OH, OW = dyshape
    (Ck, cig, KH, KW), (DH, DW) = kshape, _kernels_dilation(kshape, dilation)
    if Ck != C_out:
        raise ValueError(f"dE_dY has {C_out} channels (shape {dyshape}) but kernels have {Ck} output channels "
                         f"(shape {kshape})")
    G = _checks.positive_int(groups, "groups", _checks.INT_MAX)
    if C_out % G:
        raise ValueError(f"groups={G} must divide the output channels ({C_out}, dE_dY of shape {dyshape} and "
                         f"kernels of shape {kshape})")
    if G == 1 and (DH, DW) == (1, 1):
        return _input_gradient_plan(dyshape, kshape, dtype, stride, padding, input_size, method)
    KDH, KDW = _checks.dilated(KH, KW, DH, DW, "kernels", kshape)
    S = _checks.ints(stride, "stride", 1)
    pads = _checks.padding_sides(padding, KDH, KDW, S)
    cog = C_out // G
    _checks.allocation((C_out, cig, KDH, KDW), dtype, lambda: f"conv2d_input_gradient: kernels {kshape} with "
                       f"dilation {(DH, DW)} give dilated kernels")
    inner, run1 = _inner(_input_gradient_plan, ((N, cog, OH, OW), (cog, cig, KDH, KDW)), dtype,
                         (S, _pad_pairs(pads), input_size, method), G, (DH, DW))
    geo = Geometry(N, cig * G, C_out, *inner[2:], KH, KW, OH, OW, *S, pads)
    if _depthwise(G, cig * G, cig, method, geo):
        return (N, G) + inner[2:], _runners.in_chunks(_depthwise_run(
            depthwise.depthwise_input_gradient, depthwise.depthwise_input_gradient_wide, geo, (DH, DW), dtype,
            N * G, (1,)), geo, threads_for(N * G, geo.macs))
    run = _per_group(run1, inner, G, (DH, DW), S, pads, False)
    if S == (1, 1) and (DH, DW) != (1, 1):
        # per phase (see _grouped_forward_plan): dE_dY's phases, the transposed convolution, interleaved back
        D, (H, W) = (DH, DW), inner[2:]
        rows, cols = -(-(H + pads[0] + pads[1]) // DH), -(-(W + pads[2] + pads[3]) // DW)
        pdy = (DH * DW * N, C_out, rows - KH + 1, cols - KW + 1)
        _checks.allocation((DH * DW * N, cig * G, rows, cols), dtype, lambda: f"conv2d_input_gradient: dE_dY "
                           f"{dyshape} with dilation {D} gives phases")
        pinner, prun = _inner(_grouped_input_gradient_plan, (pdy, kshape), dtype, (1, 0, (rows, cols), method, 1, G),
                              G, D)

        def run_phases(dy, k, dx):
            if not _finite(dy, k):  # the extra zero rows of dE_dY would meet an inf tap; or inf * inserted zeros
                return run(dy, k, dx)
            part = np.empty(pinner, dtype)
            prun(_to_phases(dy, D, 0, 0, *pdy[2:]), k, part)
            dx[...] = _from_phases(part, D, N)[:, :, pads[0]:pads[0] + H, pads[2]:pads[2] + W]

        return (N, cig * G, H, W), run_phases
    return (N, cig * G) + inner[2:], run
