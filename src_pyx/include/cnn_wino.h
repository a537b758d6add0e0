/* The 1-D Winograd F(m, 3) transforms (m = 2 or 4) over n lanes of a block's tiles, and the strided gathers and
 * scatters between image rows and those lanes, for src_pyx/winograd.pyx.
 *
 * Inputs s[k*ss + l], outputs o[k*os + l], l < n: unit lanes on both sides, and restrict, so gcc vectorises the
 * lanes (with six inputs and six outputs it would otherwise need more run-time alias checks than it makes, and
 * leave the loops scalar). Constants are of the array's type: in float32 a double 4.0 would promote the sums.
 * Needs Py_ssize_t (Python.h, which Cython includes first). */
#ifndef CNN_EXT_WINO_H
#define CNN_EXT_WINO_H

#include <math.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define CNN_EXT_RESTRICT __restrict__
#elif defined(_MSC_VER)
#define CNN_EXT_RESTRICT __restrict
#else
#define CNN_EXT_RESTRICT
#endif

/* gcc 12 leaves the six-output loops scalar by itself ("no vectype"), and vectorises them when told; the build
   passes -fopenmp-simd, which needs no OpenMP runtime */
#define CNN_EXT_LANES_LOOP _Pragma("omp simd")

/* tiles per group of split and merge: one vector of float32 lanes on AVX2 */
#define CNN_EXT_WINO_GROUP 8

/* o[e*os + l] = Σ_r G[e, r] s[r*ss + l], l < n: the kernel transform along one axis (3 taps in, m + 2 out), in
   double over n lanes of kernels */
static inline void cnn_ext_wino_g(Py_ssize_t m, const double* CNN_EXT_RESTRICT s, Py_ssize_t ss,
                                  double* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {
    const double sixth = 1.0 / 6, twelfth = 1.0 / 12, twentyfourth = 1.0 / 24;
    Py_ssize_t l;
    if (m == 2) {
        CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {
            double k0 = s[l], k1 = s[ss + l], k2 = s[2 * ss + l];
            o[l] = k0;
            o[os + l] = 0.5 * (k0 + k1 + k2);
            o[2 * os + l] = 0.5 * (k0 - k1 + k2);
            o[3 * os + l] = k2;
        }
        return;
    }
    CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {
        double k0 = s[l], k1 = s[ss + l], k2 = s[2 * ss + l];
        o[l] = 0.25 * k0;
        o[os + l] = -sixth * (k0 + k1 + k2);
        o[2 * os + l] = -sixth * (k0 - k1 + k2);
        o[3 * os + l] = twentyfourth * k0 + twelfth * k1 + sixth * k2;
        o[4 * os + l] = twentyfourth * k0 - twelfth * k1 + sixth * k2;
        o[5 * os + l] = k2;
    }
}

/* kernels per group of the kernel transform: the group's transposed taps and transforms stay in L1, and each
   transform point's plane of u is written in runs of this many (its a² planes are P apart: one per pair would
   put all a² stores in the same cache set) */
#define CNN_EXT_WINO_G_LANES 16

#define CNN_EXT_WINO_DEFS(T, SFX)                                                                                 \
/* o[c] = Σ_ρ Bᵀ[c, ρ] s[ρ]: the input transform along one axis (m + 2 points in, m + 2 out) */                \
static inline void cnn_ext_wino_bt_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss,                \
                                         T* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {                   \
    const T two = 2, four = 4, five = 5;                                                                       \
    Py_ssize_t l;                                                                                              \
    if (m == 2) {                                                                                              \
        CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                                   \
            T d0 = s[l], d1 = s[ss + l], d2 = s[2 * ss + l], d3 = s[3 * ss + l];                               \
            o[l] = d0 - d2;                                                                                    \
            o[os + l] = d1 + d2;                                                                               \
            o[2 * os + l] = d2 - d1;                                                                           \
            o[3 * os + l] = d1 - d3;                                                                           \
        }                                                                                                      \
        return;                                                                                                \
    }                                                                                                          \
    CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                                       \
        T d0 = s[l], d1 = s[ss + l], d2 = s[2 * ss + l], d3 = s[3 * ss + l], d4 = s[4 * ss + l],               \
          d5 = s[5 * ss + l];                                                                                  \
        o[l] = four * d0 - five * d2 + d4;                                                                     \
        o[os + l] = d3 + d4 - four * (d1 + d2);                                                                \
        o[2 * os + l] = d4 - d3 + four * (d1 - d2);                                                            \
        o[3 * os + l] = d4 - d2 + two * (d3 - d1);                                                             \
        o[4 * os + l] = d4 - d2 - two * (d3 - d1);                                                             \
        o[5 * os + l] = four * d1 - five * d3 + d5;                                                            \
    }                                                                                                          \
}                                                                                                              \
/* o[(r*m + c)*os + l] = (Aᵀ S A)[r, c] with S[η, ν] = s[(η (m + 2) + ν)*ss + l]: the 2-D output transform of   \
   one channel's tiles, along ν then η; the tile's (m + 2) x m half-transform stays in registers, not in a     \
   buffer of the block's planes */                                                                             \
