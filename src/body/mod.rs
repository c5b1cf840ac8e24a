//! Body-aware checks: what the edge verifies in request and response bodies when the URL alone
//! cannot decide (patient-level and granular grants).
//!
//! [`authorize`](crate::authz::authorize) answers from the URL and, where the body decides, says
//! so in [`Authorized::body_check`](crate::authz::Authorized::body_check) (the request body must be read and
//! checked with [`check_request`] before anything is forwarded) and
//! [`Authorized::response_check`](crate::authz::Authorized::response_check) (the response body must be read and
//! checked with [`response::check_response`] before anything is passed on).
//!
//! * [`membership`]: Patient compartment membership of a resource, from its JSON;
//! * [`granular`]: whether a resource meets a granular scope's constraints;
//! * [`form`]: `POST _search` form bodies, authorized as the GET search;
//! * [`write`]: create, update and patch bodies under patient-level and granular grants;
//! * [`bundle`]: batch and transaction Bundles, authorized entry by entry;
//! * [`response`]: reads, searchsets, histories and batch responses, checked and filtered.
//!
//! Everything fails closed: a body that cannot be read, or that holds what cannot be checked, is
//! refused (requests) or withheld (responses).

pub mod bundle;
pub mod form;
pub mod granular;
pub mod membership;
pub mod response;
pub mod write;

use crate::claims::VerifiedClaims;
use crate::config::Config;
use crate::denial::{Denial, ForbiddenReason, RequestReason};
use crate::fhir::FhirRequest;
use crate::scope::{Context, GrantedScopes};

pub use response::{check_response, ResponseVerdict};

/// What the request body must show before the request is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyCheck {
    /// `POST [base]/…/_search`: the form parameters, merged with the URL's, authorized as the GET
    /// search ([`form`]).
    SearchForm,
    /// `POST [base]` with a batch or transaction Bundle: every entry authorized ([`bundle`]).
    Bundle,
    /// A create, update or patch body ([`write`]).
    Write(WriteCheck),
}

/// What a write body must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteCheck {
    pub mode: WriteMode,
    /// The resource type of the URL.
    pub resource_type: String,
    /// Under patient-level grants: the patient in context, whose compartment the written resource
    /// must stay in (compartment types only).
    pub patient: Option<String>,
    /// Under granular-only grants: the context whose granular scopes the resource must meet.
    pub granular: Option<Context>,
}

/// The kind of write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMode {
    /// `POST [base]/[type]`.
    Create,
    /// `PUT [base]/[type]/[id]`.
    Update { id: String },
    /// `PUT [base]/[type]?[search]` (the search confined to the patient when one is in context).
    ConditionalUpdate,
    /// `PATCH [base]/[type]/[id]` or `PATCH [base]/[type]?[search]` on a resource known to be in
    /// the patient's compartment.
    Patch,
}

/// Whom a response is checked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The scope context whose grants decide which types (and granular constraints) are visible.
    pub context: Context,
    /// Under patient-level grants: the patient whose compartment every compartment resource must
    /// be in.
    pub patient: Option<String>,
}

/// What the response body must show before it is passed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCheck {
    /// A read or vread: the resource itself.
    Resource {
        access: Access,
        resource_type: String,
        id: String,
    },
    /// An instance history Bundle: versions outside the grant are removed; none left, refused.
    History { access: Access },
    /// A searchset Bundle: entries outside the grant are removed. `vouched` names the searched
    /// type, whose `match` entries met the granular constraints through the query itself.
    Searchset { access: Access, vouched: Option<String> },
    /// A batch or transaction response: entry `i` checked with check `i` (`None`: as it is).
    BatchResponse(Vec<Option<ResponseCheck>>),
}

/// A request body accepted: what still applies to the request and its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyAllowed {
    /// A `(name, value)` parameter to append to the URL query before forwarding (a form search
    /// confined to the patient; FHIR applies URL and body parameters together).
    pub append_query: Option<(String, String)>,
    /// The check to run on the response.
    pub response_check: Option<ResponseCheck>,
}

