"""Losses and the accuracy measure of the reference tutorial, plus a stable softmax cross-entropy.

- ``mse_loss(prediction, target)``: the tutorial's: returns the *gradient* ``2 (prediction - target) / size``
  as a plain array, so the layers apply the tutorial's gradient rule;
- ``mse(prediction, target)``: the loss value ``mean((prediction - target)²)``, for reporting;
- ``softmax_cross_entropy(logits, labels)``: ``(loss, dE_dlogits)``, log-sum-exp stable, batch-averaged, the
  gradient flagged :class:`ExactGradient`;
- ``exact(dE_dY)``: flags any loss gradient (e.g. ``exact(mse_loss(p, t))``, PyTorch's ``MSELoss()``) so that
  the layers return the exact gradient of that loss;
- ``get_current_accuracy(network, X_test, y_test)``: fraction of correctly classified samples, in [0, 1].

The gradient rule. A layer's parameter gradients follow from the ``dE_dY`` it is given:

- a plain array (the tutorial's ``mse_loss``, or any array of yours): the tutorial's rule, bit for bit:
  Conv2D ``dK``, ``dB`` and Dense ``dB`` are batch means, Dense ``dW`` is a batch sum;
- an :class:`ExactGradient` (``softmax_cross_entropy``, ``exact(...)``, and everything ``fit`` and
  ``gradient_check`` hand to ``backward``): every parameter gradient is the exact gradient of the loss, a sum
  over the batch of the per-sample chain rule, as PyTorch's autograd gives it.

``dX`` is the same under both rules. Gradients keep the prediction's float dtype (float32 in, float32 out).
"""
from typing import Any, Iterable, Tuple, Union

import numpy as np
from numpy.typing import ArrayLike

from ._checks import as_float_array as _float
from ._typing import FloatArray, SupportsForward

__all__ = ["ExactGradient", "exact", "mse_loss", "mse", "softmax_cross_entropy", "get_current_accuracy"]


class ExactGradient(np.ndarray):
    """An ndarray ``dE_dY`` that is the exact gradient of a loss: layers given one return exact parameter
    gradients (batch sums), not the tutorial's batch means. Create it with :func:`exact`."""

    def __array_wrap__(self, obj, context=None, return_scalar=False):
        # results of arithmetic on a flagged gradient are plain arrays, except ones the caller flags again:
        # 2 * dy is no longer "the gradient of the loss" that was flagged
        if return_scalar:
            return obj[()]
        return np.asarray(obj)


def exact(dE_dY: ArrayLike) -> ExactGradient:
    """``dE_dY`` (the gradient of a loss with respect to a network's output) flagged as exact: a view, no copy.

    ``network.backward(exact(dE_dY))`` then gives every parameter the exact gradient of that loss (PyTorch's
    numbers): e.g. ``exact(mse_loss(p, t))`` for ``torch.nn.MSELoss()`` (mean reduction).
    """
    if isinstance(dE_dY, ExactGradient):
        return dE_dY
    arr = np.asarray(dE_dY)
    if arr.dtype.kind not in "biuf":
        what = "complex" if arr.dtype.kind == "c" else str(arr.dtype)
        raise TypeError(f"exact: dE_dY must hold real numbers, got dtype {what}")
    return arr.view(ExactGradient)


def is_exact(dE_dY: object) -> bool:
    """Whether ``dE_dY`` is flagged as an exact loss gradient."""
    return isinstance(dE_dY, ExactGradient)


def _pair(prediction, target):
    p = _float(prediction, "prediction")
    t = np.asarray(target)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"target must hold real numbers, got dtype {t.dtype}")
    if p.shape != t.shape:
        hint = ""
        if t.ndim == 1 and p.ndim == 2 and t.shape[0] == p.shape[0]:
            hint = (f"; target looks like class labels: one-hot encode them first, "
                    f"cnn_ext.datasets.one_hot(target, {p.shape[1]})")
        raise ValueError(f"prediction has shape {p.shape} but target has shape {t.shape}{hint}")
    if p.size == 0:
        raise ValueError(f"prediction must not be empty (a mean over no elements is undefined), got shape {p.shape}")
    return p, t


def mse_loss(prediction: ArrayLike, target: ArrayLike) -> FloatArray:
    """Gradient of the mean squared error, as the tutorial's ``mse_loss`` returns it.

    Returns
    -------
    dE_dY : ndarray, same shape and float dtype as ``prediction``
        ``2 (prediction - target) / prediction.size``.
    """
    p, t = _pair(prediction, target)
    d = np.subtract(p, t, dtype=p.dtype, casting="same_kind")
    d *= p.dtype.type(2.0 / p.size)
    return d


def mse(prediction: ArrayLike, target: ArrayLike) -> float:
    """Mean squared error ``mean((prediction - target)²)`` as a Python float."""
    p, t = _pair(prediction, target)
    d = np.subtract(p, t, dtype=np.float64)
    return float(np.vdot(d, d) / d.size)


def whole_numbers(t):
    """Whether a real array holds whole numbers only (integer and bool dtypes always do): labels of shape (N,)
    are then class indices."""
    return t.dtype.kind != "f" or bool(np.all(t == np.round(t)))


