//! End-to-end tests of [`super::verify`]: both signature paths on the same tokens, provider and key
//! selection, header refusals on validly signed tokens, and the claim rules.

use std::cell::Cell;
use std::collections::HashMap;

use p256::ecdsa::signature::Verifier as _;
use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};

use super::host::{self, FieldValue};
use super::test_support::*;
use super::*;
use crate::config::Config;

// ---- fixtures -----------------------------------------------------------------------------------

fn config_json(first_provider_extra: Value) -> Value {
    let mut first = json!({
        "issuer": ISS,
        "audiences": [AUD, "https://other-api.example.org"],
        "local_jwks": {"keys": []},
    });
    if let (Some(first), Some(extra)) = (first.as_object_mut(), first_provider_extra.as_object()) {
        first.extend(extra.clone());
    }
    json!({
        "providers": [
            first,
            {"issuer": ISS2, "audiences": [AUD], "local_jwks": {"keys": []}, "algorithms": ["ES256"]},
        ],
        "clock_skew_s": 60,
        "patient_claim": "patient",
    })
}

fn config_with(first_provider_extra: Value) -> Config {
    Config::from_json(config_json(first_provider_extra).to_string().as_bytes()).unwrap()
}

fn config() -> Config {
    config_with(json!({}))
}

fn default_keys() -> Vec<Option<KeySet>> {
    vec![Some(KeySet::from_jwks(&default_jwks()).unwrap()), None]
}

fn check(token: &str) -> Result<VerifiedClaims, TokenError> {
    verify(token, &config(), &default_keys(), NOW, &JwtSimpleVerifier)
}

/// Verifies through the emulated host (signature only), falling back to jwt-simple: the claim
/// rules, not jwt-simple's claim deserialization, decide. Also checks that jwt-simple alone
/// agrees on accepting or refusing.
fn check_claim_rules(token: &str) -> Result<VerifiedClaims, TokenError> {
    let calls = Cell::new(0);
    let verifier = Fallback {
        primary: HostVerifier::new(envoy(&calls)),
        fallback: JwtSimpleVerifier,
    };
    let outcome = verify(token, &config(), &default_keys(), NOW, &verifier);
    assert_eq!(
        check(token).is_ok(),
        outcome.is_ok(),
        "both paths agree on {outcome:?}"
    );
    outcome
}

fn claims_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut claims = good_claims();
    if let Some(map) = claims.as_object_mut() {
        edit(map);
    }
    claims
}

// ---- an Envoy `verify_signature` stand-in ---------------------------------------------------------

fn encode_result(result: bool, error: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if result {
        out.extend_from_slice(&[0x08, 0x01]);
    }
    if !error.is_empty() {
        out.push(0x12);
        out.push(u8::try_from(error.len()).unwrap());
        out.extend_from_slice(error.as_bytes());
    }
    out
}

/// Emulates Envoy's `verify_signature` over BoringSSL with the `rsa`, `p256` and `p384` crates:
/// DER SPKI keys, the digest names Envoy knows, PKCS#1 v1.5 for RSA, DER signatures for ECDSA,
/// and no Ed25519 (BoringSSL refuses a digest for it).
fn emulated_envoy(arguments: &[u8]) -> (bool, String) {
    use rsa::sha2::{Sha256, Sha384, Sha512};
    let (mut hash, mut key, mut sig, mut text, mut pem) = ("", &[][..], &[][..], &[][..], &[][..]);
    for (field, value) in host::fields(arguments).unwrap() {
        let FieldValue::Bytes(bytes) = value else {
            panic!("field {field} is not length-delimited")
        };
        match field {
            1 => hash = std::str::from_utf8(bytes).unwrap(),
            2 => key = bytes,
            3 => sig = bytes,
            4 => text = bytes,
            5 => pem = bytes,
            _ => panic!("unknown field {field}"),
        }
    }
    assert!(pem.is_empty(), "the filter sends DER keys only");
    let not_verified = (false, "Failed to verify digest. Error code: 0".to_string());
    let hash = hash.to_ascii_lowercase();
    if !["sha1", "sha224", "sha256", "sha384", "sha512"].contains(&hash.as_str()) {
        return (false, format!("{hash} is not supported."));
    }
    if let Ok(pk) = rsa::RsaPublicKey::from_public_key_der(key) {
        let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
            return not_verified;
        };
        let ok = match hash.as_str() {
            "sha256" => rsa::pkcs1v15::VerifyingKey::<Sha256>::new(pk)
                .verify(text, &sig)
                .is_ok(),
            "sha384" => rsa::pkcs1v15::VerifyingKey::<Sha384>::new(pk)
                .verify(text, &sig)
                .is_ok(),
            "sha512" => rsa::pkcs1v15::VerifyingKey::<Sha512>::new(pk)
                .verify(text, &sig)
                .is_ok(),
            _ => false,
        };
        return if ok { (true, String::new()) } else { not_verified };
    }
    if let Ok(vk) = p256::ecdsa::VerifyingKey::from_public_key_der(key) {
        let ok = hash == "sha256"
            && p256::ecdsa::Signature::from_der(sig).is_ok_and(|s| vk.verify(text, &s).is_ok());
        return if ok { (true, String::new()) } else { not_verified };
    }
    if let Ok(vk) = p384::ecdsa::VerifyingKey::from_public_key_der(key) {
        let ok = hash == "sha384"
            && p384::ecdsa::Signature::from_der(sig).is_ok_and(|s| vk.verify(text, &s).is_ok());
        return if ok { (true, String::new()) } else { not_verified };
    }
    (false, "Failed to initialize digest verify.".to_string())
}

/// A host call backed by [`emulated_envoy`] that counts its invocations.
fn envoy(calls: &Cell<usize>) -> impl Fn(&[u8]) -> Result<Vec<u8>, String> + '_ {
    move |arguments| {
        calls.set(calls.get() + 1);
        let (result, error) = emulated_envoy(arguments);
        Ok(encode_result(result, &error))
    }
}

