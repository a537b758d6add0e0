# cython: language_level=3
"""Matrix product for the Dense layers.

cnn_ext/ops.py validates and allocates; `matmul` takes typed memoryviews, releases the GIL and never raises.
The output columns are cut into a fixed number of blocks, one single-threaded BLAS call each (the caller holds
BLAS to one thread: the same threading layer as the convolutions), the blocks split over threads by
_threads.pxd. The blocks do not depend on the thread count: neither does the result.
"""
from cython cimport floating
from cython.parallel cimport prange

from _blas cimport _gemm_rm
from _threads cimport _nparts, _part, _team

def matmul(const floating[:, ::1] a,       # IN  (M, K), or (K, M) if trans_a
           const floating[:, ::1] b,       # IN  (K, N), or (N, K) if trans_b
           floating[:, ::1] c,             # OUT (M, N)
           bint trans_a, bint trans_b, Py_ssize_t nblk, int num_threads):
    """c = op(a) @ op(b) in nblk column blocks, each one BLAS call, shared out over num_threads threads
    (the blocks do not depend on the thread count: neither does the result)."""
    cdef Py_ssize_t M = c.shape[0], N = c.shape[1]
    cdef Py_ssize_t K = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t t, nparts
    nblk = max(1, min(nblk, N))
    nparts = _nparts(nblk, num_threads)
    if M == 0 or N == 0:
        return
    if K == 0:
        c[:, :] = 0
        return
    with nogil:
        if nparts == 1:
            _matmul_blocks(&a[0, 0], &b[0, 0], &c[0, 0], M, N, K, trans_a, trans_b, 0, nblk, nblk)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _matmul_blocks(&a[0, 0], &b[0, 0], &c[0, 0], M, N, K, trans_a, trans_b, _part(nblk, t, nparts),
                               _part(nblk, t + 1, nparts), nblk)


cdef void _matmul_blocks(const floating* a, const floating* b, floating* c, Py_ssize_t M, Py_ssize_t N,
                         Py_ssize_t K, bint trans_a, bint trans_b, Py_ssize_t t0, Py_ssize_t t1,
                         Py_ssize_t nblk) noexcept nogil:
    """_matmul_block for the column blocks [t0, t1) of nblk"""
    cdef Py_ssize_t t
    for t in range(t0, t1):
        _matmul_block(a, b, c, M, N, K, trans_a, trans_b, (t * N) // nblk, ((t + 1) * N) // nblk)


cdef void _matmul_block(const floating* a, const floating* b, floating* c, Py_ssize_t M, Py_ssize_t N,
                        Py_ssize_t K, bint trans_a, bint trans_b, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """c[:, j0:j1] = op(a) @ op(b)[:, j0:j1]"""
    if j1 <= j0:
        return
    _gemm_rm(trans_a, trans_b, <int>M, <int>(j1 - j0), <int>K, <floating>1, a,
             <int>(M if trans_a else K), b + (j0 * K if trans_b else j0), <int>(K if trans_b else N),
             <floating>0, c + j0, <int>N)
