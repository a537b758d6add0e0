"""SGD and Adam against PyTorch's update rules written out in NumPy (and against torch itself when installed)."""
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext import Dense, Network, ReLU
from cnn_ext.optim import SGD, Adam, AdamW


def _net(dtype=np.float64):
    return Network([Dense(3, 4, seed=0, dtype=dtype), ReLU(), Dense(4, 2, seed=1, dtype=dtype)])


def _grad_seq(net, steps, seed=0, dtype=np.float64):
    """Synthetic per-layer gradient lists (an optimiser only sees arrays; they need not come from a loss)."""
    rng = np.random.default_rng(seed)
    seq = []
    for _ in range(steps):
        grads = []
        for layer in net.layers:
            g = {key: rng.standard_normal(p.shape).astype(dtype) for _, key, p in layer.parameters()}
            g["dX"] = np.zeros(1)
            grads.append(g)
        seq.append(grads)
    return seq


def _flat(net):
    return [p for _, _, p in net.parameters()]


def ref_sgd(params, grad_steps, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD (dampening=0), one parameter at a time, in float64."""
    params = [p.astype(np.float64) for p in params]
    bufs = [None] * len(params)
    for grads in grad_steps:
        for i, g in enumerate(grads):
            d = g + weight_decay * params[i]
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = params[i] - lr * d
    return params


def ref_adam(params, grad_steps, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam (amsgrad=False), one parameter at a time, in float64."""
    b1, b2 = betas
    params = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grad_steps, start=1):
        for i, g in enumerate(grads):
            d = g + weight_decay * params[i]
            m[i] = b1 * m[i] + (1 - b1) * d
            v[i] = b2 * v[i] + (1 - b2) * d * d
            m_hat = m[i] / (1 - b1 ** t)
            v_hat = v[i] / (1 - b2 ** t)
            params[i] = params[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return params


def _per_param(net, seq):
    """The gradient list of each step, flattened in Network.parameters() order."""
    return [[g[key] for (_, key, _), g in _pairs(net, grads)] for grads in seq]


def _pairs(net, grads):
    return [(entry, grads[int(entry[0].split(".")[0])]) for entry in net.parameters()]


TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, ref, kw", [
    (SGD, ref_sgd, {"lr": 0.1}),
    (SGD, ref_sgd, {"lr": 0.1, "momentum": 0.9}),
    (SGD, ref_sgd, {"lr": 0.1, "momentum": 0.8, "nesterov": True}),
    (SGD, ref_sgd, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    (SGD, ref_sgd, {"lr": 0.1, "weight_decay": 0.05}),
    (Adam, ref_adam, {"lr": 0.01}),
    (Adam, ref_adam, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6}),
    (Adam, ref_adam, {"lr": 0.01, "weight_decay": 0.01}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "" if callable(v) else None)
def test_matches_hand_computed_steps(cls, ref, kw, dtype):
    net = _net(dtype)
    start = [p.copy() for p in _flat(net)]
    seq = _grad_seq(net, 5, seed=1, dtype=dtype)
    opt = cls(**kw)
    for grads in seq:
        opt.step(net, grads)
    expected = ref(start, _per_param(net, seq), **kw)
    for got, want in zip(_flat(net), expected):
        assert got.dtype == dtype
        assert_allclose(got, want, **TOL[dtype])
    assert opt.steps == 5


def test_adam_first_step_moves_every_entry_by_lr():
    # bias correction at work: m_hat / sqrt(v_hat) = g / |g| at t = 1
    net = _net()
    before = [p.copy() for p in _flat(net)]
    Adam(lr=0.01).step(net, _grad_seq(net, 1, seed=3)[0])
    for p, p0 in zip(_flat(net), before):
        assert_allclose(np.abs(p - p0), 0.01, rtol=1e-5)


def test_plain_sgd_is_the_tutorials_update():
    a, b = _net(), _net()
    grads = _grad_seq(a, 1)[0]
    SGD(0.05).step(a, grads)
    b.update(0.05, grads)
    for pa, pb in zip(_flat(a), _flat(b)):
        assert_array_equal(pa, pb)  # the same axpy: bit for bit


def test_against_torch():
    torch = pytest.importorskip("torch")
    for make_ours, make_theirs in [
        (lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
         lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
        (lambda: Adam(0.01, betas=(0.85, 0.995), weight_decay=0.02),
         lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.85, 0.995), weight_decay=0.02)),
    ]:
        net = _net()
        tparams = [torch.tensor(p.copy(), requires_grad=True) for p in _flat(net)]
        theirs = make_theirs(tparams)
        ours = make_ours()
        seq = _grad_seq(net, 4, seed=4)
        for grads, flat in zip(seq, _per_param(net, seq)):
            ours.step(net, grads)
            for tp, g in zip(tparams, flat):
                tp.grad = torch.tensor(g)
            theirs.step()
        for p, tp in zip(_flat(net), tparams):
            assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_updates_in_place_and_state_per_parameter():
    net = _net(np.float32)
    arrays = _flat(net)
    opt = Adam()
    seq = _grad_seq(net, 3, dtype=np.float64)  # float64 gradients on float32 parameters
    for grads in seq:
        opt.step(net, grads)
    assert all(a is b for a, b in zip(arrays, _flat(net)))
    assert net.layers[0].w is arrays[0] and arrays[0].dtype == np.float32
    st = opt.state(net.layers[0].w)
    assert st["t"] == 3 and st["exp_avg"].dtype == np.float32
    assert opt.state(np.zeros(3)) == {}
    opt.reset()
    assert opt.steps == 0 and opt.state(net.layers[0].w) == {}


