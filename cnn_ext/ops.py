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

import numpy as np

from . import _reuse
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
_ND = np.ndarray
_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_MAX_BYTES = np.iinfo(np.intp).max  # the largest array NumPy can describe
_NCHUNK = 16  # batch reductions: fixed chunks, summed in order, whatever the thread count
_METHODS = ("auto", "direct", "gemm")
# im2col works on blocks of output pixels so the per-thread slab stays bounded on large images (224x224x64
# would need 231 MB unblocked). Measured: wide GEMMs beat L2-sized ones (64 ch 3x3 28x28: 384 KiB blocks were
# 5-15% slower than whole maps), so blocks are large.
_COLS_BLOCK_BYTES = int(os.environ.get("CNN_EXT_COLS_BLOCK_BYTES", 8 * 1024 * 1024))
_MIN_BLOCK = 64  # output pixels
_MATMUL_WORK_FACTOR = 5  # a matmul splits only from 5x the work per thread of a convolution (measured below)
_MATMUL_BLOCK_COLS = 64  # Dense products: output columns per block at least (one BLAS call per block)
_MATMUL_MAX_BLOCKS = 4
_MIN_WORK_PER_THREAD = int(os.environ.get("CNN_EXT_MIN_WORK_PER_THREAD", 200_000))  # multiply-adds
# Bias gradient: elements per thread from which a second thread pays (2 threads / 1, µs, quiet machine:
# (32, 8, 30, 30) float32 10.4 / 16.7, float64 18.6 / 29.0; (16, 4, 24, 24) float32 3.9 / 2.4)
_BIAS_MIN_PER_THREAD = 64_000
# Kernel gradient, method="auto" (measurements in _kgrad_method): the register-tiled direct kernel for every
# stride-1 layer in the AVX2 build. A tile is 4 output channels x 3 taps of vector accumulators (12 of the 16
# ymm registers; 6 x 2 and 3 x 4 tiles were 20-60% slower: gcc folds their extra loads into the FMAs).
_KGRAD_TILED = _ISA == "avx2"
_KGRAD_TILE_CHANNELS, _KGRAD_TILE_TAPS = 4, 3
_KGRAD_LAYOUTS = {"wide": 0, "shifted": 1, "row_tiles": 2}  # the tiled kernel's layouts (_conv._wide_geom)
_KGRAD_ROW_TILES = True  # one input channel, rows of whole vectors: the output-rows layout (_kgrad_method)
_KGRAD_SHIFTED_MIN_F32 = 128  # C_out * KH from which the shifted-copies layout beats wide rows
_KGRAD_SHIFTED_MIN_F64 = 56
_KGRAD_SLAB_BYTES = int(os.environ.get("CNN_EXT_KGRAD_SLAB_BYTES", 512 * 1024))  # samples' slabs per dK pass
_KGRAD_SAMPLES = int(os.environ.get("CNN_EXT_KGRAD_SAMPLES", 0))  # samples per dK pass (0: _kgrad_samples)
_KGRAD_MIN_VECTORS = 40  # SIMD vectors per pass (planes x samples) from which the tiled kernel beats gemm at any width
_KGRAD_MAX_PARTIAL_BYTES = 128 * 1024  # vector partials up to which it wins on smaller planes
_KGRAD_MAX_PARTIAL_BYTES_ANY = 32 * 1024 * 1024  # per-thread partials beyond which auto takes gemm (memory)
_DIRECT_MAX_OUTPUT = 36  # output pixels per map up to which method="auto" takes the direct loops
# Forward and input gradient, method="auto" (measurements in _wide_method): the wide-row direct kernel in the
# AVX2 build; the SSE2 build keeps im2col + BLAS but for the tiniest layers.
_WIDE_FAST = _ISA == "avx2"
_WIDE_IB = int(os.environ.get("CNN_EXT_WIDE_IB", 32))  # input channels per block of the wide-row kernel
_SHIFT_IB = int(os.environ.get("CNN_EXT_SHIFT_IB", 0))  # input channels per block of the shifted kernel (0: auto)
_SHIFT_TAPS = 144  # channels x taps per block of the shifted-copies kernel (_shift_ib)
_SHIFT_MAX_REDUCTION = 64  # C_in*KH*KW up to which the forward takes the shifted copies whatever the kernel
_CHANNELS_MAX_TAPS = 9  # KH*KW up to which the channel-vector kernel can win
_CHANNELS_MAX_PIXELS = 400  # output pixels per map up to which it wins
_CHANNELS_DX_F64_MAX = 1024  # C_in * C_out up to which it wins the float64 input gradient
# _conv's fused kernels by name and dtype: calling a dtype's own version skips Cython's dispatch on the
# arguments' types (~0.2 µs a call, as much as a tiny layer's whole work)
_TYPED = {name: {np.dtype(dt): getattr(_conv, name)["float" if dt is np.float32 else "double"]
                 for dt in (np.float32, np.float64)}
          for name in ("conv2d_forward", "conv2d_forward_wide", "conv2d_forward_shifted", "conv2d_forward_rows_padded",
                       "conv2d_forward_band", "conv2d_forward_cv", "conv2d_kernel_gradient",
                       "conv2d_kernel_gradient_wide", "conv2d_bias_gradient", "conv2d_input_gradient",
                       "rotate_kernels", "all_finite")}
# per-dtype tile sizes of this build, looked up once (a call to the module costs as much as a tiny layer's work)
_TILES = {np.dtype(dt): dict(lanes=_conv.direct_tile_lanes(dt is np.float32), wide=_conv.wide_tile(dt is np.float32),
                             channels=_conv.channel_tile(dt is np.float32), band=_conv.band_tile(dt is np.float32))
          for dt in (np.float32, np.float64)}
_ROW_TILES_MAX_C_OUT = 32  # output channels up to which the older row-tiled forward can beat BLAS
_ROW_TILES_ONE_CHANNEL_MIN_OW = 20  # one input channel: row widths from which the row tiles win with any tail
_ROW_TILES_SHORT = 128  # C_in*KH*KW up to which it wins ties in computed outputs with the wide kernel
_WIDE_F64_MAX_CHANNELS = 2048  # float64 forward on maps > 400 pixels: C_in * C_out from which BLAS is kept
_WIDE_DX_SMALL_F32 = 1024  # C_in * C_out up to which the float32 dX takes the wide kernel on any map
_WIDE_DX_SMALL_F64 = 512  # the same for float64, which takes it only there
_WIDE_DX_MAX_WASTE = 1.5  # float32 dX: H*W / (OH*OW) (it multiplies zeros outside) up to which it takes it anyway
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
    """An int or a pair of ints, each in [minimum, 2**31 - 1], as a tuple of Python ints.

    Sizes, strides and paddings end up in the kernels' loops and BLAS's 32-bit int arguments: a larger value is a
    ValueError naming the argument (instead of an OverflowError, or NumPy's refusal of a too-big array, later).
    """
    if type(value) is int and minimum <= value <= _INT_MAX:  # the common case, without the generic checks (~0.5 µs)
        return (value,) * length
    if (type(value) is tuple and length == 2 and len(value) == 2 and type(value[0]) is int  # a layer's pair
            and type(value[1]) is int and minimum <= value[0] <= _INT_MAX and minimum <= value[1] <= _INT_MAX):
        return value
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
    if any(v > _INT_MAX for v in vals):
        raise ValueError(f"{name} must be <= 2**31 - 1 = {_INT_MAX} (the kernels' 32-bit sizes), got {value!r}")
    return vals


