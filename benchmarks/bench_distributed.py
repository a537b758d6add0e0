"""Data-parallel training over MPI (issue 19): the MNIST CNN's step and epoch time on 1 and 2 ranks of one
OpenMP thread each, against one process with 2 threads, and the time per step spent in communication.

Network and step: examples/train_mnist_cnn.py's CNN (Conv2D 32, Conv2D 64, Dense 3136x128, Dense 128x10; float32),
softmax cross-entropy, exact gradients, Adam; a global batch of 64 samples per step (--batch-size), so an epoch is
ceil(60000 / 64) = 938 steps in every configuration and the epoch time is 938 x the median step time (evaluation
and shuffling left out). On R ranks each rank takes a contiguous R-th of the global batch and the gradients go
through cnn_ext.distributed.allreduce_gradients (one float32 buffer per step).

Every configuration runs in its own process(es) started by ``mpiexec -n R`` (R = 1 for the single-process rows),
in an order rotated every repeat, so that drifting machine load hits all of them alike. Each run warms up, then
times --steps steps; per step it records the whole step and the Allreduce inside it (which includes waiting for
the slower rank), and after the steps it times the Allreduce of the same buffer alone, right after a barrier (the
transport's cost without waiting). Reported: medians over the repeats of each run's median, the ratio of every
row's epoch time to the 2-thread process's, and the scaling efficiency T(1 rank) / (R x T(R ranks)) (1 = perfect).

    python benchmarks/bench_distributed.py --out benchmarks/results/distributed.md
    python benchmarks/bench_distributed.py --quick

--out writes OUT.json and OUT.md; when OUT.json holds other sections too (results/distributed.json), only this
script's section (titled SECTION) is replaced and the others are kept.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import _report

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

TRAIN_SIZE = 60000
# the heading of this script's section in a result that holds other sections too (results/distributed.json)
SECTION = "bench_distributed.py: the MNIST CNN on 1 and 2 ranks"
# (label, ranks, OpenMP threads per rank)
CONFIGS = (("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2), ("2 ranks x 1 thread", 2, 1))
PEER = "1 process x 2 threads"


def forward_macs(net, shape):
    """Multiply-adds of one sample's forward pass through the Conv2D and Dense layers of ``net``."""
    from cnn_ext import conv2d_output_shape

    macs = 0
    for layer in net.layers:
        name = type(layer).__name__
        if name == "Conv2D":
            c_out, c_in, kh, kw = layer.k.shape
            oh, ow = conv2d_output_shape(shape[1:], (kh, kw), stride=layer.stride, padding=layer.padding)
            macs += c_out * c_in * kh * kw * oh * ow
            shape = (c_out, oh, ow)
        elif name == "Dense":
            macs += layer.w.size
            shape = (layer.w.shape[1],)
        elif name == "MaxPool2D":
            shape = (shape[0], shape[1] // 2, shape[2] // 2)
        elif name == "Flatten":
            shape = (int(np.prod(shape)),)
    return macs


# ---------------------------------------------------------------------------------------------------------------
# one run, on every rank of ``mpiexec -n R``
# ---------------------------------------------------------------------------------------------------------------
def worker(args):
    from mpi4py import MPI
    from threadpoolctl import threadpool_limits

    import cnn_ext
    from cnn_ext import Adam, exact, softmax_cross_entropy
    from cnn_ext.distributed import allreduce_gradients, broadcast_parameters
    from train_mnist_cnn import build_network

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    cnn_ext.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.batch_size
    x = rng.random((n, 1, 28, 28), dtype=np.float32)  # the speed does not depend on the pixels
    y = rng.integers(0, 10, n)
    lo, hi = rank * n // size, (rank + 1) * n // size
    xb, yb = x[lo:hi], y[lo:hi]
    net = build_network(0)
    if size > 1:
        broadcast_parameters(net, comm)
    opt = Adam(1e-3)
    steps, reduces = [], []
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for s in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            grads = net.backward(exact(softmax_cross_entropy(net.forward(xb), yb)[1]))
            t1 = time.perf_counter()
            if size > 1:
                grads = allreduce_gradients(grads, comm)
            t2 = time.perf_counter()
            opt.step(net, grads)
            t3 = time.perf_counter()
            if s >= args.warmup:
                steps.append(t3 - t0)
                reduces.append(t2 - t1)
        alone = []
        if size > 1:
            for _ in range(args.steps):
                comm.Barrier()
                t0 = time.perf_counter()
                allreduce_gradients(grads, comm)
                alone.append(time.perf_counter() - t0)
    # each rank's medians; the slowest rank sets the pace
    mine = (float(np.median(steps)), float(np.median(reduces)), float(np.median(alone)) if alone else 0.0)
    everyone = comm.gather(mine, root=0)
    if rank == 0:
        params = sum(p.size for _, _, p in net.parameters())
        result = dict(step=max(e[0] for e in everyone), allreduce=max(e[1] for e in everyone),
                      allreduce_alone=max(e[2] for e in everyone), params=params,
                      bytes=sum(p.nbytes for _, _, p in net.parameters()), macs=forward_macs(net, (1, 28, 28)))
        with open(args.json, "w") as fh:
            json.dump(result, fh)


# ---------------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------------
def mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(beside):
        return beside
    from shutil import which

    found = which("mpiexec")
    if found is None:
        sys.exit("no mpiexec beside the interpreter or on PATH: pip install mpi4py mpich")
    return found


def run_config(ranks, threads, args, tmp):
    out = os.path.join(tmp, f"r{ranks}t{threads}.json")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, os.path.abspath(__file__), "--worker", "--threads",
           str(threads), "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
           str(args.batch_size), "--json", out]
    subprocess.run(cmd, env=env, check=True, timeout=args.timeout, cwd=tmp)
    with open(out) as fh:
        return json.load(fh)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None, help="runs per configuration (default 5; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 60; 15 with --quick)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64, help="the global batch: samples per step over all ranks")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed for one run")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", help="write the report into this markdown file (its section only)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.steps = args.steps or (15 if args.quick else 60)

    import _common as C

    header = C.machine_report()
    meter = C.LoadMeter()
    runs = {label: [] for label, _, _ in CONFIGS}
    with tempfile.TemporaryDirectory(prefix="bench_distributed.") as tmp:
        for r in range(args.repeats):
            order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
            for label, ranks, threads in order:
                runs[label].append(run_config(ranks, threads, args, tmp))
                print(f"  repeat {r + 1}/{args.repeats}: {label}: step {1e3 * runs[label][-1]['step']:.2f} ms",
                      file=sys.stderr, flush=True)
    other_load = meter.others()

    steps_per_epoch = -(-TRAIN_SIZE // args.batch_size)
    med = {label: {k: float(np.median([run[k] for run in rs])) for k in ("step", "allreduce", "allreduce_alone")}
           for label, rs in runs.items()}
    facts = runs[CONFIGS[0][0]][0]
    single = med["1 process x 1 thread"]["step"]
    rows = []
    for label, ranks, threads in CONFIGS:
        m = med[label]
        spread = [run["step"] for run in runs[label]]
        rows.append([label, f"{1e3 * m['step']:.2f} ({1e3 * min(spread):.2f}-{1e3 * max(spread):.2f})",
                     f"{m['step'] * steps_per_epoch:.1f}",
                     f"{1e3 * m['allreduce']:.2f}" if ranks > 1 else "—",
                     f"{100 * m['allreduce'] / m['step']:.0f}%" if ranks > 1 else "—",
                     f"{1e3 * m['allreduce_alone']:.2f}" if ranks > 1 else "—",
                     C.fmt_ratio(med[PEER]["step"] / m["step"]),
                     f"{single / (ranks * threads * m['step']):.2f}"])
    flops = 3 * 2 * facts["macs"] * args.batch_size  # a training step ~ 3 forward passes (forward, dX, dW)
    two = med["2 ranks x 1 thread"]
    result = _report.new_result(SECTION, command=C.command_line(), machine=header + [
        f"mpi4py / MPI: {_mpi_version()}", f"other load during the runs: {other_load:.2f} cores (of {os.cpu_count()})"])
    result["intro"] = (
        f"examples/train_mnist_cnn.py's CNN, float32, Adam, global batch {args.batch_size} "
        f"({steps_per_epoch} steps per epoch of {TRAIN_SIZE}); {facts['params']:,} parameters = "
        f"{facts['bytes'] / 1e6:.2f} MB of float32 gradients per step through one Allreduce; "
        f"{facts['macs'] / 1e6:.2f} M multiply-adds per sample forward, so about {flops / 1e9:.2f} GFLOP per step "
        f"(3 x forward). Medians over {args.repeats} runs (rotated order) of each run's median of {args.steps} "
        f"steps; the step column gives the runs' range. 'vs 2 threads': the 2-thread process's epoch time / the "
        f"row's (> 1: faster). 'efficiency': T(1 process x 1 thread) / (cores x T(row)).")
    _report.add_table(result, None, ["configuration", "ms per step (range)", "s per epoch", "Allreduce in step, ms",
                                     "share of step", "Allreduce alone, ms", "vs 2 threads", "efficiency"], rows)
    result["notes"] = "\n".join([
        f"- compute rate, 1 process x 1 thread: {flops / single / 1e9:.1f} GFLOP/s",
        f"- Allreduce alone of {facts['bytes'] / 1e6:.2f} MB between 2 ranks on this machine: "
        f"{1e3 * two['allreduce_alone']:.2f} ms, i.e. {facts['bytes'] / two['allreduce_alone'] / 1e9:.2f} GB/s of "
        f"gradient reduced (shared memory, the ranks competing with the load for the 2 cores)",
        f"- 1- vs 2-rank epoch: {single * steps_per_epoch:.1f} s vs {two['step'] * steps_per_epoch:.1f} s "
        f"({single / two['step']:.2f}x); one process with 2 threads: {med[PEER]['step'] * steps_per_epoch:.1f} s",
    ])
    json_path = _report.out_paths(args.out)[0] if args.out else None
    if json_path and os.path.exists(json_path):
        result = _merge(_report.load(json_path), result)
    C.write_results(result, args.out)
    return 0


def _merge(whole, mine):
    """``whole`` (a result of several sections) with its SECTION replaced by ``mine`` (or appended)."""
    if whole["title"] == SECTION:  # a file this script wrote alone
        return mine
    table = mine["tables"][0]
    machine = "\n".join(f"- {m}" for m in mine["machine"])
    section = _report.add_table({"tables": []}, SECTION, table["columns"], table["rows"], level=2,
                                intro=f"Command: `{mine['command']}`\n\n{machine}\n\n{mine['intro']}",
                                notes=mine["notes"])
    titles = [t.get("title") for t in whole["tables"]]
    if SECTION in titles:
        whole["tables"][titles.index(SECTION)] = section
    else:
        whole["tables"].append(section)
    whole["command"] = whole.get("command") or ""  # several commands made it: each section names its own
    return whole


def _mpi_version():
    try:
        from mpi4py import MPI, __version__

        return f"mpi4py {__version__}, {MPI.Get_library_version().splitlines()[0].strip()}"
    except ImportError:
        return "mpi4py not installed"


if __name__ == "__main__":
    sys.exit(main())
