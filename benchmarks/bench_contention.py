"""Kernels on a busy machine (issue #18): training steps and a large layer timed with 0, 1 and 2 other CPU-bound
processes running (``python -c "while True: pass"``, started and stopped by this script), on cnn_ext's default
thread count (all cores, fewer while other processes keep some busy: cnn_ext._threads.current_threads), on 1
thread and on 2 threads; PyTorch's equivalent of each workload in the same run under the same load, with
torch.set_num_threads (its default, 1, 2) for reference.

Workloads (benchmarks/compare_trees.py's): the tutorial's MNIST network training step (batch 16, float32 and
float64), the MNIST CNN Adam step (batch 64, float32), Conv2D(64, 64, 3, 'same') on 64 x 64 x 28 x 28 forward +
backward (float32). Times are wall-clock medians (what a user waits for under load) of ``--repeats`` rounds, each
taking one sample of at least ``--min-time`` seconds of every setting and library in turn.

    python benchmarks/bench_contention.py [--repeats 5] [--min-time 0.2] [--out benchmarks/results/contention]

writes OUT.json (the data), OUT.md (rendered from it) and OUT.png (if matplotlib is importable).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import cnn_ext  # noqa: E402
from cnn_ext import Adam, Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, Sigmoid, softmax_cross_entropy  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import _common as C  # noqa: E402
import _report  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

LOADS = (0, 1, 2)
# OpenBLAS's idle workers spin about 0.1 s after a call, libgomp's (PyTorch's and cnn_ext's: the same library)
# a shorter while: each measurement starts after they sleep, so one peer's spinning never slows the next.
SPIN_PAUSE = 0.15
SETTINGS = ("default", 1, 2)


# ---- the workloads, cnn_ext and PyTorch ----------------------------------------------------------------------

def tutorial(dtype):
    rng = np.random.default_rng(0)
    net = Network([Conv2D(1, 4, 5, seed=0, dtype=dtype), Flatten(), Dense(2304, 256, seed=1, dtype=dtype), ReLU(),
                   Dense(256, 128, seed=2, dtype=dtype), ReLU(), Dense(128, 32, seed=3, dtype=dtype), ReLU(),
                   Dense(32, 10, seed=4, dtype=dtype), Sigmoid()])
    x = rng.random((16, 1, 28, 28)).astype(dtype)
    t = np.eye(10, dtype=dtype)[rng.integers(0, 10, 16)]

    def step():
        y = net.forward(x)
        net.update(0.1, net.backward(2 * (y - t) / y.size))
    return step


def mnist_cnn(dtype):
    rng = np.random.default_rng(0)
    kw = dict(init="he_normal", rng=rng, dtype=dtype)
    net = Network([Conv2D(1, 32, 3, padding="same", **kw), ReLU(), MaxPool2D(2),
                   Conv2D(32, 64, 3, padding="same", **kw), ReLU(), MaxPool2D(2), Flatten(),
                   Dense(3136, 128, **kw), ReLU(), Dense(128, 10, **kw)])
    opt = Adam(1e-3)
    x, y = rng.random((64, 1, 28, 28)).astype(dtype), rng.integers(0, 10, 64)

    def step():
        _, g = softmax_cross_entropy(net.forward(x), y)
        opt.step(net, net.backward(g))
    return step


def big_layer(dtype):
    layer = Conv2D(64, 64, 3, padding="same", seed=0, dtype=dtype)
    x = np.random.default_rng(0).random((64, 64, 28, 28)).astype(dtype)

    def step():
        y = layer.forward(x)
        layer.backward(np.ones_like(y))
    return step


def torch_tutorial(dtype):
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 4, 5), nn.Flatten(), nn.Linear(2304, 256), nn.ReLU(), nn.Linear(256, 128),
                        nn.ReLU(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10), nn.Sigmoid()).to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(16, 1, 28, 28, dtype=dtype)
    t = torch.eye(10, dtype=dtype)[torch.randint(0, 10, (16,))]

    def step():
        opt.zero_grad()
        ((net(x) - t) ** 2).mean().backward()
        opt.step()
    return step


def torch_mnist_cnn(dtype):
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(),
                        nn.Linear(128, 10)).to(dtype)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x, y = torch.rand(64, 1, 28, 28, dtype=dtype), torch.randint(0, 10, (64,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def torch_big_layer(dtype):
    layer = torch.nn.Conv2d(64, 64, 3, padding=1).to(dtype)
    x = torch.rand(64, 64, 28, 28, dtype=dtype, requires_grad=True)

    def step():
        layer.zero_grad()
        layer(x).backward(torch.ones(64, 64, 28, 28, dtype=dtype))
    return step


WORK = [  # name, cnn_ext maker, torch maker, dtype name
    ("tutorial step f32", tutorial, torch_tutorial, "float32"),
    ("tutorial step f64", tutorial, torch_tutorial, "float64"),
    ("MNIST CNN step f32", mnist_cnn, torch_mnist_cnn, "float32"),
    ("Conv2D 64-64-3 28x28 fwd+bwd f32", big_layer, torch_big_layer, "float32"),
]


# ---- timing ---------------------------------------------------------------------------------------------------

def calls_per_sample(step, min_time):
    """How many back-to-back calls of ``step`` take at least ``min_time`` seconds (after two warm-up calls)."""
    step()
    step()
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            step()
        if time.perf_counter() - t0 >= min_time:
            return number
        number *= 2


def sample(step, number):
    t0 = time.perf_counter()
    for _ in range(number):
        step()
    return (time.perf_counter() - t0) / number


class Setting:
    """cnn_ext, PyTorch and the BLAS libraries on the default thread count, or on n threads."""

    def __init__(self, n, torch_default):
        self.n, self.torch_default = n, torch_default

    def __enter__(self):
        if self.n == "default":
            cnn_ext.set_num_threads(None)
            self._blas = None
            if torch is not None:
                torch.set_num_threads(self.torch_default)
        else:
            cnn_ext.set_num_threads(self.n)
            self._blas = threadpool_limits(self.n, "blas")
            if torch is not None:
                torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self._blas is not None:
            self._blas.restore_original_limits()
        cnn_ext.set_num_threads(None)
        return False


def start_load(n):
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(1.0 if n else 0.2)  # long enough for cnn_ext's load measurement to see them
    return procs


def stop_load(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


# ---- output ---------------------------------------------------------------------------------------------------

def table(results, loadavg):
    """The result (benchmarks/_report.py's format) of the measurements."""
    intro = [
        f"Machine: {os.cpu_count()} cores; {sys.version.split()[0]}, NumPy {np.__version__}, "
        f"PyTorch {torch.__version__ if torch is not None else '-'}. Load average before / after the run: "
        f"{loadavg[0]} / {loadavg[1]} (other engineers' builds share this machine).",
        "Wall-clock median per step in ms; 'busy' = other `python -c \"while True: pass\"` processes. "
        "cnn_ext 'default' = no set_num_threads (all cores, fewer while other processes keep cores busy); "
        "PyTorch 'default' = its own default (torch.get_num_threads() at start). "
        "`default/1t` = default time / 1-thread time (the goal: <= 1.10 under load).",
    ]
    columns = (["workload", "library"] + [f"{load} busy: {s}{'' if s == 'default' else 't'}"
                                          for load in LOADS for s in SETTINGS]
               + [f"{load} busy default/1t" for load in LOADS] + ["quiet 1t/2t"])
    rows = []
    for name, *_ in WORK:
        for lib in ("cnn_ext", "torch"):
            row = [results.get((lib, name, load, s)) for load in LOADS for s in SETTINGS]
            if all(v is None for v in row):
                continue
            ratios = []
            for load in LOADS:
                d, one = results.get((lib, name, load, "default")), results.get((lib, name, load, 1))
                ratios.append(f"{d / one:.2f}" if d and one else "-")
            q1, q2 = results.get((lib, name, 0, 1)), results.get((lib, name, 0, 2))
            speedup = f"{q1 / q2:.2f}" if q1 and q2 else "-"
            rows.append([name, lib] + ["-" if v is None else f"{v * 1e3:.2f}" for v in row] + ratios + [speedup])
    result = _report.new_result("Kernels on a busy machine (benchmarks/bench_contention.py)", level=1,
                                intro="\n".join(intro))
    _report.add_table(result, None, columns, rows)
    return result


def plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot")
        return False
    fig, axes = plt.subplots(1, len(WORK), figsize=(4.2 * len(WORK), 3.8))
    width = 0.13
    for ax, (name, *_) in zip(axes, WORK):
        i = 0
        for lib in ("cnn_ext", "torch"):
            for s in SETTINGS:
                vals = [results.get((lib, name, load, s)) for load in LOADS]
                if any(v is None for v in vals):
                    continue
                ax.bar(np.arange(len(LOADS)) + (i - 2.5) * width, [v * 1e3 for v in vals], width,
                       label=f"{lib} {s}{'' if s == 'default' else ' thr'}",
                       hatch="" if lib == "cnn_ext" else "//", alpha=0.9)
                i += 1
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(LOADS)), [f"{n} busy" for n in LOADS])
        ax.set_ylabel("ms per step (median)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--out", default=os.path.join(_ROOT, "benchmarks", "results", "contention"))
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()
    if "OMP_NUM_THREADS" in os.environ:
        sys.exit("unset OMP_NUM_THREADS: it fixes cnn_ext's default thread count")
    use_torch = torch is not None and not args.no_torch
    torch_default = torch.get_num_threads() if torch is not None else None
    makers = {}
    for name, make, tmake, dt in WORK:
        makers[("cnn_ext", name)] = make(getattr(np, dt))
        if use_torch:
            makers[("torch", name)] = tmake(getattr(torch, dt))
    loadavg = [", ".join(f"{v:.2f}" for v in os.getloadavg())]
    results = {}
    for load in LOADS:
        procs = start_load(load)
        try:
            # settings and libraries take turns within each round, so that a load that drifts during the run
            # (other users of the machine) weighs on every column alike; the table gives medians over rounds
            numbers, samples = {}, {}
            for _ in range(args.repeats):
                for s in SETTINGS:
                    with Setting(s, torch_default):
                        for (lib, name), step in makers.items():
                            time.sleep(SPIN_PAUSE)  # the previous peer's OpenMP / OpenBLAS workers stop spinning
                            key = (lib, name, load, s)
                            if key not in numbers:
                                numbers[key] = calls_per_sample(step, args.min_time)
                            samples.setdefault(key, []).append(sample(step, numbers[key]))
            for (lib, name, _, s), times in samples.items():
                results[(lib, name, load, s)] = t = statistics.median(times)
                print(f"{load} busy  {str(s):7}  {lib:7}  {name:34} {t * 1e3:9.2f} ms", flush=True)
        finally:
            stop_load(procs)
    loadavg.append(", ".join(f"{v:.2f}" for v in os.getloadavg()))
    C.write_results(table(results, loadavg), args.out)
    if plot(results, args.out + ".png"):
        print(f"wrote {args.out}.json, {args.out}.md and {args.out}.png")


if __name__ == "__main__":
    main()
