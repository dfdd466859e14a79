#!/usr/bin/env python3
"""Faults in a running kvrd (docs/reliability.md), CPU backend, 2 prefill workers:

    fault_test.py --kvrd BIN --stubs DIR --fixture tests/fixtures/llama3

1. Worker fault mid-prefill (KVR_TESTING_CPU_FAULT=1:1:TRIGGER: worker 1 fails at layer 1 on
   any prefill chunk holding token TRIGGER): that request ends with INTERNAL and a message that
   names the worker, while a stream started before keeps going to its completion; the daemon
   stays SERVING after one failure and serves the next request; after
   --unhealthy_after_failures failures in a row its health turns NOT_SERVING, and the next
   request served turns it back to SERVING.
2. The model folder (real copies of the files, not links) truncated, rewritten, then deleted
   after start: kvrd keeps serving, the same output as before, and exits 0 on SIGTERM.
3. Worker hang mid-prefill (KVR_TESTING_CPU_FAULT=1:1:TRIGGER:HANG_S: worker 1 stalls HANG_S
   seconds at layer 1), with --prefill_timeout_s 1: the prefill watchdog fails that request with
   DEADLINE_EXCEEDED naming the worker and the layer, long before the hang ends; a stream started
   before completes; while the worker is still stuck requests fail fast (UNAVAILABLE naming it);
   once it returns kvrd serves the same output as before; failures in a row turn health
   NOT_SERVING and a request served turns it back.
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvr_test_lib as lib  # noqa: E402

TRIGGER = 250
GOOD_IDS = list(range(5, 40))  # no TRIGGER
HANG_S = 5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvrd", required=True)
    ap.add_argument("--stubs", required=True)
    ap.add_argument("--fixture", default="tests/fixtures/llama3")
    args = ap.parse_args()
    pb, pb_grpc = lib.import_stubs(args.stubs)

    work = tempfile.mkdtemp(prefix="kvrd-fault-")
    failed = []
    d = None
    daemons = []
    try:
        model = lib.make_model(args.fixture, os.path.join(work, "model"))
        for name in os.listdir(model):  # links -> real copies this test may destroy
            p = os.path.join(model, name)
            if os.path.islink(p):
                target = os.path.realpath(p)
                os.remove(p)
                shutil.copyfile(target, p)
        d = lib.Daemon(args.kvrd, model, work,
                       ["--testing_decode_delay_ms", "5", "--unhealthy_after_failures", "3"],
                       env={"KVR_TESTING_CPU_FAULT": f"1:1:{TRIGGER}"})
        daemons.append(d)
        d.start()
        stub = pb_grpc.KvrStub(d.channel)

        def greedy(max_tokens=8):
            resp = list(stub.Generate(pb.GenerateRequest(
                token_ids=pb.TokenIds(ids=GOOD_IDS),
                sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)),
                timeout=60))
            assert resp[-1].HasField("complete"), resp[-1]
            return [t for r in resp if r.HasField("chunk") for t in r.chunk.token_ids]

        def faulty():
            try:
                list(stub.Generate(pb.GenerateRequest(
                    token_ids=pb.TokenIds(ids=[TRIGGER] * 12),
                    sampling=pb.SamplingParams(max_tokens=4)), timeout=60))
            except grpc.RpcError as e:
                return e
            raise AssertionError("the faulty request succeeded")

        def check(name, fn):
            t0 = time.time()
            try:
                fn()
                print(f"PASS {name} ({time.time() - t0:.2f} s)", flush=True)
            except Exception as e:  # noqa: BLE001
                failed.append(name)
                print(f"FAIL {name}: {e}", flush=True)
                traceback.print_exc()

        def start_long_stream():
            """A 60-token stream on the current daemon, in a thread, running once this returns:
            it must run on while another request fails."""
            long_done = {}

            def long_stream():
                try:
                    long_done["ids"] = greedy(max_tokens=60)
                except Exception as e:  # noqa: BLE001
                    long_done["error"] = e
            t = threading.Thread(target=long_stream)
            t.start()
            d.wait_metric("kvr_num_requests_running", lambda v: v >= 1, timeout=30)
            return t, long_done

        def finish_long_stream(t, long_done):
            t.join(timeout=120)
            assert not t.is_alive(), "the running stream hung"
            assert "ids" in long_done and len(long_done["ids"]) == 60, long_done

        baseline = greedy()

        def one_fault():
            # A long stream first: it must run on while the faulty request fails.
            t, long_done = start_long_stream()
            e = faulty()
            assert e.code() == grpc.StatusCode.INTERNAL, (e.code(), e.details())
            assert "cpu worker 1" in e.details() and "injected fault at layer 1" in e.details(), \
                e.details()
            finish_long_stream(t, long_done)
            assert lib.health_check(d.channel, timeout=5) == 1, "one failure must not flip health"
            assert greedy() == baseline, "output changed after a fault"
            assert d.metric("kvr_request_success_total", {"finished_reason": "error"}) == 1
        check("a worker fault fails only its request, with INTERNAL naming the worker", one_fault)

        def unhealthy():
            for _ in range(3):
                assert faulty().code() == grpc.StatusCode.INTERNAL
            assert lib.health_check(d.channel, timeout=5) == 2, "health still SERVING"
            assert lib.health_check(d.channel, "kvr.v1.Kvr", timeout=5) == 2
            assert greedy() == baseline
            assert lib.health_check(d.channel, timeout=5) == 1, "health not back to SERVING"
        check("3 failures in a row turn health NOT_SERVING; a request served turns it back",
              unhealthy)

        def folder_changes():
            for name in os.listdir(model):
                with open(os.path.join(model, name), "r+b") as f:
                    f.truncate(0)
            with open(os.path.join(model, "config.json"), "w") as f:
                f.write("{ not json")
            assert greedy() == baseline
            shutil.rmtree(model)
            assert not os.path.exists(model)
            assert greedy() == baseline
            text = list(stub.Generate(pb.GenerateRequest(
                text="the cat", sampling=pb.SamplingParams(max_tokens=4)), timeout=60))
            assert text[-1].HasField("complete")
            assert stub.Tokenize(pb.TokenizeRequest(text="the cat"), timeout=10).token_ids
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).vocab_size == 256
            assert lib.health_check(d.channel, timeout=5) == 1
        check("model folder truncated, rewritten, then deleted after start: still serving",
              folder_changes)

        rc = d.stop(timeout=30)
        if rc != 0:
            failed.append(f"exit status {rc}")

        # 3. A worker that hangs: the prefill watchdog.
        d = lib.Daemon(args.kvrd, lib.make_model(args.fixture, os.path.join(work, "model-hang")),
                       work, ["--testing_decode_delay_ms", "5", "--unhealthy_after_failures", "3",
                              "--prefill_timeout_s", "1"], name="kvrd-hang",
                       env={"KVR_TESTING_CPU_FAULT": f"1:1:{TRIGGER}:{HANG_S}"})
        daemons.append(d)
        d.start()
        stub = pb_grpc.KvrStub(d.channel)
        baseline = greedy()

        def served_again():
            """Retries a greedy request until the stuck worker is back; returns its tokens."""
            deadline = time.time() + HANG_S + 60
            while True:
                try:
                    return greedy()
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE, (e.code(), e.details())
                    assert "prefill worker 1 (" in e.details() and "still stuck" in e.details(), \
                        e.details()
                    assert time.time() < deadline, "the stuck worker never came back"
                    time.sleep(0.2)

        def one_hang():
            t, long_done = start_long_stream()
            t0 = time.time()
            e = faulty()
            elapsed = time.time() - t0
            assert e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (e.code(), e.details())
            assert "prefill worker 1 (" in e.details() and "at layer 1 (computing)" in e.details(), \
                e.details()
            assert elapsed < HANG_S, f"failed after {elapsed:.1f} s: the hang ended first"
            assert lib.health_check(d.channel, timeout=5) == 1, "one failure must not flip health"
            finish_long_stream(t, long_done)
            assert served_again() == baseline, "output changed after a hang"
        check("a hung worker fails its request with DEADLINE_EXCEEDED naming the worker", one_hang)

        def unhealthy_hang():
            for _ in range(3):
                code = faulty().code()
                assert code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE), code
            assert lib.health_check(d.channel, timeout=5) == 2, "health still SERVING"
            assert served_again() == baseline
            assert lib.health_check(d.channel, timeout=5) == 1, "health not back to SERVING"
        check("hangs in a row turn health NOT_SERVING; a request served turns it back",
              unhealthy_hang)
        rc = d.stop(timeout=60)
        if rc != 0:
            failed.append(f"exit status {rc} (hang)")
    except Exception as e:  # noqa: BLE001
        failed.append(f"setup: {e}")
        traceback.print_exc()
    finally:
        for daemon in daemons:
            if failed:
                print(f"--- {daemon.log_path} (tail) ---\n{daemon.read_log()}")
            daemon.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("fault test:", "FAIL " + ", ".join(failed) if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
