//! Real Envoy: fault injection. An identity provider that is slow beyond its timeout, answers
//! garbage or an empty key set, or goes bad after serving good keys; an upstream that is down.
//! In every fault nothing is allowed that should not be, nothing waits past its timeout (plus a
//! margin for a loaded machine), and the filter recovers without restarting Envoy or its VM.
//!
//! Covered elsewhere: an identity provider down at start
//! (`envoy_tokens::an_identity_provider_down_at_start_answers_503_then_recovers`), rotating keys
//! (`envoy_tokens::a_rotated_key_is_accepted_without_restarting_envoy`), an unknown-`kid` storm
//! (`envoy_tokens::a_storm_of_unknown_kids_makes_at_most_one_refetch`), configuration errors naming
//! the field (`envoy_foundation::refuses_invalid_configuration_naming_the_field`), an upstream
//! that is too slow for the route timeout (`envoy_local_replies`).
//!
//! A panic inside the VM: the shipped code cannot panic on purpose (`make lint` denies `unwrap`,
//! `expect`, `panic!` and unchecked indexing), so the test loads a module that does what the
//! proxy-wasm SDK 0.2.5 does on a panic (`logger.rs`: the panic hook installed by
//! `set_log_level`, which the adapter calls first thing, logs the panic message with `proxy_log`
//! at level critical; then `panic = "abort"` traps) and checks what real Envoy makes of it.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasm_tests::http1::{free_port, Response, Server};
use wasm_tests::real_envoy::Envoy;
use wasm_tests::stack::*;

/// The key fetch timeout the tests configure.
const TIMEOUT_MS: u64 = 1000;
/// What a request may take beyond the timeout it waits on (scheduling on a loaded machine).
const MARGIN: Duration = Duration::from_millis(1500);
/// How long recovery may take: the first retry after a failure comes after 2 s, the next after 4 s.
const RECOVERY: Duration = Duration::from_secs(15);

/// The default configuration with short key timings (timeout 1 s, keys cached for 2 s, refetch
/// for an unknown `kid` after 1 s).
fn config() -> Value {
    let mut c = plugin_config();
    c["providers"][0]["remote_jwks"] = json!({
        "uri": "http://127.0.0.1:18082/jwks", "cluster": "idp",
        "timeout_ms": TIMEOUT_MS, "cache_duration_s": 2, "min_refetch_interval_s": 1
    });
    c
}

fn auth() -> String {
    bearer(&token(&claims("system/*.rs", None)))
}

/// Sends `GET path` and returns the response and how long it took.
fn timed(envoy: &Envoy, path: &str, auth: &str) -> (Response, Duration) {
    let start = Instant::now();
    let r = envoy.get(path, &[("authorization", auth)]);
    (r, start.elapsed())
}

/// Waits until a valid request is allowed again; fails the test if it is not within [`RECOVERY`].
#[track_caller]
fn assert_recovers(envoy: &Envoy, auth: &str, what: &str) {
    let ok = envoy.wait_until(RECOVERY, || {
        envoy.get("/fhir/Observation", &[("authorization", auth)]).status == 200
    });
    assert!(ok, "{what}: recovered without a restart");
}

/// Tokens that must never pass, whatever the key state: another key's signature, expired.
fn bad_tokens() -> Vec<String> {
    use smart_fhir_edge::token::test_support::{mint_raw, Signer};
    use smart_fhir_edge::token::Algorithm;
    let c = claims("system/*.rs", None);
    let mut expired = c.clone();
    expired["exp"] = json!(now() - 600);
    expired["iat"] = json!(now() - 900);
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-a"}).to_string();
    vec![
        // Signed by rsa-b but naming rsa-a.
        bearer(&mint_raw(Algorithm::RS256, Signer::RsaB, &header, &c.to_string())),
        bearer(&token(&expired)),
    ]
}

/// What a proxy-wasm SDK module does when it panics in `on_http_request_headers`: the SDK's panic
/// hook logs the message at critical (`proxy_log` level 5), then `panic = "abort"` traps.
const PANICKING_MODULE: &str = r#"(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "panicked at src/adapter/http.rs:1:1: injected fault")
  (func (export "malloc") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 5) (i32.const 100) (i32.const 51)))
    unreachable)
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_delete") (param i32))
)"#;

