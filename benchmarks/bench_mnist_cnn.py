"""Per-epoch time of the small MNIST CNN of examples/train_mnist_cnn.py (issue 6) and of the small ResNet of
examples/train_resnet.py (issue 22): cnn_ext vs PyTorch, side by side.

Network: Conv2D(1, 32, 3, 'same'), ReLU, MaxPool2D(2), Conv2D(32, 64, 3, 'same'), ReLU, MaxPool2D(2), Flatten,
Dense(3136, 128), ReLU, Dense(128, 10); softmax cross-entropy on the logits; Adam(lr=1e-3); float32; batch 64.
One step = forward, loss and its gradient, backward, Adam update. The epoch time is projected from the median
step time: ceil(60000 / batch) steps (evaluation and data shuffling are left out for both).

Peers start from the same parameters; before timing, the forward logits, the loss and every parameter gradient
are checked to agree (cnn_ext's Conv2D dK/dB and Dense dB are batch means, the tutorial's convention, so they are
compared after multiplying by the batch size; Adam's step is invariant to that scale).

The ResNet (--network resnet or both: Conv2D + BatchNorm2D stem, three basic residual blocks with BatchNorm,
global average pooling, Dropout, Dense) runs in training mode in both peers (batch statistics, Dropout on);
its PyTorch twin gets cnn_ext's state_dict, and before timing the logits in evaluation mode and the whole
state after one Adam step are checked to agree.

--pairing adds a table for the CNN: its step as Network runs it (each ReLU inside the MaxPool2D after it,
cnn_ext/layers/chain.py) against the same step with every layer on its own, interleaved.

--network loop trains the CNN with its layers called one by one, as the tutorial's train loop calls them (the
loss gradient passed on as cnn_ext.exact, Adam on the per-layer dicts): nothing holds the BLAS threads between
the calls, as in a user's own loop. Its gradients are checked to be Network.backward's, bitwise.

    CNN_EXT_DATA=../shared/data/mnist python benchmarks/bench_mnist_cnn.py            # 2 threads
    python benchmarks/bench_mnist_cnn.py --threads 1,2 --quick --network both --pairing
"""
import argparse
import itertools
import os
import sys

import numpy as np
from numpy.testing import assert_allclose

import _common as C
import _report
from _common import torch

import cnn_ext
from cnn_ext import Adam, exact, softmax_cross_entropy
from cnn_ext.layers import chain

sys.path.insert(0, os.path.join(C._ROOT, "examples"))
from train_mnist_cnn import build_network  # noqa: E402  (the example's network, so both measure the same one)
from train_resnet import build_network as build_resnet  # noqa: E402

TRAIN_SIZE = 60000


def load_batches(batch, n_batches, seed=0):
    """[(x (batch, 1, 28, 28) float32, labels (batch,) int64)] from real MNIST when reachable, else random."""
    n = batch * n_batches
    try:
        from cnn_ext.datasets import load_mnist

        (x, y), _ = load_mnist(dtype=np.float32, download=False)
        what = f"real MNIST (first {n} training images)"
    except (FileNotFoundError, ValueError, OSError):
        rng = np.random.default_rng(seed)
        x, y = rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)
        what = "random MNIST-shaped data"
    x, y = np.ascontiguousarray(x[:n]), y[:n].astype(np.int64)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)], what


def make_torch(net):
    """nn.Sequential with the same layers and parameters as the cnn_ext network, and its Adam."""
    nn = torch.nn
    mods = []
    for layer in net.layers:
        name = type(layer).__name__
        if name == "Conv2D":
            m = nn.Conv2d(layer.c_in, layer.c_out, layer.kernel_size, padding="same")
            m.weight.data = torch.from_numpy(layer.k.copy())
            m.bias.data = torch.from_numpy(layer.b.copy())
        elif name == "Dense":
            m = nn.Linear(layer.n_in, layer.n_out)
            m.weight.data = torch.from_numpy(np.ascontiguousarray(layer.w.T))
            m.bias.data = torch.from_numpy(layer.b.copy())
        elif name == "MaxPool2D":
            m = nn.MaxPool2d(layer.kernel_size, layer.stride)
        else:
            m = {"ReLU": nn.ReLU, "Flatten": nn.Flatten}[name]()
        mods.append(m)
    model = nn.Sequential(*mods)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def cnn_ext_step(state, x, y):
    net, opt = state
    _, dE_dY = softmax_cross_entropy(net.forward(x), y)
    opt.step(net, net.backward(dE_dY))


def unpaired_step(state, x, y):
    """cnn_ext_step with each ReLU before a MaxPool2D run on its own (the pairing of layers/chain.py off)."""
    paired = chain._pools_relu
    chain._pools_relu = lambda layers, j: False
    try:
        cnn_ext_step(state, x, y)
    finally:
        chain._pools_relu = paired


