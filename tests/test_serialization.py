"""save / load: exact round trip of architecture and parameters; clear errors on bad files."""
import json
import zipfile

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import (
    LAYER_TYPES,
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
    load,
    save,
)
from cnn_ext.layers import Layer


def _net(dtype=np.float32):
    return Network([
        Conv2D(1, 3, 3, padding="same", init="he_normal", seed=0, dtype=dtype),
        LeakyReLU(0.2),
        MaxPool2D(2),
        Conv2D(3, 2, (2, 3), stride=(1, 2), padding=1, seed=1, dtype=dtype),
        Tanh(),
        AvgPool2D(2, stride=1),
        Flatten(),
        Dense(2 * 4 * 1, 5, init="glorot_uniform", seed=2, dtype=dtype),
        ReLU(),
        Dense(5, 4, seed=3, dtype=dtype),
        Sigmoid(),
        Softmax(),
    ])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exact_round_trip(tmp_path, dtype):
    net = _net(dtype)
    path = save(net, tmp_path / "model")
    assert path == str(tmp_path / "model.npz")
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    back = load(path)
    assert_array_equal(np.random.get_state()[1], state)  # loading leaves the global random state alone
    assert [type(a) for a in back.layers] == [type(b) for b in net.layers]
    assert [a.get_config() for a in back.layers] == [b.get_config() for b in net.layers]
    assert repr(back) == repr(net)
    for (na, ka, a), (nb, kb, b) in zip(back.parameters(), net.parameters()):
        assert (na, ka) == (nb, kb) and a.dtype == b.dtype == dtype
        assert a.tobytes() == b.tobytes()
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 6)).astype(dtype)
    assert_array_equal(back.forward(x), net.forward(x))
    # a second save of the loaded network writes the same arrays
    again = np.load(save(back, tmp_path / "again.npz"))
    first = np.load(path)
    assert sorted(again.files) == sorted(first.files)
    for key in first.files:
        assert_array_equal(again[key], first[key])


