//! Finding and compiling the module under test. The compiled `wasmtime::Module` is immutable, so it is
//! compiled once per process and per file (tests run in parallel and share it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use wasmtime::{Config, Engine, Module};

use crate::HarnessError;

/// A compiled module and the engine that compiled it.
pub(crate) struct Program {
    pub engine: Engine,
    pub module: Module,
    /// Where it came from (a path, or `<wat>`), for messages.
    pub origin: String,
}

fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            // Defaults: cranelift, wasm backtraces in trap messages; plus fuel metering, so that
            // the work a module does is counted deterministically (`Vm::fuel_consumed`).
            let mut config = Config::new();
            config.consume_fuel(true);
            Engine::new(&config).unwrap_or_else(|e| panic!("wasmtime engine: {e:#}"))
        })
        .clone()
}

/// Where the filter module is expected: `SMART_FHIR_EDGE_WASM`, else `CARGO_TARGET_DIR`'s (or the
/// workspace's) `wasm32-wasip1/release/smart_fhir_edge.wasm`.
pub fn default_module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SMART_FHIR_EDGE_WASM") {
        return PathBuf::from(p);
    }
    let workspace = workspace_root();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace.join(dir)
            }
        }
        None => workspace.join("target"),
    };
    target
        .join("wasm32-wasip1")
        .join("release")
        .join("smart_fhir_edge.wasm")
}

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Compiles (once per process) the module at `path`.
pub(crate) fn load_file(path: &Path) -> Result<Arc<Program>, HarnessError> {
    type Slot = Arc<OnceLock<Result<Arc<Program>, String>>>;
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Slot>>> = OnceLock::new();
    let slot = {
        let mut map = CACHE
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        map.entry(path.to_path_buf()).or_default().clone()
    };
    // Compile outside the map lock so that different files compile in parallel; the per-file
    // OnceLock makes concurrent tests wait for the one compilation.
    let result = slot.get_or_init(|| {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "the filter module {} cannot be read ({e}): build it first: make build \
                 (or point SMART_FHIR_EDGE_WASM at a built module)",
                path.display()
            )
        })?;
        let engine = engine();
        let module = Module::new(&engine, &bytes)
            .map_err(|e| format!("{} does not compile: {e:#}", path.display()))?;
        Ok(Arc::new(Program {
            engine,
            module,
            origin: path.display().to_string(),
        }))
    });
    result.clone().map_err(HarnessError::Module)
}

/// Compiles a module from WebAssembly text (harness self-tests), not cached.
pub(crate) fn load_wat(text: &str) -> Result<Arc<Program>, HarnessError> {
    let engine = engine();
    let module = Module::new(&engine, text).map_err(|e| HarnessError::Module(format!("wat: {e:#}")))?;
    Ok(Arc::new(Program {
        engine,
        module,
        origin: "<wat>".to_string(),
    }))
}

/// Compiles a module from bytes (not cached).
pub(crate) fn load_bytes(bytes: &[u8], origin: &str) -> Result<Arc<Program>, HarnessError> {
    let engine = engine();
    let module = Module::new(&engine, bytes).map_err(|e| HarnessError::Module(format!("{origin}: {e:#}")))?;
    Ok(Arc::new(Program {
        engine,
        module,
        origin: origin.to_string(),
    }))
}
