"""show_config: how this cnn_ext was built and what it runs with."""
import platform
import sys
from typing import Any, Dict

from . import _kernels
from ._threads import blas_info, get_num_threads
from ._version import __version__


def show_config(quiet: bool = False) -> Dict[str, Any]:
    """Report how this cnn_ext was built and what it runs with; returns the facts as a dict.

    Prints them too unless ``quiet=True``. Keys: ``version``, ``kernels`` (the active kernel build:
    ``"avx512"``, ``"avx2"`` or ``"baseline"``, see ``CNN_EXT_KERNELS``), ``kernel_variants`` (the build of
    each kernel module with ISA variants, e.g. ``{"tiled": "avx512", ...}``), ``cpu_avx512`` (whether the CPU
    runs the AVX-512 build), ``kernel_module`` (the direct convolution kernels' module), ``pool_module`` (the
    pooling kernels'), ``openmp`` (compiled in), ``num_threads`` (what the kernels
    use), ``openmp_max_threads``, ``blas`` (the BLAS libraries loaded in this process, from threadpoolctl),
    ``python``, ``platform``, ``numpy``, ``scipy``, ``threadpoolctl``.
    """
    import numpy
    import scipy
    import threadpoolctl

    info = {
        "version": __version__,
        "kernels": _kernels.ISA,
        "kernel_variants": dict(_kernels.VARIANTS),
        "cpu_avx512": _kernels.cpu_supports("avx512"),
        "kernel_module": _kernels.tiled.__name__,
        "pool_module": _kernels.pooling.__name__,
        "openmp": bool(_kernels.openmp.openmp_enabled()),
        "num_threads": get_num_threads(),
        "openmp_max_threads": int(_kernels.openmp.openmp_max_threads()),
        "buffer_reuse": False,  # kept for earlier releases' readers: results are never reused
        "blas": blas_info(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "threadpoolctl": threadpoolctl.__version__,
    }
    if not quiet:
        lines = [f"cnn_ext {info['version']}"]
        variants = sorted(set(info["kernel_variants"].values()))
        if len(variants) > 1:  # some modules kept on another build than the level (AUTO_KEEPS_AVX2)
            info_kernels = ", ".join(f"{name}: {isa}" for name, isa in info["kernel_variants"].items())
            lines.append(f"  {'kernels:':<20}{info['kernels']} ({info_kernels})")
        else:
            lines.append(f"  {'kernels:':<20}{info['kernels']}")
        for key in ("cpu_avx512", "kernel_module", "pool_module", "openmp", "num_threads", "openmp_max_threads",
                    "python", "platform", "numpy", "scipy", "threadpoolctl"):
            lines.append(f"  {key + ':':<20}{info[key]}")
        lines.append(f"  {'blas:':<20}{'' if info['blas'] else 'none loaded'}".rstrip())
        for lib in info["blas"]:
            lines.append(f"    - {lib['internal_api']} {lib['version']} ({lib['threading_layer']},"
                         f" {lib['num_threads']} threads) {lib['filepath']}")
        print("\n".join(lines))
    return info