static inline void cnn_ext_wino_at2_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss,               \
                                          T* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {                  \
    const T two = 2, four = 4, eight = 8;                                                                      \
    Py_ssize_t l;                                                                                              \
    if (m == 2) {                                                                                              \
        CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                           \
            T q[4][2];                                                                                         \
            for (int e = 0; e < 4; e++) {                                                                      \
                T s0 = s[4 * e * ss + l], s1 = s[(4 * e + 1) * ss + l], s2 = s[(4 * e + 2) * ss + l],          \
                  s3 = s[(4 * e + 3) * ss + l];                                                                \
                q[e][0] = s0 + s1 + s2;                                                                        \
                q[e][1] = s1 - s2 - s3;                                                                        \
            }                                                                                                  \
            for (int c = 0; c < 2; c++) {                                                                      \
                o[c * os + l] = q[0][c] + q[1][c] + q[2][c];                                                   \
                o[(2 + c) * os + l] = q[1][c] - q[2][c] - q[3][c];                                             \
            }                                                                                                  \
        }                                                                                                      \
        return;                                                                                                \
    }                                                                                                          \
    CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                               \
        T q[6][4];                                                                                             \
        for (int e = 0; e < 6; e++) {                                                                          \
            const T* p = s + 6 * e * ss + l;                                                                   \
            T s0 = p[0], s1 = p[ss], s2 = p[2 * ss], s3 = p[3 * ss], s4 = p[4 * ss], s5 = p[5 * ss];           \
            q[e][0] = s0 + (s1 + s2) + (s3 + s4);                                                              \
            q[e][1] = (s1 - s2) + two * (s3 - s4);                                                             \
            q[e][2] = (s1 + s2) + four * (s3 + s4);                                                            \
            q[e][3] = (s1 - s2) + eight * (s3 - s4) + s5;                                                      \
        }                                                                                                      \
        for (int c = 0; c < 4; c++) {                                                                          \
            T s0 = q[0][c], s1 = q[1][c], s2 = q[2][c], s3 = q[3][c], s4 = q[4][c], s5 = q[5][c];              \
            o[c * os + l] = s0 + (s1 + s2) + (s3 + s4);                                                        \
            o[(4 + c) * os + l] = (s1 - s2) + two * (s3 - s4);                                                 \
            o[(8 + c) * os + l] = (s1 + s2) + four * (s3 + s4);                                                \
            o[(12 + c) * os + l] = (s1 - s2) + eight * (s3 - s4) + s5;                                         \
        }                                                                                                      \
    }                                                                                                          \
}                                                                                                              \
/* o[ξ] = Σ_r Aᵀ[r, ξ] s[r]: the adjoint of the output transform (m points in, m + 2 out) */                     \
static inline void cnn_ext_wino_at_t_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss,              \
                                           T* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {                 \
    const T two = 2, four = 4;                                                                                 \
    Py_ssize_t l;                                                                                              \
    if (m == 2) {                                                                                              \
        CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                                   \
            T y0 = s[l], y1 = s[ss + l];                                                                       \
            o[l] = y0;                                                                                         \
            o[os + l] = y0 + y1;                                                                               \
            o[2 * os + l] = y0 - y1;                                                                           \
            o[3 * os + l] = -y1;                                                                               \
        }                                                                                                      \
        return;                                                                                                \
    }                                                                                                          \
    CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                                       \
        T y0 = s[l], y1 = s[ss + l], y2 = s[2 * ss + l], y3 = s[3 * ss + l];                                   \
        o[l] = y0;                                                                                             \
        o[os + l] = (y0 + y2) + (y1 + y3);                                                                     \
        o[2 * os + l] = (y0 + y2) - (y1 + y3);                                                                 \
        o[3 * os + l] = (y0 + four * y2) + two * (y1 + four * y3);                                             \
        o[4 * os + l] = (y0 + four * y2) - two * (y1 + four * y3);                                             \
        o[5 * os + l] = y3;                                                                                    \
    }                                                                                                          \
}                                                                                                              \
/* o[ρ] = Σ_ξ Bᵀ[ξ, ρ] s[ξ]: the adjoint of the input transform (m + 2 points in, m + 2 out), for dX */            \
static inline void cnn_ext_wino_bt_t_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss,              \
                                           T* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {                 \
    const T two = 2, four = 4, five = 5;                                                                       \
    Py_ssize_t l;                                                                                              \
    if (m == 2) {                                                                                              \
        CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                           \
            T s0 = s[l], s1 = s[ss + l], s2 = s[2 * ss + l], s3 = s[3 * ss + l];                               \
            o[l] = s0;                                                                                         \
            o[os + l] = (s1 - s2) + s3;                                                                        \
            o[2 * os + l] = (s1 + s2) - s0;                                                                    \
            o[3 * os + l] = -s3;                                                                               \
        }                                                                                                      \
        return;                                                                                                \
    }                                                                                                          \
    CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                               \
        T s0 = s[l], s1 = s[ss + l], s2 = s[2 * ss + l], s3 = s[3 * ss + l], s4 = s[4 * ss + l],               \
          s5 = s[5 * ss + l];                                                                                  \
        o[l] = four * s0;                                                                                      \
        o[os + l] = four * (s2 - s1) + two * (s4 - s3) + four * s5;                                            \
        o[2 * os + l] = -(five * s0 + four * (s1 + s2) + (s3 + s4));                                           \
        o[3 * os + l] = (s1 - s2) + two * (s3 - s4) - five * s5;                                               \
        o[4 * os + l] = s0 + (s1 + s2) + (s3 + s4);                                                            \
        o[5 * os + l] = s5;                                                                                    \
    }                                                                                                          \
}                                                                                                              \
/* s[c*ss + l] += s[(m + c)*ss + l - d] for c < 2, lanes l < n where mask[l] != 0: each tile's patch gets, in  \
   its first 2 columns (or rows), the last 2 of the patch d lanes before it (d = 1: the tile on its left; d =  \
   the tiles per row: the one above), where the patches overlap in the map; for dX */                          \
