//! The verified-token cache of one VM: a token verified once is not verified again until it
//! expires or the keys change.
//!
//! Keyed by the token itself (as Envoy's own `jwt_authn` cache is): a hit needs the exact bytes of
//! a token that verified, so no collision can stand in for verification. A lookup costs a SipHash
//! with the standard library's random keys (no hash flooding) of the token's length and last
//! [`HASHED_TAIL_BYTES`] bytes only (a JWS ends with its signature, which no client chooses), and
//! one comparison of the whole token 8 bytes at a time (the token is kept packed in words: Wasm
//! compares byte strings a byte at a time), instead of a SHA-256 of the token, which was most of the
//! per-request time. An entry holds the verified claims, the compiled scopes and the token's
//! fingerprint for logs. Bounded in entries and in bytes, tokens
//! included (oldest first out), each entry expires at the token's `exp` (never later), and the
//! whole cache is dropped when any provider's key set changes, so a key removed from a JWKS stops
//! verifying at once.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use crate::claims::VerifiedClaims;
use crate::scope::GrantedScopes;

/// What a cache hit gives back.
#[derive(Debug)]
pub struct CachedToken {
    pub claims: Rc<VerifiedClaims>,
    pub granted: GrantedScopes,
    /// [`crate::token::token_fingerprint`] of the token, computed once at verification.
    pub token_hash: String,
    /// The `x-smart-*` headers its claims forward upstream, built once at verification.
    pub forwarded: Rc<[(&'static str, String)]>,
}

/// Default bound on entries.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Default bound on the approximate bytes held.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The token, shared by the map and the eviction order: its byte length, then its bytes in
/// little-endian words (the last one zero-padded).
type Key = Rc<[Word]>;

/// How many of a token's last bytes its hash reads (with its length): the signature's, in a JWS.
pub const HASHED_TAIL_BYTES: usize = 32;

/// Eight bytes of a packed token. Compared as a number (a slice of them compares word by word); a
/// slice of them hashes its length and its last [`HASHED_TAIL_BYTES`] bytes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word(u64);

impl Hash for Word {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }

    fn hash_slice<H: Hasher>(data: &[Self], state: &mut H) {
        let tail = data.len().saturating_sub(HASHED_TAIL_BYTES / 8);
        for w in data.iter().skip(tail) {
            state.write_u64(w.0);
        }
    }
}

/// `token` as a key: its length, then its bytes eight at a time.
fn pack(token: &str) -> Vec<Word> {
    let mut words = Vec::with_capacity(token.len() / 8 + 2);
    pack_into(token, &mut words);
    words
}

/// Packs `token` into `words` (cleared first; a lookup reuses one buffer instead of allocating).
fn pack_into(token: &str, words: &mut Vec<Word>) {
    let bytes = token.as_bytes();
    words.clear();
    words.push(Word(bytes.len() as u64));
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        words.push(Word(u64::from_le_bytes(chunk.try_into().unwrap_or_default())));
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 8];
        for (d, b) in last.iter_mut().zip(rest) {
            *d = *b;
        }
        words.push(Word(u64::from_le_bytes(last)));
    }
}

/// The byte length of the token packed in `key`.
fn token_len(key: &[Word]) -> usize {
    key.first()
        .map_or(0, |w| usize::try_from(w.0).unwrap_or(usize::MAX))
}

struct Entry {
    value: Rc<CachedToken>,
    expires_at: u64,
    bytes: usize,
}

/// Hits, misses and evictions since start (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

