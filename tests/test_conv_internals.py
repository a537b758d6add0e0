"""Internals that the public API cannot reach: the compiled kernels' own checks and helpers, and what ops does
with its work buffers (block sizes, guard bytes, uninitialised slabs, samples per pass): cnn_ext._methods'
tunables, cnn_ext._runners' scratch, cnn_ext._kernels' helpers. Each test here names a
private part of cnn_ext on purpose; everything a user can observe is tested in tests/test_conv_ops.py and
tests/test_conv_methods.py. Keep this file short: a test that can go through the public API belongs there."""
import numpy as np
import pytest
from helpers.oracles import TOL, data, einsum_forward, einsum_kernel_gradient, pair
from helpers.strategies import CONV_CONFIGS
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext import _methods, _runners, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient
from cnn_ext._kernels import kgrad, tiled

CONFIGS = CONV_CONFIGS[:4] + CONV_CONFIGS[-1:]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [17, 40, 70])
def test_kernel_gradient_several_samples_per_pass(dtype, N, monkeypatch, restore_threads):
    """Tiles that keep their accumulators over ns samples (uneven chunks, a last group smaller than ns) give
    the one-sample-per-pass result up to rounding, and a result independent of the thread count."""
    rng = np.random.default_rng(N)
    x, _, _, _ = data(rng, N, 3, 5, 9, 8, 3, 2, dtype=dtype)
    x = x + 0.5
    dy = rng.standard_normal((N, 5, 9, 8)).astype(dtype)
    ref = einsum_kernel_gradient(dy, x, 3, 2, pad=(1, 1, 0, 1))
    for ns in (1, 2, 3, 5):
        monkeypatch.setattr(_methods, "kgrad_samples", lambda g, dtype, layout, ns=ns: ns)
        results = []
        for n in (1, 2, 3):
            cnn_ext.set_num_threads(n)
            results.append(conv2d_kernel_gradient(dy, x, padding=((1, 1), (0, 1)), kernel_size=(3, 2),
                                                  method="direct"))
        assert_allclose(results[0], ref, **TOL[dtype])
        for other in results[1:]:
            assert_array_equal(results[0], other)


