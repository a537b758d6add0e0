/* Channel-vector tile of the direct forward (padded slab, any stride): CNN_EXT_CJV vectors of consecutive output
 * channels x nq <= CNN_EXT_CNQ output pixels of one row, SW slab columns apart (the inputs are broadcasts, so a
 * stride only spaces their addresses; SW = 1 has literal copies, so stride 1 compiles to contiguous loads).
 * Weights are vector loads from the packed kernels kp[C_out / JW, C_in, KH, KW, JW] (JW = CJV * lanes); nq is
 * a literal in every copy (the switch), so the accumulators stay in registers. The lanes go to a one-row
 * staging buffer. r is the slab row of the tile's first kernel row (p * SH for output row p). */
#ifndef CNN_EXT_CV_TILE_H
#define CNN_EXT_CV_TILE_H

#include <string.h>  /* memcpy of a vector's lanes */
#include "cnn_simd.h"

#define CNN_EXT_CJV 2
/* pixels per tile at most: with 32 registers a tile holds up to 24 accumulators, so rows of 7 to 12 pixels take
 * one tile (a short tail tile has too few accumulators to keep both FMA units busy) */
#if CNN_EXT_WIDE_REGS
#define CNN_EXT_CNQ 12
#else
#define CNN_EXT_CNQ 6
#endif
#define CNN_EXT_DEFINE_CV_TILE(NAME, T, V)                                                            \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* kp, const T* b, T* stage, Py_ssize_t plane, \
                                      Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, \
                                      Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t j0, Py_ssize_t r,  \
                                      Py_ssize_t q0, Py_ssize_t OW, const Py_ssize_t nq,            \
                                      const Py_ssize_t SW) {                                        \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), JW = CNN_EXT_CJV * L;                  \
    const Py_ssize_t KK = KH * KW;                                                                   \
    V acc[CNN_EXT_CNQ][CNN_EXT_CJV], w[CNN_EXT_CJV];                                                 \
    Py_ssize_t i, kh, kw, qq, v, l;                                                                  \
    const T* kb = kp + j0 * C_in * KK;                                                               \
    CNN_EXT_PEEL                                                                                     \
    for (qq = 0; qq < nq; qq++)                                                                      \
        for (v = 0; v < CNN_EXT_CJV; v++)                                                            \
            acc[qq][v] = *(const V*)(b + j0 + v * L);                                                \
    for (i = 0; i < C_in; i++) {                                                                     \
        const T* xi = xp + i * plane + r * Wp + q0 * SW;                                             \
        const T* ki = kb + i * KK * JW;                                                              \
        for (kh = kh0; kh < kh1; kh++) {                                                             \
            const T* xr = xi + kh * Wp;                                                              \
            const T* kr = ki + kh * KW * JW;                                                         \
            for (kw = 0; kw < KW; kw++) {                                                            \
                for (v = 0; v < CNN_EXT_CJV; v++)                                                    \
                    w[v] = *(const V*)(kr + kw * JW + v * L);                                        \
                CNN_EXT_PEEL                                                                         \
                for (qq = 0; qq < nq; qq++) {                                                        \
                    const T xs = xr[kw + qq * SW];                                                   \
                    for (v = 0; v < CNN_EXT_CJV; v++)                                                \
                        acc[qq][v] += xs * w[v];                                                     \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    CNN_EXT_PEEL                                                                                     \
    for (qq = 0; qq < nq; qq++)                                                                      \
        for (v = 0; v < CNN_EXT_CJV; v++) {                                                          \
            T lane[sizeof(V) / sizeof(T)];                                                           \
            memcpy(lane, &acc[qq][v], sizeof(V));                                                    \
            for (l = 0; l < L; l++)                                                                  \
                stage[(v * L + l) * OW + q0 + qq] = lane[l];                                         \
        }                                                                                            \
}                                                                                                    \
static void NAME(const T* xp, const T* kp, const T* b, T* stage, Py_ssize_t plane, Py_ssize_t Wp,    \
                 Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1,      \
                 Py_ssize_t j0, Py_ssize_t r, Py_ssize_t q0, Py_ssize_t OW, Py_ssize_t nq,           \
                 Py_ssize_t SW) {                                                                    \
    if (SW == 1) {                                                                                   \
        switch (nq) {                                                                                \
        case 1: CNN_EXT_CV_CALL(NAME, 1, 1); break;                                                  \
        case 2: CNN_EXT_CV_CALL(NAME, 2, 1); break;                                                  \
        case 3: CNN_EXT_CV_CALL(NAME, 3, 1); break;                                                  \
        case 4: CNN_EXT_CV_CALL(NAME, 4, 1); break;                                                  \
        case 5: CNN_EXT_CV_CALL(NAME, 5, 1); break;                                                  \
        CNN_EXT_CV_MORE(NAME, 1)                                                                     \
        default: CNN_EXT_CV_CALL(NAME, CNN_EXT_CNQ, 1); break;                                       \
        }                                                                                            \
        return;                                                                                      \
    }                                                                                                \
    switch (nq) {                                                                                    \
    case 1: CNN_EXT_CV_CALL(NAME, 1, SW); break;                                                     \
    case 2: CNN_EXT_CV_CALL(NAME, 2, SW); break;                                                     \
    case 3: CNN_EXT_CV_CALL(NAME, 3, SW); break;                                                     \
    case 4: CNN_EXT_CV_CALL(NAME, 4, SW); break;                                                     \
    case 5: CNN_EXT_CV_CALL(NAME, 5, SW); break;                                                     \
    CNN_EXT_CV_MORE(NAME, SW)                                                                        \
    default: CNN_EXT_CV_CALL(NAME, CNN_EXT_CNQ, SW); break;                                          \
    }                                                                                                \
}
#if CNN_EXT_WIDE_REGS
#define CNN_EXT_CV_MORE(NAME, S) case 6: CNN_EXT_CV_CALL(NAME, 6, S); break; \
    case 7: CNN_EXT_CV_CALL(NAME, 7, S); break; case 8: CNN_EXT_CV_CALL(NAME, 8, S); break; \
    case 9: CNN_EXT_CV_CALL(NAME, 9, S); break; case 10: CNN_EXT_CV_CALL(NAME, 10, S); break; \
    case 11: CNN_EXT_CV_CALL(NAME, 11, S); break;
#else
#define CNN_EXT_CV_MORE(NAME, S)
#endif
/* 3-column kernels get their own copies: with the kernel width a literal, the tap loop unrolls */
#define CNN_EXT_CV_CALL(NAME, NQ, STRIDE) do {                                                         \
    if (KW == 3)                                                                                     \
        NAME##_fixed(xp, kp, b, stage, plane, Wp, C_in, KH, 3, kh0, kh1, j0, r, q0, OW, NQ, STRIDE);  \
    else                                                                                             \
        NAME##_fixed(xp, kp, b, stage, plane, Wp, C_in, KH, KW, kh0, kh1, j0, r, q0, OW, NQ, STRIDE); \
} while (0)
CNN_EXT_DEFINE_CV_TILE(cnn_ext_cv_tile_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_CV_TILE(cnn_ext_cv_tile_d, double, cnn_ext_vd)

#endif  /* CNN_EXT_CV_TILE_H */
