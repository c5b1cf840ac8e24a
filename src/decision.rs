//! The request decision: from the facts of one request to a [`Decision`] value.
//!
//! [`Engine`] owns everything a VM decides with: the validated configuration, the providers' key
//! sets ([`KeyManager`]) and the verified-token cache. It is built once per configuration; the
//! per-request path only reads it (and the cache). The adapter hands it request facts, the time,
//! the shared data and a signature verifier, and acts on the answer. The order of checks:
//!
//! 1. method and method-override headers;
//! 2. public paths (GET/HEAD only) and the filter's own `.well-known/smart-configuration`;
//! 3. the bearer token (RFC 6750), verified against its issuer's keys (or found in the verified-token
//!    cache), then checked against the revocation list (the kill switch);
//! 4. FHIR classification of method + path + query (classified up front for the audit record, but
//!    a classification error is only answered after the token checks);
//! 5. SMART authorization (scopes, patient context);
//! 6. on allow, the verified facts forwarded as `x-smart-*` headers (inbound ones are always removed).

use std::rc::Rc;

use crate::authz;
use crate::claims::VerifiedClaims;
use crate::config::{Config, ConfigError, ForwardHeaders, IntrospectionMode};
use crate::denial::{Denial, RequestReason, TokenReason};
use crate::fhir::{self, ClassifyError, Interaction};
use crate::introspection::{
    self, Answer, AnswerError, Cached, Introspected, IntrospectionRequest, Settled, TokenKey,
};
use crate::jwks::cache::{FetchAnswer, KeyManager, Refetch, SharedStore};
use crate::jwks::KeySet;
use crate::revocation::Revocation;
use crate::scope::GrantedScopes;
use crate::token::{self, KeyLookup, SignatureVerifier, TokenError};
use crate::token_cache::{CachedToken, TokenCache};

/// Prefix of the headers this filter forwards; inbound ones are removed from every request.
pub const FORWARDED_PREFIX: &str = "x-smart-";

/// The path, under `fhir_base`, of the SMART configuration document the filter can answer itself.
pub const WELL_KNOWN_SMART_CONFIGURATION: &str = "/.well-known/smart-configuration";

/// Headers that ask an upstream to treat a request as another method.
pub const METHOD_OVERRIDE_HEADERS: &[&str] =
    &["x-http-method-override", "x-http-method", "x-method-override"];

/// True for request headers the filter owns: they are removed before anything else.
pub fn is_forwarded_header(name: &str) -> bool {
    name.len() >= FORWARDED_PREFIX.len()
        && name
            .get(..FORWARDED_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(FORWARDED_PREFIX))
}

/// The facts of a request the decision needs.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`, with its query.
    pub path: &'a str,
    /// Every request header, names lowercase (as Envoy gives them).
    pub headers: &'a [(String, String)],
}

impl<'a> RequestFacts<'a> {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the decision learned about the request, for the audit record and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// [`Interaction::kind`], when the request was classified.
    pub interaction: Option<&'static str>,
    pub resource_type: Option<String>,
    /// The resource id, for instance-level interactions.
    pub resource_id: Option<String>,
    /// Names of the search parameters (never their values).
    pub search_params: Vec<String>,
    /// Short SHA-256 prefix of the token (never the token).
    pub token_hash: Option<String>,
    /// The verified claims, when the token verified.
    pub claims: Option<Rc<VerifiedClaims>>,
    /// Scope context that allowed the request (`patient`, `user`, `system`).
    pub allowed_by: Option<&'static str>,
    /// Whether the verified-token cache answered (the introspection cache, for a token that is not
    /// a JWT).
    pub cache_hit: bool,
    /// What the token's verdict came from, when a token was looked at.
    pub token_source: Option<TokenSource>,
    /// The request was public (no token needed).
    pub public: bool,
}

/// What decided about a token: its JWT check, or an introspection answer (cached or live).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The JWS signature and claims, checked at the edge.
    Jwt,
    /// An introspection answer from this VM's cache.
    IntrospectionCached,
    /// An introspection callout this request waited for (or its failure).
    IntrospectionLive,
}

impl TokenSource {
    /// The value written in audit records (`token_source`) and metric tags.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenSource::Jwt => "jwt",
            TokenSource::IntrospectionCached => "introspection_cached",
            TokenSource::IntrospectionLive => "introspection_live",
        }
    }
}

/// A request allowed: what to change before forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Headers to set (the verified facts); shared with the cached token they come from.
    pub set_headers: Rc<[(&'static str, String)]>,
    /// A new `:path` (a patient constraint appended), when the query changes.
    pub new_path: Option<String>,
    pub facts: Facts,
    /// Body checks still to run (only when [`Engine::set_body_checks`] enabled them): the request
    /// body before forwarding, the response body before passing it on.
    pub pending: Option<Box<Pending>>,
}

/// What an allowed request still owes the edge: the checks and what they decide with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The classified request (a form search merges its URL query with the body).
    pub request: fhir::FhirRequest,
    /// Read the request body and check it ([`Engine::check_request_body`]) before forwarding.
    pub body_check: Option<crate::body::BodyCheck>,
    /// Read the response body and check it ([`Engine::check_response_body`]).
    pub response_check: Option<crate::body::ResponseCheck>,
    pub claims: Rc<VerifiedClaims>,
    pub granted: GrantedScopes,
}

/// A local answer the filter owns (not an error): the SMART configuration document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// The decision for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(Denial, Box<Facts>),
    Respond(LocalResponse),
    /// The keys for `provider` are being fetched: pause the request and decide again (with
    /// `may_wait` false) when the provider's key generation moves past `generation`, when no fetch
    /// is pending any more, or at `deadline_ms`.
    AwaitKeys {
        provider: usize,
        generation: u64,
        deadline_ms: u64,
    },
    /// The token must be introspected: pause the request until the answer for `key` arrives (then
    /// decide again with it, [`Engine::decide_introspected`]) or `deadline_ms` passes (decide again
    /// with [`AnswerError::Unreachable`]). `request` is the callout to send; `None` when one for the
    /// same token is already in flight (concurrent requests share it).
    AwaitIntrospection {
        key: TokenKey,
        request: Option<Box<IntrospectionRequest>>,
        deadline_ms: u64,
    },
}

/// Time a request waits for an introspection beyond the callout's own timeout, in case the host
/// never answers (Envoy answers a timed-out callout itself).
pub const INTROSPECTION_WAIT_MARGIN_MS: u64 = 1000;

/// The introspecting provider (at most one: opaque tokens name no issuer to choose by).
struct Introspecting {
    provider: usize,
    answers: introspection::Cache,
    /// Tokens whose callout is in flight, with the time it is given up on.
    in_flight: std::collections::HashMap<TokenKey, u64>,
}

