# cython: language_level=3
"""Convolution by im2col / col2im + BLAS: forward, kernel gradient and input gradient, any stride and padding.

cnn_ext/ops.py validates every argument and allocates outputs and scratch; each `def` takes typed memoryviews,
releases the GIL for the whole loop and never raises. Per sample, blocks of output pixels are unfolded into a
per-thread column slab and multiplied by one BLAS call (scipy.linalg.cython_blas, held to one thread by the
caller while OpenMP runs). Samples are split over threads (_threads.pxd); the kernel gradient sums fixed chunks
of samples in a fixed order, so no result depends on the thread count.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid

from _blas cimport _gemm_rm
from _geom cimport Geom, _geom
from _threads cimport _chunk_range, _nparts, _part, _team


# ---------------------------------------------------------------------------------------------------
# im2col / col2im for one block of output pixels of one sample
#
# A block is npix consecutive output pixels starting at pix0 (row-major over OH x OW), so the column
# buffer (C_in*KH*KW x npix) stays in L2 while BLAS packs it; the caller sizes the blocks.
# ---------------------------------------------------------------------------------------------------

cdef inline void _valid_cols(const Geom* g, Py_ssize_t kw, Py_ssize_t* qlo, Py_ssize_t* qhi) noexcept nogil:
    """[qlo, qhi): the output columns q whose input column q*SW + kw - PW lies in [0, W)."""
    cdef Py_ssize_t lo_num = g.PW - kw, hi_num = g.W - 1 + g.PW - kw
    qlo[0] = (lo_num + g.SW - 1) // g.SW if lo_num > 0 else 0
    qhi[0] = hi_num // g.SW + 1 if hi_num >= 0 else 0
    if qhi[0] > g.OW:
        qhi[0] = g.OW


cdef void _im2col(const floating* x, floating* cols, const Geom* g,
                  Py_ssize_t pix0, Py_ssize_t npix) noexcept nogil:
    """cols[(i, kh, kw), t] = x[i, p*SH + kh - PH, q*SW + kw - PW] for pixel pix0 + t = p*OW + q (0 outside)."""
    cdef Py_ssize_t i, kh, kw, p, q, q0, q1, lo, hi, qlo, qhi, t, r, base
    cdef const floating* xi
    cdef floating* row
    for i in range(g.C_in):
        xi = x + i * g.H * g.W
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = cols + ((i * g.KH + kh) * g.KW + kw) * npix
                _valid_cols(g, kw, &qlo, &qhi)
                t = 0
                p = pix0 // g.OW
                q0 = pix0 - p * g.OW
                while t < npix:
                    q1 = min(g.OW, q0 + npix - t)
                    r = p * g.SH + kh - g.PH
                    if r < 0 or r >= g.H:
                        lo = hi = q1
                    else:  # q0 <= lo <= hi <= q1 (a block can end before the row's valid columns start)
                        lo = min(max(q0, qlo), q1)
                        hi = max(lo, min(q1, qhi))
                    for q in range(q0, lo):
                        row[t + q - q0] = 0
                    base = r * g.W + kw - g.PW
                    if g.SW == 1:
                        for q in range(lo, hi):
                            row[t + q - q0] = xi[base + q]
                    else:
                        for q in range(lo, hi):
                            row[t + q - q0] = xi[base + q * g.SW]
                    for q in range(hi, q1):
                        row[t + q - q0] = 0
                    t += q1 - q0
                    p += 1
                    q0 = 0


cdef void _col2im(const floating* cols, floating* x, const Geom* g,
                  Py_ssize_t pix0, Py_ssize_t npix) noexcept nogil:
    """x[i, p*SH + kh - PH, q*SW + kw - PW] += cols[(i, kh, kw), t] for pixel pix0 + t = p*OW + q (inside only)."""
    cdef Py_ssize_t i, kh, kw, p, q, q0, q1, lo, hi, qlo, qhi, t, r, base
    cdef floating* xi
    cdef const floating* row
    for i in range(g.C_in):
        xi = x + i * g.H * g.W
        for kh in range(g.KH):
            for kw in range(g.KW):
                row = cols + ((i * g.KH + kh) * g.KW + kw) * npix
                _valid_cols(g, kw, &qlo, &qhi)
                t = 0
                p = pix0 // g.OW
                q0 = pix0 - p * g.OW
                while t < npix:
                    q1 = min(g.OW, q0 + npix - t)
                    r = p * g.SH + kh - g.PH
                    if 0 <= r < g.H:
                        lo = min(max(q0, qlo), q1)
                        hi = max(lo, min(q1, qhi))
                        base = r * g.W + kw - g.PW
                        if g.SW == 1:
                            for q in range(lo, hi):
                                xi[base + q] += row[t + q - q0]
                        else:
                            for q in range(lo, hi):
                                xi[base + q * g.SW] += row[t + q - q0]
                    t += q1 - q0
                    p += 1
                    q0 = 0


# ---------------------------------------------------------------------------------------------------
# GEMM kernels for one sample
# ---------------------------------------------------------------------------------------------------

cdef void _forward_gemm_one(const floating* x, const floating* k, const floating* b, floating* y,
                            floating* cols, const Geom* g, Py_ssize_t block) noexcept nogil:
    """y[:, P] = b + k[C_out, CKK] @ im2col(x)[CKK, P], one block of output pixels at a time"""
    cdef Py_ssize_t j, p, pix0, npix, P = g.OH * g.OW
    cdef int CKK = <int>(g.C_in * g.KH * g.KW)
    for j in range(g.C_out):
        for p in range(P):
            y[j * P + p] = b[j]
    pix0 = 0
    while pix0 < P:
        npix = min(block, P - pix0)
        _im2col(x, cols, g, pix0, npix)
        _gemm_rm(False, False, <int>g.C_out, <int>npix, CKK, <floating>1, k, CKK, cols, <int>npix,
                 <floating>1, y + pix0, <int>P)
        pix0 += npix


cdef void _kgrad_gemm_one(const floating* x, const floating* dy, floating* dk, floating* cols,
                          const Geom* g, Py_ssize_t block) noexcept nogil:
    """dk[C_out, CKK] += dy[C_out, P] @ im2col(x)[CKK, P]ᵀ, accumulated over blocks of output pixels"""
    cdef Py_ssize_t pix0, npix, P = g.OH * g.OW
    cdef int CKK = <int>(g.C_in * g.KH * g.KW)
    pix0 = 0
    while pix0 < P:
        npix = min(block, P - pix0)
        _im2col(x, cols, g, pix0, npix)
        _gemm_rm(False, True, <int>g.C_out, CKK, <int>npix, <floating>1, dy + pix0, <int>P, cols, <int>npix,
                 <floating>1, dk, CKK)
        pix0 += npix


cdef void _igrad_gemm_one(const floating* dy, const floating* k, floating* dx, floating* cols,
                          const Geom* g, Py_ssize_t block) noexcept nogil:
    """dx = col2im(k[C_out, CKK]ᵀ @ dy[C_out, P]), one block of output pixels at a time"""
    cdef Py_ssize_t i, pix0, npix, P = g.OH * g.OW
    cdef int CKK = <int>(g.C_in * g.KH * g.KW)
    for i in range(g.C_in * g.H * g.W):
        dx[i] = 0
    pix0 = 0
    while pix0 < P:
        npix = min(block, P - pix0)
        _gemm_rm(True, False, CKK, <int>npix, <int>g.C_out, <floating>1, k, CKK, dy + pix0, <int>P,
                 <floating>0, cols, <int>npix)
        _col2im(cols, dx, g, pix0, npix)
        pix0 += npix


cdef void _forward_gemm_part(const floating* x, const floating* k, const floating* b, floating* y,
                             floating* cols, const Geom* g, Py_ssize_t block, Py_ssize_t lo,
                             Py_ssize_t hi) noexcept nogil:
    """_forward_gemm_one for samples [lo, hi)"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    for n in range(lo, hi):
        _forward_gemm_one(x + n * xs, k, b, y + n * ys, cols, g, block)


