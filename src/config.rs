//! Plugin configuration: the JSON an operator puts in Envoy's `configuration` field.
//!
//! [`Config::from_json`] parses it with unknown keys refused, fills defaults and validates every
//! value. Every error names the offending field (`providers[0].audiences`), so a bad configuration
//! is refused at load with a message an operator can act on.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::fmt;

/// Signature algorithms this filter can verify. `none` and `HS*` are never accepted.
pub const SUPPORTED_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A configuration error: the field path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the offending field, for example `providers[0].remote_jwks.uri`.
    pub field: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: field `{}`: {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Whether the filter enforces its decisions or only audits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Denials are answered locally (the default).
    #[default]
    Enforce,
    /// Everything is decided and audited, but every request is let through (safe roll-out).
    AuditOnly,
}

/// What to do with a patient-scoped search that names no patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum UnconstrainedSearch {
    /// Append the compartment parameter for the token's patient (the default).
    #[default]
    Constrain,
    /// Refuse with 403.
    Refuse,
}

/// How a response outside the token's grant is answered (reads by id, history).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResponseDenial {
    /// 403, as for the other refusals (the default).
    #[default]
    Forbidden,
    /// 404, as if the resource did not exist.
    NotFound,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Path prefix of the FHIR API, no trailing slash (`/fhir`), or empty for the root.
    pub fhir_base: String,
    pub providers: Vec<Provider>,
    pub clock_skew_s: u64,
    /// Exact paths served without a token (GET and HEAD only).
    pub public_paths: Vec<String>,
    /// Largest accepted bearer token, checked before any decoding.
    pub max_token_bytes: usize,
    /// `realm` of `WWW-Authenticate`.
    pub realm: String,
    /// Claim that carries the patient in context.
    pub patient_claim: String,
    pub unconstrained_search: UnconstrainedSearch,
    /// Operations allowed beyond the built-in `Patient/{id}/$everything`.
    pub operations: Vec<OperationRule>,
    /// When present, the filter answers `{fhir_base}/.well-known/smart-configuration` itself.
    pub smart_configuration: Option<serde_json::Value>,
    pub mode: Mode,
    /// Absolute bases of this FHIR server as clients and the server write them
    /// (`https://ehr.example/fhir`), without trailing `/`: absolute URLs of Bundle entries,
    /// references and paging links count as this server's only under one of them.
    pub fhir_base_urls: Vec<String>,
    /// How a response outside the grant is answered.
    pub response_denial: ResponseDenial,
    /// Largest request body the edge reads when it must check one (larger: 413).
    pub max_request_body_bytes: usize,
    /// Largest response body the edge reads when it must check one (larger: withheld).
    pub max_response_body_bytes: usize,
    /// Whether the filter reads request and response bodies where the URL cannot decide (Envoy
    /// must hold headers meanwhile: `allow_on_headers_stop_iteration: true`); when false such
    /// requests are refused.
    pub body_checks: bool,
    /// Where audit records go (log line, FHIR AuditEvent sink).
    pub audit: AuditConfig,
    /// The kill switch: clients, subjects and token ids refused at once.
    pub revocation: RevocationConfig,
    /// The per-app anomaly brake, when configured.
    pub anomaly_brake: Option<crate::brake::BrakeConfig>,
    /// Which verified facts go upstream as `x-smart-*` headers.
    pub forward_headers: ForwardHeaders,
    /// Whether every response carries `x-smart-fhir-edge: <version>` (off by default: a version on
    /// every response tells scanners what runs, and each stamp is a header write).
    pub version_header: bool,
}

/// The `x-smart-*` headers a verified token's facts may be forwarded in, in the order they are
/// written. `x-smart-identity` digests all the others (a cache or limiter key).
pub const FORWARDABLE_HEADERS: [&str; 7] = [
    "x-smart-patient",
    "x-smart-scope",
    "x-smart-client-id",
    "x-smart-sub",
    "x-smart-fhir-user",
    "x-smart-encounter",
    "x-smart-identity",
];

/// Which of [`FORWARDABLE_HEADERS`] are forwarded (`forward_headers`). Each header written costs
/// Envoy a header-map update and a route-cache reset, so a deployment whose upstream reads none of
/// them lists none. The default is every fact but `x-smart-identity`, which the cache and
/// rate-limit configurations ask for by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardHeaders(u8);

impl ForwardHeaders {
    /// Every fact, no identity digest.
    pub const DEFAULT: ForwardHeaders = ForwardHeaders(0b011_1111);
    /// All seven headers.
    pub const ALL: ForwardHeaders = ForwardHeaders(0b111_1111);

    /// Whether `name` (one of [`FORWARDABLE_HEADERS`]) is forwarded.
    pub fn includes(self, name: &str) -> bool {
        FORWARDABLE_HEADERS
            .iter()
            .position(|h| *h == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    fn parse(names: &[String], field: &str) -> Result<ForwardHeaders, ConfigError> {
        let mut bits = 0u8;
        for name in names {
            let lower = name.to_ascii_lowercase();
            let Some(i) = FORWARDABLE_HEADERS.iter().position(|h| *h == lower) else {
                return Err(ConfigError::new(
                    field,
                    format!(
                        "\"{name}\" is not a forwardable header (one of: {})",
                        FORWARDABLE_HEADERS.join(", ")
                    ),
                ));
            };
            bits |= 1 << i;
        }
        Ok(ForwardHeaders(bits))
    }
}

impl Default for ForwardHeaders {
    fn default() -> Self {
        ForwardHeaders::DEFAULT
    }
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Write every record as one `smart-fhir-edge audit {json}` info log line (default true).
    pub log: bool,
    /// Send every record as a FHIR `AuditEvent` to a FHIR server, when configured.
    pub audit_event: Option<AuditEventSink>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            log: true,
            audit_event: None,
        }
    }
}

