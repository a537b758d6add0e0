"""Scaling out: synchronous data-parallel training over MPI (mpi4py) and batch inference on Dask.

No transport of our own: MPI collectives through mpi4py (as Horovod does) and Dask distributed's scheduler.
Neither is needed to import cnn_ext; the functions that need one raise ImportError naming the pip command.

Training, one process per rank (``mpiexec -n 4 python train.py``)::

    from mpi4py import MPI
    history = cnn_ext.fit(net, X, y, epochs=5, batch_size=32, optimizer=Adam(1e-3), seed=0, comm=MPI.COMM_WORLD)

Every rank holds the same ``X, y`` and the same seed. Before the first step ``fit`` checks that all ranks built the
same network (layer types, parameter shapes and dtypes) and the same data shapes, raising the same
:class:`NetworkMismatchError` naming the first difference on every rank, then copies rank 0's parameters to all
(:func:`broadcast_parameters`). Each epoch's shuffled order is cut into global batches of ``batch_size * R``
samples (R ranks) and rank r takes the r-th slice of each; the last, smaller batch is split as evenly as possible
(a rank may get none). After each backward the gradients go through :func:`allreduce_gradients`, so every rank
takes the step one process would take on the whole global batch: ``fit(comm=, batch_size=b)`` on R ranks gives
the parameters of ``fit(batch_size=R * b)`` in one process, up to the order of the sums. Loss and accuracy are
summed over ranks; only rank 0 prints, shows a progress bar and calls ``on_epoch_end`` (so callbacks that write
files write once; its stop decision is broadcast). An exception on one rank inside ``fit`` prints its traceback
and calls ``comm.Abort`` so that the others do not wait forever in a collective.

Which combination is the global gradient. A gradient that one process computes on a batch of n samples is
``n^-p Σ_samples h(sample)`` for some power p: p = 1 for an exact gradient of a mean loss (every gradient on the
modern path), but the tutorial's layers return some gradients as batch means of dE_dY (Conv2D ``dK``/``dB``, Dense
``dB``) and others as batch sums (Dense ``dW``), and dE_dY of a mean loss already carries one 1/n; so with
``softmax_cross_entropy`` Dense ``dW`` has p = 1 and the batch means p = 2. The global gradient over ranks with
n_r samples (N in all) is ``Σ_r (n_r / N)^p g_r``. :func:`allreduce_gradients` takes p = 1 by default (the plain
mean over ranks for equal batches); :func:`batch_powers` measures p of every gradient of a network and a loss
(a few samples forward and backward once, then twice over: a mean gives the same gradient, a sum twice it), and ``fit``
passes those powers and the local sample counts, which makes the statement above exact for every layer
convention and for the last, uneven batch too.

Large gradients travel in one buffer per dtype and step: packed (already weighted) into one contiguous array,
``Allreduce``-d in place, and handed back as views of that buffer.

Inference on Dask: :func:`predict_dask` runs a trained network over a dask array chunked along the batch axis on a
distributed cluster; the network is scattered to every worker once.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .losses import exact
from .network import eval_mode

if TYPE_CHECKING:
    from typing import TypeVar

    from ._typing import FloatArray, LossFunction
    from .network import Network

    # allreduce_gradients hands back the list it was given
    _Grads = TypeVar("_Grads", bound=Sequence[MutableMapping[str, Any]])

__all__ = ["NetworkMismatchError", "abort_on_error", "allreduce_gradients", "batch_powers", "broadcast_parameters",
           "check_same_network", "predict_dask"]

_PIP = {"mpi4py": 'pip install mpi4py mpich  (or: pip install "cnn_ext[mpi]")',
        "dask": 'pip install "dask[distributed]"  (or: pip install "cnn_ext[dask]")'}


def _mpi():
    """The ``mpi4py.MPI`` module, or ImportError with the command that installs it."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"cnn_ext.distributed needs mpi4py and an MPI library for training over MPI: "
                          f"{_PIP['mpi4py']}") from exc
    return MPI


