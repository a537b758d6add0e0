"""AdamW, SGD's weight decay (coupled and decoupled) and resuming from a state_dict, against PyTorch's optimizers
over many steps, in float32 and float64."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext.optim import SGD, Adam, AdamW
from helpers.torch_peer import TOL, grads_for, noise, params_of, run_ours, run_torch, small_net

STEPS = 60
DTYPES = [np.float32, np.float64]


def _compare(torch, make_ours, make_theirs, dtype, steps=STEPS, before_step=None):
    net = small_net(dtype)
    start = [p.copy() for p in params_of(net)]
    noises = noise(net, steps, seed=5)
    ours = run_ours(net, make_ours(), noises, dtype)
    theirs, _ = run_torch(torch, start, make_theirs, noises, dtype, before_step=before_step)
    for a, b, p0 in zip(ours, theirs, start):
        assert a.dtype == dtype
        assert not np.allclose(a, p0)  # the run moved the parameters
        assert_allclose(a, b, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{}, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.3},
                                {"lr": 0.005, "weight_decay": 0.0}])
def test_adamw_matches_torch(kw, dtype):
    torch = pytest.importorskip("torch")
    _compare(torch, lambda: AdamW(**kw), lambda ps: torch.optim.AdamW(ps, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_decoupled_weight_decay_is_adamw(dtype):
    torch = pytest.importorskip("torch")
    kw = dict(lr=0.01, weight_decay=0.2)
    _compare(torch, lambda: Adam(decoupled_weight_decay=True, **kw),
             lambda ps: torch.optim.Adam(ps, decoupled_weight_decay=True, **kw), dtype)
    a, b = small_net(dtype), small_net(dtype)
    noises = noise(a, 10)
    pa = run_ours(a, Adam(decoupled_weight_decay=True, **kw), noises, dtype)
    pb = run_ours(b, AdamW(**kw), noises, dtype)
    for x, y in zip(pa, pb):
        assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [
    {"lr": 0.05, "weight_decay": 0.1},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05},
    {"lr": 0.03, "momentum": 0.8, "nesterov": True, "weight_decay": 0.2},
    {"lr": 0.05, "momentum": 0.9, "nesterov": True},
])
def test_sgd_weight_decay_matches_torch(kw, dtype):
    torch = pytest.importorskip("torch")
    _compare(torch, lambda: SGD(**kw), lambda ps: torch.optim.SGD(ps, **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kw", [{"lr": 0.05}, {"lr": 0.05, "momentum": 0.9},
                                {"lr": 0.03, "momentum": 0.8, "nesterov": True}])
def test_sgd_decoupled_weight_decay_matches_torch_sgdw(kw, dtype):
    """SGDW: PyTorch's SGD without weight decay after p *= 1 - lr * weight_decay (AdamW's decay)."""
    torch = pytest.importorskip("torch")
    wd = 0.3

    def decay(t, tparams, opt):
        with torch.no_grad():
            for tp in tparams:
                tp.mul_(1 - opt.param_groups[0]["lr"] * wd)

    _compare(torch, lambda: SGD(weight_decay=wd, decoupled_weight_decay=True, **kw),
             lambda ps: torch.optim.SGD(ps, **kw), dtype, before_step=decay)


def test_decoupled_and_coupled_weight_decay_differ():
    """The switch works: with momentum the two decays give different trajectories, and AdamW is not Adam."""
    for make_a, make_b in [(lambda: SGD(0.05, momentum=0.9, weight_decay=0.3),
                            lambda: SGD(0.05, momentum=0.9, weight_decay=0.3, decoupled_weight_decay=True)),
                           (lambda: Adam(0.01, weight_decay=0.1), lambda: AdamW(0.01, weight_decay=0.1))]:
        a, b = small_net(), small_net()
        noises = noise(a, 20)
        pa, pb = run_ours(a, make_a(), noises, np.float64), run_ours(b, make_b(), noises, np.float64)
        assert not all(np.allclose(x, y, rtol=1e-6) for x, y in zip(pa, pb))


def test_defaults_unchanged():
    assert (SGD(0.1).weight_decay, SGD(0.1).decoupled_weight_decay, SGD(0.1).momentum) == (0.0, False, 0.0)
    adam = Adam()
    assert (adam.lr, adam.betas, adam.eps, adam.weight_decay, adam.decoupled_weight_decay) == \
        (1e-3, (0.9, 0.999), 1e-8, 0.0, False)
    w = AdamW()
    assert (w.lr, w.betas, w.eps, w.weight_decay, w.decoupled_weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.01, True)
    assert repr(w) == "AdamW(lr=0.001, betas=(0.9, 0.999), eps=1e-08, weight_decay=0.01)"
    with pytest.raises(TypeError, match="decoupled_weight_decay must be a bool"):
        SGD(0.1, weight_decay=0.1, decoupled_weight_decay="yes")
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        AdamW(weight_decay=-0.1)


# -- state_dict ------------------------------------------------------------------------------------------------
MAKERS = [lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
          lambda: SGD(0.05, momentum=0.9, weight_decay=0.1, decoupled_weight_decay=True),
          lambda: SGD(0.05),
          lambda: Adam(0.01, weight_decay=0.01),
          lambda: AdamW(0.01, betas=(0.8, 0.99))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", MAKERS, ids=["sgd-nesterov", "sgdw", "sgd", "adam", "adamw"])
@pytest.mark.parametrize("bind", ["at-load", "at-step"])
def test_resumed_training_equals_uninterrupted_bitwise(make, dtype, bind, tmp_path):
    net = small_net(dtype)
    noises = noise(net, 12, seed=2)
    whole = run_ours(net, make(), noises, dtype)

    first = small_net(dtype)
    opt = make()
    run_ours(first, opt, noises[:5], dtype)
    state = opt.state_dict()
    path = cnn_ext.save(first, tmp_path / "net.npz")
    run_ours(first, opt, noises[5:7], dtype)  # training on does not change the saved dict
    assert state["steps"] == 5

    resumed_net = cnn_ext.load(path)
    resumed = type(opt)(lr=123.0)  # its own hyper-parameters are replaced by the saved ones
    if bind == "at-load":
        resumed.load_state_dict(state, resumed_net)
    else:
        resumed.load_state_dict(state)
    assert resumed.lr == opt.lr and resumed.steps == 5
    got = run_ours(resumed_net, resumed, noises[5:], dtype)
    assert resumed.steps == 12
    for a, b in zip(got, whole):
        assert_array_equal(a, b)


def test_state_dict_round_trips_and_is_a_copy():
    net = small_net()
    opt = Adam(0.01)
    assert opt.state_dict()["state"] == []
    run_ours(net, opt, noise(net, 3), np.float64)
    sd = opt.state_dict()
    assert sd["optimizer"] == "Adam" and sd["steps"] == 3 and len(sd["state"]) == 4
    assert set(sd["state"][0]) == {"t", "exp_avg", "exp_avg_sq"} and sd["state"][0]["t"] == 3
    w = net.layers[0].w
    assert not np.shares_memory(sd["state"][0]["exp_avg"], opt.state(w)["exp_avg"])
    assert_array_equal(sd["state"][0]["exp_avg"], opt.state(w)["exp_avg"])
    # loading copies: changing the dict afterwards changes nothing in the optimizer
    other = Adam()
    other.load_state_dict(sd, net)
    sd["state"][0]["exp_avg"][...] = 99.0
    assert not np.any(other.state(w)["exp_avg"] == 99.0)
    # a state dict of a loaded optimizer that has not stepped yet is the loaded one
    again = Adam()
    again.load_state_dict(opt.state_dict())
    assert_array_equal(again.state_dict()["state"][1]["exp_avg_sq"], opt.state_dict()["state"][1]["exp_avg_sq"])


def test_load_state_dict_refuses_and_changes_nothing():
    net = small_net()
    opt = SGD(0.05, momentum=0.9)
    run_ours(net, opt, noise(net, 2), np.float64)
    sd = opt.state_dict()
    target = SGD(0.7, momentum=0.5)
    run_ours(small_net(), target, noise(net, 1), np.float64)
    before = target.state_dict()

    def unchanged():
        after = target.state_dict()
        assert (after["hyperparameters"], after["steps"]) == (before["hyperparameters"], before["steps"])
        for a, b in zip(after["state"], before["state"]):
            assert_array_equal(a["momentum_buffer"], b["momentum_buffer"])

    with pytest.raises(ValueError, match="the state is of a Adam optimizer, not a SGD"):
        target.load_state_dict(Adam().state_dict())
    with pytest.raises(ValueError, match="state_dict must be the dict state_dict"):
        target.load_state_dict([1, 2])
    wrong = cnn_ext.Network([cnn_ext.Dense(3, 5, seed=0), cnn_ext.Dense(5, 2, seed=1)])
    with pytest.raises(ValueError, match=r"state\[0\]\['momentum_buffer'\] has shape \(3, 4\) but parameter 0 has "
                                         r"shape \(3, 5\)"):
        target.load_state_dict(sd, wrong)
    with pytest.raises(ValueError, match="the state holds 4 parameters, the network has 2"):
        target.load_state_dict(sd, cnn_ext.Network([cnn_ext.Dense(3, 4, seed=0)]))
    bad = dict(sd, hyperparameters=dict(sd["hyperparameters"], momentum=-1.0))
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        target.load_state_dict(bad, net)
    bad = dict(sd, state=[{"momentum_buffer": "x"}] * 4)
    with pytest.raises(ValueError, match=r"state\[0\]\['momentum_buffer'\] must be a float array"):
        target.load_state_dict(bad, net)
    unchanged()

    # bound at the next step: a state that does not fit refuses that step before anything changes
    fresh = SGD(0.1)
    fresh.load_state_dict(sd)
    before_params = [p.copy() for p in params_of(wrong)]
    with pytest.raises(ValueError, match=r"has shape \(3, 4\) but parameter 0 has shape \(3, 5\)"):
        fresh.step(wrong, grads_for(wrong, [np.zeros(p.shape) for p in params_of(wrong)], np.float64))
    for a, b in zip(params_of(wrong), before_params):
        assert_array_equal(a, b)
    assert fresh.steps == 2
