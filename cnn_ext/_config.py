"""Thread count and build facts shared by every kernel call.

One threading layer at a time: the kernels split samples over OpenMP threads and each thread calls a
single-threaded BLAS; while they run, the BLAS libraries are held to one thread (threadpoolctl) so the
two never oversubscribe the cores.
"""
import os
import threading

from ._kernels import conv as _conv

_lock = threading.Lock()
_num_threads = None
_controller = None


def _default_threads():
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n >= 1:
            return n
    return max(1, _conv.openmp_max_threads() if _conv.openmp_enabled() else 1)


def get_num_threads():
    """Number of threads the kernels use (``OMP_NUM_THREADS`` or all cores by default; 1 without OpenMP)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = _default_threads()
    return _num_threads if _conv.openmp_enabled() else 1


def set_num_threads(n):
    """Set the number of threads the kernels use; returns the previous value.

    Results do not depend on this number: batch reductions are summed in a fixed order.
    """
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) and not hasattr(n, "__index__"):
        raise TypeError(f"set_num_threads: n must be an integer, got {type(n).__name__}")
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    previous = get_num_threads()
    _num_threads = n
    return previous


def _threadpool_controller():
    global _controller
    if _controller is None:
        with _lock:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
    return _controller


def blas_single_thread():
    """Context manager holding every BLAS library to one thread (used around the OpenMP GEMM loops)."""
    return _threadpool_controller().limit(limits=1, user_api="blas")


def blas_info():
    """The BLAS libraries loaded in this process (name, version, threading layer, threads)."""
    return [
        {k: info.get(k) for k in ("internal_api", "prefix", "version", "threading_layer", "num_threads", "filepath")}
        for info in _threadpool_controller().info()
        if info.get("user_api") == "blas"
    ]
