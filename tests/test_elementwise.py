"""The fused activation kernels (cnn_ext._elementwise) and the layers that use them: bitwise equal to the NumPy
formulas they replace (NaN positions and signed zeros included), on both dtypes, lengths off the vector width and
the 64-element chunk bounds, 1/2/3 threads, non-contiguous / unaligned / read-only inputs, never writing an input."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy.special import expit

from cnn_ext import _elementwise

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


def test_relu_kernels_on_spelled_out_special_values():
    """np.maximum(-0.0, 0) is +0.0 and NaN stays NaN; dy * [x > 0] keeps the product's -0.0 and inf * 0 = NaN."""
    for dtype in DTYPES:
        x = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, -1.0, 1.0, -np.nan], dtype)
        dy = np.array([-1.0, -0.0, np.inf, np.nan, -np.inf, -2.0, -0.0, 3.0], dtype)
        y = np.empty_like(x)
        _elementwise.relu_forward(x, y, 1)
        assert_bitwise(y, np.array([0.0, 0.0, np.nan, 0.0, np.inf, 0.0, 1.0, np.nan], dtype))
        dx = np.empty_like(x)
        _elementwise.relu_backward(x, dy, dx, 1)
        assert_bitwise(dx, np.array([-0.0, -0.0, np.nan, np.nan, -np.inf, -0.0, -0.0, 0.0], dtype))
        _elementwise.leaky_relu_forward(x, y, 0.5, 1)
        assert_bitwise(y, np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, -0.5, 1.0, np.nan], dtype))
        _elementwise.leaky_relu_backward(x, dy, dx, 0.5, 1)
        assert_bitwise(dx, np.array([-0.5, -0.0, np.inf, np.nan, -np.inf, -1.0, -0.0, 1.5], dtype))


def test_leaky_alpha_is_rounded_to_float32_first():
    """x * float32(alpha), as NumPy's float32 product: not x * alpha in double rounded once."""
    alpha = 0.1  # not a float32
    x = -np.arange(1, 4097, dtype=np.float32) / 7
    y = np.empty_like(x)
    _elementwise.leaky_relu_forward(x, y, alpha, 1)
    assert_bitwise(y, x * np.float32(alpha))
    assert not np.array_equal(y, (x.astype(np.float64) * alpha).astype(np.float32))  # the case does tell them apart
