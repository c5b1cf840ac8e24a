//! Metric names and the per-VM registry: every metric is defined once per VM (on first use) and
//! then updated by id through a [`MetricHost`] (proxy-wasm `define_metric`, `increment_metric`,
//! `record_metric` in the adapter).
//!
//! Names follow Envoy's conventions: dot-separated, and the filter's metrics start with
//! `smart_fhir_edge.`. Envoy files a Wasm module's metrics under its `wasmcustom.` namespace and
//! Prometheus output drops that namespace. Tag values are embedded as `.<tag>.<value>` segments
//! after the metric's own name (the reason code, which may contain dots, is always last), so that
//! the `stats_config.stats_tags` rules in [`STATS_TAGS`] turn them into Prometheus labels:
//!
//! ```text
//! wasmcustom.smart_fhir_edge.requests_total.decision.deny.reason.invalid_token.expired
//!   -> smart_fhir_edge_requests_total{decision="deny",reason="invalid_token.expired"}
//! ```
//!
//! Without those rules every tag combination is its own flat metric name, which still scrapes.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::audit::AuditRecord;
use crate::jwks::VerifyingKey;
use crate::token::{Algorithm, SignatureError, SignatureVerifier};

/// Prefix of every metric this filter defines.
pub const PREFIX: &str = "smart_fhir_edge";

/// Requests decided, by decision and reason (counter).
pub const REQUESTS: &str = "smart_fhir_edge.requests_total";
/// Requests decided, by FHIR interaction kind (`none` when unclassified) (counter).
pub const INTERACTIONS: &str = "smart_fhir_edge.interactions_total";
/// Verified-token cache hits (counter).
pub const TOKEN_CACHE_HITS: &str = "smart_fhir_edge.token_cache_hits_total";
/// Verified-token cache misses: tokens verified afresh (counter).
pub const TOKEN_CACHE_MISSES: &str = "smart_fhir_edge.token_cache_misses_total";
/// Decisions about a token by what decided (`token_source`: `jwt`, `introspection_cached`,
/// `introspection_live`) (counter).
pub const TOKEN_CHECKS: &str = "smart_fhir_edge.token_checks_total";
/// Introspection callouts by outcome (`active`, `inactive`, `unavailable`, `invalid`) (counter).
pub const INTROSPECTIONS: &str = "smart_fhir_edge.introspections_total";
/// Time spent in one signature verification, microseconds (histogram).
pub const SIGNATURE_VERIFICATION_US: &str = "smart_fhir_edge.signature_verification_us";
/// Key-set fetches by provider index and outcome (`updated`, `unchanged`, `discovered`,
/// `failed`) (counter).
pub const JWKS_FETCHES: &str = "smart_fhir_edge.jwks_fetches_total";
/// Seconds since the provider's key set in use was fetched (gauge, per provider index).
pub const JWKS_KEY_AGE_SECONDS: &str = "smart_fhir_edge.jwks_key_age_seconds";
/// Revocation-list refreshes by outcome (`updated`, `unchanged`, `failed`) (counter).
pub const REVOCATION_REFRESHES: &str = "smart_fhir_edge.revocation_refreshes_total";
/// Response bodies checked, by outcome (`passed`, `filtered`, `refused`) (counter).
pub const RESPONSE_CHECKS: &str = "smart_fhir_edge.response_checks_total";
/// AuditEvents the FHIR server accepted (counter).
pub const AUDIT_EVENTS_SENT: &str = "smart_fhir_edge.audit_events_sent_total";
/// AuditEvents dropped: queue full, or refused by the server (counter).
pub const AUDIT_EVENTS_DROPPED: &str = "smart_fhir_edge.audit_events_dropped_total";
/// AuditEvent Bundles that failed (retried or refused) (counter).
pub const AUDIT_BATCHES_FAILED: &str = "smart_fhir_edge.audit_batches_failed_total";
/// Anomaly-brake events by outcome (`tripped`, `refused`, `audited`, `untracked`) (counter).
pub const ANOMALY_BRAKE: &str = "smart_fhir_edge.anomaly_brake_total";
/// The largest linear memory of the plugin's VMs, bytes (gauge; each VM raises it to its own
/// size on every tick).
pub const VM_MEMORY_MAX_BYTES: &str = "smart_fhir_edge.vm_memory_max_bytes";

