"""A small training loop: seeded shuffling, mini-batches, an optimiser or the tutorial's SGD, per-epoch
metrics, validation, early stopping, callbacks (:mod:`cnn_ext.callbacks`, :mod:`cnn_ext.schedules`) and a tqdm
progress bar when tqdm is installed; :func:`evaluate` measures a trained network.

    history = fit(network, X_train, y_train, epochs=5, batch_size=64, optimizer=Adam(1e-3),
                  validation_data=(X_test, y_test), early_stopping=2, seed=0)
    history.plot("training.png")
    test_loss, test_accuracy = evaluate(network, X_test, y_test)

Modes, as PyTorch users expect: ``fit`` trains in training mode (``network.train()``), computes the validation
metrics in evaluation mode (``network.eval()``) and leaves the network in evaluation mode; :func:`evaluate`
runs in evaluation mode and puts back the mode it found.

Batches are index permutations: each step gathers its samples with one fancy index (``X[idx]``), so an epoch
never copies the whole shuffled data set.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _checks
from .callbacks import Callback, History
from .network import eval_mode
from .losses import class_targets, exact, labels_of, mse, mse_loss, softmax_cross_entropy, whole_numbers
from .schedules import LRScheduler

if TYPE_CHECKING:
    from ._typing import LossFunction, SupportsStep
    from .network import Network

DEFAULT_LOSS = "softmax_cross_entropy"

__all__ = ["fit", "evaluate"]


def _one_hot_like(prediction, y):
    y = np.asarray(y)
    if y.ndim == 1 and prediction.ndim == 2:
        # the labels checked as softmax_cross_entropy checks them: a negative label would otherwise index from the
        # end (silently the last class), a label >= K raise a bare IndexError, and 1.5 be truncated to 1
        idx, _ = class_targets(y, *prediction.shape)
        t = np.zeros(prediction.shape, dtype=prediction.dtype)
        t[np.arange(y.shape[0]), idx] = 1
        return t
    return y


def _mse_pair(prediction, y):
    t = _one_hot_like(prediction, y)
    return mse(prediction, t), mse_loss(prediction, t)


_LOSSES = {"softmax_cross_entropy": softmax_cross_entropy, "mse": _mse_pair}


def loss_function(loss: str | LossFunction) -> LossFunction:
    if callable(loss):
        return loss
    try:
        return _LOSSES[loss]
    except (KeyError, TypeError):
        raise ValueError(f"loss must be one of {sorted(_LOSSES)} or a callable (prediction, y) -> (loss, dE_dY), "
                         f"got {loss!r}") from None


def _correct(prediction, y):
    """Number of rows whose argmax is the label (labels (N,) or one-hot (N, K)); None when not a classification."""
    y = np.asarray(y)
    # whole-number float labels are class indices too, as the losses take them
    labels = y.ndim == 1 and y.dtype.kind in "iuf" and whole_numbers(y)
    if prediction.ndim != 2 or not (labels or y.shape == prediction.shape):
        return None
    return int(np.count_nonzero(np.argmax(prediction, axis=1) == labels_of(y)))


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)


def _evaluate(network, X, y, loss_fn, batch_size):
    """(mean loss, accuracy or None) over X in chunks, weighting each chunk by its size."""
    total_loss, correct, n = 0.0, 0, X.shape[0]
    for i in range(0, n, batch_size):
        pred = network.forward(X[i:i + batch_size])
        yb = y[i:i + batch_size]
        total_loss += float(loss_fn(pred, yb)[0]) * len(yb)
        c = _correct(pred, yb)
        correct = None if c is None or correct is None else correct + c
    return total_loss / n, (None if correct is None else correct / n)


def _epoch_logs(history):
    """An epoch's logs: the last entry of each per-epoch list of the history."""
    return {k: v[-1] for k, v in history.items() if isinstance(v, list) and v}


def _checked_callbacks(callbacks: Callback | Iterable[Callback] | None) -> list[Callback]:
    """The callbacks as a list; TypeError naming one that is not a Callback."""
    if callbacks is None:
        return []
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    try:
        callbacks = list(callbacks)
    except TypeError:
        raise TypeError(f"callbacks must be a list of Callback objects, got {type(callbacks).__name__}") from None
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}] must be a cnn_ext.callbacks.Callback (subclass it for your own), got "
                            f"{type(cb).__name__}")
    return callbacks


