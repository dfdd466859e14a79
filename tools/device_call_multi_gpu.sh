#!/bin/bash
# Everything issue 4 asks of a multi-GPU machine, in one device call (about 8 minutes on 4 GPUs),
# from the repository root, with binaries carried from the dev machine (tools/carry_for_device.sh):
#   OUT=$OUT bash tools/device_call_multi_gpu.sh
# 1. cuda_nccl_chain_test, cuda_tensor_parallel_test on every GPU count up to N (bit-exactness).
# 2. cuDNN attention tests on GPU 0 (bucketed plans, runner).
# 3. kvr-bench, Llama-2-7B shape, 1 and N GPUs, links on: MODES (default 1gpu, tp, tsp, kvr-e,
#    kvr-cost, kvr-s) at CTX (default 4096,16384,32768), with ATTN (default cudnn) attention in
#    every mode; the per-GPU timeline of KVR-S at 16k. TRANSPORT (nccl; or copy) picks how K/V
#    move between GPUs in steps 3, 4 and 4b.
# 4. The same at CTX_OFF (default 16384) with NCCL_P2P_DISABLE=1 (MODES_OFF, default tp, tsp,
#    kvr-cost, kvr-s); KVRP_TABLE (e.g. config/splits/h200.json) lets kvr-p run without kvr-s.
# 4b. EXTRA_SHAPES (default llama3-8b falcon-7b) at EXTRA_CTX (default 16384) on 1 and N GPUs,
#    EXTRA_MODES (default 1gpu, tp, tsp, kvr-cost, kvr-s; Falcon never tp: 71 heads).
# 5. PyTorch peers (torch_prefill.py): 1 GPU at PEER1_CTX (default 16384), TP and KV-Runahead on
#    N GPUs at CTX, TP with links off at CTX_OFF (PEERS_L2=0 skips these three); with llama3-8b
#    among EXTRA_SHAPES, its 1 GPU, TP and KV-Runahead at EXTRA_CTX. PEER_MODES (default
#    tp,kvra_bal) picks the N-GPU peers.
# 6. kvrd on N GPUs: 16 streams of 8k-token prompts (tests/server/gpu_daemon_check.sh).
# 7. kvrd's --tsp_below: TSP_SHAPE (llama3-8b) with cuDNN attention, one stream of 8 requests of
#    TSP_PROMPT (4096) tokens one after another (TTFT = the prefill), without and with
#    --tsp_below TSP_BELOW (8192).
# 8. The receiving-GPU slowdown (docs/benchmarks.md, "Where the missing time goes"): Llama-2-7B
#    at 16k on N GPUs, KVR-E, KVR-P (from the split table) and KVR-S with its timeline, three
#    ways: NCCL, NCCL with KVR_NCCL_MAX_CTAS=2, and --transport copy.
# STEPS (default "1 2 3 4 4b 5 6") picks steps, so the work can be split over calls.
# Logs and JSON under $OUT (at most 8 files come back: everything is packed into results.tgz
# except summary.txt).
set -u
OUT=${OUT:-$PWD/device_out}; R=/tmp/kvr-call; rm -rf "$R"; mkdir -p "$OUT" "$R"  # R: this call's only
S="$OUT/summary.txt"
say() { echo "== $(date +%T) $*" | tee -a "$S"; }
has() { [[ " ${STEPS:-1 2 3 4 4b 5 6} " == *" $1 "* ]]; }  # 7 and 8 only when named  # STEPS: which numbered steps run
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
[ -d .carry/dev ] || tar -C .carry -xJf .carry/dev.tar.xz
NGPU=$(nvidia-smi -L | wc -l)
. tools/device_libs.sh
LIBS=$DEVICE_LIBS
B=.carry/dev/bin
CTX=${CTX:-4096,16384,32768}; CTX_OFF=${CTX_OFF:-16384}; ATTN=${ATTN:-cudnn}
say "$NGPU GPUs"; nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader >> "$S"
nvidia-smi topo -m > "$R/topo.txt" 2>&1

if has 1; then
say "1. multi-GPU correctness"
LD_LIBRARY_PATH=$LIBS timeout 240 $B/cuda_nccl_chain_test > "$R/nccl_chain_test.log" 2>&1; echo "nccl_chain_test rc=$?" >> "$S"
grep -E "HUNG|FAILED|PASSED|OK \]" "$R/nccl_chain_test.log" | head -12 >> "$S"
LD_LIBRARY_PATH=$LIBS timeout 150 $B/cuda_tensor_parallel_test > "$R/tensor_parallel_test.log" 2>&1; echo "tensor_parallel_test rc=$?" >> "$S"
grep -E "FAILED|PASSED|OK \]|P=4" "$R/tensor_parallel_test.log" | head -20 >> "$S"

