"""Network.summary (content, lazy-size inference, no state change), the lazy Dense, predict in evaluation mode
and predict_classes."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, MaxPool2D, Network, ReLU, Residual, load, save)


def _lazy_net():
    return Network([Conv2D(1, 4, 3, padding=1, seed=0), BatchNorm2D(4), ReLU(), MaxPool2D(2), Flatten(),
                    Dense(16, seed=1), ReLU(), Dense(10, seed=2)])


def test_summary_table_and_inference(capsys, tmp_path):
    net = _lazy_net()
    assert not net[5].built and net[5].parameters() == []
    table = net.summary((1, 8, 8), print_fn=None)
    assert net[5].n_in == 64 and net[7].n_in == 16
    lines = table.splitlines()
    row = {line.split(":")[0].strip(): line for line in lines if line[:1].isdigit()}
    assert "(N, 4, 8, 8)" in row["0"] and row["0"].rstrip().endswith(" 40")
    assert "(N, 4, 4, 4)" in row["3"] and "(N, 64)" in row["4"]
    assert "Dense(n_in=64, n_out=16)" in row["5"] and row["5"].rstrip().endswith("1,040")
    assert row["7"].rstrip().endswith(" 170") and "(N, 10)" in row["7"]
    assert "trainable parameters: 1,258" in table  # 40 + 8 + 1040 + 170
    assert "buffers (not trained): 9" in table
    assert net.summary((1, 8, 8)) is None
    assert capsys.readouterr().out.strip() == table.strip()
    loaded = load(save(net, tmp_path / "lazy.npz"))  # save works once the sizes are inferred
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    assert_array_equal(loaded.predict(x), net.predict(x))


def test_summary_changes_no_state_and_names_a_refusing_layer():
    net = _lazy_net()
    rm = net[1].running_mean.copy()
    net.summary((1, 8, 8), print_fn=None)
    assert net.training and net[1].training
    assert_array_equal(net[1].running_mean, rm)
    assert int(net[1].num_batches_tracked) == 0
    with pytest.raises(ValueError, match=r"summary: layer 0 \(Conv2D.*\) refuses .* \(N, 2, 8, 8\)"):
        net.summary((2, 8, 8), print_fn=None)
    with pytest.raises(TypeError, match="input_shape must be a tuple of positive ints"):
        net.summary(8, print_fn=None)
    with pytest.raises(ValueError, match="input_shape must be >= 1"):
        net.summary((1, 0, 8), print_fn=None)


def test_summary_of_a_residual_block_lists_its_layers():
    net = Network([Conv2D(1, 2, 3, padding=1, seed=0), Residual.basic_block(2, 4, stride=2, seed=1), Flatten(),
                   Dense(3)])
    table = net.summary((1, 6, 6), print_fn=None)
    assert "1: Residual" in table and "  shortcut.1: BatchNorm2D(4" in table and "(N, 4, 3, 3)" in table
    assert net[3].n_in == 36


def test_lazy_dense_draws_what_the_eager_one_draws():
    lazy, eager = Dense(5, init="he_normal", seed=3), Dense(4, 5, init="he_normal", seed=3)
    assert repr(lazy) == "Dense(5, init='he_normal')"
    x = np.ones((2, 4))
    with pytest.raises(ValueError, match=r"expected x of shape \(N, n_in\), got shape \(2, 2, 2\)"):
        lazy.forward(np.ones((2, 2, 2)))
    assert not lazy.built
    assert_array_equal(lazy.forward(x), eager.forward(x))
    assert lazy.get_config()["n_in"] == 4
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 4\), got shape \(2, 3\)"):
        lazy.forward(np.ones((2, 3)))
    np.random.seed(0)
    a = Dense(3).forward(x)
    np.random.seed(0)
    assert_array_equal(a, Dense(4, 3).forward(x))  # the tutorial's global state, drawn at inference


def test_predict_runs_in_eval_mode_and_predict_classes():
    net = Network([Dense(6, 8, seed=0), Dropout(0.5, seed=1), ReLU(), Dense(8, 3, seed=2)])
    x = np.random.default_rng(5).standard_normal((7, 6))
    p1, p2 = net.predict(x), net.predict(x, batch_size=2)
    np.testing.assert_allclose(p1, p2, rtol=1e-12, atol=1e-15)  # no dropout noise: evaluation mode
    assert net.training and net[1].training  # modes restored
    net.eval()
    assert_array_equal(net(x), p1)
    assert_array_equal(net.predict_classes(x), p1.argmax(axis=1))
    assert net.predict_classes(x).shape == (7,)
    with pytest.raises(ValueError, match=r"output must be \(N, classes\) scores, got shape \(7, 2, 4\)"):
        Network([Dense(6, 8, seed=0), _Reshape()]).predict_classes(x)


class _Reshape(ReLU):
    def forward(self, x):
        return x.reshape(len(x), 2, -1)


def test_lazy_conv2d_draws_what_the_eager_one_draws_and_a_refused_input_changes_nothing():
    lazy, eager = Conv2D(None, 4, 3, padding=1, init="he_normal", seed=3), Conv2D(2, 4, 3, padding=1,
                                                                                  init="he_normal", seed=3)
    assert repr(lazy) == "Conv2D(None, 4, kernel_size=(3, 3), stride=(1, 1), padding=1, init='he_normal')"
    assert not lazy.built and lazy.parameters() == []
    with pytest.raises(ValueError, match=r"has not inferred c_in yet"):
        lazy.param_shapes()
    with pytest.raises(ValueError, match=r"expected x of shape \(N, c_in, H, W\), got shape \(2, 8\)"):
        lazy.forward(np.ones((2, 8)))
    with pytest.raises(ValueError, match=r"input of shape \(2, 2, 1, 1\).*larger than"):
        Conv2D(None, 4, 5, seed=3).forward(np.ones((2, 2, 1, 1)))
    narrow = Conv2D(None, 4, 5, padding=1, init="he_normal", seed=3)
    with pytest.raises(ValueError, match=r"input of shape \(2, 2, 1, 1\).*larger than"):
        narrow.forward(np.ones((2, 2, 1, 1)))
    assert not narrow.built and narrow.k is None
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    narrow.forward(x)  # the refused input drew nothing: the weights are those of the seed
    assert_array_equal(narrow.k, Conv2D(2, 4, 5, padding=1, init="he_normal", seed=3).k)
    assert_array_equal(lazy.forward(x), eager.forward(x))
    assert lazy.built and lazy.get_config()["c_in"] == 2
    assert [p.shape for _, _, p in lazy.parameters()] == [(4, 2, 3, 3), (4,)]
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 2, H, W\), got shape \(2, 3, 5, 5\)"):
        lazy.forward(np.ones((2, 3, 5, 5)))
    np.random.seed(0)
    a = Conv2D(None, 3, 2, dtype=np.float32).forward(x)
    np.random.seed(0)
    b = Conv2D(2, 3, 2, dtype=np.float32).forward(x)  # the tutorial's global state, drawn at inference
    assert a.dtype == np.float32
    assert_array_equal(a, b)


def test_lazy_conv2d_groups_are_checked_against_both_channel_counts():
    with pytest.raises(ValueError, match=r"groups=3 must divide the output channels \(c_out=4\)"):
        Conv2D(None, 4, 3, groups=3)
    g = Conv2D(None, 4, 3, groups=2, seed=0)
    with pytest.raises(ValueError, match=r"input of shape \(1, 3, 5, 5\): groups=2 must divide its 3 channels"):
        g.forward(np.ones((1, 3, 5, 5)))
    assert not g.built
    x = np.random.default_rng(1).standard_normal((1, 4, 5, 5))
    assert_array_equal(g.forward(x), Conv2D(4, 4, 3, groups=2, seed=0).forward(x))
    assert g.k.shape == (4, 2, 3, 3)


def test_a_network_of_lazy_convolutions_is_inferred_by_summary_and_trains_saves_and_loads(tmp_path):
    net = Network([Conv2D(None, 4, 3, padding=1, seed=0), BatchNorm2D(4), ReLU(), Conv2D(None, 6, 3, stride=2,
                                                                                          seed=1),
                   ReLU(), Flatten(), Dense(3, seed=2)])
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2D\(None, 4.*\)\) has not inferred its sizes yet"):
        net.state_dict()
    table = net.summary((3, 8, 8), print_fn=None)
    assert "0: Conv2D(3, 4," in table and "3: Conv2D(4, 6," in table and "(N, 6, 3, 3)" in table
    assert net[0].k.shape == (4, 3, 3, 3) and net[3].k.shape == (6, 4, 3, 3) and net[6].n_in == 54
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8))
    grads = net.backward(net.forward(x))
    assert grads[0]["dK"].shape == (4, 3, 3, 3)
    loaded = load(save(net, tmp_path / "lazy_conv.npz"))
    assert_array_equal(loaded.predict(x), net.predict(x))


def test_a_lazy_convolution_matches_pytorch_once_inferred():
    torch = pytest.importorskip("torch")
    from cnn_ext import to_torch
    net = Network([Conv2D(None, 5, 3, padding=1, stride=2, init="he_uniform", seed=4, dtype=np.float32)])
    with pytest.raises(ValueError, match="inferred"):
        to_torch(net)
    x = np.random.default_rng(2).standard_normal((3, 2, 9, 9)).astype(np.float32)
    y = net.forward(x)
    with torch.no_grad():
        ref = to_torch(net)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls, shape", [(BatchNorm2D, (4, 3, 5, 5)), (BatchNorm1D, (4, 3)), (BatchNorm1D, (4, 3, 6))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lazy_batchnorm_takes_its_channels_from_the_first_input(cls, shape, dtype):
    lazy, eager = cls(None, dtype=dtype), cls(3, dtype=dtype)
    assert repr(lazy).startswith(f"{cls.__name__}(None") and not lazy.built
    assert lazy.parameters() == [] and lazy.buffers() == []
    with pytest.raises(ValueError, match="training needs more than one value per channel"):
        lazy.forward(np.ones((1, 3) + (1,) * (len(shape) - 2)))  # refused before anything is made
    assert not lazy.built and lazy.running_mean is None
    x = np.random.default_rng(0).standard_normal(shape)
    assert_array_equal(lazy.forward(x), eager.forward(x))
    assert lazy.num_features == 3 and lazy.get_config()["num_features"] == 3
    for (n1, a), (n2, b) in zip(lazy.buffers(), eager.buffers()):
        assert n1 == n2 and a.dtype == b.dtype
        assert_array_equal(a, b)
    dy = np.random.default_rng(1).standard_normal(shape)
    for key, value in eager.backward(dy).items():
        assert_array_equal(lazy.backward(dy)[key], value)
    with pytest.raises(ValueError, match=r"got shape \(4, 2"):
        lazy.forward(np.ones((4, 2) + shape[2:]))


def test_a_network_without_input_sizes_matches_pytorch_after_summary():
    torch = pytest.importorskip("torch")
    from cnn_ext import GlobalAvgPool2D, to_torch
    net = Network([Conv2D(None, 6, 3, padding=1, init="he_normal", seed=0, dtype=np.float32),
                   BatchNorm2D(None, dtype=np.float32), ReLU(), GlobalAvgPool2D(), Dense(4, seed=1, dtype=np.float32)])
    with pytest.raises(ValueError, match=r"save: layer 0 .* has not inferred its sizes yet"):
        save(net, __import__("io").BytesIO())
    net.summary((2, 7, 7), print_fn=None)
    assert net[1].num_features == 6 and net[4].n_in == 6
    x = np.random.default_rng(3).standard_normal((5, 2, 7, 7)).astype(np.float32)
    net.eval()
    module = to_torch(net).eval()
    with torch.no_grad():
        ref = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: Dense(3, init="he"), lambda: Conv2D(None, 4, 3, init="he")])
def test_lazy_layers_refuse_a_bad_init_when_built_not_at_their_first_input(make):
    with pytest.raises(ValueError, match=r"init must be None or one of"):
        make()
