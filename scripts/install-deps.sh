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
  prometheus docker-compose
  clang libclang-rt-dev openssl
)
# clang + libclang-rt-dev (libFuzzer's runtime): tests/fuzz (CTest fuzz_smoke); openssl makes the
# TLS certificate of tests/server/security_test.py.
# Run-time libraries by their Debian 12 names. Distributions that went through the 64-bit time_t
# transition (Ubuntu 24.04, the CUDA images' base) renamed some of them with a "t64" suffix:
# each name is resolved to whichever of NAME and NAMEt64 the archive has. python3-grpcio is for
# the container's health check (deploy/kvrd/healthcheck.py).
RUNTIME_PKGS=(
  libgrpc++1.51 libprotobuf32 libabsl20220623 libprometheus-cpp-pull1.0 libprometheus-cpp-core1.0
  python3-grpcio
)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

if [ "${1:-}" = "--runtime" ]; then PKGS=("${RUNTIME_PKGS[@]}"); else PKGS=("${BUILD_PKGS[@]}"); fi

missing=()
for p in "${PKGS[@]}"; do
  if [ "${1:-}" = "--runtime" ] && installed "${p}t64"; then continue; fi
  installed "$p" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
if [ "${1:-}" = "--runtime" ]; then
  resolved=()
  for p in "${missing[@]}"; do
    # The t64 name first: after the transition the old name can survive as a virtual package.
    if apt-cache show "${p}t64" >/dev/null 2>&1; then resolved+=("${p}t64")
    elif apt-cache show "$p" >/dev/null 2>&1; then resolved+=("$p")
    else echo "install-deps: neither $p nor ${p}t64 is in the package archive" >&2; exit 1
    fi
  done
  missing=("${resolved[@]}")
  echo "install-deps: resolved to ${missing[*]}"
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
