#!/usr/bin/env python3
"""Compares kvr's tokenizer with Hugging Face `tokenizers` on a varied multilingual corpus.

Run where Python `tokenizers` is installed (no network needed):

  python3 tests/tokenizer/hf_compare.py --tokenizer /models/Llama-3-8B \
      --kvr-tokenize build/engine/tokenizer/kvr-tokenize

--tokenizer is a model folder holding tokenizer.json. The corpus is generated here (seeded, our
own sentences in many scripts, plus emoji, code, numbers and odd whitespace); --corpus FILE
uses a UTF-8 file instead. Checks, without special tokens:
  1. every line encodes to identical ids (kvr-tokenize --lines vs tokenizers.encode per line);
  2. the whole corpus as one document encodes to identical ids;
  3. speed: single-call encode of the document, best of --repeat runs, tokens/s for both.
Exit status 0 only if all ids match.
"""
import argparse
import os
import random
import subprocess
import sys
import tempfile
import time

FRAGMENTS = [
    # English
    "The scheduler decides which request runs next, and the workers only execute the plan.",
    "We measured the latency twice: once at noon and once after midnight, when it's quiet.",
    "I'VE SEEN IT, YOU'RE SURE, THEY'LL COME, WE'D GO, SHE'S HERE, IT'S DONE, I'M OK",
    "don't won't can't shouldn't y'all o'clock rock'n'roll",
    # German, French, Spanish, Portuguese, Italian, Polish, Turkish, Vietnamese
    "Die Größe der Zwischenspeicher hängt von der Modellbreite ab; Übergänge sind schnell.",
    "Le système répartit le préremplissage entre plusieurs cartes, c'est très efficace.",
    "¿Dónde está la biblioteca? ¡Qué día tan soleado! El niño comió piña.",
    "A configuração padrão não exige conexão com a internet, então funciona offline.",
    "Perché la cache è così importante? Perché evita di ricalcolare l'attenzione.",
    "Zażółć gęślą jaźń — źdźbło trawy w Łodzi.",
    "Işık hızında çalışan sunucular için ölçümler yapıldı; sonuçlar şaşırtıcı.",
    "Tiếng Việt có nhiều dấu: người, được, những, trường hợp đặc biệt.",
    # Cyrillic, Greek, Armenian, Georgian
    "Сервер обрабатывает запросы параллельно, а планировщик распределяет работу.",
    "Ο διακομιστής απαντά γρήγορα· η μνήμη είναι επαρκής για μεγάλα μοντέλα.",
    "Բարեւ աշխարհ, սա փորձարկման տեքստ է։",
    "გამარჯობა მსოფლიო, ეს არის სატესტო ტექსტი.",
    # CJK
    "服务器把长提示分成若干块，在多张显卡上并行预填充。",
    "東京の天気は晴れです。今日は新しいモデルを試してみましょう！",
    "캐시가 가득 차면 가장 오래된 블록을 먼저 비웁니다.",
    "繁體中文與简体中文混合：資料、资料；電腦、电脑。",
    # RTL and Indic, Thai, others
    "مرحبا بالعالم، هذا نص تجريبي يحتوي على أرقام ١٢٣٤٥ وعلامات ترقيم؟",
    "שלום עולם, זהו טקסט לבדיקה עם מספרים 2024 וסימנים!",
    "नमस्ते दुनिया, यह एक परीक्षण वाक्य है। संख्याएँ: १२३४५",
    "வணக்கம் உலகம், இது ஒரு சோதனை வாக்கியம்.",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ ทำให้การตัดคำยาก",
    "ሰላም ለዓለም፣ ይህ የሙከራ ጽሑፍ ነው።",
    "Salamu, dunia! Habari za asubuhi? Ninafurahi kukuona.",
    # Emoji and symbols
    "Launch 🚀🚀🚀 done ✅ — team 👩‍💻👨‍💻 celebrates 🎉 in 🇯🇵 and 🇧🇷 👍🏽",
    "Family: 👨‍👩‍👧‍👦 flags: 🏳️‍🌈 keycap: 1️⃣ math: ∑ ∫ √ ≤ ≥ ≠ ∞ → ⇒ ©®™",
    # Code and numbers
    "def f(x):\treturn [i**2 for i in range(x) if i % 3 == 0]  # squares",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; } // dot product",
    "{\"id\": 12345, \"price\": 3.14159, \"tags\": [\"a\", \"b\"], \"ok\": true}",
    "Version 1.2.3-rc4, build 20240517, hash 9f86d081884c7d659a2feaa0c55ad015",
    "3 33 333 3333 33333 333333 1,000,000 0.000001 -42 +7 1e-9 ½ ⅔ ² ³ Ⅻ",
    "https://example.com/path?query=value&x=1#frag user@example.org",
    # Whitespace and odd characters
    "tabs\tand\t\ttabs, non\u00a0breaking\u00a0spaces, ideographic\u3000space",
    "combining e\u0301 vs é, long s \u017f, Kelvin \u212a, zero\u200bwidth, soft\u00adhyphen",
    "    indented line with trailing spaces    ",
    "!!!??? ... --- === ''' \"\"\" ``` ((( ))) [[[ ]]] <<< >>> |||",
]


