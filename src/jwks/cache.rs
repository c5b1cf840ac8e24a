//! The key-set lifecycle of every provider, for one VM: fetch, refresh, backoff, unknown-`kid`
//! refetch throttle, and sharing fetched sets across Envoy's workers.
//!
//! A pure state machine. It never performs I/O: it is told the time, reads and writes the host's
//! shared data through [`SharedStore`], and answers with the callouts to make
//! ([`FetchRequest`]). The adapter makes the callouts and hands back the answers.
//!
//! Sharing across workers (each Envoy worker runs its own VM):
//! * `…/keys` holds the last good JWKS document and the time it was fetched. Every VM adopts a
//!   newer document from there, so one Envoy fetches once, not once per worker;
//! * `…/lease` is taken with compare-and-swap before fetching, and after a failure holds the time
//!   before which nobody retries (shared backoff);
//! * `…/kid` holds the time of the last unknown-`kid` refetch (shared throttle).
//!
//! A failed fetch never removes keys: the last good set stays until a good one replaces it.

use std::rc::Rc;

use crate::config::{HttpUri, KeySource, Provider};
use crate::shared::{backoff_s, LeaseHolder, SharedFetch};
pub use crate::shared::{CasMismatch, SharedStore};

/// Largest JWKS or discovery document accepted (bytes).
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// Longest backoff after repeated failures (seconds).
pub const MAX_BACKOFF_S: u64 = 300;

/// A callout the adapter must dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Which provider (index in the configuration) this is for.
    pub provider: usize,
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// The answer to a callout, as the adapter received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAnswer {
    /// The identity provider answered.
    Response { status: u16, body: Vec<u8> },
    /// The callout failed (timeout, reset, no healthy upstream).
    Failed,
}

/// What happened to a fetch, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    /// A new key set is in use.
    Updated,
    /// The document was fetched and is the one already in use.
    Unchanged,
    /// The discovery document named the `jwks_uri`; the key set is fetched next.
    Discovered,
    /// The fetch failed; the last good keys (if any) stay. `retry_in_s` until the next attempt.
    Failed { reason: String, retry_in_s: u64 },
    /// The answer was for no fetch in flight (late or unknown): ignored.
    Ignored,
}

/// The result of asking for an unknown-`kid` refetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refetch {
    /// A refetch is scheduled or already in flight: wait for the next generation.
    Scheduled,
    /// A refetch happened less than `min_refetch_interval_s` ago: refuse the token now.
    Throttled,
    /// The provider's keys are configured inline: nothing to refetch.
    NotApplicable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    cluster: String,
    timeout_ms: u64,
    cache_duration_s: u64,
    min_refetch_interval_s: u64,
    /// `None` for discovery until the document named it.
    jwks_uri: Option<HttpUri>,
    discovery_uri: Option<HttpUri>,
    /// The issuer a discovery document must name (OpenID Connect Discovery 4.3, RFC 8414 3.3).
    issuer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    None,
    Discovery { deadline_ms: u64 },
    Jwks { deadline_ms: u64 },
}

struct ProviderKeys<K> {
    plan: Option<Plan>,
    keys: Option<Rc<K>>,
    /// Time (s) the keys in use were fetched; 0 for inline keys.
    fetched_at: u64,
    /// Bumped every time a new key set is adopted.
    generation: u64,
    /// `cas` of the shared `keys` entry last adopted or written.
    seen_cas: Option<u32>,
    in_flight: InFlight,
    failures: u32,
    /// An unknown-`kid` refetch is due.
    refetch_due: bool,
    /// Another worker claimed an unknown-`kid` refetch after our keys were fetched: wait for its
    /// result (through shared data) until this time (s).
    awaiting_shared_until: Option<u64>,
    /// Its `keys`, `lease` and `kid` entries in shared data.
    shared: SharedFetch,
}

/// The key sets of every provider, for one VM.
pub struct KeyManager<K> {
    providers: Vec<ProviderKeys<K>>,
    parse: fn(&[u8]) -> Result<K, String>,
    /// Identifies this VM in leases.
    owner: String,
}

