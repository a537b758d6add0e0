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

#endif  /* CNN_EXT_SELECT_H */
