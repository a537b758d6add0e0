"""Which kernel computes a convolution: the methods, their tunables, and the choice for ``method="auto"``.

Every method gives the same answer up to rounding (the tests run each one against an oracle); they differ in
speed by shape. ``method="auto"`` picks from the shapes, the dtype and the build (AVX-512, AVX2 + FMA or baseline) only,
never from the thread count, so results do not depend on it. ``method="direct"`` picks like auto among the
direct methods. The measurements behind each rule are in ``benchmarks/results/methods.md``.

A new method is one kernel file in ``src_pyx/``, one member of :class:`Method`, its name in the tuple of each
operation it serves, one ``applicable`` condition, one runner in ``cnn_ext/_runners.py`` and, if auto should
pick it, one rule below.
"""
import enum
from typing import NamedTuple

import numpy as np

from ._kernels import ISA, kgrad, tiled


class Method(str, enum.Enum):
    """The kernels of the three convolution operations (values are the names ``method=`` takes)."""

    GEMM = "gemm"                          # im2col / col2im + BLAS: any stride and padding
    ROW_TILES = "row_tiles"                # forward: register tiles along output rows (stride 1, no padding);
                                           # kernel gradient: the same tiles over rows of one input channel
    ROW_TILES_PADDED = "row_tiles_padded"  # forward, one input channel: row tiles on a zero-padded copy
    WIDE = "wide"                          # tiles along the flat index of a zero-padded slab (stride 1)
    SHIFTED = "shifted"                    # KW shifted copies of the sample: no wasted columns (stride 1)
    CHANNELS = "channels"                  # vectors over output channels, for small maps (forward and kernel
                                           # gradient: any stride)
    BAND = "band"                          # input gradient of one input channel: 4 output rows per tile
    SCATTER = "scatter"                    # input gradient of tiny layers: scatter loops (no setup)
    LOOPS = "loops"                        # kernel gradient of tiny layers: plain row loops (no setup)
    WINOGRAD = "winograd"                  # 3x3 stride 1: Winograd F(m x m, 3 x 3) transforms + BLAS


FORWARD_METHODS = ("gemm", "row_tiles", "row_tiles_padded", "wide", "shifted", "channels", "winograd")
INPUT_GRADIENT_METHODS = ("gemm", "scatter", "wide", "band", "channels", "winograd")
KERNEL_GRADIENT_METHODS = ("gemm", "loops", "wide", "shifted", "row_tiles", "channels", "winograd")
_CHOICES = ("auto", "direct")

