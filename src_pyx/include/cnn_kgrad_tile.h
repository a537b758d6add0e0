/* Kernel-gradient register tile, one body for float and double (GNU vectors, as the forward tile).
 *
 * acc[jj][t] (nj <= CNN_EXT_KJ channels x nt <= CNN_EXT_KT taps, flattened tap index t0 + t) stays in
 * vector registers over nvec vectors of f; each step loads nt x vectors (at the taps' offsets
 * a*A + b*B, unaligned) and nj dy vectors and issues nj*nt FMAs (4 x 3: 12 accumulators + 3 x + 1 dy
 * of the 16 ymm registers; in the -mavx2 build the loop is 7 vmovups + 12 vfmadd231ps, no stack access).
 * The plane is nrow rows of nvec vectors (drow, xrow apart): one row for the flat slabs of the wide and
 * shifted layouts, the output rows for one input channel read in place (layout 2, see _wide_geom in kgrad.pyx).
 * nj and nt are literals in every copy (the switch), so the constant-trip loops unroll and the arrays
 * of vectors live in registers. The tile then stores (init: first sample of the chunk) or adds its
 * accumulators to vacc[(t*nj + jj)*L + lane] (contiguous, so the hardware prefetches it). */
#ifndef CNN_EXT_KGRAD_TILE_H
#define CNN_EXT_KGRAD_TILE_H

#include "cnn_simd.h"

#define CNN_EXT_KJ 4
#define CNN_EXT_KT 3

