"""Layers with the reference tutorial's interface, on top of the validated ops in :mod:`cnn_ext.ops`.

Every layer has ``forward(x)``, ``backward(dE_dY) -> dict`` and ``update(grads, learning_rate)`` (plain
in-place SGD), with the tutorial's names, gradient keys and conventions: Conv2D ``dK``/``dB`` and Dense
``dB`` are batch means, Dense ``dW = xᵀ·dE_dY`` is a batch sum; conv kernels and biases start ~ N(0, 1),
dense weights and biases ~ 0.1·N(0, 1), unless ``init=`` picks He or Glorot.

The protocol other modules build on (optimizers, save/load, gradient checks, more layer types):

- ``parameters()`` -> list of ``(param_name, grad_key, ndarray)``, e.g. ``[("k", "dK", k), ("b", "dB", b)]``;
  the arrays are updated in place, so the same objects live as long as the layer;
- ``get_config()`` -> JSON-serialisable constructor kwargs with ``type(layer)(**cfg)`` rebuilding the layer;
- ``LAYER_TYPES`` maps class names to classes; ``register_layer`` adds a class to it.

Layers never modify the arrays they are given. A layer with parameters casts its input once to its own
dtype (float64 by default, or float32), so a float32 network runs in float32 end to end; activations keep
the float dtype they receive.
"""
import math
import numbers
import operator
from collections.abc import Mapping

import numpy as np
from scipy.linalg import blas as _blas
from scipy.special import expit

from . import _elementwise, _reuse
from ._reuse import spare
from ._config import get_num_threads
from .ops import (
    _check_alloc,
    _ints,
    _matmul,
    _padding,
    _padding_spec,
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    conv2d_output_shape,
)

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
]

LAYER_TYPES = {}
_AXPY = {"f": _blas.saxpy, "d": _blas.daxpy}
INITS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform")
# Activations take the fused one-pass kernels of cnn_ext._elementwise from _FUSED_MIN elements: below, NumPy's call
# costs less than setting up the memoryviews (layer calls on 1 thread, µs, NumPy / fused: ReLU forward float32 8192
# elements 6.2 / 5.9, 16384 10.6 / 6.9; Sigmoid backward float64 16384 14.6 / 11.6). One more thread per
# _FUSED_PER_THREAD elements (ReLU backward float32, 1 / 2 threads: 65536 elements 9.9 / 7.7, 131072 23.6 / 15.6).
_FUSED_MIN = 16_384
_FUSED_PER_THREAD = 65_536


def register_layer(cls):
    """Add ``cls`` to :data:`LAYER_TYPES` under its class name (usable as a class decorator); returns ``cls``."""
    if not isinstance(cls, type) or not issubclass(cls, Layer):
        raise TypeError(f"register_layer expects a Layer subclass, got {cls!r}")
    LAYER_TYPES[cls.__name__] = cls
    return cls


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _positive_int(value, name):
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {value!r}") from None
    if v < 1:
        raise ValueError(f"{name} must be >= 1, got {v}")
    return v


def _rng(rng, seed):
    """A random source: ``rng`` (Generator or RandomState), a Generator from ``seed``, else NumPy's global state.

    The global state is the tutorial's (``np.random.randn``), so ``np.random.seed(...)`` keeps working.
    """
    if rng is not None and seed is not None:
        raise ValueError("give rng or seed, not both")
    if rng is not None:
        if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
            raise TypeError(f"rng must be a numpy.random.Generator or RandomState, got {type(rng).__name__}")
        return rng
    if seed is not None:
        return np.random.default_rng(seed)
    return np.random  # the module's standard_normal / uniform use the global state