# ---- tunables: each with the reason it has its value ---------------------------------------------
FAST = ISA != "baseline"  # the direct kernels beat BLAS only with AVX2 + FMA (or AVX-512); baseline keeps BLAS
COLS_BLOCK_BYTES = 8 << 20  # im2col blocks: wide GEMMs beat L2-sized ones, but the slab stays bounded
MIN_BLOCK = 64  # output pixels per im2col block at least: thin blocks make thin GEMMs
# the direct methods copy one padded sample per thread; past this (a huge padding on many channels) only
# im2col's bounded blocks run the call, so a size the output check let through never fails on scratch
MAX_SLAB_BYTES = 1 << 30
TINY_PIXELS = 36  # output pixels per map up to which a tiny layer's plain loops beat every tiled kernel
TINY_CHANNELS = 4  # C_in * C_out up to which the same holds
ROW_TILES_MAX_C_OUT = 32  # output channels past which the row tiles lose to the wide rows
ROW_TILE_CHANNELS = 4  # output channels per row tile (cnn_row_tile.h's CNN_EXT_JB, the same in every build)
ROW_TILES_MIN_OW_ONE_CHANNEL = 20  # one input channel: row width from which row tiles win despite a tail tile
ROW_TILES_SHORT = 128  # C_in*KH*KW up to which row tiles win ties (the wide tiles' copy-out shows)
WIDE_F64_MAX_CHANNELS = 2048  # float64 forward, maps > CHANNELS_MAX_PIXELS: C_in*C_out from which BLAS ties
WIDE_DX_SMALL_F32 = 1024  # float32 dX: C_in*C_out up to which the wide rows win on any map
WIDE_DX_SMALL_F64 = 512  # float64 dX (GEMM nearer its peak): the same, and only there
WIDE_DX_MAX_WASTE = 1.5  # float32 dX: H*W / (OH*OW) (zeros multiplied outside the map) up to which wide wins
CHANNELS_MAX_TAPS = 9  # KH*KW up to which vectors over output channels can win (7x7 kernels lose)
CHANNELS_MAX_PIXELS = 400  # output pixels per map up to which they win (28x28 and larger: ties or losses)
CHANNELS_DX_F64_MAX = 1024  # float64 dX: C_in*C_out up to which they win
CHANNELS_KGRAD_MAX_KW = tiled.channel_kgrad_max_kw()  # the kernel gradient's tile has a copy per kernel width
CHANNELS_MIN_REDUCTION = 64  # C_in*KH*KW (dX: C_out*KH*KW) from which the channel-vector tiles are full enough
# builds with 32 vector registers (AVX-512): the channel-vector tiles hold 24 accumulators and win on maps of
# any size once the reduction (C_in*KH*KW, dX's C_out*KH*KW) reaches CHANNELS_MIN_REDUCTION, also against
# Winograd in float32; the kernel gradient's tiles (two vectors x 12 taps, one vector x 24) win on maps >
# CHANNELS_MAX_PIXELS from C_in*C_out = 128 in both dtypes, the smallest measured (float64 on maps up to 56x56,
# the largest measured: the per-sample slabs grow past L2). Tiles of 6 taps (AVX2) win only on small maps and
# strides, in float32 (benchmarks/results/methods.md, methods_kgrad_channels.md)
CHANNELS_WIDE = tiled.channel_kgrad_taps() >= 12
CHANNELS_KGRAD_LARGE = 128
CHANNELS_KGRAD_F64_MAX_PIXELS = 56 * 56
WIDE_IB = 32  # input channels per block of the wide-row kernel: its slab rows stay in L2
SHIFT_TAPS = 144  # float32 channels x taps per block of the shifted kernel: a block's streams stay in L1
SHIFT_MAX_REDUCTION = 64  # C_in*KH*KW up to which the shifted copies win whatever the kernel
KGRAD_TILE_CHANNELS, KGRAD_TILE_TAPS = 4, 3  # 12 of the 16 ymm registers (6x2, 3x4 tiles lost)
KGRAD_SHIFTED_MIN = {np.dtype(np.float32): 128, np.dtype(np.float64): 56}  # C_out*KH from which shifted wins
# C_in*C_out*KH from which it wins too: the wide rows lose on many input channels, and hold on few (methods.md)
KGRAD_SHIFTED_MIN_TERMS = {np.dtype(np.float32): 768, np.dtype(np.float64): 384}
# one input channel on rows that are not whole vectors: BLAS's product of im2col wins from this many output
# channels, the shifted copies below (in both dtypes, AVX2 and AVX-512: benchmarks/results/methods_one_channel.md)
KGRAD_ONE_CHANNEL_GEMM_MIN = 32
KGRAD_SLAB_BYTES = 512 << 10  # per-thread slabs of one kernel-gradient pass stay in L2
KGRAD_MIN_VECTORS = 40  # vectors per pass from which the tiled kernel gradient beats BLAS at any width
KGRAD_MAX_PARTIAL_BYTES = 128 << 10  # vector partials up to which it wins on smaller planes
KGRAD_MAX_PARTIAL_BYTES_ANY = 32 << 20  # per-thread partials past which BLAS is taken (memory)
BIAS_MIN_PER_THREAD = 64_000  # elements per thread from which a second thread pays for the bias sums
WINOGRAD_TILE = 4  # F(4x4, 3x3): 4x fewer multiplications than direct, F(2x2) only 2.25x (error: winograd_error.md)
# float32 error per tile size: max |y - y_exact| per output map <= bound * max |x|⋆|k| over the map, the worst
# measured (benchmarks/results/winograd_error.md, C_in <= WINOGRAD_MAX_C_IN) with a margin of 2 and more
WINOGRAD_ERROR_BOUND = {2: 5e-6, 4: 3e-5}
WINOGRAD_MAX_C_IN = 128  # channels up to which the bound was measured: auto stays within them
WINOGRAD_MIN_CHANNELS = 1024  # C_in*C_out from which auto takes winograd (16x32 layers: the transforms dominate)
# the kernel gradient's: from 16x32 layers on where its direct kernels are the pixel tiles (AVX2), from 32x32
# where the channel-vector tiles take large maps (AVX-512: 1.13-1.29x there, 0.98-1.18x on 16x32 layers), from
# benchmarks/results/winograd_range.md and methods_kgrad_channels.md
WINOGRAD_MIN_CHANNELS_KGRAD = 1024 if CHANNELS_WIDE else 512
WINOGRAD_MIN_MAP = 12  # output rows and columns from which it does (the smallest maps of the measured rows)
# output pixels per call (N x OH x OW) from which it does: the kernel transform (G k Gᵀ of every pair of
# channels) is per call; 128x128 layers on one or two 14x14 samples ran 0.57-0.96x the direct kernels' speed,
# on four 0.94-1.47x, one 28x28 sample of a 64x64 layer 1.14-1.26x (benchmarks/results/winograd_small_batch.md)
WINOGRAD_MIN_PIXELS = 784
# below WINOGRAD_LARGE_MAP rows or columns, edge tiles and transforms weigh more: on 14x14 maps 32x64 layers
# tied with the direct kernels (float32) or lost their input gradient (float64): benchmarks/results/winograd_range.md
WINOGRAD_LARGE_MAP = 24
WINOGRAD_MIN_CHANNELS_SMALL_MAP = {np.dtype(np.float32): 4096, np.dtype(np.float64): 4096}
# the kernel gradient's: the channel-vector kernels keep 64x64 layers on 14x14 maps (on 2 threads: 0.8x), and
# where they have 32 registers nothing was measured below 64x128 in float64
WINOGRAD_MIN_CHANNELS_SMALL_MAP_KGRAD = {np.dtype(np.float32): 8192,
                                         np.dtype(np.float64): 8192 if CHANNELS_WIDE else 16384}
