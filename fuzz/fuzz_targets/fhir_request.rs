//! FHIR request classification: method, path (`..`, percent-encoding, `;` parameters, `//`,
//! case), interaction and query parsing, then authorization against a patient-level grant.
//! Input: the method, a space, then the path and query.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::authz;
use smart_fhir_edge::config::Config;
use smart_fhir_edge::fhir::request::classify;
use smart_fhir_edge::fhir::Query;

#[path = "common.rs"]
mod common;

static CONFIG: OnceLock<Config> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let config = CONFIG.get_or_init(common::config);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (method, path) = text.split_once(' ').unwrap_or(("GET", text));
    if let Some((_, q)) = path.split_once('?') {
        if let Ok(query) = Query::parse(q) {
            // What the edge forwards must parse again to the same parameters.
            let again = Query::parse(&query.to_query_string());
            assert!(again.is_ok(), "a re-serialized query parses");
        }
    }
    let Ok(req) = classify(method, path, "/fhir") else { return };
    let _ = req.interaction.kind();
    let _ = req.interaction.resource_type();
    for (scopes, patient) in common::GRANTS {
        let (claims, granted) = common::grant(scopes, patient);
        let _ = authz::authorize(&req, false, &claims, &granted, config);
    }
});
