#!/usr/bin/python3
"""deploy/docker-compose.yml through `docker-compose config` (Debian's docker-compose 1.29, which
needs no Docker engine for this): the file must be valid with deploy/.env.example, the GPU
reservation must survive, and so must what kvrd needs on a GPU node (ipc: host, memlock
unlimited, the read-only model mount, the health check)."""
import os
import subprocess
import sys
import tempfile

import yaml

ROOT = os.environ.get("KVR_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
failures = []


def check(cond, what, detail=""):
    if not cond:
        failures.append(what)
    print(("ok    " if cond else "FAIL  ") + what + (f"\n{detail}" if detail and not cond else ""))


def compose(*args, env_file=True, extra_env=None):
    cmd = ["docker-compose", "--project-directory", DEPLOY]
    if env_file:
        cmd += ["--env-file", os.path.join(DEPLOY, ".env.example")]
    cmd += list(args) + ["config"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVR_", "GRAFANA_", "PROMETHEUS_"))}
    env.update(extra_env or {})
    return subprocess.run(cmd, cwd=DEPLOY, env=env, capture_output=True, text=True)


def gpu_devices(service):
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def main():
    main_file = os.path.join(DEPLOY, "docker-compose.yml")
    r = compose("-f", main_file, extra_env={"KVR_MODEL_DIR": "/srv/models/llama3-8b"})
    check(r.returncode == 0, "docker-compose config accepts docker-compose.yml with .env.example", r.stderr)
    if r.returncode != 0:
        return
    cfg = yaml.safe_load(r.stdout)
    services = cfg.get("services", {})
    check(set(services) >= {"kvrd", "prometheus", "grafana"}, f"services kvrd, prometheus, grafana: {sorted(services)}")
    kvrd = services.get("kvrd", {})

    devices = gpu_devices(kvrd)
    check(len(devices) == 1, f"kvrd has one device reservation after `config`: {devices}")
    dev = devices[0] if devices else {}
    check(dev.get("driver") == "nvidia", f"reservation driver nvidia: {dev.get('driver')!r}")
    check(dev.get("capabilities") == ["gpu"], f"reservation capabilities [gpu]: {dev.get('capabilities')!r}")
    count = dev.get("count")
    # What docker-compose 1.x's `up` accepts (compose/project.py get_device_requests): an integer
    # or "all"; an interpolated "2" passes `config` but fails `up`.
    check("device_ids" in dev or count == "all" or isinstance(count, int),
          f"reservation count is an integer or 'all', or device_ids are given: {count!r}")

    check(kvrd.get("ipc") == "host", f"kvrd ipc: host: {kvrd.get('ipc')!r}")
    memlock = kvrd.get("ulimits", {}).get("memlock")
    check(memlock == -1 or (isinstance(memlock, dict) and memlock.get("soft") == -1 and memlock.get("hard") == -1),
          f"kvrd memlock unlimited: {memlock!r}")
    hc = kvrd.get("healthcheck", {})
    check(hc.get("test", [None])[0] == "CMD" and "/opt/kvr/bin/kvr-healthcheck" in hc.get("test", []),
          f"kvrd health check runs kvr-healthcheck: {hc.get('test')}")
    vols = kvrd.get("volumes", [])
    model = [v for v in vols if isinstance(v, str) and ":/models/model" in v]
    check(len(model) == 1 and model[0].endswith(":ro"), f"model folder mounted read-only at /models/model: {model}")
    check(model and model[0] == "/srv/models/llama3-8b:/models/model:ro", f"KVR_MODEL_DIR is the mount's source: {model}")
    env = kvrd.get("environment", {})
    check(env.get("KVR_CONFIG") == "/etc/kvr/kvrd.json" and any(":/etc/kvr/kvrd.json:ro" in v for v in vols),
          "kvrd reads the mounted config file /etc/kvr/kvrd.json")
    check(env.get("KVR_BACKEND") == "cuda" and env.get("KVR_PARTITION") in ("", None),
          f"settings from .env reach kvrd's environment (KVR_PARTITION empty: kvrd.json's split table): {env}")
    ports = kvrd.get("ports", [])
    check(any(str(p).endswith(":50051/tcp") or str(p).endswith(":50051") for p in ports) and
          any(str(p).split(":")[-1].startswith("9464") for p in ports), f"kvrd publishes 50051 and 9464: {ports}")

    prom = services.get("prometheus", {})
    check(any(v.endswith(":/etc/prometheus:ro") and v.startswith(os.path.join(DEPLOY, "prometheus"))
              for v in prom.get("volumes", [])), "prometheus mounts deploy/prometheus at /etc/prometheus")
    check("--config.file=/etc/prometheus/prometheus.yml" in prom.get("command", []), "prometheus reads prometheus.yml")
    graf = services.get("grafana", {})
    gv = graf.get("volumes", [])
    check(any(v.startswith(os.path.join(DEPLOY, "grafana", "provisioning") + ":/etc/grafana/provisioning") for v in gv),
          "grafana mounts the provisioning folder")
    check(any(v.startswith(os.path.join(DEPLOY, "grafana", "dashboards") + ":") for v in gv), "grafana mounts the dashboards")

    # Defaults: without KVR_MODEL_DIR the empty deploy/model folder is mounted (the image then
    # serves its demo model).
    r = compose("-f", main_file, env_file=False, extra_env={"GRAFANA_ADMIN_PASSWORD": "x"})
    check(r.returncode == 0, "docker-compose config without a .env (defaults)", r.stderr)
    if r.returncode == 0:
        k = yaml.safe_load(r.stdout)["services"]["kvrd"]
        check(os.path.join(DEPLOY, "model") + ":/models/model:ro" in k.get("volumes", []),
              "default model mount is deploy/model, read-only")
        check(len(gpu_devices(k)) == 1, "GPU reservation survives with the defaults too")
    r = compose("-f", main_file, env_file=False)
    check(r.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in r.stderr, "refuses to start Grafana without an admin password")

    # docs/deploy.md: to pick GPUs, replace `count: all` by device_ids.
    text = open(main_file).read()
    check(text.count("count: all") == 1, "docker-compose.yml has the one `count: all` that docs/deploy.md edits")
    with tempfile.TemporaryDirectory() as tmp:
        picked = os.path.join(tmp, "docker-compose.yml")
        with open(picked, "w") as f:
            f.write(text.replace("count: all", 'device_ids: ["0", "1"]'))
        r = compose("-f", picked)  # relative paths stay relative to deploy/ (--project-directory)
    check(r.returncode == 0, "docker-compose config with device_ids instead of count", r.stderr)
    if r.returncode == 0:
        devs = gpu_devices(yaml.safe_load(r.stdout)["services"]["kvrd"])
        check(len(devs) == 1 and devs[0].get("device_ids") == ["0", "1"] and devs[0].get("driver") == "nvidia"
              and devs[0].get("capabilities") == ["gpu"], f"device ids survive `config`: {devs}")

if __name__ == "__main__":
    main()
    print(f"{'FAILED' if failures else 'PASSED'}: {len(failures)} failed check(s)")
    sys.exit(1 if failures else 0)
