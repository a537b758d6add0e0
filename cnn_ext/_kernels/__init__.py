"""The compiled kernel modules, one per method family, and the run-time choice of their ISA.

gemm (im2col + BLAS), rows (plain direct loops), tiled (register-tiled direct forward), kgrad (tiled kernel
gradient, bias gradient), pooling, depthwise, winograd (3x3 + BLAS) and norm (batch normalisation) are "twins":
on x86-64 each exists three times, baseline, AVX2 + FMA (`<name>_avx2`) and AVX-512 F/VL/BW/DQ (`<name>_avx512`,
64-byte vectors and the 32 vector registers). dense, elementwise and openmp are baseline only (elementwise must
not contract a*b + c into FMAs: its results are bitwise NumPy's).

NumPy's own CPU-feature detection decides (the same one its SIMD dispatch uses), before any variant is imported:
a module compiled for features the CPU lacks is never loaded. CNN_EXT_KERNELS picks the level:

* ``auto`` (or unset): the best variant the CPU runs, module by module, except where ``AUTO_KEEPS_AVX2`` says
  the AVX-512 build loses;
* ``avx512``, ``avx2``: that variant for every twin (a comparison of builds); a CPU or a build without it gets
  the next one down, with a RuntimeWarning;
* ``baseline``: the portable builds.

``ISA`` is the level chosen, ``VARIANTS`` the variant of each twin module ("baseline", "avx2" or "avx512").
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

_TWINS = ("gemm", "rows", "tiled", "kgrad", "pooling", "depthwise", "winograd", "norm")  # built for every ISA variant

# The variants, best first, with the NumPy CPU features each was compiled for (setup.py's ISA_FLAGS).
ISA_FEATURES = {
    "avx512": ("AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ", "AVX2", "FMA3"),
    "avx2": ("AVX2", "FMA3"),
    "baseline": (),
}
# Twin modules that `auto` keeps on AVX2 on an AVX-512 CPU, each with the reason: benchmarks/results/avx512.md
# (the whole AVX-512 build against AVX2) and avx512_auto.md (what auto picks against AVX2).
AUTO_KEEPS_AVX2: dict = {
    "kgrad": "its 16-lane tiles lose on most kernel gradients: short planes pad to whole vectors",
    "gemm": "im2col + the same BLAS: no gain",
    "winograd": "transforms + the same BLAS: no gain",
    "pooling": "MaxPool2D(3, stride=2) loses, the others tie",
}
# Modules that always take the same build: cnn_ext._methods reads the lanes and tile shapes of `tiled` to choose
# and check the methods of both (kgrad's rules read its own lanes: it can take another build).
COUPLED = ("rows", "tiled")

_CHOICES = ("", "auto", *ISA_FEATURES)


def _cpu_features():
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return {}
    return features


def cpu_supports(isa, features=None):
    """True when the CPU (or the given NumPy-style feature dict) has every feature variant ``isa`` needs."""
    features = _cpu_features() if features is None else features
    return all(features.get(name) for name in ISA_FEATURES[isa])


def _cpu_has_avx2_fma():
    return cpu_supports("avx2")


def plan(choice, features, built):
    """(level, {twin: variant}) for CNN_EXT_KERNELS=choice on a CPU with these features, given the variants
    ``built`` (a set of names); a level above what the CPU runs or what was built falls to the next one."""
    order = [isa for isa in ISA_FEATURES if isa == "baseline" or isa in built and cpu_supports(isa, features)]
    if choice in ISA_FEATURES:
        level = next(isa for isa in order if list(ISA_FEATURES).index(isa) >= list(ISA_FEATURES).index(choice))
        return level, {name: level for name in _TWINS}
    level = order[0]
    below = order[1] if len(order) > 1 else level
    keep = set(AUTO_KEEPS_AVX2) if level == "avx512" else set()
    if keep & set(COUPLED):
        keep |= set(COUPLED)
    if keep >= set(_TWINS):  # every module stays a level down: that is the level in use
        level = below
    return level, {name: below if name in keep else level for name in _TWINS}


def _built():
    """The variants whose modules are all present (without importing them: importing runs their code)."""
    from importlib.util import find_spec

    return {isa for isa in ISA_FEATURES if isa != "baseline"
            and all(find_spec(f"{__name__}.{name}_{isa}") is not None for name in _TWINS)}


def _select():
    """(the twin modules in _TWINS order, ISA level, {twin: variant})."""
    raw = os.environ.get("CNN_EXT_KERNELS", "")
    choice = raw.strip().lower()
    if choice not in _CHOICES:
        # a typo (CNN_EXT_KERNELS=basline) would otherwise pick the AVX2 build without a word: a comparison of
        # the two builds would time the same kernels twice
        warnings.warn(f"CNN_EXT_KERNELS={raw!r} is not one of 'baseline', 'avx2', 'avx512' or 'auto'; ignored "
                      f"(the kernels are chosen by CPU)", RuntimeWarning, stacklevel=2)
        choice = "auto"
    features = _cpu_features()
    level, variants = plan(choice, features, _built())
    if choice in ISA_FEATURES and level != choice:
        missing = [name for name in ISA_FEATURES[choice] if not features.get(name)]
        why = f"needs {'/'.join(missing)}, which this CPU lacks" if missing else "was not built"
        warnings.warn(f"CNN_EXT_KERNELS={raw!r}: that variant {why}; using {level}", RuntimeWarning, stacklevel=2)
    # the baseline modules are imported in any case: importing one later (a test comparing the builds) would
    # otherwise rebind this package's attribute of that name to it
    modules = [importlib.import_module(f"{__name__}.{name}") for name in _TWINS]
    modules = [m if variants[name] == "baseline" else importlib.import_module(f"{__name__}.{name}_{variants[name]}")
               for name, m in zip(_TWINS, modules)]
    return tuple(modules), level, variants


(gemm, rows, tiled, kgrad, pooling, depthwise, winograd, norm), ISA, VARIANTS = _select()

__all__ = ["gemm", "rows", "tiled", "kgrad", "dense", "pooling", "depthwise", "winograd", "elementwise", "norm",
           "openmp", "ISA", "VARIANTS", "ISA_FEATURES", "AUTO_KEEPS_AVX2", "cpu_supports"]
