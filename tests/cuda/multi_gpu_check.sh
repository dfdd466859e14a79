#!/bin/bash
# Issue 4's multi-GPU checks in one GPU-machine call (run from the repository root, on a kind
# with 2 or more GPUs, 4 to cover TSP's old hang):
#   OUT=$OUT bash tests/cuda/multi_gpu_check.sh [tests,bench]        (default: both)
# 1. cuda_nccl_chain_test: chain, fan-out and all-gather over 2 / 4 / all GPUs, uneven splits,
#    bit-for-bit against the same chunks run one after another on GPU 0; all-gather first, in a
#    fresh process (the case that hung). A watchdog exits 3 naming the case if a prefill hangs.
# 2. cuda_tensor_parallel_test: Megatron TP against one GPU (logits, K/V heads, one decode step).
# 3. kvr-bench: 1gpu, kvr-cost, tp and tsp, Llama-7B shape, 4k and 16k, on 1, 2 and N GPUs.
# Binaries: $BIN (default .carry/dev/bin, packed by tools/carry_for_device.sh, libraries in
# .carry/dev/lib), else built here into $BUILD. Logs and JSON under $OUT.
set -u
OUT=${OUT:-$PWD/multi_gpu_out}; mkdir -p "$OUT"
STEPS=${1:-tests,bench}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
NGPU=$(nvidia-smi -L | wc -l)
log "$NGPU GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | tr -s ' ')"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
. tools/device_libs.sh
export LD_LIBRARY_PATH="$DEVICE_LIBS:${LD_LIBRARY_PATH:-}"

BIN=${BIN:-.carry/dev/bin}
if [ ! -x "$BIN/kvr-bench" ] || [ ! -x "$BIN/cuda_nccl_chain_test" ] || [ ! -x "$BIN/cuda_tensor_parallel_test" ]; then
  BUILD=${BUILD:-/tmp/kvr-build}
  log "no binaries in $BIN: building into $BUILD"
  OUT="$OUT/build" BUILD=$BUILD TARGETS="kvr-bench cuda_nccl_chain_test cuda_tensor_parallel_test" \
    bash tests/cuda/device_check.sh build > "$OUT/build_step.log" 2>&1
  mkdir -p /tmp/kvr-bin
  cp "$BUILD/tools/kvr-bench" "$BUILD/tests/cuda/cuda_nccl_chain_test" "$BUILD/tests/cuda/cuda_tensor_parallel_test" \
    /tmp/kvr-bin/ 2>>"$OUT/build_step.log" || { log "build failed"; tail -30 "$OUT/build_step.log" "$OUT/build/build.log"; exit 1; }
  BIN=/tmp/kvr-bin
fi

if has tests; then
  log "cuda_nccl_chain_test"
  timeout 240 "$BIN/cuda_nccl_chain_test" > "$OUT/nccl_chain_test.log" 2>&1; rc=$?
  log "cuda_nccl_chain_test rc=$rc (0 pass, 1 failures, 3 hang caught by the watchdog, 124 timeout, 77 skipped)"
  grep -E "HUNG|FAILED|PASSED|OK \]|Failure|differ|Expected|rel L2" "$OUT/nccl_chain_test.log" | head -40 | tee -a "$OUT/summary.txt"
  log "cuda_tensor_parallel_test"
  timeout 150 "$BIN/cuda_tensor_parallel_test" > "$OUT/tensor_parallel_test.log" 2>&1; rc=$?
  log "cuda_tensor_parallel_test rc=$rc"
  grep -E "rel L2|FAILED|PASSED|OK \]|Failure" "$OUT/tensor_parallel_test.log" | head -60 | tee -a "$OUT/summary.txt"
fi

if has bench; then
  GPUS=1,2; [ "$NGPU" -ge 4 ] && GPUS=1,2,4
  log "kvr-bench --gpus $GPUS (1gpu, kvr-cost, tp, tsp)"
  timeout ${BENCH_TIMEOUT:-180} "$BIN/kvr-bench" --shape ${SHAPE:-llama-7b} --gpus $GPUS --ctx ${CTX:-4096,16384} \
    --modes 1gpu,kvr-cost,tp,tsp --reps 3 --warmup 1 --out "$OUT/bench_tp.json" ${BENCH_ARGS:-} \
    > "$OUT/bench_tp.log" 2>&1; rc=$?
  log "kvr-bench rc=$rc"
  grep -v "^I " "$OUT/bench_tp.log" | tail -40 | tee -a "$OUT/summary.txt"
  python3 - "$OUT/bench_tp.json" <<'EOF' 2>/dev/null | tee -a "$OUT/summary.txt"
import json, sys
d = json.load(open(sys.argv[1]))
for r in d.get("results", []):
    print(r["gpus"], r["ctx"], r["mode"], r.get("ttft_ms", r.get("error")), "logits_rel_err", r.get("logits_rel_err"),
          "kv_rel_err", r.get("kv_rel_err"))
EOF
fi
log done
