//! Signature verification behind one trait, with two implementations and a fallback combinator.
//!
//! * [`JwtSimpleVerifier`]: pure Rust through jwt-simple, the reference; it verifies every
//!   supported algorithm;
//! * [`super::host::HostVerifier`]: Envoy's `verify_signature` foreign function (BoringSSL), for the
//!   algorithms Envoy can verify; [`SignatureError::Unsupported`] for the others;
//! * [`Fallback`]: asks a primary verifier and, when it cannot judge (unsupported algorithm or a
//!   host failure), the fallback. A verdict of the primary ([`SignatureError::Invalid`] or success)
//!   is final.
//!
//! jwt-simple exposes verification only as `verify_token`, which checks the signature and *then*
//! deserializes and validates the claims. [`JwtSimpleVerifier`] therefore rebuilds the compact
//! token from the signing input and signature, and passes options under which jwt-simple's own
//! claim validation cannot fail (time frozen at 0, no tolerance, future tokens accepted, no
//! issuer/audience/subject requirements): every claim is judged by [`mod@super::verify`] instead, with
//! the configured clock skew and the request's time. Any error jwt-simple reports (bad signature,
//! claims it cannot deserialize) is [`SignatureError::Invalid`]: nothing is mapped to success.

use std::fmt;

use jwt_simple::prelude::{
    Duration, ECDSAP256PublicKeyLike, ECDSAP384PublicKeyLike, EdDSAPublicKeyLike, NoCustomClaims,
    RSAPublicKeyLike, UnixTimeStamp, VerificationOptions,
};

use super::algorithm::Algorithm;
use super::base64url;
use super::jws::MAX_HEADER_B64_BYTES;
use crate::jwks::{PrebuiltKey, VerifyingKey};

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature does not verify with this key.
    Invalid,
    /// This verifier cannot verify this algorithm; ask another.
    Unsupported,
    /// The host failed to judge the signature (its message, which never holds token data).
    HostFailed(String),
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Invalid => f.write_str("signature does not verify"),
            SignatureError::Unsupported => f.write_str("algorithm not supported by this verifier"),
            SignatureError::HostFailed(m) => write!(f, "host signature verification failed: {m}"),
        }
    }
}

impl std::error::Error for SignatureError {}

/// Verifies a JWS signature over its signing input with a chosen key.
pub trait SignatureVerifier {
    /// `Ok(())` only when `signature` is a valid `alg` signature of `signing_input` under `key`.
    fn verify(
        &self,
        alg: Algorithm,
        key: &VerifyingKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError>;
}

/// Pure-Rust verification through jwt-simple (the reference implementation).
#[derive(Debug, Clone, Copy, Default)]
pub struct JwtSimpleVerifier;

/// Options under which jwt-simple checks the signature and nothing that could fail afterwards.
fn signature_only_options() -> VerificationOptions {
    VerificationOptions {
        accept_future: true,
        artificial_time: Some(UnixTimeStamp::from_secs(0)),
        time_tolerance: Some(Duration::from_secs(0)),
        max_header_length: Some(MAX_HEADER_B64_BYTES),
        ..VerificationOptions::default()
    }
}

impl SignatureVerifier for JwtSimpleVerifier {
    fn verify(
        &self,
        alg: Algorithm,
        key: &VerifyingKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let prebuilt = key.prebuilt(alg).ok_or(SignatureError::Invalid)?;
        let input = std::str::from_utf8(signing_input).map_err(|_| SignatureError::Invalid)?;
        let token = format!("{input}.{}", base64url::encode(signature));
        let options = Some(signature_only_options());
        let outcome = match prebuilt {
            PrebuiltKey::RS256(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::RS384(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::RS512(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::PS256(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::PS384(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::PS512(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::ES256(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::ES384(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
            PrebuiltKey::EdDSA(k) => k.verify_token::<NoCustomClaims>(&token, options).map(drop),
        };
        outcome.map_err(|_| SignatureError::Invalid)
    }
}

/// Tries `primary`; when it cannot judge ([`SignatureError::Unsupported`] or
/// [`SignatureError::HostFailed`]), asks `fallback`. Typical use: Envoy's host verifier first,
/// jwt-simple second.
#[derive(Debug, Clone, Copy)]
pub struct Fallback<P, F> {
    /// Asked first.
    pub primary: P,
    /// Asked when the primary cannot judge.
    pub fallback: F,
}

impl<P: SignatureVerifier, F: SignatureVerifier> SignatureVerifier for Fallback<P, F> {
    fn verify(
        &self,
        alg: Algorithm,
        key: &VerifyingKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        match self.primary.verify(alg, key, signing_input, signature) {
            Err(SignatureError::Unsupported) | Err(SignatureError::HostFailed(_)) => {
                self.fallback.verify(alg, key, signing_input, signature)
            }
            verdict => verdict,
        }
    }
}
