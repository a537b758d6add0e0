# cython: language_level=3
"""Winograd minimal filtering F(m x m, 3 x 3), m = 2 or 4 (Lavin & Gray 2016): forward and kernel gradient of
3x3 stride-1 layers with any zero padding (the input gradient is the forward of dE_dY, see cnn_ext/_runners.py).

y = Aᵀ [U ⊙ V] A per output tile of m x m pixels, with U = G k Gᵀ (the kernels, transformed by the caller) and
V = Bᵀ d B (d: the tile's (m+2) x (m+2) input patch, zero outside the padded input). A block of tiles is transformed
into V[ξ, C_in, tiles], multiplied by one BLAS call per ξ of the (m+2)² transform points, M[ξ] = U[ξ] @ V[ξ], and
transformed back. Blocks are fixed by the shape (a band of tile rows of one sample, or whole samples): no result
depends on the thread count. The forward gives each thread whole blocks. The kernel gradient sums
dU[ξ] += dM[ξ] @ V[ξ]ᵀ (dM = A dY Aᵀ) over the blocks of fixed chunks of samples, summed in order by the caller;
its threads take whole chunks, or share each block when chunks are few per thread.
cnn_ext/_runners.py validates, sizes the blocks and allocates outputs and scratch; nothing here raises.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

from _blas cimport _gemm_rm
from _threads cimport _chunk_range, _nparts, _part, _team

cdef extern from "cnn_prefetch.h":
    void _prefetch "cnn_ext_prefetch"(const void* p, Py_ssize_t nbytes, int write) noexcept nogil


ctypedef struct Wino:
    Py_ssize_t C_in, H, W, C_out, OH, OW, PH, PW
    Py_ssize_t m, a, TH, TW, Wp, BR, TB      # tile, patch (m + 2), tile rows / columns, row pitch, rows per block
    Py_ssize_t TL, RL                        # TW in whole groups (the lanes split and merge write), row buffer pitch
    Py_ssize_t rowbuf, pbuf, ebuf, vbuf, mbuf, zbuf  # offsets of the per-thread scratch parts


cdef inline Py_ssize_t _round16(Py_ssize_t n) noexcept nogil:
    return (n + 15) // 16 * 16  # scratch parts start on 64-byte boundaries, whatever the thread's row


cdef Wino _wino(Py_ssize_t C_in, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C_out, Py_ssize_t OH, Py_ssize_t OW,
                Py_ssize_t PH, Py_ssize_t PW, Py_ssize_t m, Py_ssize_t BR) noexcept nogil:
    cdef Wino g
    g.C_in = C_in; g.H = H; g.W = W; g.C_out = C_out; g.OH = OH; g.OW = OW; g.PH = PH; g.PW = PW
    g.m = m; g.a = m + 2; g.TH = (OH + m - 1) // m; g.TW = (OW + m - 1) // m; g.Wp = g.TW * m + 2; g.BR = BR
    g.TB = (BR // g.TH) * g.TH * g.TW if BR >= g.TH else BR * g.TW  # tiles of the largest block
    g.TL = (g.TW + WINO_GROUP - 1) // WINO_GROUP * WINO_GROUP
    g.RL = _round16(g.TL * m + 2)
    g.rowbuf = 0                                      # a tile row's a padded input rows (TL m + 2 >= Wp columns)
    g.pbuf = g.rowbuf + g.a * g.RL                    # one channel's patches (or dE_dY tiles) of the block
    g.ebuf = g.pbuf + _round16(g.a * g.a * (g.TB + g.TL))  # their transform along one axis (planes of _pitch)
    g.vbuf = g.ebuf + _round16(g.a * g.a * (g.TB + g.TL))
    g.mbuf = g.vbuf + _round16(g.a * g.a * C_in * g.TB)
    g.zbuf = g.mbuf + _round16(g.a * g.a * C_out * g.TB)  # the forward's zero-field map, dX's masks; dU
    return g


cdef inline Py_ssize_t _pitch(const Wino* g, Py_ssize_t TB) noexcept nogil:
    """Lanes per plane of a block's patches and their transform: room for the last tile row's whole groups."""
    return TB + g.TL - g.TW


cdef inline Py_ssize_t _scratch_end(const Wino* g, bint kgrad) noexcept nogil:
    """Per-thread scratch: row buffer, patch and transform buffers, V, M (or dM), then the forward's zero-field
    map (a rows of Wp per tile row of a block) or dX's two lane masks, or the kernel gradient's dU."""
    if kgrad:
        return g.zbuf + _round16(g.a * g.a * g.C_out * g.C_in)
    return g.zbuf + _round16(max(g.a * g.Wp * (g.TB // g.TW), 2 * (g.TB + g.TL)))


# ---- blocks of tile rows: global tile row R = n * TH + th ------------------------------------------

cdef inline Py_ssize_t _nblocks(Py_ssize_t N, const Wino* g) noexcept nogil:
    """Blocks of N samples: when a sample has at most BR tile rows, as many groups of whole samples as it takes
    to hold at most BR // TH each, cut evenly (N = 32 by 6: 5 or 6 each, not a last block of 2, which the
    threads would wait for); else bands of BR tile rows of one sample."""
    if g.BR >= g.TH:
        return (N + g.BR // g.TH - 1) // (g.BR // g.TH)
    return N * ((g.TH + g.BR - 1) // g.BR)


cdef inline void _block(Py_ssize_t k, Py_ssize_t N, const Wino* g, Py_ssize_t* r0, Py_ssize_t* r1) noexcept nogil:
    """[r0, r1): the global tile rows of block k of N samples."""
    cdef Py_ssize_t nb, n, b
    if g.BR >= g.TH:
        nb = _nblocks(N, g)
        r0[0] = (k * N) // nb * g.TH
        r1[0] = ((k + 1) * N) // nb * g.TH
    else:
        nb = (g.TH + g.BR - 1) // g.BR
        n = k // nb
        b = k - n * nb
        r0[0] = n * g.TH + b * g.BR
        r1[0] = n * g.TH + min(g.TH, (b + 1) * g.BR)


cdef inline Py_ssize_t _chunk_nblocks(Py_ssize_t c, Py_ssize_t nchunk, Py_ssize_t N, const Wino* g) noexcept nogil:
    """Blocks of chunk c of N samples cut into nchunk (samples [c N / nchunk, (c + 1) N / nchunk))."""
    return _nblocks(((c + 1) * N) // nchunk - (c * N) // nchunk, g)


cdef inline void _chunk_block(Py_ssize_t k, Py_ssize_t c, Py_ssize_t nchunk, Py_ssize_t N, const Wino* g,
                              Py_ssize_t* r0, Py_ssize_t* r1) noexcept nogil:
    """[r0, r1): the global tile rows of block k of chunk c."""
    cdef Py_ssize_t s0 = (c * N) // nchunk
    _block(k, ((c + 1) * N) // nchunk - s0, g, r0, r1)
    r0[0] += s0 * g.TH
    r1[0] += s0 * g.TH


# ---- the 1-D transforms over n lanes (a block's tiles), and the gathers between rows and lanes: cnn_wino.h ----

cdef extern from "cnn_wino.h" nogil:
    void _bt_f "cnn_ext_wino_bt_f"(Py_ssize_t m, const float* s, Py_ssize_t ss, float* o, Py_ssize_t os, Py_ssize_t n)
    void _bt_d "cnn_ext_wino_bt_d"(Py_ssize_t m, const double* s, Py_ssize_t ss, double* o, Py_ssize_t os,
                                   Py_ssize_t n)
    void _at2_f "cnn_ext_wino_at2_f"(Py_ssize_t m, const float* s, Py_ssize_t ss, float* o, Py_ssize_t os,
                                     Py_ssize_t n)
    void _at2_d "cnn_ext_wino_at2_d"(Py_ssize_t m, const double* s, Py_ssize_t ss, double* o, Py_ssize_t os,
                                     Py_ssize_t n)
    void _at_t_f "cnn_ext_wino_at_t_f"(Py_ssize_t m, const float* s, Py_ssize_t ss, float* o, Py_ssize_t os,
                                       Py_ssize_t n)
    void _at_t_d "cnn_ext_wino_at_t_d"(Py_ssize_t m, const double* s, Py_ssize_t ss, double* o, Py_ssize_t os,
                                       Py_ssize_t n)
    void _split_f "cnn_ext_wino_split_f"(Py_ssize_t m, Py_ssize_t k, const float* row, float* o, Py_ssize_t os,
                                         Py_ssize_t n)
    void _split_d "cnn_ext_wino_split_d"(Py_ssize_t m, Py_ssize_t k, const double* row, double* o, Py_ssize_t os,
                                         Py_ssize_t n)
    bint _merge_row_f "cnn_ext_wino_merge_row_f"(Py_ssize_t m, const float* s, Py_ssize_t ss, float b, float* row,
                                                 float* y, Py_ssize_t OW, Py_ssize_t n)
    bint _merge_row_d "cnn_ext_wino_merge_row_d"(Py_ssize_t m, const double* s, Py_ssize_t ss, double b,
                                                 double* row, double* y, Py_ssize_t OW, Py_ssize_t n)
    void _copy_f "cnn_ext_wino_copy_f"(const float* s, float* o, Py_ssize_t n)
    void _copy_d "cnn_ext_wino_copy_d"(const double* s, double* o, Py_ssize_t n)
    void _copy_max_abs_f "cnn_ext_wino_copy_max_abs_f"(const float* s, float* o, float* acc, Py_ssize_t n)
    void _copy_max_abs_d "cnn_ext_wino_copy_max_abs_d"(const double* s, double* o, double* acc, Py_ssize_t n)
    void _g_f "cnn_ext_wino_g_f"(Py_ssize_t m, const float* k, float* u, Py_ssize_t P, Py_ssize_t n)
    void _g_d "cnn_ext_wino_g_d"(Py_ssize_t m, const double* k, double* u, Py_ssize_t P, Py_ssize_t n)
    void _split_bt_f "cnn_ext_wino_split_bt_f"(const float* row, float* o, Py_ssize_t os, Py_ssize_t n)
    void _split_at_t_f "cnn_ext_wino_split_at_t_f"(const float* row, float* o, Py_ssize_t os, Py_ssize_t n)
    void _split_bt_d "cnn_ext_wino_split_bt_d"(const double* row, double* o, Py_ssize_t os, Py_ssize_t n)
    void _split_at_t_d "cnn_ext_wino_split_at_t_d"(const double* row, double* o, Py_ssize_t os, Py_ssize_t n)
    void _bt_t_f "cnn_ext_wino_bt_t_f"(Py_ssize_t m, const float* s, Py_ssize_t ss, float* o, Py_ssize_t os,
                                       Py_ssize_t n)
    void _bt_t_d "cnn_ext_wino_bt_t_d"(Py_ssize_t m, const double* s, Py_ssize_t ss, double* o, Py_ssize_t os,
                                       Py_ssize_t n)
    void _overlap_f "cnn_ext_wino_overlap_f"(Py_ssize_t m, float* s, Py_ssize_t ss, const float* mask, Py_ssize_t d,
                                             Py_ssize_t n)
    void _overlap_d "cnn_ext_wino_overlap_d"(Py_ssize_t m, double* s, Py_ssize_t ss, const double* mask,
                                             Py_ssize_t d, Py_ssize_t n)
    enum: WINO_SPLIT_BT "CNN_EXT_WINO_SPLIT_BT"
    enum: WINO_GROUP "CNN_EXT_WINO_GROUP"


cdef inline void _bt(Py_ssize_t m, const floating* s, Py_ssize_t ss, floating* o, Py_ssize_t os,
                     Py_ssize_t n) noexcept nogil:
    """o[c] = Σ_ρ Bᵀ[c, ρ] s[ρ], lanes l < n: the input transform along one axis."""
    if floating is float:
        _bt_f(m, s, ss, o, os, n)
    else:
        _bt_d(m, s, ss, o, os, n)


cdef inline void _at2(Py_ssize_t m, const floating* s, Py_ssize_t ss, floating* o, Py_ssize_t os,
                      Py_ssize_t n) noexcept nogil:
    """o[r*m + c] = (Aᵀ S A)[r, c], S[η, ν] = s[η (m + 2) + ν]: the 2-D output transform of one channel."""
    if floating is float:
        _at2_f(m, s, ss, o, os, n)
    else:
        _at2_d(m, s, ss, o, os, n)


cdef inline void _at_t(Py_ssize_t m, const floating* s, Py_ssize_t ss, floating* o, Py_ssize_t os,
                       Py_ssize_t n) noexcept nogil:
    """o[ξ] = Σ_r Aᵀ[r, ξ] s[r]: the adjoint of the output transform."""
    if floating is float:
        _at_t_f(m, s, ss, o, os, n)
    else:
        _at_t_d(m, s, ss, o, os, n)


cdef inline void _bt_t(Py_ssize_t m, const floating* s, Py_ssize_t ss, floating* o, Py_ssize_t os,
                       Py_ssize_t n) noexcept nogil:
    """o[ρ] = Σ_ξ Bᵀ[ξ, ρ] s[ξ]: the adjoint of the input transform."""
    if floating is float:
        _bt_t_f(m, s, ss, o, os, n)
    else:
        _bt_t_d(m, s, ss, o, os, n)


cdef inline void _g(Py_ssize_t m, const floating* k, floating* u, Py_ssize_t P, Py_ssize_t n) noexcept nogil:
    """u[ξ*P + p] = (G k_p Gᵀ)[ξ] for the n pairs p of 3x3 kernels k_p = k[9p, 9p + 9)."""
    if floating is float:
        _g_f(m, k, u, P, n)
    else:
        _g_d(m, k, u, P, n)


cdef inline void _split(Py_ssize_t m, Py_ssize_t k, const floating* row, floating* o, Py_ssize_t os,
                        Py_ssize_t n) noexcept nogil:
    """o[c*os + t] = row[t*m + c] for c < k, t < n (rounded up to whole groups)."""
    if floating is float:
        _split_f(m, k, row, o, os, n)
    else:
        _split_d(m, k, row, o, os, n)


cdef inline void _copy(const floating* s, floating* o, Py_ssize_t n) noexcept nogil:
    """o[l] = s[l] for l < n: a short row."""
    if floating is float:
        _copy_f(s, o, n)
    else:
        _copy_d(s, o, n)


cdef inline void _copy_max_abs(const floating* s, floating* o, floating* acc, Py_ssize_t n) noexcept nogil:
    """o[l] = s[l], acc[l] = max(acc[l], |s[l]|) for l < n."""
    if floating is float:
        _copy_max_abs_f(s, o, acc, n)
    else:
        _copy_max_abs_d(s, o, acc, n)


cdef inline void _split_bt(const floating* row, floating* o, Py_ssize_t os, Py_ssize_t n) noexcept nogil:
    """o[ξ*os + t] = Σ_c Bᵀ[ξ, c] row[4t + c] (F(4x4, 3x3), t < n in whole groups): split and transformed along
    columns at once (builds with WINO_SPLIT_BT only)."""
    if floating is float:
        _split_bt_f(row, o, os, n)
    else:
        _split_bt_d(row, o, os, n)


cdef inline void _split_at_t(const floating* row, floating* o, Py_ssize_t os, Py_ssize_t n) noexcept nogil:
    """o[ξ*os + t] = Σ_c Aᵀ[c, ξ] row[4t + c]: dE_dY's tiles split and transformed along columns at once."""
    if floating is float:
        _split_at_t_f(row, o, os, n)
    else:
        _split_at_t_d(row, o, os, n)


