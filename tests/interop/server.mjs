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
// - Token exchange (RFC 8693), a grant registered here for `gw-basic`: an active client-credentials token of this
//   server (subject_token_type access_token) is exchanged for a JWT signed with `as-ec` (ES256) for the audience
//   `orders-api` only (any other: invalid_target), scope narrowed to a requested `scope`, expiring with the
//   subject token (at most 300 s). GET /test/exchanges answers how many exchanges each subject token had, by the
//   first 8 hex of its SHA-256 (a test control; never the token).
//
// Environment: PORT (required). Prints `listening on http://127.0.0.1:PORT` when ready.
import { createHash, generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import { importJWK, SignJWT } from 'jose';
import Provider, { errors } from 'oidc-provider';

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

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const EXCHANGE_AUDIENCE = 'orders-api';

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

const exchangeKey = signingKey('ec', { namedCurve: 'P-256' }, 'ES256', 'as-ec');

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
    introspectionClient('gw-basic', { client_secret: 'gw-basic-secret', grant_types: [TOKEN_EXCHANGE] }),
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
      exchangeKey,
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
          throw new errors.InvalidTarget();
        }
        return { scope: 'read write', audience: resource, accessTokenFormat: 'opaque', accessTokenTTL: 600 };
      },
    },
  },
};

// Certificate-bound access tokens (RFC 8705): the client `app-mtls` (client_secret_basic, secret `app-mtls-secret`)
// gets tokens bound to the certificate its token request came with, and introspection answers carry
// cnf["x5t#S256"]. As behind any TLS-terminating proxy, the certificate is the URL-encoded PEM in the
// X-Client-Cert request header (what nginx's $ssl_client_escaped_cert gives).
configuration.features.mTLS = {
  enabled: true,
  certificateBoundAccessTokens: true,
  getCertificate(ctx) {
    const value = ctx.get('x-client-cert');
    return value ? decodeURIComponent(value) : undefined;
  },
};
configuration.clients.push({
  client_id: 'app-mtls',
  client_secret: 'app-mtls-secret',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  scope: 'read write',
  tls_client_certificate_bound_access_tokens: true,
});

const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, err) => console.error('server_error', err));

let introspections = 0;
const exchanges = {};
provider.use(async (ctx, next) => {
  if (ctx.method === 'POST' && ctx.path === '/token/introspection') {
    introspections += 1;
  }
  if (ctx.method === 'GET' && ctx.path === '/test/stats') {
    ctx.body = { introspection: introspections };
    return;
  }
  if (ctx.method === 'GET' && ctx.path === '/test/exchanges') {
    ctx.body = exchanges;
    return;
  }
  await next();
});

async function tokenExchange(ctx) {
  const { params } = ctx.oidc;
  const { InvalidGrant, InvalidRequest, InvalidScope, InvalidTarget } = errors;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new InvalidRequest('subject_token_type must be an access token');
  }
  if ((params.requested_token_type || JWT_TYPE) !== JWT_TYPE) {
    throw new InvalidRequest('only JWTs are issued');
  }
  const subject = await provider.ClientCredentials.find(params.subject_token);
  if (!subject || subject.isExpired) {
    throw new InvalidGrant('the subject_token is not active');
  }
  if (params.audience !== EXCHANGE_AUDIENCE) {
    throw new InvalidTarget('unknown audience');
  }
  const granted = (subject.scope || '').split(' ');
  const scope = params.scope ? params.scope.split(' ') : granted;
  if (!scope.every((s) => granted.includes(s))) {
    throw new InvalidScope('the requested scope exceeds the subject token\'s', params.scope);
  }
  const now = Math.floor(Date.now() / 1000);
  const exp = Math.min(subject.exp, now + 300);
  const claims = { sub: subject.clientId, client_id: subject.clientId, scope: scope.join(' '), token_use: 'exchanged' };
  const jwt = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', kid: exchangeKey.kid, typ: 'at+jwt' })
    .setIssuer(issuer).setAudience(params.audience).setIssuedAt(now).setExpirationTime(exp).setJti(randomUUID())
    .sign(await importJWK(exchangeKey, 'ES256'));
  const fingerprint = createHash('sha256').update(params.subject_token).digest('hex').slice(0, 8);
  exchanges[fingerprint] = (exchanges[fingerprint] || 0) + 1;
  ctx.body = { access_token: jwt, issued_token_type: JWT_TYPE, token_type: 'N_A', expires_in: exp - now };
}
provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange,
  new Set(['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope']));

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening on ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
