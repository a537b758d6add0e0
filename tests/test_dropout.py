"""Dropout: inverted scaling, seeding, the mask in backward, identity in evaluation mode, PyTorch's statistics."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext import Dense, Dropout, Network, load, save


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("p", [0.2, 0.5, 0.9])
def test_dropout_training_is_inverted_and_backward_uses_the_mask(dtype, p):
    rng = np.random.default_rng(0)
    x = (rng.random((64, 50)) + 0.5).astype(dtype)
    x_before = x.copy()
    layer = Dropout(p, seed=1)
    y = layer.forward(x)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y != 0
    assert abs(kept.mean() - (1 - p)) < 0.05  # 3200 Bernoulli draws: ~5 standard deviations at most
    assert_allclose(y[kept], x[kept] / dtype(1 - p), rtol=1e-6)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = layer.backward(dy)["dX"]
    assert_array_equal(dx != 0, kept)
    assert_allclose(dx[kept], dy[kept] / dtype(1 - p), rtol=1e-6)
    assert_array_equal(x, x_before)


def test_dropout_matches_torch_in_distribution_and_scale():
    torch = pytest.importorskip("torch")
    x = np.ones((200, 100), np.float32)
    ours = Dropout(0.3, seed=0).forward(x)
    theirs = torch.nn.Dropout(0.3)(torch.from_numpy(x)).numpy()
    assert set(np.unique(ours)) == set(np.unique(theirs)) == {np.float32(0), np.float32(1) / np.float32(0.7)}
    assert abs((ours == 0).mean() - (theirs == 0).mean()) < 0.02


def test_dropout_seeded_runs_repeat_and_draws_change_per_step():
    x = np.ones((10, 10))
    a, b = Dropout(0.5, seed=3), Dropout(0.5, seed=3)
    ya1, ya2 = a.forward(x), a.forward(x)
    assert_array_equal(ya1, b.forward(x))
    assert_array_equal(ya2, b.forward(x))
    assert not np.array_equal(ya1, ya2)
    np.random.seed(5)
    y1 = Dropout(0.5).forward(x)
    np.random.seed(5)
    assert_array_equal(Dropout(0.5).forward(x), y1)


def test_dropout_eval_is_identity_and_edge_probabilities():
    x = np.arange(12.0).reshape(3, 4)
    layer = Dropout(0.5, seed=0)
    net = Network([layer]).eval()
    assert_array_equal(net(x), x)
    dy = np.ones_like(x)
    assert_array_equal(net.backward(dy)[0]["dX"], dy)
    assert_array_equal(Dropout(0.0).forward(x), x)
    one = Dropout(1.0)
    assert_array_equal(one.forward(x), np.zeros_like(x))
    assert_array_equal(one.backward(dy)["dX"], np.zeros_like(x))


def test_dropout_errors_and_save_load(tmp_path):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\], got 1.5"):
        Dropout(1.5)
    with pytest.raises(ValueError, match="p must be >= 0"):
        Dropout(-0.1)
    with pytest.raises(TypeError, match="seed"):
        Dropout(0.5, seed="x")
    net = Network([Dense(3, 2, seed=0), Dropout(0.25, seed=7)])
    loaded = load(save(net, tmp_path / "d.npz"))
    assert repr(loaded[1]) == "Dropout(p=0.25, seed=7)"
    x = np.ones((4, 3))
    assert_array_equal(loaded(x), Network([Dense(3, 2, seed=0), Dropout(0.25, seed=7)])(x))
