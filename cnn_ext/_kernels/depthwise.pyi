"""Type stubs for the compiled kernel module cnn_ext._kernels.depthwise (src_pyx/depthwise.pyx).

Private: call the validated wrappers in cnn_ext.ops. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
Depthwise: groups == C_in, C_out = m * C_in, output channel j reads input channel j // m.
cnn_ext._kernels.depthwise_avx2 is the same source compiled with AVX2 + FMA (x86-64), same API.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def depthwise_forward(
    x: NDArray[_F],  # IN  (N, C_in, H, W), N >= 1
    k: NDArray[_F],  # IN  (C_out, 1, KH, KW)
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW)
    SH: int, SW: int, DH: int, DW: int, top: int, left: int, num_threads: int,
) -> None:
    """y[n, j] = b[j] + xcorr(x[n, j // m], k[j, 0]) with stride, dilation and padding (real taps only)."""

def depthwise_input_gradient(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW), N >= 1
    k: NDArray[_F],  # IN  (C_out, 1, KH, KW)
    dx: NDArray[_F],  # OUT (N, C_in, H, W), H * W >= 1
    SH: int, SW: int, DH: int, DW: int, top: int, left: int, num_threads: int,
) -> None:
    """dx[n, i] = Σ_{j // m == i} the forward's transpose of dy[n, j] with k[j, 0]."""

def depthwise_kernel_gradient(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW), N >= 1
    x: NDArray[_F],  # IN  (N, C_in, H, W), H * W >= 1
    dk: NDArray[_F],  # OUT (C_out, 1, KH, KW)
    part: NDArray[_F],  # TMP (threads, OW), any values
    SH: int, SW: int, DH: int, DW: int, top: int, left: int, num_threads: int,
) -> None:
    """dk[j, 0] = (1/N) Σ_n xcorr(x[n, j // m], dy[n, j]) at the dilated taps."""

def depthwise_forward_wide(
    x: NDArray[_F],  # IN  (N, C_in, H, W), N >= 1
    k: NDArray[_F],  # IN  (C_out, 1, KH, KW), finite
    b: NDArray[_F],  # IN  (C_out,)
    y: NDArray[_F],  # OUT (N, C_out, OH, OW), stride 1
    slab: NDArray[_F],  # TMP (threads, Hp*Wp + L), L = (OH - 1) * Wp + OW; any values
    DH: int, DW: int, top: int, left: int, num_threads: int,
) -> None:
    """depthwise_forward with stride 1 on zero-padded wide rows."""

def depthwise_input_gradient_wide(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW), N >= 1
    k: NDArray[_F],  # IN  (C_out, 1, KH, KW), finite
    dx: NDArray[_F],  # OUT (N, C_in, H, W), stride 1, H * W >= 1
    slab: NDArray[_F],  # TMP (threads, Hp*Wp + L); any values
    DH: int, DW: int, top: int, left: int, num_threads: int,
) -> None:
    """depthwise_input_gradient with stride 1 on wide rows."""

def depthwise_kernel_gradient_wide(
    dy: NDArray[_F],  # IN  (N, C_out, OH, OW), finite, N >= 1
    x: NDArray[_F],  # IN  (N, C_in, H, W), finite, H * W >= 1
    dk: NDArray[_F],  # OUT (C_out, 1, KH, KW), stride 1
    slab: NDArray[_F],  # TMP (threads, Hp*Wp + L + KH*KW*L); any values
    DH: int, DW: int, top: int, left: int, num_threads: int,
) -> None:
    """depthwise_kernel_gradient with stride 1 on wide rows."""
