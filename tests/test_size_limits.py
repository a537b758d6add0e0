"""Size limits of every int argument: beyond 32 bits, or shapes that cannot be allocated, are ValueErrors
naming the arguments (before any allocation), across the ops, the pooling functions and the layers."""
import numpy as np
import pytest

from cnn_ext import (
    AvgPool2D,
    Conv2D,
    Dense,
    MaxPool2D,
    avgpool2d_backward,
    avgpool2d_forward,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    conv2d_output_shape,
    maxpool2d_backward,
    maxpool2d_forward,
)

INT_MAX = 2**31 - 1
X = np.zeros((1, 1, 5, 5))
K = np.zeros((1, 1, 3, 3))
B = np.zeros(1)
DY = np.zeros((1, 1, 3, 3))  # the gradient of conv2d_forward(X, K, B)
TOO_BIG = r"<= 2\*\*31 - 1 = 2147483647"

# ---------------------------------------------------------------------------------------------
# huge ints: every int argument fits 32 bits; shapes NumPy cannot allocate are refused up front
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("big", [2**31, 2**40, 2**63, 2**100])
@pytest.mark.parametrize("call,name", [
    (lambda v: conv2d_forward(X, K, B, stride=v), "stride"),
    (lambda v: conv2d_forward(X, K, B, stride=(1, v)), "stride"),
    (lambda v: conv2d_forward(X, K, B, padding=v), "padding"),
    (lambda v: conv2d_forward(X, K, B, padding=(v, 0)), "padding"),
    (lambda v: conv2d_forward(X, K, B, padding=((0, v), (0, 0))), "padding"),
    (lambda v: conv2d_forward(X, K, B, padding=np.array([1, v], dtype=object)), "padding"),
    (lambda v: conv2d_kernel_gradient(DY, X, stride=v, kernel_size=3), "stride"),
    (lambda v: conv2d_kernel_gradient(DY, X, padding=v), "padding"),
    (lambda v: conv2d_kernel_gradient(DY, X, kernel_size=v), "kernel_size"),
    (lambda v: conv2d_input_gradient(DY, K, stride=v), "stride"),
    (lambda v: conv2d_input_gradient(DY, K, padding=v), "padding"),
    (lambda v: conv2d_input_gradient(DY, K, input_size=v), "input_size"),
    (lambda v: conv2d_output_shape((v, 5), 3), "input_hw"),
    (lambda v: Conv2D(1, 1, v), "kernel_size"),
    (lambda v: Conv2D(1, 1, 3, stride=v), "stride"),
    (lambda v: Conv2D(1, 1, 3, padding=v), "padding"),
    (lambda v: Conv2D(1, 1, 3, dilation=v), "dilation"),
    (lambda v: maxpool2d_forward(X, v), "kernel_size"),
    (lambda v: maxpool2d_forward(X, 2, v), "stride"),
    (lambda v: maxpool2d_backward(DY[:, :, :2, :2], X, 2, (2, v)), "stride"),
    (lambda v: avgpool2d_forward(X, (v, 2)), "kernel_size"),
    (lambda v: avgpool2d_backward(DY, 2, input_size=v), "input_size"),
    (lambda v: avgpool2d_backward(DY, 2, stride=v), "stride"),
    (lambda v: MaxPool2D(v), "kernel_size"),
    (lambda v: AvgPool2D(2, stride=v), "stride"),
])
def test_ints_beyond_32_bits_are_value_errors_naming_the_argument(call, name, big):
    # was: OverflowError from the kernels, or NumPy's "array is too big" / "Maximum allowed dimension exceeded"
    with pytest.raises(ValueError, match=rf"{name} must be {TOO_BIG} .*, got .*{big}"):
        call(big)


def test_largest_32_bit_ints_are_accepted():
    assert conv2d_forward(X, K, B, stride=INT_MAX).shape == (1, 1, 1, 1)
    assert conv2d_output_shape((INT_MAX, 5), (INT_MAX, 5)) == (1, 1)
    assert maxpool2d_forward(X, 5, INT_MAX).shape == (1, 1, 1, 1)
    assert Conv2D(1, 1, 3, stride=INT_MAX).stride == (INT_MAX, INT_MAX)