def test_file_layout_is_plain_arrays(tmp_path):
    path = save(Network([Dense(2, 3, seed=0)]), tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["0.b", "0.w", "__cnn_ext__"]
        spec = json.loads(str(data["__cnn_ext__"]))
    assert spec == {"format": "cnn_ext.network", "version": 1,
                    "layers": [["Dense", {"n_in": 2, "n_out": 3, "init": None, "dtype": "float64"}]]}


def _rewrite(path, out, change):
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    np.savez(out, **arrays)
    return out


def _set_spec(arrays, edit):
    spec = json.loads(str(arrays["__cnn_ext__"]))
    edit(spec)
    arrays["__cnn_ext__"] = np.array(json.dumps(spec))


@pytest.mark.parametrize("change, match", [
    (lambda a: a.pop("2.w"), r"missing parameters \['2.w'\]"),
    (lambda a: a.update({"9.z": np.zeros(1)}), r"unexpected arrays \['9.z'\]"),
    (lambda a: a.update({"0.k": np.zeros((2, 1, 2, 2))}), r"parameter 0.k is saved with shape \(2, 1, 2, 2\)"),
    (lambda a: a.update({"0.b": a["0.b"].astype(np.float32)}), r"parameter 0.b .* dtype float32.* dtype float64"),
    (lambda a: a.pop("__cnn_ext__"), "not a file written by cnn_ext.save"),
    (lambda a: a.update({"__cnn_ext__": np.array("{not json")}), "not valid JSON"),
    (lambda a: a.update({"__cnn_ext__": np.array('{"format": "other", "layers": []}')}), "not a cnn_ext.network"),
    (lambda a: _set_spec(a, lambda s: s.update(version=99)), "format version 99"),
    (lambda a: _set_spec(a, lambda s: s["layers"][1].__setitem__(0, "Nope")), "layer 1 has unknown type 'Nope'"),
    (lambda a: _set_spec(a, lambda s: s["layers"][0][1].update(c_out=0)), r"layer 0 \(Conv2D\) cannot be built"),
    (lambda a: _set_spec(a, lambda s: s["layers"][0][1].update(bogus=1)), r"layer 0 \(Conv2D\) cannot be built"),
    # a crafted size: 728 TiB of weights, refused from the config before any weight is drawn or read
    (lambda a: _set_spec(a, lambda s: s["layers"][2][1].update(n_in=10**7, n_out=10**7)),
     r"layer 2 \(Dense\) cannot be built from .*: Dense: n_in=10000000, n_out=10000000 give weights of shape "
     r"\(10000000, 10000000\): \d+ bytes, more than this machine's memory"),
    # a size that fits in memory but not the file: refused from the .npy header before any weight is drawn
    (lambda a: _set_spec(a, lambda s: s["layers"][2][1].update(n_in=1000, n_out=2)),
     r"parameter 2.w is saved with shape \(8, 2\).* builds shape \(1000, 2\)"),
    (lambda a: _set_spec(a, lambda s: s["layers"].__setitem__(0, "Conv2D")), "expected \\[class_name, config\\]"),
    (lambda a: _set_spec(a, lambda s: s.update(layers=[])), "no layers"),
])
def test_mismatched_files(tmp_path, change, match):
    net = Network([Conv2D(1, 2, 3, seed=0), Flatten(), Dense(8, 2, seed=1)])
    good = save(net, tmp_path / "good.npz")
    bad = _rewrite(good, tmp_path / "bad.npz", change)
    with pytest.raises(ValueError, match=match):
        load(bad)


def test_corrupt_and_foreign_files(tmp_path):
    good = save(Network([Dense(4, 3, seed=0)]), tmp_path / "good.npz")
    raw = open(good, "rb").read()
    (tmp_path / "trunc.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "text.npz").write_text("hello")
    np.save(tmp_path / "single.npy", np.zeros(3))
    np.savez(tmp_path / "objects.npz", __cnn_ext__=np.array([{"a": 1}], dtype=object))
    with zipfile.ZipFile(tmp_path / "zip.npz", "w") as z:
        z.writestr("__cnn_ext__.npy", b"not an npy")
    for name in ["trunc.npz", "text.npz", "single.npy", "objects.npz", "zip.npz"]:
        with pytest.raises(ValueError, match="not a readable cnn_ext network file|holds Python objects"):
            load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "absent.npz")


def test_save_errors(tmp_path):
    class Unregistered(Layer):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="not in LAYER_TYPES"):
        save(Network([Unregistered()]), tmp_path / "x")
    with pytest.raises(TypeError, match="save expects a cnn_ext.Network"):
        save([Dense(1, 1)], tmp_path / "x")

    class Weird(Layer):
        def forward(self, x):
            return x

        def get_config(self):
            return {"f": object()}

    LAYER_TYPES["Weird"] = Weird
    try:
        with pytest.raises(TypeError, match="not JSON-serialisable"):
            save(Network([Weird()]), tmp_path / "x")
    finally:
        del LAYER_TYPES["Weird"]
    assert not list(tmp_path.iterdir())  # nothing written on error


def test_file_objects_and_path_types(tmp_path):
    """A binary file object works both ways, as numpy.savez / numpy.load take one (save used to refuse it with
    os.fspath's TypeError, which named no argument); anything else that is not a path is a TypeError."""
    import io

    net = Network([Conv2D(1, 2, 3, seed=0), Flatten(), Dense(8, 2, seed=1)])
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4))
    buf = io.BytesIO()
    assert save(net, buf) is buf
    buf.seek(0)
    assert_array_equal(load(buf).forward(x), net.forward(x))
    path = save(net, str(tmp_path / "n").encode())  # bytes names, as os.fspath takes them
    assert path == str(tmp_path / "n.npz")
    assert_array_equal(load(path.encode()).forward(x), net.forward(x))
    for bad in (None, 3, 1.5):
        with pytest.raises(TypeError, match="save: path must be a file name"):
            save(net, bad)
        with pytest.raises(TypeError, match="load: path must be a file name"):
            load(bad)


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
