//! One HTTP stream: hands the request to the core, applies its decision, writes the audit record
//! when the response starts (or when the stream ends without one), and rewrites error responses
//! that are not FHIR into OperationOutcomes.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::host::{self, HostMetrics, HostSharedData};
use super::root::{SharedVm, Waiter};
use crate::audit::{AuditRecord, FILTER_STATE_PROPERTY, LOG_PREFIX};
use crate::audit_event::audit_event;
use crate::config::Mode;
use crate::decision::{is_forwarded_header, verified_headers, Decision, RequestFacts};
use crate::denial::Denial;
use crate::metrics::{TimedVerifier, SIGNATURE_VERIFICATION_US};
use crate::outcome::{self, Format, IssueSeverity, OperationOutcome};
use crate::token::{Fallback, HostVerifier, JwtSimpleVerifier, SignatureVerifier};

/// What a stream remembers between callbacks.
#[derive(Default)]
pub struct StreamState {
    pub context_id: u32,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub request_id: Option<String>,
    pub format: Option<Format>,
    /// The filter answered this request itself: its response is not rewritten.
    pub replied_locally: bool,
    /// The response body is being replaced by this OperationOutcome.
    pub rewrite: Option<String>,
    /// The audit record of the decision, written when the response starts (or the stream ends).
    pub audit: Option<AuditRecord>,
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
        let state = StreamState {
            context_id,
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
        let format = state.format.unwrap_or(Format::Json);
        let body = OperationOutcome::single(r.severity, r.code, r.diagnostics)
            .with_request_id(state.request_id.as_deref())
            .render(format);
        let retry = r.retry_after.map(|s| s.to_string());
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-type", format.content_type()),
            ("x-smart-fhir-edge", crate::VERSION),
        ];
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
        host::send_reply(r.status, &headers, &body);
    }

    /// Decides (or decides again) and acts. Returns what the header callback should return.
    fn decide(vm: &SharedVm, state: &Rc<RefCell<StreamState>>, may_wait: bool) -> Action {
        let mut v = vm.borrow_mut();
        let mut s = state.borrow_mut();
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
        let decision = vm_state
            .engine
            .decide(&facts, now, &mut HostSharedData, &timed, may_wait);
        let config = vm_state.engine.config().clone();
        for us in timed.samples() {
            vm_state
                .metrics
                .observe(&mut HostMetrics, SIGNATURE_VERIFICATION_US.to_string(), us);
        }
        if let Some(mut record) =
            AuditRecord::for_decision(&decision, config.mode, &config.realm, &facts, now)
        {
            record.source_address = host::property(&["source", "address"]);
            vm_state.metrics.on_decision(&mut HostMetrics, &record);
            s.audit = Some(record);
        }
        match decision {
            Decision::Allow(allowed) => {
                for (name, value) in &allowed.set_headers {
                    host::set_header(MapType::HttpRequestHeaders, name, value);
                }
                if let Some(p) = &allowed.new_path {
                    host::set_header(MapType::HttpRequestHeaders, ":path", p);
                }
                Action::Continue
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
                        for (name, value) in verified_headers(claims) {
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
                    &[
                        ("content-type", r.content_type),
                        ("x-smart-fhir-edge", crate::VERSION),
                    ],
                    &body,
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
        }
    }

    /// Called by the root (with this stream as the effective context) when the keys this stream
    /// waited for arrived, their fetch ended, or its deadline passed.
    pub fn decide_again(vm: &SharedVm, state: &Rc<RefCell<StreamState>>) {
        if Stream::decide(vm, state, false) == Action::Continue {
            if let Err(status) = hostcalls::resume_http_request() {
                log::warn!("smart-fhir-edge: cannot resume a request: {status:?}");
            }
        }
    }
}

impl Stream {
    /// Completes and writes this stream's audit record, once: the log line, the filter state the
    /// access log reads, and the AuditEvent queue.
    fn write_audit(&self, status: Option<u16>, from_upstream: bool) {
        let Some(mut record) = self.state.try_borrow_mut().ok().and_then(|mut s| s.audit.take()) else {
            return;
        };
        record.complete(status, from_upstream);
        let json = record.to_json();
        host::set_filter_state(FILTER_STATE_PROPERTY, &json);
        let Some(vm) = &self.vm else { return };
        // Never re-entered in practice (Envoy sends local replies after the VM call returns); if the
        // VM state were busy, the record is still logged rather than lost or a panic risked.
        let Ok(mut v) = vm.try_borrow_mut() else {
            log::info!("{LOG_PREFIX}{json}");
            return;
        };
        let config = v.engine.config().clone();
        if config.audit.log {
            log::info!("{LOG_PREFIX}{json}");
        }
        if let (Some(sink), Some(queue)) = (&config.audit.audit_event, v.audit_queue.as_mut()) {
            queue.push(audit_event(&record, &sink.observer));
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = host::request_headers();
        // Inbound x-smart-* headers are removed from every request: only this filter sets them.
        let mut kept = Vec::with_capacity(headers.len());
        for (name, value) in headers {
            if is_forwarded_header(&name) {
                host::remove_header(MapType::HttpRequestHeaders, &name);
            } else {
                kept.push((name, value));
            }
        }
        {
            let mut s = self.state.borrow_mut();
            let get = |n: &str| kept.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            s.method = get(":method").unwrap_or_default();
            s.path = get(":path").unwrap_or_default();
            s.request_id = get("x-request-id");
            let accept = get("accept");
            s.format = Some(Format::negotiate(
                accept.as_deref(),
                format_param(&s.path).as_deref(),
            ));
            s.headers = kept;
        }
        let Some(vm) = self.vm.clone() else {
            // No configuration (Envoy does not create streams then); fail closed all the same.
            let mut s = self.state.borrow_mut();
            Stream::reply(&mut s, &Denial::Internal, "smart-fhir-edge");
            return Action::Pause;
        };
        Stream::decide(&vm, &self.state, true)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        host::set_header(MapType::HttpResponseHeaders, "x-smart-fhir-edge", crate::VERSION);
        let status: u16 = host::header(MapType::HttpResponseHeaders, ":status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let details = host::property(&["response", "code_details"]);
        self.write_audit(
            (status != 0).then_some(status),
            details.as_deref() == Some("via_upstream"),
        );
        let mut s = self.state.borrow_mut();
        if s.replied_locally {
            return Action::Continue;
        }
        let content_type = host::header(MapType::HttpResponseHeaders, "content-type");
        let source = outcome::error_source(details.as_deref());
        if !outcome::needs_rewrite(status, source, content_type.as_deref()) {
            return Action::Continue;
        }
        let (code, text) = outcome::issue_for_status(status, details.as_deref(), source);
        let format = s.format.unwrap_or(Format::Json);
        host::set_header(
            MapType::HttpResponseHeaders,
            "content-type",
            format.content_type(),
        );
        if s.method == "HEAD" {
            return Action::Continue;
        }
        let body = OperationOutcome::single(IssueSeverity::Error, code, text)
            .with_request_id(s.request_id.as_deref())
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
            refs.push(("x-smart-fhir-edge", crate::VERSION));
            s.replied_locally = true;
            host::send_reply(status, &refs, body.as_bytes());
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
        // The stream ended without response headers (client gone, reset): write the record now.
        let status = host::property_int(&["response", "code"])
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c != 0);
        self.write_audit(status, false);
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
}
