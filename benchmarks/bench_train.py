"""Training steps per second of the tutorial's MNIST network: cnn_ext vs the tutorial's code vs PyTorch (issue 5).

Network: Conv2D(1, 4, 5), Flatten, Dense(2304, 256), ReLU, Dense(256, 128), ReLU, Dense(128, 32), ReLU,
Dense(32, 10), Sigmoid; batch 16, learning rate 0.1, MSE, plain SGD. One step = forward, loss gradient,
backward, update.

Peers (all three start from the same parameters and are checked to take the same first step):
  cnn_ext   cnn_ext.Network of cnn_ext layers (float32 layers for the float32 run)
  tutorial  the tutorial's classes written out below (correlate2d / convolve2d loops, NumPy Dense)
  torch     nn.Sequential of the same layers, nn.MSELoss, torch.optim.SGD; the tutorial's Conv2D dK, dB and
            Dense dB are batch means, so those parameters get lr / N (same update as the others)

Data: random MNIST-shaped batches, or real MNIST when $CNN_EXT_DATA names a folder holding
train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz (directly or in mnist/).

    python benchmarks/bench_train.py --quick
    python benchmarks/bench_train.py --out train.md
"""
import argparse
import gzip
import os
import sys
import time

import numpy as np
from numpy.testing import assert_allclose
from scipy import signal

import _common as C
import _report
from _common import torch

import cnn_ext

BATCH, LR, STEPS_PER_EPOCH = 16, 0.1, 60000 // 16
DENSE = [(2304, 256), (256, 128), (128, 32), (32, 10)]
TARGET_MS = {np.float64: 2.5, np.float32: 1.5}  # on 2 threads
# Diagnostic variant, not a peer and not judged: the step with every BLAS held to one thread from outside while the
# cnn_ext kernels use the row's threads; Dense and the updates hold BLAS themselves, so it matching cnn_ext's own
# time shows that nothing else in the step wakes BLAS threads.
DIAGNOSTIC = "cnn_ext·blas1"
# The tutorial's own train loop (each layer's forward in turn, then each layer's backward and SGD update) run with
# cnn_ext's layers, no Network: what the tutorial's script does after its imports change. Not judged either.
LOOP = "cnn_ext·loop"


# ----------------------------------------------------------------------------------------------
# the tutorial's code (batched as the tutorial's layers are: NCHW conv, (N, features) dense)
# ----------------------------------------------------------------------------------------------

class TutorialConv:
    def __init__(self, k, b):
        self.kernels, self.biases = k.copy(), b.copy()

    def forward(self, x):
        self.input = x
        N, C_in, H, W = x.shape
        C_out, _, KH, KW = self.kernels.shape
        self.output = np.empty((N, C_out, H - KH + 1, W - KW + 1), dtype=x.dtype)
        for n in range(N):
            for j in range(C_out):
                self.output[n, j] = self.biases[j]
                for i in range(C_in):
                    self.output[n, j] += signal.correlate2d(x[n, i], self.kernels[j, i], "valid")
        return self.output

    def backward(self, dy, lr):
        x, N = self.input, self.input.shape[0]
        kernels_gradient = np.zeros_like(self.kernels)
        input_gradient = np.zeros_like(x)
        for n in range(N):
            for j in range(self.kernels.shape[0]):
                for i in range(self.kernels.shape[1]):
                    kernels_gradient[j, i] += signal.correlate2d(x[n, i], dy[n, j], "valid")
                    input_gradient[n, i] += signal.convolve2d(dy[n, j], self.kernels[j, i], "full")
        self.kernels -= lr * kernels_gradient / N
        self.biases -= lr * dy.sum(axis=(0, 2, 3)) / N
        return input_gradient


