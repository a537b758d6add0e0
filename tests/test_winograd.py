"""method="winograd": Winograd F(2x2, 3x3) and F(4x4, 3x3) for the three operations of 3x3 stride-1 layers.

Against the einsum / tap oracles for every padding and for maps that are not a multiple of the tile (the edge
tiles), both dtypes and both tile sizes; bitwise the same on 1, 2 and 3 threads, with blocks of whole samples
and with bands of tile rows; the float32 error within the bound documented in docs/guide.md
(cnn_ext._methods.WINOGRAD_ERROR_BOUND), also on inputs of a large dynamic range; gradients by central
differences; calls it cannot run refused by name.
"""
import numpy as np
import pytest
from helpers.oracles import (
    GRADCHECK_TOL,
    einsum_forward,
    einsum_kernel_gradient,
    numeric_gradient,
    pad_amounts,
    tap_input_gradient,
    tol,
)
from numpy.testing import assert_allclose, assert_array_equal

import cnn_ext
from cnn_ext import _methods as M
from cnn_ext import _runners, _threads, conv2d_forward, conv2d_input_gradient, conv2d_kernel_gradient

PADDINGS = [0, 1, 2, "same", ((2, 0), (1, 2)), ((0, 1), (2, 0))]
# (N, C_in, C_out, H, W): maps of every remainder modulo 2 and 4, one tile, a map smaller than a 4x4 tile, rows of
# more than one group of 8 tiles (the kernels gather a tile row's columns in whole groups)
SHAPES = [(3, 2, 5, 7, 9), (2, 3, 4, 6, 6), (2, 4, 3, 9, 4), (1, 1, 1, 3, 3), (2, 5, 6, 13, 11), (3, 2, 2, 4, 5),
          (2, 2, 3, 6, 37)]


@pytest.fixture(params=[2, 4], ids=["F2x2", "F4x4"])
def tile(request, monkeypatch):
    """Runs the test with each tile size (the plan cache is off under monkeypatch)."""
    monkeypatch.setattr(M, "WINOGRAD_TILE", request.param)
    return request.param