WINOGRAD_BLOCK_BYTES = 2 << 20  # V and M of one block of tiles: wide enough products, yet within L3 beside BLAS
# (4 MiB wins on some layers and loses as much on others, in both dtypes: benchmarks/results/winograd_blocks.md)
# the kernel gradient's blocks: V and M at least this many times dU ((m+2)² x C_in x C_out), which every block's
# products read and write; on 128x128 layers dU alone outweighs 2 MiB of tiles. float64 64x64 layers lost with
# more than 3 (benchmarks/results/winograd_kgrad.md)
WINOGRAD_KGRAD_DU_RATIO = {np.dtype(np.float32): 5, np.dtype(np.float64): 3}
# dX as the adjoint of the forward, on fewer tiles than the forward of padded dE_dY: it wins from C_in*C_out =
# 4096 (float64 32x32 layers lost) and from this many times fewer tiles (1.31x, 30x30 maps, won in both dtypes;
# 34x34 maps have 1.27x, 38x38 1.23x): benchmarks/results/winograd_dx.md
WINOGRAD_DX_ADJOINT_MIN_CHANNELS = 4096
WINOGRAD_DX_ADJOINT_MIN_TILES = 1.25
NCHUNK = 16  # batch reductions run over this many chunks summed in order: the same sums on any thread count
# a kernel gradient's chunk is what a Ctrl-C waits for (one kernel call on a busy machine): long calls get more
# chunks, of at most this many multiply-adds, as long as their partial sums fit MAX_PARTIAL_BYTES
CHUNK_MACS = 1_000_000_000
MAX_PARTIAL_BYTES = 64 << 20

KGRAD_LAYOUTS = {Method.WIDE: 0, Method.SHIFTED: 1, Method.ROW_TILES: 2}  # the tiled kernel gradient's layouts
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
TILES = {dt: dict(lanes=tiled.direct_tile_lanes(dt == np.float32), wide=tiled.wide_tile(dt == np.float32),
                  channels=tiled.channel_tile(dt == np.float32), band=tiled.band_tile(dt == np.float32),
                  shifted=tiled.shifted_tile(dt == np.float32))
         for dt in _DTYPES}
KGRAD_LANES = {dt: kgrad.tile_lanes(dt == np.float32) for dt in _DTYPES}  # its own build's, not tiled's


class Geometry(NamedTuple):
    """One convolution's sizes: input (N, C_in, H, W), kernels (C_out, C_in, KH, KW), output (OH, OW)."""

    N: int
    C_in: int
    C_out: int
    H: int
    W: int
    KH: int
    KW: int
    OH: int
    OW: int
    SH: int
    SW: int
    pads: tuple  # (top, bottom, left, right)

    @property
    def stride1(self):
        return self.SH == 1 and self.SW == 1

    @property
    def unpadded(self):
        return not any(self.pads)

    @property
    def macs(self):
        return self.N * self.C_out * self.OH * self.OW * self.C_in * self.KH * self.KW

    @property
    def transposed_pads(self):
        """The padding of dE_dY under which the input gradient is a stride-1 forward (K - 1 - padding)."""
        top, bottom, left, right = self.pads
        return (self.KH - 1 - top, self.KH - 1 - bottom, self.KW - 1 - left, self.KW - 1 - right)