def _init_params(init, rng, w_shape, b_shape, fan_in, fan_out, tutorial_scale, dtype, what):
    """Weights and biases drawn in float64 (same values for both dtypes up to rounding), then cast; ``what()``
    names the weights and the constructor arguments for the error on weights too large to allocate."""
    _check_alloc(w_shape, np.float64, what)
    if init is None:
        w = tutorial_scale * rng.standard_normal(w_shape)
        b = tutorial_scale * rng.standard_normal(b_shape)
    else:
        if init not in INITS:
            raise ValueError(f"init must be None or one of {INITS}, got {init!r}")
        # He: Var = 2 / fan_in; Glorot: Var = 2 / (fan_in + fan_out); uniform(-a, a) has Var = a² / 3.
        std = np.sqrt(2.0 / fan_in) if init.startswith("he") else np.sqrt(2.0 / (fan_in + fan_out))
        if init.endswith("normal"):
            w = std * rng.standard_normal(w_shape)
        else:
            w = rng.uniform(-np.sqrt(3.0) * std, np.sqrt(3.0) * std, w_shape)
        b = np.zeros(b_shape)
    return np.ascontiguousarray(w, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def _as_float(x, name="x"):
    """``x`` as an array of float32 or float64 (other numbers become float64); never a copy when not needed."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.dtype != np.float32 and arr.dtype != np.float64:
        arr = arr.astype(np.float64)
    return arr


def _fused(kernel, arrays, *args, layer=None, key=None):
    """An array shaped like ``arrays[0]`` filled by ``kernel(*arrays flat, out flat, *args, threads)``, or None
    (the caller then takes NumPy) for small arrays and for any array that is not C-contiguous and aligned in the
    dtype and shape of the first (the kernels read every array as one flat run of that dtype and length). With a
    layer, the output is the layer's spare ``key`` (see cnn_ext._reuse)."""
    first = arrays[0]
    n = first.size
    if n < _FUSED_MIN:
        return None
    for a in arrays:
        if a.dtype != first.dtype or a.shape != first.shape or not (a.flags.c_contiguous and a.flags.aligned):
            return None
    out = np.empty(first.shape, dtype=first.dtype) if layer is None else spare(layer, key, first.shape, first.dtype)
    threads = max(1, min(get_num_threads(), n // _FUSED_PER_THREAD))
    kernel(*[a.reshape(-1) for a in arrays], out.reshape(-1), *args, threads)
    return out


def _spare_or_none(layer, key, shape, dtype):
    """The layer's spare array ``key`` for a large result (see cnn_ext._reuse), else None: a small result is
    left to the op or ufunc that makes it (malloc's free lists already hand back mapped memory)."""
    return None if _reuse.taking_part(shape, dtype) is None else spare(layer, key, shape, dtype)


def _json_value(value):
    """Tuples as lists and NumPy scalars as Python numbers, for JSON."""
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _batch_mean(dy):
    """Mean over the batch axis; zeros for an empty batch (as :func:`conv2d_bias_gradient` gives), not NumPy's NaN
    and warning, so an update on an empty batch leaves the parameters as they are."""
    if dy.shape[0] == 0:
        return np.zeros(dy.shape[1:], dtype=dy.dtype)
    return dy.mean(axis=0)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _learning_rate(learning_rate, grads, owner, order, call=None):
    """``learning_rate`` of plain SGD as a float, checked before any parameter changes: a real number (NumPy
    scalars and 0-d arrays included) that is finite. 0 leaves the parameters as they are and a negative rate
    ascends the gradient: both allowed. Errors quote ``{owner}.update({order})``: Network.update and Layer.update
    take their two arguments in opposite orders, so a swap gets named when it looks like one; or ``call`` (fit)."""
    if type(learning_rate) is float and math.isfinite(learning_rate):  # the common case (~0.1 µs)
        return learning_rate
    update = call is None  # else the caller's own name (fit), where there is nothing to swap
    call = call or f"{owner}.update({order})"
    if not _is_real(learning_rate):
        arr = learning_rate if isinstance(learning_rate, np.ndarray) else None
        if arr is None or arr.ndim != 0 or arr.dtype.kind not in "iuf":
            swapped = update and (_is_real(grads) or isinstance(learning_rate, (list, tuple, Mapping)))
            hint = "; did you swap the arguments?" if swapped else ""
            raise TypeError(f"{call}: learning_rate must be a real number, got {type(learning_rate).__name__}{hint}")
    lr = float(learning_rate)
    if not math.isfinite(lr):
        raise ValueError(f"{call}: learning_rate must be finite, got {lr}")
    return lr


def _sgd_step(p, g, learning_rate):
    """``p -= learning_rate * g`` in place (the same array object stays: optimizers and users hold it).

    BLAS axpy does it in one pass without a temporary; a non-contiguous or non-float parameter takes the
    NumPy path.
    """
    if p.flags.c_contiguous and p.flags.writeable and p.dtype in (np.float32, np.float64) and 0 < p.size < 2**31:
        axpy = _AXPY[p.dtype.char]
        axpy(np.ascontiguousarray(g, dtype=p.dtype).reshape(-1), p.reshape(-1), a=-float(learning_rate))
    else:
        p -= np.multiply(g, learning_rate, dtype=p.dtype, casting="same_kind")


# ----------------------------------------------------------------------------------------------
# base class
# ----------------------------------------------------------------------------------------------

class Layer:
    """Base class: input/gradient checks, the forward cache, SGD update, parameters, config and repr.

    Subclasses implement ``forward`` and ``backward`` and, when they have parameters, ``parameters``;
    ``get_config`` returns the constructor kwargs listed in ``_config_keys`` (attributes of the same name).
    """

    _config_keys = ()

    def __init__(self):
        self._x = None      # forward input (as used, in the computation dtype)
        self._y_shape = None

    def __getstate__(self):
        """Pickle and deepcopy without the spare output arrays (cnn_ext._reuse): scratch, not state."""
        state = self.__dict__.copy()
        state.pop("_spares", None)
        return state

    # -- the tutorial's interface ------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dE_dY):
        raise NotImplementedError

    def update(self, grads, learning_rate):
        """Plain SGD in place: ``p -= learning_rate * grads[grad_key]`` for each parameter.

        ``grads`` is the dict ``backward`` returned; ``learning_rate`` any finite real number (note the order:
        :meth:`cnn_ext.Network.update` takes ``(learning_rate, grads)``). Swapped or mistyped arguments raise
        ``TypeError``, a NaN or infinite rate ``ValueError``, even for layers without parameters.
        """
        learning_rate = _learning_rate(learning_rate, grads, type(self).__name__, "grads, learning_rate")
        for p, g in self._grad_pairs(grads):
            _sgd_step(p, g, learning_rate)

    def _grad_pairs(self, grads):
        """``[(parameter, gradient)]`` for an update, every key and shape checked before any parameter changes
        (:meth:`cnn_ext.Network.update` checks every layer's this way before updating the first)."""
        if not isinstance(grads, Mapping):
            raise TypeError(f"{type(self).__name__}.update(grads, learning_rate): grads must be the dict backward "
                            f"returned, got {type(grads).__name__}")
        pairs = []
        for name, key, p in self.parameters():
            try:
                g = grads[key]
            except (KeyError, TypeError):
                raise ValueError(f"{self!r}.update: grads has no {key!r} (the gradient of {name})") from None
            g = np.asarray(g)
            if g.shape != p.shape:
                raise ValueError(f"{self!r}.update: {key} has shape {g.shape} but {name} has shape {p.shape}")
            pairs.append((p, g))
        return pairs

    # -- protocol ------------------------------------------------------------------------------
    def parameters(self):
        """List of ``(param_name, grad_key, ndarray)``; the arrays are the layer's own and are updated in place."""
        return []

    def get_config(self):
        """JSON-serialisable constructor kwargs: ``type(layer)(**layer.get_config())`` rebuilds the layer."""
        return {key: _json_value(getattr(self, key)) for key in self._config_keys}

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self):
        return ", ".join(f"{key}={getattr(self, key)!r}" for key in self._config_keys)

    # -- shared checks -------------------------------------------------------------------------
    def _cached_input(self):
        if self._x is None:
            raise RuntimeError(f"{self!r}: backward called before forward (nothing to differentiate yet)")
        return self._x

    def _grad_output(self, dE_dY, dtype):
        """dE_dY as an array in ``dtype`` with the forward output's shape, else ValueError naming both shapes."""
        dy = np.asarray(dE_dY)
        if dy.dtype.kind not in "biuf":
            raise TypeError(f"{self!r}: dE_dY must hold real numbers, got dtype {dy.dtype}")
        if dy.shape != self._y_shape:
            raise ValueError(f"{self!r}: dE_dY has shape {dy.shape} but the forward output had shape {self._y_shape}")
        return dy.astype(dtype, copy=False)

    def _shape_error(self, what, expected, got):
        return ValueError(f"{self!r}: expected {what} of shape {expected}, got shape {got}")


# ----------------------------------------------------------------------------------------------
# layers with parameters
# ----------------------------------------------------------------------------------------------

class _ParamLayer(Layer):
    """A layer with weights: ``_params`` names them, ``init`` and ``dtype`` go into the config and the repr."""

    _params = ()  # ((param_name, grad_key), ...)

    def parameters(self):
        return [(name, key, getattr(self, name)) for name, key in self._params]

    def get_config(self):
        cfg = super().get_config()
        cfg["dtype"] = self.dtype.name
        return cfg

    def _repr_tail(self):
        s = f", init={self.init!r}" if self.init is not None else ""
        return s + (f", dtype={self.dtype.name}" if self.dtype != np.float64 else "")


@register_layer
class Conv2D(_ParamLayer):
    """2-D convolution (cross-correlation) layer, NCHW.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : 'valid', 'same', int, (int, int) or ((top, bottom), (left, right)), default 'valid'
        NumPy integers and integer arrays are accepted for these three; the layer keeps them as plain Python
        ints, tuples and lower-case strings (so ``get_config()`` is JSON and save / load round-trips).
    dilation, groups : 1
        Accepted for PyTorch-style calls; any other value raises ``NotImplementedError``.
    init : None, 'he_normal', 'he_uniform', 'glorot_normal' or 'glorot_uniform'
        None is the tutorial's: kernels and biases ~ N(0, 1). The others draw the kernels and zero the biases.
    rng : numpy.random.Generator or RandomState, optional
    seed : int, optional
        Seeds a new Generator; with neither, NumPy's global random state is used (``np.random.seed`` works).
    dtype : float32 or float64, default float64

    Attributes
    ----------
    k : ndarray, shape (c_out, c_in, KH, KW)
    b : ndarray, shape (c_out,)

    Shapes
    ------
    x (N, c_in, H, W) -> y (N, c_out, OH, OW) with ``OH = (H + pad_top + pad_bottom - KH) // SH + 1``
    (``H - KH + 1`` by default), same for OW.
    ``backward(dE_dY, need_dX=True)`` returns ``{"dK", "dB", "dX"}``: dK and dB are batch means, dX is not
    averaged; ``need_dX=False`` skips dX (the first layer of a network never needs it).
    """

    _config_keys = ("c_in", "c_out", "kernel_size", "stride", "padding", "init")
    _params = (("k", "dK"), ("b", "dB"))

    def __init__(self, c_in, c_out, kernel_size, *, stride=1, padding="valid", dilation=1, groups=1, init=None,
                 rng=None, seed=None, dtype=np.float64):
        super().__init__()
        if _ints(dilation, "dilation", 1) != (1, 1):
            raise NotImplementedError(f"Conv2D: dilation={dilation!r} is not implemented (only 1)")
        if _positive_int(groups, "groups") != 1:
            raise NotImplementedError(f"Conv2D: groups={groups!r} is not implemented (only 1)")
        self.c_in = _positive_int(c_in, "c_in")
        self.c_out = _positive_int(c_out, "c_out")
        self.kernel_size = _ints(kernel_size, "kernel_size", 1)
        self.stride = _ints(stride, "stride", 1)
        # plain Python ints, tuples and strings (NumPy integers and arrays too, and lists from a JSON config), so
        # that get_config() is JSON-serialisable and save / load round-trips
        self.padding = _padding_spec(padding)
        _padding(self.padding, *self.kernel_size, self.stride)  # 'same' with stride > 1 raises
        self.init = init
        self.dtype = _float_dtype(dtype)
        KH, KW = self.kernel_size
        self.k, self.b = _init_params(init, _rng(rng, seed), (self.c_out, self.c_in, KH, KW), (self.c_out,),
                                      self.c_in * KH * KW, self.c_out * KH * KW, 1.0, self.dtype,
                                      lambda: f"Conv2D: c_in={self.c_in}, c_out={self.c_out}, "
                                              f"kernel_size={self.kernel_size} give kernels")

    def forward(self, x):
        """``y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i])``; x (N, c_in, H, W) -> y (N, c_out, OH, OW)."""
        x = _as_float(x).astype(self.dtype, copy=False)
        if x.ndim != 4 or x.shape[1] != self.c_in:
            raise self._shape_error("x", f"(N, {self.c_in}, H, W)", x.shape)
        try:
            out = None
            if 4 * x.shape[0] * self.c_out * x.shape[2] * x.shape[3] * self.dtype.itemsize >= _reuse.MIN_BYTES:
                # a large output (under 4x the input's maps unless heavily padded): the layer's spare array
                OH, OW = conv2d_output_shape(x.shape[2:], self.kernel_size, self.stride, self.padding)
                out = _spare_or_none(self, "y", (x.shape[0], self.c_out, OH, OW), self.dtype)
            y = conv2d_forward(x, self.k, self.b, stride=self.stride, padding=self.padding, out=out)
        except ValueError as exc:  # e.g. the kernel is larger than the (padded) input
            raise ValueError(f"{self!r}: input of shape {x.shape}: {exc}") from None
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dE_dY, *, need_dX=True):
        """``{"dK": batch-mean kernel gradient, "dB": batch-mean bias gradient, "dX": input gradient}``."""
        x = self._cached_input()
        dy = self._grad_output(dE_dY, self.dtype)
        grads = {
            "dK": conv2d_kernel_gradient(dy, x, stride=self.stride, padding=self.padding,
                                         kernel_size=self.kernel_size),
            "dB": conv2d_bias_gradient(dy),
        }
        if need_dX:
            grads["dX"] = conv2d_input_gradient(dy, self.k, stride=self.stride, padding=self.padding,
                                                input_size=x.shape[2:],
                                                out=_spare_or_none(self, "dX", x.shape, self.dtype))
        return grads

    def extra_repr(self):
        s = f"{self.c_in}, {self.c_out}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != "valid":
            s += f", padding={self.padding!r}"
        return s + self._repr_tail()


@register_layer
class Dense(_ParamLayer):
    """Fully connected layer: ``y = x @ w + b``.

    Parameters
    ----------
    n_in, n_out : int
    init : None, 'he_normal', 'he_uniform', 'glorot_normal' or 'glorot_uniform'
        None is the tutorial's: w and b ~ 0.1 * N(0, 1). The others draw w and zero b.
    rng, seed, dtype : as in :class:`Conv2D`

    Attributes
    ----------
    w : ndarray, shape (n_in, n_out)
    b : ndarray, shape (n_out,)

    Shapes
    ------
    x (N, n_in) -> y (N, n_out). ``backward(dE_dY, need_dX=True)`` returns ``{"dW", "dB", "dX"}`` with the
    tutorial's conventions: ``dW = xᵀ·dE_dY`` (summed over the batch), ``dB`` = batch mean of dE_dY,
    ``dX = dE_dY·wᵀ``. An empty batch (N = 0) gives zero dW and dB, as in :class:`Conv2D`.
    """

    _config_keys = ("n_in", "n_out", "init")
    _params = (("w", "dW"), ("b", "dB"))

    def __init__(self, n_in, n_out, *, init=None, rng=None, seed=None, dtype=np.float64):
        super().__init__()
        self.n_in = _positive_int(n_in, "n_in")
        self.n_out = _positive_int(n_out, "n_out")
        self.init = init
        self.dtype = _float_dtype(dtype)
        self.w, self.b = _init_params(init, _rng(rng, seed), (self.n_in, self.n_out), (self.n_out,),
                                      self.n_in, self.n_out, 0.1, self.dtype,
                                      lambda: f"Dense: n_in={self.n_in}, n_out={self.n_out} give weights")

    def forward(self, x):
        """``y = x @ w + b``; x (N, n_in) -> y (N, n_out)."""
        x = _as_float(x).astype(self.dtype, copy=False)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise self._shape_error("x", f"(N, {self.n_in})", x.shape)
        y = _matmul(x, self.w) if self.dtype == np.float64 else x @ self.w
        y += self.b  # y is ours: add in place instead of allocating x @ w + b
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dE_dY, *, need_dX=True):
        """``{"dW": xᵀ·dE_dY, "dB": mean_n dE_dY, "dX": dE_dY·wᵀ}``."""
        x = self._cached_input()
        dy = self._grad_output(dE_dY, self.dtype)
        # float64: the products are split over the kernels' threads (ops._matmul; the tutorial's float64 step
        # went from 2.13 to 1.85 ms on 2 threads). float32: one sgemm each, with dX as (w·dyᵀ)ᵀ, which OpenBLAS
        # runs 1.6-2x faster than dy·wᵀ for Dense(2304, 256) at batch 16 (splitting measured slower there).
        if self.dtype == np.float64:
            grads = {"dW": _matmul(x, dy, trans_a=True), "dB": _batch_mean(dy)}
            if need_dX:
                grads["dX"] = _matmul(dy, self.w, trans_b=True)
            return grads
        grads = {"dW": x.T @ dy, "dB": _batch_mean(dy)}
        if need_dX:
            grads["dX"] = np.ascontiguousarray((self.w @ dy.T).T)
        return grads

    def extra_repr(self):
        return f"n_in={self.n_in}, n_out={self.n_out}" + self._repr_tail()


