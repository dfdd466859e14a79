#!/usr/bin/python3
"""kvr-healthcheck: asks kvrd's standard gRPC health service (grpc.health.v1.Health/Check).

    kvr-healthcheck [HOST:PORT] [--service NAME] [--timeout SECONDS]

Exits 0 when the service answers SERVING, 1 otherwise (with the reason on stderr). The address
defaults to 127.0.0.1 and the port of KVR_LISTEN (0.0.0.0:50051 in the image); the service to
"kvr.v1.Kvr" ("" asks about the server as a whole). Needs only python3-grpcio: the two tiny
health messages are encoded here by hand, so no generated stubs or protobuf runtime are needed.
"""
import argparse
import os
import sys

import grpc

STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{string service = 1}."""
    data = service.encode()
    if not data:
        return b""
    out, n = bytearray(b"\x0a"), len(data)
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            break
    return bytes(out) + data


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at data[i:] and the index after it."""
    value, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def decode_status(data: bytes) -> int:
    """HealthCheckResponse{ServingStatus status = 1}: the status (0 when absent)."""
    i, status = 0, 0
    while i < len(data):
        key, i = read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(data, i)
            if field == 1:
                status = value
        elif wire == 2:
            n, i = read_varint(data, i)
            i += n
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return status


def default_address() -> str:
    listen = os.environ.get("KVR_LISTEN", "0.0.0.0:50051")
    return "127.0.0.1:" + listen.rsplit(":", 1)[-1]


def check(address: str, service: str, timeout: float) -> int:
    """The serving status (see STATUS_NAMES); raises grpc.RpcError when kvrd does not answer."""
    # No proxy: the probe talks to the daemon on this host only, whatever http_proxy says.
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=None, response_deserializer=None)
        return decode_status(call(encode_request(service), timeout=timeout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", default=default_address())
    parser.add_argument("--service", default="kvr.v1.Kvr")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    try:
        status = check(args.address, args.service, args.timeout)
    except grpc.RpcError as e:
        print(f"kvr-healthcheck: {args.address}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    name = STATUS_NAMES.get(status, str(status))
    if status != 1:
        print(f"kvr-healthcheck: {args.address} service {args.service!r}: {name}", file=sys.stderr)
        return 1
    print(f"kvr-healthcheck: {args.address} service {args.service!r}: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
