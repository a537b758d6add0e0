# cython: language_level=3
"""Register-tiled direct forward kernels on zero-padded slabs (stride 1, any padding; the channel-vector one
any stride), also the input gradient of stride-1 layers as the forward of padded dE_dY with rotated kernels
(rotate_kernels), and the channel-vector kernel gradient (any stride; cnn_cvk_tile.h).

cnn_ext/ops.py validates every argument, picks the kernel by shape and allocates outputs and scratch; each `def`
takes typed memoryviews and releases the GIL for the whole loop. conv2d_forward_band and conv2d_forward_cv raise
ValueError when their slab scratch is too small (a check before any work); the others never raise. Four tile
families, C in include/: wide rows along the flat index of the padded sample (cnn_wide_tile.h), KW shifted copies
of the sample accumulating into y (cnn_shift_tile.h), a band of 4 output rows for one output channel
(cnn_band_tile.h), and vectors over output channels (cnn_cv_tile.h). The tile-size queries tell ops.py the shapes
of this build's tiles. Samples are split over threads (_threads.pxd), each part with its own slab: no result
depends on the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from _geom cimport Geom, _geom, _copy_padded, _zero_slab, _all_finite, _check_slabs
from _threads cimport _chunk_range, _nparts, _part, _team

cdef extern from "cnn_simd.h":
    enum: CNN_EXT_LANES_F     # float lanes per vector of this build (8 AVX2, 4 SSE2, 1 without GNU vectors)
    enum: CNN_EXT_LANES_D

cdef extern from "cnn_wide_tile.h":
    enum: CNN_EXT_WJB         # output channels per wide tile
    enum: CNN_EXT_WNV         # vectors along the flat output index per wide tile
    void _wide_tile_f "cnn_ext_wide_tile_f"(
        const float* xp, const float* k, float* wide, Py_ssize_t ldw, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t i0,
        Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0, int first, Py_ssize_t nj) noexcept nogil
    void _wide_tile_d "cnn_ext_wide_tile_d"(
        const double* xp, const double* k, double* wide, Py_ssize_t ldw, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t i0,
        Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0, int first, Py_ssize_t nj) noexcept nogil
    void _wide_tile_one_f "cnn_ext_wide_tile_f_one"(
        const float* xp, const float* k, float* wide, Py_ssize_t ldw, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t i0,
        Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0, int first) noexcept nogil
    void _wide_tile_one_d "cnn_ext_wide_tile_d_one"(
        const double* xp, const double* k, double* wide, Py_ssize_t ldw, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t i0,
        Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0, int first) noexcept nogil

cdef extern from "cnn_shift_tile.h":
    void _shift_tile_f "cnn_ext_shift_tile_f"(
        const float* xs, const float* k, const float* b, float* o, Py_ssize_t ldo, Py_ssize_t xstride,
        Py_ssize_t A, Py_ssize_t OW, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0,
        Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, int first, Py_ssize_t nj) noexcept nogil
    void _shift_tile_d "cnn_ext_shift_tile_d"(
        const double* xs, const double* k, const double* b, double* o, Py_ssize_t ldo, Py_ssize_t xstride,
        Py_ssize_t A, Py_ssize_t OW, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0,
        Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, int first, Py_ssize_t nj) noexcept nogil
    enum: CNN_EXT_SJB         # output channels per shifted-copies tile
    enum: CNN_EXT_SNV         # vectors along the flat output index per shifted-copies tile

cdef extern from "cnn_band_tile.h":
    enum: CNN_EXT_BR          # output rows per band tile
    enum: CNN_EXT_BNV         # vectors of columns per band tile, at most
    void _band_tile_f "cnn_ext_band_tile_f"(
        const float* xp, const float* k, float bias, float* y, Py_ssize_t ldy, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t nv) noexcept nogil
    void _band_tile_d "cnn_ext_band_tile_d"(
        const double* xp, const double* k, double bias, double* y, Py_ssize_t ldy, Py_ssize_t plane,
        Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0, Py_ssize_t r1,
        Py_ssize_t nv) noexcept nogil

cdef extern from "cnn_cv_tile.h":
    enum: CNN_EXT_CJV         # vectors of output channels per channel-vector tile
    enum: CNN_EXT_CNQ         # output pixels per channel-vector tile, at most
    void _cv_tile_f "cnn_ext_cv_tile_f"(
        const float* xp, const float* kp, const float* b, float* stage, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t j0,
        Py_ssize_t r, Py_ssize_t q0, Py_ssize_t OW, Py_ssize_t nq, Py_ssize_t SW) noexcept nogil
    void _cv_tile_d "cnn_ext_cv_tile_d"(
        const double* xp, const double* kp, const double* b, double* stage, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t j0,
        Py_ssize_t r, Py_ssize_t q0, Py_ssize_t OW, Py_ssize_t nq, Py_ssize_t SW) noexcept nogil

cdef extern from "cnn_cvk_tile.h":
    enum: CNN_EXT_CVK_MAX_KW  # kernel widths the channel-vector kernel gradient takes, at most
    enum: CNN_EXT_CVK_TAPS    # taps per tile of it: 12 with 32 vector registers, else 6
    Py_ssize_t _cvk_rows "cnn_ext_cvk_rows"(Py_ssize_t KW, int one) noexcept nogil
    void _cvk_tile_f "cnn_ext_cvk_f"(
        const float* xp, const float* dyT, float* pk, Py_ssize_t C_out, const Py_ssize_t* off,
        const Py_ssize_t* step, Py_ssize_t row0, Py_ssize_t nrows, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SW,
        Py_ssize_t j0, Py_ssize_t KW, int one) noexcept nogil
    void _cvk_tile_d "cnn_ext_cvk_d"(
        const double* xp, const double* dyT, double* pk, Py_ssize_t C_out, const Py_ssize_t* off,
        const Py_ssize_t* step, Py_ssize_t row0, Py_ssize_t nrows, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SW,
        Py_ssize_t j0, Py_ssize_t KW, int one) noexcept nogil
    void _transpose_f "cnn_ext_transpose_f"(const float* d, float* dT, Py_ssize_t C, Py_ssize_t P) noexcept nogil
    void _transpose_d "cnn_ext_transpose_d"(const double* d, double* dT, Py_ssize_t C, Py_ssize_t P) noexcept nogil


def direct_tile_lanes(bint single):
    """SIMD lanes per vector of the direct forward's register tile in this build (float32 if single)."""
    return CNN_EXT_LANES_F if single else CNN_EXT_LANES_D