static inline void cnn_ext_wino_overlap_##SFX(Py_ssize_t m, T* s, Py_ssize_t ss, const T* CNN_EXT_RESTRICT mask,\
                                             Py_ssize_t d, Py_ssize_t n) {                                     \
    Py_ssize_t c, l;                                                                                           \
    for (c = 0; c < 2; c++) {                                                                                  \
        T* CNN_EXT_RESTRICT o = s + c * ss;                                                                    \
        const T* CNN_EXT_RESTRICT p = s + (m + c) * ss - d;                                                    \
        CNN_EXT_LANES_LOOP for (l = 0; l < n; l++)                                                             \
            o[l] += mask[l] != 0 ? p[l] : (T)0;                                                                \
    }                                                                                                          \
}                                                                                                              \
/* u[ξ*P + p] = (G k_p Gᵀ)[ξ], ξ = η (m + 2) + ν, for the pairs p < n of the kernels k (k_p = k[9p, 9p + 9),     \
   3x3 row-major), in double and rounded once to T: the kernel transform, the rows of k_p then the columns */  \
static inline void cnn_ext_wino_g_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT k, T* CNN_EXT_RESTRICT u,         \
                                        Py_ssize_t P, Py_ssize_t n) {                                            \
    enum { L = CNN_EXT_WINO_G_LANES };                                                                         \
    double taps[9 * L], rows[3 * 6 * L], v[6 * 6 * L];                                                        \
    Py_ssize_t p0, l, q, a = m + 2, nl;                                                                        \
    for (p0 = 0; p0 < n; p0 += L) {                                                                            \
        nl = n - p0 < L ? n - p0 : L;                                                                          \
        for (l = 0; l < nl; l++)  /* taps[q, l]: the group's kernels in lanes */                               \
            for (q = 0; q < 9; q++)                                                                            \
                taps[q * L + l] = k[9 * (p0 + l) + q];                                                         \
        for (q = 0; q < 3; q++)  /* rows[r, c, l] = (k_p[r] Gᵀ)[c] */                                           \
            cnn_ext_wino_g(m, taps + 3 * q * L, L, rows + q * a * L, L, L);                                    \
        for (q = 0; q < a; q++)  /* v[e, c, l] = (G rows[., c])[e] */                                           \
            cnn_ext_wino_g(m, rows + q * L, a * L, v + q * L, a * L, L);                                       \
        for (q = 0; q < a * a; q++)                                                                            \
            for (l = 0; l < nl; l++)                                                                           \
                u[q * P + p0 + l] = (T)v[q * L + l];                                                           \
    }                                                                                                          \
}                                                                                                              \
/* o[c*os + t] = row[t*m + c], c < k (k = m or m + 2), t < n rounded up to a whole group: the columns of n      \
   tiles of one row, each column's tiles in lanes; groups of a fixed number of tiles, which gcc vectorises with  \
   shuffles (a row has too few tiles for its vector loop). Reads row[0, G*m + k - m) per group, writes G lanes. */ \
