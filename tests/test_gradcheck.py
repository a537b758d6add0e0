"""gradient_check passes on correct layers and networks and fails on deliberately wrong ones."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import (
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    LeakyReLU,
    MaxPool2D,
    Network,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    softmax_cross_entropy,
)
from cnn_ext.gradcheck import GradientCheckError, gradient_check


class RotatedKernelGradConv(Conv2D):
    """The tutorial's bug: dK rotated by 180° (correlate2d with swapped operands)."""

    def backward(self, dE_dY, **kw):
        grads = super().backward(dE_dY, **kw)
        grads["dK"] = grads["dK"][:, :, ::-1, ::-1].copy()
        return grads


class WrongMaskReLU(ReLU):
    """dX masked with x >= 1 instead of x > 0."""

    def _df(self, x, y, dy):
        return np.where(x > 1, dy, 0)


class SummedBiasDense(Dense):
    """dB as a batch sum x 2: neither the sum nor the mean convention."""

    def backward(self, dE_dY, **kw):
        grads = super().backward(dE_dY, **kw)
        grads["dB"] = 2 * np.asarray(dE_dY).sum(axis=0)
        return grads


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("layer, shape", [
    (Conv2D(2, 3, (3, 2), seed=0), (2, 2, 5, 6)),
    (Conv2D(2, 2, 3, stride=2, padding=1, seed=1, dtype=np.float32), (2, 2, 7, 6)),
    (Conv2D(1, 2, 4, padding="same", seed=2), (3, 1, 5, 5)),
    (Dense(4, 3, seed=0), (5, 4)),
    (Sigmoid(), (3, 4)),
    (Tanh(), (3, 4)),
    (Softmax(), (3, 5)),
    (LeakyReLU(0.1), (3, 4)),
    (MaxPool2D(2), (2, 2, 4, 5)),
    (MaxPool2D(3, stride=2), (1, 2, 7, 7)),
    (AvgPool2D((2, 3), stride=1), (2, 1, 4, 5)),
    (Flatten(), (2, 3, 2)),
])
def test_correct_layers_pass(layer, shape):
    report = gradient_check(layer, _x(shape), loss="random_linear", seed=3)
    assert report.passed
    assert report["dX"]["entries"] == int(np.prod(shape)) and report["dX"]["max_abs_error"] < 1e-7
    names = [r["name"] for r in report.results]
    assert names == [name for name, _, _ in layer.parameters()] + ["dX"]


def test_network_with_softmax_cross_entropy_and_conventions_reported():
    net = Network([Conv2D(1, 2, 3, padding="same", seed=0, dtype=np.float32), Tanh(), AvgPool2D(2), Flatten(),
                   Dense(2 * 3 * 3, 4, seed=1, dtype=np.float32)])
    labels = np.array([0, 3, 1])
    w_before = net.layers[4].w.copy()
    report = gradient_check(net, _x((3, 1, 6, 7)), loss=lambda y: softmax_cross_entropy(y, labels))
    assert report.passed
    assert [r["name"] for r in report.results] == ["0.k", "0.b", "4.w", "4.b", "dX"]
    # strict: the exact gradient of the loss for every parameter (the rule of softmax_cross_entropy's gradient)
    assert [r["reduction"] for r in report.results] == ["sum", "sum", "sum", "sum", "none"]
    assert net.layers[0].k.dtype == np.float32          # the model given was not converted ...
    assert_array_equal(net.layers[4].w, w_before)     # ... nor perturbed
    # the tutorial's rule: Conv2D dK/dB and Dense dB batch means, Dense dW a batch sum, each checked as such
    report = gradient_check(net, _x((3, 1, 6, 7)), rule="tutorial", max_entries=8)
    assert [r["reduction"] for r in report.results] == ["mean", "mean", "sum", "mean", "none"]


def test_rotated_kernel_gradient_fails():
    layer = RotatedKernelGradConv(2, 2, 3, seed=0)
    with pytest.raises(GradientCheckError) as info:
        gradient_check(layer, _x((2, 2, 6, 6)))
    report = info.value.report
    assert not report["k"]["passed"] and report["k"]["max_rel_error"] > 0.1
    assert report["b"]["passed"] and report["dX"]["passed"]
    assert "k " in str(info.value) and "NO" in str(info.value)
    # the same check on the correct layer passes
    assert gradient_check(Conv2D(2, 2, 3, seed=0), _x((2, 2, 6, 6))).passed


def test_wrong_layers_inside_a_network_fail_and_are_named():
    net = Network([Dense(4, 6, seed=0), WrongMaskReLU(), SummedBiasDense(6, 2, seed=1), Sigmoid()])
    report = gradient_check(net, _x((4, 4), seed=1) * 2, raise_on_failure=False)
    assert not report.passed
    failed = {r["name"] for r in report.results if not r["passed"]}
    assert "2.b" in failed and "0.w" in failed and "dX" in failed  # the bad mask corrupts everything below it
    assert report["2.w"]["passed"]


def test_max_entries_subsamples():
    layer = Dense(30, 20, seed=0)
    report = gradient_check(layer, _x((3, 30)), max_entries=25, seed=1)
    assert [r["entries"] for r in report.results] == [25, 20, 25]
    assert report.passed


def test_argument_errors():
    with pytest.raises(ValueError, match="loss must be"):
        gradient_check(Tanh(), _x((2, 2)), loss="nope")
    with pytest.raises(ValueError, match="rule must be one of"):
        gradient_check(Tanh(), _x((2, 2)), rule="auto")
    with pytest.raises(ValueError, match="eps must be > 0"):
        gradient_check(Tanh(), _x((2, 2)), eps=0)
    with pytest.raises(ValueError, match="max_entries must be None or a positive int"):
        gradient_check(Tanh(), _x((2, 2)), max_entries=0)
    with pytest.raises(ValueError, match="x must be a batch"):
        gradient_check(Tanh(), 1.0)
    # an empty batch was refused as "parameter arrays must be contiguous", which named neither x nor its shape
    with pytest.raises(ValueError, match=r"x must hold at least one input value, got shape \(0, 3\)"):
        gradient_check(Dense(3, 2, seed=0), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"x must hold at least one input value, got shape \(2, 0\)"):
        gradient_check(Tanh(), np.zeros((2, 0)))
    # an infinite step gave a failure report of NaN errors instead of an argument error
    with pytest.raises(ValueError, match="eps must be finite"):
        gradient_check(Tanh(), _x((2, 2)), eps=float("inf"))
    # not a model: an AttributeError from deep inside before
    for bad in (object(), None, "Tanh", [Tanh()]):
        with pytest.raises(TypeError, match="model must be a cnn_ext Network or a layer"):
            gradient_check(bad, _x((2, 2)))

    class NoDX(Tanh):
        def backward(self, dE_dY):
            return {}

    with pytest.raises(ValueError, match="returned no 'dX'"):
        gradient_check(NoDX(), _x((2, 2)))
