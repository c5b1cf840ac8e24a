#!/usr/bin/env node
// A real OpenID Connect provider (panva's oidc-provider) configured to issue SMART on FHIR access
// tokens: RFC 9068 JWT access tokens for the FHIR resource server (resource indicators), signed RS256
// or ES256 depending on the app (opaque tokens for `demo-opaque-backend`, which the edge introspects
// at /token/introspection, RFC 7662, and which its client revokes at /token/revocation, RFC 7009), client_credentials for backend services and authorization code +
// PKCE for the patient and clinician apps, with the `patient` and `fhirUser` claims in the token.
//
// Usage: node idp.mjs [--port 9000] [--host 127.0.0.1] [--issuer URL] [--audience URL] [--keys DIR]
//   env:  IDP_PORT, IDP_HOST, IDP_ISSUER, FHIR_AUDIENCE, IDP_KEYS_DIR
// --port 0 picks a free port. Once listening it prints one line to stdout:
//   READY {"issuer":"http://127.0.0.1:PORT","port":PORT,"jwks_uri":"http://127.0.0.1:PORT/jwks"}
// The signing keys (one RSA 2048, one EC P-256) are generated on first start into the keys folder
// (private JWKS, mode 0600) and reused afterwards.
//
// Development interactions are on (any login from demo-clients.mjs ACCOUNTS, any password); never
// use this configuration outside a local demo.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

import { ACCOUNTS, CLIENTS, OIDC_SCOPES, REDIRECT_URI, resourceScopes } from './demo-clients.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    issuer: { type: 'string' },
    audience: { type: 'string' },
    keys: { type: 'string' },
  },
});

const host = args.host ?? process.env.IDP_HOST ?? '127.0.0.1';
const port = Number(args.port ?? process.env.IDP_PORT ?? 9000);
const audience = args.audience ?? process.env.FHIR_AUDIENCE ?? 'http://127.0.0.1:10000/fhir';
const keysDir = path.resolve(args.keys ?? process.env.IDP_KEYS_DIR ?? path.join(repoRoot, '.demo', 'keys'));
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`idp: invalid port ${args.port ?? process.env.IDP_PORT}`);
  process.exit(2);
}

// ---- signing keys --------------------------------------------------------------------------------

/** RFC 7638 JWK thumbprint, used as `kid`. */
function thumbprint(jwk) {
  const members = jwk.kty === 'RSA' ? { e: jwk.e, kty: jwk.kty, n: jwk.n } : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return crypto.createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

function generateJwk(alg) {
  const { privateKey } = alg === 'RS256'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: thumbprint(jwk), alg, use: 'sig' };
}

/** Loads the private JWKS from the keys folder, creating it on first start. */
function loadOrCreateKeys(dir) {
  const file = path.join(dir, 'jwks.json');
  if (fs.existsSync(file)) {
    const jwks = JSON.parse(fs.readFileSync(file, 'utf8'));
    const algs = new Set(jwks.keys?.map((k) => k.alg));
    if (algs.has('RS256') && algs.has('ES256')) return jwks;
    console.error(`idp: ${file} lacks an RS256 or ES256 key; delete it to regenerate`);
    process.exit(2);
  }
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const jwks = { keys: [generateJwk('RS256'), generateJwk('ES256')] };
  fs.writeFileSync(file, JSON.stringify(jwks, null, 2), { mode: 0o600 });
  return jwks;
}

const jwks = loadOrCreateKeys(keysDir);

// ---- provider configuration ------------------------------------------------------------------------

const allResourceScopes = new Set(resourceScopes());

function clientMetadata(id, c) {
  return {
    client_id: id,
    ...(c.secret ? { client_secret: c.secret, token_endpoint_auth_method: 'client_secret_basic' } : { token_endpoint_auth_method: 'none' }),
    grant_types: c.grant_types,
    response_types: c.grant_types.includes('authorization_code') ? ['code'] : [],
    redirect_uris: c.grant_types.includes('authorization_code') ? [REDIRECT_URI] : [],
    ...(c.oidc_scope ? { scope: c.oidc_scope } : {}),
  };
}

/** The resource server (the FHIR API behind Envoy) as this client sees it. */
function resourceServerFor(client) {
  const c = CLIENTS[client.clientId];
  const allowed = c ? [...allResourceScopes].filter((s) => s.startsWith(`${c.scope_context}/`)) : [];
  return {
    scope: allowed.join(' '),
    audience,
    accessTokenFormat: c?.access_token_format ?? 'jwt',
    accessTokenTTL: c?.ttl_s ?? 300,
    jwt: { sign: { alg: c?.alg ?? 'RS256' } },
  };
}

