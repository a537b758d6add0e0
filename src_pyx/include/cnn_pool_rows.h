/* Rows of K-wide, stride-K windows (KW == SW == K = 2 or 3, any KH and SH), one body for float and double.
 *
 * One step handles L = lanes consecutive outputs of an output row: per window row it loads the K*L
 * contiguous inputs as K GNU vectors and deinterleaves them (__builtin_shufflevector) into the K columns
 * kw, so every load is contiguous (the generic loops read x[q*SW] and do not vectorise).
 * Max: each window row is reduced first (a later kw taken only when strictly greater, or NaN over a
 * number), then the rows are merged in kh order with the same rule; as that rule picks the first element of
 * the largest class of a total preorder (NaN above every number), merging in row-major order gives the
 * same pick as one row-major scan; with relu, ReLU(x)'s pick (a window without a positive value or a
 * NaN: +0 at its first element). Average: the same chain of additions as the generic loops (0, then kh,
 * kw in row-major order), then the same division. The last block of a row overlaps the previous one
 * instead of running a scalar tail: it recomputes and stores the same values (needs OW >= L).
 * The average's gradient (K = 2, KH <= SH) writes every dx element once: dy / (2*KH) + 0, the + 0 making it
 * bitwise the zero-then-add of the generic loops (-0 -> +0). The max gradient keeps the generic
 * zero-then-scatter (measured: as fast or faster than a vector select per element).
 * CNN_POOL_MIN_OW_* is 0 where GNU vectors or __builtin_shufflevector are missing (MSVC): the callers
 * then keep the generic loops. */
#ifndef CNN_EXT_POOL_ROWS_H
#define CNN_EXT_POOL_ROWS_H

#include "cnn_simd.h"


#ifdef CNN_EXT_SHUFFLE
/* 16-byte vectors always (SSE2 / NEON), 32-byte ones too in the AVX build: a row takes the widest whose
 * lanes fit in OW (14x14 maps pool to 7 outputs a row, fewer than 8 floats). */
#define CNN_POOL_EVEN_F4(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6)
#define CNN_POOL_ODD_F4(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7)
#define CNN_POOL_DUPLO_F4(a) __builtin_shufflevector(a, a, 0, 0, 1, 1)
#define CNN_POOL_DUPHI_F4(a) __builtin_shufflevector(a, a, 2, 2, 3, 3)
#define CNN_POOL_EVEN_D2(a, b) __builtin_shufflevector(a, b, 0, 2)
#define CNN_POOL_ODD_D2(a, b) __builtin_shufflevector(a, b, 1, 3)
#define CNN_POOL_DUPLO_D2(a) __builtin_shufflevector(a, a, 0, 0)
#define CNN_POOL_DUPHI_D2(a) __builtin_shufflevector(a, a, 1, 1)
#define CNN_POOL_COL3_0_F4(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 0, 3, 6, 0), c, 0, 1, 2, 5)
#define CNN_POOL_COL3_1_F4(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 1, 4, 7, 0), c, 0, 1, 2, 6)
#define CNN_POOL_COL3_2_F4(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 2, 5, 0, 0), c, 0, 1, 4, 7)
#define CNN_POOL_COL3_0_D2(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 0, 3), c, 0, 1)
#define CNN_POOL_COL3_1_D2(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 1, 0), c, 0, 2)
#define CNN_POOL_COL3_2_D2(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 2, 0), c, 0, 3)
#if CNN_EXT_VEC_BYTES >= 32
#define CNN_POOL_EVEN_F8(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
#define CNN_POOL_ODD_F8(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
#define CNN_POOL_DUPLO_F8(a) __builtin_shufflevector(a, a, 0, 0, 1, 1, 2, 2, 3, 3)
#define CNN_POOL_DUPHI_F8(a) __builtin_shufflevector(a, a, 4, 4, 5, 5, 6, 6, 7, 7)
#define CNN_POOL_EVEN_D4(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6)
#define CNN_POOL_ODD_D4(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7)
#define CNN_POOL_DUPLO_D4(a) __builtin_shufflevector(a, a, 0, 0, 1, 1)
#define CNN_POOL_DUPHI_D4(a) __builtin_shufflevector(a, a, 2, 2, 3, 3)
#define CNN_POOL_COL3_0_F8(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 0, 3, 6, 9, 12, 15, 0, 0), c, 0, 1, 2, 3, 4, 5, 10, 13)
#define CNN_POOL_COL3_1_F8(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 1, 4, 7, 10, 13, 0, 0, 0), c, 0, 1, 2, 3, 4, 8, 11, 14)
#define CNN_POOL_COL3_2_F8(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 2, 5, 8, 11, 14, 0, 0, 0), c, 0, 1, 2, 3, 4, 9, 12, 15)
#define CNN_POOL_COL3_0_D4(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 0, 3, 6, 0), c, 0, 1, 2, 5)
#define CNN_POOL_COL3_1_D4(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 1, 4, 7, 0), c, 0, 1, 2, 6)
#define CNN_POOL_COL3_2_D4(a, b, c) __builtin_shufflevector(__builtin_shufflevector(a, b, 2, 5, 0, 0), c, 0, 1, 4, 7)
#endif
#define CNN_POOL_MIN_OW_F 4
#define CNN_POOL_MIN_OW_D 2
/* c[kw] = the kw-th column of the L windows (K wide, stride K) of one row: the K*L contiguous inputs from
 * xr, deinterleaved (K = 3: two shuffles per column, as one takes only two vectors) */