/// Runs `token` through jwt-simple, the host verifier alone, and host-with-fallback; returns the
/// three outcomes and how often the host was called.
fn all_paths(token: &str) -> [(Result<VerifiedClaims, TokenError>, usize); 3] {
    let config = config();
    let keys = default_keys();
    let calls = Cell::new(0);
    let pure = verify(token, &config, &keys, NOW, &JwtSimpleVerifier);
    let host_only = verify(token, &config, &keys, NOW, &HostVerifier::new(envoy(&calls)));
    let host_calls = calls.replace(0);
    let fallback = Fallback {
        primary: HostVerifier::new(envoy(&calls)),
        fallback: JwtSimpleVerifier,
    };
    let combined = verify(token, &config, &keys, NOW, &fallback);
    [(pure, 0), (host_only, host_calls), (combined, calls.get())]
}

fn host_supports(alg: Algorithm) -> bool {
    host::host_hash_function(alg).is_some()
}

// ---- signature paths ------------------------------------------------------------------------------

#[test]
fn every_path_accepts_valid_tokens_for_every_algorithm() {
    for alg in Algorithm::ALL {
        let token = mint(alg, Signer::for_alg(alg), &good_claims());
        let [(pure, _), (host_only, host_calls), (combined, combined_calls)] = all_paths(&token);
        let claims = pure.unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(claims.issuer, ISS);
        assert_eq!(combined.as_ref(), Ok(&claims), "{alg} with fallback");
        if host_supports(alg) {
            assert_eq!(host_only.as_ref(), Ok(&claims), "{alg} on the host");
            assert_eq!((host_calls, combined_calls), (1, 1), "{alg} goes to the host");
        } else {
            assert_eq!(
                host_only,
                Err(TokenError::VerifierFailed),
                "{alg} without fallback"
            );
            assert_eq!(
                (host_calls, combined_calls),
                (0, 0),
                "{alg} never reaches the host"
            );
        }
    }
}

#[test]
fn every_path_refuses_tampered_tokens_for_every_algorithm() {
    for alg in Algorithm::ALL {
        let signer = Signer::for_alg(alg);
        let token = mint(alg, signer, &good_claims());
        let (input, sig_b64) = token.rsplit_once('.').unwrap();
        let (header_b64, _) = input.split_once('.').unwrap();
        let sig = base64url::decode(sig_b64).unwrap();

        let forged_claims = claims_with(|c| {
            c.insert("patient".into(), "999".into());
        });
        let other_payload = format!(
            "{header_b64}.{}.{sig_b64}",
            base64url::encode(forged_claims.to_string().as_bytes())
        );
        let mut flipped = sig.clone();
        flipped[sig.len() / 2] ^= 0x01;
        let flipped = format!("{input}.{}", base64url::encode(&flipped));
        let shortened = format!("{input}.{}", base64url::encode(&sig[..sig.len() - 1]));
        let lengthened = format!("{input}.{}", base64url::encode(&[&sig[..], &[0]].concat()));
        let zeroed = format!("{input}.{}", base64url::encode(&vec![0; sig.len()]));
        // The same claims signed by another key of the same type, under this key's kid.
        let other_signer = match signer {
            Signer::RsaA => Some(Signer::RsaB),
            _ => None,
        };
        let mut cases = vec![
            ("payload swapped", other_payload),
            ("signature bit flipped", flipped),
            ("signature shortened", shortened),
            ("signature lengthened", lengthened),
            ("signature zeroed", zeroed),
        ];
        if let Some(other) = other_signer {
            let header = json!({"alg": alg.as_str(), "typ": "JWT", "kid": signer.kid()});
            let t = mint_raw(alg, other, &header.to_string(), &good_claims().to_string());
            cases.push(("signed by another key", t));
        }
        for (what, token) in cases {
            for (i, (outcome, _)) in all_paths(&token).into_iter().enumerate() {
                let path = ["jwt-simple", "host only", "host with fallback"][i];
                if i == 1 && !host_supports(alg) {
                    assert_eq!(outcome, Err(TokenError::VerifierFailed), "{alg} {what} {path}");
                } else {
                    assert_eq!(outcome, Err(TokenError::BadSignature), "{alg} {what} {path}");
                }
            }
        }
    }
}

#[test]
fn jwt_simple_path_judges_the_signature_and_leaves_time_to_the_request_clock() {
    // Far from jwt-simple's own clock in both directions: only the `now` parameter counts.
    for now in [1_000u64, 4_102_444_800] {
        let claims = claims_with(|c| {
            c.insert("iat".into(), json!(now - 10));
            c.insert("nbf".into(), json!(now - 10));
            c.insert("exp".into(), json!(now + 300));
        });
        for alg in Algorithm::ALL {
            let token = mint(alg, Signer::for_alg(alg), &claims);
            let verified = verify(&token, &config(), &default_keys(), now, &JwtSimpleVerifier);
            assert_eq!(verified.map(|c| c.expires_at), Ok(now + 300), "{alg} at {now}");
            let late = verify(&token, &config(), &default_keys(), now + 360, &JwtSimpleVerifier);
            assert_eq!(late, Err(TokenError::Expired), "{alg} at {now}");
        }
    }
}

