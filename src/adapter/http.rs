//! One HTTP stream: hands the request to the core, applies its decision, runs the body checks the
//! decision leaves (the request body is buffered and checked before anything is forwarded; an
//! upstream 2xx response is held, buffered and checked before anything is passed on), writes the
//! audit record once the outcome is known, and rewrites error responses that are not FHIR into
//! OperationOutcomes.
//!
//! Envoy holds a direction's headers only while the filter pauses them, so every header and body
//! change is made in the phase where Envoy holds that map or buffer.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use crate::body::ResponseVerdict;

use super::host::{self, HostMetrics, HostSharedData};
use super::root::{self, IntrospectionWaiter, Root, SharedVm, Vm, Waiter};
use crate::audit::{AuditRecord, FILTER_STATE_PROPERTY, LOG_PREFIX};
use crate::audit_event::audit_event;
use crate::config::Mode;
use crate::decision::{
    is_forwarded_header, path_with_param, verified_headers, Decision, Pending, RequestFacts,
};
use crate::denial::Denial;
use crate::introspection::{Introspected, TokenKey};
use crate::jwks::cache::FetchAnswer;
use crate::metrics::{TimedVerifier, SIGNATURE_VERIFICATION_US};
use crate::outcome::{self, Format, IssueSeverity, OperationOutcome};
use crate::token::{Fallback, HostVerifier, JwtSimpleVerifier, SignatureVerifier};

/// Which decision of a request this is.
#[derive(Debug, Clone, Copy)]
pub enum Attempt<'a> {
    /// On its headers (it may wait for keys or an introspection).
    First,
    /// After waiting for keys (it may not wait for keys again).
    AfterKeys,
    /// After waiting for its token's introspection, with the outcome.
    AfterIntrospection(&'a Introspected),
}

/// What a stream remembers between callbacks.
#[derive(Default)]
pub struct StreamState {
    pub context_id: u32,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The filter answered this request itself: its response is not rewritten.
    pub replied_locally: bool,
    /// The response body is being replaced by this OperationOutcome.
    pub rewrite: Option<String>,
    /// The audit record of the decision, written when the response starts (or the stream ends).
    pub audit: Option<AuditRecord>,
    /// Where the request stands.
    pub phase: RequestPhase,
    /// The request's end was seen (headers without body, last body chunk, or trailers).
    pub request_ended: bool,
    /// Request body bytes Envoy buffers for this filter so far.
    pub request_body_bytes: usize,
    /// The checks the decision left to run (request body, response body).
    pub pending: Option<Box<Pending>>,
    /// The upstream response held for its check.
    pub held: Option<HeldResponse>,
    /// The decision's metrics wait for its body check.
    pub uncounted: bool,
    /// The token whose introspection callout this stream sent, until its answer arrives.
    pub introspection_sent: Option<TokenKey>,
    /// Responses carry `x-smart-fhir-edge: <version>` (`version_header`).
    pub version_header: bool,
}

/// Where a request stands in this filter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RequestPhase {
    /// Not decided yet (waiting for keys): body chunks are held.
    #[default]
    Deciding,
    /// Allowed pending its body: chunks are buffered until the request ends, then checked.
    CheckingBody,
    /// Forwarded or answered: nothing more to do on the request path.
    Done,
}

/// An upstream response held until its body is checked.
#[derive(Debug, Clone)]
pub struct HeldResponse {
    pub status: u16,
    pub content_type: Option<String>,
    /// Response body bytes Envoy buffers for this filter so far.
    pub body_bytes: usize,
}

/// Response-check outcomes, as counted.
const METRIC_PASSED: &str = "passed";
const METRIC_FILTERED: &str = "filtered";
const METRIC_REFUSED: &str = "refused";

impl StreamState {
    /// The first value of a request header (names as Envoy gives them: lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `x-request-id`, echoed in OperationOutcomes.
    fn request_id(&self) -> Option<&str> {
        self.header("x-request-id")
    }

    /// The format of the OperationOutcomes this stream may send (`_format`, else `Accept`);
    /// negotiated only when one is sent.
    fn format(&self) -> Format {
        Format::negotiate(self.header("accept"), format_param(&self.path).as_deref())
    }
}

