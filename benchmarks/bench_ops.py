"""Convolution operations of cnn_ext against its peers, side by side in one run (issue 5).

Peers
  cnn_ext   the package (cnn_ext.conv2d_* ; threads via cnn_ext.set_num_threads)
  torch     PyTorch CPU: F.conv2d, torch.nn.grad.conv2d_weight / conv2d_input, aten.convolution_backward
            for forward+backward (what autograd calls); same dtype; dK and dB divided by N (batch means)
  im2col    the plain NumPy approach: sliding_window_view + one copy + numpy.matmul / tensordot
  tutorial  the reference tutorial's loops over samples and channels with scipy.signal.correlate2d /
            convolve2d (single-threaded; on big shapes timed on a subset of the batch and scaled by N/n)

Every peer's answers are checked against cnn_ext (assert_allclose) before anything is timed.

    python benchmarks/bench_ops.py --quick            # ~1-2 minutes
    python benchmarks/bench_ops.py --out results.md   # the full run: results.json + results.md (benchmarks/README.md)
"""
import argparse
import os
import subprocess
import sys
import time
import tracemalloc

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.testing import assert_allclose
from scipy import signal

import _common as C
import _report
from _common import torch

import cnn_ext

SHAPES = [(16, 1, 4, 3, 2), (16, 1, 4, 28, 5), (32, 3, 8, 32, 3), (64, 16, 32, 28, 3),
          (64, 64, 64, 28, 3), (16, 8, 16, 64, 7), (32, 64, 64, 56, 3), (32, 128, 128, 14, 3)]
# the 3x3 layers of issue 20 (Winograd): forward >= 1.5x torch, forward + backward >= 1.4x, float64 >= 3x
ISSUE20_SHAPES = [(64, 16, 32, 28, 3), (64, 64, 64, 28, 3), (32, 64, 64, 56, 3), (32, 128, 128, 14, 3)]
QUICK_SHAPES = [(16, 1, 4, 3, 2), (16, 1, 4, 28, 5), (32, 3, 8, 32, 3)]
OPS = ["forward", "kernel_grad", "bias_grad", "input_grad", "fwd+bwd"]
PEERS = ["cnn_ext", "torch", "im2col", "tutorial"]  # the default; also "winograd", "direct": cnn_ext forced
LARGE_GFLOP = 0.1  # a shape is "large" when one forward pass is at least this many GFLOP
MEMORY_SHAPE = (64, 64, 64, 28, 3)
TOL = {np.float64: 1e-9, np.float32: 2e-4}
BUSY = 0.3  # other processes' load (cores) above which a multi-threaded row is flagged unreliable
# The row's own GEMM peak: a numpy.matmul timed in the same interleaved rounds as the row's peers. This VM's
# speed moves with its host's load by 20-30 % from one minute to the next (float32 2-thread GEMM read 161
# and 206 GFLOP/s in two runs 5 minutes apart), so a peak taken once at the start judged 2-thread rows against
# whatever the host was doing then.
GEMM_REF = "GEMM"


# ----------------------------------------------------------------------------------------------
# the peers: each returns {op: zero-argument callable}; fwd+bwd returns (y, dK, dB, dX)
# ----------------------------------------------------------------------------------------------

def cnn_ext_ops(x, k, b, dy, method="auto"):
    def fwd_bwd():
        return (cnn_ext.conv2d_forward(x, k, b, method=method), cnn_ext.conv2d_kernel_gradient(dy, x, method=method),
                cnn_ext.conv2d_bias_gradient(dy), cnn_ext.conv2d_input_gradient(dy, k, method=method))

    return {
        "forward": lambda: cnn_ext.conv2d_forward(x, k, b, method=method),
        "kernel_grad": lambda: cnn_ext.conv2d_kernel_gradient(dy, x, method=method),
        "bias_grad": lambda: cnn_ext.conv2d_bias_gradient(dy),
        "input_grad": lambda: cnn_ext.conv2d_input_gradient(dy, k, method=method),
        "fwd+bwd": fwd_bwd,
    }


def winograd_ops(x, k, b, dy):
    """cnn_ext with method='winograd' (3x3 kernels only: None otherwise)."""
    return cnn_ext_ops(x, k, b, dy, "winograd") if k.shape[2:] == (3, 3) else None


