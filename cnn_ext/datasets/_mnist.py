"""MNIST and Fashion-MNIST from the canonical IDX ``.gz`` files, and the small MNIST sample shipped inside the package.

Where the files are looked for, in order: the ``data_dir`` argument, else ``$CNN_EXT_DATA``, else
``~/.cache/cnn_ext``; in ``<root>/<name>/`` (``mnist`` or ``fashion-mnist``) and then in ``<root>/`` itself.
Missing files are downloaded into ``<root>/<name>/`` from mirrors that still serve them (the original MNIST
site refuses downloads), with a progress bar when tqdm is installed, a short socket timeout, an overall
deadline per file and no retry loop; any failure (connection, HTTP, a malformed reply, a wrong or oversized
body) moves on to the next mirror. Files are read as streams: the IDX header first, checked against the
expected shape, then no more body than it declares (a gzip bomb costs no more than the file it poses as). Every file is checked against the md5 of its *uncompressed* content (so a re-compressed copy, such as
Debian's ``dataset-fashion-mnist``, is accepted) and against its IDX header: a corrupt file raises
``ValueError`` naming it; absent files that cannot be downloaded raise ``FileNotFoundError`` saying exactly
which files to put where.
"""
import gzip
import hashlib
import os
import http.client
import math
import struct
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import List, Optional, Union

import numpy as np
from numpy.typing import DTypeLike, NDArray

from .._checks import float_dtype as _check_dtype, positive_int as _positive_int
from .._typing import Dataset

__all__ = [
    "MNIST_MIRRORS",
    "FASHION_MNIST_MIRRORS",
    "default_data_dir",
    "load_mnist",
    "load_fashion_mnist",
    "load_mnist_sample",
    "read_idx",
]

MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
FASHION_MNIST_MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
]

_TRAIN_IMAGES, _TRAIN_LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
_TEST_IMAGES, _TEST_LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
_FILES = (_TRAIN_IMAGES, _TRAIN_LABELS, _TEST_IMAGES, _TEST_LABELS)

# md5 of the uncompressed IDX content (the published MNIST values; Fashion-MNIST's computed from the
# canonical files), and the expected shape from the header.
_DATASETS = {
    "mnist": {
        "title": "MNIST",
        "md5": {
            _TRAIN_IMAGES: "6bbc9ace898e44ae57da46a324031adb",
            _TRAIN_LABELS: "a25bea736e30d166cdddb491f175f624",
            _TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
            _TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
        },
    },
    "fashion-mnist": {
        "title": "Fashion-MNIST",
        "md5": {
            _TRAIN_IMAGES: "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            _TRAIN_LABELS: "9018921c3c673c538a1fc5bad174d6f9",
            _TEST_IMAGES: "8181f5470baa50b63fa0f6fddb340f0a",
            _TEST_LABELS: "15d484375f8d13e6eb1aabb0c3f46965",
        },
    },
}
_SHAPES = {_TRAIN_IMAGES: (60000, 28, 28), _TRAIN_LABELS: (60000,),
           _TEST_IMAGES: (10000, 28, 28), _TEST_LABELS: (10000,)}

_SAMPLE_DIR = Path(__file__).resolve().parent / "data"
_SAMPLE_IMAGES, _SAMPLE_LABELS = "mnist-sample-images-idx3-ubyte.gz", "mnist-sample-labels-idx1-ubyte.gz"
_SAMPLE_MD5 = {  # uncompressed content, written by tools/make_mnist_sample.py
    _SAMPLE_IMAGES: "014beca301477cb2e974ccd9bba2262c",
    _SAMPLE_LABELS: "a82723c4f1ffcf0f0a0d4d06f6c879a0",
}

_MAX_IDX_BYTES = 1 << 30  # the most data read_idx reads (MNIST's largest file holds 47 MB)
_CHUNK = 1 << 16
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
              0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def default_data_dir() -> Path:
    """``$CNN_EXT_DATA`` when set, else ``~/.cache/cnn_ext``."""
    env = os.environ.get("CNN_EXT_DATA", "").strip()
    return Path(env).expanduser() if env else Path("~/.cache/cnn_ext").expanduser()


