#!/usr/bin/env python3
"""Makes a servable test model folder: the weights of a tiny fixture (vocab 256, linked, not
copied) plus a small byte-level BPE tokenizer.json that fits that vocabulary.

    make_test_model.py --fixture tests/fixtures/llama3 --out /tmp/kvr-test-model

The tokenizer: ids 0-2 are <unk>, <s> (BOS), </s> (EOS); then printable ASCII, space and newline
as GPT-2 byte-level characters; then merges of common English pairs and two-letter tokens up to
256 ids. Every id decodes to ASCII; printable ASCII text round-trips exactly.
"""
import argparse
import json
import os

MERGES = ["Ġ t", "h e", "Ġ a", "i n", "e r", "a n", "o n", "r e", "Ġt he", "Ġ s", "e n", "o u",
          "Ġ w", "a t", "Ġ o", "i s", "o r", "Ġ c", "e s", "Ġ b", "e d", "i t", "Ġ f", "a r",
          "Ġ m", "Ġ p", "in g", "n d", "Ġ i", "l l", "Ġ d", "o w", "Ġ h", "l e", "Ġo f", "a nd"]


def tokenizer_json():
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    chars = [chr(b) for b in range(0x21, 0x7F)] + ["Ġ", "Ċ"]  # GPT-2 bytes: ' ' -> Ġ, '\n' -> Ċ
    for c in chars:
        vocab[c] = len(vocab)
    merges = []
    for m in MERGES:
        a, b = m.split(" ")
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append(m)
    # Fill the rest of the 256 ids with two-letter tokens so that every id the model can emit
    # decodes to ASCII text.
    letters = "etaoinshrdlucmfwypvbgk"
    for a in letters:
        for b in letters:
            if len(vocab) >= 256:
                break
            if a + b not in vocab:
                vocab[a + b] = len(vocab)
                merges.append(a + " " + b)
    assert len(vocab) == 256, len(vocab)
    special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False,
                            "rstrip": False, "normalized": False, "special": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def make(fixture, out):
    os.makedirs(out, exist_ok=True)
    for name in os.listdir(fixture):
        if name.endswith(".safetensors") or name in ("config.json", "generation_config.json",
                                                     "model.safetensors.index.json"):
            dst = os.path.join(out, name)
            if os.path.lexists(dst):
                os.remove(dst)
            os.symlink(os.path.abspath(os.path.join(fixture, name)), dst)
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer_json(), f)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "add_bos_token": True, "add_eos_token": False}, f)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    print(make(a.fixture, a.out))
