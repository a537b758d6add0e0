/* Row tile of the direct forward (stride 1, no padding), one body for float and double.
 *
 * nj <= CNN_EXT_JB output channels x nv <= CNN_EXT_NV SIMD vectors of output columns of one output row:
 * the nj*nv accumulators stay in vector registers over the whole (i, kh, kw) reduction; each step
 * loads nv x vectors and broadcasts nj weights (8 accumulators + 2 x + 1 weight of the 16 registers;
 * 12 + 3 + 1 with nv = 3, taken for one input channel only). In the -mavx2 build the inner loop is
 * 2 vmovups + 4 vbroadcastss + 8 vfmadd231ps on ymm registers, no stack access: nj and nv are literals
 * in every copy of the tile (the switch below), so the constant-trip loops unroll.
 * Sums run in the order of the plain row loops: bias, then i, kh, kw. */
#ifndef CNN_EXT_ROW_TILE_H
#define CNN_EXT_ROW_TILE_H

#include "cnn_tile_reduce.h"

#define CNN_EXT_JB 4
#define CNN_EXT_NV 3

#define CNN_EXT_DEFINE_FORWARD_TILE(NAME, T, V)                                                       \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* x, const T* k, const T* b, T* y,                      \
                                      Py_ssize_t C_in, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,   \
                                      Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t j0,   \
                                      Py_ssize_t p, Py_ssize_t q0,                                  \
                                      const Py_ssize_t nj, const Py_ssize_t nv) {                   \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), CKK = C_in * KH * KW;                  \
    V acc[CNN_EXT_JB][CNN_EXT_NV];                                                                   \
    Py_ssize_t jj, v;                                                                                \
    for (jj = 0; jj < nj; jj++)                                                                      \
        for (v = 0; v < nv; v++)                                                                     \
            acc[jj][v] = CNN_EXT_SPLAT(V, b[j0 + jj]);                                               \
    CNN_EXT_TILE_REDUCE(T, V, acc, CNN_EXT_NV, nj, nv, x + p * W + q0, H * W, W, 1,                  \
                        k + j0 * CKK, KH * KW, CKK, KW, 0, C_in, 0, KH);                             \
    for (jj = 0; jj < nj; jj++)                                                                      \
        for (v = 0; v < nv; v++)                                                                     \
            *(V*)(y + ((j0 + jj) * OH + p) * OW + q0 + v * L) = acc[jj][v];                          \
}                                                                                                    \
/* rows p .. p + np - 1 of the tile's columns, one switch for all of them */                         \
static void NAME(const T* x, const T* k, const T* b, T* y, Py_ssize_t C_in, Py_ssize_t H,            \
                 Py_ssize_t W, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t OH, Py_ssize_t OW,           \
                 Py_ssize_t j0, Py_ssize_t p, Py_ssize_t np, Py_ssize_t q0, Py_ssize_t nj,           \
                 Py_ssize_t nv) {                                                                    \
    Py_ssize_t pp;                                                                                   \
    switch ((nv < 2 ? 0 : nv < 3 ? 4 : 8) + (nj < 4 ? nj : 4)) {                                     \
    CNN_EXT_FWD_CASE(NAME, 1, 1, 1) CNN_EXT_FWD_CASE(NAME, 2, 2, 1) CNN_EXT_FWD_CASE(NAME, 3, 3, 1)  \
    CNN_EXT_FWD_CASE(NAME, 4, 4, 1) CNN_EXT_FWD_CASE(NAME, 5, 1, 2) CNN_EXT_FWD_CASE(NAME, 6, 2, 2)  \
    CNN_EXT_FWD_CASE(NAME, 7, 3, 2) CNN_EXT_FWD_CASE(NAME, 8, 4, 2) CNN_EXT_FWD_CASE(NAME, 9, 1, 3)  \
    CNN_EXT_FWD_CASE(NAME, 10, 2, 3) CNN_EXT_FWD_CASE(NAME, 11, 3, 3)                               \
    default: CNN_EXT_FWD_ROWS(NAME, 4, 3); break;                                                    \
    }                                                                                                \
}
#define CNN_EXT_FWD_ROWS(NAME, NJ, NV) \
    for (pp = p; pp < p + np; pp++) NAME##_fixed(x, k, b, y, C_in, H, W, KH, KW, OH, OW, j0, pp, q0, NJ, NV)
#define CNN_EXT_FWD_CASE(NAME, C, NJ, NV) case C: CNN_EXT_FWD_ROWS(NAME, NJ, NV); break;
CNN_EXT_DEFINE_FORWARD_TILE(cnn_ext_forward_tile_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_FORWARD_TILE(cnn_ext_forward_tile_d, double, cnn_ext_vd)

#endif  /* CNN_EXT_ROW_TILE_H */
