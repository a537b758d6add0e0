"""Layers: forward/backward against independent NumPy implementations and central differences; dtype, error
paths, the parameters()/get_config() protocol, initialisers and repr."""
import json

import numpy as np
import pytest
from helpers.oracles import (
    LAYER_TOL,
    away_from_zero,
    bias_gradient,
    einsum_forward,
    einsum_kernel_gradient,
    numeric_gradient,
    readonly,
    tap_input_gradient,
)
from helpers.strategies import conv_cases
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext.layers import (
    LAYER_TYPES,
    Conv2D,
    Dense,
    Flatten,
    Layer,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    register_layer,
)

TOL = LAYER_TOL


def ref_conv(x, k, b, stride=(1, 1), pad=(0, 0)):
    """The einsum oracle with symmetric padding (rows, cols)."""
    return einsum_forward(x, k, b, stride, (pad[0], pad[0], pad[1], pad[1]))


def ref_conv_grads(x, k, dy, stride=(1, 1), pad=(0, 0)):
    """(dK batch-mean, dB batch-mean, dX) of ref_conv."""
    pad4 = (pad[0], pad[0], pad[1], pad[1])
    return (einsum_kernel_gradient(dy, x, *k.shape[2:], stride, pad4), bias_gradient(dy),
            tap_input_gradient(dy, k, *x.shape[2:], stride, pad4))


# ----------------------------------------------------------------------------------------------
# Conv2D
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,c_out,ks,stride,padding,pad", [
    ((2, 1, 6, 6), 3, 3, 1, "valid", (0, 0)),
    ((1, 2, 5, 7), 2, (2, 3), 1, "valid", (0, 0)),   # non-square kernel and input, N = 1
    ((3, 2, 4, 4), 4, 1, 1, "valid", (0, 0)),        # 1x1 kernel
    ((2, 1, 3, 3), 2, 3, 1, "valid", (0, 0)),        # kernel == input
    ((2, 2, 7, 6), 3, 3, 2, 1, (1, 1)),              # stride and padding
    ((2, 1, 5, 5), 2, 3, 1, "same", (1, 1)),
])
def test_conv2d_against_reference(dtype, shape, c_out, ks, stride, padding, pad):
    rng = np.random.default_rng(0)
    layer = Conv2D(shape[1], c_out, ks, stride=stride, padding=padding, seed=1, dtype=dtype)
    x = readonly(rng.standard_normal(shape))
    y = layer.forward(x)
    x64, k64, b64 = x.astype(dtype).astype(np.float64), layer.k.astype(np.float64), layer.b.astype(np.float64)
    s = (stride, stride) if isinstance(stride, int) else stride
    assert y.dtype == dtype
    assert_allclose(y, ref_conv(x64, k64, b64, s, pad), **TOL[dtype])
    dy = readonly(rng.standard_normal(y.shape))
    g = layer.backward(dy)
    dK, dB, dX = ref_conv_grads(x64, k64, dy.astype(dtype).astype(np.float64), s, pad)
    assert set(g) == {"dK", "dB", "dX"}
    for key, ref in (("dK", dK), ("dB", dB), ("dX", dX)):
        assert g[key].dtype == dtype
        assert_allclose(g[key], ref, **TOL[dtype])


@settings(max_examples=20, deadline=None)
@given(conv_cases(max_batch=3, max_channels=3, max_extra=4, stride=False, padding=False), st.integers(0, 2**16))
def test_conv2d_property(case, seed):
    (n, c_in, c_out, h, w, kh, kw), _, _, _ = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w))
    layer = Conv2D(c_in, c_out, (kh, kw), rng=rng)
    y = layer.forward(x)
    assert_allclose(y, ref_conv(x, layer.k, layer.b), **TOL[np.float64])
    dy = rng.standard_normal(y.shape)
    g = layer.backward(dy)
    for key, ref in zip(("dK", "dB", "dX"), ref_conv_grads(x, layer.k, dy)):
        assert_allclose(g[key], ref, **TOL[np.float64])


