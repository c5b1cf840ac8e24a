//! Envoy's shared data as the core sees it ([`SharedStore`]), and the one-fetch-per-Envoy lifecycle
//! built on it ([`SharedFetch`]) that the key sets ([`crate::jwks::cache`]) and the revocation list
//! ([`crate::revocation`]) both use.
//!
//! Each Envoy worker runs its own VM; shared data is the one place they agree. A fetched document
//! lives under `<prefix>/<name>` as `<fetched_at>\n<body>`, and `<prefix>/lease` holds
//! `<owner> <until>`: the VM that wins the lease with compare-and-swap fetches, the others adopt
//! what it stores. After a failure the lease holds the end of the backoff, so no worker retries
//! before it.

/// Compare-and-swap failed: someone else wrote the value first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CasMismatch;

/// The host's shared data (proxy-wasm `get_shared_data`/`set_shared_data`). A `cas` of `None`
/// writes unconditionally; `Some(c)` writes only when the value's current `cas` is `c`.
pub trait SharedStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch>;
}

/// Shared data in memory with Envoy's semantics: a `cas` per value, bumped on every write; a write
/// with a `cas` to an existing value must match it. For tests and benchmarks.
#[derive(Debug, Default)]
pub struct MemoryStore {
    map: std::collections::HashMap<String, (Vec<u8>, u32)>,
    next: u32,
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        if let (Some((_, current)), Some(c)) = (self.map.get(key), cas) {
            if *current != c {
                return Err(CasMismatch);
            }
        }
        self.next = self.next.wrapping_add(1);
        self.map.insert(key.to_string(), (value.to_vec(), self.next));
        Ok(())
    }
}

/// 64-bit FNV-1a: short, stable names for shared-data keys (not a security boundary).
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Seconds to wait after `failures` failures in a row: 2, 4, 8, … capped at `cap_s`.
pub fn backoff_s(failures: u32, cap_s: u64) -> u64 {
    (1u64 << failures.min(9)).min(cap_s)
}

/// Who holds a fetch lease now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseHolder {
    /// Nobody, or a lease that has run out.
    Free,
    /// This VM (its fetch, or its own backoff).
    Us,
    /// Another VM (its fetch, or a backoff it set).
    Other,
}

/// One document fetched once per Envoy and shared by every worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFetch {
    prefix: String,
}

impl SharedFetch {
    /// Keys under `smart_fhir_edge/<kind>/<hash of id>`.
    pub fn new(kind: &str, id: &str) -> SharedFetch {
        SharedFetch {
            prefix: format!("smart_fhir_edge/{kind}/{:016x}", fnv1a(id)),
        }
    }

    /// The shared-data key of `name` (`lease`, `keys`, …).
    pub fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix)
    }

    /// Who holds the lease at `now_s`, and the lease value's `cas` for [`SharedFetch::claim`].
    pub fn holder(&self, store: &dyn SharedStore, owner: &str, now_s: u64) -> (LeaseHolder, Option<u32>) {
        let (value, cas) = store.get(&self.key("lease"));
        let holder = match value.as_deref().and_then(parse_lease) {
            Some((_, until)) if until <= now_s => LeaseHolder::Free,
            Some((who, _)) if who == owner => LeaseHolder::Us,
            Some(_) => LeaseHolder::Other,
            None => LeaseHolder::Free,
        };
        (holder, cas)
    }

    /// Takes the lease until `until_s` if it is still as read (`cas`); false when another VM won.
    pub fn claim(&self, store: &mut dyn SharedStore, owner: &str, until_s: u64, cas: Option<u32>) -> bool {
        store
            .set(&self.key("lease"), format!("{owner} {until_s}").as_bytes(), cas)
            .is_ok()
    }

    /// Holds every worker off until `until_s` (after a failure).
    pub fn back_off(&self, store: &mut dyn SharedStore, owner: &str, until_s: u64) {
        let (_, cas) = store.get(&self.key("lease"));
        let _ = self.claim(store, owner, until_s, cas);
    }

    /// Gives the lease up (after a success).
    pub fn release(&self, store: &mut dyn SharedStore, owner: &str) {
        self.back_off(store, owner, 0);
    }

    /// The document stored under `name`: when it was fetched, its body, and the value's `cas`.
    pub fn read(&self, store: &dyn SharedStore, name: &str) -> (Option<(u64, Vec<u8>)>, Option<u32>) {
        let (value, cas) = store.get(&self.key(name));
        let entry = value
            .as_deref()
            .and_then(parse_entry)
            .map(|(at, b)| (at, b.to_vec()));
        (entry, cas)
    }

    /// Stores a fetched document under `name`; answers whether it equals the one stored before,
    /// and the new value's `cas`.
    pub fn publish(
        &self,
        store: &mut dyn SharedStore,
        name: &str,
        now_s: u64,
        body: &[u8],
    ) -> (bool, Option<u32>) {
        let key = self.key(name);
        let (old, _) = store.get(&key);
        let unchanged = old
            .as_deref()
            .and_then(parse_entry)
            .is_some_and(|(_, b)| b == body);
        let mut entry = now_s.to_string().into_bytes();
        entry.push(b'\n');
        entry.extend_from_slice(body);
        let _ = store.set(&key, &entry, None);
        (unchanged, store.get(&key).1)
    }
}

