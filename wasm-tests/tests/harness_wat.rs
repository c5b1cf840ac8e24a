//! Self-tests of the host emulator with small WAT modules: each test names an Envoy behaviour the
//! harness must reproduce.

use std::time::Duration;

use wasm_tests::{
    HarnessError, Host, LogLevel, Outcome, RefusalReason, ResponseOrigin, TrapPolicy, CANARY_VM_INDEX_BASE,
    DEFAULT_EPOCH_SECS,
};

const HTTP: &str = include_str!("wat/http.wat");
const CLOCK: &str = include_str!("wat/clock.wat");
const CAS: &str = include_str!("wat/cas.wat");
const TRAP: &str = include_str!("wat/trap.wat");

fn http_vm() -> (Host, wasm_tests::Vm) {
    let host = Host::from_wat(HTTP);
    let vm = host.vm();
    (host, vm)
}

fn request(vm: &wasm_tests::Vm, action: Option<&str>) -> wasm_tests::Stream {
    let mut headers = vec![
        (":method", "GET"),
        (":path", "/fhir/Patient/1"),
        (":authority", "fhir.example"),
    ];
    if let Some(a) = action {
        headers.push(("x-action", a));
    }
    vm.request(&headers)
}

#[test]
fn a_continued_request_reaches_upstream_with_the_filters_changes_and_the_response_is_stamped() {
    let (_host, vm) = http_vm();
    let s = request(&vm, None);
    let forwarded = s.send_headers(true);
    assert_eq!(forwarded.expect_continued().get("x-seen"), Some("1"));
    assert!(s.upstream_request().complete);
    let out = s.respond(200, &[("content-type", "application/fhir+json")], b"{}");
    let r = out.expect_responded();
    assert_eq!(
        (r.status, r.header("x-stamp"), r.body.as_slice()),
        (200, Some("1"), &b"{}"[..])
    );
    assert!(r.complete);
}

#[test]
fn a_local_reply_passes_through_the_filters_own_response_callbacks_like_in_envoy() {
    let (_host, vm) = http_vm();
    let s = request(&vm, Some("reply"));
    let out = s.send_headers(true);
    let r = out.expect_local_reply();
    assert_eq!(r.status, 403);
    assert_eq!(r.body_text(), "denied");
    assert_eq!(r.header("x-why"), Some("test"));
    assert_eq!(
        r.header("content-type"),
        Some("text/plain"),
        "Envoy's default for a local reply body"
    );
    assert_eq!(r.header("content-length"), Some("6"));
    assert_eq!(
        r.header("x-stamp"),
        Some("1"),
        "on_response_headers ran on the local reply"
    );
    assert_eq!(
        r.origin,
        ResponseOrigin::LocalReply {
            details: String::new()
        }
    );
    assert_eq!(s.upstream_request().headers, None, "nothing went upstream");
}

#[test]
fn a_paused_request_stays_paused_and_ending_the_stream_runs_on_log() {
    let (host, vm) = http_vm();
    let s = request(&vm, Some("pause"));
    s.send_headers(true).expect_paused();
    assert!(s.outcome().is_paused());
    assert_eq!(vm.live_streams(), 1);
    s.finish();
    assert_eq!(host.logs_containing("on_log").len(), 1);
    assert_eq!(vm.live_streams(), 0);
}

#[test]
fn answered_callouts_resume_or_reply_per_the_modules_decision() {
    // (how the callout ends, expected outcome status: None = continued upstream)
    type End = fn(&wasm_tests::Callout);
    let table: [(&str, End, Option<u16>); 4] = [
        ("2xx", |c| c.respond(200, &[], b"{\"keys\":[]}"), None),
        ("5xx", |c| c.respond(500, &[], b""), Some(502)),
        ("timeout gives a 504 with a body", |c| c.time_out(), Some(502)),
        ("reset gives no :status at all", |c| c.fail(), Some(503)),
    ];
    for (name, end, expected) in table {
        let (host, vm) = http_vm();
        let s = request(&vm, Some("dispatch"));
        s.send_headers(true).expect_paused();
        let callout = host.callout();
        assert_eq!(
            (
                callout.cluster.as_str(),
                callout.path(),
                callout.method(),
                callout.timeout
            ),
            ("idp", "/jwks", "GET", Some(Duration::from_secs(5))),
            "{name}"
        );
        end(&callout);
        assert!(host.pending_callouts().is_empty(), "{name}");
        let out = s.outcome();
        match expected {
            None => assert_eq!(
                out.expect_continued().get(":path"),
                Some("/fhir/Patient/1"),
                "{name}"
            ),
            Some(status) => {
                let r = out.expect_local_reply();
                assert_eq!(r.status, status, "{name}");
                assert_eq!(r.header("x-stamp"), Some("1"), "{name}");
                assert!(
                    !r.headers.contains("content-type"),
                    "{name}: empty local reply body has no content-type"
                );
            }
        }
    }
}

