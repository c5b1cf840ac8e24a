//! The root context of a VM: configuration, key fetching on ticks, requests waiting for keys or for
//! their token's introspection (one callout per token, its answer resuming every request that
//! waits for it), the revocation-list refresh, the AuditEvent batches, and the VM's metrics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, MetricType};

use super::host::{self, HostMetrics, HostSharedData};
use super::http::{Attempt, Stream, StreamState};
use crate::audit_event::{refused_entries, AuditQueue, SendResult};
use crate::config::Config;
use crate::decision::Engine;
use crate::introspection::{Introspected, IntrospectionRequest, Settled, TokenKey, MAX_ANSWER_BYTES};
use crate::jwks::cache::{FetchAnswer, FetchOutcome, FetchRequest, MAX_DOCUMENT_BYTES};
use crate::metrics::{self, Metrics};
use crate::revocation::{RefreshOutcome, RefreshRequest, MAX_LIST_BYTES};

/// Largest batch-response read to count refused entries (bytes).
const MAX_BATCH_RESPONSE_BYTES: usize = 1024 * 1024;

/// Tick period: how often keys are polled and waiting requests are looked at.
const TICK: Duration = Duration::from_millis(100);

/// The size of this VM's linear memory, in bytes.
fn linear_memory_bytes() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        (core::arch::wasm32::memory_size(0) as u64).saturating_mul(64 * 1024)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

/// A request paused until its provider's keys arrive.
pub struct Waiter {
    pub context_id: u32,
    pub stream: Weak<RefCell<StreamState>>,
    pub provider: usize,
    pub generation: u64,
    pub deadline_ms: u64,
}

/// A request paused until its token's introspection settles.
pub struct IntrospectionWaiter {
    pub context_id: u32,
    pub stream: Weak<RefCell<StreamState>>,
    pub key: TokenKey,
    pub deadline_ms: u64,
    /// Its callout was cancelled: decide afresh on the next tick.
    pub retry: bool,
}

/// What a callout was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Callout {
    /// The introspection of a token (by its SHA-256).
    Introspection(TokenKey),
    /// A key-set or discovery fetch of a provider (index).
    Keys(usize),
    /// The revocation-list refresh.
    Revocation,
    /// A Bundle of AuditEvents.
    AuditEvents,
}

/// State shared by the root context and the streams of one VM.
pub struct Vm {
    pub engine: Engine,
    pub waiters: Vec<Waiter>,
    /// Requests waiting for introspections (several per token when they share one callout).
    pub introspection_waiters: Vec<IntrospectionWaiter>,
    /// Callout token -> what it is for.
    pub callouts: HashMap<u32, Callout>,
    /// Whether Envoy's `verify_signature` foreign function is available.
    pub host_verifier: bool,
    pub metrics: Metrics,
    /// AuditEvents waiting to be sent, when an `audit_event` sink is configured.
    pub audit_queue: Option<AuditQueue>,
    /// Second at which the key-age gauges were last set.
    last_gauge_s: u64,
}

pub type SharedVm = Rc<RefCell<Vm>>;

pub struct Root {
    context_id: u32,
    vm: Option<SharedVm>,
    memory_gauge: Option<u32>,
}

impl Root {
    /// Sends the VM's request counters not yet handed to Envoy (they go out on each tick).
    fn flush_metrics(&self) {
        if let Some(vm) = &self.vm {
            if let Ok(mut v) = vm.try_borrow_mut() {
                v.metrics.flush(&mut HostMetrics);
            }
        }
    }

    pub fn new(context_id: u32) -> Root {
        Root {
            context_id,
            vm: None,
            memory_gauge: None,
        }
    }

    /// Raises the memory gauge to this VM's linear memory size.
    fn record_memory(&self) {
        let Some(id) = self.memory_gauge else { return };
        let mine = linear_memory_bytes();
        if hostcalls::get_metric(id).is_ok_and(|current| current < mine) {
            let _ = hostcalls::record_metric(id, mine);
        }
    }

