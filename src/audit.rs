//! The audit record: one per request the filter decides on, allowed or refused.
//!
//! [`AuditRecord::for_decision`] builds it from the decision and what the decision learned
//! ([`Facts`]); the adapter completes it with the response status ([`AuditRecord::complete`]) and
//! writes it as one JSON line ([`AuditRecord::log_line`], prefixed with [`LOG_PREFIX`]) and into
//! Envoy's filter state for the access log. The record names who did what (client, subject,
//! patient, scopes, token id) but never carries the token, only its short hash, and never a search
//! parameter's value.

use serde::Serialize;

use crate::config::Mode;
use crate::decision::{Decision, Facts, RequestFacts};
use crate::denial::Denial;

/// Prefix of every audit log line; the rest of the line is the record's JSON.
pub const LOG_PREFIX: &str = "smart-fhir-edge audit ";

/// Name of the filter-state property holding the record's JSON (Envoy stores it as
/// `wasm.smart_fhir_edge_audit`; an access log reads `%FILTER_STATE(wasm.smart_fhir_edge_audit:PLAIN)%`).
pub const FILTER_STATE_PROPERTY: &str = "smart_fhir_edge_audit";

/// What the filter did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Forwarded (or answered by the filter itself, like the SMART configuration).
    #[serde(rename = "allow")]
    Allow,
    /// Refused.
    #[serde(rename = "deny")]
    Deny,
    /// Would have been refused, but the filter runs in audit-only mode: forwarded.
    #[serde(rename = "audit-only-deny")]
    AuditOnlyDeny,
}

impl Verdict {
    /// The value written in records and metric tags.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::AuditOnlyDeny => "audit-only-deny",
        }
    }
}

/// Reason of an allowed request authorized by its token.
pub const REASON_ALLOWED: &str = "allowed";
/// Reason of an allowed request on a public path.
pub const REASON_PUBLIC: &str = "public";
/// Reason of the SMART configuration document the filter serves itself.
pub const REASON_SMART_CONFIGURATION: &str = "smart_configuration";

/// One audit record. Serialized with every key present (`null` when unknown), in this order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Decision time, RFC 3339 UTC with milliseconds (`2025-01-31T12:00:00.123Z`).
    pub time: String,
    /// `x-request-id` of the request.
    pub request_id: Option<String>,
    pub decision: Verdict,
    /// `allowed`, `public`, `smart_configuration`, or the refusal's reason code
    /// ([`crate::denial::Reply::reason_code`]).
    pub reason: &'static str,
    /// The status the client received (`null` when the stream ended without a response).
    pub status: Option<u16>,
    /// The status of the refusal (also in audit-only mode, where it was not sent).
    pub refusal_status: Option<u16>,
    /// The upstream's status, for a forwarded request the upstream answered.
    pub upstream_status: Option<u16>,
    pub method: String,
    /// [`crate::fhir::Interaction::kind`], when the request was classified.
    pub interaction: Option<&'static str>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Names of the search parameters, never their values.
    pub search_params: Vec<String>,
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub fhir_user: Option<String>,
    /// The patient in context (token claim).
    pub patient: Option<String>,
    /// The granted scopes (only for a verified token).
    pub scopes: Vec<String>,
    pub jti: Option<String>,
    /// Short SHA-256 prefix of the token, never the token.
    pub token_hash: Option<String>,
    pub issuer: Option<String>,
    /// Envoy's `source.address` (the downstream peer, `ip:port`).
    pub source_address: Option<String>,
    /// Whether the verified-token cache answered (`null` when no token was looked up); for a token
    /// that is not a JWT, whether the introspection cache answered.
    pub token_cache_hit: Option<bool>,
    /// What decided about the token: `jwt`, `introspection_cached`, `introspection_live` (`null`
    /// when no token was looked at).
    pub token_source: Option<&'static str>,
    /// Scope context that allowed the request (`patient`, `user`, `system`).
    pub allowed_by: Option<&'static str>,
}

