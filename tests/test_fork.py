"""A child forked after the kernels ran on several threads (multiprocessing's 'fork' start method) computes,
also when another thread of the parent was inside a kernel call at the fork (issue #17).

GNU OpenMP cannot start a team in a forked child: cnn_ext's child runs every kernel on one thread
(cnn_ext._threads._after_fork_in_child). Each case runs in a subprocess with a timeout, so a hang fails the
test instead of blocking the suite; every child has its own deadline too.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

_PRELUDE = textwrap.dedent(
    """
    import os, sys, threading, time
    import numpy as np
    import cnn_ext
    from cnn_ext import _threads
    _threads.MIN_WORK_PER_THREAD = 1  # even the small test layer runs on 2 threads in the parent
    cnn_ext.set_num_threads(2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 20, 20))
    k = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    expected = cnn_ext.conv2d_forward(x, k, b)
    dk_expected = cnn_ext.conv2d_kernel_gradient(expected, x)

    def child_work(threads):
        cnn_ext.set_num_threads(threads)
        y = cnn_ext.conv2d_forward(x, k, b)
        dk = cnn_ext.conv2d_kernel_gradient(y, x)
        return np.array_equal(y, expected) and np.array_equal(dk, dk_expected)

    def fork_and_wait(threads, deadline=20.0):
        '''0: the child finished with the right answers; 1: wrong answers or an error; 2: it hung.'''
        pid = os.fork()
        if pid == 0:
            try:
                code = 0 if child_work(threads) else 1
            except BaseException:
                code = 1
            os._exit(code)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return 0 if os.waitstatus_to_exitcode(status) == 0 else 1
            time.sleep(0.002)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return 2
    """
)

# the children run outside the checkout: from its root they would import the unbuilt source tree
_OUTSIDE = os.path.dirname(os.path.abspath(sys.executable))


def _run(body, timeout=240):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    proc = subprocess.run(cwd=_OUTSIDE, args=[sys.executable, "-c", _PRELUDE + textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_100_forks_after_two_thread_calls_all_finish():
    out = _run(
        """
        results = []
        for i in range(100):
            for _ in range(3):  # the parent's pool is busy right before every fork
                cnn_ext.conv2d_forward(x, k, b)
            results.append(fork_and_wait(threads=(1, 2, 4)[i % 3]))
        print(results.count(0), results.count(1), results.count(2))
        """
    )
    assert out.split() == ["100", "0", "0"], out  # finished, wrong, hung


def test_100_forks_while_another_thread_is_inside_a_kernel():
    out = _run(
        """
        stop = threading.Event()
        calls = [0]

        def busy():
            while not stop.is_set():
                cnn_ext.conv2d_forward(x, k, b)
                cnn_ext.conv2d_kernel_gradient(expected, x)
                calls[0] += 1

        t = threading.Thread(target=busy)
        t.start()
        time.sleep(0.05)
        results = [fork_and_wait(threads=2) for _ in range(100)]
        stop.set()
        t.join()
        print(results.count(0), results.count(1), results.count(2), calls[0] > 0)
        """
    )
    assert out.split() == ["100", "0", "0", "True"], out


def test_fork_pool_map_of_conv2d_forward():
    out = _run(
        """
        import multiprocessing

        def one(i):
            return cnn_ext.conv2d_forward(x[i:i + 1], k, b)

        cnn_ext.conv2d_forward(x, k, b)  # the parent's OpenMP team exists before the fork
        with multiprocessing.get_context("fork").Pool(2) as pool:
            parts = pool.map(one, range(len(x)))
        print(np.array_equal(np.concatenate(parts), expected))
        """,
        timeout=120,
    )
    assert out.split() == ["True"], out


def test_child_runs_on_one_thread_and_parent_keeps_its_count():
    out = _run(
        """
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, str((cnn_ext.get_num_threads(), _threads.current_threads())).encode())
            os._exit(0)
        os.waitpid(pid, 0)
        print(os.read(r, 100).decode().replace(" ", ""), _threads.current_threads())
        """,
        timeout=60,
    )
    from cnn_ext import _threads

    n = "2" if _threads._OPENMP else "1"  # the serial build has one thread everywhere
    assert out.split() == [f"({n},1)", n], out
