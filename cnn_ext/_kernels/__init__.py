"""The compiled kernel modules, one per method family, and the run-time choice of their ISA.

gemm (im2col + BLAS), rows (plain direct loops), tiled (register-tiled direct forward), kgrad (tiled kernel
gradient, bias gradient), pooling and winograd (Winograd 3x3 + BLAS) exist twice on x86-64: baseline and AVX2 +
FMA (`<name>_avx2`); the AVX2 builds are taken when the CPU has both, else the baseline ones. dense, elementwise and openmp are baseline only
(elementwise must not contract a*b + c into FMAs: its results are bitwise NumPy's).

NumPy's own CPU-feature detection decides (the same one its SIMD dispatch uses). CNN_EXT_KERNELS=baseline
forces the portable builds, e.g. to compare the two; avx2 or auto (the default) take AVX2 where it runs.
"""
import importlib
import os
import warnings

try:
    from . import dense, elementwise, openmp
except ImportError:  # the source checkout, never built: say so, as NumPy does
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise ImportError(
        f"cnn_ext's compiled kernels are missing: you are importing the source tree in {_root}, which has not "
        f"been built. Install it (`pip install .` from the repository root) and run Python from another directory, "
        f"or build it in place (`python setup.py build_ext --inplace`) to use this checkout."
    ) from None

_TWINS = ("gemm", "rows", "tiled", "kgrad", "pooling", "winograd")  # the modules built for both ISAs


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


def _load(suffix):
    return tuple(importlib.import_module(f"{__name__}.{name}{suffix}") for name in _TWINS)


def _select():
    """(the twin modules in _TWINS order, ISA name)."""
    choice = os.environ.get("CNN_EXT_KERNELS", "").strip().lower()
    if choice not in _CHOICES:
        # a typo (CNN_EXT_KERNELS=basline) would otherwise pick the AVX2 build without a word: a comparison of
        # the two builds would time the same kernels twice
        warnings.warn(f"CNN_EXT_KERNELS={os.environ['CNN_EXT_KERNELS']!r} is not one of 'baseline', 'avx2' or "
                      f"'auto'; ignored (the kernels are chosen by CPU)", RuntimeWarning, stacklevel=2)
    # the baseline modules are imported in any case: importing one later (a test comparing the builds) would
    # otherwise rebind this package's attribute of that name to it
    baseline = _load("")
    if choice != "baseline" and _cpu_has_avx2_fma():
        try:
            return _load("_avx2"), "avx2"
        except ImportError:  # built without the variants (non-x86 or CNN_EXT_NO_AVX2=1)
            pass
    return baseline, "baseline"


(gemm, rows, tiled, kgrad, pooling, winograd), ISA = _select()

__all__ = ["gemm", "rows", "tiled", "kgrad", "dense", "pooling", "winograd", "elementwise", "openmp", "ISA"]