# ----------------------------------------------------------------------------------------------
# layers without parameters
# ----------------------------------------------------------------------------------------------

@register_layer
class Flatten(Layer):
    """Flattens every axis but the first: x (N, d1, d2, ...) -> y (N, d1·d2·...). Returns a view when it can."""

    def forward(self, x):
        x = _as_float(x)
        if x.ndim < 2:
            raise self._shape_error("x", "(N, ...) with at least 2 dimensions", x.shape)
        y = x.reshape(x.shape[0], math.prod(x.shape[1:]))  # not -1: NumPy cannot infer it when N = 0
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dE_dY):
        x = self._cached_input()
        return {"dX": self._grad_output(dE_dY, x.dtype).reshape(x.shape)}


class _Activation(Layer):
    """Element-wise activation: keeps the float dtype it is given; caches what backward needs."""

    def forward(self, x):
        x = _as_float(x)
        y = self._f(x)
        self._x, self._y, self._y_shape = x, y, y.shape
        return y

    def backward(self, dE_dY):
        x = self._cached_input()
        return {"dX": self._df(x, self._y, self._grad_output(dE_dY, x.dtype))}


@register_layer
class ReLU(_Activation):
    """``y = max(x, 0)``; ``dX = dE_dY · [x > 0]``."""

    def _f(self, x):
        y = _fused(_elementwise.relu_forward, (x,), layer=self, key="y")
        return np.maximum(x, 0) if y is None else y

    def _df(self, x, y, dy):
        # the fused kernel computes the same product with the mask (dy * 0 is -0.0 for dy < 0, NaN for inf)
        dx = _fused(_elementwise.relu_backward, (x, dy), layer=self, key="dX")
        return dy * (x > 0) if dx is None else dx