fi
if has 2; then
say "2. cuDNN attention tests (GPU 0)"
LD_LIBRARY_PATH=$LIBS timeout 150 $B/cuda_kernels_test --gtest_filter='Kernels.Cudnn*' > "$R/cudnn_kernels.log" 2>&1; echo "cudnn kernels rc=$?" >> "$S"
grep -E "FAILED|PASSED|OK \]|bucketed|summary|reused" "$R/cudnn_kernels.log" | cut -c1-220 | head -30 >> "$S"
LD_LIBRARY_PATH=$LIBS timeout 150 $B/cuda_runner_test --gtest_filter='CudaRunner.Cudnn*' > "$R/cudnn_runner.log" 2>&1; echo "cudnn runner rc=$?" >> "$S"
grep -E "FAILED|PASSED|OK \]" "$R/cudnn_runner.log" | head >> "$S"

fi
if has 3; then
say "3. kvr-bench llama-7b, gpus 1,$NGPU, ctx $CTX, attention $ATTN, links on"
LD_LIBRARY_PATH=$LIBS timeout ${BENCH_TIMEOUT:-230} $B/kvr-bench --shape llama-7b --gpus 1,$NGPU --ctx $CTX \
  --modes ${MODES:-1gpu,tp,tsp,kvr-e,kvr-cost,kvr-s} --attn_impl $ATTN --reps 3 --warmup 1 --search_reps 1 --timeline 16384 \
  --link nvlink --transport ${TRANSPORT:-nccl} --table "$R/splits.json" --out "$R/bench_on.json" > "$R/bench_on.log" 2>&1; echo "bench rc=$?" >> "$S"
grep -E "TTFT|refused|calibrat" "$R/bench_on.log" | grep -v "^I .*chunk [0-9]/" | cut -c1-200 >> "$S"

fi
if has 4; then
say "4. links off (NCCL_P2P_DISABLE=1), ctx $CTX_OFF"
NCCL_P2P_DISABLE=1 LD_LIBRARY_PATH=$LIBS timeout ${OFF_TIMEOUT:-120} $B/kvr-bench --shape llama-7b --gpus $NGPU --ctx $CTX_OFF \
  --modes ${MODES_OFF:-tp,tsp,kvr-cost,kvr-s} --attn_impl $ATTN --reps 3 --warmup 1 --search_reps 1 --link p2p-off \
  ${KVRP_TABLE:+--kvrp_table $KVRP_TABLE} --transport ${TRANSPORT:-nccl} \
  --table "$R/splits.json" --out "$R/bench_off.json" > "$R/bench_off.log" 2>&1; echo "bench off rc=$?" >> "$S"
grep -E "TTFT|refused" "$R/bench_off.log" | cut -c1-200 >> "$S"

fi
if has 4b; then
EXTRA_CTX=${EXTRA_CTX:-16384}
say "4b. other shapes, ctx $EXTRA_CTX: ${EXTRA_SHAPES-llama3-8b falcon-7b}"
for sh in ${EXTRA_SHAPES-llama3-8b falcon-7b}; do
  modes=${EXTRA_MODES:-1gpu,tp,tsp,kvr-cost,kvr-s}; [ $sh = falcon-7b ] && modes=${modes/tp,/}
  LD_LIBRARY_PATH=$LIBS timeout ${SHAPE_TIMEOUT:-110} $B/kvr-bench --shape $sh --gpus 1,$NGPU --ctx $EXTRA_CTX \
    --modes $modes --attn_impl $ATTN --reps 3 --warmup 1 --search_reps 1 --link nvlink --timeline 16384 \
    --transport ${TRANSPORT:-nccl} \
    --table "$R/splits.json" --out "$R/bench_$sh.json" > "$R/bench_$sh.log" 2>&1; echo "bench $sh rc=$?" >> "$S"
  grep -E "TTFT|refused" "$R/bench_$sh.log" | cut -c1-200 >> "$S"
done