/// A FHIR server that receives `AuditEvent`s, batched in `batch` Bundles POSTed to its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEventSink {
    /// The FHIR base the Bundles are POSTed to (`http://audit.example.org/fhir`).
    pub uri: HttpUri,
    pub cluster: String,
    /// Events per Bundle (at most).
    pub batch_size: usize,
    /// A partial batch is sent when this long has passed since the last send.
    pub flush_interval_ms: u64,
    /// Events waiting per worker beyond which new ones are dropped (and counted).
    pub max_queue: usize,
    pub timeout_ms: u64,
    /// `AuditEvent.source.observer.display` and the server agent's name.
    pub observer: String,
}

/// The kill switch: tokens of these clients or subjects, or with these ids, are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevocationConfig {
    /// `client_id` (or `azp`/`cid`) values, compared exactly.
    pub client_ids: Vec<String>,
    /// `sub` values, compared exactly.
    pub subjects: Vec<String>,
    /// `jti` values, compared exactly.
    pub jtis: Vec<String>,
    /// A list fetched periodically and added to the configured one, when set.
    pub refresh: Option<RevocationRefresh>,
}

/// Where and how often the revocation list is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRefresh {
    pub uri: HttpUri,
    pub cluster: String,
    pub interval_s: u64,
    pub timeout_ms: u64,
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// `iss`, compared exactly.
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    pub keys: KeySource,
    /// Accepted `alg` values, a subset of [`SUPPORTED_ALGORITHMS`].
    pub algorithms: Vec<String>,
    /// Largest accepted `exp - iat`, when set.
    pub max_lifetime_s: Option<u64>,
    /// RFC 7662 introspection, when configured.
    pub introspection: Option<Introspection>,
}

/// When tokens are introspected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntrospectionMode {
    /// Tokens that are not JWTs are introspected (JWTs are verified locally).
    Opaque,
    /// Every token is introspected, JWTs too (after local verification), to honour revocation.
    Always,
    /// Never.
    Off,
}

/// How the filter authenticates to the introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// RFC 6749 2.3.1 HTTP Basic with a client id and secret.
    ClientSecretBasic {
        client_id: String,
        client_secret: String,
    },
    /// A bearer credential.
    Bearer { token: String },
}

/// A provider's RFC 7662 introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Introspection {
    pub endpoint: HttpUri,
    pub cluster: String,
    pub timeout_ms: u64,
    pub mode: IntrospectionMode,
    pub client_auth: ClientAuth,
    /// Longest time an active answer is trusted: the revocation delay.
    pub max_cache_s: u64,
    /// How long an inactive answer is remembered.
    pub negative_cache_s: u64,
    /// Bound on cached answers per VM.
    pub max_entries: usize,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    /// A JWKS document given inline in the configuration.
    Local(String),
    /// A JWKS fetched through an Envoy cluster.
    Remote(RemoteJwks),
    /// An OpenID or SMART discovery document fetched through a cluster, whose `jwks_uri` is then
    /// fetched through the same cluster.
    Discovery(Discovery),
}

/// A remote JWKS endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteJwks {
    pub uri: HttpUri,
    pub cluster: String,
    pub timeout_ms: u64,
    pub cache_duration_s: u64,
    /// At most one refetch for an unknown `kid` per this interval.
    pub min_refetch_interval_s: u64,
}

/// Discovery of `jwks_uri` from the issuer's well-known document.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// `{issuer}/.well-known/openid-configuration` or `{issuer}/.well-known/smart-configuration`.
    pub uri: HttpUri,
    pub cluster: String,
    pub timeout_ms: u64,
    pub cache_duration_s: u64,
    pub min_refetch_interval_s: u64,
}

/// An absolute http(s) URI split for a callout: `:authority` and `:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUri {
    pub uri: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
}

impl HttpUri {
    /// Splits `scheme://authority/path?query`. Only `http` and `https` are accepted.
    pub fn parse(uri: &str) -> Result<HttpUri, String> {
        let (scheme, rest) = uri.split_once("://").ok_or("must be an absolute http(s) URI")?;
        if scheme != "https" && scheme != "http" {
            return Err("scheme must be http or https".into());
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err("must name a host (and no user information)".into());
        }
        if uri.chars().any(|c| c.is_control() || c == ' ') || path.contains('#') {
            return Err("must not contain spaces, control characters or a fragment".into());
        }
        Ok(HttpUri {
            uri: uri.to_string(),
            scheme: scheme.to_string(),
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }
}

/// Permission letters of SMART v2 (`c`, `r`, `u`, `d`, `s`).
pub type Permissions = String;

/// An operation allowed by configuration, with the permission it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRule {
    /// With its `$`: `$validate`.
    pub name: String,
    /// Levels at which it may be invoked.
    pub levels: BTreeSet<OperationLevel>,
    /// Resource types it may be invoked on (type and instance level); empty means any.
    pub resource_types: Vec<String>,
    /// SMART v2 permission letters the caller's scope on the resource type must grant.
    pub permissions: Permissions,
}

/// Where an operation is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationLevel {
    System,
    Type,
    Instance,
}

