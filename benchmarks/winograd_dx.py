"""Winograd dX on unpadded layers: as the adjoint of the forward on the output's tiles (what runs where the input
map takes more tiles, cnn_ext._methods.winograd_dx_adjoint) against the forward of dE_dY padded by 2 on the
input map's tiles, side by side in one process (interleaved), with PyTorch's input gradient where it is
installed. Each cell is the median time; the ratio is padded / adjoint (> 1: the adjoint is faster).

    python benchmarks/winograd_dx.py [--threads 1,2] [--dtypes float32,float64] [--out benchmarks/results/winograd_dx]
"""
import time

import numpy as np

import _common as C
import _report
import cnn_ext
from cnn_ext import _methods as M, _runners

try:
    import torch
except ImportError:
    torch = None

# (label, N, C_in, C_out, H, K, stride, padding): bench_ops.py's 128-channel row and unpadded layers whose
# output side is 0 or 3 modulo 4
LAYERS = [("suite 128x128 14x14", 32, 128, 128, 14, 3, 1, 0),
          ("64x128 14x14", 32, 64, 128, 14, 3, 1, 0),
          ("64x64 14x14", 32, 64, 64, 14, 3, 1, 0),
          ("64x64 10x10", 64, 64, 64, 10, 3, 1, 0),
          ("64x64 30x30", 32, 64, 64, 30, 3, 1, 0),
          ("32x32 30x30", 32, 32, 32, 30, 3, 1, 0)]


def main():
    ap = C.side_by_side_parser(__doc__.split("\n\n")[0], dtypes=("float32", "float64"))
    args = ap.parse_args()
    result = _report.new_result("Winograd dX: the adjoint of the forward against the forward of padded dE_dY",
                                level=1, machine=C.machine_report(), intro=" ".join(__doc__.split("\n\n")[0].split()))
    for name in args.dtypes:
        dtype = np.dtype(name)
        rows = []
        for threads in args.threads:
            cnn_ext.set_num_threads(threads)
            if torch is not None:
                torch.set_num_threads(threads)
            clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
            for layer in LAYERS:
                _, k, _, dy, g = C.layer_case(layer, dtype)
                dx = np.empty((g.N, g.C_in, g.H, g.W), dtype)
                m = M.winograd_tile(g, dtype)
                takes = "adjoint" if M.winograd_dx_adjoint(g, dtype, m) else "padded"
                real = M.winograd_dx_adjoint
                try:
                    M.winograd_dx_adjoint = lambda *a: True
                    adjoint = _runners.winograd_input_gradient(g, dtype, threads, m)
                    M.winograd_dx_adjoint = lambda *a: False
                    padded = _runners.winograd_input_gradient(g, dtype, threads, m)
                finally:
                    M.winograd_dx_adjoint = real
                peers = {"adjoint": lambda: adjoint(dy, k, dx), "padded": lambda: padded(dy, k, dx)}
                if torch is not None:
                    tdy, tk = torch.from_numpy(dy), torch.from_numpy(k)
                    shape = (g.N, g.C_in, g.H, g.W)
                    peers["torch"] = lambda: torch.ops.aten.convolution_backward(
                        tdy, torch.empty(shape, dtype=tdy.dtype), tk, None, (1, 1), (0, 0), (1, 1), False, (0, 0), 1,
                        (True, False, False))
                stats = C.interleaved(peers, args.repeats, args.min_time, clock=clock)
                a = stats["adjoint"].median
                row = [layer[0], threads, C.fmt_time(a), C.fmt_time(stats["padded"].median),
                       f"{stats['padded'].median / a:.2f}x"]
                if torch is not None:
                    row += [C.fmt_time(stats["torch"].median), f"{stats['torch'].median / a:.2f}x"]
                rows.append(row + [takes, f"{stats['adjoint'].other_load:.2f}"])
                print(name, rows[-1], flush=True)
        columns = ["layer", "threads", "adjoint", "padded", "padded / adjoint"]
        if torch is not None:
            columns += ["torch", "torch / adjoint"]
        _report.add_table(result, name, columns + ["runs", "other load"], rows)
    cnn_ext.set_num_threads(None)
    C.write_results(result, args.out)


if __name__ == "__main__":
    main()
