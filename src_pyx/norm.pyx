# cython: language_level=3
"""Batch normalisation over the channels of (N, C, L) arrays: forward with batch or given statistics, backward.

cnn_ext/layers/norm.py checks the arguments, views BatchNorm2D's (N, C, H, W) and BatchNorm1D's (N, C) or
(N, C, L) input as (N, C, L) and allocates every output; each def here takes typed memoryviews, releases the GIL
and never raises. Work is split over channels (src_pyx/_threads.pxd): one thread computes every sum of a channel,
as interleaved partial sums added in a fixed order, so results do not depend on the thread count. Sums are
accumulated in double for both dtypes (float32 batch statistics over N*H*W values would otherwise lose digits);
the mean and the variance take two passes (the sum of squared deviations, not E[x²] - E[x]², which cancels
catastrophically). A ReLU right after the layer can be applied in the forward's last pass and differentiated in
the backward's (relu, z): its output is then the only array written, and its gradient never is.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from _threads cimport _nparts, _part, _team


cdef extern from "cnn_prefetch.h":
    void _prefetch "cnn_ext_prefetch"(const void* p, Py_ssize_t nbytes, int write) noexcept nogil

cdef extern from "cnn_select.h":
    float cnn_ext_relu_mask_f(float z) noexcept nogil
    double cnn_ext_relu_mask_d(double z) noexcept nogil


cdef inline floating _mask(floating z) noexcept nogil:
    """1 where z > 0, else 0: dy * _mask(z) is elementwise.pyx's ReLU gradient (a product, rounded as there)."""
    if floating is float:
        return cnn_ext_relu_mask_f(z)
    else:
        return cnn_ext_relu_mask_d(z)


cdef enum:
    ACC = 8  # independent partial sums per channel and sum: additions overlap instead of each waiting on the one
             # before (the backward keeps two sums, so twice the chains)
    ACC1 = 16  # the same for the forward's one sum at a time: one 512-bit vector of 8 would be a single chain
    RUN = 512  # a fused ReLU's gradient is made RUN elements at a time on the stack (a multiple of ACC: the sums
               # then take the elements in the same order as without it)
    AHEAD = 2  # the first pass over a channel prefetches the run of the sample this many samples ahead


cdef double _sum(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, double m,
                 bint squares) noexcept nogil:
    """Σ (x - m) over one channel, or Σ (x - m)² (squares), as ACC1 interleaved partial sums in a fixed order."""
    cdef double acc[ACC1]
    cdef double d
    cdef const floating* p
    cdef Py_ssize_t n, l, j
    for j in range(ACC1):
        acc[j] = 0.0
    for n in range(N):
        p = x + n * C * L
        if not squares and n + AHEAD < N:  # the second pass finds the channel in cache
            _prefetch(p + AHEAD * C * L, L * sizeof(floating), 0)
        l = 0
        while l + ACC1 <= L:
            for j in range(ACC1):
                d = p[l + j] - m
                acc[j] += d * d if squares else d
            l += ACC1
        for j in range(L - l):
            d = p[l + j] - m
            acc[j] += d * d if squares else d
    for j in range(1, ACC1):
        acc[0] += acc[j]
    return acc[0]


cdef void _stats(const floating* x, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, double eps, double* mean,
                 double* var, double* invstd) noexcept nogil:
    """mean = Σ x / M, var = Σ (x - mean)² / M (biased), invstd = 1 / sqrt(var + eps) over one channel, M = N*L."""
    cdef double M = <double>(N * L)
    cdef double m = _sum(x, N, C, L, 0.0, False) / M
    cdef double v = _sum(x, N, C, L, m, True) / M
    mean[0] = m
    var[0] = v
    invstd[0] = 1.0 / sqrt(v + eps)


cdef void _affine(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, double scale,
                  double shift, bint relu) noexcept nogil:
    """y = x * scale + shift over one channel (scale = gamma * invstd, shift = beta - mean * scale), then
    max(y, 0) with relu (elementwise.pyx's ReLU expression, so bitwise the two layers one after the other)."""
    cdef Py_ssize_t n, l
    cdef floating a = <floating>scale, b = <floating>shift, v, zero = 0
    for n in range(N):
        if n + AHEAD < N:  # y's lines are not in cache yet: each run would start with a miss
            _prefetch(y + (n + AHEAD) * C * L, L * sizeof(floating), 1)
        if relu:
            for l in range(L):
                v = x[n * C * L + l] * a + b
                y[n * C * L + l] = zero if v <= zero else v
        else:
            for l in range(L):
                y[n * C * L + l] = x[n * C * L + l] * a + b