def class_targets(labels, N, K):
    """One-hot (or probability) targets (N, K) from integer labels (N,) or from an (N, K) array."""
    t = np.asarray(labels)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"labels must be integers or one-hot numbers, got dtype {t.dtype}")
    if t.ndim == 1:
        if t.shape[0] != N:
            raise ValueError(f"labels has {t.shape[0]} entries (shape {t.shape}) but logits has {N} rows")
        if not whole_numbers(t):
            raise ValueError("labels of shape (N,) must be integer class indices")
        idx = t.astype(np.intp)
        if N and (idx.min() < 0 or idx.max() >= K):
            raise ValueError(f"labels must be in [0, {K - 1}] for {K} classes, got values in "
                             f"[{idx.min()}, {idx.max()}]")
        return idx, None
    if t.shape != (N, K):
        raise ValueError(f"labels must have shape ({N},) or ({N}, {K}) like the logits, got {t.shape}")
    return None, t


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> Tuple[float, ExactGradient]:
    """Cross-entropy of softmax(logits) against the labels, and its gradient with respect to the logits.

    Parameters
    ----------
    logits : array_like, shape (N, K)
    labels : array_like, shape (N,) of integers in [0, K) or shape (N, K) one-hot (or class probabilities)

    Returns
    -------
    loss : float
        ``mean_n( logsumexp(logits[n]) - Σ_k t[n, k] logits[n, k] )`` (with ``Σ_k t[n, k] = 1``).
    dE_dlogits : ExactGradient, shape (N, K), the logits' float dtype
        ``(softmax(logits) - t) / N``: the gradient of the mean loss, flagged exact, so ``backward`` gives
        every parameter the exact gradient of this loss (see the module docstring).
    """
    z = _float(logits, "logits")
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"logits must be 2-D (N, K) and non-empty, got shape {z.shape}")
    N, K = z.shape
    idx, t = class_targets(labels, N, K)
    shifted = z - z.max(axis=1, keepdims=True)       # <= 0: exp cannot overflow
    p = np.exp(shifted)
    sum_p = p.sum(axis=1, keepdims=True)
    log_z = np.log(sum_p)                            # logsumexp of the shifted logits
    p /= sum_p
    if idx is not None:
        rows = np.arange(N)
        loss = float(np.mean(log_z[:, 0] - shifted[rows, idx], dtype=np.float64))
        p[rows, idx] -= 1
    else:
        t64 = t.astype(np.float64, copy=False)
        loss = float(np.mean(log_z[:, 0] * t64.sum(axis=1) - (t64 * shifted).sum(axis=1)))
        p -= t.astype(p.dtype, copy=False)
    p /= N
    return loss, p.view(ExactGradient)


def labels_of(y):
    """Integer class labels from integer labels (N,) or one-hot / scores (N, K)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y
    if y.ndim == 2:
        return np.argmax(y, axis=1)
    raise ValueError(f"labels must be (N,) integers or (N, K) one-hot, got shape {y.shape}")


def get_current_accuracy(network: SupportsForward, X_test: Union[ArrayLike, list, tuple],
                         y_test: Union[ArrayLike, list, tuple], batch_size: int = 256) -> float:
    """Fraction of samples whose largest output is the true class, in [0, 1].

    Parameters
    ----------
    network : object with ``forward(x)`` returning (N, K) scores
    X_test, y_test :
        either the tutorial's form, two lists (or tuples) of batches, ``X_test[i]`` an input batch and
        ``y_test[i]`` its one-hot targets (N_i, K) or integer labels (N_i,);
        or two arrays, inputs (N, ...) and labels (N,) or one-hot (N, K), evaluated in chunks of
        ``batch_size``.

    Returns
    -------
    accuracy : float in [0, 1] (multiply by 100 for a percentage)

    Raises
    ------
    ValueError
        When there are no samples at all (the accuracy of nothing is undefined, not 0 or 1); empty batches among
        others count for nothing.
    """
    if isinstance(X_test, (list, tuple)):
        if not isinstance(y_test, (list, tuple)) or len(X_test) != len(y_test):
            raise ValueError("X_test is a list of batches: y_test must be a list of as many batches, got "
                             f"{type(y_test).__name__} of shape {np.shape(y_test)} for {len(X_test)} batches")
        pairs: Iterable[Tuple[Any, Any]] = zip(X_test, y_test)
    else:
        X_all, y_all = np.asarray(X_test), np.asarray(y_test)
        if X_all.ndim == 0 or y_all.ndim == 0 or X_all.shape[0] != y_all.shape[0]:
            raise ValueError(f"X_test has shape {X_all.shape} but y_test has shape {y_all.shape}: "
                             "need the same first axis")
        pairs = ((X_all[i:i + batch_size], y_all[i:i + batch_size]) for i in range(0, X_all.shape[0], batch_size))
    correct = total = 0
    for x, y in pairs:
        labels = labels_of(y)
        out = np.asarray(network.forward(x))
        if out.ndim != 2 or out.shape[0] != labels.shape[0]:
            raise ValueError(f"network output has shape {out.shape} for {labels.shape[0]} labels: need (N, K)")
        class_targets(labels, *out.shape)  # labels outside [0, K) raise, as in the losses
        correct += int(np.count_nonzero(np.argmax(out, axis=1) == labels))
        total += labels.shape[0]
    if total == 0:
        raise ValueError("get_current_accuracy: no test samples (the accuracy of 0 samples is undefined)")
    return correct / total
