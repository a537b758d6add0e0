"""A ReLU right after a BatchNorm runs inside the BatchNorm's passes, one after a residual block in the pass of
its sum, and one right before a MaxPool2D inside the pool's passes (cnn_ext/layers/chain.py): bitwise the layers
one after the other, in Network and in Residual, forward and backward, both dtypes, train and eval; the pool
pair on every pooling path (the vector rows of 2- and 3-wide windows, the generic loops, overlapping windows)
and thread count."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import (AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, Residual,
                     Sigmoid, exact, softmax_cross_entropy)
from cnn_ext.layers import activations, chain
from cnn_ext.losses import ExactGradient


def _bits(a):
    """The bit patterns of a float array, NaN as one pattern: equal bits, not equal values (+0.0 vs -0.0), and a
    NaN wherever the other has one (IEEE leaves a NaN result's sign to the operand order the compiler picks)."""
    a = np.array(a)
    a[np.isnan(a)] = np.nan
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _conv_net(dtype, seed=0):
    return Network([Conv2D(2, 8, 3, padding=1, seed=seed, dtype=dtype), BatchNorm2D(8, dtype=dtype), ReLU(),
                    Residual.basic_block(8, 8, seed=seed + 1, dtype=dtype), ReLU(),
                    Residual.basic_block(8, 12, stride=2, seed=seed + 2, dtype=dtype), ReLU(),
                    Flatten(), Dense(12 * 5 * 5, 16, seed=seed + 3, dtype=dtype), BatchNorm1D(16, dtype=dtype),
                    ReLU(), Dense(16, 4, seed=seed + 4, dtype=dtype)])


def _one_by_one(layers, x, dy):
    """Each layer's forward, then each layer's backward, by hand (what the network did before pairing); an
    ExactGradient dy marks every layer's dE_dY, as Network does."""
    mark = exact if isinstance(dy, ExactGradient) else np.asarray
    for layer in layers:
        x = layer.forward(x)
    grads = []
    for layer in reversed(layers):
        g = layer.backward(mark(dy))
        grads.append(g)
        dy = g["dX"]
    return x, grads[::-1]


def _inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 2, 10, 10)).astype(dtype)
    x[0, 0, :3] = 0.0  # equal inputs: BatchNorm outputs exactly at 0 (and -0.0 from rounding) meet the ReLU
    labels = rng.integers(0, 4, 6)
    return x, labels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_paired_network_is_bitwise_the_layers_one_by_one(dtype, training):
    x, labels = _inputs(dtype)
    fused, plain = _conv_net(dtype), _conv_net(dtype)
    fused.train(training)
    plain.train(training)
    for _ in range(2):  # the second round starts from updated weights and running statistics
        out = fused.forward(x)
        d = exact(softmax_cross_entropy(out, labels)[1])
        grads = fused.backward(d)
        out_p, grads_p = _one_by_one(plain.layers, x, d)
        assert_array_equal(_bits(out), _bits(out_p))
        for i, (g, gp) in enumerate(zip(grads, grads_p)):
            for key, value in g.items():
                if value is not None:
                    assert_array_equal(_bits(value), _bits(gp[key]), err_msg=f"layer {i} {key}")
        for (name, _, p), (_, _, pp) in zip(fused.parameters(), plain.parameters()):
            assert_array_equal(_bits(p), _bits(pp), err_msg=name)
        for (name, b), (_, bp) in zip(fused.buffers(), plain.buffers()):
            assert_array_equal(b, bp, err_msg=name)
        fused.update(0.05, grads)
        plain.update(0.05, grads_p)
    # the paired ReLUs' dicts are empty: their dX is never made; the others keep theirs
    assert grads[2] == {} and grads[10] == {}
    assert set(grads[4]) == {"dX"}


def _relu_calls(monkeypatch):
    """The list every ReLU's own forward ("_f") and derivative ("_df") append their names to from now on."""
    calls = []
    for name in ("_f", "_df"):
        real = getattr(activations.ReLU, name)
        monkeypatch.setattr(activations.ReLU, name,
                            lambda self, *a, _real=real, _name=name: calls.append(_name) or _real(self, *a))
    return calls


def _step(net, x, labels):
    net.backward(exact(softmax_cross_entropy(net.forward(x), labels)[1]))


def test_pairing_skips_the_relu_kernels(monkeypatch):
    """The mechanism: a paired ReLU's own forward and derivative are never called (they are when pairing is off)."""
    calls = _relu_calls(monkeypatch)
    x, labels = _inputs(np.float32)
    net = _conv_net(np.float32)
    _step(net, x, labels)
    # every ReLU's forward runs in the pass before it; the two after residual blocks (a sum, not a BatchNorm)
    # are differentiated by their own code
    assert calls.count("_f") == 0 and calls.count("_df") == 2
    calls.clear()
    monkeypatch.setattr(chain, "_relu_partner", lambda layers, j: None)
    _step(net, x, labels)
    assert calls.count("_f") == 6 and calls.count("_df") == 6


