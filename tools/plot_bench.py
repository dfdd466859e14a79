"""Plots kvr-bench JSON: TTFT against context length per mode and GPU count, and the per-GPU
timeline (busy versus stalled) of one prefill. Run where matplotlib is installed:
    python3 tools/plot_bench.py bench.json bench.png
"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

data = json.load(open(sys.argv[1]))
rows = [r for r in data.get("results", []) if "ttft_ms" in r]
gpus = sorted({r["gpus"] for r in rows})
fig, axes = plt.subplots(1, len(gpus) + (1 if "timeline" in data else 0), figsize=(6 * (len(gpus) + 1), 4.5))
axes = axes if hasattr(axes, "__len__") else [axes]
for ax, p in zip(axes, gpus):
    for mode in sorted({r["mode"] for r in rows if r["gpus"] == p}):
        pts = sorted((r["ctx"], r["ttft_ms"]) for r in rows if r["gpus"] == p and r["mode"] == mode)
        ax.plot([c for c, _ in pts], [t for _, t in pts], marker="o", label=mode)
    ax.set_xscale("log", base=2); ax.set_yscale("log")
    ax.set_xlabel("context (tokens)"); ax.set_ylabel("TTFT (ms)")
    ax.set_title(f"{data['shape']} on {p}x {data['card']} ({data['link']})"); ax.legend(fontsize=8)
if "timeline" in data:
    ax = axes[-1]; tl = data["timeline"]
    for i, w in enumerate(tl["workers"]):
        ax.barh(i, w["busy_ms"], color="tab:blue", label="busy" if i == 0 else None)
        ax.barh(i, w["stall_ms"], left=w["busy_ms"], color="tab:red", label="stalled on K/V" if i == 0 else None)
        ax.text(1, i, f"GPU {w['gpu']} [{w['chunk'][0]},{w['chunk'][1]})", va="center", fontsize=8, color="white")
    ax.set_xlabel("ms"); ax.set_yticks([]); ax.legend(fontsize=8)
    ax.set_title(f"kvr-s timeline, C={tl['ctx']}, {tl['gpus']} GPUs, TTFT {tl['ttft_ms']:.1f} ms")
fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)