static inline void cnn_ext_wino_split_any_##SFX(Py_ssize_t m, Py_ssize_t k, const T* CNN_EXT_RESTRICT row,        \
                                            T* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {                \
    Py_ssize_t t0, t;                                                                                          \
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP) {                                                           \
        const T* CNN_EXT_RESTRICT r = row + t0 * m;                                                            \
        T* CNN_EXT_RESTRICT o0 = o + t0;                                                                       \
        T* CNN_EXT_RESTRICT o1 = o + os + t0;                                                                  \
        T* CNN_EXT_RESTRICT o2 = o + 2 * os + t0;                                                              \
        T* CNN_EXT_RESTRICT o3 = o + 3 * os + t0;                                                              \
        if (m == 4) {                                                                                          \
            CNN_EXT_LANES_LOOP for (t = 0; t < CNN_EXT_WINO_GROUP; t++) {                                      \
                o0[t] = r[4 * t]; o1[t] = r[4 * t + 1]; o2[t] = r[4 * t + 2]; o3[t] = r[4 * t + 3];             \
            }                                                                                                  \
        } else {                                                                                               \
            CNN_EXT_LANES_LOOP for (t = 0; t < CNN_EXT_WINO_GROUP; t++) {                                      \
                o0[t] = r[2 * t]; o1[t] = r[2 * t + 1];                                                        \
            }                                                                                                  \
        }                                                                                                      \
        if (k > m) {  /* the next tile's first two columns */                                                  \
            T* CNN_EXT_RESTRICT o4 = o + m * os + t0;                                                          \
            T* CNN_EXT_RESTRICT o5 = o + (m + 1) * os + t0;                                                    \
            CNN_EXT_LANES_LOOP for (t = 0; t < CNN_EXT_WINO_GROUP; t++) {                                      \
                o4[t] = r[m * t + m]; o5[t] = r[m * t + m + 1];                                                \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
}                                                                                                              \
/* row[t*m + c] = b + s[c*ss + t], c < m, t < n rounded up to a whole group: the inverse of split, plus a bias */ \
static inline void cnn_ext_wino_merge_any_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss, T b,    \
                                            T* CNN_EXT_RESTRICT row, Py_ssize_t n) {                             \
    Py_ssize_t t0, t;                                                                                          \
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP) {                                                           \
        T* CNN_EXT_RESTRICT r = row + t0 * m;                                                                  \
        const T* CNN_EXT_RESTRICT s0 = s + t0;                                                                 \
        const T* CNN_EXT_RESTRICT s1 = s + ss + t0;                                                            \
        if (m == 4) {                                                                                          \
            const T* CNN_EXT_RESTRICT s2 = s + 2 * ss + t0;                                                    \
            const T* CNN_EXT_RESTRICT s3 = s + 3 * ss + t0;                                                    \
            CNN_EXT_LANES_LOOP for (t = 0; t < CNN_EXT_WINO_GROUP; t++) {                                      \
                r[4 * t] = b + s0[t]; r[4 * t + 1] = b + s1[t]; r[4 * t + 2] = b + s2[t];                      \
                r[4 * t + 3] = b + s3[t];                                                                      \
            }                                                                                                  \
        } else {                                                                                               \
            CNN_EXT_LANES_LOOP for (t = 0; t < CNN_EXT_WINO_GROUP; t++) {                                      \
                r[2 * t] = b + s0[t]; r[2 * t + 1] = b + s1[t];                                                \
            }                                                                                                  \
        }                                                                                                      \
    }                                                                                                          \
}

#define CNN_EXT_WINO_ROW_DEFS(T, SFX, FABS)                                                                        \
/* o[l] = s[l], acc[l] = max(acc[l], |s[l]|): a row's copy and the forward's zero-field map in one pass (a NaN    \
   makes the result non-finite anyway) */                                                                      \
static inline void cnn_ext_wino_copy_max_abs_##SFX(const T* CNN_EXT_RESTRICT s, T* CNN_EXT_RESTRICT o,           \
                                                   T* CNN_EXT_RESTRICT acc, Py_ssize_t n) {                    \
    Py_ssize_t l;                                                                                              \
    CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                               \
        T v = s[l], a = FABS(v);                                                                               \
        o[l] = v;                                                                                              \
        acc[l] = acc[l] > a ? acc[l] : a;                                                                      \
    }                                                                                                          \
}                                                                                                              \
/* o[l] = s[l], l < n; returns 0 when all are finite, else NaN (an inf or NaN minus itself): the forward's output \
   copy and its check in one pass, instead of a second read of the whole output */                             \
static inline T cnn_ext_wino_copy_check_##SFX(const T* CNN_EXT_RESTRICT s, T* CNN_EXT_RESTRICT o, Py_ssize_t n) { \
    Py_ssize_t l;                                                                                              \
    T acc = 0;                                                                                                 \
    _Pragma("omp simd reduction(+:acc)") for (l = 0; l < n; l++) {                                             \
        T v = s[l];                                                                                            \
        o[l] = v;                                                                                              \
        acc += v - v;                                                                                          \
    }                                                                                                          \
    return acc;                                                                                                \
}
CNN_EXT_WINO_ROW_DEFS(float, f, fabsf)
CNN_EXT_WINO_ROW_DEFS(double, d, fabs)
#undef CNN_EXT_WINO_ROW_DEFS

CNN_EXT_WINO_DEFS(float, f)
CNN_EXT_WINO_DEFS(double, d)
#undef CNN_EXT_WINO_DEFS

/* y[t*m + c] = b + s[c*ss + t], c < m, for the n tiles of one output row within the map's OW columns, through the
   row buffer (whole groups of tiles); whether all are finite */
#define CNN_EXT_WINO_MERGE_ROW_DEFS(T, SFX)                                                                       \
static inline int cnn_ext_wino_merge_row_any_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss, T b, \
                                                   T* CNN_EXT_RESTRICT row, T* CNN_EXT_RESTRICT y, Py_ssize_t OW, \
                                                   Py_ssize_t n) {                                               \
    cnn_ext_wino_merge_any_##SFX(m, s, ss, b, row, n);                                                           \
    return cnn_ext_wino_copy_check_##SFX(row, y, OW) == 0;                                                       \
}
CNN_EXT_WINO_MERGE_ROW_DEFS(float, f)
CNN_EXT_WINO_MERGE_ROW_DEFS(double, d)
#undef CNN_EXT_WINO_MERGE_ROW_DEFS

#if defined(__AVX2__)
#include <immintrin.h>
/* o[l] = s[l], l < n: a row of a few dozen values in vectors, the last few masked; gcc makes a memcpy call of
   a plain loop (and of this one, given restrict pointers), which costs as much as such a copy */