@register_layer
class LeakyReLU(_Activation):
    """``y = x`` where ``x > 0``, else ``alpha · x``; ``dX = dE_dY`` or ``alpha · dE_dY``."""

    _config_keys = ("alpha",)

    def __init__(self, alpha=0.01):
        super().__init__()
        if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a real number, got {alpha!r}")
        self.alpha = float(alpha)

    def _f(self, x):
        y = _fused(_elementwise.leaky_relu_forward, (x,), self.alpha, layer=self, key="y")
        return np.where(x > 0, x, x * x.dtype.type(self.alpha)) if y is None else y

    def _df(self, x, y, dy):
        dx = _fused(_elementwise.leaky_relu_backward, (x, dy), self.alpha, layer=self, key="dX")
        return np.where(x > 0, dy, dy * dy.dtype.type(self.alpha)) if dx is None else dx


@register_layer
class Sigmoid(_Activation):
    """``y = 1 / (1 + exp(-x))`` (overflow-free); ``dX = dE_dY · y · (1 - y)``."""

    def _f(self, x):
        return expit(x, out=_spare_or_none(self, "y", x.shape, x.dtype))

    def _df(self, x, y, dy):
        dx = _fused(_elementwise.sigmoid_backward, (y, dy), layer=self, key="dX")
        if dx is None:
            dx = 1 - y
            dx *= y
            dx *= dy
        return dx


