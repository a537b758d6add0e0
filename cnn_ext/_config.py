"""Thread count and build facts shared by every kernel call.

One threading layer at a time: the kernels split samples over OpenMP threads and each thread calls a
single-threaded BLAS; while they run, the BLAS libraries are held to one thread (threadpoolctl) so the
two never oversubscribe the cores.
"""
import operator
import threading

import numpy as np

from . import _reuse
from ._kernels import conv as _conv

_OPENMP = bool(_conv.openmp_enabled())  # fixed at build time; read once (every kernel call asks for the threads)

_lock = threading.RLock()
_blas_libs = None
_num_threads = None
_controller = None


def get_num_threads():
    """Number of threads the kernels use (``OMP_NUM_THREADS`` or all cores by default; 1 without OpenMP)."""
    global _num_threads
    if _num_threads is None:
        _num_threads = max(1, _conv.openmp_max_threads())  # OMP_NUM_THREADS, else all cores; 1 without OpenMP
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


def set_buffer_reuse(enabled):
    """Turn on or off (and empty the pool of) the reuse of large result arrays nobody holds any more (see
    ``cnn_ext._reuse``): layers' outputs and the results of conv2d_forward / conv2d_input_gradient. Returns
    the previous setting. It cannot be turned on where reference counts cannot tell (free-threaded builds)."""
    if not isinstance(enabled, (bool, np.bool_)):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    previous = _reuse.ENABLED
    _reuse.ENABLED = bool(enabled) and _reuse.FREE_REFCOUNT is not None
    if not _reuse.ENABLED:
        _reuse.OUTPUTS.clear()
    return previous


def get_buffer_reuse():
    """Whether large result arrays are reused (see :func:`set_buffer_reuse`)."""
    return _reuse.ENABLED


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


def show_config(quiet=False):
    """Report how this cnn_ext was built and what it runs with; returns the facts as a dict.

    Prints them too unless ``quiet=True``. Keys: ``version``, ``kernels`` (the active kernel build:
    ``"avx2"`` or ``"baseline"``, see ``CNN_EXT_KERNELS``), ``kernel_module``, ``openmp`` (compiled in),
    ``num_threads`` (what the kernels use), ``openmp_max_threads``, ``pool_module`` (the pooling kernels'
    build), ``buffer_reuse`` (see :func:`set_buffer_reuse`), ``blas`` (the BLAS libraries loaded in this
    process, from threadpoolctl), ``python``, ``platform``, ``numpy``, ``scipy``, ``threadpoolctl``.
    """
    import platform
    import sys

    import numpy
    import scipy
    import threadpoolctl

    from . import _kernels
    from ._version import __version__

    info = {
        "version": __version__,
        "kernels": _kernels.ISA,
        "kernel_module": _conv.__name__,
        "openmp": bool(_conv.openmp_enabled()),
        "num_threads": get_num_threads(),
        "openmp_max_threads": int(_conv.openmp_max_threads()),
        "pool_module": _kernels.pool.__name__,
        "buffer_reuse": get_buffer_reuse(),
        "blas": blas_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "threadpoolctl": threadpoolctl.__version__,
    }
    if not quiet:
        lines = [f"cnn_ext {info['version']}"]
        for key in ("kernels", "kernel_module", "pool_module", "openmp", "num_threads", "openmp_max_threads",
                    "buffer_reuse", "python", "platform", "numpy", "scipy", "threadpoolctl"):
            lines.append(f"  {key + ':':<20}{info[key]}")
        lines.append(f"  {'blas:':<20}{'' if info['blas'] else 'none loaded'}".rstrip())
        for lib in info["blas"]:
            lines.append(f"    - {lib['internal_api']} {lib['version']} ({lib['threading_layer']},"
                         f" {lib['num_threads']} threads) {lib['filepath']}")
        print("\n".join(lines))
    return info
