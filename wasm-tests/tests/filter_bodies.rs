//! The host emulator driving the built filter (`make build` first): body-aware enforcement end to
//! end — request bodies (form searches, writes, Bundles) buffered and checked before anything is
//! forwarded, however they are fragmented; upstream 2xx responses held, checked, filtered or
//! replaced before anything reaches the client; size limits; audit-only mode; and the audit
//! record and metrics of each outcome.

#![allow(clippy::type_complexity)] // test tables are tuples

use std::time::Duration;

use serde_json::{json, Value};
use smart_fhir_edge::token::test_support::{self, Signer, AUD, ISS};
use smart_fhir_edge::token::Algorithm;
use wasm_tests::{Host, Outcome, Response, Stream, Vm};

const FORM: &str = "application/x-www-form-urlencoded";
const FHIR_JSON: &str = "application/fhir+json";

/// A host configured as the filter needs Envoy for body checks (`allow_on_headers_stop_iteration`).
fn host() -> Host {
    Host::builder()
        .allow_on_headers_stop_iteration(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The plugin configuration with the test keys inline, edited by `edit`.
fn config(edit: impl FnOnce(&mut Value)) -> String {
    let jwks: Value = serde_json::from_slice(&test_support::default_jwks()).unwrap();
    let mut c = json!({
        "fhir_base": "/fhir",
        "fhir_base_urls": ["https://ehr.example/fhir"],
        "providers": [{"issuer": ISS, "audiences": [AUD], "local_jwks": jwks}],
    });
    edit(&mut c);
    c.to_string()
}

fn vm(host: &Host, edit: impl FnOnce(&mut Value)) -> Vm {
    host.vm_with_config(config(edit))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A bearer token for `scope`, with patient `123` in context unless `patient` says otherwise.
fn bearer(scope: &str, patient: Option<&str>) -> String {
    let mut c = test_support::good_claims();
    c["scope"] = json!(scope);
    match patient {
        Some(p) => c["patient"] = json!(p),
        None => {
            if let Some(o) = c.as_object_mut() {
                o.remove("patient");
            }
        }
    }
    format!(
        "Bearer {}",
        test_support::mint(Algorithm::ES256, Signer::P256, &c)
    )
}

fn request(vm: &Vm, method: &str, path: &str, auth: &str, content_type: &str) -> Stream {
    vm.request(&[
        (":method", method),
        (":path", path),
        (":authority", "fhir.example"),
        (":scheme", "https"),
        ("authorization", auth),
        ("content-type", content_type),
        ("accept-encoding", "gzip"),
    ])
}

/// Sends a request with `body` in one chunk; returns the stream and its outcome.
fn send(vm: &Vm, method: &str, path: &str, auth: &str, content_type: &str, body: &[u8]) -> (Stream, Outcome) {
    let s = request(vm, method, path, auth, content_type);
    let first = s.send_headers(body.is_empty());
    if body.is_empty() || !first.is_paused() {
        // No body, or decided from the headers alone (a refusal no body could lift).
        return (s, first);
    }
    let out = s.send_body(body, true);
    (s, out)
}

fn obs(id: &str, subject: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"},
           "valueQuantity": {"value": 1.50}, "subject": {"reference": subject}})
}

fn body_json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body_text()))
}

/// The response is an OperationOutcome of `status` whose first issue has `code`.
#[track_caller]
fn assert_outcome(r: &Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "{r:#?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/fhir+json; charset=utf-8")
    );
    let v = body_json(r);
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    assert_eq!(v["issue"][0]["code"], code, "{v}");
    assert_eq!(
        r.header("content-length").and_then(|l| l.parse().ok()),
        Some(r.body.len()),
        "content-length matches the body"
    );
    v
}

/// The audit record the filter logged for the last stream.
fn last_audit(host: &Host) -> Value {
    let line = host
        .logs_containing("smart-fhir-edge audit ")
        .pop()
        .expect("an audit line");
    let json = line.message.split_once("smart-fhir-edge audit ").unwrap().1;
    serde_json::from_str(json).unwrap()
}

