"""Datasets: the toy shapes, batching and one-hot, the shipped MNIST sample, and the MNIST / Fashion-MNIST loaders
on real IDX files written here (found by argument, $CNN_EXT_DATA or the cache; downloaded from a local HTTP server
or a file:// mirror; corrupt; offline). Nothing here touches the network or ../shared."""
import functools
import gzip
import hashlib
import http.server
import io
import struct
import threading
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from cnn_ext.datasets import (
    FASHION_MNIST_MIRRORS,
    MNIST_MIRRORS,
    SHAPE_BLUEPRINTS,
    SHAPE_NAMES,
    batches,
    default_data_dir,
    load_fashion_mnist,
    load_mnist,
    load_mnist_sample,
    make_shapes,
    one_hot,
    read_idx,
)
from cnn_ext.datasets import _mnist

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
OFFLINE = ["http://127.0.0.1:9/"]  # the discard port: nothing listens, the connection is refused at once


# ----------------------------------------------------------------------------------------------
# toy shapes, one-hot, batches
# ----------------------------------------------------------------------------------------------

def test_make_shapes():
    (xtr, ytr), (xte, yte) = make_shapes(n_per_class=50, test_fraction=0.2, seed=3)
    assert xtr.shape == (160, 1, 3, 3) and xte.shape == (40, 1, 3, 3) and xtr.dtype == np.float64
    assert np.bincount(ytr).tolist() == [40] * 4 and np.bincount(yte).tolist() == [10] * 4
    blue = np.array([SHAPE_BLUEPRINTS[n] for n in SHAPE_NAMES], dtype=float)
    for x, y in ((xtr, ytr), (xte, yte)):
        noise = x[:, 0] - blue[y]
        assert np.abs(noise).max() <= 0.25 and np.abs(noise).max() > 0.2  # uniform(-0.25, 0.25)
    (a, _), _ = make_shapes(n_per_class=50, seed=3)
    (b, _), _ = make_shapes(n_per_class=50, seed=4)
    assert_array_equal(a, xtr)
    assert not np.allclose(a, b)
    (c, _), _ = make_shapes(n_per_class=50, seed=3, dtype=np.float32)
    assert c.dtype == np.float32
    assert SHAPE_NAMES == ("v_line", "h_line", "cross", "diamond")


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(n_per_class=0), ValueError, "n_per_class must be >= 1"),
    (dict(test_fraction=1.0), ValueError, r"test_fraction must be in \[0, 1\)"),
    (dict(noise=-1), ValueError, "noise must be >= 0"),
    (dict(dtype=np.int8), TypeError, "dtype must be float32 or float64"),
])
def test_make_shapes_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_shapes(**kwargs)


def test_one_hot():
    assert_array_equal(one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
    assert one_hot([1], 2, np.float32).dtype == np.float32
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\]"):
        one_hot([3], 3)
    with pytest.raises(TypeError, match="labels must be integers"):
        one_hot([0.5], 3)
    with pytest.raises(ValueError, match="labels must be 1-D"):
        one_hot([[0]], 3)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        one_hot([0], 0)


def test_batches():
    x = np.arange(10.0).reshape(10, 1)
    y = np.arange(10) % 3
    xb, yb = batches(x, y, 4)
    assert [len(b) for b in xb] == [4, 4, 2] and [b.shape for b in yb] == [(4, 3), (4, 3), (2, 3)]
    assert np.shares_memory(xb[0], x)  # views, no copy
    assert_array_equal(np.concatenate(xb), x)
    assert_array_equal(np.argmax(np.concatenate(yb), axis=1), y)
    xb, yb = batches(x, y, 4, drop_last=True, num_classes=5)
    assert len(xb) == 2 and yb[0].shape == (4, 5)
    s1, t1 = batches(x, y, 3, shuffle=True, seed=7)
    s2, _ = batches(x, y, 3, shuffle=True, seed=7)
    xs, ys = np.concatenate(s1)[:, 0], np.argmax(np.concatenate(t1), axis=1)
    assert_array_equal(xs, np.concatenate(s2)[:, 0])
    assert not np.array_equal(xs, x[:, 0]) and sorted(xs) == list(x[:, 0])
    assert_array_equal(ys, y[xs.astype(int)])  # pairs kept together
    assert batches(x.astype(np.float32), y)[1][0].dtype == np.float32
    with pytest.raises(ValueError, match=r"x has shape \(10, 1\) and labels \(9,\)"):
        batches(x, y[:9])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        batches(x, y, 0)


