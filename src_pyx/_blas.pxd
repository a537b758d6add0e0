# cython: language_level=3
"""BLAS for the kernels: row-major C = op(A) @ op(B) through scipy's column-major gemm (scikit-learn's
_cython_blas pattern: one inline wrapper over the fused type, the dtype branch only at the BLAS call)."""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void _gemm_rm(bint trans_a, bint trans_b, int M, int N, int K, floating alpha,
                          const floating* A, int lda, const floating* B, int ldb,
                          floating beta, floating* C, int ldc) noexcept nogil:
    """C[M, N] = alpha op(A) op(B) + beta C, all row-major: column-major gemm on the swapped operands."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*>B, &ldb, <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double*>B, &ldb, <double*>A, &lda, &beta, C, &ldc)
