"""The residual block of ResNets: ``y = f(x) + shortcut(x)``, each branch a chain of layers."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .base import EXACT, LAYER_TYPES, Gradients, Layer, grad_rule, register_layer
from .activations import add
from .chain import backward_chain, forward_chain

if TYPE_CHECKING:
    from typing_extensions import Self

    from .._typing import FloatArray

__all__ = ["Residual"]


def _as_layers(layers, what, build):
    """A list of layers from layer objects or ``[class_name, config]`` pairs (a saved config); ``build(cls, cfg)``
    makes a layer of a pair."""
    if isinstance(layers, (str, bytes, Mapping)) or not isinstance(layers, Sequence) or not layers:
        raise TypeError(f"Residual: {what} must be a non-empty list of layers, got {layers!r}")
    out = []
    for j, layer in enumerate(layers):
        if isinstance(layer, (list, tuple)) and len(layer) == 2 and isinstance(layer[0], str) and \
                isinstance(layer[1], Mapping):
            cls = LAYER_TYPES.get(layer[0])
            if cls is None:
                raise ValueError(f"Residual: {what}[{j}] has unknown layer type {layer[0]!r}")
            layer = build(cls, dict(layer[1]))
        missing = [m for m in ("forward", "backward", "parameters") if not callable(getattr(layer, m, None))]
        if missing:
            raise TypeError(f"Residual: {what}[{j}] ({layer!r}) has no {', '.join(missing)} method")
        out.append(layer)
    return out


@register_layer
class Residual(Layer):
    """A residual block: ``y = f(x) + shortcut(x)``, with ``f`` the chain ``layers`` and ``shortcut`` the identity
    or a chain of its own (a 1x1 strided ``Conv2D`` and a ``BatchNorm2D`` when ``f`` changes the shape).

    The block is one layer of a :class:`~cnn_ext.Network`: ``backward`` sums the input gradients of both
    branches, ``parameters()``, ``buffers()`` and ``update`` cover every inner layer (names ``layers.{j}.{name}``
    and ``shortcut.{j}.{name}``, gradient keys likewise prefixed), ``train()`` / ``eval()`` reach the inner layers,
    and save / load round-trip it (its config holds the inner layers' configs). Put the ReLU that ResNets apply
    after the sum as the next layer of the network.

    Parameters
    ----------
    layers : list of layers
        ``f``; every inner layer's class must be registered (the built-in ones are) for save / load.
    shortcut : list of layers, optional
        None: the identity (``f`` must keep the shape).

    Notes
    -----
    x -> y of ``f(x)``'s shape, which ``shortcut(x)`` (or x) must have.
    """

    _RELU_PAIRING = "forward"  # a ReLU after the block is applied in the pass of the sum (layers/chain.py)

    def __init__(self, layers: Sequence[Layer], shortcut: Sequence[Layer] | None = None) -> None:
        super().__init__()
        self.layers = _as_layers(layers, "layers", lambda cls, cfg: cls(**cfg))
        self.shortcut = None if shortcut is None else _as_layers(shortcut, "shortcut", lambda cls, cfg: cls(**cfg))
        self._training = True

    @classmethod
    def basic_block(cls, c_in: int, c_out: int, stride: int = 1, *, init: str | None = "he_normal", seed=None,
                    dtype=np.float64) -> "Residual":
        """ResNet's basic block: 3x3 Conv2D (stride), BatchNorm2D, ReLU, 3x3 Conv2D, BatchNorm2D; the shortcut a
        1x1 Conv2D (stride) and a BatchNorm2D when the channels or the stride change, else the identity.

        ``seed`` (an int) seeds the three convolutions with ``seed``, ``seed + 1`` and ``seed + 2``.
        """
        from .conv import Conv2D
        from .activations import ReLU
        from .norm import BatchNorm2D
        seeds = [None] * 3 if seed is None else [seed, seed + 1, seed + 2]
        kw: dict[str, Any] = dict(init=init, dtype=dtype)  # the options every convolution of the block shares
        f = [Conv2D(c_in, c_out, 3, stride=stride, padding=1, seed=seeds[0], **kw), BatchNorm2D(c_out, dtype=dtype),
             ReLU(), Conv2D(c_out, c_out, 3, padding=1, seed=seeds[1], **kw), BatchNorm2D(c_out, dtype=dtype)]
        short = None
        if stride != 1 or c_in != c_out:
            short = [Conv2D(c_in, c_out, 1, stride=stride, seed=seeds[2], **kw), BatchNorm2D(c_out, dtype=dtype)]
        return cls(f, short)

    # -- the mode flag reaches the inner layers ------------------------------------------------
    @property
    def training(self) -> bool:
        """The block's mode; setting it sets the mode of every inner layer and of the shortcut."""
        return self._training

    @training.setter
    def training(self, mode: bool) -> None:
        self._training = bool(mode)
        for layer in self._all_layers():
            layer.training = self._training

    def _all_layers(self):
        return [*self.layers, *(self.shortcut or [])]

    def named_sublayers(self) -> list[tuple[str, Any]]:
        """``[(prefix, layer)]``: ``("layers.{j}", ...)`` then ``("shortcut.{j}", ...)``."""
        return [(f"layers.{j}", layer) for j, layer in enumerate(self.layers)] + \
            [(f"shortcut.{j}", layer) for j, layer in enumerate(self.shortcut or [])]

    @property
    def built(self) -> bool:
        return all(getattr(layer, "built", True) for layer in self._all_layers())

    # -- computation ---------------------------------------------------------------------------
    def forward(self, x: ArrayLike) -> NDArray[np.floating]:
        """``f(x) + shortcut(x)``."""
        return self._forward(x, None)

    def _forward(self, x: ArrayLike, relu: Any) -> NDArray[np.floating]:
        """forward, then ``relu`` (the ReLU layer after the block, or None) in the pass of the sum, its cache left
        as its own forward leaves it (see layers/chain.py)."""
        y: Any = forward_chain(self.layers, x)
        s: Any = np.asarray(forward_chain(self.shortcut, x) if self.shortcut else x)
        if y.shape != s.shape:
            what = "the shortcut's output" if self.shortcut else "the input (identity shortcut)"
            raise ValueError(f"{self!r}: f(x) has shape {y.shape} but {what} has shape {s.shape}; give a shortcut "
                             f"that maps x to f(x)'s shape, e.g. [Conv2D(c_in, c_out, 1, stride=s), "
                             f"BatchNorm2D(c_out)]")
        out = add(y, s, relu is not None)
        self._x, self._y_shape = x, out.shape
        if relu is not None:
            relu._x = relu._y = out
            relu._y_shape = out.shape
        return out

    def backward(self, dE_dY: ArrayLike) -> Gradients:
        """Prefixed gradient dicts of the inner layers and ``dX = dX_f + dX_shortcut`` (dE_dY for the identity)."""
        x = self._cached_input()
        rule = grad_rule(dE_dY)
        dy = self._grad_output(dE_dY, np.result_type(x, np.float32))
        if rule == EXACT:
            from ..losses import ExactGradient
            dy = np.asarray(dy).view(ExactGradient)
        grads_f, dx_f = backward_chain(self.layers, dy, rule == EXACT)
        if self.shortcut:
            grads_s, dx_s = backward_chain(self.shortcut, dy, rule == EXACT)
        else:
            grads_s, dx_s = [], np.asarray(dy).view(np.ndarray)
        batch_means = []
        out = {}
        for prefix, grads in (("layers", grads_f), ("shortcut", grads_s)):
            for j, g in enumerate(grads):
                for key, value in g.items():
                    if key != "dX":
                        out[f"{prefix}.{j}.{key}"] = value
                batch_means += [f"{prefix}.{j}.{key}" for key in getattr(g, "batch_means", ())]
        rules = {getattr(g, "rule", None) for g in (*grads_f, *grads_s)} - {None}
        result = Gradients(rules.pop() if len(rules) == 1 else rule, batch_means, out)  # type: ignore[arg-type]
        result["dX"] = add(np.asarray(dx_f).view(np.ndarray), np.asarray(dx_s).view(np.ndarray))
        return result

    # -- protocol ------------------------------------------------------------------------------
    def parameters(self) -> list[tuple[str, str, NDArray[np.floating]]]:
        """``(f"layers.{j}.{name}", f"layers.{j}.{grad_key}", array)`` for every inner parameter (then the
        shortcut's)."""
        return [(f"{prefix}.{name}", f"{prefix}.{key}", arr) for prefix, layer in self.named_sublayers()
                for name, key, arr in (layer.parameters() or [])]

    def buffers(self) -> list[tuple[str, NDArray[Any]]]:
        """``(f"layers.{j}.{name}", array)`` for every inner buffer (BatchNorm's running statistics)."""
        return [(f"{prefix}.{name}", arr) for prefix, layer in self.named_sublayers()
                for name, arr in (layer.buffers() if callable(getattr(layer, "buffers", None)) else [])]

    def get_config(self) -> dict[str, Any]:
        def spec(layer):
            name = type(layer).__name__
            if LAYER_TYPES.get(name) is not type(layer) or not callable(getattr(layer, "get_config", None)):
                raise TypeError(f"Residual: inner layer {layer!r} is not a registered layer with get_config(); "
                                f"register its class with cnn_ext.register_layer")
            return [name, layer.get_config()]
        return {"layers": [spec(layer) for layer in self.layers],
                "shortcut": None if self.shortcut is None else [spec(layer) for layer in self.shortcut]}

    @classmethod
    def without_weights(cls, cfg: Mapping[str, Any]) -> Self:
        """The block of ``cfg`` with its inner layers built by their own ``without_weights`` (no weight drawn)."""
        def build(layer_cls, layer_cfg):
            ww = getattr(layer_cls, "without_weights", None)
            return ww(layer_cfg) if ww is not None else layer_cls(**layer_cfg)
        block = cls.__new__(cls)
        Layer.__init__(block)
        if not isinstance(cfg, Mapping) or set(cfg) - {"layers", "shortcut"} or "layers" not in cfg:
            raise ValueError(f"Residual: a config is {{'layers': [...], 'shortcut': [...] or None}}, got {cfg!r}")
        block.layers = _as_layers(cfg["layers"], "layers", build)
        shortcut = cfg.get("shortcut")
        block.shortcut = None if shortcut is None else _as_layers(shortcut, "shortcut", build)
        block._training = True
        return block

    def param_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """``{f"layers.{j}.{name}": (shape, dtype)}`` from the inner layers' ``param_shapes``."""
        return {f"{prefix}.{name}": spec for prefix, layer in self.named_sublayers()
                for name, spec in (layer.param_shapes() if hasattr(layer, "param_shapes") else
                                   {n: (a.shape, a.dtype) for n, _, a in layer.parameters()}).items()}

    def set_weights(self, weights: Mapping[str, NDArray[Any]], *, copy: bool = True) -> None:
        """Every inner layer's weights from ``{f"layers.{j}.{name}": array}``, all checked before any is set."""
        self._checked_weights(weights)
        for prefix, layer in self.named_sublayers():
            mine = {key[len(prefix) + 1:]: arr for key, arr in weights.items() if key.startswith(prefix + ".")}
            if hasattr(layer, "set_weights"):
                layer.set_weights(mine, copy=copy)
            else:
                for name, _, arr in layer.parameters():
                    arr[...] = mine[name]

    def extra_repr(self) -> str:
        inner = ", ".join(map(repr, self.layers))
        short = "identity" if self.shortcut is None else "[" + ", ".join(map(repr, self.shortcut)) + "]"
        return f"[{inner}], shortcut={short}"
