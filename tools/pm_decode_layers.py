# Where a decode step's time goes, from tools/pm_sampling_dump.py's series of one profiled CUDA
# graph (a decode step of kvr_cuda_bench --profile_step 1):
#   python3 tools/pm_decode_layers.py series.csv [layer]
# For each kernel kind: how far it moves the step's end (the "advance": its end minus the latest
# end before it), and the DRAM read throughput (% of peak) while it does; then one layer's kernels
# and the PM samples (about 3 us each) across it, with the DRAM throughput, CTAs launched and SM
# activity. The kernel kinds assume the Llama family's decode step as the CUDA runner captures
# it with fused rotary: embedding, 32 x [norm, QKV, attention, O, norm, gate-up, SiLU, down],
# final norm, lm_head (259 kernels); another layout is refused.
import sys
d = {}
for line in open(sys.argv[1]):
    k, *v = line.rstrip("\n").split(",")
    d[k] = v
def ser(name):
    return [float(x) for x in d[name]]
st = [int(x) for x in d["profiler__timestamp_workload_start_0.corr"]]
en = [int(x) for x in d["profiler__timestamp_workload_end_0.corr"]]
rd = ser("FBSP.TriageCompute.dramc__read_throughput.avg.pct_of_peak_sustained_elapsed")
ts = [int(x) for x in d["FBSP.TriageCompute.dramc__read_throughput.avg.pct_of_peak_sustained_elapsed.corr"]]
t0 = min(st)
n = len(st)
kinds = ["embed"] + ["norm1", "qkv", "attn", "o", "norm2", "gateup", "silu", "down"] * 32 + ["normf", "lmhead"]
if len(kinds) != n:
    sys.exit(f"{n} kernels: not the 32-layer Llama decode step this script names")
# sample k covers (ts[k-1], ts[k]] with rd[k] % of peak
samples = [(ts[k-1], ts[k], rd[k]) for k in range(2, len(ts)) if ts[k-1] > 0]
def dram_between(a, b):
    tot = 0.0
    for s0, s1, r in samples:
        lo, hi = max(a, s0), min(b, s1)
        if hi > lo: tot += (hi - lo) * r / 100.0
    return tot  # ns at peak
peak_frac_total = dram_between(t0, max(en)) / (max(en) - t0)
print(f"graph {n} kernels, first start to last end {(max(en)-t0)/1e3:.1f} us; mean DRAM read {100*peak_frac_total:.1f}% of peak")
# per kind: advance of end times, and the DRAM in that advance window
agg = {}
pe = t0
for i in range(n):
    a, b = pe, max(pe, en[i])
    adv = b - a
    dr = dram_between(a, b)
    x = agg.setdefault(kinds[i], [0, 0, 0.0, 0])
    x[0] += 1; x[1] += adv; x[2] += dr; x[3] += en[i] - st[i]
    pe = b
tot_adv = sum(x[1] for x in agg.values())
print("kind: count, advance us (sum), mean advance us, DRAM read % of peak in its window, mean start-to-end us")
for k, (c, adv, dr, se) in agg.items():
    print(f"  {k:7s} {c:3d} {adv/1e3:8.1f} {adv/c/1e3:7.2f} {100*dr/max(adv,1):6.1f}%  {se/c/1e3:7.2f}")
print(f"  total advance {tot_adv/1e3:.1f} us")
print(f"layer {int(sys.argv[2]) if len(sys.argv) > 2 else 10}, PM samples: end time from the layer's start, DRAM read, CTAs launched, SM active cycles")
L = int(sys.argv[2]) if len(sys.argv) > 2 else 10
nm = "FBSP.TriageCompute.dramc__read_throughput.avg.pct_of_peak_sustained_elapsed"
rd = [float(x) for x in d[nm]]; ts = [int(x) for x in d[nm + ".corr"]]
ctas = [float(x) for x in d["FE_B.TriageCompute.gr__ctas_launched_realtime.sum"]]
act = [float(x) for x in d["TPC.TriageCompute.sm__cycles_active.avg"]]
base = 1 + L * 8
t0 = en[base - 1]
ends = [(en[i], kinds[i]) for i in range(base, base + 8)]
for k in range(1, len(ts)):
    if ts[k] <= t0 - 3000 or ts[k - 1] > en[base + 7] + 3000: continue
    mark = " ".join(f"<{n} ends +{(e - ts[k-1])/1e3:.2f}>" for e, n in ends if ts[k-1] < e <= ts[k])
    print(f"{(ts[k]-t0)/1e3:8.2f} us  dram {rd[k]:5.1f}%  ctas {ctas[k]:6.0f}  sm_active {act[k]:7.0f} {mark}")
