#!/usr/bin/env python3
"""kvrd's security flags, end to end (docs/api.md, "Security"):

    security_test.py --kvrd BIN --stubs DIR --fixture tests/fixtures/llama3

- the default listen address is loopback (kvrd --helpfull shows 127.0.0.1:50051);
- --tls_cert/--tls_key: a TLS client that trusts the certificate generates; a plaintext client
  cannot talk to the port;
- --auth_token (and --auth_token_file): calls without the bearer token, or with a wrong one, end
  with UNAUTHENTICATED (Generate and the unary RPCs); health stays open for probes; the token is
  not written to the log;
- --max_message_bytes: a larger request is refused by gRPC with RESOURCE_EXHAUSTED;
- --max_prompt_bytes: a longer text prompt is refused with INVALID_ARGUMENT naming the limit,
  before tokenizing (Generate and Tokenize); a prompt at the limit is served.
One daemon carries all the flags. Every wait is bounded.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kvr_test_lib as lib  # noqa: E402

TOKEN = "s3cret-token-for-tests"
MAX_PROMPT = 200
MAX_MESSAGE = 64 * 1024


def make_cert(work):
    cert, key = os.path.join(work, "cert.pem"), os.path.join(work, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


def expect_code(code, fn, contains=None):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, f"got {e.code()} ({e.details()}), want {code}"
        if contains:
            assert contains in (e.details() or ""), f"{e.details()!r} lacks {contains!r}"
        return e
    raise AssertionError(f"call succeeded, want {code}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvrd", required=True)
    ap.add_argument("--stubs", required=True)
    ap.add_argument("--fixture", default="tests/fixtures/llama3")
    args = ap.parse_args()
    pb, pb_grpc = lib.import_stubs(args.stubs)

    out = subprocess.run([args.kvrd, "--helpfull"], capture_output=True, text=True, timeout=30)
    assert 'default: "127.0.0.1:50051"' in out.stdout + out.stderr, "default listen is not loopback"
    print("PASS default listen address is 127.0.0.1")

    work = tempfile.mkdtemp(prefix="kvrd-sec-")
    failed = []
    d = None
    try:
        model = lib.make_model(args.fixture, os.path.join(work, "model"))
        cert, key = make_cert(work)
        with open(cert, "rb") as f:
            root = f.read()
        token_file = os.path.join(work, "token")
        with open(token_file, "w") as f:
            f.write(TOKEN + "\n")
        creds = grpc.ssl_channel_credentials(root_certificates=root)
        opts = [("grpc.ssl_target_name_override", "localhost")]

        def tls_channel(address):
            return grpc.secure_channel(address, creds, options=opts)

        d = lib.Daemon(args.kvrd, model, work,
                       ["--tls_cert", cert, "--tls_key", key, "--auth_token_file", token_file,
                        "--max_message_bytes", str(MAX_MESSAGE),
                        "--max_prompt_bytes", str(MAX_PROMPT)],
                       channel_factory=tls_channel)
        d.start()
        stub = pb_grpc.KvrStub(d.channel)
        auth = [("authorization", f"Bearer {TOKEN}")]

        def check(name, fn):
            t0 = time.time()
            try:
                fn()
                print(f"PASS {name} ({time.time() - t0:.2f} s)", flush=True)
            except Exception as e:  # noqa: BLE001
                failed.append(name)
                print(f"FAIL {name}: {e}", flush=True)
                traceback.print_exc()

        def tls_with_token():
            resp = list(stub.Generate(pb.GenerateRequest(
                text="the cat", sampling=pb.SamplingParams(max_tokens=4, temperature=0)),
                metadata=auth, timeout=30))
            assert resp[-1].HasField("complete"), resp[-1]
            assert stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=auth, timeout=10).vocab_size > 0
        check("TLS client with the bearer token is served", tls_with_token)

        def plaintext_refused():
            with grpc.insecure_channel(d.address) as ch:
                expect_code(grpc.StatusCode.UNAVAILABLE,
                            lambda: pb_grpc.KvrStub(ch).GetModelInfo(pb.GetModelInfoRequest(),
                                                                     metadata=auth, timeout=5))
        check("plaintext client cannot talk to the TLS port", plaintext_refused)

        def no_token():
            req = pb.GenerateRequest(text="the cat", sampling=pb.SamplingParams(max_tokens=2))
            expect_code(grpc.StatusCode.UNAUTHENTICATED,
                        lambda: list(stub.Generate(req, timeout=10)), "bearer token")
            expect_code(grpc.StatusCode.UNAUTHENTICATED,
                        lambda: list(stub.Generate(req, metadata=[("authorization", "Bearer nope")],
                                                   timeout=10)), "not valid")
            expect_code(grpc.StatusCode.UNAUTHENTICATED,
                        lambda: list(stub.Generate(req, metadata=[("authorization", TOKEN)],
                                                   timeout=10)))
            for rpc, msg in [(stub.GetModelInfo, pb.GetModelInfoRequest()),
                             (stub.GetServerInfo, pb.GetServerInfoRequest()),
                             (stub.Tokenize, pb.TokenizeRequest(text="hi")),
                             (stub.Detokenize, pb.DetokenizeRequest(token_ids=[5])),
                             (stub.Abort, pb.AbortRequest(request_id="x"))]:
                expect_code(grpc.StatusCode.UNAUTHENTICATED, lambda: rpc(msg, timeout=10))
            assert lib.health_check(d.channel, timeout=5) == 1, "health must stay open"
            assert lib.health_check(d.channel, "kvr.v1.Kvr", timeout=5) == 1
            rej = d.metric("kvr_request_rejected_total", {"code": "UNAUTHENTICATED"})
            assert rej is not None and rej >= 8, rej
            assert TOKEN not in d.read_log(), "the token is in the log"
        check("calls without the right bearer token are UNAUTHENTICATED; health is open", no_token)

        def message_limit():
            ids = [200] * (MAX_MESSAGE // 2 + 100)  # 2 bytes each on the wire
            req = pb.GenerateRequest(token_ids=pb.TokenIds(ids=ids))
            assert req.ByteSize() > MAX_MESSAGE
            expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        lambda: list(stub.Generate(req, metadata=auth, timeout=10)))
        check("a message over --max_message_bytes is RESOURCE_EXHAUSTED", message_limit)

        def prompt_limit():
            text = "a" * (MAX_PROMPT + 1)
            req = pb.GenerateRequest(text=text, sampling=pb.SamplingParams(max_tokens=2))
            expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: list(stub.Generate(req, metadata=auth, timeout=10)),
                        f"at most {MAX_PROMPT} (--max_prompt_bytes)")
            expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: stub.Tokenize(pb.TokenizeRequest(text=text), metadata=auth,
                                              timeout=10), f"at most {MAX_PROMPT}")
            # At the limit: served (a prompt that fits the tiny model's context).
            ok = stub.Tokenize(pb.TokenizeRequest(text="ab" * (MAX_PROMPT // 2)), metadata=auth,
                               timeout=10)
            assert len(ok.token_ids) > 0
        check("a text prompt over --max_prompt_bytes is INVALID_ARGUMENT", prompt_limit)

        rc = d.stop(timeout=30)
        assert rc == 0, f"exit status {rc}"
    except Exception as e:  # noqa: BLE001
        failed.append(f"setup: {e}")
        traceback.print_exc()
        if d is not None:
            print(f"--- kvrd log (tail) ---\n{d.read_log()}")
    finally:
        if d is not None:
            d.kill()
        shutil.rmtree(work, ignore_errors=True)

    # Bad security configs are refused at start with exit status 2.
    for bad in (["--tls_cert", "/nonexistent.pem"],
                ["--tls_cert", "/nonexistent.pem", "--tls_key", "/nonexistent.key"],
                ["--auth_token", "a", "--auth_token_file", "/etc/hostname"],
                ["--max_message_bytes", "10"]):
        r = subprocess.run([args.kvrd, "--model", args.fixture, "--backend", "cpu", *bad],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 2:
            failed.append(f"config {bad}: exit {r.returncode}")
            print(f"FAIL config {bad}: exit {r.returncode}\n{r.stderr[-1000:]}")
    if not any(f.startswith("config") for f in failed):
        print("PASS bad TLS/token/limit configs exit 2")

    print("security test:", "FAIL " + ", ".join(failed) if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
