#!/usr/bin/env bash
# Sanitizer builds of kvr's CPU code and their tests: the engine libraries (model, tokenizer, CPU
# backend, prefill chain, scheduler) and every C++ test of label `cpu`; no gRPC server, no CUDA.
#
#   scripts/sanitize.sh                 AddressSanitizer + UndefinedBehaviorSanitizer (what CI runs)
#   scripts/sanitize.sh thread          ThreadSanitizer (coordinator, workers, transport, scheduler)
#   scripts/sanitize.sh address,undefined -R chain    any extra arguments pass through to ctest
#
# Build folder: build-asan (or build-tsan), or $KVR_SANITIZE_BUILD_DIR. Any sanitizer report
# fails the test that triggered it (UBSan does not recover; ASan's leak check is on).
# ThreadSanitizer: Debian's Abseil is not built with TSan, so absl::Mutex's internals are
# invisible to it and it can report races on data that absl::Mutex protects; see
# docs/reliability.md for what a TSan run shows and how to read it.
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

# -O1: sanitizer reports keep usable stacks, and the fp32 reference loops stay fast enough.
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DKVR_CUDA=OFF -DKVR_SERVER=OFF \
  -DKVR_SANITIZE="$SAN" -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g $EXTRA_FLAGS" \
  -DCMAKE_C_FLAGS_DEBUG="-O1 -g $EXTRA_FLAGS" >/dev/null
cmake --build "$BUILD_DIR" -j"$JOBS"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0:second_deadlock_stack=1}
# Wall-clock bounds do not hold at a sanitizer's 2-5x slowdown: skip the one test that is only a
# timing bound (its inputs still run in the normal build).
export GTEST_FILTER=${GTEST_FILTER:--RobustnessTest.PathologicalInputsRunInBoundedTime}
# The Python deployment checks, the demo model (a download) and the fuzzers (their own clang
# build) are not C++ code under test here.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$JOBS" -L cpu \
  -E '^(deploy_|demo_|fuzz_)' "$@"
