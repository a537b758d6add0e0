#!/usr/bin/env bash
# Build cnn_ext with AddressSanitizer + UndefinedBehaviorSanitizer and Cython's bounds checks
# (CNN_EXT_SANITIZE=1 CNN_EXT_DEBUG=1, setup.py) in a temporary copy of the working tree, and run the tests that
# reach every kernel and every method on both ISA builds (AVX2 + FMA where the CPU has it, then baseline).
#   usage: tools/check_sanitizers.sh [extra pytest args]      (from anywhere; needs gcc or clang with libasan)
# The Python interpreter is not instrumented: libasan is preloaded (LD_PRELOAD) so that it comes first;
# detect_leaks=0 because CPython keeps objects alive until exit by design. Any ASan report or UB aborts the run.
# Budget: about 10 minutes on 2 cores (build about 5, tests about 2 per ISA).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
CC_="${CC:-gcc}"
LIBASAN="$("$CC_" -print-file-name=libasan.so)"
[[ -e "$LIBASAN" ]] || { echo "check_sanitizers: $CC_ has no libasan.so" >&2; exit 1; }
TMP="$(mktemp -d "${TMPDIR:-/tmp}/cnn_ext_asan.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "== sanitizer build in $TMP ($CC_, $LIBASAN)"
cd "$ROOT"
# the working tree as it is (tracked and untracked, not ignored), without build products
git ls-files -z --cached --others --exclude-standard | grep -zv -E '\.(so|c)$' | xargs -0 tar cf - | (cd "$TMP" && tar xf -)
cd "$TMP"
t=$SECONDS
CNN_EXT_SANITIZE=1 CNN_EXT_DEBUG=1 "$PY" setup.py build_ext --inplace -j "$(nproc)" > build.log 2>&1 \
    || { tail -40 build.log; exit 1; }
echo "== built in $((SECONDS - t)) s"

TESTS=(
    tests/test_conv_methods.py   # every method of the three convolution operations, every test shape
    tests/test_pooling.py
    tests/test_elementwise.py
    tests/test_norm.py           # the batch-normalisation kernels: both modes, both dtypes, thread counts
    tests/test_conv_ops.py       # strides, padding, out=, thread counts
    tests/test_empty_batches.py
    tests/test_layers.py::test_conv2d_against_reference
    tests/test_layers.py::test_dense_against_reference
    tests/test_layers.py::test_dense_products_on_any_thread_count
    tests/test_layers.py::test_activation_against_reference
    tests/test_network.py
    tests/test_conv_groups.py::test_four_operations_match_the_einsum_oracle   # groups, dilation, phases
    tests/test_conv_groups.py::test_depthwise_kernels_match_the_oracle_and_the_per_group_path
)
# keep only the test ids that exist in this checkout (a renamed test must not stop the run)
SELECT=()
for t_ in "${TESTS[@]}"; do [[ -e "${t_%%::*}" ]] && SELECT+=("$t_"); done

export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:allocator_may_return_null=1:detect_odr_violation=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
for isa in auto baseline; do
    t=$SECONDS
    echo "== pytest, CNN_EXT_KERNELS=$isa"
    CNN_EXT_KERNELS=$isa LD_PRELOAD="$LIBASAN" PYTHONPATH="$TMP" \
        "$PY" -P -m pytest -q -p no:cacheprovider -x "$@" \
        "${SELECT[@]}" 2>&1 | tail -25
    rc=${PIPESTATUS[0]}
    echo "== CNN_EXT_KERNELS=$isa: exit $rc in $((SECONDS - t)) s"
    [[ $rc == 0 ]] || exit "$rc"
done
echo "== check_sanitizers: no ASan / UBSan report"
