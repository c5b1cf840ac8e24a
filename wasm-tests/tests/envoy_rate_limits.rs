//! Real Envoy: per-app rate limits with Envoy's own rate limiters, keyed on the client id the
//! filter verified (`x-smart-client-id`, set after every client-sent `x-smart-*` header was
//! removed). `envoy/ratelimit-local.yaml` uses `local_ratelimit` descriptors;
//! `envoy/ratelimit-global.yaml` the `ratelimit` filter and a rate limit service (here the tiny
//! gRPC one in `wasm-tests/rls/rls.py`, run with the Makefile's `.venv` Python, which `make`
//! installs grpcio into). App A is throttled with a 429 OperationOutcome and Retry-After, nothing
//! beyond its allowance reaches the upstream, and app B keeps going; a client naming another app
//! in `x-smart-client-id` changes nothing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::json;
use wasm_tests::http1::{free_port, Response, Server};
use wasm_tests::real_envoy::{config_file, repo_root, with_plugin_config, Envoy};
use wasm_tests::stack::*;

/// Port placeholder of the rate limit service in `envoy/ratelimit-global.yaml`.
const RLS_PLACEHOLDER: &str = "port_value: 18083";

/// A system-level token of `app` (no body checks needed for its reads).
fn app_token(app: &str) -> String {
    let mut c = claims("system/*.rs", None);
    c["client_id"] = json!(app);
    token(&c)
}

/// Requests the upstream received from `app` (by the forwarded, verified client id).
fn upstream_count(up: &Server, app: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.header("x-smart-client-id") == Some(app))
        .count()
}

fn read(envoy: &Envoy, token: &str, extra: &[(&str, &str)]) -> Response {
    let auth = bearer(token);
    let mut h = vec![("authorization", auth.as_str())];
    h.extend_from_slice(extra);
    envoy.get("/fhir/Observation?code=1234-5", &h)
}

#[track_caller]
fn assert_throttled(r: &Response) {
    assert_outcome(r, 429, "throttled");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("Retry-After: {:?}", r.headers));
    assert!((1..=60).contains(&retry), "{retry}");
}

/// App A gets `allowed` requests through, then 429s (also when it claims to be app B); app B is
/// never throttled; the upstream saw exactly what was allowed.
fn app_a_is_throttled_and_app_b_is_not(envoy: &Envoy, up: &Server, allowed: usize) {
    let (a, b) = (app_token("app-a"), app_token("app-b"));
    for i in 0..allowed {
        let r = read(envoy, &a, &[]);
        assert_eq!(r.status, 200, "request {i} of app A: {}", r.body_str());
    }
    for _ in 0..2 {
        assert_throttled(&read(envoy, &a, &[]));
    }
    // A client-sent x-smart-client-id is removed: app A is still app A.
    assert_throttled(&read(envoy, &a, &[("x-smart-client-id", "app-b")]));
    for i in 0..allowed + 3 {
        let r = read(envoy, &b, &[("x-smart-client-id", "app-a")]);
        assert_eq!(r.status, 200, "request {i} of app B: {}", r.body_str());
    }
    assert_eq!(
        upstream_count(up, "app-a"),
        allowed,
        "nothing beyond the allowance went upstream"
    );
    assert_eq!(upstream_count(up, "app-b"), allowed + 3);
}

#[test]
fn local_ratelimit_throttles_app_a_by_its_verified_client_id_while_app_b_continues() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let yaml = with_plugin_config(&config_file("ratelimit-local.yaml"), &plugin_config());
    let envoy = Envoy::start(&yaml, up.port(), idp.port());
    app_a_is_throttled_and_app_b_is_not(&envoy, &up, 2);
    assert_eq!(envoy.stat("per_app.http_local_rate_limit.rate_limited"), Some(3));
}

/// The test rate limit service, stopped by its PID when dropped.
struct Rls {
    child: Child,
    port: u16,
}

impl Rls {
    fn start(limits: &[&str]) -> Rls {
        let python = std::env::var_os("SMART_FHIR_EDGE_PYTHON")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".venv/bin/python3"));
        let script = repo_root().join("wasm-tests/rls/rls.py");
        let port = free_port();
        let mut child = Command::new(&python)
            .arg(&script)
            .args(["--port", &port.to_string(), "--window-s", "60"])
            .args(limits)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (run `make rls-install`)", python.display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let ready = BufReader::new(stdout).read_line(&mut line).is_ok() && line.starts_with("ready ");
        let rls = Rls { child, port };
        assert!(
            ready,
            "the rate limit service did not start (grpcio missing? run `make rls-install`): {line:?}"
        );
        rls
    }
}

impl Drop for Rls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn global_envoy(rls_port: u16, up: &Server, idp: &Idp) -> Envoy {
    let yaml = with_plugin_config(&config_file("ratelimit-global.yaml"), &plugin_config());
    assert!(yaml.contains(RLS_PLACEHOLDER));
    let yaml = yaml.replace(RLS_PLACEHOLDER, &format!("port_value: {rls_port}"));
    Envoy::start(&yaml, up.port(), idp.port())
}

#[test]
fn the_global_rate_limit_service_throttles_app_a_by_its_verified_client_id_while_app_b_continues() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let rls = Rls::start(&["client_id=app-a:3"]);
    let envoy = global_envoy(rls.port, &up, &idp);
    app_a_is_throttled_and_app_b_is_not(&envoy, &up, 3);
    assert_eq!(envoy.stat("cluster.fhir_upstream.ratelimit.over_limit"), Some(3));
}

#[test]
fn requests_are_refused_when_the_rate_limit_service_cannot_answer() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    // Nothing listens on this port: failure_mode_deny refuses (fails closed).
    let envoy = global_envoy(free_port(), &up, &idp);
    let r = read(&envoy, &app_token("app-b"), &[]);
    assert!(r.status >= 429, "{}: {}", r.status, r.body_str());
    assert_eq!(
        r.header("content-type"),
        Some("application/fhir+json; charset=utf-8")
    );
    assert_eq!(r.body_json()["resourceType"], "OperationOutcome");
    assert_eq!(upstream_count(&up, "app-b"), 0);
}