def test_patched_or_subclassed_layers_are_run_as_they_are():
    seen = []

    class MyReLU(ReLU):
        def forward(self, x):
            seen.append("sub")
            return super().forward(x)

    relu = ReLU()
    real = relu.forward
    relu.forward = lambda x: seen.append("patched") or real(x)
    x = np.random.default_rng(1).standard_normal((4, 3, 5, 5))
    Network([BatchNorm2D(3), relu, BatchNorm2D(3), MyReLU()]).forward(x)
    assert seen == ["patched", "sub"]


def test_paired_backward_after_a_forward_by_hand_and_layer_backward_after_a_paired_forward():
    """The ReLU's cache means the same whichever way the pair ran forward."""
    x, _ = _inputs(np.float64)
    dy = np.ones((6, 4))
    _, grads_ref = _one_by_one(_conv_net(np.float64).layers, x, dy)
    net = _conv_net(np.float64)
    h = x
    for layer in net.layers:  # forward by hand, then the network's paired backward
        h = layer.forward(h)
    grads = net.backward(dy)
    for i in (0, 1, 3):
        for key in grads[i]:
            assert_array_equal(grads[i][key], grads_ref[i][key], err_msg=f"layer {i} {key}")
    net.forward(x)  # the network's paired forward, then every layer's own backward
    for i in range(len(net.layers) - 1, -1, -1):
        g = net.layers[i].backward(dy)
        assert_array_equal(g["dX"], grads_ref[i]["dX"], err_msg=f"layer {i}")
        dy = g["dX"]


def test_paired_backward_refuses_a_wrong_gradient_shape_and_changes_nothing():
    x = np.random.default_rng(2).standard_normal((5, 3, 4, 4))
    bn = BatchNorm2D(3)
    net = Network([bn, ReLU()])
    net.forward(x)
    gamma = bn.gamma.copy()
    with pytest.raises(ValueError, match=r"dE_dY has shape \(5, 3, 4, 3\)"):
        net.backward(np.ones((5, 3, 4, 3)))
    assert_array_equal(bn.gamma, gamma)


def test_pair_at_the_end_and_alone():
    """A network that is just the pair, and a ReLU whose BatchNorm is the last layer of a residual branch."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 5))
    net, ref = Network([BatchNorm1D(5), ReLU()]), [BatchNorm1D(5), ReLU()]
    dy = rng.standard_normal((7, 5))
    out = net.forward(x)
    grads = net.backward(dy)
    out_ref, grads_ref = _one_by_one(ref, x, dy)
    assert_array_equal(out, out_ref)
    assert_array_equal(grads[0]["dX"], grads_ref[0]["dX"])
    assert_array_equal(grads[0]["dGamma"], grads_ref[0]["dGamma"])
    # BatchNorm then Sigmoid: not a pair; the Sigmoid keeps its own dict
    net = Network([BatchNorm1D(5), Sigmoid()])
    net.forward(x)
    assert set(net.backward(dy)[1]) == {"dX"}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_paired_kernels_keep_the_relu_gradient_edge_values(dtype, training):
    """dy * [z > 0] as a product: -0.0 for masked negative dy, NaN for masked inf; z's NaN and ±0 are masked;
    rows longer than one stack run of the kernel (L = 1100) and runs shorter than the sums' interleave."""
    rng = np.random.default_rng(4)
    for shape in [(3, 4, 1100), (5, 2, 3)]:
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        dy.flat[:6] = [np.inf, -np.inf, -1.0, -0.0, np.nan, 2.0]
        bn, relu = BatchNorm1D(shape[1], dtype=dtype), ReLU()
        bn.training = training
        y = bn.forward(x)
        y.flat[:6] = [-1.0, 0.0, -0.0, -2.0, 3.0, np.nan]  # the layer's output, edited where dy is special
        relu.forward(y)
        with np.errstate(invalid="ignore"):  # NumPy's inf * 0 in the reference, as the kernels' is silent
            expected = bn.backward(relu.backward(dy)["dX"])
        got = bn._backward(dy, relu)
        for key in expected:
            assert_array_equal(_bits(got[key]), _bits(expected[key]), err_msg=f"{shape} {key}")


# -- a ReLU right before a MaxPool2D ----------------------------------------------------------------------


def _assert_bitwise(got, expected, msg=""):
    assert got.shape == expected.shape and got.dtype == expected.dtype, msg
    assert_array_equal(_bits(got), _bits(expected), err_msg=msg)


