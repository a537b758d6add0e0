# cython: language_level=3
"""Plain direct convolution loops for small layers (stride 1): the row-tiled forward, its zero-padded variant,
the scatter-loop input gradient and the row-loop kernel gradient.

cnn_ext/ops.py validates every argument and allocates outputs and scratch; each `def` takes typed memoryviews
and releases the GIL for the whole loop. conv2d_forward_rows_padded raises ValueError when its slab scratch is
too small (a check before any work); the others never raise. The forward runs register tiles of output
channels x SIMD vectors of one output row (cnn_row_tile.h); rows narrower than one vector, the input gradient
and the kernel gradient run plain row loops. Samples (or fixed chunks of samples, for the kernel gradient,
summed in a fixed order) are split over threads (_threads.pxd): no result depends on the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid

from _geom cimport Geom, _geom, _copy_padded, _zero_slab, _check_slabs
from _threads cimport _chunk_range, _nparts, _part, _team

cdef extern from "cnn_row_tile.h":
    enum: CNN_EXT_JB          # channels per tile (the switch covers nj = 1..4)
    enum: CNN_EXT_NV          # vectors of columns per tile (nv = 1, 2, 3)
    enum: CNN_EXT_LANES_F     # float lanes per vector of this build (8 AVX2, 4 SSE2, 1 without GNU vectors)
    enum: CNN_EXT_LANES_D
    void _forward_tile_f "cnn_ext_forward_tile_f"(
        const float* x, const float* k, const float* b, float* y, Py_ssize_t C_in, Py_ssize_t H,
        Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
        Py_ssize_t j0, Py_ssize_t p, Py_ssize_t np, Py_ssize_t q0, Py_ssize_t nj, Py_ssize_t nv) noexcept nogil
    void _forward_tile_d "cnn_ext_forward_tile_d"(
        const double* x, const double* k, const double* b, double* y, Py_ssize_t C_in, Py_ssize_t H,
        Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
        Py_ssize_t j0, Py_ssize_t p, Py_ssize_t np, Py_ssize_t q0, Py_ssize_t nj, Py_ssize_t nv) noexcept nogil


# ---------------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------------

cdef inline void _forward_tile(const floating* x, const floating* k, const floating* b, floating* y,
                               const Geom* g, Py_ssize_t j0, Py_ssize_t p, Py_ssize_t np, Py_ssize_t q0,
                               Py_ssize_t nj, Py_ssize_t nv) noexcept nogil:
    """y[j0:j0+nj, p:p+np, q0:q0+nv*lanes] = b + Σ_{i, kh, kw} k[j, i, kh, kw] x[i, p + kh, q0 + q + kw]"""
    if floating is float:
        _forward_tile_f(x, k, b, y, g.C_in, g.H, g.W, g.KH, g.KW, g.OH, g.OW, j0, p, np, q0, nj, nv)
    else:
        _forward_tile_d(x, k, b, y, g.C_in, g.H, g.W, g.KH, g.KW, g.OH, g.OW, j0, p, np, q0, nj, nv)


cdef void _forward_direct_one(const floating* x, const floating* k, const floating* b, floating* y,
                              const Geom* g) noexcept nogil:
    """y[j] = b[j] + Σ_i xcorr_valid(x[i], k[j, i])

    Register tiles of JB channels x QB = nv SIMD vectors of columns of one output row (cnn_row_tile.h;
    nv = 1 for rows narrower than 2 vectors, 3 for one input channel on rows of 3 vectors or more).
    The last tile of a row, and the last channel block, overlap the previous one instead of running a
    narrower loop: they recompute, with the same operations in the same order, values already stored.
    Fewer than JB channels: one tile of C_out channels. Rows narrower than one vector: the row loops below.
    The tiles go strip by strip (QB columns, all rows, one call and one switch per strip; consecutive tiles
    share KH - 1 input rows) rather than row by row, which is faster.
    """
    cdef Py_ssize_t lanes = CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D
    cdef Py_ssize_t i, j, j0, nj, nv, QB, p, q, q0, kh, kw
    cdef Py_ssize_t OH = g.OH, OW = g.OW, KH = g.KH, KW = g.KW, W = g.W, C_out = g.C_out
    cdef floating w
    cdef floating* yrow
    cdef const floating* xrow
    cdef const floating* kji
    if OW >= lanes:
        # 3 vectors (12 accumulators) only for one input channel: its reduction (KH*KW steps) is too short to
        # hide the tile's setup and the FMA latency with 8; the other layers keep the measured 2
        nv = 3 if g.C_in == 1 and OW >= 3 * lanes else 2 if OW >= 2 * lanes else 1
        QB = nv * lanes
        j0 = 0
        while j0 < C_out:
            nj = min(<Py_ssize_t>CNN_EXT_JB, C_out)
            j0 = min(j0, C_out - nj)
            q0 = 0
            while q0 < OW:  # a strip of columns down all the rows per call (see the docstring)
                q0 = min(q0, OW - QB)
                _forward_tile(x, k, b, y, g, j0, 0, OH, q0, nj, nv)
                q0 += QB
            j0 += nj
        return
    for j in range(C_out):
        for p in range(OH * OW):
            y[j * OH * OW + p] = b[j]
        for i in range(g.C_in):
            kji = k + (j * g.C_in + i) * KH * KW
            for p in range(OH):
                yrow = y + (j * OH + p) * OW
                for kh in range(KH):
                    xrow = x + (i * g.H + p + kh) * W
                    for kw in range(KW):
                        w = kji[kh * KW + kw]
                        for q in range(OW):
                            yrow[q] += w * xrow[q + kw]


cdef void _forward_rows_padded_one(const floating* x, const floating* k, const floating* b, floating* y,
                                   floating* xp, const Geom* g, const Geom* gp) noexcept nogil:
    """y = the row-tiled forward of x zero-padded into xp (zero outside the interior, which is all this writes)"""
    _copy_padded(x, xp, g, gp.H * gp.W, gp.W)
    _forward_direct_one(xp, k, b, y, gp)


cdef void _kgrad_direct_one(const floating* x, const floating* dy, floating* acc,
                            const Geom* g) noexcept nogil:
    """acc[j, i, kh, kw, q] += Σ_p x[i, p + kh, q + kw] dy[j, p, q]  (summed over q later)"""
    cdef Py_ssize_t i, j, p, q, kh, kw
    cdef Py_ssize_t OH = g.OH, OW = g.OW, KH = g.KH, KW = g.KW, W = g.W
    cdef floating* a
    cdef const floating* xrow
    cdef const floating* dyrow
    for j in range(g.C_out):
        for i in range(g.C_in):
            for p in range(OH):
                dyrow = dy + (j * OH + p) * OW
                for kh in range(KH):
                    xrow = x + (i * g.H + p + kh) * W
                    for kw in range(KW):
                        a = acc + (((j * g.C_in + i) * KH + kh) * KW + kw) * OW
                        for q in range(OW):
                            a[q] += xrow[q + kw] * dyrow[q]


cdef void _igrad_direct_one(const floating* dy, const floating* k, floating* dx,
                            const Geom* g) noexcept nogil:
    """dx[i] = Σ_j conv_full(dy[j], k[j, i])  as a scatter: dx[i, p + kh, q + kw] += k[j, i, kh, kw] dy[j, p, q]"""
    cdef Py_ssize_t i, j, p, q, kh, kw
    cdef Py_ssize_t OH = g.OH, OW = g.OW, KH = g.KH, KW = g.KW, W = g.W
    cdef floating w
    cdef floating* dxrow
    cdef const floating* dyrow
    cdef const floating* kji
    for p in range(g.C_in * g.H * W):
        dx[p] = 0
    for j in range(g.C_out):
        for i in range(g.C_in):
            kji = k + (j * g.C_in + i) * KH * KW
            for p in range(OH):
                dyrow = dy + (j * OH + p) * OW
                for kh in range(KH):
                    dxrow = dx + (i * g.H + p + kh) * W
                    for kw in range(KW):
                        w = kji[kh * KW + kw]
                        for q in range(OW):
                            dxrow[q + kw] += w * dyrow[q]


# ---------------------------------------------------------------------------------------------------
# One thread's part of a call (_threads.pxd)
# ---------------------------------------------------------------------------------------------------

cdef void _forward_rows_part(const floating* x, const floating* k, const floating* b, floating* y,
                             const Geom* g, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_forward_direct_one for samples [lo, hi)"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    for n in range(lo, hi):
        _forward_direct_one(x + n * xs, k, b, y + n * ys, g)


cdef void _forward_rows_padded_part(const floating* x, const floating* k, const floating* b, floating* y,
                                    floating* xp, Py_ssize_t slab, const Geom* g, const Geom* gp, Py_ssize_t lo,
                                    Py_ssize_t hi) noexcept nogil:
    """_forward_rows_padded_one for samples [lo, hi), through this part's slab xp (slab elements), zeroed first"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    _zero_slab(xp, slab)
    for n in range(lo, hi):
        _forward_rows_padded_one(x + n * xs, k, b, y + n * ys, xp, g, gp)


