//! Bearer token extraction from a request (RFC 6750 §2).
//!
//! Accepted: exactly one `Authorization` header whose value is `Bearer` (any letter case), one or
//! more spaces, and one `b64token` (RFC 6750 §2.1: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
//! "+" / "/" ) *"="`). Surrounding optional whitespace of the field value is ignored.
//!
//! Refused, each with its own [`TokenError`]:
//! * an `access_token` query parameter (§2.3), even next to a valid header: the filter never takes
//!   tokens from URLs (they leak into logs and `Referer`), and a token in two places is "more than
//!   one method" (§3.1 `invalid_request`). The parameter name is percent-decoded before comparing;
//! * several `Authorization` headers;
//! * another scheme (`Basic ...`): [`TokenError::OtherScheme`], answered like a missing token;
//! * a token longer than `max_token_bytes`, checked before any character of it is inspected.
//!
//! Form-encoded body tokens (§2.2) are not looked at: the filter decides on headers only.

use super::TokenError;

/// Room for the scheme and whitespace around a token of the largest accepted size.
const HEADER_OVERHEAD: usize = 256;

/// Finds the bearer token of a request.
///
/// `headers` are all request header pairs (names compared case-insensitively; Envoy gives them
/// lowercase); `query` is the raw query string (with or without its leading `?`).
pub fn bearer_token<'a, N, V>(
    headers: &'a [(N, V)],
    query: &str,
    max_token_bytes: usize,
) -> Result<&'a str, TokenError>
where
    N: AsRef<str>,
    V: AsRef<str>,
{
    bearer_credentials(headers, query, max_token_bytes).and_then(check_b64token)
}

/// [`bearer_token`] without its last step, the character check of [`check_b64token`]: for a caller
/// that first looks the credentials up among tokens that already passed it (the verified-token
/// cache), so that a hit does not read the token twice.
pub fn bearer_credentials<'a, N, V>(
    headers: &'a [(N, V)],
    query: &str,
    max_token_bytes: usize,
) -> Result<&'a str, TokenError>
where
    N: AsRef<str>,
    V: AsRef<str>,
{
    if query_has_access_token(query) {
        return Err(TokenError::TokenInQuery);
    }
    let mut values = headers
        .iter()
        .filter(|(name, _)| name.as_ref().eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.as_ref());
    let value = values.next().ok_or(TokenError::Missing)?;
    if values.next().is_some() {
        return Err(TokenError::SeveralAuthorizationHeaders);
    }
    if value.len() > max_token_bytes.saturating_add(HEADER_OVERHEAD) {
        return Err(TokenError::TooLarge);
    }
    let value = value.trim_matches([' ', '\t']);
    // The scheme ends at the first space or tab; only spaces may separate it from the token.
    let scheme_end = value.find([' ', '\t']).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::OtherScheme);
    }
    let token = rest.trim_start_matches(' ');
    if token.len() > max_token_bytes {
        return Err(TokenError::TooLarge);
    }
    Ok(token)
}

/// `token` when it is an RFC 6750 `b64token`, else [`TokenError::MalformedAuthorization`].
pub fn check_b64token(token: &str) -> Result<&str, TokenError> {
    if is_b64token(token) {
        Ok(token)
    } else {
        Err(TokenError::MalformedAuthorization)
    }
}

/// RFC 6750 §2.1 `b64token`.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    // A table lookup per byte: this runs over the whole token on every request.
    !body.is_empty()
        && body
            .bytes()
            .all(|b| B64TOKEN_BODY.get(usize::from(b)) == Some(&true))
}

/// The characters of a `b64token` before its trailing `=`: `ALPHA / DIGIT / "-" / "." / "_" /
/// "~" / "+" / "/"`, indexed by byte. Built at compile time (an index out of range would fail the
/// build, not a request).
#[allow(clippy::indexing_slicing)]
static B64TOKEN_BODY: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

/// Whether the query names `access_token` (percent-decoded, as the upstream server would read it).
fn query_has_access_token(query: &str) -> bool {
    let query = query.strip_prefix('?').unwrap_or(query);
    query
        .split('&')
        .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
        .any(|name| name_is_access_token(name.as_bytes()))
}