def _set_mode(network, training):
    """``network.train(training)`` when the network has modes (anything with ``.train``)."""
    if callable(getattr(network, "train", None)):
        network.train(training)


def evaluate(network: Network, x: ArrayLike, y: ArrayLike, *,
             loss: str | Callable[[NDArray, NDArray], tuple[float, NDArray]] = "softmax_cross_entropy",
             batch_size: int = 256) -> tuple[float, float | None]:
    """The mean loss and the accuracy of ``network`` on ``(x, y)``, in evaluation mode.

    Parameters
    ----------
    network : Network
    x : ndarray, shape (N, ...)
    y : ndarray, shape (N,) integer labels or (N, K) targets
    loss : 'softmax_cross_entropy', 'mse' or callable, default 'softmax_cross_entropy'
        As in :func:`fit`.
    batch_size : int, default 256
        Samples per forward pass (bounded memory); the result does not depend on it beyond rounding.

    Returns
    -------
    loss : float
        The loss averaged over the samples (each batch's mean loss weighted by its size).
    accuracy : float or None
        The fraction of rows whose argmax is the label (None when ``y`` holds no class labels).

    Notes
    -----
    The network runs in evaluation mode (``network.eval()``: Dropout off, BatchNorm on its running statistics)
    and every layer gets back the mode it had. Like ``forward``, it replaces the layers' caches.
    """
    batch_size = _checks.positive_int(batch_size, "batch_size")
    loss_fn = loss_function(loss)
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"evaluate: x has shape {x.shape} and y has shape {y.shape}: need the same, non-zero "
                         f"first axis")
    with eval_mode(network):
        return _evaluate(network, x, y, loss_fn, batch_size)


def _validation_split(X, y, validation_split):
    """(X_train, y_train, X_val, y_val): the last ``validation_split`` of the samples held out (views, no copy)."""
    split = _checks.real(validation_split, "validation_split", strict=True, maximum=1.0)
    n = X.shape[0]
    n_val = int(n * split)
    if n_val < 1 or n_val >= n:
        raise ValueError(f"validation_split={split} of {n} samples leaves {n_val} for validation and {n - n_val} "
                         f"for training: each needs at least one")
    return X[:n - n_val], y[:n - n_val], X[n - n_val:], y[n - n_val:]


