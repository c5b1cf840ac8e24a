//! The audit record: one per request the filter decides on, allowed or refused.
//!
//! [`AuditRecord::for_decision`] builds it from the decision and what the decision learned
//! ([`Facts`]); the adapter completes it with the response status ([`AuditRecord::complete`]) and
//! writes it as one JSON line ([`AuditRecord::log_line`], prefixed with [`LOG_PREFIX`]) and into
//! Envoy's filter state for the access log. The record names who did what (client, subject,
//! patient, scopes, token id) but never carries the token, only its short hash, and never a search
//! parameter's value.

use std::rc::Rc;

use serde::Serialize;

use crate::claims::VerifiedClaims;
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The verified token's claims (shared with the token cache, not copied): the record's
    /// `client_id`, `subject`, `fhir_user`, `patient` (in context), `scopes` (granted), `jti` and
    /// `issuer`.
    pub claims: Option<Rc<VerifiedClaims>>,
    /// Short SHA-256 prefix of the token, never the token.
    pub token_hash: Option<String>,
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
            claims: facts.claims.clone(),
            token_hash: facts.token_hash.clone(),
            source_address: None,
            token_cache_hit: facts.token_hash.as_ref().map(|_| facts.cache_hit),
            token_source: facts.token_source.map(|t| t.as_str()),
            allowed_by: facts.allowed_by,
        })
    }

    fn claim(&self, f: fn(&VerifiedClaims) -> &Option<String>) -> Option<&str> {
        self.claims.as_deref().and_then(|c| f(c).as_deref())
    }

    pub fn client_id(&self) -> Option<&str> {
        self.claim(|c| &c.client_id)
    }

    pub fn subject(&self) -> Option<&str> {
        self.claim(|c| &c.subject)
    }

    pub fn fhir_user(&self) -> Option<&str> {
        self.claim(|c| &c.fhir_user)
    }

    /// The patient in context (token claim).
    pub fn patient(&self) -> Option<&str> {
        self.claim(|c| &c.patient)
    }

    pub fn jti(&self) -> Option<&str> {
        self.claim(|c| &c.jti)
    }

    pub fn issuer(&self) -> Option<&str> {
        self.claims.as_deref().map(|c| c.issuer.as_str())
    }

    /// The granted scopes (empty without a verified token).
    pub fn scopes(&self) -> &[String] {
        self.claims.as_deref().map_or(&[], |c| c.scopes.as_slice())
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
        let mut out = String::with_capacity(JSON_CAPACITY);
        self.write_json(&mut out);
        out
    }

    /// The log line: [`LOG_PREFIX`] followed by the JSON (`&line[LOG_PREFIX.len()..]` is the JSON).
    pub fn log_line(&self) -> String {
        let mut out = String::with_capacity(LOG_PREFIX.len() + JSON_CAPACITY);
        out.push_str(LOG_PREFIX);
        self.write_json(&mut out);
        out
    }

    /// Appends the record's JSON: every key, in a fixed order, as `serde_json` would write it
    /// ([`AuditJson`], serialized by serde, is the reference the tests compare with). Written by
    /// hand because it runs on every request: a generic serializer costs several times more in Wasm.
    fn write_json(&self, out: &mut String) {
        let mut w = json::Object::start(out);
        w.str("time", &self.time);
        w.opt_str("request_id", self.request_id.as_deref());
        w.str("decision", self.decision.as_str());
        w.str("reason", self.reason);
        w.opt_u16("status", self.status);
        w.opt_u16("refusal_status", self.refusal_status);
        w.opt_u16("upstream_status", self.upstream_status);
        w.str("method", &self.method);
        w.opt_str("interaction", self.interaction);
        w.opt_str("resource_type", self.resource_type.as_deref());
        w.opt_str("resource_id", self.resource_id.as_deref());
        w.str_list("search_params", &self.search_params);
        w.opt_str("client_id", self.client_id());
        w.opt_str("subject", self.subject());
        w.opt_str("fhir_user", self.fhir_user());
        w.opt_str("patient", self.patient());
        w.str_list("scopes", self.scopes());
        w.opt_str("jti", self.jti());
        w.opt_str("token_hash", self.token_hash.as_deref());
        w.opt_str("issuer", self.issuer());
        w.opt_str("source_address", self.source_address.as_deref());
        w.opt_bool("token_cache_hit", self.token_cache_hit);
        w.opt_str("token_source", self.token_source);
        w.opt_str("allowed_by", self.allowed_by);
        w.end();
    }
}