#[test]
fn host_failures_fall_back_to_pure_rust_and_never_accept() {
    let valid = mint(Algorithm::RS256, Signer::RsaA, &good_claims());
    let (input, _) = valid.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", base64url::encode(&[7; 256]));
    type Host = fn(&[u8]) -> Result<Vec<u8>, String>;
    let failing_hosts: [(&str, Host); 4] = [
        ("call fails", |_| Err("foreign function not found".into())),
        ("digest unknown", |_| {
            Ok(encode_result(false, "sha256 is not supported."))
        }),
        ("init fails", |_| {
            Ok(encode_result(false, "Failed to initialize digest verify."))
        }),
        ("answer undecodable", |_| Ok(vec![0x0a, 0x05, 0x01])),
    ];
    let config = config();
    let keys = default_keys();
    for (what, host) in failing_hosts {
        let bare = HostVerifier::new(host);
        assert_eq!(
            verify(&valid, &config, &keys, NOW, &bare),
            Err(TokenError::VerifierFailed),
            "{what}"
        );
        let with_fallback = Fallback {
            primary: HostVerifier::new(host),
            fallback: JwtSimpleVerifier,
        };
        assert!(
            verify(&valid, &config, &keys, NOW, &with_fallback).is_ok(),
            "{what}"
        );
        assert_eq!(
            verify(&forged, &config, &keys, NOW, &with_fallback),
            Err(TokenError::BadSignature),
            "{what}"
        );
    }
    // A host verdict of "does not verify" is final: the fallback is not asked.
    let refusing = Fallback {
        primary: HostVerifier::new(|_: &[u8]| {
            Ok(encode_result(false, "Failed to verify digest. Error code: 0"))
        }),
        fallback: JwtSimpleVerifier,
    };
    assert_eq!(
        verify(&valid, &config, &keys, NOW, &refusing),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn host_arguments_carry_the_digest_der_key_der_signature_and_signing_input() {
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::ES256,
        Algorithm::ES384,
    ] {
        let token = mint(alg, Signer::for_alg(alg), &good_claims());
        let seen = std::cell::RefCell::new(Vec::new());
        {
            let recorder = HostVerifier::new(|arguments: &[u8]| {
                seen.borrow_mut().push(arguments.to_vec());
                Ok(encode_result(true, ""))
            });
            verify(&token, &config(), &default_keys(), NOW, &recorder).unwrap();
        }
        let seen = seen.into_inner();
        assert_eq!(seen.len(), 1, "{alg}: one host call");
        let fields = host::fields(&seen[0]).unwrap();
        let bytes = |n: u32| match fields.iter().find(|(f, _)| *f == n) {
            Some((_, FieldValue::Bytes(b))) => b.to_vec(),
            other => panic!("field {n}: {other:?}"),
        };
        let (input, sig_b64) = token.rsplit_once('.').unwrap();
        let raw_sig = base64url::decode(sig_b64).unwrap();
        let key_set = KeySet::from_jwks(&default_jwks()).unwrap();
        let key = key_set.select(Some(Signer::for_alg(alg).kid()), alg).unwrap();
        assert_eq!(
            bytes(1),
            host::host_hash_function(alg).unwrap().as_bytes(),
            "{alg}"
        );
        assert_eq!(bytes(2), key.spki_der(), "{alg}");
        assert_eq!(bytes(4), input.as_bytes(), "{alg}");
        let expected_sig = match alg {
            Algorithm::ES256 => p256::ecdsa::Signature::from_slice(&raw_sig)
                .unwrap()
                .to_der()
                .as_bytes()
                .to_vec(),
            Algorithm::ES384 => p384::ecdsa::Signature::from_slice(&raw_sig)
                .unwrap()
                .to_der()
                .as_bytes()
                .to_vec(),
            _ => raw_sig,
        };
        assert_eq!(bytes(3), expected_sig, "{alg}");
        assert!(
            fields.iter().all(|(f, _)| (1..=4).contains(f)),
            "{alg}: no PEM field"
        );
    }
}

#[test]
fn encodes_arguments_and_decodes_results_as_protobuf() {
    let encoded = host::encode_verify_signature_arguments("sha256", &[1, 2], &[3], &[4, 5]);
    let expected: Vec<u8> = [
        &[0x0a, 6][..],
        b"sha256",
        &[0x12, 2, 1, 2],
        &[0x1a, 1, 3],
        &[0x22, 2, 4, 5],
    ]
    .concat();
    assert_eq!(encoded, expected);
    // Lengths above 127 use multi-byte varints.
    let long = host::encode_verify_signature_arguments("sha256", &[9; 300], &[], &[]);
    assert_eq!(&long[8..11], &[0x12, 0xac, 0x02]);
    assert_eq!(
        host::fields(&long).unwrap()[1],
        (2, FieldValue::Bytes(&[9u8; 300][..]))
    );

    let ok = host::VerifySignatureResult {
        result: true,
        error: String::new(),
    };
    let refused = |e: &str| host::VerifySignatureResult {
        result: false,
        error: e.into(),
    };
    let cases: &[(&[u8], Result<host::VerifySignatureResult, ()>)] = &[
        (&[0x08, 0x01], Ok(ok.clone())),
        (&[], Ok(refused(""))),
        (&[0x12, 0x03, b'a', b'b', b'c'], Ok(refused("abc"))),
        (&[0x08, 0x00, 0x12, 0x01, b'x'], Ok(refused("x"))),
        // Unknown fields of every skippable wire type are ignored.
        (
            &[
                0x18, 0x05, 0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0x2d, 0, 0, 0, 0, 0x08, 0x01,
            ],
            Ok(ok.clone()),
        ),
        (&[0x08], Err(())),             // truncated varint
        (&[0x12, 0x05, b'a'], Err(())), // truncated string
        (&[0x0a, 0x00], Err(())),       // field 1 with the wrong wire type
        (&[0x12, 0x01, 0xff], Err(())), // error that is not UTF-8
        (&[0x0b], Err(())),             // group wire type
        (&[0x00, 0x00], Err(())),       // field number 0
        (
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            Err(()),
        ),
    ];
    for (bytes, want) in cases {
        let got = host::decode_verify_signature_result(bytes).map_err(|_| ());
        assert_eq!(&got, want, "{bytes:02x?}");
    }
}

#[test]
fn converts_raw_ecdsa_signatures_to_the_der_the_ecdsa_crate_produces() {
    let mut raws: Vec<[u8; 64]> = (0u8..20)
        .map(|i| {
            let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&keys().p256, &[i]);
            sig.to_bytes().as_slice().try_into().unwrap()
        })
        .collect();
    // Edge cases: leading zero octets, top bit set, the smallest scalars.
    let mut edge = [0u8; 64];
    edge[31] = 1;
    edge[63] = 1;
    raws.push(edge);
    let mut edge = [0u8; 64];
    edge[0] = 0x80;
    edge[32] = 0x7f;
    edge[63] = 3;
    raws.push(edge);
    let mut edge = [0x01u8; 64];
    edge[..3].fill(0);
    edge[32] = 0xff;
    raws.push(edge);
    for raw in raws {
        let reference = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
        assert_eq!(
            host::ecdsa_raw_to_der(&raw, 32).as_deref(),
            Some(reference.as_bytes()),
            "{raw:02x?}"
        );
    }
    let sig: p384::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(&keys().p384, b"x");
    let raw = sig.to_bytes();
    assert_eq!(
        host::ecdsa_raw_to_der(&raw, 48).as_deref(),
        Some(sig.to_der().as_bytes())
    );
    for (len, scalar) in [(63, 32), (65, 32), (0, 32), (64, 48), (0, 0)] {
        assert_eq!(
            host::ecdsa_raw_to_der(&vec![1; len], scalar),
            None,
            "{len}/{scalar}"
        );
    }
}

