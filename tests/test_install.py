"""The installed package is the one under test, its kernels are compiled, and its build facts agree.

Environment set by the runs that know what they installed (tools/check_wheel.sh, .ci/run, cibuildwheel):
  CNN_EXT_EXPECT_INSTALLED=1          cnn_ext must come from site-packages, not from a source checkout;
  CNN_EXT_EXPECT_OPENMP=0|1           the kernels must (not) have been compiled with OpenMP;
  CNN_EXT_EXPECT_VENDORED_OPENMP=1    the OpenMP runtime must sit in the wheel (auditwheel / delvewheel).
Unset, each check falls back to what holds for any correct install (including `pip install -e .`).
"""
import importlib
import importlib.machinery
import importlib.metadata
import os
import platform
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import cnn_ext
from cnn_ext import _kernels

# Keep in sync with MODULES in setup.py.
BASELINE_MODULES = ["gemm", "rows", "tiled", "kgrad", "pooling", "depthwise", "winograd", "dense", "elementwise",
                    "norm", "openmp"]
X86_64 = platform.machine().lower() in ("x86_64", "amd64")

PKG_DIR = Path(cnn_ext.__file__).resolve().parent


def _env_flag(name):
    value = os.environ.get(name, "")
    return None if value == "" else value not in ("0", "false", "no")


def _site_dirs():
    dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    try:
        import site

        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # virtualenv's old site.py
        pass
    return {Path(d).resolve() for d in dirs if d}


def _is_extension_module(module):
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader) and any(
        module.__file__.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )


def test_imported_from_the_expected_location():
    # Whatever the install: the Python code and the kernels come from one and the same package directory
    # (no checkout's cnn_ext/*.py shadowing an installed build, or the reverse).
    assert Path(_kernels.tiled.__file__).resolve().parent == PKG_DIR / "_kernels"
    if _env_flag("CNN_EXT_EXPECT_INSTALLED"):
        assert PKG_DIR.parent in _site_dirs(), (
            f"cnn_ext imported from {PKG_DIR}, expected an installed copy in one of {sorted(map(str, _site_dirs()))}"
        )
        assert not (PKG_DIR.parent / "src_pyx").exists(), f"{PKG_DIR} looks like a source checkout"
        assert not (PKG_DIR.parent / "setup.py").exists(), f"{PKG_DIR} looks like a source checkout"
        # the test run must not have put a checkout on sys.path either
        for entry in sys.path:
            where = Path(entry or os.getcwd()).resolve()
            if (where / "cnn_ext" / "__init__.py").exists():
                assert where in _site_dirs(), f"sys.path entry {entry!r} holds a second cnn_ext"


@pytest.mark.parametrize("name", BASELINE_MODULES)
def test_kernels_are_compiled_extension_modules(name):
    module = importlib.import_module(f"cnn_ext._kernels.{name}")
    assert _is_extension_module(module), f"cnn_ext._kernels.{name} is {module.__file__}, not a compiled extension"
    assert Path(module.__file__).resolve().parent == PKG_DIR / "_kernels"


def test_active_kernel_build_matches_the_cpu():
    assert _kernels.ISA in ("avx512", "avx2", "baseline")
    for name in ("gemm", "rows", "tiled", "kgrad", "pooling", "depthwise", "winograd"):
        module, isa = getattr(_kernels, name), _kernels.VARIANTS[name]
        assert _is_extension_module(module)
        assert module.__name__ == f"cnn_ext._kernels.{name}" + ("" if isa == "baseline" else f"_{isa}")
    if X86_64 and _env_flag("CNN_EXT_EXPECT_INSTALLED"):
        # wheels and sdist builds on x86-64 always carry the AVX2 and AVX-512 variants (found, not imported:
        # importing the AVX-512 one may run its instructions)
        assert _kernels._built() == {"avx2", "avx512"}
        choice = os.environ.get("CNN_EXT_KERNELS", "").strip().lower()
        wanted = _kernels.plan(choice if choice in _kernels.ISA_FEATURES else "auto", _kernels._cpu_features(),
                               {"avx2", "avx512"})[0]
        assert _kernels.ISA == wanted
    if not X86_64:
        assert _kernels.ISA == "baseline"


