//! The SMART scope grammar (v1 and v2, granular `?param=value` scopes) and what a grant allows.
//! Input: the token's `scope` string, then optionally a line break and a query for the granular
//! constraints.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::fhir::Query;
use smart_fhir_edge::scope::{Context, GrantedScopes, Permissions, Scope};

const TYPES: [Option<&str>; 4] = [None, Some("Observation"), Some("Patient"), Some("NoSuchType")];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (scopes, query) = text.split_once('\n').unwrap_or((text, ""));
    let words: Vec<String> = scopes.split(' ').map(str::to_string).collect();
    for w in &words {
        if let Some(s) = Scope::parse(w) {
            let _ = s.is_granular();
        }
    }
    let _ = Permissions::parse_v2(scopes);
    let granted = GrantedScopes::parse(&words);
    let _ = granted.is_empty();
    let query = Query::parse(query).ok();
    for ctx in [Context::Patient, Context::User, Context::System] {
        let _ = granted.has_context(ctx);
        for t in TYPES {
            let p = granted.permissions(ctx, t);
            let _ = (
                p.letters(),
                p.first(),
                p.covers(Permissions::ALL),
                p.lacking(Permissions::ALL),
            );
            for s in granted.granular(ctx, t) {
                if let Some(q) = &query {
                    let _ = s.is_met_by(q);
                }
            }
        }
    }
});
