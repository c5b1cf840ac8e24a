//! JWKS documents as an identity provider serves them: parsing, key import, and key selection
//! by `kid` and algorithm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::jwks::KeySet;
use smart_fhir_edge::token::Algorithm;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = KeySet::from_jwks(data) else { return };
    let _ = set.fingerprint();
    let _ = set.skipped().len();
    let kids: Vec<String> = set
        .keys()
        .iter()
        .filter_map(|k| k.kid().map(str::to_string))
        .collect();
    for alg in Algorithm::ALL {
        let _ = set.select(None, alg);
        let _ = set.select(Some("no-such-kid"), alg);
        for kid in &kids {
            if let Ok(key) = set.select(Some(kid), alg) {
                assert!(key.fits(alg), "a selected key fits the token's algorithm");
                let _ = key.prebuilt(alg);
                let _ = key.spki_der().len();
            }
        }
    }
});
