"""Grouped (depthwise included) and dilated convolutions: the four operations and Conv2D with ``groups=`` and
``dilation=``, against a per-tap einsum oracle written here (no cnn_ext inside) and against PyTorch's
``conv2d`` and autograd; thread counts, non-finite inputs, save / load and argument errors.
"""
import json

import numpy as np
import pytest
from helpers.oracles import TOL, as64, assert_matches, assert_same_nonfinite, pad_amounts, pad_x, pair
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext import (
    Conv2D,
    Network,
    conv2d_bias_gradient,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    conv2d_output_shape,
    exact,
    load,
    save,
)

N, C_IN, C_OUT, H, W, KH, KW = 3, 4, 8, 11, 13, 3, 2  # odd sizes, an even kernel width
GROUPS = (1, 2, C_IN)  # plain, two groups, depthwise (channel multiplier 2)
DILATIONS = (1, 2, (1, 3))
# (stride, padding): valid, same, int padding with stride 2, a pair of pairs with unequal strides
GEOMETRIES = ((1, "valid"), (1, "same"), (2, 1), ((2, 1), ((1, 0), (2, 3))))


# ---- the oracle: one einsum per kernel tap and group, on the zero-padded input ------------------------------

def _dilated_pads(padding, D, stride):
    DH, DW = pair(D)
    return pad_amounts(padding, (KH - 1) * DH + 1, (KW - 1) * DW + 1, pair(stride))


def _tap_slices(a, c, S, D, OH, OW):
    (SH, SW), (DH, DW) = pair(S), pair(D)
    return (slice(a * DH, a * DH + SH * (OH - 1) + 1, SH), slice(c * DW, c * DW + SW * (OW - 1) + 1, SW))


def oracle_forward(x, k, b, S, pads, D, G):
    """y[n, j, p, q] = b[j] + Σ_{c in j's group, u, v} xpad[n, c, p·SH + u·DH, q·SW + v·DW] k[j, c', u, v]"""
    x, k, b = as64(x, k, b)
    xp = pad_x(x, pads)
    (SH, SW), (DH, DW) = pair(S), pair(D)
    C_out, cig, kh, kw = k.shape
    cog = C_out // G
    OH = (xp.shape[2] - DH * (kh - 1) - 1) // SH + 1
    OW = (xp.shape[3] - DW * (kw - 1) - 1) // SW + 1
    y = np.zeros((x.shape[0], C_out, OH, OW)) + b[None, :, None, None]
    for g in range(G):
        ci, co = slice(g * cig, (g + 1) * cig), slice(g * cog, (g + 1) * cog)
        for a in range(kh):
            for c in range(kw):
                rows, cols = _tap_slices(a, c, S, D, OH, OW)
                y[:, co] += np.einsum("ncpq,jc->njpq", xp[:, ci, rows, cols], k[co, :, a, c])
    return y


def oracle_kernel_gradient(dy, x, kshape, S, pads, D, G):
    """dK[j, c', u, v] = (1/N) Σ_{n, p, q} xpad[n, c, p·SH + u·DH, q·SW + v·DW] dE_dY[n, j, p, q]"""
    dy, x = as64(dy, x)
    xp = pad_x(x, pads)
    C_out, cig, kh, kw = kshape
    cog = C_out // G
    OH, OW = dy.shape[2:]
    dk = np.zeros(kshape)
    for g in range(G):
        ci, co = slice(g * cig, (g + 1) * cig), slice(g * cog, (g + 1) * cog)
        for a in range(kh):
            for c in range(kw):
                rows, cols = _tap_slices(a, c, S, D, OH, OW)
                dk[co, :, a, c] = np.einsum("njpq,ncpq->jc", dy[:, co], xp[:, ci, rows, cols])
    return dk / x.shape[0]


def oracle_input_gradient(dy, k, hw, S, pads, D, G):
    """dX: the forward map's transpose, one tap at a time, the padded border cut off (no product with padding)."""
    dy, k = as64(dy, k)
    top, bottom, left, right = pads
    C_out, cig, kh, kw = k.shape
    cog = C_out // G
    OH, OW = dy.shape[2:]
    dxp = np.zeros((dy.shape[0], cig * G, hw[0] + top + bottom, hw[1] + left + right))
    for g in range(G):
        ci, co = slice(g * cig, (g + 1) * cig), slice(g * cog, (g + 1) * cog)
        for a in range(kh):
            for c in range(kw):
                rows, cols = _tap_slices(a, c, S, D, OH, OW)
                dxp[:, ci, rows, cols] += np.einsum("njpq,jc->ncpq", dy[:, co], k[co, :, a, c])
    return dxp[:, :, top:top + hw[0], left:left + hw[1]]


