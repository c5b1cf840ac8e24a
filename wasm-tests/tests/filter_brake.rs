//! The anomaly brake in the built filter under the host emulator, with a controlled clock: an app
//! touching more distinct patients (or resource types) than allowed in the window is refused for
//! the cool-down with a 429 OperationOutcome and Retry-After while other apps continue; the window
//! slides; `action: audit` refuses nothing but records and counts; two workers (VMs) count into
//! the same window through shared data.
//!
//! Build the module first (`make build`). Every test has its own [`Host`].

use std::time::Duration;

use serde_json::{json, Value};
use smart_fhir_edge::token::test_support::{self, Signer, AUD, ISS, NOW};
use smart_fhir_edge::token::Algorithm;
use wasm_tests::{Host, Outcome, Response, Vm};

const TRIPPED: &str = "smart_fhir_edge.anomaly_brake_total.outcome.tripped";
const REFUSED: &str = "smart_fhir_edge.anomaly_brake_total.outcome.refused";
const AUDITED: &str = "smart_fhir_edge.anomaly_brake_total.outcome.audited";

fn host() -> Host {
    Host::builder()
        .allow_on_headers_stop_iteration(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Local keys (no fetch) and the brake block `brake`.
fn config(brake: Value) -> String {
    let jwks: Value = serde_json::from_slice(&test_support::default_jwks()).unwrap();
    json!({
        "fhir_base": "/fhir",
        "providers": [{"issuer": ISS, "audiences": [AUD], "local_jwks": jwks}],
        "anomaly_brake": brake,
    })
    .to_string()
}

/// A user-level token of `app` (no patient in context), valid for an hour.
fn token(app: &str) -> String {
    let mut c = test_support::good_claims();
    c["client_id"] = json!(app);
    c["scope"] = json!("user/Patient.rs user/Observation.rs user/Condition.rs user/Encounter.rs");
    c["exp"] = json!(NOW + 3600);
    c.as_object_mut().unwrap().remove("patient");
    test_support::mint(Algorithm::ES256, Signer::P256, &c)
}

/// Reads `path` with `token`: the upstream's 200, or the filter's local reply.
fn read(vm: &Vm, path: &str, token: &str) -> Result<(), Response> {
    let s = vm.get(path, &[("authorization", &format!("Bearer {token}"))]);
    match s.send_headers(true) {
        Outcome::Continued { .. } => {
            let body = br#"{"resourceType":"Patient"}"#;
            s.respond(200, &[("content-type", "application/fhir+json")], body)
                .expect_responded();
            Ok(())
        }
        Outcome::LocalReply(r) => Err(r),
        other => panic!("{path}: {other:#?}"),
    }
}

#[track_caller]
fn assert_braked(r: &Response, status: u16, code: &str, retry_after: u64) {
    assert_eq!(r.status, status, "{r:#?}");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome");
    assert_eq!(body["issue"][0]["code"], code, "{body}");
    assert_eq!(
        r.header("retry-after"),
        Some(retry_after.to_string().as_str()),
        "{r:#?}"
    );
    assert!(r.header("www-authenticate").is_none(), "{r:#?}");
}

/// The last audit record logged.
fn last_audit(host: &Host) -> Value {
    let line = host
        .logs_containing("smart-fhir-edge audit ")
        .pop()
        .expect("an audit record")
        .message;
    let json = line.split_once("smart-fhir-edge audit ").unwrap().1;
    serde_json::from_str(json).unwrap()
}

#[test]
fn an_app_over_the_patient_threshold_is_refused_for_the_cool_down_and_others_continue() {
    let host = host();
    let vm = host
        .vm_with_config(config(
            json!({"window_s": 60, "max_distinct_patients": 3, "cooldown_s": 30}),
        ))
        .unwrap();
    let (a, b) = (token("app-a"), token("app-b"));
    // The same patient again, and a search naming one, count once each.
    for path in [
        "/fhir/Patient/p1",
        "/fhir/Patient/p1",
        "/fhir/Observation?patient=p2",
        "/fhir/Patient/p3",
    ] {
        read(&vm, path, &a).unwrap_or_else(|r| panic!("{path}: {r:#?}"));
    }
    // The fourth patient trips the brake: refused, and so is everything else of app A.
    let r = read(&vm, "/fhir/Patient/p4", &a).unwrap_err();
    assert_braked(&r, 429, "throttled", 30);
    let record = last_audit(&host);
    assert_eq!(record["decision"], "deny", "{record}");
    assert_eq!(record["reason"], "anomaly_brake", "{record}");
    assert_eq!(record["client_id"], "app-a", "the record names the app: {record}");
    assert_eq!(record["refusal_status"], 429);
    host.advance(Duration::from_secs(10));
    let r = read(&vm, "/fhir/Patient/p1", &a).unwrap_err();
    assert_braked(&r, 429, "throttled", 20);
    // App B touches the same patients and more, unaffected.
    for p in ["p1", "p2", "p3"] {
        read(&vm, &format!("/fhir/Patient/{p}"), &b).unwrap_or_else(|r| panic!("{r:#?}"));
    }
    host.advance(wasm_tests::FILTER_TICK);
    assert_eq!(host.metric(TRIPPED), Some(1));
    assert_eq!(host.metric(REFUSED), Some(2));
    assert_eq!(
        host.metric("smart_fhir_edge.requests_total.decision.deny.reason.anomaly_brake"),
        Some(2)
    );
    // After the cool-down app A starts a fresh window.
    host.advance(Duration::from_secs(20));
    for p in ["p5", "p6", "p7"] {
        read(&vm, &format!("/fhir/Patient/{p}"), &a).unwrap_or_else(|r| panic!("{r:#?}"));
    }
    assert_braked(
        &read(&vm, "/fhir/Patient/p8", &a).unwrap_err(),
        429,
        "throttled",
        30,
    );
    assert_eq!(host.metric(TRIPPED), Some(2));
}

#[test]
fn the_window_slides_so_patients_touched_long_ago_no_longer_count() {
    let host = host();
    // A 60 s window in 10 s buckets.
    let vm = host
        .vm_with_config(config(
            json!({"window_s": 60, "max_distinct_patients": 3, "status": 403}),
        ))
        .unwrap();
    let a = token("app-a");
    for p in ["p1", "p2", "p3"] {
        read(&vm, &format!("/fhir/Patient/{p}"), &a).unwrap();
        host.advance(Duration::from_secs(20));
    }
    // Now 60 s after p1: its bucket left the window, so p4 makes three.
    read(&vm, "/fhir/Patient/p4", &a).unwrap_or_else(|r| panic!("slid: {r:#?}"));
    // p2, p3, p4 and p5 are four within the window: 403 as configured.
    let r = read(&vm, "/fhir/Patient/p5", &a).unwrap_err();
    assert_braked(&r, 403, "forbidden", 300);
}

#[test]
fn distinct_resource_types_trip_the_brake_too() {
    let host = host();
    let vm = host
        .vm_with_config(config(json!({"window_s": 60, "max_distinct_resource_types": 2})))
        .unwrap();
    let a = token("app-a");
    for path in [
        "/fhir/Patient/p1",
        "/fhir/Observation?patient=p1",
        "/fhir/Patient/p1",
    ] {
        read(&vm, path, &a).unwrap_or_else(|r| panic!("{path}: {r:#?}"));
    }
    let r = read(&vm, "/fhir/Condition?patient=p1", &a).unwrap_err();
    assert_braked(&r, 429, "throttled", 300);
}

#[test]
fn audit_action_refuses_nothing_but_records_and_counts_the_trip() {
    let host = host();
    let vm = host
        .vm_with_config(config(
            json!({"window_s": 60, "max_distinct_patients": 2, "action": "audit", "cooldown_s": 30}),
        ))
        .unwrap();
    let a = token("app-a");
    for p in ["p1", "p2", "p3", "p4"] {
        read(&vm, &format!("/fhir/Patient/{p}"), &a).unwrap_or_else(|r| panic!("{p}: {r:#?}"));
    }
    let record = last_audit(&host);
    assert_eq!(record["decision"], "audit-only-deny", "{record}");
    assert_eq!(record["reason"], "anomaly_brake", "{record}");
    assert_eq!(record["client_id"], "app-a", "{record}");
    assert_eq!(record["status"], 200, "forwarded: {record}");
    assert_eq!(host.metric(TRIPPED), Some(1));
    assert_eq!(
        host.metric(AUDITED),
        Some(2),
        "the trip and the request in its cool-down"
    );
    assert_eq!(host.metric(REFUSED), None);
}

#[test]
fn two_workers_count_into_the_same_window_through_shared_data() {
    let host = host();
    let brake = json!({"window_s": 60, "max_distinct_patients": 3, "cooldown_s": 60});
    let (w1, w2) = (
        host.vm_with_config(config(brake.clone())).unwrap(),
        host.vm_with_config(config(brake)).unwrap(),
    );
    let a = token("app-a");
    read(&w1, "/fhir/Patient/p1", &a).unwrap();
    read(&w2, "/fhir/Patient/p2", &a).unwrap();
    read(&w1, "/fhir/Patient/p3", &a).unwrap();
    // Neither worker saw four patients itself; together they did.
    assert_braked(
        &read(&w2, "/fhir/Patient/p4", &a).unwrap_err(),
        429,
        "throttled",
        60,
    );
    // The cool-down holds on the other worker too.
    assert_braked(
        &read(&w1, "/fhir/Patient/p1", &a).unwrap_err(),
        429,
        "throttled",
        60,
    );
    let keys: Vec<String> = host
        .shared_data_keys()
        .into_iter()
        .filter(|k| k.starts_with("smart_fhir_edge.brake."))
        .collect();
    assert_eq!(keys.len(), 1, "one shared value per app: {keys:?}");
    let (value, _) = host.shared_data(&keys[0]).unwrap();
    assert_eq!(value.len(), smart_fhir_edge::brake::RECORD_BYTES);
}

#[test]
fn a_bad_brake_block_is_refused_naming_the_field() {
    let host = host();
    for (brake, field) in [
        (
            json!({"max_distinct_patients": 5, "status": 500}),
            "anomaly_brake.status",
        ),
        (
            json!({"max_distinct_patients": 5, "window": 60}),
            "anomaly_brake.window",
        ),
        (json!({"window_s": 60}), "anomaly_brake"),
    ] {
        let refused = host.vm_with_config(config(brake.clone())).err().expect("refused");
        assert!(
            refused.logged(&format!("field `{field}`")),
            "{brake}: {:?}",
            refused.logs
        );
    }
}