# ---------------------------------------------------------------------------------------------------
# Wide-row direct forward (stride 1, any zero padding), also the input gradient for stride 1
#
# Each sample is copied into a per-thread zero-padded slab xp[C_in, Hp, Wp] (+ slack), Wp the row pitch
# (wide_pitch: the padded width less the slots a row's right and the next row's left padding share).
# Output pixel (p, q) reads xp[i, p*Wp + q + kh*Wp + kw]: over the flat index f = p*Wp + q, taken for every
# q < Wp (columns q >= OW are computed and dropped), a vector of outputs f..f+L-1 is one contiguous load per
# (i, kh, kw). Register tiles run along f across row ends: no lane is lost except (Wp - OW)/Wp.
# ---------------------------------------------------------------------------------------------------


def wide_tile(bint single):
    """(output channels, flat outputs) of the wide-row tile in this build (float32 if single)."""
    return (CNN_EXT_WJB, CNN_EXT_WNV * (CNN_EXT_LANES_F if single else CNN_EXT_LANES_D))


cdef void _forward_wide_one(const floating* x, const floating* k, const floating* b, floating* y,
                            floating* xp, floating* wide, const Geom* g, Py_ssize_t Hp, Py_ssize_t Wp,
                            Py_ssize_t IB) noexcept nogil:
    """y[j] = b[j] + Σ_i xcorr_valid(pad(x[i]), k[j, i]) through the padded slab xp and the wide buffer.

    xp (C_in*Hp*Wp + slack) is zero outside the interior, which is all this writes; wide holds
    C_out x Fr flat outputs (Fr = OH*Wp rounded up to whole tiles). Input channels go in blocks of IB
    (partial sums kept in wide) so a block's planes stay in cache across the channel tiles. In the last
    block each output row goes to y (plus bias) as soon as its tiles are done, while it is still in L1
    (a separate pass is slower).
    """
    cdef Py_ssize_t lanes = CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D
    cdef Py_ssize_t TB = CNN_EXT_WNV * lanes
    cdef Py_ssize_t C_in = g.C_in, C_out = g.C_out, H = g.H, OH = g.OH, OW = g.OW
    cdef Py_ssize_t plane = Hp * Wp, F = g.OH * Wp, Fr, i0, i1, j0, f0, kh0, kh1, pdone, pend, plo, phi
    cdef Py_ssize_t step
    cdef bint one
    Fr = (F + TB - 1) // TB * TB
    _copy_padded(x, xp, g, plane, Wp)
    i0 = 0
    while i0 < C_in:
        i1 = min(C_in, i0 + IB)
        j0 = 0
        while j0 < C_out:
            f0 = 0
            pdone = 0
            plo = 0  # output rows of the tile's first and last flat outputs (no division per tile)
            phi = 0
            while f0 < Fr:
                # one output channel left: tiles of WJB x TB flat outputs of it while they fit
                one = C_out - j0 == 1 and f0 + CNN_EXT_WJB * TB <= Fr
                step = CNN_EXT_WJB * TB if one else TB
                while (plo + 1) * Wp <= f0:
                    plo += 1
                while phi < OH - 1 and (phi + 1) * Wp <= f0 + step - 1:
                    phi += 1
                # kernel rows that meet only padding rows for every output row of the tile add zeros: skipped
                kh0 = max(0, g.PH - phi)
                kh1 = min(g.KH, g.PH + H - plo)
                if floating is float:
                    if one:
                        _wide_tile_one_f(xp, k, wide, Fr, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, i0, i1, j0, f0,
                                         i0 == 0)
                    else:
                        _wide_tile_f(xp, k, wide, Fr, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, i0, i1, j0, f0,
                                     i0 == 0, C_out - j0)
                else:
                    if one:
                        _wide_tile_one_d(xp, k, wide, Fr, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, i0, i1, j0, f0,
                                         i0 == 0)
                    else:
                        _wide_tile_d(xp, k, wide, Fr, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, i0, i1, j0, f0,
                                     i0 == 0, C_out - j0)
                f0 += step
                if i1 == C_in:
                    pend = pdone  # rows p with p*Wp + OW <= f0 are complete
                    while pend < OH and pend * Wp + OW <= f0:
                        pend += 1
                    if pend > pdone:
                        _wide_rows_out(wide, b, y, Fr, Wp, OH, OW, j0, min(C_out, j0 + CNN_EXT_WJB), pdone, pend)
                        pdone = pend
            j0 += CNN_EXT_WJB
        i0 = i1


