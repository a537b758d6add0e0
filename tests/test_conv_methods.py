"""Every concrete kernel of the convolution operations, tested by its answers (never by which one 'auto' picks).

The public conv ops accept, besides method='auto' | 'direct' | 'gemm', each concrete kernel's name, listed in
``cnn_ext._methods.FORWARD_METHODS`` / ``INPUT_GRADIENT_METHODS`` / ``KERNEL_GRADIENT_METHODS``; a method that
cannot run a call (stride, padding, shape, or not in this build) raises ValueError naming the method. For each
shape below (including the ones each kernel is written for), both dtypes and 1 and 2 threads, every method is run;
those that refuse the call are skipped, the others must give the oracle's answer (and the same bits on 1 and 2
threads). For every stride-1 shape, 'gemm' and at least one direct kernel must have run; at stride > 1 only
'gemm' applies. Non-finite inputs must give the oracle's NaN / inf pattern whatever the method.
"""
import numpy as np
import pytest
from helpers.oracles import (
    TOL,
    assert_same_nonfinite,
    bias_gradient,
    einsum_forward,
    einsum_kernel_gradient,
    layer_data,
    pad_amounts,
    tap_input_gradient,
    tol,
)
from helpers.strategies import dtypes, nested, one_channel_cases
from hypothesis import given, settings
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext import conv2d_bias_gradient, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient

# The contract (cnn_ext._methods); a build without the table still collects, and fails test_method_tables.
CONTRACT = {
    "FORWARD_METHODS": ("gemm", "row_tiles", "row_tiles_padded", "wide", "shifted", "channels", "winograd"),
    "INPUT_GRADIENT_METHODS": ("gemm", "scatter", "wide", "band", "channels", "winograd"),
    "KERNEL_GRADIENT_METHODS": ("gemm", "loops", "wide", "shifted", "row_tiles", "channels", "winograd"),
}
try:
    from cnn_ext import _methods
except ImportError:  # the build under test predates the method table
    _methods = None
TABLES = {name: tuple(getattr(_methods, name, default)) for name, default in CONTRACT.items()}
FORWARD, INPUT_GRADIENT, KERNEL_GRADIENT = (TABLES[n] for n in CONTRACT)
GENERIC = ("auto", "direct")  # run too: 'auto' must always give the oracle's answer


def test_method_tables():
    """cnn_ext._methods lists the concrete kernels of each operation (tuples of names, 'gemm' in each)."""
    assert _methods is not None, "cnn_ext._methods is missing"
    for name, expected in CONTRACT.items():
        table = getattr(_methods, name)
        assert isinstance(table, tuple) and all(isinstance(m, str) for m in table)
        assert set(table) == set(expected), (name, table)


# ---------------------------------------------------------------------------------------------
# running every method
# ---------------------------------------------------------------------------------------------

def refuses(error):
    """A ValueError that says the method cannot run this call (the contract's only allowed refusal)."""
    return isinstance(error, ValueError) and "method" in str(error)


def run_every(op, methods, args, threads=(1, 2), **kwargs):
    """{method: result} for each method that accepts the call; each is run on every thread count, and the
    results must be bitwise equal."""
    results = {}
    previous = cnn_ext.get_num_threads()
    try:
        for method in methods:
            got = []
            for nt in threads:
                cnn_ext.set_num_threads(nt)
                try:
                    got.append(op(*args, method=method, **kwargs))
                except ValueError as e:
                    if not refuses(e):
                        raise
                    assert method not in ("auto", "gemm"), f"method={method!r} refused a call: {e}"
                    break
            if got:
                for other in got[1:]:
                    assert_array_equal(got[0], other, err_msg=f"method={method!r}: thread counts disagree")
                results[method] = got[0]
    finally:
        cnn_ext.set_num_threads(previous)
    return results


def method_tol(op, method, args, dtype, kwargs):
    """tol(dtype); for float32 'winograd' (and 'auto', which may pick it) at least its documented error bound
    times the largest sum of absolute products (the operation on |args| in float64)."""
    t = dict(tol(dtype))
    if np.dtype(dtype) == np.float32 and method in ("winograd", "auto"):
        scale = op(*(np.abs(a).astype(np.float64) for a in args), method="gemm", **kwargs)
        t["atol"] = max(t["atol"], max(_methods.WINOGRAD_ERROR_BOUND.values()) * float(scale.max(initial=0)))
    return t


def check_every(op, methods, args, ref, dtype, *, stride_one, direct_expected=True, threads=(1, 2), **kwargs):
    """Every method that runs gives ref within its tolerance (method_tol); at stride 1 'gemm' and a direct one
    ran."""
    results = run_every(op, methods + GENERIC, args, threads=threads, **kwargs)
    for method, got in results.items():
        assert got.dtype == np.dtype(dtype) and got.shape == ref.shape, (method, got.dtype, got.shape)
        assert_allclose(got, ref, **method_tol(op, method, args, dtype, kwargs),
                        err_msg=f"{op.__name__} method={method!r}")
    ran = set(results) - set(GENERIC)
    if stride_one:
        assert "gemm" in ran, f"{op.__name__}: gemm did not run"
        if direct_expected:
            assert ran - {"gemm"}, f"{op.__name__}: no direct method ran (tried {methods})"
    else:  # the channel-vector forward and kernel gradient take strides too; the other kernels do not
        strided = {"gemm"} if op is conv2d_input_gradient else {"gemm", "channels"}
        assert "gemm" in ran and ran <= strided, f"{op.__name__} at stride > 1 ran {sorted(ran)}: only " \
                                                 f"{sorted(strided)} apply"
    return results


