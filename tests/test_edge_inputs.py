"""Edge inputs: int arguments beyond 32 bits and shapes too large to allocate (ValueError naming the arguments,
before any allocation), empty batches through every layer, the network and the losses, NumPy-typed layer
arguments that must survive save/load, and the argument checks of Network.update / Layer.update."""
import json

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext import (
    AvgPool2D,
    Conv2D,
    Dense,
    Flatten,
    LeakyReLU,
    MaxPool2D,
    Network,
    ReLU,
    Sigmoid,
    Softmax,
    Tanh,
    avgpool2d_backward,
    avgpool2d_forward,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    conv2d_output_shape,
    get_current_accuracy,
    load,
    maxpool2d_backward,
    maxpool2d_forward,
    mse,
    mse_loss,
    save,
)

INT_MAX = 2**31 - 1

# ---------------------------------------------------------------------------------------------
# huge ints: every int argument fits 32 bits; shapes NumPy cannot allocate are refused up front
# ---------------------------------------------------------------------------------------------

X = np.zeros((1, 1, 5, 5))
K = np.zeros((1, 1, 3, 3))
B = np.zeros(1)
DY = np.zeros((1, 1, 3, 3))  # the gradient of conv2d_forward(X, K, B)
TOO_BIG = r"<= 2\*\*31 - 1 = 2147483647"


@pytest.mark.parametrize("big", [2**31, 2**40, 2**63, 2**100])
@pytest.mark.parametrize("call,name", [
    (lambda v: conv2d_forward(X, K, B, stride=v), "stride"),
    (lambda v: conv2d_forward(X, K, B, stride=(1, v)), "stride"),
    (lambda v: conv2d_forward(X, K, B, padding=v), "padding"),
    (lambda v: conv2d_forward(X, K, B, padding=(v, 0)), "padding"),
    (lambda v: conv2d_forward(X, K, B, padding=((0, v), (0, 0))), "padding"),
    (lambda v: conv2d_forward(X, K, B, padding=np.array([1, v], dtype=object)), "padding"),
    (lambda v: conv2d_kernel_gradient(DY, X, stride=v, kernel_size=3), "stride"),
    (lambda v: conv2d_kernel_gradient(DY, X, padding=v), "padding"),
    (lambda v: conv2d_kernel_gradient(DY, X, kernel_size=v), "kernel_size"),
    (lambda v: conv2d_input_gradient(DY, K, stride=v), "stride"),
    (lambda v: conv2d_input_gradient(DY, K, padding=v), "padding"),
    (lambda v: conv2d_input_gradient(DY, K, input_size=v), "input_size"),
    (lambda v: conv2d_output_shape((v, 5), 3), "input_hw"),
    (lambda v: Conv2D(1, 1, v), "kernel_size"),
    (lambda v: Conv2D(1, 1, 3, stride=v), "stride"),
    (lambda v: Conv2D(1, 1, 3, padding=v), "padding"),
    (lambda v: Conv2D(1, 1, 3, dilation=v), "dilation"),
    (lambda v: maxpool2d_forward(X, v), "kernel_size"),
    (lambda v: maxpool2d_forward(X, 2, v), "stride"),
    (lambda v: maxpool2d_backward(DY[:, :, :2, :2], X, 2, (2, v)), "stride"),
    (lambda v: avgpool2d_forward(X, (v, 2)), "kernel_size"),
    (lambda v: avgpool2d_backward(DY, 2, input_size=v), "input_size"),
    (lambda v: avgpool2d_backward(DY, 2, stride=v), "stride"),
    (lambda v: MaxPool2D(v), "kernel_size"),
    (lambda v: AvgPool2D(2, stride=v), "stride"),
])
def test_ints_beyond_32_bits_are_value_errors_naming_the_argument(call, name, big):
    # was: OverflowError from the kernels, or NumPy's "array is too big" / "Maximum allowed dimension exceeded"
    with pytest.raises(ValueError, match=rf"{name} must be {TOO_BIG} .*, got .*{big}"):
        call(big)