impl AuditRecord {
    /// The record for a decision, or `None` for a request still waiting for keys. `now_ms` is the
    /// host clock; `realm` the configured realm (it does not change the reason or status).
    pub fn for_decision(
        decision: &Decision,
        mode: Mode,
        realm: &str,
        req: &RequestFacts<'_>,
        now_ms: u64,
    ) -> Option<AuditRecord> {
        let empty = Facts::default();
        let (verdict, reason, refusal_status, facts) = match decision {
            Decision::Allow(a) => {
                let reason = if a.facts.public {
                    REASON_PUBLIC
                } else {
                    REASON_ALLOWED
                };
                (Verdict::Allow, reason, None, &a.facts)
            }
            Decision::Deny(denial, facts) => {
                let r = denial.reply(realm);
                let verdict = match mode {
                    Mode::Enforce => Verdict::Deny,
                    Mode::AuditOnly => Verdict::AuditOnlyDeny,
                };
                (verdict, r.reason_code, Some(r.status), facts.as_ref())
            }
            Decision::Respond(_) => (Verdict::Allow, REASON_SMART_CONFIGURATION, None, &empty),
            Decision::AwaitKeys { .. } | Decision::AwaitIntrospection { .. } => return None,
        };
        let claims = facts.claims.as_deref();
        let claim =
            |f: fn(&crate::claims::VerifiedClaims) -> &Option<String>| claims.and_then(|c| f(c).clone());
        Some(AuditRecord {
            time: rfc3339_utc(now_ms),
            request_id: req.header("x-request-id").map(str::to_string),
            decision: verdict,
            reason,
            status: None,
            refusal_status,
            upstream_status: None,
            method: req.method.to_string(),
            interaction: facts.interaction,
            resource_type: facts.resource_type.clone(),
            resource_id: facts.resource_id.clone(),
            search_params: facts.search_params.clone(),
            client_id: claim(|c| &c.client_id),
            subject: claim(|c| &c.subject),
            fhir_user: claim(|c| &c.fhir_user),
            patient: claim(|c| &c.patient),
            scopes: claims.map(|c| c.scopes.clone()).unwrap_or_default(),
            jti: claim(|c| &c.jti),
            token_hash: facts.token_hash.clone(),
            issuer: claims.map(|c| c.issuer.clone()),
            source_address: None,
            token_cache_hit: facts.token_hash.as_ref().map(|_| facts.cache_hit),
            token_source: facts.token_source.map(|t| t.as_str()),
            allowed_by: facts.allowed_by,
        })
    }

    /// Turns the record of an allowed request into the refusal a body or response check found
    /// (in audit-only mode: the refusal that was not sent).
    pub fn refuse(&mut self, denial: &Denial, mode: Mode, realm: &str) {
        let r = denial.reply(realm);
        self.decision = match mode {
            Mode::Enforce => Verdict::Deny,
            Mode::AuditOnly => Verdict::AuditOnlyDeny,
        };
        self.reason = r.reason_code;
        self.refusal_status = Some(r.status);
    }

    /// Completes the record with the status the client received and, when the upstream answered
    /// a forwarded request, the upstream's status.
    pub fn complete(&mut self, status: Option<u16>, from_upstream: bool) {
        self.status = status;
        let forwarded = self.decision != Verdict::Deny && self.reason != REASON_SMART_CONFIGURATION;
        self.upstream_status = if forwarded && from_upstream { status } else { None };
    }

