/* Channel-vector tile of the kernel gradient (padded slab, any stride): CNN_EXT_CJV vectors of consecutive output
 * channels x the KW taps of NB kernel rows (i, kh), summed over every output pixel of one sample:
 *     pk[(row_b * KW + kw) * C_out + j] += Σ_{p, q} dyT[(p * OW + q) * C_out + j] * xp[off_b + p * step_b + q * SW + kw]
 * dyT is the sample's dE_dY with channels last, so a vector of output channels is one load; the x values are
 * broadcasts. KW and NB are literals in every copy (the switch), so the CJV x NB*KW accumulators stay in
 * registers. Rows past the last are given step 0 and the offset of a zero row: the tile needs no tail copies,
 * and their accumulators are dropped. */
#ifndef CNN_EXT_CVK_TILE_H
#define CNN_EXT_CVK_TILE_H

#include "cnn_simd.h"
#include "cnn_cv_tile.h"  /* CNN_EXT_CJV */

/* taps per tile at most: with 32 registers 2 x 12 accumulators, else 2 x 6 (and the loaded dE_dY vectors) */
#if CNN_EXT_WIDE_REGS
#define CNN_EXT_CVK_TAPS 12
#else
#define CNN_EXT_CVK_TAPS 6
#endif
#define CNN_EXT_CVK_MAX_KW 7  /* kernel widths with a copy of the tile; wider rows than CNN_EXT_CVK_TAPS take one
                                 row per tile */
#define CNN_EXT_CVK_ACC (CNN_EXT_CVK_TAPS > CNN_EXT_CVK_MAX_KW ? CNN_EXT_CVK_TAPS : CNN_EXT_CVK_MAX_KW)

#define CNN_EXT_DEFINE_CVK_TILE(NAME, T, V)                                                           \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* dyT, T* pk, Py_ssize_t C_out,             \
                                      const Py_ssize_t* off, const Py_ssize_t* step, Py_ssize_t row0, \
                                      Py_ssize_t nrows, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SW,  \
                                      Py_ssize_t j0, const Py_ssize_t NB, const Py_ssize_t KW) {      \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \
    V acc[CNN_EXT_CVK_ACC][CNN_EXT_CJV], dv[CNN_EXT_CJV];                                            \
    const T* rp[CNN_EXT_CVK_ACC];                                                                    \
    Py_ssize_t b, kw, v, p, q, t;                                                                    \
    CNN_EXT_PEEL                                                                                     \
    for (t = 0; t < NB * KW; t++)                                                                    \
        for (v = 0; v < CNN_EXT_CJV; v++)                                                            \
            acc[t][v] = CNN_EXT_SPLAT(V, 0);                                                         \
    for (p = 0; p < OH; p++) {                                                                       \
        const T* d = dyT + p * OW * C_out + j0;                                                      \
        CNN_EXT_PEEL                                                                                 \
        for (b = 0; b < NB; b++)                                                                     \
            rp[b] = xp + off[row0 + b] + p * step[row0 + b];                                         \
        for (q = 0; q < OW; q++) {                                                                   \
            for (v = 0; v < CNN_EXT_CJV; v++)                                                        \
                dv[v] = *(const V*)(d + q * C_out + v * L);                                          \
            CNN_EXT_PEEL                                                                             \
            for (b = 0; b < NB; b++) {                                                               \
                CNN_EXT_PEEL                                                                         \
                for (kw = 0; kw < KW; kw++) {                                                        \
                    const T xs = rp[b][q * SW + kw];                                                 \
                    for (v = 0; v < CNN_EXT_CJV; v++)                                                \
                        acc[b * KW + kw][v] += xs * dv[v];                                           \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    for (b = 0; b < NB && b < nrows - row0; b++)                                                     \
        for (kw = 0; kw < KW; kw++)                                                                  \
            for (v = 0; v < CNN_EXT_CJV; v++) {                                                      \
                V* o = (V*)(pk + ((row0 + b) * KW + kw) * C_out + j0 + v * L);                       \
                *o += acc[b * KW + kw][v];                                                           \
            }                                                                                        \
}                                                                                                    \
/* the tile for kernel rows [row0, row0 + rows_per_tile(KW)) of nrows; KW <= CNN_EXT_CVK_MAX_KW */     \
static void NAME(const T* xp, const T* dyT, T* pk, Py_ssize_t C_out, const Py_ssize_t* off,          \
                 const Py_ssize_t* step, Py_ssize_t row0, Py_ssize_t nrows, Py_ssize_t OH,          \
                 Py_ssize_t OW, Py_ssize_t SW, Py_ssize_t j0, Py_ssize_t KW) {                      \
    switch (KW) {                                                                                    \
    case 1: CNN_EXT_CVK_CALL(NAME, 1); break;                                                        \
    case 2: CNN_EXT_CVK_CALL(NAME, 2); break;                                                        \
    case 3: CNN_EXT_CVK_CALL(NAME, 3); break;                                                        \
    case 4: CNN_EXT_CVK_CALL(NAME, 4); break;                                                        \
    case 5: CNN_EXT_CVK_CALL(NAME, 5); break;                                                        \
    case 6: CNN_EXT_CVK_CALL(NAME, 6); break;                                                        \
    default: CNN_EXT_CVK_CALL(NAME, 7); break;                                                       \
    }                                                                                                \
}
/* kernel rows per tile: as many whole rows of KW taps as CNN_EXT_CVK_TAPS holds (at least one) */
#define CNN_EXT_CVK_ROWS(KW) ((KW) >= CNN_EXT_CVK_TAPS ? 1 : CNN_EXT_CVK_TAPS / (KW))
#define CNN_EXT_CVK_CALL(NAME, K) \
    NAME##_fixed(xp, dyT, pk, C_out, off, step, row0, nrows, OH, OW, SW, j0, CNN_EXT_CVK_ROWS(K), K)
CNN_EXT_DEFINE_CVK_TILE(cnn_ext_cvk_tile_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_CVK_TILE(cnn_ext_cvk_tile_d, double, cnn_ext_vd)

static inline Py_ssize_t cnn_ext_cvk_rows(Py_ssize_t KW) { return CNN_EXT_CVK_ROWS(KW); }

#endif  /* CNN_EXT_CVK_TILE_H */
