//! RFC 7662 token introspection in the built filter, under the host emulator with a controlled
//! clock: the callout (POST, client authentication, form body) through the configured cluster,
//! the answer cached until `max_cache_s` (the revocation delay) or `exp`, inactive answers cached
//! for `negative_cache_s`, concurrent requests with one token sharing one callout, every failure
//! (timeout, reset, HTTP error, not JSON, no `active`, a cluster the host refuses) failing closed
//! with 503 and `Retry-After`, `always` mode on verified JWTs (also after waiting for keys, when the
//! root context sends the callout), a callout whose sender went away sent again for the others, and
//! the `token_source` of audit records and metrics. The token never appears in a log line.
//!
//! Build the module first (`make build`). Every test has its own [`Host`].

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use smart_fhir_edge::denial::INTROSPECTION_RETRY_AFTER_S;
use smart_fhir_edge::token::test_support::{self, Signer, AUD, ISS, NOW};
use smart_fhir_edge::token::{token_fingerprint, Algorithm};
use wasm_tests::{Callout, Host, Outcome, Response, Stream, Vm};

const CLUSTER: &str = "idp";
const INTROSPECT_PATH: &str = "/oauth/introspect";
const TIMEOUT: Duration = Duration::from_millis(1500);
const MAX_CACHE_S: u64 = 30;
const NEGATIVE_CACHE_S: u64 = 5;
/// An opaque access token as oidc-provider issues them (43 base64url characters).
const OPAQUE: &str = "q8Kx2vZp0nW4rT7yUe1sLm9cA3dF6gH5jB0kN2oP4rS";

fn host_with(clusters: Option<&[&str]>) -> Host {
    let mut b = Host::builder().allow_on_headers_stop_iteration(true);
    if let Some(c) = clusters {
        b = b.clusters(c);
    }
    b.build().unwrap_or_else(|e| panic!("{e}"))
}

fn config(mode: &str) -> String {
    let jwks: Value = serde_json::from_slice(&test_support::default_jwks()).unwrap();
    json!({
        "fhir_base": "/fhir",
        "providers": [{
            "issuer": ISS, "audiences": [AUD], "local_jwks": jwks,
            "introspection": {
                "mode": mode, "endpoint": format!("https://idp.example.org{INTROSPECT_PATH}"),
                "cluster": CLUSTER, "timeout_ms": TIMEOUT.as_millis() as u64,
                "max_cache_s": MAX_CACHE_S, "negative_cache_s": NEGATIVE_CACHE_S,
                "client_auth": {"method": "client_secret_basic", "client_id": "edge", "client_secret": "edge-secret"}
            }
        }]
    })
    .to_string()
}

/// A clinician's search: `user/` scopes, so nothing waits for the response body.
const PATH: &str = "/fhir/Observation?code=1234-5";

fn request(vm: &Vm, token: &str, id: &str) -> Stream {
    vm.get(
        PATH,
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-request-id", id),
        ],
    )
}

/// An active answer for the clinician: `user/Observation.rs`, expiring in an hour.
fn active(extra: Value) -> String {
    let mut v = json!({"active": true, "iss": ISS, "aud": AUD, "client_id": "opaque-app", "sub": "dr-1",
        "scope": "openid fhirUser user/Observation.rs", "fhirUser": "Practitioner/77", "exp": NOW + 3600});
    if let (Some(o), Value::Object(x)) = (v.as_object_mut(), extra) {
        o.extend(x);
    }
    v.to_string()
}

const INACTIVE: &str = r#"{"active": false}"#;

