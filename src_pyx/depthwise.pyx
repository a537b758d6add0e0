# cython: language_level=3
"""Depthwise convolutions (groups == C_in): output channel j sees input channel j // m only (m = C_out / C_in),
with any stride, padding and dilation, and their input and kernel gradients.

cnn_ext/ops.py validates every argument and allocates outputs and scratch; each `def` takes typed memoryviews
and releases the GIL for the whole loop; these never raise. Each kernel tap adds w * (a strided run of one input
row) to one output row, over the columns whose input lies inside the image only: no product with padding, none
with the positions a dilation skips. The forward and the input gradient split their (sample, channel) planes over
threads (_threads.pxd); the kernel gradient splits output channels, each summing its samples in order, through
a per-thread row of column partials (vectorisable, summed in a fixed order): no result depends on the thread
count. With stride 1, the *_wide twins below run each tap as one long loop over zero-padded wide rows.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid

from _threads cimport _nparts, _part, _team


cdef struct DGeom:
    Py_ssize_t C_in, m, H, W, KH, KW, OH, OW, SH, SW, DH, DW, top, left


cdef inline void _span(Py_ssize_t O, Py_ssize_t S, Py_ssize_t off, Py_ssize_t L,
                       Py_ssize_t* o0, Py_ssize_t* o1) noexcept nogil:
    """[o0, o1): the outputs o in [0, O) whose input o * S + off lies in [0, L)."""
    cdef Py_ssize_t lo = 0, hi = 0
    if off < 0:
        lo = (-off + S - 1) // S
    if L - 1 - off >= 0:
        hi = min(O, (L - 1 - off) // S + 1)
    o0[0] = lo
    o1[0] = max(lo, hi)


cdef void _forward_plane(const floating* x, const floating* k, floating bias, floating* y,
                         const DGeom* g) noexcept nogil:
    """y (OH, OW) = bias + Σ_{a, c} k[a, c] x[p·SH + a·DH - top, q·SW + c·DW - left] over the real taps."""
    cdef Py_ssize_t a, c, p, q, p0, p1, q0, q1, SW = g.SW, W = g.W
    cdef floating w
    cdef const floating* xrow
    cdef floating* yrow
    for p in range(g.OH * g.OW):
        y[p] = bias
    for a in range(g.KH):
        _span(g.OH, g.SH, a * g.DH - g.top, g.H, &p0, &p1)
        for c in range(g.KW):
            _span(g.OW, SW, c * g.DW - g.left, W, &q0, &q1)
            w = k[a * g.KW + c]
            for p in range(p0, p1):
                xrow = x + (p * g.SH + a * g.DH - g.top) * W + c * g.DW - g.left
                yrow = y + p * g.OW
                if SW == 1:
                    for q in range(q0, q1):
                        yrow[q] += w * xrow[q]
                else:
                    for q in range(q0, q1):
                        yrow[q] += w * xrow[q * SW]


cdef void _input_gradient_plane(const floating* dy, const floating* k, floating* dx,
                                const DGeom* g) noexcept nogil:
    """dx (H, W) of one input channel = Σ over its m output channels (dy: m planes, k: m kernels) of the forward's
    transpose, over the real taps."""
    cdef Py_ssize_t jj, a, c, p, q, p0, p1, q0, q1, SW = g.SW, W = g.W
    cdef floating w
    cdef const floating* dyrow
    cdef floating* dxrow
    for p in range(g.H * W):
        dx[p] = 0
    for jj in range(g.m):
        for a in range(g.KH):
            _span(g.OH, g.SH, a * g.DH - g.top, g.H, &p0, &p1)
            for c in range(g.KW):
                _span(g.OW, SW, c * g.DW - g.left, W, &q0, &q1)
                w = k[(jj * g.KH + a) * g.KW + c]
                for p in range(p0, p1):
                    dxrow = dx + (p * g.SH + a * g.DH - g.top) * W + c * g.DW - g.left
                    dyrow = dy + (jj * g.OH + p) * g.OW
                    if SW == 1:
                        for q in range(q0, q1):
                            dxrow[q] += w * dyrow[q]
                    else:
                        for q in range(q0, q1):
                            dxrow[q * SW] += w * dyrow[q]


cdef void _kernel_gradient_channel(const floating* dy, const floating* x, floating* dk, floating* part,
                                   Py_ssize_t N, Py_ssize_t C_out, const DGeom* g) noexcept nogil:
    """dk (KH, KW) of one output channel = (1/N) Σ_{n, p, q} dy[n, p, q] x[n, p·SH + a·DH - top, ...]; dy and x
    point at the channel's plane of sample 0 (planes C_out and C_in apart); part holds OW column partials."""
    cdef Py_ssize_t n, a, c, p, q, p0, p1, q0, q1, SW = g.SW, W = g.W
    cdef Py_ssize_t dy_step = C_out * g.OH * g.OW, x_step = g.C_in * g.H * W
    cdef floating acc
    cdef const floating* xrow
    cdef const floating* dyrow
    for a in range(g.KH):
        _span(g.OH, g.SH, a * g.DH - g.top, g.H, &p0, &p1)
        for c in range(g.KW):
            _span(g.OW, SW, c * g.DW - g.left, W, &q0, &q1)
            for q in range(g.OW):
                part[q] = 0
            for n in range(N):
                for p in range(p0, p1):
                    xrow = x + n * x_step + (p * g.SH + a * g.DH - g.top) * W + c * g.DW - g.left
                    dyrow = dy + n * dy_step + p * g.OW
                    if SW == 1:
                        for q in range(q0, q1):
                            part[q] += dyrow[q] * xrow[q]
                    else:
                        for q in range(q0, q1):
                            part[q] += dyrow[q] * xrow[q * SW]
            acc = 0
            for q in range(q0, q1):
                acc += part[q]
            dk[a * g.KW + c] = acc / N if N > 0 else 0