#[test]
fn form_searches_are_checked_as_the_get_search_before_anything_is_forwarded() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/Observation.rs", Some("123"));
    // (case, path, content type, body, Ok(forwarded path) or Err(status))
    let cases: Vec<(&str, &str, &str, &str, Result<&str, u16>)> = vec![
        (
            "the body names the patient",
            "/fhir/Observation/_search",
            FORM,
            "subject=Patient%2F123&code=x",
            Ok("/fhir/Observation/_search"),
        ),
        (
            "the URL and the body together name the patient",
            "/fhir/Observation/_search?subject=Patient/123",
            FORM,
            "code=x",
            Ok("/fhir/Observation/_search?subject=Patient/123"),
        ),
        (
            "an unconfined form search is confined in the URL",
            "/fhir/Observation/_search",
            FORM,
            "code=x",
            Ok("/fhir/Observation/_search?subject=Patient%2F123"),
        ),
        (
            "the body names another patient",
            "/fhir/Observation/_search",
            FORM,
            "subject=Patient%2F456",
            Err(403),
        ),
        (
            "the body widens the patient",
            "/fhir/Observation/_search",
            FORM,
            "patient=123,456",
            Err(403),
        ),
        (
            "the URL names the patient, the body another",
            "/fhir/Observation/_search?patient=123",
            FORM,
            "patient=456",
            Err(403),
        ),
        (
            "not a form",
            "/fhir/Observation/_search",
            FHIR_JSON,
            "{}",
            Err(403),
        ),
        (
            "a type the token does not search",
            "/fhir/Condition/_search",
            FORM,
            "patient=123",
            Err(403),
        ),
    ];
    for (case, path, ct, body, expected) in cases {
        let (s, out) = send(&vm, "POST", path, &auth, ct, body.as_bytes());
        match expected {
            Ok(forwarded) => {
                let h = out.expect_continued();
                assert_eq!(h.get(":path"), Some(forwarded), "{case}");
                assert_eq!(h.get("x-smart-patient"), Some("123"), "{case}");
                assert_eq!(
                    h.get("accept-encoding"),
                    None,
                    "{case}: responses are read uncompressed"
                );
                let up = s.upstream_request();
                assert_eq!(up.body, body.as_bytes(), "{case}: the body goes on untouched");
                assert!(up.complete, "{case}");
            }
            Err(status) => {
                let r = out.expect_local_reply();
                assert_outcome(r, status, "forbidden");
                assert!(
                    s.upstream_request().headers.is_none(),
                    "{case}: nothing forwarded"
                );
                let audit = last_audit(&host);
                assert_eq!(audit["decision"], "deny", "{case}");
                assert_eq!(audit["status"], status, "{case}");
            }
        }
    }
    // Allowed requests are counted once their body decided, refused ones as refused (counters
    // reach the host on the filter's next tick).
    host.advance(wasm_tests::FILTER_TICK);
    assert_eq!(
        host.metric("smart_fhir_edge.requests_total.decision.allow.reason.allowed"),
        Some(3)
    );
    let refused: u64 = host
        .metrics()
        .iter()
        .filter(|m| {
            m.name
                .starts_with("smart_fhir_edge.requests_total.decision.deny.")
        })
        .map(|m| m.value)
        .sum();
    assert_eq!(refused, 5);
}

#[test]
fn fragmented_request_bodies_are_checked_whole() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/Observation.rs", Some("123"));
    for (body, allowed) in [
        ("code=x&subject=Patient%2F123&_count=10", true),
        ("code=x&subject=Patient%2F1234&_count=10", false),
    ] {
        let s = request(&vm, "POST", "/fhir/Observation/_search", &auth, FORM);
        s.send_headers(false).expect_paused();
        let bytes = body.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let out = s.send_body(&[*b], last);
            if !last {
                assert!(out.is_paused(), "chunk {i} held: {out:?}");
                assert!(s.upstream_request().headers.is_none(), "nothing forwarded yet");
            } else if allowed {
                out.expect_continued();
                assert_eq!(s.upstream_request().body, bytes);
            } else {
                assert_outcome(out.expect_local_reply(), 403, "forbidden");
                assert!(s.upstream_request().headers.is_none());
            }
        }
    }
}