static inline void cnn_ext_wino_copy_f(const float* s, float* o, Py_ssize_t n) {
    Py_ssize_t l = 0;
    for (; l + 8 <= n; l += 8)
        _mm256_storeu_ps(o + l, _mm256_loadu_ps(s + l));
    if (l < n) {
        __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - l)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_maskstore_ps(o + l, keep, _mm256_maskload_ps(s + l, keep));
    }
}

static inline void cnn_ext_wino_copy_d(const double* s, double* o, Py_ssize_t n) {
    Py_ssize_t l = 0;
    for (; l + 4 <= n; l += 4)
        _mm256_storeu_pd(o + l, _mm256_loadu_pd(s + l));
    if (l < n) {
        __m256i keep = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n - l), _mm256_setr_epi64x(0, 1, 2, 3));
        _mm256_maskstore_pd(o + l, keep, _mm256_maskload_pd(s + l, keep));
    }
}

/* Float32 split and merge of F(4x4, 3x3) in AVX2 shuffles: a group of 8 tiles' 4 columns is four 4x4
   transposes, tile t beside tile t + 4 in each vector's two halves; 8 shuffles for 4 vectors, where gcc's
   vectorised gathers took 20 permutes and built the next tile's two columns lane by lane. Same values moved:
   the bits do not change. */
static inline void cnn_ext_wino_t4(__m256 a, __m256 b, __m256 c, __m256 d, __m256* o0, __m256* o1, __m256* o2,
                                   __m256* o3) {
    __m256 ab0 = _mm256_unpacklo_ps(a, b), ab1 = _mm256_unpackhi_ps(a, b);  /* a0 b0 a1 b1 | a2 b2 a3 b3 */
    __m256 cd0 = _mm256_unpacklo_ps(c, d), cd1 = _mm256_unpackhi_ps(c, d);
    *o0 = _mm256_shuffle_ps(ab0, cd0, 0x44);  /* a0 b0 c0 d0 */
    *o1 = _mm256_shuffle_ps(ab0, cd0, 0xEE);  /* a1 b1 c1 d1 */
    *o2 = _mm256_shuffle_ps(ab1, cd1, 0x44);
    *o3 = _mm256_shuffle_ps(ab1, cd1, 0xEE);
}

/* [p[0, 4) | p[16, 20)]: tile t and tile t + 4 of a row of 4-column tiles */
static inline __m256 cnn_ext_wino_pair(const float* p) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p)), _mm_loadu_ps(p + 16), 1);
}

static inline void cnn_ext_wino_split_f(Py_ssize_t m, Py_ssize_t k, const float* CNN_EXT_RESTRICT row,
                                        float* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {
    Py_ssize_t t0;
    if (m != 4 || k != 4) {  /* the input tiles' 6 columns: cnn_ext_wino_split_bt_f */
        cnn_ext_wino_split_any_f(m, k, row, o, os, n);
        return;
    }
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP) {
        const float* r = row + t0 * 4;
        __m256 a = cnn_ext_wino_pair(r), b = cnn_ext_wino_pair(r + 4), c = cnn_ext_wino_pair(r + 8);
        __m256 d = cnn_ext_wino_pair(r + 12), c0, c1, c2, c3;
        cnn_ext_wino_t4(a, b, c, d, &c0, &c1, &c2, &c3);
        _mm256_storeu_ps(o + t0, c0);
        _mm256_storeu_ps(o + os + t0, c1);
        _mm256_storeu_ps(o + 2 * os + t0, c2);
        _mm256_storeu_ps(o + 3 * os + t0, c3);
    }
}

/* The F(4x4, 3x3) input transform from the rows, split and transformed in registers: cnn_ext_wino_bt_f's
   formulas, with the FMAs gcc makes of them. o[ξ] = Σ_ρ Bᵀ[ξ, ρ] d_ρ, tile t in lane t. */
#define CNN_EXT_WINO_SPLIT_BT 1
#define CNN_EXT_WINO_BT6_DEFS(V, SFX, P)                                                                        \
static inline void cnn_ext_wino_bt6_##SFX(V d0, V d1, V d2, V d3, V d4, V d5, V* o) {                           \
    const V two = _mm256_set1_##P(2), four = _mm256_set1_##P(4), five = _mm256_set1_##P(5);                     \
    o[0] = _mm256_add_##P(_mm256_fmsub_##P(four, d0, _mm256_mul_##P(five, d2)), d4);                           \
    o[1] = _mm256_fnmadd_##P(four, _mm256_add_##P(d1, d2), _mm256_add_##P(d3, d4));                            \
    o[2] = _mm256_fmadd_##P(four, _mm256_sub_##P(d1, d2), _mm256_sub_##P(d4, d3));                             \
    o[3] = _mm256_fmadd_##P(two, _mm256_sub_##P(d3, d1), _mm256_sub_##P(d4, d2));                              \
    o[4] = _mm256_fnmadd_##P(two, _mm256_sub_##P(d3, d1), _mm256_sub_##P(d4, d2));                             \
    o[5] = _mm256_add_##P(_mm256_fmsub_##P(four, d1, _mm256_mul_##P(five, d3)), d5);                           \
}
CNN_EXT_WINO_BT6_DEFS(__m256, f, ps)
CNN_EXT_WINO_BT6_DEFS(__m256d, d, pd)
#undef CNN_EXT_WINO_BT6_DEFS