# ----------------------------------------------------------------------------------------------
# the shipped sample
# ----------------------------------------------------------------------------------------------

def test_mnist_sample():
    (xtr, ytr), (xte, yte) = load_mnist_sample()
    assert xtr.shape == (1500, 1, 28, 28) and xte.shape == (500, 1, 28, 28) and xtr.dtype == np.float64
    assert ytr.dtype == np.int64
    # the first MNIST test labels, and the label counts recorded in data/README.md
    assert ytr[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(np.concatenate([ytr, yte])).tolist() == [175, 234, 219, 207, 217, 179, 178, 205, 192, 194]
    assert xtr.min() == 0.0 and xtr.max() == 1.0
    assert_allclose(xtr * 255, np.round(xtr * 255), atol=1e-9)  # k / 255 exactly
    (a, _), (b, _) = load_mnist_sample(n_test=100, dtype=np.float32)
    assert a.shape[0] == 1900 and b.shape[0] == 100 and a.dtype == np.float32
    with pytest.raises(ValueError, match=r"n_test must be < 2000"):
        load_mnist_sample(n_test=2000)


# ----------------------------------------------------------------------------------------------
# IDX files written here (real digits: the shipped sample), loaders
# ----------------------------------------------------------------------------------------------

def idx_raw(arr):
    """IDX bytes of a uint8 array, written from the format description (magic 0x0000080N, big-endian sizes)."""
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.fixture(scope="module")
def digits():
    """300 training and 100 test digits as uint8, plus their IDX bytes per canonical file name."""
    images = read_idx(_mnist._SAMPLE_DIR / _mnist._SAMPLE_IMAGES)
    labels = read_idx(_mnist._SAMPLE_DIR / _mnist._SAMPLE_LABELS)
    arrays = {FILES[0]: images[:300], FILES[1]: labels[:300], FILES[2]: images[300:400], FILES[3]: labels[300:400]}
    return arrays, {f: idx_raw(a) for f, a in arrays.items()}


@pytest.fixture
def small_sets(monkeypatch, digits):
    """Make the loaders expect the small files (their md5 and shapes) instead of the canonical ones."""
    arrays, raw = digits
    for name in ("mnist", "fashion-mnist"):
        monkeypatch.setitem(_mnist._DATASETS[name], "md5", {f: hashlib.md5(raw[f]).hexdigest() for f in FILES})
    monkeypatch.setattr(_mnist, "_SHAPES", {f: arrays[f].shape for f in FILES})
    monkeypatch.delenv("CNN_EXT_DATA", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-home-for-tests")
    return digits


def write_files(directory, raw, files=FILES):
    directory.mkdir(parents=True, exist_ok=True)
    for f in files:
        with gzip.open(directory / f, "wb") as out:
            out.write(raw[f])


def check_loaded(result, arrays, dtype):
    (xtr, ytr), (xte, yte) = result
    assert xtr.shape == (300, 1, 28, 28) and xte.shape == (100, 1, 28, 28)
    assert xtr.dtype == dtype and ytr.dtype == np.int64
    assert_allclose(xtr[:, 0], arrays[FILES[0]] / 255.0, rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert_allclose(xte[:, 0], arrays[FILES[2]] / 255.0, rtol=1e-6 if dtype == np.float32 else 1e-15)
    assert_array_equal(ytr, arrays[FILES[1]])
    assert_array_equal(yte, arrays[FILES[3]])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_load_from_data_dir(tmp_path, small_sets, dtype):
    arrays, raw = small_sets
    write_files(tmp_path, raw)  # files directly in the root
    check_loaded(load_mnist(tmp_path, dtype=dtype, mirrors=OFFLINE), arrays, dtype)
    write_files(tmp_path / "fashion-mnist", raw)  # or in <root>/<name>/
    check_loaded(load_fashion_mnist(str(tmp_path), dtype=dtype, mirrors=OFFLINE), arrays, dtype)


def test_load_from_env_and_cache(tmp_path, monkeypatch, small_sets):
    arrays, raw = small_sets
    write_files(tmp_path / "env" / "mnist", raw)
    monkeypatch.setenv("CNN_EXT_DATA", str(tmp_path / "env"))
    assert default_data_dir() == tmp_path / "env"
    check_loaded(load_mnist(mirrors=OFFLINE), arrays, np.float64)
    monkeypatch.delenv("CNN_EXT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "cnn_ext"
    write_files(tmp_path / "home" / ".cache" / "cnn_ext" / "mnist", raw)
    check_loaded(load_mnist(mirrors=OFFLINE), arrays, np.float64)


def test_read_idx(tmp_path, digits):
    arrays, raw = digits
    write_files(tmp_path, raw, FILES[:1])
    assert_array_equal(read_idx(tmp_path / FILES[0]), arrays[FILES[0]])
    (tmp_path / "plain").write_bytes(raw[FILES[1]])
    assert_array_equal(read_idx(tmp_path / "plain"), arrays[FILES[1]])
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + raw[FILES[1]][4:])
    with pytest.raises(ValueError, match="is not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(raw[FILES[1]][:-3])
    with pytest.raises(ValueError, match=r"is corrupt: the header says shape \(300,\)"):
        read_idx(tmp_path / "short")


def test_corrupt_files(tmp_path, small_sets):
    _, raw = small_sets
    write_files(tmp_path, raw)
    good = (tmp_path / FILES[0]).read_bytes()
    (tmp_path / FILES[0]).write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(ValueError, match=rf"{FILES[0]} is corrupt \(not a complete gzip file"):
        load_mnist(tmp_path, mirrors=OFFLINE)
    (tmp_path / FILES[0]).write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=rf"{FILES[0]} is corrupt"):
        load_mnist(tmp_path, mirrors=OFFLINE)
    flipped = bytearray(raw[FILES[2]])
    flipped[-1] ^= 0xFF  # one pixel changed: a valid gzip of the wrong content
    (tmp_path / FILES[0]).write_bytes(good)
    with gzip.open(tmp_path / FILES[2], "wb") as out:
        out.write(bytes(flipped))
    with pytest.raises(ValueError, match=rf"{FILES[2]} is corrupt or not the expected file: md5 of its content"):
        load_mnist(tmp_path, mirrors=OFFLINE)


def test_the_other_datasets_file_is_named(tmp_path, small_sets, monkeypatch):
    _, raw = small_sets
    write_files(tmp_path, raw)
    fashion = dict(_mnist._DATASETS["fashion-mnist"]["md5"])
    fashion[FILES[0]] = "0" * 32  # as if these were MNIST files and Fashion-MNIST's differed
    monkeypatch.setitem(_mnist._DATASETS["fashion-mnist"], "md5", fashion)
    with pytest.raises(ValueError, match=rf"{FILES[0]} belongs to MNIST, not to the dataset requested"):
        load_fashion_mnist(tmp_path, mirrors=OFFLINE)


def test_offline_and_absent_fails_fast_with_instructions(tmp_path, small_sets):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, mirrors=OFFLINE, timeout=2)
    assert time.perf_counter() - start < 5
    msg = str(info.value)
    for f in FILES:
        assert f in msg
    assert str(tmp_path / "mnist") in msg and "download failed" in msg and "127.0.0.1:9" in msg
    assert "CNN_EXT_DATA" in msg
    assert not list(tmp_path.rglob("*.part"))  # no partial file left behind
    with pytest.raises(FileNotFoundError, match=r"(?s)Fashion-MNIST files not found.*download=False"):
        load_fashion_mnist(tmp_path, download=False)


def test_only_missing_files_are_named(tmp_path, small_sets):
    _, raw = small_sets
    write_files(tmp_path / "mnist", raw, FILES[:3])
    with pytest.raises(FileNotFoundError, match=rf"files not found: {FILES[3]} missing in {tmp_path / 'mnist'}"):
        load_mnist(tmp_path, mirrors=OFFLINE)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/'served'; yields (directory, base URL)."""
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_download_from_http_mirror_after_a_dead_one(tmp_path, small_sets, http_mirror, capsys):
    arrays, raw = small_sets
    served, url = http_mirror
    write_files(served, raw)
    root = tmp_path / "root"
    check_loaded(load_mnist(root, mirrors=OFFLINE + [url], timeout=5), arrays, np.float64)
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(FILES)
    # a second load reads the downloaded files (the server is no longer needed)
    check_loaded(load_mnist(root, mirrors=OFFLINE), arrays, np.float64)


def test_download_only_the_missing_file_from_file_url(tmp_path, small_sets):
    arrays, raw = small_sets
    write_files(tmp_path / "mirror", raw)
    write_files(tmp_path / "root" / "fashion-mnist", raw, FILES[1:])
    result = load_fashion_mnist(tmp_path / "root", mirrors=[(tmp_path / "mirror").as_uri() + "/"], progress=False)
    check_loaded(result, arrays, np.float64)
    assert (tmp_path / "root" / "fashion-mnist" / FILES[0]).is_file()


def test_corrupt_download_is_rejected(tmp_path, small_sets, http_mirror):
    _, raw = small_sets
    served, url = http_mirror
    write_files(served, raw)
    with gzip.open(served / FILES[1], "wb") as out:
        out.write(raw[FILES[1]][:-1] + b"\x07")  # wrong last label
    with pytest.raises(FileNotFoundError, match=rf"(?s){FILES[1]}.*corrupt or not the expected file"):
        load_mnist(tmp_path / "root", mirrors=[url], progress=False)
    target = tmp_path / "root" / "mnist"
    assert not (target / FILES[1]).exists() and not list(target.glob("*.part"))


def test_mirror_lists_and_argument_errors(tmp_path):
    assert all(m.startswith(("https://", "http://")) for m in MNIST_MIRRORS + FASHION_MNIST_MIRRORS)
    assert not any("yann.lecun.com" in m for m in MNIST_MIRRORS)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        load_mnist(tmp_path, timeout=0)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        load_mnist(tmp_path, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# hostile inputs: sizes, gzip bombs, failing mirrors, fuzzed IDX files
# ----------------------------------------------------------------------------------------------

def test_huge_num_classes_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"num_classes must be <= 2147483647, got 2147483648"):
        one_hot([0, 1, 2], 2**31)
    with pytest.raises(ValueError, match=r"num_classes must be <= 2147483647, got 1000000000000"):
        batches(np.zeros((4, 2)), [0, 1, 2, 3], num_classes=10**12)
    # within 32 bits, but 10**6 rows of them are ~17 PB: more than any machine's memory, named before allocating
    labels = np.broadcast_to(np.zeros(1, np.int64), (10**6,))
    with pytest.raises(ValueError, match=r"num_classes=2147483647 for 1000000 labels needs one-hot targets of shape "
                                         r"\(1000000, 2147483647\): \d+ bytes, more than this machine's memory"):
        one_hot(labels, INT32_MAX)
    with pytest.raises(ValueError, match=r"num_classes=2147483647 for 1000000 labels"):
        batches(np.broadcast_to(np.zeros((1, 1)), (10**6, 1)), labels, num_classes=INT32_MAX)


INT32_MAX = 2**31 - 1


def _bomb(header, zeros):
    """gzip of an IDX header followed by ``zeros`` zero bytes (200 MB of zeros give ~200 KB)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as out:
        out.write(header)
        block = bytes(1 << 22)
        for _ in range(zeros // len(block)):
            out.write(block)
    return buf.getvalue()


def test_gzip_bomb_in_the_cache_costs_no_more_than_the_real_file(tmp_path, small_sets):
    _, raw = small_sets
    write_files(tmp_path, raw)
    header = raw[FILES[0]][:16]  # the expected header, then 200 MB of zeros instead of 235 KB of digits
    (tmp_path / FILES[0]).write_bytes(_bomb(header, 200 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"{FILES[0]} is corrupt: the header says shape \(300, 28, 28\) "
                                             r"\(235216 bytes\) but the file holds more bytes"):
            load_mnist(tmp_path, mirrors=OFFLINE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10e6
    # a header declaring 2**32 - 1 images is refused before any of the body is decompressed
    (tmp_path / FILES[0]).write_bytes(_bomb(struct.pack(">HBBIII", 0, 8, 3, 2**32 - 1, 28, 28), 0))
    with pytest.raises(ValueError, match=r"holds an array of shape \(4294967295, 28, 28\), expected \(300, 28, 28\)"):
        load_mnist(tmp_path, mirrors=OFFLINE)
    (tmp_path / "plain.gz").write_bytes(_bomb(struct.pack(">HBBIII", 0, 8, 3, 2**32 - 1, 28, 28), 0))
    with pytest.raises(ValueError, match=r"declares shape \(4294967295, 28, 28\) \(\d+ bytes\), more than"):
        read_idx(tmp_path / "plain.gz")


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``/<behaviour>/<file>`` from ``server.files``: good, bomb (a gzip bomb), chunked (a chunked reply cut
    short), status (a bad status line), trickle (a byte every 50 ms, for at most 10 s), missing (404)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        behaviour, _, name = self.path.strip("/").partition("/")
        self.server.hits.append(behaviour)
        body = self.server.files.get(name)
        if body is None or behaviour == "missing":
            self.send_error(404)
        elif behaviour == "status":
            self.wfile.write(b"NONSENSE\r\n\r\n")
        elif behaviour == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(body) + body[:100])
            self.wfile.flush()
            self.close_connection = True
        else:
            if behaviour == "bomb":
                body = self.server.bomb
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if behaviour != "trickle":
                self.wfile.write(body)
                return
            stop = time.monotonic() + 10
            for i in range(len(body)):
                if time.monotonic() > stop or self.server.closing.is_set():
                    break
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.05)


@pytest.fixture
def hostile_server(small_sets):
    _, raw = small_sets
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileHandler)
    server.daemon_threads = True
    server.files = {f: gzip.compress(raw[f]) for f in FILES}
    server.bomb = _bomb(raw[FILES[0]][:16], 64 << 20)
    server.hits, server.closing = [], threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.closing.set()
        server.shutdown()
        server.server_close()


def test_every_failing_mirror_falls_through_to_the_next(tmp_path, small_sets, hostile_server):
    arrays, _ = small_sets
    server, url = hostile_server
    mirrors = [url + b for b in ("missing", "status", "chunked", "bomb", "trickle", "good")]
    start = time.monotonic()
    result = load_mnist(tmp_path, mirrors=mirrors, timeout=1, deadline=0.5, progress=False)
    elapsed = time.monotonic() - start
    check_loaded(result, arrays, np.float64)
    assert server.hits == ["missing", "status", "chunked", "bomb", "trickle", "good"] * 4
    assert elapsed < 4 * (0.5 + 1) + 5  # each trickle held to its deadline (plus one read's timeout)


def test_failures_are_listed_and_the_deadline_holds(tmp_path, small_sets, hostile_server):
    _, url = hostile_server
    mirrors = [url + b for b in ("status", "chunked", "bomb", "trickle")]
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path, mirrors=mirrors, timeout=1, deadline=1, progress=False)
    assert time.monotonic() - start < 1 + 1 + 3  # one file tried on every mirror, then the loader gives up
    msg = str(info.value)
    for expected in ("BadStatusLine", "IncompleteRead", "the header says shape (300, 28, 28)",
                     "TimeoutError: the download took more than its deadline of 1 s"):
        assert expected in msg
    assert not list(tmp_path.rglob("*.part"))


def _idx_fixture():
    images = read_idx(_mnist._SAMPLE_DIR / _mnist._SAMPLE_IMAGES)[:20]
    content = idx_raw(images)
    return images, content, hashlib.md5(content).hexdigest()


IDX_IMAGES, IDX_CONTENT, IDX_MD5 = _idx_fixture()
IDX_GZ = gzip.compress(IDX_CONTENT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), layer=st.sampled_from(["gz", "content"]),
       kind=st.sampled_from(["flip", "truncate", "insert", "header"]))
def test_fuzz_idx_files(tmp_path, data, layer, kind):
    """Mutated gzip bytes or IDX content: a ValueError, or the exact images (md5 and shape checked)."""
    raw = bytearray(IDX_GZ if layer == "gz" else IDX_CONTENT)
    pos = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del raw[pos:]
    elif kind == "insert":
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        dims = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=4))
        code = data.draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07]))
        raw[:16] = struct.pack(f">HBB{len(dims)}I", 0, code, len(dims), *dims)
    path = tmp_path / "f.gz"
    path.write_bytes(bytes(raw) if layer == "gz" else gzip.compress(bytes(raw)))
    try:  # the md5 is checked: whatever loads is the original
        assert_array_equal(_mnist._read_checked(path, IDX_MD5, IDX_IMAGES.shape), IDX_IMAGES)
    except ValueError:
        pass
    try:  # no md5: any array, but never more than the data that is there (deflate expands 1032x at most)
        assert read_idx(path).nbytes <= 1032 * path.stat().st_size
    except ValueError:
        pass
