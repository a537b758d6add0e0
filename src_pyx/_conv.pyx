# cython: language_level=3
"""Batched 2-D cross-correlation (NCHW input, OIHW kernels) and its three gradients.

cnn_ext/ops.py validates every argument, picks the method and allocates outputs and scratch; each `def`
here takes typed memoryviews, releases the GIL for the whole loop and never raises.
Two methods per operation:
  * direct  (stride 1): forward and input gradient: the wide-row kernel (register tiles along the flat index
            of a per-thread zero-padded copy of the sample, any padding; dX is the forward of padded dy with
            rotated kernels), its shifted-copies variant (KW shifted copies of the sample: no wasted
            columns, tiles accumulate into y), or the channel-vector kernel (vectors over output channels) on small maps,
            or for one output channel (dX of a one-input-channel layer) the row-band kernel (4 output rows per tile);
            the unpadded forward also has row tiles; dK row loops (no padding);
  * gemm    (any stride / padding): per-sample im2col / col2im in a per-thread slab + one BLAS call
            (scipy.linalg.cython_blas, held to one thread by the caller while OpenMP runs).
The kernel gradient also has a register-tiled direct kernel (stride 1, any padding): see its section.
Samples are split over OpenMP threads; reductions over the batch (dK, dB) go through a fixed number of
chunks summed in a fixed order, so results do not depend on the thread count.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from scipy.linalg.cython_blas cimport sgemm, dgemm
from libc.string cimport memcpy, memset

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CNN_EXT_OPENMP 1
    #else
    #define CNN_EXT_OPENMP 0
    static int omp_get_max_threads(void) { return 1; }
    #endif
    """
    int CNN_EXT_OPENMP
    int omp_get_max_threads() noexcept nogil


def openmp_enabled():
    """True when this module was compiled with OpenMP."""
    return bool(CNN_EXT_OPENMP)


def openmp_max_threads():
    """omp_get_max_threads() (1 without OpenMP); honours OMP_NUM_THREADS."""
    return omp_get_max_threads()


ctypedef struct Geom:
    Py_ssize_t C_in, H, W, C_out, KH, KW, OH, OW, SH, SW, PH, PW


cdef inline Geom _geom(Py_ssize_t C_in, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C_out,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,
                       Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW) noexcept nogil:
    cdef Geom g
    g.C_in = C_in; g.H = H; g.W = W; g.C_out = C_out; g.KH = KH; g.KW = KW
    g.OH = OH; g.OW = OW; g.SH = SH; g.SW = SW; g.PH = PH; g.PW = PW
    return g


# ---------------------------------------------------------------------------------------------------
# BLAS: row-major C = op(A) @ op(B) through column-major gemm by swapping the operands.
# ---------------------------------------------------------------------------------------------------

cdef inline void _gemm_rm(bint trans_a, bint trans_b, int M, int N, int K, floating alpha,
                          const floating* A, int lda, const floating* B, int ldb,
                          floating beta, floating* C, int ldc) noexcept nogil:
    """C[M, N] = alpha op(A) op(B) + beta C, all row-major."""
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &N, &M, &K, &alpha, <float*>B, &ldb, <float*>A, &lda, &beta, C, &ldc)
    else:
        dgemm(&tb, &ta, &N, &M, &K, &alpha, <double*>B, &ldb, <double*>A, &lda, &beta, C, &ldc)


# ---------------------------------------------------------------------------------------------------
# im2col / col2im for one block of output pixels of one sample
#
# A block is npix consecutive output pixels starting at pix0 (row-major over OH x OW), so the column
# buffer (C_in*KH*KW x npix) stays in L2 while BLAS packs it; the caller sizes the blocks.
# ---------------------------------------------------------------------------------------------------

cdef inline void _valid_cols(const Geom* g, Py_ssize_t kw, Py_ssize_t* qlo, Py_ssize_t* qhi) noexcept nogil:
    """[qlo, qhi): the output columns q whose input column q*SW + kw - PW lies in [0, W)."""
    cdef Py_ssize_t lo_num = g.PW - kw, hi_num = g.W - 1 + g.PW - kw
    qlo[0] = (lo_num + g.SW - 1) // g.SW if lo_num > 0 else 0
    qhi[0] = hi_num // g.SW + 1 if hi_num >= 0 else 0
    if qhi[0] > g.OW:
        qhi[0] = g.OW


cdef void _im2col(const floating* x, floating* cols, const Geom* g,
                  Py_ssize_t pix0, Py_ssize_t npix) noexcept nogil:
    """cols[(i, kh, kw), t] = x[i, p*SH + kh - PH, q*SW + kw - PW] for pixel pix0 + t = p*OW + q (0 outside)."""
    cdef Py_ssize_t i, kh, kw, p, q, q0, q1, lo, hi, qlo, qhi, t, r, base
    cdef const floating* xi
    cdef floating* row
    for i in range(g.C_in):
        xi = x + i * g.H * g.W
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = cols + ((i * g.KH + kh) * g.KW + kw) * npix
                _valid_cols(g, kw, &qlo, &qhi)
                t = 0
                p = pix0 // g.OW
                q0 = pix0 - p * g.OW
                while t < npix:
                    q1 = min(g.OW, q0 + npix - t)
                    r = p * g.SH + kh - g.PH
                    if r < 0 or r >= g.H:
                        lo = hi = q1
                    else:  # q0 <= lo <= hi <= q1 (a block can end before the row's valid columns start)
                        lo = min(max(q0, qlo), q1)
                        hi = max(lo, min(q1, qhi))
                    for q in range(q0, lo):
                        row[t + q - q0] = 0
                    base = r * g.W + kw - g.PW
                    if g.SW == 1:
                        for q in range(lo, hi):
                            row[t + q - q0] = xi[base + q]
                    else:
                        for q in range(lo, hi):
                            row[t + q - q0] = xi[base + q * g.SW]
                    for q in range(hi, q1):
                        row[t + q - q0] = 0
                    t += q1 - q0
                    p += 1
                    q0 = 0


cdef void _col2im(const floating* cols, floating* x, const Geom* g,
                  Py_ssize_t pix0, Py_ssize_t npix) noexcept nogil:
    """x[i, p*SH + kh - PH, q*SW + kw - PW] += cols[(i, kh, kw), t] for pixel pix0 + t = p*OW + q (inside only)."""
    cdef Py_ssize_t i, kh, kw, p, q, q0, q1, lo, hi, qlo, qhi, t, r, base
    cdef floating* xi
    cdef const floating* row
    for i in range(g.C_in):
        xi = x + i * g.H * g.W
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = cols + ((i * g.KH + kh) * g.KW + kw) * npix
                _valid_cols(g, kw, &qlo, &qhi)
                t = 0
                p = pix0 // g.OW
                q0 = pix0 - p * g.OW
                while t < npix:
                    q1 = min(g.OW, q0 + npix - t)
                    r = p * g.SH + kh - g.PH
                    if 0 <= r < g.H:
                        lo = min(max(q0, qlo), q1)
                        hi = max(lo, min(q1, qhi))
                        base = r * g.W + kw - g.PW
                        if g.SW == 1:
                            for q in range(lo, hi):
                                xi[base + q] += row[t + q - q0]
                        else:
                            for q in range(lo, hi):
                                xi[base + q * g.SW] += row[t + q - q0]
                    t += q1 - q0
                    p += 1
                    q0 = 0


