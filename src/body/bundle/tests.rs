//! Bundles: allowed entry by entry, or refused whole with one issue per refused entry.

use super::*;
use crate::body::fixtures::{config, token};
use serde_json::json;

fn entry(method: &str, url: &str, resource: Option<Value>) -> Value {
    let mut e = json!({"request": {"method": method, "url": url}});
    if let Some(r) = resource {
        e["resource"] = r;
    }
    e
}

fn bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": kind, "entry": entries})
}

fn obs(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": subject}})
}

/// The refused entry indexes, or the reason code of a whole-Bundle denial.
fn refused(r: &Result<BodyAllowed, Denial>) -> Result<Vec<usize>, &'static str> {
    match r {
        Ok(_) => Ok(vec![]),
        Err(Denial::BundleEntries(e)) => Ok(e.iter().map(|(i, _)| *i).collect()),
        Err(d) => Err(d.reply("ehr").reason_code),
    }
}

#[test]
#[allow(clippy::type_complexity)] // a table of cases
fn authorizes_every_entry_and_refuses_the_whole_bundle_for_one() {
    let (claims, granted) = token("patient/*.cruds", Some("123"));
    let cfg = config();
    let cases: Vec<(&str, Value, Result<Vec<usize>, &str>)> = vec![
        (
            "reads, a confined search and a create for the patient",
            bundle(
                "batch",
                vec![
                    entry("GET", "Patient/123", None),
                    entry("GET", "Observation?subject=Patient/123&code=x", None),
                    entry("POST", "Observation", Some(obs("Patient/123"))),
                    entry("GET", "/Observation/abc", None),
                ],
            ),
            Ok(vec![]),
        ),
        (
            "one entry reads another patient",
            bundle(
                "transaction",
                vec![
                    entry("GET", "Patient/123", None),
                    entry("GET", "Patient/456", None),
                    entry("POST", "Observation", Some(obs("Patient/456"))),
                ],
            ),
            Ok(vec![1, 2]),
        ),
        (
            "an unconfined search must name the patient",
            bundle("batch", vec![entry("GET", "Observation?code=x", None)]),
            Ok(vec![0]),
        ),
        (
            "absolute URLs under the base, and elsewhere",
            bundle(
                "batch",
                vec![
                    entry("GET", "https://ehr.example/fhir/Patient/123", None),
                    entry("GET", "https://evil.example/fhir/Patient/123", None),
                ],
            ),
            Ok(vec![1]),
        ),
        (
            "conditional create, conditional reference, nested bundle, patch, malformed url",
            bundle(
                "transaction",
                vec![
                    json!({"request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=x"}, "resource": obs("Patient/123")}),
                    entry("POST", "Observation", Some(obs("Patient?identifier=x"))),
                    entry(
                        "POST",
                        "",
                        Some(json!({"resourceType": "Bundle", "type": "batch"})),
                    ),
                    entry("PATCH", "Patient/123", Some(json!({"resourceType": "Binary"}))),
                    entry("GET", "Observation/../Patient/456", None),
                    entry("DELETE", "Observation/abc", None),
                ],
            ),
            Ok(vec![0, 1, 2, 3, 4, 5]),
        ),
        (
            "not a batch",
            json!({"resourceType": "Bundle", "type": "collection"}),
            Err("bad_request.malformed"),
        ),
        ("not a bundle", obs("Patient/123"), Err("bad_request.malformed")),
        ("an empty batch", bundle("batch", vec![]), Ok(vec![])),
    ];
    for (label, b, want) in cases {
        let got = check_bundle(&b, &claims, &granted, &cfg);
        assert_eq!(refused(&got), want, "{label}: {got:?}");
    }
}

#[test]
fn full_urls_resolve_to_other_entries() {
    let (claims, granted) = token("patient/*.cruds", Some("123"));
    let cfg = config();
    let me = "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001";
    let new_patient = "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002";
    let b = bundle(
        "transaction",
        vec![
            json!({"fullUrl": me, "request": {"method": "PUT", "url": "Patient/123"},
               "resource": {"resourceType": "Patient", "id": "123"}}),
            entry("POST", "Observation", Some(obs(me))),
        ],
    );
    assert_eq!(refused(&check_bundle(&b, &claims, &granted, &cfg)), Ok(vec![]));
    let b = bundle(
        "transaction",
        vec![
            json!({"fullUrl": new_patient, "request": {"method": "POST", "url": "Patient"},
               "resource": {"resourceType": "Patient"}}),
            entry("POST", "Observation", Some(obs(new_patient))),
        ],
    );
    assert_eq!(
        refused(&check_bundle(&b, &claims, &granted, &cfg)),
        Ok(vec![0, 1])
    );
}

#[test]
fn the_refusal_names_each_entry_and_allowed_reads_owe_a_response_check() {
    let (claims, granted) = token("patient/*.cruds", Some("123"));
    let cfg = config();
    let b = bundle(
        "batch",
        vec![
            entry("GET", "Patient/123", None),
            entry("GET", "Patient/456", None),
            entry("GET", "Observation/x", None),
        ],
    );
    let denial = check_bundle(&b, &claims, &granted, &cfg).unwrap_err();
    let reply = denial.reply("ehr");
    assert_eq!(reply.status, 403);
    let oo = denial.outcome("ehr");
    assert_eq!(oo.issues.len(), 1);
    assert_eq!(oo.issues[0].expression.as_deref(), Some("Bundle.entry[1]"));
    assert!(
        oo.issues[0].diagnostics.contains("another patient"),
        "{}",
        oo.issues[0].diagnostics
    );

    let b = bundle(
        "batch",
        vec![
            entry("GET", "Patient/123", None),
            entry("GET", "Observation/x", None),
        ],
    );
    let allowed = check_bundle(&b, &claims, &granted, &cfg).unwrap();
    let Some(ResponseCheck::BatchResponse(checks)) = allowed.response_check else {
        panic!("{allowed:?}")
    };
    assert_eq!(checks.len(), 2);
    assert!(checks[0].is_none());
    assert!(matches!(checks[1], Some(ResponseCheck::Resource { .. })));

    // Plain user scopes on some types: entries of other types are refused.
    let (claims, granted) = token("user/Observation.cruds", None);
    let b = bundle(
        "batch",
        vec![
            entry("GET", "Observation/x", None),
            entry("GET", "Condition/y", None),
        ],
    );
    assert_eq!(refused(&check_bundle(&b, &claims, &granted, &cfg)), Ok(vec![1]));
    // A malformed entry makes the refusal a 400.
    let b = bundle("batch", vec![json!({"request": {"method": "GET"}})]);
    assert_eq!(
        check_bundle(&b, &claims, &granted, &cfg)
            .unwrap_err()
            .reply("ehr")
            .status,
        400
    );
}

#[test]
fn reads_the_body_strictly() {
    let (claims, granted) = token("patient/*.cruds", Some("123"));
    let cfg = config();
    let dup = br#"{"resourceType":"Bundle","type":"batch","type":"collection"}"#;
    assert_eq!(
        refused(&check(
            Some("application/fhir+json"),
            dup,
            &claims,
            &granted,
            &cfg
        )),
        Err("bad_request.malformed")
    );
    assert_eq!(
        refused(&check(
            Some("application/fhir+xml"),
            b"<Bundle/>",
            &claims,
            &granted,
            &cfg
        )),
        Err("not_enforceable")
    );
}
