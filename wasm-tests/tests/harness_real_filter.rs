//! The host emulator driving the built filter (`make build` first): the harness mechanics the
//! filter-behaviour tests rely on, shown end to end with real tokens — configuration refused with
//! a field-naming log, keys fetched by a callout on a tick, tokens verified through Envoy's
//! `verify_signature` (and without it), the response stamp, the test clock expiring tokens, shared
//! data across VMs, and missing-import detection.

use std::time::Duration;

use serde_json::json;
use smart_fhir_edge::token::test_support::{self, Signer, AUD, ISS, NOW};
use smart_fhir_edge::token::Algorithm;
use wasm_tests::{HarnessError, Host, Outcome, RefusalReason, Vm, DEFAULT_EPOCH_SECS};

/// The filter's version, from the workspace manifest (the filter stamps it on responses).
fn filter_version() -> String {
    let manifest = include_str!("../../Cargo.toml");
    manifest
        .lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| {
            l.strip_prefix("version = ")
                .map(|v| v.trim_matches('"').to_string())
        })
        .expect("the workspace manifest has a package version")
}

/// A host configured like the filter's Envoy configurations: headers may be held while the
/// body is read (`allow_on_headers_stop_iteration: true`), which response checks need.
fn envoy_host() -> Host {
    Host::builder()
        .allow_on_headers_stop_iteration(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn config() -> String {
    config_stamped(false)
}

/// The configuration, with responses stamped with the filter's version or not (`version_header`).
fn config_stamped(version_header: bool) -> String {
    json!({
        "fhir_base": "/fhir",
        "version_header": version_header,
        "providers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "remote_jwks": {"uri": "https://idp.example.org/jwks", "cluster": "idp"}
        }]
    })
    .to_string()
}

fn token(signer: Signer) -> String {
    let alg = match signer {
        Signer::P256 => Algorithm::ES256,
        Signer::P384 => Algorithm::ES384,
        Signer::Ed25519 => Algorithm::EdDSA,
        Signer::RsaA | Signer::RsaB => Algorithm::RS256,
    };
    test_support::mint(alg, signer, &test_support::good_claims())
}

/// An empty searchset: what the patient search's response check passes untouched.
const SEARCHSET: &str = r#"{"resourceType":"Bundle","type":"searchset","total":0}"#;

fn observation_search(vm: &Vm, token: &str) -> wasm_tests::Stream {
    vm.get(
        "/fhir/Observation?patient=123",
        &[("authorization", &format!("Bearer {token}"))],
    )
}

/// The upstream answers the search with an empty searchset.
fn respond_searchset(s: &wasm_tests::Stream) -> Outcome {
    s.respond(
        200,
        &[("content-type", "application/fhir+json")],
        SEARCHSET.as_bytes(),
    )
}

/// Lets the filter's first tick run and answers its key fetch with the test JWKS.
fn serve_keys(host: &Host) {
    host.advance(Duration::from_secs(1));
    let fetch = host.callout();
    assert_eq!((fetch.cluster.as_str(), fetch.path()), ("idp", "/jwks"));
    fetch.respond(
        200,
        &[("content-type", "application/json")],
        &test_support::default_jwks(),
    );
}

#[test]
fn the_harness_clock_starts_where_the_token_fixtures_live() {
    assert_eq!(DEFAULT_EPOCH_SECS, NOW);
}

#[test]
fn refuses_invalid_configuration_with_a_log_naming_the_field() {
    let cases = [
        (json!({"fhir_base": "/fhir", "providers": []}), "providers"),
        (
            json!({"providers": [{"issuer": "https://idp", "audiences": ["a"],
                "remote_jwks": {"uri": "https://idp/jwks", "cluster": "idp", "timeout_ms": 0}}]}),
            "providers[0].remote_jwks.timeout_ms",
        ),
        (json!({"providers": [], "colour": "blue"}), "colour"),
    ];
    for (config, field) in cases {
        let host = Host::new();
        let refused = host
            .vm_with_config(config.to_string())
            .err()
            .unwrap_or_else(|| panic!("{field}: accepted"));
        assert_eq!(refused.reason, RefusalReason::ConfigureReturnedFalse, "{field}");
        assert!(refused.logged(&format!("field `{field}`")), "{field}: {refused}");
        assert!(host.vms().is_empty(), "{field}: no worker started");
    }
}

