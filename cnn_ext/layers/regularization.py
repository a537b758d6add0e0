"""Regularisation layers: Dropout."""
import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import _checks
from .base import Layer, random_source, register_layer

__all__ = ["Dropout"]


@register_layer
class Dropout(Layer):
    """Inverted dropout (PyTorch's ``Dropout``): in training mode each element is zeroed with probability ``p``
    and the others are scaled by ``1 / (1 - p)``; in evaluation mode the layer is the identity.

    Parameters
    ----------
    p : float in [0, 1], default 0.5
        Probability of zeroing an element (``p = 1`` zeroes all).
    seed : int, optional
        Seeds the layer's own Generator, so a run is reproducible; without it, NumPy's global random state
        draws (``np.random.seed`` works). A layer rebuilt by ``load`` starts its stream again from ``seed``.

    Notes
    -----
    x (N, ...) -> y of the same shape and float dtype. ``backward`` returns ``{"dX"}``: ``dE_dY`` times the
    forward pass's mask and scale (``dE_dY`` itself in evaluation mode).
    """

    _config_keys = ("p", "seed")

    def __init__(self, p: float = 0.5, seed: int | None = None) -> None:
        super().__init__()
        self.p = _checks.real(p, "p")
        if self.p > 1.0:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        self._rng = random_source(None, seed)
        self.seed = seed
        self._mask: NDArray | None = None  # None: the last forward passed x through

    def forward(self, x: ArrayLike) -> NDArray[np.floating]:
        """``y = x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)`` in training mode, ``x`` in evaluation."""
        x = _checks.as_float_array(x, "x")
        self._x, self._y_shape = x, x.shape
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        if self.p == 1.0:
            mask = np.zeros(x.shape, x.dtype)
        else:
            keep = self._rng.random(x.shape) >= self.p
            # the kept elements' scale folded into the mask, as PyTorch's noise / (1 - p)
            mask = keep.astype(x.dtype) / x.dtype.type(1.0 - self.p)
        self._mask = mask
        return x * mask

    def backward(self, dE_dY: ArrayLike) -> dict:
        x = self._cached_input()
        dy = self._grad_output(dE_dY, x.dtype)
        return {"dX": dy if self._mask is None else np.asarray(dy).view(np.ndarray) * self._mask}

    def extra_repr(self) -> str:
        return f"p={self.p}" + (f", seed={self.seed!r}" if self.seed is not None else "")
