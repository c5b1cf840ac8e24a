//! Membership tables over realistic R4 resources.

use super::*;
use serde_json::json;

const NONE: Resolver<'static> = Resolver {
    base_urls: &[],
    bundle: &[],
};

fn local(id: &str) -> PatientRef {
    PatientRef::Local(id.to_string())
}

#[test]
fn every_compartment_type_has_element_paths_for_each_of_its_parameters() {
    for rt in crate::fhir::compartment::patient_compartment_types() {
        let params = patient_compartment_params(rt).unwrap();
        let paths = compartment_paths(rt).unwrap();
        let names: Vec<&str> = paths.iter().map(|(p, _)| *p).collect();
        assert_eq!(names, params, "{rt}");
        assert!(paths.iter().all(|(_, list)| !list.is_empty()), "{rt}");
    }
    assert!(compartment_paths("Practitioner").is_none());
    assert!(compartment_paths("Medication").is_none());
}

#[test]
fn element_paths_follow_the_r4_search_parameter_expressions() {
    let cases: &[(&str, &[&str])] = &[
        ("Observation", &["subject", "performer"]),
        ("Encounter", &["subject"]),
        ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
        ("Patient", &["link.other"]),
        ("Appointment", &["participant.actor"]),
        ("Group", &["member.entity"]),
        ("Condition", &["subject", "asserter"]),
        ("MedicationRequest", &["subject"]),
        ("Procedure", &["subject", "performer.actor"]),
        ("AuditEvent", &["agent.who", "entity.what"]),
        ("EnrollmentRequest", &["candidate"]),
        ("SupplyRequest", &["deliverTo"]),
        (
            "Coverage",
            &["policyHolder", "subscriber", "beneficiary", "payor"],
        ),
    ];
    for (rt, want) in cases {
        let got: Vec<&str> = member_paths(rt).collect();
        assert_eq!(&got, want, "{rt}");
    }
}

fn observation(subject: &str, performer: &[&str]) -> Value {
    json!({
        "resourceType": "Observation",
        "id": "obs1",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
        "subject": {"reference": subject},
        "performer": performer.iter().map(|p| json!({"reference": p})).collect::<Vec<_>>(),
        "valueQuantity": {"value": 5.4, "unit": "mmol/L"}
    })
}

#[test]
fn reads_patient_references_at_the_compartment_elements() {
    let bases = vec!["https://ehr.example/fhir".to_string()];
    let resolver = Resolver {
        base_urls: &bases,
        bundle: &[],
    };
    let cases: Vec<(&str, Value, Vec<PatientRef>)> = vec![
        (
            "observation of the patient, performed by a practitioner",
            observation("Patient/123", &["Practitioner/9"]),
            vec![local("123")],
        ),
        (
            "performer may be a patient too",
            observation("Patient/123", &["Patient/456"]),
            vec![local("123"), local("456")],
        ),
        (
            "version-specific reference",
            observation("Patient/123/_history/4", &[]),
            vec![local("123")],
        ),
        (
            "absolute reference under this server's base",
            observation("https://ehr.example/fhir/Patient/123", &[]),
            vec![local("123")],
        ),
        (
            "absolute reference under another base",
            observation("https://other.example/fhir/Patient/123", &[]),
            vec![PatientRef::External],
        ),
        ("subject is a group", observation("Group/7", &[]), vec![]),
        ("subject is contained", observation("#p1", &[]), vec![]),
        (
            "conditional reference to a patient",
            observation("Patient?identifier=http://x|1", &[]),
            vec![PatientRef::Unresolved],
        ),
        (
            "conditional reference to a practitioner",
            observation("Patient/123", &["Practitioner?identifier=http://x|1"]),
            vec![local("123")],
        ),
        ("bare id", observation("123", &[]), vec![PatientRef::Unresolved]),
        (
            "unknown urn",
            observation("urn:uuid:3b1c1e2a-1111-4b8e-9a7c-0f1e2d3c4b5a", &[]),
            vec![PatientRef::Unresolved],
        ),
        (
            "encounter subject",
            json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                   "subject": {"reference": "Patient/123"},
                   "participant": [{"individual": {"reference": "Patient/999"}}]}),
            vec![local("123")],
        ),
        (
            "allergy: patient, recorder and asserter",
            json!({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/123"},
                   "recorder": {"reference": "Practitioner/1"}, "asserter": {"reference": "Patient/456"}}),
            vec![local("123"), local("456")],
        ),
        (
            "condition asserted by a related person",
            json!({"resourceType": "Condition", "subject": {"reference": "Patient/123"},
                   "asserter": {"reference": "RelatedPerson/5"},
                   "code": {"text": "asthma"}}),
            vec![local("123")],
        ),
        (
            "medication request: requester is not a compartment element",
            json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                   "subject": {"reference": "Patient/123"},
                   "requester": {"reference": "Patient/456"},
                   "medicationCodeableConcept": {"text": "aspirin"}}),
            vec![local("123")],
        ),
        (
            "appointment participants (array of backbone elements)",
            json!({"resourceType": "Appointment", "status": "booked",
                   "participant": [{"actor": {"reference": "Practitioner/1"}, "status": "accepted"},
                                   {"actor": {"reference": "Patient/123"}, "status": "accepted"}]}),
            vec![local("123")],
        ),
        (
            "group members",
            json!({"resourceType": "Group", "type": "person", "actual": true,
                   "member": [{"entity": {"reference": "Patient/1"}}, {"entity": {"reference": "Patient/2"}}]}),
            vec![local("1"), local("2")],
        ),
        (
            "patient links",
            json!({"resourceType": "Patient", "id": "123",
                   "link": [{"other": {"reference": "Patient/456"}, "type": "seealso"}]}),
            vec![local("456")],
        ),
        (
            "logical reference by identifier",
            json!({"resourceType": "Observation", "subject": {"identifier": {"system": "urn:mrn", "value": "1"}}}),
            vec![PatientRef::Unresolved],
        ),
        (
            "logical reference typed as a practitioner",
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/123"},
                   "performer": [{"type": "Practitioner", "identifier": {"value": "1"}}]}),
            vec![local("123")],
        ),
        (
            "display-only reference names nothing",
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/123"},
                   "performer": [{"display": "Dr Who"}]}),
            vec![local("123")],
        ),
        (
            "type contradicting the reference",
            json!({"resourceType": "Observation", "subject": {"reference": "Patient/123", "type": "Group"}}),
            vec![PatientRef::Unresolved],
        ),
        (
            "practitioner is outside the compartment",
            json!({"resourceType": "Practitioner", "id": "9", "name": [{"family": "Who"}]}),
            vec![],
        ),
    ];
    for (label, resource, want) in cases {
        assert_eq!(patient_references(&resource, &resolver).unwrap(), want, "{label}");
    }
}