    /// The record as one line of JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain strings, numbers and booleans cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The log line: [`LOG_PREFIX`] followed by the JSON.
    pub fn log_line(&self) -> String {
        format!("{LOG_PREFIX}{}", self.to_json())
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::claims::VerifiedClaims;
    use crate::decision::{Allowed, LocalResponse};
    use crate::denial::{Denial, ForbiddenReason, TokenReason};

    fn headers() -> Vec<(String, String)> {
        vec![
            ("x-request-id".into(), "req-1".into()),
            ("authorization".into(), "Bearer secret.token.value".into()),
        ]
    }

    fn claims() -> Rc<VerifiedClaims> {
        Rc::new(VerifiedClaims {
            issuer: "https://idp.example.org".into(),
            subject: Some("user-1".into()),
            client_id: Some("app-1".into()),
            scopes: vec!["patient/Observation.rs".into(), "launch/patient".into()],
            patient: Some("123".into()),
            encounter: None,
            fhir_user: Some("Practitioner/77".into()),
            jti: Some("jti-9".into()),
            expires_at: 1_700_000_300,
        })
    }

    fn facts() -> Facts {
        Facts {
            interaction: Some("search-type"),
            resource_type: Some("Observation".into()),
            resource_id: None,
            search_params: vec!["code".into(), "patient".into()],
            token_hash: Some("0123456789ab".into()),
            claims: Some(claims()),
            allowed_by: Some("patient"),
            cache_hit: true,
            token_source: Some(crate::decision::TokenSource::Jwt),
            public: false,
        }
    }

    fn allow(f: Facts) -> Decision {
        Decision::Allow(Allowed {
            set_headers: Vec::new().into(),
            new_path: None,
            facts: f,
            pending: None,
        })
    }

    const T: u64 = 1_700_000_000_123;

    fn record(d: &Decision, mode: Mode) -> AuditRecord {
        let h = headers();
        let req = RequestFacts {
            method: "GET",
            path: "/fhir/Observation?code=1234-5&patient=123",
            headers: &h,
        };
        AuditRecord::for_decision(d, mode, "ehr", &req, T).unwrap()
    }

    #[test]
    fn formats_the_host_clock_as_rfc3339_utc() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (T, "2023-11-14T22:13:20.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
        ] {
            assert_eq!(rfc3339_utc(ms), want);
        }
    }

    #[test]
    fn records_decision_reason_and_status_for_every_outcome() {
        let denied = Decision::Deny(Denial::InvalidToken(TokenReason::Revoked), Box::new(facts()));
        let forbidden = Decision::Deny(
            Denial::Forbidden {
                reason: ForbiddenReason::InsufficientScope,
                scope: None,
                detail: String::new(),
            },
            Box::new(facts()),
        );
        let public = allow(Facts {
            public: true,
            ..Facts::default()
        });
        let smart = Decision::Respond(LocalResponse {
            status: 200,
            content_type: "application/json",
            body: "{}".into(),
        });
        type Row = (
            Decision,
            Mode,
            Option<u16>,
            bool,
            Verdict,
            &'static str,
            Option<u16>,
            Option<u16>,
        );
        #[rustfmt::skip]
        let cases: Vec<Row> = vec![
            (allow(facts()), Mode::Enforce, Some(200), true, Verdict::Allow, "allowed", None, Some(200)),
            (allow(facts()), Mode::Enforce, Some(503), false, Verdict::Allow, "allowed", None, None),
            (public, Mode::Enforce, Some(200), true, Verdict::Allow, "public", None, Some(200)),
            (smart, Mode::Enforce, Some(200), false, Verdict::Allow, "smart_configuration", None, None),
            (denied.clone(), Mode::Enforce, Some(401), false, Verdict::Deny, "invalid_token.revoked", Some(401), None),
            (forbidden, Mode::Enforce, Some(403), false, Verdict::Deny, "insufficient_scope", Some(403), None),
            (denied, Mode::AuditOnly, Some(200), true, Verdict::AuditOnlyDeny, "invalid_token.revoked", Some(401), Some(200)),
        ];
        for (d, mode, status, upstream, verdict, reason, refusal, upstream_status) in cases {
            let mut r = record(&d, mode);
            r.complete(status, upstream);
            assert_eq!(r.decision, verdict, "{d:?}");
            assert_eq!(r.reason, reason, "{d:?}");
            assert_eq!(r.refusal_status, refusal, "{d:?}");
            assert_eq!(r.status, status, "{d:?}");
            assert_eq!(r.upstream_status, upstream_status, "{d:?}");
        }
    }

