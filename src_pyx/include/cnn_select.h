/* Branch-free select on the bits, for the element-wise kernels (which must stay bitwise NumPy's). */
#ifndef CNN_EXT_SELECT_H
#define CNN_EXT_SELECT_H

#include <stdint.h>
#include <string.h>
/* *out = c ? a : b on the bits, in a form gcc vectorises for both widths (as plain `c ? x : x * alpha` it
   sinks the product into the branch, cannot if-convert it under -ftrapping-math, and stays scalar) */
static inline void cnn_ext_select_f(float* out, int c, float a, float b) {
    int32_t ia, ib, m = c ? (int32_t)-1 : (int32_t)0;
    memcpy(&ia, &a, 4); memcpy(&ib, &b, 4); ia = (ia & m) | (ib & ~m); memcpy(out, &ia, 4);
}
static inline void cnn_ext_select_d(double* out, int c, double a, double b) {
    int64_t ia, ib, m = c ? (int64_t)-1 : (int64_t)0;
    memcpy(&ia, &a, 8); memcpy(&ib, &b, 8); ia = (ia & m) | (ib & ~m); memcpy(out, &ia, 8);
}

/* 1 where z > 0, else 0 (NaN included), from the compare's bits: dy * mask is the ReLU gradient as a product
   (dy * 0 is -0.0 for dy < 0, NaN for inf), and gcc vectorises it (a multiply by `z > 0 ? 1 : 0` becomes a
   branch, which a random mask mispredicts half the time) */
static inline float cnn_ext_relu_mask_f(float z) {
    uint32_t b = (uint32_t)-(int32_t)(z > 0.0f) & UINT32_C(0x3f800000);
    float m; memcpy(&m, &b, 4); return m;
}
static inline double cnn_ext_relu_mask_d(double z) {
    uint64_t b = (uint64_t)-(int64_t)(z > 0.0) & UINT64_C(0x3ff0000000000000);
    double m; memcpy(&m, &b, 8); return m;
}

#endif  /* CNN_EXT_SELECT_H */
