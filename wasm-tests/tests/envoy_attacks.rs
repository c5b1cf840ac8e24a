//! Real Envoy: the attack corpus. Every row is a request an attacker would send; each must be
//! refused with the documented status and a FHIR OperationOutcome, reach nothing upstream, and
//! leave the filter healthy (no panic or critical log line, no VM restart, and the next valid
//! request still allowed).
//!
//! Covered elsewhere, with the same assertions, and not repeated here:
//! * expired tokens, a wrong `aud`, a tampered signature, two `Authorization` headers:
//!   `envoy_tokens::refusals_are_operation_outcomes_and_never_reach_the_upstream`;
//! * spoofed `x-smart-*` headers on an allowed request (removed, verified ones set):
//!   `envoy_tokens::a_valid_token_reaches_the_upstream_with_verified_facts_and_spoofed_ones_removed`;
//! * method override headers: `envoy_scopes::method_override_headers_are_refused`;
//! * bodies over `max_request_body_bytes` and bodies sent in `Content-Length` pieces:
//!   `envoy_bodies::bodies_larger_than_the_edge_reads_are_refused`,
//!   `envoy_bodies::fragmented_bodies_are_checked_whole_in_both_directions`;
//! * headers over Envoy's own limit (431 from the codec): `envoy_local_replies::oversized_headers_are_answered_by_the_local_reply_mapper`.

#![allow(clippy::type_complexity)] // test tables are tuples

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs8::EncodePublicKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use smart_fhir_edge::token::test_support::{self, Signer};
use smart_fhir_edge::token::Algorithm;
use wasm_tests::http1::{self, Server};
use wasm_tests::real_envoy::Envoy;
use wasm_tests::stack::*;

