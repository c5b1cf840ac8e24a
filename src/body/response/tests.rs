//! Response checks: reads, searchsets with includes, history and batch responses.

use super::*;
use crate::body::fixtures::{config, token};
use crate::scope::Context;
use serde_json::json;

const JSON: Option<&str> = Some("application/fhir+json");

fn patient_access() -> Access {
    Access {
        context: Context::Patient,
        patient: Some("123".into()),
    }
}

fn obs(id: &str, subject: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "valueQuantity": {"value": 1.50}, "subject": {"reference": subject}})
}

fn run(check: &ResponseCheck, scopes: &str, body: &Value) -> ResponseVerdict {
    let (_, granted) = token(scopes, Some("123"));
    check_response(check, 200, JSON, body.to_string().as_bytes(), &granted, &config())
}

#[test]
fn a_read_of_another_patients_resource_is_refused() {
    let read = |id: &str| ResponseCheck::Resource {
        access: patient_access(),
        resource_type: "Observation".into(),
        id: id.into(),
    };
    assert_eq!(
        run(&read("a"), "patient/*.rs", &obs("a", "Patient/123")),
        ResponseVerdict::Pass
    );
    let ResponseVerdict::Deny(d) = run(&read("b"), "patient/*.rs", &obs("b", "Patient/456")) else {
        panic!()
    };
    assert_eq!(d.reply("ehr").reason_code, "outside_patient_compartment");
    // Not the resource asked for: withheld.
    let ResponseVerdict::Deny(d) = run(&read("a"), "patient/*.rs", &obs("b", "Patient/123")) else {
        panic!()
    };
    assert_eq!(d.reply("ehr").status, 502);
    // Configured as not found.
    let (_, granted) = token("patient/*.rs", Some("123"));
    let mut cfg = config();
    cfg.response_denial = ResponseDenial::NotFound;
    let body = obs("b", "Patient/456").to_string();
    let got = check_response(&read("b"), 200, JSON, body.as_bytes(), &granted, &cfg);
    assert_eq!(got, ResponseVerdict::Deny(Denial::Withheld));
    // Errors and non-2xx pass; XML and broken JSON are withheld.
    assert_eq!(
        check_response(&read("b"), 404, JSON, b"{}", &granted, &cfg),
        ResponseVerdict::Pass
    );
    for (ct, body) in [
        (Some("application/fhir+xml"), &b"<Observation/>"[..]),
        (JSON, &b"{\"a\":1,\"a\":2}"[..]),
    ] {
        let ResponseVerdict::Deny(d) = check_response(&read("b"), 200, ct, body, &granted, &cfg) else {
            panic!()
        };
        assert_eq!(d.reply("ehr").reason_code, "response_unverifiable");
    }
}

#[test]
fn granular_reads_must_meet_the_constraints() {
    let read = ResponseCheck::Resource {
        access: Access {
            context: Context::User,
            patient: None,
        },
        resource_type: "Observation".into(),
        id: "a".into(),
    };
    let mut lab = obs("a", "Patient/9");
    lab["category"] = json!([{"coding": [{"code": "laboratory"}]}]);
    let scopes = "user/Observation.rs?category=laboratory";
    assert_eq!(run(&read, scopes, &lab), ResponseVerdict::Pass);
    let ResponseVerdict::Deny(d) = run(&read, scopes, &obs("a", "Patient/9")) else {
        panic!()
    };
    assert_eq!(d.reply("ehr").reason_code, "insufficient_scope");
}

