"""Network: chaining, gradient order, skipping the first layer's dX, SGD update, predict, parameters, repr,
finite differences through a whole conv net, and error paths."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from cnn_ext import Conv2D, Dense, Flatten, Layer, Network, ReLU, Sigmoid, Tanh, mse_loss


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
        num = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + 1e-6
            fp = loss()
            p[i] = old - 1e-6
            fm = loss()
            p[i] = old
            num[i] = (fp - fm) / 2e-6
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
    net = small_net()
    x = np.random.default_rng(5).standard_normal((2, 1, 5, 5))
    x.flags.writeable = False
    dy = mse_loss(net.forward(x), np.zeros((2, 3)))
    dy.flags.writeable = False
    net.backward(dy)


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
