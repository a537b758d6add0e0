"""PyTorch interoperability: a :class:`cnn_ext.Network` from an ``nn.Sequential`` and back, weights included.

PyTorch is optional: it is imported inside the two functions only, which raise an ``ImportError`` saying what to
install when it is missing. The supported modules and their layers:

==============================================  ============================================
PyTorch                                         cnn_ext
==============================================  ============================================
``Conv2d`` (zero padding)                       :class:`~cnn_ext.Conv2D` (no bias: a zero bias)
``Linear``                                      :class:`~cnn_ext.Dense` (``w`` is ``weight.T``)
``ReLU``, ``Sigmoid``, ``Tanh``                 :class:`~cnn_ext.ReLU`, ``Sigmoid``, ``Tanh``
``LeakyReLU(negative_slope)``                   :class:`~cnn_ext.LeakyReLU` (``alpha``)
``Softmax(dim)``                                :class:`~cnn_ext.Softmax` (``axis``)
``Flatten()``                                   :class:`~cnn_ext.Flatten`
``MaxPool2d``, ``AvgPool2d`` (no padding)       :class:`~cnn_ext.MaxPool2D`, ``AvgPool2D``
``BatchNorm1d``, ``BatchNorm2d``                :class:`~cnn_ext.BatchNorm1D`, ``BatchNorm2D``
``Dropout(p)``                                  :class:`~cnn_ext.Dropout`
``AdaptiveAvgPool2d(1)`` + ``Flatten()``        :class:`~cnn_ext.GlobalAvgPool2D`
==============================================  ============================================

Nested ``nn.Sequential`` containers are flattened. Any other module raises ``TypeError`` naming it; a supported
module with an option cnn_ext does not have (``Conv2d(padding_mode='reflect')``, ``MaxPool2d(padding=1)``...) raises
``ValueError`` naming the module and the option. Both directions copy the arrays and the training mode.
"""
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .layers import (BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout, Flatten, LeakyReLU, ReLU, Sigmoid, Softmax,
                     Tanh)
from .network import Network
from .pooling import AvgPool2D, GlobalAvgPool2D, MaxPool2D

__all__ = ["from_torch", "to_torch"]


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("cnn_ext.from_torch / to_torch need PyTorch, which is optional for cnn_ext: install it "
                          "(pip install torch)") from None
    return torch


def _np(t, dtype):
    return np.array(t.detach().cpu().numpy(), dtype=dtype, order="C", copy=True)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _refuse(module, option):
    raise ValueError(f"from_torch: {module!r}: {option} is not supported by cnn_ext")


def _modules(module, nn):
    """The leaf modules of a (nested) nn.Sequential, in order."""
    out = []
    for child in module.children():
        out.extend(_modules(child, nn) if isinstance(child, nn.Sequential) else [child])
    return out


def _from_conv(m, dtype):
    if m.padding_mode != "zeros":
        _refuse(m, f"padding_mode={m.padding_mode!r}")
    padding = m.padding if isinstance(m.padding, str) else _pair(m.padding)
    layer = Conv2D.without_weights(dict(c_in=m.in_channels, c_out=m.out_channels, kernel_size=_pair(m.kernel_size),
                                        stride=_pair(m.stride), padding=padding, dilation=_pair(m.dilation),
                                        groups=m.groups, init=None, dtype=dtype))
    b = _np(m.bias, dtype) if m.bias is not None else np.zeros(m.out_channels, dtype)
    layer.set_weights({"k": _np(m.weight, dtype), "b": b}, copy=False)
    return layer


def _from_linear(m, dtype):
    layer = Dense.without_weights(dict(n_in=m.in_features, n_out=m.out_features, init=None, dtype=dtype))
    b = _np(m.bias, dtype) if m.bias is not None else np.zeros(m.out_features, dtype)
    layer.set_weights({"w": np.ascontiguousarray(_np(m.weight, dtype).T), "b": b}, copy=False)
    return layer


def _from_pool(m, cls):
    if _pair(m.padding) != (0, 0):
        _refuse(m, f"padding={m.padding}")
    if m.ceil_mode:
        _refuse(m, "ceil_mode=True")
    if cls is MaxPool2D and _pair(m.dilation) != (1, 1):
        _refuse(m, f"dilation={m.dilation}")
    if cls is MaxPool2D and m.return_indices:
        _refuse(m, "return_indices=True")
    if cls is AvgPool2D and m.divisor_override is not None:
        _refuse(m, f"divisor_override={m.divisor_override}")
    stride = m.stride if m.stride not in (None, ()) else m.kernel_size
    return cls(_pair(m.kernel_size), _pair(stride))


