"""A sequential network with the reference tutorial's interface.

``forward`` chains the layers; ``backward`` walks them in reverse and returns each layer's gradient dict in
layer order; ``update(learning_rate, grads)`` (the tutorial's argument order) hands each dict to its layer.

One threading layer: while a network call runs, the BLAS libraries are held to one thread and the parallelism
is cnn_ext's own (its kernels' OpenMP team). NumPy's OpenBLAS threads keep spinning ~0.1 s after each call, so
letting them run between the kernels' parallel regions made a 2-thread training step of the tutorial's MNIST
network 30x slower on 2 cores (34 ms instead of 1.15 ms in float32); the batch-16 Dense products gain
nothing from BLAS threads anyway.
The first layer's input gradient is never used, so when that layer's ``backward`` takes ``need_dX`` it is
called with ``need_dX=False`` (for the tutorial's MNIST network that was a third of the step time).

The gradient rule is the loss's: ``backward`` given an :class:`~cnn_ext.losses.ExactGradient` (from
``softmax_cross_entropy`` or ``exact(...)``) hands every layer a flagged ``dE_dY``, so every parameter gets the
exact gradient of the loss; given a plain array (the tutorial's ``mse_loss``) every layer follows the tutorial.
"""
import inspect
import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from . import _checks
from ._threads import blas_single_thread
from .layers.base import EXACT, TUTORIAL, Gradients, Layer, grad_rule, sgd_step
from .losses import ExactGradient

__all__ = ["Network", "GradientRuleWarning"]


class GradientRuleWarning(UserWarning):
    """Gradients of unknown rule met gradients of a known one (see :mod:`cnn_ext.losses`)."""


def _has_parameters(layer):
    return callable(getattr(layer, "parameters", None)) and bool(layer.parameters())


def check_one_rule(grads, where):
    """ValueError when the gradient dicts of one step were made under both rules (some layers given an
    ExactGradient, others a plain dE_dY: e.g. a chain of hand-called backwards that lost the flag)."""
    rules = {getattr(g, "rule", None) for g in grads} - {None}
    if len(rules) > 1:
        detail = ", ".join(f"{i}: {getattr(g, 'rule')}" for i, g in enumerate(grads) if getattr(g, "rule", None))
        raise ValueError(f"{where}: the gradients mix the exact and the tutorial's rule (layer: rule = {detail}); "
                         f"compute them in one backward pass from one dE_dY (Network.backward passes the flag of "
                         f"an ExactGradient to every layer)")
    return rules.pop() if rules else None


