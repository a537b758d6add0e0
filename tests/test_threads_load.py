"""The default thread count follows the load of the other processes (issue #18): a call takes at most the cores
they left free (cnn_ext._threads.current_threads); a number set by the user is kept; results never change."""
import itertools
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import cnn_ext
from cnn_ext import _threads

HZ = _threads._HZ


@pytest.fixture
def auto_two_threads(monkeypatch):
    """The default (adaptive) mode with 2 threads allowed, whatever the build and OMP_NUM_THREADS say."""
    monkeypatch.setattr(_threads, "_OPENMP", True)
    monkeypatch.setattr(_threads, "_num_threads", 2)
    monkeypatch.setattr(_threads, "_auto", True)
    monkeypatch.setattr(_threads, "_forked", False)
    monkeypatch.setattr(_threads, "_usable_cpus", lambda: 2)
    monkeypatch.setattr(_threads, "_load_prev", None)
    monkeypatch.setattr(_threads, "_free_cores", None)
    monkeypatch.setattr(_threads, "_load_next", 0.0)
    yield


def _fake_machine(monkeypatch, others_cores, ours_cores, seconds=1.0):
    """Two measurements `seconds` apart on 2 CPUs: the others kept others_cores busy, this process ours_cores."""
    clock = itertools.chain([100.0], itertools.repeat(100.0 + seconds))
    busy = (others_cores + ours_cores) * HZ * seconds
    ticks = iter([(1000, 10000), (1000 + int(busy), 10000 + int(2 * HZ * seconds))])
    cpu = iter([5.0, 5.0 + ours_cores * seconds])
    monkeypatch.setattr(_threads, "_monotonic", lambda: next(clock))
    monkeypatch.setattr(_threads, "_machine_ticks", lambda: next(ticks))
    monkeypatch.setattr(_threads, "_cpu_seconds", lambda: next(cpu))


@pytest.mark.parametrize("others, ours, expected", [
    (0.0, 0.0, 2),   # quiet
    (0.0, 2.0, 2),   # only our own threads are busy: they do not count against us
    (1.0, 1.0, 1),   # one other CPU-bound process
    (0.8, 0.0, 1),   # a core shared 80 % of the time
    (0.2, 1.0, 2),   # a little background work is tolerated (CORE_SHARE_TO_GIVE_UP)
    (2.0, 0.0, 1),   # two other processes: never fewer than one thread
])
def test_free_cores_from_the_other_processes_load(monkeypatch, auto_two_threads, others, ours, expected):
    _fake_machine(monkeypatch, others, ours)
    _threads._measure_free_cores()  # the first measurement only sets the baseline
    _threads._measure_free_cores()
    monkeypatch.setattr(_threads, "_load_next", float("inf"))  # current_threads uses that measurement
    assert _threads.current_threads() == expected
    assert _threads.threads_for(64, 10**9) == expected


def test_a_set_thread_count_is_kept(monkeypatch, auto_two_threads, restore_threads):
    _fake_machine(monkeypatch, 2.0, 0.0)
    _threads._measure_free_cores()
    _threads._measure_free_cores()
    monkeypatch.setattr(_threads, "_load_next", float("inf"))
    assert _threads.current_threads() == 1
    cnn_ext.set_num_threads(2)
    assert _threads.current_threads() == 2
    cnn_ext.set_num_threads(None)  # back to the default
    assert _threads.current_threads() == 1


def test_set_num_threads_none_and_errors(restore_threads):
    cnn_ext.set_num_threads(1)
    assert cnn_ext.set_num_threads(None) == 1
    with pytest.raises(TypeError, match="integer or None"):
        cnn_ext.set_num_threads(1.5)


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="measures the load from /proc/stat")
def test_busy_processes_take_the_second_thread_away(monkeypatch, auto_two_threads):
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.3)
        _threads.current_threads()  # baseline
        time.sleep(_threads.LOAD_INTERVAL + 0.3)
        assert _threads.current_threads() == 1  # 2 CPUs (as patched) with 2 busy processes: none free
    finally:
        for p in busy:
            p.kill()
            p.wait()


def test_results_do_not_depend_on_the_load(monkeypatch, auto_two_threads):
    """Calls from several Python threads while the measured load flips between quiet and busy give the
    serial bits."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 24, 24)).astype(np.float32)
    k = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    monkeypatch.setattr(_threads, "MIN_WORK_PER_THREAD", 1)
    monkeypatch.setattr(_threads, "_measure_free_cores", lambda: None)
    monkeypatch.setattr(_threads, "_free_cores", 0.5)
    serial = (cnn_ext.conv2d_forward(x, k, b), cnn_ext.conv2d_kernel_gradient(x[:, :1, 2:, 2:], x))
    errors = []

    def work():
        for i in range(20):
            _threads._free_cores = 0.5 if i % 2 else 2.0
            got = (cnn_ext.conv2d_forward(x, k, b), cnn_ext.conv2d_kernel_gradient(x[:, :1, 2:, 2:], x))
            if not all(np.array_equal(a, c) for a, c in zip(got, serial)):
                errors.append(i)

    ts = [threading.Thread(target=work) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == []
    assert_array_equal(cnn_ext.conv2d_forward(x, k, b), serial[0])
