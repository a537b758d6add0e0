/* Row-band tile of the direct forward for one output channel (stride 1, padded slab): the input gradient of a
 * one-input-channel layer. A tile holds CNN_EXT_BR = 4 output rows x nv <= 3 vectors of columns: input row r
 * of the band feeds output row rr with kernel row r - rr, so each row's vectors are loaded once per kernel
 * column and used by up to 4 output rows (one output channel gives the wide tile one weight per load). */
#ifndef CNN_EXT_BAND_TILE_H
#define CNN_EXT_BAND_TILE_H

#include "cnn_simd.h"

#define CNN_EXT_BR 4   /* output rows per band tile (the cases below are written for 4) */
#define CNN_EXT_BNV 3  /* vectors of columns per band tile, at most */
/* Band rows LO..HI take input row R at kernel column kw, its NV vectors loaded from XR:
 * acc[rr] += k[R - rr, kw] * x[R, kw + ...]. */
#define CNN_EXT_BAND_STEP(T, V, XR, R, LO, HI)                                                      \
    for (v = 0; v < NV; v++) {                                                                      \
        xv[v] = *(const V*)((XR) + v * L);                                                          \
        CNN_EXT_IN_REGISTER(xv[v]);                                                                 \
    }                                                                                               \
    for (rr = (LO); rr <= (HI); rr++) {                                                             \
        const T w = ki[((R) - rr) * KW + kw];                                                       \
        for (v = 0; v < NV; v++)                                                                    \
            acc[rr][v] += w * xv[v];                                                                \
    }
/* Rows LO..HI of the band (literals) take input row r, all its kernel columns. */
#define CNN_EXT_BAND_ROWS(T, V, LO, HI)                                                             \
    CNN_EXT_UNROLL                                                                                  \
    for (kw = 0; kw < KW; kw++) {                                                                   \
        CNN_EXT_BAND_STEP(T, V, xr + kw, r, LO, HI)                                                 \
    }
#define CNN_EXT_BAND_CASE(T, V, LO, HI) case (LO) * 4 + (HI): CNN_EXT_BAND_ROWS(T, V, LO, HI) break;
/* The same for kernels of KHL rows known at compile time (a literal in each copy of NAME##_kh): band row
 * R (a literal too) at kernel column kw. Rows lo..hi are then constants, so the kernel columns can be the
 * outer loop with the accumulators still in registers, and the FMAs of the band's rows interleave instead
 * of running one row's dependent chains after another (see NAME below). Rows past the band's last
 * (R >= KHL + BR - 1) compile to nothing; rows in the padding (outside [r0, r1)) are skipped unless FULL. */
#define CNN_EXT_BAND_KSTEP(T, V, R)                                                                 \
    if ((R) < KHL + CNN_EXT_BR - 1 && (FULL || ((R) >= r0 && (R) < r1))) {                          \
        const Py_ssize_t lo = (R) - KHL + 1 > 0 ? (R) - KHL + 1 : 0;                                \
        const Py_ssize_t hi = (R) < CNN_EXT_BR - 1 ? (R) : CNN_EXT_BR - 1;                          \
        CNN_EXT_BAND_STEP(T, V, xi + (R) * Wp + kw, R, lo, hi)                                      \
    }
/* one (kernel rows, vectors) copy of the tile, for a full band or not */
#define CNN_EXT_BAND_KCALL(NAME, KHL, NVL)                                                             \
    if (full) NAME##_kh(xp, k, bias, y, ldy, plane, Wp, C_in, KHL, KW, r0, r1, NVL, 1);            \
    else NAME##_kh(xp, k, bias, y, ldy, plane, Wp, C_in, KHL, KW, r0, r1, NVL, 0);                  \
    return;
#define CNN_EXT_BAND_KCASE(NAME, KHL)                                                                  \
    case KHL:                                                                                        \
        switch (nv) {                                                                                \
        case 1: CNN_EXT_BAND_KCALL(NAME, KHL, 1)                                                     \
        case 2: CNN_EXT_BAND_KCALL(NAME, KHL, 2)                                                     \
        default: CNN_EXT_BAND_KCALL(NAME, KHL, 3)                                                    \
        }
