//! JWS compact serialization (RFC 7515 §7.1): split, decode and judge the protected header.
//!
//! Only `BASE64URL(header) "." BASE64URL(payload) "." BASE64URL(signature)` is accepted: every
//! part strict base64url (see [`super::base64url`]), header and payload strict JSON objects (no
//! duplicate member names, see [`super::json`]), the signature non-empty.
//!
//! Header rules:
//! * `alg` must name a supported algorithm ([`Algorithm`]); `none`, `HS*` and anything unknown are
//!   [`TokenError::AlgorithmNotAllowed`]. The provider's allow-list is checked later, once `iss`
//!   has chosen the provider;
//! * `crit` in any form is refused: this filter understands no extension, and RFC 7515 §4.1.11
//!   forbids an empty list;
//! * `b64` is refused (RFC 7797 unencoded payloads);
//! * `jku`, `jwk` and `x5u` are refused: a token must never choose its own key, and no legitimate
//!   access token needs them;
//! * `x5c`, `x5t` and `x5t#S256` are ignored (never used to pick a key) but must have their
//!   registered JSON types, as must `kid`, `typ` and `cty`;
//! * `typ`, when present, must be `JWT`, `at+jwt` or `application/at+jwt` (RFC 9068 §2.1), compared
//!   without regard to case (media types are case-insensitive). An absent `typ` is accepted, and
//!   `JWT` is accepted because mainstream issuers still send it; every other type (`dpop+jwt`,
//!   `secevent+jwt`, `logout+jwt`, ...) is refused so that other kinds of JWT cannot be replayed as
//!   access tokens;
//! * `cty: JWT` (a nested JWT) is refused; other `cty` values are ignored.
//!
//! The protected header may hold at most [`MAX_HEADER_B64_BYTES`] characters.

use serde_json::{Map, Value};

use super::algorithm::Algorithm;
use super::json::{self, JsonError};
use super::{base64url, TokenError};

/// Largest accepted protected header, in base64url characters (matches jwt-simple's own limit).
pub const MAX_HEADER_B64_BYTES: usize = 8192;

/// Header parameters whose mere presence refuses the token.
const REFUSED_PARAMETERS: [&str; 5] = ["crit", "b64", "jku", "jwk", "x5u"];

/// A JWS whose structure and header passed; nothing in it is verified yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Jws<'a> {
    /// The judged protected header.
    pub header: Header,
    /// The payload's claims, **unverified** until the signature has been checked.
    pub unverified_claims: Map<String, Value>,
    /// `BASE64URL(header) "." BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// The protected header parameters this filter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `alg`.
    pub alg: Algorithm,
    /// `kid`, when present.
    pub kid: Option<String>,
    /// `typ`, when present (one of the accepted values).
    pub typ: Option<String>,
}

/// Splits and decodes a compact JWS and judges its header.
pub fn parse(token: &str) -> Result<Jws<'_>, TokenError> {
    let dots = token.bytes().filter(|b| *b == b'.').count();
    if dots == 4 {
        return Err(TokenError::Malformed("encrypted tokens (JWE) are not accepted"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), 2) =
        (parts.next(), parts.next(), parts.next(), dots)
    else {
        return Err(TokenError::Malformed("not a JWS compact serialization"));
    };
    if header_b64.len() > MAX_HEADER_B64_BYTES {
        return Err(TokenError::Malformed("protected header is too large"));
    }

    let header_bytes =
        base64url::decode(header_b64).ok_or(TokenError::Malformed("header is not base64url"))?;
    let header = json::parse_object(&header_bytes).map_err(|e| match e {
        JsonError::DuplicateMember => TokenError::Malformed("header repeats a member name"),
        _ => TokenError::Malformed("header is not a JSON object"),
    })?;
    let header = judge_header(&header)?;

    let payload_bytes =
        base64url::decode(payload_b64).ok_or(TokenError::Malformed("payload is not base64url"))?;
    let unverified_claims = json::parse_object(&payload_bytes).map_err(|e| match e {
        JsonError::DuplicateMember => TokenError::Malformed("claims repeat a member name"),
        _ => TokenError::Malformed("claims are not a JSON object"),
    })?;

    let signature =
        base64url::decode(signature_b64).ok_or(TokenError::Malformed("signature is not base64url"))?;
    if signature.is_empty() {
        return Err(TokenError::Malformed("signature is missing"));
    }

    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    let signing_input = token
        .get(..signing_input_len)
        .ok_or(TokenError::Malformed("not a JWS compact serialization"))?;
    Ok(Jws {
        header,
        unverified_claims,
        signing_input,
        signature,
    })
}

