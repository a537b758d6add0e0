# cython: language_level=3
"""Register-tiled kernel gradient (stride 1, any zero padding) and the bias gradient.

cnn_ext/ops.py validates every argument, picks the layout and allocates outputs and scratch; each `def` takes
typed memoryviews and releases the GIL for the whole loop. conv2d_kernel_gradient_wide raises ValueError when
its scratch is too small or the output-rows layout gets rows of a partial vector (checks before any work), and
returns whether dK is finite; conv2d_bias_gradient never raises. The dK tiles (cnn_kgrad_tile.h) keep channels x
taps of vector accumulators over a whole plane; the bias sums run 8 vector chains per plane (cnn_bias_sum.h).
Both reduce over the batch through fixed chunks (dK) or fixed lanes (dB) summed in a fixed order, the work split
over threads by _threads.pxd: no result depends on the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy

from _geom cimport Geom, _geom, _all_finite
from _threads cimport _chunk_range, _nparts, _part, _team

cdef extern from "cnn_simd.h":
    enum: CNN_EXT_LANES_F     # float lanes per vector of this build (8 AVX2, 4 SSE2, 1 without GNU vectors)
    enum: CNN_EXT_LANES_D

cdef extern from "cnn_kgrad_tile.h":
    enum: CNN_EXT_KJ          # channels per dK tile (the switch covers nj = 1..4)
    enum: CNN_EXT_KT          # taps per dK tile (nt = 1..3)
    void _kgrad_tile_f "cnn_ext_kgrad_tile_f"(
        const float* dyw, Py_ssize_t dstride, const float* xr, Py_ssize_t a0, Py_ssize_t b0, Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B,
        Py_ssize_t nvec, Py_ssize_t nrow, Py_ssize_t drow, Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy,
        Py_ssize_t sx, float* vacc, int init, Py_ssize_t nj, Py_ssize_t nt) noexcept nogil
    void _kgrad_tile_d "cnn_ext_kgrad_tile_d"(
        const double* dyw, Py_ssize_t dstride, const double* xr, Py_ssize_t a0, Py_ssize_t b0, Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B,
        Py_ssize_t nvec, Py_ssize_t nrow, Py_ssize_t drow, Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy,
        Py_ssize_t sx, double* vacc, int init, Py_ssize_t nj, Py_ssize_t nt) noexcept nogil
    void _lane_sums_f "cnn_ext_lane_sums_f"(const float* vacc, float* out, Py_ssize_t nrow, Py_ssize_t nj,
                                            Py_ssize_t ostride) noexcept nogil
    void _lane_sums_d "cnn_ext_lane_sums_d"(const double* vacc, double* out, Py_ssize_t nrow, Py_ssize_t nj,
                                            Py_ssize_t ostride) noexcept nogil

cdef extern from "cnn_bias_sum.h":
    enum: CNN_EXT_SUM_LANES
    void _plane_sum_f "cnn_ext_plane_sum_f"(const float* x, Py_ssize_t n, float* acc) noexcept nogil
    void _plane_sum_d "cnn_ext_plane_sum_d"(const double* x, Py_ssize_t n, double* acc) noexcept nogil


# ---------------------------------------------------------------------------------------------------
# Kernel gradient by register tiles over flattened planes (stride 1, any zero padding)
#
# Wide rows: with the sample's x zero-padded to Hp x Wp and flattened (xp[i, r*Wp + c]), and dy widened to the
# same row pitch (dyw[j, p*Wp + q] = dy[j, p, q] for q < OW, 0 for OW <= q < Wp and past the last row), every
# tap is one dot product of contiguous vectors:
#     dK[j, i, kh, kw] += Σ_f dyw[j, f] xp[i, f + kh*Wp + kw].
# Shifted copies: one copy of the padded x per kernel column, xp[i, kw, r*OW + q] = x_pad[i, r, q + kw], lets
# dy keep its own pitch OW (no wasted columns, (Wp - OW) / Wp of the work with wide rows) at the price of KW
# copies of x per sample: dK[j, i, kh, kw] += Σ_f dy[j, f] xp[i, kw, f + kh*OW].
# A tile holds nj channels x nt taps of vector accumulators over the whole plane (cnn_kgrad_tile.h); the
# accumulators are stored / added lane-wise into a per-thread vector buffer vacc[(j, i, tap), lane] for the
# chunk, whose lanes are summed once per chunk in a fixed order (so the result does not depend on the thread
# count). Zeros of dyw (gap columns, the tail up to a whole vector) multiply real x values: an inf or NaN in
# x can turn entries into NaN that im2col + BLAS would leave finite (their exact value never involves it);
# ops.conv2d_kernel_gradient recomputes a non-finite result with im2col.
# ---------------------------------------------------------------------------------------------------


ctypedef struct WideGeom:
    Py_ssize_t Hp, Wp, L, pitch, F, xstride, xsize, dysize, nvec, nrow, drow, xrow, nj, nt, A, B, Bn, Na
    bint shifted, rows
    # Hp, Wp: padded input; L: lanes; pitch: dyw row pitch; F: dyw channel pitch (OH*pitch rounded up to L);
    # xstride: xp channel pitch; xsize: xp with its zero slack; dysize: dyw of one sample (0: dy read in place);
    # the plane: nrow rows of nvec vectors, drow (dyw) and xrow (xp) apart;
    # nj, nt: tile; tap (a, b) (a < Na, b < Bn) is read at xp offset a*A + b*B.


cdef inline WideGeom _wide_geom(const Geom* g, Py_ssize_t L, int layout, Py_ssize_t nj,
                                Py_ssize_t nt) noexcept nogil:
    """The layout of one sample (stride 1: Hp = OH + KH - 1, Wp = OW + KW - 1).

    wide rows (layout 0): dyw pitch Wp; xp[i] = padded x[i] (Hp x Wp); taps (a, b) = (kh, kw) at kh*Wp + kw.
    shifted copies (layout 1): dyw pitch OW (no waste); xp[i, kw] = padded x[i, :, kw:kw + OW] (Hp x OW),
    one copy per kw; taps (a, b) = (kw, kh) at kw*Hp*OW + kh*OW, so vacc holds dK with (kh, kw) swapped.
    output rows (layout 2, OW a whole number of vectors): dy read in place, row by row (OH rows of OW / L
    vectors: no waste, no copy); x read in place too when unpadded, else padded as for wide rows.
    """
    cdef WideGeom w
    cdef bint shifted = layout == 1
    w.Hp = g.OH + g.KH - 1
    w.Wp = g.OW + g.KW - 1
    w.L = L
    w.shifted = shifted
    w.rows = layout == 2
    w.nrow, w.drow, w.xrow = 1, 0, 0
    if w.rows:
        w.pitch = g.OW
        w.F = g.OH * g.OW
        w.A, w.B, w.Bn, w.Na = w.Wp, 1, g.KW, g.KH
        w.xstride = w.Hp * w.Wp
        w.xsize = g.C_in * w.xstride  # rows end within their plane: no slack
        w.dysize = 0
        w.nvec = g.OW // L
        w.nrow, w.drow, w.xrow = g.OH, g.OW, w.Wp
        w.nj = nj
        w.nt = nt
        return w
    w.pitch = g.OW if shifted else w.Wp
    w.F = (g.OH * w.pitch + L - 1) // L * L
    if shifted:
        w.A, w.B, w.Bn, w.Na = w.Hp * g.OW, g.OW, g.KH, g.KW
        w.xstride = g.KW * w.Hp * g.OW
        # the last vector of the last tap ends at C_in*xstride + L - 2
        w.xsize = g.C_in * w.xstride + L
    else:
        w.A, w.B, w.Bn, w.Na = w.Wp, 1, g.KW, g.KH
        w.xstride = w.Hp * w.Wp
        # the last vector of the last tap of the last channel ends at C_in*xstride + KW + L - 3
        w.xsize = g.C_in * w.xstride + L + g.KW
    w.dysize = g.C_out * w.F
    w.nvec = w.F // L
    w.nj = nj
    w.nt = nt
    return w


def kgrad_wide_scratch_size(Py_ssize_t C_in, Py_ssize_t C_out, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH,
                            Py_ssize_t KW, bint single, int layout, Py_ssize_t ns=1):
    """Elements of one thread's slab for conv2d_kernel_gradient_wide with ns samples per tile: ns padded (or
    shifted) copies of x, ns widened dy (none for the output-rows layout 2), the vector partials."""
    cdef Geom g = _geom(C_in, OH + KH - 1, OW + KW - 1, C_out, KH, KW, OH, OW, 1, 1, 0, 0)
    cdef WideGeom w = _wide_geom(&g, CNN_EXT_LANES_F if single else CNN_EXT_LANES_D, layout, 1, 1)
    return ns * (w.xsize + w.dysize) + C_out * C_in * KH * KW * w.L


cdef inline void _kgrad_tile(const floating* dyw, Py_ssize_t dstride, const floating* xr, Py_ssize_t a0,
                             Py_ssize_t b0, Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B, Py_ssize_t nvec,
                             Py_ssize_t nrow, Py_ssize_t drow, Py_ssize_t xrow,
                             Py_ssize_t ns, Py_ssize_t sdy, Py_ssize_t sx, floating* vacc,
                             bint init, Py_ssize_t nj, Py_ssize_t nt) noexcept nogil:
    """vacc[t, jj, :] += Σ_{s < ns} Σ_{r < nrow} Σ_{f < nvec*L, lanes}
    dyw[s*sdy + jj*dstride + r*drow + f] xr[s*sx + r*xrow + f + a*A + b*B], jj < nj, t < nt, for the nt taps
    (a, b) from (a0, b0) on in row-major order (b < Bn); = instead of += if init"""
    if floating is float:
        _kgrad_tile_f(dyw, dstride, xr, a0, b0, Bn, A, B, nvec, nrow, drow, xrow, ns, sdy, sx, vacc, init, nj, nt)
    else:
        _kgrad_tile_d(dyw, dstride, xr, a0, b0, Bn, A, B, nvec, nrow, drow, xrow, ns, sdy, sx, vacc, init, nj, nt)


cdef void _kgrad_wide_copy(const floating* x, const floating* dy, floating* xp, floating* dyw,
                           const Geom* g, const WideGeom* w) noexcept nogil:
    """One sample into its slabs: x into xp (padded planes, or the KW shifted copies), dy into dyw (rows at
    the pitch w.pitch). xp and dyw hold zeros outside the parts copied here (the caller's slabs are zeroed
    once; the parts copied are the same for every sample)."""
    cdef Py_ssize_t i, j, p, q, kw, r, qlo, qhi
    cdef Py_ssize_t C_in = g.C_in, C_out = g.C_out, W = g.W, H = g.H
    cdef Py_ssize_t OH = g.OH, OW = g.OW, Wp = w.Wp, F = w.F
    cdef floating* dst
    cdef const floating* src
    if w.shifted:
        for i in range(C_in):
            for kw in range(g.KW):
                # columns q with 0 <= q + kw - PW < W
                qlo = max(0, g.PW - kw)
                qhi = min(OW, W + g.PW - kw)
                if qhi <= qlo:
                    continue
                for r in range(H):  # short rows: an inline (vectorised) loop beats a memcpy call
                    dst = xp + i * w.xstride + kw * w.A + (r + g.PH) * OW
                    src = x + (i * H + r) * W + kw - g.PW
                    for q in range(qlo, qhi):
                        dst[q] = src[q]
    elif Wp == W:  # no left / right padding: whole planes
        for i in range(C_in):
            memcpy(xp + i * w.xstride + g.PH * Wp, x + i * H * W, H * W * sizeof(floating))
    else:
        for i in range(C_in):
            for p in range(H):
                memcpy(xp + i * w.xstride + (p + g.PH) * Wp + g.PW, x + (i * H + p) * W, W * sizeof(floating))
    if w.rows:  # dy is read in place
        return
    if w.pitch == OW:
        for j in range(C_out):
            memcpy(dyw + j * F, dy + j * OH * OW, OH * OW * sizeof(floating))
    else:
        for j in range(C_out):
            for p in range(OH):
                memcpy(dyw + j * F + p * w.pitch, dy + (j * OH + p) * OW, OW * sizeof(floating))


cdef void _kgrad_wide_tiles(const floating* xp, const floating* dyw, floating* vacc, Py_ssize_t ns, bint first,
                            const Geom* g, const WideGeom* w) noexcept nogil:
    """vacc[j0, (i, a, b), jj, lane] += Σ_{s < ns} Σ_{f ≡ lane} dyw_s[j, f] xp_s[i, f + a*A + b*B] over the ns
    samples in the slabs (sample s at xp + s*xsize, dyw + s*C_out*F), j = j0 + jj; the tiles of a block of
    nj channels are contiguous in vacc; (a, b) = (kh, kw) or (kw, kh). first: vacc is overwritten.
    The tiles keep their accumulators over all ns samples: vacc is read and written once per ns samples."""
    cdef Py_ssize_t i, j0, nj, t0, nt, a0, b0
    cdef Py_ssize_t C_in = g.C_in, C_out = g.C_out, KK = g.KH * g.KW, F = w.F, L = w.L
    # Whole planes per tile: blocking f into L1-sized pieces (1-4 KiB rows) is slower than streaming
    # the tile's rows from L2 (more flushes of the accumulators).
    j0 = 0
    while j0 < C_out:
        nj = min(w.nj, C_out - j0)
        for i in range(C_in):
            t0 = 0
            a0 = 0
            b0 = 0
            while t0 < KK:
                nt = min(w.nt, KK - t0)
                if KK - t0 == w.nt + 1 and w.nt > 2:  # 3k + 1 taps (5x5, 7x7): end with 2 + 2, not 3 + 1
                    nt = 2                             # (one tap is 4 accumulators: FMA-latency bound)
                _kgrad_tile(dyw + j0 * F, F, xp + i * w.xstride, a0, b0, w.Bn, w.A, w.B, w.nvec, w.nrow, w.drow, w.xrow,
                            ns, C_out * F, w.xsize, vacc + (j0 * C_in * KK + (i * KK + t0) * nj) * L, first,
                            nj, nt)
                t0 += nt
                b0 += nt
                while b0 >= w.Bn:
                    b0 -= w.Bn
                    a0 += 1
        j0 += nj


cdef void _kgrad_wide_chunk(const floating* dy, const floating* x, floating* part, floating* slab,
                            Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t ns, const Geom* g,
                            const WideGeom* w) noexcept nogil:
    """part[(j, i, kh, kw)] = Σ_{n in [lo, hi)} dK terms of sample n: vector partials over the chunk (groups
    of ns samples per tile pass), then each entry's L lanes summed pairwise in a fixed order."""
    cdef Py_ssize_t n, s, m, j0, nj, CKK = g.C_in * g.KH * g.KW, L = w.L
    cdef Py_ssize_t xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    cdef floating* xp = slab
    cdef floating* dyw = slab + ns * w.xsize
    cdef floating* vacc = dyw + ns * w.dysize
    # the output-rows layout reads dy in place, and x too when unpadded (the tiles' x pitch is then W)
    cdef bint x_in_place = w.rows and g.PH == 0 and g.PW == 0 and g.H == w.Hp and g.W == w.Wp
    n = lo
    while n < hi:  # never empty (at most N chunks): the first group initialises vacc
        m = min(ns, hi - n)
        if x_in_place:
            _kgrad_wide_tiles(x + n * xs, dy + n * ys, vacc, m, n == lo, g, w)
        else:
            for s in range(m):
                _kgrad_wide_copy(x + (n + s) * xs, dy + (n + s) * ys, xp + s * w.xsize, dyw + s * w.dysize, g, w)
            _kgrad_wide_tiles(xp, dy + n * ys if w.rows else dyw, vacc, m, n == lo, g, w)
        n += m
    j0 = 0
    while j0 < g.C_out:  # vacc holds each block of nj channels as [(i, kh, kw), jj, lane]
        nj = min(w.nj, g.C_out - j0)
        if floating is float:
            _lane_sums_f(vacc + j0 * CKK * L, part + j0 * CKK, CKK, nj, CKK)
        else:
            _lane_sums_d(vacc + j0 * CKK * L, part + j0 * CKK, CKK, nj, CKK)
        j0 += nj


