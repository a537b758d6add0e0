/* Wide-row tile: nj <= CNN_EXT_WJB output channels x CNN_EXT_WNV vectors along the flat index f.
 * The accumulators stay in vector registers over the (i, kh, kw) reduction of one block of input
 * channels [i0, i1); the tile starts from 0 (first block) or from the wide buffer, and is stored
 * back there. AVX2 (16 ymm): 4 x 3 = 12 accumulators + 3 x + 1 weight; measured against 6 x 2 and
 * 3 x 4 (see cnn_ext/ops.py). AVX-512 (32 zmm): 6 x 4 = 24 accumulators + 4 x + 1 weight.
 * Reads reach up to C_in*Hp*Wp + WNV*L + KW - 3 past xp: the slab has that slack, zeroed. */
#ifndef CNN_EXT_WIDE_TILE_H
#define CNN_EXT_WIDE_TILE_H

#include "cnn_tile_reduce.h"

#if CNN_EXT_WIDE_REGS
#define CNN_EXT_WJB 6
#define CNN_EXT_WNV 4
#else
#define CNN_EXT_WJB 4
#define CNN_EXT_WNV 3
#endif

#define CNN_EXT_WIDE_CALL(NAME, NJ) \
    NAME##_fixed(xp, k, wide, ldw, plane, Wp, C_in, KH, KW, kh0, kh1, i0, i1, j0, f0, first, NJ)
#define CNN_EXT_DEFINE_WIDE_TILE(NAME, T, V)                                                          \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* k, T* wide, Py_ssize_t ldw,             \
                                      Py_ssize_t plane, Py_ssize_t Wp, Py_ssize_t C_in,             \
                                      Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1, \
                                      Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0,   \
                                      int first, const Py_ssize_t nj) {                             \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), CKK = C_in * KH * KW;                  \
    V acc[CNN_EXT_WJB][CNN_EXT_WNV];                                                                 \
    Py_ssize_t jj, v;                                                                                \
    T* o = wide + j0 * ldw + f0;                                                                     \
    for (jj = 0; jj < nj; jj++)                                                                      \
        for (v = 0; v < CNN_EXT_WNV; v++)                                                            \
            if (first) acc[jj][v] = CNN_EXT_SPLAT(V, (T)0);                                          \
            else acc[jj][v] = *(const V*)(o + jj * ldw + v * L);                                     \
    CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_WNV, nj, CNN_EXT_WNV, xp + f0, plane, Wp, 1,              \
                        k + j0 * CKK, KH * KW, CKK, KW, i0, i1, kh0, kh1);                           \
    for (jj = 0; jj < nj; jj++)                                                                      \
        for (v = 0; v < CNN_EXT_WNV; v++)                                                            \
            *(V*)(o + jj * ldw + v * L) = acc[jj][v];                                                \
}                                                                                                    \
/* One output channel (the input gradient of a one-channel layer, the tutorial's): nj = 1 would leave      \
 * WNV accumulators, too few chains to hide the FMA latency; this tile holds WJB x WNV vectors of one     \
 * channel instead (flat outputs f0 .. f0 + WJB*WNV*L), same sums in the same order per output. */        \
static void NAME##_one(const T* xp, const T* k, T* wide, Py_ssize_t ldw, Py_ssize_t plane,          \
                       Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, \
                       Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0,   \
                       int first) {                                                                  \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), NV1 = CNN_EXT_WJB * CNN_EXT_WNV;      \
    V acc[1][CNN_EXT_WJB * CNN_EXT_WNV];                                                             \
    Py_ssize_t v;                                                                                    \
    T* o = wide + j0 * ldw + f0;                                                                     \
    CNN_EXT_PEEL                                                                                     \
    for (v = 0; v < NV1; v++)                                                                        \
        if (first) acc[0][v] = CNN_EXT_SPLAT(V, (T)0); else acc[0][v] = *(const V*)(o + v * L);     \
    CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_WJB * CNN_EXT_WNV, 1, NV1, xp + f0, plane, Wp, 1,         \
                        k + j0 * C_in * KH * KW, KH * KW, C_in * KH * KW, KW, i0, i1, kh0, kh1);     \
    CNN_EXT_PEEL                                                                                     \
    for (v = 0; v < NV1; v++)                                                                        \
        *(V*)(o + v * L) = acc[0][v];                                                                \
}                                                                                                    \
static void NAME(const T* xp, const T* k, T* wide, Py_ssize_t ldw, Py_ssize_t plane, Py_ssize_t Wp, \
                 Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, Py_ssize_t kh1,      \
                 Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t f0, int first, Py_ssize_t nj) { \
    switch (nj < CNN_EXT_WJB ? nj : CNN_EXT_WJB) {                                                   \
    CNN_EXT_NJ_CASES(CNN_EXT_WJB, CNN_EXT_WIDE_CALL, NAME)                                           \
    default: CNN_EXT_WIDE_CALL(NAME, CNN_EXT_WJB); break;                                               \
    }                                                                                                \
}
CNN_EXT_DEFINE_WIDE_TILE(cnn_ext_wide_tile_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_WIDE_TILE(cnn_ext_wide_tile_d, double, cnn_ext_vd)

#endif  /* CNN_EXT_WIDE_TILE_H */