// ---- algorithms, issuers and keys -------------------------------------------------------------------

#[test]
fn refuses_alg_none_and_hmac_even_when_keyed_with_the_rsa_public_key() {
    let claims = good_claims().to_string();
    let unsigned = format!(
        "{}.{}.",
        base64url::encode(br#"{"alg":"none","typ":"JWT"}"#),
        base64url::encode(claims.as_bytes())
    );
    let public = keys().rsa_a.to_public_key();
    let pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(&public, rsa::pkcs8::LineEnding::LF).unwrap();
    let der = rsa::pkcs8::EncodePublicKey::to_public_key_der(&public).unwrap();
    let mut tokens = vec![unsigned];
    for secret in [pem.as_bytes(), der.as_bytes(), &public.n().to_bytes_be()[..]] {
        for alg in ["HS256", "HS384", "HS512"] {
            let header = json!({"alg": alg, "typ": "JWT", "kid": "rsa-a"}).to_string();
            let input = format!(
                "{}.{}",
                base64url::encode(header.as_bytes()),
                base64url::encode(claims.as_bytes())
            );
            let mac = hmac_sha256::HMAC::mac(input.as_bytes(), secret);
            tokens.push(format!("{input}.{}", base64url::encode(&mac)));
        }
    }
    for token in tokens {
        assert_eq!(check(&token), Err(TokenError::AlgorithmNotAllowed), "{token}");
    }
}

#[test]
fn refuses_algorithms_outside_the_provider_allow_list() {
    let config = config_with(json!({"algorithms": ["RS256"]}));
    let keys = default_keys();
    let rs = mint(Algorithm::RS256, Signer::RsaA, &good_claims());
    assert!(verify(&rs, &config, &keys, NOW, &JwtSimpleVerifier).is_ok());
    for alg in [
        Algorithm::RS384,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let token = mint(alg, Signer::for_alg(alg), &good_claims());
        assert_eq!(
            verify(&token, &config, &keys, NOW, &JwtSimpleVerifier),
            Err(TokenError::AlgorithmNotAllowed),
            "{alg}"
        );
    }
}

#[test]
fn chooses_the_provider_by_exact_issuer() {
    let config = config();
    let second_keys = KeySet::from_jwks(&jwks(&[jwk(Signer::P256, Some("second"), None)])).unwrap();
    let keys = vec![
        Some(KeySet::from_jwks(&default_jwks()).unwrap()),
        Some(second_keys),
    ];
    let for_second = claims_with(|c| {
        c.insert("iss".into(), ISS2.into());
    });
    let header = json!({"alg": "ES256", "kid": "second"}).to_string();
    let token = mint_raw(Algorithm::ES256, Signer::P256, &header, &for_second.to_string());
    assert_eq!(
        verify(&token, &config, &keys, NOW, &JwtSimpleVerifier)
            .unwrap()
            .issuer,
        ISS2
    );
    // The second provider's keys do not include the first provider's kids.
    let token = mint(Algorithm::ES256, Signer::P256, &for_second);
    assert_eq!(
        verify(&token, &config, &keys, NOW, &JwtSimpleVerifier),
        Err(TokenError::UnknownKey { provider: 1 })
    );
    // Keys looked up by issuer work the same way.
    let by_issuer: HashMap<String, KeySet> =
        [(ISS.to_string(), KeySet::from_jwks(&default_jwks()).unwrap())].into();
    let first = mint(Algorithm::ES256, Signer::P256, &good_claims());
    assert!(verify(&first, &config, &by_issuer, NOW, &JwtSimpleVerifier).is_ok());
}

#[test]
fn refuses_unknown_or_malformed_issuers() {
    let cases: Vec<(Value, TokenError)> = vec![
        (json!("https://evil.example.org"), TokenError::UnknownIssuer),
        (json!(format!("{ISS}/")), TokenError::UnknownIssuer),
        (json!(ISS.to_uppercase()), TokenError::UnknownIssuer),
        (json!(7), TokenError::InvalidClaim("iss")),
        (json!([ISS]), TokenError::InvalidClaim("iss")),
        (Value::Null, TokenError::InvalidClaim("iss")),
    ];
    for (iss, want) in cases {
        let claims = claims_with(|c| {
            c.insert("iss".into(), iss.clone());
        });
        assert_eq!(
            check(&mint(Algorithm::ES256, Signer::P256, &claims)),
            Err(want),
            "{iss}"
        );
    }
    let claims = claims_with(|c| {
        c.remove("iss");
    });
    assert_eq!(
        check(&mint(Algorithm::ES256, Signer::P256, &claims)),
        Err(TokenError::MissingClaim("iss"))
    );
}

#[test]
fn reports_keys_not_loaded_with_the_provider_index() {
    let token = mint(Algorithm::ES256, Signer::P256, &good_claims());
    let none: Vec<Option<KeySet>> = vec![None, None];
    assert_eq!(
        verify(&token, &config(), &none, NOW, &JwtSimpleVerifier),
        Err(TokenError::KeysNotLoaded { provider: 0 })
    );
    let empty: HashMap<String, KeySet> = HashMap::new();
    assert_eq!(
        verify(&token, &config(), &empty, NOW, &JwtSimpleVerifier),
        Err(TokenError::KeysNotLoaded { provider: 0 })
    );
}

#[test]
fn selects_keys_by_kid_or_by_the_only_fitting_key() {
    let claims = good_claims().to_string();
    let mint_with = |alg: Algorithm, signer: Signer, kid: Option<&str>| {
        let mut header = json!({"alg": alg.as_str()});
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        mint_raw(alg, signer, &header.to_string(), &claims)
    };
    let rsa_and_p256 = jwks(&[
        jwk(Signer::RsaA, Some("rsa-a"), None),
        jwk(Signer::P256, None, None),
    ]);
    let rsa_pinned_to_rs256 = jwks(&[jwk(Signer::RsaA, Some("rsa-a"), Some("RS256"))]);
    let same_kid_twice = jwks(&[
        jwk(Signer::RsaA, Some("dup"), None),
        jwk(Signer::RsaB, Some("dup"), None),
    ]);
    type Case<'a> = (&'a str, Vec<u8>, String, Result<(), TokenError>);
    let cases: Vec<Case> = vec![
        (
            "kid found",
            default_jwks(),
            mint_with(Algorithm::RS256, Signer::RsaA, Some("rsa-a")),
            Ok(()),
        ),
        (
            "kid selects the second RSA key",
            default_jwks(),
            mint_with(Algorithm::RS256, Signer::RsaB, Some("rsa-b")),
            Ok(()),
        ),
        (
            "no kid, one fitting key",
            rsa_and_p256.clone(),
            mint_with(Algorithm::ES256, Signer::P256, None),
            Ok(()),
        ),
        (
            "no kid, one RSA key among others",
            rsa_and_p256,
            mint_with(Algorithm::PS384, Signer::RsaA, None),
            Ok(()),
        ),
        (
            "kid unknown",
            default_jwks(),
            mint_with(Algorithm::RS256, Signer::RsaA, Some("rotated-away")),
            Err(TokenError::UnknownKey { provider: 0 }),
        ),
        (
            "no kid, two RSA keys",
            default_jwks(),
            mint_with(Algorithm::RS256, Signer::RsaA, None),
            Err(TokenError::AmbiguousKey),
        ),
        (
            "no kid, no fitting key",
            jwks(&[jwk(Signer::RsaA, Some("rsa-a"), None)]),
            mint_with(Algorithm::EdDSA, Signer::Ed25519, None),
            Err(TokenError::UnknownKey { provider: 0 }),
        ),
        (
            "kid of an EC key with an RSA alg",
            default_jwks(),
            mint_with(Algorithm::RS256, Signer::RsaA, Some("ec-p256")),
            Err(TokenError::KeyMismatch),
        ),
        (
            "kid of a P-256 key with ES384",
            default_jwks(),
            mint_with(Algorithm::ES384, Signer::P384, Some("ec-p256")),
            Err(TokenError::KeyMismatch),
        ),
        (
            "JWK alg RS256, token PS256",
            rsa_pinned_to_rs256.clone(),
            mint_with(Algorithm::PS256, Signer::RsaA, Some("rsa-a")),
            Err(TokenError::KeyMismatch),
        ),
        (
            "JWK alg RS256, token RS256",
            rsa_pinned_to_rs256,
            mint_with(Algorithm::RS256, Signer::RsaA, Some("rsa-a")),
            Ok(()),
        ),
        (
            "kid repeated in the key set",
            same_kid_twice,
            mint_with(Algorithm::RS256, Signer::RsaA, Some("dup")),
            Err(TokenError::AmbiguousKey),
        ),
    ];
    for (what, document, token, want) in cases {
        let keys = vec![Some(KeySet::from_jwks(&document).unwrap()), None];
        let got = verify(&token, &config(), &keys, NOW, &JwtSimpleVerifier).map(drop);
        assert_eq!(got, want, "{what}");
    }
}