#[test]
fn advancing_the_clock_past_a_callout_timeout_delivers_envoys_504() {
    let (host, vm) = http_vm();
    let s = request(&vm, Some("dispatch"));
    s.send_headers(true).expect_paused();
    host.advance(Duration::from_millis(4999));
    assert!(s.outcome().is_paused(), "not yet timed out");
    host.advance(Duration::from_millis(1));
    assert_eq!(
        s.outcome().status(),
        Some(502),
        "the module saw a non-2xx :status (504)"
    );
    assert!(host.pending_callouts().is_empty());
}

#[test]
fn refused_configuration_is_reported_with_the_modules_log_and_envoys_canary_runs_first() {
    let host = Host::from_wat(HTTP);
    let err = host.vm_with_config("bad").err().expect("configuration refused");
    assert_eq!(err.reason, RefusalReason::ConfigureReturnedFalse);
    assert!(err.logged("invalid configuration: field `bad`"), "{err}");
    assert!(
        err.vm >= CANARY_VM_INDEX_BASE,
        "the canary refused it before any worker started"
    );
    assert!(host.vms().is_empty());
    let entry = &err.logs[0];
    assert_eq!(entry.level, LogLevel::Error);
    // A good configuration starts a worker (after its canary).
    assert!(host.vm_with_config("good").is_ok());
    assert_eq!(host.vms().len(), 1);
}

#[test]
fn without_the_canary_the_worker_itself_refuses() {
    let host = Host::builder().wat(HTTP).without_config_canary().build().unwrap();
    let err = host.vm_with_config("bad").err().expect("refused");
    assert_eq!(err.vm, 0);
}

#[test]
fn the_test_clock_drives_proxy_time_wasi_realtime_and_wasi_monotonic() {
    let host = Host::from_wat(CLOCK);
    let vm = host.vm();
    assert_eq!(vm.tick_period(), Some(Duration::from_secs(1)));
    assert!(
        host.shared_data("now").is_none(),
        "no tick before the period elapses"
    );
    let read = || {
        let (v, _) = host.shared_data("now").expect("a tick wrote the time");
        let word = |i: usize| u64::from_le_bytes(v[i * 8..i * 8 + 8].try_into().unwrap());
        (word(0), word(1), word(2))
    };
    host.advance(Duration::from_millis(1500));
    let (proxy, realtime, mono1) = read();
    let start = DEFAULT_EPOCH_SECS * 1_000_000_000;
    assert_eq!(
        proxy,
        start + 1_000_000_000,
        "the tick ran at its due time, not at the end of advance"
    );
    assert_eq!(realtime, proxy);
    host.advance(Duration::from_secs(2));
    let (proxy2, _, mono2) = read();
    assert_eq!(proxy2, start + 3_000_000_000, "ticks at +1 s, +2 s, +3 s");
    assert_eq!(mono2 - mono1, 2_000_000_000);
    assert_eq!(host.now_unix_secs(), DEFAULT_EPOCH_SECS + 3);
}

#[test]
fn shared_data_compare_and_swap_is_shared_by_every_vm_of_a_host() {
    let host = Host::builder().wat(CAS).build().unwrap();
    let (a, b) = (host.vm(), host.vm());
    host.set_shared_data("k", b"init");
    let (_, initial_cas) = host.shared_data("k").unwrap();
    a.tick(); // a reads CAS
    b.tick(); // b reads the same CAS
    a.tick(); // a writes: ok, CAS changes
    b.tick(); // b writes with the stale CAS: mismatch
    assert_eq!(
        a.logs().iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        vec!["cas-ok"]
    );
    assert_eq!(
        b.logs().iter().map(|l| l.message.as_str()).collect::<Vec<_>>(),
        vec!["cas-mismatch"]
    );
    let (value, cas) = host.shared_data("k").unwrap();
    assert_eq!(value, b"v");
    assert!(cas > initial_cas);
    // Another Host shares nothing.
    let other = Host::builder().wat(CAS).build().unwrap();
    assert!(other.shared_data("k").is_none());
}