cdef void _kgrad_wide_chunks(const floating* dy, const floating* x, floating* partial, floating* slab,
                             Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nchunk, Py_ssize_t N, Py_ssize_t ns,
                             const Geom* g, const WideGeom* w) noexcept nogil:
    """_kgrad_wide_chunk for chunks [c0, c1) of the N samples cut into nchunk, through this part's slab"""
    cdef Py_ssize_t c, KK = g.C_out * g.C_in * g.KH * g.KW
    for c in range(c0, c1):
        _kgrad_wide_chunk(dy, x, partial + c * KK, slab, (c * N) // nchunk, ((c + 1) * N) // nchunk, ns, g, w)


def conv2d_kernel_gradient_wide(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                                const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                                floating[:, :, :, ::1] dk,           # OUT (C_out, C_in, KH, KW)
                                floating[:, ::1] partial,            # TMP (nchunk, C_out*C_in*KH*KW)
                                floating[:, ::1] scratch,            # TMP (threads, kgrad_wide_scratch_size), zeros
                                Py_ssize_t PH, Py_ssize_t PW, int layout, Py_ssize_t nj, Py_ssize_t nt,
                                Py_ssize_t ns, int num_threads, Py_ssize_t c_lo=0, Py_ssize_t c_hi=-1):
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]), stride 1, zero padding (PH top, PW left; the bottom /
    right padding follows from the shapes), by register tiles over ns samples at a time (the slab holds ns
    samples, kgrad_wide_scratch_size(..., ns)), summed in fixed chunks. layout: 0 wide rows, 1 shifted copies,
    2 output rows (OW a whole number of SIMD vectors; see _wide_geom). Returns whether every value of dk is
    finite (an inf or NaN in x meets the zeros the tiles multiply it by: the caller then recomputes). Only chunks
    [c_lo, c_hi) are computed (c_hi = -1: all); dk is written by the call that reaches the last chunk, and the
    calls before it return True."""
    cdef bint shifted = layout == 1
    cdef Py_ssize_t N = x.shape[0], nchunk = partial.shape[0], c, t, kh, kw
    c_hi = _chunk_range(c_lo, c_hi, nchunk)
    cdef Py_ssize_t nparts = _nparts(c_hi - c_lo, num_threads)
    cdef Py_ssize_t KK = dk.shape[0] * dk.shape[1] * dk.shape[2] * dk.shape[3], KHW = dk.shape[2] * dk.shape[3]
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], dk.shape[0], dk.shape[2], dk.shape[3],
                        dy.shape[2], dy.shape[3], 1, 1, PH, PW)
    cdef WideGeom w = _wide_geom(&g, CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D, layout,
                                 min(nj, <Py_ssize_t>CNN_EXT_KJ), min(nt, <Py_ssize_t>CNN_EXT_KT))
    cdef floating* out = &dk[0, 0, 0, 0]
    cdef floating inv_n
    if ns < 1 or scratch.shape[1] < ns * (w.xsize + w.dysize) + KK * w.L:
        raise ValueError(f"scratch {scratch.shape} too small for {ns} samples per tile")
    if w.rows and g.OW % w.L:
        raise ValueError(f"the output-rows layout needs whole vectors of {w.L} per row, got OW = {g.OW}")
    if N == 0:
        for t in range(KK):
            out[t] = 0
        return True
    with nogil:
        if nparts == 1:
            _kgrad_wide_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], &scratch[0, 0], c_lo, c_hi, nchunk,
                               N, ns, &g, &w)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _kgrad_wide_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], &scratch[threadid(), 0],
                                   c_lo + _part(c_hi - c_lo, t, nparts), c_lo + _part(c_hi - c_lo, t + 1, nparts),
                                   nchunk, N, ns, &g, &w)
    if c_hi < nchunk:
        return True
    with nogil:
        inv_n = (<floating>1) / N
        for t in range(KK):
            out[t] = 0
        for c in range(nchunk):
            if shifted:  # partial holds (j, i, kw, kh)
                for t in range(KK // KHW):
                    for kh in range(g.KH):
                        for kw in range(g.KW):
                            out[t * KHW + kh * g.KW + kw] += partial[c, t * KHW + kw * g.KH + kh]
            else:
                for t in range(KK):
                    out[t] += partial[c, t]
        for t in range(KK):
            out[t] *= inv_n
    return _all_finite(out, KK)


def conv2d_bias_gradient(const floating[:, :, :, ::1] dy,    # IN  (N, C_out, OH, OW)
                         floating[::1] db,                   # OUT (C_out,)
                         floating[:, ::1] acc,               # TMP (C_out, CNN_EXT_SUM_LANES)
                         int num_threads):
    """db[j] = (1/N) Σ_{n, p, q} dy[n, j, p, q]: lane sums per channel, the lanes added in order at the end.

    The array is read in memory order (sample by sample, each thread its block of channels), which the
    hardware prefetchers stream; one channel at a time over all samples would jump every plane. A channel's
    sums do not depend on the blocks, so neither on threads.
    """
    cdef Py_ssize_t N = dy.shape[0], C = dy.shape[1], P = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t j, l, t, nt = _nparts(C, num_threads)
    cdef Py_ssize_t lanes = 8 * (CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D)
    cdef floating s
    if N == 0 or P == 0:
        db[:] = 0
        return
    with nogil:
        if nt == 1:  # no parallel region
            _bias_sum_block(&dy[0, 0, 0, 0], &acc[0, 0], 0, C, N, C, P)
        else:
            for t in prange(nt, schedule='dynamic', num_threads=_team(nt, num_threads)):
                _bias_sum_block(&dy[0, 0, 0, 0], &acc[0, 0], _part(C, t, nt), _part(C, t + 1, nt), N, C, P)
        for j in range(C):
            s = 0
            for l in range(lanes):
                s = s + acc[j, l]
            db[j] = s / N


SUM_LANES = CNN_EXT_SUM_LANES  # columns of conv2d_bias_gradient's acc scratch


def tile_lanes(bint single):
    """Lanes per vector of this build's kernel-gradient tiles (the output-rows layout needs rows of whole ones)."""
    return CNN_EXT_LANES_F if single else CNN_EXT_LANES_D


cdef void _bias_sum_block(const floating* dy, floating* acc, Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t N,
                          Py_ssize_t C, Py_ssize_t P) noexcept nogil:
    """acc[j] = lane sums of dy[:, j] for j in [j0, j1), read sample by sample."""
    cdef Py_ssize_t n, j, l
    for j in range(j0, j1):
        for l in range(CNN_EXT_SUM_LANES):
            acc[j * CNN_EXT_SUM_LANES + l] = 0
    for n in range(N):
        for j in range(j0, j1):
            if floating is float:
                _plane_sum_f(dy + (n * C + j) * P, P, acc + j * CNN_EXT_SUM_LANES)
            else:
                _plane_sum_d(dy + (n * C + j) * P, P, acc + j * CNN_EXT_SUM_LANES)
