"""Empty batches (N = 0) through every layer, the network, the losses and the accuracy helper: empty results of
the right shapes, zero parameter gradients, no NaN."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

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
    get_current_accuracy,
    mse,
    mse_loss,
)

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
