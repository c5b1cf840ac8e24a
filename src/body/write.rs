//! Write bodies (create, update, patch) under patient-level and granular grants.
//!
//! A resource body (`application/fhir+json` or `application/json`, strict JSON: duplicate member
//! names refused) must:
//!
//! * be of the URL's type; for an update, carry the URL's id (R4 `http.html#update`);
//! * under patient-level grants, for a compartment type: reference the patient in context in its
//!   compartment elements, and nothing but that patient in any of them (an unresolvable reference
//!   there counts as another patient); a `Patient` must be the patient itself and link to no other
//!   patient; a conditional update must not carry an `id` (with no match, R4 updates-as-create that
//!   id, which may be another patient's resource);
//! * under granular-only grants, meet a granular scope of the context that grants the permission
//!   ([`super::granular`]).
//!
//! A JSON Patch body (`application/json-patch+json`, RFC 6902) on a resource known to be in the
//! patient's compartment must not move it out: `remove`, `move` and `copy` touching a compartment
//! element (or anything containing one) are refused, so are operations on `id`, `resourceType`, the
//! whole resource, or inside a compartment reference; `add` and `replace` of a compartment element
//! (or of something containing one) must bring references to the patient in context only, at least
//! one. FHIRPath Patch (a `Parameters` body) is refused under patient-level grants: its paths are
//! FHIRPath expressions the edge does not evaluate.

use serde_json::Value;

use super::granular::granted_by_granular;
use super::membership::{
    is_patient, member_paths, patient_references, read_reference, references_at, resource_type_of,
    PatientRef, Resolver,
};
use super::{is_json, malformed, media_type, not_enforceable, outside, WriteCheck, WriteMode};
use crate::config::Config;
use crate::denial::{Denial, ForbiddenReason};
use crate::scope::{GrantedScopes, Permission};
use crate::token::json::parse_value;

/// Checks a write body against its [`WriteCheck`].
pub fn check(
    w: &WriteCheck,
    content_type: Option<&str>,
    body: &[u8],
    granted: &GrantedScopes,
    config: &Config,
) -> Result<(), Denial> {
    let media = media_type(content_type);
    let resolver = Resolver {
        base_urls: &config.fhir_base_urls,
        bundle: &[],
    };
    if w.mode == WriteMode::Patch {
        return match media.as_deref() {
            Some("application/json-patch+json") => check_json_patch(w, &parse_json(body)?, &resolver),
            m if is_json(m) => Err(not_enforceable("FHIRPath Patch (a Parameters body)")),
            _ => Err(not_enforceable("a patch body that is not JSON Patch")),
        };
    }
    if !is_json(media.as_deref()) {
        return Err(not_enforceable("a write body that is not FHIR JSON"));
    }
    check_resource(w, &parse_json(body)?, granted, &resolver)
}

/// Strict JSON (duplicate member names refused).
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, Denial> {
    parse_value(body).map_err(|_| malformed("the body is not valid JSON (or repeats a member name)"))
}

/// Checks a resource to be created or updated.
pub fn check_resource(
    w: &WriteCheck,
    resource: &Value,
    granted: &GrantedScopes,
    resolver: &Resolver<'_>,
) -> Result<(), Denial> {
    let rt = resource_type_of(resource).map_err(|_| malformed("the body is not an R4 resource"))?;
    if rt != w.resource_type {
        return Err(malformed("the body's resourceType does not match the URL"));
    }
    let body_id = match resource.get("id") {
        None => None,
        Some(Value::String(id)) => Some(id.as_str()),
        Some(_) => return Err(malformed("the body's id is not a string")),
    };
    match &w.mode {
        WriteMode::Update { id } if body_id != Some(id.as_str()) => {
            return Err(malformed("the body's id does not match the URL"))
        }
        WriteMode::ConditionalUpdate if w.patient.is_some() && body_id.is_some() => {
            return Err(not_enforceable(
                "a conditional update whose body carries an id (with no match it may overwrite that id)",
            ))
        }
        _ => {}
    }
    if let Some(pid) = &w.patient {
        let refs = patient_references(resource, resolver)
            .map_err(|_| malformed("a compartment element of the body is not shaped as FHIR JSON"))?;
        if rt == "Patient" {
            if body_id.is_some_and(|id| id != pid) {
                return Err(outside("the body is another patient"));
            }
            if !refs.iter().all(|r| is_patient(r, pid)) {
                return Err(outside("the body links to another patient"));
            }
        } else if refs.is_empty() {
            return Err(outside(
                "the body is in no patient's compartment: it must reference the patient in context",
            ));
        } else if !refs.iter().all(|r| is_patient(r, pid)) {
            return Err(outside(
                "the body references another patient in a compartment element",
            ));
        }
    }
    if let Some(ctx) = w.granular {
        let permission = match w.mode {
            WriteMode::Create => Permission::Create,
            WriteMode::Update { .. } | WriteMode::ConditionalUpdate | WriteMode::Patch => Permission::Update,
        };
        if !granted.permissions(ctx, Some(rt)).contains(permission)
            && !granted_by_granular(resource, rt, ctx, permission, granted)
        {
            return Err(Denial::Forbidden {
                reason: ForbiddenReason::InsufficientScope,
                scope: None,
                detail: format!(
                    "the {} body does not meet the constraints of the granted granular scopes",
                    permission.name()
                ),
            });
        }
    }
    Ok(())
}

