"""Type stubs for the compiled kernel module cnn_ext._conv (src_pyx/_conv.pyx).

cnn_ext._conv_avx2 is the same source compiled with AVX2 + FMA and has the same API (see _conv_avx2.pyi).
These are private: call the validated wrappers in cnn_ext.ops. Every array of one call has the same dtype,
float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller; the
functions release the GIL and never raise on bad shapes (they trust cnn_ext.ops).
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def openmp_enabled() -> bool:
    """True when this module was compiled with OpenMP."""

def openmp_max_threads() -> int:
    """omp_get_max_threads() (1 without OpenMP); honours OMP_NUM_THREADS."""

def conv2d_forward(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    scratch: NDArray[_F],  # TMP (threads, C_in*KH*KW*block) for gemm, else unused
    SH: int,
    SW: int,
    PH: int,
    PW: int,
    use_gemm: bool,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) with stride (SH, SW) and zero padding (PH, PW)."""

def conv2d_kernel_gradient(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    dk: NDArray[_F],  # OUT (C_out, C_in, KH, KW)
    partial: NDArray[_F],  # TMP (nchunk, C_out*C_in*KH*KW[*OW if direct])
    scratch: NDArray[_F],  # TMP (threads, C_in*KH*KW*block) for gemm
    SH: int,
    SW: int,
    PH: int,
    PW: int,
    use_gemm: bool,
    num_threads: int,
) -> None:
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]) (with stride and padding), summed in fixed chunks."""

SUM_LANES: int  # columns of conv2d_bias_gradient's acc scratch

def conv2d_bias_gradient(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    db: NDArray[_F],  # OUT (C_out,)
    acc: NDArray[_F],  # TMP (C_out, SUM_LANES)
    num_threads: int,
) -> None:
    """db[j] = (1/N) Σ_{n, p, q} dy[n, j, p, q]."""

def conv2d_input_gradient(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    dx: NDArray[_F],  # OUT (N, C_in, H, W)
    scratch: NDArray[_F],  # TMP (threads, C_in*KH*KW*block) for gemm
    SH: int,
    SW: int,
    PH: int,
    PW: int,
    use_gemm: bool,
    num_threads: int,
) -> None:
    """dx[n, i] = Σ_j conv_full(dy[n, j], k[j, i]) (the adjoint of the forward map, with stride and padding):
    BLAS + col2im, or (stride 1, no padding) scatter loops that only win on tiny layers; the stride-1 direct
    method is otherwise the forward kernels on padded dy (see cnn_ext.ops)."""

def kgrad_wide_scratch_size(C_in: int, C_out: int, OH: int, OW: int, KH: int, KW: int, single: bool,
                            layout: int, ns: int = 1) -> int:
    """Elements of one thread's slab for conv2d_kernel_gradient_wide with ns samples per tile: ns padded (or
    shifted) copies of x, ns widened dy (none for the output-rows layout 2), the vector partials."""

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
) -> bool:
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]), stride 1, zero padding (PH top, PW left; the bottom /
    right padding follows from the shapes), by register tiles over ns samples at a time (the slab holds ns
    samples, kgrad_wide_scratch_size(..., ns)), summed in fixed chunks. layout: 0 wide rows, 1 shifted copies,
    2 output rows (OW a whole number of SIMD vectors). Returns whether every value of dk is finite."""

def wide_pitch(W: int, OW: int, KW: int, PL: int) -> int:
    """Row pitch of the wide kernel's slab: the padded width less the slots a row's right and the next row's
    left padding share (min(left, right, KW - 1))."""

def conv2d_forward_wide(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp + slack), any values (each thread zeroes its own)
    wide: NDArray[_F],  # TMP (threads, C_out*Fr)
    PT: int,
    PL: int,
    IB: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1)."""

def shifted_tile(single: bool) -> tuple[int, int]:
    """(output channels, flat outputs) of the shifted-copies tile in this build (float32 if single)."""

def shifted_slab_size(C_in: int, OH: int, OW: int, KH: int, KW: int, single: bool) -> int:
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

def conv2d_forward_cv(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    kp: NDArray[_F],  # IN  (C_out / JW, C_in, KH, KW, JW) packed kernels, JW = channel_tile()
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp), any values (each thread zeroes its own)
    stage: NDArray[_F],  # TMP (threads, JW*OW)
    PT: int,
    PL: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left;
    kp[jb, i, kh, kw, l] = k[jb*JW + l, i, kh, kw] with JW = channel_tile(); C_out a multiple of JW."""

def conv2d_forward_rows_padded(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp), any values (each thread zeroes its own)
    PT: int,
    PL: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1): the row tiles of the
    unpadded forward on a zero-padded copy of each sample (a slab per thread)."""

def all_finite(a: NDArray[_F]) -> bool:  # IN (n,)
    """Whether no value of a is inf or NaN."""

def rotate_kernels(
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    k_rot: NDArray[_F],  # OUT (C_in, C_out, KH, KW)
) -> bool:
    """k_rot[i, j] = k[j, i] rotated by 180° (the input gradient's kernels); whether every value is finite."""

def conv2d_forward_band(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (1, C_in, KH, KW)
    b: NDArray[_F],  # IN  (1,)
    y: NDArray[_F],  # OUT (N, 1, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp), any values (each thread zeroes its own)
    PT: int,
    PL: int,
    num_threads: int,
) -> None:
    """y[n, 0] = b[0] + Σ_i xcorr(x[n, i], k[0, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1); OH >= band_tile()[0],
    OW >= band_tile()[1]."""

def band_tile(single: bool) -> tuple[int, int]:
    """(output rows, SIMD lanes) of the row-band tile in this build (float32 if single): it needs OH >= rows and
    OW >= lanes."""

def channel_tile(single: bool) -> int:
    """Output channels per channel-vector tile in this build (float32 if single): C_out must be a multiple."""

def wide_tile(single: bool) -> tuple[int, int]:
    """(output channels, flat outputs) of the wide-row tile in this build (float32 if single)."""

def direct_tile_lanes(single: bool) -> int:
    """SIMD lanes per vector of the direct forward's register tile in this build (float32 if single)."""

def matmul(
    a: NDArray[_F],  # IN  (M, K), or (K, M) if trans_a
    b: NDArray[_F],  # IN  (K, N), or (N, K) if trans_b
    c: NDArray[_F],  # OUT (M, N)
    trans_a: bool,
    trans_b: bool,
    nblk: int,
    num_threads: int,
) -> None:
    """c = op(a) @ op(b) in nblk column blocks, one BLAS call each, shared out over the threads."""
