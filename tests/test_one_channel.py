"""Layers with one input channel (first layers on grayscale images, the tutorial's MNIST layer): their own
kernels and routing (cnn_ext.ops) against an einsum oracle, both dtypes, any padding, thread counts and
non-finite values."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext import (
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    ops,
)

TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=2e-5, atol=2e-4)}

# N, C_out, H, W, KH, KW, padding (C_in = 1)
CASES = [
    (16, 4, 28, 28, 5, 5, "valid"),  # the tutorial's MNIST layer, the benchmark target
    (64, 32, 28, 28, 3, 3, "same"),  # first layer of benchmarks/bench_mnist_cnn.py
    (16, 4, 3, 3, 2, 2, "valid"),  # the tutorial's toy layer (row loops)
    (3, 2, 7, 9, 1, 1, "valid"),  # 1x1 kernel
    (2, 3, 6, 5, 6, 5, "valid"),  # kernel == input: one output pixel
    (1, 9, 13, 17, 3, 4, "same"),  # N = 1, non-square kernel, 'same' with an odd extra column
    (5, 3, 11, 10, 4, 2, ((1, 2), (0, 3))),  # asymmetric padding
    (2, 1, 31, 29, 5, 5, 2),  # one output channel
    (4, 6, 20, 20, 5, 5, "valid"),  # rows of 16: two float32 vectors, 1 1/3 float64 tiles
    (3, 5, 26, 26, 3, 3, 0),  # rows of 24: whole 3-vector tiles in both dtypes
    (2, 7, 40, 40, 7, 7, "valid"),  # rows of 34: overlapping row tails
    (3, 8, 20, 37, 5, 3, 1),
    (2, 4, 9, 30, 2, 5, ((0, 1), (4, 0))),
    (2, 3, 5, 8, 1, 1, "valid"),  # 1x1 kernel on rows of 8: whole vectors in both dtypes
    (3, 2, 14, 16, 3, 3, "same"),  # padded rows of 16
    (37, 2, 10, 8, 3, 1, ((1, 1), (0, 0))),  # N = 37: uneven reduction chunks
    (3, 4, 22, 22, 3, 3, ((2, 0), (1, 1))),  # padded row tiles with a row tail, padding on top only
]


def pads(padding, KH, KW):
    return ops._padding(padding, KH, KW, (1, 1))


def ref_forward(x, k, b, pad):
    top, bottom, left, right = pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = sliding_window_view(xp, k.shape[2:], axis=(2, 3))
    return np.einsum("ncpqhw,jchw->njpq", win, k.astype(np.float64)) + b.astype(np.float64)[None, :, None, None]


def ref_kernel_gradient(dy, x, KH, KW, pad):
    top, bottom, left, right = pad
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = sliding_window_view(xp, (KH, KW), axis=(2, 3))
    return np.einsum("ncpqhw,njpq->jchw", win, dy.astype(np.float64)) / x.shape[0]


def ref_input_gradient(dy, k, H, W, pad):
    """The adjoint of the forward map, one product at a time (no product with padding)."""
    top, bottom, left, right = pad
    N, _, OH, OW = dy.shape
    KH, KW = k.shape[2:]
    dxp = np.zeros((N, k.shape[1], H + top + bottom, W + left + right))
    for kh in range(KH):
        for kw in range(KW):
            dxp[:, :, kh:kh + OH, kw:kw + OW] += np.einsum("njpq,jc->ncpq", dy.astype(np.float64),
                                                           k[:, :, kh, kw].astype(np.float64))
    return dxp[:, :, top:top + H, left:left + W]


def make(case, dtype, seed=0):
    N, C_out, H, W, KH, KW, padding = case
    rng = np.random.default_rng(seed + N * 1000 + C_out * 100 + H + W + KH + KW)
    pad = pads(padding, KH, KW)
    OH, OW = H + pad[0] + pad[1] - KH + 1, W + pad[2] + pad[3] - KW + 1
    x = rng.standard_normal((N, 1, H, W)).astype(dtype)
    k = rng.standard_normal((C_out, 1, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    dy = rng.standard_normal((N, C_out, OH, OW)).astype(dtype)
    return x, k, b, dy, pad


def run_all(x, k, b, dy, padding, method):
    KH, KW = k.shape[2:]
    H, W = x.shape[2:]
    top, bottom, left, right = pads(padding, KH, KW)
    if min(KH - 1 - top, KH - 1 - bottom, KW - 1 - left, KW - 1 - right) < 0:
        dx_method = "auto" if method == "direct" else method  # the direct dX needs padding <= K - 1
    else:
        dx_method = method
    return (conv2d_forward(x, k, b, padding=padding, method=method),
            conv2d_kernel_gradient(dy, x, padding=padding, kernel_size=(KH, KW), method=method),
            conv2d_bias_gradient(dy),
            conv2d_input_gradient(dy, k, padding=padding, input_size=(H, W), method=dx_method))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", ["auto", "direct"])
def test_against_einsum(case, dtype, method):
    x, k, b, dy, pad = make(case, dtype)
    y, dk, db, dx = run_all(x, k, b, dy, case[-1], method)
    for got, ref in ((y, ref_forward(x, k, b, pad)), (dk, ref_kernel_gradient(dy, x, *k.shape[2:], pad)),
                     (db, dy.astype(np.float64).sum(axis=(0, 2, 3)) / x.shape[0]),
                     (dx, ref_input_gradient(dy, k, *x.shape[2:], pad))):
        assert got.dtype == dtype and got.shape == ref.shape
        assert_allclose(got, ref, **TOL[dtype])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_results_do_not_depend_on_thread_count(case, dtype, restore_threads):
    x, k, b, dy, pad = make(case, dtype, seed=1)
    results = []
    for n in (1, 2, 3):
        cnn_ext.set_num_threads(n)
        results.append(run_all(x, k, b, dy, case[-1], "auto"))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert_array_equal(a, c)  # bitwise


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[5], CASES[6], CASES[9], CASES[-1]])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_nonfinite_values_propagate(case, dtype):
    """inf / NaN reach exactly the outputs whose sums contain them (patterns as in the float64 oracle)."""
    x, k, b, dy, pad = make(case, dtype, seed=2)
    N, C_out, H, W, KH, KW, padding = case
    xn, dyn, kn = x.copy(), dy.copy(), k.copy()
    xn[0, 0, H // 2, W - 1] = np.inf
    xn[-1, 0, 0, W // 3] = np.nan
    dyn[0, -1, dy.shape[2] // 2, 0] = -np.inf
    dyn[-1, 0, -1, -1] = np.nan
    kn[0, 0, KH - 1, 0] = np.inf  # the input-gradient kernels pad dE_dY with zeros: inf * 0 must not appear
    y = conv2d_forward(xn, k, b, padding=padding)
    dk = conv2d_kernel_gradient(dy, xn, padding=padding, kernel_size=(KH, KW))
    dx = conv2d_input_gradient(dyn, k, padding=padding, input_size=(H, W))
    dxn = conv2d_input_gradient(dy, kn, padding=padding, input_size=(H, W))
    for got, ref in ((y, ref_forward(xn, k, b, pad)), (dk, ref_kernel_gradient(dy, xn, KH, KW, pad)),
                     (dx, ref_input_gradient(dyn, k, H, W, pad)), (dxn, ref_input_gradient(dy, kn, H, W, pad))):
        assert_array_equal(np.isnan(got), np.isnan(ref))
        assert_array_equal(np.isposinf(got), np.isposinf(ref))
        assert_array_equal(np.isneginf(got), np.isneginf(ref))
        fin = np.isfinite(ref)
        assert_allclose(got[fin], ref[fin], **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inputs_are_not_modified(dtype):
    x, k, b, dy, pad = make(CASES[0], dtype, seed=3)
    copies = [a.copy() for a in (x, k, b, dy)]
    run_all(x, k, b, dy, "valid", "auto")
    for a, c in zip((x, k, b, dy), copies):
        assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H,W,KH,KW,padding", [
    (4, 4, 1, 1, 0), (5, 8, 2, 2, 0), (6, 12, 3, 3, "same"), (7, 20, 5, 5, 2), (9, 28, 5, 5, 0),
    (10, 17, 2, 4, ((1, 0), (2, 1))), (13, 33, 7, 3, 1), (4, 40, 4, 6, 0), (11, 9, 3, 2, 0),
])
def test_band_kernel_every_tile_split(monkeypatch, restore_threads, dtype, H, W, KH, KW, padding):
    """The row-band input gradient on rows of any number of vectors (1-, 2- and 3-vector tiles, the last one
    ending at the row's end) and bands overlapping at the bottom, forced where ops would keep the wide rows."""
    rows, lanes = ops._TILES[np.dtype(dtype)]["band"]
    if not ops._WIDE_FAST or H < rows or W < lanes:
        pytest.skip("no band kernel for this shape in this build")
    monkeypatch.setattr(ops, "_band_better", lambda C_in, H, W, KH, dtype: True)
    for C_out in (1, 3, 5):
        x, k, b, dy, pad = make((3, C_out, H, W, KH, KW, padding), dtype, seed=4)
        ref = ref_input_gradient(dy, k, H, W, pad)
        results = []
        for n in (1, 2):
            cnn_ext.set_num_threads(n)
            results.append(conv2d_input_gradient(dy, k, padding=padding, input_size=(H, W)))
        assert_allclose(results[0], ref, **TOL[dtype])
        assert_array_equal(results[0], results[1])


@st.composite
def one_channel_cases(draw):
    """Random one-input-channel layers: sizes around the tiles' widths, any padding up to K - 1 per side."""
    KH, KW = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    H, W = draw(st.integers(KH, 34)), draw(st.integers(KW, 34))
    pad = tuple(draw(st.integers(0, K - 1)) for K in (KH, KH, KW, KW))
    return (draw(st.integers(1, 5)), draw(st.integers(1, 9)), H, W, KH, KW, ((pad[0], pad[1]), (pad[2], pad[3])))


@settings(max_examples=60, deadline=None)
@given(one_channel_cases(), st.sampled_from([np.float64, np.float32]))
def test_random_one_channel_layers(case, dtype):
    x, k, b, dy, pad = make(case, dtype, seed=5)
    y, dk, _, dx = run_all(x, k, b, dy, case[-1], "auto")
    assert_allclose(y, ref_forward(x, k, b, pad), **TOL[dtype])
    assert_allclose(dk, ref_kernel_gradient(dy, x, *k.shape[2:], pad), **TOL[dtype])
    assert_allclose(dx, ref_input_gradient(dy, k, *x.shape[2:], pad), **TOL[dtype])
