"""The fused activation kernels (cnn_ext._kernels.elementwise) and the layers that use them: bitwise equal to the NumPy
formulas they replace (NaN positions and signed zeros included), on both dtypes, lengths off the vector width and
the 64-element chunk bounds, 1/2/3 threads, non-contiguous / unaligned / read-only inputs, never writing an input."""
import threading

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy.special import expit

import cnn_ext
from cnn_ext._kernels import elementwise as _elementwise
from cnn_ext.layers import activations
from cnn_ext.layers import LeakyReLU, ReLU, Sigmoid, Tanh

DTYPES = [np.float32, np.float64]
LENGTHS = [1, 3, 7, 63, 64, 65, 127, 129, 1000, 4097, 70001]
ALPHA = 0.01


# ----------------------------------------------------------------------------------------------
# the NumPy formulas the layers used before the kernels (the oracle)
# ----------------------------------------------------------------------------------------------

def ref_relu(x):
    return np.maximum(x, 0)


def ref_relu_grad(x, dy):
    return dy * (x > 0)


def ref_leaky(x, alpha=ALPHA):
    return np.where(x > 0, x, x * x.dtype.type(alpha))


def ref_leaky_grad(x, dy, alpha=ALPHA):
    return np.where(x > 0, dy, dy * dy.dtype.type(alpha))


def ref_sigmoid_grad(y, dy):
    dx = 1 - y
    dx *= y
    dx *= dy
    return dx


def ref_tanh_grad(y, dy):
    dx = y * y
    np.subtract(1, dx, out=dx)
    dx *= dy
    return dx


def assert_bitwise(got, want):
    """Same dtype, shape, NaN positions and, elsewhere, the same values with the same sign bits (-0.0 vs 0.0)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    nan = np.isnan(want)
    assert_array_equal(np.isnan(got), nan)
    assert_array_equal(got[~nan], want[~nan])
    assert_array_equal(np.signbit(got[~nan]), np.signbit(want[~nan]))


SPECIAL = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-310, -1e-310]


def data(shape, dtype, seed):
    """Normal values with a quarter of the entries NaN, ±inf, ±0.0 or subnormal (in float32 1e-310 becomes ±0)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape)
    special = rng.random(shape) < 0.25
    a[special] = rng.choice(SPECIAL, int(special.sum()))
    with np.errstate(over="ignore", under="ignore"):
        return a.astype(dtype)


def readonly(a):
    a = np.array(a)
    a.setflags(write=False)
    return a


@pytest.fixture(autouse=True)
def restore_threads():
    previous = cnn_ext.get_num_threads()
    yield
    cnn_ext.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------
# the kernels themselves, on flat arrays
# ----------------------------------------------------------------------------------------------

KERNELS = [
    # kernel, reference, inputs: "x" forward input, "y" forward output (sigmoid / tanh), "dy"; extra args
    (_elementwise.relu_forward, ref_relu, ("x",), ()),
    (_elementwise.relu_backward, ref_relu_grad, ("x", "dy"), ()),
    (_elementwise.leaky_relu_forward, ref_leaky, ("x",), (ALPHA,)),
    (_elementwise.leaky_relu_backward, ref_leaky_grad, ("x", "dy"), (ALPHA,)),
    (_elementwise.leaky_relu_forward, lambda x: ref_leaky(x, -1.5), ("x",), (-1.5,)),  # negative and > 1 slopes
    (_elementwise.leaky_relu_backward, lambda x, dy: ref_leaky_grad(x, dy, 3.0), ("x", "dy"), (3.0,)),
    (_elementwise.sigmoid_backward, ref_sigmoid_grad, ("sig", "dy"), ()),
    (_elementwise.tanh_backward, ref_tanh_grad, ("tanh", "dy"), ()),
    (_elementwise.add, np.add, ("x", "dy"), ()),  # a residual block's sum (+inf + -inf, -0.0 + -0.0)
    (_elementwise.add_relu, lambda a, b: ref_relu(np.add(a, b)), ("x", "dy"), ()),
]


def _inputs(names, n, dtype, seed):
    x = data(n, dtype, seed)
    with np.errstate(all="ignore"):
        arrays = {"x": x, "dy": data(n, dtype, seed + 1), "sig": expit(x), "tanh": np.tanh(x)}
    # forward outputs of exactly 0, 1, -1 and NaN too: the gradient formulas' edge values
    arrays["sig"][::5] = arrays["tanh"][::5] = arrays["sig"].dtype.type(1)
    arrays["tanh"][1::7] = -1
    return [readonly(arrays[name]) for name in names]


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel,ref,names,extra", KERNELS,
                         ids=[f"{k.__name__}{e}" for k, _, _, e in KERNELS])
def test_kernel_bitwise_equals_numpy_formula(kernel, ref, names, extra, dtype, n):
    inputs = _inputs(names, n, dtype, seed=n)
    before = [a.copy() for a in inputs]
    with np.errstate(invalid="ignore", over="ignore"):
        want = ref(*inputs)
    for threads in (1, 2, 3):
        out = np.full(n, 7, dtype=dtype)  # not zeros: every element must be written
        kernel(*inputs, out, *extra, threads)
        assert_bitwise(out, want)
    for a, b in zip(inputs, before):
        assert_bitwise(a, b)