#define CNN_EXT_DEFINE_BAND_TILE(NAME, T, V)                                                          \
CNN_EXT_TILE_INLINE void NAME##_fixed(const T* xp, const T* k, T bias, T* y, Py_ssize_t ldy,        \
                                      Py_ssize_t plane, Py_ssize_t Wp, Py_ssize_t C_in,             \
                                      Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0, Py_ssize_t r1,   \
                                      const Py_ssize_t NV) {                                        \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \
    V acc[CNN_EXT_BR][CNN_EXT_BNV], xv[CNN_EXT_BNV];                                                 \
    Py_ssize_t i, r, kw, rr, v;                                                                      \
    for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \
        for (v = 0; v < NV; v++)                                                                     \
            acc[rr][v] = CNN_EXT_SPLAT(V, bias);                                                     \
    for (i = 0; i < C_in; i++) {                                                                     \
        const T* ki = k + i * KH * KW;                                                               \
        for (r = r0; r < r1; r++) {                                                                  \
            const T* xr = xp + i * plane + r * Wp;                                                   \
            const Py_ssize_t lo = r - KH + 1 > 0 ? r - KH + 1 : 0;                                   \
            const Py_ssize_t hi = r < CNN_EXT_BR - 1 ? r : CNN_EXT_BR - 1;                           \
            switch (lo * 4 + hi) {                                                                   \
            CNN_EXT_BAND_CASE(T, V, 0, 0) CNN_EXT_BAND_CASE(T, V, 0, 1)                              \
            CNN_EXT_BAND_CASE(T, V, 0, 2) CNN_EXT_BAND_CASE(T, V, 0, 3)                              \
            CNN_EXT_BAND_CASE(T, V, 1, 1) CNN_EXT_BAND_CASE(T, V, 1, 2)                              \
            CNN_EXT_BAND_CASE(T, V, 1, 3) CNN_EXT_BAND_CASE(T, V, 2, 2)                              \
            CNN_EXT_BAND_CASE(T, V, 2, 3) CNN_EXT_BAND_CASE(T, V, 3, 3)                              \
            /* every 0 <= lo <= hi <= 3 as literals, so acc stays in registers */                    \
            }                                                                                        \
        }                                                                                            \
    }                                                                                                \
    for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \
        for (v = 0; v < NV; v++)                                                                     \
            *(V*)(y + rr * ldy + v * L) = acc[rr][v];                                                \
}                                                                                                    \
CNN_EXT_TILE_INLINE void NAME##_kh(const T* xp, const T* k, T bias, T* y, Py_ssize_t ldy,           \
                                   Py_ssize_t plane, Py_ssize_t Wp, Py_ssize_t C_in,                \
                                   const Py_ssize_t KHL, Py_ssize_t KW, Py_ssize_t r0,              \
                                   Py_ssize_t r1, const Py_ssize_t NV, const int FULL) {            \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T));                                        \
    V acc[CNN_EXT_BR][CNN_EXT_BNV], xv[CNN_EXT_BNV];                                                 \
    Py_ssize_t i, kw, rr, v;                                                                         \
    for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \
        for (v = 0; v < NV; v++)                                                                     \
            acc[rr][v] = CNN_EXT_SPLAT(V, bias);                                                     \
    for (i = 0; i < C_in; i++) {                                                                     \
        const T* ki = k + i * KHL * KW;                                                              \
        const T* xi = xp + i * plane;                                                                \
        for (kw = 0; kw < KW; kw++) {                                                                \
            CNN_EXT_BAND_KSTEP(T, V, 0) CNN_EXT_BAND_KSTEP(T, V, 1) CNN_EXT_BAND_KSTEP(T, V, 2)      \
            CNN_EXT_BAND_KSTEP(T, V, 3) CNN_EXT_BAND_KSTEP(T, V, 4) CNN_EXT_BAND_KSTEP(T, V, 5)      \
            CNN_EXT_BAND_KSTEP(T, V, 6) CNN_EXT_BAND_KSTEP(T, V, 7)                                  \
        }                                                                                            \
    }                                                                                                \
    for (rr = 0; rr < CNN_EXT_BR; rr++)                                                              \
        for (v = 0; v < NV; v++)                                                                     \
            *(V*)(y + rr * ldy + v * L) = acc[rr][v];                                                \
}                                                                                                    \
/* Kernels of 4 and 5 rows take their own copies (sums in the order i, kw, kh; band rows R < 5 + 4 - 1     \
 * above), others the generic tile (i, kh, kw): with more rows than that, the band holds more rows than  \
 * there are registers for a kernel column's weights. Either way the order of each output's sums depends \
 * on the shape only (not on the tile or the thread count). */                                         \
static void NAME(const T* xp, const T* k, T bias, T* y, Py_ssize_t ldy, Py_ssize_t plane,           \
                 Py_ssize_t Wp, Py_ssize_t C_in, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t r0,        \
                 Py_ssize_t r1, Py_ssize_t nv) {                                                     \
    const int full = r0 == 0 && r1 == KH + CNN_EXT_BR - 1;                                           \
    switch (KH) {                                                                                    \
    CNN_EXT_BAND_KCASE(NAME, 4) CNN_EXT_BAND_KCASE(NAME, 5)                                          \
    default: break;                                                                                  \
    }                                                                                                \
    switch (nv) {                                                                                    \
    case 1: NAME##_fixed(xp, k, bias, y, ldy, plane, Wp, C_in, KH, KW, r0, r1, 1); break;            \
    case 2: NAME##_fixed(xp, k, bias, y, ldy, plane, Wp, C_in, KH, KW, r0, r1, 2); break;            \
    default: NAME##_fixed(xp, k, bias, y, ldy, plane, Wp, C_in, KH, KW, r0, r1, 3); break;           \
    }                                                                                                \
}
CNN_EXT_DEFINE_BAND_TILE(cnn_ext_band_tile_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_BAND_TILE(cnn_ext_band_tile_d, double, cnn_ext_vd)

#endif  /* CNN_EXT_BAND_TILE_H */
