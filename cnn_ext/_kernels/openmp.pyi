"""Type stubs for the compiled kernel module cnn_ext._kernels.openmp (src_pyx/openmp.pyx).

Private: call the validated wrappers in cnn_ext._threads. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def openmp_enabled(

) -> bool:
    """True when the kernel modules were compiled with OpenMP."""

def openmp_max_threads(

) -> int:
    """omp_get_max_threads() (1 without OpenMP); honours OMP_NUM_THREADS."""