def _data(rng, G, dtype, n=N):
    x = rng.standard_normal((n, C_IN, H, W)).astype(dtype)
    k = rng.standard_normal((C_OUT, C_IN // G, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_OUT).astype(dtype)
    return x, k, b


def _all_four(x, k, b, dy, S, P, D, G, **kw):
    opts = dict(stride=S, padding=P, dilation=D, groups=G, **kw)
    return (conv2d_forward(x, k, b, **opts), conv2d_kernel_gradient(dy, x, kernel_size=(KH, KW), **opts),
            conv2d_bias_gradient(dy, dilation=D, groups=G),
            conv2d_input_gradient(dy, k, input_size=x.shape[2:], **opts))


# ---- the four operations against the oracle ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride,padding", GEOMETRIES)
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("groups", GROUPS)
def test_four_operations_match_the_einsum_oracle(groups, dilation, stride, padding, dtype):
    rng = np.random.default_rng(hash((groups, str(dilation), str(stride))) % 2**32)
    x, k, b = _data(rng, groups, dtype)
    pads = _dilated_pads(padding, dilation, stride)
    y_ref = oracle_forward(x, k, b, stride, pads, dilation, groups)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    x0, k0, b0, dy0 = x.copy(), k.copy(), b.copy(), dy.copy()
    y, dk, db, dx = _all_four(x, k, b, dy, stride, padding, dilation, groups)
    assert_matches(y, y_ref, dtype)
    assert_matches(dk, oracle_kernel_gradient(dy, x, k.shape, stride, pads, dilation, groups), dtype)
    assert_matches(db, as64(dy)[0].sum(axis=(0, 2, 3)) / N, dtype)
    assert_matches(dx, oracle_input_gradient(dy, k, (H, W), stride, pads, dilation, groups), dtype)
    for a, a0 in ((x, x0), (k, k0), (b, b0), (dy, dy0)):
        assert_array_equal(a, a0)  # inputs are never modified
    assert y.shape[2:] == conv2d_output_shape((H, W), (KH, KW), stride, padding, dilation=dilation)


@pytest.mark.parametrize("method", ["gemm", "direct"])
@pytest.mark.parametrize("groups,dilation", [(2, 2), (C_IN, (1, 3))])
def test_forced_methods_run_each_group(method, groups, dilation):
    rng = np.random.default_rng(3)
    x, k, b = _data(rng, groups, np.float64)
    pads = _dilated_pads(1, dilation, 1)
    y_ref = oracle_forward(x, k, b, 1, pads, dilation, groups)
    dy = rng.standard_normal(y_ref.shape)
    y, dk, _, dx = _all_four(x, k, b, dy, 1, 1, dilation, groups, method=method)
    assert_matches(y, y_ref, np.float64)
    assert_matches(dk, oracle_kernel_gradient(dy, x, k.shape, 1, pads, dilation, groups), np.float64)
    assert_matches(dx, oracle_input_gradient(dy, k, (H, W), 1, pads, dilation, groups), np.float64)


def test_kernel_size_is_derived_with_dilation_and_input_size_by_default():
    rng = np.random.default_rng(4)
    x, k, b = _data(rng, 2, np.float64)
    y = conv2d_forward(x, k, b, dilation=(2, 3), groups=2)
    dy = rng.standard_normal(y.shape)
    assert_array_equal(conv2d_kernel_gradient(dy, x, dilation=(2, 3), groups=2),
                       conv2d_kernel_gradient(dy, x, dilation=(2, 3), groups=2, kernel_size=(KH, KW)))
    assert_array_equal(conv2d_input_gradient(dy, k, dilation=(2, 3), groups=2),
                       conv2d_input_gradient(dy, k, dilation=(2, 3), groups=2, input_size=(H, W)))
    with pytest.raises(ValueError, match=r"does not fit x .* with dilation \(2, 2\)"):
        conv2d_kernel_gradient(dy[:, :, :-1], x, dilation=2, groups=2)  # KH' = 6: no kernel of dilation 2


def test_defaults_are_the_plain_path_bit_for_bit():
    rng = np.random.default_rng(5)
    x, k, b = _data(rng, 1, np.float32)
    y = conv2d_forward(x, k, b, padding=1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    plain = _all_four(x, k, b, dy, 1, 1, 1, 1)
    spelled = _all_four(x, k, b, dy, 1, 1, (1, 1), np.int64(1))  # not the fast test: the grouped plan's delegation
    for a, c in zip(plain, spelled):
        assert_array_equal(a, c)
    assert_array_equal(plain[0], y)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("groups,dilation", [(2, 2), (C_IN, (1, 3)), (1, 2)])
def test_results_do_not_depend_on_the_thread_count(groups, dilation, dtype, restore_threads):
    rng = np.random.default_rng(6)
    x, k, b = _data(rng, groups, dtype, n=24)  # enough samples for several threads per group call
    dy = rng.standard_normal(conv2d_forward(x, k, b, padding=2, dilation=dilation, groups=groups).shape)
    dy = dy.astype(dtype)
    results = []
    for n in (1, 2):
        cnn_ext.set_num_threads(n)
        results.append(_all_four(x, k, b, dy, 1, 2, dilation, groups))
    for a, c in zip(*results):
        assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride", [1, 2])  # phases (stride 1) or zero-inserted kernels
def test_inf_and_nan_between_dilated_taps_are_never_multiplied(stride, dtype):
    """The zero-inserted kernels would make 0 * inf = NaN at the skipped positions, and the phases' extra zero
    rows 0 * inf where no product exists: such calls take the real taps only, as the definition (and PyTorch)."""
    rng = np.random.default_rng(7)
    x, k, b = _data(rng, 2, dtype)
    x[0, 1, 1, 1], x[1, 2, 4, 3], x[2, 0, 5, 6], x[0, 3, H - 1, 2] = np.inf, np.nan, -np.inf, np.inf
    pads, D = _dilated_pads(1, 2, stride), 2
    y = conv2d_forward(x, k, b, stride=stride, padding=1, dilation=D, groups=2)
    y_ref = oracle_forward(x, k, b, stride, pads, D, 2)
    assert np.isfinite(y_ref).any() and not np.isfinite(y_ref).all()
    assert_same_nonfinite(y, y_ref, dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dk = conv2d_kernel_gradient(dy, x, stride=stride, padding=1, dilation=D, groups=2, kernel_size=(KH, KW))
    assert_same_nonfinite(dk, oracle_kernel_gradient(dy, x, k.shape, stride, pads, D, 2), dtype)
    dy[0, 3, 2, 2], dy[2, 6, 0, 4] = np.inf, np.nan
    dx = conv2d_input_gradient(dy, k, stride=stride, padding=1, dilation=D, groups=2, input_size=(H, W))
    assert_same_nonfinite(dx, oracle_input_gradient(dy, k, (H, W), stride, pads, D, 2), dtype)


def test_output_shape_is_pytorchs_formula():
    for hw, khw, s, p, d in [((28, 28), 3, 1, 0, 2), ((11, 13), (3, 2), (2, 1), (1, 2), (1, 3)),
                             ((7, 9), 3, 1, "same", 3), ((10, 10), 5, 3, ((1, 0), (0, 2)), (2, 1))]:
        (SH, SW), (DH, DW), (KH_, KW_) = pair(s), pair(d), pair(khw)
        top, bottom, left, right = pad_amounts(p, (KH_ - 1) * DH + 1, (KW_ - 1) * DW + 1, (SH, SW))
        expected = ((hw[0] + top + bottom - DH * (KH_ - 1) - 1) // SH + 1,
                    (hw[1] + left + right - DW * (KW_ - 1) - 1) // SW + 1)
        assert conv2d_output_shape(hw, khw, s, p, dilation=d) == expected


# ---- against PyTorch -----------------------------------------------------------------------------------------

def _torch_padded(torch, x, padding, pads):
    """x for torch.conv2d and its padding argument: asymmetric pads are applied to x beforehand."""
    if isinstance(padding, tuple):
        top, bottom, left, right = pads
        return torch.nn.functional.pad(x, (left, right, top, bottom)), 0
    return x, padding


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # PyTorch's note on its own speed
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride,padding", GEOMETRIES)
@pytest.mark.parametrize("dilation", DILATIONS)
@pytest.mark.parametrize("groups", GROUPS)
def test_four_operations_match_pytorch(groups, dilation, stride, padding, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x, k, b = _data(rng, groups, dtype)
    pads = _dilated_pads(padding, dilation, stride)
    xt = torch.tensor(x, requires_grad=True)
    kt, bt = torch.tensor(k, requires_grad=True), torch.tensor(b, requires_grad=True)
    xin, tpad = _torch_padded(torch, xt, padding, pads)
    yt = torch.nn.functional.conv2d(xin, kt, bt, stride=stride, padding=tpad, dilation=dilation, groups=groups)
    dy = rng.standard_normal(tuple(yt.shape)).astype(dtype)
    yt.backward(torch.tensor(dy))
    y, dk, db, dx = _all_four(x, k, b, dy, stride, padding, dilation, groups)
    tol = TOL[dtype]
    assert_allclose(y, yt.detach().numpy(), **tol)
    assert_allclose(dk * N, kt.grad.numpy(), **tol)  # the operations give batch means, autograd sums
    assert_allclose(db * N, bt.grad.numpy(), **tol)
    assert_allclose(dx, xt.grad.numpy(), **tol)


def test_depthwise_layer_matches_pytorch_module_forward_backward_and_update():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    layer = Conv2D(6, 12, 3, stride=2, padding=2, dilation=2, groups=6, init="he_normal", seed=0,
                   dtype=np.float32)
    module = torch.nn.Conv2d(6, 12, 3, stride=2, padding=2, dilation=2, groups=6)
    assert tuple(module.weight.shape) == layer.k.shape
    with torch.no_grad():
        module.weight.copy_(torch.tensor(layer.k))
        module.bias.copy_(torch.tensor(layer.b))
    x = rng.standard_normal((5, 6, 15, 12)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = module(xt)
    y = layer.forward(x)
    assert_allclose(y, yt.detach().numpy(), **TOL[np.float32])
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.tensor(dy))
    grads = layer.backward(exact(dy))
    assert_allclose(grads["dK"], module.weight.grad.numpy(), **TOL[np.float32])
    assert_allclose(grads["dB"], module.bias.grad.numpy(), **TOL[np.float32])
    assert_allclose(grads["dX"], xt.grad.numpy(), **TOL[np.float32])
    k_before = layer.k.copy()
    layer.update(grads, 0.1)
    assert_allclose(layer.k, k_before - 0.1 * grads["dK"], rtol=1e-6)
    assert not np.array_equal(layer.k, k_before)


# ---- the layer -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups,dilation", [(2, 2), (4, (1, 3)), (1, (2, 1))])
def test_layer_gradients_follow_the_operations_and_the_gradient_rule(groups, dilation):
    rng = np.random.default_rng(10)
    layer = Conv2D(4, 8, (3, 2), padding="same", dilation=dilation, groups=groups, seed=1)
    assert layer.k.shape == (8, 4 // groups, 3, 2)
    x = rng.standard_normal((3, 4, 9, 10))
    y = layer.forward(x)
    assert y.shape == (3, 8, 9, 10)
    assert_array_equal(y, conv2d_forward(x, layer.k, layer.b, padding="same", dilation=dilation, groups=groups))
    pads = _dilated_pads("same", dilation, 1)
    dy = rng.standard_normal(y.shape)
    tutorial = layer.backward(dy)  # batch means
    assert_allclose(tutorial["dK"], oracle_kernel_gradient(dy, x, layer.k.shape, 1, pads, dilation, groups),
                    **TOL[np.float64])
    assert_allclose(tutorial["dX"], oracle_input_gradient(dy, layer.k, (9, 10), 1, pads, dilation, groups),
                    **TOL[np.float64])
    exact_grads = layer.backward(exact(dy))  # batch sums
    assert_allclose(exact_grads["dK"], 3 * tutorial["dK"], rtol=1e-12)
    assert_allclose(exact_grads["dB"], 3 * tutorial["dB"], rtol=1e-12)
    assert "dX" not in layer.backward(dy, need_dX=False)


def test_layer_save_load_round_trip_keeps_groups_and_dilation(tmp_path):
    rng = np.random.default_rng(11)
    net = Network([Conv2D(4, 8, 3, padding=1, dilation=(2, 1), groups=4, seed=2, dtype=np.float32),
                   Conv2D(8, 8, 3, groups=2, seed=3, dtype=np.float32), Conv2D(8, 2, 1, seed=4, dtype=np.float32)])
    cfgs = [layer.get_config() for layer in net.layers]
    assert cfgs[0]["dilation"] == [2, 1] and cfgs[0]["groups"] == 4
    assert "dilation" not in cfgs[1] and cfgs[1]["groups"] == 2
    assert "dilation" not in cfgs[2] and "groups" not in cfgs[2]  # plain layers' configs are as before
    json.dumps(cfgs)
    assert repr(net.layers[0]) == ("Conv2D(4, 8, kernel_size=(3, 3), stride=(1, 1), padding=1, dilation=(2, 1), "
                                   "groups=4, dtype=float32)")
    assert "dilation" not in repr(net.layers[2]) and "groups" not in repr(net.layers[2])
    path = tmp_path / "net.npz"
    save(net, path)
    back = load(path)
    x = rng.standard_normal((2, 4, 8, 9)).astype(np.float32)
    assert_array_equal(back.forward(x), net.forward(x))
    for a, c in zip(back.layers, net.layers):
        assert (a.dilation, a.groups) == (c.dilation, c.groups)
        assert_array_equal(a.k, c.k)
    rebuilt = Conv2D(**cfgs[0])
    assert (rebuilt.dilation, rebuilt.groups, rebuilt.k.shape) == ((2, 1), 4, (8, 1, 3, 3))


def test_layer_initialisers_use_one_groups_fan_in():
    wide = Conv2D(64, 64, 3, init="he_normal", seed=0)
    depthwise = Conv2D(64, 64, 3, groups=64, init="he_normal", seed=0)
    # He: std = sqrt(2 / fan_in), fan_in = (c_in / groups) * KH * KW, as PyTorch counts it
    assert_allclose(wide.k.std(), np.sqrt(2 / (64 * 9)), rtol=0.05)
    assert_allclose(depthwise.k.std(), np.sqrt(2 / 9), rtol=0.1)


# ---- bad arguments -----------------------------------------------------------------------------------------

X, K2, B = np.zeros((2, 4, 7, 7)), np.zeros((6, 2, 3, 3)), np.zeros(6)
DY = np.zeros((2, 6, 5, 5))


@pytest.mark.parametrize("call,exc,match", [
    (lambda: conv2d_forward(X, K2, B, groups=3), ValueError,
     r"groups=3 must divide the input channels \(4, x of shape \(2, 4, 7, 7\)\) and the output channels "
     r"\(6, kernels of shape \(6, 2, 3, 3\)\)"),
    (lambda: conv2d_forward(X, K2, B, groups=1, dilation=2), ValueError,
     r"x has 4 channels \(shape \(2, 4, 7, 7\)\) but kernels with groups=1 expect groups \* 2 = 2"),
    (lambda: conv2d_forward(X, np.zeros((6, 1, 3, 3)), B, groups=2), ValueError,
     r"x has 4 channels \(shape \(2, 4, 7, 7\)\) but kernels with groups=2 expect groups \* 1 = 2 "
     r"\(shape \(6, 1, 3, 3\)\)"),
    (lambda: conv2d_forward(X, K2, np.zeros(4), groups=2), ValueError, r"bias has 4 entries"),
    (lambda: conv2d_forward(X, K2, B, groups=0), ValueError, r"groups must be >= 1, got 0"),
    (lambda: conv2d_forward(X, K2, B, groups=True), TypeError, r"groups must be a positive int, got True"),
    (lambda: conv2d_forward(X, K2, B, groups=2.0), TypeError, r"groups must be a positive int, got 2.0"),
    (lambda: conv2d_forward(X, K2, B, groups=2, dilation=0), ValueError, r"dilation must be >= 1, got 0"),
    (lambda: conv2d_forward(X, K2, B, groups=2, dilation=(1, 2, 3)), ValueError,
     r"dilation must be an int or a pair of ints, got \(1, 2, 3\)"),
    (lambda: conv2d_forward(X, K2, B, groups=2, dilation="2"), TypeError, r"dilation must be an int or a pair"),
    (lambda: conv2d_forward(X, K2, B, groups=2, dilation=4), ValueError,
     r"kernels dilated by \(4, 4\) \(6, 2, 3, 3\) is larger than x \(2, 4, 7, 7\): kernel 9x9 > input 7x7"),
    (lambda: conv2d_forward(X, K2, B, groups=2, dilation=2**31), ValueError,
     r"dilation must be <= 2\*\*31 - 1"),
    (lambda: conv2d_forward(X, K2, B, groups=2, dilation=2**30), ValueError,
     r"kernels \(6, 2, 3, 3\) with dilation \(1073741824, 1073741824\) spans 2147483649x2147483649"),
    (lambda: conv2d_forward(X, K2, B, groups=2, dilation=2, padding="same", stride=2), ValueError,
     r"padding='same' needs stride 1"),
    (lambda: conv2d_forward(X, K2, B, groups=2, method="row_tiles", padding=1, dilation=2), ValueError,
     r"with groups=2 and dilation=\(2, 2\) \(each group's call: .*row_tiles"),
    (lambda: conv2d_input_gradient(DY, K2, groups=4), ValueError,
     r"groups=4 must divide the output channels \(6, dE_dY of shape \(2, 6, 5, 5\) and kernels of shape "
     r"\(6, 2, 3, 3\)\)"),
    (lambda: conv2d_input_gradient(DY, K2, groups=2, dilation=2, input_size=7), ValueError,
     r"with groups=2 and dilation=\(2, 2\) \(each group's call: \(2, 3, 5, 5\), \(3, 2, 5, 5\)\): dE_dY has "
     r"spatial shape \(5, 5\) .* but an input of \(7, 7\) .* gives \(3, 3\)"),
    (lambda: conv2d_kernel_gradient(DY, X, groups=4, kernel_size=3), ValueError,
     r"groups=4 must divide the input channels \(4, x of shape \(2, 4, 7, 7\)\) and the output channels "
     r"\(6, dE_dY of shape \(2, 6, 5, 5\)\)"),
    (lambda: conv2d_kernel_gradient(DY, X, groups=2, dilation=2, kernel_size=3), ValueError,
     r"dE_dY has spatial shape \(5, 5\) \(shape \(2, 6, 5, 5\)\) but x \(2, 4, 7, 7\) with a 3x3 kernel "
     r"dilated by \(2, 2\) gives \(3, 3\)"),
    (lambda: conv2d_kernel_gradient(DY, X, groups=2, dilation=2, stride=2), ValueError,
     r"kernel_size is required"),
    (lambda: conv2d_bias_gradient(DY, groups=4), ValueError, r"groups=4 must divide"),
    (lambda: conv2d_bias_gradient(DY, dilation=0), ValueError, r"dilation must be >= 1"),
    (lambda: conv2d_output_shape((7, 7), 3, dilation=0), ValueError, r"dilation must be >= 1"),
    (lambda: conv2d_output_shape((7, 7), 3, dilation=4), ValueError, r"kernel 9x9 > input 7x7"),
    (lambda: Conv2D(4, 6, 3, groups=4), ValueError,
     r"groups=4 must divide the input channels \(c_in=4\) and the output channels \(c_out=6\)"),
    (lambda: Conv2D(4, 8, 3, groups=0), ValueError, r"groups must be >= 1"),
    (lambda: Conv2D(4, 8, 3, dilation=(1, 0)), ValueError, r"dilation must be >= 1"),
    (lambda: Conv2D(4, 8, 3, dilation=2, padding="same", stride=2), ValueError, r"padding='same' needs stride 1"),
])
def test_bad_arguments_are_refused_by_name(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_refused_call_writes_nothing_and_layer_input_errors_name_shapes():
    rng = np.random.default_rng(12)
    x, k, b = _data(rng, 2, np.float64)
    out = np.full((N, C_OUT, H - 4, W - 2), 7.0)
    with pytest.raises(ValueError, match=r"out has shape"):
        conv2d_forward(x, k, b, groups=2, dilation=2, out=np.empty((N, C_OUT, 1, 1)))
    y = conv2d_forward(x, k, b, groups=2, dilation=2, out=out)
    assert y is out
    assert_allclose(out, oracle_forward(x, k, b, 1, (0, 0, 0, 0), 2, 2), **TOL[np.float64])
    kept = out.copy()
    with pytest.raises(ValueError, match=r"groups=3 must divide"):
        conv2d_forward(x, k, b, groups=3, dilation=2, out=out)
    assert_array_equal(out, kept)
    layer = Conv2D(4, 8, 3, groups=2, dilation=2, seed=0)
    with pytest.raises(ValueError, match=r"x .* \(N, 4, H, W\)"):
        layer.forward(np.zeros((1, 2, 9, 9)))
    with pytest.raises(ValueError, match=r"groups=2 .*dilation=2.*kernel 5x5 > input 4x4|5x5 > input 4x4"):
        layer.forward(np.zeros((1, 4, 4, 4)))


# ---- the compiled depthwise kernels -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("multiplier,stride,padding,dilation", [
    (1, 1, "same", 1), (1, (2, 1), ((2, 0), (1, 3)), (2, 3)), (3, 2, 1, 2), (2, (1, 3), 4, (3, 1)),
    (1, 3, 0, 1),  # windows that skip input rows and columns
])
def test_depthwise_kernels_match_the_oracle_and_the_per_group_path(multiplier, stride, padding, dilation, dtype,
                                                                    monkeypatch):
    calls = []
    names = ("depthwise_forward", "depthwise_input_gradient", "depthwise_kernel_gradient")
    for name in names + tuple(f"{n}_wide" for n in names):
        real = getattr(cnn_ext.ops.depthwise, name)
        monkeypatch.setattr(cnn_ext.ops.depthwise, name,
                            {"float": lambda *a, _r=real, _n=name: (calls.append(_n), _r["float"](*a))[1],
                             "double": lambda *a, _r=real, _n=name: (calls.append(_n), _r["double"](*a))[1]},
                            raising=True)
    rng = np.random.default_rng(13)
    C = 5
    x = rng.standard_normal((2, C, 10, 9)).astype(dtype)
    k = rng.standard_normal((C * multiplier, 1, 3, 2)).astype(dtype)
    b = rng.standard_normal(C * multiplier).astype(dtype)
    pads = pad_amounts(padding, (3 - 1) * pair(dilation)[0] + 1, (2 - 1) * pair(dilation)[1] + 1, pair(stride))
    y_ref = oracle_forward(x, k, b, stride, pads, dilation, C)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    opts = dict(stride=stride, padding=padding, dilation=dilation, groups=C)
    y, dk, dx = (conv2d_forward(x, k, b, **opts), conv2d_kernel_gradient(dy, x, kernel_size=(3, 2), **opts),
                 conv2d_input_gradient(dy, k, input_size=(10, 9), **opts))
    # stride 1: the wide rows (finite arrays); other strides: the row loops
    assert sorted(set(calls)) == [n + ("_wide" if pair(stride) == (1, 1) else "") for n in names]
    assert_matches(y, y_ref, dtype)
    assert_matches(dk, oracle_kernel_gradient(dy, x, k.shape, stride, pads, dilation, C), dtype)
    assert_matches(dx, oracle_input_gradient(dy, k, (10, 9), stride, pads, dilation, C), dtype)
    calls.clear()
    per_group = (conv2d_forward(x, k, b, method="gemm", **opts),
                 conv2d_kernel_gradient(dy, x, kernel_size=(3, 2), method="gemm", **opts),
                 conv2d_input_gradient(dy, k, input_size=(10, 9), method="gemm", **opts))
    assert calls == []  # a forced method runs per group
    for a, c in zip((y, dk, dx), per_group):
        assert_allclose(a, c, **TOL[dtype])


def test_depthwise_kernels_never_multiply_the_positions_a_dilation_skips():
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 9, 9))
    x[0, 0, 1, 1], x[1, 2, 0, 4] = np.inf, np.nan
    k = rng.standard_normal((3, 1, 3, 3))
    b = np.zeros(3)
    pads = (2, 2, 2, 2)
    y = conv2d_forward(x, k, b, padding=2, dilation=2, groups=3)
    assert_same_nonfinite(y, oracle_forward(x, k, b, 1, pads, 2, 3), np.float64)
    dy = rng.standard_normal(y.shape)
    dk = conv2d_kernel_gradient(dy, x, padding=2, dilation=2, groups=3, kernel_size=3)  # x not finite: row loops
    assert_same_nonfinite(dk, oracle_kernel_gradient(dy, x, k.shape, 1, pads, 2, 3), np.float64)
    dy[0, 2, 3, 3] = -np.inf
    dx = conv2d_input_gradient(dy, k, padding=2, dilation=2, groups=3, input_size=(9, 9))
    assert_same_nonfinite(dx, oracle_input_gradient(dy, k, (9, 9), 1, pads, 2, 3), np.float64)
