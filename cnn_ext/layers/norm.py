"""Batch normalisation layers (PyTorch's ``BatchNorm1d`` / ``BatchNorm2d``), computed by ``cnn_ext._kernels.norm``.

In training mode a layer normalises with the batch's own statistics (biased variance) and updates its running
statistics (``running = (1 - momentum) * running + momentum * batch``, the variance unbiased, ``N*L / (N*L - 1)``);
``momentum=None`` makes them cumulative averages over the ``num_batches_tracked`` batches seen, as in PyTorch. In
evaluation mode (:meth:`cnn_ext.Network.eval`) it normalises with the running statistics and changes nothing.

The gradient rule: BatchNorm is not one of the tutorial's layers, so there is no tutorial convention to keep.
``dGamma`` and ``dBeta`` are always the gradients of the loss whose gradient ``dE_dY`` is (batch sums, as Dense's
``dW`` under both rules); the :class:`~cnn_ext.layers.base.Gradients` dict records the rule of ``dE_dY`` with no
batch-mean keys, so a step mixing rules is still refused and SGD / Adam take these gradients under the exact rule.
"""
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .. import _checks
from .._kernels import norm as _norm
from .._threads import threads_for
from .base import Gradients, Layer, grad_rule, register_layer

__all__ = ["BatchNorm1D", "BatchNorm2D"]

_OPS_PER_ELEMENT = 4  # work for threads_for: each pass over the activations does a few operations per element


class _BatchNorm(Layer):
    """Shared by BatchNorm1D and BatchNorm2D: parameters, buffers, the kernel calls; subclasses give the layout."""

    _config_keys = ("num_features", "eps", "momentum", "affine")
    _layouts: tuple[int, ...] = ()  # accepted input ndims; subclasses set it
    _layout_doc = ""

    num_features: int | None
    # a lazy layer's arrays are None until its first input
    gamma: NDArray[np.floating]
    beta: NDArray[np.floating]
    running_mean: NDArray[np.floating]
    running_var: NDArray[np.floating]

    def __init__(self, num_features: int | None, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, *, dtype: DTypeLike = np.float64) -> None:
        super().__init__()
        self.num_features = (None if num_features is None
                             else _checks.positive_int(num_features, "num_features", _checks.INT_MAX))
        self.eps = _checks.real(eps, "eps", strict=True)
        self.momentum = None if momentum is None else _checks.real(momentum, "momentum")
        if self.momentum is not None and self.momentum > 1.0:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
        if not isinstance(affine, (bool, np.bool_)):
            raise TypeError(f"affine must be True or False, got {affine!r}")
        self.affine = bool(affine)
        self.dtype = _checks.float_dtype(dtype)
        self.num_batches_tracked = np.zeros((), np.int64)
        self._cache: Any = None
        self.gamma = self.beta = self.running_mean = self.running_var = None  # type: ignore[assignment]
        if self.num_features is not None:
            self._allocate(self.num_features)

    def _allocate(self, C: int) -> None:
        _checks.allocation((4, C), self.dtype, lambda: f"{type(self).__name__}: num_features={C} gives arrays")
        self.gamma = np.ones(C, self.dtype)
        self.beta = np.zeros(C, self.dtype)
        self.running_mean = np.zeros(C, self.dtype)
        self.running_var = np.ones(C, self.dtype)

    @property
    def built(self) -> bool:
        """False for a lazy layer (``num_features=None``) before its first input, else True."""
        return self.num_features is not None

    # -- protocol ------------------------------------------------------------------------------
    def parameters(self) -> list[tuple[str, str, NDArray[np.floating]]]:
        """``[("gamma", "dGamma", gamma), ("beta", "dBeta", beta)]`` when ``affine`` (and built), else ``[]``."""
        return [("gamma", "dGamma", self.gamma), ("beta", "dBeta", self.beta)] if self.affine and self.built else []

    def buffers(self) -> list[tuple[str, NDArray[Any]]]:
        """State that is not trained by gradients: ``[(name, array)]``, saved by ``save`` and ``state_dict``."""
        if not self.built:
            return []
        return [("running_mean", self.running_mean), ("running_var", self.running_var),
                ("num_batches_tracked", self.num_batches_tracked)]

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg["dtype"] = self.dtype.name
        return cfg

    # -- computation ---------------------------------------------------------------------------
    def _as_ncl(self, x: ArrayLike) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
        x = _checks.as_float_array(x, "x").astype(self.dtype, copy=False)
        lazy = self.num_features is None and x.ndim in self._layouts and x.shape[1] >= 1
        if x.ndim not in self._layouts or (x.shape[1] != self.num_features and not lazy):
            raise self._shape_error("x", self._layout_doc.format(C=self.num_features or "C"), x.shape)
        N, C = x.shape[:2]
        L = int(np.prod(x.shape[2:], dtype=np.int64))  # not -1: NumPy cannot infer it when N = 0
        return x, _checks.contiguous(x, self.dtype).reshape(N, C, L)

    def forward(self, x: ArrayLike) -> NDArray[np.floating]:
        """``y = (x - mean) / sqrt(var + eps) * gamma + beta`` per channel, with the batch's statistics in
        training mode (and the running ones updated), the running ones in evaluation mode."""
        return self._forward(x, None)

    def _forward(self, x: ArrayLike, relu: Any) -> NDArray[np.floating]:
        """forward, then ``relu`` (a ReLU layer, or None) in the same pass, its cache left as its own forward
        leaves it (z > 0 exactly where its input was, so z serves as that input for its backward)."""
        x, x3 = self._as_ncl(x)
        N, C, L = x3.shape
        batch_stats = bool(self.training)
        M = N * L
        if batch_stats and M <= 1:
            raise ValueError(f"{self!r}: training needs more than one value per channel to take batch statistics, "
                             f"got input of shape {x.shape}; call eval() to use the running statistics")
        if self.num_features is None:  # lazy: the channels of this first input, every check passed
            self._allocate(_checks.positive_int(C, "num_features", _checks.INT_MAX))
            self.num_features = C
        mean = np.empty(C, np.float64)
        var = np.empty(C, np.float64)
        invstd = np.empty(C, np.float64)
        if not batch_stats:
            mean[:] = self.running_mean
            invstd[:] = 1.0 / np.sqrt(self.running_var.astype(np.float64) + self.eps)
        gamma = self.gamma if self.affine else np.ones(C, self.dtype)
        beta = self.beta if self.affine else np.zeros(C, self.dtype)
        y = np.empty_like(x3)
        _norm.batchnorm_forward(x3, gamma, beta, y, mean, var, invstd, self.eps, batch_stats, relu is not None,
                                threads_for(C, _OPS_PER_ELEMENT * x3.size))
        if batch_stats:
            self.num_batches_tracked += 1
            f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            # computed in float64, stored in place: optimizers and users hold these arrays
            self.running_mean[...] = (1.0 - f) * self.running_mean + f * mean
            self.running_var[...] = (1.0 - f) * self.running_var + f * var * (M / (M - 1))
        self._cache = (x3, mean, invstd, batch_stats)
        self._x, self._y_shape = x, x.shape
        y = y.reshape(x.shape)
        if relu is not None:
            relu._x = relu._y = y
            relu._y_shape = y.shape
        return y

    def backward(self, dE_dY: ArrayLike) -> Gradients:
        """``{"dGamma": Σ dE_dY·x̂, "dBeta": Σ dE_dY, "dX"}`` (no gamma / beta keys without ``affine``); dX
        differentiates through the batch statistics when the forward pass took them (training mode)."""
        return self._backward(dE_dY, None)

    def _backward(self, dE_dY: ArrayLike, relu: Any) -> Gradients:
        """backward of this layer then ``relu`` (the ReLU after it, or None): dE_dY is the gradient of the
        ReLU's output, differentiated through it in the same pass (its own dX is never made)."""
        self._cached_input()
        x3, mean, invstd, batch_stats = self._cache
        rule = grad_rule(dE_dY)
        dy = self._grad_output(dE_dY, self.dtype)
        dy = _checks.contiguous(np.asarray(dy).view(np.ndarray), self.dtype).reshape(x3.shape)
        C = x3.shape[1]
        gamma = self.gamma if self.affine else np.ones(C, self.dtype)
        dx = np.empty_like(x3)
        dgamma = np.empty(C, np.float64)
        dbeta = np.empty(C, np.float64)
        z = None
        if relu is not None:  # the ReLU's cached output, which it checks dE_dY against as this layer does
            z = _checks.contiguous(relu._y, self.dtype).reshape(x3.shape)
        _norm.batchnorm_backward(dy, x3, gamma, mean, invstd, dx, dgamma, dbeta, batch_stats,
                                 threads_for(C, _OPS_PER_ELEMENT * x3.size), z)
        grads = Gradients(rule, ())
        if self.affine:
            grads["dGamma"] = dgamma.astype(self.dtype)
            grads["dBeta"] = dbeta.astype(self.dtype)
        grads["dX"] = dx.reshape(self._y_shape)
        return grads

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
        if not self.affine:
            s += ", affine=False"
        return s + (f", dtype={self.dtype.name}" if self.dtype != np.float64 else "")


