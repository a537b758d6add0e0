"""Independent, obviously-correct implementations the fast code is tested against; no cnn_ext inside.

* The tutorial's SciPy loops: ``signal.correlate2d`` forward, the true kernel gradient
  ``correlate2d(x[n, i], dE_dY[n, j], 'valid')`` averaged over the batch, the bias gradient (batch mean of the
  sums), the input gradient ``convolve2d(dE_dY[n, j], k[j, i], 'full')`` summed over j. Stride 1, no padding.
* ``sliding_window_view`` + ``einsum`` for any stride and padding; the input gradient as the forward map's
  transpose, one kernel tap at a time (so, like the real thing, it never multiplies anything by padding: the
  NaN / inf patterns of this oracle are the ones the fast code must give).
* The adjoint identity <conv(x), dy> == <x, conv_T(dy)>, central differences, pooling references.
* Tolerances per dtype.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.testing import assert_allclose, assert_array_equal
from scipy import signal

DTYPES = (np.float64, np.float32)

# Convolutions: float32 sums of a few hundred products against a float64 oracle.
TOL = {np.float64: dict(rtol=1e-10, atol=1e-10), np.float32: dict(rtol=2e-5, atol=2e-4)}
# Layers (the same sums, compared with a slightly tighter absolute floor).
LAYER_TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=2e-5, atol=2e-5)}
# Pooling: a max is exact; a mean of a few values rounds once or twice.
POOL_TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-12)}
# Central differences in float64 with eps = 1e-6.
GRADCHECK_TOL = dict(rtol=1e-6, atol=1e-7)


def tol(dtype, table=TOL):
    """The tolerance keywords for assert_allclose of a result of this dtype."""
    return table[np.dtype(dtype).type]


def as64(*arrays):
    """float64 copies: the oracles always compute in float64."""
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


# ---------------------------------------------------------------------------------------------
# data and argument normalisation
# ---------------------------------------------------------------------------------------------

def pair(v):
    """An int or a pair as a pair."""
    return (int(v), int(v)) if np.ndim(v) == 0 else tuple(int(a) for a in v)


def pad_amounts(padding, KH, KW, stride=(1, 1)):
    """(top, bottom, left, right) for the conv functions' ``padding`` argument: 'valid', 'same' (stride 1: the
    extra row / column of an even kernel at the bottom / right), an int, a pair (rows, cols) or a pair of pairs."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        assert padding == "same" and pair(stride) == (1, 1)
        return ((KH - 1) // 2, KH - 1 - (KH - 1) // 2, (KW - 1) // 2, KW - 1 - (KW - 1) // 2)
    if np.ndim(padding) == 0:
        return (int(padding),) * 4
    rows, cols = padding
    (top, bottom), (left, right) = pair(rows), pair(cols)
    return (top, bottom, left, right)


def output_size(H, W, KH, KW, stride=(1, 1), pad=(0, 0, 0, 0)):
    """(OH, OW) = floor((H + top + bottom - KH) / SH) + 1, likewise for W."""
    SH, SW = pair(stride)
    return (H + pad[0] + pad[1] - KH) // SH + 1, (W + pad[2] + pad[3] - KW) // SW + 1


def data(rng, N, C_in, C_out, H, W, KH, KW, dtype=np.float64, OH=None, OW=None):
    """Random x, k, b, dE_dY of a layer (dE_dY of the unpadded stride-1 output unless OH / OW are given)."""
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    k = rng.standard_normal((C_out, C_in, KH, KW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    dy = rng.standard_normal((N, C_out, OH or max(1, H - KH + 1), OW or max(1, W - KW + 1))).astype(dtype)
    return x, k, b, dy


def layer_data(rng, shape, dtype=np.float64, stride=(1, 1), padding=0):
    """x, k, b, dE_dY, (top, bottom, left, right) for shape = (N, C_in, C_out, H, W, KH, KW), any stride and
    padding: dE_dY has the output's shape."""
    N, C_in, C_out, H, W, KH, KW = shape
    pad = pad_amounts(padding, KH, KW, stride)
    OH, OW = output_size(H, W, KH, KW, stride, pad)
    x, k, b, dy = data(rng, N, C_in, C_out, H, W, KH, KW, dtype, OH, OW)
    return x, k, b, dy, pad


# ---------------------------------------------------------------------------------------------
# the tutorial's SciPy loops (stride 1, no padding)
# ---------------------------------------------------------------------------------------------

def scipy_forward(x, k, b):
    """y[n, j] = b[j] + Σ_i correlate2d(x[n, i], k[j, i], 'valid')"""
    x, k, b = as64(x, k, b)
    N, C_in, H, W = x.shape
    C_out, _, KH, KW = k.shape
    y = np.zeros((N, C_out, H - KH + 1, W - KW + 1))
    for n in range(N):
        for j in range(C_out):
            y[n, j] = b[j]
            for i in range(C_in):
                y[n, j] += signal.correlate2d(x[n, i], k[j, i], mode="valid")
    return y


def scipy_kernel_gradient(dy, x):
    """dK[j, i] = (1/N) Σ_n correlate2d(x[n, i], dE_dY[n, j], 'valid')  (the true gradient: x first)"""
    dy, x = as64(dy, x)
    N, C_out = dy.shape[:2]
    C_in = x.shape[1]
    dk = np.zeros((C_out, C_in, x.shape[2] - dy.shape[2] + 1, x.shape[3] - dy.shape[3] + 1))
    for n in range(N):
        for j in range(C_out):
            for i in range(C_in):
                dk[j, i] += signal.correlate2d(x[n, i], dy[n, j], mode="valid")
    return dk / N


def bias_gradient(dy):
    """dB[j] = (1/N) Σ_{n, p, q} dE_dY[n, j, p, q]"""
    (dy,) = as64(dy)
    return dy.sum(axis=(0, 2, 3)) / dy.shape[0]


def scipy_input_gradient(dy, k):
    """dX[n, i] = Σ_j convolve2d(dE_dY[n, j], k[j, i], 'full')"""
    dy, k = as64(dy, k)
    N, C_out, OH, OW = dy.shape
    _, C_in, KH, KW = k.shape
    dx = np.zeros((N, C_in, OH + KH - 1, OW + KW - 1))
    for n in range(N):
        for i in range(C_in):
            for j in range(C_out):
                dx[n, i] += signal.convolve2d(dy[n, j], k[j, i], mode="full")
    return dx


# ---------------------------------------------------------------------------------------------
# sliding_window_view + einsum: any stride and padding
# ---------------------------------------------------------------------------------------------

def pad_x(x, pad):
    top, bottom, left, right = pad
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))


def _windows(x, KH, KW, stride, pad):
    SH, SW = pair(stride)
    return sliding_window_view(pad_x(x, pad), (KH, KW), axis=(2, 3))[:, :, ::SH, ::SW]


def einsum_forward(x, k, b, stride=(1, 1), pad=(0, 0, 0, 0)):
    """y[n, j, p, q] = b[j] + Σ_{i, u, v} xpad[n, i, p·SH + u, q·SW + v] k[j, i, u, v]"""
    x, k, b = as64(x, k, b)
    win = _windows(x, *k.shape[2:], stride, pad)
    return np.einsum("ncpqhw,jchw->njpq", win, k) + b[None, :, None, None]


def einsum_kernel_gradient(dy, x, KH, KW, stride=(1, 1), pad=(0, 0, 0, 0)):
    """dK[j, i, u, v] = (1/N) Σ_{n, p, q} xpad[n, i, p·SH + u, q·SW + v] dE_dY[n, j, p, q]"""
    dy, x = as64(dy, x)
    win = _windows(x, KH, KW, stride, pad)[:, :, :dy.shape[2], :dy.shape[3]]
    return np.einsum("ncpqhw,njpq->jchw", win, dy) / x.shape[0]


def tap_input_gradient(dy, k, H, W, stride=(1, 1), pad=(0, 0, 0, 0)):
    """dX: the forward map's transpose, one kernel tap at a time; the padded border is cut off, so no product
    involves padding (the NaN / inf pattern of the true gradient)."""
    dy, k = as64(dy, k)
    SH, SW = pair(stride)
    top, bottom, left, right = pad
    N, _, OH, OW = dy.shape
    KH, KW = k.shape[2:]
    dxp = np.zeros((N, k.shape[1], H + top + bottom, W + left + right))
    for kh in range(KH):
        for kw in range(KW):
            dxp[:, :, kh:kh + SH * OH:SH, kw:kw + SW * OW:SW] += np.einsum("njpq,jc->ncpq", dy, k[:, :, kh, kw])
    return dxp[:, :, top:top + H, left:left + W]


def reference_all(x, k, b, dy, stride=(1, 1), pad=(0, 0, 0, 0)):
    """(y, dK, dB, dX) of one layer from the einsum oracles, in float64."""
    KH, KW = k.shape[2:]
    H, W = x.shape[2:]
    return (einsum_forward(x, k, b, stride, pad), einsum_kernel_gradient(dy, x, KH, KW, stride, pad),
            bias_gradient(dy), tap_input_gradient(dy, k, H, W, stride, pad))


def assert_adjoint(forward, input_gradient, x, dy, rtol=1e-10):
    """<forward(x), dy> == <x, input_gradient(dy)> for a linear forward (no bias): dX is the transpose of y."""
    lhs = float(np.vdot(forward(x), dy))
    rhs = float(np.vdot(x, input_gradient(dy)))
    assert abs(lhs - rhs) <= rtol * max(1.0, abs(lhs), abs(rhs)), (lhs, rhs)


# ---------------------------------------------------------------------------------------------
# comparison helpers
# ---------------------------------------------------------------------------------------------

def assert_matches(got, ref, dtype, err_msg=""):
    """got has dtype and ref's shape, and equals ref within the dtype's tolerance."""
    assert got.dtype == np.dtype(dtype), (got.dtype, dtype, err_msg)
    assert got.shape == ref.shape, (got.shape, ref.shape, err_msg)
    assert_allclose(got, ref, **tol(dtype), err_msg=err_msg)


def assert_same_nonfinite(got, ref, dtype, err_msg=""):
    """The same NaN, +inf and -inf positions as the float64 oracle, and the finite entries within tolerance."""
    assert_array_equal(np.isnan(got), np.isnan(ref), err_msg=f"NaN pattern {err_msg}")
    assert_array_equal(np.isposinf(got), np.isposinf(ref), err_msg=f"+inf pattern {err_msg}")
    assert_array_equal(np.isneginf(got), np.isneginf(ref), err_msg=f"-inf pattern {err_msg}")
    fin = np.isfinite(ref)
    assert_allclose(got[fin], ref[fin], **tol(dtype), err_msg=err_msg)


# ---------------------------------------------------------------------------------------------
# central differences
# ---------------------------------------------------------------------------------------------

def numeric_gradient(f, a, eps=1e-6):
    """Central differences of the scalar f() with respect to every entry of a (changed in place, restored)."""
    g = np.zeros_like(a, dtype=np.float64)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        fp = f()
        a[i] = old - eps
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * eps)
    return g