def check_layer(shape, padding, dtype, stride=(1, 1), seed=0, ops=("forward", "kgrad", "dx"), threads=(1, 2)):
    """All three operations of one layer over every method, against the einsum oracles."""
    rng = np.random.default_rng(seed + sum(shape))
    x, k, b, dy, pad = layer_data(rng, shape, dtype, stride, padding)
    x = x + dtype(0.5)  # offsets make a lost or doubled tap visible in every entry
    N, C_in, C_out, H, W, KH, KW = shape
    one = tuple(stride) == (1, 1)
    common = dict(stride=stride, padding=padding)
    before = [a.copy() for a in (x, k, b, dy)]
    if "forward" in ops:
        check_every(conv2d_forward, FORWARD, (x, k, b), einsum_forward(x, k, b, stride, pad), dtype, stride_one=one,
                    threads=threads, **common)
    if "kgrad" in ops:
        check_every(conv2d_kernel_gradient, KERNEL_GRADIENT, (dy, x), einsum_kernel_gradient(dy, x, KH, KW, stride, pad),
                    dtype, stride_one=one, threads=threads, kernel_size=(KH, KW), **common)
    if "dx" in ops:
        # the direct input gradients read dE_dY padded by K - 1 - padding: padding > K - 1 is gemm's alone
        direct_ok = max(pad[:2]) <= KH - 1 and max(pad[2:]) <= KW - 1
        check_every(conv2d_input_gradient, INPUT_GRADIENT, (dy, k), tap_input_gradient(dy, k, H, W, stride, pad), dtype,
                    stride_one=one, direct_expected=direct_ok, threads=threads, input_size=(H, W), **common)
    for a, a0 in zip((x, k, b, dy), before):
        assert_array_equal(a, a0)


# ---------------------------------------------------------------------------------------------
# representative layers: what each kernel is meant for, and stride 2 where only gemm applies
# ---------------------------------------------------------------------------------------------

REPRESENTATIVE = [
    # (N, C_in, C_out, H, W, KH, KW), padding, stride
    ((16, 1, 4, 28, 28, 5, 5), 0, 1),           # the tutorial's MNIST layer: one input channel, 5x5
    ((16, 1, 4, 3, 3, 2, 2), 0, 1),             # the tutorial's toy layer: tiny maps
    ((8, 1, 32, 28, 28, 3, 3), "same", 1),      # a first layer on grayscale images, 'same'
    ((4, 8, 16, 12, 12, 3, 3), 1, 1),           # C_out a multiple of 16 (float32 channel vectors), padded
    ((4, 16, 8, 9, 10, 3, 3), 0, 1),            # C_out a multiple of 8 (float64 channel vectors)
    ((2, 3, 5, 14, 13, 7, 7), 3, 1),            # 7x7, padded
    ((3, 6, 6, 11, 11, 5, 5), "same", 1),       # 5x5 'same'
    ((2, 4, 4, 3, 3, 3, 3), 0, 1),              # kernel == input: one output pixel
    ((2, 3, 2, 2, 2, 1, 1), 0, 1),              # tiny map, 1x1 kernel
    ((2, 64, 64, 5, 5, 3, 3), 1, 1),            # small maps, many channels
    ((2, 3, 4, 9, 8, 3, 3), 0, 2),              # stride 2: gemm only
    ((2, 16, 8, 7, 7, 3, 3), 1, (2, 2)),        # stride 2, padded
    ((2, 2, 3, 7, 10, 3, 3), (1, 2), (2, 3)),   # unequal strides
]
# Strided forwards the channel-vector kernel takes (C_out a multiple of every build's channel tile, 32): ResNet's
# downsampling layers, 1x1 shortcuts, odd sizes, unequal strides, one-sided padding, and a stride that leaves the
# last input rows and columns unread.
STRIDED_CHANNELS = [
    ((2, 8, 32, 14, 14, 3, 3), 1, (2, 2)),
    ((3, 5, 32, 9, 11, 3, 3), 0, (2, 2)),
    ((2, 4, 32, 13, 8, 1, 1), 0, (2, 2)),
    ((2, 3, 32, 11, 12, 3, 2), (1, 0), (2, 3)),
    ((2, 3, 32, 11, 11, 3, 3), 0, (3, 3)),
    ((2, 4, 32, 9, 9, 3, 3), ((2, 0), (0, 1)), (2, 2)),
    ((1, 2, 64, 5, 30, 3, 3), 1, (1, 2)),
]