def test_relu_layers_on_spelled_out_special_values():
    """np.maximum(-0.0, 0) is +0.0 and NaN stays NaN; dy * [x > 0] keeps the product's -0.0 and inf * 0 = NaN.
    Tiled 4096 times: large enough for the fused kernels, and the small copy for NumPy's path."""
    for dtype in DTYPES:
        for reps in (1, 4096):
            x = np.tile(np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, -1.0, 1.0, -np.nan], dtype), reps)
            dy = np.tile(np.array([-1.0, -0.0, np.inf, np.nan, -np.inf, -2.0, -0.0, 3.0], dtype), reps)
            tile = lambda values: np.tile(np.array(values, dtype), reps)  # noqa: E731
            with np.errstate(invalid="ignore"):
                relu, leaky = ReLU(), LeakyReLU(0.5)
                assert_bitwise(relu.forward(x), tile([0.0, 0.0, np.nan, 0.0, np.inf, 0.0, 1.0, np.nan]))
                assert_bitwise(relu.backward(dy)["dX"], tile([-0.0, -0.0, np.nan, np.nan, -np.inf, -0.0, -0.0, 0.0]))
                assert_bitwise(leaky.forward(x), tile([-0.0, 0.0, np.nan, -np.inf, np.inf, -0.5, 1.0, np.nan]))
                assert_bitwise(leaky.backward(dy)["dX"], tile([-0.5, -0.0, np.inf, np.nan, -np.inf, -1.0, -0.0, 1.5]))


def test_leaky_alpha_is_rounded_to_float32_first():
    """x * float32(alpha), as NumPy's float32 product: not x * alpha in double rounded once."""
    alpha = 0.1  # not a float32
    x = -np.arange(1, 40_961, dtype=np.float32) / 7
    y = LeakyReLU(alpha).forward(x)
    assert_bitwise(y, x * np.float32(alpha))
    assert not np.array_equal(y, (x.astype(np.float64) * alpha).astype(np.float32))  # the case does tell them apart


# ----------------------------------------------------------------------------------------------
# the layers
# ----------------------------------------------------------------------------------------------

LAYERS = [
    (ReLU, ref_relu, lambda x, y, dy: ref_relu_grad(x, dy)),
    (lambda: LeakyReLU(ALPHA), ref_leaky, lambda x, y, dy: ref_leaky_grad(x, dy)),
    (Sigmoid, expit, lambda x, y, dy: ref_sigmoid_grad(y, dy)),
    (Tanh, np.tanh, lambda x, y, dy: ref_tanh_grad(y, dy)),
]
LAYER_IDS = ["ReLU", "LeakyReLU", "Sigmoid", "Tanh"]


def _check_layer(make, f, df, x, dy):
    layer = make()
    x_before, dy_before = x.copy(), dy.copy()
    with np.errstate(all="ignore"):
        want_y = f(x)
        want_dx = df(x, want_y, dy.astype(want_y.dtype))
    with np.errstate(invalid="ignore"):  # NumPy's fallbacks warn for inf * 0
        y = layer.forward(x)
        g = layer.backward(dy)
        g2 = layer.backward(dy)
    assert_bitwise(y, want_y)
    assert_bitwise(g["dX"], want_dx)
    assert_bitwise(g2["dX"], want_dx)
    assert_bitwise(x, x_before)
    assert_bitwise(dy, dy_before)
    for out in (y, g["dX"]):
        assert not np.shares_memory(out, x) and not np.shares_memory(out, dy)
    return y, g["dX"]


