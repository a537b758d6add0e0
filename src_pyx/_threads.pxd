# cython: language_level=3
"""The one split of work over threads, used by every kernel module.

A call's n items (samples, fixed chunks of samples, planes, column blocks) are cut into nparts contiguous
parts: one when there is one thread (no parallel region: entering one costs about a microsecond), else up to
PARTS_PER_THREAD per thread, handed out dynamically, so that a thread the OS runs late (a busy machine) leaves
its share to the others instead of holding up the whole call. Part t is [_part(n, t, nparts),
_part(n, t + 1, nparts)); per-thread scratch is row threadid(). Every def runs the same pattern:

    nparts = _nparts(n, num_threads)
    if nparts == 1:
        _work(..., 0, n, scratch row 0)
    else:
        for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
            _work(..., _part(n, t, nparts), _part(n, t + 1, nparts), scratch row threadid())

Items never depend on the part or the thread that computes them, and reductions go through fixed chunks summed
in a fixed order, so results do not depend on the thread count.
"""

cdef enum:
    PARTS_PER_THREAD = 4


cdef inline Py_ssize_t _nparts(Py_ssize_t n, Py_ssize_t num_threads) noexcept nogil:
    """How many parts n items are cut into: 1 on one thread, else up to PARTS_PER_THREAD per thread."""
    if num_threads <= 1:
        return 1
    return max(1, min(n, PARTS_PER_THREAD * num_threads))


cdef inline int _team(Py_ssize_t nparts, Py_ssize_t num_threads) noexcept nogil:
    """Threads for nparts parts: never more than the parts."""
    return <int>min(nparts, num_threads)


cdef inline Py_ssize_t _part(Py_ssize_t n, Py_ssize_t t, Py_ssize_t nparts) noexcept nogil:
    """First item of part t of n items cut into nparts contiguous parts (_part(n, nparts, nparts) == n)."""
    return (t * n) // nparts


cdef inline Py_ssize_t _chunk_range(Py_ssize_t c_lo, Py_ssize_t c_hi, Py_ssize_t nchunk) except -1:
    """The end of chunks [c_lo, c_hi) of a batch cut into nchunk (c_hi = -1: to the last), checked."""
    if c_hi < 0:
        c_hi = nchunk
    if not 0 <= c_lo < c_hi <= nchunk:
        raise ValueError(f"chunks [{c_lo}, {c_hi}) are not a range of the {nchunk} chunks")
    return c_hi