@pytest.mark.parametrize("shape,padding,stride", REPRESENTATIVE, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_method_on_representative_layers(shape, padding, stride, dtype, restore_threads):
    s = (stride, stride) if np.ndim(stride) == 0 else stride
    check_layer(shape, padding, dtype, s)


@pytest.mark.parametrize("shape,padding,stride", STRIDED_CHANNELS, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_strided_forwards_by_channel_vectors(shape, padding, stride, dtype, restore_threads):
    results = check_every(conv2d_forward, FORWARD, *_forward_case(shape, padding, stride, dtype), dtype,
                          stride_one=False, threads=(1, 2, 3), stride=stride, padding=padding)
    if _methods.FAST:
        assert "channels" in results, "the channel-vector kernel refused a strided forward it takes"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_channel_vector_tiles_of_every_row_width(stride, dtype):
    """Rows of 1 to 26 outputs: every tile width the channel-vector kernel splits a row into (up to 12 pixels
    with 32 registers, 6 otherwise), at stride 1 and 2, forward, input gradient and kernel gradient (32 output
    channels: whole tiles in every build; the kernel gradient also with one vector of them)."""
    if not _methods.FAST:
        pytest.skip("the channel-vector kernel runs in the AVX2 and AVX-512 builds")
    rng = np.random.default_rng(stride)
    for W in range(1, 27):
        shape = (2, 3, 32, 4, W * stride, 3, 3)
        (x, k, b), ref = _forward_case(shape, 1, (stride, stride), dtype)
        tol = method_tol(conv2d_forward, "channels", (x, k, b), dtype, {})
        assert_allclose(conv2d_forward(x, k, b, stride=stride, padding=1, method="channels"), ref, **tol,
                        err_msg=f"forward, {W}-output rows")
        if stride == 1:  # the input gradient runs the same tiles over dE_dY's rows
            dy = rng.standard_normal((2, 32, 4, W)).astype(dtype)
            kt = rng.standard_normal((32, 32, 3, 3)).astype(dtype)
            got = conv2d_input_gradient(dy, kt, padding=1, input_size=(4, W), method="channels")
            assert_allclose(got, tap_input_gradient(dy, kt, 4, W, (1, 1), (1, 1, 1, 1)), **tol,
                            err_msg=f"input gradient, {W}-output rows")
        # the kernel gradient's tiles: two vectors of output channels, and one (a single vector of them)
        for C_out in (32, _methods.TILES[np.dtype(dtype)]["lanes"]):
            dy = rng.standard_normal((2, C_out, ref.shape[2], W)).astype(dtype)
            got = conv2d_kernel_gradient(dy, x, stride=stride, padding=1, kernel_size=3, method="channels")
            assert_allclose(got, einsum_kernel_gradient(dy, x, 3, 3, (stride, stride), (1, 1, 1, 1)), **tol,
                            err_msg=f"kernel gradient, {C_out} output channels, {W}-output rows")


def test_kernel_gradient_layout_follows_the_measured_rule(monkeypatch):
    """Shifted copies for many output channels x kernel rows, or many terms with the input channels; wide rows
    for few of both (benchmarks/results/methods.md), where the channel-vector kernel gradient is not taken."""
    M = _methods
    if not M.FAST:
        pytest.skip("the baseline build takes BLAS for these layers")
    monkeypatch.setattr(M, "_channels_kgrad_better", lambda g, dtype: False)

    def layout(N, C_in, C_out, H, K, P, dtype):
        O = H + 2 * P - K + 1
        return M.kernel_gradient("auto", M.Geometry(N, C_in, C_out, H, H, K, K, O, O, 1, 1, (P,) * 4), np.dtype(dtype))

    for dtype in (np.float32, np.float64):
        assert layout(64, 16, 16, 28, 3, 1, dtype) is M.Method.SHIFTED, dtype  # a ResNet's first stage
        assert layout(16, 16, 16, 32, 5, 2, dtype) is M.Method.SHIFTED, dtype
        assert layout(16, 8, 4, 32, 5, 0, dtype) is M.Method.WIDE, dtype  # few channels
        assert layout(32, 3, 16, 32, 3, 1, dtype) is M.Method.WIDE, dtype
    assert layout(64, 8, 16, 28, 3, 1, np.float32) is M.Method.WIDE
    assert layout(64, 8, 16, 28, 3, 1, np.float64) is M.Method.SHIFTED


def test_kernel_gradient_of_one_input_channel_takes_blas_from_32_output_channels():
    """A first layer (one input channel) whose rows are not whole vectors: im2col + BLAS from
    KGRAD_ONE_CHANNEL_GEMM_MIN output channels (only auto), the shifted copies below it, the row tiles on rows of
    whole vectors (benchmarks/results/methods_one_channel.md)."""
    M = _methods
    if not M.FAST:
        pytest.skip("the baseline build takes BLAS for these layers")

    def choose(C_in, C_out, H, dtype, method="auto"):
        return M.kernel_gradient(method, M.Geometry(64, C_in, C_out, H, H, 3, 3, H, H, 1, 1, (1,) * 4),
                                 np.dtype(dtype))

    for dtype in (np.float32, np.float64):
        lanes = M.KGRAD_LANES[np.dtype(dtype)]
        for C_out in (32, 64, 128):
            assert choose(1, C_out, 14, dtype) is M.Method.GEMM, (C_out, dtype)
            assert choose(1, C_out, 4 * lanes, dtype) is M.Method.ROW_TILES, (C_out, dtype)
            assert choose(1, C_out, 14, dtype, "direct") in (M.Method.WIDE, M.Method.SHIFTED)
        assert choose(1, 16, 14, dtype) is M.Method.SHIFTED, dtype
        assert choose(3, 32, 14, dtype) is not M.Method.GEMM, dtype
    assert choose(1, 32, 28, np.float32) is M.Method.GEMM  # the MNIST CNN's first layer


def test_auto_takes_channel_vectors_for_kernel_gradients_they_suit(monkeypatch):
    """Small maps (a ResNet's later stages), strides, and many channels on larger float32 maps; not one or few
    input channels, 1x1 kernels, or channels that are not whole tiles. Among the direct kernels: auto asks
    Winograd first (test_winograd.py)."""
    M = _methods
    if not M.FAST:
        pytest.skip("the baseline build has no channel-vector tiles")
    monkeypatch.setattr(M, "_winograd_better", lambda g, dtype, kgrad=False: False)

    def choose(C_in, C_out, H, K, S, P, dtype=np.float32):
        O = (H + 2 * P - K) // S + 1
        return M.kernel_gradient("auto", M.Geometry(64, C_in, C_out, H, H, K, K, O, O, S, S, (P,) * 4),
                                 np.dtype(dtype))

    wide = M.CHANNELS_WIDE  # tiles of 12 taps (AVX-512); with 6 only float32 on small maps and strides
    for dtype in (np.float32, np.float64):
        for layer in ((16, 32, 28, 3, 2, 1), (32, 32, 14, 3, 1, 1), (32, 64, 14, 3, 2, 1), (64, 64, 7, 3, 1, 1),
                      (32, 64, 14, 3, 1, 1)):
            assert (choose(*layer, dtype) is M.Method.CHANNELS) == (wide or dtype == np.float32), (layer, dtype)
        assert (choose(64, 64, 28, 3, 1, 1, dtype) is M.Method.CHANNELS) == wide, dtype
        for layer in ((1, 32, 28, 3, 1, 1), (4, 32, 28, 3, 1, 1), (16, 32, 28, 1, 2, 0), (32, 20, 14, 3, 1, 1)):
            assert choose(*layer, dtype) is not M.Method.CHANNELS, (layer, dtype)
    assert choose(64, 64, 64, 3, 1, 1, np.float64) is not M.Method.CHANNELS  # float64 maps past 56x56: slabs past L2
    for dtype in (np.float32, np.float64):  # from 8x16 channels on larger maps (methods_kgrad_channels.md)
        for layer in ((8, 16, 28, 3, 1, 1), (16, 32, 28, 3, 1, 1), (16, 32, 56, 3, 1, 1), (32, 32, 56, 3, 1, 1)):
            assert (choose(*layer, dtype) is M.Method.CHANNELS) == wide, (layer, dtype)
    assert choose(64, 64, 14, 3, 2, 1) is M.Method.CHANNELS
    # output channels in whole vectors, not whole pairs: one-vector tiles of 24 taps, with 32 registers only
    pair, lanes = M.TILES[np.dtype(np.float32)]["channels"], M.TILES[np.dtype(np.float32)]["lanes"]
    for C_out in (lanes, 3 * lanes):
        if C_out % pair:
            for layer in ((16, C_out, 28, 3, 1, 1), (16, C_out, 14, 3, 1, 1), (8, C_out, 28, 3, 2, 1),
                          (8, C_out, 64, 7, 1, 0)):
                assert (choose(*layer) is M.Method.CHANNELS) == wide, layer
    assert M.kernel_gradient("direct", M.Geometry(64, 16, 32, 28, 28, 3, 3, 14, 14, 2, 2, (1,) * 4),
                             np.dtype(np.float32)) is M.Method.CHANNELS
    with pytest.raises(ValueError, match=r"method='direct' needs stride 1 for the kernel gradient, or output"):
        M.kernel_gradient("direct", M.Geometry(64, 16, 24, 28, 28, 3, 3, 14, 14, 2, 2, (1,) * 4), np.dtype(np.float32))


def _forward_case(shape, padding, stride, dtype):
    rng = np.random.default_rng(sum(shape))
    x, k, b, _, pad = layer_data(rng, shape, dtype, stride, padding)
    x = x + dtype(0.5)
    return (x, k, b), einsum_forward(x, k, b, stride, pad)


def test_auto_takes_channel_vectors_for_strided_forwards_it_suits():
    M = _methods
    if not M.FAST:
        pytest.skip("a build without SIMD tiles runs strided forwards by gemm")
    f32 = np.dtype(np.float32)

    def geometry(C_in, C_out, H, K, S, P):
        O = (H + 2 * P - K) // S + 1
        return M.Geometry(64, C_in, C_out, H, H, K, K, O, O, S, S, (P,) * 4)

    for g in (geometry(16, 32, 28, 3, 2, 1), geometry(32, 64, 14, 3, 2, 1), geometry(64, 128, 14, 3, 2, 1)):
        assert M.forward("auto", g, f32) is M.Method.CHANNELS, g
        assert M.forward("direct", g, f32) is M.Method.CHANNELS, g
    assert M.forward("auto", geometry(16, 32, 28, 1, 2, 0), f32) is M.Method.GEMM  # 1x1 shortcuts: one product
    assert M.forward("auto", geometry(16, 24, 28, 3, 2, 1), f32) is M.Method.GEMM  # 24 channels: no whole tiles
    # 32x32 outputs, a large map: the 24-accumulator tiles (AVX-512) still win there, the AVX2 ones not
    large = M.forward("auto", geometry(16, 32, 64, 3, 2, 1), f32)
    assert large is (M.Method.CHANNELS if M.CHANNELS_WIDE else M.Method.GEMM)
    with pytest.raises(ValueError, match=r"method='direct' needs stride 1, or output channels in multiples"):
        M.forward("direct", geometry(16, 24, 28, 3, 2, 1), f32)


# The direct forward's register tiles: C_out below, on and above a 4-channel block, rows below, on and across
# 24 float32 / 12 float64 outputs, the whole map inside one tile, row ends inside tiles.
TILE_SHAPES = [
    (2, 1, 1, 5, 20, 2, 3), (2, 2, 2, 4, 11, 1, 1), (1, 3, 3, 6, 19, 3, 3), (2, 2, 4, 3, 16, 1, 1),
    (2, 2, 5, 5, 12, 2, 4), (1, 2, 7, 4, 8, 1, 1), (2, 1, 9, 6, 10, 3, 3), (1, 3, 6, 5, 40, 3, 7),
    (2, 2, 13, 3, 26, 2, 3), (1, 1, 4, 2, 5, 1, 3), (1, 2, 8, 4, 7, 2, 3), (1, 1, 2, 3, 33, 1, 1),
]


@pytest.mark.parametrize("shape", TILE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_methods_on_tile_tails(shape, dtype, restore_threads):
    check_layer(shape, 0, dtype, ops=("forward",), threads=(1,))


# The tiled kernel gradients keep 4 output channels x 3 taps of SIMD accumulators over flattened planes:
# OH*OW, C_out and the number of taps below, on and above the tiles, N below, on and above the 16 reduction
# chunks (and several samples per pass: N = 40, 70).
KGRAD_TILE_CASES = [
    ((3, 2, 5, 9, 11, 3, 3), 0), ((2, 1, 1, 4, 4, 1, 1), 0), ((5, 3, 7, 5, 6, 5, 6), 0),
    ((17, 2, 3, 6, 5, 2, 3), 0), ((37, 2, 6, 8, 7, 3, 2), ((1, 0), (2, 1))), ((4, 3, 9, 7, 7, 3, 3), "same"),
    ((1, 1, 2, 3, 40, 3, 7), (0, 3)), ((2, 4, 8, 3, 3, 3, 3), 2), ((6, 2, 4, 12, 2, 4, 2), ((0, 2), (1, 1))),
    ((3, 5, 13, 10, 9, 7, 7), 3), ((2, 2, 3, 4, 5, 3, 3), 4), ((16, 1, 4, 3, 3, 2, 2), 0),
    ((40, 3, 5, 9, 8, 3, 2), ((1, 1), (0, 1))), ((70, 3, 5, 9, 8, 3, 2), ((1, 1), (0, 1))),
    ((16, 64, 64, 5, 5, 3, 3), 1), ((64, 4, 8, 14, 14, 3, 3), 0),
]


@pytest.mark.parametrize("shape,padding", KGRAD_TILE_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_gradient_methods_on_tile_tails(shape, padding, dtype, restore_threads):
    check_layer(shape, padding, dtype, ops=("kgrad",))


# Wide rows / shifted copies / channel vectors, forward and input gradient: asymmetric padding, rows across tile
# ends, kernel == input, 1x1 kernels, many input channels (several channel blocks), padding wider than the
# kernel, C_out a multiple of 8 / 16, one output pixel, planes shorter than one vector.
WIDE_CASES = [
    ((2, 3, 5, 9, 7, 3, 2), (1, 0, 2, 1)), ((1, 2, 3, 5, 30, 5, 3), (2, 2, 1, 1)),
    ((2, 1, 7, 3, 3, 3, 3), (0, 0, 0, 0)), ((2, 4, 2, 4, 5, 4, 5), (1, 2, 0, 3)),
    ((1, 3, 9, 6, 25, 1, 1), (0, 0, 0, 0)), ((2, 2, 4, 8, 23, 2, 2), (1, 1, 0, 0)),
    ((1, 5, 13, 7, 5, 3, 3), (2, 0, 0, 2)), ((3, 6, 8, 11, 10, 3, 4), (0, 1, 3, 0)),
    ((1, 40, 6, 5, 9, 2, 2), (1, 1, 1, 1)), ((1, 1, 1, 1, 1, 1, 1), (0, 0, 0, 0)),
    ((1, 2, 3, 3, 4, 2, 2), (4, 3, 5, 0)), ((2, 3, 5, 4, 9, 1, 5), (0, 0, 4, 4)),
    ((1, 2, 6, 5, 8, 3, 5), (1, 1, 3, 1)), ((2, 8, 4, 1, 1, 3, 3), (4, 4, 4, 4)),
    ((1, 3, 5, 4, 6, 2, 3), (1, 2, 5, 3)), ((2, 3, 16, 6, 7, 3, 3), (1, 1, 1, 1)),
    ((1, 16, 32, 5, 9, 3, 2), (0, 1, 2, 0)), ((2, 8, 8, 4, 13, 1, 3), (0, 0, 1, 1)),
    ((1, 16, 16, 2, 2, 2, 2), (0, 0, 0, 0)),
    ((2, 3, 6, 5, 5, 1, 1), (0, 0, 0, 0)), ((1, 2, 5, 2, 3, 2, 2), (0, 0, 0, 0)),
    ((2, 7, 3, 6, 9, 3, 3), (1, 1, 1, 1)), ((1, 33, 10, 7, 8, 3, 2), (2, 1, 0, 1)),
    ((5, 33, 9, 13, 11, 3, 3), (1, 1, 1, 1)), ((4, 2, 5, 9, 31, 5, 5), (2, 0, 1, 3)),
    ((3, 4, 3, 20, 20, 1, 1), (0, 0, 0, 0)),
]


@pytest.mark.parametrize("shape,pad", WIDE_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_and_input_gradient_methods_on_padded_layers(shape, pad, dtype, restore_threads):
    check_layer(shape, nested(pad), dtype, ops=("forward", "dx"))


# One output channel left in a channel block (the forward's C_out, the input gradient's C_in), planes shorter
# and longer than a tile run, several input-channel blocks: (N, C_in, C_out, H, W, KH, KW), padding.
SINGLE_CHANNEL_RUNS = [
    ((3, 1, 4, 28, 28, 5, 5), 0),    # the tutorial's layer: dX has one output channel
    ((2, 1, 40, 9, 13, 3, 2), 0),    # dX of one channel summing 40 (two input-channel blocks)
    ((2, 3, 1, 30, 31, 3, 3), 1),    # forward with one output channel, padded
    ((2, 2, 5, 17, 6, 2, 3), 0),     # last channel block of the forward holds one channel
    ((1, 1, 1, 4, 4, 2, 2), 0),      # a plane smaller than one tile run
]


@pytest.mark.parametrize("shape,padding", SINGLE_CHANNEL_RUNS, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_and_input_gradient_methods_on_single_channel_runs(shape, padding, dtype, restore_threads):
    check_layer(shape, padding, dtype, ops=("forward", "dx"))


# Layers with one input channel (first layers on grayscale images): N, C_out, H, W, KH, KW, padding.
ONE_CHANNEL_CASES = [
    (16, 4, 28, 28, 5, 5, "valid"), (64, 32, 28, 28, 3, 3, "same"), (16, 4, 3, 3, 2, 2, "valid"),
    (3, 2, 7, 9, 1, 1, "valid"), (2, 3, 6, 5, 6, 5, "valid"), (1, 9, 13, 17, 3, 4, "same"),
    (5, 3, 11, 10, 4, 2, ((1, 2), (0, 3))), (2, 1, 31, 29, 5, 5, 2), (4, 6, 20, 20, 5, 5, "valid"),
    (3, 5, 26, 26, 3, 3, 0), (2, 7, 40, 40, 7, 7, "valid"), (3, 8, 20, 37, 5, 3, 1),
    (2, 4, 9, 30, 2, 5, ((0, 1), (4, 0))), (2, 3, 5, 8, 1, 1, "valid"), (3, 2, 14, 16, 3, 3, "same"),
    (37, 2, 10, 8, 3, 1, ((1, 1), (0, 0))), (3, 4, 22, 22, 3, 3, ((2, 0), (1, 1))),
]


@pytest.mark.parametrize("case", ONE_CHANNEL_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_method_on_one_input_channel(case, dtype, restore_threads):
    N, C_out, H, W, KH, KW, padding = case
    check_layer((N, 1, C_out, H, W, KH, KW), padding, dtype)
    rng = np.random.default_rng(sum(case[:6]))
    dy = rng.standard_normal((N, C_out, 3, 4)).astype(dtype)
    assert_allclose(conv2d_bias_gradient(dy), bias_gradient(dy), **TOL[dtype])


# The row-band input gradient (one input channel): rows of 1, 2 and 3 vectors, bands overlapping at the bottom.
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H,W,KH,KW,padding", [
    (4, 4, 1, 1, 0), (5, 8, 2, 2, 0), (6, 12, 3, 3, "same"), (7, 20, 5, 5, 2), (9, 28, 5, 5, 0),
    (10, 17, 2, 4, ((1, 0), (2, 1))), (13, 33, 7, 3, 1), (4, 40, 4, 6, 0), (11, 9, 3, 2, 0),
])
def test_input_gradient_methods_on_band_splits(H, W, KH, KW, padding, dtype, restore_threads):
    for C_out in (1, 3, 5):
        check_layer((3, 1, C_out, H, W, KH, KW), padding, dtype, ops=("dx",), seed=4)


@settings(max_examples=25, deadline=None)
@given(one_channel_cases(), dtypes)
def test_random_one_channel_layers_every_method(case, dtype):
    shape, pad = case
    check_layer(shape, nested(pad), dtype, seed=5, threads=(1,))


# ---------------------------------------------------------------------------------------------
# non-finite values: the oracle's NaN / inf pattern, whatever the method
# ---------------------------------------------------------------------------------------------

def every_result(op, methods, *args, **kwargs):
    return run_every(op, methods + GENERIC, args, threads=(1,), **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_and_inf_propagate(dtype):
    rng = np.random.default_rng(9)
    x, k, b, dy, _ = layer_data(rng, (2, 2, 2, 6, 6, 3, 3), dtype)
    x[0, 0, 2, 2] = np.nan
    x[1, 1, 0, 0] = np.inf
    ys = every_result(conv2d_forward, FORWARD, x, k, b)
    for y in ys.values():
        assert np.isnan(y[0, :, 0:3, 0:3]).all() and np.isfinite(y[0, :, 3:, 3:]).all()
        assert not np.isfinite(y[1, :, 0, 0]).any()
        assert np.isfinite(y[1, :, 1:, 1:]).all()
        assert_same_nonfinite(y, einsum_forward(x, k, b), dtype)
    for dk in every_result(conv2d_kernel_gradient, KERNEL_GRADIENT, dy, x).values():
        assert np.isnan(dk).any()
        assert_same_nonfinite(dk, einsum_kernel_gradient(dy, x, 3, 3), dtype)
    dy[0, 1, 1, 1] = np.nan
    for dx in every_result(conv2d_input_gradient, INPUT_GRADIENT, dy, k).values():
        assert np.isnan(dx[0, :, 1:4, 1:4]).all() and np.isfinite(dx[1]).all()
        assert_same_nonfinite(dx, tap_input_gradient(dy, k, 6, 6), dtype)
    assert np.isnan(conv2d_bias_gradient(dy)[1]) and np.isfinite(conv2d_bias_gradient(dy)[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [0, 1])
def test_kernel_gradient_inf_in_x_only_reaches_its_taps(dtype, padding):
    """An inf in x makes the taps that meet it non-finite, and no others (the tiled layouts multiply zeros by x
    values a tap does not reach; they must not leak)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 20, 20)).astype(dtype)
    x[1, 0, 5, 19] = np.inf  # last column: reached only by the last kernel column (unpadded)
    x[2, 1, 19, 0] = -np.inf
    dy = rng.standard_normal((3, 5, 20 + 2 * padding - 2, 20 + 2 * padding - 2)).astype(dtype)
    ref = einsum_kernel_gradient(dy, x, 3, 3, pad=(padding,) * 4)
    assert np.isfinite(ref).sum() > 0 and (~np.isfinite(ref)).sum() > 0
    results = every_result(conv2d_kernel_gradient, KERNEL_GRADIENT, dy, x, padding=padding)
    assert "gemm" in results
    for method, got in results.items():
        assert_array_equal(np.isfinite(got), np.isfinite(ref), err_msg=method)
        fin = np.isfinite(ref)
        assert_allclose(got[fin], ref[fin], rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4, err_msg=method)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,padding", [((1, 1, 1, 8, 8, 3, 3), 0), ((2, 3, 4, 9, 7, 3, 2), 0),
                                           ((2, 16, 16, 6, 6, 3, 3), 1), ((16, 1, 4, 28, 28, 5, 5), 2)])
def test_input_gradient_nonfinite_kernel_only_reaches_its_products(dtype, shape, padding):
    """dX = Σ_j conv_full(dE_dY[n, j], k[j, i]) has no product with padding: an inf / NaN in the kernels makes
    exactly the outputs it is multiplied into non-finite (found by an audit: direct kernels that pad dE_dY by
    K-1 with zeros gave NaN at 32 outputs where there are none)."""
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(sum(shape))
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    k[0, 0, 0, 0] = np.inf
    k[-1, -1, -1, 1] = np.nan
    OH, OW = H + 2 * padding - KH + 1, W + 2 * padding - KW + 1
    dy = rng.uniform(0.5, 1.5, (N, C_out, OH, OW)).astype(dtype)  # > 0: inf * dy stays +inf
    ref = tap_input_gradient(dy, k, H, W, pad=(padding,) * 4)
    assert np.isnan(ref).any() and np.isinf(ref).any() and np.isfinite(ref).any()
    results = every_result(conv2d_input_gradient, INPUT_GRADIENT, dy, k, padding=padding)
    assert "gemm" in results
    for method, got in results.items():
        assert_same_nonfinite(got, ref, dtype, err_msg=method)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,padding", [((2, 3, 4, 10, 9, 3, 3), 1), ((2, 16, 32, 8, 8, 3, 3), 1),
                                           ((16, 1, 4, 28, 28, 5, 5), 2), ((2, 2, 3, 12, 12, 3, 3), (2, 0)),
                                           ((2, 8, 16, 20, 20, 5, 5), "same")])
def test_forward_nonfinite_kernel_with_padding_reaches_every_output(dtype, shape, padding):
    """With zero padding every output multiplies every tap, the padded positions by 0: an inf or NaN tap makes
    its whole output channel non-finite (0 * inf = NaN), as im2col and PyTorch give. (A QA pass found a direct
    kernel that skipped the products of kernel rows meeting only padding.)"""
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(sum(shape))
    x = rng.uniform(0.5, 1.5, (N, C_in, H, W)).astype(dtype)  # > 0: inf * x stays +inf
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    k[0, 0, 0, 0] = np.inf
    k[-1, -1, -1, 1] = np.nan
    ref = einsum_forward(x, k, b, pad=pad_amounts(padding, KH, KW))
    assert np.isnan(ref[:, -1]).all() and not np.isfinite(ref[:, 0]).any()
    results = every_result(conv2d_forward, FORWARD, x, k, b, padding=padding)
    assert "gemm" in results
    for method, got in results.items():
        assert_same_nonfinite(got, ref, dtype, err_msg=method)


@pytest.mark.parametrize("case", [ONE_CHANNEL_CASES[i] for i in (0, 1, 5, 6, 9, -1)], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_channel_nonfinite_values_propagate(case, dtype):
    """inf / NaN in x, dE_dY or the kernels reach exactly the outputs whose sums contain them."""
    N, C_out, H, W, KH, KW, padding = case
    rng = np.random.default_rng(2 + N * 1000 + C_out * 100 + H + W + KH + KW)
    x, k, b, dy, pad = layer_data(rng, (N, 1, C_out, H, W, KH, KW), dtype, padding=padding)
    xn, dyn, kn = x.copy(), dy.copy(), k.copy()
    xn[0, 0, H // 2, W - 1] = np.inf
    xn[-1, 0, 0, W // 3] = np.nan
    dyn[0, -1, dy.shape[2] // 2, 0] = -np.inf
    dyn[-1, 0, -1, -1] = np.nan
    kn[0, 0, KH - 1, 0] = np.inf  # the input-gradient kernels pad dE_dY with zeros: inf * 0 must not appear
    common = dict(padding=padding)
    checks = [
        (every_result(conv2d_forward, FORWARD, xn, k, b, **common), einsum_forward(xn, k, b, pad=pad)),
        (every_result(conv2d_kernel_gradient, KERNEL_GRADIENT, dy, xn, kernel_size=(KH, KW), **common),
         einsum_kernel_gradient(dy, xn, KH, KW, pad=pad)),
        (every_result(conv2d_input_gradient, INPUT_GRADIENT, dyn, k, input_size=(H, W), **common),
         tap_input_gradient(dyn, k, H, W, pad=pad)),
        (every_result(conv2d_input_gradient, INPUT_GRADIENT, dy, kn, input_size=(H, W), **common),
         tap_input_gradient(dy, kn, H, W, pad=pad)),
    ]
    for results, ref in checks:
        assert "gemm" in results
        for method, got in results.items():
            assert_same_nonfinite(got, ref, dtype, err_msg=method)


# ---------------------------------------------------------------------------------------------
# refusals
# ---------------------------------------------------------------------------------------------

def test_unknown_and_strided_methods_are_refused_by_name():
    x, k, b = np.zeros((1, 1, 6, 6)), np.zeros((2, 1, 3, 3)), np.zeros(2)
    dy = np.zeros((1, 2, 2, 2))
    for op, args, kwargs in ((conv2d_forward, (x, k, b), {}),
                             (conv2d_kernel_gradient, (dy, x), dict(kernel_size=3)),
                             (conv2d_input_gradient, (dy, k), dict(input_size=(6, 6)))):
        assert op(*args, stride=2, method="gemm", **kwargs).shape  # the call itself is valid
        with pytest.raises(ValueError, match="method"):
            op(*args, method="no_such_kernel", stride=2, **kwargs)
        for method in sorted(set(FORWARD + INPUT_GRADIENT + KERNEL_GRADIENT) - {"gemm"}):
            # at stride 2 only gemm applies, and the channel-vector forward and kernel gradient where 2 output
            # channels are whole tiles (a build of 2-lane float64 vectors: the kernel gradient's one-vector tile)
            whole = _methods.TILES[np.dtype(np.float64)]["lanes" if op is conv2d_kernel_gradient else "channels"]
            if method == "channels" and op is not conv2d_input_gradient and 2 % whole == 0:
                assert op(*args, method=method, stride=2, **kwargs).shape
                continue
            with pytest.raises(ValueError, match="method"):
                op(*args, method=method, stride=2, **kwargs)
