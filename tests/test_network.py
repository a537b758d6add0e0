"""Network: chaining, gradient order, skipping the first layer's dX, SGD update, predict, parameters, repr,
finite differences through a whole conv net, and error paths."""
import numpy as np
import pytest
from helpers.oracles import numeric_gradient
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext import Conv2D, Dense, Flatten, Layer, MaxPool2D, Network, ReLU, Sigmoid, Tanh, mse_loss


def small_net(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return Network([Conv2D(1, 2, 3, rng=rng, dtype=dtype), Flatten(), Dense(18, 5, rng=rng, dtype=dtype), Tanh(),
                    Dense(5, 3, rng=rng, dtype=dtype), Sigmoid()])


def test_forward_chains_layers():
    net = small_net()
    x = np.random.default_rng(1).standard_normal((4, 1, 5, 5))
    y = x
    for layer in net.layers:
        y = layer.forward(y)
    assert_allclose(net.forward(x), y)
    assert y.shape == (4, 3)


def test_backward_order_and_first_layer_skips_dX():
    net = small_net()
    x = np.random.default_rng(1).standard_normal((4, 1, 5, 5))
    dy = mse_loss(net.forward(x), np.zeros((4, 3)))
    grads = net.backward(dy)
    assert len(grads) == len(net.layers)
    assert set(grads[0]) == {"dK", "dB"}  # first layer: no dX
    assert set(grads[2]) == set(grads[4]) == {"dW", "dB", "dX"}
    assert set(grads[1]) == set(grads[3]) == set(grads[5]) == {"dX"}
    # each layer received the next layer's dX
    g = dy
    expected = [None] * 6
    for i in range(5, -1, -1):
        expected[i] = net.layers[i].backward(g)
        g = expected[i]["dX"]
    for got, ref in zip(grads, expected):
        for key in got:
            assert_allclose(got[key], ref[key], rtol=1e-12)


def test_first_layer_without_need_dX_keyword():
    class Double(Layer):
        def forward(self, x):
            self._x = np.asarray(x)
            return 2 * self._x

        def backward(self, dE_dY):
            return {"dX": 2 * np.asarray(dE_dY)}

    net = Network([Double(), Dense(3, 2, seed=0)])
    net.forward(np.ones((2, 3)))
    grads = net.backward(np.ones((2, 2)))
    assert set(grads[0]) == {"dX"}
    assert_allclose(grads[0]["dX"], 2 * grads[1]["dX"])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_update_is_sgd_on_every_layer(dtype):
    net = small_net(dtype)
    x = np.random.default_rng(2).standard_normal((3, 1, 5, 5))
    grads = net.backward(mse_loss(net.forward(x), np.ones((3, 3))))
    before = [(p, p.copy()) for _, _, p in net.parameters()]
    net.update(0.5, grads)
    flat_grads = [grads[int(name.split(".")[0])][key] for name, key, _ in net.parameters()]
    for (obj, old), (_, _, p), g in zip(before, net.parameters(), flat_grads):
        assert p is obj and p.dtype == dtype
        assert_allclose(p, old - 0.5 * g, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-7)


def test_network_finite_differences():
    """MSE through conv + dense: dE/dk = N·dK (batch mean), dE/dw = dW (batch sum), dE/db(dense) = N·dB."""
    net = Network([Conv2D(1, 2, 2, seed=1), Flatten(), Dense(8, 3, seed=2), Sigmoid()])
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 1, 3, 3))
    t = rng.uniform(0, 1, (3, 3))

    def loss():
        return float(np.mean((net.forward(x) - t) ** 2))

    grads = net.backward(mse_loss(net.forward(x), t))
    N = x.shape[0]
    for (name, key, p), scale in zip(net.parameters(), (N, N, 1, N)):
        layer_grads = grads[int(name.split(".")[0])]
        num = numeric_gradient(loss, p)
        assert_allclose(scale * layer_grads[key], num, rtol=1e-5, atol=1e-9, err_msg=name)