class NetworkMismatchError(ValueError):
    """The ranks of a communicator hold different networks or data shapes (raised on every rank)."""


# -- the same network on every rank ---------------------------------------------------------------------------
def _signature(network, data=None):
    """[(what, description)] of the layers, parameter shapes and dtypes (and the data shapes), in order."""
    sig: list[tuple[str, object]] = [("number of layers", len(network.layers))]  # descriptions: ints and strings
    for i, layer in enumerate(network.layers):
        sig.append((f"layer {i} type", type(layer).__name__))
        params = layer.parameters() if callable(getattr(layer, "parameters", None)) else []
        for name, key, p in params:
            sig.append((f"layer {i} ({type(layer).__name__}) parameter {name}",
                        f"shape {tuple(np.shape(p))}, dtype {np.asarray(p).dtype}, gradient {key!r}"))
    for name, value in (data or {}).items():
        sig.append((name, value))
    return sig


def check_same_network(network: Network, comm: Any, data: Mapping[str, object] | None = None) -> None:
    """Raise :class:`NetworkMismatchError` on every rank unless all ranks have the same network.

    Compares layer types, parameter names, shapes, dtypes and gradient keys (and the optional ``data`` dict, e.g.
    the training data's shapes) with one ``allgather``; the message names the first difference and the ranks.
    """
    mine = _signature(network, data)
    everyone = comm.allgather(mine)
    root = everyone[0]
    for rank, sig in enumerate(everyone[1:], start=1):
        if sig == root:
            continue
        for j in range(max(len(sig), len(root))):
            a = root[j] if j < len(root) else ("(nothing)", "(nothing)")
            b = sig[j] if j < len(sig) else ("(nothing)", "(nothing)")
            if a != b:
                what = a[0] if a[0] == b[0] else f"{a[0]} / {b[0]}"
                raise NetworkMismatchError(f"the ranks hold different networks or data: {what}: rank 0 has "
                                           f"{a[1]}, rank {rank} has {b[1]}")


# -- parameters and gradients through one buffer ----------------------------------------------------------------
def _pack(arrays, weights=None):
    """{dtype: (buffer, [(index, offset, size)])}: the arrays raveled into one contiguous buffer per dtype, each
    multiplied by its weight on the way."""
    groups = {}
    for j, a in enumerate(arrays):
        groups.setdefault(a.dtype, []).append(j)
    packed = {}
    for dtype, members in groups.items():
        buf = np.empty(sum(arrays[j].size for j in members), dtype=dtype)
        slots, offset = [], 0
        for j in members:
            a, n = arrays[j], arrays[j].size
            out = buf[offset:offset + n]
            if weights is None or weights[j] == 1.0:
                out[...] = a.reshape(-1)
            else:
                np.multiply(a.reshape(-1), weights[j], out=out, casting="same_kind")
            slots.append((j, offset, n))
            offset += n
        packed[dtype] = (buf, slots)
    return packed


def broadcast_parameters(network: Network, comm: Any, root: int = 0) -> None:
    """Copy rank ``root``'s parameters into every rank's network, in place (the arrays stay the same objects).

    Checks first that all ranks hold the same network (:func:`check_same_network`); one ``Bcast`` per dtype.
    """
    _mpi()
    check_same_network(network, comm)
    params = [p for _, _, p in network.parameters()]
    for buf, slots in _pack(params).values():
        comm.Bcast(buf, root=root)
        for j, offset, n in slots:
            params[j][...] = buf[offset:offset + n].reshape(params[j].shape)