/* Bᵀ of the 6 columns of a group of 8 tiles of one row (r: the group's first column): e[ξ], tile t in lane t */
static inline void cnn_ext_wino_cols_bt_f(const float* r, __m256* e) {
    __m256 a = cnn_ext_wino_pair(r), b = cnn_ext_wino_pair(r + 4), c = cnn_ext_wino_pair(r + 8);
    __m256 d = cnn_ext_wino_pair(r + 12), f = cnn_ext_wino_pair(r + 16), d0, d1, d2, d3;
    cnn_ext_wino_t4(a, b, c, d, &d0, &d1, &d2, &d3);
    /* the next tile's first two columns: the same transpose one tile on (reads r[32, 36)) */
    __m256 bc = _mm256_unpacklo_ps(b, c), df = _mm256_unpacklo_ps(d, f);
    cnn_ext_wino_bt6_f(d0, d1, d2, d3, _mm256_shuffle_ps(bc, df, 0x44), _mm256_shuffle_ps(bc, df, 0xEE), e);
}

/* o[ξ*os + t] = Σ_c Bᵀ[ξ, c] row[4t + c], t < n rounded up to a whole group: the tiles' columns split and
   transformed along them at once */
static inline void cnn_ext_wino_split_bt_f(const float* CNN_EXT_RESTRICT row, float* CNN_EXT_RESTRICT o,
                                           Py_ssize_t os, Py_ssize_t n) {
    Py_ssize_t t0, xi;
    __m256 e[6];
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP) {
        cnn_ext_wino_cols_bt_f(row + t0 * 4, e);
        for (xi = 0; xi < 6; xi++)
            _mm256_storeu_ps(o + xi * os + t0, e[xi]);
    }
}

/* The adjoint output transform along columns fused with the split of dE_dY's 4-column tiles: o[ξ*os + t] =
   Σ_c Aᵀ[c, ξ] row[4t + c], t < n rounded up to a whole group; cnn_ext_wino_at_t_f's formulas, with the FMAs gcc
   makes of them. */
static inline void cnn_ext_wino_split_at_t_f(const float* CNN_EXT_RESTRICT row, float* CNN_EXT_RESTRICT o,
                                             Py_ssize_t os, Py_ssize_t n) {
    const __m256 two = _mm256_set1_ps(2), four = _mm256_set1_ps(4);
    Py_ssize_t t0;
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP) {
        const float* r = row + t0 * 4;
        __m256 y0, y1, y2, y3;
        cnn_ext_wino_t4(cnn_ext_wino_pair(r), cnn_ext_wino_pair(r + 4), cnn_ext_wino_pair(r + 8),
                        cnn_ext_wino_pair(r + 12), &y0, &y1, &y2, &y3);
        __m256 even = _mm256_add_ps(y0, y2), odd = _mm256_add_ps(y1, y3);
        __m256 even4 = _mm256_fmadd_ps(four, y2, y0), odd4 = _mm256_fmadd_ps(four, y3, y1);
        _mm256_storeu_ps(o + t0, y0);
        _mm256_storeu_ps(o + os + t0, _mm256_add_ps(even, odd));
        _mm256_storeu_ps(o + 2 * os + t0, _mm256_sub_ps(even, odd));
        _mm256_storeu_ps(o + 3 * os + t0, _mm256_fmadd_ps(two, odd4, even4));
        _mm256_storeu_ps(o + 4 * os + t0, _mm256_fnmadd_ps(two, odd4, even4));
        _mm256_storeu_ps(o + 5 * os + t0, y3);
    }
}

/* y[t*4 + c] = b + s[c*ss + t] for the n tiles of one output row, c < 4, within the map's OW columns; returns
   whether all are finite. The tiles' columns go from registers to the map (a row buffer and its copy cost as
   much as the transposes), the last few by a masked store; beyond OW nothing is written. */
static inline int cnn_ext_wino_merge_row_f(Py_ssize_t m, const float* CNN_EXT_RESTRICT s, Py_ssize_t ss, float b,
                                           float* CNN_EXT_RESTRICT row, float* CNN_EXT_RESTRICT y, Py_ssize_t OW,
                                           Py_ssize_t n) {
    Py_ssize_t t0, q, col;
    __m256 bias = _mm256_set1_ps(b), acc = _mm256_setzero_ps(), c[4], t[4], v[4];
    if (m != 4)
        return cnn_ext_wino_merge_row_any_f(m, s, ss, b, row, y, OW, n);
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP) {
        for (q = 0; q < 4; q++)
            c[q] = _mm256_add_ps(bias, _mm256_loadu_ps(s + q * ss + t0));
        cnn_ext_wino_t4(c[0], c[1], c[2], c[3], &t[0], &t[1], &t[2], &t[3]);  /* [tile q | tile q + 4] */
        v[0] = _mm256_permute2f128_ps(t[0], t[1], 0x20);  /* the group's 32 columns in order */
        v[1] = _mm256_permute2f128_ps(t[2], t[3], 0x20);
        v[2] = _mm256_permute2f128_ps(t[0], t[1], 0x31);
        v[3] = _mm256_permute2f128_ps(t[2], t[3], 0x31);
        for (q = 0; q < 4; q++) {
            col = t0 * 4 + 8 * q;
            if (col + 8 <= OW) {
                _mm256_storeu_ps(y + col, v[q]);
                acc = _mm256_add_ps(acc, _mm256_sub_ps(v[q], v[q]));  /* NaN from an inf or a NaN */
            } else {  /* the row's last columns: lanes l < OW - col */
                __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(OW - col)),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                _mm256_maskstore_ps(y + col, keep, v[q]);
                acc = _mm256_add_ps(acc, _mm256_and_ps(_mm256_sub_ps(v[q], v[q]), _mm256_castsi256_ps(keep)));
                return _mm256_movemask_ps(_mm256_cmp_ps(acc, acc, _CMP_UNORD_Q)) == 0;
            }
        }
    }
    return _mm256_movemask_ps(_mm256_cmp_ps(acc, acc, _CMP_UNORD_Q)) == 0;
}

