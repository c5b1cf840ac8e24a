//! Strict base64url (RFC 4648 §5) without padding, as JWS (RFC 7515 §2) and JWK (RFC 7517) use it.
//!
//! Refused: padding (`=`), characters outside the URL-safe alphabet (including `+`, `/`,
//! whitespace), impossible lengths (4n+1), and **non-canonical trailing bits** (the unused low bits
//! of the last character must be zero). With the last rule every byte string has exactly one
//! encoding, so a token cannot be re-spelled to dodge a fingerprint, a replay cache or a log match.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// Decodes strict unpadded base64url; `None` when the input is not canonical base64url.
pub fn decode(input: &str) -> Option<Vec<u8>> {
    // `URL_SAFE_NO_PAD` requires no padding and, by default, refuses non-zero trailing bits.
    URL_SAFE_NO_PAD.decode(input.as_bytes()).ok()
}

/// Encodes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_canonical_unpadded_base64url() {
        let cases: &[(&str, &[u8])] = &[
            ("", b""),
            ("AA", &[0]),
            ("AAA", &[0, 0]),
            ("AAAA", &[0, 0, 0]),
            ("-_8", &[0xfb, 0xff]),
            ("eyJhIjoxfQ", b"{\"a\":1}"),
        ];
        for (input, bytes) in cases {
            assert_eq!(decode(input).as_deref(), Some(*bytes), "{input}");
            assert_eq!(encode(bytes), *input);
        }
    }

    #[test]
    fn refuses_padding_foreign_characters_bad_lengths_and_trailing_bits() {
        for input in [
            "AA==",       // padding
            "AAA=",       // padding
            "+/8",        // standard alphabet, not URL-safe
            "AA A",       // whitespace
            "AA\n",       // newline
            "A",          // impossible length
            "AAAAA",      // impossible length
            "AB",         // trailing bits set: canonical form of [0] is "AA"
            "AAB",        // trailing bits set: canonical form of [0, 0] is "AAA"
            "eyJhIjoxfR", // trailing bits set
        ] {
            assert_eq!(decode(input), None, "{input:?}");
        }
    }
}