# ---------------------------------------------------------------------------------------------------
# Direct kernels for one sample (stride 1, no padding)
# ---------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* Register tile of the direct forward (stride 1, no padding), one body for float and double.
     *
     * nj <= CNN_EXT_JB output channels x nv <= CNN_EXT_NV SIMD vectors of output columns of one output row:
     * the nj*nv accumulators stay in vector registers over the whole (i, kh, kw) reduction; each step
     * loads nv x vectors and broadcasts nj weights (8 accumulators + 2 x + 1 weight of the 16 registers;
     * 12 + 3 + 1 with nv = 3, taken for one input channel only).
     * gcc does not keep a C array of scalars in registers once it has vectorised it (measured: the tile ran
     * through the stack, 2x slower than the row loops), but it does keep an array of GNU vectors
     * (vector_size) once the constant-trip loops are unrolled: in the -mavx2 build the inner loop is
     * 2 vmovups + 4 vbroadcastss + 8 vfmadd231ps on ymm registers, no stack access. nj and nv are literals
     * in every copy of the tile (the switch below). Compilers without GNU vectors (MSVC) get vectors of
     * one lane: the same code, scalar, still correct.
     * Sums run in the order of the row loops: bias, then i, kh, kw. */
    #if defined(__AVX__)
    #define CNN_EXT_VEC_BYTES 32
    #else
    #define CNN_EXT_VEC_BYTES 16
    #endif
    #define CNN_EXT_JB 4
    #define CNN_EXT_NV 3
    #if defined(__GNUC__) || defined(__clang__)
    typedef float cnn_ext_vf __attribute__((vector_size(CNN_EXT_VEC_BYTES), aligned(4), may_alias));
    typedef double cnn_ext_vd __attribute__((vector_size(CNN_EXT_VEC_BYTES), aligned(8), may_alias));
    #define CNN_EXT_SPLAT(V, s) ((V){0} + (s))
    #define CNN_EXT_TILE_INLINE static inline __attribute__((always_inline))
    #else
    typedef float cnn_ext_vf;
    typedef double cnn_ext_vd;
    #define CNN_EXT_SPLAT(V, s) ((V)(s))
    #define CNN_EXT_TILE_INLINE static __forceinline
    #endif
    /* A loaded vector meant to serve several FMAs: left alone, gcc may fold its load into each of them
     * (vfmadd231pd mem, w, acc: one load per FMA, load-port bound). An empty asm that takes the vector in a
     * register and gives it back makes it load once (GNU C on x86; other compilers: a no-op). */
    #if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
    #define CNN_EXT_IN_REGISTER(v) __asm__("" : "+x"(v))
    #else
    #define CNN_EXT_IN_REGISTER(v) ((void)0)
    #endif
    /* Short loops of a run-time trip count (the band's kernel columns, the dK tile's vectors of a row): unrolled
     * by gcc (other compilers: as written). Not the forward tiles' kernel columns: unrolled, they ran 2x slower
     * (their 12 accumulators no longer stayed in registers). */
    #if defined(__GNUC__) && !defined(__clang__)
    #define CNN_EXT_UNROLL _Pragma("GCC unroll 8")
    #else
    #define CNN_EXT_UNROLL
    #endif
    #define CNN_EXT_LANES_F ((Py_ssize_t)(sizeof(cnn_ext_vf) / sizeof(float)))
    #define CNN_EXT_LANES_D ((Py_ssize_t)(sizeof(cnn_ext_vd) / sizeof(double)))

    /* The reduction every forward tile runs (row, wide, one-channel, shifted): for i in [i0, i1),
     * kh in [kh0, kh1), kw < KW, in that order,
     *   acc[jj][v] += k[kb + i*KHKW + kh*KW + kw + jj*CKK] * x[xb + i*XS + kh*HS + kw*WS + v*L]
     * for jj < NJ, v < NV (XV >= NV vectors of x are loaded per step, then NJ weights broadcast). */
    #define CNN_EXT_TILE_REDUCE(T, V, acc, XV, NJ, NV, xb, XS, HS, WS, kb, KHKW, CKK, KW, i0, i1, kh0, kh1) \\
        do {                                                                                             \\
            const Py_ssize_t L_ = (Py_ssize_t)(sizeof(V) / sizeof(T));                                   \\
            V xv_[XV];                                                                                   \\
            Py_ssize_t i_, kh_, kw_, jj_, v_;                                                            \\
            for (i_ = (i0); i_ < (i1); i_++) {                                                           \\
                const T* xi_ = (xb) + i_ * (XS);                                                         \\
                const T* ki_ = (kb) + i_ * (KHKW);                                                       \\
                for (kh_ = (kh0); kh_ < (kh1); kh_++) {                                                  \\
                    const T* kr_ = ki_ + kh_ * (KW);                                                     \\
                    for (kw_ = 0; kw_ < (KW); kw_++) {                                                   \\
                        const T* xr_ = xi_ + kh_ * (HS) + kw_ * (WS);                                    \\
                        for (v_ = 0; v_ < (NV); v_++)                                                    \\
                            xv_[v_] = *(const V*)(xr_ + v_ * L_);                                        \\
                        for (jj_ = 0; jj_ < (NJ); jj_++) {                                               \\
                            const T w_ = kr_[jj_ * (CKK) + kw_];                                         \\
                            for (v_ = 0; v_ < (NV); v_++)                                                \\
                                acc[jj_][v_] += w_ * xv_[v_];                                            \\
                        }                                                                                \\
                    }                                                                                    \\
                }                                                                                        \\
            }                                                                                            \\
        } while (0)

    #define CNN_EXT_DEFINE_FORWARD_TILE(NAME, T, V)                                                       \\
    CNN_EXT_TILE_INLINE void NAME##_fixed(const T* x, const T* k, const T* b, T* y,                      \\
                                          Py_ssize_t C_in, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,   \\
                                          Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t j0,   \\
                                          Py_ssize_t p, Py_ssize_t q0,                                  \\
                                          const Py_ssize_t nj, const Py_ssize_t nv) {                   \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), CKK = C_in * KH * KW;                  \\
        V acc[CNN_EXT_JB][CNN_EXT_NV];                                                                   \\
        Py_ssize_t jj, v;                                                                                \\
        for (jj = 0; jj < nj; jj++)                                                                      \\
            for (v = 0; v < nv; v++)                                                                     \\
                acc[jj][v] = CNN_EXT_SPLAT(V, b[j0 + jj]);                                               \\
        CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_NV, nj, nv, x + p * W + q0, H * W, W, 1,                  \\
                            k + j0 * CKK, KH * KW, CKK, KW, 0, C_in, 0, KH);                             \\
        for (jj = 0; jj < nj; jj++)                                                                      \\
            for (v = 0; v < nv; v++)                                                                     \\
                *(V*)(y + ((j0 + jj) * OH + p) * OW + q0 + v * L) = acc[jj][v];                          \\
    }                                                                                                    \\
    /* rows p .. p + np - 1 of the tile's columns, one switch for all of them */                         \\
    static void NAME(const T* x, const T* k, const T* b, T* y, Py_ssize_t C_in, Py_ssize_t H,            \\
                     Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,           \\
                     Py_ssize_t j0, Py_ssize_t p, Py_ssize_t np, Py_ssize_t q0, Py_ssize_t nj,           \\
                     Py_ssize_t nv) {                                                                    \\
        Py_ssize_t pp;                                                                                   \\
        switch ((nv < 2 ? 0 : nv < 3 ? 4 : 8) + (nj < 4 ? nj : 4)) {                                     \\
        CNN_EXT_FWD_CASE(NAME, 1, 1, 1) CNN_EXT_FWD_CASE(NAME, 2, 2, 1) CNN_EXT_FWD_CASE(NAME, 3, 3, 1)  \\
        CNN_EXT_FWD_CASE(NAME, 4, 4, 1) CNN_EXT_FWD_CASE(NAME, 5, 1, 2) CNN_EXT_FWD_CASE(NAME, 6, 2, 2)  \\
        CNN_EXT_FWD_CASE(NAME, 7, 3, 2) CNN_EXT_FWD_CASE(NAME, 8, 4, 2) CNN_EXT_FWD_CASE(NAME, 9, 1, 3)  \\
        CNN_EXT_FWD_CASE(NAME, 10, 2, 3) CNN_EXT_FWD_CASE(NAME, 11, 3, 3)                               \\
        default: CNN_EXT_FWD_ROWS(NAME, 4, 3); break;                                                    \\
        }                                                                                                \\
    }
    #define CNN_EXT_FWD_ROWS(NAME, NJ, NV) \\
        for (pp = p; pp < p + np; pp++) NAME##_fixed(x, k, b, y, C_in, H, W, KH, KW, OH, OW, j0, pp, q0, NJ, NV)
    #define CNN_EXT_FWD_CASE(NAME, C, NJ, NV) case C: CNN_EXT_FWD_ROWS(NAME, NJ, NV); break;
    CNN_EXT_DEFINE_FORWARD_TILE(cnn_ext_forward_tile_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_FORWARD_TILE(cnn_ext_forward_tile_d, double, cnn_ext_vd)
    """
    enum: CNN_EXT_JB          # channels per tile (the switch above covers nj = 1..4)
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


def direct_tile_lanes(bint single):
    """SIMD lanes per vector of the direct forward's register tile in this build (float32 if single)."""
    return CNN_EXT_LANES_F if single else CNN_EXT_LANES_D


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

    Register tiles of JB channels x QB = nv SIMD vectors of columns of one output row (see the C block
    above; nv = 1 for rows narrower than 2 vectors, 3 for one input channel on rows of 3 vectors or more).
    The last tile of a row, and the last channel block, overlap the previous one instead of running a
    narrower loop: they recompute, with the same operations
    in the same order, values already stored. Fewer than JB channels: one tile of C_out channels. Rows
    narrower than one vector: the row loops below.
    The tiles go strip by strip (QB columns, all rows, one call and one switch per strip; consecutive tiles
    share KH - 1 input rows) rather than row by row: one input channel (16, 1, 4, 28, 5) float64 54.6 -> 45.2
    us, float32 32.1 -> 26.0; (32, 3, 8, 32, 3) 0.88 / 0.79.
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


cdef inline bint _all_finite(const floating* a, Py_ssize_t n) noexcept nogil:
    """Whether no a[t], t < n, is inf or NaN."""
    cdef Py_ssize_t t
    cdef bint finite = True
    for t in range(n):
        finite &= a[t] - a[t] == 0  # false for inf and NaN
    return finite


cdef inline void _zero_slab(floating* xp, Py_ssize_t size) noexcept nogil:
    """A thread's padded slab zeroed by that thread, at the start of its part of a call: the copies of the
    samples then write only the interior. The zeros land in the cache of the core that reads them; zeroing
    every thread's slab in the calling thread (np.zeros) cost the tutorial's input gradient, float64 on 2
    threads, ~1 µs more (38.9 against 37.9 µs): a serial memset, then the other core fetching its slab from the
    first one's cache."""
    memset(xp, 0, size * sizeof(floating))


cdef int _check_slabs(Py_ssize_t rows, Py_ssize_t size, int num_threads, Py_ssize_t C_in, Py_ssize_t Hp,
                      Py_ssize_t Wp) except -1:
    """ValueError unless a (rows, size) scratch holds a zero-padded C_in x Hp x Wp slab per thread."""
    if size < C_in * Hp * Wp or rows < num_threads:
        raise ValueError(f"xpad {(rows, size)} too small for {num_threads} slabs of {C_in} x {Hp} x {Wp}")
    return 0


def conv2d_forward_rows_padded(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                               const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                               const floating[::1] b,               # IN  (C_out,)
                               floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                               floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp), any values
                               Py_ssize_t PT, Py_ssize_t PL, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1): the row tiles of the
    unpadded forward on a zero-padded copy of each sample (a slab per thread, zeroed here by its thread)."""
    cdef Py_ssize_t n, t, N = x.shape[0], KH = k.shape[2], KW = k.shape[3]
    cdef Py_ssize_t Hp = y.shape[2] + KH - 1, Wp = y.shape[3] + KW - 1
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], KH, KW, y.shape[2], y.shape[3],
                        1, 1, PT, PL)
    # the tiles see the padded sample as an unpadded input
    cdef Geom gp = _geom(x.shape[1], Hp, Wp, k.shape[0], KH, KW, y.shape[2], y.shape[3], 1, 1, 0, 0)
    _check_slabs(xpad.shape[0], xpad.shape[1], num_threads, g.C_in, Hp, Wp)
    if N == 0:
        return
    with nogil:
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            _zero_slab(&xpad[0, 0], xpad.shape[1])
            for n in range(N):
                _forward_rows_padded_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0], &xpad[0, 0],
                                         &g, &gp)
        else:
            t = 0  # (each thread sets its own: private in the region)
            with parallel(num_threads=num_threads):
                t = threadid()
                _zero_slab(&xpad[t, 0], xpad.shape[1])
                for n in prange(N, schedule='dynamic'):
                    _forward_rows_padded_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0], &xpad[t, 0],
                                             &g, &gp)


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
# Kernel gradient by register tiles over flattened planes (stride 1, any zero padding)
#
# Wide rows: with the sample's x zero-padded to Hp x Wp and flattened (xp[i, r*Wp + c]), and dy widened to the
# same row pitch (dyw[j, p*Wp + q] = dy[j, p, q] for q < OW, 0 for OW <= q < Wp and past the last row), every
# tap is one dot product of contiguous vectors:
#     dK[j, i, kh, kw] += Σ_f dyw[j, f] xp[i, f + kh*Wp + kw].
# Shifted copies: one copy of the padded x per kernel column, xp[i, kw, r*OW + q] = x_pad[i, r, q + kw], lets
# dy keep its own pitch OW (no wasted columns, (Wp - OW) / Wp of the work with wide rows) at the price of KW
# copies of x per sample: dK[j, i, kh, kw] += Σ_f dy[j, f] xp[i, kw, f + kh*OW].
# A tile holds nj channels x nt taps of vector accumulators over the whole plane (see the C block); the
# accumulators are stored / added lane-wise into a per-thread vector buffer vacc[(j, i, tap), lane] for the
# chunk, whose lanes are summed once per chunk in a fixed order (so the result does not depend on the thread
# count). Zeros of dyw (gap columns, the tail up to a whole vector) multiply real x values: an inf or NaN in
# x can turn entries into NaN that im2col + BLAS would leave finite (their exact value never involves it);
# ops.conv2d_kernel_gradient recomputes a non-finite result with im2col.
# ---------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* Kernel-gradient register tile, one body for float and double (GNU vectors, as the forward tile).
     *
     * acc[jj][t] (nj <= CNN_EXT_KJ channels x nt <= CNN_EXT_KT taps, flattened tap index t0 + t) stays in
     * vector registers over nvec vectors of f; each step loads nt x vectors (at the taps' offsets
     * a*A + b*B, unaligned) and nj dy vectors and issues nj*nt FMAs (4 x 3: 12 accumulators + 3 x + 1 dy
     * of the 16 ymm registers; in the -mavx2 build the loop is 7 vmovups + 12 vfmadd231ps, no stack access).
     * The plane is nrow rows of nvec vectors (drow, xrow apart): one row for the flat slabs of the wide and
     * shifted layouts, the output rows for one input channel read in place (see _kgrad_rows_chunk).
     * nj and nt are literals in every copy (the switch), so the constant-trip loops unroll and the arrays
     * of vectors live in registers. The tile then stores (init: first sample of the chunk) or adds its
     * accumulators to vacc[(t*nj + jj)*L + lane] (contiguous, so the hardware prefetches it). */
    #define CNN_EXT_KJ 4
    #define CNN_EXT_KT 3

    #define CNN_EXT_DEFINE_KGRAD_TILE(NAME, T, V, ROWS)                                                   \\
    CNN_EXT_TILE_INLINE void NAME##_fixed(const T* dyw, Py_ssize_t dstride, const T* xr, Py_ssize_t a0,  \\
                                          Py_ssize_t b0, Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B,      \\
                                          Py_ssize_t nvec, Py_ssize_t nrow, Py_ssize_t drow,             \\
                                          Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy, Py_ssize_t sx, \\
                                          T* vacc, int init, const Py_ssize_t nj, const Py_ssize_t nt) { \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \\
        V acc[CNN_EXT_KJ][CNN_EXT_KT], xv[CNN_EXT_KT];                                                   \\
        const T* xp[CNN_EXT_KT];                                                                         \\
        const T* dp[CNN_EXT_KJ];                                                                         \\
        Py_ssize_t jj, t, f, s, r, n = nvec * L, b = b0, o = a0 * A + b0 * B;                            \\
        for (t = 0; t < nt; t++) {  /* taps (a, b) from (a0, b0) on, b < Bn fastest; no division */      \\
            xp[t] = xr + o;                                                                              \\
            b++; o += B;                                                                                 \\
            if (b == Bn) { b = 0; o += A - Bn * B; }                                                     \\
        }                                                                                                \\
        for (jj = 0; jj < nj; jj++) {                                                                    \\
            dp[jj] = dyw + jj * dstride;                                                                 \\
            for (t = 0; t < nt; t++)                                                                     \\
                acc[jj][t] = CNN_EXT_SPLAT(V, (T)0);                                                     \\
        }                                                                                                \\
        for (s = 0; s < ns; s++) {  /* the samples' slabs one after another, sx / sdy apart */             \\
            if (!(ROWS)) {  /* the flat slabs of the wide and shifted layouts: one row, the plane */     \\
                for (f = 0; f < n; f += L) {                                                             \\
                    for (t = 0; t < nt; t++)                                                             \\
                        xv[t] = *(const V*)(xp[t] + f);                                                  \\
                    for (jj = 0; jj < nj; jj++) {                                                        \\
                        const V d = *(const V*)(dp[jj] + f);                                             \\
                        for (t = 0; t < nt; t++)                                                         \\
                            acc[jj][t] += d * xv[t];                                                     \\
                    }                                                                                    \\
                }                                                                                        \\
            } else {  /* nrow short rows, drow / xrow apart: unrolled, vectors pinned in registers */    \\
                for (r = 0; r < nrow; r++) {                                                             \\
                    const Py_ssize_t ro = r * drow, xo = r * xrow;                                       \\
                    CNN_EXT_UNROLL                                                                       \\
                    for (f = 0; f < n; f += L) {                                                         \\
                        for (t = 0; t < nt; t++) {                                                       \\
                            xv[t] = *(const V*)(xp[t] + xo + f);                                         \\
                            CNN_EXT_IN_REGISTER(xv[t]);                                                  \\
                        }                                                                                \\
                        for (jj = 0; jj < nj; jj++) {                                                    \\
                            V d = *(const V*)(dp[jj] + ro + f);                                          \\
                            CNN_EXT_IN_REGISTER(d);                                                      \\
                            for (t = 0; t < nt; t++)                                                     \\
                                acc[jj][t] += d * xv[t];                                                 \\
                        }                                                                                \\
                    }                                                                                    \\
                }                                                                                        \\
            }                                                                                            \\
            for (t = 0; t < nt; t++)                                                                     \\
                xp[t] += sx;                                                                             \\
            for (jj = 0; jj < nj; jj++)                                                                  \\
                dp[jj] += sdy;                                                                           \\
        }                                                                                                \\
        if (init) {                                                                                      \\
            for (jj = 0; jj < nj; jj++)                                                                  \\
                for (t = 0; t < nt; t++)                                                                 \\
                    *(V*)(vacc + (t * nj + jj) * L) = acc[jj][t];                                        \\
        } else {                                                                                         \\
            for (jj = 0; jj < nj; jj++)                                                                  \\
                for (t = 0; t < nt; t++) {                                                               \\
                    V* dst = (V*)(vacc + (t * nj + jj) * L);                                             \\
                    const V s = *dst + acc[jj][t];                                                       \\
                    *dst = s;                                                                            \\
                }                                                                                        \\
        }                                                                                                \\
    }                                                                                                    \\
    static void NAME(const T* dyw, Py_ssize_t dstride, const T* xr, Py_ssize_t a0, Py_ssize_t b0,        \\
                     Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B, Py_ssize_t nvec, Py_ssize_t nrow,        \\
                     Py_ssize_t drow, Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy, Py_ssize_t sx,     \\
                     T* vacc, int init, Py_ssize_t nj, Py_ssize_t nt) {                                  \\
        switch ((nj < CNN_EXT_KJ ? nj : CNN_EXT_KJ) * 8 + (nt < CNN_EXT_KT ? nt : CNN_EXT_KT)) {         \\
        CNN_EXT_KGRAD_CASES(NAME)                                                                        \\
        }                                                                                                \\
    }
    #define CNN_EXT_KGRAD_CASE(NAME, J, TT) \\
        case J * 8 + TT: NAME##_fixed(dyw, dstride, xr, a0, b0, Bn, A, B, nvec, nrow, drow, xrow, ns, sdy, sx, \\
                                      vacc, init, J, TT);                                               \\
            break;
    #define CNN_EXT_KGRAD_CASES_J(NAME, J) \\
        CNN_EXT_KGRAD_CASE(NAME, J, 1) CNN_EXT_KGRAD_CASE(NAME, J, 2) CNN_EXT_KGRAD_CASE(NAME, J, 3)
    #define CNN_EXT_KGRAD_CASES(NAME) \\
        CNN_EXT_KGRAD_CASES_J(NAME, 1) CNN_EXT_KGRAD_CASES_J(NAME, 2) \\
        CNN_EXT_KGRAD_CASES_J(NAME, 3) CNN_EXT_KGRAD_CASES_J(NAME, 4)
    /* ROWS a literal: separate functions for the flat slabs (nrow = 1) and the output-rows layout (one
     * function with both loops compiled worse: the wide layout's small planes ran 5-27% slower). */
    #define CNN_EXT_DEFINE_KGRAD_ENTRY(NAME, T, V)                                                        \\
    CNN_EXT_DEFINE_KGRAD_TILE(NAME##_flat, T, V, 0)                                                      \\
    CNN_EXT_DEFINE_KGRAD_TILE(NAME##_rows, T, V, 1)                                                      \\
    static void NAME(const T* dyw, Py_ssize_t dstride, const T* xr, Py_ssize_t a0, Py_ssize_t b0,        \\
                     Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B, Py_ssize_t nvec, Py_ssize_t nrow,        \\
                     Py_ssize_t drow, Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy, Py_ssize_t sx,     \\
                     T* vacc, int init, Py_ssize_t nj, Py_ssize_t nt) {                                  \\
        (nrow > 1 ? NAME##_rows : NAME##_flat)(dyw, dstride, xr, a0, b0, Bn, A, B, nvec, nrow, drow,     \\
                                               xrow, ns, sdy, sx, vacc, init, nj, nt);                   \\
    }
    CNN_EXT_DEFINE_KGRAD_ENTRY(cnn_ext_kgrad_tile_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_KGRAD_ENTRY(cnn_ext_kgrad_tile_d, double, cnn_ext_vd)

    /* out[jj*ostride + r] = the L lanes of vacc[(r*nj + jj)*L:..] summed pairwise (lane l += lane l + h for
     * h = L/2, L/4, .., 1), r < nrow, jj < nj; L is a compile-time constant, so the tree unrolls. */
    #define CNN_EXT_DEFINE_LANE_SUMS(NAME, T, V)                                                          \\
    static void NAME(const T* vacc, T* out, Py_ssize_t nrow, Py_ssize_t nj, Py_ssize_t ostride) {        \\
        enum { L = (int)(sizeof(V) / sizeof(T)) };                                                       \\
        Py_ssize_t r, jj; int l, h;                                                                      \\
        for (r = 0; r < nrow; r++)                                                                       \\
            for (jj = 0; jj < nj; jj++) {                                                                \\
                T a[L];                                                                                  \\
                for (l = 0; l < L; l++)                                                                  \\
                    a[l] = vacc[(r * nj + jj) * L + l];                                                  \\
                for (h = L / 2; h > 0; h /= 2)                                                           \\
                    for (l = 0; l < h; l++)                                                              \\
                        a[l] = a[l] + a[l + h];                                                          \\
                out[jj * ostride + r] = a[0];                                                            \\
            }                                                                                            \\
    }
    CNN_EXT_DEFINE_LANE_SUMS(cnn_ext_lane_sums_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_LANE_SUMS(cnn_ext_lane_sums_d, double, cnn_ext_vd)
    """
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
    # Whole planes per tile: blocking f into L1-sized pieces (1-4 KiB rows) was 3-15% slower than streaming
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