def _accepts_need_dX(layer):
    try:
        return "need_dX" in inspect.signature(layer.backward).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class Network:
    """A stack of layers applied in order.

    Parameters
    ----------
    layers : iterable of layers
        Objects with ``forward(x)``, ``backward(dE_dY) -> dict`` and ``update(grads, learning_rate)``
        (:mod:`cnn_ext.layers` or any class following the same protocol).

    Attributes
    ----------
    layers : list
    """

    def __init__(self, layers):
        layers = list(layers)
        if not layers:
            raise ValueError("Network needs at least one layer, got an empty list")
        for i, layer in enumerate(layers):
            missing = [m for m in ("forward", "backward", "update") if not callable(getattr(layer, m, None))]
            if missing:
                raise TypeError(f"layer {i} ({layer!r}) has no {', '.join(missing)} method")
        self.layers = layers
        self._skip_cache = (None, False)  # (first layer, whether its backward takes need_dX)

    def __call__(self, x):
        """``net(x)`` is ``net.forward(x)``, as in PyTorch."""
        return self.forward(x)

    def train(self, mode=True):
        """Put every layer in training mode (``mode=True``) or evaluation mode; returns the network.

        Sets each layer's ``training`` attribute, which layers that act differently in training (BatchNorm,
        Dropout) read. A new network is in training mode. :func:`cnn_ext.fit` trains in training mode and
        evaluates in evaluation mode, and leaves the network in evaluation mode.
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"train: mode must be True or False, got {mode!r}")
        for layer in self.layers:
            layer.training = bool(mode)
        return self

    def eval(self):
        """Put every layer in evaluation mode (``train(False)``); returns the network."""
        return self.train(False)

    @property
    def training(self):
        """True when every layer is in training mode (a layer without the attribute counts as training)."""
        return all(getattr(layer, "training", True) for layer in self.layers)

    def forward(self, x):
        """Output of the last layer for input ``x``; every layer caches what its backward needs."""
        with blas_single_thread():
            for layer in self.layers:
                x = layer.forward(x)
        return x

    def backward(self, dE_dY):
        """Per-layer gradient dicts, in layer order (index i belongs to ``layers[i]``).

        The first layer is asked to skip its ``"dX"`` when its ``backward`` takes ``need_dX``.
        """
        grads = [None] * len(self.layers)
        first = self.layers[0]
        if self._skip_cache[0] is not first:  # inspect.signature costs ~50 us: once per first layer
            self._skip_cache = (first, _accepts_need_dX(first))
        exact = grad_rule(dE_dY) == EXACT
        with blas_single_thread():
            for i in range(len(self.layers) - 1, -1, -1):
                layer = self.layers[i]
                if exact and not isinstance(dE_dY, ExactGradient):  # every layer sees the loss's rule
                    dE_dY = np.asarray(dE_dY).view(ExactGradient)
                if i == 0 and self._skip_cache[1]:
                    g = layer.backward(dE_dY, need_dX=False)
                else:
                    g = layer.backward(dE_dY)
                grads[i] = g
                if i > 0:
                    dE_dY = g["dX"]
        if exact:
            for i, (layer, g) in enumerate(zip(self.layers, grads)):
                if not isinstance(g, Gradients) and _has_parameters(layer) and \
                        not getattr(layer, "exact_gradients", False):
                    warnings.warn(f"Network.backward: layer {i} ({layer!r}) does not say whether its backward returns "
                                  f"the exact gradient of the loss for an ExactGradient dE_dY (batch sums, not "
                                  f"means); set exact_gradients = True on its class once it does",
                                  GradientRuleWarning, stacklevel=2)
        return grads

    def update(self, learning_rate, grads):
        """Plain SGD: ``layers[i].update(grads[i], learning_rate)`` for every layer.

        ``learning_rate`` is any finite real number (note the order: a layer's ``update`` takes
        ``(grads, learning_rate)``); ``grads`` the list :meth:`backward` returned. Swapped or mistyped arguments
        raise ``TypeError``, a NaN or infinite rate ``ValueError``, before any parameter changes.
        """
        learning_rate = _checks.learning_rate(learning_rate, grads, "Network", "learning_rate, grads")
        if isinstance(grads, (Mapping, str, bytes)) or not isinstance(grads, Iterable):
            raise TypeError(f"Network.update(learning_rate, grads): grads must be the list of per-layer dicts "
                            f"backward returned, got {'dict' if isinstance(grads, dict) else type(grads).__name__}")
        grads = list(grads)
        if len(grads) != len(self.layers):
            raise ValueError(f"update: got {len(grads)} gradient dicts for {len(self.layers)} layers")
        check_one_rule(grads, "Network.update")
        # All or nothing: every layer's dict is checked (once) before the first parameter changes; a layer with
        # its own update rule gets its dict as it is.
        steps = [(None, layer._grad_pairs(g)) if getattr(type(layer), "update", None) is Layer.update
                 else (layer, g) for layer, g in zip(self.layers, grads)]
        with blas_single_thread():
            for layer, g in steps:
                if layer is not None:
                    layer.update(g, learning_rate)
                    continue
                for p, d in g:
                    sgd_step(p, d, learning_rate)

    def predict(self, x, batch_size=256):
        """Forward pass over ``x`` in chunks of ``batch_size`` samples (bounded memory), concatenated.

        Like ``forward`` it replaces the layers' caches, so call it between training steps, not inside one.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"predict: x must have a batch axis, got a scalar of shape {x.shape}")
        if x.shape[0] <= batch_size:
            return self.forward(x)
        return np.concatenate([self.forward(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    def parameters(self):
        """``(f"{i}.{param_name}", grad_key, ndarray)`` for every parameter of every layer, in layer order.

        The prefix ``i`` is the layer index, so the matching gradient is ``grads[i][grad_key]``.
        """
        return [(f"{i}.{name}", key, arr)
                for i, layer in enumerate(self.layers)
                for name, key, arr in (layer.parameters() if _has_parameters(layer) else [])]

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Network(\n" + "\n".join(lines) + "\n)"