def test_float32_network_stays_float32():
    net = small_net(np.float32)
    out = net.forward(np.random.default_rng(0).standard_normal((2, 1, 5, 5)))  # float64 input
    assert out.dtype == np.float32
    grads = net.backward(mse_loss(out, np.zeros((2, 3))))
    assert all(v.dtype == np.float32 for g in grads for v in g.values())


def test_predict_in_chunks_equals_forward():
    net = small_net()
    x = np.random.default_rng(4).standard_normal((23, 1, 5, 5))
    full = net.forward(x)
    assert_allclose(net.predict(x, batch_size=5), full, rtol=1e-12)
    assert_allclose(net.predict(x), full, rtol=1e-12)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        net.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="must have a batch axis"):
        net.predict(np.float64(1.0))


def test_parameters_names_and_identity():
    net = small_net()
    names = [(n, k) for n, k, _ in net.parameters()]
    assert names == [("0.k", "dK"), ("0.b", "dB"), ("2.w", "dW"), ("2.b", "dB"), ("4.w", "dW"), ("4.b", "dB")]
    assert net.parameters()[0][2] is net.layers[0].k


def test_repr_len_indexing():
    net = Network([Conv2D(1, 4, 5), Flatten(), Dense(2304, 10), ReLU()])
    assert repr(net) == ("Network(\n  (0): Conv2D(1, 4, kernel_size=(5, 5), stride=(1, 1))\n  (1): Flatten()\n"
                         "  (2): Dense(n_in=2304, n_out=10)\n  (3): ReLU()\n)")
    assert len(net) == 4 and isinstance(net[1], Flatten) and list(net) == net.layers


def test_network_does_not_modify_inputs():
    """forward / backward leave x and dE_dY as they were (writable or not), and give the same results as on
    copies the network never saw."""
    net = small_net()
    x = np.random.default_rng(5).standard_normal((2, 1, 5, 5))
    x_before = x.copy()
    y = net.forward(x)
    dy = mse_loss(y, np.zeros((2, 3)))
    dy_before = dy.copy()
    grads = net.backward(dy)
    assert_array_equal(x, x_before)
    assert_array_equal(dy, dy_before)
    fresh = small_net()
    assert_array_equal(fresh.forward(x_before.copy()), y)
    fresh_grads = fresh.backward(dy_before.copy())
    assert len(grads) == len(fresh_grads) == len(net.layers)
    for g, f in zip(grads, fresh_grads):
        assert g.keys() == f.keys()
        for key in g:
            assert_array_equal(g[key], f[key])
    x.flags.writeable = False  # and read-only inputs are accepted
    dy.flags.writeable = False
    assert_array_equal(net.forward(x), y)
    net.backward(dy)
    assert_array_equal(x, x_before)
    assert_array_equal(dy, dy_before)


def test_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        Network([])
    with pytest.raises(TypeError, match=r"layer 1 \(3\) has no forward, backward, update method"):
        Network([ReLU(), 3])
    net = small_net()
    net.forward(np.ones((2, 1, 5, 5)))
    grads = net.backward(np.ones((2, 3)))
    with pytest.raises(ValueError, match="got 5 gradient dicts for 6 layers"):
        net.update(0.1, grads[:5])
    with pytest.raises(ValueError, match=r"Dense\(n_in=18, n_out=5\).*expected x of shape \(N, 18\), "
                                         r"got shape \(2, 32\)"):
        net.forward(np.ones((2, 1, 6, 6)))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        small_net().backward(np.ones((2, 3)))


# ---------------------------------------------------------------------------------------------
# update: Network.update(learning_rate, grads) and Layer.update(grads, learning_rate) name swapped or mistyped
# arguments; the learning rate is any finite real number
# ---------------------------------------------------------------------------------------------

def stepped_net():
    net = Network([Conv2D(1, 2, 2, seed=0), ReLU(), Flatten(), Dense(8, 3, seed=1)])
    y = net.forward(np.random.default_rng(0).standard_normal((4, 1, 3, 3)))
    return net, net.backward(np.ones(y.shape))


def params_of(net):
    return [p.copy() for _, _, p in net.parameters()]