/// Envoy `stats_config.stats_tags` rules (tag name, regex) that turn the embedded tag segments
/// into labels. The first capture group is removed from the name, the second is the value.
pub const STATS_TAGS: &[(&str, &str)] = &[
    (
        "decision",
        r"^wasmcustom\.smart_fhir_edge\.requests_total(\.decision\.([^.]+))",
    ),
    (
        "reason",
        r"^wasmcustom\.smart_fhir_edge\.requests_total\.decision\.[^.]+(\.reason\.(.+))$",
    ),
    (
        "interaction",
        r"^wasmcustom\.smart_fhir_edge\.interactions_total(\.interaction\.([^.]+))$",
    ),
    (
        "token_source",
        r"^wasmcustom\.smart_fhir_edge\.token_checks_total(\.token_source\.([a-z_]+))$",
    ),
    (
        "provider",
        r"^wasmcustom\.smart_fhir_edge\.jwks_[a-z_]+(\.provider\.([0-9]+))",
    ),
    (
        "outcome",
        r"^wasmcustom\.smart_fhir_edge\.[a-z_]+(?:\.provider\.[0-9]+)?(\.outcome\.([a-z]+))$",
    ),
];

/// The kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// The host's metrics: define once, then update by id.
pub trait MetricHost {
    /// Defines a metric, returning its id (`None` when the host refuses).
    fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32>;
    /// Adds to a counter.
    fn increment(&mut self, id: u32, delta: u64);
    /// Sets a gauge or records a histogram value.
    fn record(&mut self, id: u32, value: u64);
}

/// A metric name with tag segments: `base.tag.value...`. Values are kept as they are except
/// characters Envoy stat names and tag regexes cannot carry (controls, spaces, `:`), replaced by `_`.
pub fn tagged(base: &str, tags: &[(&str, &str)]) -> String {
    let mut s = base.to_string();
    for (tag, value) in tags {
        s.push('.');
        s.push_str(tag);
        s.push('.');
        s.extend(value.chars().map(|c| {
            if c.is_control() || c.is_whitespace() || c == ':' {
                '_'
            } else {
                c
            }
        }));
    }
    s
}

/// The metrics of one VM: ids by name.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<String, Option<u32>>,
    /// Counter ids by the static parts of their names (base and tag values): the counters of every
    /// request are found without formatting and hashing their full names.
    by_parts: HashMap<NameParts, Option<u32>, BuildHasherDefault<PartsHasher>>,
    /// The counters used most recently, found by the addresses of their static parts before any
    /// hashing (a request's four counters are nearly always the previous request's).
    recent: Vec<(NameParts, Option<u32>)>,
    /// Per-request counter increments not yet handed to the host, one entry per counter id: a
    /// host call costs Envoy thousands of instructions, so they go out together on the next
    /// [`Metrics::flush`] (the adapter's tick, every 100 ms) instead of four per request.
    pending: Vec<(u32, u64)>,
}

/// How many counters [`Metrics`] finds by address.
const RECENT_COUNTERS: usize = 16;

/// The same static string: same address and length (which implies the same text).
fn same_static(a: &'static str, b: &'static str) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()
}

fn same_parts(a: &NameParts, b: &NameParts) -> bool {
    same_static(a.0, b.0) && same_static(a.1, b.1) && same_static(a.2, b.2)
}

