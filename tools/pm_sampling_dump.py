# Dumps every instanced metric of an Nsight Compute report (PM-sampling series with their
# timestamps, and per-kernel start/end times of a profiled graph) to out_dir/series.csv, and the
# metric names to out_dir/names.txt. Runs on the GPU machine, where Nsight Compute's Python module
# (ncu_report) is installed:
#   ncu --graph-profiling graph --profile-from-start off --section PmSampling --clock-control none \
#       -o rep kvr_cuda_bench --shape llama2-7b --gemv_bench 0 --floors 0 --prefill "" --attn "" \
#       --decode 4096 --profile_step 1
#   python3 tools/pm_sampling_dump.py rep.ncu-rep out_dir
#   python3 tools/pm_decode_layers.py out_dir/series.csv      (where the step's time goes)
import sys, glob, os
sys.path += glob.glob('/usr/local/cuda*/nsight-compute*/extras/python') + glob.glob('/opt/nvidia/nsight-compute/*/extras/python') + glob.glob('/usr/local/cuda/extras/python')
import ncu_report
ctx = ncu_report.load_report(sys.argv[1])
out = sys.argv[2]
os.makedirs(out, exist_ok=True)
for ri in range(ctx.num_ranges()):
    rng = ctx.range_by_idx(ri)
    for ai in range(rng.num_actions()):
        a = rng.action_by_idx(ai)
        names = list(a.metric_names())
        print("action", ri, ai, a.name()[:100], "metrics", len(names))
        with open(os.path.join(out, "names.txt"), "w") as f:
            for n in names:
                m = a.metric_by_name(n)
                k = m.num_instances()
                f.write(f"{n}\t{k}\t{m.metric_type()}\t{m.metric_subtype() if hasattr(m,'metric_subtype') else ''}\n")
        with open(os.path.join(out, "series.csv"), "w") as f:
            for n in names:
                m = a.metric_by_name(n)
                k = m.num_instances()
                if k < 10: continue
                try:
                    vals = [m.as_double(j) for j in range(k)]
                except Exception as e:
                    vals = []
                f.write(n + "," + ",".join(f"{v:.4g}" for v in vals) + "\n")
                try:
                    c = m.correlation_ids()
                    if c is not None and c.num_instances() == k:
                        f.write(n + ".corr," + ",".join(str(c.as_uint64(j)) for j in range(k)) + "\n")
                except Exception as e:
                    f.write(n + ".corr_err," + str(e).replace(",", ";") + "\n")
                print(f"  {n}: {k} instances")
