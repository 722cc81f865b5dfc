#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/seed-*: a few valid
frames and state-dir files, and a few near misses. Run from anywhere;
the files are committed, so this is only needed to change them."""

import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, value):
    """One protobuf field: an int is a varint, bytes/str length-delimited."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def frame(*fields):
    body = b"".join(field(n, v) for n, v in fields)
    return struct.pack(">I", len(body)) + body


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


# Hello: version=1, app_id=2, one_time_token=3, api_token=4,
# client_certificate=5, instance=6, reconnect_token=7.
write("hello", "hello-token", frame((1, 1), (2, "app"), (3, "t0k3n"), (6, "host-1")))
write("hello", "hello-api-token", frame((1, 1), (2, "orders"), (4, "secret")))
write("hello", "hello-client-cert", frame((1, 1), (2, "app"), (5, True)))
write("hello", "hello-reconnect", frame((1, 1), (2, "app"), (7, "r3c0nn3ct"), (6, "i")))
write("hello", "hello-v2-no-credential", frame((1, 2), (2, "app")))
# Verdict: accepted=1, reason=2, message=3, channel_id=4, reconnect_token=5.
write("hello", "verdict-accepted", frame((1, True), (4, 7), (5, "r3c0nn3ct")))
write("hello", "verdict-refused", frame((2, 4), (3, "bad credential")))
write("hello", "truncated", frame((1, 1), (2, "app"), (3, "t"))[:9])
write("hello", "oversized-prefix", struct.pack(">I", 16 * 1024 + 1) + b"x")
write("hello", "http-request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")

write(
    "statedir",
    "peers",
    b"peer 127.0.0.1:5000\npeer [::1]:6000\npeer [fe80::1%2]:7000\n"
    b"cid 01020304\ncid 00000000000000000000000000000000000000ff\ncid \n",
)
write("statedir", "peers-garbage", b"peer nonsense\ncid zz\ncid 123\nbogus\r\ncid +f+f\n")
write("statedir", "reset-key", bytes(range(32)))
