"""Refused updates change nothing (parameters, momentum buffers, Adam moments, step counts); optimizers see every
weight or refuse; fit stops on a non-finite loss and never picks a loss silently; hints for common mistakes."""
import copy

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import Conv2D, Dense, Flatten, Layer, Network, ReLU, Sigmoid, get_current_accuracy, mse_loss
from cnn_ext.layers.base import LAYER_TYPES, register_layer
from cnn_ext.losses import exact
from cnn_ext.optim import SGD, Adam
from cnn_ext.serialization import load, save
from cnn_ext.training import fit


def _net():
    return Network([Conv2D(1, 2, 3, seed=0), ReLU(), Flatten(), Dense(2 * 4 * 4, 3, seed=1)])


def _exact_grads(net, seed=0):
    x = np.random.default_rng(seed).standard_normal((4, 1, 6, 6))
    out = net.forward(x)
    return net.backward(exact(mse_loss(out, np.zeros_like(out))))


def _snapshot(net, opt):
    return [p.copy() for _, _, p in net.parameters()], copy.deepcopy(opt.__dict__) if opt is not None else None


def _assert_same(net, opt, snap):
    params, state = snap
    for (_, _, p), p0 in zip(net.parameters(), params):
        assert_array_equal(p, p0)
    if opt is None:
        return
    assert opt.steps == state["steps"]
    assert set(opt._state) == set(state["_state"])
    for key, (arr, st) in opt._state.items():
        st0 = state["_state"][key][1]
        assert set(st) == set(st0)
        for name, value in st.items():
            if isinstance(value, np.ndarray) and name not in ("scratch", "decayed"):  # scratch is not state
                assert_array_equal(value, st0[name])
            elif not isinstance(value, np.ndarray):
                assert value == st0[name]


BAD_GRADIENTS = [
    ("complex", lambda g: g.astype(complex), TypeError, "complex"),
    ("object of None", lambda g: np.full(g.shape, None, dtype=object), TypeError, "object"),
    ("string", lambda g: np.full(g.shape, "0.1"), TypeError, "dtype <U3"),
    ("bool", lambda g: np.ones(g.shape, bool), TypeError, "bool"),
    ("None", lambda g: None, TypeError, "is None"),
    ("wrong shape", lambda g: g[None], ValueError, r"dB has shape \(1, 3\) but b has shape \(3,\)"),
]


@pytest.mark.parametrize("what, make_bad, exc, match", BAD_GRADIENTS, ids=[b[0] for b in BAD_GRADIENTS])
@pytest.mark.parametrize("who", ["Network.update", "SGD", "Adam"])
def test_a_bad_gradient_in_the_last_layer_changes_nothing(who, what, make_bad, exc, match):
    net = _net()
    opt = {"Network.update": None, "SGD": SGD(0.1, momentum=0.9, weight_decay=1e-3),
           "Adam": Adam(1e-2, weight_decay=1e-3)}[who]
    if opt is not None:
        opt.step(net, _exact_grads(net, seed=1))  # some state to keep: momentum buffers, moments, t
    grads = _exact_grads(net)
    grads[3]["dB"] = make_bad(grads[3]["dB"])
    snap = _snapshot(net, opt)
    with pytest.raises(exc, match=match):
        if opt is None:
            net.update(0.1, grads)
        else:
            opt.step(net, grads)
    _assert_same(net, opt, snap)


class TutorialStyleDense:
    """A layer as the tutorial writes one: w and b, forward, backward, update, and nothing else."""

    def __init__(self, n_in, n_out):
        rng = np.random.default_rng(0)
        self.w, self.b = 0.1 * rng.standard_normal((n_in, n_out)), np.zeros(n_out)

    def forward(self, x):
        self.x = x
        return x @ self.w + self.b

    def backward(self, dE_dY):
        return {"dW": self.x.T @ dE_dY, "dB": np.asarray(dE_dY).sum(axis=0), "dX": dE_dY @ self.w.T}

    def update(self, grads, learning_rate):
        self.w -= learning_rate * grads["dW"]
        self.b -= learning_rate * grads["dB"]


def test_optimizers_and_fit_refuse_a_layer_with_weights_they_cannot_see():
    net = Network([TutorialStyleDense(3, 2)])
    X, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    grads = net.backward(exact(net.forward(X)))
    for opt in (SGD(0.1, momentum=0.9), Adam()):
        snap = _snapshot(net, opt)
        with pytest.raises(TypeError, match=r"layer 0: .*TutorialStyleDense.* returns gradients 'dW', 'dB' for "
                                            r"arrays that it has no parameters\(\) to list.*add a method "
                                            r"parameters\(self\) returning \[\(\"w\", \"dW\", self.w\), "):
            opt.step(net, grads)
        _assert_same(net, opt, snap)
        with pytest.raises(TypeError, match="parameters"):
            fit(net, X, y, epochs=1, optimizer=opt, loss="mse", progress=False, verbose=False)
        _assert_same(net, opt, snap)
    # Network.update trains it, as the tutorial does
    w0 = net.layers[0].w.copy()
    net.update(0.1, grads)
    assert not np.array_equal(net.layers[0].w, w0)


