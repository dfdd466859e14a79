"""Trains kvr's demo model, models/kvr-demo: a small Llama (Llama 2 tokenizer, 32000 tokens) on the
King James Bible, and records the reference output that tests/demo checks kvr against.

Corpus (on a machine with the Debian packages bible-kjv and bible-kjv-text, and kvr-tokenize):
    models/prepare_demo.sh --corpus .carry/demo      # -> .carry/demo/kjv_tokens.bin (uint16)
Training (on the GPU machine, with the PyTorch and transformers installed there):
    python3 models/train_demo.py --tokens .carry/demo/kjv_tokens.bin \
        --tokenizer models/kvr-demo/tokenizer.json --out /tmp/kvr-demo

Every chapter is one document: <s> followed by its verses, joined by spaces, without verse
numbers. One chapter in 50 (chapters 25, 75, 125, ...) is held out for validation; --keep says
whether the last step's weights are saved (default) or those with the best validation loss. --steps 0 sizes the run to --time_budget seconds from
the speed of the first steps (the step count it chose is recorded, so --steps N repeats it).

The folder written: config.json, generation_config.json, model.safetensors (bf16, as
save_pretrained writes it), training.json (settings, losses, timings) and reference.json: for
each prompt, the prompt ids, transformers' float32 logits of the prompt's last token, the greedy
continuation and its top-1 margins, computed on the CPU by transformers' own implementation
(attn_implementation="eager") on the saved bf16 weights read back as float32.
"""
import argparse, copy, json, math, os, time

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

