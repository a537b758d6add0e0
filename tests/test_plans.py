"""The per-shape plan cache of the convolution ops (ops._plan): a cached call is the same call, checked the same."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient, ops


def _data(seed=0, N=3, C_in=2, C_out=5, H=9, K=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
    k = rng.standard_normal((C_out, C_in, K, K)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    return x, k, b


# every option form a layer or a user passes: ints, pairs, nested pairs, strings, None
OPTIONS = [
    dict(stride=1, padding=0),
    dict(stride=(1, 1), padding=(1, 2)),
    dict(stride=1, padding=((2, 0), (1, 1))),
    dict(stride=1, padding="same"),
    dict(stride=1, padding="SAME"),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding="valid"),
]


def _three_ops(x, k, b, opts, kernel_size=None):
    y = conv2d_forward(x, k, b, **opts)
    dy = np.cos(y)  # any upstream gradient of y's shape
    dk = conv2d_kernel_gradient(dy, x, kernel_size=kernel_size, **opts)
    dx = conv2d_input_gradient(dy, k, input_size=x.shape[2:], **opts)
    return y, dk, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS)
def test_cached_plans_give_the_uncached_results(opts, dtype):
    x, k, b = _data(dtype=dtype)
    first = _three_ops(x, k, b, opts, kernel_size=k.shape[2:])
    assert len(ops._PLANS) == 3  # one plan per op
    again = _three_ops(x, k, b, opts, kernel_size=k.shape[2:])  # from the cache
    assert len(ops._PLANS) == 3
    saved, ops._PLANS = ops._PLANS, None
    try:
        uncached = _three_ops(x, k, b, opts, kernel_size=k.shape[2:])
    finally:
        ops._PLANS = saved
    for a, c, u in zip(first, again, uncached):
        assert_array_equal(a, c)
        assert_array_equal(a, u)


@pytest.mark.parametrize("bad, error", [
    (dict(stride=True), TypeError),           # == 1, hashes as 1
    (dict(stride=1.0), TypeError),            # == 1
    (dict(stride=(True, 1)), ValueError),     # == (1, 1)
    (dict(padding=False), TypeError),         # == 0
    (dict(padding=((0.0, 0), (0, 0))), TypeError),
    (dict(method="AUTO"), ValueError),
])
def test_values_equal_to_cached_ones_are_still_checked(bad, error):
    """A plan made for stride=1 / padding=0 must not answer for True, 1.0 or (True, 1), which compare and hash
    equal but are refused by the checks."""
    x, k, b = _data()
    y = conv2d_forward(x, k, b, stride=1, padding=0)
    dy = np.ones_like(y)
    conv2d_kernel_gradient(dy, x, stride=1, padding=0)
    conv2d_input_gradient(dy, k, stride=1, padding=0)
    opts = dict(dict(stride=1, padding=0), **bad)
    for _ in range(2):  # refusals are not cached either
        with pytest.raises(error):
            conv2d_forward(x, k, b, **opts)
        with pytest.raises(error):
            conv2d_kernel_gradient(dy, x, **opts)
        with pytest.raises(error):
            conv2d_input_gradient(dy, k, **opts)


def test_numpy_scalars_and_lists_work_uncached():
    x, k, b = _data()
    ref = conv2d_forward(x, k, b, stride=1, padding=(1, 1))
    n = len(ops._PLANS)
    assert_array_equal(conv2d_forward(x, k, b, stride=np.int64(1), padding=[1, 1]), ref)
    assert_array_equal(conv2d_forward(x, k, b, stride=1, padding=np.array([1, 1])), ref)
    assert len(ops._PLANS) == n  # such values go through the checks each time, not into the cache


def test_errors_for_shapes_are_raised_every_time():
    x, k, b = _data()
    for _ in range(3):
        with pytest.raises(ValueError, match="bias has 4 entries"):
            conv2d_forward(x, k, b[:4])
        with pytest.raises(ValueError, match="batch size"):
            conv2d_kernel_gradient(np.zeros((2, 5, 7, 7)), x)
    assert not ops._PLANS


def test_plans_follow_the_thread_count():
    """The thread count is part of a plan: after set_num_threads a new plan is made (and results agree). A build
    without OpenMP keeps one thread whatever is asked, and so one plan."""
    x, k, b = _data(N=16, C_in=8, C_out=16, H=20)
    prev = cnn_ext.get_num_threads()
    try:
        cnn_ext.set_num_threads(1)
        y1 = conv2d_forward(x, k, b)
        cnn_ext.set_num_threads(2)
        y2 = conv2d_forward(x, k, b)
        used = {1, cnn_ext.get_num_threads()}
    finally:
        cnn_ext.set_num_threads(prev)
    assert sorted(key[1] for key in ops._PLANS) == sorted(used)
    assert_array_equal(y1, y2)


def test_the_cache_stays_bounded(monkeypatch):
    monkeypatch.setattr(ops, "_PLANS", {})  # (the conftest turns it off for monkeypatching tests)
    monkeypatch.setattr(ops, "_PLANS_MAX", 8)
    k, b = np.ones((1, 1, 2, 2)), np.zeros(1)
    for H in range(2, 30):
        y = conv2d_forward(np.ones((1, 1, H, H)), k, b)
        assert y.shape == (1, 1, H - 1, H - 1) and (y == 4).all()
        assert 1 <= len(ops._PLANS) <= 8


def test_a_cached_plan_still_checks_out():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 7, 7))
    k, b = rng.standard_normal((5, 5, 1, 1)), np.zeros(5)
    before = x.copy()
    conv2d_forward(x, k, b)  # the plan is cached now
    with pytest.raises(ValueError, match="out has shape"):
        conv2d_forward(x, k, b, out=np.empty((3, 5, 7, 8)))
    with pytest.raises(ValueError, match="shares memory with x"):
        conv2d_forward(x, k, b, out=x)  # y has x's shape here
    assert_array_equal(x, before)


# ----------------------------------------------------------------------------------------------
# cached calls with arrays in any form: each converted as it needs, never read as if it were ready
# ----------------------------------------------------------------------------------------------

def _all_four(x, k, b, dy, **opts):
    ks, xs = np.shape(k)[2:], np.shape(x)[2:]
    return (conv2d_forward(x, k, b, **opts), conv2d_kernel_gradient(dy, x, kernel_size=ks, **opts),
            cnn_ext.conv2d_bias_gradient(dy), conv2d_input_gradient(dy, k, input_size=xs, **opts))


def test_a_cached_plan_skips_the_choice(monkeypatch):
    """The cache's whole point: the second call of a shape does not make its plan again (and the cache off
    makes it every time)."""
    from cnn_ext import _methods

    calls = []
    real = _methods.forward
    monkeypatch.setattr(_methods, "forward", lambda *a: calls.append(a) or real(*a))
    x, k, b = _data()
    for plans, expected in (({}, 1), (None, 3)):
        monkeypatch.setattr(ops, "_PLANS", plans)
        calls.clear()
        for _ in range(3):
            conv2d_forward(x, k, b)
        assert len(calls) == expected


def _variants(a):
    """a as arrays the kernels cannot take as they are, each with a's values."""
    fortran = np.asfortranarray(a)
    strided = np.repeat(a, 2, axis=-1)[..., ::2]
    swapped = a.astype(a.dtype.newbyteorder())
    sub = a.view(type("Sub", (np.ndarray,), {}))
    return {"fortran": fortran, "strided": strided, "byteswapped": swapped, "subclass": sub,
            "float32": a.astype(np.float32), "list": a.tolist()}