#[test]
fn a_module_importing_what_envoy_does_not_provide_fails_naming_the_import() {
    let wat = r#"(module
        (import "env" "proxy_made_up" (func))
        (import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))
        (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1))"#;
    match Host::builder().wat(wat).build() {
        Err(HarnessError::MissingImports(names)) => assert_eq!(
            names,
            vec![
                "env.proxy_made_up".to_string(),
                "wasi_snapshot_preview1.sock_accept".to_string()
            ]
        ),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a module with unknown imports was accepted"),
    }
}

#[test]
fn a_missing_module_tells_to_build_it_first() {
    let err = Host::builder()
        .module_file("/nonexistent/smart_fhir_edge.wasm")
        .build()
        .err()
        .expect("missing");
    assert!(err.to_string().contains("build it first: make build"), "{err}");
}

#[test]
fn under_envoy_trap_semantics_a_trap_fails_the_stream_with_503_and_the_vm_stays_failed() {
    let host = Host::builder()
        .wat(TRAP)
        .trap_policy(TrapPolicy::Envoy)
        .build()
        .unwrap();
    let vm = host.vm();
    let first = vm.request(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
    let r = first.send_headers(true).expect_local_reply().clone();
    assert_eq!((r.status, r.origin.clone()), (503, ResponseOrigin::WasmFailure));
    assert!(vm.is_failed());
    assert!(host.stderr().contains("panicked at adapter: boom"));
    let second = vm.request(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
    assert_eq!(
        second.send_headers(true).status(),
        Some(503),
        "fail closed without running the module"
    );
}

#[test]
fn by_default_a_trap_fails_the_test_with_the_modules_stderr() {
    let host = Host::from_wat(TRAP);
    let vm = host.vm();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let s = vm.request(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
        s.send_headers(true)
    }));
    let message = match outcome {
        Ok(o) => panic!("no panic: {o:?}"),
        Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
    };
    assert!(
        message.contains("wasm trap in proxy_on_request_headers"),
        "{message}"
    );
    assert!(message.contains("panicked at adapter: boom"), "{message}");
}

#[test]
fn outcome_before_sending_anything_is_not_started() {
    let (_host, vm) = http_vm();
    let s = request(&vm, None);
    assert_eq!(s.outcome(), Outcome::NotStarted);
}

const METRICS: &str = include_str!("wat/metrics.wat");
const PROPERTIES: &str = include_str!("wat/properties.wat");

fn statuses(vm: &wasm_tests::Vm) -> String {
    vm.logs().iter().map(|l| l.message.as_str()).collect()
}

#[test]
fn metrics_follow_envoys_rules_and_are_shared_by_name_across_vms() {
    let host = Host::from_wat(METRICS);
    let a = host.vm();
    a.tick();
    // define kind 3: BadArgument; then per tick: counter +1 ok, counter +0 BadArgument, gauge +5 ok,
    // gauge -2 ok, histogram record ok, histogram increment BadArgument, histogram get BadArgument,
    // counter get ok, unknown id NotFound.
    assert_eq!(statuses(&a), "2020002201");
    assert_eq!(host.metric("requests"), Some(1));
    assert_eq!(host.metric("inflight"), Some(3));
    assert_eq!(host.histogram("latency"), Some(vec![7]));
    assert_eq!(host.metric("absent"), None);
    let b = host.vm();
    b.tick();
    assert_eq!(
        host.metric("requests"),
        Some(2),
        "one stat per name, whichever VM defined it"
    );
    assert_eq!(host.histogram("latency"), Some(vec![7, 7]));
}

