//! Native micro-benchmarks of the per-request core: FHIR classification, scope evaluation,
//! token verification (jwt-simple, RS256 and ES256) and `Engine::decide` end to end.
//!
//! A small hand-written harness (no criterion: nothing heavy to build on a shared 2-core machine):
//! each case is warmed up, then timed in `SAMPLES` samples of a batch sized to take about
//! `SAMPLE_TARGET`; the median and the fastest sample are reported in ns per operation.
//!
//! Run: `cargo bench -p smart-fhir-edge --features test-support --bench core`
//! (`-- --quick` takes fewer, shorter samples; `-- --markdown` prints a Markdown table).

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::json;
use smart_fhir_edge::authz;
use smart_fhir_edge::claims::VerifiedClaims;
use smart_fhir_edge::config::Config;
use smart_fhir_edge::decision::{Decision, Engine, RequestFacts};
use smart_fhir_edge::fhir;
use smart_fhir_edge::jwks::KeySet;
use smart_fhir_edge::jwks::VerifyingKey;
use smart_fhir_edge::scope::GrantedScopes;
use smart_fhir_edge::shared::MemoryStore;
use smart_fhir_edge::token::test_support::{self, good_claims, mint, Signer, AUD, ISS, NOW};
use smart_fhir_edge::token::{
    self, base64url, Algorithm, JwtSimpleVerifier, SignatureError, SignatureVerifier,
};

struct Settings {
    samples: usize,
    sample_target: Duration,
    warm_up: Duration,
}

struct Row {
    name: &'static str,
    median_ns: f64,
    min_ns: f64,
}

