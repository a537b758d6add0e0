"""Callbacks of :func:`cnn_ext.fit`: hooks around epochs and batches, early stopping, checkpoints, the history.

``fit(..., callbacks=[...])`` calls, on every callback in list order::

    on_train_begin(logs)            once, before the first epoch
    on_epoch_begin(epoch, logs)     epoch = 1, 2, ...
    on_batch_end(batch, logs)       after each step: batch = 1, 2, ... within the epoch
    on_epoch_end(epoch, logs)       after the epoch's metrics (and validation); returning True stops training
    on_train_end(logs)              once, after the last epoch (also after an early stop)

Before ``on_train_begin``, ``fit`` sets each callback's ``network``, ``optimizer`` (None with
``learning_rate=``), ``history`` (the :class:`History` being filled) and ``is_root``. The logs: an epoch's are
its entries of the history (``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``time``); a batch's
are ``loss`` (this process's part of the batch under MPI), ``size`` (the samples of the whole batch) and ``lr``.

Under MPI (``fit(comm=)``) every rank calls every callback with the same logs, so a schedule changes the learning
rate on every rank and early stopping restores the same parameters everywhere; ``is_root`` is True on rank 0
only, and callbacks that write files (:class:`ModelCheckpoint`) write there only. Rank 0's stop decision is
every rank's.

The schedules of :mod:`cnn_ext.schedules` are callbacks too. A callback of your own subclasses
:class:`Callback` and overrides the hooks it needs.
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any

__all__ = ["Callback", "History", "EarlyStopping", "ModelCheckpoint"]

_PLOT_PIP = 'pip install matplotlib  (or: pip install "cnn_ext[plot]")'


class Callback:
    """Base class of fit's callbacks: every hook does nothing; override the ones you need.

    Attributes
    ----------
    network : Network
        The network ``fit`` trains (set by ``fit`` before ``on_train_begin``).
    optimizer : optimizer or None
    history : History
    is_root : bool
        False on the MPI ranks other than 0: write files only when it is True.
    """

    network: Any = None
    optimizer: Any = None
    history: Any = None
    is_root: bool = True
    _CONTEXT = ("network", "optimizer", "history", "is_root")

    def set_context(self, network: Any, optimizer: Any, history: History, is_root: bool) -> None:
        """Called by ``fit`` before ``on_train_begin``."""
        self.network, self.optimizer, self.history, self.is_root = network, optimizer, history, bool(is_root)

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Before epoch ``epoch`` (1-based)."""

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """After step ``batch`` (1-based within the epoch) updated the parameters."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> bool | None:
        """After epoch ``epoch``'s metrics; return True to stop training."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """After the last epoch."""


def _mode(mode, monitor):
    """'min' or 'max' for ``mode`` ('auto': 'max' for an accuracy, else 'min')."""
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _monitored(monitor, logs, who):
    """The monitored value of an epoch's logs; ``val_loss`` falls back to ``loss`` without validation data."""
    key = monitor if monitor in logs or monitor != "val_loss" else "loss"
    value = logs.get(key)
    if value is None:
        raise ValueError(f"{who}: monitor={monitor!r} is not among the epoch's logs "
                         f"{sorted(k for k, v in logs.items() if v is not None)}")
    return float(value)


class _Monitor(Callback):
    """A monitored value and its best so far (improvement: beyond ``min_delta`` in the mode's direction)."""

    def __init__(self, monitor: str, mode: str, min_delta: float) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a str, got {monitor!r}")
        from ._checks import real
        self.monitor = monitor
        self.mode = _mode(mode, monitor)
        self.min_delta = real(min_delta, "min_delta")
        self.best = math.inf if self.mode == "min" else -math.inf

    def _improved(self, value):
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(_Monitor):
    """Stop training once the monitored value has not improved for ``patience`` epochs.

    An epoch improves when its value is below ``best - min_delta`` (``mode="min"``) or above ``best + min_delta``
    ("max"); ``fit(early_stopping=patience, min_delta=, restore_best=)`` is this callback on ``val_loss``.

    Parameters
    ----------
    monitor : str, default "val_loss"
        An entry of the epoch's logs; ``"val_loss"`` falls back to ``"loss"`` without validation data.
    patience : int >= 1, default 5
    min_delta : float >= 0, default 0
    mode : {"auto", "min", "max"}, default "auto" ("max" when the name holds "acc")
    restore_best : bool, default True
        At the end of training copy the best epoch's parameters back into the network (in place).

    Attributes
    ----------
    best, best_epoch, stopped_epoch : the best value, its epoch (1-based), the epoch training stopped at (0: none)
    """

    _best_params: list[Any] | None  # the best epoch's parameters (copies), set from on_train_begin on

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0, mode: str = "auto",
                 restore_best: bool = True) -> None:
        from ._checks import positive_int
        super().__init__(monitor, mode, min_delta)
        self.patience = positive_int(patience, "patience")
        self.restore_best = bool(restore_best)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.stopped_epoch, self.wait, self._best_params, self._last = 0, 0, 0, None, 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> bool:
        value = _monitored(self.monitor, logs or {}, "EarlyStopping")
        self._last = epoch
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self._best_params = [p.copy() for _, _, p in self.network.parameters()]
            return False
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._best_params is not None and self.best_epoch != self._last:
            for (_, _, p), saved in zip(self.network.parameters(), self._best_params):
                p[...] = saved
        self._best_params = None