cdef void _kgrad_gemm_chunks(const floating* dy, const floating* x, floating* partial, Py_ssize_t L,
                             floating* cols, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nchunk, Py_ssize_t N,
                             const Geom* g, Py_ssize_t block) noexcept nogil:
    """partial[c] = Σ_{n in chunk c} the kernel-gradient terms of sample n, in sample order, for c in [c0, c1)"""
    cdef Py_ssize_t c, n, t, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    cdef floating* part
    for c in range(c0, c1):
        part = partial + c * L
        for t in range(L):
            part[t] = 0
        for n in range((c * N) // nchunk, ((c + 1) * N) // nchunk):
            _kgrad_gemm_one(x + n * xs, dy + n * ys, part, cols, g, block)


cdef void _igrad_gemm_part(const floating* dy, const floating* k, floating* dx, floating* cols, const Geom* g,
                           Py_ssize_t block, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """_igrad_gemm_one for samples [lo, hi)"""
    cdef Py_ssize_t n, xs = g.C_in * g.H * g.W, ys = g.C_out * g.OH * g.OW
    for n in range(lo, hi):
        _igrad_gemm_one(dy + n * ys, k, dx + n * xs, cols, g, block)


# ---------------------------------------------------------------------------------------------------
# Public typed entry points (called by cnn_ext.ops only)
# ---------------------------------------------------------------------------------------------------

def conv2d_forward_gemm(const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                        const floating[:, :, :, ::1] k,      # IN  (C_out, C_in, KH, KW)
                        const floating[::1] b,               # IN  (C_out,)
                        floating[:, :, :, ::1] y,            # OUT (N, C_out, OH, OW)
                        floating[:, ::1] scratch,            # TMP (threads, C_in*KH*KW*block)
                        Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, int num_threads):
    """y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i]) with stride (SH, SW) and zero padding (PH, PW)."""
    cdef Py_ssize_t t, N = x.shape[0], nparts = _nparts(N, num_threads)
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        y.shape[2], y.shape[3], SH, SW, PH, PW)
    cdef Py_ssize_t block = scratch.shape[1] // (g.C_in * g.KH * g.KW)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _forward_gemm_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &scratch[0, 0], &g, block,
                               0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _forward_gemm_part(&x[0, 0, 0, 0], &k[0, 0, 0, 0], &b[0], &y[0, 0, 0, 0], &scratch[threadid(), 0], &g,
                                   block, _part(N, t, nparts), _part(N, t + 1, nparts))


def conv2d_kernel_gradient_gemm(const floating[:, :, :, ::1] dy,     # IN  (N, C_out, OH, OW)
                                const floating[:, :, :, ::1] x,      # IN  (N, C_in, H, W)
                                floating[:, :, :, ::1] dk,           # OUT (C_out, C_in, KH, KW)
                                floating[:, ::1] partial,            # TMP (nchunk, C_out*C_in*KH*KW)
                                floating[:, ::1] scratch,            # TMP (threads, C_in*KH*KW*block)
                                Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, int num_threads,
                                Py_ssize_t c_lo=0, Py_ssize_t c_hi=-1):
    """dk[j, i] = (1/N) Σ_n xcorr(x[n, i], dy[n, j]) (with stride and padding), summed in fixed chunks.
    Only chunks [c_lo, c_hi) of partial are computed (c_hi = -1: all); dk is written by the call that reaches
    the last chunk, so a long gradient can run as several calls (Ctrl-C acts between them)."""
    cdef Py_ssize_t N = x.shape[0], nchunk = partial.shape[0], c, t
    c_hi = _chunk_range(c_lo, c_hi, nchunk)
    cdef Py_ssize_t nparts = _nparts(c_hi - c_lo, num_threads)
    cdef Py_ssize_t KK = dk.shape[0] * dk.shape[1] * dk.shape[2] * dk.shape[3], L = partial.shape[1]
    cdef Geom g = _geom(x.shape[1], x.shape[2], x.shape[3], dk.shape[0], dk.shape[2], dk.shape[3],
                        dy.shape[2], dy.shape[3], SH, SW, PH, PW)
    cdef Py_ssize_t block = scratch.shape[1] // (g.C_in * g.KH * g.KW)
    cdef floating* out = &dk[0, 0, 0, 0]
    cdef floating inv_n
    if N == 0:
        for t in range(KK):
            out[t] = 0
        return
    with nogil:
        if nparts == 1:
            _kgrad_gemm_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], L, &scratch[0, 0], c_lo, c_hi,
                               nchunk, N, &g, block)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _kgrad_gemm_chunks(&dy[0, 0, 0, 0], &x[0, 0, 0, 0], &partial[0, 0], L, &scratch[threadid(), 0],
                                   c_lo + _part(c_hi - c_lo, t, nparts), c_lo + _part(c_hi - c_lo, t + 1, nparts),
                                   nchunk, N, &g, block)
        if c_hi == nchunk:
            inv_n = (<floating>1) / N
            for t in range(KK):
                out[t] = 0
            for c in range(nchunk):
                for t in range(KK):
                    out[t] += partial[c, t]
            for t in range(KK):
                out[t] *= inv_n


