#!/bin/bash
# Packs the binaries built here (and the shared libraries they need that the GPU machine lacks:
# Abseil, gRPC, Protobuf, prometheus-cpp, ...) into .carry/dev, the ignored folder that the
# device tool's `carry` argument sends to the GPU machine:
#   tools/carry_for_device.sh [build-folder]        (default: build)
# Layout: .carry/dev/bin (programs and GPU tests), .carry/dev/lib (libraries),
# .carry/dev/lib/kvr/libkvr_cuda_backend.so (where kvrd looks for the CUDA backend: exe/../lib/kvr),
# .carry/dev/tok/{llama2,llama3}/tokenizer.json (from the test-data cache, for the tokenizer
# comparison). On the GPU machine: export LD_LIBRARY_PATH=$PWD/.carry/dev/lib:<nccl dir>:...
# The CUDA libraries (cudart, cuBLASLt, NCCL, cuDNN) and glibc/libstdc++ are not carried: the GPU
# machine has the same CUDA 13 toolkit.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-build}
D=.carry/dev
rm -rf "$D"; mkdir -p "$D/bin" "$D/lib/kvr" "$D/tok"
progs=(tools/kvr-bench tools/kvr_cuda_bench tools/kvr_cuda_check tests/cuda/cuda_kernels_test
       tests/cuda/cuda_runner_test tests/cuda/cuda_nccl_chain_test tests/cuda/cuda_tensor_parallel_test tools/kvr-sampler-bench
       engine/tokenizer/kvr-tokenize engine/tokenizer/kvr-tokenizer-bench server/kvrd server/kvr-load
       tools/kvr-generate)
for p in "${progs[@]}"; do
  if [ -x "$B/$p" ]; then cp "$B/$p" "$D/bin/"; else echo "not built: $B/$p" >&2; fi
done
[ -f "$B/lib/libkvr_cuda_backend.so" ] && cp "$B/lib/libkvr_cuda_backend.so" "$D/lib/kvr/"
skip='^(libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|libcublas|libcublasLt|libcudart|libnccl|libcudnn.*|libcuda)\.so'
for f in "$D"/bin/* "$D"/lib/kvr/*.so; do ldd "$f"; done | awk '$3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    [[ "$name" =~ $skip ]] && continue
    cp -L "$path" "$D/lib/$name"
  done
for t in llama2 llama3; do
  src=${KVR_TOKENIZER_DATA:-$HOME/.cache/kvr/tokenizer-data}/$t
  if [ -f "$src/tokenizer.json" ]; then mkdir -p "$D/tok/$t"; cp "$src"/tokenizer*.json "$D/tok/$t/"; fi
done
# Debug info stays here: the carried copies are stripped (the device tool carries 64 MiB at most).
strip --strip-unneeded "$D"/bin/* "$D"/lib/kvr/*.so "$D"/lib/*.so* 2>/dev/null || true
du -sh "$D"
# One compressed file travels (about 6x smaller); on the GPU machine: tar -C .carry -xJf .carry/dev.tar.xz
tar -C .carry -cJf .carry/dev.tar.xz dev && ls -la .carry/dev.tar.xz
