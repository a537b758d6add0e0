# cython: language_level=3
"""2-D max and average pooling (NCHW, no padding, floor mode) and their input gradients.

cnn_ext/pooling.py validates every argument and allocates outputs; each `def` here takes typed memoryviews,
releases the GIL for the whole loop and never raises. Every (sample, channel) plane is independent, so the
(N*C) planes are split over OpenMP threads by _threads.pxd (not just the N samples: a single image with many
channels still uses every thread); nothing is reduced across planes, so results do not depend on the thread count.
Ties in max pooling: the first maximum in row-major window order wins (strict `>` scan); a NaN wins over
any number, the first NaN over later ones, so NaN propagates as in PyTorch. Argmax positions are int32 (H*W is
guarded in Python) so that they share the vector lanes of float32 values.
With relu (max only) the forward pools ReLU(x) and the backward goes on through that ReLU: a ReLU layer right
before a MaxPool2D runs inside these passes (cnn_ext/layers/chain.py), bitwise the two layers' results.
Windows two or three columns wide with the same stride (KW == SW: 2x2 above all, 3x3, (2, 3), (3, 2), any KH
and SH) run the vector rows of include/cnn_pool_rows.h (contiguous loads deinterleaved in registers); every other
shape runs the generic loops. The module is built twice, baseline and
AVX2 (cnn_ext._kernels.pooling_avx2, picked at import by cnn_ext._kernels): 8-float vectors halve the work of
the rows.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from _threads cimport _nparts, _part, _team


ctypedef struct PoolGeom:
    Py_ssize_t H, W, OH, OW, KH, KW, SH, SW


cdef inline PoolGeom _pgeom(Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH,
                            Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW) noexcept nogil:
    cdef PoolGeom g
    g.H = H; g.W = W; g.OH = OH; g.OW = OW; g.KH = KH; g.KW = KW; g.SH = SH; g.SW = SW
    return g


cdef extern from "cnn_pool_rows.h":
    enum: CNN_POOL_MIN_OW_F   # narrowest output row of the float vector rows (4; 0: none in this build)
    enum: CNN_POOL_MIN_OW_D
    void _rows_max_f "cnn_pool_rows_f_max"(const float* x, float* y, int* idx, Py_ssize_t W, Py_ssize_t KH,
                                           Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K,
                                           int want_idx, int relu) noexcept nogil
    void _rows_max_d "cnn_pool_rows_d_max"(const double* x, double* y, int* idx, Py_ssize_t W, Py_ssize_t KH,
                                           Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K,
                                           int want_idx, int relu) noexcept nogil
    void _rows_avg_f "cnn_pool_rows_f_avg"(const float* x, float* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,
                                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K) noexcept nogil
    void _rows_avg_d "cnn_pool_rows_d_avg"(const double* x, double* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,
                                           Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K) noexcept nogil
    void _rows_avg_grad_f "cnn_pool_rows_f_avg_grad"(const float* dy, float* dx, Py_ssize_t H, Py_ssize_t W,
                                                     Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,
                                                     Py_ssize_t OW) noexcept nogil
    void _rows_avg_grad_d "cnn_pool_rows_d_avg_grad"(const double* dy, double* dx, Py_ssize_t H, Py_ssize_t W,
                                                     Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,
                                                     Py_ssize_t OW) noexcept nogil


cdef inline bint _rows_ok(const floating* x, const PoolGeom* g) noexcept nogil:
    """True when the vector rows apply: KW == SW == 2 or 3 (any KH, SH), rows of at least one 16-byte vector;
    x only picks the dtype."""
    cdef Py_ssize_t min_ow = CNN_POOL_MIN_OW_F if floating is float else CNN_POOL_MIN_OW_D
    return g.KW == g.SW and (g.KW == 2 or g.KW == 3) and min_ow > 0 and g.OW >= min_ow


cdef inline void _rows_max(const floating* x, floating* y, int* idx, bint want_idx, bint relu,
                           const PoolGeom* g) noexcept nogil:
    """y[p, q], idx[p, q] = first max of x[p*SH : p*SH+KH, K*q : K*q+K] (row-major), of ReLU(x) with relu;
    needs _rows_ok"""
    if floating is float:
        _rows_max_f(x, y, idx, g.W, g.KH, g.SH, g.OH, g.OW, g.KW, want_idx, relu)
    else:
        _rows_max_d(x, y, idx, g.W, g.KH, g.SH, g.OH, g.OW, g.KW, want_idx, relu)


cdef inline void _rows_avg(const floating* x, floating* y, const PoolGeom* g) noexcept nogil:
    """y[p, q] = (1 / (K*KH)) Σ x[p*SH : p*SH+KH, K*q : K*q+K] (row-major chain from 0); needs _rows_ok"""
    if floating is float:
        _rows_avg_f(x, y, g.W, g.KH, g.SH, g.OH, g.OW, g.KW)
    else:
        _rows_avg_d(x, y, g.W, g.KH, g.SH, g.OH, g.OW, g.KW)


cdef inline void _rows_avg_grad(const floating* dy, floating* dx, const PoolGeom* g) noexcept nogil:
    """the dx plane of disjoint windows: dy[p, q] / (2*KH) over window (p, q), 0 elsewhere; needs _rows_ok,
    KW == 2 and KH <= SH"""
    if floating is float:
        _rows_avg_grad_f(dy, dx, g.H, g.W, g.KH, g.SH, g.OH, g.OW)
    else:
        _rows_avg_grad_d(dy, dx, g.H, g.W, g.KH, g.SH, g.OH, g.OW)


# ---------------------------------------------------------------------------------------------------
# one plane
# ---------------------------------------------------------------------------------------------------

cdef void _max_plane(const floating* x, floating* y, int* idx, bint want_idx, bint relu,
                     const PoolGeom* g) noexcept nogil:
    """y[p, q] = max_{kh, kw} x[p*SH + kh, q*SW + kw]; idx[p, q] = flat index (in the H*W plane) of the first max;
    of ReLU(x) with relu.

    KW == SW == 2 or 3: the vector rows of cnn_pool_rows.h. Otherwise window offsets are visited in row-major
    order, each as one branch-free sweep along the output row: strict '>' keeps the first max; 'v != v' lets
    the first NaN win and stay; then _relu_first with relu.
    """
    cdef Py_ssize_t p, q, kh, kw, base, W = g.W, SW = g.SW, OW = g.OW
    cdef const floating* xrow
    cdef floating* yrow
    cdef int* irow
    cdef floating v, b
    cdef bint take
    if _rows_ok(x, g):
        _rows_max(x, y, idx, want_idx, relu, g)
        return
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
    if relu:
        _relu_first(y, idx, want_idx, g)


cdef void _relu_first(floating* y, int* idx, bint want_idx, const PoolGeom* g) noexcept nogil:
    """Turn the max pooling of x into that of ReLU(x) = max(x, +0): a window with no positive value and no NaN
    pools ReLU's +0s, whose first (the window's first element) wins; every other window keeps its max and
    position (the vector rows do the same in registers)."""
    cdef Py_ssize_t p, q, OW = g.OW
    cdef floating v
    cdef floating* yrow
    cdef int* irow
    cdef int first
    for p in range(g.OH):  # branch-free sweeps along the row, as _max_plane's
        yrow = y + p * OW
        for q in range(OW):
            v = yrow[q]
            yrow[q] = v if (v > 0) | (v != v) else 0
        if want_idx:
            irow = idx + p * OW
            first = <int>(p * g.SH * g.W)
            for q in range(OW):
                v = yrow[q]
                irow[q] = irow[q] if (v > 0) | (v != v) else first + <int>(q * g.SW)


cdef void _max_grad_plane(const floating* dy, const int* idx, floating* dx, const floating* y_relu,
                          const PoolGeom* g) noexcept nogil:
    """dx = 0; dx[idx[p, q]] += dy[p, q]  (overlapping windows accumulate); with y_relu (the output of a relu
    forward: ReLU(x) pooled), then ReLU's backward: dx[i] *= [x[i] > 0] where gradients landed, [x[i] > 0] being
    [y_relu[p, q] > 0] for i = idx[p, q] (times 0 or 1 again, where windows share i, changes nothing).

    The zero pass is libc's memset (all-zero bits are +0.0): the loop gcc inlines for it in the AVX2 build
    is slower.
    """
    cdef Py_ssize_t t
    cdef floating zero = 0
    memset(dx, 0, g.H * g.W * sizeof(floating))
    if y_relu != NULL and g.KH <= g.SH and g.KW <= g.SW:  # one window per position: (0 + dy) * mask at once
        for t in range(g.OH * g.OW):  # a product, not a branch: which ones go is the data's
            dx[idx[t]] = (zero + dy[t]) * (1 if y_relu[t] > 0 else 0)
        return
    for t in range(g.OH * g.OW):
        dx[idx[t]] += dy[t]
    if y_relu != NULL:
        for t in range(g.OH * g.OW):
            dx[idx[t]] = dx[idx[t]] * (1 if y_relu[t] > 0 else 0)


cdef void _avg_plane(const floating* x, floating* y, const PoolGeom* g) noexcept nogil:
    """y[p, q] = (1 / (KH*KW)) Σ_{kh, kw} x[p*SH + kh, q*SW + kw]

    KW == SW == 2 or 3: the vector rows of cnn_pool_rows.h. Otherwise one sweep along the output row per window
    offset, in row-major order, so every output still sums 0, then its window in row-major order (the order of the
    vector rows); a loop over each window instead gets gathers from gcc in the AVX2 build (slower for double).
    """
    cdef Py_ssize_t p, q, kh, kw, OW = g.OW, SW = g.SW
    cdef floating cnt = <floating>(g.KH * g.KW)
    cdef floating acc
    cdef floating* yrow
    cdef const floating* xrow
    if _rows_ok(x, g):
        _rows_avg(x, y, g)
        return
    if OW == 1:  # global pooling: the same sums in a register, not each through memory
        for p in range(g.OH):
            acc = 0
            for kh in range(g.KH):
                xrow = x + (p * g.SH + kh) * g.W
                for kw in range(g.KW):
                    acc = acc + xrow[kw]
            y[p] = acc / cnt
        return
    for p in range(g.OH):
        yrow = y + p * OW
        for q in range(OW):
            yrow[q] = 0
        for kh in range(g.KH):
            for kw in range(g.KW):
                xrow = x + (p * g.SH + kh) * g.W + kw
                for q in range(OW):
                    yrow[q] = yrow[q] + xrow[q * SW]
        for q in range(OW):
            yrow[q] = yrow[q] / cnt


cdef void _avg_grad_plane(const floating* dy, floating* dx, const PoolGeom* g) noexcept nogil:
    """dx = 0; dx[p*SH + kh, q*SW + kw] += dy[p, q] / (KH*KW)

    Disjoint windows (one share per element, so the order is free): one sweep along the output row per window
    offset, as _avg_plane (a loop over each window is slower in the AVX2 build). Overlapping
    windows add the shares window by window, (p, q) in row-major order.
    """
    cdef Py_ssize_t t, p, q, kh, kw, OW = g.OW, SW = g.SW
    cdef floating cnt = <floating>(g.KH * g.KW)
    cdef floating share
    cdef floating* dxrow
    cdef const floating* dyrow
    for t in range(g.H * g.W):
        dx[t] = 0
    if g.KH <= g.SH and g.KW <= SW:
        for p in range(g.OH):
            dyrow = dy + p * OW
            for kh in range(g.KH):
                for kw in range(g.KW):
                    dxrow = dx + (p * g.SH + kh) * g.W + kw
                    for q in range(OW):
                        dxrow[q * SW] += dyrow[q] / cnt
        return
    for p in range(g.OH):
        for q in range(OW):
            share = dy[p * OW + q] / cnt
            for kh in range(g.KH):
                dxrow = dx + (p * g.SH + kh) * g.W + q * SW
                for kw in range(g.KW):
                    dxrow[kw] += share


# ---------------------------------------------------------------------------------------------------
# one thread's planes (_threads.pxd)
# ---------------------------------------------------------------------------------------------------

cdef void _forward_planes(const floating* x, floating* y, int* idx, bint want_idx, bint use_max, bint relu,
                          Py_ssize_t HW, Py_ssize_t P, const PoolGeom* g, Py_ssize_t lo,
                          Py_ssize_t hi) noexcept nogil:
    """_max_plane (use_max; of ReLU(x) with relu) or _avg_plane for planes [lo, hi); idx is a dummy unless
    want_idx"""
    cdef Py_ssize_t t
    for t in range(lo, hi):
        if use_max:
            _max_plane(x + t * HW, y + t * P, (idx + t * P) if want_idx else idx, want_idx, relu, g)
        else:
            _avg_plane(x + t * HW, y + t * P, g)


cdef void _backward_planes(const floating* dy, const int* idx, floating* dx, const floating* y_relu,
                           bint use_max, bint rows2, Py_ssize_t HW, Py_ssize_t P, const PoolGeom* g,
                           Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_max_grad_plane (use_max; y_relu NULL or a relu forward's output), _rows_avg_grad (rows2) or
    _avg_grad_plane for planes [lo, hi)"""
    cdef Py_ssize_t t
    for t in range(lo, hi):
        if use_max:
            _max_grad_plane(dy + t * P, idx + t * P, dx + t * HW, (y_relu + t * P) if y_relu != NULL else NULL,
                            g)
        elif rows2:
            _rows_avg_grad(dy + t * P, dx + t * HW, g)
        else:
            _avg_grad_plane(dy + t * P, dx + t * HW, g)


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext.pooling only)
# ---------------------------------------------------------------------------------------------------

