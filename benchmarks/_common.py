"""Shared machinery of the benchmark scripts: thread control, interleaved timing, machine facts, writing results.

Timing method (both scripts): every peer is verified and warmed up first; then for each repeat the peers
run one sample each, in an order rotated every repeat (round-robin, so drifting machine load hits all of
them alike); a sample is the mean of ``number`` back-to-back calls, with ``number`` chosen so a sample lasts
about ``min_time``. We report the median over repeats and the spread (25th-75th percentile, IQR).
"""
import glob
import os
import platform
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# this checkout's cnn_ext when it is built in place (python setup.py build_ext --inplace), else the installed one
_BUILT = glob.glob(os.path.join(_ROOT, "cnn_ext", "_kernels", "openmp*.so")) + \
    glob.glob(os.path.join(_ROOT, "cnn_ext", "_kernels", "openmp*.pyd"))
if _BUILT and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

try:
    import torch
except ImportError:  # PyTorch is an optional peer, never a dependency of the package
    torch = None

from threadpoolctl import ThreadpoolController

import cnn_ext

import _report

_CONTROLLER = ThreadpoolController()
# Pause before each sample. After a call, OpenBLAS's idle worker threads keep spinning (sched_yield loop) for
# about 0.1 s and libgomp's for a shorter while; a multi-threaded peer that starts meanwhile shares the 2 cores
# with them and runs 2.5-4x slower (measured: cnn_ext's 2-thread forward right after a 2-thread numpy.matmul).
# So multi-threaded samples wait SPIN_PAUSE for them to go to sleep; single-threaded ones only _PAUSE.
_PAUSE = 0.001
SPIN_PAUSE = 0.15
# ...and after that pause, the peer itself runs untimed for WARM_TIME (whole calls, at least one; none for
# calls over WARM_MAX) before its timed sample. The first 2-thread call after 20+ ms idle is slow on this
# virtual machine: 9.8 ms median right after a 50 ms sleep where back-to-back calls take 2.4 ms (cnn_ext's
# float32 kernel gradient of (64,16,32,28,3)); the woken worker can land on the master's core (a plain
# 2-thread OpenMP busy loop showed it starting 2-3.5 ms late there). A training loop calls back to back, so
# the sample times warm threads; every peer gets the same warm-up.
WARM_TIME = 0.01
WARM_MAX = 0.1


@contextmanager
def threads(n):
    """Run every library on n threads: cnn_ext, PyTorch, and the BLAS that numpy/scipy use."""
    prev_cnn = cnn_ext.set_num_threads(n)
    prev_torch = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(n)
    try:
        with _CONTROLLER.limit(limits=n, user_api="blas"):
            yield
    finally:
        cnn_ext.set_num_threads(prev_cnn)
        if torch is not None:
            torch.set_num_threads(prev_torch)


def time_call(fn, number, clock=time.perf_counter):
    """Mean seconds per call over ``number`` back-to-back calls.

    ``clock=time.thread_time`` counts only the calling thread's CPU time: for single-threaded calls that is
    the wall time the call would take on an idle machine, whatever other processes do.
    """
    t0 = clock()
    for _ in range(number):
        fn()
    return (clock() - t0) / number


def calibrate(fn, min_time):
    """Calls per sample so that one sample lasts about min_time (fn has been warmed up already)."""
    t = time_call(fn, 1)
    if t >= min_time:
        return 1, t
    number = 1
    while number * t < min_time and number < 100_000:
        number *= 2
        t = time_call(fn, number)
    return max(1, int(np.ceil(min_time / max(t, 1e-9)))), t


def blas_controllers():
    """threadpoolctl's per-library controllers of the BLAS libraries loaded now (set_num_threads is a ctypes call)."""
    return _CONTROLLER.select(user_api="blas").lib_controllers


class Stats:
    """Median and spread of a list of per-call times (seconds)."""

    def __init__(self, samples, note=""):
        s = np.asarray(samples, dtype=float)
        self.samples = s
        self.median = float(np.median(s))
        self.q1, self.q3 = (float(v) for v in np.percentile(s, [25, 75]))
        self.min, self.max = float(s.min()), float(s.max())
        self.n = len(s)
        self.note = note
        self.other_load = float("nan")

    def spread_pct(self):
        """IQR as a percentage of the median."""
        return 100.0 * (self.q3 - self.q1) / self.median if self.median > 0 else 0.0


