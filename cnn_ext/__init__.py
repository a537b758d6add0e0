"""cnn_ext: fast convolutional-network layers for NumPy users, with a Cython core."""
from ._version import __version__
from ._config import get_num_threads, set_num_threads
from .ops import (
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    conv2d_output_shape,
)

__all__ = [
    "__version__",
    "conv2d_forward",
    "conv2d_kernel_gradient",
    "conv2d_bias_gradient",
    "conv2d_input_gradient",
    "conv2d_output_shape",
    "get_num_threads",
    "set_num_threads",
]