def test_single_layer_step():
    layer = Dense(2, 2, seed=0)
    w0 = layer.w.copy()
    g = {"dW": np.ones((2, 2)), "dB": np.ones(2)}
    SGD(0.5).step(layer, g)
    assert_array_equal(layer.w, w0 - 0.5)


@pytest.mark.parametrize("make", [lambda: SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
                                  lambda: Adam(weight_decay=1e-4)])
def test_steps_after_the_first_allocate_nothing(make):
    net = Network([Dense(500, 400, seed=0)])  # 1.6 MB of weights
    rng = np.random.default_rng(0)
    grads = [{"dW": rng.standard_normal((500, 400)), "dB": rng.standard_normal(400)}]
    opt = make()
    opt.step(net, grads)  # allocates the state
    opt.step(net, grads)
    tracemalloc.start()
    try:
        opt.step(net, grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, f"a step allocated {peak} bytes"


def test_argument_errors():
    with pytest.raises(ValueError, match="lr must be > 0"):
        SGD(0)
    with pytest.raises(TypeError, match="lr must be a real number"):
        SGD("0.1")
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        SGD(0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        SGD(0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"betas\[1\] must be >= 0.0 and < 1.0"):
        Adam(betas=(0.9, 1.0))
    with pytest.raises(TypeError, match="betas must be a pair"):
        Adam(betas=0.9)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        Adam(eps=-1e-8)
    with pytest.raises(ValueError, match="weight_decay must be >= 0"):
        Adam(weight_decay=float("nan"))


def test_gradient_errors_leave_the_network_unchanged():
    net = _net()
    before = [p.copy() for p in _flat(net)]
    grads = _grad_seq(net, 1)[0]
    opt = Adam()
    with pytest.raises(ValueError, match="got 2 gradient dicts for 3 layers"):
        opt.step(net, grads[:2])
    bad = [dict(g) for g in grads]
    del bad[2]["dB"]
    with pytest.raises(ValueError, match=r"layer 2 \(Dense\(n_in=4, n_out=2\)\) have no 'dB'"):
        opt.step(net, bad)
    bad = [dict(g) for g in grads]
    bad[2]["dW"] = np.zeros((2, 4))
    with pytest.raises(ValueError, match=r"step: layer 2 \(Dense\(n_in=4, n_out=2\)\): dW has shape \(2, 4\) but w has "
                                         r"shape \(4, 2\)"):
        opt.step(net, bad)
    with pytest.raises(TypeError, match="step expects a Network or a layer"):
        opt.step(object(), grads)
    for p, p0 in zip(_flat(net), before):
        assert_array_equal(p, p0)
    assert opt.steps == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make", [lambda: Adam(1e-2), lambda: Adam(3e-3, betas=(0.8, 0.99), eps=1e-6,
                                                                   weight_decay=0.1),
                                  lambda: AdamW(1e-2, weight_decay=0.05)])
def test_fused_adam_is_the_numpy_sequence(monkeypatch, make, dtype):
    """Large parameters take one fused pass (elementwise.adam_update), bitwise the NumPy sequence small ones take,
    on 1, 2 and 3 threads; the gradients (zeros, huge, tiny) are left unchanged."""
    from cnn_ext import _kernels, optim, set_num_threads
    calls = []
    kernel, fused_threads = _kernels.elementwise.adam_update, optim.fused_threads
    monkeypatch.setattr(_kernels.elementwise, "adam_update", lambda *a: calls.append(a[-1]) or kernel(*a))

    def run(fused, threads):
        monkeypatch.setattr(optim, "fused_threads", fused_threads if fused else lambda arrays: 0)
        net = Network([Dense(300, 250, seed=0, dtype=dtype)])  # w: 75,000 entries, past the fused minimum
        steps = _grad_seq(net, 4, seed=3, dtype=dtype)
        steps[1][0]["dW"][:7] = 0.0
        steps[2][0]["dW"][:5] *= 1e30 if dtype == np.float64 else 1e15
        steps[3][0]["dW"][:5] *= 1e-30
        kept = [g[0]["dW"].copy() for g in steps]
        opt = make()
        previous = set_num_threads(threads)
        try:
            for grads in steps:
                opt.step(net, grads)
        finally:
            set_num_threads(previous)
        for g, k in zip(steps, kept):
            assert_array_equal(g[0]["dW"], k)
        return [p.copy() for p in _flat(net)] + [opt.state(net.layers[0].w)[key].copy()
                                                 for key in ("exp_avg", "exp_avg_sq")]

    reference = run(False, 1)
    assert not calls
    for threads in (1, 2, 3):
        calls.clear()
        got = run(True, threads)
        assert len(calls) == 4  # w took the fused pass at every step (b, 250 entries, stays on NumPy's)
        for a, b in zip(got, reference):
            assert a.dtype == dtype
            assert_array_equal(a, b)
    assert np.isfinite(reference[0]).all() and not np.array_equal(reference[0], _flat(Network([Dense(
        300, 250, seed=0, dtype=dtype)]))[0])
