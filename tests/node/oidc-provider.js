// node oidc-provider.js '<config json>'
//
// A real, certified OpenID Provider (panva's `oidc-provider`, pinned by package-lock.json) on
// 127.0.0.1, for authgate's OpenID Connect relying-party tests (tests/oidc_module.rs) and its
// single sign-on tests (tests/sso.rs). Plain http on loopback; an ephemeral port.
//
// Protocol with the test:
//   - argv[2]: the config, JSON (below).
//   - stdout: exactly one line once listening: {"issuer":"http://127.0.0.1:PORT","port":PORT}.
//     Everything else (oidc-provider's notices included) goes to stderr.
//   - stdin: the process exits when it closes, so a test's child never outlives the test.
//
// Config:
//   {
//     "clients": [ { "client_id": "authgate", "client_secret": "...",
//                    "redirect_uris": ["https://gw.test/auth/oidc/corp/callback"],
//                    "post_logout_redirect_uris": ["https://gw.test/"],
//                    "token_endpoint_auth_method": "client_secret_basic" , ...any other
//                    client metadata, e.g. "id_token_signed_response_alg": "HS256" } ],
//     "users": { "alice": { "password": "...",
//                           "claims": { "email": "...", "email_verified": true, "groups": [...] } } }
//   }
//   Optional "provider": extra oidc-provider configuration, merged over the harness's own
//   (top-level keys replace), e.g. {"enabledJWA": {"idTokenSigningAlgValues": ["RS256", "HS256"]}}.
//   Clients get grant_types ["authorization_code"] and response_types ["code"] unless given.
//   PKCE (S256) is required for every client. Standard claims are released with their scope
//   (`email`: email, email_verified; `profile`: name, preferred_username, ...); any other claim
//   a user has (e.g. `groups`) is released with `openid`, so it is always present. Claims go
//   into the ID token itself (`conformIdTokenClaims: false`), not only to /userinfo.
//
// Interaction pages (no JavaScript; a plain HTTP client with a cookie jar, or Chromium, can
// complete them):
//   GET  /interaction/:uid         login: a form (`username`, `password`, a submit button)
//                                  posting to /interaction/:uid/login; consent: granted at once
//                                  (every client here is first party) with a 303 back.
//   POST /interaction/:uid/login   right password: 303 back to the provider, which goes on to
//                                  consent and then to the client's redirect_uri with a code;
//                                  wrong password: the form again, status 401.
//
// Test hooks, loopback peers only, all POST (GET for /__test/last-token-request):
//   POST /__test/rotate           A new RSA signing key (new kid) replaces the old one, which
//                                 is gone from /jwks at once. Answers {"kid":NEW,"previous":OLD}.
//                                 How: oidc-provider has no API to swap keys in a running
//                                 instance, so a new Provider instance with the new key set and
//                                 the same config takes over the server's requests. Sessions,
//                                 interactions, codes and grants live in oidc-provider's
//                                 in-memory adapter, whose store is shared by every instance
//                                 in the process, so logins in progress carry on.
//   POST /__test/deny-next        The next login form submission ends the interaction with
//                                 error=access_denied (oidc-provider's own interaction-result
//                                 error path), so the client gets ?error=access_denied&state=...
//   POST /__test/next-id-token    Body {"set": {claim: value, ...}, "unset": ["claim", ...]}.
//                                 The next token-endpoint response's ID token gets these claims
//                                 changed and is signed again with the provider's current key
//                                 (same kid, RS256). oidc-provider always sets `aud` to the
//                                 client, `iss` to itself and `exp` from a positive TTL, and
//                                 filters account claims through scopes, so a wrong audience, a
//                                 foreign issuer, an expired token or a bad nonce cannot come
//                                 out of it otherwise; re-signing with the real key gives a
//                                 token that differs from a genuine one only in those claims.
//                                 (A post-middleware on the token endpoint, `provider.use`.)
//   GET  /__test/last-token-request  What the last token request carried, no secrets:
//                                 {"client_auth":"basic"|"post"|"none","code_verifier":bool,
//                                  "status":200,"id_token_alg":"RS256"|...|null}.
//   GET  /__test/jwks-fetches     How many times /jwks was served: {"count":N}.
'use strict';

const http = require('node:http');
const crypto = require('node:crypto');

// oidc-provider prints notices with console.info: keep stdout for the one ready line. Two
// warnings expected here are dropped, once understood: oidc-provider 9 calls node 20 an
// "unsupported runtime" (it asks for the current LTS, 22+; every test here passes on the
// node 20 this machine has), and its in-memory adapter is "development-only" (just what a
// test wants). Every other warning still reaches stderr.
const EXPECTED_WARNINGS = [
  'oidc-provider WARNING: Unsupported runtime.',
  'oidc-provider WARNING: a quick start development-only in-memory adapter is used',
];
const stderrLog = console.error.bind(console);
console.log = stderrLog;
console.info = stderrLog;
console.warn = (first, ...rest) => {
  if (typeof first === 'string' && EXPECTED_WARNINGS.some((w) => first.startsWith(w))) return;
  stderrLog(first, ...rest);
};

