//! Write bodies: good, wrong patient, id mismatch, Patient self-update, patches that move.

use super::*;
use crate::body::fixtures::{config, token};
use serde_json::json;

fn w(mode: WriteMode, rt: &str, patient: Option<&str>) -> WriteCheck {
    WriteCheck {
        mode,
        resource_type: rt.into(),
        patient: patient.map(str::to_string),
        granular: None,
    }
}

fn obs(subject: &str, performer: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": subject}, "performer": [{"reference": performer}]})
}

fn code(r: Result<(), Denial>) -> &'static str {
    match r {
        Ok(()) => "ok",
        Err(d) => d.reply("ehr").reason_code,
    }
}

#[test]
fn resource_bodies_must_match_the_url_and_stay_with_the_patient() {
    let (_, granted) = token("patient/*.cruds", Some("123"));
    let none = Resolver::default();
    let p = Some("123");
    let update_obs = |id: &str| WriteMode::Update { id: id.into() };
    let cases: Vec<(&str, WriteCheck, Value, &str)> = vec![
        (
            "create for the patient",
            w(WriteMode::Create, "Observation", p),
            obs("Patient/123", "Practitioner/1"),
            "ok",
        ),
        (
            "performer is the patient",
            w(WriteMode::Create, "Observation", p),
            obs("Group/1", "Patient/123"),
            "ok",
        ),
        (
            "wrong patient",
            w(WriteMode::Create, "Observation", p),
            obs("Patient/456", "Practitioner/1"),
            "outside_patient_compartment",
        ),
        (
            "the patient and another",
            w(WriteMode::Create, "Observation", p),
            obs("Patient/123", "Patient/456"),
            "outside_patient_compartment",
        ),
        (
            "no patient at all",
            w(WriteMode::Create, "Observation", p),
            obs("Group/1", "Practitioner/1"),
            "outside_patient_compartment",
        ),
        (
            "unresolvable reference",
            w(WriteMode::Create, "Observation", p),
            obs("Patient/123", "Patient?name=x"),
            "outside_patient_compartment",
        ),
        (
            "another server's patient",
            w(WriteMode::Create, "Observation", p),
            obs("https://other.example/Patient/123", "Practitioner/1"),
            "outside_patient_compartment",
        ),
        (
            "type mismatch",
            w(WriteMode::Create, "Condition", p),
            obs("Patient/123", "Practitioner/1"),
            "bad_request.malformed",
        ),
        (
            "not a resource",
            w(WriteMode::Create, "Observation", p),
            json!({"subject": {"reference": "Patient/123"}}),
            "bad_request.malformed",
        ),
        (
            "Patient self-update",
            w(update_obs("123"), "Patient", p),
            json!({"resourceType": "Patient", "id": "123", "name": [{"family": "Chalmers"}]}),
            "ok",
        ),
        (
            "Patient update with an id mismatch",
            w(update_obs("123"), "Patient", p),
            json!({"resourceType": "Patient", "id": "456"}),
            "bad_request.malformed",
        ),
        (
            "Patient linking to another patient",
            w(update_obs("123"), "Patient", p),
            json!({"resourceType": "Patient", "id": "123", "link": [{"other": {"reference": "Patient/456"}, "type": "seealso"}]}),
            "outside_patient_compartment",
        ),
        (
            "update without id",
            w(update_obs("9"), "Practitioner", None),
            json!({"resourceType": "Practitioner"}),
            "bad_request.malformed",
        ),
        (
            "non-compartment update",
            w(update_obs("9"), "Practitioner", None),
            json!({"resourceType": "Practitioner", "id": "9"}),
            "ok",
        ),
        (
            "conditional update carrying an id",
            w(WriteMode::ConditionalUpdate, "Observation", p),
            json!({"resourceType": "Observation", "id": "abc", "subject": {"reference": "Patient/123"}}),
            "not_enforceable",
        ),
        (
            "conditional update without id",
            w(WriteMode::ConditionalUpdate, "Observation", p),
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/123"}}),
            "ok",
        ),
    ];
    for (label, check, body, want) in cases {
        assert_eq!(
            code(check_resource(&check, &body, &granted, &none)),
            want,
            "{label}"
        );
    }
}

#[test]
fn granular_creates_must_meet_a_granted_constraint() {
    let (_, granted) = token("user/Observation.cr?category=laboratory", None);
    let check = WriteCheck {
        granular: Some(crate::scope::Context::User),
        ..w(WriteMode::Create, "Observation", None)
    };
    let lab = json!({"resourceType": "Observation", "category": [{"coding": [{"code": "laboratory"}]}]});
    let vitals = json!({"resourceType": "Observation", "category": [{"coding": [{"code": "vital-signs"}]}]});
    let none = Resolver::default();
    assert_eq!(code(check_resource(&check, &lab, &granted, &none)), "ok");
    assert_eq!(
        code(check_resource(&check, &vitals, &granted, &none)),
        "insufficient_scope"
    );
}

