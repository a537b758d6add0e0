/* The reduction shared by the forward tiles (row, wide, shifted) and the switch that gives each tile copies
 * with its channel count a literal (so the constant-trip loops unroll and the accumulators stay in registers). */
#ifndef CNN_EXT_TILE_REDUCE_H
#define CNN_EXT_TILE_REDUCE_H

#include "cnn_simd.h"

/* The reduction every forward tile runs (row, wide, one-channel, shifted): for i in [i0, i1),
 * kh in [kh0, kh1), kw < KW, in that order,
 *   acc[jj][v] += k[kb + i*KHKW + kh*KW + kw + jj*CKK] * x[xb + i*XS + kh*HS + kw*WS + v*L]
 * for jj < NJ, v < NV (XV >= NV vectors of x are loaded per step, then NJ weights broadcast). */
#define CNN_EXT_TILE_REDUCE(T, V, acc, XV, NJ, NV, xb, XS, HS, WS, kb, KHKW, CKK, KW, i0, i1, kh0, kh1) \
    do {                                                                                             \
        const Py_ssize_t L_ = (Py_ssize_t)(sizeof(V) / sizeof(T));                                   \
        V xv_[XV];                                                                                   \
        Py_ssize_t i_, kh_, kw_, jj_, v_;                                                            \
        for (i_ = (i0); i_ < (i1); i_++) {                                                           \
            const T* xi_ = (xb) + i_ * (XS);                                                         \
            const T* ki_ = (kb) + i_ * (KHKW);                                                       \
            for (kh_ = (kh0); kh_ < (kh1); kh_++) {                                                  \
                const T* kr_ = ki_ + kh_ * (KW);                                                     \
                for (kw_ = 0; kw_ < (KW); kw_++) {                                                   \
                    const T* xr_ = xi_ + kh_ * (HS) + kw_ * (WS);                                    \
                    CNN_EXT_PEEL                                                                     \
                    for (v_ = 0; v_ < (NV); v_++)                                                    \
                        xv_[v_] = *(const V*)(xr_ + v_ * L_);                                        \
                    CNN_EXT_PEEL                                                                     \
                    for (jj_ = 0; jj_ < (NJ); jj_++) {                                               \
                        const T w_ = kr_[jj_ * (CKK) + kw_];                                         \
                        CNN_EXT_PEEL                                                                 \
                        for (v_ = 0; v_ < (NV); v_++)                                                \
                            acc[jj_][v_] += w_ * xv_[v_];                                            \
                    }                                                                                \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
    } while (0)

/* The cases nj = 1 .. JB - 1 of a tile's switch over its channel count (JB = 3, 4 or 6 defined): each calls
 * CALL(NAME, nj), a copy of the tile with nj a literal. */
#define CNN_EXT_NJ_CASE(CALL, NAME, NJ) case NJ: CALL(NAME, NJ); break;
#define CNN_EXT_NJ_CASES_3(CALL, NAME) CNN_EXT_NJ_CASE(CALL, NAME, 1) CNN_EXT_NJ_CASE(CALL, NAME, 2)
#define CNN_EXT_NJ_CASES_4(CALL, NAME) CNN_EXT_NJ_CASES_3(CALL, NAME) CNN_EXT_NJ_CASE(CALL, NAME, 3)
#define CNN_EXT_NJ_CASES_6(CALL, NAME) \
    CNN_EXT_NJ_CASES_4(CALL, NAME) CNN_EXT_NJ_CASE(CALL, NAME, 4) CNN_EXT_NJ_CASE(CALL, NAME, 5)
#define CNN_EXT_NJ_CASES_(JB, CALL, NAME) CNN_EXT_NJ_CASES_##JB(CALL, NAME)
#define CNN_EXT_NJ_CASES(JB, CALL, NAME) CNN_EXT_NJ_CASES_(JB, CALL, NAME)

#endif  /* CNN_EXT_TILE_REDUCE_H */
