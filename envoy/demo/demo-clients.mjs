// The demo's registered apps, accounts and resource scopes: shared by the identity provider (idp.mjs)
// and the token script (get-token.mjs). Everything here is for a local demo only: the secrets are
// public on purpose and the accounts are synthetic.

/** Where the demo apps are sent back to. Nothing listens there: get-token.mjs reads the redirect. */
export const REDIRECT_URI = 'http://127.0.0.1:9999/callback';

/** FHIR resource types of the demo data set (envoy/demo/data/). */
export const RESOURCE_TYPES = [
  'Patient', 'Practitioner', 'Encounter', 'Observation', 'Condition', 'MedicationRequest',
];

/**
 * The registered apps. `oidc_scope` lists the OpenID Connect scopes the app may ask for (client
 * metadata `scope`); `scope_context` the SMART context (`patient`, `user` or `system`) of the resource
 * scopes it may be granted on the FHIR API. `alg` is the JWS algorithm of its access tokens (the
 * provider holds an RS256 and an ES256 key); `ttl_s` their lifetime; `backdate_s` shifts `iat` and
 * `exp` into the past so a token is already expired when issued (demo of a refusal).
 * `access_token_format: 'opaque'` makes its access tokens opaque (random strings the edge
 * introspects, RFC 7662) instead of JWTs; `introspector` marks the edge's own client, which may
 * introspect every token.
 */
export const CLIENTS = {
  'demo-backend': {
    description: 'backend service (SMART Backend Services, client_credentials)',
    secret: 'demo-backend-secret',
    grant_types: ['client_credentials'],
    scope_context: 'system',
    alg: 'ES256',
    ttl_s: 3600,
  },
  'demo-patient-app': {
    description: 'patient-facing app (authorization code + PKCE, public client)',
    secret: null,
    grant_types: ['authorization_code'],
    oidc_scope: 'openid fhirUser launch/patient offline_access',
    scope_context: 'patient',
    alg: 'RS256',
    ttl_s: 3600,
  },
  'demo-clinician-app': {
    description: 'clinician-facing app (authorization code + PKCE, confidential client)',
    secret: 'demo-clinician-secret',
    grant_types: ['authorization_code'],
    oidc_scope: 'openid fhirUser offline_access',
    scope_context: 'user',
    alg: 'RS256',
    ttl_s: 3600,
  },
  'demo-short-lived': {
    description: 'backend service whose tokens live 1 second (for tests that wait for expiry)',
    secret: 'demo-short-lived-secret',
    grant_types: ['client_credentials'],
    scope_context: 'system',
    alg: 'RS256',
    ttl_s: 1,
  },
  'demo-expired': {
    description: 'backend service whose tokens are issued already expired (iat and exp 120 s in the past)',
    secret: 'demo-expired-secret',
    grant_types: ['client_credentials'],
    scope_context: 'system',
    alg: 'ES256',
    ttl_s: 1,
    backdate_s: 120,
  },
  'demo-opaque-backend': {
    description: 'backend service whose access tokens are opaque (introspected by the edge, revocable at once)',
    secret: 'demo-opaque-backend-secret',
    grant_types: ['client_credentials'],
    scope_context: 'system',
    access_token_format: 'opaque',
    ttl_s: 3600,
  },
  'smart-fhir-edge': {
    description: 'the edge itself: authenticates to the introspection endpoint (RFC 7662)',
    secret: 'smart-fhir-edge-secret',
    grant_types: ['client_credentials'],
    scope_context: 'none',
    introspector: true,
  },
};

/**
 * Accounts that can sign in at the development login form (any password is accepted).
 * `patient` is the patient in context for `launch/patient`; `fhirUser` the FHIR resource of the user.
 */
export const ACCOUNTS = {
  amy: { fhirUser: 'Patient/pat-amy', patient: 'pat-amy', name: 'Amy Synthetic' },
  ben: { fhirUser: 'Patient/pat-ben', patient: 'pat-ben', name: 'Ben Synthetic' },
  cleo: { fhirUser: 'Patient/pat-cleo', patient: 'pat-cleo', name: 'Cleo Synthetic' },
  'dr-carter': { fhirUser: 'Practitioner/prac-carter', patient: null, name: 'Casey Carter (synthetic clinician)' },
};

/** OpenID Connect scopes (not resource scopes): they shape the ID token and the context claims. */
export const OIDC_SCOPES = ['openid', 'offline_access', 'fhirUser', 'launch/patient', 'profile'];

/**
 * Every SMART resource scope the FHIR resource server accepts: each context (`patient`, `user`,
 * `system`) x resource type (and `*`) x permission form (SMART v2 `rs`, `r`, `s`, `cruds`, and v1
 * `read`, `write`, `*`). oidc-provider grants only scopes listed here, so a request for anything else
 * is silently narrowed, as OAuth 2.0 allows.
 */
export function resourceScopes() {
  const perms = ['rs', 'r', 's', 'cruds', 'read', 'write', '*'];
  const out = [];
  for (const context of ['patient', 'user', 'system']) {
    for (const type of ['*', ...RESOURCE_TYPES]) {
      for (const p of perms) out.push(`${context}/${type}.${p}`);
    }
  }
  return out;
}
