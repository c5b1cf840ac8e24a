//! Real Envoy: every decision is audited (log line, access-log filter state, FHIR AuditEvents),
//! counted in metrics scraped from `/stats/prometheus`, and the kill switch refuses revoked clients,
//! also after a refresh of the list.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use smart_fhir_edge::audit::LOG_PREFIX;
use smart_fhir_edge::token::token_fingerprint;
use wasm_tests::http1::{free_port, Response, Server};
use wasm_tests::real_envoy::{config_file, with_plugin_config, Envoy};
use wasm_tests::stack::*;

/// Placeholder ports of `envoy/test-audit.yaml` for the AuditEvent server and the list server.
const AUDIT_PLACEHOLDER: u16 = 18083;
const LISTS_PLACEHOLDER: u16 = 18084;

/// Envoy from `envoy/test-audit.yaml` (stats tags, an access log of the audit filter state).
fn audit_envoy(config: &Value, up: &Server, idp: u16, audit_port: u16, lists_port: u16) -> Envoy {
    let yaml = with_plugin_config(&config_file("test-audit.yaml"), config)
        .replace(
            &format!("port_value: {AUDIT_PLACEHOLDER}"),
            &format!("port_value: {audit_port}"),
        )
        .replace(
            &format!("port_value: {LISTS_PLACEHOLDER}"),
            &format!("port_value: {lists_port}"),
        );
    Envoy::start(&yaml, up.port(), idp)
}

/// The audit records in Envoy's log, by `request_id`.
fn audit_records(envoy: &Envoy) -> HashMap<String, Value> {
    envoy
        .filter_log()
        .iter()
        .filter_map(|l| l.split_once(LOG_PREFIX).map(|(_, json)| json.to_string()))
        .map(|json| {
            let v: Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
            (v["request_id"].as_str().unwrap_or("").to_string(), v)
        })
        .collect()
}

/// The access-log lines (`smart-fhir-edge-access <status> <record>`), by `request_id`.
fn access_records(envoy: &Envoy) -> HashMap<String, (u16, Value)> {
    envoy
        .log()
        .lines()
        .filter_map(|l| l.strip_prefix("smart-fhir-edge-access "))
        .map(|rest| {
            let (code, json) = rest.split_once(' ').unwrap();
            let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            let id = v["request_id"].as_str().unwrap_or("").to_string();
            (id, (code.parse().unwrap(), v))
        })
        .collect()
}

/// Parses `name{k="v",...} value` lines of the Prometheus text.
fn prometheus_samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while let Some((key, after)) = rest.split_once("=\"") {
            let end = after.find('"').unwrap();
            map.insert(key.trim_start_matches(',').to_string(), after[..end].to_string());
            rest = &after[end + 1..];
        }
        out.push((name.to_string(), map, value.parse().unwrap_or(f64::NAN)));
    }
    out
}

/// A sample's value, `None` when the series is absent. Scraped two filter ticks after the call:
/// the request counters reach Envoy on the filter's tick, not with each request.
fn metric(envoy: &Envoy, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    std::thread::sleep(wasm_tests::FILTER_TICK * 2);
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    prometheus_samples(&envoy.prometheus())
        .into_iter()
        .find(|(n, l, _)| n == name && *l == want)
        .map(|(_, _, v)| v)
}

fn get(envoy: &Envoy, path: &str, request_id: &str, token: Option<&str>) -> Response {
    let auth = token.map(bearer);
    let mut h = vec![("x-request-id", request_id)];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    envoy.get(path, &h)
}

fn with_client(mut c: Value, client: &str) -> Value {
    c["client_id"] = json!(client);
    c
}

