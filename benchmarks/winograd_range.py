"""Where method="auto" takes Winograd: direct kernels against F(4x4, 3x3) on 3x3 stride-1 layers around the
boundary of auto's rule (cnn_ext._methods._winograd_better), forward, input gradient and kernel gradient, 1 and 2
threads, float32 and float64.

Inputs are a ReLU's output (half zeros), as in a network. Each cell is time(direct) / time(winograd) (> 1:
Winograd is faster), each time the best of 5 calls in each of 3 alternating rounds.

    python benchmarks/winograd_range.py [--dtype float32 float64] [--out benchmarks/results/winograd_range.md]
    python benchmarks/winograd_range.py --small-batches --out benchmarks/results/winograd_small_batch
"""
import argparse
import time

import numpy as np

import _common as C
import _report
import cnn_ext
from cnn_ext import _methods as M, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient

# (N, C_in, C_out, map): 14x14 maps below and above the small-map channel threshold, larger maps below, at and
# above the large-map threshold
SHAPES = [(64, 32, 64, 14), (64, 64, 64, 14), (64, 64, 128, 14), (64, 128, 128, 14), (64, 16, 32, 28),
          (32, 32, 32, 28), (32, 32, 64, 28), (32, 64, 64, 28), (32, 16, 32, 56), (32, 32, 32, 56), (32, 64, 64, 56)]
# --small-batches: around WINOGRAD_MIN_PIXELS (196 output pixels per 14x14 map, 784 per 28x28 map)
SMALL_BATCHES = [(1, 128, 128, 14), (2, 128, 128, 14), (4, 128, 128, 14), (8, 128, 128, 14), (1, 64, 64, 28),
                 (2, 64, 64, 28)]
ROUNDS, CALLS = 3, 5


def best_time(f):
    f()
    best = float("inf")
    for _ in range(CALLS):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def ratios(shape, dtype, threads):
    """{op: time(direct) / time(winograd)} on `threads` threads."""
    N, C_in, C_out, H = shape
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((N, C_in, H, H)), 0).astype(dtype)
    k = rng.standard_normal((C_out, C_in, 3, 3)).astype(dtype)
    b = np.zeros(C_out, dtype)
    dy = rng.standard_normal((N, C_out, H, H)).astype(dtype)
    ops = {"forward": lambda m: conv2d_forward(x, k, b, padding=1, method=m),
           "dX": lambda m: conv2d_input_gradient(dy, k, padding=1, input_size=H, method=m),
           "dK": lambda m: conv2d_kernel_gradient(dy, x, padding=1, kernel_size=3, method=m)}
    cnn_ext.set_num_threads(threads)
    out = {}
    for op, f in ops.items():
        times = {"direct": [], "winograd": []}
        for _ in range(ROUNDS):
            for method in times:
                times[method].append(best_time(lambda: f(method)))
        out[op] = min(times["direct"]) / min(times["winograd"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    ap.add_argument("--small-batches", action="store_true",
                    help="the layers of 128x128 14x14 and 64x64 28x28 on batches of 1 to 8 (WINOGRAD_MIN_PIXELS)")
    ap.add_argument("--out")
    args = ap.parse_args()
    result = _report.new_result("Where auto takes Winograd (direct / winograd time)", level=1,
                                machine=C.machine_report(), intro=__doc__.split("\n\n")[1].replace("\n", " "))
    for name in args.dtype:
        dtype = np.dtype(name)
        rows = []
        for shape in SMALL_BATCHES if args.small_batches else SHAPES:
            g = M.Geometry(shape[0], shape[1], shape[2], shape[3], shape[3], 3, 3, shape[3], shape[3], 1, 1,
                           (1, 1, 1, 1))
            cells = []
            for threads in (1, 2):
                r = ratios(shape, dtype, threads)
                cells += [f"{r[op]:.2f}" for op in ("forward", "dX", "dK")]
            auto = " / ".join("winograd" if choose("auto", g, dtype) is M.Method.WINOGRAD else "direct"
                              for choose in (M.forward, M.input_gradient, M.kernel_gradient))
            rows.append([str(shape), shape[1] * shape[2], *cells, auto])
            print(name, rows[-1], flush=True)
        _report.add_table(result, name, ["(N, C_in, C_out, map)", "C_in·C_out", "fwd 1t", "dX 1t", "dK 1t",
                                         "fwd 2t", "dX 2t", "dK 2t", "auto takes (fwd / dX / dK)"], rows)
    cnn_ext.set_num_threads(None)
    C.write_results(result, args.out)


if __name__ == "__main__":
    main()
