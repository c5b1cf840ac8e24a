//! OAuth 2.0 token introspection (RFC 7662) for opaque tokens and fast revocation.
//!
//! Owns the introspection request a provider's endpoint receives, the mapping of its answer to
//! the same [`VerifiedClaims`] a JWT yields (so the scope and patient rules apply unchanged), and
//! the cache of answers: active answers are kept until `min(exp, max_cache_s)` — the revocation
//! delay an operator chooses — and inactive ones for a short negative TTL. The cache is keyed by
//! the SHA-256 of the token and bounded in entries. Nothing here performs I/O.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::claims::VerifiedClaims;
use crate::config::{ClientAuth, Introspection, Provider};
use crate::token_cache::CachedToken;

/// A token's cache key: SHA-256 of the token.
pub type TokenKey = [u8; 32];

/// The cache key of a token.
pub fn token_key(token: &str) -> TokenKey {
    hmac_sha256::Hash::hash(token.as_bytes())
}

/// The introspection callout for one token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntrospectionRequest {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// Request headers besides the pseudo-headers (`content-type`, `authorization`, `accept`).
    pub headers: Vec<(&'static str, String)>,
    /// `token=...&token_type_hint=access_token`, form-encoded.
    pub body: String,
    pub timeout_ms: u64,
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds the RFC 7662 request for `token` at the provider's endpoint.
pub fn request(intro: &Introspection, token: &str) -> IntrospectionRequest {
    let mut headers = vec![
        ("content-type", "application/x-www-form-urlencoded".to_string()),
        ("accept", "application/json".to_string()),
    ];
    match &intro.client_auth {
        ClientAuth::ClientSecretBasic {
            client_id,
            client_secret,
        } => {
            // RFC 6749 2.3.1: both parts form-encoded before base64.
            let pair = format!("{}:{}", form_encode(client_id), form_encode(client_secret));
            headers.push(("authorization", format!("Basic {}", STANDARD.encode(pair))));
        }
        ClientAuth::Bearer { token } => headers.push(("authorization", format!("Bearer {token}"))),
    }
    IntrospectionRequest {
        cluster: intro.cluster.clone(),
        authority: intro.endpoint.authority.clone(),
        path: intro.endpoint.path.clone(),
        headers,
        body: format!("token={}&token_type_hint=access_token", form_encode(token)),
        timeout_ms: intro.timeout_ms,
    }
}

/// What an introspection answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `active: true`: the token's facts.
    Active(VerifiedClaims),
    /// `active: false`, or an active answer that cannot be for this API (wrong `iss` or `aud`,
    /// expired `exp`).
    Inactive(&'static str),
}

/// Why an answer could not be used (the request fails closed with 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerError {
    /// The endpoint did not answer in time, or the connection failed.
    Unreachable,
    /// An HTTP status other than 200.
    Status(u16),
    /// Not a JSON object, or no boolean `active`.
    Malformed,
}

/// Largest introspection answer read (bytes).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

fn string(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Maps an RFC 7662 answer to claims. `patient_claim` names the patient member.
pub fn parse_answer(
    provider: &Provider,
    patient_claim: &str,
    status: u16,
    body: &[u8],
    now_s: u64,
) -> Result<Answer, AnswerError> {
    if status != 200 {
        return Err(AnswerError::Status(status));
    }
    if body.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::Malformed);
    }
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| AnswerError::Malformed)?;
    let active = v
        .get("active")
        .and_then(|a| a.as_bool())
        .ok_or(AnswerError::Malformed)?;
    if !active {
        return Ok(Answer::Inactive("the token is not active"));
    }
    if let Some(iss) = v.get("iss") {
        if iss.as_str() != Some(provider.issuer.as_str()) {
            return Ok(Answer::Inactive("the token was issued by another issuer"));
        }
    }
    if let Some(aud) = v.get("aud") {
        let auds: Vec<&str> = match aud {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
            _ => Vec::new(),
        };
        if !auds.iter().any(|a| provider.audiences.iter().any(|p| p == a)) {
            return Ok(Answer::Inactive("the token is not meant for this server"));
        }
    }
    let exp = match v.get("exp") {
        None => None,
        Some(e) => Some(e.as_u64().ok_or(AnswerError::Malformed)?),
    };
    if exp.is_some_and(|e| e <= now_s) {
        return Ok(Answer::Inactive("the token has expired"));
    }
    let scopes = match v.get("scope") {
        None => Vec::new(),
        Some(serde_json::Value::String(s)) => s
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
        Some(_) => return Err(AnswerError::Malformed),
    };
    Ok(Answer::Active(VerifiedClaims {
        issuer: provider.issuer.clone(),
        subject: string(&v, "sub"),
        client_id: string(&v, "client_id"),
        scopes,
        patient: string(&v, patient_claim),
        encounter: string(&v, "encounter"),
        fhir_user: string(&v, "fhirUser"),
        jti: string(&v, "jti"),
        // Without `exp` the answer is trusted for max_cache_s at most (see `Cache::insert`).
        expires_at: exp.unwrap_or(u64::MAX),
    }))
}