#[test]
fn request_bodies_with_trailers_are_checked_at_the_trailers() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/Observation.rs", Some("123"));
    for (body, allowed) in [("subject=Patient%2F123", true), ("subject=Patient%2F456", false)] {
        let s = request(&vm, "POST", "/fhir/Observation/_search", &auth, FORM);
        s.send_headers(false).expect_paused();
        s.send_body(body.as_bytes(), false).expect_paused();
        let out = s.send_trailers(&[("x-checksum", "1")]);
        if allowed {
            out.expect_continued();
            assert_eq!(s.upstream_request().body, body.as_bytes());
        } else {
            assert_outcome(out.expect_local_reply(), 403, "forbidden");
        }
    }
}

#[test]
fn an_oversized_request_body_is_refused_with_413_at_once() {
    let host = host();
    let vm = vm(&host, |c| c["max_request_body_bytes"] = json!(1024));
    let auth = bearer("patient/Observation.rs", Some("123"));
    let s = request(&vm, "POST", "/fhir/Observation/_search", &auth, FORM);
    s.send_headers(false).expect_paused();
    let chunk = vec![b'a'; 400];
    s.send_body(&chunk, false).expect_paused();
    s.send_body(&chunk, false).expect_paused();
    // The third chunk crosses the limit: refused before the request ends.
    let out = s.send_body(&chunk, false);
    assert_outcome(out.expect_local_reply(), 413, "too-long");
    assert!(s.upstream_request().headers.is_none());
    assert_eq!(last_audit(&host)["reason"], "bad_request.body_too_large");
}

#[test]
fn writes_must_stay_with_the_patient() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/Observation.cu", Some("123"));
    let mut own = obs("x", "Patient/123");
    if let Some(o) = own.as_object_mut() {
        o.remove("id");
    }
    let mut other = own.clone();
    other["subject"] = json!({"reference": "Patient/456"});
    let (s, out) = send(
        &vm,
        "POST",
        "/fhir/Observation",
        &auth,
        FHIR_JSON,
        own.to_string().as_bytes(),
    );
    out.expect_continued();
    assert_eq!(s.upstream_request().body, own.to_string().as_bytes());
    let (s, out) = send(
        &vm,
        "POST",
        "/fhir/Observation",
        &auth,
        FHIR_JSON,
        other.to_string().as_bytes(),
    );
    let v = assert_outcome(out.expect_local_reply(), 403, "forbidden");
    assert!(
        v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .contains("patient"),
        "{v}"
    );
    assert!(s.upstream_request().headers.is_none());
    // A create without a body cannot be checked.
    let (_, out) = send(&vm, "POST", "/fhir/Observation", &auth, FHIR_JSON, b"");
    assert!(out.expect_local_reply().status >= 400);
}

