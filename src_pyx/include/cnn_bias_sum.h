/* Σ of a contiguous plane into 8 vector accumulators (64 float32 / 32 float64 lanes with AVX2, twice that
 * with AVX-512): eight independent add chains keep both vector adders busy (one chain would wait on the add
 * latency). Lane l takes the elements t = l mod (8 * lanes) of each plane, in plane order, whatever the
 * thread count. */
#ifndef CNN_EXT_BIAS_SUM_H
#define CNN_EXT_BIAS_SUM_H

#include "cnn_simd.h"

#define CNN_EXT_DEFINE_PLANE_SUM(NAME, T, V)                                                          \
static void NAME(const T* x, Py_ssize_t n, T* acc) {                                                 \
    const Py_ssize_t L = (Py_ssize_t)(sizeof(V) / sizeof(T)), B = 8 * L;                              \
    V a0 = *(V*)(acc), a1 = *(V*)(acc + L), a2 = *(V*)(acc + 2 * L), a3 = *(V*)(acc + 3 * L);        \
    V a4 = *(V*)(acc + 4 * L), a5 = *(V*)(acc + 5 * L), a6 = *(V*)(acc + 6 * L), a7 = *(V*)(acc + 7 * L); \
    Py_ssize_t t, nb = n - n % B;                                                                      \
    for (t = 0; t < nb; t += B) {                                                                     \
        a0 += *(const V*)(x + t);         a1 += *(const V*)(x + t + L);                               \
        a2 += *(const V*)(x + t + 2 * L); a3 += *(const V*)(x + t + 3 * L);                           \
        a4 += *(const V*)(x + t + 4 * L); a5 += *(const V*)(x + t + 5 * L);                           \
        a6 += *(const V*)(x + t + 6 * L); a7 += *(const V*)(x + t + 7 * L);                           \
    }                                                                                                 \
    *(V*)(acc) = a0; *(V*)(acc + L) = a1; *(V*)(acc + 2 * L) = a2; *(V*)(acc + 3 * L) = a3;          \
    *(V*)(acc + 4 * L) = a4; *(V*)(acc + 5 * L) = a5; *(V*)(acc + 6 * L) = a6; *(V*)(acc + 7 * L) = a7; \
    for (t = nb; t < n; t++)                                                                          \
        acc[t - nb] += x[t];                                                                          \
}
CNN_EXT_DEFINE_PLANE_SUM(cnn_ext_plane_sum_f, float, cnn_ext_vf)
CNN_EXT_DEFINE_PLANE_SUM(cnn_ext_plane_sum_d, double, cnn_ext_vd)
/* >= 8 vectors of float32 in any build (8 x 8 with AVX2, 8 x 16 with AVX-512) */
#define CNN_EXT_SUM_LANES (CNN_EXT_VEC_BYTES >= 64 ? 128 : 64)

#endif  /* CNN_EXT_BIAS_SUM_H */