def conv2d_kernel_gradient_wide(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                                const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                                floating[:, :, :, ::1] dk,           # OUT (C_out, C_in, KH, KW)
                                floating[:, ::1] partial,            # TMP (nchunk, C_out*C_in*KH*KW)
                                floating[:, ::1] scratch,            # TMP (threads, kgrad_wide_scratch_size), zeros
                                Py_ssize_t PH, Py_ssize_t PW, int layout, Py_ssize_t nj, Py_ssize_t nt,
                                Py_ssize_t ns, int num_threads):
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]), stride 1, zero padding (PH top, PW left; the bottom /
    right padding follows from the shapes), by register tiles over ns samples at a time (the slab holds ns
    samples, kgrad_wide_scratch_size(..., ns)), summed in fixed chunks. layout: 0 wide rows, 1 shifted copies,
    2 output rows (OW a whole number of SIMD vectors; see _wide_geom). Returns whether every value of dk is
    finite (an inf or NaN in x meets the zeros the tiles multiply it by: the caller then recomputes)."""
    cdef bint shifted = layout == 1
    cdef Py_ssize_t N = x.shape[0], nchunk = partial.shape[0], c, t, kh, kw
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
    for t in range(KK):
        out[t] = 0
    if N == 0:
        return True
    with nogil:
        inv_n = (<floating>1) / N
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            for c in range(nchunk):
                _kgrad_wide_chunk(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[c, 0], &scratch[0, 0],
                                  (c * N) // nchunk, ((c + 1) * N) // nchunk, ns, &g, &w)
        else:
            for c in prange(nchunk, schedule='dynamic', num_threads=num_threads):
                _kgrad_wide_chunk(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[c, 0], &scratch[threadid(), 0],
                                  (c * N) // nchunk, ((c + 1) * N) // nchunk, ns, &g, &w)
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


# ---------------------------------------------------------------------------------------------------
# Wide-row direct forward (stride 1, any zero padding), also the input gradient for stride 1
#
# Each sample is copied into a per-thread zero-padded slab xp[C_in, Hp, Wp] (+ slack), Wp the row pitch
# (wide_pitch: the padded width less the slots a row's right and the next row's left padding share).
# Output pixel (p, q) reads xp[i, p*Wp + q + kh*Wp + kw]: over the flat index f = p*Wp + q, taken for every
# q < Wp (columns q >= OW are computed and dropped), a vector of outputs f..f+L-1 is one contiguous load per
# (i, kh, kw). Register tiles run along f across row ends: no lane is lost except (Wp - OW)/Wp.
# ---------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* Wide-row tile: nj <= CNN_EXT_WJB output channels x CNN_EXT_WNV vectors along the flat index f.
     * The accumulators stay in vector registers over the (i, kh, kw) reduction of one block of input
     * channels [i0, i1); the tile starts from 0 (first block) or from the wide buffer, and is stored
     * back there. AVX2 (16 ymm): 4 x 3 = 12 accumulators + 3 x + 1 weight; measured against 6 x 2 and
     * 3 x 4 (see cnn_ext/ops.py). 32 vector registers (AVX-512) leave room for bigger tiles.
     * Reads reach up to C_in*Hp*Wp + WNV*L + KW - 3 past xp: the slab has that slack, zeroed. */
    #if defined(__AVX512F__)
    #define CNN_EXT_WJB 6
    #define CNN_EXT_WNV 4
    #else
    #define CNN_EXT_WJB 4
    #define CNN_EXT_WNV 3
    #endif

    #define CNN_EXT_WIDE_CALL(NAME, NJ) \\
        NAME##_fixed(xp, k, wide, ldw, plane, Wp, C_in, KH, KW, kh0, kh1, i0, i1, j0, f0, first, NJ)
    #define CNN_EXT_DEFINE_WIDE_TILE(NAME, T, V)                                                          \\
    CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* k, T* wide, Py_ssize_t ldw,             \\
                                          Py_ssize_t plane, Py_ssize_t Wp, Py_ssize_t C_in,             \\
                                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, \\
                                          Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0,   \\
                                          int first, const Py_ssize_t nj) {                             \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), CKK = C_in * KH * KW;                  \\
        V acc[CNN_EXT_WJB][CNN_EXT_WNV];                                                                 \\
        Py_ssize_t jj, v;                                                                                \\
        T* o = wide + j0 * ldw + f0;                                                                     \\
        for (jj = 0; jj < nj; jj++)                                                                      \\
            for (v = 0; v < CNN_EXT_WNV; v++)                                                            \\
                if (first) acc[jj][v] = CNN_EXT_SPLAT(V, (T)0);                                          \\
                else acc[jj][v] = *(const V*)(o + jj * ldw + v * L);                                     \\
        CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_WNV, nj, CNN_EXT_WNV, xp + f0, plane, Wp, 1,              \\
                            k + j0 * CKK, KH * KW, CKK, KW, i0, i1, kh0, kh1);                           \\
        for (jj = 0; jj < nj; jj++)                                                                      \\
            for (v = 0; v < CNN_EXT_WNV; v++)                                                            \\
                *(V*)(o + jj * ldw + v * L) = acc[jj][v];                                                \\
    }                                                                                                    \\
    /* One output channel (the input gradient of a one-channel layer, the tutorial's): nj = 1 would leave      \\
     * WNV accumulators, too few chains to hide the FMA latency; this tile holds WJB x WNV vectors of one     \\
     * channel instead (flat outputs f0 .. f0 + WJB*WNV*L), same sums in the same order per output. */        \\
    static void NAME##_one(const T* xp, const T* k, T* wide, Py_ssize_t ldw, Py_ssize_t plane,          \\
                           Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, \\
                           Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0,   \\
                           int first) {                                                                  \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), NV1 = CNN_EXT_WJB * CNN_EXT_WNV;      \\
        V acc[1][CNN_EXT_WJB * CNN_EXT_WNV];                                                             \\
        Py_ssize_t v;                                                                                    \\
        T* o = wide + j0 * ldw + f0;                                                                     \\
        for (v = 0; v < NV1; v++)                                                                        \\
            if (first) acc[0][v] = CNN_EXT_SPLAT(V, (T)0); else acc[0][v] = *(const V*)(o + v * L);     \\
        CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_WJB * CNN_EXT_WNV, 1, NV1, xp + f0, plane, Wp, 1,         \\
                            k + j0 * C_in * KH * KW, KH * KW, C_in * KH * KW, KW, i0, i1, kh0, kh1);     \\
        for (v = 0; v < NV1; v++)                                                                        \\
            *(V*)(o + v * L) = acc[0][v];                                                                \\
    }                                                                                                    \\
    static void NAME(const T* xp, const T* k, T* wide, Py_ssize_t ldw, Py_ssize_t plane, Py_ssize_t Wp, \\
                     Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1,      \\
                     Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0, int first, Py_ssize_t nj) { \\
        switch (nj < CNN_EXT_WJB ? nj : CNN_EXT_WJB) {                                                   \\
        CNN_EXT_NJ_CASES(CNN_EXT_WJB, CNN_EXT_WIDE_CALL, NAME)                                           \\
        default: CNN_EXT_WIDE_CALL(NAME, CNN_EXT_WJB); break;                                               \\
        }                                                                                                \\
    }
    /* The cases nj = 1 .. JB - 1 of a tile's switch over its channel count (JB = 3, 4 or 6 defined): each calls
     * CALL(NAME, nj), a copy of the tile with nj a literal. */
    #define CNN_EXT_NJ_CASE(CALL, NAME, NJ) case NJ: CALL(NAME, NJ); break;
    #define CNN_EXT_NJ_CASES_3(CALL, NAME) CNN_EXT_NJ_CASE(CALL, NAME, 1) CNN_EXT_NJ_CASE(CALL, NAME, 2)
    #define CNN_EXT_NJ_CASES_4(CALL, NAME) CNN_EXT_NJ_CASES_3(CALL, NAME) CNN_EXT_NJ_CASE(CALL, NAME, 3)
    #define CNN_EXT_NJ_CASES_6(CALL, NAME) \\
        CNN_EXT_NJ_CASES_4(CALL, NAME) CNN_EXT_NJ_CASE(CALL, NAME, 4) CNN_EXT_NJ_CASE(CALL, NAME, 5)
    #define CNN_EXT_NJ_CASES_(JB, CALL, NAME) CNN_EXT_NJ_CASES_##JB(CALL, NAME)
    #define CNN_EXT_NJ_CASES(JB, CALL, NAME) CNN_EXT_NJ_CASES_(JB, CALL, NAME)
    CNN_EXT_DEFINE_WIDE_TILE(cnn_ext_wide_tile_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_WIDE_TILE(cnn_ext_wide_tile_d, double, cnn_ext_vd)
    """
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


