"""Helpers shared by the daemon's Python tests: free ports, starting and stopping kvrd with
bounded waits, raw health checks, reading /metrics, the test model folder."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import grpc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_stubs(stubs_dir):
    sys.path.insert(0, stubs_dir)
    from kvr.v1 import kvr_pb2, kvr_pb2_grpc  # noqa: E402
    return kvr_pb2, kvr_pb2_grpc


def health_check(channel, service="", timeout=2.0):
    """grpc.health.v1.Health/Check with hand-encoded messages (no grpc_health package needed):
    request {service}, response {status}: 1 = SERVING, 2 = NOT_SERVING."""
    req = b"" if not service else b"\x0a" + bytes([len(service)]) + service.encode()
    call = channel.unary_unary("/grpc.health.v1.Health/Check")
    resp = call(req, timeout=timeout)
    return resp[1] if len(resp) >= 2 and resp[0] == 0x08 else 0


def list_services_by_reflection(channel, timeout=5.0):
    """grpc.reflection.v1alpha ServerReflectionInfo with list_services = "" (hand-encoded)."""
    call = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    responses = call(iter([b"\x3a\x00"]), timeout=timeout)
    blob = b"".join(responses)
    return re.findall(rb"[a-zA-Z_][\w.]*\.[A-Z]\w*", blob)


class Daemon:
    """kvrd on free loopback ports; its log goes to a file in `workdir`."""

    def __init__(self, kvrd, model, workdir, extra_args=(), name="kvrd", env=None,
                 channel_factory=None):
        """env: extra environment variables for kvrd; channel_factory(address) makes the
        channel start() checks health on (default: insecure)."""
        self.env = dict(os.environ, **(env or {}))
        self.channel_factory = channel_factory or grpc.insecure_channel
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = os.path.join(workdir, name + ".log")
        self.args = [kvrd, "--model", model, "--backend", "cpu", "--workers", "2",
                     "--listen", f"127.0.0.1:{self.port}",
                     "--metrics_listen", f"127.0.0.1:{self.metrics_port}", *extra_args]
        self.proc = None
        self.channel = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=60):
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        deadline = time.time() + timeout
        # Wait for the port before making the channel: a channel whose first connection fails
        # backs off for seconds before it tries again.
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvrd exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        self.channel = self.channel_factory(self.address)
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvrd exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                if health_check(self.channel, timeout=1.0) == 1:
                    return self
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"kvrd not SERVING within {timeout} s:\n{self.read_log()}")

    def read_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-5000:]
        except OSError:
            return ""

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name, labels=None):
        return metric_value(self.metrics(), name, labels)

    def metric_sum(self, name):
        return metric_sum(self.metrics(), name)

    def wait_metric(self, name, predicate, labels=None, timeout=5.0):
        deadline = time.time() + timeout
        v = None
        while time.time() < deadline:
            v = self.metric(name, labels)
            if v is not None and predicate(v):
                return v
            time.sleep(0.05)
        raise AssertionError(f"{name}{labels or ''} = {v}: condition not met within {timeout} s")

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        """SIGTERM, then wait; kills it (and fails) if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"kvrd did not exit within {timeout} s of SIGTERM")
        finally:
            if self.channel is not None:
                self.channel.close()
            self.log.close()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def assert_every_admitted_request_ended(d, admitted):
    """The daemon's finished-request counters add up to the requests the clients saw admitted,
    and none ended in error."""
    ended = sum(d.metric("kvr_request_success_total", {"finished_reason": r}) or 0
                for r in ("stop", "length", "abort", "error"))
    assert ended == admitted, f"daemon ended {ended}, clients saw {admitted} admitted"
    assert d.metric("kvr_request_success_total", {"finished_reason": "error"}) == 0


def stop_and_pass(d, name):
    """SIGTERM; the daemon must exit 0. Prints PASS and returns main's exit status."""
    rc = d.stop(timeout=30)
    assert rc == 0, f"exit status {rc}"
    print(f"PASS {name}")
    return 0


def fail_with_log(d, name, error):
    """Prints FAIL with the reason and the tail of the daemon's log; returns main's exit status."""
    print(f"FAIL {name}: {error}")
    print(f"--- kvrd log (tail) ---\n{d.read_log()}")
    return 1


def metric_sum(text, name):
    """The sum of every sample of `name`, whatever its labels; None if absent."""
    total, seen = 0.0, False
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            total += float(m.group(3))
            seen = True
    return total if seen else None


def metric_value(text, name, labels=None):
    """The value of one sample in Prometheus text format; None if absent."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if labels is not None and any(got.get(k) != v for k, v in labels.items()):
            continue
        if labels is None and got:
            continue
        return float(m.group(3))
    return None


def make_model(fixture, out):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    import make_test_model  # noqa: E402
    return make_test_model.make(fixture, out)
