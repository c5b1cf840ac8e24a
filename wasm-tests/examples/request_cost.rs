//! What the filter does per request, counted deterministically in the host emulator: WebAssembly
//! fuel (about one unit per executed Wasm instruction) and host calls by name, per request kind and
//! per callback, next to the null filter (`envoy/bench/null-filter.wat`) as the floor. Unlike
//! wall-clock or CPU time, these numbers do not move with the machine's load. The host's own work
//! behind each call (Envoy's, or the emulator's `verify_signature` crypto) is not in the fuel: the
//! host-call counts are what to weigh it by.
//!
//! ```text
//! SMART_FHIR_EDGE_WASM=target/wasm32-wasip1/release/smart_fhir_edge.wasm \
//!     cargo run -q -p wasm-tests --example request_cost [-- <requests per kind>] [--trace]
//! ```
//!
//! `--trace` adds, for one more request of each kind, the fuel spent between consecutive host
//! calls (where the module's work lies).
//!
//! The module is configured like listener C of `envoy/bench/envoy.yaml` (inline JWKS with the test
//! keys `rsa-a` and `ec-p256` of `smart_fhir_edge::token::test_support`), and every request goes
//! through the whole stream lifecycle as in Envoy: context creation and request headers, the
//! upstream's 200 with a small JSON body (a Patient; a searchset Bundle for the search), response
//! headers then body, then log, done and delete.
//! Prints Markdown.

use std::collections::BTreeMap;

use serde_json::json;
use smart_fhir_edge::token::test_support::{mint, Signer, AUD, ISS};
use smart_fhir_edge::token::Algorithm;
use wasm_tests::{workspace_root, Host, Outcome, Vm};

/// Listener C's plugin configuration (`envoy/bench/envoy.yaml`), as it is there.
const LISTENER_C_CONFIGURATION: &str = r#"{"fhir_base":"/fhir","providers":[{"issuer":"https://idp.example.org","audiences":["https://ehr.example.org/fhir"],"local_jwks":{"keys":[{"alg":"RS256","e":"AQAB","kid":"rsa-a","kty":"RSA","n":"xOa5ZF66p2MigC44a8k6rLeKFAsu-fMoe3AfX3GbS8Pj7SDAGl842mVTPhrBcy0WvUM_4mzgfEXEq4Quqv5sNEzJd6zQu6_g6tLoDp1OUb5PzY8iaKDrrj7cN05WLaViW-MBCJMYJ_oiD1ECdLSJjkNL0pZeAeS_ixnSO55XcKlaBVBIWEXz2u89qaT3rRZABC23GlegIDg154XCH5SkHC2LraQA7mjFlwNoK36AwkIkldE79IBWR0LUY2bkS7b9DpwUaqPPdVxiUcOLw2hbggio5FFagRjGLIJTQX2HoiFvJhT84YaxmYQhKxxu1SlVgdf5VYOU3f75o23w1DKx-w"},{"alg":"ES256","crv":"P-256","kid":"ec-p256","kty":"EC","x":"AhfmF_C2RDkoJ4-WmZ5pojpPLBUr321s32bluAKC1O0","y":"GUp968uXcS0t2jyoWqh2Wlb0X8dYWZZS8ol8ZTBuV5Q"}]}}]}"#;

/// The upstream's answer to a read (listener `upstream` of the benchmark).
const UPSTREAM_BODY: &[u8] = br#"{"resourceType":"Patient","id":"123","active":true}"#;

/// The upstream's answer to a search: a small searchset in the patient's compartment.
const UPSTREAM_SEARCH_BODY: &[u8] = br#"{"resourceType":"Bundle","type":"searchset","total":1,"entry":[{"fullUrl":"http://fhir.example/fhir/Observation/o1","resource":{"resourceType":"Observation","id":"o1","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/123"}},"search":{"mode":"match"}}]}"#;

/// The callbacks of one request, in the order Envoy makes them.
const PHASES: [&str; 3] = [
    "request (create + request headers)",
    "response (headers + body)",
    "end (log + done + delete)",
];

/// Fuel and host calls of one phase.
#[derive(Default, Clone)]
struct Cost {
    fuel: u64,
    calls: BTreeMap<String, u64>,
}

impl Cost {
    fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }

    fn add(&mut self, other: &Cost) {
        self.fuel += other.fuel;
        for (k, v) in &other.calls {
            *self.calls.entry(k.clone()).or_insert(0) += v;
        }
    }
}

/// Reads the VM's counters; `since` gives the difference.
struct Meter<'a> {
    vm: &'a Vm,
    fuel: u64,
    calls: BTreeMap<String, u64>,
}

