"""The reference tutorial's toy dataset: noisy 3x3 line, cross and diamond patterns (4 classes)."""
from typing import Union

import numpy as np
from numpy.typing import DTypeLike

from .._checks import float_dtype as _check_dtype, positive_int as _positive_int
from .._typing import Dataset

__all__ = ["SHAPE_NAMES", "SHAPE_BLUEPRINTS", "make_shapes"]

SHAPE_NAMES = ("v_line", "h_line", "cross", "diamond")
SHAPE_BLUEPRINTS = {
    "v_line": ((0, 1, 0),
               (0, 1, 0),
               (0, 1, 0)),
    "h_line": ((0, 0, 0),
               (1, 1, 1),
               (0, 0, 0)),
    "cross": ((1, 0, 1),
              (0, 1, 0),
              (1, 0, 1)),
    "diamond": ((0, 1, 0),
                (1, 0, 1),
                (0, 1, 0)),
}


def make_shapes(n_per_class: int = 250, *, noise: float = 0.25, test_fraction: float = 0.2,
                seed: Union[int, np.random.Generator] = 0, dtype: DTypeLike = np.float64) -> Dataset:
    """Noisy copies of the four 3x3 blueprints, shuffled and split into train and test sets.

    Each sample is ``blueprint + uniform(-noise, noise)`` (the tutorial's 0.25 by default); class ``c`` is
    ``SHAPE_NAMES[c]``. The split is stratified: each class gives ``round(test_fraction * n_per_class)``
    test samples.

    Parameters
    ----------
    n_per_class : int, default 250
    noise : float, default 0.25
    test_fraction : float in [0, 1), default 0.2
    seed : int or numpy.random.Generator, default 0
    dtype : float32 or float64, default float64

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        images of shape (N, 1, 3, 3) in ``dtype`` and integer labels of shape (N,).
    """
    n_per_class = _positive_int(n_per_class, "n_per_class")
    dtype = _check_dtype(dtype)
    if not 0 <= float(noise):
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if not 0 <= float(test_fraction) < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    K = len(SHAPE_NAMES)
    blueprints = np.array([SHAPE_BLUEPRINTS[name] for name in SHAPE_NAMES], dtype=np.float64)
    labels = np.repeat(np.arange(K), n_per_class)
    x = blueprints[labels] + rng.uniform(-noise, noise, size=(labels.size, 3, 3))
    n_test = int(round(test_fraction * n_per_class))
    is_test = np.zeros(labels.size, dtype=bool)
    for c in range(K):
        is_test[c * n_per_class + rng.permutation(n_per_class)[:n_test]] = True
    out = []
    for mask in (~is_test, is_test):
        order = rng.permutation(np.flatnonzero(mask))
        out.append((x[order, None].astype(dtype), labels[order]))
    return out[0], out[1]
