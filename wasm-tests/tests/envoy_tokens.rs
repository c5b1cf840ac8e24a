//! Real Envoy: bearer tokens are verified against the identity provider's keys, fetched through an
//! Envoy cluster; key rotation, an identity provider that is down, and kid storms.

#![allow(clippy::type_complexity)] // test tables are tuples

use std::time::Duration;

use smart_fhir_edge::token::test_support::Signer;
use wasm_tests::http1::free_port;
use wasm_tests::stack::*;

#[test]
fn a_valid_token_reaches_the_upstream_with_verified_facts_and_spoofed_ones_removed() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let t = token(&claims("patient/*.rs", Some("123")));
    let r = envoy.get(
        "/fhir/Patient/123",
        &[
            ("authorization", &bearer(&t)),
            ("x-smart-patient", "999"),
            ("X-Smart-Scope", "system/*.*"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers_named("x-smart-patient"), vec!["123"]);
    assert_eq!(seen[0].headers_named("x-smart-scope"), vec!["patient/*.rs"]);
    assert_eq!(seen[0].header("x-smart-client-id"), Some("app-1"));
    assert_eq!(seen[0].header("x-smart-sub"), Some("user-1"));
    assert_eq!(seen[0].header("x-smart-fhir-user"), Some("Practitioner/77"));
}

#[test]
fn refusals_are_operation_outcomes_and_never_reach_the_upstream() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let mut expired = claims("patient/*.rs", Some("123"));
    expired["exp"] = serde_json::json!(now() - 120);
    expired["iat"] = serde_json::json!(now() - 600);
    let mut wrong_aud = claims("patient/*.rs", Some("123"));
    wrong_aud["aud"] = serde_json::json!("https://elsewhere.example.org");
    let good = token(&claims("patient/*.rs", Some("123")));
    let tampered = {
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        parts[2] = parts[2].chars().rev().collect();
        parts.join(".")
    };
    let cases: Vec<(&str, Vec<(&str, String)>, u16, &str, Option<&str>)> = vec![
        ("/fhir/Patient/123", vec![], 401, "login", None),
        (
            "/fhir/Patient/123",
            vec![("authorization", "Basic dTpw".into())],
            401,
            "login",
            None,
        ),
        (
            "/fhir/Patient/123",
            vec![("authorization", bearer(&token(&expired)))],
            401,
            "expired",
            Some("invalid_token"),
        ),
        (
            "/fhir/Patient/123",
            vec![("authorization", bearer(&token(&wrong_aud)))],
            401,
            "unknown",
            Some("invalid_token"),
        ),
        (
            "/fhir/Patient/123",
            vec![("authorization", bearer(&tampered))],
            401,
            "unknown",
            Some("invalid_token"),
        ),
        (
            "/fhir/Patient/123",
            vec![("authorization", "Bearer not.a.jwt".into())],
            401,
            "unknown",
            Some("invalid_token"),
        ),
        (
            "/fhir/Patient/123",
            vec![("authorization", bearer(&good)), ("authorization", bearer(&good))],
            400,
            "invalid",
            Some("invalid_request"),
        ),
        (
            "/fhir/Patient/456",
            vec![("authorization", bearer(&good))],
            403,
            "forbidden",
            Some("insufficient_scope"),
        ),
        (
            "/fhir/MedicationRequest?patient=456",
            vec![("authorization", bearer(&good))],
            403,
            "forbidden",
            Some("insufficient_scope"),
        ),
        (
            "/fhir/Patient/123",
            vec![(
                "authorization",
                bearer(&token(&claims("user/Observation.rs", None))),
            )],
            403,
            "forbidden",
            Some("insufficient_scope"),
        ),
    ];
    for (path, headers, status, code, error) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = envoy.get(path, &h);
        assert_outcome(&r, status, code);
        let www = r.header("www-authenticate").unwrap_or("");
        match error {
            Some(e) => assert!(www.contains(&format!("error=\"{e}\"")), "{path}: {www}"),
            None => assert_eq!(www, "Bearer realm=\"smart-fhir-edge\"", "{path}"),
        }
        assert!(!r.body_str().contains(&good), "no token in error bodies");
    }
    assert_eq!(up.request_count(), 0, "no refused request reached the upstream");
}

#[test]
fn a_rotated_key_is_accepted_without_restarting_envoy() {
    let (idp, up) = (Idp::start(jwks_of(&[Signer::RsaA])), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let c = claims("system/*.rs", None);
    assert_eq!(
        envoy
            .get("/fhir/Observation", &[("authorization", &bearer(&token(&c)))])
            .status,
        200
    );
    // The identity provider rotates to a new key (new kid); the old one is retired.
    idp.set_jwks(200, jwks_of(&[Signer::RsaB, Signer::P256]));
    let rotated = token_by(Signer::RsaB, &c);
    let r = envoy.get("/fhir/Observation", &[("authorization", &bearer(&rotated))]);
    assert_eq!(
        r.status,
        200,
        "a token with the new kid is accepted at once: {}",
        r.body_str()
    );
    let ec = token_by(Signer::P256, &c);
    assert_eq!(
        envoy
            .get("/fhir/Observation", &[("authorization", &bearer(&ec))])
            .status,
        200
    );
    // The retired key no longer verifies (the verified-token cache was dropped with the key set).
    let old = envoy.get("/fhir/Observation", &[("authorization", &bearer(&token(&c)))]);
    assert_outcome(&old, 401, "unknown");
}

#[test]
fn an_identity_provider_down_at_start_answers_503_then_recovers() {
    let up = fhir_upstream();
    let idp_port = free_port();
    let envoy = envoy(&plugin_config(), &up, idp_port);
    let t = token(&claims("system/*.rs", None));
    let r = envoy.get("/fhir/Observation", &[("authorization", &bearer(&t))]);
    assert_outcome(&r, 503, "transient");
    assert!(r.header("retry-after").is_some());
    assert_eq!(up.request_count(), 0);
    // The identity provider comes up; within the backoff the filter fetches and serves.
    let _idp = Idp::start_on(idp_port, default_jwks());
    let ok = envoy.wait_until(Duration::from_secs(15), || {
        envoy
            .get("/fhir/Observation", &[("authorization", &bearer(&t))])
            .status
            == 200
    });
    assert!(ok, "recovered without a restart");
}

#[test]
fn a_storm_of_unknown_kids_makes_at_most_one_refetch() {
    let (idp, up) = (Idp::start(jwks_of(&[Signer::RsaA])), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let c = claims("system/*.rs", None);
    assert_eq!(
        envoy
            .get("/fhir/Observation", &[("authorization", &bearer(&token(&c)))])
            .status,
        200
    );
    let before = idp.fetches();
    for i in 0..30 {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": format!("forged-{i}")});
        let forged = smart_fhir_edge::token::test_support::mint_raw(
            smart_fhir_edge::token::Algorithm::RS256,
            Signer::RsaB,
            &header.to_string(),
            &c.to_string(),
        );
        let r = envoy.get("/fhir/Observation", &[("authorization", &bearer(&forged))]);
        assert_outcome(&r, 401, "unknown");
    }
    assert!(
        idp.fetches() - before <= 1,
        "{} refetches",
        idp.fetches() - before
    );
    assert_eq!(up.request_count(), 1);
}