#define CNN_POOL_COLS2(V, L, E, O, xr, c)                                                             \
    do { V a_ = *(const V*)(xr), b_ = *(const V*)((xr) + (L)); (c)[0] = E(a_, b_); (c)[1] = O(a_, b_); } while (0)
#define CNN_POOL_COLS3(V, L, S, xr, c)                                                                \
    do { \
        V a_ = *(const V*)(xr), b_ = *(const V*)((xr) + (L)), c_ = *(const V*)((xr) + 2 * (L));       \
        (c)[0] = CNN_POOL_COL3_0_##S(a_, b_, c_);                                                     \
        (c)[1] = CNN_POOL_COL3_1_##S(a_, b_, c_);                                                     \
        (c)[2] = CNN_POOL_COL3_2_##S(a_, b_, c_);                                                     \
    } while (0)
#define CNN_POOL_COLS_K2_F4(xr, c) CNN_POOL_COLS2(cnn_ext_vf4, 4, CNN_POOL_EVEN_F4, CNN_POOL_ODD_F4, xr, c)
#define CNN_POOL_COLS_K2_D2(xr, c) CNN_POOL_COLS2(cnn_ext_vd2, 2, CNN_POOL_EVEN_D2, CNN_POOL_ODD_D2, xr, c)
#define CNN_POOL_COLS_K2_F8(xr, c) CNN_POOL_COLS2(cnn_ext_vf8, 8, CNN_POOL_EVEN_F8, CNN_POOL_ODD_F8, xr, c)
#define CNN_POOL_COLS_K2_D4(xr, c) CNN_POOL_COLS2(cnn_ext_vd4, 4, CNN_POOL_EVEN_D4, CNN_POOL_ODD_D4, xr, c)
#define CNN_POOL_COLS_K3_F4(xr, c) CNN_POOL_COLS3(cnn_ext_vf4, 4, F4, xr, c)
#define CNN_POOL_COLS_K3_D2(xr, c) CNN_POOL_COLS3(cnn_ext_vd2, 2, D2, xr, c)
#define CNN_POOL_COLS_K3_F8(xr, c) CNN_POOL_COLS3(cnn_ext_vf8, 8, F8, xr, c)
#define CNN_POOL_COLS_K3_D4(xr, c) CNN_POOL_COLS3(cnn_ext_vd4, 4, D4, xr, c)

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
#define CNN_POOL_DEFINE_POSITIONS(NAME, MI, L)                                                        \
static inline void NAME##_storei_f(int* p, MI v) { *(MI*)p = v; }                                     \
static inline void NAME##_storei_d(int* p, MI v) {                                                    \
    int k;                                                                                            \
    for (k = 0; k < (L); k++)                                                                         \
        p[k] = v[2 * k];                                                                              \
}

/* T scalar, V its vector, MI / NI its position lanes; windows K wide with stride K (K = 2, 3, any KH and
 * SH); COLS loads the columns of one window row, LANE, SI as above. Max: each window row is reduced over
 * kw, then the rows are merged in kh order, both with CNN_POOL_TAKE. */