/// How a row's body is sent.
enum Body {
    None,
    /// With `Content-Length`, in one write.
    Whole(&'static str, Vec<u8>),
    /// With `Transfer-Encoding: chunked`, one chunk per piece, each written after a pause.
    Chunked(&'static str, Vec<Vec<u8>>),
}

/// One attack: what is sent and the refusal it must get.
struct Attack {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Body,
    status: u16,
    code: &'static str,
}

fn attack(name: &'static str, path: &str, token: &str, status: u16, code: &'static str) -> Attack {
    Attack {
        name,
        method: "GET",
        path: path.to_string(),
        headers: vec![("authorization", bearer(token))],
        body: Body::None,
        status,
        code,
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS from raw header and claims JSON text and a raw signature.
fn raw_jws(header: &str, claims: &str, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.as_bytes()),
        b64(claims.as_bytes()),
        b64(signature)
    )
}

/// RS256 over raw header and claims text, by `signer`.
fn rs256(signer: Signer, header: &Value, claims: &str) -> String {
    test_support::mint_raw(Algorithm::RS256, signer, &header.to_string(), claims)
}

/// HMAC-SHA256 (RFC 2104), for the HS256 key-confusion token.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha256::new().chain_update(&ipad).chain_update(message).finalize();
    Sha256::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// The token attacks: each is a token for patient 123 with `patient/*.rs` that must not pass.
fn token_attacks() -> Vec<Attack> {
    let good_claims = claims("patient/*.rs", Some("123"));
    let claims_text = good_claims.to_string();
    let good = token(&good_claims);
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let rs256_header = |extra: Value| {
        let mut head = json!({"alg": "RS256", "typ": "JWT", "kid": "rsa-a"});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            head[k] = v;
        }
        head
    };
    let with = |k: &str, v: Value| {
        let mut c = good_claims.clone();
        c[k] = v;
        token(&c)
    };
    let public_pem = test_support::keys()
        .rsa_a
        .to_public_key()
        .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    let hs_header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let hs_input = format!("{}.{}", b64(hs_header.as_bytes()), b64(claims_text.as_bytes()));
    let hs256 = format!(
        "{hs_input}.{}",
        b64(&hmac_sha256(public_pem.as_bytes(), hs_input.as_bytes()))
    );
    let attacker_jwk = test_support::jwk(Signer::RsaB, Some("rsa-a"), Some("RS256"));
    let dup_claims = claims_text.replacen('{', r#"{"patient":"456","#, 1);
    let dup_header = r#"{"alg":"none","typ":"JWT","alg":"RS256","kid":"rsa-a"}"#;
    let mut big = good_claims.clone();
    big["padding"] = json!("x".repeat(16 * 1024));
    let mut huge = good_claims.clone();
    huge["padding"] = json!("x".repeat(40 * 1024));
    let path = "/fhir/Patient/123";
    vec![
        attack(
            "alg none, empty signature",
            path,
            &raw_jws(r#"{"alg":"none","typ":"JWT"}"#, &claims_text, b""),
            401,
            "unknown",
        ),
        attack(
            "alg none, a signature",
            path,
            &format!("{}.{p}.{s}", b64(br#"{"alg":"none"}"#)),
            401,
            "unknown",
        ),
        attack(
            "alg NONE",
            path,
            &format!("{}.{p}.{s}", b64(br#"{"alg":"NONE"}"#)),
            401,
            "unknown",
        ),
        attack(
            "HS256 keyed with the RSA public key",
            path,
            &hs256,
            401,
            "unknown",
        ),
        attack(
            "embedded jwk of the attacker's key",
            path,
            &rs256(
                Signer::RsaB,
                &rs256_header(json!({"jwk": attacker_jwk})),
                &claims_text,
            ),
            401,
            "unknown",
        ),
        attack(
            "jku elsewhere (signed by the real key)",
            path,
            &rs256(
                Signer::RsaA,
                &rs256_header(json!({"jku": "http://127.0.0.1:9/jwks"})),
                &claims_text,
            ),
            401,
            "unknown",
        ),
        attack(
            "x5u elsewhere (signed by the real key)",
            path,
            &rs256(
                Signer::RsaA,
                &rs256_header(json!({"x5u": "http://127.0.0.1:9/cert.pem"})),
                &claims_text,
            ),
            401,
            "unknown",
        ),
        attack(
            "kid path traversal",
            path,
            &rs256(
                Signer::RsaB,
                &rs256_header(json!({"kid": "../../../../../../dev/null"})),
                &claims_text,
            ),
            401,
            "unknown",
        ),
        attack(
            "SQL-looking kid",
            path,
            &rs256(
                Signer::RsaB,
                &rs256_header(json!({"kid": "x' UNION SELECT 'secret' --"})),
                &claims_text,
            ),
            401,
            "unknown",
        ),
        attack(
            "duplicate alg in the header",
            path,
            &raw_jws(dup_header, &claims_text, &[1; 256]),
            401,
            "unknown",
        ),
        attack(
            "duplicate patient in the claims (signed by the real key)",
            path,
            &rs256(Signer::RsaA, &rs256_header(json!({})), &dup_claims),
            401,
            "unknown",
        ),
        attack(
            "crit (signed by the real key)",
            path,
            &rs256(
                Signer::RsaA,
                &rs256_header(json!({"crit": ["exp"], "exp": 1})),
                &claims_text,
            ),
            401,
            "unknown",
        ),
        attack(
            "b64: false (signed by the real key)",
            path,
            &rs256(
                Signer::RsaA,
                &rs256_header(json!({"b64": false, "crit": ["b64"]})),
                &claims_text,
            ),
            401,
            "unknown",
        ),
        attack("signature stripped", path, &format!("{h}.{p}."), 401, "unknown"),
        attack(
            "signature and its dot stripped",
            path,
            &format!("{h}.{p}"),
            401,
            "unknown",
        ),
        attack(
            "signature truncated",
            path,
            &format!("{h}.{p}.{}", &s[..s.len() - 2]),
            401,
            "unknown",
        ),
        attack(
            "signature padded with =",
            path,
            &format!("{good}=="),
            401,
            "unknown",
        ),
        attack(
            "payload padded with = (not b64token syntax)",
            path,
            &format!("{h}.{p}=.{s}"),
            400,
            "invalid",
        ),
        attack(
            "header truncated",
            path,
            &format!("{}.{p}.{s}", &h[..h.len() - 3]),
            401,
            "unknown",
        ),
        attack(
            "standard base64 (+ and /) instead of base64url",
            path,
            &good.replace('-', "+").replace('_', "/"),
            401,
            "unknown",
        ),
        attack(
            "another key's signature",
            path,
            &rs256(Signer::RsaB, &rs256_header(json!({})), &claims_text),
            401,
            "unknown",
        ),
        attack(
            "not yet valid",
            path,
            &with("nbf", json!(now() + 600)),
            401,
            "unknown",
        ),
        attack(
            "issued in the future",
            path,
            &with("iat", json!(now() + 600)),
            401,
            "unknown",
        ),
        attack(
            "wrong iss",
            path,
            &with("iss", json!("https://evil.example.org")),
            401,
            "unknown",
        ),
        attack(
            "iss of another type",
            path,
            &with("iss", json!([ISS])),
            401,
            "unknown",
        ),
        attack(
            "aud of another type",
            path,
            &with("aud", json!({"aud": AUD})),
            401,
            "unknown",
        ),
        attack(
            "exp as a string",
            path,
            &with("exp", json!((now() + 300).to_string())),
            401,
            "unknown",
        ),
        attack("token over 16 KiB", path, &token(&big), 401, "too-long"),
        attack("token of 54 KiB", path, &token(&huge), 401, "too-long"),
        attack(
            "JWE (five parts)",
            path,
            &format!("{h}.{p}.{s}.{s}.{s}"),
            401,
            "unknown",
        ),
    ]
}

/// Requests that are malformed or reach another patient, all with a valid token for patient 123.
fn request_attacks(auth: &str) -> Vec<Attack> {
    let mut many = vec![];
    for _ in 0..50 {
        many.push(("authorization", auth.to_string()));
    }
    let mut short_many = vec![("authorization", auth.to_string())];
    for i in 0..49 {
        short_many.push(("authorization", format!("Bearer x{i}")));
    }
    let req = |name, method, path: &str, status, code| Attack {
        name,
        method,
        path: path.to_string(),
        headers: vec![("authorization", auth.to_string())],
        body: Body::None,
        status,
        code,
    };
    let other_patient_bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation?patient=123"}},
        {"request": {"method": "GET", "url": "Observation?patient=456"}}
    ]})
    .to_string()
    .into_bytes();
    let chunks: Vec<Vec<u8>> = other_patient_bundle.chunks(17).map(<[u8]>::to_vec).collect();
    let write_456 = json!({"resourceType": "Observation", "status": "final",
        "code": {"text": "x"}, "subject": {"reference": "Patient/456"}})
    .to_string()
    .into_bytes();
    let write_chunks: Vec<Vec<u8>> = write_456.chunks(9).map(<[u8]>::to_vec).collect();
    let rows = vec![
        Attack {
            name: "50 Authorization headers (together over max_token_bytes)",
            method: "GET",
            path: "/fhir/Patient/123".into(),
            headers: many,
            body: Body::None,
            status: 401,
            code: "too-long",
        },
        Attack {
            name: "50 Authorization headers, a valid one among short ones",
            method: "GET",
            path: "/fhir/Patient/123".into(),
            headers: short_many,
            body: Body::None,
            status: 400,
            code: "invalid",
        },
        Attack {
            name: "Bearer token also in the query",
            method: "GET",
            path: format!("/fhir/Patient/123?access_token={}", auth.trim_start_matches("Bearer ")),
            headers: vec![("authorization", auth.to_string())],
            body: Body::None,
            status: 400,
            code: "invalid",
        },
        Attack {
            name: "spoofed x-smart-* headers without a token",
            method: "GET",
            path: "/fhir/Patient/456".into(),
            headers: vec![
                ("x-smart-patient", "456".into()),
                ("x-smart-scope", "system/*.*".into()),
                ("x-smart-client-id", "trusted-app".into()),
            ],
            body: Body::None,
            status: 401,
            code: "login",
        },
        Attack {
            name: "method override to DELETE",
            method: "GET",
            path: "/fhir/Patient/123".into(),
            headers: vec![
                ("authorization", auth.to_string()),
                ("x-http-method-override", "DELETE".into()),
            ],
            body: Body::None,
            status: 400,
            code: "not-supported",
        },
        // Path confusion.
        req("dot-dot segment", "GET", "/fhir/Patient/123/../456", 400, "invalid"),
        req("encoded dot-dot segment", "GET", "/fhir/Patient/123/%2e%2e/456", 400, "invalid"),
        req("encoded dot-dot segment, upper case", "GET", "/fhir/Patient/123/%2E%2E/456", 400, "invalid"),
        req("dot segment", "GET", "/fhir/Patient/./456", 400, "invalid"),
        req("encoded slash in the id", "GET", "/fhir/Patient/123%2F..%2F456", 400, "invalid"),
        req("encoded slash between type and id", "GET", "/fhir/Patient%2F456", 400, "invalid"),
        req("matrix parameter on the id", "GET", "/fhir/Patient/456;123", 400, "invalid"),
        req("matrix parameter on the type", "GET", "/fhir/Patient;x=1/456", 400, "invalid"),
        req("matrix dot-dot", "GET", "/fhir/Patient/123;/../456", 400, "invalid"),
        req("double slash inside", "GET", "/fhir//Patient/456", 400, "invalid"),
        req("double slash in front", "GET", "//fhir/Patient/456", 400, "invalid"),
        req("base in another case", "GET", "/FHIR/Patient/456", 404, "not-found"),
        req("type in lower case", "GET", "/fhir/patient/456", 404, "not-supported"),
        req("type in upper case", "GET", "/fhir/PATIENT/456", 404, "not-supported"),
        req("trailing slash on another patient", "GET", "/fhir/Patient/456/", 400, "invalid"),
        req("backslash", "GET", "/fhir/Patient/123\\..\\456", 400, "invalid"),
        req("encoded NUL", "GET", "/fhir/Patient/456%00", 400, "invalid"),
        req("fragment-looking id", "GET", "/fhir/Patient/456%23123", 400, "invalid"),
        // Query smuggling.
        req("patient repeated", "GET", "/fhir/Observation?patient=123&patient=456", 403, "forbidden"),
        req("patient as a list", "GET", "/fhir/Observation?patient=123,456", 403, "forbidden"),
        req("patient list, encoded comma", "GET", "/fhir/Observation?patient=123%2C456", 403, "forbidden"),
        req("patient:missing", "GET", "/fhir/Observation?patient:missing=true", 403, "forbidden"),
        req("subject to another patient", "GET", "/fhir/Observation?subject=Patient/456", 403, "forbidden"),
        req("_id list on Patient", "GET", "/fhir/Patient?_id=123,456", 403, "forbidden"),
        req("own compartment, another patient's resources by id", "GET", "/fhir/Patient/123/Observation?_id=o456&patient=456", 403, "forbidden"),
        req("encoded equals in the name", "GET", "/fhir/Observation?patient%3D456=x&patient=123", 400, "invalid"),
        req("_filter", "GET", "/fhir/Observation?patient=123&_filter=patient%20eq%20456", 403, "forbidden"),
        req("_query", "GET", "/fhir/Observation?patient=123&_query=everything", 403, "forbidden"),
        req("another patient's $everything", "GET", "/fhir/Patient/456/$everything", 403, "forbidden"),
        req("DELETE by search across patients", "DELETE", "/fhir/Observation?code=1234", 403, "forbidden"),
        req("method FHIR does not use", "TRACE", "/fhir/Patient/123", 405, "not-supported"),
        // Bodies.
        Attack {
            name: "batch Bundle reaching another patient, chunked in fragments",
            method: "POST",
            path: "/fhir".into(),
            headers: vec![("authorization", auth.to_string())],
            body: Body::Chunked("application/fhir+json", chunks),
            status: 403,
            code: "forbidden",
        },
        Attack {
            name: "write into another patient's compartment, chunked in fragments",
            method: "POST",
            path: "/fhir/Observation".into(),
            headers: vec![("authorization", auth.to_string())],
            body: Body::Chunked("application/fhir+json", write_chunks),
            status: 403,
            code: "forbidden",
        },
        Attack {
            name: "form search naming another patient",
            method: "POST",
            path: "/fhir/Observation/_search".into(),
            headers: vec![("authorization", auth.to_string())],
            body: Body::Whole(
                "application/x-www-form-urlencoded",
                b"patient=123&patient=456".to_vec(),
            ),
            status: 403,
            code: "forbidden",
        },
        Attack {
            name: "form search in another charset",
            method: "POST",
            path: "/fhir/Observation/_search".into(),
            headers: vec![("authorization", auth.to_string())],
            body: Body::Whole(
                "application/x-www-form-urlencoded; charset=utf-16",
                b"p\0a\0t\0i\0e\0n\0t\0=\x004\x005\x006\0".to_vec(),
            ),
            status: 403,
            code: "forbidden",
        },
        Attack {
            name: "Bundle with duplicate keys",
            method: "POST",
            path: "/fhir".into(),
            headers: vec![("authorization", auth.to_string())],
            body: Body::Whole(
                "application/fhir+json",
                br#"{"resourceType":"Bundle","type":"batch","entry":[],"entry":[{"request":{"method":"GET","url":"Patient/456"}}]}"#.to_vec(),
            ),
            status: 400,
            code: "invalid",
        },
        Attack {
            name: "body over the default 1 MiB, chunked",
            method: "POST",
            path: "/fhir/Observation/_search".into(),
            headers: vec![("authorization", auth.to_string())],
            body: Body::Chunked(
                "application/x-www-form-urlencoded",
                vec![b"patient=123&code=".to_vec(), vec![b'x'; 700 * 1024], vec![b'y'; 700 * 1024]],
            ),
            status: 413,
            code: "too-long",
        },
    ];
    rows
}

/// Searches that smuggle another patient in where the server's AND semantics keep them inside the
/// compartment: forwarded confined (the patient's own compartment parameter present or appended,
/// as `unconstrained_search: constrain` documents), and the response check removes whatever the
/// server returns of patient 456 anyway. (path, what the forwarded request must carry)
const CONFINED: [(&str, &str); 6] = [
    // `Patient/123` on any base names the patient in context (authz::patient module doc).
    (
        "/fhir/Observation?patient=https://evil.example/fhir/Patient/123",
        "patient=https://evil.example/fhir/Patient/123",
    ),
    ("/fhir/Observation?patient.name=smith", "&subject=Patient%2F123"),
    (
        "/fhir/Observation?subject:Patient._id=456",
        "&subject=Patient%2F123",
    ),
    (
        "/fhir/Observation?patient=123&encounter.patient=456",
        "?patient=123&",
    ),
    ("/fhir/Patient?_has:Observation:patient:code=1234", "&_id=123"),
    // One value, `123&patient=456`: not a reference, so the search is confined by appending.
    (
        "/fhir/Observation?patient=123%26patient%3D456",
        "&subject=Patient%2F123",
    ),
];

/// Why `r` is not the refusal `status` / `code` as an OperationOutcome (the checks of
/// [`assert_outcome`], collected instead of failing at the first row).
fn refusal_mismatch(r: &http1::Response, status: u16, code: &str) -> Option<String> {
    let body = r.body_str();
    let short: String = body.chars().take(300).collect();
    if r.status != status {
        return Some(format!("expected {status} {code}, got {}: {short}", r.status));
    }
    if r.header("content-type") != Some("application/fhir+json; charset=utf-8") {
        return Some(format!("content type {:?}", r.header("content-type")));
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let issue = &v["issue"][0];
    if v["resourceType"] != "OperationOutcome" || issue["code"] != code {
        return Some(format!("expected an OperationOutcome with {code}: {short}"));
    }
    if !matches!(issue["severity"].as_str(), Some("error" | "fatal")) {
        return Some(format!("severity: {short}"));
    }
    None
}

/// Sends one attack and returns the response.
fn send(envoy: &Envoy, port: u16, a: &Attack) -> http1::Response {
    let headers: Vec<(&str, &str)> = a.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    match &a.body {
        Body::None => envoy.send(a.method, &a.path, &headers, b""),
        Body::Whole(ct, bytes) => {
            let mut h = headers.clone();
            h.push(("content-type", ct));
            envoy.send(a.method, &a.path, &h, bytes)
        }
        Body::Chunked(ct, pieces) => {
            let mut head = format!(
                "{} {} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: {ct}\r\ntransfer-encoding: chunked\r\n",
                a.method, a.path
            );
            for (n, v) in &headers {
                head.push_str(&format!("{n}: {v}\r\n"));
            }
            head.push_str("\r\n");
            let mut out: Vec<Vec<u8>> = vec![head.into_bytes()];
            for p in pieces {
                let mut c = format!("{:x}\r\n", p.len()).into_bytes();
                c.extend_from_slice(p);
                c.extend_from_slice(b"\r\n");
                out.push(c);
            }
            out.push(b"0\r\n\r\n".to_vec());
            let refs: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
            http1::send_raw(port, &refs, Duration::from_millis(20))
        }
    }
}

/// The filter is alive and well: no panic or critical line in Envoy's log, no VM created since
/// `created_at_start`, and a valid request is still allowed (and reaches the upstream).
fn assert_healthy(envoy: &Envoy, up: &Server, auth: &str, created_at_start: u64, after: &str) {
    assert_vm_intact(envoy, created_at_start, after);
    let before = up.request_count();
    let r = envoy.get("/fhir/Patient/123", &[("authorization", auth)]);
    assert_eq!(
        r.status,
        200,
        "after {after}: a valid request is still allowed: {}",
        r.body_str()
    );
    assert_eq!(up.request_count(), before + 1);
}

/// The stack the attacks run against, warmed up (keys fetched, a read allowed): the IdP (kept for
/// the test's whole run), the FHIR upstream, Envoy with the filter (default configuration), a
/// token for patient 123's data as an `Authorization` value, and Envoy's count of the filter's VMs
/// created so far.
fn warm_stack() -> (Idp, Server, Envoy, String, u64) {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let envoy = envoy(&plugin_config(), &up, idp.port());
    let auth = bearer(&token(&claims("patient/*.rs", Some("123"))));
    assert_eq!(
        envoy.get("/fhir/Patient/123", &[("authorization", &auth)]).status,
        200
    );
    let created = vms_created(&envoy);
    assert!(created >= 1, "Envoy counts the filter's VMs");
    (idp, up, envoy, auth, created)
}

fn run(attacks: Vec<Attack>) {
    let (_idp, up, envoy, auth, created) = warm_stack();
    let mut failures = vec![];
    for a in &attacks {
        let before = up.request_count();
        let r = send(&envoy, envoy.port, a);
        if let Some(why) = refusal_mismatch(&r, a.status, a.code) {
            failures.push(format!("{}: {why}", a.name));
        }
        if up.request_count() != before {
            failures.push(format!(
                "{}: reached the upstream: {:?}",
                a.name,
                up.requests().last().map(|q| q.path.clone())
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} attacks not refused as expected:\n{}",
        failures.len(),
        attacks.len(),
        failures.join("\n")
    );
    assert_healthy(&envoy, &up, &auth, created, "the attacks");
}

#[test]
fn smuggled_searches_are_forwarded_confined_and_filtered() {
    let (_idp, up, envoy, auth, created) = warm_stack();
    for (path, confinement) in CONFINED {
        let r = envoy.get(path, &[("authorization", &auth)]);
        assert_eq!(r.status, 200, "{path}: {}", r.body_str());
        let forwarded = up.requests().last().map(|q| q.path.clone()).unwrap_or_default();
        assert!(
            forwarded.contains(confinement),
            "{path}: forwarded as {forwarded}"
        );
        let text = r.body_str();
        for leak in ["Patient/456", "\"456\"", "Other", "\"o2\"", "\"o4\""] {
            assert!(!text.contains(leak), "{path}: {leak} reached the client: {text}");
        }
    }
    assert_healthy(&envoy, &up, &auth, created, "the smuggled searches");
}

#[test]
fn token_attacks_are_refused_and_reach_nothing() {
    run(token_attacks());
}

#[test]
fn request_attacks_are_refused_and_reach_nothing() {
    let auth = bearer(&token(&claims("patient/*.cruds", Some("123"))));
    run(request_attacks(&auth));
}

/// A raw GET with extra header lines (bytes as they are: not necessarily UTF-8).
fn get_raw_headers(port: u16, path: &str, lines: &[&[u8]]) -> http1::Response {
    let mut head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n").into_bytes();
    for line in lines {
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    http1::send_raw(port, &[&head], Duration::from_millis(0))
}

#[test]
fn header_values_that_are_not_utf8_neither_stop_the_filter_nor_get_through_unchecked() {
    // Envoy passes obs-text bytes (0x80-0xff) in header values; the proxy-wasm SDK's own header
    // reader panics on them, which stopped the VM (every later request 503) before the adapter read
    // header maps itself.
    let (_idp, up, envoy, auth, created) = warm_stack();
    let auth_line = format!("authorization: {auth}");

    // A Latin-1 value in an unrelated header: decided as usual, allowed, forwarded.
    let before = up.request_count();
    let r = get_raw_headers(
        envoy.port,
        "/fhir/Patient/123",
        &[auth_line.as_bytes(), b"x-name: caf\xe9"],
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(up.request_count(), before + 1);

    // A spoofed x-smart-* header with such bytes is removed like any other.
    let r = get_raw_headers(
        envoy.port,
        "/fhir/Patient/123",
        &[auth_line.as_bytes(), b"x-smart-patient: 4\xff56"],
    );
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = up.requests().last().cloned().expect("forwarded");
    assert_eq!(seen.header("x-smart-patient"), Some("123"), "{seen:?}");

    // Such bytes in the token itself: refused as an invalid request or token, nothing forwarded.
    let before = up.request_count();
    let r = get_raw_headers(
        envoy.port,
        "/fhir/Patient/123",
        &[b"authorization: Bearer abc\xff.def.ghi"],
    );
    assert!(matches!(r.status, 400 | 401), "{} {}", r.status, r.body_str());
    assert!(r.body_str().contains("OperationOutcome"), "{}", r.body_str());
    assert_eq!(up.request_count(), before, "nothing reached the upstream");

    assert_healthy(&envoy, &up, &auth, created, "non-UTF-8 header values");
}
