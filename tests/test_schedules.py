"""The learning-rate schedules against torch.optim.lr_scheduler: the learning rate (and OneCycleLR's momentum)
after every step, whole trajectories of parameters under a schedule, state_dict resumption, errors."""
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose

from cnn_ext.optim import SGD, Adam, AdamW
from cnn_ext.schedules import CosineAnnealingLR, OneCycleLR, ReduceLROnPlateau, StepLR
from helpers.torch_peer import TOL, noise, params_of, run_ours, run_torch, small_net


def _torch_opt(torch, kind="sgd", **kw):
    p = torch.zeros(1, requires_grad=True)
    return (torch.optim.SGD if kind == "sgd" else torch.optim.Adam)([p], **kw)


def _lrs_theirs(torch, make_sched, steps, kind="sgd", metrics=None, **kw):
    opt = _torch_opt(torch, kind, **kw)
    sched = make_sched(opt)
    key = "momentum" if kind == "sgd" else "betas"
    out = [(opt.param_groups[0]["lr"], opt.param_groups[0][key])]
    for t in range(steps):
        opt.step()  # no gradients: a no-op that keeps PyTorch from warning about the order of the calls
        sched.step(metrics[t]) if metrics is not None else sched.step()
        out.append((opt.param_groups[0]["lr"], opt.param_groups[0][key]))
    return out


def _lrs_ours(opt, sched, steps, metrics=None):
    key = "momentum" if hasattr(opt, "momentum") else "betas"
    out = [(opt.lr, getattr(opt, key))]
    for t in range(steps):
        sched.step(metrics[t]) if metrics is not None else sched.step()
        out.append((opt.lr, getattr(opt, key)))
    return out


def _assert_same_lrs(ours, theirs, rtol=1e-12):
    assert len(ours) == len(theirs)
    assert_allclose([lr for lr, _ in ours], [lr for lr, _ in theirs], rtol=rtol, atol=1e-15)
    m_ours = [m[0] if isinstance(m, tuple) else m for _, m in ours]
    m_theirs = [m[0] if isinstance(m, tuple) else m for _, m in theirs]
    assert_allclose(m_ours, m_theirs, rtol=rtol, atol=1e-15)


@pytest.mark.parametrize("step_size, gamma", [(1, 0.9), (3, 0.5), (7, 0.1)])
def test_step_lr_matches_torch(step_size, gamma):
    torch = pytest.importorskip("torch")
    opt = SGD(0.2)
    ours = _lrs_ours(opt, StepLR(opt, step_size, gamma), 25)
    theirs = _lrs_theirs(torch, lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), 25, lr=0.2)
    _assert_same_lrs(ours, theirs)
    assert ours[-1][0] < 0.2


@pytest.mark.parametrize("T_max, eta_min", [(10, 0.0), (7, 1e-3), (1, 0.01)])
def test_cosine_annealing_matches_torch_past_T_max(T_max, eta_min):
    torch = pytest.importorskip("torch")
    opt = Adam(0.05)
    steps = 3 * T_max + 2  # down, back up and down again, as PyTorch's
    ours = _lrs_ours(opt, CosineAnnealingLR(opt, T_max, eta_min), steps)
    theirs = _lrs_theirs(torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max, eta_min), steps,
                         kind="adam", lr=0.05)
    _assert_same_lrs(ours, theirs, rtol=1e-10)  # PyTorch's recursive form against the closed form
    assert ours[T_max][0] == pytest.approx(eta_min, abs=1e-15)


ONE_CYCLE = [
    dict(max_lr=0.1, total_steps=50),
    dict(max_lr=0.3, epochs=4, steps_per_epoch=13, pct_start=0.25, anneal_strategy="linear"),
    dict(max_lr=0.1, total_steps=40, three_phase=True, div_factor=10.0, final_div_factor=100.0),
    dict(max_lr=0.05, total_steps=30, base_momentum=0.8, max_momentum=0.9),
    dict(max_lr=0.05, total_steps=30, cycle_momentum=False),
]


