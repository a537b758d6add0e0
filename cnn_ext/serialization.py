"""Save and load a :class:`cnn_ext.Network` as one ``.npz`` file, without pickle.

File layout (``numpy.savez``, read back with ``allow_pickle=False``):

- ``__cnn_ext__``: a 0-d string array holding JSON ``{"format": "cnn_ext.network", "version": 1,
  "layers": [[class_name, config], ...]}``, where ``config`` is the layer's ``get_config()``;
- ``"{i}.{param_name}"``: each parameter array of layer ``i``, as ``Network.parameters()`` names it.

Loading rebuilds every layer as ``LAYER_TYPES[class_name](**config)`` and copies the saved arrays into its
parameters, checking names, shapes and dtypes: the round trip is exact (bit for bit). Any file that is not
such a network, or does not match what its architecture builds, raises ``ValueError`` saying what is wrong.
"""
import json
import os
import zipfile

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
        layers.append([name, get_config()])
    try:
        return json.dumps({"format": _FORMAT, "version": _VERSION, "layers": layers})
    except (TypeError, ValueError) as exc:
        raise TypeError(f"save: a layer's get_config() is not JSON-serialisable: {exc}") from None


def save(network, path):
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
    arrays = {_ARCH_KEY: np.array(_architecture(network))}
    for name, _, arr in network.parameters():
        arrays[name] = np.asarray(arr)
    if not hasattr(path, "write"):
        path = _fspath(path, "save")
        if not path.endswith(".npz"):
            path += ".npz"
    np.savez(path, **arrays)
    return path


def _fspath(path, what):
    """A file name as str, or TypeError naming the argument."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{what}: path must be a file name (str or os.PathLike) or a binary file object, got "
                        f"{type(path).__name__}") from None
    return path.decode() if isinstance(path, bytes) else path


def _read(path):
    """{key: array} from the file, or ValueError for anything that is not a readable pickle-free .npz."""
    what = f"load: {path!r} is not a readable cnn_ext network file"
    errors = (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except errors as exc:
        raise ValueError(f"{what}: {exc}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"{what}: it holds a single array, not an .npz archive")
    try:
        with data:
            arrays = {key: data[key] for key in data.files}
    except errors as exc:
        raise ValueError(f"{what}: {exc}") from None
    for key, value in arrays.items():
        if not isinstance(value, np.ndarray):  # NpzFile hands back raw bytes for a member that is not .npy
            raise ValueError(f"{what}: entry {key!r} is not a NumPy array")
    return arrays


def _layers_spec(arrays, path):
    if _ARCH_KEY not in arrays:
        raise ValueError(f"load: {path!r} has no {_ARCH_KEY!r} entry: not a file written by cnn_ext.save")
    raw = arrays.pop(_ARCH_KEY)
    try:
        spec = json.loads(str(raw[()]))
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"load: {path!r}: the architecture is not valid JSON: {exc}") from None
    if not isinstance(spec, dict) or spec.get("format") != _FORMAT or not isinstance(spec.get("layers"), list):
        raise ValueError(f"load: {path!r}: the architecture is not a {_FORMAT} description")
    if spec.get("version") != _VERSION:
        raise ValueError(f"load: {path!r} has format version {spec.get('version')!r}; this cnn_ext reads "
                         f"version {_VERSION}")
    return spec["layers"]


def _build(i, entry, path):
    if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], dict)):
        raise ValueError(f"load: {path!r}: layer {i} is {entry!r}, expected [class_name, config]")
    name, cfg = entry
    cls = LAYER_TYPES.get(name)
    if cls is None:
        raise ValueError(f"load: {path!r}: layer {i} has unknown type {name!r}; known types: "
                         f"{', '.join(sorted(LAYER_TYPES))} (register custom layers with register_layer first)")
    try:
        return cls(**cfg)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"load: {path!r}: layer {i} ({name}) cannot be built from {cfg!r}: {exc}") from None
    except MemoryError as exc:  # a corrupt or crafted size (Dense(10**7, 10**7): 728 TiB of weights)
        raise ValueError(f"load: {path!r}: layer {i} ({name}) built from {cfg!r} needs more memory than there "
                         f"is ({exc}); the file is corrupt or not what it claims") from None


def load(path):
    """Rebuild the network saved by :func:`save` at ``path``.

    Parameters
    ----------
    path : str, os.PathLike or a binary file object (as :func:`numpy.load` reads)

    Returns
    -------
    network : Network
        Same layer types, configurations and parameter values (bit for bit) as the saved one.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file is corrupt, not written by :func:`save`, names an unknown layer type, or its arrays do not
        match the parameters its architecture builds (missing, extra, wrong shape or dtype).
    """
    if not hasattr(path, "read"):
        path = _fspath(path, "load")
    arrays = _read(path)
    spec = _layers_spec(arrays, path)
    if not spec:
        raise ValueError(f"load: {path!r} describes a network with no layers")
    # Layers draw initial values before ours overwrite them: keep the caller's global random state untouched.
    rng_state = np.random.get_state()
    try:
        network = Network([_build(i, entry, path) for i, entry in enumerate(spec)])
    finally:
        np.random.set_state(rng_state)
    expected = network.parameters()
    missing = [name for name, _, _ in expected if name not in arrays]
    extra = sorted(set(arrays) - {name for name, _, _ in expected})
    if missing or extra:
        raise ValueError(f"load: {path!r} does not match its architecture: missing parameters {missing}, "
                         f"unexpected arrays {extra}")
    for name, _, param in expected:
        saved = arrays[name]
        if saved.shape != param.shape or saved.dtype != param.dtype:
            raise ValueError(f"load: {path!r}: parameter {name} is saved with shape {saved.shape} and dtype "
                             f"{saved.dtype}, but the architecture builds shape {param.shape} and dtype {param.dtype}")
    for name, _, param in expected:
        param[...] = arrays[name]
    return network
