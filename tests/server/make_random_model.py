#!/usr/bin/env python3
"""Writes a servable Hugging Face model folder with random bf16 weights at a real model's shape,
for serving and load tests on the GPU machine (no download, no checkpoint):

    make_random_model.py --shape llama-7b --tokenizer DIR --out /tmp/llama-7b-random

config.json as transformers writes it for LlamaForCausalLM; weights drawn on the GPU when one is
present (N(0, 0.02), norms 1) and saved as model.safetensors; tokenizer.json and
tokenizer_config.json copied from --tokenizer (a Llama 2 tokenizer fits the 32,000-token
vocabulary of llama-7b). Prints progress per tensor group.
"""
import argparse
import json
import os
import shutil
import time

import torch
from safetensors.torch import save_file

SHAPES = {
    "llama-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000, rope_theta=10000.0),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-7b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=0, help="override the layer count")
    ap.add_argument("--max-position", type=int, default=32768)
    ap.add_argument("--tokenizer", required=True, help="folder with tokenizer.json (+ tokenizer_config.json)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    s = dict(SHAPES[a.shape])
    if a.layers:
        s["num_hidden_layers"] = a.layers
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
               max_position_embeddings=a.max_position, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
               torch_dtype="bfloat16", attention_bias=False, mlp_bias=False, **s)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)
    C, F, V, H, Hkv = s["hidden_size"], s["intermediate_size"], s["vocab_size"], s["num_attention_heads"], \
        s["num_key_value_heads"]
    D = C // H

    def rnd(*shape):
        return (torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

    t0 = time.time()
    w = {"model.embed_tokens.weight": rnd(V, C), "lm_head.weight": rnd(V, C),
         "model.norm.weight": torch.ones(C, dtype=torch.bfloat16)}
    for l in range(s["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "self_attn.q_proj.weight"] = rnd(H * D, C)
        w[p + "self_attn.k_proj.weight"] = rnd(Hkv * D, C)
        w[p + "self_attn.v_proj.weight"] = rnd(Hkv * D, C)
        w[p + "self_attn.o_proj.weight"] = rnd(C, H * D)
        w[p + "mlp.gate_proj.weight"] = rnd(F, C)
        w[p + "mlp.up_proj.weight"] = rnd(F, C)
        w[p + "mlp.down_proj.weight"] = rnd(C, F)
        w[p + "input_layernorm.weight"] = torch.ones(C, dtype=torch.bfloat16)
        w[p + "post_attention_layernorm.weight"] = torch.ones(C, dtype=torch.bfloat16)
        if l % 8 == 7:
            print(f"make_random_model: {l + 1}/{s['num_hidden_layers']} layers drawn ({time.time() - t0:.1f} s)",
                  flush=True)
    save_file(w, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = os.path.join(a.tokenizer, name)
        if os.path.exists(src):
            shutil.copy(src, a.out)
    n = sum(t.numel() for t in w.values())
    print(f"make_random_model: {a.out}: {a.shape}, {n / 1e9:.2f} B parameters, {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
