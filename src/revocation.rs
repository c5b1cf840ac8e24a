//! The kill switch: tokens of listed clients or subjects, or with listed token ids, are refused
//! at once, even when the verified-token cache holds them.
//!
//! The list is the configured one ([`crate::config::RevocationConfig`]) plus, when `refresh` is
//! set, a document fetched periodically through an Envoy cluster:
//! `{"client_ids": [...], "subjects": [...], "jtis": [...]}` (every key optional, at least one
//! present, other keys ignored). A failed or unusable fetch keeps the last good list. Like the key
//! sets ([`crate::jwks::cache`]), one fetch serves every worker of an Envoy: the fetching VM takes a
//! lease in shared data, stores the document there, and every VM adopts it on its next poll.
//!
//! A pure state machine: it is told the time and reads and writes shared data through
//! [`SharedStore`]; the adapter makes the callout it asks for and hands back the answer.

use std::collections::HashSet;
use std::rc::Rc;

use crate::claims::VerifiedClaims;
use crate::config::{RevocationConfig, RevocationRefresh, MAX_REVOKED_ENTRIES};
use crate::jwks::cache::FetchAnswer;
use crate::shared::{backoff_s, LeaseHolder, SharedFetch, SharedStore};

/// Largest revocation document accepted (bytes).
pub const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// Which listed value matched (never the value itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedBy {
    ClientId,
    Subject,
    Jti,
}

impl RevokedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RevokedBy::ClientId => "client_id",
            RevokedBy::Subject => "subject",
            RevokedBy::Jti => "jti",
        }
    }
}

/// A set of revoked client ids, subjects and token ids, compared exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationList {
    client_ids: HashSet<String>,
    subjects: HashSet<String>,
    jtis: HashSet<String>,
}

impl RevocationList {
    /// The list given in the configuration.
    pub fn from_config(c: &RevocationConfig) -> RevocationList {
        RevocationList {
            client_ids: c.client_ids.iter().cloned().collect(),
            subjects: c.subjects.iter().cloned().collect(),
            jtis: c.jtis.iter().cloned().collect(),
        }
    }

    /// Parses a fetched document. Refused (with a reason naming no value): not a JSON object,
    /// none of the three keys, a key that is not an array of strings, too many entries.
    pub fn parse(doc: &[u8]) -> Result<RevocationList, String> {
        if doc.len() > MAX_LIST_BYTES {
            return Err("revocation list larger than the limit".into());
        }
        let v: serde_json::Value =
            serde_json::from_slice(doc).map_err(|_| "revocation list is not JSON".to_string())?;
        let obj = v
            .as_object()
            .ok_or_else(|| "revocation list is not a JSON object".to_string())?;
        if !["client_ids", "subjects", "jtis"]
            .iter()
            .any(|k| obj.contains_key(*k))
        {
            return Err("revocation list has none of client_ids, subjects, jtis".into());
        }
        let list = |key: &str| -> Result<HashSet<String>, String> {
            let Some(value) = obj.get(key) else {
                return Ok(HashSet::new());
            };
            let arr = value
                .as_array()
                .ok_or_else(|| format!("revocation list: `{key}` is not an array"))?;
            if arr.len() > MAX_REVOKED_ENTRIES {
                return Err(format!("revocation list: `{key}` has too many entries"));
            }
            arr.iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("revocation list: `{key}` holds a non-string"))
                })
                .filter(|e| e.as_ref().map_or(true, |s| !s.is_empty()))
                .collect()
        };
        Ok(RevocationList {
            client_ids: list("client_ids")?,
            subjects: list("subjects")?,
            jtis: list("jtis")?,
        })
    }

    /// What matched, if anything: the token id first, then the client, then the subject.
    pub fn matches(&self, claims: &VerifiedClaims) -> Option<RevokedBy> {
        let listed = |set: &HashSet<String>, v: &Option<String>| v.as_ref().is_some_and(|v| set.contains(v));
        if listed(&self.jtis, &claims.jti) {
            Some(RevokedBy::Jti)
        } else if listed(&self.client_ids, &claims.client_id) {
            Some(RevokedBy::ClientId)
        } else if listed(&self.subjects, &claims.subject) {
            Some(RevokedBy::Subject)
        } else {
            None
        }
    }

    /// Entries in all three lists.
    pub fn len(&self) -> usize {
        self.client_ids.len() + self.subjects.len() + self.jtis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A callout the adapter must make to fetch the list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRequest {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
}

/// What a refresh did, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// A new list is in use (`entries` in it).
    Updated { entries: usize },
    /// The document is the one in use.
    Unchanged,
    /// The fetch failed; the last good list stays. `retry_in_s` until the next attempt.
    Failed { reason: String, retry_in_s: u64 },
    /// An answer for no fetch in flight: ignored.
    Ignored,
}

