#!/usr/bin/env python3
"""Envoy-level benchmark of smart-fhir-edge against no authorization and Envoy's jwt_authn.

One Envoy process (`--concurrency 1`, one worker) runs envoy/bench/envoy.yaml: four front listeners
in front of the same `direct_response` upstream (a fifth listener):

  A   no_auth           no authorization filter
  B   jwt_authn         Envoy's native jwt_authn (inline JWKS, a JWT required on every route)
  B'  jwt_authn_cached  the same with jwt_authn's optional JWT cache (jwt_cache_config, 4096)
  C   smart_fhir_edge   this filter, full SMART policy (patient/*.rs token reading Patient/123)

`wrk --latency` (one thread, one core; Envoy's worker has the other) measures them in turn,
A B B' C A B B' C ..., for each workload:

  same      one RS256 token on every request
  distinct  2,000 distinct RS256 tokens in rotation (after a warm-up pass over all of them)
  fresh     ES256 tokens never seen before on every request (100,000 in rotation): no cache helps

Reported per listener and workload: median requests/s over the rounds, median p50 and p99 latency,
and the ratios B/A, C/A, C/B (and C/B'). Afterwards, a memory run sends at least 100,000 distinct
tokens through C and reads the largest linear memory of the filter's VMs (gauge
`wasmcustom.smart_fhir_edge.vm_memory_max_bytes`) and Envoy's RSS.

Python 3 standard library only. Run by `make bench`; by hand:

  envoy/bench/run.py --envoy .venv/bin/envoy --wasm target/wasm32-wasip1/release/smart_fhir_edge.wasm \
      --tokens target/bench/tokens.txt --fresh-tokens target/bench/tokens-fresh.txt \
      --out target/bench/results.md [--micro target/bench/micro.md] [--duration 5] [--rounds 5]
"""

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM_PLACEHOLDER = 19180
WASM_PLACEHOLDER = "filename: target/wasm32-wasip1/release/smart_fhir_edge.wasm"
PATH = "/fhir/Patient/123"
LISTENERS = [
    ("A", "no_auth", "no auth filter"),
    ("B", "jwt_authn", "Envoy jwt_authn"),
    ("B'", "jwt_authn_cached", "Envoy jwt_authn + jwt_cache"),
    ("C", "smart_fhir_edge", "smart-fhir-edge (SMART policy)"),
]
MEMORY_GAUGE = "wasmcustom.smart_fhir_edge.vm_memory_max_bytes"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, headers=None, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def with_second_module(yaml, wasm):
    """Adds listener `smart_fhir_edge_alt`: listener C with another build of the module (own VM)."""
    start = yaml.index("  - name: smart_fhir_edge\n")
    end = yaml.index("  clusters:\n")
    block = yaml[start:end]
    block = block.replace("  - name: smart_fhir_edge\n", "  - name: smart_fhir_edge_alt\n", 1)
    block = block.replace("stat_prefix: smart_fhir_edge", "stat_prefix: smart_fhir_edge_alt")
    block = block.replace("vm_id: smart_fhir_edge", "vm_id: smart_fhir_edge_alt")
    block = block.replace(WASM_PLACEHOLDER, f"filename: {os.path.abspath(wasm)}")
    return yaml[:end] + block + yaml[end:]


def with_null_filter(yaml, null_wasm, name="null_wasm"):
    """Adds listener `name` (W): listener C with a Wasm module that does nothing instead of this
    filter (envoy/bench/null-filter.wat), so W - A is the cost of Envoy's Wasm machinery itself.
    Also used for listener H (`host_calls_wasm`, envoy/bench/host-calls.wat), which makes only the
    host calls of C's cache hit: H - W is Envoy's side of those calls, C - H the filter's own work;
    and for listener R (`read_headers_wasm`, envoy/bench/read-headers.wat), which only reads the
    request headers: the floor of any authorizing filter."""
    start = yaml.index("  - name: smart_fhir_edge\n")
    end = yaml.index("  clusters:\n")
    block = yaml[start:end]
    block = block.replace("  - name: smart_fhir_edge\n", f"  - name: {name}\n", 1)
    block = block.replace("stat_prefix: smart_fhir_edge", f"stat_prefix: {name}")
    block = block.replace("vm_id: smart_fhir_edge", f"vm_id: {name}")
    block = re.sub(r"value: '.*'", "value: ''", block, count=1)
    block = block.replace(WASM_PLACEHOLDER, f"filename: {os.path.abspath(null_wasm)}")
    return yaml[:end] + block + yaml[end:]


