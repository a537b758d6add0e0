#!/usr/bin/env bash
# Run the AVX-512 variant's code paths (64-byte vectors, 16 float32 lanes, the 32-register tile shapes) on a CPU
# without AVX-512: build cnn_ext with CNN_EXT_AVX512_EMULATE=1 (setup.py: the _avx512 modules get 64-byte GNU
# vectors that the compiler splits into AVX2 instructions) in a temporary copy of the working tree, make the
# children believe the CPU has AVX512F/VL/BW/DQ (a sitecustomize that sets NumPy's CPU-feature table, in this
# run's processes only: the emulated modules hold no AVX-512 instruction), and run the kernel tests with
# CNN_EXT_KERNELS=avx512, then tests/test_isa.py (every variant against the oracle and each other).
# What it cannot check: the compiler's AVX-512 instruction selection (that needs an AVX-512 CPU).
#   usage: tools/check_avx512_emulated.sh [extra pytest args]   (from anywhere; gcc or clang; x86-64 with AVX2;
#          KEEP=1 keeps the build in its temporary directory)
# Budget: about 15 minutes on 2 cores (the build about 10).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/cnn_ext_avx512emu.XXXXXX")"
cleanup() { if [[ "${KEEP:-0}" == 1 ]]; then echo "(work files kept in $TMP)"; else rm -rf "$TMP"; fi; }
trap cleanup EXIT

echo "== emulated AVX-512 build in $TMP"
cd "$ROOT"
# the working tree as it is (tracked and untracked, not ignored), without build products
git ls-files -z --cached --others --exclude-standard | grep -zv -E '\.(so|c)$' | xargs -0 tar cf - | (cd "$TMP" && tar xf -)
cd "$TMP"
t=$SECONDS
CNN_EXT_AVX512_EMULATE=1 "$PY" setup.py build_ext --inplace -j "${JOBS:-1}" > build.log 2>&1 \
    || { tail -40 build.log; exit 1; }
grep -E "^cnn_ext: OpenMP" build.log
echo "== built in $((SECONDS - t)) s"

mkdir -p "$TMP/fakecpu"
cat > "$TMP/fakecpu/sitecustomize.py" <<'PY'
# this run only: the emulated _avx512 modules need AVX2 + FMA, which the CPU has (checked below)
try:
    from numpy._core._multiarray_umath import __cpu_features__ as _f
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as _f
if _f.get("AVX2") and _f.get("FMA3"):
    _f.update(AVX512F=True, AVX512VL=True, AVX512BW=True, AVX512DQ=True)
PY

TESTS=(
    tests/test_conv_methods.py   # every method of the three convolution operations, every test shape
    tests/test_conv_ops.py       # strides, padding, out=, thread counts
    tests/test_pooling.py
    tests/test_gradcheck.py
    tests/test_layers.py
    tests/test_network.py
    tests/test_empty_batches.py
    tests/test_misaligned_inputs.py
    tests/test_install.py
    tests/test_isa.py
)
SELECT=()
for t_ in "${TESTS[@]}"; do [[ -e "${t_%%::*}" ]] && SELECT+=("$t_"); done

t=$SECONDS
echo "== pytest, CNN_EXT_KERNELS=avx512 (emulated)"
PYTHONPATH="$TMP/fakecpu:$TMP" CNN_EXT_KERNELS=avx512 \
    "$PY" -P -c 'import cnn_ext; cnn_ext.show_config()' | sed -n '1,4p'
PYTHONPATH="$TMP/fakecpu:$TMP" CNN_EXT_KERNELS=avx512 \
    "$PY" -P -c 'import cnn_ext._kernels as k, sys; sys.exit(k.ISA != "avx512")' \
    || { echo "check_avx512_emulated: the avx512 variant was not picked" >&2; exit 1; }
set +e
PYTHONPATH="$TMP/fakecpu:$TMP" CNN_EXT_KERNELS=avx512 \
    "$PY" -P -m pytest -q -p no:cacheprovider "$@" "${SELECT[@]}" 2>&1 | tail -25
rc=${PIPESTATUS[0]}
set -e
echo "== exit $rc in $((SECONDS - t)) s"
exit "$rc"
