"""Depthwise (groups == C_in) and dilated convolutions: cnn_ext against PyTorch, side by side in one run.

For each operation the two peers are checked against each other first, then timed round-robin
(``_common.interleaved``); the table gives medians of the repeats and the ratio torch / cnn_ext (> 1: cnn_ext
is faster). Only ratios mean anything on a shared machine.

    python benchmarks/bench_groups.py [--repeats 7] [--threads 1,2] [--clock cpu] [--out benchmarks/results/groups.md]

``--clock cpu`` times 1-thread rows by the calling thread's CPU time (time.thread_time): on a loaded shared
machine that is what the call would take alone; rows of more threads always take wall time.
"""
import os
import sys
import time

import numpy as np
import _common as C
import _report
from _common import torch

import cnn_ext

# (label, N, C_in, C_out, H, K, groups, dilation, padding)
CASES = [
    ("depthwise 3x3", 32, 64, 64, 28, 3, 64, 1, 1),
    ("depthwise 3x3, dilation 2", 32, 64, 64, 28, 3, 64, 2, 2),
    ("dense 3x3, dilation 2", 32, 64, 64, 28, 3, 1, 2, 2),
]


def peers(case, dtype):
    """{op: {"cnn_ext": fn, "torch": fn}} for the forward and both gradients, checked against each other."""
    _, N, C_in, C_out, H, K, G, D, P = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
    k = rng.standard_normal((C_out, C_in // G, K, K)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    opts = dict(stride=1, padding=P, dilation=D, groups=G)
    y = cnn_ext.conv2d_forward(x, k, b, **opts)
    dy = rng.standard_normal(y.shape).astype(dtype)
    xt, kt, bt, dyt = (torch.from_numpy(a) for a in (x, k, b, dy))
    fns = {
        "forward": {"cnn_ext": lambda: cnn_ext.conv2d_forward(x, k, b, **opts),
                    "torch": lambda: torch.nn.functional.conv2d(xt, kt, bt, **opts)},
        "input_grad": {"cnn_ext": lambda: cnn_ext.conv2d_input_gradient(dy, k, input_size=(H, H), **opts),
                       "torch": lambda: torch.nn.grad.conv2d_input(xt.shape, kt, dyt, **opts)},
        "kernel_grad": {"cnn_ext": lambda: cnn_ext.conv2d_kernel_gradient(dy, x, kernel_size=K, **opts),
                        "torch": lambda: torch.nn.grad.conv2d_weight(xt, kt.shape, dyt, **opts)},
    }
    tol = dict(rtol=1e-3, atol=1e-2) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)
    for op, pair in fns.items():
        ours, theirs = pair["cnn_ext"](), pair["torch"]().numpy()
        if op == "kernel_grad":
            theirs = theirs / N  # cnn_ext's operation gives the batch mean
        np.testing.assert_allclose(ours, theirs, **tol, err_msg=f"{case[0]} {op}")
    return fns


def main(argv=None):
    args = C.side_by_side_parser(__doc__, ("float32",)).parse_args(argv)
    if torch is None:
        sys.exit("bench_groups.py compares with PyTorch: install torch")
    result = _report.new_result("Grouped and dilated convolutions: cnn_ext vs PyTorch", machine=C.machine_report())
    rows = []
    _report.add_table(result, None, ["case (N, C_in, C_out, H, K)", "op", "dtype", "threads", "cnn_ext", "torch",
                                     "torch/cnn_ext", "load"], rows,
                      intro=f"Median of {args.repeats} interleaved repeats (1-thread rows: {args.clock} time, others: "
                            "wall time); load average at the end in the last column; ratio = torch time / cnn_ext "
                            "time, > 1 means cnn_ext is faster; ± is half the IQR relative to the median.")
    for dtype in args.dtypes:
        for case in CASES:
            fns = peers(case, np.dtype(dtype).type)
            for nt in args.threads:
                with C.threads(nt):
                    for op, pair in fns.items():
                        clock = time.thread_time if nt == 1 and args.clock == "cpu" else time.perf_counter
                        st = C.interleaved(pair, args.repeats, args.min_time, clock=clock)
                        ours, theirs = st["cnn_ext"], st["torch"]
                        row = [f"{case[0]} {case[1:6]}", op, dtype, nt,
                               f"{C.fmt_time(ours.median)} (±{ours.spread_pct() / 2:.0f}%)",
                               f"{C.fmt_time(theirs.median)} (±{theirs.spread_pct() / 2:.0f}%)",
                               f"{theirs.median / ours.median:.2f}×", f"{os.getloadavg()[0]:.1f}"]
                        result["tables"][0]["rows"].append(row)
                        print(_report.markdown_table(result["tables"][0]["columns"], [row])[-1], flush=True)
    C.write_results(result, args.out, argv)


if __name__ == "__main__":
    main()