impl<'a> Meter<'a> {
    fn start(vm: &'a Vm) -> Meter<'a> {
        Meter {
            vm,
            fuel: vm.fuel_consumed(),
            calls: vm.host_calls(),
        }
    }

    /// The cost since the last reading, and a new reading.
    fn lap(&mut self) -> Cost {
        let fuel = self.vm.fuel_consumed();
        let calls = self.vm.host_calls();
        let mut diff = BTreeMap::new();
        for (k, v) in &calls {
            let before = self.calls.get(k).copied().unwrap_or(0);
            if *v > before {
                diff.insert(k.clone(), v - before);
            }
        }
        let cost = Cost {
            fuel: fuel - self.fuel,
            calls: diff,
        };
        self.fuel = fuel;
        self.calls = calls;
        cost
    }
}

/// One kind of request.
struct Kind {
    name: &'static str,
    path: &'static str,
    /// The `Authorization` header of request `i` (None: no token).
    token: Box<dyn Fn(usize) -> Option<String>>,
    /// Expected status (the upstream's 200 when allowed).
    status: u16,
    /// Requests sent before measuring (to fill the token cache).
    warm_up: usize,
}

/// A patient-launch access token like `examples/mint_tokens.rs` makes, distinct by `i`.
fn token(alg: Algorithm, now: u64, i: usize) -> String {
    let claims = json!({
        "iss": ISS,
        "aud": AUD,
        "sub": format!("bench-user-{i}"),
        "client_id": "bench-app",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 7200,
        "jti": format!("cost-{alg:?}-{i}"),
        "scope": "launch/patient openid fhirUser patient/*.rs",
        "patient": "123",
        "fhirUser": "Patient/123",
    });
    mint(alg, Signer::for_alg(alg), &claims)
}

/// Sends one request through its whole lifecycle; the cost of each phase.
fn one_request(vm: &Vm, path: &str, authorization: Option<&str>, expect: u16, i: usize) -> [Cost; 3] {
    let request_id = format!("00000000-0000-4000-8000-{i:012}");
    let mut headers = vec![
        (":authority", "127.0.0.1:10000"),
        (":path", path),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", request_id.as_str()),
    ];
    if let Some(a) = authorization {
        headers.push(("authorization", a));
    }
    let body = if path.contains('?') {
        UPSTREAM_SEARCH_BODY
    } else {
        UPSTREAM_BODY
    };
    let mut meter = Meter::start(vm);
    let s = vm.request(&headers);
    s.set_property("source.address", "127.0.0.1:51234");
    let first = s.send_headers(true);
    let request = meter.lap();
    let outcome = match first {
        Outcome::Continued { .. } => s.respond(
            200,
            &[
                ("content-type", "application/fhir+json"),
                ("content-length", &body.len().to_string()),
                ("date", "Thu, 26 Nov 2026 00:00:00 GMT"),
                ("server", "envoy"),
                ("x-envoy-upstream-service-time", "0"),
            ],
            body,
        ),
        other => other,
    };
    let response = meter.lap();
    let status = outcome.response().map(|r| r.status);
    assert_eq!(status, Some(expect), "{path}: {outcome:?}");
    s.finish();
    let end = meter.lap();
    [request, response, end]
}

/// Runs `n` requests of `kind` (after its warm-up); the mean cost of each phase.
fn measure(vm: &Vm, kind: &Kind, n: usize) -> [Cost; 3] {
    for i in 0..kind.warm_up {
        let t = (kind.token)(i);
        one_request(vm, kind.path, t.as_deref(), kind.status, i);
    }
    let mut sum: [Cost; 3] = Default::default();
    for i in kind.warm_up..kind.warm_up + n {
        let t = (kind.token)(i);
        let costs = one_request(vm, kind.path, t.as_deref(), kind.status, i);
        for (acc, c) in sum.iter_mut().zip(costs.iter()) {
            acc.add(c);
        }
    }
    let n = n as u64;
    sum.map(|c| Cost {
        fuel: c.fuel.div_ceil(n),
        calls: c.calls.into_iter().map(|(k, v)| (k, v.div_ceil(n))).collect(),
    })
}

/// `name×count` of the most frequent calls.
fn top(calls: &BTreeMap<String, u64>, limit: usize) -> String {
    let mut v: Vec<(&String, &u64)> = calls.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let shown: Vec<String> = v
        .iter()
        .take(limit)
        .map(|(k, c)| format!("{}×{c}", k.trim_start_matches("proxy_")))
        .collect();
    let rest: u64 = v.iter().skip(limit).map(|(_, c)| **c).sum();
    if rest > 0 {
        format!("{}, others×{rest}", shown.join(", "))
    } else if shown.is_empty() {
        "—".to_string()
    } else {
        shown.join(", ")
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let trace = args.iter().any(|a| a == "--trace");
    let n: usize = match args.iter().find(|a| !a.starts_with("--")) {
        Some(a) => a.parse()?,
        None => 20,
    };
    // Listener C: `allow_on_headers_stop_iteration: true` (responses are held for their check).
    let host = Host::builder().allow_on_headers_stop_iteration(true).build()?;
    let now = host.now_unix_secs();
    let vm = host.vm_with_config(LISTENER_C_CONFIGURATION)?;
    let same = token(Algorithm::RS256, now, 0);
    let kinds = vec![
        Kind {
            name: "same token (cache hit), GET /fhir/Patient/123",
            path: "/fhir/Patient/123",
            token: Box::new(move |_| Some(format!("Bearer {same}"))),
            status: 200,
            warm_up: 1,
        },
        Kind {
            name: "fresh RS256 token, GET /fhir/Patient/123",
            path: "/fhir/Patient/123",
            token: Box::new(move |i| Some(format!("Bearer {}", token(Algorithm::RS256, now, 1000 + i)))),
            status: 200,
            warm_up: 0,
        },
        Kind {
            name: "fresh ES256 token, GET /fhir/Patient/123",
            path: "/fhir/Patient/123",
            token: Box::new(move |i| Some(format!("Bearer {}", token(Algorithm::ES256, now, 2000 + i)))),
            status: 200,
            warm_up: 0,
        },
        Kind {
            name: "same token (cache hit), GET /fhir/Observation?code=x",
            path: "/fhir/Observation?code=x",
            token: Box::new(move |_| Some(format!("Bearer {}", token(Algorithm::RS256, now, 0)))),
            status: 200,
            warm_up: 1,
        },
        Kind {
            name: "no token (401), GET /fhir/Patient/123",
            path: "/fhir/Patient/123",
            token: Box::new(|_| None),
            status: 401,
            warm_up: 1,
        },
    ];
    // Warm the VM (first-request allocations) with a request of its own.
    one_request(&vm, "/fhir/Patient/123", None, 401, 999_999);

    let mut rows = Vec::new();
    for kind in &kinds {
        rows.push((kind.name.to_string(), measure(&vm, kind, n)));
    }
    // The floor (a module that does nothing), and the host calls of the filter's cache hit without
    // its computation (envoy/bench/host-calls.wat).
    for (name, file) in [
        ("null filter", "envoy/bench/null-filter.wat"),
        ("request headers read only", "envoy/bench/read-headers.wat"),
        ("host calls of a cache hit only", "envoy/bench/host-calls.wat"),
    ] {
        let text = std::fs::read_to_string(workspace_root().join(file))?;
        let wat_host = Host::builder()
            .wat(&text)
            .allow_on_headers_stop_iteration(true)
            .build()?;
        let wat_vm = wat_host.vm_with_config("")?;
        let kind = Kind {
            name: "",
            path: "/fhir/Patient/123",
            token: Box::new(|_| Some("Bearer x".to_string())),
            status: 200,
            warm_up: 1,
        };
        rows.push((
            format!("{name} ({file}), GET /fhir/Patient/123"),
            measure(&wat_vm, &kind, n),
        ));
    }

    println!(
        "## Per-request cost in the host emulator (module {})\n",
        host.module_origin()
    );
    println!(
        "Mean of {n} requests per kind, deterministic. Fuel ≈ executed Wasm instructions; host calls \
         by import name. Phases: request = context create + request headers; response = response \
         headers + body (or the local reply's, for a refusal); end = log + done + delete.\n"
    );
    println!(
        "| request | fuel/req | fuel: request | response | end | host calls/req | request | response | end | top host calls |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, phases) in &rows {
        let mut total = Cost::default();
        for p in phases {
            total.add(p);
        }
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            thousands(total.fuel),
            thousands(phases[0].fuel),
            thousands(phases[1].fuel),
            thousands(phases[2].fuel),
            total.total_calls(),
            phases[0].total_calls(),
            phases[1].total_calls(),
            phases[2].total_calls(),
            top(&total.calls, 4),
        );
    }
    println!("\n### Host calls per request, by callback\n");
    println!("| request | {} | {} | {} |", PHASES[0], PHASES[1], PHASES[2]);
    println!("|---|---|---|---|");
    for (name, phases) in &rows {
        println!(
            "| {name} | {} | {} | {} |",
            top(&phases[0].calls, 99),
            top(&phases[1].calls, 99),
            top(&phases[2].calls, 99)
        );
    }
    if trace {
        println!("\n### Fuel between host calls, one more request of each kind\n");
        println!("Each event with the fuel the module spent since the previous one (`>`/`<`: a callback starts/returns).\n");
        for kind in &kinds {
            vm.start_fuel_trace();
            let i = kind.warm_up + n;
            let t = (kind.token)(i);
            one_request(&vm, kind.path, t.as_deref(), kind.status, i);
            let events: Vec<String> = vm
                .take_fuel_trace()
                .into_iter()
                .map(|(event, fuel)| format!("{event} {fuel}"))
                .collect();
            println!("* {}: {}", kind.name, events.join(" · "));
        }
    }
    Ok(())
}
