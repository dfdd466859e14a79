#!/usr/bin/env python3
"""End-to-end test of kvrd with a real Python gRPC client and a real Prometheus server.

    integration_test.py --kvrd BIN --kvr-generate BIN --stubs DIR --fixture tests/fixtures/llama3
                        [--prometheus /usr/bin/prometheus]

Starts kvrd (CPU backend, 2 prefill workers) on free loopback ports with the tiny fixture plus a
test tokenizer, checks streamed text and ids against kvr-generate for the same prompt and seed,
the info/tokenizer RPCs, health and reflection, every refusal with its exact status code,
Abort and client cancellation (the KV-cache metric drops at once), a full queue, Prometheus
scraping the daemon (queried through its HTTP API), and SIGTERM draining. Every wait is bounded.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvr_test_lib as lib  # noqa: E402

PROMPT = "Once upon a time, the cat sat on the mat and"
IC = grpc.StatusCode.INVALID_ARGUMENT


class Checks:
    def __init__(self):
        self.failed = []
        self.passed = 0

    def run(self, name, fn, *args):
        t0 = time.time()
        try:
            fn(*args)
            self.passed += 1
            print(f"PASS {name} ({time.time() - t0:.2f} s)", flush=True)
        except Exception as e:  # noqa: BLE001
            self.failed.append(name)
            print(f"FAIL {name}: {e}", flush=True)
            traceback.print_exc()


def cli(args, model, prompt, max_tokens, temperature=0.0, seed=0, workers=2):
    out = subprocess.run(
        [args.kvr_generate, "--model", model, "--prompt", prompt, "--max_tokens", str(max_tokens),
         "--workers", str(workers), "--backend", "cpu", "--temperature", str(temperature),
         "--seed", str(seed), "--json"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def generate(stub, pb, timeout=30, **kw):
    """Runs a Generate call; returns (ids, text, completion, responses)."""
    ids, text, complete, responses = [], "", None, []
    for r in stub.Generate(pb.GenerateRequest(**kw), timeout=timeout):
        responses.append(r)
        if r.HasField("chunk"):
            assert complete is None, "chunk after the completion"
            ids += list(r.chunk.token_ids)
            text += r.chunk.text
        elif r.HasField("complete"):
            complete = r.complete
    assert complete is not None, "stream ended without a completion"
    return ids, text, complete, responses


def expect_code(code, fn):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        return e.details()
    raise AssertionError(f"expected {code}, the call succeeded")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvrd", required=True)
    ap.add_argument("--kvr-generate", dest="kvr_generate", required=True)
    ap.add_argument("--stubs", required=True)
    ap.add_argument("--fixture", default=os.environ.get("KVR_TEST_FIXTURE", "tests/fixtures/llama3"))
    ap.add_argument("--prometheus", default="")
    args = ap.parse_args()
    pb, pb_grpc = lib.import_stubs(args.stubs)

    work = tempfile.mkdtemp(prefix="kvrd-it-")
    model = lib.make_model(args.fixture, os.path.join(work, "model"))
    checks = Checks()
    daemons = []
    prom = None
    try:
        d = lib.Daemon(args.kvrd, model, work, ["--testing_decode_delay_ms", "3",
                                                "--max_queue", "16", "--max_running", "8"])
        daemons.append(d)
        d.start()
        stub = pb_grpc.KvrStub(d.channel)

        if args.prometheus:
            prom = start_prometheus(args.prometheus, work, d.metrics_port)

        def same_as_cli(temperature, seed):
            want = cli(args, model, PROMPT, 24, temperature, seed)
            ids, text, c, _ = generate(
                stub, pb, text=PROMPT,
                sampling=pb.SamplingParams(max_tokens=24, temperature=temperature, seed=seed))
            assert ids == want["output_ids"], f"ids {ids} != CLI {want['output_ids']}"
            assert text == want["text"], f"text {text!r} != CLI {want['text']!r}"
            assert c.prompt_tokens == len(want["prompt_ids"]), (c.prompt_tokens, want["prompt_ids"])
            assert c.completion_tokens == len(ids)
            reason = {"length": pb.FINISH_REASON_LENGTH, "stop": pb.FINISH_REASON_STOP}
            assert c.finish_reason == reason[want["finish_reason"]], c
            assert len(c.workers) == 2 and {w.worker for w in c.workers} == {0, 1}, c.workers
            assert c.workers[0].begin == 0 and c.workers[-1].end == c.prompt_tokens, c.workers
            assert sum(w.kv_bytes_sent for w in c.workers) > 0, c.workers
            t = c.timings
            assert 0 < t.ttft_seconds <= t.e2e_seconds and t.prefill_seconds > 0, t
            assert c.plan.startswith("even"), c.plan
            # The same prompt as token ids gives the same output.
            ids2, text2, _, _ = generate(
                stub, pb, token_ids=pb.TokenIds(ids=want["prompt_ids"]),
                sampling=pb.SamplingParams(max_tokens=24, temperature=temperature, seed=seed))
            assert ids2 == ids and text2 == text

        checks.run("greedy output equals kvr-generate", same_as_cli, 0.0, 0)
        checks.run("seeded sampling equals kvr-generate", same_as_cli, 0.8, 1234)

        def info():
            m = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert m.architecture == "llama" and m.vocab_size == 256 and m.context_length == 512, m
            assert m.tokenizer.bos_token_id == 1 and list(m.tokenizer.eos_token_ids) == [2], m
            assert m.dtype and m.name == "model", m
            s = stub.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
            assert s.backend == "cpu" and s.num_workers == 2 and len(s.devices) == 2, s
            assert s.max_queue == 16 and s.max_running == 8 and s.partition == "even", s
            assert s.version, s
        checks.run("GetModelInfo and GetServerInfo", info)

        def tokenize():
            want = cli(args, model, PROMPT, 1)
            t = stub.Tokenize(pb.TokenizeRequest(text=PROMPT), timeout=5)
            assert list(t.token_ids) == want["prompt_ids"], (list(t.token_ids), want["prompt_ids"])
            assert len(t.tokens) == len(t.token_ids)
            d2 = stub.Detokenize(pb.DetokenizeRequest(token_ids=t.token_ids), timeout=5)
            assert d2.text == PROMPT, d2.text
            expect_code(IC, lambda: stub.Detokenize(pb.DetokenizeRequest(token_ids=[9999]), timeout=5))
        checks.run("Tokenize and Detokenize round trip", tokenize)

        def health_and_reflection():
            assert lib.health_check(d.channel) == 1
            assert lib.health_check(d.channel, "kvr.v1.Kvr") == 1
            names = lib.list_services_by_reflection(d.channel)
            assert b"kvr.v1.Kvr" in names and b"grpc.health.v1.Health" in names, names
        checks.run("health (grpc.health.v1) and server reflection", health_and_reflection)

        def refusals():
            S = pb.SamplingParams
            long_prompt = pb.TokenIds(ids=[5] * 600)
            cases = [
                ("prompt longer than the context", dict(token_ids=long_prompt), "context"),
                ("empty text prompt", dict(text=""), "empty"),
                ("empty token prompt", dict(token_ids=pb.TokenIds(ids=[])), "empty"),
                ("no prompt", dict(), "prompt"),
                ("token id out of range", dict(token_ids=pb.TokenIds(ids=[1, 300])), "300"),
                ("max_tokens beyond the context", dict(text="hi", sampling=S(max_tokens=1000)), "512"),
                ("prompt + max_tokens beyond the context",
                 dict(token_ids=pb.TokenIds(ids=[5] * 500), sampling=S(max_tokens=20)), "512"),
                ("max_tokens 0", dict(text="hi", sampling=S(max_tokens=0)), "max_tokens"),
                ("negative temperature", dict(text="hi", sampling=S(temperature=-1)), "temperature"),
                ("top_p 0", dict(text="hi", sampling=S(top_p=0)), "top_p"),
                ("top_p > 1", dict(text="hi", sampling=S(top_p=1.5)), "top_p"),
                ("negative top_k", dict(text="hi", sampling=S(top_k=-1)), "top_k"),
                ("top_k > vocab", dict(text="hi", sampling=S(top_k=100000)), "top_k"),
                ("min_p > 1", dict(text="hi", sampling=S(min_p=2)), "min_p"),
                ("repetition_penalty 0", dict(text="hi", sampling=S(repetition_penalty=0)),
                 "repetition_penalty"),
                ("presence_penalty 3", dict(text="hi", sampling=S(presence_penalty=3)),
                 "presence_penalty"),
                ("frequency_penalty -3", dict(text="hi", sampling=S(frequency_penalty=-3)),
                 "frequency_penalty"),
                ("logprobs 50", dict(text="hi", sampling=S(logprobs=50)), "logprobs"),
                ("NaN temperature", dict(text="hi", sampling=S(temperature=float("nan"))),
                 "temperature"),
                ("stop token out of range", dict(text="hi", sampling=S(stop_token_ids=[999])),
                 "stop_token_ids"),
                ("empty stop string", dict(text="hi", sampling=S(stop=[""])), "stop"),
                ("unknown model", dict(text="hi", model="gpt-4"), "gpt-4"),
            ]
            for name, kw, word in cases:
                t0 = time.time()
                details = expect_code(IC, lambda: generate(stub, pb, timeout=5, **kw))
                assert word in details, f"{name}: {word!r} not in {details!r}"
                assert "allowed" in details or "give" in details or "set" in details, \
                    f"{name}: the message does not say what is allowed: {details!r}"
                assert time.time() - t0 < 2, f"{name}: took {time.time() - t0:.2f} s"
            # Unknown fields: a GenerateRequest with field 99 appended (a newer or other client).
            raw = pb.GenerateRequest(text="hi").SerializeToString() + b"\x98\x06\x01"
            call = d.channel.unary_stream("/kvr.v1.Kvr/Generate",
                                          response_deserializer=pb.GenerateResponse.FromString)
            details = expect_code(IC, lambda: list(call(raw, timeout=5)))
            assert "99" in details, details
            # The daemon is still fine.
            ids, _, _, _ = generate(stub, pb, text="hi", sampling=S(max_tokens=3, ignore_eos=True))
            assert len(ids) == 3
        checks.run("bad inputs get INVALID_ARGUMENT saying what is allowed", refusals)

        def abort_frees_cache():
            kv0 = d.metric("kvr_kv_cache_usage_bytes")
            assert kv0 == 0, kv0
            call = stub.Generate(pb.GenerateRequest(
                request_id="abort-me", text=PROMPT,
                sampling=pb.SamplingParams(max_tokens=400, ignore_eos=True)), timeout=30)
            it = iter(call)
            first = next(it)
            assert first.request_id == "abort-me" and first.HasField("chunk"), first
            d.wait_metric("kvr_kv_cache_usage_bytes", lambda v: v > 0)
            assert d.metric("kvr_kv_cache_usage_perc") > 0
            # A second live request with the same id is refused.
            expect_code(grpc.StatusCode.ALREADY_EXISTS, lambda: generate(
                stub, pb, timeout=5, request_id="abort-me", text="hi"))
            stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=5)
            t0 = time.time()
            rest = list(it)
            assert rest and rest[-1].HasField("complete"), rest[-1:]
            assert rest[-1].complete.finish_reason == pb.FINISH_REASON_ABORT, rest[-1]
            assert rest[-1].complete.completion_tokens < 400
            d.wait_metric("kvr_kv_cache_usage_bytes", lambda v: v == 0, timeout=1.0)
            print(f"  abort: stream ended and cache freed {time.time() - t0:.3f} s after Abort")
            expect_code(grpc.StatusCode.NOT_FOUND,
                        lambda: stub.Abort(pb.AbortRequest(request_id="abort-me"), timeout=5))
        checks.run("Abort ends the stream and frees the KV-cache at once", abort_frees_cache)

        def cancel_frees_cache():
            aborted0 = d.metric("kvr_request_success_total", {"finished_reason": "abort"})
            call = stub.Generate(pb.GenerateRequest(
                text=PROMPT, sampling=pb.SamplingParams(max_tokens=400, ignore_eos=True)), timeout=30)
            it = iter(call)
            next(it)
            d.wait_metric("kvr_kv_cache_usage_bytes", lambda v: v > 0)
            call.cancel()
            t0 = time.time()
            d.wait_metric("kvr_kv_cache_usage_bytes", lambda v: v == 0, timeout=1.0)
            d.wait_metric("kvr_request_success_total", lambda v: v == aborted0 + 1,
                          {"finished_reason": "abort"}, timeout=1.0)
            print(f"  cancel: cache freed {time.time() - t0:.3f} s after the client cancelled")
            assert d.metric("kvr_num_requests_running") == 0
        checks.run("client cancellation frees the KV-cache at once", cancel_frees_cache)

        def deadline_frees_cache():
            try:
                generate(stub, pb, timeout=0.3, text=PROMPT,
                         sampling=pb.SamplingParams(max_tokens=400, ignore_eos=True))
                raise AssertionError("the deadline did not fire")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.code()
            d.wait_metric("kvr_kv_cache_usage_bytes", lambda v: v == 0, timeout=1.0)
        checks.run("a client deadline ends the request and frees its cache", deadline_frees_cache)

        def stop_and_logprobs():
            ids, text, c, _ = generate(stub, pb, text=PROMPT, sampling=pb.SamplingParams(
                max_tokens=24, temperature=0, logprobs=3))
            assert len(text) > 4
            stop = text[2:4]
            ids2, text2, c2, resp = generate(stub, pb, text=PROMPT, sampling=pb.SamplingParams(
                max_tokens=24, temperature=0, stop=[stop]))
            assert c2.finish_reason == pb.FINISH_REASON_STOP and c2.stop_reason == stop, c2
            assert text2 == text[:text.find(stop)], (text2, text, stop)
            lps = [lp for r in generate(stub, pb, text=PROMPT, sampling=pb.SamplingParams(
                max_tokens=5, temperature=0, logprobs=3))[3] if r.HasField("chunk")
                   for lp in r.chunk.logprobs]
            assert len(lps) == 5 and all(len(lp.top) == 3 for lp in lps), lps
            assert all(lp.logprob <= 0 and lp.token_id == lp.top[0].token_id for lp in lps)
        checks.run("stop strings and logprobs", stop_and_logprobs)

        def concurrent_streams():
            results, errors = [], []

            def one(i):
                try:
                    ids, text, c, _ = generate(stub, pb, text=PROMPT, sampling=pb.SamplingParams(
                        max_tokens=16, temperature=0.7, seed=i % 3))
                    results.append((i % 3, ids, text))
                except Exception as e:  # noqa: BLE001
                    errors.append(e)
            threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors, errors[:3]
            assert len(results) == 12
            # Same seed, same output, whatever batch it was decoded in.
            by_seed = {}
            for seed, ids, text in results:
                by_seed.setdefault(seed, set()).add((tuple(ids), text))
            assert all(len(v) == 1 for v in by_seed.values()), by_seed
            assert d.metric("kvr_num_requests_running") == 0
        checks.run("12 concurrent streams: same seed, same output in any batch", concurrent_streams)

        if prom is not None:
            checks.run("Prometheus scrapes TTFT and per-worker metrics",
                       check_prometheus, prom, d)

        def queue_full_and_sigterm():
            d2 = lib.Daemon(args.kvrd, model, work,
                            ["--testing_decode_delay_ms", "20", "--max_queue", "1",
                             "--max_running", "1", "--shutdown_timeout_s", "1"], name="kvrd-small")
            daemons.append(d2)
            d2.start()
            s2 = pb_grpc.KvrStub(d2.channel)
            req = pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(
                max_tokens=400, ignore_eos=True))
            running = s2.Generate(req, timeout=60)
            it_run = iter(running)
            next(it_run)                                   # running
            waiting = s2.Generate(req, timeout=60)         # waits in the queue
            d2.wait_metric("kvr_num_requests_waiting", lambda v: v == 1)
            t0 = time.time()
            details = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  lambda: generate(s2, pb, timeout=10, text="hi"))
            assert time.time() - t0 < 1.0, "the refusal was not immediate"
            assert "max_queue" in details, details
            assert d2.metric("kvr_request_rejected_total", {"code": "RESOURCE_EXHAUSTED"}) == 1
            # SIGTERM: stop admitting, give streams 1 s, abort the rest, exit 0.
            d2.signal()
            time.sleep(0.3)
            expect_code(grpc.StatusCode.UNAVAILABLE, lambda: generate(s2, pb, timeout=5, text="hi"))
            last = list(it_run)[-1]
            assert last.complete.finish_reason == pb.FINISH_REASON_ABORT, last
            wl = list(waiting)[-1]
            assert wl.complete.finish_reason == pb.FINISH_REASON_ABORT, wl
            rc = d2.proc.wait(timeout=15)
            assert rc == 0, f"exit status {rc}"
            assert "kvrd stopped" in d2.read_log()
        checks.run("full queue: RESOURCE_EXHAUSTED at once; SIGTERM drains and exits 0",
                   queue_full_and_sigterm)

        def config_file_and_second_signal():
            cfg = os.path.join(work, "kvrd.json")
            with open(cfg, "w") as f:
                json.dump({"max_queue": 5, "max_running": 3, "shutdown_timeout_s": 30,
                           "testing_decode_delay_ms": 20}, f)
            d3 = lib.Daemon(args.kvrd, model, work, ["--config", cfg, "--max_running", "2"],
                            name="kvrd-config")
            daemons.append(d3)
            d3.start()
            s3 = pb_grpc.KvrStub(d3.channel)
            info3 = s3.GetServerInfo(pb.GetServerInfoRequest(), timeout=5)
            assert info3.max_queue == 5 and info3.max_running == 2, info3  # the flag wins
            assert '"max_queue":5' in d3.read_log() and "config in effect" in d3.read_log()
            call = s3.Generate(pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(
                max_tokens=400, ignore_eos=True)), timeout=60)
            it = iter(call)
            next(it)
            d3.signal()
            time.sleep(0.5)
            assert d3.proc.poll() is None, "exited before its streams finished"
            assert lib.health_check(d3.channel) == 2, "health is not NOT_SERVING while draining"
            d3.signal()  # a second signal aborts at once
            t0 = time.time()
            last = list(it)[-1]
            assert last.complete.finish_reason == pb.FINISH_REASON_ABORT, last
            assert d3.proc.wait(timeout=10) == 0
            assert time.time() - t0 < 5, time.time() - t0
            # A config file with an unknown key: exit status 2 and a message naming it.
            with open(cfg, "w") as f:
                json.dump({"max_qeueu": 5}, f)
            out = subprocess.run([args.kvrd, "--model", model, "--config", cfg],
                                 capture_output=True, text=True, timeout=30)
            assert out.returncode == 2 and "max_qeueu" in out.stderr, (out.returncode, out.stderr)
        checks.run("config file, flags win, second SIGTERM aborts at once",
                   config_file_and_second_signal)

        def sigterm_finishes_short_streams():
            # A stream that can finish within the timeout does.
            call = stub.Generate(pb.GenerateRequest(text=PROMPT, sampling=pb.SamplingParams(
                max_tokens=60, ignore_eos=True)), timeout=30)
            it = iter(call)
            next(it)
            d.signal()
            rest = list(it)
            assert rest[-1].complete.finish_reason == pb.FINISH_REASON_LENGTH, rest[-1]
            rc = d.proc.wait(timeout=15)
            assert rc == 0, rc
        checks.run("SIGTERM lets running streams finish, then exits 0", sigterm_finishes_short_streams)
    finally:
        for dd in daemons:
            dd.kill()
        if prom is not None:
            prom.kill()
            prom.wait(timeout=10)
        if checks.failed:
            for dd in daemons:
                print(f"--- {dd.log_path} (tail) ---\n{dd.read_log()}")
        shutil.rmtree(work, ignore_errors=True)
    print(f"{checks.passed} passed, {len(checks.failed)} failed: {checks.failed}")
    return 1 if checks.failed else 0


def start_prometheus(binary, work, metrics_port):
    port = lib.free_port()
    cfg = os.path.join(work, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                "scrape_configs:\n  - job_name: kvrd\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{metrics_port}']\n")
    log = open(os.path.join(work, "prometheus.log"), "w")
    proc = subprocess.Popen([binary, f"--config.file={cfg}",
                             f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    proc.port = port
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("prometheus not ready within 30 s")


def prom_query(prom, q):
    url = f"http://127.0.0.1:{prom.port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def check_prometheus(prom, d):
    served = d.metric_sum("kvr_time_to_first_token_seconds_count")
    assert served and served > 0
    assert d.metric("kvr_time_to_first_token_seconds_count", {"prompt_band": "<512"}) == served
    deadline = time.time() + 20
    res = []
    while time.time() < deadline:
        res = prom_query(prom, "sum(kvr_time_to_first_token_seconds_count)")
        if res and float(res[0]["value"][1]) >= served:
            break
        time.sleep(0.5)
    assert res and float(res[0]["value"][1]) >= served, f"scraped {res}, daemon says {served}"
    buckets = prom_query(prom, "kvr_time_to_first_token_seconds_bucket")
    les = {b["metric"]["le"] for b in buckets}
    assert {"0.001", "+Inf"} <= les and any(float(x) >= 60 for x in les if x != "+Inf"), les
    q = prom_query(prom, "histogram_quantile(0.5, sum by (le) (kvr_time_to_first_token_seconds_bucket))")
    assert q and float(q[0]["value"][1]) > 0, q
    bands = prom_query(prom, "sum by (prompt_band) (kvr_time_to_first_token_seconds_count)")
    assert {b["metric"]["prompt_band"] for b in bands} == {"<512", "512-2K", "2K-8K", "8K-32K", ">=32K"}, bands
    for name in ("kvr_worker_prefill_busy_seconds_total", "kvr_worker_prefill_wait_seconds_total",
                 "kvr_kv_transfer_sent_bytes_total"):
        series = prom_query(prom, name)
        assert {s["metric"]["worker"] for s in series} == {"0", "1"}, (name, series)
    busy = prom_query(prom, "kvr_worker_prefill_busy_seconds_total")
    assert all(float(s["value"][1]) > 0 for s in busy), busy
    sent = prom_query(prom, "sum(kvr_kv_transfer_sent_bytes_total)")
    assert float(sent[0]["value"][1]) > 0, sent
    for name in ("kvr_num_requests_running", "kvr_num_requests_waiting", "kvr_kv_cache_usage_perc",
                 "kvr_prompt_tokens_total", "kvr_generation_tokens_total",
                 "kvr_inter_token_latency_seconds_count", "kvr_e2e_request_latency_seconds_count",
                 "kvr_request_queue_time_seconds_count", "kvr_request_prefill_time_seconds_count",
                 "kvr_kv_cache_usage_bytes", "kvr_request_rejected_total"):
        assert prom_query(prom, name), f"{name} not scraped"
    ok = prom_query(prom, 'kvr_request_success_total{finished_reason="length"}')
    assert ok and float(ok[0]["value"][1]) > 0, ok


if __name__ == "__main__":
    sys.exit(main())
