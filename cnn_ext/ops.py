"""The four convolution operations of a CNN layer, validated here and computed by the Cython kernels.

Conventions (the reference tutorial's, NCHW, cross-correlation):

- ``conv2d_forward(x, kernels, bias)``: ``y[n, j] = bias[j] + Σ_i xcorr(x[n, i], kernels[j, i])``
- ``conv2d_kernel_gradient(dE_dY, x)``: ``dK[j, i] = (1/N) Σ_n xcorr(x[n, i], dE_dY[n, j])`` (batch mean)
- ``conv2d_bias_gradient(dE_dY)``: ``dB[j] = (1/N) Σ_{n, p, q} dE_dY[n, j, p, q]`` (batch mean)
- ``conv2d_input_gradient(dE_dY, kernels)``: ``dX[n, i] = Σ_j conv_full(dE_dY[n, j], kernels[j, i])`` (not averaged)

Every check lives in this module and raises ``ValueError`` (shapes, values) or ``TypeError`` (types) naming the
argument and the shapes; the kernels trust what they are given. Inputs are never modified: arrays that are not
C-contiguous in the computation dtype are copied, others are read through ``const`` memoryviews.
"""
import operator
import os
from contextlib import nullcontext

import numpy as np

from ._kernels import ISA as _ISA, conv as _conv
from ._config import blas_single_thread, get_num_threads

__all__ = [
    "conv2d_forward",
    "conv2d_kernel_gradient",
    "conv2d_bias_gradient",
    "conv2d_input_gradient",
    "conv2d_output_shape",
]

_INT_MAX = 2**31 - 1  # BLAS takes 32-bit int sizes
_NCHUNK = 16  # batch reductions: fixed chunks, summed in order, whatever the thread count
_METHODS = ("auto", "direct", "gemm")
# im2col works on blocks of output pixels so the per-thread slab stays bounded on large images (224x224x64
# would need 231 MB unblocked). Measured: wide GEMMs beat L2-sized ones (64 ch 3x3 28x28: 384 KiB blocks were
# 5-15% slower than whole maps), so blocks are large.
_COLS_BLOCK_BYTES = int(os.environ.get("CNN_EXT_COLS_BLOCK_BYTES", 8 * 1024 * 1024))
_MIN_BLOCK = 64  # output pixels
_MATMUL_WORK_FACTOR = 5  # a matmul splits only from 5x the work per thread of a convolution (measured below)
_MIN_WORK_PER_THREAD = int(os.environ.get("CNN_EXT_MIN_WORK_PER_THREAD", 200_000))  # multiply-adds
# Kernel gradient, method="auto" (measurements in _kgrad_method): the register-tiled direct kernel for every
# stride-1 layer in the AVX2 build. A tile is 4 output channels x 3 taps of vector accumulators (12 of the 16
# ymm registers; 6 x 2 and 3 x 4 tiles were 20-60% slower: gcc folds their extra loads into the FMAs).
_KGRAD_TILED = _ISA == "avx2"
_KGRAD_TILE_CHANNELS, _KGRAD_TILE_TAPS = 4, 3
_KGRAD_SHIFTED_MIN_F32 = 128  # C_out * KH from which the shifted-copies layout beats wide rows
_KGRAD_SHIFTED_MIN_F64 = 56
_KGRAD_MIN_VECTORS = 48  # SIMD vectors per output plane from which the tiled kernel beats gemm at any width
_KGRAD_MAX_PARTIAL_BYTES = 128 * 1024  # vector partials up to which it wins on smaller planes
_KGRAD_MAX_PARTIAL_BYTES_ANY = 32 * 1024 * 1024  # per-thread partials beyond which auto takes gemm (memory)
_DIRECT_MAX_OUTPUT = 36  # output pixels per map up to which method="auto" takes the direct loops
# Forward, method="auto" (measurements in _method): the register-tiled direct loops (AVX2 build only) for
# few output channels, and the plain direct loops only for the tiniest layers.
_DIRECT_TILED = _ISA == "avx2"
_DIRECT_MAX_C_OUT = 32  # output channels up to which the tiled direct forward beats im2col + BLAS
_DIRECT_MAX_C_OUT_NARROW = 8  # the same for rows of one to two SIMD vectors (one vector per tile row)
_DIRECT_TINY_CHANNELS = 4  # C_in * C_out up to which maps of <= _DIRECT_MAX_OUTPUT pixels take the direct loops


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------

