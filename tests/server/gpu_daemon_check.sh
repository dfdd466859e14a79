#!/bin/bash
# kvrd on the GPU machine (issue 4): a random-weight model folder of a real shape, kvrd on every
# GPU through the CUDA backend, STREAMS concurrent Generate streams with PROMPT-token prompts from
# kvr-load, then the Prometheus text of /metrics. Run from the repository root, after unpacking
# .carry/dev.tar.xz (tools/carry_for_device.sh):
#   OUT=$OUT bash tests/server/gpu_daemon_check.sh
# Env: STREAMS (16), REQUESTS per stream (1), PROMPT (8192), MAX_TOKENS (16), SHAPE (llama-7b or
# llama3-8b), LAYERS (32), PARTITION (cost), KVRD_ARGS.
# Writes kvrd.log, load.json, load.log and metrics.txt under $OUT; exit 0 only if every request
# completed and the TTFT and per-GPU prefill series are present in /metrics.
set -u
OUT=${OUT:-$PWD/daemon_out}; mkdir -p "$OUT"
STREAMS=${STREAMS:-16}; PROMPT=${PROMPT:-8192}; MAX_TOKENS=${MAX_TOKENS:-16}
export NCCL_NVLS_ENABLE=0
D=.carry/dev
CARRIED_LIBS="$D/lib" . tools/device_libs.sh
LIBS=$DEVICE_LIBS
say() { echo "== $(date +%T) $*" | tee -a "$OUT/daemon_summary.txt"; }
SHAPE=${SHAPE:-llama-7b}; TOK=llama2; [ "$SHAPE" = llama3-8b ] && TOK=llama3
MODEL=/tmp/kvr-$SHAPE-random
if [ ! -f $MODEL/model.safetensors ]; then
  say "writing a random-weight $SHAPE model folder"
  python3 tests/server/make_random_model.py --shape $SHAPE --layers ${LAYERS:-32} --tokenizer $D/tok/$TOK \
    --out $MODEL 2>&1 | tail -3 | tee -a "$OUT/daemon_summary.txt"
fi
say "starting kvrd"
LD_LIBRARY_PATH=$LIBS $D/bin/kvrd --model $MODEL --backend cuda --partition ${PARTITION:-cost} \
  --listen 127.0.0.1:50051 --metrics_listen 127.0.0.1:9464 --max_model_len $((PROMPT + 1024)) ${KVRD_ARGS:-} \
  > "$OUT/kvrd.log" 2>&1 &
KVRD=$!
for i in $(seq 1 180); do
  grep -q "kvrd ready" "$OUT/kvrd.log" && break
  kill -0 $KVRD 2>/dev/null || break
  sleep 1
done
grep -E "ready|backend|GPU|error|Error|calibrat|partition|cudnn" "$OUT/kvrd.log" | head -24 | tee -a "$OUT/daemon_summary.txt"
if ! grep -q "kvrd ready" "$OUT/kvrd.log"; then say "kvrd did not become ready"; tail -20 "$OUT/kvrd.log"; kill $KVRD; exit 1; fi
say "kvr-load: $STREAMS streams, $PROMPT-token prompts, $MAX_TOKENS tokens each"
LD_LIBRARY_PATH=$LIBS timeout 300 $D/bin/kvr-load --target 127.0.0.1:50051 --streams $STREAMS \
  --requests_per_stream ${REQUESTS:-1} \
  --prompt_tokens $PROMPT --max_tokens $MAX_TOKENS --out "$OUT/load.json" > "$OUT/load.log" 2>&1; LRC=$?
tail -4 "$OUT/load.log" | tee -a "$OUT/daemon_summary.txt"
curl -s http://127.0.0.1:9464/metrics > "$OUT/metrics.txt"
say "metrics: $(wc -l < "$OUT/metrics.txt") lines"
grep -E '^kvr_time_to_first_token_seconds_(count|sum)|^kvr_worker_prefill_(busy|wait)_seconds_total|^kvr_worker_prefill_tokens_total|^kvr_kv_transfer_sent_bytes_total|^kvr_request_success_total' \
  "$OUT/metrics.txt" | tee -a "$OUT/daemon_summary.txt"
kill -TERM $KVRD; wait $KVRD; say "kvrd exit $?"
tail -5 "$OUT/kvrd.log" >> "$OUT/daemon_summary.txt"
MRC=0
grep -q '^kvr_time_to_first_token_seconds_count' "$OUT/metrics.txt" || MRC=1
grep -q '^kvr_worker_prefill_busy_seconds_total{.*worker="1"' "$OUT/metrics.txt" || MRC=1
say "kvr-load rc=$LRC, metrics check rc=$MRC"
[ $LRC = 0 ] && [ $MRC = 0 ]
