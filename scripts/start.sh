#!/usr/bin/env bash
# Installs the dependencies, builds kvrd and starts it. Without a GPU it serves on the CPU
# backend; without --model it serves the small demo model models/kvr-demo (docs/quickstart.md).
# Extra arguments go to kvrd, e.g.
#   scripts/start.sh --model /models/Llama-3-8B --listen 0.0.0.0:50051
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
BUILD_DIR=${KVR_BUILD_DIR:-build}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo ${KVR_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$(nproc)" --target kvrd
args=("$@")
if [[ " ${args[*]:-} " != *" --model"* ]]; then
  models/prepare_demo.sh
  echo "start.sh: no --model given: serving the demo model models/kvr-demo (docs/quickstart.md)"
  args+=(--model models/kvr-demo)
fi
exec "$BUILD_DIR/server/kvrd" "${args[@]}"
