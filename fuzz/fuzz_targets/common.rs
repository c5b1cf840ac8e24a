//! Fixtures shared by the fuzz targets: the configuration, key set and grants they run against.

#![allow(dead_code)]

use smart_fhir_edge::claims::VerifiedClaims;
use smart_fhir_edge::config::Config;
use smart_fhir_edge::jwks::KeySet;
use smart_fhir_edge::scope::GrantedScopes;
use smart_fhir_edge::token::test_support::{self, AUD, ISS};

/// The request time the targets use (the test keys' claims are valid then).
pub const NOW: u64 = test_support::NOW;

/// A configuration with one provider (the test issuer) and response checks on.
pub fn config() -> Config {
    let json = serde_json::json!({
        "fhir_base": "/fhir",
        "fhir_base_urls": ["https://ehr.example/fhir"],
        "providers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "algorithms": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
            "remote_jwks": {"uri": "http://127.0.0.1:18082/jwks", "cluster": "idp"}
        }],
        "clock_skew_s": 30
    });
    match Config::from_json(json.to_string().as_bytes()) {
        Ok(c) => c,
        Err(e) => panic!("fuzz fixture configuration: {e}"),
    }
}

/// Every test key, by its default kid.
pub fn key_set() -> KeySet {
    match KeySet::from_jwks(&test_support::default_jwks()) {
        Ok(k) => k,
        Err(e) => panic!("fuzz fixture key set: {e:?}"),
    }
}

/// Verified claims of a token with `scopes`, for `patient`.
pub fn grant(scopes: &str, patient: Option<&str>) -> (VerifiedClaims, GrantedScopes) {
    let claims = VerifiedClaims {
        issuer: ISS.into(),
        scopes: scopes.split_whitespace().map(str::to_string).collect(),
        patient: patient.map(str::to_string),
        ..VerifiedClaims::default()
    };
    let granted = GrantedScopes::parse(&claims.scopes);
    (claims, granted)
}

/// The grants the body targets try in turn: patient-level, granular, user-level, system-level.
pub const GRANTS: [(&str, Option<&str>); 4] = [
    ("patient/*.cruds", Some("123")),
    (
        "patient/Observation.rs?category=laboratory patient/Patient.r patient/Condition.cruds",
        Some("123"),
    ),
    ("user/*.cruds", None),
    ("system/Observation.rs system/Patient.rs", None),
];
