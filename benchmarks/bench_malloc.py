"""The MNIST CNN's training step with each peer alone in its own process, under glibc's default malloc settings
and after ``cnn_ext.keep_freed_memory()``, as a user's training script runs it.

bench_mnist_cnn.py times both peers in one process, where each one's freed memory stays in the heap the other
then reuses. A script of its own allocates and frees the step's large arrays every step, and glibc hands the
freed top of the heap back to the OS (its trim threshold follows the largest array freed so far: twice its
size); the next step takes a page fault per 4 KiB page it touches again. keep_freed_memory raises glibc's
thresholds (mallopt) for the whole process, so it applies to both peers alike. Each round starts one child per
peer and setting, in an order that alternates every round; a child warms up, then times ``--samples`` samples
(each the mean of back-to-back steps lasting about ``--min-time``) and counts the minor page faults of its timed
steps (getrusage). The table gives the medians over rounds, and PyTorch's step time over cnn_ext's.

    python benchmarks/bench_malloc.py [--threads 1,2] [--rounds 5] [--out benchmarks/results/malloc]
"""
import argparse
import json
import os
import resource
import subprocess
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

PEERS = ("cnn_ext", "torch")
SETTINGS = ("default", "keep_freed_memory()")


def child(spec):
    """Time the peer's step in this process; print JSON {threads: [seconds per step, page faults per step]}."""
    if spec["peer"] == "cnn_ext":
        sys.modules["torch"] = None  # this process holds cnn_ext's allocations only
    import _common as C
    if spec["setting"] != "default":
        assert C.cnn_ext.keep_freed_memory(), "keep_freed_memory() did not apply"
    import bench_mnist_cnn

    batches, _ = bench_mnist_cnn.load_batches(64, 16)
    step = bench_mnist_cnn.make_steppers(batches)[spec["peer"]]
    out = {}
    for n in spec["threads"]:
        with C.threads(n):
            for _ in range(10):
                step()
            number, _ = C.calibrate(step, spec["min_time"])
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times = [C.time_call(step, number) for _ in range(spec["samples"])]
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        out[n] = [float(np.median(times)), faults / (number * spec["samples"])]
    print(json.dumps(out))


def run_child(peer, setting, spec):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}  # glibc's defaults
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                           json.dumps(dict(spec, peer=peer, setting=setting))],
                          env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"bench_malloc: the {peer} child ({setting} malloc) failed:\n{done.stderr}")
    return {int(n): v for n, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5, help="child processes per peer and setting (default 5)")
    ap.add_argument("--samples", type=int, default=5, help="samples in each child (default 5)")
    ap.add_argument("--min-time", type=float, default=0.3, help="seconds per sample (default 0.3)")
    ap.add_argument("--out", help="also write the report to OUT.json (the data) and OUT.md (rendered from it)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    import _common as C
    import _report

    if C.torch is None:
        sys.exit("bench_malloc: needs PyTorch, the peer (pip install torch)")
    if not sys.platform.startswith("linux"):
        print("bench_malloc: keep_freed_memory sets glibc's malloc; nothing to compare here")
        return 2
    spec = dict(threads=args.threads, samples=args.samples, min_time=args.min_time)
    runs = [(peer, setting) for setting in SETTINGS for peer in PEERS]
    results = {run: [] for run in runs}
    for r in range(args.rounds):
        for run in (runs if r % 2 == 0 else runs[::-1]):
            results[run].append(run_child(*run, spec))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    table = []
    for n in args.threads:
        for setting in SETTINGS:
            t = {p: float(np.median([got[n][0] for got in results[p, setting]])) for p in PEERS}
            f = {p: float(np.median([got[n][1] for got in results[p, setting]])) for p in PEERS}
            table.append([n, setting, C.fmt_time(t["cnn_ext"]), f"{f['cnn_ext']:.0f}", C.fmt_time(t["torch"]),
                          f"{f['torch']:.0f}", C.fmt_ratio(t["torch"] / t["cnn_ext"])])
    result = _report.new_result("The MNIST CNN's step, each peer alone in its process: glibc's malloc settings",
                                level=1, machine=C.machine_report())
    _report.add_table(result, None, ["threads", "malloc", "cnn_ext step", "cnn_ext faults / step", "torch step",
                                     "torch faults / step", "torch/cnn_ext"], table,
                      intro=f"Medians over {args.rounds} child processes per peer and setting, each the median of "
                            f"{args.samples} samples; 'default': glibc's settings (no MALLOC_* variables), "
                            f"'keep_freed_memory()': called first in the child, its default thresholds; faults: "
                            f"minor page faults per timed step. torch/cnn_ext above 1: cnn_ext is faster.")
    C.write_results(result, args.out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
