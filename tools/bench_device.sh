#!/bin/bash
# Multi-GPU TTFT benchmark on the GPU machine, in one call, with the PyTorch peers on the same
# cards:  bash tools/bench_device.sh [shape] [gpus] [contexts]   (results under $OUT)
# Expects kvr-bench carried in .carry/dev (tools/carry_for_device.sh), or $BENCH.
set -u
OUT=${OUT:-$PWD/bench_out}; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
SHAPE=${1:-llama-7b}; GPUS=${2:-1,2,4}; CTX=${3:-1024,4096,8192,16384,32768}
. tools/device_libs.sh
export LD_LIBRARY_PATH="$DEVICE_LIBS:${LD_LIBRARY_PATH:-}"
BENCH=${BENCH:-.carry/dev/bin/kvr-bench}
nvidia-smi --query-gpu=index,name,memory.total --format=csv > "$OUT/gpus.txt"; nvidia-smi topo -m >> "$OUT/gpus.txt" 2>&1
cat "$OUT/gpus.txt"
echo "== kvr-bench $SHAPE gpus=$GPUS ctx=$CTX ($(date +%T))"
timeout ${BENCH_TIMEOUT:-300} $BENCH --shape "$SHAPE" --gpus "$GPUS" --ctx "$CTX" --reps ${REPS:-3} --warmup 1 \
  --search_reps 1 --timeline 16384 --link ${LINK:-nvlink} --table "$OUT/splits_${SHAPE}.json" \
  --out "$OUT/bench_${SHAPE}_${LINK:-nvlink}.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_${SHAPE}_${LINK:-nvlink}.log" | grep -v "^I "
python3 tools/plot_bench.py "$OUT/bench_${SHAPE}_${LINK:-nvlink}.json" "$OUT/bench_${SHAPE}_${LINK:-nvlink}.png" 2>&1 | tail -2
