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

/// The FHIR upstream: a FHIR server holding two patients' data (`123` and `456`) that, like a
/// server that leaves SMART to the edge, answers whoever asks with whatever matches the type, and
/// records every request:
///
/// * `GET [type]/[id]` (and `/_history/[vid]`): the stored resource, or for an unknown id a bare
///   resource of that type and id (no subject);
/// * `GET [type]/[id]/_history`: a history Bundle of the resource;
/// * searches (`GET [type]?…`, `POST [type]/_search`, `Patient/[id]/[type]`, `Patient/[id]/$everything`):
///   a searchset of *every* stored resource of the type (all types for `$everything`), with every
///   Patient `_include`d when asked, paged two by two (`page=2`, a `next` link under
///   `https://ehr.example/fhir` and a `prev` link to an internal host), `total` counting all;
/// * `POST [base]` with a batch or transaction: a `batch-response` answering each read entry;
/// * other writes: `201`/`200` with `{"resourceType": type}`.
pub fn fhir_upstream() -> Server {
    Server::start(fhir_answer)
}

/// The resources [`fhir_upstream`] holds: patient `123`'s and patient `456`'s.
pub fn fhir_store() -> Vec<Value> {
    let obs = |id: &str, patient: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "weight"},
               "valueQuantity": {"value": 72.50, "unit": "kg"}, "subject": {"reference": format!("Patient/{patient}")}})
    };
    vec![
        json!({"resourceType": "Patient", "id": "123", "name": [{"family": "Own"}]}),
        json!({"resourceType": "Patient", "id": "456", "name": [{"family": "Other"}]}),
        obs("o1", "123"),
        obs("o2", "456"),
        obs("o3", "123"),
        obs("o4", "456"),
        json!({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/123"}}),
        json!({"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/456"}}),
        json!({"resourceType": "Practitioner", "id": "77", "name": [{"family": "Doc"}]}),
    ]
}

/// Base URL the upstream writes in links and `fullUrl`s (configure it as `fhir_base_urls`).
pub const FHIR_BASE_URL: &str = "https://ehr.example/fhir";

