//! Mints valid access tokens for the Envoy-level benchmark (`envoy/bench/run.py`), signed with
//! the test keys `rsa-a` (RS256, committed) or `ec-p256` (ES256, fixed) from
//! `smart_fhir_edge::token::test_support`. (`--profile bench` shares the build with the
//! micro-benchmarks.)
//!
//! ```text
//! cargo run --profile bench --features test-support --example mint_tokens -- tokens <count> [patient|user] [RS256|ES256]
//! cargo run --profile bench --features test-support --example mint_tokens -- jwks
//! ```
//!
//! `tokens` prints one token per line, each with its own `jti` (so every token is distinct), valid
//! from one minute ago for two hours of real time. `patient` tokens carry
//! `launch/patient openid fhirUser patient/*.rs` and `patient: 123`; `user` tokens carry
//! `openid fhirUser user/*.rs`. RS256 is the default; ES256 signs much faster (for the 100,000-token
//! memory run). `jwks` prints the public JWKS (`rsa-a` RS256, `ec-p256` ES256) that the benchmark
//! configuration embeds.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use smart_fhir_edge::token::test_support::{jwk, jwks, mint, Signer, AUD, ISS};
use smart_fhir_edge::token::Algorithm;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("jwks") => {
            let doc = jwks(&[
                jwk(Signer::RsaA, Some("rsa-a"), Some("RS256")),
                jwk(Signer::P256, Some("ec-p256"), Some("ES256")),
            ]);
            println!("{}", String::from_utf8_lossy(&doc));
        }
        Some("tokens") => {
            let count: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
            let kind = args.get(2).map(String::as_str).unwrap_or("patient");
            let alg = match args.get(3).map(String::as_str) {
                None | Some("RS256") => Algorithm::RS256,
                Some("ES256") => Algorithm::ES256,
                Some(_) => {
                    eprintln!("algorithm must be RS256 or ES256");
                    std::process::exit(2);
                }
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            for i in 0..count {
                let mut claims = json!({
                    "iss": ISS,
                    "aud": AUD,
                    "sub": format!("bench-user-{i}"),
                    "client_id": "bench-app",
                    "iat": now - 60,
                    "nbf": now - 60,
                    "exp": now + 7200,
                    "jti": format!("bench-{now}-{i}"),
                });
                if kind == "user" {
                    claims["scope"] = json!("openid fhirUser user/*.rs");
                    claims["fhirUser"] = json!("Practitioner/77");
                } else {
                    claims["scope"] = json!("launch/patient openid fhirUser patient/*.rs");
                    claims["patient"] = json!("123");
                    claims["fhirUser"] = json!("Patient/123");
                }
                let token = mint(alg, Signer::for_alg(alg), &claims);
                if writeln!(out, "{token}").is_err() {
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!("usage: mint_tokens tokens <count> [patient|user] | mint_tokens jwks");
            std::process::exit(2);
        }
    }
}
