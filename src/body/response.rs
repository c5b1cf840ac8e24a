//! Response checks: what a read, history, search or batch returns must be within the grant.
//!
//! Only 2xx responses with a body are checked (errors and empty bodies carry no resource). The
//! body must be FHIR JSON (strict: duplicate member names refused) within
//! `max_response_body_bytes`; anything else is withheld with a 502 (the edge cannot tell what it
//! would disclose).
//!
//! A resource is *within the grant* of an [`Access`] when
//!
//! * its type is granted the permission in the access's context — `s` for a search's `match`
//!   entries, `r` for everything else (reads, includes, history versions) — by a plain scope, or
//!   by a granular scope whose constraints the resource meets ([`super::granular`]), or, for
//!   `match` entries of the searched type, by a granular scope the query itself carried; and
//! * under patient-level grants, a compartment resource is in the patient's compartment
//!   ([`super::membership`]; a `Patient` only when it is the patient).
//!
//! * A read or vread whose resource is not within the grant is answered 403 (or 404 with
//!   `response_denial: not-found`); one that is not the resource asked for, 502.
//! * Searchsets (`_include`, `_revinclude` and `:iterate` entries alike): entries not within the
//!   grant are removed, `total` is lowered by the removed `match` entries, and an OperationOutcome
//!   entry (`search.mode` = `outcome`) says how many were withheld. Paging links are kept only
//!   when they point under one of the `fhir_base_urls` (or `fhir_base` as a path): each page comes
//!   back through the edge and is checked again.
//! * Instance history: versions not within the grant are removed the same way (without an outcome
//!   entry: history entries must carry `request` and `response`); when no version is left, the
//!   response is refused as a read would be.
//! * Batch and transaction responses: entry `i` is checked with the check of request entry `i`;
//!   an entry not within the grant is replaced by a `403`/`404` entry with an OperationOutcome.
//!
//! Everything the response keeps is passed on byte for byte: only the members that change
//! (`entry`, `total`, `link`) are rewritten.

use std::fmt::Write as _;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use super::granular::granted_by_granular;
use super::membership::{in_patient_compartment, resource_type_of, Membership, Resolver};
use super::{is_json, media_type, Access, ResponseCheck};
use crate::config::{Config, ResponseDenial};
use crate::denial::{Denial, ForbiddenReason};
use crate::outcome::{IssueSeverity, IssueType, OperationOutcome};
use crate::scope::{GrantedScopes, Permission};
use crate::token::json::parse_value;

/// What to do with a checked response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseVerdict {
    /// Pass the response on unchanged.
    Pass,
    /// Replace the body with this one (same content type; `Content-Length` changes).
    Replace(String),
    /// Replace the whole response with this denial.
    Deny(Denial),
}

/// Checks a response body against what [`Authorized::response_check`](crate::authz::Authorized)
/// asked for.
pub fn check_response(
    check: &ResponseCheck,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
    granted: &GrantedScopes,
    config: &Config,
) -> ResponseVerdict {
    if !(200..300).contains(&status) || body.iter().all(u8::is_ascii_whitespace) {
        return ResponseVerdict::Pass;
    }
    if body.len() > config.max_response_body_bytes {
        return ResponseVerdict::Deny(Denial::ResponseUnverifiable(
            "the response is larger than the edge reads",
        ));
    }
    if !is_json(media_type(content_type).as_deref()) {
        return ResponseVerdict::Deny(Denial::ResponseUnverifiable("the response is not FHIR JSON"));
    }
    let (Ok(value), Ok(text)) = (parse_value(body), std::str::from_utf8(body)) else {
        return ResponseVerdict::Deny(Denial::ResponseUnverifiable(
            "the response is not valid JSON (or repeats a member name)",
        ));
    };
    let checker = Checker { granted, config };
    match checker.check(check, &value, text) {
        Ok(None) => ResponseVerdict::Pass,
        Ok(Some(replacement)) => ResponseVerdict::Replace(replacement),
        Err(d) => ResponseVerdict::Deny(d),
    }
}

struct Checker<'a> {
    granted: &'a GrantedScopes,
    config: &'a Config,
}

/// Why one resource is not within the grant.
enum Outside {
    /// Its type is not granted (or it meets no granular scope).
    Scope,
    /// It is outside the patient's compartment.
    Compartment,
    /// It cannot be read.
    Unreadable,
}

const UNVERIFIABLE_BUNDLE: Denial =
    Denial::ResponseUnverifiable("the response Bundle is not what was asked for");