#define CNN_POOL_DEFINE_ROWS(NAME, K, T, V, MI, NI, COLS, LANE, SI)                                   \
static inline __attribute__((always_inline)) void NAME##_hrow(                                        \
        const T* xr, MI pos, V* h, MI* hi, const int want_idx) {                                      \
    V cols[K];                                                                                        \
    MI t;                                                                                             \
    int kw;                                                                                           \
    COLS(xr, cols);                                                                                   \
    *h = cols[0];                                                                                     \
    *hi = pos;                                                                                        \
    for (kw = 1; kw < (K); kw++) {                                                                    \
        t = CNN_POOL_TAKE(MI, cols[kw], *h);                                                          \
        *h = CNN_POOL_SEL(V, MI, t, cols[kw], *h);                                                    \
        if (want_idx)                                                                                 \
            *hi = (*hi & ~t) | ((pos + kw) & t);                                                      \
    }                                                                                                 \
}                                                                                                     \
static inline __attribute__((always_inline)) void NAME##_max_fixed(                                   \
        const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t r0, Py_ssize_t KH, Py_ssize_t OW,        \
        const int want_idx, const int relu) {                                                         \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                         \
    MI laneK;                                                                                         \
    Py_ssize_t j, kh, q0 = 0;                                                                         \
    for (j = 0; j < NI; j++)                                                                          \
        laneK[j] = (int)((K) * LANE(j));                                                              \
    for (;;) {                                                                                        \
        const T* xr;                                                                                  \
        V best, h;                                                                                    \
        MI t, pos, first, bi, hi;                                                                     \
        if (q0 + L > OW)                                                                              \
            q0 = OW - L;                                                                              \
        xr = x + r0 * W + (K) * q0;                                                                   \
        pos = first = laneK + (int)(r0 * W + (K) * q0);                                               \
        NAME##_hrow(xr, pos, &best, &bi, want_idx);                                                   \
        for (kh = 1; kh < KH; kh++) {                                                                 \
            xr += W;                                                                                  \
            pos += (int)W;                                                                            \
            NAME##_hrow(xr, pos, &h, &hi, want_idx);                                                  \
            t = CNN_POOL_TAKE(MI, h, best);                                                           \
            best = CNN_POOL_SEL(V, MI, t, h, best);                                                   \
            if (want_idx)                                                                             \
                bi = (bi & ~t) | (hi & t);                                                            \
        }                                                                                             \
        if (relu) { /* ReLU(x) pooled: no positive value and no NaN, then ReLU's +0s: the first wins */  \
            t = (MI)(best > 0) | (MI)(best != best);                                                  \
            best = CNN_POOL_SEL(V, MI, t, best, (V){0});                                              \
            if (want_idx)                                                                             \
                bi = (bi & t) | (first & ~t);                                                         \
        }                                                                                             \
        *(V*)(y + q0) = best;                                                                         \
        if (want_idx)                                                                                 \
            SI(idx + q0, bi);                                                                         \
        q0 += L;                                                                                      \
        if (q0 >= OW)                                                                                 \
            break;                                                                                    \
    }                                                                                                 \
}                                                                                                     \
static void NAME##_max(const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,        \
                       Py_ssize_t OH, Py_ssize_t OW, int want_idx, int relu) {                        \
    Py_ssize_t p;                                                                                     \
    for (p = 0; p < OH; p++) {                                                                        \
        if (want_idx && relu)                                                                         \
            NAME##_max_fixed(x, y + p * OW, idx + p * OW, W, p * SH, KH, OW, 1, 1);                   \
        else if (want_idx)                                                                            \
            NAME##_max_fixed(x, y + p * OW, idx + p * OW, W, p * SH, KH, OW, 1, 0);                   \
        else if (relu)                                                                                \
            NAME##_max_fixed(x, y + p * OW, idx, W, p * SH, KH, OW, 0, 1);                            \
        else                                                                                          \
            NAME##_max_fixed(x, y + p * OW, idx, W, p * SH, KH, OW, 0, 0);                            \
    }                                                                                                 \
}                                                                                                     \
static void NAME##_avg(const T* x, T* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,   \
                       Py_ssize_t OW) {                                                               \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                         \
    const V cnt = (V){0} + (T)((K) * KH), zero = (V){0};                                              \
    Py_ssize_t p, kh, kw, q0;                                                                         \
    for (p = 0; p < OH; p++) {                                                                        \
        for (q0 = 0;;) {                                                                              \
            const T* xr;                                                                              \
            V cols[K], s = zero;                                                                      \
            if (q0 + L > OW)                                                                          \
                q0 = OW - L;                                                                          \
            xr = x + p * SH * W + (K) * q0;                                                           \
            for (kh = 0; kh < KH; kh++, xr += W) {                                                    \
                COLS(xr, cols);                                                                       \
                for (kw = 0; kw < (K); kw++)                                                          \
                    s = s + cols[kw];                                                                 \
            }                                                                                         \
            *(V*)(y + p * OW + q0) = s / cnt;                                                         \
            q0 += L;                                                                                  \
            if (q0 >= OW)                                                                             \
                break;                                                                                \
        }                                                                                             \
    }                                                                                                 \
}

