//! Patient compartment membership of a resource, read from its JSON.
//!
//! The elements that make a resource a member of a Patient's compartment are those of the R4
//! compartment parameters (`data/patient_compartment_r4.json`), as the R4 SearchParameter
//! expressions name them (`data/patient_compartment_paths_r4.json`, derived by
//! `data/tools/derive_r4_paths.py` and checked against the compartment table at build time):
//! Observation `subject` and `performer`, Encounter `subject`, Appointment `participant.actor`, ...
//! A `where(resolve() is Patient)` restriction is implied: only references to a Patient count.
//!
//! References are read as FHIR R4 defines them (`references.html`):
//!
//! * `Patient/123` and `Patient/123/_history/2` name patient `123` of this server;
//! * an absolute `http(s)://…/Patient/123` names it only when it starts with one of the configured
//!   `fhir_base_urls`; under any other base it is a patient of another server ([`PatientRef::External`]);
//! * `#id` (contained) and references to other types name no patient;
//! * `urn:uuid:`/`urn:oid:` and absolute `fullUrl`s resolve to the entries of the Bundle being checked;
//! * what cannot be resolved (a logical reference by `identifier` to a Patient or to an untyped
//!   target, a conditional `Patient?identifier=…`, an unknown `urn:`, a bare id, a `type` that
//!   contradicts the reference) is [`PatientRef::Unresolved`]: callers treat it as possibly another
//!   patient. A `display`-only reference names nothing.
//!
//! A Patient is in its own compartment by its `id`; for access decisions this module does not let
//! `Patient.link.other` make another Patient a member (a linked record is another patient).

use serde_json::Value;

use crate::fhir::compartment::patient_compartment_params;
use crate::fhir::query::{is_fhir_id, parse_reference};
use crate::fhir::resource_types::is_resource_type;

/// The compartment parameters of one type: name -> element paths.
type ParamPaths = &'static [(&'static str, &'static [&'static str])];

include!(concat!(env!("OUT_DIR"), "/r4_compartment_paths.rs"));

/// The compartment parameters of `resource_type` with the element paths they read; `None` when
/// the type is not in the Patient compartment.
pub fn compartment_paths(resource_type: &str) -> Option<ParamPaths> {
    COMPARTMENT_PATHS
        .binary_search_by(|(name, _)| (*name).cmp(resource_type))
        .ok()
        .and_then(|i| COMPARTMENT_PATHS.get(i))
        .map(|(_, params)| *params)
}

/// Every element path that makes a resource of `resource_type` a compartment member.
pub fn member_paths(resource_type: &str) -> impl Iterator<Item = &'static str> {
    compartment_paths(resource_type)
        .unwrap_or(&[])
        .iter()
        .flat_map(|(_, paths)| paths.iter().copied())
}

/// Why a resource could not be read for membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipError {
    /// Not a JSON object with a string `resourceType`.
    NotAResource,
    /// `resourceType` is not an R4 resource type.
    UnknownResourceType,
    /// A compartment element is not shaped as FHIR JSON says (not an object, `null`, a
    /// non-string `reference`): which problem.
    Malformed(&'static str),
}

impl std::fmt::Display for MembershipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipError::NotAResource => f.write_str("not a FHIR resource"),
            MembershipError::UnknownResourceType => f.write_str("not an R4 resource type"),
            MembershipError::Malformed(what) => write!(f, "malformed compartment element: {what}"),
        }
    }
}

/// What a reference in a compartment element names, when it may be a Patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatientRef {
    /// A Patient of this server, by id.
    Local(String),
    /// A Patient under a base that is not this server's.
    External,
    /// Possibly a Patient, but which one cannot be told.
    Unresolved,
}

/// The target of one Bundle entry, for resolving `fullUrl` references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleTarget {
    /// `entry.fullUrl`.
    pub full_url: String,
    pub resource_type: String,
    /// The id the entry's resource will have on this server (an update's), if known.
    pub id: Option<String>,
}

/// Where references resolve: this server's absolute bases and a Bundle's entries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolver<'a> {
    /// Absolute bases of this FHIR server (`https://ehr.example/fhir`), without trailing `/`.
    pub base_urls: &'a [String],
    /// The entries of the Bundle the resource travels in.
    pub bundle: &'a [BundleTarget],
}

/// Membership of a resource in one patient's compartment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// A compartment element references the patient (for `Patient`: it is the patient).
    In,
    /// No compartment element names any patient.
    NotIn,
    /// Compartment elements name only patients other than this one (or ones that cannot be told).
    OtherPatient,
    /// The type is not in the Patient compartment.
    NotACompartmentType,
}

/// The resource type of a resource, when it is an R4 one.
pub fn resource_type_of(resource: &Value) -> Result<&str, MembershipError> {
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(MembershipError::NotAResource)?;
    if is_resource_type(rt) {
        Ok(rt)
    } else {
        Err(MembershipError::UnknownResourceType)
    }
}

/// The patients a resource's compartment elements reference (for `Patient`: its `link.other`),
/// in document order. Empty for types outside the compartment.
pub fn patient_references(
    resource: &Value,
    resolver: &Resolver<'_>,
) -> Result<Vec<PatientRef>, MembershipError> {
    let rt = resource_type_of(resource)?;
    let mut out = Vec::new();
    for path in member_paths(rt) {
        references_at(resource, path, resolver, &mut out)?;
    }
    Ok(out)
}

