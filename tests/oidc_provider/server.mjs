// OAuth 2.0 authorization server for keyless-m2m integration tests.
//
// Usage: node server.mjs CONFIG.json
//
// CONFIG.json:
//   {"host": "127.0.0.1", "port": 0, "clients": [<oidc-provider client metadata>],
//    "scopes": ["pockets.read", ...], "access_token_ttl": 900, "profile": "default",
//    "introspection_client": null, "tls": null}
//
// `profile` picks one server configuration (PROFILES below; docs/interop.md says what
// each enforces). The metadata a profile publishes is what it enforces.
//
// Once listening, prints exactly one line to stdout: `READY http://127.0.0.1:PORT`
// (`https://` in the mtls profile)
// (that URL, without trailing slash, is the issuer identifier). Everything else
// goes to stderr. Exits 0 on SIGTERM/SIGINT.
//
// Behaviour relied upon by the tests (oidc-provider 9.x, pinned in package.json):
// * client authentication: private_key_jwt, client_secret_basic, client_secret_post.
// * client assertion `aud`: oidc-provider accepts the issuer identifier, the token
//   endpoint URL or the URL of the endpoint being called (built-in, no config needed).
// * client assertion `jti` replay is rejected with invalid_client by the built-in
//   ReplayDetection model (memory adapter by default).
// * client_credentials: a requested scope that is unknown or not in the client's
//   `scope` metadata yields invalid_scope (oidc-provider itself silently drops
//   unknown scopes, see wrapClientCredentialsGrant below).
// * resource indicators (RFC 8707): any absolute URI is accepted as `resource`; the
//   token is then a JWT (RS256) with `aud` = resource. Without `resource` the
//   access token is opaque.
// * GET /_test/token-requests?since=N: what the server saw at its token endpoint, one
//   record per request from the N-th on ({client_id, method, alg, typ, aud, status,
//   error, error_description}), so that tests can count requests and read the `aud`
//   of each assertion. Loopback only, like the rest of this server.
// * DPoP (RFC 9449): oidc-provider 9 has features.dPoP on by default (proofs are verified
//   and bind the token when sent; no nonces). The `dpop` profile adds nonces
//   (nonceSecret, requireNonce: every proof must carry the server's nonce, else 400
//   use_dpop_nonce with a DPoP-Nonce header), widens dpop_signing_alg_values_supported to
//   every asymmetric JWS algorithm (a KMS key may be RSA), and enables introspection, whose
//   answer carries cnf.jkt for a DPoP-bound token, for the client named by
//   `introspection_client` in CONFIG.json (the resource server's) and only for it.
//   Clients with dpop_bound_access_tokens: true get invalid_grant without a proof.
// * mutual TLS (RFC 8705): the `mtls` profile serves HTTPS on two loopback listeners with
//   the certificate and key named by CONFIG.json's `tls` ({"ca", "cert", "key"}: PEM
//   paths): the issuer's (no client certificate asked for) and the mTLS one
//   (`requestCert: true, rejectUnauthorized: false`, trusting `ca`), published as
//   `mtls_endpoint_aliases.token_endpoint`. features.mTLS is on with
//   certificateBoundAccessTokens, tlsClientAuth and selfSignedTlsClientAuth; the client
//   certificate is the TLS socket's peer certificate, "authorized" when it chains to `ca`;
//   tls_client_auth_subject_dn is compared in RFC 4514 form, tls_client_auth_san_dns
//   exactly. Introspection (cnf["x5t#S256"] for a bound token) as in the dpop profile.
//   READY names the issuer (`https://...`). Token request records carry
//   `client_certificate` (the x5t#S256 of the presented certificate, or null) and
//   `listener` ("issuer" or "mtls").

import { Console } from 'node:console';
import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';

import Provider, { errors } from 'oidc-provider';
// Deep imports (no "exports" map in oidc-provider): needed to wrap the built-in
// client_credentials grant handler with a strict scope check.
import { handler as clientCredentialsHandler } from 'oidc-provider/lib/actions/grants/client_credentials.js';
import * as grantHelpers from 'oidc-provider/lib/helpers/grants.js';

// oidc-provider prints NOTICEs with console.info (stdout); keep stdout for READY only.
const stderrConsole = new Console({ stdout: process.stderr, stderr: process.stderr });
for (const method of ['log', 'info', 'debug', 'warn', 'error']) {
  console[method] = stderrConsole[method].bind(stderrConsole);
}

