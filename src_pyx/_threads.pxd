# cython: language_level=3
"""The one split of work over threads, used by every kernel module.

A call's n items (samples, fixed chunks of samples, planes, column blocks) are cut into nparts = min(n,
num_threads) contiguous parts; part t is [_part(n, t, nparts), _part(n, t + 1, nparts)) and uses scratch row t.
Every def runs the same pattern:

    nparts = _nparts(n, num_threads)
    if nparts == 1:                      # no parallel region (entering one costs about a microsecond)
        _work(..., 0, n, 0)
    else:
        for t in prange(nparts, schedule='static', num_threads=nparts):
            _work(..., _part(n, t, nparts), _part(n, t + 1, nparts), t)

Items never depend on the part that computes them, and reductions go through fixed chunks summed in a fixed
order, so results do not depend on the thread count.
"""


cdef inline Py_ssize_t _nparts(Py_ssize_t n, Py_ssize_t num_threads) noexcept nogil:
    """How many parts n items are cut into: one per thread, at most one per item, at least one."""
    return max(1, min(n, num_threads))


cdef inline Py_ssize_t _part(Py_ssize_t n, Py_ssize_t t, Py_ssize_t nparts) noexcept nogil:
    """First item of part t of n items cut into nparts contiguous parts (_part(n, nparts, nparts) == n)."""
    return (t * n) // nparts