#[test]
fn a_verified_request_passes_once_the_keys_arrive_and_the_response_gets_the_version_stamp() {
    for signer in [Signer::RsaA, Signer::P256, Signer::P384, Signer::Ed25519] {
        for with_envoy_verifier in [true, false] {
            let mut b = Host::builder().allow_on_headers_stop_iteration(true);
            if !with_envoy_verifier {
                b = b.without_foreign_function("verify_signature");
            }
            let host = b.build().unwrap_or_else(|e| panic!("{e}"));
            let vm = host
                .vm_with_config(config_stamped(true))
                .unwrap_or_else(|e| panic!("{e}"));
            serve_keys(&host);
            let s = observation_search(&vm, &token(signer));
            let case = format!("{signer:?}, Envoy verifier: {with_envoy_verifier}");
            let forwarded = match s.send_headers(true) {
                Outcome::Continued { headers } => headers,
                other => panic!("{case}: {other:#?}\n{:#?}", s.logs()),
            };
            assert_eq!(
                forwarded.get(":path"),
                Some("/fhir/Observation?patient=123"),
                "{case}"
            );
            let out = respond_searchset(&s);
            let r = out.expect_responded();
            assert_eq!(
                r.header("x-smart-fhir-edge"),
                Some(filter_version().as_str()),
                "{case}"
            );
            assert_eq!(r.body_text(), SEARCHSET, "{case}");
        }
    }
}

#[test]
fn responses_carry_the_version_stamp_only_when_the_configuration_asks() {
    for stamped in [false, true] {
        let host = envoy_host();
        let vm = host
            .vm_with_config(config_stamped(stamped))
            .unwrap_or_else(|e| panic!("{e}"));
        serve_keys(&host);
        let want = stamped.then(filter_version);
        let s = observation_search(&vm, &token(Signer::RsaA));
        s.send_headers(true).expect_continued();
        let out = respond_searchset(&s);
        let upstream = out.expect_responded();
        assert_eq!(
            upstream.header("x-smart-fhir-edge"),
            want.as_deref(),
            "upstream answer, stamped: {stamped}"
        );
        let refused = vm.get("/fhir/Patient/123", &[]);
        let out = refused.send_headers(true);
        let reply = out.expect_local_reply();
        assert_eq!(reply.status, 401, "stamped: {stamped}");
        assert_eq!(
            reply.header("x-smart-fhir-edge"),
            want.as_deref(),
            "refusal, stamped: {stamped}"
        );
    }
}

#[test]
fn a_request_arriving_before_the_keys_waits_for_the_fetch_dispatched_on_the_first_tick() {
    let host = envoy_host();
    let vm = host.vm_with_config(config()).unwrap();
    assert!(
        host.pending_callouts().is_empty(),
        "nothing is fetched before the first tick"
    );
    let s = observation_search(&vm, &token(Signer::RsaA));
    s.send_headers(true).expect_paused();
    serve_keys(&host);
    assert_eq!(
        s.outcome().expect_continued().get(":path"),
        Some("/fhir/Observation?patient=123")
    );
}

#[test]
fn the_test_clock_expires_tokens() {
    let host = envoy_host();
    let vm = host.vm_with_config(config()).unwrap();
    serve_keys(&host);
    let t = token(Signer::RsaA);
    assert!(observation_search(&vm, &t).send_headers(true).is_continued());
    // good_claims() expires 300 s after NOW; past any leeway the token is refused.
    host.advance(Duration::from_secs(3600));
    for c in host.pending_callouts() {
        c.respond(200, &[], &test_support::default_jwks());
    }
    let refused = observation_search(&vm, &t).send_headers(true);
    assert_eq!(refused.status(), Some(401), "{refused:#?}");
    host.assert_never_logged(&t);
}

#[test]
fn two_vms_share_the_hosts_shared_data() {
    let host = envoy_host();
    let (a, b) = (
        host.vm_with_config(config()).unwrap(),
        host.vm_with_config(config()).unwrap(),
    );
    assert_eq!((a.index(), b.index()), (0, 1));
    // One canary plus two workers configured, as Envoy does for one configuration.
    assert_eq!(host.logs_containing("configured").len(), 3);
    host.advance(Duration::from_secs(1));
    for c in host.pending_callouts() {
        c.respond(200, &[], &test_support::default_jwks());
    }
    host.advance(Duration::from_secs(1));
    assert!(
        !host.shared_data_keys().is_empty(),
        "the filter shares what it fetched"
    );
    for vm in [&a, &b] {
        assert!(observation_search(vm, &token(Signer::RsaA))
            .send_headers(true)
            .is_continued());
    }
}

#[test]
fn the_filter_imports_only_what_envoy_provides() {
    let host = Host::try_new().unwrap_or_else(|e| panic!("{e}"));
    let imports = host.module_imports();
    assert!(
        imports
            .iter()
            .all(|i| i.starts_with("env.proxy_") || i.starts_with("wasi_snapshot_preview1.")),
        "{imports:?}"
    );
}

