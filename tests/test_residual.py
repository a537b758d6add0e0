"""Residual blocks against the same block in PyTorch: forward, gradients (through one SGD step), running
statistics, train and eval, both dtypes; Network's update / parameters / save / load; errors."""
import io

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext import (SGD, BatchNorm2D, Conv2D, Dense, Flatten, Network, ReLU, Residual, exact, load, save)

torch = pytest.importorskip("torch")
nn = torch.nn

TOL = {np.float64: dict(rtol=1e-9, atol=1e-10), np.float32: dict(rtol=1e-4, atol=1e-5)}


class _TorchBlock(nn.Module):
    def __init__(self, layers, shortcut=None):
        super().__init__()
        self.layers = nn.Sequential(*layers)
        self.shortcut = None if shortcut is None else nn.Sequential(*shortcut)

    def forward(self, x):
        return self.layers(x) + (x if self.shortcut is None else self.shortcut(x))


def _torch_basic(c_in, c_out, stride):
    f = [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
         nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out)]
    s = None if stride == 1 and c_in == c_out else [nn.Conv2d(c_in, c_out, 1, stride=stride), nn.BatchNorm2d(c_out)]
    return _TorchBlock(f, s)


def _nets(dtype):
    ours = Network([Conv2D(2, 4, 3, padding=1, init="he_normal", seed=0, dtype=dtype), ReLU(),
                    Residual.basic_block(4, 4, seed=1, dtype=dtype), ReLU(),
                    Residual.basic_block(4, 6, stride=2, seed=5, dtype=dtype), ReLU(),
                    Flatten(), Dense(6 * 4 * 4, 3, init="he_normal", seed=9, dtype=dtype)])
    theirs = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), _torch_basic(4, 4, 1), nn.ReLU(),
                           _torch_basic(4, 6, 2), nn.ReLU(), nn.Flatten(), nn.Linear(96, 3))
    theirs = theirs.to(torch.float64 if dtype == np.float64 else torch.float32)
    # the state dict's names and layouts are PyTorch's, so this also checks them
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return ours, theirs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_residual_network_matches_torch_over_sgd_steps(dtype):
    ours, theirs = _nets(dtype)
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.05)
    opt = SGD(lr=0.05)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((5, 2, 8, 8)).astype(dtype)
        w = rng.standard_normal((5, 3)).astype(dtype)
        xt = torch.tensor(x, requires_grad=True)
        out_t = theirs(xt)
        opt_t.zero_grad()
        (out_t * torch.from_numpy(w)).sum().backward()
        opt_t.step()
        out = ours(x)
        assert_allclose(out, out_t.detach().numpy(), **TOL[dtype])
        grads = ours.backward(exact(w))
        opt.step(ours, grads)
        for key, value in ours.state_dict().items():
            assert_allclose(value, theirs.state_dict()[key].numpy(), **TOL[dtype], err_msg=key)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((3, 2, 8, 8)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    out_t = theirs(xt)
    out_t.sum().backward()
    assert_allclose(ours(x), out_t.detach().numpy(), **TOL[dtype])
    dy = np.ones((3, 3), dtype)
    for layer in reversed(ours.layers):  # by hand: Network.backward skips the first layer's dX
        dy = layer.backward(exact(dy))["dX"]
    assert_allclose(dy, xt.grad.numpy(), **TOL[dtype])


def test_identity_residual_gradient_is_f_plus_identity():
    rng = np.random.default_rng(1)
    dense = Dense(3, 3, seed=0)
    block = Residual([dense])
    x = rng.standard_normal((4, 3))
    y = block.forward(x)
    assert_allclose(y, x @ dense.w + dense.b + x)
    dy = rng.standard_normal((4, 3))
    g = block.backward(exact(dy))
    assert_allclose(g["dX"], dy @ dense.w.T + dy)
    assert_allclose(g["layers.0.dW"], x.T @ dy)
    assert g.rule == "exact"
    block.forward(x)
    assert block.backward(dy).batch_means == ("layers.0.dB",)


def test_residual_in_network_update_modes_and_save_load():
    net = Network([Conv2D(1, 3, 3, padding=1, seed=0), Residual.basic_block(3, 5, stride=2, seed=1), ReLU(),
                   Flatten(), Dense(5 * 3 * 3, 2, seed=4)])
    names = [n for n, _, _ in net.parameters()]
    assert "1.layers.0.k" in names and "1.shortcut.1.gamma" in names
    x = np.random.default_rng(2).standard_normal((4, 1, 6, 6))
    k_before = net[1].layers[0].k.copy()
    net.update(0.1, net.backward(exact(net(x))))
    assert not np.array_equal(net[1].layers[0].k, k_before)
    net.eval()
    assert net[1].layers[1].training is False and net[1].shortcut[1].training is False
    net.train()
    assert net[1].layers[1].training is True
    f = io.BytesIO()
    save(net, f)
    f.seek(0)
    loaded = load(f)
    for (name, _, a), (_, _, b) in zip(net.parameters(), loaded.parameters()):
        assert_array_equal(a, b, err_msg=name)
    for (name, a), (_, b) in zip(net.buffers(), loaded.buffers()):
        assert_array_equal(a, b, err_msg=name)
    assert int(loaded[1].layers[1].num_batches_tracked) == 1
    assert_array_equal(loaded.predict(x), net.predict(x))


def test_residual_errors():
    block = Residual([Conv2D(2, 3, 3, padding=1, seed=0)])
    with pytest.raises(ValueError, match=r"f\(x\) has shape \(1, 3, 4, 4\) but the input \(identity shortcut\) has "
                                         r"shape \(1, 2, 4, 4\); give a shortcut"):
        block.forward(np.ones((1, 2, 4, 4)))
    with pytest.raises(TypeError, match="layers must be a non-empty list"):
        Residual([])
    with pytest.raises(TypeError, match=r"layers\[0\] \(3\) has no forward"):
        Residual([3])
    with pytest.raises(ValueError, match="unknown layer type 'Nope'"):
        Residual([["Nope", {}]])
    with pytest.raises(RuntimeError, match="backward called before forward"):
        Residual([ReLU()]).backward(np.ones((1, 2)))
    assert isinstance(Residual([BatchNorm2D(2)]).buffers()[0][1], np.ndarray)


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.skipif(not (EXAMPLES / "train_resnet.py").is_file(), reason="examples/ is not beside tests/")
def test_train_resnet_example_trains_and_keeps_its_best_state():
    """The example's network and loop on the shipped MNIST sample: the loss falls and the kept state loads."""
    import importlib.util

    from cnn_ext import Adam, fit
    from cnn_ext.datasets import load_mnist_sample

    spec = importlib.util.spec_from_file_location("train_resnet", EXAMPLES / "train_resnet.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    (x, y), _ = load_mnist_sample(dtype=np.float32)
    (xt, yt), (xv, yv) = example.split_validation(x[:300], y[:300], 100, seed=0)
    assert len(yt) == 200 and len(yv) == 100 and not set(map(bytes, xt)) & set(map(bytes, xv))
    net = example.build_network(width=4)
    history = fit(net, xt, yt, epochs=2, batch_size=32, optimizer=Adam(3e-3), seed=0, loss="softmax_cross_entropy",
                  validation_data=(xv, yv), progress=False, verbose=False)
    assert history["loss"][1] < history["loss"][0]
    state = net.state_dict()
    fresh = example.build_network(width=4, seed=7)
    fresh.load_state_dict(state)
    assert_array_equal(fresh.predict(xv), net.predict(xv))


def test_gradient_check_of_a_batchnorm_residual_network():
    """cnn_ext's own central-difference check (float64) over BatchNorm in both positions and a residual block."""
    from cnn_ext import BatchNorm1D, GlobalAvgPool2D, Tanh, gradient_check

    net = Network([Conv2D(1, 2, 3, padding=1, seed=0), BatchNorm2D(2), Residual.basic_block(2, 3, stride=2, seed=1),
                   Tanh(), GlobalAvgPool2D(), Dense(3, 2, seed=3), BatchNorm1D(2)])
    x = np.random.default_rng(0).standard_normal((4, 1, 6, 6))
    gradient_check(net, x, loss="random_linear", max_entries=12)  # raises GradientCheckError on a wrong gradient