def fit(network: Network, X: ArrayLike, y: ArrayLike, *, epochs: int, batch_size: int = 32,
        loss: str | LossFunction | None = None, optimizer: SupportsStep | None = None,
        learning_rate: float | None = None, seed: int | np.random.Generator | None = None, shuffle: bool = True,
        validation_data: tuple[ArrayLike, ArrayLike] | None = None, early_stopping: int | None = None,
        min_delta: float = 0.0, restore_best: bool = True, on_epoch_end: Callable[[int, History], object] | None = None,
        progress: bool = True, verbose: bool = True, comm: Any = None, validation_split: float | None = None,
        callbacks: Callback | Iterable[Callback] | None = None,
        augment: Callable[[NDArray, np.random.Generator], NDArray] | None = None) -> History:
    """Train ``network`` on ``(X, y)`` with mini-batches.

    Parameters
    ----------
    network : Network
    X : ndarray, shape (N, ...)
    y : ndarray, shape (N,) integer labels or (N, K) targets
    epochs : int
    batch_size : int, default 32
        The last batch of an epoch may be smaller.
    loss : 'softmax_cross_entropy', 'mse' or callable, default None ('softmax_cross_entropy', said in a line
        printed to stderr when ``verbose``)
        A callable takes ``(prediction, y_batch)`` and returns ``(loss_value, dE_dY)``, ``dE_dY`` the gradient of
        ``loss_value`` with respect to the prediction. ``'mse'`` is ``mean((prediction - target)²)`` (PyTorch's
        ``MSELoss()``) and accepts integer labels (one-hot encoded for it).
        Whatever the loss, ``fit`` passes its gradient to ``backward`` as an
        :class:`~cnn_ext.losses.ExactGradient`: every parameter gets the exact gradient of that loss (PyTorch's
        numbers), never the tutorial's batch means.
    optimizer : object with ``step(network, grads)``, optional
        E.g. :class:`cnn_ext.optim.Adam`; give either this or ``learning_rate``.
    learning_rate : float, optional
        Plain SGD ``p -= learning_rate * gradient`` through ``network.update(learning_rate, grads)``, on the
        exact gradient (``SGD(learning_rate)`` gives the same numbers).
    seed : int or numpy.random.Generator, optional
        Seeds the per-epoch shuffling (the same seed gives the same batches). A Generator is used as it is and
        continues its stream: to resume a shuffled run bit for bit, save ``rng.bit_generator.state`` with the
        network and ``optimizer.state_dict()``, and pass a Generator restored to it.
    shuffle : bool, default True
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``), in evaluation mode.
    validation_split : float in (0, 1), optional
        Hold out the last ``int(N * validation_split)`` samples of ``(X, y)`` (before any shuffling) as the
        validation data, as Keras does; not with ``validation_data``.
    early_stopping : int, optional
        Patience: stop after this many epochs without an improvement of more than ``min_delta`` in
        ``val_loss`` (or the training loss without validation data).
    restore_best : bool, default True
        With early stopping, copy the best epoch's parameters back into the network (in place) at the end.
    on_epoch_end : callable, optional
        Called as ``on_epoch_end(epoch, history)`` after each epoch (1-based); returning True stops training
        (e.g. once a target accuracy is reached).
    progress : bool, default True
        A tqdm bar per epoch when tqdm is installed.
    verbose : bool, default True
        Print one summary line per epoch when there is no progress bar.
    comm : mpi4py communicator, optional
        Data-parallel training over its ranks (:mod:`cnn_ext.distributed`): ``batch_size`` samples per rank and
        step, the same steps as one process with ``batch_size * comm.Get_size()``; only rank 0 prints and calls
        ``on_epoch_end``; every rank calls the ``callbacks`` (their ``is_root`` is True on rank 0 only).
    callbacks : list of cnn_ext.callbacks.Callback, optional
        Hooks called around epochs and batches (:mod:`cnn_ext.callbacks`): early stopping, checkpoints, the
        schedules of :mod:`cnn_ext.schedules` (which must drive ``optimizer``), your own. An ``on_epoch_end``
        returning True stops training.
    augment : callable, optional
        Called as ``augment(x_batch, rng)`` on every training batch, never on the validation data; it returns
        the batch to train on, of the same shape (:mod:`cnn_ext.augment`: random shifts and flips). ``rng`` is a
        Generator seeded from ``seed``, apart from the shuffling's, so the batches stay those of the same seed.

    Raises
    ------
    FloatingPointError
        When the loss of a batch is NaN or infinite: the message names the epoch and the step, and the
        parameters are those from before that step (no backward or update ran on it).

    Returns
    -------
    history : cnn_ext.callbacks.History
        A dict of lists with one entry per epoch: ``loss``, ``accuracy`` (None entries when the targets are not
        class labels), ``val_loss``, ``val_accuracy`` (when validation data is given), ``lr`` (the optimizer's
        ``lr`` at the epoch's first step, or ``learning_rate``; None for an optimizer without ``lr``), ``time``
        (seconds); plus ``epochs_run`` and ``best_epoch`` (1-based, by the monitored loss).
        ``history.plot(path)`` draws the curves into a PNG.

    Notes
    -----
    Modes, as in PyTorch: the epochs' steps run in training mode (``network.train()``), the validation in
    evaluation mode (``network.eval()``), and ``fit`` returns (or raises) with the network in evaluation mode.
    """
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    if (optimizer is None) == (learning_rate is None):
        raise ValueError("give exactly one of optimizer (e.g. Adam()) or learning_rate (plain SGD)")
    if optimizer is not None and not callable(getattr(optimizer, "step", None)):
        raise TypeError(f"optimizer must have a step(network, grads) method, got {type(optimizer).__name__}")
    if learning_rate is not None:  # checked now, not at the first update after a whole forward and backward
        learning_rate = _checks.learning_rate(learning_rate, None, None, None, call="fit")
    if early_stopping is not None:
        early_stopping = _checks.positive_int(early_stopping, "early_stopping")
    if loss is None:
        loss = DEFAULT_LOSS
        if verbose:
            print(f"fit: loss='{DEFAULT_LOSS}' (the default; pass loss='mse' for the tutorial's MSE)",
                  file=sys.stderr, flush=True)
    loss_fn = loss_function(loss)
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim == 0 or y.ndim == 0 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(f"X has shape {X.shape} and y has shape {y.shape}: need the same, non-zero first axis")
    callbacks = _checked_callbacks(callbacks)
    if augment is not None and (not callable(augment) or isinstance(augment, type)):
        got = f"the class {augment.__name__} (build one: {augment.__name__}(...))" if isinstance(augment, type) \
            else type(augment).__name__
        raise TypeError(f"augment must be callable as augment(x_batch, rng), got {got}")
    for i, cb in enumerate(callbacks):
        if isinstance(cb, LRScheduler) and cb.optimizer is not optimizer:
            raise ValueError(f"callbacks[{i}] ({type(cb).__name__}) schedules another optimizer than fit's "
                             f"(optimizer={optimizer!r}); build it on the optimizer passed to fit")
    if validation_split is not None:
        if validation_data is not None:
            raise ValueError("give validation_data or validation_split, not both")
        X, y, X_held, y_held = _validation_split(X, y, validation_split)
        validation_data = (X_held, y_held)
    X_val: NDArray | None
    y_val: NDArray | None
    if validation_data is not None:
        try:
            X_val, y_val = (np.asarray(a) for a in validation_data)
        except (TypeError, ValueError):
            raise ValueError("validation_data must be a pair (X_val, y_val)") from None
        if X_val.ndim == 0 or y_val.ndim == 0 or X_val.shape[0] != y_val.shape[0] or X_val.shape[0] == 0:
            raise ValueError(f"validation_data has shapes {X_val.shape} and {y_val.shape}: need the same, non-zero "
                             f"first axis")
    else:
        X_val = y_val = None

    def train(part):
        return _train(network, X, y, epochs, batch_size, loss_fn, optimizer, learning_rate, seed, shuffle,
                      validation_data, X_val, y_val, early_stopping, min_delta, restore_best, on_epoch_end,
                      progress, verbose, part, callbacks, augment)

    try:
        if comm is None:
            return train(None)
        from .distributed import _fit
        return _fit(comm, train, network, X, y, loss_fn)
    finally:
        _set_mode(network, False)


