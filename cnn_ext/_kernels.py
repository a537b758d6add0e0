"""Run-time choice of the compiled kernel modules (convolution, pooling): AVX2 + FMA builds when the CPU has
both, else baseline.

NumPy's own CPU-feature detection decides (the same one its SIMD dispatch uses). CNN_EXT_KERNELS=baseline
forces the portable build, e.g. to compare the two.
"""
import os
import warnings

from . import _conv as baseline
from . import _pool as baseline_pool


def _cpu_has_avx2_fma():
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return False
    return bool(features.get("AVX2")) and bool(features.get("FMA3"))


_CHOICES = ("", "auto", "avx2", "baseline")


def _select():
    """(convolution module, pooling module, ISA name)."""
    choice = os.environ.get("CNN_EXT_KERNELS", "").strip().lower()
    if choice not in _CHOICES:
        # a typo (CNN_EXT_KERNELS=basline) used to pick the AVX2 build without a word: a comparison of the two
        # builds would time the same kernels twice
        warnings.warn(f"CNN_EXT_KERNELS={os.environ['CNN_EXT_KERNELS']!r} is not one of 'baseline', 'avx2' or "
                      f"'auto'; ignored (the kernels are chosen by CPU)", RuntimeWarning, stacklevel=2)
    if choice != "baseline" and _cpu_has_avx2_fma():
        try:
            from . import _conv_avx2, _pool_avx2

            return _conv_avx2, _pool_avx2, "avx2"
        except ImportError:  # built without the variants (non-x86 or CNN_EXT_NO_AVX2=1)
            pass
    return baseline, baseline_pool, "baseline"


conv, pool, ISA = _select()