cdef inline void _wide_rows_out(const floating* wide, const floating* b, floating* y, Py_ssize_t Fr,
                                Py_ssize_t Wp, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t j0, Py_ssize_t j1,
                                Py_ssize_t p0, Py_ssize_t p1) noexcept nogil:
    """y[j, p, q] = b[j] + wide[j, p*Wp + q] for j in [j0, j1), p in [p0, p1), q < OW"""
    cdef Py_ssize_t j, p, q
    cdef floating bj
    cdef floating* dst
    cdef const floating* wr
    for j in range(j0, j1):
        bj = b[j]
        for p in range(p0, p1):
            wr = wide + j * Fr + p * Wp
            dst = y + (j * OH + p) * OW
            for q in range(OW):
                dst[q] = bj + wr[q]


cpdef Py_ssize_t wide_pitch(Py_ssize_t W, Py_ssize_t OW, Py_ssize_t KW, Py_ssize_t PL) noexcept nogil:
    """Row pitch of the wide kernel's slab for input width W, output width OW, kernel width KW, left padding
    PL: W + PL + PR - s with PR = OW + KW - 1 - W - PL the right padding and s = min(PL, PR, KW - 1).

    A row's right padding and the next row's left padding are both zeros, so they can share s slots: row r's
    data sits at r*pitch + PL, and output column q < OW <= pitch reads slots q .. q + KW - 1 of its row, which
    run at most s slots into the next row's left padding (s <= PL). s <= KW - 1 keeps OW <= pitch (each
    output row inside its own pitch). With the full padded width the wide rows would compute and drop KW - 1
    columns per row; with this pitch they drop KW - 1 - s: none for the input gradient (dE_dY padded by
    KW - 1 on both sides), half as many for 'same' padding."""
    cdef Py_ssize_t PR = OW + KW - 1 - W - PL
    cdef Py_ssize_t s = min(PL, PR, KW - 1)
    return W + PL + PR - s


