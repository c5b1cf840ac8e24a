//! Patient-level grants: confining a request to the patient in context (R4 Patient compartment).
//!
//! * The token's patient (`VerifiedClaims::patient`) must be a FHIR id, else the request is refused
//!   as patient context missing.
//! * `Patient/{id}` read, vread, history, update, patch, delete and `Patient/{id}/$everything` must
//!   name that patient; so must a compartment search `Patient/{id}/{type}`, whose parameters may
//!   not name another patient either (the rules of the type search below, without appending).
//! * A search on a compartment type must carry one of the type's compartment parameters (plus
//!   `patient` where R4 defines it as the subject-is-a-Patient parameter) whose every value is that
//!   patient, as [`parse_reference`] reads it: `123`, `Patient/123`,
//!   `http(s)://{any base}/Patient/123`, or `123` with the `:Patient` modifier. A version-specific
//!   form (`Patient/123/_history/2`) names the same patient and counts as naming it (the version is
//!   dropped): whatever the server makes of the version, it can only match references to that
//!   patient. The base of an absolute URL is not compared with this server's (the edge does not
//!   know its public base): `Patient/123` on any base is taken to name the patient in context, and
//!   `Patient/456` on any base another one. A search on `Patient` must carry `_id=123`. Other types
//!   (`Group/5`, `subject:Group=5`), other modifiers and unrecognised values (`urn:`, other schemes,
//!   non-R4 types) never confine. Any value naming another patient (including a bare id other than
//!   the patient's) and `:missing` on these parameters are refused outright, even where repeated
//!   parameters AND to nothing. Without a confining parameter, a search is confined by appending
//!   `<first compartment param>=Patient/<id>` (`_id=<id>` for `Patient`) or refused, per
//!   `unconstrained_search`; a conditional delete is refused.
//! * Reads by id, vreads and instance history of compartment types are allowed with a response
//!   check: the returned resource must be in the patient's compartment. Every search is allowed
//!   with a response check that removes entries outside the compartment (includes too).
//! * Writes are allowed with a body check ([`crate::body::write`]): a create's body must stay in
//!   the patient's compartment; `Patient/{id}` may be updated and patched by that patient only; a
//!   conditional update or patch must be confined to the patient (never appended: refused when it
//!   is not) and a conditional update's body must not carry an `id` (with no match, R4 would
//!   update-as-create that id, possibly another patient's resource). Updates, patches and deletes
//!   by id of other compartment types are refused: the stored resource decides membership and the
//!   edge does not see it (use the conditional forms, confined to the patient). Creating a
//!   `Patient` and conditional creates (`If-None-Exist`, a search the edge cannot confine) are
//!   refused.
//! * Type history of compartment types, system-level interactions, and non-Patient compartment
//!   searches over every type are refused.
//! * Types outside the compartment (Practitioner, Organization, Medication, Location, ...) are
//!   governed by scope alone; their create and update bodies must still match the URL.

use super::{check_query, not_enforceable, response_check, Authorized, Forbidden, ForbiddenKind, Refusal};
use crate::body::{Access, BodyCheck, WriteCheck, WriteMode};
use crate::claims::VerifiedClaims;
use crate::config::{Config, UnconstrainedSearch};
use crate::fhir::compartment::patient_compartment_params;
use crate::fhir::query::{is_fhir_id, parse_reference};
use crate::fhir::resource_types::is_resource_type;
use crate::fhir::{FhirRequest, Interaction, OperationTarget, Query};
use crate::scope::Context;

const ANOTHER_PATIENT: ForbiddenKind =
    ForbiddenKind::OutsidePatientCompartment("the request names another patient");
pub(super) const NOT_CONFINED: ForbiddenKind =
    ForbiddenKind::OutsidePatientCompartment("the search is not limited to the patient in context");
const MISSING_MODIFIER: ForbiddenKind =
    ForbiddenKind::OutsidePatientCompartment(":missing on a patient compartment parameter");
const BY_ID: &str =
    "a write by id to a patient-compartment resource (the stored resource decides membership; \
                     use the conditional form confined to the patient)";