def _pool_net(dtype, seed=0):
    # 2x2 (vector rows), 3x3 stride 2 (overlapping, generic), (2, 3) stride (1, 3): every pooling path
    return Network([Conv2D(2, 6, 3, padding=1, seed=seed, dtype=dtype), ReLU(), MaxPool2D(2),
                    Conv2D(6, 8, 3, padding=1, seed=seed + 1, dtype=dtype), ReLU(), MaxPool2D(3, stride=2),
                    Conv2D(8, 8, 1, seed=seed + 2, dtype=dtype), ReLU(), MaxPool2D((2, 3), stride=(1, 3)),
                    Flatten(), Dense(8 * 2 * 1, 4, seed=seed + 3, dtype=dtype)])


def _pool_inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5, 2, 16, 16)).astype(dtype)
    x[0] = 0.0  # zero planes: conv outputs equal to the bias, windows of ties
    return x, rng.integers(0, 4, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False])
def test_pooled_relu_network_is_bitwise_the_layers_one_by_one(dtype, training):
    x, labels = _pool_inputs(dtype)
    fused, plain = _pool_net(dtype), _pool_net(dtype)
    for layer in fused.layers[::3] + plain.layers[::3]:  # negative biases: whole windows below zero
        if isinstance(layer, Conv2D):
            layer.b -= 0.3
    fused.train(training)
    plain.train(training)
    for _ in range(2):  # the second round from updated weights
        out = fused.forward(x)
        d = exact(softmax_cross_entropy(out, labels)[1])
        grads = fused.backward(d)
        out_p, grads_p = _one_by_one(plain.layers, x, d)
        _assert_bitwise(out, out_p)
        for i, (g, gp) in enumerate(zip(grads, grads_p)):
            for key, value in g.items():
                _assert_bitwise(value, gp[key], f"layer {i} {key}")
        fused.update(0.05, grads)
        plain.update(0.05, grads_p)
    # each pool's dict is empty (its dX, the ReLU output's gradient, is never made); each ReLU has its dX
    assert grads[2] == {} and grads[5] == {} and grads[8] == {}
    assert set(grads[1]) == set(grads[4]) == set(grads[7]) == {"dX"}


def test_pool_pairing_skips_the_relu_and_its_output(monkeypatch):
    """The mechanism: the paired ReLUs' own forward and derivative never run, and the pools get the ReLUs'
    inputs, not their outputs; with the pairing switched off both happen again."""
    calls = _relu_calls(monkeypatch)
    x, labels = _pool_inputs(np.float32)
    net = _pool_net(np.float32)
    _step(net, x, labels)
    assert calls == []
    assert net.layers[2]._x is net.layers[1]._x  # the pool read the conv output itself
    monkeypatch.setattr(chain, "_pools_relu", lambda layers, j: False)
    _step(net, x, labels)
    assert calls.count("_f") == 3 and calls.count("_df") == 3
    assert net.layers[2]._x is not net.layers[1]._x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("window", [(2, None), (3, None), ((2, 3), None), (3, 2), (2, 1), ((3, 1), (2, 1)),
                                    ((1, 4), (1, 3))])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_pooled_relu_keeps_every_edge_value(dtype, window, threads, restore_threads):
    """Windows all negative (ReLU's +0s: the first wins), holding -0.0, 0.0, ties, NaN and inf; gradients
    -0.0, negative (masked: -0.0), inf and NaN; rows long enough for the vector rows and short ones."""
    rng = np.random.default_rng(5)
    for shape in [(3, 4, 9, 40), (2, 3, 7, 5)]:
        x = rng.standard_normal(shape).astype(dtype)
        x[0, 0] = -np.abs(x[0, 0])  # a plane without a positive value
        x[0, 1, :, ::2] = -0.0
        x[0, 2, :, 1::3] = 0.0
        x[1, 0, 1, :4] = [np.nan, 2.0, np.inf, np.nan]
        x[1, 1] = np.round(x[1, 1])  # ties
        pool, relu = MaxPool2D(*window), ReLU()
        cnn_ext.set_num_threads(threads)
        y_ref = pool.forward(relu.forward(x))
        dy = rng.standard_normal(y_ref.shape).astype(dtype)
        dy.flat[:5] = [-0.0, -1.0, np.inf, np.nan, -np.inf]
        with np.errstate(invalid="ignore"):  # NumPy's inf * 0 in the reference; the kernel's is silent
            dx_ref = relu.backward(pool.backward(dy)["dX"])["dX"]
        fused_pool, fused_relu = MaxPool2D(*window), ReLU()
        y = fused_pool._forward(x, fused_relu)
        dx = fused_pool._backward(dy, fused_relu)["dX"]
        _assert_bitwise(y, y_ref, f"{shape} y")
        assert_array_equal(fused_pool._idx, pool._idx)
        _assert_bitwise(dx, dx_ref, f"{shape} dX")