cdef void _forward_wide_part(const floating* x, const floating* k, const floating* b, floating* y,
                             floating* xp, Py_ssize_t slab, floating* wide, const Geom* g, Py_ssize_t Hp,
                             Py_ssize_t Wp, Py_ssize_t IB, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_forward_wide_one for samples [lo, hi), through this part's slab xp (slab elements), zeroed first"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    _zero_slab(xp, slab)
    for n in range(lo, hi):
        _forward_wide_one(x + n * xs, k, b, y + n * ys, xp, wide, g, Hp, Wp, IB)


def conv2d_forward_wide(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                        const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                        const floating[::1] b,               # IN  (C_out,)
                        floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                        floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp + slack), any values
                        floating[:, ::1] wide,               # TMP (threads, C_out*Fr)
                        Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t IB, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1; the row pitch Wp is wide_pitch)."""
    cdef Py_ssize_t t, N = x.shape[0], nparts = _nparts(N, num_threads)
    cdef Py_ssize_t Hp = y.shape[2] + k.shape[2] - 1
    cdef Py_ssize_t Wp = wide_pitch(x.shape[3], y.shape[3], k.shape[3], PL)
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], 1, 1, PT, PL)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_wide_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[0, 0], xpad.shape[1],
                               &wide[0, 0], &g, Hp, Wp, IB, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_wide_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[threadid(), 0],
                                   xpad.shape[1], &wide[threadid(), 0], &g, Hp, Wp, IB,
                                   _part(N, t, nparts), _part(N, t + 1, nparts))


# ---------------------------------------------------------------------------------------------------
# Shifted-copies direct forward (stride 1, any zero padding), also the input gradient for stride 1
#
# Each sample is copied KW times into a per-thread slab, xs[i, kw, r*OW + q] = x_pad[i, r, q + kw] (row
# pitch OW, Hp rows per copy), zero where x_pad is padding. Output pixel f = p*OW + q reads
# xs[i, kw, f + kh*OW]: contiguous along f with y's own pitch, so no column is computed and dropped (the wide
# rows lose (KW-1)/Wp) and tiles accumulate straight into y[n, j] (bias first, then each block of input
# channels adds to it: sums in the order bias, i, kh, kw, whatever the block size). The tail of a plane
# (F = OH*OW not a whole number of tiles) goes through a small staging tile so nothing is written past the
# plane. Cost: KW copies of each sample (the slab C_in*KW*Hp*OW + slack).
# ---------------------------------------------------------------------------------------------------


def shifted_tile(bint single):
    """(output channels, flat outputs) of the shifted-copies tile in this build (float32 if single)."""
    return (CNN_EXT_SJB, CNN_EXT_SNV * (CNN_EXT_LANES_F if single else CNN_EXT_LANES_D))


def shifted_slab_size(Py_ssize_t C_in, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, bint single):
    """Elements of one thread's shifted-copies slab for blocks of C_in input channels: C_in*KW*Hp*OW plus one
    tile of slack (the last tile's vector loads reach TB - 2 past the copies)."""
    cdef Py_ssize_t TB = CNN_EXT_SNV * (CNN_EXT_LANES_F if single else CNN_EXT_LANES_D)
    return C_in * KW * (OH + KH - 1) * OW + TB


cdef inline void _shift_tile(const floating* xs, const floating* k, const floating* b, floating* o,
                             Py_ssize_t ldo, Py_ssize_t xstride, Py_ssize_t A, const Geom* g,
                             Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0,
                             bint first, Py_ssize_t nj) noexcept nogil:
    if floating is float:
        _shift_tile_f(xs, k, b, o, ldo, xstride, A, g.OW, g.C_in, g.KH, g.KW, kh0, kh1, i0, i1, j0, first, nj)
    else:
        _shift_tile_d(xs, k, b, o, ldo, xstride, A, g.OW, g.C_in, g.KH, g.KW, kh0, kh1, i0, i1, j0, first, nj)


cdef void _forward_shifted_one(const floating* x, const floating* k, const floating* b, floating* y,
                               floating* xs, floating* stage, const Geom* g, Py_ssize_t IB) noexcept nogil:
    """y[j] = b[j] + Σ_i xcorr_valid(pad(x[i]), k[j, i]) through shifted copies, tiles written into y.

    Input channels go in blocks of IB: each block is copied into the slab xs (IB channels of KW copies,
    shifted_slab_size; zero outside the parts copied here, which are the same for every block and sample:
    the caller zeroes it once) just before its tiles run, so the slab stays in L2 (a whole sample's copies
    can outgrow it). The first block starts from the bias, the
    others add to y. (Walking the plane in chunks, all output channels per chunk, measured no faster.)
    stage holds one tile (CNN_EXT_SJB x TB) for the tail of each plane.
    """
    cdef Py_ssize_t lanes = CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D
    cdef Py_ssize_t TB = CNN_EXT_SNV * lanes
    cdef Py_ssize_t C_in = g.C_in, C_out = g.C_out, H = g.H, W = g.W, OH = g.OH, OW = g.OW
    cdef Py_ssize_t Hp = OH + g.KH - 1, A = Hp * OW, xstride = g.KW * Hp * OW, F = OH * OW, KK = g.KH * g.KW
    cdef Py_ssize_t i, r, q, kw, qlo, qhi, i0, i1, j0, jj, nj, f0, kh0, kh1, plo, phi, rem
    cdef bint first
    cdef floating* dst
    cdef const floating* src
    cdef const floating* kb
    i0 = 0
    while i0 < C_in:
        i1 = min(C_in, i0 + IB)
        first = i0 == 0
        kb = k + i0 * KK  # the tiles see channels [0, i1 - i0) of the slab with the kernels' channel pitch
        for i in range(i0, i1):
            for kw in range(g.KW):
                qlo = max(0, g.PW - kw)  # columns q with 0 <= q + kw - PW < W
                qhi = min(OW, W + g.PW - kw)
                if qhi <= qlo:
                    continue
                for r in range(H):
                    dst = xs + (i - i0) * xstride + kw * A + (r + g.PH) * OW
                    src = x + (i * H + r) * W + kw - g.PW
                    for q in range(qlo, qhi):
                        dst[q] = src[q]
        j0 = 0
        while j0 < C_out:
            nj = min(CNN_EXT_SJB, C_out - j0)
            f0 = 0
            plo = 0  # output rows of the tile's first and last outputs (no division per tile)
            phi = plo
            while f0 < F:
                while (plo + 1) * OW <= f0:
                    plo += 1
                while phi < OH - 1 and (phi + 1) * OW <= f0 + TB - 1:
                    phi += 1
                # kernel rows meeting only padding rows for every output row of the tile add zeros: skipped
                kh0 = max(0, g.PH - phi)
                kh1 = min(g.KH, g.PH + H - plo)
                if f0 + TB <= F:
                    _shift_tile(xs + f0, kb, b, y + j0 * F + f0, F, xstride, A, g, kh0, kh1, 0, i1 - i0, j0,
                                first, nj)
                else:  # the plane's tail, through the staging tile (lanes past the plane dropped)
                    rem = F - f0
                    if not first:
                        for jj in range(nj):
                            memcpy(stage + jj * TB, y + (j0 + jj) * F + f0, rem * sizeof(floating))
                    _shift_tile(xs + f0, kb, b, stage, TB, xstride, A, g, kh0, kh1, 0, i1 - i0, j0, first, nj)
                    for jj in range(nj):
                        memcpy(y + (j0 + jj) * F + f0, stage + jj * TB, rem * sizeof(floating))
                f0 += TB
            j0 += CNN_EXT_SJB
        i0 = i1


cdef void _forward_shifted_part(const floating* x, const floating* k, const floating* b, floating* y,
                                floating* xs, floating* stage, const Geom* g, Py_ssize_t IB, Py_ssize_t lo,
                                Py_ssize_t hi) noexcept nogil:
    """_forward_shifted_one for samples [lo, hi) (the slab xs zeroed by the caller)"""
    cdef Py_ssize_t n, xn = g.C_in * g.H * g.W, yn = g.C_out * g.OH * g.OW
    for n in range(lo, hi):
        _forward_shifted_one(x + n * xn, k, b, y + n * yn, xs, stage, g, IB)


def conv2d_forward_shifted(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                           const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                           const floating[::1] b,               # IN  (C_out,)
                           floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                           floating[:, ::1] xs,                 # TMP (threads, shifted_slab_size), zeroed
                           floating[:, ::1] stage,              # TMP (threads, CNN_EXT_SJB * TB)
                           Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t IB, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape), through shifted copies of each sample."""
    cdef Py_ssize_t t, N = x.shape[0], nparts = _nparts(N, num_threads)
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], 1, 1, PT, PL)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_shifted_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xs[0, 0], &stage[0, 0],
                                  &g, IB, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_shifted_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xs[threadid(), 0], &stage[threadid(),
                                      0], &g, IB,
                                      _part(N, t, nparts), _part(N, t + 1, nparts))


def all_finite(const floating[::1] a):
    """Whether no value of a is inf or NaN."""
    if a.shape[0] == 0:
        return True
    return _all_finite(&a[0], a.shape[0])


def rotate_kernels(const floating[:, :, :, ::1] k,   # IN  (C_out, C_in, KH, KW)
                   floating[:, :, :, ::1] k_rot):     # OUT (C_in, C_out, KH, KW)
    """k_rot[i, j] = k[j, i] rotated by 180°: the kernels of the input gradient as a forward (stride 1) of
    dE_dY padded by K - 1 - padding. Returns whether every value is finite (an inf or NaN would meet that
    padding's zeros: the caller then takes a path without them)."""
    cdef Py_ssize_t j, i, a, c, C_out = k.shape[0], C_in = k.shape[1], KH = k.shape[2], KW = k.shape[3]
    with nogil:
        for j in range(C_out):
            for i in range(C_in):
                for a in range(KH):
                    for c in range(KW):
                        k_rot[i, j, KH - 1 - a, KW - 1 - c] = k[j, i, a, c]
    return _all_finite(&k[0, 0, 0, 0], C_out * C_in * KH * KW)


# ---------------------------------------------------------------------------------------------------
# Row-band direct forward for one output channel (stride 1, any zero padding): the input gradient of a
# one-input-channel layer (dX has one channel, summing the layer's C_out padded dE_dY planes)
#
# With one output channel a loaded input vector meets one weight per output vector: the wide tile's
# 12 vectors of one channel load 13 vectors (12 x + 1 weight) per 12 FMAs. A band tile holds NR = 4 output
# rows x nv <= 3 vectors of columns instead: input row r of the band feeds output row rr with kernel row
# r - rr, so each row's nv vectors are loaded once per kw and used by up to 4 output rows (nv + 4 loads per
# 4*nv FMAs). Input rows wholly in the padding are skipped row by row (the wide kernel skips a kernel row
# only when it meets padding for every output row of its tile). Tiles store straight into y: the last
# column tile of a row and the last band end at the edge (overlapping the previous one, recomputing values
# already stored with the same operations in the same order, up to the sign of a zero sum).
# ---------------------------------------------------------------------------------------------------


def band_tile(bint single):
    """(output rows, SIMD lanes) of the row-band tile in this build (float32 if single): it needs OH >= rows and
    OW >= lanes."""
    return (CNN_EXT_BR, CNN_EXT_LANES_F if single else CNN_EXT_LANES_D)


cdef void _forward_band_one(const floating* x, const floating* k, const floating* b, floating* y,
                            floating* xp, const Geom* g, Py_ssize_t Hp, Py_ssize_t Wp) noexcept nogil:
    """y[0] = b[0] + Σ_i xcorr_valid(pad(x[i]), k[0, i]) (one output channel) by row-band tiles.

    xp (C_in x Hp x Wp, Wp = OW + KW - 1) is zero outside the interior, which is all this writes. The OW
    columns split into ceil(OW / lanes) vectors, shared out as evenly as possible over tiles of at most
    CNN_EXT_BNV (7 vectors: 3 + 2 + 2, not 3 + 3 + 1: a one-vector tile has too few accumulators), the last
    tile ending at column OW."""
    cdef Py_ssize_t L = CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D
    cdef Py_ssize_t NR = CNN_EXT_BR
    cdef Py_ssize_t C_in = g.C_in, H = g.H, OH = g.OH, OW = g.OW, KH = g.KH
    cdef Py_ssize_t plane = Hp * Wp, p0, c0, r0, r1, nvec, ntile, t, nv, done
    _copy_padded(x, xp, g, plane, Wp)
    nvec = (OW + L - 1) // L
    ntile = (nvec + CNN_EXT_BNV - 1) // CNN_EXT_BNV
    if ntile == 1 and OW % L:  # one tile of nvec vectors would not fit: two (OW > L)
        ntile = 2
    p0 = 0
    while p0 < OH:
        p0 = min(p0, OH - NR)
        # input rows p0 + r of the band outside [PH, PH + H) are padding: skipped
        r0 = max(0, g.PH - p0)
        r1 = min(NR + KH - 1, g.PH + H - p0)
        done = 0
        for t in range(ntile):
            nv = (nvec - done) // (ntile - t)  # the remaining vectors shared out evenly (the larger tiles last)
            c0 = min(done * L, OW - nv * L)
            if floating is float:
                _band_tile_f(xp + p0 * Wp + c0, k, b[0], y + p0 * OW + c0, OW, plane, Wp, C_in, KH, g.KW,
                             r0, r1, nv)
            else:
                _band_tile_d(xp + p0 * Wp + c0, k, b[0], y + p0 * OW + c0, OW, plane, Wp, C_in, KH, g.KW,
                             r0, r1, nv)
            done += nv
        p0 += NR


cdef void _forward_band_part(const floating* x, const floating* k, const floating* b, floating* y,
                             floating* xp, Py_ssize_t slab, const Geom* g, Py_ssize_t Hp, Py_ssize_t Wp,
                             Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_forward_band_one for samples [lo, hi), through this part's slab xp (slab elements), zeroed first"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.OH * g.OW
    _zero_slab(xp, slab)
    for n in range(lo, hi):
        _forward_band_one(x + n * xs, k, b, y + n * ys, xp, g, Hp, Wp)


def conv2d_forward_band(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                        const floating[:, :, :, ::1] k,      # IN  (1, C_in, KH, KW)
                        const floating[::1] b,               # IN  (1,)
                        floating[:, :, :, ::1] y,            # OUT (N, 1, OH, OW)
                        floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp), any values
                        Py_ssize_t PT, Py_ssize_t PL, int num_threads):
    """y[n, 0] = b[0] + Σ_i xcorr(x[n, i], k[0, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1); OH >= band_tile()[0],
    OW >= band_tile()[1]. Each thread zeroes its own slab first (_zero_slab)."""
    cdef Py_ssize_t t, N = x.shape[0], nparts = _nparts(N, num_threads)
    cdef Py_ssize_t Hp = y.shape[2] + k.shape[2] - 1, Wp = y.shape[3] + k.shape[3] - 1
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], 1, k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], 1, 1, PT, PL)
    _check_slabs(xpad.shape[0], xpad.shape[1], num_threads, g.C_in, Hp, Wp)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_band_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[0, 0], xpad.shape[1],
                               &g, Hp, Wp, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_band_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[threadid(), 0],
                                   xpad.shape[1], &g, Hp, Wp,
                                   _part(N, t, nparts), _part(N, t + 1, nparts))


