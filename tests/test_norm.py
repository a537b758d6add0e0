"""BatchNorm1D / BatchNorm2D and GlobalAvgPool2D against PyTorch (forward, backward, train and eval modes,
running statistics over several steps, both dtypes), a NumPy oracle, thread-count independence and errors."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext import Adam, BatchNorm1D, BatchNorm2D, GlobalAvgPool2D, Network, exact

torch = pytest.importorskip("torch")

TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


def _pair(cls, shape, dtype, momentum=0.1, affine=True, seed=0):
    """(our layer, torch layer) with the same random gamma / beta."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    ours = cls(C, momentum=momentum, affine=affine, dtype=dtype)
    tcls = torch.nn.BatchNorm2d if cls is BatchNorm2D else torch.nn.BatchNorm1d
    theirs = tcls(C, momentum=momentum, affine=affine).to(TORCH_DTYPE[dtype])
    if affine:
        g = (1 + 0.5 * rng.standard_normal(C)).astype(dtype)
        b = rng.standard_normal(C).astype(dtype)
        ours.gamma[...] = g
        ours.beta[...] = b
        with torch.no_grad():
            theirs.weight.copy_(torch.from_numpy(g))
            theirs.bias.copy_(torch.from_numpy(b))
    return ours, theirs


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cls,shape", [(BatchNorm2D, (4, 3, 5, 6)), (BatchNorm2D, (2, 5, 1, 1)),
                                       (BatchNorm2D, (3, 2, 4, 4)), (BatchNorm1D, (8, 6)), (BatchNorm1D, (3, 4, 7)),
                                       (BatchNorm1D, (2, 3, 17))])  # rows of L = H*W: tails, whole sum blocks
@pytest.mark.parametrize("momentum,affine", [(0.1, True), (None, True), (0.3, False)])
def test_batchnorm_matches_torch_over_steps(dtype, cls, shape, momentum, affine):
    ours, theirs = _pair(cls, shape, dtype, momentum, affine)
    rng = np.random.default_rng(1)
    for step in range(4):
        x = (3 * rng.standard_normal(shape) + step).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        x_before = x.copy()
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.from_numpy(dy))
        y = ours.forward(x)
        g = ours.backward(exact(dy))
        assert y.dtype == dtype and g["dX"].dtype == dtype
        assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
        assert_allclose(g["dX"], xt.grad.numpy(), **TOL[dtype])
        if affine:
            assert_allclose(g["dGamma"], theirs.weight.grad.numpy(), **TOL[dtype])
            assert_allclose(g["dBeta"], theirs.bias.grad.numpy(), **TOL[dtype])
            theirs.weight.grad = theirs.bias.grad = None
        else:
            assert set(g) == {"dX"}
        assert_array_equal(x, x_before)
        assert_allclose(ours.running_mean, theirs.running_mean.numpy(), **TOL[dtype])
        assert_allclose(ours.running_var, theirs.running_var.numpy(), **TOL[dtype])
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == step + 1
    # evaluation mode: running statistics, nothing updated, gradient through the fixed affine map
    ours.training = False
    theirs.eval()
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    rm = ours.running_mean.copy()
    xt = torch.tensor(x, requires_grad=True)
    yt = theirs(xt)
    yt.backward(torch.from_numpy(dy))
    y = ours.forward(x)
    g = ours.backward(exact(dy))
    assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
    assert_allclose(g["dX"], xt.grad.numpy(), **TOL[dtype])
    if affine:
        assert_allclose(g["dGamma"], theirs.weight.grad.numpy(), **TOL[dtype])
        assert_allclose(g["dBeta"], theirs.bias.grad.numpy(), **TOL[dtype])
    assert_array_equal(ours.running_mean, rm)
    assert int(ours.num_batches_tracked) == 4