def _padding(padding, KH, KW, stride):
    """(top, bottom, left, right) from 'valid', 'same', an int, (ph, pw) or ((top, bottom), (left, right))."""
    if type(padding) is int and 0 <= padding <= _INT_MAX:  # the common case, without the generic checks (~1 µs)
        return (padding,) * 4
    spec = _padding_spec(padding)
    if spec == "valid":
        return (0, 0, 0, 0)
    if spec == "same":
        if stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1, got stride={stride}")
        return ((KH - 1) // 2, KH - 1 - (KH - 1) // 2, (KW - 1) // 2, KW - 1 - (KW - 1) // 2)
    if type(spec) is int:
        return (spec,) * 4
    if type(spec[0]) is tuple:
        return spec[0] + spec[1]
    return (spec[0], spec[0], spec[1], spec[1])


def _padding_spec(padding):
    """``padding`` checked and in plain Python form, as the layers keep it (JSON-serialisable, NumPy integers and
    arrays of ints included): 'valid' / 'same' (lower case), an int, (ph, pw) or ((top, bottom), (left, right))."""
    if isinstance(padding, str):
        mode = padding.lower()
        if mode not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid', 'same', an int or a pair, got {padding!r}")
        return mode
    try:
        pairs = [tuple(p) for p in padding]
    except TypeError:
        pairs = None
    if pairs is not None and len(pairs) == 2:
        if all(len(p) == 2 for p in pairs):
            return (_ints(pairs[0], "padding", 0), _ints(pairs[1], "padding", 0))
        raise ValueError(f"padding as ((top, bottom), (left, right)) needs two pairs, got {padding!r}")
    ph, pw = _ints(padding, "padding", 0)
    try:
        operator.index(padding)
    except TypeError:  # a pair
        return (ph, pw)
    return ph


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
    OH, OW = (Hp - KH) // SH + 1, (Wp - KW) // SW + 1
    if max(H, W, KH, KW, OH, OW) > _INT_MAX:  # derived sizes: the arguments themselves are checked by _ints
        xs = xshape if xshape is not None else (H, W)
        ks = kshape if kshape is not None else (KH, KW)
        pad = f", padding {(top, bottom, left, right)}" if (top, bottom, left, right) != (0, 0, 0, 0) else ""
        raise ValueError(f"{xname} {xs} with {kname} {ks}{pad} and stride {(SH, SW)}: input {H}x{W}, kernel "
                         f"{KH}x{KW}, output {OH}x{OW}; sizes must be <= 2**31 - 1 = {_INT_MAX}")
    return (OH, OW)


def _check_alloc(shape, dtype, what):
    """ValueError, before any allocation, for an array NumPy cannot even create: more bytes than an intp holds
    (NumPy's own errors, 'array is too big' or 'Maximum allowed dimension exceeded', name no argument).
    ``what()`` returns the start of the message (a callable: formatting shapes on every call would cost more
    than a tiny layer's whole forward)."""
    size = 1
    for d in shape:
        size *= d
    if size <= _MAX_BYTES // 8:  # the common case: fits whatever the itemsize
        return
    nbytes = size * np.dtype(dtype).itemsize
    if nbytes > _MAX_BYTES:
        raise ValueError(f"{what()} of shape {tuple(shape)}: {nbytes} bytes, more than can be allocated ({_MAX_BYTES})")


def _output(out, shape, dtype, inputs, names, small=False):
    """``out`` checked as the destination of a result of this shape and dtype; if None, a new array when the
    plan found it ``small`` (below the results' pool), else one from the pool (a new one, or one handed out
    before that nobody holds any more: cnn_ext._reuse)."""
    if out is None:
        return np.empty(shape, dtype) if small else _reuse.OUTPUTS.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(f"out has shape {out.shape} and dtype {out.dtype}; the result has shape {shape} and "
                         f"dtype {np.dtype(dtype)}")
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be C-contiguous and writeable (shape {out.shape})")
    for a, name in zip(inputs, names):
        if np.may_share_memory(out, a):
            raise ValueError(f"out shares memory with {name} (shape {a.shape}); the result would overwrite its "
                             f"own input")
    return out


def _small(size, dtype):
    """Whether a result of this many elements is below the results' pool (_reuse.MIN_BYTES): a plain np.empty
    then, decided once per plan (~0.3 µs a call)."""
    return size * np.dtype(dtype).itemsize < _reuse.MIN_BYTES


def _contiguous(arr, dtype):
    return np.ascontiguousarray(arr, dtype=dtype)


def _tiny(OH, OW, C_in, C_out):
    """The tutorial's toy layer and its like: maps of a few pixels and channels, where the plain row loops (no
    setup, no BLAS call) beat every tiled kernel."""
    return OH * OW <= _DIRECT_MAX_OUTPUT and C_in * C_out <= _DIRECT_TINY_CHANNELS


def _kgrad_method(method, stride1, unpadded, N, OH, OW, C_in, C_out, KH, KW, dtype):
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
    # pass of ns samples (_kgrad_samples): with few vectors per pass and partials beyond L2 that traffic
    # dominates, so the tiled kernel is taken for passes of >= _KGRAD_MIN_VECTORS vectors (plane x ns) or
    # partials of <= _KGRAD_MAX_PARTIAL_BYTES. (The timings above are one sample per pass; with ns samples,
    # float32 (64, 32, 64, 14, 3) 'same': tiled 6.37 ms, gemm 7.79.)
    # The row loops tie it only on the tutorial's toy layer, which keeps them ("tiny", as before). The
    # baseline (SSE2, no FMA) build of the tiled kernel loses to gemm on large layers (64 ch 3x3 28x28
    # float32: 71.9 vs 45.4 ms), so it keeps the old rule.
    # Layout: shifted copies (no wasted columns, KW copies of x) beat wide rows once C_out*KH is large
    # (float32 (64, 64, 64, 28, 3) 34.7 vs 35.5 ms; float64 (16, 16, 16, 32, 5) 5.04 vs 5.70) and lose by up
    # to 20% on few output channels (float32 (16, 8, 4, 32, 5) 0.331 vs 0.269).
    tiny = _tiny(OH, OW, C_in, C_out)
    if method == "auto" and not (_KGRAD_TILED and stride1):
        return "rows" if tiny and unpadded else "gemm"
    if method == "auto" and tiny and unpadded:
        return "rows"
    single = dtype == np.float32
    lanes = _conv.direct_tile_lanes(single)
    limit = _KGRAD_SHIFTED_MIN_F32 if single else _KGRAD_SHIFTED_MIN_F64
    shifted = C_out * KH >= limit
    # vectors a tile runs over between two visits of the partials: a plane per sample of the pass
    layout = _KGRAD_LAYOUTS["shifted" if shifted else "wide"]
    vectors = -(-OH * OW // lanes) * _kgrad_samples(C_in, C_out, OH, OW, KH, KW, single, layout,
                                                      N // max(1, min(N, _NCHUNK)))
    partial_bytes = C_out * C_in * KH * KW * lanes * np.dtype(dtype).itemsize
    if method == "auto" and (vectors < _KGRAD_MIN_VECTORS and partial_bytes > _KGRAD_MAX_PARTIAL_BYTES
                             or partial_bytes > _KGRAD_MAX_PARTIAL_BYTES_ANY):
        return "gemm"
    if C_in == 1 and OW % lanes == 0 and _KGRAD_ROW_TILES:
        # One input channel, rows of whole vectors: the output-rows layout reads dE_dY (and unpadded x) in place
        # row by row, no copy and no wasted column (wide rows waste (KW - 1) / (OW + KW - 1) of the work on few
        # channels; the other layers keep the rule above). 1-thread CPU-time medians, us, wide or shifted / rows:
        #   (N, C_in, C_out, H=W, K)  float64        float32        (N, C_in, C_out, H=W, K)  float64      float32
        #   (16, 1, 4, 28, 5)         73.3 / 52.9    45.2 / 37.1    (16, 1, 8, 26, 3)         63.3 / 41.8  38.3 / 27.9
        #   (16, 1, 16, 28, 5)        231 / 178      146 / 113      (16, 1, 1, 28, 5)         42.3 / 35.0  29.5 / 24.3
        #   (16, 1, 4, 24, 5) same    71.0 / 56.7    44.5 / 35.8    (4, 1, 6, 20, 5)          24.6 / 20.7  19.7 / 16.7
        #   (64, 1, 32, 28, 3) same   1252 / 1061    (OW = 28)      (64, 1, 32, 32, 3) same   1974 / 1397  836 / 596
        #   (16, 1, 32, 28, 5) same   548 / 514      (OW = 28)      (8, 1, 8, 38, 7)          173 / 175    106 / 84.0
        return "row_tiles"
    return "shifted" if shifted else "wide"


def _kgrad_samples(C_in, C_out, OH, OW, KH, KW, single, layout, per_chunk):
    """Samples per pass of the tiled kernel gradient (its tiles keep their accumulators over them, so the
    vector partials are read and written once per pass): as many as a chunk holds, while their slabs stay
    within _KGRAD_SLAB_BYTES. Depends on the shape only (the sums' order must not follow the thread count)."""
    if _KGRAD_SAMPLES:
        return _KGRAD_SAMPLES
    size = lambda ns: _conv.kgrad_wide_scratch_size(C_in, C_out, OH, OW, KH, KW, single, layout, ns)
    per_sample = (size(2) - size(1)) * (4 if single else 8)  # one more sample's slabs, in bytes
    return max(1, min(per_chunk, _KGRAD_SLAB_BYTES // per_sample))


def _wide_method(method, wide_ok, why, N, C_in, C_out, H, W, KH, KW, OH, OW, dtype, grad):
    """'direct' (the wide-row kernel) or 'gemm' for the forward (grad False) or the input gradient (grad True).

    The forward wins or ties everywhere measured in the AVX2 build; float64 with C_in*C_out >= 2048 on maps
    > 400 pixels is a tie (another run: 69.1 / 73.2 and 9.10 / 9.44 ms), left to BLAS. Unpadded forwards may
    take the row tiles (_row_tiles_better), small maps the channel-vector kernel (_channels_better).
    The input gradient runs it on dE_dY padded by K-1, so it multiplies H*W/(OH*OW) times more terms (the
    zeros of kernel rows wholly in the padding are skipped, not those of columns) and loses to BLAS on small
    maps with many channels; in float64 (GEMM nearer its peak) as soon as C_in*C_out passes ~1000.
    Single-thread CPU-time medians (ms), AMD EPYC Zen 4, AVX2 + FMA, OpenBLAS; wide / gemm (row tiles):
      (N, C_in, C_out, H=W, K)  forward f32           forward f64           dX f32          dX f64
      (64, 64, 64, 28, 3)       34.7 / 42.5 (43.8)    73.3 / 71.5 (99.1)    36.9 / 40.8     78.4 / 72.6
      (64, 16, 32, 28, 3)       4.86 / 7.23 (5.38)    9.38 / 11.0 (10.8)    5.04 / 6.71     10.5 / 11.6
      (16, 8, 16, 64, 7)        7.05 / 15.7 (7.35)    14.5 / 22.7 (14.6)    7.85 / 12.6     15.6 / 23.0
      (16, 1, 4, 28, 5)         0.039 / 0.081 (0.038) 0.066 / 0.118 (0.054) 0.077 / 0.096   0.129 / 0.130
      (16, 1, 4, 3, 2)          0.005 / 0.016 (0.005) 0.006 / 0.016 (0.005) 0.011 / 0.016   0.012 / 0.016
      (32, 3, 8, 32, 3)         0.216 / 0.309 (0.193) 0.395 / 0.477 (0.365) 0.220 / 0.363   0.399 / 0.523
      (16, 3, 32, 32, 5)        0.768 / 1.05 (0.742)  1.50 / 1.61 (1.46)    0.859 / 1.04    1.74 / 1.65
      (16, 8, 8, 10, 3)         0.028 / 0.065 (0.025) 0.045 / 0.080 (0.030) 0.038 / 0.074   0.065 / 0.092
      (16, 16, 16, 12, 3)       0.103 / 0.202 (0.210) 0.190 / 0.269 (0.248) 0.136 / 0.229   0.239 / 0.293
      (16, 32, 32, 9, 3)        0.220 / 0.329 (3.64)  0.420 / 0.457 (0.580) 0.343 / 0.367   0.559 / 0.488
      (8, 128, 128, 7, 3)       1.07 / 1.16 (18.1)    1.63 / 2.06 (3.36)    1.62 / 1.44     2.83 / 2.27
      (16, 64, 64, 14, 3)       1.96 / 2.62 (4.07)    4.16 / 4.53 (5.18)    2.70 / 2.66     5.38 / 4.67
      (16, 32, 64, 28, 3)       4.52 / 5.53 (5.16)    9.40 / 9.20 (10.5)    4.82 / 5.60     10.1 / 9.42
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if method == "direct" and not wide_ok:
        raise ValueError(f"method='direct' needs {why}; use 'gemm' or 'auto'")
    if method != "auto":
        return method
    if not wide_ok:
        return "gemm"
    if _tiny(OH, OW, C_in, C_out):
        return "direct"
    if not _WIDE_FAST:
        return "gemm"
    if not grad:
        # float64 on large maps with many channels: a tie with BLAS (+-3% between runs): keep BLAS
        big64 = dtype == np.float64 and C_in * C_out >= _WIDE_F64_MAX_CHANNELS and OH * OW > _CHANNELS_MAX_PIXELS
        return "gemm" if big64 else "direct"
    if _channels_better(grad, C_in, C_out, H, W, KH, KW, OH, OW, dtype):
        return "direct"
    if dtype == np.float64:
        return "direct" if C_in * C_out <= _WIDE_DX_SMALL_F64 else "gemm"
    small = C_in * C_out <= _WIDE_DX_SMALL_F32 or H * W <= _WIDE_DX_MAX_WASTE * OH * OW
    return "direct" if small else "gemm"


def _channels_better(grad, C_in, C_out, H, W, KH, KW, OH, OW, dtype):
    """True when the channel-vector kernel (vectors over output channels, no lane wasted) should run the forward
    (grad False) or the input gradient (grad True, whose output channels are the layer's C_in): small maps
    (<= 400 outputs) with 3x3 or smaller kernels, where the wide kernel's row-end columns and the input
    gradient's zero taps cost most. float32 / float64 (ms), channel-vector / wide / gemm:
      forward (8, 128, 128, 7, 3)  0.679 / 1.095 / 1.16   1.436 / 1.701 / 2.06
      forward (16, 64, 64, 14, 3)  1.837 / 1.926 / 2.62   3.945 / 4.233 / 4.53
      forward (16, 32, 32, 9, 3)   0.197 / 0.219 / 0.33   0.369 / 0.430 / 0.46
      forward (16, 16, 16, 12, 3)  0.096 / 0.102 / 0.20   0.169 / 0.186 / 0.27
      dX      (8, 128, 128, 7, 3)  1.069 / 1.450 / 1.44   2.241 / 2.733 / 2.27
      dX      (16, 64, 64, 14, 3)  2.232 / 2.522 / 2.66   4.988 / 5.434 / 4.67
      dX      (16, 32, 32, 9, 3)   0.227 / 0.311 / 0.37   0.426 / 0.567 / 0.49
    28x28 maps and larger: ties or losses (float64 (64, 64, 64, 28, 3) forward 76.4 vs 70.3 ms wide), and
    7x7 kernels lose (float32 (16, 8, 16, 64, 7) forward 9.6 vs 7.1 ms)."""
    if not _WIDE_FAST or KH * KW > _CHANNELS_MAX_TAPS:
        return False
    channels, pixels = (C_in, H * W) if grad else (C_out, OH * OW)
    if channels % _TILES[dtype]["channels"] or pixels > _CHANNELS_MAX_PIXELS:
        return False
    return not grad or dtype == np.float32 or C_in * C_out <= _CHANNELS_DX_F64_MAX


def _shifted_better(C_in, KH, KW, dtype):
    """True when the forward should take the shifted-copies layout (_shifted_run: no wasted columns, KW copies of
    each sample) instead of the wide rows (which compute (KW-1)/(OW+KW-1) of their outputs for nothing).

    Its tiles read KH*KW streams per input channel instead of KH, so they need L1 for a block of input channels
    (_shift_ib): the wasted columns come back as L2 traffic, and with several blocks each block re-reads and
    rewrites y. It wins with short reductions (C_in*KH*KW <= _SHIFT_MAX_REDUCTION) and float32 3x3 layers whose
    input channels fit one block; ties or loses elsewhere. The input gradient (dE_dY padded by K-1, larger
    planes) ties on (64, 64, 64, 28, 3) and loses elsewhere (5-30%): it keeps the wide rows.
    Single-thread CPU-time medians (ms), AMD EPYC Zen 4, AVX2 + FMA, wide / shifted (each timed on its second
    of two calls, order alternated), padding 0 and K//2, and the input gradient:
      (N, C_in, C_out, H=W, K)  f32 pad 0      f32 pad K//2   f64 pad 0      f64 pad K//2   dX f32        dX f64
      (64, 64, 64, 28, 3)       34.3 / 33.9    37.8 / 39.6    72.1 / 71.1    80.4 / 82.5    36.3 / 35.5   76.5 / 76.5
      (64, 16, 32, 28, 3)       4.79 / 4.58    5.39 / 5.21    9.60 / 9.41    10.7 / 11.1    4.98 / 5.37   10.4 / 10.9
      (16, 8, 16, 64, 7)        7.02 / 7.11    8.14 / 8.53    14.2 / 15.0    16.5 / 19.7    7.66 / 8.52   15.5 / 19.5
      (32, 3, 8, 32, 3)         0.211 / 0.204  0.231 / 0.225  0.381 / 0.347  0.430 / 0.400  0.208 / 0.275 0.373 / 0.452
      (16, 1, 4, 28, 5)         0.037 / 0.034  0.048 / 0.044  0.064 / 0.057  0.083 / 0.074  0.067 / 0.078 0.120 / 0.122
    With all KH*KW streams at the same offset (a wrong result, same work) (64, 64, 64, 28, 3) ran 33.6 ms and
    (16, 8, 16, 64, 7) 6.58: the layout's ideal; software prefetch, huge pages, column-strip tile order, 6 x 2
    and 8 x 1 / 12 x 1 tiles did not get nearer, nor did ceil(KW / M) copies of pitch OW + M - 1 (fewer streams,
    some waste; (16, 8, 16, 64, 7) M = 3: 7.30 ms, M = 4: 7.37, wide 7.20).
    Unpadded (32, 3, 8, 32, 3) and (16, 1, 4, 28, 5) take the row tiles (_row_tiles_better) first;
    float64 (64, 64, 64, 28, 3) stays on BLAS (_wide_method)."""
    if not _WIDE_FAST:
        return False
    if C_in * KH * KW <= _SHIFT_MAX_REDUCTION:
        return True
    return dtype == np.float32 and KH * KW <= 9 and C_in <= _shift_ib(KH, KW, dtype)


def _row_tiles_better(C_in, OH, OW, C_out, KH, KW, dtype, padded=False):
    """True when the unpadded forward (padded: one input channel only) should take the older row-tiled kernel
    (tiles of JB channels x 2 vectors of one output row, overlapping at row and channel ends, stored straight
    into y) instead of the wide-row one: when its tiles compute fewer outputs (rows a whole number of its tiles
    wide), or as many and the reduction C_in*KH*KW is short, so the wide kernel's per-tile costs (store to and
    copy from the wide buffer) show. Rows under 2 vectors and C_out > 32 lose (see _wide_method)."""
    lanes = _TILES[dtype]["lanes"]
    if not _WIDE_FAST or OW < 2 * lanes:
        return False
    if C_in == 1:
        # One input channel: tiles of 3 vectors (12 accumulators: a reduction of only KH*KW steps needs them) from
        # rows of 3 vectors on, read straight from x, strip by strip. They win on rows of whole tiles and on any row
        # of 20 outputs or more (the overlapping last tile recomputes up to a tile), whatever C_out; narrower rows
        # with a tail keep the shifted / wide kernels. 1-thread CPU-time medians, us, shifted or wide / rows:
        #   (N, C_in, C_out, H=W, K)  float64        float32        (N, C_in, C_out, H=W, K)  float64      float32
        #   (16, 1, 4, 28, 5)         42.5 / 42.1    24.7 / 24.6    (16, 1, 8, 32, 3)         102 / 67.7   60.9 / 47.9
        #   (16, 1, 4, 28, 3)         46.6 / 30.9    29.2 / 22.8    (16, 1, 4, 40, 7)         195 / 150    106 / 99.9
        #   (64, 1, 32, 28, 3)        1133 / 902     545 / 539      (16, 1, 8, 22, 3)         61.7 / 31.1  30.5 / 25.4
        #   (16, 1, 4, 24, 5)         78.8 / 53.9    32.4 / 28.3    (8, 1, 64, 28, 5)         294 / 294    152 / 151
        #   (16, 1, 6, 20, 5)         51.5 / 54.7    23.1 / 23.0    (16, 1, 9, 17, 4)         43.5 / 48.6  29.6 / 31.5
        # (the last two rows: 16 and 14 outputs; float64 (16, 1, 4, 28, 5) with tiles of 3 vectors against 2,
        # row by row: 63.8 -> 55.8 us)
        # Padded (on a zero-padded copy of each sample, _padded_rows_run): whole tiles, or 3x3 kernels on rows of
        # >= 20; the shifted copies, which need no padded copy, keep the others. prev (shifted) / rows, us:
        #   (64, 1, 32, 28, 3) same   1274 / 1133    615 / 594      (16, 1, 8, 32, 3) same    107 / 75.1   61.5 / 51.7
        #   (16, 1, 4, 24, 5) pad 2   60.3 / 45.1    38.1 / 26.5    (16, 1, 4, 28, 5) same    80.6 / 73.1  49.0 / 50.6
        #   (8, 1, 16, 40, 7) same    443 / 463      229 / 229      (16, 1, 6, 20, 5) same    69.0 / 68.5  44.1 / 51.6
        QB = (3 if OW >= 3 * lanes else 2) * lanes
        if padded:
            return OW % QB == 0 or KH * KW <= 9 and OW >= _ROW_TILES_ONE_CHANNEL_MIN_OW
        return OW % QB == 0 or OW >= _ROW_TILES_ONE_CHANNEL_MIN_OW
    if C_out > _ROW_TILES_MAX_C_OUT:
        return False
    JB, TB = _TILES[dtype]["wide"]
    row = -(-OW // (2 * lanes)) * 2 * lanes * (-(-C_out // JB) * JB if C_out >= JB else C_out)
    wide = -(-OH * (OW + KW - 1) // TB) * TB / OH * C_out
    # ties with long reductions measured even ((16, 8, 16, 64, 7): 64 vs 64.1 columns): wide
    return row < 0.95 * wide or (row <= wide and C_in * KH * KW <= _ROW_TILES_SHORT)


_NO_SCRATCH = {}  # (dtype, threads) -> the direct loops' placeholder slab


def _scratch(use_gemm, nt, CKK, P, C_out, dtype):
    """Per-thread slabs for the kernels: im2col blocks of (CKK x block) output pixels, about _COLS_BLOCK_BYTES
    each, for the GEMM path (whose BLAS sizes must fit 32-bit ints); a placeholder for the direct loops."""
    if not use_gemm:  # the direct loops never touch it (only take row addresses): one shared array per shape
        key = (np.dtype(dtype), nt)
        if key not in _NO_SCRATCH:
            _NO_SCRATCH[key] = np.empty((nt, 1), dtype=dtype)
        return _NO_SCRATCH[key]
    if max(CKK, P, C_out) > _INT_MAX:
        raise ValueError(f"array extents {(CKK, P, C_out)} exceed the 32-bit sizes BLAS accepts")
    block = max(1, min(P, _COLS_BLOCK_BYTES // (CKK * np.dtype(dtype).itemsize)))
    block = max(block, min(P, _MIN_BLOCK))  # thin blocks make thin GEMMs: keep some width
    return np.empty((nt, CKK * block), dtype=dtype)


def _wide_run(x, k, b, y, top, left, nt, dtype):
    """The wide-row direct kernel (stride 1): per-thread padded slabs (zeroed by their threads) and wide output
    buffers."""
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = k.shape
    OH, OW = y.shape[2:]
    Hp, Wp = OH + KH - 1, _conv.wide_pitch(W, OW, KW, left)
    JB, TB = _TILES[dtype]["wide"]
    Fr = -(-OH * Wp // TB) * TB
    xpad = _thread_slabs((nt, C_in * Hp * Wp + TB + KW), dtype)
    wide = np.empty((nt, C_out * Fr), dtype=dtype)
    _TYPED["conv2d_forward_wide"][dtype](x, k, b, y, xpad, wide, top, left, _WIDE_IB, nt)


def _shift_ib(KH, KW, dtype):
    """Input channels per block of the shifted-copies kernel: a block's KH*KW streams per channel must stay in L1
    between a tile and the next (float32 (16, 8, 16, 64, 7): 2 channels 7.0 ms, 8: 8.3; (64, 64, 64, 28, 3):
    16 channels 34.6 ms, 8: 35.5, 32: 42.5; float64 half as many: its input gradient 77.3 ms with 8, 90.4
    with 16)."""
    taps = _SHIFT_TAPS if dtype == np.float32 else _SHIFT_TAPS // 2
    return _SHIFT_IB or max(1, min(32, taps // (KH * KW)))


def _shifted_run(x, k, b, y, top, left, nt, dtype):
    """The shifted-copies direct kernel (stride 1): per-thread zeroed slabs of KW shifted copies of the sample
    and a staging tile for the plane tails; tiles accumulate straight into y."""
    C_in = x.shape[1]
    KH, KW = k.shape[2:]
    OH, OW = y.shape[2:]
    JB, TB = _conv.shifted_tile(dtype == np.float32)
    size = _conv.shifted_slab_size(min(C_in, _shift_ib(KH, KW, dtype)), OH, OW, KH, KW, dtype == np.float32)
    xs = np.zeros((nt, size), dtype=dtype)
    stage = np.empty((nt, JB * TB), dtype=dtype)
    _TYPED["conv2d_forward_shifted"][dtype](x, k, b, y, xs, stage, top, left, _shift_ib(KH, KW, dtype), nt)


def _band_better(C_in, H, W, KH, dtype):
    """True when the input gradient of a one-input-channel layer (its dX has one channel) should take the row-band
    kernel (_band_run: tiles of 4 output rows sharing each loaded input row, 1 + 4/nv loads per nv FMAs instead
    of 1 + 1/12 per 1) instead of the wide rows' one-channel tile: kernels of 4 rows or more (every band has rows
    feeding all 4 of its output rows), rows split into 2- and 3-vector tiles (a 1-vector tile, 4 accumulators, is
    FMA-latency bound: a tie). 1-thread CPU-time medians, us, wide (or channel-vector) / band:
      (N, C_in, C_out, H=W, K)  float64         float32          (N, C_in, C_out, H=W, K)  float64        float32
      (16, 1, 4, 28, 5)         101.6 / 81.6    57.2 / 51.4      (16, 1, 1, 28, 5)         42.3 / 30.8    27.4 / 22.1
      (16, 1, 16, 28, 5)        323 / 287       183 / 182        (16, 1, 4, 24, 5) same    85.0 / 62.9    52.5 / 37.6
      (16, 1, 32, 28, 5) same   754 / 641       415 / 366        (8, 1, 8, 40, 7)          295 / 266      162 / 137
      (4, 1, 6, 20, 5)          26.6 / 22.5     19.5 / 20.0*     (* a 1-vector tile in the row: wide kept)
    2 threads (wall) the same ties or wins ((16, 1, 4, 28, 5) 74.9 / 73.5 and 51.4 / 47.4). 3x3 kernels win on one
    thread ((16, 1, 8, 32, 3) 129 / 115, (64, 1, 32, 28, 3) same 2025 / 1890) but lose on two, float64 most
    ((64, 1, 32, 28, 3) same 1079 / 1408, (16, 1, 32, 28, 3) 256 / 339): they keep the wide rows. (Timed before
    the band's own copies for 4- and 5-row kernels, which made those bands 5-20 % faster still.)"""
    if not _WIDE_FAST or C_in != 1:
        return False
    rows, lanes = _TILES[dtype]["band"]
    if H < rows or W < lanes or KH < rows:
        return False
    # the split of _conv._forward_band_one: ceil(W / lanes) vectors over ceil(vectors / 3) tiles, evenly
    nvec = -(-W // lanes)
    ntile = max(-(-nvec // 3), 2 if W % lanes else 1)
    return nvec // ntile >= 2


def _thread_slabs(shape, dtype):
    """Per-thread slabs of a kernel that zeroes its own thread's slab (_conv._zero_slab): uninitialised."""
    return np.empty(shape, dtype)


def _padded_slabs(x, k, y, nt, dtype):
    """Per-thread slabs for one zero-padded sample (C_in x Hp x Wp, Hp = OH + KH - 1, Wp = OW + KW - 1); the
    kernels zero them in their own threads and write only the interior."""
    Hp, Wp = y.shape[2] + k.shape[2] - 1, y.shape[3] + k.shape[3] - 1
    return _thread_slabs((nt, x.shape[1] * Hp * Wp), dtype)


def _padded_rows_run(x, k, b, y, top, left, nt, dtype):
    """The row-tiled direct forward on a zero-padded copy of each sample."""
    _TYPED["conv2d_forward_rows_padded"][dtype](x, k, b, y, _padded_slabs(x, k, y, nt, dtype), top, left,
                                                nt)


def _band_run(x, k, b, y, top, left, nt, dtype):
    """The row-band direct kernel (stride 1, one output channel)."""
    _TYPED["conv2d_forward_band"][dtype](x, k, b, y, _padded_slabs(x, k, y, nt, dtype), top, left, nt)


def _channel_vector_run(x, k, b, y, top, left, nt, dtype):
    """The channel-vector direct kernel (stride 1, C_out a multiple of _conv.channel_tile): packed kernels and
    per-thread padded slabs (zeroed by their threads)."""
    C_out, C_in, KH, KW = k.shape
    JW = _TILES[dtype]["channels"]
    kp = np.ascontiguousarray(k.reshape(C_out // JW, JW, C_in, KH, KW).transpose(0, 2, 3, 4, 1))
    stage = np.empty((nt, JW * y.shape[3]), dtype=dtype)
    _TYPED["conv2d_forward_cv"][dtype](x, kp, b, y, _padded_slabs(x, k, y, nt, dtype), stage, top, left,
                                       nt)


def _threads(parts, work=None):
    """Threads for a call splitting `parts` units and `work` multiply-adds: at most one per part, and
    one per _MIN_WORK_PER_THREAD (a parallel region costs microseconds, and far more when the cores are busy)."""
    nt = min(get_num_threads(), parts)
    if work is not None:
        nt = min(nt, work // _MIN_WORK_PER_THREAD)
    return max(1, nt)


def _matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for the Dense layers (a and b already in one float dtype): large products are cut into
    column blocks, one single-threaded BLAS call each, shared out over the kernels' threads; small ones are one
    BLAS call. The blocks follow from the shape alone, never from the thread count, so the result is bitwise
    the same on any number of threads (a split by thread count moved float64 Dense outputs by up to 1.8e-14
    between 1 and 2 threads: BLAS rounds a block's edge columns differently)."""
    M = a.shape[1] if trans_a else a.shape[0]
    K = a.shape[0] if trans_a else a.shape[1]
    N = b.shape[0] if trans_b else b.shape[1]
    nblk = 1 if max(M, N, K) > _INT_MAX else min(_MATMUL_MAX_BLOCKS, N // _MATMUL_BLOCK_COLS,
                                                  M * N * K // (_MIN_WORK_PER_THREAD * _MATMUL_WORK_FACTOR))
    if nblk <= 1 or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        return (a.T if trans_a else a) @ (b.T if trans_b else b)
    c = np.empty((M, N), dtype=a.dtype)
    _run(True, _conv.matmul, np.ascontiguousarray(a), np.ascontiguousarray(b), c, trans_a, trans_b, nblk,
         _threads(nblk))
    return c


# Plans: an operation's checks and choices (output shape, method, tile sizes, threads) follow from the shapes,
# the dtype, the arguments and the thread count only, and cost more in Python than a small layer's whole
# kernel (the tutorial's toy forward: 8.4 µs per call with them, 2.7 in the kernel). Each is made once per
# combination and kept here; a call then only converts its arrays and runs. Module settings are read when a
# plan is made. None turns the cache off (tests that change those settings do).
_PLANS = {}
_PLANS_MAX = 512  # distinct combinations kept (then the cache starts over)
_PLAIN = frozenset((int, str, type(None)))


def _keyable(value):
    """Whether a stride / padding / size / method argument can be a cache key as it is: built of exact ints,
    strings and None only. Values that compare equal to those but mean something else (True == 1, 1.0 == 1,
    NumPy scalars and arrays) must go through the checks, which refuse or convert them, on every call."""
    if type(value) in _PLAIN:
        return True
    if type(value) is not tuple:
        return False
    if len(value) == 2 and type(value[0]) is int and type(value[1]) is int:  # a layer's pair, without a generator
        return True
    return all(_keyable(v) for v in value)


def _key(make, shapes, dtype, options):
    """A plan's key in _PLANS, or None when an option is not plain (_keyable)."""
    for a in options:  # a loop: a generator costs ~0.5 µs here
        if type(a) not in _PLAIN and not _keyable(a):
            return None
    return (make, get_num_threads(), shapes, dtype, options)


def _plan(make, shapes, dtype, options):
    """make(*shapes, dtype, *options), from the cache when the same shapes, dtype, options (stride, padding,
    sizes, method) and thread count were seen before. Refusals (ValueError / TypeError) are never cached: the
    next call checks again."""
    plans = _PLANS
    key = None if plans is None else _key(make, shapes, dtype, options)
    if key is None:
        return make(*shapes, dtype, *options)
    plan = plans.get(key)
    if plan is None:
        plan = make(*shapes, dtype, *options)
        if len(plans) >= _PLANS_MAX:
            plans.clear()
        plans[key] = plan
    return plan


def _ready(arrays):
    """(dtype, shapes) of arrays the kernels can take as they are (exact ndarrays, C-contiguous, all of one native
    float32 or float64 dtype: the builtin descriptors, tested by identity), else None."""
    dtype = arrays[0].dtype if type(arrays[0]) is _ND else None
    if dtype is not _F64 and dtype is not _F32:
        return None
    shapes = []
    for a in arrays:
        if type(a) is not _ND or a.dtype is not dtype or not a.flags.c_contiguous:
            return None
        shapes.append(a.shape)
    return dtype, tuple(shapes)


def _cached(make, arrays, options):
    """(dtype, shape, run, small) of the plan an earlier call made, when this call's arrays are _ready and its
    options plain (_key); else None, and the call takes the full path (conversions, checks, the plan). The
    common call, a layer's in a training loop, so skips the conversions and checks. With the kernels' own
    versions by dtype (_TYPED) and plain np.empty results below the pool: the tutorial's layer
    (16, 1, 4, 28, 5), float64, its four operations back to back, 100 -> 94 µs on 2 threads, 153 -> 149 µs on
    1 (medians of four runs alternating the old and new trees)."""
    plans = _PLANS
    ready = None if plans is None else _ready(arrays)
    if ready is None:
        return None
    dtype, shapes = ready
    plan = plans.get(_key(make, shapes, dtype, options))  # a None key (options not plain) finds no plan
    return None if plan is None else (dtype, *plan)


def _run(use_gemm, fn, *args):
    if not use_gemm:  # no BLAS inside: no thread limits to set (and no context manager to enter)
        fn(*args)
        return
    with blas_single_thread():
        fn(*args)


# ----------------------------------------------------------------------------------------------
# the operations
# ----------------------------------------------------------------------------------------------

_FORWARD_NAMES = ("x", "kernels", "bias")


def conv2d_forward(x, kernels, bias, *, stride=1, padding=0, method="auto", out=None):
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
        'direct': the register-tiled direct kernels (wide rows or shifted copies, stride 1, any padding);
        'gemm': im2col + BLAS;
        'auto' picks by shape.
    out : ndarray, optional
        Where to write y: C-contiguous, writeable, of y's shape and dtype, sharing no memory with the inputs.
        Reusing one array across calls saves a fresh allocation (and its page faults) per call.

    Returns
    -------
    y : ndarray, shape (N, C_out, OH, OW)
        ``y[n, j] = bias[j] + Σ_i xcorr(x[n, i], kernels[j, i])`` with
        ``OH = (H + pad_top + pad_bottom - KH) // SH + 1`` (``H - KH + 1`` by default), same for OW.
        float32 if every input is float32, else float64. ``out`` when given.
    """
    hit = _cached(_forward_plan, (x, kernels, bias), (stride, padding, method))
    if hit is not None:
        dtype, shape, run, small = hit
        y = _output(out, shape, dtype, (x, kernels, bias), _FORWARD_NAMES, small)
        if shape[0]:
            run(x, kernels, bias, y)
        return y
    x, k, b = _as_array(x, "x"), _as_array(kernels, "kernels"), _as_array(bias, "bias")
    dtype = _compute_dtype((x, k, b), _FORWARD_NAMES)
    _check_ndim(x, 4, "x", "(N, C_in, H, W)")
    _check_ndim(k, 4, "kernels", "(C_out, C_in, KH, KW)")
    _check_ndim(b, 1, "bias", "(C_out,)")
    shape, run, small = _plan(_forward_plan, (x.shape, k.shape, b.shape), dtype, (stride, padding, method))
    y = _output(out, shape, dtype, (x, k, b), _FORWARD_NAMES, small)
    if shape[0]:
        run(_contiguous(x, dtype), _contiguous(k, dtype), _contiguous(b, dtype), y)
    return y


def _forward_plan(xshape, kshape, bshape, dtype, stride, padding, method):
    """conv2d_forward's checks and choices, from the shapes and arguments: (y's shape, run(x, k, b, y), whether
    y is below the results' pool)."""
    N, C_in, H, W = xshape
    C_out, Ck, KH, KW = kshape
    if C_out * Ck * KH * KW == 0:
        raise ValueError(f"kernels must not be empty, got shape {kshape}")
    if Ck != C_in:
        raise ValueError(f"x has {C_in} channels (shape {xshape}) but kernels expect {Ck} (shape {kshape})")
    if bshape[0] != C_out:
        raise ValueError(f"bias has {bshape[0]} entries (shape {bshape}) but kernels have {C_out} output channels (shape {kshape})")
    SH, SW = _ints(stride, "stride", 1)
    top, bottom, left, right = _padding(padding, KH, KW, (SH, SW))
    OH, OW = _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, "x", "kernels", xshape, kshape)
    method = _wide_method(method, (SH, SW) == (1, 1), "stride 1", N, C_in, C_out, H, W, KH, KW, OH, OW, dtype,
                          grad=False)
    use_gemm = method == "gemm"
    _check_alloc((N, C_out, OH, OW), dtype, lambda: f"conv2d_forward: x {xshape} with kernels {kshape}, "
                 f"stride {(SH, SW)} and padding {(top, bottom, left, right)} gives y")
    nt = _threads(N, N * C_out * OH * OW * C_in * KH * KW)
    small = _small(N * C_out * OH * OW, dtype)
    unpadded = (top, bottom, left, right) == (0, 0, 0, 0)
    # tiny unpadded layers (the tutorial's toy one, float64: 2.8 us in the row loops, 3.4 wide, 4.6 shifted)
    # and the row tiles' shapes run in conv2d_forward; the others in the wide / shifted / channel kernels
    tiny = _tiny(OH, OW, C_in, C_out)

    forward = _TYPED["conv2d_forward"][dtype]

    def run_loops(x, k, b, y, use_gemm):
        scratch = _scratch(use_gemm, nt, C_in * KH * KW, OH * OW, C_out, dtype)
        _run(use_gemm, forward, x, k, b, y, scratch, SH, SW, top, left, use_gemm, nt)

    if use_gemm:
        return (N, C_out, OH, OW), lambda x, k, b, y: run_loops(x, k, b, y, True), small
    if unpadded and (tiny or _row_tiles_better(C_in, OH, OW, C_out, KH, KW, dtype)):
        no_scratch = _scratch(False, nt, C_in * KH * KW, OH * OW, C_out, dtype)  # no BLAS: no limits to set

        def run_rows(x, k, b, y):
            forward(x, k, b, y, no_scratch, SH, SW, 0, 0, False, nt)

        return (N, C_out, OH, OW), run_rows, small
    if C_in == 1 and _row_tiles_better(C_in, OH, OW, C_out, KH, KW, dtype, padded=True):
        kernel = _padded_rows_run
    elif _channels_better(False, C_in, C_out, H, W, KH, KW, OH, OW, dtype):
        kernel = _channel_vector_run
    else:
        kernel = _shifted_run if _shifted_better(C_in, KH, KW, dtype) else _wide_run

    all_finite = _TYPED["all_finite"][dtype]

    def run_direct(x, k, b, y):
        if not unpadded and not all_finite(k.reshape(-1)):
            # The direct kernels skip some products with the zero padding (rows of taps that meet only
            # padding); with an inf or NaN tap, 0 * inf is NaN in the definition (and in im2col, PyTorch):
            # compute those layers the im2col way.
            run_loops(x, k, b, y, True)
            return
        kernel(x, k, b, y, top, left, nt, dtype)

    return (N, C_out, OH, OW), run_direct, small


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
    hit = _cached(_kgrad_plan, (dE_dY, x), (stride, padding, kernel_size, method))
    if hit is not None:
        dtype, shape, run, _ = hit
        dk = np.empty(shape, dtype)
        run(dE_dY, x, dk)
        return dk
    dy, x = _as_array(dE_dY, "dE_dY"), _as_array(x, "x")
    dtype = _compute_dtype((dy, x), ("dE_dY", "x"))
    _check_ndim(dy, 4, "dE_dY", "(N, C_out, OH, OW)")
    _check_ndim(x, 4, "x", "(N, C_in, H, W)")
    shape, run, _ = _plan(_kgrad_plan, (dy.shape, x.shape), dtype, (stride, padding, kernel_size, method))
    dk = np.empty(shape, dtype=dtype)
    run(_contiguous(dy, dtype), _contiguous(x, dtype), dk)
    return dk


def _kgrad_plan(dyshape, xshape, dtype, stride, padding, kernel_size, method):
    """conv2d_kernel_gradient's checks and choices: (dK's shape, run(dy, x, dk), True)."""
    N, C_out, OH, OW = dyshape
    Nx, C_in, H, W = xshape
    if Nx != N:
        raise ValueError(f"dE_dY has batch size {N} (shape {dyshape}) but x has {Nx} (shape {xshape})")
    if C_out == 0 or C_in == 0:
        raise ValueError(f"dE_dY {dyshape} and x {xshape} must have at least one channel each")
    SH, SW = _ints(stride, "stride", 1)
    if kernel_size is None:
        if (SH, SW) != (1, 1) or isinstance(padding, str) and padding.lower() == "same":
            raise ValueError("kernel_size is required when stride > 1 or padding='same'")
        top, bottom, left, right = _padding(padding, 1, 1, (SH, SW))
        KH, KW = H + top + bottom - OH + 1, W + left + right - OW + 1
        if KH < 1 or KW < 1 or OH < 1 or OW < 1:
            raise ValueError(f"dE_dY {dyshape} is larger than x {xshape} allows: no kernel size fits")
    else:
        KH, KW = _ints(kernel_size, "kernel_size", 1)
        top, bottom, left, right = _padding(padding, KH, KW, (SH, SW))
    eOH, eOW = _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, "x", "kernel_size", xshape, (KH, KW))
    if (eOH, eOW) != (OH, OW):
        raise ValueError(f"dE_dY has spatial shape {(OH, OW)} (shape {dyshape}) but x {xshape} with a "
                         f"{KH}x{KW} kernel gives {(eOH, eOW)}")
    impl = _kgrad_method(method, (SH, SW) == (1, 1), (top, bottom, left, right) == (0, 0, 0, 0),
                         N, OH, OW, C_in, C_out, KH, KW, dtype)
    _check_alloc((C_out, C_in, KH, KW), dtype, lambda: f"conv2d_kernel_gradient: dE_dY {dyshape} and x "
                 f"{xshape} with padding {(top, bottom, left, right)} give dK")
    nchunk = max(1, min(N, _NCHUNK))
    nt = _threads(nchunk, N * C_out * OH * OW * C_in * KH * KW)
    size = C_out * C_in * KH * KW

    kgrad = _TYPED["conv2d_kernel_gradient"][dtype]

    def run_loops(dy, x, dk, use_gemm):
        # per-chunk partial sums; the direct loops keep one per output column too (summed in order at the end)
        partial = np.empty((nchunk, size * (1 if use_gemm else OW)), dtype)
        scratch = _scratch(use_gemm, nt, C_in * KH * KW, OH * OW, C_out, dtype)
        _run(use_gemm, kgrad, dy, x, dk, partial, scratch, SH, SW, top, left, use_gemm, nt)

    if impl not in _KGRAD_LAYOUTS:
        use_gemm = impl == "gemm"
        return (C_out, C_in, KH, KW), lambda dy, x, dk: run_loops(dy, x, dk, use_gemm), True
    layout = _KGRAD_LAYOUTS[impl]
    single = dtype == np.float32
    ns = _kgrad_samples(C_in, C_out, OH, OW, KH, KW, single, layout, N // nchunk)
    slab = _conv.kgrad_wide_scratch_size(C_in, C_out, OH, OW, KH, KW, single, layout, ns)

    tiled = _TYPED["conv2d_kernel_gradient_wide"][dtype]

    def run_tiled(dy, x, dk):
        # per-thread slabs: padded (or shifted) x, widened dE_dY, vector partials; zeros where nothing is copied
        partial = np.empty((nchunk, size), dtype)
        scratch = np.zeros((nt, slab), dtype)
        if not tiled(dy, x, dk, partial, scratch, top, left, layout, _KGRAD_TILE_CHANNELS, _KGRAD_TILE_TAPS, ns, nt):
            # The tiled layouts also multiply zeros (the widened dE_dY's extra columns) by x values a tap does
            # not reach: 0 * x is 0, except for an inf or NaN in x, which would turn such a tap into NaN. Only
            # then is dK non-finite; im2col reaches exactly the right values, so recompute that way.
            run_loops(dy, x, dk, True)

    return (C_out, C_in, KH, KW), run_tiled, True


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
    dy = dE_dY
    ready = _ready((dy,))
    if ready is not None and dy.ndim == 4:  # the common call: the kernel takes dy as it is
        dtype = ready[0]
    else:
        dy = _as_array(dE_dY, "dE_dY")
        dtype = _compute_dtype((dy,), ("dE_dY",))
        _check_ndim(dy, 4, "dE_dY", "(N, C_out, OH, OW)")
        dy = _contiguous(dy, dtype)
    C_out = dy.shape[1]
    db = np.empty(C_out, dtype)
    if C_out == 0:
        return db
    acc = np.empty((C_out, _conv.SUM_LANES), dtype)
    # a sum reads each element once: it splits from fewer elements than a convolution's multiply-adds
    nt = _threads(C_out, dy.size * _MIN_WORK_PER_THREAD // _BIAS_MIN_PER_THREAD)
    _TYPED["conv2d_bias_gradient"][dtype](dy, db, acc, nt)
    return db


_IGRAD_NAMES = ("dE_dY", "kernels")


def conv2d_input_gradient(dE_dY, kernels, *, stride=1, padding=0, input_size=None, method="auto", out=None):
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
        'direct' (stride 1, padding <= kernel size - 1): the forward's wide-row kernel on dE_dY padded by
        kernel size - 1 - padding with the transposed, 180°-rotated kernels; 'gemm': BLAS + col2im.
    out : ndarray, optional
        Where to write dX, as in :func:`conv2d_forward`.

    Returns
    -------
    dX : ndarray, shape (N, C_in, H, W)
        ``dX[n, i] = Σ_j conv_full(dE_dY[n, j], kernels[j, i])`` (the adjoint of the forward map); ``out``
        when given.
    """
    hit = _cached(_igrad_plan, (dE_dY, kernels), (stride, padding, input_size, method))
    if hit is not None:
        dtype, shape, run, small = hit
        dx = _output(out, shape, dtype, (dE_dY, kernels), _IGRAD_NAMES, small)
        if shape[0]:
            run(dE_dY, kernels, dx)
        return dx
    dy, k = _as_array(dE_dY, "dE_dY"), _as_array(kernels, "kernels")
    dtype = _compute_dtype((dy, k), _IGRAD_NAMES)
    _check_ndim(dy, 4, "dE_dY", "(N, C_out, OH, OW)")
    _check_ndim(k, 4, "kernels", "(C_out, C_in, KH, KW)")
    shape, run, small = _plan(_igrad_plan, (dy.shape, k.shape), dtype, (stride, padding, input_size, method))
    dx = _output(out, shape, dtype, (dy, k), _IGRAD_NAMES, small)
    if shape[0]:
        run(_contiguous(dy, dtype), _contiguous(k, dtype), dx)
    return dx


def _igrad_plan(dyshape, kshape, dtype, stride, padding, input_size, method):
    """conv2d_input_gradient's checks and choices: (dX's shape, run(dy, k, dx), whether dX is below the
    results' pool)."""
    N, C_out, OH, OW = dyshape
    Ck, C_in, KH, KW = kshape
    if Ck * C_in * KH * KW == 0:
        raise ValueError(f"kernels must not be empty, got shape {kshape}")
    if Ck != C_out:
        raise ValueError(f"dE_dY has {C_out} channels (shape {dyshape}) but kernels have {Ck} output channels (shape {kshape})")
    if OH < 1 or OW < 1:
        raise ValueError(f"dE_dY must have a non-empty spatial shape, got {dyshape}")
    SH, SW = _ints(stride, "stride", 1)
    top, bottom, left, right = _padding(padding, KH, KW, (SH, SW))
    if input_size is None:
        H, W = (OH - 1) * SH + KH - top - bottom, (OW - 1) * SW + KW - left - right
        if H < 1 or W < 1:
            raise ValueError(f"dE_dY {dyshape} with kernels {kshape} and padding {padding!r} gives no valid input size")
    else:
        H, W = _ints(input_size, "input_size", 1)
    eOH, eOW = _out_hw(H, W, KH, KW, SH, SW, top, bottom, left, right, "input_size", "kernels", (H, W), kshape)
    if (eOH, eOW) != (OH, OW):
        raise ValueError(f"dE_dY has spatial shape {(OH, OW)} (shape {dyshape}) but an input of {(H, W)} with "
                         f"kernels {kshape} gives {(eOH, eOW)}")
    _check_alloc((N, C_in, H, W), dtype, lambda: f"conv2d_input_gradient: dE_dY {dyshape} with kernels "
                 f"{kshape}, stride {(SH, SW)} and padding {(top, bottom, left, right)} gives dX")
    # stride 1: dX is the forward of dE_dY zero-padded by K-1-padding with the transposed, 180°-rotated kernels
    pads = (KH - 1 - top, KH - 1 - bottom, KW - 1 - left, KW - 1 - right)
    method = _wide_method(method, (SH, SW) == (1, 1) and min(pads) >= 0, "stride 1 and padding <= kernel size - 1",
                          N, C_in, C_out, H, W, KH, KW, OH, OW, dtype, grad=True)
    use_gemm = method == "gemm"
    nt = _threads(N, N * C_out * OH * OW * C_in * KH * KW)
    small = _small(N * C_in * H * W, dtype)

    igrad = _TYPED["conv2d_input_gradient"][dtype]

    def run_loops(dy, k, dx, use_gemm):
        scratch = _scratch(use_gemm, nt, C_in * KH * KW, OH * OW, C_out, dtype)
        _run(use_gemm, igrad, dy, k, dx, scratch, SH, SW, top, left, use_gemm, nt)

    if use_gemm:
        return (N, C_in, H, W), lambda dy, k, dx: run_loops(dy, k, dx, True), small
    # tiny unpadded layers (the tutorial's toy one: 9 vs 11 us) keep the scatter loops, which need no setup
    if _tiny(OH, OW, C_in, C_out) and (top, bottom, left, right) == (0, 0, 0, 0):
        no_scratch = _scratch(False, nt, C_in * KH * KW, OH * OW, C_out, dtype)  # no BLAS: no limits to set

        def run_scatter(dy, k, dx):
            igrad(dy, k, dx, no_scratch, SH, SW, 0, 0, False, nt)

        return (N, C_in, H, W), run_scatter, small
    if _band_better(C_in, H, W, KH, dtype):
        kernel = _band_run
    elif _channels_better(True, C_in, C_out, H, W, KH, KW, OH, OW, dtype):
        kernel = _channel_vector_run
    else:
        kernel = _wide_run

    no_bias = np.zeros(C_in, dtype=dtype)
    no_bias.flags.writeable = False
    rotate, rot_shape = _TYPED["rotate_kernels"][dtype], (C_in, C_out, KH, KW)

    def run_direct(dy, k, dx):
        # These kernels run on dE_dY zero-padded by K-1: an inf or NaN in the kernels would meet those zeros
        # (inf * 0 = NaN) where the full convolution has no product at all; BLAS + col2im (and the scatter
        # loops) form only the real products.
        k_rot = np.empty(rot_shape, dtype)
        if not rotate(k, k_rot):
            run_loops(dy, k, dx, True)
            return
        kernel(dy, k_rot, no_bias, dx, pads[0], pads[2], nt, dtype)

    return (N, C_in, H, W), run_direct, small
