"""Every error path of the convolution functions: the exception type and a message naming the argument and the
shapes (pytest.raises(..., match=...)); thread-count validation."""
import numpy as np
import pytest

import cnn_ext
from cnn_ext import (
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
)

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


@pytest.mark.parametrize("padding", [((1, 0), (0,)), ((1, 0), (0, 1, 2)), ((1,), (0, 1))])
def test_misshapen_nested_padding_is_a_value_error(padding):
    x, k, b = np.zeros((1, 1, 5, 5)), np.zeros((1, 1, 3, 3)), np.zeros(1)
    with pytest.raises(ValueError, match="padding"):
        conv2d_forward(x, k, b, padding=padding)


def test_set_num_threads_validation(restore_threads):
    with pytest.raises(ValueError, match="n must be >= 1"):
        cnn_ext.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an integer"):
        cnn_ext.set_num_threads(1.5)
    prev = cnn_ext.set_num_threads(1)
    assert cnn_ext.get_num_threads() == 1
    assert prev >= 1