def wide_tile(bint single):
    """(output channels, flat outputs) of the wide-row tile in this build (float32 if single)."""
    return (CNN_EXT_WJB, CNN_EXT_WNV * (CNN_EXT_LANES_F if single else CNN_EXT_LANES_D))


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


cdef void _forward_wide_one(const floating* x, const floating* k, const floating* b, floating* y,
                            floating* xp, floating* wide, const Geom* g, Py_ssize_t Hp, Py_ssize_t Wp,
                            Py_ssize_t IB) noexcept nogil:
    """y[j] = b[j] + Σ_i xcorr_valid(pad(x[i]), k[j, i]) through the padded slab xp and the wide buffer.

    xp (C_in*Hp*Wp + slack) is zero outside the interior, which is all this writes; wide holds
    C_out x Fr flat outputs (Fr = OH*Wp rounded up to whole tiles). Input channels go in blocks of IB
    (partial sums kept in wide) so a block's planes stay in cache across the channel tiles. In the last
    block each output row goes to y (plus bias) as soon as its tiles are done, while it is still in L1
    (a separate pass cost float64 (32, 3, 8, 32, 3) 25%).
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
            plo = 0  # output rows of the tile's first and last flat outputs (no division per tile: measured 20%)
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


def conv2d_forward_wide(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                        const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                        const floating[::1] b,               # IN  (C_out,)
                        floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                        floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp + slack), any values
                        floating[:, ::1] wide,               # TMP (threads, C_out*Fr)
                        Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t IB, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1; the row pitch Wp is wide_pitch)."""
    cdef Py_ssize_t n, t, N = x.shape[0]
    cdef Py_ssize_t Hp = y.shape[2] + k.shape[2] - 1
    cdef Py_ssize_t Wp = wide_pitch(x.shape[3], y.shape[3], k.shape[3], PL)
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], 1, 1, PT, PL)
    if N == 0:
        return
    with nogil:
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            _zero_slab(&xpad[0, 0], xpad.shape[1])
            for n in range(N):
                _forward_wide_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                  &xpad[0, 0], &wide[0, 0], &g, Hp, Wp, IB)
        else:
            t = 0  # (each thread sets its own: private in the region)
            with parallel(num_threads=num_threads):
                t = threadid()
                _zero_slab(&xpad[t, 0], xpad.shape[1])
                for n in prange(N, schedule='dynamic'):
                    _forward_wide_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                      &xpad[t, 0], &wide[t, 0], &g, Hp, Wp, IB)


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

