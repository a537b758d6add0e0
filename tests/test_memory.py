"""keep_freed_memory: glibc keeps a training loop's freed arrays, so the next step does not page-fault them in."""
import ctypes
import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

import cnn_ext
from cnn_ext import _memory

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
_OUTSIDE = os.path.dirname(os.path.abspath(sys.executable))  # not the checkout: `-c` imports from the cwd first

# arrays of 6 MiB allocated and freed as a training step's are; minor page faults per round, after warm-up
CHURN = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    import cnn_ext
    applied = cnn_ext.keep_freed_memory() if sys.argv[1] == "keep" else None
    def churn():
        arrays = [np.ones(6 << 17) for _ in range(3)]
        del arrays
    for _ in range(3):
        churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        churn()
    print(json.dumps([applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10]))
""")


def _faults_per_round(mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", CHURN, mode], cwd=_OUTSIDE, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds are glibc's")
def test_freed_arrays_stay_in_the_process():
    _, default = _faults_per_round("default")
    applied, kept = _faults_per_round("keep")
    assert applied is True
    assert default > 500  # glibc's defaults hand the freed arrays back: each round faults them in again
    assert kept < 10


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(mmap_threshold=1.5e6), TypeError, "mmap_threshold must be an int"),
    (dict(mmap_threshold="32M"), TypeError, "mmap_threshold must be an int"),
    (dict(trim_threshold=None), TypeError, "trim_threshold must be an int"),
    (dict(mmap_threshold=True), TypeError, "mmap_threshold must be an int (bytes), got bool"),
    (dict(mmap_threshold=0), ValueError, "mmap_threshold must be in [1, "),
    (dict(mmap_threshold=_memory.MAX_MMAP_THRESHOLD + 1), ValueError, "mmap_threshold must be in [1, "),
    (dict(trim_threshold=-1), ValueError, "trim_threshold must be in [0, 2147483647]"),
    (dict(trim_threshold=2 ** 31), ValueError, "trim_threshold must be in [0, 2147483647]"),
])
def test_bad_thresholds_are_refused_before_anything_is_set(monkeypatch, kwargs, error, words):
    def no_libc(*args, **kw):
        raise AssertionError("the C library was reached")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    with pytest.raises(error) as info:
        cnn_ext.keep_freed_memory(**kwargs)
    assert words in str(info.value)


def test_other_c_libraries_are_left_alone(monkeypatch):
    def no_libc(*args, **kw):
        raise AssertionError("the C library was reached")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **kw: ("", ""))
    assert cnn_ext.keep_freed_memory() is False
    monkeypatch.setattr(sys, "platform", "darwin")
    assert cnn_ext.keep_freed_memory(1 << 20, 0) is False