impl RefreshOutcome {
    /// Short name for metric tags.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefreshOutcome::Updated { .. } => "updated",
            RefreshOutcome::Unchanged => "unchanged",
            RefreshOutcome::Failed { .. } => "failed",
            RefreshOutcome::Ignored => "ignored",
        }
    }
}

/// The revocation state of one VM.
pub struct Revocation {
    configured: RevocationList,
    fetched: Option<Rc<RevocationList>>,
    refresh: Option<RevocationRefresh>,
    /// Time (s) the fetched list was fetched (0: never).
    fetched_at: u64,
    seen_cas: Option<u32>,
    /// Deadline (ms) of the callout in flight.
    in_flight: Option<u64>,
    failures: u32,
    /// Its `list` and `lease` entries in shared data.
    shared: SharedFetch,
    owner: String,
}

/// Longest wait after repeated failures (seconds), never more than the refresh interval.
pub const MAX_BACKOFF_S: u64 = 300;

impl Revocation {
    /// The state for a configuration. `owner` names this VM in shared-data leases.
    pub fn new(c: &RevocationConfig, owner: impl Into<String>) -> Revocation {
        let shared = SharedFetch::new(
            "revocation",
            c.refresh.as_ref().map_or("", |r| r.uri.uri.as_str()),
        );
        Revocation {
            configured: RevocationList::from_config(c),
            fetched: None,
            refresh: c.refresh.clone(),
            fetched_at: 0,
            seen_cas: None,
            in_flight: None,
            failures: 0,
            shared,
            owner: owner.into(),
        }
    }

    /// Whether the token's client, subject or id is revoked (configured or fetched list).
    pub fn check(&self, claims: &VerifiedClaims) -> Option<RevokedBy> {
        self.configured
            .matches(claims)
            .or_else(|| self.fetched.as_ref().and_then(|l| l.matches(claims)))
    }

    /// Entries in the fetched list in use, if one was fetched.
    pub fn fetched_entries(&self) -> Option<usize> {
        self.fetched.as_ref().map(|l| l.len())
    }

    /// Adopts a newer list from shared data, expires a callout past its deadline, and returns the
    /// fetch to make now, if any. Call on every tick.
    pub fn poll(
        &mut self,
        now_ms: u64,
        store: &mut dyn SharedStore,
    ) -> (Option<RefreshRequest>, Option<RefreshOutcome>) {
        let Some(plan) = self.refresh.clone() else {
            return (None, None);
        };
        let now_s = now_ms / 1000;
        let mut outcome = self.adopt_shared(store);
        if let Some(deadline) = self.in_flight {
            if now_ms <= deadline.saturating_add(1000) {
                return (None, outcome);
            }
            outcome = Some(self.fail(now_s, "callout did not complete", store));
        }
        if self.fetched.is_some() && now_s < self.fetched_at.saturating_add(plan.interval_s) {
            return (None, outcome);
        }
        let (holder, cas) = self.shared.holder(store, &self.owner, now_s);
        // Another worker's fetch, or anyone's backoff after a failure.
        if holder != LeaseHolder::Free {
            return (None, outcome);
        }
        let hold = plan.timeout_ms.div_ceil(1000) * 2 + 1;
        if !self.shared.claim(store, &self.owner, now_s + hold, cas) {
            return (None, outcome);
        }
        self.in_flight = Some(now_ms.saturating_add(plan.timeout_ms));
        let request = RefreshRequest {
            cluster: plan.cluster.clone(),
            authority: plan.uri.authority.clone(),
            path: plan.uri.path.clone(),
            timeout_ms: plan.timeout_ms,
        };
        (Some(request), outcome)
    }

