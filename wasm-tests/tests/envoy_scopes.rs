//! Real Envoy: SMART scopes and patient context decide, denied requests never reach the upstream,
//! the filter constrains patient searches, answers its own SMART configuration, and refuses
//! method overrides.

#![allow(clippy::type_complexity)] // test tables are tuples

use serde_json::json;
use wasm_tests::stack::*;

#[test]
fn scopes_and_patient_context_decide_every_interaction() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let patient = bearer(&token(&claims(
        "launch/patient patient/Observation.rs patient/Patient.r",
        Some("123"),
    )));
    let patient_v1 = bearer(&token(&claims("patient/*.read", Some("123"))));
    let user = bearer(&token(&claims("user/Observation.rs", None)));
    let writer = bearer(&token(&claims(
        "system/Observation.cud system/Observation.rs",
        None,
    )));
    let no_patient = bearer(&token(&claims("patient/Observation.rs", None)));
    // (authorization, method, path, expected status)
    let cases: Vec<(&str, &str, &str, u16)> = vec![
        (&patient, "GET", "/fhir/Patient/123", 200),
        (&patient, "GET", "/fhir/Patient/456", 403),
        (&patient, "GET", "/fhir/Observation?subject=Patient/123", 200),
        (&patient, "GET", "/fhir/Observation?patient=123&code=1234-5", 200),
        (&patient, "GET", "/fhir/Observation?patient=123,456", 403),
        (&patient, "GET", "/fhir/Observation?patient=123&patient=456", 403),
        (&patient, "GET", "/fhir/Observation?patient:missing=true", 403),
        (&patient, "GET", "/fhir/Observation?subject.name=smith", 403),
        (&patient, "GET", "/fhir/Patient/123/Observation", 200),
        (&patient, "GET", "/fhir/Patient/456/Observation", 403),
        (&patient, "GET", "/fhir/Condition?patient=123", 403),
        (&patient, "GET", "/fhir/Observation/abc", 403),
        (&patient, "POST", "/fhir/Observation", 403),
        (&patient_v1, "GET", "/fhir/Condition?patient=123", 200),
        (&no_patient, "GET", "/fhir/Observation?patient=123", 403),
        (&user, "GET", "/fhir/Observation?patient=456", 200),
        (&user, "GET", "/fhir/Observation/abc", 200),
        (&user, "GET", "/fhir/Condition", 403),
        (&user, "DELETE", "/fhir/Observation/abc", 403),
        (&writer, "DELETE", "/fhir/Observation/abc", 200),
        (&writer, "PUT", "/fhir/Observation/abc", 200),
        (&writer, "GET", "/fhir/Patient/1", 403),
        (&user, "GET", "/fhir/Observation/../Patient/1", 400),
        (&user, "GET", "/fhir/Observation%2F1", 400),
        (&user, "GET", "/fhir//Observation", 400),
        (&user, "GET", "/fhir/NotAType/1", 404),
        (&user, "GET", "/elsewhere", 404),
    ];
    let mut allowed = 0;
    for (auth, method, path, status) in &cases {
        let body: &[u8] = if *method == "POST" || *method == "PUT" {
            br#"{"resourceType":"Observation"}"#
        } else {
            b""
        };
        let before = up.request_count();
        let r = envoy.send(method, path, &[("authorization", auth)], body);
        assert_eq!(r.status, *status, "{method} {path}: {}", r.body_str());
        if *status == 200 {
            allowed += 1;
            assert_eq!(
                up.request_count(),
                before + 1,
                "{method} {path} reached the upstream"
            );
        } else {
            assert_outcome(
                &r,
                *status,
                r.body_json()["issue"][0]["code"].as_str().unwrap_or("?"),
            );
            assert_eq!(
                up.request_count(),
                before,
                "{method} {path} must not reach the upstream"
            );
        }
        if *status == 403 {
            let www = r.header("www-authenticate").unwrap_or("");
            assert!(www.contains("error=\"insufficient_scope\""), "{path}: {www}");
        }
    }
    assert_eq!(up.request_count(), allowed);
}

#[test]
fn an_unconstrained_patient_search_is_confined_to_the_patient() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let auth = bearer(&token(&claims("patient/Observation.rs", Some("123"))));
    let r = envoy.get(
        "/fhir/Observation?code=http://loinc.org|1234-5",
        &[("authorization", &auth)],
    );
    assert_eq!(r.status, 200);
    let seen = &up.requests()[0];
    assert!(seen.path.starts_with("/fhir/Observation?"), "{}", seen.path);
    assert!(
        seen.path.contains("subject=Patient%2F123") || seen.path.contains("subject=Patient/123"),
        "{}",
        seen.path
    );
    assert!(
        seen.path.contains("code="),
        "the original criteria stay: {}",
        seen.path
    );

    let mut refuse = plugin_config();
    refuse["unconstrained_search"] = json!("refuse");
    let envoy2 = wasm_tests::stack::envoy(&refuse, &up, idp.port());
    let r = envoy2.get("/fhir/Observation?code=1234-5", &[("authorization", &auth)]);
    assert_outcome(&r, 403, "forbidden");
}

#[test]
fn public_paths_and_the_smart_configuration_need_no_token() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let mut config = plugin_config();
    config["smart_configuration"] = json!({
        "issuer": ISS, "authorization_endpoint": "https://idp.example.org/authorize",
        "token_endpoint": "https://idp.example.org/token", "capabilities": ["launch-standalone"]
    });
    let envoy = envoy(&config, &up, idp.port());
    let r = envoy.get("/fhir/metadata", &[("x-smart-patient", "999")]);
    assert_eq!(r.status, 200);
    assert!(
        up.requests()[0].header("x-smart-patient").is_none(),
        "spoofed headers removed on public paths too"
    );
    let r = envoy.get("/fhir/.well-known/smart-configuration", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body_json()["token_endpoint"], "https://idp.example.org/token");
    assert_eq!(
        up.request_count(),
        1,
        "the filter answered the SMART configuration itself"
    );
    // Public paths are GET/HEAD only.
    let r = envoy.send("POST", "/fhir/metadata", &[], b"{}");
    assert_outcome(&r, 401, "login");
}

#[test]
fn method_override_headers_are_refused() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let auth = bearer(&token(&claims("user/*.rs", None)));
    for name in ["x-http-method-override", "X-HTTP-Method", "x-method-override"] {
        let r = envoy.send(
            "POST",
            "/fhir/Observation/_search",
            &[("authorization", &auth), (name, "DELETE")],
            b"",
        );
        assert_outcome(&r, 400, "not-supported");
    }
    assert_eq!(up.request_count(), 0);
}