def away_from_zero(shape, seed, low=0.1, high=2.0):
    """Inputs with low <= |x| < high and random signs: central differences never straddle a ReLU kink."""
    rng = np.random.default_rng(seed)
    return rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)


# ---------------------------------------------------------------------------------------------
# pooling (windows without padding; stride defaults to the kernel size)
# ---------------------------------------------------------------------------------------------

def pool_windows(x, ks, stride=None):
    KH, KW = pair(ks)
    SH, SW = pair(ks if stride is None else stride)
    return sliding_window_view(x, (KH, KW), axis=(2, 3))[:, :, ::SH, ::SW], (KH, KW), (SH, SW)


def ref_max(x, ks, stride=None):
    return pool_windows(x, ks, stride)[0].max(axis=(4, 5))


def ref_avg(x, ks, stride=None):
    return pool_windows(x, ks, stride)[0].mean(axis=(4, 5))


def ref_max_indices(x, ks, stride=None):
    """Flat H*W position of the first max (np.argmax returns the first occurrence, row-major)."""
    win, (KH, KW), (SH, SW) = pool_windows(x, ks, stride)
    N, C, OH, OW = win.shape[:4]
    a = win.reshape(N, C, OH, OW, KH * KW).argmax(axis=-1)
    r = np.arange(OH)[:, None] * SH + a // KW
    c = np.arange(OW)[None, :] * SW + a % KW
    return r * x.shape[3] + c