def make_corpus(seed=1234, lines=4000):
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        k = rng.randint(1, 4)
        parts = [rng.choice(FRAGMENTS) for _ in range(k)]
        sep = rng.choice([" ", "  ", " ", "\t", " \u00a0", "   "])
        line = sep.join(parts)
        if rng.random() < 0.1:
            line = " " + line
        if rng.random() < 0.1:
            line = line + rng.choice([" ", "  ", "\t"])
        out.append(line)
    return out


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="model folder with tokenizer.json")
    ap.add_argument("--kvr-tokenize", default="build/engine/tokenizer/kvr-tokenize")
    ap.add_argument("--corpus", help="UTF-8 text file (default: generated)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    from tokenizers import Tokenizer  # noqa: imported late so --help works without it

    hf = Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    if args.corpus:
        with open(args.corpus, encoding="utf-8") as f:
            lines = [l for l in f.read().split("\n") if "\r" not in l]
    else:
        lines = make_corpus()
    document = "\n".join(lines)

    with tempfile.TemporaryDirectory() as tmp:
        lines_path = os.path.join(tmp, "lines.txt")
        doc_path = os.path.join(tmp, "doc.txt")
        with open(lines_path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(l + "\n" for l in lines))
        with open(doc_path, "w", encoding="utf-8", newline="\n") as f:
            f.write(document)
        base = [args.kvr_tokenize, "--tokenizer", args.tokenizer]

        # 1. Per line.
        kvr_lines = run(base + ["--file", lines_path, "--lines", "--print-ids"]).stdout.decode().split("\n")
        mismatches = 0
        for i, line in enumerate(lines):
            want = hf.encode(line, add_special_tokens=False).ids
            got = [int(x) for x in kvr_lines[i].split()] if i < len(kvr_lines) else None
            if got != want:
                mismatches += 1
                if mismatches <= 5:
                    print(f"MISMATCH line {i}: {line!r}\n  hf : {want[:40]}\n  kvr: {(got or [])[:40]}")
        print(f"lines: {len(lines) - mismatches}/{len(lines)} identical")

        # 2. Whole document.
        want_doc = hf.encode(document, add_special_tokens=False).ids
        got_doc = [int(x) for x in run(base + ["--file", doc_path, "--print-ids"]).stdout.split()]
        doc_ok = got_doc == want_doc
        print(f"document: {len(want_doc)} tokens, {'identical' if doc_ok else 'DIFFERENT'}")

        # 3. Speed, single call on the document.
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            hf.encode(document, add_special_tokens=False)
            best = min(best, time.perf_counter() - t0)
        hf_tps = len(want_doc) / best
        out = run(base + ["--file", doc_path, "--bench", str(args.repeat)]).stdout.decode()
        # kvr reports the mean over repeats (incl. warm-up), a conservative figure.
        kvr_tps = float(out.split("tokens_per_s=")[1].split()[0])
        print(f"hf tokenizers: {hf_tps:,.0f} tokens/s (best of {args.repeat})")
        print(f"kvr:           {kvr_tps:,.0f} tokens/s (mean of {args.repeat})")
        print(f"ratio kvr/hf:  {kvr_tps / hf_tps:.2f}x")

    return 0 if mismatches == 0 and doc_ok else 1


if __name__ == "__main__":
    sys.exit(main())
