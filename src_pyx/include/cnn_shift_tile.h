/* Shifted-copies tile: nj <= CNN_EXT_SJB output channels x CNN_EXT_SNV vectors along f (the wide tile's
 * shape). The accumulators start from the bias (first block) or from o (the partial sums of
 * the previous blocks, row pitch ldo) and are stored back to o. xs points at f0 of channel 0's first
 * copy; copy kw of channel i is at i*xstride + kw*A. */
#ifndef CNN_EXT_SHIFT_TILE_H
#define CNN_EXT_SHIFT_TILE_H

#include "cnn_tile_reduce.h"

#if CNN_EXT_WIDE_REGS  /* 32 zmm: 6 x 4 = 24 accumulators + 4 x + 1 weight, as the wide tile */
#define CNN_EXT_SJB 6
#define CNN_EXT_SNV 4
#else
#define CNN_EXT_SJB 4
#define CNN_EXT_SNV 3
#endif
#define CNN_EXT_SHIFT_CALL(NAME, NJ) \
    NAME##_fixed(xs, k, b, o, ldo, xstride, A, OW, C_in, KH, KW, kh0, kh1, i0, i1, j0, first, NJ)
#define CNN_EXT_DEFINE_SHIFT_TILE(NAME, T, V)                                                         \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xs, const T* k, const T* b, T* o, Py_ssize_t ldo,    \
                                      Py_ssize_t xstride, Py_ssize_t A, Py_ssize_t OW,              \
                                      Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t kh0, \
                                      Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0,  \
                                      int first, const Py_ssize_t nj) {                             \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), CKK = C_in * KH * KW;                  \
    V acc[CNN_EXT_SJB][CNN_EXT_SNV];                                                                 \
    Py_ssize_t jj, v;                                                                                \
    for (jj = 0; jj < nj; jj++)                                                                      \
        for (v = 0; v < CNN_EXT_SNV; v++)                                                            \
            if (first) acc[jj][v] = CNN_EXT_SPLAT(V, b[j0 + jj]);                                    \
            else acc[jj][v] = *(const V*)(o + jj * ldo + v * L);                                     \
    CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_SNV, nj, CNN_EXT_SNV, xs, xstride, OW, A,                 \
                        k + j0 * CKK, KH * KW, CKK, KW, i0, i1, kh0, kh1);                           \
    for (jj = 0; jj < nj; jj++)                                                                      \
        for (v = 0; v < CNN_EXT_SNV; v++)                                                            \
            *(V*)(o + jj * ldo + v * L) = acc[jj][v];                                                \
}                                                                                                    \
static void NAME(const T* xs, const T* k, const T* b, T* o, Py_ssize_t ldo, Py_ssize_t xstride,     \
                 Py_ssize_t A, Py_ssize_t OW, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW,         \
                 Py_ssize_t kh0, Py_ssize_t kh1, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0,        \
                 int first, Py_ssize_t nj) {                                                         \
    switch (nj < CNN_EXT_SJB ? nj : CNN_EXT_SJB) {                                                   \
    CNN_EXT_NJ_CASES(CNN_EXT_SJB, CNN_EXT_SHIFT_CALL, NAME)                                          \
    default: CNN_EXT_SHIFT_CALL(NAME, CNN_EXT_SJB); break;                                           \
    }                                                                                                \
}
CNN_EXT_DEFINE_SHIFT_TILE(cnn_ext_shift_tile_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_SHIFT_TILE(cnn_ext_shift_tile_d, double, cnn_ext_vd)

#endif  /* CNN_EXT_SHIFT_TILE_H */