# ----------------------------------------------------------------------------------------------
# IDX reading and checking
# ----------------------------------------------------------------------------------------------

def _read_stream(f, source, shape=None, md5=None):
    """The array in an IDX stream (big-endian header: 0, 0, type code, ndim, then ndim uint32 sizes).

    The header is checked first, against ``shape`` when given and else against :data:`_MAX_IDX_BYTES`, so the
    body is never read past the size it declares (a gzip bomb costs no more than the file it pretends to be);
    the md5 of the whole content, when given, is checked before the array is made.
    """
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_TYPES or head[3] == 0:
        raise ValueError(f"{source} is not an IDX file (bad magic number {head.hex() or 'empty'})")
    ndim = head[3]
    sizes = f.read(4 * ndim)
    if len(sizes) < 4 * ndim:
        raise ValueError(f"{source} is corrupt: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", sizes)
    dtype = np.dtype(_IDX_TYPES[head[2]])
    nbytes = math.prod(dims) * dtype.itemsize
    if shape is not None and dims != tuple(shape):
        raise ValueError(f"{source} holds an array of shape {dims}, expected {tuple(shape)}")
    if nbytes > _MAX_IDX_BYTES:
        raise ValueError(f"{source} is corrupt or not a dataset file: its header declares shape {dims} "
                         f"({nbytes} bytes), more than the {_MAX_IDX_BYTES} bytes read_idx reads")
    body = bytearray()
    while len(body) < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - len(body)))
        if not chunk:
            break
        body += chunk
    header = 4 + 4 * ndim
    if len(body) < nbytes or f.read(1):
        held = f"{header + len(body)}" if len(body) < nbytes else "more"
        raise ValueError(f"{source} is corrupt: the header says shape {dims} ({header + nbytes} bytes) "
                         f"but the file holds {held} bytes")
    if md5 is not None:
        digest = hashlib.md5(head + sizes + body).hexdigest()
        if digest != md5:
            other = [info["title"] for info in _DATASETS.values() if digest in info["md5"].values()]
            if other:
                raise ValueError(f"{source} belongs to {other[0]}, not to the dataset requested (content md5 "
                                 f"{digest}, expected {md5}): point data_dir / CNN_EXT_DATA at the right dataset's "
                                 f"directory")
            raise ValueError(f"{source} is corrupt or not the expected file: md5 of its content is {digest}, "
                             f"expected {md5}; delete it and try again")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _read_file(path, gz, shape=None, md5=None):
    """:func:`_read_stream` on a file, decompressed as it is read when ``gz``; gzip damage is a ValueError."""
    path = Path(path)
    if not gz:
        with open(path, "rb") as f:
            return _read_stream(f, path, shape, md5)
    try:
        with gzip.open(path, "rb") as f:
            return _read_stream(f, path, shape, md5)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise ValueError(f"{path} is corrupt (not a complete gzip file: {exc}); delete it and try again") from None


def read_idx(path: Union[str, os.PathLike]) -> NDArray:
    """The array stored in an IDX file (``.gz`` or not), e.g. ``(N, 28, 28)`` uint8 images or ``(N,)`` labels.

    Files declaring more than 1 GiB of data are refused (ValueError) before their body is read.
    """
    return _read_file(path, Path(path).suffix == ".gz")


def _read_checked(path, md5, shape=None):
    """Read with the header checked against ``shape`` before the body, the content md5 before the array."""
    return _read_file(path, True, shape, md5)


# ----------------------------------------------------------------------------------------------
# finding and downloading
# ----------------------------------------------------------------------------------------------

def _progress(total, desc, enabled):
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)
    return None


