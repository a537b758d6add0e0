"""What BatchNorm's two mechanisms give the training step of the ResNet of examples/train_resnet.py.

Each row times one training step (forward, softmax cross-entropy, backward, Adam) on a fixed batch of 64 MNIST-sized
images, the variants interleaved in one process (medians of --repeats): (1) a ReLU after a BatchNorm applied
inside the BatchNorm's passes, and one after a residual block in the pass of its sum (cnn_ext/layers/chain.py),
against every layer run on its own; (2) the builds of src_pyx/norm.pyx (baseline, AVX2 + FMA, AVX-512) that
cnn_ext._kernels can pick, with the pairing on.

    python benchmarks/bench_norm.py [--threads 1,2] [--dtypes float32,float64] [--repeats 9] [--out ...]
"""
import importlib
import os
import sys

import numpy as np

import _common as C
import _report

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
from train_resnet import build_network  # noqa: E402

import cnn_ext  # noqa: E402
import cnn_ext.layers.norm as norm_layers  # noqa: E402
from cnn_ext.layers import chain  # noqa: E402


def _builds():
    """{variant: module} of the norm builds this CPU runs."""
    out = {}
    for variant in ("baseline", "avx2", "avx512"):
        if variant != "baseline" and not cnn_ext._kernels.cpu_supports(variant):
            continue
        try:
            out[variant] = importlib.import_module("cnn_ext._kernels.norm" + ("" if variant == "baseline" else
                                                                             f"_{variant}"))
        except ImportError:
            pass
    return out


def _stepper(dtype, setup):
    """A training step of a fresh ResNet in dtype, run after ``setup()`` (which picks the variant)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 1, 28, 28)).astype(dtype)
    y = rng.integers(0, 10, 64)
    net = build_network(seed=0, dtype=dtype)
    opt = cnn_ext.Adam(1e-3)

    def step():
        setup()
        logits = net.forward(x)
        _, d = cnn_ext.softmax_cross_entropy(logits, y)
        opt.step(net, net.backward(d))
    return step


def main():
    ap = C.side_by_side_parser(__doc__.split("\n\n")[0], dtypes=("float32", "float64"))
    args = ap.parse_args()
    pairs = chain._relu_partner
    default = norm_layers._norm
    builds = _builds()
    rows_pair, rows_isa = [], []
    try:
        for n in args.threads:
            with C.threads(n):
                for dtype in args.dtypes:
                    def pairing(on):
                        def setup():
                            norm_layers._norm = default
                            chain._relu_partner = pairs if on else (lambda layers, j: None)
                        return setup
                    st = C.interleaved({"paired": _stepper(dtype, pairing(True)),
                                        "one by one": _stepper(dtype, pairing(False))}, args.repeats, args.min_time)
                    rows_pair.append([n, dtype, C.fmt_time(st["paired"].median), C.fmt_time(st["one by one"].median),
                                      C.fmt_ratio(st["one by one"].median / st["paired"].median)])
                    print(rows_pair[-1], flush=True)

                    def build(module):
                        def setup():
                            chain._relu_partner = pairs
                            norm_layers._norm = module
                        return setup
                    st = C.interleaved({v: _stepper(dtype, build(m)) for v, m in builds.items()}, args.repeats,
                                       args.min_time)
                    rows_isa.append([n, dtype, *(C.fmt_time(st[v].median) for v in builds),
                                     getattr(default, "__name__", "?").rsplit(".", 1)[-1]])
                    print(rows_isa[-1], flush=True)
    finally:
        chain._relu_partner = pairs
        norm_layers._norm = default
    result = _report.new_result("BatchNorm in the ResNet's training step (benchmarks/bench_norm.py)", level=1,
                                machine=C.machine_report(), intro=__doc__.split("\n\n")[1].replace("\n", " "))
    _report.add_table(result, "A ReLU inside the BatchNorm's passes, against each layer on its own",
                      ["threads", "dtype", "paired", "one by one", "speed-up"], rows_pair)
    _report.add_table(result, "The builds of the BatchNorm kernels (pairing on)",
                      ["threads", "dtype", *builds, "auto's pick"], rows_isa)
    C.write_results(result, args.out)


if __name__ == "__main__":
    main()
