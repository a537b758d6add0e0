"""Save and load a :class:`cnn_ext.Network` as one ``.npz`` file, without pickle.

File layout (``numpy.savez``, read back with ``allow_pickle=False``):

- ``__cnn_ext__``: a 0-d string array holding JSON ``{"format": "cnn_ext.network", "version": 1,
  "layers": [[class_name, config], ...]}``, where ``config`` is the layer's ``get_config()``;
- ``"{i}.{param_name}"``: each parameter array of layer ``i``, as ``Network.parameters()`` names it, and each
  buffer (BatchNorm's running statistics), as ``Network.buffers()`` names it.

Loading checks before it spends: the architecture JSON first (size and nesting capped), then every entry's name,
dtype and shape from its ``.npy`` header (and the zip's recorded sizes) against the parameters the
architecture implies, and only then reads the data, in chunks, into the new parameters. Layers are rebuilt as
``LAYER_TYPES[class_name](**config)``; Conv2D and Dense without drawing the initial weights the file replaces.
The round trip is exact (bit for bit). Any file that is not such a network, or does not match what its
architecture builds, raises ``ValueError`` naming the file and the entry; it costs at most about the memory
the architecture implies.
"""
import contextlib
import json
import math
import os
import re
import struct
import zipfile
import zlib
from typing import Any, BinaryIO, Dict, Union, cast

import numpy as np

from .layers import LAYER_TYPES
from .network import Network

__all__ = ["save", "load"]

_ARCH_KEY = "__cnn_ext__"
_FORMAT = "cnn_ext.network"
_VERSION = 1


def _architecture(network):
    layers = []
    for i, layer in enumerate(network.layers):
        name = type(layer).__name__
        if LAYER_TYPES.get(name) is not type(layer):
            raise TypeError(f"save: layer {i} ({layer!r}) is a {name} that is not in LAYER_TYPES; "
                            f"register its class with cnn_ext.register_layer so that load can rebuild it")
        get_config = getattr(layer, "get_config", None)
        if not callable(get_config):
            raise TypeError(f"save: layer {i} ({layer!r}) has no get_config()")
        if not getattr(layer, "built", True):
            raise ValueError(f"save: layer {i} ({layer!r}) has not inferred its sizes yet, so it has no weights to "
                             f"save; run a forward pass or summary(input_shape) first")
        layers.append([name, get_config()])
    try:
        return json.dumps({"format": _FORMAT, "version": _VERSION, "layers": layers})
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save: a layer's get_config() is not JSON-serialisable: {exc}") from None


def save(network: Network, path: Union[str, "os.PathLike[str]", BinaryIO]) -> Union[str, BinaryIO]:
    """Write ``network``'s architecture and parameters to ``path`` (an ``.npz`` file).

    Parameters
    ----------
    network : Network
        Every layer's class must be in :data:`cnn_ext.LAYER_TYPES` and have ``get_config()``.
    path : str, os.PathLike or a binary file object
        ``.npz`` is appended to a name when missing, as :func:`numpy.savez` does; a file object (open for
        writing in binary mode, e.g. ``io.BytesIO``) is written as it is.

    Returns
    -------
    path : str or the file object
        The file written.
    """
    if not isinstance(network, Network):
        raise TypeError(f"save expects a cnn_ext.Network, got {type(network).__name__}")
    arrays: Dict[str, Any] = {_ARCH_KEY: np.array(_architecture(network))}
    for name, _, arr in network.parameters():
        arrays[name] = np.asarray(arr)
    for name, arr in network.buffers():
        arrays[name] = np.asarray(arr)
    target: Union[str, BinaryIO]
    if hasattr(path, "write"):
        target = cast(BinaryIO, path)
    else:
        target = _fspath(path, "save")
        if not target.endswith(".npz"):
            target += ".npz"
    np.savez(target, **arrays)
    return target


