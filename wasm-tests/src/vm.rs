//! One VM = one instance of the module with its own root context, like one Envoy worker thread.
//! This module owns instantiation, the lifecycle (`_initialize`, `proxy_on_context_create`,
//! `proxy_on_vm_start`, `proxy_on_configure`), ticks, HTTP-call responses, queue notifications,
//! trap handling and the "after VM call" actions Envoy defers (local replies, continues).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::rc::Rc;
use std::time::Duration;

use wasmtime::{Instance, Memory, Store, TypedFunc, WasmParams, WasmResults};

use crate::abi::{LogLevel, MetricKind, METRIC_ID_INCREMENT};
use crate::callout::CallResult;
use crate::host::{Host, HostState, TrapPolicy};
use crate::imports;
use crate::stream::StreamState;
use crate::types::{LogEntry, LogSource};
use crate::{HarnessError, RefusalReason};

/// The configuration a VM starts with (Envoy's `vm_config.configuration`, the plugin's
/// `configuration` and `root_id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmConfig {
    /// Plugin configuration (`proxy_on_configure`).
    pub plugin_configuration: Vec<u8>,
    /// VM configuration (`proxy_on_vm_start`).
    pub vm_configuration: Vec<u8>,
    /// Root id (property `plugin_root_id`).
    pub root_id: String,
}

/// Work Envoy defers until the current VM call returns (`addAfterVmCallAction`).
#[derive(Clone, Debug)]
pub(crate) enum AfterCall {
    LocalReply {
        ctx: u32,
        status: u32,
        details: String,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
    },
    Continue {
        ctx: u32,
        response: bool,
    },
    Reset {
        ctx: u32,
    },
}

/// Per-VM state reachable from host functions (`Store` data).
pub(crate) struct VmState {
    pub host: Rc<RefCell<HostState>>,
    pub index: usize,
    pub config: VmConfig,
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<u32, u32>>,
    pub root_id: u32,
    pub root_created: bool,
    pub in_configure: bool,
    pub current_context: u32,
    pub effective_context: Option<u32>,
    pub streams: HashMap<u32, StreamState>,
    pub call_response: Option<CallResult>,
    pub after_call: Vec<AfterCall>,
    pub tick_period_ms: u32,
    pub next_tick_ns: Option<u64>,
    pub next_http_token: u32,
    pub next_context_id: u32,
    pub metric_ids: HashMap<u32, (String, MetricKind)>,
    pub next_metric_id: [u32; 3],
    pub status: (u32, String),
    pub failed: bool,
    pub fault: Option<String>,
    pub exit_code: Option<i32>,
    pub stop_iteration: bool,
    /// Calls of each host function (import name) so far.
    pub host_calls: RefCell<BTreeMap<&'static str, u64>>,
    /// When on: (event, fuel spent since the previous event), see `Vm::start_fuel_trace`.
    pub fuel_trace: RefCell<Option<Vec<(String, u64)>>>,
    /// Remaining fuel at the previous trace event.
    pub trace_fuel: std::cell::Cell<u64>,
}

impl VmState {
    pub(crate) fn detached(host: Rc<RefCell<HostState>>) -> VmState {
        VmState {
            host,
            index: 0,
            config: VmConfig::default(),
            memory: None,
            malloc: None,
            root_id: 1,
            root_created: false,
            in_configure: false,
            current_context: 0,
            effective_context: None,
            streams: HashMap::new(),
            call_response: None,
            after_call: Vec::new(),
            tick_period_ms: 0,
            next_tick_ns: None,
            next_http_token: 1,
            next_context_id: 2,
            metric_ids: HashMap::new(),
            next_metric_id: [0, 1, 2],
            status: (0, String::new()),
            failed: false,
            fault: None,
            exit_code: None,
            stop_iteration: false,
            host_calls: RefCell::new(BTreeMap::new()),
            fuel_trace: RefCell::new(None),
            trace_fuel: std::cell::Cell::new(0),
        }
    }

    /// The context host calls act on: the effective context if set and alive, else the current.
    pub fn context(&self) -> u32 {
        match self.effective_context {
            Some(id) if self.context_exists(id) => id,
            _ => self.current_context,
        }
    }

    pub fn context_exists(&self, id: u32) -> bool {
        (id == self.root_id && self.root_created) || self.streams.get(&id).is_some_and(|s| s.created)
    }

    pub fn log(&self, level: LogLevel, source: LogSource, message: String) {
        let context = self.context();
        self.host
            .borrow_mut()
            .log(self.index, context, level, source, message);
    }

