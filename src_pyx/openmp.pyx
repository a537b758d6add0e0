# cython: language_level=3
"""What the kernels were built with: whether OpenMP is on, and how many threads it would use.

Every kernel module is compiled with the same OpenMP flags (setup.py), so this module answers for all of them.
Both functions only read; neither raises.
"""

cdef extern from "cnn_openmp.h":
    int CNN_EXT_OPENMP
    int omp_get_max_threads() noexcept nogil


def openmp_enabled():
    """True when the kernel modules were compiled with OpenMP."""
    return bool(CNN_EXT_OPENMP)


def openmp_max_threads():
    """omp_get_max_threads() (1 without OpenMP); honours OMP_NUM_THREADS."""
    return omp_get_max_threads()
