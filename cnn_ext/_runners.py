"""How each method runs: its scratch arrays and its kernel call, for one convolution geometry.

``forward(method, g, dtype, nt)`` and its two siblings return ``run(...)``, a function of the call's arrays that
allocates the method's scratch and calls its kernel (``cnn_ext._kernels``). Every direct method that would
multiply zero padding by an inf or NaN (0 * inf is NaN where the definition has no product at all) hands such
calls to im2col + BLAS, which forms only the real products, so every method gives the same non-finite pattern.

Ctrl-C: a kernel call holds no GIL and cannot be interrupted, so a call with more than INTERRUPT_MACS
multiply-adds per thread is run as several kernel calls on consecutive groups of samples (``in_chunks``);
between two of them Python runs its signal handlers, and a KeyboardInterrupt then says which samples of the
output were written. Each sample is computed exactly as in one call (samples are independent), and the kernel
gradient's chunks are the same fixed chunks summed in the same order, so results stay bitwise the same.
Smaller calls take the plain path and pay nothing.
"""
import numpy as np

from . import _methods as M
from ._kernels import gemm, kgrad, rows, tiled, winograd
from ._methods import Method
from . import _threads
from ._threads import blas_single_thread, threads_for


def _typed(kernel, dtype):
    """The kernel's version for this dtype: skips Cython's dispatch on the arguments' types at every call."""
    return kernel["float" if dtype == np.float32 else "double"]