function fail(message) {
  process.stderr.write(`oidc test server: ${message}\n`);
  process.exit(1);
}

if (!process.argv[2]) {
  fail('usage: node server.mjs CONFIG.json');
}

let cfg;
try {
  cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
} catch (err) {
  fail(`cannot read config ${process.argv[2]}: ${err.message}`);
}

const ALL_METHODS = ['private_key_jwt', 'client_secret_basic', 'client_secret_post'];
const TLS_METHODS = ['tls_client_auth', 'self_signed_tls_client_auth'];
const ALL_ALGS = [
  'RS256', 'RS384', 'RS512',
  'PS256', 'PS384', 'PS512',
  'ES256', 'ES384', 'ES512',
  'EdDSA', 'Ed25519',
];

// One server configuration per profile. `methods`: token_endpoint_auth_methods_supported
// (and nothing else is accepted: see refuseUnlistedMethod); `algs`: the client assertion
// algorithms; `aud`: which assertion audience is accepted ('any' is oidc-provider's own
// rule: the issuer, the token endpoint URL or the URL of the endpoint called);
// `fapi`: oidc-provider's features.fapi profile; `dpop`: DPoP nonces and introspection
// (see the header comment).
const PROFILES = {
  default: { methods: ALL_METHODS, algs: ALL_ALGS, aud: 'any' },
  // oidc-provider's FAPI 2.0 mode adds, at the token endpoint, only the rule that the
  // assertion aud is the issuer identifier as a string (its default
  // assertJwtClientAuthClaimsAndHeader). FAPI 2.0 §5.3.2.1 (no client secrets) and
  // §5.4.1 (PS256, ES256, EdDSA) are configuration, set here. Sender-constrained tokens
  // are per-client metadata (dpop_bound_access_tokens, mTLS), not required by the mode,
  // and not set: the client has no DPoP yet.
  fapi2: { methods: ['private_key_jwt'], algs: ['PS256', 'ES256', 'EdDSA'], aud: 'any', fapi: '2.0' },
  'private-key-jwt-only': { methods: ['private_key_jwt'], algs: ALL_ALGS, aud: 'any' },
  'client-secret-basic-only': { methods: ['client_secret_basic'], algs: ALL_ALGS, aud: 'any' },
  'client-secret-post-only': { methods: ['client_secret_post'], algs: ALL_ALGS, aud: 'any' },
  // draft-ietf-oauth-rfc7523bis §4: the issuer identifier, as a string, and nothing else.
  'issuer-aud-only': { methods: ALL_METHODS, algs: ALL_ALGS, aud: 'issuer' },
  // What many deployed servers do: the exact token endpoint URL and nothing else.
  'endpoint-aud-only': { methods: ALL_METHODS, algs: ALL_ALGS, aud: 'token_endpoint' },
  // DPoP with nonces required; every method and algorithm, as default.
  dpop: { methods: ALL_METHODS, algs: ALL_ALGS, aud: 'any', dpop: true },
  // Mutual TLS (RFC 8705) over HTTPS: the default's methods plus the two TLS ones.
  mtls: { methods: [...ALL_METHODS, ...TLS_METHODS], algs: ALL_ALGS, aud: 'any', mtls: true },
};

// Every asymmetric JWS algorithm oidc-provider knows, for DPoP proofs in the dpop profile.
const DPOP_ALGS = [
  'ES256', 'ES384', 'ES512',
  'PS256', 'PS384', 'PS512',
  'RS256', 'RS384', 'RS512',
  'EdDSA', 'Ed25519',
];

const profileName = cfg.profile ?? 'default';
const profile = PROFILES[profileName];
const host = cfg.host ?? '127.0.0.1';
const port = Number(cfg.port ?? 0);
const knownScopes = new Set(cfg.scopes ?? []);
const accessTokenTTL = Number(cfg.access_token_ttl ?? 900);
const introspectionClient = cfg.introspection_client ?? null;
const tlsFiles = cfg.tls ?? null;

