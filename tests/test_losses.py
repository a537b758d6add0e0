"""Losses: the tutorial's mse_loss gradient, the mse value, softmax cross-entropy (values, stability, finite
differences, label forms) and get_current_accuracy in both input forms."""
import numpy as np
import pytest
from helpers.oracles import numeric_gradient
from numpy.testing import assert_allclose

from cnn_ext import get_current_accuracy, mse, mse_loss, softmax_cross_entropy


def test_mse_loss_is_the_tutorials_gradient():
    p = np.array([[0.2, 0.9], [0.4, 0.1], [1.0, 0.0]])
    t = np.array([[0, 1], [1, 0], [1, 0]])
    p.flags.writeable = False
    g = mse_loss(p, t)
    assert_allclose(g, 2 * (p - t) / 6, rtol=1e-15)
    assert_allclose(mse(p, t), np.mean((p - t) ** 2), rtol=1e-15)
    # the value's gradient is the gradient: check by central differences
    q = p.copy()
    num = numeric_gradient(lambda: mse(q, t), q)
    assert_allclose(g, num, rtol=1e-6, atol=1e-10)


def test_mse_keeps_float32():
    p = np.ones((2, 3), dtype=np.float32)
    g = mse_loss(p, np.zeros((2, 3)))
    assert g.dtype == np.float32
    assert isinstance(mse(p, np.zeros((2, 3))), float)


@pytest.mark.parametrize("fn", [mse_loss, mse])
def test_mse_errors(fn):
    with pytest.raises(ValueError, match=r"prediction has shape \(2, 3\) but target has shape \(2, 2\)"):
        fn(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="must not be empty"):
        fn(np.ones((0, 3)), np.ones((0, 3)))
    with pytest.raises(TypeError, match="target must hold real numbers"):
        fn(np.ones(2), np.array(["a", "b"]))


def naive_ce(z, labels):
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_values_and_gradient(dtype):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)).astype(dtype)
    labels = np.array([0, 3, 1, 1, 2])
    z.flags.writeable = False
    loss, g = softmax_cross_entropy(z, labels)
    z64 = z.astype(np.float64)
    assert_allclose(loss, naive_ce(z64, labels), rtol=1e-6 if dtype == np.float32 else 1e-12)
    assert g.dtype == dtype
    p = np.exp(z64) / np.exp(z64).sum(axis=1, keepdims=True)
    assert_allclose(g, (p - np.eye(4)[labels]) / 5, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-7)
    # one-hot targets give the same loss and gradient
    loss_oh, g_oh = softmax_cross_entropy(z, np.eye(4)[labels])
    assert_allclose(loss_oh, loss, rtol=1e-6)
    assert_allclose(g_oh, g, rtol=1e-6, atol=1e-7)


def test_softmax_cross_entropy_finite_differences_soft_targets():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 5))
    t = rng.dirichlet(np.ones(5), size=3)
    _, g = softmax_cross_entropy(z, t)
    num = numeric_gradient(lambda: softmax_cross_entropy(z, t)[0], z)
    assert_allclose(g, num, rtol=1e-6, atol=1e-10)


def test_softmax_cross_entropy_is_stable():
    z = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4 + 1]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        loss, g = softmax_cross_entropy(z, [0, 2])
    expected = np.mean([0.0, np.log(2 * np.exp(-1) + 1)])
    assert_allclose(loss, expected, rtol=1e-12)
    assert np.all(np.isfinite(g))
    assert_allclose(g.sum(axis=1), 0.0, atol=1e-15)


@pytest.mark.parametrize("logits,labels,exc,match", [
    (np.ones(3), [0], ValueError, r"logits must be 2-D \(N, K\) and non-empty, got shape \(3,\)"),
    (np.ones((2, 3)), [0, 3], ValueError, r"labels must be in \[0, 2\] for 3 classes"),
    (np.ones((2, 3)), [0, -1], ValueError, r"labels must be in \[0, 2\]"),
    (np.ones((2, 3)), [0, 1, 2], ValueError, r"labels has 3 entries .* but logits has 2 rows"),
    (np.ones((2, 3)), np.ones((2, 4)), ValueError, r"labels must have shape \(2,\) or \(2, 3\)"),
    (np.ones((2, 3)), [0.5, 1.0], ValueError, "must be integer class indices"),
    (np.ones((2, 3)), ["a", "b"], TypeError, "labels must be integers or one-hot"),
    (np.array([["a"]]), [0], TypeError, "logits must hold real numbers"),
])
def test_softmax_cross_entropy_errors(logits, labels, exc, match):
    with pytest.raises(exc, match=match):
        softmax_cross_entropy(logits, labels)


class FixedNet:
    """Returns stored scores batch by batch (counts the calls)."""

    def __init__(self, scores):
        self.scores, self.pos, self.calls = scores, 0, 0

    def forward(self, x):
        n = len(x)
        out = self.scores[self.pos:self.pos + n]
        self.pos += n
        self.calls += 1
        return out


SCORES = np.eye(4)[[0, 1, 2, 3, 0, 1]]   # predicted classes 0 1 2 3 0 1
TRUE = np.array([0, 1, 2, 0, 0, 3])      # 4 of 6 right


def test_accuracy_tutorial_list_of_batches():
    X = [np.zeros((4, 1)), np.zeros((2, 1))]
    Y = [np.eye(4)[TRUE[:4]], np.eye(4)[TRUE[4:]]]
    net = FixedNet(SCORES)
    assert get_current_accuracy(net, X, Y) == pytest.approx(4 / 6)
    assert net.calls == 2
    assert get_current_accuracy(FixedNet(SCORES), X, [TRUE[:4], TRUE[4:]]) == pytest.approx(4 / 6)


def test_accuracy_arrays_in_chunks():
    net = FixedNet(SCORES)
    assert get_current_accuracy(net, np.zeros((6, 1)), TRUE, batch_size=4) == pytest.approx(4 / 6)
    assert net.calls == 2
    assert get_current_accuracy(FixedNet(SCORES), np.zeros((6, 1)), np.eye(4)[TRUE]) == pytest.approx(4 / 6)


def test_accuracy_errors():
    with pytest.raises(ValueError, match="y_test must be a list of as many batches"):
        get_current_accuracy(FixedNet(SCORES), [np.zeros((6, 1))], TRUE)
    with pytest.raises(ValueError, match=r"X_test has shape \(5, 1\) but y_test has shape \(6,\)"):
        get_current_accuracy(FixedNet(SCORES), np.zeros((5, 1)), TRUE)
    with pytest.raises(ValueError, match=r"network output has shape \(6, 4\) for 5 labels"):
        get_current_accuracy(FixedNet(SCORES), [np.zeros((6, 1))], [TRUE[:5]])
    with pytest.raises(ValueError, match="no test samples"):
        get_current_accuracy(FixedNet(SCORES), [], [])
    with pytest.raises(ValueError, match=r"labels must be \(N,\) integers or \(N, K\) one-hot"):
        get_current_accuracy(FixedNet(SCORES), [np.zeros((1, 1))], [np.zeros((1, 4, 1))])