/// Authorizes a non-operation request a patient-level grant covers (plain, or granular when
/// `granular`).
pub(super) fn authorize(
    req: &FhirRequest,
    conditional_create: bool,
    claims: &VerifiedClaims,
    config: &Config,
    granular: bool,
) -> Result<Authorized, Forbidden> {
    let kind = req.interaction.kind();
    match decide(req, conditional_create, claims, config, granular) {
        Err(r) => Err(super::forbid(r, kind)),
        Ok(d) => Ok(Authorized {
            context: Some(Context::Patient),
            granular,
            patient_scoped: true,
            append_query: d.append_query,
            body_check: d.body_check,
            response_check: d.response_check,
        }),
    }
}

/// What a patient-level decision adds to the request.
#[derive(Default)]
struct Confined {
    append_query: Option<(String, String)>,
    body_check: Option<BodyCheck>,
    response_check: Option<crate::body::ResponseCheck>,
}

fn decide(
    req: &FhirRequest,
    conditional_create: bool,
    claims: &VerifiedClaims,
    config: &Config,
    granular: bool,
) -> Result<Confined, Refusal> {
    let pid = patient_id(claims)?;
    check_query(req)?;
    let on_unconfined = match config.unconstrained_search {
        UnconstrainedSearch::Constrain => Unconfined::Append,
        UnconstrainedSearch::Refuse => Unconfined::Refuse,
    };
    let access = Access {
        context: Context::Patient,
        patient: Some(pid.to_string()),
    };
    let respond = |append_query| Confined {
        append_query,
        body_check: None,
        response_check: response_check(&req.interaction, access.clone()),
    };
    let write = |mode: WriteMode, rt: &str| {
        Ok(Confined {
            body_check: Some(BodyCheck::Write(WriteCheck {
                mode,
                resource_type: rt.to_string(),
                patient: is_compartment_type(rt).then(|| pid.to_string()),
                granular: granular.then_some(Context::Patient),
            })),
            ..Confined::default()
        })
    };
    match &req.interaction {
        Interaction::Read { resource_type, id }
        | Interaction::Vread {
            resource_type, id, ..
        }
        | Interaction::HistoryInstance { resource_type, id } => {
            if resource_type == "Patient" {
                same_patient(id, pid)?;
            }
            // A Patient read by its own id, or a type outside the compartment under plain grants,
            // needs nothing from the response.
            if (resource_type == "Patient" || !is_compartment_type(resource_type)) && !granular {
                Ok(Confined::default())
            } else {
                Ok(respond(None))
            }
        }
        Interaction::Update { resource_type, id } => {
            if resource_type == "Patient" {
                same_patient(id, pid)?;
            } else if is_compartment_type(resource_type) {
                return Err(not_enforceable(BY_ID));
            }
            write(WriteMode::Update { id: id.clone() }, resource_type)
        }
        Interaction::Patch { resource_type, id } => {
            if resource_type == "Patient" {
                same_patient(id, pid)?;
                write(WriteMode::Patch, resource_type)
            } else if is_compartment_type(resource_type) {
                Err(not_enforceable(BY_ID))
            } else {
                Ok(Confined::default())
            }
        }
        Interaction::Delete { resource_type, id } => {
            if resource_type == "Patient" {
                same_patient(id, pid)?;
                Ok(Confined::default())
            } else if is_compartment_type(resource_type) {
                Err(not_enforceable(BY_ID))
            } else {
                Ok(Confined::default())
            }
        }
        Interaction::Create { resource_type } if resource_type == "Patient" => {
            Err(ForbiddenKind::OutsidePatientCompartment("creating a Patient creates another patient").into())
        }
        Interaction::Create { .. } if conditional_create => Err(not_enforceable(
            "a conditional create (If-None-Exist) under patient-level scopes",
        )),
        Interaction::Create { resource_type } => write(WriteMode::Create, resource_type),
        Interaction::ConditionalUpdate { resource_type } => {
            if is_compartment_type(resource_type) {
                confine(resource_type, &req.query, pid, Unconfined::Refuse)?;
            }
            write(WriteMode::ConditionalUpdate, resource_type)
        }
        Interaction::ConditionalPatch { resource_type } => {
            if is_compartment_type(resource_type) {
                confine(resource_type, &req.query, pid, Unconfined::Refuse)?;
                write(WriteMode::Patch, resource_type)
            } else {
                Ok(Confined::default())
            }
        }
        Interaction::ConditionalDelete { resource_type } => {
            if is_compartment_type(resource_type) {
                confine(resource_type, &req.query, pid, Unconfined::Refuse)?;
            }
            Ok(Confined::default())
        }
        Interaction::SearchType { resource_type, .. } => {
            if is_compartment_type(resource_type) {
                confine(resource_type, &req.query, pid, on_unconfined).map(respond)
            } else {
                Ok(respond(None))
            }
        }
        Interaction::SearchCompartment {
            compartment,
            id,
            resource_type,
            ..
        } => {
            if compartment == "Patient" {
                same_patient(id, pid)?;
                // The path confines; a parameter naming another patient (or `:missing`) is still
                // refused, as on the type search (not ANDed to nothing by the server's grace).
                if let Some(t) = resource_type.as_deref().filter(|t| is_compartment_type(t)) {
                    confine(t, &req.query, pid, Unconfined::Append)?;
                }
                return Ok(respond(None));
            }
            // A search in another compartment is the type search narrowed further: the same rules.
            match resource_type {
                None => Err(not_enforceable(
                    "searches over every type of a non-Patient compartment",
                )),
                Some(t) if is_compartment_type(t) => confine(t, &req.query, pid, on_unconfined).map(respond),
                Some(_) => Ok(respond(None)),
            }
        }
        Interaction::HistoryType { resource_type } => {
            if is_compartment_type(resource_type) {
                Err(not_enforceable("type-level history of patient-compartment types"))
            } else {
                Ok(Confined::default())
            }
        }
        Interaction::HistorySystem | Interaction::SearchSystem { .. } => Err(not_enforceable(
            "system-level interactions under patient-level scopes",
        )),
        Interaction::Capabilities | Interaction::BatchOrTransaction | Interaction::Operation { .. } => {
            Err(not_enforceable("this interaction under patient-level scopes"))
        }
    }
}