cdef void _forward_channels(const floating* x, const floating* gamma, const floating* beta, floating* y,
                            double* mean, double* var, double* invstd, Py_ssize_t N, Py_ssize_t C, Py_ssize_t L,
                            double eps, bint batch_stats, bint relu, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    """Channels [c0, c1): statistics (batch_stats) or the given mean / invstd, then the affine map (and relu)."""
    cdef Py_ssize_t c
    cdef double scale
    for c in range(c0, c1):
        if batch_stats:
            _stats(x + c * L, N, C, L, eps, &mean[c], &var[c], &invstd[c])
        scale = invstd[c] * gamma[c]
        _affine(x + c * L, y + c * L, N, C, L, scale, beta[c] - mean[c] * scale, relu)


cdef void _backward_channel(const floating* dy, const floating* z, const floating* x, floating* dx, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t L, double mean, double invstd, double gamma, bint batch_stats,
                            double* dgamma, double* dbeta) noexcept nogil:
    """dbeta = Σ g, dgamma = Σ g·x̂ with x̂ = (x - mean)·invstd; dx = γ·invstd·(g - dbeta/M - x̂·dgamma/M) with
    batch statistics (they depend on x), dx = γ·invstd·g with fixed ones. g is dy, or with z (the output of a ReLU
    fused into the forward pass) the ReLU's gradient dy·_mask(z) (z > 0 exactly where the ReLU's input was)."""
    cdef double ady[ACC]
    cdef double adyx[ACC]
    cdef floating gbuf[RUN]
    cdef double sdy, sdyx, M = <double>(N * L), b, c
    cdef double k = gamma * invstd
    cdef floating fk, fm, fs, fb
    cdef const floating* g
    cdef const floating* xs
    cdef Py_ssize_t n, l, l0, cnt, j, o
    for j in range(ACC):
        ady[j] = 0.0
        adyx[j] = 0.0
    for n in range(N):
        o = n * C * L
        if n + AHEAD < N:
            _prefetch(dy + o + AHEAD * C * L, L * sizeof(floating), 0)
            _prefetch(x + o + AHEAD * C * L, L * sizeof(floating), 0)
            if z != NULL:
                _prefetch(z + o + AHEAD * C * L, L * sizeof(floating), 0)
        l0 = 0
        while l0 < L:  # the whole run at once, or RUN elements of the ReLU's gradient at a time
            if z == NULL:
                g = dy + o
                cnt = L
            else:
                cnt = min(L - l0, <Py_ssize_t>RUN)
                for l in range(cnt):
                    gbuf[l] = dy[o + l0 + l] * _mask(z[o + l0 + l])
                g = gbuf
            xs = x + o + l0
            l = 0
            while l + ACC <= cnt:  # the partial sums of _sum, for the two sums at once
                for j in range(ACC):
                    ady[j] += g[l + j]
                    adyx[j] += g[l + j] * (xs[l + j] - mean)
                l += ACC
            for j in range(cnt - l):
                ady[j] += g[l + j]
                adyx[j] += g[l + j] * (xs[l + j] - mean)
            l0 += cnt
    for j in range(1, ACC):
        ady[0] += ady[j]
        adyx[0] += adyx[j]
    sdy = ady[0]
    sdyx = adyx[0]
    sdyx *= invstd
    dbeta[0] = sdy
    dgamma[0] = sdyx
    b = sdy / M if batch_stats else 0.0
    c = sdyx / M if batch_stats else 0.0
    # with batch statistics dx = k·g + (k·c·invstd)·(mean - x) - k·b, in the arrays' precision: in float32 twice
    # the lanes of double, and the sums above (in double) carry the rounding that matters
    fk = <floating>k
    fm = <floating>mean
    fs = <floating>(-k * c * invstd)
    fb = <floating>(-k * b)
    for n in range(N):  # each case its own loop: a test inside would stop the vectorisation
        o = n * C * L
        if n + AHEAD < N:
            _prefetch(dx + o + AHEAD * C * L, L * sizeof(floating), 1)
        if batch_stats and z == NULL:
            for l in range(o, o + L):
                dx[l] = fk * dy[l] + (fs * (x[l] - fm) + fb)
        elif batch_stats:
            for l in range(o, o + L):
                dx[l] = fk * (dy[l] * _mask(z[l])) + (fs * (x[l] - fm) + fb)
        elif z == NULL:
            for l in range(o, o + L):
                dx[l] = <floating>(k * dy[l])
        else:
            for l in range(o, o + L):
                dx[l] = <floating>(k * (dy[l] * _mask(z[l])))


cdef void _backward_channels(const floating* dy, const floating* z, const floating* x, const floating* gamma,
                             floating* dx, const double* mean, const double* invstd, double* dgamma, double* dbeta,
                             Py_ssize_t N, Py_ssize_t C, Py_ssize_t L, bint batch_stats, Py_ssize_t c0,
                             Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t c
    cdef const floating* zc = NULL
    for c in range(c0, c1):
        if z != NULL:
            zc = z + c * L
        _backward_channel(dy + c * L, zc, x + c * L, dx + c * L, N, C, L, mean[c], invstd[c], gamma[c],
                          batch_stats, &dgamma[c], &dbeta[c])


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext.layers.norm only); float arrays of one call share a dtype
# ---------------------------------------------------------------------------------------------------

def batchnorm_forward(const floating[:, :, ::1] x,   # IN  (N, C, L)
                      const floating[::1] gamma,     # IN  (C,)
                      const floating[::1] beta,      # IN  (C,)
                      floating[:, :, ::1] y,         # OUT (N, C, L)
                      double[::1] mean,              # OUT (C,) batch mean, or IN when not batch_stats
                      double[::1] var,               # OUT (C,) biased batch variance (unused when not batch_stats)
                      double[::1] invstd,            # OUT (C,) 1 / sqrt(var + eps), or IN when not batch_stats
                      double eps, bint batch_stats, bint relu, int num_threads):
    """y = (x - mean) * invstd * gamma + beta per channel, then max(y, 0) with relu; batch_stats: mean, var,
    invstd from x (N*L >= 1)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], t, nparts
    if N * C * L == 0:
        return
    nparts = _nparts(C, num_threads)
    with nogil:
        if nparts == 1:
            _forward_channels(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &var[0], &invstd[0], N, C,
                              L, eps, batch_stats, relu, 0, C)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_channels(&x[0, 0, 0], &gamma[0], &beta[0], &y[0, 0, 0], &mean[0], &var[0], &invstd[0],
                                  N, C, L, eps, batch_stats, relu, _part(C, t, nparts), _part(C, t + 1, nparts))


def batchnorm_backward(const floating[:, :, ::1] dy,   # IN  (N, C, L)
                       const floating[:, :, ::1] x,    # IN  (N, C, L) forward input
                       const floating[::1] gamma,      # IN  (C,) (ones when the layer has no affine parameters)
                       const double[::1] mean,         # IN  (C,) the statistics the forward pass used
                       const double[::1] invstd,       # IN  (C,)
                       floating[:, :, ::1] dx,         # OUT (N, C, L)
                       double[::1] dgamma,             # OUT (C,) Σ dy·x̂
                       double[::1] dbeta,              # OUT (C,) Σ dy
                       bint batch_stats, int num_threads,
                       const floating[:, :, ::1] z=None):  # IN (N, C, L) the output of a fused ReLU, or None
    """dx, dgamma, dbeta of batch normalisation; batch_stats: the forward used the batch's own statistics; z:
    dy is the gradient of a ReLU's output z fused into the forward pass (differentiated here first)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], L = x.shape[2], t, nparts
    cdef const floating* zp = NULL
    if C == 0:
        return
    if N * L == 0:
        dgamma[:] = 0.0
        dbeta[:] = 0.0
        return
    if z is not None:
        zp = &z[0, 0, 0]
    nparts = _nparts(C, num_threads)
    with nogil:
        if nparts == 1:
            _backward_channels(&dy[0, 0, 0], zp, &x[0, 0, 0], &gamma[0], &dx[0, 0, 0], &mean[0], &invstd[0],
                               &dgamma[0], &dbeta[0], N, C, L, batch_stats, 0, C)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _backward_channels(&dy[0, 0, 0], zp, &x[0, 0, 0], &gamma[0], &dx[0, 0, 0], &mean[0], &invstd[0],
                                   &dgamma[0], &dbeta[0], N, C, L, batch_stats, _part(C, t, nparts),
                                   _part(C, t + 1, nparts))