def torch_ops(x, k, b, dy):
    F = torch.nn.functional
    tx, tk, tb, tdy = (torch.from_numpy(a) for a in (x, k, b, dy))
    N, C_out = x.shape[0], k.shape[0]

    def fwd_bwd():
        y = F.conv2d(tx, tk, tb)
        dX, dK, dB = torch.ops.aten.convolution_backward(
            tdy, tx, tk, [C_out], [1, 1], [0, 0], [1, 1], False, [0, 0], 1, [True, True, True])
        return y, dK.div_(N), dB.div_(N), dX

    return {
        "forward": lambda: F.conv2d(tx, tk, tb),
        "kernel_grad": lambda: torch.nn.grad.conv2d_weight(tx, tk.shape, tdy).div_(N),
        "bias_grad": lambda: tdy.sum(dim=(0, 2, 3)).div_(N),
        "input_grad": lambda: torch.nn.grad.conv2d_input(tx.shape, tk, tdy),
        "fwd+bwd": fwd_bwd,
    }


def im2col_ops(x, k, b, dy):
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = k.shape
    OH, OW = H - KH + 1, W - KW + 1
    k2 = k.reshape(C_out, C_in * KH * KW)
    dy3 = dy.reshape(N, C_out, OH * OW)

    def cols():
        v = sliding_window_view(x, (KH, KW), axis=(2, 3))  # (N, C_in, OH, OW, KH, KW), a view
        return v.transpose(0, 1, 4, 5, 2, 3).reshape(N, C_in * KH * KW, OH * OW)  # the copy

    def forward(c=None):
        y = np.matmul(k2, cols() if c is None else c)
        y += b[:, None]
        return y.reshape(N, C_out, OH, OW)

    def kernel_grad(c=None):
        return np.tensordot(dy3, cols() if c is None else c, axes=([0, 2], [0, 2])).reshape(k.shape) / N

    def input_grad():
        dcols = np.matmul(k2.T, dy3).reshape(N, C_in, KH, KW, OH, OW)
        dx = np.zeros_like(x)
        for kh in range(KH):
            for kw in range(KW):
                dx[:, :, kh:kh + OH, kw:kw + OW] += dcols[:, :, kh, kw]
        return dx

    def bias_grad():
        return dy.sum(axis=(0, 2, 3)) / N

    def fwd_bwd():
        c = cols()
        return forward(c), kernel_grad(c), bias_grad(), input_grad()

    return {"forward": forward, "kernel_grad": kernel_grad, "bias_grad": bias_grad,
            "input_grad": input_grad, "fwd+bwd": fwd_bwd}


def tutorial_ops(x, k, b, dy):
    """The tutorial's Convolutional layer, written out for a batch (loops over n, j, i)."""
    N, C_in, H, W = x.shape
    C_out = k.shape[0]
    OH, OW = dy.shape[2], dy.shape[3]

    def forward():
        y = np.empty((N, C_out, OH, OW), dtype=x.dtype)
        for n in range(N):
            for j in range(C_out):
                y[n, j] = b[j]
                for i in range(C_in):
                    y[n, j] += signal.correlate2d(x[n, i], k[j, i], "valid")
        return y

    def kernel_grad():
        dk = np.zeros(k.shape, dtype=x.dtype)
        for n in range(N):
            for j in range(C_out):
                for i in range(C_in):
                    dk[j, i] += signal.correlate2d(x[n, i], dy[n, j], "valid")
        return dk / N

    def bias_grad():
        return dy.sum(axis=(0, 2, 3)) / N

    def input_grad():
        dx = np.zeros(x.shape, dtype=x.dtype)
        for n in range(N):
            for j in range(C_out):
                for i in range(C_in):
                    dx[n, i] += signal.convolve2d(dy[n, j], k[j, i], "full")
        return dx

    def fwd_bwd():
        y = forward()
        dk = np.zeros(k.shape, dtype=x.dtype)
        dx = np.zeros(x.shape, dtype=x.dtype)
        for n in range(N):  # the tutorial's backward: both gradients in one loop
            for j in range(C_out):
                for i in range(C_in):
                    dk[j, i] += signal.correlate2d(x[n, i], dy[n, j], "valid")
                    dx[n, i] += signal.convolve2d(dy[n, j], k[j, i], "full")
        return y, dk / N, bias_grad(), dx

    return {"forward": forward, "kernel_grad": kernel_grad, "bias_grad": bias_grad,
            "input_grad": input_grad, "fwd+bwd": fwd_bwd}