pub struct Stream {
    state: Rc<RefCell<StreamState>>,
    vm: Option<SharedVm>,
}

fn format_param(path: &str) -> Option<String> {
    let query = path.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "_format").then(|| {
            v.replace("%2B", "+")
                .replace("%2b", "+")
                .replace("%2F", "/")
                .replace("%2f", "/")
        })
    })
}

impl Stream {
    pub fn new(context_id: u32, vm: Option<SharedVm>) -> Stream {
        let version_header = vm
            .as_ref()
            .and_then(|v| v.try_borrow().ok().map(|v| v.engine.config().version_header))
            .unwrap_or(false);
        let state = StreamState {
            context_id,
            version_header,
            ..Default::default()
        };
        Stream {
            state: Rc::new(RefCell::new(state)),
            vm,
        }
    }

    /// Sends an OperationOutcome as this stream's local reply.
    fn reply(state: &mut StreamState, denial: &Denial, realm: &str) {
        let r = denial.reply(realm);
        let format = state.format();
        let body = denial
            .outcome(realm)
            .with_request_id(state.request_id())
            .render(format);
        let retry = r.retry_after.map(|s| s.to_string());
        let mut headers: Vec<(&str, &str)> = vec![("content-type", format.content_type())];
        if let Some(w) = &r.www_authenticate {
            headers.push(("www-authenticate", w));
        }
        if let Some(s) = &retry {
            headers.push(("retry-after", s));
        }
        state.replied_locally = true;
        let body = if state.method == "HEAD" {
            Vec::new()
        } else {
            body.into_bytes()
        };
        host::send_reply(r.status, &headers, &body, state.version_header);
    }

