# cython: language_level=3
"""2-D max and average pooling (NCHW, no padding, floor mode) and their input gradients.

cnn_ext/pooling.py validates every argument and allocates outputs; each `def` here takes typed memoryviews,
releases the GIL for the whole loop and never raises. Every (sample, channel) plane is independent, so the
(N*C) planes are split over OpenMP threads (not just the N samples: a single image with many channels still
uses every thread); nothing is reduced across planes, so results do not depend on the thread count.
Ties in max pooling: the first maximum in row-major window order wins (strict `>` scan); a NaN wins over
any number, the first NaN over later ones, so NaN propagates as in PyTorch. Argmax positions are int32 (H*W is
guarded in Python) so that they share the vector lanes of float32 values.
Windows two columns wide with stride 2 (2x2 above all) run the vector rows of the C block below (contiguous loads
deinterleaved in registers); every other shape runs the generic loops. The module is built twice, baseline and
AVX2 (cnn_ext._pool_avx2, picked at import by cnn_ext._kernels): 8-float vectors halve the work of the rows.
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


cdef extern from *:
    """
    /* Rows of 2-wide, stride-2 windows (KW == SW == 2, any KH and SH), one body for float and double.
     *
     * One step handles L = lanes consecutive outputs of an output row: per window row it loads the 2L contiguous
     * inputs as two GNU vectors and deinterleaves them (__builtin_shufflevector) into the even (kw = 0) and odd
     * (kw = 1) columns, so every load is contiguous (the generic loops read x[q*SW] and do not vectorise).
     * Max: each window row is reduced first (kw = 1 taken over kw = 0 only when strictly greater, or NaN over a
     * number), then the rows are merged in kh order with the same rule; as that rule picks the first element of
     * the largest class of a total preorder (NaN above every number), merging in row-major order gives the
     * same pick as one row-major scan. Average: the same chain of additions as the generic loops (0, then kh,
     * kw in row-major order), then the same division. The last block of a row overlaps the previous one
     * instead of running a scalar tail: it recomputes and stores the same values (needs OW >= L).
     * The average's gradient (KH <= SH) writes every dx element once: dy / (2*KH) + 0, the + 0 making it
     * bitwise the zero-then-add of the generic loops (-0 -> +0). The max gradient keeps the generic
     * zero-then-scatter (measured: as fast or faster than a vector select per element).
     * CNN_POOL_MIN_OW_* is 0 where GNU vectors or __builtin_shufflevector are missing (MSVC): the callers
     * then keep the generic loops. */
    #if defined(__AVX__)
    #define CNN_POOL_VEC_BYTES 32
    #else
    #define CNN_POOL_VEC_BYTES 16
    #endif
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__has_builtin)
    #if __has_builtin(__builtin_shufflevector)
    #define CNN_POOL_SIMD 1
    #endif
    #endif

    #ifdef CNN_POOL_SIMD
    /* 16-byte vectors always (SSE2 / NEON), 32-byte ones too in the AVX build: a row takes the widest whose
     * lanes fit in OW (14x14 maps pool to 7 outputs a row, fewer than 8 floats). */
    typedef float cnn_pool_vf4 __attribute__((vector_size(16), aligned(4), may_alias));
    typedef double cnn_pool_vd2 __attribute__((vector_size(16), aligned(8), may_alias));
    typedef int cnn_pool_mi4 __attribute__((vector_size(16), aligned(4), may_alias));
    #define CNN_POOL_EVEN_F4(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6)
    #define CNN_POOL_ODD_F4(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7)
    #define CNN_POOL_DUPLO_F4(a) __builtin_shufflevector(a, a, 0, 0, 1, 1)
    #define CNN_POOL_DUPHI_F4(a) __builtin_shufflevector(a, a, 2, 2, 3, 3)
    #define CNN_POOL_EVEN_D2(a, b) __builtin_shufflevector(a, b, 0, 2)
    #define CNN_POOL_ODD_D2(a, b) __builtin_shufflevector(a, b, 1, 3)
    #define CNN_POOL_DUPLO_D2(a) __builtin_shufflevector(a, a, 0, 0)
    #define CNN_POOL_DUPHI_D2(a) __builtin_shufflevector(a, a, 1, 1)
    #if CNN_POOL_VEC_BYTES == 32
    typedef float cnn_pool_vf8 __attribute__((vector_size(32), aligned(4), may_alias));
    typedef double cnn_pool_vd4 __attribute__((vector_size(32), aligned(8), may_alias));
    typedef int cnn_pool_mi8 __attribute__((vector_size(32), aligned(4), may_alias));
    #define CNN_POOL_EVEN_F8(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
    #define CNN_POOL_ODD_F8(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
    #define CNN_POOL_DUPLO_F8(a) __builtin_shufflevector(a, a, 0, 0, 1, 1, 2, 2, 3, 3)
    #define CNN_POOL_DUPHI_F8(a) __builtin_shufflevector(a, a, 4, 4, 5, 5, 6, 6, 7, 7)
    #define CNN_POOL_EVEN_D4(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6)
    #define CNN_POOL_ODD_D4(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7)
    #define CNN_POOL_DUPLO_D4(a) __builtin_shufflevector(a, a, 0, 0, 1, 1)
    #define CNN_POOL_DUPHI_D4(a) __builtin_shufflevector(a, a, 2, 2, 3, 3)
    #endif
    #define CNN_POOL_MIN_OW_F 4
    #define CNN_POOL_MIN_OW_D 2

    /* All-ones int32 lanes (MI) where v must replace the running max b: v > b, or v is NaN and b is not.
     * Masks are combined as int32 lanes even for double: gcc folds the three double compares into one
     * boolean vector and, in the SSE2 build, materialises it with scalar code (measured: slower than the
     * generic loops); each compare cast on its own stays one cmppd. */
    #define CNN_POOL_TAKE(MI, v, b) ((MI)((v) > (b)) | ((MI)((v) != (v)) & (MI)((b) == (b))))
    #define CNN_POOL_SEL(V, MI, m, a, b) ((V)(((MI)(a) & (m)) | ((MI)(b) & ~(m))))

    /* Window positions (flat r*W + c, int32 as stored) live in int32 lanes MI, NI of them: for float lane j
     * belongs to output lane j; for double the two int32 halves of output lane j/2 hold the same value (so a
     * double compare mask applies to them unchanged). LANE(j) is that output lane; SI stores one position
     * per output lane (L of them). */
    #define CNN_POOL_LANE_F(j) (j)
    #define CNN_POOL_LANE_D(j) ((j) / 2)
    #define CNN_POOL_DEFINE_POSITIONS(NAME, MI, L)                                                        \\
    static inline void NAME##_storei_f(int* p, MI v) { *(MI*)p = v; }                                     \\
    static inline void NAME##_storei_d(int* p, MI v) {                                                    \\
        int k;                                                                                            \\
        for (k = 0; k < (L); k++)                                                                         \\
            p[k] = v[2 * k];                                                                              \\
    }

    /* T scalar, V its vector, MI / NI its position lanes; E / O deinterleave, DL / DH duplicate the low /
     * high half of a V; LANE, SI as above. */
    #define CNN_POOL_DEFINE_ROWS2(NAME, T, V, MI, NI, E, O, DL, DH, LANE, SI)                             \\
    static inline __attribute__((always_inline)) void NAME##_max_fixed(                                   \\
            const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t r0, Py_ssize_t KH, Py_ssize_t OW,        \\
            const int want_idx) {                                                                         \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                         \\
        MI lane2;                                                                                         \\
        Py_ssize_t j, kh, q0 = 0;                                                                         \\
        for (j = 0; j < NI; j++)                                                                          \\
            lane2[j] = (int)(2 * LANE(j));                                                                \\
        for (;;) {                                                                                        \\
            const T* xr;                                                                                  \\
            V a, b, e, o, best, h;                                                                        \\
            MI t, u, pos, bi;                                                                             \\
            if (q0 + L > OW)                                                                              \\
                q0 = OW - L;                                                                              \\
            xr = x + r0 * W + 2 * q0;                                                                     \\
            pos = lane2 + (int)(r0 * W + 2 * q0);                                                         \\
            a = *(const V*)xr; b = *(const V*)(xr + L);                                                   \\
            e = E(a, b); o = O(a, b);                                                                     \\
            t = CNN_POOL_TAKE(MI, o, e);                                                                  \\
            best = CNN_POOL_SEL(V, MI, t, o, e);                                                          \\
            bi = pos - t;                                                                                 \\
            for (kh = 1; kh < KH; kh++) {                                                                 \\
                xr += W; pos += (int)W;                                                                   \\
                a = *(const V*)xr; b = *(const V*)(xr + L);                                               \\
                e = E(a, b); o = O(a, b);                                                                 \\
                t = CNN_POOL_TAKE(MI, o, e);                                                              \\
                h = CNN_POOL_SEL(V, MI, t, o, e);                                                         \\
                u = CNN_POOL_TAKE(MI, h, best);                                                           \\
                best = CNN_POOL_SEL(V, MI, u, h, best);                                                   \\
                if (want_idx)                                                                             \\
                    bi = (bi & ~u) | ((pos - t) & u);                                                     \\
            }                                                                                             \\
            *(V*)(y + q0) = best;                                                                         \\
            if (want_idx)                                                                                 \\
                SI(idx + q0, bi);                                                                         \\
            q0 += L;                                                                                      \\
            if (q0 >= OW)                                                                                 \\
                break;                                                                                    \\
        }                                                                                                 \\
    }                                                                                                     \\
    static void NAME##_max(const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,        \\
                           Py_ssize_t OH, Py_ssize_t OW, int want_idx) {                                  \\
        Py_ssize_t p;                                                                                     \\
        for (p = 0; p < OH; p++) {                                                                        \\
            if (want_idx)                                                                                 \\
                NAME##_max_fixed(x, y + p * OW, idx + p * OW, W, p * SH, KH, OW, 1);                      \\
            else                                                                                          \\
                NAME##_max_fixed(x, y + p * OW, idx, W, p * SH, KH, OW, 0);                               \\
        }                                                                                                 \\
    }                                                                                                     \\
    static inline __attribute__((always_inline)) void NAME##_avg_row(                                     \\
            const T* x, T* y, Py_ssize_t W, Py_ssize_t r0, Py_ssize_t KH, Py_ssize_t OW) {                \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                         \\
        const V cnt = (V){0} + (T)(2 * KH), zero = (V){0};                                                \\
        Py_ssize_t kh, q0 = 0;                                                                            \\
        for (;;) {                                                                                        \\
            const T* xr;                                                                                  \\
            V a, b, s = zero;                                                                             \\
            if (q0 + L > OW)                                                                              \\
                q0 = OW - L;                                                                              \\
            xr = x + r0 * W + 2 * q0;                                                                     \\
            for (kh = 0; kh < KH; kh++, xr += W) {                                                        \\
                a = *(const V*)xr; b = *(const V*)(xr + L);                                               \\
                s = s + E(a, b);                                                                          \\
                s = s + O(a, b);                                                                          \\
            }                                                                                             \\
            *(V*)(y + q0) = s / cnt;                                                                      \\
            q0 += L;                                                                                      \\
            if (q0 >= OW)                                                                                 \\
                break;                                                                                    \\
        }                                                                                                 \\
    }                                                                                                     \\
    static void NAME##_avg(const T* x, T* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,   \\
                           Py_ssize_t OW) {                                                               \\
        Py_ssize_t p;                                                                                     \\
        for (p = 0; p < OH; p++)                                                                          \\
            NAME##_avg_row(x, y + p * OW, W, p * SH, KH, OW);                                             \\
    }                                                                                                     \\
    /* the whole dx plane of disjoint windows (KH <= SH): dx[r, 2q + kw] = dy[p, q] / (2*KH) + 0 on window \\
     * rows, 0 on the last column when W is odd and on the rows no window reaches */                      \\
    static void NAME##_avg_grad(const T* dy, T* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,            \\
                                Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW) {                            \\
        const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                         \\
        const V cnt = (V){0} + (T)(2 * KH), zero = (V){0};                                                \\
        Py_ssize_t r, c, q0, p = 0, kh = 0;                                                               \\
        for (r = 0; r < H; r++) {                                                                         \\
            T* dxr = dx + r * W;                                                                          \\
            c = 0;                                                                                        \\
            if (p < OH && kh < KH) {                                                                      \\
                for (q0 = 0;;) {                                                                          \\
                    V d;                                                                                  \\
                    if (q0 + L > OW)                                                                      \\
                        q0 = OW - L;                                                                      \\
                    d = *(const V*)(dy + p * OW + q0) / cnt;                                              \\
                    *(V*)(dxr + 2 * q0) = DL(d) + zero;                                                   \\
                    *(V*)(dxr + 2 * q0 + L) = DH(d) + zero;                                               \\
                    q0 += L;                                                                              \\
                    if (q0 >= OW)                                                                         \\
                        break;                                                                            \\
                }                                                                                         \\
                c = 2 * OW;                                                                               \\
            }                                                                                             \\
            for (; c < W; c++)                                                                            \\
                dxr[c] = 0;                                                                               \\
            if (++kh == SH) {                                                                             \\
                kh = 0;                                                                                   \\
                p++;                                                                                      \\
            }                                                                                             \\
        }                                                                                                 \\
    }
    CNN_POOL_DEFINE_POSITIONS(cnn_pool_p4, cnn_pool_mi4, 2)
    CNN_POOL_DEFINE_ROWS2(cnn_pool_f4, float, cnn_pool_vf4, cnn_pool_mi4, 4, CNN_POOL_EVEN_F4, CNN_POOL_ODD_F4,
                          CNN_POOL_DUPLO_F4, CNN_POOL_DUPHI_F4, CNN_POOL_LANE_F, cnn_pool_p4_storei_f)
    CNN_POOL_DEFINE_ROWS2(cnn_pool_d2, double, cnn_pool_vd2, cnn_pool_mi4, 4, CNN_POOL_EVEN_D2, CNN_POOL_ODD_D2,
                          CNN_POOL_DUPLO_D2, CNN_POOL_DUPHI_D2, CNN_POOL_LANE_D, cnn_pool_p4_storei_d)
    #if CNN_POOL_VEC_BYTES == 32
    CNN_POOL_DEFINE_POSITIONS(cnn_pool_p8, cnn_pool_mi8, 4)
    CNN_POOL_DEFINE_ROWS2(cnn_pool_f8, float, cnn_pool_vf8, cnn_pool_mi8, 8, CNN_POOL_EVEN_F8, CNN_POOL_ODD_F8,
                          CNN_POOL_DUPLO_F8, CNN_POOL_DUPHI_F8, CNN_POOL_LANE_F, cnn_pool_p8_storei_f)
    CNN_POOL_DEFINE_ROWS2(cnn_pool_d4, double, cnn_pool_vd4, cnn_pool_mi8, 8, CNN_POOL_EVEN_D4, CNN_POOL_ODD_D4,
                          CNN_POOL_DUPLO_D4, CNN_POOL_DUPHI_D4, CNN_POOL_LANE_D, cnn_pool_p8_storei_d)
    #define CNN_POOL_WIDE(OW, LANES, WIDE, NARROW, ARGS) do { if ((OW) >= (LANES)) WIDE ARGS; else NARROW ARGS; } while (0)
    #else
    #define CNN_POOL_WIDE(OW, LANES, WIDE, NARROW, ARGS) NARROW ARGS
    #endif
    /* the entry points: the widest vectors that fit in OW (>= CNN_POOL_MIN_OW_*, checked by the caller) */
    #define CNN_POOL_DEFINE_ENTRIES(NAME, T, WIDE, NARROW, WL)                                            \\
    static void NAME##_max(const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,        \\
                           Py_ssize_t OH, Py_ssize_t OW, int want_idx) {                                  \\
        CNN_POOL_WIDE(OW, WL, WIDE##_max, NARROW##_max, (x, y, idx, W, KH, SH, OH, OW, want_idx));        \\
    }                                                                                                     \\
    static void NAME##_avg(const T* x, T* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,   \\
                           Py_ssize_t OW) {                                                               \\
        CNN_POOL_WIDE(OW, WL, WIDE##_avg, NARROW##_avg, (x, y, W, KH, SH, OH, OW));                       \\
    }                                                                                                     \\
    static void NAME##_avg_grad(const T* dy, T* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,            \\
                                Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW) {                            \\
        CNN_POOL_WIDE(OW, WL, WIDE##_avg_grad, NARROW##_avg_grad, (dy, dx, H, W, KH, SH, OH, OW));        \\
    }
    CNN_POOL_DEFINE_ENTRIES(cnn_pool_rows2_f, float, cnn_pool_f8, cnn_pool_f4, 8)
    CNN_POOL_DEFINE_ENTRIES(cnn_pool_rows2_d, double, cnn_pool_d4, cnn_pool_d2, 4)
    #else
    #define CNN_POOL_MIN_OW_F 0
    #define CNN_POOL_MIN_OW_D 0
    #define CNN_POOL_NO_ROWS2(NAME, T)                                                                    \\
    static void NAME##_max(const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,        \\
                           Py_ssize_t OH, Py_ssize_t OW, int want_idx) {}                                 \\
    static void NAME##_avg(const T* x, T* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,   \\
                           Py_ssize_t OW) {}                                                              \\
    static void NAME##_avg_grad(const T* dy, T* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,            \\
                                Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW) {}
    CNN_POOL_NO_ROWS2(cnn_pool_rows2_f, float)
    CNN_POOL_NO_ROWS2(cnn_pool_rows2_d, double)
    #endif
    """
    enum: CNN_POOL_MIN_OW_F   # narrowest output row of the float vector rows (4; 0: none in this build)
    enum: CNN_POOL_MIN_OW_D
    void _rows2_max_f "cnn_pool_rows2_f_max"(const float* x, float* y, int* idx, Py_ssize_t W, Py_ssize_t KH,
                                             Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW, int want_idx) noexcept nogil
    void _rows2_max_d "cnn_pool_rows2_d_max"(const double* x, double* y, int* idx, Py_ssize_t W, Py_ssize_t KH,
                                             Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW, int want_idx) noexcept nogil
    void _rows2_avg_f "cnn_pool_rows2_f_avg"(const float* x, float* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,
                                             Py_ssize_t OH, Py_ssize_t OW) noexcept nogil
    void _rows2_avg_d "cnn_pool_rows2_d_avg"(const double* x, double* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,
                                             Py_ssize_t OH, Py_ssize_t OW) noexcept nogil
    void _rows2_avg_grad_f "cnn_pool_rows2_f_avg_grad"(const float* dy, float* dx, Py_ssize_t H, Py_ssize_t W,
                                                       Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,
                                                       Py_ssize_t OW) noexcept nogil
    void _rows2_avg_grad_d "cnn_pool_rows2_d_avg_grad"(const double* dy, double* dx, Py_ssize_t H, Py_ssize_t W,
                                                       Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,
                                                       Py_ssize_t OW) noexcept nogil


cdef inline bint _rows2_ok(const floating* x, const PoolGeom* g) noexcept nogil:
    """True when the vector rows for KW == SW == 2 apply (any KH, SH): rows of at least one 16-byte vector;
    x only picks the dtype."""
    cdef Py_ssize_t min_ow = CNN_POOL_MIN_OW_F if floating is float else CNN_POOL_MIN_OW_D
    return g.KW == 2 and g.SW == 2 and min_ow > 0 and g.OW >= min_ow


cdef inline void _rows2_max(const floating* x, floating* y, int* idx, bint want_idx,
                            const PoolGeom* g) noexcept nogil:
    """y[p, q], idx[p, q] = first max of x[p*SH : p*SH+KH, 2q : 2q+2] (row-major); needs _rows2_ok"""
    if floating is float:
        _rows2_max_f(x, y, idx, g.W, g.KH, g.SH, g.OH, g.OW, want_idx)
    else:
        _rows2_max_d(x, y, idx, g.W, g.KH, g.SH, g.OH, g.OW, want_idx)


cdef inline void _rows2_avg(const floating* x, floating* y, const PoolGeom* g) noexcept nogil:
    """y[p, q] = (1 / (2*KH)) Σ x[p*SH : p*SH+KH, 2q : 2q+2] (row-major chain from 0); needs _rows2_ok"""
    if floating is float:
        _rows2_avg_f(x, y, g.W, g.KH, g.SH, g.OH, g.OW)
    else:
        _rows2_avg_d(x, y, g.W, g.KH, g.SH, g.OH, g.OW)


cdef inline void _rows2_avg_grad(const floating* dy, floating* dx, const PoolGeom* g) noexcept nogil:
    """the dx plane of disjoint windows: dy[p, q] / (2*KH) over window (p, q), 0 elsewhere; needs _rows2_ok
    and KH <= SH"""
    if floating is float:
        _rows2_avg_grad_f(dy, dx, g.H, g.W, g.KH, g.SH, g.OH, g.OW)
    else:
        _rows2_avg_grad_d(dy, dx, g.H, g.W, g.KH, g.SH, g.OH, g.OW)


# ---------------------------------------------------------------------------------------------------
# one plane
# ---------------------------------------------------------------------------------------------------

cdef void _max_plane(const floating* x, floating* y, int* idx, bint want_idx,
                     const PoolGeom* g) noexcept nogil:
    """y[p, q] = max_{kh, kw} x[p*SH + kh, q*SW + kw]; idx[p, q] = flat index (in the H*W plane) of the first max.

    KW == SW == 2: the vector rows of the C block. Otherwise window offsets are visited in row-major order, each
    as one branch-free sweep along the output row: strict '>' keeps the first max; 'v != v' lets the first NaN
    win and stay.
    """
    cdef Py_ssize_t p, q, kh, kw, base, W = g.W, SW = g.SW, OW = g.OW
    cdef const floating* xrow
    cdef floating* yrow
    cdef int* irow
    cdef floating v, b
    cdef bint take
    if _rows2_ok(x, g):
        _rows2_max(x, y, idx, want_idx, g)
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


cdef void _max_grad_plane(const floating* dy, const int* idx, floating* dx,
                          const PoolGeom* g) noexcept nogil:
    """dx = 0; dx[idx[p, q]] += dy[p, q]  (overlapping windows accumulate)."""
    cdef Py_ssize_t t
    for t in range(g.H * g.W):
        dx[t] = 0
    for t in range(g.OH * g.OW):
        dx[idx[t]] += dy[t]


cdef void _avg_plane(const floating* x, floating* y, const PoolGeom* g) noexcept nogil:
    """y[p, q] = (1 / (KH*KW)) Σ_{kh, kw} x[p*SH + kh, q*SW + kw]

    KW == SW == 2: the vector rows of the C block. Otherwise one sweep along the output row per window offset,
    in row-major order, so every output still sums 0, then its window in row-major order (the order of the
    vector rows); a loop over each window instead gets gathers from gcc in the AVX2 build (slower for double).
    """
    cdef Py_ssize_t p, q, kh, kw, OW = g.OW, SW = g.SW
    cdef floating cnt = <floating>(g.KH * g.KW)
    cdef floating* yrow
    cdef const floating* xrow
    if _rows2_ok(x, g):
        _rows2_avg(x, y, g)
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
    offset, as _avg_plane (a loop over each window measured 20 % slower in the AVX2 build). Overlapping
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
    spread over its window; zeros where nothing lands. The average over disjoint 2-wide stride-2 windows
    (KH <= SH) writes dx once, by the vector rows; everything else zeroes the plane and adds (measured
    faster than writing each element once with a select: a zero pass is a memset)."""
    cdef Py_ssize_t t, planes = dx.shape[0] * dx.shape[1]
    cdef Py_ssize_t HW = dx.shape[2] * dx.shape[3], P = dy.shape[2] * dy.shape[3]
    cdef PoolGeom g = _pgeom(dx.shape[2], dx.shape[3], dy.shape[2], dy.shape[3], KH, KW, SH, SW)
    cdef bint rows2
    if planes == 0 or HW == 0:
        return
    rows2 = KH <= SH and _rows2_ok(&dy[0, 0, 0, 0], &g)
    with nogil:
        for t in prange(planes, schedule='static', num_threads=num_threads):
            if use_max:
                _max_grad_plane(&dy[0, 0, 0, 0] + t * P, &idx[0] + t * P, &dx[0, 0, 0, 0] + t * HW, &g)
            elif rows2:
                _rows2_avg_grad(&dy[0, 0, 0, 0] + t * P, &dx[0, 0, 0, 0] + t * HW, &g)
            else:
                _avg_grad_plane(&dy[0, 0, 0, 0] + t * P, &dx[0, 0, 0, 0] + t * HW, &g)
