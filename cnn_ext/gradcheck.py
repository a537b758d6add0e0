"""Central-difference gradient check for any layer or network that follows the layer protocol.

The model is copied and run in float64; the loss is differentiated numerically with respect to every parameter
entry (or a seeded random subset of them) and every input entry, and compared with what ``backward`` returns.

Strict by default (``rule="exact"``): the loss gradient is handed to ``backward`` as an
:class:`~cnn_ext.losses.ExactGradient`, and every parameter gradient must equal the numerical gradient of the
loss entry by entry: a gradient off by a constant factor (a batch mean for a sum) or on a single parameter
fails. ``rule="tutorial"`` checks the tutorial's rule instead (a plain ``dE_dY``): the gradients a layer's
:class:`~cnn_ext.layers.base.Gradients` dict lists in ``batch_means`` (Conv2D ``dK``/``dB``, Dense ``dB``) must
equal the numerical gradient divided by the batch size, all others the numerical gradient itself. The input
gradient ``dX`` is never averaged and must match under both.
"""
import copy
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from .losses import ExactGradient

__all__ = ["gradient_check", "GradientCheckError", "GradCheckReport"]

_RULES = ("exact", "tutorial")


class GradientCheckError(AssertionError):
    """Raised by :func:`gradient_check` when an analytic gradient disagrees with the numerical one."""

    def __init__(self, report: "GradCheckReport") -> None:
        super().__init__("gradient check failed:\n" + str(report))
        self.report = report


class GradCheckReport:
    """Result of :func:`gradient_check`.

    Attributes
    ----------
    results : list of dict
        One per checked array (each parameter, then ``"dX"``), with keys ``name``, ``grad_key``, ``entries``
        (how many were checked), ``max_abs_error``, ``max_rel_error`` (``|a - n| / max(|a|, |n|, atol/rtol)``),
        ``reduction`` (``"sum"`` or ``"mean"``: the batch reduction the rule requires of this gradient;
        ``"none"`` for dX) and ``passed``.
    passed : bool
        True when every array passed.
    """

    def __init__(self, results: List[Dict[str, Any]], rtol: float, atol: float) -> None:
        self.results = results
        self.rtol, self.atol = rtol, atol
        self.passed = all(r["passed"] for r in results)

    def __getitem__(self, name: str) -> Dict[str, Any]:
        for r in self.results:
            if r["name"] == name:
                return r
        raise KeyError(name)

    def __str__(self):
        rows = [f"{'array':<12} {'grad':<5} {'entries':>7} {'max abs err':>12} {'max rel err':>12} "
                f"{'batch':<6} ok"]
        for r in self.results:
            rows.append(f"{r['name']:<12} {r['grad_key']:<5} {r['entries']:>7} {r['max_abs_error']:>12.3e} "
                        f"{r['max_rel_error']:>12.3e} {r['reduction']:<6} {'yes' if r['passed'] else 'NO'}")
        rows.append(f"(rtol={self.rtol:g}, atol={self.atol:g}): {'passed' if self.passed else 'FAILED'}")
        return "\n".join(rows)

    __repr__ = __str__


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _float64_copy(model):
    """A deep copy of the model whose parameters are float64 (attributes named by ``parameters()``)."""
    model = copy.deepcopy(model)
    for layer in _layers(model):
        changed = False
        for name, _, p in _params(layer):
            if p.dtype != np.float64:
                if not hasattr(layer, name):
                    raise ValueError(f"gradient_check: {layer!r} keeps {name} elsewhere than in .{name}; "
                                     f"give a float64 model")
                setattr(layer, name, np.array(p, dtype=np.float64))
                changed = True
        if changed and hasattr(layer, "dtype"):
            layer.dtype = np.dtype(np.float64)
        if any(p.dtype != np.float64 for _, _, p in _params(layer)):
            raise ValueError(f"gradient_check: could not convert {layer!r} to float64; give a float64 model")
    return model


def _layers(model):
    return list(model.layers) if hasattr(model, "layers") else [model]


def _params(layer):
    return layer.parameters() if callable(getattr(layer, "parameters", None)) else []


def _forward(layers, x):
    for layer in layers:
        x = layer.forward(x)
    return x


