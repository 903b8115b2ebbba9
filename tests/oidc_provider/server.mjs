// OAuth 2.0 authorization server for keyless-m2m integration tests.
//
// Usage: node server.mjs CONFIG.json
//
// CONFIG.json:
//   {"host": "127.0.0.1", "port": 0, "clients": [<oidc-provider client metadata>],
//    "scopes": ["pockets.read", ...], "access_token_ttl": 900}
//
// Once listening, prints exactly one line to stdout: `READY http://127.0.0.1:PORT`
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

import { Console } from 'node:console';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

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

const host = cfg.host ?? '127.0.0.1';
const port = Number(cfg.port ?? 0);
const knownScopes = new Set(cfg.scopes ?? []);
const accessTokenTTL = Number(cfg.access_token_ttl ?? 900);

if (!['127.0.0.1', '::1', 'localhost'].includes(host)) {
  fail(`refusing to listen on non-loopback host ${host}`);
}
if (!Number.isSafeInteger(accessTokenTTL) || accessTokenTTL <= 0) {
  fail('access_token_ttl must be a positive integer');
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
const server = createServer((req, res) => handler(req, res));

function configuration() {
  return {
    clients,
    scopes: [...knownScopes],
    jwks: { keys: [signingJwk] },
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    clientAuthMethods: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'],
    enabledJWA: {
      clientAuthSigningAlgValues: [
        'RS256', 'RS384', 'RS512',
        'PS256', 'PS384', 'PS512',
        'ES256', 'ES384', 'ES512',
        'EdDSA', 'Ed25519',
      ],
      idTokenSigningAlgValues: ['RS256'],
    },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
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

// oidc-provider only rejects *known* scopes missing from the client's `scope`
// metadata; unknown scopes are silently dropped. Tests want invalid_scope for both.
function wrapClientCredentialsGrant(provider) {
  const helpers = Object.fromEntries(
    Object.entries(grantHelpers)
      .filter(([, fn]) => typeof fn === 'function')
      .map(([name, fn]) => [name, fn.bind(undefined, provider)]),
  );
  const strict = async (ctx) => {
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
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.on('error', (err) => fail(`listen failed: ${err.message}`));

server.listen(port, host, async () => {
  const address = server.address();
  const hostPart = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const issuer = `http://${hostPart}:${address.port}`;

  let provider;
  try {
    provider = new Provider(issuer, configuration());
  } catch (err) {
    fail(`invalid configuration: ${err.stack || err.message}`);
  }
  wrapClientCredentialsGrant(provider);

  // RFC 8414 metadata: same document as OpenID discovery.
  provider.use(async (ctx, next) => {
    if (ctx.path === '/.well-known/oauth-authorization-server') {
      ctx.path = '/.well-known/openid-configuration';
    }
    await next();
  });

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
});