/// A counter name's static parts: its base and up to two tag values (`""` when absent).
type NameParts = (&'static str, &'static str, &'static str);

/// A cheap multiply-rotate hash, eight bytes at a time, for [`NameParts`]: they are this crate's own
/// constants (no input from requests), so no flooding-resistant hash is needed.
#[derive(Default)]
struct PartsHasher(u64);

impl Hasher for PartsHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (d, b) in word.iter_mut().zip(chunk) {
                *d = *b;
            }
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Metrics {
    fn id(&mut self, host: &mut dyn MetricHost, kind: MetricKind, name: String) -> Option<u32> {
        if let Some(id) = self.ids.get(&name) {
            return *id;
        }
        let id = host.define(kind, &name);
        self.ids.insert(name, id);
        id
    }

    /// Adds `delta` to a counter.
    pub fn count(&mut self, host: &mut dyn MetricHost, name: String, delta: u64) {
        if delta == 0 {
            return;
        }
        if let Some(id) = self.id(host, MetricKind::Counter, name) {
            host.increment(id, delta);
        }
    }

    /// Adds `delta` to the counter `name()`, known by its static `parts` after the first time. The
    /// counter is defined at once; the increment reaches the host at the next [`Metrics::flush`].
    fn count_parts(
        &mut self,
        host: &mut dyn MetricHost,
        parts: NameParts,
        name: impl FnOnce() -> String,
        delta: u64,
    ) {
        if delta == 0 {
            return;
        }
        let recent = self
            .recent
            .iter()
            .find(|(p, _)| same_parts(p, &parts))
            .map(|(_, id)| *id);
        let id = match recent {
            Some(id) => id,
            None => {
                let id = match self.by_parts.get(&parts) {
                    Some(id) => *id,
                    None => {
                        let id = self.id(host, MetricKind::Counter, name());
                        self.by_parts.insert(parts, id);
                        id
                    }
                };
                if self.recent.len() < RECENT_COUNTERS {
                    self.recent.push((parts, id));
                }
                id
            }
        };
        if let Some(id) = id {
            match self.pending.iter_mut().find(|(p, _)| *p == id) {
                Some((_, d)) => *d = d.saturating_add(delta),
                None => self.pending.push((id, delta)),
            }
        }
    }

    /// Hands the counted-but-unsent increments to the host (one call per counter that moved).
    pub fn flush(&mut self, host: &mut dyn MetricHost) {
        for (id, delta) in self.pending.drain(..) {
            host.increment(id, delta);
        }
    }

    /// Whether increments wait for [`Metrics::flush`].
    #[cfg(test)]
    fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Sets a gauge.
    pub fn gauge(&mut self, host: &mut dyn MetricHost, name: String, value: u64) {
        if let Some(id) = self.id(host, MetricKind::Gauge, name) {
            host.record(id, value);
        }
    }

    /// Records a histogram value.
    pub fn observe(&mut self, host: &mut dyn MetricHost, name: String, value: u64) {
        if let Some(id) = self.id(host, MetricKind::Histogram, name) {
            host.record(id, value);
        }
    }

    /// Counts a decided request: by decision and reason, by interaction, and the cache lookup.
    pub fn on_decision(&mut self, host: &mut dyn MetricHost, record: &AuditRecord) {
        let (decision, reason) = (record.decision.as_str(), record.reason);
        let requests = || tagged(REQUESTS, &[("decision", decision), ("reason", reason)]);
        self.count_parts(host, (REQUESTS, decision, reason), requests, 1);
        let kind = record.interaction.unwrap_or("none");
        let interactions = || tagged(INTERACTIONS, &[("interaction", kind)]);
        self.count_parts(host, (INTERACTIONS, kind, ""), interactions, 1);
        let cache = match record.token_cache_hit {
            Some(true) => Some(TOKEN_CACHE_HITS),
            Some(false) => Some(TOKEN_CACHE_MISSES),
            None => None,
        };
        if let Some(name) = cache {
            self.count_parts(host, (name, "", ""), || name.to_string(), 1);
        }
        if let Some(source) = record.token_source {
            let checks = || tagged(TOKEN_CHECKS, &[("token_source", source)]);
            self.count_parts(host, (TOKEN_CHECKS, source, ""), checks, 1);
        }
    }

    /// Counts an introspection callout by outcome (`active`, `inactive`, `unavailable`, `invalid`).
    pub fn on_introspection(&mut self, host: &mut dyn MetricHost, outcome: &str) {
        self.count(host, tagged(INTROSPECTIONS, &[("outcome", outcome)]), 1);
    }

    /// Counts a checked response by outcome (`passed`, `filtered`, `refused`).
    pub fn on_response_check(&mut self, host: &mut dyn MetricHost, outcome: &'static str) {
        let name = || tagged(RESPONSE_CHECKS, &[("outcome", outcome)]);
        self.count_parts(host, (RESPONSE_CHECKS, outcome, ""), name, 1);
    }

    /// Counts a key-set fetch outcome (`updated`, `unchanged`, `discovered`, `failed`).
    pub fn on_jwks_fetch(&mut self, host: &mut dyn MetricHost, provider: usize, outcome: &str) {
        let p = provider.to_string();
        let name = tagged(JWKS_FETCHES, &[("provider", &p), ("outcome", outcome)]);
        self.count(host, name, 1);
    }

    /// Sets a provider's key-set age.
    pub fn set_key_age(&mut self, host: &mut dyn MetricHost, provider: usize, age_s: u64) {
        let p = provider.to_string();
        self.gauge(host, tagged(JWKS_KEY_AGE_SECONDS, &[("provider", &p)]), age_s);
    }

    /// Predefines the metrics every dashboard reads, so they scrape as 0 before the first event.
    pub fn predefine(&mut self, host: &mut dyn MetricHost, providers: usize, audit_sink: bool) {
        for name in [TOKEN_CACHE_HITS, TOKEN_CACHE_MISSES] {
            self.id(host, MetricKind::Counter, name.to_string());
        }
        let jwt = tagged(TOKEN_CHECKS, &[("token_source", "jwt")]);
        self.id(host, MetricKind::Counter, jwt);
        self.id(host, MetricKind::Histogram, SIGNATURE_VERIFICATION_US.to_string());
        for p in 0..providers {
            let p = p.to_string();
            for outcome in ["updated", "unchanged", "failed"] {
                let name = tagged(JWKS_FETCHES, &[("provider", &p), ("outcome", outcome)]);
                self.id(host, MetricKind::Counter, name);
            }
        }
        if audit_sink {
            for name in [AUDIT_EVENTS_SENT, AUDIT_EVENTS_DROPPED, AUDIT_BATCHES_FAILED] {
                self.id(host, MetricKind::Counter, name.to_string());
            }
        }
    }
}

/// A signature verifier that measures every verification with an injected clock (microseconds)
/// and keeps the durations for the caller to record.
pub struct TimedVerifier<'a, C: Fn() -> u64> {
    inner: &'a dyn SignatureVerifier,
    clock_us: C,
    samples: Cell<[u64; 4]>,
    len: Cell<usize>,
}