class LoadMeter:
    """CPU time other processes used while we measured, in cores (from /proc/stat minus our own process).

    The machine's 2 cores are shared: a 2-thread run next to a busy neighbour is slowed far more than its
    share (threads wait at every barrier for the one that was descheduled), so each result carries this.
    """

    def __init__(self):
        self.start = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as fh:
                vals = [int(v) for v in fh.readline().split()[1:9]]
            with open("/proc/self/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            own = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
        except OSError:
            return None
        return sum(vals) - vals[3] - vals[4], sum(vals), own

    def others(self):
        """Average number of cores other processes kept busy since this meter was made."""
        end = self._read()
        if self.start is None or end is None or end[1] == self.start[1]:
            return float("nan")
        busy, total, own = (e - s for e, s in zip(end, self.start))
        return max(0.0, (busy - own) / total * (os.cpu_count() or 1))


def wait_quiet(max_wait, threshold=0.25, probe=0.5):
    """Wait up to max_wait seconds until other processes use under threshold cores; returns their load."""
    deadline = time.time() + max_wait
    while True:
        meter = LoadMeter()
        time.sleep(probe)
        load = meter.others()
        if load < threshold or time.time() >= deadline:
            return load


def interleaved(fns, repeats, min_time, caps=None, clock=time.perf_counter, pause=None):
    """Round-robin timing of {name: fn}; returns {name: Stats}. caps limits the repeats of a slow peer.

    Each Stats carries ``other_load``: the cores other processes used during the whole measurement.
    ``pause`` (seconds before each sample) defaults to SPIN_PAUSE when the libraries run more than one
    thread (cnn_ext.get_num_threads() > 1), else _PAUSE; after it, the peer warms up for WARM_TIME.
    """
    caps = caps or {}
    if pause is None:
        pause = SPIN_PAUSE if cnn_ext.get_num_threads() > 1 else _PAUSE
    meter = LoadMeter()
    names = list(fns)
    numbers, warms = {}, {}
    for name in names:
        numbers[name], t = calibrate(fns[name], min_time)
        warms[name] = 0 if t > WARM_MAX else max(1, int(np.ceil(WARM_TIME / max(t, 1e-9))))
    samples = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if len(samples[name]) >= caps.get(name, repeats):
                continue
            time.sleep(pause)
            for _ in range(warms[name]):
                fns[name]()
            samples[name].append(time_call(fns[name], numbers[name], clock))
    load = meter.others()
    out = {name: Stats(samples[name]) for name in names}
    for st in out.values():
        st.other_load = load
    return out


def gemm_peak(dtype, n_threads, size=1536, repeats=5):
    """Measured GEMM GFLOP/s for dtype on n_threads: numpy.matmul (OpenBLAS) and torch.mm (MKL), interleaved."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    fns = {"numpy.matmul": lambda: np.matmul(a, b)}
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch.mm"] = lambda: torch.mm(ta, tb)
    flops = 2.0 * size ** 3
    with threads(n_threads):
        for fn in fns.values():
            fn()
        stats = interleaved(fns, repeats, min_time=0.0)
    return {name: flops / s.median / 1e9 for name, s in stats.items()}


# ----------------------------------------------------------------------------------------------
# machine facts
# ----------------------------------------------------------------------------------------------

def _cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or "unknown"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = fields.get("Model name", "unknown").strip()
    family = fields.get("CPU family", "").strip()
    mdl = fields.get("Model", "").strip()
    flags = fields.get("Flags", "")
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model} (family {family}, model {mdl}), {os.cpu_count()} cores, {simd}"


def blas_summary():
    """One line per BLAS library loaded in this process, with the kernel (architecture) OpenBLAS picked."""
    rows = []
    for info in _CONTROLLER.info():
        if info.get("user_api") != "blas":
            continue
        arch = info.get("architecture") or "?"
        rows.append(f"{info.get('internal_api')} {info.get('version')} kernel={arch} "
                    f"({os.path.basename(info.get('filepath', ''))})")
    return rows


def _git_head():
    try:
        out = subprocess.run(["git", "-C", _ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", _ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "?"
    return f"{out or '?'}{' + uncommitted changes' if dirty else ''}"


def machine_report():
    """Markdown lines describing the machine, library versions, BLAS kernels and environment."""
    import scipy

    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- CPU: {_cpu_model()}; load average at start {os.getloadavg()[0]:.2f}",
        f"- Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"cnn_ext {cnn_ext.__version__} (threads default {cnn_ext.get_num_threads()}), "
        f"torch {torch.__version__ if torch is not None else 'not installed'}",
    ]
    try:
        cfg = cnn_ext.show_config(quiet=True)
        mod = sys.modules.get(cfg.get("kernel_module") or "")
        built = (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(mod.__file__)))
                 if mod is not None and getattr(mod, "__file__", None) else "?")
        lines.append(f"- cnn_ext kernels: {cfg.get('kernels')} ({cfg.get('kernel_module')}, built {built}), "
                     f"OpenMP {'on' if cfg.get('openmp') else 'off'}; checkout {_git_head()}")
    except AttributeError:  # an older cnn_ext without show_config
        pass
    for row in blas_summary():
        lines.append(f"- BLAS: {row}")
    if torch is not None:
        cfg = torch.__config__.show()
        mkl = "MKL" if "Math Kernel Library" in cfg else "no MKL"
        dnn = "oneDNN" if torch.backends.mkldnn.is_available() else "no oneDNN"
        cap = next((ln.split(":", 1)[1].strip() for ln in cfg.splitlines() if "CPU capability" in ln), "?")
        lines.append(f"- torch backends: {mkl}, {dnn}, CPU capability {cap}")
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                      "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ}
    lines.append(f"- environment: {env if env else 'no OPENBLAS_*/OMP_*/MKL_* thread or kernel variables set'}")
    if "OPENBLAS_CORETYPE" in env or "OPENBLAS_L2_SIZE" in env:
        lines.append("- WARNING: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE force an older OpenBLAS kernel; numpy's and "
                     "cnn_ext's GEMMs are slower than they can be. For a fair run unset both (see README).")
    return lines


# ----------------------------------------------------------------------------------------------
# formatting
# ----------------------------------------------------------------------------------------------

def fmt_time(seconds):
    """Seconds as a short human string in ms (or s above 10 s)."""
    if seconds is None:
        return "—"
    if seconds >= 10:
        return f"{seconds:.1f} s"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    return f"{ms * 1e3:.0f} µs" if ms < 0.1 else f"{ms:.3f} ms"


def fmt_ratio(r):
    """A speed ratio: peer time / cnn_ext time (> 1 means cnn_ext is faster)."""
    if r is None:
        return "—"
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def parse_list(text, kind=str):
    """'a,b,c' -> [kind(a), kind(b), kind(c)]."""
    return [kind(t) for t in text.split(",") if t.strip()]


def command_line(argv=None):
    """The command that is running, as typed from the repository root (``python benchmarks/x.py ...``)."""
    script = os.path.abspath(sys.argv[0])
    if script.startswith(_ROOT + os.sep):
        script = os.path.relpath(script, _ROOT)
    return shlex.join(["python", script] + list(sys.argv[1:] if argv is None else argv))


def write_results(result, out_path, argv=None):
    """Print the report and, given --out, write OUT.json (the data) and OUT.md (rendered from that data).

    ``result`` is built with _report.new_result / add_table / add_text; its command defaults to this process's
    command line. A malformed table (a row of the wrong length) raises ValueError naming it, before anything is
    written.
    """
    if not result.get("command"):
        result["command"] = command_line(argv)
    text = _report.render_markdown(result)
    sys.stdout.write(text)
    if out_path:
        _report.save(result, out_path)
    return text


def layer_case(layer, dtype, seed=0):
    """Random x, k, b, dE_dY and the _methods.Geometry of a layer (label, N, C_in, C_out, H, K, stride, padding)."""
    from cnn_ext import _methods
    _, N, C_in, C_out, H, K, S, P = layer
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
    k = rng.standard_normal((C_out, C_in, K, K)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    O = (H + 2 * P - K) // S + 1
    dy = rng.standard_normal((N, C_out, O, O)).astype(dtype)
    return x, k, b, dy, _methods.Geometry(N, C_in, C_out, H, H, K, K, O, O, S, S, (P,) * 4)


def side_by_side_parser(doc, dtypes=("float32",)):
    """The options of a side-by-side script: --repeats, --min-time, --threads, --dtypes, --clock and --out."""
    import argparse
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.05)
    ap.add_argument("--threads", type=lambda s: parse_list(s, int), default=[1, 2])
    ap.add_argument("--dtypes", type=parse_list, default=list(dtypes))
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="1-thread rows: wall or CPU time")
    ap.add_argument("--out", help="also write the report to OUT.json (the data) and OUT.md (rendered from it)")
    return ap
