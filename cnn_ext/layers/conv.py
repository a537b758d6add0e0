"""The convolution layer (the tutorial's Conv2D, with stride, padding and initialisers)."""
import numpy as np

from .. import _checks
from ..ops import conv2d_bias_gradient, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient
from .base import EXACT, Gradients, ParamLayer, grad_rule, init_params, random_source, register_layer

__all__ = ["Conv2D"]


@register_layer
class Conv2D(ParamLayer):
    """2-D convolution (cross-correlation) layer, NCHW.

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    kernel_size : int or (int, int)
    stride : int or (int, int), default 1
    padding : 'valid', 'same', int, (int, int) or ((top, bottom), (left, right)), default 'valid'
        NumPy integers and integer arrays are accepted for these three; the layer keeps them as plain Python
        ints, tuples and lower-case strings (so ``get_config()`` is JSON and save / load round-trips).
    dilation, groups : 1
        Accepted for PyTorch-style calls; any other value raises ``NotImplementedError``.
    init : None, 'he_normal', 'he_uniform', 'glorot_normal' or 'glorot_uniform'
        None is the tutorial's: kernels and biases ~ N(0, 1). The others draw the kernels and zero the biases.
    rng : numpy.random.Generator or RandomState, optional
    seed : int, optional
        Seeds a new Generator; with neither, NumPy's global random state is used (``np.random.seed`` works).
    dtype : float32 or float64, default float64

    Attributes
    ----------
    k : ndarray, shape (c_out, c_in, KH, KW)
    b : ndarray, shape (c_out,)

    Notes
    -----
    x (N, c_in, H, W) -> y (N, c_out, OH, OW) with ``OH = (H + pad_top + pad_bottom - KH) // SH + 1``
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

    def __init__(self, c_in, c_out, kernel_size, *, stride=1, padding="valid", dilation=1, groups=1, init=None,
                 rng=None, seed=None, dtype=np.float64):
        super().__init__()
        if _checks.ints(dilation, "dilation", 1) != (1, 1):
            raise NotImplementedError(f"Conv2D: dilation={dilation!r} is not implemented (only 1)")
        if _checks.positive_int(groups, "groups") != 1:
            raise NotImplementedError(f"Conv2D: groups={groups!r} is not implemented (only 1)")
        self.c_in = _checks.positive_int(c_in, "c_in", _checks.INT_MAX)
        self.c_out = _checks.positive_int(c_out, "c_out", _checks.INT_MAX)
        self.kernel_size = _checks.ints(kernel_size, "kernel_size", 1)
        self.stride = _checks.ints(stride, "stride", 1)
        # plain Python ints, tuples and strings (NumPy integers and arrays too, and lists from a JSON config), so
        # that get_config() is JSON-serialisable and save / load round-trips
        self.padding = _checks.padding_spec(padding)
        _checks.padding_sides(self.padding, *self.kernel_size, self.stride)  # 'same' with stride > 1 raises
        self.init = init
        self.dtype = _checks.float_dtype(dtype)
        KH, KW = self.kernel_size
        self.k, self.b = init_params(init, random_source(rng, seed), (self.c_out, self.c_in, KH, KW), (self.c_out,),
                                      self.c_in * KH * KW, self.c_out * KH * KW, 1.0, self.dtype,
                                      lambda: f"Conv2D: c_in={self.c_in}, c_out={self.c_out}, "
                                              f"kernel_size={self.kernel_size} give kernels")

    def param_shapes(self):
        """``{"k": ((c_out, c_in, KH, KW), dtype), "b": ((c_out,), dtype)}``, from the config alone."""
        return {"k": ((self.c_out, self.c_in, *self.kernel_size), self.dtype), "b": ((self.c_out,), self.dtype)}

    def forward(self, x):
        """``y[n, j] = b[j] + Σ_i xcorr(x[n, i], k[j, i])``; x (N, c_in, H, W) -> y (N, c_out, OH, OW)."""
        x = _checks.as_float_array(x, "x").astype(self.dtype, copy=False)
        if x.ndim != 4 or x.shape[1] != self.c_in:
            raise self._shape_error("x", f"(N, {self.c_in}, H, W)", x.shape)
        try:
            y = conv2d_forward(x, self.k, self.b, stride=self.stride, padding=self.padding)
        except ValueError as exc:  # e.g. the kernel is larger than the (padded) input
            raise ValueError(f"{self!r}: input of shape {x.shape}: {exc}") from None
        self._x, self._y_shape = x, y.shape
        return y

    def backward(self, dE_dY, *, need_dX=True):
        """``{"dK", "dB", "dX"}``: dK and dB batch means (tutorial rule) or batch sums (exact rule, when
        ``dE_dY`` is an :class:`~cnn_ext.losses.ExactGradient`); dX the input gradient under both."""
        x = self._cached_input()
        rule = grad_rule(dE_dY)
        dy = self._grad_output(dE_dY, self.dtype)
        if rule == EXACT:
            dy = dy.view(np.ndarray)  # the kernels take plain arrays
        grads = Gradients(rule, ("dK", "dB"), {
            "dK": conv2d_kernel_gradient(dy, x, stride=self.stride, padding=self.padding,
                                         kernel_size=self.kernel_size),
            "dB": conv2d_bias_gradient(dy),
        })
        if rule == EXACT and x.shape[0] > 1:
            # the operations return batch means (the tutorial's): times N is the sum, within one rounding
            n = grads["dK"].dtype.type(x.shape[0])
            grads["dK"] *= n
            grads["dB"] *= n
        if need_dX:
            grads["dX"] = conv2d_input_gradient(dy, self.k, stride=self.stride, padding=self.padding,
                                                input_size=x.shape[2:])
        return grads

    def extra_repr(self):
        s = f"{self.c_in}, {self.c_out}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != "valid":
            s += f", padding={self.padding!r}"
        return s + self._repr_tail()
