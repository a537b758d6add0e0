"""The .pyi stubs of the compiled kernel modules say what the modules hold: every function, by its parameters."""
import ast
import importlib
import inspect
from pathlib import Path

import pytest

import cnn_ext._kernels as kernels

KERNEL_DIR = Path(kernels.__file__).parent
COMPILED = sorted(p.name.split(".")[0] for p in KERNEL_DIR.iterdir()
                  if p.suffix in (".so", ".pyd") and not p.name.startswith("_"))


def _stub_functions(name):
    """{function: [parameter names]} of the stub, following ``from .x import *`` to x's stub."""
    tree = ast.parse((KERNEL_DIR / f"{name}.pyi").read_text(encoding="utf-8"))
    functions = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1 and [a.name for a in node.names] == ["*"]:
            functions.update(_stub_functions(node.module))
        elif isinstance(node, ast.FunctionDef):
            args = node.args
            functions[node.name] = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
    return functions


def test_every_compiled_module_is_found():
    # the parametrized test below would pass vacuously on an empty list
    assert {"dense", "elementwise", "gemm", "kgrad", "openmp", "pooling", "rows", "tiled"} <= set(COMPILED)


@pytest.mark.parametrize("name", COMPILED)
def test_stub_matches_the_compiled_module(name):
    assert (KERNEL_DIR / f"{name}.pyi").is_file(), f"cnn_ext/_kernels/{name}.pyi is missing"
    isa = name.rsplit("_", 1)[-1]
    if isa in kernels.ISA_FEATURES and not kernels.cpu_supports(isa):
        pytest.skip(f"{name} runs {isa} instructions on import; this CPU lacks them")
    module = importlib.import_module(f"cnn_ext._kernels.{name}")
    compiled = {n: f for n, f in vars(module).items()
                if callable(f) and not n.startswith("_") and getattr(f, "__module__", None) == module.__name__}
    stubs = _stub_functions(name)
    assert sorted(stubs) == sorted(compiled), f"{name}.pyi declares {sorted(stubs)}, the module has {sorted(compiled)}"
    for fname, params in stubs.items():
        actual = list(inspect.signature(compiled[fname]).parameters)
        assert params == actual, f"{name}.{fname}: stub parameters {params}, compiled {actual}"
