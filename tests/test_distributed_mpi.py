"""Data-parallel training over MPI (cnn_ext.distributed): each test runs ``mpiexec -n 2`` on a script it writes,
with a timeout, and compares what the ranks wrote with one process doing the same work on the whole batch."""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import SGD, Adam

RANKS = 2
TIMEOUT = 120

# the children run outside the checkout: from its root they would import the unbuilt source tree
_OUTSIDE = os.path.dirname(os.path.abspath(sys.executable))


def _mpiexec():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install mpi4py mpich)")
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec beside the interpreter or on PATH (pip install mpich)")
    return found


def run_mpi(tmp_path, body, n=RANKS, timeout=TIMEOUT):
    """Run ``body`` (Python source, after NETWORK and with ``comm``, ``rank``, ``out`` = tmp_path) on ``n`` ranks;
    (the finished process, its wall time in seconds)."""
    mpiexec = _mpiexec()
    script = tmp_path / "script.py"
    script.write_text("import sys\nimport numpy as np\nfrom mpi4py import MPI\nimport cnn_ext\n"
                      "comm = MPI.COMM_WORLD\nrank = comm.Get_rank()\n"
                      f"out = {str(tmp_path)!r}\n" + REPORT + NETWORK + textwrap.dedent(body))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(cnn_ext.__file__).parent.parent),
                                           os.environ.get("PYTHONPATH", "")]))
    return launch([mpiexec, "-n", str(n), sys.executable, str(script)], env, timeout)


def launch(args, env, timeout):
    """Run ``args`` (an mpiexec job) from outside the checkout; (the finished process, its wall time in seconds).
    A job still running after ``timeout`` seconds is killed whole and fails the test."""
    start = time.perf_counter()
    # a session of its own, so that a hung job is ended whole: mpiexec and every rank it started
    proc = subprocess.Popen(args, cwd=_OUTSIDE, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(args[:3])} did not finish within {timeout} s:\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), time.perf_counter() - start


REPORT = """
def report(text):  # not print: mpiexec interleaves the ranks' output
    with open(f"{out}/report_{rank}.txt", "a") as f:
        f.write(text + "\\n")
"""


def reports(tmp_path, n=RANKS):
    """What each of ``n`` ranks reported, by rank."""
    return [(tmp_path / f"report_{r}.txt").read_text() for r in range(n)]


NETWORK = """
def build(seed=0, n_out=3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return cnn_ext.Network([cnn_ext.Conv2D(1, 2, 3, rng=rng, dtype=dtype), cnn_ext.ReLU(), cnn_ext.Flatten(),
                            cnn_ext.Dense(2 * 4 * 4, 5, rng=rng, dtype=dtype), cnn_ext.ReLU(),
                            cnn_ext.Dense(5, n_out, rng=rng, dtype=dtype)])

def data(n=23):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 1, 6, 6)), rng.integers(0, 3, n)

CASES = (("sgd", 23), ("momentum", 19), ("adam", 19))

def optimizer(kind):
    return {"sgd": dict(learning_rate=0.05), "momentum": dict(optimizer=cnn_ext.SGD(0.05, momentum=0.9)),
            "adam": dict(optimizer=cnn_ext.Adam(0.01))}[kind]
"""
exec(NETWORK)  # the same network, data and optimisers in the reference runs here  # noqa: S102


