"""A tiny Envoy rate limit service for the real-Envoy tests (wasm-tests/tests/envoy_rate_limits.rs).

Implements envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit with a fixed-window counter
per descriptor: limits are given on the command line as `key=value:requests_per_window`; a
descriptor whose entries all match a limit's key and value counts against it, and the request is
OVER_LIMIT (with `retry-after` set to the seconds left in the window) once a counter is past its
limit. Descriptors without a configured limit are allowed. Messages are encoded and decoded by hand
(protobuf wire format), so the only dependency is grpcio.

    python rls.py --port PORT --window-s 60 client_id=app-a:2

Listens on 127.0.0.1 only; prints `ready PORT` when serving; stopped by its PID.
"""

import argparse
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "envoy.service.ratelimit.v3.RateLimitService"
OK, OVER_LIMIT = 1, 2


def varint(data, i):
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def fields(data):
    """Yields (field number, wire type, value) of a message; length-delimited values as bytes."""
    i = 0
    while i < len(data):
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 2:
            n, i = varint(data, i)
            value, i = data[i:i + n], i + n
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError("unsupported wire type")
        yield number, wire, value


def put_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def put(number, value):
    if isinstance(value, int):
        return put_varint(number << 3) + put_varint(value)
    if isinstance(value, str):
        value = value.encode()
    return put_varint(number << 3 | 2) + put_varint(len(value)) + value


def descriptors(request):
    """The descriptors of a ShouldRateLimitRequest: lists of (key, value)."""
    out = []
    for number, _, value in fields(request):
        if number != 2:  # descriptors
            continue
        entries = []
        for n, _, entry in fields(value):
            if n != 1:  # entries
                continue
            kv = {k: v.decode() for k, _, v in fields(entry)}
            entries.append((kv.get(1, ""), kv.get(2, "")))
        out.append(entries)
    return out


class Limiter:
    def __init__(self, limits, window_s):
        self.limits = limits  # {(key, value): requests per window}
        self.window_s = window_s
        self.counts = {}
        self.lock = threading.Lock()

    def should_rate_limit(self, request, _context):
        now = time.time()
        window = int(now // self.window_s)
        over = False
        with self.lock:
            for entries in descriptors(request):
                limit = None
                for entry in entries:
                    if entry in self.limits:
                        limit = self.limits[entry]
                if limit is None:
                    continue
                key = (tuple(entries), window)
                self.counts[key] = self.counts.get(key, 0) + 1
                if self.counts[key] > limit:
                    over = True
        if not over:
            return put(1, OK)
        retry_after = max(1, int((window + 1) * self.window_s - now + 0.999))
        header = put(1, "retry-after") + put(2, str(retry_after))
        return put(1, OVER_LIMIT) + put(3, header)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--window-s", type=int, default=60)
    parser.add_argument("limits", nargs="*")
    args = parser.parse_args()
    limits = {}
    for spec in args.limits:
        entry, count = spec.rsplit(":", 1)
        key, value = entry.split("=", 1)
        limits[(key, value)] = int(count)
    limiter = Limiter(limits, args.window_s)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {"ShouldRateLimit": grpc.unary_unary_rpc_method_handler(limiter.should_rate_limit)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"ready {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
