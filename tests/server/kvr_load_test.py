#!/usr/bin/env python3
"""kvr-load against kvrd on the CPU backend, and kvrd's KVR-P split-table partition.

1. kvrd (2 CPU workers, the tiny llama3 fixture) with --partition table:<a table without this
   setup>: kvrd logs that the table has no entry for its setup and plans with the cost model;
   kvr-load (4 streams x 2 requests, 40-token prompts, 3 new tokens) completes all 8, and its
   JSON records what each request saw.
2. A table with an entry for the setup kvrd logged ([30, 10] at 40 tokens), and --tsp_below 32:
   the plan of every 40-token request is the table's, interpolated (here: exactly) from it; every
   24-token request is prefilled as TSP (even split, all-gather) and completes.
Exit status 0 only if every check passes.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvr_test_lib as lib  # noqa: E402


def run_load(kvr_load, daemon, out, streams=4, per=2, tokens=40):
    r = subprocess.run([kvr_load, "--target", daemon.address, "--streams", str(streams), "--requests_per_stream",
                        str(per), "--prompt_tokens", str(tokens), "--max_tokens", "3", "--out", out],
                       capture_output=True, text=True, timeout=120)
    return r, (json.load(open(out)) if os.path.exists(out) else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvrd", required=True)
    ap.add_argument("--kvr-load", dest="kvr_load", required=True)
    ap.add_argument("--fixture", default="tests/fixtures/llama3")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kvr-load-test-")
    model = lib.make_model(args.fixture, os.path.join(work, "model"))
    failures = []

    def check(ok, what):
        print(("ok   " if ok else "FAIL ") + what, flush=True)
        if not ok:
            failures.append(what)

    other = os.path.join(work, "other.json")
    with open(other, "w") as f:
        json.dump({"entries": [{"setup": "some-model/8xH200/nvlink", "context": 100, "sizes": [60, 40]}]}, f)
    d = lib.Daemon(args.kvrd, model, work, ["--partition", "table:" + other], name="kvrd-fallback")
    setup = None
    try:
        d.start()
        log = d.read_log()
        m = re.search(r"has no searched split for (\S+); the cost model plans", log)
        check(m is not None, "kvrd says the table has no split for its setup and falls back to the cost model")
        setup = m.group(1) if m else None
        r, rep = run_load(args.kvr_load, d, os.path.join(work, "load1.json"))
        check(r.returncode == 0, f"kvr-load exits 0 ({r.returncode}): {r.stderr.strip()[-300:]}")
        s = rep["summary"] if rep else {}
        check(s.get("ok") == 8 and s.get("failed") == 0, f"8 of 8 requests ok: {s}")
        recs = rep["requests"] if rep else []
        check(all(x.get("prompt_tokens") == 40 and x.get("completion_tokens") == 3 and x.get("tokens") == 3
                  for x in recs), "every record: 40 prompt tokens, 3 generated, 3 streamed")
        check(all(x.get("plan", "").startswith("cost-model chain C=40 ") for x in recs),
              f"the cost model planned every request: {[x.get('plan') for x in recs][:2]}")
        check(all(len(x.get("workers", [])) == 2 for x in recs), "each record lists both workers' chunks")
        check("kvr-load: 8 ok, 0 failed" in r.stdout, "kvr-load prints its summary")
    finally:
        d.stop()

    if setup:
        table = os.path.join(work, "table.json")
        with open(table, "w") as f:
            json.dump({"entries": [{"setup": setup, "context": 40, "sizes": [30, 10]}]}, f)
        d2 = lib.Daemon(args.kvrd, model, work, ["--partition", "table:" + table, "--tsp_below", "32"],
                        name="kvrd-table")
        try:
            d2.start()
            check("searched splits for " + setup in d2.read_log(), "kvrd finds its setup in the table")
            r, rep = run_load(args.kvr_load, d2, os.path.join(work, "load2.json"), streams=2, per=2)
            recs = rep["requests"] if rep else []
            check(r.returncode == 0 and len(recs) == 4, f"4 requests ok with the table: rc {r.returncode}")
            check(all(re.match(r"table chain C=40 \[0,30\)@\d \[30,40\)@\d$", x.get("plan", "")) for x in recs),
                  f"every plan is the table's 30 + 10: {[x.get('plan') for x in recs][:2]}")
            r, rep = run_load(args.kvr_load, d2, os.path.join(work, "load3.json"), streams=2, per=2, tokens=24)
            recs = rep["requests"] if rep else []
            check(r.returncode == 0 and len(recs) == 4 and all(x.get("completion_tokens") == 3 for x in recs),
                  f"4 short requests ok under --tsp_below 32: rc {r.returncode}")
            check(all(re.match(r"even all-gather C=24 \[0,12\)@\d \[12,24\)@\d$", x.get("plan", "")) for x in recs),
                  f"every 24-token prompt is prefilled as TSP: {[x.get('plan') for x in recs][:2]}")
        finally:
            d2.stop()
    bad = subprocess.run([args.kvr_load, "--target", "127.0.0.1:1", "--streams", "1"], capture_output=True,
                         text=True, timeout=60)
    check(bad.returncode == 1 and "GetModelInfo on 127.0.0.1:1 failed" in bad.stderr,
          f"kvr-load without a server says so and exits 1: {bad.stderr.strip()[:200]}")
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
