#!/usr/bin/env bash
# Sanitizer builds of kvr's CPU code and their tests: the engine libraries (model, tokenizer, CPU
# backend, prefill chain, scheduler) and every C++ test of label `cpu`; no gRPC server, no CUDA,
# no tools, no fuzzers. Only the test programs that run are built (and what they link).
#
#   scripts/sanitize.sh                 AddressSanitizer + UndefinedBehaviorSanitizer (what CI runs)
#   scripts/sanitize.sh thread          ThreadSanitizer (coordinator, workers, transport, scheduler)
#   scripts/sanitize.sh address,undefined -R chain    any extra arguments pass through to ctest
#
# Build folder: build-asan (or build-tsan), or $KVR_SANITIZE_BUILD_DIR. Any sanitizer report
# fails the test that triggered it (UBSan does not recover; ASan's leak check is on).
# ThreadSanitizer: Debian's Abseil is not built with TSan (absl::Mutex's happens-before edges
# would be invisible), so `thread` first builds the same Abseil version with -fsanitize=thread
# into ${KVR_CACHE_DIR:-~/.cache/kvr} (scripts/build-absl-tsan.sh, once) and links against it.
set -euo pipefail
cd "$(dirname "$0")/.."
SAN=${1:-address,undefined}
if [ $# -gt 0 ]; then shift; fi
case "$SAN" in
  thread) DEFAULT_DIR=build-tsan ;;
  *) DEFAULT_DIR=build-asan ;;
esac
BUILD_DIR=${KVR_SANITIZE_BUILD_DIR:-$DEFAULT_DIR}
JOBS=${KVR_SANITIZE_JOBS:-$(nproc)}

EXTRA_FLAGS=""
case "$SAN" in
  *undefined*) EXTRA_FLAGS="-fno-sanitize-recover=undefined" ;;
esac

PREFIX_ARGS=()
if [ "$SAN" = thread ]; then
  ABSL_PREFIX=$(scripts/build-absl-tsan.sh)
  PREFIX_ARGS=(-DCMAKE_PREFIX_PATH="$ABSL_PREFIX" -Dabsl_DIR="$ABSL_PREFIX/lib/cmake/absl")
fi

# -O1: sanitizer reports keep usable stacks, and the fp32 reference loops stay fast enough.
# -g1: line tables for the reports' stacks, without full debug info (less to compile and link).
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVR_CUDA=OFF -DKVR_SERVER=OFF \
  -DKVR_SANITIZE="$SAN" -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1 $EXTRA_FLAGS" \
  -DCMAKE_C_FLAGS_DEBUG="-O1 -g1 $EXTRA_FLAGS" "${PREFIX_ARGS[@]}" >/dev/null
if [ "$SAN" = thread ]; then
  absl_dir=$(sed -n 's/^absl_DIR:[A-Z]*=//p' "$BUILD_DIR/CMakeCache.txt")
  case "$absl_dir" in
    "$ABSL_PREFIX"/*) ;;
    *) echo "sanitize.sh: the TSan build found Abseil at '$absl_dir', not $ABSL_PREFIX" >&2; exit 1 ;;
  esac
fi

# The Python deployment checks, the demo model (a download) and the fuzzers (their own clang
# build) are not C++ code under test here.
EXCLUDE='^(deploy_|demo_|fuzz_)'
# Build the programs of the tests that run, nothing else (no tools, no benchmarks).
mapfile -t TESTS < <(ctest --test-dir "$BUILD_DIR" -N -L cpu -E "$EXCLUDE" |
                     sed -n 's/^ *Test *#[0-9]*: *//p')
mapfile -t ALL_TARGETS < <(ninja -C "$BUILD_DIR" -t targets all | sed -n 's/^\([^:/]*\): .*/\1/p' |
                           sort -u)
TARGETS=()
for t in "${TESTS[@]}"; do
  if printf '%s\n' "${ALL_TARGETS[@]}" | grep -qx "$t"; then TARGETS+=("$t"); fi
done
echo "sanitize.sh: building ${#TARGETS[@]} test programs: ${TARGETS[*]}"
cmake --build "$BUILD_DIR" -j"$JOBS" --target "${TARGETS[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# scripts/tsan.supp: one report inside Abseil's own Mutex internals (the file says why).
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan.supp}
# Wall-clock bounds do not hold at a sanitizer's 2-5x slowdown: skip the one test that is only a
# timing bound (its inputs still run in the normal build).
export GTEST_FILTER=${GTEST_FILTER:--RobustnessTest.PathologicalInputsRunInBoundedTime}
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$JOBS" -L cpu -E "$EXCLUDE" "$@"