#[test]
fn properties_come_from_the_stream_the_host_and_the_module_like_envoy() {
    let host = Host::from_wat(PROPERTIES);
    let vm = host
        .start_vm(wasm_tests::VmConfig {
            root_id: "edge".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(statuses(&vm), "1", "set_property on the root context: NotFound");
    let s = vm.request(&[
        (":method", "POST"),
        (":path", "/fhir/Patient/_search"),
        (":authority", "a"),
    ]);
    s.set_property("source.address", "10.1.2.3:5555");
    let out = s.send_headers(false);
    let forwarded = out.expect_continued();
    assert_eq!(forwarded.get("x-source"), Some("10.1.2.3:5555"));
    assert_eq!(
        forwarded.get("x-flag"),
        Some("on"),
        "a one-segment module property reads back"
    );
    assert_eq!(forwarded.get("x-root"), Some("edge"));
    // set flag ok, set a.b ok, get a.b NotFound (Envoy looks up the first segment only), get nope NotFound.
    assert_eq!(statuses(&vm), "10011");
    // A host-wide property is visible too.
    host.set_property("source.address", "192.0.2.1:1");
    let s2 = vm.request(&[(":method", "GET"), (":path", "/"), (":authority", "a")]);
    assert_eq!(
        s2.send_headers(true).expect_continued().get("x-source"),
        Some("192.0.2.1:1")
    );
}

#[test]
fn a_buffered_request_body_is_held_until_the_filter_continues_and_then_goes_upstream_as_modified() {
    let host = Host::from_wat(PROPERTIES);
    let vm = host.vm();
    let s = vm.request(&[
        (":method", "POST"),
        (":path", "/fhir/Patient/_search"),
        (":authority", "a"),
    ]);
    assert!(s.send_headers(false).is_continued());
    assert!(
        s.send_body(b"abc", false).is_paused(),
        "StopIterationAndBuffer holds the chunk"
    );
    assert_eq!(s.upstream_request().body, b"");
    let out = s.send_body(b"def", true);
    assert!(out.is_continued(), "{out:?}");
    let up = s.upstream_request();
    assert_eq!((up.body.as_slice(), up.complete), (&b"replaced"[..], true));
}

#[test]
fn request_headers_are_unreadable_in_response_callbacks_after_continue_but_readable_in_on_log() {
    let (_host, vm) = http_vm();
    let s = request(&vm, None);
    s.send_headers(true).expect_continued();
    s.respond(200, &[], b"").expect_responded();
    s.finish();
    // on_response_headers: BadArgument (Envoy nulled the request header map on Continue);
    // on_log: Ok (the access-log view of the request headers).
    assert_eq!(statuses(&vm), "20on_log");
}

#[test]
fn a_local_reply_from_the_response_path_replaces_the_upstream_response_without_rerunning_the_filter() {
    let (_host, vm) = http_vm();
    let s = request(&vm, None);
    s.send_headers(true).expect_continued();
    let out = s.respond(500, &[("x-replace", "1")], b"upstream error");
    let r = out.expect_local_reply();
    assert_eq!((r.status, r.body_text().as_str()), (418, "teapot"));
    assert_eq!(
        r.header("x-stamp"),
        None,
        "Envoy sends it directly, the filter does not see it"
    );
    assert_eq!(r.header("x-replace"), None);
    assert!(r.complete);
}

/// One request through its whole lifecycle: fuel spent, host calls made (by name), fuel trace.
fn metered_request(
    vm: &wasm_tests::Vm,
) -> (u64, std::collections::BTreeMap<String, u64>, Vec<(String, u64)>) {
    let (fuel, calls) = (vm.fuel_consumed(), vm.host_calls());
    vm.start_fuel_trace();
    let s = request(vm, None);
    s.send_headers(true).expect_continued();
    s.respond(200, &[("content-type", "application/fhir+json")], b"{}");
    s.finish();
    let trace = vm.take_fuel_trace();
    let mut made = vm.host_calls();
    for (name, n) in &calls {
        if let Some(after) = made.get_mut(name) {
            *after -= n;
        }
    }
    made.retain(|_, n| *n > 0);
    (vm.fuel_consumed() - fuel, made, trace)
}

#[test]
fn fuel_and_host_calls_are_counted_per_vm_deterministically_and_the_trace_accounts_for_every_unit() {
    let (_host, vm) = http_vm();
    let (_other_host, other) = http_vm();
    metered_request(&vm);
    let idle = (other.fuel_consumed(), other.host_calls());
    let (fuel_a, calls_a, trace) = metered_request(&vm);
    let (fuel_b, calls_b, _) = metered_request(&vm);
    assert!(fuel_a > 0, "the module ran");
    assert_eq!(
        (fuel_a, &calls_a),
        (fuel_b, &calls_b),
        "the same request costs the same"
    );
    assert!(
        calls_a.contains_key("proxy_replace_header_map_value")
            || calls_a.contains_key("proxy_add_header_map_value"),
        "the filter's header changes are counted: {calls_a:?}"
    );
    assert_eq!(
        (other.fuel_consumed(), other.host_calls()),
        idle,
        "another VM's counters did not move"
    );
    assert_eq!(trace.iter().map(|(_, f)| f).sum::<u64>(), fuel_a, "{trace:?}");
    assert_eq!(
        trace.first().map(|(e, _)| e.as_str()),
        Some("> proxy_on_context_create")
    );
    assert!(trace.iter().any(|(e, _)| e == "< proxy_on_request_headers"));
    let mut traced = std::collections::BTreeMap::new();
    for (e, _) in trace.iter().filter(|(e, _)| !e.starts_with(['>', '<'])) {
        *traced.entry(e.clone()).or_insert(0u64) += 1;
    }
    assert_eq!(traced, calls_a, "the trace names every host call");
    assert!(vm.take_fuel_trace().is_empty(), "taking the trace stops it");
}
