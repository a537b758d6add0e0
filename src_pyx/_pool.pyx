# cython: language_level=3
"""2-D max and average pooling (NCHW, no padding, floor mode) and their input gradients.

cnn_ext/pooling.py validates every argument and allocates outputs; each `def` here takes typed memoryviews,
releases the GIL for the whole loop and never raises. Every (sample, channel) plane is independent, so the
(N*C) planes are split over OpenMP threads (not just the N samples: a single image with many channels still
uses every thread); nothing is reduced across planes, so results do not depend on the thread count.
Ties in max pooling: the first maximum in row-major window order wins (strict `>` scan); a NaN wins over
any number, the first NaN over later ones, so NaN propagates as in PyTorch. Argmax positions are int32 (H*W is
guarded in Python) so that the float32 select loop vectorises with lanes of one width.
"""
from cython cimport floating
from cython.parallel cimport prange


ctypedef struct PoolGeom:
    Py_ssize_t H, W, OH, OW, KH, KW, SH, SW


cdef inline PoolGeom _pgeom(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH,
                            Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW) noexcept nogil:
    cdef PoolGeom g
    g.H = H; g.W = W; g.OH = OH; g.OW = OW; g.KH = KH; g.KW = KW; g.SH = SH; g.SW = SW
    return g


# ---------------------------------------------------------------------------------------------------
# one plane
# ---------------------------------------------------------------------------------------------------

cdef void _max_plane(const floating* x, floating* y, int* idx, bint want_idx,
                     const PoolGeom* g) noexcept nogil:
    """y[p, q] = max_{kh, kw} x[p*SH + kh, q*SW + kw]; idx[p, q] = flat index (in the H*W plane) of the first max.

    Window offsets are visited in row-major order, each as one branch-free sweep along the output row (the
    compiler vectorises it): strict '>' keeps the first max; 'v != v' lets the first NaN win and stay.
    """
    cdef Py_ssize_t p, q, kh, kw, base, W = g.W, SW = g.SW, OW = g.OW
    cdef const floating* xrow
    cdef floating* yrow
    cdef int* irow
    cdef floating v, b
    cdef bint take
    for p in range(g.OH):
        yrow = y + p * OW
        irow = idx + p * OW if want_idx else idx
        base = p * g.SH * W
        xrow = x + base
        for q in range(OW):
            yrow[q] = xrow[q * SW]
        if want_idx:
            for q in range(OW):
                irow[q] = <int>(base + q * SW)
        for kh in range(g.KH):
            for kw in range(g.KW):
                if kh == 0 and kw == 0:
                    continue
                base = (p * g.SH + kh) * W + kw
                xrow = x + base
                if want_idx:
                    for q in range(OW):
                        v = xrow[q * SW]
                        b = yrow[q]
                        take = (v > b) | ((v != v) & (b == b))
                        yrow[q] = v if take else b
                        irow[q] = <int>(base + q * SW) if take else irow[q]
                else:
                    for q in range(OW):
                        v = xrow[q * SW]
                        b = yrow[q]
                        take = (v > b) | ((v != v) & (b == b))
                        yrow[q] = v if take else b


cdef void _max_grad_plane(const floating* dy, const int* idx, floating* dx,
                          const PoolGeom* g) noexcept nogil:
    """dx = 0; dx[idx[p, q]] += dy[p, q]  (overlapping windows accumulate)."""
    cdef Py_ssize_t t
    for t in range(g.H * g.W):
        dx[t] = 0
    for t in range(g.OH * g.OW):
        dx[idx[t]] += dy[t]


cdef void _avg_plane(const floating* x, floating* y, const PoolGeom* g) noexcept nogil:
    """y[p, q] = (1 / (KH*KW)) Σ_{kh, kw} x[p*SH + kh, q*SW + kw]"""
    cdef Py_ssize_t p, q, kh, kw
    cdef floating cnt = <floating>(g.KH * g.KW)
    cdef floating s
    cdef const floating* xrow
    for p in range(g.OH):
        for q in range(g.OW):
            s = 0
            for kh in range(g.KH):
                xrow = x + (p * g.SH + kh) * g.W + q * g.SW
                for kw in range(g.KW):
                    s = s + xrow[kw]
            y[p * g.OW + q] = s / cnt