    fn adopt_shared(&mut self, store: &mut dyn SharedStore) -> Option<RefreshOutcome> {
        let (entry, cas) = self.shared.read(store, "list");
        if cas.is_none() || cas == self.seen_cas {
            return None;
        }
        self.seen_cas = cas;
        let (fetched_at, body) = entry?;
        if self.fetched.is_some() && fetched_at < self.fetched_at {
            return None;
        }
        let list = RevocationList::parse(&body).ok()?;
        let entries = list.len();
        let changed = self.fetched.as_deref() != Some(&list);
        self.fetched = Some(Rc::new(list));
        self.fetched_at = fetched_at;
        self.failures = 0;
        changed.then_some(RefreshOutcome::Updated { entries })
    }

    fn fail(&mut self, now_s: u64, reason: &str, store: &mut dyn SharedStore) -> RefreshOutcome {
        self.in_flight = None;
        self.failures = self.failures.saturating_add(1);
        let cap = self
            .refresh
            .as_ref()
            .map_or(MAX_BACKOFF_S, |r| r.interval_s.min(MAX_BACKOFF_S));
        let retry_in_s = backoff_s(self.failures, cap);
        self.shared.back_off(store, &self.owner, now_s + retry_in_s);
        RefreshOutcome::Failed {
            reason: reason.to_string(),
            retry_in_s,
        }
    }

