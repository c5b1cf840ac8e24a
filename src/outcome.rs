//! FHIR R4 `OperationOutcome`: the only error body this filter sends.
//!
//! Owns the IssueType and IssueSeverity codes, rendering as `application/fhir+json` or
//! `application/fhir+xml` (chosen from `Accept` and `_format`), and the rules for rewriting error
//! responses that did not come from a FHIR server: Envoy's local replies (no healthy upstream,
//! timeouts, rate limits, RBAC, buffer and header limits) and upstream errors in text or HTML.

/// R4 `IssueSeverity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl IssueSeverity {
    pub fn code(self) -> &'static str {
        match self {
            IssueSeverity::Fatal => "fatal",
            IssueSeverity::Error => "error",
            IssueSeverity::Warning => "warning",
            IssueSeverity::Information => "information",
        }
    }
}

/// R4 `IssueType` codes this filter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Security,
    Login,
    Unknown,
    Expired,
    Forbidden,
    Suppressed,
    Processing,
    NotSupported,
    NotFound,
    TooLong,
    Throttled,
    Exception,
    Timeout,
    Transient,
    Incomplete,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Unknown => "unknown",
            IssueType::Expired => "expired",
            IssueType::Forbidden => "forbidden",
            IssueType::Suppressed => "suppressed",
            IssueType::Processing => "processing",
            IssueType::NotSupported => "not-supported",
            IssueType::NotFound => "not-found",
            IssueType::TooLong => "too-long",
            IssueType::Throttled => "throttled",
            IssueType::Exception => "exception",
            IssueType::Timeout => "timeout",
            IssueType::Transient => "transient",
            IssueType::Incomplete => "incomplete",
        }
    }
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: IssueSeverity,
    pub code: IssueType,
    pub diagnostics: String,
    /// `issue.expression`, e.g. `Bundle.entry[3]`.
    pub expression: Option<String>,
}

/// The body format of an OperationOutcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json; charset=utf-8",
            Format::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// Chooses XML only when the client asks for it: `_format` (xml, text/xml, application/xml,
    /// application/fhir+xml) wins over `Accept`; `Accept` chooses XML when it names an XML type and
    /// no JSON type. Everything else is JSON.
    pub fn negotiate(accept: Option<&str>, format_param: Option<&str>) -> Format {
        fn is_xml(t: &str) -> bool {
            let t = t.trim().to_ascii_lowercase();
            let t = t.split(';').next().unwrap_or("").trim().to_string();
            matches!(
                t.as_str(),
                "xml" | "text/xml" | "application/xml" | "application/fhir+xml"
            )
        }
        fn is_json(t: &str) -> bool {
            let t = t.trim().to_ascii_lowercase();
            let t = t.split(';').next().unwrap_or("").trim().to_string();
            matches!(
                t.as_str(),
                "json" | "application/json" | "application/fhir+json" | "text/json"
            )
        }
        if let Some(f) = format_param {
            return if is_xml(f) { Format::Xml } else { Format::Json };
        }
        match accept {
            Some(a) if a.split(',').any(is_xml) && !a.split(',').any(is_json) => Format::Xml,
            _ => Format::Json,
        }
    }
}

/// An OperationOutcome to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationOutcome {
    pub issues: Vec<Issue>,
    /// The request's `x-request-id`, carried as an extension-free `id`-safe text in the first
    /// issue's diagnostics suffix and as `OperationOutcome.id` when it is a valid FHIR id.
    pub request_id: Option<String>,
}

/// True when `s` is a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`).
fn is_fhir_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Keeps a header value fit to echo: printable ASCII, bounded length.
fn sanitize_request_id(s: &str) -> Option<String> {
    let s: String = s.chars().filter(|c| c.is_ascii_graphic()).take(128).collect();
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}

