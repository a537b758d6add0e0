"""The AVX-512 build against the AVX2 + FMA build, side by side: CNN_EXT_KERNELS=avx2 vs avx512.

The kernel build is chosen once, at import, so each build runs in its own child process. A round starts one
child per build, in an order that alternates every round (drifting machine load hits both alike); a child
warms every row up, then times each row ``--samples`` times (a sample is the mean of back-to-back calls
lasting about ``--min-time``) and reports the median. The table gives, per row, the median over rounds of
each build's time and the ratio avx2 / avx512 (above 1: AVX-512 faster). Rows: bench_ops.py's shapes and
operations (both dtypes, ``--threads``), forward + backward of pooling and depthwise layers, and the MNIST CNN
training step of bench_mnist_cnn.py.

Needs a CPU with AVX512F/VL/BW/DQ and a build with the variant; otherwise it says so and exits with status 2
(the two children would run the same kernels).

``--against auto`` times what ``auto`` picks instead of the whole AVX-512 build: the AVX-512 twins except those
``AUTO_KEEPS_AVX2`` keeps on AVX2 (the check of that table).

    python benchmarks/bench_isa.py [--quick] [--threads 1,2] [--rounds 5] [--against avx512|auto] [--out OUT]
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

OPS = ("forward", "input_grad", "kernel_grad", "fwd+bwd")


# forward + backward of the other twin modules' layers: (label, layer name, its arguments, input shape)
LAYERS = (
    ("MaxPool2D(2)", "MaxPool2D", dict(kernel_size=2), (64, 32, 28, 28)),
    ("MaxPool2D(3, stride=2)", "MaxPool2D", dict(kernel_size=3, stride=2), (64, 64, 28, 28)),
    ("AvgPool2D(2)", "AvgPool2D", dict(kernel_size=2), (64, 32, 28, 28)),
    ("GlobalAvgPool2D", "GlobalAvgPool2D", {}, (64, 64, 7, 7)),
    ("depthwise Conv2D(32, 32, 3, groups=32)", "Conv2D",
     dict(c_in=32, c_out=32, kernel_size=3, padding=1, groups=32), (64, 32, 28, 28)),
    ("depthwise Conv2D(64, 64, 3, groups=64)", "Conv2D",
     dict(c_in=64, c_out=64, kernel_size=3, padding=1, groups=64), (64, 64, 14, 14)),
    ("depthwise Conv2D(128, 128, 5, groups=128)", "Conv2D",
     dict(c_in=128, c_out=128, kernel_size=5, padding=2, groups=128), (32, 128, 28, 28)),
)


def rows(quick, thread_counts):
    """[(label, kind, spec)]: conv rows (shape, dtype, op, threads), pooling and depthwise layers (index into
    LAYERS, dtype, threads) and the MNIST step (batch, threads)."""
    shapes = bench_ops.QUICK_SHAPES if quick else bench_ops.SHAPES
    out = []
    for n in thread_counts:
        for dtype in ("float32", "float64"):
            for shape in shapes:
                for op in (("forward", "fwd+bwd") if quick else OPS):
                    out.append((f"{shape} {dtype} {op}, {n} thr", "conv", (shape, dtype, op, n)))
            for i, (name, *_) in enumerate(() if quick else LAYERS):
                out.append((f"{name} {dtype} fwd+bwd, {n} thr", "layer", (i, dtype, n)))
        out.append((f"MNIST CNN step (batch 64), {n} thr", "mnist", (64, n)))
    return out


def _layer_fn(i, dtype):
    import cnn_ext

    _, cls, kwargs, shape = LAYERS[i]
    layer = getattr(cnn_ext, cls)(**kwargs, **(dict(dtype=dtype, seed=0) if cls == "Conv2D" else {}))
    rng = np.random.default_rng(i)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(layer.forward(x).shape).astype(dtype)

    def step():
        layer.forward(x)
        layer.backward(dy)
    return step


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
    make = {"conv": lambda s: _conv_fn(*s[:3]), "layer": lambda s: _layer_fn(*s[:2]), "mnist": lambda s: _mnist_fn(s[0])}
    fns = {label: (make[kind](s), s[-1]) for label, kind, s in todo}
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
    ap.add_argument("--against", choices=("avx512", "auto"), default="avx512",
                    help="the whole AVX-512 build (default) or auto's choice of builds per module")
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
    builds = ("avx2", args.against)
    results = {b: [] for b in builds}
    variants = {}
    for r in range(args.rounds):
        for build in (builds if r % 2 == 0 else builds[::-1]):
            got = run_child(build, spec)
            if got["isa"] != build and build != "auto":
                sys.exit(f"bench_isa: CNN_EXT_KERNELS={build} ran {got['isa']}")
            variants[build] = got["variants"]
            results[build].append(got["times"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    other = args.against
    table = []
    for label in (label for label, _, _ in rows(args.quick, args.threads)):
        t = {b: float(np.median([run[label] for run in results[b]])) for b in builds}
        table.append([label, C.fmt_time(t["avx2"]), C.fmt_time(t[other]), f"{t['avx2'] / t[other]:.2f}"])
    title = "AVX-512 build vs AVX2 + FMA build" if other == "avx512" else "auto's builds vs AVX2 + FMA build"
    result = _report.new_result(title, level=1, machine=C.machine_report())
    picked = ", ".join(f"{name} {v}" for name, v in variants[other].items())
    _report.add_table(result, None, ["row", "avx2", other, f"avx2 / {other}"], table,
                      intro=f"Medians over {args.rounds} child processes per build (each the median of {args.samples} "
                            f"samples); avx2 / {other} above 1: {other} is faster. {other}'s modules: {picked}.")
    C.write_results(result, args.out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
