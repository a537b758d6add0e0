"""Type stubs for the compiled kernel module cnn_ext._kernels.rows (src_pyx/rows.pyx).

Private: call the validated wrappers in cnn_ext.ops. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
cnn_ext._kernels.rows_avx2 is the same source compiled with AVX2 + FMA (x86-64), same API.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def conv2d_forward_rows(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, H-KH+1, W-KW+1)
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr_valid(x[n, i], k[j, i]) (stride 1, no padding)."""

def conv2d_forward_rows_padded(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    xpad: NDArray[_F],  # TMP (threads, C_in*Hp*Wp), any values
    PT: int,
    PL: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1): the row tiles of the
    unpadded forward on a zero-padded copy of each sample (a slab per thread, zeroed here by its thread).
    ValueError if xpad has too few rows or too short ones."""

def conv2d_input_gradient_scatter(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    dx: NDArray[_F],  # OUT (N, C_in, OH+KH-1, OW+KW-1)
    num_threads: int,
) -> None:
    """dx[n, i] = Σ_j conv_full(dy[n, j], k[j, i]) (stride 1, no padding) by scatter loops: they need no setup,
    which only pays on tiny layers (elsewhere the input gradient is a forward on padded dy, see cnn_ext.ops)."""

def conv2d_kernel_gradient_rows(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    x: NDArray[_F],  # IN  (N, C_in, OH+KH-1, OW+KW-1)
    dk: NDArray[_F],  # OUT (C_out, C_in, KH, KW)
    partial: NDArray[_F],  # TMP (nchunk, C_out*C_in*KH*KW*OW)
    num_threads: int,
    c_lo: int = 0,
    c_hi: int = -1,
) -> None:
    """dk[j, i] = (1/N) Σ_n xcorr_valid(x[n, i], dy[n, j]) (stride 1, no padding) by row loops keeping a partial
    sum per output column; chunks of samples and then the columns summed in a fixed order. Only chunks [c_lo, c_hi) are computed (c_hi = -1: all); dk is written by the call that reaches the last chunk."""