cdef void _avg_grad_plane(const floating* dy, floating* dx, const PoolGeom* g) noexcept nogil:
    """dx = 0; dx[p*SH + kh, q*SW + kw] += dy[p, q] / (KH*KW)"""
    cdef Py_ssize_t t, p, q, kh, kw
    cdef floating cnt = <floating>(g.KH * g.KW)
    cdef floating share
    cdef floating* dxrow
    for t in range(g.H * g.W):
        dx[t] = 0
    for p in range(g.OH):
        for q in range(g.OW):
            share = dy[p * g.OW + q] / cnt
            for kh in range(g.KH):
                dxrow = dx + (p * g.SH + kh) * g.W + q * g.SW
                for kw in range(g.KW):
                    dxrow[kw] += share


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext.pooling only)
# ---------------------------------------------------------------------------------------------------

def pool2d_forward(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                   floating[:, :, :, ::1] y,         # OUT (N, C, OH, OW)
                   int[::1] idx,                     # OUT (N*C*OH*OW,) int32 first-max positions, or empty
                   Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                   bint use_max, int num_threads):
    """y[n, c, p, q] = max (use_max) or mean of the (KH, KW) window at (p*SH, q*SW); with max and a non-empty
    idx, idx = the flat H*W position of the window's first maximum."""
    cdef Py_ssize_t t, planes = x.shape[0] * x.shape[1]
    cdef Py_ssize_t HW = x.shape[2] * x.shape[3], P = y.shape[2] * y.shape[3]
    cdef PoolGeom g = _pgeom(x.shape[2], x.shape[3], y.shape[2], y.shape[3], KH, KW, SH, SW)
    cdef bint want_idx = idx.shape[0] > 0
    cdef int dummy = 0
    if planes == 0 or P == 0:
        return
    with nogil:
        for t in prange(planes, schedule='static', num_threads=num_threads):
            if use_max:
                _max_plane(&x[0, 0, 0, 0] + t * HW, &y[0, 0, 0, 0] + t * P,
                           (&idx[0] + t * P) if want_idx else &dummy, want_idx, &g)
            else:
                _avg_plane(&x[0, 0, 0, 0] + t * HW, &y[0, 0, 0, 0] + t * P, &g)


def pool2d_backward(const floating[:, :, :, ::1] dy,   # IN  (N, C, OH, OW), OH, OW >= 1
                    const int[::1] idx,                # IN  (N*C*OH*OW,) int32 from pool2d_forward (max only)
                    floating[:, :, :, ::1] dx,         # OUT (N, C, H, W)
                    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                    bint use_max, int num_threads):
    """dx[n, c] = dy[n, c] scattered to the first-max positions idx (use_max), or each dy[n, c, p, q] / (KH*KW)
    spread over its window; zeros where nothing lands."""
    cdef Py_ssize_t t, planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t HW = dx.shape[2] * dx.shape[3], P = dy.shape[2] * dy.shape[3]
    cdef PoolGeom g = _pgeom(dx.shape[2], dx.shape[3], dy.shape[2], dy.shape[3], KH, KW, SH, SW)
    if planes == 0 or HW == 0:
        return
    with nogil:
        for t in prange(planes, schedule='static', num_threads=num_threads):
            if use_max:
                _max_grad_plane(&dy[0, 0, 0, 0] + t * P, &idx[0] + t * P, &dx[0, 0, 0, 0] + t * HW, &g)
            else:
                _avg_grad_plane(&dy[0, 0, 0, 0] + t * P, &dx[0, 0, 0, 0] + t * HW, &g)