# ---------------------------------------------------------------------------------------------------
# Channel-vector direct forward (any stride, any zero padding): vectors over output channels
#
# The same padded slab as the wide-row kernel, but a tile is CNN_EXT_CJV vectors of consecutive output
# channels x nq <= CNN_EXT_CNQ output pixels of one row: weights are vector loads from a packed copy
# kp[C_out / JW, C_in, KH, KW, JW] (JW = CNN_EXT_CJV lanes-vectors), inputs are broadcasts. No lane is wasted
# when C_out is a multiple of JW (the caller's condition), and rows split into balanced chunks.
# ---------------------------------------------------------------------------------------------------


cpdef Py_ssize_t padded_extent(Py_ssize_t H, Py_ssize_t OH, Py_ssize_t KH, Py_ssize_t SH,
                                Py_ssize_t PT) noexcept nogil:
    """Rows (or columns) of a padded slab: those the output reads, and at least the input's below its top
    padding (a stride can leave the last input rows unread); OH + KH - 1 at stride 1."""
    return max((OH - 1) * SH + KH, H + PT)


def channel_tile(bint single):
    """Output channels per channel-vector tile in this build (float32 if single): C_out must be a multiple."""
    return CNN_EXT_CJV * (CNN_EXT_LANES_F if single else CNN_EXT_LANES_D)


