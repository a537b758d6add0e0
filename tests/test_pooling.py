"""Max / average pooling: the Cython kernels against a sliding_window_view reference, finite differences,
tie handling, error paths, dtypes, memory layouts, thread counts and the layer protocol."""
import threading

import numpy as np
import pytest
from helpers.oracles import (
    POOL_TOL,
    numeric_gradient,
    pair,
    ref_avg,
    ref_avg_backward,
    ref_avg_backward_disjoint,
    ref_avg_sequential,
    ref_max,
    ref_max_backward,
    ref_max_indices,
)
from helpers.strategies import pool_cases
from hypothesis import given, settings
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext import set_num_threads
from cnn_ext.layers import LAYER_TYPES
from cnn_ext.pooling import (
    AvgPool2D,
    MaxPool2D,
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

TOL = POOL_TOL

# (N, C, H, W, kernel_size, stride): square / non-square, overlapping, dropped windows, kernel == input, 1x1
CASES = [
    (2, 3, 8, 8, 2, None),
    (1, 1, 7, 5, 2, None),          # last row / column dropped
    (3, 2, 9, 9, 3, 2),             # overlapping windows
    (2, 2, 6, 7, (2, 3), (1, 2)),   # non-square kernel and stride
    (1, 4, 5, 5, 5, None),          # kernel == input
    (2, 1, 4, 3, 1, None),          # 1x1 kernel
    (1, 2, 10, 3, (3, 1), (3, 1)),
]


@pytest.fixture
def small_work_threads(restore_threads):
    """Let even these small test arrays be split over threads (tests/conftest.py's restore_threads)."""


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request, small_work_threads):
    previous = set_num_threads(request.param)
    yield request.param
    set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# forward / backward against the reference
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_reference(case, dtype, threads):
    N, C, H, W, ks, st_ = case
    rng = np.random.default_rng(sum(map(hash, map(str, case))) % 2**32)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    y, idx = maxpool2d_forward(x, ks, st_, return_indices=True)
    assert y.dtype == dtype and idx.dtype == np.int32
    assert_array_equal(y, ref_max(x, ks, st_))
    assert_array_equal(idx, ref_max_indices(x, ks, st_))
    dy = rng.standard_normal(y.shape).astype(dtype)
    expected = ref_max_backward(dy.astype(np.float64), x, ks, st_)
    assert_allclose(maxpool2d_backward(dy, x, ks, st_), expected, **TOL[dtype])
    assert_allclose(maxpool2d_backward(dy, x, ks, st_, indices=idx), expected, **TOL[dtype])

    ya = avgpool2d_forward(x, ks, st_)
    assert ya.dtype == dtype
    assert_allclose(ya, ref_avg(x.astype(np.float64), ks, st_), **TOL[dtype])
    dxa = avgpool2d_backward(dy, ks, st_, input_size=(H, W))
    assert dxa.dtype == dtype and dxa.shape == x.shape
    assert_allclose(dxa, ref_avg_backward(dy.astype(np.float64), x.shape, ks, st_), **TOL[dtype])


