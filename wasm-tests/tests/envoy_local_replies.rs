//! Real Envoy: answers made by Envoy itself or by other filters (router, local_ratelimit, RBAC,
//! buffer, codec limits) and upstream errors that are not FHIR all leave as OperationOutcomes;
//! a FHIR server's own OperationOutcome passes untouched.

#![allow(clippy::type_complexity)] // test tables are tuples

use std::time::Duration;

use serde_json::json;
use wasm_tests::http1::{Response, Server};
use wasm_tests::real_envoy::{config_file, with_plugin_config, Envoy};
use wasm_tests::stack::*;

fn upstream() -> Server {
    Server::start(|req| {
        let p = req.path.as_str();
        if p.starts_with("/fhir/Procedure") {
            std::thread::sleep(Duration::from_secs(3));
            Response::json(200, "{}")
        } else if p.starts_with("/fhir/Medication") {
            Response::text(
                500,
                "text/plain",
                "java.lang.NullPointerException at com.example.Internal",
            )
        } else if p.starts_with("/fhir/Location") {
            Response::text(
                502,
                "text/html; charset=utf-8",
                "<html><body>Bad gateway from 10.1.2.3</body></html>",
            )
        } else if p.starts_with("/fhir/Practitioner") {
            Response::json(
                404,
                r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"from the FHIR server"}]}"#,
            )
        } else {
            Response::json(200, r#"{"resourceType":"Bundle","type":"searchset"}"#)
        }
    })
}

fn start() -> (Idp, Server, Envoy) {
    let (idp, up) = (Idp::start(default_jwks()), upstream());
    let mut config = plugin_config();
    config["public_paths"] = json!(["/fhir/metadata", "/unrouted"]);
    // Every answer, the filter's and Envoy's rewritten ones, shows the filter was in the path.
    config["version_header"] = json!(true);
    let yaml = with_plugin_config(&config_file("test-local-replies.yaml"), &config);
    let envoy = Envoy::start(&yaml, up.port(), idp.port());
    (idp, up, envoy)
}

#[test]
fn every_local_reply_and_non_fhir_error_becomes_an_operation_outcome() {
    let (_idp, up, envoy) = start();
    let t = token(&claims("system/*.*", None));
    let auth = bearer(&t);
    let h = [("authorization", auth.as_str()), ("x-request-id", "req-42")];
    // (method, path, body, status, issue code, a diagnostics fragment)
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "GET",
            "/fhir/Encounter",
            vec![],
            503,
            "transient",
            "no healthy upstream",
        ),
        (
            "GET",
            "/fhir/Device",
            vec![],
            503,
            "transient",
            "connection to the FHIR server failed",
        ),
        ("GET", "/fhir/Condition", vec![], 403, "forbidden", "by policy"),
        (
            "POST",
            "/fhir/Basic",
            vec![b'{'; 4096],
            413,
            "too-long",
            "body is too large",
        ),
        (
            "GET",
            "/fhir/Procedure",
            vec![],
            504,
            "timeout",
            "did not answer in time",
        ),
        ("GET", "/unrouted", vec![], 404, "not-found", "No route"),
        (
            "GET",
            "/fhir/Medication",
            vec![],
            500,
            "exception",
            "FHIR server failed",
        ),
        (
            "GET",
            "/fhir/Location",
            vec![],
            502,
            "transient",
            "FHIR server failed",
        ),
    ];
    for (method, path, body, status, code, text) in cases {
        let r = envoy.send(method, path, &h, &body);
        let v = assert_outcome(&r, status, code);
        let d = v["issue"][0]["diagnostics"].as_str().unwrap_or("");
        assert!(d.contains(text), "{path}: {d}");
        assert!(d.contains("req-42"), "{path}: the request id is carried: {d}");
        assert_eq!(v["id"], "req-42", "{path}");
        assert!(
            !r.body_str().contains("NullPointer") && !r.body_str().contains("10.1.2.3"),
            "no internals"
        );
        assert_eq!(r.header("x-smart-fhir-edge"), Some(env!("CARGO_PKG_VERSION")));
    }
    assert!(
        up.request_count() >= 3,
        "the upstream answered the upstream cases"
    );
}

#[test]
fn rate_limit_replies_keep_their_headers() {
    let (_idp, _up, envoy) = start();
    let auth = bearer(&token(&claims("system/*.*", None)));
    let h = [("authorization", auth.as_str())];
    let statuses: Vec<u16> = (0..3)
        .map(|_| envoy.get("/fhir/Observation", &h).status)
        .collect();
    assert_eq!(&statuses[..2], &[200, 200]);
    let r = envoy.get("/fhir/Observation", &h);
    assert_outcome(&r, 429, "throttled");
    assert_eq!(r.header("retry-after"), Some("60"), "Retry-After is kept");
}

#[test]
fn a_fhir_servers_own_operation_outcome_passes_untouched() {
    let (_idp, _up, envoy) = start();
    let auth = bearer(&token(&claims("system/*.*", None)));
    let r = envoy.get("/fhir/Practitioner/1", &[("authorization", &auth)]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/fhir+json"));
    assert_eq!(r.body_json()["issue"][0]["diagnostics"], "from the FHIR server");
}

#[test]
fn xml_clients_get_xml_and_head_gets_headers_only() {
    let (_idp, _up, envoy) = start();
    let auth = bearer(&token(&claims("system/*.*", None)));
    let r = envoy.get(
        "/fhir/Encounter",
        &[("authorization", &auth), ("accept", "application/fhir+xml")],
    );
    assert_eq!(r.status, 503);
    assert_eq!(
        r.header("content-type"),
        Some("application/fhir+xml; charset=utf-8")
    );
    let body = r.body_str();
    assert!(
        body.starts_with("<OperationOutcome xmlns=\"http://hl7.org/fhir\">"),
        "{body}"
    );
    assert!(body.contains("<code value=\"transient\"/>"), "{body}");
    let r = envoy.get("/fhir/Encounter?_format=xml", &[("authorization", &auth)]);
    assert!(
        r.body_str().starts_with("<OperationOutcome"),
        "_format=xml asks for XML too"
    );
    // A refused HEAD: status and headers, no body.
    let r = envoy.send("HEAD", "/fhir/Patient", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.body.is_empty());
    assert!(r.header("www-authenticate").is_some());
}

#[test]
fn oversized_headers_are_answered_by_the_local_reply_mapper() {
    let (_idp, up, envoy) = start();
    let big = "x".repeat(10 * 1024);
    let r = envoy.get("/fhir/Patient", &[("x-padding", &big)]);
    assert_outcome(&r, 431, "too-long");
    assert_eq!(up.request_count(), 0);
}
