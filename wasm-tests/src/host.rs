//! The emulated Envoy process: one test clock, one shared-data store, one stats scope, one log, one
//! set of pending HTTP callouts, shared by every VM (worker thread) the test starts. No global state:
//! every test builds its own `Host`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::abi::{LogLevel, MetricKind};
use crate::module::{self, Program};
use crate::types::{Headers, LogEntry, LogSource};
use crate::vm::{VmConfig, VmInner};
use crate::{Callout, ConfigRefused, HarnessError, Vm};

/// Default test clock: 2023-11-14T22:13:20Z.
pub const DEFAULT_EPOCH_SECS: u64 = 1_700_000_000;
/// Arbitrary origin of the monotonic clock (Envoy's steady clock has none in particular).
const MONOTONIC_ORIGIN_NS: u64 = 86_400 * 1_000_000_000;
/// Index of the first configuration-canary VM (worker VMs count from 0).
pub const CANARY_VM_INDEX_BASE: usize = 1_000_000;

/// What happens when the module traps (a Rust panic, `unreachable`, out-of-bounds...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrapPolicy {
    /// The test panics with the trap, the module's stderr and the recent logs (default: a trap is
    /// a bug).
    Panic,
    /// Envoy's behaviour (fail closed): the VM is marked failed, the stream gets a 503 local reply
    /// (`wasm_fail_stream`), and later requests to that VM get 503 without reaching the module.
    Envoy,
}

#[derive(Clone, Debug)]
pub(crate) struct HostOptions {
    pub log_level: LogLevel,
    pub seed: u64,
    pub disabled_foreign: HashSet<String>,
    pub clusters: Option<HashSet<String>>,
    pub vm_id: String,
    pub plugin_name: String,
    pub trap_policy: TrapPolicy,
    pub canary: bool,
    /// Envoy's `PluginConfig.allow_on_headers_stop_iteration`.
    pub allow_on_headers_stop_iteration: bool,
}

/// A pending HTTP callout (`proxy_http_call`), owned by a VM's root context like in Envoy.
#[derive(Clone, Debug)]
pub(crate) struct PendingCallout {
    pub seq: u64,
    pub vm: usize,
    pub token: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
    pub timeout: Option<Duration>,
    pub dispatched_at_ns: u64,
    pub deadline_ns: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct MetricState {
    pub value: u64,
    pub samples: Vec<u64>,
}

#[derive(Clone, Debug)]
pub(crate) struct QueueState {
    pub owner_vm: usize,
    pub owner_context: u32,
    pub items: VecDeque<Vec<u8>>,
}

/// Work that crosses VMs, run after the current host call completes.
#[derive(Clone, Debug)]
pub(crate) enum HostEvent {
    QueueReady { vm: usize, context: u32, token: u32 },
}

pub(crate) struct HostState {
    pub options: HostOptions,
    pub now_ns: u64,
    pub start_ns: u64,
    pub shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    pub next_cas: u32,
    pub queue_tokens: HashMap<(Vec<u8>, Vec<u8>), u32>,
    pub queues: HashMap<u32, QueueState>,
    pub next_queue_token: u32,
    pub metrics: BTreeMap<(String, MetricKindKey), MetricState>,
    pub logs: Vec<LogEntry>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub callouts: Vec<PendingCallout>,
    pub next_callout_seq: u64,
    pub properties: HashMap<String, Vec<u8>>,
    pub rng: u64,
    pub events: VecDeque<HostEvent>,
    pub dead_vms: HashSet<usize>,
}

/// `MetricKind` with an order, for the metrics map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum MetricKindKey {
    Counter,
    Gauge,
    Histogram,
}

impl From<MetricKind> for MetricKindKey {
    fn from(k: MetricKind) -> Self {
        match k {
            MetricKind::Counter => MetricKindKey::Counter,
            MetricKind::Gauge => MetricKindKey::Gauge,
            MetricKind::Histogram => MetricKindKey::Histogram,
        }
    }
}

impl HostState {
    pub fn monotonic_ns(&self) -> u64 {
        MONOTONIC_ORIGIN_NS + self.now_ns.saturating_sub(self.start_ns)
    }

