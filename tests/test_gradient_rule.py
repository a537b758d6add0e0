"""The gradient rule: the tutorial's numbers for a plain dE_dY, the exact gradient of the loss (PyTorch's autograd)
for an ExactGradient; gradient_check strict; no silent mixing of the two."""
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext import Conv2D, Dense, Flatten, Layer, MaxPool2D, Network, ReLU, mse_loss, softmax_cross_entropy
from cnn_ext.gradcheck import GradientCheckError, gradient_check
from cnn_ext.layers.base import Gradients
from cnn_ext.losses import ExactGradient, exact
from cnn_ext.network import GradientRuleWarning
from cnn_ext.optim import SGD, Adam

N, C_IN, C_OUT, H, W, K, CLASSES = 5, 2, 3, 9, 8, 3, 4
GEOMETRIES = {"plain": dict(stride=1, padding="valid"), "stride2_pad1": dict(stride=2, padding=1)}
TOL = {np.float32: dict(rtol=2e-4, atol=2e-6), np.float64: dict(rtol=1e-10, atol=1e-13)}


def _network(dtype, geometry):
    conv = Conv2D(C_IN, C_OUT, K, seed=0, dtype=dtype, init="he_normal", **GEOMETRIES[geometry])
    conv.b[...] = np.linspace(-0.3, 0.4, C_OUT)  # non-zero biases: a bias gradient off by N shows
    x = _inputs(dtype)
    with np.errstate(all="ignore"):
        y = conv.forward(x)
    feat = C_OUT * (y.shape[2] // 2) * (y.shape[3] // 2)
    dense = Dense(feat, CLASSES, seed=1, dtype=dtype)
    return Network([conv, ReLU(), MaxPool2D(2), Flatten(), dense])


def _inputs(dtype, seed=0):
    return np.random.default_rng(seed).standard_normal((N, C_IN, H, W)).astype(dtype)


def _labels():
    return np.array([0, 3, 1, 2, 3])


def _loss(name, out, labels):
    """(loss value, dE_dY flagged exact): softmax cross-entropy (mean) or MSE (mean) against one-hot labels."""
    if name == "softmax_cross_entropy":
        return softmax_cross_entropy(out, labels)
    t = np.eye(CLASSES, dtype=out.dtype)[labels]
    return float(np.mean((out.astype(np.float64) - t) ** 2)), exact(mse_loss(out, t))


def _torch_grads(torch, net, x, labels, loss_name):
    """dL/dparam and dL/dx from PyTorch's autograd on the same network, weights, batch and loss."""
    conv, dense = net.layers[0], net.layers[4]
    as_t = lambda a: torch.tensor(np.array(a), requires_grad=True)  # noqa: E731
    k, b, w, bd, xt = as_t(conv.k), as_t(conv.b), as_t(dense.w), as_t(dense.b), as_t(x)
    pad = conv.padding if isinstance(conv.padding, int) else 0
    y = torch.nn.functional.conv2d(xt, k, b, stride=conv.stride, padding=pad)
    y = torch.nn.functional.max_pool2d(torch.relu(y), 2)
    out = y.flatten(1) @ w + bd
    if loss_name == "softmax_cross_entropy":
        loss = torch.nn.functional.cross_entropy(out, torch.tensor(labels))
    else:
        target = torch.nn.functional.one_hot(torch.tensor(labels), CLASSES).to(out.dtype)
        loss = torch.nn.MSELoss()(out, target)
    loss.backward()
    return {"0.k": k.grad.numpy(), "0.b": b.grad.numpy(), "4.w": w.grad.numpy(), "4.b": bd.grad.numpy(),
            "dX": xt.grad.numpy()}


def _our_grads(net, x, labels, loss_name):
    _, dy = _loss(loss_name, net.forward(x), labels)
    assert isinstance(dy, ExactGradient)
    grads = net.backward(dy)
    out = {name: grads[int(name.split(".")[0])][key] for name, key, _ in net.parameters()}
    # the input gradient: the first layer's dX, which Network.backward skips
    out["dX"] = net.layers[0].backward(grads[1]["dX"].view(ExactGradient))["dX"]
    return out, grads


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("loss_name", ["softmax_cross_entropy", "mse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_rule_matches_pytorch_autograd(dtype, loss_name, geometry):
    torch = pytest.importorskip("torch")
    net = _network(dtype, geometry)
    x, labels = _inputs(dtype), _labels()
    ours, grads = _our_grads(net, x, labels, loss_name)
    theirs = _torch_grads(torch, net, x, labels, loss_name)
    assert all(g.rule == "exact" for g in grads if isinstance(g, Gradients))
    for name, want in theirs.items():
        assert ours[name].dtype == dtype, name
        assert_allclose(ours[name], want, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
@pytest.mark.parametrize("loss_name", ["softmax_cross_entropy", "mse"])
def test_exact_rule_passes_strict_finite_differences_on_every_parameter(loss_name, geometry):
    net = _network(np.float64, geometry)
    labels = _labels()

    def loss(y):
        return _loss(loss_name, y, labels)

    report = gradient_check(net, _inputs(np.float64), loss=loss, rtol=1e-5, atol=1e-8)
    assert [r["name"] for r in report.results] == ["0.k", "0.b", "4.w", "4.b", "dX"]
    assert all(r["reduction"] in ("sum", "none") and r["entries"] > 0 for r in report.results)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tutorial_rule_is_unchanged_and_exact_is_N_times_its_means(dtype):
    net = _network(dtype, "plain")
    x = _inputs(dtype)
    out = net.forward(x)
    dy = mse_loss(out, np.zeros_like(out))
    assert type(dy) is np.ndarray  # the tutorial's mse_loss: a plain array, the tutorial's rule
    tut = [dict(g) for g in net.backward(dy)]
    ex = net.backward(exact(dy))
    assert net.backward(dy)[0].rule == "tutorial" and ex[0].rule == "exact"
    rtol = TOL[dtype]["rtol"]
    assert_allclose(ex[0]["dK"], N * tut[0]["dK"], rtol=rtol, atol=1e-12)
    assert_allclose(ex[0]["dB"], N * tut[0]["dB"], rtol=rtol, atol=1e-12)
    assert_array_equal(ex[4]["dW"], tut[4]["dW"])      # a batch sum under both rules
    assert_allclose(ex[4]["dB"], N * tut[4]["dB"], rtol=rtol, atol=1e-12)
    assert_array_equal(ex[4]["dX"], tut[4]["dX"])      # dX is never averaged


def test_arithmetic_on_an_exact_gradient_gives_a_plain_array():
    _, dy = softmax_cross_entropy(np.zeros((2, 3)), [0, 1])
    assert isinstance(dy, ExactGradient) and type(2 * dy) is np.ndarray
    assert exact(dy) is dy and type(np.asarray(dy)) is np.ndarray
    with pytest.raises(TypeError, match="exact: dE_dY must hold real numbers, got dtype complex"):
        exact(np.zeros(2, complex))


# ---- gradient_check is strict -------------------------------------------------------------------------------

class MeanBiasDense(Dense):
    """dB as the batch mean whatever the rule: off by the constant factor N."""

    def backward(self, dE_dY, **kw):
        grads = super().backward(dE_dY, **kw)
        grads["dB"] = np.asarray(dE_dY).mean(axis=0)
        return grads


class OneEntryOffConv(Conv2D):
    """dK right except one entry, 1 % off."""

    def backward(self, dE_dY, **kw):
        grads = super().backward(dE_dY, **kw)
        grads["dK"][0, 0, 0, 0] *= 1.01
        return grads


def test_gradient_check_fails_a_constant_factor_and_a_single_entry():
    x = np.random.default_rng(1).standard_normal((4, 3))
    with pytest.raises(GradientCheckError) as info:
        gradient_check(MeanBiasDense(3, 2, seed=0), x, loss="random_linear")
    assert not info.value.report["b"]["passed"] and info.value.report["w"]["passed"]
    report = gradient_check(OneEntryOffConv(1, 2, 3, seed=0), _inputs(np.float64)[:, :1], loss="random_linear",
                            raise_on_failure=False)
    assert not report["k"]["passed"] and report["b"]["passed"] and report["dX"]["passed"]
    # scaling a whole gradient by 1 + 1e-3 fails too
    class Scaled(Dense):
        def backward(self, dE_dY, **kw):
            grads = super().backward(dE_dY, **kw)
            grads["dW"] = grads["dW"] * 1.001
            return grads
    assert not gradient_check(Scaled(3, 2, seed=0), x, loss="random_linear", raise_on_failure=False)["w"]["passed"]


def test_gradient_check_tutorial_rule_checks_the_tutorials_factors():
    net = _network(np.float64, "stride2_pad1")
    report = gradient_check(net, _inputs(np.float64), loss="random_linear", rule="tutorial")
    assert [r["reduction"] for r in report.results] == ["mean", "mean", "sum", "mean", "none"]
    # a layer that keeps the tutorial's means under the exact rule fails the default, strict check
    with pytest.raises(GradientCheckError, match="0.k"):
        _tutorial_grads_under_exact_check()


def _tutorial_grads_under_exact_check():
    """A layer that ignores the flag (tutorial's means always) fails the default, strict check."""
    class TutorialConv(Conv2D):
        def backward(self, dE_dY, **kw):
            return super().backward(np.asarray(dE_dY), **kw)
    net = Network([TutorialConv(1, 2, 3, seed=0), Flatten()])
    gradient_check(net, _inputs(np.float64)[:, :1], loss="random_linear", max_entries=4)


# ---- no silent mixing -----------------------------------------------------------------------------------------

def test_optimizers_refuse_tutorial_gradients_and_mixed_ones():
    net = _network(np.float64, "plain")
    out = net.forward(_inputs(np.float64))
    tutorial = net.backward(mse_loss(out, np.zeros_like(out)))
    exact_grads = net.backward(exact(mse_loss(out, np.zeros_like(out))))
    before = [p.copy() for _, _, p in net.parameters()]
    for opt in (SGD(0.1, momentum=0.9), Adam()):
        with pytest.raises(ValueError, match=r"tutorial's rule .* cnn_ext.losses.exact\(dE_dY\)"):
            opt.step(net, tutorial)
        mixed = list(exact_grads)
        mixed[0] = tutorial[0]
        with pytest.raises(ValueError, match="mix the exact and the tutorial's rule"):
            opt.step(net, mixed)
        assert opt.steps == 0 and opt.state(net.layers[0].k) == {}
    with pytest.raises(ValueError, match="mix the exact and the tutorial's rule"):
        net.update(0.1, mixed)
    for (_, _, p), p0 in zip(net.parameters(), before):
        assert_array_equal(p, p0)
    # one rule throughout: both go through
    net.update(0.1, tutorial)
    SGD(0.1).step(net, exact_grads)


def test_a_custom_layer_with_parameters_warns_under_the_exact_rule_until_it_says_it_follows_it():
    class Scale(Layer):
        def __init__(self):
            super().__init__()
            self.s = np.array([2.0])

        def parameters(self):
            return [("s", "dS", self.s)]

        def forward(self, x):
            self._x = x
            return x * self.s

        def backward(self, dE_dY):
            return {"dS": np.array([np.sum(np.asarray(dE_dY) * self._x)]), "dX": np.asarray(dE_dY) * self.s}

    net = Network([Dense(3, 2, seed=0), Scale()])
    out = net.forward(np.ones((2, 3)))
    with pytest.warns(GradientRuleWarning, match=r"layer 1 .* set exact_gradients = True"):
        net.backward(softmax_cross_entropy(out, [0, 1])[1])
    Scale.exact_gradients = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads = net.backward(softmax_cross_entropy(out, [0, 1])[1])
    assert grads[0].rule == "exact"  # the flag reached the layer below the custom one