def _gemm_scratch(g, dtype, nt):
    """Per-thread im2col slabs of C_in*KH*KW x block output pixels (about COLS_BLOCK_BYTES each)."""
    ckk, P = g.C_in * g.KH * g.KW, g.OH * g.OW
    block = max(1, min(P, M.COLS_BLOCK_BYTES // (ckk * dtype.itemsize)))
    block = max(block, min(P, M.MIN_BLOCK))
    return np.empty((nt, ckk * block), dtype=dtype)


def _thread_slabs(shape, dtype):
    """Per-thread slabs that the kernels zero in their own threads (the zeros land in the cache of the core
    that reads them): uninitialised here."""
    return np.empty(shape, dtype)


def _padded_slabs(g, C, dtype, nt):
    """Per-thread slabs for one zero-padded sample of C channels, sized by the kernels' own rule
    (tiled.padded_extent: OH + KH - 1 rows at stride 1, and the rows a stride reads otherwise)."""
    top, _, left, _ = g.pads
    Hp = tiled.padded_extent(g.H, g.OH, g.KH, g.SH, top)
    return _thread_slabs((nt, C * Hp * tiled.padded_extent(g.W, g.OW, g.KW, g.SW, left)), dtype)


# Multiply-adds per thread in one kernel call of a chunked run: about 0.05 s at 2 GMAC/s per core (the slowest
# kernels on large layers), so a Ctrl-C is seen within a fraction of a second also on a loaded machine; a
# chunk's Python costs tens of microseconds, under 0.1 % of it.
INTERRUPT_MACS = 100_000_000
# Winograd's forward and input gradient run at 25 times those multiply-adds per second or more (direct count;
# 60 G/s in float64 on 128 channels): their groups are that much longer, as each group costs its threads a wait
WINOGRAD_SPEED = 25


def per_call(per_item, n, nt, unit=1):
    """Items per kernel call of a run that Ctrl-C can stop (about INTERRUPT_MACS multiply-adds per thread), or None
    when one call of all ``n`` items is short enough. A multiple of ``unit`` * ``nt``: a call splits its items over
    its threads, and a thread with one unit more than the others keeps them idle while it finishes."""
    step = max(1, INTERRUPT_MACS * max(1, nt) // max(1, per_item))
    if step >= n:
        return None
    whole = unit * max(1, nt)
    return -(-step // whole) * whole


def in_chunks(run, g, nt, multiple=1, speed=1):
    """``run(batch_in, *others, batch_out)`` on consecutive groups of samples when a call is long (see the
    module docstring), else ``run`` itself; each group but the last holds a multiple of ``multiple`` * ``nt``
    samples. ``speed``: how many times the slowest kernels' multiply-adds per second the method runs at."""
    step = per_call(g.macs // max(1, g.N * speed), g.N, nt, multiple)
    if step is None:
        return run

    def run_chunks(first, *rest):
        *shared, out = rest
        N = first.shape[0]
        done = 0
        try:
            while done < N:
                end = min(N, done + step)
                run(first[done:end], *shared, out[done:end])
                done = end
        except KeyboardInterrupt as exc:
            if done < N:
                raise KeyboardInterrupt(f"interrupted: only samples [0, {done}) of {N} of the output were written "
                                        f"(an out= array holds a partial result)") from exc
            raise

    return run_chunks


# ---- forward -------------------------------------------------------------------------------------

def forward(method, g, dtype, nt):
    """run(x, k, b, y) computing y = conv(x, k) + b with ``method`` on ``nt`` threads."""
    if method is Method.WINOGRAD:  # chunked inside: the kernel transform once per call
        return winograd_forward(g, dtype, nt, M.winograd_tile(g, dtype))
    return in_chunks(_forward(method, g, dtype, nt), g, nt)


def _forward(method, g, dtype, nt):
    run_gemm = _forward_gemm(g, dtype, nt)
    if method is Method.GEMM:
        return run_gemm
    if method is Method.ROW_TILES:
        kernel = _typed(rows.conv2d_forward_rows, dtype)
        return lambda x, k, b, y: kernel(x, k, b, y, nt)
    direct = _forward_direct(method, g, dtype, nt)
    if g.unpadded:
        return direct
    all_finite = _typed(tiled.all_finite, dtype)

    def run_padded(x, k, b, y):
        if all_finite(k.reshape(-1)):
            direct(x, k, b, y)
        else:  # the direct kernels skip products with padding that an inf or NaN tap would make NaN
            run_gemm(x, k, b, y)

    return run_padded


def _forward_gemm(g, dtype, nt):
    kernel = _typed(gemm.conv2d_forward_gemm, dtype)
    top, _, left, _ = g.pads

    def run(x, k, b, y):
        with blas_single_thread():
            kernel(x, k, b, y, _gemm_scratch(g, dtype, nt), g.SH, g.SW, top, left, nt)

    return run


def _forward_direct(method, g, dtype, nt):
    """run(x, k, b, y) for the direct kernels on padded slabs (also dX's, on dE_dY padded by K-1): stride 1, but
    the channel-vector kernel takes any stride."""
    top, _, left, _ = g.pads
    if method is Method.ROW_TILES_PADDED:
        kernel = _typed(rows.conv2d_forward_rows_padded, dtype)
        return lambda x, k, b, y: kernel(x, k, b, y, _padded_slabs(g, g.C_in, dtype, nt), top, left, nt)
    if method is Method.BAND:
        kernel = _typed(tiled.conv2d_forward_band, dtype)
        return lambda x, k, b, y: kernel(x, k, b, y, _padded_slabs(g, g.C_in, dtype, nt), top, left, nt)
    if method is Method.CHANNELS:
        kernel, JW = _typed(tiled.conv2d_forward_cv, dtype), M.TILES[dtype]["channels"]

        def run_channels(x, k, b, y):
            kp = np.ascontiguousarray(k.reshape(g.C_out // JW, JW, g.C_in, g.KH, g.KW).transpose(0, 2, 3, 4, 1))
            stage = np.empty((nt, JW * g.OW), dtype=dtype)
            kernel(x, kp, b, y, _padded_slabs(g, g.C_in, dtype, nt), stage, g.SH, g.SW, top, left, nt)

        return run_channels
    if method is Method.SHIFTED:
        kernel, (JB, TB) = _typed(tiled.conv2d_forward_shifted, dtype), M.TILES[dtype]["shifted"]
        ib = M.shift_ib(g, dtype)
        size = tiled.shifted_slab_size(min(g.C_in, ib), g.OH, g.OW, g.KH, g.KW, dtype == np.float32)

        def run_shifted(x, k, b, y):
            xs = np.zeros((nt, size), dtype=dtype)
            stage = np.empty((nt, JB * TB), dtype=dtype)
            kernel(x, k, b, y, xs, stage, top, left, ib, nt)

        return run_shifted
    assert method is Method.WIDE, method
    kernel, (JB, TB) = _typed(tiled.conv2d_forward_wide, dtype), M.TILES[dtype]["wide"]
    Hp, Wp = g.OH + g.KH - 1, tiled.wide_pitch(g.W, g.OW, g.KW, left)
    Fr = -(-g.OH * Wp // TB) * TB

    def run_wide(x, k, b, y):
        xpad = _thread_slabs((nt, g.C_in * Hp * Wp + TB + g.KW), dtype)
        wide = np.empty((nt, g.C_out * Fr), dtype=dtype)
        kernel(x, k, b, y, xpad, wide, top, left, M.WIDE_IB, nt)

    return run_wide


# ---- Winograd ------------------------------------------------------------------------------------
# F(m x m, 3 x 3) (Lavin & Gray 2016): y = Aᵀ [(G k Gᵀ) ⊙ (Bᵀ d B)] A per output tile; all of it is in
# src_pyx/winograd.pyx but the kernel gradient's fold by G ⊗ G (WINOGRAD_GG). A tile mixes all its
# inputs, so an inf or NaN would reach outputs that never meet it: such results are recomputed by im2col.

_WINOGRAD_G = {2: np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
               4: np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                            [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])}
WINOGRAD_GG = {m: np.kron(G, G) for m, G in _WINOGRAD_G.items()}  # ((m+2)², 9): vec(G k Gᵀ) = GG @ vec(k)


def _winograd_u(k, m, dtype, nt):
    """U[ξ, j, i] = (G k[j, i] Gᵀ)[ξ], computed in float64 and rounded once (an inf tap: the result is
    recomputed by im2col)."""
    u = np.empty(((m + 2) ** 2,) + k.shape[:2], dtype)
    _typed(winograd.winograd_kernel_transform, dtype)(k, u, m, nt)
    return u


def _winograd_blocks(kernel, g, dtype, nt, m, *flags):
    """run(first, k, *others, out) -> whether out is finite: ``kernel(first, u, *others, out, scratch, m, rows, top,
    left, nt, *flags)`` (a F(m x m, 3 x 3) kernel on g's tiles) with u the kernels transformed once per call; long
    calls in groups of whole blocks (in_chunks)."""
    rows = M.winograd_rows(g, dtype, m)
    size = winograd.winograd_scratch_size(g.C_in, g.C_out, g.OH, g.OW, m, rows, False)
    top, _, left, _ = g.pads
    # the kernel transform's threads: by its own work, (G ⊗ G) vec(k)'s multiply-adds, not the layer's
    nt_u = min(nt, threads_for(g.C_in * g.C_out, g.C_in * g.C_out * 9 * (m + 2) ** 2))

    def blocks(first, u, *rest):  # rest: the others, this call's list of each group's answer, out
        *others, finite, out = rest
        finite.append(kernel(first, u, *others, out, np.empty((nt, size), dtype), m, rows, top, left, nt, *flags))

    # Ctrl-C groups of whole blocks of samples keep the blocks full; the products are per tile, so the bits are
    # those of one call
    chunked = in_chunks(blocks, g, nt, M.winograd_block_samples(g, dtype, m), WINOGRAD_SPEED)

    def run(first, k, *rest):
        *others, out = rest
        finite = []
        with blas_single_thread():  # the block products run on the kernel's threads
            chunked(first, _winograd_u(k, m, dtype, nt_u), *others, finite, out)
        return all(finite)

    return run


def _winograd_raw(g, dtype, nt, m, exact_zeros):
    """run(x, k, b, y) -> whether y is finite, by the F(m x m, 3 x 3) forward (g: a 3x3 stride-1 geometry).
    exact_zeros: outputs whose 3x3 input field is all zeros are b exactly."""
    return _winograd_blocks(_typed(winograd.conv2d_forward_winograd, dtype), g, dtype, nt, m, exact_zeros)


def winograd_forward(g, dtype, nt, m):
    """run(x, k, b, y): y = conv(x, k) + b by F(m x m, 3 x 3); non-finite results are recomputed by im2col.
    Outputs whose input field is all zeros are exactly b: the transforms miss it by rounding (other inputs of
    their tile), and after a ReLU (zeros, often whole regions) a ReLU or a max-pool tie would take +1e-9 for a
    positive value and pass gradients where the direct sum, PyTorch's included, gives exactly b and passes none."""
    raw, run_gemm = _winograd_raw(g, dtype, nt, m, True), in_chunks(_forward_gemm(g, dtype, nt), g, nt)

    def run(x, k, b, y):
        if not raw(x, k, b, y):
            run_gemm(x, k, b, y)

    return run


def winograd_input_gradient(g, dtype, nt, m):
    """run(dy, k, dx): dX as the F(m x m, 3 x 3) forward of dE_dY padded by 2 - padding with the transposed,
    rotated kernels, or as the adjoint of the forward where that takes fewer tiles (M.winograd_dx_adjoint);
    non-finite results are recomputed by im2col."""
    if M.winograd_dx_adjoint(g, dtype, m):
        return _winograd_dx_adjoint(g, dtype, nt, m)
    t = M.Geometry(g.N, g.C_out, g.C_in, g.OH, g.OW, 3, 3, g.H, g.W, 1, 1, g.transposed_pads)
    raw, run_gemm = _winograd_raw(t, dtype, nt, m, False), input_gradient(Method.GEMM, g, dtype, nt)
    rotate = _typed(tiled.rotate_kernels, dtype)
    no_bias = np.zeros(g.C_in, dtype=dtype)
    no_bias.flags.writeable = False

    def run(dy, k, dx):
        k_rot = np.empty((g.C_in, g.C_out, 3, 3), dtype)
        if not (rotate(k, k_rot) and raw(dy, k_rot, no_bias, dx)):
            run_gemm(dy, k, dx)

    return run


def _winograd_dx_adjoint(g, dtype, nt, m):
    """run(dy, k, dx): dX = B [Uᵀ (A dE_dY Aᵀ)] Bᵀ on the forward's tiles, patches added where they overlap;
    non-finite results by im2col."""
    raw = _winograd_blocks(_typed(winograd.conv2d_input_gradient_winograd, dtype), g, dtype, nt, m)
    run_gemm = input_gradient(Method.GEMM, g, dtype, nt)

    def run(dy, k, dx):
        if not raw(dy, k, dx):
            run_gemm(dy, k, dx)

    return run


def winograd_kernel_gradient(g, dtype, nt, m):
    """run(dy, x, dk): dK = (1/N) Σ_n xcorr(x[n], dE_dY[n]) by F(m x m, 3 x 3), in the fixed chunks of every
    kernel gradient; non-finite results are recomputed by im2col."""
    kernel, finite = _typed(winograd.conv2d_kernel_gradient_winograd, dtype), _typed(tiled.all_finite, dtype)
    rows = M.winograd_rows(g, dtype, m, kgrad=True)
    size = winograd.winograd_scratch_size(g.C_in, g.C_out, g.OH, g.OW, m, rows, True)
    gg = WINOGRAD_GG[m].astype(dtype)
    top, _, left, _ = g.pads
    nchunk = M.winograd_nchunk(g, dtype, m)
    run_gemm = kernel_gradient(Method.GEMM, g, dtype, nt)

    def chunks(dy, x, dk, partial, lo=0, hi=-1):
        with blas_single_thread():
            kernel(dy, x, partial, np.empty((nt, size), dtype), gg, m, rows, top, left, nt, lo, hi)
        if hi not in (-1, nchunk):
            return True
        _sum_chunks(partial, dk, g.N)  # this kernel leaves the sum of the chunks to its caller
        return finite(dk.reshape(-1))

    # a call's threads share each block of its chunks (a barrier per phase) unless it has WHOLE_CHUNKS per thread
    return _kgrad_in_chunks(chunks, g, nt, (nchunk, g.C_out * g.C_in * 9), dtype, run_gemm, winograd.WHOLE_CHUNKS)


# ---- input gradient ------------------------------------------------------------------------------

def input_gradient(method, g, dtype, nt):
    """run(dy, k, dx) computing dX = conv_full(dE_dY, k) with ``method`` on ``nt`` threads."""
    if method is Method.WINOGRAD:  # chunked inside: the kernel transform once per call
        return winograd_input_gradient(g, dtype, nt, M.winograd_tile(g, dtype))
    return in_chunks(_input_gradient(method, g, dtype, nt), g, nt)


def _input_gradient(method, g, dtype, nt):
    top, _, left, _ = g.pads
    kernel = _typed(gemm.conv2d_input_gradient_gemm, dtype)

    def run_gemm(dy, k, dx):
        with blas_single_thread():
            kernel(dy, k, dx, _gemm_scratch(g, dtype, nt), g.SH, g.SW, top, left, nt)

    if method is Method.GEMM:
        return run_gemm
    if method is Method.SCATTER:
        scatter = _typed(rows.conv2d_input_gradient_scatter, dtype)
        return lambda dy, k, dx: scatter(dy, k, dx, nt)
    # dX is the stride-1 forward of dE_dY zero-padded by K-1-padding with the transposed, 180°-rotated kernels
    pads = g.transposed_pads
    t = M.Geometry(g.N, g.C_out, g.C_in, g.OH, g.OW, g.KH, g.KW, g.H, g.W, 1, 1, pads)
    direct = _forward_direct(method, t, dtype, nt)
    rotate = _typed(tiled.rotate_kernels, dtype)
    no_bias = np.zeros(g.C_in, dtype=dtype)
    no_bias.flags.writeable = False

    def run_direct(dy, k, dx):
        k_rot = np.empty((g.C_in, g.C_out, g.KH, g.KW), dtype)
        if rotate(k, k_rot):
            direct(dy, k_rot, no_bias, dx)
        else:  # an inf or NaN tap would meet the padding's zeros, where the full convolution has no product
            run_gemm(dy, k, dx)

    return run_direct


# ---- kernel gradient -----------------------------------------------------------------------------

def kernel_gradient(method, g, dtype, nt):
    """run(dy, x, dk) computing dK = (1/N) Σ_n xcorr(x[n], dE_dY[n]) with ``method`` on ``nt`` threads; the
    batch is summed in M.nchunk chunks added in order, whatever ``nt``."""
    top, _, left, _ = g.pads
    nchunk = M.nchunk(g, dtype)
    size = g.C_out * g.C_in * g.KH * g.KW
    kernel = _typed(gemm.conv2d_kernel_gradient_gemm, dtype)

    def gemm_chunks(dy, x, dk, partial, lo=0, hi=-1):
        with blas_single_thread():
            kernel(dy, x, dk, partial, _gemm_scratch(g, dtype, nt), g.SH, g.SW, top, left, nt, lo, hi)
        return True

    if method is Method.GEMM:
        return _kgrad_in_chunks(gemm_chunks, g, nt, (nchunk, size), dtype, None)
    if method is Method.WINOGRAD:
        return winograd_kernel_gradient(g, dtype, nt, M.winograd_tile(g, dtype))
    if method is Method.CHANNELS:
        channels = _typed(tiled.conv2d_kernel_gradient_cv, dtype)
        slab = tiled.channel_kgrad_scratch_size(g.C_in, g.C_out, g.H, g.W, g.OH, g.OW, g.KH, g.KW, g.SH, g.SW,
                                                top, left)

        def cv_chunks(dy, x, dk, partial, lo=0, hi=-1):
            channels(dy, x, dk, partial, _thread_slabs((nt, slab), dtype), g.SH, g.SW, top, left, nt, lo, hi)
            return True
        return _kgrad_in_chunks(cv_chunks, g, nt, (nchunk, size), dtype, None)
    if method is Method.LOOPS:
        loops = _typed(rows.conv2d_kernel_gradient_rows, dtype)

        def loops_chunks(dy, x, dk, partial, lo=0, hi=-1):
            loops(dy, x, dk, partial, nt, lo, hi)
            return True
        # per-chunk partial sums with one per output column too (summed in order at the end)
        return _kgrad_in_chunks(loops_chunks, g, nt, (M.nchunk(g, dtype, size * g.OW), size * g.OW), dtype, None)
    layout = M.KGRAD_LAYOUTS[method]
    ns = M.kgrad_samples(g, dtype, method)
    slab = kgrad.kgrad_wide_scratch_size(g.C_in, g.C_out, g.OH, g.OW, g.KH, g.KW, dtype == np.float32, layout, ns)
    tiles = _typed(kgrad.conv2d_kernel_gradient_wide, dtype)

    def tiled_chunks(dy, x, dk, partial, lo=0, hi=-1):
        scratch = np.zeros((nt, slab), dtype)
        return tiles(dy, x, dk, partial, scratch, top, left, layout, M.KGRAD_TILE_CHANNELS, M.KGRAD_TILE_TAPS,
                     ns, nt, lo, hi)

    def run_gemm(dy, x, dk):
        gemm_chunks(dy, x, dk, np.empty((nchunk, size), dtype))

    # the tiles also multiply the widened dE_dY's zero columns by x values no tap reaches: only an inf or NaN
    # there makes dK non-finite, and im2col reaches exactly the right values
    return _kgrad_in_chunks(tiled_chunks, g, nt, (nchunk, size), dtype, run_gemm)


def _kgrad_in_chunks(chunks, g, nt, partial_shape, dtype, fallback, unit=1):
    """run(dy, x, dk) calling ``chunks(dy, x, dk, partial, lo, hi)`` for consecutive ranges of the fixed chunks
    when the call is long (Ctrl-C acts between them; the call reaching the last chunk sums them into dk, so dk
    and an out= array stay untouched until then), else for all chunks at once; ranges of a multiple of ``unit``
    chunks per thread. ``fallback`` recomputes a result the kernel reports non-finite."""
    nchunk = partial_shape[0]
    group = per_call(g.macs // nchunk, nchunk, nt, unit) or nchunk

    def run(dy, x, dk):
        partial = np.empty(partial_shape, dtype)
        finite = True
        for lo in range(0, nchunk, group):
            finite = chunks(dy, x, dk, partial, lo, min(nchunk, lo + group))
        if not finite and fallback is not None:
            fallback(dy, x, dk)

    return run


def _sum_chunks(partial, dk, N):
    """dk = (1/N) Σ_c partial[c], the chunks added in order as the kernels do (zeros for an empty batch)."""
    out = dk.reshape(-1)
    out[:] = 0
    for c in range(partial.shape[0]):
        out += partial[c]
    if N:
        out *= dk.dtype.type(1) / dk.dtype.type(N)


# ---- bias gradient -------------------------------------------------------------------------------

def bias_gradient(dy, db):
    """db[j] = (1/N) Σ_{n, p, q} dy[n, j, p, q] for a C-contiguous dy: per-channel lane sums added in order."""
    acc = np.empty((db.shape[0], kgrad.SUM_LANES), dy.dtype)
    # a sum reads each element once: a thread pays from fewer elements than a convolution's multiply-adds
    nt = threads_for(db.shape[0], dy.size * _threads.MIN_WORK_PER_THREAD // M.BIAS_MIN_PER_THREAD)
    _BIAS_SUMS[dy.dtype](dy, db, acc, nt)


_BIAS_SUMS = {dt: _typed(kgrad.conv2d_bias_gradient, dt) for dt in (np.dtype(np.float32), np.dtype(np.float64))}
