use p256::pkcs8::DecodePublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::{json, Value};

use super::*;
use crate::token::test_support::{jwk, jwks, keys, rsa_jwk, Signer};

fn parse(keys: &[Value]) -> Result<KeySet, JwksError> {
    KeySet::from_jwks(&jwks(keys))
}

#[test]
fn accepts_rsa_ec_and_ed25519_keys_with_prebuilt_objects() {
    let set = parse(&[
        jwk(Signer::RsaA, Some("rsa"), None),
        jwk(Signer::RsaB, Some("rsa-pinned"), Some("PS384")),
        jwk(Signer::P256, Some("p256"), Some("ES256")),
        jwk(Signer::P384, Some("p384"), None),
        jwk(Signer::Ed25519, Some("ed"), Some("EdDSA")),
    ])
    .unwrap();
    assert!(set.skipped().is_empty());
    let prebuilt = |kid: &str| -> Vec<Algorithm> {
        let key = set.keys().iter().find(|k| k.kid() == Some(kid)).unwrap();
        key.prebuilt.iter().map(PrebuiltKey::algorithm).collect()
    };
    use Algorithm::*;
    assert_eq!(prebuilt("rsa"), vec![RS256, RS384, RS512, PS256, PS384, PS512]);
    assert_eq!(prebuilt("rsa-pinned"), vec![PS384]);
    assert_eq!(prebuilt("p256"), vec![ES256]);
    assert_eq!(prebuilt("p384"), vec![ES384]);
    assert_eq!(prebuilt("ed"), vec![EdDSA]);
    let families: Vec<KeyFamily> = set.keys().iter().map(VerifyingKey::family).collect();
    use KeyFamily::*;
    assert_eq!(families, vec![Rsa, Rsa, P256, P384, Ed25519]);
    assert_eq!(set.keys()[1].jwk_alg(), Some(PS384));
    assert!(set.has_kid("p384") && !set.has_kid("P384"));
}

#[test]
fn builds_der_subject_public_key_info_the_crypto_crates_read_back() {
    let set = parse(&[
        jwk(Signer::RsaA, None, None),
        jwk(Signer::P256, None, None),
        jwk(Signer::P384, None, None),
        jwk(Signer::Ed25519, None, None),
    ])
    .unwrap();
    let k = keys();
    let rsa = rsa::RsaPublicKey::from_public_key_der(set.keys()[0].spki_der()).unwrap();
    assert_eq!(rsa, k.rsa_a.to_public_key());
    let p256 = p256::ecdsa::VerifyingKey::from_public_key_der(set.keys()[1].spki_der()).unwrap();
    assert_eq!(&p256, k.p256.verifying_key());
    let p384 = p384::ecdsa::VerifyingKey::from_public_key_der(set.keys()[2].spki_der()).unwrap();
    assert_eq!(&p384, k.p384.verifying_key());
    // Ed25519 SPKI (RFC 8410): the fixed 12-octet prefix, then the 32-octet key.
    let ed = set.keys()[3].spki_der();
    assert_eq!(ed.len(), 44);
    assert_eq!(
        &ed[..12],
        &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]
    );
    assert_eq!(&ed[12..], &k.ed25519.public_key().to_bytes()[..]);
}

#[test]
fn tolerates_leading_zero_octets_in_rsa_parameters() {
    let public = keys().rsa_a.to_public_key();
    let mut n = vec![0u8];
    n.extend(public.n().to_bytes_be());
    let jwk =
        json!({"kty": "RSA", "kid": "z", "n": base64url::encode(&n), "e": base64url::encode(&[0, 1, 0, 1])});
    let set = parse(&[jwk]).unwrap();
    let rsa = rsa::RsaPublicKey::from_public_key_der(set.keys()[0].spki_der()).unwrap();
    assert_eq!(rsa, public);
}