// ---- header rules on validly signed tokens ---------------------------------------------------------

#[test]
fn refuses_validly_signed_tokens_with_refused_header_parameters() {
    let claims = good_claims().to_string();
    let cases = [
        (
            json!({"alg": "ES256", "kid": "ec-p256", "crit": ["exp"], "exp": 1}),
            TokenError::UnsupportedHeader("crit"),
        ),
        (
            json!({"alg": "ES256", "kid": "ec-p256", "b64": false}),
            TokenError::UnsupportedHeader("b64"),
        ),
        (
            json!({"alg": "ES256", "kid": "ec-p256", "jku": "https://idp.example.org/jwks"}),
            TokenError::UnsupportedHeader("jku"),
        ),
        (
            json!({"alg": "ES256", "kid": "ec-p256", "jwk": jwk(Signer::P256, None, None)}),
            TokenError::UnsupportedHeader("jwk"),
        ),
        (
            json!({"alg": "ES256", "kid": "ec-p256", "x5u": "https://idp.example.org/c"}),
            TokenError::UnsupportedHeader("x5u"),
        ),
        (
            json!({"alg": "ES256", "kid": "ec-p256", "typ": "dpop+jwt"}),
            TokenError::UnsupportedType,
        ),
    ];
    for (header, want) in cases {
        let token = mint_raw(Algorithm::ES256, Signer::P256, &header.to_string(), &claims);
        assert_eq!(check(&token), Err(want), "{header}");
    }
}

