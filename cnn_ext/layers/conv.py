"""The convolution layer (the tutorial's Conv2D, with stride, padding and initialisers)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .. import _checks
from ..ops import (conv2d_bias_gradient, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient,
                   conv2d_output_shape)
from .base import (EXACT, Gradients, ParamLayer, checked_init, grad_rule, init_params, random_source,
                   register_layer)

if TYPE_CHECKING:
    from .._typing import FloatArray, IntPair, Padding, RandomSource

__all__ = ["Conv2D"]


@register_layer
class Conv2D(ParamLayer):
    """2-D convolution (cross-correlation) layer, NCHW.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels. ``Conv2D(None, c_out, kernel_size)`` is lazy, as PyTorch's ``LazyConv2d``:
        ``c_in`` is taken from the first input (a forward pass, or :meth:`cnn_ext.Network.summary`), and the
        kernels are drawn then. Until then ``parameters()`` is empty, ``built`` is False and ``save`` /
        ``state_dict`` refuse the network by name.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : 'valid', 'same', int, (int, int) or ((top, bottom), (left, right)), default 'valid'
        NumPy integers and integer arrays are accepted for these three; the layer keeps them as plain Python
        ints, tuples and lower-case strings (so ``get_config()`` is JSON and save / load round-trips).
    dilation : int or (int, int), default 1
        Spacing between kernel taps, as in PyTorch (how each case runs, and what it costs: see
        :func:`~cnn_ext.conv2d_forward`).
    groups : int, default 1
        Channel groups, as in PyTorch: must divide c_in and c_out; ``groups == c_in`` is a depthwise
        convolution. The kernels have shape (c_out, c_in // groups, KH, KW).
    init : None, 'he_normal', 'he_uniform', 'glorot_normal' or 'glorot_uniform'
        None is the tutorial's: kernels and biases ~ N(0, 1). The others draw the kernels and zero the biases.
    rng : numpy.random.Generator or RandomState, optional
    seed : int, optional
        Seeds a new Generator; with neither, NumPy's global random state is used (``np.random.seed`` works).
    dtype : float32 or float64, default float64

    Attributes
    ----------
    k : ndarray, shape (c_out, c_in // groups, KH, KW)
    b : ndarray, shape (c_out,)

    Notes
    -----
    x (N, c_in, H, W) -> y (N, c_out, OH, OW) with ``OH = (H + pad_top + pad_bottom - DH * (KH - 1) - 1) // SH + 1``
    (``H - KH + 1`` by default), same for OW.
    ``backward(dE_dY, need_dX=True)`` returns ``{"dK", "dB", "dX"}`` (a :class:`Gradients` dict); dX is never
    averaged; ``need_dX=False`` skips dX (the first layer of a network never needs it). The gradient rule:

    ================================  ==========================  ============================
    dE_dY                             dK, dB                      as in
    ================================  ==========================  ============================
    plain array (``mse_loss``)        batch means (sum / N)       the tutorial
    ``ExactGradient`` (``exact()``)   batch sums: exact           PyTorch's autograd
    ================================  ==========================  ============================
    """

    _config_keys = ("c_in", "c_out", "kernel_size", "stride", "padding", "init")
    _params = (("k", "dK"), ("b", "dB"))
    k: FloatArray
    b: FloatArray
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]

    c_in: int | None

    def __init__(self, c_in: int | None, c_out: int, kernel_size: IntPair, *, stride: IntPair = 1,
                 padding: Padding = "valid", dilation: IntPair = 1, groups: int = 1, init: str | None = None,
                 rng: RandomSource | None = None, seed: int | None = None, dtype: DTypeLike = np.float64) -> None:
        super().__init__()
        self.c_in = None if c_in is None else _checks.positive_int(c_in, "c_in", _checks.INT_MAX)
        self.c_out = _checks.positive_int(c_out, "c_out", _checks.INT_MAX)
        self.kernel_size = _checks.ints(kernel_size, "kernel_size", 1)
        self.stride = _checks.ints(stride, "stride", 1)
        # plain Python ints, tuples and strings (NumPy integers and arrays too, and lists from a JSON config), so
        # that get_config() is JSON-serialisable and save / load round-trips
        self.padding = _checks.padding_spec(padding)
        self.dilation = _checks.dilation(dilation)
        if self.c_in is not None:
            self.groups = _checks.groups(groups, self.c_in, self.c_out, "c_in", out_name="c_out")
        else:  # lazy: groups must divide c_out now, and the input's channels when they come
            self.groups = _checks.positive_int(groups, "groups", _checks.INT_MAX)
            if self.c_out % self.groups:
                raise ValueError(f"groups={self.groups} must divide the output channels (c_out={self.c_out})")
        KDH, KDW = _checks.dilated(*self.kernel_size, *self.dilation, "kernel_size", self.kernel_size)
        _checks.padding_sides(self.padding, KDH, KDW, self.stride)  # 'same' with stride > 1 raises
        self.init = checked_init(init)
        self.dtype = _checks.float_dtype(dtype)
        self._source = random_source(rng, seed)
        self.k = self.b = None  # type: ignore[assignment]  # a lazy layer's, until its first input
        if self.c_in is not None:
            self._draw(self.c_in)

    def _draw(self, c_in: int) -> None:
        """Draw k and b for ``c_in`` input channels (a lazy layer's c_in is known only from its first input)."""
        KH, KW = self.kernel_size
        c_k = c_in // self.groups
        # fans as PyTorch's: fan_in counts one group's inputs, fan_out all output channels
        self.k, self.b = init_params(self.init, self._source, (self.c_out, c_k, KH, KW), (self.c_out,),
                                      c_k * KH * KW, self.c_out * KH * KW, 1.0, self.dtype,
                                      lambda: f"Conv2D: c_in={c_in}, c_out={self.c_out}, "
                                              f"kernel_size={self.kernel_size}"
                                              f"{f', groups={self.groups}' if self.groups != 1 else ''} give kernels")
        self._source = None  # drawn once: the layer holds no random state after that

    def _infer(self, x):
        """A lazy layer's c_in from its first input, once every check of that input passed (a refused input
        changes nothing, the random source included)."""
        c_in = _checks.positive_int(x.shape[1], "c_in", _checks.INT_MAX)
        if c_in % self.groups:
            raise ValueError(f"{self!r}: input of shape {x.shape}: groups={self.groups} must divide its {c_in} "
                             f"channels")
        try:
            conv2d_output_shape(x.shape[2:], self.kernel_size, self.stride, self.padding, dilation=self.dilation)
        except ValueError as exc:
            raise ValueError(f"{self!r}: input of shape {x.shape}: {exc}") from None
        self._draw(c_in)
        self.c_in = c_in

    @property
    def built(self) -> bool:
        """False for a lazy Conv2D before its first input (no kernels yet), else True."""
        return self.c_in is not None

    def parameters(self) -> list[tuple[str, str, FloatArray]]:
        """``[("k", "dK", k), ("b", "dB", b)]``, or ``[]`` while a lazy layer's input channels are unknown."""
        return super().parameters() if self.c_in is not None else []

    @property
    def _options(self):
        """The options of the four operations: dilation and groups only when not their defaults (the plain path
        then takes exactly the calls it took before they existed)."""
        opts = {"stride": self.stride, "padding": self.padding}
        if self.dilation != (1, 1):
            opts["dilation"] = self.dilation
        if self.groups != 1:
            opts["groups"] = self.groups
        return opts

    def get_config(self) -> dict[str, Any]:
        """The constructor kwargs; dilation and groups only when not 1 (configs of plain layers stay as they
        were, and files saved before these options load unchanged)."""
        cfg = super().get_config()
        if self.dilation != (1, 1):
            cfg["dilation"] = list(self.dilation)
        if self.groups != 1:
            cfg["groups"] = self.groups
        return cfg

    def param_shapes(self) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
        """``{"k": ((c_out, c_in, KH, KW), dtype), "b": ((c_out,), dtype)}``, from the config alone."""
        if self.c_in is None:
            raise ValueError(f"{self!r} has not inferred c_in yet: run a forward pass or summary(input_shape) first")
        kshape = (self.c_out, self.c_in // self.groups, *self.kernel_size)
        return {"k": (kshape, self.dtype), "b": ((self.c_out,), self.dtype)}

    def forward(self, x: ArrayLike) -> FloatArray:
        """``y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i])``; x (N, c_in, H, W) -> y (N, c_out, OH, OW)."""
        x = _checks.as_float_array(x, "x").astype(self.dtype, copy=False)
        if self.c_in is None and x.ndim == 4 and x.shape[1] >= 1:
            self._infer(x)
        if x.ndim != 4 or x.shape[1] != self.c_in:
            raise self._shape_error("x", f"(N, {self.c_in or 'c_in'}, H, W)", x.shape)
        try:
            y = conv2d_forward(x, self.k, self.b, **self._options)
        except ValueError as exc:  # e.g. the kernel is larger than the (padded) input
            raise ValueError(f"{self!r}: input of shape {x.shape}: {exc}") from None
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dE_dY: ArrayLike, *, need_dX: bool = True) -> Gradients:
        """``{"dK", "dB", "dX"}``: dK and dB batch means (tutorial rule) or batch sums (exact rule, when
        ``dE_dY`` is an :class:`~cnn_ext.losses.ExactGradient`); dX the input gradient under both."""
        x = self._cached_input()
        rule = grad_rule(dE_dY)
        dy = self._grad_output(dE_dY, self.dtype)
        if rule == EXACT:
            dy = dy.view(np.ndarray)  # the kernels take plain arrays
        grads = Gradients(rule, ("dK", "dB"), {
            "dK": conv2d_kernel_gradient(dy, x, kernel_size=self.kernel_size, **self._options),
            "dB": conv2d_bias_gradient(dy),
        })
        if rule == EXACT and x.shape[0] > 1:
            # the operations return batch means (the tutorial's): times N is the sum, within one rounding
            n = grads["dK"].dtype.type(x.shape[0])
            grads["dK"] *= n
            grads["dB"] *= n
        if need_dX:
            grads["dX"] = conv2d_input_gradient(dy, self.k, input_size=x.shape[2:], **self._options)
        return grads

    def extra_repr(self) -> str:
        s = f"{self.c_in}, {self.c_out}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != "valid":
            s += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + self._repr_tail()
