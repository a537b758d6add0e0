/* SIMD vector types and helper macros shared by every kernel module (convolution tiles, pooling rows).
 *
 * The tiles keep their accumulators in arrays of GNU vectors (vector_size): gcc keeps those in registers once
 * the constant-trip loops are unrolled, where an array of scalars it has vectorised goes through the stack.
 * The vector width follows the build: 64 bytes in the -mavx512f twin modules (32 zmm registers), 32 in the
 * -mavx2 ones, 16 in the baseline ones. Compilers without GNU vectors (MSVC) get vectors of one lane: the same
 * code, scalar, still correct. A build may set CNN_EXT_VEC_BYTES itself (setup.py's CNN_EXT_AVX512_EMULATE:
 * the 64-byte code paths in AVX2 instructions, so CPUs without AVX-512 can test them).
 * Needs Py_ssize_t (Python.h, which Cython includes first). */
#ifndef CNN_EXT_SIMD_H
#define CNN_EXT_SIMD_H

#if !defined(CNN_EXT_VEC_BYTES)
#if defined(__AVX512F__)
#define CNN_EXT_VEC_BYTES 64
#elif defined(__AVX__)
#define CNN_EXT_VEC_BYTES 32
#else
#define CNN_EXT_VEC_BYTES 16
#endif
#endif
/* 64-byte vectors come with 32 vector registers (AVX-512): the tiles that can use them grow */
#define CNN_EXT_WIDE_REGS (CNN_EXT_VEC_BYTES >= 64)
#if defined(__GNUC__) || defined(__clang__)
typedef float cnn_ext_vf __attribute__((vector_size(CNN_EXT_VEC_BYTES), aligned(4), may_alias));
typedef double cnn_ext_vd __attribute__((vector_size(CNN_EXT_VEC_BYTES), aligned(8), may_alias));
#define CNN_EXT_SPLAT(V, s) ((V){0} + (s))
#define CNN_EXT_TILE_INLINE static inline __attribute__((always_inline))
#else
typedef float cnn_ext_vf;
typedef double cnn_ext_vd;
#define CNN_EXT_SPLAT(V, s) ((V)(s))
#define CNN_EXT_TILE_INLINE static __forceinline
#endif
/* A loaded vector meant to serve several FMAs: left alone, gcc may fold its load into each of them
 * (vfmadd231pd mem, w, acc: one load per FMA, load-port bound). An empty asm that takes the vector in a
 * register and gives it back makes it load once (GNU C on x86; other compilers: a no-op). */
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#if defined(__AVX512F__)  /* "v": any of the 32 zmm registers ("x" would allow only the first 16) */
#define CNN_EXT_IN_REGISTER(v) __asm__("" : "+v"(v))
#elif CNN_EXT_VEC_BYTES > 32  /* emulated 64-byte vectors fit no AVX2 register */
#define CNN_EXT_IN_REGISTER(v) ((void)0)
#else
#define CNN_EXT_IN_REGISTER(v) __asm__("" : "+x"(v))
#endif
#else
#define CNN_EXT_IN_REGISTER(v) ((void)0)
#endif
/* Short loops of a run-time trip count (the band's kernel columns, the dK tile's vectors of a row): unrolled
 * by gcc (other compilers: as written). Not the forward tiles' kernel columns: unrolled, they ran 2x slower
 * (their 12 accumulators no longer stayed in registers). */
#if defined(__GNUC__) && !defined(__clang__)
#define CNN_EXT_UNROLL _Pragma("GCC unroll 8")
#else
#define CNN_EXT_UNROLL
#endif
/* Constant-trip loops over a tile's accumulators, peeled whole so the accumulators stay in registers: gcc
 * peels at most 16 iterations by itself, and the AVX-512 one-channel wide tile has 24 (left as a loop, its
 * accumulators lived on the stack and it ran 3x slower than the AVX2 tile). */
#if defined(__GNUC__) && !defined(__clang__)
#define CNN_EXT_PEEL _Pragma("GCC unroll 32")
#else
#define CNN_EXT_PEEL
#endif
#define CNN_EXT_LANES_F ((Py_ssize_t)(sizeof(cnn_ext_vf) / sizeof(float)))
#define CNN_EXT_LANES_D ((Py_ssize_t)(sizeof(cnn_ext_vd) / sizeof(double)))

/* Fixed-width vectors for the pooling rows, which need __builtin_shufflevector to deinterleave windows:
 * 16 bytes in every build, 32 bytes too in the AVX2 and AVX-512 ones. CNN_EXT_SHUFFLE is left undefined without them. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define CNN_EXT_SHUFFLE 1
#endif
#endif
#ifdef CNN_EXT_SHUFFLE
typedef float cnn_ext_vf4 __attribute__((vector_size(16), aligned(4), may_alias));
typedef double cnn_ext_vd2 __attribute__((vector_size(16), aligned(8), may_alias));
typedef int cnn_ext_mi4 __attribute__((vector_size(16), aligned(4), may_alias));
#if CNN_EXT_VEC_BYTES >= 32
typedef float cnn_ext_vf8 __attribute__((vector_size(32), aligned(4), may_alias));
typedef double cnn_ext_vd4 __attribute__((vector_size(32), aligned(8), may_alias));
typedef int cnn_ext_mi8 __attribute__((vector_size(32), aligned(4), may_alias));
#endif
#endif

#endif  /* CNN_EXT_SIMD_H */