impl Checker<'_> {
    /// `Ok(None)`: pass unchanged; `Ok(Some(text))`: replace; `Err`: refuse.
    fn check(&self, check: &ResponseCheck, value: &Value, text: &str) -> Result<Option<String>, Denial> {
        match check {
            ResponseCheck::Resource {
                access,
                resource_type,
                id,
            } => {
                let rt = resource_type_of(value).ok();
                let same_id = value.get("id").and_then(Value::as_str) == Some(id.as_str());
                if rt != Some(resource_type.as_str()) || !same_id {
                    return Err(Denial::ResponseUnverifiable(
                        "the response is not the resource that was read",
                    ));
                }
                match self.within(value, access, Permission::Read, false, None) {
                    Ok(()) => Ok(None),
                    Err(o) => Err(self.denial(o)),
                }
            }
            ResponseCheck::History { access } => self.filter(value, text, access, None, BundleKind::History),
            ResponseCheck::Searchset { access, vouched } => {
                self.filter(value, text, access, vouched.as_deref(), BundleKind::Searchset)
            }
            ResponseCheck::BatchResponse(checks) => self.batch(value, text, checks),
        }
    }

    /// Whether one resource is within the grant of `access`.
    fn within(
        &self,
        resource: &Value,
        access: &Access,
        permission: Permission,
        is_match: bool,
        vouched: Option<&str>,
    ) -> Result<(), Outside> {
        let rt = resource_type_of(resource).map_err(|_| Outside::Unreadable)?;
        let ctx = access.context;
        let typed = self.granted.permissions(ctx, Some(rt)).contains(permission)
            || (is_match
                && vouched == Some(rt)
                && self
                    .granted
                    .granular(ctx, Some(rt))
                    .any(|s| s.permissions.contains(permission)))
            || granted_by_granular(resource, rt, ctx, permission, self.granted);
        if !typed {
            return Err(Outside::Scope);
        }
        if let Some(pid) = &access.patient {
            let resolver = Resolver {
                base_urls: &self.config.fhir_base_urls,
                bundle: &[],
            };
            match in_patient_compartment(resource, pid, &resolver) {
                Ok(Membership::In | Membership::NotACompartmentType) => {}
                Ok(Membership::NotIn | Membership::OtherPatient) => return Err(Outside::Compartment),
                Err(_) => return Err(Outside::Unreadable),
            }
        }
        Ok(())
    }

    /// The denial for a resource outside the grant, as configured.
    fn denial(&self, o: Outside) -> Denial {
        let (reason, detail) = match o {
            Outside::Scope => (
                ForbiddenReason::InsufficientScope,
                "the resource is not within the granted scopes",
            ),
            Outside::Compartment => (
                ForbiddenReason::OutsidePatientCompartment,
                "the resource is outside the patient's compartment",
            ),
            Outside::Unreadable => {
                return Denial::ResponseUnverifiable("the resource cannot be read for its compartment")
            }
        };
        match self.config.response_denial {
            ResponseDenial::NotFound => Denial::Withheld,
            ResponseDenial::Forbidden => Denial::Forbidden {
                reason,
                scope: None,
                detail: detail.to_string(),
            },
        }
    }

    /// Filters a searchset or history Bundle.
    fn filter(
        &self,
        value: &Value,
        text: &str,
        access: &Access,
        vouched: Option<&str>,
        kind: BundleKind,
    ) -> Result<Option<String>, Denial> {
        if value.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || value.get("type").and_then(Value::as_str) != Some(kind.bundle_type())
        {
            return Err(UNVERIFIABLE_BUNDLE);
        }
        let entries: &[Value] = match value.get("entry") {
            None => &[],
            Some(Value::Array(e)) => e,
            Some(_) => return Err(UNVERIFIABLE_BUNDLE),
        };
        let mut keep = Vec::with_capacity(entries.len());
        let mut removed_matches = 0u64;
        let mut first_outside = None;
        for entry in entries {
            let mode = entry
                .get("search")
                .and_then(|s| s.get("mode"))
                .and_then(Value::as_str);
            let verdict = match (entry.get("resource"), mode) {
                (Some(r), Some("outcome"))
                    if r.get("resourceType").and_then(Value::as_str) == Some("OperationOutcome") =>
                {
                    Ok(())
                }
                // A history entry without a resource is a deletion: decided below.
                (None, _) if kind == BundleKind::History => {
                    keep.push(Keep::Deletion);
                    continue;
                }
                (None, _) => Err(Outside::Unreadable),
                (Some(r), Some("match")) => self.within(r, access, Permission::Search, true, vouched),
                (Some(r), _) => self.within(r, access, Permission::Read, false, None),
            };
            match verdict {
                Ok(()) => keep.push(Keep::Yes),
                Err(o) => {
                    // `total` counts matches (searchset) or versions (history).
                    if mode == Some("match") || kind == BundleKind::History {
                        removed_matches += 1;
                    }
                    first_outside.get_or_insert(o);
                    keep.push(Keep::No);
                }
            }
        }
        let kept_resources = keep.iter().filter(|k| **k == Keep::Yes).count();
        let removed = keep.iter().filter(|k| **k == Keep::No).count();
        if kind == BundleKind::History && removed > 0 && kept_resources == 0 {
            return Err(self.denial(first_outside.unwrap_or(Outside::Scope)));
        }
        let links = self.kept_links(value);
        if removed == 0 && links.is_none() {
            return Ok(None);
        }
        let members = ordered_members(text).map_err(|_| UNVERIFIABLE_BUNDLE)?;
        let raw_entries = match members.iter().find(|(k, _)| k == "entry") {
            Some((_, raw)) => raw_array(raw.get()).map_err(|_| UNVERIFIABLE_BUNDLE)?,
            None => Vec::new(),
        };
        if raw_entries.len() != keep.len() {
            return Err(UNVERIFIABLE_BUNDLE);
        }
        let mut new_entries: Vec<String> = raw_entries
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k != Keep::No)
            .map(|(raw, _)| raw.get().to_string())
            .collect();
        // History entries need `request` and `response` (R4 bdl-… rules): no outcome entry there.
        if removed > 0 && kind == BundleKind::Searchset {
            new_entries.push(withheld_entry(removed));
        }
        let total = match value.get("total") {
            Some(Value::Number(n)) => n.as_u64().map(|t| t.saturating_sub(removed_matches)),
            _ => None,
        };
        let mut replace: Vec<(&str, String)> = vec![("entry", format!("[{}]", new_entries.join(",")))];
        if let Some(t) = total {
            replace.push(("total", t.to_string()));
        }
        if let Some(l) = links {
            replace.push(("link", l));
        }
        Ok(Some(rebuild(&members, &replace)))
    }

    /// The `link` array with the links that leave this server removed; `None` when none is.
    fn kept_links(&self, value: &Value) -> Option<String> {
        let links = value.get("link")?.as_array()?;
        let kept: Vec<&Value> = links
            .iter()
            .filter(|l| {
                l.get("url")
                    .and_then(Value::as_str)
                    .is_some_and(|u| self.is_ours(u))
            })
            .collect();
        if kept.len() == links.len() {
            return None;
        }
        Some(Value::Array(kept.into_iter().cloned().collect()).to_string())
    }

    /// Whether a link URL points under this server's base.
    fn is_ours(&self, url: &str) -> bool {
        let under = |base: &str| {
            url.strip_prefix(base)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?']))
        };
        let path_base = if self.config.fhir_base.is_empty() {
            "/"
        } else {
            self.config.fhir_base.as_str()
        };
        if url.starts_with('/') && !url.starts_with("//") {
            return !url.contains("/../") && under(path_base);
        }
        !url.contains("/../") && self.config.fhir_base_urls.iter().any(|b| under(b))
    }

    /// Checks a batch/transaction response entry by entry.
    fn batch(
        &self,
        value: &Value,
        text: &str,
        checks: &[Option<ResponseCheck>],
    ) -> Result<Option<String>, Denial> {
        if value.get("resourceType").and_then(Value::as_str) != Some("Bundle")
            || !matches!(
                value.get("type").and_then(Value::as_str),
                Some("batch-response" | "transaction-response")
            )
        {
            return Err(UNVERIFIABLE_BUNDLE);
        }
        let entries: &[Value] = match value.get("entry") {
            Some(Value::Array(e)) => e,
            _ => return Err(UNVERIFIABLE_BUNDLE),
        };
        if entries.len() != checks.len() {
            return Err(UNVERIFIABLE_BUNDLE);
        }
        let members = ordered_members(text).map_err(|_| UNVERIFIABLE_BUNDLE)?;
        let raw_entries = match members.iter().find(|(k, _)| k == "entry") {
            Some((_, raw)) => raw_array(raw.get()).map_err(|_| UNVERIFIABLE_BUNDLE)?,
            None => Vec::new(),
        };
        if raw_entries.len() != entries.len() {
            return Err(UNVERIFIABLE_BUNDLE);
        }
        let mut changed = false;
        let mut out = Vec::with_capacity(entries.len());
        for ((entry, raw), check) in entries.iter().zip(&raw_entries).zip(checks) {
            let (Some(check), Some(resource)) = (check, entry.get("resource")) else {
                out.push(raw.get().to_string());
                continue;
            };
            let resource_text = entry_member(raw.get(), "resource").map_err(|_| UNVERIFIABLE_BUNDLE)?;
            let replaced = match self.check(check, resource, &resource_text) {
                Ok(None) => None,
                Ok(Some(new_resource)) => {
                    let entry_members = ordered_members(raw.get()).map_err(|_| UNVERIFIABLE_BUNDLE)?;
                    Some(rebuild(&entry_members, &[("resource", new_resource)]))
                }
                Err(d) => Some(refused_entry(&d)),
            };
            match replaced {
                Some(e) => {
                    changed = true;
                    out.push(e);
                }
                None => out.push(raw.get().to_string()),
            }
        }
        if !changed {
            return Ok(None);
        }
        Ok(Some(rebuild(
            &members,
            &[("entry", format!("[{}]", out.join(",")))],
        )))
    }
}

