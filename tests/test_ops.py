"""The four convolution operations against independent references, finite differences and bad input.

Oracles: ``scipy.signal.correlate2d`` / ``convolve2d`` loops (the tutorial's own building blocks, with the true
kernel-gradient formula) and a ``sliding_window_view`` + ``einsum`` implementation that also covers stride and
padding. Both fast paths (direct loops and im2col + BLAS) are checked against them.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from numpy.testing import assert_allclose, assert_array_equal
from scipy import signal

import cnn_ext
from cnn_ext import ops
from cnn_ext import (
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
)

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=2e-5, atol=2e-4)}
METHODS = ["direct", "gemm"]


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------

def scipy_forward(x, k, b):
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = k.shape
    y = np.zeros((N, C_out, H - KH + 1, W - KW + 1))
    for n in range(N):
        for j in range(C_out):
            y[n, j] = b[j]
            for i in range(C_in):
                y[n, j] += signal.correlate2d(x[n, i], k[j, i], mode="valid")
    return y


def scipy_kernel_gradient(dy, x):
    N, C_out = dy.shape[:2]
    C_in = x.shape[1]
    dk = np.zeros((C_out, C_in, x.shape[2] - dy.shape[2] + 1, x.shape[3] - dy.shape[3] + 1))
    for n in range(N):
        for j in range(C_out):
            for i in range(C_in):
                # the true gradient: x is the first operand (never smaller than dy)
                dk[j, i] += signal.correlate2d(x[n, i], dy[n, j], mode="valid")
    return dk / N


def scipy_input_gradient(dy, k):
    N, C_out, OH, OW = dy.shape
    _, C_in, KH, KW = k.shape
    dx = np.zeros((N, C_in, OH + KH - 1, OW + KW - 1))
    for n in range(N):
        for i in range(C_in):
            for j in range(C_out):
                dx[n, i] += signal.convolve2d(dy[n, j], k[j, i], mode="full")
    return dx


def pad_x(x, pad):
    top, bottom, left, right = pad
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def einsum_forward(x, k, b, stride=(1, 1), pad=(0, 0, 0, 0)):
    xp = pad_x(x, pad)
    win = sliding_window_view(xp, k.shape[2:], axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
    return np.einsum("ncpqhw,jchw->njpq", win, k) + b[None, :, None, None]


def linear_maps(x_shape, k, stride, pad):
    """dK and dX references by the adjoint identity: build the forward map's transpose with einsum."""
    def dk_ref(dy, x):
        xp = pad_x(x, pad)
        win = sliding_window_view(xp, k.shape[2:], axis=(2, 3))[:, :, :: stride[0], :: stride[1]]
        return np.einsum("ncpqhw,njpq->jchw", win, dy) / x.shape[0]

    def dx_ref(dy):
        top, bottom, left, right = pad
        N, C_in, H, W = x_shape
        dxp = np.zeros((N, C_in, H + top + bottom, W + left + right))
        KH, KW = k.shape[2:]
        OH, OW = dy.shape[2:]
        for kh in range(KH):
            for kw in range(KW):
                dxp[:, :, kh: kh + stride[0] * OH: stride[0], kw: kw + stride[1] * OW: stride[1]] += np.einsum(
                    "njpq,jc->ncpq", dy, k[:, :, kh, kw])
        return dxp[:, :, top: top + H, left: left + W]

    return dk_ref, dx_ref


def data(rng, N, C_in, C_out, H, W, KH, KW, dtype=np.float64, OH=None, OW=None):
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    dy = rng.standard_normal((N, C_out, OH or max(1, H - KH + 1), OW or max(1, W - KW + 1))).astype(dtype)
    return x, k, b, dy


SHAPES = [
    # N, C_in, C_out, H, W, KH, KW
    (16, 1, 4, 28, 28, 5, 5),  # the tutorial's MNIST layer
    (16, 1, 4, 3, 3, 2, 2),  # the tutorial's toy layer
    (1, 1, 1, 1, 1, 1, 1),
    (2, 3, 2, 6, 5, 1, 1),  # 1x1 kernel
    (3, 2, 3, 4, 7, 4, 7),  # kernel == input
    (1, 3, 5, 9, 6, 2, 3),  # N = 1, non-square everything
    (4, 5, 7, 11, 8, 3, 4),
    (2, 8, 16, 10, 10, 3, 3),  # enough channels for the GEMM path to be the default
]


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", METHODS + ["auto"])
def test_against_scipy_loops(shape, dtype, method):
    rng = np.random.default_rng(sum(shape))
    x, k, b, dy = data(rng, *shape, dtype=dtype)
    x64, k64, b64, dy64 = (a.astype(np.float64) for a in (x, k, b, dy))
    y = conv2d_forward(x, k, b, method=method)
    dk = conv2d_kernel_gradient(dy, x, method=method)
    db = conv2d_bias_gradient(dy)
    dx = conv2d_input_gradient(dy, k, method=method)
    for got in (y, dk, db, dx):
        assert got.dtype == dtype
    assert_allclose(y, scipy_forward(x64, k64, b64), **TOL[dtype])
    assert_allclose(dk, scipy_kernel_gradient(dy64, x64), **TOL[dtype])
    assert_allclose(db, dy64.sum(axis=(0, 2, 3)) / shape[0], **TOL[dtype])
    assert_allclose(dx, scipy_input_gradient(dy64, k64), **TOL[dtype])


# The direct forward and input gradient (stride 1) run the wide-row kernel: the sample is copied into a zero-padded
# slab of width Wp and outputs are computed over the flat index p*Wp + q for all q < Wp, in tiles of JB = 4 channels x
# 24 float32 / 12 float64 flat outputs (AVX2 build; 12 / 6 in the SSE2 one). These shapes put C_out below, on and
# above JB and OW / Wp below, on and across tile sizes, the whole map inside one tile, and row ends inside tiles.
TILE_SHAPES = [
    # N, C_in, C_out, H, W, KH, KW              C_out, OW
    (2, 1, 1, 5, 20, 2, 3),  # 1 < JB, 18
    (2, 2, 2, 4, 11, 1, 1),  # 2, 11
    (1, 3, 3, 6, 19, 3, 3),  # 3, 17
    (2, 2, 4, 3, 16, 1, 1),  # JB, 16 (exact tiles in the AVX2 build)
    (2, 2, 5, 5, 12, 2, 4),  # 5 (overlapping channel block), 9
    (1, 2, 7, 4, 8, 1, 1),  # 7, 8
    (2, 1, 9, 6, 10, 3, 3),  # 9, 8
    (1, 3, 6, 5, 40, 3, 7),  # 6, 34
    (2, 2, 13, 3, 26, 2, 3),  # 13, 24
    (1, 1, 4, 2, 5, 1, 3),  # JB, 3 (narrower than every tile)
    (1, 2, 8, 4, 7, 2, 3),  # 8, 5
    (1, 1, 2, 3, 33, 1, 1),  # 2, 33
]