/// Authorizes an allowed operation a patient-level grant covers.
pub(super) fn authorize_operation(
    req: &FhirRequest,
    target: &OperationTarget,
    claims: &VerifiedClaims,
) -> Result<Authorized, Forbidden> {
    match decide_operation(req, target, claims) {
        Ok(()) => {
            // `Patient/{id}/$everything` answers a searchset: filtered like any search.
            let everything =
                matches!(&req.interaction, Interaction::Operation { name, .. } if name == "$everything");
            Ok(Authorized {
                response_check: everything.then(|| crate::body::ResponseCheck::Searchset {
                    access: Access {
                        context: Context::Patient,
                        patient: claims.patient.clone(),
                    },
                    vouched: None,
                }),
                ..Authorized::by(Context::Patient)
            })
        }
        Err(r) => Err(super::forbid(r, req.interaction.kind())),
    }
}

fn decide_operation(
    req: &FhirRequest,
    target: &OperationTarget,
    claims: &VerifiedClaims,
) -> Result<(), Refusal> {
    let pid = patient_id(claims)?;
    check_query(req)?;
    match target {
        OperationTarget::System => Err(not_enforceable(
            "system-level operations under patient-level scopes",
        )),
        OperationTarget::Type { resource_type } if is_compartment_type(resource_type) => Err(
            not_enforceable("type-level operations on patient-compartment types"),
        ),
        OperationTarget::Instance { resource_type, id } if resource_type == "Patient" => {
            same_patient(id, pid)
        }
        OperationTarget::Instance { resource_type, .. } if is_compartment_type(resource_type) => Err(
            not_enforceable("an operation by id on a patient-compartment resource (the stored resource decides membership)"),
        ),
        OperationTarget::Type { .. } | OperationTarget::Instance { .. } => Ok(()),
    }
}

