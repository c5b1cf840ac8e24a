//! Claim rules (RFC 7519 §4.1, RFC 9068 §4), applied only after the signature verified, and the
//! construction of [`VerifiedClaims`].
//!
//! * `exp` is required; `exp`, `nbf` and `iat` must be non-negative JSON numbers (a fraction is
//!   rounded towards refusal: down for `exp`, up for `nbf`/`iat`). With `skew = clock_skew_s`:
//!   expired when `now >= exp + skew`, not yet valid when `nbf > now + skew`, issued in the future
//!   when `iat > now + skew`;
//! * with a provider `max_lifetime_s`, `iat` is required and `exp - iat` may not exceed it;
//! * `aud` (a string or an array of strings) is required and must name one of the provider's
//!   audiences;
//! * `iss`, `sub`, `jti`, `nonce`, the client id, the patient, `encounter` and `fhirUser` must be
//!   strings when present (patient, `encounter` and `fhirUser` also non-empty): a claim of the
//!   wrong type refuses the token rather than being ignored;
//! * client id: `client_id`, else `azp`, else `cid` (Okta);
//! * scopes: `scope`, else `scp` (Okta's array, Azure's string); each may be a space-separated
//!   string or an array of strings without spaces.

use serde_json::{Map, Value};

use super::TokenError;
use crate::claims::VerifiedClaims;
use crate::config::Provider;

/// What the claim rules need from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRules<'a> {
    /// The provider chosen by `iss`.
    pub provider: &'a Provider,
    /// `clock_skew_s`.
    pub clock_skew_s: u64,
    /// `patient_claim`.
    pub patient_claim: &'a str,
}

/// Judges the claims of a token whose signature verified and builds [`VerifiedClaims`].
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: ClaimRules<'_>,
    now: u64,
) -> Result<VerifiedClaims, TokenError> {
    let skew = rules.clock_skew_s;
    let issuer = string_claim(claims, "iss")?.ok_or(TokenError::MissingClaim("iss"))?;

    let exp = numeric_date(claims, "exp", Rounding::Down)?.ok_or(TokenError::MissingClaim("exp"))?;
    if now >= exp.saturating_add(skew) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf", Rounding::Up)? {
        if nbf > now.saturating_add(skew) {
            return Err(TokenError::NotYetValid);
        }
    }
    let iat = numeric_date(claims, "iat", Rounding::Up)?;
    if let Some(iat) = iat {
        if iat > now.saturating_add(skew) {
            return Err(TokenError::IssuedInFuture);
        }
    }
    if let Some(max) = rules.provider.max_lifetime_s {
        let iat = iat.ok_or(TokenError::MissingClaim("iat"))?;
        let lifetime = exp.checked_sub(iat).ok_or(TokenError::InvalidClaim("iat"))?;
        if lifetime > max {
            return Err(TokenError::LifetimeTooLong);
        }
    }

    let audiences = match claims.get("aud") {
        None => return Err(TokenError::MissingClaim("aud")),
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(TokenError::InvalidClaim("aud")))
            .collect::<Result<Vec<&str>, TokenError>>()?,
        Some(_) => return Err(TokenError::InvalidClaim("aud")),
    };
    if !audiences
        .iter()
        .any(|a| rules.provider.audiences.iter().any(|accepted| accepted == a))
    {
        return Err(TokenError::WrongAudience);
    }

    let subject = string_claim(claims, "sub")?;
    let jti = string_claim(claims, "jti")?;
    // Not used here, but jwt-simple (the reference verifier) refuses a non-string `nonce`; refusing
    // it on every path keeps the verifiers in agreement.
    string_claim(claims, "nonce")?;
    let mut client_id = None;
    for name in ["client_id", "azp", "cid"] {
        if let Some(id) = string_claim(claims, name)? {
            client_id = Some(id);
            break;
        }
    }
    let scopes = if claims.contains_key("scope") {
        scope_list(claims, "scope")?
    } else if claims.contains_key("scp") {
        scope_list(claims, "scp")?
    } else {
        Vec::new()
    };
    let patient = non_empty_string(claims, rules.patient_claim, "patient")?;
    let encounter = non_empty_string(claims, "encounter", "encounter")?;
    let fhir_user = non_empty_string(claims, "fhirUser", "fhirUser")?;

    Ok(VerifiedClaims {
        issuer,
        subject,
        client_id,
        scopes,
        patient,
        encounter,
        fhir_user,
        jti,
        expires_at: exp,
    })
}

#[derive(Clone, Copy)]
enum Rounding {
    Down,
    Up,
}

/// A NumericDate (RFC 7519 §2): a non-negative JSON number of seconds.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
    rounding: Rounding,
) -> Result<Option<u64>, TokenError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let Value::Number(n) = value else {
        return Err(TokenError::InvalidClaim(name));
    };
    if let Some(secs) = n.as_u64() {
        return Ok(Some(secs));
    }
    match n.as_f64() {
        // Below 2^63: far beyond any real date, and exactly representable bounds for the cast.
        Some(f) if f.is_finite() && (0.0..9.2e18).contains(&f) => Ok(Some(match rounding {
            Rounding::Down => f.floor() as u64,
            Rounding::Up => f.ceil() as u64,
        })),
        _ => Err(TokenError::InvalidClaim(name)),
    }
}

fn string_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}

fn non_empty_string(
    claims: &Map<String, Value>,
    name: &str,
    label: &'static str,
) -> Result<Option<String>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::InvalidClaim(label)),
    }
}

fn scope_list(claims: &Map<String, Value>, name: &'static str) -> Result<Vec<String>, TokenError> {
    match claims.get(name) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item.as_str() {
                Some(w) if !w.is_empty() && !w.contains(' ') => Ok(w.to_owned()),
                _ => Err(TokenError::InvalidClaim(name)),
            })
            .collect(),
        Some(_) => Err(TokenError::InvalidClaim(name)),
    }
}