    #[test]
    fn a_body_or_response_refusal_turns_the_allowed_record_into_a_refusal() {
        let outside = Denial::Forbidden {
            reason: ForbiddenReason::OutsidePatientCompartment,
            scope: None,
            detail: String::new(),
        };
        for (mode, verdict, status, upstream) in [
            (Mode::Enforce, Verdict::Deny, Some(403), None),
            (Mode::AuditOnly, Verdict::AuditOnlyDeny, Some(200), Some(200)),
        ] {
            let mut r = record(&allow(facts()), mode);
            assert_eq!(r.decision, Verdict::Allow);
            r.refuse(&outside, mode, "ehr");
            r.complete(status, mode == Mode::AuditOnly);
            assert_eq!(r.decision, verdict, "{mode:?}");
            assert_eq!(r.reason, "outside_patient_compartment");
            assert_eq!(r.refusal_status, Some(403));
            assert_eq!(r.status, status);
            assert_eq!(r.upstream_status, upstream, "{mode:?}");
            assert_eq!(
                r.client_id.as_deref(),
                Some("app-1"),
                "who was refused stays named"
            );
        }
    }

    #[test]
    fn a_request_waiting_for_keys_has_no_record_yet() {
        let h = headers();
        let req = RequestFacts {
            method: "GET",
            path: "/",
            headers: &h,
        };
        let d = Decision::AwaitKeys {
            provider: 0,
            generation: 0,
            deadline_ms: 0,
        };
        assert!(AuditRecord::for_decision(&d, Mode::Enforce, "r", &req, T).is_none());
    }

    #[test]
    fn the_json_carries_every_field_in_a_stable_order_and_never_the_token_or_values() {
        let mut r = record(&allow(facts()), Mode::Enforce);
        r.source_address = Some("10.0.0.7:51234".into());
        r.complete(Some(200), true);
        let line = r.log_line();
        assert!(line.starts_with("smart-fhir-edge audit {\"time\":"), "{line}");
        assert!(!line.contains("secret.token.value"), "{line}");
        assert!(!line.contains("1234-5"), "search values never appear: {line}");
        let v: serde_json::Value = serde_json::from_str(line.strip_prefix(LOG_PREFIX).unwrap()).unwrap();
        let want = serde_json::json!({
            "time": "2023-11-14T22:13:20.123Z", "request_id": "req-1", "decision": "allow",
            "reason": "allowed", "status": 200, "refusal_status": null, "upstream_status": 200,
            "method": "GET", "interaction": "search-type", "resource_type": "Observation",
            "resource_id": null, "search_params": ["code", "patient"], "client_id": "app-1",
            "subject": "user-1", "fhir_user": "Practitioner/77", "patient": "123",
            "scopes": ["patient/Observation.rs", "launch/patient"], "jti": "jti-9",
            "token_hash": "0123456789ab", "issuer": "https://idp.example.org",
            "source_address": "10.0.0.7:51234", "token_cache_hit": true, "token_source": "jwt",
            "allowed_by": "patient"
        });
        assert_eq!(v, want);
        let positions: Vec<usize> = [
            "time",
            "request_id",
            "decision",
            "reason",
            "status",
            "refusal_status",
            "upstream_status",
            "method",
            "interaction",
            "resource_type",
            "resource_id",
            "search_params",
            "client_id",
            "subject",
            "fhir_user",
            "patient",
            "scopes",
            "jti",
            "token_hash",
            "issuer",
            "source_address",
            "token_cache_hit",
            "token_source",
            "allowed_by",
        ]
        .iter()
        .map(|k| line.find(&format!("\"{k}\":")).unwrap())
        .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "stable key order: {line}"
        );
    }

    #[test]
    fn without_a_token_the_identity_fields_are_null() {
        let d = Decision::Deny(Denial::MissingToken, Box::default());
        let mut r = record(&d, Mode::Enforce);
        r.complete(Some(401), false);
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        for k in [
            "client_id",
            "subject",
            "jti",
            "token_hash",
            "issuer",
            "token_cache_hit",
            "token_source",
        ] {
            assert!(v[k].is_null(), "{k}: {v}");
        }
        assert_eq!(v["scopes"], serde_json::json!([]));
        assert_eq!(v["reason"], "missing_token");
    }
}