cdef void _forward_cv_one(const floating* x, const floating* kp, const floating* b, floating* y,
                          floating* xp, floating* stage, const Geom* g, Py_ssize_t Hp,
                          Py_ssize_t Wp) noexcept nogil:
    """y[j] = b[j] + Σ_i xcorr_valid(pad(x[i]), k[j, i]) by channel-vector tiles (kp packed, cnn_cv_tile.h).

    Tiles store one output row of JW channels into stage[JW, OW], copied to y when the row is done: storing
    the lanes straight into y hits JW addresses OH*OW apart, the same L1 set when that is 4 KiB (float32
    32x32 maps ran 2x slower)."""
    cdef Py_ssize_t JW = CNN_EXT_CJV * (CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D)
    cdef Py_ssize_t C_in = g.C_in, C_out = g.C_out, H = g.H, OH = g.OH, OW = g.OW
    cdef Py_ssize_t plane = Hp * Wp, c, j0, p, r, q0, nq, kh0, kh1, nchunk, chunk, l
    cdef floating* dst
    cdef const floating* src
    _copy_padded(x, xp, g, plane, Wp)
    nchunk = (OW + CNN_EXT_CNQ - 1) // CNN_EXT_CNQ
    j0 = 0
    while j0 < C_out:
        for p in range(OH):
            r = p * g.SH  # the slab row of kernel row 0
            kh0 = max(0, g.PH - r)  # kernel rows on padding rows only add zeros
            kh1 = max(kh0, min(g.KH, g.PH + H - r))
            q0 = 0
            for chunk in range(nchunk):
                nq = (OW - q0 + nchunk - chunk - 1) // (nchunk - chunk)
                if floating is float:
                    _cv_tile_f(xp, kp, b, stage, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, j0, r, q0, OW, nq, g.SW)
                else:
                    _cv_tile_d(xp, kp, b, stage, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, j0, r, q0, OW, nq, g.SW)
                q0 += nq
            for l in range(JW):
                dst = y + ((j0 + l) * OH + p) * OW
                src = stage + l * OW
                for c in range(OW):
                    dst[c] = src[c]
        j0 += JW