def _backward(layers, dy, exact):
    """Per-layer grad dicts (in layer order) and the input gradient, every layer asked for its dX and given
    the rule's dE_dY (flagged exact or plain)."""
    grads = []
    for layer in reversed(layers):
        dy = np.asarray(dy, dtype=np.float64)
        g = layer.backward(dy.view(ExactGradient) if exact else dy)
        if "dX" not in g:
            raise ValueError(f"gradient_check: {layer!r}.backward returned no 'dX'")
        grads.append(g)
        dy = g["dX"]
    grads.reverse()  # built last layer first: back to the layers' order
    return grads, np.asarray(dy)


def _loss_fn(loss, seed):
    if callable(loss):
        return loss
    if loss == "sum_squares":
        def sum_squares(y):
            return 0.5 * float(np.vdot(y, y)), y.copy()
        return sum_squares
    if loss == "random_linear":
        weights = {}

        def random_linear(y):  # L = Σ r ⊙ y with a fixed seeded r: a gradient with no symmetry to hide behind
            r = weights.get(y.shape)
            if r is None:
                r = weights[y.shape] = np.random.default_rng(seed).standard_normal(y.shape)
            return float(np.vdot(r, y)), r.copy()
        return random_linear
    raise ValueError(f"loss must be 'sum_squares', 'random_linear' or a callable returning (loss, dE_dY), got {loss!r}")


def _entries(size, max_entries, rng):
    if max_entries is None or size <= max_entries:
        return np.arange(size)
    return np.sort(rng.choice(size, max_entries, replace=False))


def _numeric(array, entries, value, eps):
    """Central differences of ``value()`` with respect to array.flat[entries] (restored afterwards)."""
    flat = array.reshape(-1)  # a view: the model sees the perturbation
    if not np.shares_memory(flat, array):
        raise ValueError("gradient_check: parameter arrays must be contiguous to be perturbed in place")
    out = np.empty(len(entries))
    for j, i in enumerate(entries):
        old = flat[i]
        flat[i] = old + eps
        up = value()
        flat[i] = old - eps
        down = value()
        flat[i] = old
        out[j] = (up - down) / (2 * eps)
    return out


def _compare(analytic, numeric, rtol, atol):
    """(max abs error, max relative error, passed); the relative error's denominator never drops below
    atol / rtol, where the absolute tolerance takes over, so tiny entries do not dominate it."""
    diff = np.abs(analytic - numeric)
    floor = max(atol / rtol if rtol > 0 else atol, np.finfo(np.float64).tiny)
    rel = diff / np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), floor)
    ok = bool(np.all(diff <= atol + rtol * np.abs(numeric)))
    return (float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), ok)


# ----------------------------------------------------------------------------------------------
# the check
# ----------------------------------------------------------------------------------------------