#[test]
fn resolves_full_urls_to_the_bundle_entries() {
    let bundle = vec![
        BundleTarget {
            full_url: "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001".into(),
            resource_type: "Patient".into(),
            id: Some("123".into()),
        },
        BundleTarget {
            full_url: "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002".into(),
            resource_type: "Patient".into(),
            id: None,
        },
        BundleTarget {
            full_url: "urn:uuid:aaaaaaaa-0000-4000-8000-000000000003".into(),
            resource_type: "Practitioner".into(),
            id: None,
        },
    ];
    let resolver = Resolver {
        base_urls: &[],
        bundle: &bundle,
    };
    let cases = [
        (
            "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
            vec![local("123")],
        ),
        (
            "urn:uuid:aaaaaaaa-0000-4000-8000-000000000002",
            vec![PatientRef::Unresolved],
        ),
        ("urn:uuid:aaaaaaaa-0000-4000-8000-000000000003", vec![]),
        (
            "urn:uuid:aaaaaaaa-0000-4000-8000-000000000009",
            vec![PatientRef::Unresolved],
        ),
    ];
    for (reference, want) in cases {
        let got = patient_references(&observation(reference, &[]), &resolver).unwrap();
        assert_eq!(got, want, "{reference}");
    }
}

#[test]
fn decides_membership_in_one_patients_compartment() {
    let cases: Vec<(&str, Value, Membership)> = vec![
        ("subject", observation("Patient/123", &[]), Membership::In),
        (
            "performer only",
            observation("Group/1", &["Patient/123"]),
            Membership::In,
        ),
        (
            "both patients",
            observation("Patient/456", &["Patient/123"]),
            Membership::In,
        ),
        (
            "other patient",
            observation("Patient/456", &[]),
            Membership::OtherPatient,
        ),
        (
            "patient of another server",
            observation("https://other.example/Patient/123", &[]),
            Membership::OtherPatient,
        ),
        (
            "unresolvable",
            observation("Patient?name=x", &[]),
            Membership::OtherPatient,
        ),
        ("group subject", observation("Group/1", &[]), Membership::NotIn),
        (
            "no subject at all",
            json!({"resourceType": "Observation", "status": "final"}),
            Membership::NotIn,
        ),
        (
            "the patient itself",
            json!({"resourceType": "Patient", "id": "123"}),
            Membership::In,
        ),
        (
            "another patient linked to this one",
            json!({"resourceType": "Patient", "id": "456", "link": [{"other": {"reference": "Patient/123"}, "type": "seealso"}]}),
            Membership::OtherPatient,
        ),
        (
            "a patient without id",
            json!({"resourceType": "Patient"}),
            Membership::NotIn,
        ),
        (
            "practitioner",
            json!({"resourceType": "Practitioner", "id": "123"}),
            Membership::NotACompartmentType,
        ),
        (
            "medication",
            json!({"resourceType": "Medication", "id": "m"}),
            Membership::NotACompartmentType,
        ),
    ];
    for (label, resource, want) in cases {
        assert_eq!(
            in_patient_compartment(&resource, "123", &NONE).unwrap(),
            want,
            "{label}"
        );
    }
}

#[test]
fn refuses_what_is_not_shaped_as_fhir_json() {
    let cases: Vec<(Value, MembershipError)> = vec![
        (json!([1, 2]), MembershipError::NotAResource),
        (json!({"id": "1"}), MembershipError::NotAResource),
        (json!({"resourceType": 5}), MembershipError::NotAResource),
        (
            json!({"resourceType": "Widget"}),
            MembershipError::UnknownResourceType,
        ),
        (
            json!({"resourceType": "Observation", "subject": "Patient/123"}),
            MembershipError::Malformed("a Reference is not an object"),
        ),
        (
            json!({"resourceType": "Observation", "subject": {"reference": 123}}),
            MembershipError::Malformed("Reference.reference is not a string"),
        ),
        (
            json!({"resourceType": "Observation", "subject": null}),
            MembershipError::Malformed("null element"),
        ),
        (
            json!({"resourceType": "Appointment", "participant": ["x"]}),
            MembershipError::Malformed("an element on the path is not an object"),
        ),
        (
            json!({"resourceType": "Patient", "id": 123}),
            MembershipError::Malformed("Patient.id is not a string"),
        ),
    ];
    for (resource, want) in cases {
        assert_eq!(
            in_patient_compartment(&resource, "123", &NONE).unwrap_err(),
            want,
            "{resource}"
        );
    }
}