def _tiny(g):
    return g.OH * g.OW <= TINY_PIXELS and g.C_in * g.C_out <= TINY_CHANNELS


# ---- which methods can run a call ----------------------------------------------------------------

def _slab_bytes(g, dtype):
    """An upper bound of a direct method's padded copy of one sample (x's, or dE_dY's for the input gradient)."""
    rows, cols = max(g.H, g.OH) + g.KH - 1, max(g.W, g.OW) + g.KW - 1
    return max(g.C_in, g.C_out) * rows * cols * np.dtype(dtype).itemsize


def _why_not(op, method, g, dtype):
    """Why ``method`` cannot run this call of ``op`` ('forward', 'input_gradient', 'kernel_gradient'), or ''."""
    if method is Method.GEMM:
        return ""
    if _slab_bytes(g, dtype) > MAX_SLAB_BYTES:
        return f"a padded copy of one sample within {MAX_SLAB_BYTES} bytes (this call's takes {_slab_bytes(g, dtype)})"
    if method is Method.LOOPS and op == "kernel_gradient":  # a partial sum per output column of every chunk
        partial = NCHUNK * g.C_out * g.C_in * g.KH * g.KW * g.OW * np.dtype(dtype).itemsize
        if partial > MAX_SLAB_BYTES:
            return f"per-column partial sums within {MAX_SLAB_BYTES} bytes (this call's take {partial})"
    if not g.stride1 and not (method is Method.CHANNELS and op != "input_gradient"):
        return "stride 1"
    if op == "input_gradient" and min(g.transposed_pads) < 0:
        return "padding <= kernel size - 1"
    if method is Method.WINOGRAD:
        return "" if g.KH == 3 and g.KW == 3 else "a 3x3 kernel"
    if method in (Method.SCATTER, Method.LOOPS) or (method is Method.ROW_TILES and op == "forward"):
        return "" if g.unpadded else "no padding"
    if method is Method.BAND:  # its tiles: one output channel (dX's: C_in) of at least rows x lanes
        rows, lanes = TILES[dtype]["band"]
        return "" if g.C_in == 1 and g.H >= rows and g.W >= lanes else \
            f"one input channel of at least {rows} x {lanes} pixels"
    if method is Method.ROW_TILES:  # kernel gradient
        return "" if g.C_in == 1 and g.OW % KGRAD_LANES[dtype] == 0 else \
            f"one input channel and an output width that is a multiple of {KGRAD_LANES[dtype]}"
    if method is Method.CHANNELS:  # the kernel gradient also has a tile of one vector of channels
        channels, JW = (g.C_in if op == "input_gradient" else g.C_out), TILES[dtype]["channels"]
        if op == "kernel_gradient":
            JW = TILES[dtype]["lanes"]
        if channels % JW:
            return f"{'input' if op == 'input_gradient' else 'output'} channels in multiples of {JW}"
        if op == "kernel_gradient" and g.KW > CHANNELS_KGRAD_MAX_KW:
            return f"kernels of at most {CHANNELS_KGRAD_MAX_KW} columns"
    return ""


def _forced(op, names, method, g, dtype):
    if method not in names:
        raise ValueError(f"method must be one of {_CHOICES + names}, got {method!r}")
    method = Method(method)
    why = _why_not(op, method, g, dtype)
    if why:
        raise ValueError(f"method={method.value!r} needs {why}; use 'gemm' or 'auto'")
    return method


def _gemm_only(op, method, g, dtype):
    """GEMM for 'auto' when no direct method can run the call; 'direct' is refused, saying why."""
    if method == "direct":
        raise ValueError(f"method='direct' needs {_why_not(op, Method.WIDE, g, dtype)}; use 'gemm' or 'auto'")
    return Method.GEMM


# ---- the choices ---------------------------------------------------------------------------------

