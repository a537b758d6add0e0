/* Channel-vector tile of the kernel gradient (padded slab, any stride): CJV vectors of consecutive output
 * channels (CNN_EXT_CJV, or 1 for layers whose channels are not whole pairs of vectors, with twice the taps)
 * x the KW taps of NB kernel rows (i, kh), summed over every output pixel of one sample:
 *     pk[(row_b*KW + kw)*C_out + j] += Σ_{p,q} dyT[(p*OW + q)*C_out + j] * xp[off_b + p*step_b + q*SW + kw]
 * dyT is the sample's dE_dY with channels last, so a vector of output channels is one load; the x values are
 * broadcasts. KW and NB are literals in every copy (the switch), so the CJV x NB*KW accumulators stay in
 * registers. Rows past the last are given step 0 and the offset of a zero row: the tile needs no tail copies,
 * and their accumulators are dropped. */
#ifndef CNN_EXT_CVK_TILE_H
#define CNN_EXT_CVK_TILE_H

#include "cnn_simd.h"
#include "cnn_cv_tile.h"  /* CNN_EXT_CJV */

/* taps per two-vector tile at most: with 32 registers 2 x 12 accumulators, else 2 x 6 (and the loaded dE_dY
 * vectors); the one-vector tile holds twice the taps */
#if CNN_EXT_WIDE_REGS
#define CNN_EXT_CVK_TAPS 12
#else
#define CNN_EXT_CVK_TAPS 6
#endif
/* kernel widths with a copy of the tile; rows wider than a tile's taps take one row per tile */
#define CNN_EXT_CVK_MAX_KW 7
#define CNN_EXT_CVK_ACC (2 * CNN_EXT_CVK_TAPS)  /* taps of the one-vector tile; at least CNN_EXT_CVK_MAX_KW */

