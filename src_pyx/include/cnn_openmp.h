/* Whether this module was compiled with OpenMP, and omp_get_max_threads() in both cases (1 without OpenMP), so
 * the Cython code needs no conditional compilation of its own. */
#ifndef CNN_EXT_OPENMP_H
#define CNN_EXT_OPENMP_H

#ifdef _OPENMP
#include <omp.h>
#define CNN_EXT_OPENMP 1
#else
#define CNN_EXT_OPENMP 0
static int omp_get_max_threads(void) { return 1; }
#endif

#endif  /* CNN_EXT_OPENMP_H */
