"""Layers reuse their large output arrays across steps only when nothing else refers to them; ops take out=."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import (
    Adam,
    Conv2D,
    Dense,
    Flatten,
    MaxPool2D,
    Network,
    ReLU,
    Sigmoid,
    Tanh,
    conv2d_forward,
    conv2d_input_gradient,
    softmax_cross_entropy,
)
from cnn_ext import _reuse

BIG = (8, 16, 48, 48)  # 1.2 MB in float32: above _reuse.MIN_BYTES


def _addr(a):
    return a.__array_interface__["data"][0]


def _layers_and_inputs(rng):
    """(layer, x) pairs whose forward output and input gradient are large enough to be reused."""
    x = rng.standard_normal(BIG).astype(np.float32)
    return [
        (ReLU(), x),
        (Sigmoid(), x),
        (Tanh(), x),
        (MaxPool2D(2), rng.standard_normal((8, 16, 96, 96)).astype(np.float32)),
        (Conv2D(16, 16, 3, padding="same", dtype=np.float32, seed=0), x),
    ]


@pytest.mark.parametrize("case", range(5))
def test_outputs_the_caller_keeps_are_never_reused(case):
    rng = np.random.default_rng(case)
    layer, x = _layers_and_inputs(rng)[case]
    kept, expected = [], []
    for step in range(5):
        xs = x + step  # a different input each step
        y = layer.forward(xs)
        dy = np.full(y.shape, step + 1.0, dtype=y.dtype)
        dx = layer.backward(dy)["dX"]
        kept.append((y, dx))
        fresh = type(layer)(**layer.get_config())
        for name, _, p in layer.parameters():
            getattr(fresh, name)[...] = p
        expected.append((fresh.forward(xs).copy(), fresh.backward(dy)["dX"].copy()))
    addrs = {_addr(a) for pair in kept for a in pair}
    assert len(addrs) == 2 * len(kept)  # every kept output its own memory
    for (y, dx), (y_ref, dx_ref) in zip(kept, expected):
        assert_array_equal(y, y_ref)
        assert_array_equal(dx, dx_ref)


@pytest.mark.parametrize("case", range(5))
def test_outputs_dropped_by_the_caller_are_reused(case):
    rng = np.random.default_rng(10 + case)
    layer, x = _layers_and_inputs(rng)[case]
    seen = []
    for step in range(6):
        y = layer.forward(x)
        dx = layer.backward(np.ones_like(y))["dX"]
        seen.append((_addr(y), _addr(dx)))
        del y, dx
    # the layer's cache keeps the last output alive while the next is made: two arrays take turns
    assert len({a for a, _ in seen[2:]}) <= 2
    assert len({b for _, b in seen[2:]}) <= 2


def test_a_view_keeps_its_array_from_being_reused():
    layer = ReLU()
    x = np.random.default_rng(3).standard_normal(BIG).astype(np.float32)
    view = layer.forward(x)[1:3]  # only a view survives
    before = view.copy()
    for step in range(4):
        layer.forward(-x - step)
    assert_array_equal(view, before)


def test_a_changed_batch_size_gets_arrays_of_its_shape():
    layer = ReLU()
    rng = np.random.default_rng(4)
    for n in (8, 5, 8, 5, 8):
        x = rng.standard_normal((n,) + BIG[1:]).astype(np.float32)
        y = layer.forward(x)
        assert y.shape == x.shape
        assert_array_equal(y, np.maximum(x, 0))
    assert all(len(pool) <= _reuse.SPARES_PER_OUTPUT for pool in layer._spares.values())


def _mnist_like_net(seed):
    kw = dict(init="he_normal", seed=seed, dtype=np.float32)
    return Network([Conv2D(1, 32, 3, padding="same", **kw), ReLU(), MaxPool2D(2),
                    Conv2D(32, 16, 3, padding="same", **kw), ReLU(), MaxPool2D(2),
                    Flatten(), Dense(16 * 7 * 7, 10, **kw)])


def test_training_with_and_without_reuse_is_bitwise_the_same(monkeypatch):
    rng = np.random.default_rng(5)
    batches = [(rng.random((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64)) for _ in range(3)]
    results = []
    for reuse in (True, False):
        monkeypatch.setattr(_reuse, "ENABLED", reuse)
        net, opt, losses = _mnist_like_net(0), Adam(1e-3), []
        for _ in range(2):
            for x, y in batches:
                loss, g = softmax_cross_entropy(net.forward(x), y)
                opt.step(net, net.backward(g))
                losses.append(loss)
        results.append((losses, [p.copy() for layer in net.layers for _, _, p in layer.parameters()]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        assert_array_equal(a, b)


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
    (np.zeros((3, 5, 9, 16))[..., ::2], ValueError, "C-contiguous and writeable"),
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


def test_small_outputs_are_not_pooled():
    layer = ReLU()
    layer.forward(np.ones((64, 64), np.float32))  # 16 KB: NumPy path, no spare
    assert not getattr(layer, "_spares", {})
    conv = Conv2D(1, 2, 3, dtype=np.float32, seed=0)
    conv.forward(np.ones((2, 1, 8, 8), np.float32))
    assert not getattr(conv, "_spares", {})
    assert cnn_ext.get_buffer_reuse()


# ----------------------------------------------------------------------------------------------
# the operations' results pool
# ----------------------------------------------------------------------------------------------

def _conv_case(rng, dtype=np.float32):
    x = rng.standard_normal((8, 16, 40, 40)).astype(dtype)  # y: 8 x 16 x 40 x 40 float32 = 0.8 MB ... x 2
    k = rng.standard_normal((32, 16, 3, 3)).astype(dtype)
    return x, k, np.zeros(32, dtype)


def test_results_nobody_holds_are_handed_out_again_and_held_ones_never():
    _reuse.OUTPUTS.clear()
    rng = np.random.default_rng(9)
    x, k, b = _conv_case(rng)
    kept = [conv2d_forward(x + i, k, b, padding=1) for i in range(4)]  # all held: four distinct arrays
    assert len({_addr(y) for y in kept}) == 4
    for i, y in enumerate(kept):
        assert_array_equal(y, conv2d_forward(x + i, k, b, padding=1))
    del kept
    seen = set()
    for i in range(6):
        y = conv2d_forward(x, k, b, padding=1)  # the previous y is still bound while the next is made
        seen.add(_addr(y))
    assert len(seen) <= 2
    view = y[0]
    del y
    before = view.copy()
    for i in range(4):
        conv2d_forward(x - i, k, b, padding=1)
    assert_array_equal(view, before)  # a surviving view keeps its array out of the pool
    assert _reuse.OUTPUTS.nbytes <= _reuse.POOL_MAX_BYTES


def test_input_gradient_results_come_from_the_pool_too():
    _reuse.OUTPUTS.clear()
    rng = np.random.default_rng(10)
    x, k, b = _conv_case(rng)
    dy = rng.standard_normal((8, 32, 40, 40)).astype(np.float32)
    first = conv2d_input_gradient(dy, k, padding=1)
    addr, ref = _addr(first), first.copy()
    del first
    again = conv2d_input_gradient(dy, k, padding=1)
    assert _addr(again) == addr
    assert_array_equal(again, ref)


def test_turning_reuse_off_empties_the_pool_and_allocates_afresh():
    rng = np.random.default_rng(11)
    x, k, b = _conv_case(rng)
    conv2d_forward(x, k, b, padding=1)
    try:
        assert cnn_ext.set_buffer_reuse(False) is True
        assert _reuse.OUTPUTS.nbytes == 0 and not cnn_ext.get_buffer_reuse()
        addrs = set()
        for _ in range(3):
            y = conv2d_forward(x, k, b, padding=1)
            addrs.add(id(y))
            assert _reuse.OUTPUTS.nbytes == 0
        with pytest.raises(TypeError, match="enabled must be True or False"):
            cnn_ext.set_buffer_reuse("no")
    finally:
        cnn_ext.set_buffer_reuse(True)
    assert cnn_ext.get_buffer_reuse()


def test_pool_is_safe_under_python_threads():
    import threading

    _reuse.OUTPUTS.clear()
    rng = np.random.default_rng(12)
    x, k, b = _conv_case(rng)
    inputs = [x + i for i in range(4)]
    refs = [conv2d_forward(xi, k, b, padding=1).copy() for xi in inputs]
    errors = []

    def work(i):
        for _ in range(5):
            y = conv2d_forward(inputs[i], k, b, padding=1)
            if not np.array_equal(y, refs[i]):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_copies_and_pickles_leave_the_spares_behind():
    import copy
    import pickle

    layer = ReLU()
    x = np.random.default_rng(13).standard_normal(BIG).astype(np.float32)
    y = layer.forward(x)
    assert layer._spares
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert not hasattr(clone, "_spares")
        assert_array_equal(clone.backward(np.ones_like(y))["dX"], (x > 0).astype(np.float32))


def test_a_layers_spare_goes_to_one_python_thread_at_a_time():
    # Inference on one shared network from several threads: two threads in the same layer's spare() must never
    # both get the same free array. A thread switch after the reference-count test (nothing refers to the array
    # then) let a second thread find the array still free and take it too, and both outputs were written into
    # one array. The switch is forced here: when the first thread's free-array search returns, it waits (up to
    # 0.5 s) until the second thread's spare() has returned.
    import sys
    import threading

    class Holder:
        pass

    layer, shape = Holder(), (256, 1024)  # 2 MiB of float64: takes part in reuse
    assert _reuse.taking_part(shape, np.float64) is not None
    _reuse.spare(layer, "y", shape, np.float64)  # the layer's first spare, free again at once
    got, first_in_window, second_done = {}, threading.Event(), threading.Event()

    def pause_after_the_search(frame, event, arg):
        if event == "return" and frame.f_code is _reuse._find_free.__code__ and not first_in_window.is_set():
            first_in_window.set()
            second_done.wait(0.5)

    def first():
        sys.setprofile(pause_after_the_search)  # this thread only
        try:
            got["a"] = _reuse.spare(layer, "y", shape, np.float64)
        finally:
            sys.setprofile(None)

    def second():
        first_in_window.wait(5)
        got["b"] = _reuse.spare(layer, "y", shape, np.float64)
        second_done.set()

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start(), b.start()
    a.join(), b.join()
    assert first_in_window.is_set()
    assert got["a"] is not got["b"]
    assert not np.shares_memory(got["a"], got["b"])