impl<'a, C: Fn() -> u64> TimedVerifier<'a, C> {
    pub fn new(inner: &'a dyn SignatureVerifier, clock_us: C) -> Self {
        TimedVerifier {
            inner,
            clock_us,
            samples: Cell::new([0; 4]),
            len: Cell::new(0),
        }
    }

    /// The measured durations (at most four per decision are kept).
    pub fn samples(&self) -> Vec<u64> {
        let s = self.samples.get();
        s.get(..self.len.get()).map(<[u64]>::to_vec).unwrap_or_default()
    }
}

impl<C: Fn() -> u64> SignatureVerifier for TimedVerifier<'_, C> {
    fn verify(
        &self,
        alg: Algorithm,
        key: &VerifyingKey,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let start = (self.clock_us)();
        let result = self.inner.verify(alg, key, signing_input, signature);
        let took = (self.clock_us)().saturating_sub(start);
        let n = self.len.get();
        let mut s = self.samples.get();
        if let Some(slot) = s.get_mut(n) {
            *slot = took;
            self.samples.set(s);
            self.len.set(n + 1);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::audit::Verdict;
    use crate::claims::VerifiedClaims;
    use crate::config::Mode;
    use crate::decision::{Decision, Facts, RequestFacts};
    use crate::denial::Denial;

    #[derive(Default)]
    struct Host {
        defined: Vec<(MetricKind, String)>,
        values: HashMap<u32, u64>,
        refuse: bool,
    }

    impl MetricHost for Host {
        fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
            if self.refuse {
                return None;
            }
            self.defined.push((kind, name.to_string()));
            Some(self.defined.len() as u32 - 1)
        }
        fn increment(&mut self, id: u32, delta: u64) {
            *self.values.entry(id).or_default() += delta;
        }
        fn record(&mut self, id: u32, value: u64) {
            self.values.insert(id, value);
        }
    }

    impl Host {
        fn value(&self, name: &str) -> Option<u64> {
            let id = self.defined.iter().position(|(_, n)| n == name)? as u32;
            Some(self.values.get(&id).copied().unwrap_or(0))
        }
    }

    fn record_for(d: &Decision, mode: Mode) -> AuditRecord {
        let req = RequestFacts {
            method: "GET",
            path: "/fhir/Patient/1",
            headers: &[],
        };
        AuditRecord::for_decision(d, mode, "r", &req, 0).unwrap()
    }

    #[test]
    fn a_counter_is_one_metric_whether_found_by_address_or_by_name() {
        let mut m = Metrics::default();
        let mut host = Host::default();
        // The same text at another address (as a reason code from another constant would be).
        let copy: &'static str = String::from("allowed").leak();
        let mut seen = Vec::new();
        for i in 0..40 {
            // More distinct counters than are found by address.
            let reason: &'static str = if i % 2 == 0 { "allowed" } else { copy };
            m.count_parts(
                &mut host,
                (REQUESTS, "allow", reason),
                || tagged(REQUESTS, &[("decision", "allow"), ("reason", reason)]),
                1,
            );
            let other: &'static str = format!("r{}", i % 20).leak();
            m.count_parts(
                &mut host,
                (REQUESTS, "deny", other),
                || tagged(REQUESTS, &[("decision", "deny"), ("reason", other)]),
                1,
            );
            seen.push(other);
        }
        m.flush(&mut host);
        assert_eq!(
            host.value("smart_fhir_edge.requests_total.decision.allow.reason.allowed"),
            Some(40)
        );
        assert_eq!(
            host.defined.len(),
            1 + 20,
            "one metric per distinct name, whatever the address of its parts"
        );
        let total: u64 = host.values.values().sum();
        assert_eq!(total, 80, "every increment counted once");
    }

    #[test]
    fn request_counters_reach_the_host_together_at_the_flush_one_call_per_counter() {
        struct Calls(Host, usize);
        impl MetricHost for Calls {
            fn define(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
                self.0.define(kind, name)
            }
            fn increment(&mut self, id: u32, delta: u64) {
                self.1 += 1;
                self.0.increment(id, delta);
            }
            fn record(&mut self, id: u32, value: u64) {
                self.0.record(id, value);
            }
        }
        let mut host = Calls(Host::default(), 0);
        let mut m = Metrics::default();
        let facts = Facts {
            interaction: Some("read"),
            token_hash: Some("ab".into()),
            cache_hit: true,
            token_source: Some(crate::decision::TokenSource::Jwt),
            ..Facts::default()
        };
        let d = Decision::Deny(Denial::MissingToken, Box::new(facts));
        for _ in 0..100 {
            m.on_decision(&mut host, &record_for(&d, Mode::Enforce));
        }
        assert_eq!(host.1, 0, "no increment per request");
        assert!(m.has_pending());
        assert_eq!(
            host.0.value(TOKEN_CACHE_HITS),
            Some(0),
            "defined at once, counted later"
        );
        m.flush(&mut host);
        assert_eq!(host.1, 4, "one increment per counter that moved");
        assert!(!m.has_pending());
        for name in [
            "smart_fhir_edge.requests_total.decision.deny.reason.missing_token",
            "smart_fhir_edge.interactions_total.interaction.read",
            TOKEN_CACHE_HITS,
            "smart_fhir_edge.token_checks_total.token_source.jwt",
        ] {
            assert_eq!(host.0.value(name), Some(100), "{name}");
        }
        m.flush(&mut host);
        assert_eq!(host.1, 4, "nothing left to send");
    }

    #[test]
    fn names_embed_tags_after_the_metric_name_with_the_reason_last() {
        assert_eq!(
            tagged(
                REQUESTS,
                &[("decision", "deny"), ("reason", "invalid_token.expired")]
            ),
            "smart_fhir_edge.requests_total.decision.deny.reason.invalid_token.expired"
        );
        assert_eq!(
            tagged(JWKS_KEY_AGE_SECONDS, &[("provider", "0")]),
            "smart_fhir_edge.jwks_key_age_seconds.provider.0"
        );
        assert_eq!(tagged("m", &[("t", "a b:c\n")]), "m.t.a_b_c_");
        for (_, re) in STATS_TAGS {
            assert!(
                re.starts_with(r"^wasmcustom\.smart_fhir_edge\."),
                "anchored: {re}"
            );
        }
    }

    #[test]
    fn counts_each_decision_by_reason_interaction_and_cache_lookup_and_defines_once() {
        let mut host = Host::default();
        let mut m = Metrics::default();
        let verified = Facts {
            interaction: Some("read"),
            token_hash: Some("ab".into()),
            cache_hit: true,
            claims: Some(Rc::new(VerifiedClaims::default())),
            ..Facts::default()
        };
        let missing = Decision::Deny(Denial::MissingToken, Box::default());
        let allowed = Decision::Allow(crate::decision::Allowed {
            set_headers: Vec::new().into(),
            new_path: None,
            facts: verified.clone(),
            pending: None,
        });
        let miss = Decision::Allow(crate::decision::Allowed {
            set_headers: Vec::new().into(),
            new_path: None,
            facts: Facts {
                cache_hit: false,
                ..verified
            },
            pending: None,
        });
        for (d, mode) in [
            (&missing, Mode::Enforce),
            (&missing, Mode::Enforce),
            (&missing, Mode::AuditOnly),
            (&allowed, Mode::Enforce),
            (&allowed, Mode::Enforce),
            (&miss, Mode::Enforce),
        ] {
            let r = record_for(d, mode);
            m.on_decision(&mut host, &r);
        }
        m.flush(&mut host);
        let table = [
            (
                "smart_fhir_edge.requests_total.decision.deny.reason.missing_token",
                2,
            ),
            (
                "smart_fhir_edge.requests_total.decision.audit-only-deny.reason.missing_token",
                1,
            ),
            ("smart_fhir_edge.requests_total.decision.allow.reason.allowed", 3),
            ("smart_fhir_edge.interactions_total.interaction.none", 3),
            ("smart_fhir_edge.interactions_total.interaction.read", 3),
            (TOKEN_CACHE_HITS, 2),
            (TOKEN_CACHE_MISSES, 1),
        ];
        for (name, want) in table {
            assert_eq!(host.value(name), Some(want), "{name}");
        }
        assert_eq!(host.defined.len(), table.len(), "each metric defined once");
        assert_eq!(Verdict::AuditOnlyDeny.as_str(), "audit-only-deny");
    }

    #[test]
    fn gauges_set_and_histograms_record_and_a_refusing_host_is_asked_once() {
        let mut host = Host::default();
        let mut m = Metrics::default();
        m.set_key_age(&mut host, 1, 40);
        m.set_key_age(&mut host, 1, 41);
        assert_eq!(
            host.value("smart_fhir_edge.jwks_key_age_seconds.provider.1"),
            Some(41)
        );
        m.on_jwks_fetch(&mut host, 0, "failed");
        assert_eq!(
            host.value("smart_fhir_edge.jwks_fetches_total.provider.0.outcome.failed"),
            Some(1)
        );
        let mut refusing = Host {
            refuse: true,
            ..Host::default()
        };
        let mut m = Metrics::default();
        m.count(&mut refusing, "x".into(), 1);
        refusing.refuse = false;
        m.count(&mut refusing, "x".into(), 1);
        assert!(
            refusing.defined.is_empty(),
            "a refused definition is not retried per request"
        );
    }

    #[test]
    fn counts_token_checks_by_source_and_introspections_by_outcome() {
        let mut host = Host::default();
        let mut m = Metrics::default();
        for source in [
            crate::decision::TokenSource::Jwt,
            crate::decision::TokenSource::IntrospectionLive,
            crate::decision::TokenSource::IntrospectionCached,
            crate::decision::TokenSource::IntrospectionCached,
        ] {
            let facts = Facts {
                token_hash: Some("ab".into()),
                token_source: Some(source),
                ..Facts::default()
            };
            let d = Decision::Deny(Denial::MissingToken, Box::new(facts));
            m.on_decision(&mut host, &record_for(&d, Mode::Enforce));
        }
        m.flush(&mut host);
        m.on_introspection(&mut host, "inactive");
        let table = [
            ("smart_fhir_edge.token_checks_total.token_source.jwt", 1),
            (
                "smart_fhir_edge.token_checks_total.token_source.introspection_live",
                1,
            ),
            (
                "smart_fhir_edge.token_checks_total.token_source.introspection_cached",
                2,
            ),
            ("smart_fhir_edge.introspections_total.outcome.inactive", 1),
        ];
        for (name, want) in table {
            assert_eq!(host.value(name), Some(want), "{name}");
        }
        // The stats_tags rules turn the segments into labels.
        let tags: Vec<&str> = STATS_TAGS.iter().map(|(t, _)| *t).collect();
        assert!(tags.contains(&"token_source") && tags.contains(&"outcome"));
    }

    #[test]
    fn predefines_the_dashboard_metrics() {
        let mut host = Host::default();
        Metrics::default().predefine(&mut host, 2, true);
        let names: Vec<&str> = host.defined.iter().map(|(_, n)| n.as_str()).collect();
        assert!(names.contains(&"smart_fhir_edge.jwks_fetches_total.provider.1.outcome.unchanged"));
        assert!(names.contains(&AUDIT_EVENTS_DROPPED));
        assert!(host
            .defined
            .contains(&(MetricKind::Histogram, SIGNATURE_VERIFICATION_US.to_string())));
    }

    struct Fixed(Result<(), SignatureError>);
    impl SignatureVerifier for Fixed {
        fn verify(&self, _: Algorithm, _: &VerifyingKey, _: &[u8], _: &[u8]) -> Result<(), SignatureError> {
            self.0.clone()
        }
    }

    #[test]
    fn the_timed_verifier_measures_each_call_and_keeps_the_verdict() {
        let ticks = Cell::new(0u64);
        let clock = || {
            ticks.set(ticks.get() + 150);
            ticks.get()
        };
        let key = crate::jwks::KeySet::from_jwks(&crate::token::test_support::default_jwks()).unwrap();
        let vk = key.keys().first().unwrap().clone();
        for verdict in [Ok(()), Err(SignatureError::Invalid)] {
            let inner = Fixed(verdict.clone());
            let t = TimedVerifier::new(&inner, clock);
            assert_eq!(t.verify(Algorithm::RS256, &vk, b"in", b"sig"), verdict);
            assert_eq!(t.verify(Algorithm::RS256, &vk, b"in", b"sig"), verdict);
            assert_eq!(t.samples(), vec![150, 150]);
        }
    }
}