    pub fn log(&mut self, vm: usize, context: u32, level: LogLevel, source: LogSource, message: String) {
        if level >= self.options.log_level {
            self.logs.push(LogEntry {
                level,
                message,
                vm,
                context,
                source,
            });
        }
    }

    /// The next CAS value (never 0), like proxy-wasm-cpp-host's `SharedData::nextCas`.
    pub fn take_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        cas
    }

    /// Deterministic random bytes (splitmix64), seeded per host.
    pub fn fill_random(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let bytes = z.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// (VM configuration, plugin configuration, root id): one canary per distinct configuration.
pub(crate) type CanaryKey = (Vec<u8>, Vec<u8>, String);

pub(crate) struct HostInner {
    pub state: Rc<RefCell<HostState>>,
    pub program: Arc<Program>,
    pub vms: RefCell<Vec<(usize, Rc<RefCell<VmInner>>)>>,
    pub next_canary: RefCell<usize>,
    pub canaries_done: RefCell<HashMap<CanaryKey, Result<(), ConfigRefused>>>,
}

/// The emulated Envoy. Cheap to clone (a handle); not `Send` — one per test.
#[derive(Clone)]
pub struct Host {
    pub(crate) inner: Rc<HostInner>,
}

/// Options for a [`Host`].
pub struct HostBuilder {
    module: ModuleSource,
    epoch: Duration,
    options: HostOptions,
}

enum ModuleSource {
    Default,
    File(PathBuf),
    Wat(String),
    Bytes(Vec<u8>),
}

impl Default for HostBuilder {
    fn default() -> Self {
        HostBuilder {
            module: ModuleSource::Default,
            epoch: Duration::from_secs(DEFAULT_EPOCH_SECS),
            options: HostOptions {
                log_level: LogLevel::Trace,
                seed: 0x5EED,
                disabled_foreign: HashSet::new(),
                clusters: None,
                vm_id: String::new(),
                plugin_name: String::new(),
                trap_policy: TrapPolicy::Panic,
                allow_on_headers_stop_iteration: false,
                canary: true,
            },
        }
    }
}

impl HostBuilder {
    /// Drive the module at `path` instead of the built filter.
    pub fn module_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.module = ModuleSource::File(path.into());
        self
    }

    /// Drive a module written in WebAssembly text (harness self-tests).
    pub fn wat(mut self, text: &str) -> Self {
        self.module = ModuleSource::Wat(text.to_string());
        self
    }

    /// Drive a module given as bytes (binary or text).
    pub fn module_bytes(mut self, bytes: &[u8]) -> Self {
        self.module = ModuleSource::Bytes(bytes.to_vec());
        self
    }

    /// Start the clock at `secs` after the Unix epoch (default [`DEFAULT_EPOCH_SECS`]).
    pub fn epoch_secs(mut self, secs: u64) -> Self {
        self.epoch = Duration::from_secs(secs);
        self
    }

    /// Seed of the deterministic `random_get`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.options.seed = seed;
        self
    }

    /// Envoy's log level: lower `proxy_log` lines are dropped, and `proxy_get_log_level` answers it
    /// (default `Trace`, so tests see everything).
    pub fn log_level(mut self, level: LogLevel) -> Self {
        self.options.log_level = level;
        self
    }

    /// Make `proxy_call_foreign_function(name)` answer `NotFound`, as an Envoy built without it would
    /// (tests the module's fallback path).
    pub fn without_foreign_function(mut self, name: &str) -> Self {
        self.options.disabled_foreign.insert(name.to_string());
        self
    }

    /// The clusters `proxy_http_call` may target; any other gets `BadArgument` like an unknown
    /// cluster in Envoy. Default: every cluster name is known.
    pub fn clusters(mut self, names: &[&str]) -> Self {
        self.options.clusters = Some(names.iter().map(|s| s.to_string()).collect());
        self
    }

    /// The `vm_id` (property `plugin_vm_id`, shared-queue namespace). Default empty.
    pub fn vm_id(mut self, id: &str) -> Self {
        self.options.vm_id = id.to_string();
        self
    }

    /// The plugin name (property `plugin_name`). Default empty.
    pub fn plugin_name(mut self, name: &str) -> Self {
        self.options.plugin_name = name.to_string();
        self
    }

    /// What a trap does (default [`TrapPolicy::Panic`]).
    pub fn trap_policy(mut self, policy: TrapPolicy) -> Self {
        self.options.trap_policy = policy;
        self
    }

    /// Skip Envoy's configuration canary (by default, like Envoy, a new configuration is first
    /// started and configured in a throw-away VM; its logs, metrics and shared-data writes remain).
    /// Envoy's `PluginConfig.allow_on_headers_stop_iteration: true` (Envoy 1.35+): a header
    /// callback's `Pause` is `StopIteration` (body callbacks still run, headers are held) instead
    /// of Envoy's default `StopAllIterationAndWatermark` (body and trailers are buffered without
    /// calling the filter until it continues).
    pub fn allow_on_headers_stop_iteration(mut self, allow: bool) -> Self {
        self.options.allow_on_headers_stop_iteration = allow;
        self
    }

    pub fn without_config_canary(mut self) -> Self {
        self.options.canary = false;
        self
    }

    /// Builds the host; fails if the module is missing or does not compile.
    pub fn build(self) -> Result<Host, HarnessError> {
        let program = match self.module {
            ModuleSource::Default => module::load_file(&module::default_module_path())?,
            ModuleSource::File(p) => module::load_file(&p)?,
            ModuleSource::Wat(t) => module::load_wat(&t)?,
            ModuleSource::Bytes(b) => module::load_bytes(&b, "<bytes>")?,
        };
        // Envoy refuses to load a module that imports what it does not provide; so does the harness.
        let missing = crate::imports::unknown_imports(&program.module);
        if !missing.is_empty() {
            return Err(HarnessError::MissingImports(missing));
        }
        let now_ns = u64::try_from(self.epoch.as_nanos()).unwrap_or(u64::MAX);
        let state = HostState {
            rng: self.options.seed,
            options: self.options,
            now_ns,
            start_ns: now_ns,
            shared: HashMap::new(),
            next_cas: 1,
            queue_tokens: HashMap::new(),
            queues: HashMap::new(),
            next_queue_token: 1,
            metrics: BTreeMap::new(),
            logs: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            callouts: Vec::new(),
            next_callout_seq: 1,
            properties: HashMap::new(),
            events: VecDeque::new(),
            dead_vms: HashSet::new(),
        };
        Ok(Host {
            inner: Rc::new(HostInner {
                state: Rc::new(RefCell::new(state)),
                program,
                vms: RefCell::new(Vec::new()),
                next_canary: RefCell::new(CANARY_VM_INDEX_BASE),
                canaries_done: RefCell::new(HashMap::new()),
            }),
        })
    }
}

