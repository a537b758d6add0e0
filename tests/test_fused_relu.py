"""A ReLU right after a BatchNorm runs inside the BatchNorm's passes, and one after a residual block in the pass
of its sum (cnn_ext/layers/chain.py): bitwise the layers one after the other, in Network and in Residual, forward
and backward, both dtypes, train and eval."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, Network, ReLU, Residual, Sigmoid, exact,
                     softmax_cross_entropy)
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


def test_pairing_skips_the_relu_kernels(monkeypatch):
    """The mechanism: a paired ReLU's own forward and derivative are never called (they are when pairing is off)."""
    calls = []
    for name in ("_f", "_df"):
        real = getattr(activations.ReLU, name)
        monkeypatch.setattr(activations.ReLU, name,
                            lambda self, *a, _real=real, _name=name: calls.append(_name) or _real(self, *a))
    x, labels = _inputs(np.float32)
    net = _conv_net(np.float32)
    net.backward(exact(softmax_cross_entropy(net.forward(x), labels)[1]))
    # every ReLU's forward runs in the pass before it; the two after residual blocks (a sum, not a BatchNorm)
    # are differentiated by their own code
    assert calls.count("_f") == 0 and calls.count("_df") == 2
    calls.clear()
    monkeypatch.setattr(chain, "_relu_partner", lambda layers, j: None)
    net.backward(exact(softmax_cross_entropy(net.forward(x), labels)[1]))
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
