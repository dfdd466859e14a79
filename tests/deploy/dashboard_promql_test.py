#!/usr/bin/python3
"""Every PromQL expression of every Grafana dashboard in deploy/grafana/dashboards, evaluated
against a real Prometheus that scrapes a real kvrd with the shipped scrape config.

    dashboard_promql_test.py KVRD [--model DIR] [--prometheus /usr/bin/prometheus]

KVRD NONE: kvrd was not built; exit 77 (skipped), or 1 in CI (CI=true).

Starts kvrd (CPU backend, 2 prefill workers, the tiny Llama 3 fixture, token-id prompts) and
Prometheus (deploy/prometheus/prometheus.yml with only the target addresses and the intervals
rewritten) on free loopback ports, sends traffic through the gRPC API (stubs generated from
proto/kvr/v1 at run time), then queries each panel target and each template variable through
Prometheus' HTTP API. An expression fails when it does not parse, returns no series, returns
only NaN, or lacks a label that its legend shows ({{label}}). The container health check
(deploy/kvrd/healthcheck.py) is exercised against the same kvrd.
"""
import argparse
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

ROOT = os.environ.get("KVR_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
# Grafana's built-in variables, as the test evaluates them (the scrape interval is 1 s).
BUILTINS = {"$__rate_interval": "1m", "$__interval": "5s", "$__range": "5m", "${__rate_interval}": "1m",
            "${__interval}": "5s", "${__range}": "5m"}
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    print(("ok    " if cond else "FAIL  ") + what, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, pred, timeout, proc=None, log=None):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail(log)}")
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}\n{tail(log)}")


def tail(path, n=40):
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def http_json(url, data=None):
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, no proxy
    with opener.open(urllib.request.Request(url, data=body), timeout=10) as r:
        return json.loads(r.read())


def prom_query(base, expr):
    try:
        return http_json(base + "/api/v1/query", {"query": expr})
    except urllib.error.HTTPError as e:  # 400 for a parse error, with a JSON body
        return json.loads(e.read() or b"{}") or {"status": "error", "error": str(e)}


# --- dashboards ------------------------------------------------------------------------------
def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def dashboard_targets(path):
    """[(panel title, refId, expr, legendFormat)] and the template variables."""
    with open(path) as f:
        dash = json.load(f)
    targets = []
    for p in walk_panels(dash.get("panels")):
        for t in p.get("targets", []):
            if t.get("hide"):
                continue
            targets.append((p.get("title", "?"), t.get("refId", "?"), t.get("expr", ""), t.get("legendFormat", "")))
    return dash, targets


def substitute(expr, variables):
    for k in sorted(BUILTINS, key=len, reverse=True):
        expr = expr.replace(k, BUILTINS[k])
    for name, value in variables.items():
        expr = expr.replace("${%s}" % name, value).replace("$" + name, value)
    return expr


def template_values(dash):
    """Each variable's value for the test: the All value of a query variable, else its current."""
    out = {}
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            out[v["name"]] = v.get("allValue") or ".*"
        elif v.get("type") == "datasource":
            out[v["name"]] = "prometheus"
        else:
            cur = v.get("current", {}).get("value")
            out[v["name"]] = cur if isinstance(cur, str) else ".*"
    return out


# --- kvrd traffic ---------------------------------------------------------------------------
def make_stubs(tmp):
    """kvr_pb2 and kvr_pb2_grpc, generated from proto/kvr/v1. grpc_tools' own protoc first; where
    it is too old for proto3 `optional` (Debian 12's grpc_tools bundles protobuf 3.6), Debian's
    protoc with grpc_python_plugin (protobuf-compiler, protobuf-compiler-grpc)."""
    out = os.path.join(tmp, "stubs")
    os.makedirs(out)
    protos = sorted(glob.glob(os.path.join(ROOT, "proto", "kvr", "v1", "*.proto")))
    inc = f"-I{os.path.join(ROOT, 'proto')}"
    r = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", inc, f"--python_out={out}",
                        f"--grpc_python_out={out}", *protos], capture_output=True, text=True)
    if r.returncode != 0:
        plugin, protoc = shutil.which("grpc_python_plugin"), shutil.which("protoc")
        if not plugin or not protoc:
            raise RuntimeError(f"cannot generate the Python stubs: grpc_tools.protoc failed "
                               f"({r.stderr.strip()[:300]}) and protoc/grpc_python_plugin are missing")
        r = subprocess.run([protoc, inc, f"--python_out={out}", f"--grpc_out={out}",
                            f"--plugin=protoc-gen-grpc={plugin}", *protos], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"protoc failed on proto/kvr/v1: {r.stderr}")
    sys.path.insert(0, out)
    import grpc
    from kvr.v1 import kvr_pb2, kvr_pb2_grpc
    return grpc, kvr_pb2, kvr_pb2_grpc