impl<K> KeyManager<K> {
    /// Builds the manager. Inline (`local_jwks`) key sets are parsed here: an unusable one is a
    /// configuration error naming the field.
    pub fn new(
        providers: &[Provider],
        parse: fn(&[u8]) -> Result<K, String>,
        owner: impl Into<String>,
    ) -> Result<Self, crate::config::ConfigError> {
        let mut out = Vec::with_capacity(providers.len());
        for (i, p) in providers.iter().enumerate() {
            let id = match &p.keys {
                KeySource::Local(_) => "local".to_string(),
                KeySource::Remote(r) => r.uri.uri.clone(),
                KeySource::Discovery(d) => d.uri.uri.clone(),
            };
            let shared = SharedFetch::new("jwks", &format!("{}|{}", p.issuer, id));
            let mut pk = ProviderKeys {
                plan: None,
                keys: None,
                fetched_at: 0,
                generation: 0,
                seen_cas: None,
                in_flight: InFlight::None,
                failures: 0,
                refetch_due: false,
                awaiting_shared_until: None,
                shared,
            };
            match &p.keys {
                KeySource::Local(text) => {
                    let keys = parse(text.as_bytes()).map_err(|e| {
                        crate::config::ConfigError::new(format!("providers[{i}].local_jwks"), e)
                    })?;
                    pk.keys = Some(Rc::new(keys));
                    pk.generation = 1;
                }
                KeySource::Remote(r) => {
                    pk.plan = Some(Plan {
                        cluster: r.cluster.clone(),
                        timeout_ms: r.timeout_ms,
                        cache_duration_s: r.cache_duration_s,
                        min_refetch_interval_s: r.min_refetch_interval_s,
                        jwks_uri: Some(r.uri.clone()),
                        discovery_uri: None,
                        issuer: p.issuer.clone(),
                    })
                }
                KeySource::Discovery(d) => {
                    pk.plan = Some(Plan {
                        cluster: d.cluster.clone(),
                        timeout_ms: d.timeout_ms,
                        cache_duration_s: d.cache_duration_s,
                        min_refetch_interval_s: d.min_refetch_interval_s,
                        jwks_uri: None,
                        discovery_uri: Some(d.uri.clone()),
                        issuer: p.issuer.clone(),
                    })
                }
            }
            out.push(pk);
        }
        Ok(KeyManager {
            providers: out,
            parse,
            owner: owner.into(),
        })
    }

    /// The key set in use for a provider, if any.
    pub fn keys(&self, provider: usize) -> Option<Rc<K>> {
        self.providers.get(provider).and_then(|p| p.keys.clone())
    }

    /// Bumped whenever the provider's key set changes (a verified-token cache keys on it).
    pub fn generation(&self, provider: usize) -> u64 {
        self.providers.get(provider).map_or(0, |p| p.generation)
    }

    /// Sum of all generations: changes whenever any key set changes.
    pub fn generations(&self) -> u64 {
        self.providers
            .iter()
            .map(|p| p.generation)
            .fold(0, u64::wrapping_add)
    }

    /// Whether a fetch for the provider is in flight or due, so a waiting request may still be
    /// served: a callout is in flight, a refetch is due, or there never were keys and no fetch has
    /// failed yet (the first fetch happens on the first tick, possibly on another worker).
    pub fn fetch_pending(&self, provider: usize) -> bool {
        self.providers.get(provider).is_some_and(|p| {
            p.plan.is_some()
                && (p.in_flight != InFlight::None
                    || p.refetch_due
                    || p.awaiting_shared_until.is_some()
                    || (p.keys.is_none() && p.failures == 0))
        })
    }

    /// The key set in use for a provider, borrowed.
    pub fn key_set_ref(&self, provider: usize) -> Option<&K> {
        self.providers.get(provider).and_then(|p| p.keys.as_deref())
    }

    /// Seconds since the provider's keys were fetched (`None` without keys or for inline keys).
    pub fn age_s(&self, provider: usize, now_s: u64) -> Option<u64> {
        let p = self.providers.get(provider)?;
        p.keys.as_ref()?;
        p.plan.as_ref()?;
        Some(now_s.saturating_sub(p.fetched_at))
    }