/* the whole dx plane of disjoint 2-wide windows (KH <= SH): dx[r, 2q + kw] = dy[p, q] / (2*KH) + 0 on
 * window rows, 0 on the last column when W is odd and on the rows no window reaches */
#define CNN_POOL_DEFINE_AVG_GRAD2(NAME, T, V, DL, DH)                                                 \
static void NAME##_avg_grad(const T* dy, T* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,            \
                            Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW) {                            \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                         \
    const V cnt = (V){0} + (T)(2 * KH), zero = (V){0};                                                \
    Py_ssize_t r, c, q0, p = 0, kh = 0;                                                               \
    for (r = 0; r < H; r++) {                                                                         \
        T* dxr = dx + r * W;                                                                          \
        c = 0;                                                                                        \
        if (p < OH && kh < KH) {                                                                      \
            for (q0 = 0;;) {                                                                          \
                V d;                                                                                  \
                if (q0 + L > OW)                                                                      \
                    q0 = OW - L;                                                                      \
                d = *(const V*)(dy + p * OW + q0) / cnt;                                              \
                *(V*)(dxr + 2 * q0) = DL(d) + zero;                                                   \
                *(V*)(dxr + 2 * q0 + L) = DH(d) + zero;                                               \
                q0 += L;                                                                              \
                if (q0 >= OW)                                                                         \
                    break;                                                                            \
            }                                                                                         \
            c = 2 * OW;                                                                               \
        }                                                                                             \
        for (; c < W; c++)                                                                            \
            dxr[c] = 0;                                                                               \
        if (++kh == SH) {                                                                             \
            kh = 0;                                                                                   \
            p++;                                                                                      \
        }                                                                                             \
    }                                                                                                 \
}

/* everything for one vector width: float rows FN, double rows DN, positions PN (MI, NI int32 lanes,
 * LD doubles a vector), the shuffle macros of suffixes SF / SD */