PEER_OPS = {"cnn_ext": cnn_ext_ops, "torch": torch_ops, "im2col": im2col_ops, "tutorial": tutorial_ops,
            "winograd": winograd_ops, "direct": lambda x, k, b, dy: cnn_ext_ops(x, k, b, dy, "direct")}


# ----------------------------------------------------------------------------------------------
# cases, checks, flops
# ----------------------------------------------------------------------------------------------

def make_case(shape, dtype, seed=0):
    N, C_in, C_out, H, K = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C_in, H, H), dtype=dtype)
    k = rng.standard_normal((C_out, C_in, K, K), dtype=dtype)
    b = rng.standard_normal(C_out, dtype=dtype)
    dy = rng.standard_normal((N, C_out, H - K + 1, H - K + 1), dtype=dtype)
    return x, k, b, dy


def conv_gflop(shape):
    N, C_in, C_out, H, K = shape
    O = H - K + 1
    return 2.0 * N * C_out * C_in * K * K * O * O / 1e9


def op_gflop(shape, op):
    N, C_in, C_out, H, K = shape
    O = H - K + 1
    bias = N * C_out * O * O / 1e9
    return {"forward": conv_gflop(shape) + bias, "kernel_grad": conv_gflop(shape),
            "bias_grad": bias, "input_grad": conv_gflop(shape), "fwd+bwd": 3 * conv_gflop(shape) + 2 * bias}[op]


def is_large(shape):
    return conv_gflop(shape) >= LARGE_GFLOP


def check(name, op, got, ref, dtype):
    """Assert a peer's answer equals cnn_ext's (relative to the answer's scale)."""
    got = got if isinstance(got, tuple) else (got,)
    ref = ref if isinstance(ref, tuple) else (ref,)
    for g, r in zip(got, ref):
        g = g.numpy() if torch is not None and isinstance(g, torch.Tensor) else np.asarray(g)
        r = np.asarray(r)
        scale = max(float(np.abs(r).max()), 1e-30)
        assert_allclose(g, r, rtol=TOL[dtype], atol=TOL[dtype] * scale,
                        err_msg=f"{name} {op} disagrees with cnn_ext")


# ----------------------------------------------------------------------------------------------
# one configuration: shape x dtype x threads, every op
# ----------------------------------------------------------------------------------------------

def run_config(shape, dtype, nthreads, ops, peers, repeats, min_time, tutorial_budget, verify_tutorial,
               clock=time.perf_counter, gemm_size=None):
    """Returns {op: {peer: Stats}} for one shape, dtype and thread count. With gemm_size, the rows of large
    shapes (but not the bias gradient) also time a gemm_size² numpy.matmul interleaved with the peers: the
    row's own GEMM peak (key GEMM_REF), measured in the same rounds as the operations it judges."""
    x, k, b, dy = make_case(shape, dtype)
    N = shape[0]
    results = {}
    if gemm_size and is_large(shape):
        rng = np.random.default_rng(0)
        ga, gb = (rng.standard_normal((gemm_size, gemm_size)).astype(dtype) for _ in range(2))
        gc = np.empty((gemm_size, gemm_size), dtype=dtype)  # written in place: no 9-19 MB allocation per call
    with C.threads(nthreads):
        fns = {p: PEER_OPS[p](x, k, b, dy) for p in peers if p != "tutorial"}
        fns = {p: table for p, table in fns.items() if table is not None}  # a forced method that cannot run
        for op in ops:
            ref = fns["cnn_ext"][op]()
            for p, table in fns.items():
                if p != "cnn_ext":
                    check(p, op, table[op](), ref, dtype)
            timed = {p: fns[p][op] for p in fns}
            notes, scale, caps = {}, {}, {}
            if "tutorial" in peers:
                fn, m = _tutorial_fn(x, k, b, dy, op, tutorial_budget)
                if verify_tutorial:
                    sub = cnn_ext_ops(x[:m], k, b, dy[:m])[op]()
                    check("tutorial", op, fn(), sub, dtype)
                timed["tutorial"] = fn
                scale["tutorial"] = N / m
                if m < N:
                    notes["tutorial"] = f"~ (n={m} of {N}, ×{N / m:.3g})"
                caps["tutorial"] = repeats if C.time_call(fn, 1) < 0.05 else min(repeats, 3)
            if gemm_size and is_large(shape) and op != "bias_grad":
                timed[GEMM_REF] = lambda: np.matmul(ga, gb, out=gc)
            for fn in timed.values():  # warm-up
                fn()
            stats = C.interleaved(timed, repeats, min_time, caps, clock)
            for p, s in stats.items():
                if p in scale:
                    s, load = C.Stats(s.samples * scale[p]), s.other_load
                    s.other_load = load
                s.note = notes.get(p, "")
                stats[p] = s
            results[op] = stats
    return results