def _train(network, X, y, epochs, batch_size, loss_fn, optimizer, learning_rate, seed, shuffle, validation_data,
           X_val, y_val, early_stopping, min_delta, restore_best, on_epoch_end, progress, verbose, part, callbacks,
           augment):
    """fit's loop; ``part`` (cnn_ext.distributed) is this rank's share of the work, None in one process."""
    root = part is None or part.is_root
    step = batch_size if part is None else batch_size * part.size  # samples per (global) batch
    rng = np.random.default_rng(seed)
    aug_rng = None if augment is None else _augment_rng(rng, part)
    N = X.shape[0]
    n_batches = -(-N // step)
    history = History(loss=[], accuracy=[], time=[])
    if validation_data is not None:
        history["val_loss"], history["val_accuracy"] = [], []
    history["lr"] = []
    monitor = "val_loss" if validation_data is not None else "loss"
    best, best_epoch, best_params, waited = np.inf, 0, None, 0
    for cb in callbacks:
        cb.set_context(network, optimizer, history, root)
    for cb in callbacks:
        cb.on_train_begin({})

    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        _set_mode(network, True)
        for cb in callbacks:
            cb.on_epoch_begin(epoch, {})
        history["lr"].append(learning_rate if optimizer is None else getattr(optimizer, "lr", None))
        order = rng.permutation(N) if shuffle else np.arange(N)
        bar = _progress(n_batches, f"epoch {epoch}/{epochs}", progress and root)
        total_loss, correct, seen = 0.0, 0, 0
        for b in range(n_batches):
            idx = order[b * step:(b + 1) * step]
            n_total = len(idx)
            if part is not None:
                idx = part.local(idx)
            xb, yb = X[idx], y[idx]
            if augment is not None:
                xb = _augmented(augment, xb, aug_rng)
            if part is None:
                pred = network.forward(xb)
                value, dE_dY = loss_fn(pred, yb)
            else:
                pred, value, dE_dY = part.loss(network, loss_fn, xb, yb)
            if not math.isfinite(float(value)):
                if bar is not None:
                    bar.close()
                raise FloatingPointError(
                    f"fit: the loss is {float(value)} at epoch {epoch}, step {b + 1} of {n_batches}; training stopped "
                    f"and the parameters are those from before this step (a learning rate too large? NaN or inf in "
                    f"the inputs?)")
            grads = network.backward(exact(dE_dY))
            if part is not None:
                grads = part.reduce(grads, len(xb), n_total)
            lr = learning_rate if optimizer is None else getattr(optimizer, "lr", None)
            if optimizer is not None:
                optimizer.step(network, grads)
            else:
                network.update(learning_rate, grads)
            for cb in callbacks:
                cb.on_batch_end(b + 1, {"loss": float(value), "size": n_total, "lr": lr})
            total_loss += float(value) * len(idx)
            seen += len(idx)
            c = _correct(pred, yb)
            correct = None if c is None or correct is None else correct + c
            if bar is not None:
                bar.update(1)
                if b % 20 == 0 or b == n_batches - 1:
                    bar.set_postfix(loss=f"{total_loss / max(seen, 1):.4f}")
        if part is not None:
            total_loss, correct = part.totals(total_loss, correct)
        history["loss"].append(total_loss / N)
        history["accuracy"].append(None if correct is None else correct / N)
        if validation_data is not None:
            _set_mode(network, False)
            if part is None:
                val_loss, val_acc = _evaluate(network, X_val, y_val, loss_fn, max(batch_size, 256))
            else:
                val_loss, val_acc = part.evaluate(_evaluate, network, X_val, y_val, loss_fn, max(batch_size, 256))
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
        history["time"].append(time.perf_counter() - start)
        summary = _summary(history)
        if bar is not None:
            bar.set_postfix_str(summary)
            bar.close()
        elif verbose and root:
            print(f"epoch {epoch}/{epochs}: {summary}", flush=True)

        current = history[monitor][-1]
        if current < best - min_delta:
            best, best_epoch, waited = current, epoch, 0
            if early_stopping is not None and restore_best:
                best_params = [p.copy() for _, _, p in network.parameters()]
        else:
            waited += 1
        stop = early_stopping is not None and waited >= early_stopping
        if on_epoch_end is not None and root and on_epoch_end(epoch, history):
            stop = True
        logs = _epoch_logs(history)
        for cb in callbacks:  # every one is called, even after one asked to stop
            if cb.on_epoch_end(epoch, dict(logs)):
                stop = True
        if part is not None:
            stop = part.decide(stop)
        if stop:
            break
    if best_params is not None and best_epoch != len(history["loss"]):
        for (_, _, p), saved in zip(network.parameters(), best_params):
            p[...] = saved
    history["epochs_run"] = len(history["loss"])
    history["best_epoch"] = best_epoch
    for cb in callbacks:
        cb.on_train_end(_epoch_logs(history))
    return history


def _augment_rng(rng, part):
    """A stream of its own (a spawned child, one per rank): the shuffles stay those of the same seed."""
    n, rank = (1, 0) if part is None else (part.size, part.rank)
    try:
        children = rng.bit_generator.seed_seq.spawn(n)
    except (AttributeError, TypeError):  # a bit generator without a seed sequence to spawn from
        children = np.random.SeedSequence(rng.bit_generator.random_raw(2).tolist()).spawn(n)
    return np.random.default_rng(children[rank])


def _augmented(augment, xb, rng):
    out = np.asarray(augment(xb, rng))
    if out.shape != xb.shape:
        raise ValueError(f"augment returned shape {out.shape} for a batch of shape {xb.shape}: it must keep the shape")
    return out


def _summary(history):
    parts = [f"loss {history['loss'][-1]:.4f}"]
    if history["accuracy"][-1] is not None:
        parts.append(f"acc {100 * history['accuracy'][-1]:.2f}%")
    if "val_loss" in history:
        parts.append(f"val_loss {history['val_loss'][-1]:.4f}")
        if history["val_accuracy"][-1] is not None:
            parts.append(f"val_acc {100 * history['val_accuracy'][-1]:.2f}%")
    parts.append(f"{history['time'][-1]:.1f}s")
    return ", ".join(parts)