#[test]
fn every_decision_is_audited_counted_and_carried_to_the_access_log() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let mut cfg = plugin_config();
    cfg["revocation"] = json!({"client_ids": ["revoked-app"]});
    let envoy = audit_envoy(&cfg, &up, idp.port(), free_port(), free_port());
    let a_claims = claims("patient/*.rs", Some("123"));
    let a = token(&a_claims);
    let b = token(&claims("user/Observation.rs", None));
    let c = token(&with_client(claims("patient/*.rs", Some("123")), "revoked-app"));
    let search_value = "secret-code-4711";
    let cases: Vec<(&str, &str, Option<&str>, u16)> = vec![
        ("allow-1", "/fhir/Patient/123", Some(&a), 200),
        (
            "allow-2",
            "/fhir/Observation?patient=123&code=secret-code-4711",
            Some(&a),
            200,
        ),
        ("missing", "/fhir/Patient/123", None, 401),
        ("scope", "/fhir/Patient/123", Some(&b), 403),
        ("revoked", "/fhir/Patient/123", Some(&c), 401),
        ("public", "/fhir/metadata", None, 200),
    ];
    for (id, path, t, status) in &cases {
        let r = get(&envoy, path, id, *t);
        assert_eq!(r.status, *status, "{id}: {}", r.body_str());
    }

    // The audit log lines, field by field.
    assert!(
        envoy.wait_until(Duration::from_secs(5), || audit_records(&envoy).len()
            == cases.len())
    );
    let records = audit_records(&envoy);
    let now_year = smart_fhir_edge::audit::rfc3339_utc(now() * 1000)[..4].to_string();
    for (id, rec) in &records {
        let time = rec["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.starts_with(&now_year),
            "{time}"
        );
        assert!(
            rec["source_address"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{id}: {rec}"
        );
        assert_eq!(rec["method"], "GET");
    }
    let r = &records["allow-1"];
    let want_identity = json!({
        "client_id": "app-1", "subject": "user-1", "fhir_user": "Practitioner/77", "patient": "123",
        "scopes": ["patient/*.rs"], "jti": a_claims["jti"], "token_hash": token_fingerprint(&a),
        "issuer": ISS,
    });
    for (k, v) in want_identity.as_object().unwrap() {
        assert_eq!(&r[k], v, "allow-1 {k}");
    }
    let expect = |id: &str, fields: Value| {
        let rec = &records[id];
        for (k, v) in fields.as_object().unwrap() {
            assert_eq!(&rec[k], v, "{id} {k}: {rec}");
        }
    };
    expect(
        "allow-1",
        json!({"decision": "allow", "reason": "allowed", "status": 200, "refusal_status": null,
               "upstream_status": 200, "interaction": "read", "resource_type": "Patient",
               "resource_id": "123", "search_params": [], "token_cache_hit": false, "allowed_by": "patient"}),
    );
    expect(
        "allow-2",
        json!({"decision": "allow", "reason": "allowed", "status": 200, "upstream_status": 200,
               "interaction": "search-type", "resource_type": "Observation", "resource_id": null,
               "search_params": ["patient", "code"], "token_cache_hit": true,
               "token_hash": token_fingerprint(&a)}),
    );
    expect(
        "missing",
        json!({"decision": "deny", "reason": "missing_token", "status": 401, "refusal_status": 401,
               "upstream_status": null, "interaction": "read", "client_id": null, "subject": null,
               "jti": null, "token_hash": null, "issuer": null, "scopes": [], "token_cache_hit": null}),
    );
    expect(
        "scope",
        json!({"decision": "deny", "reason": "insufficient_scope", "status": 403, "refusal_status": 403,
               "upstream_status": null, "client_id": "app-1", "scopes": ["user/Observation.rs"],
               "token_cache_hit": false, "token_hash": token_fingerprint(&b)}),
    );
    expect(
        "revoked",
        json!({"decision": "deny", "reason": "invalid_token.revoked", "status": 401,
               "refusal_status": 401, "upstream_status": null, "client_id": "revoked-app",
               "token_hash": token_fingerprint(&c)}),
    );
    expect(
        "public",
        json!({"decision": "allow", "reason": "public", "status": 200, "upstream_status": 200,
               "interaction": "capabilities", "token_hash": null, "client_id": null}),
    );

    // The access log carries the same record (Envoy flushes access logs every 10 s by default).
    assert!(
        envoy.wait_until(Duration::from_secs(15), || access_records(&envoy).len()
            == cases.len()),
        "{:?}",
        access_records(&envoy).keys()
    );
    for (id, (code, rec)) in access_records(&envoy) {
        assert_eq!(rec, records[&id], "{id}: access log and audit line agree");
        assert_eq!(Some(u64::from(code)), rec["status"].as_u64(), "{id}");
    }

    // Exact counts from /stats/prometheus.
    let requests = "smart_fhir_edge_requests_total";
    type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);
    let table: Vec<Row> = vec![
        (requests, vec![("decision", "allow"), ("reason", "allowed")], 2.0),
        (requests, vec![("decision", "allow"), ("reason", "public")], 1.0),
        (
            requests,
            vec![("decision", "deny"), ("reason", "missing_token")],
            1.0,
        ),
        (
            requests,
            vec![("decision", "deny"), ("reason", "insufficient_scope")],
            1.0,
        ),
        (
            requests,
            vec![("decision", "deny"), ("reason", "invalid_token.revoked")],
            1.0,
        ),
        (
            "smart_fhir_edge_interactions_total",
            vec![("interaction", "read")],
            4.0,
        ),
        (
            "smart_fhir_edge_interactions_total",
            vec![("interaction", "search-type")],
            1.0,
        ),
        (
            "smart_fhir_edge_interactions_total",
            vec![("interaction", "capabilities")],
            1.0,
        ),
        ("smart_fhir_edge_token_cache_hits_total", vec![], 1.0),
        ("smart_fhir_edge_token_cache_misses_total", vec![], 3.0),
        (
            "smart_fhir_edge_jwks_fetches_total",
            vec![("provider", "0"), ("outcome", "updated")],
            1.0,
        ),
        (
            "smart_fhir_edge_jwks_fetches_total",
            vec![("provider", "0"), ("outcome", "failed")],
            0.0,
        ),
    ];
    for (name, labels, want) in &table {
        assert_eq!(metric(&envoy, name, labels), Some(*want), "{name} {labels:?}");
    }
    let age = metric(
        &envoy,
        "smart_fhir_edge_jwks_key_age_seconds",
        &[("provider", "0")],
    );
    assert!(age.is_some_and(|a| (0.0..60.0).contains(&a)), "{age:?}");
    // Histograms reach the admin output at Envoy's stats flush (5 s by default).
    let verifications = || metric(&envoy, "smart_fhir_edge_signature_verification_us_count", &[]);
    assert!(
        envoy.wait_until(Duration::from_secs(8), || verifications() == Some(3.0)),
        "{:?}",
        verifications()
    );
    let sum = metric(&envoy, "smart_fhir_edge_signature_verification_us_sum", &[]).unwrap();
    assert!(sum > 0.0 && sum < 3_000_000.0, "{sum} us for 3 verifications");

    // No token and no search value anywhere in Envoy's output.
    let log = envoy.log();
    for t in [&a, &b, &c] {
        assert!(!log.contains(t.as_str()), "a token leaked into Envoy's log");
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !log.contains(signature),
            "a token signature leaked into Envoy's log"
        );
    }
    assert!(
        !log.contains(search_value),
        "a search parameter value leaked into Envoy's log"
    );
}