impl OperationOutcome {
    pub fn single(severity: IssueSeverity, code: IssueType, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            issues: vec![Issue {
                severity,
                code,
                diagnostics: diagnostics.into(),
                expression: None,
            }],
            request_id: None,
        }
    }

    pub fn with_request_id(mut self, request_id: Option<&str>) -> Self {
        self.request_id = request_id.and_then(sanitize_request_id);
        self
    }

    fn diagnostics_of(&self, issue: &Issue) -> String {
        match &self.request_id {
            Some(id) => format!("{} (request id {id})", issue.diagnostics),
            None => issue.diagnostics.clone(),
        }
    }

    /// The resource as FHIR JSON (`resourceType` first, as FHIR JSON is conventionally written).
    pub fn to_json(&self) -> String {
        let q = |s: &str| serde_json::Value::from(s).to_string();
        let mut out = String::from("{\"resourceType\":\"OperationOutcome\"");
        if let Some(id) = self.request_id.as_deref().filter(|id| is_fhir_id(id)) {
            out.push_str(&format!(",\"id\":{}", q(id)));
        }
        out.push_str(",\"issue\":[");
        for (n, i) in self.issues.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&format!(
                "{{\"severity\":{},\"code\":{},\"diagnostics\":{}",
                q(i.severity.code()),
                q(i.code.code()),
                q(&self.diagnostics_of(i))
            ));
            if let Some(e) = &i.expression {
                out.push_str(&format!(",\"expression\":[{}]", q(e)));
            }
            out.push('}');
        }
        out.push_str("]}");
        out
    }

    /// The resource as FHIR XML.
    pub fn to_xml(&self) -> String {
        let mut s = String::from("<OperationOutcome xmlns=\"http://hl7.org/fhir\">");
        if let Some(id) = &self.request_id {
            if is_fhir_id(id) {
                s.push_str(&format!("<id value=\"{}\"/>", xml_escape(id)));
            }
        }
        for i in &self.issues {
            s.push_str("<issue>");
            s.push_str(&format!("<severity value=\"{}\"/>", i.severity.code()));
            s.push_str(&format!("<code value=\"{}\"/>", i.code.code()));
            s.push_str(&format!(
                "<diagnostics value=\"{}\"/>",
                xml_escape(&self.diagnostics_of(i))
            ));
            if let Some(e) = &i.expression {
                s.push_str(&format!("<expression value=\"{}\"/>", xml_escape(e)));
            }
            s.push_str("</issue>");
        }
        s.push_str("</OperationOutcome>");
        s
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => self.to_json(),
            Format::Xml => self.to_xml(),
        }
    }
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

// ---- rewriting error responses that are not FHIR -----------------------------------------------

/// Where an error response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// Envoy or another filter answered locally (no upstream response).
    LocalReply,
    /// The upstream answered.
    Upstream,
}

/// `response.code_details` of answers that come from the upstream: directly (`via_upstream`), or
/// through Envoy's HTTP cache filter (fetched on a miss, or served from the cache).
pub const UPSTREAM_DETAILS: &[&str] = &[
    "via_upstream",
    "cache.insert_via_upstream",
    "cache.response_from_cache_filter",
];

/// True when `response.code_details` says the upstream answered (possibly through the cache).
pub fn is_upstream_answer(code_details: Option<&str>) -> bool {
    code_details.is_some_and(|d| UPSTREAM_DETAILS.contains(&d))
}

/// Tells a local reply from an upstream answer by Envoy's `response.code_details` property:
/// [`UPSTREAM_DETAILS`] mean the upstream answered (also through the cache); anything else (`no_healthy_upstream`,
/// `upstream_response_timeout`, `route_not_found`, `request_rate_limited`, `rbac_access_denied...`,
/// `request_payload_too_large`, `ext_authz_denied`, ...) is a local reply.
pub fn error_source(code_details: Option<&str>) -> ErrorSource {
    match code_details {
        Some(d) if UPSTREAM_DETAILS.contains(&d) => ErrorSource::Upstream,
        Some(_) => ErrorSource::LocalReply,
        // No details: be conservative and treat it as an upstream answer (rewritten only when it is
        // not FHIR).
        None => ErrorSource::Upstream,
    }
}

/// True when a `Content-Type` is a FHIR body (`application/fhir+json`, `application/fhir+xml`,
/// or `application/json`/`application/xml`, which FHIR servers also send).
pub fn is_fhir_content_type(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else { return false };
    let t = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    matches!(
        t.as_str(),
        "application/fhir+json"
            | "application/fhir+xml"
            | "application/json"
            | "application/xml"
            | "text/xml"
    )
}

