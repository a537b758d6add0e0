"""Layer construction (issue #17): absurd sizes and bad seeds are ValueError / TypeError naming the argument
before anything is allocated or drawn, and the weight-free construction path load() builds with
(``param_shapes``, ``without_weights``, ``set_weights``, ``from_config``)."""
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import (
    LAYER_TYPES, Conv2D, Dense, Flatten, Layer, LeakyReLU, Network, ReLU, conv2d_forward, conv2d_input_gradient,
    conv2d_kernel_gradient, load, save,
)

X = np.zeros((1, 1, 5, 5))
K = np.zeros((1, 1, 3, 3))
B = np.zeros(1)


# ---- sizes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("call,match", [
    (lambda: Conv2D(2**31, 1, 1), r"c_in must be <= 2147483647, got 2147483648"),
    (lambda: Conv2D(1, 2**31, 1), r"c_out must be <= 2147483647, got 2147483648"),
    (lambda: Dense(2**31, 1), r"n_in must be <= 2147483647, got 2147483648"),
    (lambda: Dense(1, 2**31), r"n_out must be <= 2147483647, got 2147483648"),
    # within 32 bits, but terabytes of weights: named before anything is drawn
    (lambda: Dense(10**6, 10**6), r"Dense: n_in=1000000, n_out=1000000 give weights of shape \(1000000, 1000000\): "
                                  r"8000000000000 bytes, more than this machine's memory"),
    (lambda: Dense(10**6, 10**6, dtype=np.float32, init="he_normal"), r"Dense: n_in=1000000, n_out=1000000"),
    (lambda: Conv2D(2**20, 2**20, 3), r"Conv2D: c_in=1048576, c_out=1048576, kernel_size=\(3, 3\) give kernels"),
    # outputs that cannot fit: the padded input / output of padding=2**20 is tens of terabytes
    (lambda: conv2d_forward(X, K, B, padding=2**20), r"conv2d_forward: x \(1, 1, 5, 5\) with kernels "
                                                     r"\(1, 1, 3, 3\), stride \(1, 1\) and padding \(1048576, .* "
                                                     r"more than this machine's memory"),
    (lambda: conv2d_kernel_gradient(np.zeros((1, 1, 1, 1)), X, padding=2**20), r"conv2d_kernel_gradient: .*dK "
                                                                                r"of shape \(1, 1, 2097157, 2097157\)"),
    (lambda: conv2d_input_gradient(np.zeros((1, 1, 2, 2)), K, stride=2**20, input_size=(2**21, 2**21)),
     r"conv2d_input_gradient: .*dX of shape \(1, 1, 2097152, 2097152\)"),
    (lambda: Conv2D(1, 1, 3, padding=2**20, seed=0).forward(X), r"Conv2D\(1, 1, .*padding=1048576.*input of shape "
                                                                r"\(1, 1, 5, 5\): .*more than this machine's memory"),
])
def test_absurd_sizes_are_value_errors_naming_the_argument(call, match):
    state = np.random.get_state()
    with pytest.raises(ValueError, match=match):
        call()
    assert_array_equal(np.random.get_state()[1], state[1])  # nothing drawn before the refusal


def test_allocation_refuses_more_than_physical_memory():
    from cnn_ext import _checks
    assert 0 < _checks.PHYSICAL_MEMORY <= np.iinfo(np.intp).max
    n = _checks.PHYSICAL_MEMORY // 8 + 1
    with pytest.raises(ValueError, match=rf"thing of shape \({n},\): {8 * n} bytes, more than this machine's memory"):
        _checks.allocation((n,), np.float64, lambda: "thing")
    _checks.allocation((n,), np.int8, lambda: "thing")  # an eighth of it fits
    _checks.allocation((10**6, 0), np.float64, lambda: "thing")


# ---- seeds and other arguments -----------------------------------------------------------------

@pytest.mark.parametrize("cls,args", [(Conv2D, (1, 2, 3)), (Dense, (3, 2))])
@pytest.mark.parametrize("seed,exc", [
    (-1, ValueError), (-(2**70), ValueError), ("a", TypeError), (b"a", TypeError), (1.5, TypeError),
    (1.0, TypeError), (True, TypeError), (np.float64(2), TypeError), ([1, -2], ValueError), (object(), TypeError),
])
def test_bad_seed_is_named(cls, args, seed, exc):
    with pytest.raises(exc, match=r"seed must be an int >= 0 \(or a sequence of them, or a SeedSequence\), got"):
        cls(*args, seed=seed)


@pytest.mark.parametrize("seed", [0, 2**80, np.int64(3), [1, 2], np.random.SeedSequence(4)])
def test_good_seeds_still_work(seed):
    a, b = Dense(3, 2, seed=seed), Dense(3, 2, seed=seed)
    assert_array_equal(a.w, b.w)
    assert np.all(np.isfinite(a.w)) and a.w.std() > 0