    /// Decides (or decides again) and acts. Returns what the header callback should return.
    fn decide(vm: &SharedVm, state: &Rc<RefCell<StreamState>>, attempt: Attempt<'_>) -> Action {
        let mut v = vm.borrow_mut();
        let mut s = state.borrow_mut();
        if matches!(attempt, Attempt::AfterIntrospection(_)) {
            s.introspection_sent = None;
        }
        let now = host::now_ms();
        let facts = RequestFacts {
            method: &s.method,
            path: &s.path,
            headers: &s.headers,
        };
        let fallback;
        let inner: &dyn SignatureVerifier = if v.host_verifier {
            fallback = Fallback {
                primary: HostVerifier::new(host::call_verify_signature),
                fallback: JwtSimpleVerifier,
            };
            &fallback
        } else {
            &JwtSimpleVerifier
        };
        let timed = TimedVerifier::new(inner, host::now_us);
        let vm_state = &mut *v;
        let decision = match attempt {
            Attempt::First => vm_state
                .engine
                .decide(&facts, now, &mut HostSharedData, &timed, true),
            Attempt::AfterKeys => vm_state
                .engine
                .decide(&facts, now, &mut HostSharedData, &timed, false),
            Attempt::AfterIntrospection(answer) => {
                vm_state
                    .engine
                    .decide_introspected(&facts, now, &mut HostSharedData, &timed, answer)
            }
        };
        let (decision, brake_audit) = super::brake::apply(vm_state, decision, &s.path, now);
        let config = vm_state.engine.config().clone();
        for us in timed.samples() {
            vm_state
                .metrics
                .observe(&mut HostMetrics, SIGNATURE_VERIFICATION_US.to_string(), us);
        }
        // A request allowed pending its body is counted once the body decided.
        let body_pending = matches!(&decision, Decision::Allow(a)
            if a.pending.as_ref().is_some_and(|p| p.body_check.is_some()));
        if let Some(mut record) =
            AuditRecord::for_decision(&decision, config.mode, &config.realm, &facts, now)
        {
            record.source_address = host::property(&["source", "address"]);
            if let Some(d) = &brake_audit {
                record.refuse(d, Mode::AuditOnly, &config.realm);
            }
            if body_pending {
                s.uncounted = true;
            } else {
                vm_state.metrics.on_decision(&mut HostMetrics, &record);
            }
            s.audit = Some(record);
        }
        if !matches!(
            decision,
            Decision::AwaitKeys { .. } | Decision::AwaitIntrospection { .. }
        ) {
            s.phase = RequestPhase::Done;
        }
        match decision {
            Decision::Allow(allowed) => {
                // Set now, while Envoy holds the request headers; a refused body replaces the
                // request with a local reply, so nothing set here reaches the upstream then.
                for (name, value) in allowed.set_headers.iter() {
                    host::set_header(MapType::HttpRequestHeaders, name, value);
                }
                if let Some(p) = &allowed.new_path {
                    host::set_header(MapType::HttpRequestHeaders, ":path", p);
                }
                let Some(pending) = allowed.pending else {
                    return Action::Continue;
                };
                // The edge reads the response itself: ask the upstream for it uncompressed.
                host::remove_header(MapType::HttpRequestHeaders, "accept-encoding");
                let check_body = pending.body_check.is_some();
                s.pending = Some(pending);
                if !check_body {
                    return Action::Continue;
                }
                s.phase = RequestPhase::CheckingBody;
                if s.request_body_bytes > config.max_request_body_bytes {
                    return Stream::finish_request(vm_state, &mut s, Err(body_too_large()));
                }
                if !s.request_ended {
                    return Action::Pause;
                }
                // The whole request is here already: no body, or one buffered while keys were
                // awaited.
                let body = request_body(s.request_body_bytes);
                Stream::finish_request(vm_state, &mut s, body)
            }
            Decision::Deny(denial, facts) => {
                if config.mode == Mode::AuditOnly {
                    let r = denial.reply(&config.realm);
                    log::info!(
                        "smart-fhir-edge: audit-only: would refuse ({}, HTTP {})",
                        r.reason_code,
                        r.status
                    );
                    // The token's facts are forwarded when it verified (they are true); inbound
                    // x-smart-* headers were removed before the decision, as always.
                    if let Some(claims) = &facts.claims {
                        for (name, value) in verified_headers(claims, config.forward_headers) {
                            host::set_header(MapType::HttpRequestHeaders, name, &value);
                        }
                    }
                    return Action::Continue;
                }
                Stream::reply(&mut s, &denial, &config.realm);
                Action::Pause
            }
            Decision::Respond(r) => {
                s.replied_locally = true;
                let body = if s.method == "HEAD" {
                    Vec::new()
                } else {
                    r.body.into_bytes()
                };
                host::send_reply(
                    r.status,
                    &[("content-type", r.content_type)],
                    &body,
                    s.version_header,
                );
                Action::Pause
            }
            Decision::AwaitKeys {
                provider,
                generation,
                deadline_ms,
            } => {
                v.waiters.push(Waiter {
                    context_id: s.context_id,
                    stream: Rc::downgrade(state),
                    provider,
                    generation,
                    deadline_ms,
                });
                Action::Pause
            }
            Decision::AwaitIntrospection {
                key,
                request,
                deadline_ms,
            } => {
                // No request: a callout for this token is in flight; wait for its answer too.
                let waiting = match &request {
                    None => true,
                    Some(request) => {
                        let sent = Root::dispatch_introspection(&mut v, key, request);
                        if sent {
                            s.introspection_sent = Some(key);
                        }
                        sent
                    }
                };
                if waiting {
                    v.introspection_waiters.push(IntrospectionWaiter {
                        context_id: s.context_id,
                        stream: Rc::downgrade(state),
                        key,
                        deadline_ms,
                        retry: false,
                    });
                    return Action::Pause;
                }
                // Not even sent: decide again at once with the failure (fails closed).
                let answer = Root::settle_introspection(&mut v, key, FetchAnswer::Failed, now);
                drop(s);
                drop(v);
                Stream::decide(vm, state, Attempt::AfterIntrospection(&answer))
            }
        }
    }