cdef extern from *:
    """
    /* Shifted-copies tile: nj <= CNN_EXT_SJB output channels x CNN_EXT_SNV vectors along f (the AVX2 wide
     * tile's shape). The accumulators start from the bias (first block) or from o (the partial sums of
     * the previous blocks, row pitch ldo) and are stored back to o. xs points at f0 of channel 0's first
     * copy; copy kw of channel i is at i*xstride + kw*A. */
    #define CNN_EXT_SJB 4
    #define CNN_EXT_SNV 3
    #define CNN_EXT_SHIFT_CALL(NAME, NJ) \\
        NAME##_fixed(xs, k, b, o, ldo, xstride, A, OW, C_in, KH, KW, kh0, kh1, i0, i1, j0, first, NJ)
    #define CNN_EXT_DEFINE_SHIFT_TILE(NAME, T, V)                                                         \\
    CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xs, const T* k, const T* b, T* o, Py_ssize_t ldo,    \\
                                          Py_ssize_t xstride, Py_ssize_t A, Py_ssize_t OW,              \\
                                          Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, \\
                                          Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0,  \\
                                          int first, const Py_ssize_t nj) {                             \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), CKK = C_in * KH * KW;                  \\
        V acc[CNN_EXT_SJB][CNN_EXT_SNV];                                                                 \\
        Py_ssize_t jj, v;                                                                                \\
        for (jj = 0; jj < nj; jj++)                                                                      \\
            for (v = 0; v < CNN_EXT_SNV; v++)                                                            \\
                if (first) acc[jj][v] = CNN_EXT_SPLAT(V, b[j0 + jj]);                                    \\
                else acc[jj][v] = *(const V*)(o + jj * ldo + v * L);                                     \\
        CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_SNV, nj, CNN_EXT_SNV, xs, xstride, OW, A,                 \\
                            k + j0 * CKK, KH * KW, CKK, KW, i0, i1, kh0, kh1);                           \\
        for (jj = 0; jj < nj; jj++)                                                                      \\
            for (v = 0; v < CNN_EXT_SNV; v++)                                                            \\
                *(V*)(o + jj * ldo + v * L) = acc[jj][v];                                                \\
    }                                                                                                    \\
    static void NAME(const T* xs, const T* k, const T* b, T* o, Py_ssize_t ldo, Py_ssize_t xstride,     \\
                     Py_ssize_t A, Py_ssize_t OW, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW,         \\
                     Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0,        \\
                     int first, Py_ssize_t nj) {                                                         \\
        switch (nj < CNN_EXT_SJB ? nj : CNN_EXT_SJB) {                                                   \\
        CNN_EXT_NJ_CASES(CNN_EXT_SJB, CNN_EXT_SHIFT_CALL, NAME)                                          \\
        default: CNN_EXT_SHIFT_CALL(NAME, CNN_EXT_SJB); break;                                           \\
        }                                                                                                \\
    }
    CNN_EXT_DEFINE_SHIFT_TILE(cnn_ext_shift_tile_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_SHIFT_TILE(cnn_ext_shift_tile_d, double, cnn_ext_vd)
    """
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
    the caller zeroes it once) just before its tiles run, so the slab stays in L2 (copying whole samples
    first cost (16, 8, 16, 64, 7) 15%: 830 KiB per sample). The first block starts from the bias, the
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