/// Times `f`: warm-up, then `samples` batches; returns ns per call (median, min).
fn measure<T>(s: &Settings, mut f: impl FnMut() -> T) -> (f64, f64) {
    let start = Instant::now();
    let mut calls: u64 = 0;
    while start.elapsed() < s.warm_up || calls < 3 {
        black_box(f());
        calls += 1;
    }
    let per_call = start.elapsed().as_secs_f64() / calls as f64;
    let batch = ((s.sample_target.as_secs_f64() / per_call) as u64).max(1);
    let mut samples: Vec<f64> = (0..s.samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..batch {
                black_box(f());
            }
            t.elapsed().as_secs_f64() * 1e9 / batch as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (samples[samples.len() / 2], samples[0])
}

fn config() -> Config {
    let jwks: serde_json::Value = serde_json::from_slice(&test_support::default_jwks()).unwrap();
    let text = json!({
        "fhir_base": "/fhir",
        "providers": [{"issuer": ISS, "audiences": [AUD], "local_jwks": jwks}],
    });
    Config::from_json(text.to_string().as_bytes()).unwrap()
}

fn token(alg: Algorithm, i: usize) -> String {
    let mut claims = good_claims();
    claims["scope"] = json!("launch/patient openid fhirUser patient/*.rs");
    claims["jti"] = json!(format!("jti-{i}"));
    mint(alg, Signer::for_alg(alg), &claims)
}

/// Accepts every signature: isolates the rest of a cache miss from the signature arithmetic.
struct AcceptAnySignature;

impl SignatureVerifier for AcceptAnySignature {
    fn verify(&self, _: Algorithm, _: &VerifyingKey, _: &[u8], _: &[u8]) -> Result<(), SignatureError> {
        Ok(())
    }
}

/// Request headers as Envoy hands them to the filter, with `authorization: Bearer {token}`.
fn request_headers(token: &str) -> Vec<(String, String)> {
    vec![
        (":authority".into(), "127.0.0.1".into()),
        (":path".into(), "/fhir/Patient/123".into()),
        (":method".into(), "GET".into()),
        (":scheme".into(), "http".into()),
        ("user-agent".into(), "wrk".into()),
        ("accept".into(), "application/fhir+json".into()),
        ("authorization".into(), format!("Bearer {token}")),
        ("x-forwarded-proto".into(), "http".into()),
        (
            "x-request-id".into(),
            "0d7bd6b6-6c5b-4e0c-9a55-2b5c1c1b3f0e".into(),
        ),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let markdown = args.iter().any(|a| a == "--markdown");
    // Like libtest: the first argument that is not an option keeps only the cases naming it.
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned();
    let s = if quick {
        Settings {
            samples: 11,
            sample_target: Duration::from_millis(20),
            warm_up: Duration::from_millis(100),
        }
    } else {
        Settings {
            samples: 31,
            sample_target: Duration::from_millis(50),
            warm_up: Duration::from_millis(300),
        }
    };
    let config = config();
    let mut rows = Vec::new();
    let wanted = |name: &str| filter.as_deref().map_or(true, |f| name.contains(f));
    // Measures `$f` as case `$name` unless the filter leaves it out.
    macro_rules! case {
        ($name:expr, $f:expr) => {
            if wanted($name) {
                let (median_ns, min_ns) = measure(&s, $f);
                rows.push(Row {
                    name: $name,
                    median_ns,
                    min_ns,
                });
            }
        };
    }

    // FHIR classification.
    case!("classify: GET /fhir/Patient/123", || fhir::classify(
        "GET",
        "/fhir/Patient/123",
        "/fhir"
    ));
    let search = "/fhir/Observation?patient=Patient/123&code=http://loinc.org|8867-4&_count=50&_sort=-date";
    case!("classify: search, 4 parameters", || fhir::classify(
        "GET", search, "/fhir"
    ));

    // Scope evaluation.
    let words: Vec<String> = [
        "launch/patient",
        "openid",
        "fhirUser",
        "patient/*.rs",
        "user/Observation.cruds",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();
    case!("scopes: GrantedScopes::parse, 5 words", || GrantedScopes::parse(
        &words
    ));
    // What the benchmark tokens carry: patient-level read and search only.
    let words: Vec<String> = ["launch/patient", "openid", "fhirUser", "patient/*.rs"]
        .iter()
        .map(|w| w.to_string())
        .collect();
    let granted = GrantedScopes::parse(&words);
    let claims = VerifiedClaims {
        issuer: ISS.into(),
        patient: Some("123".into()),
        scopes: words.clone(),
        expires_at: NOW + 300,
        ..Default::default()
    };
    let read = fhir::classify("GET", "/fhir/Patient/123", "/fhir").unwrap();
    assert!(authz::authorize(&read, false, &claims, &granted, &config).is_ok());
    case!("authorize: patient/*.rs reads Patient/123", || authz::authorize(
        &read, false, &claims, &granted, &config
    ));
    let unconstrained = fhir::classify("GET", "/fhir/Observation?code=8867-4", "/fhir").unwrap();
    let constrained = authz::authorize(&unconstrained, false, &claims, &granted, &config).unwrap();
    assert!(
        constrained.append_query.is_some(),
        "the search gets the patient constraint"
    );
    case!("authorize: patient search constrained", || authz::authorize(
        &unconstrained,
        false,
        &claims,
        &granted,
        &config
    ));

    // Signature and claims verification (pure Rust).
    let keys = vec![Some(KeySet::from_jwks(&test_support::default_jwks()).unwrap())];
    for (name, alg) in [
        ("token::verify RS256 (jwt-simple)", Algorithm::RS256),
        ("token::verify ES256 (jwt-simple)", Algorithm::ES256),
    ] {
        let t = token(alg, 0);
        assert!(token::verify(&t, &config, &keys, NOW, &JwtSimpleVerifier).is_ok());
        case!(name, || token::verify(
            &t,
            &config,
            &keys,
            NOW,
            &JwtSimpleVerifier
        ));
    }

    // The whole decision, with the verified-token cache answering.
    let mut engine = Engine::new(config.clone(), "bench").unwrap();
    // As the adapter does with `body_checks` (the default): searches are checked on the response.
    engine.set_body_checks(true);
    let mut store = MemoryStore::default();
    let headers = request_headers(&token(Algorithm::RS256, 0));
    let now_ms = NOW * 1000;
    let mut decide = |path: &str, engine: &mut Engine| {
        let facts = RequestFacts {
            method: "GET",
            path,
            headers: &headers,
        };
        engine.decide(&facts, now_ms, &mut store, &JwtSimpleVerifier, true)
    };
    assert!(matches!(
        decide("/fhir/Patient/123", &mut engine),
        Decision::Allow(_)
    ));
    assert_eq!(engine.cache().stats().misses, 1);
    case!("Engine::decide, cache hit, read", || decide(
        "/fhir/Patient/123",
        &mut engine
    ));
    let search = decide("/fhir/Observation?code=8867-4", &mut engine);
    assert!(
        matches!(&search, Decision::Allow(a) if a.new_path.is_some()),
        "the search is constrained: {search:?}"
    );
    case!("Engine::decide, cache hit, search constrained", || decide(
        "/fhir/Observation?code=8867-4",
        &mut engine
    ));
    assert!(
        engine.cache().stats().misses == 1,
        "every timed decision was a cache hit"
    );

    // The whole decision when the cache cannot answer: a token never seen on every call (8,192 in
    // rotation, twice the cache's entries), the signature arithmetic left out (it is the
    // token::verify rows above in pure Rust, or BoringSSL through Envoy's verify_signature).
    let header = base64url::encode(br#"{"alg":"ES256","typ":"JWT","kid":"ec-p256"}"#);
    let fresh: Vec<Vec<(String, String)>> = (0..8192u32)
        .map(|i| {
            // Distinct like real signatures (the cache hashes the token's tail).
            let mut sig = [7u8; 64];
            for (k, b) in i.to_le_bytes().iter().enumerate() {
                sig[60 + k] = *b;
                sig[k] = *b;
            }
            let signature = base64url::encode(&sig);
            let mut claims = good_claims();
            claims["scope"] = json!("launch/patient openid fhirUser patient/*.rs");
            claims["jti"] = json!(format!("jti-{i}"));
            let payload = base64url::encode(claims.to_string().as_bytes());
            request_headers(&format!("{header}.{payload}.{signature}"))
        })
        .collect();
    let mut miss_engine = Engine::new(config.clone(), "bench-miss").unwrap();
    let mut miss_store = MemoryStore::default();
    let mut next = 0;
    let mut decide_fresh = || {
        next = (next + 1) % fresh.len();
        let facts = RequestFacts {
            method: "GET",
            path: "/fhir/Patient/123",
            headers: &fresh[next],
        };
        miss_engine.decide(&facts, now_ms, &mut miss_store, &AcceptAnySignature, true)
    };
    assert!(matches!(decide_fresh(), Decision::Allow(_)));
    case!(
        "Engine::decide, cache miss, signature excluded",
        &mut decide_fresh
    );
    let stats = miss_engine.cache().stats();
    assert_eq!(stats.hits, 0, "every timed decision was a cache miss");

    if markdown {
        println!("| case | median ns/op | min ns/op |");
        println!("|---|---:|---:|");
        for r in &rows {
            println!("| {} | {:.0} | {:.0} |", r.name, r.median_ns, r.min_ns);
        }
    } else {
        for r in &rows {
            println!("{:<48} {:>12.0} ns/op (min {:.0})", r.name, r.median_ns, r.min_ns);
        }
    }
}
