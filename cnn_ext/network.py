"""A sequential network with the reference tutorial's interface.

``forward`` chains the layers; ``backward`` walks them in reverse and returns each layer's gradient dict in
layer order; ``update(learning_rate, grads)`` (the tutorial's argument order) hands each dict to its layer.

One threading layer: while a network call runs, the BLAS libraries are held to one thread and the parallelism
is cnn_ext's own (its kernels' OpenMP team). NumPy's OpenBLAS threads keep spinning ~0.1 s after each call, so
letting them run between the kernels' parallel regions made a 2-thread training step of the tutorial's MNIST
network 30x slower on 2 cores (34 ms instead of 1.15 ms in float32); the batch-16 Dense products gain
nothing from BLAS threads anyway.
The first layer's input gradient is never used, so when that layer's ``backward`` takes ``need_dX`` it is
called with ``need_dX=False`` (for the tutorial's MNIST network that was a third of the step time).

The gradient rule is the loss's: ``backward`` given an :class:`~cnn_ext.losses.ExactGradient` (from
``softmax_cross_entropy`` or ``exact(...)``) hands every layer a flagged ``dE_dY``, so every parameter gets the
exact gradient of the loss; given a plain array (the tutorial's ``mse_loss``) every layer follows the tutorial.
"""
from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import numpy.typing as npt

from . import _checks
from ._threads import blas_single_thread
from .layers.base import EXACT, Gradients, Layer, grad_rule, sgd_step
from .layers.chain import backward_chain, forward_chain
from .layers.conv import Conv2D
from .layers.dense import Dense
from .layers.norm import _BatchNorm
from .losses import ExactGradient

if TYPE_CHECKING:
    from typing import SupportsIndex

    from typing_extensions import Self

    from ._typing import FloatArray, LayerLike

__all__ = ["Network", "GradientRuleWarning"]

# PyTorch's names of the built-in layers' parameters: (class, {param_name: (state name, transposed)})
_TORCH_NAMES = (
    (Conv2D, {"k": ("weight", False), "b": ("bias", False)}),
    (Dense, {"w": ("weight", True), "b": ("bias", False)}),  # PyTorch's Linear keeps (out, in)
    (_BatchNorm, {"gamma": ("weight", False), "beta": ("bias", False)}),
)


def _layer_state(layer, prefix, entries, where, index):
    """Append ``(key, array, transposed)`` of ``layer``'s parameters and buffers (its inner layers' for a
    block with ``named_sublayers()``) to ``entries``."""
    if not getattr(layer, "built", True):
        raise ValueError(f"{where}: layer {index} ({layer!r}) has not inferred its sizes yet; run a forward pass "
                         f"or summary(input_shape) first")
    if callable(getattr(layer, "named_sublayers", None)):
        for name, sub in layer.named_sublayers():
            _layer_state(sub, f"{prefix}{name}.", entries, where, index)
        return
    names = next((names for cls, names in _TORCH_NAMES if isinstance(layer, cls)), {})
    for name, _, arr in (layer.parameters() if _has_parameters(layer) else []):
        key, transposed = names.get(name, (name, False))
        entries.append((prefix + key, arr, transposed))
    for name, arr in (layer.buffers() if callable(getattr(layer, "buffers", None)) else []):
        entries.append((prefix + name, arr, False))


class GradientRuleWarning(UserWarning):
    """Gradients of unknown rule met gradients of a known one (see :mod:`cnn_ext.losses`)."""


def _has_parameters(layer):
    return callable(getattr(layer, "parameters", None)) and bool(layer.parameters())


def check_one_rule(grads: Iterable[object], where: str) -> str | None:
    """ValueError when the gradient dicts of one step were made under both rules (some layers given an
    ExactGradient, others a plain dE_dY: e.g. a chain of hand-called backwards that lost the flag)."""
    rules = {getattr(g, "rule", None) for g in grads} - {None}
    if len(rules) > 1:
        detail = ", ".join(f"{i}: {getattr(g, 'rule')}" for i, g in enumerate(grads) if getattr(g, "rule", None))
        raise ValueError(f"{where}: the gradients mix the exact and the tutorial's rule (layer: rule = {detail}); "
                         f"compute them in one backward pass from one dE_dY (Network.backward passes the flag of "
                         f"an ExactGradient to every layer)")
    return rules.pop() if rules else None