    /// Ends a body check: applies what the checked body allows, or answers its denial (logged and
    /// forwarded in audit-only mode). `body` is the whole request body, or why it cannot be checked.
    fn finish_request(vm: &mut Vm, s: &mut StreamState, body: Result<Vec<u8>, Denial>) -> Action {
        s.phase = RequestPhase::Done;
        let config = vm.engine.config().clone();
        let result = match (s.pending.as_deref(), body) {
            (Some(pending), Ok(body)) => {
                let content_type = s
                    .headers
                    .iter()
                    .find(|(n, _)| n == "content-type")
                    .map(|(_, v)| v.as_str());
                vm.engine.check_request_body(pending, content_type, &body)
            }
            (None, _) => Err(Denial::Internal),
            (_, Err(d)) => Err(d),
        };
        let outcome = match result {
            Ok(allowed) => {
                if let (Some(param), Some(pending)) = (&allowed.append_query, s.pending.as_deref()) {
                    let path = s.path.split_once('?').map_or(s.path.as_str(), |(p, _)| p);
                    let new_path = path_with_param(path, &pending.request.query, param);
                    host::set_header(MapType::HttpRequestHeaders, ":path", &new_path);
                }
                if let Some(pending) = s.pending.as_deref_mut() {
                    pending.body_check = None;
                    pending.response_check = allowed.response_check;
                }
                None
            }
            Err(denial) => {
                if let Some(record) = s.audit.as_mut() {
                    record.refuse(&denial, config.mode, &config.realm);
                }
                if let Some(pending) = s.pending.as_deref_mut() {
                    pending.body_check = None;
                }
                Some(denial)
            }
        };
        if s.uncounted {
            s.uncounted = false;
            if let Some(record) = &s.audit {
                vm.metrics.on_decision(&mut HostMetrics, record);
            }
        }
        match outcome {
            None => Action::Continue,
            Some(denial) if config.mode == Mode::AuditOnly => {
                let r = denial.reply(&config.realm);
                log::info!(
                    "smart-fhir-edge: audit-only: would refuse the request body ({}, HTTP {})",
                    r.reason_code,
                    r.status
                );
                Action::Continue
            }
            Some(denial) => {
                Stream::reply(s, &denial, &config.realm);
                Action::Pause
            }
        }
    }

    /// Called by the root (with this stream as the effective context) when the keys this stream
    /// waited for arrived, their fetch ended, or its deadline passed, or when the introspection it
    /// waited for settled.
    pub fn decide_again(vm: &SharedVm, state: &Rc<RefCell<StreamState>>, attempt: Attempt<'_>) {
        if Stream::decide(vm, state, attempt) == Action::Continue {
            if let Err(status) = hostcalls::resume_http_request() {
                log::warn!("smart-fhir-edge: cannot resume a request: {status:?}");
            }
        }
    }
}

/// The denial of a request body larger than the edge reads.
fn body_too_large() -> Denial {
    Denial::BadRequest(
        crate::denial::RequestReason::BodyTooLarge,
        "The request body is larger than the edge reads",
    )
}

/// The request body Envoy buffered, all `size` bytes of it (a short read fails closed).
fn request_body(size: usize) -> Result<Vec<u8>, Denial> {
    if size == 0 {
        return Ok(Vec::new());
    }
    match host::buffer(BufferType::HttpRequestBody, size) {
        Some(b) if b.len() == size => Ok(b),
        _ => {
            log::warn!("smart-fhir-edge: cannot read the request body to check it");
            Err(Denial::Internal)
        }
    }
}

impl Stream {
    /// Completes and writes this stream's audit record, once: the log line, the filter state the
    /// access log reads, and the AuditEvent queue. `upstream_status` overrides the upstream's
    /// status (a response the edge refused after the upstream answered).
    fn write_audit(&self, status: Option<u16>, from_upstream: bool, upstream_status: Option<u16>) {
        let Some((mut record, uncounted)) = self.state.try_borrow_mut().ok().and_then(|mut s| {
            let uncounted = std::mem::take(&mut s.uncounted);
            s.audit.take().map(|r| (r, uncounted))
        }) else {
            return;
        };
        record.complete(status, from_upstream);
        if upstream_status.is_some() {
            record.upstream_status = upstream_status;
        }
        // One string serves both outputs: the log line, and its JSON part for the filter state.
        let line = record.log_line();
        host::set_filter_state(
            FILTER_STATE_PROPERTY,
            line.get(LOG_PREFIX.len()..).unwrap_or_default(),
        );
        let Some(vm) = &self.vm else { return };
        // Never re-entered in practice (Envoy sends local replies after the VM call returns); if the
        // VM state were busy, the record is still logged rather than lost or a panic risked.
        let Ok(mut v) = vm.try_borrow_mut() else {
            host::log_info(&line);
            return;
        };
        if uncounted {
            v.metrics.on_decision(&mut HostMetrics, &record);
        }
        let config = v.engine.config().clone();
        if config.audit.log {
            host::log_info(&line);
        }
        if let (Some(sink), Some(queue)) = (&config.audit.audit_event, v.audit_queue.as_mut()) {
            queue.push(audit_event(&record, &sink.observer));
        }
    }
}