def forward(method, g, dtype):
    """The Method of conv2d_forward for a method argument ('auto', 'direct' or a name of FORWARD_METHODS)."""
    if method not in _CHOICES:
        return _forced("forward", FORWARD_METHODS, method, g, dtype)
    if _slab_bytes(g, dtype) > MAX_SLAB_BYTES:
        return _gemm_only("forward", method, g, dtype)
    if method == "auto" and _winograd_better(g, dtype):
        return Method.WINOGRAD
    if g.KH * g.KW > 1 and _channels_first(g, dtype, grad=False):
        return Method.CHANNELS
    if not g.stride1:  # only the channel-vector kernel takes strides; BLAS keeps 1x1 ones (a plain product)
        if g.KH * g.KW > 1 and _channels_better(g, dtype, grad=False):
            return Method.CHANNELS
        if method == "direct":
            raise ValueError(f"method='direct' needs stride 1, or {_channels_rule(dtype)}; use 'gemm' or 'auto'")
        return Method.GEMM
    if method == "auto" and not _tiny(g):
        # float64 on large maps with many channels: a tie with BLAS, which keeps it
        big64 = dtype == np.float64 and g.C_in * g.C_out >= WIDE_F64_MAX_CHANNELS and \
            g.OH * g.OW > CHANNELS_MAX_PIXELS
        if not FAST or big64:
            return Method.GEMM
    if g.unpadded and (_tiny(g) or _row_tiles_better(g, dtype)):
        return Method.ROW_TILES
    if g.C_in == 1 and _row_tiles_better(g, dtype, padded=True):
        return Method.ROW_TILES_PADDED
    if _channels_better(g, dtype, grad=False):
        return Method.CHANNELS
    return Method.SHIFTED if _shifted_better(g, dtype) else Method.WIDE


def input_gradient(method, g, dtype):
    """The Method of conv2d_input_gradient (a name of INPUT_GRADIENT_METHODS, 'auto' or 'direct')."""
    if method not in _CHOICES:
        return _forced("input_gradient", INPUT_GRADIENT_METHODS, method, g, dtype)
    if _slab_bytes(g, dtype) > MAX_SLAB_BYTES:
        return _gemm_only("input_gradient", method, g, dtype)
    if not g.stride1 or min(g.transposed_pads) < 0:
        if method == "direct":
            raise ValueError("method='direct' needs stride 1 and padding <= kernel size - 1; use 'gemm' or 'auto'")
        return Method.GEMM
    if method == "auto" and _winograd_better(g, dtype):
        return Method.WINOGRAD
    if g.KH * g.KW > 1 and _channels_first(g, dtype, grad=True):
        return Method.CHANNELS
    if method == "auto" and not _tiny(g) and not _direct_dx_better(g, dtype):
        return Method.GEMM
    if _tiny(g) and g.unpadded:
        return Method.SCATTER
    if _band_better(g, dtype):
        return Method.BAND
    return Method.CHANNELS if _channels_better(g, dtype, grad=True) else Method.WIDE