if (!Object.hasOwn(PROFILES, profileName)) {
  fail(`unknown profile ${profileName}; known: ${Object.keys(PROFILES).join(', ')}`);
}
if (!['127.0.0.1', '::1', 'localhost'].includes(host)) {
  fail(`refusing to listen on non-loopback host ${host}`);
}
if (!Number.isSafeInteger(accessTokenTTL) || accessTokenTTL <= 0) {
  fail('access_token_ttl must be a positive integer');
}
if (profile.mtls && !(tlsFiles?.ca && tlsFiles?.cert && tlsFiles?.key)) {
  fail('the mtls profile needs "tls": {"ca", "cert", "key"} (PEM paths) in the config');
}

const clients = (cfg.clients ?? []).map((client) => ({
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  ...client,
}));

// Signing key for JWT access tokens (resource indicator case); ephemeral per process.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const route = (req, res) => handler(req, res);

// The issuer's listener; in the mtls profile HTTPS without asking for a client
// certificate, plus a second listener that asks for one (the mtls_endpoint_aliases).
let server;
let mtlsServer = null;
if (profile.mtls) {
  let tls;
  try {
    tls = {
      key: readFileSync(tlsFiles.key),
      cert: readFileSync(tlsFiles.cert),
      ca: readFileSync(tlsFiles.ca),
    };
  } catch (err) {
    fail(`cannot read the TLS files: ${err.message}`);
  }
  server = createHttpsServer({ key: tls.key, cert: tls.cert }, route);
  // rejectUnauthorized: false lets a self-signed certificate (self_signed_tls_client_auth)
  // and a connection without one through; oidc-provider decides (certificateAuthorized).
  mtlsServer = createHttpsServer(
    { ...tls, requestCert: true, rejectUnauthorized: false },
    route,
  );
} else {
  server = createServer(route);
}
const listeners = mtlsServer ? [server, mtlsServer] : [server];

