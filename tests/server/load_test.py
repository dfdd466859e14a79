#!/usr/bin/env python3
"""Load test of kvrd: 64 concurrent client streams for a bounded time on the tiny fixture.

    load_test.py --kvrd BIN --stubs DIR --fixture tests/fixtures/llama3 [--seconds 25]

Each client loops over a mix: plain streams (text or ids, random lengths and sampling),
cancellations mid-stream, Aborts mid-stream, and bad requests. Checks: every request ends with a
completion or a status (RESOURCE_EXHAUSTED when the queue is full, INVALID_ARGUMENT for the bad
ones), none is lost or hangs; the daemon's counters agree with the clients'; the KV-cache and
the running/waiting gauges return to zero; the resident memory stays flat; SIGTERM exits 0.
"""
import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvr_test_lib as lib  # noqa: E402

CLIENTS = 64
PROMPTS = ["Once upon a time", "The quick brown fox jumps over the lazy dog", "hello",
           "In the beginning there was the word, and the word was long " * 4]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvrd", required=True)
    ap.add_argument("--stubs", required=True)
    ap.add_argument("--fixture", default=os.environ.get("KVR_TEST_FIXTURE", "tests/fixtures/llama3"))
    ap.add_argument("--seconds", type=float, default=25)
    args = ap.parse_args()
    pb, pb_grpc = lib.import_stubs(args.stubs)

    work = tempfile.mkdtemp(prefix="kvrd-load-")
    model = lib.make_model(args.fixture, os.path.join(work, "model"))
    d = lib.Daemon(args.kvrd, model, work, ["--testing_decode_delay_ms", "2", "--max_queue", "16",
                                            "--max_running", "16", "--shutdown_timeout_s", "10"])
    outcomes = Counter()
    lost = []
    lock = threading.Lock()
    rss = []
    try:
        d.start()
        channels = [grpc.insecure_channel(d.address) for _ in range(8)]
        stop_at = time.time() + args.seconds

        def record(kind, detail=None):
            with lock:
                outcomes[kind] += 1
                if kind == "lost":
                    lost.append(detail)

        def client(i):
            rng = random.Random(i)
            stub = pb_grpc.KvrStub(channels[i % len(channels)])
            n = 0
            while time.time() < stop_at:
                n += 1
                rid = f"c{i}-{n}"
                action = rng.random()
                sampling = pb.SamplingParams(max_tokens=rng.randint(1, 64),
                                             temperature=rng.choice([0.0, 0.7, 1.0]),
                                             top_k=rng.choice([0, 5]), seed=rng.randint(0, 9))
                if rng.random() < 0.5:
                    req = pb.GenerateRequest(request_id=rid, text=rng.choice(PROMPTS), sampling=sampling)
                else:
                    req = pb.GenerateRequest(request_id=rid, sampling=sampling, token_ids=pb.TokenIds(
                        ids=[rng.randint(3, 255) for _ in range(rng.randint(1, 200))]))
                if action < 0.05:
                    req.sampling.top_p = 5.0  # bad
                try:
                    if action < 0.05:
                        try:
                            list(stub.Generate(req, timeout=30))
                            record("lost", (rid, "bad request accepted"))
                        except grpc.RpcError as e:
                            record("invalid" if e.code() == grpc.StatusCode.INVALID_ARGUMENT
                                   else "lost", (rid, e.code(), e.details()))
                        continue
                    if action < 0.20:  # cancel mid-stream
                        req.sampling.max_tokens = 200
                        req.sampling.ignore_eos = True
                        call = stub.Generate(req, timeout=30)
                        it = iter(call)
                        for _ in range(rng.randint(1, 5)):
                            next(it)
                        call.cancel()
                        record("cancelled")
                        continue
                    if action < 0.30:  # Abort mid-stream
                        req.sampling.max_tokens = 200
                        req.sampling.ignore_eos = True
                        call = stub.Generate(req, timeout=30)
                        it = iter(call)
                        next(it)
                        try:
                            stub.Abort(pb.AbortRequest(request_id=rid), timeout=10)
                        except grpc.RpcError as e:
                            if e.code() != grpc.StatusCode.NOT_FOUND:
                                raise
                        last = list(it)[-1]
                        if not last.HasField("complete"):
                            record("lost", (rid, "no completion after Abort"))
                        else:
                            record("aborted" if last.complete.finish_reason == pb.FINISH_REASON_ABORT
                                   else "completed")
                        continue
                    resp = list(stub.Generate(req, timeout=30))
                    if resp and resp[-1].HasField("complete"):
                        c = resp[-1].complete
                        got = sum(len(r.chunk.token_ids) for r in resp if r.HasField("chunk"))
                        if got != c.completion_tokens:
                            record("lost", (rid, "token count mismatch", got, c.completion_tokens))
                        else:
                            record("completed")
                    else:
                        record("lost", (rid, "no completion"))
                except grpc.RpcError as e:
                    if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        record("rejected")
                        time.sleep(0.05 + rng.random() * 0.15)  # back off, then retry
                    else:
                        record("lost", (rid, e.code(), e.details()))
                except StopIteration:
                    record("lost", (rid, "stream ended early"))

        def sampler():
            while time.time() < stop_at:
                rss.append((time.time(), d.rss_kib()))
                time.sleep(0.5)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=sampler, daemon=True))
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=args.seconds + 60)
        hung = sum(t.is_alive() for t in threads)
        elapsed = time.time() - t0
        print(f"{sum(outcomes.values())} requests in {elapsed:.1f} s: {dict(outcomes)}", flush=True)
        assert hung == 0, f"{hung} client threads hung"
        assert not lost, f"{len(lost)} lost: {lost[:5]}"
        assert outcomes["completed"] > 100, outcomes
        assert outcomes["rejected"] > 0, "the queue never filled: no RESOURCE_EXHAUSTED seen"
        assert outcomes["cancelled"] > 0 and outcomes["aborted"] > 0, outcomes

        # The daemon agrees: everything admitted ended, everything refused was counted.
        d.wait_metric("kvr_num_requests_running", lambda v: v == 0)
        d.wait_metric("kvr_num_requests_waiting", lambda v: v == 0)
        d.wait_metric("kvr_kv_cache_usage_bytes", lambda v: v == 0)
        admitted = outcomes["completed"] + outcomes["cancelled"] + outcomes["aborted"]
        lib.assert_every_admitted_request_ended(d, admitted)
        rej = d.metric("kvr_request_rejected_total", {"code": "RESOURCE_EXHAUSTED"})
        assert rej == outcomes["rejected"], (rej, outcomes["rejected"])

        # Memory stays flat: the second half's peak within 25% (and 32 MiB) of the first half's.
        half = t0 + elapsed / 2
        first = max(v for t, v in rss if t < half)
        second = max(v for t, v in rss if t >= half)
        print(f"RSS peak: first half {first / 1024:.1f} MiB, second half {second / 1024:.1f} MiB")
        assert second <= first * 1.25 + 32 * 1024 and second - first < 32 * 1024, (first, second)

        return lib.stop_and_pass(d, "load test")
    except Exception as e:  # noqa: BLE001
        return lib.fail_with_log(d, "load test", e)
    finally:
        d.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
