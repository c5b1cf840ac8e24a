//! Real Envoy introspecting opaque access tokens (RFC 7662) at the real OpenID Connect provider of
//! the demo (panva `oidc-provider`, `envoy/demo/idp.mjs`): its `demo-opaque-backend` client gets
//! opaque tokens, the filter introspects them through Envoy's `idp` cluster as the `smart-fhir-edge`
//! client, and a token revoked at the provider's revocation endpoint (RFC 7009) stops working within
//! `max_cache_s`, the revocation delay; an unreachable endpoint fails closed with 503.
//!
//! Needs `./envoy/demo/run.sh install` (Node 22 and the npm packages; `make test` runs it): without
//! it the provider test fails and says so.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use wasm_tests::http1::{self, Response};
use wasm_tests::node_idp::NodeIdp;
use wasm_tests::stack::{assert_outcome, bearer, envoy, fhir_upstream};

/// The resource server the provider issues tokens for (`aud`).
const AUDIENCE: &str = "http://127.0.0.1/fhir";
/// The revocation delay configured: how long an active answer is trusted.
const MAX_CACHE_S: u64 = 2;

fn config(issuer: &str, idp_port: u16) -> Value {
    json!({
        "fhir_base": "/fhir",
        "providers": [{
            "issuer": issuer,
            "audiences": [AUDIENCE],
            "algorithms": ["RS256", "ES256"],
            "remote_jwks": {"uri": format!("http://127.0.0.1:{idp_port}/jwks"), "cluster": "idp", "timeout_ms": 2000},
            "introspection": {
                "mode": "opaque",
                "endpoint": format!("{issuer}/token/introspection"),
                "cluster": "idp",
                "timeout_ms": 2000,
                "max_cache_s": MAX_CACHE_S,
                "negative_cache_s": 1,
                "client_auth": {"method": "client_secret_basic", "client_id": "smart-fhir-edge",
                                "client_secret": "smart-fhir-edge-secret"}
            }
        }],
        "clock_skew_s": 30
    })
}

fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// The provider's own introspection answer for `token`, asked as the edge.
fn introspect_at_provider(idp: &NodeIdp, token: &str) -> Value {
    let auth = basic("smart-fhir-edge", "smart-fhir-edge-secret");
    let r = http1::send(
        idp.port,
        "POST",
        "/token/introspection",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("token={token}").as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    r.body_json()
}

/// The filter's audit records (JSON) from Envoy's log.
fn audit_records(log: &[String]) -> Vec<Value> {
    log.iter()
        .filter_map(|l| l.split_once("smart-fhir-edge audit ").map(|(_, j)| j))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect()
}

#[test]
fn a_revoked_opaque_token_stops_working_within_max_cache_s() {
    let idp = NodeIdp::start(AUDIENCE);
    let up = fhir_upstream();
    let ([response, shared], envoy) = std::thread::scope(|s| {
        let tokens = s.spawn(|| {
            [
                idp.client_credentials("demo-opaque-backend", "system/*.rs"),
                idp.client_credentials("demo-opaque-backend", "system/Patient.rs"),
            ]
        });
        let envoy = envoy(&config(&idp.issuer, idp.port), &up, idp.port);
        (tokens.join().expect("tokens from the provider"), envoy)
    });
    let token = response["access_token"]
        .as_str()
        .expect("access_token")
        .to_string();
    assert!(!token.contains('.'), "an opaque token, not a JWT");
    assert_eq!(introspect_at_provider(&idp, &token)["active"], true);
    let auth = bearer(&token);
    let headers = [("authorization", auth.as_str())];

    // Allowed, with the introspected facts forwarded; the second answer comes from the cache.
    for i in 0..2 {
        let r = envoy.get("/fhir/Patient", &headers);
        assert_eq!(
            r.status,
            200,
            "request {i}: {}\nfilter log:\n{}",
            r.body_str(),
            envoy.filter_log().join("\n")
        );
    }
    assert_eq!(up.request_count(), 2);
    let seen = up.requests().pop().expect("the upstream request");
    assert_eq!(seen.header("x-smart-client-id"), Some("demo-opaque-backend"));
    assert_eq!(seen.header("x-smart-scope"), Some("system/*.rs"));

    // Concurrent requests with a new token: one introspection, every request answered from it.
    let shared = shared["access_token"].as_str().expect("access_token").to_string();
    let active = "wasmcustom.smart_fhir_edge.introspections_total.outcome.active";
    let before = envoy.stat(active).unwrap_or(0);
    let barrier = std::sync::Barrier::new(8);
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let auth = bearer(&shared);
                    barrier.wait();
                    envoy
                        .get("/fhir/Patient/pat-amy", &[("authorization", &auth)])
                        .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("request")).collect()
    });
    assert_eq!(statuses, vec![200; 8]);
    assert_eq!(
        envoy.stat(active).unwrap_or(0),
        before + 1,
        "one introspection for 8 requests"
    );
    let hash = smart_fhir_edge::token::token_fingerprint(&shared);
    let live = audit_records(&envoy.filter_log())
        .iter()
        .filter(|r| r["token_hash"] == hash.as_str() && r["token_source"] == "introspection_live")
        .count();
    assert!(
        live >= 2,
        "requests waited for the same callout ({live} of 8 did)"
    );

    // Revoked at the provider (RFC 7009, by its client).
    let revoke = http1::send(
        idp.port,
        "POST",
        "/token/revocation",
        &[
            (
                "authorization",
                &basic("demo-opaque-backend", "demo-opaque-backend-secret"),
            ),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("token={token}&token_type_hint=access_token").as_bytes(),
    );
    assert_eq!(revoke.status, 200, "{}", revoke.body_str());
    let revoked_at = Instant::now();
    assert_eq!(introspect_at_provider(&idp, &token)["active"], false);

    // Within the delay each request is allowed (from the cache) or refused; once refused, refused.
    let refused: Response = loop {
        let before = up.request_count();
        let r = envoy.get("/fhir/Patient", &headers);
        match r.status {
            200 => assert_eq!(up.request_count(), before + 1),
            401 => break r,
            other => panic!("unexpected {other}: {}", r.body_str()),
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(MAX_CACHE_S) + Duration::from_millis(1500),
            "still allowed {:?} after the revocation (max_cache_s {MAX_CACHE_S})",
            revoked_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let took = revoked_at.elapsed();
    assert!(
        took <= Duration::from_secs(MAX_CACHE_S) + Duration::from_millis(1500),
        "refused {took:?} after the revocation"
    );
    let outcome = assert_outcome(&refused, 401, "unknown");
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.starts_with("The access token is not active")),
        "{outcome}"
    );
    let challenge = refused.header("www-authenticate").unwrap_or_default();
    assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
    let reached = up.request_count();
    for _ in 0..3 {
        let r = envoy.get("/fhir/Observation", &headers);
        assert_outcome(&r, 401, "unknown");
    }
    std::thread::sleep(Duration::from_millis(1200));
    assert_outcome(&envoy.get("/fhir/Patient", &headers), 401, "unknown");
    assert_eq!(
        up.request_count(),
        reached,
        "nothing reached the upstream after the refusal"
    );

    // The audit says where each verdict came from; the token itself is never logged.
    let log = envoy.filter_log();
    let records = audit_records(&log);
    let sources: Vec<&str> = records
        .iter()
        .filter_map(|r| r["token_source"].as_str())
        .collect();
    assert!(sources.contains(&"introspection_live"), "{sources:?}");
    assert!(sources.contains(&"introspection_cached"), "{sources:?}");
    assert!(
        records.iter().any(|r| r["reason"] == "invalid_token.inactive"
            && r["client_id"].is_null()
            && r["token_source"] == "introspection_live"),
        "{records:#?}"
    );
    assert!(!envoy.log().contains(&token), "the token is never logged");
    for (outcome, at_least) in [("active", 1), ("inactive", 1)] {
        let name = format!("wasmcustom.smart_fhir_edge.introspections_total.outcome.{outcome}");
        let n = envoy.stat(&name).unwrap_or(0);
        assert!(n >= at_least, "{name}: {n}");
    }
}

#[test]
fn an_unreachable_introspection_endpoint_fails_closed_with_503_and_retry_after() {
    // Nothing listens where the `idp` cluster points.
    let dead = http1::free_port();
    let up = fhir_upstream();
    let issuer = format!("http://127.0.0.1:{dead}");
    let envoy = envoy(&config(&issuer, dead), &up, dead);
    let token = "opaque-token-nobody-can-check-0123456789";
    let r = envoy.get("/fhir/Patient", &[("authorization", &bearer(token))]);
    assert_outcome(&r, 503, "transient");
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(up.request_count(), 0, "nothing reached the upstream");
    let log = envoy.filter_log().join("\n");
    assert!(log.contains("introspection failed"), "{log}");
    assert!(!log.contains(token), "the token is never logged");
}