#[test]
fn skips_unusable_keys_with_a_reason() {
    let rsa = || jwk(Signer::RsaA, Some("k"), None);
    let with = |mut v: Value, member: &str, value: Value| {
        v[member] = value;
        v
    };
    let without = |mut v: Value, member: &str| {
        v.as_object_mut().unwrap().remove(member);
        v
    };
    let p256 = || jwk(Signer::P256, Some("k"), None);
    let public = keys().rsa_a.to_public_key();
    let e3 = json!({"kty": "RSA", "kid": "k", "n": base64url::encode(&public.n().to_bytes_be()), "e": "Aw"});
    let big_n = json!({"kty": "RSA", "kid": "k", "n": base64url::encode(&[0xff; 513]), "e": "AQAB"});
    let mut even = public.n().to_bytes_be();
    *even.last_mut().unwrap() &= 0xfe;
    let even_n = json!({"kty": "RSA", "kid": "k", "n": base64url::encode(&even), "e": "AQAB"});
    let cases: Vec<(Value, &str)> = vec![
        (
            rsa_jwk(&keys().rsa_1024, Some("k"), None),
            "RSA modulus is shorter than 2048 bits",
        ),
        (big_n, "RSA modulus is longer than 4096 bits"),
        (e3, "RSA public exponent is not 65537"),
        (even_n, "RSA key is invalid"),
        (with(rsa(), "n", json!("AQAB==")), "n is missing or not base64url"),
        (without(rsa(), "e"), "e is missing or not base64url"),
        (with(rsa(), "use", json!("enc")), "use is not sig"),
        (
            with(rsa(), "key_ops", json!(["encrypt", "wrapKey"])),
            "key_ops does not include verify",
        ),
        (
            with(rsa(), "key_ops", json!("verify")),
            "key_ops is not an array of strings",
        ),
        (
            with(rsa(), "alg", json!("RSA-OAEP")),
            "alg is not a supported signature algorithm",
        ),
        (
            with(rsa(), "alg", json!("HS256")),
            "alg is not a supported signature algorithm",
        ),
        (
            with(rsa(), "alg", json!("none")),
            "alg is not a supported signature algorithm",
        ),
        (
            with(rsa(), "alg", json!("ES256")),
            "alg does not match the key type",
        ),
        (
            with(p256(), "alg", json!("ES384")),
            "alg does not match the key type",
        ),
        (
            with(p256(), "alg", json!("RS256")),
            "alg does not match the key type",
        ),
        (with(rsa(), "alg", json!(256)), "alg is not a string"),
        (with(rsa(), "kid", json!(1)), "kid is not a string"),
        (with(rsa(), "d", json!("AQAB")), "holds private key material"),
        (with(p256(), "d", json!("AQAB")), "holds private key material"),
        (
            json!({"kty": "oct", "k": "c2VjcmV0"}),
            "symmetric keys (kty oct) are never used",
        ),
        (without(rsa(), "kty"), "kty is missing or not a string"),
        (with(rsa(), "kty", json!("RSA-PSS")), "kty is not RSA, EC or OKP"),
        (
            with(p256(), "crv", json!("P-521")),
            "EC curve is not P-256 or P-384",
        ),
        (
            with(p256(), "crv", json!("secp256k1")),
            "EC curve is not P-256 or P-384",
        ),
        (
            with(p256(), "x", json!(base64url::encode(&[1; 31]))),
            "EC coordinates do not have the curve's size",
        ),
        (
            with(
                with(p256(), "x", json!(base64url::encode(&[1; 32]))),
                "y",
                json!(base64url::encode(&[2; 32])),
            ),
            "EC point is not on the curve",
        ),
        (without(p256(), "y"), "y is missing or not base64url"),
        (
            json!({"kty": "OKP", "crv": "X25519", "x": base64url::encode(&[9; 32])}),
            "OKP curve is not Ed25519",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed448", "x": base64url::encode(&[9; 57])}),
            "OKP curve is not Ed25519",
        ),
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": base64url::encode(&[9; 31])}),
            "Ed25519 key is not 32 octets",
        ),
        // The identity point is a weak key.
        (
            json!({"kty": "OKP", "crv": "Ed25519", "x": base64url::encode(&[[1u8].as_slice(), &[0; 31]].concat())}),
            "Ed25519 key is invalid",
        ),
        (json!("not an object"), "not a JSON object"),
    ];
    for (bad, reason) in cases {
        let set = parse(&[bad.clone(), jwk(Signer::P384, Some("good"), None)])
            .unwrap_or_else(|e| panic!("{reason}: {e}"));
        assert_eq!(set.keys().len(), 1, "{reason}");
        assert_eq!(set.skipped().len(), 1, "{reason}");
        let skipped = &set.skipped()[0];
        assert_eq!((skipped.index, skipped.reason), (0, reason), "{bad}");
        assert_eq!(
            skipped.kid.as_deref(),
            bad.get("kid").and_then(Value::as_str),
            "{reason}"
        );
    }
}

#[test]
fn accepts_keys_marked_for_signature_verification() {
    let rsa = jwk(Signer::RsaA, Some("k"), None);
    for (member, value) in [
        ("use", json!("sig")),
        ("key_ops", json!(["verify"])),
        ("key_ops", json!(["sign", "verify"])),
        ("x5c", json!(["MIIBfake"])),
        ("x5t", json!("ignored")),
    ] {
        let mut jwk = rsa.clone();
        jwk[member] = value;
        assert!(parse(&[jwk]).unwrap().skipped().is_empty(), "{member}");
    }
}

