"""Type stubs for the compiled kernel module cnn_ext._kernels.pooling (src_pyx/pooling.pyx).

Private: call the validated wrappers in cnn_ext.pooling. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
cnn_ext._kernels.pooling_avx2 is the same source compiled with AVX2 + FMA (x86-64), same API.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def pool2d_forward(
    x: NDArray[_F],  # IN  (N, C, H, W)
    y: NDArray[_F],  # OUT (N, C, OH, OW)
    idx: NDArray[np.int32],  # OUT (N*C*OH*OW,) int32 first-max positions, or empty
    KH: int,
    KW: int,
    SH: int,
    SW: int,
    use_max: bool,
    relu: bool,
    num_threads: int,
) -> None:
    """y[n, c, p, q] = max (use_max) or mean of the (KH, KW) window at (p*SH, q*SW); with max and a non-empty
    idx, idx = the flat H*W position of the window's first maximum. relu (max only): the max pooling of
    ReLU(x), bitwise a ReLU's output pooled, positions included."""

def pool2d_backward(
    dy: NDArray[_F],  # IN  (N, C, OH, OW), OH, OW >= 1
    idx: NDArray[np.int32],  # IN  (N*C*OH*OW,) int32 from pool2d_forward (max only)
    y_relu: NDArray[_F],  # IN  (N, C, OH, OW) the relu forward's y (relu), else empty
    dx: NDArray[_F],  # OUT (N, C, H, W)
    KH: int,
    KW: int,
    SH: int,
    SW: int,
    use_max: bool,
    relu: bool,
    num_threads: int,
) -> None:
    """dx[n, c] = dy[n, c] scattered to the first-max positions idx (use_max), or each dy[n, c, p, q] / (KH*KW)
    spread over its window; zeros where nothing lands. relu (max only; idx and y_relu from a relu forward): then
    the ReLU's backward, dx *= [x > 0], bitwise the two layers' backward one after the other. The average over
    disjoint 2-wide stride-2 windows (KH <= SH) writes dx once, by the vector rows; everything else zeroes the
    plane and adds (measured faster than writing each element once with a select: a zero pass is a memset)."""