@settings(deadline=None, max_examples=40)
@given(pool_cases())
def test_random_shapes_match_reference(case):
    (N, C, H, W), (KH, KW), (SH, SW), seed = case
    # small integers make ties frequent: the first-max rule is exercised on every example
    x = np.random.default_rng(seed).integers(-2, 3, (N, C, H, W)).astype(np.float64)
    y, idx = maxpool2d_forward(x, (KH, KW), (SH, SW), return_indices=True)
    assert_array_equal(y, ref_max(x, (KH, KW), (SH, SW)))
    assert_array_equal(idx, ref_max_indices(x, (KH, KW), (SH, SW)))
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape)
    assert_allclose(maxpool2d_backward(dy, x, (KH, KW), (SH, SW)), ref_max_backward(dy, x, (KH, KW), (SH, SW)),
                    rtol=1e-12, atol=1e-12)
    assert_allclose(avgpool2d_forward(x, (KH, KW), (SH, SW)), ref_avg(x, (KH, KW), (SH, SW)), rtol=1e-12, atol=1e-12)
    assert_allclose(avgpool2d_backward(dy, (KH, KW), (SH, SW), input_size=(H, W)),
                    ref_avg_backward(dy, x.shape, (KH, KW), (SH, SW)), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# finite differences (float64)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ks, st_", [(2, None), (3, 2), ((2, 3), (1, 2))])
def test_avgpool_finite_differences(ks, st_):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 2, 6, 7))
    w = rng.standard_normal(avgpool2d_forward(x, ks, st_).shape)
    num = numeric_gradient(lambda: np.sum(w * avgpool2d_forward(x, ks, st_)), x)
    assert_allclose(avgpool2d_backward(w, ks, st_, input_size=x.shape[2:]), num, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("ks, st_", [(2, None), (3, 2), ((2, 3), (1, 2))])
def test_maxpool_finite_differences_away_from_ties(ks, st_):
    rng = np.random.default_rng(1)
    # distinct values 0.01 apart: a 1e-6 step never changes which element is the maximum
    x = rng.permutation(2 * 2 * 6 * 7).reshape(2, 2, 6, 7) * 0.01
    w = rng.standard_normal(maxpool2d_forward(x, ks, st_).shape)
    num = numeric_gradient(lambda: np.sum(w * maxpool2d_forward(x, ks, st_)), x)
    assert_allclose(maxpool2d_backward(w, x, ks, st_), num, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# ties and NaN
# ----------------------------------------------------------------------------------------------

def test_ties_give_the_gradient_to_the_first_max_in_row_major_order():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, 2.0, 0.0, 0.0],
                    [5.0, 5.0, 7.0, 7.0],
                    [5.0, 5.0, 7.0, 7.0]]]])
    y, idx = maxpool2d_forward(x, 2, return_indices=True)
    assert_array_equal(y, [[[[3.0, 3.0], [5.0, 7.0]]]])
    assert_array_equal(idx, [[[[1, 2], [8, 10]]]])
    dx = maxpool2d_backward(np.ones_like(y), x, 2)
    expected = np.zeros((4, 4))
    expected.flat[[1, 2, 8, 10]] = 1
    assert_array_equal(dx[0, 0], expected)


def test_overlapping_windows_accumulate_at_a_shared_max():
    x = np.zeros((1, 1, 3, 3))
    x[0, 0, 1, 1] = 9.0  # in all four 2x2 windows of stride 1
    dx = maxpool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), x, 2, 1)
    expected = np.zeros((3, 3))
    expected[1, 1] = 10.0
    assert_array_equal(dx[0, 0], expected)
    # a constant input: every window picks its top-left corner
    dx = maxpool2d_backward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), 2, 1)
    assert_array_equal(dx[0, 0], [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_nan_propagates_and_the_first_nan_takes_the_gradient():
    x = np.array([[[[1.0, np.nan], [np.nan, 4.0]]]])
    y, idx = maxpool2d_forward(x, 2, return_indices=True)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1


# ----------------------------------------------------------------------------------------------
# dtypes, layouts, threads
# ----------------------------------------------------------------------------------------------

def test_dtypes():
    xi = np.arange(16).reshape(1, 1, 4, 4)
    assert maxpool2d_forward(xi, 2).dtype == np.float64
    assert avgpool2d_forward(xi.astype(np.float32), 2).dtype == np.float32
    assert maxpool2d_forward(xi.astype(np.float16), 2).dtype == np.float64
    assert maxpool2d_backward(np.ones((1, 1, 2, 2), np.float32), xi.astype(np.float32), 2).dtype == np.float32
    assert maxpool2d_backward(np.ones((1, 1, 2, 2)), xi.astype(np.float32), 2).dtype == np.float64
    assert_array_equal(maxpool2d_forward(xi, 2), [[[[5, 7], [13, 15]]]])
    assert_array_equal(avgpool2d_forward([[[[1, 2], [3, 4]]]], 2), [[[[2.5]]]])


@pytest.mark.parametrize("layout", ["strided", "fortran", "readonly"])
def test_non_contiguous_and_read_only_inputs(layout):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, 4, 12, 10))
    if layout == "strided":
        x, dy = base[::2, ::2, ::2, ::2], rng.standard_normal((4, 4, 6, 4))[::2, ::2, ::2, ::2]
    elif layout == "fortran":
        x, dy = np.asfortranarray(base), np.asfortranarray(rng.standard_normal((3, 4, 6, 5)))
    else:
        x, dy = base, rng.standard_normal((3, 4, 6, 5))
        x.flags.writeable = False
        dy.flags.writeable = False
    x_before, dy_before = x.copy(), dy.copy()
    assert_array_equal(maxpool2d_forward(x, 2), ref_max(x, 2))
    assert_allclose(avgpool2d_forward(x, 2), ref_avg(x, 2), rtol=1e-12)
    assert_allclose(maxpool2d_backward(dy, x, 2), ref_max_backward(dy, x, 2), rtol=1e-12)
    assert_allclose(avgpool2d_backward(dy, 2, input_size=x.shape[2:]), ref_avg_backward(dy, x.shape, 2), rtol=1e-12)
    assert_array_equal(x, x_before)
    assert_array_equal(dy, dy_before)