def pool2d_forward(const floating[:, :, :, ::1] x,   # IN  (N, C, H, W)
                   floating[:, :, :, ::1] y,         # OUT (N, C, OH, OW)
                   int[::1] idx,                     # OUT (N*C*OH*OW,) int32 first-max positions, or empty
                   Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                   bint use_max, bint relu, int num_threads):
    """y[n, c, p, q] = max (use_max) or mean of the (KH, KW) window at (p*SH, q*SW); with max and a non-empty
    idx, idx = the flat H*W position of the window's first maximum. relu (max only): the max pooling of
    ReLU(x), bitwise a ReLU's output pooled, positions included."""
    cdef Py_ssize_t t, planes = x.shape[0] * x.shape[1], nparts = _nparts(planes, num_threads)
    cdef Py_ssize_t HW = x.shape[2] * x.shape[3], P = y.shape[2] * y.shape[3]
    cdef PoolGeom g = _pgeom(x.shape[2], x.shape[3], y.shape[2], y.shape[3], KH, KW, SH, SW)
    cdef bint want_idx = idx.shape[0] > 0
    cdef int dummy = 0
    if planes == 0 or P == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_planes(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &idx[0] if want_idx else &dummy, want_idx, use_max,
                            relu, HW, P, &g, 0, planes)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_planes(&x[0, 0, 0, 0], &y[0, 0, 0, 0], &idx[0] if want_idx else &dummy, want_idx, use_max,
                                relu, HW, P, &g, _part(planes, t, nparts), _part(planes, t + 1, nparts))