def conv2d_forward_shifted(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                           const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                           const floating[::1] b,               # IN  (C_out,)
                           floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                           floating[:, ::1] xs,                 # TMP (threads, shifted_slab_size), zeroed
                           floating[:, ::1] stage,              # TMP (threads, CNN_EXT_SJB * TB)
                           Py_ssize_t PT, Py_ssize_t PL, Py_ssize_t IB, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape), through shifted copies of each sample."""
    cdef Py_ssize_t n, N = x.shape[0]
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], 1, 1, PT, PL)
    if N == 0:
        return
    with nogil:
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            for n in range(N):
                _forward_shifted_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                     &xs[0, 0], &stage[0, 0], &g, IB)
        else:
            for n in prange(N, schedule='dynamic', num_threads=num_threads):
                _forward_shifted_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                     &xs[threadid(), 0], &stage[threadid(), 0], &g, IB)


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

cdef extern from *:
    """
    #define CNN_EXT_BR 4   /* output rows per band tile (the cases below are written for 4) */
    #define CNN_EXT_BNV 3  /* vectors of columns per band tile, at most */
    /* Band rows LO..HI take input row R at kernel column kw, its NV vectors loaded from XR:
     * acc[rr] += k[R - rr, kw] * x[R, kw + ...]. */
    #define CNN_EXT_BAND_STEP(T, V, XR, R, LO, HI)                                                      \\
        for (v = 0; v < NV; v++) {                                                                      \\
            xv[v] = *(const V*)((XR) + v * L);                                                          \\
            CNN_EXT_IN_REGISTER(xv[v]);                                                                 \\
        }                                                                                               \\
        for (rr = (LO); rr <= (HI); rr++) {                                                             \\
            const T w = ki[((R) - rr) * KW + kw];                                                       \\
            for (v = 0; v < NV; v++)                                                                    \\
                acc[rr][v] += w * xv[v];                                                                \\
        }
    /* Rows LO..HI of the band (literals) take input row r, all its kernel columns. */
    #define CNN_EXT_BAND_ROWS(T, V, LO, HI)                                                             \\
        CNN_EXT_UNROLL                                                                                  \\
        for (kw = 0; kw < KW; kw++) {                                                                   \\
            CNN_EXT_BAND_STEP(T, V, xr + kw, r, LO, HI)                                                 \\
        }
    #define CNN_EXT_BAND_CASE(T, V, LO, HI) case (LO) * 4 + (HI): CNN_EXT_BAND_ROWS(T, V, LO, HI) break;
    /* The same for kernels of KHL rows known at compile time (a literal in each copy of NAME##_kh): band row
     * R (a literal too) at kernel column kw. Rows lo..hi are then constants, so the kernel columns can be the
     * outer loop with the accumulators still in registers, and the FMAs of the band's rows interleave instead
     * of running one row's dependent chains after another (see NAME below). Rows past the band's last
     * (R >= KHL + BR - 1) compile to nothing; rows in the padding (outside [r0, r1)) are skipped unless FULL. */
    #define CNN_EXT_BAND_KSTEP(T, V, R)                                                                 \\
        if ((R) < KHL + CNN_EXT_BR - 1 && (FULL || ((R) >= r0 && (R) < r1))) {                          \\
            const Py_ssize_t lo = (R) - KHL + 1 > 0 ? (R) - KHL + 1 : 0;                                \\
            const Py_ssize_t hi = (R) < CNN_EXT_BR - 1 ? (R) : CNN_EXT_BR - 1;                          \\
            CNN_EXT_BAND_STEP(T, V, xi + (R) * Wp + kw, R, lo, hi)                                      \\
        }
    /* one (kernel rows, vectors) copy of the tile, for a full band or not */
    #define CNN_EXT_BAND_KCALL(NAME, KHL, NVL)                                                             \\
        if (full) NAME##_kh(xp, k, bias, y, ldy, plane, Wp, C_in, KHL, KW, r0, r1, NVL, 1);            \\
        else NAME##_kh(xp, k, bias, y, ldy, plane, Wp, C_in, KHL, KW, r0, r1, NVL, 0);                  \\
        return;
    #define CNN_EXT_BAND_KCASE(NAME, KHL)                                                                  \\
        case KHL:                                                                                        \\
            switch (nv) {                                                                                \\
            case 1: CNN_EXT_BAND_KCALL(NAME, KHL, 1)                                                     \\
            case 2: CNN_EXT_BAND_KCALL(NAME, KHL, 2)                                                     \\
            default: CNN_EXT_BAND_KCALL(NAME, KHL, 3)                                                    \\
            }
    #define CNN_EXT_DEFINE_BAND_TILE(NAME, T, V)                                                          \\
    CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* k, T bias, T* y, Py_ssize_t ldy,        \\
                                          Py_ssize_t plane, Py_ssize_t Wp, Py_ssize_t C_in,             \\
                                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0, Py_ssize_t r1,   \\
                                          const Py_ssize_t NV) {                                        \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \\
        V acc[CNN_EXT_BR][CNN_EXT_BNV], xv[CNN_EXT_BNV];                                                 \\
        Py_ssize_t i, r, kw, rr, v;                                                                      \\
        for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \\
            for (v = 0; v < NV; v++)                                                                     \\
                acc[rr][v] = CNN_EXT_SPLAT(V, bias);                                                     \\
        for (i = 0; i < C_in; i++) {                                                                     \\
            const T* ki = k + i * KH * KW;                                                               \\
            for (r = r0; r < r1; r++) {                                                                  \\
                const T* xr = xp + i * plane + r * Wp;                                                   \\
                const Py_ssize_t lo = r - KH + 1 > 0 ? r - KH + 1 : 0;                                   \\
                const Py_ssize_t hi = r < CNN_EXT_BR - 1 ? r : CNN_EXT_BR - 1;                           \\
                switch (lo * 4 + hi) {                                                                   \\
                CNN_EXT_BAND_CASE(T, V, 0, 0) CNN_EXT_BAND_CASE(T, V, 0, 1)                              \\
                CNN_EXT_BAND_CASE(T, V, 0, 2) CNN_EXT_BAND_CASE(T, V, 0, 3)                              \\
                CNN_EXT_BAND_CASE(T, V, 1, 1) CNN_EXT_BAND_CASE(T, V, 1, 2)                              \\
                CNN_EXT_BAND_CASE(T, V, 1, 3) CNN_EXT_BAND_CASE(T, V, 2, 2)                              \\
                CNN_EXT_BAND_CASE(T, V, 2, 3) CNN_EXT_BAND_CASE(T, V, 3, 3)                              \\
                /* every 0 <= lo <= hi <= 3 as literals, so acc stays in registers */                    \\
                }                                                                                        \\
            }                                                                                            \\
        }                                                                                                \\
        for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \\
            for (v = 0; v < NV; v++)                                                                     \\
                *(V*)(y + rr * ldy + v * L) = acc[rr][v];                                                \\
    }                                                                                                    \\
    CNN_EXT_TILE_INLINE void NAME##_kh(const T* xp, const T* k, T bias, T* y, Py_ssize_t ldy,           \\
                                       Py_ssize_t plane, Py_ssize_t Wp, Py_ssize_t C_in,                \\
                                       const Py_ssize_t KHL, Py_ssize_t KW, Py_ssize_t r0,              \\
                                       Py_ssize_t r1, const Py_ssize_t NV, const int FULL) {            \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \\
        V acc[CNN_EXT_BR][CNN_EXT_BNV], xv[CNN_EXT_BNV];                                                 \\
        Py_ssize_t i, kw, rr, v;                                                                         \\
        for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \\
            for (v = 0; v < NV; v++)                                                                     \\
                acc[rr][v] = CNN_EXT_SPLAT(V, bias);                                                     \\
        for (i = 0; i < C_in; i++) {                                                                     \\
            const T* ki = k + i * KHL * KW;                                                              \\
            const T* xi = xp + i * plane;                                                                \\
            for (kw = 0; kw < KW; kw++) {                                                                \\
                CNN_EXT_BAND_KSTEP(T, V, 0) CNN_EXT_BAND_KSTEP(T, V, 1) CNN_EXT_BAND_KSTEP(T, V, 2)      \\
                CNN_EXT_BAND_KSTEP(T, V, 3) CNN_EXT_BAND_KSTEP(T, V, 4) CNN_EXT_BAND_KSTEP(T, V, 5)      \\
                CNN_EXT_BAND_KSTEP(T, V, 6) CNN_EXT_BAND_KSTEP(T, V, 7)                                  \\
            }                                                                                            \\
        }                                                                                                \\
        for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \\
            for (v = 0; v < NV; v++)                                                                     \\
                *(V*)(y + rr * ldy + v * L) = acc[rr][v];                                                \\
    }                                                                                                    \\
    /* Kernels of 4 and 5 rows take their own copies (sums in the order i, kw, kh; band rows R < 5 + 4 - 1\\
     * above), others the generic tile (i, kh, kw). 1-thread minima, us, of the band kernel alone, generic /\\
     * own copies, 16 samples of (C, 28 - K + 1, 28 - K + 1) padded by K - 1 into one 28 x 28 channel:  \\
     *   float64: K=4 C=4 47.3 / 44.5, K=5 C=4 62.6 / 58.8, K=5 C=16 249 / 232                          \\
     *   float32: K=4 C=4 30.2 / 24.5, K=5 C=4 38.8 / 31.6, K=5 C=16 151 / 123                          \\
     * With copies of their own, 6 rows tied (float64 80.2 / 80.0) and 7 lost (float64 97.3 / 104.9; float32\\
     * 40 x 40, C=8: 203 / 232): more band rows than registers for a kernel column's weights. Either way the\\
     * order of each output's sums depends on the shape only (not on the tile or the thread count). */  \\
    static void NAME(const T* xp, const T* k, T bias, T* y, Py_ssize_t ldy, Py_ssize_t plane,           \\
                     Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0,        \\
                     Py_ssize_t r1, Py_ssize_t nv) {                                                     \\
        const int full = r0 == 0 && r1 == KH + CNN_EXT_BR - 1;                                           \\
        switch (KH) {                                                                                    \\
        CNN_EXT_BAND_KCASE(NAME, 4) CNN_EXT_BAND_KCASE(NAME, 5)                                          \\
        default: break;                                                                                  \\
        }                                                                                                \\
        switch (nv) {                                                                                    \\
        case 1: NAME##_fixed(xp, k, bias, y, ldy, plane, Wp, C_in, KH, KW, r0, r1, 1); break;            \\
        case 2: NAME##_fixed(xp, k, bias, y, ldy, plane, Wp, C_in, KH, KW, r0, r1, 2); break;            \\
        default: NAME##_fixed(xp, k, bias, y, ldy, plane, Wp, C_in, KH, KW, r0, r1, 3); break;           \\
        }                                                                                                \\
    }
    CNN_EXT_DEFINE_BAND_TILE(cnn_ext_band_tile_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_BAND_TILE(cnn_ext_band_tile_d, double, cnn_ext_vd)
    """
    enum: CNN_EXT_BR          # output rows per band tile
    enum: CNN_EXT_BNV         # vectors of columns per band tile, at most
    void _band_tile_f "cnn_ext_band_tile_f"(
        const float* xp, const float* k, float bias, float* y, Py_ssize_t ldy, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t nv) noexcept nogil
    void _band_tile_d "cnn_ext_band_tile_d"(
        const double* xp, const double* k, double bias, double* y, Py_ssize_t ldy, Py_ssize_t plane,
        Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0, Py_ssize_t r1,
        Py_ssize_t nv) noexcept nogil


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


def conv2d_forward_band(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                        const floating[:, :, :, ::1] k,      # IN  (1, C_in, KH, KW)
                        const floating[::1] b,               # IN  (1,)
                        floating[:, :, :, ::1] y,            # OUT (N, 1, OH, OW)
                        floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp), any values
                        Py_ssize_t PT, Py_ssize_t PL, int num_threads):
    """y[n, 0] = b[0] + Σ_i xcorr(x[n, i], k[0, i]), stride 1, zero padding PT on top and PL on the left
    (bottom and right follow from y's shape: Hp = OH + KH - 1, Wp = OW + KW - 1); OH >= band_tile()[0],
    OW >= band_tile()[1]. Each thread zeroes its own slab first (_zero_slab)."""
    cdef Py_ssize_t n, t, N = x.shape[0]
    cdef Py_ssize_t Hp = y.shape[2] + k.shape[2] - 1, Wp = y.shape[3] + k.shape[3] - 1
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], 1, k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], 1, 1, PT, PL)
    _check_slabs(xpad.shape[0], xpad.shape[1], num_threads, g.C_in, Hp, Wp)
    if N == 0:
        return
    with nogil:
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            _zero_slab(&xpad[0, 0], xpad.shape[1])
            for n in range(N):
                _forward_band_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0], &xpad[0, 0], &g, Hp, Wp)
        else:
            t = 0  # (each thread sets its own: private in the region)
            with parallel(num_threads=num_threads):
                t = threadid()
                _zero_slab(&xpad[t, 0], xpad.shape[1])
                for n in prange(N, schedule='dynamic'):
                    _forward_band_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0], &xpad[t, 0], &g, Hp, Wp)


# ---------------------------------------------------------------------------------------------------
# Channel-vector direct forward (stride 1, any zero padding): vectors over output channels
#
# The same padded slab as the wide-row kernel, but a tile is CNN_EXT_CJV vectors of consecutive output
# channels x nq <= CNN_EXT_CNQ output pixels of one row: weights are vector loads from a packed copy
# kp[C_out / JW, C_in, KH, KW, JW] (JW = CNN_EXT_CJV lanes-vectors), inputs are broadcasts. No lane is wasted
# when C_out is a multiple of JW (the caller's condition), and rows split into chunks of 4 to 6 pixels.
# ---------------------------------------------------------------------------------------------------

cdef extern from *:
    """
    #define CNN_EXT_CJV 2
    #define CNN_EXT_CNQ 6
    #define CNN_EXT_DEFINE_CV_TILE(NAME, T, V)                                                            \\
    CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* kp, const T* b, T* stage, Py_ssize_t plane, \\
                                          Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, \\
                                          Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t j0, Py_ssize_t p,  \\
                                          Py_ssize_t q0, Py_ssize_t OW, const Py_ssize_t nq) {          \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), JW = CNN_EXT_CJV * L;                  \\
        const Py_ssize_t KK = KH * KW;                                                                   \\
        V acc[CNN_EXT_CNQ][CNN_EXT_CJV], w[CNN_EXT_CJV];                                                 \\
        Py_ssize_t i, kh, kw, qq, v, l;                                                                  \\
        const T* kb = kp + j0 * C_in * KK;                                                               \\
        for (qq = 0; qq < nq; qq++)                                                                      \\
            for (v = 0; v < CNN_EXT_CJV; v++)                                                            \\
                acc[qq][v] = *(const V*)(b + j0 + v * L);                                                \\
        for (i = 0; i < C_in; i++) {                                                                     \\
            const T* xi = xp + i * plane + p * Wp + q0;                                                  \\
            const T* ki = kb + i * KK * JW;                                                              \\
            for (kh = kh0; kh < kh1; kh++) {                                                             \\
                const T* xr = xi + kh * Wp;                                                              \\
                const T* kr = ki + kh * KW * JW;                                                         \\
                for (kw = 0; kw < KW; kw++) {                                                            \\
                    for (v = 0; v < CNN_EXT_CJV; v++)                                                    \\
                        w[v] = *(const V*)(kr + kw * JW + v * L);                                        \\
                    for (qq = 0; qq < nq; qq++) {                                                        \\
                        const T xs = xr[kw + qq];                                                        \\
                        for (v = 0; v < CNN_EXT_CJV; v++)                                                \\
                            acc[qq][v] += xs * w[v];                                                     \\
                    }                                                                                    \\
                }                                                                                        \\
            }                                                                                            \\
        }                                                                                                \\
        for (qq = 0; qq < nq; qq++)                                                                      \\
            for (v = 0; v < CNN_EXT_CJV; v++) {                                                          \\
                T lane[sizeof(V) / sizeof(T)];                                                           \\
                memcpy(lane, &acc[qq][v], sizeof(V));                                                    \\
                for (l = 0; l < L; l++)                                                                  \\
                    stage[(v * L + l) * OW + q0 + qq] = lane[l];                                         \\
            }                                                                                            \\
    }                                                                                                    \\
    static void NAME(const T* xp, const T* kp, const T* b, T* stage, Py_ssize_t plane, Py_ssize_t Wp,    \\
                     Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1,      \\
                     Py_ssize_t j0, Py_ssize_t p, Py_ssize_t q0, Py_ssize_t OW, Py_ssize_t nq) {         \\
        switch (nq) {                                                                                    \\
        case 1: CNN_EXT_CV_CALL(NAME, 1); break;                                                         \\
        case 2: CNN_EXT_CV_CALL(NAME, 2); break;                                                         \\
        case 3: CNN_EXT_CV_CALL(NAME, 3); break;                                                         \\
        case 4: CNN_EXT_CV_CALL(NAME, 4); break;                                                         \\
        case 5: CNN_EXT_CV_CALL(NAME, 5); break;                                                         \\
        default: CNN_EXT_CV_CALL(NAME, 6); break;                                                        \\
        }                                                                                                \\
    }
    #define CNN_EXT_CV_CALL(NAME, NQ) \\
        NAME##_fixed(xp, kp, b, stage, plane, Wp, C_in, KH, KW, kh0, kh1, j0, p, q0, OW, NQ)
    CNN_EXT_DEFINE_CV_TILE(cnn_ext_cv_tile_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_CV_TILE(cnn_ext_cv_tile_d, double, cnn_ext_vd)
    """
    enum: CNN_EXT_CJV         # vectors of output channels per channel-vector tile
    enum: CNN_EXT_CNQ         # output pixels per channel-vector tile, at most
    void _cv_tile_f "cnn_ext_cv_tile_f"(
        const float* xp, const float* kp, const float* b, float* stage, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t j0,
        Py_ssize_t p, Py_ssize_t q0, Py_ssize_t OW, Py_ssize_t nq) noexcept nogil
    void _cv_tile_d "cnn_ext_cv_tile_d"(
        const double* xp, const double* kp, const double* b, double* stage, Py_ssize_t plane, Py_ssize_t Wp,
        Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t j0,
        Py_ssize_t p, Py_ssize_t q0, Py_ssize_t OW, Py_ssize_t nq) noexcept nogil


def channel_tile(bint single):
    """Output channels per channel-vector tile in this build (float32 if single): C_out must be a multiple."""
    return CNN_EXT_CJV * (CNN_EXT_LANES_F if single else CNN_EXT_LANES_D)


cdef void _forward_cv_one(const floating* x, const floating* kp, const floating* b, floating* y,
                          floating* xp, floating* stage, const Geom* g, Py_ssize_t Hp,
                          Py_ssize_t Wp) noexcept nogil:
    """y[j] = b[j] + Σ_i xcorr_valid(pad(x[i]), k[j, i]) by channel-vector tiles (kp packed, see above).

    Tiles store one output row of JW channels into stage[JW, OW], copied to y when the row is done: storing
    the lanes straight into y hits JW addresses OH*OW apart, the same L1 set when that is 4 KiB (float32
    32x32 maps ran 2x slower)."""
    cdef Py_ssize_t JW = CNN_EXT_CJV * (CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D)
    cdef Py_ssize_t C_in = g.C_in, C_out = g.C_out, H = g.H, OH = g.OH, OW = g.OW
    cdef Py_ssize_t plane = Hp * Wp, c, j0, p, q0, nq, kh0, kh1, nchunk, chunk, l
    cdef floating* dst
    cdef const floating* src
    _copy_padded(x, xp, g, plane, Wp)
    nchunk = (OW + CNN_EXT_CNQ - 1) // CNN_EXT_CNQ
    j0 = 0
    while j0 < C_out:
        for p in range(OH):
            kh0 = max(0, g.PH - p)  # kernel rows on padding rows only add zeros
            kh1 = min(g.KH, g.PH + H - p)
            q0 = 0
            for chunk in range(nchunk):
                nq = (OW - q0 + nchunk - chunk - 1) // (nchunk - chunk)
                if floating is float:
                    _cv_tile_f(xp, kp, b, stage, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, j0, p, q0, OW, nq)
                else:
                    _cv_tile_d(xp, kp, b, stage, plane, Wp, C_in, g.KH, g.KW, kh0, kh1, j0, p, q0, OW, nq)
                q0 += nq
            for l in range(JW):
                dst = y + ((j0 + l) * OH + p) * OW
                src = stage + l * OW
                for c in range(OW):
                    dst[c] = src[c]
        j0 += JW


def conv2d_forward_cv(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                      const floating[:, :, :, :, ::1] kp,  # IN  (C_out / JW, C_in, KH, KW, JW) packed kernels
                      const floating[::1] b,               # IN  (C_out,)
                      floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                      floating[:, ::1] xpad,               # TMP (threads, C_in*Hp*Wp), any values
                      floating[:, ::1] stage,              # TMP (threads, JW*OW)
                      Py_ssize_t PT, Py_ssize_t PL, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]), stride 1, zero padding PT on top and PL on the left;
    kp[jb, i, kh, kw, l] = k[jb*JW + l, i, kh, kw] with JW = channel_tile(); C_out a multiple of JW."""
    cdef Py_ssize_t n, t, N = x.shape[0]
    cdef Py_ssize_t KH = kp.shape[2], KW = kp.shape[3]
    cdef Py_ssize_t Hp = y.shape[2] + KH - 1, Wp = y.shape[3] + KW - 1
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], y.shape[1], KH, KW,
                        y.shape[2], y.shape[3], 1, 1, PT, PL)
    if N == 0:
        return
    with nogil:
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            _zero_slab(&xpad[0, 0], xpad.shape[1])
            for n in range(N):
                _forward_cv_one(&x[n, 0, 0, 0], &kp[0, 0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                &xpad[0, 0], &stage[0, 0], &g, Hp, Wp)
        else:
            t = 0  # (each thread sets its own: private in the region)
            with parallel(num_threads=num_threads):
                t = threadid()
                _zero_slab(&xpad[t, 0], xpad.shape[1])
                for n in prange(N, schedule='dynamic'):
                    _forward_cv_one(&x[n, 0, 0, 0], &kp[0, 0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                    &xpad[t, 0], &stage[t, 0], &g, Hp, Wp)


# ---------------------------------------------------------------------------------------------------
# GEMM kernels for one sample
# ---------------------------------------------------------------------------------------------------

cdef void _forward_gemm_one(const floating* x, const floating* k, const floating* b, floating* y,
                            floating* cols, const Geom* g, Py_ssize_t block) noexcept nogil:
    """y[:, P] = b + k[C_out, CKK] @ im2col(x)[CKK, P], one block of output pixels at a time"""
    cdef Py_ssize_t j, p, pix0, npix, P = g.OH * g.OW
    cdef int CKK = <int>(g.C_in * g.KH * g.KW)
    for j in range(g.C_out):
        for p in range(P):
            y[j * P + p] = b[j]
    pix0 = 0
    while pix0 < P:
        npix = min(block, P - pix0)
        _im2col(x, cols, g, pix0, npix)
        _gemm_rm(False, False, <int>g.C_out, <int>npix, CKK, <floating>1, k, CKK, cols, <int>npix,
                 <floating>1, y + pix0, <int>P)
        pix0 += npix


cdef void _kgrad_gemm_one(const floating* x, const floating* dy, floating* dk, floating* cols,
                          const Geom* g, Py_ssize_t block) noexcept nogil:
    """dk[C_out, CKK] += dy[C_out, P] @ im2col(x)[CKK, P]ᵀ, accumulated over blocks of output pixels"""
    cdef Py_ssize_t pix0, npix, P = g.OH * g.OW
    cdef int CKK = <int>(g.C_in * g.KH * g.KW)
    pix0 = 0
    while pix0 < P:
        npix = min(block, P - pix0)
        _im2col(x, cols, g, pix0, npix)
        _gemm_rm(False, True, <int>g.C_out, CKK, <int>npix, <floating>1, dy + pix0, <int>P, cols, <int>npix,
                 <floating>1, dk, CKK)
        pix0 += npix


cdef void _igrad_gemm_one(const floating* dy, const floating* k, floating* dx, floating* cols,
                          const Geom* g, Py_ssize_t block) noexcept nogil:
    """dx = col2im(k[C_out, CKK]ᵀ @ dy[C_out, P]), one block of output pixels at a time"""
    cdef Py_ssize_t i, pix0, npix, P = g.OH * g.OW
    cdef int CKK = <int>(g.C_in * g.KH * g.KW)
    for i in range(g.C_in * g.H * g.W):
        dx[i] = 0
    pix0 = 0
    while pix0 < P:
        npix = min(block, P - pix0)
        _gemm_rm(True, False, CKK, <int>npix, <int>g.C_out, <floating>1, k, CKK, dy + pix0, <int>P,
                 <floating>0, cols, <int>npix)
        _col2im(cols, dx, g, pix0, npix)
        pix0 += npix


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext.ops only)
# ---------------------------------------------------------------------------------------------------

def conv2d_forward(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                   const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                   const floating[::1] b,               # IN  (C_out,)
                   floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                   floating[:, ::1] scratch,            # TMP (threads, C_in*KH*KW*block) for gemm, else unused
                   Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW,
                   bint use_gemm, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) with stride (SH, SW) and zero padding (PH, PW)."""
    cdef Py_ssize_t n, N = x.shape[0]
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], SH, SW, PH, PW)
    cdef Py_ssize_t block = scratch.shape[1] // (g.C_in * g.KH * g.KW)
    if N == 0:
        return
    with nogil:
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            for n in range(N):
                if use_gemm:
                    _forward_gemm_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                      &scratch[0, 0], &g, block)
                else:
                    _forward_direct_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0], &g)
        else:
            for n in prange(N, schedule='dynamic', num_threads=num_threads):
                if use_gemm:
                    _forward_gemm_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0],
                                      &scratch[threadid(), 0], &g, block)
                else:
                    _forward_direct_one(&x[n, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[n, 0, 0, 0], &g)


def conv2d_kernel_gradient(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                           const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                           floating[:, :, :, ::1] dk,           # OUT (C_out, C_in, KH, KW)
                           floating[:, ::1] partial,            # TMP (nchunk, C_out*C_in*KH*KW[*OW if direct])
                           floating[:, ::1] scratch,            # TMP (threads, C_in*KH*KW*block) for gemm
                           Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW,
                           bint use_gemm, int num_threads):
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]) (with stride and padding), summed in fixed chunks."""
    cdef Py_ssize_t N = x.shape[0], nchunk = partial.shape[0], c, t, q
    cdef Py_ssize_t KK = dk.shape[0] * dk.shape[1] * dk.shape[2] * dk.shape[3]
    cdef Py_ssize_t OW = dy.shape[3], L = partial.shape[1]
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], dk.shape[0], dk.shape[2], dk.shape[3],
                        dy.shape[2], dy.shape[3], SH, SW, PH, PW)
    cdef Py_ssize_t block = scratch.shape[1] // (g.C_in * g.KH * g.KW)
    cdef floating s
    cdef floating* out = &dk[0, 0, 0, 0]
    cdef floating inv_n
    for t in range(KK):
        out[t] = 0
    if N == 0:
        return
    with nogil:
        inv_n = (<floating>1) / N
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            for c in range(nchunk):
                _kgrad_chunk(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[c, 0], L,
                             &scratch[0, 0],
                             (c * N) // nchunk, ((c + 1) * N) // nchunk, &g, use_gemm, block)
        else:
            for c in prange(nchunk, schedule='dynamic', num_threads=num_threads):
                _kgrad_chunk(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[c, 0], L,
                             &scratch[threadid(), 0],
                             (c * N) // nchunk, ((c + 1) * N) // nchunk, &g, use_gemm, block)
        for c in range(nchunk):
            if use_gemm:
                for t in range(KK):
                    out[t] += partial[c, t]
            else:
                for t in range(KK):
                    s = 0
                    for q in range(OW):
                        s = s + partial[c, t * OW + q]
                    out[t] += s
        for t in range(KK):
            out[t] *= inv_n


cdef void _kgrad_chunk(const floating* dy, const floating* x, floating* part, Py_ssize_t L,
                       floating* cols, Py_ssize_t lo, Py_ssize_t hi, const Geom* g,
                       bint use_gemm, Py_ssize_t block) noexcept nogil:
    """part = Σ_{n in [lo, hi)} per-sample kernel-gradient terms, in sample order."""
    cdef Py_ssize_t n, t
    cdef Py_ssize_t xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    for t in range(L):
        part[t] = 0
    for n in range(lo, hi):
        if use_gemm:
            _kgrad_gemm_one(x + n * xs, dy + n * ys, part, cols, g, block)
        else:
            _kgrad_direct_one(x + n * xs, dy + n * ys, part, g)


def conv2d_bias_gradient(const floating[:, :, :, ::1] dy,    # IN  (N, C_out, OH, OW)
                         floating[::1] db,                   # OUT (C_out,)
                         floating[:, ::1] acc,               # TMP (C_out, CNN_EXT_SUM_LANES)
                         int num_threads):
    """db[j] = (1/N) Σ_{n, p, q} dy[n, j, p, q]: lane sums per channel, the lanes added in order at the end.

    The array is read in memory order (sample by sample, each thread its block of channels), which the
    hardware prefetchers stream; one channel at a time over all samples jumps every plane (measured 16 vs
    19 GB/s, float64 (64, 64, 26, 26)). A channel's sums do not depend on the blocks, so neither on threads.
    """
    cdef Py_ssize_t N = dy.shape[0], C = dy.shape[1], P = dy.shape[2] * dy.shape[3]
    cdef Py_ssize_t j, l, t, nt = max(1, min(<Py_ssize_t>num_threads, C))
    cdef Py_ssize_t lanes = 8 * (CNN_EXT_LANES_F if floating is float else CNN_EXT_LANES_D)
    cdef floating s
    if N == 0 or P == 0:
        db[:] = 0
        return
    with nogil:
        if nt == 1:  # no parallel region: entering one costs ~0.7 µs even for one thread
            _bias_sum_block(&dy[0, 0, 0, 0], &acc[0, 0], 0, C, N, C, P)
        else:
            for t in prange(nt, schedule='static', num_threads=nt):
                _bias_sum_block(&dy[0, 0, 0, 0], &acc[0, 0], (t * C) // nt, ((t + 1) * C) // nt, N, C, P)
        for j in range(C):
            s = 0
            for l in range(lanes):
                s = s + acc[j, l]
            db[j] = s / N


cdef extern from *:
    """
    /* Σ of a contiguous plane into 8 vector accumulators (64 float32 / 32 float64 lanes with AVX2): eight
     * independent add chains keep both vector adders busy (one chain of 16 scalar lanes, as before, waited
     * on the add latency: ~4 floats per cycle). Lane l takes the elements t = l mod (8 * lanes) of each
     * plane, in plane order, whatever the thread count. */
    #define CNN_EXT_DEFINE_PLANE_SUM(NAME, T, V)                                                          \\
    static void NAME(const T* x, Py_ssize_t n, T* acc) {                                                 \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), B = 8 * L;                              \\
        V a0 = *(V*)(acc), a1 = *(V*)(acc + L), a2 = *(V*)(acc + 2 * L), a3 = *(V*)(acc + 3 * L);        \\
        V a4 = *(V*)(acc + 4 * L), a5 = *(V*)(acc + 5 * L), a6 = *(V*)(acc + 6 * L), a7 = *(V*)(acc + 7 * L); \\
        Py_ssize_t t, nb = n - n % B;                                                                      \\
        for (t = 0; t < nb; t += B) {                                                                     \\
            a0 += *(const V*)(x + t);         a1 += *(const V*)(x + t + L);                               \\
            a2 += *(const V*)(x + t + 2 * L); a3 += *(const V*)(x + t + 3 * L);                           \\
            a4 += *(const V*)(x + t + 4 * L); a5 += *(const V*)(x + t + 5 * L);                           \\
            a6 += *(const V*)(x + t + 6 * L); a7 += *(const V*)(x + t + 7 * L);                           \\
        }                                                                                                 \\
        *(V*)(acc) = a0; *(V*)(acc + L) = a1; *(V*)(acc + 2 * L) = a2; *(V*)(acc + 3 * L) = a3;          \\
        *(V*)(acc + 4 * L) = a4; *(V*)(acc + 5 * L) = a5; *(V*)(acc + 6 * L) = a6; *(V*)(acc + 7 * L) = a7; \\
        for (t = nb; t < n; t++)                                                                          \\
            acc[t - nb] += x[t];                                                                          \\
    }
    CNN_EXT_DEFINE_PLANE_SUM(cnn_ext_plane_sum_f, float, cnn_ext_vf)
    CNN_EXT_DEFINE_PLANE_SUM(cnn_ext_plane_sum_d, double, cnn_ext_vd)
    #define CNN_EXT_SUM_LANES 64  /* >= 8 vectors of float32 in any build (8 x 8 with AVX2) */
    """
    enum: CNN_EXT_SUM_LANES
    void _plane_sum_f "cnn_ext_plane_sum_f"(const float* x, Py_ssize_t n, float* acc) noexcept nogil
    void _plane_sum_d "cnn_ext_plane_sum_d"(const double* x, Py_ssize_t n, double* acc) noexcept nogil

SUM_LANES = CNN_EXT_SUM_LANES  # columns of conv2d_bias_gradient's acc scratch


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


def conv2d_input_gradient(const floating[:, :, :, ::1] dy,    # IN  (N, C_out, OH, OW)
                          const floating[:, :, :, ::1] k,     # IN  (C_out, C_in, KH, KW)
                          floating[:, :, :, ::1] dx,          # OUT (N, C_in, H, W)
                          floating[:, ::1] scratch,           # TMP (threads, C_in*KH*KW*block) for gemm
                          Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW,
                          bint use_gemm, int num_threads):
    """dx[n, i] = Σ_j conv_full(dy[n, j], k[j, i]) (the adjoint of the forward map, with stride and padding):
    BLAS + col2im, or (stride 1, no padding) scatter loops that only win on tiny layers; the stride-1 direct
    method is otherwise the forward kernels on padded dy (see cnn_ext.ops)."""
    cdef Py_ssize_t n, N = dy.shape[0]
    cdef Geom g = _geom(dx.shape[1], dx.shape[2], dx.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        dy.shape[2], dy.shape[3], SH, SW, PH, PW)
    cdef Py_ssize_t block = scratch.shape[1] // (g.C_in * g.KH * g.KW)
    if N == 0:
        return
    with nogil:
        if num_threads == 1:  # no parallel region (entering one costs ~0.7 µs even for one thread)
            for n in range(N):
                if use_gemm:
                    _igrad_gemm_one(&dy[n, 0, 0, 0], &k[0, 0, 0, 0], &dx[n, 0, 0, 0],
                                    &scratch[0, 0], &g, block)
                else:
                    _igrad_direct_one(&dy[n, 0, 0, 0], &k[0, 0, 0, 0], &dx[n, 0, 0, 0], &g)
        else:
            for n in prange(N, schedule='dynamic', num_threads=num_threads):
                if use_gemm:
                    _igrad_gemm_one(&dy[n, 0, 0, 0], &k[0, 0, 0, 0], &dx[n, 0, 0, 0],
                                    &scratch[threadid(), 0], &g, block)
                else:
                    _igrad_direct_one(&dy[n, 0, 0, 0], &k[0, 0, 0, 0], &dx[n, 0, 0, 0], &g)


# ---------------------------------------------------------------------------------------------------
# Matrix product for the Dense layers: the output columns split over the OpenMP team, one
# single-threaded BLAS call per block (the same threading layer as the convolutions).
# ---------------------------------------------------------------------------------------------------

def matmul(const floating[:, ::1] a,       # IN  (M, K), or (K, M) if trans_a
           const floating[:, ::1] b,       # IN  (K, N), or (N, K) if trans_b
           floating[:, ::1] c,             # OUT (M, N)
           bint trans_a, bint trans_b, Py_ssize_t nblk, int num_threads):
    """c = op(a) @ op(b) in nblk column blocks, each one BLAS call, shared out over num_threads threads
    (the blocks do not depend on the thread count: neither does the result)."""
    cdef Py_ssize_t M = c.shape[0], N = c.shape[1]
    cdef Py_ssize_t K = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t t
    nblk = max(1, min(nblk, N))
    if M == 0 or N == 0:
        return
    if K == 0:
        c[:, :] = 0
        return
    with nogil:
        if num_threads == 1:
            for t in range(nblk):
                _matmul_block(&a[0, 0], &b[0, 0], &c[0, 0], M, N, K, trans_a, trans_b,
                              (t * N) // nblk, ((t + 1) * N) // nblk)
        else:
            for t in prange(nblk, schedule='dynamic', num_threads=num_threads):
                _matmul_block(&a[0, 0], &b[0, 0], &c[0, 0], M, N, K, trans_a, trans_b,
                              (t * N) // nblk, ((t + 1) * N) // nblk)


cdef void _matmul_block(const floating* a, const floating* b, floating* c, Py_ssize_t M, Py_ssize_t N,
                        Py_ssize_t K, bint trans_a, bint trans_b, Py_ssize_t j0, Py_ssize_t j1) noexcept nogil:
    """c[:, j0:j1] = op(a) @ op(b)[:, j0:j1]"""
    if j1 <= j0:
        return
    _gemm_rm(trans_a, trans_b, <int>M, <int>(j1 - j0), <int>K, <floating>1, a,
             <int>(M if trans_a else K), b + (j0 * K if trans_b else j0), <int>(K if trans_b else N),
             <floating>0, c + j0, <int>N)
