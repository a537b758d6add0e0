"""The error of method="winograd" in float32, per tile size F(2x2, 3x3) and F(4x4, 3x3), beside the direct and
im2col methods: results on float32 inputs against a float64 reference (im2col in float64 on the same values).

The error of one output map is max |y32 - y64| over the map divided by the largest |x| ⋆ |k| (the convolution of
the absolute values) over that map, the scale of every rounding error of a sum of products; for dX the scale is
the full convolution of |dE_dY| and |k|, for dK the kernel gradient of |x| and |dE_dY|. Worst case over the test
shapes, paddings 0, 1, 2 and four kinds of inputs: normal, large dynamic range (each value scaled by 10^U(-4, 4)),
channels of different scales (10^U(-3, 3) per channel) and positive uniform values (no cancellation).

    python benchmarks/winograd_error.py [--out benchmarks/results/winograd_error.md]
"""
import argparse
import sys

import numpy as np

import _common as C
import _report
from cnn_ext import _methods as M, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient, ops

SHAPES = [(3, 2, 5, 7, 9), (2, 3, 4, 11, 6), (4, 5, 3, 5, 5), (2, 8, 6, 14, 13), (1, 1, 1, 3, 3),  # N, C_in, C_out, H, W
          (2, 16, 32, 28, 28), (2, 64, 64, 28, 28), (1, 64, 64, 56, 56), (2, 128, 128, 14, 14)]
KINDS = ("normal", "dynamic range 1e±4", "channel scales 1e±3", "positive")


def inputs(rng, kind, shape):
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "positive":
        return rng.uniform(0, 1, shape)
    signs = rng.choice([-1.0, 1.0], shape)
    if kind.startswith("dynamic"):
        return signs * rng.uniform(0.5, 1, shape) * 10.0 ** rng.uniform(-4, 4, shape)
    scale = 10.0 ** rng.uniform(-3, 3, (1, shape[1]) + (1,) * (len(shape) - 2))
    return rng.standard_normal(shape) * scale


def map_error(got, ref, scale, axes):
    """max over maps of max |got - ref| / max scale (maps: the axes kept)."""
    err = np.abs(got.astype(np.float64) - ref).max(axis=axes)
    return float((err / np.maximum(np.abs(scale).max(axis=axes), np.finfo(np.float64).tiny)).max())


def errors(method, x, k, dy, pad):
    """(forward, dX, dK) map errors of ``method`` in float32 on these float64 values (rounded to float32)."""
    x32, k32, dy32 = (a.astype(np.float32) for a in (x, k, dy))
    x, k, dy = (a.astype(np.float64) for a in (x32, k32, dy32))
    b = np.zeros(k.shape[0])
    size = x.shape[2:]
    ref = (conv2d_forward(x, k, b, padding=pad, method="gemm"),
           conv2d_input_gradient(dy, k, padding=pad, input_size=size, method="gemm"),
           conv2d_kernel_gradient(dy, x, padding=pad, kernel_size=3, method="gemm"))
    scale = (conv2d_forward(abs(x), abs(k), b, padding=pad, method="gemm"),
             conv2d_input_gradient(abs(dy), abs(k), padding=pad, input_size=size, method="gemm"),
             conv2d_kernel_gradient(abs(dy), abs(x), padding=pad, kernel_size=3, method="gemm"))
    got = (conv2d_forward(x32, k32, b.astype(np.float32), padding=pad, method=method),
           conv2d_input_gradient(dy32, k32, padding=pad, input_size=size, method=method),
           conv2d_kernel_gradient(dy32, x32, padding=pad, kernel_size=3, method=method))
    return [map_error(g, r, s, axes) for g, r, s, axes in zip(got, ref, scale, ((2, 3), (2, 3), (2, 3)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the report to OUT.json (the data) and OUT.md (rendered from it)")
    args = parser.parse_args()
    rng = np.random.default_rng(20)
    cases = [(shape, pad, kind) for shape in SHAPES for pad in (0, 1, 2) for kind in KINDS]
    data = []
    for (N, C_in, C_out, H, W), pad, kind in cases:
        OH, OW = H + 2 * pad - 2, W + 2 * pad - 2
        data.append((pad, inputs(rng, kind, (N, C_in, H, W)), inputs(rng, kind, (C_out, C_in, 3, 3)),
                     inputs(rng, kind, (N, C_out, OH, OW)), kind))
    rows = []
    for label, method, tile in (("winograd F(2x2, 3x3)", "winograd", 2), ("winograd F(4x4, 3x3)", "winograd", 4),
                                ("direct", "direct", None), ("gemm (im2col + BLAS)", "gemm", None)):
        if tile:
            M.WINOGRAD_TILE = tile
            ops._PLANS.clear()
        worst = {kind: [0.0, 0.0, 0.0] for kind in KINDS}
        for pad, x, k, dy, kind in data:
            worst[kind] = [max(a, b) for a, b in zip(worst[kind], errors(method, x, k, dy, pad))]
        rows.append((label, worst))
        print(label, {kind: [f"{e:.1e}" for e in v] for kind, v in worst.items()}, flush=True)
    result = _report.new_result("Winograd error (float32 against a float64 reference)", level=1,
                                intro="Made by `python benchmarks/winograd_error.py --out "
                                      "benchmarks/results/winograd_error.md`. "
                                      + __doc__.split("\n\n")[1].replace("\n", " "))
    table = [[label] + [" / ".join(f"{e:.1e}" for e in worst[kind]) for kind in KINDS]
             + [f"{max(max(v) for v in worst.values()):.1e}"] for label, worst in rows]
    notes = ("Documented bounds (`cnn_ext._methods.WINOGRAD_ERROR_BOUND`, docs/guide.md): "
             + ", ".join(f"F({m}x{m}, 3x3) {b:.0e}" for m, b in sorted(M.WINOGRAD_ERROR_BOUND.items()))
             + f", at least twice the worst above; measured for C_in <= {M.WINOGRAD_MAX_C_IN}, the layers on which "
             "method='auto' may pick winograd.\n\n"
             f"float32 unit roundoff: {np.finfo(np.float32).eps / 2:.1e}. Shapes (N, C_in, C_out, H, W): "
             + ", ".join(map(str, SHAPES)) + "; paddings 0, 1, 2.")
    _report.add_table(result, None, ["method", *KINDS, "worst"], table, notes=notes,
                      intro="Worst map error (max |y32 - y64| / max |x|⋆|k| per output map), forward / dX / dK:")
    C.write_results(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