#define CNN_POOL_DEFINE_WIDTH(FN, DN, PN, VF, VD, MI, NI, LD, SF, SD, SID)                                   \
CNN_POOL_DEFINE_POSITIONS(PN, MI, LD)                                                                 \
CNN_POOL_DEFINE_ROWS(FN##_k2, 2, float, VF, MI, NI, CNN_POOL_COLS_K2_##SF, CNN_POOL_LANE_F, PN##_storei_f) \
CNN_POOL_DEFINE_ROWS(DN##_k2, 2, double, VD, MI, NI, CNN_POOL_COLS_K2_##SD, CNN_POOL_LANE_D, SID)          \
CNN_POOL_DEFINE_ROWS(FN##_k3, 3, float, VF, MI, NI, CNN_POOL_COLS_K3_##SF, CNN_POOL_LANE_F, PN##_storei_f) \
CNN_POOL_DEFINE_ROWS(DN##_k3, 3, double, VD, MI, NI, CNN_POOL_COLS_K3_##SD, CNN_POOL_LANE_D, SID)          \
CNN_POOL_DEFINE_AVG_GRAD2(FN##_k2, float, VF, CNN_POOL_DUPLO_##SF, CNN_POOL_DUPHI_##SF)               \
CNN_POOL_DEFINE_AVG_GRAD2(DN##_k2, double, VD, CNN_POOL_DUPLO_##SD, CNN_POOL_DUPHI_##SD)
CNN_POOL_DEFINE_WIDTH(cnn_pool_f4, cnn_pool_d2, cnn_pool_p4, cnn_ext_vf4, cnn_ext_vd2, cnn_ext_mi4, 4, 2, F4, D2,
                      cnn_pool_p4_storei_d)
#if CNN_EXT_VEC_BYTES >= 32
/* 32-byte double rows store their 4 positions with one shuffle into a 16-byte int vector (the lane by lane
 * store of the 16-byte rows is kept there: 8-byte int vectors become scalar code in SSE2) */
static inline void cnn_pool_storei_d4(int* p, cnn_ext_mi8 v) {
    *(cnn_ext_mi4*)p = __builtin_shufflevector(v, v, 0, 2, 4, 6);
}
CNN_POOL_DEFINE_WIDTH(cnn_pool_f8, cnn_pool_d4, cnn_pool_p8, cnn_ext_vf8, cnn_ext_vd4, cnn_ext_mi8, 8, 4, F8, D4,
                      cnn_pool_storei_d4)
#define CNN_POOL_WIDE(OW, LANES, WIDE, NARROW, ARGS) do { if ((OW) >= (LANES)) WIDE ARGS; else NARROW ARGS; } while (0)
#else
#define CNN_POOL_WIDE(OW, LANES, WIDE, NARROW, ARGS) NARROW ARGS
#endif
/* the entry points: K = KW = SW (2 or 3), the widest vectors that fit in OW (OW >= CNN_POOL_MIN_OW_*,
 * checked by the caller); the average gradient for K = 2 only */
#define CNN_POOL_DEFINE_ENTRIES(NAME, T, W8, W4, WL)                                                  \
static void NAME##_max(const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,        \
                       Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K, int want_idx, int relu) {          \
    if (K == 3)                                                                                       \
        CNN_POOL_WIDE(OW, WL, W8##_k3_max, W4##_k3_max, (x, y, idx, W, KH, SH, OH, OW, want_idx, relu)); \
    else                                                                                              \
        CNN_POOL_WIDE(OW, WL, W8##_k2_max, W4##_k2_max, (x, y, idx, W, KH, SH, OH, OW, want_idx, relu)); \
}                                                                                                     \
static void NAME##_avg(const T* x, T* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,   \
                       Py_ssize_t OW, Py_ssize_t K) {                                                 \
    if (K == 3)                                                                                       \
        CNN_POOL_WIDE(OW, WL, W8##_k3_avg, W4##_k3_avg, (x, y, W, KH, SH, OH, OW));                   \
    else                                                                                              \
        CNN_POOL_WIDE(OW, WL, W8##_k2_avg, W4##_k2_avg, (x, y, W, KH, SH, OH, OW));                   \
}                                                                                                     \
static void NAME##_avg_grad(const T* dy, T* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,            \
                            Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW) {                            \
    CNN_POOL_WIDE(OW, WL, W8##_k2_avg_grad, W4##_k2_avg_grad, (dy, dx, H, W, KH, SH, OH, OW));        \
}
CNN_POOL_DEFINE_ENTRIES(cnn_pool_rows_f, float, cnn_pool_f8, cnn_pool_f4, 8)
CNN_POOL_DEFINE_ENTRIES(cnn_pool_rows_d, double, cnn_pool_d4, cnn_pool_d2, 4)
#else
#define CNN_POOL_MIN_OW_F 0
#define CNN_POOL_MIN_OW_D 0
#define CNN_POOL_NO_ROWS(NAME, T)                                                                     \
static void NAME##_max(const T* x, T* y, int* idx, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH,        \
                       Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t K, int want_idx, int relu) {}         \
static void NAME##_avg(const T* x, T* y, Py_ssize_t W, Py_ssize_t KH, Py_ssize_t SH, Py_ssize_t OH,   \
                       Py_ssize_t OW, Py_ssize_t K) {}                                                \
static void NAME##_avg_grad(const T* dy, T* dx, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,            \
                            Py_ssize_t SH, Py_ssize_t OH, Py_ssize_t OW) {}
CNN_POOL_NO_ROWS(cnn_pool_rows_f, float)
CNN_POOL_NO_ROWS(cnn_pool_rows_d, double)
#endif

#endif  /* CNN_EXT_POOL_ROWS_H */