@pytest.mark.parametrize("call,match", [
    # outputs with a side beyond 32 bits: named with the arguments that made them
    (lambda: conv2d_forward(X, K, B, padding=INT_MAX), r"x \(1, 1, 5, 5\) with kernels \(1, 1, 3, 3\), padding "
     r"\(2147483647, .*output 4294967297x4294967297; sizes must be <= 2\*\*31 - 1"),
    (lambda: conv2d_forward(X, K, B, padding=((2**30, 2**30), (0, 0))), r"padding .*output 2147483651x3"),
    (lambda: conv2d_output_shape((5, 5), 3, padding=2**30), r"output 2147483651x2147483651"),
    (lambda: conv2d_kernel_gradient(DY[:, :, :1, :1], X, padding=INT_MAX), r"kernel 4294967299x4294967299"),
    (lambda: conv2d_input_gradient(DY, K, stride=INT_MAX), r"stride \(2147483647, 2147483647\): input "
     r"4294967297x4294967297"),
    (lambda: avgpool2d_backward(DY, 2, stride=INT_MAX), r"stride \(2147483647, 2147483647\): input 4294967296"),
    # sides within 32 bits whose arrays would not fit an intp of bytes: refused before NumPy's own error
    (lambda: conv2d_forward(X, K, B, padding=2**29), r"conv2d_forward: x \(1, 1, 5, 5\) with kernels \(1, 1, 3, 3\), "
     r"stride \(1, 1\) and padding \(536870912, .* gives y of shape \(1, 1, 1073741827, 1073741827\): \d+ bytes, "
     r"more than this machine.s memory"),
    (lambda: conv2d_kernel_gradient(DY[:, :, :1, :1], X, padding=2**29), r"conv2d_kernel_gradient: .* give dK of "
     r"shape \(1, 1, 1073741829, 1073741829\)"),
    (lambda: conv2d_input_gradient(DY, K, stride=2**29), r"conv2d_input_gradient: dE_dY \(1, 1, 3, 3\) with kernels "
     r"\(1, 1, 3, 3\), stride \(536870912, 536870912\) .* gives dX of shape \(1, 1, 1073741827, 1073741827\)"),
    (lambda: avgpool2d_backward(DY, 2, stride=2**29), r"avgpool2d_backward: .* gives dX of shape "
     r"\(1, 1, 1073741826, 1073741826\)"),
    (lambda: avgpool2d_backward(DY[:, :, :1, :1], INT_MAX, input_size=INT_MAX), r"avgpool2d_backward: .* dX of "
     r"shape \(1, 1, 2147483647, 2147483647\)"),
    (lambda: Conv2D(1, 1, INT_MAX), r"Conv2D: c_in=1, c_out=1, kernel_size=\(2147483647, 2147483647\) give kernels "
     r"of shape .* more than this machine.s memory"),
    (lambda: Conv2D(2**62, 4, 3), r"c_in must be <= 2147483647, got 4611686018427387904"),
    (lambda: Dense(2**62, 4), r"n_in must be <= 2147483647, got 4611686018427387904"),
    (lambda: Dense(2**30, 2**30), r"Dense: n_in=1073741824, n_out=1073741824 give weights of shape "
     r"\(1073741824, 1073741824\)"),
])
def test_outputs_too_large_are_value_errors_before_allocating(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_layers_name_themselves_around_a_too_large_output():
    with pytest.raises(ValueError, match=r"Conv2D\(1, 1, .*input of shape \(1, 1, 5, 5\): .*output 2147483651"):
        Conv2D(1, 1, 3, padding=2**30, seed=0).forward(X)


@pytest.mark.parametrize("pair, error, match", [
    ((0, 1), ValueError, "stride must be >= 1"),
    ((1, -3), ValueError, "stride must be >= 1"),
    ((1, 2**31), ValueError, TOO_BIG),
    ((1, True), ValueError, "stride must be an int or a pair of ints"),
    ((1.0, 1), TypeError, "stride must be an int or a pair of ints"),
])
def test_pairs_of_ints_are_checked_like_ints(pair, error, match):
    """Pairs of exact ints take a short path through the checks (a layer's stride / kernel size): the values
    are still checked; other pairs take the generic one."""
    with pytest.raises(error, match=match):
        conv2d_forward(X, K, B, stride=pair)
    with pytest.raises(error, match=match):
        conv2d_output_shape((5, 5), 3, stride=pair)
    assert conv2d_output_shape((28, 27), (5, 4), (1, 2), "valid") == (24, 12)


# ---------------------------------------------------------------------------------------------
# scratch: an output that fits can still need a huge padded copy per thread (many input channels, a
# huge padding); such calls run through im2col's bounded blocks instead of failing on scratch
# ---------------------------------------------------------------------------------------------

def test_a_huge_padding_on_many_channels_runs_in_bounded_scratch():
    from cnn_ext import _methods

    C, p = 4096, 400  # one padded sample of 4096 channels: 4096 * 801**2 * 8 bytes = 21 GB
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, C, 1, 1))
    k = rng.standard_normal((2, C, 1, 1))
    b = np.array([0.5, -0.5])
    assert _methods._slab_bytes(_methods.Geometry(1, C, 2, 1, 1, 1, 1, 2 * p + 1, 2 * p + 1, 1, 1, (p,) * 4),
                                np.float64) > _methods.MAX_SLAB_BYTES
    y = conv2d_forward(x, k, b, padding=p)
    assert y.shape == (1, 2, 2 * p + 1, 2 * p + 1)
    centre = y[0, :, p, p]
    np.testing.assert_allclose(centre, k[:, :, 0, 0] @ x[0, :, 0, 0] + b, rtol=1e-12)
    y[0, :, p, p] = b
    assert (y == b[None, :, None, None]).all()  # everywhere else only the bias
    dy = rng.standard_normal(y.shape)
    dk = conv2d_kernel_gradient(dy, x, padding=p)
    np.testing.assert_allclose(dk[:, :, 0, 0], np.outer(dy[0, :, p, p], x[0, :, 0, 0]), rtol=1e-12)
    for call in (lambda: conv2d_forward(x, k, b, padding=p, method="direct"),
                 lambda: conv2d_forward(x, k, b, padding=p, method="wide"),
                 lambda: conv2d_kernel_gradient(dy, x, padding=p, method="wide")):
        with pytest.raises(ValueError, match="padded copy of one sample"):
            call()
