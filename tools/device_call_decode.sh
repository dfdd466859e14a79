#!/bin/bash
# Issue 3's decode work in one single-GPU device call, from the repository root, with binaries
# carried from the dev machine (tools/carry_for_device.sh):
#   OUT=$OUT bash tools/device_call_decode.sh
# 1. cuda_kernels_test and cuda_runner_test (every kernel against the CPU; decode against prefill).
# 2. tools/decode_profile.sh at 4k with VARIANTS (default: the defaults, the session-3 attention
#    tile, no decode fusions, neither): decode ITL at 4k and 32k against the copy floor, and the
#    Nsight Compute breakdown of one step with the defaults.
# 3. The Llama-3-8B shape's decode ITL, defaults and VARIANTS_L3.
# 4. Whole models against Hugging Face transformers at 32 layers (STEPS without 4 skips it).
# Logs under $OUT; summary.txt says what passed.
set -u
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
S="$OUT/summary.txt"
say() { echo "== $(date +%T) $*" | tee -a "$S"; }
has() { [[ " ${STEPS:-1 2 3 4} " == *" $1 "* ]]; }
[ -d .carry/dev ] || tar -C .carry -xJf .carry/dev.tar.xz
. tools/device_libs.sh
export LD_LIBRARY_PATH="$DEVICE_LIBS"
B=.carry/dev/bin
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader >> "$S"
if has 1; then
  say "1. kernel and runner tests"
  for t in cuda_kernels_test cuda_runner_test; do
    timeout 240 $B/$t > "$OUT/$t.log" 2>&1; echo "$t rc=$?" >> "$S"
    grep -E "FAILED|PASSED|^\[  FAILED|Failure|Expected|Which is" "$OUT/$t.log" | head -20 >> "$S"
  done
fi
if has 2; then
  say "2. decode profile (Llama-2-7B)"
  VARIANTS=${VARIANTS:-"- KVR_DECODE_TILE=64 KVR_DECODE_FUSE=0 KVR_DECODE_FUSE=0,KVR_DECODE_TILE=64"} OUT=$OUT \
    timeout 420 bash tools/decode_profile.sh 4096 > "$OUT/decode_profile.txt" 2>&1
  cat "$OUT/decode_profile.txt" >> "$S"
fi
if has 3; then
  say "3. Llama-3-8B decode"
  for v in - ${VARIANTS_L3:-KVR_DECODE_FUSE=0,KVR_DECODE_TILE=64}; do
    echo "-- variant: $v" >> "$S"; v=${v/#-/}
    env ${v//,/ } timeout 120 $B/kvr_cuda_bench --shape llama3-8b --gemv_bench 0 --prefill "" --attn "" \
      --decode 4096,32768 2>&1 | grep -E "decode ctx|copy" >> "$S"
  done
fi
if has 4; then
  say "4. whole models against transformers, 32 layers"
  timeout ${HF_TIMEOUT:-400} python3 tests/cuda/hf_compare.py --bin $B/kvr_cuda_check --layers 32 \
    --out "$OUT/hf_compare.json" > "$OUT/hf_compare.log" 2>&1; echo "hf_compare rc=$?" >> "$S"
  grep -E "PASS|FAIL|greedy|agree" "$OUT/hf_compare.log" | head -20 >> "$S"
fi
say done