#[test]
fn refuses_documents_without_usable_keys_or_beyond_limits() {
    let good = jwk(Signer::P256, Some("k"), None);
    let too_many: Vec<Value> = (0..=MAX_KEYS).map(|_| good.clone()).collect();
    let cases: Vec<(Vec<u8>, JwksError)> = vec![
        (vec![b' '; MAX_JWKS_BYTES + 1], JwksError::TooLarge),
        (b"not json".to_vec(), JwksError::NotJson),
        (b"[]".to_vec(), JwksError::NotJson),
        (br#"{"keys":[],"keys":[]}"#.to_vec(), JwksError::NotJson),
        (br#"{"jwks":[]}"#.to_vec(), JwksError::NoKeysArray),
        (br#"{"keys":{}}"#.to_vec(), JwksError::NoKeysArray),
        (jwks(&too_many), JwksError::TooManyKeys),
        (jwks(&[]), JwksError::NoUsableKey(vec![])),
        (
            jwks(&[json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"})]),
            JwksError::NoUsableKey(vec![SkippedKey {
                index: 0,
                kid: Some("s".into()),
                reason: "symmetric keys (kty oct) are never used",
            }]),
        ),
    ];
    for (document, want) in cases {
        let got = KeySet::from_jwks(&document).map(|s| s.fingerprint().to_string());
        assert_eq!(
            got,
            Err(want),
            "{}",
            String::from_utf8_lossy(&document[..document.len().min(60)])
        );
    }
    let at_limit: Vec<Value> = (0..MAX_KEYS).map(|_| good.clone()).collect();
    assert_eq!(
        KeySet::from_jwks(&jwks(&at_limit)).unwrap().keys().len(),
        MAX_KEYS
    );
}

#[test]
fn fingerprints_the_usable_keys_independently_of_order() {
    let a = jwk(Signer::RsaA, Some("a"), None);
    let b = jwk(Signer::P256, Some("b"), Some("ES256"));
    let junk = json!({"kty": "oct", "k": "c2VjcmV0"});
    let fp = |keys: &[Value]| parse(keys).unwrap().fingerprint().to_string();
    let base = fp(&[a.clone(), b.clone()]);
    assert_eq!(base.len(), 16);
    assert!(base.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(fp(&[b.clone(), a.clone()]), base, "order does not matter");
    assert_eq!(
        fp(&[a.clone(), junk, b.clone()]),
        base,
        "skipped keys do not matter"
    );
    assert_ne!(fp(std::slice::from_ref(&a)), base, "a removed key changes it");
    assert_ne!(
        fp(&[a.clone(), b.clone(), jwk(Signer::P384, None, None)]),
        base,
        "an added key changes it"
    );
    assert_ne!(
        fp(&[jwk(Signer::RsaA, Some("renamed"), None), b.clone()]),
        base,
        "a new kid changes it"
    );
    assert_ne!(
        fp(&[a.clone(), jwk(Signer::P256, Some("b"), None)]),
        base,
        "a dropped alg changes it"
    );
    assert_ne!(
        fp(&[jwk(Signer::RsaB, Some("a"), None), b]),
        base,
        "a new key under the same kid changes it"
    );
}

#[test]
fn selects_by_kid_and_alg() {
    let set = parse(&[
        jwk(Signer::RsaA, Some("rsa-a"), Some("RS256")),
        jwk(Signer::RsaB, Some("rsa-b"), None),
        jwk(Signer::P256, None, None),
    ])
    .unwrap();
    use Algorithm::*;
    type Case<'a> = (
        Option<&'a str>,
        Algorithm,
        Result<Option<&'a str>, KeySelectError>,
    );
    let cases: Vec<Case> = vec![
        (Some("rsa-a"), RS256, Ok(Some("rsa-a"))),
        (Some("rsa-a"), PS256, Err(KeySelectError::Mismatch)),
        (Some("rsa-b"), PS256, Ok(Some("rsa-b"))),
        (Some("rsa-b"), ES256, Err(KeySelectError::Mismatch)),
        (Some("nope"), RS256, Err(KeySelectError::Unknown)),
        (None, ES256, Ok(None)),
        (None, RS256, Err(KeySelectError::Ambiguous)),
        (None, PS256, Ok(Some("rsa-b"))),
        (None, EdDSA, Err(KeySelectError::Unknown)),
    ];
    for (kid, alg, want) in cases {
        assert_eq!(set.select(kid, alg).map(VerifyingKey::kid), want, "{kid:?} {alg}");
    }
}
