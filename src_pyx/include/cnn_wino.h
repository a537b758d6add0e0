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
/* o[r] = Σ_ξ Aᵀ[r, ξ] s[ξ]: the output transform along one axis (m + 2 points in, m out) */                     \
static inline void cnn_ext_wino_at_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss,                \
                                         T* CNN_EXT_RESTRICT o, Py_ssize_t os, Py_ssize_t n) {                   \
    const T two = 2, four = 4, eight = 8;                                                                      \
    Py_ssize_t l;                                                                                              \
    if (m == 2) {                                                                                              \
        CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                                   \
            T s0 = s[l], s1 = s[ss + l], s2 = s[2 * ss + l], s3 = s[3 * ss + l];                               \
            o[l] = s0 + s1 + s2;                                                                               \
            o[os + l] = s1 - s2 - s3;                                                                          \
        }                                                                                                      \
        return;                                                                                                \
    }                                                                                                          \
    CNN_EXT_LANES_LOOP for (l = 0; l < n; l++) {                                                                       \
        T s0 = s[l], s1 = s[ss + l], s2 = s[2 * ss + l], s3 = s[3 * ss + l], s4 = s[4 * ss + l],               \
          s5 = s[5 * ss + l];                                                                                  \
        o[l] = s0 + (s1 + s2) + (s3 + s4);                                                                     \
        o[os + l] = (s1 - s2) + two * (s3 - s4);                                                               \
        o[2 * os + l] = (s1 + s2) + four * (s3 + s4);                                                          \
        o[3 * os + l] = (s1 - s2) + eight * (s3 - s4) + s5;                                                    \
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
static inline void cnn_ext_wino_split_##SFX(Py_ssize_t m, Py_ssize_t k, const T* CNN_EXT_RESTRICT row,            \
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
static inline void cnn_ext_wino_merge_##SFX(Py_ssize_t m, const T* CNN_EXT_RESTRICT s, Py_ssize_t ss, T b,        \
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

#endif  /* CNN_EXT_WINO_H */