/// The cache.
pub struct TokenCache {
    map: HashMap<Key, Entry>,
    order: VecDeque<Key>,
    /// Approximate bytes of the entries in `map`.
    bytes: usize,
    /// Bytes of the tokens still referenced by `order` after their entries expired on lookup; they
    /// count against the byte bound until they leave `order`.
    stale_bytes: usize,
    generation: u64,
    max_entries: usize,
    max_bytes: usize,
    stats: std::cell::Cell<CacheStats>,
    /// The looked-up token, packed (reused by every lookup).
    scratch: Vec<Word>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

/// Approximate heap bytes of an entry: the token, the claims' strings, the forwarded header
/// values, plus fixed overhead.
fn size_of(token: &str, value: &CachedToken) -> usize {
    let claims = &value.claims;
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    256 + token.len()
        + claims.issuer.len()
        + opt(&claims.subject)
        + opt(&claims.client_id)
        + opt(&claims.patient)
        + opt(&claims.encounter)
        + opt(&claims.fhir_user)
        + opt(&claims.jti)
        + claims.scopes.iter().map(|s| s.len() * 3 + 48).sum::<usize>()
        + value.forwarded.iter().map(|(_, v)| v.len() + 32).sum::<usize>()
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        TokenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            stale_bytes: 0,
            generation: 0,
            max_entries: max_entries.max(1),
            max_bytes,
            stats: std::cell::Cell::new(CacheStats::default()),
            scratch: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Approximate bytes held, tokens included.
    pub fn bytes(&self) -> usize {
        self.bytes + self.stale_bytes
    }

    pub fn stats(&self) -> CacheStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut CacheStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn sync_generation(&mut self, generation: u64) {
        if generation != self.generation {
            self.map.clear();
            self.order.clear();
            self.bytes = 0;
            self.stale_bytes = 0;
            self.generation = generation;
        }
    }

    /// The cached verification of `token`, if it is still valid at `now_s` under the key-set
    /// `generation`.
    pub fn get(&mut self, token: &str, now_s: u64, generation: u64) -> Option<Rc<CachedToken>> {
        self.sync_generation(generation);
        let mut key = std::mem::take(&mut self.scratch);
        pack_into(token, &mut key);
        let hit = match self.map.get(key.as_slice()) {
            Some(e) if now_s < e.expires_at => Some(e.value.clone()),
            Some(_) => {
                if let Some(e) = self.map.remove(key.as_slice()) {
                    self.bytes = self.bytes.saturating_sub(e.bytes);
                    // Its key stays in `order` (and holds the token) until evicted or compacted.
                    self.stale_bytes += token.len();
                }
                None
            }
            None => None,
        };
        self.scratch = key;
        match hit {
            Some(_) => self.count(|s| s.hits += 1),
            None => self.count(|s| s.misses += 1),
        }
        hit
    }

    /// Caches a verified token until its `exp`.
    pub fn insert(&mut self, token: &str, value: Rc<CachedToken>, now_s: u64, generation: u64) {
        self.sync_generation(generation);
        let expires_at = value.claims.expires_at;
        if expires_at <= now_s {
            return;
        }
        let bytes = size_of(token, &value);
        if bytes > self.max_bytes {
            return;
        }
        let key: Key = Rc::from(pack(token));
        if let Some(old) = self.map.insert(
            key.clone(),
            Entry {
                value,
                expires_at,
                bytes,
            },
        ) {
            self.bytes = self.bytes.saturating_sub(old.bytes);
        } else {
            self.order.push_back(key);
        }
        self.bytes += bytes;
        while self.map.len() > self.max_entries || self.bytes + self.stale_bytes > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            match self.map.remove(&*oldest) {
                Some(e) => {
                    self.bytes = self.bytes.saturating_sub(e.bytes);
                    self.count(|s| s.evictions += 1);
                }
                // Not in the map: the key of an entry that expired on lookup.
                None => self.stale_bytes = self.stale_bytes.saturating_sub(token_len(&oldest)),
            }
        }
        // Keys of entries removed on expiry linger in `order`; bound their number too.
        if self.order.len() > self.max_entries * 2 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(&**k));
            self.stale_bytes = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(exp: u64, patient: &str) -> Rc<CachedToken> {
        let claims = VerifiedClaims {
            issuer: "https://idp".into(),
            patient: Some(patient.into()),
            scopes: vec!["patient/*.rs".into()],
            expires_at: exp,
            ..Default::default()
        };
        Rc::new(CachedToken {
            granted: GrantedScopes::parse(&claims.scopes),
            claims: Rc::new(claims),
            token_hash: "0123456789ab".into(),
            forwarded: Rc::from(Vec::new()),
        })
    }

    #[test]
    fn a_verified_token_is_served_from_the_cache_until_exp() {
        let mut c = TokenCache::default();
        assert!(c.get("t1", 100, 1).is_none());
        c.insert("t1", entry(200, "p1"), 100, 1);
        assert_eq!(c.get("t1", 199, 1).unwrap().claims.patient.as_deref(), Some("p1"));
        assert!(c.get("t1", 200, 1).is_none(), "expires at exp, never later");
        assert!(c.get("t2", 150, 1).is_none(), "another token is another entry");
        assert_eq!(
            c.stats(),
            CacheStats {
                hits: 1,
                misses: 3,
                evictions: 0
            }
        );
    }