def pool2d_backward(const floating[:, :, :, ::1] dy,   # IN  (N, C, OH, OW), OH, OW >= 1
                    const int[::1] idx,                # IN  (N*C*OH*OW,) int32 from pool2d_forward (max only)
                    const floating[:, :, :, ::1] y_relu,  # IN  (N, C, OH, OW) the relu forward's y (relu), else empty
                    floating[:, :, :, ::1] dx,         # OUT (N, C, H, W)
                    Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                    bint use_max, bint relu, int num_threads):
    """dx[n, c] = dy[n, c] scattered to the first-max positions idx (use_max), or each dy[n, c, p, q] / (KH*KW)
    spread over its window; zeros where nothing lands. relu (max only; idx and y_relu from a relu forward): then
    the ReLU's backward, dx *= [x > 0], bitwise the two layers' backward one after the other. The average over
    disjoint 2-wide stride-2 windows (KH <= SH) writes dx once, by the vector rows; everything else zeroes the
    plane and adds (measured faster than writing each element once with a select: a zero pass is a memset)."""
    cdef Py_ssize_t t, planes = dx.shape[0] * dx.shape[1], nparts = _nparts(planes, num_threads)
    cdef Py_ssize_t HW = dx.shape[2] * dx.shape[3], P = dy.shape[2] * dy.shape[3]
    cdef PoolGeom g = _pgeom(dx.shape[2], dx.shape[3], dy.shape[2], dy.shape[3], KH, KW, SH, SW)
    cdef const floating* yr = NULL
    cdef bint rows2
    if planes == 0 or HW == 0:
        return
    if relu and use_max:  # after the return: an empty batch has no first element
        yr = &y_relu[0, 0, 0, 0]
    rows2 = KW == 2 and KH <= SH and _rows_ok(&dy[0, 0, 0, 0], &g)
    with nogil:
        if nparts == 1:
            _backward_planes(&dy[0, 0, 0, 0], &idx[0] if use_max else NULL, &dx[0, 0, 0, 0], yr, use_max, rows2,
                             HW, P, &g, 0, planes)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _backward_planes(&dy[0, 0, 0, 0], &idx[0] if use_max else NULL, &dx[0, 0, 0, 0], yr, use_max, rows2,
                                 HW, P, &g, _part(planes, t, nparts), _part(planes, t + 1, nparts))