def allreduce_gradients(grads: _Grads, comm: Any, *, n_local: int | None = None, n_total: int | None = None,
                        powers: Mapping[tuple[int, str], int] | None = None) -> _Grads:
    """Combine the per-layer gradient dicts of all ranks into the global batch's gradients, in place.

    Parameters
    ----------
    grads : list of dict
        ``Network.backward``'s result on this rank's batch. Every key but ``"dX"`` is reduced; all ranks must
        hold the same keys and shapes (``fit`` checks the networks before the first step).
    comm : mpi4py communicator
    n_local : int, optional
        This rank's number of samples in the step; without it every rank is taken to have the same number.
    n_total : int, optional
        The step's samples over all ranks (computed with one more ``allreduce`` when only ``n_local`` is given).
    powers : dict, optional
        ``{(layer_index, grad_key): p}`` from :func:`batch_powers`; missing keys take p = 1.

    Returns
    -------
    grads : the same list; each reduced entry is replaced by ``Σ_r (n_r / N)^p g_r`` — with the defaults the mean
    over ranks, the right combination for exact gradients of a mean loss on equal batches. The new arrays are
    views of one buffer per dtype (a single ``Allreduce`` each).
    """
    MPI = _mpi()
    if n_local is None:
        share = 1.0 / comm.Get_size()
    else:
        if n_total is None:
            n_total = comm.allreduce(int(n_local), op=MPI.SUM)
        share = n_local / n_total if n_total else 0.0
    entries, arrays, weights = [], [], []
    for i, g in enumerate(grads):
        for key in sorted(k for k in g if k != "dX"):
            entries.append((i, key))
            arrays.append(np.asarray(g[key]))
            p = 1 if powers is None else powers.get((i, key), 1)
            weights.append(share ** p)
    for buf, slots in _pack(arrays, weights).values():
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        for j, offset, n in slots:
            i, key = entries[j]
            grads[i][key] = buf[offset:offset + n].reshape(arrays[j].shape)
    return grads


def batch_powers(network: Network, x: ArrayLike, y: ArrayLike, loss: str | LossFunction = "softmax_cross_entropy", *,
                 exact_gradients: bool = False) -> dict[tuple[int, str], int]:
    """``{(layer_index, grad_key): p}``: how each gradient of ``network`` under ``loss`` scales with the batch.

    ``p`` is the power of 1/n in a gradient over n samples: the loss's (1 for a mean over the batch, 0 for a sum)
    plus the layer's (1 when it returns a batch mean of dE_dY, 0 for a batch sum). It is measured on the first
    up to 8 samples of ``x, y`` (several, so that no gradient is zero by chance, as behind a dead ReLU): one
    forward and backward on them, then on them twice (twice the gradient is a sum, the same gradient a mean).
    Overwrites the layers' forward caches. ``exact_gradients``: measure the layers under the exact rule (what
    ``fit`` trains with; see :func:`cnn_ext.exact`) instead of the tutorial's.
    """
    from .training import loss_function

    loss_fn = loss_function(loss)
    x, y = np.asarray(x), np.asarray(y)
    # in evaluation mode: a training-mode pass would move BatchNorm's running statistics and Dropout's stream
    with eval_mode(network):
        return _measure_powers(network, x[:8], y[:8], loss_fn, exact_gradients)


def _measure_powers(network, x1, y1, loss_fn, exact_gradients):
    x2, y2 = np.concatenate([x1, x1]), np.concatenate([y1, y1])
    pred1 = network.forward(x1)
    d1 = np.asarray(loss_fn(pred1, y1)[1])
    d2 = np.asarray(loss_fn(network.forward(x2), y2)[1])
    # the rows' total over the samples twice: the same for a mean loss (each row halves), twice for a sum
    p_loss = _power(np.abs(d2).sum(dtype=np.float64), np.abs(d1).sum(dtype=np.float64), "the loss's dE_dY")
    # the layers' own power, measured with the same dE_dY row given once and twice
    row = d1 if np.any(d1) else np.ones_like(d1)
    network.forward(x1)
    mark = exact if exact_gradients else np.asarray
    g1 = network.backward(mark(row))
    network.forward(x2)
    g2 = network.backward(mark(np.concatenate([row, row])))
    powers = {}
    for i, (a, b) in enumerate(zip(g1, g2)):
        for key in a:
            if key != "dX":
                powers[(i, key)] = p_loss + _power(np.linalg.norm(b[key]), np.linalg.norm(a[key]),
                                                   f"layer {i} ({network.layers[i]!r}) {key}", default=1)
    return powers