/// Whether `resource` is in the compartment of patient `patient_id`.
pub fn in_patient_compartment(
    resource: &Value,
    patient_id: &str,
    resolver: &Resolver<'_>,
) -> Result<Membership, MembershipError> {
    let rt = resource_type_of(resource)?;
    if patient_compartment_params(rt).is_none() {
        return Ok(Membership::NotACompartmentType);
    }
    if rt == "Patient" {
        return Ok(match resource.get("id") {
            None => Membership::NotIn,
            Some(Value::String(id)) if id == patient_id => Membership::In,
            Some(Value::String(_)) => Membership::OtherPatient,
            Some(_) => return Err(MembershipError::Malformed("Patient.id is not a string")),
        });
    }
    let refs = patient_references(resource, resolver)?;
    Ok(if refs.iter().any(|r| is_patient(r, patient_id)) {
        Membership::In
    } else if refs.is_empty() {
        Membership::NotIn
    } else {
        Membership::OtherPatient
    })
}

/// Whether `r` names patient `patient_id` of this server.
pub fn is_patient(r: &PatientRef, patient_id: &str) -> bool {
    matches!(r, PatientRef::Local(id) if id == patient_id)
}

/// Collects the patient references at `path` (dotted, arrays flattened at every step) below `value`.
pub(crate) fn references_at(
    value: &Value,
    path: &str,
    resolver: &Resolver<'_>,
    out: &mut Vec<PatientRef>,
) -> Result<(), MembershipError> {
    let mut nodes: Vec<&Value> = vec![value];
    for step in path.split('.') {
        let mut next = Vec::new();
        for node in nodes {
            let Value::Object(map) = node else {
                return Err(MembershipError::Malformed(
                    "an element on the path is not an object",
                ));
            };
            match map.get(step) {
                None => {}
                Some(Value::Array(items)) => next.extend(items.iter()),
                Some(Value::Null) => return Err(MembershipError::Malformed("null element")),
                Some(v) => next.push(v),
            }
        }
        nodes = next;
    }
    for node in nodes {
        if let Some(r) = read_reference(node, resolver)? {
            out.push(r);
        }
    }
    Ok(())
}

/// Reads one `Reference` value; `None` when it names no patient.
pub(crate) fn read_reference(
    node: &Value,
    resolver: &Resolver<'_>,
) -> Result<Option<PatientRef>, MembershipError> {
    let Value::Object(map) = node else {
        return Err(MembershipError::Malformed("a Reference is not an object"));
    };
    let declared = match map.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(_) => return Err(MembershipError::Malformed("Reference.type is not a string")),
    };
    let reference = match map.get("reference") {
        None => {
            // A logical reference (identifier) may name a patient unless its type says otherwise.
            let logical = map.contains_key("identifier");
            return Ok(match declared {
                Some(t) if t != "Patient" && is_resource_type(t) => None,
                _ if logical => Some(PatientRef::Unresolved),
                Some("Patient") => Some(PatientRef::Unresolved),
                _ => None,
            });
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(MembershipError::Malformed("Reference.reference is not a string")),
    };
    let (rt, id) = match resolve(reference, resolver) {
        Resolved::Typed(rt, id) => (rt, id),
        Resolved::Contained => return Ok(None),
        Resolved::External(rt) => {
            return Ok(match declared {
                Some(t) if t != rt => Some(PatientRef::Unresolved),
                _ if rt == "Patient" => Some(PatientRef::External),
                _ => None,
            })
        }
        Resolved::Unresolved => {
            // A conditional reference (`Practitioner?identifier=…`) still names its type.
            let named = reference.split(['?', '/']).next().filter(|t| is_resource_type(t));
            let t = match (declared, named) {
                (Some(d), Some(n)) if d != n => return Ok(Some(PatientRef::Unresolved)),
                (d, n) => d.or(n),
            };
            return Ok(match t {
                Some(t) if t != "Patient" && is_resource_type(t) => None,
                _ => Some(PatientRef::Unresolved),
            });
        }
    };
    if declared.is_some_and(|t| t != rt) {
        return Ok(Some(PatientRef::Unresolved));
    }
    Ok(match (rt.as_str(), id) {
        ("Patient", Some(id)) => Some(PatientRef::Local(id)),
        ("Patient", None) => Some(PatientRef::Unresolved),
        _ => None,
    })
}

/// A reference string, resolved.
enum Resolved {
    /// A resource of this server (or of the Bundle): type, and id when known.
    Typed(String, Option<String>),
    /// A resource of another server, by type.
    External(String),
    /// `#id`.
    Contained,
    Unresolved,
}

fn resolve(reference: &str, resolver: &Resolver<'_>) -> Resolved {
    if reference.starts_with('#') {
        return Resolved::Contained;
    }
    if let Some(t) = resolver.bundle.iter().find(|t| t.full_url == reference) {
        return Resolved::Typed(t.resource_type.clone(), t.id.clone());
    }
    if reference.starts_with("urn:") {
        return Resolved::Unresolved;
    }
    let relative = if reference.starts_with("http://") || reference.starts_with("https://") {
        match resolver.base_urls.iter().find_map(|b| under_base(reference, b)) {
            Some(rest) => rest,
            None => {
                return match parse_reference(reference) {
                    Some(r) => r.resource_type.map_or(Resolved::Unresolved, Resolved::External),
                    None => Resolved::Unresolved,
                }
            }
        }
    } else {
        reference
    };
    match parse_reference(relative) {
        Some(r) if r.base.is_none() => match r.resource_type {
            Some(rt) if is_fhir_id(&r.id) => Resolved::Typed(rt, Some(r.id)),
            _ => Resolved::Unresolved,
        },
        _ => Resolved::Unresolved,
    }
}

/// The part of absolute `url` after `base` and its `/`, when `url` is under `base`.
pub(crate) fn under_base<'u>(url: &'u str, base: &str) -> Option<&'u str> {
    let rest = url.strip_prefix(base)?;
    rest.strip_prefix('/')
}

#[cfg(test)]
mod tests;