# ---------------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------------

cdef DGeom _dgeom(Py_ssize_t C_in, Py_ssize_t C_out, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW,
                  Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW,
                  Py_ssize_t top, Py_ssize_t left) noexcept nogil:
    cdef DGeom g
    g.C_in, g.m, g.H, g.W, g.KH, g.KW, g.OH, g.OW = C_in, C_out // C_in, H, W, KH, KW, OH, OW
    g.SH, g.SW, g.DH, g.DW, g.top, g.left = SH, SW, DH, DW, top, left
    return g


cdef void _forward_planes(const floating* x, const floating* k, const floating* b, floating* y,
                          Py_ssize_t C_out, const DGeom* g, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Planes [first, last) of y, plane t = (sample t // C_out, channel t % C_out)."""
    cdef Py_ssize_t t, n, j
    for t in range(first, last):
        n, j = t // C_out, t % C_out
        _forward_plane(x + (n * g.C_in + j // g.m) * g.H * g.W, k + j * g.KH * g.KW, b[j],
                       y + t * g.OH * g.OW, g)


def depthwise_forward(const floating[:, :, :, ::1] x,   # IN  (N, C_in, H, W)
                      const floating[:, :, :, ::1] k,   # IN  (C_out, 1, KH, KW), C_out = m * C_in
                      const floating[::1] b,            # IN  (C_out,)
                      floating[:, :, :, ::1] y,         # OUT (N, C_out, OH, OW)
                      Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t top,
                      Py_ssize_t left, Py_ssize_t num_threads):
    """y[n, j] = b[j] + xcorr(x[n, j // m], k[j, 0]) with stride, dilation and padding (top, left); N >= 1."""
    cdef DGeom g = _dgeom(x.shape[1], k.shape[0], x.shape[2], x.shape[3], k.shape[2], k.shape[3], y.shape[2],
                          y.shape[3], SH, SW, DH, DW, top, left)
    cdef Py_ssize_t n = y.shape[0] * y.shape[1], nparts = _nparts(n, num_threads), t
    with nogil:
        if nparts == 1:
            _forward_planes(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], k.shape[0], &g, 0, n)
        else:
            for t in prange(nparts, schedule="dynamic", num_threads=_team(nparts, num_threads)):
                _forward_planes(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], k.shape[0], &g,
                                _part(n, t, nparts), _part(n, t + 1, nparts))


cdef void _input_gradient_planes(const floating* dy, const floating* k, floating* dx, const DGeom* g,
                                 Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    """Planes [first, last) of dx, plane t = (sample t // C_in, channel t % C_in)."""
    cdef Py_ssize_t t, i
    for t in range(first, last):
        i = t % g.C_in
        _input_gradient_plane(dy + t * g.m * g.OH * g.OW, k + i * g.m * g.KH * g.KW, dx + t * g.H * g.W, g)


def depthwise_input_gradient(const floating[:, :, :, ::1] dy,  # IN  (N, C_out, OH, OW)
                             const floating[:, :, :, ::1] k,   # IN  (C_out, 1, KH, KW)
                             floating[:, :, :, ::1] dx,        # OUT (N, C_in, H, W)
                             Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t top,
                             Py_ssize_t left, Py_ssize_t num_threads):
    """dx[n, i] = Σ_{j // m == i} the forward's transpose of dy[n, j] with k[j, 0]; N >= 1, H * W >= 1."""
    cdef DGeom g = _dgeom(dx.shape[1], k.shape[0], dx.shape[2], dx.shape[3], k.shape[2], k.shape[3], dy.shape[2],
                          dy.shape[3], SH, SW, DH, DW, top, left)
    cdef Py_ssize_t n = dx.shape[0] * dx.shape[1], nparts = _nparts(n, num_threads), t
    with nogil:
        if nparts == 1:
            _input_gradient_planes(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &g, 0, n)
        else:
            for t in prange(nparts, schedule="dynamic", num_threads=_team(nparts, num_threads)):
                _input_gradient_planes(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &g,
                                       _part(n, t, nparts), _part(n, t + 1, nparts))


cdef void _kernel_gradient_channels(const floating* dy, const floating* x, floating* dk, floating* part,
                                    Py_ssize_t N, Py_ssize_t C_out, const DGeom* g, Py_ssize_t first,
                                    Py_ssize_t last) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(first, last):
        _kernel_gradient_channel(dy + j * g.OH * g.OW, x + (j // g.m) * g.H * g.W, dk + j * g.KH * g.KW, part,
                                 N, C_out, g)


def depthwise_kernel_gradient(const floating[:, :, :, ::1] dy,  # IN  (N, C_out, OH, OW)
                              const floating[:, :, :, ::1] x,   # IN  (N, C_in, H, W)
                              floating[:, :, :, ::1] dk,        # OUT (C_out, 1, KH, KW)
                              floating[:, ::1] part,            # scratch (threads, OW)
                              Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t top,
                              Py_ssize_t left, Py_ssize_t num_threads):
    """dk[j, 0] = (1/N) Σ_n xcorr(x[n, j // m], dy[n, j]) at the dilated taps; N >= 1, H * W >= 1."""
    cdef DGeom g = _dgeom(x.shape[1], dy.shape[1], x.shape[2], x.shape[3], dk.shape[2], dk.shape[3], dy.shape[2],
                          dy.shape[3], SH, SW, DH, DW, top, left)
    cdef Py_ssize_t N = x.shape[0], C_out = dy.shape[1], nparts = _nparts(C_out, num_threads), t
    with nogil:
        if nparts == 1:
            _kernel_gradient_channels(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &dk[0, 0, 0, 0], &part[0, 0], N, C_out, &g,
                                      0, C_out)
        else:
            for t in prange(nparts, schedule="dynamic", num_threads=_team(nparts, num_threads)):
                _kernel_gradient_channels(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &dk[0, 0, 0, 0], &part[threadid(), 0],
                                          N, C_out, &g, _part(C_out, t, nparts), _part(C_out, t + 1, nparts))


# ---------------------------------------------------------------------------------------------------
# Stride 1: wide rows. Each plane is copied zero-padded into a per-thread slab of Hp x Wp; a tap is then one
# long loop over the flat index of the output rows at the slab's pitch Wp (L = (OH - 1) * Wp + OW entries;
# the Wp - OW columns between rows are computed and dropped). The callers take these only when no product with
# padding or with those columns can meet an inf or NaN (finite kernels; finite x and dE_dY for dK).
# ---------------------------------------------------------------------------------------------------

cdef void _pad_plane(const floating* x, floating* xpad, const DGeom* g, Py_ssize_t Hp,
                     Py_ssize_t Wp) noexcept nogil:
    """xpad (Hp, Wp) = x (H, W) at (top, left) in zeros."""
    cdef Py_ssize_t i, h, w
    for i in range(Hp * Wp):
        xpad[i] = 0
    for h in range(g.H):
        for w in range(g.W):
            xpad[(h + g.top) * Wp + g.left + w] = x[h * g.W + w]


cdef void _wide_rows(const floating* dy, floating* dyw, const DGeom* g, Py_ssize_t Wp) noexcept nogil:
    """dyw (L,) = the rows of dy (OH, OW) at pitch Wp, zeros between them."""
    cdef Py_ssize_t p, q
    for p in range(g.OH):
        for q in range(g.OW):
            dyw[p * Wp + q] = dy[p * g.OW + q]
        if p + 1 < g.OH:
            for q in range(g.OW, Wp):
                dyw[p * Wp + q] = 0


cdef void _forward_planes_wide(const floating* x, const floating* k, const floating* b, floating* y,
                               floating* slab, Py_ssize_t C_out, const DGeom* g, Py_ssize_t first,
                               Py_ssize_t last) noexcept nogil:
    cdef Py_ssize_t t, n, j, a, c, i, p, q, off
    cdef Py_ssize_t Hp = g.OH + (g.KH - 1) * g.DH, Wp = g.OW + (g.KW - 1) * g.DW
    cdef Py_ssize_t L = (g.OH - 1) * Wp + g.OW
    cdef floating w
    cdef floating* xpad = slab
    cdef floating* yw = slab + Hp * Wp
    cdef const floating* xs
    cdef floating* yp
    for t in range(first, last):
        n, j = t // C_out, t % C_out
        _pad_plane(x + (n * g.C_in + j // g.m) * g.H * g.W, xpad, g, Hp, Wp)
        for i in range(L):
            yw[i] = b[j]
        for a in range(g.KH):
            for c in range(g.KW):
                w = k[(j * g.KH + a) * g.KW + c]
                xs = xpad + a * g.DH * Wp + c * g.DW
                for i in range(L):
                    yw[i] += w * xs[i]
        yp = y + t * g.OH * g.OW
        for p in range(g.OH):
            for q in range(g.OW):
                yp[p * g.OW + q] = yw[p * Wp + q]


def depthwise_forward_wide(const floating[:, :, :, ::1] x,   # IN  (N, C_in, H, W)
                           const floating[:, :, :, ::1] k,   # IN  (C_out, 1, KH, KW), finite
                           const floating[::1] b,            # IN  (C_out,)
                           floating[:, :, :, ::1] y,         # OUT (N, C_out, OH, OW), stride 1
                           floating[:, ::1] slab,            # TMP (threads, Hp*Wp + L)
                           Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t top, Py_ssize_t left, Py_ssize_t num_threads):
    """depthwise_forward with stride 1, on wide rows; N >= 1."""
    cdef DGeom g = _dgeom(x.shape[1], k.shape[0], x.shape[2], x.shape[3], k.shape[2], k.shape[3], y.shape[2],
                          y.shape[3], 1, 1, DH, DW, top, left)
    cdef Py_ssize_t n = y.shape[0] * y.shape[1], nparts = _nparts(n, num_threads), t
    with nogil:
        if nparts == 1:
            _forward_planes_wide(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &slab[0, 0], k.shape[0],
                                 &g, 0, n)
        else:
            for t in prange(nparts, schedule="dynamic", num_threads=_team(nparts, num_threads)):
                _forward_planes_wide(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &slab[threadid(), 0],
                                     k.shape[0], &g, _part(n, t, nparts), _part(n, t + 1, nparts))


cdef void _input_gradient_planes_wide(const floating* dy, const floating* k, floating* dx, floating* slab,
                                      const DGeom* g, Py_ssize_t first, Py_ssize_t last) noexcept nogil:
    cdef Py_ssize_t t, i, jj, a, c, h, x_
    cdef Py_ssize_t Hp = g.OH + (g.KH - 1) * g.DH, Wp = g.OW + (g.KW - 1) * g.DW
    cdef Py_ssize_t L = (g.OH - 1) * Wp + g.OW
    cdef floating w
    cdef floating* dxp = slab
    cdef floating* dyw = slab + Hp * Wp
    cdef floating* d
    cdef const floating* kj
    for t in range(first, last):
        for i in range(Hp * Wp):
            dxp[i] = 0
        for jj in range(g.m):
            _wide_rows(dy + (t * g.m + jj) * g.OH * g.OW, dyw, g, Wp)
            kj = k + ((t % g.C_in) * g.m + jj) * g.KH * g.KW
            for a in range(g.KH):
                for c in range(g.KW):
                    w = kj[a * g.KW + c]
                    d = dxp + a * g.DH * Wp + c * g.DW
                    for i in range(L):
                        d[i] += w * dyw[i]
        for h in range(g.H):
            for x_ in range(g.W):
                dx[t * g.H * g.W + h * g.W + x_] = dxp[(h + g.top) * Wp + g.left + x_]


def depthwise_input_gradient_wide(const floating[:, :, :, ::1] dy,  # IN  (N, C_out, OH, OW)
                                  const floating[:, :, :, ::1] k,   # IN  (C_out, 1, KH, KW), finite
                                  floating[:, :, :, ::1] dx,        # OUT (N, C_in, H, W), stride 1
                                  floating[:, ::1] slab,            # TMP (threads, Hp*Wp + L)
                                  Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t top, Py_ssize_t left,
                                  Py_ssize_t num_threads):
    """depthwise_input_gradient with stride 1, on wide rows; N >= 1, H * W >= 1."""
    cdef DGeom g = _dgeom(dx.shape[1], k.shape[0], dx.shape[2], dx.shape[3], k.shape[2], k.shape[3], dy.shape[2],
                          dy.shape[3], 1, 1, DH, DW, top, left)
    cdef Py_ssize_t n = dx.shape[0] * dx.shape[1], nparts = _nparts(n, num_threads), t
    with nogil:
        if nparts == 1:
            _input_gradient_planes_wide(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &slab[0, 0], &g, 0, n)
        else:
            for t in prange(nparts, schedule="dynamic", num_threads=_team(nparts, num_threads)):
                _input_gradient_planes_wide(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &slab[threadid(), 0],
                                            &g, _part(n, t, nparts), _part(n, t + 1, nparts))


cdef void _kernel_gradient_channels_wide(const floating* dy, const floating* x, floating* dk, floating* slab,
                                         Py_ssize_t N, Py_ssize_t C_out, const DGeom* g, Py_ssize_t first,
                                         Py_ssize_t last) noexcept nogil:
    """dk of channels [first, last): per tap, partials over the flat index summed over the samples in order,
    then summed in order."""
    cdef Py_ssize_t j, n, a, c, i, tap, T = g.KH * g.KW
    cdef Py_ssize_t Hp = g.OH + (g.KH - 1) * g.DH, Wp = g.OW + (g.KW - 1) * g.DW
    cdef Py_ssize_t L = (g.OH - 1) * Wp + g.OW
    cdef floating acc
    cdef floating* xpad = slab
    cdef floating* dyw = slab + Hp * Wp
    cdef floating* part = dyw + L
    cdef floating* pt
    cdef const floating* xs
    for j in range(first, last):
        for i in range(T * L):
            part[i] = 0
        for n in range(N):
            _pad_plane(x + (n * g.C_in + j // g.m) * g.H * g.W, xpad, g, Hp, Wp)
            _wide_rows(dy + (n * C_out + j) * g.OH * g.OW, dyw, g, Wp)
            for a in range(g.KH):
                for c in range(g.KW):
                    pt = part + (a * g.KW + c) * L
                    xs = xpad + a * g.DH * Wp + c * g.DW
                    for i in range(L):
                        pt[i] += dyw[i] * xs[i]
        for tap in range(T):
            acc = 0
            for i in range(L):
                acc += part[tap * L + i]
            dk[j * T + tap] = acc / N if N > 0 else 0


def depthwise_kernel_gradient_wide(const floating[:, :, :, ::1] dy,  # IN  (N, C_out, OH, OW), finite
                                   const floating[:, :, :, ::1] x,   # IN  (N, C_in, H, W), finite
                                   floating[:, :, :, ::1] dk,        # OUT (C_out, 1, KH, KW), stride 1
                                   floating[:, ::1] slab,            # TMP (threads, Hp*Wp + L + KH*KW*L)
                                   Py_ssize_t DH, Py_ssize_t DW, Py_ssize_t top, Py_ssize_t left,
                                   Py_ssize_t num_threads):
    """depthwise_kernel_gradient with stride 1, on wide rows; N >= 1, H * W >= 1."""
    cdef DGeom g = _dgeom(x.shape[1], dy.shape[1], x.shape[2], x.shape[3], dk.shape[2], dk.shape[3], dy.shape[2],
                          dy.shape[3], 1, 1, DH, DW, top, left)
    cdef Py_ssize_t N = x.shape[0], C_out = dy.shape[1], nparts = _nparts(C_out, num_threads), t
    with nogil:
        if nparts == 1:
            _kernel_gradient_channels_wide(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &dk[0, 0, 0, 0], &slab[0, 0], N, C_out,
                                           &g, 0, C_out)
        else:
            for t in prange(nparts, schedule="dynamic", num_threads=_team(nparts, num_threads)):
                _kernel_gradient_channels_wide(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &dk[0, 0, 0, 0],
                                               &slab[threadid(), 0], N, C_out, &g, _part(C_out, t, nparts),
                                               _part(C_out, t + 1, nparts))