#[test]
fn audit_only_mode_decides_and_audits_everything_but_refuses_nothing() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let mut cfg = plugin_config();
    cfg["mode"] = json!("audit-only");
    cfg["revocation"] = json!({"client_ids": ["revoked-app"]});
    let envoy = audit_envoy(&cfg, &up, idp.port(), free_port(), free_port());
    assert!(envoy
        .filter_log()
        .iter()
        .any(|l| l.contains("AUDIT-ONLY mode: requests are decided and audited but never refused")));
    let a = token(&claims("patient/*.rs", Some("123")));
    let b = token(&claims("user/Observation.rs", None));
    let c = token(&with_client(claims("patient/*.rs", Some("123")), "revoked-app"));
    let spoofed = [("x-smart-patient", "999"), ("x-smart-client-id", "evil")];
    let cases: Vec<(&str, Option<&str>, &str, Option<u16>)> = vec![
        ("ok", Some(&a), "allow", None),
        ("missing", None, "audit-only-deny", Some(401)),
        ("scope", Some(&b), "audit-only-deny", Some(403)),
        ("revoked", Some(&c), "audit-only-deny", Some(401)),
    ];
    for (id, t, _, _) in &cases {
        let auth = t.map(bearer);
        let mut h = vec![("x-request-id", *id)];
        h.extend_from_slice(&spoofed);
        if let Some(a) = &auth {
            h.push(("authorization", a));
        }
        let r = envoy.get("/fhir/Patient/123", &h);
        assert_eq!(r.status, 200, "{id}: nothing is refused in audit-only mode");
    }
    let seen = up.requests();
    assert_eq!(seen.len(), cases.len());
    // Spoofed x-smart-* never pass; a verified token's facts do, whatever the decision.
    let forwarded: Vec<(Vec<&str>, Vec<&str>)> = seen
        .iter()
        .map(|r| {
            (
                r.headers_named("x-smart-client-id"),
                r.headers_named("x-smart-patient"),
            )
        })
        .collect();
    assert_eq!(
        forwarded,
        vec![
            (vec!["app-1"], vec!["123"]),
            (vec![], vec![]),
            (vec!["app-1"], vec![]),
            (vec!["revoked-app"], vec!["123"]),
        ]
    );
    assert!(
        envoy.wait_until(Duration::from_secs(5), || audit_records(&envoy).len()
            == cases.len())
    );
    let records = audit_records(&envoy);
    for (id, _, decision, refusal) in &cases {
        let r = &records[*id];
        assert_eq!(r["decision"], *decision, "{id}: {r}");
        assert_eq!(r["refusal_status"], json!(refusal), "{id}");
        assert_eq!(r["status"], 200, "{id}");
        assert_eq!(r["upstream_status"], 200, "{id}");
    }
    let requests = "smart_fhir_edge_requests_total";
    for (reason, n) in [
        ("missing_token", 1.0),
        ("insufficient_scope", 1.0),
        ("invalid_token.revoked", 1.0),
    ] {
        let labels = [("decision", "audit-only-deny"), ("reason", reason)];
        assert_eq!(metric(&envoy, requests, &labels), Some(n), "{reason}");
    }
    assert_eq!(
        metric(
            &envoy,
            requests,
            &[("decision", "deny"), ("reason", "missing_token")]
        ),
        None,
        "nothing is counted as an enforced denial"
    );
}