class ModelCheckpoint(_Monitor):
    """Save the network with :func:`cnn_ext.save` after every epoch, or only when the monitored value improves.

    Parameters
    ----------
    path : str or os.PathLike
        Formatted with the epoch and the epoch's logs: ``"ckpt_{epoch:02d}_{val_loss:.3f}.npz"``; ``.npz`` is
        appended when missing (as :func:`cnn_ext.save` does).
    monitor : str, default "val_loss"
        Used with ``save_best_only`` (``"val_loss"`` falls back to ``"loss"`` without validation data).
    save_best_only : bool, default False
    mode : {"auto", "min", "max"}, default "auto"
    min_delta : float >= 0, default 0

    Attributes
    ----------
    saved : list of str
        The files this process wrote, in order (nothing on MPI ranks other than 0).
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", min_delta: float = 0.0) -> None:
        try:
            self.path = os.fspath(path)
        except TypeError:
            raise TypeError(f"ModelCheckpoint: path must be a str or os.PathLike, got {type(path).__name__}") \
                from None
        super().__init__(monitor, mode, min_delta)
        self.save_best_only = bool(save_best_only)
        self.saved: list[str] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> bool:
        logs = logs or {}
        if self.save_best_only:
            value = _monitored(self.monitor, logs, "ModelCheckpoint")
            if not self._improved(value):
                return False
            self.best = value
        if self.is_root:  # under MPI every rank holds the same network: one file, from rank 0
            from .serialization import save
            try:
                path = self.path.format(epoch=epoch, **{k: v for k, v in logs.items() if v is not None})
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"ModelCheckpoint: cannot format path {self.path!r} with epoch and the logs "
                                 f"{sorted(logs)}: {exc!r}") from None
            self.saved.append(save(self.network, path))  # type: ignore[arg-type]  # a path in, its str out
        return False


class History(dict):
    """What :func:`cnn_ext.fit` returns: a dict of per-epoch lists, and ``plot()``.

    Keys: ``loss``, ``accuracy`` (entries None when the targets are not class labels), ``val_loss`` and
    ``val_accuracy`` (with validation data), ``lr`` (the optimizer's learning rate at the epoch's first step),
    ``time`` (seconds); plus ``epochs_run`` and ``best_epoch`` (ints) once training ends.
    """

    def plot(self, path: str | os.PathLike, *, title: str | None = None) -> str:
        """Draw the training and validation curves (loss; accuracy when there is one) into a PNG at ``path``.

        Parameters
        ----------
        path : str or os.PathLike
            The PNG file to write.
        title : str, optional
            A title above the panels.

        Returns
        -------
        path : str

        Raises
        ------
        ImportError
            Without matplotlib (imported here only), naming the extra that installs it.
        ValueError
            When the history holds no epoch.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError(f"History.plot needs matplotlib: {_PLOT_PIP}") from exc
        path = os.fspath(path)
        if not self.get("loss"):
            raise ValueError("History.plot: the history holds no epoch")
        panels = [("loss", "loss")]
        if any(a is not None for a in self.get("accuracy", [])):
            panels.append(("accuracy", "accuracy"))
        fig = Figure(figsize=(5.0 * len(panels), 3.6), layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (key, label) in zip(axes, panels):
            for name, style in ((key, "-o"), (f"val_{key}", "-s")):
                values = self.get(name)
                if values and any(v is not None for v in values):
                    epochs = [e for e, v in enumerate(values, start=1) if v is not None]
                    ax.plot(epochs, [v for v in values if v is not None], style, markersize=3,
                            label="validation" if name.startswith("val_") else "train")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend()
        if title:
            fig.suptitle(title)
        fig.savefig(path, format="png", dpi=100)
        return path

    def copy(self) -> History:
        """A deep copy, still a History."""
        return History(copy.deepcopy(dict(self)))