cdef inline void _overlap(Py_ssize_t m, floating* s, Py_ssize_t ss, const floating* mask, Py_ssize_t d,
                          Py_ssize_t n) noexcept nogil:
    """s[c*ss + l] += s[(m + c)*ss + l - d] for c < 2, l < n where mask[l] != 0: patches overlapping by 2."""
    if floating is float:
        _overlap_f(m, s, ss, mask, d, n)
    else:
        _overlap_d(m, s, ss, mask, d, n)


cdef inline bint _merge_row(Py_ssize_t m, const floating* s, Py_ssize_t ss, floating b, floating* row, floating* y,
                            Py_ssize_t OW, Py_ssize_t n) noexcept nogil:
    """y[t*m + c] = b + s[c*ss + t] for c < m, t < n, within the OW columns of y (row: a buffer of whole groups of
    tiles); whether all are finite."""
    if floating is float:
        return _merge_row_f(m, s, ss, b, row, y, OW, n)
    else:
        return _merge_row_d(m, s, ss, b, row, y, OW, n)


# ---- the transforms of one block -----------------------------------------------------------------
# Tile t of a block is lane t of every plane, so the transforms run over whole vectors of tiles whatever the
# map's width (one tile row of a 28x28 map has only 7 tiles): a 2-D transform is a pass per axis over the
# block's planes (P[ρ, c, t]: a channel's patches, gathered first; the F(4x4, 3x3) AVX2 split transforms the
# columns as it gathers), but for the forward's output transform, which keeps each tile in registers.

