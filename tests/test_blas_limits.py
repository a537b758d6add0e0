"""cnn_ext holds the BLAS libraries to one thread while its kernels run, from whichever Python thread calls,
and leaves them as it found them (threadpoolctl >= 3.8 lets only one "controlling" Python thread change a
process-wide OpenBLAS pool: a control kept by cnn_ext made its limits silently fail in other threads)."""
import threading

import numpy as np
import pytest

from cnn_ext import Dense
from cnn_ext._threads import _blas_libraries, blas_single_thread


def _counts():
    return [lib.get_num_threads() for lib in _blas_libraries()]


def _set_all(n):
    for lib in _blas_libraries():
        lib.set_num_threads(n)
        clear = getattr(lib, "clear_controlling_thread", None)
        if clear is not None:
            clear(force=True)


@pytest.fixture
def two_blas_threads():
    if not _blas_libraries():
        pytest.skip("no BLAS library found by threadpoolctl")
    before = _counts()
    _set_all(2)
    if any(n != 2 for n in _counts()):
        pytest.skip("the BLAS libraries cannot run 2 threads here")
    yield
    for lib, n in zip(_blas_libraries(), before):
        lib.set_num_threads(n)
        clear = getattr(lib, "clear_controlling_thread", None)
        if clear is not None:
            clear(force=True)


def _in_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def _inside():
    with blas_single_thread():
        return _counts()


def test_worker_thread_is_held_after_the_main_thread_was(two_blas_threads):
    assert _inside() == [1] * len(_counts())  # the main thread first (took threadpoolctl's control and kept it)
    assert _counts() == [2] * len(_counts())
    assert _in_thread(_inside) == [1] * len(_counts())  # was [2, 2]: the worker's set_num_threads(1) ignored
    assert _counts() == [2] * len(_counts())


def test_overlapping_threads_restore_the_original_count(two_blas_threads):
    a_in, b_in, a_out, b_out = threading.Event(), threading.Event(), threading.Event(), threading.Event()

    def first():
        with blas_single_thread():  # lowers to 1 (and so becomes threadpoolctl's controlling thread) ...
            a_in.set()
            b_in.wait(10)
        a_out.set()
        b_out.wait(10)  # alive until the other thread has left (a dead thread loses its control)

    def second():
        a_in.wait(10)
        with blas_single_thread():
            b_in.set()
            a_out.wait(10)
        # ... and this thread, the last to leave, restores: that restore was dropped, leaving 1 for good
        b_out.set()

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start(), b.start()
    a.join(), b.join()
    assert _counts() == [2] * len(_counts())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_products_run_with_blas_held_to_one_thread(two_blas_threads, monkeypatch, dtype):
    # outside a Network: OpenBLAS's own threads, left spinning after a product, would stall the next kernel's
    seen, matmul = [], np.matmul

    def spy(*args, **kwargs):
        seen.append(_counts())
        return matmul(*args, **kwargs)

    monkeypatch.setattr(np, "matmul", spy)
    layer = Dense(300, 40, seed=0, dtype=dtype)  # too small for column blocks: each product is one np.matmul
    x = np.random.default_rng(0).standard_normal((16, 300)).astype(dtype)
    y = layer.forward(x)
    grads = layer.backward(np.ones_like(y))
    assert len(seen) == 3  # y, dW and dX
    assert all(counts == [1] * len(counts) for counts in seen), seen
    assert _counts() == [2] * len(_counts())  # and given back after
    np.testing.assert_allclose(grads["dW"], x.T @ np.ones_like(y), rtol=1e-5)


def test_a_layers_own_update_holds_blas_to_one_thread(two_blas_threads, monkeypatch):
    # the tutorial's loop updates layer by layer: an axpy on OpenBLAS's threads left them spinning beside the kernels'
    from cnn_ext.layers import base

    seen = []

    def spying(axpy):
        def spy(*args, **kwargs):
            seen.append(_counts())
            return axpy(*args, **kwargs)
        return spy

    monkeypatch.setattr(base, "_AXPY", {k: spying(f) for k, f in base._AXPY.items()})
    layer = Dense(300, 40, seed=0, dtype=np.float64)
    w = layer.w.copy()
    grads = layer.backward(np.ones_like(layer.forward(np.ones((4, 300)))))
    layer.update(grads, 0.1)
    assert len(seen) == 2  # w and b
    assert all(counts == [1] * len(counts) for counts in seen), seen
    assert _counts() == [2] * len(_counts())
    np.testing.assert_allclose(layer.w, w - 0.1 * grads["dW"])
