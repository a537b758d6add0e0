"""Losses and the accuracy measure of the reference tutorial, plus a stable softmax cross-entropy.

- ``mse_loss(prediction, target)``: the tutorial's: returns the *gradient* ``2 (prediction - target) / size``;
- ``mse(prediction, target)``: the loss value ``mean((prediction - target)²)``, for reporting;
- ``softmax_cross_entropy(logits, labels)``: ``(loss, dE_dlogits)``, log-sum-exp stable, batch-averaged;
- ``get_current_accuracy(network, X_test, y_test)``: fraction of correctly classified samples, in [0, 1].

Gradients keep the prediction's float dtype (float32 in, float32 out).
"""
import numpy as np

from ._checks import as_float_array as _float

__all__ = ["mse_loss", "mse", "softmax_cross_entropy", "get_current_accuracy"]


def _pair(prediction, target):
    p = _float(prediction, "prediction")
    t = np.asarray(target)
    if t.dtype.kind not in "biuf":
        raise TypeError(f"target must hold real numbers, got dtype {t.dtype}")
    if p.shape != t.shape:
        raise ValueError(f"prediction has shape {p.shape} but target has shape {t.shape}")
    if p.size == 0:
        raise ValueError(f"prediction must not be empty (a mean over no elements is undefined), got shape {p.shape}")
    return p, t


def mse_loss(prediction, target):
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


def mse(prediction, target):
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


def softmax_cross_entropy(logits, labels):
    """Cross-entropy of softmax(logits) against the labels, and its gradient with respect to the logits.

    Parameters
    ----------
    logits : array_like, shape (N, K)
    labels : array_like, shape (N,) of integers in [0, K) or shape (N, K) one-hot (or class probabilities)

    Returns
    -------
    loss : float
        ``mean_n( logsumexp(logits[n]) - Σ_k t[n, k] logits[n, k] )`` (with ``Σ_k t[n, k] = 1``).
    dE_dlogits : ndarray, shape (N, K), the logits' float dtype
        ``(softmax(logits) - t) / N`` (averaged over the batch).
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
    return loss, p


def labels_of(y):
    """Integer class labels from integer labels (N,) or one-hot / scores (N, K)."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y
    if y.ndim == 2:
        return np.argmax(y, axis=1)
    raise ValueError(f"labels must be (N,) integers or (N, K) one-hot, got shape {y.shape}")


def get_current_accuracy(network, X_test, y_test, batch_size=256):
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
                             f"{type(y_test).__name__} of length {len(y_test)} for {len(X_test)} batches")
        pairs = zip(X_test, y_test)
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
        correct += int(np.count_nonzero(np.argmax(out, axis=1) == labels))
        total += labels.shape[0]
    if total == 0:
        raise ValueError("get_current_accuracy: no test samples (the accuracy of 0 samples is undefined)")
    return correct / total
