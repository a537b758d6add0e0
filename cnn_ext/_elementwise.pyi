"""Type stubs for the compiled kernel module cnn_ext._elementwise (src_pyx/_elementwise.pyx).

Private: called by the activation layers in cnn_ext.layers. Every array of one call is 1-D, C-contiguous, of
the same length and dtype (float32 or float64); outputs (OUT) are allocated by the caller; the functions release
the GIL and never raise on bad lengths (they trust cnn_ext.layers). Results are bitwise the NumPy formulas'.
"""
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

_F = TypeVar("_F", np.float32, np.float64)

def relu_forward(x: NDArray[_F], y: NDArray[_F], num_threads: int) -> None:
    """y = np.maximum(x, 0)."""

def relu_backward(x: NDArray[_F], dy: NDArray[_F], dx: NDArray[_F], num_threads: int) -> None:
    """dx = dy * (x > 0)."""

def leaky_relu_forward(x: NDArray[_F], y: NDArray[_F], alpha: float, num_threads: int) -> None:
    """y = np.where(x > 0, x, x * alpha), alpha in the arrays' dtype."""

def leaky_relu_backward(x: NDArray[_F], dy: NDArray[_F], dx: NDArray[_F], alpha: float, num_threads: int) -> None:
    """dx = np.where(x > 0, dy, dy * alpha), alpha in the arrays' dtype."""

def sigmoid_backward(y: NDArray[_F], dy: NDArray[_F], dx: NDArray[_F], num_threads: int) -> None:
    """dx = ((1 - y) * y) * dy, y the forward output."""

def tanh_backward(y: NDArray[_F], dy: NDArray[_F], dx: NDArray[_F], num_threads: int) -> None:
    """dx = (1 - y * y) * dy, y the forward output."""