/// Which Bundle a filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BundleKind {
    Searchset,
    History,
}

impl BundleKind {
    fn bundle_type(self) -> &'static str {
        match self {
            BundleKind::Searchset => "searchset",
            BundleKind::History => "history",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    Yes,
    No,
    /// A history deletion entry (no resource): kept with the versions that are.
    Deletion,
}

/// The OperationOutcome entry saying entries were withheld.
fn withheld_entry(removed: usize) -> String {
    let oo = OperationOutcome {
        issues: vec![crate::outcome::Issue {
            severity: IssueSeverity::Information,
            code: IssueType::Suppressed,
            diagnostics: format!("{removed} entries were withheld: outside the access granted to this token"),
            expression: None,
        }],
        request_id: None,
    };
    format!(
        "{{\"resource\":{},\"search\":{{\"mode\":\"outcome\"}}}}",
        oo.to_json()
    )
}

/// A batch/transaction response entry replacing one not within the grant.
fn refused_entry(d: &Denial) -> String {
    let r = d.reply("");
    let status = match r.status {
        403 => "403 Forbidden",
        404 => "404 Not Found",
        _ => "502 Bad Gateway",
    };
    let oo = OperationOutcome::single(r.severity, r.code, r.diagnostics);
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"response\":{{\"status\":{},\"outcome\":{}}}}}",
        Value::from(status),
        oo.to_json()
    );
    out
}