def _fspath(path, what) -> str:
    """A file name as str, or TypeError naming the argument."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{what}: path must be a file name (str or os.PathLike) or a binary file object, got "
                        f"{type(path).__name__}") from None
    return path.decode() if isinstance(path, bytes) else path


# ----------------------------------------------------------------------------------------------
# load: every check before the memory it would cost
# ----------------------------------------------------------------------------------------------

_MAX_JSON_CHARS = 1 << 20   # an architecture of thousands of layers is ~100 KB of JSON
_MAX_JSON_DEPTH = 32        # ours nests 6 deep (padding ((top, bottom), (left, right)) inside a layer's config)
_MAX_HEADER = 10_000        # numpy.load's own cap on a .npy header
_MAX_DEFLATE_RATIO = 1032   # deflate cannot expand a byte into more than 1032 (RFC 1951: 258 bytes per 2 bits)
_CHUNK = 1 << 20
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
# What a corrupt or crafted archive raises from zipfile, zlib, numpy.lib.format (the header is a Python literal
# read by ast.literal_eval) and json; RuntimeError covers zipfile's encrypted members, NotImplementedError's
# unknown compression methods and RecursionError.
_CORRUPT = (ValueError, TypeError, KeyError, IndexError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
            struct.error, RuntimeError, SyntaxError, OverflowError, UnicodeError)


class _Refused(ValueError):
    """A file load() refuses; load() adds the file's name to the message."""


@contextlib.contextmanager
def _reading(key):
    """Whatever a corrupt member raises while it is read, as _Refused naming the entry."""
    try:
        yield
    except _Refused:
        raise
    except _CORRUPT as exc:
        raise _Refused(f"not a readable cnn_ext network file: entry {key!r}: {type(exc).__name__}: {exc}") from None


class _Entry:
    """One ``.npy`` member of the archive: its ZipInfo and, once read, what its header declares."""

    __slots__ = ("key", "info", "shape", "fortran", "dtype", "offset")

    def __init__(self, key, info):
        self.key, self.info = key, info


def _entries(zf, size):
    """{key: _Entry}, names and sizes checked against the zip's own records: no member is read."""
    entries = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise _Refused(f"entry {info.filename!r} is not a NumPy array (.npy)")
        key = info.filename[:-4]
        if key in entries:
            raise _Refused(f"entry {key!r} appears more than once in the archive")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
            raise _Refused(f"entry {key!r} is encrypted or compressed by method {info.compress_type}, not stored "
                           f"or deflated as numpy.savez writes")
        if info.header_offset + info.compress_size > size:
            raise _Refused(f"entry {key!r} claims {info.compress_size} bytes past the end of the file ({size} bytes)")
        ratio = _MAX_DEFLATE_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1
        if info.file_size > ratio * info.compress_size:
            raise _Refused(f"entry {key!r} claims {info.file_size} bytes from {info.compress_size} stored ones, more "
                           f"than its compression can give")
        entries[key] = _Entry(key, info)
    return entries


