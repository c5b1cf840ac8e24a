//! Test support for smart-fhir-edge:
//!
//! * a **proxy-wasm host emulator** with Envoy's semantics, on wasmtime, that drives the built
//!   module `smart_fhir_edge.wasm` (or small WAT modules for its own tests): [`Host`] (one per
//!   test: clock, shared data, stats, logs, pending callouts), [`Vm`] (a worker VM with its root
//!   context), [`Stream`] (one HTTP request through the filter), [`Callout`] (an HTTP call the
//!   module dispatched, answered by the test);
//! * fixtures for the real-Envoy suite ([`http1`], [`real_envoy`]).
//!
//! ```no_run
//! use wasm_tests::{Host, Outcome};
//! let host = Host::new(); // clock at 1_700_000_000 s
//! let vm = host.vm_with_config(r#"{"providers": []}"#).expect("configuration accepted");
//! let s = vm.get("/fhir/Patient/1", &[("authorization", "Bearer x")]);
//! match s.send_headers(true) {
//!     Outcome::LocalReply(r) => assert_eq!(r.status, 401),
//!     other => panic!("{other:?}"),
//! }
//! ```

pub mod abi;
mod callout;
pub mod foreign;
mod host;
mod imports;
mod module;
mod stream;
pub mod types;
mod vm;

pub mod http1;
pub mod node_idp;
pub mod real_envoy;
pub mod stack;

use std::fmt;

pub use abi::{LogLevel, MetricKind, Status};
pub use callout::Callout;
pub use host::{Host, HostBuilder, MetricSnapshot, TrapPolicy, CANARY_VM_INDEX_BASE, DEFAULT_EPOCH_SECS};
pub use module::{default_module_path, workspace_root};
pub use stream::Stream;
pub use types::{Headers, LogEntry, LogSource, Outcome, Property, Response, ResponseOrigin, UpstreamRequest};
pub use vm::{Vm, VmConfig};

/// The filter's tick period: request counters reach the host's metrics on each tick (they are
/// batched, not sent per request), so a test reads them after advancing the clock this far.
pub const FILTER_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// Why the harness cannot run the module at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HarnessError {
    /// The module is missing, unreadable, does not compile, or lacks what Envoy requires.
    Module(String),
    /// The module imports functions neither Envoy nor the harness provide (`module.name`).
    MissingImports(Vec<String>),
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HarnessError::Module(m) => write!(f, "{m}"),
            HarnessError::MissingImports(names) => write!(
                f,
                "the module imports functions that Envoy (and this harness) do not provide: {}",
                names.join(", ")
            ),
        }
    }
}

impl std::error::Error for HarnessError {}

/// Why a VM did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// `proxy_on_vm_start` returned false.
    VmStartReturnedFalse,
    /// `proxy_on_configure` returned false: the configuration was refused.
    ConfigureReturnedFalse,
    /// The module trapped while starting (only under [`TrapPolicy::Envoy`]).
    Trapped,
}

/// Envoy refused the plugin: the module did not accept its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigRefused {
    /// Index of the VM that refused (a configuration canary from [`CANARY_VM_INDEX_BASE`] on).
    pub vm: usize,
    /// What failed.
    pub reason: RefusalReason,
    /// That VM's log lines (where the module says why).
    pub logs: Vec<LogEntry>,
}

impl ConfigRefused {
    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|l| l.message.contains(needle))
    }
}

impl fmt::Display for ConfigRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "the plugin did not start (vm {}): {:?}", self.vm, self.reason)?;
        for l in &self.logs {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigRefused {}
