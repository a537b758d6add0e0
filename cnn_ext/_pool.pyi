"""Type stubs for the compiled kernel module cnn_ext._pool (src_pyx/_pool.pyx).

Private: call the validated wrappers in cnn_ext.pooling. Every float array of one call has the same dtype,
float32 or float64, and is C-contiguous; outputs (OUT) are allocated by the caller; the functions release the
GIL and never raise on bad shapes (they trust cnn_ext.pooling).
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def pool2d_forward(
    x: NDArray[_F],  # IN  (N, C, H, W)
    y: NDArray[_F],  # OUT (N, C, OH, OW)
    idx: NDArray[np.int32],  # OUT (N*C*OH*OW,) first-max positions in each H*W plane, or empty
    KH: int,
    KW: int,
    SH: int,
    SW: int,
    use_max: bool,
    num_threads: int,
) -> None:
    """y = max (use_max) or mean of each (KH, KW) window at (p*SH, q*SW); idx = first max, row-major."""

def pool2d_backward(
    dy: NDArray[_F],  # IN  (N, C, OH, OW)
    idx: NDArray[np.int32],  # IN  (N*C*OH*OW,) from pool2d_forward (max only; else empty)
    dx: NDArray[_F],  # OUT (N, C, H, W)
    KH: int,
    KW: int,
    SH: int,
    SW: int,
    use_max: bool,
    num_threads: int,
) -> None:
    """dx = dy scattered to the first-max positions (use_max) or spread evenly over each window."""
