#!/usr/bin/env python3
"""Whole-model check of the CUDA backend against Hugging Face transformers, on the GPU machine.

For each architecture, a random-weight model at the real 7B widths (Llama 2 7B, Llama 3 8B with
GQA and llama3 rope scaling, Mistral 7B with its 4096 sliding window, Falcon 7B with multi-query
attention, LayerNorm, GELU and parallel attention/MLP) is built by transformers on the GPU with
--layers decoder layers (default 32, the real depth: about 35 s a model on an H200),
saved with save_pretrained as bf16 safetensors under /tmp, and run
  - by transformers in bf16 (sdpa attention): logits of a 4096-token random prompt's last
    position, then 32 greedy tokens (generate, do_sample=False) with their logits;
  - by transformers in fp32 on the same weights: the prompt's last logits (the high-precision
    reference);
  - by tools/kvr_cuda_check on the saved folder: the same prompt as one chunk, then 32 decode
    steps fed transformers' greedy tokens (teacher forcing), giving the logits of each step.
transformers initializes every norm's weights to 1 (and LayerNorm biases to 0); with --norms random
(the default) they are drawn instead, weights uniform in [0.5, 1.5] and biases in [-0.1, 0.1], so
that a norm weight dropped or applied in the wrong place shows.
Pass criteria (stated bf16 tolerance: ours may not be much further from the fp32 reference than
transformers' own bf16 run is):
  - prompt logits: ||ours - fp32|| / ||fp32|| <= 2 * ||hf_bf16 - fp32|| / ||fp32|| + 0.01, and
    max |ours - fp32| <= 1.5 * max |hf_bf16 - fp32|;
    (until 2026-11-27 the second test was max |ours - hf_bf16| <= 0.25 * std(hf_bf16 logits),
    set on 4-layer models; at the real 32 layers two bf16 runs drift apart further than either
    drifts from fp32, and that test failed for the Llama family while ours was the closer of
    the two to fp32 (docs/benchmarks.md), so the test is now against the fp32 reference; the
    old quantity is still reported);
  - greedy: at each of the 32 steps our argmax equals transformers' token (then a free-running
    greedy decode of ours reproduces the same 32 tokens), except at near-ties, reported
    separately, where transformers' own top-2 margin is below the measured max |ours - hf| of
    that step.
Writes one JSON with every number; exits 1 if any model fails.
"""
import argparse, gc, json, os, shutil, subprocess, sys, time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--bin", required=True, help="path of kvr_cuda_check")
p.add_argument("--models", default="llama2-7b,llama3-8b,mistral-7b,falcon-7b")
p.add_argument("--layers", type=int, default=32)
p.add_argument("--prompt", type=int, default=4096)
p.add_argument("--new", type=int, default=32)
p.add_argument("--out", default="hf_compare.json")
p.add_argument("--norms", choices=["random", "ones"], default="random",
               help="norm weights and biases: drawn at random (default) or transformers' init")
p.add_argument("--tmp", default="/dev/shm/kvr_hf" if os.path.isdir("/dev/shm") else "/tmp/kvr_hf",
               help="where the saved checkpoints go (one at a time; 13-16 GB at full depth)")
a = p.parse_args()


def config(name, layers):
    if name == "llama2-7b":
        return transformers.LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                                        num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=32,
                                        max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                                        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    if name == "llama3-8b":
        return transformers.LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                                        num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                                        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0,
                                                      "original_max_position_embeddings": 8192},
                                        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)
    if name == "mistral-7b":
        return transformers.MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                          num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8,
                                          max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
                                          sliding_window=4096, tie_word_embeddings=False)
    if name == "falcon-7b":
        return transformers.FalconConfig(vocab_size=65024, hidden_size=4544, num_hidden_layers=layers,
                                         num_attention_heads=71, multi_query=True, new_decoder_architecture=False,
                                         parallel_attn=True, bias=False, alibi=False, layer_norm_epsilon=1e-5,
                                         rope_theta=10000.0, max_position_embeddings=8192,
                                         bos_token_id=11, eos_token_id=11)
    raise SystemExit("unknown model " + name)


def rel(x, ref):
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


results, ok_all = [], True


def dump():  # after every model, so a run cut short keeps what it finished
    json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
               "device": torch.cuda.get_device_name(0), "results": results}, open(a.out, "w"), indent=1)


