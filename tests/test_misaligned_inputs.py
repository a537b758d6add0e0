"""Misaligned but C-contiguous inputs (issue #17): ``np.frombuffer(raw, np.float64, offset=1)`` is C-contiguous,
so a contiguity test alone lets it through, but the kernels read it as aligned doubles (undefined behaviour in C,
a crash on strict-alignment CPUs). Every public operation and layer, forward and backward, must give exactly what
it gives on an aligned copy, and leave the misaligned input as it was.
"""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import (
    AvgPool2D, Conv2D, Dense, Flatten, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Softmax, Tanh,
    avgpool2d_backward, avgpool2d_forward, conv2d_bias_gradient, conv2d_forward, conv2d_input_gradient,
    conv2d_kernel_gradient, maxpool2d_backward, maxpool2d_forward, mse, mse_loss, softmax_cross_entropy,
)

DTYPES = [np.float32, np.float64]


def misaligned(a):
    """A C-contiguous, writeable, misaligned copy of ``a`` (its data one byte past an aligned address)."""
    a = np.asarray(a)
    raw = bytearray(a.nbytes + a.itemsize + 1)
    start = -np.frombuffer(raw, np.uint8).ctypes.data % a.itemsize + 1  # an aligned address, plus one byte
    out = np.frombuffer(raw, a.dtype, count=a.size, offset=start).reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and out.flags.writeable and not out.flags.aligned
    return out


def _check(call, arrays):
    """``call(*arrays)`` with every array misaligned equals it on aligned copies; the inputs are unchanged."""
    aligned = [np.ascontiguousarray(a) for a in arrays]
    expected = call(*aligned)
    bad = [misaligned(a) for a in arrays]
    before = [b.copy() for b in bad]
    got = call(*bad)
    _assert_same(got, expected)
    for b, copy in zip(bad, before):
        assert_array_equal(b, copy)
        assert not b.flags.aligned  # still the caller's own misaligned array, not replaced
    return got