def test_empty_batch():
    y, idx = maxpool2d_forward(np.zeros((0, 3, 4, 4)), 2, return_indices=True)
    assert y.shape == idx.shape == (0, 3, 2, 2)
    assert maxpool2d_backward(np.zeros((0, 3, 2, 2)), np.zeros((0, 3, 4, 4)), 2).shape == (0, 3, 4, 4)
    assert avgpool2d_backward(np.zeros((0, 3, 2, 2)), 2).shape == (0, 3, 4, 4)


def test_results_do_not_depend_on_thread_count_and_kernels_are_reentrant(small_work_threads):
    rng = np.random.default_rng(4)
    xs = [rng.standard_normal((6, 5, 16, 16)).astype(np.float32) for _ in range(4)]
    previous = set_num_threads(1)
    try:
        serial = [(maxpool2d_forward(x, 3, 2), maxpool2d_backward(x[:, :, :7, :7], x, 3, 2),
                   avgpool2d_forward(x, 2)) for x in xs]
        set_num_threads(2)
        results = [None] * len(xs)

        def work(i):
            x = xs[i]
            results[i] = (maxpool2d_forward(x, 3, 2), maxpool2d_backward(x[:, :, :7, :7], x, 3, 2),
                          avgpool2d_forward(x, 2))

        workers = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
    finally:
        set_num_threads(previous)
    for got, want in zip(results, serial):
        for g, w in zip(got, want):
            assert_array_equal(g, w)


# ----------------------------------------------------------------------------------------------
# error paths
# ----------------------------------------------------------------------------------------------

def test_argument_errors():
    x = np.zeros((1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\), got shape \(2, 4, 4\)"):
        maxpool2d_forward(x[0], 2)
    with pytest.raises(ValueError, match=r"kernel_size \(5, 5\) is larger than x \(1, 2, 4, 4\)"):
        avgpool2d_forward(x, 5)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        maxpool2d_forward(x, 0)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        maxpool2d_forward(x, 2, (1, 0))
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        maxpool2d_forward(x, 2.0)
    with pytest.raises(TypeError, match="kernel_size must be an int or a pair"):
        avgpool2d_forward(x, True)
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        avgpool2d_forward(x, 2, (1, 1, 1))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        maxpool2d_forward(x.astype(complex), 2)
    with pytest.raises(TypeError, match="x must be an array of numbers, got None"):
        avgpool2d_forward(None, 2)


def test_gradient_shape_errors():
    x = np.zeros((2, 3, 6, 6))
    with pytest.raises(ValueError, match=r"dE_dY has shape \(2, 3, 2, 2\) but x of shape \(2, 3, 6, 6\) .* \(2, 3, 3, 3\)"):
        maxpool2d_backward(np.zeros((2, 3, 2, 2)), x, 2)
    with pytest.raises(ValueError, match=r"dE_dY must be 4-D \(N, C, OH, OW\)"):
        maxpool2d_backward(np.zeros((2, 3, 9)), x, 2)
    with pytest.raises(ValueError, match=r"indices has shape \(2, 3, 3\) but dE_dY has shape \(2, 3, 3, 3\)"):
        maxpool2d_backward(np.zeros((2, 3, 3, 3)), x, 2, indices=np.zeros((2, 3, 3), int))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, H\*W\) = \[0, 36\)"):
        maxpool2d_backward(np.zeros((2, 3, 3, 3)), x, 2, indices=np.full((2, 3, 3, 3), 36))
    with pytest.raises(ValueError, match=r"indices must lie in"):
        maxpool2d_backward(np.zeros((2, 3, 3, 3)), x, 2, indices=np.full((2, 3, 3, 3), -1))
    with pytest.raises(TypeError, match="indices must hold integers"):
        maxpool2d_backward(np.zeros((2, 3, 3, 3)), x, 2, indices=np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match=r"dE_dY has shape \(2, 3, 2, 2\) but an input of \(6, 6\)"):
        avgpool2d_backward(np.zeros((2, 3, 2, 2)), 2, input_size=6)
    with pytest.raises(ValueError, match="non-empty spatial shape"):
        avgpool2d_backward(np.zeros((2, 3, 0, 2)), 2)