const STANDARD_SCOPES = {
  email: ['email', 'email_verified'],
  profile: [
    'name', 'family_name', 'given_name', 'middle_name', 'nickname', 'preferred_username',
    'profile', 'picture', 'website', 'gender', 'birthdate', 'zoneinfo', 'locale', 'updated_at',
  ],
  address: ['address'],
  phone: ['phone_number', 'phone_number_verified'],
};

/** One signing key: an RSA key pair with a fresh kid. */
function newSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `k-${crypto.randomBytes(6).toString('hex')}`;
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  return { kid, jwk, privateKey };
}

function htmlEscape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${htmlEscape(title)}</title></head>
<body><h1>${htmlEscape(title)}</h1>${body}</body></html>`;
}

function loginForm(uid, clientId, message) {
  const note = message ? `<p role="alert">${htmlEscape(message)}</p>` : '';
  return page('Sign in', `<p>to ${htmlEscape(clientId)}</p>${note}
<form method="post" action="/interaction/${htmlEscape(uid)}/login">
  <label>Username <input name="username" autocomplete="username" autofocus></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form>`);
}

function send(res, status, type, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', type);
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

function sendJson(res, status, value) {
  send(res, status, 'application/json', JSON.stringify(value));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 64 * 1024) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function isLoopback(address) {
  return address === '::1' || /^(::ffff:)?127\./.test(address || '');
}

function base64urlJson(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/** The ID token with `change` applied, signed again with `key` (RS256, same kid). */
function resign(idToken, change, key) {
  const [h, p] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'));
  const payload = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
  if (header.alg !== 'RS256' || header.kid !== key.kid) {
    throw new Error(`cannot re-sign a ${header.alg} token with kid ${header.kid}`);
  }
  Object.assign(payload, change.set || {});
  for (const name of change.unset || []) delete payload[name];
  const input = `${h}.${base64urlJson(payload)}`;
  const signature = crypto.sign('RSA-SHA256', Buffer.from(input), key.privateKey);
  return `${input}.${signature.toString('base64url')}`;
}

/** The provider's configuration for one signing key. */
function providerConfig(config, key, cookieKeys) {
  const users = config.users || {};
  const standard = new Set(Object.values(STANDARD_SCOPES).flat());
  const custom = new Set();
  for (const user of Object.values(users)) {
    for (const claim of Object.keys(user.claims || {})) {
      if (!standard.has(claim) && claim !== 'sub') custom.add(claim);
    }
  }
  const clients = (config.clients || []).map((c) => ({
    grant_types: ['authorization_code'],
    response_types: ['code'],
    ...c,
  }));
  return {
    ...ownConfig(users, custom, clients, key, cookieKeys),
    ...(config.provider || {}),
  };
}

/** The harness's own oidc-provider settings. */
function ownConfig(users, custom, clients, key, cookieKeys) {
  const minimal = (title) => async (ctx, form) => {
    ctx.type = 'html';
    ctx.body = page(title, form || '');
  };
  return {
    clients,
    jwks: { keys: [key.jwk] },
    cookies: { keys: cookieKeys },
    claims: { openid: ['sub', ...custom], ...STANDARD_SCOPES },
    conformIdTokenClaims: false,
    // Explicit lifetimes (seconds); the defaults work but print a notice each.
    ttl: {
      AuthorizationCode: 60,
      AccessToken: 600,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.type = 'html';
          ctx.body = page('Sign out?', `${form}
<button type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
<button type="submit" form="op.logoutForm">No, stay signed in</button>`);
        },
        postLogoutSuccessSource: minimal('Signed out'),
      },
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre>${htmlEscape(JSON.stringify(out))}</pre>`);
    },
    async findAccount(ctx, id) {
      const user = users[id];
      if (!user) return undefined;
      return { accountId: id, claims: async () => ({ ...(user.claims || {}), sub: id }) };
    },
  };
}

/** The test's provider: the current oidc-provider instance and the hooks' state. */
class Harness {
  constructor(Provider, issuer, config) {
    this.Provider = Provider;
    this.issuer = issuer;
    this.config = config;
    this.cookieKeys = [crypto.randomBytes(32).toString('base64url')];
    this.denyNext = false;
    this.nextIdToken = null;
    this.lastTokenRequest = null;
    this.jwksFetches = 0;
    this.install(newSigningKey());
  }

  /** A new Provider instance signing with `key` takes over every request. */
  install(key) {
    const provider = new this.Provider(this.issuer, providerConfig(this.config, key, this.cookieKeys));
    provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
    provider.use(async (ctx, next) => {
      if (ctx.path === '/jwks') this.jwksFetches += 1;
      await next();
      if (ctx.path === '/token' && ctx.method === 'POST') this.afterToken(ctx, key);
    });
    this.key = key;
    this.provider = provider;
    this.handler = provider.callback();
  }