#define CNN_EXT_DEFINE_CVK_TILE(NAME, T, V, CJV, TAPS)                                               \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* dyT, T* pk, Py_ssize_t C_out,            \
                                      const Py_ssize_t* off, const Py_ssize_t* step, Py_ssize_t row0, \
                                      Py_ssize_t nrows, Py_ssize_t OH, Py_ssize_t OW, Py_ssize_t SW, \
                                      Py_ssize_t j0, const Py_ssize_t NB, const Py_ssize_t KW) {     \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \
    V acc[CNN_EXT_CVK_ACC][CJV], dv[CJV];                                                            \
    const T* rp[CNN_EXT_CVK_ACC];                                                                    \
    Py_ssize_t b, kw, v, p, q, t;                                                                    \
    CNN_EXT_PEEL                                                                                     \
    for (t = 0; t < NB * KW; t++)                                                                    \
        for (v = 0; v < CJV; v++)                                                                    \
            acc[t][v] = CNN_EXT_SPLAT(V, 0);                                                         \
    for (p = 0; p < OH; p++) {                                                                       \
        const T* d = dyT + p * OW * C_out + j0;                                                      \
        CNN_EXT_PEEL                                                                                 \
        for (b = 0; b < NB; b++)                                                                     \
            rp[b] = xp + off[row0 + b] + p * step[row0 + b];                                         \
        for (q = 0; q < OW; q++) {                                                                   \
            for (v = 0; v < CJV; v++)                                                                \
                dv[v] = *(const V*)(d + q * C_out + v * L);                                          \
            CNN_EXT_PEEL                                                                             \
            for (b = 0; b < NB; b++) {                                                               \
                CNN_EXT_PEEL                                                                         \
                for (kw = 0; kw < KW; kw++) {                                                        \
                    const T xs = rp[b][q * SW + kw];                                                 \
                    for (v = 0; v < CJV; v++)                                                        \
                        acc[b * KW + kw][v] += xs * dv[v];                                           \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    for (b = 0; b < NB && b < nrows - row0; b++)                                                     \
        for (kw = 0; kw < KW; kw++)                                                                  \
            for (v = 0; v < CJV; v++) {                                                              \
                V* o = (V*)(pk + ((row0 + b) * KW + kw) * C_out + j0 + v * L);                       \
                *o += acc[b * KW + kw][v];                                                           \
            }                                                                                        \
}                                                                                                    \
/* the tile for kernel rows [row0, row0 + CNN_EXT_CVK_ROWS(KW, TAPS)) of nrows; KW <= CNN_EXT_CVK_MAX_KW */ \
static void NAME(const T* xp, const T* dyT, T* pk, Py_ssize_t C_out, const Py_ssize_t* off,          \
                 const Py_ssize_t* step, Py_ssize_t row0, Py_ssize_t nrows, Py_ssize_t OH,           \
                 Py_ssize_t OW, Py_ssize_t SW, Py_ssize_t j0, Py_ssize_t KW) {                       \
    switch (KW) {                                                                                    \
    case 1: CNN_EXT_CVK_CALL(NAME, 1, TAPS); break;                                                  \
    case 2: CNN_EXT_CVK_CALL(NAME, 2, TAPS); break;                                                  \
    case 3: CNN_EXT_CVK_CALL(NAME, 3, TAPS); break;                                                  \
    case 4: CNN_EXT_CVK_CALL(NAME, 4, TAPS); break;                                                  \
    case 5: CNN_EXT_CVK_CALL(NAME, 5, TAPS); break;                                                  \
    case 6: CNN_EXT_CVK_CALL(NAME, 6, TAPS); break;                                                  \
    default: CNN_EXT_CVK_CALL(NAME, 7, TAPS); break;                                                 \
    }                                                                                                \
}
/* kernel rows per tile: as many whole rows of KW taps as TAPS holds (at least one) */
#define CNN_EXT_CVK_ROWS(KW, TAPS) ((KW) >= (TAPS) ? 1 : (TAPS) / (KW))
#define CNN_EXT_CVK_CALL(NAME, K, TAPS) \
    NAME##_fixed(xp, dyT, pk, C_out, off, step, row0, nrows, OH, OW, SW, j0, CNN_EXT_CVK_ROWS(K, TAPS), K)
CNN_EXT_DEFINE_CVK_TILE(cnn_ext_cvk_f_tile, float, cnn_ext_vf, CNN_EXT_CJV, CNN_EXT_CVK_TAPS)
CNN_EXT_DEFINE_CVK_TILE(cnn_ext_cvk_d_tile, double, cnn_ext_vd, CNN_EXT_CJV, CNN_EXT_CVK_TAPS)
CNN_EXT_DEFINE_CVK_TILE(cnn_ext_cvk_f_tile1, float, cnn_ext_vf, 1, 2 * CNN_EXT_CVK_TAPS)
CNN_EXT_DEFINE_CVK_TILE(cnn_ext_cvk_d_tile1, double, cnn_ext_vd, 1, 2 * CNN_EXT_CVK_TAPS)

/* the two-vector tile, or the one-vector tile (one) */
#define CNN_EXT_DEFINE_CVK_PICK(NAME, T)                                                              \
static void NAME(const T* xp, const T* dyT, T* pk, Py_ssize_t C_out, const Py_ssize_t* off,          \
                 const Py_ssize_t* step, Py_ssize_t row0, Py_ssize_t nrows, Py_ssize_t OH,          \
                 Py_ssize_t OW, Py_ssize_t SW, Py_ssize_t j0, Py_ssize_t KW, int one) {             \
    if (one)                                                                                         \
        NAME##_tile1(xp, dyT, pk, C_out, off, step, row0, nrows, OH, OW, SW, j0, KW);                \
    else                                                                                             \
        NAME##_tile(xp, dyT, pk, C_out, off, step, row0, nrows, OH, OW, SW, j0, KW);                 \
}
CNN_EXT_DEFINE_CVK_PICK(cnn_ext_cvk_f, float)
CNN_EXT_DEFINE_CVK_PICK(cnn_ext_cvk_d, double)

/* kernel rows per tile of the two-vector tile, or of the one-vector tile (one) */
static inline Py_ssize_t cnn_ext_cvk_rows(Py_ssize_t KW, int one) {
    return one ? CNN_EXT_CVK_ROWS(KW, 2 * CNN_EXT_CVK_TAPS) : CNN_EXT_CVK_ROWS(KW, CNN_EXT_CVK_TAPS);
}

/* dT[p*C + j] = d[j*P + p] (a sample's dE_dY to channels last), one value at a time, dT's rows in turn: every
 * channel of the pixels from p8 on, and the channels from j8 on of those before (the rest done in blocks) */
#define CNN_EXT_DEFINE_TRANSPOSE_REST(NAME, T)                                                          \
static inline void NAME(const T* d, T* dT, Py_ssize_t C, Py_ssize_t P, Py_ssize_t j8, Py_ssize_t p8) { \
    Py_ssize_t p, j;                                                                                   \
    for (p = 0; p < P; p++)                                                                            \
        for (j = (p < p8 ? j8 : 0); j < C; j++)                                                        \
            dT[p * C + j] = d[j * P + p];                                                              \
}
CNN_EXT_DEFINE_TRANSPOSE_REST(cnn_ext_transpose_rest_f, float)
CNN_EXT_DEFINE_TRANSPOSE_REST(cnn_ext_transpose_rest_d, double)

static void cnn_ext_transpose_d(const double* d, double* dT, Py_ssize_t C, Py_ssize_t P) {
    cnn_ext_transpose_rest_d(d, dT, C, P, 0, 0);
}

/* float32: 8 x 8 blocks through registers where the build has 8-float vectors */
static void cnn_ext_transpose_f(const float* d, float* dT, Py_ssize_t C, Py_ssize_t P) {
    Py_ssize_t j8 = 0, p8 = 0;
#if defined(CNN_EXT_SHUFFLE) && CNN_EXT_VEC_BYTES >= 32
#define CNN_EXT_SHUF(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
    Py_ssize_t j, p;
    j8 = C / 8 * 8;
    p8 = P / 8 * 8;
    for (j = 0; j < j8; j += 8)
        for (p = 0; p < p8; p += 8) {
            cnn_ext_vf8 r[8], t[8], u[8];
            int i;
            for (i = 0; i < 8; i++)
                r[i] = *(const cnn_ext_vf8*)(d + (j + i) * P + p);
            for (i = 0; i < 8; i += 2) {  /* pairs of rows interleaved: elements 0 1 4 5, then 2 3 6 7 */
                t[i] = CNN_EXT_SHUF(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
                t[i + 1] = CNN_EXT_SHUF(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
            }
            for (i = 0; i < 8; i += 4) {  /* quads of rows: columns (0, 4), (1, 5), (2, 6), (3, 7) */
                u[i] = CNN_EXT_SHUF(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
                u[i + 1] = CNN_EXT_SHUF(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
                u[i + 2] = CNN_EXT_SHUF(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
                u[i + 3] = CNN_EXT_SHUF(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
            }
            for (i = 0; i < 4; i++) {  /* column i from u[i] and u[i + 4], column i + 4 likewise */
                *(cnn_ext_vf8*)(dT + (p + i) * C + j) = CNN_EXT_SHUF(u[i], u[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
                *(cnn_ext_vf8*)(dT + (p + i + 4) * C + j) = CNN_EXT_SHUF(u[i], u[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
            }
        }
#undef CNN_EXT_SHUF
#endif
    cnn_ext_transpose_rest_f(d, dT, C, P, j8, p8);
}

#endif  /* CNN_EXT_CVK_TILE_H */