    fn dispatch(vm: &mut Vm, fetch: &FetchRequest) {
        let headers = vec![
            (":method", "GET"),
            (":path", fetch.path.as_str()),
            (":authority", fetch.authority.as_str()),
            ("accept", "application/json"),
        ];
        match host::dispatch(&fetch.cluster, headers, None, fetch.timeout_ms) {
            Ok(token) => {
                vm.callouts.insert(token, Callout::Keys(fetch.provider));
            }
            Err(status) => {
                log::warn!(
                    "smart-fhir-edge: cannot fetch keys of provider {} through cluster `{}`: {status:?}",
                    fetch.provider,
                    fetch.cluster
                );
                let now = host::now_ms();
                let outcome = vm.engine.keys_mut().on_answer(
                    fetch.provider,
                    FetchAnswer::Failed,
                    now,
                    &mut HostSharedData,
                );
                record_outcome(vm, fetch.provider, &outcome);
            }
        }
    }

    /// Sends a token's introspection callout; false when the host refused to send it.
    pub fn dispatch_introspection(vm: &mut Vm, key: TokenKey, r: &IntrospectionRequest) -> bool {
        let mut headers = vec![
            (":method", "POST"),
            (":path", r.path.as_str()),
            (":authority", r.authority.as_str()),
        ];
        headers.extend(r.headers.iter().map(|(n, v)| (*n, v.as_str())));
        match host::dispatch(&r.cluster, headers, Some(r.body.as_bytes()), r.timeout_ms) {
            Ok(token) => {
                vm.callouts.insert(token, Callout::Introspection(key));
                true
            }
            Err(status) => {
                log::warn!(
                    "smart-fhir-edge: cannot send an introspection through cluster `{}`: {status:?}",
                    r.cluster
                );
                false
            }
        }
    }

    /// Hands an introspection answer to the engine, and logs and counts what it settled.
    pub fn settle_introspection(vm: &mut Vm, key: TokenKey, answer: FetchAnswer, now: u64) -> Introspected {
        let status = match &answer {
            FetchAnswer::Response { status, .. } => *status,
            FetchAnswer::Failed => 0,
        };
        let outcome = vm.engine.on_introspection_answer(key, answer, now);
        let hash = crate::token::hex(key.get(..6).unwrap_or_default());
        match &outcome.settled {
            Settled::Active(_) => log::debug!("smart-fhir-edge: token {hash}: introspection: active"),
            Settled::Inactive(why) => {
                log::info!("smart-fhir-edge: token {hash}: introspection: not active ({why})")
            }
            Settled::Failed(e) => log::warn!(
                "smart-fhir-edge: token {hash}: introspection failed ({e:?}, HTTP {status}); refusing with 503"
            ),
        }
        vm.metrics.on_introspection(&mut HostMetrics, outcome.outcome());
        outcome
    }

    fn dispatch_revocation(vm: &mut Vm, r: &RefreshRequest) {
        let headers = vec![
            (":method", "GET"),
            (":path", r.path.as_str()),
            (":authority", r.authority.as_str()),
            ("accept", "application/json"),
        ];
        match host::dispatch(&r.cluster, headers, None, r.timeout_ms) {
            Ok(token) => {
                vm.callouts.insert(token, Callout::Revocation);
            }
            Err(status) => {
                log::warn!(
                    "smart-fhir-edge: cannot fetch the revocation list through cluster `{}`: {status:?}",
                    r.cluster
                );
                let outcome = vm.engine.revocation_mut().on_answer(
                    FetchAnswer::Failed,
                    host::now_ms(),
                    &mut HostSharedData,
                );
                record_refresh(vm, &outcome);
            }
        }
    }

    /// Sends the next Bundle of AuditEvents, if one is due.
    fn flush_audit_events(vm: &mut Vm, now: u64) {
        let Some(sink) = vm.engine.config().audit.audit_event.clone() else {
            return;
        };
        let Some(queue) = vm.audit_queue.as_mut() else {
            return;
        };
        if let Some(batch) = queue.poll(now) {
            let headers = vec![
                (":method", "POST"),
                (":path", sink.uri.path.as_str()),
                (":authority", sink.uri.authority.as_str()),
                ("content-type", "application/fhir+json"),
                ("accept", "application/fhir+json"),
            ];
            match host::dispatch(&sink.cluster, headers, Some(&batch.body), sink.timeout_ms) {
                Ok(token) => {
                    vm.callouts.insert(token, Callout::AuditEvents);
                }
                Err(status) => {
                    log::warn!(
                        "smart-fhir-edge: cannot send {} AuditEvent(s) through cluster `{}`: {status:?}",
                        batch.count,
                        sink.cluster
                    );
                    queue.on_result(SendResult::Retry, now);
                }
            }
        }
        Root::count_audit(vm);
    }

