//! proxy-wasm's serialized header map as a host hands it over: any bytes decode to pairs or an
//! error, never a panic, and a decoded map encodes back to bytes that decode the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smart_fhir_edge::header_map::{decode, encode};

fuzz_target!(|data: &[u8]| {
    if let Ok(pairs) = decode(data) {
        let refs: Vec<(&[u8], &[u8])> = pairs
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(decode(&encode(&refs)).ok(), Some(pairs));
    }
});
