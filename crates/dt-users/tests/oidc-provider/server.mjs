// A real OpenID Connect provider for the integration tests: panva's `oidc-provider`, with its
// development login and consent pages, dynamic client registration and an in-memory account
// table the tests fill over HTTP (`PUT /test/accounts/:id`).
//
//   node server.mjs [PORT]     (or PORT=...; 0, the default, picks a free port)
//
// Listens on 127.0.0.1 and prints `READY <issuer>` as its only line on stdout once it serves.
// Exits when its standard input closes (the test process that started it is gone) and on
// SIGTERM. Nothing is stored on disk: clients, sessions, grants and accounts live in memory.

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

// oidc-provider's start-up notices ("you SHOULD change …") are for deployments, not for a
// test fixture: drop them, and keep stdout for the READY line alone.
const quiet = (write) => (...args) => {
  if (typeof args[0] === 'string' && args[0].includes('oidc-provider ')) return;
  write(...args);
};
console.info = quiet(console.error);
console.log = quiet(console.error);
console.warn = quiet(console.warn);

/** Claims of each account, by account id, as the tests set them. */
const accounts = new Map();

// A signing key of this run (RS256 ID tokens), rather than the library's well-known dev keys.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };

const configuration = {
  jwks: { keys: [signingKey] },
  // The account id is whatever was typed as "login" on the development login page.
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      // The provider keeps the claims that the granted scopes (and `claims`) allow.
      async claims() {
        return { ...accounts.get(id), sub: id };
      },
    };
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username', 'picture'],
  },
  // The claims of the granted scopes go into the ID token as well as to the userinfo endpoint
  // (by default the ID token would carry only `sub` when an access token is issued too).
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    // Open registration: each test registers a client with its own redirect URI.
    registration: { enabled: true, initialAccessToken: false },
    userinfo: { enabled: true },
  },
  // Every authorization request must carry a PKCE challenge, S256 only.
  pkce: { methods: ['S256'], required: () => true },
  clientDefaults: {
    grant_types: ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: 'RS256',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  // Cookies signed with a key of this run.
  cookies: { keys: [randomBytes(32).toString('base64url')] },
};

/** `PUT /test/accounts/:id` with a JSON object: that account's claims (`sub` is always the id). */
async function testAccounts(ctx, next) {
  const match = /^\/test\/accounts\/([^/]+)$/.exec(ctx.path);
  if (!match) return next();
  if (ctx.method !== 'PUT') {
    ctx.status = 405;
    return undefined;
  }
  const chunks = [];
  for await (const chunk of ctx.req) chunks.push(chunk);
  let claims;
  try {
    claims = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    claims = undefined;
  }
  if (claims === null || typeof claims !== 'object' || Array.isArray(claims)) {
    ctx.status = 400;
    ctx.body = { error: 'the body must be a JSON object of claims' };
    return undefined;
  }
  accounts.set(decodeURIComponent(match[1]), claims);
  ctx.status = 204;
  return undefined;
}

const server = createServer();
const port = Number(process.argv[2] ?? process.env.PORT ?? 0);
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, configuration);
  provider.use(testAccounts);
  // Errors of the provider itself (not the clients' mistakes), for a failing test's output.
  provider.on('server_error', (_ctx, error) => console.error('oidc-provider server_error:', error));
  server.on('request', provider.callback());
  process.stdout.write(`READY ${issuer}\n`);
});

const stop = () => {
  server.close();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