#[test]
fn a_panic_inside_the_vm_is_logged_at_critical_and_the_request_fails_closed() {
    let idp = Idp::start(default_jwks());
    let up = fhir_upstream();
    let dir = std::env::temp_dir().join(format!("smart-fhir-edge-panic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = dir.join("panicking.wasm");
    std::fs::write(&module, wat::parse_str(PANICKING_MODULE).unwrap()).unwrap();
    let yaml = wasm_tests::real_envoy::with_plugin_config(
        &wasm_tests::real_envoy::config_file("test.yaml"),
        &config(),
    )
    .replace(
        "filename: target/wasm32-wasip1/release/smart_fhir_edge.wasm",
        &format!("filename: {}", module.display()),
    );
    let envoy = Envoy::start(&yaml, up.port(), idp.port());
    let auth = auth();
    for attempt in 0..3 {
        let (r, took) = timed(&envoy, "/fhir/Observation", &auth);
        // Envoy answers for the failed VM (`fail_open: false`): 503, no body (the module that would
        // write an OperationOutcome is the one that failed).
        assert_eq!(
            r.status,
            503,
            "attempt {attempt}: fails closed, got {} {}",
            r.status,
            r.body_str()
        );
        assert!(took <= MARGIN, "{took:?}");
    }
    assert_eq!(up.request_count(), 0, "nothing reached the upstream");
    let log = envoy.log();
    let critical: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("[critical]") && l.contains("panicked at"))
        .collect();
    assert!(!critical.is_empty(), "the panic is logged at critical:\n{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_identity_provider_is_cut_at_the_timeout_and_recovers() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let slow = default_jwks();
    idp.server.set_handler(move |_| {
        std::thread::sleep(Duration::from_secs(4));
        let mut r = Response::new(200).with_header("content-type", "application/json");
        r.body = slow.clone();
        r
    });
    let envoy = envoy(&config(), &up, idp.port());
    let created = vms_created(&envoy);
    let auth = auth();
    for attempt in 0..2 {
        let (r, took) = timed(&envoy, "/fhir/Observation", &auth);
        assert_outcome(&r, 503, "transient");
        assert!(r.header("retry-after").is_some());
        assert!(
            took <= Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "attempt {attempt}: answered after {took:?}, the fetch timeout is {TIMEOUT_MS} ms"
        );
    }
    for bad in bad_tokens() {
        let (r, took) = timed(&envoy, "/fhir/Observation", &bad);
        assert!(r.status == 503 || r.status == 401, "{}", r.status);
        assert!(took <= Duration::from_millis(TIMEOUT_MS) + MARGIN, "{took:?}");
    }
    assert_eq!(
        up.request_count(),
        0,
        "nothing was allowed while the keys were missing"
    );
    // The identity provider answers in time again.
    let fast = default_jwks();
    idp.server.set_handler(move |_| {
        let mut r = Response::new(200).with_header("content-type", "application/json");
        r.body = fast.clone();
        r
    });
    assert_recovers(&envoy, &auth, "slow identity provider");
    assert_vm_intact(&envoy, created, "a slow identity provider");
}

#[test]
fn garbage_from_the_identity_provider_at_start_is_refused_and_recovers() {
    // (what the identity provider answers, status, body)
    let garbage: Vec<(&str, u16, Vec<u8>)> = vec![
        ("not JSON", 200, b"<html>hello</html>".to_vec()),
        ("truncated JSON", 200, default_jwks()[..40].to_vec()),
        ("JSON that is no key set", 200, br#"{"keys": "rsa-a"}"#.to_vec()),
        ("an array", 200, b"[]".to_vec()),
        (
            "keys of no usable kind",
            200,
            br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}"#
                .to_vec(),
        ),
        ("a server error", 500, b"{\"error\": \"boom\"}".to_vec()),
        ("an empty body", 200, Vec::new()),
        ("binary", 200, (0u8..=255).cycle().take(4096).collect()),
        ("a very large document", 200, {
            let mut v = br#"{"keys": [], "x": ""#.to_vec();
            v.extend(std::iter::repeat_n(b'a', 3 * 1024 * 1024));
            v.extend_from_slice(b"\"}");
            v
        }),
    ];
    let auth = auth();
    for (what, status, body) in garbage {
        let (idp, up) = (Idp::start(Vec::new()), fhir_upstream());
        idp.set_jwks(status, body);
        let envoy = envoy(&config(), &up, idp.port());
        let created = vms_created(&envoy);
        let (r, took) = timed(&envoy, "/fhir/Observation", &auth);
        assert!(
            r.status == 503 || r.status == 401,
            "{what}: refused, got {} {}",
            r.status,
            r.body_str()
        );
        assert_outcome(
            &r,
            r.status,
            if r.status == 503 { "transient" } else { "unknown" },
        );
        assert!(
            took <= Duration::from_millis(TIMEOUT_MS) + MARGIN,
            "{what}: {took:?}"
        );
        for bad in bad_tokens() {
            assert_ne!(
                envoy.get("/fhir/Observation", &[("authorization", &bad)]).status,
                200
            );
        }
        assert_eq!(up.request_count(), 0, "{what}: nothing was allowed");
        idp.set_jwks(200, default_jwks());
        assert_recovers(&envoy, &auth, what);
        assert_vm_intact(&envoy, created, what);
    }
}

#[test]
fn an_empty_key_set_refuses_every_token_then_recovers() {
    let (idp, up) = (Idp::start(br#"{"keys": []}"#.to_vec()), fhir_upstream());
    let envoy = envoy(&config(), &up, idp.port());
    let created = vms_created(&envoy);
    let auth = auth();
    for _ in 0..3 {
        let (r, took) = timed(&envoy, "/fhir/Observation", &auth);
        assert!(
            r.status == 401 || r.status == 503,
            "{} {}",
            r.status,
            r.body_str()
        );
        assert!(took <= Duration::from_millis(TIMEOUT_MS) + MARGIN, "{took:?}");
    }
    assert_eq!(up.request_count(), 0);
    idp.set_jwks(200, default_jwks());
    assert_recovers(&envoy, &auth, "empty key set");
    assert_vm_intact(&envoy, created, "an empty key set");
}

#[test]
fn an_identity_provider_that_goes_bad_leaves_the_last_good_keys_in_force() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let envoy = envoy(&config(), &up, idp.port());
    let auth = auth();
    assert_eq!(
        envoy.get("/fhir/Observation", &[("authorization", &auth)]).status,
        200
    );
    let created = vms_created(&envoy);
    let fetches = idp.fetches();
    // Keys are cached for 2 s: every refresh from now on gets garbage, an empty set or an error.
    for (status, body) in [
        (200, b"garbage".to_vec()),
        (200, br#"{"keys": []}"#.to_vec()),
        (503, Vec::new()),
    ] {
        idp.set_jwks(status, body);
        let deadline = Instant::now() + Duration::from_secs(4);
        while Instant::now() < deadline {
            let (r, took) = timed(&envoy, "/fhir/Observation", &auth);
            assert_eq!(r.status, 200, "the last good keys stay: {}", r.body_str());
            assert!(took <= Duration::from_millis(TIMEOUT_MS) + MARGIN, "{took:?}");
            for bad in bad_tokens() {
                assert_ne!(
                    envoy.get("/fhir/Observation", &[("authorization", &bad)]).status,
                    200
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(idp.fetches() > fetches, "the filter kept trying to refresh");
    idp.set_jwks(200, default_jwks());
    assert_recovers(&envoy, &auth, "refresh");
    assert_vm_intact(&envoy, created, "a bad refresh");
}

#[test]
fn an_upstream_that_is_down_is_a_503_within_the_connect_timeout_and_recovers() {
    let idp = Idp::start(default_jwks());
    let port = free_port();
    // Envoy is configured with an upstream port nothing listens on.
    let yaml = wasm_tests::real_envoy::with_plugin_config(
        &wasm_tests::real_envoy::config_file("test.yaml"),
        &config(),
    );
    let envoy = Envoy::start(&yaml, port, idp.port());
    let created = vms_created(&envoy);
    let auth = auth();
    for _ in 0..3 {
        let (r, took) = timed(&envoy, "/fhir/Observation", &auth);
        assert_outcome(&r, 503, "transient");
        // The cluster's connect_timeout is 1 s; a refused connection fails at once.
        assert!(took <= Duration::from_secs(1) + MARGIN, "{took:?}");
    }
    // A refused request is still refused by the filter, not by the missing upstream.
    let r = envoy.get("/fhir/Observation", &[]);
    assert_outcome(&r, 401, "login");
    // The upstream comes up on its port.
    let up = Server::start_on(port, |_| {
        Response::json(200, r#"{"resourceType":"Bundle","type":"searchset"}"#)
    });
    assert_recovers(&envoy, &auth, "upstream down");
    assert!(up.request_count() >= 1);
    assert_vm_intact(&envoy, created, "an upstream that was down");
}