/// Everything a VM decides with.
pub struct Engine {
    config: Rc<Config>,
    keys: KeyManager<KeySet>,
    cache: TokenCache,
    /// Whether the adapter reads bodies for the checks authorization asks for. Until it does,
    /// requests that need them are refused as before (fail closed).
    body_checks: bool,
    revocation: Revocation,
    introspecting: Option<Introspecting>,
}

impl KeyLookup for KeyManager<KeySet> {
    fn key_set(&self, provider: usize, _issuer: &str) -> Option<&KeySet> {
        self.key_set_ref(provider)
    }
}

fn parse_key_set(bytes: &[u8]) -> Result<KeySet, String> {
    KeySet::from_jwks(bytes).map_err(|e| e.to_string())
}

impl Engine {
    /// Builds the engine for a configuration. `owner` names this VM in shared-data leases.
    pub fn new(config: Config, owner: &str) -> Result<Engine, ConfigError> {
        let keys = KeyManager::new(&config.providers, parse_key_set, owner)?;
        let revocation = Revocation::new(&config.revocation, owner);
        // Configuration allows one introspecting provider at most.
        let introspecting = config.providers.iter().enumerate().find_map(|(provider, p)| {
            p.introspection.as_ref().map(|i| Introspecting {
                provider,
                answers: introspection::Cache::new(i.max_entries),
                in_flight: std::collections::HashMap::new(),
            })
        });
        Ok(Engine {
            config: Rc::new(config),
            keys,
            cache: TokenCache::default(),
            body_checks: false,
            revocation,
            introspecting,
        })
    }

    /// Enables the body-aware decisions: the adapter promises to act on [`Allowed::pending`]
    /// (buffer and check request and response bodies). Off by default: such requests are refused.
    pub fn set_body_checks(&mut self, enabled: bool) {
        self.body_checks = enabled;
    }

