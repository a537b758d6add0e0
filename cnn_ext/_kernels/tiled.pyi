"""Type stubs for the compiled kernel module cnn_ext._kernels.tiled (src_pyx/tiled.pyx).

Private: call the validated wrappers in cnn_ext.ops. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
cnn_ext._kernels.tiled_avx2 is the same source compiled with AVX2 + FMA (x86-64), same API.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def direct_tile_lanes(
    single: bool,
) -> int:
    """SIMD lanes per vector of the direct forward's register tile in this build (float32 if single)."""

def wide_tile(
    single: bool,
) -> tuple[int, int]:
    """(output channels, flat outputs) of the wide-row tile in this build (float32 if single)."""

def wide_pitch(
    W: int,
    OW: int,
    KW: int,
    PL: int,
) -> int:
    """Row pitch of the wide kernel's slab for input width W, output width OW, kernel width KW, left padding
    PL: W + PL + PR - s with PR = OW + KW - 1 - W - PL the right padding and s = min(PL, PR, KW - 1).

    A row's right padding and the next row's left padding are both zeros, so they can share s slots: row r's
    data sits at r*pitch + PL, and output column q < OW <= pitch reads slots q .. q + KW - 1 of its row, which
    run at most s slots into the next row's left padding (s <= PL). s <= KW - 1 keeps OW <= pitch (each
    output row inside its own pitch). With the full padded width the wide rows would compute and drop KW - 1
    columns per row; with this pitch they drop KW - 1 - s: none for the input gradient (dE_dY padded by
    KW - 1 on both sides), half as many for 'same' padding."""

def conv2d_forward_wide(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp + slack), any values
    wide: NDArray[_F],  # TMP (threads, C_out*Fr)
    PT: int,
    PL: int,
    IB: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1; the row pitch Wp is wide_pitch)."""

def shifted_tile(
    single: bool,
) -> tuple[int, int]:
    """(output channels, flat outputs) of the shifted-copies tile in this build (float32 if single)."""

def shifted_slab_size(
    C_in: int,
    OH: int,
    OW: int,
    KH: int,
    KW: int,
    single: bool,
) -> int:
    """Elements of one thread's shifted-copies slab for blocks of C_in input channels: C_in*KW*Hp*OW plus one
    tile of slack (the last tile's vector loads reach TB - 2 past the copies)."""

def conv2d_forward_shifted(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    xs: NDArray[_F],  # TMP (threads, shifted_slab_size), zeroed
    stage: NDArray[_F],  # TMP (threads, CNN_EXT_SJB * TB)
    PT: int,
    PL: int,
    IB: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape), through shifted copies of each sample."""

def all_finite(
    a: NDArray[_F],
) -> bool:
    """Whether no value of a is inf or NaN."""

def rotate_kernels(
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    k_rot: NDArray[_F],
) -> bool:
    """k_rot[i, j] = k[j, i] rotated by 180°: the kernels of the input gradient as a forward (stride 1) of
    dE_dY padded by K - 1 - padding. Returns whether every value is finite (an inf or NaN would meet that
    padding's zeros: the caller then takes a path without them)."""

def band_tile(
    single: bool,
) -> tuple[int, int]:
    """(output rows, SIMD lanes) of the row-band tile in this build (float32 if single): it needs OH >= rows and
    OW >= lanes."""

def conv2d_forward_band(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (1, C_in, KH, KW)
    b: NDArray[_F],  # IN  (1,)
    y: NDArray[_F],  # OUT (N, 1, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp), any values
    PT: int,
    PL: int,
    num_threads: int,
) -> None:
    """y[n, 0] = b[0] + Σ_i xcorr(x[n, i], k[0, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1); OH >= band_tile()[0],
    OW >= band_tile()[1]. Each thread zeroes its own slab first (_zero_slab)."""

def channel_tile(
    single: bool,
) -> int:
    """Output channels per channel-vector tile in this build (float32 if single): C_out must be a multiple."""

def conv2d_forward_cv(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    kp: NDArray[_F],  # IN  (C_out / JW, C_in, KH, KW, JW) packed kernels
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp), Hp and Wp from padded_extent
    stage: NDArray[_F],  # TMP (threads, JW*OW)
    SH: int,
    SW: int,
    PT: int,
    PL: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) at stride (SH, SW), zero padding PT on top and PL on the
    left; kp[jb, i, kh, kw, l] = k[jb*JW + l, i, kh, kw] with JW = channel_tile(); C_out a multiple of JW.
    xpad holds C_in * padded_extent(H, OH, KH, SH, PT) * padded_extent(W, OW, KW, SW, PL) elements per thread."""

def padded_extent(
    H: int,
    OH: int,
    KH: int,
    SH: int,
    PT: int,
) -> int:
    """Rows (or columns) of a padded slab: those the output reads, and at least the input's below its top
    padding (a stride can leave the last input rows unread); OH + KH - 1 at stride 1."""

def channel_kgrad_max_kw() -> int:
    """Kernel widths up to which the channel-vector kernel gradient runs (a tile copy each)."""

def channel_kgrad_taps() -> int:
    """Taps (i, kh, kw) per tile of the channel-vector kernel gradient in this build."""

def channel_kgrad_scratch_size(
    C_in: int,
    C_out: int,
    H: int,
    W: int,
    OH: int,
    OW: int,
    KH: int,
    KW: int,
    SH: int,
    SW: int,
    PT: int,
    PL: int,
) -> int:
    """Elements of one thread's scratch: the padded slab, a zero row for the tiles' spare rows, and dyT."""

def conv2d_kernel_gradient_cv(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    dk: NDArray[_F],  # OUT (C_out, C_in, KH, KW)
    partial: NDArray[_F],  # TMP (nchunk, C_out*C_in*KH*KW)
    scratch: NDArray[_F],  # TMP (threads, channel_kgrad_scratch_size)
    SH: int,
    SW: int,
    PT: int,
    PL: int,
    num_threads: int,
    c_lo: int = 0,
    c_hi: int = -1,
) -> None:
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]) at stride (SH, SW), zero padding PT on top and PL on the
    left, summed in fixed chunks of samples; C_out a multiple of direct_tile_lanes(), KW <= channel_kgrad_max_kw().
    Only chunks [c_lo, c_hi) of partial are computed (c_hi = -1: all); dk is written by the call that reaches
    the last chunk. ValueError, before any work, when the scratch is too small."""