    /// Hands the answer to the refresh callout back.
    pub fn on_answer(
        &mut self,
        answer: FetchAnswer,
        now_ms: u64,
        store: &mut dyn SharedStore,
    ) -> RefreshOutcome {
        if self.in_flight.is_none() {
            return RefreshOutcome::Ignored;
        }
        let now_s = now_ms / 1000;
        let body = match answer {
            FetchAnswer::Failed => return self.fail(now_s, "callout failed or timed out", store),
            FetchAnswer::Response { status, .. } if status != 200 => {
                return self.fail(now_s, &format!("list server answered HTTP {status}"), store)
            }
            FetchAnswer::Response { body, .. } => body,
        };
        let list = match RevocationList::parse(&body) {
            Ok(l) => l,
            Err(reason) => return self.fail(now_s, &reason, store),
        };
        self.in_flight = None;
        self.failures = 0;
        let (_, cas) = self.shared.publish(store, "list", now_s, &body);
        self.seen_cas = cas;
        self.fetched_at = now_s;
        self.shared.release(store, &self.owner);
        if self.fetched.as_deref() == Some(&list) {
            RefreshOutcome::Unchanged
        } else {
            let entries = list.len();
            self.fetched = Some(Rc::new(list));
            RefreshOutcome::Updated { entries }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::{Config, HttpUri};

    type Store = crate::shared::MemoryStore;

    fn claims(client: &str, sub: &str, jti: Option<&str>) -> VerifiedClaims {
        VerifiedClaims {
            issuer: "https://idp.example.org".into(),
            client_id: Some(client.into()),
            subject: Some(sub.into()),
            jti: jti.map(str::to_string),
            ..VerifiedClaims::default()
        }
    }

    fn config(v: serde_json::Value) -> RevocationConfig {
        let c = serde_json::json!({
            "providers": [{"issuer": "https://idp.example.org", "audiences": ["a"],
                           "local_jwks": {"keys": []}}],
            "revocation": v
        });
        Config::from_json(c.to_string().as_bytes()).unwrap().revocation
    }

    fn refreshing() -> RevocationConfig {
        config(serde_json::json!({
            "client_ids": ["banned-app"],
            "refresh": {"uri": "http://lists.example.org/revoked.json", "cluster": "lists",
                        "interval_s": 60, "timeout_ms": 1000}
        }))
    }

    fn ok(body: &str) -> FetchAnswer {
        FetchAnswer::Response {
            status: 200,
            body: body.as_bytes().to_vec(),
        }
    }

    const T0: u64 = 1_700_000_000_000;

    #[test]
    fn matches_client_subject_or_token_id_exactly() {
        let c = config(serde_json::json!({
            "client_ids": ["bad-app"], "subjects": ["mallory"], "jtis": ["leaked-1"]
        }));
        let r = Revocation::new(&c, "w0");
        let table = [
            (claims("bad-app", "alice", None), Some(RevokedBy::ClientId)),
            (claims("good-app", "mallory", None), Some(RevokedBy::Subject)),
            (
                claims("good-app", "alice", Some("leaked-1")),
                Some(RevokedBy::Jti),
            ),
            (
                claims("bad-app", "mallory", Some("leaked-1")),
                Some(RevokedBy::Jti),
            ),
            (claims("good-app", "alice", Some("jti-2")), None),
            (claims("Bad-App", "Mallory", Some("LEAKED-1")), None),
            (claims("bad-app ", "alice", None), None),
        ];
        for (c, want) in table {
            assert_eq!(r.check(&c), want, "{c:?}");
        }
        let no_ids = VerifiedClaims::default();
        assert_eq!(r.check(&no_ids), None, "a token without client, subject or jti");
    }

    #[test]
    fn parses_lists_and_refuses_unusable_documents() {
        let good = RevocationList::parse(br#"{"client_ids": ["a", ""], "jtis": ["j"], "note": 1}"#).unwrap();
        assert_eq!(good.len(), 2, "empty strings are skipped, unknown keys ignored");
        assert!(RevocationList::parse(br#"{"subjects": []}"#).unwrap().is_empty());
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"other": []}"#,
            br#"{"client_ids": "a"}"#,
            br#"{"client_ids": [1]}"#,
        ] {
            let err = RevocationList::parse(bad).unwrap_err();
            assert!(err.starts_with("revocation list"), "{err}");
        }
        let secret = br#"{"client_ids": ["s3cr3t", 5]}"#;
        assert!(!RevocationList::parse(secret).unwrap_err().contains("s3cr3t"));
    }

    #[test]
    fn without_refresh_nothing_is_fetched() {
        let mut r = Revocation::new(&config(serde_json::json!({"subjects": ["x"]})), "w0");
        let mut store = Store::default();
        assert_eq!(r.poll(T0, &mut store), (None, None));
        assert_eq!(r.on_answer(ok("{}"), T0, &mut store), RefreshOutcome::Ignored);
    }

    #[test]
    fn fetches_adds_to_the_configured_list_and_refreshes_on_the_interval() {
        let (mut store, mut r) = (Store::default(), Revocation::new(&refreshing(), "w0"));
        let (req, _) = r.poll(T0, &mut store);
        assert_eq!(
            req,
            Some(RefreshRequest {
                cluster: "lists".into(),
                authority: "lists.example.org".into(),
                path: "/revoked.json".into(),
                timeout_ms: 1000
            })
        );
        assert_eq!(r.poll(T0 + 100, &mut store).0, None, "one callout at a time");
        assert_eq!(
            r.on_answer(ok(r#"{"subjects": ["mallory"]}"#), T0 + 200, &mut store),
            RefreshOutcome::Updated { entries: 1 }
        );
        assert_eq!(r.check(&claims("app", "mallory", None)), Some(RevokedBy::Subject));
        assert_eq!(
            r.check(&claims("banned-app", "alice", None)),
            Some(RevokedBy::ClientId),
            "the configured list stays in force"
        );
        assert_eq!(r.poll(T0 + 59_000, &mut store).0, None);
        assert!(r.poll(T0 + 60_000, &mut store).0.is_some());
        assert_eq!(
            r.on_answer(ok(r#"{"subjects": ["mallory"]}"#), T0 + 60_100, &mut store),
            RefreshOutcome::Unchanged
        );
        assert!(r.poll(T0 + 120_100, &mut store).0.is_some());
        assert_eq!(
            r.on_answer(ok(r#"{"subjects": []}"#), T0 + 120_200, &mut store),
            RefreshOutcome::Updated { entries: 0 }
        );
        assert_eq!(
            r.check(&claims("app", "mallory", None)),
            None,
            "removed from the list"
        );
    }

    #[test]
    fn a_failed_refresh_keeps_the_last_good_list_and_backs_off() {
        let (mut store, mut r) = (Store::default(), Revocation::new(&refreshing(), "w0"));
        r.poll(T0, &mut store);
        r.on_answer(ok(r#"{"jtis": ["leaked"]}"#), T0, &mut store);
        let mut t = T0 + 60_000;
        let mut last = 0;
        for (answer, why) in [
            (FetchAnswer::Failed, "callout failed"),
            (
                FetchAnswer::Response {
                    status: 500,
                    body: vec![],
                },
                "HTTP 500",
            ),
            (ok("{}"), "none of"),
            (ok("<html>"), "not JSON"),
            (ok(&" ".repeat(MAX_LIST_BYTES + 1)), "larger than the limit"),
        ] {
            assert!(r.poll(t, &mut store).0.is_some(), "a retry is due at {t}");
            match r.on_answer(answer, t, &mut store) {
                RefreshOutcome::Failed { reason, retry_in_s } => {
                    assert!(reason.contains(why), "{reason}");
                    assert!(retry_in_s > last && retry_in_s <= 60, "{retry_in_s}");
                    assert_eq!(
                        r.poll(t + retry_in_s * 1000 - 1000, &mut store).0,
                        None,
                        "backoff"
                    );
                    last = retry_in_s;
                    t += retry_in_s * 1000;
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                r.check(&claims("a", "b", Some("leaked"))),
                Some(RevokedBy::Jti),
                "the last good list stays"
            );
        }
    }

    #[test]
    fn a_callout_past_its_deadline_fails() {
        let (mut store, mut r) = (Store::default(), Revocation::new(&refreshing(), "w0"));
        r.poll(T0, &mut store);
        let (req, outcome) = r.poll(T0 + 2_001, &mut store);
        assert_eq!(req, None, "backing off");
        assert!(
            matches!(outcome, Some(RefreshOutcome::Failed { .. })),
            "{outcome:?}"
        );
        assert_eq!(
            r.on_answer(ok(r#"{"jtis": []}"#), T0 + 2_100, &mut store),
            RefreshOutcome::Ignored
        );
    }

    #[test]
    fn one_envoy_fetches_once_and_every_worker_adopts_the_list() {
        let mut store = Store::default();
        let (mut a, mut b) = (
            Revocation::new(&refreshing(), "w0"),
            Revocation::new(&refreshing(), "w1"),
        );
        assert!(a.poll(T0, &mut store).0.is_some());
        assert!(
            b.poll(T0, &mut store).0.is_none(),
            "the second worker sees the lease"
        );
        a.on_answer(ok(r#"{"client_ids": ["evil"]}"#), T0 + 100, &mut store);
        assert_eq!(b.check(&claims("evil", "x", None)), None);
        let (req, outcome) = b.poll(T0 + 200, &mut store);
        assert_eq!(req, None, "adopted, not fetched again");
        assert_eq!(outcome, Some(RefreshOutcome::Updated { entries: 1 }));
        assert_eq!(b.check(&claims("evil", "x", None)), Some(RevokedBy::ClientId));
        assert_eq!(b.poll(T0 + 300, &mut store), (None, None), "adopted once");
    }

    #[test]
    fn the_shared_backoff_holds_other_workers() {
        let mut store = Store::default();
        let (mut a, mut b) = (
            Revocation::new(&refreshing(), "w0"),
            Revocation::new(&refreshing(), "w1"),
        );
        a.poll(T0, &mut store);
        a.on_answer(FetchAnswer::Failed, T0, &mut store);
        assert!(b.poll(T0 + 500, &mut store).0.is_none());
        assert!(b.poll(T0 + 2_000, &mut store).0.is_some());
    }

    #[test]
    fn config_refuses_empty_entries_and_bad_refresh_settings() {
        let base = serde_json::json!({
            "providers": [{"issuer": "https://idp.example.org", "audiences": ["a"],
                           "local_jwks": {"keys": []}}]
        });
        let cases = [
            (
                "revocation.client_ids[1]",
                serde_json::json!({"client_ids": ["a", ""]}),
            ),
            (
                "revocation.refresh.uri",
                serde_json::json!({"refresh": {"cluster": "c"}}),
            ),
            (
                "revocation.refresh.cluster",
                serde_json::json!({"refresh": {"uri": "http://h/l"}}),
            ),
            (
                "revocation.refresh.interval_s",
                serde_json::json!({"refresh": {"uri": "http://h/l", "cluster": "c", "interval_s": 0}}),
            ),
            ("revocation.shoe", serde_json::json!({"shoe": 1})),
        ];
        for (field, rev) in cases {
            let mut c = base.clone();
            c["revocation"] = rev;
            let err = Config::from_json(c.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let c = Config::from_json(base.to_string().as_bytes()).unwrap();
        assert_eq!(c.revocation, RevocationConfig::default(), "off by default");
        let r = refreshing();
        assert_eq!(
            r.refresh.unwrap().uri,
            HttpUri::parse("http://lists.example.org/revoked.json").unwrap()
        );
    }
}