cdef void _igrad_scatter_part(const floating* dy, const floating* k, floating* dx, const Geom* g, Py_ssize_t lo,
                              Py_ssize_t hi) noexcept nogil:
    """_igrad_direct_one for samples [lo, hi)"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    for n in range(lo, hi):
        _igrad_direct_one(dy + n * ys, k, dx + n * xs, g)


cdef void _kgrad_rows_chunks(const floating* dy, const floating* x, floating* partial, Py_ssize_t L,
                             Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nchunk, Py_ssize_t N,
                             const Geom* g) noexcept nogil:
    """partial[c] = Σ_{n in chunk c} the per-column kernel-gradient terms of sample n (in sample order),
    for c in [c0, c1)"""
    cdef Py_ssize_t c, n, t, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    cdef floating* part
    for c in range(c0, c1):
        part = partial + c * L
        for t in range(L):
            part[t] = 0
        for n in range((c * N) // nchunk, ((c + 1) * N) // nchunk):
            _kgrad_direct_one(x + n * xs, dy + n * ys, part, g)


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext.ops only)
# ---------------------------------------------------------------------------------------------------

def conv2d_forward_rows(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                        const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                        const floating[::1] b,               # IN  (C_out,)
                        floating[:, :, :, ::1] y,            # OUT (N, C_out, H-KH+1, W-KW+1)
                        int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr_valid(x[n, i], k[j, i]) (stride 1, no padding)."""
    cdef Py_ssize_t t, N = x.shape[0], nparts = _nparts(N, num_threads)
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], 1, 1, 0, 0)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_rows_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &g, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_rows_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &g,
                                   _part(N, t, nparts), _part(N, t + 1, nparts))


