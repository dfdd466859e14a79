#!/bin/bash
# cuDNN prefill attention (kernels/cudnn_attention.h) on the GPU machine, from the repository
# root, after a build (e.g. `bash tests/cuda/device_check.sh env,build`, same $BUILD), or with
# binaries carried from the dev machine (tools/carry_for_device.sh; BIN=.carry/dev/bin):
#   bash tests/cuda/cudnn_check.sh
# Runs the cuDNN kernel tests (dynamic-shape plans, then KVR_CUDNN_STATIC=1; bucketed plans
# included), the runner tests and the attention/prefill/serving-chunk benchmarks for mma and
# cudnn; logs under $OUT (or ./device_out), the lines worth reading on stdout.
set -u
OUT=${OUT:-$PWD/device_out}
BUILD=${BUILD:-/tmp/kvr-build}
mkdir -p "$OUT"
log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }
pick='cuDNN|cudnn|\[ *(OK|FAILED|PASSED|SKIPPED) *\]|Failure|rel err|Expected|Which is|attn |prefill ctx|model '

if [ -n "${BIN:-}" ]; then
  mkdir -p /tmp/kvr-bin-tree/tests/cuda /tmp/kvr-bin-tree/tools
  for t in cuda_kernels_test cuda_runner_test; do ln -sf "$PWD/$BIN/$t" /tmp/kvr-bin-tree/tests/cuda/$t; done
  ln -sf "$PWD/$BIN/kvr_cuda_bench" /tmp/kvr-bin-tree/tools/kvr_cuda_bench
  BUILD=/tmp/kvr-bin-tree
  CARRIED_LIBS="$BIN/../lib" . tools/device_libs.sh
  export LD_LIBRARY_PATH="$DEVICE_LIBS:${LD_LIBRARY_PATH:-}"
else
  log "cudnn: build"
  if ! ninja -C "$BUILD" cuda_kernels_test cuda_runner_test kvr_cuda_bench > "$OUT/cudnn_build.log" 2>&1; then
    tail -40 "$OUT/cudnn_build.log"; exit 1
  fi
fi
log "cudnn: kernel tests (dynamic-shape plans + kernel cache)"
"$BUILD/tests/cuda/cuda_kernels_test" --gtest_filter='Kernels.Cudnn*:Kernels.PrefillAttention' \
  > "$OUT/cudnn_test.log" 2>&1; echo "rc=$?" >> "$OUT/cudnn_test.log"
grep -E "$pick|rc=" "$OUT/cudnn_test.log" | cut -c1-400
log "cudnn: kernel tests, static plans (KVR_CUDNN_STATIC=1)"
KVR_CUDNN_STATIC=1 "$BUILD/tests/cuda/cuda_kernels_test" --gtest_filter='Kernels.Cudnn*' \
  > "$OUT/cudnn_test_static.log" 2>&1; echo "rc=$?" >> "$OUT/cudnn_test_static.log"
grep -E "summary|\[ *(OK|FAILED|PASSED) *\]|n=2048|rc=" "$OUT/cudnn_test_static.log" | cut -c1-400
log "cudnn: runner test"
"$BUILD/tests/cuda/cuda_runner_test" --gtest_filter='CudaRunner.Cudnn*' \
  > "$OUT/cudnn_runner_test.log" 2>&1; echo "rc=$?" >> "$OUT/cudnn_runner_test.log"
grep -E "$pick|rc=" "$OUT/cudnn_runner_test.log" | cut -c1-400
log "cudnn: bench (llama2-7b widths, 4 layers)"
timeout 300 "$BUILD/tools/kvr_cuda_bench" --shape llama2-7b --layers 4 --attn 4096,8192,16384 \
  --attn_impl mma,cudnn --prefill 4096,16384 --decode "" --reps 5 --out "$OUT/cudnn_bench.json" \
  > "$OUT/cudnn_bench.log" 2>&1; echo "rc=$?" >> "$OUT/cudnn_bench.log"
grep -E "$pick|floors|rc=" "$OUT/cudnn_bench.log" | cut -c1-300
log "cudnn: bench, a 2048-query chunk after 14336 keys, and GQA (llama3-8b widths)"
timeout 200 "$BUILD/tools/kvr_cuda_bench" --shape llama3-8b --layers 2 --attn 2048 --attn_prefix 14336 \
  --attn_impl mma,cudnn --prefill "" --decode "" --reps 5 --out "$OUT/cudnn_bench_chunk.json" \
  > "$OUT/cudnn_bench_chunk.log" 2>&1; echo "rc=$?" >> "$OUT/cudnn_bench_chunk.log"
grep -E "attn |plan build|rc=" "$OUT/cudnn_bench_chunk.log" | cut -c1-300
log "cudnn: bench, static plans (KVR_CUDNN_STATIC=1), attention only"
KVR_CUDNN_STATIC=1 timeout 200 "$BUILD/tools/kvr_cuda_bench" --shape llama2-7b --layers 2 --attn 16384 \
  --attn_impl cudnn --prefill "" --decode "" --reps 5 > "$OUT/cudnn_bench_static.log" 2>&1
echo "rc=$?" >> "$OUT/cudnn_bench_static.log"
grep -E "attn |plan build|rc=" "$OUT/cudnn_bench_static.log" | cut -c1-300
log "cudnn: bench, serving-like chunk sequence (llama3-8b widths): mma vs cuDNN bucketed (prewarmed) vs exact"
timeout 400 "$BUILD/tools/kvr_cuda_bench" --shape llama3-8b --layers 2 --attn "" --attn_impl mma,cudnn \
  --serve_lens 3001,5500,9000,12345,16000 --serve_chunk 2048 --prefill "" --decode "" --reps 5 \
  --out "$OUT/cudnn_bench_serve.json" > "$OUT/cudnn_bench_serve.log" 2>&1; echo "rc=$?" >> "$OUT/cudnn_bench_serve.log"
grep -E "serve|rc=" "$OUT/cudnn_bench_serve.log" | cut -c1-300
log "cudnn: padding-mask variant (KVR_CUDNN_PADMASK=1, experimental): tests, then the serving bench"
KVR_CUDNN_PADMASK=1 KVR_CUDNN_STATIC=1 "$BUILD/tests/cuda/cuda_kernels_test" \
  --gtest_filter='Kernels.CudnnPrefillAttention:Kernels.CudnnBucket*' > "$OUT/cudnn_test_padmask.log" 2>&1
echo "rc=$?" >> "$OUT/cudnn_test_padmask.log"
grep -E "summary|bucketed\]|\[ *(OK|FAILED|PASSED) *\]|rc=" "$OUT/cudnn_test_padmask.log" | cut -c1-300
KVR_CUDNN_PADMASK=1 timeout 400 "$BUILD/tools/kvr_cuda_bench" --shape llama3-8b --layers 2 --attn "" \
  --attn_impl mma,cudnn --serve_lens 3001,5500,9000,12345,16000 --serve_chunk 2048 --prefill "" --decode "" \
  --reps 5 --out "$OUT/cudnn_bench_serve_padmask.json" > "$OUT/cudnn_bench_serve_padmask.log" 2>&1
echo "rc=$?" >> "$OUT/cudnn_bench_serve_padmask.log"
grep -E "serve|rc=" "$OUT/cudnn_bench_serve_padmask.log" | cut -c1-300
log "cudnn: done"