/// The patient in context, when it is a FHIR id.
fn patient_id(claims: &VerifiedClaims) -> Result<&str, Refusal> {
    match claims.patient.as_deref() {
        Some(p) if is_fhir_id(p) => Ok(p),
        _ => Err(ForbiddenKind::PatientContextMissing.into()),
    }
}

fn same_patient(id: &str, pid: &str) -> Result<(), Refusal> {
    if id == pid {
        Ok(())
    } else {
        Err(ANOTHER_PATIENT.into())
    }
}

/// What to do with a compartment-type search that carries no confining parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unconfined {
    Append,
    Refuse,
}

/// Checks that a search on compartment type `rt` stays with patient `pid`; returns the parameter to
/// append when it must be confined.
fn confine(
    rt: &str,
    query: &Query,
    pid: &str,
    on_unconfined: Unconfined,
) -> Result<Option<(String, String)>, Refusal> {
    let is_patient_type = rt == "Patient";
    let params = patient_compartment_params(rt).unwrap_or(&[]);
    let is_reference_param =
        |name: &str| params.contains(&name) || (name == "patient" && has_clinical_patient_param(rt));
    let mut confined = false;
    for p in &query.params {
        let is_id = is_patient_type && p.name == "_id";
        // On `Patient`, `link` is a compartment parameter too: checked for other patients, but it
        // never confines (it finds the patients linked to one).
        if !is_id && !is_reference_param(&p.name) {
            continue;
        }
        if p.chain.is_some() {
            // `subject.name=…` never confines; what it finds is filtered in the response.
            continue;
        }
        let type_modifier = match p.modifier.as_deref() {
            None => None,
            Some("missing") => return Err(MISSING_MODIFIER.into()),
            Some(m) if !is_id && is_resource_type(m) => Some(m),
            // `:identifier`, `:not`, `:above`, ...: never confining; repeated parameters AND.
            Some(_) => continue,
        };
        let mut all_this_patient = !p.values.is_empty();
        for v in &p.values {
            let named = if is_id {
                if v == pid {
                    Named::InContext
                } else {
                    Named::OtherPatient
                }
            } else {
                classify_reference(v, type_modifier, pid)
            };
            match named {
                Named::InContext => {}
                Named::OtherPatient => return Err(ANOTHER_PATIENT.into()),
                Named::NotAPatient => all_this_patient = false,
            }
        }
        if all_this_patient && (is_id || !is_patient_type) {
            confined = true;
        }
    }
    if confined {
        return Ok(None);
    }
    match on_unconfined {
        Unconfined::Refuse => Err(NOT_CONFINED.into()),
        Unconfined::Append if is_patient_type => Ok(Some(("_id".to_string(), pid.to_string()))),
        Unconfined::Append => match params.first() {
            Some(first) => Ok(Some((first.to_string(), format!("Patient/{pid}")))),
            None => Err(NOT_CONFINED.into()),
        },
    }
}

/// Which patient a reference search value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    InContext,
    /// A Patient other than the one in context, or a bare id other than it (which may be one).
    OtherPatient,
    /// Another resource type, or a value this module does not recognise: never confining.
    NotAPatient,
}

/// Which patient `value` names; the base of an absolute reference is not looked at (module doc).
fn classify_reference(value: &str, type_modifier: Option<&str>, pid: &str) -> Named {
    let Some(r) = parse_reference(value) else {
        return Named::NotAPatient;
    };
    let resource_type = match (type_modifier, r.resource_type.as_deref()) {
        (None, t) => t,
        (Some(m), None) => Some(m),
        (Some(m), Some(t)) if m == t => Some(t),
        (Some(_), Some(_)) => return Named::NotAPatient,
    };
    match resource_type {
        None | Some("Patient") if r.id == pid => Named::InContext,
        None | Some("Patient") => Named::OtherPatient,
        Some(_) => Named::NotAPatient,
    }
}