def test_fit_over_ranks_equals_one_process_on_the_global_batch(tmp_path):
    """fit(comm=, batch_size=b) on 2 ranks == fit(batch_size=2b) in one process (float64, <= 1e-12), for plain
    SGD (Network.update on the exact gradient), momentum and Adam: 5 epochs of 4 global batches, 20 steps each.
    Batches of 2 x 3: 23 samples leave a last global batch of 5 (2 + 3 on the ranks), 19 samples one of 1 (rank 0
    gets none)."""
    proc, _ = run_mpi(tmp_path, """
    for kind, n in CASES:
        X, y = data(n)
        net = build(seed=rank)   # different initial values: fit broadcasts rank 0's
        h = cnn_ext.fit(net, X, y, epochs=5, batch_size=3, seed=7, progress=False, verbose=True, comm=comm,
                        validation_data=(X[:7], y[:7]), **optimizer(kind))
        np.savez(f"{out}/{kind}_{rank}.npz", *[p for _, _, p in net.parameters()], loss=h["loss"],
                 val_loss=h["val_loss"], val_accuracy=h["val_accuracy"], accuracy=h["accuracy"])
    """)
    assert proc.returncode == 0, proc.stderr
    # only rank 0 prints: one summary line per epoch and optimiser
    assert proc.stdout.count("epoch 1/5") == 3, proc.stdout
    for kind, n in CASES:
        X, y = data(n)
        net = build(seed=0)
        assert -(-n // 6) * 5 == 20  # steps taken
        h = cnn_ext.fit(net, X, y, epochs=5, batch_size=2 * 3, seed=7, progress=False, verbose=False,
                        validation_data=(X[:7], y[:7]), **optimizer(kind))
        ranks = [np.load(tmp_path / f"{kind}_{r}.npz") for r in range(RANKS)]
        for j, (_, _, p) in enumerate(net.parameters()):
            for r in ranks:
                np.testing.assert_allclose(r[f"arr_{j}"], p, rtol=0, atol=1e-12, err_msg=kind)
            np.testing.assert_array_equal(ranks[0][f"arr_{j}"], ranks[1][f"arr_{j}"])
        for key in ("loss", "val_loss", "val_accuracy", "accuracy"):
            np.testing.assert_allclose(ranks[0][key], h[key], rtol=1e-12, err_msg=f"{kind} {key}")


# the targets carry the sample index; the loss records the indices of each training batch, not those of the
# probe of batch_powers (samples 0-7, then 0-7 twice; training batches here have at most 6 samples) nor of the
# validation batches (indices from 10**6)
TRACKING = """
seen = []

def tagged(y, offset=0):
    t = np.zeros((len(y), 3))
    t[np.arange(len(y)), y] = 1
    return t + 1000.0 * (offset + np.arange(len(y)))[:, None]

def tracking_loss(pred, t):
    ids = np.rint(t.min(axis=1) / 1000).astype(np.int64)
    probe = np.array_equal(ids, np.arange(8)) or np.array_equal(ids, np.tile(np.arange(8), 2))
    if ids.max() < 10**6 and not probe:
        seen.append(ids)
    return cnn_ext.softmax_cross_entropy(pred, np.argmax(t, axis=1))
"""
exec(TRACKING)  # the same recording loss in the reference runs here  # noqa: S102


def test_fit_on_3_ranks_shards_uneven_data_like_one_process(tmp_path):
    """mpiexec -n 3, 2 samples per rank and step (global batches of 6) on 23 and 19 samples: in every epoch each
    sample is seen once (no sample twice, none left out), the last partial batch (5, resp. 1 samples) is split
    1 + 2 + 2, resp. 0 + 0 + 1, every rank takes the slice of one process's batch of 6, and the parameters and
    the metrics (loss and accuracy averaged over all samples of all ranks, validation likewise) are those of
    fit(batch_size=6) in one process. The targets carry each sample's index (1000 * index added to every
    one-hot column, so the argmax stays the label) for the loss to record which samples a rank trained on."""
    proc, _ = run_mpi(tmp_path, TRACKING + textwrap.dedent("""
    for n in (23, 19):
        X, y = data(n)
        seen.clear()
        net = build(seed=rank)
        h = cnn_ext.fit(net, X, tagged(y), epochs=3, batch_size=2, seed=3, loss=tracking_loss,
                        optimizer=cnn_ext.Adam(0.01), validation_data=(X[:7], tagged(y[:7], offset=10**6)),
                        progress=False, verbose=False, comm=comm)
        np.savez(f"{out}/uneven{n}_{rank}.npz", *[p for _, _, p in net.parameters()], ids=np.concatenate(seen),
                 sizes=[len(s) for s in seen], **{k: h[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy")})
    """), n=3)
    assert proc.returncode == 0, proc.stderr
    for n in (23, 19):
        X, y = data(n)
        seen.clear()
        net = build(seed=0)
        h = cnn_ext.fit(net, X, tagged(y), epochs=3, batch_size=6, seed=3, loss=tracking_loss, optimizer=Adam(0.01),
                        validation_data=(X[:7], tagged(y[:7], offset=10**6)), progress=False, verbose=False)
        batches = list(seen)
        assert len(batches) == 3 * 4 and [len(b) for b in batches[:4]] == [6, 6, 6, n - 18]
        ranks = [np.load(tmp_path / f"uneven{n}_{r}.npz") for r in range(3)]
        got = [np.split(r["ids"], np.cumsum(r["sizes"])[:-1]) for r in ranks]
        # rank r takes the r-th third of each global batch, sizes differing by at most one; an empty slice is no call
        for r in range(3):
            expected = [b[r * len(b) // 3:(r + 1) * len(b) // 3] for b in batches]
            expected = [e for e in expected if len(e)]
            assert len(got[r]) == len(expected), (n, r, [len(g) for g in got[r]])
            for g, e in zip(got[r], expected):
                np.testing.assert_array_equal(g, e)
        # the last, partial global batch: 5 samples split 1 + 2 + 2, 1 sample 0 + 0 + 1
        assert [int(r["sizes"][3]) if len(r["sizes"]) == 12 else 0 for r in ranks] == \
            ([1, 2, 2] if n == 23 else [0, 0, 1])
        # each epoch: every sample exactly once over all ranks
        for epoch in range(3):
            ids = np.concatenate([b[r * len(b) // 3:(r + 1) * len(b) // 3] for b in batches[4 * epoch:4 * epoch + 4]
                                  for r in range(3)])
            np.testing.assert_array_equal(np.sort(ids), np.arange(n))
        per_rank = [np.concatenate(g) for g in got]
        assert sum(len(p) for p in per_rank) == 3 * n
        for j, (_, _, p) in enumerate(net.parameters()):
            for r in ranks:
                np.testing.assert_allclose(r[f"arr_{j}"], p, rtol=0, atol=1e-12, err_msg=f"n={n}")
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            for r in ranks:
                np.testing.assert_allclose(r[key], h[key], rtol=1e-12, err_msg=f"n={n} {key}")


def test_float32_networks_reduce_in_float32(tmp_path):
    """A float32 network's gradients travel in a float32 buffer; 2 ranks x 3 == 1 process x 6 up to float32
    rounding (Adam, 3 epochs of 23 samples)."""
    proc, _ = run_mpi(tmp_path, """
    X, y = data()
    net = build(dtype=np.float32)
    cnn_ext.fit(net, X.astype(np.float32), y, epochs=3, batch_size=3, seed=7, progress=False, verbose=False,
                comm=comm, optimizer=cnn_ext.Adam(0.01))
    np.savez(f"{out}/f32_{rank}.npz", *[p for _, _, p in net.parameters()])
    """)
    assert proc.returncode == 0, proc.stderr
    X, y = data()
    net = build(dtype=np.float32)
    cnn_ext.fit(net, X.astype(np.float32), y, epochs=3, batch_size=6, seed=7, progress=False, verbose=False,
                optimizer=Adam(0.01))
    got = np.load(tmp_path / "f32_1.npz")
    for j, (_, _, p) in enumerate(net.parameters()):
        assert got[f"arr_{j}"].dtype == np.float32
        np.testing.assert_allclose(got[f"arr_{j}"], p, rtol=0, atol=1e-5)


STEPS, LOCAL = 20, 4


@pytest.mark.parametrize("ranks", [2, 3])
def test_allreduce_gradients_takes_the_global_batch_step(tmp_path, ranks):
    """By hand, the issue's equivalence: R ranks on local batches of 4 samples, allreduce_gradients, then a step,
    for 20 steps (a new global batch each) == one process on the R * 4 samples of each step, in float64, for
    Network.update, SGD with momentum and Adam. The tutorial's rule (a plain dE_dY, Network.update) needs the
    measured powers (batch_powers): its layers mix batch means and sums; the exact rule (softmax cross-entropy's
    marked gradient, SGD with momentum and Adam) is a plain mean over ranks, the default."""
    proc, _ = run_mpi(tmp_path, f"""
    from cnn_ext.distributed import allreduce_gradients, batch_powers
    R, b = comm.Get_size(), {LOCAL}
    X, y = data({STEPS} * R * b)
    class Counting:  # the communicator, counting the Allreduce calls
        def __init__(self, comm):
            self.comm, self.calls = comm, 0
        def Allreduce(self, *args, **kwargs):
            self.calls += 1
            return self.comm.Allreduce(*args, **kwargs)
        def __getattr__(self, name):
            return getattr(self.comm, name)
    counting = Counting(comm)
    for kind in ("update", "momentum", "adam"):
        rule = "tutorial" if kind == "update" else "exact"
        net = build()
        powers = batch_powers(net, X, y, cnn_ext.softmax_cross_entropy) if rule == "tutorial" else None
        opt = cnn_ext.SGD(0.05, momentum=0.9) if kind == "momentum" else cnn_ext.Adam(0.01)
        for step in range({STEPS}):
            mine = slice(step * R * b + rank * b, step * R * b + (rank + 1) * b)
            d = cnn_ext.softmax_cross_entropy(net.forward(X[mine]), y[mine])[1]
            grads = net.backward(np.asarray(d) if rule == "tutorial" else d)
            grads = allreduce_gradients(grads, counting, powers=powers)
            net.update(0.05, grads) if kind == "update" else opt.step(net, grads)
        np.savez(f"{{out}}/{{kind}}_{{rank}}.npz", *[p for _, _, p in net.parameters()],
                 powers=str(sorted((powers or {{}}).items())))
    report(f"{{counting.calls}} Allreduce calls")
    """, n=ranks)
    assert proc.returncode == 0, proc.stderr
    # one buffer per step (the float64 gradients of 3 parameter layers): 20 steps x 3 optimisers
    assert reports(tmp_path, ranks) == [f"{3 * STEPS} Allreduce calls\n"] * ranks
    step = ranks * LOCAL
    X, y = data(STEPS * step)
    for kind in ("update", "momentum", "adam"):
        net = build()
        opt = SGD(0.05, momentum=0.9) if kind == "momentum" else Adam(0.01)
        for s in range(STEPS):
            d = cnn_ext.softmax_cross_entropy(net.forward(X[s * step:(s + 1) * step]), y[s * step:(s + 1) * step])[1]
            grads = net.backward(np.asarray(d) if kind == "update" else d)
            net.update(0.05, grads) if kind == "update" else opt.step(net, grads)
        for r in range(ranks):
            got = np.load(tmp_path / f"{kind}_{r}.npz")
            for j, (_, _, p) in enumerate(net.parameters()):
                np.testing.assert_allclose(got[f"arr_{j}"], p, rtol=0, atol=1e-12, err_msg=f"{kind}, rank {r}")
    # the tutorial's conventions, measured: batch means of dE_dY (Conv2D dK/dB, Dense dB) are p = 2 under the
    # batch-mean loss, Dense dW (a batch sum) p = 1
    powers = str(np.load(tmp_path / "update_0.npz")["powers"])
    assert powers == str(sorted({(0, "dB"): 2, (0, "dK"): 2, (3, "dB"): 2, (3, "dW"): 1, (5, "dB"): 2,
                                 (5, "dW"): 1}.items()))


def test_only_rank_0_calls_on_epoch_end_and_its_stop_holds_everywhere(tmp_path):
    proc, _ = run_mpi(tmp_path, """
    X, y = data()
    def on_epoch_end(epoch, history):
        open(f"{out}/callback_{rank}_{epoch}", "w").close()
        return epoch == 2
    h = cnn_ext.fit(build(), X, y, epochs=5, learning_rate=0.1, progress=False, verbose=False, comm=comm,
                    on_epoch_end=on_epoch_end)
    report(f"{h['epochs_run']} epochs")
    """)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("callback_*")) == ["callback_0_1", "callback_0_2"]
    assert reports(tmp_path) == ["2 epochs\n"] * RANKS


def test_broadcast_parameters_copies_rank_0s_values_into_the_same_arrays(tmp_path):
    proc, _ = run_mpi(tmp_path, """
    from cnn_ext.distributed import broadcast_parameters
    net = build(seed=rank)
    before = [id(p) for _, _, p in net.parameters()]
    broadcast_parameters(net, comm)
    same = before == [id(p) for _, _, p in net.parameters()]
    equal = all(np.array_equal(p, q) for (_, _, p), (_, _, q) in zip(net.parameters(), build(seed=0).parameters()))
    report(f"same arrays {same}, rank 0's values {equal}")
    """)
    assert proc.returncode == 0, proc.stderr
    assert reports(tmp_path) == ["same arrays True, rank 0's values True\n"] * RANKS


def test_different_networks_raise_on_every_rank(tmp_path):
    proc, _ = run_mpi(tmp_path, """
    from cnn_ext.distributed import NetworkMismatchError
    X, y = data()
    net = build(n_out=3 if rank == 0 else 4)
    try:
        cnn_ext.fit(net, X, y, epochs=1, learning_rate=0.1, progress=False, verbose=False, comm=comm)
    except NetworkMismatchError as exc:
        report(str(exc))
    """)
    assert proc.returncode == 0, proc.stderr
    for line in reports(tmp_path):
        assert "layer 5 (Dense) parameter w" in line and "(5, 3)" in line and "(5, 4)" in line, line


def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    """Rank 1's loss raises at its third call, while rank 0 waits in the gradients' Allreduce: the job ends
    with a non-zero status within 60 s instead of hanging."""
    proc, seconds = run_mpi(tmp_path, """
    X, y = data(200)
    calls = [0]
    def loss(pred, t):
        calls[0] += 1
        if rank == 1 and calls[0] == 3:
            raise RuntimeError("injected failure on rank 1")
        return cnn_ext.softmax_cross_entropy(pred, t)
    cnn_ext.fit(build(), X, y, epochs=1000, batch_size=2, loss=loss, learning_rate=0.01, progress=False,
                verbose=False, comm=comm)
    """, timeout=90)
    assert proc.returncode != 0
    assert seconds < 60, seconds
    assert "injected failure on rank 1" in proc.stderr


def test_without_mpi4py_the_functions_say_what_to_install(monkeypatch):
    from cnn_ext import distributed

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match="pip install mpi4py mpich"):
        distributed.broadcast_parameters(build(), comm=None)
    with pytest.raises(ImportError, match="pip install mpi4py mpich"):
        cnn_ext.fit(build(), *data(), epochs=1, learning_rate=0.1, comm=object())


def test_importing_cnn_ext_does_not_import_mpi4py_or_dask():
    code = "import sys, cnn_ext, cnn_ext.distributed; print(sorted({'mpi4py', 'dask'} & set(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(Path(cnn_ext.__file__).parent.parent))
    out = subprocess.run(cwd=_OUTSIDE, args=[sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.skipif(not (EXAMPLES / "train_mnist_mpi.py").is_file(),
                    reason="examples/ is not beside tests/ (wheel tested from a copy of tests/)")
def test_mnist_mpi_example_on_2_ranks_follows_the_single_process_example(tmp_path, capsys, monkeypatch):
    """mpiexec -n 2 examples/train_mnist_mpi.py (8 + 8 samples per step) prints the loss and the validation loss and
    accuracy of examples/train_mnist.py (16 per step) after an epoch on the shipped MNIST sample (the same validation
    split held out); only rank 0 prints."""
    mpiexec = _mpiexec()
    flags = ["--data-dir", str(tmp_path / "empty"), "--no-download", "--epochs", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(cnn_ext.__file__).parent.parent))
    env.pop("CNN_EXT_DATA", None)
    proc, _ = launch([mpiexec, "-n", "2", sys.executable, str(EXAMPLES / "train_mnist_mpi.py"), *flags], env, TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    mpi_lines = [line.split("% (")[0] for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert proc.stdout.count("Training on the MNIST sample") == 1 and "images/s" in proc.stdout, proc.stdout

    monkeypatch.delenv("CNN_EXT_DATA", raising=False)
    spec = importlib.util.spec_from_file_location("example_train_mnist", EXAMPLES / "train_mnist.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.run(example.parse_args([*flags, "--threads", "1", "--plot", str(tmp_path / "c.png")]))
    capsys.readouterr()
    assert len(mpi_lines) == 1
    history = result["history"]
    for epoch, (line, loss, val_loss, val_accuracy) in enumerate(zip(mpi_lines, history["loss"], history["val_loss"],
                                                                     history["val_accuracy"])):
        assert line == (f"epoch {epoch + 1}: loss {loss:.4f}, validation loss {val_loss:.4f}, validation accuracy "
                        f"{100 * val_accuracy:.2f}"), line
    assert proc.stdout.count("measured once") == 1


@pytest.mark.skipif(not (EXAMPLES / "train_mpi.py").is_file(),
                    reason="examples/ is not beside tests/ (wheel tested from a copy of tests/)")
def test_fit_mpi_example_on_2_ranks_matches_one_process_on_the_global_batch(tmp_path):
    """mpiexec -n 2 examples/train_mpi.py (32 + 32 samples per step) saves the network one process trains with fit on
    batches of 64, the same validation fifth held out; only rank 0 prints, the test accuracy once."""
    mpiexec = _mpiexec()
    saved = tmp_path / "net.npz"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(cnn_ext.__file__).parent.parent))
    proc, _ = launch([mpiexec, "-n", "2", sys.executable, str(EXAMPLES / "train_mpi.py"), "--epochs", "1",
                      "--save", str(saved)], env, TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("test accuracy") == 1 and proc.stdout.count("epoch 1/1:") == 1, proc.stdout
    assert "2 rank(s), 1 epoch(s)" in proc.stdout, proc.stdout
    assert float(proc.stdout.split("test accuracy ")[1].split("%")[0]) > 50, proc.stdout  # it trained

    one = tmp_path / "one.npz"  # a world of one rank (mpi4py never imported into the test process)
    proc, _ = launch([mpiexec, "-n", "1", sys.executable, str(EXAMPLES / "train_mpi.py"), "--epochs", "1",
                      "--batch-size", "64", "--save", str(one)], env, TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    ranks, single = cnn_ext.load(saved), cnn_ext.load(one)
    for (name, _, a), (_, _, b) in zip(ranks.parameters(), single.parameters()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)


def test_batch_powers_leave_running_statistics_dropout_and_modes_alone():
    # fit(comm=) measures the powers before its first step: that probe must not train BatchNorm's statistics or
    # draw from Dropout's stream, or R ranks would no longer take one process's steps
    from cnn_ext import BatchNorm2D, Dropout
    from cnn_ext.distributed import batch_powers

    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 6, 6))
    y = rng.integers(0, 3, 10)

    def build():
        return cnn_ext.Network([cnn_ext.Conv2D(1, 2, 3, seed=0), BatchNorm2D(2), cnn_ext.ReLU(), Dropout(0.5, seed=1),
                                cnn_ext.Flatten(), cnn_ext.Dense(32, 3, seed=2)])

    probed, untouched = build(), build()
    probed.layers[3].training = False  # a mixed set of modes comes back as it was
    untouched.layers[3].training = False
    powers = batch_powers(probed, x, y, cnn_ext.softmax_cross_entropy)
    assert {key for key in powers if key[0] == 1} == {(1, "dGamma"), (1, "dBeta")} or powers
    assert [layer.training for layer in probed] == [True, True, True, False, True, True]
    for a, b in zip(probed.buffers(), untouched.buffers()):
        assert_array_equal(a[1], b[1], err_msg=a[0])
    probed.train(), untouched.train()
    assert_array_equal(probed(x), untouched(x))  # the same Dropout draws and batch statistics follow