/// A FHIR server that records what it receives and answers a batch-response.
fn audit_server() -> Server {
    Server::start(|req| {
        let n = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|b| b["entry"].as_array().map(Vec::len))
            .unwrap_or(0);
        let entries: Vec<Value> = (0..n)
            .map(|_| json!({"response": {"status": "201 Created"}}))
            .collect();
        Response::json(
            200,
            json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}).to_string(),
        )
    })
}

fn bundles(server: &Server) -> Vec<Value> {
    server
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect()
}

#[test]
fn audit_events_reach_a_fhir_server_in_batches() {
    let (idp, up, audit) = (Idp::start(default_jwks()), fhir_upstream(), audit_server());
    let mut cfg = plugin_config();
    cfg["audit_event"] = json!({
        "uri": format!("http://127.0.0.1:{}/fhir", audit.port()), "cluster": "audit",
        "batch_size": 3, "flush_interval_ms": 300, "max_queue": 100, "observer": "edge-test"
    });
    let envoy = audit_envoy(&cfg, &up, idp.port(), audit.port(), free_port());
    let t = token(&claims("patient/*.rs", Some("123")));
    let ids: Vec<String> = (0..7).map(|i| format!("ae-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let with_token = i % 3 != 2;
        let r = get(&envoy, "/fhir/Patient/123", id, with_token.then_some(t.as_str()));
        assert_eq!(r.status, if with_token { 200 } else { 401 });
    }
    let received = || {
        bundles(&audit)
            .iter()
            .map(|b| b["entry"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    assert!(
        envoy.wait_until(Duration::from_secs(10), || received() == 7),
        "{}",
        received()
    );
    let posts = audit.requests();
    assert!(posts.len() >= 3, "batched: {} Bundles for 7 events", posts.len());
    assert!(posts.len() < 7, "batched: {} Bundles for 7 events", posts.len());
    let mut seen_ids = Vec::new();
    for (req, bundle) in posts.iter().zip(bundles(&audit)) {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/fhir"));
        assert_eq!(req.header("content-type"), Some("application/fhir+json"));
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["type"], "batch");
        let entries = bundle["entry"].as_array().unwrap();
        assert!(entries.len() <= 3);
        for e in entries {
            assert_eq!(e["request"], json!({"method": "POST", "url": "AuditEvent"}));
            let ev = &e["resource"];
            assert_eq!(ev["resourceType"], "AuditEvent");
            assert_eq!(ev["type"]["code"], "rest");
            assert_eq!(ev["subtype"][0]["code"], "read");
            assert_eq!(ev["action"], "R");
            assert_eq!(ev["source"]["observer"]["display"], "edge-test");
            let id = ev["entity"][0]["what"]["identifier"]["value"]
                .as_str()
                .unwrap()
                .to_string();
            let refused = id.ends_with('2') || id.ends_with('5');
            assert_eq!(ev["outcome"], if refused { "4" } else { "0" }, "{id}: {ev}");
            let patient = ev["entity"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["role"]["code"] == "1")
                .map(|x| x["what"]["reference"].clone());
            assert_eq!(patient, Some(json!("Patient/123")), "{id}");
            seen_ids.push(id);
        }
    }
    seen_ids.sort();
    assert_eq!(seen_ids, ids, "every decision, once");
    assert!(
        !String::from_utf8_lossy(&posts.iter().flat_map(|r| r.body.clone()).collect::<Vec<u8>>())
            .contains(&t)
    );
    assert_eq!(
        metric(&envoy, "smart_fhir_edge_audit_events_sent_total", &[]),
        Some(7.0)
    );
    assert_eq!(
        metric(&envoy, "smart_fhir_edge_audit_events_dropped_total", &[]),
        Some(0.0)
    );
}

#[test]
fn entries_the_audit_server_refuses_count_as_dropped() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let refusing = Server::start(|req| {
        let n = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|b| b["entry"].as_array().map(Vec::len))
            .unwrap_or(0);
        let entries: Vec<Value> = (0..n)
            .map(|i| json!({"response": {"status": if i == 0 { "201 Created" } else { "422 Unprocessable Entity" }}}))
            .collect();
        Response::json(
            200,
            json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries}).to_string(),
        )
    });
    let mut cfg = plugin_config();
    cfg["audit_event"] = json!({
        "uri": format!("http://127.0.0.1:{}/fhir", refusing.port()), "cluster": "audit",
        "batch_size": 3, "flush_interval_ms": 5000
    });
    let envoy = audit_envoy(&cfg, &up, idp.port(), refusing.port(), free_port());
    // One event goes out alone on the first tick (nothing was sent yet); the next three fill a batch.
    assert_eq!(get(&envoy, "/fhir/Patient/123", "x-0", None).status, 401);
    assert!(envoy.wait_until(Duration::from_secs(5), || refusing.request_count() == 1));
    for i in 1..=3 {
        assert_eq!(
            get(&envoy, "/fhir/Patient/123", &format!("x-{i}"), None).status,
            401
        );
    }
    let counts = || {
        (
            metric(&envoy, "smart_fhir_edge_audit_events_sent_total", &[]),
            metric(&envoy, "smart_fhir_edge_audit_events_dropped_total", &[]),
        )
    };
    assert!(
        envoy.wait_until(Duration::from_secs(5), || counts() == (Some(2.0), Some(2.0))),
        "first entry of each batch taken, the rest refused: {:?}",
        counts()
    );
}

