#!/bin/bash
# Issue 4's benchmark in one GPU-machine call: kvr-bench for one model shape on 1, 2 and 4 GPUs
# with links on, the same with NCCL_P2P_DISABLE=1 at 4 GPUs, and the PyTorch peers
# (torch_prefill.py) on the same cards. Everything lands in $OUT/results.tgz, plus summary.txt
# and the plot.
#   bash tools/bench_multi_gpu.sh SHAPE "CONTEXTS" "P2P_OFF_CONTEXTS" "TORCH_SHAPE_FLAGS"
set -u
OUT=${OUT:-$PWD/bench_out}; R=/tmp/kvr-results; mkdir -p "$R" "$OUT"
SHAPE=${1:-llama-7b}; CTX=${2:-1024,4096,8192,16384,32768}; CTX_OFF=${3:-8192,16384}; TORCH_FLAGS=${4:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
NGPU=$(nvidia-smi -L | wc -l)
S="$OUT/summary.txt"
say() { echo "== $(date +%T) $*" | tee -a "$S"; }
say "$NGPU GPUs"; nvidia-smi --query-gpu=index,name --format=csv,noheader >> "$S"
if [ "${SMOKE:-1}" = 1 ]; then
  say "smoke: 2 GPUs, 4 layers, 1k"
  OUT=$R BENCH_TIMEOUT=90 REPS=1 BENCH_ARGS="--layers 4 --modes kvr-e,kvr-e-fan,tsp,kvr-cost" LINK=smoke \
    bash tools/bench_device.sh "$SHAPE" 2 1024 >> "$S" 2>&1 || say "smoke failed"
fi
say "kvr-bench $SHAPE, links on"
OUT=$R BENCH_TIMEOUT=${MAIN_TIMEOUT:-330} bash tools/bench_device.sh "$SHAPE" "$(echo 1,2,$NGPU | tr , "\n" | sort -nu | paste -sd,)" "$CTX" 2>&1 | grep -v "^I " >> "$S"
say "torch peers, links on"
timeout 150 torchrun --nproc_per_node=1 .carry/peers/torch_prefill.py --ctx "$CTX" --reps 3 $TORCH_FLAGS 2>/dev/null | grep '^{' >> "$R/torch.jsonl"
timeout 200 torchrun --nproc_per_node=$NGPU .carry/peers/torch_prefill.py --ctx "$CTX" --modes tp,kvra_bal --reps 3 $TORCH_FLAGS 2>/dev/null | grep '^{' >> "$R/torch.jsonl"
cat "$R/torch.jsonl" >> "$S"
if [ -n "$CTX_OFF" ]; then
  say "links off (NCCL_P2P_DISABLE=1)"
  NCCL_P2P_DISABLE=1 OUT=$R LINK=p2p-off BENCH_TIMEOUT=150 BENCH_ARGS="--modes tsp,kvr-e,kvr-cost,kvr-cost-fan" \
    bash tools/bench_device.sh "$SHAPE" $NGPU "$CTX_OFF" 2>&1 | grep -v "^I " >> "$S"
  NCCL_P2P_DISABLE=1 timeout 120 torchrun --nproc_per_node=$NGPU .carry/peers/torch_prefill.py --ctx "$CTX_OFF" \
    --modes tp,kvra_bal --reps 3 $TORCH_FLAGS 2>/dev/null | grep '^{' | sed 's/^{/{"p2p":"off",/' >> "$R/torch_p2p_off.jsonl"
  cat "$R/torch_p2p_off.jsonl" >> "$S"
fi
cp "$R"/bench_${SHAPE}_nvlink.png "$OUT/" 2>/dev/null
tar -C "$R" -czf "$OUT/results.tgz" .
say done