def _power(twice, once, what, default=None):
    """1 when ``twice ≈ once`` (a mean), 0 when ``twice ≈ 2 once`` (a sum)."""
    if once == 0 or twice == 0:
        if default is None:
            raise ValueError(f"batch_powers: {what} is zero on the probe sample; cannot tell a mean from a sum")
        return default  # a zero gradient scales any way; its reduction does not matter on this sample
    ratio = twice / once  # 1 or 2 up to rounding (float32 sums of the samples twice round differently)
    if abs(ratio - 1.0) < 1e-3:
        return 1
    if abs(ratio - 2.0) < 1e-3:
        return 0
    raise ValueError(f"batch_powers: {what} grows by {ratio:.6g} from one sample to the same sample twice: neither "
                     f"a batch mean (1) nor a batch sum (2)")


# -- failure without hanging ---------------------------------------------------------------------------------
@contextmanager
def abort_on_error(comm: Any, errorcode: int = 1) -> Iterator[None]:
    """Turn an exception on one rank into ``comm.Abort(errorcode)`` (the whole job ends) instead of leaving the
    other ranks waiting in a collective. :class:`NetworkMismatchError` is raised on every rank alike, so it
    propagates as usual; so does everything in a one-rank communicator."""
    try:
        yield
    except NetworkMismatchError:
        raise
    except BaseException:
        if comm.Get_size() > 1:
            sys.stderr.write(f"cnn_ext.distributed: rank {comm.Get_rank()} of {comm.Get_size()} failed; "
                             f"aborting the job:\n{traceback.format_exc()}")
            sys.stderr.flush()
            comm.Abort(errorcode)
        raise


