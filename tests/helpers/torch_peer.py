"""Run a cnn_ext optimizer and its PyTorch peer side by side on the same parameters and the same gradients.

The gradient of each step depends on the parameters it is taken at (``g = 0.5 p + noise_t``, the gradient of a
quadratic plus noise), so each side computes its own from its own parameters and a wrong update shows up in the
next gradients too.
"""
import numpy as np

from cnn_ext import Dense, Network, ReLU


def small_net(dtype=np.float64):
    return Network([Dense(3, 4, seed=0, dtype=dtype), ReLU(), Dense(4, 2, seed=1, dtype=dtype)])


def params_of(net):
    return [p for _, _, p in net.parameters()]


def noise(net, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(p.shape) for p in params_of(net)] for _ in range(steps)]


def grads_for(net, noise_t, dtype):
    """Network.backward-shaped gradient dicts: 0.5 p + noise for every parameter."""
    grads = [{"dX": np.zeros(1)} for _ in net.layers]
    it = iter(noise_t)
    for i, layer in enumerate(net.layers):
        for _, key, p in layer.parameters():
            grads[i][key] = (0.5 * p + next(it)).astype(dtype)
    return grads


def run_ours(net, opt, noises, dtype, after_step=None):
    for t, n in enumerate(noises):
        opt.step(net, grads_for(net, n, dtype))
        if after_step is not None:
            after_step(t)
    return [p.copy() for p in params_of(net)]


def run_torch(torch, start, make_opt, noises, dtype, before_step=None, after_step=None):
    """PyTorch's trajectory from the same start: (final parameters, the optimizer)."""
    tdtype = torch.float32 if dtype == np.float32 else torch.float64
    tparams = [torch.tensor(p.copy(), dtype=tdtype, requires_grad=True) for p in start]
    opt = make_opt(tparams)
    for t, n in enumerate(noises):
        for tp, e in zip(tparams, n):
            tp.grad = torch.tensor((0.5 * tp.detach().numpy() + e).astype(dtype))
        if before_step is not None:
            before_step(t, tparams, opt)
        opt.step()
        if after_step is not None:
            after_step(t, opt)
    return [tp.detach().numpy().copy() for tp in tparams], opt


TOL = {np.float32: dict(rtol=2e-5, atol=1e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}
