#!/bin/bash
# Where a prefill chunk's time goes, kernel by kernel, on the GPU machine (device tool), from the
# repository root, with binaries carried from the dev machine (tools/carry_for_device.sh):
#   OUT=$OUT bash tools/prefill_profile.sh [n] [at] [shape]     (defaults 4096 12288 llama2-7b)
# n tokens at positions [at, at + n) after a random prefix of `at` K/V rows: the last GPU's chunk
# of a 4-GPU chain at 16k. ATTN (default cudnn) picks the prefill attention.
# 1. kvr_cuda_bench's TTFT of that chunk at 32 layers (no profiler), the reference time.
# 2. Nsight Compute (clocks and caches left alone, so back-to-back kernels see warm L2 as in a
#    real run) over the same chunk at 2 layers: every kernel of the last run in launch order with
#    its duration and DRAM bytes, then the sums per kind (matrix products, attention, norms,
#    rotary, activation) and each kind's share, scaled to 32 layers.
set -u
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
N=${1:-4096}; AT=${2:-12288}; SHAPE=${3:-llama2-7b}; ATTN=${ATTN:-cudnn}
[ -d .carry/dev ] || tar -C .carry -xJf .carry/dev.tar.xz
. tools/device_libs.sh
export LD_LIBRARY_PATH="$DEVICE_LIBS"
B=${BIN:-.carry/dev/bin}
TAG=${TAG:-$SHAPE-$N-at$AT}
$B/kvr_cuda_bench --shape "$SHAPE" --gemv_bench 0 --attn "" --decode "" --prefill "$N" --prefill_at "$AT" \
  --attn_impl "$ATTN" --reps 5 --out "$OUT/prefill_$TAG.json" 2>&1 | grep -E "prefill ctx|floors"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu"; exit 0; }
timeout 300 "$NCU" --clock-control none --cache-control none \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum --csv \
  $B/kvr_cuda_bench --shape "$SHAPE" --layers 2 --floors 0 --gemv_bench 0 --attn "" --decode "" \
  --prefill "$N" --prefill_at "$AT" --attn_impl "$ATTN" --reps 1 > "$OUT/ncu_$TAG.csv" 2> "$OUT/ncu_$TAG.err"
echo "ncu rc=$?"
python3 - "$OUT/ncu_$TAG.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
if not rows:
    print("no kernels profiled"); sys.exit(0)
h = rows[0]; rows = rows[1:]
ki, mi, vi, ui, idi = (h.index(x) for x in ("Kernel Name", "Metric Name", "Metric Value", "Metric Unit", "ID"))
gi = h.index("Grid Size") if "Grid Size" in h else None
ks = collections.OrderedDict()
for r in rows:
    k = ks.setdefault(r[idi], {"name": r[ki], "grid": r[gi] if gi is not None else ""})
    v = float(r[vi].replace(",", ""))
    unit = r[ui]
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1, "usecond": 1, "ms": 1e3, "msecond": 1e3,
             "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(unit, 1)
    k[r[mi]] = v * scale
ids = list(ks)
# The bench runs the chunk 3 times (2 warm-ups + --reps 1); the timed run starts at the last
# embedding kernel.
starts = [n for n, i in enumerate(ids) if "Embedding" in ks[i]["name"]]
last = [ks[i] for i in ids[starts[-1] if starts else 0:]]
def kind(n):
    n = n.lower()
    if "gemm" in n or "gemv" in n or "xmma" in n or "nvjet" in n or ("sm90" in n and "sdpa" not in n): return "matmul"
    if "sdpa" in n or "attn" in n or "attention" in n or "fmha" in n or "cudnn" in n: return "attention"
    if "norm" in n: return "norm"
    if "rope" in n or "rotary" in n: return "rotary"
    if "silu" in n or "gelu" in n or "bias" in n: return "activation"
    if "embed" in n: return "embedding"
    return "other"
print(f"{'us':>9} {'MB read':>9} {'MB write':>9}  grid  kernel (last run, {len(last)} kernels)")
for k in last:
    print(f"{k.get('gpu__time_duration.sum', 0):9.1f} {k.get('dram__bytes_read.sum', 0)/1e6:9.1f} {k.get('dram__bytes_write.sum', 0)/1e6:9.1f}  {k['grid']:>14}  {k['name'][:110]}")
tot = collections.Counter()
for k in last: tot[kind(k["name"])] += k.get("gpu__time_duration.sum", 0)
s = sum(tot.values())
print(f"per kind (2 layers + embedding + head), total {s:.1f} us:")
for name, us in tot.most_common():
    print(f"  {name:10s} {us:10.1f} us  {100 * us / s:5.1f}%")
PY