def _from_batchnorm(m, cls, dtype):
    if not m.track_running_stats:
        _refuse(m, "track_running_stats=False")
    layer = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine, dtype=dtype)
    if m.affine:
        layer.gamma[...] = _np(m.weight, dtype)
        layer.beta[...] = _np(m.bias, dtype)
    layer.running_mean[...] = _np(m.running_mean, dtype)
    layer.running_var[...] = _np(m.running_var, dtype)
    layer.num_batches_tracked[...] = int(m.num_batches_tracked)
    return layer


def _flatten_ok(m):
    return m.start_dim == 1 and m.end_dim == -1


def from_torch(module: Any, dtype: DTypeLike | None = None) -> Network:
    """A :class:`cnn_ext.Network` computing what the PyTorch ``nn.Sequential`` ``module`` computes.

    Parameters
    ----------
    module : torch.nn.Sequential
        Of the modules in this module's table (nested ``Sequential`` containers are flattened).
    dtype : float32 or float64, optional
        Of the layers with weights; by default the dtype of the module's first parameter (float32 when it has
        none).

    Returns
    -------
    network : Network
        Weights and running statistics copied, in the module's training mode; its outputs equal the module's
        within float rounding.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    TypeError
        ``module`` is not an ``nn.Sequential``, or holds a module cnn_ext has no layer for (named).
    ValueError
        A supported module uses an option cnn_ext does not have (named).
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"from_torch expects a torch.nn.Sequential, got {type(module).__name__}")
    if dtype is None:
        first = next(iter(module.parameters()), None)
        dtype = np.float64 if first is not None and first.dtype == torch.float64 else np.float32
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"from_torch: dtype must be float32 or float64, got {dtype}")
    mods = _modules(module, nn)
    if not mods:
        raise ValueError("from_torch: the module is an empty nn.Sequential")
    simple = {nn.ReLU: ReLU, nn.Sigmoid: Sigmoid, nn.Tanh: Tanh}
    layers: list[Any] = []
    i = 0
    while i < len(mods):
        m = mods[i]
        t = type(m)
        if t in simple:
            layers.append(simple[t]())
        elif t is nn.Conv2d:
            layers.append(_from_conv(m, dtype))
        elif t is nn.Linear:
            layers.append(_from_linear(m, dtype))
        elif t is nn.LeakyReLU:
            layers.append(LeakyReLU(m.negative_slope))
        elif t is nn.Softmax:
            if m.dim is None:
                _refuse(m, "dim=None")
            layers.append(Softmax(m.dim))
        elif t is nn.Flatten:
            if not _flatten_ok(m):
                _refuse(m, f"start_dim={m.start_dim}, end_dim={m.end_dim}")
            layers.append(Flatten())
        elif t is nn.MaxPool2d:
            layers.append(_from_pool(m, MaxPool2D))
        elif t is nn.AvgPool2d:
            layers.append(_from_pool(m, AvgPool2D))
        elif t is nn.BatchNorm2d:
            layers.append(_from_batchnorm(m, BatchNorm2D, dtype))
        elif t is nn.BatchNorm1d:
            layers.append(_from_batchnorm(m, BatchNorm1D, dtype))
        elif t is nn.Dropout:
            layers.append(Dropout(m.p))
        elif t is nn.AdaptiveAvgPool2d:
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if _pair(m.output_size) != (1, 1) or type(nxt) is not nn.Flatten or not _flatten_ok(nxt):
                raise ValueError(f"from_torch: {m!r} is supported only as AdaptiveAvgPool2d(1) followed by Flatten() "
                                 f"(GlobalAvgPool2D)")
            layers.append(GlobalAvgPool2D())
            i += 1
        else:
            raise TypeError(f"from_torch: {m!r} ({t.__module__}.{t.__name__}) has no cnn_ext layer; supported: Conv2d, "
                            f"Linear, ReLU, Sigmoid, Tanh, LeakyReLU, Softmax, Flatten, MaxPool2d, AvgPool2d, "
                            f"BatchNorm1d, BatchNorm2d, Dropout, AdaptiveAvgPool2d(1) + Flatten")
        i += 1
    return Network(layers).train(bool(module.training))


def _tensor(torch, arr):
    return torch.from_numpy(np.array(arr, order="C", copy=True))


def to_torch(net: Network) -> Any:
    """A PyTorch ``nn.Sequential`` computing what ``net`` computes (the inverse of :func:`from_torch`).

    Parameters
    ----------
    net : Network
        Of the layers in this module's table.

    Returns
    -------
    module : torch.nn.Sequential
        Parameters in each layer's dtype (copies), running statistics copied, in the network's training mode.
        ``GlobalAvgPool2D`` becomes two modules (``AdaptiveAvgPool2d(1)``, ``Flatten()``), so module indices can
        differ from layer indices after one.

    Raises
    ------
    ImportError
        PyTorch is not installed.
    TypeError
        ``net`` is not a Network, or holds a layer PyTorch has no module for here (named).
    """
    torch = _torch()
    nn = torch.nn
    if not isinstance(net, Network):
        raise TypeError(f"to_torch expects a cnn_ext.Network, got {type(net).__name__}")
    mods = []
    for i, layer in enumerate(net.layers):
        t = type(layer)
        if not getattr(layer, "built", True):  # a lazy Conv2D or Dense
            raise ValueError(f"to_torch: layer {i} ({layer!r}) has not inferred its input size yet; run a "
                             f"forward pass or summary(input_shape) first")
        if t is Conv2D:
            pad: Any = layer.padding if isinstance(layer.padding, str) else None
            if pad is None:
                from ._checks import padding_sides
                (KH, KW), (DH, DW) = layer.kernel_size, layer.dilation
                top, bottom, left, right = padding_sides(layer.padding, (KH - 1) * DH + 1, (KW - 1) * DW + 1,
                                                         layer.stride)
                if top != bottom or left != right:  # PyTorch's Conv2d pads both sides alike
                    mods.append(nn.ZeroPad2d((left, right, top, bottom)))
                    pad = 0
                else:
                    pad = (top, left)
            m = nn.Conv2d(layer.c_in, layer.c_out, layer.kernel_size, stride=layer.stride, padding=pad,
                          dilation=layer.dilation, groups=layer.groups)
            m.weight = nn.Parameter(_tensor(torch, layer.k))
            m.bias = nn.Parameter(_tensor(torch, layer.b))
        elif t is Dense:
            m = nn.Linear(layer.n_in, layer.n_out)
            m.weight = nn.Parameter(_tensor(torch, layer.w.T))
            m.bias = nn.Parameter(_tensor(torch, layer.b))
        elif t in (ReLU, Sigmoid, Tanh):
            m = {ReLU: nn.ReLU, Sigmoid: nn.Sigmoid, Tanh: nn.Tanh}[t]()
        elif t is LeakyReLU:
            m = nn.LeakyReLU(layer.alpha)
        elif t is Softmax:
            m = nn.Softmax(dim=layer.axis)
        elif t is Flatten:
            m = nn.Flatten()
        elif t in (MaxPool2D, AvgPool2D):
            m = (nn.MaxPool2d if t is MaxPool2D else nn.AvgPool2d)(layer.kernel_size, layer.stride)
        elif t in (BatchNorm1D, BatchNorm2D):
            m = (nn.BatchNorm1d if t is BatchNorm1D else nn.BatchNorm2d)(
                layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine)
            m = m.to(torch.float64 if layer.dtype == np.float64 else torch.float32)
            with torch.no_grad():
                if layer.affine:
                    m.weight.copy_(_tensor(torch, layer.gamma))
                    m.bias.copy_(_tensor(torch, layer.beta))
                m.running_mean.copy_(_tensor(torch, layer.running_mean))
                m.running_var.copy_(_tensor(torch, layer.running_var))
                m.num_batches_tracked.fill_(int(layer.num_batches_tracked))
        elif t is Dropout:
            m = nn.Dropout(layer.p)
        elif t is GlobalAvgPool2D:
            mods.append(nn.AdaptiveAvgPool2d(1))
            m = nn.Flatten()
        else:
            raise TypeError(f"to_torch: layer {i} ({layer!r}) has no PyTorch module here; supported: Conv2D, Dense, "
                            f"ReLU, Sigmoid, Tanh, LeakyReLU, Softmax, Flatten, MaxPool2D, AvgPool2D, BatchNorm1D, "
                            f"BatchNorm2D, Dropout, GlobalAvgPool2D")
        m.train(bool(getattr(layer, "training", True)))
        mods.append(m)
    seq = nn.Sequential(*mods)
    seq.training = bool(net.training)  # the container's own flag; each module already has its layer's
    return seq