for name in a.models.split(","):
    t0 = time.time()
    print(f"{name}: transformers builds a random {a.layers}-layer model, saves it and runs it", flush=True)
    torch.manual_seed(0)
    cfg = config(name, a.layers)
    cfg.torch_dtype = torch.bfloat16
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    if a.norms == "random":
        gn = torch.Generator(device="cpu").manual_seed(99)
        with torch.no_grad():
            for mod in model.modules():
                if "norm" not in type(mod).__name__.lower():
                    continue
                for pname, lo, hi in (("weight", 0.5, 1.5), ("bias", -0.1, 0.1)):
                    prm = getattr(mod, pname, None)
                    if isinstance(prm, torch.nn.Parameter):
                        r = torch.rand(prm.shape, generator=gn) * (hi - lo) + lo
                        prm.copy_(r.to(prm.dtype).to(prm.device))
    d = os.path.join(a.tmp, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    V = cfg.vocab_size
    g = torch.Generator(device="cpu").manual_seed(1234)
    ids = torch.randint(0, V, (a.prompt,), generator=g)
    with torch.no_grad():
        x = ids[None].cuda()
        hf_last = model(x).logits[0, -1].float().cpu().numpy()
        gen = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.new, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                             eos_token_id=None, min_new_tokens=a.new)
        hf_tokens = gen.sequences[0, a.prompt:].tolist()
        hf_step_logits = np.stack([l[0].float().cpu().numpy() for l in gen.logits])  # (new, V)
        m32 = model.float()
        ref_last = m32(x).logits[0, -1].double().cpu().numpy()
    del model, m32, gen
    gc.collect(); torch.cuda.empty_cache()
    with open(os.path.join(d, "prompt.txt"), "w") as f:
        f.write(" ".join(map(str, ids.tolist())))
    with open(os.path.join(d, "force.txt"), "w") as f:
        f.write(" ".join(map(str, hf_tokens)))
    t_hf = time.time() - t0
    out_json, out_bin = os.path.join(d, "ours.json"), os.path.join(d, "ours.bin")
    cmd = [a.bin, "--model", d, "--tokens", os.path.join(d, "prompt.txt"), "--decode", str(a.new - 1),
           "--force", os.path.join(d, "force.txt"), "--out", out_json, "--logits", out_bin]
    t1 = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    r = {"model": name, "layers": a.layers, "prompt": a.prompt, "new_tokens": a.new, "norms": a.norms,
         "hf_seconds": round(t_hf, 1)}
    if run.returncode != 0:
        r.update(ok=False, error=run.stderr[-2000:])
        print(f"{name}: kvr_cuda_check failed:\n{run.stderr[-2000:]}", flush=True)
        results.append(r); ok_all = False
        shutil.rmtree(d, ignore_errors=True)
        continue
    ours_meta = json.load(open(out_json))
    ours = np.fromfile(out_bin, dtype=np.float32).reshape(-1, V)  # (new, V): row 0 = prompt
    ours_last = ours[0].astype(np.float64)
    e_ours_ref = rel(ours_last, ref_last)
    e_hf_ref = rel(hf_last.astype(np.float64), ref_last)
    e_ours_hf = rel(ours_last, hf_last)
    std = float(hf_last.std())
    maxabs = float(np.abs(ours_last - hf_last).max())
    maxabs_ours_ref = float(np.abs(ours_last - ref_last).max())
    maxabs_hf_ref = float(np.abs(hf_last.astype(np.float64) - ref_last).max())
    prompt_ok = e_ours_ref <= 2 * e_hf_ref + 0.01 and maxabs_ours_ref <= 1.5 * maxabs_hf_ref
    agree, near_ties, bad, step_err = 0, [], [], []
    for s in range(a.new):
        ours_row, hf_row = ours[s], hf_step_logits[s]
        step_err.append(round(rel(ours_row.astype(np.float64), hf_row.astype(np.float64)), 5))
        mine = int(ours_row.argmax())
        if mine == hf_tokens[s]:
            agree += 1
            continue
        top2 = np.sort(hf_row)[-2:]
        margin = float(top2[1] - top2[0])
        err = float(np.abs(ours_row - hf_row).max())
        (near_ties if margin < err else bad).append({"step": s, "hf": hf_tokens[s], "ours": mine,
                                                     "hf_margin": margin, "max_abs_err": err})
    greedy_ok = not bad
    ok = prompt_ok and greedy_ok
    ok_all &= ok
    r.update(ok=ok, prompt_ok=prompt_ok, greedy_ok=greedy_ok,
             relerr_ours_vs_fp32=e_ours_ref, relerr_hfbf16_vs_fp32=e_hf_ref, relerr_ours_vs_hfbf16=e_ours_hf,
             maxabs_ours_vs_hfbf16=maxabs, maxabs_ours_vs_fp32=maxabs_ours_ref,
             maxabs_hfbf16_vs_fp32=maxabs_hf_ref, hf_logit_std=std, greedy_agree=agree, near_ties=near_ties,
             disagreements=bad, step_relerr_vs_hfbf16=step_err, ours_prefill_ms=ours_meta.get("prefill_ms"),
             ours_load_ms=ours_meta.get("load_ms"), ours_memory=ours_meta.get("memory"),
             ours_seconds=round(time.time() - t1, 1), config=ours_meta.get("config"))
    results.append(r)
    dump()
    print(f"{name} ({a.layers} layers): {'PASS' if ok else 'FAIL'}  prompt logits rel err vs fp32: ours "
          f"{e_ours_ref:.4f}, HF bf16 {e_hf_ref:.4f}; max|d| vs fp32: ours {maxabs_ours_ref:.4f}, HF bf16 "
          f"{maxabs_hf_ref:.4f}; ours vs HF bf16 {e_ours_hf:.4f}, max|d| {maxabs:.4f} "
          f"(logit std {std:.3f}); greedy {agree}/{a.new} agree, near-ties {len(near_ties)}, "
          f"mismatches {len(bad)}; step rel err max {max(step_err):.4f}", flush=True)
    shutil.rmtree(d, ignore_errors=True)
dump()
sys.exit(0 if ok_all else 1)