def test_batchnorm_numpy_oracle_and_central_differences():
    """Forward against the formula; dX against central differences of a scalar loss (training mode)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 4, 3))
    bn = BatchNorm2D(2)
    bn.gamma[...] = [1.5, -0.7]
    bn.beta[...] = [0.2, 0.3]
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-5) * bn.gamma[None, :, None, None] + bn.beta[None, :, None, None]
    assert_allclose(bn.forward(x), want, rtol=1e-12, atol=1e-12)
    w = rng.standard_normal(x.shape)

    def loss(xx):
        layer = BatchNorm2D(2)
        layer.gamma[...] = bn.gamma
        layer.beta[...] = bn.beta
        return float((layer.forward(xx) * w).sum())

    num = np.zeros_like(x)
    h = 1e-6
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += h
        xm[idx] -= h
        num[idx] = (loss(xp) - loss(xm)) / (2 * h)
    bn.forward(x)
    assert_allclose(bn.backward(exact(w))["dX"], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batchnorm_results_do_not_depend_on_threads(dtype, restore_threads):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 16, 9, 9)).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    out = []
    for n in (1, 2):
        cnn_ext.set_num_threads(n)
        bn = BatchNorm2D(16, dtype=dtype)
        y = bn.forward(x)
        g = bn.backward(exact(dy))
        out.append((y, g["dX"], g["dGamma"], bn.running_var.copy()))
    for a, b in zip(*out):
        assert_array_equal(a, b)


def test_batchnorm_parameters_train_with_adam_and_network_update():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3))
    net = Network([BatchNorm1D(3)])
    names = [name for name, _, _ in net.parameters()]
    assert names == ["0.gamma", "0.beta"]
    gamma = net[0].gamma
    out = net(x)
    grads = net.backward(exact(out - 1.0))
    Adam(lr=0.1).step(net, grads)
    assert net[0].gamma is gamma and not np.array_equal(gamma, np.ones(3))
    beta = net[0].beta.copy()
    net(x)
    net.update(0.5, net.backward(exact(np.ones((6, 3)))))
    assert_allclose(net[0].beta, beta - 0.5 * 6)


def test_batchnorm_gradient_rule_is_recorded():
    """BatchNorm's parameter gradients are batch sums under both rules; the dict carries dE_dY's rule."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2))
    dy = rng.standard_normal((4, 2))
    bn = BatchNorm1D(2)
    bn.forward(x)
    plain = bn.backward(dy)
    bn.forward(x)
    ex = bn.backward(exact(dy))
    assert plain.rule == "tutorial" and plain.batch_means == ()
    assert ex.rule == "exact"
    assert_allclose(plain["dBeta"], dy.sum(axis=0))
    assert_array_equal(plain["dGamma"], ex["dGamma"])


def test_batchnorm_errors():
    bn = BatchNorm2D(3)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 3, H, W\), got shape \(2, 4, 5, 5\)"):
        bn.forward(np.ones((2, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"more than one value per channel.*\(1, 3, 1, 1\)"):
        bn.forward(np.ones((1, 3, 1, 1)))
    assert int(bn.num_batches_tracked) == 0 and np.all(bn.running_var == 1)
    bn.training = False
    assert bn.forward(np.ones((1, 3, 1, 1))).shape == (1, 3, 1, 1)
    with pytest.raises(ValueError, match=r"expected x of shape \(N, 3\) or \(N, 3, L\)"):
        BatchNorm1D(3).forward(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm1D(3, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm1D(3, eps=0)
    with pytest.raises(TypeError, match="affine"):
        BatchNorm1D(3, affine="yes")
    with pytest.raises(ValueError, match="num_features"):
        BatchNorm2D(0)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm2D(2).backward(np.ones((1, 2, 2, 2)))
    layer = BatchNorm1D(2)
    layer.forward(np.ones((3, 2)) * [[1], [2], [3]])
    with pytest.raises(ValueError, match=r"dE_dY has shape \(3, 3\) but the forward output had shape \(3, 2\)"):
        layer.backward(np.ones((3, 3)))


def test_batchnorm_config_and_repr():
    bn = BatchNorm2D(4, eps=1e-3, momentum=None, affine=False, dtype=np.float32)
    cfg = bn.get_config()
    assert cfg == {"num_features": 4, "eps": 1e-3, "momentum": None, "affine": False, "dtype": "float32"}
    assert repr(BatchNorm2D(**cfg)) == repr(bn) == \
        "BatchNorm2D(4, eps=0.001, momentum=None, affine=False, dtype=float32)"
    assert bn.parameters() == []
    assert [name for name, _ in bn.buffers()] == ["running_mean", "running_var", "num_batches_tracked"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 1), (3, 2, 7, 7)])
def test_global_avg_pool_matches_torch(dtype, shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape[:2]).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())(xt)
    yt.backward(torch.from_numpy(dy))
    layer = GlobalAvgPool2D()
    y = layer.forward(x)
    assert y.shape == shape[:2] and y.dtype == dtype
    assert_allclose(y, yt.detach().numpy(), **TOL[dtype])
    assert_allclose(layer.backward(dy)["dX"], xt.grad.numpy(), **TOL[dtype])
    assert_allclose(y, x.mean(axis=(2, 3)), **TOL[dtype])


def test_global_avg_pool_errors():
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\), got shape \(2, 3\)"):
        GlobalAvgPool2D().forward(np.ones((2, 3)))
    layer = GlobalAvgPool2D()
    layer.forward(np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"dE_dY has shape \(2, 3, 1, 1\)"):
        layer.backward(np.ones((2, 3, 1, 1)))


def test_batchnorm_empty_batch_in_eval_and_strided_input():
    bn = BatchNorm2D(3)
    x = np.random.default_rng(7).standard_normal((4, 3, 8, 4))
    assert_allclose(bn.forward(x[:, :, ::2]), bn.forward(np.ascontiguousarray(x[:, :, ::2])), rtol=0, atol=0)
    bn.training = False
    assert bn.forward(np.ones((0, 3, 4, 4))).shape == (0, 3, 4, 4)
    g = bn.backward(exact(np.ones((0, 3, 4, 4))))
    assert g["dX"].shape == (0, 3, 4, 4)
    assert_array_equal(g["dGamma"], np.zeros(3))
    with pytest.raises(ValueError, match="more than one value per channel"):
        BatchNorm1D(3).forward(np.ones((0, 3)))
