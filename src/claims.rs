//! Verified claims: what an authenticated token proves, as a typed value.
//!
//! Produced by [`crate::token`] only after the signature and every claim rule passed; consumed by
//! [`crate::authz`]. Nothing here is trusted before verification.

/// The facts a verified access token carries into authorization.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifiedClaims {
    /// `iss`, exactly as in the token (it matched a configured provider).
    pub issuer: String,
    /// `sub`, when present.
    pub subject: Option<String>,
    /// `client_id`, else `azp`, else `cid`.
    pub client_id: Option<String>,
    /// Granted scopes: the space-separated `scope` string, or an `scp` array, split into words.
    pub scopes: Vec<String>,
    /// The patient in context (claim name configurable, default `patient`).
    pub patient: Option<String>,
    /// `encounter`, when present.
    pub encounter: Option<String>,
    /// `fhirUser`, when present.
    pub fhir_user: Option<String>,
    /// `jti`, when present.
    pub jti: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

impl VerifiedClaims {
    /// The granted scopes as one space-separated string (what `x-smart-scope` carries).
    pub fn scope_string(&self) -> String {
        self.scopes.join(" ")
    }
}
