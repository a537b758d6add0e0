"""Running a list of layers forward and backward, as Network and Residual do.

One thing happens here that a loop of ``layer.forward`` / ``layer.backward`` calls would not do: a ReLU right
after a BatchNorm (or a residual block) is applied in that layer's own pass over its output, and a ReLU after a
BatchNorm is differentiated in the BatchNorm's backward pass, so the pair reads and writes its activations once
instead of twice. A ReLU right before a MaxPool2D (conv, ReLU, pool: most CNNs) is applied and differentiated in
the pool's passes, so its full-size output and input gradient are never made. The results are bitwise those of
the layers one after the other, and the caches are left as the layers' own forwards leave them, so calling the
layers' ``backward`` one by one still works.

A layer class takes part by defining, in its own class body, ``_RELU_PAIRING`` ("forward" or "both": the ReLU
after it) and ``_forward(x, relu)`` (and ``_backward(dE_dY, relu)`` for "both"), or ``_POOLS_RELU = True`` (the
ReLU before it) and both methods; subclasses, and instances with a ``forward`` or ``backward`` of their own (a
hook, a patch), are run as they are.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .activations import ReLU

__all__ = ["backward_chain", "forward_chain"]


def _own(layer: Any) -> bool:
    """No ``forward`` / ``backward`` set on the instance itself (a hook or a patch would be skipped)."""
    d = getattr(layer, "__dict__", {})
    return "forward" not in d and "backward" not in d


def _relu_partner(layers: Sequence[Any], j: int) -> str | None:
    """How layers[j] takes in the ReLU at layers[j + 1]: "both" (forward and backward), "forward", or None."""
    if j + 1 >= len(layers) or type(layers[j + 1]) is not ReLU:
        return None
    how = vars(type(layers[j])).get("_RELU_PAIRING")
    return how if how and _own(layers[j]) and _own(layers[j + 1]) else None


def _pools_relu(layers: Sequence[Any], j: int) -> bool:
    """layers[j] is a ReLU that layers[j + 1] runs in its own passes."""
    return j + 1 < len(layers) and type(layers[j]) is ReLU and vars(type(layers[j + 1])).get("_POOLS_RELU", False) \
        and _own(layers[j]) and _own(layers[j + 1])


def forward_chain(layers: Sequence[Any], x: Any) -> Any:
    """The last layer's output of ``x``; every layer caches what its backward needs."""
    j = 0
    while j < len(layers):
        if _relu_partner(layers, j):
            x = layers[j]._forward(x, layers[j + 1])
            j += 2
        elif _pools_relu(layers, j):
            x = layers[j + 1]._forward(x, layers[j])
            j += 2
        else:
            x = layers[j].forward(x)
            j += 1
    return x


def backward_chain(layers: Sequence[Any], dy: Any, exact: bool,
                   first_takes_need_dX: bool = False) -> tuple[list[Any], Any]:
    """(per-layer gradient dicts in layer order, dX of the first layer) for ``dy``, the gradient of the last
    layer's output. ``exact``: every layer is given an ExactGradient (the loss's rule); ``first_takes_need_dX``:
    the first layer is asked to skip its dX (which is then None). A ReLU differentiated inside the BatchNorm
    before it, and a MaxPool2D that differentiated the ReLU before it, get an empty dict (their dX is never
    made)."""
    from ..losses import ExactGradient
    grads: list[Any] = [None] * len(layers)
    j = len(layers) - 1
    while j >= 0:
        if exact and not isinstance(dy, ExactGradient):
            dy = np.asarray(dy).view(ExactGradient)
        relu = layers[j]
        if j >= 1 and _relu_partner(layers, j - 1) == "both" and getattr(relu, "_y", None) is not None and \
                np.shape(relu._y) == layers[j - 1]._y_shape:
            grads[j] = {}
            j -= 1
            g = layers[j]._backward(dy, relu)
        elif j >= 1 and getattr(layers[j], "_relu", None) is layers[j - 1] and _pools_relu(layers, j - 1) and \
                layers[j - 1]._x is layers[j]._x:  # the pair's caches from one forward_chain
            grads[j] = {}
            g = layers[j]._backward(dy, layers[j - 1])
            j -= 1
        elif j == 0 and first_takes_need_dX:
            g = layers[j].backward(dy, need_dX=False)
        else:
            g = layers[j].backward(dy)
        grads[j] = g
        dy = g["dX"] if j > 0 else g.get("dX")
        j -= 1
    return grads, dy
