"""Ctrl-C during a long kernel call takes effect within half a second (issue #17).

A call with more than _runners.INTERRUPT_MACS multiply-adds per thread runs as several kernel calls on groups of
samples, and Python runs its signal handlers between them. The chunked run must give the one-call run's bits
(the kernel gradient's fixed chunks summed in the same order), small calls must not be chunked at all, and an
interrupted call says how much of the output it wrote.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import _methods, _runners, _threads
from cnn_ext._kernels import winograd

METHODS = (
    ("forward", _methods.FORWARD_METHODS),
    ("input_gradient", _methods.INPUT_GRADIENT_METHODS),
    ("kernel_gradient", _methods.KERNEL_GRADIENT_METHODS),
)

# the children run outside the checkout: from its root they would import the unbuilt source tree
_OUTSIDE = os.path.dirname(os.path.abspath(sys.executable))


def _call(op, method, x, k, b, dy):
    try:
        if op == "forward":
            return cnn_ext.conv2d_forward(x, k, b, padding=1, method=method)
        if op == "input_gradient":
            return cnn_ext.conv2d_input_gradient(dy, k, padding=1, method=method)
        return cnn_ext.conv2d_kernel_gradient(dy, x, padding=1, method=method)
    except ValueError:  # the method cannot run this call
        return None


def spy_kernels(monkeypatch, module, wanted, record):
    """Replace ``module._typed`` so that every call of a kernel whose name ``wanted`` accepts first runs
    ``record(name, args)``."""
    real = module._typed

    def typed(kernel, dtype):
        run = real(kernel, dtype)
        if not wanted(kernel.__name__):
            return run

        def call(*args):
            record(kernel.__name__, args)
            return run(*args)
        return call

    monkeypatch.setattr(module, "_typed", typed)


def _kgrad(name):
    return "kernel_gradient" in name and name != "conv2d_bias_gradient"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N", [32, 37])  # 32: whole fixed chunks, 37: uneven ones
@pytest.mark.parametrize("threads", [1, 2])
def test_chunked_runs_give_the_same_bits(monkeypatch, restore_threads, dtype, N, threads):
    rng = np.random.default_rng(N)
    x = rng.standard_normal((N, 2, 9, 8)).astype(dtype)
    k = rng.standard_normal((8, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(8).astype(dtype)
    dy = rng.standard_normal((N, 8, 9, 8)).astype(dtype)
    cnn_ext.set_num_threads(threads)
    ran = 0
    for op, methods in METHODS:
        for method in methods:
            monkeypatch.setattr(_runners, "INTERRUPT_MACS", 10**15)
            whole = _call(op, method, x, k, b, dy)
            if whole is None:
                continue
            monkeypatch.setattr(_runners, "INTERRUPT_MACS", 3000)  # a few samples per kernel call
            chunked = _call(op, method, x, k, b, dy)
            assert_array_equal(chunked, whole, err_msg=f"{op} {method}")
            ran += 1
    assert ran >= 8


@pytest.mark.parametrize("N", [32, 37, 5])  # whole fixed chunks, uneven chunks, fewer samples than chunks
@pytest.mark.parametrize("method", _methods.KERNEL_GRADIENT_METHODS)
def test_long_kernel_gradients_run_as_several_calls_for_any_batch(monkeypatch, method, N):
    from cnn_ext import ops

    rng = np.random.default_rng(N)
    # loops and row tiles run unpadded layers (row tiles: one input channel, whole vectors per output row)
    pad, C_in, W = (0, 1, 18) if method in ("loops", "row_tiles") else (1, 2, 8)
    C_out = 32 if method == "channels" else 8  # channel vectors: whole tiles of output channels
    x = rng.standard_normal((N, C_in, 10, W))
    dy = rng.standard_normal((N, C_out, 10 + 2 * pad - 2, W + 2 * pad - 2))
    calls, first_dk = [], []

    def record(name, args):
        calls.append(args[-2:])  # the chunk range
        if "winograd" in name:  # its chunk sums go to dk in Python, after the last call
            pass
        elif len(calls) == 1:
            first_dk.append(args[2].copy())
        elif len(calls) == 2:
            assert_array_equal(args[2], first_dk[0], err_msg="dk was written before the last chunk")

    monkeypatch.setattr(ops, "_PLANS", {})  # no plan built before the patch
    spy_kernels(monkeypatch, _runners, _kgrad, record)
    monkeypatch.setattr(_runners, "INTERRUPT_MACS", 3000)
    monkeypatch.setattr(_methods, "WINOGRAD_BLOCK_BYTES", 1)  # its chunks hold whole blocks: one sample each
    monkeypatch.setattr(_methods, "WINOGRAD_KGRAD_DU_RATIO", dict.fromkeys(_methods.WINOGRAD_KGRAD_DU_RATIO, 0))
    try:
        chunked = cnn_ext.conv2d_kernel_gradient(dy, x, padding=pad, method=method)
    except ValueError as exc:
        pytest.fail(f"{method}: {exc}")
    nchunk = min(N, _methods.NCHUNK)
    assert len(calls) > 1, calls
    assert calls[0][0] == 0 and calls[-1][1] == nchunk
    assert all(a[1] == b[0] for a, b in zip(calls, calls[1:])), calls  # consecutive ranges
    monkeypatch.setattr(ops, "_PLANS", {})
    monkeypatch.setattr(_runners, "INTERRUPT_MACS", 10**15)
    calls.clear()
    assert_array_equal(chunked, cnn_ext.conv2d_kernel_gradient(dy, x, padding=pad, method=method))
    assert calls == [(0, nchunk)]  # a short call: one kernel call for all chunks


def test_small_calls_are_not_chunked():
    from cnn_ext._methods import Geometry

    # the tutorial's layers and a large layer of a small batch: one plain kernel call each
    for shape in [(64, 1, 5, 28, 28, 3, 3), (64, 5, 5, 13, 13, 3, 3), (4, 64, 64, 32, 32, 3, 3)]:
        N, C_in, C_out, H, W, KH, KW = shape
        g = Geometry(N, C_in, C_out, H, W, KH, KW, H - KH + 1, W - KW + 1, 1, 1, (0, 0, 0, 0))
        assert _runners.per_call(g.macs // N, N, 2) is None, shape
        run = object()
        assert _runners.in_chunks(run, g, 2) is run


def test_interrupted_chunks_say_what_was_written():
    from cnn_ext._methods import Geometry

    g = Geometry(10, 1, 1, 4, 4, 1, 1, 4, 4, 1, 1, (0, 0, 0, 0))
    calls = []

    def run(x, k, y):
        if len(calls) == 2:
            raise KeyboardInterrupt
        y[...] = 1
        calls.append(len(x))

    import cnn_ext._runners as R

    old = R.INTERRUPT_MACS
    R.INTERRUPT_MACS = 16 * 3  # 3 samples per kernel call
    try:
        chunked = R.in_chunks(run, g, 1)
    finally:
        R.INTERRUPT_MACS = old
    y = np.zeros((10, 1, 4, 4))
    with pytest.raises(KeyboardInterrupt, match=r"only samples \[0, 6\) of 10"):
        chunked(np.zeros((10, 1, 4, 4)), None, y)
    assert calls == [3, 3]
    assert (y[:6] == 1).all() and (y[6:] == 0).all()


_LONG_CALL = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np
    import cnn_ext
    # Python installs its KeyboardInterrupt handler only if SIGINT was not ignored at its start, and a shell's
    # background job (nohup, &) starts with SIGINT ignored: this child reacts to SIGINT wherever it runs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    op = sys.argv[1]
    N = 509  # not a multiple of the kernel gradient's fixed chunks
    x = np.random.default_rng(0).standard_normal((N, 64, 32, 32), dtype=np.float32)
    k = np.random.default_rng(1).standard_normal((192, 64, 7, 7), dtype=np.float32)
    b = np.zeros(192, np.float32)
    dy = np.random.default_rng(2).standard_normal((N, 192, 26, 26), dtype=np.float32)

    def call(n):
        if op == "forward":
            return cnn_ext.conv2d_forward(x[:n], k, b)
        if op == "input_gradient":
            return cnn_ext.conv2d_input_gradient(dy[:n], k)
        return cnn_ext.conv2d_kernel_gradient(dy[:n], x[:n])

    call(2)  # plans and pages warm
    print("start", flush=True)
    try:
        call(N)  # 2 * 10^11 multiply-adds: seconds even where the kernels run near the FMA peak
        print("finished", flush=True)
    except KeyboardInterrupt as exc:
        print("interrupted", time.monotonic(), exc, flush=True)
        sys.exit(3)
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
@pytest.mark.parametrize("op", ["forward", "input_gradient", "kernel_gradient"])
def test_sigint_stops_a_long_call_within_half_a_second(op):
    proc = subprocess.Popen(cwd=_OUTSIDE, args=[sys.executable, "-c", _LONG_CALL, op], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "start"
        time.sleep(0.5)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 3, (out, err)
    word, seen, *_ = out.split()
    assert word == "interrupted", out
    assert float(seen) - sent < 0.5, f"KeyboardInterrupt {float(seen) - sent:.3f} s after SIGINT"
    assert exited - sent < 2.0  # the interpreter's exit itself (freeing 0.2 GB) is not the kernel's latency


@pytest.mark.skipif(not _threads._OPENMP, reason="the serial build runs every call on one thread")
@pytest.mark.parametrize("op, methods", METHODS, ids=[op for op, _ in METHODS])
def test_chunked_calls_give_every_thread_the_same_share(monkeypatch, restore_threads, op, methods):
    """A chunked run's kernel calls (all but the last) hold a multiple of the thread count of samples (forward,
    input gradient; Winograd: of whole blocks) or of fixed chunks (kernel gradient; Winograd: WHOLE_CHUNKS per
    thread, else its threads share each block, a barrier per phase): a call splits them over its threads, so 3
    blocks on 2 threads would run at 2/3 of the speed and 1 chunk on 2 threads on one thread."""
    from cnn_ext import ops

    rng = np.random.default_rng(3)
    N = 37
    x = rng.standard_normal((N, 8, 12, 12))
    k = rng.standard_normal((8, 8, 3, 3))
    b = rng.standard_normal(8)
    dy = rng.standard_normal((N, 8, 12, 12))
    cnn_ext.set_num_threads(2)
    threads, calls = [], []
    real_per_call = _runners.per_call

    def recording_per_call(per_item, n, nt, unit=1):
        threads.append(nt)
        return real_per_call(per_item, n, nt, unit)

    def record(name, args):
        if _kgrad(name):
            calls.append(args[-1] - args[-2] if args[-1] >= 0 else None)  # chunks in the range
        elif isinstance(args[0], np.ndarray) and args[0].ndim == 4:
            calls.append(args[0].shape[0])  # samples

    spy_kernels(monkeypatch, _runners, lambda name: True, record)
    monkeypatch.setattr(_runners, "per_call", recording_per_call)
    monkeypatch.setattr(_runners, "INTERRUPT_MACS", 130_000)  # 3 samples per thread and call before rounding
    monkeypatch.setattr(_runners, "WINOGRAD_SPEED", 1)  # Winograd's too
    monkeypatch.setattr(_methods, "WINOGRAD_BLOCK_BYTES", 100_000)  # Winograd blocks of 2 samples
    checked = 0
    for method in methods:
        monkeypatch.setattr(ops, "_PLANS", {})
        threads.clear()
        calls.clear()
        if _call(op, method, x, k, b, dy) is None:
            continue
        assert threads and set(threads) == {2}, (method, threads)
        unit = 2
        if method == "winograd" and op != "kernel_gradient":
            g = _methods.Geometry(N, 8, 8, 12, 12, 3, 3, 12, 12, 1, 1, (1, 1, 1, 1))
            unit *= _methods.winograd_block_samples(g, np.dtype(np.float64),
                                                    _methods.winograd_tile(g, np.dtype(np.float64)))
            assert unit == 4
        if method == "winograd" and op == "kernel_gradient":  # whole chunks per thread: no barrier per block
            unit *= winograd.WHOLE_CHUNKS
            assert unit == 8
        assert len(calls) > (1 if unit > 4 else 2), (method, calls)
        assert all(c % unit == 0 for c in calls[:-1]), (method, unit, calls)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("op", ["forward", "input_gradient"])
def test_winograd_groups_are_longer(monkeypatch, restore_threads, op):
    """Winograd's forward and input gradient run WINOGRAD_SPEED times more multiply-adds (direct count) per call
    than the kernels INTERRUPT_MACS is set for: each call costs its threads a wait at its end."""
    from cnn_ext import ops

    rng = np.random.default_rng(5)
    N = 37
    x, k, b = rng.standard_normal((N, 8, 12, 12)), rng.standard_normal((8, 8, 3, 3)), rng.standard_normal(8)
    dy = rng.standard_normal((N, 8, 12, 12))
    g = _methods.Geometry(N, 8, 8, 12, 12, 3, 3, 12, 12, 1, 1, (1, 1, 1, 1))
    cnn_ext.set_num_threads(1)
    calls = {}

    def record(name, args):
        if isinstance(args[0], np.ndarray) and args[0].ndim == 4 and args[0].shape[0] != 8:  # not the kernels
            calls.setdefault(name, []).append(args[0].shape[0])

    spy_kernels(monkeypatch, _runners, lambda name: True, record)
    monkeypatch.setattr(_runners, "INTERRUPT_MACS", 2 * g.macs // N)  # 2 samples per call of the direct kernels
    monkeypatch.setattr(_methods, "WINOGRAD_BLOCK_BYTES", 100_000)  # Winograd blocks of 2 samples
    for method in ("gemm", "winograd"):
        monkeypatch.setattr(ops, "_PLANS", {})
        _call(op, method, x, k, b, dy)
    wino = [n for name, ns in calls.items() if "winograd" in name for n in ns]
    gemm = [n for name, ns in calls.items() if "winograd" not in name for n in ns]
    assert max(gemm) == 2 and sum(gemm) == N, calls
    assert wino == [N], calls  # 2 * 25 samples per call: all 37 in one


@pytest.mark.parametrize("method", _methods.KERNEL_GRADIENT_METHODS)
def test_long_kernel_gradients_sum_in_more_chunks(monkeypatch, restore_threads, method):
    """A kernel gradient over NCHUNK * CHUNK_MACS multiply-adds sums its batch in chunks of at most CHUNK_MACS (what
    a Ctrl-C waits for), up to one per sample: the same bits on 1, 2 and 3 threads, the one-chunk-per-16th sums
    within rounding."""
    from cnn_ext import ops

    rng = np.random.default_rng(7)
    N = 37
    pad, C_in, W = (0, 1, 18) if method in ("loops", "row_tiles") else (1, 2, 8)
    C_out = 32 if method == "channels" else 8  # channel vectors: whole tiles of output channels
    x = rng.standard_normal((N, C_in, 10, W))
    dy = rng.standard_normal((N, C_out, 10 + 2 * pad - 2, W + 2 * pad - 2))
    g = _methods.Geometry(N, C_in, C_out, 10, W, 3, 3, dy.shape[2], dy.shape[3], 1, 1, (pad,) * 4)
    ranges = []
    def run(threads):
        monkeypatch.setattr(ops, "_PLANS", {})
        cnn_ext.set_num_threads(threads)
        return cnn_ext.conv2d_kernel_gradient(dy, x, padding=pad, method=method)

    sixteen = run(1)
    monkeypatch.setattr(_methods, "CHUNK_MACS", g.macs // 30)
    chunks = -(-g.macs // (g.macs // 30))  # 30 or 31, above NCHUNK and below N
    assert _methods.nchunk(g, np.dtype(np.float64)) == chunks
    spy_kernels(monkeypatch, _runners, _kgrad, lambda name, args: ranges.append(args[-2:]))
    runs = [run(threads) for threads in (1, 2, 3)]
    assert max(hi for _, hi in ranges) == chunks, ranges  # the kernels ran that many chunks
    for other in runs[1:]:
        assert_array_equal(other, runs[0])
    np.testing.assert_allclose(runs[0], sixteen, rtol=1e-12, atol=1e-12)
    assert not np.array_equal(runs[0], sixteen) or method == "winograd"  # another order of the sums


@pytest.mark.parametrize("stride, dilation", [(1, 1), (2, 1), (1, 2)])
def test_long_depthwise_kernel_gradients_run_as_several_calls(monkeypatch, restore_threads, stride, dilation):
    """The depthwise kernel gradient sums each channel over the whole batch: a long call runs on groups of whole
    input channels (2 output channels each here), the bits of one call, on 1 and 2 threads."""
    from cnn_ext import ops

    rng = np.random.default_rng(8)
    x = rng.standard_normal((9, 6, 11, 10))
    k = rng.standard_normal((12, 1, 3, 3))
    opts = dict(stride=stride, dilation=dilation, groups=6, padding=1, kernel_size=3)
    dy = rng.standard_normal(cnn_ext.conv2d_forward(x, k, np.zeros(12), stride=stride, dilation=dilation, groups=6,
                                                    padding=1).shape)
    calls = []  # output channels of each call
    spy_kernels(monkeypatch, ops, lambda name: "depthwise_kernel_gradient" in name,
                lambda name, args: calls.append(args[0].shape[1]))
    for threads in (1, 2):
        cnn_ext.set_num_threads(threads)
        monkeypatch.setattr(ops, "_PLANS", {})
        monkeypatch.setattr(_runners, "INTERRUPT_MACS", 10**15)
        calls.clear()
        whole = cnn_ext.conv2d_kernel_gradient(dy, x, **opts)
        assert calls == [12]
        monkeypatch.setattr(ops, "_PLANS", {})
        monkeypatch.setattr(_runners, "INTERRUPT_MACS", 3000)
        calls.clear()
        chunked = cnn_ext.conv2d_kernel_gradient(dy, x, **opts)
        assert len(calls) > 2 and sum(calls) == 12 and all(c % 2 == 0 for c in calls), calls
        assert_array_equal(chunked, whole)