/// The single pending callout, checked to be an RFC 7662 introspection of `token`.
#[track_caller]
fn introspection_of(host: &Host, token: &str) -> Callout {
    let c = host.callout();
    assert_eq!(
        (c.cluster.as_str(), c.method(), c.path(), c.authority()),
        (CLUSTER, "POST", INTROSPECT_PATH, "idp.example.org")
    );
    assert_eq!(
        c.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(c.header("accept"), Some("application/json"));
    let basic = base64::engine::general_purpose::STANDARD.encode("edge:edge-secret");
    assert_eq!(c.header("authorization"), Some(format!("Basic {basic}").as_str()));
    assert_eq!(
        String::from_utf8(c.body.clone()).unwrap(),
        format!("token={token}&token_type_hint=access_token")
    );
    assert_eq!(c.timeout, Some(TIMEOUT));
    c
}

/// The audit record of request `id`.
#[track_caller]
fn audit(host: &Host, id: &str) -> Value {
    let needle = format!("\"request_id\":\"{id}\"");
    let lines = host.logs_containing(&needle);
    let line = lines
        .iter()
        .find(|l| l.message.starts_with("smart-fhir-edge audit "))
        .unwrap_or_else(|| panic!("no audit record for {id}"));
    serde_json::from_str(line.message.trim_start_matches("smart-fhir-edge audit ")).unwrap()
}

/// Lets the request continue, answers it upstream, and returns its audit record.
#[track_caller]
fn forwarded(host: &Host, s: &Stream, id: &str) -> Value {
    let h = s.outcome().expect_continued().clone();
    assert_eq!(h.get("x-smart-client-id"), Some("opaque-app"), "{h:#?}");
    assert_eq!(h.get("x-smart-fhir-user"), Some("Practitioner/77"));
    assert_eq!(
        h.get("x-smart-scope"),
        Some("openid fhirUser user/Observation.rs")
    );
    s.respond(200, &[("content-type", "application/fhir+json")], b"{}")
        .expect_responded();
    audit(host, id)
}

#[track_caller]
fn operation_outcome(r: &Response) -> (String, String) {
    let body: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {r:#?}"));
    assert_eq!(body["resourceType"], "OperationOutcome", "{r:#?}");
    (
        body["issue"][0]["code"].as_str().unwrap_or_default().to_string(),
        body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[track_caller]
fn assert_inactive(r: &Response) {
    assert_eq!(r.status, 401, "{r:#?}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    let (code, diagnostics) = operation_outcome(r);
    assert_eq!(code, "unknown");
    assert!(
        diagnostics.starts_with("The access token is not active"),
        "{diagnostics}"
    );
}

#[track_caller]
fn assert_unavailable(r: &Response) {
    assert_eq!(r.status, 503, "{r:#?}");
    assert_eq!(
        r.header("retry-after"),
        Some(INTROSPECTION_RETRY_AFTER_S.to_string().as_str())
    );
    assert_eq!(operation_outcome(r).0, "transient");
}

/// A counter's value once the filter's next tick has sent the request counters.
fn metric(host: &Host, name: &str) -> u64 {
    host.advance(wasm_tests::FILTER_TICK);
    host.metric(&format!("smart_fhir_edge.{name}")).unwrap_or(0)
}

#[test]
fn an_opaque_token_is_introspected_once_then_answered_from_the_cache() {
    let host = host_with(None);
    let vm = host.vm_with_config(config("opaque")).unwrap();
    let s = request(&vm, OPAQUE, "live");
    s.send_headers(true).expect_paused();
    introspection_of(&host, OPAQUE).respond_json(200, &active(json!({})));
    let record = forwarded(&host, &s, "live");
    assert_eq!(
        (
            &record["token_source"],
            &record["token_cache_hit"],
            &record["decision"]
        ),
        (&json!("introspection_live"), &json!(false), &json!("allow"))
    );
    assert_eq!(record["token_hash"], token_fingerprint(OPAQUE));
    assert_eq!(
        (&record["client_id"], &record["issuer"]),
        (&json!("opaque-app"), &json!(ISS))
    );

    host.advance(Duration::from_secs(MAX_CACHE_S - 1));
    let s = request(&vm, OPAQUE, "cached");
    s.send_headers(true);
    assert!(host.pending_callouts().is_empty(), "answered from the cache");
    let record = forwarded(&host, &s, "cached");
    assert_eq!(
        (&record["token_source"], &record["token_cache_hit"]),
        (&json!("introspection_cached"), &json!(true))
    );
    let table = [
        ("token_checks_total.token_source.introspection_live", 1),
        ("token_checks_total.token_source.introspection_cached", 1),
        ("token_checks_total.token_source.jwt", 0),
        ("introspections_total.outcome.active", 1),
    ];
    for (name, want) in table {
        assert_eq!(metric(&host, name), want, "{name}");
    }
    host.assert_never_logged(OPAQUE);
}

#[test]
fn concurrent_requests_with_one_token_share_one_callout() {
    let host = host_with(None);
    let vm = host.vm_with_config(config("opaque")).unwrap();
    let streams: Vec<Stream> = (0..5).map(|i| request(&vm, OPAQUE, &format!("c{i}"))).collect();
    for s in &streams {
        s.send_headers(true).expect_paused();
    }
    // A second token, at the same time, has its own callout.
    let other = request(&vm, "another-opaque-token", "other");
    other.send_headers(true).expect_paused();
    let pending = host.pending_callouts();
    assert_eq!(pending.len(), 2, "one callout per token: {pending:#?}");
    let mine = pending
        .iter()
        .find(|c| c.body.starts_with(format!("token={OPAQUE}&").as_bytes()))
        .unwrap();
    mine.respond_json(200, &active(json!({})));
    for (i, s) in streams.iter().enumerate() {
        let record = forwarded(&host, s, &format!("c{i}"));
        assert_eq!(record["token_source"], "introspection_live", "c{i}");
    }
    assert!(
        other.outcome().is_paused(),
        "the other token still waits for its own answer"
    );
    host.callout().respond_json(200, INACTIVE);
    assert_inactive(other.outcome().expect_local_reply());
    assert_eq!(metric(&host, "introspections_total.outcome.active"), 1);
    assert_eq!(metric(&host, "introspections_total.outcome.inactive"), 1);
    host.assert_never_logged(OPAQUE);
}

#[test]
fn a_revoked_token_is_refused_once_max_cache_s_has_passed_and_the_refusal_is_cached_briefly() {
    let host = host_with(None);
    let vm = host.vm_with_config(config("opaque")).unwrap();
    let s = request(&vm, OPAQUE, "before");
    s.send_headers(true).expect_paused();
    introspection_of(&host, OPAQUE).respond_json(200, &active(json!({})));
    forwarded(&host, &s, "before");
    // Revoked at the provider right away: the edge trusts its answer for max_cache_s.
    host.advance(Duration::from_secs(MAX_CACHE_S) - Duration::from_millis(1));
    let s = request(&vm, OPAQUE, "within-delay");
    s.send_headers(true);
    forwarded(&host, &s, "within-delay");
    host.advance(Duration::from_millis(1));
    let s = request(&vm, OPAQUE, "after-delay");
    s.send_headers(true).expect_paused();
    introspection_of(&host, OPAQUE).respond_json(200, INACTIVE);
    assert_inactive(s.outcome().expect_local_reply());
    assert_eq!(s.upstream_request().headers, None, "nothing went upstream");
    let record = audit(&host, "after-delay");
    assert_eq!(
        (&record["reason"], &record["token_source"]),
        (&json!("invalid_token.inactive"), &json!("introspection_live"))
    );
    // The refusal is remembered for negative_cache_s, then asked again.
    host.advance(Duration::from_secs(NEGATIVE_CACHE_S - 1));
    let s = request(&vm, OPAQUE, "negative");
    assert_inactive(s.send_headers(true).expect_local_reply());
    assert!(host.pending_callouts().is_empty());
    assert_eq!(audit(&host, "negative")["token_source"], "introspection_cached");
    host.advance(Duration::from_secs(1));
    request(&vm, OPAQUE, "asked-again")
        .send_headers(true)
        .expect_paused();
    introspection_of(&host, OPAQUE);
    host.assert_never_logged(OPAQUE);
}

#[test]
fn an_answer_never_outlives_the_tokens_exp() {
    let host = host_with(None);
    let vm = host.vm_with_config(config("opaque")).unwrap();
    let s = request(&vm, OPAQUE, "a");
    s.send_headers(true).expect_paused();
    introspection_of(&host, OPAQUE).respond_json(200, &active(json!({"exp": NOW + 10})));
    forwarded(&host, &s, "a");
    host.advance(Duration::from_secs(10));
    request(&vm, OPAQUE, "b").send_headers(true).expect_paused();
    introspection_of(&host, OPAQUE);
}

#[test]
fn every_failure_of_the_endpoint_fails_closed_with_503_and_is_not_cached() {
    type Fail = fn(&Host, &Callout);
    let failures: [(&str, Fail); 6] = [
        ("timeout", |host, _| host.advance(TIMEOUT)),
        ("reset", |_, c| c.fail()),
        ("HTTP 500", |_, c| {
            c.respond(500, &[("content-type", "text/plain")], b"oops")
        }),
        ("not JSON", |_, c| {
            c.respond(200, &[("content-type", "text/html")], b"<html>")
        }),
        ("no active", |_, c| {
            c.respond_json(200, r#"{"scope": "user/*.rs"}"#)
        }),
        ("active not a boolean", |_, c| {
            c.respond_json(200, r#"{"active": "true"}"#)
        }),
    ];
    for (label, fail) in failures {
        let host = host_with(None);
        let vm = host.vm_with_config(config("opaque")).unwrap();
        let s = request(&vm, OPAQUE, "failed");
        s.send_headers(true).expect_paused();
        let c = introspection_of(&host, OPAQUE);
        fail(&host, &c);
        assert_unavailable(s.outcome().expect_local_reply());
        assert_eq!(
            s.upstream_request().headers,
            None,
            "{label}: nothing went upstream"
        );
        let record = audit(&host, "failed");
        assert_eq!(record["reason"], "introspection_unavailable", "{label}");
        assert_eq!(record["token_hash"], token_fingerprint(OPAQUE), "{label}");
        let hash = token_fingerprint(OPAQUE);
        assert!(
            !host
                .logs_containing(&format!("token {hash}: introspection failed"))
                .is_empty(),
            "{label}: the failure is logged with the token's hash"
        );
        // Not cached: the next request asks again.
        request(&vm, OPAQUE, "again").send_headers(true).expect_paused();
        introspection_of(&host, OPAQUE);
        let outcome = if matches!(label, "not JSON" | "no active" | "active not a boolean") {
            "invalid"
        } else {
            "unavailable"
        };
        assert_eq!(
            metric(&host, &format!("introspections_total.outcome.{outcome}")),
            1,
            "{label}"
        );
        host.assert_never_logged(OPAQUE);
    }
}

#[test]
fn a_callout_the_host_refuses_to_send_fails_closed_at_once() {
    let host = host_with(Some(&["some-other-cluster"]));
    let vm = host.vm_with_config(config("opaque")).unwrap();
    let s = request(&vm, OPAQUE, "refused");
    assert_unavailable(s.send_headers(true).expect_local_reply());
    assert!(host.pending_callouts().is_empty());
    assert_eq!(audit(&host, "refused")["token_source"], "introspection_live");
    host.assert_never_logged(OPAQUE);
}

#[test]
fn always_mode_introspects_verified_jwts_only_and_honours_revocation() {
    let host = host_with(None);
    let vm = host.vm_with_config(config("always")).unwrap();
    let mut claims = test_support::good_claims();
    claims["scope"] = json!("user/Observation.rs");
    let jwt = test_support::mint(Algorithm::ES256, Signer::P256, &claims);
    // A JWT that does not verify is refused without asking the provider.
    let mut forged = jwt.clone();
    forged.pop();
    forged.push(if jwt.ends_with('A') { 'B' } else { 'A' });
    let s = request(&vm, &forged, "forged");
    assert_eq!(s.send_headers(true).expect_local_reply().status, 401);
    assert!(
        host.pending_callouts().is_empty(),
        "no introspection of a forged JWT"
    );
    assert_eq!(audit(&host, "forged")["token_source"], "jwt");

    let s = request(&vm, &jwt, "jwt-live");
    s.send_headers(true).expect_paused();
    introspection_of(&host, &jwt).respond_json(200, &active(json!({"client_id": "not-used"})));
    let h = s.outcome().expect_continued().clone();
    assert_eq!(
        h.get("x-smart-client-id"),
        Some("app-1"),
        "the JWT's own verified claims are forwarded"
    );
    s.respond(200, &[], b"").expect_responded();
    assert_eq!(audit(&host, "jwt-live")["token_source"], "introspection_live");

    // Revoked: refused once the cached answer is older than max_cache_s.
    host.advance(Duration::from_secs(MAX_CACHE_S));
    let s = request(&vm, &jwt, "jwt-revoked");
    s.send_headers(true).expect_paused();
    introspection_of(&host, &jwt).respond_json(200, INACTIVE);
    assert_inactive(s.outcome().expect_local_reply());
    host.assert_never_logged(&jwt);
}

#[test]
fn in_opaque_mode_jwts_are_checked_locally_without_a_callout() {
    let host = host_with(None);
    let vm = host.vm_with_config(config("opaque")).unwrap();
    let mut claims = test_support::good_claims();
    claims["scope"] = json!("user/Observation.rs");
    let jwt = test_support::mint(Algorithm::ES256, Signer::P256, &claims);
    let s = request(&vm, &jwt, "local");
    assert!(matches!(s.send_headers(true), Outcome::Continued { .. }));
    assert!(host.pending_callouts().is_empty());
    s.respond(200, &[], b"").expect_responded();
    assert_eq!(audit(&host, "local")["token_source"], "jwt");
    assert_eq!(metric(&host, "token_checks_total.token_source.jwt"), 1);
}

#[test]
fn when_the_request_that_sent_the_callout_goes_away_the_others_ask_again() {
    let host = host_with(None);
    let vm = host.vm_with_config(config("opaque")).unwrap();
    let sender = request(&vm, OPAQUE, "gone");
    sender.send_headers(true).expect_paused();
    let first = introspection_of(&host, OPAQUE);
    let waiting: Vec<Stream> = (0..2).map(|i| request(&vm, OPAQUE, &format!("w{i}"))).collect();
    for s in &waiting {
        s.send_headers(true).expect_paused();
    }
    assert_eq!(
        host.pending_callouts().len(),
        1,
        "they share the callout in flight"
    );
    // The client of the first request disconnects: Envoy cancels that stream's callouts.
    sender.finish();
    // They ask again on the next tick, from the root context (which then owns the callout).
    host.advance(Duration::from_millis(100));
    let pending = host.pending_callouts();
    assert_eq!(
        pending.len(),
        2,
        "one new callout for the waiting requests: {pending:#?}"
    );
    let second = pending.into_iter().find(|c| c.token != first.token).unwrap();
    assert_eq!(second.body, first.body);
    second.respond_json(200, &active(json!({})));
    for (i, s) in waiting.iter().enumerate() {
        assert_eq!(
            forwarded(&host, s, &format!("w{i}"))["token_source"],
            "introspection_live"
        );
    }
    // A late answer to the cancelled callout (Envoy would not deliver it) changes nothing.
    first.respond_json(200, INACTIVE);
    let s = request(&vm, OPAQUE, "after");
    s.send_headers(true);
    assert_eq!(
        forwarded(&host, &s, "after")["token_source"],
        "introspection_cached"
    );
}

#[test]
fn a_request_that_waited_for_keys_is_then_introspected_through_the_root_context() {
    let host = host_with(None);
    let mut c: Value = serde_json::from_str(&config("always")).unwrap();
    let provider = &mut c["providers"][0];
    provider.as_object_mut().unwrap().remove("local_jwks");
    provider["remote_jwks"] = json!({"uri": "https://idp.example.org/jwks", "cluster": CLUSTER});
    let vm = host.vm_with_config(c.to_string()).unwrap();
    let mut claims = test_support::good_claims();
    claims["scope"] = json!("user/Observation.rs");
    let jwt = test_support::mint(Algorithm::ES256, Signer::P256, &claims);
    let s = request(&vm, &jwt, "after-keys");
    s.send_headers(true).expect_paused();
    host.advance(Duration::from_millis(100));
    let keys = host.callout();
    assert_eq!(keys.path(), "/jwks");
    // The keys arrive on the root context, which resumes the request: it now needs the
    // introspection, sent from the root context and answered there.
    keys.respond_json(200, std::str::from_utf8(&test_support::default_jwks()).unwrap());
    assert!(
        s.outcome().is_paused(),
        "verified, now waiting for the introspection"
    );
    introspection_of(&host, &jwt).respond_json(200, &active(json!({})));
    let h = s.outcome().expect_continued().clone();
    assert_eq!(h.get("x-smart-client-id"), Some("app-1"));
    s.respond(200, &[], b"").expect_responded();
    assert_eq!(audit(&host, "after-keys")["token_source"], "introspection_live");
}