def test_largest_32_bit_ints_are_accepted():
    assert conv2d_forward(X, K, B, stride=INT_MAX).shape == (1, 1, 1, 1)
    assert conv2d_output_shape((INT_MAX, 5), (INT_MAX, 5)) == (1, 1)
    assert maxpool2d_forward(X, 5, INT_MAX).shape == (1, 1, 1, 1)
    assert Conv2D(1, 1, 3, stride=INT_MAX).stride == (INT_MAX, INT_MAX)


@pytest.mark.parametrize("call,match", [
    # outputs with a side beyond 32 bits: named with the arguments that made them
    (lambda: conv2d_forward(X, K, B, padding=INT_MAX), r"x \(1, 1, 5, 5\) with kernels \(1, 1, 3, 3\), padding "
     r"\(2147483647, .*output 4294967297x4294967297; sizes must be <= 2\*\*31 - 1"),
    (lambda: conv2d_forward(X, K, B, padding=((2**30, 2**30), (0, 0))), r"padding .*output 2147483651x3"),
    (lambda: conv2d_output_shape((5, 5), 3, padding=2**30), r"output 2147483651x2147483651"),
    (lambda: conv2d_kernel_gradient(DY[:, :, :1, :1], X, padding=INT_MAX), r"kernel 4294967299x4294967299"),
    (lambda: conv2d_input_gradient(DY, K, stride=INT_MAX), r"stride \(2147483647, 2147483647\): input "
     r"4294967297x4294967297"),
    (lambda: avgpool2d_backward(DY, 2, stride=INT_MAX), r"stride \(2147483647, 2147483647\): input 4294967296"),
    # sides within 32 bits whose arrays would not fit an intp of bytes: refused before NumPy's own error
    (lambda: conv2d_forward(X, K, B, padding=2**29), r"conv2d_forward: x \(1, 1, 5, 5\) with kernels \(1, 1, 3, 3\), "
     r"stride \(1, 1\) and padding \(536870912, .* gives y of shape \(1, 1, 1073741827, 1073741827\): \d+ bytes, "
     r"more than can be allocated"),
    (lambda: conv2d_kernel_gradient(DY[:, :, :1, :1], X, padding=2**29), r"conv2d_kernel_gradient: .* give dK of "
     r"shape \(1, 1, 1073741829, 1073741829\)"),
    (lambda: conv2d_input_gradient(DY, K, stride=2**29), r"conv2d_input_gradient: dE_dY \(1, 1, 3, 3\) with kernels "
     r"\(1, 1, 3, 3\), stride \(536870912, 536870912\) .* gives dX of shape \(1, 1, 1073741827, 1073741827\)"),
    (lambda: avgpool2d_backward(DY, 2, stride=2**29), r"avgpool2d_backward: .* gives dX of shape "
     r"\(1, 1, 1073741826, 1073741826\)"),
    (lambda: avgpool2d_backward(DY[:, :, :1, :1], INT_MAX, input_size=INT_MAX), r"avgpool2d_backward: .* dX of "
     r"shape \(1, 1, 2147483647, 2147483647\)"),
    (lambda: Conv2D(1, 1, INT_MAX), r"Conv2D: c_in=1, c_out=1, kernel_size=\(2147483647, 2147483647\) give kernels "
     r"of shape .* more than can be allocated"),
    (lambda: Conv2D(2**62, 4, 3), r"Conv2D: c_in=4611686018427387904, .* more than can be allocated"),
    (lambda: Dense(2**62, 4), r"Dense: n_in=4611686018427387904, n_out=4 give weights of shape "
     r"\(4611686018427387904, 4\)"),
])
def test_outputs_too_large_are_value_errors_before_allocating(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_layers_name_themselves_around_a_too_large_output():
    with pytest.raises(ValueError, match=r"Conv2D\(1, 1, .*input of shape \(1, 1, 5, 5\): .*output 2147483651"):
        Conv2D(1, 1, 3, padding=2**30, seed=0).forward(X)


# ---------------------------------------------------------------------------------------------
# empty batches (N = 0): empty results of the right shapes, zero parameter gradients, no NaN
# ---------------------------------------------------------------------------------------------

X0 = np.zeros((0, 2, 4, 4))


def forward_backward(layer, x):
    y = layer.forward(x)
    return y, layer.backward(np.zeros(y.shape))


@pytest.mark.filterwarnings("error")  # NumPy's "Mean of empty slice" RuntimeWarning came with the NaN
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_empty_batch_gives_zero_gradients(dtype):
    layer = Dense(32, 3, seed=0, dtype=dtype)
    w, b = layer.w.copy(), layer.b.copy()
    y, g = forward_backward(layer, np.zeros((0, 32), dtype=dtype))
    assert y.shape == (0, 3) and y.dtype == dtype
    assert_array_equal(g["dW"], np.zeros((32, 3)))
    assert_array_equal(g["dB"], np.zeros(3))  # was NaN: a mean over no samples
    assert g["dW"].dtype == g["dB"].dtype == dtype
    assert g["dX"].shape == (0, 32)
    layer.update(g, 0.1)
    assert_array_equal(layer.w, w)
    assert_array_equal(layer.b, b)


def test_dense_and_conv2d_agree_on_empty_batches():
    conv = forward_backward(Conv2D(2, 3, 4, seed=0), X0)[1]
    dense = forward_backward(Dense(32, 3, seed=0), X0.reshape(0, 32))[1]
    assert_array_equal(conv["dB"], dense["dB"])
    assert not conv["dK"].any() and not dense["dW"].any()


def test_flatten_empty_batch():
    layer = Flatten()
    y, g = forward_backward(layer, X0)  # was: "cannot reshape array of size 0 into shape (0,newaxis)"
    assert y.shape == (0, 32)
    assert g["dX"].shape == (0, 2, 4, 4)
    assert layer.forward(np.zeros((3, 2, 0))).shape == (3, 0)  # empty features, same reason


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("layer", [ReLU(), Sigmoid(), Tanh(), LeakyReLU(), Softmax(), Softmax(axis=0),
                                   MaxPool2D(2), AvgPool2D(2, stride=1), Conv2D(2, 3, 3, padding=1, stride=2, seed=0)],
                         ids=repr)
def test_other_layers_empty_batch(layer):
    y, g = forward_backward(layer, X0)
    assert y.shape[0] == 0 and g["dX"].shape == X0.shape
    for key, value in g.items():
        assert np.isfinite(value).all(), key


def empty_batch_net():
    return Network([Conv2D(2, 3, 3, seed=0), ReLU(), MaxPool2D(2), Flatten(), Dense(3, 4, seed=1), Sigmoid()])


@pytest.mark.filterwarnings("error")
def test_network_empty_batch_leaves_parameters_alone():
    net = empty_batch_net()
    before = [p.copy() for _, _, p in net.parameters()]
    y = net.forward(X0)
    assert y.shape == (0, 4)
    grads = net.backward(np.zeros(y.shape))
    assert len(grads) == len(net)
    net.update(0.1, grads)
    for (name, _, p), old in zip(net.parameters(), before):
        assert_array_equal(p, old, err_msg=name)
    assert net.predict(X0).shape == (0, 4)


@pytest.mark.parametrize("fn", [mse, mse_loss])
def test_mse_of_nothing_is_a_value_error(fn):
    with pytest.raises(ValueError, match=r"must not be empty \(a mean over no elements is undefined\), got shape "
                                         r"\(0, 3\)"):
        fn(np.zeros((0, 3)), np.zeros((0, 3)))


def test_accuracy_of_no_samples_is_a_value_error_and_empty_batches_count_for_nothing():
    net = empty_batch_net()
    labels = np.zeros(0, dtype=int)
    for X, y in ((X0, labels), ([X0], [labels]), ([X0], [np.zeros((0, 4))])):  # arrays, and lists of batches
        with pytest.raises(ValueError, match=r"no test samples \(the accuracy of 0 samples is undefined\)"):
            get_current_accuracy(net, X, y)
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4))
    predicted = np.argmax(net.forward(x), axis=1)
    assert get_current_accuracy(net, [X0, x], [labels, predicted]) == 1.0


