//! Envoy's `verify_signature` foreign function, mirrored: the same argument and result protobufs,
//! the same accepted hash names (`sha1`, `sha224`, `sha256`, `sha384`, `sha512`, case-insensitive),
//! the same key formats (SubjectPublicKeyInfo as DER in `public_key` or PEM `PUBLIC KEY` in
//! `public_key_pem`, exactly one of them), the same algorithms as BoringSSL's `EVP_DigestVerify` with
//! a digest (RSA PKCS#1 v1.5; ECDSA with a DER signature), and the same error texts.

use base64::Engine as _;
use sha2::Digest;
use spki::der::{Decode, Reader, SliceReader};
use spki::ObjectIdentifier;

use crate::abi::Status;

/// Why the call did not produce a result.
#[derive(Debug)]
pub(crate) enum ForeignError {
    /// Envoy's answer (e.g. `BadArgument` for unparsable arguments or a missing key).
    Status(Status),
    /// Envoy would answer, but the harness cannot emulate this case faithfully.
    NotEmulated(String),
}

/// `VerifySignatureArguments { 1 hash_function: string, 2 public_key: bytes, 3 signature: bytes,
/// 4 text: bytes, 5 public_key_pem: string }`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VerifySignatureArguments {
    /// Hash function name.
    pub hash_function: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key: Vec<u8>,
    /// Signature bytes.
    pub signature: Vec<u8>,
    /// Signed bytes.
    pub text: Vec<u8>,
    /// SubjectPublicKeyInfo PEM.
    pub public_key_pem: String,
}

fn read_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

impl VerifySignatureArguments {
    /// Parses like protobuf's `ParseFromString` for this proto3 message: unknown fields and fields
    /// of an unexpected wire type are skipped, the last value wins, `string` fields must be UTF-8.
    pub fn decode(buf: &[u8]) -> Option<VerifySignatureArguments> {
        let mut args = VerifySignatureArguments::default();
        let mut at = 0;
        while at < buf.len() {
            let tag = read_varint(buf, &mut at)?;
            let field = tag >> 3;
            let wire = tag & 7;
            if field == 0 {
                return None;
            }
            match wire {
                0 => {
                    read_varint(buf, &mut at)?;
                }
                1 => {
                    at = at.checked_add(8).filter(|e| *e <= buf.len())?;
                }
                5 => {
                    at = at.checked_add(4).filter(|e| *e <= buf.len())?;
                }
                2 => {
                    let len = usize::try_from(read_varint(buf, &mut at)?).ok()?;
                    let end = at.checked_add(len).filter(|e| *e <= buf.len())?;
                    let bytes = buf.get(at..end)?.to_vec();
                    at = end;
                    match field {
                        1 => args.hash_function = String::from_utf8(bytes).ok()?,
                        2 => args.public_key = bytes,
                        3 => args.signature = bytes,
                        4 => args.text = bytes,
                        5 => args.public_key_pem = String::from_utf8(bytes).ok()?,
                        _ => {}
                    }
                }
                // Groups (3, 4) and invalid wire types.
                _ => return None,
            }
        }
        Some(args)
    }

    /// Encodes (proto3: empty fields omitted), for tests that build arguments.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut field = |n: u8, bytes: &[u8]| {
            if !bytes.is_empty() {
                out.push((n << 3) | 2);
                let mut len = bytes.len() as u64;
                loop {
                    let b = (len & 0x7f) as u8;
                    len >>= 7;
                    if len == 0 {
                        out.push(b);
                        break;
                    }
                    out.push(b | 0x80);
                }
                out.extend_from_slice(bytes);
            }
        };
        field(1, self.hash_function.as_bytes());
        field(2, &self.public_key);
        field(3, &self.signature);
        field(4, &self.text);
        field(5, self.public_key_pem.as_bytes());
        out
    }
}

/// `VerifySignatureResult { 1 result: bool, 2 error: string }` as proto3 bytes.
pub fn encode_result(result: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if result {
        out.extend_from_slice(&[0x08, 0x01]);
    }
    if !error.is_empty() {
        out.push(0x12);
        let mut len = error.len() as u64;
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(error.as_bytes());
    }
    out
}