def assert_unchanged(net, before):
    for (name, _, p), old in zip(net.parameters(), before):
        assert_array_equal(p, old, err_msg=name)


NET_CALL = r"Network\.update\(learning_rate, grads\): "


@pytest.mark.parametrize("args,exc,match", [
    # swapped: was "'float' object is not iterable"
    (lambda g: (g, 0.1), TypeError, NET_CALL + r"learning_rate must be a real number, got list; did you swap the "
                                              r"arguments\?"),
    (lambda g: (tuple(g), np.float32(0.1)), TypeError, r"got tuple; did you swap the arguments\?"),
    (lambda g: ("0.1", g), TypeError, NET_CALL + r"learning_rate must be a real number, got str$"),
    (lambda g: (None, g), TypeError, r"learning_rate must be a real number, got NoneType$"),
    (lambda g: (True, g), TypeError, r"learning_rate must be a real number, got bool$"),
    (lambda g: (np.array([0.1]), g), TypeError, r"learning_rate must be a real number, got ndarray$"),
    (lambda g: (0.1, 0.1), TypeError, NET_CALL + r"grads must be the list of per-layer dicts backward returned, "
                                                 r"got float"),
    (lambda g: (0.1, g[0]), TypeError, r"grads must be the list .* got dict"),
    (lambda g: (0.1, None), TypeError, r"grads must be the list .* got NoneType"),
    (lambda g: (float("nan"), g), ValueError, NET_CALL + r"learning_rate must be finite, got nan"),
    (lambda g: (np.inf, g), ValueError, r"learning_rate must be finite, got inf"),
    (lambda g: (-np.float32(np.inf), g), ValueError, r"learning_rate must be finite, got -inf"),
])
def test_network_update_names_swapped_and_bad_arguments_before_any_change(args, exc, match):
    net, grads = stepped_net()
    before = params_of(net)
    with pytest.raises(exc, match=match):
        net.update(*args(grads))
    assert_unchanged(net, before)


@pytest.mark.parametrize("layer", [Dense(8, 3, seed=1), ReLU(), MaxPool2D(2)], ids=repr)
@pytest.mark.parametrize("args,exc,match", [
    (lambda g: (0.1, g), TypeError, r"\.update\(grads, learning_rate\): learning_rate must be a real number, got "
                                    r"dict; did you swap the arguments\?"),
    (lambda g: (g, [0.1]), TypeError, r"learning_rate must be a real number, got list; did you swap"),
    (lambda g: (g, "0.1"), TypeError, r"learning_rate must be a real number, got str$"),
    (lambda g: ([g], 0.1), TypeError, r"\.update\(grads, learning_rate\): grads must be the dict backward "
                                      r"returned, got list"),
    (lambda g: (None, 0.1), TypeError, r"grads must be the dict backward returned, got NoneType"),
    (lambda g: (g, float("nan")), ValueError, r"learning_rate must be finite, got nan"),
    (lambda g: (g, -np.inf), ValueError, r"learning_rate must be finite, got -inf"),
])
def test_layer_update_names_swapped_and_bad_arguments(layer, args, exc, match):
    # layers without parameters used to accept anything in silence
    grads = {"dW": np.ones((8, 3)), "dB": np.ones(3)} if isinstance(layer, Dense) else {"dX": np.ones(1)}
    before = [p.copy() for _, _, p in layer.parameters()]
    with pytest.raises(exc, match=rf"{type(layer).__name__}{match}" if match.startswith(r"\.") else match):
        layer.update(*args(grads))
    for (name, _, p), old in zip(layer.parameters(), before):
        assert_array_equal(p, old, err_msg=name)


@pytest.mark.parametrize("lr", [0.5, np.float32(0.5), np.float64(0.5), np.array(0.5), 1, np.int64(1), 0, -0.5])
def test_any_finite_real_learning_rate_is_sgd(lr):
    # 0 leaves the parameters alone; a negative rate ascends the gradient (allowed, as p -= lr * g says)
    net, grads = stepped_net()
    before = params_of(net)
    net.update(lr, grads)
    rate = float(lr)
    for (name, key, p), old in zip(net.parameters(), before):
        i = int(name.split(".")[0])
        assert_allclose(p, old - rate * grads[i][key], rtol=1e-15, atol=1e-15, err_msg=name)  # axpy may fuse