def gradient_check(model: Any, x: ArrayLike, *,
                   loss: Union[str, Callable[[np.ndarray], Tuple[float, ArrayLike]]] = "sum_squares",
                   eps: float = 1e-6, rtol: float = 1e-5, atol: float = 1e-7, seed: int = 0,
                   max_entries: Optional[int] = None, rule: str = "exact",
                   raise_on_failure: bool = True) -> "GradCheckReport":
    """Compare a layer's or network's analytic gradients with float64 central differences.

    Parameters
    ----------
    model : layer or Network
        Anything with ``forward``/``backward`` (and ``parameters()`` when it has parameters), or an object whose
        ``.layers`` are such layers. It is deep-copied and converted to float64; the original is not touched.
    x : array_like
        A batch of inputs (converted to float64). Keep it away from kinks (ReLU at 0, ties in max pooling),
        where the derivative does not exist and the check may fail for a correct layer.
    loss : 'sum_squares', 'random_linear' or callable, default 'sum_squares'
        ``'sum_squares'``: ``L = ½ Σ y²``; ``'random_linear'``: ``L = Σ r ⊙ y`` with ``r ~ N(0, 1)`` drawn from
        ``seed``; a callable ``loss(y) -> (L, dE_dY)`` for anything else (e.g. softmax cross-entropy).
    eps : float, default 1e-6
        Step of the central differences.
    rtol, atol : float
        An array passes when ``|analytic - numeric| <= atol + rtol * |numeric|`` entry by entry.
    seed : int, default 0
        Seeds ``'random_linear'`` and the choice of entries when ``max_entries`` is set.
    max_entries : int, optional
        Check at most this many (randomly chosen) entries per array, to bound the cost on big layers.
    rule : 'exact' or 'tutorial', default 'exact'
        The gradient rule checked (see the module docstring): ``'exact'``, every parameter gradient is the
        gradient of the loss; ``'tutorial'``, the tutorial's batch means where its layers take them.
    raise_on_failure : bool, default True
        Raise :class:`GradientCheckError` (an ``AssertionError``) when an array fails; else just report it.

    Returns
    -------
    report : GradCheckReport
        ``report.passed`` and, per array, the maximum absolute and relative errors (``report["dX"]``,
        ``report["0.k"]`` for a network, ``report["k"]`` for a single layer).
    """
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
    for name, number in (("eps", eps), ("rtol", rtol), ("atol", atol)):
        if not (isinstance(number, (int, float, np.floating)) and not isinstance(number, bool) and number >= 0):
            raise ValueError(f"{name} must be a number >= 0, got {number!r}")
    if eps == 0:
        raise ValueError("eps must be > 0")
    if not np.isfinite(eps):  # an infinite step makes every central difference NaN: a report of NaN errors
        raise ValueError(f"eps must be finite, got {eps!r}")
    if max_entries is not None and (not isinstance(max_entries, (int, np.integer)) or max_entries < 1):
        raise ValueError(f"max_entries must be None or a positive int, got {max_entries!r}")
    is_network = hasattr(model, "layers")
    if not is_network and not all(callable(getattr(model, m, None)) for m in ("forward", "backward")):
        raise TypeError(f"model must be a cnn_ext Network or a layer (with forward and backward), got "
                        f"{type(model).__name__}")
    model = _float64_copy(model)
    layers = _layers(model)
    x = np.array(x, dtype=np.float64)  # our own copy: perturbed in place below
    if x.ndim == 0:
        raise ValueError("x must be a batch of inputs (at least 1-D), got a scalar")
    if x.size == 0:  # nothing to perturb; the batch-mean candidate would divide by N = 0
        raise ValueError(f"x must hold at least one input value, got shape {x.shape}")
    N = x.shape[0]
    loss_fn = _loss_fn(loss, seed)

    def value():
        return float(loss_fn(_forward(layers, x))[0])

    y = _forward(layers, x)
    _, dy = loss_fn(y)
    grads, dX = _backward(layers, dy, rule == "exact")
    rng = np.random.default_rng(seed)
    results = []
    for i, layer in enumerate(layers):
        for name, key, p in _params(layer):
            label = f"{i}.{name}" if is_network else name
            if key not in grads[i]:
                raise ValueError(f"gradient_check: {layer!r}.backward returned no {key!r} for {name}")
            analytic = np.asarray(grads[i][key], dtype=np.float64)
            if analytic.shape != p.shape:
                raise ValueError(f"gradient_check: {layer!r}: {key} has shape {analytic.shape} but {name} has "
                                 f"shape {p.shape}")
            entries = _entries(p.size, max_entries, rng)
            numeric = _numeric(p, entries, value, eps)
            a = analytic.reshape(-1)[entries]
            mean = rule == "tutorial" and key in getattr(grads[i], "batch_means", ())
            red = "mean" if mean else "sum"
            abs_err, rel_err, ok = _compare(a, numeric / N if mean else numeric, rtol, atol)
            results.append(dict(name=label, grad_key=key, entries=len(entries), max_abs_error=abs_err,
                                max_rel_error=rel_err, reduction=red, passed=ok))
    if dX.shape != x.shape:
        raise ValueError(f"gradient_check: the input gradient has shape {dX.shape} but x has shape {x.shape}")
    entries = _entries(x.size, max_entries, rng)
    abs_err, rel_err, ok = _compare(dX.reshape(-1)[entries], _numeric(x, entries, value, eps), rtol, atol)
    results.append(dict(name="dX", grad_key="dX", entries=len(entries), max_abs_error=abs_err,
                        max_rel_error=rel_err, reduction="none", passed=ok))
    report = GradCheckReport(results, rtol, atol)
    if raise_on_failure and not report.passed:
        raise GradientCheckError(report)
    return report