/// The record's JSON shape, field by field (serialized by `serde_json` as the reference of
/// [`AuditRecord::to_json`], and for the documentation of the keys).
#[derive(Serialize)]
pub struct AuditJson<'a> {
    pub time: &'a str,
    pub request_id: Option<&'a str>,
    pub decision: Verdict,
    pub reason: &'a str,
    pub status: Option<u16>,
    pub refusal_status: Option<u16>,
    pub upstream_status: Option<u16>,
    pub method: &'a str,
    pub interaction: Option<&'a str>,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub search_params: &'a [String],
    pub client_id: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub fhir_user: Option<&'a str>,
    pub patient: Option<&'a str>,
    pub scopes: &'a [String],
    pub jti: Option<&'a str>,
    pub token_hash: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub source_address: Option<&'a str>,
    pub token_cache_hit: Option<bool>,
    pub token_source: Option<&'a str>,
    pub allowed_by: Option<&'a str>,
}

impl AuditRecord {
    /// The record as [`AuditJson`].
    pub fn view(&self) -> AuditJson<'_> {
        AuditJson {
            time: &self.time,
            request_id: self.request_id.as_deref(),
            decision: self.decision,
            reason: self.reason,
            status: self.status,
            refusal_status: self.refusal_status,
            upstream_status: self.upstream_status,
            method: &self.method,
            interaction: self.interaction,
            resource_type: self.resource_type.as_deref(),
            resource_id: self.resource_id.as_deref(),
            search_params: &self.search_params,
            client_id: self.client_id(),
            subject: self.subject(),
            fhir_user: self.fhir_user(),
            patient: self.patient(),
            scopes: self.scopes(),
            jti: self.jti(),
            token_hash: self.token_hash.as_deref(),
            issuer: self.issuer(),
            source_address: self.source_address.as_deref(),
            token_cache_hit: self.token_cache_hit,
            token_source: self.token_source,
            allowed_by: self.allowed_by,
        }
    }
}

/// Room for a typical record's JSON (one allocation per record).
const JSON_CAPACITY: usize = 768;

