#!/usr/bin/env bash
# Installs the dependencies, builds everything (the CUDA code too, when nvcc is present) and runs
# the test suite; then the sanitizer job (scripts/sanitize.sh: AddressSanitizer + UBSan over the
# C++ CPU tests, in build-asan). On a machine without a GPU the tests labelled `gpu` are reported
# as skipped.
#   scripts/test.sh                  all tests, then the sanitizer job (what CI runs)
#   scripts/test.sh -L cpu           only the CPU tests (any ctest arguments pass through)
#   scripts/test.sh --no-sanitize    skip the sanitizer job (quick local runs); or
#   KVR_SKIP_SANITIZE=1 scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
SANITIZE=1
if [ "${KVR_SKIP_SANITIZE:-0}" = 1 ]; then SANITIZE=0; fi
if [ "${1:-}" = "--no-sanitize" ]; then
  SANITIZE=0
  shift
fi
BUILD_DIR=${KVR_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${KVR_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)" "$@"

if [ "$SANITIZE" = 1 ]; then
  echo "test.sh: sanitizer job (scripts/sanitize.sh; skip with --no-sanitize or KVR_SKIP_SANITIZE=1)"
  start=$SECONDS
  scripts/sanitize.sh
  echo "test.sh: sanitizer job passed in $((SECONDS - start)) s"
fi