def test_pool_pair_caches_serve_either_backward():
    """After a paired forward each layer's own backward works, and after forwards by hand the network's
    backward runs the layers' own: bitwise the same gradients every way."""
    x, _ = _pool_inputs(np.float64)
    dy = np.random.default_rng(6).standard_normal((5, 4))
    _, grads_ref = _one_by_one(_pool_net(np.float64).layers, x, dy)
    net = _pool_net(np.float64)
    net.forward(x)
    d = dy
    for i in range(len(net.layers) - 1, -1, -1):
        g = net.layers[i].backward(d)
        _assert_bitwise(g["dX"], grads_ref[i]["dX"], f"layer {i}")
        d = g["dX"]
    h = x
    for layer in net.layers:
        h = layer.forward(h)
    grads = net.backward(dy)
    assert set(grads[2]) == {"dX"}  # nothing paired: every layer ran its own forward
    for i, g in enumerate(grads):
        for key in g:
            _assert_bitwise(g[key], grads_ref[i][key], f"layer {i} {key}")


def test_a_relu_run_again_alone_unpairs_the_backward():
    """Forward through the network, then the ReLU alone on another input: the pool's backward is no longer
    the pair's, and the ReLU differentiates what it last saw."""
    x, _ = _pool_inputs(np.float64)
    net = _pool_net(np.float64)
    net.forward(x)
    relu, pool = net.layers[1], net.layers[2]
    other = np.random.default_rng(7).standard_normal(relu._x.shape)
    relu.forward(other)
    dy = np.ones(pool._y_shape)
    grads, _ = chain.backward_chain([relu, pool], dy, exact=False)
    assert set(grads[2 - 1]) == {"dX"} and set(grads[1]) == {"dX"}
    expected = ReLU()
    expected.forward(other)
    _assert_bitwise(grads[0]["dX"], expected.backward(pool.backward(dy)["dX"])["dX"])


def test_refused_paired_forward_changes_nothing():
    relu, pool = ReLU(), MaxPool2D(2)
    net = Network([relu, pool])
    x = np.random.default_rng(8).standard_normal((2, 3, 6, 6))
    net.forward(x)
    before = (relu._x, relu._y_shape, pool._x, pool._idx)
    with pytest.raises(ValueError, match=r"MaxPool2D.*input of shape \(3, 6, 6\)"):
        net.forward(x[0])
    with pytest.raises(ValueError, match=r"MaxPool2D.*input of shape \(2, 3, 1, 6\)"):
        net.forward(x[:, :, :1])
    assert (relu._x, relu._y_shape, pool._x, pool._idx) == before
    with pytest.raises(ValueError, match=r"dE_dY has shape \(2, 3, 3, 2\)"):
        net.backward(np.ones((2, 3, 3, 2)))


def test_only_maxpool_itself_pairs():
    """AvgPool2D, subclasses, patched instances and a ReLU after a BatchNorm keep their own passes."""
    class MyPool(MaxPool2D):
        pass

    x = np.random.default_rng(9).standard_normal((2, 3, 6, 6))
    patched = MaxPool2D(2)
    patched.forward = patched.forward  # an instance attribute, as a hook would set
    for layers in ([ReLU(), AvgPool2D(2)], [ReLU(), MyPool(2)], [ReLU(), patched]):
        Network(layers).forward(x)
        assert layers[0]._y is not None and layers[1]._x is layers[0]._y, type(layers[1]).__name__
    bn_relu_pool = [BatchNorm2D(3), ReLU(), MaxPool2D(2)]
    Network(bn_relu_pool).forward(x)  # the BatchNorm takes its ReLU; the pool pools that ReLU's output
    assert bn_relu_pool[2]._x is bn_relu_pool[1]._y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_pair_inside_a_residual_branch(dtype):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((3, 4, 8, 8)).astype(dtype)

    def block():
        return Residual([Conv2D(4, 4, 3, padding=1, seed=1, dtype=dtype), ReLU(), MaxPool2D(3, stride=1),
                         Conv2D(4, 4, 3, padding=2, seed=2, dtype=dtype)])

    fused, plain = block(), block()
    out = fused.forward(x)
    dy = rng.standard_normal(out.shape).astype(dtype)
    g = fused.backward(dy)
    h = x
    for layer in plain.layers:
        h = layer.forward(h)
    _assert_bitwise(out, h + x)
    d = dy
    for layer in reversed(plain.layers):
        d = layer.backward(d)["dX"]
    _assert_bitwise(g["dX"], d + dy)
    assert fused.layers[2]._relu is fused.layers[1]