@pytest.mark.parametrize("alpha", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_leaky_relu_refuses_non_finite_alpha(alpha):
    with pytest.raises(ValueError, match=r"alpha must be"):
        LeakyReLU(alpha=alpha)


# ---- the weight-free construction path ----------------------------------------------------------

@pytest.mark.parametrize("layer", [
    Conv2D(2, 3, (3, 2), stride=2, padding=1, init="he_normal", seed=0),
    Conv2D(2, 3, 1, seed=0, dtype=np.float32),
    Dense(4, 5, seed=0),
    Dense(4, 5, seed=0, dtype=np.float32, init="glorot_uniform"),
])
def test_param_shapes_from_the_config_match_the_arrays(layer):
    shapes = layer.param_shapes()
    assert list(shapes) == [name for name, _, _ in layer.parameters()]
    assert shapes == {name: (arr.shape, arr.dtype) for name, _, arr in layer.parameters()}
    empty = type(layer).without_weights(layer.get_config())
    assert empty.param_shapes() == shapes
    assert repr(empty) == repr(layer)
    weights = {name: arr for name, _, arr in layer.parameters()}
    back = type(layer).from_config(layer.get_config(), weights)
    for name, _, arr in back.parameters():
        assert_array_equal(arr, weights[name])
        assert arr is not weights[name] and not np.shares_memory(arr, weights[name])  # copied
    x = np.random.default_rng(0).standard_normal((2, 4) if isinstance(layer, Dense) else (2, 2, 6, 5))
    assert_array_equal(back.forward(x), layer.forward(x))


def test_without_weights_draws_and_allocates_nothing():
    state = np.random.get_state()
    tracemalloc.start()
    try:
        layer = Dense.without_weights({"n_in": 2**15, "n_out": 2**15})  # 8 GiB of weights, were they drawn
        conv = Conv2D.without_weights({"c_in": 2**10, "c_out": 2**10, "kernel_size": 32})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1e6
    assert_array_equal(np.random.get_state()[1], state[1])
    assert layer.param_shapes()["w"] == ((2**15, 2**15), np.dtype(np.float64))
    assert conv.param_shapes()["k"] == ((2**10, 2**10, 32, 32), np.dtype(np.float64))
    with pytest.raises(ValueError, match=r"no rng or seed"):
        Dense.without_weights({"n_in": 2, "n_out": 2, "seed": 1})
    with pytest.raises(ValueError, match=r"n_in must be >= 1"):
        Dense.without_weights({"n_in": 0, "n_out": 2})
    with pytest.raises(ValueError, match=r"Dense: n_in=1000000, n_out=1000000 give weights"):
        Dense.without_weights({"n_in": 10**6, "n_out": 10**6})


def test_set_weights_checks_everything_before_changing_anything():
    layer = Conv2D(1, 2, 3, seed=0)
    k, b = layer.k.copy(), layer.b.copy()
    for weights, match in [
        ({"k": np.zeros((2, 1, 3, 3))}, r"weights must hold exactly \['b', 'k'\], got \['k'\]"),
        ({"k": np.zeros((2, 1, 3, 3)), "b": np.zeros(3)}, r"weight 'b' must be an array of shape \(2,\) and dtype "
                                                         r"float64, got shape \(3,\)"),
        ({"k": np.zeros((2, 1, 3, 3), np.float32), "b": np.zeros(2)}, r"weight 'k' .* got shape \(2, 1, 3, 3\) "
                                                                      r"and dtype float32"),
        ({"k": [[0.0]], "b": np.zeros(2)}, r"weight 'k' must be an array .* got list"),
    ]:
        with pytest.raises(ValueError, match=match):
            layer.set_weights(weights)
        assert_array_equal(layer.k, k)
        assert_array_equal(layer.b, b)
    with pytest.raises(TypeError, match=r"weights must be a dict"):
        layer.set_weights([k, b])


class _Scale(Layer):
    """A custom layer with one parameter and no param_shapes of its own: built as cls(**cfg)."""

    _config_keys = ("n",)

    def __init__(self, n):
        super().__init__()
        self.n = n
        self.s = np.random.standard_normal(n)

    def parameters(self):
        return [("s", "dS", self.s)]

    def forward(self, x):
        self._x, y = x, x * self.s
        self._y_shape = y.shape
        return y


def test_custom_layers_keep_the_constructor_path(tmp_path, monkeypatch):
    monkeypatch.setitem(LAYER_TYPES, "_Scale", _Scale)  # as register_layer does, undone after the test
    layer = _Scale(3)
    s = layer.s
    assert layer.param_shapes() == {"s": ((3,), np.dtype(np.float64))}
    built = _Scale.without_weights({"n": 3})
    assert built.s.shape == (3,)
    back = _Scale.from_config({"n": 3}, {"s": np.arange(3.0)})
    assert_array_equal(back.s, np.arange(3.0))
    layer.set_weights({"s": np.ones(3)})
    assert layer.s is s  # copied into the same array object
    assert_array_equal(layer.s, np.ones(3))
    net = Network([Dense(2, 3, seed=0), _Scale(3)])
    got = load(save(net, tmp_path / "c.npz"))
    assert type(got[1]) is _Scale
    assert_array_equal(got[1].s, net[1].s)
    assert_array_equal(got[0].w, net[0].w)


def test_load_draws_nothing_for_built_in_layers(tmp_path, monkeypatch):
    net = Network([Conv2D(1, 2, 3, seed=0), ReLU(), Flatten(), Dense(8, 2, seed=1)])
    path = save(net, tmp_path / "n.npz")

    def refuse(*args, **kwargs):
        raise AssertionError("load drew random weights")

    # saved layers carry no rng or seed: they would draw from NumPy's global state, through these
    monkeypatch.setattr(np.random, "standard_normal", refuse)
    monkeypatch.setattr(np.random, "uniform", refuse)
    back = load(path)
    for (n1, _, a1), (n2, _, a2) in zip(back.parameters(), net.parameters()):
        assert n1 == n2
        assert_array_equal(a1, a2)
        assert a1.flags.c_contiguous and a1.flags.writeable and a1.flags.aligned
