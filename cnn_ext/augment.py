"""Random data augmentation for training batches: shifts and horizontal flips of image batches.

Each augmentation is a callable ``augment(x, rng)`` that takes a batch ``x`` of shape ``(N, ..., H, W)`` and a
``numpy.random.Generator`` and returns a new array of the same shape and dtype (``x`` is never modified).
:func:`cnn_ext.fit` applies one to every training batch (``fit(..., augment=...)``), never to the validation data:

    from cnn_ext.augment import Compose, RandomHorizontalFlip, RandomShift
    fit(net, x, y, epochs=15, optimizer=Adam(2e-3), augment=Compose([RandomShift(2), RandomHorizontalFlip()]))

``RandomShift(p)`` is torchvision's ``RandomCrop(size, padding=p)`` with zero fill, applied per sample;
``RandomHorizontalFlip(0.5)`` is torchvision's transform of that name, per sample.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from . import _checks

__all__ = ["RandomShift", "RandomHorizontalFlip", "Compose"]


def _image_batch(x, name):
    x = np.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"{name} takes a batch of images of shape (N, ..., H, W), got shape {x.shape}")
    return x


class RandomShift:
    """Shift each image by whole pixels, up to ``pixels`` in each direction, filling with zeros.

    Every sample draws its own vertical and horizontal offsets, uniform in ``[-pixels, pixels]``.
    """

    def __init__(self, pixels: int):
        self.pixels = _checks.positive_int(pixels, "pixels")

    def __call__(self, x: NDArray, rng: np.random.Generator) -> NDArray:
        x = _image_batch(x, "RandomShift")
        p = self.pixels
        H, W = x.shape[-2:]
        if p >= max(H, W):
            raise ValueError(f"RandomShift({p}) shifts images of shape {x.shape[1:]} out of the picture: pixels must "
                             f"be less than the larger of H and W ({max(H, W)})")
        padded = np.zeros(x.shape[:-2] + (H + 2 * p, W + 2 * p), dtype=x.dtype)
        padded[..., p:p + H, p:p + W] = x
        out = np.empty_like(x)
        rows, cols = rng.integers(0, 2 * p + 1, size=(2, x.shape[0]))
        for r in range(2 * p + 1):  # one fancy-indexed copy per offset pair, not per sample
            for c in range(2 * p + 1):
                idx = np.flatnonzero((rows == r) & (cols == c))
                if idx.size:
                    out[idx] = padded[idx, ..., r:r + H, c:c + W]
        return out

    def __repr__(self):
        return f"RandomShift({self.pixels})"


class RandomHorizontalFlip:
    """Mirror each image left to right with probability ``p``."""

    def __init__(self, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
            raise TypeError(f"p must be a probability (a number in [0, 1]), got {type(p).__name__}")
        if not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)

    def __call__(self, x: NDArray, rng: np.random.Generator) -> NDArray:
        x = _image_batch(x, "RandomHorizontalFlip")
        out = x.copy()
        flip = rng.random(x.shape[0]) < self.p
        out[flip] = x[flip, ..., ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip({self.p})"


class Compose:
    """Apply augmentations in order, each with the same generator."""

    def __init__(self, augmentations: Sequence[Callable[[NDArray, np.random.Generator], NDArray]]):
        self.augmentations = list(augmentations)
        for i, a in enumerate(self.augmentations):
            if not callable(a):
                raise TypeError(f"augmentations[{i}] must be callable as a(x, rng), got {type(a).__name__}")

    def __call__(self, x: NDArray, rng: np.random.Generator) -> NDArray:
        for a in self.augmentations:
            x = a(x, rng)
        return x

    def __repr__(self):
        return f"Compose({self.augmentations!r})"