def test_network_update_is_all_or_nothing():
    """A bad gradient dict of a later layer is refused before the earlier layers change (audit finding)."""
    net = Network([Dense(4, 3, seed=0), Sigmoid(), Dense(3, 2, seed=1)])  # every gradient nonzero
    x = np.ones((5, 4))
    grads = net.backward(net.forward(x) - 1.0)
    before = [p.copy() for layer in net.layers for _, _, p in layer.parameters()]
    bad = [dict(g) for g in grads]
    bad[2]["dW"] = np.zeros((2, 3))  # transposed
    with pytest.raises(ValueError, match=r"dW has shape \(2, 3\) but w has shape \(3, 2\)"):
        net.update(0.1, bad)
    missing = [dict(g) for g in grads]
    del missing[2]["dB"]
    with pytest.raises(ValueError, match="grads has no 'dB'"):
        net.update(0.1, missing)
    after = [p for layer in net.layers for _, _, p in layer.parameters()]
    for b, a in zip(before, after):
        assert_array_equal(a, b)
    net.update(0.1, grads)  # the good dicts still update: the last layer's bias gradient is mean(y - 1) != 0
    last_b = net.layers[2].b
    assert not np.array_equal(last_b, before[-1])
    assert_allclose(last_b, before[-1] - 0.1 * grads[2]["dB"])


@pytest.mark.parametrize("lr,exc,match", [
    (float("nan"), ValueError, r"^fit: learning_rate must be finite, got nan$"),
    (np.inf, ValueError, r"^fit: learning_rate must be finite"),
    ("0.1", TypeError, r"^fit: learning_rate must be a real number, got str$"),
    ([0.1], TypeError, r"^fit: learning_rate must be a real number, got list$"),
])
def test_fit_checks_the_learning_rate_before_training(lr, exc, match):
    """Refused at the call, before a forward and backward pass (which used to run first)."""
    from cnn_ext import fit

    net = Network([Dense(3, 2, seed=0)])
    calls = []
    forward = net.forward
    net.forward = lambda x: calls.append(1) or forward(x)
    with pytest.raises(exc, match=match):
        fit(net, np.ones((4, 3)), np.array([0, 1, 0, 1]), epochs=1, learning_rate=lr, progress=False)
    assert calls == []


def test_network_update_calls_a_layers_own_update_rule():
    """A layer that overrides update gets its dict and the rate; the others are plain SGD."""
    from cnn_ext.layers import Layer

    class Halving(Layer):  # a custom layer with its own update rule
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, x):
            return x

        def backward(self, dE_dY, need_dX=True):
            return {"dX": dE_dY}

        def update(self, grads, learning_rate):
            self.calls.append((grads, learning_rate))

    custom = Halving()
    net = Network([Dense(3, 2, seed=0), custom])
    grads = net.backward(net.forward(np.ones((4, 3))) - 1.0)
    b0 = net.layers[0].b.copy()
    net.update(0.5, grads)
    assert custom.calls == [(grads[1], 0.5)]
    assert_allclose(net.layers[0].b, b0 - 0.5 * grads[0]["dB"])


def test_call_is_forward_and_modes_reach_every_layer():
    import cnn_ext
    rng = np.random.default_rng(0)
    net = cnn_ext.Network([cnn_ext.Conv2D(1, 2, 3, seed=0), cnn_ext.Flatten(), cnn_ext.Dense(8, 3, seed=1)])
    x = rng.random((2, 1, 4, 4))
    np.testing.assert_array_equal(net(x), net.forward(x))
    assert net.training and all(layer.training for layer in net)
    assert net.eval() is net
    assert not net.training and not any(layer.training for layer in net)
    assert net.train() is net and all(layer.training for layer in net)
    with pytest.raises(TypeError, match="mode"):
        net.train("no")
    assert all(layer.training for layer in net)