fn judge_header(header: &Map<String, Value>) -> Result<Header, TokenError> {
    let alg = match header.get("alg") {
        None => return Err(TokenError::Malformed("header has no alg")),
        Some(Value::String(name)) => Algorithm::from_name(name).ok_or(TokenError::AlgorithmNotAllowed)?,
        Some(_) => return Err(TokenError::Malformed("alg is not a string")),
    };
    if let Some(name) = REFUSED_PARAMETERS.into_iter().find(|n| header.contains_key(*n)) {
        return Err(TokenError::UnsupportedHeader(name));
    }
    let kid = optional_string(header, "kid", "kid is not a string")?;
    let typ = optional_string(header, "typ", "typ is not a string")?;
    if let Some(t) = &typ {
        let accepted = ["JWT", "at+jwt", "application/at+jwt"];
        if !accepted.iter().any(|a| a.eq_ignore_ascii_case(t)) {
            return Err(TokenError::UnsupportedType);
        }
    }
    if let Some(cty) = optional_string(header, "cty", "cty is not a string")? {
        if cty.eq_ignore_ascii_case("JWT") || cty.eq_ignore_ascii_case("application/jwt") {
            return Err(TokenError::UnsupportedHeader("cty"));
        }
    }
    optional_string(header, "x5t", "x5t is not a string")?;
    optional_string(header, "x5t#S256", "x5t#S256 is not a string")?;
    match header.get("x5c") {
        None => {}
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {}
        Some(_) => return Err(TokenError::Malformed("x5c is not an array of strings")),
    }
    Ok(Header { alg, kid, typ })
}

