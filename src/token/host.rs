//! The Envoy host path: signature verification by Envoy's `verify_signature` foreign function.
//!
//! Facts about the host function (Envoy `source/extensions/common/wasm/foreign.cc`,
//! `source/common/crypto/utility_impl.cc`, `source/extensions/common/wasm/ext/verify_signature.proto`):
//!
//! * argument: protobuf `VerifySignatureArguments { string hash_function = 1; bytes public_key = 2;
//!   bytes signature = 3; bytes text = 4; string public_key_pem = 5; }`; `public_key` is a DER
//!   `SubjectPublicKeyInfo` parsed by BoringSSL's `EVP_parse_public_key` (`public_key_pem` is the
//!   alternative; giving both, or neither, is `BadArgument`);
//! * answer: protobuf `VerifySignatureResult { bool result = 1; string error = 2; }`; a signature
//!   that does not verify answers `result: false, error: "Failed to verify digest. Error code: 0"`;
//! * `hash_function` (case-insensitive): `sha1`, `sha224`, `sha256`, `sha384`, `sha512`;
//! * verification is `EVP_DigestVerifyInit(md)` + `EVP_DigestVerify` with no padding or PSS
//!   parameters set, so RSA keys verify **RSASSA-PKCS1-v1_5 only** (RS256/384/512; no PS*),
//!   EC keys verify ECDSA with a **DER** `ECDSA-Sig-Value` (JWS carries raw `r || s`, converted
//!   here), and Ed25519 cannot be verified (BoringSSL refuses a digest for Ed25519 and Envoy always
//!   passes one).
//!
//! So [`HostVerifier`] verifies RS256/384/512 and ES256/384 on the host and answers
//! [`SignatureError::Unsupported`] for PS256/384/512 and EdDSA, for [`super::Fallback`] to hand to
//! the pure-Rust verifier. A host answer other than success or "Failed to verify digest" is
//! [`SignatureError::HostFailed`] (never a success).
//!
//! The protobuf messages are tiny, so they are encoded and decoded here by hand.

use std::fmt;

use super::algorithm::Algorithm;
use super::signature::{SignatureError, SignatureVerifier};
use crate::jwks::VerifyingKey;

/// Name of Envoy's foreign function.
pub const VERIFY_SIGNATURE_FUNCTION: &str = "verify_signature";

/// The prefix of Envoy's error for a signature that does not verify.
const NOT_VERIFIED_PREFIX: &str = "Failed to verify digest";

/// Verifies signatures through the host; `call` sends the encoded `VerifySignatureArguments` to
/// Envoy's `verify_signature` foreign function and returns its raw answer (or the host's error).
#[derive(Clone, Copy)]
pub struct HostVerifier<F> {
    call: F,
}

impl<F> fmt::Debug for HostVerifier<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HostVerifier")
    }
}

impl<F: Fn(&[u8]) -> Result<Vec<u8>, String>> HostVerifier<F> {
    /// Wraps the host call.
    pub fn new(call: F) -> Self {
        HostVerifier { call }
    }
}

/// The `hash_function` Envoy needs for `alg`, or `None` when Envoy cannot verify `alg`.
pub fn host_hash_function(alg: Algorithm) -> Option<&'static str> {
    match alg {
        Algorithm::RS256 | Algorithm::ES256 => Some("sha256"),
        Algorithm::RS384 | Algorithm::ES384 => Some("sha384"),
        Algorithm::RS512 => Some("sha512"),
        Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 | Algorithm::EdDSA => None,
    }
}

impl<F: Fn(&[u8]) -> Result<Vec<u8>, String>> SignatureVerifier for HostVerifier<F> {
    fn verify(
        &self,
        alg: Algorithm,
        key: &VerifyingKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let hash = host_hash_function(alg).ok_or(SignatureError::Unsupported)?;
        if !key.fits(alg) {
            return Err(SignatureError::Invalid);
        }
        let der;
        let signature = match alg {
            Algorithm::ES256 => {
                der = ecdsa_raw_to_der(signature, 32).ok_or(SignatureError::Invalid)?;
                der.as_slice()
            }
            Algorithm::ES384 => {
                der = ecdsa_raw_to_der(signature, 48).ok_or(SignatureError::Invalid)?;
                der.as_slice()
            }
            _ => signature,
        };
        let arguments = encode_verify_signature_arguments(hash, key.spki_der(), signature, signing_input);
        let answer = (self.call)(&arguments).map_err(SignatureError::HostFailed)?;
        let result =
            decode_verify_signature_result(&answer).map_err(|e| SignatureError::HostFailed(e.to_string()))?;
        if result.result {
            Ok(())
        } else if result.error.starts_with(NOT_VERIFIED_PREFIX) {
            Err(SignatureError::Invalid)
        } else {
            Err(SignatureError::HostFailed(result.error))
        }
    }
}