def layer_loop_grads(net, x, y):
    """Network.forward / backward's gradients with the layers called one by one, as the tutorial's train loop calls
    them (a user's loop outside any Network: nothing holds the BLAS threads between the calls)."""
    a = x
    for layer in net.layers:
        a = layer.forward(a)
    _, g = softmax_cross_entropy(a, y)
    grads = [None] * len(net.layers)
    for i in reversed(range(len(net.layers))):
        grads[i] = net.layers[i].backward(g)
        g = exact(grads[i]["dX"]) if i else None
    return grads


def cnn_ext_loop_step(state, x, y):
    net, opt = state
    opt.step(net, layer_loop_grads(net, x, y))


def torch_step(state, x, y):
    model, opt = state
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def check_same_model(batch):
    """Logits, loss and all parameter gradients of the two peers agree on one batch (softmax_cross_entropy's
    gradient is exact: every layer returns the gradient of the batch-mean loss, as PyTorch's autograd does)."""
    x, y = batch
    net = build_network(seed=0)
    model, _ = make_torch(net)
    logits = net.forward(x)
    loss, dE_dY = softmax_cross_entropy(logits, y)
    grads = net.backward(dE_dY)
    tl = model(torch.from_numpy(x))
    tloss = torch.nn.functional.cross_entropy(tl, torch.from_numpy(y))
    tloss.backward()
    assert_allclose(logits, tl.detach().numpy(), rtol=1e-4, atol=1e-4, err_msg="logits differ")
    assert abs(loss - tloss.item()) < 1e-4 * max(1.0, abs(loss)), (loss, tloss.item())
    tparams = [p for p in model.parameters()]
    ours = [(type(layer).__name__, name, grads[i][key]) for i, layer in enumerate(net.layers)
            for name, key, _ in layer.parameters()]
    for (lname, pname, g), tp in zip(ours, tparams):
        if lname == "Dense" and pname == "w":
            g = g.T
        ref = tp.grad.numpy()
        assert_allclose(g, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()),
                        err_msg=f"{lname}.{pname} gradient differs")