  afterToken(ctx, key) {
    const auth = ctx.get('authorization');
    let clientAuth = 'none';
    if (/^basic /i.test(auth)) clientAuth = 'basic';
    else if (ctx.oidc?.params?.client_secret) clientAuth = 'post';
    const idToken = ctx.status === 200 && ctx.body ? ctx.body.id_token : undefined;
    this.lastTokenRequest = {
      client_auth: clientAuth,
      code_verifier: Boolean(ctx.oidc?.params?.code_verifier),
      status: ctx.status,
      id_token_alg: idToken
        ? JSON.parse(Buffer.from(idToken.split('.')[0], 'base64url').toString('utf8')).alg
        : null,
    };
    if (this.nextIdToken && ctx.status === 200 && ctx.body && ctx.body.id_token) {
      const change = this.nextIdToken;
      this.nextIdToken = null;
      ctx.body = { ...ctx.body, id_token: resign(ctx.body.id_token, change, key) };
    }
  }

  async hook(req, res, name) {
    if (!isLoopback(req.socket.remoteAddress)) return sendJson(res, 403, { error: 'loopback only' });
    if (req.method === 'GET' && name === 'last-token-request') return sendJson(res, 200, this.lastTokenRequest);
    if (req.method === 'GET' && name === 'jwks-fetches') return sendJson(res, 200, { count: this.jwksFetches });
    if (req.method !== 'POST') return sendJson(res, 405, { error: 'POST only' });
    const body = await readBody(req);
    switch (name) {
      case 'rotate': {
        const previous = this.key.kid;
        this.install(newSigningKey());
        return sendJson(res, 200, { kid: this.key.kid, previous });
      }
      case 'deny-next':
        this.denyNext = true;
        return sendJson(res, 200, { armed: 'deny-next' });
      case 'next-id-token': {
        const change = JSON.parse(body || '{}');
        this.nextIdToken = { set: change.set || {}, unset: change.unset || [] };
        return sendJson(res, 200, { armed: 'next-id-token' });
      }
      default:
        return sendJson(res, 404, { error: `no hook ${name}` });
    }
  }

  async interaction(req, res, uid, action) {
    const { provider } = this;
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) return send(res, 400, 'text/plain', 'interaction mismatch');
    const clientId = details.params.client_id;
    if (req.method === 'GET' && !action) {
      if (details.prompt.name === 'consent') return this.consent(req, res, details);
      return send(res, 200, 'text/html; charset=utf-8', loginForm(uid, clientId));
    }
    if (req.method === 'POST' && action === 'login') {
      const form = new URLSearchParams(await readBody(req));
      if (this.denyNext) {
        this.denyNext = false;
        return provider.interactionFinished(req, res, {
          error: 'access_denied',
          error_description: 'the test provider denied this login',
        }, { mergeWithLastSubmission: false });
      }
      const user = (this.config.users || {})[form.get('username')];
      if (!user || user.password !== form.get('password')) {
        return send(res, 401, 'text/html; charset=utf-8', loginForm(uid, clientId, 'Wrong username or password.'));
      }
      return provider.interactionFinished(req, res, {
        login: { accountId: form.get('username') },
      }, { mergeWithLastSubmission: false });
    }
    return send(res, 405, 'text/plain', 'method not allowed');
  }

  /** Consent is granted at once for the configured (first-party) clients. */
  async consent(req, res, details) {
    const { provider } = this;
    const { prompt, params, session, grantId } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const saved = await grant.save();
    const consent = grantId ? {} : { grantId: saved };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }

  async handle(req, res) {
    const url = new URL(req.url, this.issuer);
    const hook = url.pathname.match(/^\/__test\/([a-z-]+)$/);
    if (hook) return this.hook(req, res, hook[1]);
    const interaction = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login))?$/);
    if (interaction) return this.interaction(req, res, interaction[1], interaction[2]);
    return this.handler(req, res);
  }
}

async function main() {
  const config = JSON.parse(process.argv[2] || '{}');
  const { default: Provider } = await import('oidc-provider');
  const server = http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const harness = new Harness(Provider, issuer, config);
  server.on('request', (req, res) => {
    harness.handle(req, res).catch((err) => {
      // oidc-provider's own errors (a missing interaction cookie, say) carry their status.
      const status = err.expose && err.statusCode ? err.statusCode : 500;
      if (status === 500) console.error('oidc-provider.js:', err);
      if (!res.headersSent) send(res, status, 'text/plain', `${err.error || 'harness error'}: ${err.error_description || ''}`);
      else res.destroy();
    });
  });
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
}

main().catch((err) => {
  console.error('oidc-provider.js:', err);
  process.exit(1);
});