fn name_is_access_token(raw: &[u8]) -> bool {
    const WANTED: &[u8] = b"access_token";
    let mut decoded = Vec::with_capacity(WANTED.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if decoded.len() > WANTED.len() {
            return false;
        }
        let byte = match b {
            b'%' => match (raw.get(i + 1).and_then(hex), raw.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    i += 2;
                    hi << 4 | lo
                }
                _ => b,
            },
            b'+' => b' ',
            _ => b,
        };
        decoded.push(byte);
        i += 1;
    }
    decoded == WANTED
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    fn extract<'a>(headers: &'a [(&'a str, &'a str)], query: &str) -> Result<&'a str, TokenError> {
        bearer_token(headers, query, MAX)
    }

    #[test]
    fn accepts_one_bearer_header_in_any_letter_case() {
        let cases: &[(&str, &str)] = &[
            ("Bearer abc.def.ghi", "abc.def.ghi"),
            ("bearer abc.def.ghi", "abc.def.ghi"),
            ("BEARER abc.def.ghi", "abc.def.ghi"),
            ("bEaReR abc", "abc"),
            ("Bearer    abc", "abc"),
            (" Bearer abc\t", "abc"),
            ("Bearer a-b.c_d~e+f/g==", "a-b.c_d~e+f/g=="),
        ];
        for (value, token) in cases {
            let headers = [(":path", "/fhir/Patient"), ("authorization", *value)];
            assert_eq!(extract(&headers, "_id=1"), Ok(*token), "{value:?}");
        }
        // Header names are compared without regard to case.
        assert_eq!(extract(&[("Authorization", "Bearer t")], ""), Ok("t"));
    }

    #[test]
    fn credentials_then_the_character_check_are_the_bearer_token() {
        for value in [
            "Bearer abc.def.ghi",
            "bearer a-b.c_d~e+f/g==",
            "Bearer",
            "Bearer   ",
            "Bearer a b",
            "Bearer a,b",
            "Bearer a=b",
            "Bearer ===",
            "Basic dXNlcjpwYXNz",
            "",
        ] {
            let headers = [("authorization", value)];
            assert_eq!(
                bearer_credentials(&headers, "", MAX).and_then(check_b64token),
                extract(&headers, ""),
                "{value:?}"
            );
        }
        let two = [("authorization", "Bearer a"), ("authorization", "Bearer b")];
        assert_eq!(
            bearer_credentials(&two, "", MAX),
            Err(TokenError::SeveralAuthorizationHeaders)
        );
        assert_eq!(
            bearer_credentials(&[("authorization", "Bearer a")], "access_token=x", MAX),
            Err(TokenError::TokenInQuery)
        );
    }

    #[test]
    fn accepts_exactly_the_b64token_characters_of_rfc_6750() {
        let allowed: Vec<u8> = (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .chain(*b"-._~+/")
            .collect();
        // Every ASCII byte in the middle of a token (other bytes are not ASCII header text).
        for byte in 0..128u8 {
            let token = format!("ab{}cd", char::from(byte));
            let value = format!("Bearer {token}");
            let headers = [("authorization", value.as_str())];
            let got = extract(&headers, "");
            if allowed.contains(&byte) {
                assert_eq!(got, Ok(token.as_str()), "byte {byte:#04x}");
            } else {
                assert!(got.is_err(), "byte {byte:#04x} must be refused");
            }
        }
    }

    #[test]
    fn refuses_missing_other_scheme_and_malformed_credentials() {
        let cases: &[(&[(&str, &str)], TokenError)] = &[
            (&[], TokenError::Missing),
            (&[("x-authorization", "Bearer t")], TokenError::Missing),
            (
                &[("authorization", "Basic dXNlcjpwYXNz")],
                TokenError::OtherScheme,
            ),
            (&[("authorization", "Bearertoken")], TokenError::OtherScheme),
            (&[("authorization", "DPoP abc")], TokenError::OtherScheme),
            (&[("authorization", "")], TokenError::OtherScheme),
            (&[("authorization", "Bearer")], TokenError::MalformedAuthorization),
            (
                &[("authorization", "Bearer   ")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer a b")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer a,b")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer a\tb")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer\tabc")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer \tabc")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer ===")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer a=b")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer é")],
                TokenError::MalformedAuthorization,
            ),
            (
                &[("authorization", "Bearer \"abc\"")],
                TokenError::MalformedAuthorization,
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(extract(headers, ""), Err(want.clone()), "{headers:?}");
        }
    }

    #[test]
    fn refuses_several_authorization_headers() {
        let headers = [("authorization", "Bearer a"), ("authorization", "Bearer a")];
        assert_eq!(
            extract(&headers, ""),
            Err(TokenError::SeveralAuthorizationHeaders)
        );
        let headers = [("authorization", "Bearer a"), ("Authorization", "Basic b")];
        assert_eq!(
            extract(&headers, ""),
            Err(TokenError::SeveralAuthorizationHeaders)
        );
    }

    #[test]
    fn refuses_access_token_in_the_query_even_with_a_header() {
        let header = [("authorization", "Bearer abc")];
        for query in [
            "access_token=abc",
            "?access_token=abc",
            "_count=1&access_token=abc",
            "access_token=",
            "access_token",
            "access%5Ftoken=abc",
            "%61ccess_token=abc",
        ] {
            assert_eq!(extract(&header, query), Err(TokenError::TokenInQuery), "{query}");
            assert_eq!(extract(&[], query), Err(TokenError::TokenInQuery), "{query}");
        }
        for query in [
            "",
            "my_access_token=1",
            "access_tokens=1",
            "x=access_token",
            "access_token_x",
        ] {
            assert_eq!(extract(&header, query), Ok("abc"), "{query}");
        }
    }

    #[test]
    fn refuses_tokens_above_the_size_limit_before_looking_at_them() {
        let at_limit = format!("Bearer {}", "a".repeat(300));
        let above = format!("Bearer {}", "a".repeat(301));
        // Characters outside b64token do not matter once the size is exceeded.
        let huge_invalid = format!("Bearer {}", " ".repeat(2_000));
        let headers = [("authorization", at_limit.as_str())];
        assert_eq!(bearer_token(&headers, "", 300).map(str::len), Ok(300));
        let headers = [("authorization", above.as_str())];
        assert_eq!(bearer_token(&headers, "", 300), Err(TokenError::TooLarge));
        let headers = [("authorization", huge_invalid.as_str())];
        assert_eq!(bearer_token(&headers, "", 300), Err(TokenError::TooLarge));
    }

    #[test]
    fn works_with_owned_header_pairs() {
        let headers = vec![("authorization".to_string(), "Bearer xyz".to_string())];
        assert_eq!(bearer_token(&headers, "", MAX), Ok("xyz"));
    }
}
