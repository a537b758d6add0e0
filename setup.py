"""Build the Cython kernels of cnn_ext.

Each src_pyx/<name>.pyx is one extension module of the subpackage cnn_ext._kernels (MODULES below); on x86-64
each "twin" module (the convolution and pooling kernels) is compiled twice more: with AVX2 + FMA
(cnn_ext._kernels.<name>_avx2) and with AVX-512 F/VL/BW/DQ (<name>_avx512), picked at run time by
cnn_ext._kernels from the CPU's features. A variant's source is src_pyx/<name>_<isa>.pyx when that file exists,
else a one-line stub (`include "<name>.pyx"`) written to the build directory, so a new twin gets every variant.
The C tiles live in src_pyx/include/*.h, the shared Cython declarations (geometry, BLAS, the split over
threads) in src_pyx/*.pxd.

OpenMP, per platform (the flag is compile-tested; without it the build falls back to serial kernels):
  * Linux / other gcc or clang:  -fopenmp  (auditwheel grafts libgomp into the wheel);
  * Windows (MSVC):              /openmp on compile only (the .pyd then imports vcomp140.dll, which
                                 delvewheel copies into the wheel);
  * macOS:                       off by default: Apple clang has no OpenMP runtime, and a second libomp
                                 beside the one PyTorch ships crashes processes that import both.
                                 CNN_EXT_MACOS_OPENMP=1 opts in (needs libomp, e.g. `brew install libomp`;
                                 its prefix from LIBOMP_PREFIX, else `brew --prefix libomp`).
Environment switches:
  CNN_EXT_NO_OPENMP=1       force the serial build;
  CNN_EXT_REQUIRE_OPENMP=1  fail instead of falling back when the OpenMP test fails (wheel builds);
  CNN_EXT_NO_AVX2=1         skip the AVX2 + FMA variant;
  CNN_EXT_NO_AVX512=1       skip the AVX-512 variant;
  CNN_EXT_AVX512_EMULATE=1  build the AVX-512 variant's 64-byte vectors and tile shapes with AVX2 + FMA
                            instructions only (gcc / clang): slow, for testing that code on CPUs without
                            AVX-512 (tools/check_avx512_emulated.sh), never for wheels;
  CNN_EXT_DEBUG=1           turn Cython's bounds/wraparound/initialisation checks back on;
  CNN_EXT_SANITIZE=1        compile and link with AddressSanitizer + UndefinedBehaviorSanitizer (gcc / clang;
                            run with libasan preloaded: tools/check_sanitizers.sh).
"""
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# cnn_ext._kernels.<name> from src_pyx/<name>.pyx: whether it has ISA variants (<name>_avx2, <name>_avx512), and
# whether its results must be bitwise NumPy's (no FMA contraction, see optimisation_flags).
MODULES = {
    "gemm":        dict(twin=True,  exact=False),  # im2col / col2im + BLAS
    "rows":        dict(twin=True,  exact=False),  # plain direct loops of small layers
    "tiled":       dict(twin=True,  exact=False),  # register-tiled direct forward kernels
    "kgrad":       dict(twin=True,  exact=False),  # register-tiled kernel gradient, bias gradient
    "pooling":     dict(twin=True,  exact=False),  # max / average pooling
    "depthwise":   dict(twin=True,  exact=False),  # depthwise convolutions (groups == C_in), any dilation
    "winograd":    dict(twin=True,  exact=False),  # Winograd F(2x2 / 4x4, 3x3) + BLAS
    "dense":       dict(twin=False, exact=False),  # matmul for the Dense layers (BLAS does the arithmetic)
    "elementwise": dict(twin=False, exact=True),   # fused activations, bitwise NumPy's
    "norm":        dict(twin=True,  exact=False),  # batch normalisation, forward and backward
    "openmp":      dict(twin=False, exact=False),  # what the build has: OpenMP or not
}
SRC = "src_pyx"
INCLUDE = os.path.join(SRC, "include")  # the C headers of the tiles


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0")


def _target_is_x86_64():
    """True when the wheel being built is for x86-64 (the target, not the build machine, when cross-compiling)."""
    archflags = os.environ.get("ARCHFLAGS", "")  # macOS cross / universal2 builds: "-arch arm64 [-arch x86_64]"
    if archflags.strip():
        archs = archflags.replace("-arch", " ").split()
        return archs == ["x86_64"]
    target = os.environ.get("VSCMD_ARG_TGT_ARCH", "")  # MSVC cross-compile environment
    if target:
        return target.lower() in ("x64", "amd64")
    plat = os.environ.get("_PYTHON_HOST_PLATFORM") or sysconfig.get_platform()
    if plat.startswith(("macosx", "linux", "win")) and plat != "win32":
        return plat.lower().endswith(("x86_64", "amd64"))
    return platform.machine().lower() in ("x86_64", "amd64")