def test_avgpool_backward_default_input_size_and_dropped_border():
    dx = avgpool2d_backward(np.ones((1, 1, 2, 2)), 2)
    assert dx.shape == (1, 1, 4, 4)
    dx = avgpool2d_backward(np.ones((1, 1, 2, 2)), 2, input_size=(5, 5))
    assert_array_equal(dx[0, 0, 4], 0)
    assert_array_equal(dx[0, 0, :, 4], 0)
    assert_array_equal(dx[0, 0, :4, :4], 0.25)


# ----------------------------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, ref", [(MaxPool2D, ref_max), (AvgPool2D, ref_avg)])
def test_layers_follow_the_protocol(cls, ref):
    layer = cls(3, stride=2)
    assert LAYER_TYPES[cls.__name__] is cls
    assert layer.parameters() == []
    cfg = layer.get_config()
    assert cfg == {"kernel_size": [3, 3], "stride": [2, 2]}
    clone = cls(**cfg)
    assert (clone.kernel_size, clone.stride) == ((3, 3), (2, 2))
    assert repr(layer) == f"{cls.__name__}(kernel_size=(3, 3), stride=(2, 2))"
    assert repr(cls(2)) == f"{cls.__name__}(kernel_size=(2, 2))"

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 7, 8)).astype(np.float32)
    x_before = x.copy()
    y = layer.forward(x)
    assert y.dtype == np.float32
    assert_allclose(y, ref(x.astype(np.float64), 3, 2), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = layer.backward(dy)
    assert set(grads) == {"dX"} and grads["dX"].dtype == np.float32
    if cls is MaxPool2D:
        expected = ref_max_backward(dy, x, 3, 2)
    else:
        expected = ref_avg_backward(dy, x.shape, 3, 2)
    assert_allclose(grads["dX"], expected, rtol=1e-5, atol=1e-6)
    layer.update(grads, 0.1)  # no parameters: nothing to do, must not fail
    assert_array_equal(x, x_before)


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_layer_errors(cls):
    layer = cls(2)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=rf"{cls.__name__}\(kernel_size=\(2, 2\)\): input of shape \(4, 4\): x must be 4-D"):
        layer.forward(np.zeros((4, 4)))
    with pytest.raises(ValueError, match=rf"{cls.__name__}.*input of shape \(1, 1, 1, 5\).*larger than x"):
        layer.forward(np.zeros((1, 1, 1, 5)))
    layer.forward(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"dE_dY has shape \(1, 1, 3, 3\) but the forward output had shape \(1, 1, 2, 2\)"):
        layer.backward(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match="stride must be >= 1"):
        cls(2, stride=0)


# ----------------------------------------------------------------------------------------------
# the vector rows of KW == SW == 2 (both kernel builds) and the disjoint-window average gradient
# ----------------------------------------------------------------------------------------------

def _kernel_modules():
    import importlib

    from cnn_ext import _kernels

    # the variants built and runnable here (checked before importing: an import may run the variant's code)
    names = ["pooling", *(f"pooling_{isa}" for isa in _kernels._built() if _kernels.cpu_supports(isa))]
    return [importlib.import_module(f"cnn_ext._kernels.{n}") for n in names]


