"""Type stubs for the compiled kernel module cnn_ext._kernels.dense (src_pyx/dense.pyx).

Private: call the validated wrappers in cnn_ext.layers.dense. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def matmul(
    a: NDArray[_F],  # IN  (M, K), or (K, M) if trans_a
    b: NDArray[_F],  # IN  (K, N), or (N, K) if trans_b
    c: NDArray[_F],  # OUT (M, N)
    trans_a: bool,
    trans_b: bool,
    nblk: int,
    num_threads: int,
) -> None:
    """c = op(a) @ op(b) in nblk column blocks, each one BLAS call, shared out over num_threads threads
    (the blocks do not depend on the thread count: neither does the result)."""
