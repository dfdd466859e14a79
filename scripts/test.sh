#!/usr/bin/env bash
# Installs the dependencies, builds everything (the CUDA code too, when nvcc is present) and runs
# the test suite. On a machine without a GPU the tests labelled `gpu` are reported as skipped.
#   scripts/test.sh              all tests
#   scripts/test.sh -L cpu       only the CPU tests (any ctest arguments pass through)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD_DIR=${KVR_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${KVR_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$(nproc)"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)" "$@"
