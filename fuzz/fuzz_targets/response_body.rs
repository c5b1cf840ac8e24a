//! Response filtering: reads, histories, searchsets (includes, paging links) and batch responses
//! checked against the grant, withheld entries removed.
//! Input: a selector byte (request and grant), then the upstream's response body.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::authz;
use smart_fhir_edge::body::{self, ResponseVerdict};
use smart_fhir_edge::config::Config;
use smart_fhir_edge::fhir::request::classify;

#[path = "common.rs"]
mod common;

/// Requests whose response the filter checks.
const REQUESTS: [(&str, &str); 8] = [
    ("GET", "/fhir/Observation/o1"),
    ("GET", "/fhir/Observation/o1/_history/2"),
    ("GET", "/fhir/Observation/o1/_history"),
    (
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:subject",
    ),
    ("GET", "/fhir/Patient/123/$everything"),
    ("GET", "/fhir/Patient/123"),
    ("GET", "/fhir/Observation?category=laboratory"),
    ("GET", "/fhir/Condition?patient=123"),
];

static CONFIG: OnceLock<Config> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(common::config);
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (method, path) = REQUESTS[usize::from(selector) % REQUESTS.len()];
    let (scopes, patient) = common::GRANTS[usize::from(selector / 8) % common::GRANTS.len()];
    let (claims, granted) = common::grant(scopes, patient);
    let Ok(req) = classify(method, path, "/fhir") else {
        return;
    };
    let Ok(a) = authz::authorize(&req, false, &claims, &granted, config) else {
        return;
    };
    let Some(check) = a.response_check else { return };
    let verdict = body::check_response(&check, 200, Some("application/fhir+json"), body, &granted, config);
    if let ResponseVerdict::Replace(text) = verdict {
        // A filtered body is JSON the client can read.
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).is_ok(),
            "a filtered body is JSON"
        );
    }
});