/* Float64: 4 tiles per vector, so a group of 8 tiles is two halves, each 4 rows of 4 columns transposed in
   registers (tile t's 4 columns are one vector); the same formulas as the float32 functions above. */
static inline void cnn_ext_wino_t4d(__m256d r0, __m256d r1, __m256d r2, __m256d r3, __m256d* c0, __m256d* c1,
                                    __m256d* c2, __m256d* c3) {
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);  /* r0[0] r1[0] | r0[2] r1[2] */
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    *c0 = _mm256_permute2f128_pd(t0, t2, 0x20);
    *c1 = _mm256_permute2f128_pd(t1, t3, 0x20);
    *c2 = _mm256_permute2f128_pd(t0, t2, 0x31);
    *c3 = _mm256_permute2f128_pd(t1, t3, 0x31);
}

/* columns 0 and 1 of the 4 tiles after r0's (r1..r4: the tiles of r0[4..20)) */
static inline void cnn_ext_wino_next2d(__m256d r1, __m256d r2, __m256d r3, __m256d r4, __m256d* c4,
                                       __m256d* c5) {
    __m256d u0 = _mm256_unpacklo_pd(r1, r2), u1 = _mm256_unpackhi_pd(r1, r2);
    __m256d u2 = _mm256_unpacklo_pd(r3, r4), u3 = _mm256_unpackhi_pd(r3, r4);
    *c4 = _mm256_permute2f128_pd(u0, u2, 0x20);
    *c5 = _mm256_permute2f128_pd(u1, u3, 0x20);
}

static inline void cnn_ext_wino_split_d(Py_ssize_t m, Py_ssize_t k, const double* CNN_EXT_RESTRICT row,
                                        double* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {
    Py_ssize_t t0, h;
    if (m != 4 || k != 4) {
        cnn_ext_wino_split_any_d(m, k, row, o, os, n);
        return;
    }
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP)
        for (h = 0; h < CNN_EXT_WINO_GROUP; h += 4) {
            const double* r = row + (t0 + h) * 4;
            __m256d c0, c1, c2, c3;
            cnn_ext_wino_t4d(_mm256_loadu_pd(r), _mm256_loadu_pd(r + 4), _mm256_loadu_pd(r + 8),
                             _mm256_loadu_pd(r + 12), &c0, &c1, &c2, &c3);
            _mm256_storeu_pd(o + t0 + h, c0);
            _mm256_storeu_pd(o + os + t0 + h, c1);
            _mm256_storeu_pd(o + 2 * os + t0 + h, c2);
            _mm256_storeu_pd(o + 3 * os + t0 + h, c3);
        }
}

/* Bᵀ of the 6 columns of 4 tiles of one row (r: the first tile's first column): e[ξ], tile t in lane t */
static inline void cnn_ext_wino_cols_bt_d(const double* r, __m256d* e) {
    __m256d r1 = _mm256_loadu_pd(r + 4), r2 = _mm256_loadu_pd(r + 8), r3 = _mm256_loadu_pd(r + 12);
    __m256d d0, d1, d2, d3, d4, d5;
    cnn_ext_wino_t4d(_mm256_loadu_pd(r), r1, r2, r3, &d0, &d1, &d2, &d3);
    cnn_ext_wino_next2d(r1, r2, r3, _mm256_loadu_pd(r + 16), &d4, &d5);  /* reads r[16, 20) */
    cnn_ext_wino_bt6_d(d0, d1, d2, d3, d4, d5, e);
}

static inline void cnn_ext_wino_split_bt_d(const double* CNN_EXT_RESTRICT row, double* CNN_EXT_RESTRICT o,
                                           Py_ssize_t os, Py_ssize_t n) {
    Py_ssize_t t0, xi;
    __m256d e[6];
    for (t0 = 0; t0 < n; t0 += 4) {
        cnn_ext_wino_cols_bt_d(row + t0 * 4, e);
        for (xi = 0; xi < 6; xi++)
            _mm256_storeu_pd(o + xi * os + t0, e[xi]);
    }
}