# The same kernels again with AVX2 + FMA and with AVX-512, as separate modules chosen at run time when the CPU
# has the features (never -march=native: a wheel must run on every x86-64). CNN_EXT_NO_AVX2=1 /
# CNN_EXT_NO_AVX512=1 skip one.
X86_64 = _target_is_x86_64()
AVX2 = X86_64 and not _flag("CNN_EXT_NO_AVX2")
AVX512 = X86_64 and not _flag("CNN_EXT_NO_AVX512")
AVX512_EMULATE = _flag("CNN_EXT_AVX512_EMULATE")
VARIANTS = tuple(isa for isa, on in (("avx2", AVX2), ("avx512", AVX512)) if on)  # module suffixes _<isa>
# compiler flags per variant: gcc / clang, MSVC (/arch:AVX512 implies F, CD, BW, DQ, VL)
ISA_FLAGS = {
    "avx2": (["-mavx2", "-mfma"], ["/arch:AVX2"]),
    "avx512": (["-mavx2", "-mfma", "-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq"], ["/arch:AVX512"]),
}
if AVX512_EMULATE:  # 64-byte GNU vectors split by the compiler into AVX2 instructions
    ISA_FLAGS["avx512"] = (["-mavx2", "-mfma", "-DCNN_EXT_VEC_BYTES=64"], None)

DEBUG = _flag("CNN_EXT_DEBUG")
NO_OPENMP = _flag("CNN_EXT_NO_OPENMP")
REQUIRE_OPENMP = _flag("CNN_EXT_REQUIRE_OPENMP")
SANITIZE = _flag("CNN_EXT_SANITIZE")
# -O1 (the last -O wins): what the ASan docs advise for usable stack traces, and quicker to compile than -O3
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
SANITIZE_COMPILE = ["-O1", *SANITIZE_FLAGS]

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


