#!/usr/bin/env python3
"""Envoy-level cost per request in CPU instructions: deterministic, whatever the machine's load.

Wall-clock throughput on a shared 2-core machine moves with everything else running; the number of
instructions Envoy executes per request does not. This runs the same Envoy and listeners as run.py
(A no auth, W null Wasm, R a Wasm module only reading the request headers, H the filter's host calls
only, B jwt_authn, B' jwt_authn + cache, C this filter; one worker) under valgrind's callgrind, sends `--requests` requests with one RS256 token
over one keep-alive connection to each listener in turn (after a warm-up, so C answers from its
token cache), counts the instructions Envoy executed for them (all threads; V8's generated code
included), and reports instructions per request and the ratios. A is measured again at the end:
the two A rows show the method's repeatability.

Instruction counts are a proxy for CPU time, not a measure of it: for A, W, H and C (the same kind
of work: Envoy, V8 and the filter) their ratios tracked run.py's wrk ratios (C/A 0.62 here against
0.61 with wrk, same build); jwt_authn's RSA arithmetic runs at a much higher rate of instructions
per cycle, so B's instruction count overstates its time (B/A 0.41 here against 0.67 with wrk).

  envoy/bench/instructions.py --envoy .venv/bin/envoy --wasm target/wasm32-wasip1/release/smart_fhir_edge.wasm \
      --null-wasm target/bench/null-filter.wasm --host-calls-wasm target/bench/host-calls.wasm \
      --read-headers-wasm target/bench/read-headers.wasm --tokens target/bench/tokens.txt --out target/bench/instructions.md [--requests 300]
"""

import argparse
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402

ORDER = [("A", "no_auth"), ("W", "null_wasm"), ("R", "read_headers_wasm"), ("H", "host_calls_wasm"), ("B", "jwt_authn"),
         ("B'", "jwt_authn_cached"), ("C", "smart_fhir_edge"), ("A", "no_auth")]


def real_binary(path):
    """The Envoy executable itself: pip's `envoy` entry point is a Python script that execs it, and
    valgrind would follow only the script."""
    with open(path, "rb") as f:
        if f.read(2) != b"#!":
            return os.path.abspath(path)
    venv = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    found = glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "envoy", "_bin", "envoy"))
    if not found:
        sys.exit(f"{path} is a script and no envoy/_bin/envoy is beside it: pass the Envoy binary")
    return found[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--null-wasm", required=True)
    ap.add_argument("--host-calls-wasm", required=True)
    ap.add_argument("--read-headers-wasm", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=300)
    args = ap.parse_args()
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        sys.exit("valgrind (with callgrind_control) is needed: apt-get install -y valgrind")
    token = run.read_tokens(args.tokens)[0]
    workdir = tempfile.mkdtemp(prefix="smart-fhir-edge-ir-")
    dumps = os.path.join(workdir, "callgrind.out")
    wrapper = os.path.join(workdir, "envoy-under-callgrind")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --smc-check=all-non-file "
                f"--callgrind-out-file={dumps}.%p {real_binary(args.envoy)} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    run.log("starting Envoy under callgrind (about 20 s)")
    envoy = run.Envoy(wrapper, args.wasm, workdir, null_wasm=args.null_wasm,
                      host_calls_wasm=args.host_calls_wasm, ready_timeout=300,
                      read_headers_wasm=args.read_headers_wasm)
    pid = envoy.proc.pid
    rows = []
    try:
        run.sanity(envoy, token)
        for label, name in ORDER:
            conn = http.client.HTTPConnection("127.0.0.1", envoy.ports[name], timeout=60)

            def get():
                conn.request("GET", run.PATH, headers={"Authorization": f"Bearer {token}"})
                r = conn.getresponse()
                r.read()
                return r.status

            for _ in range(20):
                if get() != 200:
                    raise RuntimeError(f"{name}: warm-up request refused\n" + envoy.read_log())
            before = set(glob.glob(dumps + ".*"))
            subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
            bad = sum(get() != 200 for _ in range(args.requests))
            subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
            conn.close()
            if bad:
                raise RuntimeError(f"{name}: {bad} requests not answered 200")
            new = []
            # callgrind writes the dump when the process next runs (slow under load): wait for it.
            for _ in range(600):
                new = sorted(set(glob.glob(dumps + ".*")) - before, key=os.path.getmtime)
                if new and os.path.getsize(new[-1]) > 0:
                    time.sleep(0.5)
                    break
                time.sleep(0.2)
            if not new:
                raise RuntimeError("callgrind wrote no dump")
            with open(new[-1]) as f:
                total = int(re.search(r"^totals: (\d+)", f.read(), re.M).group(1))
            per = total / args.requests
            rows.append((label, name, per))
            run.log(f"{label:3} {name:18} {per:12,.0f} instructions/request")
    finally:
        envoy.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    a = (rows[0][2] + rows[-1][2]) / 2
    value = {label: per for label, _, per in rows[1:-1]}
    b_cached = value["B'"]
    lines = [
        "## Envoy instructions per request (callgrind)",
        "",
        f"Envoy 1.40 (`--concurrency 1`) under valgrind callgrind; {args.requests} requests per listener with "
        "one RS256 token over one keep-alive connection (C answers from its token cache); all of Envoy's "
        "threads counted. Deterministic: the same build gives the same counts within about 1%. A proxy of "
        "CPU time: it overstates B (BoringSSL's RSA runs many instructions per cycle).",
        "",
        "| listener | instructions/request | over A | throughput ratio to A (A/x) |",
        "|---|---:|---:|---:|",
    ]
    for label, name, per in rows:
        lines.append(f"| {label} `{name}` | {per:,.0f} | {per - a:+,.0f} | {a / per:.2f} |")
    lines += [
        "",
        f"Ratios (instruction-count proxy of throughput): C/A **{a / value['C']:.2f}**, "
        f"C/B **{value['B'] / value['C']:.2f}**, C/B' {b_cached / value['C']:.2f}, "
        f"B/A {a / value['B']:.2f}; R/A {a / value['R']:.2f} (the floor of any authorizing Wasm filter: it "
        f"only reads the request headers, {value['R'] - value['W']:+,.0f} over W). "
        f"Split of C over A: Wasm machinery (W - A) {value['W'] - a:+,.0f}, "
        f"Envoy's side of the filter's host calls (H - W) {value['H'] - value['W']:+,.0f}, the filter's own "
        f"Wasm execution (C - H) {value['C'] - value['H']:+,.0f}.",
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