@pytest.mark.parametrize("shape", TILE_SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direct_forward_tile_tails(shape, dtype):
    rng = np.random.default_rng(100 + sum(shape))
    x, k, b, _ = data(rng, *shape, dtype=dtype)
    ref = scipy_forward(*(a.astype(np.float64) for a in (x, k, b)))
    y = conv2d_forward(x, k, b, method="direct")
    assert y.dtype == dtype
    assert_allclose(y, ref, **TOL[dtype])
    assert_allclose(conv2d_forward(x, k, b, method="gemm"), ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direct_forward_tiles_do_not_depend_on_thread_count(dtype, restore_threads):
    rng = np.random.default_rng(5)
    x, k, b, _ = data(rng, 40, 3, 5, 10, 21, 3, 3, dtype=dtype)  # channel and column tails, enough work for 2+ threads
    results = []
    for n in (1, 2, 3):
        cnn_ext.set_num_threads(n)
        results.append(conv2d_forward(x, k, b, method="direct"))
    for other in results[1:]:
        assert_array_equal(results[0], other)
    assert_allclose(results[0], scipy_forward(*(a.astype(np.float64) for a in (x, k, b))), **TOL[dtype])


# The tiled kernel gradient (stride 1, any padding) keeps 4 output channels x 3 taps of SIMD accumulators over
# the flattened planes (8 float32 / 4 float64 lanes in the AVX2 build, 4 / 2 in the SSE2 one); the last vector
# of a plane runs into zeros (dE_dY widened) and slack (x). Two layouts: wide rows (x padded to Hp x Wp) and
# shifted copies (one copy of x per kernel column, no wasted columns). These cases put OH*OW, C_out and the
# number of taps below, on and above the tile sizes, with N below, on and above the 16 reduction chunks.
KGRAD_TILE_CASES = [
    # N, C_in, C_out, H, W, KH, KW, padding                   what it covers
    ((3, 2, 5, 9, 11, 3, 3), 0),  # C_out = 4 + 1, OW = 9
    ((2, 1, 1, 4, 4, 1, 1), 0),  # K = 1, one channel
    ((5, 3, 7, 5, 6, 5, 6), 0),  # kernel == input: OH*OW = 1 < one vector, 30 taps
    ((17, 2, 3, 6, 5, 2, 3), 0),  # N = 17 (uneven chunks), C_out < 4
    ((37, 2, 6, 8, 7, 3, 2), ((1, 0), (2, 1))),  # asymmetric padding, N = 37
    ((4, 3, 9, 7, 7, 3, 3), "same"),
    ((1, 1, 2, 3, 40, 3, 7), (0, 3)),  # wide rows, left/right padding only
    ((2, 4, 8, 3, 3, 3, 3), 2),  # C_out = 2 tiles, padding as wide as the kernel
    ((6, 2, 4, 12, 2, 4, 2), ((0, 2), (1, 1))),  # OW = 3
    ((3, 5, 13, 10, 9, 7, 7), 3),  # 49 taps = 16 tiles of 3 + 1
    ((2, 2, 3, 4, 5, 3, 3), 4),  # padding larger than the kernel: rows and columns of zeros only
    ((16, 1, 4, 3, 3, 2, 2), 0),  # the tutorial's toy layer, N = 16
]


@pytest.fixture(params=["wide", "shifted"])
def kgrad_layout(request, monkeypatch):
    """Forces the tiled kernel gradient's layout (ops picks it by C_out * KH)."""
    from cnn_ext import ops

    limit = 0 if request.param == "shifted" else 10**9
    monkeypatch.setattr(ops, "_KGRAD_ROW_TILES", False)  # one input channel's layout: tests/test_one_channel.py
    monkeypatch.setattr(ops, "_KGRAD_SHIFTED_MIN_F32", limit)
    monkeypatch.setattr(ops, "_KGRAD_SHIFTED_MIN_F64", limit)
    return request.param


@pytest.mark.parametrize("case,padding", KGRAD_TILE_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tiled_kernel_gradient_against_einsum(case, padding, dtype, kgrad_layout):
    from cnn_ext import ops

    N, C_in, C_out, H, W, KH, KW = case
    pad = ops._padding(padding, KH, KW, (1, 1))
    OH, OW = H + pad[0] + pad[1] - KH + 1, W + pad[2] + pad[3] - KW + 1
    rng = np.random.default_rng(sum(case))
    x, k, _, dy = data(rng, *case, dtype=dtype, OH=OH, OW=OW)
    x = x + 0.5  # offsets make a lost or doubled tap visible in every entry
    before = (x.copy(), dy.copy())
    dk_ref, _ = linear_maps(x.shape, k.astype(np.float64), (1, 1), pad)
    ref = dk_ref(dy.astype(np.float64), x.astype(np.float64))
    assert ops._kgrad_method("direct", True, pad == (0, 0, 0, 0), N, OH, OW, C_in, C_out, KH, KW,
                             np.dtype(dtype)) == kgrad_layout
    dk = conv2d_kernel_gradient(dy, x, padding=padding, kernel_size=(KH, KW), method="direct")
    assert dk.dtype == dtype and dk.shape == (C_out, C_in, KH, KW)
    assert_allclose(dk, ref, **TOL[dtype])
    gemm = conv2d_kernel_gradient(dy, x, padding=padding, kernel_size=(KH, KW), method="gemm")
    assert_allclose(dk, gemm, **TOL[dtype])
    assert_array_equal(x, before[0])
    assert_array_equal(dy, before[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [0, ((2, 0), (1, 3))])
def test_tiled_kernel_gradient_does_not_depend_on_thread_count(dtype, padding, kgrad_layout, restore_threads):
    rng = np.random.default_rng(21)
    x, _, _, _ = data(rng, 37, 3, 6, 12, 13, 3, 3, dtype=dtype)
    OH, OW = conv2d_forward(x, np.zeros((6, 3, 3, 3), dtype), np.zeros(6, dtype), padding=padding).shape[2:]
    dy = rng.standard_normal((37, 6, OH, OW)).astype(dtype)
    results = []
    for n in (1, 2, 3):
        cnn_ext.set_num_threads(n)
        results.append(conv2d_kernel_gradient(dy, x, padding=padding, kernel_size=3, method="direct"))
    for other in results[1:]:
        assert_array_equal(results[0], other)  # bitwise: fixed chunks, lanes summed in a fixed order


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [17, 40, 70])
def test_tiled_kernel_gradient_several_samples_per_pass(dtype, N, kgrad_layout, monkeypatch, restore_threads):
    """Tiles that keep their accumulators over ns samples (uneven chunks, a last group smaller than ns) give
    the one-sample-per-pass result up to rounding, and a result independent of the thread count."""
    from cnn_ext import ops

    rng = np.random.default_rng(N)
    x, _, _, _ = data(rng, N, 3, 5, 9, 8, 3, 2, dtype=dtype)
    x = x + 0.5
    dy = rng.standard_normal((N, 5, 9, 8)).astype(dtype)
    dk_ref, _ = linear_maps(x.shape, np.zeros((5, 3, 3, 2)), (1, 1), (1, 1, 0, 1))
    ref = dk_ref(dy.astype(np.float64), x.astype(np.float64))
    for ns in (1, 2, 3, 5):
        monkeypatch.setattr(ops, "_KGRAD_SAMPLES", ns)
        results = []
        for n in (1, 2, 3):
            cnn_ext.set_num_threads(n)
            results.append(conv2d_kernel_gradient(dy, x, padding=((1, 1), (0, 1)), kernel_size=(3, 2),
                                                  method="direct"))
        assert_allclose(results[0], ref, **TOL[dtype])
        for other in results[1:]:
            assert_array_equal(results[0], other)


def test_tiled_kernel_gradient_refuses_a_short_slab():
    from cnn_ext import _conv

    x = np.zeros((4, 2, 6, 6), np.float32)
    dy = np.zeros((4, 3, 4, 4), np.float32)
    size = _conv.kgrad_wide_scratch_size(2, 3, 4, 4, 3, 3, True, False, 2)
    assert size > _conv.kgrad_wide_scratch_size(2, 3, 4, 4, 3, 3, True, False, 1)
    with pytest.raises(ValueError, match="too small for 2 samples"):
        _conv.conv2d_kernel_gradient_wide(dy, x, np.empty((3, 2, 3, 3), np.float32), np.empty((4, 54), np.float32),
                                          np.zeros((1, size - 1), np.float32), 0, 0, False, 4, 3, 2, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rotate_kernels_transposes_rotates_and_reports_nonfinite(dtype):
    from cnn_ext.ops import _conv

    k = np.arange(3 * 2 * 4 * 5, dtype=dtype).reshape(3, 2, 4, 5)
    rot = np.empty((2, 3, 4, 5), dtype)
    assert _conv.rotate_kernels(k, rot) is True
    assert_array_equal(rot, k[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
    for bad in (np.inf, -np.inf, np.nan):
        kb = k.copy()
        kb[2, 1, 3, 4] = bad  # the last element: every one is checked
        assert _conv.rotate_kernels(kb, rot) is False
        assert_array_equal(rot, kb[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def test_tiled_kernel_gradient_reads_strided_and_readonly_inputs():
    rng = np.random.default_rng(22)
    x, _, _, dy = data(rng, 5, 3, 6, 10, 9, 3, 3, dtype=np.float32)
    ref = conv2d_kernel_gradient(dy, x, method="direct")
    xf, dyr = np.asfortranarray(x), dy.copy()
    dyr.setflags(write=False)
    assert_array_equal(conv2d_kernel_gradient(dyr, xf, method="direct"), ref)
    big = np.zeros((5, 3, 20, 18), np.float32)
    big[:, :, ::2, ::2] = x
    assert_array_equal(conv2d_kernel_gradient(dy, big[:, :, ::2, ::2], method="direct"), ref)


def test_kernel_gradient_method_choice():
    from cnn_ext import ops

    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    tiled = ops._KGRAD_TILED
    # the tutorial's toy layer keeps the row loops; strided layers the GEMM
    assert ops._kgrad_method("auto", True, True, 16, 2, 2, 1, 4, 2, 2, f32) == "rows"
    assert ops._kgrad_method("auto", False, False, 16, 13, 13, 64, 64, 3, 3, f32) == "gemm"
    assert ops._kgrad_method("gemm", True, True, 16, 26, 26, 64, 64, 3, 3, f32) == "gemm"
    big = ops._kgrad_method("auto", True, True, 16, 26, 26, 64, 64, 3, 3, f32)
    few = ops._kgrad_method("auto", True, False, 16, 24, 24, 1, 4, 5, 5, f64)
    assert (big, few) == (("shifted", "row_tiles") if tiled else ("gemm", "gemm"))
    # one input channel: the output-rows layout on rows of whole vectors, else wide rows (any build)
    assert ops._kgrad_method("direct", True, False, 16, 24, 24, 1, 4, 5, 5, f32) == "row_tiles"
    assert ops._kgrad_method("direct", True, False, 16, 25, 25, 1, 4, 5, 5, f32) == "wide"
    # small maps with many channels: gemm (the tiled kernel's partials outgrow L2), unless forced
    assert ops._kgrad_method("auto", True, True, 16, 5, 5, 128, 128, 3, 3, f32) == "gemm"
    assert ops._kgrad_method("direct", True, True, 16, 5, 5, 128, 128, 3, 3, f32) == "shifted"
    assert ops._kgrad_method("auto", True, True, 16, 10, 10, 16, 16, 3, 3, f32) == ("wide" if tiled else "gemm")
    # several samples per pass (N = 64: chunks of 4) make a 14x14 plane's tiles long enough for the tiled
    # kernel; one sample per chunk (N = 16) leaves it to gemm
    assert ops._kgrad_method("auto", True, False, 64, 14, 14, 32, 64, 3, 3, f32) == ("shifted" if tiled else "gemm")
    assert ops._kgrad_method("auto", True, False, 16, 14, 14, 32, 64, 3, 3, f32) == "gemm"
    with pytest.raises(ValueError, match="method='direct' needs stride 1"):
        conv2d_kernel_gradient(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 5, 5)), stride=2, kernel_size=2,
                               method="direct")


WIDE_CASES = [
    # N, C_in, C_out, H, W, KH, KW, (top, bottom, left, right)
    ((2, 3, 5, 9, 7, 3, 2), (1, 0, 2, 1)),  # asymmetric padding, C_out = JB + 1
    ((1, 2, 3, 5, 30, 5, 3), (2, 2, 1, 1)),  # OW 30: rows across tile ends
    ((2, 1, 7, 3, 3, 3, 3), (0, 0, 0, 0)),  # kernel == input: one output per map
    ((2, 4, 2, 4, 5, 4, 5), (1, 2, 0, 3)),  # kernel == input, padded
    ((1, 3, 9, 6, 25, 1, 1), (0, 0, 0, 0)),  # 1x1 kernel (Wp = OW), 25 = 24 + 1
    ((2, 2, 4, 8, 23, 2, 2), (1, 1, 0, 0)),  # OW 23: just under a float32 tile
    ((1, 5, 13, 7, 5, 3, 3), (2, 0, 0, 2)),  # C_out 13, OW < one vector
    ((3, 6, 8, 11, 10, 3, 4), (0, 1, 3, 0)),  # C_out 2 * JB
    ((1, 40, 6, 5, 9, 2, 2), (1, 1, 1, 1)),  # C_in 40 > the input-channel block
    ((1, 1, 1, 1, 1, 1, 1), (0, 0, 0, 0)),
    ((1, 2, 3, 3, 4, 2, 2), (4, 3, 5, 0)),  # padding > kernel: tiles wholly inside the padding
    ((2, 3, 5, 4, 9, 1, 5), (0, 0, 4, 4)),  # no row padding: a row's reads run into the next row / channel
    ((1, 2, 6, 5, 8, 3, 5), (1, 1, 3, 1)),  # left and right paddings of different widths share slots
    ((2, 8, 4, 1, 1, 3, 3), (4, 4, 4, 4)),  # both paddings > kernel - 1: only KW - 1 slots shared
    ((1, 3, 5, 4, 6, 2, 3), (1, 2, 5, 3)),  # left 5, right 3 >= KW
    # channel-vector kernel (C_out a multiple of 16 float32 / 8 float64): rows of 1 to 6-pixel chunks
    ((2, 3, 16, 6, 7, 3, 3), (1, 1, 1, 1)),  # OW 7: chunks 4 + 3
    ((1, 16, 32, 5, 9, 3, 2), (0, 1, 2, 0)),  # dX with 16 output channels too
    ((2, 8, 8, 4, 13, 1, 3), (0, 0, 1, 1)),  # float64 tiles of 8; OW 13: 5 + 4 + 4
    ((1, 16, 16, 2, 2, 2, 2), (0, 0, 0, 0)),  # one output pixel
]


@pytest.mark.parametrize("shape,pad", WIDE_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block", [3, 32])
def test_wide_kernel_against_einsum(monkeypatch, shape, pad, dtype, block):
    """The wide-row forward and input gradient, with input channels in blocks of 3 or 32, both methods."""
    from cnn_ext import ops

    monkeypatch.setattr(ops, "_WIDE_IB", block)
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(sum(shape) + sum(pad))
    x, k, b, _ = data(rng, *shape, dtype=dtype)
    padding = ((pad[0], pad[1]), (pad[2], pad[3]))
    x64, k64, b64 = (a.astype(np.float64) for a in (x, k, b))
    ref = einsum_forward(x64, k64, b64, (1, 1), pad)
    dy = rng.standard_normal(ref.shape).astype(dtype)
    _, dx_ref = linear_maps(x.shape, k64, (1, 1), pad)
    ref_dx = dx_ref(dy.astype(np.float64))
    x0, k0, dy0 = x.copy(), k.copy(), dy.copy()
    dx_direct_ok = max(pad[:2]) <= KH - 1 and max(pad[2:]) <= KW - 1  # else dX 'direct' raises, 'auto' takes gemm
    for method in METHODS + ["auto"]:
        y = conv2d_forward(x, k, b, padding=padding, method=method)
        if method == "direct" and not dx_direct_ok:
            with pytest.raises(ValueError, match="padding <= kernel size - 1"):
                conv2d_input_gradient(dy, k, padding=padding, input_size=(H, W), method=method)
            dx = ref_dx.astype(dtype)
        else:
            dx = conv2d_input_gradient(dy, k, padding=padding, input_size=(H, W), method=method)
        assert y.dtype == dx.dtype == dtype
        assert_allclose(y, ref, **TOL[dtype])
        assert_allclose(dx, ref_dx, **TOL[dtype])
    y = np.empty_like(ref, dtype=dtype)  # the wide kernel itself, where 'direct' may take another one
    empty = np.empty
    with monkeypatch.context() as m:  # its work buffers poisoned: every output must be computed
        m.setattr(ops.np, "empty", lambda shape, dtype=float: np.full(shape, np.nan, dtype=dtype))
        ops._wide_run(x, k, b, y, pad[0], pad[2], 1, np.dtype(dtype))
    assert np.empty is empty
    assert_allclose(y, ref, **TOL[dtype])
    if C_out % cnn_ext.ops._conv.channel_tile(dtype == np.float32) == 0:  # the channel-vector kernel itself
        y = np.full_like(ref, np.nan, dtype=dtype)
        ops._channel_vector_run(x, k, b, y, pad[0], pad[2], 1, np.dtype(dtype))
        assert_allclose(y, ref, **TOL[dtype])
    for a, a0 in ((x, x0), (k, k0), (dy, dy0)):
        assert_array_equal(a, a0)


# The shifted-copies forward (KW shifted copies of the padded sample, row pitch OW): tiles of SJB = 4 channels x
# TB = 24 float32 / 12 float64 flat outputs accumulate straight into y; the tail of a plane (OH*OW not a whole
# number of tiles) goes through a staging tile. Cases: tails of every length, planes shorter than one vector,
# C_out off the tile, asymmetric padding, K = 1, kernel == input, input-channel blocks of 1 / 3 / 32.
SHIFT_CASES = WIDE_CASES[:11] + [
    ((2, 3, 6, 5, 5, 1, 1), (0, 0, 0, 0)),  # F = 25: one tile + a 1-output tail (float32)
    ((1, 2, 5, 2, 3, 2, 2), (0, 0, 0, 0)),  # F = 2 < one vector: only the tail
    ((2, 7, 3, 6, 9, 3, 3), (1, 1, 1, 1)),  # F = 54 = 2 * 24 + 6
    ((1, 33, 10, 7, 8, 3, 2), (2, 1, 0, 1)),  # 33 input channels: blocks 32 + 1 (and 11 x 3)
]


@pytest.mark.parametrize("shape,pad", SHIFT_CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("block", [1, 3, 32])
def test_shifted_kernel_against_einsum(monkeypatch, shape, pad, dtype, block):
    """The shifted-copies kernel itself, as the forward and as the input gradient (the forward of dE_dY padded by
    K-1-padding with the transposed, rotated kernels), with input channels in blocks of 1, 3 or 32."""
    from cnn_ext import ops

    monkeypatch.setattr(ops, "_SHIFT_IB", block)
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(sum(shape) + sum(pad) + 7)
    x, k, b, _ = data(rng, *shape, dtype=dtype)
    x64, k64, b64 = (a.astype(np.float64) for a in (x, k, b))
    ref = einsum_forward(x64, k64, b64, (1, 1), pad)
    x0, k0, b0 = x.copy(), k.copy(), b.copy()
    y = np.full_like(ref, np.nan, dtype=dtype)
    ops._shifted_run(x, k, b, y, pad[0], pad[2], 1, np.dtype(dtype))
    assert_allclose(y, ref, **TOL[dtype])
    for a, a0 in ((x, x0), (k, k0), (b, b0)):
        assert_array_equal(a, a0)
    if max(pad[:2]) <= KH - 1 and max(pad[2:]) <= KW - 1:
        dy = rng.standard_normal(ref.shape).astype(dtype)
        _, dx_ref = linear_maps(x.shape, k64, (1, 1), pad)
        k_rot = np.ascontiguousarray(k[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))
        dx = np.full((N, C_in, H, W), np.nan, dtype=dtype)
        ops._shifted_run(dy, k_rot, np.zeros(C_in, dtype=dtype), dx, KH - 1 - pad[0], KW - 1 - pad[2], 1,
                         np.dtype(dtype))
        assert_allclose(dx, dx_ref(dy.astype(np.float64)), **TOL[dtype])


@pytest.mark.parametrize("shape,pad", [((5, 33, 9, 13, 11, 3, 3), (1, 1, 1, 1)), ((4, 2, 5, 9, 31, 5, 5), (2, 0, 1, 3)),
                                       ((3, 4, 3, 20, 20, 1, 1), (0, 0, 0, 0))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_shifted_kernel_does_not_depend_on_thread_count(shape, pad, dtype):
    from cnn_ext import ops

    rng = np.random.default_rng(9)
    x, k, b, _ = data(rng, *shape, dtype=dtype)
    ref = einsum_forward(*(a.astype(np.float64) for a in (x, k, b)), (1, 1), pad)
    results = []
    for nt in (1, 2, 3):
        y = np.full_like(ref, np.nan, dtype=dtype)
        ops._shifted_run(x, k, b, y, pad[0], pad[2], nt, np.dtype(dtype))
        results.append(y)
    for other in results[1:]:
        assert_array_equal(results[0], other)
    assert_allclose(results[0], ref, **TOL[dtype])


def test_shifted_layout_choice():
    from cnn_ext import ops

    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    fast = ops._WIDE_FAST
    assert ops._shifted_better(16, 3, 3, f32) == fast  # 3x3 float32, one block of input channels: no waste wins
    assert not ops._shifted_better(64, 3, 3, f32)  # several blocks: y re-read per block, a tie with wide rows
    assert not ops._shifted_better(64, 3, 3, f64)  # float64, long reduction: L2 traffic eats the gain
    assert not ops._shifted_better(8, 7, 7, f32)  # 7x7: KH*KW streams per channel
    assert ops._shifted_better(1, 5, 5, f64) == fast  # short reduction
    assert ops._shift_ib(3, 3, f32) == 16 and ops._shift_ib(7, 7, f32) == 2 and ops._shift_ib(1, 1, f32) == 32
    assert ops._shift_ib(3, 3, f64) == 8 and ops._shift_ib(7, 7, f64) == 1


@pytest.mark.parametrize("shape", [(40, 5, 3, 12, 21, 3, 3), (24, 16, 16, 6, 7, 3, 3)])  # wide, channel-vector
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direct_padded_forward_and_input_gradient_do_not_depend_on_thread_count(shape, dtype, restore_threads):
    rng = np.random.default_rng(6)
    x, k, b, dy = data(rng, *shape, dtype=dtype)
    results = []
    for n in (1, 2, 3):
        cnn_ext.set_num_threads(n)
        results.append((conv2d_forward(x, k, b, padding=1, method="direct"),
                        conv2d_input_gradient(dy, k, method="direct")))
    for other in results[1:]:
        assert_array_equal(results[0][0], other[0])
        assert_array_equal(results[0][1], other[1])
    assert_allclose(results[0][1], scipy_input_gradient(dy.astype(np.float64), k.astype(np.float64)), **TOL[dtype])


def test_kernel_gradient_is_not_the_tutorials_rotated_one():
    """SciPy swaps correlate2d's operands when the first is smaller: the tutorial's call is rot180 of ours."""
    rng = np.random.default_rng(1)
    x, k, b, dy = data(rng, 1, 1, 1, 6, 6, 3, 3)
    tutorial = signal.correlate2d(dy[0, 0], x[0, 0], mode="valid")
    dk = conv2d_kernel_gradient(dy, x)[0, 0]
    assert_allclose(dk, tutorial[::-1, ::-1], rtol=1e-12)
    assert not np.allclose(dk, tutorial)


CONFIGS = [
    # shape, stride, padding argument, expected (top, bottom, left, right)
    ((2, 3, 4, 9, 8, 3, 3), (2, 2), 0, (0, 0, 0, 0)),
    ((2, 3, 4, 9, 8, 3, 2), (1, 1), 1, (1, 1, 1, 1)),
    ((2, 2, 3, 7, 10, 3, 3), (2, 3), (1, 2), (1, 1, 2, 2)),
    ((1, 2, 2, 6, 6, 4, 4), (1, 1), "same", (1, 2, 1, 2)),
    ((3, 1, 2, 5, 7, 3, 5), (1, 1), "same", (1, 1, 2, 2)),
    ((2, 2, 2, 8, 8, 2, 2), (3, 2), ((0, 1), (2, 0)), (0, 1, 2, 0)),
    ((2, 16, 8, 7, 7, 3, 3), (2, 2), 1, (1, 1, 1, 1)),
]


@pytest.mark.parametrize("shape,stride,padding,pad", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stride_and_padding_against_einsum(shape, stride, padding, pad, dtype):
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(7)
    x, k, b, _ = data(rng, *shape, dtype=dtype)
    ref_y = einsum_forward(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64), stride, pad)
    y = conv2d_forward(x, k, b, stride=stride, padding=padding)
    assert y.shape == ref_y.shape == (N, C_out) + cnn_ext.conv2d_output_shape((H, W), (KH, KW), stride, padding)
    assert_allclose(y, ref_y, **TOL[dtype])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dk_ref, dx_ref = linear_maps(x.shape, k.astype(np.float64), stride, pad)
    dk = conv2d_kernel_gradient(dy, x, stride=stride, padding=padding, kernel_size=(KH, KW))
    dx = conv2d_input_gradient(dy, k, stride=stride, padding=padding, input_size=(H, W))
    assert_allclose(dk, dk_ref(dy.astype(np.float64), x.astype(np.float64)), **TOL[dtype])
    assert_allclose(dx, dx_ref(dy.astype(np.float64)), **TOL[dtype])


def test_stride_one_sizes_are_derived():
    rng = np.random.default_rng(3)
    x, k, b, _ = data(rng, 2, 2, 3, 7, 6, 3, 2)
    y = conv2d_forward(x, k, b, padding=1)
    dy = rng.standard_normal(y.shape)
    assert conv2d_kernel_gradient(dy, x, padding=1).shape == k.shape
    assert conv2d_input_gradient(dy, k, padding=1).shape == x.shape


# ---------------------------------------------------------------------------------------------
# gradients by central differences (float64), with the 1/N convention for dK and dB
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stride,padding", [((1, 1), 0), ((2, 1), 1)])
def test_finite_differences(method, stride, padding):
    if method == "direct" and (stride != (1, 1) or padding != 0):
        method = "gemm"
    rng = np.random.default_rng(11)
    N, C_in, C_out, H, W, KH, KW = 3, 2, 3, 6, 5, 3, 2
    x, k, b, _ = data(rng, N, C_in, C_out, H, W, KH, KW)
    kw = dict(stride=stride, padding=padding)
    R = rng.standard_normal(conv2d_forward(x, k, b, **kw).shape)

    def loss(x_, k_, b_):  # E = Σ R ⊙ y, so dE/dY = R
        return float(np.sum(R * conv2d_forward(x_, k_, b_, method=method, **kw)))

    def numeric(f, a):
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            ap, am = a.copy(), a.copy()
            ap[idx] += 1e-6
            am[idx] -= 1e-6
            g[idx] = (f(ap) - f(am)) / 2e-6
        return g

    dk = conv2d_kernel_gradient(R, x, kernel_size=(KH, KW), method=method, **kw)
    db = conv2d_bias_gradient(R)
    dx = conv2d_input_gradient(R, k, input_size=(H, W), method=method, **kw)
    assert_allclose(N * dk, numeric(lambda a: loss(x, a, b), k), rtol=1e-6, atol=1e-7)
    assert_allclose(N * db, numeric(lambda a: loss(x, k, a), b), rtol=1e-6, atol=1e-7)
    assert_allclose(dx, numeric(lambda a: loss(a, k, b), x), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# property-based: random shapes, both methods agree with the einsum reference
# ---------------------------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    N = draw(st.integers(1, 4))
    C_in, C_out = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(KH, KH + 6)), draw(st.integers(KW, KW + 6))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pad = tuple(draw(st.integers(0, 2)) for _ in range(4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return N, C_in, C_out, H, W, KH, KW, (SH, SW), pad, dtype


@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_random_shapes(case):
    N, C_in, C_out, H, W, KH, KW, stride, pad, dtype = case
    rng = np.random.default_rng(N * 1000 + C_in * 100 + C_out)
    x, k, b, _ = data(rng, N, C_in, C_out, H, W, KH, KW, dtype=dtype)
    padding = ((pad[0], pad[1]), (pad[2], pad[3]))
    y = conv2d_forward(x, k, b, stride=stride, padding=padding)
    ref = einsum_forward(*(a.astype(np.float64) for a in (x, k, b)), stride, pad)
    assert_allclose(y, ref, **TOL[dtype])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dk_ref, dx_ref = linear_maps(x.shape, k.astype(np.float64), stride, pad)
    kw = dict(stride=stride, padding=padding)
    assert_allclose(conv2d_kernel_gradient(dy, x, kernel_size=(KH, KW), **kw),
                    dk_ref(dy.astype(np.float64), x.astype(np.float64)), **TOL[dtype])
    assert_allclose(conv2d_input_gradient(dy, k, input_size=(H, W), **kw), dx_ref(dy.astype(np.float64)),
                    **TOL[dtype])
    if stride == (1, 1) and pad == (0, 0, 0, 0):  # the direct path too
        assert_allclose(conv2d_forward(x, k, b, method="direct"), y, **TOL[dtype])
        assert_allclose(conv2d_kernel_gradient(dy, x, method="direct"), conv2d_kernel_gradient(dy, x, method="gemm"),
                        **TOL[dtype])
        assert_allclose(conv2d_input_gradient(dy, k, method="direct"), conv2d_input_gradient(dy, k, method="gemm"),
                        **TOL[dtype])


# ---------------------------------------------------------------------------------------------
# layouts, dtypes, special values
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_strided_fortran_readonly_inputs_are_accepted_and_untouched(method):
    rng = np.random.default_rng(5)
    x, k, b, dy = data(rng, 4, 2, 3, 9, 8, 3, 2)
    expected = (conv2d_forward(x, k, b, method=method), conv2d_kernel_gradient(dy, x, method=method),
                conv2d_bias_gradient(dy), conv2d_input_gradient(dy, k, method=method))
    big = np.zeros((8, 2, 18, 16))
    big[::2, :, ::2, ::2] = x
    xs = big[::2, :, ::2, ::2]  # strided view
    kf = np.asfortranarray(k)
    bs = np.repeat(b, 2)[::2]
    dyr = dy.copy()
    for a in (xs, kf, bs, dyr):
        a.flags.writeable = False
    snapshots = [a.copy() for a in (xs, kf, bs, dyr)]
    got = (conv2d_forward(xs, kf, bs, method=method), conv2d_kernel_gradient(dyr, xs, method=method),
           conv2d_bias_gradient(dyr), conv2d_input_gradient(dyr, kf, method=method))
    for g, e in zip(got, expected):
        assert_allclose(g, e, rtol=1e-12, atol=1e-12)
    for a, s in zip((xs, kf, bs, dyr), snapshots):
        assert_array_equal(a, s)


def test_inputs_are_never_modified():
    rng = np.random.default_rng(6)
    for shape in SHAPES[:3] + SHAPES[-1:]:
        x, k, b, dy = data(rng, *shape)
        arrays = (x, k, b, dy)
        before = [a.copy() for a in arrays]
        for m in METHODS:
            conv2d_forward(x, k, b, method=m)
            conv2d_kernel_gradient(dy, x, method=m)
            conv2d_input_gradient(dy, k, method=m)
        conv2d_bias_gradient(dy)
        for a, s in zip(arrays, before):
            assert_array_equal(a, s)


def test_integer_bool_and_mixed_dtypes():
    rng = np.random.default_rng(8)
    x = rng.integers(-3, 4, size=(2, 1, 5, 5))
    k = rng.integers(-2, 3, size=(2, 1, 2, 2)).astype(np.int32)
    b = np.array([True, False])
    y = conv2d_forward(x, k, b)
    assert y.dtype == np.float64
    assert_allclose(y, scipy_forward(x.astype(float), k.astype(float), b.astype(float)))
    y32 = conv2d_forward(x.astype(np.float32), k.astype(np.float32), b.astype(np.float32))
    assert y32.dtype == np.float32
    assert conv2d_forward(x.astype(np.float32), k.astype(np.float64), b).dtype == np.float64
    assert conv2d_bias_gradient(np.ones((2, 3, 2, 2), dtype=np.int8)).dtype == np.float64
    # nested lists work like arrays
    assert_allclose(conv2d_forward(x.tolist(), k.tolist(), b.tolist()), y)


@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_propagate(method):
    rng = np.random.default_rng(9)
    x, k, b, dy = data(rng, 2, 2, 2, 6, 6, 3, 3)
    x[0, 0, 2, 2] = np.nan
    x[1, 1, 0, 0] = np.inf
    y = conv2d_forward(x, k, b, method=method)
    assert np.isnan(y[0, :, 0:3, 0:3]).all() and np.isfinite(y[0, :, 3:, 3:]).all()
    assert not np.isfinite(y[1, :, 0, 0]).any()
    assert np.isfinite(y[1, :, 1:, 1:]).all()
    dk = conv2d_kernel_gradient(dy, x, method=method)
    assert np.isnan(dk).any()
    dy[0, 1, 1, 1] = np.nan
    dx = conv2d_input_gradient(dy, k, method=method)
    assert np.isnan(dx[0, :, 1:4, 1:4]).all() and np.isfinite(dx[1]).all()
    assert np.isnan(conv2d_bias_gradient(dy)[1]) and np.isfinite(conv2d_bias_gradient(dy)[0])


def test_empty_batch():
    k = np.ones((3, 2, 2, 2))
    x = np.zeros((0, 2, 5, 4))
    assert conv2d_forward(x, k, np.zeros(3)).shape == (0, 3, 4, 3)
    dy = np.zeros((0, 3, 4, 3))
    assert_array_equal(conv2d_kernel_gradient(dy, x), np.zeros((3, 2, 2, 2)))
    assert_array_equal(conv2d_bias_gradient(dy), np.zeros(3))
    assert conv2d_input_gradient(dy, k).shape == (0, 2, 5, 4)


# ---------------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(method, dtype, restore_threads):
    rng = np.random.default_rng(12)
    x, k, b, dy = data(rng, 37, 3, 4, 12, 11, 3, 3, dtype=dtype)
    results = []
    for n in (1, 2, 3):
        cnn_ext.set_num_threads(n)
        results.append((conv2d_forward(x, k, b, method=method), conv2d_kernel_gradient(dy, x, method=method),
                        conv2d_bias_gradient(dy), conv2d_input_gradient(dy, k, method=method)))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert_array_equal(a, c)  # bitwise: fixed reduction order


def test_set_num_threads_validation(restore_threads):
    with pytest.raises(ValueError, match="n must be >= 1"):
        cnn_ext.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        cnn_ext.set_num_threads(1.5)
    prev = cnn_ext.set_num_threads(1)
    assert cnn_ext.get_num_threads() == 1
    assert prev >= 1


@pytest.mark.parametrize("method", METHODS)
def test_concurrent_python_threads_match_serial(method, restore_threads):
    rng = np.random.default_rng(13)
    cases = [data(rng, 8, 3, 4, 16, 15, 3, 3) for _ in range(6)]

    def run(case):
        x, k, b, dy = case
        return (conv2d_forward(x, k, b, method=method), conv2d_kernel_gradient(dy, x, method=method),
                conv2d_input_gradient(dy, k, method=method))

    serial = [run(c) for c in cases]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(run, cases * 3))
    for got, exp in zip(parallel, serial * 3):
        for a, e in zip(got, exp):
            assert_array_equal(a, e)


def test_kernels_release_the_gil(restore_threads):
    """While one thread is inside a long kernel call, another Python thread keeps running."""
    cnn_ext.set_num_threads(1)
    rng = np.random.default_rng(14)
    x, k, b, _ = data(rng, 64, 8, 4, 96, 96, 7, 7)  # ~50 ms: the register-tiled direct loops are fast
    ticks, window = [], {}
    done = threading.Event()

    def worker():
        window["start"] = time.perf_counter()
        conv2d_forward(x, k, b, method="direct")
        window["end"] = time.perf_counter()
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
        time.sleep(0.001)
    t.join()
    duration = window["end"] - window["start"]
    inside = [s for s in ticks if window["start"] + 0.2 * duration < s < window["end"] - 0.2 * duration]
    assert duration > 0.02, "kernel too fast to observe; enlarge the case"
    assert len(inside) >= 3, f"main thread ran {len(inside)} times during a {duration * 1e3:.0f} ms kernel call"


# ---------------------------------------------------------------------------------------------
# bad input: clear errors naming the argument and the shapes
# ---------------------------------------------------------------------------------------------

X = np.zeros((2, 3, 8, 8))
K = np.zeros((4, 3, 3, 3))
B = np.zeros(4)
DY = np.zeros((2, 4, 6, 6))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: conv2d_forward(X[0], K, B), ValueError, r"x must be 4-D .*\(3, 8, 8\)"),
    (lambda: conv2d_forward(X, K[0], B), ValueError, r"kernels must be 4-D"),
    (lambda: conv2d_forward(X, K, B[:, None]), ValueError, r"bias must be 1-D"),
    (lambda: conv2d_forward(X, np.zeros((4, 2, 3, 3)), B), ValueError, r"x has 3 channels .* kernels expect 2"),
    (lambda: conv2d_forward(X, K, np.zeros(5)), ValueError, r"bias has 5 entries .* 4 output channels"),
    (lambda: conv2d_forward(X, np.zeros((4, 3, 9, 3)), B), ValueError, r"kernels .* larger than x"),
    (lambda: conv2d_forward(X, np.zeros((4, 3, 0, 3)), B), ValueError, r"kernels must not be empty"),
    (lambda: conv2d_forward(X, np.zeros((0, 3, 3, 3)), np.zeros(0)), ValueError, r"kernels must not be empty"),
    (lambda: conv2d_forward(X.astype(complex), K, B), TypeError, r"x must hold real numbers .*complex"),
    (lambda: conv2d_forward(X, K.astype(str), B), TypeError, r"kernels must hold real numbers"),
    (lambda: conv2d_forward(X, K, np.array([None] * 4)), TypeError, r"bias must hold real numbers"),
    (lambda: conv2d_forward(None, K, B), TypeError, r"x must be an array of numbers, got None"),
    (lambda: conv2d_forward([[1, 2], [3]], K, B), ValueError, r"x could not be converted"),
    (lambda: conv2d_forward(X, K, B, stride=0), ValueError, r"stride must be >= 1"),
    (lambda: conv2d_forward(X, K, B, stride=1.5), TypeError, r"stride must be an int or a pair"),
    (lambda: conv2d_forward(X, K, B, stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair"),
    (lambda: conv2d_forward(X, K, B, padding=-1), ValueError, r"padding must be >= 0"),
    (lambda: conv2d_forward(X, K, B, padding="full"), ValueError, r"padding must be 'valid', 'same'"),
    (lambda: conv2d_forward(X, K, B, stride=2, padding="same"), ValueError, r"padding='same' needs stride 1"),
    (lambda: conv2d_forward(X, K, B, method="fft"), ValueError, r"method must be one of"),
    (lambda: conv2d_forward(X, K, B, stride=2, method="direct"), ValueError, r"method='direct' needs stride 1"),
    (lambda: conv2d_kernel_gradient(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 5, 5)), stride=2, kernel_size=2,
                                    method="direct"), ValueError, r"method='direct' needs stride 1"),
    (lambda: conv2d_input_gradient(DY, K, padding=((0, 3), (0, 0)), method="direct"), ValueError,
     r"method='direct' needs stride 1 and padding <= kernel size - 1"),
    (lambda: conv2d_input_gradient(DY, K, stride=2, input_size=(13, 13), method="direct"), ValueError,
     r"method='direct' needs stride 1"),
    (lambda: conv2d_kernel_gradient(DY, X[:1]), ValueError, r"dE_dY has batch size 2 .* x has 1"),
    (lambda: conv2d_kernel_gradient(DY[..., 0], X), ValueError, r"dE_dY must be 4-D"),
    (lambda: conv2d_kernel_gradient(np.zeros((2, 4, 9, 6)), X), ValueError, r"dE_dY .* larger than x"),
    (lambda: conv2d_kernel_gradient(DY, X, stride=2), ValueError, r"kernel_size is required"),
    (lambda: conv2d_kernel_gradient(DY, X, kernel_size=2), ValueError, r"dE_dY has spatial shape \(6, 6\)"),
    (lambda: conv2d_kernel_gradient(DY, np.zeros((2, 0, 8, 8))), ValueError, r"at least one channel"),
    (lambda: conv2d_kernel_gradient(DY.astype(np.complex64), X), TypeError, r"dE_dY must hold real numbers"),
    (lambda: conv2d_bias_gradient(DY[0]), ValueError, r"dE_dY must be 4-D"),
    (lambda: conv2d_bias_gradient("abc"), TypeError, r"dE_dY must hold real numbers"),
    (lambda: conv2d_input_gradient(DY, np.zeros((5, 3, 3, 3))), ValueError,
     r"dE_dY has 4 channels .* kernels have 5 output channels"),
    (lambda: conv2d_input_gradient(DY, K[:, :, :0]), ValueError, r"kernels must not be empty"),
    (lambda: conv2d_input_gradient(DY, K, input_size=(9, 9)), ValueError, r"dE_dY has spatial shape \(6, 6\)"),
    (lambda: conv2d_input_gradient(np.zeros((2, 4, 0, 6)), K), ValueError, r"non-empty spatial shape"),
    (lambda: conv2d_input_gradient(DY, K, padding=5), ValueError, r"gives no valid input size"),
    (lambda: conv2d_forward(X, K, B.astype(np.longdouble)), TypeError, r"without loss"),
])
def test_bad_input_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_output_shape_formula():
    assert cnn_ext.conv2d_output_shape((28, 28), 5) == (24, 24)
    assert cnn_ext.conv2d_output_shape((28, 27), (3, 2), stride=2, padding=1) == (14, 14)
    assert cnn_ext.conv2d_output_shape((7, 7), 3, padding="same") == (7, 7)


@pytest.mark.parametrize("block", [1, 5, 13])
@pytest.mark.parametrize("shape,stride,padding,pad", CONFIGS[:4] + CONFIGS[-1:])
def test_gemm_pixel_blocks(monkeypatch, block, shape, stride, padding, pad):
    """im2col/col2im over blocks of output pixels that cut rows anywhere give the same result."""
    from cnn_ext import ops

    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(block)
    x, k, b, _ = data(rng, *shape)
    kw = dict(stride=stride, padding=padding, method="gemm")
    y_ref = conv2d_forward(x, k, b, **kw)
    dy = rng.standard_normal(y_ref.shape)
    dk_ref = conv2d_kernel_gradient(dy, x, kernel_size=(KH, KW), **kw)
    dx_ref = conv2d_input_gradient(dy, k, input_size=(H, W), **kw)
    itemsize = 8
    monkeypatch.setattr(ops, "_COLS_BLOCK_BYTES", block * C_in * KH * KW * itemsize)
    monkeypatch.setattr(ops, "_MIN_BLOCK", 1)
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
    from cnn_ext import ops

    rng = np.random.default_rng(block)
    x, k, b, _ = data(rng, 2, 3, 2, 6, 5, 3, 4)
    padding = ((pad[0], pad[1]), (pad[2], pad[3]))
    kw = dict(stride=stride, padding=padding, method="gemm")
    y_ref = einsum_forward(x, k, b, ops._ints(stride, "stride", 1), pad)
    dy = rng.standard_normal(y_ref.shape)
    dk_ref = conv2d_kernel_gradient(dy, x, kernel_size=(3, 4), **kw)  # whole-image blocks
    dx_ref = conv2d_input_gradient(dy, k, input_size=(6, 5), **kw)
    guards = []
    scratch = ops._scratch

    def guarded(*args):
        s = scratch(*args)
        big = np.full((s.shape[0], s.shape[1] + 64), 7.0, dtype=s.dtype)
        guards.append(big)
        return big[:, :s.shape[1]]

    monkeypatch.setattr(ops, "_scratch", guarded)
    monkeypatch.setattr(ops, "_COLS_BLOCK_BYTES", block * 3 * 3 * 4 * 8)
    monkeypatch.setattr(ops, "_MIN_BLOCK", 1)
    assert_allclose(conv2d_forward(x, k, b, **kw), y_ref, **TOL[np.float64])
    assert_allclose(conv2d_kernel_gradient(dy, x, kernel_size=(3, 4), **kw), dk_ref, rtol=1e-12, atol=1e-12)
    assert_allclose(conv2d_input_gradient(dy, k, input_size=(6, 5), **kw), dx_ref, rtol=1e-12, atol=1e-12)
    assert len(guards) == 3
    for big in guards:
        assert (big[:, -64:] == 7.0).all()


def test_small_calls_stay_on_one_thread(monkeypatch):
    """A parallel region costs more than tiny work: the thread count follows the work."""
    from cnn_ext import ops

    monkeypatch.setattr(ops, "get_num_threads", lambda: 4)
    monkeypatch.setattr(ops, "_MIN_WORK_PER_THREAD", 1000)
    assert ops._threads(16, 999) == 1
    assert ops._threads(16, 2500) == 2
    assert ops._threads(3, 10**9) == 3
    assert ops._threads(16, 10**9) == 4
    assert ops._threads(0, 0) == 1


@pytest.mark.parametrize("case,forward,dx", [
    ((16, 1, 4, 3, 3, 2, 2), "direct", "direct"),  # the tutorial's toy layer
    # small maps, many channels: the wide forward wins (AVX2 build), its dX loses
    ((8, 128, 128, 7, 7, 3, 3), None, "gemm"),
    ((16, 8, 8, 6, 6, 3, 3), None, None),  # forward: the wide kernel where the build has it
])
def test_auto_method_choice(case, forward, dx):
    """Forward and input gradient; the kernel gradient's choice is tested with its tiled kernel above."""
    from cnn_ext import ops

    N, C_in, C_out, H, W, KH, KW = case
    OH, OW = H - KH + 1, W - KW + 1
    if forward is None and ops._WIDE_FAST:
        forward = "direct"
    if forward is not None:
        assert ops._wide_method("auto", True, "", N, C_in, C_out, H, W, KH, KW, OH, OW, np.dtype(np.float64),
                                grad=False) == forward
    if dx is not None:
        assert ops._wide_method("auto", True, "", N, C_in, C_out, H, W, KH, KW, OH, OW, np.dtype(np.float64),
                                grad=True) == dx
    assert ops._wide_method("auto", False, "", N, C_in, C_out, H, W, KH, KW, OH, OW, np.dtype(np.float64),
                            grad=True) == "gemm"  # strided


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_gradient_lane_tails_and_threads(monkeypatch, restore_threads, dtype):
    """Planes shorter than, equal to and around the 8-vector lane block, channels split over 1-3 threads:
    equal to a float64 sum, and bitwise the same whatever the thread count."""
    from cnn_ext import ops

    monkeypatch.setattr(ops, "_MIN_WORK_PER_THREAD", 1)
    monkeypatch.setattr(ops, "_BIAS_MIN_PER_THREAD", 1)
    rng = np.random.default_rng(5)
    lanes = ops._conv.SUM_LANES
    for OH, OW in [(1, 1), (1, lanes - 1), (1, lanes), (1, lanes + 1), (8, 8), (13, 11), (24, 24), (3, 2 * lanes + 5)]:
        for C in (1, 2, 5):
            dy = rng.standard_normal((7, C, OH, OW)).astype(dtype)
            before = dy.copy()
            expected = dy.astype(np.float64).sum(axis=(0, 2, 3)) / 7
            got = []
            for n in (1, 2, 3):
                cnn_ext.set_num_threads(n)
                got.append(conv2d_bias_gradient(dy))
                assert got[-1].dtype == dtype
                assert_allclose(got[-1], expected, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-5)
            for other in got[1:]:
                assert_array_equal(got[0], other)
            assert_array_equal(dy, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(16, 2304, 256), (16, 256, 2304), (3, 5, 7), (1, 1, 1), (4, 0, 3)])
def test_dense_matmul_split_over_threads(monkeypatch, restore_threads, dtype, M, K, N):
    """ops._matmul (the Dense layers' product) equals NumPy's for every transpose and thread count."""
    from cnn_ext import ops

    monkeypatch.setattr(ops, "_MATMUL_WORK_FACTOR", 1)
    rng = np.random.default_rng(M + K + N)
    for trans_a in (False, True):
        for trans_b in (False, True):
            a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
            b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
            expected = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
            results = []
            for n in (1, 2, 3):
                cnn_ext.set_num_threads(n)
                got = ops._matmul(a, b, trans_a, trans_b)
                assert got.shape == (M, N) and got.dtype == dtype
                assert_allclose(got, expected, rtol=1e-4 if dtype == np.float32 else 1e-12,
                                atol=1e-3 if dtype == np.float32 else 1e-10)
                results.append(got)
            for other in results[1:]:  # bitwise the same on any thread count
                assert_array_equal(results[0], other)
    # a strided operand is copied, not misread
    a = rng.standard_normal((M, 2 * K)).astype(dtype)[:, ::2]
    b = rng.standard_normal((K, N)).astype(dtype)
    assert_allclose(ops._matmul(a, b), a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [0, 1])
def test_kernel_gradient_inf_in_x_only_reaches_its_taps(dtype, padding):
    """An inf in x makes the taps that meet it non-finite, and no others, whatever the method (the tiled
    layouts multiply zeros by x values a tap does not reach; they must not leak)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 20, 20)).astype(dtype)
    x[1, 0, 5, 19] = np.inf  # last column: reached only by the last kernel column (unpadded)
    x[2, 1, 19, 0] = -np.inf
    dy = rng.standard_normal((3, 5, 20 + 2 * padding - 2, 20 + 2 * padding - 2)).astype(dtype)
    ref = conv2d_kernel_gradient(dy, x, padding=padding, method="gemm")
    assert np.isfinite(ref).sum() > 0 and (~np.isfinite(ref)).sum() > 0
    for method in ("auto", "direct"):
        got = conv2d_kernel_gradient(dy, x, padding=padding, method=method)
        assert_array_equal(np.isfinite(got), np.isfinite(ref))
        fin = np.isfinite(ref)
        assert_allclose(got[fin], ref[fin], rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,padding", [((1, 1, 1, 8, 8, 3, 3), 0), ((2, 3, 4, 9, 7, 3, 2), 0),
                                           ((2, 16, 16, 6, 6, 3, 3), 1), ((16, 1, 4, 28, 28, 5, 5), 2)])
def test_input_gradient_nonfinite_kernel_only_reaches_its_products(dtype, shape, padding):
    """dX = Σ_j conv_full(dE_dY[n, j], k[j, i]) has no product with padding: an inf / NaN in the kernels makes
    exactly the outputs it is multiplied into non-finite (found by an audit: the direct kernels, which pad
    dE_dY by K-1 with zeros, gave NaN at 32 outputs where there are none)."""
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(sum(shape))
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    k[0, 0, 0, 0] = np.inf
    k[-1, -1, -1, 1] = np.nan
    OH, OW = H + 2 * padding - KH + 1, W + 2 * padding - KW + 1
    dy = rng.uniform(0.5, 1.5, (N, C_out, OH, OW)).astype(dtype)  # > 0: inf * dy stays +inf
    ref = np.zeros((N, C_in, H + 2 * padding, W + 2 * padding))  # the products, one by one
    for kh in range(KH):
        for kw in range(KW):
            ref[:, :, kh:kh + OH, kw:kw + OW] += np.einsum("njpq,ji->nipq", dy.astype(np.float64),
                                                           k[:, :, kh, kw].astype(np.float64))
    ref = ref[:, :, padding:padding + H, padding:padding + W]
    assert np.isnan(ref).any() and np.isinf(ref).any() and np.isfinite(ref).any()
    for method in ("auto", "direct", "gemm"):
        got = conv2d_input_gradient(dy, k, padding=padding, method=method)
        assert_array_equal(np.isnan(got), np.isnan(ref))
        assert_array_equal(np.isposinf(got), np.isposinf(ref))
        fin = np.isfinite(ref)
        assert_allclose(got[fin], ref[fin], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    # N, C_in, C_out, H, W, KH, KW, padding: one output channel left in the wide kernel (the forward's C_out,
    # the input gradient's C_in), planes shorter and longer than its WJB-tile run, several input-channel blocks
    (3, 1, 4, 28, 28, 5, 5, 0),    # the tutorial's layer: dX has one output channel
    (2, 1, 40, 9, 13, 3, 2, 0),    # dX of one channel summing 40 (two input-channel blocks)
    (2, 3, 1, 30, 31, 3, 3, 1),    # forward with one output channel, padded
    (2, 2, 5, 17, 6, 2, 3, 0),     # last channel block of the forward holds one channel
    (1, 1, 1, 4, 4, 2, 2, 0),      # a plane smaller than one tile run
])
def test_wide_kernel_single_output_channel_runs(dtype, case):
    N, C_in, C_out, H, W, KH, KW, pad = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    y = conv2d_forward(x, k, b, padding=pad, method="direct")
    assert_allclose(y, conv2d_forward(x, k, b, padding=pad, method="gemm"), **TOL[dtype])
    assert_allclose(y, einsum_forward(*(a.astype(np.float64) for a in (x, k, b)), (1, 1), (pad,) * 4), **TOL[dtype])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = conv2d_input_gradient(dy, k, padding=pad, method="direct")
    assert_allclose(dx, conv2d_input_gradient(dy, k, padding=pad, method="gemm"), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,padding", [((2, 3, 4, 10, 9, 3, 3), 1), ((2, 16, 32, 8, 8, 3, 3), 1),
                                           ((16, 1, 4, 28, 28, 5, 5), 2), ((2, 2, 3, 12, 12, 3, 3), (2, 0)),
                                           ((2, 8, 16, 20, 20, 5, 5), "same")])
def test_forward_nonfinite_kernel_with_padding_reaches_every_output(dtype, shape, padding):
    """With zero padding every output multiplies every tap, the padded positions by 0: an inf or NaN tap makes
    its whole output channel non-finite (0 * inf = NaN), as im2col and PyTorch give. The direct kernels skip
    the products of kernel rows that meet only padding; found by a QA pass (the shifted-copies kernel left 6
    of 9 outputs of a row finite): such layers are computed the im2col way."""
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.uniform(0.5, 1.5, (N, C_in, H, W)).astype(dtype)  # > 0: inf * x stays +inf
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    k[0, 0, 0, 0] = np.inf
    k[-1, -1, -1, 1] = np.nan
    top, bottom, left, right = ops._padding(padding, KH, KW, (1, 1))
    ref = einsum_forward(x.astype(np.float64), k.astype(np.float64), b.astype(np.float64),
                         pad=(top, bottom, left, right))
    assert np.isnan(ref[:, -1]).all() and not np.isfinite(ref[:, 0]).any()
    for method in ("auto", "direct", "gemm"):
        got = conv2d_forward(x, k, b, padding=padding, method=method)
        assert_array_equal(np.isnan(got), np.isnan(ref))
        assert_array_equal(np.isinf(got), np.isinf(ref))
        fin = np.isfinite(ref)
        assert_allclose(got[fin], ref[fin], **TOL[dtype])


def test_all_finite():
    for dtype in (np.float32, np.float64):
        a = np.arange(7, dtype=dtype)
        assert ops._conv.all_finite(a) is True and ops._conv.all_finite(a[:0]) is True
        for bad in (np.inf, -np.inf, np.nan):
            b = a.copy()
            b[6] = bad
            assert ops._conv.all_finite(b) is False


@pytest.mark.parametrize("padding", [((1, 0), (0,)), ((1, 0), (0, 1, 2)), ((1,), (0, 1))])
def test_misshapen_nested_padding_is_a_value_error(padding):
    x, k, b = np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros(1)
    with pytest.raises(ValueError, match="padding"):
        conv2d_forward(x, k, b, padding=padding)


SLAB_KERNELS = ("conv2d_forward_band", "conv2d_forward_rows_padded", "conv2d_forward_wide", "conv2d_forward_cv")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_slab_kernels_zero_their_own_slabs(monkeypatch, restore_threads, dtype):
    """The padded-slab kernels (row bands, padded row tiles, wide rows, channel vectors) get uninitialised slabs
    and zero them in their own threads: slabs full of NaN must not change a single result."""
    ran = set()
    for name in SLAB_KERNELS:
        kernel = ops._TYPED[name][np.dtype(dtype)]

        def record(*args, _name=name, _kernel=kernel):
            ran.add(_name)
            return _kernel(*args)

        monkeypatch.setitem(ops._TYPED[name], np.dtype(dtype), record)
    cases = [  # N, C_in, C_out, H, K, padding
        (16, 1, 4, 28, 5, 0),     # the tutorial's layer: its dX takes the row bands
        (3, 1, 4, 22, 3, "same"),  # one input channel, padded: the padded row tiles
        (4, 8, 16, 10, 3, 1),     # channel vectors
        (2, 3, 5, 12, 3, 1),      # wide rows
        (5, 2, 3, 9, 4, ((2, 0), (1, 3))),
    ]
    rng = np.random.default_rng(7)
    for nt in (1, 2):
        cnn_ext.set_num_threads(nt)
        for N, C_in, C_out, H, K, padding in cases:
            x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
            k = rng.standard_normal((C_out, C_in, K, K)).astype(dtype)
            b = rng.standard_normal(C_out).astype(dtype)
            y_ref = conv2d_forward(x, k, b, padding=padding, method="gemm")
            dy = rng.standard_normal(y_ref.shape).astype(dtype)
            dx_ref = conv2d_input_gradient(dy, k, padding=padding, input_size=(H, H), method="gemm")
            with monkeypatch.context() as m:
                m.setattr(ops, "_thread_slabs", lambda shape, dt: np.full(shape, np.nan, dt))
                y = conv2d_forward(x, k, b, padding=padding, method="direct")
                dx = conv2d_input_gradient(dy, k, padding=padding, input_size=(H, H), method="direct")
            tol = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-5, atol=2e-4)
            assert_allclose(y, y_ref, **tol, err_msg=str((N, C_in, C_out, H, K, padding, nt)))
            assert_allclose(dx, dx_ref, **tol, err_msg=str((N, C_in, C_out, H, K, padding, nt)))
    if ops._WIDE_FAST:  # the AVX2 build (the baseline build routes these through BLAS)
        assert ran == set(SLAB_KERNELS)