def conv2d_input_gradient_gemm(const floating[:, :, :, ::1] dy,    # IN  (N, C_out, OH, OW)
                               const floating[:, :, :, ::1] k,     # IN  (C_out, C_in, KH, KW)
                               floating[:, :, :, ::1] dx,          # OUT (N, C_in, H, W)
                               floating[:, ::1] scratch,           # TMP (threads, C_in*KH*KW*block)
                               Py_ssize_t SH, Py_ssize_t SW, Py_ssize_t PH, Py_ssize_t PW, int num_threads):
    """dx[n, i] = Σ_j conv_full(dy[n, j], k[j, i]) (the adjoint of the forward map, with stride and padding)."""
    cdef Py_ssize_t t, N = dy.shape[0], nparts = _nparts(N, num_threads)
    cdef Geom g = _geom(dx.shape[1], dx.shape[2], dx.shape[3], k.shape[0], k.shape[2], k.shape[3],
                        dy.shape[2], dy.shape[3], SH, SW, PH, PW)
    cdef Py_ssize_t block = scratch.shape[1] // (g.C_in * g.KH * g.KW)
    if N == 0:
        return
    with nogil:
        if nparts == 1:
            _igrad_gemm_part(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &scratch[0, 0], &g, block, 0, N)
        else:
            for t in prange(nparts, schedule='dynamic', num_threads=_team(nparts, num_threads)):
                _igrad_gemm_part(&dy[0, 0, 0, 0], &k[0, 0, 0, 0], &dx[0, 0, 0, 0], &scratch[threadid(), 0], &g, block,
                                 _part(N, t, nparts), _part(N, t + 1, nparts))