impl Context for Stream {
    /// The SDK delivers a callout's answer to the context that sent it: introspections are sent by
    /// the first request that needs them.
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = self.vm.clone() else { return };
        let context_id = {
            let Ok(mut s) = self.state.try_borrow_mut() else {
                return;
            };
            s.introspection_sent = None;
            s.context_id
        };
        root::on_introspection_response(&vm, token_id, num_headers, body_size, context_id);
    }
}

impl Stream {
    /// Runs the response check on the held response once its body is complete (or too large):
    /// passes it, replaces its body, or replaces it with the denial. `at_trailers`: the body
    /// ended with trailers, where the body buffer cannot be rewritten (a local reply replaces the
    /// response instead).
    fn check_held_response(&mut self, body_size: usize, end: bool, at_trailers: bool) -> Action {
        let Some(vm) = self.vm.clone() else {
            return Action::Continue;
        };
        let (verdict, held, config) = {
            let mut v = vm.borrow_mut();
            let mut guard = self.state.borrow_mut();
            let s = &mut *guard;
            let config = v.engine.config().clone();
            let Some(held) = s.held.as_mut() else {
                return Action::Continue;
            };
            held.body_bytes = body_size;
            let verdict = if body_size > config.max_response_body_bytes {
                ResponseVerdict::Deny(Denial::ResponseUnverifiable(
                    "the response is larger than the edge reads",
                ))
            } else if !end {
                return Action::Pause;
            } else {
                let body = if body_size == 0 {
                    Some(Vec::new())
                } else {
                    host::buffer(BufferType::HttpResponseBody, body_size).filter(|b| b.len() == body_size)
                };
                match (body, s.pending.as_deref()) {
                    (
                        Some(body),
                        Some(Pending {
                            response_check: Some(check),
                            granted,
                            ..
                        }),
                    ) => v.engine.check_response_body(
                        check,
                        granted,
                        held.status,
                        held.content_type.as_deref(),
                        &body,
                    ),
                    _ => ResponseVerdict::Deny(Denial::ResponseUnverifiable(
                        "the response body could not be read",
                    )),
                }
            };
            let held = s.held.take();
            let outcome = match &verdict {
                ResponseVerdict::Pass => METRIC_PASSED,
                ResponseVerdict::Replace(_) => METRIC_FILTERED,
                ResponseVerdict::Deny(d) => {
                    if let Some(record) = s.audit.as_mut() {
                        record.refuse(d, config.mode, &config.realm);
                    }
                    METRIC_REFUSED
                }
            };
            v.metrics.on_response_check(&mut HostMetrics, outcome);
            (verdict, held, config)
        };
        let Some(held) = held else {
            return Action::Continue;
        };
        let audit_only = config.mode == Mode::AuditOnly;
        match verdict {
            ResponseVerdict::Pass => {
                self.write_audit(Some(held.status), true, None);
                Action::Continue
            }
            ResponseVerdict::Replace(_) | ResponseVerdict::Deny(_) if audit_only => {
                log::info!(
                    "smart-fhir-edge: audit-only: would {} the response",
                    if matches!(verdict, ResponseVerdict::Replace(_)) {
                        "filter"
                    } else {
                        "refuse"
                    }
                );
                self.write_audit(Some(held.status), true, None);
                Action::Continue
            }
            ResponseVerdict::Replace(body) if at_trailers => {
                // The body buffer is not writable here: answer anew with the filtered body.
                let content_type = held.content_type.as_deref().unwrap_or("application/fhir+json");
                let version_header = {
                    let mut s = self.state.borrow_mut();
                    s.replied_locally = true;
                    s.version_header
                };
                host::send_reply(
                    held.status,
                    &[("content-type", content_type)],
                    body.as_bytes(),
                    version_header,
                );
                self.write_audit(Some(held.status), true, None);
                Action::Pause
            }
            ResponseVerdict::Replace(body) => {
                if !host::set_buffer(BufferType::HttpResponseBody, body_size, body.as_bytes()) {
                    log::warn!("smart-fhir-edge: cannot replace a checked response body");
                    return self.refuse_held(&Denial::Internal, &held, &config.realm);
                }
                host::set_header(
                    MapType::HttpResponseHeaders,
                    "content-length",
                    &body.len().to_string(),
                );
                self.write_audit(Some(held.status), true, None);
                Action::Continue
            }
            ResponseVerdict::Deny(denial) => self.refuse_held(&denial, &held, &config.realm),
        }
    }