def _read_header(zf, entry):
    """Fill in ``entry`` from its .npy header (shape, order, dtype, where the data starts); no data is read."""
    with _reading(entry.key), zf.open(entry.info) as fp:
        version = np.lib.format.read_magic(fp)
        if version not in ((1, 0), (2, 0)):
            raise _Refused(f"entry {entry.key!r} has .npy format version {version}, not 1.0 or 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        entry.shape, entry.fortran, entry.dtype = read(fp, max_header_size=_MAX_HEADER)
        entry.offset = fp.tell()
    if entry.dtype.hasobject:
        raise _Refused(f"entry {entry.key!r} holds Python objects (dtype {entry.dtype}), which load never unpickles")
    nbytes = math.prod(entry.shape) * entry.dtype.itemsize
    if entry.info.file_size != entry.offset + nbytes:
        raise _Refused(f"entry {entry.key!r}: its header declares shape {entry.shape} of {entry.dtype} ({nbytes} "
                       f"bytes) but the archive holds {entry.info.file_size - entry.offset} bytes of data")


def _read_data(zf, entry):
    """The entry's array in C order, read in chunks straight into its own memory (no copy of the whole file)."""
    with _reading(entry.key):
        try:
            out = np.empty(entry.shape[::-1] if entry.fortran else entry.shape, entry.dtype)
        except MemoryError:
            raise _Refused(f"entry {entry.key!r} of shape {entry.shape} does not fit in memory") from None
        view = memoryview(out.reshape(-1).view(np.uint8))
        with zf.open(entry.info) as fp:
            fp.read(entry.offset)
            pos = 0
            while pos < len(view):
                chunk = fp.read(min(_CHUNK, len(view) - pos))
                if not chunk:
                    raise _Refused(f"entry {entry.key!r} is truncated after {pos} of {len(view)} bytes")
                view[pos:pos + len(chunk)] = chunk
                pos += len(chunk)
            if fp.read(1):  # reading up to the end is also what makes zipfile check the CRC
                raise _Refused(f"entry {entry.key!r} holds more data than its header declares")
    return np.ascontiguousarray(out.T) if entry.fortran else out


def _json_depth(text):
    """Deepest nesting of ``[`` and ``{`` in JSON text, strings skipped (json.loads recurses once per level)."""
    codes = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-32-le"), np.uint32)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int64) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _layers_spec(zf, entries):
    """The architecture's list of ``[class_name, config]``: read and checked before anything else."""
    entry = entries.pop(_ARCH_KEY, None)
    if entry is None:
        raise _Refused(f"there is no {_ARCH_KEY!r} entry: not a file written by cnn_ext.save")
    _read_header(zf, entry)
    if entry.shape != () or entry.dtype.kind != "U" or entry.dtype.itemsize > 4 * _MAX_JSON_CHARS:
        raise _Refused(f"entry {_ARCH_KEY!r} is not the architecture string of at most {_MAX_JSON_CHARS} "
                       f"characters: shape {entry.shape}, dtype {entry.dtype}")
    text = str(_read_data(zf, entry)[()])
    if _json_depth(text) > _MAX_JSON_DEPTH:
        raise _Refused(f"entry {_ARCH_KEY!r}: the architecture is not valid JSON: nested more than "
                       f"{_MAX_JSON_DEPTH} levels deep")
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Refused(f"entry {_ARCH_KEY!r}: the architecture is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("format") != _FORMAT or not isinstance(spec.get("layers"), list):
        raise _Refused(f"entry {_ARCH_KEY!r}: the architecture is not a {_FORMAT} description")
    if spec.get("version") != _VERSION:
        raise _Refused(f"format version {spec.get('version')!r}; this cnn_ext reads version {_VERSION}")
    if not spec["layers"]:
        raise _Refused("it describes a network with no layers")
    return spec["layers"]


def _build(i, entry):
    """Layer ``i`` and ``{param_name: (shape, dtype)}``; built by ``Layer.without_weights`` when the class has
    it (Conv2D and Dense draw and allocate no weight then), else ``cls(**cfg)`` as custom layers always were."""
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict)):
        raise _Refused(f"layer {i} is {entry!r}, expected [class_name, config]")
    name, cfg = entry
    cls = LAYER_TYPES.get(name)
    if cls is None:
        raise _Refused(f"layer {i} has unknown type {name!r}; known types: {', '.join(sorted(LAYER_TYPES))} "
                       f"(register custom layers with register_layer first)")
    try:
        without_weights = getattr(cls, "without_weights", None)
        layer = without_weights(cfg) if without_weights is not None else cls(**cfg)
        shapes = layer.param_shapes() if hasattr(layer, "param_shapes") else \
            {p: (arr.shape, arr.dtype) for p, _, arr in (layer.parameters() if hasattr(layer, "parameters") else [])}
        # buffers (BatchNorm's running statistics) are read into the arrays the layer built
        shapes.update({b: (arr.shape, arr.dtype) for b, arr in
                       (layer.buffers() if callable(getattr(layer, "buffers", None)) else [])})
    except (TypeError, ValueError, NotImplementedError, OverflowError) as exc:
        raise _Refused(f"layer {i} ({name}) cannot be built from {cfg!r}: {exc}") from None
    except MemoryError as exc:
        raise _Refused(f"layer {i} ({name}) built from {cfg!r} needs more memory than there is ({exc}); the file "
                       f"is corrupt or not what it claims") from None
    if not getattr(layer, "built", True):
        raise _Refused(f"layer {i} ({name}) built from {cfg!r} has no input size: not a network save() wrote")
    return layer, {p: (tuple(shape), np.dtype(dtype)) for p, (shape, dtype) in shapes.items()}