# -- the hooks of fit(comm=) -------------------------------------------------------------------------------------
class _Part:
    """One rank's share of ``cnn_ext.fit``: its slice of each batch, the reduction of gradients and metrics."""

    def __init__(self, comm: Any, powers: Mapping[tuple[int, str], int]) -> None:
        self.comm, self.powers = comm, powers
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0

    def local(self, idx: NDArray[np.integer]) -> NDArray[np.integer]:
        """This rank's slice of a global batch (contiguous, sizes differing by at most one)."""
        n = len(idx)
        return idx[self.rank * n // self.size:(self.rank + 1) * n // self.size]

    def loss(self, network: Network, loss_fn: LossFunction, xb: NDArray[Any],
             yb: NDArray[Any]) -> tuple[FloatArray, float, NDArray[Any]]:
        """(prediction, loss value, dE_dY) of this rank's slice; an empty slice contributes zeros."""
        pred = network.forward(xb)
        if len(xb):
            value, dE_dY = loss_fn(pred, yb)
        else:  # the losses reject empty batches; the layers give zero gradients for one
            value, dE_dY = 0.0, np.zeros_like(pred)
        return pred, value, dE_dY

    def reduce(self, grads: list[dict[str, FloatArray]], n_local: int, n_total: int) -> list[dict[str, FloatArray]]:
        """The gradients of the global batch, on every rank."""
        return allreduce_gradients(grads, self.comm, n_local=n_local, n_total=n_total, powers=self.powers)

    def totals(self, total_loss: float, correct: int | None) -> tuple[float, int | None]:
        """Summed over ranks, in rank order (the same floats on every rank)."""
        parts = self.comm.allgather((float(total_loss), correct))
        loss = sum(p[0] for p in parts)
        counts = [p[1] for p in parts]
        return loss, (None if any(c is None for c in counts) else sum(counts))

    def evaluate(self, evaluate: Callable[..., tuple[float, float | None]], network: Network, X: NDArray[Any],
                 y: NDArray[Any], loss_fn: LossFunction, batch_size: int) -> tuple[float, float | None]:
        """``evaluate`` on this rank's slice of the validation data, combined over ranks weighted by size."""
        idx = self.local(np.arange(X.shape[0]))
        part = evaluate(network, X[idx], y[idx], loss_fn, batch_size) if len(idx) else (0.0, 0.0)
        parts = self.comm.allgather((len(idx), part))
        n = sum(k for k, _ in parts)
        loss = sum(k * p[0] for k, p in parts) / n
        accs = [(k, p[1]) for k, p in parts if k]
        return loss, (None if any(a is None for _, a in accs) else sum(k * a for k, a in accs) / n)

    def decide(self, stop: bool) -> bool:
        """Rank 0's decision, on every rank."""
        return bool(self.comm.bcast(bool(stop), root=0))


def _fit(comm, train, network, X, y, loss_fn):
    """``train(part)`` on every rank of ``comm`` after the checks and the broadcast; aborts the job on an error."""
    _mpi()
    with abort_on_error(comm):
        data = {"X": f"shape {X.shape}, dtype {X.dtype}", "y": f"shape {y.shape}, dtype {y.dtype}"}
        check_same_network(network, comm, data)
        broadcast_parameters(network, comm)
        powers = batch_powers(network, X, y, loss_fn, exact_gradients=True)  # fit's rule
        return train(_Part(comm, powers))


# -- Dask ------------------------------------------------------------------------------------------------------
def _predict_block(network, block, batch_size):
    return network.predict(np.asarray(block), batch_size=batch_size)


def predict_dask(network: Network, x: Any, *, client: Any = None, batch_size: int = 256) -> Any:
    """``network.predict`` over a dask array on a Dask distributed cluster, lazily.

    Parameters
    ----------
    network : Network
        Scattered once to every worker (``client.scatter(..., broadcast=True)``), not once per chunk.
    x : dask.array.Array, shape (N, ...)
        Chunked along the batch axis (other axes are rechunked to one chunk each).
    client : distributed.Client, optional
        Default: the current client (``distributed.get_client()``).
    batch_size : int, default 256
        Passed to ``network.predict`` inside each chunk.

    Returns
    -------
    y : dask.array.Array, shape (N, ...) of the network's output, chunked like ``x`` along the batch axis;
    ``y.compute()`` is bit for bit ``network.predict(chunk, batch_size)`` of each chunk in one process, and equals
    ``network.predict(x.compute())`` up to the order of the sums (BLAS may sum the products of another number of
    rows in another order).

    Notes
    -----
    A worker's threads share its copy of the network: ``predict`` returns new arrays computed from the input and
    the parameters only (the layers' forward caches it overwrites are not read by it), so chunks may run at once.
    """
    try:
        import dask
        import dask.array as da
        from distributed import get_client
    except ImportError as exc:
        raise ImportError(f"predict_dask needs Dask distributed: {_PIP['dask']}") from exc
    if not isinstance(x, da.Array) or x.ndim == 0:
        raise TypeError(f"predict_dask: x must be a dask array with a batch axis, got {type(x).__name__}")
    client = client if client is not None else get_client()
    if x.ndim > 1 and any(len(c) > 1 for c in x.chunks[1:]):
        x = x.rechunk({i: -1 for i in range(1, x.ndim)})
    # the output of one sample gives the shape and dtype of every chunk's result
    sample = network.predict(np.zeros((1,) + x.shape[1:], dtype=x.dtype))
    shipped = client.scatter(network, broadcast=True, hash=False)
    blocks = x.to_delayed().reshape(-1)
    parts = [da.from_delayed(dask.delayed(_predict_block)(shipped, block, batch_size),
                             shape=(n,) + sample.shape[1:], dtype=sample.dtype)
             for block, n in zip(blocks, x.chunks[0])]
    return da.concatenate(parts, axis=0)