fi
if has 5; then
say "5. PyTorch peers"
P=.carry/peers/torch_prefill.py
if [ "${PEERS_L2:-1}" = 1 ]; then
timeout ${PEER1_TIMEOUT:-90} torchrun --nproc_per_node=1 $P --ctx ${PEER1_CTX:-16384} --reps 3 2>/dev/null | grep '^{' >> "$S"
timeout ${PEERN_TIMEOUT:-150} torchrun --nproc_per_node=$NGPU $P --ctx $CTX --modes ${PEER_MODES:-tp,kvra_bal} --reps 3 2>/dev/null | grep '^{' >> "$S"
NCCL_P2P_DISABLE=1 timeout ${PEEROFF_TIMEOUT:-90} torchrun --nproc_per_node=$NGPU $P --ctx $CTX_OFF --modes tp --reps 3 2>/dev/null | grep '^{' | sed 's/^{/{"p2p":"off",/' >> "$S"
fi
if [[ " ${EXTRA_SHAPES-llama3-8b} " == *" llama3-8b "* ]]; then
  L3="--kv-heads 8 --ffn 14336 --vocab 128256"
  timeout ${PEER1_TIMEOUT:-90} torchrun --nproc_per_node=1 $P --ctx ${EXTRA_CTX:-16384} --reps 3 $L3 2>/dev/null | grep '^{' | sed 's/^{/{"shape":"llama3-8b",/' >> "$S"
  timeout ${PEERN_TIMEOUT:-120} torchrun --nproc_per_node=$NGPU $P --ctx ${EXTRA_CTX:-16384} --modes ${PEER_MODES:-tp,kvra_bal} --reps 3 $L3 2>/dev/null | grep '^{' | sed 's/^{/{"shape":"llama3-8b",/' >> "$S"
fi

fi
if has 6; then
say "6. kvrd on $NGPU GPUs"
OUT=$R/daemon PARTITION=${PARTITION:-table:config/splits/h200.json} KVRD_ARGS="--attn_impl ${DAEMON_ATTN:-mma}" \
  timeout 200 bash tests/server/gpu_daemon_check.sh > "$R/daemon_stdout.txt" 2>&1; echo "daemon rc=$?" >> "$S"
cat "$R/daemon/daemon_summary.txt" >> "$S" 2>/dev/null
rm -f "$R/daemon/metrics.txt"
fi
if has 7; then
say "7. kvrd without and with --tsp_below ${TSP_BELOW:-8192}: ${TSP_SHAPE:-llama3-8b}, ${TSP_PROMPT:-4096}-token prompts"
for tsp in 0 ${TSP_BELOW:-8192}; do
  OUT=$R/daemon_tsp$tsp SHAPE=${TSP_SHAPE:-llama3-8b} STREAMS=1 REQUESTS=8 PROMPT=${TSP_PROMPT:-4096} MAX_TOKENS=4 \
    PARTITION=${PARTITION:-table:config/splits/h200.json} KVRD_ARGS="--attn_impl cudnn --tsp_below $tsp" \
    timeout 240 bash tests/server/gpu_daemon_check.sh > "$R/daemon_tsp$tsp.txt" 2>&1; echo "tsp_below $tsp rc=$?" >> "$S"
  grep -E "ttft|TTFT|ok, " "$R/daemon_tsp$tsp/load.log" | head -4 >> "$S"
  rm -f "$R/daemon_tsp$tsp/metrics.txt"
done
fi
if has 8; then
say "8. 16k on $NGPU GPUs: NCCL, NCCL with 2 CTAs a kernel, copy engines"
for way in nccl ctas2 copy; do
  env=""; tr=nccl; [ $way = ctas2 ] && env="KVR_NCCL_MAX_CTAS=2"; [ $way = copy ] && tr=copy
  env $env LD_LIBRARY_PATH=$LIBS timeout ${WAY_TIMEOUT:-110} $B/kvr-bench --shape llama-7b --gpus $NGPU --ctx 16384 \
    --modes kvr-e,kvr-p,kvr-s --kvrp_table config/splits/h200.json --attn_impl $ATTN --reps 3 --warmup 1 \
    --search_reps 1 --timeline 16384 --link nvlink --transport $tr --out "$R/bench_way_$way.json" \
    > "$R/bench_way_$way.log" 2>&1; echo "way $way rc=$?" >> "$S"
  grep -E "TTFT" "$R/bench_way_$way.log" | cut -c1-160 >> "$S"
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('timeline', [(w['gpu'], round(w['busy_ms'],1), round(w['stall_ms'],1)) for w in d.get('timeline',{}).get('workers',[])])" \
    "$R/bench_way_$way.json" >> "$S" 2>/dev/null
done
fi
tar -C "$R" -czf "$OUT/results${STEPS:+_${STEPS// /}}.tgz" . ; say done