def data(shape, pad, dtype, seed=0):
    N, C_in, C_out, H, W = shape
    top, bottom, left, right = pad_amounts(pad, 3, 3)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    k = rng.standard_normal((C_out, C_in, 3, 3)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    dy = rng.standard_normal((N, C_out, H + top + bottom - 2, W + left + right - 2)).astype(dtype)
    return x, k, b, dy, (top, bottom, left, right)


def three(x, k, b, dy, padding, method="winograd"):
    """(y, dX, dK) of one layer by ``method``."""
    return (conv2d_forward(x, k, b, padding=padding, method=method),
            conv2d_input_gradient(dy, k, padding=padding, input_size=x.shape[2:], method=method),
            conv2d_kernel_gradient(dy, x, padding=padding, kernel_size=3, method=method))


def abs_scales(x, k, dy, padding):
    """|x| ⋆ |k|, conv_full(|dE_dY|, |k|), kgrad(|x|, |dE_dY|) in float64: the scales of the documented bound."""
    x, k, dy = (np.abs(a).astype(np.float64) for a in (x, k, dy))
    return three(x, k, np.zeros(k.shape[0]), dy, padding, method="gemm")


def map_errors(got, ref, scales):
    """Per output map: max |got - ref| / max scale, the measure of the documented bound."""
    return [float((np.abs(g.astype(np.float64) - r).max(axis=(2, 3)) / s.max(axis=(2, 3))).max())
            for g, r, s in zip(got, ref, scales)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_the_oracles(shape, padding, dtype, tile):
    x, k, b, dy, pad = data(shape, padding, dtype)
    y, dx, dk = three(x, k, b, dy, padding)
    refs = (einsum_forward(x, k, b, pad=pad), tap_input_gradient(dy, k, *x.shape[2:], pad=pad),
            einsum_kernel_gradient(dy, x, 3, 3, pad=pad))
    for name, got, ref in zip(("forward", "dX", "dK"), (y, dx, dk), refs):
        assert got.dtype == np.dtype(dtype) and got.shape == ref.shape, name
        assert_allclose(got, ref, **tol(dtype), err_msg=f"{name} F({tile}x{tile})")


@pytest.mark.parametrize("pairs", [(37, 5), (259, 127)], ids=["a few groups and a tail", "many groups"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [2, 4])
def test_kernel_transform_is_g_k_gt_rounded_once(m, dtype, pairs):
    """U = G k Gᵀ per kernel pair, in groups of pairs and parts per thread: within a rounding of the float64
    product G ⊗ G vec(k), the same bits on any thread count."""
    k = np.random.default_rng(5).standard_normal(pairs + (3, 3)).astype(dtype)
    taps, gg = k.reshape(-1, 9).T.astype(np.float64), _runners.WINOGRAD_GG[m]
    ref, scale = ((a @ b).reshape(((m + 2) ** 2,) + pairs) for a, b in ((gg, taps), (np.abs(gg), np.abs(taps))))
    runs = [_runners._winograd_u(k, m, dtype, nt) for nt in (1, 2, 3)]
    assert runs[0].shape == ref.shape and runs[0].dtype == np.dtype(dtype)
    assert np.all(np.abs(runs[0] - ref) <= 4 * np.finfo(dtype).eps * scale)
    for other in runs[1:]:
        assert_array_equal(other, runs[0])


@pytest.mark.parametrize("block_bytes", [1, 1 << 30], ids=["bands of one tile row", "whole samples"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bitwise_the_same_on_1_2_3_threads(dtype, block_bytes, tile, restore_threads, monkeypatch):
    monkeypatch.setattr(M, "WINOGRAD_BLOCK_BYTES", block_bytes)
    x, k, b, dy, _ = data((7, 6, 5, 13, 10), 1, dtype, seed=3)
    runs = []
    for nt in (1, 2, 3):
        cnn_ext.set_num_threads(nt)
        runs.append(three(x, k, b, dy, 1))
    for other in runs[1:]:
        for a, c in zip(runs[0], other):
            assert_array_equal(a, c)
    assert_allclose(runs[0][0], einsum_forward(x, k, b, pad=(1, 1, 1, 1)), **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_gradient_chunks_are_the_same_whole_or_shared(dtype, tile):
    """Threads take whole chunks with 4 chunks per thread, else share each chunk's blocks (transforms by channel,
    products by transform point, the fold by rows): the same partial sums either way, bitwise."""
    N, C_in, C_out, H, m = 16, 5, 6, 11, tile
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
    dy = rng.standard_normal((N, C_out, H, H)).astype(dtype)
    rows = 2  # blocks of two tile rows: several blocks per chunk, the last of a sample shorter
    kernel = _runners._typed(_runners.winograd.conv2d_kernel_gradient_winograd, dtype)
    size = _runners.winograd.winograd_scratch_size(C_in, C_out, H, H, m, rows, True)
    gg = _runners.WINOGRAD_GG[m].astype(dtype)

    def partials(nt, groups):
        out = np.full((N, C_out * C_in * 9), np.nan, dtype)
        for lo in range(0, N, groups):
            kernel(dy, x, out, np.empty((nt, size), dtype), gg, m, rows, 1, 1, nt, lo, lo + groups)
        return out

    serial = partials(1, N)
    assert_array_equal(partials(2, N), serial)  # 16 chunks on 2 threads: whole chunks
    assert_array_equal(partials(3, 4), serial)  # 4 chunks on 3 threads: shared blocks
    assert_array_equal(partials(2, 1), serial)  # one chunk at a time: shared blocks
    dk = serial.sum(axis=0).reshape(C_out, C_in, 3, 3) / N
    assert_allclose(dk, einsum_kernel_gradient(dy, x, 3, 3, pad=(1, 1, 1, 1)), **tol(dtype))


@pytest.mark.skipif(not _threads._OPENMP, reason="the serial build runs every call on one thread")
def test_a_kernel_gradient_of_one_chunk_runs_on_every_thread(tile):
    """One chunk (a batch that is one block, or one chunk per call of a long call) is not run serially: the
    threads share its blocks, each with its own scratch row for the transforms."""
    N, C_in, C_out, H, m, rows = 4, 32, 32, 16, tile, 1
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, C_in, H, H)).astype(np.float32)
    dy = rng.standard_normal((N, C_out, H, H)).astype(np.float32)
    kernel = _runners._typed(_runners.winograd.conv2d_kernel_gradient_winograd, np.float32)
    size = _runners.winograd.winograd_scratch_size(C_in, C_out, H, H, m, rows, True)
    gg = _runners.WINOGRAD_GG[m].astype(np.float32)
    serial = np.empty((1, C_out * C_in * 9), np.float32)
    kernel(dy, x, serial, np.empty((1, size), np.float32), gg, m, rows, 1, 1, 1)
    for _ in range(20):  # thread 1 takes part unless thread 0 ran every part before it woke: retried
        scratch = np.full((2, size), np.nan, np.float32)
        out = np.empty_like(serial)
        kernel(dy, x, out, scratch, gg, m, rows, 1, 1, 2)
        assert_array_equal(out, serial)
        if not np.isnan(scratch[1]).all():
            break
    assert not np.isnan(scratch[1]).all(), "the second thread never ran"


def test_kernel_gradient_chunks_hold_whole_blocks_within_the_ctrl_c_bound(monkeypatch):
    """Fewer, larger chunks than the other kernel gradients' where a block holds several samples, each at most
    one block (32 samples in blocks of 6: 6 chunks of 5 or 6, not 5 of 6 or 7, which would end in a block of
    one sample); never more multiply-adds per chunk than CHUNK_MACS allows, never more chunks than theirs."""
    dt = np.dtype(np.float32)
    g = M.Geometry(32, 128, 128, 14, 14, 3, 3, 12, 12, 1, 1, (0, 0, 0, 0))
    no_du_floor = dict.fromkeys(M.WINOGRAD_KGRAD_DU_RATIO, 0)
    monkeypatch.setattr(M, "WINOGRAD_KGRAD_DU_RATIO", no_du_floor)  # the kernel gradient's blocks as the forward's
    per_block, nchunk = M.winograd_block_samples(g, dt, 4, kgrad=True), M.winograd_nchunk(g, dt, 4)
    assert per_block == 6 and nchunk == 6 < M.nchunk(g, dt)
    assert max((c + 1) * 32 // nchunk - c * 32 // nchunk for c in range(nchunk)) <= per_block  # as the kernel cuts
    monkeypatch.setattr(M, "CHUNK_MACS", g.macs // 10)
    assert M.winograd_nchunk(g, dt, 4) == 11  # ceil(macs / CHUNK_MACS)
    monkeypatch.setattr(M, "WINOGRAD_BLOCK_BYTES", 1)  # blocks of one tile row: one sample per block
    assert M.winograd_nchunk(g, dt, 4) == M.nchunk(g, dt)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kernel_gradient_blocks_outweigh_dU(dtype, monkeypatch):
    """Every block's products read and write dU ((m+2)² x C_in x C_out): the kernel gradient's blocks of tiles
    are WINOGRAD_KGRAD_DU_RATIO times its size (or the whole batch), where the forward's keep
    WINOGRAD_BLOCK_BYTES; layers whose dU is small keep the forward's blocks."""
    dt, m = np.dtype(dtype), 4
    per_tile = lambda g: (m + 2) ** 2 * (g.C_in + g.C_out) * dt.itemsize  # V and M bytes of one tile
    big = M.Geometry(64, 128, 128, 14, 14, 3, 3, 12, 12, 1, 1, (0, 0, 0, 0))
    du = (m + 2) ** 2 * big.C_in * big.C_out * dt.itemsize
    TW = 3
    ratio = M.WINOGRAD_KGRAD_DU_RATIO[dt]
    forward, kgrad = M.winograd_rows(big, dt, m), M.winograd_rows(big, dt, m, kgrad=True)
    assert forward * TW * per_tile(big) <= M.WINOGRAD_BLOCK_BYTES < ratio * du
    assert ratio * du - TW * 3 * per_tile(big) < kgrad * TW * per_tile(big)  # whole samples
    assert M.winograd_nchunk(big, dt, m) < -(-big.N // M.winograd_block_samples(big, dt, m))
    small = M.Geometry(64, 32, 64, 28, 28, 3, 3, 26, 26, 1, 1, (0, 0, 0, 0))
    assert M.winograd_rows(small, dt, m, kgrad=True) == M.winograd_rows(small, dt, m)
    monkeypatch.setattr(M, "WINOGRAD_KGRAD_DU_RATIO", dict.fromkeys(M.WINOGRAD_KGRAD_DU_RATIO, 0))
    assert M.winograd_rows(big, dt, m, kgrad=True) == forward


def test_dx_takes_the_adjoint_where_the_input_map_has_more_tiles(monkeypatch):
    """dX as the forward of padded dE_dY tiles the input map; the adjoint of the forward tiles dE_dY. The adjoint
    runs where the input map has more tiles and a block holds whole samples."""
    g = lambda H, pad: M.Geometry(32, 128, 128, H, H, 3, 3, H + 2 * pad - 2, H + 2 * pad - 2, 1, 1, (pad,) * 4)
    f32 = np.dtype(np.float32)
    assert M.winograd_dx_adjoint(g(14, 0), f32, 4)  # 12x12 -> 14x14: 9 tiles against 16
    assert not M.winograd_dx_adjoint(g(14, 1), f32, 4)  # 'same': the same tiles
    assert not M.winograd_dx_adjoint(g(28, 0), f32, 4)  # 26x26 -> 28x28: 49 tiles either way
    assert M.winograd_dx_adjoint(g(30, 0), f32, 4)  # 28x28 -> 30x30: 49 against 64
    g64 = M.Geometry(32, 64, 64, 30, 30, 3, 3, 28, 28, 1, 1, (0,) * 4)
    assert M.winograd_dx_adjoint(g64, np.dtype(np.float64), 4)
    assert not M.winograd_dx_adjoint(g(30, 0), np.dtype(np.float64), 4)  # a float64 block holds no whole sample
    assert not M.winograd_dx_adjoint(g(38, 0), f32, 4)  # 36x36 -> 38x38: 81 against 100, too few fewer
    assert M.winograd_dx_adjoint(g(10, 0), f32, 2)  # F(2x2): 8x8 -> 10x10, 16 tiles against 25
    small = M.Geometry(32, 32, 32, 14, 14, 3, 3, 12, 12, 1, 1, (0,) * 4)
    assert not M.winograd_dx_adjoint(small, f32, 4)  # few channels: the forward's transforms are faster
    monkeypatch.setattr(M, "WINOGRAD_BLOCK_BYTES", 1)  # bands of one tile row: patches would cross blocks
    assert not M.winograd_dx_adjoint(g(14, 0), f32, 4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,padding", [((3, 5, 4, 14, 14), 0), ((2, 3, 6, 10, 7), 0), ((2, 4, 3, 6, 6), 0),
                                           ((2, 3, 2, 9, 11), ((0, 1), (0, 0))), ((1, 2, 3, 5, 37), 0),
                                           ((2, 3, 2, 9, 11), ((1, 0), (1, 0)))], ids=str)
def test_adjoint_dx_against_the_oracle_and_the_forward_of_padded_dy(shape, padding, dtype, tile, monkeypatch,
                                                                      restore_threads):
    """Maps where the adjoint runs: against the tap oracle, within rounding of the other Winograd dX (the adjoint
    switched off), and bitwise the same on 1, 2 and 3 threads; it fails if the adjoint path is not taken."""
    monkeypatch.setattr(M, "WINOGRAD_DX_ADJOINT_MIN_CHANNELS", 1)  # small layers, for the oracles
    monkeypatch.setattr(M, "WINOGRAD_DX_ADJOINT_MIN_TILES", 1.01)
    x, k, b, dy, pad = data(shape, padding, dtype, seed=8)
    H, W = x.shape[2:]
    g = M.Geometry(*shape[:3], H, W, 3, 3, *dy.shape[2:], 1, 1, pad)
    assert M.winograd_dx_adjoint(g, np.dtype(dtype), tile)
    calls = []
    real = _runners._winograd_dx_adjoint
    monkeypatch.setattr(_runners, "_winograd_dx_adjoint", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(cnn_ext.ops, "_PLANS", {})
    runs = []
    for nt in (1, 2, 3):
        cnn_ext.set_num_threads(nt)
        runs.append(conv2d_input_gradient(dy, k, padding=padding, input_size=(H, W), method="winograd"))
    assert calls  # one plan per thread count (one in the serial build)
    for other in runs[1:]:
        assert_array_equal(other, runs[0])
    assert_allclose(runs[0], tap_input_gradient(dy, k, H, W, pad=pad), **tol(dtype))
    if dtype == np.float32:  # within the documented bound, as the other Winograd dX
        ref = conv2d_input_gradient(dy.astype(np.float64), k.astype(np.float64), padding=padding, input_size=(H, W),
                                    method="gemm")
        scale = abs_scales(x, k, dy, padding)[1]
        assert max(map_errors([runs[0]], [ref], [scale])) <= M.WINOGRAD_ERROR_BOUND[tile]
    monkeypatch.setattr(M, "winograd_dx_adjoint", lambda *a: False)
    monkeypatch.setattr(cnn_ext.ops, "_PLANS", {})
    taken = len(calls)
    padded = conv2d_input_gradient(dy, k, padding=padding, input_size=(H, W), method="winograd")
    assert_allclose(runs[0], padded, **tol(dtype))
    assert len(calls) == taken  # the rule off: the other path


class _Spy:
    """The winograd kernel module with its forward kernel counting the samples of each call."""

    def __init__(self, module, sizes):
        self._module, self._sizes = module, sizes

    def __getattr__(self, name):
        return getattr(self._module, name)

    @property
    def conv2d_forward_winograd(self):
        kernels, sizes = self._module.conv2d_forward_winograd, self._sizes

        class Typed:
            def __getitem__(self, key):
                def call(x, *args):
                    sizes.append(x.shape[0])
                    return kernels[key](x, *args)
                return call

        return Typed()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_groups_of_samples_for_ctrl_c_hold_whole_blocks(dtype, tile, monkeypatch):
    """A long call runs as several kernel calls on groups of samples: with blocks of 3 whole samples, every
    group but the last holds whole blocks; the products are per tile, so the bits are those of one call (whose
    10 samples are cut into blocks of 2 or 3)."""
    (N, C_in, C_out, H, W), S = (10, 4, 6, 8, 8), 3
    T = -(-H // tile)  # tile rows and columns (padding 1)
    per_tile = (tile + 2) ** 2 * (C_in + C_out) * np.dtype(dtype).itemsize  # V and M bytes of one tile
    monkeypatch.setattr(M, "WINOGRAD_BLOCK_BYTES", S * T * T * per_tile)
    x, k, b, dy, _ = data((N, C_in, C_out, H, W), 1, dtype, seed=4)
    whole = three(x, k, b, dy, 1)
    sizes = []
    monkeypatch.setattr(_runners, "winograd", _Spy(_runners.winograd, sizes))
    monkeypatch.setattr(_runners, "INTERRUPT_MACS", 1)  # one sample per group, then rounded up to whole blocks
    for a, c in zip(whole, three(x, k, b, dy, 1)):
        assert_array_equal(a, c)
    assert sizes == [3, 3, 3, 1] * 2, sizes  # forward, then dX (its forward of dE_dY)


@pytest.mark.parametrize("kind", ["normal", "dynamic range", "channel scales"])
@pytest.mark.parametrize("shape,padding", [((2, 16, 8, 11, 13), 1), ((2, 64, 4, 9, 9), 0), ((3, 3, 5, 10, 7), 2)],
                         ids=str)
def test_float32_error_within_the_documented_bound(shape, padding, kind, tile):
    x, k, b, dy, _ = data(shape, padding, np.float64, seed=5)
    rng = np.random.default_rng(6)
    if kind == "dynamic range":
        x, k, dy = (a * 10.0 ** rng.uniform(-4, 4, a.shape) for a in (x, k, dy))
    elif kind == "channel scales":
        x, k, dy = (a * 10.0 ** rng.uniform(-3, 3, (1, a.shape[1], 1, 1)) for a in (x, k, dy))
    x, k, dy = (a.astype(np.float32) for a in (x, k, dy))
    b = np.zeros(k.shape[0], np.float32)
    got = three(x, k, b, dy, padding)
    ref = three(*(a.astype(np.float64) for a in (x, k, b, dy)), padding, method="gemm")
    errors = map_errors(got, ref, abs_scales(x, k, dy, padding))
    bound = M.WINOGRAD_ERROR_BOUND[tile]
    assert max(errors) <= bound, (errors, bound)
    # the measure sees rounding at all: float32 results are not float64's
    assert max(errors) > np.finfo(np.float32).eps / 64, errors


def test_gradients_by_central_differences(tile):
    """dX and dK of method='winograd' are the derivatives of its forward (float64, loss = Σ w ⊙ y)."""
    x, k, b, w, _ = data((2, 2, 3, 6, 5), 1, np.float64, seed=7)

    def loss():
        return float((conv2d_forward(x, k, b, padding=1, method="winograd") * w).sum())

    dx = conv2d_input_gradient(w, k, padding=1, input_size=x.shape[2:], method="winograd")
    dk = conv2d_kernel_gradient(w, x, padding=1, kernel_size=3, method="winograd") * x.shape[0]  # batch sum
    assert_allclose(dx, numeric_gradient(loss, x), **GRADCHECK_TOL)
    assert_allclose(dk, numeric_gradient(loss, k), **GRADCHECK_TOL)


@pytest.mark.parametrize("block_bytes", [1, 1 << 30], ids=["bands of one tile row", "whole samples"])
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_outputs_of_all_zero_fields_are_exactly_the_bias(padding, dtype, block_bytes, tile, monkeypatch):
    """Outputs whose 3x3 field is zero in every channel (a ReLU's zeros, padding) are b exactly, as a direct sum
    gives, though other inputs of their tile are not zero: +1e-9 there would pass gradients through a ReLU or a
    max-pool tie that PyTorch's direct sum blocks. The others are left as computed."""
    monkeypatch.setattr(M, "WINOGRAD_BLOCK_BYTES", block_bytes)
    x, k, b, _, pads = data((3, 4, 5, 13, 11), padding, dtype, seed=4)
    x[:, :, 3:8] = 0  # a zero band: fields inside it are all zero, the band's edge tiles are mixed
    x[1] = 0
    x[2, :, :, 6:] = 0
    y = conv2d_forward(x, k, b, padding=padding, method="winograd")
    want = einsum_forward(x, k, b, pad=pads)
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    zero = ~windows.any(axis=(1, 4, 5))  # (N, OH, OW)
    assert zero.any() and not zero.all()
    n, i, j = np.nonzero(zero)
    assert_array_equal(y[n, :, i, j], np.broadcast_to(b, (len(n), len(b))))
    assert_allclose(y, want, **tol(dtype))


def test_relu_and_max_pool_gradients_after_winograd_match_pytorch(monkeypatch):
    """The MNIST CNN's second layer by Winograd, on a zero background with a ReLU and a max-pool after it: the bias
    gradient is PyTorch's, which it was not while zero fields came out as rounding residuals."""
    monkeypatch.setitem(M.WINOGRAD_MIN_CHANNELS_SMALL_MAP, np.dtype(np.float32), 2048)  # auto: direct kernels
    monkeypatch.setattr(M, "CHANNELS_WIDE", False)  # AVX-512 builds: channel vectors before Winograd
    monkeypatch.setattr(cnn_ext.ops, "_PLANS", {})  # no plan chosen before the patches
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = np.maximum(rng.standard_normal((8, 32, 14, 14)), 0).astype(np.float32)
    x[:, :, :5] = 0
    x[:, :, :, 9:] = 0
    layer = cnn_ext.Conv2D(32, 64, 3, padding="same", seed=0, dtype=np.float32)
    layer.b[...] = 0  # as initialised by he_normal: zero fields give 0, where ReLU has its kink
    net = cnn_ext.Network([layer, cnn_ext.ReLU(), cnn_ext.MaxPool2D(2)])
    g = M.Geometry(8, 32, 64, 14, 14, 3, 3, 14, 14, 1, 1, (1, 1, 1, 1))
    if M.forward("auto", g, np.dtype(np.float32)) is not M.Method.WINOGRAD:
        pytest.skip("auto takes Winograd only in the AVX2 build")
    y = net.forward(x)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    grads = net.backward(cnn_ext.exact(dy))
    conv = torch.nn.Conv2d(32, 64, 3, padding="same")
    conv.weight.data, conv.bias.data = torch.from_numpy(layer.k.copy()), torch.from_numpy(layer.b.copy())
    out = torch.nn.functional.max_pool2d(torch.relu(conv(torch.from_numpy(x))), 2)
    out.backward(torch.from_numpy(dy))
    assert_allclose(grads[0]["dB"], conv.bias.grad.numpy(), rtol=1e-4, atol=1e-5)
    ref = conv.weight.grad.numpy()
    assert_allclose(grads[0]["dK"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_inputs_are_not_modified(tile):
    x, k, b, dy, _ = data((2, 3, 4, 7, 6), 1, np.float32)
    copies = [a.copy() for a in (x, k, b, dy)]
    three(x, k, b, dy, 1)
    for a, c in zip((x, k, b, dy), copies):
        assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("where", ["x", "k", "dy", "x's last column", "dy, unpadded"])
def test_nonfinite_values_give_the_oracles_pattern(where, dtype, tile, monkeypatch):
    """A tile mixes all its inputs: an inf would make NaN of outputs that never meet it, so such calls are
    recomputed by im2col, which gives the true pattern (the forward's, or the input gradient's for dE_dY).
    "x's last column": 10 columns, so only the last tile column meets it, and on 4x4 tiles its outputs are the
    last two of each row, past the row's whole vectors of 8. "dy, unpadded": dX by the adjoint of the forward."""
    padding = 0 if where == "dy, unpadded" else 1
    monkeypatch.setattr(M, "WINOGRAD_DX_ADJOINT_MIN_CHANNELS", 1)  # the adjoint on this small layer
    monkeypatch.setattr(M, "WINOGRAD_DX_ADJOINT_MIN_TILES", 1.01)
    monkeypatch.setattr(cnn_ext.ops, "_PLANS", {})
    x, k, b, dy, pad = data((2, 2, 3, 9, 10 if where in ("x's last column", "dy, unpadded") else 9), padding, dtype)
    at = {"x": (0, 1, 4, 4), "k": (1, 0, 0, 2), "dy": (1, 2, 3, 5), "x's last column": (0, 1, 4, 9),
          "dy, unpadded": (1, 2, 3, 5)}[where]
    {"x": x, "k": k, "dy": dy, "x's last column": x, "dy, unpadded": dy}[where][at] = np.inf
    with np.errstate(invalid="ignore"):
        if where.startswith("dy"):
            y = conv2d_input_gradient(dy, k, padding=padding, input_size=x.shape[2:], method="winograd")
            ref = tap_input_gradient(dy, k, *x.shape[2:], pad=pad)
        else:
            y = conv2d_forward(x, k, b, padding=1, method="winograd")
            ref = einsum_forward(x, k, b, pad=pad)
    assert_array_equal(np.isnan(y), np.isnan(ref))
    assert_array_equal(np.isinf(y), np.isinf(ref))
    assert np.isfinite(y).any() and not np.isfinite(y).all()


@pytest.mark.parametrize("kwargs,needs", [(dict(kernel=5), "a 3x3 kernel"), (dict(stride=2), "stride 1"),
                                          (dict(padding=3), "padding <= kernel size - 1")])
def test_refused_by_name(kwargs, needs):
    kernel, stride, padding = kwargs.get("kernel", 3), kwargs.get("stride", 1), kwargs.get("padding", 1)
    x = np.ones((1, 2, 9, 9))
    k = np.ones((3, 2, kernel, kernel))
    OH = (9 + 2 * padding - kernel) // stride + 1
    dy = np.ones((1, 3, OH, OH))
    calls = [lambda: conv2d_input_gradient(dy, k, stride=stride, padding=padding, input_size=(9, 9),
                                           method="winograd")]
    if "padding" not in kwargs:
        calls += [lambda: conv2d_forward(x, k, np.zeros(3), stride=stride, padding=padding, method="winograd"),
                  lambda: conv2d_kernel_gradient(dy, x, stride=stride, padding=padding, kernel_size=kernel,
                                                 method="winograd")]
    for call in calls:
        with pytest.raises(ValueError, match=f"method='winograd' needs {needs}"):
            call()


@pytest.mark.skipif(not M.FAST, reason="auto takes winograd in the AVX2 build only")
def test_auto_takes_winograd_only_within_the_measured_range():
    """3x3 stride-1 layers, 12x12 output maps and more, C_in * C_out >= 1024 (the kernel gradient: 1024 where
    the channel-vector tiles take large maps, else 512; on maps under 24x24: 4096, the kernel gradient's 8192,
    in float64 16384 without those tiles), at most 128 channels (the bound's), from 784 output pixels per call;
    ahead of the channel-vector kernels; never for method='direct'."""
    def geometry(C_in, C_out, size, K=3, stride=1):
        O = (size - K) // stride + 1
        return M.Geometry(8, C_in, C_out, size, size, K, K, O, O, stride, stride, (0, 0, 0, 0))

    for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
        for choose in (M.forward, M.input_gradient, M.kernel_gradient):
            for g in (geometry(64, 64, 28), geometry(128, 128, 16), geometry(32, 64, 26), geometry(32, 32, 28)):
                below = choose is M.kernel_gradient and g.C_in * g.C_out < M.WINOGRAD_MIN_CHANNELS_KGRAD
                assert (choose("auto", g, dtype) is M.Method.WINOGRAD) != below, g
                assert choose("direct", g, dtype) is not M.Method.WINOGRAD, g
            assert (choose("auto", geometry(64, 64, 16), dtype) is M.Method.WINOGRAD) == \
                (choose is not M.kernel_gradient)
            assert (choose("auto", geometry(64, 128, 16), dtype) is M.Method.WINOGRAD) == \
                (dtype == np.float32 or M.CHANNELS_WIDE or choose is not M.kernel_gradient)
            kgrad_only = choose("auto", geometry(16, 32, 28), dtype) is M.Method.WINOGRAD
            assert kgrad_only == (choose is M.kernel_gradient and not M.CHANNELS_WIDE)
            for g in (geometry(16, 16, 28), geometry(32, 64, 16), geometry(256, 64, 28), geometry(64, 64, 12),
                      geometry(64, 64, 28, K=5), geometry(64, 64, 28, stride=2)):
                assert choose("auto", g, dtype) is not M.Method.WINOGRAD, g
            # small batches: the kernel transform is per call (WINOGRAD_MIN_PIXELS output pixels per call)
            for N, taken in ((1, False), (2, False), (4, True)):
                g = M.Geometry(N, 128, 128, 16, 16, 3, 3, 14, 14, 1, 1, (0, 0, 0, 0))
                assert (choose("auto", g, dtype) is M.Method.WINOGRAD) == taken, g