def _assert_same(got, expected):
    """Equal results, through tuples, lists and dicts of arrays (a network's gradients)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            _assert_same(got[key], expected[key])
    elif isinstance(expected, (tuple, list)):
        assert type(got) is type(expected) and len(got) == len(expected)
        for g, e in zip(got, expected):
            _assert_same(g, e)
    else:
        assert_array_equal(got, expected)
        assert np.asarray(got).dtype == np.asarray(expected).dtype


def test_helper_makes_misaligned_arrays():
    a = misaligned(np.arange(6.0).reshape(2, 3))
    assert not a.flags.aligned and a.flags.c_contiguous
    assert a.ctypes.data % 8 != 0
    assert_array_equal(a, np.arange(6.0).reshape(2, 3))


def _conv_data(dtype, N=2, C_in=3, C_out=4, H=9, W=8, KH=3, KW=2, stride=(1, 1), padding=0):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    OH, OW = cnn_ext.conv2d_output_shape((H, W), (KH, KW), stride=stride, padding=padding)
    dy = rng.standard_normal((N, C_out, OH, OW)).astype(dtype)
    return x, k, b, dy


try:  # the forced methods of each operation (this layout); "auto" alone where the tree has no method table
    from cnn_ext._methods import FORWARD_METHODS, INPUT_GRADIENT_METHODS, KERNEL_GRADIENT_METHODS
except ImportError:
    FORWARD_METHODS = INPUT_GRADIENT_METHODS = KERNEL_GRADIENT_METHODS = ()


def _methods(names):
    return ["auto", *names]


def _each_method(op, names, arrays, **kwargs):
    """_check on ``op(*arrays, method=m, **kwargs)`` for 'auto' and each forced method that takes this shape;
    returns how many ran."""
    ran = 0
    for method in _methods(names):
        call = lambda *a: op(*a, method=method, **kwargs)
        try:
            call(*arrays)
        except ValueError:  # a forced method that does not take this shape
            continue
        _check(call, arrays)
        ran += 1
    return ran


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,padding", [((1, 1), 0), ((2, 1), 1), ((1, 1), "same")])
def test_conv2d_forward(dtype, stride, padding):
    x, k, b, _ = _conv_data(dtype, stride=stride, padding=padding)
    ran = _each_method(conv2d_forward, FORWARD_METHODS, (x, k, b), stride=stride, padding=padding)
    assert ran >= 1 + min(len(FORWARD_METHODS), 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride,padding", [((1, 1), 0), ((2, 1), 1), ((1, 1), "same")])
def test_conv2d_gradients(dtype, stride, padding):
    x, k, _, dy = _conv_data(dtype, stride=stride, padding=padding)
    geometry = dict(stride=stride, padding=padding)
    ran_k = _each_method(conv2d_kernel_gradient, KERNEL_GRADIENT_METHODS, (dy, x), kernel_size=(3, 2), **geometry)
    ran_x = _each_method(conv2d_input_gradient, INPUT_GRADIENT_METHODS, (dy, k), input_size=(9, 8), **geometry)
    assert ran_k >= 1 + min(len(KERNEL_GRADIENT_METHODS), 1)
    assert ran_x >= 1 + min(len(INPUT_GRADIENT_METHODS), 1)
    _check(conv2d_bias_gradient, (dy,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_forward_into_out(dtype):
    x, k, b, dy = _conv_data(dtype)
    out = np.empty_like(dy)
    _check(lambda x, k, b: conv2d_forward(x, k, b, out=out).copy(), (x, k, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ks,stride", [(2, None), (3, 1), ((2, 3), (1, 2))])
def test_pooling_ops(dtype, ks, stride):
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 9)).astype(dtype)
    y = maxpool2d_forward(x, ks, stride)
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(dtype)
    _check(lambda x: maxpool2d_forward(x, ks, stride), (x,))
    _check(lambda x: maxpool2d_forward(x, ks, stride, return_indices=True), (x,))
    _check(lambda dy, x: maxpool2d_backward(dy, x, ks, stride), (dy, x))
    _, idx = maxpool2d_forward(x, ks, stride, return_indices=True)
    _check(lambda dy, x, idx: maxpool2d_backward(dy, x, ks, stride, indices=idx), (dy, x, idx))
    _check(lambda x: avgpool2d_forward(x, ks, stride), (x,))
    _check(lambda dy: avgpool2d_backward(dy, ks, stride, input_size=(8, 9)), (dy,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses(dtype):
    rng = np.random.default_rng(5)
    p = rng.standard_normal((6, 4)).astype(dtype)
    t = np.eye(4, dtype=dtype)[rng.integers(0, 4, 6)]
    _check(mse_loss, (p, t))
    _check(mse, (p, t))
    _check(softmax_cross_entropy, (p, t))
    _check(softmax_cross_entropy, (p, rng.integers(0, 4, 6)))


def _layers(dtype):
    return [
        (lambda: Conv2D(3, 4, 3, seed=0, dtype=dtype), (2, 3, 7, 6)),
        (lambda: Conv2D(3, 4, (3, 2), stride=2, padding=1, seed=0, dtype=dtype), (2, 3, 7, 6)),
        (lambda: Conv2D(3, 2, 3, padding="same", seed=0, dtype=dtype), (2, 3, 7, 6)),
        (lambda: Dense(5, 4, seed=0, dtype=dtype), (3, 5)),
        (lambda: Dense(600, 256, seed=0, dtype=dtype), (16, 600)),  # the blocked float64 product (2 blocks)
        (lambda: Dense(300, 70, seed=0, dtype=dtype), (33, 300)),  # NumPy's own loops on misaligned float32
        (Flatten, (2, 3, 4)),
        (ReLU, (3, 500)),  # large enough for the fused kernels
        (Sigmoid, (3, 500)),
        (Tanh, (3, 500)),
        (lambda: LeakyReLU(0.1), (3, 500)),
        (Softmax, (4, 7)),
        (lambda: MaxPool2D(2), (2, 3, 6, 6)),
        (lambda: AvgPool2D(3, stride=1), (2, 3, 6, 7)),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", range(14))
def test_layers_forward_and_backward(dtype, index):
    make, shape = _layers(dtype)[index]
    rng = np.random.default_rng(index)
    x = rng.standard_normal(shape).astype(dtype)
    # each call on a fresh layer (same seed): the forward cache must not carry the aligned run into the other
    y = _check(lambda x: make().forward(x), (x,))
    dy = rng.standard_normal(y.shape).astype(dtype)

    def forward_backward(x, dy):
        layer = make()
        layer.forward(x)
        grads = layer.backward(dy)
        return grads if isinstance(grads, dict) else {"dX": grads}

    _check(forward_backward, (x, dy))


@pytest.mark.parametrize("dtype", DTYPES)
def test_network_forward_backward(dtype):
    make = lambda: cnn_ext.Network([Conv2D(1, 2, 3, seed=0, dtype=dtype), ReLU(), MaxPool2D(2), Flatten(),
                                   Dense(8, 3, seed=1, dtype=dtype), Softmax()])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 1, 6, 6)).astype(dtype)
    dy = rng.standard_normal((4, 3)).astype(dtype)

    def run(x, dy):
        net = make()
        y = net.forward(x)
        return y, net.backward(dy)

    _check(run, (x, dy))


# ---- the kernels themselves: never handed a misaligned array ---------------------------------------
# On x86-64 a misaligned load works (slower), so equal results alone cannot show that a misaligned array reached
# C; this runs the tests above in a fresh interpreter whose compiled cnn_ext modules are wrapped as they are
# imported (before any module keeps a reference to a kernel), recording every misaligned array they receive.

_WATCH = r"""
import importlib.machinery, json, sys
import numpy as np

BAD = []


def _arrays(values):
    for v in values:
        if isinstance(v, np.ndarray):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from _arrays(v)


class _Watched:
    def __init__(self, name, f):
        self._name, self._f = name, f

    def __getitem__(self, key):  # a fused function's specialisation: watched too
        return _Watched(f"{self._name}[{key}]", self._f[key])

    def __call__(self, *args, **kwargs):
        for a in _arrays((*args, *kwargs.values())):
            if not a.flags.aligned:
                BAD.append(self._name)
        return self._f(*args, **kwargs)


_exec = importlib.machinery.ExtensionFileLoader.exec_module


def exec_module(self, module):
    _exec(self, module)
    if module.__name__.startswith("cnn_ext."):
        for key, value in list(vars(module).items()):
            if callable(value) and not isinstance(value, type) and not key.startswith("_"):
                setattr(module, key, _Watched(f"{module.__name__}.{key}", value))


importlib.machinery.ExtensionFileLoader.exec_module = exec_module
import pytest
code = pytest.main([sys.argv[1], "-q", "-p", "no:cacheprovider", "-x", "-k", "not kernels_never"])
print("WATCHED", json.dumps({"code": int(code), "bad": sorted(set(BAD))}))
"""


def test_kernels_never_see_a_misaligned_array():
    import json
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-P", "-c", _WATCH, __file__], capture_output=True, text=True, timeout=600,
                            env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("WATCHED ")]
    assert line, result.stdout[-3000:] + result.stderr[-3000:]
    watched = json.loads(line[-1][len("WATCHED "):])
    assert watched["code"] == 0, result.stdout[-3000:]
    assert watched["bad"] == []