def _load(zf, size):
    entries = _entries(zf, size)
    spec = _layers_spec(zf, entries)
    # Custom layers may draw initial values before ours overwrite them: keep the caller's random state untouched.
    rng_state = np.random.get_state()
    try:
        built = [_build(i, entry) for i, entry in enumerate(spec)]
    finally:
        np.random.set_state(rng_state)
    expected = {f"{i}.{p}": (layer, p, shape, dtype)
                for i, (layer, params) in enumerate(built) for p, (shape, dtype) in params.items()}
    missing = [key for key in expected if key not in entries]
    extra = sorted(set(entries) - set(expected))
    if missing or extra:
        raise _Refused(f"does not match its architecture: missing parameters {missing}, unexpected arrays {extra}")
    for key, (_, _, shape, dtype) in expected.items():
        entry = entries[key]
        _read_header(zf, entry)
        if entry.shape != shape or entry.dtype != dtype:
            raise _Refused(f"parameter {key} is saved with shape {entry.shape} and dtype {entry.dtype}, but the "
                           f"architecture builds shape {shape} and dtype {dtype}")
    arrays = {key: _read_data(zf, entries[key]) for key in expected}  # every check passed: now the data
    for i, (layer, params) in enumerate(built):
        weights = {p: arrays[f"{i}.{p}"] for p in params}
        for b, arr in (layer.buffers() if callable(getattr(layer, "buffers", None)) else []):
            arr[...] = weights.pop(b)  # buffers in place: the layer holds them
        if hasattr(layer, "set_weights"):
            layer.set_weights(weights, copy=False)
        else:
            for p, _, arr in layer.parameters():
                arr[...] = weights[p]
    return Network([layer for layer, _ in built])


def load(path: Union[str, "os.PathLike[str]", BinaryIO]) -> Network:
    """Rebuild the network saved by :func:`save` at ``path``.

    Every check comes before the memory it costs: the architecture (at most 1 MiB of JSON, nested at most 32
    deep) first, then each entry's name, dtype and shape from its ``.npy`` header against the parameters the
    architecture implies, and only then the array data, read straight into the new parameters. Conv2D and
    Dense are built without drawing the initial weights the file's replace (``Layer.without_weights``).

    Parameters
    ----------
    path : str, os.PathLike or a binary file object (seekable, as :func:`numpy.load` reads)

    Returns
    -------
    network : Network
        Same layer types, configurations and parameter values (bit for bit) as the saved one.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        Naming the file and the entry, when the file is corrupt or truncated, not written by :func:`save`, names
        an unknown layer type, or its arrays do not match the parameters its architecture builds (missing, extra,
        repeated, wrong shape or dtype, Python objects); nothing else changes then.
    """
    f: BinaryIO
    if hasattr(path, "read"):
        f, own = cast(BinaryIO, path), False
    else:
        path = _fspath(path, "load")
        f, own = open(path, "rb"), True
    try:
        with _reading("(the zip directory)"):
            size = f.seek(0, os.SEEK_END)
            zf = zipfile.ZipFile(f)
        with zf:
            return _load(zf, size)
    except _Refused as exc:
        raise ValueError(f"load: {path!r}: {exc}") from None
    finally:
        if own:
            f.close()