/// The members of a JSON object, in document order, each as its raw text.
type Members = Vec<(String, Box<RawValue>)>;

fn ordered_members(text: &str) -> Result<Members, serde_json::Error> {
    let OrderedMembers(m) = serde_json::from_str(text)?;
    Ok(m)
}

fn raw_array(text: &str) -> Result<Vec<Box<RawValue>>, serde_json::Error> {
    serde_json::from_str(text)
}

/// The raw text of one member of an object.
fn entry_member(text: &str, name: &str) -> Result<String, serde_json::Error> {
    let members = ordered_members(text)?;
    Ok(members
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.get().to_string())
        .unwrap_or_default())
}

/// The object again, with the named members' values replaced (members not present are added at
/// the end), every other member byte for byte.
fn rebuild(members: &Members, replace: &[(&str, String)]) -> String {
    let mut out = String::from("{");
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&Value::from(key).to_string());
        out.push(':');
        out.push_str(value);
    };
    for (key, raw) in members {
        match replace.iter().find(|(k, _)| k == key) {
            Some((_, v)) => push(&mut out, key, v),
            None => push(&mut out, key, raw.get()),
        }
    }
    for (key, value) in replace {
        if !members.iter().any(|(k, _)| k == key) {
            push(&mut out, key, value);
        }
    }
    out.push('}');
    out
}

/// An object's members in order, as raw JSON text.
struct OrderedMembers(Members);

impl<'de> Deserialize<'de> for OrderedMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedMembers;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<OrderedMembers, A::Error> {
                let mut members: Members = Vec::new();
                while let Some(key) = access.next_key::<String>()? {
                    if members.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom("duplicate member name"));
                    }
                    let value: Box<RawValue> = access.next_value()?;
                    members.push((key, value));
                }
                Ok(OrderedMembers(members))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests;
