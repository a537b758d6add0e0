"""Learning-rate schedules: StepLR, CosineAnnealingLR, OneCycleLR and ReduceLROnPlateau, with PyTorch's formulas.

A schedule owns its optimizer's ``lr`` (and, for OneCycleLR, its momentum or first beta): it sets them when built
and at every :meth:`~LRScheduler.step`, from the closed form of PyTorch's ``torch.optim.lr_scheduler`` of the same
name (PyTorch computes some of them recursively; the two agree to rounding)::

    opt = SGD(0.1, momentum=0.9)
    sched = CosineAnnealingLR(opt, T_max=10)
    for epoch in range(10):
        ...                      # the epoch's steps use opt.lr
        sched.step()

Every schedule is also a :class:`cnn_ext.callbacks.Callback`: ``fit(..., optimizer=opt, callbacks=[sched])``
steps it after every epoch (``interval = "epoch"``: StepLR, CosineAnnealingLR, ReduceLROnPlateau, which reads
the monitored value from the epoch's logs) or after every batch (``interval = "batch"``: OneCycleLR).
``state_dict()`` / ``load_state_dict()`` save and restore a schedule's position, as PyTorch's do.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from . import _checks
from .callbacks import Callback

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR", "ReduceLROnPlateau"]


class LRScheduler(Callback):
    """Base class: ``lr = self._lr(last_epoch)`` after each ``step()``.

    Parameters
    ----------
    optimizer : Optimizer
        Any object with a float ``lr`` attribute (:class:`cnn_ext.optim.SGD`, :class:`~cnn_ext.optim.Adam`, ...).
        Its ``lr`` when the schedule is built is the schedule's ``base_lr``.

    Attributes
    ----------
    last_epoch : int
        Number of ``step()`` calls so far (PyTorch's name; it counts batches for a per-batch schedule).
    base_lr : float
    interval : {"epoch", "batch"}
        When ``fit`` steps the schedule.
    """

    interval = "epoch"

    def __init__(self, optimizer: Any) -> None:
        lr = getattr(optimizer, "lr", None)
        if lr is None or not _checks.is_real(lr):
            raise TypeError(f"{type(self).__name__}: optimizer must have a real lr attribute (an SGD, Adam, ...), "
                            f"got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(lr)
        self.last_epoch = 0

    def _start(self) -> None:
        """PyTorch's initial step: the optimizer gets the schedule's learning rate at step 0."""
        self.optimizer.lr = self._lr(0)

    def _lr(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one epoch (one batch for a per-batch schedule) and set the optimizer's lr."""
        lr = self._lr(self.last_epoch + 1)  # computed first: a refused step changes nothing
        self.last_epoch += 1
        self.optimizer.lr = lr

    def get_last_lr(self) -> float:
        """The learning rate the schedule set last."""
        return float(self.optimizer.lr)

    def state_dict(self) -> dict:
        """The schedule's position and settings (everything but the optimizer), as PyTorch's state_dict."""
        state = {k: v for k, v in self.__dict__.items() if k not in self._CONTEXT}
        state["scheduler"] = type(self).__name__
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict`'s result (of a schedule of the same class); sets the optimizer's lr too.

        Raises ``ValueError`` for another class's state or missing entries, before anything changes.
        """
        name = type(self).__name__
        if not isinstance(state_dict, dict) or state_dict.get("scheduler") != name:
            got = state_dict.get("scheduler") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"{name}.load_state_dict: expected the state_dict of a {name}, got {got!r}")
        missing = set(self.state_dict()) - set(state_dict)
        if missing:
            raise ValueError(f"{name}.load_state_dict: the state lacks {sorted(missing)}")
        saved, lr = dict(self.__dict__), self.optimizer.lr
        try:
            self.__dict__.update({k: v for k, v in state_dict.items() if k != "scheduler"})
            self._restore()
        except (TypeError, ValueError) as exc:  # a refused state leaves the schedule and the optimizer as they were
            self.__dict__.clear()
            self.__dict__.update(saved)
            self.optimizer.lr = lr
            raise ValueError(f"{name}.load_state_dict: the state does not fit this schedule: {exc}") from None

    def _restore(self) -> None:
        self.optimizer.lr = self._lr(self.last_epoch)

    # -- as a callback of fit -----------------------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.interval == "epoch":
            self.step()

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.interval == "batch":
            self.step()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.get_last_lr():.6g})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (epoch // step_size)`` (PyTorch's ``StepLR``).

    Parameters
    ----------
    optimizer : Optimizer
    step_size : int >= 1
        Epochs between two decays.
    gamma : float > 0, default 0.1
    """

    def __init__(self, optimizer: Any, step_size: int, gamma: float = 0.1) -> None:
        super().__init__(optimizer)
        self.step_size = _checks.positive_int(step_size, "step_size")
        self.gamma = _checks.real(gamma, "gamma", strict=True)
        self._start()

    def _lr(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2`` (PyTorch's ``CosineAnnealingLR``;
    past ``T_max`` the cosine goes on, back up, as PyTorch's does).

    Parameters
    ----------
    optimizer : Optimizer
    T_max : int >= 1
        Epochs from ``base_lr`` down to ``eta_min``.
    eta_min : float >= 0, default 0
    """

    def __init__(self, optimizer: Any, T_max: int, eta_min: float = 0.0) -> None:
        super().__init__(optimizer)
        self.T_max = _checks.positive_int(T_max, "T_max")
        self.eta_min = _checks.real(eta_min, "eta_min")
        self._start()

    def _lr(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


def _anneal_cos(start, end, pct):
    """Cosine from ``start`` (pct = 0) to ``end`` (pct = 1), PyTorch's ``_annealing_cos``."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _anneal_linear(start, end, pct):
    """Straight line from ``start`` to ``end``, PyTorch's ``_annealing_linear``."""
    return (end - start) * pct + start


class OneCycleLR(LRScheduler):
    """The 1cycle policy (PyTorch's ``OneCycleLR``), stepped after every batch.

    The learning rate rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of the
    ``total_steps`` steps, then falls to ``max_lr / div_factor / final_div_factor`` (with ``three_phase``: falls back
    to the start first, over as many steps, then to the minimum); the momentum (``SGD.momentum`` or Adam's first
    beta) moves the opposite way between ``max_momentum`` and ``base_momentum`` when ``cycle_momentum``. Phase
    ``i`` ends at step ``end_i`` (``pct_start * total_steps - 1``, then ``total_steps - 1``) and interpolates with
    ``pct = (step - end_{i-1}) / (end_i - end_{i-1})``, by a cosine or a line (``anneal_strategy``).

    Parameters
    ----------
    optimizer : Optimizer
    max_lr : float > 0
    total_steps : int, optional
        Default ``epochs * steps_per_epoch`` (give one or the other).
    epochs, steps_per_epoch : int, optional
    pct_start : float in (0, 1), default 0.3
    anneal_strategy : {"cos", "linear"}, default "cos"
    cycle_momentum : bool, default True
    base_momentum, max_momentum : float, default 0.85, 0.95
    div_factor : float > 0, default 25
    final_div_factor : float > 0, default 1e4
    three_phase : bool, default False

    Raises
    ------
    ValueError
        At a step past ``total_steps`` (as PyTorch), or when ``cycle_momentum`` and the optimizer has neither a
        ``momentum`` nor ``betas``.
    """

    interval = "batch"

    def __init__(self, optimizer: Any, max_lr: float, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = True, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False) -> None:
        super().__init__(optimizer)
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR: give total_steps, or both epochs and steps_per_epoch")
            total_steps = (_checks.positive_int(epochs, "epochs")
                           * _checks.positive_int(steps_per_epoch, "steps_per_epoch"))
        self.total_steps = _checks.positive_int(total_steps, "total_steps")
        self.max_lr = _checks.real(max_lr, "max_lr", strict=True)
        self.pct_start = _checks.real(pct_start, "pct_start", strict=True, maximum=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        self.div_factor = _checks.real(div_factor, "div_factor", strict=True)
        self.final_div_factor = _checks.real(final_div_factor, "final_div_factor", strict=True)
        self.three_phase = bool(three_phase)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum = _checks.real(base_momentum, "base_momentum")
        self.max_momentum = _checks.real(max_momentum, "max_momentum")
        if self.cycle_momentum:
            if hasattr(optimizer, "betas"):
                self._momentum_attr = "betas"
            elif hasattr(optimizer, "momentum"):
                self._momentum_attr = "momentum"
            else:
                raise ValueError(f"OneCycleLR: cycle_momentum=True but {type(optimizer).__name__} has neither "
                                 f"momentum nor betas; pass cycle_momentum=False")
        self.initial_lr = self.max_lr / self.div_factor
        self.min_lr = self.initial_lr / self.final_div_factor
        n = self.total_steps
        lo, hi, mo_lo, mo_hi = self.initial_lr, self.max_lr, self.base_momentum, self.max_momentum
        if self.three_phase:
            self._phases = [(float(self.pct_start * n) - 1, lo, hi, mo_hi, mo_lo),
                            (float(2 * self.pct_start * n) - 2, hi, lo, mo_lo, mo_hi),
                            (n - 1, lo, self.min_lr, mo_hi, mo_hi)]
        else:
            self._phases = [(float(self.pct_start * n) - 1, lo, hi, mo_hi, mo_lo),
                            (n - 1, hi, self.min_lr, mo_lo, mo_hi)]
        self._start()

    def _at(self, step):
        """(lr, momentum) at ``step``."""
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; the schedule has total_steps="
                             f"{self.total_steps}")
        anneal = _anneal_cos if self.anneal_strategy == "cos" else _anneal_linear
        start_step, phase = 0.0, self._phases[-1]
        for p in self._phases[:-1]:  # the first phase that ends at or after step, else the last one
            if step <= p[0]:
                phase = p
                break
            start_step = p[0]
        end_step, lr0, lr1, m0, m1 = phase
        pct = (step - start_step) / (end_step - start_step)
        return anneal(lr0, lr1, pct), anneal(m0, m1, pct)

    def _lr(self, epoch):
        return self._at(epoch)[0]

    def _set_momentum(self, step):
        if not self.cycle_momentum:
            return
        momentum = self._at(step)[1]
        if self._momentum_attr == "betas":
            self.optimizer.betas = (momentum,) + tuple(self.optimizer.betas[1:])
        else:
            self.optimizer.momentum = momentum

    def _start(self):
        super()._start()
        self._set_momentum(0)

    def step(self) -> None:
        super().step()
        self._set_momentum(self.last_epoch)

    def _restore(self):
        super()._restore()
        self._set_momentum(self.last_epoch)


class ReduceLROnPlateau(LRScheduler):
    """Multiply the learning rate by ``factor`` when a metric stops improving (PyTorch's ``ReduceLROnPlateau``).

    At each ``step()`` (``metric``): the metric is better than the best so far when, with ``mode="min"``, it is
    below ``best * (1 - threshold)`` (``threshold_mode="rel"``) or ``best - threshold`` ("abs") (``mode="max"``:
    above ``best * (1 + threshold)`` or ``best + threshold``); after more than ``patience`` steps without a better
    value, ``lr = max(lr * factor, min_lr)`` (unless that changes it by less than ``eps``), and the next
    ``cooldown`` steps count no bad epochs.

    Parameters
    ----------
    optimizer : Optimizer
    mode : {"min", "max"}, default "min"
    factor : float in (0, 1), default 0.1
    patience : int >= 0, default 10
    threshold : float >= 0, default 1e-4
    threshold_mode : {"rel", "abs"}, default "rel"
    cooldown : int >= 0, default 0
    min_lr : float >= 0, default 0
    eps : float >= 0, default 1e-8
    monitor : str, default "val_loss"
        As a callback of ``fit``: the entry of the epoch's logs to step with (``"val_loss"`` falls back to
        ``"loss"`` when ``fit`` has no validation data).
    """

    def __init__(self, optimizer: Any, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                 eps: float = 1e-8, monitor: str = "val_loss") -> None:
        super().__init__(optimizer)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.factor = _checks.real(factor, "factor", strict=True, maximum=1.0)
        self.patience = _nonnegative_int(patience, "patience")
        self.cooldown = _nonnegative_int(cooldown, "cooldown")
        self.threshold = _checks.real(threshold, "threshold")
        self.min_lr = _checks.real(min_lr, "min_lr")
        self.eps = _checks.real(eps, "eps")
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a str, got {monitor!r}")
        self.mode, self.threshold_mode, self.monitor = mode, threshold_mode, monitor
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def _better(self, a):
        rel = self.threshold_mode == "rel"
        if self.mode == "min":
            return a < (self.best * (1.0 - self.threshold) if rel else self.best - self.threshold)
        return a > (self.best * (1.0 + self.threshold) if rel else self.best + self.threshold)

    def step(self, metric: float) -> None:  # type: ignore[override]
        """One epoch's ``metric`` (e.g. the validation loss); reduces the learning rate on a plateau."""
        if not _checks.is_real(metric):
            raise TypeError(f"ReduceLROnPlateau.step: metric must be a real number, got {metric!r}")
        current = float(metric)
        self.last_epoch += 1
        if self._better(current):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        if self.num_bad_epochs > self.patience:
            old = float(self.optimizer.lr)
            new = max(old * self.factor, self.min_lr)
            if old - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def _restore(self):
        pass  # the learning rate is the optimizer's (restored with the optimizer's state_dict)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["lr"] = float(self.optimizer.lr)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.optimizer.lr = self.__dict__.pop("lr")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        key = self.monitor if self.monitor in logs or self.monitor != "val_loss" else "loss"
        if key not in logs:
            raise ValueError(f"ReduceLROnPlateau: monitor={self.monitor!r} is not among the epoch's logs "
                             f"{sorted(logs)}")
        self.step(logs[key])

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        pass


def _nonnegative_int(value, name):
    """An int >= 0 as a Python int; TypeError for anything but an integer (bools too), ValueError below 0."""
    integer = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if integer and value >= 0:
        return int(value)
    raise (ValueError if integer else TypeError)(f"{name} must be an int >= 0, got {value!r}")
