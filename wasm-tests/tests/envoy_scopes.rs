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
    // (authorization, method, path, expected status, whether the upstream was asked): a response
    // the edge refuses was asked for, and never reaches the client.
    let cases: Vec<(&str, &str, &str, u16, bool)> = vec![
        (&patient, "GET", "/fhir/Patient/123", 200, true),
        (&patient, "GET", "/fhir/Patient/456", 403, false),
        (
            &patient,
            "GET",
            "/fhir/Observation?subject=Patient/123",
            200,
            true,
        ),
        (
            &patient,
            "GET",
            "/fhir/Observation?patient=123&code=1234-5",
            200,
            true,
        ),
        (&patient, "GET", "/fhir/Observation?patient=123,456", 403, false),
        (
            &patient,
            "GET",
            "/fhir/Observation?patient=123&patient=456",
            403,
            false,
        ),
        (
            &patient,
            "GET",
            "/fhir/Observation?patient:missing=true",
            403,
            false,
        ),
        (&patient, "GET", "/fhir/Observation?subject.name=smith", 200, true),
        (&patient, "GET", "/fhir/Patient/123/Observation", 200, true),
        (&patient, "GET", "/fhir/Patient/456/Observation", 403, false),
        (&patient, "GET", "/fhir/Condition?patient=123", 403, false),
        (&patient, "GET", "/fhir/Observation/o1", 200, true),
        (&patient, "GET", "/fhir/Observation/o2", 403, true),
        (&patient, "GET", "/fhir/Observation/abc", 403, true),
        (&patient, "POST", "/fhir/Observation", 403, false),
        (&patient_v1, "GET", "/fhir/Condition?patient=123", 200, true),
        (&no_patient, "GET", "/fhir/Observation?patient=123", 403, false),
        (&user, "GET", "/fhir/Observation?patient=456", 200, true),
        (&user, "GET", "/fhir/Observation/abc", 200, true),
        (&user, "GET", "/fhir/Condition", 403, false),
        (&user, "DELETE", "/fhir/Observation/abc", 403, false),
        (&writer, "DELETE", "/fhir/Observation/abc", 200, true),
        (&writer, "PUT", "/fhir/Observation/abc", 200, true),
        (&writer, "GET", "/fhir/Patient/1", 403, false),
        (&user, "GET", "/fhir/Observation/../Patient/1", 400, false),
        (&user, "GET", "/fhir/Observation%2F1", 400, false),
        (&user, "GET", "/fhir//Observation", 400, false),
        (&user, "GET", "/fhir/NotAType/1", 404, false),
        (&user, "GET", "/elsewhere", 404, false),
    ];
    let mut asked = 0;
    for (auth, method, path, status, reaches) in &cases {
        let body: &[u8] = if *method == "POST" || *method == "PUT" {
            br#"{"resourceType":"Observation","id":"abc"}"#
        } else {
            b""
        };
        let before = up.request_count();
        let r = envoy.send(method, path, &[("authorization", auth)], body);
        assert_eq!(r.status, *status, "{method} {path}: {}", r.body_str());
        if *reaches {
            asked += 1;
        }
        assert_eq!(
            up.request_count(),
            before + usize::from(*reaches),
            "{method} {path} reached the upstream: {reaches}"
        );
        if *status != 200 {
            assert_outcome(
                &r,
                *status,
                r.body_json()["issue"][0]["code"].as_str().unwrap_or("?"),
            );
            assert!(!r.body_str().contains("Other"), "{path}: nothing of patient 456");
        }
        if *status == 403 {
            let www = r.header("www-authenticate").unwrap_or("");
            assert!(www.contains("error=\"insufficient_scope\""), "{path}: {www}");
        }
        if *status == 200 && *auth == patient.as_str() {
            let v = r.body_json();
            let text = v.to_string();
            assert!(
                !text.contains("Patient/456") && !text.contains("Other"),
                "{path}: {text}"
            );
        }
    }
    assert_eq!(up.request_count(), asked);
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