/// What one introspection settled for a token: given to every request that waited for it.
#[derive(Debug, Clone)]
pub enum Settled {
    /// Active: the facts, ready for authorization.
    Active(Rc<CachedToken>),
    /// Not active (or not for this API): why, for logs.
    Inactive(&'static str),
    /// No usable answer (the request fails closed).
    Failed(AnswerError),
}

/// The outcome of an introspection callout, for the requests waiting on its token.
#[derive(Debug, Clone)]
pub struct Introspected {
    pub key: TokenKey,
    pub settled: Settled,
}

impl Introspected {
    /// The outcome label counted in `introspections_total`: `active`, `inactive`, `unavailable`
    /// (unreachable, timed out, HTTP status other than 200) or `invalid` (not an RFC 7662 answer).
    pub fn outcome(&self) -> &'static str {
        match self.settled {
            Settled::Active(_) => "active",
            Settled::Inactive(_) => "inactive",
            Settled::Failed(AnswerError::Unreachable | AnswerError::Status(_)) => "unavailable",
            Settled::Failed(AnswerError::Malformed) => "invalid",
        }
    }
}

/// A cached answer.
#[derive(Debug, Clone)]
pub enum Cached {
    Active(Rc<CachedToken>),
    Inactive,
}

struct Entry {
    value: Cached,
    until: u64,
}

/// The introspection cache of one VM.
pub struct Cache {
    map: HashMap<TokenKey, Entry>,
    order: VecDeque<TokenKey>,
    max_entries: usize,
}

