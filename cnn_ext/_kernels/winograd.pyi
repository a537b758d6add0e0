"""Type stubs for the compiled kernel module cnn_ext._kernels.winograd (src_pyx/winograd.pyx).

Private: call the validated wrappers in cnn_ext.ops. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
cnn_ext._kernels.winograd_avx2 is the same source compiled with AVX2 + FMA (x86-64), same API.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

WHOLE_CHUNKS: int  # chunks per thread of a kernel gradient call from which its threads take whole chunks

def winograd_scratch_size(C_in: int, C_out: int, OH: int, OW: int, m: int, BR: int, kgrad: bool) -> int:
    """Elements of one thread's scratch row for F(m x m, 3 x 3) with BR tile rows per block."""

def winograd_kernel_transform(
    k: NDArray[_F],  # IN  (C_out, C_in, 3, 3)
    u: NDArray[_F],  # OUT ((m+2)², C_out, C_in)
    m: int,
    num_threads: int,
) -> None:
    """u[ξ, j, i] = (G k[j, i] Gᵀ)[ξ], computed in double and rounded once."""

def conv2d_forward_winograd(
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    u: NDArray[_F],  # IN  ((m+2)², C_out, C_in): G k Gᵀ
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    scratch: NDArray[_F],  # TMP (threads, winograd_scratch_size(...))
    m: int,
    BR: int,
    PH: int,
    PW: int,
    num_threads: int,
    exact_zeros: bool = True,
) -> bool:
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) (3x3, stride 1, zero padding PH, PW) by F(m x m, 3 x 3);
    returns whether y is finite. exact_zeros: b[j] exactly where the 3x3 field is zero in every channel."""

def conv2d_input_gradient_winograd(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    u: NDArray[_F],  # IN  ((m+2)², C_out, C_in): G k Gᵀ
    dx: NDArray[_F],  # OUT (N, C_in, H, W)
    scratch: NDArray[_F],  # TMP (threads, winograd_scratch_size(...))
    m: int,
    BR: int,
    PH: int,
    PW: int,
    num_threads: int,
) -> bool:
    """dx[n, i] = Σ_j the adjoint of xcorr(., k[j, i]) (3x3, stride 1, zero padding PH, PW) applied to dy[n, j],
    by the adjoint of the forward's F(m x m, 3 x 3) on its own tiles; blocks of whole samples (BR tile rows, at
    least a sample's). Returns whether dx is finite."""

def conv2d_kernel_gradient_winograd(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW)
    x: NDArray[_F],  # IN  (N, C_in, H, W)
    partial: NDArray[_F],  # OUT (nchunk, C_out*C_in*9)
    scratch: NDArray[_F],  # TMP (threads, winograd_scratch_size(...))
    gg: NDArray[_F],  # IN  ((m+2)², 9): G ⊗ G
    m: int,
    BR: int,
    PH: int,
    PW: int,
    num_threads: int,
    c_lo: int = 0,
    c_hi: int = -1,
) -> None:
    """partial[c] = Σ_{n in chunk c} xcorr(x[n, i], dy[n, j]) (3x3, stride 1, zero padding) by F(m x m, 3 x 3),
    for the fixed chunks c in [c_lo, c_hi) of the nchunk (c_hi = -1: all; the caller adds them in order)."""