class TutorialDense:
    def __init__(self, w, b):
        self.weights, self.bias = w.copy(), b.copy()

    def forward(self, x):
        self.input = x
        return x @ self.weights + self.bias

    def backward(self, dy, lr):
        weights_gradient = self.input.T @ dy
        input_gradient = dy @ self.weights.T
        self.weights -= lr * weights_gradient
        self.bias -= lr * dy.mean(axis=0)
        return input_gradient


class TutorialFlatten:
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, lr):
        return dy.reshape(self.shape)


class TutorialReLU:
    def forward(self, x):
        self.input = x
        return np.maximum(x, 0)

    def backward(self, dy, lr):
        return dy * (self.input > 0)


class TutorialSigmoid:
    def forward(self, x):
        self.output = 1 / (1 + np.exp(-x))
        return self.output

    def backward(self, dy, lr):
        return dy * self.output * (1 - self.output)


def tutorial_mse_prime(y_true, y_pred):
    return 2 * (y_pred - y_true) / np.size(y_true)


def tutorial_step(layers, x, t):
    out = x
    for layer in layers:
        out = layer.forward(out)
    grad = tutorial_mse_prime(t, out)
    for layer in reversed(layers):
        grad = layer.backward(grad, LR)


# ----------------------------------------------------------------------------------------------
# the three models from one set of parameters
# ----------------------------------------------------------------------------------------------

def make_cnn_ext(dtype, seed=0):
    layers = [cnn_ext.Conv2D(1, 4, 5, seed=seed, dtype=dtype), cnn_ext.Flatten()]
    for i, (n_in, n_out) in enumerate(DENSE):
        layers.append(cnn_ext.Dense(n_in, n_out, seed=seed + 1 + i, dtype=dtype))
        layers.append(cnn_ext.ReLU() if i < len(DENSE) - 1 else cnn_ext.Sigmoid())
    return cnn_ext.Network(layers)


def cnn_ext_step(net, x, t):
    y = net.forward(x)
    net.update(LR, net.backward(cnn_ext.mse_loss(y, t)))


def cnn_ext_loop_step(net, x, t):
    y = x
    for layer in net.layers:
        y = layer.forward(y)
    grad = cnn_ext.mse_loss(y, t)
    for layer in reversed(net.layers):
        grads = layer.backward(grad)
        if layer.parameters():
            layer.update(grads, LR)
        grad = grads.get("dX")


def params_of(net):
    """[(k, b)] for the conv layer then [(w, b)] for each dense layer, copies."""
    return [(p[0][2].copy(), p[1][2].copy()) for p in
            ([layer.parameters() for layer in net.layers if layer.parameters()])]


def make_tutorial(params):
    (k, b), dense = params[0], params[1:]
    layers = [TutorialConv(k, b), TutorialFlatten()]
    for i, (w, bb) in enumerate(dense):
        layers.append(TutorialDense(w, bb))
        layers.append(TutorialReLU() if i < len(dense) - 1 else TutorialSigmoid())
    return layers


def tutorial_params(layers):
    return [(layer.kernels, layer.biases) if isinstance(layer, TutorialConv) else (layer.weights, layer.bias)
            for layer in layers if isinstance(layer, (TutorialConv, TutorialDense))]


def make_torch(params, dtype):
    nn = torch.nn
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    (k, b), dense = params[0], params[1:]
    conv = nn.Conv2d(1, 4, 5)
    mods = [conv, nn.Flatten()]
    linears = []
    for i, (w, _) in enumerate(dense):
        lin = nn.Linear(*w.shape)
        linears.append(lin)
        mods += [lin, nn.ReLU() if i < len(dense) - 1 else nn.Sigmoid()]
    model = nn.Sequential(*mods).to(tdtype)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(k))
        conv.bias.copy_(torch.from_numpy(b))
        for lin, (w, bb) in zip(linears, dense):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            lin.bias.copy_(torch.from_numpy(bb))
    # The tutorial's dK, dB (conv) and dB (dense) are batch means: same update with lr / N on those.
    mean_params = [conv.weight, conv.bias] + [lin.bias for lin in linears]
    opt = torch.optim.SGD([{"params": [lin.weight for lin in linears], "lr": LR},
                           {"params": mean_params, "lr": LR / BATCH}], lr=LR)
    return model, opt, linears