# ---------------------------------------------------------------------------------------------
# NumPy-typed layer arguments: kept as plain Python values, so get_config() is JSON and save/load round-trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,stored", [
    (dict(padding=np.array([1, 2])), (1, 2)),  # was kept as the array: save failed "not JSON-serialisable"
    (dict(padding=np.array([[1, 0], [2, 1]])), ((1, 0), (2, 1))),
    (dict(padding=((np.int32(1), np.int32(1)), np.array([0, 2]))), ((1, 1), (0, 2))),
    (dict(padding=[np.int64(1), np.uint8(2)]), (1, 2)),
    (dict(padding=np.int64(1)), 1),
    (dict(padding=np.array(2)), 2),
    (dict(padding=[[1, 0], [2, 1]]), ((1, 0), (2, 1))),  # as JSON gives it back
    (dict(padding="SAME"), "same"),
    (dict(padding="Valid"), "valid"),
    (dict(padding=np.str_("same")), "same"),
    (dict(stride=np.array([2, 1]), kernel_size=np.array([3, 2])), "valid"),
    (dict(stride=np.int16(2), kernel_size=(np.int8(3), 3)), "valid"),
])
def test_conv2d_numpy_arguments_are_plain_and_round_trip(tmp_path, kwargs, stored):
    kwargs = dict(kwargs)
    layer = Conv2D(np.int64(2), np.int32(3), kwargs.pop("kernel_size", 3), seed=0, **kwargs)
    assert layer.padding == stored
    for value in (layer.padding, layer.stride, layer.kernel_size, layer.c_in, layer.c_out):
        assert type(value) in (int, str, tuple)
        assert all(type(v) in (int, tuple) for v in (value if isinstance(value, tuple) else ()))
    cfg = layer.get_config()
    assert json.loads(json.dumps(cfg)) == cfg
    net = Network([layer])
    back = load(save(net, tmp_path / "m.npz"))[0]
    assert (back.padding, back.stride, back.kernel_size) == (layer.padding, layer.stride, layer.kernel_size)
    assert_array_equal(back.k, layer.k)
    x = np.random.default_rng(1).standard_normal((2, 2, 7, 6))
    assert_array_equal(back.forward(x), layer.forward(x))
    assert repr(back) == repr(layer)


