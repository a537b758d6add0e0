"""Type aliases of the public signatures (what mypy and pyright show users); no runtime behaviour."""
from typing import Any, Callable, Literal, Protocol, Tuple, Union

import numpy as np
from numpy.typing import NDArray

__all__ = ["FloatArray", "IntArray", "IntPair", "Padding", "PoolSize", "ConvMethod", "SupportsForward", "LayerLike",
           "SupportsStep", "LossFunction", "RandomSource", "LabelArray", "Dataset"]

FloatArray = NDArray[np.floating[Any]]  # float32 or float64, the inputs' computation dtype
IntArray = NDArray[np.integer[Any]]
LabelArray = NDArray[np.int64]
# (x_train, y_train), (x_test, y_test): what every loader of cnn_ext.datasets returns
Dataset = Tuple[Tuple[FloatArray, LabelArray], Tuple[FloatArray, LabelArray]]
IntPair = Union[int, Tuple[int, int]]  # a size or stride: one int for both axes, or (height, width)
PoolSize = IntPair
# "valid", "same", one int, (ph, pw) or ((top, bottom), (left, right))
Padding = Union[str, int, Tuple[int, int], Tuple[Tuple[int, int], Tuple[int, int]]]
# "auto", "direct", "gemm" or one kernel's name (cnn_ext._methods.Method)
ConvMethod = Union[Literal["auto", "direct", "gemm"], str]
# fit's and evaluate's loss callable: (prediction, y_batch) -> (loss value, dE_dY)
LossFunction = Callable[[NDArray[Any], NDArray[Any]], Tuple[float, NDArray[Any]]]
# what a layer's rng= takes (a seed goes to seed=)
RandomSource = Union[np.random.Generator, np.random.RandomState]


class SupportsForward(Protocol):
    """Anything with ``forward(x)``: a :class:`cnn_ext.Network`, a layer or a model of your own."""

    def forward(self, x: Any, /) -> Any: ...


class LayerLike(Protocol):
    """What :class:`cnn_ext.Network` takes as a layer: a :class:`cnn_ext.Layer` or a class of your own in the
    tutorial's style (``forward(x)``, ``backward(dE_dY) -> dict``, ``update(grads, learning_rate)``)."""

    def forward(self, x: Any, /) -> Any: ...

    def backward(self, dE_dY: Any, /) -> Any: ...

    def update(self, grads: Any, learning_rate: Any, /) -> Any: ...


class SupportsStep(Protocol):
    """What :func:`cnn_ext.fit` takes as ``optimizer``: anything with ``step(network, grads)``
    (:class:`cnn_ext.optim.Adam` and the others, or an optimizer of your own)."""

    def step(self, network: Any, grads: Any, /) -> Any: ...