cdef void _input_channel(const floating* x, const Wino* g, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t TB,
                         Py_ssize_t i, floating* scratch, floating* V, floating* Z) noexcept nogil:
    """V[ξ, i, t] = (Bᵀ d B)[ξ] for channel i and the tiles t of global tile rows [r0, r1) (row-major, TW per row),
    d zero-padded; Z (unless NULL): the tile rows' padded input rows, max |x| over the channels so far."""
    cdef Py_ssize_t R, n, th, rho, r, t0, xi
    cdef Py_ssize_t a = g.a, m = g.m, TW = g.TW, Wp = g.Wp, PB = _pitch(g, TB)
    cdef bint fused = WINO_SPLIT_BT and m == 4
    cdef floating* P = scratch + g.pbuf
    cdef floating* E = scratch + g.ebuf
    cdef floating* row
    memset(scratch + g.rowbuf, 0, a * g.RL * sizeof(floating))  # the rows' pads: zero for every tile row
    for R in range(r0, r1):
        n = R // g.TH
        th = R - n * g.TH
        t0 = (R - r0) * TW
        if i + 1 < g.C_in:  # the next channel's rows: each tile row's are a short run the prefetchers miss
            r = max(0, th * m - g.PH)
            if r < min(g.H, th * m - g.PH + a):
                _prefetch(x + ((n * g.C_in + i + 1) * g.H + r) * g.W,
                          (min(g.H, th * m - g.PH + a) - r) * g.W * sizeof(floating), 0)
        for rho in range(a):  # the tile row's a input rows, columns [PW, PW + W) of TL m + 2
            r = th * m - g.PH + rho
            row = scratch + g.rowbuf + rho * g.RL + g.PW
            if r < 0 or r >= g.H:
                memset(row, 0, g.W * sizeof(floating))
            elif Z != NULL:
                _copy_max_abs(x + ((n * g.C_in + i) * g.H + r) * g.W, row, Z + ((R - r0) * a + rho) * Wp + g.PW, g.W)
            else:
                _copy(x + ((n * g.C_in + i) * g.H + r) * g.W, row, g.W)
        for rho in range(a):  # after all the copies: loads right after stores would stall
            if fused:  # split and transformed along columns at once: E[ρ, ξ, t0 + tw]
                _split_bt(scratch + g.rowbuf + rho * g.RL, E + rho * a * PB + t0, PB, TW)
            else:  # P[ρ, c, t0 + tw]; lanes past TW: the next tile row's
                _split(m, a, scratch + g.rowbuf + rho * g.RL, P + rho * a * PB + t0, PB, TW)
    if not fused:
        for rho in range(a):  # along columns: E[ρ, ξ, t]
            _bt(m, P + rho * a * PB, PB, E + rho * a * PB, PB, TB)
    for xi in range(a):  # along rows: V[η * a + ξ, i, t]
        _bt(m, E + xi * PB, a * PB, V + (xi * g.C_in + i) * TB, a * g.C_in * TB, TB)


