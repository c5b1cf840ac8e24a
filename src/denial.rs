//! Every reason this filter refuses a request, and the one exhaustive mapping from a reason to
//! what the client sees: HTTP status, `WWW-Authenticate` (RFC 6750), `Retry-After`, and the
//! OperationOutcome `issue.severity`, `issue.code` and diagnostics.
//!
//! The mapping is a single `match` with no catch-all arm: a new reason does not compile until it
//! has its row. The README's denial table is this table.

use crate::outcome::{Issue, IssueSeverity, IssueType, OperationOutcome};

/// Why a token was refused (RFC 6750 `invalid_token`, HTTP 401 unless noted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenReason {
    /// The token is larger than `max_token_bytes` (checked before decoding).
    TooLarge,
    /// Not a JWS in compact form, bad base64url, bad JSON, duplicate keys, bad header.
    Malformed,
    /// `alg` is not allowed for the provider (`none` and `HS*` never are), or does not match the key.
    AlgorithmNotAllowed,
    /// The header names `crit` extensions, `b64`, or untrusted key references (`jku`, `jwk`, `x5u`).
    UnsupportedHeader,
    /// `iss` names no configured provider.
    UnknownIssuer,
    /// No key of the provider's key set matches the token's `kid` and `alg`.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed (beyond the clock skew).
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    NotYetValid,
    /// `iat` is in the future (beyond the clock skew).
    IssuedInFuture,
    /// `exp - iat` exceeds the provider's `max_lifetime_s`.
    LifetimeTooLong,
    /// `aud` names none of the provider's audiences.
    WrongAudience,
    /// A required claim (`exp`, `iss`, `iat` when a lifetime cap is set) is missing or mistyped.
    MissingClaim,
    /// The client, subject or token id is on the revocation list.
    Revoked,
    /// The provider's introspection endpoint says the token is not active (RFC 7662 `active:
    /// false`: revoked, expired or unknown), or its answer is for another issuer or audience.
    Inactive,
}

/// Why a request was refused by SMART authorization (HTTP 403).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForbiddenReason {
    /// No granted scope gives the permission the interaction needs.
    InsufficientScope,
    /// Only `patient/` scopes cover the request, but the token carries no patient.
    PatientContextMissing,
    /// The request reaches outside the patient in context.
    OutsidePatientCompartment,
    /// The edge cannot verify this request (body-shaped or join-shaped) for this token yet.
    NotEnforceableAtEdge,
    /// The operation is not allowed by configuration.
    OperationNotAllowed,
}

/// Why a request could not be read as a FHIR interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestReason {
    /// Path or query ambiguous or malformed (dot segments, encoded slashes, control characters...).
    Malformed,
    /// The path is not under `fhir_base`.
    OutsideBase,
    /// The path names no R4 resource type.
    UnknownResourceType,
    /// A well-formed path that is no FHIR interaction.
    UnsupportedPath,
    /// A method the FHIR API does not use here.
    MethodNotAllowed,
    /// A method override header names another method.
    MethodOverride,
    /// Path, query or headers exceed their limits.
    UriTooLong,
    /// The request body exceeds the configured buffer.
    BodyTooLarge,
}