def _download(url, dest, md5, shape, timeout, deadline, progress):
    """Fetch ``url`` into ``dest`` through a temporary file; verify the content before moving it in place.

    The body may not exceed what a gzip of the expected file can take, nor the whole download ``deadline``
    seconds (checked between reads, each of which waits at most ``timeout``: a server trickling bytes cannot
    hold it longer).
    """
    size = 4 + 4 * len(shape) + math.prod(shape)  # the uncompressed IDX file, uint8
    limit = size + size // 256 + 1024  # gzip's worst case is ~0.03% over its input
    stop = time.monotonic() + deadline
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else None
            if total is not None and total > limit:
                raise ValueError(f"the server announces {total} bytes, more than the {limit} this file can take")
            read = getattr(resp, "read1", resp.read)  # read1: one socket read, so the deadline is seen between
            bar = _progress(total, dest.name, progress)
            got = 0
            try:
                while True:
                    if time.monotonic() > stop:
                        raise TimeoutError(f"the download took more than its deadline of {deadline} s "
                                           f"({got} bytes received)")
                    chunk = read(_CHUNK)
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > limit:
                        raise ValueError(f"the body exceeds the {limit} bytes this file can take")
                    out.write(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        _read_checked(Path(tmp), md5, shape)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Every way a mirror can fail: refused or reset connections, timeouts, HTTP errors (URLError, HTTPError),
# malformed replies (HTTPException: a bad status line, a truncated chunked body), a wrong or oversized body.
_MIRROR_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


def _locate(name, data_dir, download, mirrors, timeout, deadline, progress):
    """Directory holding all four files of dataset ``name``, downloading the missing ones when allowed."""
    info = _DATASETS[name]
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    candidates = [root / name, root]
    for d in candidates:
        if all((d / f).is_file() for f in _FILES):
            return d
    target = next((d for d in candidates if any((d / f).is_file() for f in _FILES)), root / name)
    missing = [f for f in _FILES if not (target / f).is_file()]
    errors = []
    if download:
        for f in missing:
            for base in mirrors:
                url = base.rstrip("/") + "/" + f
                try:
                    _download(url, target / f, info["md5"][f], _SHAPES[f], timeout, deadline, progress)
                    break
                except _MIRROR_ERRORS as exc:  # try the next mirror
                    errors.append(f"{url}: {type(exc).__name__}: {exc}")
            else:
                break
        missing = [f for f in _FILES if not (target / f).is_file()]
        if not missing:
            return target
    lines = [f"{info['title']} files not found: {', '.join(missing)} missing in {target}"]
    if download:
        lines.append("and the download failed (offline?):")
        lines += [f"  {e}" for e in errors] or ["  no mirror configured"]
    else:
        lines.append("(download=False)")
    lines.append(f"Put the four canonical files {', '.join(_FILES)} in {target} "
                 f"(or in a directory given as data_dir= or by the CNN_EXT_DATA environment variable).")
    if mirrors:
        lines.append("They can be fetched from " + " or ".join(mirrors))
    raise FileNotFoundError("\n".join(lines))


def _images(arr, dtype):
    """uint8 (N, 28, 28) -> (N, 1, 28, 28) floats in [0, 1]."""
    x = arr.reshape(arr.shape[0], 1, *arr.shape[1:]).astype(dtype)
    x *= dtype.type(1 / 255)
    return x


def _seconds(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


def _load(name, data_dir, dtype, download, mirrors, timeout, deadline, progress):
    dtype = _check_dtype(dtype)
    timeout, deadline = _seconds(timeout, "timeout"), _seconds(deadline, "deadline")
    d = _locate(name, data_dir, download, list(mirrors), timeout, deadline, progress)
    md5 = _DATASETS[name]["md5"]
    arrays = {f: _read_checked(d / f, md5[f], _SHAPES[f]) for f in _FILES}
    return ((_images(arrays[_TRAIN_IMAGES], dtype), arrays[_TRAIN_LABELS].astype(np.int64)),
            (_images(arrays[_TEST_IMAGES], dtype), arrays[_TEST_LABELS].astype(np.int64)))


_LOAD_DOC = """Load {title}: 60,000 training and 10,000 test images.

    Parameters
    ----------
    data_dir : str or Path, optional
        Root directory; default ``$CNN_EXT_DATA``, else ``~/.cache/cnn_ext``. The four canonical files
        (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
        ``t10k-labels-idx1-ubyte.gz``) are looked for in ``<root>/{name}/`` and then in ``<root>/``.
    dtype : float32 or float64, default float64
    download : bool, default True
        Fetch missing files into ``<root>/{name}/`` from ``mirrors``.
    mirrors : list of str, default ``{mirrors_name}``
        Base URLs tried in order.
    timeout : float, default 10
        Socket timeout in seconds for each connection and read.
    deadline : float, default 600
        Seconds each file's download may take in all (checked between reads), after which the next mirror is
        tried: a server trickling bytes cannot hold the call forever.
    progress : bool, default True
        Show a download progress bar (when tqdm is installed).

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        images (N, 1, 28, 28) in ``dtype`` scaled to [0, 1]; labels (N,) int64 in 0..9.

    Raises
    ------
    FileNotFoundError
        The files are absent and could not be downloaded; the message says which files to put where.
    ValueError
        A file is corrupt (bad gzip stream, wrong checksum or IDX header).
    """


def load_mnist(data_dir: Union[str, os.PathLike, None] = None, *, dtype: DTypeLike = np.float64,
               download: bool = True, mirrors: Optional[List[str]] = None, timeout: float = 10.0,
               deadline: float = 600.0, progress: bool = True) -> Dataset:
    return _load("mnist", data_dir, dtype, download, MNIST_MIRRORS if mirrors is None else mirrors,
                 timeout, deadline, progress)


def load_fashion_mnist(data_dir: Union[str, os.PathLike, None] = None, *, dtype: DTypeLike = np.float64,
                       download: bool = True, mirrors: Optional[List[str]] = None, timeout: float = 10.0,
                       deadline: float = 600.0, progress: bool = True) -> Dataset:
    return _load("fashion-mnist", data_dir, dtype, download,
                 FASHION_MNIST_MIRRORS if mirrors is None else mirrors, timeout, deadline, progress)


load_mnist.__doc__ = _LOAD_DOC.format(title="MNIST handwritten digits", name="mnist", mirrors_name="MNIST_MIRRORS")
load_fashion_mnist.__doc__ = _LOAD_DOC.format(title="Fashion-MNIST (Zalando article images)", name="fashion-mnist",
                                              mirrors_name="FASHION_MNIST_MIRRORS")


def load_mnist_sample(*, n_test: int = 500, dtype: DTypeLike = np.float64) -> Dataset:
    """The MNIST sample shipped inside the package: the first 2,000 digits of the MNIST test set.

    For examples and tests that must run offline; train on the full set for real results.
    MNIST is by Yann LeCun and Corinna Cortes, CC BY-SA 3.0 (see ``cnn_ext/datasets/data/README.md``).

    Parameters
    ----------
    n_test : int, default 500
        The last ``n_test`` digits form the test split, the others the training split.
    dtype : float32 or float64, default float64

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        images (N, 1, 28, 28) in [0, 1] and int64 labels.
    """
    dtype = _check_dtype(dtype)
    images = _read_checked(_SAMPLE_DIR / _SAMPLE_IMAGES, _SAMPLE_MD5[_SAMPLE_IMAGES])
    labels = _read_checked(_SAMPLE_DIR / _SAMPLE_LABELS, _SAMPLE_MD5[_SAMPLE_LABELS])
    n_test = _positive_int(n_test, "n_test")
    if n_test >= labels.shape[0]:
        raise ValueError(f"n_test must be < {labels.shape[0]} (the sample's size), got {n_test}")
    x, y = _images(images, dtype), labels.astype(np.int64)
    cut = labels.shape[0] - n_test
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])