cdef Py_ssize_t _zero_fields(const Wino* g, Py_ssize_t rows, floating* Z) noexcept nogil:
    """Z[(r * a + p) * Wp + q] = 1 where output row p, column q of tile row r has a 3x3 field of zeros in every
    channel, else 0, in place over the max |x| map (row p's field starts on row p); returns how many."""
    cdef Py_ssize_t r, p, q, u, v, zeros = 0
    cdef floating* z
    cdef floating big
    for r in range(rows):
        for p in range(g.m):
            z = Z + (r * g.a + p) * g.Wp
            for q in range(g.Wp - 2):
                big = 0
                for u in range(3):
                    for v in range(3):
                        big = max(big, z[u * g.Wp + q + v])
                z[q] = 1 if big == 0 else 0
                zeros += big == 0
    return zeros


cdef bint _forward_block(const floating* x, const floating* u, const floating* b, floating* y, const Wino* g,
                         Py_ssize_t r0, Py_ssize_t r1, bint exact_zeros, floating* scratch) noexcept nogil:
    """y = b + Aᵀ [U ⊙ V] A for the output tiles of global tile rows [r0, r1); whether all are finite.
    exact_zeros: outputs whose 3x3 field is zero in every channel are b exactly (the transforms leave rounding
    residuals of the tile there)."""
    cdef Py_ssize_t TB = (r1 - r0) * g.TW, a = g.a, m = g.m, TW = g.TW
    cdef Py_ssize_t R, n, th, i, j, xi, c, p, q, t0, AA = a * a, zeros = 0
    cdef floating* V = scratch + g.vbuf
    cdef floating* M = scratch + g.mbuf
    cdef floating* O = scratch + g.pbuf
    cdef floating* Z = scratch + g.zbuf if exact_zeros else NULL
    cdef floating* rowbuf = scratch + g.rowbuf
    cdef const floating* zrow
    cdef floating* yrow
    cdef floating bj
    cdef bint finite = True
    if exact_zeros:
        for c in range((r1 - r0) * a * g.Wp):
            Z[c] = 0
    for i in range(g.C_in):
        _input_channel(x, g, r0, r1, TB, i, scratch, V, Z)
    if exact_zeros:
        zeros = _zero_fields(g, r1 - r0, Z)
    for xi in range(AA):  # M[ξ] (C_out x TB) = U[ξ] (C_out x C_in) @ V[ξ] (C_in x TB)
        _gemm_rm(False, False, <int>g.C_out, <int>TB, <int>g.C_in, <floating>1, u + xi * g.C_out * g.C_in,
                 <int>g.C_in, V + xi * g.C_in * TB, <int>TB, <floating>0, M + xi * g.C_out * TB, <int>TB)
    for j in range(g.C_out):
        _at2(m, M + j * TB, g.C_out * TB, O, TB, TB)  # O[r, c, t]
        bj = b[j]
        for R in range(r0, r1):
            n = R // g.TH
            th = R - n * g.TH
            t0 = (R - r0) * TW
            for p in range(min(m, g.OH - th * m)):
                yrow = y + ((n * g.C_out + j) * g.OH + th * m + p) * g.OW
                finite &= _merge_row(m, O + p * m * TB + t0, TB, bj, rowbuf, yrow, g.OW, TW)
                if zeros:
                    zrow = Z + ((R - r0) * a + p) * g.Wp
                    for q in range(g.OW):
                        if zrow[q] != 0:
                            yrow[q] = bj
    return finite


