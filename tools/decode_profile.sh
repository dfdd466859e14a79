#!/bin/bash
# Where a decode step's time goes, on the GPU machine (device tool), from the repository root,
# with binaries carried from the dev machine (tools/carry_for_device.sh):
#   OUT=$OUT bash tools/decode_profile.sh [ctx]          (default ctx 4096)
# 1. kvr_cuda_bench: the 1-row products (our GEMV against cuBLASLt) and decode ITL vs the floor,
#    once per VARIANTS entry (environment settings, e.g. "KVR_PDL=0" to launch without
#    programmatic dependent launch, "KVR_DECODE_SPLITS_PER_SM=2"; "-" = defaults; several
#    settings in one entry joined by commas: "KVR_DECODE_FUSE=0,KVR_DECODE_TILE=64"). VARIANTS=none
#    skips this part.
# BENCH_ARGS: more kvr_cuda_bench arguments for both parts, e.g. "--hidden 256 --ffn 688" (the
# same kernels with almost no bytes: what each kernel costs beyond moving its bytes).
# 2. Nsight Compute (clocks left alone): the duration and DRAM bytes of every kernel of one eager
#    decode step, summed per kernel name. The sum of kernel durations against the ITL says how
#    much of the step is gaps between kernels and host work.
# 3. PM=1 (and a Llama-family --shape, the default): Nsight Compute's PM sampling over one captured
#    decode step at ctx (the graph as one workload: kernels in flight as they run), written out by
#    tools/pm_sampling_dump.py and read by tools/pm_decode_layers.py (docs/kernels.md).
set -u
OUT=${OUT:-$PWD/device_out}; mkdir -p "$OUT"
CTX=${1:-4096}
[ -d .carry/dev ] || tar -C .carry -xJf .carry/dev.tar.xz
. tools/device_libs.sh
export LD_LIBRARY_PATH="$DEVICE_LIBS"
B=${BIN:-.carry/dev/bin}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
i=0
[ "${VARIANTS:-}" = none ] && VARIANTS_LIST="" || VARIANTS_LIST=${VARIANTS:--}
for v in $VARIANTS_LIST; do
  echo "-- variant: $v"
  G=0; [ $i = 0 ] && G=1  # the 1-row products once
  v=${v/#-/}; env ${v//,/ } $B/kvr_cuda_bench --gemv_bench $G --prefill "" --attn "" --decode "$CTX,32768" ${BENCH_ARGS:-} --out "$OUT/decode_bench_$i.json" 2>&1 |
    grep -E "row product|decode ctx|copy|matmul"
  i=$((i + 1))
done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu"; exit 0; }
# Only the decode kernels of one step (the 1-row product timings are skipped).
timeout 300 "$NCU" --clock-control none --metrics gpu__time_duration.sum,dram__bytes_read.sum \
  -k regex:'Gemv|Norm|Rope|Decode|Silu|Gelu|Embedding|Bias' --launch-count 400 --csv \
  $B/kvr_cuda_bench --gemv_bench 0 --floors 0 --prefill "" --attn "" --decode "$CTX" ${BENCH_ARGS:-} > "$OUT/ncu.csv" 2> "$OUT/ncu.err"
echo "ncu rc=$?"
python3 - "$OUT/ncu.csv" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
h = rows[0]; rows = rows[1:]
ki, mi, vi, ui, idi = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Value"), h.index("Metric Unit"), h.index("ID")
per = collections.OrderedDict()
for r in rows:
    per.setdefault(r[idi], {"name": r[ki].split("(")[0].split("<")[0].split("::")[-1], "grid": r[h.index("Grid Size")].replace(" ", "")})[r[mi]] = (float(r[vi].replace(",", "")), r[ui])
# one step = from the first EmbeddingKernel to the next
ids = list(per)
starts = [i for i, k in enumerate(ids) if per[k]["name"].startswith("Embedding")]
if not starts: print("no step found"); sys.exit()
step = ids[starts[0]: starts[1] if len(starts) > 1 else len(ids)]
agg = collections.OrderedDict()
for k in step:
    d = per[k]; t, tu = d["gpu__time_duration.sum"]; b, bu = d["dram__bytes_read.sum"]
    t = {"ns": 1, "nsecond": 1, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6}[tu] * t  # ns
    b = b * {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(bu, 1)
    a = agg.setdefault(d["name"] + ' ' + d['grid'], [0, 0.0, 0.0]); a[0] += 1; a[1] += t; a[2] += b
tot = sum(a[1] for a in agg.values())
print(f"one decode step: {len(step)} kernels, sum of kernel durations {tot/1e6:.3f} ms (serialized by ncu, caches flushed)")
for n, (c, t, b) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print(f"  {n:28s} x{c:4d}  {t/1e6:7.3f} ms  {t/c/1e3:7.2f} us each  {b/1e9:7.3f} GB read  {b/max(t,1e-9):7.0f} GB/s")
PY
if [ "${PM:-0}" = 1 ]; then
  timeout 300 "$NCU" --graph-profiling graph --profile-from-start off --section PmSampling --clock-control none \
    -o "$OUT/pm" -f $B/kvr_cuda_bench --gemv_bench 0 --floors 0 --prefill "" --attn "" --decode "$CTX" \
    --profile_step 1 ${BENCH_ARGS:-} > "$OUT/pm.log" 2>&1
  echo "pm rc=$?"
  python3 tools/pm_sampling_dump.py "$OUT/pm.ncu-rep" "$OUT/pm" > /dev/null && python3 tools/pm_decode_layers.py "$OUT/pm/series.csv" 10
fi