def _libomp_prefix():
    prefix = os.environ.get("LIBOMP_PREFIX", "")
    if prefix:
        return prefix
    try:
        return subprocess.run(["brew", "--prefix", "libomp"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def openmp_flags(compiler_type):
    """(compile flags, link flags) for OpenMP with this compiler, before testing them; None: don't try."""
    if compiler_type == "msvc":
        # compile only: the compiler adds the vcomp import library itself
        return ["/openmp"], []
    if sys.platform == "darwin":
        if not _flag("CNN_EXT_MACOS_OPENMP"):
            return None
        prefix = _libomp_prefix()
        inc = [f"-I{prefix}/include"] if prefix else []
        lib = [f"-L{prefix}/lib", f"-Wl,-rpath,{prefix}/lib"] if prefix else []
        return ["-Xpreprocessor", "-fopenmp", *inc], [*lib, "-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


# Modules whose results must match NumPy's bit for bit (MODULES[...]["exact"]): no contraction of a*b + c into one
# FMA, which gcc does by default wherever the target has FMA (arm64; x86-64 only with -mfma), and clang within an
# expression.


def optimisation_flags(compiler_type, isa="", exact=False, simd=True):
    """Compile flags for a module of ISA variant isa ('' baseline, 'avx2', 'avx512'); simd: the compiler takes
    -fopenmp-simd."""
    if compiler_type == "msvc":  # MSVC contracts only under /fp:fast or /fp:contract
        msvc = ISA_FLAGS[isa][1] if isa else []
        if msvc is None:
            raise RuntimeError("cnn_ext: CNN_EXT_AVX512_EMULATE=1 needs gcc or clang")
        return ["/O2"] + msvc
    # -O3 vectorises the row loops; no -march=native: wheels must run on any x86-64 / arm64. -fopenmp-simd honours
    # `omp simd` loops (cnn_wino.h) without the OpenMP runtime, so builds without OpenMP vectorise them too.
    # -fno-math-errno: sqrt becomes one instruction that loops vectorise (errno is never read; values unchanged).
    return (["-O3", "-fno-math-errno"] + ["-fopenmp-simd"] * simd + ["-Wno-unreachable-code", "-Wno-unused-function"]
            + (ISA_FLAGS[isa][0] if isa else [])
            + (["-ffp-contract=off"] if exact else []))


def _split_variant(name):
    """('tiled', 'avx512') for 'tiled_avx512', ('tiled', '') for 'tiled'."""
    for isa in ISA_FLAGS:
        if name.endswith(f"_{isa}"):
            return name.removesuffix(f"_{isa}"), isa
    return name, ""


class BuildExt(build_ext):
    def _builds(self, what, source, cflags, ldflags=None):
        """Whether source compiles with cflags (and links with ldflags, when given); says why not."""
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(source)
            try:
                objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                if ldflags is not None:
                    self.compiler.link_executable(objs, "probe", output_dir=tmp, extra_postargs=ldflags)
            except Exception as exc:  # any compiler/linker failure means: no
                print(f"cnn_ext: {what} failed ({exc.__class__.__name__}: {exc})")
                return False
        return True

    def _variant_sources(self):
        """A variant without its own src_pyx/<name>_<isa>.pyx gets a stub that includes its base module."""
        stubs = os.path.join(self.build_temp, "variants")
        for ext in self.extensions:
            base, isa = _split_variant(ext.name.split(".")[-1])
            if isa and not os.path.exists(ext.sources[0]):
                os.makedirs(stubs, exist_ok=True)
                stub = os.path.join(stubs, os.path.basename(ext.sources[0]))
                text = (f'# cython: language_level=3\n"""The kernels of {base}.pyx compiled for the {isa} variant '
                        f'(generated by setup.py)."""\ninclude "{base}.pyx"\n')
                if not os.path.exists(stub) or open(stub).read() != text:  # rewritten only when it changes
                    with open(stub, "w") as f:
                        f.write(text)
                ext.sources = [stub]

    def _cythonize(self):
        from Cython.Build import cythonize

        self._variant_sources()
        for ext in self.extensions:
            if any(src.endswith(".pyx") for src in ext.sources):
                # include_path: the .pxd files and the base .pyx, also for a variant stub that includes it
                (done,) = cythonize([Extension(ext.name, list(ext.sources))], compiler_directives=DIRECTIVES,
                                    include_path=[SRC], force=self.force,
                                    build_dir=os.path.join(self.build_temp, "cython"))
                ext.sources = done.sources

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        if NO_OPENMP:
            flags, why = None, "CNN_EXT_NO_OPENMP is set"
        else:
            flags = openmp_flags(ctype)
            why = "off by default on macOS (CNN_EXT_MACOS_OPENMP=1 opts in)" if flags is None else ""
            if flags is not None and not self._builds("OpenMP test", OPENMP_TEST, *flags):
                flags, why = None, "the compile test failed"
                if REQUIRE_OPENMP:
                    raise RuntimeError("cnn_ext: CNN_EXT_REQUIRE_OPENMP=1 but OpenMP does not compile here")
        # a compiler that refuses -fopenmp-simd builds without it (its omp simd loops stay as it leaves them)
        simd = ctype != "msvc" and self._builds("-fopenmp-simd", "int main(void) { return 0; }\n", ["-fopenmp-simd"])
        print(f"cnn_ext: OpenMP {'enabled' if flags else 'disabled: ' + why} ({ctype});"
              f" AVX2 variant: {'yes' if AVX2 else 'no'}; AVX-512 variant: "
              f"{('emulated in AVX2' if AVX512_EMULATE else 'yes') if AVX512 else 'no'};"
              f" omp simd: {'yes' if simd else 'no'}")
        # generated C and objects per build variant: a serial, debug or sanitizer build after another (pip builds
        # a local directory in place) must never link the other variant's objects because they look up to date
        variant = "-".join(["openmp" if flags else "serial"] + ["debug"] * DEBUG + ["sanitize"] * SANITIZE
                           + ["emulate512"] * AVX512_EMULATE)
        self.build_temp = os.path.join(self.build_temp, variant)
        self._cythonize()
        for ext in self.extensions:
            base, isa = _split_variant(ext.name.split(".")[-1])
            ext.extra_compile_args = (optimisation_flags(ctype, isa, MODULES[base]["exact"], simd)
                                      + (flags[0] if flags else []))
            ext.extra_link_args = flags[1] if flags else []
            if SANITIZE:
                if ctype == "msvc":
                    raise RuntimeError("cnn_ext: CNN_EXT_SANITIZE=1 needs gcc or clang")
                ext.extra_compile_args += SANITIZE_COMPILE
                ext.extra_link_args += SANITIZE_FLAGS
        super().build_extensions()


DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}


def extensions():
    # .pyx sources; they are cythonized by BuildExt only when extensions are really built, so making the
    # sdist (or reading the metadata) writes no generated .c file.
    names = [*MODULES, *(f"{name}_{isa}" for isa in VARIANTS for name, spec in MODULES.items() if spec["twin"])]
    return [Extension(f"cnn_ext._kernels.{name}", [f"{SRC}/{name}.pyx"], include_dirs=[INCLUDE]) for name in names]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
