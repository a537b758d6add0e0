"""The Winograd forward's and input gradient's block size: a block of tiles is transformed into V and M
((m+2)² x (C_in + C_out) x tiles values) and multiplied position by position, so a block sets the width of the
products and how much of V and M stays in cache. This times both operations with blocks of each size side by
side (WINOGRAD_BLOCK_BYTES of cnn_ext._methods, in MiB), interleaved in one process; each column is the median
time and, in brackets, the tiles per block.

    python benchmarks/winograd_blocks.py [--sizes 2,4] [--threads 1,2] [--dtypes float32,float64]
                                         [--out benchmarks/results/winograd_blocks]
"""
import time

import numpy as np

import _common as C
import _report
import cnn_ext
from cnn_ext import _methods as M, _runners

# (label, N, C_in, C_out, H, K, stride, padding): bench_ops.py's Winograd rows, 'same' layers of ResNet widths
LAYERS = [("suite 128x128 14x14 valid", 32, 128, 128, 14, 3, 1, 0),
          ("suite 64x64 28x28 valid", 64, 64, 64, 28, 3, 1, 0),
          ("suite 64x64 56x56 valid", 32, 64, 64, 56, 3, 1, 0),
          ("128x128 14x14", 32, 128, 128, 14, 3, 1, 1),
          ("64x128 28x28", 32, 64, 128, 28, 3, 1, 1),
          ("256x256 7x7", 32, 256, 256, 7, 3, 1, 1)]


def runners(g, dtype, threads, size):
    """(forward run(x, k, b, y), dX run(dy, k, dx), tiles per block) with blocks of `size` bytes, fixed when built."""
    saved = M.WINOGRAD_BLOCK_BYTES
    M.WINOGRAD_BLOCK_BYTES = size
    try:
        m = M.winograd_tile(g, dtype)
        tiles = M.winograd_rows(g, dtype, m) * -(-g.OW // m)
        return _runners.winograd_forward(g, dtype, threads, m), _runners.winograd_input_gradient(g, dtype, threads, m), \
            tiles
    finally:
        M.WINOGRAD_BLOCK_BYTES = saved


def main():
    ap = C.side_by_side_parser(__doc__.split("\n\n")[0], dtypes=("float32", "float64"))
    ap.add_argument("--sizes", type=lambda s: C.parse_list(s, float), default=[2, 4], help="block sizes in MiB")
    args = ap.parse_args()
    sizes = [int(s * (1 << 20)) for s in args.sizes]
    result = _report.new_result("Winograd forward and input gradient: block size", level=1,
                                machine=C.machine_report(), intro=" ".join(__doc__.split("\n\n")[0].split()))
    for name in args.dtypes:
        dtype = np.dtype(name)
        rows = []
        for threads in args.threads:
            cnn_ext.set_num_threads(threads)
            clock = time.thread_time if args.clock == "cpu" and threads == 1 else time.perf_counter
            for layer in LAYERS:
                x, k, b, dy, g = C.layer_case(layer, dtype)
                y, dx = np.empty((g.N, g.C_out, g.OH, g.OW), dtype), np.empty_like(x)
                peers, tiles = {}, {}
                for s in sizes:
                    fwd, dxr, tiles[s] = runners(g, dtype, threads, s)
                    peers["forward", s] = (lambda fwd=fwd: fwd(x, k, b, y))
                    peers["input_grad", s] = (lambda dxr=dxr: dxr(dy, k, dx))
                stats = C.interleaved(peers, args.repeats, args.min_time, clock=clock)
                for op in ("forward", "input_grad"):
                    base = stats[op, sizes[0]].median
                    rows.append([layer[0], op, threads,
                                 *[f"{C.fmt_time(stats[op, s].median)} ({tiles[s]} tiles)" for s in sizes],
                                 *[f"{base / stats[op, s].median:.2f}x" for s in sizes[1:]],
                                 f"{stats[op, sizes[0]].other_load:.2f}"])
                    print(name, rows[-1], flush=True)
        _report.add_table(result, name, ["layer", "op", "threads", *[f"{s / (1 << 20):g} MiB" for s in sizes],
                                          *[f"speed-up {s / (1 << 20):g} MiB" for s in sizes[1:]], "other load"],
                          rows)
    cnn_ext.set_num_threads(None)
    C.write_results(result, args.out)


if __name__ == "__main__":
    main()
