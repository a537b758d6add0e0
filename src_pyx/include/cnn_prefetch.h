/* Software prefetch of a range of memory into the cache. The batch-norm sums walk one channel as N short runs
 * a whole sample apart: the hardware prefetchers follow runs, not the jumps between them, so every run started
 * with a miss. Needs Py_ssize_t (Python.h, which Cython includes first). */
#ifndef CNN_EXT_PREFETCH_H
#define CNN_EXT_PREFETCH_H

#if defined(__GNUC__) || defined(__clang__)
#define CNN_EXT_PREFETCH(p, w) __builtin_prefetch((const void*)(p), (w))
#elif defined(_M_X64) || defined(_M_IX86)
#include <xmmintrin.h>
#define CNN_EXT_PREFETCH(p, w) _mm_prefetch((const char*)(p), _MM_HINT_T0)
#else
#define CNN_EXT_PREFETCH(p, w) ((void)(p))
#endif

/* every 64-byte line of [p, p + bytes), to be read (write = 0) or written (write = 1) */
static inline void cnn_ext_prefetch(const void* p, Py_ssize_t bytes, int write) {
    const char* c = (const char*)p;
    Py_ssize_t i;
    if (write)
        for (i = 0; i < bytes; i += 64)
            CNN_EXT_PREFETCH(c + i, 1);
    else
        for (i = 0; i < bytes; i += 64)
            CNN_EXT_PREFETCH(c + i, 0);
}

#endif  /* CNN_EXT_PREFETCH_H */