def test_conv2d_finite_differences():
    """With L = Σ y·R: dL/dk = N·dK, dL/db = N·dB (batch means), dL/dx = dX."""
    rng = np.random.default_rng(3)
    layer = Conv2D(2, 3, (2, 3), stride=(1, 2), padding=1, seed=4)
    x = rng.standard_normal((2, 2, 5, 6))
    R = rng.standard_normal(layer.forward(x).shape)
    loss = lambda: float(np.sum(layer.forward(x) * R))  # noqa: E731
    layer.forward(x)
    g = layer.backward(R)
    N = x.shape[0]
    assert_allclose(N * g["dK"], numeric_gradient(loss, layer.k), rtol=1e-6, atol=1e-7)
    assert_allclose(N * g["dB"], numeric_gradient(loss, layer.b), rtol=1e-6, atol=1e-7)
    assert_allclose(g["dX"], numeric_gradient(loss, x), rtol=1e-6, atol=1e-7)


def test_conv2d_need_dX_false_skips_input_gradient():
    layer = Conv2D(1, 2, 3, seed=0)
    y = layer.forward(np.ones((2, 1, 5, 5)))
    g = layer.backward(np.ones_like(y), need_dX=False)
    assert set(g) == {"dK", "dB"}
    assert_allclose(g["dK"], layer.backward(np.ones_like(y))["dK"])


def test_kernel_size_forms():
    a, b = Conv2D(2, 3, 4, seed=5), Conv2D(2, 3, (4, 4), seed=5)
    assert a.k.shape == b.k.shape == (3, 2, 4, 4)
    assert_allclose(a.k, b.k)
    assert Conv2D(1, 1, (2, 5)).k.shape == (1, 1, 2, 5)
    assert Conv2D(1, 1, [2, 5]).kernel_size == (2, 5)


# ----------------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_against_reference(dtype):
    rng = np.random.default_rng(0)
    layer = Dense(5, 3, seed=2, dtype=dtype)
    x = readonly(rng.standard_normal((4, 5)))
    y = layer.forward(x)
    xd = x.astype(dtype).astype(np.float64)
    w, b = layer.w.astype(np.float64), layer.b.astype(np.float64)
    ref = np.array([[sum(xd[n, i] * w[i, j] for i in range(5)) + b[j] for j in range(3)] for n in range(4)])
    assert y.dtype == dtype
    assert_allclose(y, ref, **TOL[dtype])
    dy = readonly(rng.standard_normal((4, 3)))
    g = layer.backward(dy)
    dyd = dy.astype(dtype).astype(np.float64)
    assert set(g) == {"dW", "dB", "dX"}
    assert_allclose(g["dW"], sum(np.outer(xd[n], dyd[n]) for n in range(4)), **TOL[dtype])  # summed
    assert_allclose(g["dB"], dyd.mean(axis=0), **TOL[dtype])                              # averaged
    assert_allclose(g["dX"], dyd @ w.T, **TOL[dtype])
    assert all(v.dtype == dtype for v in g.values())
    assert set(layer.backward(dy, need_dX=False)) == {"dW", "dB"}