# small arrays (NumPy) and large ones (the fused kernels, split over threads from ~2 * 65536 elements)
@pytest.mark.parametrize("shape", [(3, 5, 7, 11), (16, 100), (1001,), (2, 3, 150, 151), (140_003,), (3, 65_537)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make,f,df", LAYERS, ids=LAYER_IDS)
def test_layers_bitwise_on_every_thread_count(make, f, df, dtype, shape):
    x, dy = readonly(data(shape, dtype, 1)), readonly(data(shape, dtype, 2))
    results = []
    for threads in (1, 2, 3):
        cnn_ext.set_num_threads(threads)
        results.append(_check_layer(make, f, df, x, dy))
    for y, dx in results[1:]:
        assert_bitwise(y, results[0][0])
        assert_bitwise(dx, results[0][1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make,f,df", LAYERS, ids=LAYER_IDS)
def test_layers_with_default_thresholds(make, f, df, dtype):
    """The sizes users meet: the tutorial's small layers stay on NumPy, the MNIST CNN's first ReLU takes 2 threads."""
    cnn_ext.set_num_threads(2)
    for shape in [(16, 100), (16, 5, 26, 26), (8, 32, 28, 28)]:
        _check_layer(make, f, df, readonly(data(shape, dtype, 3)), readonly(data(shape, dtype, 4)))


def _layouts(dtype):
    """Arrays no kernel can read as one flat run of the dtype: strided, Fortran-ordered, unaligned."""
    base = data((6, 8, 30, 41), dtype, 5)  # large enough for the kernels where the layout allows
    raw = np.zeros(base.nbytes + 1, dtype=np.uint8)
    unaligned = np.frombuffer(raw.data, dtype=dtype, count=base.size, offset=1).reshape(base.shape)
    unaligned[...] = base
    assert not unaligned.flags.aligned
    return [base[:, ::2], base[..., 1:], np.asfortranarray(base), base.transpose(0, 2, 3, 1), unaligned]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make,f,df", LAYERS, ids=LAYER_IDS)
def test_layers_on_non_contiguous_and_unaligned_inputs(make, f, df, dtype):
    cnn_ext.set_num_threads(2)
    for x in _layouts(dtype):
        contiguous_dy = data(x.shape, dtype, 6)
        for dy in (contiguous_dy, np.asfortranarray(contiguous_dy), x[::-1]):
            _check_layer(make, f, df, readonly(x), readonly(dy))
        _check_layer(make, f, df, readonly(np.ascontiguousarray(x)), readonly(x))  # only dy strided


@pytest.mark.parametrize("make,f,df", LAYERS, ids=LAYER_IDS)
def test_layers_cast_gradients_to_the_input_dtype(make, f, df):
    """float64 (or int) dE_dY for a float32 input: cast to float32 first, the result stays float32."""
    for n in (300, 40_000):  # NumPy and the kernels
        x = readonly(data((4, n), np.float32, 7))
        for dy in (data((4, n), np.float64, 8), np.arange(4 * n).reshape(4, n) % 5 - 2):
            _, dx = _check_layer(make, f, df, x, readonly(dy))
            assert dx.dtype == np.float32


def test_layers_call_the_kernels_only_where_they_apply(monkeypatch):
    """Large C-contiguous arrays go through the kernels (so the bitwise tests above test them), with one thread per
    _FUSED_PER_THREAD elements; small or strided ones take NumPy."""
    calls = []

    def spy(kernel):
        def wrapped(*args):
            calls.append((kernel.__name__, args[-1]))
            return kernel(*args)
        return wrapped

    for name in ("relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward", "sigmoid_backward",
                 "tanh_backward"):
        monkeypatch.setattr(_elementwise, name, spy(getattr(_elementwise, name)))
    cnn_ext.set_num_threads(2)
    nt = cnn_ext.get_num_threads()  # 1 in a build without OpenMP (macOS wheels by default)
    big = data(2 * activations._FUSED_PER_THREAD + 3, np.float32, 9)
    for layer in (ReLU(), LeakyReLU(), Sigmoid(), Tanh()):
        layer.backward(layer.forward(big))
    assert calls == [("relu_forward", nt), ("relu_backward", nt), ("leaky_relu_forward", nt),
                     ("leaky_relu_backward", nt), ("sigmoid_backward", nt), ("tanh_backward", nt)]
    calls.clear()
    cnn_ext.set_num_threads(1)
    ReLU().forward(big)
    ReLU().forward(big[: activations._FUSED_MIN])
    assert calls == [("relu_forward", 1), ("relu_forward", 1)]
    calls.clear()
    cnn_ext.set_num_threads(2)
    for x in (big[: activations._FUSED_MIN - 1], big[::2], big.astype(np.float64)[1::2]):
        ReLU().forward(x)
    assert calls == []


def test_layers_from_several_python_threads_equal_serial():
    xs = [data((5, 3, 100, 101), np.float32, 10 + i) for i in range(4)]
    cnn_ext.set_num_threads(1)
    serial = [(ReLU().forward(x), LeakyReLU(0.2).forward(x)) for x in xs]
    cnn_ext.set_num_threads(2)
    results = [None] * len(xs)

    def work(i):
        results[i] = (ReLU().forward(xs[i]), LeakyReLU(0.2).forward(xs[i]))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for got, want in zip(results, serial):
        for g, w in zip(got, want):
            assert_bitwise(g, w)


def test_fused_helper_refuses_arrays_of_another_shape():
    """The kernels trust their lengths: a mismatched pair must never reach them (it would read past an array)."""
    x = np.ones(activations._FUSED_MIN * 2, dtype=np.float32)
    assert activations._fused(_elementwise.relu_backward, (x, x[: activations._FUSED_MIN])) is None
    assert activations._fused(_elementwise.relu_backward, (x, x.reshape(2, -1))) is None
    assert_bitwise(activations._fused(_elementwise.relu_backward, (x, -x)), -x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("relu", [False, True])
def test_add_helper_equals_numpy_for_every_layout(dtype, relu):
    """layers.activations.add: the kernel where it applies, NumPy elsewhere (other dtypes, views), same bits."""
    a = data((3, 70_001), dtype, 1)
    b = data((3, 70_001), dtype, 2)
    cases = [(a, b), (a[:, ::2], b[:, ::2]), (a, b.astype(np.float64)), (a[:1, :50], b[:1, :50])]
    for x, y in cases:
        with np.errstate(invalid="ignore"):
            want = np.add(x, y, dtype=np.result_type(x, y))
            if relu:
                want = ref_relu(want)
            got = activations.add(x, y, relu)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert_bitwise(got, want)