def _accepts_need_dX(layer):
    try:
        return "need_dX" in inspect.signature(layer.backward).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


@contextlib.contextmanager
def eval_mode(network: "Network") -> Iterator["Network"]:
    """Every layer of ``network`` in evaluation mode for the block, each layer's own mode put back after it (a
    layer without a ``training`` flag is left alone): what ``predict``, ``summary``, ``cnn_ext.evaluate`` and
    ``cnn_ext.distributed.batch_powers`` run in."""
    layers = list(getattr(network, "layers", []))
    modes = [getattr(layer, "training", None) for layer in layers]
    for layer, mode in zip(layers, modes):
        if mode is not None:
            layer.training = False
    try:
        yield network
    finally:
        for layer, mode in zip(layers, modes):
            if mode is not None:
                layer.training = mode


class Network:
    """A stack of layers applied in order.

    Parameters
    ----------
    layers : iterable of layers
        Objects with ``forward(x)``, ``backward(dE_dY) -> dict`` and ``update(grads, learning_rate)``
        (:mod:`cnn_ext.layers` or any class following the same protocol).

    Attributes
    ----------
    layers : list
    """

    # the layers as given: built-in ones or classes of your own, each with its own attributes
    layers: list[Any]

    def __init__(self, layers: Iterable[LayerLike]) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("Network needs at least one layer, got an empty list")
        for i, layer in enumerate(layers):
            missing = [m for m in ("forward", "backward", "update") if not callable(getattr(layer, m, None))]
            if missing:
                raise TypeError(f"layer {i} ({layer!r}) has no {', '.join(missing)} method")
        self.layers = layers
        # (first layer, whether its backward takes need_dX)
        self._skip_cache: tuple[object, bool] = (None, False)

    def __call__(self, x: npt.ArrayLike) -> FloatArray:
        """``net(x)`` is ``net.forward(x)``, as in PyTorch."""
        return self.forward(x)

    def train(self, mode: bool = True) -> Self:
        """Put every layer in training mode (``mode=True``) or evaluation mode; returns the network.

        Sets each layer's ``training`` attribute, which layers that act differently in training (BatchNorm,
        Dropout) read. A new network is in training mode. :func:`cnn_ext.fit` trains in training mode and
        evaluates in evaluation mode, and leaves the network in evaluation mode.
        """
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"train: mode must be True or False, got {mode!r}")
        for layer in self.layers:
            layer.training = bool(mode)
        return self

    def eval(self) -> Self:
        """Put every layer in evaluation mode (``train(False)``); returns the network."""
        return self.train(False)

    @property
    def training(self) -> bool:
        """True when every layer is in training mode (a layer without the attribute counts as training)."""
        return all(getattr(layer, "training", True) for layer in self.layers)

    def forward(self, x: npt.ArrayLike) -> FloatArray:
        """Output of the last layer for input ``x``; every layer caches what its backward needs."""
        with blas_single_thread():
            return forward_chain(self.layers, x)

    def backward(self, dE_dY: npt.ArrayLike) -> list[dict[str, FloatArray]]:
        """Per-layer gradient dicts, in layer order (index i belongs to ``layers[i]``).

        The first layer is asked to skip its ``"dX"`` when its ``backward`` takes ``need_dX``. A ``ReLU`` right
        after a ``BatchNorm1D`` / ``BatchNorm2D`` is differentiated inside the BatchNorm's backward pass (as it
        was applied inside its forward pass): its dict is empty, its ``"dX"`` never made; so is the dict of a
        ``MaxPool2D`` right after a ``ReLU`` (it differentiates the ReLU too). Calling each layer's ``backward``
        in turn gives the same gradients, bitwise.
        """
        first = self.layers[0]
        if self._skip_cache[0] is not first:  # inspect.signature costs ~50 us: once per first layer
            self._skip_cache = (first, _accepts_need_dX(first))
        exact = grad_rule(dE_dY) == EXACT
        with blas_single_thread():
            grads, _ = backward_chain(self.layers, dE_dY, exact, self._skip_cache[1])
        if exact:
            for i, (layer, g) in enumerate(zip(self.layers, grads)):
                if not isinstance(g, Gradients) and _has_parameters(layer) and \
                        not getattr(layer, "exact_gradients", False):
                    warnings.warn(f"Network.backward: layer {i} ({layer!r}) does not say whether its backward returns "
                                  f"the exact gradient of the loss for an ExactGradient dE_dY (batch sums, not "
                                  f"means); set exact_gradients = True on its class once it does",
                                  GradientRuleWarning, stacklevel=2)
        return grads

    def update(self, learning_rate: float, grads: Iterable[Mapping[str, npt.ArrayLike]]) -> None:
        """Plain SGD: ``layers[i].update(grads[i], learning_rate)`` for every layer.

        ``learning_rate`` is any finite real number (note the order: a layer's ``update`` takes
        ``(grads, learning_rate)``); ``grads`` the list :meth:`backward` returned. Swapped or mistyped arguments
        raise ``TypeError``, a NaN or infinite rate ``ValueError``, before any parameter changes.
        """
        learning_rate = _checks.learning_rate(learning_rate, grads, "Network", "learning_rate, grads")
        if isinstance(grads, (Mapping, str, bytes)) or not isinstance(grads, Iterable):
            raise TypeError(f"Network.update(learning_rate, grads): grads must be the list of per-layer dicts "
                            f"backward returned, got {'dict' if isinstance(grads, dict) else type(grads).__name__}")
        grads = list(grads)
        if len(grads) != len(self.layers):
            raise ValueError(f"update: got {len(grads)} gradient dicts for {len(self.layers)} layers")
        check_one_rule(grads, "Network.update")
        # All or nothing: every layer's dict is checked (once) before the first parameter changes; a layer with
        # its own update rule gets its dict as it is.
        steps: list[tuple[Any, Any]] = [
            (None, layer._grad_pairs(g)) if getattr(type(layer), "update", None) is Layer.update
            else (layer, g) for layer, g in zip(self.layers, grads)]
        with blas_single_thread():
            for layer, g in steps:
                if layer is not None:
                    layer.update(g, learning_rate)
                    continue
                for p, d in g:
                    sgd_step(p, d, learning_rate)

    def predict(self, x: npt.ArrayLike, batch_size: int = 256) -> FloatArray:
        """The network's scores for ``x``: the last layer's output, computed in evaluation mode.

        Runs the forward pass over ``x`` in chunks of ``batch_size`` samples (bounded memory) and concatenates
        them. The output is what the last layer gives (logits, or probabilities after a Softmax / Sigmoid layer),
        one row per sample; :meth:`predict_classes` gives the labels. Layers that act differently in training
        (BatchNorm, Dropout) run in evaluation mode, as Keras's ``predict`` does, and each layer's mode is put
        back afterwards. Like ``forward`` it replaces the layers' caches, so call it between training steps, not
        inside one.

        Parameters
        ----------
        x : array_like, shape (N, ...)
        batch_size : int, default 256

        Returns
        -------
        scores : ndarray, shape (N, ...)
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        x = np.asarray(x)
        if x.ndim == 0:
            raise ValueError(f"predict: x must have a batch axis, got a scalar of shape {x.shape}")
        with eval_mode(self):
            if x.shape[0] <= batch_size:
                return self.forward(x)
            return np.concatenate([self.forward(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    def predict_classes(self, x: npt.ArrayLike, batch_size: int = 256) -> npt.NDArray[np.intp]:
        """The predicted class of each sample: ``argmax`` of :meth:`predict`'s scores over the class axis
        (``x`` and ``batch_size`` as there).

        Returns
        -------
        labels : ndarray of intp, shape (N,)
            For scores of shape (N, K), the index of each row's largest score.
        """
        scores = self.predict(x, batch_size)
        if scores.ndim != 2:
            raise ValueError(f"predict_classes: the network's output must be (N, classes) scores, got shape "
                             f"{scores.shape}; use predict() and take the argmax over the class axis yourself")
        return scores.argmax(axis=1)

    def parameters(self) -> list[tuple[str, str, FloatArray]]:
        """``(f"{i}.{param_name}", grad_key, ndarray)`` for every parameter of every layer, in layer order.

        The prefix ``i`` is the layer index, so the matching gradient is ``grads[i][grad_key]``.
        """
        return [(f"{i}.{name}", key, arr)
                for i, layer in enumerate(self.layers)
                for name, key, arr in (layer.parameters() if _has_parameters(layer) else [])]

    def buffers(self) -> list[tuple[str, npt.NDArray]]:
        """``(f"{i}.{name}", ndarray)`` for every buffer of every layer (state that gradients do not train, such
        as BatchNorm's running statistics; a layer lists them with a ``buffers()`` method), in layer order."""
        return [(f"{i}.{name}", arr) for i, layer in enumerate(self.layers)
                for name, arr in (layer.buffers() if callable(getattr(layer, "buffers", None)) else [])]

    def state_dict(self) -> dict[str, npt.NDArray]:
        """The network's weights and buffers as ``{name: array}``, named and laid out as PyTorch names them.

        Names are ``f"{layer_index}.{name}"``: Conv2D's ``k`` and ``b`` are ``weight`` and ``bias``, Dense's
        ``weight`` is its ``w`` transposed to PyTorch's (n_out, n_in), BatchNorm's ``gamma`` and ``beta`` are
        ``weight`` and ``bias`` beside its ``running_mean``, ``running_var`` and ``num_batches_tracked``; a
        :class:`~cnn_ext.Residual` block's inner layers are ``{i}.layers.{j}.`` and
        ``{i}.shortcut.{j}.``; other layers keep their parameter names. So a PyTorch ``nn.Sequential`` of the same
        layers has the same keys and shapes (``{k: v.numpy() for k, v in module.state_dict().items()}`` loads).

        Returns
        -------
        state : dict of str to ndarray
            Copies: training on does not change them (keep one as a snapshot of the best weights).

        Raises
        ------
        ValueError
            When a lazy layer has not inferred its sizes yet (run a forward pass or :meth:`summary` first).
        """
        return {key: np.array(arr.T if transposed else arr, copy=True)
                for key, arr, transposed in self._state_entries("state_dict")}

    def load_state_dict(self, state: Mapping[str, npt.ArrayLike], strict: bool = True) -> None:
        """Copy weights and buffers from ``state`` (as :meth:`state_dict` names them) into the network's arrays.

        The arrays stay the same objects (optimizers keep their state); values are cast to each array's dtype
        (float32 PyTorch weights load into a float64 network). Every entry is checked before any is copied, so a
        refused call changes nothing.

        Parameters
        ----------
        state : mapping of str to array_like
            NumPy arrays, or anything ``numpy.asarray`` takes (CPU tensors included).
        strict : bool, default True
            Require exactly the network's keys; with False, missing keys keep their values and unknown keys are
            ignored (shapes are checked all the same).

        Raises
        ------
        ValueError
            Missing or unexpected keys (strict), or a shape that differs, naming the key and both shapes.
        TypeError
            ``state`` is not a mapping, or an entry is not an array of real numbers.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"load_state_dict: state must be a mapping of names to arrays, got {type(state).__name__}")
        if not isinstance(strict, (bool, np.bool_)):
            raise TypeError(f"load_state_dict: strict must be True or False, got {strict!r}")
        entries = self._state_entries("load_state_dict")
        keys = [key for key, _, _ in entries]
        if strict:
            missing = [key for key in keys if key not in state]
            unexpected = sorted(str(key) for key in set(state) - set(keys))
            if missing or unexpected:
                raise ValueError(f"load_state_dict: the state does not match the network: missing keys {missing}, "
                                 f"unexpected keys {unexpected} (strict=False loads the keys both have)")
        copies = []
        for key, arr, transposed in entries:
            if key not in state:
                continue
            try:
                value = np.asarray(state[key])
            except (TypeError, ValueError, RuntimeError) as exc:
                raise TypeError(f"load_state_dict: {key!r} is not an array: {exc}") from None
            want = arr.T.shape if transposed else arr.shape
            if value.shape != want:
                raise ValueError(f"load_state_dict: {key!r} has shape {value.shape} in the state but shape {want} in "
                                 f"the network")
            if value.dtype.kind not in ("iuf" if arr.dtype.kind == "f" else "iu"):
                raise TypeError(f"load_state_dict: {key!r} has dtype {value.dtype}, which does not load into the "
                                f"network's {arr.dtype}")
            copies.append((arr, value.T if transposed else value))
        for arr, value in copies:  # every check passed: now copy
            arr[...] = value

    def _state_entries(self, where):
        """``[(key, array, transposed)]``: the network's arrays in state-dict order, ``transposed`` when the
        state holds ``array.T`` (Dense's weight in PyTorch's layout)."""
        entries = []
        for i, layer in enumerate(self.layers):
            _layer_state(layer, f"{i}.", entries, where, i)
        return entries

    def summary(self, input_shape: tuple[int, ...], *,
                print_fn: Callable[[str], object] | None = print) -> str | None:
        """A table of each layer's output shape and parameter count, and the totals; infers lazy layers' sizes.

        Runs one forward pass of a zero sample of ``input_shape`` in evaluation mode (each layer's mode is put
        back afterwards, running statistics do not change); like ``forward``, it replaces the layers' caches.

        Parameters
        ----------
        input_shape : tuple of int
            One sample's shape, without the batch axis: ``(1, 28, 28)`` for MNIST images.
        print_fn : callable or None, default print
            Called with the table (Keras's ``summary`` prints it); None returns the table instead.

        Returns
        -------
        table : str or None
            The table when ``print_fn`` is None.
        """
        try:
            shape = tuple(_checks.positive_int(d, "input_shape") for d in input_shape)
        except TypeError:
            raise TypeError(f"summary: input_shape must be a tuple of positive ints (one sample's shape, without "
                            f"the batch axis), got {input_shape!r}") from None
        dtype = next((arr.dtype for _, _, arr in self.parameters()), None) or \
            next((np.dtype(layer.dtype) for layer in self.layers if hasattr(layer, "dtype")), np.dtype(np.float64))
        x = np.zeros((1, *shape), dtype)
        rows = [("input", f"(N, {', '.join(map(str, shape))})", "")]
        total = trainable = 0
        with eval_mode(self), blas_single_thread():
            for i, layer in enumerate(self.layers):
                try:
                    x = layer.forward(x)
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"summary: layer {i} ({layer!r}) refuses the output of the layer before it, "
                                     f"of shape (N, {', '.join(map(str, np.shape(x)[1:]))}): {exc}") from None
                params = layer.parameters() if _has_parameters(layer) else []
                count = sum(arr.size for _, _, arr in params)
                bufs = layer.buffers() if callable(getattr(layer, "buffers", None)) else []
                total += count + sum(arr.size for _, arr in bufs)
                trainable += count
                if callable(getattr(layer, "named_sublayers", None)):  # a block: its name, then its layers
                    rows.append((f"{i}: {type(layer).__name__}", f"(N, {', '.join(map(str, np.shape(x)[1:]))})",
                                 f"{count:,}"))
                    rows += [(f"  {name}: {sub!r}", "", f"{sum(a.size for _, _, a in sub.parameters()):,}")
                             for name, sub in layer.named_sublayers()]
                    continue
                rows.append((f"{i}: {layer!r}", f"(N, {', '.join(map(str, np.shape(x)[1:]))})", f"{count:,}"))
        head = ("layer", "output shape", "parameters")
        widths = [max(len(r[c]) for r in (head, *rows)) for c in range(3)]
        line = "-" * (sum(widths) + 4)
        fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"  # noqa: E731
        nbytes = sum(a.nbytes for _, a, _ in self._state_entries("summary"))
        text = "\n".join([line, fmt(head), line, *map(fmt, rows), line,
                          f"trainable parameters: {trainable:,}",
                          f"buffers (not trained): {total - trainable:,}",
                          f"total: {total:,} values, {nbytes:,} bytes",
                          line])
        if print_fn is None:
            return text
        print_fn(text)
        return None

    def __len__(self) -> int:
        return len(self.layers)

    @overload
    def __getitem__(self, i: SupportsIndex) -> Any: ...

    @overload
    def __getitem__(self, i: slice) -> list[Any]: ...

    def __getitem__(self, i: SupportsIndex | slice) -> Any:
        return self.layers[i]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.layers)

    def __repr__(self) -> str:
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Network(\n" + "\n".join(lines) + "\n)"
