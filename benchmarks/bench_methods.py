"""Every method of each convolution operation on a network's layers, and auto's choice, side by side in one run.

The rules of ``cnn_ext/_methods.py`` pick a kernel from the shape, the dtype and the build; this script times
every method that can run each layer's forward, input gradient and kernel gradient (``method=`` forced), with
PyTorch beside them when it is installed. All peers of one operation are checked against each other first, then
timed round-robin (``_common.interleaved``). 'auto/best' > 1 means auto's choice is slower than the fastest
method: the rule to look at. Only ratios within a row mean anything on a shared machine.

    python benchmarks/bench_methods.py [--layers resnet|cnn|suite|one_channel|kgrad_channels] [--threads 1,2]
                                       [--dtypes float32,float64] [--ops forward,input_grad,kernel_grad]
                                       [--clock cpu] [--out OUT]
"""
import contextlib
import os
import sys
import time

import numpy as np
import _common as C
import _report
import bench_ops
from _common import torch

import cnn_ext
from cnn_ext import _methods

# (label, N, C_in, C_out, H, K, stride, padding): each distinct convolution of a training step
LAYERS = {
    "resnet": [  # examples/train_resnet.py, width 16, batch 64
        ("stem 1->16", 64, 1, 16, 28, 3, 1, 1),
        ("stage 1, 16->16", 64, 16, 16, 28, 3, 1, 1),
        ("stage 2 in, 16->32 s2", 64, 16, 32, 28, 3, 2, 1),
        ("stage 2, 32->32", 64, 32, 32, 14, 3, 1, 1),
        ("shortcut 16->32, 1x1 s2", 64, 16, 32, 28, 1, 2, 0),
        ("stage 3 in, 32->64 s2", 64, 32, 64, 14, 3, 2, 1),
        ("stage 3, 64->64", 64, 64, 64, 7, 3, 1, 1),
        ("shortcut 32->64, 1x1 s2", 64, 32, 64, 14, 1, 2, 0),
    ],
    "cnn": [  # examples/train_mnist_cnn.py, batch 64
        ("conv 1, 1->32", 64, 1, 32, 28, 3, 1, 1),
        ("conv 2, 32->64", 64, 32, 64, 14, 3, 1, 1),
    ],
    # first layers of one input channel (the kernel gradient's one-channel rule), maps of 14 and 28: rows that
    # are not whole vectors
    "one_channel": [(f"1->{C_out} {H}x{H}", 64, 1, C_out, H, 3, 1, 1) for C_out in (16, 32, 64, 128)
                    for H in (14, 28)],
    # the kernel gradient's channel-vector tiles against the other direct kernels and Winograd: 8 to 64 channels
    # on maps of 28 and 56
    "kgrad_channels": [(f"{C_in}->{C_out} {H}x{H}", 64 if H == 28 else 16, C_in, C_out, H, 3, 1, 1)
                       for C_in, C_out in ((8, 16), (8, 32), (16, 16), (16, 32), (32, 32), (32, 64)) for H in (28, 56)],
    # bench_ops.py's 3x3 rows of issue 20 (valid convolutions)
    "suite": [(f"{C_in}->{C_out} {H}x{H}", N, C_in, C_out, H, K, 1, 0)
              for N, C_in, C_out, H, K in bench_ops.ISSUE20_SHAPES],
}
OPS = {"forward": _methods.FORWARD_METHODS, "input_grad": _methods.INPUT_GRADIENT_METHODS,
       "kernel_grad": _methods.KERNEL_GRADIENT_METHODS}
CHOOSE = {"forward": _methods.forward, "input_grad": _methods.input_gradient,
          "kernel_grad": _methods.kernel_gradient}


