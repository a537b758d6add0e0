"""cnn_ext: fast convolutional-network layers for NumPy users, with a Cython core."""
from ._version import __version__
from ._compat import get_buffer_reuse, set_buffer_reuse
from ._info import show_config
from ._memory import keep_freed_memory
from ._threads import get_num_threads, set_num_threads
from .ops import (
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    conv2d_output_shape,
)
from .layers import (
    LAYER_TYPES,
    BatchNorm1D,
    BatchNorm2D,
    Dropout,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    LeakyReLU,
    ReLU,
    Residual,
    Sigmoid,
    Softmax,
    Tanh,
    register_layer,
)
from .losses import ExactGradient, exact, get_current_accuracy, mse, mse_loss, softmax_cross_entropy
from .network import Network
from .pooling import (
    AvgPool2D,
    GlobalAvgPool2D,
    MaxPool2D,
    avgpool2d_backward,
    avgpool2d_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)
from .optim import SGD, Adam, AdamW
from .serialization import load, save
from .gradcheck import GradientCheckError, gradient_check
from .training import evaluate, fit
from .interop import from_torch, to_torch
from . import callbacks, schedules

__all__ = [
    "__version__",
    "conv2d_forward",
    "conv2d_kernel_gradient",
    "conv2d_bias_gradient",
    "conv2d_input_gradient",
    "conv2d_output_shape",
    "get_buffer_reuse",
    "get_num_threads",
    "keep_freed_memory",
    "set_buffer_reuse",
    "set_num_threads",
    "show_config",
    # layers, network and losses (the tutorial's names)
    "Layer",
    "LAYER_TYPES",
    "register_layer",
    "Conv2D",
    "Flatten",
    "Dense",
    "ReLU",
    "Sigmoid",
    "Tanh",
    "LeakyReLU",
    "Softmax",
    "BatchNorm1D",
    "BatchNorm2D",
    "Dropout",
    "GlobalAvgPool2D",
    "Residual",
    "Network",
    "mse_loss",
    "mse",
    "softmax_cross_entropy",
    "exact",
    "ExactGradient",
    "get_current_accuracy",
    # pooling, optimisers, save/load (issue 6)
    "MaxPool2D",
    "AvgPool2D",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "SGD",
    "Adam",
    "AdamW",
    "save",
    "load",
    "gradient_check",
    "GradientCheckError",
    "fit",
    # the training toolkit (issue 22)
    "evaluate",
    "from_torch",
    "to_torch",
]
