# cython: language_level=3
"""Geometry of one convolution and the padded-slab helpers shared by the direct kernels (all inline)."""
from cython cimport floating
from libc.string cimport memset


ctypedef struct Geom:
    Py_ssize_t C_in, H, W, C_out, KH, KW, OH, OW, SH, SW, PH, PW


cdef inline Geom _geom(Py_ssize_t C_in, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C_out,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
                       Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW) noexcept nogil:
    cdef Geom g
    g.C_in = C_in; g.H = H; g.W = W; g.C_out = C_out; g.KH = KH; g.KW = KW
    g.OH = OH; g.OW = OW; g.SH = SH; g.SW = SW; g.PH = PH; g.PW = PW
    return g


cdef inline void _copy_padded(const floating* x, floating* xp, const Geom* g, Py_ssize_t plane,
                              Py_ssize_t Wp) noexcept nogil:
    """xp[i, r + PH, c + PW] = x[i, r, c] (planes of pitch plane, rows of pitch Wp): the interior of a zero-padded
    slab (short rows: an inline, vectorised loop, not a memcpy call per row)."""
    cdef Py_ssize_t i, r, c
    cdef floating* dst
    cdef const floating* src
    for i in range(g.C_in):
        for r in range(g.H):
            dst = xp + i * plane + (r + g.PH) * Wp + g.PW
            src = x + (i * g.H + r) * g.W
            for c in range(g.W):
                dst[c] = src[c]


cdef inline void _zero_slab(floating* xp, Py_ssize_t size) noexcept nogil:
    """A thread's padded slab zeroed by that thread, at the start of its part of a call: the copies of the
    samples then write only the interior, and the zeros land in the cache of the core that reads them."""
    memset(xp, 0, size * sizeof(floating))


cdef inline bint _all_finite(const floating* a, Py_ssize_t n) noexcept nogil:
    """Whether no a[t], t < n, is inf or NaN."""
    cdef Py_ssize_t t
    cdef bint finite = True
    for t in range(n):
        finite &= a[t] - a[t] == 0  # false for inf and NaN
    return finite


cdef inline int _check_slabs(Py_ssize_t rows, Py_ssize_t size, int num_threads, Py_ssize_t C_in, Py_ssize_t Hp,
                             Py_ssize_t Wp) except -1:
    """ValueError unless a (rows, size) scratch holds a zero-padded C_in x Hp x Wp slab per thread."""
    if size < C_in * Hp * Wp or rows < num_threads:
        raise ValueError(f"xpad {(rows, size)} too small for {num_threads} slabs of {C_in} x {Hp} x {Wp}")
    return 0
