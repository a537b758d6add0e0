"""Type stubs for the compiled kernel module cnn_ext._kernels.kgrad (src_pyx/kgrad.pyx).

Private: call the validated wrappers in cnn_ext.ops. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
cnn_ext._kernels.kgrad_avx2 is the same source compiled with AVX2 + FMA (x86-64), same API.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def kgrad_wide_scratch_size(
    C_in: int,
    C_out: int,
    OH: int,
    OW: int,
    KH: int,
    KW: int,
    single: bool,
    layout: int,
    ns: int = 1,
) -> int:
    """Elements of one thread's slab for conv2d_kernel_gradient_wide with ns samples per tile: ns padded (or
    shifted) copies of x, ns widened dy (none for the output-rows layout 2), the vector partials."""

def tile_lanes(single: bool) -> int:
    """Lanes per vector of this build's kernel-gradient tiles (the output-rows layout needs rows of whole ones)."""

def conv2d_kernel_gradient_wide(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    dk: NDArray[_F],  # OUT (C_out, C_in, KH, KW)
    partial: NDArray[_F],  # TMP (nchunk, C_out*C_in*KH*KW)
    scratch: NDArray[_F],  # TMP (threads, kgrad_wide_scratch_size), zeros
    PH: int,
    PW: int,
    layout: int,
    nj: int,
    nt: int,
    ns: int,
    num_threads: int,
    c_lo: int = 0,
    c_hi: int = -1,
) -> bool:
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]), stride 1, zero padding (PH top, PW left; the bottom /
    right padding follows from the shapes), by register tiles over ns samples at a time (the slab holds ns
    samples, kgrad_wide_scratch_size(..., ns)), summed in fixed chunks. layout: 0 wide rows, 1 shifted copies,
    2 output rows (OW a whole number of SIMD vectors; see _wide_geom). Returns whether every value of dk is
    finite (an inf or NaN in x meets the zeros the tiles multiply it by: the caller then recomputes). Only chunks [c_lo, c_hi) are computed (c_hi = -1: all); dk is written by the call that reaches the last chunk."""

def conv2d_bias_gradient(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    db: NDArray[_F],  # OUT (C_out,)
    acc: NDArray[_F],  # TMP (C_out, CNN_EXT_SUM_LANES)
    num_threads: int,
) -> None:
    """db[j] = (1/N) Σ_{n, p, q} dy[n, j, p, q]: lane sums per channel, the lanes added in order at the end.

    The array is read in memory order (sample by sample, each thread its block of channels), which the
    hardware prefetchers stream; one channel at a time over all samples would jump every plane. A channel's
    sums do not depend on the blocks, so neither on threads."""

SUM_LANES: int  # columns of conv2d_bias_gradient's acc scratch