def ref_max_backward(dy, x, ks, stride=None):
    """Each window's gradient to its first max."""
    idx = ref_max_indices(x, ks, stride)
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H * W))
    for n in range(N):
        for c in range(C):
            np.add.at(dx[n, c], idx[n, c].ravel(), dy[n, c].ravel())
    return dx.reshape(x.shape)


def ref_avg_backward(dy, x_shape, ks, stride=None):
    """dy / (KH*KW) spread over each window."""
    KH, KW = pair(ks)
    SH, SW = pair(ks if stride is None else stride)
    dx = np.zeros(x_shape)
    for p in range(dy.shape[2]):
        for q in range(dy.shape[3]):
            dx[:, :, p * SH:p * SH + KH, q * SW:q * SW + KW] += dy[:, :, p:p + 1, q:q + 1] / (KH * KW)
    return dx


def ref_avg_sequential(x, ks, stride=None):
    """The mean in the kernels' order, in x's dtype: ((0 + w[0, 0]) + w[0, 1] + ... + w[KH-1, KW-1]) / (KH*KW),
    so that it equals the kernels bitwise."""
    win, (KH, KW), _ = pool_windows(x, ks, stride)
    s = np.zeros(win.shape[:4], dtype=x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            s = s + win[..., kh, kw]
    return s / x.dtype.type(KH * KW)


def ref_avg_backward_disjoint(dy, x_shape, ks, stride=None):
    """dy / (KH*KW) + 0 on every window element, 0 elsewhere, in dy's dtype (disjoint windows only)."""
    KH, KW = pair(ks)
    SH, SW = pair(ks if stride is None else stride)
    dx = np.zeros(x_shape, dtype=dy.dtype)
    share = dy / dy.dtype.type(KH * KW) + dy.dtype.type(0)
    for kh in range(KH):
        for kw in range(KW):
            dx[:, :, kh:kh + SH * dy.shape[2]:SH, kw:kw + SW * dy.shape[3]:SW] = share
    return dx


def readonly(a):
    """A read-only copy of a."""
    a = np.array(a)
    a.flags.writeable = False
    return a
