"""Type stubs for the compiled kernel module cnn_ext._kernels.gemm (src_pyx/gemm.pyx).

Private: call the validated wrappers in cnn_ext.ops. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
cnn_ext._kernels.gemm_avx2 is the same source compiled with AVX2 + FMA (x86-64), same API.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def conv2d_forward_gemm(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    scratch: NDArray[_F],  # TMP (threads, C_in*KH*KW*block)
    SH: int,
    SW: int,
    PH: int,
    PW: int,
    num_threads: int,
) -> None:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) with stride (SH, SW) and zero padding (PH, PW)."""

def conv2d_kernel_gradient_gemm(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    dk: NDArray[_F],  # OUT (C_out, C_in, KH, KW)
    partial: NDArray[_F],  # TMP (nchunk, C_out*C_in*KH*KW)
    scratch: NDArray[_F],  # TMP (threads, C_in*KH*KW*block)
    SH: int,
    SW: int,
    PH: int,
    PW: int,
    num_threads: int,
    c_lo: int = 0,
    c_hi: int = -1,
) -> None:
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]) (with stride and padding), summed in fixed chunks. Only chunks [c_lo, c_hi) are computed (c_hi = -1: all); dk is written by the call that reaches the last chunk."""

def conv2d_input_gradient_gemm(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    k: NDArray[_F],  # IN  (C_out, C_in, KH, KW)
    dx: NDArray[_F],  # OUT (N, C_in, H, W)
    scratch: NDArray[_F],  # TMP (threads, C_in*KH*KW*block)
    SH: int,
    SW: int,
    PH: int,
    PW: int,
    num_threads: int,
) -> None:
    """dx[n, i] = Σ_j conv_full(dy[n, j], k[j, i]) (the adjoint of the forward map, with stride and padding)."""