static inline void cnn_ext_wino_split_at_t_d(const double* CNN_EXT_RESTRICT row, double* CNN_EXT_RESTRICT o,
                                             Py_ssize_t os, Py_ssize_t n) {
    const __m256d two = _mm256_set1_pd(2), four = _mm256_set1_pd(4);
    Py_ssize_t t0, h;
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP)
        for (h = 0; h < CNN_EXT_WINO_GROUP; h += 4) {
            const double* r = row + (t0 + h) * 4;
            __m256d y0, y1, y2, y3;
            double* q = o + t0 + h;
            cnn_ext_wino_t4d(_mm256_loadu_pd(r), _mm256_loadu_pd(r + 4), _mm256_loadu_pd(r + 8),
                             _mm256_loadu_pd(r + 12), &y0, &y1, &y2, &y3);
            __m256d even = _mm256_add_pd(y0, y2), odd = _mm256_add_pd(y1, y3);
            __m256d even4 = _mm256_fmadd_pd(four, y2, y0), odd4 = _mm256_fmadd_pd(four, y3, y1);
            _mm256_storeu_pd(q, y0);
            _mm256_storeu_pd(q + os, _mm256_add_pd(even, odd));
            _mm256_storeu_pd(q + 2 * os, _mm256_sub_pd(even, odd));
            _mm256_storeu_pd(q + 3 * os, _mm256_fmadd_pd(two, odd4, even4));
            _mm256_storeu_pd(q + 4 * os, _mm256_fnmadd_pd(two, odd4, even4));
            _mm256_storeu_pd(q + 5 * os, y3);
        }
}

static inline int cnn_ext_wino_merge_row_d(Py_ssize_t m, const double* CNN_EXT_RESTRICT s, Py_ssize_t ss, double b,
                                           double* CNN_EXT_RESTRICT row, double* CNN_EXT_RESTRICT y, Py_ssize_t OW,
                                           Py_ssize_t n) {
    Py_ssize_t t0, h, q, col;
    __m256d bias = _mm256_set1_pd(b), acc = _mm256_setzero_pd(), c[4], v[4];
    if (m != 4)
        return cnn_ext_wino_merge_row_any_d(m, s, ss, b, row, y, OW, n);
    for (t0 = 0; t0 < n; t0 += CNN_EXT_WINO_GROUP)
        for (h = 0; h < CNN_EXT_WINO_GROUP; h += 4) {
            for (q = 0; q < 4; q++)
                c[q] = _mm256_add_pd(bias, _mm256_loadu_pd(s + q * ss + t0 + h));
            cnn_ext_wino_t4d(c[0], c[1], c[2], c[3], &v[0], &v[1], &v[2], &v[3]);  /* tile t0 + h + q */
            for (q = 0; q < 4; q++) {
                col = (t0 + h + q) * 4;
                if (col + 4 <= OW) {
                    _mm256_storeu_pd(y + col, v[q]);
                    acc = _mm256_add_pd(acc, _mm256_sub_pd(v[q], v[q]));
                } else {  /* lanes l < OW - col */
                    __m256i keep = _mm256_cmpgt_epi64(_mm256_set1_epi64x(OW - col), _mm256_setr_epi64x(0, 1, 2, 3));
                    _mm256_maskstore_pd(y + col, keep, v[q]);
                    acc = _mm256_add_pd(acc, _mm256_and_pd(_mm256_sub_pd(v[q], v[q]), _mm256_castsi256_pd(keep)));
                    return _mm256_movemask_pd(_mm256_cmp_pd(acc, acc, _CMP_UNORD_Q)) == 0;
                }
            }
        }
    return _mm256_movemask_pd(_mm256_cmp_pd(acc, acc, _CMP_UNORD_Q)) == 0;
}
#else
#define CNN_EXT_WINO_SPLIT_BT 0
/* without AVX2: memcpy, the generic split and merge; the fused splits are never called (CNN_EXT_WINO_SPLIT_BT is 0) */
#define CNN_EXT_WINO_PLAIN_DEFS(T, SFX)                                                                         \
static inline void cnn_ext_wino_copy_##SFX(const T* CNN_EXT_RESTRICT s, T* CNN_EXT_RESTRICT o, Py_ssize_t n) {  \
    memcpy(o, s, n * sizeof(T));                                                                               \
}                                                                                                              \
static inline void cnn_ext_wino_split_at_t_##SFX(const T* row, T* o, Py_ssize_t os, Py_ssize_t n) {            \
    (void)row; (void)o; (void)os; (void)n;                                                                     \
}                                                                                                              \
static inline void cnn_ext_wino_split_bt_##SFX(const T* row, T* o, Py_ssize_t os, Py_ssize_t n) {              \
    (void)row; (void)o; (void)os; (void)n;                                                                     \
}                                                                                                              \
static inline void cnn_ext_wino_split_##SFX(Py_ssize_t m, Py_ssize_t k, const T* CNN_EXT_RESTRICT row,          \
                                            T* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {             \
    cnn_ext_wino_split_any_##SFX(m, k, row, o, os, n);                                                         \
}                                                                                                              \
static inline int cnn_ext_wino_merge_row_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss, T b,   \
                                               T* CNN_EXT_RESTRICT row, T* CNN_EXT_RESTRICT y, Py_ssize_t OW,  \
                                               Py_ssize_t n) {                                                 \
    return cnn_ext_wino_merge_row_any_##SFX(m, s, ss, b, row, y, OW, n);                                       \
}
CNN_EXT_WINO_PLAIN_DEFS(float, f)
CNN_EXT_WINO_PLAIN_DEFS(double, d)
#undef CNN_EXT_WINO_PLAIN_DEFS
#endif

#endif  /* CNN_EXT_WINO_H */