/** Known accounts carry a FHIR identity; any other login is a user without one (no fhirUser, no patient). */
async function findAccount(_ctx, id) {
  const account = ACCOUNTS[id];
  return {
    accountId: id,
    async claims() {
      return account ? { sub: id, fhirUser: account.fhirUser, name: account.name } : { sub: id };
    },
  };
}

const configuration = {
  clients: Object.entries(CLIENTS).map(([id, c]) => clientMetadata(id, c)),
  jwks,
  findAccount,
  scopes: OIDC_SCOPES,
  claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name'] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    // RFC 7662: the edge (client `smart-fhir-edge`) may introspect every token, another client only
    // its own. oidc-provider introspects opaque tokens only (a JWT access token speaks for itself).
    introspection: {
      enabled: true,
      allowedPolicy: (_ctx, client, token) => CLIENTS[client.clientId]?.introspector === true
        || (client.clientAuthMethod !== 'none' && token.clientId === client.clientId),
    },
    // RFC 7009: a client revokes its own tokens.
    revocation: {
      enabled: true,
      allowedPolicy: (_ctx, client, token) => token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      // The FHIR API is the only resource server; a request that names none gets it.
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator, client) => {
        if (indicator !== audience) throw new Provider.errors.InvalidTarget();
        return resourceServerFor(client);
      },
    },
  },
  // SMART context in the access token: `patient` when the app asked for `launch/patient` and the user
  // has a patient record, `fhirUser` when it asked for `fhirUser`.
  async extraTokenClaims(ctx, token) {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const account = ACCOUNTS[token.accountId];
    if (!account) return undefined;
    const grant = token.grantId ? await ctx.oidc.provider.Grant.find(token.grantId) : undefined;
    const oidcScopes = new Set((grant?.getOIDCScope() ?? '').split(' '));
    const extra = {};
    if (oidcScopes.has('launch/patient') && account.patient) extra.patient = account.patient;
    if (oidcScopes.has('fhirUser') && account.fhirUser) extra.fhirUser = account.fhirUser;
    return Object.keys(extra).length ? extra : undefined;
  },
  formats: {
    customizers: {
      async jwt(ctx, token, jwt) {
        // As SMART servers do, `scope` lists every granted scope, the OpenID Connect and launch
        // context ones (`openid fhirUser launch/patient`) before the resource ones.
        if (token.kind === 'AccessToken' && token.grantId) {
          const grant = await ctx.oidc.provider.Grant.find(token.grantId);
          const oidc = (grant?.getOIDCScope() ?? '').split(' ').filter(Boolean);
          const resource = (jwt.payload.scope ?? '').split(' ').filter(Boolean);
          jwt.payload.scope = [...new Set([...oidc, ...resource])].join(' ') || undefined;
        }
        // Demo of an expired token: the `demo-expired` app's tokens are dated in the past.
        const backdate = CLIENTS[token.clientId]?.backdate_s;
        if (backdate) {
          jwt.payload.iat -= backdate;
          jwt.payload.exp -= backdate;
        }
      },
    },
  },
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300,
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 300,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
    IdToken: 300,
    RefreshToken: 3600,
  },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  // Ready for the test suite's fetches and curl: no rate limiting, no HTTPS requirement on loopback.
};

// ---- server ----------------------------------------------------------------------------------------

const server = http.createServer();
server.listen(port, host, () => {
  const actualPort = server.address().port;
  const issuer = args.issuer ?? process.env.IDP_ISSUER ?? `http://${host}:${actualPort}`;
  const provider = new Provider(issuer, configuration);
  provider.proxy = false;

  // SMART: the token response names the patient in context next to the access token, and the
  // granted scopes as the token carries them.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route === 'token' && ctx.status === 200 && ctx.body?.access_token) {
      try {
        const payload = JSON.parse(Buffer.from(ctx.body.access_token.split('.')[1], 'base64url').toString('utf8'));
        if (payload.patient) ctx.body.patient = payload.patient;
        if (payload.scope) ctx.body.scope = payload.scope;
      } catch {
        // opaque token: nothing to add
      }
    }
  });

  provider.on('server_error', (_ctx, err) => console.error('idp: server_error', err));
  server.on('request', provider.callback());
  console.log(`READY ${JSON.stringify({ issuer, port: actualPort, jwks_uri: `${issuer}/jwks`, audience })}`);
});
server.on('error', (err) => {
  console.error(`idp: cannot listen on ${host}:${port}: ${err.message}`);
  process.exit(1);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