fn optional_string(
    header: &Map<String, Value>,
    name: &str,
    wrong_type: &'static str,
) -> Result<Option<String>, TokenError> {
    match header.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(TokenError::Malformed(wrong_type)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SIG: &str = "c2ln"; // "sig"

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.{SIG}",
            base64url::encode(header.as_bytes()),
            base64url::encode(payload.as_bytes())
        )
    }

    #[test]
    fn accepts_a_well_formed_jws_and_keeps_its_signing_input() {
        let t = token(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#, r#"{"iss":"i"}"#);
        let jws = parse(&t).unwrap();
        assert_eq!(
            jws.header,
            Header {
                alg: Algorithm::ES256,
                kid: Some("k1".into()),
                typ: Some("JWT".into())
            }
        );
        assert_eq!(jws.unverified_claims.get("iss"), Some(&json!("i")));
        assert_eq!(jws.signature, b"sig");
        assert_eq!(
            Some(jws.signing_input),
            t.rsplit_once('.').map(|(input, _)| input)
        );
    }

    #[test]
    fn accepts_the_documented_typ_values_in_any_case_and_ignores_x5_hints() {
        for header in [
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"RS256","typ":"jwt"}"#,
            r#"{"alg":"RS256","typ":"at+jwt"}"#,
            r#"{"alg":"RS256","typ":"AT+JWT"}"#,
            r#"{"alg":"RS256","typ":"application/at+jwt"}"#,
            r#"{"alg":"RS256","cty":"json"}"#,
            r#"{"alg":"RS256","x5t":"abc","x5t#S256":"def","x5c":["MIIB"]}"#,
            r#"{"alg":"EdDSA","unknown":{"nested":[1,2]}}"#,
        ] {
            assert!(parse(&token(header, "{}")).is_ok(), "{header}");
        }
    }

    #[test]
    fn refuses_algorithms_that_are_none_hmac_or_unknown() {
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"HS256"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS1"}"#,
            r#"{"alg":"rs256"}"#,
            r#"{"alg":"ES512"}"#,
            r#"{"alg":""}"#,
        ] {
            assert_eq!(
                parse(&token(header, "{}")),
                Err(TokenError::AlgorithmNotAllowed),
                "{header}"
            );
        }
    }

    #[test]
    fn refuses_crit_b64_and_key_carrying_headers() {
        let cases = [
            (r#"{"alg":"RS256","crit":["exp"],"exp":1}"#, "crit"),
            (r#"{"alg":"RS256","crit":[]}"#, "crit"),
            (r#"{"alg":"RS256","b64":false,"crit":["b64"]}"#, "crit"),
            (r#"{"alg":"RS256","b64":true}"#, "b64"),
            (r#"{"alg":"RS256","jku":"https://evil.example/jwks"}"#, "jku"),
            (
                r#"{"alg":"RS256","jwk":{"kty":"RSA","n":"AQAB","e":"AQAB"}}"#,
                "jwk",
            ),
            (r#"{"alg":"RS256","x5u":"https://evil.example/cert"}"#, "x5u"),
            (r#"{"alg":"RS256","cty":"JWT"}"#, "cty"),
        ];
        for (header, name) in cases {
            assert_eq!(
                parse(&token(header, "{}")),
                Err(TokenError::UnsupportedHeader(name)),
                "{header}"
            );
        }
    }

    #[test]
    fn refuses_other_token_types() {
        for typ in ["dpop+jwt", "secevent+jwt", "logout+jwt", "JOSE", "at+jwt2", ""] {
            let header = json!({"alg": "RS256", "typ": typ}).to_string();
            assert_eq!(
                parse(&token(&header, "{}")),
                Err(TokenError::UnsupportedType),
                "{typ}"
            );
        }
    }

    #[test]
    fn refuses_malformed_structure_encoding_and_json() {
        let good_header = base64url::encode(br#"{"alg":"RS256"}"#);
        let good_payload = base64url::encode(b"{}");
        let padded_header = format!("{}==", base64url::encode(br#"{"alg":"RS256"} "#));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "not a JWS compact serialization"),
            ("abc".into(), "not a JWS compact serialization"),
            (
                format!("{good_header}.{good_payload}"),
                "not a JWS compact serialization",
            ),
            (
                format!("{good_header}.{good_payload}.{SIG}.x"),
                "not a JWS compact serialization",
            ),
            ("a.b.c.d.e".into(), "encrypted tokens (JWE) are not accepted"),
            (
                format!("{padded_header}.{good_payload}.{SIG}"),
                "header is not base64url",
            ),
            (
                format!("{good_header}.{good_payload}.c2l+"),
                "signature is not base64url",
            ),
            (
                format!("{good_header}.{good_payload}.c2ln="),
                "signature is not base64url",
            ),
            (format!("{good_header}.e30=.{SIG}"), "payload is not base64url"),
            (format!("{good_header}.e3+.{SIG}"), "payload is not base64url"),
            (format!("{good_header}.{good_payload}."), "signature is missing"),
            (format!(".{good_payload}.{SIG}"), "header is not a JSON object"),
            (token("[]", "{}"), "header is not a JSON object"),
            (
                token(r#"{"alg":"RS256","alg":"none"}"#, "{}"),
                "header repeats a member name",
            ),
            (token(r#"{"typ":"JWT"}"#, "{}"), "header has no alg"),
            (token(r#"{"alg":256}"#, "{}"), "alg is not a string"),
            (token(r#"{"alg":"RS256","kid":7}"#, "{}"), "kid is not a string"),
            (
                token(r#"{"alg":"RS256","typ":["JWT"]}"#, "{}"),
                "typ is not a string",
            ),
            (
                token(r#"{"alg":"RS256","x5c":"MIIB"}"#, "{}"),
                "x5c is not an array of strings",
            ),
            (token(r#"{"alg":"RS256"}"#, "[1]"), "claims are not a JSON object"),
            (token(r#"{"alg":"RS256"}"#, ""), "claims are not a JSON object"),
            (
                token(r#"{"alg":"RS256"}"#, r#"{"sub":"a","sub":"b"}"#),
                "claims repeat a member name",
            ),
            (
                format!("{}.{good_payload}.{SIG}", "A".repeat(MAX_HEADER_B64_BYTES + 1)),
                "protected header is too large",
            ),
        ];
        for (t, what) in cases {
            assert_eq!(parse(&t), Err(TokenError::Malformed(what)), "{t}");
        }
    }

    #[test]
    fn refuses_truncated_base64_parts() {
        let t = token(r#"{"alg":"RS256"}"#, r#"{"iss":"https://idp.example.org"}"#);
        let (header, rest) = t.split_once('.').unwrap();
        // Dropping characters leaves an impossible length or non-canonical trailing bits.
        for cut in 1..=3 {
            let truncated = format!("{}.{rest}", &header[..header.len() - cut]);
            assert!(
                matches!(parse(&truncated), Err(TokenError::Malformed(_))),
                "cut {cut}"
            );
        }
    }
}