#[test]
fn a_dead_audit_server_never_fails_requests_and_counts_what_it_drops() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let dead = free_port();
    let mut cfg = plugin_config();
    cfg["audit_event"] = json!({
        "uri": format!("http://127.0.0.1:{dead}/fhir"), "cluster": "audit",
        "batch_size": 2, "flush_interval_ms": 100, "max_queue": 4, "timeout_ms": 500
    });
    let envoy = audit_envoy(&cfg, &up, idp.port(), dead, free_port());
    let t = token(&claims("patient/*.rs", Some("123")));
    for i in 0..20 {
        let r = get(&envoy, "/fhir/Patient/123", &format!("d-{i}"), Some(&t));
        assert_eq!(
            r.status, 200,
            "request {i} is served whatever the audit server does"
        );
    }
    assert_eq!(up.request_count(), 20);
    let dropped = || metric(&envoy, "smart_fhir_edge_audit_events_dropped_total", &[]).unwrap_or(0.0);
    // 20 events, at most 4 queued and 2 in flight: at least 14 dropped.
    assert!(
        envoy.wait_until(Duration::from_secs(5), || dropped() >= 14.0),
        "{}",
        dropped()
    );
    assert!(dropped() <= 20.0);
    assert_eq!(
        metric(&envoy, "smart_fhir_edge_audit_events_sent_total", &[]),
        Some(0.0)
    );
    let failed = || metric(&envoy, "smart_fhir_edge_audit_batches_failed_total", &[]).unwrap_or(0.0);
    assert!(envoy.wait_until(Duration::from_secs(5), || failed() >= 1.0));
    assert!(
        envoy.wait_until(Duration::from_secs(5), || audit_records(&envoy).len() == 20),
        "the log line is written all the same"
    );
}

