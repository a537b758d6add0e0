"""Real type hints: mypy shows users real types, and the public functions keep their annotations.

The mypy test runs where mypy is installed (.ci/run installs it; the `test` extra does not, to keep the wheel
tests short) and skips elsewhere.
"""
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cnn_ext

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "user_script.py"
PYPROJECT = HERE.parent.parent / "pyproject.toml"

# the modules whose public functions and classes are annotated
ANNOTATED = ["cnn_ext.ops", "cnn_ext.pooling", "cnn_ext.losses", "cnn_ext.serialization", "cnn_ext.gradcheck",
             "cnn_ext.datasets", "cnn_ext._threads", "cnn_ext._info", "cnn_ext._compat", "cnn_ext.network",
             "cnn_ext.layers.base", "cnn_ext.layers.conv", "cnn_ext.layers.dense", "cnn_ext.layers.activations",
             "cnn_ext.layers.norm", "cnn_ext.layers.regularization", "cnn_ext.layers.residual", "cnn_ext.optim",
             "cnn_ext.training", "cnn_ext.distributed", "cnn_ext.callbacks", "cnn_ext.schedules", "cnn_ext.interop"]
PUBLIC_THREADS = ["get_num_threads", "set_num_threads", "current_threads", "threads_for", "blas_single_thread",
                  "blas_info"]


def _normalise(revealed):
    """mypy's spelling of a type, without what changes between mypy and NumPy versions."""
    revealed = revealed.replace("builtins.", "")
    return re.sub(r"numpy\._typing\.(?:_nbit_base\.)?_(\d+Bit)", r"\1", revealed)


def _expected():
    """{line: type} from the ``# reveals:`` comments of the user script."""
    lines = SCRIPT.read_text(encoding="utf-8").splitlines()
    return {i: line.split("# reveals: ", 1)[1].strip() for i, line in enumerate(lines, 1) if "# reveals: " in line}


def test_the_user_script_declares_what_it_expects():
    expected = _expected()
    assert len(expected) >= 15
    assert all(t != "Any" for t in expected.values())


def test_mypy_shows_users_real_types(tmp_path):
    pytest.importorskip("mypy")
    env = dict(os.environ)
    package_parent = Path(cnn_ext.__file__).resolve().parent.parent
    if "site-packages" not in package_parent.parts and "dist-packages" not in package_parent.parts:
        env["MYPYPATH"] = str(package_parent)  # a checkout built in place: mypy finds installed packages itself
    command = [sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"),
               "--python-executable", sys.executable]
    if PYPROJECT.is_file():
        command += ["--config-file", str(PYPROJECT)]
    done = subprocess.run(command + [str(SCRIPT)], capture_output=True, text=True, env=env, cwd=tmp_path,  # outside the checkout, as CI runs
                          timeout=600)
    revealed = {}
    for line in done.stdout.splitlines():
        m = re.match(r".*user_script\.py:(\d+): note: Revealed type is \"(.*)\"$", line)
        if m:
            revealed[int(m.group(1))] = _normalise(m.group(2))
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert not errors and done.returncode == 0, done.stdout + done.stderr
    assert revealed == _expected()


def _public(module_name):
    module = importlib.import_module(module_name)
    names = PUBLIC_THREADS if module_name == "cnn_ext._threads" else getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_")
                 and v.__module__ == module_name]
    return [(f"{module_name}.{n}", getattr(module, n)) for n in names]


def _missing_annotations(function):
    """The parameters (and 'return') of a function that carry no annotation."""
    signature = inspect.signature(function)
    missing = [p.name for i, p in enumerate(signature.parameters.values())
               if p.annotation is inspect.Parameter.empty and not (i == 0 and p.name in ("self", "cls"))]
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


@pytest.mark.parametrize("module_name", ANNOTATED)
def test_public_functions_keep_their_annotations(module_name):
    checked, missing = 0, {}
    for name, obj in _public(module_name):
        if inspect.isclass(obj):
            functions = [(f"{name}.{m}", f) for m, f in vars(obj).items()
                         if inspect.isfunction(f) and (not m.startswith("_") or m in ("__init__", "__getitem__"))]
            functions += [(f"{name}.{m}", f) for base in obj.__mro__[1:] if base.__module__ == obj.__module__
                          for m, f in vars(base).items() if inspect.isfunction(f) and m == "__init__"]
        elif callable(obj):
            functions = [(name, obj)]
        else:
            continue  # constants
        for fname, f in functions:
            checked += 1
            if _missing_annotations(f):
                missing[fname] = _missing_annotations(f)
    assert checked, f"{module_name}: no public function found"
    assert not missing, f"public functions without annotations: {missing}"
