//! Access-token verification: from request headers to [`VerifiedClaims`], or a [`TokenError`].
//!
//! The pipeline, in order (each step in its own module):
//! 1. [`extract`]: the bearer token of the request (RFC 6750 §2);
//! 2. [`jws`]: JWS compact structure, strict base64url and JSON, header rules (`alg`, `crit`,
//!    `b64`, `jku`/`jwk`/`x5u`, `typ`);
//! 3. provider: the one whose `issuer` equals the token's `iss` exactly (the unverified payload is
//!    read for `iss` only), then its `alg` allow-list;
//! 4. key: from the provider's [`KeySet`] (see [`crate::jwks`]) by `kid`, or the only key fitting
//!    `alg`;
//! 5. [`signature`]: a [`SignatureVerifier`] (jwt-simple, or Envoy's host function through
//!    [`host::HostVerifier`] with [`Fallback`] to jwt-simple);
//! 6. [`mod@verify`]: the claim rules, with the request's time and the configured clock skew.
//!
//! Nothing here reads a clock or calls the host: time, keys and the host call are parameters.

pub mod algorithm;
pub mod base64url;
pub mod error;
pub mod extract;
pub mod host;
pub mod json;
pub mod jws;
pub mod signature;
pub mod verify;

use std::collections::HashMap;

pub use algorithm::{Algorithm, KeyFamily};
pub use error::TokenError;
pub use extract::bearer_token;
pub use host::HostVerifier;
pub use signature::{Fallback, JwtSimpleVerifier, SignatureError, SignatureVerifier};

use crate::claims::VerifiedClaims;
use crate::config::Config;
use crate::jwks::{KeySelectError, KeySet};

/// Where [`verify()`] finds a provider's loaded keys.
pub trait KeyLookup {
    /// The key set of the provider at `provider` in `Config::providers` (whose issuer is
    /// `issuer`), or `None` while it is not loaded.
    fn key_set(&self, provider: usize, issuer: &str) -> Option<&KeySet>;
}

/// Key sets by provider index.
impl KeyLookup for [Option<KeySet>] {
    fn key_set(&self, provider: usize, _issuer: &str) -> Option<&KeySet> {
        self.get(provider).and_then(Option::as_ref)
    }
}

/// Key sets by provider index.
impl KeyLookup for Vec<Option<KeySet>> {
    fn key_set(&self, provider: usize, issuer: &str) -> Option<&KeySet> {
        self.as_slice().key_set(provider, issuer)
    }
}

/// Key sets by issuer.
impl KeyLookup for HashMap<String, KeySet> {
    fn key_set(&self, _provider: usize, issuer: &str) -> Option<&KeySet> {
        self.get(issuer)
    }
}

/// Verifies a bearer token (as returned by [`bearer_token`]) against the configuration.
///
/// `now` is the request's time in seconds since the Unix epoch. Errors that let the caller act
/// are distinct: [`TokenError::KeysNotLoaded`] (wait for the key fetch, or answer 503) and
/// [`TokenError::UnknownKey`] (the keys may have rotated: refetch, rate-limited, then retry once).
pub fn verify(
    token: &str,
    config: &Config,
    keys: &dyn KeyLookup,
    now: u64,
    verifier: &dyn SignatureVerifier,
) -> Result<VerifiedClaims, TokenError> {
    if token.len() > config.max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    let jws = jws::parse(token)?;
    let alg = jws.header.alg;

    // The unverified payload chooses the provider, and nothing else is read from it yet.
    let issuer = match jws.unverified_claims.get("iss") {
        None => return Err(TokenError::MissingClaim("iss")),
        Some(serde_json::Value::String(iss)) => iss,
        Some(_) => return Err(TokenError::InvalidClaim("iss")),
    };
    let (index, provider) = config
        .providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.issuer == *issuer)
        .ok_or(TokenError::UnknownIssuer)?;
    if !provider.algorithms.iter().any(|a| a == alg.as_str()) {
        return Err(TokenError::AlgorithmNotAllowed);
    }

    let key_set = keys
        .key_set(index, &provider.issuer)
        .ok_or(TokenError::KeysNotLoaded { provider: index })?;
    let key = key_set
        .select(jws.header.kid.as_deref(), alg)
        .map_err(|e| match e {
            KeySelectError::Unknown => TokenError::UnknownKey { provider: index },
            KeySelectError::Mismatch => TokenError::KeyMismatch,
            KeySelectError::Ambiguous => TokenError::AmbiguousKey,
        })?;
    verifier
        .verify(alg, key, jws.signing_input.as_bytes(), &jws.signature)
        .map_err(|e| match e {
            SignatureError::Invalid => TokenError::BadSignature,
            SignatureError::Unsupported | SignatureError::HostFailed(_) => TokenError::VerifierFailed,
        })?;

    verify::check_claims(
        &jws.unverified_claims,
        verify::ClaimRules {
            provider,
            clock_skew_s: config.clock_skew_s,
            patient_claim: &config.patient_claim,
        },
        now,
    )
}

/// A short, stable identifier of a token for logs: the first 12 hex digits of its SHA-256.
pub fn token_fingerprint(token: &str) -> String {
    let digest = hmac_sha256::Hash::hash(token.as_bytes());
    hex(digest.get(..6).unwrap_or_default())
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Test keys and token minting, for this crate's tests and (with the `test-support` feature) the
/// wasm-level and real-Envoy suites.
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
#[cfg(test)]
mod tests;