#[test]
fn searchsets_lose_entries_outside_the_grant_with_total_fixed_and_an_outcome_entry() {
    let check = ResponseCheck::Searchset {
        access: patient_access(),
        vouched: Some("Observation".into()),
    };
    let body = json!({
        "resourceType": "Bundle", "id": "s1", "type": "searchset", "total": 3,
        "link": [
            {"relation": "self", "url": "https://ehr.example/fhir/Observation?code=x"},
            {"relation": "next", "url": "https://ehr.example/fhir?_getpages=abc"},
            {"relation": "prev", "url": "http://upstream.internal:8080/fhir/Observation?page=1"}
        ],
        "entry": [
            {"fullUrl": "https://ehr.example/fhir/Observation/a", "resource": obs("a", "Patient/123"), "search": {"mode": "match"}},
            {"resource": obs("b", "Patient/456"), "search": {"mode": "match"}},
            {"resource": {"resourceType": "Patient", "id": "456"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "Patient", "id": "123"}, "search": {"mode": "include"}},
            {"resource": {"resourceType": "Practitioner", "id": "9"}, "search": {"mode": "include"}},
            {"resource": obs("c", "Patient/123"), "search": {"mode": "match"}}
        ]
    });
    let ResponseVerdict::Replace(text) = run(&check, "patient/*.rs", &body) else {
        panic!()
    };
    let out: Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<&str> = out["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(ids, ["a", "123", "9", "c", "-"]);
    assert_eq!(out["total"], 2);
    let last = out["entry"].as_array().unwrap().last().unwrap();
    assert_eq!(last["search"]["mode"], "outcome");
    assert_eq!(last["resource"]["resourceType"], "OperationOutcome");
    assert!(last["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .starts_with("2 entries"));
    assert_eq!(
        out["link"].as_array().unwrap().len(),
        2,
        "the link leaving the base is dropped"
    );

    // Includes of types the context does not read are removed too.
    let ResponseVerdict::Replace(text) = run(&check, "patient/Observation.rs", &body) else {
        panic!()
    };
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out["entry"].as_array().unwrap().len(), 3, "{text}");

    // Nothing to remove: passed on untouched.
    let clean = json!({"resourceType": "Bundle", "type": "searchset", "total": 1,
                       "entry": [{"resource": obs("a", "Patient/123"), "search": {"mode": "match"}}]});
    assert_eq!(run(&check, "patient/*.rs", &clean), ResponseVerdict::Pass);
}

#[test]
fn decimals_survive_filtering_exactly() {
    let check = ResponseCheck::Searchset {
        access: patient_access(),
        vouched: None,
    };
    let text = r#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"Observation","id":"a","valueQuantity":{"value":1.50},"subject":{"reference":"Patient/123"}},"search":{"mode":"match"}},{"resource":{"resourceType":"Observation","id":"b","subject":{"reference":"Patient/456"}},"search":{"mode":"match"}}]}"#;
    let (_, granted) = token("patient/*.rs", Some("123"));
    let ResponseVerdict::Replace(out) =
        check_response(&check, 200, JSON, text.as_bytes(), &granted, &config())
    else {
        panic!()
    };
    assert!(out.contains(r#""valueQuantity":{"value":1.50}"#), "{out}");
}

#[test]
fn history_keeps_the_patients_versions_and_refuses_when_none_is_left() {
    let check = ResponseCheck::History {
        access: patient_access(),
    };
    let history = |subjects: &[&str]| {
        json!({"resourceType": "Bundle", "type": "history", "total": subjects.len(),
               "entry": subjects.iter().map(|s| json!({"resource": obs("a", s), "request": {"method": "PUT", "url": "Observation/a"}})).collect::<Vec<_>>()})
    };
    assert_eq!(
        run(&check, "patient/*.rs", &history(&["Patient/123"])),
        ResponseVerdict::Pass
    );
    let ResponseVerdict::Replace(text) =
        run(&check, "patient/*.rs", &history(&["Patient/123", "Patient/456"]))
    else {
        panic!()
    };
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out["entry"].as_array().unwrap().len(), 1);
    assert_eq!(out["total"], 1);
    let ResponseVerdict::Deny(d) = run(&check, "patient/*.rs", &history(&["Patient/456"])) else {
        panic!()
    };
    assert_eq!(d.reply("ehr").reason_code, "outside_patient_compartment");
}

#[test]
fn batch_responses_are_checked_entry_by_entry() {
    let check = ResponseCheck::BatchResponse(vec![
        None,
        Some(ResponseCheck::Resource {
            access: patient_access(),
            resource_type: "Observation".into(),
            id: "b".into(),
        }),
    ]);
    let body = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [
        {"resource": {"resourceType": "Patient", "id": "123"}, "response": {"status": "200 OK"}},
        {"resource": obs("b", "Patient/456"), "response": {"status": "200 OK"}}
    ]});
    let ResponseVerdict::Replace(text) = run(&check, "patient/*.rs", &body) else {
        panic!()
    };
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out["entry"][0]["resource"]["id"], "123");
    assert_eq!(out["entry"][1]["response"]["status"], "403 Forbidden");
    assert!(out["entry"][1].get("resource").is_none());
    // Entry count mismatch: withheld.
    let short = json!({"resourceType": "Bundle", "type": "batch-response", "entry": [{"response": {"status": "200 OK"}}]});
    assert!(matches!(
        run(&check, "patient/*.rs", &short),
        ResponseVerdict::Deny(_)
    ));
}
