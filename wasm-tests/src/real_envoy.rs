//! Real Envoy for the test suite: start Envoy 1.40 (V8) from the Makefile's venv with the built
//! module and a config from `envoy/`, on 127.0.0.1 ports chosen at run time; stop it by PID when
//! the value is dropped (also when the test fails).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::http1;

/// Placeholder ports in `envoy/test.yaml` that [`Envoy::start`] replaces.
pub const UPSTREAM_PLACEHOLDER: u16 = 18081;
pub const IDP_PLACEHOLDER: u16 = 18082;

/// The repository root (parent of `wasm-tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The Envoy binary: `$ENVOY_BIN`, else `.venv/bin/envoy`. Missing Envoy fails the test (never
/// skips): run `make envoy`.
pub fn envoy_bin() -> PathBuf {
    let p = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    assert!(
        p.exists(),
        "Envoy not found at {}: run `make envoy` (or set ENVOY_BIN)",
        p.display()
    );
    p
}

/// The built filter: `$SMART_FHIR_EDGE_WASM`, else the release artifact.
pub fn wasm_path() -> PathBuf {
    let p = std::env::var_os("SMART_FHIR_EDGE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/wasm32-wasip1/release/smart_fhir_edge.wasm"));
    assert!(
        p.exists(),
        "the filter is not built at {}: run `make build` first",
        p.display()
    );
    p
}

/// Reads a config under `envoy/`.
pub fn config_file(relative: &str) -> String {
    let p = repo_root().join("envoy").join(relative);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Replaces the plugin configuration line (`value: '{...}'`) of a config with `json`.
pub fn with_plugin_config(yaml: &str, json: &serde_json::Value) -> String {
    let text = json.to_string().replace('\'', "''");
    let mut replaced = 0;
    let out: Vec<String> = yaml
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("value: '{") {
                replaced += 1;
                format!("{}value: '{}'", &l[..l.len() - t.len()], text)
            } else {
                l.to_string()
            }
        })
        .collect();
    assert_eq!(replaced, 1, "expected exactly one plugin configuration line");
    out.join("\n")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running Envoy.
pub struct Envoy {
    child: Child,
    dir: PathBuf,
    /// Port of the listener named `fhir`.
    pub port: u16,
    pub admin_port: u16,
}

/// Why Envoy did not start.
#[derive(Debug)]
pub struct StartError {
    pub log: String,
}

impl Envoy {
    /// Starts Envoy with `yaml` after replacing the placeholder ports and the module path. Waits
    /// until the admin interface reports LIVE and the listener is bound.
    pub fn start(yaml: &str, upstream_port: u16, idp_port: u16) -> Envoy {
        match Self::try_start(yaml, upstream_port, idp_port) {
            Ok(e) => e,
            Err(e) => panic!("Envoy did not start:\n{}", e.log),
        }
    }

    /// Like [`Envoy::start`], but returns Envoy's log when it exits (e.g. a refused configuration).
    pub fn try_start(yaml: &str, upstream_port: u16, idp_port: u16) -> Result<Envoy, StartError> {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("smart-fhir-edge-envoy-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let yaml = yaml
            .replace(
                &format!("port_value: {UPSTREAM_PLACEHOLDER}"),
                &format!("port_value: {upstream_port}"),
            )
            .replace(
                &format!("port_value: {IDP_PLACEHOLDER}"),
                &format!("port_value: {idp_port}"),
            )
            .replace(
                &format!("127.0.0.1:{IDP_PLACEHOLDER}"),
                &format!("127.0.0.1:{idp_port}"),
            )
            .replace(
                &format!("127.0.0.1:{UPSTREAM_PLACEHOLDER}"),
                &format!("127.0.0.1:{upstream_port}"),
            )
            .replace(
                "filename: target/wasm32-wasip1/release/smart_fhir_edge.wasm",
                &format!("filename: {}", wasm_path().display()),
            );
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml).expect("write config");
        let admin_path = dir.join("admin-address");
        let log_path = dir.join("envoy.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            // `SMART_FHIR_EDGE_ENVOY_LOG=wasm:debug,http:debug` to see more when diagnosing.
            .args([
                "--component-log-level",
                &std::env::var("SMART_FHIR_EDGE_ENVOY_LOG").unwrap_or_else(|_| "wasm:debug".into()),
            ])
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn envoy");
        let mut envoy = Envoy {
            child,
            dir,
            port: 0,
            admin_port: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(_)) = envoy.child.try_wait() {
                return Err(StartError { log: envoy.log() });
            }
            if Instant::now() > deadline {
                return Err(StartError {
                    log: format!("timed out starting Envoy\n{}", envoy.log()),
                });
            }
            if envoy.admin_port == 0 {
                if let Ok(a) = std::fs::read_to_string(&admin_path) {
                    envoy.admin_port = a
                        .trim()
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                }
            }
            if envoy.admin_port != 0 {
                let ready = http1::try_get(envoy.admin_port, "/ready");
                if ready.as_ref().is_some_and(|r| r.status == 200) {
                    if let Some(port) = envoy.listener_port("fhir") {
                        envoy.port = port;
                        return Ok(envoy);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The bound port of a listener, from the admin interface.
    pub fn listener_port(&self, name: &str) -> Option<u16> {
        let r = http1::try_get(self.admin_port, "/listeners?format=json")?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        v["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)
            .and_then(|l| {
                l["local_address"]["socket_address"]["port_value"]
                    .as_u64()
                    .map(|p| p as u16)
            })
    }

    /// Envoy's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// The filter's own log lines (wasm log lines).
    pub fn filter_log(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("wasm log"))
            .map(str::to_string)
            .collect()
    }

    /// A stat's value from `/stats?format=json`, `None` when absent.
    pub fn stat(&self, name: &str) -> Option<u64> {
        let r = http1::try_get(self.admin_port, &format!("/stats?format=json&filter=^{name}$"))?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        v["stats"].as_array()?.iter().find(|s| s["name"] == name)?["value"].as_u64()
    }

    /// `/stats/prometheus` text.
    pub fn prometheus(&self) -> String {
        http1::try_get(self.admin_port, "/stats/prometheus")
            .map(|r| r.body_str())
            .unwrap_or_default()
    }

    /// Waits until `cond` holds, up to `timeout`.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        cond()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> http1::Response {
        http1::get(self.port, path, headers)
    }

    pub fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> http1::Response {
        http1::send(self.port, method, path, headers, body)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("Envoy log kept in {}", self.dir.display());
        }
    }
}
