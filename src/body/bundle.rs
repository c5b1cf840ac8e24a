//! Batch and transaction Bundles POSTed to the base, authorized entry by entry.
//!
//! The body must be FHIR JSON (strict: duplicate member names refused) of a `Bundle` whose `type`
//! is `batch` or `transaction`. Each entry is authorized as if it were sent alone:
//!
//! * `request.method` and `request.url` are classified like a request line; `url` is relative to
//!   the base (`Observation/1`, `Observation?identifier=…`; one leading `/` tolerated) or absolute
//!   under one of the configured `fhir_base_urls`, else the entry is refused;
//! * `request.ifNoneExist` makes a create conditional (it then also needs `s`); `ifMatch`,
//!   `ifNoneMatch` and `ifModifiedSince` do not change authorization;
//! * an entry whose authorization asks for a body check has its `resource` checked
//!   ([`super::write`]); references to other entries' `fullUrl` (`urn:uuid:…`) resolve to those
//!   entries (a Patient entry updated by id is that patient; a created Patient is another one);
//!   PATCH entries (a Binary), `POST _search` entries and nested Bundles under such grants are
//!   refused;
//! * a search entry that would need a parameter appended to stay with the patient is refused (the
//!   edge does not rewrite entries): it must name the patient itself.
//!
//! Any refused entry refuses the whole Bundle, with one OperationOutcome issue per refused entry
//! (`expression` `Bundle.entry[i]`). Entries that need a response check are checked in the
//! batch/transaction response, entry by entry.

use serde_json::Value;

use super::membership::{BundleTarget, Resolver};
use super::write::{check_resource, parse_json};
use super::{
    is_json, malformed, media_type, not_enforceable, outside, BodyAllowed, BodyCheck, ResponseCheck,
    WriteMode,
};
use crate::authz;
use crate::claims::VerifiedClaims;
use crate::config::Config;
use crate::decision::classify_denial;
use crate::denial::{Denial, RequestReason};
use crate::fhir::request::classify;
use crate::fhir::{Interaction, Method};
use crate::scope::GrantedScopes;

/// Checks a batch/transaction Bundle body: every entry authorized, or the whole Bundle refused.
pub fn check(
    content_type: Option<&str>,
    body: &[u8],
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<BodyAllowed, Denial> {
    if !is_json(media_type(content_type).as_deref()) {
        return Err(not_enforceable("a Bundle that is not FHIR JSON"));
    }
    let bundle = parse_json(body)?;
    check_bundle(&bundle, claims, granted, config)
}

/// Checks a parsed batch/transaction Bundle.
pub fn check_bundle(
    bundle: &Value,
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<BodyAllowed, Denial> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(malformed("the body POSTed to the base is not a Bundle"));
    }
    if !matches!(
        bundle.get("type").and_then(Value::as_str),
        Some("batch" | "transaction")
    ) {
        return Err(malformed(
            "a Bundle POSTed to the base must be a batch or a transaction",
        ));
    }
    let entries: &[Value] = match bundle.get("entry") {
        None => &[],
        Some(Value::Array(entries)) => entries,
        Some(_) => return Err(malformed("Bundle.entry is not an array")),
    };
    let targets = targets(entries, config);
    let resolver = Resolver {
        base_urls: &config.fhir_base_urls,
        bundle: &targets,
    };
    let mut refused = Vec::new();
    let mut checks = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match check_entry(entry, &resolver, claims, granted, config) {
            Ok(check) => checks.push(check),
            Err(d) => refused.push((i, d)),
        }
    }
    if !refused.is_empty() {
        return Err(Denial::BundleEntries(refused));
    }
    Ok(BodyAllowed {
        append_query: None,
        response_check: checks
            .iter()
            .any(Option::is_some)
            .then_some(ResponseCheck::BatchResponse(checks)),
    })
}

/// What each entry's `fullUrl` will name: its resource's type, and its id when the entry updates
/// by id.
fn targets(entries: &[Value], config: &Config) -> Vec<BundleTarget> {
    entries
        .iter()
        .filter_map(|e| {
            let full_url = e.get("fullUrl")?.as_str()?.to_string();
            let resource_type = e.get("resource")?.get("resourceType")?.as_str()?.to_string();
            let method = e.get("request")?.get("method")?.as_str()?;
            let url = e.get("request")?.get("url")?.as_str()?;
            let id = (method == "PUT")
                .then(|| relative_url(url, config).ok())
                .flatten()
                .and_then(|rel| {
                    let (t, id) = rel.split_once('/')?;
                    (t == resource_type && !id.contains(['/', '?'])).then(|| id.to_string())
                });
            Some(BundleTarget {
                full_url,
                resource_type,
                id,
            })
        })
        .collect()
}

/// `request.url` relative to the base.
fn relative_url<'u>(url: &'u str, config: &Config) -> Result<&'u str, Denial> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return config
            .fhir_base_urls
            .iter()
            .find_map(|b| super::membership::under_base(url, b))
            .ok_or(Denial::BadRequest(
                RequestReason::OutsideBase,
                "A Bundle entry's URL is not under this server's base",
            ));
    }
    Ok(url.strip_prefix('/').unwrap_or(url))
}

/// Authorizes one entry; its response check when allowed.
fn check_entry(
    entry: &Value,
    resolver: &Resolver<'_>,
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<Option<ResponseCheck>, Denial> {
    let request = entry
        .get("request")
        .ok_or_else(|| malformed("a Bundle entry lacks request"))?;
    let text = |name: &str| match request.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(malformed("a Bundle entry's request has a non-string field")),
    };
    let method = text("method")?.ok_or_else(|| malformed("a Bundle entry lacks request.method"))?;
    let url = text("url")?.ok_or_else(|| malformed("a Bundle entry lacks request.url"))?;
    let conditional_create = text("ifNoneExist")?.is_some();
    let rel = relative_url(url, config)?;
    let req = classify(method, &format!("{}/{rel}", config.fhir_base), &config.fhir_base)
        .map_err(|e| classify_denial(&e))?;
    if req.interaction == Interaction::BatchOrTransaction {
        return Err(not_enforceable("a Bundle inside a Bundle"));
    }
    if req.method == Method::Head {
        return Err(malformed("HEAD is not a Bundle entry method"));
    }
    let a = authz::authorize(&req, conditional_create, claims, granted, config).map_err(|f| f.to_denial())?;
    if a.append_query.is_some() {
        return Err(outside(
            "a search in a Bundle must name the patient in context itself",
        ));
    }
    match &a.body_check {
        None => {}
        Some(BodyCheck::Write(w)) if w.mode == WriteMode::Patch => {
            return Err(not_enforceable(
                "a PATCH entry (a Binary body) under these scopes",
            ))
        }
        Some(BodyCheck::Write(w)) => {
            let resource = entry
                .get("resource")
                .ok_or_else(|| malformed("a Bundle write entry lacks resource"))?;
            check_resource(w, resource, granted, resolver)?;
        }
        Some(BodyCheck::SearchForm) => return Err(not_enforceable("a POST _search entry")),
        Some(BodyCheck::Bundle) => return Err(not_enforceable("a Bundle inside a Bundle")),
    }
    Ok(a.response_check)
}

#[cfg(test)]
mod tests;