def _tutorial_fn(x, k, b, dy, op, budget):
    """The tutorial peer on the largest batch prefix whose call fits the time budget (linear in N)."""
    N = x.shape[0]
    t1 = C.time_call(tutorial_ops(x[:1], k, b, dy[:1])[op], 1)
    m = N if t1 * N <= budget else max(1, min(N, int(budget / max(t1, 1e-9))))
    return tutorial_ops(x[:m], k, b, dy[:m])[op], m


# ----------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------

def targets_for(shape, op, dtype, nthreads, stats, peak):
    """[(target, met?, margin text)] for one row."""
    out = []
    cnn = stats["cnn_ext"].median
    if "torch" in stats:
        bar = 0.9 if (is_large(shape) and dtype == np.float32) else 1.0
        r = stats["torch"].median / cnn
        out.append((f"≥{bar:g}× torch", r >= bar, f"{r:.2f}× vs bar {bar:g}"))
    if "torch" in stats and shape in ISSUE20_SHAPES and op in ("forward", "fwd+bwd"):
        bar = 3.0 if dtype == np.float64 else 1.5 if op == "forward" else 1.4
        r = stats["torch"].median / cnn
        out.append((f"issue 20: ≥{bar:g}× torch", r >= bar, f"{r:.2f}× vs bar {bar:g}"))
    if is_large(shape) and op != "bias_grad" and peak:
        pct = 100 * op_gflop(shape, op) / cnn / peak
        out.append(("≥70% GEMM peak", pct >= 70, f"{pct:.0f}% of peak"))
    if shape == (16, 1, 4, 28, 5) and op == "fwd+bwd" and dtype == np.float64:
        out.append(("< 0.25 ms", cnn < 0.25e-3, f"{cnn * 1e3:.3f} ms"))
        if "tutorial" in stats:
            r = stats["tutorial"].median / cnn
            out.append(("≥60× tutorial", r >= 60, f"{r:.0f}×"))
    return out


# ----------------------------------------------------------------------------------------------
# memory of the forward + backward pass
# ----------------------------------------------------------------------------------------------

