#!/usr/bin/env bash
# Builds kvr's libFuzzer targets (a small clang build of the parser sources only, see
# tests/fuzz/CMakeLists.txt) and runs each for a bounded time from its seed corpus.
#
#   tests/fuzz/run_fuzzers.sh [--seconds 20] [--jobs 2] [--build-dir build-fuzz] [--cxx clang++]
#                             [--only tokenizer_encode_fuzz] [--keep-corpus] [--runs N --seed S]
#
# --runs N --seed S: a fixed number of executions from a fixed random seed instead of a time
# budget, which is what CI uses: the mutations are seeded, so runs try nearly the same inputs
# whatever the machine's speed (two runs here differed by a few percent in corpus size: libFuzzer
# keeps inputs by coverage as they arrive). Time-boxed runs explore more.
#
# Seeds are read from tests/fuzz/corpus/<target>/ (never written: what a run finds goes to
# <build-dir>/corpus/<target>/). A crash, leak, sanitizer report or timeout fails the run and
# leaves the input in <build-dir>/artifacts/. Prints one line per target: seconds run,
# executions, corpus size, coverage; the table is also in <build-dir>/summary.txt.
# Exit 77 (CTest: skipped) when clang or its libFuzzer runtime (libclang-rt-14-dev) is missing.
set -uo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=20
RUNS=""
SEED=1
JOBS=$(nproc)
BUILD=build-fuzz
CXX_BIN=$(command -v clang++ || command -v clang++-14 || true)
ONLY=""
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --jobs) JOBS=$2; shift 2 ;;
    --build-dir) BUILD=$2; shift 2 ;;
    --cxx) CXX_BIN=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --keep-corpus) KEEP=1; shift ;;
    *) echo "run_fuzzers: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$CXX_BIN" ]; then echo "run_fuzzers: no clang++: skipped"; exit 77; fi
FUZZ_LIB=$("$CXX_BIN" -print-file-name=libclang_rt.fuzzer-x86_64.a 2>/dev/null)
if [ ! -f "$FUZZ_LIB" ] && ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
      >/dev/null 2>&1; then
  echo "run_fuzzers: clang's libFuzzer runtime is missing (apt install libclang-rt-14-dev): skipped"
  exit 77
fi

t0=$(date +%s)
mkdir -p "$BUILD"
cmake -S tests/fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$CXX_BIN" >"$BUILD/configure.log" 2>&1 ||
  { cat "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j"$JOBS" || exit 1
echo "run_fuzzers: built in $(( $(date +%s) - t0 )) s"

TARGETS=(safetensors_header_fuzz safetensors_index_fuzz model_config_fuzz tokenizer_json_fuzz
         tokenizer_config_fuzz tokenizer_encode_fuzz tokenizer_decode_fuzz generate_request_fuzz)
[ -n "$ONLY" ] && TARGETS=("$ONLY")
mkdir -p "$BUILD/artifacts" "$BUILD/logs"
export KVR_FUZZ_DATA="$PWD/tests/fuzz/data"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

run_one() {
  local t=$1 corpus="$BUILD/corpus/$1"
  [ "$KEEP" = 1 ] || rm -rf "$corpus"
  mkdir -p "$corpus"
  # Each target gets its own scratch folder (some write their input to a file).
  local budget=(-max_total_time="$SECONDS_EACH")
  if [ -n "$RUNS" ]; then budget=(-runs="$RUNS" -seed="$SEED"); fi
  TMPDIR=$(mktemp -d) "$BUILD/$t" "${budget[@]}" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$BUILD/artifacts/$t-" \
    "$corpus" "tests/fuzz/corpus/${t%_fuzz}" >"$BUILD/logs/$t.log" 2>&1
  echo $? >"$BUILD/logs/$t.rc"
}

running=0
for t in "${TARGETS[@]}"; do
  if [ ! -x "$BUILD/$t" ]; then echo "run_fuzzers: $t was not built (no Protobuf?)" >&2; continue; fi
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n; running=$((running - 1)); fi
done
wait

status=0
{
  printf "%-24s %8s %10s %8s %8s  %s\n" target seconds execs corpus cov result
  for t in "${TARGETS[@]}"; do
    log="$BUILD/logs/$t.log"
    [ -f "$log" ] || continue
    rc=$(cat "$BUILD/logs/$t.rc")
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' |
           grep -o '[0-9]*' | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*')
    corpus=$(find "$BUILD/corpus/$t" -type f | wc -l)
    result=ok
    if [ "$rc" != 0 ]; then result="FAILED (rc $rc, see $log)"; status=1; fi
    printf "%-24s %8s %10s %8s %8s  %s\n" "$t" "${secs:-?}" "${execs:-?}" "$corpus" "${cov:-?}" "$result"
  done
} | tee "$BUILD/summary.txt"
# tee's status hides the loop's: read the table back.
grep -q FAILED "$BUILD/summary.txt" && status=1
for t in "${TARGETS[@]}"; do
  if [ -f "$BUILD/logs/$t.rc" ] && [ "$(cat "$BUILD/logs/$t.rc")" != 0 ]; then
    echo "==== $t ===="; grep -v '^#[0-9]*\s' "$BUILD/logs/$t.log" | tail -60
  fi
done
echo "run_fuzzers: total $(( $(date +%s) - t0 )) s"
exit $status