@pytest.mark.parametrize("kw", ONE_CYCLE)
@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_one_cycle_matches_torch(kw, kind):
    torch = pytest.importorskip("torch")
    total = kw.get("total_steps") or kw["epochs"] * kw["steps_per_epoch"]
    opt = SGD(0.01, momentum=0.9) if kind == "sgd" else Adam(0.01)
    ours = _lrs_ours(opt, OneCycleLR(opt, **kw), total)
    theirs = _lrs_theirs(torch, lambda o: torch.optim.lr_scheduler.OneCycleLR(o, **kw), total, kind=kind,
                         **({"lr": 0.01, "momentum": 0.9} if kind == "sgd" else {"lr": 0.01}))
    _assert_same_lrs(ours, theirs)
    assert max(lr for lr, _ in ours) == pytest.approx(kw["max_lr"], rel=0.05)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["sgd-nesterov", "sgd-no-momentum", "adamw"])
def test_one_cycle_trajectory_matches_torch(kind, dtype):
    """Parameters after a whole 1cycle run: the momentum the schedule sets is the one the optimizer uses (SGD
    without momentum gets one, as in PyTorch)."""
    torch = pytest.importorskip("torch")
    steps = 40
    make = {"sgd-nesterov": (lambda: SGD(0.01, momentum=0.9, nesterov=True, weight_decay=0.01),
                             lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.01)),
            "sgd-no-momentum": (lambda: SGD(0.01), lambda ps: torch.optim.SGD(ps, lr=0.01)),
            "adamw": (lambda: AdamW(0.01), lambda ps: torch.optim.AdamW(ps, lr=0.01))}[kind]
    net = small_net(dtype)
    start = [p.copy() for p in params_of(net)]
    noises = noise(net, steps, seed=3)
    opt = make[0]()
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ours = run_ours(net, opt, noises, dtype, after_step=lambda t: sched.step())
    scheds = []

    # PyTorch's scheduler is built on the optimizer before the first step: build it at step 0's start
    def t_before(t, tparams, topt):
        if not scheds:
            scheds.append(torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=0.1, total_steps=steps))

    theirs, _ = run_torch(torch, start, make[1], noises, dtype, before_step=t_before,
                          after_step=lambda t, topt: scheds[0].step())
    for a, b in zip(ours, theirs):
        assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("kw", [
    dict(),
    dict(mode="max", factor=0.5, patience=2),
    dict(patience=1, threshold=0.05, threshold_mode="abs", cooldown=2, min_lr=0.004),
    dict(mode="max", patience=0, threshold=0.01, cooldown=1, factor=0.3, eps=1e-3),
])
def test_reduce_on_plateau_matches_torch(kw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    # plateaus and improvements: a falling curve with flat stretches and noise
    # then a long flat stretch, which the default patience of 10 sees
    metrics = list(np.repeat(np.linspace(1.0, 0.2, 8), 5) + 0.01 * rng.standard_normal(40)) + [0.2] * 20
    opt = SGD(0.1, momentum=0.5)
    ours = _lrs_ours(opt, ReduceLROnPlateau(opt, **kw), 60, metrics=metrics)
    theirs = _lrs_theirs(torch, lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, **kw), 60,
                         metrics=metrics, lr=0.1, momentum=0.5)
    _assert_same_lrs(ours, theirs)
    assert ours[-1][0] < 0.1  # some plateau reduced it


SCHEDULES = [(lambda o: StepLR(o, 3, 0.5), None),
             (lambda o: CosineAnnealingLR(o, 8, 1e-4), None),
             (lambda o: OneCycleLR(o, 0.2, total_steps=20, three_phase=True), None),
             (lambda o: ReduceLROnPlateau(o, patience=1, cooldown=1), [1.0, 0.9, 0.9, 0.95, 0.9, 0.91, 0.92, 0.5,
                                                                       0.6, 0.7, 0.8, 0.9, 1.0, 0.4, 0.5, 0.5,
                                                                       0.5, 0.5, 0.5, 0.5])]