def test_dense_finite_differences():
    rng = np.random.default_rng(1)
    layer = Dense(4, 3, seed=3)
    x = rng.standard_normal((5, 4))
    R = rng.standard_normal((5, 3))
    loss = lambda: float(np.sum(layer.forward(x) * R))  # noqa: E731
    layer.forward(x)
    g = layer.backward(R)
    assert_allclose(g["dW"], numeric_gradient(loss, layer.w), rtol=1e-6, atol=1e-7)
    assert_allclose(5 * g["dB"], numeric_gradient(loss, layer.b), rtol=1e-6, atol=1e-7)
    assert_allclose(g["dX"], numeric_gradient(loss, x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,K,N", [(16, 2304, 256), (16, 256, 2304), (3, 5, 7), (1, 1, 1), (0, 5, 3)])
def test_dense_products_on_any_thread_count(restore_threads, dtype, M, K, N):
    """The Dense layer's three products (x·W, xᵀ·dE_dY, dE_dY·Wᵀ; dX and float64's others split over the kernels'
    threads) equal float64 NumPy's on 1, 2 and 3 threads, bitwise the same on each; a strided x is read, not misread."""
    rng = np.random.default_rng(M + K + N)
    layer = Dense(K, N, seed=1, dtype=dtype)
    layer.w[...] = rng.standard_normal((K, N))
    x = rng.standard_normal((M, K)).astype(dtype)
    dy = rng.standard_normal((M, N)).astype(dtype)
    w = layer.w.astype(np.float64)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    expected = (x64 @ w + layer.b.astype(np.float64), x64.T @ dy64, dy64 @ w.T)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-10)
    results = []
    for n in (1, 2, 3):
        cnn_ext.set_num_threads(n)
        y = layer.forward(x)
        g = layer.backward(dy)
        got = (y, g["dW"], g["dX"])
        for a, e in zip(got, expected):
            assert a.shape == e.shape and a.dtype == dtype
            assert_allclose(a, e, **tol)
        results.append(got)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert_array_equal(a, c)
    wide = np.zeros((M, 2 * K), dtype)
    wide[:, ::2] = x
    assert_allclose(layer.forward(wide[:, ::2]), expected[0], **tol)


# ----------------------------------------------------------------------------------------------
# parameter-free layers
# ----------------------------------------------------------------------------------------------

ACTIVATIONS = [
    (ReLU(), lambda x: np.where(x > 0, x, 0.0), lambda x, y: (x > 0).astype(float)),
    (LeakyReLU(0.1), lambda x: np.where(x > 0, x, 0.1 * x), lambda x, y: np.where(x > 0, 1.0, 0.1)),
    (Sigmoid(), lambda x: 1 / (1 + np.exp(-x)), lambda x, y: y * (1 - y)),
    (Tanh(), lambda x: (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x)), lambda x, y: 1 - y ** 2),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layer,f,df", ACTIVATIONS, ids=lambda v: type(v).__name__ if isinstance(v, Layer) else "")
def test_activation_against_reference(layer, f, df, dtype):
    x = readonly(away_from_zero((3, 2, 4), 0).astype(dtype))
    y = layer.forward(x)
    assert y.dtype == dtype
    ref = f(x.astype(np.float64))
    assert_allclose(y, ref, **TOL[dtype])
    dy = readonly(np.random.default_rng(1).standard_normal(x.shape).astype(dtype))
    g = layer.backward(dy)
    assert set(g) == {"dX"} and g["dX"].dtype == dtype
    assert_allclose(g["dX"], dy * df(x.astype(np.float64), ref), **TOL[dtype])


@pytest.mark.parametrize("layer", [ReLU(), LeakyReLU(0.2), Sigmoid(), Tanh(), Softmax(), Softmax(axis=0)],
                         ids=lambda l: repr(l))
def test_activation_finite_differences(layer):
    x = away_from_zero((3, 4), 2)
    R = np.random.default_rng(3).standard_normal((3, 4))
    layer.forward(x)
    g = layer.backward(R)
    assert_allclose(g["dX"], numeric_gradient(lambda: float(np.sum(layer.forward(x) * R)), x), rtol=1e-6, atol=1e-8)


def test_softmax_values_and_stability():
    x = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, -1000.0]])
    y = Softmax().forward(x)
    e = np.exp([1.0, 2.0, 3.0])
    assert_allclose(y[0], e / e.sum(), rtol=1e-12)
    assert_allclose(y[1], [0.5, 0.5, 0.0], atol=1e-300)
    assert np.all(np.isfinite(y))
    assert_allclose(Softmax(axis=0).forward(x).sum(axis=0), 1.0, rtol=1e-12)


def test_sigmoid_does_not_overflow():
    with np.errstate(all="raise"):
        y = Sigmoid().forward(np.array([-1000.0, 0.0, 1000.0]))
    assert_allclose(y, [0.0, 0.5, 1.0], atol=1e-300)


def test_flatten_roundtrip():
    x = readonly(np.arange(24.0).reshape(2, 3, 2, 2))
    layer = Flatten()
    y = layer.forward(x)
    assert y.shape == (2, 12)
    assert_allclose(y, x.reshape(2, 12))
    dy = np.arange(24.0).reshape(2, 12) * 2
    assert_allclose(layer.backward(dy)["dX"], dy.reshape(2, 3, 2, 2))


