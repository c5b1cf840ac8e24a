//! A whole test stack around real Envoy: an identity provider serving a JWKS, a FHIR upstream
//! that records every request it receives, and Envoy with the filter in front of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use smart_fhir_edge::token::test_support::{self, Signer};
use smart_fhir_edge::token::Algorithm;

use crate::http1::{Response, Server};
use crate::real_envoy::{config_file, with_plugin_config, Envoy};

pub use smart_fhir_edge::token::test_support::{AUD, ISS};

/// Seconds since the Unix epoch (Envoy uses the real clock).
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims valid now for the test provider, with `scope` and an optional `patient`.
pub fn claims(scope: &str, patient: Option<&str>) -> Value {
    let now = now();
    let mut c = json!({
        "iss": ISS, "aud": AUD, "sub": "user-1", "client_id": "app-1", "jti": format!("jti-{now}"),
        "exp": now + 300, "iat": now - 5, "scope": scope, "fhirUser": "Practitioner/77",
    });
    if let Some(p) = patient {
        c["patient"] = json!(p);
    }
    c
}

/// An RS256 token signed with the default test key (`kid` `rsa-a`).
pub fn token(claims: &Value) -> String {
    test_support::mint(Algorithm::RS256, Signer::RsaA, claims)
}

/// A token signed by `signer` with its natural algorithm.
pub fn token_by(signer: Signer, claims: &Value) -> String {
    let alg = match signer {
        Signer::P256 => Algorithm::ES256,
        Signer::P384 => Algorithm::ES384,
        Signer::Ed25519 => Algorithm::EdDSA,
        Signer::RsaA | Signer::RsaB => Algorithm::RS256,
    };
    test_support::mint(alg, signer, claims)
}

/// `Authorization: Bearer …`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The JWKS the identity provider serves by default: every test key, by its default kid.
pub fn default_jwks() -> Vec<u8> {
    test_support::default_jwks()
}

/// A JWKS of some test keys only.
pub fn jwks_of(signers: &[Signer]) -> Vec<u8> {
    let keys: Vec<Value> = signers
        .iter()
        .map(|s| test_support::jwk(*s, Some(s.kid()), None))
        .collect();
    test_support::jwks(&keys)
}

/// The identity provider: serves `/jwks` from a document the test can change, counts fetches.
pub struct Idp {
    pub server: Server,
    jwks: Arc<Mutex<(u16, Vec<u8>)>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    pub fn start(jwks: Vec<u8>) -> Idp {
        Idp::start_on(0, jwks)
    }

    /// On a given port (0: any), e.g. to come back on the port Envoy was configured with.
    pub fn start_on(port: u16, jwks: Vec<u8>) -> Idp {
        let doc = Arc::new(Mutex::new((200, jwks)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        let server = Server::start_on(port, move |req| {
            if req.path.starts_with("/jwks") {
                f.fetch_add(1, Ordering::SeqCst);
                let (status, body) = d.lock().map(|g| g.clone()).unwrap_or((500, Vec::new()));
                let mut r = Response::new(status).with_header("content-type", "application/json");
                r.body = body;
                r
            } else {
                Response::new(404)
            }
        });
        Idp {
            server,
            jwks: doc,
            fetches,
        }
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn set_jwks(&self, status: u16, body: Vec<u8>) {
        if let Ok(mut g) = self.jwks.lock() {
            *g = (status, body);
        }
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// The FHIR upstream: answers every request with a small FHIR resource and records it.
pub fn fhir_upstream() -> Server {
    Server::start(|req| {
        let rt = req
            .path
            .trim_start_matches("/fhir/")
            .split(['/', '?'])
            .next()
            .unwrap_or("")
            .to_string();
        Response::json(
            200,
            json!({"resourceType": if rt.is_empty() { "Bundle".into() } else { rt }}).to_string(),
        )
    })
}

/// The plugin configuration the suite uses by default (issuer and audience of the test keys).
pub fn plugin_config() -> Value {
    json!({
        "fhir_base": "/fhir",
        "providers": [{
            "issuer": ISS,
            "audiences": [AUD],
            "remote_jwks": {"uri": "http://127.0.0.1:18082/jwks", "cluster": "idp",
                             "timeout_ms": 1000, "cache_duration_s": 300, "min_refetch_interval_s": 30}
        }],
        "clock_skew_s": 30
    })
}

/// Envoy from `envoy/test.yaml` with `config` as the plugin configuration.
pub fn envoy(config: &Value, upstream: &Server, idp_port: u16) -> Envoy {
    Envoy::start(
        &with_plugin_config(&config_file("test.yaml"), config),
        upstream.port(),
        idp_port,
    )
}

/// Checks that a body is a FHIR OperationOutcome with one issue of `code`; returns it.
pub fn assert_outcome(r: &Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "status; body: {}", r.body_str());
    assert_eq!(
        r.header("content-type"),
        Some("application/fhir+json; charset=utf-8"),
        "{:?}",
        r.headers
    );
    let v = r.body_json();
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    let issue = &v["issue"][0];
    assert_eq!(issue["code"], code, "{v}");
    assert!(
        matches!(issue["severity"].as_str(), Some("error" | "fatal")),
        "{v}"
    );
    assert!(
        issue["diagnostics"].as_str().is_some_and(|d| !d.is_empty()),
        "{v}"
    );
    let len: usize = r
        .header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(usize::MAX);
    assert_eq!(len, r.body.len(), "content-length matches the body");
    v
}
