#!/usr/bin/env python3
"""Soak test of kvrd on the CPU backend (docs/reliability.md): mixed clients for a bounded time.

    soak_test.py --kvrd BIN --stubs DIR --fixture tests/fixtures/llama3 [--seconds 30]

Clients (threads) loop over: plain streams, cancellations mid-stream, Aborts mid-stream, bad
requests, and bursts past the admission queue (--max_queue 8); other clients are processes that
start a stream and are killed (SIGKILL) while reading it, so their connection drops without a
cancel. Reports requests served, rejected with a status (by code), lost (must be 0), crashes
(must be 0: the daemon is alive throughout and exits 0 on SIGTERM) and resident memory at start
and end (must be flat: end within 32 MiB of the first sample after warm-up). The KV-cache and the
queue gauges must return to zero, and the daemon's counters must agree with the clients'.
"""
import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvr_test_lib as lib  # noqa: E402

STREAM_CLIENTS = 24
BURST_CLIENTS = 2
DISCONNECTERS = 2
PROMPTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog", "hello",
           "In the beginning there was the word, and the word was long " * 4]

# A client process that starts a stream, says so after the first chunk, then waits to be killed.
DISCONNECTER = r"""
import sys, time, grpc
sys.path.insert(0, sys.argv[1])
from kvr.v1 import kvr_pb2 as pb, kvr_pb2_grpc as pb_grpc
stub = pb_grpc.KvrStub(grpc.insecure_channel(sys.argv[2]))
call = stub.Generate(pb.GenerateRequest(request_id=sys.argv[3], text="Once upon a time",
    sampling=pb.SamplingParams(max_tokens=200, ignore_eos=True)), timeout=60)
try:
    next(iter(call))
    print("streaming", flush=True)
except grpc.RpcError as e:
    print(e.code().name, flush=True)
time.sleep(60)
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvrd", required=True)
    ap.add_argument("--stubs", required=True)
    ap.add_argument("--fixture", default="tests/fixtures/llama3")
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    pb, pb_grpc = lib.import_stubs(args.stubs)

    work = tempfile.mkdtemp(prefix="kvrd-soak-")
    model = lib.make_model(args.fixture, os.path.join(work, "model"))
    d = lib.Daemon(args.kvrd, model, work, ["--testing_decode_delay_ms", "2", "--max_queue", "8",
                                            "--max_running", "16", "--shutdown_timeout_s", "10"])
    outcomes = Counter()
    lost, crashes = [], []
    lock = threading.Lock()
    rss = []
    try:
        d.start()
        rss_start = d.rss_kib()
        channels = [grpc.insecure_channel(d.address) for _ in range(8)]
        stop_at = time.time() + args.seconds

        def record(kind, detail=None):
            with lock:
                outcomes[kind] += 1
                if kind == "lost":
                    lost.append(detail)

        def request(rng, rid, max_tokens=None):
            sampling = pb.SamplingParams(max_tokens=max_tokens or rng.randint(1, 48),
                                         temperature=rng.choice([0.0, 0.7]), seed=rng.randint(0, 9))
            if rng.random() < 0.5:
                return pb.GenerateRequest(request_id=rid, text=rng.choice(PROMPTS), sampling=sampling)
            return pb.GenerateRequest(request_id=rid, sampling=sampling, token_ids=pb.TokenIds(
                ids=[rng.randint(3, 255) for _ in range(rng.randint(1, 150))]))

        def served(rid, resp):
            if resp and resp[-1].HasField("complete"):
                c = resp[-1].complete
                got = sum(len(r.chunk.token_ids) for r in resp if r.HasField("chunk"))
                if got == c.completion_tokens:
                    return record("served")
                return record("lost", (rid, "token count mismatch", got, c.completion_tokens))
            record("lost", (rid, "no completion"))

        def stream_client(i):
            rng = random.Random(i)
            stub = pb_grpc.KvrStub(channels[i % len(channels)])
            n = 0
            while time.time() < stop_at:
                n += 1
                rid = f"s{i}-{n}"
                action = rng.random()
                try:
                    if action < 0.10:  # bad request
                        req = request(rng, rid)
                        req.sampling.top_p = 5.0
                        try:
                            list(stub.Generate(req, timeout=30))
                            record("lost", (rid, "bad request accepted"))
                        except grpc.RpcError as e:
                            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                                record("rejected:INVALID_ARGUMENT")
                            else:
                                record("lost", (rid, e.code(), e.details()))
                    elif action < 0.25:  # cancel mid-stream
                        req = request(rng, rid, 200)
                        req.sampling.ignore_eos = True
                        call = stub.Generate(req, timeout=30)
                        got, want = [], rng.randint(1, 4)
                        for r in call:
                            got.append(r)
                            if len(got) >= want:
                                break
                        if got and got[-1].HasField("complete"):
                            served(rid, got)  # ended before the cancel (a stop token)
                        else:
                            call.cancel()
                            record("cancelled")
                    elif action < 0.35:  # Abort mid-stream
                        req = request(rng, rid, 200)
                        req.sampling.ignore_eos = True
                        call = stub.Generate(req, timeout=30)
                        it = iter(call)
                        next(it)
                        try:
                            stub.Abort(pb.AbortRequest(request_id=rid), timeout=10)
                        except grpc.RpcError as e:
                            if e.code() != grpc.StatusCode.NOT_FOUND:
                                raise
                        rest = list(it)
                        if rest and rest[-1].HasField("complete"):
                            record("aborted")
                        else:
                            record("lost", (rid, "no completion after Abort"))
                    else:
                        served(rid, list(stub.Generate(request(rng, rid), timeout=30)))
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        record("rejected:RESOURCE_EXHAUSTED")
                        time.sleep(0.05 + rng.random() * 0.1)
                    else:
                        record("lost", (rid, e.code(), e.details()))
                except StopIteration:
                    record("lost", (rid, "stream ended early"))

        def burst_client(i):
            # 16 requests at once against a queue of 8: some must be refused at once.
            rng = random.Random(1000 + i)
            stub = pb_grpc.KvrStub(channels[i % len(channels)])
            n = 0
            while time.time() < stop_at:
                futures = []
                for _ in range(16):
                    n += 1
                    rid = f"b{i}-{n}"
                    futures.append((rid, stub.Generate(request(rng, rid, 8), timeout=30)))
                for rid, call in futures:
                    try:
                        served(rid, list(call))
                    except grpc.RpcError as e:
                        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                            record("rejected:RESOURCE_EXHAUSTED")
                        else:
                            record("lost", (rid, e.code(), e.details()))
                time.sleep(0.5)

        def disconnecter(i):
            n = 0
            while time.time() < stop_at - 3:
                n += 1
                p = subprocess.Popen([sys.executable, "-c", DISCONNECTER, args.stubs, d.address,
                                      f"k{i}-{n}"], stdout=subprocess.PIPE, text=True)
                line = p.stdout.readline().strip()
                p.kill()
                p.wait(timeout=10)
                p.stdout.close()
                if line == "streaming":
                    record("disconnected")
                elif line == "RESOURCE_EXHAUSTED":
                    record("rejected:RESOURCE_EXHAUSTED")
                else:
                    record("lost", (f"k{i}-{n}", "disconnecting client saw", line))

        def sampler():
            while time.time() < stop_at:
                if d.proc.poll() is not None:
                    crashes.append(d.proc.returncode)
                    return
                rss.append((time.time(), d.rss_kib()))
                time.sleep(0.5)

        threads = [threading.Thread(target=stream_client, args=(i,), daemon=True)
                   for i in range(STREAM_CLIENTS)]
        threads += [threading.Thread(target=burst_client, args=(i,), daemon=True)
                    for i in range(BURST_CLIENTS)]
        threads += [threading.Thread(target=disconnecter, args=(i,), daemon=True)
                    for i in range(DISCONNECTERS)]
        threads.append(threading.Thread(target=sampler, daemon=True))
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.seconds + 90)
        hung = sum(t.is_alive() for t in threads)
        elapsed = time.time() - t0
        if d.proc.poll() is not None:
            crashes.append(d.proc.returncode)

        # Let the daemon settle: what was cut off or killed ends, caches are freed.
        d.wait_metric("kvr_num_requests_running", lambda v: v == 0, timeout=30)
        d.wait_metric("kvr_num_requests_waiting", lambda v: v == 0, timeout=10)
        d.wait_metric("kvr_kv_cache_usage_bytes", lambda v: v == 0, timeout=10)
        rss_end = d.rss_kib()
        warm = [v for t, v in rss if t >= t0 + min(5.0, elapsed / 4)]
        rss_warm = warm[0] if warm else rss_start
        rejected = {k.split(":", 1)[1]: v for k, v in outcomes.items() if k.startswith("rejected:")}
        total = sum(outcomes.values())
        print(f"SOAK {elapsed:.0f} s: {total} requests; served {outcomes['served']}, "
              f"cancelled {outcomes['cancelled']}, aborted {outcomes['aborted']}, "
              f"disconnected {outcomes['disconnected']}, rejected {sum(rejected.values())} "
              f"{rejected}, lost {len(lost)}, crashes {len(crashes)}; RSS start {rss_start / 1024:.1f} MiB, "
              f"after warm-up {rss_warm / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB, "
              f"peak {max(v for _, v in rss) / 1024:.1f} MiB", flush=True)
        assert hung == 0, f"{hung} client threads hung"
        assert not crashes, f"kvrd died: {crashes}"
        assert not lost, f"{len(lost)} lost: {lost[:5]}"
        assert outcomes["served"] > 50, outcomes
        assert rejected.get("RESOURCE_EXHAUSTED", 0) > 0, "the queue never overflowed"
        assert rejected.get("INVALID_ARGUMENT", 0) > 0, outcomes
        assert outcomes["cancelled"] > 0 and outcomes["aborted"] > 0, outcomes
        assert outcomes["disconnected"] > 0, outcomes

        admitted = (outcomes["served"] + outcomes["cancelled"] + outcomes["aborted"] +
                    outcomes["disconnected"])
        lib.assert_every_admitted_request_ended(d, admitted)
        assert rss_end - rss_warm < 32 * 1024, f"RSS grew {rss_warm} -> {rss_end} KiB"

        return lib.stop_and_pass(d, "soak test")
    except Exception as e:  # noqa: BLE001
        return lib.fail_with_log(d, "soak test", e)
    finally:
        d.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
