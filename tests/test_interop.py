"""from_torch / to_torch: every supported module both ways, outputs equal within rounding in both dtypes, training
mode and running statistics carried, clear errors for what cnn_ext has no layer for, and the ImportError."""
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

import cnn_ext
from cnn_ext import Conv2D, Dense, Flatten, Network, ReLU, Residual, from_torch, to_torch

torch = pytest.importorskip("torch")
nn = torch.nn

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-6)}
TORCH = {np.float64: torch.float64, np.float32: torch.float32}


def _model(dtype):
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding="valid", bias=False), nn.LeakyReLU(0.2)),
        nn.Conv2d(6, 6, 2, padding="same"), nn.Tanh(), nn.AvgPool2d(2, stride=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(6, 8), nn.BatchNorm1d(8, momentum=None), nn.Sigmoid(), nn.Linear(8, 5), nn.Softmax(dim=1))
    m = m.to(TORCH[dtype])
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their initial values
            m(torch.randn(6, 2, 12, 12, dtype=TORCH[dtype]) * 2 + 1)
    return m.eval()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_round_trip_outputs_equal(dtype):
    m = _model(dtype)
    x = np.random.default_rng(0).standard_normal((5, 2, 12, 12)).astype(dtype)
    want = m(torch.from_numpy(x)).detach().numpy()
    net = from_torch(m)
    assert not net.training
    assert [type(layer).__name__ for layer in net] == [
        "Conv2D", "BatchNorm2D", "ReLU", "MaxPool2D", "Conv2D", "LeakyReLU", "Conv2D", "Tanh", "AvgPool2D",
        "GlobalAvgPool2D", "Dropout", "Dense", "BatchNorm1D", "Sigmoid", "Dense", "Softmax"]
    assert net[1].dtype == dtype and int(net[12].num_batches_tracked) == 3 and net[12].momentum is None
    y = net(x)
    assert y.dtype == dtype
    assert_allclose(y, want, **TOL[dtype])
    back = to_torch(net)
    assert not back.training
    assert_allclose(back(torch.from_numpy(x)).detach().numpy(), want, **TOL[dtype])
    assert_allclose(back[1].running_var.numpy(), m[1].running_var.numpy(), **TOL[dtype])


def _sum_backward_both(net, m, x, dtype):
    """Forward both on x and back-propagate out.sum(): the outputs compared; (x's gradient in torch, the cnn_ext
    layers' gradient dicts, last layer first)."""
    xt = torch.tensor(x, requires_grad=True)
    out_t = m(xt)
    out_t.sum().backward()
    out = net(x)
    assert_allclose(out, out_t.detach().numpy(), **TOL[dtype])
    grads, dy = [], cnn_ext.exact(np.ones_like(out))
    for layer in reversed(net.layers):
        grads.append(layer.backward(cnn_ext.exact(dy)))
        dy = grads[-1]["dX"]
    return xt.grad.numpy(), grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_to_torch_trains_the_same(dtype):
    """A cnn_ext network in training mode and its PyTorch copy: same outputs and input gradients (BatchNorm on
    batch statistics), asymmetric padding through ZeroPad2d."""
    net = Network([Conv2D(1, 3, 3, padding=((0, 1), (1, 0)), seed=0, dtype=dtype), cnn_ext.BatchNorm2D(3, dtype=dtype),
                   ReLU(), cnn_ext.GlobalAvgPool2D(), Dense(3, 2, seed=1, dtype=dtype)])
    m = to_torch(net)
    assert m.training and isinstance(m[0], nn.ZeroPad2d)
    x = np.random.default_rng(1).standard_normal((4, 1, 7, 7)).astype(dtype)
    dx_t, grads = _sum_backward_both(net, m, x, dtype)
    assert_allclose(grads[-1]["dX"], dx_t, **TOL[dtype])
    assert_allclose(net[1].running_mean, m[2].running_mean.numpy(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_dilated_and_depthwise_convolutions_both_ways(dtype):
    """groups and dilation carried both ways (a dropped one would still run, on other weights or taps): outputs,
    input gradients and kernel gradients equal PyTorch's, 'same' padding with dilation included."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2), nn.ReLU(),
                      nn.Conv2d(6, 6, 3, padding="same", dilation=(1, 2), groups=6),
                      nn.Conv2d(6, 3, (2, 3), stride=2, dilation=(2, 1))).to(TORCH[dtype])
    net = from_torch(m)
    assert [(c.groups, c.dilation) for c in (net[0], net[2], net[3])] == [(2, (2, 2)), (6, (1, 2)), (1, (2, 1))]
    x = np.random.default_rng(2).standard_normal((3, 4, 11, 10)).astype(dtype)
    dx_t, grads = _sum_backward_both(net, m, x, dtype)
    assert_allclose(grads[-1]["dX"], dx_t, **TOL[dtype])
    assert_allclose(grads[-1]["dK"], m[0].weight.grad.numpy(), **TOL[dtype])
    back = to_torch(net)
    assert [(c.groups, c.dilation) for c in (back[0], back[2], back[3])] == [(2, (2, 2)), (6, (1, 2)), (1, (2, 1))]
    assert_allclose(back(torch.from_numpy(x)).detach().numpy(), net(x), **TOL[dtype])


def test_unsupported_modules_and_options():
    with pytest.raises(TypeError, match=r"GELU.*has no cnn_ext layer"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.GELU()))
    with pytest.raises(ValueError, match=r"padding_mode='reflect' is not supported"):
        from_torch(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(ValueError, match=r"padding=1 is not supported|padding=\(1, 1\) is not supported"):
        from_torch(nn.Sequential(nn.MaxPool2d(2, padding=1)))
    with pytest.raises(ValueError, match=r"only as AdaptiveAvgPool2d\(1\) followed by Flatten"):
        from_torch(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.ReLU()))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        from_torch(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(TypeError, match="expects a torch.nn.Sequential, got Linear"):
        from_torch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"layer 0 \(Residual\(.*has no PyTorch module"):
        to_torch(Network([Residual([ReLU()])]))
    with pytest.raises(TypeError, match="expects a cnn_ext.Network"):
        to_torch([Flatten()])


def test_missing_torch_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ImportError, match=r"need PyTorch.*pip install torch"):
        from_torch(object())
    with pytest.raises(ImportError, match=r"need PyTorch"):
        to_torch(Network([ReLU()]))