@pytest.mark.parametrize("cls", [MaxPool2D, AvgPool2D])
def test_pooling_numpy_arguments_are_plain_and_round_trip(tmp_path, cls):
    layer = cls(np.array([2, 3]), stride=np.int64(1))
    assert (layer.kernel_size, layer.stride) == ((2, 3), (1, 1))
    assert {type(v) for v in layer.kernel_size + layer.stride} == {int}
    back = load(save(Network([layer]), tmp_path / "p.npz"))[0]
    assert (back.kernel_size, back.stride) == (layer.kernel_size, layer.stride)


@pytest.mark.parametrize("padding,exc,match", [
    (np.array([1, 2, 3]), ValueError, r"padding must be an int or a pair of ints"),
    (np.array([1.0, 2.0]), TypeError, r"padding must be an int or a pair of ints"),
    (np.array([-1, 2]), ValueError, r"padding must be >= 0"),
    (np.array([True, False]), TypeError, r"padding must be an int or a pair of ints"),
    ("full", ValueError, r"padding must be 'valid', 'same', an int or a pair, got 'full'"),
])
def test_conv2d_bad_numpy_padding_is_refused_at_construction(padding, exc, match):
    with pytest.raises(exc, match=match):
        Conv2D(1, 1, 3, padding=padding)


# ---------------------------------------------------------------------------------------------
# update: Network.update(learning_rate, grads) and Layer.update(grads, learning_rate) name swapped or mistyped
# arguments; the learning rate is any finite real number
# ---------------------------------------------------------------------------------------------

def stepped_net():
    net = Network([Conv2D(1, 2, 2, seed=0), ReLU(), Flatten(), Dense(8, 3, seed=1)])
    y = net.forward(np.random.default_rng(0).standard_normal((4, 1, 3, 3)))
    return net, net.backward(np.ones(y.shape))


def params_of(net):
    return [p.copy() for _, _, p in net.parameters()]


def assert_unchanged(net, before):
    for (name, _, p), old in zip(net.parameters(), before):
        assert_array_equal(p, old, err_msg=name)


