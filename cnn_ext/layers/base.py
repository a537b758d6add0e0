"""The layer protocol, the registry of layer types, and what every layer shares.

Every layer has ``forward(x)``, ``backward(dE_dY) -> dict`` and ``update(grads, learning_rate)`` (plain in-place
SGD), with the tutorial's names, gradient keys and conventions. The protocol other modules build on
(optimizers, save/load, gradient checks, user layers):

- ``parameters()`` -> list of ``(param_name, grad_key, ndarray)``, e.g. ``[("k", "dK", k), ("b", "dB", b)]``;
  the arrays are updated in place, so the same objects live as long as the layer;
- ``get_config()`` -> JSON-serialisable constructor kwargs with ``type(layer)(**cfg)`` rebuilding the layer;
- ``param_shapes()`` -> ``{param_name: (shape, dtype)}``, from the config alone for Conv2D and Dense;
  ``Layer.without_weights(cfg)`` builds a layer from its config without drawing weights (when its class can say
  its ``param_shapes()`` from the config; else as ``cls(**cfg)``), ``set_weights`` fills it, and
  ``Layer.from_config(cfg, weights)`` does both (what :func:`cnn_ext.load` builds with);
- ``LAYER_TYPES`` maps class names to classes; ``register_layer`` adds a class to it.

Layers never modify the arrays they are given, and never write an array they returned again.

The gradient rule (see :mod:`cnn_ext.losses`): ``backward`` given a plain ``dE_dY`` follows the tutorial
(Conv2D ``dK``/``dB`` and Dense ``dB`` batch means, Dense ``dW`` a batch sum); given an
:class:`~cnn_ext.losses.ExactGradient` it returns the exact gradient of the loss for every parameter (batch
sums). The built-in layers return a :class:`Gradients` dict that records which rule made it, so that
optimizers, ``Network.update`` and ``gradient_check`` can refuse a mix.

A layer of your own takes part in the optimizers and in save / load through ``parameters()`` (and
``get_config()`` plus :func:`register_layer` for load); an optimizer refuses a layer whose ``backward`` returns
gradients for arrays that ``parameters()`` does not list, since it could not update them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from typing import TYPE_CHECKING, Any, Dict, Tuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from scipy.linalg import blas as _blas

from .. import _checks
from .._threads import blas_single_thread

if TYPE_CHECKING:
    from typing import TypeVar

    from typing_extensions import Self

    from .._typing import FloatArray

    _T = TypeVar("_T", bound=type)
    # Gradients is a dict of arrays to type checkers; at run time its base stays the plain dict
    _GradientsBase = Dict[str, FloatArray]
else:
    _GradientsBase = dict

__all__ = ["LAYER_TYPES", "register_layer", "Layer", "ParamLayer", "Gradients", "batch_mean", "checked_init",
           "init_params", "random_source", "sgd_step", "grad_rule", "unseen_gradients_error", "checked_gradient", "EXACT",
           "TUTORIAL"]

EXACT, TUTORIAL = "exact", "tutorial"

LAYER_TYPES: Dict[str, type] = {}
INITS = ("he_normal", "he_uniform", "glorot_normal", "glorot_uniform")
_AXPY = {"f": _blas.saxpy, "d": _blas.daxpy}


_PROTOCOL = ("forward", "backward", "parameters", "get_config")


def register_layer(cls: _T) -> _T:
    """Add ``cls`` to :data:`LAYER_TYPES` under its class name (usable as a class decorator); returns ``cls``.

    ``cls`` is a :class:`Layer` subclass, or a class of your own (the tutorial's style) with ``forward``,
    ``backward``, ``parameters()`` -> ``[(param_name, grad_key, array), ...]`` and ``get_config()`` -> the
    constructor's keyword arguments: then optimizers update its arrays and save / load round-trips it.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_layer expects a layer class, got {cls!r}")
    if not issubclass(cls, Layer):
        missing = [m for m in _PROTOCOL if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"register_layer: {cls.__name__} is not a cnn_ext Layer subclass and has no "
                            f"{', '.join(missing)}; subclass cnn_ext.Layer, or add parameters(self) returning "
                            f"[(param_name, grad_key, array), ...] and get_config(self) returning the constructor's "
                            f"keyword arguments")
    LAYER_TYPES[cls.__name__] = cls
    return cls



class Gradients(_GradientsBase):
    """The dict a built-in layer's ``backward`` returns, with the gradient rule that made it.

    Attributes
    ----------
    rule : 'exact' or 'tutorial'
        ``'exact'``: every parameter gradient is the exact gradient of the loss (a batch sum);
        ``'tutorial'``: the keys in ``batch_means`` are batch means (the tutorial's), the others batch sums.
    batch_means : tuple of str
        The gradient keys that are batch means under the tutorial's rule (empty under the exact rule).
    """

    def __init__(self, rule: str, batch_means: Iterable[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rule = rule
        self.batch_means: tuple[str, ...] = tuple(batch_means) if rule == TUTORIAL else ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.rule, self.batch_means, dict(self)))


def grad_rule(dE_dY: object) -> str:
    """``'exact'`` for a flagged :class:`~cnn_ext.losses.ExactGradient`, else ``'tutorial'``."""
    from ..losses import ExactGradient  # losses imports nothing from the layers; imported late all the same
    return EXACT if isinstance(dE_dY, ExactGradient) else TUTORIAL


def unseen_gradients_error(layer: Any, grads: object, where: str) -> TypeError | None:
    """TypeError when ``backward`` returned parameter gradients (keys other than ``dX``) for arrays that the
    layer's ``parameters()`` does not list (an optimizer could not update them), naming the layer and what to add;
    None when every gradient has its parameter."""
    if not isinstance(grads, Mapping):
        return None
    params = getattr(layer, "parameters", None)
    listed = {key for _, key, _ in params()} if callable(params) else set()
    unseen = [key for key in grads if key != "dX" and key not in listed]
    if not unseen:
        return None
    entries = []
    for key in unseen:
        name = str(key)[1:].lower() if str(key).startswith("d") else str(key)
        name = next((n for n in (name, name.upper()) if isinstance(getattr(layer, n, None), np.ndarray)), name)
        entries.append(f'("{name}", "{key}", self.{name})')
    return TypeError(f"{where}: {layer!r} returns gradients {', '.join(map(repr, unseen))} for arrays that "
                     f"{'its parameters() does not list' if callable(params) else 'it has no parameters() to list'}, "
                     f"so they could not be updated; add a method parameters(self) returning [{', '.join(entries)}] "
                     f"(param_name, grad_key, array); for save / load also get_config() and "
                     f"@cnn_ext.register_layer")


def checked_gradient(g: object, p: NDArray[Any], where: str | Callable[[], str], key: str,
                     name: str) -> NDArray[Any]:
    """``g`` as an array for parameter ``p``: the same shape and a real integer or floating dtype, else
    ValueError (shape) or TypeError (None, bool, complex, object, string...). Nothing is changed. ``where``
    names the caller in errors: a string, or a function making one (a layer's repr costs more than the check)."""
    if type(g) is np.ndarray and g.dtype.kind in "iuf" and g.shape == p.shape:
        return g
    if callable(where):
        where = where()
    what = f"{where}: {key} (the gradient of {name})"
    if type(g) is not np.ndarray:
        if g is None:
            raise TypeError(f"{what} is None, not an array of numbers")
        try:
            g = np.asarray(g)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{what} could not be converted to an array: {exc}") from None
    if g.dtype.kind not in "iuf":
        kind = {"c": "complex", "b": "bool", "O": "object", "U": "string", "S": "bytes"}.get(g.dtype.kind)
        raise TypeError(f"{what} must hold real integers or floats, got dtype {g.dtype}"
                        + (f" ({kind})" if kind and kind != str(g.dtype) else ""))
    if g.shape != p.shape:
        raise ValueError(f"{where}: {key} has shape {g.shape} but {name} has shape {p.shape}")
    return g


# The rng with which Layer.without_weights builds a ParamLayer: its constructor checks and stores the whole
# config, and init_params draws nothing and allocates nothing (the weights come from set_weights).
_NO_DRAW = object()


def random_source(rng: Any, seed: int | Sequence[int] | np.random.SeedSequence | None) -> Any:
    """A random source: ``rng`` (Generator or RandomState), a Generator from ``seed``, else NumPy's global state.

    The global state is the tutorial's (``np.random.randn``), so ``np.random.seed(...)`` keeps working. A seed is
    what :func:`numpy.random.default_rng` takes: an int >= 0 (or a sequence of them, or a SeedSequence);
    anything else is a TypeError or ValueError naming ``seed`` here, not deep inside NumPy.
    """
    if rng is not None and seed is not None:
        raise ValueError("give rng or seed, not both")
    if rng is _NO_DRAW:
        return rng
    if rng is not None:
        if not isinstance(rng, (np.random.Generator, np.random.RandomState)):
            raise TypeError(f"rng must be a numpy.random.Generator or RandomState, got {type(rng).__name__}")
        return rng
    if seed is not None:
        if isinstance(seed, (bool, np.bool_, str, bytes, float, np.floating)):
            raise TypeError(f"seed must be an int >= 0 (or a sequence of them, or a SeedSequence), got {seed!r}")
        try:
            return np.random.default_rng(seed)
        except TypeError as exc:
            raise TypeError(f"seed must be an int >= 0 (or a sequence of them, or a SeedSequence), got {seed!r}: "
                            f"{exc}") from None
        except ValueError as exc:
            raise ValueError(f"seed must be an int >= 0 (or a sequence of them, or a SeedSequence), got {seed!r}: "
                             f"{exc}") from None
    return np.random  # the module's standard_normal / uniform use the global state


def checked_init(init: str | None) -> str | None:
    """``init`` itself, or ValueError: checked at construction, also by lazy layers that draw later."""
    if init is not None and init not in INITS:
        raise ValueError(f"init must be None or one of {INITS}, got {init!r}")
    return init


def init_params(init: str | None, rng: Any, w_shape: tuple[int, ...], b_shape: tuple[int, ...], fan_in: int,
                fan_out: int, tutorial_scale: float, dtype: DTypeLike,
                what: Callable[[], str]) -> tuple[FloatArray, FloatArray]:
    """Weights and biases drawn in float64 (same values for both dtypes up to rounding), then cast; ``what()``
    names the weights and the constructor arguments for the error on weights too large to allocate."""
    checked_init(init)
    if rng is _NO_DRAW:
        _checks.allocation(w_shape, dtype, what)
        return None, None  # type: ignore[return-value]  # without_weights: set_weights gives the arrays
    _checks.allocation(w_shape, np.float64, what)
    if init is None:
        w = tutorial_scale * rng.standard_normal(w_shape)
        b = tutorial_scale * rng.standard_normal(b_shape)
    else:
        # He: Var = 2 / fan_in; Glorot: Var = 2 / (fan_in + fan_out); uniform(-a, a) has Var = a² / 3.
        std = np.sqrt(2.0 / fan_in) if init.startswith("he") else np.sqrt(2.0 / (fan_in + fan_out))
        if init.endswith("normal"):
            w = std * rng.standard_normal(w_shape)
        else:
            w = rng.uniform(-np.sqrt(3.0) * std, np.sqrt(3.0) * std, w_shape)
        b = np.zeros(b_shape)
    return np.ascontiguousarray(w, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def _json_value(value):
    """Tuples as lists and NumPy scalars as Python numbers, for JSON."""
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def batch_mean(dy: FloatArray) -> FloatArray:
    """Mean over the batch axis; zeros for an empty batch (as :func:`conv2d_bias_gradient` gives), not NumPy's NaN
    and warning, so an update on an empty batch leaves the parameters as they are."""
    if dy.shape[0] == 0:
        return np.zeros(dy.shape[1:], dtype=dy.dtype)
    return dy.mean(axis=0)


def sgd_step(p: FloatArray, g: ArrayLike, learning_rate: float) -> None:
    """``p -= learning_rate * g`` in place (the same array object stays: optimizers and users hold it).

    BLAS axpy does it in one pass without a temporary; a non-contiguous or non-float parameter takes the
    NumPy path.
    """
    if p.flags.c_contiguous and p.flags.writeable and p.dtype in (np.float32, np.float64) and 0 < p.size < 2**31:
        axpy = _AXPY[p.dtype.char]
        axpy(np.ascontiguousarray(g, dtype=p.dtype).reshape(-1), p.reshape(-1), a=-float(learning_rate))
    else:
        p -= np.multiply(g, learning_rate, dtype=p.dtype, casting="same_kind")


class Layer:
    """Base class: input/gradient checks, the forward cache, SGD update, parameters, config and repr.

    Subclasses implement ``forward`` and ``backward`` and, when they have parameters, ``parameters``;
    ``get_config`` returns the constructor kwargs listed in ``_config_keys`` (attributes of the same name).
    """

    _config_keys: Tuple[str, ...] = ()
    # PyTorch's mode flag: layers that act differently when training (BatchNorm, Dropout) read it; set it
    # through Network.train() / Network.eval(). A class attribute, so layers of users' own classes have it too.
    training = True

    def __init__(self) -> None:
        self._x: Any = None      # forward input (as used, in the computation dtype)
        self._y_shape: tuple[int, ...] | None = None

    # -- the tutorial's interface ------------------------------------------------------------
    def forward(self, x: ArrayLike) -> FloatArray:
        raise NotImplementedError

    def backward(self, dE_dY: ArrayLike) -> dict[str, FloatArray]:
        raise NotImplementedError

    def update(self, grads: Mapping[str, ArrayLike], learning_rate: float) -> None:
        """Plain SGD in place: ``p -= learning_rate * grads[grad_key]`` for each parameter.

        ``grads`` is the dict ``backward`` returned; ``learning_rate`` any finite real number (note the order:
        :meth:`cnn_ext.Network.update` takes ``(learning_rate, grads)``). Swapped or mistyped arguments raise
        ``TypeError``, a NaN or infinite rate ``ValueError``, even for layers without parameters.
        """
        learning_rate = _checks.learning_rate(learning_rate, grads, type(self).__name__, "grads, learning_rate")
        pairs = self._grad_pairs(grads)
        with blas_single_thread():  # axpy on OpenBLAS's own threads would leave them spinning beside the kernels'
            for p, g in pairs:
                sgd_step(p, g, learning_rate)

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
            g = checked_gradient(g, p, lambda: f"{self!r}.update", key, name)
            pairs.append((p, g))
        return pairs

    # -- protocol ------------------------------------------------------------------------------
    def parameters(self) -> list[tuple[str, str, FloatArray]]:
        """List of ``(param_name, grad_key, ndarray)``; the arrays are the layer's own and are updated in place."""
        return []

    def get_config(self) -> dict[str, Any]:
        """JSON-serialisable constructor kwargs: ``type(layer)(**layer.get_config())`` rebuilds the layer."""
        return {key: _json_value(getattr(self, key)) for key in self._config_keys}

    def param_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """``{param_name: (shape, dtype)}`` of the parameters, in ``parameters()`` order.

        The default reads the arrays; a layer that can say them from its config alone (Conv2D, Dense) overrides
        this, and then :meth:`without_weights` builds it without drawing or allocating any weight.
        """
        return {name: (arr.shape, arr.dtype) for name, _, arr in self.parameters()}

    @classmethod
    def without_weights(cls, cfg: Mapping[str, Any]) -> Self:
        """The layer ``cls(**cfg)`` builds, every config check done, for :meth:`set_weights` to fill.

        A class whose :meth:`param_shapes` comes from its config (Conv2D, Dense) draws and allocates no weight:
        its parameters are unset until :meth:`set_weights`. Any other class is built as ``cls(**cfg)`` (its
        constructor may draw initial values, which :meth:`set_weights` overwrites).
        """
        return cls(**cfg)

    def set_weights(self, weights: Mapping[str, NDArray[Any]], *, copy: bool = True) -> None:
        """Set every parameter from ``weights`` (``{param_name: array}``), each of the shape and dtype
        :meth:`param_shapes` says, all checked before any changes (ValueError naming the parameter).

        The default copies into the arrays the layer has (they stay the same objects); ``copy=False`` lets a
        layer without weights yet (built by :meth:`without_weights`) take C-contiguous arrays as they are.
        """
        for name, arr in self._checked_weights(weights):
            current = dict((n, p) for n, _, p in self.parameters())[name]
            current[...] = arr

    def _checked_weights(self, weights):
        if not isinstance(weights, Mapping):
            raise TypeError(f"{self!r}: weights must be a dict {{param_name: array}}, got {type(weights).__name__}")
        shapes = self.param_shapes()
        if set(weights) != set(shapes):
            raise ValueError(f"{self!r}: weights must hold exactly {sorted(shapes)}, got {sorted(weights)}")
        pairs = []
        for name, (shape, dtype) in shapes.items():
            arr = weights[name]
            if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape) or arr.dtype != dtype:
                got = f"shape {arr.shape} and dtype {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"{self!r}: weight {name!r} must be an array of shape {tuple(shape)} and dtype "
                                 f"{np.dtype(dtype)}, got {got}")
            pairs.append((name, arr))
        return pairs

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], weights: Mapping[str, NDArray[Any]] | None = None) -> Self:
        """The layer ``cls(**cfg)`` builds; with ``weights`` (``{param_name: array}``, copied), those values
        instead of drawn ones, and no weight drawn at all for Conv2D and Dense."""
        if weights is None:
            return cls(**cfg)
        layer = cls.without_weights(cfg)
        layer.set_weights(weights)
        return layer

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={getattr(self, key)!r}" for key in self._config_keys)

    # -- shared checks -------------------------------------------------------------------------
    def _cached_input(self):
        if self._x is None:
            raise RuntimeError(f"{self!r}: backward called before forward (nothing to differentiate yet)")
        return self._x

    def _grad_output(self, dE_dY, dtype):
        """dE_dY as an array in ``dtype`` with the forward output's shape, else ValueError naming both shapes."""
        if isinstance(dE_dY, np.ndarray) and dE_dY.dtype.kind in "biuf":  # the common case: no name to format
            dy = np.asarray(dE_dY)  # an ExactGradient as a plain view, as as_real_array gives
        else:
            dy = _checks.as_real_array(dE_dY, f"{self!r}: dE_dY")
        if dy.shape != self._y_shape:
            raise ValueError(f"{self!r}: dE_dY has shape {dy.shape} but the forward output had shape {self._y_shape}")
        return dy.astype(dtype, copy=False)

    def _shape_error(self, what, expected, got):
        hint = ""
        if len(got) + 1 == expected.count(",") + 1 and "..." not in expected:
            hint = f"; a single sample without the batch axis? pass {what}[None] (shape {(1, *got)})"
        return ValueError(f"{self!r}: expected {what} of shape {expected}, got shape {got}{hint}")