@pytest.mark.parametrize("make, metrics", SCHEDULES, ids=["step", "cosine", "onecycle", "plateau"])
def test_state_dict_resumes_the_schedule(make, metrics):
    opt = SGD(0.1, momentum=0.9)
    sched = make(opt)
    whole = _lrs_ours(opt, sched, 20, metrics)

    opt2 = SGD(0.1, momentum=0.9)
    first = make(opt2)
    _lrs_ours(opt2, first, 9, metrics)
    state, opt_state = first.state_dict(), opt2.state_dict()
    opt3 = SGD(0.1, momentum=0.9)
    resumed = make(opt3)
    opt3.load_state_dict(opt_state)
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 9
    rest = _lrs_ours(opt3, resumed, 11, metrics[9:] if metrics else None)
    assert rest == whole[9:]
    with pytest.raises(ValueError, match="expected the state_dict of a"):
        StepLR(SGD(0.1), 2).load_state_dict(CosineAnnealingLR(SGD(0.1), 2).state_dict())


def test_schedule_sets_the_initial_learning_rate_as_torch():
    opt = SGD(0.5, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=1.0, total_steps=10)
    assert opt.lr == pytest.approx(1.0 / 25) and opt.momentum == 0.95 and sched.last_epoch == 0
    opt = Adam(0.5, betas=(0.9, 0.99))
    OneCycleLR(opt, max_lr=1.0, total_steps=10)
    assert opt.betas == (0.95, 0.99)
    opt = SGD(0.5)
    CosineAnnealingLR(opt, 4)
    assert opt.lr == 0.5


def test_errors():
    opt = SGD(0.1)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=3)
    for _ in range(3):
        sched.step()
    lr = opt.lr
    with pytest.raises(ValueError, match="tried to step 4 times; the schedule has total_steps=3"):
        sched.step()
    assert sched.last_epoch == 3 and opt.lr == lr  # the refused step changed nothing

    class NoMomentum:
        lr = 0.1

    with pytest.raises(ValueError, match="has neither momentum nor betas"):
        OneCycleLR(NoMomentum(), max_lr=0.1, total_steps=3)
    OneCycleLR(NoMomentum(), max_lr=0.1, total_steps=3, cycle_momentum=False)
    with pytest.raises(ValueError, match="give total_steps, or both epochs and steps_per_epoch"):
        OneCycleLR(SGD(0.1), max_lr=0.1, epochs=3)
    with pytest.raises(TypeError, match="optimizer must have a real lr attribute"):
        StepLR(object(), 2)
    with pytest.raises(ValueError, match="step_size must be >= 1"):
        StepLR(SGD(0.1), 0)
    with pytest.raises(ValueError, match="T_max must be >= 1"):
        CosineAnnealingLR(SGD(0.1), 0)
    with pytest.raises(ValueError, match="anneal_strategy must be 'cos' or 'linear'"):
        OneCycleLR(SGD(0.1), 0.1, total_steps=3, anneal_strategy="exp")
    with pytest.raises(ValueError, match="pct_start must be > 0.0 and < 1.0"):
        OneCycleLR(SGD(0.1), 0.1, total_steps=3, pct_start=1.0)
    with pytest.raises(ValueError, match="mode must be 'min' or 'max'"):
        ReduceLROnPlateau(SGD(0.1), mode="up")
    with pytest.raises(ValueError, match="patience must be an int >= 0, got -1"):
        ReduceLROnPlateau(SGD(0.1), patience=-1)
    with pytest.raises(TypeError, match="patience must be an int >= 0, got 1.5"):
        ReduceLROnPlateau(SGD(0.1), patience=1.5)
    with pytest.raises(ValueError, match="factor must be > 0.0 and < 1.0"):
        ReduceLROnPlateau(SGD(0.1), factor=1.0)
    with pytest.raises(TypeError, match="metric must be a real number"):
        ReduceLROnPlateau(SGD(0.1)).step("low")
    assert math.isfinite(opt.lr)


def test_a_refused_state_changes_nothing():
    opt = SGD(0.1, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.2, total_steps=10)
    for _ in range(3):
        sched.step()
    before, lr, momentum = sched.state_dict(), opt.lr, opt.momentum
    bad = dict(before, last_epoch=11)  # past total_steps
    with pytest.raises(ValueError, match="does not fit this schedule: OneCycleLR: tried to step 11 times"):
        sched.load_state_dict(bad)
    assert sched.state_dict() == before and (opt.lr, opt.momentum) == (lr, momentum)
    with pytest.raises(ValueError, match=r"the state lacks \['total_steps'\]"):
        sched.load_state_dict({k: v for k, v in before.items() if k != "total_steps"})
    assert sched.state_dict() == before
