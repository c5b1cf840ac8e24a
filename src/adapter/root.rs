//! The root context of a VM: configuration, key fetching on ticks, and requests waiting for keys.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::host::{self, HostSharedData};
use super::http::{Stream, StreamState};
use crate::config::Config;
use crate::decision::Engine;
use crate::jwks::cache::{FetchAnswer, FetchOutcome, FetchRequest, MAX_DOCUMENT_BYTES};

/// Tick period: how often keys are polled and waiting requests are looked at.
const TICK: Duration = Duration::from_millis(100);

/// A request paused until its provider's keys arrive.
pub struct Waiter {
    pub context_id: u32,
    pub stream: Weak<RefCell<StreamState>>,
    pub provider: usize,
    pub generation: u64,
    pub deadline_ms: u64,
}

/// State shared by the root context and the streams of one VM.
pub struct Vm {
    pub engine: Engine,
    pub waiters: Vec<Waiter>,
    /// Callout token -> provider index.
    pub callouts: HashMap<u32, usize>,
    /// Whether Envoy's `verify_signature` foreign function is available.
    pub host_verifier: bool,
}

pub type SharedVm = Rc<RefCell<Vm>>;

pub struct Root {
    context_id: u32,
    vm: Option<SharedVm>,
}

impl Root {
    pub fn new(context_id: u32) -> Root {
        Root { context_id, vm: None }
    }

    fn dispatch(vm: &mut Vm, fetch: &FetchRequest) {
        let headers = vec![
            (":method", "GET"),
            (":path", fetch.path.as_str()),
            (":authority", fetch.authority.as_str()),
            ("accept", "application/json"),
        ];
        match hostcalls::dispatch_http_call(
            &fetch.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(fetch.timeout_ms),
        ) {
            Ok(token) => {
                vm.callouts.insert(token, fetch.provider);
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
                log_outcome(fetch.provider, &outcome);
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
            Stream::decide_again(vm, &stream);
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }
}

fn log_outcome(provider: usize, outcome: &FetchOutcome) {
    match outcome {
        FetchOutcome::Updated => log::info!("smart-fhir-edge: provider {provider}: new key set in use"),
        FetchOutcome::Unchanged => log::debug!("smart-fhir-edge: provider {provider}: key set unchanged"),
        FetchOutcome::Discovered => log::debug!("smart-fhir-edge: provider {provider}: jwks_uri discovered"),
        FetchOutcome::Failed { reason, retry_in_s } => log::warn!(
            "smart-fhir-edge: provider {provider}: key fetch failed ({reason}); keeping the last good keys, retry in {retry_in_s} s"
        ),
        FetchOutcome::Ignored => {}
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(vm) = self.vm.clone() else { return };
        {
            let mut v = vm.borrow_mut();
            let Some(provider) = v.callouts.remove(&token_id) else {
                return;
            };
            let answer = if num_headers == 0 {
                FetchAnswer::Failed
            } else {
                let status = host::header(MapType::HttpCallResponseHeaders, ":status")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = if body_size > MAX_DOCUMENT_BYTES {
                    // Not read: too large. The manager refuses it by size.
                    vec![0; MAX_DOCUMENT_BYTES + 1]
                } else {
                    host::buffer(BufferType::HttpCallResponseBody, body_size).unwrap_or_default()
                };
                FetchAnswer::Response { status, body }
            };
            let now = host::now_ms();
            let outcome = v
                .engine
                .keys_mut()
                .on_answer(provider, answer, now, &mut HostSharedData);
            log_outcome(provider, &outcome);
            if outcome == FetchOutcome::Discovered {
                if let Some(next) = v.engine.keys().next_after_discovery(provider) {
                    Root::dispatch(&mut v, &next);
                }
            }
        }
        self.wake_waiters(&vm);
    }
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
        let owner = format!("vm{}-{}", self.context_id, host::now_ms());
        let engine = match Engine::new(config, &owner) {
            Ok(e) => e,
            Err(e) => {
                log::error!("smart-fhir-edge: {e}");
                return false;
            }
        };
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
        if c.mode == crate::config::Mode::AuditOnly {
            log::warn!(
                "smart-fhir-edge: AUDIT-ONLY mode: requests are decided and audited but never refused"
            );
        }
        self.vm = Some(Rc::new(RefCell::new(Vm {
            engine,
            waiters: Vec::new(),
            callouts: HashMap::new(),
            host_verifier,
        })));
        if let Err(status) = hostcalls::set_tick_period(TICK) {
            log::error!("smart-fhir-edge: cannot set the tick period: {status:?}");
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = self.vm.clone() else { return };
        {
            let mut v = vm.borrow_mut();
            let now = host::now_ms();
            let (fetches, outcomes) = v.engine.keys_mut().poll(now, &mut HostSharedData);
            for (provider, outcome) in &outcomes {
                log_outcome(*provider, outcome);
            }
            for f in &fetches {
                Root::dispatch(&mut v, f);
            }
        }
        self.wake_waiters(&vm);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream::new(context_id, self.vm.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
