#!/usr/bin/env bash
# Installs everything kvr needs to build and test, from Debian's packages.
# Used by the README, by .ci/run and by the Dockerfile: keep them on this one script.
#   scripts/install-deps.sh          build + test dependencies
#   scripts/install-deps.sh --runtime only what the daemon needs at run time
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

BUILD_PKGS=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev nlohmann-json3-dev prometheus-cpp-dev
  libgtest-dev libgmock-dev
  python3 python3-numpy python3-grpcio python3-grpc-tools
  prometheus
)
RUNTIME_PKGS=(
  libgrpc++1.51 libprotobuf32 libabsl20220623 libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0
)

if [ "${1:-}" = "--runtime" ]; then PKGS=("${RUNTIME_PKGS[@]}"); else PKGS=("${BUILD_PKGS[@]}"); fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