@pytest.fixture(params=_kernel_modules(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def kernels(request, monkeypatch):
    """Run the test on each compiled pooling build this CPU can execute (baseline, AVX2, AVX-512)."""
    import cnn_ext.pooling

    monkeypatch.setattr(cnn_ext.pooling, "_pooling", request.param)
    return request.param


# (H, W, kernel_size, stride): output rows from 1 to 17 wide (narrower and wider than one vector of 4 / 8
# floats, 2 / 4 doubles, with and without an overlapping last block), odd sizes with a dropped row / column,
# KH != 2 and SH != KH with KW == SW == 2, and other disjoint windows
FAST_CASES = [
    (2, 2, 2, None), (4, 6, 2, None), (4, 8, 2, None), (5, 9, 2, None), (6, 14, 2, None), (7, 15, 2, None),
    (14, 14, 2, None), (8, 16, 2, None), (9, 17, 2, None), (6, 18, 2, None), (4, 26, 2, None),
    (28, 28, 2, None), (3, 34, 2, None), (3, 35, 2, None),
    (9, 20, (3, 2), None), (10, 21, (2, 2), (3, 2)), (7, 19, (1, 2), None), (8, 16, (3, 2), (2, 2)),
    (9, 9, 3, None), (10, 11, 3, None), (8, 9, (2, 3), None), (7, 13, (2, 3), (3, 4)),
    # KW == SW == 3: the 3-wide vector rows (rows of 4..17 outputs), remainders, KH != 3, SH != KH
    (9, 12, 3, None), (6, 26, 3, None), (7, 29, 3, None), (12, 51, 3, None), (27, 27, 3, None),
    (5, 24, (2, 3), None), (6, 41, (2, 3), None), (4, 15, (1, 3), None), (8, 21, 3, (2, 3)),
    (11, 22, (2, 3), (4, 3)),
    # one output column (global pooling and the like): the register sums of the generic loop
    (7, 7, 7, None), (1, 1, 1, None), (9, 5, (3, 5), (2, 1)), (6, 4, (2, 4), (1, 3)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", FAST_CASES, ids=str)
def test_fast_paths_match_the_reference_exactly(case, dtype, kernels):
    H, W, ks, st_ = case
    rng = np.random.default_rng(H * 1000 + W)
    # few distinct values: ties everywhere, in every window position (the first one must win)
    x = rng.integers(-3, 3, (2, 3, H, W)).astype(dtype)
    x_before = x.copy()
    y, idx = maxpool2d_forward(x, ks, st_, return_indices=True)
    assert_array_equal(y, ref_max(x, ks, st_))
    assert_array_equal(idx, ref_max_indices(x, ks, st_))
    assert_array_equal(maxpool2d_forward(x, ks, st_), y)  # the path without indices
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert_array_equal(maxpool2d_backward(dy, x, ks, st_), ref_max_backward(dy, x, ks, st_).astype(dtype))
    assert_array_equal(maxpool2d_backward(dy, x, ks, st_, indices=idx),
                       ref_max_backward(dy, x, ks, st_).astype(dtype))
    xr = rng.standard_normal(x.shape).astype(dtype)
    assert_array_equal(avgpool2d_forward(xr, ks, st_), ref_avg_sequential(xr, ks, st_))
    dxa = avgpool2d_backward(dy, ks, st_, input_size=(H, W))
    (KH, KW), (SH, SW) = pair(ks), pair(ks if st_ is None else st_)
    if KH <= SH and KW <= SW:
        assert_array_equal(dxa, ref_avg_backward_disjoint(dy, x.shape, ks, st_))
    else:  # overlapping rows: the generic add loops
        assert_allclose(dxa, ref_avg_backward(dy.astype(np.float64), x.shape, ks, st_), **TOL[dtype])
    assert_array_equal(x, x_before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", [(2, 2), (2, 3), (3, 3)])
def test_every_nan_pattern_of_a_window(window, dtype, kernels):
    """All subsets of NaN positions in a window, at every output column of a row wider than one vector:
    NaN wins over numbers, the first NaN (row-major) over later ones; ties of 5 and -inf around it."""
    KH, KW = window
    OW, n = 9, KH * KW
    patterns = [[(m >> b) & 1 for b in range(n)] for m in range(2**n)]
    rng = np.random.default_rng(7)
    x = np.empty((len(patterns), 1, KH, KW * OW), dtype=dtype)
    for i, pat in enumerate(patterns):
        for q in range(OW):
            w = rng.choice(np.array([1.0, 5.0, 5.0, -np.inf], dtype=dtype), size=(KH, KW))
            w[np.array(pat, bool).reshape(KH, KW)] = np.nan
            x[i, 0, :, KW * q:KW * q + KW] = w
    y, idx = maxpool2d_forward(x, window, return_indices=True)
    assert_array_equal(y, ref_max(x, window))  # NaN compares equal to NaN in assert_array_equal
    assert_array_equal(idx, ref_max_indices(x, window))
    assert np.isnan(y[1:, 0]).all() and not np.isnan(y[0, 0]).any()
    for i, pat in enumerate(patterns[1:], start=1):
        r, c = divmod(pat.index(1), KW)
        assert_array_equal(idx[i, 0, 0], r * KW * OW + KW * np.arange(OW) + c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinities_and_constant_planes(dtype, kernels):
    x = np.full((1, 2, 6, 18), -np.inf, dtype=dtype)
    x[0, 1] = 3.0
    y, idx = maxpool2d_forward(x, 2, return_indices=True)
    assert_array_equal(y[0, 0], -np.inf)
    assert_array_equal(y[0, 1], 3.0)
    top_left = (np.arange(3)[:, None] * 2 * 18 + np.arange(9) * 2)
    assert_array_equal(idx[0, 0], top_left)
    assert_array_equal(idx[0, 1], top_left)
    dx = maxpool2d_backward(np.ones_like(y), x, 2)
    assert_array_equal(dx[0, :, ::2, ::2], 1)
    assert dx.sum() == y.size
    x[0, 0, 5, 17] = np.inf
    assert maxpool2d_forward(x, 2)[0, 0, 2, 8] == np.inf


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_signed_zeros_keep_the_bits_of_the_generic_loops(dtype, kernels):
    """The average starts its sum from +0 and the disjoint gradient adds +0, as the generic loops do: an all
    -0.0 window averages to +0.0 and a -0.0 gradient spreads as +0.0; max pooling keeps the -0.0 it picks."""
    x = np.full((1, 1, 4, 16), -0.0, dtype=dtype)
    assert not np.signbit(avgpool2d_forward(x, 2)).any()
    assert not np.signbit(avgpool2d_backward(np.full((1, 1, 2, 8), -0.0, dtype=dtype), 2)).any()
    assert np.signbit(maxpool2d_forward(x, 2)).all()


@pytest.mark.parametrize("layout", ["strided", "fortran", "readonly"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_paths_on_non_contiguous_inputs(layout, dtype, kernels):
    rng = np.random.default_rng(11)
    base = rng.standard_normal((3, 4, 30, 36)).astype(dtype)
    if layout == "strided":
        x = base[::2, ::2, ::2, ::2]  # (2, 2, 15, 18)
    elif layout == "fortran":
        x = np.asfortranarray(base)
    else:
        x = base.copy()
        x.flags.writeable = False
    dy = np.asfortranarray(rng.standard_normal(ref_max(x, 2).shape).astype(dtype))
    x_before, dy_before = x.copy(), dy.copy()
    assert_array_equal(maxpool2d_forward(x, 2), ref_max(x, 2))
    assert_array_equal(avgpool2d_forward(x, 2), ref_avg_sequential(np.ascontiguousarray(x), 2))
    assert_array_equal(maxpool2d_backward(dy, x, 2), ref_max_backward(dy, x, 2).astype(dtype))
    assert_array_equal(avgpool2d_backward(dy, 2, input_size=x.shape[2:]), ref_avg_backward_disjoint(dy, x.shape, 2))
    assert_array_equal(x, x_before)
    assert_array_equal(dy, dy_before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_paths_are_bitwise_independent_of_the_thread_count(dtype, kernels, small_work_threads):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((3, 5, 14, 29)).astype(dtype)
    x[0, 1, 3, 4] = np.nan
    dy = rng.standard_normal((3, 5, 7, 14)).astype(dtype)
    dy3 = rng.standard_normal((3, 5, 4, 9)).astype(dtype)
    results = []
    previous = set_num_threads(1)
    try:
        for nt in (1, 2, 3):
            set_num_threads(nt)
            y, idx = maxpool2d_forward(x, 2, return_indices=True)
            results.append((y, idx, maxpool2d_backward(dy, x, 2), avgpool2d_forward(x, 2),
                            avgpool2d_backward(dy, 2, input_size=x.shape[2:]),
                            maxpool2d_forward(x, 3), avgpool2d_backward(dy3, 3, input_size=x.shape[2:])))
    finally:
        set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert a.tobytes() == b.tobytes()


def test_pooling_runs_the_build_picked_for_this_cpu():
    import cnn_ext.pooling
    from cnn_ext import _kernels

    assert cnn_ext.pooling._pooling is _kernels.pooling
    isa = _kernels.VARIANTS["pooling"]
    expected = "cnn_ext._kernels.pooling" + ("" if isa == "baseline" else f"_{isa}")
    assert _kernels.pooling.__name__ == expected
    assert _kernels.gemm.__name__ == expected.replace("pooling", "gemm")