def test_relu_does_not_overwrite_cached_input():
    """The tutorial's ReLU zeroed its cached input during backward; ours leaves every array alone."""
    x = np.array([[-1.0, 2.0], [3.0, -4.0]])
    x_copy = x.copy()
    layer = ReLU()
    y = layer.forward(x)
    dy = np.ones_like(y)
    g1 = layer.backward(dy)["dX"]
    g2 = layer.backward(dy)["dX"]
    assert_allclose(x, x_copy)
    assert_allclose(dy, 1.0)
    assert_allclose(g1, g2)
    assert_allclose(g1, [[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("make,shape", [
    (lambda: Conv2D(2, 3, 2, seed=0), (2, 2, 4, 4)),
    (lambda: Dense(4, 3, seed=0), (5, 4)),
    (Flatten, (2, 3, 2)),
    (ReLU, (3, 4)), (Sigmoid, (3, 4)), (Tanh, (3, 4)), (LeakyReLU, (3, 4)), (Softmax, (3, 4)),
])
def test_inputs_never_modified(make, shape):
    """Read-only inputs: any write into the caller's arrays would raise."""
    layer = make()
    x = readonly(away_from_zero(shape, 5))
    y = layer.forward(x)
    dy = readonly(np.ones(y.shape))
    params_before = [p.copy() for _, _, p in layer.parameters()]
    g = layer.backward(dy)
    layer.backward(dy)
    assert "dX" in g and g["dX"].shape == shape
    for before, (_, _, p) in zip(params_before, layer.parameters()):
        assert_allclose(p, before)  # backward does not touch the parameters either


def test_integer_input_becomes_float():
    y = ReLU().forward(np.array([[-1, 2]]))
    assert y.dtype == np.float64
    assert Dense(2, 1, dtype=np.float32).forward(np.array([[1, 2]])).dtype == np.float32


# ----------------------------------------------------------------------------------------------
# update and the parameters() / get_config() protocol
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_update_is_in_place_sgd(dtype):
    layer = Conv2D(1, 2, 2, seed=0, dtype=dtype)
    k_obj, b_obj = layer.k, layer.b
    k0, b0 = layer.k.copy(), layer.b.copy()
    grads = {"dK": np.full(k0.shape, 2.0), "dB": np.full(b0.shape, -1.0)}
    layer.update(grads, 0.5)
    assert layer.k is k_obj and layer.b is b_obj       # optimizers rely on the same objects
    assert layer.k.dtype == dtype and layer.b.dtype == dtype
    assert_allclose(layer.k, k0 - 1.0, **TOL[dtype])
    assert_allclose(layer.b, b0 + 0.5, **TOL[dtype])
    assert_allclose(grads["dK"], 2.0)                  # the gradients are left alone


def test_update_of_non_contiguous_or_read_only_parameter():
    layer = Dense(3, 4, seed=0)
    layer.w = np.asfortranarray(layer.w)  # a parameter put there by someone else: still updated, in place
    w_obj, w0 = layer.w, layer.w.copy()
    layer.update({"dW": np.ones((3, 4)), "dB": np.ones(4)}, 0.25)
    assert layer.w is w_obj
    assert_allclose(layer.w, w0 - 0.25, rtol=1e-12)
    layer.w.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        layer.update({"dW": np.ones((3, 4)), "dB": np.ones(4)}, 0.25)


def test_parameters_protocol():
    c, d = Conv2D(1, 2, 3), Dense(4, 2)
    assert [(n, k) for n, k, _ in c.parameters()] == [("k", "dK"), ("b", "dB")]
    assert [(n, k) for n, k, _ in d.parameters()] == [("w", "dW"), ("b", "dB")]
    assert c.parameters()[0][2] is c.k and d.parameters()[0][2] is d.w
    for layer in (Flatten(), ReLU(), Sigmoid(), Tanh(), LeakyReLU(), Softmax()):
        assert layer.parameters() == []
        layer.update({}, 0.1)  # nothing to update, no error


@pytest.mark.parametrize("layer", [
    Conv2D(2, 3, (2, 3), stride=(2, 1), padding=((1, 0), (0, 1)), init="he_uniform", dtype=np.float32),
    Conv2D(1, 4, 5), Conv2D(1, 2, 3, padding="same"), Dense(7, 2, init="glorot_normal", dtype="float32"),
    Dense(3, 2), Flatten(), ReLU(), Sigmoid(), Tanh(), LeakyReLU(0.3), Softmax(axis=0),
], ids=repr)
def test_get_config_rebuilds(layer):
    cfg = json.loads(json.dumps(layer.get_config()))
    rebuilt = type(layer)(**cfg)
    assert rebuilt.get_config() == layer.get_config()
    assert repr(rebuilt) == repr(layer)
    assert [p.shape for _, _, p in rebuilt.parameters()] == [p.shape for _, _, p in layer.parameters()]
    assert [p.dtype for _, _, p in rebuilt.parameters()] == [p.dtype for _, _, p in layer.parameters()]
    assert LAYER_TYPES[type(layer).__name__] is type(layer)


def test_register_layer():
    @register_layer
    class Identity(Layer):
        def forward(self, x):
            return x

        def backward(self, dE_dY):
            return {"dX": dE_dY}

    try:
        assert LAYER_TYPES["Identity"] is Identity
        assert Identity().get_config() == {} and repr(Identity()) == "Identity()"
    finally:
        del LAYER_TYPES["Identity"]
    with pytest.raises(TypeError, match="Layer subclass"):
        register_layer(int)
    assert set(LAYER_TYPES) >= {"Conv2D", "Dense", "Flatten", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "Softmax"}


def test_repr():
    assert repr(Conv2D(1, 4, 5)) == "Conv2D(1, 4, kernel_size=(5, 5), stride=(1, 1))"
    assert repr(Conv2D(1, 4, 3, stride=2, padding=1, dtype=np.float32)) == \
        "Conv2D(1, 4, kernel_size=(3, 3), stride=(2, 2), padding=1, dtype=float32)"
    assert repr(Dense(2304, 256)) == "Dense(n_in=2304, n_out=256)"
    assert repr(Dense(3, 2, init="he_normal")) == "Dense(n_in=3, n_out=2, init='he_normal')"
    assert repr(LeakyReLU(0.2)) == "LeakyReLU(alpha=0.2)"
    assert repr(ReLU()) == "ReLU()" and repr(Softmax()) == "Softmax(axis=-1)"


def test_public_names_exported():
    for name in ("Conv2D", "Flatten", "Dense", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "Softmax", "Layer",
                 "LAYER_TYPES", "register_layer"):
        assert getattr(cnn_ext, name) is globals()[name]


# ----------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------

def test_tutorial_init_scales_and_seeding():
    c = Conv2D(8, 16, 5, seed=0)
    d = Dense(400, 300, seed=0)
    assert abs(c.k.std() - 1.0) < 0.05 and abs(c.k.mean()) < 0.05       # conv ~ N(0, 1)
    assert abs(d.w.std() - 0.1) < 0.005 and abs(d.b.std() - 0.1) < 0.03  # dense ~ 0.1 N(0, 1)
    assert_allclose(Dense(400, 300, seed=0).w, d.w)
    assert not np.allclose(Dense(400, 300, seed=1).w, d.w)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert_allclose(Conv2D(1, 2, 3, rng=rng_a).k, Conv2D(1, 2, 3, rng=rng_b).k)
    assert_allclose(Dense(3, 2, rng=np.random.RandomState(4)).w, Dense(3, 2, rng=np.random.RandomState(4)).w)
    # same draws for both dtypes (up to rounding)
    assert_allclose(Dense(5, 4, seed=2, dtype=np.float32).w, Dense(5, 4, seed=2).w, rtol=1e-6)


def test_global_seed_is_honoured_without_rng():
    """Like the tutorial's np.random.randn: np.random.seed makes the layers reproducible."""
    np.random.seed(123)
    a = Dense(4, 3).w
    np.random.seed(123)
    assert_allclose(Dense(4, 3).w, a)


@pytest.mark.parametrize("init,std", [
    ("he_normal", np.sqrt(2 / 600)), ("he_uniform", np.sqrt(2 / 600)),
    ("glorot_normal", np.sqrt(2 / 1000)), ("glorot_uniform", np.sqrt(2 / 1000)),
])
def test_he_glorot_init(init, std):
    d = Dense(600, 400, init=init, seed=0)
    assert abs(d.w.std() - std) < 0.02 * std
    assert np.all(d.b == 0)
    if init.endswith("uniform"):
        assert np.abs(d.w).max() <= np.sqrt(3) * std
    c = Conv2D(6, 8, 10, init=init, seed=0)  # fan_in 600, fan_out 800
    conv_std = np.sqrt(2 / 600) if init.startswith("he") else np.sqrt(2 / 1400)
    assert abs(c.k.std() - conv_std) < 0.03 * conv_std
    assert np.all(c.b == 0)


# ----------------------------------------------------------------------------------------------
# error paths
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: Conv2D(1, 2, 2), lambda: Dense(2, 2), Flatten, ReLU, Sigmoid, Softmax])
def test_backward_before_forward(make):
    with pytest.raises(RuntimeError, match="backward called before forward"):
        make().backward(np.ones((1, 2)))


@pytest.mark.parametrize("layer,x,match", [
    (Conv2D(1, 4, 5), np.ones((2, 3, 28, 28)),
     r"Conv2D\(1, 4.*expected x of shape \(N, 1, H, W\), got shape \(2, 3, 28, 28\)"),
    (Conv2D(1, 4, 5), np.ones((28, 28)), r"expected x of shape \(N, 1, H, W\), got shape \(28, 28\)"),
    (Conv2D(1, 4, 5), np.ones((2, 1, 3, 3)), r"Conv2D\(1, 4.*\(2, 1, 3, 3\).*larger than"),
    (Dense(2304, 256), np.ones((16, 2300)),
     r"Dense\(n_in=2304.*expected x of shape \(N, 2304\), got shape \(16, 2300\)"),
    (Flatten(), np.ones(5), r"Flatten\(\).*got shape \(5,\)"),
    (Softmax(axis=2), np.ones((2, 3)), r"axis 2 is out of range for x of shape \(2, 3\)"),
])
def test_forward_shape_errors(layer, x, match):
    with pytest.raises(ValueError, match=match):
        layer.forward(x)


@pytest.mark.parametrize("layer,x", [
    (Conv2D(1, 2, 3, seed=0), np.ones((2, 1, 5, 5))), (Dense(3, 2, seed=0), np.ones((4, 3))),
    (Flatten(), np.ones((2, 3, 2))), (ReLU(), np.ones((2, 3))), (Sigmoid(), np.ones((2, 3))),
])
def test_backward_shape_error_names_layer_and_shapes(layer, x):
    y = layer.forward(x)
    bad = np.ones(y.shape[:-1] + (y.shape[-1] + 1,))
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}\(.*dE_dY has shape {re_shape(bad.shape)} "
                                         rf"but the forward output had shape {re_shape(y.shape)}"):
        layer.backward(bad)


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("call,exc,match", [
    (lambda: Conv2D(0, 2, 3), ValueError, "c_in must be >= 1"),
    (lambda: Conv2D(1, 2.5, 3), TypeError, "c_out must be a positive int"),
    (lambda: Conv2D(1, 2, (3, 3, 3)), ValueError, "kernel_size must be an int or a pair"),
    (lambda: Conv2D(1, 2, 0), ValueError, "kernel_size must be >= 1"),
    (lambda: Conv2D(1, 2, 3, stride=0), ValueError, "stride must be >= 1"),
    (lambda: Conv2D(1, 2, 3, padding="full"), ValueError, "padding must be"),
    (lambda: Conv2D(1, 2, 3, stride=2, padding="same"), ValueError, "padding='same' needs stride 1"),
    (lambda: Conv2D(1, 2, 3, init="xavier"), ValueError, "init must be None or one of"),
    (lambda: Conv2D(1, 2, 3, dtype=np.int32), TypeError, "dtype must be float32 or float64"),
    (lambda: Dense(2, 0), ValueError, "n_out must be >= 1"),
    (lambda: Dense(True, 2), TypeError, "n_in must be a positive int"),
    (lambda: Dense(2, 2, dtype=np.float16), TypeError, "dtype must be float32 or float64"),
    (lambda: Dense(2, 2, dtype="nonsense"), TypeError, "dtype must be float32 or float64"),
    (lambda: Dense(2, 2, rng=np.random.default_rng(0), seed=1), ValueError, "rng or seed, not both"),
    (lambda: Dense(2, 2, rng=42), TypeError, "rng must be a numpy.random.Generator"),
    (lambda: LeakyReLU("0.1"), TypeError, "alpha must be a real number"),
    (lambda: Softmax(axis=1.0), TypeError, "axis must be an int"),
    (lambda: ReLU().forward(np.array(["a"])), TypeError, "must hold real numbers"),
])
def test_constructor_and_type_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_update_errors():
    layer = Dense(3, 2, seed=0)
    with pytest.raises(ValueError, match=r"grads has no 'dW'"):
        layer.update({"dB": np.zeros(2)}, 0.1)
    with pytest.raises(ValueError, match=r"dW has shape \(2, 3\) but w has shape \(3, 2\)"):
        layer.update({"dW": np.zeros((2, 3)), "dB": np.zeros(2)}, 0.1)
