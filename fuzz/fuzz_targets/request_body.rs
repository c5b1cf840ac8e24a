//! Request bodies: `POST _search` form bodies, batch/transaction Bundles, and create/update/patch
//! resources, each checked as the filter checks them after authorizing the URL.
//! Input: a selector byte (request and grant), then the body.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::authz;
use smart_fhir_edge::body;
use smart_fhir_edge::config::Config;
use smart_fhir_edge::fhir::request::classify;

#[path = "common.rs"]
mod common;

/// (method, path, content type): requests whose body the filter reads.
const REQUESTS: [(&str, &str, &str); 8] = [
    (
        "POST",
        "/fhir/Observation/_search",
        "application/x-www-form-urlencoded",
    ),
    (
        "POST",
        "/fhir/Patient/123/Observation/_search",
        "application/x-www-form-urlencoded; charset=utf-8",
    ),
    ("POST", "/fhir", "application/fhir+json"),
    ("POST", "/fhir/Observation", "application/fhir+json"),
    ("PUT", "/fhir/Observation/o1", "application/fhir+json"),
    ("PUT", "/fhir/Patient/123", "application/json"),
    ("PATCH", "/fhir/Observation/o1", "application/json-patch+json"),
    ("POST", "/fhir/Condition", "application/fhir+json"),
];

static CONFIG: OnceLock<Config> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(common::config);
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let (method, path, content_type) = REQUESTS[usize::from(selector) % REQUESTS.len()];
    let (scopes, patient) = common::GRANTS[usize::from(selector / 8) % common::GRANTS.len()];
    let (claims, granted) = common::grant(scopes, patient);
    let Ok(req) = classify(method, path, "/fhir") else {
        return;
    };
    let Ok(a) = authz::authorize(&req, false, &claims, &granted, config) else {
        return;
    };
    let Some(check) = a.body_check else { return };
    let _ = body::check_request(&req, &check, Some(content_type), body, &claims, &granted, config);
});
