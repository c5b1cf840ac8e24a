#!/usr/bin/env node
// Obtains a SMART access token from the demo identity provider (idp.mjs) without a browser.
//
//   node get-token.mjs client-credentials --client demo-backend [--scope "system/*.rs"]
//   node get-token.mjs auth-code --client demo-patient-app --login amy \
//        [--scope "launch/patient patient/*.rs openid fhirUser"]
//
// Options: --issuer URL (env IDP_ISSUER, default http://127.0.0.1:9000), --secret S (default: the
// demo secret of the client), --resource URL (the FHIR base; default: the provider's default
// resource), --json (print the whole token response instead of the access token alone).
//
// auth-code performs the authorization code flow with PKCE (S256) by driving the provider's
// development interaction pages over HTTP, as a browser would: it follows the redirects with a
// cookie jar, posts the login form (any password) and the consent form, reads the code from the
// redirect to the app's redirect URI (which is never contacted) and exchanges it at the token
// endpoint. It depends on nothing but Node (20 or later).

import * as crypto from 'node:crypto';
import { parseArgs } from 'node:util';

import { CLIENTS, REDIRECT_URI } from './demo-clients.mjs';

const DEFAULT_SCOPES = {
  'demo-backend': 'system/*.rs',
  'demo-patient-app': 'openid fhirUser launch/patient patient/*.rs',
  'demo-clinician-app': 'openid fhirUser user/*.rs',
  'demo-short-lived': 'system/*.rs',
  'demo-expired': 'system/*.rs',
};

function usage(message) {
  if (message) console.error(`get-token: ${message}`);
  console.error('usage: get-token.mjs client-credentials|auth-code --client ID [--login USER] [--scope S] '
    + '[--secret S] [--resource URL] [--issuer URL] [--json]');
  process.exit(2);
}

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      issuer: { type: 'string' },
      client: { type: 'string' },
      secret: { type: 'string' },
      scope: { type: 'string' },
      login: { type: 'string' },
      resource: { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
} catch (e) {
  usage(e.message);
}
const { values: opt, positionals } = parsed;
const flow = positionals[0];
if (positionals.length !== 1 || !['client-credentials', 'auth-code'].includes(flow)) usage('name one flow');
if (!opt.client) usage('--client is required');

const issuer = (opt.issuer ?? process.env.IDP_ISSUER ?? 'http://127.0.0.1:9000').replace(/\/$/, '');
const known = CLIENTS[opt.client];
const secret = opt.secret ?? known?.secret ?? undefined;
const scope = opt.scope ?? DEFAULT_SCOPES[opt.client];

class Failure extends Error {}

// ---- a minimal cookie jar (one issuer, sequential requests) ---------------------------------------

const jar = new Map();
function storeCookies(res) {
  for (const line of res.headers.getSetCookie()) {
    const [pair, ...attrs] = line.split(';');
    const eq = pair.indexOf('=');
    if (eq < 1) continue;
    const name = pair.slice(0, eq).trim();
    const value = pair.slice(eq + 1).trim();
    const expired = attrs.some((a) => {
      const [k, v] = a.split('=').map((x) => x?.trim());
      return (k.toLowerCase() === 'max-age' && Number(v) <= 0)
        || (k.toLowerCase() === 'expires' && Date.parse(v) < Date.now());
    });
    if (expired || value === '') jar.delete(name); else jar.set(name, value);
  }
}
const cookieHeader = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');

async function request(url, init = {}) {
  const headers = { ...(init.headers ?? {}) };
  if (jar.size) headers.cookie = cookieHeader();
  let res;
  try {
    res = await fetch(url, { ...init, headers, redirect: 'manual' });
  } catch (e) {
    throw new Failure(`cannot reach ${new URL(url).origin}: ${e.cause?.code ?? e.message}`);
  }
  storeCookies(res);
  return res;
}

// ---- helpers ----------------------------------------------------------------------------------------

async function discover() {
  const res = await request(`${issuer}/.well-known/openid-configuration`);
  if (res.status !== 200) throw new Failure(`discovery answered ${res.status}`);
  return res.json();
}

