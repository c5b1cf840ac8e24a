//! JWS signature algorithms this filter can verify (RFC 7518 §3, RFC 8037 §3.1).
//!
//! `none` and the HMAC family (`HS256`, ...) have no variant: they can never be named by a key
//! or selected by a token.

use std::fmt;

/// A JWS `alg` value this filter can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256 (MGF1 SHA-256, salt length 32).
    PS256,
    /// RSASSA-PSS with SHA-384 (MGF1 SHA-384, salt length 48).
    PS384,
    /// RSASSA-PSS with SHA-512 (MGF1 SHA-512, salt length 64).
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// EdDSA; only the Ed25519 curve is supported.
    EdDSA,
}

/// The family of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    /// `kty: RSA`.
    Rsa,
    /// `kty: EC`, `crv: P-256`.
    P256,
    /// `kty: EC`, `crv: P-384`.
    P384,
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519,
}

impl Algorithm {
    /// Every supported algorithm, in the order of [`crate::config::SUPPORTED_ALGORITHMS`].
    pub const ALL: [Algorithm; 9] = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// Parses an `alg` value; case-sensitive, as RFC 7515 §4.1.1 requires.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The registered `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// The key family the algorithm verifies with.
    pub fn key_family(self) -> KeyFamily {
        match self {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 => KeyFamily::P256,
            Algorithm::ES384 => KeyFamily::P384,
            Algorithm::EdDSA => KeyFamily::Ed25519,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_configuration_list() {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, crate::config::SUPPORTED_ALGORITHMS);
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.as_str()), Some(a));
        }
    }

    #[test]
    fn refuses_none_hmac_unknown_and_miscased_names() {
        for name in [
            "none", "None", "HS256", "HS384", "HS512", "rs256", "Ed25519", "ES512", "",
        ] {
            assert_eq!(Algorithm::from_name(name), None, "{name}");
        }
    }
}