    /// How long a request may wait for this provider's keys (ms).
    pub fn wait_budget_ms(&self, provider: usize) -> u64 {
        self.providers
            .get(provider)
            .and_then(|p| p.plan.as_ref())
            .map_or(0, |plan| {
                // Discovery needs two callouts.
                if plan.discovery_uri.is_some() {
                    plan.timeout_ms.saturating_mul(2)
                } else {
                    plan.timeout_ms
                }
            })
    }

    /// An unknown `kid` was seen for `provider`: schedule a refetch unless one happened less than
    /// `min_refetch_interval_s` ago, on any worker.
    pub fn request_refetch(&mut self, provider: usize, now_s: u64, store: &mut dyn SharedStore) -> Refetch {
        let Some(p) = self.providers.get_mut(provider) else {
            return Refetch::NotApplicable;
        };
        let Some(plan) = &p.plan else {
            return Refetch::NotApplicable;
        };
        if p.in_flight != InFlight::None || p.refetch_due {
            return Refetch::Scheduled;
        }
        // The stamp is `<time> <cas of the key set its claimer had>`.
        let key = p.shared.key("kid");
        let (value, cas) = store.get(&key);
        let stamp = value
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|s| {
                let mut parts = s.split(' ');
                let last: u64 = parts.next().and_then(|t| t.parse().ok()).unwrap_or(0);
                let keys_cas: Option<u32> = parts.next().and_then(|c| c.parse().ok());
                (last, keys_cas)
            });
        if let Some((last, keys_cas)) = stamp {
            if now_s < last.saturating_add(plan.min_refetch_interval_s) {
                if keys_cas.is_some() && keys_cas == p.seen_cas && p.keys.is_some() {
                    // Another worker asked for a refetch while it had the keys we still have:
                    // its result arrives through shared data; wait for it rather than refuse.
                    let wait_s = plan.timeout_ms.div_ceil(1000).saturating_mul(2).max(1);
                    if now_s <= last.saturating_add(wait_s) {
                        p.awaiting_shared_until = Some(last.saturating_add(wait_s));
                        return Refetch::Scheduled;
                    }
                }
                return Refetch::Throttled;
            }
        }
        let claim = format!("{now_s} {}", p.seen_cas.unwrap_or(0));
        if store.set(&key, claim.as_bytes(), cas).is_err() {
            // Another worker claimed this refetch just now: its result arrives through shared data.
            let wait_s = plan.timeout_ms.div_ceil(1000).saturating_mul(2).max(1);
            p.awaiting_shared_until = Some(now_s.saturating_add(wait_s));
            return Refetch::Scheduled;
        }
        p.refetch_due = true;
        Refetch::Scheduled
    }

    /// Adopts newer key sets from shared data, expires callouts past their deadline, and returns
    /// the fetches this VM should make now. Call on every tick.
    pub fn poll(
        &mut self,
        now_ms: u64,
        store: &mut dyn SharedStore,
    ) -> (Vec<FetchRequest>, Vec<(usize, FetchOutcome)>) {
        let now_s = now_ms / 1000;
        let mut fetches = Vec::new();
        let mut outcomes = Vec::new();
        for i in 0..self.providers.len() {
            self.adopt_shared(i, store);
            if let Some(p) = self.providers.get_mut(i) {
                if p.awaiting_shared_until.is_some_and(|until| now_s > until) {
                    p.awaiting_shared_until = None;
                }
            }
            let Some(p) = self.providers.get_mut(i) else {
                continue;
            };
            let Some(plan) = p.plan.clone() else { continue };
            // A callout past its deadline (plus a margin for the host's own timeout) failed.
            match p.in_flight {
                InFlight::Discovery { deadline_ms } | InFlight::Jwks { deadline_ms }
                    if now_ms > deadline_ms.saturating_add(1000) =>
                {
                    let o = self.fail(i, now_s, "callout did not complete", store);
                    outcomes.push((i, o));
                }
                _ => {}
            }
            let Some(p) = self.providers.get_mut(i) else {
                continue;
            };
            if p.in_flight != InFlight::None {
                continue;
            }
            let refresh_at = p
                .fetched_at
                .saturating_add((plan.cache_duration_s * 4 / 5).max(1));
            let due = p.keys.is_none() || p.refetch_due || now_s >= refresh_at;
            if !due {
                continue;
            }
            // Take the shared lease: one fetch per Envoy, and nobody retries before the backoff ends.
            let (holder, cas) = p.shared.holder(store, &self.owner, now_s);
            match holder {
                LeaseHolder::Other => continue,
                // Our own backoff, unless an unknown `kid` asks for the keys now.
                LeaseHolder::Us if !p.refetch_due => continue,
                LeaseHolder::Us | LeaseHolder::Free => {}
            }
            let timeout_s = plan.timeout_ms.div_ceil(1000) + 1;
            if !p.shared.claim(store, &self.owner, now_s + timeout_s * 2, cas) {
                continue;
            }
            let p = match self.providers.get_mut(i) {
                Some(p) => p,
                None => continue,
            };
            p.refetch_due = false;
            let deadline_ms = now_ms.saturating_add(plan.timeout_ms);
            let (uri, state) = match (&plan.jwks_uri, &plan.discovery_uri) {
                (_, Some(d)) => (d.clone(), InFlight::Discovery { deadline_ms }),
                (Some(j), None) => (j.clone(), InFlight::Jwks { deadline_ms }),
                (None, None) => continue,
            };
            p.in_flight = state;
            fetches.push(FetchRequest {
                provider: i,
                cluster: plan.cluster.clone(),
                authority: uri.authority.clone(),
                path: uri.path.clone(),
                timeout_ms: plan.timeout_ms,
            });
        }
        (fetches, outcomes)
    }

    fn adopt_shared(&mut self, i: usize, store: &mut dyn SharedStore) {
        let parse = self.parse;
        let Some(p) = self.providers.get_mut(i) else {
            return;
        };
        if p.plan.is_none() {
            return;
        }
        let (entry, cas) = p.shared.read(store, "keys");
        if cas.is_none() || cas == p.seen_cas {
            return;
        }
        let Some((fetched_at, body)) = entry else {
            return;
        };
        if p.keys.is_some() && fetched_at < p.fetched_at {
            return;
        }
        match parse(&body) {
            Ok(keys) => {
                p.keys = Some(Rc::new(keys));
                p.fetched_at = fetched_at;
                p.generation += 1;
                p.seen_cas = cas;
                // Another worker fetched: ours is no longer needed.
                p.refetch_due = false;
                p.awaiting_shared_until = None;
                p.failures = 0;
            }
            Err(_) => p.seen_cas = cas,
        }
    }

    fn fail(&mut self, i: usize, now_s: u64, reason: &str, store: &mut dyn SharedStore) -> FetchOutcome {
        let Some(p) = self.providers.get_mut(i) else {
            return FetchOutcome::Ignored;
        };
        p.in_flight = InFlight::None;
        p.failures = p.failures.saturating_add(1);
        let retry_in_s = backoff_s(p.failures, MAX_BACKOFF_S);
        p.shared.back_off(store, &self.owner, now_s + retry_in_s);
        FetchOutcome::Failed {
            reason: reason.to_string(),
            retry_in_s,
        }
    }

    /// Hands the answer to a fetch of `provider` back to the manager.
    pub fn on_answer(
        &mut self,
        provider: usize,
        answer: FetchAnswer,
        now_ms: u64,
        store: &mut dyn SharedStore,
    ) -> FetchOutcome {
        let now_s = now_ms / 1000;
        let parse = self.parse;
        let Some(p) = self.providers.get_mut(provider) else {
            return FetchOutcome::Ignored;
        };
        let state = p.in_flight;
        if state == InFlight::None {
            return FetchOutcome::Ignored;
        }
        let body = match answer {
            FetchAnswer::Failed => return self.fail(provider, now_s, "callout failed or timed out", store),
            FetchAnswer::Response { status, .. } if status != 200 => {
                return self.fail(
                    provider,
                    now_s,
                    &format!("identity provider answered HTTP {status}"),
                    store,
                )
            }
            FetchAnswer::Response { body, .. } if body.len() > MAX_DOCUMENT_BYTES => {
                return self.fail(provider, now_s, "document larger than the limit", store)
            }
            FetchAnswer::Response { body, .. } => body,
        };
        match state {
            InFlight::Discovery { .. } => {
                let expected = p
                    .plan
                    .as_ref()
                    .map(|plan| plan.issuer.clone())
                    .unwrap_or_default();
                let uri = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .ok_or("discovery document is not JSON")
                    .and_then(|v| {
                        if v.get("issuer").and_then(|i| i.as_str()) != Some(expected.as_str()) {
                            return Err("discovery document names another issuer");
                        }
                        v.get("jwks_uri")
                            .and_then(|u| u.as_str())
                            .map(str::to_string)
                            .ok_or("discovery document has no jwks_uri")
                    })
                    .and_then(|u| HttpUri::parse(&u).map_err(|_| "discovery jwks_uri is not an http(s) URI"));
                match uri {
                    Ok(uri) => {
                        let Some(plan) = p.plan.as_mut() else {
                            return FetchOutcome::Ignored;
                        };
                        plan.jwks_uri = Some(uri);
                        // Fetch the key set right away, under the lease we hold.
                        let deadline_ms = now_ms.saturating_add(plan.timeout_ms);
                        p.in_flight = InFlight::Jwks { deadline_ms };
                        FetchOutcome::Discovered
                    }
                    Err(reason) => self.fail(provider, now_s, reason, store),
                }
            }
            InFlight::Jwks { .. } => match parse(&body) {
                Ok(keys) => {
                    let (unchanged, cas) = p.shared.publish(store, "keys", now_s, &body);
                    p.seen_cas = cas;
                    p.fetched_at = now_s;
                    p.in_flight = InFlight::None;
                    p.failures = 0;
                    p.shared.release(store, &self.owner);
                    if unchanged && p.keys.is_some() {
                        FetchOutcome::Unchanged
                    } else {
                        p.keys = Some(Rc::new(keys));
                        p.generation += 1;
                        FetchOutcome::Updated
                    }
                }
                Err(reason) => self.fail(provider, now_s, &format!("unusable key set: {reason}"), store),
            },
            InFlight::None => FetchOutcome::Ignored,
        }
    }

    /// The discovery step completed: the JWKS fetch to dispatch next (same lease, same cluster).
    pub fn next_after_discovery(&self, provider: usize) -> Option<FetchRequest> {
        let p = self.providers.get(provider)?;
        let plan = p.plan.as_ref()?;
        let uri = plan.jwks_uri.as_ref()?;
        matches!(p.in_flight, InFlight::Jwks { .. }).then(|| FetchRequest {
            provider,
            cluster: plan.cluster.clone(),
            authority: uri.authority.clone(),
            path: uri.path.clone(),
            timeout_ms: plan.timeout_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    type Store = crate::shared::MemoryStore;

    /// A stand-in key set: the document's `keys` array length; empty or non-JSON is unusable.
    fn parse(b: &[u8]) -> Result<usize, String> {
        let v: serde_json::Value = serde_json::from_slice(b).map_err(|_| "not JSON".to_string())?;
        match v["keys"].as_array() {
            Some(a) if !a.is_empty() => Ok(a.len()),
            _ => Err("no usable key".into()),
        }
    }

    const JWKS1: &[u8] = br#"{"keys":[{"kid":"a"}]}"#;
    const JWKS2: &[u8] = br#"{"keys":[{"kid":"a"},{"kid":"b"}]}"#;

    fn providers(keys: serde_json::Value) -> Vec<Provider> {
        let mut p = serde_json::json!({"issuer": "https://idp.example.org", "audiences": ["aud"]});
        for (k, v) in keys.as_object().unwrap() {
            p[k] = v.clone();
        }
        Config::from_json(serde_json::json!({"providers": [p]}).to_string().as_bytes())
            .unwrap()
            .providers
    }

    fn remote() -> Vec<Provider> {
        providers(
            serde_json::json!({"remote_jwks": {"uri": "https://idp.example.org/jwks", "cluster": "idp",
            "timeout_ms": 2000, "cache_duration_s": 300, "min_refetch_interval_s": 30}}),
        )
    }

    fn vm(name: &str) -> KeyManager<usize> {
        KeyManager::new(&remote(), parse, name).unwrap()
    }

    const T0: u64 = 1_700_000_000_000;

    fn ok(body: &[u8]) -> FetchAnswer {
        FetchAnswer::Response {
            status: 200,
            body: body.to_vec(),
        }
    }

    #[test]
    fn fetches_on_first_poll_and_adopts_the_keys() {
        let (mut store, mut m) = (Store::default(), vm("w0"));
        assert!(m.keys(0).is_none());
        assert!(
            m.fetch_pending(0),
            "requests before the first tick wait for the first fetch"
        );
        let (fetches, _) = m.poll(T0, &mut store);
        assert_eq!(
            fetches,
            vec![FetchRequest {
                provider: 0,
                cluster: "idp".into(),
                authority: "idp.example.org".into(),
                path: "/jwks".into(),
                timeout_ms: 2000
            }]
        );
        assert!(m.fetch_pending(0));
        // No second fetch while one is in flight.
        assert!(m.poll(T0 + 100, &mut store).0.is_empty());
        assert_eq!(
            m.on_answer(0, ok(JWKS1), T0 + 200, &mut store),
            FetchOutcome::Updated
        );
        assert_eq!(m.keys(0).as_deref(), Some(&1));
        assert_eq!(m.generation(0), 1);
        assert!(!m.fetch_pending(0));
    }

    #[test]
    fn refreshes_before_the_cache_duration_runs_out() {
        let (mut store, mut m) = (Store::default(), vm("w0"));
        m.poll(T0, &mut store);
        m.on_answer(0, ok(JWKS1), T0, &mut store);
        assert!(
            m.poll(T0 + 239_000, &mut store).0.is_empty(),
            "not yet: refresh at 4/5 of 300 s"
        );
        assert_eq!(m.poll(T0 + 240_000, &mut store).0.len(), 1);
        assert_eq!(
            m.on_answer(0, ok(JWKS2), T0 + 240_100, &mut store),
            FetchOutcome::Updated
        );
        assert_eq!(m.keys(0).as_deref(), Some(&2));
        assert_eq!(m.generation(0), 2);
    }

    #[test]
    fn an_identical_document_does_not_change_the_generation() {
        let (mut store, mut m) = (Store::default(), vm("w0"));
        m.poll(T0, &mut store);
        m.on_answer(0, ok(JWKS1), T0, &mut store);
        m.poll(T0 + 240_000, &mut store);
        assert_eq!(
            m.on_answer(0, ok(JWKS1), T0 + 240_000, &mut store),
            FetchOutcome::Unchanged
        );
        assert_eq!(m.generation(0), 1);
        assert_eq!(m.age_s(0, T0 / 1000 + 241), Some(1));
    }

    #[test]
    fn keeps_the_last_good_keys_when_a_refresh_fails_and_backs_off() {
        let (mut store, mut m) = (Store::default(), vm("w0"));
        m.poll(T0, &mut store);
        m.on_answer(0, ok(JWKS1), T0, &mut store);
        let mut t = T0 + 240_000;
        let bad: Vec<(FetchAnswer, &str)> = vec![
            (FetchAnswer::Failed, "callout failed"),
            (
                FetchAnswer::Response {
                    status: 503,
                    body: vec![],
                },
                "HTTP 503",
            ),
            (ok(b"<html>oops</html>"), "unusable key set"),
            (ok(br#"{"keys":[]}"#), "unusable key set"),
            (ok(&vec![b' '; MAX_DOCUMENT_BYTES + 1]), "larger than the limit"),
        ];
        let mut last_retry = 0;
        for (answer, why) in bad {
            let (fetches, _) = m.poll(t, &mut store);
            assert_eq!(fetches.len(), 1, "a retry is due at {t}");
            match m.on_answer(0, answer, t, &mut store) {
                FetchOutcome::Failed { reason, retry_in_s } => {
                    assert!(reason.contains(why), "{reason}");
                    assert!(retry_in_s > last_retry, "backoff grows: {retry_in_s}");
                    assert!(
                        m.poll(t + retry_in_s * 1000 - 1000, &mut store).0.is_empty(),
                        "no retry before backoff"
                    );
                    last_retry = retry_in_s;
                    t += retry_in_s * 1000;
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(m.keys(0).as_deref(), Some(&1), "the last good keys stay");
        }
        // Recovery resets the backoff.
        m.poll(t, &mut store);
        assert_eq!(m.on_answer(0, ok(JWKS2), t, &mut store), FetchOutcome::Updated);
        assert_eq!(m.keys(0).as_deref(), Some(&2));
    }

    #[test]
    fn backoff_is_capped() {
        let (mut store, mut m) = (Store::default(), vm("w0"));
        let mut t = T0;
        let mut retry = 0;
        for _ in 0..20 {
            assert_eq!(m.poll(t, &mut store).0.len(), 1);
            if let FetchOutcome::Failed { retry_in_s, .. } =
                m.on_answer(0, FetchAnswer::Failed, t, &mut store)
            {
                retry = retry_in_s;
            }
            t += retry * 1000;
        }
        assert_eq!(retry, MAX_BACKOFF_S);
    }

    #[test]
    fn a_callout_past_its_deadline_counts_as_a_failure() {
        let (mut store, mut m) = (Store::default(), vm("w0"));
        m.poll(T0, &mut store);
        let (fetches, outcomes) = m.poll(T0 + 3_001, &mut store);
        assert!(fetches.is_empty());
        assert!(
            matches!(outcomes.as_slice(), [(0, FetchOutcome::Failed { .. })]),
            "{outcomes:?}"
        );
        assert!(!m.fetch_pending(0));
        // A late answer is ignored.
        assert_eq!(
            m.on_answer(0, ok(JWKS1), T0 + 3_500, &mut store),
            FetchOutcome::Ignored
        );
    }

    #[test]
    fn one_envoy_fetches_once_and_every_worker_adopts_the_shared_keys() {
        let mut store = Store::default();
        let (mut a, mut b) = (vm("w0"), vm("w1"));
        let fa = a.poll(T0, &mut store).0;
        let fb = b.poll(T0, &mut store).0;
        assert_eq!((fa.len(), fb.len()), (1, 0), "the second worker sees the lease");
        a.on_answer(0, ok(JWKS2), T0 + 100, &mut store);
        assert!(b.keys(0).is_none());
        assert!(b.poll(T0 + 200, &mut store).0.is_empty());
        assert_eq!(b.keys(0).as_deref(), Some(&2), "adopted from shared data");
        assert_eq!(b.generation(0), 1);
    }

    #[test]
    fn the_shared_backoff_holds_other_workers_too() {
        let mut store = Store::default();
        let (mut a, mut b) = (vm("w0"), vm("w1"));
        a.poll(T0, &mut store);
        a.on_answer(0, FetchAnswer::Failed, T0, &mut store);
        assert!(
            !a.fetch_pending(0),
            "after a failure, requests are answered 503 at once"
        );
        assert!(b.poll(T0 + 500, &mut store).0.is_empty(), "backoff is shared");
        assert_eq!(b.poll(T0 + 2_000, &mut store).0.len(), 1);
    }

    #[test]
    fn unknown_kid_refetch_is_throttled_across_workers() {
        let mut store = Store::default();
        let (mut a, mut b) = (vm("w0"), vm("w1"));
        a.poll(T0, &mut store);
        a.on_answer(0, ok(JWKS1), T0, &mut store);
        b.poll(T0, &mut store);
        let now = T0 / 1000 + 10;
        assert_eq!(a.request_refetch(0, now, &mut store), Refetch::Scheduled);
        assert_eq!(
            a.request_refetch(0, now, &mut store),
            Refetch::Scheduled,
            "already due"
        );
        assert_eq!(
            b.request_refetch(0, now + 1, &mut store),
            Refetch::Scheduled,
            "the other worker waits for the refetch already claimed"
        );
        assert!(b.fetch_pending(0));
        assert!(
            b.poll((now + 1) * 1000, &mut store).0.is_empty(),
            "and does not fetch itself"
        );
        let (fetches, _) = a.poll(now * 1000, &mut store);
        assert_eq!(fetches.len(), 1, "the refetch ignores the refresh schedule");
        a.on_answer(0, ok(JWKS2), now * 1000, &mut store);
        b.poll((now + 1) * 1000, &mut store);
        assert_eq!(
            b.keys(0).as_deref(),
            Some(&2),
            "the waiting worker adopts the refetched keys"
        );
        assert!(!b.fetch_pending(0));
        assert_eq!(
            b.request_refetch(0, now + 2, &mut store),
            Refetch::Throttled,
            "once it has them, the shared throttle holds"
        );
        assert_eq!(a.request_refetch(0, now + 29, &mut store), Refetch::Throttled);
        assert_eq!(a.request_refetch(0, now + 30, &mut store), Refetch::Scheduled);
    }

    #[test]
    fn a_storm_of_unknown_kids_makes_one_fetch_per_interval() {
        let (mut store, mut m) = (Store::default(), vm("w0"));
        m.poll(T0, &mut store);
        m.on_answer(0, ok(JWKS1), T0, &mut store);
        let mut fetches = 0;
        for ms in (0..120_000).step_by(100) {
            let now_ms = T0 + 1000 + ms;
            m.request_refetch(0, now_ms / 1000, &mut store);
            let (f, _) = m.poll(now_ms, &mut store);
            for _ in &f {
                fetches += 1;
                m.on_answer(0, ok(JWKS1), now_ms, &mut store);
            }
        }
        assert_eq!(fetches, 4, "one refetch per 30 s over 120 s");
    }

    #[test]
    fn discovery_learns_the_jwks_uri_then_fetches_it() {
        let ps = providers(serde_json::json!({"discovery": {"cluster": "idp"}}));
        let (mut store, mut m) = (Store::default(), KeyManager::new(&ps, parse, "w0").unwrap());
        let (f, _) = m.poll(T0, &mut store);
        assert_eq!(f[0].path, "/.well-known/openid-configuration");
        assert_eq!(m.wait_budget_ms(0), 4000);
        let doc = br#"{"issuer":"https://idp.example.org","jwks_uri":"https://keys.example.org/k?x=1"}"#;
        assert_eq!(
            m.on_answer(0, ok(doc), T0 + 10, &mut store),
            FetchOutcome::Discovered
        );
        let next = m.next_after_discovery(0).unwrap();
        assert_eq!(
            (next.authority.as_str(), next.path.as_str()),
            ("keys.example.org", "/k?x=1")
        );
        assert_eq!(
            m.on_answer(0, ok(JWKS1), T0 + 20, &mut store),
            FetchOutcome::Updated
        );
        assert!(m.keys(0).is_some());
    }

    #[test]
    fn discovery_without_a_usable_jwks_uri_fails() {
        let ps = providers(serde_json::json!({"discovery": {"cluster": "idp"}}));
        let (mut store, mut m) = (Store::default(), KeyManager::new(&ps, parse, "w0").unwrap());
        let mut t = T0;
        for doc in [
            &br#"{"issuer":"https://idp.example.org"}"#[..],
            br#"{"issuer":"https://idp.example.org","jwks_uri":"ftp://x/y"}"#,
            br#"{"issuer":"https://evil.example.org","jwks_uri":"https://idp.example.org/jwks"}"#,
            br#"{"jwks_uri":"https://idp.example.org/jwks"}"#,
            b"garbage",
        ] {
            assert_eq!(m.poll(t, &mut store).0.len(), 1);
            match m.on_answer(0, ok(doc), t, &mut store) {
                FetchOutcome::Failed { retry_in_s, .. } => t += retry_in_s * 1000,
                other => panic!("{other:?}"),
            }
        }
        assert!(m.keys(0).is_none());
    }

    #[test]
    fn inline_keys_are_parsed_at_configuration_and_never_fetched() {
        let ps = providers(serde_json::json!({"local_jwks": {"keys": [{"kid": "a"}]}}));
        let (mut store, mut m) = (Store::default(), KeyManager::new(&ps, parse, "w0").unwrap());
        assert_eq!(m.keys(0).as_deref(), Some(&1));
        assert!(m.poll(T0, &mut store).0.is_empty());
        assert_eq!(
            m.request_refetch(0, T0 / 1000, &mut store),
            Refetch::NotApplicable
        );
        let bad = providers(serde_json::json!({"local_jwks": {"keys": []}}));
        let err = KeyManager::new(&bad, parse, "w0").err().unwrap();
        assert_eq!(err.field, "providers[0].local_jwks");
    }
}
