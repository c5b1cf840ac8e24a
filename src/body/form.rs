//! `POST [base]/…/_search`: the form body read as the URL query is, merged with the URL's
//! parameters (FHIR applies both, R4 `http.html#search`), and authorized exactly as the GET search.
//!
//! The body must be `application/x-www-form-urlencoded` (UTF-8, the only charset accepted) and
//! parse with [`Query::parse`](crate::fhir::Query::parse): the same decoding, limits and refusals as
//! a query string. The merged query (URL parameters first) is then authorized as the GET form of the
//! search; a parameter to append for patient confinement is appended to the URL query, which FHIR
//! ANDs with the body's parameters.

use super::{malformed, media_type, not_enforceable, BodyAllowed};
use crate::authz::{self, as_get};
use crate::claims::VerifiedClaims;
use crate::config::Config;
use crate::decision::classify_denial;
use crate::denial::Denial;
use crate::fhir::{FhirRequest, Query};
use crate::scope::GrantedScopes;

/// Checks a `POST _search` body and authorizes the merged search.
pub fn check(
    req: &FhirRequest,
    content_type: Option<&str>,
    body: &[u8],
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<BodyAllowed, Denial> {
    let merged = merged_request(req, content_type, body)?;
    let a = authz::authorize(&merged, false, claims, granted, config).map_err(|f| f.to_denial())?;
    if a.body_check.is_some() {
        // A GET search never needs a body; refuse rather than loop if that ever changes.
        return Err(not_enforceable("a search body"));
    }
    Ok(BodyAllowed {
        append_query: a.append_query,
        response_check: a.response_check,
    })
}

/// The GET form of the search with the body's parameters after the URL's.
pub fn merged_request(
    req: &FhirRequest,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<FhirRequest, Denial> {
    if media_type(content_type).as_deref() != Some("application/x-www-form-urlencoded") {
        return Err(not_enforceable(
            "a _search body that is not application/x-www-form-urlencoded",
        ));
    }
    if let Some(charset) = content_type.and_then(charset) {
        if !charset.eq_ignore_ascii_case("utf-8") {
            return Err(not_enforceable("a _search body in a charset other than UTF-8"));
        }
    }
    let text = std::str::from_utf8(body).map_err(|_| malformed("the _search body is not UTF-8"))?;
    let form = Query::parse(text.trim_end_matches(['\r', '\n'])).map_err(|e| classify_denial(&e))?;
    let mut merged = as_get(req);
    merged.query.params.extend(form.params);
    Ok(merged)
}

/// The `charset` parameter of a `Content-Type` value.
fn charset(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"'))
    })
}
