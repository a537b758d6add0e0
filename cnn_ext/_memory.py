"""keep_freed_memory: glibc's malloc thresholds raised, so a training loop stops page-faulting on its own arrays.

A training step allocates and frees the same large arrays every step. glibc returns the freed top of its heap
to the OS once it exceeds the trim threshold (by default twice the largest array freed so far), so the next
step takes a page fault per 4 KiB page it touches again; in a multi-threaded process each return also costs a
TLB flush on every core. Raising both thresholds keeps that memory in the process. It changes the whole
process's allocator, so it is the user's call: cnn_ext never does it on its own.
"""
import ctypes
import operator
import platform
import sys

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above HEAP_MAX_SIZE / 2: 32 MiB on 64-bit builds
MAX_MMAP_THRESHOLD = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
_INT_MAX = 2 ** 31 - 1


def _int_arg(name, value, lo, hi):
    try:
        if isinstance(value, bool):  # keep_freed_memory(True) would be a 1-byte threshold
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int (bytes), got {type(value).__name__}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}] bytes, got {value}")
    return value


def keep_freed_memory(mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 2 * MAX_MMAP_THRESHOLD) -> bool:
    """Keep freed arrays' memory in the process instead of returning it to the OS (Linux with glibc).

    A training script allocates and frees the same large arrays every step; with glibc's default settings the
    freed memory goes back to the OS and every step page-faults it in again (the MNIST CNN of the examples, batch
    64: about 1,300 page faults per step, and a step 1.24x longer on 2 threads). This sets glibc's malloc
    thresholds with ``mallopt``, as the environment variables ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` would before Python starts. It affects the whole process: its memory use stays
    near its peak instead of shrinking between steps. Call it once, at the start of a training script.

    Parameters
    ----------
    mmap_threshold : int, default 32 MiB
        Arrays smaller than this come from the heap, whose freed memory can be reused, instead of a mapping of
        their own, returned on free. At most 32 MiB (glibc's limit on 64-bit systems).
    trim_threshold : int, default 64 MiB
        Free memory at the top of the heap kept before any is returned to the OS.

    Returns
    -------
    bool
        True when both were set; False where the C library is not glibc (macOS, Windows, musl), which is then
        left as it is.

    Raises
    ------
    TypeError, ValueError
        A threshold that is not an int, or outside [1, 32 MiB] (mmap_threshold) or [0, 2**31 - 1]
        (trim_threshold). Nothing is changed.
    """
    mmap_threshold = _int_arg("mmap_threshold", mmap_threshold, 1, MAX_MMAP_THRESHOLD)
    trim_threshold = _int_arg("trim_threshold", trim_threshold, 0, _INT_MAX)
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
