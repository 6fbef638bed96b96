// A real, standards-based authorization server for the interop tests: node oidc-provider on 127.0.0.1.
//
// - Issues opaque client-credentials access tokens for the resource https://api.example.com (scopes read, write),
//   to the client `app` (client_secret_basic, secret `app-secret`).
// - Introspection (RFC 7662) and signed introspection responses (RFC 9701, `jwtIntrospection`, RS256) are on.
// - Introspection clients: `gw-basic` (client_secret_basic), `gw-post` (client_secret_post), secrets
//   `gw-basic-secret` / `gw-post-secret`, and `gw-jwt` (private_key_jwt) whose public JWKS is read from the
//   file named by $CLIENT_JWKS_FILE (the test generates that key); `gw-jwt-kid` (private_key_jwt) registers the
//   same public keys under a `kid` of its own, `gw-client-key-1`, as an operator who names keys would.
// - Discovery at /.well-known/openid-configuration (oidc-provider does not serve the RFC 8414 path).
// - JWT access tokens (RFC 9068, `at+jwt`, RS256) for the resource https://jwt-api.example.com (jwt_issuers tests);
//   the server's signing keys are read from the private JWK Set in $AS_JWKS_FILE when set (key rotation tests).
// - GET /test/stats: `{"introspection": n}`, the introspection requests received (counted before authentication).
//
// Environment: PORT (required). Prints `listening on http://127.0.0.1:PORT` when ready.
import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
if (!port) {
  console.error('server.mjs: set PORT');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const resource = 'https://api.example.com';
const jwtResource = 'https://jwt-api.example.com';

function signingKey(type, options, alg, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid };
}

const clientJwks = process.env.CLIENT_JWKS_FILE
  ? JSON.parse(readFileSync(process.env.CLIENT_JWKS_FILE, 'utf8'))
  : { keys: [] };

const CLIENT_KEY_KID = 'gw-client-key-1';
const clientJwksWithOwnKid = { keys: clientJwks.keys.map((jwk) => ({ ...jwk, kid: CLIENT_KEY_KID })) };

const introspectionClient = (id, extra) => ({
  client_id: id,
  grant_types: [],
  response_types: [],
  redirect_uris: [],
  ...extra,
});

const configuration = {
  clients: [
    {
      client_id: 'app',
      client_secret: 'app-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: 'read write',
    },
    introspectionClient('gw-basic', { client_secret: 'gw-basic-secret' }),
    introspectionClient('gw-post', {
      client_secret: 'gw-post-secret',
      token_endpoint_auth_method: 'client_secret_post',
    }),
    introspectionClient('gw-jwt', {
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: clientJwks,
    }),
    introspectionClient('gw-jwt-kid', {
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: clientJwksWithOwnKid,
    }),
  ],
  jwks: process.env.AS_JWKS_FILE ? JSON.parse(readFileSync(process.env.AS_JWKS_FILE, 'utf8')) : {
    keys: [
      signingKey('rsa', { modulusLength: 2048 }, 'RS256', 'as-rsa'),
      signingKey('ec', { namedCurve: 'P-256' }, 'ES256', 'as-ec'),
    ],
  },
  scopes: ['read', 'write'],
  cookies: { keys: ['interop-cookie-key-not-secret'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    jwtIntrospection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        if (indicator === jwtResource) {
          return { scope: 'read write', audience: jwtResource, accessTokenFormat: 'jwt', accessTokenTTL: 600 };
        }
        if (indicator !== resource) {
          throw new Provider.errors.InvalidTarget();
        }
        return { scope: 'read write', audience: resource, accessTokenFormat: 'opaque', accessTokenTTL: 600 };
      },
    },
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

let introspections = 0;
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/token/introspection') {
    introspections += 1;
  }
  if (ctx.method === 'GET' && ctx.path === '/test/stats') {
    ctx.body = { introspection: introspections };
    return;
  }
  await next();
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