@register_layer
class BatchNorm2D(_BatchNorm):
    """Batch normalisation over the channels of NCHW images (PyTorch's ``BatchNorm2d``).

    Parameters
    ----------
    num_features : int or None
        C, the channels of the input. None makes the layer lazy, as PyTorch's ``LazyBatchNorm2d``: C is taken
        from the first input (a forward pass, or :meth:`cnn_ext.Network.summary`), and the arrays made then.
    eps : float, default 1e-5
        Added to the variance before its square root.
    momentum : float in [0, 1] or None, default 0.1
        Weight of the batch in the running statistics; None: their cumulative average.
    affine : bool, default True
        Learn a scale ``gamma`` (ones at first) and a shift ``beta`` (zeros).
    dtype : float32 or float64, default float64

    Attributes
    ----------
    gamma, beta : ndarray, shape (C,)
        The parameters (``parameters()`` lists them when ``affine``; PyTorch's ``weight`` and ``bias``).
    running_mean, running_var : ndarray, shape (C,)
    num_batches_tracked : ndarray of int64, shape ()
        Buffers (``buffers()``): saved and loaded, not trained.

    Notes
    -----
    x (N, C, H, W) -> y (N, C, H, W). Training needs N*H*W > 1. ``backward`` returns ``{"dGamma", "dBeta", "dX"}``.
    """

    _RELU_PAIRING = "both"  # a ReLU after the layer runs in its forward and backward passes (layers/chain.py)
    _layouts = (4,)
    _layout_doc = "(N, {C}, H, W)"


@register_layer
class BatchNorm1D(_BatchNorm):
    """Batch normalisation over the features of (N, C) or the channels of (N, C, L) inputs (PyTorch's
    ``BatchNorm1d``); parameters and attributes as :class:`BatchNorm2D`.

    Notes
    -----
    x (N, C) or (N, C, L) -> y of the same shape. Training needs N*L > 1.
    """

    _RELU_PAIRING = "both"  # a ReLU after the layer runs in its forward and backward passes (layers/chain.py)
    _layouts = (2, 3)
    _layout_doc = "(N, {C}) or (N, {C}, L)"