#[test]
fn a_client_added_to_the_revocation_list_is_refused_after_the_next_refresh() {
    let (idp, up) = (Idp::start(default_jwks()), fhir_upstream());
    let list = Arc::new(Mutex::new(r#"{"client_ids": []}"#.to_string()));
    let served = list.clone();
    let lists = Server::start(move |req| {
        if req.path == "/revoked.json" {
            Response::text(200, "application/json", &served.lock().unwrap())
        } else {
            Response::new(404)
        }
    });
    let mut cfg = plugin_config();
    cfg["revocation"] = json!({"refresh": {
        "uri": format!("http://127.0.0.1:{}/revoked.json", lists.port()), "cluster": "lists",
        "interval_s": 1, "timeout_ms": 500
    }});
    let envoy = audit_envoy(&cfg, &up, idp.port(), free_port(), lists.port());
    let t = token(&claims("patient/*.rs", Some("123")));
    assert!(envoy.wait_until(Duration::from_secs(5), || lists.request_count() >= 1));
    for id in ["before-1", "before-2"] {
        assert_eq!(get(&envoy, "/fhir/Patient/123", id, Some(&t)).status, 200);
    }
    *list.lock().unwrap() = r#"{"client_ids": ["app-1"], "subjects": [], "jtis": []}"#.to_string();
    let mut n = 0;
    let refused = envoy.wait_until(Duration::from_secs(10), || {
        n += 1;
        get(&envoy, "/fhir/Patient/123", &format!("after-{n}"), Some(&t)).status == 401
    });
    assert!(refused, "refused after the next refresh");
    let r = get(&envoy, "/fhir/Patient/123", "revoked", Some(&t));
    let outcome = assert_outcome(&r, 401, "security");
    assert!(outcome.to_string().contains("revoked"), "{outcome}");
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("error=\"invalid_token\""));
    assert!(envoy.wait_until(Duration::from_secs(5), || audit_records(&envoy)
        .contains_key("revoked")));
    let rec = &audit_records(&envoy)["revoked"];
    assert_eq!(rec["reason"], "invalid_token.revoked");
    assert_eq!(
        rec["token_cache_hit"], true,
        "refused although the verified-token cache held it"
    );
    assert_eq!(rec["client_id"], "app-1");
    let updated = metric(
        &envoy,
        "smart_fhir_edge_revocation_refreshes_total",
        &[("outcome", "updated")],
    );
    assert!(updated.is_some_and(|u| u >= 2.0), "{updated:?}");
    // Taken off the list, the client is served again after the next refresh.
    *list.lock().unwrap() = r#"{"client_ids": []}"#.to_string();
    let served_again = envoy.wait_until(Duration::from_secs(10), || {
        n += 1;
        get(&envoy, "/fhir/Patient/123", &format!("later-{n}"), Some(&t)).status == 200
    });
    assert!(served_again);
    assert!(!envoy.log().contains(&t));
}

#[test]
fn the_example_and_demo_envoy_configs_carry_the_filters_stats_tag_rules() {
    for file in ["test-audit.yaml", "demo/envoy.yaml"] {
        let yaml = config_file(file);
        for (tag, regex) in smart_fhir_edge::metrics::STATS_TAGS {
            assert!(
                yaml.contains(&format!("- tag_name: {tag}\n    regex: '{regex}'")),
                "{file}: {tag}"
            );
        }
    }
}

/// Metric names (`smart_fhir_edge_…`) and `by (…)` label lists of a PromQL expression.
fn promql_names_and_labels(expr: &str) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("smart_fhir_edge_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    let mut labels = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("by (") {
        let tail = &rest[i + 4..];
        let end = tail.find(')').unwrap();
        labels.extend(tail[..end].split(',').map(|l| l.trim().to_string()));
        rest = &tail[end..];
    }
    (names, labels)
}

#[test]
fn the_grafana_dashboard_reads_only_metrics_and_labels_envoy_exposes() {
    let (idp, up, audit) = (Idp::start(default_jwks()), fhir_upstream(), audit_server());
    let lists = Server::start(|_| Response::text(200, "application/json", r#"{"jtis": []}"#));
    let mut cfg = plugin_config();
    cfg["audit_event"] =
        json!({"uri": format!("http://127.0.0.1:{}/fhir", audit.port()), "cluster": "audit"});
    cfg["revocation"] = json!({"refresh": {
        "uri": format!("http://127.0.0.1:{}/revoked.json", lists.port()), "cluster": "lists"}});
    let envoy = audit_envoy(&cfg, &up, idp.port(), audit.port(), lists.port());
    let t = token(&claims("patient/*.rs", Some("123")));
    assert_eq!(get(&envoy, "/fhir/Patient/123", "g-1", Some(&t)).status, 200);
    assert_eq!(get(&envoy, "/fhir/Patient/123", "g-2", None).status, 401);
    assert!(envoy.wait_until(Duration::from_secs(8), || {
        metric(&envoy, "smart_fhir_edge_signature_verification_us_count", &[]).is_some_and(|c| c >= 1.0)
            && metric(
                &envoy,
                "smart_fhir_edge_revocation_refreshes_total",
                &[("outcome", "updated")],
            )
            .is_some()
    }));
    let samples = prometheus_samples(&envoy.prometheus());
    let path = wasm_tests::real_envoy::repo_root().join("envoy/grafana/smart-fhir-edge.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let (names, labels) = promql_names_and_labels(expr);
            assert!(!names.is_empty(), "{expr}");
            for name in names {
                let series: Vec<&BTreeMap<String, String>> = samples
                    .iter()
                    .filter(|(n, _, _)| *n == name)
                    .map(|(_, l, _)| l)
                    .collect();
                assert!(!series.is_empty(), "{}: `{name}` is not exposed", panel["title"]);
                for label in labels.iter().filter(|l| *l != "le") {
                    assert!(
                        series.iter().all(|l| l.contains_key(label)),
                        "{}: `{name}` has no label `{label}`: {series:?}",
                        panel["title"]
                    );
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "{checked} metric references checked");
}
