"""The AVX-512 build against the AVX2 + FMA build, side by side: CNN_EXT_KERNELS=avx2 vs avx512.

The kernel build is chosen once, at import, so each build runs in its own child process. A round starts one
child per build, in an order that alternates every round (drifting machine load hits both alike); a child
warms every row up, then times each row ``--samples`` times (a sample is the mean of back-to-back calls
lasting about ``--min-time``) and reports the median. The table gives, per row, the median over rounds of
each build's time and the ratio avx2 / avx512 (above 1: AVX-512 faster). Rows: bench_ops.py's shapes and
operations (both dtypes, ``--threads``) and the MNIST CNN training step of bench_mnist_cnn.py.

Needs a CPU with AVX512F/VL/BW/DQ and a build with the variant; otherwise it says so and exits with status 2
(the two children would run the same kernels).

    python benchmarks/bench_isa.py [--quick] [--threads 1,2] [--rounds 5] [--out benchmarks/results/avx512.md]
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import _common as C  # noqa: E402  (puts this checkout first when it is built in place)
import _report  # noqa: E402
import bench_ops  # noqa: E402

BUILDS = ("avx2", "avx512")
OPS = ("forward", "input_grad", "kernel_grad", "fwd+bwd")


def rows(quick, thread_counts):
    """[(label, kind, spec)]: conv rows (shape, dtype, op, threads) and the MNIST step (batch, threads)."""
    shapes = bench_ops.QUICK_SHAPES if quick else bench_ops.SHAPES
    out = []
    for n in thread_counts:
        for dtype in ("float32", "float64"):
            for shape in shapes:
                for op in (("forward", "fwd+bwd") if quick else OPS):
                    out.append((f"{shape} {dtype} {op}, {n} thr", "conv", (shape, dtype, op, n)))
        out.append((f"MNIST CNN step (batch 64), {n} thr", "mnist", (64, n)))
    return out


def _conv_fn(shape, dtype, op):
    x, k, b, dy = bench_ops.make_case(shape, np.dtype(dtype).type)
    return bench_ops.cnn_ext_ops(x, k, b, dy)[op]


def _mnist_fn(batch):
    import bench_mnist_cnn

    batches, _ = bench_mnist_cnn.load_batches(batch, 4)
    return bench_mnist_cnn.make_steppers(batches)["cnn_ext"]


def child(spec):
    """Time every row in this process (its build fixed by CNN_EXT_KERNELS); print JSON {label: seconds}."""
    import cnn_ext._kernels as kernels

    todo = rows(spec["quick"], spec["threads"])
    fns = {label: (_conv_fn(*s[:3]) if kind == "conv" else _mnist_fn(s[0]), s[-1]) for label, kind, s in todo}
    times = {}
    for label, (fn, n) in fns.items():
        with C.threads(n):
            fn()  # warm-up: plans, scratch, thread teams
            number, _ = C.calibrate(fn, spec["min_time"])
            times[label] = float(np.median([C.time_call(fn, number) for _ in range(spec["samples"])]))
    print(json.dumps(dict(isa=kernels.ISA, variants=kernels.VARIANTS, times=times)))


def run_child(build, spec):
    env = dict(os.environ, CNN_EXT_KERNELS=build)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"bench_isa: the {build} child failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=lambda s: [int(t) for t in s.split(",")], default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5, help="child processes per build (default 5)")
    ap.add_argument("--samples", type=int, default=5, help="samples per row in each child (default 5)")
    ap.add_argument("--min-time", type=float, default=0.05, help="seconds per sample (default 0.05)")
    ap.add_argument("--quick", action="store_true", help="bench_ops' quick shapes, forward and fwd+bwd only")
    ap.add_argument("--out", help="also write the report to OUT.json (the data) and OUT.md (rendered from it)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(json.loads(args.child))

    from cnn_ext import _kernels

    if not (_kernels.cpu_supports("avx512") and "avx512" in _kernels._built()):
        why = "this CPU lacks AVX512F/VL/BW/DQ" if not _kernels.cpu_supports("avx512") else "no AVX-512 build"
        print(f"bench_isa: nothing to compare: {why} (CNN_EXT_KERNELS=avx512 would run the AVX2 kernels)")
        return 2
    spec = dict(quick=args.quick, threads=args.threads, samples=args.samples, min_time=args.min_time)
    results = {b: [] for b in BUILDS}
    for r in range(args.rounds):
        for build in (BUILDS if r % 2 == 0 else BUILDS[::-1]):
            got = run_child(build, spec)
            if got["isa"] != build:
                sys.exit(f"bench_isa: CNN_EXT_KERNELS={build} ran {got['isa']}")
            results[build].append(got["times"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    table = []
    for label in (label for label, _, _ in rows(args.quick, args.threads)):
        t = {b: float(np.median([run[label] for run in results[b]])) for b in BUILDS}
        table.append([label, C.fmt_time(t["avx2"]), C.fmt_time(t["avx512"]), f"{t['avx2'] / t['avx512']:.2f}"])
    result = _report.new_result("AVX-512 build vs AVX2 + FMA build", level=1, machine=C.machine_report())
    _report.add_table(result, None, ["row", "avx2", "avx512", "avx2 / avx512"], table,
                      intro=f"Medians over {args.rounds} child processes per build (each the median of {args.samples} "
                            "samples); avx2 / avx512 above 1: the AVX-512 build is faster.")
    C.write_results(result, args.out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