/// Checks a JSON Patch (RFC 6902) document applied to a resource in the patient's compartment.
pub fn check_json_patch(w: &WriteCheck, patch: &Value, resolver: &Resolver<'_>) -> Result<(), Denial> {
    let ops = patch
        .as_array()
        .ok_or_else(|| malformed("a JSON Patch body is an array of operations"))?;
    let Some(pid) = &w.patient else {
        return Ok(());
    };
    let members: Vec<Vec<&str>> = member_paths(&w.resource_type)
        .map(|p| p.split('.').collect())
        .collect();
    for op in ops {
        let field = |name: &str| op.get(name).and_then(Value::as_str);
        let (Some(name), Some(path)) = (field("op"), field("path")) else {
            return Err(malformed("a JSON Patch operation lacks op or path"));
        };
        if !matches!(name, "add" | "remove" | "replace" | "move" | "copy" | "test") {
            return Err(malformed("unknown JSON Patch operation"));
        }
        if name == "test" {
            continue;
        }
        let target = pointer_names(path)?;
        if name == "move" {
            let from = pointer_names(field("from").ok_or_else(|| malformed("a move lacks from"))?)?;
            guard_identity(&from)?;
            if members.iter().any(|m| overlaps(&from, m)) {
                return Err(outside("a patch moving a compartment element"));
            }
        }
        guard_identity(&target)?;
        for member in members.iter().filter(|m| overlaps(&target, m)) {
            if target.len() > member.len() {
                return Err(outside("a patch inside a compartment reference"));
            }
            match name {
                "remove" => return Err(outside("a patch removing a compartment element")),
                "move" | "copy" => {
                    return Err(outside("a patch moving or copying into a compartment element"))
                }
                _ => {}
            }
            let value = op
                .get("value")
                .ok_or_else(|| malformed("an add or replace lacks value"))?;
            let rest = member.get(target.len()..).unwrap_or(&[]).join(".");
            let refs = references_in(value, &rest, resolver)?;
            if refs.is_empty() || !refs.iter().all(|r| is_patient(r, pid)) {
                return Err(outside(
                    "a patch of a compartment element must reference the patient in context only",
                ));
            }
        }
    }
    Ok(())
}

/// The patient references in a patched-in `value` at the remaining path below it.
fn references_in(value: &Value, rest: &str, resolver: &Resolver<'_>) -> Result<Vec<PatientRef>, Denial> {
    let shape = |_| malformed("a patched compartment element is not shaped as FHIR JSON");
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        v => vec![v],
    };
    let mut out = Vec::new();
    for item in items {
        if rest.is_empty() {
            if let Some(r) = read_reference(item, resolver).map_err(shape)? {
                out.push(r);
            }
        } else {
            references_at(item, rest, resolver, &mut out).map_err(shape)?;
        }
    }
    Ok(out)
}

/// The element names of a JSON Pointer (RFC 6901), array indices and `-` left out.
fn pointer_names(pointer: &str) -> Result<Vec<String>, Denial> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(malformed("a JSON Pointer does not start with /"));
    };
    let mut names = Vec::new();
    for token in rest.split('/') {
        if token == "-" || (!token.is_empty() && token.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let mut name = String::with_capacity(token.len());
        let mut chars = token.chars();
        while let Some(c) = chars.next() {
            match (c, c == '~') {
                (_, false) => name.push(c),
                (_, true) => match chars.next() {
                    Some('0') => name.push('~'),
                    Some('1') => name.push('/'),
                    _ => return Err(malformed("a JSON Pointer has a bad ~ escape")),
                },
            }
        }
        names.push(name);
    }
    Ok(names)
}

/// Refuses patches of the whole resource, its type or its id.
fn guard_identity(names: &[String]) -> Result<(), Denial> {
    match names.first().map(String::as_str) {
        None => Err(outside("a patch of the whole resource")),
        Some("id" | "resourceType") => Err(outside("a patch of the resource's id or type")),
        _ => Ok(()),
    }
}

/// Whether one path is a prefix of the other (element names compared).
fn overlaps(target: &[String], member: &[&str]) -> bool {
    target.iter().zip(member.iter()).all(|(a, b)| a == b)
}

#[cfg(test)]
mod tests;