function configuration() {
  return {
    clients,
    scopes: [...knownScopes],
    jwks: { keys: [signingJwk] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientAuthMethods: [...profile.methods],
    enabledJWA: {
      clientAuthSigningAlgValues: [...profile.algs],
      idTokenSigningAlgValues: ['RS256'],
      ...(profile.dpop ? { dPoPSigningAlgValues: [...DPOP_ALGS] } : {}),
    },
    ...(profile.aud === 'any' ? {} : { assertJwtClientAuthClaimsAndHeader: checkAudience }),
    features: {
      fapi: profile.fapi ? { enabled: true, profile: profile.fapi } : { enabled: false },
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      ...(profile.dpop ? dpopFeatures() : {}),
      ...(profile.mtls ? mtlsFeatures() : {}),
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => undefined,
        useGrantedResource: async () => false,
        getResourceServerInfo: async (_ctx, resourceIndicator) => ({
          scope: [...knownScopes].join(' '),
          audience: resourceIndicator,
          accessTokenTTL,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    ttl: {
      ClientCredentials: accessTokenTTL,
      AccessToken: accessTokenTTL,
    },
    // No end-users in a client-credentials-only server.
    findAccount: async () => undefined,
  };
}

// The dpop profile's features: nonces on every proof, introspection for the resource server.
function dpopFeatures() {
  return {
    dPoP: {
      enabled: true,
      nonceSecret: randomBytes(32),
      requireNonce: () => true,
    },
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client) => client.clientId === introspectionClient,
    },
  };
}

// The client certificate of the request's TLS connection (oidc-provider 9 takes an
// X509Certificate as well as PEM), or undefined: none presented, or not a TLS socket.
function peerCertificate(ctx) {
  const socket = ctx.socket ?? ctx.req?.socket;
  if (typeof socket?.getPeerX509Certificate !== 'function') return undefined;
  return socket.getPeerX509Certificate() ?? undefined;
}

function thumbprintOf(certificate) {
  return certificate ? createHash('sha256').update(certificate.raw).digest('base64url') : null;
}

// RFC 4514 form of the subject (last RDN first, comma separated), as clients register
// tls_client_auth_subject_dn; Node lists the RDNs first to last, one per line.
function subjectDn(certificate) {
  return certificate.subject.split('\n').reverse().join(',');
}

function certificateSubjectMatches(ctx, property, expected) {
  const certificate = peerCertificate(ctx);
  if (!certificate) return false;
  switch (property) {
    case 'tls_client_auth_subject_dn':
      return subjectDn(certificate) === expected;
    case 'tls_client_auth_san_dns':
      // Exact DNS SAN only: no wildcards, never the subject CN.
      return certificate.checkHost(expected, { subject: 'never', wildcards: false }) !== undefined;
    default:
      return false;
  }
}

// The mtls profile's features (see the header comment).
function mtlsFeatures() {
  return {
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      // Chains to the configured CA (Node verified it at the handshake; a connection
      // that failed verification still gets here because rejectUnauthorized is false).
      certificateAuthorized: (ctx) => (ctx.socket ?? ctx.req?.socket)?.authorized === true,
      certificateSubjectMatches,
    },
    introspection: {
      enabled: true,
      allowedPolicy: async (_ctx, client) => client.clientId === introspectionClient,
    },
  };
}

// A refusal whose error_description says what the server wanted (oidc-provider's own
// InvalidClientAuth always says "client authentication failed").
function clientAuthRefused(description) {
  const err = new errors.InvalidClientAuth(description);
  err.error_description = description;
  return err;
}

// assertJwtClientAuthClaimsAndHeader runs after oidc-provider's own aud check (issuer,
// token endpoint or endpoint URL) and the signature check: narrow it to one value.
async function checkAudience(ctx, claims) {
  const [name, expected] = profile.aud === 'issuer'
    ? ['the issuer identifier', ctx.oidc.issuer]
    : ['the token endpoint URL', ctx.oidc.urlFor('token')];
  if (claims.aud !== expected) {
    throw clientAuthRefused(
      `client assertion aud must be ${name} ${JSON.stringify(expected)} (a string); `
      + `got ${JSON.stringify(claims.aud)}`,
    );
  }
}

// Which client authentication the request used (the same order oidc-provider reads them).
function authMechanism(ctx, body) {
  if (body?.client_secret) return 'client_secret_post';
  if (ctx.headers.authorization !== undefined) return 'client_secret_basic';
  if (body?.client_assertion !== undefined) return 'private_key_jwt';
  // Nothing in the request says tls_client_auth / self_signed_tls_client_auth (the
  // certificate is in the handshake): the client's registration does, once it is known.
  const registered = ctx.oidc?.client?.clientAuthMethod;
  if (TLS_METHODS.includes(registered)) return registered;
  return 'none';
}

// oidc-provider accepts either way of sending a secret for a client registered with
// client_secret_basic or client_secret_post (a Basic header is read even when only
// client_secret_post is enabled). Metadata must match what is enforced: refuse a method
// the server does not list.
function refuseUnlistedMethod(ctx) {
  const used = authMechanism(ctx, ctx.oidc.body);
  if (!profile.methods.includes(used)) {
    throw clientAuthRefused(
      `${used} is not supported by this server; token_endpoint_auth_methods_supported: `
      + `${profile.methods.join(', ')}`,
    );
  }
}

// oidc-provider only rejects *known* scopes missing from the client's `scope`
// metadata; unknown scopes are silently dropped. Tests want invalid_scope for both.
function wrapClientCredentialsGrant(provider) {
  const helpers = Object.fromEntries(
    Object.entries(grantHelpers)
      .filter(([, fn]) => typeof fn === 'function')
      .map(([name, fn]) => [name, fn.bind(undefined, provider)]),
  );
  const strict = async (ctx) => {
    refuseUnlistedMethod(ctx);
    const requested = (ctx.oidc.params.scope ?? '').split(' ').filter(Boolean);
    const clientScope = ctx.oidc.client.scope;
    const allowed = clientScope ? new Set(clientScope.split(' ')) : knownScopes;
    for (const scope of requested) {
      if (!knownScopes.has(scope) || !allowed.has(scope)) {
        throw new errors.InvalidScope('requested scope is not allowed', scope);
      }
    }
    return clientCredentialsHandler(provider, helpers, ctx);
  };
  // Same parameters/dupes as the built-in registration with resourceIndicators on.
  provider.registerGrantType('client_credentials', strict, ['scope', 'resource'], ['resource']);
}

function shutdown() {
  let open = listeners.length;
  for (const listener of listeners) {
    listener.close(() => {
      open -= 1;
      if (open === 0) process.exit(0);
    });
    listener.closeAllConnections();
  }
  setTimeout(() => process.exit(0), 2000).unref();
}
// What the token endpoint saw (see the header comment); bounded.
const tokenRequests = [];
const MAX_RECORDS = 100000;
let droppedRecords = 0; // `since` counts from the first request ever recorded

function decodeSegment(segment) {
  try {
    return JSON.parse(Buffer.from(segment ?? '', 'base64url').toString('utf8'));
  } catch {
    return {};
  }
}

function basicClientId(authorization) {
  const [scheme, value] = (authorization ?? '').split(' ');
  if (scheme?.toLowerCase() !== 'basic' || !value) return undefined;
  const decoded = Buffer.from(value, 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  if (i === -1) return undefined;
  try {
    return decodeURIComponent(decoded.slice(0, i).replace(/\+/g, '%20'));
  } catch {
    return decoded.slice(0, i);
  }
}

function recordTokenRequest(ctx) {
  const body = ctx.oidc.body ?? {};
  const method = authMechanism(ctx, body);
  const record = { method, status: ctx.status };
  if (profile.mtls) {
    record.client_certificate = thumbprintOf(peerCertificate(ctx));
    record.listener = ctx.socket?.localPort === mtlsServer.address()?.port ? 'mtls' : 'issuer';
  }
  if (method === 'private_key_jwt') {
    const [headerPart, payloadPart] = String(body.client_assertion).split('.');
    const header = decodeSegment(headerPart);
    const payload = decodeSegment(payloadPart);
    Object.assign(record, {
      client_id: payload.sub, alg: header.alg, typ: header.typ ?? null, aud: payload.aud,
    });
  } else if (method === 'client_secret_basic') {
    record.client_id = basicClientId(ctx.headers.authorization);
  } else {
    record.client_id = body.client_id;
  }
  if (ctx.body && typeof ctx.body === 'object' && ctx.body.error) {
    record.error = ctx.body.error;
    record.error_description = ctx.body.error_description ?? null;
  }
  tokenRequests.push(record);
  if (tokenRequests.length > MAX_RECORDS) {
    droppedRecords += tokenRequests.splice(0, tokenRequests.length - MAX_RECORDS).length;
  }
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

for (const listener of listeners) {
  listener.on('error', (err) => fail(`listen failed: ${err.message}`));
}

function listen(listener, listenPort) {
  return new Promise((resolve) => {
    listener.listen(listenPort, host, () => {
      const address = listener.address();
      const hostPart = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      resolve(`${profile.mtls ? 'https' : 'http'}://${hostPart}:${address.port}`);
    });
  });
}

(async () => {
  const issuer = await listen(server, port);
  const mtlsOrigin = mtlsServer ? await listen(mtlsServer, 0) : null;

  let provider;
  try {
    provider = new Provider(issuer, configuration());
  } catch (err) {
    fail(`invalid configuration: ${err.stack || err.message}`);
  }
  wrapClientCredentialsGrant(provider);

  provider.use(async (ctx, next) => {
    if (ctx.method === 'GET' && ctx.path === '/_test/token-requests') {
      const since = Math.max(0, Number.parseInt(ctx.query.since ?? '0', 10) || 0);
      ctx.body = {
        total: droppedRecords + tokenRequests.length,
        requests: tokenRequests.slice(Math.max(0, since - droppedRecords)),
      };
      return;
    }
    if (ctx.method !== 'POST' || ctx.path !== '/token') {
      await next();
      return;
    }
    try {
      await next();
    } finally {
      recordTokenRequest(ctx);
    }
  });

  // RFC 8414 metadata: same document as OpenID discovery.
  provider.use(async (ctx, next) => {
    if (ctx.path === '/.well-known/oauth-authorization-server') {
      ctx.path = '/.well-known/openid-configuration';
    }
    await next();
  });

  // RFC 8705 section 5: the token endpoint on the listener that asks for a certificate.
  if (mtlsOrigin) {
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/.well-known/openid-configuration' && ctx.body?.token_endpoint) {
        const tokenPath = new URL(ctx.body.token_endpoint).pathname;
        ctx.body.mtls_endpoint_aliases = { token_endpoint: `${mtlsOrigin}${tokenPath}` };
      }
    });
  }

  provider.on('server_error', (_ctx, err) => {
    process.stderr.write(`oidc test server: server_error: ${err.stack || err}\n`);
  });

  // Static clients are validated lazily by oidc-provider; surface bad metadata now.
  for (const { client_id: clientId } of clients) {
    try {
      // eslint-disable-next-line no-await-in-loop
      await provider.Client.find(clientId);
    } catch (err) {
      fail(`invalid client ${clientId}: ${err.error_description || err.message}`);
    }
  }

  handler = provider.callback();
  process.stdout.write(`READY ${issuer}\n`);
})();