/// Encodes `VerifySignatureArguments` with the DER public key (field 2); `public_key_pem` unset.
pub fn encode_verify_signature_arguments(
    hash_function: &str,
    public_key_der: &[u8],
    signature: &[u8],
    text: &[u8],
) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(hash_function.len() + public_key_der.len() + signature.len() + text.len() + 24);
    put_bytes_field(&mut out, 1, hash_function.as_bytes());
    put_bytes_field(&mut out, 2, public_key_der);
    put_bytes_field(&mut out, 3, signature);
    put_bytes_field(&mut out, 4, text);
    out
}

/// Envoy's `VerifySignatureResult`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifySignatureResult {
    /// Field 1: whether the signature verified.
    pub result: bool,
    /// Field 2: the error when it did not.
    pub error: String,
}

/// A protobuf answer that could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtobufError(&'static str);

impl fmt::Display for ProtobufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable protobuf: {}", self.0)
    }
}

impl std::error::Error for ProtobufError {}

/// Decodes `VerifySignatureResult` (proto3: absent fields are `false`/empty; unknown fields skipped).
pub fn decode_verify_signature_result(bytes: &[u8]) -> Result<VerifySignatureResult, ProtobufError> {
    let mut out = VerifySignatureResult::default();
    for (field, value) in fields(bytes)? {
        match (field, value) {
            (1, FieldValue::Varint(v)) => out.result = v != 0,
            (2, FieldValue::Bytes(b)) => {
                out.error = String::from_utf8(b.to_vec()).map_err(|_| ProtobufError("error is not UTF-8"))?
            }
            (1 | 2, _) => return Err(ProtobufError("known field with the wrong wire type")),
            _ => {}
        }
    }
    Ok(out)
}

/// Converts a JWS ECDSA signature (raw `r || s`, each `scalar_len` octets, RFC 7518 §3.4) into the
/// DER `ECDSA-Sig-Value` BoringSSL expects. `None` when `raw` does not have the exact length.
pub fn ecdsa_raw_to_der(raw: &[u8], scalar_len: usize) -> Option<Vec<u8>> {
    if scalar_len == 0 || raw.len() != 2 * scalar_len {
        return None;
    }
    let (r, s) = raw.split_at(scalar_len);
    let mut body = Vec::with_capacity(raw.len() + 6);
    der_unsigned_integer(&mut body, r);
    der_unsigned_integer(&mut body, s);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    der_length(&mut out, body.len());
    out.extend_from_slice(&body);
    Some(out)
}

/// A DER INTEGER holding the big-endian unsigned `bytes`, minimally encoded.
fn der_unsigned_integer(out: &mut Vec<u8>, bytes: &[u8]) {
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let magnitude = bytes.get(first..).unwrap_or_default();
    // Zero, or a set top bit, needs a leading 0x00 (DER integers are signed).
    let pad = magnitude.first().map_or(true, |top| top & 0x80 != 0);
    out.push(0x02);
    der_length(out, magnitude.len() + usize::from(pad));
    if pad {
        out.push(0x00);
    }
    out.extend_from_slice(magnitude);
}

fn der_length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len() - 1);
        let significant = bytes.get(first..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field) << 3 | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// One decoded protobuf field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldValue<'a> {
    /// Wire type 0.
    Varint(u64),
    /// Wire type 2.
    Bytes(&'a [u8]),
    /// Wire types 1 and 5 (skipped by the decoders here).
    Fixed,
}

/// Splits a protobuf message into (field number, value) pairs, in order.
pub(crate) fn fields(bytes: &[u8]) -> Result<Vec<(u32, FieldValue<'_>)>, ProtobufError> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let key = read_varint(&mut rest)?;
        let field = u32::try_from(key >> 3).map_err(|_| ProtobufError("field number out of range"))?;
        if field == 0 {
            return Err(ProtobufError("field number 0"));
        }
        let value = match key & 7 {
            0 => FieldValue::Varint(read_varint(&mut rest)?),
            1 => {
                take(&mut rest, 8)?;
                FieldValue::Fixed
            }
            2 => {
                let len = usize::try_from(read_varint(&mut rest)?)
                    .map_err(|_| ProtobufError("length out of range"))?;
                FieldValue::Bytes(take(&mut rest, len)?)
            }
            5 => {
                take(&mut rest, 4)?;
                FieldValue::Fixed
            }
            _ => return Err(ProtobufError("unsupported wire type")),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn read_varint(rest: &mut &[u8]) -> Result<u64, ProtobufError> {
    let mut value: u64 = 0;
    for i in 0..10 {
        let (&byte, tail) = rest.split_first().ok_or(ProtobufError("truncated varint"))?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ProtobufError("varint longer than 10 bytes"))
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Result<&'a [u8], ProtobufError> {
    if rest.len() < len {
        return Err(ProtobufError("truncated field"));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}
