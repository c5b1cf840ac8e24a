//! Why a request's bearer token was not accepted: one variant per reason.
//!
//! Messages name the rule that failed, never the token or a claim value.

use std::fmt;

use crate::denial::{Denial, TokenReason};

/// Why a bearer token was refused (or could not be judged yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    // ---- RFC 6750 §2 extraction ---------------------------------------------------------------
    /// No `Authorization` header.
    Missing,
    /// One `Authorization` header with a scheme other than `Bearer` (for example `Basic`). Answered
    /// like [`TokenError::Missing`] (RFC 6750 §3.1: no bearer credentials, no error code); kept
    /// apart for logs.
    OtherScheme,
    /// `Authorization: Bearer` whose credentials are not exactly one `b64token` (empty, several
    /// words, characters outside RFC 6750 §2.1).
    MalformedAuthorization,
    /// More than one `Authorization` header.
    SeveralAuthorizationHeaders,
    /// An `access_token` query parameter (RFC 6750 §2.3); this filter never accepts one.
    TokenInQuery,
    /// The token (or the header holding it) exceeds `max_token_bytes`; nothing was decoded.
    TooLarge,

    // ---- JWS structure (RFC 7515) -------------------------------------------------------------
    /// Not a well-formed JWS compact serialization; the text says which part is wrong.
    Malformed(&'static str),
    /// A header parameter this filter refuses (`crit`, `b64`, `jku`, `jwk`, `x5u`, `cty: JWT`).
    UnsupportedHeader(&'static str),
    /// `typ` is present and is neither `JWT` nor `at+jwt` (`application/at+jwt`).
    UnsupportedType,
    /// `alg` is `none`, an HMAC, unknown, or not in the provider's allow-list.
    AlgorithmNotAllowed,

    // ---- issuer and keys ----------------------------------------------------------------------
    /// `iss` names no configured provider.
    UnknownIssuer,
    /// The provider's keys are not loaded yet (first fetch pending or failed): not the client's
    /// fault; the caller may wait for the fetch or answer 503.
    KeysNotLoaded {
        /// Index of the provider in `Config::providers`.
        provider: usize,
    },
    /// The token's `kid` is not in the loaded key set (or, without `kid`, no key fits its `alg`).
    /// The keys may have rotated: the caller may refetch (rate-limited) and retry once.
    UnknownKey {
        /// Index of the provider in `Config::providers`.
        provider: usize,
    },
    /// Several keys fit (no `kid` and more than one key for the `alg`, or a repeated `kid`).
    AmbiguousKey,
    /// The key named by `kid` does not fit the token's `alg` (type, curve or the JWK's own `alg`).
    KeyMismatch,
    /// The signature does not verify.
    BadSignature,
    /// The signature verifier could not judge the signature (an algorithm it does not support, or
    /// a host failure, with no fallback configured): a server fault, never an acceptance.
    VerifierFailed,

    // ---- claims (RFC 7519 §4.1), judged only after the signature ------------------------------
    /// A required claim is absent.
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type or an impossible value.
    InvalidClaim(&'static str),
    /// `exp` is in the past (beyond the clock skew).
    Expired,
    /// `nbf` is in the future (beyond the clock skew).
    NotYetValid,
    /// `iat` is in the future (beyond the clock skew).
    IssuedInFuture,
    /// `exp - iat` exceeds the provider's `max_lifetime_s`.
    LifetimeTooLong,
    /// `aud` names none of the provider's audiences.
    WrongAudience,
}

impl TokenError {
    /// The client-facing denial (see [`crate::denial`]): RFC 6750 `invalid_request` for a bad
    /// request shape, `invalid_token` with a reason for a refused token, no error code for a
    /// missing token (or another scheme), 503 when the keys are not loaded, and an internal failure
    /// when the verifier could not judge the signature.
    pub fn denial(&self) -> Denial {
        use TokenReason as R;
        match self {
            TokenError::Missing | TokenError::OtherScheme => Denial::MissingToken,
            TokenError::MalformedAuthorization => {
                Denial::InvalidRequest("The Authorization header must be Bearer and one token")
            }
            TokenError::SeveralAuthorizationHeaders => {
                Denial::InvalidRequest("Only one Authorization header is allowed")
            }
            TokenError::TokenInQuery => {
                Denial::InvalidRequest("Access tokens are accepted in the Authorization header only")
            }
            TokenError::TooLarge => Denial::InvalidToken(R::TooLarge),
            TokenError::Malformed(_) => Denial::InvalidToken(R::Malformed),
            TokenError::UnsupportedHeader(_) | TokenError::UnsupportedType => {
                Denial::InvalidToken(R::UnsupportedHeader)
            }
            TokenError::AlgorithmNotAllowed | TokenError::KeyMismatch => {
                Denial::InvalidToken(R::AlgorithmNotAllowed)
            }
            TokenError::UnknownIssuer => Denial::InvalidToken(R::UnknownIssuer),
            TokenError::KeysNotLoaded { .. } => Denial::KeysUnavailable,
            TokenError::UnknownKey { .. } | TokenError::AmbiguousKey => Denial::InvalidToken(R::UnknownKey),
            TokenError::BadSignature => Denial::InvalidToken(R::BadSignature),
            TokenError::VerifierFailed => Denial::Internal,
            TokenError::MissingClaim(_) | TokenError::InvalidClaim(_) => {
                Denial::InvalidToken(R::MissingClaim)
            }
            TokenError::Expired => Denial::InvalidToken(R::Expired),
            TokenError::NotYetValid => Denial::InvalidToken(R::NotYetValid),
            TokenError::IssuedInFuture => Denial::InvalidToken(R::IssuedInFuture),
            TokenError::LifetimeTooLong => Denial::InvalidToken(R::LifetimeTooLong),
            TokenError::WrongAudience => Denial::InvalidToken(R::WrongAudience),
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::Missing => f.write_str("no Authorization header"),
            TokenError::OtherScheme => f.write_str("Authorization scheme is not Bearer"),
            TokenError::MalformedAuthorization => {
                f.write_str("Authorization: Bearer must carry exactly one b64token")
            }
            TokenError::SeveralAuthorizationHeaders => f.write_str("several Authorization headers"),
            TokenError::TokenInQuery => f.write_str("access_token in the query is not accepted"),
            TokenError::TooLarge => f.write_str("bearer token exceeds max_token_bytes"),
            TokenError::Malformed(what) => write!(f, "malformed token: {what}"),
            TokenError::UnsupportedHeader(name) => write!(f, "header parameter `{name}` is refused"),
            TokenError::UnsupportedType => f.write_str("typ is neither JWT nor at+jwt"),
            TokenError::AlgorithmNotAllowed => f.write_str("alg is not allowed for this issuer"),
            TokenError::UnknownIssuer => f.write_str("iss names no configured provider"),
            TokenError::KeysNotLoaded { provider } => {
                write!(f, "keys of provider {provider} are not loaded yet")
            }
            TokenError::UnknownKey { provider } => {
                write!(f, "no key of provider {provider} matches the token's kid")
            }
            TokenError::AmbiguousKey => f.write_str("several keys fit the token"),
            TokenError::KeyMismatch => f.write_str("the key named by kid does not fit alg"),
            TokenError::BadSignature => f.write_str("signature does not verify"),
            TokenError::VerifierFailed => f.write_str("signature verifier could not judge the signature"),
            TokenError::MissingClaim(name) => write!(f, "claim `{name}` is missing"),
            TokenError::InvalidClaim(name) => write!(f, "claim `{name}` is invalid"),
            TokenError::Expired => f.write_str("token has expired"),
            TokenError::NotYetValid => f.write_str("token is not valid yet (nbf)"),
            TokenError::IssuedInFuture => f.write_str("token is issued in the future (iat)"),
            TokenError::LifetimeTooLong => f.write_str("token lifetime exceeds max_lifetime_s"),
            TokenError::WrongAudience => f.write_str("aud names none of the accepted audiences"),
        }
    }
}

impl std::error::Error for TokenError {}