def test_a_tutorial_style_layer_with_parameters_and_config_takes_part(tmp_path):
    class MyDense(TutorialStyleDense):
        exact_gradients = True  # its backward is the chain rule: a batch sum

        def __init__(self, n_in, n_out):
            super().__init__(n_in, n_out)
            self.n_in, self.n_out = n_in, n_out

        def forward(self, x):
            self._x = x
            return x @ self.w + self.b

        def backward(self, dE_dY):
            dy = np.asarray(dE_dY)
            return {"dW": self._x.T @ dy, "dB": dy.sum(axis=0), "dX": dy @ self.w.T}

        def parameters(self):
            return [("w", "dW", self.w), ("b", "dB", self.b)]

        def get_config(self):
            return {"n_in": self.n_in, "n_out": self.n_out}

    register_layer(MyDense)
    try:
        net = Network([MyDense(3, 2)])
        w0 = net.layers[0].w.copy()
        fit(net, np.ones((4, 3)), np.array([0, 1, 0, 1]), epochs=1, optimizer=SGD(0.1, momentum=0.9),
            progress=False, verbose=False)
        assert not np.array_equal(net.layers[0].w, w0)
        save(net, tmp_path / "n.npz")
        back = load(tmp_path / "n.npz")
        assert_array_equal(back.layers[0].w, net.layers[0].w)
    finally:
        LAYER_TYPES.pop("MyDense", None)
    with pytest.raises(TypeError, match=r"has no parameters, get_config; subclass cnn_ext.Layer, or add"):
        register_layer(TutorialStyleDense)


# ---- fit ---------------------------------------------------------------------------------------------------------

def test_fit_stops_on_a_non_finite_loss_with_the_parameters_of_before_that_step():
    X = np.random.default_rng(0).standard_normal((40, 3))
    y = np.arange(40) % 2
    net = Network([Dense(3, 2, seed=0)])
    seen = []

    def loss(pred, yb):
        seen.append([p.copy() for _, _, p in net.parameters()])  # after the forward, before backward/update
        value = float(np.mean(pred ** 2)) if len(seen) != 7 else float("nan")
        return value, 2 * pred / pred.size

    opt = SGD(0.01, momentum=0.9)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 2 of 5; .*before this step"):
        fit(net, X, y, epochs=3, batch_size=8, optimizer=opt, loss=loss, seed=0, progress=False, verbose=False)
    for (_, _, p), p0 in zip(net.parameters(), seen[-1]):
        assert_array_equal(p, p0)
    assert opt.steps == 6


def test_fit_uses_the_named_loss_and_says_which_default_it_took(capsys):
    X = np.random.default_rng(0).standard_normal((16, 3))
    T = np.eye(2)[np.arange(16) % 2]
    a, b = (Network([Dense(3, 2, seed=0), Sigmoid()]) for _ in range(2))
    fit(a, X, T, epochs=1, batch_size=8, loss="mse", learning_rate=0.1, shuffle=False, progress=False, verbose=False)
    for i in range(0, 16, 8):  # the same steps by hand: MSE, its exact gradient, plain SGD
        out = b.forward(X[i:i + 8])
        b.update(0.1, b.backward(exact(mse_loss(out, T[i:i + 8]))))
    for (_, _, pa), (_, _, pb) in zip(a.parameters(), b.parameters()):
        assert_array_equal(pa, pb)
    assert capsys.readouterr().err == ""
    fit(a, X, T, epochs=1, batch_size=8, learning_rate=0.1, progress=False)
    assert "fit: loss='softmax_cross_entropy' (the default" in capsys.readouterr().err


# ---- hints -------------------------------------------------------------------------------------------------------

def test_hints_for_common_mistakes():
    with pytest.raises(ValueError, match=r"cnn_ext.datasets.one_hot\(target, 10\)"):
        mse_loss(np.zeros((4, 10)), np.array([1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"x\[None\] \(shape \(1, 1, 6, 6\)\)"):
        Conv2D(1, 2, 3, seed=0).forward(np.zeros((1, 6, 6)))
    with pytest.raises(ValueError, match=r"x\[None\]"):
        Dense(4, 2, seed=0).forward(np.zeros(4))
    net = Network([Dense(4, 3, seed=0)])
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\] for 3 classes"):
        get_current_accuracy(net, np.zeros((2, 4)), np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        get_current_accuracy(net, np.zeros((2, 4)), np.array([-1, 0]))
