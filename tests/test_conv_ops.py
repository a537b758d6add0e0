"""The four convolution operations through the public API (method 'auto', 'direct', 'gemm') against the oracles
of tests/helpers/oracles.py: values, shapes, dtypes, strides and paddings, central differences, random shapes,
strided / Fortran / read-only inputs, thread counts and Python threads.

Every concrete kernel (method='wide', 'shifted', ...) is tested in tests/test_conv_methods.py, every error path
in tests/test_conv_errors.py.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers.oracles import (
    TOL,
    assert_adjoint,
    assert_matches,
    bias_gradient,
    data,
    einsum_forward,
    einsum_kernel_gradient,
    layer_data,
    numeric_gradient,
    pad_amounts,
    scipy_forward,
    scipy_input_gradient,
    scipy_kernel_gradient,
    tap_input_gradient,
)
from helpers.strategies import CONV_CONFIGS, conv_cases, nested
from hypothesis import given, settings
from numpy.testing import assert_allclose, assert_array_equal
from scipy import signal

import cnn_ext
from cnn_ext import (
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
)

METHODS = ["direct", "gemm"]

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

CONFIGS = CONV_CONFIGS


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", METHODS + ["auto"])
def test_against_scipy_loops(shape, dtype, method):
    rng = np.random.default_rng(sum(shape))
    x, k, b, dy = data(rng, *shape, dtype=dtype)
    assert_matches(conv2d_forward(x, k, b, method=method), scipy_forward(x, k, b), dtype)
    assert_matches(conv2d_kernel_gradient(dy, x, method=method), scipy_kernel_gradient(dy, x), dtype)
    assert_matches(conv2d_bias_gradient(dy), bias_gradient(dy), dtype)
    assert_matches(conv2d_input_gradient(dy, k, method=method), scipy_input_gradient(dy, k), dtype)


def test_the_two_oracles_agree():
    """The SciPy loops and the einsum oracle are independent: each checks the other."""
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x, k, b, dy = data(rng, *shape)
        H, W, KH, KW = shape[3:]
        assert_allclose(einsum_forward(x, k, b), scipy_forward(x, k, b), rtol=1e-12, atol=1e-12)
        assert_allclose(einsum_kernel_gradient(dy, x, KH, KW), scipy_kernel_gradient(dy, x), rtol=1e-12, atol=1e-12)
        assert_allclose(tap_input_gradient(dy, k, H, W), scipy_input_gradient(dy, k), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape,stride,padding,pad", CONFIGS)
def test_input_gradient_is_the_adjoint_of_the_forward(shape, stride, padding, pad):
    """<conv(x), dy> == <x, conv_T(dy)>: the input gradient is the transpose of the (bias-free) forward map,
    and so is the oracle."""
    rng = np.random.default_rng(17)
    x, k, _, dy, _ = layer_data(rng, shape, stride=stride, padding=padding)
    zero = np.zeros(k.shape[0])
    H, W = x.shape[2:]
    for method in ("auto", "gemm"):
        assert_adjoint(lambda a: conv2d_forward(a, k, zero, stride=stride, padding=padding, method=method),
                       lambda g: conv2d_input_gradient(g, k, stride=stride, padding=padding, input_size=(H, W),
                                                       method=method), x, dy)
    assert_adjoint(lambda a: einsum_forward(a, k, zero, stride, pad),
                   lambda g: tap_input_gradient(g, k, H, W, stride, pad), x, dy)


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
    assert_allclose(results[0], scipy_forward(x, k, b), **TOL[dtype])


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
    assert_allclose(results[0][0], einsum_forward(x, k, b, pad=(1, 1, 1, 1)), **TOL[dtype])
    assert_allclose(results[0][1], scipy_input_gradient(dy, k), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [0, ((2, 0), (1, 3))])
def test_kernel_gradient_does_not_depend_on_thread_count(dtype, padding, restore_threads):
    rng = np.random.default_rng(21)
    x, k, _, dy, pad = layer_data(rng, (37, 3, 6, 12, 13, 3, 3), dtype, padding=padding)
    for method in ("auto", "direct"):
        results = []
        for n in (1, 2, 3):
            cnn_ext.set_num_threads(n)
            results.append(conv2d_kernel_gradient(dy, x, padding=padding, kernel_size=3, method=method))
        for other in results[1:]:
            assert_array_equal(results[0], other)  # bitwise: fixed chunks, lanes summed in a fixed order
        assert_allclose(results[0], einsum_kernel_gradient(dy, x, 3, 3, pad=pad), **TOL[dtype])


def test_kernel_gradient_is_not_the_tutorials_rotated_one():
    """SciPy swaps correlate2d's operands when the first is smaller: the tutorial's call is rot180 of ours."""
    rng = np.random.default_rng(1)
    x, k, b, dy = data(rng, 1, 1, 1, 6, 6, 3, 3)
    tutorial = signal.correlate2d(dy[0, 0], x[0, 0], mode="valid")
    dk = conv2d_kernel_gradient(dy, x)[0, 0]
    assert_allclose(dk, tutorial[::-1, ::-1], rtol=1e-12)
    assert not np.allclose(dk, tutorial)


@pytest.mark.parametrize("shape,stride,padding,pad", CONFIGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_stride_and_padding_against_einsum(shape, stride, padding, pad, dtype):
    N, C_in, C_out, H, W, KH, KW = shape
    assert pad_amounts(padding, KH, KW, stride) == pad
    rng = np.random.default_rng(7)
    x, k, b, _ = data(rng, *shape, dtype=dtype)
    ref_y = einsum_forward(x, k, b, stride, pad)
    y = conv2d_forward(x, k, b, stride=stride, padding=padding)
    assert y.shape == ref_y.shape == (N, C_out) + cnn_ext.conv2d_output_shape((H, W), (KH, KW), stride, padding)
    assert_allclose(y, ref_y, **TOL[dtype])
    dy = rng.standard_normal(y.shape).astype(dtype)
    dk = conv2d_kernel_gradient(dy, x, stride=stride, padding=padding, kernel_size=(KH, KW))
    dx = conv2d_input_gradient(dy, k, stride=stride, padding=padding, input_size=(H, W))
    assert_allclose(dk, einsum_kernel_gradient(dy, x, KH, KW, stride, pad), **TOL[dtype])
    assert_allclose(dx, tap_input_gradient(dy, k, H, W, stride, pad), **TOL[dtype])


@pytest.mark.parametrize("stride,padding", [((2, 2), ((50, 50), (50, 50))), ((1, 1), ((1, 1), (12, 12))),
                                            ((2, 2), ((0, 3), (9, 2))), ((1, 2), ((2, 0), (0, 11)))])
def test_wide_padding_beyond_the_image(stride, padding):
    """Padding far wider than the image (an audit found heap corruption at stride 2, padding 50, 9x9 kernels
    on 8x8 images): every result equals the oracle, and repeated calls stay equal."""
    KH, KW = (9, 9) if padding[0][0] == 50 else (3, 4)
    rng = np.random.default_rng(31)
    x, k, b, dy, pad = layer_data(rng, (2, 3, 2, 8, 8, KH, KW), stride=stride, padding=padding)
    H, W = x.shape[2:]
    for _ in range(2):
        assert_allclose(conv2d_forward(x, k, b, stride=stride, padding=padding), einsum_forward(x, k, b, stride, pad),
                        **TOL[np.float64])
        assert_allclose(conv2d_kernel_gradient(dy, x, stride=stride, padding=padding, kernel_size=(KH, KW)),
                        einsum_kernel_gradient(dy, x, KH, KW, stride, pad), **TOL[np.float64])
        assert_allclose(conv2d_input_gradient(dy, k, stride=stride, padding=padding, input_size=(H, W)),
                        tap_input_gradient(dy, k, H, W, stride, pad), **TOL[np.float64])


def test_stride_one_sizes_are_derived():
    rng = np.random.default_rng(3)
    x, k, b, _ = data(rng, 2, 2, 3, 7, 6, 3, 2)
    y = conv2d_forward(x, k, b, padding=1)
    dy = rng.standard_normal(y.shape)
    assert conv2d_kernel_gradient(dy, x, padding=1).shape == k.shape
    assert conv2d_input_gradient(dy, k, padding=1).shape == x.shape


def test_output_shape_formula():
    assert cnn_ext.conv2d_output_shape((28, 28), 5) == (24, 24)
    assert cnn_ext.conv2d_output_shape((28, 27), (3, 2), stride=2, padding=1) == (14, 14)
    assert cnn_ext.conv2d_output_shape((7, 7), 3, padding="same") == (7, 7)


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

    def loss():  # E = Σ R ⊙ y, so dE/dY = R
        return float(np.sum(R * conv2d_forward(x, k, b, method=method, **kw)))

    dk = conv2d_kernel_gradient(R, x, kernel_size=(KH, KW), method=method, **kw)
    db = conv2d_bias_gradient(R)
    dx = conv2d_input_gradient(R, k, input_size=(H, W), method=method, **kw)
    assert_allclose(N * dk, numeric_gradient(loss, k), rtol=1e-6, atol=1e-7)
    assert_allclose(N * db, numeric_gradient(loss, b), rtol=1e-6, atol=1e-7)
    assert_allclose(dx, numeric_gradient(loss, x), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# property-based: random shapes, strides and paddings against the einsum oracle
# ---------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(conv_cases())
def test_random_shapes(case):
    shape, stride, pad, dtype = case
    N, C_in, C_out, H, W, KH, KW = shape
    rng = np.random.default_rng(N * 1000 + C_in * 100 + C_out)
    x, k, b, dy, _ = layer_data(rng, shape, dtype, stride, nested(pad))
    kw = dict(stride=stride, padding=nested(pad))
    y = conv2d_forward(x, k, b, **kw)
    assert_matches(y, einsum_forward(x, k, b, stride, pad), dtype)
    assert_matches(conv2d_kernel_gradient(dy, x, kernel_size=(KH, KW), **kw),
                   einsum_kernel_gradient(dy, x, KH, KW, stride, pad), dtype)
    assert_matches(conv2d_input_gradient(dy, k, input_size=(H, W), **kw), tap_input_gradient(dy, k, H, W, stride, pad),
                   dtype)
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
    expected = (scipy_forward(x, k, b), scipy_kernel_gradient(dy, x), bias_gradient(dy), scipy_input_gradient(dy, k))
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
        assert_allclose(g, e, **TOL[np.float64])
    for a, s in zip((xs, kf, bs, dyr), snapshots):
        assert_array_equal(a, s)


def test_kernel_gradient_reads_strided_and_readonly_inputs():
    rng = np.random.default_rng(22)
    x, _, _, dy = data(rng, 5, 3, 6, 10, 9, 3, 3, dtype=np.float32)
    ref = conv2d_kernel_gradient(dy, x, method="direct")
    assert_allclose(ref, scipy_kernel_gradient(dy, x), **TOL[np.float32])
    xf, dyr = np.asfortranarray(x), dy.copy()
    dyr.setflags(write=False)
    assert_array_equal(conv2d_kernel_gradient(dyr, xf, method="direct"), ref)
    big = np.zeros((5, 3, 20, 18), np.float32)
    big[:, :, ::2, ::2] = x
    assert_array_equal(conv2d_kernel_gradient(dy, big[:, :, ::2, ::2], method="direct"), ref)


def test_inputs_are_never_modified():
    rng = np.random.default_rng(6)
    for shape in SHAPES[:3] + SHAPES[-1:]:
        x, k, b, dy = data(rng, *shape)
        arrays = (x, k, b, dy)
        before = [a.copy() for a in arrays]
        for m in METHODS + ["auto"]:
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
    assert_allclose(y, scipy_forward(x, k, b))
    y32 = conv2d_forward(x.astype(np.float32), k.astype(np.float32), b.astype(np.float32))
    assert y32.dtype == np.float32
    assert conv2d_forward(x.astype(np.float32), k.astype(np.float64), b).dtype == np.float64
    assert conv2d_bias_gradient(np.ones((2, 3, 2, 2), dtype=np.int8)).dtype == np.float64
    # nested lists work like arrays
    assert_allclose(conv2d_forward(x.tolist(), k.tolist(), b.tolist()), y)


def test_empty_batch():
    k = np.ones((3, 2, 2, 2))
    x = np.zeros((0, 2, 5, 4))
    assert conv2d_forward(x, k, np.zeros(3)).shape == (0, 3, 4, 3)
    dy = np.zeros((0, 3, 4, 3))
    assert_array_equal(conv2d_kernel_gradient(dy, x), np.zeros((3, 2, 2, 2)))
    assert_array_equal(conv2d_bias_gradient(dy), np.zeros(3))
    assert conv2d_input_gradient(dy, k).shape == (0, 2, 5, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bias_gradient_lane_tails_and_threads(restore_threads, dtype):
    """Planes shorter than, equal to and around a vector block of lanes (4 to 16), channels split over 1-3
    threads: equal to a float64 sum, and bitwise the same whatever the thread count."""
    rng = np.random.default_rng(5)
    for N, OH, OW in [(7, 1, 1), (7, 1, 3), (7, 1, 4), (7, 1, 5), (7, 1, 7), (7, 1, 8), (7, 1, 9), (7, 1, 16),
                      (7, 1, 17), (7, 8, 8), (7, 13, 11), (7, 24, 24), (7, 3, 37), (64, 28, 28)]:
        for C in (1, 2, 5):
            dy = rng.standard_normal((N, C, OH, OW)).astype(dtype)
            before = dy.copy()
            expected = bias_gradient(dy)
            got = []
            for n in (1, 2, 3):
                cnn_ext.set_num_threads(n)
                got.append(conv2d_bias_gradient(dy))
                assert got[-1].dtype == dtype
                assert_allclose(got[-1], expected, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-5)
            for other in got[1:]:
                assert_array_equal(got[0], other)
            assert_array_equal(dy, before)


# ---------------------------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS + ["auto"])
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
    assert_allclose(results[0][0], scipy_forward(x, k, b), **TOL[dtype])


@pytest.mark.parametrize("method", METHODS)
def test_concurrent_python_threads_match_serial(method, restore_threads):
    rng = np.random.default_rng(13)
    cases = [data(rng, 8, 3, 4, 16, 15, 3, 3) for _ in range(6)]

    def run(case):
        x, k, b, dy = case
        return (conv2d_forward(x, k, b, method=method), conv2d_kernel_gradient(dy, x, method=method),
                conv2d_input_gradient(dy, k, method=method))

    serial = [run(c) for c in cases]
    assert_allclose(serial[0][0], scipy_forward(*cases[0][:3]), **TOL[np.float64])
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