// ---- wire format -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    fhir_base: Option<String>,
    providers: Option<Vec<RawProvider>>,
    clock_skew_s: Option<u64>,
    public_paths: Option<Vec<String>>,
    max_token_bytes: Option<usize>,
    realm: Option<String>,
    patient_claim: Option<String>,
    unconstrained_search: Option<UnconstrainedSearch>,
    operations: Option<Vec<RawOperation>>,
    smart_configuration: Option<serde_json::Value>,
    mode: Option<Mode>,
    fhir_base_urls: Option<Vec<String>>,
    response_denial: Option<ResponseDenial>,
    max_request_body_bytes: Option<usize>,
    max_response_body_bytes: Option<usize>,
    body_checks: Option<bool>,
    audit_log: Option<bool>,
    audit_event: Option<RawAuditEvent>,
    revocation: Option<RawRevocation>,
    anomaly_brake: Option<crate::brake::RawBrake>,
    forward_headers: Option<Vec<String>>,
    version_header: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditEvent {
    uri: Option<String>,
    cluster: Option<String>,
    batch_size: Option<usize>,
    flush_interval_ms: Option<u64>,
    max_queue: Option<usize>,
    timeout_ms: Option<u64>,
    observer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocation {
    client_ids: Option<Vec<String>>,
    subjects: Option<Vec<String>>,
    jtis: Option<Vec<String>>,
    refresh: Option<RawRevocationRefresh>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevocationRefresh {
    uri: Option<String>,
    cluster: Option<String>,
    interval_s: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    remote_jwks: Option<RawRemote>,
    local_jwks: Option<serde_json::Value>,
    discovery: Option<RawDiscovery>,
    algorithms: Option<Vec<String>>,
    max_lifetime_s: Option<u64>,
    introspection: Option<RawIntrospection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntrospection {
    endpoint: Option<String>,
    cluster: Option<String>,
    timeout_ms: Option<u64>,
    mode: Option<IntrospectionMode>,
    client_auth: Option<RawClientAuth>,
    max_cache_s: Option<u64>,
    negative_cache_s: Option<u64>,
    max_entries: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientAuth {
    /// `client_secret_basic` or `bearer`.
    method: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRemote {
    uri: Option<String>,
    cluster: Option<String>,
    timeout_ms: Option<u64>,
    cache_duration_s: Option<u64>,
    min_refetch_interval_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscovery {
    /// `openid-configuration` (default) or `smart-configuration`.
    document: Option<String>,
    cluster: Option<String>,
    timeout_ms: Option<u64>,
    cache_duration_s: Option<u64>,
    min_refetch_interval_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    name: Option<String>,
    levels: Option<Vec<OperationLevel>>,
    resource_types: Option<Vec<String>>,
    permissions: Option<String>,
}

const DEFAULT_TIMEOUT_MS: u64 = 2000;
const DEFAULT_CACHE_DURATION_S: u64 = 300;
const DEFAULT_MIN_REFETCH_S: u64 = 30;
const MAX_TIMEOUT_MS: u64 = 60_000;

impl Config {
    /// Parses and validates the plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(ConfigError::new("(root)", "configuration is empty"));
        }
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(serde_error)?;
        raw.validate()
    }
}

/// Turns a serde error into a field-naming error: the path to the offending value
/// (`providers[0].remote_jwks.timeout_ms`), with an unknown key named in full.
fn serde_error(e: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let msg = inner.to_string();
    let mut field = if path.is_empty() || path == "." {
        "(root)".to_string()
    } else {
        path
    };
    if let Some(key) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        // serde_path_to_error's path may already end with the unknown key.
        if field == "(root)" {
            field = key.to_string();
        } else if !(field == key || field.ends_with(&format!(".{key}"))) {
            field = format!("{field}.{key}");
        }
    }
    ConfigError::new(field, format!("not valid for this filter: {msg}"))
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::new(field, "is required"))
}

fn timeout(v: Option<u64>, field: String) -> Result<u64, ConfigError> {
    let t = v.unwrap_or(DEFAULT_TIMEOUT_MS);
    if t == 0 || t > MAX_TIMEOUT_MS {
        return Err(ConfigError::new(
            field,
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        ));
    }
    Ok(t)
}

fn positive(v: Option<u64>, default: u64, field: String) -> Result<u64, ConfigError> {
    let n = v.unwrap_or(default);
    if n == 0 {
        return Err(ConfigError::new(field, "must be greater than 0"));
    }
    Ok(n)
}

fn cluster(v: Option<String>, field: String) -> Result<String, ConfigError> {
    let c = required(v, &field)?;
    if c.trim().is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    Ok(c)
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let fhir_base = self.fhir_base.unwrap_or_else(|| "/fhir".to_string());
        let fhir_base = fhir_base.trim_end_matches('/').to_string();
        if !(fhir_base.is_empty() || fhir_base.starts_with('/'))
            || fhir_base.contains("//")
            || fhir_base.contains(['?', '#', '%', '\\'])
            || fhir_base.split('/').any(|s| s == "." || s == "..")
        {
            return Err(ConfigError::new(
                "fhir_base",
                "must be an absolute path like /fhir (no query, dot segments or encoding)",
            ));
        }

        let raw_providers = required(self.providers, "providers")?;
        if raw_providers.is_empty() {
            return Err(ConfigError::new("providers", "must name at least one provider"));
        }
        let mut providers = Vec::with_capacity(raw_providers.len());
        let mut issuers = BTreeSet::new();
        for (i, p) in raw_providers.into_iter().enumerate() {
            let provider = p.validate(&format!("providers[{i}]"))?;
            if !issuers.insert(provider.issuer.clone()) {
                return Err(ConfigError::new(
                    format!("providers[{i}].issuer"),
                    "names an issuer that another provider already has",
                ));
            }
            providers.push(provider);
        }

        let introspecting: Vec<usize> = providers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.introspection.is_some())
            .map(|(i, _)| i)
            .collect();
        if let Some(second) = introspecting.get(1) {
            return Err(ConfigError::new(
                format!("providers[{second}].introspection"),
                "only one provider may introspect: opaque tokens name no issuer to choose by",
            ));
        }

        let clock_skew_s = self.clock_skew_s.unwrap_or(60);
        if clock_skew_s > 600 {
            return Err(ConfigError::new("clock_skew_s", "must be at most 600"));
        }

        let public_paths = self.public_paths.unwrap_or_else(|| {
            vec![
                format!("{fhir_base}/metadata"),
                format!("{fhir_base}/.well-known/smart-configuration"),
            ]
        });
        for (i, p) in public_paths.iter().enumerate() {
            if !p.starts_with('/') || p.contains(['?', '#', '%']) {
                return Err(ConfigError::new(
                    format!("public_paths[{i}]"),
                    "must be an exact absolute path without query or percent-encoding",
                ));
            }
        }

        let max_token_bytes = self.max_token_bytes.unwrap_or(16 * 1024);
        if !(256..=64 * 1024).contains(&max_token_bytes) {
            return Err(ConfigError::new(
                "max_token_bytes",
                "must be between 256 and 65536",
            ));
        }

        let realm = self.realm.unwrap_or_else(|| "smart-fhir-edge".to_string());
        if realm.is_empty() || realm.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
            return Err(ConfigError::new(
                "realm",
                "must be non-empty, without quotes, backslashes or control characters",
            ));
        }

        let patient_claim = self.patient_claim.unwrap_or_else(|| "patient".to_string());
        if patient_claim.is_empty() {
            return Err(ConfigError::new("patient_claim", "must not be empty"));
        }

        let mut operations = Vec::new();
        for (i, op) in self.operations.unwrap_or_default().into_iter().enumerate() {
            operations.push(op.validate(&format!("operations[{i}]"))?);
        }

        if let Some(sc) = &self.smart_configuration {
            if !sc.is_object() {
                return Err(ConfigError::new("smart_configuration", "must be a JSON object"));
            }
        }

        let mut fhir_base_urls = Vec::new();
        for (i, u) in self.fhir_base_urls.unwrap_or_default().into_iter().enumerate() {
            let field = format!("fhir_base_urls[{i}]");
            let u = u.trim_end_matches('/').to_string();
            let parsed = HttpUri::parse(&u).map_err(|m| ConfigError::new(field.clone(), m))?;
            if u.contains(['?', '#', '%', '\\']) || parsed.path.split('/').any(|s| s == "." || s == "..") {
                return Err(ConfigError::new(
                    field,
                    "must be an absolute http(s) base like https://ehr.example/fhir (no query, dot segments or encoding)",
                ));
            }
            fhir_base_urls.push(u);
        }
        let body_limit = |v: Option<usize>, default: usize, field: &str| {
            let n = v.unwrap_or(default);
            if !(1024..=64 * 1024 * 1024).contains(&n) {
                return Err(ConfigError::new(field, "must be between 1024 and 67108864"));
            }
            Ok(n)
        };
        let max_request_body_bytes = body_limit(
            self.max_request_body_bytes,
            crate::body::DEFAULT_MAX_REQUEST_BODY_BYTES,
            "max_request_body_bytes",
        )?;
        let max_response_body_bytes = body_limit(
            self.max_response_body_bytes,
            crate::body::DEFAULT_MAX_RESPONSE_BODY_BYTES,
            "max_response_body_bytes",
        )?;

        Ok(Config {
            fhir_base,
            providers,
            clock_skew_s,
            public_paths,
            max_token_bytes,
            realm,
            patient_claim,
            unconstrained_search: self.unconstrained_search.unwrap_or_default(),
            operations,
            smart_configuration: self.smart_configuration,
            mode: self.mode.unwrap_or_default(),
            fhir_base_urls,
            response_denial: self.response_denial.unwrap_or_default(),
            max_request_body_bytes,
            max_response_body_bytes,
            body_checks: self.body_checks.unwrap_or(true),
            audit: AuditConfig {
                log: self.audit_log.unwrap_or(true),
                audit_event: self.audit_event.map(|a| a.validate("audit_event")).transpose()?,
            },
            revocation: self
                .revocation
                .map(|r| r.validate("revocation"))
                .transpose()?
                .unwrap_or_default(),
            anomaly_brake: self
                .anomaly_brake
                .map(|b| b.validate("anomaly_brake"))
                .transpose()?,
            forward_headers: self
                .forward_headers
                .map(|names| ForwardHeaders::parse(&names, "forward_headers"))
                .transpose()?
                .unwrap_or_default(),
            version_header: self.version_header.unwrap_or(false),
        })
    }
}