def _as_array(a, name):
    if a is None:
        raise TypeError(f"{name} must be an array of numbers, got None")
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        what = "complex" if arr.dtype.kind == "c" else str(arr.dtype)
        raise TypeError(f"{name} must hold real numbers (bool, int or float), got dtype {what}")
    return arr


def _compute_dtype(arrays, names):
    dt = np.result_type(*arrays)
    if dt == np.float32 or dt == np.float64:
        return dt
    if np.can_cast(dt, np.float64, casting="safe"):
        return np.dtype(np.float64)
    raise TypeError(
        f"{', '.join(names)}: dtype {dt} cannot be computed in float64 without loss; cast to float64 first"
    )


def _check_ndim(arr, ndim, name, layout):
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {arr.shape}")


def _ints(value, name, minimum, length=2):
    """An int or a pair of ints, each >= minimum, as a tuple."""
    if type(value) is int and value >= minimum:  # the common case, without the generic checks (~0.5 µs)
        return (value,) * length
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    try:
        vals = (operator.index(value),) * length
    except TypeError:
        try:
            vals = tuple(operator.index(v) for v in value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(vals) != length or any(isinstance(v, (bool, np.bool_)) for v in value):
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in vals):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return vals


def _padding(padding, KH, KW, stride):
    """(top, bottom, left, right) from 'valid', 'same', an int, (ph, pw) or ((top, bottom), (left, right))."""
    if type(padding) is int and padding >= 0:  # the common case, without the generic checks (~1 µs)
        return (padding,) * 4
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
            return ((KH - 1) // 2, KH - 1 - (KH - 1) // 2, (KW - 1) // 2, KW - 1 - (KW - 1) // 2)
        raise ValueError(f"padding must be 'valid', 'same', an int or a pair, got {padding!r}")
    try:
        pairs = [tuple(p) for p in padding]
    except TypeError:
        pairs = None
    if pairs is not None and len(pairs) == 2 and all(len(p) == 2 for p in pairs):
        top, bottom = _ints(pairs[0], "padding", 0)
        left, right = _ints(pairs[1], "padding", 0)
        return (top, bottom, left, right)
    ph, pw = _ints(padding, "padding", 0)
    return (ph, ph, pw, pw)


def conv2d_output_shape(input_hw, kernel_hw, stride=1, padding=0):
    """Output (OH, OW) of a cross-correlation: ``OH = (H + pad_top + pad_bottom - KH) // SH + 1``."""
    H, W = _ints(input_hw, "input_hw", 0)
    KH, KW = _ints(kernel_hw, "kernel_hw", 1)
    SH, SW = _ints(stride, "stride", 1)
    top, bottom, left, right = _padding(padding, KH, KW, (SH, SW))
    return _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, "x", "kernels")