/// Whether `rt` is in the R4 Patient compartment (including `Patient` itself).
pub(super) fn is_compartment_type(rt: &str) -> bool {
    patient_compartment_params(rt).is_some()
}

/// Whether R4 defines `patient` on `rt` as the `clinical-patient` parameter (subject restricted to
/// Patient) while the compartment table lists only `subject` for it.
fn has_clinical_patient_param(rt: &str) -> bool {
    CLINICAL_PATIENT_BASES.binary_search(&rt).is_ok()
}

/// Bases of the R4 `clinical-patient` search parameter (`patient`), sorted.
const CLINICAL_PATIENT_BASES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "ClinicalImpression",
    "Composition",
    "Condition",
    "Consent",
    "DetectedIssue",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EpisodeOfCare",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "ImagingStudy",
    "Immunization",
    "List",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "NutritionOrder",
    "Observation",
    "Procedure",
    "RiskAssessment",
    "ServiceRequest",
    "SupplyDelivery",
    "VisionPrescription",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compartment_membership_follows_the_r4_patient_compartment() {
        let cases = [
            ("Patient", true),
            ("Observation", true),
            ("Encounter", true),
            ("Group", true),
            ("Practitioner", false),
            ("Organization", false),
            ("Medication", false),
            ("Location", false),
            ("ValueSet", false),
            ("observation", false),
        ];
        for (rt, member) in cases {
            assert_eq!(is_compartment_type(rt), member, "{rt}");
        }
    }

    #[test]
    fn clinical_patient_bases_are_sorted_compartment_types() {
        assert!(CLINICAL_PATIENT_BASES.windows(2).all(|w| w[0] < w[1]));
        assert!(CLINICAL_PATIENT_BASES.iter().all(|t| is_compartment_type(t)));
    }

    #[test]
    fn classifies_which_patient_a_value_names() {
        let cases: &[(&str, Option<&str>, Named)] = &[
            ("123", None, Named::InContext),
            ("Patient/123", None, Named::InContext),
            ("https://x/fhir/Patient/123", None, Named::InContext),
            ("123", Some("Patient"), Named::InContext),
            ("Patient/123", Some("Patient"), Named::InContext),
            ("456", None, Named::OtherPatient),
            ("Patient/456", None, Named::OtherPatient),
            ("456", Some("Patient"), Named::OtherPatient),
            ("Group/123", None, Named::NotAPatient),
            ("123", Some("Group"), Named::NotAPatient),
            ("Patient/123", Some("Group"), Named::NotAPatient),
            // A version-specific reference names the same patient (the version is dropped).
            ("Patient/123/_history/1", None, Named::InContext),
            ("Patient/456/_history/1", None, Named::OtherPatient),
            ("https://x/fhir/Patient/123/_history/1", None, Named::InContext),
            // Any base counts: the edge does not know the server's public base.
            ("http://elsewhere.example/Patient/123", None, Named::InContext),
            (
                "https://elsewhere.example/r4/Patient/456",
                None,
                Named::OtherPatient,
            ),
            ("https://x/fhir/Patient/123", Some("Patient"), Named::InContext),
            ("https://x/fhir/Group/123", None, Named::NotAPatient),
            // Not a reference this module reads: never confining, never refused as another patient.
            ("ftp://x/fhir/Patient/123", None, Named::NotAPatient),
            (
                "urn:uuid:6c3b8a2e-6d5f-4b8e-9a7c-0f1e2d3c4b5a",
                None,
                Named::NotAPatient,
            ),
            ("fhir/Patient/456", None, Named::NotAPatient),
            ("patient/456", None, Named::NotAPatient),
            ("Foo/456", None, Named::NotAPatient),
            ("https://x/fhir/Patient/456?y=1", None, Named::NotAPatient),
            ("Patient/4 56", None, Named::NotAPatient),
            ("", None, Named::NotAPatient),
        ];
        for (value, modifier, expected) in cases {
            assert_eq!(
                classify_reference(value, *modifier, "123"),
                *expected,
                "{value} {modifier:?}"
            );
        }
    }
}