#[test]
fn a_bundle_with_one_refused_entry_is_refused_naming_the_entry() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/*.cruds", Some("123"));
    let entry = |method: &str, url: &str, resource: Option<Value>| {
        let mut e = json!({"request": {"method": method, "url": url}});
        if let Some(r) = resource {
            e["resource"] = r;
        }
        e
    };
    let mut new_obs = obs("n", "Patient/123");
    if let Some(o) = new_obs.as_object_mut() {
        o.remove("id");
    }
    let ok = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("GET", "Patient/123", None),
        entry("POST", "Observation", Some(new_obs.clone())),
    ]});
    let (s, out) = send(&vm, "POST", "/fhir", &auth, FHIR_JSON, ok.to_string().as_bytes());
    out.expect_continued();
    assert_eq!(s.upstream_request().body, ok.to_string().as_bytes());

    let mut bad = ok.clone();
    bad["entry"]
        .as_array_mut()
        .unwrap()
        .push(entry("GET", "Observation/o9?_elements=id", None));
    bad["entry"]
        .as_array_mut()
        .unwrap()
        .push(entry("GET", "Patient/456", None));
    let (s, out) = send(&vm, "POST", "/fhir", &auth, FHIR_JSON, bad.to_string().as_bytes());
    let r = out.expect_local_reply();
    let v = assert_outcome(r, 403, "forbidden");
    let issues = v["issue"].as_array().unwrap();
    assert_eq!(issues.len(), 1, "one issue per refused entry: {v}");
    assert_eq!(issues[0]["expression"][0], "Bundle.entry[3]", "{v}");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.contains("insufficient_scope")));
    assert!(s.upstream_request().headers.is_none());
    assert_eq!(last_audit(&host)["reason"], "bundle_entries_refused");
}

#[test]
fn a_batch_response_entry_of_another_patient_is_replaced() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/*.rs", Some("123"));
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/a"}},
        {"request": {"method": "GET", "url": "Observation/b"}},
    ]});
    let (s, out) = send(
        &vm,
        "POST",
        "/fhir",
        &auth,
        FHIR_JSON,
        batch.to_string().as_bytes(),
    );
    out.expect_continued();
    let response = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
        {"resource": obs("a", "Patient/123"), "response": {"status": "200 OK"}},
        {"resource": obs("b", "Patient/456"), "response": {"status": "200 OK"}},
    ]});
    let r = s
        .respond(
            200,
            &[("content-type", FHIR_JSON)],
            response.to_string().as_bytes(),
        )
        .expect_responded()
        .clone();
    let v = body_json(&r);
    assert_eq!(v["entry"][0]["resource"]["id"], "a");
    assert!(
        v["entry"][1]["response"]["status"]
            .as_str()
            .unwrap()
            .starts_with("403"),
        "{v}"
    );
    assert!(!r.body_text().contains("Patient/456"), "{v}");
}

#[test]
fn a_read_of_another_patients_resource_never_reaches_the_client() {
    for (response_denial, status, code) in [("forbidden", 403, "forbidden"), ("not-found", 404, "not-found")]
    {
        let host = host();
        let vm = vm(&host, |c| c["response_denial"] = json!(response_denial));
        let auth = bearer("patient/Observation.rs", Some("123"));
        // The patient's own resource passes untouched.
        let (s, out) = send(&vm, "GET", "/fhir/Observation/a", &auth, FHIR_JSON, b"");
        assert_eq!(out.expect_continued().get("accept-encoding"), None);
        let own = obs("a", "Patient/123").to_string();
        let r = s
            .respond(
                200,
                &[("content-type", FHIR_JSON), ("etag", "W/\"1\"")],
                own.as_bytes(),
            )
            .expect_responded()
            .clone();
        assert_eq!(r.body_text(), own);
        assert_eq!(r.header("etag"), Some("W/\"1\""));
        // Another patient's: replaced.
        let (s, out) = send(&vm, "GET", "/fhir/Observation/b", &auth, FHIR_JSON, b"");
        out.expect_continued();
        let other = obs("b", "Patient/456").to_string();
        s.respond_headers(200, &[("content-type", FHIR_JSON)], false)
            .expect_paused();
        let half = other.len() / 2;
        s.respond_body(&other.as_bytes()[..half], false).expect_paused();
        let out = s.respond_body(&other.as_bytes()[half..], true);
        let r = out.expect_local_reply();
        assert_outcome(r, status, code);
        assert!(!r.body_text().contains("456"), "{r:?}");
        let audit = last_audit(&host);
        assert_eq!(audit["decision"], "deny", "{response_denial}");
        assert_eq!(audit["status"], status);
        assert_eq!(audit["upstream_status"], 200);
        host.advance(wasm_tests::FILTER_TICK);
        assert_eq!(
            host.metric("smart_fhir_edge.response_checks_total.outcome.refused"),
            Some(1)
        );
        assert_eq!(
            host.metric("smart_fhir_edge.response_checks_total.outcome.passed"),
            Some(1)
        );
    }
}

#[test]
fn searchsets_lose_other_patients_entries_with_total_fixed_and_an_outcome_entry() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/*.rs", Some("123"));
    let (s, out) = send(
        &vm,
        "GET",
        "/fhir/Observation?patient=123&_include=Observation:performer",
        &auth,
        FHIR_JSON,
        b"",
    );
    out.expect_continued();
    let bundle = json!({
        "resourceType": "Bundle", "type": "searchset", "total": 3,
        "link": [{"relation": "next", "url": "https://ehr.example/fhir/Observation?patient=123&page=2"},
                 {"relation": "prev", "url": "http://internal:8080/fhir/Observation?page=0"}],
        "entry": [
            {"resource": obs("a", "Patient/123"), "search": {"mode": "match"}},
            {"resource": obs("b", "Patient/456"), "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "456", "name": [{"family": "Other"}]},
             "search": {"mode": "include"}},
            {"resource": obs("c", "Patient/123"), "search": {"mode": "match"}},
        ]
    })
    .to_string();
    // Many small chunks: the check sees the whole body.
    let chunks: Vec<&[u8]> = bundle.as_bytes().chunks(7).collect();
    let out = s.respond_chunks(
        200,
        &[
            ("content-type", FHIR_JSON),
            ("content-length", &bundle.len().to_string()),
        ],
        &chunks,
    );
    let r = out.expect_responded();
    let v = body_json(r);
    assert_eq!(v["total"], 2, "{v}");
    let entries = v["entry"].as_array().unwrap();
    let ids: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(ids, ["a", "c"], "{v}");
    assert_eq!(entries.last().unwrap()["search"]["mode"], "outcome");
    assert!(!r.body_text().contains("Other"), "the included Patient is gone");
    assert!(
        !r.body_text().contains("internal:8080"),
        "the link leaving the base is gone"
    );
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    host.advance(wasm_tests::FILTER_TICK);
    assert_eq!(
        host.metric("smart_fhir_edge.response_checks_total.outcome.filtered"),
        Some(1)
    );
    assert_eq!(last_audit(&host)["decision"], "allow");
}

#[test]
fn responses_the_edge_cannot_read_are_withheld() {
    let host = host();
    let vm = vm(&host, |c| c["max_response_body_bytes"] = json!(2048));
    let auth = bearer("patient/Observation.rs", Some("123"));
    // Larger than the edge reads: refused as soon as the buffered body crosses the limit.
    let (s, out) = send(&vm, "GET", "/fhir/Observation?patient=123", &auth, FHIR_JSON, b"");
    out.expect_continued();
    s.respond_headers(200, &[("content-type", FHIR_JSON)], false)
        .expect_paused();
    s.respond_body(&[b' '; 1500], false).expect_paused();
    let out = s.respond_body(&[b' '; 1500], false);
    let v = assert_outcome(out.expect_local_reply(), 502, "processing");
    assert!(
        v["issue"][0]["diagnostics"].as_str().unwrap().contains("larger"),
        "{v}"
    );
    // Not JSON, or compressed despite the request: withheld.
    for (headers, body) in [
        (vec![("content-type", "application/fhir+xml")], &b"<Bundle/>"[..]),
        (
            vec![("content-type", FHIR_JSON), ("content-encoding", "gzip")],
            &b"\x1f\x8b\x08\x00"[..],
        ),
    ] {
        let (s, out) = send(&vm, "GET", "/fhir/Observation?patient=123", &auth, FHIR_JSON, b"");
        out.expect_continued();
        let out = s.respond(200, &headers, body);
        assert_outcome(out.expect_local_reply(), 502, "processing");
    }
}

#[test]
fn errors_and_empty_answers_pass_unheld_and_head_is_refused() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/Observation.rs", Some("123"));
    let not_found =
        json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]})
            .to_string();
    let (s, _) = send(&vm, "GET", "/fhir/Observation/zz", &auth, FHIR_JSON, b"");
    // Response headers of an error are not held: they pass at once.
    let out = s.respond_headers(404, &[("content-type", FHIR_JSON)], false);
    assert!(!out.is_paused(), "{out:?}");
    let out = s.respond_body(not_found.as_bytes(), true);
    assert_eq!(out.expect_responded().body_text(), not_found);
    let (s, _) = send(&vm, "GET", "/fhir/Observation?patient=123", &auth, FHIR_JSON, b"");
    assert_eq!(s.respond(204, &[], b"").expect_responded().status, 204);
    // HEAD has no body to check, and its status would tell whether the resource exists: refused.
    let (s, out) = send(&vm, "HEAD", "/fhir/Observation/a", &auth, FHIR_JSON, b"");
    assert_eq!(out.expect_local_reply().status, 403);
    assert!(s.upstream_request().headers.is_none());
}

#[test]
fn audit_only_mode_logs_body_and_response_refusals_and_changes_nothing() {
    let host = host();
    let vm = vm(&host, |c| c["mode"] = json!("audit-only"));
    let auth = bearer("patient/Observation.rs", Some("123"));
    let (s, out) = send(
        &vm,
        "POST",
        "/fhir/Observation/_search",
        &auth,
        FORM,
        b"subject=Patient%2F456",
    );
    out.expect_continued();
    assert_eq!(s.upstream_request().body, b"subject=Patient%2F456");
    assert_eq!(last_audit_after(&s, &host)["decision"], "audit-only-deny");
    let (s, out) = send(&vm, "GET", "/fhir/Observation/b", &auth, FHIR_JSON, b"");
    out.expect_continued();
    let other = obs("b", "Patient/456").to_string();
    let r = s.respond(200, &[("content-type", FHIR_JSON)], other.as_bytes());
    assert_eq!(r.expect_responded().body_text(), other);
    let audit = last_audit(&host);
    assert_eq!(audit["decision"], "audit-only-deny");
    assert_eq!(audit["reason"], "outside_patient_compartment");
    assert_eq!(audit["upstream_status"], 200);
    assert!(!host
        .logs_containing("audit-only: would refuse the response")
        .is_empty());
}

/// The audit record once `s`'s response was written (an upstream 200 with no body).
fn last_audit_after(s: &Stream, host: &Host) -> Value {
    s.respond(200, &[], b"");
    last_audit(host)
}

#[test]
fn a_body_sent_while_keys_are_fetched_is_held_and_checked_once_they_arrive() {
    for (body, allowed) in [("subject=Patient%2F123", true), ("subject=Patient%2F456", false)] {
        let host = host();
        let vm = host
            .vm_with_config(
                json!({
                    "fhir_base": "/fhir",
                    "providers": [{"issuer": ISS, "audiences": [AUD],
                                   "remote_jwks": {"uri": "https://idp.example.org/jwks", "cluster": "idp"}}]
                })
                .to_string(),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let auth = bearer("patient/Observation.rs", Some("123"));
        let s = request(&vm, "POST", "/fhir/Observation/_search", &auth, FORM);
        s.send_headers(false).expect_paused();
        // The whole body arrives before the keys: held, not released with the headers.
        s.send_body(&body.as_bytes()[..5], false).expect_paused();
        s.send_body(&body.as_bytes()[5..], true).expect_paused();
        assert!(
            s.upstream_request().headers.is_none(),
            "nothing forwarded before the decision"
        );
        host.advance(Duration::from_secs(1));
        let fetch = host.callout();
        fetch.respond(
            200,
            &[("content-type", "application/json")],
            &test_support::default_jwks(),
        );
        if allowed {
            s.outcome().expect_continued();
            let up = s.upstream_request();
            assert_eq!(up.body, body.as_bytes());
            assert!(up.complete);
        } else {
            assert_outcome(s.outcome().expect_local_reply(), 403, "forbidden");
            assert!(s.upstream_request().headers.is_none());
        }
    }
}

#[test]
fn without_envoy_holding_headers_a_body_check_never_sees_the_body() {
    // Envoy's default turns the filter's header pause into StopAllIterationAndWatermark: the body
    // is buffered without calling the filter, so the request stays held (and is never forwarded)
    // until Envoy times it out. `allow_on_headers_stop_iteration: true` is required.
    let host = Host::new();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/Observation.rs", Some("123"));
    let s = request(&vm, "POST", "/fhir/Observation/_search", &auth, FORM);
    s.send_headers(false).expect_paused();
    s.send_body(b"subject=Patient%2F123", true).expect_paused();
    assert!(s.upstream_request().headers.is_none());
}

#[test]
fn a_response_ending_with_trailers_is_checked_at_the_trailers() {
    let host = host();
    let vm = vm(&host, |_| {});
    let auth = bearer("patient/Observation.rs", Some("123"));
    let bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [
        {"resource": obs("a", "Patient/123"), "search": {"mode": "match"}},
        {"resource": obs("b", "Patient/456"), "search": {"mode": "match"}},
    ]})
    .to_string();
    let (s, out) = send(&vm, "GET", "/fhir/Observation?patient=123", &auth, FHIR_JSON, b"");
    out.expect_continued();
    s.respond_headers(200, &[("content-type", FHIR_JSON)], false)
        .expect_paused();
    s.respond_body(bundle.as_bytes(), false).expect_paused();
    let out = s.respond_trailers(&[("x-trailer", "1")]);
    // The body buffer cannot be rewritten at the trailers: the filtered body is sent anew.
    let r = out.expect_local_reply();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some(FHIR_JSON));
    let v = body_json(r);
    assert_eq!(v["entry"][0]["resource"]["id"], "a");
    assert!(!r.body_text().contains("Patient/456"), "{v}");
}