cdef Py_ssize_t _forward_part(const floating* x, const floating* u, const floating* b, floating* y, const Wino* g,
                              Py_ssize_t N, Py_ssize_t lo, Py_ssize_t hi, bint exact_zeros,
                              floating* scratch) noexcept nogil:
    """_forward_block for blocks [lo, hi); how many have a non-finite output."""
    cdef Py_ssize_t k, r0, r1, bad = 0
    for k in range(lo, hi):
        _block(k, N, g, &r0, &r1)
        bad += not _forward_block(x, u, b, y, g, r0, r1, exact_zeros, scratch)
    return bad


cdef void _dy_channel(const floating* dy, const Wino* g, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t TB,
                      Py_ssize_t j, floating* scratch, floating* dM) noexcept nogil:
    """dM[ξ, j, t] = (A dY Aᵀ)[ξ] for channel j and the tiles t of global tile rows [r0, r1), dY zero past the map."""
    cdef Py_ssize_t a = g.a, m = g.m, TW = g.TW, PB = _pitch(g, TB)
    cdef Py_ssize_t R, n, th, xi, p, c, tw, t0, rows
    cdef bint fused = WINO_SPLIT_BT and m == 4
    cdef Py_ssize_t split = a if fused else m  # rows of a tile's columns: transformed (fused) or as they are
    cdef floating* rowbuf = scratch + g.rowbuf
    cdef floating* D = scratch + g.pbuf
    cdef floating* Z = scratch + g.ebuf
    cdef floating* dst
    memset(rowbuf, 0, m * g.RL * sizeof(floating))  # zeros past the map, to whole groups of tiles
    for R in range(r0, r1):  # D[p, c, t]: the tiles' m x m values of dE_dY (fused: Z[p, ξ, t], below)
        n = R // g.TH
        th = R - n * g.TH
        t0 = (R - r0) * TW
        rows = min(m, g.OH - th * m)
        for p in range(rows):
            _copy(dy + ((n * g.C_out + j) * g.OH + th * m + p) * g.OW, rowbuf + p * g.RL, g.OW)
        for p in range(m):  # after all the copies: loads right after (masked) stores would stall
            dst = (Z + p * a * PB if fused else D + p * m * PB) + t0
            if p >= rows:
                for c in range(split):
                    for tw in range(TW):
                        dst[c * PB + tw] = 0
            elif fused:  # split and transformed along columns at once
                _split_at_t(rowbuf + p * g.RL, dst, PB, TW)
            else:
                _split(m, m, rowbuf + p * g.RL, dst, PB, TW)
    if not fused:
        for p in range(m):  # along columns: Z[r, ξ, t]
            _at_t(m, D + p * m * PB, PB, Z + p * a * PB, PB, TB)
    for xi in range(a):  # along rows: dM[η * a + ξ, j, t]
        _at_t(m, Z + xi * PB, a * PB, dM + (xi * g.C_out + j) * TB, a * g.C_out * TB, TB)