impl Cache {
    pub fn new(max_entries: usize) -> Cache {
        Cache {
            map: HashMap::new(),
            order: VecDeque::new(),
            max_entries: max_entries.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The cached answer for a token, while it is fresh.
    pub fn get(&mut self, key: &TokenKey, now_s: u64) -> Option<Cached> {
        match self.map.get(key) {
            Some(e) if now_s < e.until => Some(e.value.clone()),
            Some(_) => {
                self.map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches an answer: active until `min(exp, now + max_cache_s)`, inactive for
    /// `negative_cache_s`. The oldest entries leave first beyond `max_entries`.
    pub fn insert(&mut self, key: TokenKey, value: Cached, intro: &Introspection, now_s: u64) {
        let until = match &value {
            Cached::Active(t) => t.claims.expires_at.min(now_s.saturating_add(intro.max_cache_s)),
            Cached::Inactive => now_s.saturating_add(intro.negative_cache_s),
        };
        if until <= now_s {
            return;
        }
        if self.map.insert(key, Entry { value, until }).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.max_entries {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&oldest);
        }
        if self.order.len() > self.max_entries * 2 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    fn provider(auth: serde_json::Value) -> Provider {
        let c = json!({"providers": [{
            "issuer": "https://idp.example.org", "audiences": ["https://ehr.example.org/fhir"],
            "local_jwks": {"keys": []},
            "introspection": {"endpoint": "https://idp.example.org/token/introspect?x=1", "cluster": "idp",
                              "mode": "opaque", "client_auth": auth, "max_cache_s": 60, "negative_cache_s": 5}
        }]});
        Config::from_json(c.to_string().as_bytes())
            .unwrap()
            .providers
            .remove(0)
    }

    fn basic() -> Provider {
        provider(json!({"method": "client_secret_basic", "client_id": "edge gw", "client_secret": "s3:cr/t"}))
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn builds_an_rfc7662_request_with_client_authentication() {
        let p = basic();
        let r = request(p.introspection.as_ref().unwrap(), "opaque+token/=");
        assert_eq!(
            (r.cluster.as_str(), r.authority.as_str()),
            ("idp", "idp.example.org")
        );
        assert_eq!(r.path, "/token/introspect?x=1");
        assert_eq!(r.body, "token=opaque%2Btoken%2F%3D&token_type_hint=access_token");
        let auth = r.headers.iter().find(|(n, _)| *n == "authorization").unwrap();
        let decoded = STANDARD.decode(auth.1.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(String::from_utf8(decoded).unwrap(), "edge%20gw:s3%3Acr%2Ft");
        let b = provider(json!({"method": "bearer", "token": "gw-credential"}));
        let r = request(b.introspection.as_ref().unwrap(), "t");
        assert!(r
            .headers
            .contains(&("authorization", "Bearer gw-credential".to_string())));
    }

    #[test]
    fn maps_answers_to_claims_or_inactive() {
        let p = basic();
        let ok = |body: serde_json::Value| parse_answer(&p, "patient", 200, body.to_string().as_bytes(), NOW);
        let active = ok(
            json!({"active": true, "scope": "patient/*.rs launch/patient", "patient": "123",
            "client_id": "app", "sub": "u1", "exp": NOW + 100, "iss": "https://idp.example.org",
            "aud": ["x", "https://ehr.example.org/fhir"], "fhirUser": "Patient/123", "jti": "j"}),
        );
        let Ok(Answer::Active(c)) = active else {
            panic!("{active:?}")
        };
        assert_eq!(c.scopes, vec!["patient/*.rs", "launch/patient"]);
        assert_eq!(
            (c.patient.as_deref(), c.client_id.as_deref(), c.expires_at),
            (Some("123"), Some("app"), NOW + 100)
        );
        let inactive_cases = [
            json!({"active": false}),
            json!({"active": true, "iss": "https://evil.example.org"}),
            json!({"active": true, "aud": "https://other.example.org"}),
            json!({"active": true, "exp": NOW}),
        ];
        for body in inactive_cases {
            assert!(matches!(ok(body.clone()), Ok(Answer::Inactive(_))), "{body}");
        }
        let malformed = [
            json!({"active": "yes"}),
            json!({"scope": "x"}),
            json!([true]),
            json!({"active": true, "exp": "1"}),
        ];
        for body in malformed {
            assert_eq!(ok(body.clone()), Err(AnswerError::Malformed), "{body}");
        }
        assert_eq!(
            parse_answer(&p, "patient", 200, b"<html>", NOW),
            Err(AnswerError::Malformed)
        );
        assert_eq!(
            parse_answer(&p, "patient", 500, b"{}", NOW),
            Err(AnswerError::Status(500))
        );
    }

    #[test]
    fn caches_active_answers_until_the_revocation_delay_and_inactive_ones_briefly() {
        let p = basic();
        let intro = p.introspection.as_ref().unwrap();
        let mut cache = Cache::new(10);
        let active = |exp| {
            Cached::Active(Rc::new(CachedToken {
                claims: Rc::new(VerifiedClaims {
                    issuer: "i".into(),
                    expires_at: exp,
                    ..Default::default()
                }),
                granted: crate::scope::GrantedScopes::parse(&[]),
                token_hash: String::new(),
                forwarded: Rc::from(Vec::new()),
            }))
        };
        let (a, b, c) = (token_key("a"), token_key("b"), token_key("c"));
        cache.insert(a, active(NOW + 3600), intro, NOW);
        cache.insert(b, active(NOW + 30), intro, NOW);
        cache.insert(c, Cached::Inactive, intro, NOW);
        assert!(matches!(cache.get(&a, NOW + 59), Some(Cached::Active(_))));
        assert!(
            cache.get(&a, NOW + 60).is_none(),
            "max_cache_s is the revocation delay"
        );
        assert!(cache.get(&b, NOW + 30).is_none(), "never past exp");
        assert!(matches!(cache.get(&c, NOW + 4), Some(Cached::Inactive)));
        assert!(cache.get(&c, NOW + 5).is_none(), "negative TTL");
    }

    #[test]
    fn the_cache_is_bounded() {
        let p = basic();
        let intro = p.introspection.as_ref().unwrap();
        let mut cache = Cache::new(100);
        for i in 0..1000 {
            cache.insert(token_key(&i.to_string()), Cached::Inactive, intro, NOW);
        }
        assert_eq!(cache.len(), 100);
        assert!(cache.get(&token_key("999"), NOW).is_some());
        assert!(cache.get(&token_key("0"), NOW).is_none());
    }
}