#define CNN_EXT_DEFINE_KGRAD_TILE(NAME, T, V, ROWS)                                                   \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* dyw, Py_ssize_t dstride, const T* xr, Py_ssize_t a0,  \
                                      Py_ssize_t b0, Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B,      \
                                      Py_ssize_t nvec, Py_ssize_t nrow, Py_ssize_t drow,             \
                                      Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy, Py_ssize_t sx, \
                                      T* vacc, int init, const Py_ssize_t nj, const Py_ssize_t nt) { \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \
    V acc[CNN_EXT_KJ][CNN_EXT_KT], xv[CNN_EXT_KT];                                                   \
    const T* xp[CNN_EXT_KT];                                                                         \
    const T* dp[CNN_EXT_KJ];                                                                         \
    Py_ssize_t jj, t, f, s, r, n = nvec * L, b = b0, o = a0 * A + b0 * B;                            \
    for (t = 0; t < nt; t++) {  /* taps (a, b) from (a0, b0) on, b < Bn fastest; no division */      \
        xp[t] = xr + o;                                                                              \
        b++; o += B;                                                                                 \
        if (b == Bn) { b = 0; o += A - Bn * B; }                                                     \
    }                                                                                                \
    for (jj = 0; jj < nj; jj++) {                                                                    \
        dp[jj] = dyw + jj * dstride;                                                                 \
        for (t = 0; t < nt; t++)                                                                     \
            acc[jj][t] = CNN_EXT_SPLAT(V, (T)0);                                                     \
    }                                                                                                \
    for (s = 0; s < ns; s++) {  /* the samples' slabs one after another, sx / sdy apart */             \
        if (!(ROWS)) {  /* the flat slabs of the wide and shifted layouts: one row, the plane */     \
            for (f = 0; f < n; f += L) {                                                             \
                for (t = 0; t < nt; t++)                                                             \
                    xv[t] = *(const V*)(xp[t] + f);                                                  \
                for (jj = 0; jj < nj; jj++) {                                                        \
                    const V d = *(const V*)(dp[jj] + f);                                             \
                    for (t = 0; t < nt; t++)                                                         \
                        acc[jj][t] += d * xv[t];                                                     \
                }                                                                                    \
            }                                                                                        \
        } else {  /* nrow short rows, drow / xrow apart: unrolled, vectors pinned in registers */    \
            for (r = 0; r < nrow; r++) {                                                             \
                const Py_ssize_t ro = r * drow, xo = r * xrow;                                       \
                CNN_EXT_UNROLL                                                                       \
                for (f = 0; f < n; f += L) {                                                         \
                    for (t = 0; t < nt; t++) {                                                       \
                        xv[t] = *(const V*)(xp[t] + xo + f);                                         \
                        CNN_EXT_IN_REGISTER(xv[t]);                                                  \
                    }                                                                                \
                    for (jj = 0; jj < nj; jj++) {                                                    \
                        V d = *(const V*)(dp[jj] + ro + f);                                          \
                        CNN_EXT_IN_REGISTER(d);                                                      \
                        for (t = 0; t < nt; t++)                                                     \
                            acc[jj][t] += d * xv[t];                                                 \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (t = 0; t < nt; t++)                                                                     \
            xp[t] += sx;                                                                             \
        for (jj = 0; jj < nj; jj++)                                                                  \
            dp[jj] += sdy;                                                                           \
    }                                                                                                \
    if (init) {                                                                                      \
        for (jj = 0; jj < nj; jj++)                                                                  \
            for (t = 0; t < nt; t++)                                                                 \
                *(V*)(vacc + (t * nj + jj) * L) = acc[jj][t];                                        \
    } else {                                                                                         \
        for (jj = 0; jj < nj; jj++)                                                                  \
            for (t = 0; t < nt; t++) {                                                               \
                V* dst = (V*)(vacc + (t * nj + jj) * L);                                             \
                const V s = *dst + acc[jj][t];                                                       \
                *dst = s;                                                                            \
            }                                                                                        \
    }                                                                                                \
}                                                                                                    \
static void NAME(const T* dyw, Py_ssize_t dstride, const T* xr, Py_ssize_t a0, Py_ssize_t b0,        \
                 Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B, Py_ssize_t nvec, Py_ssize_t nrow,        \
                 Py_ssize_t drow, Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy, Py_ssize_t sx,     \
                 T* vacc, int init, Py_ssize_t nj, Py_ssize_t nt) {                                  \
    switch ((nj < CNN_EXT_KJ ? nj : CNN_EXT_KJ) * 8 + (nt < CNN_EXT_KT ? nt : CNN_EXT_KT)) {         \
    CNN_EXT_KGRAD_CASES(NAME)                                                                        \
    }                                                                                                \
}
#define CNN_EXT_KGRAD_CASE(NAME, J, TT) \
    case J * 8 + TT: NAME##_fixed(dyw, dstride, xr, a0, b0, Bn, A, B, nvec, nrow, drow, xrow, ns, sdy, sx, \
                                  vacc, init, J, TT);                                               \
        break;
#define CNN_EXT_KGRAD_CASES_J(NAME, J) \
    CNN_EXT_KGRAD_CASE(NAME, J, 1) CNN_EXT_KGRAD_CASE(NAME, J, 2) CNN_EXT_KGRAD_CASE(NAME, J, 3)
#define CNN_EXT_KGRAD_CASES(NAME) \
    CNN_EXT_KGRAD_CASES_J(NAME, 1) CNN_EXT_KGRAD_CASES_J(NAME, 2) \
    CNN_EXT_KGRAD_CASES_J(NAME, 3) CNN_EXT_KGRAD_CASES_J(NAME, 4)
/* ROWS a literal: separate functions for the flat slabs (nrow = 1) and the output-rows layout (one
 * function with both loops compiles worse: the wide layout's small planes run slower). */
#define CNN_EXT_DEFINE_KGRAD_ENTRY(NAME, T, V)                                                        \
CNN_EXT_DEFINE_KGRAD_TILE(NAME##_flat, T, V, 0)                                                      \
CNN_EXT_DEFINE_KGRAD_TILE(NAME##_rows, T, V, 1)                                                      \
static void NAME(const T* dyw, Py_ssize_t dstride, const T* xr, Py_ssize_t a0, Py_ssize_t b0,        \
                 Py_ssize_t Bn, Py_ssize_t A, Py_ssize_t B, Py_ssize_t nvec, Py_ssize_t nrow,        \
                 Py_ssize_t drow, Py_ssize_t xrow, Py_ssize_t ns, Py_ssize_t sdy, Py_ssize_t sx,     \
                 T* vacc, int init, Py_ssize_t nj, Py_ssize_t nt) {                                  \
    (nrow > 1 ? NAME##_rows : NAME##_flat)(dyw, dstride, xr, a0, b0, Bn, A, B, nvec, nrow, drow,     \
                                           xrow, ns, sdy, sx, vacc, init, nj, nt);                   \
}
CNN_EXT_DEFINE_KGRAD_ENTRY(cnn_ext_kgrad_tile_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_KGRAD_ENTRY(cnn_ext_kgrad_tile_d, double, cnn_ext_vd)

/* out[jj*ostride + r] = the L lanes of vacc[(r*nj + jj)*L:..] summed pairwise (lane l += lane l + h for
 * h = L/2, L/4, .., 1), r < nrow, jj < nj; L is a compile-time constant, so the tree unrolls. */
#define CNN_EXT_DEFINE_LANE_SUMS(NAME, T, V)                                                          \
static void NAME(const T* vacc, T* out, Py_ssize_t nrow, Py_ssize_t nj, Py_ssize_t ostride) {        \
    enum { L = (int)(sizeof(V) / sizeof(T)) };                                                       \
    Py_ssize_t r, jj; int l, h;                                                                      \
    for (r = 0; r < nrow; r++)                                                                       \
        for (jj = 0; jj < nj; jj++) {                                                                \
            T a[L];                                                                                  \
            for (l = 0; l < L; l++)                                                                  \
                a[l] = vacc[(r * nj + jj) * L + l];                                                  \
            for (h = L / 2; h > 0; h /= 2)                                                           \
                for (l = 0; l < h; l++)                                                              \
                    a[l] = a[l] + a[l + h];                                                          \
            out[jj * ostride + r] = a[0];                                                            \
        }                                                                                            \
}
CNN_EXT_DEFINE_LANE_SUMS(cnn_ext_lane_sums_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_LANE_SUMS(cnn_ext_lane_sums_d, double, cnn_ext_vd)

#endif  /* CNN_EXT_KGRAD_TILE_H */