/// Largest `audit_event.batch_size`.
pub const MAX_AUDIT_BATCH: usize = 500;
/// Largest `audit_event.max_queue`.
pub const MAX_AUDIT_QUEUE: usize = 100_000;
/// Largest number of entries in each configured revocation list.
pub const MAX_REVOKED_ENTRIES: usize = 100_000;

fn in_range<T: PartialOrd + fmt::Display + Copy>(
    v: Option<T>,
    default: T,
    min: T,
    max: T,
    field: String,
) -> Result<T, ConfigError> {
    let n = v.unwrap_or(default);
    if n < min || n > max {
        return Err(ConfigError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(n)
}

fn http_uri(v: Option<String>, field: String) -> Result<HttpUri, ConfigError> {
    let uri = required(v, &field)?;
    HttpUri::parse(&uri).map_err(|m| ConfigError::new(field, m))
}

impl RawAuditEvent {
    fn validate(self, at: &str) -> Result<AuditEventSink, ConfigError> {
        let f = |k: &str| format!("{at}.{k}");
        let uri = http_uri(self.uri, f("uri"))?;
        if uri.path.contains('?') {
            return Err(ConfigError::new(f("uri"), "must be a FHIR base without a query"));
        }
        let batch_size = in_range(self.batch_size, 20, 1, MAX_AUDIT_BATCH, f("batch_size"))?;
        let max_queue = in_range(self.max_queue, 1000, 1, MAX_AUDIT_QUEUE, f("max_queue"))?;
        if max_queue < batch_size {
            return Err(ConfigError::new(f("max_queue"), "must be at least batch_size"));
        }
        let observer = self.observer.unwrap_or_else(|| "smart-fhir-edge".to_string());
        if observer.trim().is_empty() || observer.chars().any(char::is_control) {
            return Err(ConfigError::new(
                f("observer"),
                "must be non-empty, without control characters",
            ));
        }
        Ok(AuditEventSink {
            uri,
            cluster: cluster(self.cluster, f("cluster"))?,
            batch_size,
            flush_interval_ms: in_range(self.flush_interval_ms, 1000, 10, 600_000, f("flush_interval_ms"))?,
            max_queue,
            timeout_ms: timeout(self.timeout_ms, f("timeout_ms"))?,
            observer,
        })
    }
}

fn revoked_list(v: Option<Vec<String>>, field: String) -> Result<Vec<String>, ConfigError> {
    let list = v.unwrap_or_default();
    if list.len() > MAX_REVOKED_ENTRIES {
        return Err(ConfigError::new(
            field,
            format!("must list at most {MAX_REVOKED_ENTRIES} entries"),
        ));
    }
    if let Some(i) = list.iter().position(|e| e.is_empty()) {
        return Err(ConfigError::new(format!("{field}[{i}]"), "must not be empty"));
    }
    Ok(list)
}

impl RawRevocation {
    fn validate(self, at: &str) -> Result<RevocationConfig, ConfigError> {
        let f = |k: &str| format!("{at}.{k}");
        let refresh = match self.refresh {
            None => None,
            Some(r) => {
                let g = |k: &str| format!("{at}.refresh.{k}");
                Some(RevocationRefresh {
                    uri: http_uri(r.uri, g("uri"))?,
                    cluster: cluster(r.cluster, g("cluster"))?,
                    interval_s: in_range(r.interval_s, 60, 1, 86_400, g("interval_s"))?,
                    timeout_ms: timeout(r.timeout_ms, g("timeout_ms"))?,
                })
            }
        };
        Ok(RevocationConfig {
            client_ids: revoked_list(self.client_ids, f("client_ids"))?,
            subjects: revoked_list(self.subjects, f("subjects"))?,
            jtis: revoked_list(self.jtis, f("jtis"))?,
            refresh,
        })
    }
}

impl RawProvider {
    fn validate(self, at: &str) -> Result<Provider, ConfigError> {
        let issuer = required(self.issuer, &format!("{at}.issuer"))?;
        HttpUri::parse(&issuer).map_err(|m| ConfigError::new(format!("{at}.issuer"), m))?;

        let audiences = required(self.audiences, &format!("{at}.audiences"))?;
        if audiences.is_empty() || audiences.iter().any(|a| a.is_empty()) {
            return Err(ConfigError::new(
                format!("{at}.audiences"),
                "must list at least one non-empty audience",
            ));
        }

        let sources = [
            self.remote_jwks.is_some(),
            self.local_jwks.is_some(),
            self.discovery.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(ConfigError::new(
                at,
                "needs exactly one of remote_jwks, local_jwks or discovery",
            ));
        }
        let keys = if let Some(r) = self.remote_jwks {
            let f = |k: &str| format!("{at}.remote_jwks.{k}");
            let uri = required(r.uri, &f("uri"))?;
            let uri = HttpUri::parse(&uri).map_err(|m| ConfigError::new(f("uri"), m))?;
            KeySource::Remote(RemoteJwks {
                uri,
                cluster: cluster(r.cluster, f("cluster"))?,
                timeout_ms: timeout(r.timeout_ms, f("timeout_ms"))?,
                cache_duration_s: positive(
                    r.cache_duration_s,
                    DEFAULT_CACHE_DURATION_S,
                    f("cache_duration_s"),
                )?,
                min_refetch_interval_s: positive(
                    r.min_refetch_interval_s,
                    DEFAULT_MIN_REFETCH_S,
                    f("min_refetch_interval_s"),
                )?,
            })
        } else if let Some(d) = self.discovery {
            let f = |k: &str| format!("{at}.discovery.{k}");
            let doc = d.document.unwrap_or_else(|| "openid-configuration".to_string());
            if doc != "openid-configuration" && doc != "smart-configuration" {
                return Err(ConfigError::new(
                    f("document"),
                    "must be openid-configuration or smart-configuration",
                ));
            }
            let uri = format!("{}/.well-known/{doc}", issuer.trim_end_matches('/'));
            let uri = HttpUri::parse(&uri).map_err(|m| ConfigError::new(format!("{at}.issuer"), m))?;
            KeySource::Discovery(Discovery {
                uri,
                cluster: cluster(d.cluster, f("cluster"))?,
                timeout_ms: timeout(d.timeout_ms, f("timeout_ms"))?,
                cache_duration_s: positive(
                    d.cache_duration_s,
                    DEFAULT_CACHE_DURATION_S,
                    f("cache_duration_s"),
                )?,
                min_refetch_interval_s: positive(
                    d.min_refetch_interval_s,
                    DEFAULT_MIN_REFETCH_S,
                    f("min_refetch_interval_s"),
                )?,
            })
        } else {
            let field = format!("{at}.local_jwks");
            let text = match self.local_jwks {
                Some(serde_json::Value::String(s)) => s,
                Some(v @ serde_json::Value::Object(_)) => v.to_string(),
                _ => {
                    return Err(ConfigError::new(
                        field,
                        "must be a JWKS object or a string holding one",
                    ))
                }
            };
            KeySource::Local(text)
        };

        let algorithms = match self.algorithms {
            None => SUPPORTED_ALGORITHMS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                if list.is_empty() {
                    return Err(ConfigError::new(format!("{at}.algorithms"), "must not be empty"));
                }
                for (j, a) in list.iter().enumerate() {
                    if !SUPPORTED_ALGORITHMS.contains(&a.as_str()) {
                        return Err(ConfigError::new(
                            format!("{at}.algorithms[{j}]"),
                            format!(
                                "`{a}` is not supported (supported: {})",
                                SUPPORTED_ALGORITHMS.join(", ")
                            ),
                        ));
                    }
                }
                list
            }
        };

        if self.max_lifetime_s == Some(0) {
            return Err(ConfigError::new(
                format!("{at}.max_lifetime_s"),
                "must be greater than 0",
            ));
        }

        let introspection = match self.introspection {
            Some(i) => i.validate(&format!("{at}.introspection"))?,
            None => None,
        };

        Ok(Provider {
            issuer,
            audiences,
            keys,
            algorithms,
            max_lifetime_s: self.max_lifetime_s,
            introspection,
        })
    }
}

impl RawIntrospection {
    /// `None` when the mode is `off`.
    fn validate(self, at: &str) -> Result<Option<Introspection>, ConfigError> {
        let f = |k: &str| format!("{at}.{k}");
        let mode = required(self.mode, &f("mode"))?;
        if mode == IntrospectionMode::Off {
            return Ok(None);
        }
        let endpoint = required(self.endpoint, &f("endpoint"))?;
        let endpoint = HttpUri::parse(&endpoint).map_err(|m| ConfigError::new(f("endpoint"), m))?;
        let auth = required(self.client_auth, &f("client_auth"))?;
        let non_empty = |v: Option<String>, k: &str| -> Result<String, ConfigError> {
            match v {
                Some(s) if !s.is_empty() && !s.chars().any(char::is_control) => Ok(s),
                _ => Err(ConfigError::new(
                    f(&format!("client_auth.{k}")),
                    "is required and must not be empty",
                )),
            }
        };
        let client_auth = match auth.method.as_deref() {
            Some("client_secret_basic") => ClientAuth::ClientSecretBasic {
                client_id: non_empty(auth.client_id, "client_id")?,
                client_secret: non_empty(auth.client_secret, "client_secret")?,
            },
            Some("bearer") => ClientAuth::Bearer {
                token: non_empty(auth.token, "token")?,
            },
            _ => {
                return Err(ConfigError::new(
                    f("client_auth.method"),
                    "must be client_secret_basic or bearer",
                ))
            }
        };
        let max_entries = self.max_entries.unwrap_or(10_000);
        if max_entries == 0 || max_entries > 1_000_000 {
            return Err(ConfigError::new(
                f("max_entries"),
                "must be between 1 and 1000000",
            ));
        }
        Ok(Some(Introspection {
            endpoint,
            cluster: cluster(self.cluster, f("cluster"))?,
            timeout_ms: timeout(self.timeout_ms, f("timeout_ms"))?,
            mode,
            client_auth,
            max_cache_s: positive(self.max_cache_s, 60, f("max_cache_s"))?,
            negative_cache_s: positive(self.negative_cache_s, 10, f("negative_cache_s"))?,
            max_entries,
        }))
    }
}

impl RawOperation {
    fn validate(self, at: &str) -> Result<OperationRule, ConfigError> {
        let name = required(self.name, &format!("{at}.name"))?;
        let bare = name.strip_prefix('$').unwrap_or(&name);
        if bare.is_empty()
            || !bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                format!("{at}.name"),
                "must be an operation name like $validate",
            ));
        }
        let levels: BTreeSet<OperationLevel> = match self.levels {
            Some(l) if l.is_empty() => {
                return Err(ConfigError::new(format!("{at}.levels"), "must not be empty"))
            }
            Some(l) => l.into_iter().collect(),
            None => [OperationLevel::Type, OperationLevel::Instance]
                .into_iter()
                .collect(),
        };
        let permissions = required(self.permissions, &format!("{at}.permissions"))?;
        let order = "cruds";
        let mut last = None;
        for ch in permissions.chars() {
            let pos = order.find(ch);
            if pos.is_none() || pos <= last {
                return Err(ConfigError::new(
                    format!("{at}.permissions"),
                    "must be SMART v2 letters in the order c, r, u, d, s (for example \"rs\")",
                ));
            }
            last = pos;
        }
        if permissions.is_empty() {
            return Err(ConfigError::new(format!("{at}.permissions"), "must not be empty"));
        }
        Ok(OperationRule {
            name: format!("${bare}"),
            levels,
            resource_types: self.resource_types.unwrap_or_default(),
            permissions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "fhir_base": "/fhir",
            "providers": [{
                "issuer": "https://idp.example.org",
                "audiences": ["https://ehr.example.org/fhir"],
                "remote_jwks": {"uri": "https://idp.example.org/jwks", "cluster": "idp",
                                "timeout_ms": 2000, "cache_duration_s": 300},
                "algorithms": ["RS256", "ES256"]
            }],
            "clock_skew_s": 60,
            "public_paths": ["/fhir/metadata", "/fhir/.well-known/smart-configuration"]
        })
    }

    fn parse(v: &serde_json::Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn accepts_the_documented_contract() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.fhir_base, "/fhir");
        assert_eq!(c.clock_skew_s, 60);
        assert_eq!(c.providers.len(), 1);
        let KeySource::Remote(r) = &c.providers[0].keys else {
            panic!("remote expected")
        };
        assert_eq!(r.cluster, "idp");
        assert_eq!(r.uri.authority, "idp.example.org");
        assert_eq!(r.uri.path, "/jwks");
        assert_eq!(r.min_refetch_interval_s, 30);
        assert_eq!(c.max_token_bytes, 16384);
        assert_eq!(c.mode, Mode::Enforce);
        assert_eq!(c.unconstrained_search, UnconstrainedSearch::Constrain);
    }

    #[test]
    fn defaults_public_paths_from_fhir_base() {
        let mut v = minimal();
        v.as_object_mut().unwrap().remove("public_paths");
        v["fhir_base"] = "/r4/".into();
        let c = parse(&v).unwrap();
        assert_eq!(c.fhir_base, "/r4");
        assert_eq!(
            c.public_paths,
            vec!["/r4/metadata", "/r4/.well-known/smart-configuration"]
        );
    }

    #[test]
    fn refuses_bad_configuration_naming_the_field() {
        type Edit = fn(&mut serde_json::Value);
        let cases: &[(&str, Edit)] = &[
            ("providers", |v| {
                v.as_object_mut().unwrap().remove("providers");
            }),
            ("providers", |v| v["providers"] = serde_json::json!([])),
            ("surprise", |v| v["surprise"] = 1.into()),
            ("providers[0].shoe_size", |v| {
                v["providers"][0]["shoe_size"] = 1.into()
            }),
            ("providers[0].issuer", |v| {
                v["providers"][0]["issuer"] = "idp".into()
            }),
            ("providers[0].audiences", |v| {
                v["providers"][0]["audiences"] = serde_json::json!([])
            }),
            ("providers[0].remote_jwks.uri", |v| {
                v["providers"][0]["remote_jwks"]["uri"] = "ftp://x/y".into()
            }),
            ("providers[0].remote_jwks.cluster", |v| {
                v["providers"][0]["remote_jwks"]
                    .as_object_mut()
                    .unwrap()
                    .remove("cluster");
            }),
            ("providers[0].remote_jwks.timeout_ms", |v| {
                v["providers"][0]["remote_jwks"]["timeout_ms"] = 0.into()
            }),
            ("providers[0].remote_jwks.cache_duration_s", |v| {
                v["providers"][0]["remote_jwks"]["cache_duration_s"] = 0.into()
            }),
            ("providers[0].algorithms[1]", |v| {
                v["providers"][0]["algorithms"] = serde_json::json!(["RS256", "HS256"])
            }),
            ("providers[0].algorithms[0]", |v| {
                v["providers"][0]["algorithms"] = serde_json::json!(["none"])
            }),
            ("providers[0]", |v| {
                v["providers"][0]["local_jwks"] = serde_json::json!({"keys": []})
            }),
            ("providers[1].issuer", |v| {
                let p = v["providers"][0].clone();
                v["providers"].as_array_mut().unwrap().push(p);
            }),
            ("fhir_base", |v| v["fhir_base"] = "fhir".into()),
            ("fhir_base", |v| v["fhir_base"] = "/a/../fhir".into()),
            ("clock_skew_s", |v| v["clock_skew_s"] = 100000.into()),
            ("clock_skew_s", |v| v["clock_skew_s"] = "60".into()),
            ("public_paths[1]", |v| v["public_paths"][1] = "metadata".into()),
            ("max_token_bytes", |v| v["max_token_bytes"] = 10.into()),
            ("realm", |v| v["realm"] = "a\"b".into()),
            ("operations[0].permissions", |v| {
                v["operations"] = serde_json::json!([{"name": "$lastn", "permissions": "sr"}])
            }),
            ("operations[0].name", |v| {
                v["operations"] = serde_json::json!([{"name": "$", "permissions": "s"}])
            }),
            ("smart_configuration", |v| {
                v["smart_configuration"] = serde_json::json!([1])
            }),
            ("fhir_base_urls[0]", |v| {
                v["fhir_base_urls"] = serde_json::json!(["https://ehr.example/fhir?x=1"])
            }),
            ("max_request_body_bytes", |v| {
                v["max_request_body_bytes"] = 10.into()
            }),
            ("max_response_body_bytes", |v| {
                v["max_response_body_bytes"] = (u64::MAX).into()
            }),
            ("response_denial", |v| v["response_denial"] = "hide".into()),
            ("body_checks", |v| v["body_checks"] = "yes".into()),
            ("version_header", |v| v["version_header"] = 1.into()),
        ];
        for (field, edit) in cases {
            let mut v = minimal();
            edit(&mut v);
            let err = parse(&v).expect_err(field);
            assert_eq!(
                err.field, *field,
                "expected an error naming `{field}`, got: {err}"
            );
        }
    }

    #[test]
    fn body_checks_default_on_with_bounded_buffers() {
        let c = parse(&minimal()).unwrap();
        assert!(c.body_checks);
        assert_eq!(
            c.max_request_body_bytes,
            crate::body::DEFAULT_MAX_REQUEST_BODY_BYTES
        );
        assert_eq!(
            c.max_response_body_bytes,
            crate::body::DEFAULT_MAX_RESPONSE_BODY_BYTES
        );
        assert_eq!(c.response_denial, ResponseDenial::Forbidden);
        assert!(c.fhir_base_urls.is_empty());
        let mut v = minimal();
        v["body_checks"] = false.into();
        v["response_denial"] = "not-found".into();
        v["fhir_base_urls"] = serde_json::json!(["https://ehr.example/fhir/"]);
        v["max_request_body_bytes"] = 4096.into();
        let c = parse(&v).unwrap();
        assert!(!c.body_checks);
        assert_eq!(c.response_denial, ResponseDenial::NotFound);
        assert_eq!(c.fhir_base_urls, vec!["https://ehr.example/fhir".to_string()]);
        assert_eq!(c.max_request_body_bytes, 4096);
    }

    #[test]
    fn refuses_empty_and_non_json_configuration() {
        assert_eq!(Config::from_json(b"  ").unwrap_err().field, "(root)");
        assert!(Config::from_json(b"{not json").is_err());
        assert!(Config::from_json(b"[]").is_err());
    }

    #[test]
    fn local_jwks_accepts_object_or_string() {
        for jwks in [
            serde_json::json!({"keys": []}),
            serde_json::json!("{\"keys\": []}"),
        ] {
            let mut v = minimal();
            let p = v["providers"][0].as_object_mut().unwrap();
            p.remove("remote_jwks");
            p.insert("local_jwks".into(), jwks);
            let c = parse(&v).unwrap();
            assert!(matches!(&c.providers[0].keys, KeySource::Local(s) if s.contains("keys")));
        }
    }

    #[test]
    fn discovery_builds_the_well_known_uri_from_the_issuer() {
        let mut v = minimal();
        let p = v["providers"][0].as_object_mut().unwrap();
        p.remove("remote_jwks");
        p.insert(
            "discovery".into(),
            serde_json::json!({"cluster": "idp", "document": "smart-configuration"}),
        );
        let c = parse(&v).unwrap();
        let KeySource::Discovery(d) = &c.providers[0].keys else {
            panic!("discovery expected")
        };
        assert_eq!(d.uri.path, "/.well-known/smart-configuration");
    }

    #[test]
    fn http_uri_splits_authority_and_path() {
        let u = HttpUri::parse("http://127.0.0.1:8080/a/b?c=d").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:8080", "/a/b?c=d")
        );
        assert_eq!(HttpUri::parse("https://h").unwrap().path, "/");
        for bad in ["h/p", "https://", "https://u@h/", "https://h/a b", "file:///x"] {
            assert!(HttpUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forward_headers_default_to_every_fact_but_the_identity_and_refuse_unknown_names() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.forward_headers, ForwardHeaders::DEFAULT);
        for h in FORWARDABLE_HEADERS {
            assert_eq!(c.forward_headers.includes(h), h != "x-smart-identity", "{h}");
        }
        for (names, want) in [
            (serde_json::json!([]), vec![]),
            (
                serde_json::json!(["X-Smart-Client-Id", "x-smart-identity"]),
                vec!["x-smart-client-id", "x-smart-identity"],
            ),
            (
                serde_json::json!(FORWARDABLE_HEADERS),
                FORWARDABLE_HEADERS.to_vec(),
            ),
        ] {
            let mut v = minimal();
            v["forward_headers"] = names.clone();
            let c = parse(&v).unwrap();
            let got: Vec<&str> = FORWARDABLE_HEADERS
                .iter()
                .copied()
                .filter(|h| c.forward_headers.includes(h))
                .collect();
            assert_eq!(got, want, "{names}");
        }
        for bad in [
            serde_json::json!(["authorization"]),
            serde_json::json!(["x-smart-other"]),
            serde_json::json!("x-smart-sub"),
        ] {
            let mut v = minimal();
            v["forward_headers"] = bad.clone();
            let e = parse(&v).unwrap_err();
            assert!(e.to_string().contains("forward_headers"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_version_header_is_off_unless_asked_for() {
        assert!(!parse(&minimal()).unwrap().version_header);
        let mut v = minimal();
        v["version_header"] = true.into();
        assert!(parse(&v).unwrap().version_header);
    }

    #[test]
    fn audit_outputs_default_to_the_log_line_only() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(
            c.audit,
            AuditConfig {
                log: true,
                audit_event: None
            }
        );
        let mut v = minimal();
        v["audit_log"] = false.into();
        v["audit_event"] = serde_json::json!({"uri": "http://audit.example.org/fhir", "cluster": "audit"});
        let c = parse(&v).unwrap();
        assert!(!c.audit.log);
        let sink = c.audit.audit_event.unwrap();
        assert_eq!(
            (
                sink.batch_size,
                sink.flush_interval_ms,
                sink.max_queue,
                sink.timeout_ms
            ),
            (20, 1000, 1000, 2000)
        );
        assert_eq!(sink.observer, "smart-fhir-edge");
        assert_eq!(sink.uri.path, "/fhir");
    }

    #[test]
    fn refuses_bad_audit_event_settings_naming_the_field() {
        let cases = [
            ("audit_event.uri", serde_json::json!({"cluster": "a"})),
            (
                "audit_event.uri",
                serde_json::json!({"uri": "http://h/fhir?x=1", "cluster": "a"}),
            ),
            ("audit_event.cluster", serde_json::json!({"uri": "http://h/fhir"})),
            (
                "audit_event.batch_size",
                serde_json::json!({"uri": "http://h/", "cluster": "a", "batch_size": 0}),
            ),
            (
                "audit_event.max_queue",
                serde_json::json!({"uri": "http://h/", "cluster": "a", "batch_size": 50, "max_queue": 10}),
            ),
            (
                "audit_event.flush_interval_ms",
                serde_json::json!({"uri": "http://h/", "cluster": "a", "flush_interval_ms": 1}),
            ),
            (
                "audit_event.observer",
                serde_json::json!({"uri": "http://h/", "cluster": "a", "observer": " "}),
            ),
            (
                "audit_event.extra",
                serde_json::json!({"uri": "http://h/", "cluster": "a", "extra": 1}),
            ),
        ];
        for (field, sink) in cases {
            let mut v = minimal();
            v["audit_event"] = sink;
            assert_eq!(parse(&v).unwrap_err().field, field);
        }
    }

    #[test]
    fn introspection_is_validated_naming_the_field() {
        let good = serde_json::json!({"endpoint": "https://idp.example.org/introspect", "cluster": "idp",
            "mode": "opaque", "client_auth": {"method": "client_secret_basic", "client_id": "gw", "client_secret": "s"}});
        let mut v = minimal();
        v["providers"][0]["introspection"] = good.clone();
        let c = parse(&v).unwrap();
        let i = c.providers[0].introspection.as_ref().unwrap();
        assert_eq!((i.max_cache_s, i.negative_cache_s, i.timeout_ms), (60, 10, 2000));
        let mut off = minimal();
        off["providers"][0]["introspection"] = serde_json::json!({"mode": "off"});
        assert!(parse(&off).unwrap().providers[0].introspection.is_none());
        type Edit = fn(&mut serde_json::Value);
        let cases: &[(&str, Edit)] = &[
            ("providers[0].introspection.mode", |i| {
                i["mode"] = "sometimes".into()
            }),
            ("providers[0].introspection.endpoint", |i| {
                i["endpoint"] = "idp/introspect".into()
            }),
            ("providers[0].introspection.cluster", |i| i["cluster"] = "".into()),
            ("providers[0].introspection.client_auth.method", |i| {
                i["client_auth"]["method"] = "mtls".into()
            }),
            ("providers[0].introspection.client_auth.client_secret", |i| {
                i["client_auth"].as_object_mut().unwrap().remove("client_secret");
            }),
            ("providers[0].introspection.client_auth.token", |i| {
                i["client_auth"] = serde_json::json!({"method": "bearer"})
            }),
            ("providers[0].introspection.max_cache_s", |i| {
                i["max_cache_s"] = 0.into()
            }),
        ];
        for (field, edit) in cases {
            let mut i = good.clone();
            edit(&mut i);
            let mut v = minimal();
            v["providers"][0]["introspection"] = i;
            assert_eq!(parse(&v).unwrap_err().field, *field);
        }
        let mut two = minimal();
        two["providers"][0]["introspection"] = good.clone();
        let mut second = two["providers"][0].clone();
        second["issuer"] = "https://other.example.org".into();
        two["providers"].as_array_mut().unwrap().push(second);
        assert_eq!(parse(&two).unwrap_err().field, "providers[1].introspection");
    }

    #[test]
    fn operations_default_to_type_and_instance_levels() {
        let mut v = minimal();
        v["operations"] =
            serde_json::json!([{"name": "lastn", "resource_types": ["Observation"], "permissions": "rs"}]);
        let c = parse(&v).unwrap();
        assert_eq!(c.operations[0].name, "$lastn");
        assert!(c.operations[0].levels.contains(&OperationLevel::Type));
        assert!(!c.operations[0].levels.contains(&OperationLevel::System));
    }
}