/// A minimal JSON object writer producing exactly `serde_json`'s compact output for strings,
/// small integers, booleans, `null` and lists of strings.
mod json {
    /// An object being written into a string.
    pub struct Object<'a> {
        out: &'a mut String,
        first: bool,
    }

    impl<'a> Object<'a> {
        pub fn start(out: &'a mut String) -> Object<'a> {
            out.push('{');
            Object { out, first: true }
        }

        fn key(&mut self, key: &str) {
            if !self.first {
                self.out.push(',');
            }
            self.first = false;
            self.out.push('"');
            self.out.push_str(key);
            self.out.push_str("\":");
        }

        pub fn str(&mut self, key: &str, value: &str) {
            self.key(key);
            string(self.out, value);
        }

        pub fn opt_str(&mut self, key: &str, value: Option<&str>) {
            self.key(key);
            match value {
                Some(v) => string(self.out, v),
                None => self.out.push_str("null"),
            }
        }

        pub fn opt_u16(&mut self, key: &str, value: Option<u16>) {
            self.key(key);
            match value {
                Some(v) => number(self.out, v),
                None => self.out.push_str("null"),
            }
        }

        pub fn opt_bool(&mut self, key: &str, value: Option<bool>) {
            self.key(key);
            self.out.push_str(match value {
                Some(true) => "true",
                Some(false) => "false",
                None => "null",
            });
        }

        pub fn str_list(&mut self, key: &str, values: &[String]) {
            self.key(key);
            self.out.push('[');
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                string(self.out, v);
            }
            self.out.push(']');
        }

        pub fn end(self) {
            self.out.push('}');
        }
    }

    fn number(out: &mut String, v: u16) {
        super::push_padded(out, u64::from(v), 1);
    }

    /// A JSON string as `serde_json` escapes it: `"` and `\`, the short escapes `\b \f \n \r \t`,
    /// other control characters as `\u00xx`; everything else as it is.
    pub fn string(out: &mut String, s: &str) {
        out.push('"');
        let mut start = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape: &str = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            out.push_str(s.get(start..i).unwrap_or_default());
            if escape.is_empty() {
                out.push_str("\\u00");
                for nibble in [b >> 4, b & 0xf] {
                    out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                }
            } else {
                out.push_str(escape);
            }
            start = i + 1;
        }
        out.push_str(s.get(start..).unwrap_or_default());
        out.push('"');
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC with milliseconds.
pub fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let mut out = String::with_capacity(24);
    for (value, width, after) in [
        (y, 4, '-'),
        (m, 2, '-'),
        (d, 2, 'T'),
        (rem / 3600, 2, ':'),
        (rem % 3600 / 60, 2, ':'),
        (rem % 60, 2, '.'),
        (ms % 1000, 3, 'Z'),
    ] {
        push_padded(&mut out, value, width);
        out.push(after);
    }
    out
}

/// Appends `value` in decimal, zero-padded to at least `width` digits (no formatting machinery:
/// this runs for every record).
fn push_padded(out: &mut String, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = value;
    let mut used = 0;
    for slot in digits.iter_mut().rev() {
        if n == 0 && used >= width {
            break;
        }
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
        used += 1;
    }
    let used = used.max(1);
    for d in digits.iter().skip(digits.len() - used) {
        out.push(char::from(*d));
    }
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
    fn the_hand_written_json_is_exactly_what_serde_json_writes() {
        let tricky = [
            "",
            "plain",
            "quote\" and backslash\\",
            "controls \u{0}\u{1}\u{8}\u{9}\u{a}\u{c}\u{d}\u{1b}\u{1f} end",
            "del \u{7f} and line sep \u{2028} and é 中 🦀",
            "</script>&<>'",
        ];
        let base = record(&allow(facts()), Mode::Enforce);
        let denied = record(
            &Decision::Deny(Denial::MissingToken, Box::default()),
            Mode::AuditOnly,
        );
        let mut cases = vec![base.clone(), denied];
        for t in tricky {
            let mut r = base.clone();
            r.request_id = Some(t.to_string());
            r.method = t.to_string();
            r.resource_id = Some(t.to_string());
            r.search_params = vec![t.to_string(), "x".into()];
            let mut c = (**r.claims.as_ref().unwrap()).clone();
            c.subject = Some(t.to_string());
            c.scopes = vec![t.to_string()];
            r.claims = Some(Rc::new(c));
            r.source_address = Some(t.to_string());
            r.status = Some(0);
            r.upstream_status = Some(65535);
            r.refusal_status = Some(403);
            r.token_cache_hit = Some(false);
            cases.push(r);
        }
        for r in cases {
            let want = serde_json::to_string(&r.view()).unwrap();
            assert_eq!(r.to_json(), want);
            assert_eq!(r.log_line(), format!("{LOG_PREFIX}{want}"));
        }
    }

    #[test]
    fn pads_numbers_to_their_width() {
        for (v, width, want) in [
            (0, 1, "0"),
            (7, 2, "07"),
            (123, 2, "123"),
            (5, 4, "0005"),
            (65535, 1, "65535"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut s = String::new();
            push_padded(&mut s, v, width);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn formats_the_host_clock_as_rfc3339_utc() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (T, "2023-11-14T22:13:20.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
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
            assert_eq!(r.client_id(), Some("app-1"), "who was refused stays named");
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