#[test]
fn json_patches_must_not_move_a_resource_to_another_patient() {
    let none = Resolver::default();
    let patch_obs = w(WriteMode::Patch, "Observation", Some("123"));
    let patch_pat = w(WriteMode::Patch, "Patient", Some("123"));
    let cases: Vec<(&str, &WriteCheck, Value, &str)> = vec![
        (
            "status change",
            &patch_obs,
            json!([{"op": "replace", "path": "/status", "value": "amended"}]),
            "ok",
        ),
        (
            "test is harmless",
            &patch_obs,
            json!([{"op": "test", "path": "/subject/reference", "value": "Patient/456"}]),
            "ok",
        ),
        (
            "subject to the patient",
            &patch_obs,
            json!([{"op": "replace", "path": "/subject", "value": {"reference": "Patient/123"}}]),
            "ok",
        ),
        (
            "subject to another patient",
            &patch_obs,
            json!([{"op": "replace", "path": "/subject", "value": {"reference": "Patient/456"}}]),
            "outside_patient_compartment",
        ),
        (
            "inside the reference",
            &patch_obs,
            json!([{"op": "replace", "path": "/subject/reference", "value": "Patient/456"}]),
            "outside_patient_compartment",
        ),
        (
            "add a performer",
            &patch_obs,
            json!([{"op": "add", "path": "/performer/-", "value": {"reference": "Patient/456"}}]),
            "outside_patient_compartment",
        ),
        (
            "add the patient as performer",
            &patch_obs,
            json!([{"op": "add", "path": "/performer/0", "value": {"reference": "Patient/123"}}]),
            "ok",
        ),
        (
            "remove the subject",
            &patch_obs,
            json!([{"op": "remove", "path": "/subject"}]),
            "outside_patient_compartment",
        ),
        (
            "empty performers",
            &patch_obs,
            json!([{"op": "replace", "path": "/performer", "value": []}]),
            "outside_patient_compartment",
        ),
        (
            "copy into subject",
            &patch_obs,
            json!([{"op": "copy", "from": "/focus/0", "path": "/subject"}]),
            "outside_patient_compartment",
        ),
        (
            "move subject away",
            &patch_obs,
            json!([{"op": "move", "from": "/subject", "path": "/focus/0"}]),
            "outside_patient_compartment",
        ),
        (
            "the id",
            &patch_obs,
            json!([{"op": "replace", "path": "/id", "value": "x"}]),
            "outside_patient_compartment",
        ),
        (
            "the whole resource",
            &patch_obs,
            json!([{"op": "replace", "path": "", "value": {}}]),
            "outside_patient_compartment",
        ),
        (
            "escaped pointer",
            &patch_obs,
            json!([{"op": "replace", "path": "/subj~1ect", "value": 1}]),
            "ok",
        ),
        (
            "bad escape",
            &patch_obs,
            json!([{"op": "replace", "path": "/a~2", "value": 1}]),
            "bad_request.malformed",
        ),
        (
            "unknown op",
            &patch_obs,
            json!([{"op": "merge", "path": "/status", "value": 1}]),
            "bad_request.malformed",
        ),
        (
            "not an array",
            &patch_obs,
            json!({"op": "replace"}),
            "bad_request.malformed",
        ),
        (
            "patient self-patch",
            &patch_pat,
            json!([{"op": "replace", "path": "/gender", "value": "other"}]),
            "ok",
        ),
        (
            "patient links another",
            &patch_pat,
            json!([{"op": "add", "path": "/link/-", "value": {"other": {"reference": "Patient/456"}, "type": "seealso"}}]),
            "outside_patient_compartment",
        ),
    ];
    for (label, check, patch, want) in cases {
        assert_eq!(code(check_json_patch(check, &patch, &none)), want, "{label}");
    }
}

#[test]
fn reads_bodies_by_content_type_and_refuses_what_it_cannot_check() {
    let (_, granted) = token("patient/*.cruds", Some("123"));
    let cfg = config();
    let create = w(WriteMode::Create, "Observation", Some("123"));
    let patch = w(WriteMode::Patch, "Patient", Some("123"));
    let good = br#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#;
    let dup = br#"{"resourceType":"Observation","subject":{"reference":"Patient/123"},"subject":{"reference":"Patient/456"}}"#;
    let cases: Vec<(&WriteCheck, Option<&str>, &[u8], &str)> = vec![
        (&create, Some("application/fhir+json; charset=utf-8"), good, "ok"),
        (&create, Some("application/json"), good, "ok"),
        (&create, Some("application/fhir+xml"), good, "not_enforceable"),
        (&create, None, good, "not_enforceable"),
        (
            &create,
            Some("application/fhir+json"),
            dup,
            "bad_request.malformed",
        ),
        (
            &create,
            Some("application/fhir+json"),
            b"{",
            "bad_request.malformed",
        ),
        (
            &patch,
            Some("application/json-patch+json"),
            br#"[{"op":"replace","path":"/active","value":true}]"#,
            "ok",
        ),
        (
            &patch,
            Some("application/fhir+json"),
            br#"{"resourceType":"Parameters"}"#,
            "not_enforceable",
        ),
        (&patch, Some("text/plain"), b"[]", "not_enforceable"),
    ];
    for (check_, ct, body, want) in cases {
        assert_eq!(
            code(check(check_, ct, body, &granted, &cfg)),
            want,
            "{ct:?} {}",
            String::from_utf8_lossy(body)
        );
    }
}