def torch_params(model_opt):
    model, _, linears = model_opt
    conv = model[0]
    out = [(conv.weight.detach().numpy(), conv.bias.detach().numpy())]
    out += [(lin.weight.detach().numpy().T, lin.bias.detach().numpy()) for lin in linears]
    return out


def torch_step(model_opt, x, t):
    model, opt, _ = model_opt
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), t)
    loss.backward()
    opt.step()


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

def load_batches(dtype, n_batches, seed=0):
    """[(x (16, 1, 28, 28), one-hot t (16, 10))] from $CNN_EXT_DATA's MNIST, else random; and a description."""
    root = os.environ.get("CNN_EXT_DATA")
    if root:
        for folder in (root, os.path.join(root, "mnist")):
            img = os.path.join(folder, "train-images-idx3-ubyte.gz")
            lab = os.path.join(folder, "train-labels-idx1-ubyte.gz")
            if os.path.exists(img) and os.path.exists(lab):
                n = n_batches * BATCH
                with gzip.open(img, "rb") as fh:
                    x = np.frombuffer(fh.read(16 + n * 784), dtype=np.uint8, offset=16).reshape(n, 1, 28, 28)
                with gzip.open(lab, "rb") as fh:
                    y = np.frombuffer(fh.read(8 + n), dtype=np.uint8, offset=8)
                x = (x / 255.0).astype(dtype)
                t = np.eye(10, dtype=dtype)[y]
                return ([(x[i:i + BATCH], t[i:i + BATCH]) for i in range(0, n, BATCH)],
                        f"real MNIST from {folder} (first {n} training images)")
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        x = rng.random((BATCH, 1, 28, 28)).astype(dtype)
        t = np.eye(10, dtype=dtype)[rng.integers(0, 10, BATCH)]
        batches.append((x, t))
    return batches, "random MNIST-shaped data (uniform [0, 1) pixels, random one-hot labels)"


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------

def check_same_step(dtype, batch, peers):
    """All peers take one step from the same parameters: the updated parameters must agree."""
    net = make_cnn_ext(dtype)
    params = params_of(net)
    x, t = batch
    cnn_ext_step(net, x, t)
    ref = params_of(net)
    tol = 1e-9 if dtype == np.float64 else 2e-4
    others = {}
    if "tutorial" in peers:
        tut = make_tutorial(params)
        tutorial_step(tut, x, t)
        others["tutorial"] = tutorial_params(tut)
    if LOOP in peers:
        loop = make_cnn_ext(dtype)
        cnn_ext_loop_step(loop, x, t)
        others[LOOP] = params_of(loop)
    if "torch" in peers:
        mo = make_torch(params, dtype)
        torch_step(mo, torch.from_numpy(x), torch.from_numpy(t))
        others["torch"] = torch_params(mo)
    for name, got in others.items():
        for (g1, g2), (r1, r2) in zip(got, ref):
            for g, r in ((g1, r1), (g2, r2)):
                assert_allclose(g, r, rtol=tol, atol=tol * max(float(np.abs(r).max()), 1e-30),
                                err_msg=f"{name}'s training step differs from cnn_ext's")


def blas_held_to_one(step):
    """``step`` with every BLAS library held to one thread (cnn_ext's own kernels keep their threads)."""
    libs = C.blas_controllers()

    def run(*args):
        saved = [(lib, lib.get_num_threads()) for lib in libs]
        for lib, _ in saved:
            lib.set_num_threads(1)
        try:
            step(*args)
        finally:
            for lib, n in saved:
                lib.set_num_threads(n)
    return run