    /// Checks a request body a [`Pending`] asked for: what still applies, or the denial.
    pub fn check_request_body(
        &self,
        pending: &Pending,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<crate::body::BodyAllowed, Denial> {
        match &pending.body_check {
            Some(check) => crate::body::check_request(
                &pending.request,
                check,
                content_type,
                body,
                &pending.claims,
                &pending.granted,
                &self.config,
            ),
            None => Ok(crate::body::BodyAllowed {
                append_query: None,
                response_check: pending.response_check.clone(),
            }),
        }
    }

    /// Checks a response body against a response check.
    pub fn check_response_body(
        &self,
        check: &crate::body::ResponseCheck,
        granted: &GrantedScopes,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> crate::body::ResponseVerdict {
        crate::body::check_response(check, status, content_type, body, granted, &self.config)
    }

    pub fn config(&self) -> &Rc<Config> {
        &self.config
    }

    pub fn keys(&self) -> &KeyManager<KeySet> {
        &self.keys
    }

    pub fn keys_mut(&mut self) -> &mut KeyManager<KeySet> {
        &mut self.keys
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    pub fn revocation(&self) -> &Revocation {
        &self.revocation
    }

    pub fn revocation_mut(&mut self) -> &mut Revocation {
        &mut self.revocation
    }

    /// Decides one request. `may_wait` is false when deciding again after a wait for keys: the
    /// request is then answered, never paused for keys again.
    pub fn decide(
        &mut self,
        req: &RequestFacts<'_>,
        now_ms: u64,
        store: &mut dyn SharedStore,
        verifier: &dyn SignatureVerifier,
        may_wait: bool,
    ) -> Decision {
        self.decide_inner(req, now_ms, store, verifier, may_wait, None)
    }

    /// Decides again a request that waited for the introspection of its token, with its outcome
    /// (answered, never paused again).
    pub fn decide_introspected(
        &mut self,
        req: &RequestFacts<'_>,
        now_ms: u64,
        store: &mut dyn SharedStore,
        verifier: &dyn SignatureVerifier,
        answer: &Introspected,
    ) -> Decision {
        self.decide_inner(req, now_ms, store, verifier, false, Some(answer))
    }

    /// Takes the answer of the introspection callout for `key`: maps it to the token's facts (or
    /// inactive, or failed), caches it, and returns it for the requests that waited for it.
    pub fn on_introspection_answer(
        &mut self,
        key: TokenKey,
        answer: FetchAnswer,
        now_ms: u64,
    ) -> Introspected {
        let failed = |e| Introspected {
            key,
            settled: Settled::Failed(e),
        };
        let config = &*self.config;
        let Some(intro) = self.introspecting.as_mut() else {
            return failed(AnswerError::Unreachable);
        };
        intro.in_flight.remove(&key);
        let Some((provider, settings)) = config
            .providers
            .get(intro.provider)
            .and_then(|p| p.introspection.as_ref().map(|i| (p, i)))
        else {
            return failed(AnswerError::Unreachable);
        };
        let now_s = now_ms / 1000;
        let parsed = match answer {
            FetchAnswer::Failed => Err(AnswerError::Unreachable),
            FetchAnswer::Response { status, body } => {
                introspection::parse_answer(provider, &config.patient_claim, status, &body, now_s)
            }
        };
        let settled = match parsed {
            Ok(Answer::Active(claims)) => {
                let entry = cached_token(claims, key_fingerprint(&key), config.forward_headers);
                intro
                    .answers
                    .insert(key, Cached::Active(entry.clone()), settings, now_s);
                Settled::Active(entry)
            }
            Ok(Answer::Inactive(why)) => {
                intro.answers.insert(key, Cached::Inactive, settings, now_s);
                Settled::Inactive(why)
            }
            Err(e) => Settled::Failed(e),
        };
        Introspected { key, settled }
    }

    /// Forgets the callout in flight for `key` (its sender went away): the next request sends it
    /// again.
    pub fn forget_introspection(&mut self, key: &TokenKey) {
        if let Some(intro) = self.introspecting.as_mut() {
            intro.in_flight.remove(key);
        }
    }

    fn decide_inner(
        &mut self,
        req: &RequestFacts<'_>,
        now_ms: u64,
        store: &mut dyn SharedStore,
        verifier: &dyn SignatureVerifier,
        may_wait: bool,
        answer: Option<&Introspected>,
    ) -> Decision {
        let mut facts = Facts::default();
        let config = &*self.config;
        let deny = |d: Denial, f: Facts| Decision::Deny(d, Box::new(f));

        // 1. Method, and method overrides (never forwarded unchecked).
        let Some(method) = fhir::Method::parse(req.method) else {
            return deny(
                Denial::BadRequest(
                    RequestReason::MethodNotAllowed,
                    "This method is not used by the FHIR API",
                ),
                facts,
            );
        };
        for name in METHOD_OVERRIDE_HEADERS {
            for (n, v) in req.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
                let _ = n;
                if !v.trim().eq_ignore_ascii_case(method.as_str()) {
                    return deny(
                        Denial::BadRequest(
                            RequestReason::MethodOverride,
                            "Method override headers are not accepted; send the method itself",
                        ),
                        facts,
                    );
                }
            }
        }

        // Classified now so that every record names the interaction; a classification error is
        // answered after the token checks (step 4), as before.
        let classified = fhir::classify(req.method, req.path, &config.fhir_base);
        if let Ok(request) = &classified {
            facts.interaction = Some(request.interaction.kind());
            facts.resource_type = request.interaction.resource_type().map(str::to_string);
            facts.resource_id = resource_id(&request.interaction);
            facts.search_params = request.query.params.iter().map(|p| p.name.clone()).collect();
        }

        // 2. Public paths and the filter's own SMART configuration.
        let (path, query) = match req.path.split_once('?') {
            Some((p, q)) => (p, q),
            None => (req.path, ""),
        };
        if matches!(method, fhir::Method::Get | fhir::Method::Head) {
            // `{fhir_base}/.well-known/smart-configuration`, compared without building it.
            let well_known = path
                .strip_prefix(config.fhir_base.as_str())
                .is_some_and(|rest| rest == WELL_KNOWN_SMART_CONFIGURATION);
            if well_known {
                if let Some(doc) = &config.smart_configuration {
                    return Decision::Respond(LocalResponse {
                        status: 200,
                        content_type: "application/json",
                        body: doc.to_string(),
                    });
                }
            }
            if config.public_paths.iter().any(|p| p == path) {
                facts.public = true;
                return Decision::Allow(Allowed {
                    set_headers: Rc::from(Vec::new()),
                    new_path: None,
                    facts,
                    pending: None,
                });
            }
        }

        // 3. The bearer token. Its characters are checked on a cache miss only: a hit has the exact
        // bytes of a token that passed every check.
        let token = match token::bearer_credentials(req.headers, query, config.max_token_bytes) {
            Ok(t) => t,
            Err(e) => return deny(e.denial(), facts),
        };
        let now_s = now_ms / 1000;
        let generation = self.keys.generations();
        // A token that is not a JWS is introspected by the introspecting provider, if any.
        let opaque = self.introspecting.is_some() && !is_jws_shaped(token);
        let entry = if opaque {
            if token.len() > config.max_token_bytes {
                return deny(Denial::InvalidToken(TokenReason::TooLarge), facts);
            }
            if let Err(e) = token::check_b64token(token) {
                return deny(e.denial(), facts);
            }
            let key = introspection::token_key(token);
            facts.token_hash = Some(key_fingerprint(&key));
            let Some(intro) = self.introspecting.as_mut() else {
                return deny(Denial::Internal, facts);
            };
            let verdict = introspect(intro, config, token, &key, now_ms, answer, &mut facts);
            facts.cache_hit = facts.token_source == Some(TokenSource::IntrospectionCached);
            match verdict {
                Ok(entry) => entry,
                Err(stop) => return stop.decision(facts),
            }
        } else if let Some(entry) = self.cache.get(token, now_s, generation) {
            facts.token_source = Some(TokenSource::Jwt);
            facts.cache_hit = true;
            facts.token_hash = Some(entry.token_hash.clone());
            entry
        } else {
            if let Err(e) = token::check_b64token(token) {
                return deny(e.denial(), facts);
            }
            facts.token_source = Some(TokenSource::Jwt);
            // Hashed (and verified) once per token, until its `exp` or a key change.
            let token_hash = token::token_fingerprint(token);
            facts.token_hash = Some(token_hash.clone());
            match token::verify(token, config, &self.keys, now_s, verifier) {
                Ok(claims) => {
                    let entry = cached_token(claims, token_hash, config.forward_headers);
                    self.cache.insert(token, entry.clone(), now_s, generation);
                    entry
                }
                Err(TokenError::KeysNotLoaded { provider }) => {
                    if may_wait && self.keys.fetch_pending(provider) {
                        return Decision::AwaitKeys {
                            provider,
                            generation: self.keys.generation(provider),
                            deadline_ms: now_ms.saturating_add(self.keys.wait_budget_ms(provider)),
                        };
                    }
                    return deny(Denial::KeysUnavailable, facts);
                }
                Err(TokenError::UnknownKey { provider }) => {
                    if may_wait && self.keys.request_refetch(provider, now_s, store) == Refetch::Scheduled {
                        return Decision::AwaitKeys {
                            provider,
                            generation: self.keys.generation(provider),
                            deadline_ms: now_ms.saturating_add(self.keys.wait_budget_ms(provider)),
                        };
                    }
                    return deny(Denial::InvalidToken(TokenReason::UnknownKey), facts);
                }
                Err(e) => return deny(e.denial(), facts),
            }
        };
        let claims = entry.claims.clone();
        facts.claims = Some(claims.clone());
        // The kill switch, on every request (cache hits included).
        if self.revocation.check(&claims).is_some() {
            return deny(Denial::InvalidToken(TokenReason::Revoked), facts);
        }
        // A JWT of a provider that introspects `always` must also be active at its provider (its
        // own verified claims are what authorization reads).
        if let (false, Some(intro)) = (opaque, self.introspecting.as_mut()) {
            let always = config.providers.get(intro.provider).is_some_and(|p| {
                p.issuer == claims.issuer
                    && p.introspection
                        .as_ref()
                        .is_some_and(|i| i.mode == IntrospectionMode::Always)
            });
            if always {
                let key = introspection::token_key(token);
                if let Err(stop) = introspect(intro, config, token, &key, now_ms, answer, &mut facts) {
                    return stop.decision(facts);
                }
            }
        }

        // 4. Which FHIR interaction.
        let request = match classified {
            Ok(r) => r,
            Err(e) => return deny(classify_denial(&e), facts),
        };

        // 5. SMART authorization.
        let conditional_create = matches!(request.interaction, Interaction::Create { .. })
            && req.header("if-none-exist").is_some();
        let authorized = match authz::authorize(&request, conditional_create, &claims, &entry.granted, config)
        {
            Ok(a) => a,
            Err(f) => return deny(f.to_denial(), facts),
        };
        facts.allowed_by = authorized.context.map(|c| c.as_str());
        if method == fhir::Method::Head && authorized.response_check.is_some() {
            // A HEAD response carries no body to check, and its status alone would tell whether a
            // resource outside the grant exists.
            return deny(
                Denial::Forbidden {
                    reason: crate::denial::ForbiddenReason::NotEnforceableAtEdge,
                    scope: None,
                    detail: format!(
                        "HEAD {}: the response decides for this token; use GET",
                        request.interaction.kind()
                    ),
                },
                facts,
            );
        }
        if authorized.needs_body() && !self.body_checks {
            return deny(
                Denial::Forbidden {
                    reason: crate::denial::ForbiddenReason::NotEnforceableAtEdge,
                    scope: None,
                    detail: format!(
                        "{}: the body decides for this token, and body checks are not enabled",
                        request.interaction.kind()
                    ),
                },
                facts,
            );
        }

        // 6. Forward the verified facts (built once per token, when it verified).
        let set_headers = entry.forwarded.clone();
        // The constrained query is re-encoded whole, so the upstream reads exactly what was judged.
        let new_path = authorized
            .append_query
            .as_ref()
            .map(|param| path_with_param(path, &request.query, param));
        let pending = authorized.needs_body().then(|| {
            Box::new(Pending {
                request: request.clone(),
                body_check: authorized.body_check.clone(),
                response_check: authorized.response_check.clone(),
                claims: claims.clone(),
                granted: entry.granted.clone(),
            })
        });
        Decision::Allow(Allowed {
            set_headers,
            new_path,
            facts,
            pending,
        })
    }
}

/// Why a token's introspection did not give its facts.
enum Stop {
    Deny(Denial),
    /// Wait for the introspection of `key` ([`Decision::AwaitIntrospection`]).
    Wait {
        key: TokenKey,
        request: Option<Box<IntrospectionRequest>>,
        deadline_ms: u64,
    },
}

impl Stop {
    /// The decision the stop makes: the refusal, or waiting for the introspection.
    fn decision(self, facts: Facts) -> Decision {
        match self {
            Stop::Deny(d) => Decision::Deny(d, Box::new(facts)),
            Stop::Wait {
                key,
                request,
                deadline_ms,
            } => Decision::AwaitIntrospection {
                key,
                request,
                deadline_ms,
            },
        }
    }
}

/// A token shaped as a JWS compact serialization (three parts); anything else is opaque.
fn is_jws_shaped(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The token's short fingerprint (as [`token::token_fingerprint`]) from its SHA-256.
fn key_fingerprint(key: &TokenKey) -> String {
    token::hex(key.get(..6).unwrap_or_default())
}

/// Bound on the tokens tracked as in flight before stale ones are dropped.
const MAX_IN_FLIGHT: usize = 1024;

/// The introspection verdict on a token: its facts (active), or a refusal, or a wait for the
/// callout. `answer` is the outcome a waiting request resumes with.
fn introspect(
    intro: &mut Introspecting,
    config: &Config,
    token: &str,
    key: &TokenKey,
    now_ms: u64,
    answer: Option<&Introspected>,
    facts: &mut Facts,
) -> Result<Rc<CachedToken>, Stop> {
    let Some(settings) = config
        .providers
        .get(intro.provider)
        .and_then(|p| p.introspection.as_ref())
    else {
        return Err(Stop::Deny(Denial::Internal));
    };
    let settled = match answer.filter(|a| a.key == *key) {
        Some(a) => {
            facts.token_source = Some(TokenSource::IntrospectionLive);
            a.settled.clone()
        }
        None => match intro.answers.get(key, now_ms / 1000) {
            Some(cached) => {
                facts.token_source = Some(TokenSource::IntrospectionCached);
                match cached {
                    Cached::Active(entry) => Settled::Active(entry),
                    Cached::Inactive => Settled::Inactive("cached"),
                }
            }
            None => {
                // One callout per token: concurrent requests with the same token wait for it.
                if let Some(deadline_ms) = intro.in_flight.get(key).copied().filter(|d| *d > now_ms) {
                    return Err(Stop::Wait {
                        key: *key,
                        request: None,
                        deadline_ms,
                    });
                }
                if intro.in_flight.len() >= MAX_IN_FLIGHT {
                    intro.in_flight.retain(|_, d| *d > now_ms);
                }
                let deadline_ms = now_ms
                    .saturating_add(settings.timeout_ms)
                    .saturating_add(INTROSPECTION_WAIT_MARGIN_MS);
                intro.in_flight.insert(*key, deadline_ms);
                return Err(Stop::Wait {
                    key: *key,
                    request: Some(Box::new(introspection::request(settings, token))),
                    deadline_ms,
                });
            }
        },
    };
    match settled {
        Settled::Active(entry) => Ok(entry),
        Settled::Inactive(_) => Err(Stop::Deny(Denial::InvalidToken(TokenReason::Inactive))),
        Settled::Failed(_) => Err(Stop::Deny(Denial::IntrospectionUnavailable)),
    }
}

/// What a verified token (or an active introspection answer) leaves for later requests with the
/// same token: its claims, parsed scopes and forwarded headers, built once.
fn cached_token(claims: VerifiedClaims, token_hash: String, forward: ForwardHeaders) -> Rc<CachedToken> {
    Rc::new(CachedToken {
        granted: GrantedScopes::parse(&claims.scopes),
        forwarded: Rc::from(verified_headers(&claims, forward)),
        claims: Rc::new(claims),
        token_hash,
    })
}

/// The `x-smart-*` headers that forward a verified token's facts upstream (values with control
/// characters are left out).
pub fn verified_headers(claims: &VerifiedClaims, forward: ForwardHeaders) -> Vec<(&'static str, String)> {
    let mut set_headers = Vec::with_capacity(7);
    if let Some(p) = &claims.patient {
        set_headers.push(("x-smart-patient", p.clone()));
    }
    set_headers.push(("x-smart-scope", claims.scope_string()));
    if let Some(c) = &claims.client_id {
        set_headers.push(("x-smart-client-id", c.clone()));
    }
    if let Some(s) = &claims.subject {
        set_headers.push(("x-smart-sub", s.clone()));
    }
    if let Some(u) = &claims.fhir_user {
        set_headers.push(("x-smart-fhir-user", u.clone()));
    }
    if let Some(e) = &claims.encounter {
        set_headers.push(("x-smart-encounter", e.clone()));
    }
    set_headers.retain(|(_, v)| is_header_value_safe(v));
    // The digest covers every fact, forwarded or not: two identities never share a key.
    if forward.includes(IDENTITY_HEADER) {
        let identity = identity_digest(&set_headers);
        set_headers.push((IDENTITY_HEADER, identity));
    }
    set_headers.retain(|(name, _)| forward.includes(name));
    set_headers
}

/// The forwarded header that digests all the others: one authority-safe value a cache or limiter
/// can key on.
pub const IDENTITY_HEADER: &str = "x-smart-identity";

/// Lowercase hex SHA-256 of the forwarded facts as `name:value\n` lines in a fixed order. Values
/// never hold a control character, so the encoding is unambiguous: two different sets of forwarded
/// facts (an absent fact included) never share a digest.
fn identity_digest(headers: &[(&'static str, String)]) -> String {
    let mut h = hmac_sha256::Hash::new();
    for (name, value) in headers {
        h.update(name.as_bytes());
        h.update(b":");
        h.update(value.as_bytes());
        h.update(b"\n");
    }
    crate::token::hex(&h.finalize())
}

/// The `:path` to forward: `path` (without query) and the classified `query` with `(name, value)`
/// appended, re-encoded whole so that the upstream reads exactly what was judged.
pub fn path_with_param(path: &str, query: &fhir::Query, (name, value): &(String, String)) -> String {
    let mut q = query.clone();
    q.push(fhir::SearchParam::new(name, &[value.as_str()]));
    format!("{path}?{}", q.to_query_string())
}

/// Header values forwarded upstream must not carry control characters (header injection).
fn is_header_value_safe(v: &str) -> bool {
    !v.chars().any(|c| c.is_control())
}

fn resource_id(i: &Interaction) -> Option<String> {
    match i {
        Interaction::Read { id, .. }
        | Interaction::Vread { id, .. }
        | Interaction::Update { id, .. }
        | Interaction::Patch { id, .. }
        | Interaction::Delete { id, .. }
        | Interaction::HistoryInstance { id, .. }
        | Interaction::SearchCompartment { id, .. } => Some(id.clone()),
        Interaction::Operation {
            target: fhir::OperationTarget::Instance { id, .. },
            ..
        } => Some(id.clone()),
        _ => None,
    }
}

/// The denial for a request that could not be classified.
pub fn classify_denial(e: &ClassifyError) -> Denial {
    let b = Denial::BadRequest;
    match e {
        ClassifyError::OutsideBase => b(
            RequestReason::OutsideBase,
            "This path is not part of the FHIR API",
        ),
        ClassifyError::Malformed(what) => b(RequestReason::Malformed, what),
        ClassifyError::TooLong => b(RequestReason::UriTooLong, "The request URI is too long"),
        ClassifyError::UnknownResourceType => b(
            RequestReason::UnknownResourceType,
            "The path names no FHIR R4 resource type",
        ),
        ClassifyError::UnsupportedMethod => b(
            RequestReason::MethodNotAllowed,
            "This method is not allowed on this FHIR path",
        ),
        ClassifyError::UnsupportedPath(what) => b(RequestReason::UnsupportedPath, what),
    }
}

#[cfg(test)]
mod tests {

    use serde_json::json;

    use super::*;
    use crate::jwks::cache::FetchAnswer;
    use crate::token::test_support::{self, Signer, AUD, ISS, NOW};
    use crate::token::{Algorithm, JwtSimpleVerifier};

    type Store = crate::shared::MemoryStore;

    fn engine(revocation: serde_json::Value) -> Engine {
        let jwks: serde_json::Value = serde_json::from_slice(&test_support::default_jwks()).unwrap();
        let c = json!({
            "fhir_base": "/fhir",
            "providers": [{"issuer": ISS, "audiences": [AUD], "local_jwks": jwks}],
            "revocation": revocation,
        });
        let mut e = Engine::new(Config::from_json(c.to_string().as_bytes()).unwrap(), "w0").unwrap();
        e.set_body_checks(true);
        e
    }

    fn token(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let mut c = test_support::good_claims();
        edit(&mut c);
        test_support::mint(Algorithm::ES256, Signer::P256, &c)
    }

    fn decide(e: &mut Engine, path: &str, token: Option<&str>) -> Decision {
        let mut headers = vec![("x-request-id".to_string(), "r1".to_string())];
        if let Some(t) = token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        let req = RequestFacts {
            method: "GET",
            path,
            headers: &headers,
        };
        e.decide(&req, NOW * 1000, &mut Store::default(), &JwtSimpleVerifier, false)
    }

    fn is_revoked(d: &Decision) -> bool {
        matches!(d, Decision::Deny(Denial::InvalidToken(TokenReason::Revoked), _))
    }

    #[test]
    fn refuses_revoked_clients_subjects_and_token_ids_after_verification() {
        let mut e = engine(json!({"client_ids": ["bad-app"], "subjects": ["mallory"], "jtis": ["leaked"]}));
        let path = "/fhir/Observation?patient=123";
        let table = [
            (token(|_| {}), false),
            (token(|c| c["client_id"] = json!("bad-app")), true),
            (token(|c| c["sub"] = json!("mallory")), true),
            (token(|c| c["jti"] = json!("leaked")), true),
        ];
        for (t, revoked) in table {
            let d = decide(&mut e, path, Some(&t));
            assert_eq!(is_revoked(&d), revoked, "{d:?}");
            if let Decision::Deny(_, facts) = &d {
                assert!(facts.claims.is_some(), "the audit names who was refused");
                assert_eq!(facts.interaction, Some("search-type"));
            }
        }
    }

    #[test]
    fn a_cached_token_is_refused_once_its_client_is_revoked_by_a_refresh() {
        let mut e = engine(json!({"refresh": {"uri": "http://lists.example.org/r", "cluster": "lists"}}));
        let t = token(|_| {});
        let path = "/fhir/Observation?patient=123";
        assert!(matches!(decide(&mut e, path, Some(&t)), Decision::Allow(a) if !a.facts.cache_hit));
        assert!(matches!(decide(&mut e, path, Some(&t)), Decision::Allow(a) if a.facts.cache_hit));
        let mut store = Store::default();
        let (req, _) = e.revocation_mut().poll(NOW * 1000, &mut store);
        assert!(req.is_some());
        let list = FetchAnswer::Response {
            status: 200,
            body: br#"{"client_ids": ["app-1"]}"#.to_vec(),
        };
        e.revocation_mut().on_answer(list, NOW * 1000, &mut store);
        let d = decide(&mut e, path, Some(&t));
        assert!(is_revoked(&d), "{d:?}");
        assert!(
            matches!(&d, Decision::Deny(_, f) if f.cache_hit),
            "refused on a cache hit"
        );
    }

    #[test]
    fn records_the_interaction_even_when_the_token_is_missing() {
        let mut e = engine(json!({}));
        match decide(&mut e, "/fhir/Patient/123?_elements=name", None) {
            Decision::Deny(Denial::MissingToken, f) => {
                assert_eq!(f.interaction, Some("read"));
                assert_eq!(f.resource_type.as_deref(), Some("Patient"));
                assert_eq!(f.resource_id.as_deref(), Some("123"));
                assert_eq!(f.search_params, vec!["_elements".to_string()]);
            }
            other => panic!("{other:?}"),
        }
        // A path that cannot be classified is still refused for its token first.
        let d = decide(&mut e, "/fhir/NotAType/1", None);
        assert!(
            matches!(&d, Decision::Deny(Denial::MissingToken, f) if f.interaction.is_none()),
            "{d:?}"
        );
    }

    #[test]
    fn refuses_head_when_the_response_decides() {
        let mut e = engine(json!({}));
        let t = token(|_| {});
        let head = |e: &mut Engine, path: &str| {
            let headers = vec![("authorization".to_string(), format!("Bearer {t}"))];
            let req = RequestFacts {
                method: "HEAD",
                path,
                headers: &headers,
            };
            e.decide(&req, NOW * 1000, &mut Store::default(), &JwtSimpleVerifier, false)
        };
        for path in ["/fhir/Observation/o2", "/fhir/Observation?patient=123"] {
            let d = head(&mut e, path);
            assert!(
                matches!(
                    &d,
                    Decision::Deny(
                        Denial::Forbidden {
                            reason: crate::denial::ForbiddenReason::NotEnforceableAtEdge,
                            ..
                        },
                        _
                    )
                ),
                "{path}: {d:?}"
            );
        }
        // The patient's own record needs no response check: HEAD is answered.
        let mut claims = test_support::good_claims();
        claims["scope"] = json!("patient/Patient.rs");
        let t = test_support::mint(Algorithm::ES256, Signer::P256, &claims);
        let headers = vec![("authorization".to_string(), format!("Bearer {t}"))];
        let req = RequestFacts {
            method: "HEAD",
            path: "/fhir/Patient/123",
            headers: &headers,
        };
        let d = e.decide(&req, NOW * 1000, &mut Store::default(), &JwtSimpleVerifier, false);
        assert!(matches!(d, Decision::Allow(_)), "{d:?}");
    }

    #[test]
    fn refuses_requests_that_need_body_checks_until_they_are_enabled() {
        let mut e = engine(json!({}));
        let t = token(|_| {});
        let path = "/fhir/Observation?patient=123";
        match decide(&mut e, path, Some(&t)) {
            Decision::Allow(a) => assert!(
                a.pending.as_ref().is_some_and(|p| p.response_check.is_some()),
                "{a:?}"
            ),
            other => panic!("{other:?}"),
        }
        e.set_body_checks(false);
        let d = decide(&mut e, path, Some(&t));
        assert!(
            matches!(
                &d,
                Decision::Deny(
                    Denial::Forbidden {
                        reason: crate::denial::ForbiddenReason::NotEnforceableAtEdge,
                        ..
                    },
                    _
                )
            ),
            "{d:?}"
        );
    }
    // ---- introspection --------------------------------------------------------------------------

    const OPAQUE: &str = "f4k3-0paque_token~value";

    fn introspecting(mode: &str) -> Engine {
        let jwks: serde_json::Value = serde_json::from_slice(&test_support::default_jwks()).unwrap();
        let c = json!({"fhir_base": "/fhir", "providers": [{"issuer": ISS, "audiences": [AUD], "local_jwks": jwks,
            "introspection": {"mode": mode, "endpoint": "https://idp.example.org/token/introspection",
                "cluster": "idp", "timeout_ms": 1500, "max_cache_s": 30, "negative_cache_s": 5,
                "client_auth": {"method": "client_secret_basic", "client_id": "edge", "client_secret": "s"}}}]});
        let mut e = Engine::new(Config::from_json(c.to_string().as_bytes()).unwrap(), "w0").unwrap();
        e.set_body_checks(true);
        e
    }

    fn decide_at(
        e: &mut Engine,
        now_s: u64,
        path: &str,
        token: &str,
        answer: Option<&Introspected>,
    ) -> Decision {
        let headers = vec![("authorization".to_string(), format!("Bearer {token}"))];
        let req = RequestFacts {
            method: "GET",
            path,
            headers: &headers,
        };
        let mut store = Store::default();
        match answer {
            Some(a) => e.decide_introspected(&req, now_s * 1000, &mut store, &JwtSimpleVerifier, a),
            None => e.decide(&req, now_s * 1000, &mut store, &JwtSimpleVerifier, true),
        }
    }

    fn active_answer(extra: serde_json::Value) -> FetchAnswer {
        let mut body = json!({"active": true, "iss": ISS, "aud": AUD, "exp": NOW + 3600,
            "scope": "launch/patient patient/Observation.rs", "patient": "123", "client_id": "app-9",
            "sub": "u-9", "fhirUser": "Patient/123"});
        if let (Some(b), serde_json::Value::Object(x)) = (body.as_object_mut(), extra) {
            b.extend(x);
        }
        FetchAnswer::Response {
            status: 200,
            body: body.to_string().into_bytes(),
        }
    }

    /// The key of the awaited token and whether this request carries the callout.
    fn awaited(d: &Decision) -> (TokenKey, bool) {
        match d {
            Decision::AwaitIntrospection { key, request, .. } => (*key, request.is_some()),
            other => panic!("expected a wait for introspection, got {other:?}"),
        }
    }

    fn source(d: &Decision) -> Option<TokenSource> {
        match d {
            Decision::Allow(a) => a.facts.token_source,
            Decision::Deny(_, f) => f.token_source,
            _ => None,
        }
    }

    const SEARCH: &str = "/fhir/Observation?patient=123";

    #[test]
    fn an_opaque_token_waits_for_one_callout_shared_by_concurrent_requests() {
        let mut e = introspecting("opaque");
        let first = decide_at(&mut e, NOW, SEARCH, OPAQUE, None);
        let Decision::AwaitIntrospection {
            key,
            request: Some(request),
            deadline_ms,
        } = &first
        else {
            panic!("{first:?}")
        };
        assert_eq!(*key, introspection::token_key(OPAQUE));
        assert_eq!(
            (
                request.cluster.as_str(),
                request.path.as_str(),
                request.timeout_ms
            ),
            ("idp", "/token/introspection", 1500)
        );
        assert!(request.body.starts_with("token=f4k3-0paque_token~value&"));
        assert_eq!(*deadline_ms, NOW * 1000 + 1500 + INTROSPECTION_WAIT_MARGIN_MS);
        for _ in 0..3 {
            let d = decide_at(&mut e, NOW, SEARCH, OPAQUE, None);
            assert_eq!(
                awaited(&d),
                (*key, false),
                "the same token shares the callout in flight"
            );
        }
        let (_, sends) = awaited(&decide_at(&mut e, NOW, SEARCH, "another-opaque", None));
        assert!(sends, "another token has its own callout");
        let answer = e.on_introspection_answer(*key, active_answer(json!({})), NOW * 1000);
        let d = decide_at(&mut e, NOW, SEARCH, OPAQUE, Some(&answer));
        let Decision::Allow(a) = &d else { panic!("{d:?}") };
        assert_eq!(a.facts.token_source, Some(TokenSource::IntrospectionLive));
        assert_eq!(
            a.facts.token_hash.as_deref(),
            Some(token::token_fingerprint(OPAQUE).as_str())
        );
        assert!(a
            .set_headers
            .contains(&("x-smart-client-id", "app-9".to_string())));
        assert!(a.set_headers.contains(&("x-smart-patient", "123".to_string())));
        let d = decide_at(&mut e, NOW + 1, SEARCH, OPAQUE, None);
        assert!(
            matches!(&d, Decision::Allow(a) if a.facts.cache_hit
                && a.facts.token_source == Some(TokenSource::IntrospectionCached)),
            "{d:?}"
        );
    }

    #[test]
    fn introspected_claims_meet_the_same_scope_and_patient_rules() {
        let mut e = introspecting("opaque");
        let key = awaited(&decide_at(&mut e, NOW, SEARCH, OPAQUE, None)).0;
        e.on_introspection_answer(key, active_answer(json!({})), NOW * 1000);
        let table = [
            ("/fhir/Observation?patient=123", true),
            ("/fhir/Observation?patient=456", false),
            ("/fhir/Condition?patient=123", false),
        ];
        for (path, allowed) in table {
            let d = decide_at(&mut e, NOW, path, OPAQUE, None);
            assert_eq!(matches!(d, Decision::Allow(_)), allowed, "{path}: {d:?}");
            if !allowed {
                assert!(
                    matches!(d, Decision::Deny(Denial::Forbidden { .. }, _)),
                    "{path}: {d:?}"
                );
            }
        }
    }

    #[test]
    fn active_answers_are_kept_until_the_revocation_delay_or_exp_and_inactive_ones_briefly() {
        // (answer, seconds later still answered from the cache, seconds later introspected again)
        let table = [
            (active_answer(json!({})), 29, 30),
            (active_answer(json!({"exp": NOW + 10})), 9, 10),
            (
                FetchAnswer::Response {
                    status: 200,
                    body: br#"{"active": false}"#.to_vec(),
                },
                4,
                5,
            ),
        ];
        for (answer, cached_until, again_at) in table {
            let mut e = introspecting("opaque");
            let key = awaited(&decide_at(&mut e, NOW, SEARCH, OPAQUE, None)).0;
            let active = matches!(&answer, FetchAnswer::Response { body, .. } if body.starts_with(b"{\"active\":true"));
            let settled = e.on_introspection_answer(key, answer, NOW * 1000);
            let d = decide_at(&mut e, NOW, SEARCH, OPAQUE, Some(&settled));
            assert_eq!(source(&d), Some(TokenSource::IntrospectionLive));
            let d = decide_at(&mut e, NOW + cached_until, SEARCH, OPAQUE, None);
            assert_eq!(source(&d), Some(TokenSource::IntrospectionCached), "{d:?}");
            if active {
                assert!(matches!(d, Decision::Allow(_)), "{d:?}");
            } else {
                assert!(
                    matches!(d, Decision::Deny(Denial::InvalidToken(TokenReason::Inactive), _)),
                    "{d:?}"
                );
            }
            let d = decide_at(&mut e, NOW + again_at, SEARCH, OPAQUE, None);
            assert_eq!(awaited(&d), (key, true), "introspected again");
        }
    }

    #[test]
    fn failed_introspections_refuse_with_503_and_are_not_cached() {
        let failures = [
            FetchAnswer::Failed,
            FetchAnswer::Response {
                status: 504,
                body: b"upstream request timeout".to_vec(),
            },
            FetchAnswer::Response {
                status: 200,
                body: b"<html>".to_vec(),
            },
            FetchAnswer::Response {
                status: 200,
                body: br#"{"scope": "patient/*.rs"}"#.to_vec(),
            },
        ];
        for answer in failures {
            let mut e = introspecting("opaque");
            let key = awaited(&decide_at(&mut e, NOW, SEARCH, OPAQUE, None)).0;
            let settled = e.on_introspection_answer(key, answer, NOW * 1000);
            let d = decide_at(&mut e, NOW, SEARCH, OPAQUE, Some(&settled));
            assert!(
                matches!(&d, Decision::Deny(Denial::IntrospectionUnavailable, f)
                    if f.token_source == Some(TokenSource::IntrospectionLive)),
                "{d:?}"
            );
            assert_eq!(
                awaited(&decide_at(&mut e, NOW, SEARCH, OPAQUE, None)),
                (key, true)
            );
        }
    }

    #[test]
    fn a_callout_given_up_on_is_sent_again_for_the_next_request() {
        let mut e = introspecting("opaque");
        let Decision::AwaitIntrospection { deadline_ms, .. } = decide_at(&mut e, NOW, SEARCH, OPAQUE, None)
        else {
            panic!()
        };
        let later = deadline_ms / 1000 + 1;
        assert!(
            awaited(&decide_at(&mut e, later, SEARCH, OPAQUE, None)).1,
            "sent again"
        );
    }

    #[test]
    fn always_mode_verifies_the_jwt_first_then_needs_an_active_answer() {
        let mut e = introspecting("always");
        let good = token(|_| {});
        let mut forged = good.clone();
        forged.pop();
        forged.push('A');
        let d = decide_at(&mut e, NOW, SEARCH, &forged, None);
        assert!(
            matches!(&d, Decision::Deny(Denial::InvalidToken(TokenReason::BadSignature), f)
                if f.token_source == Some(TokenSource::Jwt)),
            "a JWT that does not verify is never introspected: {d:?}"
        );
        let key = awaited(&decide_at(&mut e, NOW, SEARCH, &good, None)).0;
        // The answer's own claims differ: the JWT's verified claims are what authorization reads.
        let settled =
            e.on_introspection_answer(key, active_answer(json!({"client_id": "other"})), NOW * 1000);
        let d = decide_at(&mut e, NOW, SEARCH, &good, Some(&settled));
        let Decision::Allow(a) = &d else { panic!("{d:?}") };
        assert_eq!(a.facts.token_source, Some(TokenSource::IntrospectionLive));
        assert!(a
            .set_headers
            .contains(&("x-smart-client-id", "app-1".to_string())));
        // Revoked at the provider: inactive from the next introspection on.
        let revoked = token(|c| c["jti"] = json!("revoked-at-idp"));
        let key = awaited(&decide_at(&mut e, NOW, SEARCH, &revoked, None)).0;
        let settled = e.on_introspection_answer(
            key,
            FetchAnswer::Response {
                status: 200,
                body: br#"{"active": false}"#.to_vec(),
            },
            NOW * 1000,
        );
        let d = decide_at(&mut e, NOW, SEARCH, &revoked, Some(&settled));
        assert!(
            matches!(d, Decision::Deny(Denial::InvalidToken(TokenReason::Inactive), _)),
            "{d:?}"
        );
        // Opaque tokens are introspected in this mode too.
        assert!(awaited(&decide_at(&mut e, NOW, SEARCH, OPAQUE, None)).1);
    }

    #[test]
    fn opaque_mode_leaves_jwts_to_the_local_check_and_without_introspection_opaque_tokens_are_malformed() {
        let mut e = introspecting("opaque");
        let d = decide_at(&mut e, NOW, SEARCH, &token(|_| {}), None);
        assert!(
            matches!(&d, Decision::Allow(a) if a.facts.token_source == Some(TokenSource::Jwt)),
            "{d:?}"
        );
        let mut plain = engine(json!({}));
        let d = decide_at(&mut plain, NOW, SEARCH, OPAQUE, None);
        assert!(
            matches!(&d, Decision::Deny(Denial::InvalidToken(TokenReason::Malformed), f)
                if f.token_source == Some(TokenSource::Jwt)),
            "{d:?}"
        );
    }

    #[test]
    fn an_opaque_token_is_checked_for_its_characters_before_any_callout() {
        let mut e = introspecting("opaque");
        let d = decide_at(&mut e, NOW, SEARCH, "bad\"token", None);
        assert!(matches!(d, Decision::Deny(Denial::InvalidRequest(_), _)), "{d:?}");
    }

    #[test]
    fn only_the_configured_headers_are_forwarded_and_the_digest_covers_every_fact() {
        let claims = crate::claims::VerifiedClaims {
            issuer: "iss".into(),
            subject: Some("user-1".into()),
            client_id: Some("app-1".into()),
            scopes: vec!["patient/Patient.rs".into()],
            patient: Some("123".into()),
            encounter: None,
            fhir_user: None,
            jti: None,
            expires_at: 1,
        };
        let forward = |names: serde_json::Value| {
            let jwks: serde_json::Value = serde_json::from_slice(&test_support::default_jwks()).unwrap();
            let mut v = json!({"providers": [{"issuer": ISS, "audiences": [AUD], "local_jwks": jwks}]});
            v["forward_headers"] = names;
            crate::config::Config::from_json(&serde_json::to_vec(&v).unwrap())
                .unwrap()
                .forward_headers
        };
        let names =
            |f| -> Vec<&'static str> { verified_headers(&claims, f).iter().map(|(n, _)| *n).collect() };
        assert_eq!(
            names(ForwardHeaders::DEFAULT),
            [
                "x-smart-patient",
                "x-smart-scope",
                "x-smart-client-id",
                "x-smart-sub"
            ]
        );
        assert_eq!(names(forward(json!([]))), Vec::<&str>::new());
        assert_eq!(
            names(forward(json!(["x-smart-client-id"]))),
            ["x-smart-client-id"]
        );
        let only_identity = verified_headers(&claims, forward(json!(["x-smart-identity"])));
        let all = verified_headers(&claims, ForwardHeaders::ALL);
        assert_eq!(only_identity.len(), 1);
        assert_eq!(
            Some(&only_identity[0]),
            all.last(),
            "same digest whatever else is forwarded"
        );
        let mut other = claims.clone();
        other.patient = Some("456".into());
        assert_ne!(
            verified_headers(&other, forward(json!(["x-smart-identity"])))[0],
            only_identity[0],
            "the patient is in the digest though not forwarded"
        );
    }

    #[test]
    fn the_identity_digest_changes_with_every_forwarded_fact_and_only_with_them() {
        let base = crate::claims::VerifiedClaims {
            issuer: "iss".into(),
            subject: Some("user-1".into()),
            client_id: Some("app-1".into()),
            scopes: vec!["launch/patient".into(), "patient/Patient.rs".into()],
            patient: Some("123".into()),
            encounter: None,
            fhir_user: Some("Practitioner/9".into()),
            jti: Some("j1".into()),
            expires_at: 1,
        };
        let digest = |c: &crate::claims::VerifiedClaims| {
            let h = verified_headers(c, ForwardHeaders::ALL);
            let d = h
                .iter()
                .filter(|(n, _)| *n == IDENTITY_HEADER)
                .map(|(_, v)| v.clone());
            let d: Vec<String> = d.collect();
            assert_eq!(d.len(), 1, "one digest header");
            d.into_iter().next().unwrap()
        };
        let d0 = digest(&base);
        assert_eq!(d0.len(), 64);
        assert!(d0.bytes().all(|b| b.is_ascii_hexdigit()), "authority-safe: {d0}");
        // (edit, what changed): every forwarded fact changes the digest.
        type Edit = fn(&mut crate::claims::VerifiedClaims);
        let table: [(Edit, &str); 9] = [
            (|c| c.subject = Some("user-2".into()), "another user"),
            (|c| c.client_id = Some("app-2".into()), "another app"),
            (|c| c.patient = Some("456".into()), "another patient"),
            (|c| c.patient = None, "no patient"),
            (
                |c| c.patient = Some(String::new()),
                "an empty patient is not an absent one",
            ),
            (|c| c.scopes.push("patient/Observation.rs".into()), "more scopes"),
            (|c| c.encounter = Some("e1".into()), "an encounter"),
            (|c| c.fhir_user = None, "no fhirUser"),
            // The facts shift between fields: still another identity.
            (
                |c| {
                    c.subject = Some("app-1".into());
                    c.client_id = Some("user-1".into());
                },
                "client and subject swapped",
            ),
        ];
        for (edit, what) in table {
            let mut c = base.clone();
            edit(&mut c);
            assert_ne!(digest(&c), d0, "{what}");
        }
        // What is not forwarded does not split the key.
        let mut c = base.clone();
        c.jti = Some("j2".into());
        c.expires_at = 2;
        assert_eq!(digest(&c), d0, "another token of the same identity");
    }
}