cdef bint _dx_block(const floating* dy, const floating* u, floating* dx, const Wino* g, Py_ssize_t r0,
                    Py_ssize_t r1, floating* scratch) noexcept nogil:
    """dX of the samples of global tile rows [r0, r1) (whole samples; g: the forward's geometry, its tiles over
    dE_dY): the adjoint of the forward, dX = Σ_tiles B [Uᵀ (A dY Aᵀ)] Bᵀ, each tile's (m+2)² patch overlapping
    its neighbours' by 2 rows and columns in the zero-padded map. The overlaps are added in lanes (the left
    neighbour's columns, then the row above's rows), so each tile's m x m core holds its part of the map, and the
    map's window is written row by row; whether all of it is finite. It has the forward's tiles, where dX as the
    forward of padded dE_dY tiles the larger input map (14x14 from 12x12: 16 tiles instead of 9)."""
    cdef Py_ssize_t TB = (r1 - r0) * g.TW, a = g.a, m = g.m, TW = g.TW, TH = g.TH, PB = _pitch(g, TB)
    cdef Py_ssize_t t, i, j, xi, rho, r, s, th, x, zc, tw, AA = a * a, C_in = g.C_in, C_out = g.C_out
    cdef Py_ssize_t cores = min(g.W, TW * m) if g.PW == 0 else 0  # columns a row's tiles write straight to dX
    cdef floating* W = scratch + g.vbuf
    cdef floating* dM = scratch + g.mbuf
    cdef floating* E = scratch + g.ebuf
    cdef floating* P = scratch + g.pbuf
    cdef floating* left = scratch + g.zbuf  # 1 in the lanes of tiles with a tile on their left, else 0
    cdef floating* above = left + PB  # ... with a tile above them
    cdef const floating* src
    cdef floating* dxrow
    cdef floating v
    cdef bint finite = True
    for t in range(TB):
        left[t] = t % TW != 0
        above[t] = (t // TW) % TH != 0
    for j in range(C_out):
        _dy_channel(dy, g, r0, r1, TB, j, scratch, dM)
    for xi in range(AA):  # W[ξ] (C_in x TB) = U[ξ]ᵀ (C_in x C_out) @ dM[ξ] (C_out x TB)
        _gemm_rm(True, False, <int>C_in, <int>TB, <int>C_out, <floating>1, u + xi * C_out * C_in, <int>C_in,
                 dM + xi * C_out * TB, <int>TB, <floating>0, W + xi * C_in * TB, <int>TB)
    for i in range(C_in):
        for xi in range(a):  # along rows: E[ρ, ξ, t]
            _bt_t(m, W + (xi * C_in + i) * TB, a * C_in * TB, E + xi * PB, a * PB, TB)
        for rho in range(a):  # along columns: P[ρ, c, t], then the left neighbour's last 2 columns added
            _bt_t(m, E + rho * a * PB, PB, P + rho * a * PB, PB, TB)
            _overlap(m, P + rho * a * PB, PB, left, 1, TB)
        for x in range(a):  # then the last 2 rows of the tile above (its left neighbour's included)
            _overlap(m, P + x * PB, a * PB, above, TW, TB)
        for s in range((r1 - r0) // TH):  # map row r + PH: core row rho of tile row th, or the last one's rows m, m + 1
            for r in range(g.H):
                th = min((r + g.PH) // m, TH - 1)
                rho = r + g.PH - th * m
                src = P + rho * a * PB + (s * TH + th) * TW
                dxrow = dx + (((r0 // TH + s) * C_in + i) * g.H + r) * g.W
                if cores:
                    finite &= _merge_row(m, src, PB, 0, scratch + g.rowbuf, dxrow, cores, TW)
                for x in range(cores, g.W):  # the columns past the tiles' cores (those of the last tile's patch)
                    zc = x + g.PW
                    tw = min(zc // m, TW - 1)
                    v = src[(zc - tw * m) * PB + tw]
                    dxrow[x] = v
                    finite &= v - v == 0
    return finite


cdef Py_ssize_t _dx_part(const floating* dy, const floating* u, floating* dx, const Wino* g, Py_ssize_t N,
                         Py_ssize_t lo, Py_ssize_t hi, floating* scratch) noexcept nogil:
    """_dx_block for blocks [lo, hi); how many have a non-finite output."""
    cdef Py_ssize_t k, r0, r1, bad = 0
    for k in range(lo, hi):
        _block(k, N, g, &r0, &r1)
        bad += not _dx_block(dy, u, dx, g, r0, r1, scratch)
    return bad


# The kernel gradient's V, dM and dU live in a scratch row `base`: a thread's own when threads take whole chunks,
# row 0's for all of them when they share each block of a chunk.

cdef void _kgrad_transforms(const floating* dy, const floating* x, const Wino* g, Py_ssize_t r0, Py_ssize_t r1,
                            Py_ssize_t lo, Py_ssize_t hi, floating* scratch, floating* base) noexcept nogil:
    """Channels [lo, hi) of the block's transforms: input channels first (into V), then dE_dY's (into dM)."""
    cdef Py_ssize_t q, TB = (r1 - r0) * g.TW
    for q in range(lo, hi):
        if q < g.C_in:
            _input_channel(x, g, r0, r1, TB, q, scratch, base + g.vbuf, NULL)
        else:
            _dy_channel(dy, g, r0, r1, TB, q - g.C_in, scratch, base + g.mbuf)


cdef void _kgrad_products(const Wino* g, Py_ssize_t TB, Py_ssize_t lo, Py_ssize_t hi, floating beta,
                          floating* base) noexcept nogil:
    """dU[ξ] (C_out x C_in) = dM[ξ] (C_out x TB) @ V[ξ]ᵀ (TB x C_in) + beta dU[ξ], for ξ in [lo, hi)."""
    cdef Py_ssize_t xi
    cdef floating* V = base + g.vbuf
    cdef floating* dM = base + g.mbuf
    cdef floating* dU = base + g.zbuf
    for xi in range(lo, hi):
        _gemm_rm(False, True, <int>g.C_out, <int>g.C_in, <int>TB, <floating>1, dM + xi * g.C_out * TB, <int>TB,
                 V + xi * g.C_in * TB, <int>TB, beta, dU + xi * g.C_out * g.C_in, <int>g.C_in)


cdef enum:
    FOLD_ROWS = 512  # rows of dK per item of the fold: fixed, so its products do not follow the thread count
    CHUNKS_PER_THREAD = 4  # chunks per thread from which threads take whole chunks (balanced within 1/8)


cdef void _kgrad_fold(const Wino* g, Py_ssize_t lo, Py_ssize_t hi, const floating* gg, floating* base,
                      floating* out) noexcept nogil:
    """out[r] (9 taps) = Σ_ξ dU[ξ, r] GG[ξ] for the rows r (j * C_in + i) of items [lo, hi) of FOLD_ROWS rows."""
    cdef Py_ssize_t k, r0, r1, AA = g.a * g.a, CC = g.C_out * g.C_in
    cdef floating* dU = base + g.zbuf
    for k in range(lo, hi):
        r0 = k * FOLD_ROWS
        r1 = min(CC, r0 + FOLD_ROWS)
        _gemm_rm(True, False, <int>(r1 - r0), 9, <int>AA, <floating>1, dU + r0, <int>CC, gg, 9, <floating>0,
                 out + r0 * 9, 9)


cdef void _kgrad_chunks(const floating* dy, const floating* x, const floating* gg, floating* partial,
                        const Wino* g, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nchunk, Py_ssize_t N,
                        floating* scratch) noexcept nogil:
    """partial[c] for the chunks c in [c0, c1), each by one thread, in its own scratch row."""
    cdef Py_ssize_t c, k, r0, r1, nfold = (g.C_out * g.C_in + FOLD_ROWS - 1) // FOLD_ROWS
    for c in range(c0, c1):
        for k in range(_chunk_nblocks(c, nchunk, N, g)):
            _chunk_block(k, c, nchunk, N, g, &r0, &r1)
            _kgrad_transforms(dy, x, g, r0, r1, 0, g.C_in + g.C_out, scratch, scratch)
            _kgrad_products(g, (r1 - r0) * g.TW, 0, g.a * g.a, 0 if k == 0 else 1, scratch)
        _kgrad_fold(g, 0, nfold, gg, scratch, partial + c * g.C_out * g.C_in * 9)


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext._runners only)
# ---------------------------------------------------------------------------------------------------

WHOLE_CHUNKS = CHUNKS_PER_THREAD  # chunks per thread of a kernel gradient call from which threads take whole chunks


def winograd_scratch_size(Py_ssize_t C_in, Py_ssize_t C_out, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t m,
                          Py_ssize_t BR, bint kgrad):
    """Elements of one thread's scratch row for F(m x m, 3 x 3) with BR tile rows per block."""
    cdef Wino g = _wino(C_in, OH + 2, OW + 2, C_out, OH, OW, 0, 0, m, BR)
    return _scratch_end(&g, kgrad)


def winograd_kernel_transform(const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, 3, 3)
                              floating[:, :, ::1] u,               # OUT ((m+2)², C_out, C_in)
                              Py_ssize_t m, int num_threads):
    """u[ξ, j, i] = (G k[j, i] Gᵀ)[ξ], computed in double and rounded once."""
    cdef Py_ssize_t t, P = k.shape[0] * k.shape[1]
    cdef Py_ssize_t nparts = _nparts(P, num_threads)
    if P == 0:
        return
    with nogil:
        if nparts == 1:
            _g(m, &k[0, 0, 0, 0], &u[0, 0, 0], P, P)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _g(m, &k[0, 0, 0, 0] + 9 * _part(P, t, nparts), &u[0, 0, 0] + _part(P, t, nparts), P,
                   _part(P, t + 1, nparts) - _part(P, t, nparts))


def conv2d_forward_winograd(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                            const floating[:, :, ::1] u,         # IN  ((m+2)², C_out, C_in): G k Gᵀ
                            const floating[::1] b,               # IN  (C_out,)
                            floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                            floating[:, ::1] scratch,            # TMP (threads, winograd_scratch_size(...))
                            Py_ssize_t m, Py_ssize_t BR, Py_ssize_t PH, Py_ssize_t PW, int num_threads,
                            bint exact_zeros=True):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) (3x3, stride 1, zero padding PH, PW) by F(m x m, 3 x 3);
    returns whether y is finite. exact_zeros: b[j] exactly where the 3x3 field is zero in every channel."""
    cdef Py_ssize_t t, N = x.shape[0], bad = 0
    cdef Wino g = _wino(x.shape[1], x.shape[2], x.shape[3], y.shape[1], y.shape[2], y.shape[3], PH, PW, m, BR)
    cdef Py_ssize_t nb = _nblocks(N, &g), nparts = _nparts(nb, num_threads)
    if N == 0:
        return True
    with nogil:
        if nparts == 1:
            bad = _forward_part(&x[0, 0, 0, 0], &u[0, 0, 0], &b[0], &y[0, 0, 0, 0], &g, N, 0, nb, exact_zeros,
                                &scratch[0, 0])
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                bad += _forward_part(&x[0, 0, 0, 0], &u[0, 0, 0], &b[0], &y[0, 0, 0, 0], &g, N,
                                     _part(nb, t, nparts), _part(nb, t + 1, nparts), exact_zeros,
                                     &scratch[threadid(), 0])
    return bad == 0


def conv2d_input_gradient_winograd(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                                   const floating[:, :, ::1] u,         # IN  ((m+2)², C_out, C_in): G k Gᵀ
                                   floating[:, :, :, ::1] dx,           # OUT (N, C_in, H, W)
                                   floating[:, ::1] scratch,            # TMP (threads, winograd_scratch_size(...))
                                   Py_ssize_t m, Py_ssize_t BR, Py_ssize_t PH, Py_ssize_t PW, int num_threads):
    """dx[n, i] = Σ_j the adjoint of xcorr(., k[j, i]) (3x3, stride 1, zero padding PH, PW) applied to dy[n, j],
    by the adjoint of the forward's F(m x m, 3 x 3) on its own tiles; blocks of whole samples (BR tile rows, at
    least a sample's). Returns whether dx is finite."""
    cdef Py_ssize_t t, N = dy.shape[0], bad = 0
    cdef Wino g = _wino(dx.shape[1], dx.shape[2], dx.shape[3], dy.shape[1], dy.shape[2], dy.shape[3], PH, PW, m, BR)
    cdef Py_ssize_t nb = _nblocks(N, &g), nparts = _nparts(nb, num_threads)
    if BR < g.TH:
        raise ValueError(f"BR={BR}: the blocks must hold whole samples ({g.TH} tile rows)")
    if N == 0:
        return True
    with nogil:
        if nparts == 1:
            bad = _dx_part(&dy[0, 0, 0, 0], &u[0, 0, 0], &dx[0, 0, 0, 0], &g, N, 0, nb, &scratch[0, 0])
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                bad += _dx_part(&dy[0, 0, 0, 0], &u[0, 0, 0], &dx[0, 0, 0, 0], &g, N, _part(nb, t, nparts),
                                _part(nb, t + 1, nparts), &scratch[threadid(), 0])
    return bad == 0


def conv2d_kernel_gradient_winograd(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                                    const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                                    floating[:, ::1] partial,            # OUT (nchunk, C_out*C_in*9)
                                    floating[:, ::1] scratch,            # TMP (threads, winograd_scratch_size(...))
                                    const floating[:, ::1] gg,           # IN  ((m+2)², 9): G ⊗ G
                                    Py_ssize_t m, Py_ssize_t BR, Py_ssize_t PH, Py_ssize_t PW, int num_threads,
                                    Py_ssize_t c_lo=0, Py_ssize_t c_hi=-1):
    """partial[c] = Σ_{n in chunk c} xcorr(x[n, i], dy[n, j]) (3x3, stride 1, zero padding) by F(m x m, 3 x 3),
    for the fixed chunks c in [c_lo, c_hi) of the nchunk (c_hi = -1: all; the caller adds them in order).

    With CHUNKS_PER_THREAD chunks per thread, threads take whole chunks (each block stays in one core's cache);
    with fewer, they share each block of a chunk: its transforms split by channel, its products by transform
    point ξ, the fold into taps by fixed groups of rows. Either way a chunk is the same products in the same
    order, so no sum depends on the thread count."""
    cdef Py_ssize_t N = x.shape[0], nchunk = partial.shape[0], t, c, k, r0, r1, np_t, np_p, np_f
    c_hi = _chunk_range(c_lo, c_hi, nchunk)
    cdef Wino g = _wino(x.shape[1], x.shape[2], x.shape[3], dy.shape[1], dy.shape[2], dy.shape[3], PH, PW, m, BR)
    cdef Py_ssize_t nchan = g.C_in + g.C_out, AA = g.a * g.a, nfold = (g.C_out * g.C_in + FOLD_ROWS - 1) // FOLD_ROWS
    cdef Py_ssize_t nparts = _nparts(c_hi - c_lo, num_threads)
    if N == 0:
        partial[:, :] = 0
        return
    if num_threads <= 1:  # not nparts == 1: the threads of one chunk share its blocks (below)
        with nogil:
            _kgrad_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &gg[0, 0], &partial[0, 0], &g, c_lo, c_hi, nchunk, N,
                          &scratch[0, 0])
    elif c_hi - c_lo >= CHUNKS_PER_THREAD * num_threads:
        with nogil:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _kgrad_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &gg[0, 0], &partial[0, 0], &g,
                              c_lo + _part(c_hi - c_lo, t, nparts), c_lo + _part(c_hi - c_lo, t + 1, nparts),
                              nchunk, N, &scratch[threadid(), 0])
    else:
        np_t, np_p, np_f = _nparts(nchan, num_threads), _nparts(AA, num_threads), _nparts(nfold, num_threads)
        with nogil:
            for c in range(c_lo, c_hi):
                for k in range(_chunk_nblocks(c, nchunk, N, &g)):
                    _chunk_block(k, c, nchunk, N, &g, &r0, &r1)
                    for t in prange(np_t, schedule='dynamic', num_threads=_team(np_t, num_threads)):
                        _kgrad_transforms(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &g, r0, r1, _part(nchan, t, np_t),
                                          _part(nchan, t + 1, np_t), &scratch[threadid(), 0], &scratch[0, 0])
                    for t in prange(np_p, schedule='dynamic', num_threads=_team(np_p, num_threads)):
                        _kgrad_products(&g, (r1 - r0) * g.TW, _part(AA, t, np_p), _part(AA, t + 1, np_p),
                                        0 if k == 0 else 1, &scratch[0, 0])
                for t in prange(np_f, schedule='dynamic', num_threads=_team(np_f, num_threads)):
                    _kgrad_fold(&g, _part(nfold, t, np_f), _part(nfold, t + 1, np_f), &gg[0, 0], &scratch[0, 0],
                                &partial[c, 0])
