"""Strided forwards (ResNet's downsampling layers): the channel-vector kernel, im2col + BLAS and PyTorch, side by
side in one run.

``auto`` takes the channel-vector kernel for strided 3x3 forwards with C_out a multiple of its tile on outputs of
at most CHANNELS_MAX_PIXELS pixels, and BLAS for 1x1 shortcuts; this table is the measurement behind that rule.
The three peers are checked against each other first, then timed round-robin (``_common.interleaved``); ratios
are of medians (> 1: the channel-vector kernel is faster). Only ratios mean anything on a shared machine.

    python benchmarks/bench_strided.py [--repeats 7] [--threads 1,2] [--dtypes float32,float64] [--clock cpu]
                                       [--out benchmarks/results/strided]
"""
import os
import sys
import time

import numpy as np
import _common as C
import _report
from _common import torch

import cnn_ext
from cnn_ext import _methods

# (label, N, C_in, C_out, H, K, stride, padding)
CASES = [
    ("ResNet 16->32, 3x3 s2", 64, 16, 32, 28, 3, 2, 1),
    ("ResNet 32->64, 3x3 s2", 64, 32, 64, 14, 3, 2, 1),
    ("ResNet 64->128, 3x3 s2", 64, 64, 128, 14, 3, 2, 1),
    ("ResNet-18 64->128, 3x3 s2", 32, 64, 128, 28, 3, 2, 1),
    ("shortcut 16->32, 1x1 s2", 64, 16, 32, 28, 1, 2, 0),
    ("shortcut 32->64, 1x1 s2", 64, 32, 64, 14, 1, 2, 0),
]


def peers(case, dtype):
    """{"channels", "gemm", "torch": fn}, checked against each other."""
    S, P = case[6:]
    x, k, b, _, _ = C.layer_case(case, dtype)
    xt, kt, bt = (torch.from_numpy(a) for a in (x, k, b))
    fns = {m: (lambda m=m: cnn_ext.conv2d_forward(x, k, b, stride=S, padding=P, method=m))
           for m in ("channels", "gemm")}
    fns["torch"] = lambda: torch.nn.functional.conv2d(xt, kt, bt, stride=S, padding=P)
    tol = dict(rtol=1e-3, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        ref = fns["torch"]().numpy()
        for name in ("channels", "gemm"):
            np.testing.assert_allclose(fns[name](), ref, **tol, err_msg=f"{case[0]} {name}")
    return fns


def main(argv=None):
    args = C.side_by_side_parser(__doc__, ("float32", "float64")).parse_args(argv)
    if torch is None:
        sys.exit("bench_strided.py compares with PyTorch: install torch")
    result = _report.new_result("Strided forwards: channel vectors vs im2col + BLAS vs PyTorch",
                                machine=C.machine_report())
    _report.add_table(result, None, ["case (N, C_in, C_out, H, K)", "dtype", "threads", "auto takes", "channels",
                                     "gemm", "torch", "gemm/channels", "torch/channels", "torch/auto", "load"], [],
                      intro=f"Median of {args.repeats} interleaved repeats (1-thread rows: {args.clock} time, others: "
                            "wall time); ratios of median times, > 1 means the channel-vector kernel (or auto's "
                            "choice) is faster; ± is half the IQR relative to the median; load average at the end.")
    with torch.no_grad():
        for dtype in args.dtypes:
            for case in CASES:
                fns = peers(case, np.dtype(dtype).type)
                g = C.layer_case(case, np.dtype(dtype).type)[-1]
                auto = _methods.forward("auto", g, np.dtype(dtype)).value
                for nt in args.threads:
                    with C.threads(nt):
                        clock = time.thread_time if nt == 1 and args.clock == "cpu" else time.perf_counter
                        st = C.interleaved(fns, args.repeats, args.min_time, clock=clock)
                        ch, gm, tt = (st[n].median for n in ("channels", "gemm", "torch"))
                        row = [f"{case[0]} {case[1:6]}", dtype, nt, auto,
                               *(f"{C.fmt_time(st[n].median)} (±{st[n].spread_pct() / 2:.0f}%)"
                                 for n in ("channels", "gemm", "torch")),
                               f"{gm / ch:.2f}×", f"{tt / ch:.2f}×", f"{tt / st[auto].median:.2f}×",
                               f"{os.getloadavg()[0]:.1f}"]
                        result["tables"][0]["rows"].append(row)
                        print(_report.markdown_table(result["tables"][0]["columns"], [row])[-1], flush=True)
    C.write_results(result, args.out, argv)


if __name__ == "__main__":
    main()
