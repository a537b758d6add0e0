"""The Winograd kernel gradient's block size: every block's products read and write dU ((m+2)² x C_in x C_out),
so the kernel gradient's blocks of tiles are at least WINOGRAD_KGRAD_DU_RATIO times dU (cnn_ext._methods).
This times the kernel gradient with each ratio side by side (0: the forward's 2 MiB blocks), interleaved in one
process; each column is the median time and, in brackets, the tile rows per block and the chunks of the batch.

    python benchmarks/winograd_kgrad_blocks.py [--ratios 0,3,4,5] [--threads 1,2] [--dtypes float32,float64]
                                               [--out benchmarks/results/winograd_kgrad]
"""
import time

import numpy as np

import _common as C
import _report
import cnn_ext
from cnn_ext import _methods as M, _runners

# (label, N, C_in, C_out, H, K, stride, padding): bench_ops.py's 128-channel row, 'same' layers of ResNet widths
LAYERS = [("suite 128x128 14x14 valid", 32, 128, 128, 14, 3, 1, 0),
          ("64x128 14x14", 32, 64, 128, 14, 3, 1, 1),
          ("128x128 14x14", 32, 128, 128, 14, 3, 1, 1),
          ("64x128 28x28", 32, 64, 128, 28, 3, 1, 1),
          ("128x128 28x28", 16, 128, 128, 28, 3, 1, 1),
          ("64x64 28x28 (dU small: unchanged)", 64, 64, 64, 28, 3, 1, 1)]


def runner(g, dtype, threads, ratio):
    """The kernel gradient's run(dy, x, dk), its blocks and chunks fixed by `ratio` when it is built."""
    saved = M.WINOGRAD_KGRAD_DU_RATIO
    M.WINOGRAD_KGRAD_DU_RATIO = dict.fromkeys(saved, ratio)
    try:
        m = M.winograd_tile(g, dtype)
        return (_runners.winograd_kernel_gradient(g, dtype, threads, m),
                M.winograd_rows(g, dtype, m, kgrad=True), M.winograd_nchunk(g, dtype, m))
    finally:
        M.WINOGRAD_KGRAD_DU_RATIO = saved


def main():
    ap = C.side_by_side_parser(__doc__.split("\n\n")[0], dtypes=("float32", "float64"))
    ap.add_argument("--ratios", type=lambda s: C.parse_list(s, int), default=[0, 3, 4, 5])
    args = ap.parse_args()
    result = _report.new_result("Winograd kernel gradient: block size against dU", level=1,
                                machine=C.machine_report(), intro=" ".join(__doc__.split("\n\n")[0].split()))
    for name in args.dtypes:
        dtype = np.dtype(name)
        rows = []
        for threads in args.threads:
            cnn_ext.set_num_threads(threads)
            clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
            for layer in LAYERS:
                x, _, _, dy, g = C.layer_case(layer, dtype)
                dk = np.empty((g.C_out, g.C_in, 3, 3), dtype)
                peers, shape = {}, {}
                for r in args.ratios:
                    run, rows_, nchunk = runner(g, dtype, threads, r)
                    peers[r] = (lambda run=run: run(dy, x, dk))
                    shape[r] = f"({rows_} rows, {nchunk} ch)"
                stats = C.interleaved(peers, args.repeats, args.min_time, clock=clock)
                base = stats[args.ratios[0]].median
                cells = [f"{C.fmt_time(stats[r].median)} {shape[r]}" for r in args.ratios]
                best = min(args.ratios[1:], key=lambda r: stats[r].median) if len(args.ratios) > 1 else None
                rows.append([layer[0], threads, *cells,
                             f"{base / stats[best].median:.2f}x (ratio {best})" if best is not None else "",
                             f"{stats[args.ratios[0]].other_load:.2f}"])
                print(name, rows[-1], flush=True)
        _report.add_table(result, name, ["layer", "threads", *[f"ratio {r}" for r in args.ratios],
                                          f"best / ratio {args.ratios[0]}", "other load"], rows)
    cnn_ext.set_num_threads(None)
    C.write_results(result, args.out)


if __name__ == "__main__":
    main()