    #[test]
    fn a_key_set_change_drops_every_entry() {
        let mut c = TokenCache::default();
        c.insert("t1", entry(200, "p1"), 100, 1);
        assert!(c.get("t1", 101, 2).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn expired_tokens_are_not_cached() {
        let mut c = TokenCache::default();
        c.insert("t1", entry(100, "p1"), 100, 1);
        assert!(c.is_empty());
    }

    #[test]
    fn stays_within_its_entry_and_byte_bounds() {
        let mut c = TokenCache::new(100, 1_000_000);
        for i in 0..10_000 {
            c.insert(&format!("token-{i}"), entry(10_000, "p"), 1, 1);
        }
        assert_eq!(c.len(), 100);
        assert!(c.get("token-9999", 2, 1).is_some(), "newest stay");
        assert!(c.get("token-0", 2, 1).is_none(), "oldest go first");
        let mut c = TokenCache::new(1_000_000, 20_000);
        for i in 0..10_000 {
            c.insert(&format!("token-{i}"), entry(10_000, "p"), 1, 1);
        }
        assert!(c.bytes() <= 20_000);
        assert!(c.len() < 100);
        assert!(c.stats().evictions > 9_000);
    }

    #[test]
    fn counts_the_tokens_it_holds_in_its_byte_bound() {
        let mut c = TokenCache::new(1_000, 20_000);
        for i in 0..100 {
            let token = format!("{i:04}{}", "t".repeat(2_000));
            c.insert(&token, entry(10_000, "p"), 1, 1);
        }
        assert!(c.bytes() <= 20_000);
        assert!(
            c.len() < 10,
            "2 kB tokens: fewer than 10 fit in 20 kB, {} held",
            c.len()
        );
        assert!(c.get(&format!("0099{}", "t".repeat(2_000)), 2, 1).is_some());
    }

    #[test]
    fn tokens_of_entries_expired_on_lookup_still_count_until_they_are_released() {
        let mut c = TokenCache::new(1_000, 20_000);
        let token = |i: usize| format!("{i:04}{}", "t".repeat(2_000));
        for i in 0..8 {
            c.insert(&token(i), entry(100, "p"), 1, 1);
        }
        let held = c.bytes();
        for i in 0..8 {
            assert!(c.get(&token(i), 100, 1).is_none(), "expired");
        }
        assert!(c.is_empty());
        assert!(c.bytes() >= 8 * 2_000, "the expired tokens are still referenced");
        assert!(c.bytes() < held);
        for i in 100..200 {
            c.insert(&token(i), entry(10_000, "p"), 100, 1);
            assert!(c.bytes() <= 20_000, "after {i}: {} bytes", c.bytes());
        }
        assert!(c.get(&token(199), 101, 1).is_some());
    }

    #[test]
    fn answers_only_for_the_exact_token() {
        let mut c = TokenCache::default();
        c.insert("header.payload.signature", entry(200, "p1"), 100, 1);
        for other in [
            "header.payload.signatur",
            "header.payload.signaturE",
            "Header.payload.signature",
            "header.payload.signature\u{0}",
            "header.payload.signature\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
            "",
        ] {
            assert!(c.get(other, 150, 1).is_none(), "{other}");
        }
        assert!(c.get("header.payload.signature", 150, 1).is_some());
    }

    #[test]
    fn tokens_with_the_same_hashed_tail_and_length_are_told_apart() {
        let tail = "s".repeat(HASHED_TAIL_BYTES);
        let (a, b, c3) = (
            format!("aaaa.{tail}"),
            format!("bbbb.{tail}"),
            format!("cccc.{tail}"),
        );
        let mut c = TokenCache::default();
        c.insert(&a, entry(200, "p-a"), 100, 1);
        c.insert(&b, entry(200, "p-b"), 100, 1);
        let patient = |t: &str, c: &mut TokenCache| c.get(t, 150, 1).and_then(|e| e.claims.patient.clone());
        assert_eq!(patient(&a, &mut c).as_deref(), Some("p-a"));
        assert_eq!(patient(&b, &mut c).as_deref(), Some("p-b"));
        assert_eq!(patient(&c3, &mut c), None, "same hash, not a cached token");
        assert_eq!(c.len(), 2);
    }
}