    pub fn next_metric_id(&mut self, kind: MetricKind) -> u32 {
        let slot = &mut self.next_metric_id[kind.tag() as usize];
        *slot = slot.wrapping_add(METRIC_ID_INCREMENT);
        *slot
    }
}

/// The fuel every store starts with (fuel is only counted, never exhausted).
const FUEL: u64 = u64::MAX;

/// `proxy_on_http_call_response(context, token, headers, body_size, trailers)`.
type OnHttpCallResponse = TypedFunc<(u32, u32, u32, u32, u32), ()>;

pub(crate) struct Exports {
    pub initialize: Option<TypedFunc<(), ()>>,
    pub start: Option<TypedFunc<(), ()>>,
    pub ctors: Option<TypedFunc<(), ()>>,
    pub on_context_create: Option<TypedFunc<(u32, u32), ()>>,
    pub on_vm_start: Option<TypedFunc<(u32, u32), u32>>,
    pub on_configure: Option<TypedFunc<(u32, u32), u32>>,
    pub on_tick: Option<TypedFunc<u32, ()>>,
    pub on_request_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_request_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_request_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub on_response_headers: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_response_body: Option<TypedFunc<(u32, u32, u32), u32>>,
    pub on_response_trailers: Option<TypedFunc<(u32, u32), u32>>,
    pub on_http_call_response: Option<OnHttpCallResponse>,
    pub on_queue_ready: Option<TypedFunc<(u32, u32), ()>>,
    pub on_log: Option<TypedFunc<u32, ()>>,
    pub on_done: Option<TypedFunc<u32, u32>>,
    pub on_delete: Option<TypedFunc<u32, ()>>,
}

pub(crate) struct VmInner {
    pub store: Store<VmState>,
    pub exports: Exports,
    pub index: usize,
    pub trap_policy: TrapPolicy,
}

fn typed<P: WasmParams, R: WasmResults>(
    instance: &Instance,
    store: &mut Store<VmState>,
    name: &str,
) -> Result<Option<TypedFunc<P, R>>, HarnessError> {
    match instance.get_func(&mut *store, name) {
        None => Ok(None),
        Some(f) => f.typed::<P, R>(&*store).map(Some).map_err(|e| {
            HarnessError::Module(format!(
                "export `{name}` does not have the proxy-wasm 0.2.1 signature: {e}"
            ))
        }),
    }
}