/// Every reason this filter refuses a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No bearer token (RFC 6750 §3.1: no error code).
    MissingToken,
    /// Several `Authorization` headers, a token in the query, or a malformed `Bearer` credential
    /// (RFC 6750 `invalid_request`).
    InvalidRequest(&'static str),
    /// A token was presented and refused.
    InvalidToken(TokenReason),
    /// The keys needed to verify the token are not available (identity provider unreachable).
    KeysUnavailable,
    /// The token's introspection gave no usable answer (endpoint unreachable, timed out, an HTTP
    /// status other than 200, or not an RFC 7662 answer): fails closed.
    IntrospectionUnavailable,
    /// Authorization refused the request. `scope` names a scope that would have allowed it.
    Forbidden {
        reason: ForbiddenReason,
        scope: Option<String>,
        detail: String,
    },
    /// The request is not a readable FHIR interaction.
    BadRequest(RequestReason, &'static str),
    /// Entries of a batch/transaction Bundle were refused: each entry's index and its denial. The
    /// whole Bundle is refused (403, or 400 when an entry is refused for another reason).
    BundleEntries(Vec<(usize, Denial)>),
    /// A response outside the grant answered as not found (`response_denial: not-found`).
    Withheld,
    /// A response the edge must check could not be read (not FHIR JSON, too large, not what was
    /// asked for): withheld.
    ResponseUnverifiable(&'static str),
    /// An internal failure of the filter (fails closed).
    Internal,
}

/// What a denial looks like on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// `WWW-Authenticate` value, when the reply carries one.
    pub www_authenticate: Option<String>,
    /// `Retry-After` seconds, when the reply carries one.
    pub retry_after: Option<u32>,
    pub severity: IssueSeverity,
    pub code: IssueType,
    /// One line for the app developer: never the token, claim values or internals.
    pub diagnostics: String,
    /// Stable machine-readable reason code (audit, metrics): `invalid_token.expired`.
    pub reason_code: &'static str,
}

/// Seconds a client should wait after a 503 for keys.
pub const KEYS_RETRY_AFTER_S: u32 = 5;

/// Seconds a client should wait after a 503 for an introspection.
pub const INTROSPECTION_RETRY_AFTER_S: u32 = 5;

fn bearer(realm: &str, error: Option<(&str, &str)>, scope: Option<&str>) -> String {
    let mut v = format!("Bearer realm=\"{realm}\"");
    if let Some((code, description)) = error {
        v.push_str(&format!(
            ", error=\"{code}\", error_description=\"{description}\""
        ));
    }
    if let Some(s) = scope {
        v.push_str(&format!(", scope=\"{s}\""));
    }
    v
}

impl TokenReason {
    /// (reason code, description) of this token refusal.
    pub fn describe(self) -> (&'static str, &'static str) {
        match self {
            TokenReason::TooLarge => ("invalid_token.too_large", "The access token is too large"),
            TokenReason::Malformed => (
                "invalid_token.malformed",
                "The access token is not a well-formed JWS",
            ),
            TokenReason::AlgorithmNotAllowed => (
                "invalid_token.algorithm",
                "The access token's signature algorithm is not accepted",
            ),
            TokenReason::UnsupportedHeader => (
                "invalid_token.header",
                "The access token's header uses an unsupported parameter",
            ),
            TokenReason::UnknownIssuer => {
                ("invalid_token.issuer", "The access token's issuer is not trusted")
            }
            TokenReason::UnknownKey => (
                "invalid_token.unknown_key",
                "The access token is signed with an unknown key",
            ),
            TokenReason::BadSignature => (
                "invalid_token.signature",
                "The access token's signature does not verify",
            ),
            TokenReason::Expired => ("invalid_token.expired", "The access token has expired"),
            TokenReason::NotYetValid => ("invalid_token.not_yet_valid", "The access token is not valid yet"),
            TokenReason::IssuedInFuture => (
                "invalid_token.issued_in_future",
                "The access token was issued in the future",
            ),
            TokenReason::LifetimeTooLong => (
                "invalid_token.lifetime",
                "The access token's lifetime exceeds the allowed maximum",
            ),
            TokenReason::WrongAudience => (
                "invalid_token.audience",
                "The access token is not meant for this server",
            ),
            TokenReason::MissingClaim => (
                "invalid_token.claims",
                "The access token lacks a required claim or has a mistyped one",
            ),
            TokenReason::Revoked => ("invalid_token.revoked", "The access token has been revoked"),
            TokenReason::Inactive => ("invalid_token.inactive", "The access token is not active"),
        }
    }
}

impl Denial {
    /// The one mapping from a denial to its reply. `realm` is the configured realm.
    pub fn reply(&self, realm: &str) -> Reply {
        match self {
            Denial::MissingToken => Reply {
                status: 401,
                www_authenticate: Some(bearer(realm, None, None)),
                retry_after: None,
                severity: IssueSeverity::Error,
                code: IssueType::Login,
                diagnostics: "A bearer access token is required".into(),
                reason_code: "missing_token",
            },
            Denial::InvalidRequest(detail) => Reply {
                status: 400,
                www_authenticate: Some(bearer(realm, Some(("invalid_request", detail)), None)),
                retry_after: None,
                severity: IssueSeverity::Error,
                code: IssueType::Invalid,
                diagnostics: (*detail).into(),
                reason_code: "invalid_request",
            },
            Denial::InvalidToken(reason) => {
                let (reason_code, description) = reason.describe();
                let (code, status) = match reason {
                    TokenReason::Expired => (IssueType::Expired, 401),
                    TokenReason::TooLarge => (IssueType::TooLong, 401),
                    TokenReason::Revoked => (IssueType::Security, 401),
                    TokenReason::Malformed
                    | TokenReason::AlgorithmNotAllowed
                    | TokenReason::UnsupportedHeader
                    | TokenReason::UnknownIssuer
                    | TokenReason::UnknownKey
                    | TokenReason::BadSignature
                    | TokenReason::NotYetValid
                    | TokenReason::IssuedInFuture
                    | TokenReason::LifetimeTooLong
                    | TokenReason::WrongAudience
                    | TokenReason::MissingClaim
                    | TokenReason::Inactive => (IssueType::Unknown, 401),
                };
                Reply {
                    status,
                    www_authenticate: Some(bearer(realm, Some(("invalid_token", description)), None)),
                    retry_after: None,
                    severity: IssueSeverity::Error,
                    code,
                    diagnostics: description.into(),
                    reason_code,
                }
            }
            Denial::KeysUnavailable => Reply {
                status: 503,
                www_authenticate: None,
                retry_after: Some(KEYS_RETRY_AFTER_S),
                severity: IssueSeverity::Error,
                code: IssueType::Transient,
                diagnostics: "The keys needed to verify the access token are not available; retry later"
                    .into(),
                reason_code: "keys_unavailable",
            },
            Denial::IntrospectionUnavailable => Reply {
                status: 503,
                www_authenticate: None,
                retry_after: Some(INTROSPECTION_RETRY_AFTER_S),
                severity: IssueSeverity::Error,
                code: IssueType::Transient,
                diagnostics: "The access token could not be checked with its issuer; retry later".into(),
                reason_code: "introspection_unavailable",
            },
            Denial::Forbidden {
                reason,
                scope,
                detail,
            } => {
                let (reason_code, lead) = match reason {
                    ForbiddenReason::InsufficientScope => ("insufficient_scope", "Insufficient scope"),
                    ForbiddenReason::PatientContextMissing => {
                        ("patient_context_missing", "The token carries no patient context")
                    }
                    ForbiddenReason::OutsidePatientCompartment => (
                        "outside_patient_compartment",
                        "The request reaches outside the patient in context",
                    ),
                    ForbiddenReason::NotEnforceableAtEdge => (
                        "not_enforceable",
                        "This request cannot be verified at the edge for this token",
                    ),
                    ForbiddenReason::OperationNotAllowed => {
                        ("operation_not_allowed", "Operation not allowed")
                    }
                };
                let diagnostics = if detail.is_empty() {
                    lead.to_string()
                } else {
                    format!("{lead}: {detail}")
                };
                Reply {
                    status: 403,
                    www_authenticate: Some(bearer(
                        realm,
                        Some(("insufficient_scope", lead)),
                        scope.as_deref(),
                    )),
                    retry_after: None,
                    severity: IssueSeverity::Error,
                    code: IssueType::Forbidden,
                    diagnostics,
                    reason_code,
                }
            }
            Denial::BadRequest(reason, detail) => {
                let (status, code, reason_code) = match reason {
                    RequestReason::Malformed => (400, IssueType::Invalid, "bad_request.malformed"),
                    RequestReason::OutsideBase => (404, IssueType::NotFound, "bad_request.outside_base"),
                    RequestReason::UnknownResourceType => {
                        (404, IssueType::NotSupported, "bad_request.unknown_resource_type")
                    }
                    RequestReason::UnsupportedPath => {
                        (400, IssueType::NotSupported, "bad_request.unsupported_path")
                    }
                    RequestReason::MethodNotAllowed => {
                        (405, IssueType::NotSupported, "bad_request.method_not_allowed")
                    }
                    RequestReason::MethodOverride => {
                        (400, IssueType::NotSupported, "bad_request.method_override")
                    }
                    RequestReason::UriTooLong => (414, IssueType::TooLong, "bad_request.too_long"),
                    RequestReason::BodyTooLarge => (413, IssueType::TooLong, "bad_request.body_too_large"),
                };
                Reply {
                    status,
                    www_authenticate: None,
                    retry_after: None,
                    severity: IssueSeverity::Error,
                    code,
                    diagnostics: (*detail).into(),
                    reason_code,
                }
            }
            Denial::BundleEntries(entries) => {
                let all_forbidden = entries.iter().all(|(_, d)| d.reply(realm).status == 403);
                let (status, code) = if all_forbidden {
                    (403, IssueType::Forbidden)
                } else {
                    (400, IssueType::Invalid)
                };
                let lead = "Entries of the Bundle were refused";
                Reply {
                    status,
                    www_authenticate: all_forbidden
                        .then(|| bearer(realm, Some(("insufficient_scope", lead)), None)),
                    retry_after: None,
                    severity: IssueSeverity::Error,
                    code,
                    diagnostics: format!("{lead}: {} of them (see each entry's issue)", entries.len()),
                    reason_code: "bundle_entries_refused",
                }
            }
            Denial::Withheld => Reply {
                status: 404,
                www_authenticate: None,
                retry_after: None,
                severity: IssueSeverity::Error,
                code: IssueType::NotFound,
                diagnostics: "The resource was not found".into(),
                reason_code: "withheld_not_found",
            },
            Denial::ResponseUnverifiable(detail) => Reply {
                status: 502,
                www_authenticate: None,
                retry_after: None,
                severity: IssueSeverity::Error,
                code: IssueType::Processing,
                diagnostics: format!("The response was withheld: {detail}"),
                reason_code: "response_unverifiable",
            },
            Denial::Internal => Reply {
                status: 500,
                www_authenticate: None,
                retry_after: None,
                severity: IssueSeverity::Fatal,
                code: IssueType::Exception,
                diagnostics: "The authorization filter failed; the request was not forwarded".into(),
                reason_code: "internal",
            },
        }
    }
}

impl Denial {
    /// The OperationOutcome this denial answers with: one issue, or for [`Denial::BundleEntries`]
    /// one issue per refused entry (`expression` `Bundle.entry[i]`).
    pub fn outcome(&self, realm: &str) -> OperationOutcome {
        match self {
            Denial::BundleEntries(entries) => OperationOutcome {
                issues: entries
                    .iter()
                    .map(|(i, d)| {
                        let r = d.reply(realm);
                        Issue {
                            severity: r.severity,
                            code: r.code,
                            diagnostics: r.diagnostics,
                            expression: Some(format!("Bundle.entry[{i}]")),
                        }
                    })
                    .collect(),
                request_id: None,
            },
            _ => {
                let r = self.reply(realm);
                OperationOutcome::single(r.severity, r.code, r.diagnostics)
            }
        }
    }

    /// One denial of every kind (every token, request and authorization reason), for the
    /// documentation table and its test.
    pub fn every_kind() -> Vec<Denial> {
        use ForbiddenReason as F;
        use RequestReason as R;
        use TokenReason as T;
        let mut all = vec![Denial::MissingToken, Denial::InvalidRequest("see diagnostics")];
        for t in [
            T::TooLarge,
            T::Malformed,
            T::AlgorithmNotAllowed,
            T::UnsupportedHeader,
            T::UnknownIssuer,
            T::UnknownKey,
            T::BadSignature,
            T::Expired,
            T::NotYetValid,
            T::IssuedInFuture,
            T::LifetimeTooLong,
            T::WrongAudience,
            T::MissingClaim,
            T::Revoked,
            T::Inactive,
        ] {
            all.push(Denial::InvalidToken(t));
        }
        all.push(Denial::KeysUnavailable);
        all.push(Denial::IntrospectionUnavailable);
        for f in [
            F::InsufficientScope,
            F::PatientContextMissing,
            F::OutsidePatientCompartment,
            F::NotEnforceableAtEdge,
            F::OperationNotAllowed,
        ] {
            all.push(Denial::Forbidden {
                reason: f,
                scope: Some("patient/Observation.rs".into()),
                detail: String::new(),
            });
        }
        for r in [
            R::Malformed,
            R::OutsideBase,
            R::UnknownResourceType,
            R::UnsupportedPath,
            R::MethodNotAllowed,
            R::MethodOverride,
            R::UriTooLong,
            R::BodyTooLarge,
        ] {
            all.push(Denial::BadRequest(r, "see diagnostics"));
        }
        all.push(Denial::BundleEntries(vec![(
            0,
            Denial::Forbidden {
                reason: F::OutsidePatientCompartment,
                scope: None,
                detail: String::new(),
            },
        )]));
        all.push(Denial::Withheld);
        all.push(Denial::ResponseUnverifiable("see diagnostics"));
        all.push(Denial::Internal);
        all
    }

    /// The README row of this denial: `| reason | status | WWW-Authenticate error | issue.code |`.
    pub fn table_row(&self) -> String {
        let r = self.reply("smart-fhir-edge");
        let error = match &r.www_authenticate {
            Some(w) => match w.split("error=\"").nth(1).and_then(|rest| rest.split('"').next()) {
                Some(e) => format!("`Bearer` `{e}`"),
                None => "`Bearer realm`".to_string(),
            },
            None => "-".to_string(),
        };
        let retry = if r.retry_after.is_some() {
            " + `Retry-After`"
        } else {
            ""
        };
        format!(
            "| `{}` | {} | {error}{retry} | `{}` |",
            r.reason_code,
            r.status,
            r.code.code()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_denial_has_its_documented_row() {
        let f = |reason| Denial::Forbidden {
            reason,
            scope: Some("patient/Observation.rs".into()),
            detail: "needs r".into(),
        };
        #[rustfmt::skip]
        let table: Vec<(Denial, u16, Option<&str>, IssueType, &str)> = vec![
            (Denial::MissingToken, 401, None, IssueType::Login, "missing_token"),
            (Denial::InvalidRequest("x"), 400, Some("invalid_request"), IssueType::Invalid, "invalid_request"),
            (Denial::InvalidToken(TokenReason::Expired), 401, Some("invalid_token"), IssueType::Expired, "invalid_token.expired"),
            (Denial::InvalidToken(TokenReason::TooLarge), 401, Some("invalid_token"), IssueType::TooLong, "invalid_token.too_large"),
            (Denial::InvalidToken(TokenReason::BadSignature), 401, Some("invalid_token"), IssueType::Unknown, "invalid_token.signature"),
            (Denial::InvalidToken(TokenReason::Revoked), 401, Some("invalid_token"), IssueType::Security, "invalid_token.revoked"),
            (Denial::KeysUnavailable, 503, None, IssueType::Transient, "keys_unavailable"),
            (Denial::InvalidToken(TokenReason::Inactive), 401, Some("invalid_token"), IssueType::Unknown, "invalid_token.inactive"),
            (Denial::IntrospectionUnavailable, 503, None, IssueType::Transient, "introspection_unavailable"),
            (f(ForbiddenReason::InsufficientScope), 403, Some("insufficient_scope"), IssueType::Forbidden, "insufficient_scope"),
            (f(ForbiddenReason::OutsidePatientCompartment), 403, Some("insufficient_scope"), IssueType::Forbidden, "outside_patient_compartment"),
            (Denial::BadRequest(RequestReason::Malformed, "x"), 400, None, IssueType::Invalid, "bad_request.malformed"),
            (Denial::BadRequest(RequestReason::UnknownResourceType, "x"), 404, None, IssueType::NotSupported, "bad_request.unknown_resource_type"),
            (Denial::BadRequest(RequestReason::MethodNotAllowed, "x"), 405, None, IssueType::NotSupported, "bad_request.method_not_allowed"),
            (Denial::BadRequest(RequestReason::UriTooLong, "x"), 414, None, IssueType::TooLong, "bad_request.too_long"),
            (Denial::BadRequest(RequestReason::BodyTooLarge, "x"), 413, None, IssueType::TooLong, "bad_request.body_too_large"),
            (Denial::Internal, 500, None, IssueType::Exception, "internal"),
        ];
        for (denial, status, error, code, reason_code) in table {
            let r = denial.reply("ehr");
            assert_eq!(r.status, status, "{denial:?}");
            assert_eq!(r.code, code, "{denial:?}");
            assert_eq!(r.reason_code, reason_code, "{denial:?}");
            match error {
                Some(e) => {
                    let w = r.www_authenticate.as_deref().unwrap();
                    assert!(w.starts_with("Bearer realm=\"ehr\""), "{w}");
                    assert!(w.contains(&format!("error=\"{e}\"")), "{w}");
                }
                None if status == 401 => {
                    assert_eq!(r.www_authenticate.as_deref(), Some("Bearer realm=\"ehr\""))
                }
                None => assert!(r.www_authenticate.is_none(), "{denial:?}"),
            }
        }
    }

    #[test]
    fn insufficient_scope_names_a_scope_that_would_allow() {
        let d = Denial::Forbidden {
            reason: ForbiddenReason::InsufficientScope,
            scope: Some("patient/Observation.rs".into()),
            detail: "read of Observation needs r".into(),
        };
        let r = d.reply("ehr");
        assert_eq!(
            r.www_authenticate.as_deref(),
            Some(
                "Bearer realm=\"ehr\", error=\"insufficient_scope\", error_description=\"Insufficient scope\", \
                 scope=\"patient/Observation.rs\""
            )
        );
        assert_eq!(r.diagnostics, "Insufficient scope: read of Observation needs r");
    }

    #[test]
    fn the_readme_documents_every_denial() {
        let readme = include_str!("../README.md");
        let mut missing = Vec::new();
        for d in Denial::every_kind() {
            let row = d.table_row();
            if !readme.contains(&row) {
                missing.push(row);
            }
        }
        assert!(
            missing.is_empty(),
            "README.md lacks these denial rows:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn keys_and_introspection_unavailable_ask_to_retry() {
        let r = Denial::KeysUnavailable.reply("x");
        assert_eq!(r.retry_after, Some(KEYS_RETRY_AFTER_S));
        let r = Denial::IntrospectionUnavailable.reply("x");
        assert_eq!(r.retry_after, Some(INTROSPECTION_RETRY_AFTER_S));
    }
}
