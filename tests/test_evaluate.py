"""cnn_ext.evaluate: the loss and the accuracy of a whole data set, in evaluation mode, putting back the modes."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext import Dense, Network, evaluate, get_current_accuracy, mse, softmax_cross_entropy
from helpers.modes import ModeProbe


def _setup(dtype=np.float64, n=70):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, 5)).astype(dtype)
    y = rng.integers(0, 3, n)
    net = Network([Dense(5, 8, seed=0, dtype=dtype), ModeProbe(), Dense(8, 3, seed=1, dtype=dtype)])
    return net, X, y


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size", [1, 16, 70, 1000])
def test_loss_and_accuracy_of_the_whole_set(batch_size, dtype):
    net, X, y = _setup(dtype)
    X0, y0 = X.copy(), y.copy()
    loss, acc = evaluate(net, X, y, batch_size=batch_size)
    scores = net.forward(X)
    want_loss = float(softmax_cross_entropy(scores, y)[0])
    assert_allclose(loss, want_loss, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert acc == np.mean(np.argmax(scores, axis=1) == y) == get_current_accuracy(net, X, y)
    assert 0.0 < acc < 1.0
    assert_array_equal(X, X0)
    assert_array_equal(y, y0)


def test_mse_and_one_hot_targets_and_a_loss_of_your_own():
    net, X, y = _setup()
    T = np.eye(3)[y]
    loss, acc = evaluate(net, X, T, loss="mse", batch_size=32)
    assert_allclose(loss, mse(net.forward(X), T), rtol=1e-12)
    assert acc == get_current_accuracy(net, X, y)
    loss, acc = evaluate(net, X, np.ones((70, 2)), loss=lambda p, t: (float(np.sum(p * 0) + 2.0), None))
    assert loss == 2.0 and acc is None  # not a classification: no accuracy


@pytest.mark.parametrize("start", ["train", "eval", "mixed"])
def test_runs_in_eval_mode_and_puts_back_the_modes_it_found(start):
    net, X, y = _setup()
    probe = net.layers[1]
    if start == "eval":
        net.eval()
    elif start == "mixed":
        net.layers[2].training = False
    modes = [layer.training for layer in net.layers]
    evaluate(net, X, y, batch_size=32)
    assert probe.seen == [False, False, False]
    assert [layer.training for layer in net.layers] == modes


def test_modes_are_put_back_after_an_error():
    net, X, y = _setup()
    with pytest.raises(ValueError, match="labels must be in"):
        evaluate(net, X, y + 5)
    assert net.training is True


def test_argument_errors():
    net, X, y = _setup()
    with pytest.raises(ValueError, match=r"evaluate: x has shape \(70, 5\) and y has shape \(69,\)"):
        evaluate(net, X, y[:-1])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluate(net, X, y, batch_size=0)
    with pytest.raises(ValueError, match="loss must be one of"):
        evaluate(net, X, y, loss="hinge")
    assert net.training is True and net.layers[1].seen == []


def test_exported():
    assert cnn_ext.evaluate is evaluate and "evaluate" in cnn_ext.__all__