class ParamLayer(Layer):
    """A layer with weights: ``_params`` names them, ``init`` and ``dtype`` go into the config and the repr."""

    _params: Tuple[Tuple[str, str], ...] = ()  # ((param_name, grad_key), ...)
    # set by each subclass's constructor
    init: str | None
    dtype: np.dtype[Any]

    def parameters(self) -> list[tuple[str, str, FloatArray]]:
        """The weights named in ``_params``, as :meth:`Layer.parameters` describes."""
        return [(name, key, getattr(self, name)) for name, key in self._params]

    def get_config(self) -> dict[str, Any]:
        """:meth:`Layer.get_config` with the dtype's name."""
        cfg = super().get_config()
        cfg["dtype"] = self.dtype.name
        return cfg

    @classmethod
    def without_weights(cls, cfg: Mapping[str, Any]) -> Self:
        """As :meth:`Layer.without_weights`; a config holding ``rng`` or ``seed`` is refused (ValueError)."""
        if cls.param_shapes is Layer.param_shapes:  # a subclass that cannot say its shapes from its config
            return cls(**cfg)
        if "rng" in cfg or "seed" in cfg:
            raise ValueError(f"{cls.__name__}: a config to build without weights holds no rng or seed, got "
                             f"{sorted(k for k in cfg if k in ('rng', 'seed'))}")
        return cls(**cfg, rng=_NO_DRAW)  # type: ignore[call-arg]  # the subclasses' constructors take rng

    def set_weights(self, weights: Mapping[str, NDArray[Any]], *, copy: bool = True) -> None:
        """As :meth:`Layer.set_weights`."""
        pairs = self._checked_weights(weights)
        for name, arr in pairs:
            if copy or not (arr.flags.c_contiguous and arr.flags.aligned and arr.flags.writeable):
                arr = np.array(arr, order="C", copy=True)
            setattr(self, name, arr)

    def _repr_tail(self):
        s = f", init={self.init!r}" if self.init is not None else ""
        return s + (f", dtype={self.dtype.name}" if self.dtype != np.float64 else "")