/// Default largest request body the edge reads (bytes).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;
/// Default largest response body the edge reads (bytes).
pub const DEFAULT_MAX_RESPONSE_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Checks a request body that [`Authorized::body_check`](crate::authz::Authorized::body_check) asked for.
///
/// `content_type` is the request's `Content-Type`. Returns what applies to the forwarded request
/// and its response, or the denial to answer with.
pub fn check_request(
    req: &FhirRequest,
    check: &BodyCheck,
    content_type: Option<&str>,
    body: &[u8],
    claims: &VerifiedClaims,
    granted: &GrantedScopes,
    config: &Config,
) -> Result<BodyAllowed, Denial> {
    if body.len() > config.max_request_body_bytes {
        return Err(Denial::BadRequest(
            RequestReason::BodyTooLarge,
            "The request body is larger than the edge reads",
        ));
    }
    match check {
        BodyCheck::SearchForm => form::check(req, content_type, body, claims, granted, config),
        BodyCheck::Bundle => bundle::check(content_type, body, claims, granted, config),
        BodyCheck::Write(w) => write::check(w, content_type, body, granted, config).map(|()| BodyAllowed {
            append_query: None,
            response_check: None,
        }),
    }
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
pub(crate) fn media_type(content_type: Option<&str>) -> Option<String> {
    let t = content_type?.split(';').next()?.trim().to_ascii_lowercase();
    (!t.is_empty()).then_some(t)
}

/// Whether a media type is FHIR JSON (`application/fhir+json`, `application/json`).
pub(crate) fn is_json(media: Option<&str>) -> bool {
    matches!(media, Some("application/fhir+json" | "application/json"))
}

/// A 403 the edge answers when a body holds what it cannot verify.
pub(crate) fn not_enforceable(detail: &str) -> Denial {
    Denial::Forbidden {
        reason: ForbiddenReason::NotEnforceableAtEdge,
        scope: None,
        detail: format!("{detail} cannot be verified at the edge"),
    }
}

/// A 403 for a body that reaches outside the patient in context.
pub(crate) fn outside(detail: &str) -> Denial {
    Denial::Forbidden {
        reason: ForbiddenReason::OutsidePatientCompartment,
        scope: None,
        detail: detail.to_string(),
    }
}

/// A 400 for a body that is not what its URL and content type say.
pub(crate) fn malformed(detail: &'static str) -> Denial {
    Denial::BadRequest(RequestReason::Malformed, detail)
}

/// Test fixtures shared by the body checks.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::claims::VerifiedClaims;
    use crate::config::{Config, Mode, ResponseDenial, UnconstrainedSearch};
    use crate::scope::GrantedScopes;

    pub fn config() -> Config {
        Config {
            fhir_base: "/fhir".into(),
            providers: vec![],
            clock_skew_s: 60,
            public_paths: vec![],
            max_token_bytes: 16384,
            realm: "ehr".into(),
            patient_claim: "patient".into(),
            unconstrained_search: UnconstrainedSearch::Constrain,
            operations: vec![],
            smart_configuration: None,
            mode: Mode::Enforce,
            fhir_base_urls: vec!["https://ehr.example/fhir".into()],
            response_denial: ResponseDenial::Forbidden,
            max_request_body_bytes: super::DEFAULT_MAX_REQUEST_BODY_BYTES,
            max_response_body_bytes: super::DEFAULT_MAX_RESPONSE_BODY_BYTES,
            body_checks: true,
            audit: Default::default(),
            revocation: Default::default(),
            anomaly_brake: None,
            forward_headers: crate::config::ForwardHeaders::DEFAULT,
            version_header: false,
        }
    }

    pub fn token(scopes: &str, patient: Option<&str>) -> (VerifiedClaims, GrantedScopes) {
        let claims = VerifiedClaims {
            issuer: "https://idp.example".into(),
            scopes: scopes.split_whitespace().map(str::to_string).collect(),
            patient: patient.map(str::to_string),
            ..VerifiedClaims::default()
        };
        let granted = GrantedScopes::parse(&claims.scopes);
        (claims, granted)
    }
}
