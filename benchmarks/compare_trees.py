"""Two builds of cnn_ext side by side: user-level workloads timed in child processes that alternate between the
two checkouts, round after round, and the ratio of their medians (new / old: below 1 is faster).

Each checkout must be built in place (`python setup.py build_ext --inplace`). Only the public API is used, so
any two versions compare. The workloads: the tutorial's MNIST network (training step, batch 16, float32 and
float64), the MNIST CNN of examples/train_mnist_cnn.py (Adam step, batch 64, float32), and large 3x3 layers
(Conv2D(64, 64, 3, 'same') on 64 x 64 x 28 x 28, forward + backward and forward alone, float32; Conv2D(128, 128,
3, 'same') on 32 x 128 x 14 x 14, forward + backward, float32 and float64, and unpadded in float32: its dX takes
the adjoint Winograd path).

    python benchmarks/compare_trees.py OLD_CHECKOUT NEW_CHECKOUT --threads 1,2 --rounds 4 --out FILE

writes FILE.json (the data) and FILE.md (rendered from it).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

import _report

CHILD = r'''
import json, sys, time, statistics
import numpy as np
import cnn_ext
from cnn_ext import Adam, Conv2D, Dense, Flatten, MaxPool2D, Network, ReLU, Sigmoid, softmax_cross_entropy
from threadpoolctl import threadpool_limits

threads, repeats, min_time, names = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4].split(",")
cnn_ext.set_num_threads(threads)
threadpool_limits(threads)
clock = time.process_time if threads == 1 else time.perf_counter  # 1 thread: CPU time, steadier under load


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


def layer(N, C_in, C_out, H, backward, padding="same"):
    def make(dtype):
        conv = Conv2D(C_in, C_out, 3, padding=padding, seed=0, dtype=dtype)
        x = np.random.default_rng(0).random((N, C_in, H, H)).astype(dtype)

        def step():
            y = conv.forward(x)
            if backward:
                conv.backward(np.ones_like(y))
        return step
    return make


WORK = {"tutorial step f32": (tutorial, np.float32), "tutorial step f64": (tutorial, np.float64),
        "MNIST CNN step f32": (mnist_cnn, np.float32),
        "Conv2D 64-64-3 28x28 fwd+bwd f32": (layer(64, 64, 64, 28, True), np.float32),
        "Conv2D 64-64-3 28x28 forward f32": (layer(64, 64, 64, 28, False), np.float32),
        "Conv2D 128-128-3 14x14 fwd+bwd f32": (layer(32, 128, 128, 14, True), np.float32),
        "Conv2D 128-128-3 14x14 fwd+bwd f64": (layer(32, 128, 128, 14, True), np.float64),
        "Conv2D 128-128-3 14x14 valid fwd+bwd f32": (layer(32, 128, 128, 14, True, 0), np.float32)}
out = {}
for name in names:
    make, dtype = WORK[name]
    step = make(dtype)
    step(); step()
    number, t = 1, 0.0
    while True:  # calibrate: a sample lasts at least min_time
        t0 = clock()
        for _ in range(number):
            step()
        t = clock() - t0
        if t >= min_time:
            break
        number *= 2
    samples = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(number):
            step()
        samples.append((clock() - t0) / number)
    out[name] = statistics.median(samples)
print(json.dumps(out))
'''

WORKLOADS = ["tutorial step f32", "tutorial step f64", "MNIST CNN step f32", "Conv2D 64-64-3 28x28 fwd+bwd f32",
             "Conv2D 64-64-3 28x28 forward f32", "Conv2D 128-128-3 14x14 fwd+bwd f32",
             "Conv2D 128-128-3 14x14 fwd+bwd f64", "Conv2D 128-128-3 14x14 valid fwd+bwd f32"]


def run_child(tree, threads, repeats, min_time):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    res = subprocess.run([sys.executable, "-P", "-c", CHILD, str(threads), str(repeats), str(min_time),
                          ",".join(WORKLOADS)], env=env, capture_output=True, text=True, cwd="/")
    if res.returncode:
        sys.exit(f"{tree}: the child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--out")
    args = ap.parse_args()
    intro = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average at start "
             f"{os.getloadavg()[0]:.2f}; 1 thread: process CPU time, 2 threads: wall time; medians of {args.repeats} "
             f"samples per child, children alternating old/new (order flipped every round); the ratio is the median "
             f"over rounds of new / old.")
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        got = {"old": [], "new": []}
        for r in range(args.rounds):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                got[which].append(run_child(getattr(args, which), threads, args.repeats, args.min_time))
        for name in WORKLOADS:
            old = [g[name] for g in got["old"]]
            new = [g[name] for g in got["new"]]
            ratios = [n / o for n, o in zip(new, old)]
            rows.append([name, threads, f"{statistics.median(old) * 1e3:.3f}", f"{statistics.median(new) * 1e3:.3f}",
                         f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"])
            print(rows[-1], flush=True)
    result = _report.new_result(f"{args.new} against {args.old}", level=1,
                                command=shlex.join(["python", "benchmarks/compare_trees.py", *sys.argv[1:]]),
                                intro=intro)
    _report.add_table(result, None, ["workload", "threads", "old (ms)", "new (ms)",
                                     "new / old (min-max over rounds)"], rows,
                      notes=f"load average at the end {os.getloadavg()[0]:.2f}")
    # not _common.write_results: this parent imports no cnn_ext (the children run each checkout's own)
    text = _report.render_markdown(result)
    sys.stdout.write(text)
    if args.out:
        _report.save(result, args.out)

if __name__ == "__main__":
    main()
