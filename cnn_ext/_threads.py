"""The kernels' thread count, the BLAS limit, and what happens to both on a busy machine and after fork.

One threading layer at a time: the kernels split their work over OpenMP threads and each thread calls a
single-threaded BLAS; while they run, the BLAS libraries are held to one thread (threadpoolctl) so the two never
oversubscribe the cores.

Busy machine: every parallel region ends when its slowest thread does, and an OpenMP thread that waits for a core
another process holds stalls the region by up to a scheduler time slice (the tutorial's training step: 1.1 ms on
1 thread, 4.6 ms on 2 with one other CPU-bound process on this 2-core machine). So by default (no
``set_num_threads``, no ``OMP_NUM_THREADS``) each call takes at most the cores the OTHER processes left free,
measured every LOAD_INTERVAL seconds from /proc/stat minus this process's own CPU time (``current_threads``).
A thread count the user set is kept as it is. The choice is made in Python per call, so it holds whichever
OpenMP runtime was loaded first (PyTorch's libgomp, read before cnn_ext's, ignores GOMP_SPINCOUNT set later).

Fork: GNU OpenMP cannot start a new team in a forked child (its first parallel region hangs), so a child forked
from this process runs every kernel on one thread (the one-thread path enters no parallel region), whatever
thread count it sets; the child also gets a fresh lock and the BLAS limits of the moment before any kernel
call (os.register_at_fork). Use the 'spawn' or 'forkserver' start methods for parallel children.
"""
import operator
import os
import threading
from time import monotonic as _monotonic
from typing import Any, ContextManager, Dict, List, Optional

from ._kernels import openmp as _openmp

_OPENMP = bool(_openmp.openmp_enabled())  # fixed at build time

# Multiply-adds per thread below which a second thread costs more than it saves (a parallel region costs
# microseconds, far more when the cores are busy).
MIN_WORK_PER_THREAD = 200_000

# How often the load of the other processes is measured (a read of /proc/stat), and how much of a
# core they may take before a thread gives that core up: a thread sharing its core 25 % of the time already
# holds up the barriers it meets.
LOAD_INTERVAL = 0.2
CORE_SHARE_TO_GIVE_UP = 0.25

_lock = threading.RLock()
_blas_libs = None
_num_threads = None
_auto = "OMP_NUM_THREADS" not in os.environ  # adapt to the machine's load until set_num_threads is called
_controller = None
_forked = False  # this process is a child forked after cnn_ext was imported: no OpenMP team, ever


def get_num_threads() -> int:
    """Number of threads the kernels may use (``OMP_NUM_THREADS`` or all cores by default; 1 without OpenMP).

    By default a call uses fewer when other processes keep cores busy (see ``current_threads``); in a child
    forked from this process, kernels run on one thread.
    """
    global _num_threads
    if _num_threads is None:
        _num_threads = max(1, _openmp.openmp_max_threads())  # OMP_NUM_THREADS, else all cores; 1 without OpenMP
    return _num_threads if _OPENMP else 1


def set_num_threads(n: Optional[int]) -> int:
    """Set the number of threads the kernels use; returns the previous value. ``None`` goes back to the
    default: all cores, fewer while other processes keep some busy.

    A number set here is used as it is, also on a busy machine (except in a forked child: one thread).
    Results do not depend on this number: batch reductions are summed in a fixed order.
    """
    global _num_threads, _auto
    previous = get_num_threads()
    if n is None:
        _num_threads, _auto = None, True
        return previous
    try:
        if isinstance(n, bool):
            raise TypeError
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an integer or None, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _num_threads, _auto = n, False
    return previous


# ---- the load of the other processes (Linux: /proc/stat) -------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_load_next = 0.0  # time.monotonic() of the next measurement
_load_prev = None  # (monotonic, machine busy ticks, machine total ticks, this process's CPU seconds)
_free_cores = None  # cores the other processes left free at the last measurement (None: unknown)


def _machine_ticks():
    """(busy, total) CPU ticks of the whole machine since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal (guest time is inside user)
    ticks = [int(v) for v in fields[1:9]]
    idle = ticks[3] + ticks[4]
    return sum(ticks) - idle, sum(ticks)


def _measure_free_cores():
    """Cores of this process's CPU set that the other processes left free since the last measurement."""
    global _load_prev, _free_cores
    now = _monotonic()
    machine = _machine_ticks()
    if machine is None:
        return
    ours = _cpu_seconds()
    prev, _load_prev = _load_prev, (now, machine[0], machine[1], ours)
    if prev is None:  # no interval yet: the 1-minute load average (ours included) until the next measurement
        try:
            _free_cores = _usable_cpus() - os.getloadavg()[0]
        except (AttributeError, OSError):
            pass
        return
    d_busy, d_total = machine[0] - prev[1], machine[1] - prev[2]
    d_wall = now - prev[0]
    if d_total <= 0 or d_wall <= 0:
        return
    ncpu = d_total / (_HZ * d_wall)  # CPUs the kernel counted ticks for
    others = d_busy / d_total * ncpu - (ours - prev[3]) / d_wall  # busy cores minus our own use
    _free_cores = min(float(_usable_cpus()), ncpu - max(0.0, others))


def _cpu_seconds():
    """CPU time of this process (all its threads) in seconds."""
    t = os.times()
    return t.user + t.system


def _usable_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def current_threads() -> int:
    """Threads for a kernel call now: 1 in a forked child; the number set by the user or OMP_NUM_THREADS; by
    default all cores less those other processes keep busy (measured at most every LOAD_INTERVAL seconds)."""
    global _load_next
    if _forked:
        return 1
    nt = get_num_threads()
    if not _auto or nt == 1:
        return nt
    now = _monotonic()
    if now >= _load_next:
        _load_next = now + LOAD_INTERVAL
        _measure_free_cores()
    free = _free_cores
    if free is not None:
        free = int(free + CORE_SHARE_TO_GIVE_UP)
        if free < nt:
            return free if free > 1 else 1
    return nt


def threads_for(parts: int, work: Optional[int] = None) -> int:
    """Threads for a call that splits ``parts`` independent units and ``work`` multiply-adds: at most one per
    part and one per MIN_WORK_PER_THREAD, and at most ``current_threads()``."""
    nt = current_threads()
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


def blas_single_thread() -> ContextManager[Any]:
    """Context manager holding every BLAS library to one thread (used around the OpenMP GEMM loops)."""
    return _blas_single_thread


def blas_info() -> List[Dict[str, Any]]:
    """The BLAS libraries loaded in this process (name, version, threading layer, threads)."""
    return [
        {k: info.get(k) for k in ("internal_api", "prefix", "version", "threading_layer", "num_threads", "filepath")}
        for info in _threadpool_controller().info()
        if info.get("user_api") == "blas"
    ]


# ---- fork ----------------------------------------------------------------------------------------

def _after_fork_in_child():
    """In a forked child: one thread for every kernel (GNU OpenMP cannot start a team after fork), a fresh
    lock (another thread of the parent may have held it), and the BLAS limits restored if a kernel call of the
    parent held them (no such call lives on in the child)."""
    global _lock, _forked, _load_prev, _free_cores, _load_next
    _forked = True
    _lock = threading.RLock()
    _load_prev, _free_cores, _load_next = None, None, 0.0
    saved, _blas_single_thread._saved = _blas_single_thread._saved, []
    _blas_single_thread._depth = 0
    for lib, n in saved:
        try:
            lib.set_num_threads(n)
        except Exception:  # noqa: BLE001 - a child that cannot restore a BLAS limit still computes correctly
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