    /// Moves the AuditEvent queue's counts into the metrics.
    fn count_audit(vm: &mut Vm) {
        let Some(queue) = vm.audit_queue.as_mut() else {
            return;
        };
        let c = queue.take_counts();
        let m = &mut vm.metrics;
        m.count(&mut HostMetrics, metrics::AUDIT_EVENTS_SENT.into(), c.sent);
        m.count(&mut HostMetrics, metrics::AUDIT_EVENTS_DROPPED.into(), c.dropped);
        m.count(
            &mut HostMetrics,
            metrics::AUDIT_BATCHES_FAILED.into(),
            c.failed_batches,
        );
    }

    /// Sets the key-age gauges, once a second.
    fn set_key_ages(vm: &mut Vm, now_ms: u64) {
        let now_s = now_ms / 1000;
        if now_s == vm.last_gauge_s {
            return;
        }
        vm.last_gauge_s = now_s;
        for p in 0..vm.engine.config().providers.len() {
            if let Some(age) = vm.engine.keys().age_s(p, now_s) {
                vm.metrics.set_key_age(&mut HostMetrics, p, age);
            }
        }
    }

    /// Decides again for every waiting request whose keys arrived, whose fetch ended, or whose
    /// deadline passed.
    fn wake_waiters(&self, vm: &SharedVm) {
        let now = host::now_ms();
        let ready: Vec<Waiter> = {
            let mut v = vm.borrow_mut();
            let pending = std::mem::take(&mut v.waiters);
            let keys = v.engine.keys();
            let (ready, waiting): (Vec<Waiter>, Vec<Waiter>) = pending
                .into_iter()
                .filter(|w| w.stream.strong_count() > 0)
                .partition(|w| {
                    now >= w.deadline_ms
                        || keys.generation(w.provider) != w.generation
                        || !keys.fetch_pending(w.provider)
                });
            v.waiters = waiting;
            ready
        };
        for w in ready {
            let Some(stream) = w.stream.upgrade() else {
                continue;
            };
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue;
            }
            Stream::decide_again(vm, &stream, Attempt::AfterKeys);
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

/// Takes the answer of the introspection callout `token_id` (delivered to the stream that sent
/// it, as the SDK routes callouts) and resumes every request waiting for it. `current` is the
/// context to make effective again afterwards. False when `token_id` is no introspection.
pub fn on_introspection_response(
    vm: &SharedVm,
    token_id: u32,
    num_headers: usize,
    body_size: usize,
    current: u32,
) -> bool {
    let outcome = {
        let Ok(mut v) = vm.try_borrow_mut() else {
            return false;
        };
        let Some(Callout::Introspection(key)) = v.callouts.get(&token_id).copied() else {
            return false;
        };
        v.callouts.remove(&token_id);
        let answer = fetch_answer(num_headers, body_size, MAX_ANSWER_BYTES);
        Root::settle_introspection(&mut v, key, answer, host::now_ms())
    };
    wake_introspection_waiters(vm, &outcome, current);
    true
}

/// The stream that sent the introspection of `key` ended before its answer (Envoy cancels a
/// stream's callouts with it): the requests still waiting decide afresh on the next tick (from the
/// root context, which then owns the new callout), and the first of them sends it again.
pub fn abandon_introspection(vm: &SharedVm, key: TokenKey) {
    let Ok(mut v) = vm.try_borrow_mut() else {
        return;
    };
    v.engine.forget_introspection(&key);
    v.callouts.retain(|_, c| *c != Callout::Introspection(key));
    for w in v.introspection_waiters.iter_mut().filter(|w| w.key == key) {
        w.retry = true;
    }
}

/// Decides again for the requests waiting on `outcome`'s token.
fn wake_introspection_waiters(vm: &SharedVm, outcome: &Introspected, current: u32) {
    let ready: Vec<IntrospectionWaiter> = {
        let Ok(mut v) = vm.try_borrow_mut() else {
            return;
        };
        let pending = std::mem::take(&mut v.introspection_waiters);
        let (ready, waiting) = pending
            .into_iter()
            .filter(|w| w.stream.strong_count() > 0)
            .partition(|w| w.key == outcome.key);
        v.introspection_waiters = waiting;
        ready
    };
    resume_introspected(vm, ready, outcome, current);
}

/// Resumes waiting requests with an introspection outcome.
fn resume_introspected(vm: &SharedVm, ready: Vec<IntrospectionWaiter>, outcome: &Introspected, current: u32) {
    for w in ready {
        let Some(stream) = w.stream.upgrade() else {
            continue;
        };
        if hostcalls::set_effective_context(w.context_id).is_err() {
            continue;
        }
        Stream::decide_again(vm, &stream, Attempt::AfterIntrospection(outcome));
    }
    let _ = hostcalls::set_effective_context(current);
}

/// Answers the requests whose introspection passed its deadline without an answer (the host
/// normally answers a timed-out callout itself): they fail closed. Requests whose callout was
/// cancelled decide afresh.
fn expire_introspection_waiters(vm: &SharedVm, current: u32) {
    let now = host::now_ms();
    let expired: Vec<IntrospectionWaiter> = {
        let Ok(mut v) = vm.try_borrow_mut() else {
            return;
        };
        if v.introspection_waiters.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut v.introspection_waiters);
        let (expired, waiting) = pending
            .into_iter()
            .filter(|w| w.stream.strong_count() > 0)
            .partition(|w| w.retry || now >= w.deadline_ms);
        v.introspection_waiters = waiting;
        expired
    };
    for w in expired {
        if w.retry {
            let Some(stream) = w.stream.upgrade() else {
                continue;
            };
            if hostcalls::set_effective_context(w.context_id).is_ok() {
                Stream::decide_again(vm, &stream, Attempt::First);
            }
            let _ = hostcalls::set_effective_context(current);
            continue;
        }
        let outcome = Introspected {
            key: w.key,
            settled: Settled::Failed(crate::introspection::AnswerError::Unreachable),
        };
        resume_introspected(vm, vec![w], &outcome, current);
    }
}

/// Logs a key-fetch outcome and counts it.
fn record_outcome(vm: &mut Vm, provider: usize, outcome: &FetchOutcome) {
    let name = match outcome {
        FetchOutcome::Updated => {
            log::info!("smart-fhir-edge: provider {provider}: new key set in use");
            "updated"
        }
        FetchOutcome::Unchanged => {
            log::debug!("smart-fhir-edge: provider {provider}: key set unchanged");
            "unchanged"
        }
        FetchOutcome::Discovered => {
            log::debug!("smart-fhir-edge: provider {provider}: jwks_uri discovered");
            "discovered"
        }
        FetchOutcome::Failed { reason, retry_in_s } => {
            log::warn!(
                "smart-fhir-edge: provider {provider}: key fetch failed ({reason}); keeping the last good keys, retry in {retry_in_s} s"
            );
            "failed"
        }
        FetchOutcome::Ignored => return,
    };
    vm.metrics.on_jwks_fetch(&mut HostMetrics, provider, name);
}

/// Logs a revocation-refresh outcome and counts it.
fn record_refresh(vm: &mut Vm, outcome: &RefreshOutcome) {
    match outcome {
        RefreshOutcome::Updated { entries } => {
            log::info!("smart-fhir-edge: revocation list updated ({entries} entries)")
        }
        RefreshOutcome::Unchanged => log::debug!("smart-fhir-edge: revocation list unchanged"),
        RefreshOutcome::Failed { reason, retry_in_s } => log::warn!(
            "smart-fhir-edge: revocation list refresh failed ({reason}); keeping the last good list, retry in {retry_in_s} s"
        ),
        RefreshOutcome::Ignored => return,
    }
    let name = metrics::tagged(metrics::REVOCATION_REFRESHES, &[("outcome", outcome.as_str())]);
    vm.metrics.count(&mut HostMetrics, name, 1);
}

fn response_status() -> u16 {
    host::header(MapType::HttpCallResponseHeaders, ":status")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Context for Root {
    /// The VM is going away: the counts not yet sent go out.
    fn on_done(&mut self) -> bool {
        self.flush_metrics();
        true
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = self.vm.clone() else { return };
        let mut introspected = None;
        let callout = {
            let mut v = vm.borrow_mut();
            let Some(callout) = v.callouts.remove(&token_id) else {
                return;
            };
            let now = host::now_ms();
            match callout {
                Callout::Introspection(key) => {
                    let answer = fetch_answer(num_headers, body_size, MAX_ANSWER_BYTES);
                    introspected = Some(Root::settle_introspection(&mut v, key, answer, now));
                }
                Callout::Keys(provider) => {
                    let answer = fetch_answer(num_headers, body_size, MAX_DOCUMENT_BYTES);
                    let outcome = v
                        .engine
                        .keys_mut()
                        .on_answer(provider, answer, now, &mut HostSharedData);
                    record_outcome(&mut v, provider, &outcome);
                    if outcome == FetchOutcome::Discovered {
                        if let Some(next) = v.engine.keys().next_after_discovery(provider) {
                            Root::dispatch(&mut v, &next);
                        }
                    }
                }
                Callout::Revocation => {
                    let answer = fetch_answer(num_headers, body_size, MAX_LIST_BYTES);
                    let outcome = v
                        .engine
                        .revocation_mut()
                        .on_answer(answer, now, &mut HostSharedData);
                    record_refresh(&mut v, &outcome);
                }
                Callout::AuditEvents => {
                    let status = (num_headers > 0).then(response_status);
                    let result = SendResult::from_status(status);
                    if result != SendResult::Accepted {
                        log::warn!(
                            "smart-fhir-edge: the AuditEvent server did not take a batch (HTTP {}): {}",
                            status.unwrap_or(0),
                            if result == SendResult::Retry {
                                "retrying later"
                            } else {
                                "dropped"
                            }
                        );
                    }
                    let refused = if result == SendResult::Accepted && body_size <= MAX_BATCH_RESPONSE_BYTES {
                        host::buffer(BufferType::HttpCallResponseBody, body_size)
                            .map_or(0, |b| refused_entries(&b))
                    } else {
                        0
                    };
                    if refused > 0 {
                        log::warn!(
                            "smart-fhir-edge: the AuditEvent server refused {refused} entries of a batch"
                        );
                    }
                    if let Some(q) = v.audit_queue.as_mut() {
                        q.on_result(result, now);
                        q.note_refused_entries(refused);
                    }
                    Root::count_audit(&mut v);
                }
            }
            callout
        };
        if matches!(callout, Callout::Keys(_)) {
            self.wake_waiters(&vm);
        }
        if let Some(outcome) = &introspected {
            wake_introspection_waiters(&vm, outcome, self.context_id);
        }
    }
}

/// The answer of a GET callout: the status and the body, unless larger than `limit` (then a body
/// of `limit + 1` bytes that the core refuses by size, without reading it).
fn fetch_answer(num_headers: usize, body_size: usize, limit: usize) -> FetchAnswer {
    if num_headers == 0 {
        return FetchAnswer::Failed;
    }
    let status = response_status();
    let body = if body_size > limit {
        vec![0; limit + 1]
    } else {
        host::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default()
    };
    FetchAnswer::Response { status, body }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(status) => {
                log::error!("smart-fhir-edge: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let config = match Config::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log::error!("smart-fhir-edge: {e}");
                return false;
            }
        };
        // Every worker's root context has the same id and they configure in the same millisecond:
        // a random part (WASI random_get, through std's RandomState) tells them apart in leases.
        let nonce = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let owner = format!("vm{}-{}-{nonce:016x}", self.context_id, host::now_ms());
        let mut engine = match Engine::new(config, &owner) {
            Ok(e) => e,
            Err(e) => {
                log::error!("smart-fhir-edge: {e}");
                return false;
            }
        };
        // This adapter buffers and checks the request and response bodies the decisions ask for
        // (unless configured off for hosts that cannot hold headers while a body is read).
        let body_checks = engine.config().body_checks;
        engine.set_body_checks(body_checks);
        let host_verifier = host::has_verify_signature();
        let c = engine.config();
        log::info!(
            "smart-fhir-edge {}: configured: fhir_base `{}`, {} provider(s), mode {:?}, signatures by {}",
            crate::VERSION,
            c.fhir_base,
            c.providers.len(),
            c.mode,
            if host_verifier {
                "Envoy (BoringSSL) with pure-Rust fallback"
            } else {
                "pure Rust"
            }
        );
        if c.body_checks {
            log::info!(
                "smart-fhir-edge: body checks on (Envoy must hold headers: allow_on_headers_stop_iteration: true): request bodies up to {} bytes, response bodies up to {} bytes, responses outside the grant answered {:?}",
                c.max_request_body_bytes,
                c.max_response_body_bytes,
                c.response_denial
            );
        } else {
            log::info!(
                "smart-fhir-edge: body checks off: requests whose body or response decides are refused"
            );
        }
        if c.mode == crate::config::Mode::AuditOnly {
            log::warn!(
                "smart-fhir-edge: AUDIT-ONLY mode: requests are decided and audited but never refused"
            );
        }
        log::info!(
            "smart-fhir-edge: audit: log line {}, access-log filter state `wasm.{}`, AuditEvent sink {}",
            if c.audit.log { "on" } else { "off" },
            crate::audit::FILTER_STATE_PROPERTY,
            c.audit
                .audit_event
                .as_ref()
                .map_or("off".to_string(), |a| format!(
                    "`{}` through cluster `{}`",
                    a.uri.uri, a.cluster
                ))
        );
        let r = &c.revocation;
        if r.refresh.is_some() || !(r.client_ids.is_empty() && r.subjects.is_empty() && r.jtis.is_empty()) {
            log::info!(
                "smart-fhir-edge: revocation: {} client id(s), {} subject(s), {} token id(s) configured{}",
                r.client_ids.len(),
                r.subjects.len(),
                r.jtis.len(),
                r.refresh.as_ref().map_or(String::new(), |f| format!(
                    ", refreshed every {} s through cluster `{}`",
                    f.interval_s, f.cluster
                ))
            );
        }
        for (i, p) in c.providers.iter().enumerate() {
            if let Some(intro) = &p.introspection {
                log::info!(
                    "smart-fhir-edge: provider {i}: introspection ({:?}) at `{}` through cluster `{}`, timeout {} ms; active answers trusted up to {} s (the revocation delay), inactive ones {} s, at most {} per VM",
                    intro.mode,
                    intro.endpoint.uri,
                    intro.cluster,
                    intro.timeout_ms,
                    intro.max_cache_s,
                    intro.negative_cache_s,
                    intro.max_entries
                );
            }
        }
        // A reconfiguration replaces the VM state: its counts not yet sent go out first.
        self.flush_metrics();
        let mut metrics = Metrics::default();
        metrics.predefine(&mut HostMetrics, c.providers.len(), c.audit.audit_event.is_some());
        let audit_queue = c.audit.audit_event.as_ref().map(AuditQueue::new);
        self.vm = Some(Rc::new(RefCell::new(Vm {
            engine,
            waiters: Vec::new(),
            introspection_waiters: Vec::new(),
            callouts: HashMap::new(),
            host_verifier,
            metrics,
            audit_queue,
            last_gauge_s: 0,
        })));
        self.memory_gauge =
            hostcalls::define_metric(MetricType::Gauge, crate::metrics::VM_MEMORY_MAX_BYTES).ok();
        if let Err(status) = hostcalls::set_tick_period(TICK) {
            log::error!("smart-fhir-edge: cannot set the tick period: {status:?}");
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        self.record_memory();
        let Some(vm) = self.vm.clone() else { return };
        {
            let mut v = vm.borrow_mut();
            let now = host::now_ms();
            let (fetches, outcomes) = v.engine.keys_mut().poll(now, &mut HostSharedData);
            for (provider, outcome) in &outcomes {
                record_outcome(&mut v, *provider, outcome);
            }
            for f in &fetches {
                Root::dispatch(&mut v, f);
            }
            let (refresh, outcome) = v.engine.revocation_mut().poll(now, &mut HostSharedData);
            if let Some(o) = &outcome {
                record_refresh(&mut v, o);
            }
            if let Some(r) = &refresh {
                Root::dispatch_revocation(&mut v, r);
            }
            Root::flush_audit_events(&mut v, now);
            Root::set_key_ages(&mut v, now);
            v.metrics.flush(&mut HostMetrics);
        }
        self.wake_waiters(&vm);
        expire_introspection_waiters(&vm, self.context_id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
