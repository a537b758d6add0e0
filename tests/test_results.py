"""Results belong to the caller: no later call writes an array cnn_ext returned, whatever the caller did with
it (kept it, froze it, dropped it behind a weak reference); ops write into ``out=`` when given one."""
import gc
import weakref

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import (
    Conv2D,
    Dense,
    MaxPool2D,
    ReLU,
    Sigmoid,
    Tanh,
    avgpool2d_forward,
    conv2d_forward,
    conv2d_input_gradient,
    conv2d_kernel_gradient,
    maxpool2d_forward,
)

BIG = (8, 16, 48, 48)  # 1.2 MB in float32: large enough for any reuse of big arrays to take part


def _layers_and_inputs(rng):
    """(layer, x) pairs with large forward outputs and input gradients."""
    x = rng.standard_normal(BIG).astype(np.float32)
    return [
        (ReLU(), x),
        (Sigmoid(), x),
        (Tanh(), x),
        (MaxPool2D(2), rng.standard_normal((8, 16, 96, 96)).astype(np.float32)),
        (Conv2D(16, 16, 3, padding="same", dtype=np.float32, seed=0), x),
        (Dense(2048, 1024, dtype=np.float32, seed=0), rng.standard_normal((256, 2048)).astype(np.float32)),
    ]


def _fresh_copy(layer):
    fresh = type(layer)(**layer.get_config())
    for name, _, p in layer.parameters():
        getattr(fresh, name)[...] = p
    return fresh


@pytest.mark.parametrize("case", range(6))
@pytest.mark.parametrize("how", ["kept", "frozen", "frozen_dropped", "weakref"])
def test_later_calls_never_write_a_returned_array(case, how):
    rng = np.random.default_rng(case)
    layer, x = _layers_and_inputs(rng)[case]
    held, expected = [], []
    for step in range(5):
        xs = x + step  # a different input each step
        y = layer.forward(xs)
        dy = np.full(y.shape, step + 1.0, dtype=y.dtype)
        dx = layer.backward(dy)["dX"]
        fresh = _fresh_copy(layer)
        expected.append((fresh.forward(xs).copy(), fresh.backward(dy)["dX"].copy()))
        if how.startswith("frozen"):  # a user's flag change must never make a later call fail
            y.flags.writeable = False
            dx.flags.writeable = False
        if how == "frozen_dropped":
            del y, dx
            continue
        if how == "weakref":  # dropped, but reachable through weak references
            held.append((weakref.ref(y), weakref.ref(dx)))
            del y, dx
            gc.collect()
        else:
            held.append((y, dx))
    assert len(held) == (0 if how == "frozen_dropped" else len(expected))
    for pair, refs in zip(held, expected):
        for got, ref in zip(pair, refs):
            if how == "weakref":
                got = got()
                if got is None:  # freed: nothing can be read through it
                    continue
            assert_array_equal(got, ref)


@pytest.mark.parametrize("op", ["forward", "input_gradient", "kernel_gradient", "maxpool", "avgpool"])
def test_frozen_or_weakly_held_op_results_are_never_written_again(op):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 16, 40, 40)).astype(np.float32)
    k = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = np.zeros(32, np.float32)
    dy = rng.standard_normal((8, 32, 40, 40)).astype(np.float32)
    call = {
        "forward": lambda s: conv2d_forward(x + s, k, b, padding=1),
        "input_gradient": lambda s: conv2d_input_gradient(dy + s, k, padding=1),
        "kernel_gradient": lambda s: conv2d_kernel_gradient(dy + s, x, padding=1),
        "maxpool": lambda s: maxpool2d_forward(x + s, 2),
        "avgpool": lambda s: avgpool2d_forward(x + s, 2),
    }[op]
    first = call(0.0)
    ref = first.copy()
    first.flags.writeable = False
    weak = weakref.ref(call(1.0))  # dropped at once
    for s in range(2, 5):
        out = call(float(s))  # must not fail on the frozen array, nor write it or the dropped one
        assert out.flags.writeable
    assert_array_equal(first, ref)
    dropped = weak()
    if dropped is not None:
        assert_array_equal(dropped, call(1.0))


# ----------------------------------------------------------------------------------------------
# out= of the operations
# ----------------------------------------------------------------------------------------------

def test_forward_and_input_gradient_write_into_out():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 9, 8))
    k = rng.standard_normal((5, 4, 3, 3))
    b = rng.standard_normal(5)
    y_ref = conv2d_forward(x, k, b, padding=1)
    out = np.full(y_ref.shape, np.nan)
    y = conv2d_forward(x, k, b, padding=1, out=out)
    assert y is out
    assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y_ref.shape)
    dx_ref = conv2d_input_gradient(dy, k, padding=1)
    out = np.full(x.shape, np.nan)
    dx = conv2d_input_gradient(dy, k, padding=1, out=out)
    assert dx is out
    assert_array_equal(dx, dx_ref)


@pytest.mark.parametrize("bad, err, match", [
    ([[0.0]], TypeError, "out must be a NumPy array"),
    (np.zeros((3, 5, 9, 9)), ValueError, r"out has shape \(3, 5, 9, 9\).*result has shape \(3, 5, 9, 8\)"),
    (np.zeros((3, 5, 9, 8), np.float32), ValueError, "dtype float32.*dtype float64"),
    (np.zeros((3, 5, 9, 16))[..., ::2], ValueError, "C-contiguous, aligned and writeable"),
])
def test_a_bad_out_is_refused(bad, err, match):
    rng = np.random.default_rng(7)
    x, k, b = rng.standard_normal((3, 4, 9, 8)), rng.standard_normal((5, 4, 3, 3)), np.zeros(5)
    with pytest.raises(err, match=match):
        conv2d_forward(x, k, b, padding=1, out=bad)


def test_out_overlapping_an_input_is_refused_and_the_input_kept():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 6, 6))
    k = rng.standard_normal((3, 3, 3, 3))
    before = x.copy()
    with pytest.raises(ValueError, match="out shares memory with x"):
        conv2d_forward(x, k, np.zeros(3), padding=1, out=x)
    assert_array_equal(x, before)
    dy = rng.standard_normal((2, 3, 6, 6))
    with pytest.raises(ValueError, match="out shares memory with dE_dY"):
        conv2d_input_gradient(dy, k, padding=1, out=dy)
    readonly = np.zeros((2, 3, 6, 6))
    readonly.setflags(write=False)
    with pytest.raises(ValueError, match="writeable"):
        conv2d_input_gradient(dy, k, padding=1, out=readonly)