def _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, xname, kname, xshape=None, kshape=None):
    Hp, Wp = H + top + bottom, W + left + right
    if KH > Hp or KW > Wp:
        xs = xshape if xshape is not None else (H, W)
        ks = kshape if kshape is not None else (KH, KW)
        pad = f" (padded to {Hp}x{Wp})" if (top, bottom, left, right) != (0, 0, 0, 0) else ""
        raise ValueError(f"{kname} {ks} is larger than {xname} {xs}{pad}: kernel {KH}x{KW} > input {Hp}x{Wp}")
    return ((Hp - KH) // SH + 1, (Wp - KW) // SW + 1)


def _contiguous(arr, dtype):
    return np.ascontiguousarray(arr, dtype=dtype)


def _method(method, direct_ok, OH, OW, C_in, C_out, forward_dtype=None):
    """'direct' or 'gemm'; forward_dtype is given for the forward (register-tiled direct kernel), not for gradients."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "direct" and not direct_ok:
        raise ValueError("method='direct' needs stride 1 and no padding; use 'gemm' or 'auto'")
    if method != "auto":
        return method
    if not direct_ok:
        return "gemm"
    tiny = OH * OW <= _DIRECT_MAX_OUTPUT and C_in * C_out <= _DIRECT_TINY_CHANNELS
    if forward_dtype is None:
        # Gradients: im2col + BLAS wins from 28x28 MNIST-sized maps up, even with 1 input channel, and on
        # small maps as soon as there are channels; the direct row loops only win on tiny maps with a few
        # channels, where a BLAS call costs more than the work. Single-thread, dK / dX, direct vs gemm (ms):
        #   (16, 1, 4, 3, 2)    0.011 / 0.017   0.010 / 0.016
        #   (16, 2, 2, 6, 2)    0.014 / 0.020   0.016 / 0.020
        #   (16, 4, 4, 6, 2)    0.029 / 0.025   0.040 / 0.024
        #   (16, 8, 8, 6, 3)    0.119 / 0.047   0.206 / 0.042
        #   (8, 128, 128, 7, 3) 21.6 / 1.10     35.3 / 1.37     (float32; the old maps-only rule took direct)
        return "direct" if tiny else "gemm"
    # Forward. Measured single-thread on AMD EPYC (AVX2 + FMA, OpenBLAS), CPU-time medians, direct / gemm:
    #   (N, C_in, C_out, H=W, K)   float32               float64
    #   (16, 1, 4, 28, 5)          0.044 / 0.077 ms      0.059 / 0.106 ms
    #   (16, 1, 4, 3, 2)           0.009 / 0.015         0.010 / 0.015      (row loops: OW < one vector)
    #   (32, 3, 8, 32, 3)          0.210 / 0.307         0.372 / 0.467
    #   (16, 8, 16, 64, 7)         7.39 / 15.3           15.2 / 22.9        (PyTorch float32: 6.66 ms)
    #   (64, 16, 32, 28, 3)        5.52 / 7.18           11.0 / 10.9
    #   (16, 3, 32, 32, 5)         0.751 / 1.041         1.56 / 1.59
    #   (16, 32, 64, 28, 3)        5.21 / 5.47           11.6 / 9.60        C_out 64: gemm
    #   (16, 64, 64, 14, 3)        4.07 / 2.59           5.52 / 4.54
    #   (16, 8, 8, 10, 3)          0.030 / 0.065         0.036 / 0.084      one-vector rows, C_out 8: direct
    #   (16, 16, 16, 12, 3)        0.216 / 0.202         0.260 / 0.293      float32 one-vector rows, C_out 16: gemm
    #   (16, 32, 32, 9, 3)         3.65 / 0.358          0.824 / 0.638      rows narrower than a vector / one-vector
    #   (8, 128, 128, 7, 3)        18.2 / 1.26           3.41 / 2.05
    #   (16, 4, 4, 6, 2)           0.025 / 0.022         0.013 / 0.023
    # A tile row is 2 vectors (16 float32 / 8 float64 columns with AVX2) or 1 when OW is narrower; rows
    # narrower than one vector take the plain row loops, which beat BLAS only on the tiny toy layer. The
    # SSE2 build (no FMA; OpenBLAS still uses AVX2) lost to gemm on every shape above but the toy one.
    if _DIRECT_TILED:
        lanes = _conv.direct_tile_lanes(forward_dtype == np.float32)
        if OW >= 2 * lanes and C_out <= _DIRECT_MAX_C_OUT:
            return "direct"
        if OW >= lanes and C_out <= _DIRECT_MAX_C_OUT_NARROW:
            return "direct"
    return "direct" if tiny else "gemm"


def _kgrad_method(method, stride1, unpadded, OH, OW, C_in, C_out, KH, KW, dtype):
    """Kernel gradient: 'rows' (direct row loops), 'wide' / 'shifted' (the two layouts of the register-tiled
    direct kernel, stride 1, any padding) or 'gemm'; method='direct' takes the tiled kernel."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "direct" and not stride1:
        raise ValueError("method='direct' needs stride 1 for the kernel gradient; use 'gemm' or 'auto'")
    if method == "gemm" or not stride1:
        return "gemm"
    # Single-thread CPU-time medians, ms, float32 / float64 (AMD EPYC Zen 4, AVX2 build; PyTorch 2.13
    # conv2d_weight, one thread, float32):
    #   (N, C_in, C_out, H=W, K)   tiled           gemm           rows           PyTorch f32
    #   (64, 64, 64, 28, 3)        34.7 / 62.4     43.7 / 76.0    324 / 465      33.5
    #   (64, 16, 32, 28, 3)        4.84 / 9.02     7.86 / 12.9    40.1 / 53.9    4.80
    #   (16, 8, 16, 64, 7)         7.31 / 14.3     16.4 / 26.7    49.8 / 80.4    8.38
    #   (32, 3, 8, 32, 3)          0.203 / 0.448   0.341 / 0.564  1.31 / 1.65    0.38
    #   (16, 1, 4, 28, 5)          0.045 / 0.069   0.084 / 0.110  0.149 / 0.193  0.157
    #   (16, 1, 4, 3, 2)           0.012 / 0.010   0.018 / 0.017  0.011 / 0.011  0.065
    # Small maps with many channels (float32, tiled / gemm / PyTorch):
    #   (8, 128, 128, 7, 3)        6.69 / 1.90 / 1.14   (16, 64, 64, 14, 3)   3.63 / 2.75 / 2.17
    #   (16, 32, 32, 9, 3)         0.586 / 0.442 / 0.296   (16, 16, 16, 12, 3)   0.197 / 0.286 / 0.192
    #   (32, 32, 64, 16, 3)        3.40 / 3.65 / 2.80     (16, 8, 8, 6, 3)      0.051 / 0.057 / 0.097
    # A tile adds its 12 accumulators into the per-thread vector partials (C_out*C_in*KH*KW*lanes) once per
    # sample: with few vectors per plane and partials beyond L2 that traffic dominates, so the tiled kernel
    # is taken for planes of >= _KGRAD_MIN_VECTORS vectors or partials of <= _KGRAD_MAX_PARTIAL_BYTES.
    # The row loops tie it only on the tutorial's toy layer, which keeps them ("tiny", as before). The
    # baseline (SSE2, no FMA) build of the tiled kernel loses to gemm on large layers (64 ch 3x3 28x28
    # float32: 71.9 vs 45.4 ms), so it keeps the old rule.
    # Layout: shifted copies (no wasted columns, KW copies of x) beat wide rows once C_out*KH is large
    # (float32 (64, 64, 64, 28, 3) 34.7 vs 35.5 ms; float64 (16, 16, 16, 32, 5) 5.04 vs 5.70) and lose by up
    # to 20% on few output channels (float32 (16, 8, 4, 32, 5) 0.331 vs 0.269).
    tiny = OH * OW <= _DIRECT_MAX_OUTPUT and C_in * C_out <= _DIRECT_TINY_CHANNELS
    if method == "auto" and not (_KGRAD_TILED and stride1):
        return "rows" if tiny and unpadded else "gemm"
    if method == "auto" and tiny and unpadded:
        return "rows"
    lanes = _conv.direct_tile_lanes(dtype == np.float32)
    vectors = -(-OH * OW // lanes)
    partial_bytes = C_out * C_in * KH * KW * lanes * np.dtype(dtype).itemsize
    if method == "auto" and (vectors < _KGRAD_MIN_VECTORS and partial_bytes > _KGRAD_MAX_PARTIAL_BYTES
                             or partial_bytes > _KGRAD_MAX_PARTIAL_BYTES_ANY):
        return "gemm"
    limit = _KGRAD_SHIFTED_MIN_F32 if dtype == np.float32 else _KGRAD_SHIFTED_MIN_F64
    return "shifted" if C_out * KH >= limit else "wide"


def _scratch(use_gemm, nt, CKK, P, C_out, dtype):
    """Per-thread slabs for the kernels: im2col blocks of (CKK x block) output pixels, about _COLS_BLOCK_BYTES
    each, for the GEMM path (whose BLAS sizes must fit 32-bit ints); a placeholder for the direct loops."""
    if not use_gemm:
        return np.empty((nt, 1), dtype=dtype)
    if max(CKK, P, C_out) > _INT_MAX:
        raise ValueError(f"array extents {(CKK, P, C_out)} exceed the 32-bit sizes BLAS accepts")
    block = max(1, min(P, _COLS_BLOCK_BYTES // (CKK * np.dtype(dtype).itemsize)))
    block = max(block, min(P, _MIN_BLOCK))  # thin blocks make thin GEMMs: keep some width
    return np.empty((nt, CKK * block), dtype=dtype)


def _threads(parts, work=None):
    """Threads for a call splitting `parts` units and `work` multiply-adds: at most one per part, and
    one per _MIN_WORK_PER_THREAD (a parallel region costs microseconds, and far more when the cores are busy)."""
    nt = min(get_num_threads(), parts)
    if work is not None:
        nt = min(nt, work // _MIN_WORK_PER_THREAD)
    return max(1, nt)


def _matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for the Dense layers (a and b already in one float dtype): large products have their output
    columns split over the kernels' threads, one single-threaded BLAS call each; small ones are one BLAS call."""
    M = a.shape[1] if trans_a else a.shape[0]
    K = a.shape[0] if trans_a else a.shape[1]
    N = b.shape[0] if trans_b else b.shape[1]
    nt = 1 if max(M, N, K) > _INT_MAX else _threads(N, M * N * K // _MATMUL_WORK_FACTOR)
    if nt == 1 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        return (a.T if trans_a else a) @ (b.T if trans_b else b)
    c = np.empty((M, N), dtype=a.dtype)
    _run(True, _conv.matmul, np.ascontiguousarray(a), np.ascontiguousarray(b), c, trans_a, trans_b, nt)
    return c


def _run(use_gemm, fn, *args):
    with blas_single_thread() if use_gemm else nullcontext():
        fn(*args)


# ----------------------------------------------------------------------------------------------
# the operations
# ----------------------------------------------------------------------------------------------

def conv2d_forward(x, kernels, bias, *, stride=1, padding=0, method="auto"):
    """Batched 2-D cross-correlation plus bias: the forward pass of a convolution layer.

    Parameters
    ----------
    x : array_like, shape (N, C_in, H, W)
    kernels : array_like, shape (C_out, C_in, KH, KW)
    bias : array_like, shape (C_out,)
    stride : int or (int, int), default 1
    padding : 'valid', 'same', int, (ph, pw) or ((top, bottom), (left, right)), default 0 ('valid')
        Zero padding; 'same' (stride 1 only) keeps H x W, putting the odd extra row/column at the end.
    method : {'auto', 'direct', 'gemm'}
        'direct' loops (stride 1, no padding) or im2col + BLAS; 'auto' picks by shape.

    Returns
    -------
    y : ndarray, shape (N, C_out, OH, OW)
        ``y[n, j] = bias[j] + Σ_i xcorr(x[n, i], kernels[j, i])`` with
        ``OH = (H + pad_top + pad_bottom - KH) // SH + 1`` (``H - KH + 1`` by default), same for OW.
        float32 if every input is float32, else float64.
    """
    x, k, b = _as_array(x, "x"), _as_array(kernels, "kernels"), _as_array(bias, "bias")
    dtype = _compute_dtype((x, k, b), ("x", "kernels", "bias"))
    _check_ndim(x, 4, "x", "(N, C_in, H, W)")
    _check_ndim(k, 4, "kernels", "(C_out, C_in, KH, KW)")
    _check_ndim(b, 1, "bias", "(C_out,)")
    N, C_in, H, W = x.shape
    C_out, Ck, KH, KW = k.shape
    if k.size == 0:
        raise ValueError(f"kernels must not be empty, got shape {k.shape}")
    if Ck != C_in:
        raise ValueError(f"x has {C_in} channels (shape {x.shape}) but kernels expect {Ck} (shape {k.shape})")
    if b.shape[0] != C_out:
        raise ValueError(f"bias has {b.shape[0]} entries (shape {b.shape}) but kernels have {C_out} output channels (shape {k.shape})")
    SH, SW = _ints(stride, "stride", 1)
    top, bottom, left, right = _padding(padding, KH, KW, (SH, SW))
    OH, OW = _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, "x", "kernels", x.shape, k.shape)
    method = _method(method, (SH, SW, top, bottom, left, right) == (1, 1, 0, 0, 0, 0), OH, OW, C_in, C_out,
                     forward_dtype=dtype)
    use_gemm = method == "gemm"
    y = np.empty((N, C_out, OH, OW), dtype=dtype)
    if N == 0:
        return y
    nt = _threads(N, N * C_out * OH * OW * C_in * KH * KW)
    scratch = _scratch(use_gemm, nt, C_in * KH * KW, OH * OW, C_out, dtype)
    _run(use_gemm, _conv.conv2d_forward, _contiguous(x, dtype), _contiguous(k, dtype), _contiguous(b, dtype),
         y, scratch, SH, SW, top, left, use_gemm, nt)
    return y


def conv2d_kernel_gradient(dE_dY, x, *, stride=1, padding=0, kernel_size=None, method="auto"):
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
    method : {'auto', 'direct', 'gemm'}
        'direct': register-tiled loops over the flattened planes (stride 1, any padding); 'gemm': im2col +
        BLAS; 'auto' picks by shape (the tiled loops for stride 1 unless the maps are small and the channels
        many).

    Returns
    -------
    dK : ndarray, shape (C_out, C_in, KH, KW)
        ``dK[j, i] = (1/N) Σ_n xcorr(x[n, i], dE_dY[n, j])``: the true gradient (the tutorial's
        ``correlate2d(dE_dY, x)`` returns it rotated by 180° because SciPy swaps the operands).
    """
    dy, x = _as_array(dE_dY, "dE_dY"), _as_array(x, "x")
    dtype = _compute_dtype((dy, x), ("dE_dY", "x"))
    _check_ndim(dy, 4, "dE_dY", "(N, C_out, OH, OW)")
    _check_ndim(x, 4, "x", "(N, C_in, H, W)")
    N, C_out, OH, OW = dy.shape
    Nx, C_in, H, W = x.shape
    if Nx != N:
        raise ValueError(f"dE_dY has batch size {N} (shape {dy.shape}) but x has {Nx} (shape {x.shape})")
    if C_out == 0 or C_in == 0:
        raise ValueError(f"dE_dY {dy.shape} and x {x.shape} must have at least one channel each")
    SH, SW = _ints(stride, "stride", 1)
    if kernel_size is None:
        if (SH, SW) != (1, 1) or isinstance(padding, str) and padding.lower() == "same":
            raise ValueError("kernel_size is required when stride > 1 or padding='same'")
        top, bottom, left, right = _padding(padding, 1, 1, (SH, SW))
        KH, KW = H + top + bottom - OH + 1, W + left + right - OW + 1
        if KH < 1 or KW < 1 or OH < 1 or OW < 1:
            raise ValueError(f"dE_dY {dy.shape} is larger than x {x.shape} allows: no kernel size fits")
    else:
        KH, KW = _ints(kernel_size, "kernel_size", 1)
        top, bottom, left, right = _padding(padding, KH, KW, (SH, SW))
    eOH, eOW = _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, "x", "kernel_size", x.shape, (KH, KW))
    if (eOH, eOW) != (OH, OW):
        raise ValueError(f"dE_dY has spatial shape {(OH, OW)} (shape {dy.shape}) but x {x.shape} with a "
                         f"{KH}x{KW} kernel gives {(eOH, eOW)}")
    impl = _kgrad_method(method, (SH, SW) == (1, 1), (top, bottom, left, right) == (0, 0, 0, 0),
                         OH, OW, C_in, C_out, KH, KW, dtype)
    dk = np.empty((C_out, C_in, KH, KW), dtype=dtype)
    nchunk = max(1, min(N, _NCHUNK))
    nt = _threads(nchunk, N * C_out * OH * OW * C_in * KH * KW)
    if impl in ("wide", "shifted"):
        # per-thread slabs: padded (or shifted) x, widened dE_dY, vector partials; zeros where nothing is copied
        partial = np.empty((nchunk, C_out * C_in * KH * KW), dtype=dtype)
        shifted = impl == "shifted"
        scratch = np.zeros((nt, _conv.kgrad_wide_scratch_size(C_in, C_out, OH, OW, KH, KW, dtype == np.float32,
                                                              shifted)), dtype=dtype)
        _conv.conv2d_kernel_gradient_wide(_contiguous(dy, dtype), _contiguous(x, dtype), dk, partial, scratch,
                                          top, left, shifted, _KGRAD_TILE_CHANNELS, _KGRAD_TILE_TAPS, nt)
        if np.isfinite(dk).all():
            return dk
        # The tiled layouts also multiply zeros (the widened dE_dY's extra columns) by x values a tap does not
        # reach: 0 * x is 0, except for an inf or NaN in x, which would turn such a tap into NaN. Only then is
        # dK non-finite; im2col reaches exactly the right values, so recompute that way.
        impl = "gemm"
    use_gemm = impl == "gemm"
    # per-chunk partial sums; the direct loops keep one per output column too (summed in order at the end)
    partial = np.empty((nchunk, C_out * C_in * KH * KW * (1 if use_gemm else OW)), dtype=dtype)
    scratch = _scratch(use_gemm, nt, C_in * KH * KW, OH * OW, C_out, dtype)
    _run(use_gemm, _conv.conv2d_kernel_gradient, _contiguous(dy, dtype), _contiguous(x, dtype), dk, partial,
         scratch, SH, SW, top, left, use_gemm, nt)
    return dk


def conv2d_bias_gradient(dE_dY):
    """Gradient of the loss with respect to the biases, averaged over the batch.

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)

    Returns
    -------
    dB : ndarray, shape (C_out,)
        ``dB[j] = (1/N) Σ_{n, p, q} dE_dY[n, j, p, q]`` (zeros when N = 0).
    """
    dy = _as_array(dE_dY, "dE_dY")
    dtype = _compute_dtype((dy,), ("dE_dY",))
    _check_ndim(dy, 4, "dE_dY", "(N, C_out, OH, OW)")
    N, C_out, OH, OW = dy.shape
    db = np.empty(C_out, dtype=dtype)
    if C_out == 0:
        return db
    acc = np.empty((C_out, _conv.SUM_LANES), dtype=dtype)
    _conv.conv2d_bias_gradient(_contiguous(dy, dtype), db, acc, _threads(C_out, dy.size))
    return db


def conv2d_input_gradient(dE_dY, kernels, *, stride=1, padding=0, input_size=None, method="auto"):
    """Gradient of the loss with respect to the layer's input (not averaged).

    Parameters
    ----------
    dE_dY : array_like, shape (N, C_out, OH, OW)
    kernels : array_like, shape (C_out, C_in, KH, KW)
    stride, padding : as in :func:`conv2d_forward`
    input_size : int or (int, int), optional
        (H, W) of the forward input; needed only with stride > 1, where several sizes give the same
        output. By default ``H = (OH - 1) * SH + KH - pad_top - pad_bottom``.
    method : {'auto', 'direct', 'gemm'}

    Returns
    -------
    dX : ndarray, shape (N, C_in, H, W)
        ``dX[n, i] = Σ_j conv_full(dE_dY[n, j], kernels[j, i])`` (the adjoint of the forward map).
    """
    dy, k = _as_array(dE_dY, "dE_dY"), _as_array(kernels, "kernels")
    dtype = _compute_dtype((dy, k), ("dE_dY", "kernels"))
    _check_ndim(dy, 4, "dE_dY", "(N, C_out, OH, OW)")
    _check_ndim(k, 4, "kernels", "(C_out, C_in, KH, KW)")
    N, C_out, OH, OW = dy.shape
    Ck, C_in, KH, KW = k.shape
    if k.size == 0:
        raise ValueError(f"kernels must not be empty, got shape {k.shape}")
    if Ck != C_out:
        raise ValueError(f"dE_dY has {C_out} channels (shape {dy.shape}) but kernels have {Ck} output channels (shape {k.shape})")
    if OH < 1 or OW < 1:
        raise ValueError(f"dE_dY must have a non-empty spatial shape, got {dy.shape}")
    SH, SW = _ints(stride, "stride", 1)
    top, bottom, left, right = _padding(padding, KH, KW, (SH, SW))
    if input_size is None:
        H, W = (OH - 1) * SH + KH - top - bottom, (OW - 1) * SW + KW - left - right
        if H < 1 or W < 1:
            raise ValueError(f"dE_dY {dy.shape} with kernels {k.shape} and padding {padding!r} gives no valid input size")
    else:
        H, W = _ints(input_size, "input_size", 1)
    eOH, eOW = _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, "input_size", "kernels", (H, W), k.shape)
    if (eOH, eOW) != (OH, OW):
        raise ValueError(f"dE_dY has spatial shape {(OH, OW)} (shape {dy.shape}) but an input of {(H, W)} with "
                         f"kernels {k.shape} gives {(eOH, eOW)}")
    method = _method(method, (SH, SW, top, bottom, left, right) == (1, 1, 0, 0, 0, 0), OH, OW, C_in, C_out)
    use_gemm = method == "gemm"
    dx = np.empty((N, C_in, H, W), dtype=dtype)
    if N == 0:
        return dx
    nt = _threads(N, N * C_out * OH * OW * C_in * KH * KW)
    scratch = _scratch(use_gemm, nt, C_in * KH * KW, OH * OW, C_out, dtype)
    _run(use_gemm, _conv.conv2d_input_gradient, _contiguous(dy, dtype), _contiguous(k, dtype), dx, scratch,
         SH, SW, top, left, use_gemm, nt)
    return dx