def _proc_status_kb(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def memory_child(peer, dtype_name):
    """Run in a fresh process: peak memory of one forward+backward of MEMORY_SHAPE for one peer.

    Prints: tracemalloc peak, resident-set peak growth, output bytes, input-x bytes. The resident peak
    (VmHWM) is reset through /proc/self/clear_refs just before the call, so imports do not hide it.
    """
    dtype = np.dtype(dtype_name).type
    x, k, b, dy = make_case(MEMORY_SHAPE, dtype)
    fn = PEER_OPS[peer](x, k, b, dy)["fwd+bwd"]
    C.threads(2).__enter__()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss0 = _proc_status_kb("VmRSS")
    except OSError:
        rss0 = None
    tracemalloc.start()
    out = fn()
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    grown = (_proc_status_kb("VmHWM") - rss0) * 1024 if rss0 is not None else -1
    out_bytes = sum(int(np.prod(o.shape)) * x.itemsize for o in out)
    print(f"{traced_peak} {grown} {out_bytes} {x.nbytes}")


def memory_report(result, dtypes, peers):
    """Peak memory of MEMORY_SHAPE forward+backward for each peer (fresh subprocess each), as two tables of result."""
    rows = []
    here = os.path.abspath(__file__)
    for dtype in dtypes:
        for peer in [p for p in peers if p in ("cnn_ext", "torch", "im2col")]:
            res = subprocess.run([sys.executable, here, "--memory-child", peer, np.dtype(dtype).name],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                rows.append([peer, np.dtype(dtype).name, "failed", res.stderr.strip()[-200:], "", "", ""])
                continue
            traced, rss, out_b, x_b = (int(v) for v in res.stdout.split())
            mb = lambda v: f"{v / 2**20:.1f} MB"
            traced_txt = mb(traced) if peer != "torch" else "(not visible)"
            extra = traced - out_b if peer != "torch" else rss - out_b
            verdict = "met" if extra <= x_b else "MISSED"
            if peer != "cnn_ext":
                verdict = "—"
            rows.append([peer, np.dtype(dtype).name, traced_txt, mb(rss), mb(out_b),
                         f"{mb(extra)} ({extra / x_b:.2f}× x)", verdict])
    per_op = []
    for dtype in dtypes:
        x, k, b, dy = make_case(MEMORY_SHAPE, dtype)
        with C.threads(2):
            for op, fn in cnn_ext_ops(x, k, b, dy).items():
                tracemalloc.start()
                out = fn()
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                out_b = sum(o.nbytes for o in (out if isinstance(out, tuple) else (out,)))
                extra = peak - out_b
                per_op.append([op, np.dtype(dtype).name, f"{peak / 2**20:.1f} MB", f"{out_b / 2**20:.1f} MB",
                               f"{extra / 2**20:.2f} MB ({extra / x.nbytes:.3f}× x)",
                               "met" if extra <= x.nbytes else "MISSED"])
    _report.add_table(result, f"Memory: cnn_ext per operation, shape {MEMORY_SHAPE}, 2 threads (tracemalloc)",
                      ["op", "dtype", "peak allocated", "outputs", "beyond outputs (× input x size)",
                       "≤ outputs + one batch buffer"], per_op)
    notes = ("tracemalloc counts NumPy allocations only (PyTorch's allocator is invisible to it); 'resident peak "
             "growth' is the process's resident high-water mark (VmHWM, reset via /proc/self/clear_refs just "
             "before the call) minus its resident size before it, in a fresh process with the inputs already "
             "allocated (memory the allocator had already mapped is not counted again). 'Beyond outputs' uses "
             "tracemalloc where it sees the allocations, else the resident growth; the target (cnn_ext only) "
             "counts as met when that is at most the size of the input batch x, i.e. the outputs plus one "
             "working buffer no larger than one batch.")
    _report.add_table(result, f"Peak memory of one forward + backward, shape {MEMORY_SHAPE}, 2 threads",
                      ["peer", "dtype", "tracemalloc peak", "resident peak growth", "outputs (y, dK, dB, dX)",
                       "beyond outputs (× input x size)", "target: ≤ outputs + one batch buffer"], rows, notes=notes)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def parse_shape(text):
    vals = tuple(int(v) for v in text.replace("x", ",").split(","))
    if len(vals) != 5:
        raise argparse.ArgumentTypeError(f"a shape is N,C_in,C_out,H,K, got {text!r}")
    return vals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="a short run: the 3 smaller shapes, 3 repeats, short samples (~1-2 min)")
    ap.add_argument("--shapes", type=lambda s: [parse_shape(t) for t in s.split(";")],
                    help="';'-separated N,C_in,C_out,H,K (default: the six shapes of issue 5)")
    ap.add_argument("--ops", type=C.parse_list, default=OPS, help=f"comma-separated subset of {OPS}")
    ap.add_argument("--dtypes", type=C.parse_list, default=["float32", "float64"])
    ap.add_argument("--threads", type=lambda s: C.parse_list(s, int), default=[1, 2])
    ap.add_argument("--peers", type=C.parse_list, default=PEERS,
                    help=f"comma-separated subset of {list(PEER_OPS)}")
    ap.add_argument("--repeats", type=int, default=None, help="samples per peer (default 7; 3 with --quick)")
    ap.add_argument("--min-time", type=float, default=None,
                    help="seconds per sample, calls are repeated to fill it (default 0.02; 0.005 with --quick)")
    ap.add_argument("--tutorial-budget", type=float, default=None,
                    help="seconds one tutorial call may take; beyond, a batch prefix is timed and scaled "
                         "(default 1.0; 0.1 with --quick)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="'cpu': time 1-thread rows by the calling thread's CPU time, which other processes on "
                         "the shared machine do not inflate (2-thread rows are always wall time)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each shape/dtype/threads block, wait up to this long for other processes to "
                         "use under 0.25 cores (the machine is shared; default 0: do not wait)")
    ap.add_argument("--out", help="also write the report to OUT.json (the data) and OUT.md (rendered from it)")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return 0

    shapes = args.shapes or (QUICK_SHAPES if args.quick else SHAPES)
    repeats = args.repeats or (3 if args.quick else 7)
    min_time = args.min_time if args.min_time is not None else (0.005 if args.quick else 0.02)
    budget = args.tutorial_budget if args.tutorial_budget is not None else (0.1 if args.quick else 1.0)
    peers = ["cnn_ext"] + [p for p in args.peers if p != "cnn_ext" and (p != "torch" or torch is not None)]
    for op in args.ops:
        if op not in OPS:
            ap.error(f"unknown op {op!r}; choose from {OPS}")
    dtypes = [np.dtype(d).type for d in args.dtypes]
    t_start = time.time()

    result = _report.new_result("cnn_ext convolution benchmark", machine=C.machine_report())

    peaks = {}
    peak_rows, row_peaks = [], []
    gemm_size = 1024 if args.quick else 1536
    for dtype in dtypes:
        for t in args.threads:
            g = C.gemm_peak(dtype, t, size=gemm_size, repeats=repeats)
            peaks[(dtype, t)] = max(g.values())
            peak_rows.append([np.dtype(dtype).name, t] + [f"{g.get(n, float('nan')):.1f}"
                                                          for n in ("numpy.matmul", "torch.mm")])
    _report.add_table(result, f"Measured GEMM peak at the start ({gemm_size}² products, GFLOP/s, median; the larger "
                              "one is the 100% of rows without their own GEMM reference)",
                      ["dtype", "threads", "numpy.matmul (OpenBLAS)", "torch.mm (MKL)"], peak_rows)

    header = ["shape (N,Cin,Cout,H,K)", "op", "dtype", "thr", "cnn_ext (IQR)"]
    for p in peers[1:]:
        header += [p, f"{p}/cnn_ext"]
    header += ["cnn_ext GFLOP/s (% peak)", "torch GFLOP/s (% peak)", "other load", "targets"]
    rows, verdicts = [], []
    for shape in shapes:
        for dtype in dtypes:
            for i, t in enumerate(args.threads):
                if args.wait_quiet > 0:
                    C.wait_quiet(args.wait_quiet)
                clock = time.thread_time if (args.clock == "cpu" and t == 1) else time.perf_counter
                res = run_config(shape, dtype, t, args.ops, peers, repeats, min_time, budget,
                                 verify_tutorial=(i == 0), clock=clock, gemm_size=gemm_size)
                for op in args.ops:
                    st = res[op]
                    cnn = st["cnn_ext"]
                    row = [str(shape), op, np.dtype(dtype).name, t,
                           f"{C.fmt_time(cnn.median)} (±{cnn.spread_pct() / 2:.0f}%)"]
                    for p in peers[1:]:
                        s = st.get(p)
                        row += ["—", "—"] if s is None else [C.fmt_time(s.median) + (f" {s.note}" if s.note else ""),
                                                             C.fmt_ratio(s.median / cnn.median)]
                    gf = op_gflop(shape, op)
                    if GEMM_REF in st:
                        peak = 2.0 * gemm_size ** 3 / st[GEMM_REF].median / 1e9
                        row_peaks.append([str(shape), op, np.dtype(dtype).name, t, f"{peak:.1f}",
                                          f"±{st[GEMM_REF].spread_pct() / 2:.0f}%",
                                          f"{100 * peak / peaks[(dtype, t)]:.0f}%"])
                    else:
                        peak = peaks[(dtype, t)]
                    row.append(f"{gf / cnn.median:.1f} ({100 * gf / cnn.median / peak:.0f}%)")
                    row.append(f"{gf / st['torch'].median:.1f} ({100 * gf / st['torch'].median / peak:.0f}%)"
                               if "torch" in st else "—")
                    row.append(f"{cnn.other_load:.2f}")
                    tg = targets_for(shape, op, dtype, t, st, peak)
                    busy = t > 1 and cnn.other_load > BUSY
                    row.append("; ".join(f"{name}: {'met' if ok else 'MISSED'} ({m})" for name, ok, m in tg)
                               + (" [busy: unreliable]" if busy and tg else ""))
                    for name, ok, m in tg:
                        verdicts.append((shape, op, np.dtype(dtype).name, t, name, ok, m, busy))
                    rows.append(row)
                print(f"# done {shape} {np.dtype(dtype).name} {t} thr ({time.time() - t_start:.0f} s)",
                      file=sys.stderr, flush=True)

    clock_note = ("1-thread rows: CPU time of the calling thread (--clock cpu); 2-thread rows: wall time"
                  if args.clock == "cpu" else "wall time")
    notes = ("'~ (n=m of N, ×s)': the tutorial code on the first m samples only, time scaled by N/m (its cost "
             "is linear in N); it is single-threaded whatever the thread setting. 'other load': cores that other "
             "processes kept busy during that row's measurement (the 2 cores are shared; a 2-thread result "
             "with load above ~0.3 is unreliable). 'Large' shapes "
             f"(≥ {LARGE_GFLOP} GFLOP per forward): {[s for s in shapes if is_large(s)]}.")
    _report.add_table(result, f"Timings (median of {repeats} interleaved repeats, {clock_note}; ratio = peer time / "
                              "cnn_ext time, > 1 means cnn_ext is faster; ± is half the IQR relative to the median)",
                      header, rows, notes=notes)

    if row_peaks:
        _report.add_table(result, f"GEMM peak of each large-shape row ({gemm_size}² numpy.matmul timed in the same "
                                  "interleaved rounds as that row's peers; the row's 100%)",
                          ["shape", "op", "dtype", "thr", "GFLOP/s", "IQR/2", "vs the start's peak"], row_peaks)

    met = [v for v in verdicts if v[5]]
    missed = [v for v in verdicts if not v[5]]
    n_busy = sum(v[7] for v in missed)
    targets_title = (f"Targets of issue 5: {len(met)} met, {len(missed)} MISSED"
                     + (f" ({n_busy} of the misses measured on 2 threads next to a busy neighbour, "
                        f"other load > {BUSY})" if n_busy else ""))
    by_target = {}
    for v in verdicts:
        by_target.setdefault(v[4], []).append(v)
    summary = []
    for name, vs in by_target.items():
        n_ok = sum(v[5] for v in vs)
        worst = (max if name.startswith("<") else min)(vs, key=lambda v: _margin_value(v[6]))
        summary.append([name, f"{n_ok}/{len(vs)}", f"{worst[6]} at {worst[0]} {worst[1]} {worst[2]} {worst[3]} thr"])
    missed_notes = "\n".join(["MISSED:", ""] + [f"- {v[0]} {v[1]} {v[2]} {v[3]} thr — {v[4]}: {v[6]}"
                                                 + (" [busy: unreliable]" if v[7] else "") for v in missed])
    _report.add_table(result, targets_title, ["target", "met", "worst case"], summary,
                      notes=missed_notes if missed else "")

    if not args.no_memory:
        memory_report(result, dtypes, peers)
    result["notes"] = (f"Total run time {time.time() - t_start:.0f} s; load average at the end "
                       f"{os.getloadavg()[0]:.2f}.")
    C.write_results(result, args.out, argv)
    return 0


def _margin_value(text):
    try:
        return float(text.split("×")[0].split("%")[0].split(" ms")[0])
    except ValueError:
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