fn fhir_answer(req: &crate::http1::Request) -> Response {
    let (path, query) = req.path.split_once('?').unwrap_or((req.path.as_str(), ""));
    let rest = path.strip_prefix("/fhir").unwrap_or(path).trim_start_matches('/');
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let store = fhir_store();
    let of_type =
        |t: &str| -> Vec<Value> { store.iter().filter(|r| r["resourceType"] == t).cloned().collect() };
    let find = |t: &str, id: &str| {
        store
            .iter()
            .find(|r| r["resourceType"] == t && r["id"] == id)
            .cloned()
    };
    let json_resp = |status: u16, v: Value| Response::json(status, v.to_string());
    let method = req.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["metadata"]) => json_resp(
            200,
            json!({"resourceType": "CapabilityStatement", "status": "active"}),
        ),
        ("POST", []) => {
            let bundle: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
            let entries: Vec<Value> = bundle["entry"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| {
                            let url = e["request"]["url"].as_str().unwrap_or("");
                            let mut parts = url.trim_start_matches('/').split('/');
                            let (t, id) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                            match (e["request"]["method"].as_str(), find(t, id)) {
                                (Some("GET"), Some(r)) => {
                                    json!({"resource": r, "response": {"status": "200 OK"}})
                                }
                                (Some("GET"), None) => json!({"response": {"status": "404 Not Found"}}),
                                _ => json!({"response": {"status": "201 Created"}}),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let kind = if bundle["type"] == "transaction" {
                "transaction-response"
            } else {
                "batch-response"
            };
            json_resp(
                200,
                json!({"resourceType": "Bundle", "type": kind, "entry": entries}),
            )
        }
        ("GET" | "HEAD", [t, id]) if !t.starts_with('$') && !id.starts_with('$') && *id != "_history" => {
            json_resp(
                200,
                find(t, id).unwrap_or_else(|| json!({"resourceType": t, "id": id})),
            )
        }
        ("GET", [t, id, "_history", _vid]) => json_resp(
            200,
            find(t, id).unwrap_or_else(|| json!({"resourceType": t, "id": id})),
        ),
        ("GET", [t, id, "_history"]) => {
            let entries: Vec<Value> = find(t, id)
                .into_iter()
                .map(|r| {
                    json!({"resource": r, "request": {"method": "PUT", "url": format!("{t}/{id}")},
                                 "response": {"status": "200 OK"}})
                })
                .collect();
            json_resp(
                200,
                json!({"resourceType": "Bundle", "type": "history", "total": entries.len(), "entry": entries}),
            )
        }
        ("GET", [t]) | ("POST", [t, "_search"]) | ("GET", ["Patient", _, t]) => {
            let form = if method == "POST" {
                String::from_utf8_lossy(&req.body).into_owned()
            } else {
                String::new()
            };
            let params = format!("{query}&{form}");
            let all = if *t == "$everything" {
                store.clone()
            } else {
                of_type(t)
            };
            json_resp(200, searchset(&all, &params, t))
        }
        ("GET", _) => json_resp(
            200,
            json!({"resourceType": "CapabilityStatement", "status": "active"}),
        ),
        ("POST", [t]) => json_resp(201, json!({"resourceType": t})),
        (_, [t, ..]) => json_resp(200, json!({"resourceType": t})),
        _ => json_resp(
            200,
            json!({"resourceType": "Bundle", "type": "searchset", "total": 0}),
        ),
    }
}

/// A searchset page (two matches a page) of `all`, with every Patient included when asked.
fn searchset(all: &[Value], params: &str, t: &str) -> Value {
    let page: usize = params
        .split('&')
        .find_map(|kv| kv.strip_prefix("page="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(1);
    let matches: Vec<&Value> = all.iter().skip((page.max(1) - 1) * 2).take(2).collect();
    let mut entry: Vec<Value> = matches
        .iter()
        .map(|r| {
            json!({"fullUrl": format!("{FHIR_BASE_URL}/{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")),
                   "resource": r, "search": {"mode": "match"}})
        })
        .collect();
    if params.contains("_include=") {
        for p in fhir_store()
            .into_iter()
            .filter(|r| r["resourceType"] == "Patient")
        {
            entry.push(json!({"resource": p, "search": {"mode": "include"}}));
        }
    }
    let mut link = vec![json!({"relation": "self", "url": format!("{FHIR_BASE_URL}/{t}?page={page}")})];
    if page * 2 < all.len() {
        link.push(json!({"relation": "next", "url": format!("{FHIR_BASE_URL}/{t}?page={}", page + 1)}));
    }
    if page > 1 {
        link.push(json!({"relation": "previous", "url": format!("http://fhir-internal:8080/fhir/{t}?page={}", page - 1)}));
    }
    json!({"resourceType": "Bundle", "type": "searchset", "total": all.len(), "link": link, "entry": entry})
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

/// Envoy's count of Wasm VMs created so far (`wasm.envoy.wasm.runtime.v8.created`): a VM that
/// crashed and was restarted adds one.
pub fn vms_created(envoy: &Envoy) -> u64 {
    envoy.stat("wasm.envoy.wasm.runtime.v8.created").unwrap_or(0)
}

/// No panic, critical line or failed Wasm call in Envoy's log, and no VM created since
/// `created_before` (see [`vms_created`]).
#[track_caller]
pub fn assert_vm_intact(envoy: &Envoy, created_before: u64, after: &str) {
    let log = envoy.log();
    for bad in [
        "panicked",
        "[critical]",
        "wasm vm failed",
        "Function: proxy_on",
        "Failed to load Wasm",
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
        assert!(
            lines.is_empty(),
            "after {after}: Envoy logged {bad:?}:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(
        vms_created(envoy),
        created_before,
        "after {after}: no VM was restarted"
    );
}
