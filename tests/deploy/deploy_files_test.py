#!/usr/bin/python3
"""The pieces of deploy/ agree with each other and with kvrd: the dashboards are well formed and
use the provisioned data source, the Grafana provisioning points where docker-compose mounts,
.env.example names every variable docker-compose.yml reads, kvrd.json and the entrypoint use
only flags that kvrd has (server/main.cc), and the entrypoint maps settings as documented."""
import json
import os
import re
import subprocess
import sys

import yaml

ROOT = os.environ.get("KVR_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    print(("ok    " if cond else "FAIL  ") + what)


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def walk(panels):
    for p in panels or []:
        yield p
        yield from walk(p.get("panels"))


def kvrd_flags():
    return set(re.findall(r"ABSL_FLAG\(\s*[\w:]+\s*,\s*(\w+)\s*,", read("server", "main.cc")))


def dry_run(env, *args):
    e = {k: v for k, v in os.environ.items() if not k.startswith("KVR_")}
    e.update(env, KVR_ENTRYPOINT_DRY_RUN="1", KVR_MOUNTED_MODEL=os.path.join(DEPLOY, "model"))
    r = subprocess.run([os.path.join(DEPLOY, "kvrd", "entrypoint.sh"), *args], env=e, capture_output=True, text=True)
    return r.returncode, r.stdout.splitlines(), r.stderr


def main():
    # --- Grafana provisioning ----------------------------------------------------------------
    ds = yaml.safe_load(read("deploy", "grafana", "provisioning", "datasources", "prometheus.yml"))["datasources"]
    prom_ds = [d for d in ds if d.get("type") == "prometheus"]
    check(len(prom_ds) == 1 and prom_ds[0].get("uid") and prom_ds[0].get("url") == "http://prometheus:9090",
          f"one Prometheus data source, at the compose service: {prom_ds}")
    uid = prom_ds[0].get("uid") if prom_ds else None
    prov = yaml.safe_load(read("deploy", "grafana", "provisioning", "dashboards", "kvr.yml"))["providers"]
    compose = yaml.safe_load(read("deploy", "docker-compose.yml"))
    graf_vols = compose["services"]["grafana"]["volumes"]
    dash_mount = [v.split(":")[1] for v in graf_vols if v.startswith("./grafana/dashboards:")]
    check(len(prov) == 1 and dash_mount and prov[0]["options"]["path"] == dash_mount[0],
          f"the dashboard provider reads where compose mounts the dashboards: {prov[0]['options']['path']} vs {dash_mount}")
    home = compose["services"]["grafana"]["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH", "")
    check(dash_mount and home.startswith(dash_mount[0] + "/") and
          os.path.exists(os.path.join(DEPLOY, "grafana", "dashboards", os.path.basename(home))),
          f"Grafana's home dashboard is a shipped dashboard: {home}")
    prom_cfg = yaml.safe_load(read("deploy", "prometheus", "prometheus.yml"))
    check(prom_ds and prom_ds[0].get("jsonData", {}).get("timeInterval") == prom_cfg["global"]["scrape_interval"],
          "the data source's timeInterval is Prometheus' scrape_interval")

    # --- dashboards ----------------------------------------------------------------------------
    dash_dir = os.path.join(DEPLOY, "grafana", "dashboards")
    uids = set()
    for name in sorted(os.listdir(dash_dir)):
        if not name.endswith(".json"):
            continue
        dash = json.loads(read("deploy", "grafana", "dashboards", name))
        check(dash.get("uid") and dash["uid"] not in uids, f"{name}: a unique uid {dash.get('uid')!r}")
        uids.add(dash.get("uid"))
        variables = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
        dsvar = [v for v in variables.values() if v.get("type") == "datasource"]
        check(len(dsvar) == 1 and dsvar[0].get("query") == "prometheus" and dsvar[0]["current"].get("value") == uid,
              f"{name}: a Prometheus data-source variable defaulting to the provisioned uid {uid!r}")
        ids, boxes = set(), []
        exprs = ""
        for p in walk(dash.get("panels")):
            check(p.get("id") not in ids, f"{name}: panel id {p.get('id')} unique ({p.get('title')})")
            ids.add(p.get("id"))
            g = p.get("gridPos", {})
            check(all(k in g for k in "hwxy") and g["x"] + g["w"] <= 24, f"{name}: [{p.get('title')}] fits the 24-column grid")
            boxes.append((p.get("title"), g))
            if p.get("type") == "row":
                continue
            check(p.get("datasource", {}).get("uid") == "${%s}" % dsvar[0]["name"] if dsvar else False,
                  f"{name}: [{p.get('title')}] uses the data-source variable")
            check(bool(p.get("targets")), f"{name}: [{p.get('title')}] has queries")
            for t in p.get("targets", []):
                exprs += t.get("expr", "") + "\n"
                for var in re.findall(r"\$(\w+)", t.get("expr", "")):
                    check(var.startswith("__") or var in variables, f"{name}: [{p.get('title')}] ${var} is defined")
        for i, (ta, a) in enumerate(boxes):
            for tb, b in boxes[i + 1:]:
                overlap = a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
                if overlap:
                    check(False, f"{name}: panels [{ta}] and [{tb}] overlap")
        # What the issue asks the dashboard to show.
        for metric in ["kvr_time_to_first_token_seconds_bucket", "kvr_inter_token_latency_seconds_bucket",
                       "kvr_e2e_request_latency_seconds_bucket", "kvr_request_queue_time_seconds_bucket",
                       "kvr_num_requests_running", "kvr_num_requests_waiting", "kvr_prompt_tokens_total",
                       "kvr_generation_tokens_total", "kvr_kv_cache_usage_perc",
                       "kvr_worker_prefill_busy_seconds_total", "kvr_worker_prefill_wait_seconds_total",
                       "kvr_kv_transfer_sent_bytes_total"]:
            check(metric in exprs, f"{name}: shows {metric}")
        for q in ("0.5", "0.9", "0.99"):
            check(f"histogram_quantile({q}, sum by (le) (rate(kvr_time_to_first_token_seconds_bucket" in exprs,
                  f"{name}: TTFT p{q[2:].ljust(2, '0')} from the histogram")
        check(re.search(r"by \(le, prompt_band\) \(rate\(kvr_time_to_first_token_seconds_bucket", exprs),
              f"{name}: TTFT by prompt length band")
        # Every metric the dashboard names exists in kvrd (server/metrics.cc).
        metrics_cc = read("server", "metrics.cc")
        for m in sorted(set(re.findall(r"\b(kvr_\w+)", exprs))):
            base = re.sub(r"_(bucket|sum|count)$", "", m)
            check(f'"{m}"' in metrics_cc or f'"{base}"' in metrics_cc, f"{name}: {m} is a kvrd metric (server/metrics.cc)")

    # --- .env.example covers docker-compose.yml ----------------------------------------------------
    used = set(re.findall(r"\$\{(\w+)[:?}-]", read("deploy", "docker-compose.yml")))
    # VAR=value lines, and #VAR=value for those left unset by default.
    env_example = dict(m.groups() for l in read("deploy", ".env.example").splitlines()
                       for m in [re.match(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", l)] if m)
    check(used <= set(env_example), f".env.example names every variable of docker-compose.yml; missing {sorted(used - set(env_example))}")
    check(set(env_example) <= used, f".env.example names only variables that docker-compose.yml reads; extra {sorted(set(env_example) - used)}")

    # --- kvrd flags: kvrd.json, the entrypoint ---------------------------------------------------
    flags = kvrd_flags()
    check({"model", "listen", "metrics_listen", "backend", "workers", "partition", "config"} <= flags,
          f"kvrd's flags found in server/main.cc: {sorted(flags)}")
    cfg = json.loads(read("deploy", "kvrd", "kvrd.json"))
    check(set(cfg) <= flags - {"config", "model", "listen", "metrics_listen"},
          f"kvrd.json uses kvrd's keys only (and leaves model/addresses to the entrypoint): {sorted(set(cfg) - flags)}")
    entry = read("deploy", "kvrd", "entrypoint.sh")
    loop = re.search(r"for name in (.*?); do", entry, re.S)
    names = loop.group(1).replace("\\", " ").split() if loop else []
    check(names and set(names) <= flags, f"the entrypoint's KVR_* settings are kvrd flags: {sorted(set(names) - flags)}")
    compose_env = compose["services"]["kvrd"]["environment"]
    for k in compose_env:
        check(k == "KVR_CONFIG" or k[4:].lower() in names, f"compose passes {k}, which the entrypoint maps to a flag")

    # --- the entrypoint's behaviour -----------------------------------------------------------
    for f in ("entrypoint.sh", "healthcheck.py"):  # COPY keeps the mode: they must be executable
        check(os.access(os.path.join(DEPLOY, "kvrd", f), os.X_OK), f"deploy/kvrd/{f} is executable")
    rc, argv, err = dry_run({})
    check(rc == 0 and argv[:5] == ["/opt/kvr/bin/kvrd", "--model=/opt/kvr/models/kvr-demo", "--listen=0.0.0.0:50051",
                                   "--metrics_listen=0.0.0.0:9464", "--config=/etc/kvr/kvrd.json"] and len(argv) == 5,
          f"no settings: the demo model, listening on all interfaces, the config file: {argv}")
    check("demo model" in err, "says that it serves the demo model")
    rc, argv, _ = dry_run({"KVR_WORKERS": "4", "KVR_PARTITION": "cost", "KVR_MAX_QUEUE": "", "KVR_MODEL": "/m"}, "--max_queue=9", "--workers=2")
    check(argv[1] == "--model=/m" and "--workers=4" in argv and "--partition=cost" in argv and
          not any(a.startswith("--max_queue=") and a != "--max_queue=9" for a in argv) and argv[-2:] == ["--max_queue=9", "--workers=2"],
          f"set variables become flags, empty ones none, the command's arguments come last (and win): {argv}")
    rc, argv, _ = dry_run({"KVR_CONFIG": ""})
    check(not any(a.startswith("--config") for a in argv), f"KVR_CONFIG= (empty) passes no config file: {argv}")


if __name__ == "__main__":
    main()
    print(f"{'FAILED' if failures else 'PASSED'}: {len(failures)} failed check(s)")
    sys.exit(1 if failures else 0)