@register_layer
class Tanh(_Activation):
    """``y = tanh(x)``; ``dX = dE_dY · (1 - y²)``."""

    def _f(self, x):
        return np.tanh(x, out=_spare_or_none(self, "y", x.shape, x.dtype))

    def _df(self, x, y, dy):
        dx = _fused(_elementwise.tanh_backward, (y, dy), layer=self, key="dX")
        if dx is None:
            dx = y * y
            np.subtract(1, dx, out=dx)
            dx *= dy
        return dx


@register_layer
class Softmax(_Activation):
    """``y = exp(x - max) / Σ exp(x - max)`` along ``axis`` (default the last);
    ``dX = y · (dE_dY - Σ_axis dE_dY · y)``.

    For classification prefer :func:`cnn_ext.losses.softmax_cross_entropy` on the logits, which is more
    stable and cheaper than this layer followed by a loss.
    """

    _config_keys = ("axis",)

    def __init__(self, axis=-1):
        super().__init__()
        if isinstance(axis, (bool, np.bool_)):
            raise TypeError(f"axis must be an int, got {axis!r}")
        try:
            self.axis = operator.index(axis)
        except TypeError:
            raise TypeError(f"axis must be an int, got {axis!r}") from None

    def _f(self, x):
        if not -x.ndim <= self.axis < x.ndim:
            raise ValueError(f"{self!r}: axis {self.axis} is out of range for x of shape {x.shape}")
        if x.size == 0:  # e.g. an empty batch along axis: nothing to normalise (and max has no identity)
            return np.empty_like(x)
        y = x - x.max(axis=self.axis, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=self.axis, keepdims=True)
        return y

    def _df(self, x, y, dy):
        dx = dy - (dy * y).sum(axis=self.axis, keepdims=True)
        dx *= y
        return dx