def kernel_gradient(method, g, dtype):
    """The Method of conv2d_kernel_gradient (a name of KERNEL_GRADIENT_METHODS, 'auto' or 'direct')."""
    if method not in _CHOICES:
        return _forced("kernel_gradient", KERNEL_GRADIENT_METHODS, method, g, dtype)
    if _slab_bytes(g, dtype) > MAX_SLAB_BYTES:
        return _gemm_only("kernel_gradient", method, g, dtype)
    if method == "auto" and _winograd_better(g, dtype, kgrad=True):
        return Method.WINOGRAD
    if _channels_kgrad_better(g, dtype):
        return Method.CHANNELS
    if not g.stride1:
        if method == "direct":
            raise ValueError(f"method='direct' needs stride 1 for the kernel gradient, or {_channels_kgrad_rule(dtype)}"
                             f"; use 'gemm' or 'auto'")
        return Method.GEMM
    if method == "auto":
        if _tiny(g) and g.unpadded:
            return Method.LOOPS
        if not FAST:  # the baseline build's tiled kernel gradient loses to BLAS on large layers
            return Method.GEMM
    lanes = KGRAD_LANES[dtype]
    shifted = (g.C_in == 1 or g.C_out * g.KH >= KGRAD_SHIFTED_MIN[dtype]
               or g.C_in * g.C_out * g.KH >= KGRAD_SHIFTED_MIN_TERMS[dtype])
    layout = Method.SHIFTED if shifted else Method.WIDE
    vectors = -(-g.OH * g.OW // lanes) * kgrad_samples(g, dtype, layout)
    partial_bytes = g.C_out * g.C_in * g.KH * g.KW * lanes * dtype.itemsize
    # a tile adds its accumulators into the per-thread vector partials once per pass: with few vectors per pass
    # and partials past L2, that traffic dominates
    if method == "auto" and (vectors < KGRAD_MIN_VECTORS and partial_bytes > KGRAD_MAX_PARTIAL_BYTES
                             or partial_bytes > KGRAD_MAX_PARTIAL_BYTES_ANY):
        return Method.GEMM
    if g.C_in == 1 and g.OW % lanes == 0:  # rows of whole vectors read in place: no copy, no wasted column
        return Method.ROW_TILES
    if method == "auto" and g.C_in == 1 and g.C_out >= KGRAD_ONE_CHANNEL_GEMM_MIN:
        return Method.GEMM
    return layout


# ---- the rules behind auto -----------------------------------------------------------------------

def nchunk(g, dtype, partial_elements=None):
    """Chunks a kernel gradient's batch is summed in: NCHUNK, more for calls over NCHUNK * CHUNK_MACS while their
    partial sums (``partial_elements`` per chunk, dK's size by default) fit MAX_PARTIAL_BYTES; at most one per
    sample. From the shape only, so the sums are the same on any thread count."""
    if partial_elements is None:
        partial_elements = g.C_out * g.C_in * g.KH * g.KW
    n = max(NCHUNK, -(-g.macs // CHUNK_MACS))
    if n > NCHUNK:
        n = max(NCHUNK, min(n, MAX_PARTIAL_BYTES // max(1, partial_elements * np.dtype(dtype).itemsize)))
    return max(1, min(g.N, n))


def kgrad_samples(g, dtype, layout):
    """Samples per pass of the tiled kernel gradient (its accumulators stay in registers over them): as many as
    a batch chunk holds while their slabs fit KGRAD_SLAB_BYTES. From the shape only, so the order of the sums
    does not follow the thread count."""
    single = dtype == np.float32

    def size(ns):
        return kgrad.kgrad_wide_scratch_size(g.C_in, g.C_out, g.OH, g.OW, g.KH, g.KW, single,
                                             KGRAD_LAYOUTS[layout], ns)

    per_chunk = g.N // nchunk(g, dtype)
    per_sample = (size(2) - size(1)) * dtype.itemsize
    return max(1, min(per_chunk, KGRAD_SLAB_BYTES // per_sample))


def _winograd_better(g, dtype, kgrad=False):
    """3x3 stride-1 layers with many channels on maps of at least WINOGRAD_MIN_MAP: 4x fewer multiplications
    outweigh the transforms (benchmarks/results/winograd_range.md), in both dtypes, ahead of every direct kernel;
    up to WINOGRAD_MAX_C_IN channels, where its error bound was measured; from WINOGRAD_MIN_PIXELS output pixels
    per call (the kernel transform is per call). AVX2 builds only: the baseline build was not measured."""
    if min(g.OH, g.OW) >= WINOGRAD_LARGE_MAP:
        least = WINOGRAD_MIN_CHANNELS_KGRAD if kgrad else WINOGRAD_MIN_CHANNELS
    else:
        least = (WINOGRAD_MIN_CHANNELS_SMALL_MAP_KGRAD if kgrad else WINOGRAD_MIN_CHANNELS_SMALL_MAP)[np.dtype(dtype)]
    return (FAST and g.stride1 and g.KH == 3 and g.KW == 3 and max(g.C_in, g.C_out) <= WINOGRAD_MAX_C_IN
            and min(g.OH, g.OW) >= WINOGRAD_MIN_MAP and g.C_in * g.C_out >= least
            and g.N * g.OH * g.OW >= WINOGRAD_MIN_PIXELS)


def winograd_tile(g, dtype):
    """Output tile side m of Winograd F(m x m, 3 x 3): 2 or 4."""
    return WINOGRAD_TILE


def winograd_rows(g, dtype, m, kgrad=False):
    """Tile rows per block of the Winograd kernels: as many as V and M ((m+2)² x (C_in + C_out) x tiles) fit
    WINOGRAD_BLOCK_BYTES (the kernel gradient's: or WINOGRAD_KGRAD_DU_RATIO times dU, if more), in whole samples
    when a sample fits (small maps: wider products); from the shape only, so every block and product is the same
    on any thread count."""
    TH, TW = -(-g.OH // m), -(-g.OW // m)
    block = WINOGRAD_BLOCK_BYTES
    if kgrad:
        du = (m + 2) ** 2 * g.C_in * g.C_out * dtype.itemsize
        block = max(block, WINOGRAD_KGRAD_DU_RATIO[np.dtype(dtype)] * du)
    tiles = max(1, block // ((m + 2) ** 2 * (g.C_in + g.C_out) * dtype.itemsize))
    rows = min(max(1, tiles // TW), max(1, g.N) * TH)
    return rows // TH * TH if rows >= TH else rows


def winograd_block_samples(g, dtype, m, kgrad=False):
    """Most samples per block of the Winograd kernels when blocks hold whole samples (the kernels cut a call's
    samples evenly into as few blocks as this allows), else 1."""
    rows, TH = winograd_rows(g, dtype, m, kgrad), -(-g.OH // m)
    return rows // TH if rows >= TH else 1


def winograd_dx_adjoint(g, dtype, m):
    """Whether dX runs as the adjoint of the forward, on the forward's tiles over dE_dY, rather than as the
    forward of padded dE_dY, whose tiles cover the input map: where that map takes more tiles (unpadded layers
    whose output side is 0 or 3 modulo 4: a 14x14 input from 12x12 is 16 tiles, the adjoint's 9) by
    WINOGRAD_DX_ADJOINT_MIN_TILES, the layer has WINOGRAD_DX_ADJOINT_MIN_CHANNELS, and a block holds whole
    samples (the patches of a sample's tile rows overlap). From the shape only."""
    TH, TW = -(-g.OH // m), -(-g.OW // m)
    fewer = -(-g.H // m) * -(-g.W // m) / (TH * TW)
    return (g.C_in * g.C_out >= WINOGRAD_DX_ADJOINT_MIN_CHANNELS and winograd_rows(g, dtype, m) >= TH
            and fewer >= WINOGRAD_DX_ADJOINT_MIN_TILES)


def winograd_nchunk(g, dtype, m):
    """Chunks of the Winograd kernel gradient: nchunk's, but of whole blocks where CHUNK_MACS allows (a chunk
    ends in a fold of all its sums, and a few samples' products run far from the peak; its threads share the
    blocks of a chunk, so fewer chunks cost no thread). As many chunks as it takes for each to be one block:
    with fewer, a chunk of one sample more than a block would end in a block of that one sample. From the
    shape only."""
    blocks = -(-g.N // winograd_block_samples(g, dtype, m, kgrad=True))
    return max(1, min(nchunk(g, dtype), max(blocks, -(-g.macs // CHUNK_MACS))))


def _direct_dx_better(g, dtype):
    """The input gradient runs the forward on dE_dY padded by K-1: it multiplies H*W/(OH*OW) times more terms,
    so it loses to BLAS on small maps with many channels, in float64 (GEMM nearer its peak) soonest."""
    if not FAST:
        return False
    if _channels_better(g, dtype, grad=True):
        return True
    if dtype == np.float64:
        return g.C_in * g.C_out <= WIDE_DX_SMALL_F64
    return g.C_in * g.C_out <= WIDE_DX_SMALL_F32 or g.H * g.W <= WIDE_DX_MAX_WASTE * g.OH * g.OW


def _channels_rule(dtype):
    """What _channels_better asks of a forward, in words."""
    return (f"output channels in multiples of {TILES[dtype]['channels']}, kernels of 2 to {CHANNELS_MAX_TAPS} taps "
            f"and outputs of at most {CHANNELS_MAX_PIXELS} pixels")


def _channels_better(g, dtype, grad, any_map=False):
    """Vectors over output channels (no lane wasted when their count is a multiple of the vector) on small maps
    with 3x3 or smaller kernels, where the wide rows' row-end columns and dX's zero taps cost most (any_map: on
    every map, see _channels_first)."""
    if not FAST or g.KH * g.KW > CHANNELS_MAX_TAPS:
        return False
    channels, pixels = (g.C_in, g.H * g.W) if grad else (g.C_out, g.OH * g.OW)
    if channels % TILES[dtype]["channels"]:
        return False
    if any_map:
        return True
    if pixels > CHANNELS_MAX_PIXELS:
        return False
    return not grad or dtype == np.float32 or g.C_in * g.C_out <= CHANNELS_DX_F64_MAX


def _channels_first(g, dtype, grad):
    """With 32 registers, the channel-vector forward (grad: input gradient) before every other direct method on
    any map, once its reduction reaches CHANNELS_MIN_REDUCTION (auto asks Winograd before it); in float64 not on
    the layers Winograd takes, where method='direct' keeps the kernels measured there
    (benchmarks/results/avx512_auto.md)."""
    reduction = (g.C_out if grad else g.C_in) * g.KH * g.KW
    if dtype == np.float64 and _winograd_better(g, dtype):
        return False
    return CHANNELS_WIDE and reduction >= CHANNELS_MIN_REDUCTION and _channels_better(g, dtype, grad, any_map=True)


def _channels_kgrad_rule(dtype):
    """What _channels_kgrad_better asks of a kernel gradient, in words."""
    whole = TILES[dtype]["lanes"] if CHANNELS_WIDE else TILES[dtype]["channels"]
    return (f"output channels in multiples of {whole}, kernels of 2 or more taps and at most "
            f"{CHANNELS_KGRAD_MAX_KW} columns, C_in*KH*KW >= {CHANNELS_MIN_REDUCTION}"
            + ("" if CHANNELS_WIDE else ", float32"))


def _channels_kgrad_better(g, dtype):
    """The kernel gradient by vectors over output channels (channels-last dE_dY, x broadcast): no lane wasted on
    short or strided rows, so it wins on small maps and at any stride, and with many channels on larger maps;
    with few input channels its tiles of kernel rows run mostly empty. With 32 registers, output channels in
    whole vectors but not whole pairs take tiles of one vector and 24 taps, which won on float32 maps of every
    measured size (benchmarks/results/methods.md)."""
    if not FAST or g.KH * g.KW == 1 or g.KW > CHANNELS_KGRAD_MAX_KW:
        return False
    one_vector = g.C_out % TILES[dtype]["channels"] != 0
    if g.C_out % TILES[dtype]["lanes"] or (one_vector and not CHANNELS_WIDE):
        return False
    if g.C_in * g.KH * g.KW < CHANNELS_MIN_REDUCTION or not (CHANNELS_WIDE or dtype == np.float32):
        return False
    pixels = g.OH * g.OW
    if pixels <= CHANNELS_MAX_PIXELS or not g.stride1:
        return True
    if dtype == np.float64 and pixels > CHANNELS_KGRAD_F64_MAX_PIXELS:
        return False
    return CHANNELS_WIDE and (one_vector or g.C_in * g.C_out >= CHANNELS_KGRAD_LARGE)


def shift_ib(g, dtype):
    """Input channels per block of the shifted kernel: a block's KH*KW streams per channel stay in L1."""
    taps = SHIFT_TAPS if dtype == np.float32 else SHIFT_TAPS // 2
    return max(1, min(32, taps // (g.KH * g.KW)))


def _shifted_better(g, dtype):
    """Shifted copies (no wasted columns, KW streams per kernel row) win with short reductions and with float32
    3x3 layers whose input channels fit one block; elsewhere the wide rows tie or win."""
    if not FAST:
        return False
    if g.C_in * g.KH * g.KW <= SHIFT_MAX_REDUCTION:
        return True
    return dtype == np.float32 and g.KH * g.KW <= 9 and g.C_in <= shift_ib(g, dtype)


def _row_tiles_better(g, dtype, padded=False):
    """Row tiles (channels x 2 vectors of one output row, overlapping at row ends) win when they compute fewer
    outputs than the wide rows, or as many with a short reduction; with one input channel, tiles of 3 vectors
    win on rows of whole tiles or of ROW_TILES_MIN_OW_ONE_CHANNEL outputs and more."""
    lanes = TILES[dtype]["lanes"]
    # under 2 vectors a row is one overlapping tile: with 8 lanes it loses, with 16 the output count decides
    if not FAST or g.OW < (2 * lanes if lanes < 16 else lanes + 1):
        return False
    if g.C_in == 1:
        QB = (3 if g.OW >= 3 * lanes else 2) * lanes
        if padded:
            return g.OW % QB == 0 or g.KH * g.KW <= 9 and g.OW >= ROW_TILES_MIN_OW_ONE_CHANNEL
        return g.OW % QB == 0 or g.OW >= ROW_TILES_MIN_OW_ONE_CHANNEL
    if g.C_out > ROW_TILES_MAX_C_OUT:
        return False
    TB = TILES[dtype]["wide"][1]
    JB = ROW_TILE_CHANNELS
    row = -(-g.OW // (2 * lanes)) * 2 * lanes * (-(-g.C_out // JB) * JB if g.C_out >= JB else g.C_out)
    wide = -(-g.OH * (g.OW + g.KW - 1) // TB) * TB / g.OH * g.C_out
    return row < 0.95 * wide or (row <= wide and g.C_in * g.KH * g.KW <= ROW_TILES_SHORT)


def _band_better(g, dtype):
    """One-input-channel dX: bands of 4 output rows share each loaded input row (1 + 4/nv loads per nv FMAs);
    they need kernels of 4 rows or more and rows of 2- and 3-vector tiles (a 1-vector tile is latency bound)."""
    if not FAST or g.C_in != 1:
        return False
    rows, lanes = TILES[dtype]["band"]
    if g.H < rows or g.W < lanes or g.KH < rows:
        return False
    nvec = -(-g.W // lanes)
    ntile = max(-(-nvec // 3), 2 if g.W % lanes else 1)
    return nvec // ntile >= 2
