"""Network.state_dict / load_state_dict: PyTorch's names and layouts, copies, in-place loads, strictness, errors
that name the key and both shapes, all-or-nothing; save / load keep the buffers."""
import io
import zipfile

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from cnn_ext import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, load, save)


def _net(seed=0, dtype=np.float64):
    return Network([Conv2D(1, 2, 3, seed=seed, dtype=dtype), BatchNorm2D(2, dtype=dtype), ReLU(), MaxPool2D(2),
                    Flatten(), Dense(8, 4, seed=seed + 1, dtype=dtype), BatchNorm1D(4, dtype=dtype),
                    Dense(4, 3, seed=seed + 2, dtype=dtype)])


def _trained(seed=0):
    net = _net(seed)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        net(rng.standard_normal((5, 1, 6, 6)))
    return net


def test_names_shapes_and_copies():
    net = _trained()
    state = net.state_dict()
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                           "1.num_batches_tracked", "5.weight", "5.bias", "6.weight", "6.bias", "6.running_mean",
                           "6.running_var", "6.num_batches_tracked", "7.weight", "7.bias"]
    assert state["5.weight"].shape == (4, 8)
    assert_array_equal(state["5.weight"], net[5].w.T)
    assert state["1.num_batches_tracked"] == 2 and state["1.num_batches_tracked"].dtype == np.int64
    state["0.weight"][...] = 0  # a copy: the network keeps its weights
    assert not np.all(net[0].k == 0)


def test_load_state_dict_round_trip_in_place():
    src, dst = _trained(0), _net(10)
    arrays = [arr for _, _, arr in dst.parameters()] + [arr for _, arr in dst.buffers()]
    dst.load_state_dict(src.state_dict())
    assert all(a is b for a, b in zip(arrays, [arr for _, _, arr in dst.parameters()] +
                                      [arr for _, arr in dst.buffers()]))
    x = np.random.default_rng(3).standard_normal((4, 1, 6, 6))
    assert_array_equal(dst.predict(x), src.predict(x))
    assert_array_equal(dst[1].running_var, src[1].running_var)


def test_load_casts_dtype_and_loads_torch_state_dicts():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    tnet = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    tnet(torch.randn(5, 1, 6, 6))
    tnet.eval()
    net = _net().eval()
    net.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})  # float32 into float64
    x = np.random.default_rng(4).standard_normal((3, 1, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(net(x), tnet(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_strictness_and_errors_change_nothing():
    net = _trained()
    before = net.state_dict()
    bad = dict(_trained(5).state_dict())
    bad["7.weight"] = np.zeros((4, 3))  # transposed by mistake: the last key, checked after the others
    with pytest.raises(ValueError, match=r"'7.weight' has shape \(4, 3\) in the state but shape \(3, 4\) in the "
                                         r"network"):
        net.load_state_dict(bad)
    for key, value in net.state_dict().items():
        assert_array_equal(value, before[key], err_msg=key)
    partial = {k: v for k, v in _trained(5).state_dict().items() if k != "0.bias"}
    partial["extra.weight"] = np.zeros(1)
    with pytest.raises(ValueError, match=r"missing keys \['0.bias'\], unexpected keys \['extra.weight'\]"):
        net.load_state_dict(partial)
    assert_array_equal(net[0].k, before["0.weight"])
    net.load_state_dict(partial, strict=False)
    assert_array_equal(net[0].b, before["0.bias"])
    assert_array_equal(net[0].k, partial["0.weight"])
    with pytest.raises(TypeError, match="state must be a mapping"):
        net.load_state_dict([("0.weight", 1)])
    with pytest.raises(TypeError, match="'0.bias' has dtype complex128"):
        net.load_state_dict({**net.state_dict(), "0.bias": np.zeros(2, complex)})
    with pytest.raises(TypeError, match="num_batches_tracked' has dtype float64"):
        net.load_state_dict({**net.state_dict(), "1.num_batches_tracked": np.array(1.5)})


def test_lazy_layers_refuse_until_inferred():
    net = Network([Flatten(), Dense(3, seed=0)])
    with pytest.raises(ValueError, match=r"layer 1 \(Dense\(3\)\) has not inferred its sizes yet"):
        net.state_dict()
    with pytest.raises(ValueError, match=r"save: layer 1 \(Dense\(3\)\) has not inferred its sizes yet"):
        save(net, io.BytesIO())
    net(np.ones((2, 2, 2)))
    assert net.state_dict()["1.weight"].shape == (3, 4)


def test_save_load_keeps_buffers_and_refuses_files_without_them():
    net = _trained()
    f = io.BytesIO()
    save(net, f)
    f.seek(0)
    loaded = load(f)
    for (name, a), (_, b) in zip(net.buffers(), loaded.buffers()):
        assert_array_equal(a, b, err_msg=name)
        assert a.dtype == b.dtype
    assert int(loaded[6].num_batches_tracked) == 2
    f.seek(0)
    out = io.BytesIO()
    with zipfile.ZipFile(f) as zin, zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            if item.filename != "1.running_var.npy":
                zout.writestr(item, zin.read(item))
    out.seek(0)
    with pytest.raises(ValueError, match=r"missing parameters \['1.running_var'\]"):
        load(out)
