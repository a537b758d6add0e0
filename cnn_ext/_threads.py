"""The kernels' thread count and the BLAS limit.

One threading layer at a time: the kernels split their work over OpenMP threads and each thread calls a
single-threaded BLAS; while they run, the BLAS libraries are held to one thread (threadpoolctl) so the two never
oversubscribe the cores.
"""
import operator
import threading

from ._kernels import openmp as _openmp

_OPENMP = bool(_openmp.openmp_enabled())  # fixed at build time

# Multiply-adds per thread below which a second thread costs more than it saves (a parallel region costs
# microseconds, far more when the cores are busy).
MIN_WORK_PER_THREAD = 200_000

_lock = threading.RLock()
_blas_libs = None
_num_threads = None
_controller = None


def get_num_threads():
    """Number of threads the kernels use (``OMP_NUM_THREADS`` or all cores by default; 1 without OpenMP)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = max(1, _openmp.openmp_max_threads())  # OMP_NUM_THREADS, else all cores; 1 without OpenMP
    return _num_threads if _OPENMP else 1


def set_num_threads(n):
    """Set the number of threads the kernels use; returns the previous value.

    Results do not depend on this number: batch reductions are summed in a fixed order.
    """
    global _num_threads
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an integer, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    previous = get_num_threads()
    _num_threads = n
    return previous


def threads_for(parts, work=None):
    """Threads for a call that splits ``parts`` independent units and ``work`` multiply-adds: at most one per
    part and one per MIN_WORK_PER_THREAD."""
    nt = get_num_threads()
    if parts < nt:
        nt = parts
    if work is not None and work // MIN_WORK_PER_THREAD < nt:
        nt = work // MIN_WORK_PER_THREAD
    return nt if nt > 1 else 1


def _threadpool_controller():
    global _controller
    if _controller is None:
        with _lock:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
    return _controller


def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded now (scanned once; the kernels' BLAS is SciPy's)."""
    global _blas_libs
    if _blas_libs is None:
        _blas_libs = _threadpool_controller().select(user_api="blas").lib_controllers
    return _blas_libs


def _set_blas_threads(changes):
    """``lib.set_num_threads(n)`` for each (lib, n), from whichever Python thread calls, under ``_lock``.

    threadpoolctl (3.8+) lets only one Python thread, the first to call ``set_num_threads`` and for as long as it
    lives, change a process-wide (non-OpenMP) OpenBLAS pool; calls from any other thread silently do nothing.
    Kept, that control made the main thread's first kernel call its owner: later calls from worker threads then
    ran their kernels with every BLAS thread spinning, and the restore made by the last of several threads to
    leave was dropped, leaving NumPy's BLAS on one thread for good. cnn_ext orders its own changes (``_lock``), so
    while other Python threads exist it takes the control over (``force``) and gives it back after each change;
    with one Python thread there is nobody to take it from or give it to (and skipping that saves 4.6 µs per
    enter / exit of blas_single_thread: 3-6 of them per training step of the tutorial's network).
    """
    single = threading.active_count() == 1
    for lib, n in changes:
        clear = None if single else getattr(type(lib), "clear_controlling_thread", None)  # threadpoolctl >= 3.8
        if clear is not None:
            clear(force=True)
        lib.set_num_threads(n)
        if clear is not None:
            clear()


class _BlasSingleThread:
    """Hold every BLAS library to one thread while at least one kernel call is inside.

    Reference-counted so that kernel calls from several Python threads at once restore the original
    limits exactly once, when the last one leaves; each enter/exit is a few ctypes calls (threadpoolctl's
    own ``limit()`` rescans its libraries each time, about 15 µs).
    """

    def __init__(self):
        self._depth = 0
        self._saved = []

    def __enter__(self):
        with _lock:
            if self._depth == 0:
                self._saved = [(lib, n) for lib in _blas_libraries() if (n := lib.get_num_threads()) != 1]
                _set_blas_threads([(lib, 1) for lib, _ in self._saved])
            self._depth += 1
        return self

    def __exit__(self, *exc):
        with _lock:
            self._depth -= 1
            if self._depth == 0:
                _set_blas_threads(self._saved)
                self._saved = []
        return False


_blas_single_thread = _BlasSingleThread()


def blas_single_thread():
    """Context manager holding every BLAS library to one thread (used around the OpenMP GEMM loops)."""
    return _blas_single_thread


def blas_info():
    """The BLAS libraries loaded in this process (name, version, threading layer, threads)."""
    return [
        {k: info.get(k) for k in ("internal_api", "prefix", "version", "threading_layer", "num_threads", "filepath")}
        for info in _threadpool_controller().info()
        if info.get("user_api") == "blas"
    ]
