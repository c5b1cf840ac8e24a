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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::fixtures::{config, token};
    use crate::body::ResponseCheck;
    use crate::fhir::request::classify;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    #[allow(clippy::type_complexity)] // a table of cases
    fn form_searches_are_authorized_as_the_get_search_of_both_parameter_sets() {
        let (claims, granted) = token("patient/*.rs", Some("123"));
        let cfg = config();
        let cases: Vec<(&str, &str, Option<&str>, Result<Option<(&str, &str)>, &str>)> = vec![
            (
                "/fhir/Observation/_search",
                "subject=Patient%2F123&code=x",
                FORM,
                Ok(None),
            ),
            ("/fhir/Observation/_search?subject=123", "code=x", FORM, Ok(None)),
            (
                "/fhir/Observation/_search",
                "code=x",
                FORM,
                Ok(Some(("subject", "Patient/123"))),
            ),
            (
                "/fhir/Observation/_search",
                "subject=456",
                FORM,
                Err("outside_patient_compartment"),
            ),
            (
                "/fhir/Observation/_search?subject=123",
                "subject=456",
                FORM,
                Err("outside_patient_compartment"),
            ),
            (
                "/fhir/Observation/_search",
                "subject=123&_filter=x",
                FORM,
                Err("not_enforceable"),
            ),
            (
                "/fhir/Observation/_search",
                "subject=123",
                Some("application/json"),
                Err("not_enforceable"),
            ),
            (
                "/fhir/Observation/_search",
                "subject=12%",
                FORM,
                Err("bad_request.malformed"),
            ),
            ("/fhir/Patient/123/Observation/_search", "code=x", FORM, Ok(None)),
            ("/fhir/Patient/_search", "_id=123\r\n", FORM, Ok(None)),
        ];
        for (path, body, ct, want) in cases {
            let req = classify("POST", path, "/fhir").unwrap();
            let got = check(&req, ct, body.as_bytes(), &claims, &granted, &cfg);
            let got_view = match &got {
                Ok(a) => Ok(a.append_query.as_ref().map(|(n, v)| (n.as_str(), v.as_str()))),
                Err(d) => Err(d.reply("ehr").reason_code),
            };
            assert_eq!(got_view, want, "{path} <- {body}");
            if let Ok(a) = got {
                assert!(
                    matches!(a.response_check, Some(ResponseCheck::Searchset { .. })),
                    "{path}: results are filtered"
                );
            }
        }
    }

    #[test]
    fn granular_constraints_may_travel_in_the_body() {
        let (claims, granted) = token("user/Observation.rs?category=laboratory", None);
        let cfg = config();
        let req = classify("POST", "/fhir/Observation/_search", "/fhir").unwrap();
        assert!(check(&req, FORM, b"category=laboratory", &claims, &granted, &cfg).is_ok());
        let refused = check(&req, FORM, b"category=vital-signs", &claims, &granted, &cfg).unwrap_err();
        assert_eq!(refused.reply("ehr").reason_code, "insufficient_scope");
        let latin1 = Some("application/x-www-form-urlencoded; charset=ISO-8859-1");
        let refused = check(&req, latin1, b"category=laboratory", &claims, &granted, &cfg).unwrap_err();
        assert_eq!(refused.reply("ehr").reason_code, "not_enforceable");
    }
}