#[test]
fn an_import_envoy_does_not_provide_is_named_when_the_module_loads() {
    let path = wasm_tests::default_module_path();
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e}: build it first: make build", path.display()));
    // Rename one import in place (same length keeps the binary valid).
    let (from, to) = (&b"proxy_get_property"[..], &b"proxy_get_propertz"[..]);
    let mut patched = bytes.clone();
    let mut renamed = 0;
    let mut i = 0;
    while i + from.len() <= patched.len() {
        if &patched[i..i + from.len()] == from {
            patched[i..i + from.len()].copy_from_slice(to);
            renamed += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(renamed > 0, "the filter imports proxy_get_property");
    match Host::builder().module_bytes(&patched).build() {
        Err(HarnessError::MissingImports(names)) => {
            assert_eq!(names, vec!["env.proxy_get_propertz".to_string()])
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a module importing env.proxy_get_propertz was accepted"),
    }
}

#[test]
fn many_streams_keep_the_linear_memory_bounded() {
    let host = envoy_host();
    let vm = host.vm_with_config(config()).unwrap();
    serve_keys(&host);
    let t = token(Signer::RsaA);
    let run = |n: usize| {
        for _ in 0..n {
            let s = observation_search(&vm, &t);
            s.send_headers(true).expect_continued();
            s.respond(
                200,
                &[("content-type", "application/fhir+json")],
                SEARCHSET.as_bytes(),
            )
            .expect_responded();
            s.finish();
        }
    };
    run(100);
    let warm = vm.memory_size_bytes();
    run(1_000);
    assert_eq!(
        vm.memory_size_bytes(),
        warm,
        "streams that ended leave nothing behind"
    );
    assert_eq!(vm.live_streams(), 0);
}

/// The host calls of one request through `vm` (headers, response, end of stream), by import name.
fn calls_of_one_read(vm: &Vm, authorization: &str) -> std::collections::BTreeMap<String, u64> {
    let before = vm.host_calls();
    let s = vm.get("/fhir/Patient/123", &[("authorization", authorization)]);
    s.send_headers(true).expect_continued();
    s.respond(
        200,
        &[("content-type", "application/fhir+json")],
        br#"{"resourceType":"Patient","id":"123"}"#,
    )
    .expect_responded();
    vm.host_calls()
        .into_iter()
        .filter_map(|(k, v)| {
            let n = v - before.get(&k).copied().unwrap_or(0);
            (n > 0).then_some((k, n))
        })
        .collect()
}

#[test]
fn the_bench_host_calls_module_makes_exactly_the_host_calls_of_a_cache_hit() {
    // The bench's token and request (envoy/bench): a patient launch reading its own Patient.
    let mut claims = test_support::good_claims();
    claims["scope"] = json!("launch/patient openid fhirUser patient/*.rs");
    claims["fhirUser"] = json!("Patient/123");
    claims.as_object_mut().map(|c| c.remove("encounter"));
    let bearer = format!(
        "Bearer {}",
        test_support::mint(Algorithm::RS256, Signer::RsaA, &claims)
    );
    let host = envoy_host();
    let vm = host.vm_with_config(config()).unwrap_or_else(|e| panic!("{e}"));
    serve_keys(&host);
    calls_of_one_read(&vm, &bearer);
    let filter = calls_of_one_read(&vm, &bearer);
    assert!(
        !filter.contains_key("proxy_increment_metric"),
        "counters wait for the tick: {filter:?}"
    );

    let text = std::fs::read_to_string(wasm_tests::workspace_root().join("envoy/bench/host-calls.wat"))
        .unwrap_or_else(|e| panic!("{e}"));
    let wat_host = Host::builder()
        .wat(&text)
        .allow_on_headers_stop_iteration(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let wat_vm = wat_host.vm_with_config("").unwrap_or_else(|e| panic!("{e}"));
    let reference = calls_of_one_read(&wat_vm, "Bearer x");
    assert!(
        reference.contains_key("proxy_get_header_map_pairs"),
        "{reference:?}"
    );
    assert_eq!(
        filter, reference,
        "envoy/bench/host-calls.wat must make the filter's cache-hit calls"
    );
}

#[test]
fn request_counters_reach_the_host_on_the_tick_and_when_the_vm_ends() {
    let host = envoy_host();
    let vm = host.vm_with_config(config()).unwrap_or_else(|e| panic!("{e}"));
    serve_keys(&host);
    let allowed = "smart_fhir_edge.requests_total.decision.allow.reason.allowed";
    let refused = "smart_fhir_edge.requests_total.decision.deny.reason.missing_token";
    let s = observation_search(&vm, &token(Signer::RsaA));
    s.send_headers(true).expect_continued();
    respond_searchset(&s).expect_responded();
    assert_eq!(host.metric(allowed).unwrap_or(0), 0, "not per request");
    host.advance(wasm_tests::FILTER_TICK);
    assert_eq!(host.metric(allowed), Some(1), "sent on the tick");
    // Counted after the last tick, then the VM ends: nothing is lost.
    let r = vm.get("/fhir/Patient/123", &[]);
    assert_eq!(r.send_headers(true).expect_local_reply().status, 401);
    assert_eq!(host.metric(refused).unwrap_or(0), 0);
    assert_eq!(vm.shutdown(), Some(true));
    assert_eq!(host.metric(refused), Some(1), "sent when the VM ends");
    assert_eq!(host.metric(allowed), Some(1));
}
