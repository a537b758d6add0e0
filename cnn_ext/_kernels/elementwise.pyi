"""Type stubs for the compiled kernel module cnn_ext._kernels.elementwise (src_pyx/elementwise.pyx).

Private: call the validated wrappers in cnn_ext.layers and cnn_ext.optim. Every float array of one call has the same
dtype, float32 or float64, and is C-contiguous; outputs (OUT) and scratch (TMP) are allocated by the caller.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def relu_forward(
    x: NDArray[_F],  # IN  (n,)
    y: NDArray[_F],  # OUT (n,)
    num_threads: int,
) -> None:
    """y = max(x, 0): +0.0 for x <= 0 (-0.0 included), NaN stays NaN."""

def relu_backward(
    x: NDArray[_F],  # IN  (n,) forward input
    dy: NDArray[_F],  # IN  (n,)
    dx: NDArray[_F],  # OUT (n,)
    num_threads: int,
) -> None:
    """dx = dy * [x > 0] (a product, as NumPy's: dy * 0 is -0.0 for dy < 0 and NaN for dy = ±inf or NaN)."""

def leaky_relu_forward(
    x: NDArray[_F],  # IN  (n,)
    y: NDArray[_F],  # OUT (n,)
    alpha: float,
    num_threads: int,
) -> None:
    """y = x where x > 0, else x * alpha (alpha rounded to the arrays' dtype first)."""

def leaky_relu_backward(
    x: NDArray[_F],  # IN  (n,) forward input
    dy: NDArray[_F],  # IN  (n,)
    dx: NDArray[_F],  # OUT (n,)
    alpha: float,
    num_threads: int,
) -> None:
    """dx = dy where x > 0, else dy * alpha."""

def sigmoid_backward(
    y: NDArray[_F],  # IN  (n,) forward output
    dy: NDArray[_F],  # IN  (n,)
    dx: NDArray[_F],  # OUT (n,)
    num_threads: int,
) -> None:
    """dx = ((1 - y) * y) * dy, rounded after each operation."""

def tanh_backward(
    y: NDArray[_F],  # IN  (n,) forward output
    dy: NDArray[_F],  # IN  (n,)
    dx: NDArray[_F],  # OUT (n,)
    num_threads: int,
) -> None:
    """dx = (1 - y * y) * dy, rounded after each operation."""

def add(
    a: NDArray[_F],  # IN  (n,)
    b: NDArray[_F],  # IN  (n,)
    out: NDArray[_F],  # OUT (n,)
    num_threads: int,
) -> None:
    """out = a + b (a residual block's sum, or its two input gradients)."""

def add_relu(
    a: NDArray[_F],  # IN  (n,)
    b: NDArray[_F],  # IN  (n,)
    out: NDArray[_F],  # OUT (n,)
    num_threads: int,
) -> None:
    """out = max(a + b, 0) as relu_forward of the sum (a residual block's sum and the ReLU after it)."""

def adam_update(
    p: NDArray[_F],  # IN/OUT (n,) parameter
    g: NDArray[_F],  # IN     (n,) gradient (with L2 weight decay already added)
    m: NDArray[_F],  # IN/OUT (n,) first moment
    v: NDArray[_F],  # IN/OUT (n,) second moment
    b1: float,
    b2: float,
    scale: float,
    eps: float,
    step: float,
    num_threads: int,
) -> None:
    """One Adam step in place: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g²; p -= step * m / (sqrt(v) scale +
    eps), every constant rounded to the arrays' dtype first (as NumPy rounds a Python float operand)."""
