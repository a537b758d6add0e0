"""Build the Cython kernels of cnn_ext.

Each src_pyx/*.pyx file is one extension module inside the package (cnn_ext._conv, ...).
OpenMP is compile-tested per compiler and dropped cleanly when it is missing or when
CNN_EXT_NO_OPENMP=1; CNN_EXT_DEBUG=1 turns Cython's bounds/wraparound checks back on.
"""
import os
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODULES = ["_conv"]  # one entry per src_pyx/<name>.pyx

DEBUG = os.environ.get("CNN_EXT_DEBUG", "0") not in ("", "0")
NO_OPENMP = os.environ.get("CNN_EXT_NO_OPENMP", "0") not in ("", "0")

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def openmp_flags(compiler_type):
    """(compile flags, link flags) for OpenMP with this compiler, before testing them."""
    if compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        # Apple clang needs libomp; off unless asked for (a second libomp beside PyTorch's crashes).
        if os.environ.get("CNN_EXT_MACOS_OPENMP", "0") in ("", "0"):
            return None
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def optimisation_flags(compiler_type):
    if compiler_type == "msvc":
        return ["/O2"]
    # -O3 vectorises the row loops; no -march=native: wheels must run on any x86-64 / arm64.
    return ["-O3", "-Wno-unreachable-code", "-Wno-unused-function"]


class BuildExt(build_ext):
    def _openmp_works(self, cflags, ldflags):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "omp_test.c")
            with open(src, "w") as f:
                f.write(OPENMP_TEST)
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                self.compiler.link_executable(objs, "omp_test", output_dir=tmp, extra_postargs=ldflags)
            except Exception as exc:  # any compiler/linker failure means: no OpenMP
                print(f"cnn_ext: OpenMP test failed ({exc.__class__.__name__}); building without OpenMP")
                return False
        return True

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        flags = None if NO_OPENMP else openmp_flags(ctype)
        if flags is not None and not self._openmp_works(*flags):
            flags = None
        print(f"cnn_ext: OpenMP {'enabled' if flags else 'disabled'} ({ctype})")
        for ext in self.extensions:
            ext.extra_compile_args = optimisation_flags(ctype) + (flags[0] if flags else [])
            ext.extra_link_args = flags[1] if flags else []
        super().build_extensions()


def extensions():
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "boundscheck": DEBUG,
        "wraparound": DEBUG,
        "initializedcheck": DEBUG,
        "cdivision": True,
        "embedsignature": True,
    }
    exts = [Extension(f"cnn_ext.{name}", [f"src_pyx/{name}.pyx"]) for name in MODULES]
    return cythonize(exts, compiler_directives=directives)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
