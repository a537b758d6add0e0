"""Hostile and mutated model files: load() refuses each with a ValueError naming the file and the entry, before
it costs memory, or loads exactly what was saved. The hostile files are those of the issue "Robust under faults";
the fuzzers mutate a saved network's bytes, zip members, .npy headers and architecture JSON (hypothesis)."""
import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnn_ext import Conv2D, Dense, Flatten, Network, ReLU, load, save

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# the children run outside the checkout: from its root they would import the unbuilt source tree
_OUTSIDE = os.path.dirname(os.path.abspath(sys.executable))


def _net():
    return Network([Conv2D(1, 2, 3, padding="same", seed=0), ReLU(), Flatten(), Dense(2 * 4 * 4, 3, seed=1)])


def _arch(layers):
    return json.dumps({"format": "cnn_ext.network", "version": 1, "layers": layers})


def _npy(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_header(shape, dtype="<f8", fortran=False):
    """A .npy header alone: it declares an array whose data is not there."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)})
    return buf.getvalue()


def _zip(members, compression=zipfile.ZIP_STORED):
    """Zip bytes holding ``members`` [(name, bytes)] in order, repeated names included."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about a duplicate name, which is what some tests write
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def _raw_zip(name, header, zeros):
    """A zip holding one deflated member ``header`` + ``zeros`` zero bytes, written without compressing them all:
    deflate blocks of zeros after a full flush are all the same, so one is repeated (1 GiB in ~1 MB in 0.3 s)."""
    block_size = 1 << 24
    assert zeros % block_size == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(header) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(block_size)) + comp.flush(zlib.Z_FULL_FLUSH)
    data = first + block * (zeros // block_size) + comp.flush()
    crc = zlib.crc32(header)
    zero_block = bytes(block_size)
    for _ in range(zeros // block_size):
        crc = zlib.crc32(zero_block, crc)
    size = len(header) + zeros
    fname = name.encode()
    local = struct.pack(zipfile.structFileHeader, zipfile.stringFileHeader, 20, 0, 0, zipfile.ZIP_DEFLATED, 0, 33,
                        crc, len(data), size, len(fname), 0) + fname
    central = struct.pack(zipfile.structCentralDir, zipfile.stringCentralDir, 20, 3, 20, 0, 0,
                          zipfile.ZIP_DEFLATED, 0, 33, crc, len(data), size, len(fname), 0, 0, 0, 0, 0, 0) + fname
    return local, data, central


def _append_member(archive, local, data, central):
    """``archive`` (zip bytes) with one more member, its central record added to the directory."""
    zf = zipfile.ZipFile(io.BytesIO(archive))
    cd_start = zf.start_dir
    n = len(zf.infolist())
    body, cd = archive[:cd_start], archive[cd_start:archive.rindex(zipfile.stringEndArchive)]
    offset = len(body)
    central = central[:42] + struct.pack("<L", offset) + central[46:]
    cd = cd + central
    end = struct.pack(zipfile.structEndArchive, zipfile.stringEndArchive, 0, 0, n + 1, n + 1, len(cd),
                      offset + len(local) + len(data), 0)
    return body + local + data + cd + end


# ----------------------------------------------------------------------------------------------
# the hostile files of the issue, each as bytes
# ----------------------------------------------------------------------------------------------

def _good_bytes(compressed=False):
    buf = io.BytesIO()
    net = _net()
    if compressed:
        np.savez_compressed(buf, __cnn_ext__=np.array(_arch([[type(layer).__name__, layer.get_config()]
                                                              for layer in net.layers])),
                            **{name: arr for name, _, arr in net.parameters()})
    else:
        save(net, buf)
    return buf.getvalue()


def hostile_extra_gib():
    """A 1.0 MB file holding one extra, deflated, 1 GiB array of zeros (old load: 1.08 GiB and 7 s)."""
    return _append_member(_good_bytes(), *_raw_zip("9.z.npy", _npy_header((1 << 27,)), 1 << 30))


def hostile_dense_16384():
    """1.4 KB declaring Dense(16384, 16384), with small arrays (old load: 2.1 GiB of random weights first)."""
    arch = _arch([["Dense", {"n_in": 16384, "n_out": 16384, "init": None, "dtype": "float64"}]])
    return _zip([("__cnn_ext__.npy", _npy(np.array(arch))), ("0.w.npy", _npy(np.zeros((2, 3)))),
                 ("0.b.npy", _npy(np.zeros(3)))])


def hostile_dense_16384_headers():
    """The same, with .npy headers declaring the full shapes but no data behind them."""
    arch = _arch([["Dense", {"n_in": 16384, "n_out": 16384, "init": None, "dtype": "float64"}]])
    return _zip([("__cnn_ext__.npy", _npy(np.array(arch))), ("0.w.npy", _npy_header((16384, 16384)) + bytes(16)),
                 ("0.b.npy", _npy_header((16384,)))])


def hostile_npy_2_40():
    """~300 bytes whose .npy header declares 2**40 float64 elements (old load: MemoryError)."""
    arch = _arch([["Dense", {"n_in": 2, "n_out": 3, "init": None, "dtype": "float64"}]])
    return _zip([("__cnn_ext__.npy", _npy(np.array(arch))), ("0.w.npy", _npy_header((1 << 40,))),
                 ("0.b.npy", _npy(np.zeros(3)))])


def hostile_bad_deflate():
    """A member marked deflated whose data is not a deflate stream (old load: a raw zlib.error)."""
    raw = bytearray(_good_bytes())
    zf = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    info = zf.getinfo("0.k.npy")
    raw[info.header_offset + 8:info.header_offset + 10] = struct.pack("<H", zipfile.ZIP_DEFLATED)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len] = 0x07  # a last block of the reserved type 3
    for pos in range(zf.start_dir, len(raw) - 4):
        if raw[pos:pos + 4] == zipfile.stringCentralDir and raw[pos + 46:pos + 46 + 7] == b"0.k.npy":
            central = pos
    raw[central + 10:central + 12] = struct.pack("<H", zipfile.ZIP_DEFLATED)
    return bytes(raw)


def hostile_deep_json():
    """The architecture JSON nested 100,000 deep (old load: RecursionError)."""
    return _zip([("__cnn_ext__.npy", _npy(np.array("[" * 100_000 + "]" * 100_000)))])


def hostile_duplicate():
    """A name twice in the zip: the old load silently took the last copy."""
    good = zipfile.ZipFile(io.BytesIO(_good_bytes()))
    members = [(name, good.read(name)) for name in good.namelist()]
    other = _npy(np.full((3,), 7.0))
    return _zip(members + [("3.b.npy", other)])


HOSTILE = {f.__name__[len("hostile_"):]: f for f in [
    hostile_extra_gib, hostile_dense_16384, hostile_dense_16384_headers, hostile_npy_2_40, hostile_bad_deflate,
    hostile_deep_json, hostile_duplicate]}
HOSTILE_MESSAGES = {
    "extra_gib": r"unexpected arrays \['9.z'\]",
    "dense_16384": r"parameter 0.w is saved with shape \(2, 3\).* builds shape \(16384, 16384\)",
    "dense_16384_headers": r"entry '0.w'.* declares shape \(16384, 16384\)",
    "npy_2_40": r"entry '0.w'.* declares shape \(1099511627776,\)",
    "bad_deflate": r"not a readable cnn_ext network file: entry '0.k': error:",
    "deep_json": r"entry '__cnn_ext__'.* nested more than 32 levels",
    "duplicate": r"entry '3.b' appears more than once",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_a_value_error_naming_file_and_entry(tmp_path, name):
    path = tmp_path / f"{name}.npz"
    path.write_bytes(HOSTILE[name]())
    with pytest.raises(ValueError, match=HOSTILE_MESSAGES[name]) as info:
        load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=HOSTILE_MESSAGES[name]):  # and from a file object
        load(io.BytesIO(path.read_bytes()))


_MEASURE = r"""
import json, resource, sys, tracemalloc
import cnn_ext
tracemalloc.start()
out = {}
for path in sys.argv[1:]:
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        cnn_ext.load(path)
        outcome = "loaded"
    except BaseException as exc:
        outcome = type(exc).__name__
    out[path] = [outcome, tracemalloc.get_traced_memory()[1] - base]
out["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps(out))
"""


def test_hostile_files_cost_little_memory(tmp_path):
    """Each hostile file is refused within 50 MB (tracemalloc peak: NumPy's and Python's allocations), measured in
    a subprocess whose whole peak RSS must stay low too (a refused 1 GiB array would show there)."""
    paths = []
    for name, make in sorted(HOSTILE.items()):
        path = tmp_path / f"{name}.npz"
        path.write_bytes(make())
        paths.append(str(path))
    baseline = subprocess.run(cwd=_OUTSIDE, args=[sys.executable, "-c", _MEASURE], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    result = subprocess.run(cwd=_OUTSIDE, args=[sys.executable, "-c", _MEASURE, *paths], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout)
    rss = measured.pop("maxrss_kib") - json.loads(baseline.stdout)["maxrss_kib"]
    print({os.path.basename(p): v for p, v in measured.items()}, "RSS over baseline KiB", rss)
    for path, (outcome, peak) in measured.items():
        assert outcome == "ValueError", (path, outcome)
        assert peak < 50e6, (path, peak)
    assert rss < 100 * 1024


def test_refused_load_changes_nothing(tmp_path):
    """No global random state drawn from, nothing written; a load after a refused one is exact."""
    path = tmp_path / "dense.npz"
    path.write_bytes(hostile_dense_16384())
    np.random.seed(5)
    state = np.random.get_state()[1].copy()
    with pytest.raises(ValueError):
        load(path)
    assert np.array_equal(np.random.get_state()[1], state)
    assert sorted(os.listdir(tmp_path)) == ["dense.npz"]


# ----------------------------------------------------------------------------------------------
# fuzzing: every mutant is a ValueError or an exact load
# ----------------------------------------------------------------------------------------------

GOOD = {False: _good_bytes(False), True: _good_bytes(True)}
REFERENCE = load(io.BytesIO(GOOD[False]))
COUNTS = {"bytes": 0, "structure": 0}


def _same_as_reference(net):
    assert [layer.get_config() for layer in net.layers] == [layer.get_config() for layer in REFERENCE.layers]
    for (na, _, a), (nb, _, b) in zip(net.parameters(), REFERENCE.parameters(), strict=True):
        assert na == nb and a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _load_or_value_error(raw):
    try:
        return load(io.BytesIO(raw))
    except ValueError as exc:
        assert "load: " in str(exc)
        return None


def test_compressed_file_loads_exactly():
    _same_as_reference(load(io.BytesIO(GOOD[True])))


@FUZZ
@given(compressed=st.booleans(), data=st.data(),
       kind=st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
def test_fuzz_bytes(compressed, data, kind):
    raw = bytearray(GOOD[compressed])
    pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
            pos = data.draw(st.integers(0, len(raw) - 1))
    elif kind == "truncate":
        del raw[pos:]
    elif kind == "insert":
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        new = data.draw(st.binary(min_size=1, max_size=16))
        raw[pos:pos + len(new)] = new
    COUNTS["bytes"] += 1
    net = _load_or_value_error(bytes(raw))
    if net is not None:
        _same_as_reference(net)


_JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                        max_size=3), max_leaves=8)


@st.composite
def _structural_mutant(draw):
    """(zip bytes, whether it may load as something else than the reference): members renamed, repeated,
    dropped, their .npy headers edited, or the architecture JSON changed."""
    zf = zipfile.ZipFile(io.BytesIO(GOOD[draw(st.booleans())]))
    members = [(name, zf.read(name)) for name in zf.namelist()]
    kind = draw(st.sampled_from(["rename", "duplicate", "drop", "header", "json", "json_text"]))
    i = draw(st.integers(0, len(members) - 1))
    name, data = members[i]
    changes_content = True
    if kind == "rename":
        members[i] = (draw(st.sampled_from(["0.k.npy", "0.b.npy", "3.w.npy", "3.b.npy", "x.npy", "0.k", "d/0.k.npy",
                                            "__cnn_ext__.npy", "1.w.npy", "0.K.npy"])), data)
    elif kind == "duplicate":
        copy = data if draw(st.booleans()) else _npy(np.zeros(draw(st.integers(0, 5))))
        members.insert(draw(st.integers(0, len(members))), (name, copy))
    elif kind == "drop":
        del members[i]
    elif kind == "header":
        shape = tuple(draw(st.lists(st.integers(0, 2**40), max_size=4)))
        dtype = draw(st.sampled_from(["<f8", "<f4", ">f8", "|O", "<i8", "<U3", "|V8", "<c16"]))
        body = data[np.lib.format.MAGIC_LEN + 2 + struct.unpack("<H", data[8:10])[0]:]
        members[i] = (name, _npy_header(shape, dtype, draw(st.booleans())) + body[:draw(st.integers(0, len(body)))])
    elif kind == "json":
        spec = json.loads(str(np.load(io.BytesIO(members[0][1]))))
        layer = draw(st.integers(0, len(spec["layers"]) - 1))
        target = draw(st.sampled_from(["config", "name", "spec"]))
        if target == "config" and spec["layers"][layer][1]:
            key = draw(st.sampled_from(sorted(spec["layers"][layer][1]) + ["rng", "seed", "bogus"]))
            spec["layers"][layer][1][key] = draw(_JSON_VALUES)
        elif target == "name":
            spec["layers"][layer][0] = draw(st.sampled_from(["Dense", "Conv2D", "ReLU", "Flatten", "Nope", ""]))
        else:
            spec[draw(st.sampled_from(["format", "version", "layers"]))] = draw(_JSON_VALUES)
        members[0] = (members[0][0], _npy(np.array(json.dumps(spec))))
    else:
        text = str(np.load(io.BytesIO(members[0][1])))
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(alphabet='[]{}",:0123456789e.-ntrufalsn ', max_size=20)) + text[cut:]
        members[0] = (members[0][0], _npy(np.array(text)))
    return _zip(members), changes_content


@FUZZ
@given(mutant=_structural_mutant())
def test_fuzz_structure(mutant):
    """A mutant that still loads is exactly what the file holds: each parameter equals the file's array."""
    raw, _ = mutant
    COUNTS["structure"] += 1
    net = _load_or_value_error(raw)
    if net is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zf = zipfile.ZipFile(io.BytesIO(raw))
        for name, _, arr in net.parameters():
            saved = np.load(io.BytesIO(zf.read(name + ".npy")), allow_pickle=False)
            assert saved.dtype == arr.dtype and saved.shape == arr.shape and saved.tobytes() == arr.tobytes()


def test_fuzz_counts():
    """Runs after the fuzzers (file order): they tried the files the report counts."""
    print("fuzzed model files:", COUNTS)
    assert COUNTS["bytes"] >= 100 and COUNTS["structure"] >= 100