    /// Replaces a held upstream response with a denial (Envoy sends a reply made while the
    /// response headers are held straight to the client, in place of the upstream's).
    fn refuse_held(&mut self, denial: &Denial, held: &HeldResponse, realm: &str) -> Action {
        let status = denial.reply(realm).status;
        {
            let mut s = self.state.borrow_mut();
            Stream::reply(&mut s, denial, realm);
        }
        self.write_audit(Some(status), false, Some(held.status));
        Action::Pause
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // Unreadable (logged): decided as a request without headers, which is refused (no method).
        let mut kept = host::request_headers().unwrap_or_default();
        // Inbound x-smart-* headers are removed from every request: only this filter sets them.
        kept.retain(|(name, _)| {
            let forwarded = is_forwarded_header(name);
            if forwarded {
                host::remove_header(MapType::HttpRequestHeaders, name);
            }
            !forwarded
        });
        {
            let mut s = self.state.borrow_mut();
            s.headers = kept;
            s.method = s.header(":method").unwrap_or_default().to_string();
            s.path = s.header(":path").unwrap_or_default().to_string();
            s.request_ended = end_of_stream;
        }
        let Some(vm) = self.vm.clone() else {
            // No configuration (Envoy does not create streams then); fail closed all the same.
            let mut s = self.state.borrow_mut();
            s.phase = RequestPhase::Done;
            Stream::reply(&mut s, &Denial::Internal, "smart-fhir-edge");
            return Action::Pause;
        };
        Stream::decide(&vm, &self.state, Attempt::First)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let mut s = self.state.borrow_mut();
        s.request_body_bytes = body_size;
        s.request_ended |= end_of_stream;
        match s.phase {
            RequestPhase::Done => Action::Continue,
            // Held until the decision (a Continue here would release the headers with it).
            RequestPhase::Deciding => Action::Pause,
            RequestPhase::CheckingBody => {
                let Some(vm) = self.vm.clone() else {
                    return Action::Pause;
                };
                let mut v = vm.borrow_mut();
                if body_size > v.engine.config().max_request_body_bytes {
                    return Stream::finish_request(&mut v, &mut s, Err(body_too_large()));
                }
                if !end_of_stream {
                    return Action::Pause;
                }
                let body = request_body(body_size);
                Stream::finish_request(&mut v, &mut s, body)
            }
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let mut s = self.state.borrow_mut();
        s.request_ended = true;
        match s.phase {
            RequestPhase::Done => Action::Continue,
            RequestPhase::Deciding => Action::Pause,
            RequestPhase::CheckingBody => {
                let Some(vm) = self.vm.clone() else {
                    return Action::Pause;
                };
                let mut v = vm.borrow_mut();
                let body = request_body(s.request_body_bytes);
                Stream::finish_request(&mut v, &mut s, body)
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.state.borrow().version_header {
            host::set_header(MapType::HttpResponseHeaders, "x-smart-fhir-edge", crate::VERSION);
        }
        let status: u16 = host::header(MapType::HttpResponseHeaders, ":status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let details = host::property(&["response", "code_details"]);
        {
            // An upstream 2xx with a body, for a request whose response must be checked: held
            // (headers and body) until the body is checked. Envoy's own local replies are never
            // held: they would hang.
            let mut s = self.state.borrow_mut();
            let check = !s.replied_locally
                && !end_of_stream
                && outcome::is_upstream_answer(details.as_deref())
                && (200..300).contains(&status)
                && s.method != "HEAD"
                && s.pending.as_ref().is_some_and(|p| p.response_check.is_some());
            if check {
                s.held = Some(HeldResponse {
                    status,
                    content_type: host::header(MapType::HttpResponseHeaders, "content-type"),
                    body_bytes: 0,
                });
                return Action::Pause;
            }
        }
        self.write_audit(
            (status != 0).then_some(status),
            outcome::is_upstream_answer(details.as_deref()),
            None,
        );
        let mut s = self.state.borrow_mut();
        if s.replied_locally {
            return Action::Continue;
        }
        if status < 400 {
            // Not an error (`needs_rewrite` is false below 400): the content type is not needed.
            return Action::Continue;
        }
        let content_type = host::header(MapType::HttpResponseHeaders, "content-type");
        let source = outcome::error_source(details.as_deref());
        if !outcome::needs_rewrite(status, source, content_type.as_deref()) {
            return Action::Continue;
        }
        let (code, text) = outcome::issue_for_status(status, details.as_deref(), source);
        let format = s.format();
        host::set_header(
            MapType::HttpResponseHeaders,
            "content-type",
            format.content_type(),
        );
        if s.method == "HEAD" {
            return Action::Continue;
        }
        let body = OperationOutcome::single(IssueSeverity::Error, code, text)
            .with_request_id(s.request_id())
            .render(format);
        if end_of_stream {
            // No body to replace, and none may be added to these headers: answer anew. Envoy sends
            // a reply made while the response headers are still in the filter chain directly to
            // the client, bypassing the filters.
            let mut headers: Vec<(String, String)> = Vec::new();
            for name in ["retry-after", "x-envoy-ratelimited", "www-authenticate"] {
                if let Some(v) = host::header(MapType::HttpResponseHeaders, name) {
                    headers.push((name.to_string(), v));
                }
            }
            let mut refs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            refs.push(("content-type", format.content_type()));
            s.replied_locally = true;
            host::send_reply(status, &refs, body.as_bytes(), s.version_header);
            return Action::Pause;
        }
        // The replacement is known now, so Content-Length is set now; the original body is then
        // dropped chunk by chunk and the OperationOutcome written at its end. Nothing is paused:
        // Envoy's own local replies must never be held.
        host::set_header(
            MapType::HttpResponseHeaders,
            "content-length",
            &body.len().to_string(),
        );
        s.rewrite = Some(body);
        Action::Continue
    }

    fn on_log(&mut self) {
        // This stream sent an introspection still unanswered: Envoy cancels it with the stream, so
        // the requests sharing it ask again.
        let abandoned = self
            .state
            .try_borrow_mut()
            .ok()
            .and_then(|mut s| s.introspection_sent.take());
        if let (Some(key), Some(vm)) = (abandoned, self.vm.clone()) {
            root::abandon_introspection(&vm, key);
        }
        // The stream ended without response headers (client gone, reset), or while its response
        // was held: write the record now. Usually it was written when the response started, and
        // then the host is not asked for the response code.
        if self.state.try_borrow().map_or(true, |s| s.audit.is_none()) {
            return;
        }
        let status = host::property_int(&["response", "code"])
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c != 0);
        self.write_audit(status, false, None);
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.state.borrow().held.is_some() {
            return self.check_held_response(body_size, end_of_stream, false);
        }
        let s = self.state.borrow();
        let Some(body) = &s.rewrite else {
            return Action::Continue;
        };
        let replacement: &[u8] = if end_of_stream { body.as_bytes() } else { &[] };
        if !host::set_buffer(BufferType::HttpResponseBody, body_size, replacement) {
            log::warn!("smart-fhir-edge: cannot replace an error body");
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let held_bytes = self.state.borrow().held.as_ref().map(|h| h.body_bytes);
        match held_bytes {
            Some(size) => self.check_held_response(size, true, true),
            None => Action::Continue,
        }
    }
}