NET_CALL = r"Network\.update\(learning_rate, grads\): "


@pytest.mark.parametrize("args,exc,match", [
    # swapped: was "'float' object is not iterable"
    (lambda g: (g, 0.1), TypeError, NET_CALL + r"learning_rate must be a real number, got list; did you swap the "
                                              r"arguments\?"),
    (lambda g: (tuple(g), np.float32(0.1)), TypeError, r"got tuple; did you swap the arguments\?"),
    (lambda g: ("0.1", g), TypeError, NET_CALL + r"learning_rate must be a real number, got str$"),
    (lambda g: (None, g), TypeError, r"learning_rate must be a real number, got NoneType$"),
    (lambda g: (True, g), TypeError, r"learning_rate must be a real number, got bool$"),
    (lambda g: (np.array([0.1]), g), TypeError, r"learning_rate must be a real number, got ndarray$"),
    (lambda g: (0.1, 0.1), TypeError, NET_CALL + r"grads must be the list of per-layer dicts backward returned, "
                                                 r"got float"),
    (lambda g: (0.1, g[0]), TypeError, r"grads must be the list .* got dict"),
    (lambda g: (0.1, None), TypeError, r"grads must be the list .* got NoneType"),
    (lambda g: (float("nan"), g), ValueError, NET_CALL + r"learning_rate must be finite, got nan"),
    (lambda g: (np.inf, g), ValueError, r"learning_rate must be finite, got inf"),
    (lambda g: (-np.float32(np.inf), g), ValueError, r"learning_rate must be finite, got -inf"),
])
def test_network_update_names_swapped_and_bad_arguments_before_any_change(args, exc, match):
    net, grads = stepped_net()
    before = params_of(net)
    with pytest.raises(exc, match=match):
        net.update(*args(grads))
    assert_unchanged(net, before)


@pytest.mark.parametrize("layer", [Dense(8, 3, seed=1), ReLU(), MaxPool2D(2)], ids=repr)
@pytest.mark.parametrize("args,exc,match", [
    (lambda g: (0.1, g), TypeError, r"\.update\(grads, learning_rate\): learning_rate must be a real number, got "
                                    r"dict; did you swap the arguments\?"),
    (lambda g: (g, [0.1]), TypeError, r"learning_rate must be a real number, got list; did you swap"),
    (lambda g: (g, "0.1"), TypeError, r"learning_rate must be a real number, got str$"),
    (lambda g: ([g], 0.1), TypeError, r"\.update\(grads, learning_rate\): grads must be the dict backward "
                                      r"returned, got list"),
    (lambda g: (None, 0.1), TypeError, r"grads must be the dict backward returned, got NoneType"),
    (lambda g: (g, float("nan")), ValueError, r"learning_rate must be finite, got nan"),
    (lambda g: (g, -np.inf), ValueError, r"learning_rate must be finite, got -inf"),
])
def test_layer_update_names_swapped_and_bad_arguments(layer, args, exc, match):
    # layers without parameters used to accept anything in silence
    grads = {"dW": np.ones((8, 3)), "dB": np.ones(3)} if isinstance(layer, Dense) else {"dX": np.ones(1)}
    before = [p.copy() for _, _, p in layer.parameters()]
    with pytest.raises(exc, match=rf"{type(layer).__name__}{match}" if match.startswith(r"\.") else match):
        layer.update(*args(grads))
    for (name, _, p), old in zip(layer.parameters(), before):
        assert_array_equal(p, old, err_msg=name)


@pytest.mark.parametrize("lr", [0.5, np.float32(0.5), np.float64(0.5), np.array(0.5), 1, np.int64(1), 0, -0.5])
def test_any_finite_real_learning_rate_is_sgd(lr):
    # 0 leaves the parameters alone; a negative rate ascends the gradient (allowed, as p -= lr * g says)
    net, grads = stepped_net()
    before = params_of(net)
    net.update(lr, grads)
    rate = float(lr)
    for (name, key, p), old in zip(net.parameters(), before):
        i = int(name.split(".")[0])
        assert_allclose(p, old - rate * grads[i][key], rtol=1e-15, atol=1e-15, err_msg=name)  # axpy may fuse


