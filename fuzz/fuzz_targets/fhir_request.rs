//! FHIR request classification: method, path (`..`, percent-encoding, `;` parameters, `//`,
//! case), interaction and query parsing, then authorization against a patient-level grant.
//! Input: the method, a space, then the path and query.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::authz;
use smart_fhir_edge::config::Config;
use smart_fhir_edge::fhir::request::{classify, Limits};
use smart_fhir_edge::fhir::Query;

#[path = "common.rs"]
mod common;

static CONFIG: OnceLock<Config> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(common::config);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (method, path) = text.split_once(' ').unwrap_or(("GET", text));
    if let Some((_, q)) = path.split_once('?') {
        if let Ok(query) = Query::parse(q) {
            // What the edge forwards parses again to the same parameters (`to_query_string`'s
            // promise). Re-encoding may lengthen the query, so without the edge's size limits:
            // the upstream reads it, not the edge.
            let unbounded = Limits {
                max_query_bytes: usize::MAX,
                max_params: usize::MAX,
                max_values: usize::MAX,
                ..Limits::default()
            };
            let again = Query::parse_with_limits(&query.to_query_string(), &unbounded);
            assert_eq!(
                again.as_ref(),
                Ok(&query),
                "a re-serialized query parses to the same"
            );
        }
    }
    let Ok(req) = classify(method, path, "/fhir") else {
        return;
    };
    let _ = req.interaction.kind();
    let _ = req.interaction.resource_type();
    for (scopes, patient) in common::GRANTS {
        let (claims, granted) = common::grant(scopes, patient);
        let _ = authz::authorize(&req, false, &claims, &granted, config);
    }
});