/// Decodes a `VerifySignatureResult` (for tests).
pub fn decode_result(buf: &[u8]) -> Option<(bool, String)> {
    let mut at = 0;
    let (mut result, mut error) = (false, String::new());
    while at < buf.len() {
        let tag = read_varint(buf, &mut at)?;
        match (tag >> 3, tag & 7) {
            (1, 0) => result = read_varint(buf, &mut at)? != 0,
            (2, 2) => {
                let len = usize::try_from(read_varint(buf, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|e| *e <= buf.len())?;
                error = String::from_utf8(buf.get(at..end)?.to_vec()).ok()?;
                at = end;
            }
            _ => return None,
        }
    }
    Some((result, error))
}

#[derive(Clone, Copy, Debug)]
enum Hash {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

fn hash_named(name: &str) -> Option<Hash> {
    Some(match name.to_ascii_lowercase().as_str() {
        "sha1" => Hash::Sha1,
        "sha224" => Hash::Sha224,
        "sha256" => Hash::Sha256,
        "sha384" => Hash::Sha384,
        "sha512" => Hash::Sha512,
        _ => return None,
    })
}

fn digest(hash: Hash, text: &[u8]) -> Vec<u8> {
    match hash {
        Hash::Sha1 => sha1::Sha1::digest(text).to_vec(),
        Hash::Sha224 => sha2::Sha224::digest(text).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(text).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(text).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(text).to_vec(),
    }
}

enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    /// Parsed by BoringSSL but refused by `EVP_DigestVerifyInit` with a digest (Ed25519).
    NoDigestSupport,
    /// A curve BoringSSL accepts that the harness does not implement.
    Unsupported(&'static str),
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const P256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const P224_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.33");

/// BoringSSL's `EVP_parse_public_key`: one SubjectPublicKeyInfo from the front of the bytes
/// (trailing bytes are not checked, as Envoy does not check them).
fn parse_spki(der: &[u8]) -> Option<PublicKey> {
    let mut reader = SliceReader::new(der).ok()?;
    let spki = spki::SubjectPublicKeyInfoRef::decode(&mut reader).ok()?;
    let _ = reader.position();
    let key_bits = spki.subject_public_key.as_bytes()?;
    let oid = spki.algorithm.oid;
    if oid == RSA_ENCRYPTION {
        let key = rsa::pkcs1::RsaPublicKey::from_der(key_bits).ok()?;
        let n = rsa::BigUint::from_bytes_be(key.modulus.as_bytes());
        let e = rsa::BigUint::from_bytes_be(key.public_exponent.as_bytes());
        // OPENSSL_RSA_MAX_MODULUS_BITS is 16384 in BoringSSL.
        return rsa::RsaPublicKey::new_with_max_size(n, e, 16384)
            .ok()
            .map(PublicKey::Rsa);
    }
    if oid == EC_PUBLIC_KEY {
        let curve: ObjectIdentifier = spki.algorithm.parameters?.decode_as().ok()?;
        return if curve == P256_OID {
            p256::ecdsa::VerifyingKey::from_sec1_bytes(key_bits)
                .ok()
                .map(PublicKey::P256)
        } else if curve == P384_OID {
            p384::ecdsa::VerifyingKey::from_sec1_bytes(key_bits)
                .ok()
                .map(PublicKey::P384)
        } else if curve == P521_OID {
            Some(PublicKey::Unsupported("P-521 keys"))
        } else if curve == P224_OID {
            Some(PublicKey::Unsupported("P-224 keys"))
        } else {
            None
        };
    }
    if oid == ED25519 {
        return Some(PublicKey::NoDigestSupport);
    }
    None
}

/// BoringSSL's `PEM_read_bio_PUBKEY`: the first `PUBLIC KEY` block, base64 with any line breaks.
fn parse_pem(pem: &str) -> Option<PublicKey> {
    const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
    const END: &str = "-----END PUBLIC KEY-----";
    let start = pem.find(BEGIN)? + BEGIN.len();
    let rest = pem.get(start..)?;
    let end = rest.find(END)?;
    let body: String = rest.get(..end)?.chars().filter(|c| !c.is_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    parse_spki(&der)
}

/// Runs `verify_signature` on serialised arguments; returns the serialised result.
pub(crate) fn verify_signature(arguments: &[u8]) -> Result<Vec<u8>, ForeignError> {
    let args =
        VerifySignatureArguments::decode(arguments).ok_or(ForeignError::Status(Status::BadArgument))?;
    let has_pem = !args.public_key_pem.is_empty();
    let has_der = !args.public_key.is_empty();
    if has_pem == has_der {
        // Both or neither: Envoy's importPublicKey returns nullptr.
        return Err(ForeignError::Status(Status::BadArgument));
    }
    let key = if has_pem {
        parse_pem(&args.public_key_pem)
    } else {
        parse_spki(&args.public_key)
    };
    let Some(hash) = hash_named(&args.hash_function) else {
        return Ok(encode_result(
            false,
            &format!("{} is not supported.", args.hash_function),
        ));
    };
    let init_failed = || Ok(encode_result(false, "Failed to initialize digest verify."));
    let verified = match key {
        None | Some(PublicKey::NoDigestSupport) => return init_failed(),
        Some(PublicKey::Unsupported(what)) => {
            return Err(ForeignError::NotEmulated(format!(
                "{what} are accepted by Envoy but not emulated"
            )))
        }
        Some(PublicKey::Rsa(key)) => {
            let hashed = digest(hash, &args.text);
            let scheme = match hash {
                Hash::Sha1 => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
                Hash::Sha224 => rsa::Pkcs1v15Sign::new::<sha2::Sha224>(),
                Hash::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                Hash::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                Hash::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
            };
            key.verify(scheme, &hashed, &args.signature).is_ok()
        }
        Some(PublicKey::P256(key)) => {
            use p256::ecdsa::signature::hazmat::PrehashVerifier;
            let hashed = digest(hash, &args.text);
            match p256::ecdsa::DerSignature::from_bytes(&args.signature) {
                Ok(sig) => key.verify_prehash(&hashed, &sig).is_ok(),
                Err(_) => false,
            }
        }
        Some(PublicKey::P384(key)) => {
            use p384::ecdsa::signature::hazmat::PrehashVerifier;
            let hashed = digest(hash, &args.text);
            match p384::ecdsa::DerSignature::from_bytes(&args.signature) {
                Ok(sig) => key.verify_prehash(&hashed, &sig).is_ok(),
                Err(_) => false,
            }
        }
    };
    if verified {
        Ok(encode_result(true, ""))
    } else {
        Ok(encode_result(false, "Failed to verify digest. Error code: 0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/verify_signature/",
                $name
            ))
            .as_slice()
        };
    }

    const TEXT: &[u8] = fixture!("text.bin");

    fn call(
        hash: &str,
        der: &[u8],
        pem: &str,
        sig: &[u8],
        text: &[u8],
    ) -> Result<(bool, String), ForeignError> {
        let args = VerifySignatureArguments {
            hash_function: hash.into(),
            public_key: der.to_vec(),
            signature: sig.to_vec(),
            text: text.to_vec(),
            public_key_pem: pem.into(),
        };
        verify_signature(&args.encode()).map(|r| decode_result(&r).expect("result decodes"))
    }

    #[test]
    fn verifies_signatures_made_by_openssl_like_envoy() {
        let rsa = fixture!("rsa_pub.der");
        // (hash, key, signature, verified, error)
        type Case<'a> = (&'a str, &'a [u8], &'a [u8], bool, &'a str);
        let table: &[Case] = &[
            ("sha256", rsa, fixture!("rsa_sha256.sig"), true, ""),
            ("SHA256", rsa, fixture!("rsa_sha256.sig"), true, ""),
            ("sha1", rsa, fixture!("rsa_sha1.sig"), true, ""),
            ("sha512", rsa, fixture!("rsa_sha512.sig"), true, ""),
            (
                "sha512",
                rsa,
                fixture!("rsa_sha256.sig"),
                false,
                "Failed to verify digest. Error code: 0",
            ),
            (
                "sha256",
                fixture!("rsa2_pub.der"),
                fixture!("rsa_sha256.sig"),
                false,
                "Failed to verify digest. Error code: 0",
            ),
            (
                "sha256",
                fixture!("p256_pub.der"),
                fixture!("p256_sha256.sig"),
                true,
                "",
            ),
            (
                "sha1",
                fixture!("p256_pub.der"),
                fixture!("p256_sha1.sig"),
                true,
                "",
            ),
            (
                "sha384",
                fixture!("p256_pub.der"),
                fixture!("p256_sha256.sig"),
                false,
                "Failed to verify digest. Error code: 0",
            ),
            (
                "sha384",
                fixture!("p384_pub.der"),
                fixture!("p384_sha384.sig"),
                true,
                "",
            ),
            (
                "md5",
                rsa,
                fixture!("rsa_sha256.sig"),
                false,
                "md5 is not supported.",
            ),
            (
                "sha256",
                fixture!("ed_pub.der"),
                fixture!("rsa_sha256.sig"),
                false,
                "Failed to initialize digest verify.",
            ),
            (
                "sha256",
                b"not a key",
                fixture!("rsa_sha256.sig"),
                false,
                "Failed to initialize digest verify.",
            ),
        ];
        for (hash, key, sig, ok, error) in table {
            let got = call(hash, key, "", sig, TEXT).unwrap_or_else(|e| panic!("{hash}: {e:?}"));
            assert_eq!(got, (*ok, error.to_string()), "{hash} {}", key.len());
        }
    }

    #[test]
    fn a_tampered_text_does_not_verify() {
        let got = call(
            "sha256",
            fixture!("rsa_pub.der"),
            "",
            fixture!("rsa_sha256.sig"),
            b"header.payloaX",
        )
        .unwrap();
        assert_eq!(got, (false, "Failed to verify digest. Error code: 0".to_string()));
    }

    #[test]
    fn accepts_a_pem_key_instead_of_der() {
        let pem = std::str::from_utf8(fixture!("rsa_pub.pem")).unwrap();
        let got = call("sha256", b"", pem, fixture!("rsa_sha256.sig"), TEXT).unwrap();
        assert_eq!(got, (true, String::new()));
    }

    #[test]
    fn refuses_arguments_envoy_refuses_with_bad_argument() {
        let pem = std::str::from_utf8(fixture!("rsa_pub.pem")).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "no key",
                VerifySignatureArguments {
                    hash_function: "sha256".into(),
                    ..Default::default()
                }
                .encode(),
            ),
            (
                "both keys",
                VerifySignatureArguments {
                    hash_function: "sha256".into(),
                    public_key: fixture!("rsa_pub.der").to_vec(),
                    public_key_pem: pem.into(),
                    ..Default::default()
                }
                .encode(),
            ),
            ("not protobuf", vec![0xff, 0xff, 0xff]),
            ("string field not UTF-8", vec![0x0a, 0x01, 0xff]),
        ];
        for (name, args) in cases {
            assert!(
                matches!(
                    verify_signature(&args),
                    Err(ForeignError::Status(Status::BadArgument))
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn p521_keys_are_a_harness_limitation_not_a_silent_answer() {
        let got = call(
            "sha256",
            fixture!("p521_pub.der"),
            "",
            fixture!("p256_sha256.sig"),
            TEXT,
        );
        assert!(matches!(got, Err(ForeignError::NotEmulated(_))));
    }

    #[test]
    fn arguments_round_trip_and_unknown_fields_are_skipped() {
        let args = VerifySignatureArguments {
            hash_function: "sha256".into(),
            public_key: vec![1, 2, 3],
            signature: vec![4; 300],
            text: b"t".to_vec(),
            public_key_pem: String::new(),
        };
        let mut bytes = args.encode();
        bytes.extend_from_slice(&[0x30, 0x05, 0x39, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]);
        assert_eq!(VerifySignatureArguments::decode(&bytes), Some(args));
    }
}