def test_network_update_is_all_or_nothing():
    """A bad gradient dict of a later layer is refused before the earlier layers change (audit finding)."""
    net = Network([Dense(4, 3, seed=0), Sigmoid(), Dense(3, 2, seed=1)])  # every gradient nonzero
    x = np.ones((5, 4))
    grads = net.backward(net.forward(x) - 1.0)
    before = [p.copy() for layer in net.layers for _, _, p in layer.parameters()]
    bad = [dict(g) for g in grads]
    bad[2]["dW"] = np.zeros((2, 3))  # transposed
    with pytest.raises(ValueError, match=r"dW has shape \(2, 3\) but w has shape \(3, 2\)"):
        net.update(0.1, bad)
    missing = [dict(g) for g in grads]
    del missing[2]["dB"]
    with pytest.raises(ValueError, match="grads has no 'dB'"):
        net.update(0.1, missing)
    after = [p for layer in net.layers for _, _, p in layer.parameters()]
    for b, a in zip(before, after):
        assert_array_equal(a, b)
    net.update(0.1, grads)  # the good dicts still update: the last layer's bias gradient is mean(y - 1) != 0
    last_b = net.layers[2].b
    assert not np.array_equal(last_b, before[-1])
    assert_allclose(last_b, before[-1] - 0.1 * grads[2]["dB"])


@pytest.mark.parametrize("lr,exc,match", [
    (float("nan"), ValueError, r"^fit: learning_rate must be finite, got nan$"),
    (np.inf, ValueError, r"^fit: learning_rate must be finite"),
    ("0.1", TypeError, r"^fit: learning_rate must be a real number, got str$"),
    ([0.1], TypeError, r"^fit: learning_rate must be a real number, got list$"),
])
def test_fit_checks_the_learning_rate_before_training(lr, exc, match):
    """Refused at the call, before a forward and backward pass (which used to run first)."""
    from cnn_ext import fit

    net = Network([Dense(3, 2, seed=0)])
    calls = []
    forward = net.forward
    net.forward = lambda x: calls.append(1) or forward(x)
    with pytest.raises(exc, match=match):
        fit(net, np.ones((4, 3)), np.array([0, 1, 0, 1]), epochs=1, learning_rate=lr, progress=False)
    assert calls == []


def test_network_update_calls_a_layers_own_update_rule():
    """A layer that overrides update gets its dict and the rate; the others are plain SGD."""
    from cnn_ext.layers import Layer

    class Halving(Layer):  # a custom layer with its own update rule
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, x):
            return x

        def backward(self, dE_dY, need_dX=True):
            return {"dX": dE_dY}

        def update(self, grads, learning_rate):
            self.calls.append((grads, learning_rate))

    custom = Halving()
    net = Network([Dense(3, 2, seed=0), custom])
    grads = net.backward(net.forward(np.ones((4, 3))) - 1.0)
    b0 = net.layers[0].b.copy()
    net.update(0.5, grads)
    assert custom.calls == [(grads[1], 0.5)]
    assert_allclose(net.layers[0].b, b0 - 0.5 * grads[0]["dB"])


@pytest.mark.parametrize("pair, error, match", [
    ((0, 1), ValueError, "stride must be >= 1"),
    ((1, -3), ValueError, "stride must be >= 1"),
    ((1, 2**31), ValueError, TOO_BIG),
    ((1, True), ValueError, "stride must be an int or a pair of ints"),
    ((1.0, 1), TypeError, "stride must be an int or a pair of ints"),
])
def test_pairs_of_ints_are_checked_like_ints(pair, error, match):
    """Pairs of exact ints take a short path through the checks (a layer's stride / kernel size): the values
    are still checked; other pairs take the generic one."""
    with pytest.raises(error, match=match):
        conv2d_forward(X, K, B, stride=pair)
    with pytest.raises(error, match=match):
        conv2d_output_shape((5, 5), 3, stride=pair)
    assert conv2d_output_shape((28, 27), (5, 4), (1, 2), "valid") == (24, 12)