function clientAuth(params) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (secret) {
    const enc = (s) => encodeURIComponent(s);
    headers.authorization = `Basic ${Buffer.from(`${enc(opt.client)}:${enc(secret)}`).toString('base64')}`;
  } else {
    params.set('client_id', opt.client);
  }
  return headers;
}

async function tokenRequest(endpoint, params) {
  const headers = clientAuth(params);
  const res = await request(endpoint, { method: 'POST', headers, body: params.toString() });
  const body = await res.json().catch(() => ({}));
  if (res.status !== 200 || !body.access_token) {
    throw new Failure(`token endpoint answered ${res.status}: ${body.error ?? ''} ${body.error_description ?? ''}`.trim());
  }
  return body;
}

const decodeHtml = (s) => s.replace(/&amp;/g, '&').replace(/&#x2F;/gi, '/').replace(/&#47;/g, '/')
  .replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>');

/** The development interaction page's form: its action and its `prompt` (login or consent). */
function readForm(html) {
  const action = /<form[^>]*action="([^"]+)"/i.exec(html)?.[1];
  const prompt = /name="prompt" value="([^"]+)"/i.exec(html)?.[1];
  if (!action || !prompt) throw new Failure('the interaction page has no login or consent form');
  return { action: decodeHtml(action), prompt };
}

// ---- flows ------------------------------------------------------------------------------------------

async function clientCredentials(meta) {
  const params = new URLSearchParams({ grant_type: 'client_credentials' });
  if (scope) params.set('scope', scope);
  if (opt.resource) params.set('resource', opt.resource);
  return tokenRequest(meta.token_endpoint, params);
}

async function authorizationCode(meta) {
  if (!opt.login) usage('auth-code needs --login USER');
  const verifier = crypto.randomBytes(32).toString('base64url');
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = crypto.randomBytes(12).toString('base64url');
  const auth = new URL(meta.authorization_endpoint);
  auth.search = new URLSearchParams({
    response_type: 'code',
    client_id: opt.client,
    redirect_uri: REDIRECT_URI,
    scope: scope ?? 'openid',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
    ...(opt.resource ? { resource: opt.resource } : {}),
  }).toString();

  let url = auth.toString();
  let res = await request(url);
  for (let step = 0; step < 12; step += 1) {
    if (res.status >= 300 && res.status < 400) {
      const next = new URL(res.headers.get('location'), url);
      if (next.toString().startsWith(REDIRECT_URI)) {
        const q = next.searchParams;
        if (q.get('error')) throw new Failure(`authorization refused: ${q.get('error')} ${q.get('error_description') ?? ''}`.trim());
        if (q.get('state') !== state) throw new Failure('state mismatch in the redirect');
        const code = q.get('code');
        if (!code) throw new Failure('redirect without a code');
        const params = new URLSearchParams({
          grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier,
        });
        if (opt.resource) params.set('resource', opt.resource);
        return tokenRequest(meta.token_endpoint, params);
      }
      url = next.toString();
      res = await request(url);
    } else if (res.status === 200 && (res.headers.get('content-type') ?? '').includes('text/html')) {
      const { action, prompt } = readForm(await res.text());
      const form = new URLSearchParams({ prompt });
      if (prompt === 'login') {
        form.set('login', opt.login);
        form.set('password', 'demo');
      }
      url = new URL(action, url).toString();
      res = await request(url, {
        method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: form.toString(),
      });
    } else {
      const text = (await res.text()).replace(/<(style|script)[^>]*>[^]*?<\/\1>/gi, ' ').replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').slice(0, 300);
      throw new Failure(`unexpected ${res.status} from ${new URL(url).pathname}: ${text}`);
    }
  }
  throw new Failure('too many steps without reaching the redirect URI');
}

try {
  const meta = await discover();
  const tokens = flow === 'client-credentials' ? await clientCredentials(meta) : await authorizationCode(meta);
  process.stdout.write(opt.json ? `${JSON.stringify(tokens, null, 2)}\n` : `${tokens.access_token}\n`);
} catch (e) {
  if (e instanceof Failure) {
    console.error(`get-token: ${e.message}`);
    process.exit(1);
  }
  throw e;
}