def test_openmp_reported_consistently():
    info = cnn_ext.show_config(quiet=True)
    openmp = bool(importlib.import_module("cnn_ext._kernels.openmp").openmp_enabled())
    assert info["openmp"] is openmp
    expected = _env_flag("CNN_EXT_EXPECT_OPENMP")
    if expected is not None:
        assert openmp is expected, f"OpenMP {'on' if openmp else 'off'} in this build, expected the opposite"
    previous = cnn_ext.set_num_threads(2)
    try:
        assert cnn_ext.get_num_threads() == (2 if openmp else 1)
        assert cnn_ext.show_config(quiet=True)["num_threads"] == cnn_ext.get_num_threads()
    finally:
        cnn_ext.set_num_threads(previous)
    if not openmp:
        assert info["openmp_max_threads"] == 1


def test_openmp_runtime_is_vendored_in_the_wheel():
    if not _env_flag("CNN_EXT_EXPECT_VENDORED_OPENMP"):
        pytest.skip("only for repaired wheels (CNN_EXT_EXPECT_VENDORED_OPENMP=1)")
    libs = PKG_DIR.parent / "cnn_ext.libs"
    pattern = "vcomp140*.dll" if sys.platform == "win32" else "libgomp*.so*"
    found = sorted(p.name for p in libs.glob(pattern)) if libs.is_dir() else []
    assert found, f"no {pattern} in {libs}"


def test_show_config_reports_the_build(capsys):
    info = cnn_ext.show_config()
    printed = capsys.readouterr().out
    assert printed.startswith(f"cnn_ext {cnn_ext.__version__}\n")
    assert "kernels:" in printed and _kernels.ISA in printed
    assert info["version"] == cnn_ext.__version__
    assert info["kernels"] == _kernels.ISA
    assert info["kernel_module"] == _kernels.tiled.__name__
    assert info["pool_module"] == _kernels.pooling.__name__
    assert info["buffer_reuse"] is cnn_ext.get_buffer_reuse()
    assert info["numpy"] == np.__version__
    import scipy

    assert info["scipy"] == scipy.__version__
    assert isinstance(info["num_threads"], int) and info["num_threads"] >= 1
    # the kernels cimport SciPy's BLAS, so at least one BLAS library is loaded by now
    assert info["blas"], "threadpoolctl found no BLAS library"
    assert all(lib["filepath"] for lib in info["blas"])

    assert cnn_ext.show_config(quiet=True) == info
    assert capsys.readouterr().out == ""


def test_installed_metadata():
    if not _env_flag("CNN_EXT_EXPECT_INSTALLED"):
        pytest.skip("only for an installed copy (CNN_EXT_EXPECT_INSTALLED=1)")
    meta = importlib.metadata.metadata("cnn_ext")
    assert meta["Version"] == cnn_ext.__version__
    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.10"
    assert "numpy" in " ".join(importlib.metadata.requires("cnn_ext"))
    assert (PKG_DIR / "py.typed").is_file()
    assert (PKG_DIR / "_kernels" / "tiled.pyi").is_file()


@pytest.mark.parametrize("value, warned", [("basline", True), ("AVX", True), ("baseline", False), ("Baseline", False),
                                           ("avx2", False), ("auto", False), ("", False)])
def test_unknown_kernel_choice_is_reported(value, warned):
    # CNN_EXT_KERNELS=basline (a typo) silently ran the AVX2 kernels
    import subprocess
    env = dict(os.environ, CNN_EXT_KERNELS=value)
    code = "import cnn_ext._kernels as k; print(k.ISA)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=str(PKG_DIR.parent))
    assert done.returncode == 0, done.stderr
    assert ("CNN_EXT_KERNELS" in done.stderr and "ignored" in done.stderr) is warned, done.stderr
    if value.lower() == "baseline":
        assert done.stdout.strip() == "baseline"


def test_an_unbuilt_checkout_says_what_to_run(tmp_path):
    """The package's Python files without the compiled kernels (a fresh checkout) fail to import with a message
    naming the cause and the commands, not a confusing circular-import error."""
    import shutil
    import subprocess
    import sys

    src = Path(cnn_ext.__file__).resolve().parent
    shutil.copytree(src, tmp_path / "cnn_ext", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    res = subprocess.run([sys.executable, "-c", "import cnn_ext"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0
    assert "ImportError: cnn_ext's compiled kernels are missing" in res.stderr
    assert "pip install ." in res.stderr and "build_ext --inplace" in res.stderr
