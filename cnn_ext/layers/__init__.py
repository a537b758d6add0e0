"""Layers with the reference tutorial's interface, grouped by family.

- :mod:`.base`: the protocol (``forward``, ``backward``, ``update``, ``parameters``, ``get_config``), the
  registry ``LAYER_TYPES`` and what all layers share;
- :mod:`.conv`: Conv2D; :mod:`.dense`: Dense and Flatten; :mod:`.activations`: ReLU, LeakyReLU, Sigmoid,
  Tanh, Softmax; :mod:`.norm`: BatchNorm1D, BatchNorm2D;
  :mod:`.regularization`: Dropout; :mod:`.residual`: Residual; the pooling layers live with their operations
  in :mod:`cnn_ext.pooling`.

Gradients follow one rule set by the loss (see README, "The gradient rule"): a plain ``dE_dY`` keeps the
tutorial's conventions (Conv2D ``dK``/``dB`` and Dense ``dB`` batch means, Dense ``dW = xᵀ·dE_dY`` a batch sum);
an exact one (:func:`cnn_ext.exact`, softmax cross-entropy, ``fit``) gives the exact gradient of the loss. Conv kernels and biases start ~ N(0, 1), dense weights and biases ~ 0.1·N(0, 1), unless ``init=``
picks He or Glorot. A layer with parameters casts its input once to its own dtype (float64 by default, or
float32); activations keep the float dtype they receive.
"""
from .activations import LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .base import LAYER_TYPES, Layer, register_layer
from .conv import Conv2D
from .dense import Dense, Flatten
from .norm import BatchNorm1D, BatchNorm2D
from .regularization import Dropout
from .residual import Residual

__all__ = [
    "LAYER_TYPES",
    "register_layer",
    "Layer",
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
    "Residual",
]