PROMPTS = [
    "In the beginning",
    "And the LORD said unto Moses,",
    "Blessed are the",
    "The kingdom of heaven is like",
]
NEW_TOKENS = 48


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", required=True)
    p.add_argument("--tokenizer", default="", help="tokenizer.json, to encode the prompts and decode samples")
    p.add_argument("--out", required=True)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--kv_heads", type=int, default=1)
    p.add_argument("--intermediate", type=int, default=448)
    p.add_argument("--context", type=int, default=512, help="max_position_embeddings and training length")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min_lr_ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=1000, help="0: as many as fit --time_budget")
    p.add_argument("--time_budget", type=float, default=120.0, help="seconds of training when --steps 0")
    p.add_argument("--max_steps", type=int, default=3000, help="cap on the steps --steps 0 picks")
    p.add_argument("--keep", choices=["best", "final"], default="final",
                   help="weights to save: the last step's, or those of the best validation loss")
    p.add_argument("--eval_every", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args()


def split_chapters(ids):
    """Returns (train, val) token streams; each chapter starts with <s> (id 1)."""
    starts = (ids == 1).nonzero().flatten().tolist() + [ids.numel()]
    train, val = [], []
    for i in range(len(starts) - 1):
        (val if i % 50 == 25 else train).append(ids[starts[i]:starts[i + 1]])
    return torch.cat(train), torch.cat(val), len(starts) - 1


def main():
    a = parse()
    torch.manual_seed(a.seed)
    dev = torch.device("cuda")
    raw = torch.frombuffer(bytearray(open(a.tokens, "rb").read()), dtype=torch.int16).to(torch.int64) & 0xFFFF
    train, val, chapters = split_chapters(raw)
    train, val = train.to(dev), val.to(dev)
    T = a.context
    print(f"corpus: {raw.numel()} tokens in {chapters} chapters; train {train.numel()}, val {val.numel()}", flush=True)

    cfg = LlamaConfig(
        vocab_size=32000, hidden_size=a.hidden, intermediate_size=a.intermediate, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, max_position_embeddings=T,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, hidden_act="silu",
        attention_dropout=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=None)
    model = LlamaForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params} parameters ({n_params - 32000 * a.hidden} outside the embedding)", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    g = torch.Generator(device=dev)
    g.manual_seed(a.seed)

    val_windows = torch.stack([val[i:i + T + 1] for i in range(0, val.numel() - T - 1, T)])

    def lm_loss(x):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x[:, :-1]).logits
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))

    @torch.no_grad()
    def evaluate():
        model.eval()
        losses = [lm_loss(val_windows[i:i + 32]).item() * val_windows[i:i + 32].size(0)
                  for i in range(0, val_windows.size(0), 32)]
        model.train()
        return sum(losses) / val_windows.size(0)

    def lr_at(step, total):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        t = min(1.0, (step - a.warmup) / max(1, total - a.warmup))
        return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    total = a.steps if a.steps > 0 else 10 ** 9
    best = (float("inf"), -1, None)
    history, recent = [], []
    t0 = time.time()
    step = 0
    while step < total:
        if a.steps == 0 and step == 30:  # size the run from the speed of steps 10..29
            per_step = (time.time() - t_probe) / 20
            total = max(200, min(a.max_steps, int(a.time_budget / per_step)))
            print(f"auto steps: {per_step * 1e3:.1f} ms/step -> {total} steps", flush=True)
        if step == 10:
            torch.cuda.synchronize()
            t_probe = time.time()
        for grp in opt.param_groups:
            grp["lr"] = lr_at(step, total if total < 10 ** 9 else 1000)
        starts = torch.randint(0, train.numel() - T - 1, (a.batch,), device=dev, generator=g)
        x = train[starts[:, None] + torch.arange(T + 1, device=dev)]
        loss = lm_loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        recent.append(loss.detach())
        if step % a.eval_every == 0 or step == total:
            tl = torch.stack(recent).mean().item()
            recent = []
            vl = evaluate()
            history.append({"step": step, "train_loss": round(tl, 4), "val_loss": round(vl, 4),
                             "seconds": round(time.time() - t0, 1)})
            print(history[-1], flush=True)
            if vl < best[0]:
                best = (vl, step, copy.deepcopy(model.state_dict()))
    torch.cuda.synchronize()
    train_s = time.time() - t0
    kept = step
    if a.keep == "best":
        model.load_state_dict(best[2])
        kept = best[1]
    final_val = evaluate()
    print(f"kept step {kept}: val loss {final_val:.4f} (best {best[0]:.4f} at step {best[1]}); "
          f"{step} steps in {train_s:.1f} s", flush=True)

    os.makedirs(a.out, exist_ok=True)
    model.generation_config.do_sample = False
    model.generation_config.bos_token_id = 1
    model.generation_config.eos_token_id = 2
    model.to(torch.bfloat16).save_pretrained(a.out)
    info = {
        "transformers": transformers.__version__, "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0), "parameters": n_params,
        "settings": {k: v for k, v in vars(a).items() if k not in ("tokens", "tokenizer", "out")},
        "steps_run": step, "tokens_per_step": a.batch * T, "train_seconds": round(train_s, 1),
        "corpus_tokens": raw.numel(), "train_tokens": train.numel(), "val_tokens": val.numel(),
        "epochs": round(step * a.batch * T / train.numel(), 2),
        "kept_step": kept, "val_loss": round(final_val, 4),
        "final_train_loss": history[-1]["train_loss"], "best_val_loss": round(best[0], 4), "best_val_step": best[1], "history": history,
    }
    json.dump(info, open(os.path.join(a.out, "training.json"), "w"), indent=1)

    # Reference: transformers, float32 on the CPU, from the saved folder.
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    ref = AutoModelForCausalLM.from_pretrained(a.out, dtype=torch.float32, attn_implementation="eager").eval()
    tok = None
    if a.tokenizer:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(a.tokenizer)
    cases = []
    for text in PROMPTS:
        prompt = tok.encode(text).ids if tok else None
        with torch.no_grad():
            out = ref(input_ids=torch.tensor([prompt]), use_cache=True)
            prompt_logits = out.logits[0, -1].clone()
            ids, margins = [], []
            logits = prompt_logits
            for _ in range(NEW_TOKENS):
                top2 = torch.topk(logits, 2)
                nxt = int(top2.indices[0])
                ids.append(nxt)
                margins.append(float(top2.values[0] - top2.values[1]))
                if nxt == 2:
                    break
                out = ref(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
                logits = out.logits[0, -1]
            gen = ref.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False)[0, len(prompt):].tolist()
        case = {"prompt": text, "prompt_ids": prompt, "greedy_ids": ids,
                "greedy_text": tok.decode(prompt + ids, skip_special_tokens=True) if tok else None,
                "generate_agrees": gen == ids, "min_margin": round(min(margins), 5),
                "margins": [round(m, 5) for m in margins],
                "prompt_logits": [round(float(v), 5) for v in prompt_logits]}
        print(f"{text!r}: min margin {case['min_margin']}, generate agrees {case['generate_agrees']}\n  "
              f"{case['greedy_text']}", flush=True)
        cases.append(case)
    json.dump({"model": "kvr-demo", "transformers": transformers.__version__, "torch": torch.__version__,
               "dtype": "float32", "device": "cpu", "attn_implementation": "eager",
               "new_tokens": NEW_TOKENS, "cases": cases},
              open(os.path.join(a.out, "reference.json"), "w"))


if __name__ == "__main__":
    main()