class Envoy:
    def __init__(self, envoy_bin, wasm, workdir, second_wasm=None, null_wasm=None, host_calls_wasm=None,
                 ready_timeout=60, read_headers_wasm=None):
        self.workdir = workdir
        with open(os.path.join(HERE, "envoy.yaml")) as f:
            yaml = f.read()
        upstream = free_port()
        yaml = yaml.replace(f"port_value: {UPSTREAM_PLACEHOLDER}", f"port_value: {upstream}")
        if second_wasm:
            yaml = with_second_module(yaml, second_wasm)
        if null_wasm:
            yaml = with_null_filter(yaml, null_wasm)
        if host_calls_wasm:
            yaml = with_null_filter(yaml, host_calls_wasm, "host_calls_wasm")
        if read_headers_wasm:
            yaml = with_null_filter(yaml, read_headers_wasm, "read_headers_wasm")
        yaml = yaml.replace(WASM_PLACEHOLDER, f"filename: {os.path.abspath(wasm)}")
        config = os.path.join(workdir, "envoy.yaml")
        with open(config, "w") as f:
            f.write(yaml)
        self.admin_path = os.path.join(workdir, "admin-address")
        self.log_path = os.path.join(workdir, "envoy.log")
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [envoy_bin, "-c", config, "--concurrency", "1", "--disable-hot-restart",
             "--admin-address-path", self.admin_path, "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.admin = None
        self.ports = {}
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Envoy exited:\n" + self.read_log())
            try:
                if self.admin is None and os.path.exists(self.admin_path):
                    text = open(self.admin_path).read().strip()
                    if text:
                        self.admin = int(text.rsplit(":", 1)[1])
                if self.admin is not None and http_get(self.admin, "/ready")[0] == 200:
                    status, body = http_get(self.admin, "/listeners?format=json")
                    for l in json.loads(body)["listener_statuses"]:
                        self.ports[l["name"]] = l["local_address"]["socket_address"]["port_value"]
                    if all(name in self.ports for _, name, _ in LISTENERS):
                        return
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Envoy did not become ready:\n" + self.read_log())

    def read_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stats(self):
        status, body = http_get(self.admin, "/stats?format=json")
        out = {}
        for s in json.loads(body).get("stats", []):
            if "name" in s and "value" in s:
                out[s["name"]] = s["value"]
        return out

    def cpu_seconds(self):
        """User + system CPU time of the Envoy process (all threads) so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # After the command name: state is field 3, utime field 14, stime field 15 (1-based).
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def to_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unexpected wrk duration {text!r}")
    if m.group(2) == "m":
        return float(m.group(1)) * 60e3
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(url, seconds, connections, token=None, token_file=None, offset=0):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}", url]
    else:
        cmd += ["-s", os.path.join(HERE, "tokens.lua"), url, "--", token_file, str(offset)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total,
            "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(0) if errors else ""}


def read_tokens(path):
    with open(path) as f:
        return [l.strip() for l in f if l.strip()]


def sanity(envoy, token, skip=()):
    """Every listener answers 200 with the token; the authenticating ones 401 without it."""
    for label, name, _ in LISTENERS:
        if label in skip:
            continue
        port = envoy.ports[name]
        ok, _ = http_get(port, PATH, {"Authorization": f"Bearer {token}"})
        none, _ = http_get(port, PATH)
        want_none = 200 if label in ("A", "W", "R", "H") else 401
        if ok != 200 or none != want_none:
            raise RuntimeError(f"{name}: with token {ok} (want 200), without {none} (want {want_none})\n"
                               + envoy.read_log())


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return os.cpu_count(), model


def load():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "?"


def fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--tokens", required=True, help="distinct RS256 tokens, one per line (>= 2000)")
    ap.add_argument("--fresh-tokens", help="ES256 tokens for the fresh workload and memory run (100,000)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--micro", help="Markdown table of the native micro-benchmarks to include")
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--distinct", type=int, default=2000)
    ap.add_argument("--memory-tokens", type=int, default=100_000)
    ap.add_argument("--json", help="also write the raw measurements here")
    ap.add_argument("--compare-wasm", help="another build of the module, measured as listener C0 "
                    "(same policy, own VM) next to C: for before/after comparisons")
    ap.add_argument("--unchecked-compare", action="store_true",
                    help="do not require C0 to refuse requests without a token (experimental builds)")
    ap.add_argument("--listeners", help="comma-separated subset of A,W,R,H,B,B',C,C0 to measure (all by default)")
    ap.add_argument("--workloads", default="same,distinct,fresh", help="comma-separated subset")
    ap.add_argument("--null-wasm", help="a Wasm module that does nothing (null-filter.wat compiled), "
                    "measured as listener W: the floor of any Wasm filter")
    ap.add_argument("--host-calls-wasm", help="a Wasm module making only the host calls of C's cache hit "
                    "(host-calls.wat compiled), measured as listener H next to W and C")
    ap.add_argument("--read-headers-wasm", help="a Wasm module that only reads the request headers "
                    "(read-headers.wat compiled), measured as listener R: the floor of an authorizing filter")
    args = ap.parse_args()
    if args.host_calls_wasm:
        LISTENERS.insert(1, ("H", "host_calls_wasm", "Wasm filter making only C's host calls"))
    if args.read_headers_wasm:
        LISTENERS.insert(1, ("R", "read_headers_wasm", "Wasm filter only reading the request headers"))
    if args.null_wasm:
        LISTENERS.insert(1, ("W", "null_wasm", "Wasm filter doing nothing"))
    if args.compare_wasm:
        LISTENERS.append(("C0", "smart_fhir_edge_alt", "smart-fhir-edge, --compare-wasm build"))
    measured = [l for l in LISTENERS if not args.listeners or l[0] in args.listeners.split(",")]

    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install -y wrk)")
    tokens = read_tokens(args.tokens)
    if len(tokens) < args.distinct:
        sys.exit(f"{args.tokens} holds {len(tokens)} tokens, {args.distinct} needed")
    workdir = tempfile.mkdtemp(prefix="smart-fhir-edge-bench-")
    distinct_file = os.path.join(workdir, "distinct.txt")
    with open(distinct_file, "w") as f:
        f.write("\n".join(tokens[: args.distinct]) + "\n")
    fresh = args.fresh_tokens
    fresh_count = len(read_tokens(fresh)) if fresh else 0

    version = subprocess.run([args.envoy, "--version"], capture_output=True, text=True).stdout.strip()
    version = version.splitlines()[-1].split("version:", 1)[-1].strip() if version else "?"
    nproc, model = machine()
    load_before = load()
    wasm_size = os.path.getsize(args.wasm)
    log(f"bench: Envoy {version}; {nproc} CPUs ({model}); load {load_before}; module {wasm_size} bytes")

    envoy = Envoy(args.envoy, args.wasm, workdir, args.compare_wasm, args.null_wasm, args.host_calls_wasm,
                  read_headers_wasm=args.read_headers_wasm)
    results = {}  # (workload, label) -> list of runs
    memory = {}
    try:
        sanity(envoy, tokens[0], skip=tuple(l for l, _, _ in LISTENERS if l not in ("A", "W", "R", "H", "B", "B'", "C")) if args.unchecked_compare else ())
        url = lambda name: f"http://127.0.0.1:{envoy.ports[name]}{PATH}"
        workloads = [("same", "same token on every request"),
                     ("distinct", f"{args.distinct:,} distinct tokens in rotation (RS256)")]
        if fresh:
            workloads.append(("fresh", f"a never-seen token on every request (ES256, {fresh_count:,} in rotation)"))
        workloads = [w for w in workloads if w[0] in args.workloads.split(",")]
        # Warm-up: JIT, connection pools, and one pass over the distinct tokens (C and B' cache them).
        for _, name, _ in measured:
            wrk(url(name), 2, args.connections, token=tokens[0])
            wrk(url(name), 2, args.connections, token_file=distinct_file)
        fresh_offset = 0
        for workload, _ in workloads:
            for r in range(args.rounds):
                for label, name, _ in measured:
                    cpu_before = envoy.cpu_seconds()
                    if workload == "same":
                        run = wrk(url(name), args.duration, args.connections, token=tokens[0])
                    elif workload == "distinct":
                        run = wrk(url(name), args.duration, args.connections, token_file=distinct_file,
                                  offset=(r * 7919) % args.distinct)
                    else:
                        run = wrk(url(name), args.duration, args.connections, token_file=fresh,
                                  offset=fresh_offset)
                        fresh_offset += run["requests"] + args.connections
                    run["cpu_us"] = (envoy.cpu_seconds() - cpu_before) * 1e6 / max(run["requests"], 1)
                    results.setdefault((workload, label), []).append(run)
                    log(f"  {workload:<8} round {r + 1} {label:<2} {run['rps']:>9.0f} req/s  "
                        f"p50 {fmt_ms(run['p50'])} ms  p99 {fmt_ms(run['p99'])} ms  "
                        f"Envoy CPU {run['cpu_us']:.1f} us/req"
                        + (f"  NON-2XX {run['non2xx']}" if run["non2xx"] else ""))
        # Memory: at least --memory-tokens distinct tokens through C, then the largest VM memory.
        if fresh and args.memory_tokens > 0:
            seen = sum(run["requests"] for run in results.get(("fresh", "C"), []))
            before = envoy.stats().get(MEMORY_GAUGE)
            while seen < min(args.memory_tokens, fresh_count):
                run = wrk(url("smart_fhir_edge"), 10, args.connections, token_file=fresh, offset=fresh_offset)
                fresh_offset += run["requests"] + args.connections
                seen += run["requests"]
            time.sleep(0.5)  # the gauge is refreshed on the filter's 100 ms tick
            stats = envoy.stats()
            memory = {
                "tokens_through_c": min(seen, fresh_count),
                "vm_memory_max_bytes": stats.get(MEMORY_GAUGE),
                "vm_memory_before_memory_run": before,
                "envoy_rss_bytes": envoy.rss_bytes(),
            }
            log(f"  memory: {memory}")
    finally:
        envoy.stop()
    load_after = load()

    def med(workload, label, key):
        runs = results.get((workload, label), [])
        return statistics.median(r[key] for r in runs) if runs else float("nan")

    lines = []
    lines.append("## Envoy-level benchmark")
    lines.append("")
    lines.append(f"Envoy {version}, `--concurrency 1`; {nproc} CPUs ({model}); wrk 1 thread, "
                 f"{args.connections} connections, {args.duration} s per run, {args.rounds} rounds "
                 f"(listeners in turn {' '.join(l for l, _, _ in measured)}); load average before {load_before}, after {load_after}; "
                 f"module {wasm_size:,} bytes. Medians over the rounds.")
    lines.append("")
    for workload, title in [(w, t) for w, t in workloads]:
        lines.append(f"### {workload}: {title}")
        lines.append("")
        lines.append("| listener | req/s | p50 ms | p99 ms | Envoy CPU µs/req | non-2xx |")
        lines.append("|---|---:|---:|---:|---:|---:|")
        for label, name, desc in measured:
            runs = results.get((workload, label), [])
            bad = sum(r["non2xx"] for r in runs)
            lines.append(f"| {label} {desc} | {med(workload, label, 'rps'):,.0f} | "
                         f"{fmt_ms(med(workload, label, 'p50'))} | {fmt_ms(med(workload, label, 'p99'))} | "
                         f"{med(workload, label, 'cpu_us'):.1f} | {bad} |")
        def paired(x, y, key):
            """Median over the rounds of x/y measured in the same round (drift in the machine's other
            load cancels out)."""
            xs, ys = results.get((workload, x), []), results.get((workload, y), [])
            return statistics.median(a[key] / b[key] for a, b in zip(xs, ys))
        def spread(x, y, key):
            """The lowest and highest per-round x/y: how far one round can be from the median."""
            xs, ys = results.get((workload, x), []), results.get((workload, y), [])
            r = [a[key] / b[key] for a, b in zip(xs, ys)]
            return f"{min(r):.2f}–{max(r):.2f}" if r else "–"
        labels = [l for l, _, _ in measured]
        pairs = [(x, y) for x, y in [("W", "A"), ("R", "A"), ("H", "W"), ("B", "A"), ("C", "A"), ("C", "W"), ("C", "H"), ("C", "B"),
                                        ("C", "B'"), ("C", "C0")]
                 if x in labels and y in labels]
        lines.append("")
        if pairs:
            lines.append("| ratio (median of per-round ratios) | " + " | ".join(f"{x}/{y}" for x, y in pairs) + " |")
            lines.append("|---|" + "---:|" * len(pairs))
            for key, title in [("rps", "req/s"), ("p50", "p50 latency"), ("p99", "p99 latency"),
                               ("cpu_us", "Envoy CPU per request")]:
                lines.append(f"| {title} | " + " | ".join(f"{paired(x, y, key):.2f}" for x, y in pairs) + " |")
            lines.append(f"| req/s, lowest–highest round | " + " | ".join(spread(x, y, "rps") for x, y in pairs) + " |")
            lines.append("")
            if "A" in labels:
                cost = {l: statistics.median(a["cpu_us"] - b["cpu_us"] for a, b in
                                             zip(results[(workload, l)], results[(workload, "A")]))
                        for l in labels if l != "A"}
                lines.append("Envoy CPU per request above A (median of per-round differences): "
                             + ", ".join(f"{l} {v:+.1f} µs" for l, v in cost.items()) + ".")
                lines.append("")
    if memory:
        gauge = memory["vm_memory_max_bytes"]
        lines.append("### Memory")
        lines.append("")
        lines.append(f"After {memory['tokens_through_c']:,} distinct tokens through C: largest filter VM linear "
                     f"memory {gauge / 2**20:.2f} MiB (`{MEMORY_GAUGE}`; {(memory['vm_memory_before_memory_run'] or 0) / 2**20:.2f} MiB "
                     f"before the memory run); Envoy process RSS {memory['envoy_rss_bytes'] / 2**20:.1f} MiB."
                     if gauge is not None else
                     f"After {memory['tokens_through_c']:,} distinct tokens through C: gauge `{MEMORY_GAUGE}` "
                     f"not reported; Envoy process RSS {memory['envoy_rss_bytes'] / 2**20:.1f} MiB.")
        lines.append("")
    if args.micro and os.path.exists(args.micro):
        lines.append("## Native micro-benchmarks (`cargo bench --bench core`)")
        lines.append("")
        lines.append(open(args.micro).read().strip())
        lines.append("")
    text = "\n".join(lines)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"envoy": version, "nproc": nproc, "cpu": model, "load_before": load_before,
                       "load_after": load_after, "wasm_bytes": wasm_size, "memory": memory,
                       "runs": {f"{w}/{l}": runs for (w, l), runs in results.items()}}, f, indent=1)
    print(text)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