#[test]
fn accepts_at_jwt_and_ignores_x5c_and_x5t_for_key_selection() {
    let claims = good_claims().to_string();
    for header in [
        json!({"alg": "ES256", "kid": "ec-p256", "typ": "at+jwt"}),
        json!({"alg": "ES256", "kid": "ec-p256", "typ": "application/at+jwt"}),
        json!({"alg": "ES256", "kid": "ec-p256"}),
        // x5c/x5t naming some other certificate change nothing: the key is chosen by kid.
        json!({"alg": "ES256", "kid": "ec-p256", "x5c": ["MIIBfake"], "x5t": "bm90LWEtdGh1bWI"}),
    ] {
        let token = mint_raw(Algorithm::ES256, Signer::P256, &header.to_string(), &claims);
        assert!(check(&token).is_ok(), "{header}");
    }
}

#[test]
fn refuses_duplicate_members_in_a_validly_signed_header_or_payload() {
    let good = good_claims().to_string();
    let duplicated_claims = format!(r#"{{"patient":"999",{}"#, &good[1..]);
    let cases = [
        (
            r#"{"alg":"ES256","kid":"ec-p256","kid":"rsa-a"}"#.to_string(),
            good.clone(),
            "header repeats a member name",
        ),
        (
            r#"{"alg":"ES256","kid":"ec-p256"}"#.to_string(),
            duplicated_claims,
            "claims repeat a member name",
        ),
    ];
    for (header, claims, what) in cases {
        let token = mint_raw(Algorithm::ES256, Signer::P256, &header, &claims);
        assert_eq!(check(&token), Err(TokenError::Malformed(what)));
    }
}

#[test]
fn refuses_stripped_signatures_and_oversized_tokens() {
    let token = mint(Algorithm::RS256, Signer::RsaA, &good_claims());
    let (input, _) = token.rsplit_once('.').unwrap();
    assert_eq!(
        check(&format!("{input}.")),
        Err(TokenError::Malformed("signature is missing"))
    );
    assert_eq!(
        check(input),
        Err(TokenError::Malformed("not a JWS compact serialization"))
    );
    let big = claims_with(|c| {
        c.insert("padding".into(), "x".repeat(20_000).into());
    });
    assert_eq!(
        check(&mint(Algorithm::ES256, Signer::P256, &big)),
        Err(TokenError::TooLarge)
    );
}

// ---- claims -------------------------------------------------------------------------------------------

type Edit = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;

fn set(name: &'static str, value: Value) -> Edit {
    Box::new(move |c| {
        c.insert(name.into(), value.clone());
    })
}

fn unset(name: &'static str) -> Edit {
    Box::new(move |c| {
        c.remove(name);
    })
}

#[test]
fn applies_time_claims_with_the_clock_skew_at_the_edges() {
    let skew = 60;
    let cases: Vec<(&str, Edit, Result<(), TokenError>)> = vec![
        (
            "exp just inside the skew",
            set("exp", json!(NOW - skew + 1)),
            Ok(()),
        ),
        (
            "exp at the skew",
            set("exp", json!(NOW - skew)),
            Err(TokenError::Expired),
        ),
        (
            "exp long past",
            set("exp", json!(NOW - 3600)),
            Err(TokenError::Expired),
        ),
        ("exp as a fraction", set("exp", json!(NOW as f64 + 0.5)), Ok(())),
        ("exp missing", unset("exp"), Err(TokenError::MissingClaim("exp"))),
        (
            "exp as a string",
            set("exp", json!((NOW + 300).to_string())),
            Err(TokenError::InvalidClaim("exp")),
        ),
        (
            "exp negative",
            set("exp", json!(-1)),
            Err(TokenError::InvalidClaim("exp")),
        ),
        (
            "exp null",
            set("exp", Value::Null),
            Err(TokenError::InvalidClaim("exp")),
        ),
        (
            "exp huge",
            set("exp", json!(1e300)),
            Err(TokenError::InvalidClaim("exp")),
        ),
        ("nbf at the skew", set("nbf", json!(NOW + skew)), Ok(())),
        (
            "nbf beyond the skew",
            set("nbf", json!(NOW + skew + 1)),
            Err(TokenError::NotYetValid),
        ),
        (
            "nbf as a fraction beyond",
            set("nbf", json!((NOW + skew) as f64 + 0.5)),
            Err(TokenError::NotYetValid),
        ),
        ("nbf absent", unset("nbf"), Ok(())),
        (
            "nbf as a string",
            set("nbf", json!("soon")),
            Err(TokenError::InvalidClaim("nbf")),
        ),
        ("iat at the skew", set("iat", json!(NOW + skew)), Ok(())),
        (
            "iat beyond the skew",
            set("iat", json!(NOW + skew + 1)),
            Err(TokenError::IssuedInFuture),
        ),
        ("iat absent", unset("iat"), Ok(())),
        (
            "iat as a bool",
            set("iat", json!(true)),
            Err(TokenError::InvalidClaim("iat")),
        ),
    ];
    for (what, edit, want) in cases {
        let claims = claims_with(|c| edit(c));
        assert_eq!(
            check_claim_rules(&mint(Algorithm::ES256, Signer::P256, &claims)).map(drop),
            want,
            "{what}"
        );
    }
}

#[test]
fn limits_token_lifetime_when_the_provider_sets_max_lifetime() {
    let config = config_with(json!({"max_lifetime_s": 3600}));
    let keys = default_keys();
    let cases: Vec<(&str, Value, Result<(), TokenError>)> = vec![
        (
            "lifetime equals the maximum",
            json!({"iat": NOW - 100, "exp": NOW + 3500}),
            Ok(()),
        ),
        (
            "lifetime above the maximum",
            json!({"iat": NOW - 100, "exp": NOW + 3501}),
            Err(TokenError::LifetimeTooLong),
        ),
        (
            "iat missing",
            json!({"iat": null, "exp": NOW + 10}),
            Err(TokenError::MissingClaim("iat")),
        ),
        (
            "exp before iat",
            json!({"iat": NOW, "exp": NOW - 1}),
            Err(TokenError::InvalidClaim("iat")),
        ),
    ];
    for (what, times, want) in cases {
        let claims = claims_with(|c| {
            for (k, v) in times.as_object().unwrap() {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        });
        let token = mint(Algorithm::ES256, Signer::P256, &claims);
        assert_eq!(
            verify(&token, &config, &keys, NOW, &JwtSimpleVerifier).map(drop),
            want,
            "{what}"
        );
    }
    // Without max_lifetime_s, a long-lived token without iat is fine.
    let claims = claims_with(|c| {
        c.remove("iat");
        c.insert("exp".into(), json!(NOW + 10 * 365 * 86400));
    });
    assert!(check(&mint(Algorithm::ES256, Signer::P256, &claims)).is_ok());
}

#[test]
fn requires_an_audience_of_the_provider() {
    let cases: Vec<(&str, Edit, Result<(), TokenError>)> = vec![
        ("string", set("aud", json!(AUD)), Ok(())),
        (
            "second accepted audience",
            set("aud", json!("https://other-api.example.org")),
            Ok(()),
        ),
        (
            "array with one match",
            set("aud", json!(["https://x.example", AUD])),
            Ok(()),
        ),
        (
            "wrong string",
            set("aud", json!("https://evil.example")),
            Err(TokenError::WrongAudience),
        ),
        (
            "near miss",
            set("aud", json!(format!("{AUD}/"))),
            Err(TokenError::WrongAudience),
        ),
        (
            "array without match",
            set("aud", json!(["https://x.example"])),
            Err(TokenError::WrongAudience),
        ),
        (
            "empty array",
            set("aud", json!([])),
            Err(TokenError::WrongAudience),
        ),
        ("missing", unset("aud"), Err(TokenError::MissingClaim("aud"))),
        (
            "number",
            set("aud", json!(1)),
            Err(TokenError::InvalidClaim("aud")),
        ),
        (
            "array with a number",
            set("aud", json!([AUD, 1])),
            Err(TokenError::InvalidClaim("aud")),
        ),
    ];
    for (what, edit, want) in cases {
        let claims = claims_with(|c| edit(c));
        assert_eq!(
            check_claim_rules(&mint(Algorithm::ES256, Signer::P256, &claims)).map(drop),
            want,
            "{what}"
        );
    }
}

#[test]
fn builds_verified_claims_from_a_good_token() {
    let claims = check(&mint(Algorithm::RS256, Signer::RsaA, &good_claims())).unwrap();
    assert_eq!(
        claims,
        VerifiedClaims {
            issuer: ISS.into(),
            subject: Some("user-1".into()),
            client_id: Some("app-1".into()),
            scopes: vec!["launch/patient".into(), "patient/Observation.rs".into()],
            patient: Some("123".into()),
            encounter: Some("enc-9".into()),
            fhir_user: Some("Practitioner/77".into()),
            jti: Some("jti-1".into()),
            expires_at: NOW + 300,
        }
    );
}

#[test]
fn takes_the_client_id_from_client_id_then_azp_then_cid() {
    let without_ids = || {
        claims_with(|c| {
            c.remove("client_id");
        })
    };
    let cases: Vec<(Value, Result<Option<&str>, TokenError>)> = vec![
        (json!({"client_id": "a", "azp": "b", "cid": "c"}), Ok(Some("a"))),
        (json!({"azp": "b", "cid": "c"}), Ok(Some("b"))),
        (json!({"cid": "c"}), Ok(Some("c"))),
        (json!({}), Ok(None)),
        (
            json!({"client_id": 5, "azp": "b"}),
            Err(TokenError::InvalidClaim("client_id")),
        ),
        (json!({"azp": ["b"]}), Err(TokenError::InvalidClaim("azp"))),
    ];
    for (ids, want) in cases {
        let mut claims = without_ids();
        for (k, v) in ids.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let got = check_claim_rules(&mint(Algorithm::ES256, Signer::P256, &claims));
        assert_eq!(
            got.map(|c| c.client_id),
            want.map(|w| w.map(String::from)),
            "{ids}"
        );
    }
}

#[test]
fn reads_scopes_from_scope_or_scp_strings_and_arrays() {
    let without_scope = || {
        claims_with(|c| {
            c.remove("scope");
        })
    };
    let cases: Vec<(Value, Result<Vec<&str>, TokenError>)> = vec![
        (json!({"scope": "a  b c "}), Ok(vec!["a", "b", "c"])),
        (
            json!({"scp": ["patient/*.rs", "openid"]}),
            Ok(vec!["patient/*.rs", "openid"]),
        ),
        (
            json!({"scp": "user/*.cruds launch"}),
            Ok(vec!["user/*.cruds", "launch"]),
        ),
        (json!({"scope": "a", "scp": ["b"]}), Ok(vec!["a"])),
        (json!({"scope": ["a", "b"]}), Ok(vec!["a", "b"])),
        (json!({}), Ok(vec![])),
        (json!({"scope": ""}), Ok(vec![])),
        (json!({"scope": 3}), Err(TokenError::InvalidClaim("scope"))),
        (json!({"scp": [1]}), Err(TokenError::InvalidClaim("scp"))),
        (json!({"scp": ["a b"]}), Err(TokenError::InvalidClaim("scp"))),
        (json!({"scp": [""]}), Err(TokenError::InvalidClaim("scp"))),
    ];
    for (scopes, want) in cases {
        let mut claims = without_scope();
        for (k, v) in scopes.as_object().unwrap() {
            claims[k] = v.clone();
        }
        let got = check_claim_rules(&mint(Algorithm::ES256, Signer::P256, &claims));
        let want = want.map(|w| w.into_iter().map(String::from).collect::<Vec<_>>());
        assert_eq!(got.map(|c| c.scopes), want, "{scopes}");
    }
}

#[test]
fn refuses_context_claims_of_the_wrong_type() {
    let cases: Vec<(&str, Edit, TokenError)> = vec![
        (
            "patient number",
            set("patient", json!(123)),
            TokenError::InvalidClaim("patient"),
        ),
        (
            "patient empty",
            set("patient", json!("")),
            TokenError::InvalidClaim("patient"),
        ),
        (
            "patient object",
            set("patient", json!({"id": "1"})),
            TokenError::InvalidClaim("patient"),
        ),
        (
            "encounter number",
            set("encounter", json!(9)),
            TokenError::InvalidClaim("encounter"),
        ),
        (
            "fhirUser array",
            set("fhirUser", json!(["Patient/1"])),
            TokenError::InvalidClaim("fhirUser"),
        ),
        (
            "sub number",
            set("sub", json!(1)),
            TokenError::InvalidClaim("sub"),
        ),
        (
            "jti number",
            set("jti", json!(1)),
            TokenError::InvalidClaim("jti"),
        ),
        (
            "nonce number",
            set("nonce", json!(1)),
            TokenError::InvalidClaim("nonce"),
        ),
    ];
    for (what, edit, want) in cases {
        let claims = claims_with(|c| edit(c));
        let token = mint(Algorithm::RS256, Signer::RsaA, &claims);
        assert_eq!(check_claim_rules(&token), Err(want), "{what}");
    }
}

#[test]
fn reads_the_patient_from_the_configured_claim() {
    let mut json = config_json(json!({}));
    json["patient_claim"] = "ctx_patient".into();
    let config = Config::from_json(json.to_string().as_bytes()).unwrap();
    let claims = claims_with(|c| {
        c.insert("ctx_patient".into(), "p-42".into());
    });
    let token = mint(Algorithm::ES256, Signer::P256, &claims);
    let verified = verify(&token, &config, &default_keys(), NOW, &JwtSimpleVerifier).unwrap();
    assert_eq!(verified.patient.as_deref(), Some("p-42"));
    let claims = claims_with(|c| {
        c.remove("patient");
    });
    let token = mint(Algorithm::ES256, Signer::P256, &claims);
    assert_eq!(check(&token).unwrap().patient, None);
}

// ---- errors and fingerprints ----------------------------------------------------------------------------

#[test]
fn error_messages_never_contain_the_token_or_claim_values() {
    const SECRET: &str = "SECRET-VALUE-4711";
    let edits: Vec<Edit> = vec![
        set("iss", json!(SECRET)),
        set("aud", json!(SECRET)),
        set("exp", json!(SECRET)),
        set("patient", json!(12)),
        set("client_id", json!([SECRET])),
    ];
    for edit in edits {
        let mut claims = claims_with(|c| edit(c));
        claims["sub"] = SECRET.into();
        let token = mint(Algorithm::ES256, Signer::P256, &claims);
        let err = check(&token).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(SECRET) && !shown.contains(&token), "{shown}");
    }
}

#[test]
fn maps_every_error_to_its_denial() {
    use crate::denial::{Denial, TokenReason as R};
    let cases: Vec<(TokenError, Denial)> = vec![
        (TokenError::Missing, Denial::MissingToken),
        (TokenError::OtherScheme, Denial::MissingToken),
        (TokenError::TooLarge, Denial::InvalidToken(R::TooLarge)),
        (TokenError::Malformed("x"), Denial::InvalidToken(R::Malformed)),
        (
            TokenError::UnsupportedHeader("jku"),
            Denial::InvalidToken(R::UnsupportedHeader),
        ),
        (
            TokenError::UnsupportedType,
            Denial::InvalidToken(R::UnsupportedHeader),
        ),
        (
            TokenError::AlgorithmNotAllowed,
            Denial::InvalidToken(R::AlgorithmNotAllowed),
        ),
        (
            TokenError::KeyMismatch,
            Denial::InvalidToken(R::AlgorithmNotAllowed),
        ),
        (TokenError::UnknownIssuer, Denial::InvalidToken(R::UnknownIssuer)),
        (TokenError::KeysNotLoaded { provider: 1 }, Denial::KeysUnavailable),
        (
            TokenError::UnknownKey { provider: 0 },
            Denial::InvalidToken(R::UnknownKey),
        ),
        (TokenError::AmbiguousKey, Denial::InvalidToken(R::UnknownKey)),
        (TokenError::BadSignature, Denial::InvalidToken(R::BadSignature)),
        (TokenError::VerifierFailed, Denial::Internal),
        (
            TokenError::MissingClaim("exp"),
            Denial::InvalidToken(R::MissingClaim),
        ),
        (
            TokenError::InvalidClaim("aud"),
            Denial::InvalidToken(R::MissingClaim),
        ),
        (TokenError::Expired, Denial::InvalidToken(R::Expired)),
        (TokenError::NotYetValid, Denial::InvalidToken(R::NotYetValid)),
        (
            TokenError::IssuedInFuture,
            Denial::InvalidToken(R::IssuedInFuture),
        ),
        (
            TokenError::LifetimeTooLong,
            Denial::InvalidToken(R::LifetimeTooLong),
        ),
        (TokenError::WrongAudience, Denial::InvalidToken(R::WrongAudience)),
    ];
    for (err, want) in cases {
        assert_eq!(err.denial(), want, "{err:?}");
    }
    // Request-shape errors are RFC 6750 invalid_request (HTTP 400) with a quote-free description.
    for err in [
        TokenError::MalformedAuthorization,
        TokenError::SeveralAuthorizationHeaders,
        TokenError::TokenInQuery,
    ] {
        let reply = err.denial().reply("realm");
        assert_eq!(
            (reply.status, reply.reason_code),
            (400, "invalid_request"),
            "{err:?}"
        );
        let header = reply.www_authenticate.unwrap();
        assert!(header.contains("error=\"invalid_request\""), "{header}");
        assert_eq!(header.matches('"').count(), 6, "{header}");
    }
}

#[test]
fn fingerprints_tokens_with_a_sha256_prefix() {
    use rsa::sha2::{Digest, Sha256};
    for token in ["abc", "", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"] {
        let reference: String = Sha256::digest(token.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(token_fingerprint(token), reference);
        assert_eq!(token_fingerprint(token).len(), 12);
    }
    assert_ne!(token_fingerprint("a.b.c"), token_fingerprint("a.b.d"));
}
