//! Bearer token parsing and verification: header extraction, the b64token check, JWS structure
//! and header rules, provider and key selection, signature and claim rules.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::config::Config;
use smart_fhir_edge::jwks::KeySet;
use smart_fhir_edge::token::{self, jws, verify, JwtSimpleVerifier};

#[path = "common.rs"]
mod common;

static FIXTURES: OnceLock<(Config, Vec<Option<KeySet>>)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (config, keys) = FIXTURES.get_or_init(|| (common::config(), vec![Some(common::key_set())]));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // As an Authorization header value.
    let _ = token::bearer_token(&[("authorization", text)], "", config.max_token_bytes);
    // As a query string (an `access_token` parameter is refused, RFC 6750 §2.3 is not supported).
    let _ = token::bearer_token(&[("authorization", "Bearer x")], text, config.max_token_bytes);
    let _ = token::check_b64token(text);
    let _ = token::token_fingerprint(text);
    let _ = token::verify(text, config, keys, common::NOW, &JwtSimpleVerifier);
    // The claim rules on whatever payload parses (a real token reaches them only once signed).
    if let Ok(parsed) = jws::parse(text) {
        if let Some(provider) = config.providers.first() {
            let rules = verify::ClaimRules {
                provider,
                clock_skew_s: config.clock_skew_s,
                patient_claim: &config.patient_claim,
            };
            let _ = verify::check_claims(&parsed.unverified_claims, rules, common::NOW);
        }
    }
});
