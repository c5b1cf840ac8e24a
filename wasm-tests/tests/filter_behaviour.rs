//! The built filter's behaviour under the host emulator, with a controlled clock: the key lifecycle
//! (start-up fetch on the first tick, requests waiting for keys, refresh, backoff, the unknown-`kid`
//! refetch throttle, one fetch per Envoy through shared data), token expiry, failing closed when the
//! identity provider fails, the rewriting of error responses into OperationOutcomes, allowed and
//! denied FHIR requests end to end, both signature paths, bounded memory, and tokens never logged.
//!
//! Build the module first (`make build`). Every test has its own [`Host`]: they run in parallel.
//! The memory test verifies 100,000 distinct signatures and takes the longest.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smart_fhir_edge::denial::{TokenReason, KEYS_RETRY_AFTER_S};
use smart_fhir_edge::token::test_support::{self, Signer, AUD, ISS, NOW};
use smart_fhir_edge::token::Algorithm;
use wasm_tests::{Callout, Host, Outcome, Response, ResponseOrigin, Stream, Vm};

const CLUSTER: &str = "idp";
const JWKS_PATH: &str = "/jwks";
const TICK: Duration = Duration::from_millis(100);

// ---- configuration ----------------------------------------------------------------------------

/// A host set up like the filter's Envoy configurations: headers may be held while a body is read
/// (`allow_on_headers_stop_iteration: true`), which the patient searches' response checks need.
fn envoy_host() -> Host {
    Host::builder()
        .allow_on_headers_stop_iteration(true)
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An empty searchset: what a patient search's response check passes untouched.
const SEARCHSET: &[u8] = br#"{"resourceType":"Bundle","type":"searchset","total":0}"#;

/// One remote-JWKS provider; `remote` is merged into `remote_jwks`, `top` into the configuration.
fn config_with(remote: Value, top: Value) -> String {
    let mut jwks = json!({"uri": format!("https://idp.example.org{JWKS_PATH}"), "cluster": CLUSTER});
    merge(&mut jwks, remote);
    let mut config = json!({
        "fhir_base": "/fhir",
        "providers": [{"issuer": ISS, "audiences": [AUD], "remote_jwks": jwks}]
    });
    merge(&mut config, top);
    config.to_string()
}

fn config(remote: Value) -> String {
    config_with(remote, json!({}))
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

// ---- tokens -----------------------------------------------------------------------------------

fn claims_with(changes: Value) -> Value {
    let mut c = test_support::good_claims();
    merge(&mut c, changes);
    c
}

/// A valid ES256 token (key `ec-p256`) whose `jti` makes it distinct.
fn es256(jti: &str) -> String {
    test_support::mint(Algorithm::ES256, Signer::P256, &claims_with(json!({"jti": jti})))
}

/// A token signed by `signer` with `alg`, naming `kid` in its header.
fn with_kid(alg: Algorithm, signer: Signer, kid: &str, claims: &Value) -> String {
    let header = json!({"alg": alg.as_str(), "typ": "JWT", "kid": kid});
    test_support::mint_raw(alg, signer, &header.to_string(), &claims.to_string())
}

/// A JWKS holding the test keys of `signers` under their usual `kid`s.
fn jwks_of(signers: &[Signer]) -> Vec<u8> {
    let keys: Vec<Value> = signers
        .iter()
        .map(|s| test_support::jwk(*s, Some(s.kid()), None))
        .collect();
    test_support::jwks(&keys)
}

/// Neither the token nor its payload or signature segment appears in any log line or output.
#[track_caller]
fn assert_token_never_logged(host: &Host, token: &str) {
    host.assert_never_logged(token);
    for segment in token.split('.').skip(1).filter(|s| s.len() >= 16) {
        host.assert_never_logged(segment);
    }
}

// ---- requests ---------------------------------------------------------------------------------

fn get(vm: &Vm, path: &str, token: &str) -> Stream {
    vm.get(path, &[("authorization", &format!("Bearer {token}"))])
}

/// The default search the good claims allow (`patient/Observation.rs`, patient 123).
fn search(vm: &Vm, token: &str) -> Stream {
    get(vm, "/fhir/Observation?patient=123", token)
}

#[track_caller]
fn expect_allowed(vm: &Vm, token: &str) {
    let s = search(vm, token);
    match s.send_headers(true) {
        Outcome::Continued { .. } => {}
        other => panic!("expected the request to go upstream, got {other:#?}"),
    }
}

#[track_caller]
fn expect_refused(vm: &Vm, token: &str, status: u16) -> Response {
    let s = search(vm, token);
    match s.send_headers(true) {
        Outcome::LocalReply(r) => {
            assert_eq!(r.status, status, "{r:#?}");
            r
        }
        other => panic!("expected a local reply {status}, got {other:#?}"),
    }
}

// ---- the identity provider --------------------------------------------------------------------

/// Advances to the first tick and returns the start-up key fetch, checking where it goes.
#[track_caller]
fn first_fetch(host: &Host) -> Callout {
    host.advance(TICK);
    let fetch = host.callout();
    assert_eq!(
        (fetch.cluster.as_str(), fetch.method(), fetch.path()),
        (CLUSTER, "GET", JWKS_PATH)
    );
    fetch
}

fn answer(fetch: &Callout, jwks: &[u8]) {
    fetch.respond(200, &[("content-type", "application/json")], jwks);
}

/// Lets the first tick fetch the keys and answers with `jwks`.
#[track_caller]
fn serve(host: &Host, jwks: &[u8]) {
    answer(&first_fetch(host), jwks);
}

/// Steps the clock tick by tick until a callout is pending (at most `limit`); returns it.
#[track_caller]
fn next_callout_within(host: &Host, limit: Duration) -> Callout {
    let start = host.now_ns();
    loop {
        if let Some(c) = host.pending_callouts().into_iter().next() {
            return c;
        }
        assert!(
            host.now_ns() - start < limit.as_nanos() as u64,
            "no callout within {limit:?}"
        );
        host.advance(TICK);
    }
}

// ---- OperationOutcomes ------------------------------------------------------------------------

/// The response is a FHIR OperationOutcome with one issue; returns (issue code, diagnostics).
#[track_caller]
fn operation_outcome(r: &Response) -> (String, String) {
    let media_type = r.header("content-type").and_then(|c| c.split(';').next());
    assert_eq!(media_type, Some("application/fhir+json"), "{r:#?}");
    let body: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {r:#?}"));
    assert_eq!(body["resourceType"], "OperationOutcome", "{r:#?}");
    let issue = &body["issue"][0];
    assert_eq!(issue["severity"], "error", "{r:#?}");
    (
        issue["code"].as_str().unwrap_or_default().to_string(),
        issue["diagnostics"].as_str().unwrap_or_default().to_string(),
    )
}

#[track_caller]
fn assert_keys_unavailable(r: &Response) {
    assert_eq!(r.status, 503, "{r:#?}");
    assert_eq!(
        r.header("retry-after"),
        Some(KEYS_RETRY_AFTER_S.to_string().as_str()),
        "{r:#?}"
    );
    assert_eq!(operation_outcome(r).0, "transient");
}

#[track_caller]
fn assert_invalid_token(r: &Response, issue_code: &str, description: &str) {
    assert_eq!(r.status, 401, "{r:#?}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(r#"error="invalid_token""#),
        "{r:#?}"
    );
    assert!(challenge.contains(description), "{challenge}");
    assert_eq!(operation_outcome(r), (issue_code.into(), description.into()));
}

// ---- 1. start-up fetch ------------------------------------------------------------------------

#[test]
fn fetches_the_keys_once_on_the_first_tick_and_not_before() {
    let host = envoy_host();
    let vm = host.vm_with_config(config(json!({"timeout_ms": 1500}))).unwrap();
    assert!(host.pending_callouts().is_empty(), "configuring fetches nothing");
    assert_eq!(vm.tick_period(), Some(TICK));
    host.advance(TICK - Duration::from_millis(1));
    assert!(
        host.pending_callouts().is_empty(),
        "nothing is fetched before the first tick"
    );
    host.advance(Duration::from_millis(1));
    let fetch = host.callout();
    assert_eq!(fetch.vm, vm.index());
    assert_eq!(
        (
            fetch.cluster.as_str(),
            fetch.method(),
            fetch.path(),
            fetch.authority()
        ),
        (CLUSTER, "GET", JWKS_PATH, "idp.example.org")
    );
    assert_eq!(fetch.header("accept"), Some("application/json"));
    assert_eq!(fetch.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(fetch.dispatched_at_ns, host.now_ns());
    // While it is in flight, further ticks fetch nothing more.
    host.advance(Duration::from_millis(1400));
    assert_eq!(host.pending_callouts().len(), 1, "one fetch in flight");
    answer(&fetch, &test_support::default_jwks());
    assert_eq!(host.logs_containing("new key set in use").len(), 1);
    // Fresh keys: nothing is fetched again long before the refresh is due.
    host.advance(Duration::from_secs(60));
    assert!(host.pending_callouts().is_empty());
}

// ---- 2. requests waiting for keys -------------------------------------------------------------

#[test]
fn requests_arriving_before_the_keys_wait_and_continue_with_the_verified_facts() {
    let host = envoy_host();
    let vm = host.vm_with_config(config(json!({}))).unwrap();
    let tokens: Vec<String> = (0..3).map(|i| es256(&format!("early-{i}"))).collect();
    let streams: Vec<Stream> = tokens.iter().map(|t| search(&vm, t)).collect();
    for s in &streams {
        s.send_headers(true).expect_paused();
    }
    let fetch = first_fetch(&host);
    for s in &streams {
        assert!(
            s.outcome().is_paused(),
            "still waiting while the fetch is in flight"
        );
        assert_eq!(s.upstream_request().headers, None);
    }
    answer(&fetch, &test_support::default_jwks());
    for s in &streams {
        let forwarded = s.outcome().expect_continued().clone();
        let expected = [
            (":path", "/fhir/Observation?patient=123"),
            ("x-smart-patient", "123"),
            ("x-smart-scope", "launch/patient patient/Observation.rs"),
            ("x-smart-client-id", "app-1"),
            ("x-smart-sub", "user-1"),
            ("x-smart-fhir-user", "Practitioner/77"),
            ("x-smart-encounter", "enc-9"),
        ];
        for (name, value) in expected {
            assert_eq!(forwarded.get(name), Some(value), "{name}: {forwarded:#?}");
        }
        let response = s.respond(200, &[("content-type", "application/fhir+json")], SEARCHSET);
        assert_eq!(response.expect_responded().status, 200);
    }
    for t in &tokens {
        assert_token_never_logged(&host, t);
    }
}

#[test]
fn a_request_paused_past_its_wait_budget_gets_503_with_retry_after() {
    let timeout = Duration::from_millis(2000);
    let host = envoy_host();
    let vm = host.vm_with_config(config(json!({"timeout_ms": 2000}))).unwrap();
    let t = es256("late");
    let s = search(&vm, &t);
    s.send_headers(true).expect_paused();
    host.advance(timeout - TICK);
    assert!(s.outcome().is_paused(), "within its budget it waits");
    let fetch = host.callout();
    host.advance(TICK);
    // The budget (timeout_ms from the request's arrival) ran out before the fetch's own timeout.
    assert!(fetch.is_pending(), "the fetch is still in flight");
    let refused = s.outcome();
    assert_keys_unavailable(refused.expect_local_reply());
    assert_eq!(s.upstream_request().headers, None, "nothing went upstream");
    // The late answer still installs the keys: the next request passes.
    answer(&fetch, &test_support::default_jwks());
    expect_allowed(&vm, &t);
    assert_token_never_logged(&host, &t);
}

// ---- 3. refresh and backoff -------------------------------------------------------------------

#[test]
fn refreshes_the_keys_before_cache_duration_ends_and_drops_removed_keys() {
    let host = envoy_host();
    let vm = host
        .vm_with_config(config(json!({"cache_duration_s": 100})))
        .unwrap();
    serve(&host, &jwks_of(&[Signer::RsaA, Signer::P256]));
    host.advance_to_unix_secs(NOW + 79);
    host.advance(Duration::from_millis(999));
    assert!(host.pending_callouts().is_empty(), "no refresh before NOW + 80 s");
    let rsa = test_support::mint(Algorithm::RS256, Signer::RsaA, &test_support::good_claims());
    let ec = es256("refresh");
    expect_allowed(&vm, &rsa);
    expect_allowed(&vm, &ec);

    // Keys fetched at NOW are refreshed at 4/5 of cache_duration_s: NOW + 80 s, not earlier.
    // (Ticks fall every 100 ms from NOW: advancing to NOW + 80 s runs the tick due then.)
    host.advance_to_unix_secs(NOW + 80);
    let refresh = host.callout();
    assert_eq!(refresh.dispatched_at_ns, (NOW + 80) * 1_000_000_000);
    assert_eq!(refresh.path(), JWKS_PATH);
    // The rotated set no longer holds `rsa-a`.
    answer(&refresh, &jwks_of(&[Signer::P256]));
    assert_eq!(host.logs_containing("new key set in use").len(), 2);

    expect_allowed(&vm, &ec);
    expect_allowed(&vm, &es256("refresh-2"));
    // The token of the removed key (verified and cached before) now names an unknown key: one
    // refetch is made, then it is refused.
    let s = search(&vm, &rsa);
    s.send_headers(true).expect_paused();
    let refetch = next_callout_within(&host, Duration::from_secs(1));
    answer(&refetch, &jwks_of(&[Signer::P256]));
    assert_invalid_token(
        s.outcome().expect_local_reply(),
        "unknown",
        TokenReason::UnknownKey.describe().1,
    );
    // Until the next refresh (NOW + 160 s), nothing else is fetched.
    host.advance_to_unix_secs(NOW + 159);
    assert!(host.pending_callouts().is_empty());
    assert_token_never_logged(&host, &rsa);
    assert_token_never_logged(&host, &ec);
}

#[test]
fn backs_off_exponentially_after_failed_refreshes_while_the_last_good_keys_keep_serving() {
    let host = envoy_host();
    let vm = host
        .vm_with_config(config(json!({"cache_duration_s": 100, "timeout_ms": 1000})))
        .unwrap();
    serve(&host, &test_support::default_jwks());
    host.advance_to_unix_secs(NOW + 80);
    let mut fetch = host.callout();
    assert_eq!(fetch.dispatched_at_ns, (NOW + 80) * 1_000_000_000);
    // Every way a fetch fails counts, and the gaps double: 2, 4, 8, 16, 32 s.
    type Fail = fn(&Callout);
    let failures: [(&str, Fail); 5] = [
        ("reset", |c| c.fail()),
        ("timeout", |c| c.time_out()),
        ("HTTP 500", |c| {
            c.respond(500, &[("content-type", "text/plain")], b"oops")
        }),
        ("not a JWKS", |c| c.respond(200, &[], b"<html>")),
        ("reset again", |c| c.fail()),
    ];
    let mut gap_s = 2;
    for (n, (label, fail)) in failures.iter().enumerate() {
        fail(&fetch);
        let failed_at = host.now_ns();
        let token = es256(&format!("backoff-{n}"));
        expect_allowed(&vm, &token);
        assert_token_never_logged(&host, &token);
        host.advance(Duration::from_secs(gap_s) - TICK);
        assert!(
            host.pending_callouts().is_empty(),
            "after {label}: no retry before {gap_s} s"
        );
        expect_allowed(&vm, &es256(&format!("backoff-{n}-late")));
        host.advance(TICK);
        fetch = host.callout();
        assert_eq!(
            fetch.dispatched_at_ns - failed_at,
            gap_s * 1_000_000_000,
            "after {label}"
        );
        assert!(
            !host.logs_containing(&format!("retry in {gap_s} s")).is_empty(),
            "after {label}"
        );
        gap_s *= 2;
    }
    // A good answer ends the backoff: the next fetch is the regular refresh 80 s later.
    answer(&fetch, &jwks_of(&[Signer::P256]));
    let fetched_at = host.now_unix_secs();
    host.advance(Duration::from_secs(79));
    assert!(host.pending_callouts().is_empty());
    expect_allowed(&vm, &es256("recovered"));
    host.advance_to_unix_secs(fetched_at + 80);
    assert_eq!(host.callout().dispatched_at_ns, (fetched_at + 80) * 1_000_000_000);
}

// ---- 4. unknown kid ---------------------------------------------------------------------------

#[test]
fn a_new_kid_triggers_one_refetch_and_a_storm_of_unknown_kids_is_throttled() {
    let host = envoy_host();
    let vm = host
        .vm_with_config(config(json!({"min_refetch_interval_s": 30})))
        .unwrap();
    serve(&host, &jwks_of(&[Signer::RsaA]));

    // A token signed by a key the provider has just added: the request waits for one refetch.
    let rotated = es256("rotated");
    let s = search(&vm, &rotated);
    s.send_headers(true).expect_paused();
    let refetch = next_callout_within(&host, TICK);
    assert_eq!(refetch.path(), JWKS_PATH);
    answer(&refetch, &jwks_of(&[Signer::RsaA, Signer::P256]));
    assert_eq!(s.outcome().expect_continued().get("x-smart-patient"), Some("123"));

    // A storm of unknown kids within min_refetch_interval_s: refused at once, nothing fetched.
    let storm: Vec<String> = (0..50)
        .map(|i| {
            with_kid(
                Algorithm::ES384,
                Signer::P384,
                &format!("storm-{i}"),
                &test_support::good_claims(),
            )
        })
        .collect();
    for t in &storm {
        assert_invalid_token(
            &expect_refused(&vm, t, 401),
            "unknown",
            TokenReason::UnknownKey.describe().1,
        );
        host.advance(TICK);
    }
    host.advance(Duration::from_secs(5));
    assert!(host.pending_callouts().is_empty(), "the storm caused no callout");

    // Once min_refetch_interval_s has passed, an unknown kid may refetch again.
    host.advance_to_unix_secs(NOW + 30);
    let s = search(&vm, &storm[0]);
    s.send_headers(true).expect_paused();
    let refetch = next_callout_within(&host, TICK);
    answer(&refetch, &jwks_of(&[Signer::RsaA, Signer::P256]));
    assert_eq!(s.outcome().expect_local_reply().status, 401);
    for t in storm.iter().chain([&rotated]) {
        assert_token_never_logged(&host, t);
    }
}

// ---- 5. expiry --------------------------------------------------------------------------------

#[test]
fn refuses_a_token_once_exp_plus_clock_skew_has_passed_even_when_it_was_cached() {
    const SKEW: u64 = 30;
    // good_claims() expire at NOW + 300 s.
    let exp = NOW + 300;
    // Accepted at these times (seconds after NOW, in order), then refused at exp + skew. The
    // verified-token cache keeps an accepted token until `exp`: 299 s is served from it.
    let cases: [&[u64]; 4] = [&[0], &[0, 299], &[0, 299, 300, SKEW + 299], &[SKEW + 299]];
    for (n, accepted_at) in cases.iter().enumerate() {
        let host = envoy_host();
        let vm = host
            .vm_with_config(config_with(
                json!({"cache_duration_s": 3600}),
                json!({"clock_skew_s": SKEW}),
            ))
            .unwrap();
        serve(&host, &test_support::default_jwks());
        let t = es256(&format!("expiry-{n}"));
        for at in *accepted_at {
            if NOW + at > host.now_unix_secs() {
                host.advance_to_unix_secs(NOW + at);
            }
            expect_allowed(&vm, &t);
        }
        host.advance_to_unix_secs(exp + SKEW);
        assert!(host.pending_callouts().is_empty());
        let r = expect_refused(&vm, &t, 401);
        assert_invalid_token(&r, "expired", TokenReason::Expired.describe().1);
        // And it stays refused.
        host.advance(Duration::from_secs(1));
        expect_refused(&vm, &t, 401);
        assert_token_never_logged(&host, &t);
    }
}

// ---- 6. fail closed ---------------------------------------------------------------------------

#[test]
fn fails_closed_with_503_when_the_identity_provider_times_out_or_resets() {
    type Fail = fn(&Host, &Callout);
    let failures: [(&str, Fail); 4] = [
        ("timed out", |_, c| c.time_out()),
        ("reset", |_, c| c.fail()),
        ("HTTP 503", |_, c| {
            c.respond(503, &[("content-type", "text/plain")], b"unavailable")
        }),
        // Nobody answers: Envoy's own timeout (and the requests' wait budget) end it.
        ("never answered", |h, _| h.advance(Duration::from_millis(2100))),
    ];
    for (label, fail) in failures {
        let host = envoy_host();
        let vm = host.vm_with_config(config(json!({"timeout_ms": 2000}))).unwrap();
        let tokens: Vec<String> = (0..3).map(|i| es256(&format!("idp-down-{i}"))).collect();
        let waiting: Vec<Stream> = tokens.iter().map(|t| search(&vm, t)).collect();
        for s in &waiting {
            s.send_headers(true).expect_paused();
        }
        let fetch = first_fetch(&host);
        fail(&host, &fetch);
        for s in &waiting {
            let out = s.outcome();
            let r = out
                .response()
                .unwrap_or_else(|| panic!("{label}: a waiting request hangs: {out:#?}"));
            assert!(r.is_local_reply(), "{label}: {r:#?}");
            assert_keys_unavailable(r);
            assert_eq!(s.upstream_request().headers, None, "{label}");
        }
        // During the backoff, new requests are refused at once, not held.
        assert_keys_unavailable(&expect_refused(&vm, &tokens[0], 503));
        // After it, the fetch is retried; once it succeeds, requests pass.
        let retry = next_callout_within(&host, Duration::from_secs(3));
        answer(&retry, &test_support::default_jwks());
        expect_allowed(&vm, &tokens[0]);
        for t in &tokens {
            assert_token_never_logged(&host, t);
        }
    }
}

// ---- 7. one fetch per Envoy -------------------------------------------------------------------

#[test]
fn two_workers_fetch_once_and_the_second_adopts_the_keys_from_shared_data() {
    let host = envoy_host();
    let a = host.vm_with_config(config(json!({}))).unwrap();
    let b = host.vm_with_config(config(json!({}))).unwrap();
    let t = es256("two-workers");
    let on_b = search(&b, &t);
    on_b.send_headers(true).expect_paused();

    // Both workers tick; only one fetches.
    host.advance(TICK);
    let fetch = host.callout();
    assert_eq!(fetch.vm, a.index(), "the first worker to tick fetches");
    host.advance(Duration::from_secs(1));
    assert_eq!(host.pending_callouts().len(), 1, "the other worker does not");
    answer(&fetch, &test_support::default_jwks());
    expect_allowed(&a, &t);
    // Worker b adopts the shared key set on its next tick; its waiting request continues.
    assert!(on_b.outcome().is_paused(), "b has not ticked yet");
    host.advance(TICK);
    assert_eq!(
        on_b.outcome().expect_continued().get("x-smart-patient"),
        Some("123")
    );
    expect_allowed(&b, &es256("two-workers-2"));
    host.advance(Duration::from_secs(60));
    assert!(
        host.pending_callouts().is_empty(),
        "one fetch in total for the Envoy"
    );
    assert_eq!(host.logs_containing("new key set in use").len(), 1);
    assert_token_never_logged(&host, &t);
}

#[test]
fn a_new_kid_seen_by_two_workers_is_refetched_once_and_allowed_on_both() {
    let host = envoy_host();
    let a = host.vm_with_config(config(json!({}))).unwrap();
    let b = host.vm_with_config(config(json!({}))).unwrap();
    serve(&host, &jwks_of(&[Signer::RsaA]));
    host.advance(TICK); // b adopts the key set
                        // The provider rotated in `ec-p256`; the first requests with it reach both workers.
    let t = es256("rotated-on-two-workers");
    let on_a = search(&a, &t);
    on_a.send_headers(true).expect_paused();
    let on_b = search(&b, &t);
    let out = on_b.send_headers(true);
    assert!(
        out.is_paused(),
        "b waits for the refetch a has scheduled: {out:#?}"
    );
    let refetch = next_callout_within(&host, TICK);
    answer(&refetch, &jwks_of(&[Signer::RsaA, Signer::P256]));
    on_a.outcome().expect_continued();
    host.advance(TICK);
    on_b.outcome().expect_continued();
    host.advance(Duration::from_secs(5));
    assert!(host.pending_callouts().is_empty(), "one refetch for the Envoy");
}

#[test]
fn a_worker_does_not_fetch_while_another_workers_fetch_is_in_flight() {
    let host = envoy_host();
    let a = host
        .vm_with_config(config(json!({"cache_duration_s": 100})))
        .unwrap();
    let b = host
        .vm_with_config(config(json!({"cache_duration_s": 100})))
        .unwrap();
    serve(&host, &jwks_of(&[Signer::RsaA]));
    // Worker a refreshes at NOW + 80 s; while its callout is in flight, b meets a new kid.
    host.advance_to_unix_secs(NOW + 80);
    let refresh = host.callout();
    assert_eq!(refresh.vm, a.index());
    let t = es256("rotated-during-refresh");
    let on_b = search(&b, &t);
    on_b.send_headers(true).expect_paused();
    host.advance(TICK);
    assert_eq!(
        host.pending_callouts().len(),
        1,
        "b waits for a's fetch instead of fetching too: {:#?}",
        host.pending_callouts()
    );
    answer(&refresh, &jwks_of(&[Signer::RsaA, Signer::P256]));
    host.advance(TICK);
    on_b.outcome().expect_continued();
}

// ---- 8. error responses become OperationOutcomes ----------------------------------------------

#[test]
fn rewrites_upstream_errors_that_are_not_fhir_and_envoys_local_replies_into_operation_outcomes() {
    enum Answer {
        Upstream(u16, &'static str, &'static str),
        Envoy(u16, &'static str, &'static str),
    }
    // (answer, issue code, a diagnostics fragment)
    let cases = [
        (
            Answer::Upstream(500, "text/plain", "java.lang.NullPointerException at Internal"),
            "exception",
            "The FHIR server failed",
        ),
        (
            Answer::Upstream(502, "text/html", "<html>Bad gateway from 10.1.2.3</html>"),
            "transient",
            "The FHIR server failed",
        ),
        (
            Answer::Envoy(503, "no_healthy_upstream", "no healthy upstream"),
            "transient",
            "no healthy upstream",
        ),
        (
            Answer::Envoy(504, "upstream_response_timeout", "upstream request timeout"),
            "timeout",
            "did not answer in time",
        ),
    ];
    let host = envoy_host();
    let vm = host.vm_with_config(config(json!({}))).unwrap();
    serve(&host, &test_support::default_jwks());
    let t = es256("errors");
    for (answer, code, fragment) in cases {
        let answer_is_upstream = matches!(answer, Answer::Upstream(..));
        let s = search(&vm, &t);
        s.send_headers(true).expect_continued();
        let (out, status, original) = match answer {
            Answer::Upstream(status, content_type, body) => (
                s.respond(status, &[("content-type", content_type)], body.as_bytes()),
                status,
                body,
            ),
            Answer::Envoy(status, details, body) => {
                let out = s.envoy_local_reply(status, details, body.as_bytes());
                let r = out.expect_local_reply();
                assert_eq!(
                    r.origin,
                    ResponseOrigin::LocalReply {
                        details: details.into()
                    }
                );
                (out, status, body)
            }
        };
        let r = out.response().unwrap_or_else(|| panic!("{out:#?}"));
        assert_eq!(r.status, status, "the status is kept: {r:#?}");
        let (issue, diagnostics) = operation_outcome(r);
        assert_eq!(issue, code, "{r:#?}");
        assert!(diagnostics.contains(fragment), "{r:#?}");
        // An upstream's error text (stack traces, addresses) never reaches the client.
        let leaked = if answer_is_upstream {
            r.body_text().contains(original)
        } else {
            r.body_text() == original
        };
        assert!(!leaked, "the original body is dropped: {r:#?}");
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert!(r.complete);
    }

    // A FHIR server's own error (and any success, for a request whose response the edge does not
    // check) passes untouched.
    let t = test_support::mint(
        Algorithm::ES256,
        Signer::P256,
        &claims_with(json!({"jti": "errors-user", "scope": "user/Observation.rs"})),
    );
    let fhir_error = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"from the FHIR server"}]}"#;
    for (status, content_type, body) in [
        (404, "application/fhir+json", fhir_error),
        (422, "application/fhir+json; charset=utf-8", fhir_error),
        (200, "text/plain", "plain success"),
    ] {
        let s = search(&vm, &t);
        s.send_headers(true).expect_continued();
        let out = s.respond(status, &[("content-type", content_type)], body.as_bytes());
        let r = out.expect_responded();
        assert_eq!(
            (r.status, r.header("content-type"), r.body_text().as_str()),
            (status, Some(content_type), body)
        );
    }
    assert_token_never_logged(&host, &t);
}

// ---- 9. FHIR requests end to end --------------------------------------------------------------

#[test]
fn allows_a_patient_its_own_record_and_refuses_another_patients_and_a_missing_token() {
    let host = envoy_host();
    let vm = host.vm_with_config(config(json!({}))).unwrap();
    serve(&host, &test_support::default_jwks());
    let t = test_support::mint(
        Algorithm::ES256,
        Signer::P256,
        &claims_with(json!({"scope": "launch/patient patient/Patient.rs", "patient": "123"})),
    );
    let bearer = format!("Bearer {t}");

    // Its own Patient: forwarded with the verified patient; inbound x-smart-* are removed.
    let s = vm.get(
        "/fhir/Patient/123",
        &[
            ("authorization", &bearer),
            ("x-smart-patient", "999"),
            ("x-smart-scope", "system/*.*"),
            ("x-smart-injected", "1"),
        ],
    );
    let forwarded = s.send_headers(true).expect_continued().clone();
    assert_eq!(forwarded.get_all("x-smart-patient"), vec!["123"]);
    assert_eq!(
        forwarded.get_all("x-smart-scope"),
        vec!["launch/patient patient/Patient.rs"]
    );
    assert!(!forwarded.contains("x-smart-injected"), "{forwarded:#?}");
    assert_eq!(forwarded.get(":path"), Some("/fhir/Patient/123"));
    let body = br#"{"resourceType":"Patient","id":"123"}"#;
    let r = s.respond(200, &[("content-type", "application/fhir+json")], body);
    assert_eq!(r.expect_responded().body, body.to_vec());

    // Another patient's record: 403, never forwarded.
    let s = vm.get(
        "/fhir/Patient/456",
        &[("authorization", &bearer), ("x-smart-patient", "456")],
    );
    let out = s.send_headers(true);
    let r = out.expect_local_reply();
    assert_eq!(r.status, 403, "{r:#?}");
    assert_eq!(operation_outcome(r).0, "forbidden");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|w| w.contains(r#"error="insufficient_scope""#)));
    assert_eq!(s.upstream_request().headers, None);

    // No token: 401 with a bare Bearer challenge, never forwarded.
    let s = vm.get("/fhir/Patient/123", &[("x-smart-patient", "123")]);
    let out = s.send_headers(true);
    let r = out.expect_local_reply();
    assert_eq!(r.status, 401, "{r:#?}");
    assert_eq!(operation_outcome(r).0, "login");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="smart-fhir-edge""#)
    );
    assert_eq!(s.upstream_request().headers, None);
    assert_token_never_logged(&host, &t);
}

// ---- 10. both signature paths -----------------------------------------------------------------

#[test]
fn accepts_and_refuses_the_same_tokens_with_and_without_envoys_verify_signature() {
    let claims = test_support::good_claims();
    let mint = |alg, signer| test_support::mint(alg, signer, &claims);
    let good_rsa = mint(Algorithm::RS256, Signer::RsaA);
    let tampered = {
        let other = test_support::mint(
            Algorithm::ES256,
            Signer::P256,
            &claims_with(json!({"patient": "456"})),
        );
        let genuine = mint(Algorithm::ES256, Signer::P256);
        let (head, _) = other.rsplit_once('.').unwrap();
        let (_, sig) = genuine.rsplit_once('.').unwrap();
        format!("{head}.{sig}")
    };
    // (label, token, accepted)
    let tokens: Vec<(&str, String, bool)> = vec![
        ("RS256", good_rsa.clone(), true),
        ("RS384", mint(Algorithm::RS384, Signer::RsaA), true),
        ("PS256", mint(Algorithm::PS256, Signer::RsaA), true),
        ("ES256", mint(Algorithm::ES256, Signer::P256), true),
        ("ES384", mint(Algorithm::ES384, Signer::P384), true),
        ("EdDSA", mint(Algorithm::EdDSA, Signer::Ed25519), true),
        (
            "RS256 by another key",
            with_kid(Algorithm::RS256, Signer::RsaB, "rsa-a", &claims),
            false,
        ),
        ("ES256 over other claims", tampered, false),
        (
            "RS256 signature cut short",
            good_rsa[..good_rsa.len() - 8].to_string(),
            false,
        ),
        (
            "RS256 naming an EC key",
            with_kid(Algorithm::RS256, Signer::RsaA, "ec-p256", &claims),
            false,
        ),
    ];
    let mut verdicts = Vec::new();
    for envoy_verifier in [true, false] {
        let mut builder = Host::builder().allow_on_headers_stop_iteration(true);
        if !envoy_verifier {
            builder = builder.without_foreign_function("verify_signature");
        }
        let host = builder.build().unwrap();
        let vm = host.vm_with_config(config(json!({}))).unwrap();
        let expected_log = if envoy_verifier {
            "signatures by Envoy (BoringSSL)"
        } else {
            "signatures by pure Rust"
        };
        assert!(!host.logs_containing(expected_log).is_empty(), "{expected_log}");
        serve(&host, &test_support::default_jwks());
        let mut seen = Vec::new();
        for (label, token, accepted) in &tokens {
            let out = search(&vm, token).send_headers(true);
            let case = format!("{label}, Envoy verifier: {envoy_verifier}");
            if *accepted {
                assert!(out.is_continued(), "{case}: {out:#?}");
            } else {
                let r = out.response().unwrap_or_else(|| panic!("{case}: {out:#?}"));
                assert_eq!(r.status, 401, "{case}: {r:#?}");
            }
            seen.push((
                *label,
                out.status(),
                out.response()
                    .and_then(|r| r.header("www-authenticate").map(str::to_string)),
            ));
            assert_token_never_logged(&host, token);
        }
        verdicts.push(seen);
    }
    assert_eq!(verdicts[0], verdicts[1], "both paths decide alike");
}

// ---- 11. memory -------------------------------------------------------------------------------

#[test]
fn the_linear_memory_stays_bounded_over_100_000_distinct_tokens() {
    const TOTAL: usize = 100_000;
    const BATCH: usize = 5_000;
    const LIMIT: usize = 16 * 1024 * 1024;
    let started = Instant::now();
    // Tokens are minted on another thread while the VM works through the previous batch.
    let (tx, rx) = mpsc::sync_channel::<Vec<String>>(2);
    let minter = std::thread::spawn(move || {
        let mut claims = test_support::good_claims();
        for b in 0..TOTAL / BATCH {
            let batch = (0..BATCH)
                .map(|i| {
                    let n = b * BATCH + i;
                    claims["jti"] = json!(format!("mem-{n}"));
                    claims["sub"] = json!(format!("user-{n}"));
                    // Both signature paths: EdDSA is verified inside the module, ES256 by the
                    // host's verify_signature (its answer lands in the module's memory). EdDSA
                    // mints fastest, so it is most of them.
                    if !n.is_multiple_of(4) {
                        test_support::mint(Algorithm::EdDSA, Signer::Ed25519, &claims)
                    } else {
                        test_support::mint(Algorithm::ES256, Signer::P256, &claims)
                    }
                })
                .collect();
            if tx.send(batch).is_err() {
                return;
            }
        }
    });
    let host = envoy_host();
    let vm = host.vm_with_config(config(json!({}))).unwrap();
    serve(&host, &test_support::default_jwks());
    let start_size = vm.memory_size_bytes();
    let mut sizes = Vec::new();
    let mut done = 0;
    for batch in rx {
        for t in &batch {
            let s = search(&vm, t);
            s.send_headers(true).expect_continued();
            s.respond(200, &[("content-type", "application/fhir+json")], SEARCHSET)
                .expect_responded();
            s.finish();
        }
        done += batch.len();
        sizes.push((done, vm.memory_size_bytes()));
        // Spot-check the batch's last token for logs (each check scans every log line).
        if let Some(last) = batch.last() {
            assert_token_never_logged(&host, last);
        }
    }
    minter.join().unwrap();
    assert_eq!(done, TOTAL);
    assert_eq!(vm.live_streams(), 0);
    let at = |n: usize| sizes.iter().find(|(d, _)| *d == n).map(|(_, s)| *s).unwrap();
    let (half, end) = (at(TOTAL / 2), at(TOTAL));
    eprintln!(
        "linear memory: {start_size} B after start-up, {} B after {BATCH}, {half} B after {}, {end} B after {TOTAL} \
         requests ({:.1?})",
        at(BATCH),
        TOTAL / 2,
        started.elapsed()
    );
    assert!(end < LIMIT, "{end} B");
    assert!(
        end - half <= 64 * 1024,
        "the memory keeps growing: {half} B after {} requests, {end} B after {TOTAL}",
        TOTAL / 2
    );
}

// ---- 12. tokens never in logs -----------------------------------------------------------------

#[test]
fn no_token_appears_in_the_logs_whatever_the_outcome() {
    let host = envoy_host();
    let vm = host
        .vm_with_config(config(json!({"min_refetch_interval_s": 30})))
        .unwrap();
    let waiting = es256("logs-waiting");
    // Refused for lack of keys: the fetch fails.
    let s = search(&vm, &waiting);
    s.send_headers(true).expect_paused();
    first_fetch(&host).fail();
    assert_keys_unavailable(s.outcome().expect_local_reply());
    answer(
        &next_callout_within(&host, Duration::from_secs(3)),
        &jwks_of(&[Signer::RsaA, Signer::P256]),
    );
    let expired = test_support::mint(
        Algorithm::ES256,
        Signer::P256,
        &claims_with(json!({"exp": NOW - 3600, "iat": NOW - 7200, "nbf": NOW - 7200})),
    );
    let forbidden = test_support::mint(
        Algorithm::ES256,
        Signer::P256,
        &claims_with(json!({"scope": "patient/Patient.rs"})),
    );
    let wrong_audience = test_support::mint(
        Algorithm::ES256,
        Signer::P256,
        &claims_with(json!({"aud": "https://elsewhere.example"})),
    );
    let bad_signature = with_kid(
        Algorithm::RS256,
        Signer::RsaB,
        "rsa-a",
        &test_support::good_claims(),
    );
    let unknown_kid = with_kid(
        Algorithm::ES384,
        Signer::P384,
        "gone",
        &test_support::good_claims(),
    );
    let cases = [
        (&waiting, 200),
        (&expired, 401),
        (&forbidden, 403),
        (&wrong_audience, 401),
        (&bad_signature, 401),
        (&unknown_kid, 401),
    ];
    for (t, status) in cases {
        let s = search(&vm, t);
        let mut out = s.send_headers(true);
        if out.is_paused() {
            // The unknown kid waits for one refetch.
            answer(
                &next_callout_within(&host, TICK),
                &jwks_of(&[Signer::RsaA, Signer::P256]),
            );
            out = s.outcome();
        }
        let got = match &out {
            Outcome::Continued { .. } => s
                .respond(200, &[("content-type", "application/fhir+json")], SEARCHSET)
                .status(),
            other => other.status(),
        };
        assert_eq!(got, Some(status), "{out:#?}");
        s.finish();
    }
    assert!(!host.logs().is_empty(), "the filter did log");
    for (t, _) in cases {
        assert_token_never_logged(&host, t);
    }
}