/// A metric as the stats scope holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSnapshot {
    /// Name as defined by the module.
    pub name: String,
    /// Kind.
    pub kind: MetricKind,
    /// Counter or gauge value (0 for histograms).
    pub value: u64,
    /// Recorded histogram samples.
    pub samples: Vec<u64>,
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Host {
    /// A host driving the built filter; panics with "build it first: make build" if it is missing.
    #[track_caller]
    pub fn new() -> Host {
        Host::builder().build().unwrap_or_else(|e| panic!("{e}"))
    }

    /// A host driving the built filter, or the reason it cannot.
    pub fn try_new() -> Result<Host, HarnessError> {
        Host::builder().build()
    }

    /// Options.
    pub fn builder() -> HostBuilder {
        HostBuilder::default()
    }

    /// A host driving a WebAssembly-text module (harness self-tests); panics if it does not compile.
    #[track_caller]
    pub fn from_wat(text: &str) -> Host {
        Host::builder()
            .wat(text)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Where the module came from.
    pub fn module_origin(&self) -> String {
        self.inner.program.origin.clone()
    }

    /// The module's imports as `module.name`.
    pub fn module_imports(&self) -> Vec<String> {
        self.inner
            .program
            .module
            .imports()
            .map(|i| format!("{}.{}", i.module(), i.name()))
            .collect()
    }

    /// The module's exports.
    pub fn module_exports(&self) -> Vec<String> {
        self.inner
            .program
            .module
            .exports()
            .map(|e| e.name().to_string())
            .collect()
    }

    /// Starts a worker VM with this plugin configuration (empty VM configuration, empty root id).
    pub fn vm_with_config(&self, plugin_configuration: impl AsRef<[u8]>) -> Result<Vm, ConfigRefused> {
        self.start_vm(VmConfig {
            plugin_configuration: plugin_configuration.as_ref().to_vec(),
            ..VmConfig::default()
        })
    }

    /// Starts a worker VM with an empty plugin configuration; panics if it is refused.
    #[track_caller]
    pub fn vm(&self) -> Vm {
        self.vm_with_config(b"").unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts a worker VM with full control of its configuration.
    pub fn start_vm(&self, config: VmConfig) -> Result<Vm, ConfigRefused> {
        if self.inner.state.borrow().options.canary {
            let key = (
                config.vm_configuration.clone(),
                config.plugin_configuration.clone(),
                config.root_id.clone(),
            );
            let known = self.inner.canaries_done.borrow().get(&key).cloned();
            let verdict = match known {
                Some(v) => v,
                None => {
                    let index = {
                        let mut n = self.inner.next_canary.borrow_mut();
                        *n += 1;
                        *n - 1
                    };
                    let verdict = self.run_vm(index, &config, true).map(|_| ());
                    self.inner.canaries_done.borrow_mut().insert(key, verdict.clone());
                    verdict
                }
            };
            verdict?;
        }
        let index = self.inner.vms.borrow().len();
        let cell = self.run_vm(index, &config, false)?;
        Ok(Vm {
            host: self.clone(),
            cell,
            index,
        })
    }

    fn run_vm(
        &self,
        index: usize,
        config: &VmConfig,
        canary: bool,
    ) -> Result<Rc<RefCell<VmInner>>, ConfigRefused> {
        let cell = match VmInner::instantiate(self, index, config.clone()) {
            Ok(vm) => Rc::new(RefCell::new(vm)),
            Err(e) => panic!("{e}"),
        };
        if !canary {
            self.inner.vms.borrow_mut().push((index, cell.clone()));
        }
        let started = cell.borrow_mut().start();
        self.drain_events();
        if canary {
            // Envoy kills the canary: its pending callouts are cancelled, its timer stops.
            self.kill_vm(index);
        }
        match started {
            Ok(()) => Ok(cell),
            Err(reason) => {
                if !canary {
                    self.kill_vm(index);
                }
                let logs = self
                    .inner
                    .state
                    .borrow()
                    .logs
                    .iter()
                    .filter(|l| l.vm == index)
                    .cloned()
                    .collect();
                Err(ConfigRefused {
                    vm: index,
                    reason,
                    logs,
                })
            }
        }
    }

    pub(crate) fn kill_vm(&self, index: usize) {
        let mut st = self.inner.state.borrow_mut();
        st.dead_vms.insert(index);
        st.callouts.retain(|c| c.vm != index);
        st.queues.retain(|_, q| q.owner_vm != index);
    }

    pub(crate) fn vm_cell(&self, index: usize) -> Option<Rc<RefCell<VmInner>>> {
        if self.inner.state.borrow().dead_vms.contains(&index) {
            return None;
        }
        self.inner
            .vms
            .borrow()
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, c)| c.clone())
    }

    /// The worker VMs started so far, in order.
    pub fn vms(&self) -> Vec<Vm> {
        self.inner
            .vms
            .borrow()
            .iter()
            .map(|(i, c)| Vm {
                host: self.clone(),
                cell: c.clone(),
                index: *i,
            })
            .collect()
    }

    // ---- clock ----------------------------------------------------------------------------------

    /// The test clock (what `proxy_get_current_time_nanoseconds` and WASI realtime answer).
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.inner.state.borrow().now_ns)
    }

    /// The test clock in nanoseconds since the Unix epoch (compare with
    /// [`Callout::dispatched_at_ns`]).
    pub fn now_ns(&self) -> u64 {
        self.inner.state.borrow().now_ns
    }

    /// The test clock in Unix seconds.
    pub fn now_unix_secs(&self) -> u64 {
        self.inner.state.borrow().now_ns / 1_000_000_000
    }

    /// Advances the clock by `by`, firing in time order every tick whose period elapses (on every
    /// VM) and timing out every callout whose timeout expires (Envoy answers those with a 504).
    pub fn advance(&self, by: Duration) {
        let target = {
            let st = self.inner.state.borrow();
            st.now_ns
                .saturating_add(u64::try_from(by.as_nanos()).unwrap_or(u64::MAX))
        };
        loop {
            let next = self.next_timed_event(target);
            let Some((at, event)) = next else { break };
            self.inner.state.borrow_mut().now_ns = at;
            match event {
                TimedEvent::Tick(index) => {
                    if let Some(cell) = self.vm_cell(index) {
                        cell.borrow_mut().fire_scheduled_tick();
                    }
                }
                TimedEvent::CalloutTimeout(seq) => self.time_out_callout(seq),
            }
            self.drain_events();
        }
        self.inner.state.borrow_mut().now_ns = target;
    }

    /// Sets the clock to `unix_secs` (must not go backwards), firing what falls due on the way.
    pub fn advance_to_unix_secs(&self, unix_secs: u64) {
        let now = self.inner.state.borrow().now_ns;
        let target = unix_secs.saturating_mul(1_000_000_000);
        assert!(target >= now, "the test clock does not go backwards");
        self.advance(Duration::from_nanos(target - now));
    }

    fn next_timed_event(&self, limit: u64) -> Option<(u64, TimedEvent)> {
        let mut best: Option<(u64, u64, TimedEvent)> = None;
        let mut consider = |at: u64, order: u64, ev: TimedEvent| {
            if at <= limit && best.as_ref().is_none_or(|(t, o, _)| (at, order) < (*t, *o)) {
                best = Some((at, order, ev));
            }
        };
        for (index, cell) in self.inner.vms.borrow().iter() {
            if self.inner.state.borrow().dead_vms.contains(index) {
                continue;
            }
            if let Some(at) = cell.borrow().next_tick_ns() {
                consider(at, *index as u64, TimedEvent::Tick(*index));
            }
        }
        for c in &self.inner.state.borrow().callouts {
            if let Some(at) = c.deadline_ns {
                consider(at, 1_000_000 + c.seq, TimedEvent::CalloutTimeout(c.seq));
            }
        }
        best.map(|(t, _, ev)| (t, ev))
    }

    /// Calls `proxy_on_tick` on every VM that has a tick period, now (the clock does not move).
    pub fn tick_all(&self) {
        for vm in self.vms() {
            if vm.tick_period().is_some() {
                vm.tick();
            }
        }
    }

    // ---- callouts -------------------------------------------------------------------------------

    /// HTTP callouts dispatched and not answered yet, oldest first.
    pub fn pending_callouts(&self) -> Vec<Callout> {
        self.inner
            .state
            .borrow()
            .callouts
            .iter()
            .map(|c| Callout::from_pending(self.clone(), c))
            .collect()
    }

    /// The single pending callout; panics (listing what is pending) if there is not exactly one.
    #[track_caller]
    pub fn callout(&self) -> Callout {
        let mut pending = self.pending_callouts();
        if pending.len() != 1 {
            panic!(
                "expected exactly one pending callout, found {}: {pending:#?}",
                pending.len()
            );
        }
        pending.remove(0)
    }

    pub(crate) fn take_callout(&self, seq: u64) -> Option<PendingCallout> {
        let mut st = self.inner.state.borrow_mut();
        let at = st.callouts.iter().position(|c| c.seq == seq)?;
        Some(st.callouts.remove(at))
    }

    fn time_out_callout(&self, seq: u64) {
        if let Some(c) = self.take_callout(seq) {
            self.deliver_callout(c, crate::callout::CallResult::timeout());
        }
    }

    pub(crate) fn deliver_callout(&self, c: PendingCallout, result: crate::callout::CallResult) {
        if let Some(cell) = self.vm_cell(c.vm) {
            cell.borrow_mut().deliver_http_call_response(c.token, result);
        }
        self.drain_events();
    }

    pub(crate) fn drain_events(&self) {
        loop {
            let ev = self.inner.state.borrow_mut().events.pop_front();
            let Some(ev) = ev else { break };
            match ev {
                HostEvent::QueueReady { vm, context, token } => {
                    if let Some(cell) = self.vm_cell(vm) {
                        cell.borrow_mut().queue_ready(context, token);
                    }
                }
            }
        }
    }

    // ---- observations ---------------------------------------------------------------------------

    /// Every log line so far (all VMs, configuration canaries included).
    pub fn logs(&self) -> Vec<LogEntry> {
        self.inner.state.borrow().logs.clone()
    }

    /// Log lines containing `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<LogEntry> {
        self.inner
            .state
            .borrow()
            .logs
            .iter()
            .filter(|l| l.message.contains(needle))
            .cloned()
            .collect()
    }

    /// Panics if any log line (or stdout/stderr) contains `secret` — for "tokens never appear in
    /// logs" checks.
    #[track_caller]
    pub fn assert_never_logged(&self, secret: &str) {
        let st = self.inner.state.borrow();
        if let Some(l) = st.logs.iter().find(|l| l.message.contains(secret)) {
            panic!("a log line contains the secret: {l}");
        }
        for (name, bytes) in [("stdout", &st.stdout), ("stderr", &st.stderr)] {
            if String::from_utf8_lossy(bytes).contains(secret) {
                panic!("the module's {name} contains the secret");
            }
        }
    }

    /// Forgets the logs gathered so far.
    pub fn clear_logs(&self) {
        self.inner.state.borrow_mut().logs.clear();
    }

    /// Everything the module wrote to stdout.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.inner.state.borrow().stdout).into_owned()
    }

    /// Everything the module wrote to stderr (Rust panic messages land here).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.inner.state.borrow().stderr).into_owned()
    }

    /// A counter's or gauge's value by the name the module defined (counter first if both exist).
    pub fn metric(&self, name: &str) -> Option<u64> {
        let st = self.inner.state.borrow();
        [MetricKindKey::Counter, MetricKindKey::Gauge]
            .iter()
            .find_map(|k| st.metrics.get(&(name.to_string(), *k)).map(|m| m.value))
    }

    /// A histogram's recorded samples.
    pub fn histogram(&self, name: &str) -> Option<Vec<u64>> {
        let st = self.inner.state.borrow();
        st.metrics
            .get(&(name.to_string(), MetricKindKey::Histogram))
            .map(|m| m.samples.clone())
    }

    /// Every metric defined so far.
    pub fn metrics(&self) -> Vec<MetricSnapshot> {
        self.inner
            .state
            .borrow()
            .metrics
            .iter()
            .map(|((name, kind), m)| MetricSnapshot {
                name: name.clone(),
                kind: match kind {
                    MetricKindKey::Counter => MetricKind::Counter,
                    MetricKindKey::Gauge => MetricKind::Gauge,
                    MetricKindKey::Histogram => MetricKind::Histogram,
                },
                value: m.value,
                samples: m.samples.clone(),
            })
            .collect()
    }

    /// Sets a property visible from every context (e.g. `node.id`); per-request properties such as
    /// `source.address` go on the stream ([`crate::Stream::set_property`]). Path segments are
    /// separated by `.`.
    pub fn set_property(&self, path: &str, value: impl Into<Vec<u8>>) {
        self.inner
            .state
            .borrow_mut()
            .properties
            .insert(path.to_string(), value.into());
    }

    /// A shared-data entry and its CAS.
    pub fn shared_data(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.inner.state.borrow().shared.get(key.as_bytes()).cloned()
    }

    /// Every shared-data key.
    pub fn shared_data_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .inner
            .state
            .borrow()
            .shared
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        keys.sort();
        keys
    }

    /// Writes shared data as another Envoy thread would (new CAS).
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        let mut st = self.inner.state.borrow_mut();
        let cas = st.take_cas();
        st.shared.insert(key.as_bytes().to_vec(), (value.to_vec(), cas));
    }
}

enum TimedEvent {
    Tick(usize),
    CalloutTimeout(u64),
}
