"""Optimisers for :class:`cnn_ext.Network`: SGD (momentum, Nesterov, weight decay, decoupled or not), Adam and
AdamW.

Usage, in place of the tutorial's ``network.update(learning_rate, grads)``::

    opt = Adam(lr=1e-3)
    grads = network.backward(dE_dY)     # list of per-layer dicts, in layer order
    opt.step(network, grads)            # updates every layer's parameter arrays in place

The update rules are PyTorch's (``torch.optim.SGD`` with ``dampening=0``, ``torch.optim.Adam`` and
``torch.optim.AdamW`` with ``amsgrad=False``), applied to the exact gradient of the loss: ``backward`` given an
:class:`~cnn_ext.losses.ExactGradient` (``softmax_cross_entropy``'s gradient, or ``exact(dE_dY)``), the same
numbers as PyTorch's autograd. Gradients made under the tutorial's rule (a plain ``dE_dY`` such as
``mse_loss``'s: Conv2D ``dK``/``dB`` and Dense ``dB`` batch means) are refused with a ``ValueError``; dicts of
your own (plain dicts) are taken as they are.

A step sees every weight or refuses: a layer whose ``backward`` returned gradients (keys other than ``dX``) for
arrays its ``parameters()`` does not list raises ``TypeError`` naming the layer and what to add. It is all or nothing: every gradient is checked
(present, the parameter's shape, a real integer or floating dtype; bool, complex, object and string arrays raise
``TypeError``) before any parameter, state or step count changes.

Parameters are found through the layer protocol (``layer.parameters()`` -> ``(param_name, grad_key, array)``) and
updated in place, so the arrays a layer holds stay the same objects. State (momentum buffers, Adam moments) is kept
per parameter array across steps, created at the first step in the parameter's dtype; after that a step allocates
no array: every operation writes into the parameter, its state or a scratch buffer. SGD's final
``p -= step * direction`` is one BLAS axpy (the same as ``Layer.update``); Adam's whole update of a large
parameter is one threaded pass (``cnn_ext._kernels.elementwise.adam_update``), bitwise the NumPy sequence that
small or non-contiguous parameters take. Gradients in another float dtype than their parameter are accepted (cast
on the fly, which then costs one temporary).

Resuming: :meth:`Optimizer.state_dict` copies the hyper-parameters, the step count and the state of every parameter
(in ``Network.parameters()`` order); :meth:`Optimizer.load_state_dict` puts them into a new optimizer, so that
training resumed from a saved network and optimizer takes bit for bit the steps the uninterrupted run takes.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks
from ._kernels import elementwise as _elementwise
from ._threads import blas_single_thread
from .layers.activations import fused_threads
from .layers.base import TUTORIAL, checked_gradient, unseen_gradients_error, sgd_step
from .network import check_one_rule

if TYPE_CHECKING:
    from ._typing import LayerLike
    from .network import Network

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


def _layers_and_grads(model, grads):
    """[(layer_index, layer, grad_dict)] for a Network (or anything with ``.layers``) or a single layer."""
    if hasattr(model, "layers"):
        layers = list(model.layers)
        try:
            grads = list(grads)
        except TypeError:
            raise TypeError(f"grads must be the list returned by Network.backward, got {type(grads).__name__}") from None
    elif callable(getattr(model, "parameters", None)):
        layers = [model]
        grads = [grads]
    else:
        raise TypeError(f"step expects a Network or a layer, got {type(model).__name__}")
    if len(grads) != len(layers):
        raise ValueError(f"step: got {len(grads)} gradient dicts for {len(layers)} layers")
    return [(i, layer, g) for i, (layer, g) in enumerate(zip(layers, grads))]


class Optimizer:
    """Base class: walks the parameters of a network, checks each gradient and calls ``_update``.

    Subclasses implement ``_update(p, g, state)`` (in place on ``p`` and ``state``) and ``_new_state(p)``.

    Attributes
    ----------
    lr : float
        Learning rate; may be changed between steps (schedules).
    steps : int
        Number of :meth:`step` calls so far.
    """

    #: the state entries that carry over between steps (the others are scratch buffers)
    _PERSISTENT: tuple[str, ...] = ()
    lr: float
    weight_decay: float
    decoupled_weight_decay: bool
    steps: int

    def __init__(self, lr: float, weight_decay: float, decoupled_weight_decay: bool = False) -> None:
        self.lr = _checks.real(lr, "lr", strict=True)
        self.weight_decay = _checks.real(weight_decay, "weight_decay")
        if not isinstance(decoupled_weight_decay, (bool, np.bool_)):
            raise TypeError(f"decoupled_weight_decay must be a bool, got {decoupled_weight_decay!r}")
        self.decoupled_weight_decay = bool(decoupled_weight_decay)
        self.steps = 0
        # id(array) -> (array, state dict); holding the array keeps its id unique
        self._state: dict[int, tuple[NDArray[Any], dict[str, Any]]] = {}
        # a loaded state dict's entries, bound to the parameters at the next step
        self._pending: list[dict[str, Any]] | None = None

    def step(self, network: Network | LayerLike,
             grads: Iterable[Mapping[str, ArrayLike]] | Mapping[str, ArrayLike]) -> None:
        """Apply one update to every parameter of ``network`` in place.

        Parameters
        ----------
        network : Network or layer
            A :class:`cnn_ext.Network` (anything with ``.layers``) or a single layer.
        grads : list of dict (or one dict for a single layer)
            ``Network.backward``'s result: ``grads[i][grad_key]`` is the gradient of each parameter of
            ``network.layers[i]``. Layers without parameters are skipped.
        """
        where = f"{type(self).__name__}.step"
        triples = _layers_and_grads(network, grads)
        for i, layer, g in triples:
            exc = unseen_gradients_error(layer, g, f"{where}: layer {i}")
            if exc is not None:
                raise exc
        if check_one_rule([g for _, _, g in triples], where) == TUTORIAL:
            raise ValueError(f"{where}: these gradients follow the tutorial's rule (backward was given a plain dE_dY, "
                             f"e.g. mse_loss's): Conv2D dK, dB and Dense dB are batch means there, 1/N of the "
                             f"gradient of the loss. Optimizers take the exact gradient: pass "
                             f"cnn_ext.losses.exact(dE_dY) to backward (softmax_cross_entropy's gradient already is)")
        work = []
        for i, layer, g in triples:
            params = layer.parameters() if callable(getattr(layer, "parameters", None)) else []
            for name, key, p in params:
                try:
                    grad = g[key]
                except (KeyError, TypeError, IndexError):
                    raise ValueError(f"step: the gradients of layer {i} ({layer!r}) have no {key!r} "
                                     f"(the gradient of {name})") from None
                grad = checked_gradient(grad, p, lambda: f"step: layer {i} ({layer!r})", key, name)  # called now
                if not isinstance(p, np.ndarray) or not p.flags.writeable or p.dtype.kind != "f":
                    raise TypeError(f"step: layer {i} ({layer!r}): {name} must be a writeable float array")
                work.append((p, grad))
        if self._pending is not None:  # a loaded state: bound now, checked like the gradients
            bound = self._bind([p for p, _ in work], self._pending, where)
            self._state, self._pending = bound, None
        # every check passed: now update (a bad gradient never leaves the network half-updated)
        self.steps += 1
        shrink = 1.0 - self.lr * self.weight_decay if self.decoupled_weight_decay else 1.0
        with blas_single_thread():  # one threading layer, as in Network (its axpy calls are memory-bound)
            for p, grad in work:
                entry = self._state.get(id(p))
                if entry is None:
                    entry = self._state[id(p)] = (p, self._new_state(p))
                if shrink != 1.0:  # decoupled weight decay: p *= 1 - lr * weight_decay, before the step
                    p *= shrink
                self._update(p, grad, entry[1])

    def state(self, array: NDArray[Any]) -> dict[str, Any]:
        """The state dict kept for one parameter array (empty before its first step)."""
        entry = self._state.get(id(array))
        return entry[1] if entry is not None and entry[0] is array else {}

    def reset(self) -> None:
        """Forget all state (momentum buffers, moments, step count)."""
        self._state.clear()
        self._pending = None
        self.steps = 0

    def _hyperparameters(self):
        """The constructor's arguments, as a dict (what ``state_dict`` saves and ``load_state_dict`` restores)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """A copy of everything a resumed run needs: hyper-parameters, step count and per-parameter state.

        Returns
        -------
        state : dict
            ``{"optimizer": class name, "hyperparameters": {...}, "steps": int, "state": [dict, ...]}``; ``state``
            holds one dict per parameter in the order of the steps (``Network.parameters()`` order), with copies
            of the arrays (later steps do not change a returned dict). Before the first step ``state`` is empty.
        """
        if self._pending is not None:
            entries = self._pending
        else:
            entries = [{k: v for k, v in st.items() if k in self._PERSISTENT} for _, st in self._state.values()]
        return {"optimizer": type(self).__name__, "hyperparameters": self._hyperparameters(),
                "steps": self.steps,
                "state": [{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in e.items()}
                          for e in entries]}

    def load_state_dict(self, state_dict: dict, network: Any = None) -> None:
        """Restore what :meth:`state_dict` returned (of an optimizer of the same class); all or nothing.

        Parameters
        ----------
        state_dict : dict
            :meth:`state_dict`'s result (its arrays are copied, never modified).
        network : Network or layer, optional
            The network whose parameters the state belongs to (e.g. the one :func:`cnn_ext.load` returned):
            checked against the state's shapes now. Without it the state is bound to the parameters of the
            next :meth:`step`'s network, in ``Network.parameters()`` order, checked before that step changes
            anything.

        Raises
        ------
        ValueError
            Another optimizer class, a malformed dict, or state that does not fit the network's parameters.
        """
        name = type(self).__name__
        where = f"{name}.load_state_dict"
        keys = {"optimizer", "hyperparameters", "steps", "state"}
        if not isinstance(state_dict, dict) or not keys <= set(state_dict):
            raise ValueError(f"{where}: state_dict must be the dict state_dict() returned (keys optimizer, "
                             f"hyperparameters, steps, state), got {type(state_dict).__name__}")
        if state_dict["optimizer"] != name:
            raise ValueError(f"{where}: the state is of a {state_dict['optimizer']} optimizer, not a {name}")
        hyper = state_dict["hyperparameters"]
        try:
            fresh = type(self)(**hyper)  # the constructor's checks, without touching self
        except TypeError as exc:
            raise ValueError(f"{where}: bad hyperparameters {hyper!r}: {exc}") from None
        steps = state_dict["steps"]
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"{where}: steps must be an int >= 0, got {steps!r}")
        entries = state_dict["state"]
        if not isinstance(entries, (list, tuple)) or not all(isinstance(e, dict) for e in entries):
            raise ValueError(f"{where}: state must be a list of per-parameter dicts")
        entries = [self._checked_entry(e, j, where) for j, e in enumerate(entries)]
        bound = None
        if network is not None:
            layers = list(network.layers) if hasattr(network, "layers") else [network]
            params = [p for layer in layers
                      for _, _, p in (layer.parameters() if callable(getattr(layer, "parameters", None)) else [])]
            bound = fresh._bind(params, entries, where)  # scratch buffers for the loaded hyper-parameters
        # every check passed
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k not in ("_state", "_pending", "steps")})
        self.steps = int(steps)
        if bound is not None:
            self._state, self._pending = bound, None
        else:
            self._state, self._pending = {}, (entries or None)

    def _checked_entry(self, entry, j, where):
        """A copy of one parameter's saved state, with only the persistent keys, each of the right kind."""
        unknown = set(entry) - set(self._PERSISTENT)
        if unknown:
            raise ValueError(f"{where}: state[{j}] has unknown entries {sorted(unknown)} (expected "
                             f"{list(self._PERSISTENT)})")
        out = {}
        for k, v in entry.items():
            if k == "t":
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
                    raise ValueError(f"{where}: state[{j}]['t'] must be an int >= 0, got {v!r}")
                out[k] = int(v)
            elif v is None and k == "momentum_buffer":
                out[k] = None
            else:
                if not isinstance(v, np.ndarray) or v.dtype.kind != "f":
                    raise ValueError(f"{where}: state[{j}][{k!r}] must be a float array, got "
                                     f"{type(v).__name__}")
                out[k] = v.copy()
        return out

    def _bind(self, params, entries, where):
        """{id(p): (p, state)} for saved entries and the parameters in order; ValueError if they do not fit."""
        if len(entries) != len(params):
            raise ValueError(f"{where}: the state holds {len(entries)} parameters, the network has {len(params)}")
        bound = {}
        for j, (p, e) in enumerate(zip(params, entries)):
            for k, v in e.items():
                if isinstance(v, np.ndarray) and v.shape != p.shape:
                    raise ValueError(f"{where}: state[{j}][{k!r}] has shape {v.shape} but parameter {j} has "
                                     f"shape {p.shape}")
        for p, e in zip(params, entries):
            st = self._new_state(p)
            st.update({k: (v.astype(p.dtype, copy=True) if isinstance(v, np.ndarray) else v) for k, v in e.items()})
            bound[id(p)] = (p, st)
        return bound

    def _decayed(self, p, g, state):
        """``g + weight_decay * p`` in the state's ``decayed`` buffer, or ``g`` itself without (coupled) weight
        decay."""
        if self.weight_decay == 0.0 or self.decoupled_weight_decay:
            return g
        buf = state.get("decayed")
        if buf is None:  # weight decay switched on after the first step
            buf = state["decayed"] = np.empty_like(p)
        np.multiply(p, self.weight_decay, out=buf)
        buf += g
        return buf

    def _buffers(self, p, *names):
        """Scratch buffers like ``p`` (plus ``decayed`` when there is weight decay), allocated once per parameter."""
        names = names + (("decayed",) if self.weight_decay and not self.decoupled_weight_decay else ())
        return {name: np.empty_like(p) for name in names}

    def _new_state(self, p):
        raise NotImplementedError

    def _update(self, p, g, state):
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    Per parameter ``p`` with gradient ``g`` (PyTorch's ``SGD`` with ``dampening=0``)::

        p = p * (1 - lr * weight_decay)   if decoupled_weight_decay (SGDW)
        g = g + weight_decay * p          otherwise (L2, PyTorch's weight_decay)
        if momentum:
            v = g                 (first step)
            v = momentum * v + g  (later steps)
            g = g + momentum * v  if nesterov else v
        p -= lr * g

    Parameters
    ----------
    lr : float > 0
    momentum : float >= 0, default 0
    nesterov : bool, default False (needs momentum > 0)
    weight_decay : float >= 0, default 0
    decoupled_weight_decay : bool, default False
        Shrink the parameters by ``1 - lr * weight_decay`` before each step instead of adding
        ``weight_decay * p`` to the gradient (Loshchilov & Hutter's SGDW; the momentum never sees the decay).
    """

    _PERSISTENT = ("momentum_buffer",)
    momentum: float
    nesterov: bool

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0,
                 decoupled_weight_decay: bool = False) -> None:
        super().__init__(lr, weight_decay, decoupled_weight_decay)
        self.momentum = _checks.real(momentum, "momentum")
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        if nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)

    def _hyperparameters(self):
        return dict(lr=self.lr, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay,
                    decoupled_weight_decay=self.decoupled_weight_decay)

    def _new_state(self, p):
        state = self._buffers(p)
        state["momentum_buffer"] = None  # the first (decayed) gradient, at the first step with momentum
        return state

    def _update(self, p, g, state):
        d = self._decayed(p, g, state)
        if self.momentum:  # read at every step: a schedule (OneCycleLR) may change it
            v = state["momentum_buffer"]
            if v is None:
                v = state["momentum_buffer"] = np.array(d, dtype=p.dtype)
            else:
                v *= self.momentum
                v += d
            if self.nesterov:
                buf = state.get("scratch")
                if buf is None:
                    buf = state["scratch"] = np.empty_like(p)
                np.multiply(v, self.momentum, out=buf)
                buf += d
                d = buf
            else:
                d = v
        sgd_step(p, d, self.lr)

    def __repr__(self) -> str:
        decoupled = ", decoupled_weight_decay=True" if self.decoupled_weight_decay else ""
        return (f"SGD(lr={self.lr}, momentum={self.momentum}, nesterov={self.nesterov}, "
                f"weight_decay={self.weight_decay}{decoupled})")


class Adam(Optimizer):
    """Adam with bias correction (PyTorch's ``Adam``, ``amsgrad=False``; weight decay is L2, see :class:`AdamW`).

    Per parameter ``p`` with gradient ``g``, at step ``t = 1, 2, ...`` of that parameter::

        p = p * (1 - lr * weight_decay)   if decoupled_weight_decay (AdamW)
        g = g + weight_decay * p          otherwise (L2)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g²
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    Parameters
    ----------
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 0
    decoupled_weight_decay : bool, default False
        PyTorch's ``Adam(decoupled_weight_decay=True)``, which is ``AdamW``.
    """

    _PERSISTENT = ("t", "exp_avg", "exp_avg_sq")
    betas: tuple[float, float]
    eps: float

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False) -> None:
        super().__init__(lr, weight_decay, decoupled_weight_decay)
        try:
            b1, b2 = betas
        except (TypeError, ValueError):
            raise TypeError(f"betas must be a pair of floats, got {betas!r}") from None
        self.betas = (_checks.real(b1, "betas[0]", maximum=1.0), _checks.real(b2, "betas[1]", maximum=1.0))
        self.eps = _checks.real(eps, "eps")

    def _hyperparameters(self):
        return dict(lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                    decoupled_weight_decay=self.decoupled_weight_decay)

    def _new_state(self, p):
        state = self._buffers(p, "scratch")
        state.update(t=0, exp_avg=np.zeros_like(p), exp_avg_sq=np.zeros_like(p))
        return state

    def _update(self, p, g, state):
        b1, b2 = self.betas
        m, v, buf = state["exp_avg"], state["exp_avg_sq"], state["scratch"]
        state["t"] += 1
        t = state["t"]
        d = self._decayed(p, g, state)
        threads = fused_threads((p, d, m, v))  # step() has refused read-only parameters
        if threads:  # one pass over the four arrays, the same roundings as the NumPy sequence below
            _elementwise.adam_update(p.reshape(-1), d.reshape(-1), m.reshape(-1), v.reshape(-1), b1, b2,
                                     1.0 / math.sqrt(1.0 - b2 ** t), self.eps, self.lr / (1.0 - b1 ** t), threads)
            return
        m *= b1                                  # m = b1 m + (1 - b1) d
        np.multiply(d, 1.0 - b1, out=buf)
        m += buf
        v *= b2                                  # v = b2 v + (1 - b2) d²
        np.multiply(d, d, out=buf)
        buf *= 1.0 - b2
        v += buf
        np.sqrt(v, out=buf)                      # denom = sqrt(v) / sqrt(1 - b2^t) + eps
        buf *= 1.0 / math.sqrt(1.0 - b2 ** t)
        buf += self.eps
        np.divide(m, buf, out=buf)               # p -= lr / (1 - b1^t) * m / denom
        buf *= self.lr / (1.0 - b1 ** t)         # two roundings, as the fused kernel's (axpy may fuse them)
        p -= buf

    def __repr__(self) -> str:
        decoupled = ", decoupled_weight_decay=True" if self.decoupled_weight_decay else ""
        return (f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay}"
                f"{decoupled})")


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's ``AdamW``, ``amsgrad=False``).

    At every step, before Adam's::

        p = p * (1 - lr * weight_decay)

    Parameters
    ----------
    lr : float > 0, default 1e-3
    betas : (float, float) in [0, 1), default (0.9, 0.999)
    eps : float >= 0, default 1e-8
    weight_decay : float >= 0, default 0.01 (PyTorch's default)
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(lr, betas, eps, weight_decay, decoupled_weight_decay=True)

    def _hyperparameters(self):
        return dict(lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)

    def __repr__(self) -> str:
        return f"AdamW(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay})"