def conv2d_forward_rows_padded(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                               const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                               const floating[::1] b,               # IN  (C_out,)
                               floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                               floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp), any values
                               Py_ssize_t PT, Py_ssize_t PL, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1): the row tiles of the
    unpadded forward on a zero-padded copy of each sample (a slab per thread, zeroed here by its thread).
    ValueError if xpad has too few rows or too short ones."""
    cdef Py_ssize_t t, N = x.shape[0], KH = k.shape[2], KW = k.shape[3], nparts = _nparts(N, num_threads)
    cdef Py_ssize_t Hp = y.shape[2] + KH - 1, Wp = y.shape[3] + KW - 1
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], KH, KW, y.shape[2], y.shape[3],
                        1, 1, PT, PL)
    # the tiles see the padded sample as an unpadded input
    cdef Geom gp = _geom(x.shape[1], Hp, Wp, k.shape[0], KH, KW, y.shape[2], y.shape[3], 1, 1, 0, 0)
    _check_slabs(xpad.shape[0], xpad.shape[1], num_threads, g.C_in, Hp, Wp)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_rows_padded_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[0, 0],
                                      xpad.shape[1], &g, &gp, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_rows_padded_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[threadid(), 0],
                                          xpad.shape[1], &g, &gp, _part(N, t, nparts), _part(N, t + 1, nparts))


def conv2d_input_gradient_scatter(const floating[:, :, :, ::1] dy,    # IN  (N, C_out, OH, OW)
                                  const floating[:, :, :, ::1] k,     # IN  (C_out, C_in, KH, KW)
                                  floating[:, :, :, ::1] dx,          # OUT (N, C_in, OH+KH-1, OW+KW-1)
                                  int num_threads):
    """dx[n, i] = Σ_j conv_full(dy[n, j], k[j, i]) (stride 1, no padding) by scatter loops: they need no setup,
    which only pays on tiny layers (elsewhere the input gradient is a forward on padded dy, see cnn_ext.ops)."""
    cdef Py_ssize_t t, N = dy.shape[0], nparts = _nparts(N, num_threads)
    cdef Geom g = _geom(dx.shape[1], dx.shape[2], dx.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        dy.shape[2], dy.shape[3], 1, 1, 0, 0)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _igrad_scatter_part(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &g, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _igrad_scatter_part(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &g,
                                    _part(N, t, nparts), _part(N, t + 1, nparts))


def conv2d_kernel_gradient_rows(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                                const floating[:, :, :, ::1] x,      # IN  (N, C_in, OH+KH-1, OW+KW-1)
                                floating[:, :, :, ::1] dk,           # OUT (C_out, C_in, KH, KW)
                                floating[:, ::1] partial,            # TMP (nchunk, C_out*C_in*KH*KW*OW)
                                int num_threads, Py_ssize_t c_lo=0, Py_ssize_t c_hi=-1):
    """dk[j, i] = (1/N) Σ_n xcorr_valid(x[n, i], dy[n, j]) (stride 1, no padding) by row loops keeping a partial
    sum per output column; chunks of samples and then the columns summed in a fixed order. Only chunks
    [c_lo, c_hi) are computed (c_hi = -1: all); dk is written by the call that reaches the last chunk."""
    cdef Py_ssize_t N = x.shape[0], nchunk = partial.shape[0], c, t, q
    c_hi = _chunk_range(c_lo, c_hi, nchunk)
    cdef Py_ssize_t nparts = _nparts(c_hi - c_lo, num_threads)
    cdef Py_ssize_t KK = dk.shape[0] * dk.shape[1] * dk.shape[2] * dk.shape[3]
    cdef Py_ssize_t OW = dy.shape[3], L = partial.shape[1]
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], dk.shape[0], dk.shape[2], dk.shape[3],
                        dy.shape[2], dy.shape[3], 1, 1, 0, 0)
    cdef floating s
    cdef floating* out = &dk[0, 0, 0, 0]
    cdef floating inv_n
    if N == 0:
        for t in range(KK):
            out[t] = 0
        return
    with nogil:
        if nparts == 1:
            _kgrad_rows_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], L, c_lo, c_hi, nchunk, N, &g)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _kgrad_rows_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], L,
                                   c_lo + _part(c_hi - c_lo, t, nparts), c_lo + _part(c_hi - c_lo, t + 1, nparts),
                                   nchunk, N, &g)
        if c_hi == nchunk:
            inv_n = (<floating>1) / N
            for t in range(KK):
                out[t] = 0
            for c in range(nchunk):
                for t in range(KK):
                    s = 0
                    for q in range(OW):
                        s = s + partial[c, t * OW + q]
                    out[t] += s
            for t in range(KK):
                out[t] *= inv_n