def test_tiled_kernel_gradient_refuses_a_short_slab():
    x = np.zeros((4, 2, 6, 6), np.float32)
    dy = np.zeros((4, 3, 4, 4), np.float32)
    size = kgrad.kgrad_wide_scratch_size(2, 3, 4, 4, 3, 3, True, False, 2)
    assert size > kgrad.kgrad_wide_scratch_size(2, 3, 4, 4, 3, 3, True, False, 1)
    with pytest.raises(ValueError, match="too small for 2 samples"):
        kgrad.conv2d_kernel_gradient_wide(dy, x, np.empty((3, 2, 3, 3), np.float32), np.empty((4, 54), np.float32),
                                          np.zeros((1, size - 1), np.float32), 0, 0, False, 4, 3, 2, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rotate_kernels_transposes_rotates_and_reports_nonfinite(dtype):
    k = np.arange(3 * 2 * 4 * 5, dtype=dtype).reshape(3, 2, 4, 5)
    rot = np.empty((2, 3, 4, 5), dtype)
    assert tiled.rotate_kernels(k, rot) is True
    assert_array_equal(rot, k[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    for bad in (np.inf, -np.inf, np.nan):
        kb = k.copy()
        kb[2, 1, 3, 4] = bad  # the last element: every one is checked
        assert tiled.rotate_kernels(kb, rot) is False
        assert_array_equal(rot, kb[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def test_all_finite():
    for dtype in (np.float32, np.float64):
        a = np.arange(7, dtype=dtype)
        assert tiled.all_finite(a) is True and tiled.all_finite(a[:0]) is True
        for bad in (np.inf, -np.inf, np.nan):
            b = a.copy()
            b[6] = bad
            assert tiled.all_finite(b) is False


@pytest.mark.parametrize("block", [1, 5, 13])
@pytest.mark.parametrize("shape,stride,padding,pad", CONFIGS)
def test_gemm_pixel_blocks(monkeypatch, block, shape, stride, padding, pad):
    """im2col/col2im over blocks of output pixels that cut rows anywhere give the same result."""
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(block)
    x, k, b, _ = data(rng, *shape)
    kw = dict(stride=stride, padding=padding, method="gemm")
    y_ref = conv2d_forward(x, k, b, **kw)
    dy = rng.standard_normal(y_ref.shape)
    dk_ref = conv2d_kernel_gradient(dy, x, kernel_size=(KH, KW), **kw)
    dx_ref = conv2d_input_gradient(dy, k, input_size=(H, W), **kw)
    itemsize = 8
    monkeypatch.setattr(_methods, "COLS_BLOCK_BYTES", block * C_in * KH * KW * itemsize)
    monkeypatch.setattr(_methods, "MIN_BLOCK", 1)
    assert_allclose(conv2d_forward(x, k, b, **kw), y_ref, rtol=1e-12, atol=1e-12)
    assert_allclose(conv2d_kernel_gradient(dy, x, kernel_size=(KH, KW), **kw), dk_ref, rtol=1e-12, atol=1e-12)
    assert_allclose(conv2d_input_gradient(dy, k, input_size=(H, W), **kw), dx_ref, rtol=1e-12, atol=1e-12)
    assert_allclose(y_ref, einsum_forward(x, k, b, stride, pad), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("block", [1, 2, 3, 7])
@pytest.mark.parametrize("stride,pad", [(1, (1, 1, 12, 12)), (2, (10, 10, 10, 10)), (2, (0, 3, 9, 2)),
                                        ((1, 2), (2, 0, 0, 11))])
def test_gemm_blocks_ending_in_the_padding(monkeypatch, block, stride, pad):
    """A block of output pixels that ends before its row's first valid column (wide left padding) writes
    nothing past its end. Found by an audit as heap corruption ('double free', stride 2, padding 50, 9x9
    kernels on 8x8 images); here the per-thread slabs carry a guard that must stay untouched."""
    rng = np.random.default_rng(block)
    x, k, b, _ = data(rng, 2, 3, 2, 6, 5, 3, 4)
    padding = ((pad[0], pad[1]), (pad[2], pad[3]))
    kw = dict(stride=stride, padding=padding, method="gemm")
    y_ref = einsum_forward(x, k, b, pair(stride), pad)
    dy = rng.standard_normal(y_ref.shape)
    dk_ref = conv2d_kernel_gradient(dy, x, kernel_size=(3, 4), **kw)  # whole-image blocks
    dx_ref = conv2d_input_gradient(dy, k, input_size=(6, 5), **kw)
    guards = []
    scratch = _runners._gemm_scratch

    def guarded(*args):
        s = scratch(*args)
        big = np.full((s.shape[0], s.shape[1] + 64), 7.0, dtype=s.dtype)
        guards.append(big)
        return big[:, :s.shape[1]]

    monkeypatch.setattr(_runners, "_gemm_scratch", guarded)
    monkeypatch.setattr(_methods, "COLS_BLOCK_BYTES", block * 3 * 3 * 4 * 8)
    monkeypatch.setattr(_methods, "MIN_BLOCK", 1)
    assert_allclose(conv2d_forward(x, k, b, **kw), y_ref, **TOL[np.float64])
    assert_allclose(conv2d_kernel_gradient(dy, x, kernel_size=(3, 4), **kw), dk_ref, rtol=1e-12, atol=1e-12)
    assert_allclose(conv2d_input_gradient(dy, k, input_size=(6, 5), **kw), dx_ref, rtol=1e-12, atol=1e-12)
    assert len(guards) == 3
    for big in guards:
        assert (big[:, -64:] == 7.0).all()


SLAB_KERNELS = ("conv2d_forward_band", "conv2d_forward_rows_padded", "conv2d_forward_wide", "conv2d_forward_cv")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_slab_kernels_zero_their_own_slabs(monkeypatch, restore_threads, dtype):
    """The padded-slab kernels (row bands, padded row tiles, wide rows, channel vectors) get uninitialised slabs
    and zero them in their own threads: slabs full of NaN must not change a single result."""
    ran = set()
    typed = _runners._typed

    def recording(kernel, dt):
        chosen = typed(kernel, dt)
        name = next((n for n in SLAB_KERNELS if chosen.__name__.endswith(n)), None)
        if name is None:
            return chosen

        def record(*args):
            ran.add(name)
            return chosen(*args)

        return record

    monkeypatch.setattr(_runners, "_typed", recording)
    # each kernel named (auto's pick follows the build's vector width); "direct" on the baseline build, where
    # the named ones are not compiled as such
    cases = [  # N, C_in, C_out, H, K, padding, forward method, input-gradient method
        (16, 1, 4, 28, 5, 0, "wide", "band"),                 # the tutorial's layer: its dX by row bands
        (3, 1, 4, 22, 3, "same", "row_tiles_padded", "wide"),  # one input channel, padded
        (4, 32, 32, 10, 3, 1, "channels", "channels"),  # channel vectors: whole tiles of any build
        (2, 3, 5, 12, 3, 1, "wide", "wide"),
        (5, 2, 3, 9, 4, ((2, 0), (1, 3)), "direct", "direct"),
    ]
    rng = np.random.default_rng(7)
    for nt in (1, 2):
        cnn_ext.set_num_threads(nt)
        for N, C_in, C_out, H, K, padding, fwd, dxm in cases:
            if not _methods.FAST:
                fwd = dxm = "direct"
            x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
            k = rng.standard_normal((C_out, C_in, K, K)).astype(dtype)
            b = rng.standard_normal(C_out).astype(dtype)
            y_ref = conv2d_forward(x, k, b, padding=padding, method="gemm")
            dy = rng.standard_normal(y_ref.shape).astype(dtype)
            dx_ref = conv2d_input_gradient(dy, k, padding=padding, input_size=(H, H), method="gemm")
            with monkeypatch.context() as m:
                m.setattr(_runners, "_thread_slabs", lambda shape, dt: np.full(shape, np.nan, dt))
                y = conv2d_forward(x, k, b, padding=padding, method=fwd)
                dx = conv2d_input_gradient(dy, k, padding=padding, input_size=(H, H), method=dxm)
            tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-4)
            assert_allclose(y, y_ref, **tol, err_msg=str((N, C_in, C_out, H, K, padding, nt)))
            assert_allclose(dx, dx_ref, **tol, err_msg=str((N, C_in, C_out, H, K, padding, nt)))
    if _methods.FAST:  # the AVX2 build (the baseline build routes these through BLAS)
        assert ran == set(SLAB_KERNELS)
