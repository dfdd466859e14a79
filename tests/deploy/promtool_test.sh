#!/usr/bin/env bash
# deploy/prometheus: `promtool check config` (which also checks the rule files it names) and
# `promtool check rules` on every rule file. promtool comes with Debian's prometheus package.
set -euo pipefail
ROOT=${KVR_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
command -v promtool >/dev/null || { echo "promtool missing: run scripts/install-deps.sh" >&2; exit 1; }
out=$(promtool check config "$ROOT/deploy/prometheus/prometheus.yml" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
rules=("$ROOT"/deploy/prometheus/rules/*.yml)
[ -e "${rules[0]}" ] || { echo "no rule files in deploy/prometheus/rules" >&2; exit 1; }
promtool check rules "${rules[@]}"
# The config must find those rule files (a glob matching nothing is not an error to promtool).
if ! grep -q "SUCCESS: ${#rules[@]} rule files found" <<<"$out"; then
  echo "prometheus.yml's rule_files do not find the ${#rules[@]} file(s) of deploy/prometheus/rules" >&2
  exit 1
fi
echo "promtool: config and ${#rules[@]} rule file(s) valid"