def make_steppers(dtype, batches, peers):
    """{peer: zero-argument callable doing one training step on the next batch}."""
    net = make_cnn_ext(dtype)
    params = params_of(net)
    steppers = {}

    def cycling(step, model, data):
        state = {"i": 0}

        def run():
            x, t = data[state["i"] % len(data)]
            state["i"] += 1
            step(model, x, t)
        return run

    steppers["cnn_ext"] = cycling(cnn_ext_step, net, batches)
    if DIAGNOSTIC in peers:
        steppers[DIAGNOSTIC] = cycling(blas_held_to_one(cnn_ext_step), make_cnn_ext(dtype), batches)
    if LOOP in peers:
        steppers[LOOP] = cycling(cnn_ext_loop_step, make_cnn_ext(dtype), batches)
    if "torch" in peers:
        tb = [(torch.from_numpy(x), torch.from_numpy(t)) for x, t in batches]
        steppers["torch"] = cycling(torch_step, make_torch(params, dtype), tb)
    if "tutorial" in peers:
        steppers["tutorial"] = cycling(tutorial_step, make_tutorial(params), batches)
    return steppers, net


def breakdown(net, batches, repeats, clock=time.perf_counter):
    """Median time of each part of a cnn_ext training step: per-layer forward and backward, loss, update."""
    x, t = batches[0]
    parts = {}

    def timed(name, fn):
        t0 = clock()
        out = fn()
        parts.setdefault(name, []).append(clock() - t0)
        return out

    for _ in range(repeats):
        out = x
        for i, layer in enumerate(net.layers):
            out = timed(f"{i} {type(layer).__name__} forward", lambda: layer.forward(out))
        g = timed("mse_loss", lambda: cnn_ext.mse_loss(out, t))
        grads = timed("backward (all layers, Network.backward)", lambda: net.backward(g))
        dy = g
        for i in range(len(net.layers) - 1, -1, -1):
            layer = net.layers[i]
            if i == 0:
                timed(f"{i} {type(layer).__name__} backward (need_dX=False)",
                      lambda: layer.backward(dy, need_dX=False))
            else:
                dy = timed(f"{i} {type(layer).__name__} backward", lambda: layer.backward(dy))["dX"]
        timed("update (Network.update)", lambda: net.update(LR, grads))
    return {name: float(np.median(v)) for name, v in parts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 repeats of short samples (~30 s)")
    ap.add_argument("--dtypes", type=C.parse_list, default=["float64", "float32"])
    ap.add_argument("--threads", type=lambda s: C.parse_list(s, int), default=[1, 2])
    ap.add_argument("--peers", type=C.parse_list, default=["cnn_ext", "torch", "tutorial", DIAGNOSTIC, LOOP],
                    help=f"comma-separated subset of cnn_ext, torch, tutorial and the diagnostics {DIAGNOSTIC} "
                         f"and {LOOP}")
    ap.add_argument("--repeats", type=int, default=None, help="samples per peer (default 9; 3 with --quick)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per sample (default 0.2; 0.05 quick)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="'cpu': time 1-thread rows (and the breakdown) by the calling thread's CPU time, which "
                         "other processes on the shared machine do not inflate; 2-thread rows are wall time")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip the per-layer breakdown of a cnn_ext step (run on 1 thread)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each dtype/threads block, wait up to this long for other processes to use under "
                         "0.25 cores (default 0: do not wait)")
    ap.add_argument("--out", help="also write the report to OUT.json (the data) and OUT.md (rendered from it)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 0.2)
    peers = ["cnn_ext"] + [p for p in args.peers if p != "cnn_ext" and (p != "torch" or torch is not None)]
    t_start = time.time()

    result = _report.new_result("Training steps of the tutorial's MNIST network", machine=C.machine_report())
    rows, verdicts, breakdowns = [], [], []
    data_note = ""
    for dname in args.dtypes:
        dtype = np.dtype(dname).type
        batches, data_note = load_batches(dtype, 32)
        check_same_step(dtype, batches[0], peers)
        for t in args.threads:
            if args.wait_quiet > 0:
                C.wait_quiet(args.wait_quiet)
            with C.threads(t):
                steppers, net = make_steppers(dtype, batches, peers)
                for fn in steppers.values():  # warm-up
                    for _ in range(3):
                        fn()
                clock = time.thread_time if (args.clock == "cpu" and t == 1) else time.perf_counter
                stats = C.interleaved(steppers, repeats, min_time, clock=clock)
                if not args.no_breakdown and t == 1:
                    breakdowns.append((dname, t, breakdown(net, batches, max(repeats, 20), clock)))
            cnn = stats["cnn_ext"].median
            row = [dname, t]
            for p in peers:
                s = stats[p]
                row += [f"{s.median * 1e3:.2f} (±{s.spread_pct() / 2:.0f}%)", f"{s.median * STEPS_PER_EPOCH:.1f}"]
                if p != "cnn_ext":
                    row.append(C.fmt_ratio(s.median / cnn))
            row.append(f"{stats['cnn_ext'].other_load:.2f}")
            if t == 2:
                bar = TARGET_MS[dtype]
                ok = cnn * 1e3 <= bar
                verdicts.append((dname, bar, ok, cnn * 1e3))
                row.append(f"≤ {bar} ms: {'met' if ok else 'MISSED'} ({cnn * 1e3:.2f} ms, "
                           f"{cnn * 1e3 / bar:.2f}× the bar)")
            else:
                row.append("—")
            rows.append(row)
            print(f"# done {dname} {t} thr ({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)

    header = ["dtype", "thr"]
    for p in peers:
        header += [f"{p} ms/step (IQR)", f"{p} s/epoch"] + ([f"{p}/cnn_ext"] if p != "cnn_ext" else [])
    header += ["other load", "target (2 threads)"]
    clock_note = ("1-thread rows: CPU time of the calling thread (--clock cpu), 2-thread rows: wall time"
                  if args.clock == "cpu" else "wall time")
    result["intro"] = (f"Data: {data_note}; batch {BATCH}, lr {LR}; an epoch is {STEPS_PER_EPOCH} steps; {clock_note}. "
                  f"Medians of {repeats} interleaved samples; ratio = peer time / cnn_ext time; 'other load' = cores "
                  "other processes kept busy meanwhile (a 2-thread result with load above ~0.3 is unreliable). "
                  f"'{DIAGNOSTIC}' is not a peer and not judged: the step with every BLAS held to one thread from "
                  "outside while the cnn_ext kernels keep the row's threads; Dense and the updates hold BLAS "
                  "themselves, so a ratio of 1 says nothing else in the step wakes BLAS threads. "
                  f"'{LOOP}' is not judged either: the tutorial's own train loop (each layer's "
                  "forward, then each layer's backward and update) with cnn_ext's layers and no Network.")
    _report.add_table(result, None, header, rows)
    _report.add_text(result, f"Targets: {sum(v[2] for v in verdicts)} met, {sum(not v[2] for v in verdicts)} MISSED",
                     "\n".join(f"- {dname}, 2 threads, ≤ {bar} ms/step: {'met' if ok else 'MISSED'} — {ms:.2f} ms "
                               f"({ms * STEPS_PER_EPOCH / 1e3:.1f} s per epoch)" for dname, bar, ok, ms in verdicts))
    for dname, t, parts in breakdowns:
        _report.add_table(result, f"Where a cnn_ext step goes ({dname}, {t} thread, "
                                  f"{clock_note.split(',')[0].split(': ')[-1]}; medians, one batch, layers called "
                                  "directly; 'backward (all layers)' is the sum of the per-layer rows below it)",
                          ["part", "ms"], [[k, f"{v * 1e3:.3f}"] for k, v in parts.items()])
    result["notes"] = (f"Total run time {time.time() - t_start:.0f} s; load average at the end "
                       f"{os.getloadavg()[0]:.2f}.")
    C.write_results(result, args.out, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