fn parse_lease(v: &[u8]) -> Option<(&str, u64)> {
    let (owner, until) = std::str::from_utf8(v).ok()?.split_once(' ')?;
    Some((owner, until.parse().ok()?))
}

fn parse_entry(v: &[u8]) -> Option<(u64, &[u8])> {
    let nl = v.iter().position(|b| *b == b'\n')?;
    let (head, rest) = v.split_at(nl);
    Some((std::str::from_utf8(head).ok()?.parse().ok()?, rest.get(1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_with_a_stale_cas_is_refused() {
        let mut s = MemoryStore::default();
        s.set("k", b"1", None).unwrap();
        let (_, cas) = s.get("k");
        s.set("k", b"2", cas).unwrap();
        assert_eq!(s.set("k", b"3", cas), Err(CasMismatch));
        assert_eq!(s.get("k").0.as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn the_lease_is_held_until_it_runs_out_and_one_claimer_wins() {
        let f = SharedFetch::new("test", "https://idp.example.org/jwks");
        let mut s = MemoryStore::default();
        assert_eq!(f.holder(&s, "a", 100).0, LeaseHolder::Free);
        // Envoy's shared data has no create-if-absent: exclusivity starts once a lease value exists.
        f.release(&mut s, "z");
        let (h, cas) = f.holder(&s, "a", 100);
        assert_eq!(h, LeaseHolder::Free);
        assert!(f.claim(&mut s, "a", 110, cas));
        assert!(
            !f.claim(&mut s, "b", 110, cas),
            "b read the lease before a took it"
        );
        let table = [
            ("a", 105, LeaseHolder::Us),
            ("b", 105, LeaseHolder::Other),
            ("b", 110, LeaseHolder::Free),
        ];
        for (owner, now, want) in table {
            assert_eq!(f.holder(&s, owner, now).0, want, "{owner} at {now}");
        }
        f.release(&mut s, "a");
        assert_eq!(f.holder(&s, "b", 105).0, LeaseHolder::Free);
        f.back_off(&mut s, "a", 200);
        assert_eq!(
            f.holder(&s, "b", 199).0,
            LeaseHolder::Other,
            "a backoff holds everyone"
        );
    }

    #[test]
    fn documents_round_trip_and_say_whether_they_changed() {
        let f = SharedFetch::new("test", "x");
        let mut s = MemoryStore::default();
        assert_eq!(f.read(&s, "doc").0, None);
        let (unchanged, cas1) = f.publish(&mut s, "doc", 7, b"{\"a\":\n1}");
        assert!(!unchanged);
        assert_eq!(f.read(&s, "doc"), (Some((7, b"{\"a\":\n1}".to_vec())), cas1));
        let (unchanged, cas2) = f.publish(&mut s, "doc", 9, b"{\"a\":\n1}");
        assert!(unchanged);
        assert_ne!(cas1, cas2, "every write moves the cas");
        s.set(&f.key("doc"), b"garbage", None).unwrap();
        assert_eq!(f.read(&s, "doc").0, None, "a value without a time is no document");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let got: Vec<u64> = [1, 2, 3, 8, 9, 30].iter().map(|f| backoff_s(*f, 300)).collect();
        assert_eq!(got, vec![2, 4, 8, 256, 300, 300]);
        assert_eq!(backoff_s(5, 10), 10);
    }
}