def send_traffic(address, grpc, pb, pb_grpc, vocab):
    """Concurrent requests of several prompt lengths, plus one refused request. Returns counts."""
    channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
    stub = pb_grpc.KvrStub(channel)
    lengths = [4, 9, 17, 33, 65, 120, 7, 48, 90, 25, 12, 70]
    results, lock = {"ok": 0, "err": []}, threading.Lock()

    def one(i, n):
        ids = [(7 * i + 13 * k + 3) % (vocab - 3) + 3 for k in range(n)]
        req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids),
                                 sampling=pb.SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
        try:
            done = False
            for resp in stub.Generate(req, timeout=60):
                if resp.HasField("complete"):
                    done = True
                if resp.HasField("error"):
                    raise RuntimeError(resp.error.message)
            with lock:
                if done:
                    results["ok"] += 1
                else:
                    results["err"].append(f"#{i}: stream ended without a completion")
        except Exception as e:  # grpc.RpcError included
            with lock:
                results["err"].append(f"#{i}: {e}")

    threads = [threading.Thread(target=one, args=(i, n)) for i, n in enumerate(lengths)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(90)
    # One request the server refuses (a token id beyond the vocabulary): kvr_request_rejected_total.
    refused = False
    try:
        for _ in stub.Generate(pb.GenerateRequest(token_ids=pb.TokenIds(ids=[vocab + 5]),
                                                  sampling=pb.SamplingParams(max_tokens=1)), timeout=10):
            pass
    except grpc.RpcError as e:
        refused = e.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    return len(lengths), results, refused


# --- main -----------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kvrd")
    ap.add_argument("--model", default=os.path.join(ROOT, "tests", "fixtures", "llama3"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    args = ap.parse_args()
    if args.kvrd == "NONE":  # CMake found no kvrd target
        print("kvrd is not built (KVR_SERVER found no gRPC, Protobuf or prometheus-cpp)")
        return 1 if os.environ.get("CI") == "true" else 77
    for exe in (args.kvrd, args.prometheus):
        if not os.access(exe, os.X_OK):
            print(f"FAIL  not executable: {exe}")
            return 1

    tmp = tempfile.mkdtemp(prefix="kvr-promql-")
    procs = []
    try:
        grpc_port, metrics_port, prom_port = free_port(), free_port(), free_port()
        kvrd_log = os.path.join(tmp, "kvrd.log")
        kvrd = subprocess.Popen(
            [args.kvrd, f"--model={args.model}", "--backend=cpu", "--workers=2",
             f"--listen=127.0.0.1:{grpc_port}", f"--metrics_listen=127.0.0.1:{metrics_port}",
             "--max_running=4", "--shutdown_timeout_s=2"],
            stdout=open(kvrd_log, "w"), stderr=subprocess.STDOUT, cwd=tmp)
        procs.append(kvrd)

        # Prometheus with the shipped config: only the kvrd target and the intervals change.
        prom_dir = os.path.join(tmp, "prometheus")
        shutil.copytree(os.path.join(DEPLOY, "prometheus"), prom_dir)
        cfg_path = os.path.join(prom_dir, "prometheus.yml")
        with open(cfg_path) as f:
            cfg = yaml.safe_load(f)
        kvrd_jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "kvrd"]
        check(len(kvrd_jobs) == 1, "the shipped config has one scrape job `kvrd`")
        for sc in kvrd_jobs[0]["static_configs"]:
            sc["targets"] = [f"127.0.0.1:{metrics_port}" if t == "kvrd:9464" else t for t in sc["targets"]]
        check(any(f"127.0.0.1:{metrics_port}" in sc["targets"] for sc in kvrd_jobs[0]["static_configs"]),
              "the kvrd target is kvrd:9464 (rewritten to the test's kvrd)")
        cfg["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
        for job in cfg["scrape_configs"]:  # Prometheus' own job: this Prometheus's address
            for sc in job.get("static_configs", []):
                sc["targets"] = [f"127.0.0.1:{prom_port}" if t == "localhost:9090" else t for t in sc["targets"]]
        with open(cfg_path, "w") as f:
            yaml.safe_dump(cfg, f)
        prom_log = os.path.join(tmp, "prometheus.log")
        prom = subprocess.Popen(
            [args.prometheus, f"--config.file={cfg_path}", f"--storage.tsdb.path={os.path.join(tmp, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=open(prom_log, "w"), stderr=subprocess.STDOUT, cwd=tmp)
        procs.append(prom)
        base = f"http://127.0.0.1:{prom_port}"

        grpc, pb, pb_grpc = make_stubs(tmp)
        address = f"127.0.0.1:{grpc_port}"
        sys.path.insert(0, os.path.join(DEPLOY, "kvrd"))
        import healthcheck
        wait_for("kvrd's health service", lambda: healthcheck.check(address, "kvr.v1.Kvr", 1.0) == 1, 60, kvrd, kvrd_log)
        r = subprocess.run([sys.executable, os.path.join(DEPLOY, "kvrd", "healthcheck.py"), address],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 0 and "SERVING" in r.stdout, f"kvr-healthcheck says SERVING: {r.stdout.strip()} {r.stderr.strip()}")
        r = subprocess.run([sys.executable, os.path.join(DEPLOY, "kvrd", "healthcheck.py"), address, "--service", "no.such.Service"],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 1, f"kvr-healthcheck fails for an unknown service: {r.stderr.strip()}")
        wait_for("Prometheus ready", lambda: urllib.request.build_opener(urllib.request.ProxyHandler({}))
                 .open(base + "/-/ready", timeout=2).status == 200, 30, prom, prom_log)

        # Traffic only once Prometheus holds a sample from before it: rate() needs the increase.
        def first_scrape():
            res = prom_query(base, 'up{job="kvrd"} == 1')["data"]["result"]
            return len(res) == 1
        wait_for("Prometheus' first scrape of kvrd", first_scrape, 30, prom, prom_log)

        stub = pb_grpc.KvrStub(grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]))
        vocab = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size
        sent, ok, errors, refused = 0, 0, [], True
        for wave in range(2):  # two waves a couple of scrapes apart: the rates see a change
            n, results, r = send_traffic(address, grpc, pb, pb_grpc, vocab)
            sent, ok, errors, refused = sent + n, ok + results["ok"], errors + results["err"], refused and r
            time.sleep(2.5)
        check(ok == sent and not errors, f"{ok}/{sent} requests completed {errors[:3]}")
        check(refused, "the out-of-vocabulary request is refused with INVALID_ARGUMENT")

        # Wait until Prometheus has scraped the end of the traffic.
        def scraped():
            res = prom_query(base, "sum(kvr_request_success_total)")["data"]["result"]
            return res and float(res[0]["value"][1]) >= sent
        wait_for("Prometheus to scrape the traffic", scraped, 30, prom, prom_log)
        time.sleep(2)  # a couple more samples after the last change, for rate()

        dashboards = sorted(glob.glob(os.path.join(DEPLOY, "grafana", "dashboards", "*.json")))
        check(len(dashboards) > 0, f"dashboards found: {[os.path.basename(d) for d in dashboards]}")
        total = 0
        for path in dashboards:
            dash, targets = dashboard_targets(path)
            variables = template_values(dash)
            name = os.path.basename(path)
            # Template variables: their label_values() query must find values.
            for v in dash.get("templating", {}).get("list", []):
                if v.get("type") != "query":
                    continue
                q = v.get("definition") or (v.get("query") or {}).get("query", "")
                m = re.fullmatch(r"\s*label_values\(\s*(.+?)\s*,\s*(\w+)\s*\)\s*", q)
                check(m is not None, f"{name}: variable ${v['name']} is label_values(metric, label): {q}")
                if m:
                    res = prom_query(base, m.group(1))
                    vals = {s["metric"].get(m.group(2)) for s in res.get("data", {}).get("result", [])} - {None}
                    check(bool(vals), f"{name}: variable ${v['name']} has values {sorted(vals)}")
            check(len(targets) > 0, f"{name}: has panel queries ({len(targets)})")
            for title, ref, expr, legend in targets:
                total += 1
                q = substitute(expr, variables)
                where = f"{name}: [{title}] {ref}"
                if not expr.strip():
                    check(False, f"{where}: empty expression")
                    continue
                check("$" not in q, f"{where}: every variable substituted: {q}")
                res = prom_query(base, q)
                if res.get("status") != "success":
                    check(False, f"{where}: {res.get('errorType')}: {res.get('error')}\n      {q}")
                    continue
                data = res["data"]
                series = data["result"] if data["resultType"] in ("vector", "matrix") else [{"metric": {}, "value": data["result"]}]
                values = [float(s["value"][1]) for s in series if "value" in s]
                finite = [x for x in values if math.isfinite(x)]
                want = re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)
                missing = sorted({l for l in want for s in series if not s["metric"].get(l)})
                ok = bool(series) and bool(finite) and not missing
                check(ok, f"{where}: {len(series)} series, {len(finite)} finite"
                          + (f", legend labels missing: {missing}" if missing else "")
                          + ("" if ok else f"\n      {q}"))
        print(f"{total} panel expressions evaluated")

        # The alert rules of deploy/prometheus/rules load and evaluate without error.
        groups = http_json(base + "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        check(len(rules) > 0, f"Prometheus loaded the shipped alert rules ({len(rules)})")
        for r in rules:
            check(r.get("health") == "ok" and not r.get("lastError"),
                  f"rule {r['name']} evaluates: health {r.get('health')!r} {r.get('lastError') or ''}")
    except Exception as e:
        check(False, f"{type(e).__name__}: {e}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if failures:
            print("---- kvrd log (tail) ----\n" + tail(os.path.join(tmp, "kvrd.log")))
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    rc = main()
    if rc == 77:
        sys.exit(rc)
    print(f"{'FAILED' if rc else 'PASSED'}: {len(failures)} failed check(s)")
    sys.exit(rc)