/// Whether an error response must be rewritten into an OperationOutcome: any status of 400 or
/// more from a local reply, or from the upstream when its body is not FHIR.
pub fn needs_rewrite(status: u16, source: ErrorSource, content_type: Option<&str>) -> bool {
    if status < 400 {
        return false;
    }
    match source {
        ErrorSource::LocalReply => true,
        ErrorSource::Upstream => !is_fhir_content_type(content_type),
    }
}

/// The OperationOutcome issue for an error status that did not come from this filter.
/// `code_details` refines the message for Envoy's local replies.
pub fn issue_for_status(status: u16, code_details: Option<&str>, source: ErrorSource) -> (IssueType, String) {
    let details = code_details.unwrap_or("");
    let code = match status {
        400 => IssueType::Invalid,
        401 => IssueType::Login,
        403 => IssueType::Forbidden,
        404 => IssueType::NotFound,
        405 => IssueType::NotSupported,
        408 => IssueType::Timeout,
        409 | 412 => IssueType::Processing,
        413 | 414 | 431 => IssueType::TooLong,
        415 => IssueType::NotSupported,
        429 => IssueType::Throttled,
        501 => IssueType::NotSupported,
        502 | 503 => IssueType::Transient,
        504 => IssueType::Timeout,
        _ if status >= 500 => IssueType::Exception,
        _ => IssueType::Invalid,
    };
    let text = match source {
        ErrorSource::Upstream => match status {
            500..=599 => "The FHIR server failed to process the request",
            404 => "The requested resource was not found",
            _ => "The FHIR server refused the request",
        },
        ErrorSource::LocalReply => {
            if details.starts_with("no_healthy_upstream") || details.contains("no_healthy_upstream") {
                "The FHIR server is unavailable (no healthy upstream)"
            } else if details.contains("timeout") {
                "The FHIR server did not answer in time"
            } else if details.contains("route_not_found") || details == "cluster_not_found" {
                "No route serves this path"
            } else if details.contains("rate_limited") || status == 429 {
                "Too many requests; retry later"
            } else if details.contains("rbac") {
                "Access denied by policy"
            } else if details.contains("ext_authz") {
                "Access denied by the external authorization service"
            } else if details.contains("payload_too_large") || status == 413 {
                "The request body is too large"
            } else if status == 431 || details.contains("headers_too_large") {
                "The request headers are too large"
            } else if details.contains("reset") || details.contains("connection_failure") {
                "The connection to the FHIR server failed"
            } else {
                match status {
                    500..=599 => "The gateway could not complete the request",
                    _ => "The gateway refused the request",
                }
            }
        }
    };
    (code, text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_schema_shaped_json() {
        let o = OperationOutcome::single(IssueSeverity::Error, IssueType::Forbidden, "nope")
            .with_request_id(Some("abc-123"));
        let v: serde_json::Value = serde_json::from_str(&o.to_json()).unwrap();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["id"], "abc-123");
        assert_eq!(v["issue"][0]["severity"], "error");
        assert_eq!(v["issue"][0]["code"], "forbidden");
        assert_eq!(v["issue"][0]["diagnostics"], "nope (request id abc-123)");
        assert!(v["issue"][0].get("expression").is_none());
    }

    #[test]
    fn json_starts_with_the_resource_type_and_escapes_text() {
        let mut o = OperationOutcome::single(IssueSeverity::Error, IssueType::Invalid, "a \"quoted\"\nline");
        o.issues[0].expression = Some("Bundle.entry[0]".into());
        let text = o.to_json();
        assert!(
            text.starts_with("{\"resourceType\":\"OperationOutcome\""),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["issue"][0]["diagnostics"], "a \"quoted\"\nline");
        assert_eq!(v["issue"][0]["expression"][0], "Bundle.entry[0]");
    }

    #[test]
    fn request_ids_that_are_not_fhir_ids_stay_in_diagnostics_only() {
        let o = OperationOutcome::single(IssueSeverity::Error, IssueType::Login, "x")
            .with_request_id(Some("a/b\n<c>"));
        let v: serde_json::Value = serde_json::from_str(&o.to_json()).unwrap();
        assert!(v.get("id").is_none());
        assert_eq!(v["issue"][0]["diagnostics"], "x (request id a/b<c>)");
        assert!(o.to_xml().contains("a/b&lt;c&gt;"));
    }

    #[test]
    fn renders_xml_with_escaping() {
        let mut o = OperationOutcome::single(IssueSeverity::Fatal, IssueType::Exception, "a < b & \"c\"");
        o.issues[0].expression = Some("Bundle.entry[2]".into());
        assert_eq!(
            o.to_xml(),
            "<OperationOutcome xmlns=\"http://hl7.org/fhir\"><issue><severity value=\"fatal\"/>\
             <code value=\"exception\"/><diagnostics value=\"a &lt; b &amp; &quot;c&quot;\"/>\
             <expression value=\"Bundle.entry[2]\"/></issue></OperationOutcome>"
        );
    }

    #[test]
    fn negotiates_xml_only_when_asked() {
        let cases = [
            (None, None, Format::Json),
            (Some("application/fhir+xml"), None, Format::Xml),
            (Some("application/xml;q=0.9"), None, Format::Xml),
            (
                Some("application/fhir+xml, application/fhir+json"),
                None,
                Format::Json,
            ),
            (Some("*/*"), None, Format::Json),
            (Some("application/fhir+json"), Some("xml"), Format::Xml),
            (Some("application/fhir+xml"), Some("json"), Format::Json),
            (None, Some("application/fhir+xml"), Format::Xml),
            (None, Some("text/html"), Format::Json),
        ];
        for (accept, format, want) in cases {
            assert_eq!(Format::negotiate(accept, format), want, "{accept:?} {format:?}");
        }
    }

    #[test]
    fn rewrites_local_replies_and_non_fhir_upstream_errors_only() {
        let cases = [
            (503, Some("no_healthy_upstream"), None, true),
            (504, Some("upstream_response_timeout"), Some("text/plain"), true),
            (429, Some("request_rate_limited"), Some("text/plain"), true),
            (500, Some("via_upstream"), Some("text/plain"), true),
            (502, Some("via_upstream"), Some("text/html; charset=utf-8"), true),
            (500, Some("via_upstream"), None, true),
            (404, Some("via_upstream"), Some("application/fhir+json"), false),
            (400, Some("via_upstream"), Some("application/json"), false),
            (200, Some("via_upstream"), Some("text/plain"), false),
            (302, Some("via_upstream"), None, false),
        ];
        for (status, details, ct, want) in cases {
            assert_eq!(
                needs_rewrite(status, error_source(details), ct),
                want,
                "{status} {details:?} {ct:?}"
            );
        }
    }

    #[test]
    fn maps_statuses_to_issue_types() {
        let cases = [
            (
                503,
                "no_healthy_upstream",
                IssueType::Transient,
                "no healthy upstream",
            ),
            (
                504,
                "upstream_response_timeout",
                IssueType::Timeout,
                "did not answer in time",
            ),
            (404, "route_not_found", IssueType::NotFound, "No route"),
            (
                429,
                "request_rate_limited",
                IssueType::Throttled,
                "Too many requests",
            ),
            (
                403,
                "rbac_access_denied_matched_policy[none]",
                IssueType::Forbidden,
                "by policy",
            ),
            (
                403,
                "ext_authz_denied",
                IssueType::Forbidden,
                "external authorization",
            ),
            (
                413,
                "request_payload_too_large",
                IssueType::TooLong,
                "body is too large",
            ),
            (
                431,
                "http1.headers_too_large",
                IssueType::TooLong,
                "headers are too large",
            ),
            (
                503,
                "upstream_reset_before_response_started{connection_failure}",
                IssueType::Transient,
                "connection",
            ),
        ];
        for (status, details, code, text) in cases {
            let (c, t) = issue_for_status(status, Some(details), ErrorSource::LocalReply);
            assert_eq!(c, code, "{status} {details}");
            assert!(t.contains(text), "{status} {details}: {t}");
        }
        let (c, t) = issue_for_status(500, Some("via_upstream"), ErrorSource::Upstream);
        assert_eq!(c, IssueType::Exception);
        assert!(t.contains("FHIR server failed"));
    }
}