def operations(layer, dtype, op):
    """{method or "torch": fn} for one operation of one layer: every method that runs, checked alike."""
    N, H, K, S, P = layer[1], layer[4], layer[5], layer[6], layer[7]
    x, k, b, dy, _ = C.layer_case(layer, dtype)
    call = {
        "forward": lambda m: cnn_ext.conv2d_forward(x, k, b, stride=S, padding=P, method=m),
        "input_grad": lambda m: cnn_ext.conv2d_input_gradient(dy, k, stride=S, padding=P, input_size=(H, H),
                                                              method=m),
        "kernel_grad": lambda m: cnn_ext.conv2d_kernel_gradient(dy, x, stride=S, padding=P, kernel_size=K,
                                                                method=m),
    }[op]
    fns, results = {}, {}
    for method in OPS[op]:
        try:
            results[method] = call(method)
        except ValueError:  # the method cannot run this layer (stride, padding, channels)
            continue
        fns[method] = lambda m=method: call(m)
    if torch is not None:
        tx, tk, tb, tdy = (torch.from_numpy(a) for a in (x, k, b, dy))
        mask = {"input_grad": [True, False, False], "kernel_grad": [False, True, False]}.get(op)
        if mask is None:
            fns["torch"] = lambda: torch.nn.functional.conv2d(tx, tk, tb, stride=S, padding=P)
        else:
            index = mask.index(True)
            fns["torch"] = lambda: torch.ops.aten.convolution_backward(
                tdy, tx, tk, None, [S, S], [P, P], [1, 1], False, [0, 0], 1, mask)[index]
        with torch.no_grad():
            ref = fns["torch"]().numpy() * (1.0 / N if op == "kernel_grad" else 1.0)  # cnn_ext: batch means
            results["torch"] = ref
    ref = results.get("torch", results["gemm"])
    scale = float(np.abs(ref).max()) or 1.0
    tol = 1e-3 if dtype == np.float32 else 1e-9
    for name, got in results.items():
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale, err_msg=f"{layer[0]} {op} {name}")
    return fns


def main(argv=None):
    ap = C.side_by_side_parser(__doc__, ("float32", "float64"))
    ap.add_argument("--layers", choices=sorted(LAYERS), default="resnet")
    ap.add_argument("--ops", type=C.parse_list, default=list(OPS), help=f"comma-separated subset of {list(OPS)}")
    args = ap.parse_args(argv)
    if any(op not in OPS for op in args.ops):
        sys.exit(f"--ops: choose from {list(OPS)}")
    result = _report.new_result(f"Every method on the {args.layers} layers, and auto's choice",
                                machine=C.machine_report())
    table = _report.add_table(
        result, None, ["layer (N, C_in, C_out, H, K, stride, padding)", "dtype", "threads", "operation",
                       "auto takes", "every method", "fastest", "auto/best", "torch", "torch/auto", "load"], [],
        intro=f"Median of {args.repeats} interleaved repeats (1-thread rows: {args.clock} time, others: wall "
              "time); 'auto/best' = auto's method's time / the fastest method's (1.00: auto took the fastest); "
              "'torch/auto' > 1: cnn_ext's choice is faster than PyTorch; load average at the end.")
    with torch.no_grad() if torch is not None else contextlib.nullcontext():
        for dtype in args.dtypes:
            for layer in LAYERS[args.layers]:
                g = C.layer_case(layer, np.dtype(dtype).type)[-1]
                for op in args.ops:
                    fns = operations(layer, np.dtype(dtype).type, op)
                    auto = CHOOSE[op]("auto", g, np.dtype(dtype)).value
                    for nt in args.threads:
                        with C.threads(nt):
                            clock = time.thread_time if nt == 1 and args.clock == "cpu" else time.perf_counter
                            st = C.interleaved(fns, args.repeats, args.min_time, clock=clock)
                        methods = {m: st[m].median for m in fns if m != "torch"}
                        best = min(methods, key=methods.get)
                        theirs = st["torch"].median if "torch" in st else None
                        row = [f"{layer[0]} {layer[1:]}", dtype, nt, op, auto,
                               ", ".join(f"{m} {C.fmt_time(t)}" for m, t in methods.items()), best,
                               f"{methods[auto] / methods[best]:.2f}",
                               C.fmt_time(theirs) if theirs else "—",
                               f"{theirs / methods[auto]:.2f}×" if theirs else "—", f"{os.getloadavg()[0]:.1f}"]
                        table["rows"].append(row)
                        print(_report.markdown_table(table["columns"], [row])[-1], flush=True)
    C.write_results(result, args.out, argv)


if __name__ == "__main__":
    main()