impl VmInner {
    pub(crate) fn instantiate(host: &Host, index: usize, config: VmConfig) -> Result<VmInner, HarnessError> {
        let program = &host.inner.program;
        let mut state = VmState::detached(host.inner.state.clone());
        state.index = index;
        state.config = config;
        let trap_policy = host.inner.state.borrow().options.trap_policy;
        let mut store = Store::new(&program.engine, state);
        // Fuel only counts: a store never runs out (u64::MAX is far beyond any test).
        store
            .set_fuel(FUEL)
            .map_err(|e| HarnessError::Module(format!("setting fuel: {e:#}")))?;
        let missing = imports::unknown_imports(&program.module);
        if !missing.is_empty() {
            return Err(HarnessError::MissingImports(missing));
        }
        let linker = imports::linker(&program.engine)?;
        let instance = linker
            .instantiate(&mut store, &program.module)
            .map_err(|e| HarnessError::Module(format!("instantiation failed: {e:#}")))?;
        let exported: Vec<String> = program.module.exports().map(|e| e.name().to_string()).collect();
        if !exported
            .iter()
            .any(|n| n == "proxy_abi_version_0_2_1" || n == "proxy_abi_version_0_2_0")
        {
            return Err(HarnessError::Module(
                "the module exports no proxy_abi_version_0_2_1 (the harness emulates ABI 0.2.1)".into(),
            ));
        }
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| HarnessError::Module("the module exports no memory".into()))?;
        let malloc = match typed::<u32, u32>(&instance, &mut store, "malloc")? {
            Some(f) => f,
            None => {
                typed::<u32, u32>(&instance, &mut store, "proxy_on_memory_allocate")?.ok_or_else(|| {
                    HarnessError::Module(
                        "Wasm module is missing malloc function (malloc or proxy_on_memory_allocate)".into(),
                    )
                })?
            }
        };
        store.data_mut().memory = Some(memory);
        store.data_mut().malloc = Some(malloc);
        let s = &mut store;
        let exports = Exports {
            initialize: typed(&instance, s, "_initialize")?,
            start: typed(&instance, s, "_start")?,
            ctors: typed(&instance, s, "__wasm_call_ctors")?,
            on_context_create: typed(&instance, s, "proxy_on_context_create")?,
            on_vm_start: typed(&instance, s, "proxy_on_vm_start")?,
            on_configure: typed(&instance, s, "proxy_on_configure")?,
            on_tick: typed(&instance, s, "proxy_on_tick")?,
            on_request_headers: typed(&instance, s, "proxy_on_request_headers")?,
            on_request_body: typed(&instance, s, "proxy_on_request_body")?,
            on_request_trailers: typed(&instance, s, "proxy_on_request_trailers")?,
            on_response_headers: typed(&instance, s, "proxy_on_response_headers")?,
            on_response_body: typed(&instance, s, "proxy_on_response_body")?,
            on_response_trailers: typed(&instance, s, "proxy_on_response_trailers")?,
            on_http_call_response: typed(&instance, s, "proxy_on_http_call_response")?,
            on_queue_ready: typed(&instance, s, "proxy_on_queue_ready")?,
            on_log: typed(&instance, s, "proxy_on_log")?,
            on_done: typed(&instance, s, "proxy_on_done")?,
            on_delete: typed(&instance, s, "proxy_on_delete")?,
        };
        Ok(VmInner {
            store,
            exports,
            index,
            trap_policy,
        })
    }

    /// With a fuel trace on, records `event` and the fuel spent since the previous event.
    fn trace_event(&mut self, event: impl FnOnce() -> String) {
        let fuel = self.store.get_fuel().unwrap_or(0);
        let d = self.store.data();
        if let Some(trace) = d.fuel_trace.borrow_mut().as_mut() {
            trace.push((event(), d.trace_fuel.get().saturating_sub(fuel)));
            d.trace_fuel.set(fuel);
        }
    }

    pub(crate) fn failed(&self) -> bool {
        self.store.data().failed
    }

    /// Runs one top-level call into the module on context `ctx`. Returns `None` if the VM is failed
    /// or the call trapped (which, under [`TrapPolicy::Panic`], panics instead).
    pub(crate) fn guest_call<R>(
        &mut self,
        what: &str,
        ctx: u32,
        f: impl FnOnce(&mut Store<VmState>) -> wasmtime::Result<R>,
    ) -> Option<R> {
        if self.store.data().failed {
            return None;
        }
        {
            let d = self.store.data_mut();
            d.current_context = ctx;
            d.effective_context = None;
            d.stop_iteration = false;
        }
        self.trace_event(|| format!("> {what}"));
        let result = f(&mut self.store);
        self.trace_event(|| format!("< {what}"));
        let (fault, exit) = {
            let d = self.store.data_mut();
            d.effective_context = None;
            (d.fault.take(), d.exit_code.take())
        };
        if let Some(fault) = fault {
            panic!(
                "harness limitation hit in {what} (vm {}, context {ctx}): {fault}\n{}",
                self.index,
                self.diagnostics()
            );
        }
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let mut message = match exit {
                    Some(code) => format!("the module called proc_exit({code})"),
                    None => format!("{e:?}"),
                };
                if message.is_empty() {
                    message = "trap".into();
                }
                self.trapped(what, ctx, &message);
                None
            }
        }
    }

    fn trapped(&mut self, what: &str, ctx: u32, message: &str) {
        match self.trap_policy {
            TrapPolicy::Panic => panic!(
                "wasm trap in {what} (vm {}, context {ctx}): {message}\n{}",
                self.index,
                self.diagnostics()
            ),
            TrapPolicy::Envoy => {
                let d = self.store.data_mut();
                d.failed = true;
                d.log(
                    LogLevel::Critical,
                    LogSource::Host,
                    format!("Function: {what} failed: {message}"),
                );
            }
        }
    }

    /// The module's stderr and this VM's last log lines, for failure messages.
    pub(crate) fn diagnostics(&self) -> String {
        let host = self.store.data().host.borrow();
        let mut out = String::new();
        let stderr = String::from_utf8_lossy(&host.stderr);
        if !stderr.trim().is_empty() {
            let _ = writeln!(out, "--- module stderr ---\n{}", stderr.trim_end());
        }
        let logs: Vec<&LogEntry> = host.logs.iter().filter(|l| l.vm == self.index).collect();
        let start = logs.len().saturating_sub(20);
        if let Some(tail) = logs.get(start..) {
            if !tail.is_empty() {
                let _ = writeln!(out, "--- last log lines of vm {} ---", self.index);
                for l in tail {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        out
    }

    /// Envoy's VM start: `_initialize` (or `_start`, or `__wasm_call_ctors`), root context,
    /// `proxy_on_vm_start`, `proxy_on_configure`.
    pub(crate) fn start(&mut self) -> Result<(), RefusalReason> {
        let ex = &self.exports;
        let init = ex
            .initialize
            .clone()
            .or_else(|| ex.start.clone())
            .or_else(|| ex.ctors.clone());
        if let Some(f) = init {
            self.guest_call("_initialize", 0, |s| f.call(s, ()))
                .ok_or(RefusalReason::Trapped)?;
        }
        let root = self.store.data().root_id;
        self.store.data_mut().root_created = true;
        if let Some(f) = self.exports.on_context_create.clone() {
            self.guest_call("proxy_on_context_create", root, |s| f.call(s, (root, 0)))
                .ok_or(RefusalReason::Trapped)?;
        }
        let vm_config_len = self.store.data().config.vm_configuration.len() as u32;
        if let Some(f) = self.exports.on_vm_start.clone() {
            let ok = self
                .guest_call("proxy_on_vm_start", root, |s| f.call(s, (root, vm_config_len)))
                .ok_or(RefusalReason::Trapped)?;
            self.run_after_call();
            if ok == 0 {
                return Err(RefusalReason::VmStartReturnedFalse);
            }
        }
        let plugin_len = self.store.data().config.plugin_configuration.len() as u32;
        if let Some(f) = self.exports.on_configure.clone() {
            self.store.data_mut().in_configure = true;
            let ok = self.guest_call("proxy_on_configure", root, |s| f.call(s, (root, plugin_len)));
            self.store.data_mut().in_configure = false;
            let ok = ok.ok_or(RefusalReason::Trapped)?;
            self.run_after_call();
            if ok == 0 {
                return Err(RefusalReason::ConfigureReturnedFalse);
            }
        }
        Ok(())
    }

    pub(crate) fn next_tick_ns(&self) -> Option<u64> {
        if self.failed() {
            return None;
        }
        self.store.data().next_tick_ns
    }

    /// `proxy_on_tick` now, then re-arm the timer one period later (Envoy's `tickHandler`).
    pub(crate) fn tick(&mut self) {
        let root = self.store.data().root_id;
        if let Some(f) = self.exports.on_tick.clone() {
            self.guest_call("proxy_on_tick", root, |s| f.call(s, root));
            self.run_after_call();
        }
        let d = self.store.data_mut();
        let now = d.host.borrow().now_ns;
        d.next_tick_ns = if d.tick_period_ms > 0 {
            Some(now + u64::from(d.tick_period_ms) * 1_000_000)
        } else {
            None
        };
    }

    /// `proxy_on_done` on the root context (Envoy ending the VM); the module's answer (true: done).
    pub(crate) fn root_done(&mut self) -> Option<bool> {
        let root = self.store.data().root_id;
        let f = self.exports.on_done.clone()?;
        let done = self.guest_call("proxy_on_done", root, |s| f.call(s, root));
        self.run_after_call();
        done.map(|d| d != 0)
    }

    pub(crate) fn fire_scheduled_tick(&mut self) {
        self.tick();
    }

    /// `proxy_on_http_call_response(root, token, headers, body, trailers)` with the response
    /// readable through the HttpCallResponse maps and buffer, like Envoy's `onHttpCallSuccess` /
    /// `onHttpCallFailure`.
    pub(crate) fn deliver_http_call_response(&mut self, token: u32, result: CallResult) {
        let root = self.store.data().root_id;
        let Some(f) = self.exports.on_http_call_response.clone() else {
            return;
        };
        let (nh, nb, nt) = match &result {
            CallResult::Response {
                headers,
                body,
                trailers,
            } => (
                headers.len() as u32,
                body.len() as u32,
                trailers.as_ref().map_or(0, |t| t.len() as u32),
            ),
            CallResult::Reset => (0, 0, 0),
        };
        {
            let d = self.store.data_mut();
            if matches!(result, CallResult::Reset) {
                d.status = (crate::abi::Status::BrokenConnection.code(), "reset".to_string());
            }
            d.call_response = Some(result);
        }
        self.guest_call("proxy_on_http_call_response", root, |s| {
            f.call(s, (root, token, nh, nb, nt))
        });
        {
            let d = self.store.data_mut();
            d.call_response = None;
            d.status.1.clear();
        }
        self.run_after_call();
    }

    pub(crate) fn queue_ready(&mut self, ctx: u32, token: u32) {
        if !self.store.data().context_exists(ctx) {
            return;
        }
        if let Some(f) = self.exports.on_queue_ready.clone() {
            self.guest_call("proxy_on_queue_ready", ctx, |s| f.call(s, (ctx, token)));
            self.run_after_call();
        }
    }

    /// Runs the deferred actions until none are left (they may call the module again).
    pub(crate) fn run_after_call(&mut self) {
        loop {
            let actions = std::mem::take(&mut self.store.data_mut().after_call);
            if actions.is_empty() {
                break;
            }
            for action in actions {
                match action {
                    AfterCall::LocalReply {
                        ctx,
                        status,
                        details,
                        body,
                        headers,
                    } => self.local_reply(ctx, status, details, body, headers),
                    AfterCall::Continue { ctx, response: false } => self.continue_request(ctx),
                    AfterCall::Continue { ctx, response: true } => self.continue_response(ctx),
                    AfterCall::Reset { ctx } => self.reset_stream(ctx),
                }
            }
        }
    }

    /// Linear memory size in bytes.
    pub(crate) fn memory_size(&self) -> usize {
        match self.store.data().memory {
            Some(m) => m.data_size(&self.store),
            None => 0,
        }
    }
}

/// Handle to a worker VM (one instance of the module with its root context).
#[derive(Clone)]
pub struct Vm {
    pub(crate) host: Host,
    pub(crate) cell: Rc<RefCell<VmInner>>,
    pub(crate) index: usize,
}

impl Vm {
    /// Index among the host's worker VMs (0, 1, ...).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The host this VM runs in.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The root context id.
    pub fn root_context_id(&self) -> u32 {
        self.cell.borrow().store.data().root_id
    }

    /// Calls `proxy_on_tick` now (the clock does not move) and re-arms the timer.
    pub fn tick(&self) {
        self.cell.borrow_mut().tick();
        self.host.drain_events();
    }

    /// Envoy ending this VM (the plugin removed or replaced): `proxy_on_done` on its root context.
    /// Returns whether the module said it is done (`None`: it exports no `proxy_on_done`, or failed).
    pub fn shutdown(&self) -> Option<bool> {
        let done = self.cell.borrow_mut().root_done();
        self.host.drain_events();
        done
    }

    /// The tick period the module set, if any.
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = self.cell.borrow().store.data().tick_period_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// The module's linear memory size in bytes (for memory-bound tests).
    pub fn memory_size_bytes(&self) -> usize {
        self.cell.borrow().memory_size()
    }

    /// Wasm fuel this VM consumed so far (since instantiation, start and configuration
    /// included): wasmtime counts about one unit per executed WebAssembly instruction (`nop`,
    /// `drop`, blocks and branches excepted). Deterministic: the same calls consume the same fuel.
    /// Diff two readings to measure a piece of work.
    pub fn fuel_consumed(&self) -> u64 {
        let inner = self.cell.borrow();
        FUEL - inner.store.get_fuel().unwrap_or(FUEL)
    }

    /// How many times this VM's module called each host function so far (by import name:
    /// `proxy_*` and WASI functions, whatever the import module), since instantiation. Diff two
    /// readings to measure a piece of work.
    pub fn host_calls(&self) -> BTreeMap<String, u64> {
        let inner = self.cell.borrow();
        let calls = inner.store.data().host_calls.borrow();
        calls.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
    }

    /// Starts (or restarts) a fuel trace: from now on every top-level call into the module
    /// (`> proxy_on_...`), its return (`< proxy_on_...`) and every host call (by import name) is
    /// recorded with the fuel the module spent since the previous event — where the module's work
    /// lies between host calls. [`Vm::take_fuel_trace`] returns it and stops tracing.
    pub fn start_fuel_trace(&self) {
        let inner = self.cell.borrow();
        let fuel = inner.store.get_fuel().unwrap_or(0);
        let d = inner.store.data();
        d.trace_fuel.set(fuel);
        *d.fuel_trace.borrow_mut() = Some(Vec::new());
    }

    /// The fuel trace since [`Vm::start_fuel_trace`] (empty if none was started); stops tracing.
    pub fn take_fuel_trace(&self) -> Vec<(String, u64)> {
        let inner = self.cell.borrow();
        let trace = inner.store.data().fuel_trace.borrow_mut().take();
        trace.unwrap_or_default()
    }

    /// Whether the VM trapped and is failed (only under [`TrapPolicy::Envoy`]).
    pub fn is_failed(&self) -> bool {
        self.cell.borrow().failed()
    }

    /// This VM's log lines.
    pub fn logs(&self) -> Vec<LogEntry> {
        self.host
            .logs()
            .into_iter()
            .filter(|l| l.vm == self.index)
            .collect()
    }

    /// Number of HTTP contexts alive in the module (created and not deleted).
    pub fn live_streams(&self) -> usize {
        self.cell
            .borrow()
            .store
            .data()
            .streams
            .values()
            .filter(|s| s.created && !s.deleted)
            .count()
    }
}