cdef void _forward_cv_part(const floating* x, const floating* kp, const floating* b, floating* y,
                           floating* xp, Py_ssize_t slab, floating* stage, const Geom* g, Py_ssize_t Hp,
                           Py_ssize_t Wp, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_forward_cv_one for samples [lo, hi), through this part's slab xp (slab elements), zeroed first"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    _zero_slab(xp, slab)
    for n in range(lo, hi):
        _forward_cv_one(x + n * xs, kp, b, y + n * ys, xp, stage, g, Hp, Wp)


def conv2d_forward_cv(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                      const floating[:, :, :, :, ::1] kp,  # IN  (C_out / JW, C_in, KH, KW, JW) packed kernels
                      const floating[::1] b,               # IN  (C_out,)
                      floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                      floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp), any values
                      floating[:, ::1] stage,              # TMP (threads, JW*OW)
                      Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) at stride (SH, SW), zero padding PT on top and PL on the
    left; kp[jb, i, kh, kw, l] = k[jb*JW + l, i, kh, kw] with JW = channel_tile(); C_out a multiple of JW.
    xpad holds C_in * padded_extent(H, OH, KH, SH, PT) * padded_extent(W, OW, KW, SW, PL) elements per thread."""
    cdef Py_ssize_t t, N = x.shape[0], nparts = _nparts(N, num_threads)
    cdef Py_ssize_t KH = kp.shape[2], KW = kp.shape[3]
    cdef Py_ssize_t Hp = padded_extent(x.shape[2], y.shape[2], KH, SH, PT)
    cdef Py_ssize_t Wp = padded_extent(x.shape[3], y.shape[3], KW, SW, PL)
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], y.shape[1], KH, KW,
                        y.shape[2], y.shape[3], SH, SW, PT, PL)
    _check_slabs(xpad.shape[0], xpad.shape[1], num_threads, g.C_in, Hp, Wp)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_cv_part(&x[0, 0, 0, 0], &kp[0, 0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[0, 0], xpad.shape[1],
                             &stage[0, 0], &g, Hp, Wp, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_cv_part(&x[0, 0, 0, 0], &kp[0, 0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &xpad[threadid(), 0],
                                 xpad.shape[1], &stage[threadid(), 0], &g, Hp, Wp,
                                 _part(N, t, nparts), _part(N, t + 1, nparts))


# ---------------------------------------------------------------------------------------------------
# Channel-vector kernel gradient (any stride, any zero padding): vectors over output channels
#
# dK[j, i, kh, kw] = Σ_n Σ_{p, q} dE_dY[n, j, p, q] x_pad[n, i, p*SH + kh, q*SW + kw]. Per sample, x goes into
# the padded slab and dE_dY is transposed to channels last (dyT[P, C_out]); a tile (cnn_cvk_tile.h) is
# CNN_EXT_CJV vectors of output channels x the KW taps of a few kernel rows (i, kh), summed over every output
# pixel in registers and added to the chunk's partial sums pk[taps, C_out] once per sample; layers whose output
# channels are whole vectors but not whole pairs take one vector x twice the taps. For small maps and strides,
# where the tiles over pixels waste lanes on short rows and skipped columns.
# ---------------------------------------------------------------------------------------------------


def channel_kgrad_max_kw():
    """Kernel widths up to which the channel-vector kernel gradient runs (a tile copy each)."""
    return CNN_EXT_CVK_MAX_KW


def channel_kgrad_taps():
    """Taps (i, kh, kw) per tile of the channel-vector kernel gradient in this build."""
    return CNN_EXT_CVK_TAPS


def channel_kgrad_scratch_size(Py_ssize_t C_in, Py_ssize_t C_out, Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH,
                               Py_ssize_t OW, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t SH, Py_ssize_t SW,
                               Py_ssize_t PT, Py_ssize_t PL):
    """Elements of one thread's scratch: the padded slab, a zero row for the tiles' spare rows, and dyT."""
    cdef Py_ssize_t Wp = padded_extent(W, OW, KW, SW, PL)
    return C_in * padded_extent(H, OH, KH, SH, PT) * Wp + Wp + OH * OW * C_out


cdef void _kgrad_cv_chunks(const floating* dy, const floating* x, floating* partial, Py_ssize_t size,
                           floating* scratch, Py_ssize_t nscratch, const Py_ssize_t* off, const Py_ssize_t* step,
                           const Geom* g, Py_ssize_t Hp, Py_ssize_t Wp, Py_ssize_t N, Py_ssize_t nchunk,
                           bint one, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """partial[c, tap * C_out + j] = Σ_{n in chunk c} the terms of sample n, in sample order, c in [c0, c1);
    one: tiles of one vector of output channels"""
    cdef Py_ssize_t lanes = CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D
    cdef Py_ssize_t JW = lanes if one else CNN_EXT_CJV * lanes
    cdef Py_ssize_t C_out = g.C_out, P = g.OH * g.OW, nrows = g.C_in * g.KH, NB = _cvk_rows(g.KW, one)
    cdef Py_ssize_t plane = Hp * Wp, xs = g.C_in * g.H * g.W, c, n, t, j0, row0
    cdef floating* xp = scratch
    cdef floating* dyT = scratch + g.C_in * plane + Wp
    cdef floating* pk
    _zero_slab(scratch, nscratch)  # the padding and the zero row stay zero: the copies write the interior
    for c in range(c0, c1):
        pk = partial + c * size
        for t in range(size):
            pk[t] = 0
        for n in range((c * N) // nchunk, ((c + 1) * N) // nchunk):
            _copy_padded(x + n * xs, xp, g, plane, Wp)
            if floating is float:
                _transpose_f(dy + n * C_out * P, dyT, C_out, P)
            else:
                _transpose_d(dy + n * C_out * P, dyT, C_out, P)
            j0 = 0
            while j0 < C_out:
                row0 = 0
                while row0 < nrows:
                    if floating is float:
                        _cvk_tile_f(xp, dyT, pk, C_out, off, step, row0, nrows, g.OH, g.OW, g.SW, j0, g.KW, one)
                    else:
                        _cvk_tile_d(xp, dyT, pk, C_out, off, step, row0, nrows, g.OH, g.OW, g.SW, j0, g.KW, one)
                    row0 += NB
                j0 += JW


def conv2d_kernel_gradient_cv(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                              const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                              floating[:, :, :, ::1] dk,           # OUT (C_out, C_in, KH, KW)
                              floating[:, ::1] partial,            # TMP (nchunk, C_out*C_in*KH*KW)
                              floating[:, ::1] scratch,            # TMP (threads, channel_kgrad_scratch_size)
                              Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PT, Py_ssize_t PL, int num_threads,
                              Py_ssize_t c_lo=0, Py_ssize_t c_hi=-1):
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]) at stride (SH, SW), zero padding PT on top and PL on the
    left, summed in fixed chunks of samples; C_out a multiple of direct_tile_lanes(), KW <= channel_kgrad_max_kw().
    Only chunks [c_lo, c_hi) of partial are computed (c_hi = -1: all); dk is written by the call that reaches
    the last chunk. ValueError, before any work, when the scratch is too small."""
    cdef Py_ssize_t N = x.shape[0], nchunk = partial.shape[0], size = partial.shape[1], c, t, j, r
    cdef Py_ssize_t C_out = dk.shape[0], KH = dk.shape[2], KW = dk.shape[3], taps = x.shape[1] * KH * KW
    cdef Py_ssize_t Hp = padded_extent(x.shape[2], dy.shape[2], KH, SH, PT)
    cdef Py_ssize_t Wp = padded_extent(x.shape[3], dy.shape[3], KW, SW, PL)
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], C_out, KH, KW, dy.shape[2], dy.shape[3], SH, SW, PT, PL)
    cdef Py_ssize_t need = channel_kgrad_scratch_size(g.C_in, C_out, g.H, g.W, g.OH, g.OW, KH, KW, SH, SW, PT, PL)
    cdef Py_ssize_t lanes = CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D
    cdef bint one = C_out % (CNN_EXT_CJV * lanes) != 0  # whole vectors, not whole pairs: the one-vector tile
    cdef Py_ssize_t nrows = g.C_in * KH, NB = _cvk_rows(KW, one), nparts
    cdef Py_ssize_t* off
    cdef Py_ssize_t* step
    cdef floating* out = &dk[0, 0, 0, 0]
    cdef floating inv_n
    c_hi = _chunk_range(c_lo, c_hi, nchunk)
    if scratch.shape[0] < num_threads or scratch.shape[1] < need:
        raise ValueError(f"scratch {(scratch.shape[0], scratch.shape[1])} too small for {num_threads} of {need}")
    if N == 0:
        for t in range(C_out * taps):
            out[t] = 0
        return
    off = <Py_ssize_t*>malloc(2 * (nrows + NB) * sizeof(Py_ssize_t))
    if off == NULL:
        raise MemoryError()
    step = off + nrows + NB
    for r in range(nrows + NB):  # kernel row r = (i, kh); spare rows read the zero row after the slab
        off[r] = (r // KH) * Hp * Wp + (r % KH) * Wp if r < nrows else g.C_in * Hp * Wp
        step[r] = SH * Wp if r < nrows else 0
    nparts = _nparts(c_hi - c_lo, num_threads)
    with nogil:
        if nparts == 1:
            _kgrad_cv_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], size, &scratch[0, 0], need, off, step,
                             &g, Hp, Wp, N, nchunk, one, c_lo, c_hi)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _kgrad_cv_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], size, &scratch[threadid(), 0],
                                 need, off, step, &g, Hp, Wp, N, nchunk, one,
                                 c_lo + _part(c_hi - c_lo, t, nparts), c_lo + _part(c_hi - c_lo, t + 1, nparts))
        if c_hi == nchunk:  # dk[j, tap] = (1/N) Σ_c partial[c, tap, j], the chunks added in order into chunk 0
            inv_n = (<floating>1) / N
            for c in range(1, nchunk):  # in unit stride; transposed once after
                for t in range(C_out * taps):
                    partial[0, t] += partial[c, t]
            for j in range(C_out):
                for t in range(taps):
                    out[j * taps + t] = partial[0, t * C_out + j] * inv_n
    free(off)
