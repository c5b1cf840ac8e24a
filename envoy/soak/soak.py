#!/usr/bin/env python3
"""Soak test: fixed-rate mixed allowed and denied traffic through one Envoy with the filter.

Runs on loopback only: an identity provider serving the JWKS (refreshed by the filter every
60 s), a FHIR upstream that records every request, and Envoy (envoy/soak/envoy.yaml,
--concurrency 1). Workers send requests at a fixed rate, each request one of CASES in turn with
a token from the pool, and check every answer against the expected decision:

* status as expected; a refusal is an OperationOutcome; an allowed search holds nothing of
  patient 456 (the response check filtered it);
* the upstream never sees a request the filter should have refused (a patient-123 token never
  reaches anything of patient 456), and sees exactly as many requests as were allowed.

Every SAMPLE seconds it records the filter's VM memory gauge
(wasmcustom.smart_fhir_edge.vm_memory_max_bytes), Envoy's VM counters
(wasm.envoy.wasm.runtime.v8.created / active), Envoy's RSS, the requests so far, wrong
decisions and latency. Writes a Markdown report; exits 1 on any wrong decision, transport error,
VM restart, panic or critical log line.

    soak.py --envoy BIN --wasm MODULE --patient-tokens FILE --user-tokens FILE --jwks FILE
            [--seconds 600] [--rate 200] [--sample 30] [--out report.md] [--json report.json]
"""
import argparse
import http.client
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM_PLACEHOLDER = 19181
IDP_PLACEHOLDER = 19182
WASM_PLACEHOLDER = "filename: target/wasm32-wasip1/release/smart_fhir_edge.wasm"
MEMORY_GAUGE = "wasmcustom.smart_fhir_edge.vm_memory_max_bytes"
VM_CREATED = "wasm.envoy.wasm.runtime.v8.created"
VM_ACTIVE = "wasm.envoy.wasm.runtime.v8.active"
BASE = "https://ehr.example/fhir"

# (name, method, path, token kind, expected status). Token kinds: patient (patient/*.rs for
# patient 123), user (user/*.rs), tampered (a patient token with its signature changed), none.
CASES = [
    ("own patient read", "GET", "/fhir/Patient/123", "patient", 200),
    ("own observations search", "GET", "/fhir/Observation?patient=123", "patient", 200),
    ("unconstrained search, confined", "GET", "/fhir/Observation?code=1234", "patient", 200),
    ("user reads another patient", "GET", "/fhir/Patient/456", "user", 200),
    ("another patient's read", "GET", "/fhir/Patient/456", "patient", 403),
    ("another patient's search", "GET", "/fhir/Observation?patient=123,456", "patient", 403),
    ("delete without d", "DELETE", "/fhir/Patient/123", "patient", 403),
    ("no token", "GET", "/fhir/Patient/123", "none", 401),
    ("tampered token", "GET", "/fhir/Patient/123", "tampered", 401),
    ("path confusion", "GET", "/fhir/Patient/123/../456", "patient", 400),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path, timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def obs(oid, patient):
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "weight"},
            "subject": {"reference": f"Patient/{patient}"}}


def searchset(resources):
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"fullUrl": f"{BASE}/{r['resourceType']}/{r['id']}", "resource": r,
                       "search": {"mode": "match"}} for r in resources]}


class Upstream(http.server.ThreadingHTTPServer):
    """The FHIR upstream: answers whoever asks with both patients' data, records what it sees."""
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        self.lock = threading.Lock()
        self.count = 0
        self.violations = []
        self.seen = {}  # (method, path, x-smart-patient or x-smart-scope): count


class UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        patient = self.headers.get("x-smart-patient")
        with srv.lock:
            srv.count += 1
            key = f"{self.command} {self.path} ({patient or self.headers.get('x-smart-scope')})"
            srv.seen[key] = srv.seen.get(key, 0) + 1
            if patient == "123" and "456" in self.path:
                srv.violations.append(f"{self.command} {self.path} reached the upstream for patient 123")
        path = self.path.split("?", 1)[0]
        if path.startswith("/fhir/Patient/"):
            pid = path.rsplit("/", 1)[1]
            body = {"resourceType": "Patient", "id": pid, "name": [{"family": f"P{pid}"}]}
        elif path == "/fhir/Observation":
            body = searchset([obs("o1", "123"), obs("o2", "456"), obs("o3", "123")])
        else:
            body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}
        data = json.dumps(body).encode()
        self.send_response(200 if body["resourceType"] != "OperationOutcome" else 404)
        self.send_header("content-type", "application/fhir+json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_DELETE = do_GET


class Idp(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, jwks):
        super().__init__(("127.0.0.1", 0), IdpHandler)
        self.jwks = jwks
        self.fetches = 0


class IdpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.fetches += 1
        data = self.server.jwks
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Envoy:
    def __init__(self, envoy_bin, wasm, workdir, upstream_port, idp_port):
        with open(os.path.join(HERE, "envoy.yaml")) as f:
            yaml = f.read()
        yaml = yaml.replace(f"port_value: {UPSTREAM_PLACEHOLDER}", f"port_value: {upstream_port}")
        yaml = yaml.replace(f"port_value: {IDP_PLACEHOLDER}", f"port_value: {idp_port}")
        yaml = yaml.replace(f"127.0.0.1:{IDP_PLACEHOLDER}", f"127.0.0.1:{idp_port}")
        yaml = yaml.replace(WASM_PLACEHOLDER, f"filename: {os.path.abspath(wasm)}")
        config = os.path.join(workdir, "envoy.yaml")
        with open(config, "w") as f:
            f.write(yaml)
        admin_path = os.path.join(workdir, "admin-address")
        self.log_path = os.path.join(workdir, "envoy.log")
        self.log_file = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [envoy_bin, "-c", config, "--concurrency", "1", "--disable-hot-restart",
             "--admin-address-path", admin_path, "--log-level", "warn"],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT)
        self.admin = self.port = None
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("Envoy exited:\n" + self.read_log())
            try:
                if self.admin is None and os.path.exists(admin_path):
                    text = open(admin_path).read().strip()
                    if text:
                        self.admin = int(text.rsplit(":", 1)[1])
                if self.admin is not None and http_get(self.admin, "/ready")[0] == 200:
                    _, body = http_get(self.admin, "/listeners?format=json")
                    for l in json.loads(body)["listener_statuses"]:
                        if l["name"] == "fhir":
                            self.port = l["local_address"]["socket_address"]["port_value"]
                            return
            except (OSError, ValueError, KeyError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("Envoy did not become ready:\n" + self.read_log())

    def read_log(self):
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def stats(self):
        _, body = http_get(self.admin, "/stats?format=json")
        return {s["name"]: s["value"] for s in json.loads(body).get("stats", [])
                if "name" in s and "value" in s}

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


def tamper(token):
    head, sig = token.rsplit(".", 1)
    return f"{head}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}"


class Load:
    """Fixed-rate load: request i is due at start + i / rate; workers take the next due index."""

    def __init__(self, port, rate, seconds, tokens, workers):
        self.port, self.rate, self.seconds, self.tokens = port, rate, seconds, tokens
        self.workers = workers
        self.lock = threading.Lock()
        self.next = 0
        self.total = int(rate * seconds)
        self.sent = self.allowed = self.wrong = self.errors = 0
        self.late = 0
        self.by_case = {c[0]: [0, 0] for c in CASES}  # name: [count, wrong]
        self.latencies = []  # of the current sample window, ms
        self.wrong_examples = []

    def take(self):
        with self.lock:
            if self.next >= self.total:
                return None
            i = self.next
            self.next += 1
            return i

    def record(self, i, case, ok, ms, why=None, allowed=False, error=False):
        with self.lock:
            self.sent += 1
            self.latencies.append(ms)
            self.by_case[case][0] += 1
            if allowed:
                self.allowed += 1
            if error:
                self.errors += 1
            if not ok:
                self.wrong += int(not error)
                self.by_case[case][1] += 1
                if len(self.wrong_examples) < 20:
                    self.wrong_examples.append(f"#{i} {case}: {why}")

    def window_latencies(self):
        with self.lock:
            out, self.latencies = self.latencies, []
        return out

    def worker(self):
        conn = None
        while True:
            i = self.take()
            if i is None:
                break
            due = self.start + i / self.rate
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1:
                with self.lock:
                    self.late += 1
            name, method, path, kind, want = CASES[i % len(CASES)]
            pool = self.tokens.get(kind)
            headers = {}
            if pool:
                headers["authorization"] = "Bearer " + pool[(i // len(CASES)) % len(pool)]
            t0 = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request(method, path, headers=headers)
                r = conn.getresponse()
                body = r.read()
                status = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                self.record(i, name, False, (time.perf_counter() - t0) * 1000, f"transport: {e!r}", error=True)
                continue
            ms = (time.perf_counter() - t0) * 1000
            why = None
            if status != want:
                why = f"status {status}, expected {want}: {body[:200]!r}"
            else:
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = None
                if not isinstance(doc, dict):
                    why = f"body is not JSON: {body[:200]!r}"
                elif want >= 400 and doc.get("resourceType") != "OperationOutcome":
                    why = f"refusal is not an OperationOutcome: {body[:200]!r}"
                elif want == 200 and kind == "patient" and b"456" in body:
                    why = f"patient 456 reached a patient-123 client: {body[:300]!r}"
            self.record(i, name, why is None, ms, why, allowed=(status == 200 and want == 200))

    def run(self):
        self.start = time.time() + 0.5
        threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(self.workers)]
        for t in threads:
            t.start()
        return threads


def pct(values, p):
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--wasm", required=True)
    ap.add_argument("--patient-tokens", required=True)
    ap.add_argument("--user-tokens", required=True)
    ap.add_argument("--jwks", required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--sample", type=float, default=30)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out")
    ap.add_argument("--json")
    args = ap.parse_args()

    def lines(path):
        with open(path) as f:
            return [l.strip() for l in f if l.strip()]

    patient = lines(args.patient_tokens)
    tokens = {"patient": patient, "user": lines(args.user_tokens),
              "tampered": [tamper(t) for t in patient[:50]]}
    with open(args.jwks, "rb") as f:
        jwks = f.read().strip()

    upstream, idp = Upstream(), Idp(jwks)
    for srv in (upstream, idp):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    workdir = tempfile.mkdtemp(prefix="smart-fhir-edge-soak-")
    envoy = Envoy(args.envoy, args.wasm, workdir, upstream.server_address[1], idp.server_address[1])
    ok = False
    try:
        # Warm up: Envoy answers (the public /fhir/metadata reaches the upstream).
        for _ in range(50):
            try:
                if http_get(envoy.port, "/fhir/metadata")[0] < 500:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        upstream_before = upstream.count
        stats = envoy.stats()
        created0 = stats.get(VM_CREATED, 0)
        log(f"soak: {args.seconds:.0f} s at {args.rate:.0f} req/s, {len(CASES)} cases, "
            f"{len(patient)} patient + {len(tokens['user'])} user tokens; Envoy pid {envoy.proc.pid}")
        load = Load(envoy.port, args.rate, args.seconds, tokens, args.workers)
        threads = load.run()
        samples = []
        t_end = load.start + args.seconds
        next_sample = load.start
        while True:
            now = time.time()
            if now >= next_sample:
                st = envoy.stats()
                lat = load.window_latencies()
                row = {"t_s": round(max(0.0, now - load.start)), "sent": load.sent, "allowed": load.allowed,
                       "wrong": load.wrong, "errors": load.errors, "upstream": upstream.count - upstream_before,
                       "vm_memory_bytes": st.get(MEMORY_GAUGE), "vm_created": st.get(VM_CREATED),
                       "vm_active": st.get(VM_ACTIVE), "envoy_rss_bytes": envoy.rss_bytes(),
                       "p50_ms": round(pct(lat, 0.5), 2), "p99_ms": round(pct(lat, 0.99), 2)}
                samples.append(row)
                log("soak: " + " ".join(f"{k}={v}" for k, v in row.items()))
                next_sample += args.sample
            if not any(t.is_alive() for t in threads):
                break
            time.sleep(min(1.0, max(0.05, next_sample - time.time())))
        for t in threads:
            t.join(timeout=15)
        time.sleep(0.5)
        st = envoy.stats()
        final = {"t_s": round(time.time() - load.start), "sent": load.sent, "allowed": load.allowed,
                 "wrong": load.wrong, "errors": load.errors, "upstream": upstream.count - upstream_before,
                 "vm_memory_bytes": st.get(MEMORY_GAUGE), "vm_created": st.get(VM_CREATED),
                 "vm_active": st.get(VM_ACTIVE), "envoy_rss_bytes": envoy.rss_bytes(),
                 "p50_ms": None, "p99_ms": None}
        samples.append(final)
        envoy_log = envoy.read_log()
        bad_log = [l for l in envoy_log.splitlines()
                   if "panicked" in l or "[critical]" in l or "wasm vm failed" in l]
        upstream_seen = upstream.count - upstream_before
        upstream_mismatch = upstream_seen != load.allowed
        restarts = (final["vm_created"] or 0) - created0
        mem = [s["vm_memory_bytes"] for s in samples if s["vm_memory_bytes"] is not None]
        quarter = mem[len(mem) // 4] if mem else None
        growth = (mem[-1] - quarter) / quarter if mem and quarter else None
        result = {
            "seconds": args.seconds, "rate": args.rate, "cases": [c[0] for c in CASES],
            "sent": load.sent, "expected": load.total, "allowed": load.allowed, "wrong": load.wrong,
            "errors": load.errors, "late_over_1s": load.late, "upstream_requests": upstream_seen,
            "upstream_violations": upstream.violations[:20],
            "upstream_seen": upstream.seen if upstream_mismatch else {}, "vm_restarts": restarts,
            "memory_growth_after_first_quarter": growth, "bad_log_lines": bad_log[:20],
            "idp_fetches": idp.fetches, "by_case": load.by_case, "wrong_examples": load.wrong_examples,
            "samples": samples,
        }
        ok = (load.wrong == 0 and load.errors == 0 and not upstream.violations and not upstream_mismatch
              and restarts == 0 and not bad_log and load.sent == load.total)
        report = render(result, ok)
        print(report)
        if args.out:
            with open(args.out, "w") as f:
                f.write(report)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    finally:
        envoy.stop()
        upstream.shutdown()
        idp.shutdown()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"soak: Envoy's log kept in {workdir}")
    sys.exit(0 if ok else 1)


def render(r, ok):
    mib = lambda b: "-" if b is None else f"{b / 1048576:.2f}"
    out = [f"# Soak: {r['seconds']:.0f} s at {r['rate']:.0f} req/s through one Envoy",
           "",
           f"Result: **{'PASS' if ok else 'FAIL'}**. {r['sent']} requests ({r['expected']} scheduled), "
           f"{r['allowed']} allowed, {r['sent'] - r['allowed']} refused; wrong decisions {r['wrong']}, "
           f"transport errors {r['errors']}, requests sent over 1 s late {r['late_over_1s']}; "
           f"the upstream saw {r['upstream_requests']} requests (= allowed: "
           f"{'yes' if r['upstream_requests'] == r['allowed'] else 'NO'}), "
           f"{len(r['upstream_violations'])} it should not have; VM restarts {r['vm_restarts']}; "
           f"panic or critical log lines {len(r['bad_log_lines'])}; key fetches {r['idp_fetches']}.",
           "",
           "| t (s) | requests | wrong | VM memory (MiB) | VMs created / active | Envoy RSS (MiB) | p50 / p99 (ms) |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for s in r["samples"]:
        lat = "-" if s["p50_ms"] is None else f"{s['p50_ms']:.1f} / {s['p99_ms']:.1f}"
        out.append(f"| {s['t_s']} | {s['sent']} | {s['wrong']} | {mib(s['vm_memory_bytes'])} | "
                   f"{s['vm_created']} / {s['vm_active']} | {mib(s['envoy_rss_bytes'])} | {lat} |")
    g = r["memory_growth_after_first_quarter"]
    out += ["", f"VM memory growth from the first quarter to the end: "
                f"{'-' if g is None else f'{g * 100:+.1f}%'}.", "",
            "| case | requests | wrong |", "| --- | ---: | ---: |"]
    for name, (n, w) in r["by_case"].items():
        out.append(f"| {name} | {n} | {w} |")
    if r["wrong_examples"]:
        out += ["", "Wrong decisions (first 20):", ""] + [f"- {w}" for w in r["wrong_examples"]]
    if r["upstream_violations"]:
        out += ["", "Upstream saw:", ""] + [f"- {v}" for v in r["upstream_violations"]]
    if r["bad_log_lines"]:
        out += ["", "Envoy log:", ""] + [f"    {l}" for l in r["bad_log_lines"]]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