def make_torch_resnet(net):
    """The ResNet of examples/train_resnet.py in PyTorch, with cnn_ext's weights and buffers, and its Adam."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, block):
            super().__init__()
            self.layers = nn.Sequential(*[convert(layer) for layer in block.layers])
            self.shortcut = None if block.shortcut is None else \
                nn.Sequential(*[convert(layer) for layer in block.shortcut])

        def forward(self, x):
            return self.layers(x) + (x if self.shortcut is None else self.shortcut(x))

    def convert(layer):
        name = type(layer).__name__
        if name == "Conv2D":
            return nn.Conv2d(layer.c_in, layer.c_out, layer.kernel_size, stride=layer.stride,
                             padding=layer.padding if isinstance(layer.padding, (int, str)) else layer.padding[0])
        if name == "BatchNorm2D":
            return nn.BatchNorm2d(layer.num_features, eps=layer.eps, momentum=layer.momentum)
        if name == "Residual":
            return Block(layer)
        if name == "Dense":
            return nn.Linear(layer.n_in, layer.n_out)
        if name == "Dropout":
            return nn.Dropout(layer.p)
        if name == "GlobalAvgPool2D":
            return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return {"ReLU": nn.ReLU}[name]()

    model = nn.Sequential(*[convert(layer) for layer in net.layers])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def check_same_loop(batch):
    """The layer loop's gradients are Network.backward's, bitwise."""
    x, y = batch
    net = build_network(seed=0)
    theirs = net.backward(softmax_cross_entropy(net.forward(x), y)[1])
    for i, (mine, ref) in enumerate(zip(layer_loop_grads(net, x, y), theirs)):
        for key in ref:
            if key != "dX":
                np.testing.assert_array_equal(mine[key], ref[key], err_msg=f"layer loop: layer {i} {key} differs")


def check_same_resnet(batch):
    """Evaluation-mode logits, and every weight and buffer after one training-mode SGD step, agree (SGD, not
    Adam: the convolution biases before a BatchNorm have a zero gradient, whose rounding noise Adam's first step
    would scale up to +-lr)."""
    x, y = batch
    net = build_resnet(seed=0)
    model, _ = make_torch_resnet(net)
    net.eval()
    model.eval()
    assert_allclose(net.forward(x), model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-4,
                    err_msg="ResNet logits differ")
    net.train()
    model.train()
    net[10].p = model[10].p = 0.0  # Dropout's draws differ between the peers: off for this check only
    cnn_ext_step((net, cnn_ext.SGD(0.1)), x, y)
    torch_step((model, torch.optim.SGD(model.parameters(), lr=0.1)), torch.from_numpy(x), torch.from_numpy(y))
    theirs = model.state_dict()
    for key, value in net.state_dict().items():
        assert_allclose(value, theirs[key].numpy(), rtol=1e-3, atol=1e-4, err_msg=f"ResNet {key} differs")


def stepper(step, state, data):
    """A zero-argument callable doing ``step(state, x, y)`` on the next batch of ``data`` (cycling)."""
    data = itertools.cycle(data)
    return lambda: step(state, *next(data))


def make_steppers(batches, network="cnn"):
    """{peer: zero-argument callable doing one training step on the next batch (cycling)}."""
    net = build_resnet(seed=0) if network == "resnet" else build_network(seed=0)
    steppers = {"cnn_ext": stepper(cnn_ext_loop_step if network == "loop" else cnn_ext_step, (net, Adam(1e-3)),
                                   batches)}
    if torch is not None:
        tb = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
        steppers["torch"] = stepper(torch_step, make_torch_resnet(net) if network == "resnet" else make_torch(net), tb)
    return steppers


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=lambda s: C.parse_list(s, int), default=[2])
    ap.add_argument("--network", choices=("cnn", "loop", "resnet", "both"), default="cnn",
                    help="the small CNN (train_mnist_cnn.py), the same CNN trained by a loop that calls its layers "
                         "one by one, the ResNet (train_resnet.py), or both the CNN and the ResNet")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=None, help="samples per peer (default 7; 3 with --quick)")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per sample (default 0.5; 0.2 quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each thread count, wait up to this long for other processes to go quiet")
    ap.add_argument("--pairing", action="store_true",
                    help="also time the CNN's step with each ReLU inside the MaxPool2D after it against every layer "
                         "on its own")
    ap.add_argument("--out", help="also write the report to OUT.json (the data) and OUT.md (rendered from it)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    min_time = args.min_time if args.min_time is not None else (0.2 if args.quick else 0.5)
    batches, what = load_batches(args.batch_size, 16)
    steps_per_epoch = -(-TRAIN_SIZE // args.batch_size)
    networks = ("cnn", "resnet") if args.network == "both" else (args.network,)
    titles = {"cnn": "small MNIST CNN", "loop": "small MNIST CNN, its layers called one by one (no Network)",
              "resnet": "small ResNet with BatchNorm (train_resnet.py, width 16)"}

    result = _report.new_result(f"{' and '.join(titles[n] for n in networks)}, one epoch: cnn_ext vs PyTorch "
                                f"(float32, Adam, batch {args.batch_size})", level=1,
                                machine=C.machine_report() + [f"- data: {what}"])
    if torch is None:
        result["intro"] = "PyTorch is not installed: only cnn_ext is timed."
    else:
        with C.threads(max(args.threads)):
            if "cnn" in networks or "loop" in networks:
                check_same_model(batches[0])
            if "loop" in networks:
                check_same_loop(batches[0])
            if "resnet" in networks:
                check_same_resnet(batches[0])
        result["intro"] = ("Checked before timing: the same logits, loss and parameter gradients in both peers (the "
                           "ResNet: the same logits, and the same weights and running statistics after one SGD step).")
    rows = []
    for network in networks:
        for t in args.threads:
            if args.wait_quiet:
                C.wait_quiet(args.wait_quiet)
            with C.threads(t):
                steppers = make_steppers(batches, network)
                for fn in steppers.values():  # warm up (allocations, Adam state, thread pools)
                    fn()
                    fn()
                stats = C.interleaved(steppers, repeats, min_time)
            ours = stats["cnn_ext"].median
            row = [network, str(t), f"{C.fmt_time(ours)} (±{stats['cnn_ext'].spread_pct():.0f}%)",
                   f"{ours * steps_per_epoch:.1f} s"]
            if "torch" in stats:
                theirs = stats["torch"].median
                row += [f"{C.fmt_time(theirs)} (±{stats['torch'].spread_pct():.0f}%)",
                        f"{theirs * steps_per_epoch:.1f} s", C.fmt_ratio(theirs / ours)]
            else:
                row += ["—", "—", "—"]
            row.append(f"{stats['cnn_ext'].other_load:.2f}")
            rows.append(row)
    _report.add_table(result, None, ["network", "threads", "cnn_ext step", "cnn_ext epoch", "torch step",
                                     "torch epoch", "ratio", "other load"], rows,
                      intro=f"Median step time of {repeats} interleaved samples, epoch = {steps_per_epoch} steps; "
                            "ratio = PyTorch time / cnn_ext time (> 1: cnn_ext is faster); 'other load' = cores other "
                            "processes kept busy meanwhile.")
    if args.pairing:
        rows = []
        for t in args.threads:
            with C.threads(t):
                steppers = {"paired": stepper(cnn_ext_step, (build_network(seed=0), Adam(1e-3)), batches),
                            "one by one": stepper(unpaired_step, (build_network(seed=0), Adam(1e-3)), batches)}
                for fn in steppers.values():
                    fn()
                    fn()
                stats = C.interleaved(steppers, repeats, min_time)
            paired, alone = stats["paired"].median, stats["one by one"].median
            rows.append([str(t), C.fmt_time(paired), C.fmt_time(alone), C.fmt_ratio(alone / paired),
                         f"{stats['paired'].other_load:.2f}"])
        _report.add_table(result, "The CNN's step: each ReLU inside the MaxPool2D's passes, against each layer alone",
                          ["threads", "paired", "one by one", "speed-up", "other load"], rows,
                          intro=f"cnn_ext alone, median step time of {repeats} interleaved samples; 'one by one' "
                                "turns off the pairing of cnn_ext/layers/chain.py (the same results, bitwise).")
    C.write_results(result, args.out, argv)


if __name__ == "__main__":
    main()