@pytest.mark.parametrize("which", ["x", "k", "dy"])
def test_arrays_not_ready_take_the_full_path(which):
    """After a plan is cached for float64 arrays, arrays of the same shapes in other layouts, byte orders,
    subclasses, dtypes or as lists are converted, never read as if they were ready: the same values give
    the same results (float32 only where every argument is float32, so float64 here)."""
    x, k, b = _data()
    dy = np.cos(conv2d_forward(x, k, b))
    ref = _all_four(x, k, b, dy)
    args = dict(x=x, k=k, dy=dy)
    for name, v in _variants(args[which]).items():
        got = _all_four(**dict(args, **{which: v}), b=b)
        for op, r, g in zip(("y", "dK", "dB", "dX"), ref, got):
            # dB reads dE_dY alone: float32 for a float32 dE_dY
            assert g.dtype == (np.float32 if op == "dB" and which == "dy" and name == "float32"
                               else np.float64), (name, op)
            np.testing.assert_allclose(g, r, rtol=1e-6 if name == "float32" else 0, atol=1e-5 if name == "float32"
                                       else 0, err_msg=name)


def test_cached_calls_keep_the_checks_of_out_and_of_options():
    x, k, b = _data()
    y = conv2d_forward(x, k, b)
    dy = np.ones_like(y)
    conv2d_input_gradient(dy, k)  # both plans cached
    with pytest.raises(ValueError, match="out has shape"):
        conv2d_forward(x, k, b, out=np.empty((3, 5, 7, 8)))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        conv2d_forward(x, k, b, out=np.empty(y.shape[::-1]).T)
    d, k1 = np.ones((3, 5, 9, 9)), np.ones((5, 5, 1, 1))
    conv2d_input_gradient(d, k1)  # a plan whose dX has dE_dY's shape
    with pytest.raises(ValueError, match="shares memory with dE_dY"):
        conv2d_input_gradient(d, k1, out=d)
    with pytest.raises(TypeError):
        conv2d_forward(x, k, b, stride=True)
    with pytest.raises(TypeError, match="x must hold real numbers"):
        conv2d_forward(x.astype(complex), k, b)


def test_cached_calls_read_their_inputs_only():
    x, k, b = _data()
    x.flags.writeable = k.flags.writeable = b.flags.writeable = False  # read-only arrays are ready too
    y = conv2d_forward(x, k, b)
    dy = np.cos(y)
    dy.flags.writeable = False
    before = [a.copy() for a in (x, k, b, dy)]
    for _ in range(2):
        _all_four(x, k, b, dy)
    for a, c in zip((x, k, b, dy), before):
        assert_array_equal(a, c)
