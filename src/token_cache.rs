//! The verified-token cache of one VM: a token verified once is not verified again until it
//! expires or the keys change.
//!
//! Keyed by the SHA-256 of the token (a collision would be a forgery, so no weaker hash), holding
//! the verified claims and the compiled scopes. Bounded in entries and in bytes (oldest first out),
//! each entry expires at the token's `exp` (never later), and the whole cache is dropped when any
//! provider's key set changes, so a key removed from a JWKS stops verifying at once.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::claims::VerifiedClaims;
use crate::scope::GrantedScopes;

/// What a cache hit gives back.
#[derive(Debug)]
pub struct CachedToken {
    pub claims: Rc<VerifiedClaims>,
    pub granted: GrantedScopes,
}

/// Default bound on entries.
pub const DEFAULT_MAX_ENTRIES: usize = 4096;
/// Default bound on the approximate bytes held.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;

type Key = [u8; 32];

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
    bytes: usize,
    generation: u64,
    max_entries: usize,
    max_bytes: usize,
    stats: std::cell::Cell<CacheStats>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }
}

fn key_of(token: &str) -> Key {
    hmac_sha256::Hash::hash(token.as_bytes())
}

/// Approximate heap bytes of an entry: the claims' strings plus fixed overhead.
fn size_of(claims: &VerifiedClaims) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    256 + claims.issuer.len()
        + opt(&claims.subject)
        + opt(&claims.client_id)
        + opt(&claims.patient)
        + opt(&claims.encounter)
        + opt(&claims.fhir_user)
        + opt(&claims.jti)
        + claims.scopes.iter().map(|s| s.len() * 3 + 48).sum::<usize>()
}

impl TokenCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        TokenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            generation: 0,
            max_entries: max_entries.max(1),
            max_bytes,
            stats: std::cell::Cell::new(CacheStats::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
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
            self.generation = generation;
        }
    }

    /// The cached verification of `token`, if it is still valid at `now_s` under the key-set
    /// `generation`.
    pub fn get(&mut self, token: &str, now_s: u64, generation: u64) -> Option<Rc<CachedToken>> {
        self.sync_generation(generation);
        let key = key_of(token);
        let hit = match self.map.get(&key) {
            Some(e) if now_s < e.expires_at => Some(e.value.clone()),
            Some(_) => {
                if let Some(e) = self.map.remove(&key) {
                    self.bytes = self.bytes.saturating_sub(e.bytes);
                }
                None
            }
            None => None,
        };
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
        let bytes = size_of(&value.claims);
        if bytes > self.max_bytes {
            return;
        }
        let key = key_of(token);
        if let Some(old) = self.map.insert(
            key,
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
        while self.map.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.bytes = self.bytes.saturating_sub(e.bytes);
                self.count(|s| s.evictions += 1);
            }
        }
        // Keys of entries removed on expiry linger in `order`; bound it too.
        if self.order.len() > self.max_entries * 2 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
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
}
