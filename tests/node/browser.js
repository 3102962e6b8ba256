// node browser.js BASE_URL SCREENSHOT_PNG
// node browser.js sso '<options json>'
//
// Drives Debian's Chromium (/usr/bin/chromium, through playwright-core) through authgate's
// browser login flows. Two scenarios:
//   - password (tests/browser.rs): protected page -> login page -> wrong password -> right
//     password -> back on the page asked for -> logout -> login page again.
//   - sso (tests/sso.rs), options {"base", "protected", "provider", "user", "password",
//     "expect", "cookie"}: protected page -> authgate's login page -> the "Sign in with
//     PROVIDER" link -> the OpenID Provider's login form (a form with Username and Password
//     labels and a "Sign in" button, as tests/node/oidc-provider.js serves) -> back on the
//     page asked for, whose text includes `expect` -> a logout form posted from that page ->
//     the provider's "Sign out?" page -> "Yes, sign me out" -> authgate's login page -> the
//     protected page again shows the login page.
// Prints a JSON summary and exits 0 when every check holds; otherwise prints what failed to
// stderr and exits 1.
'use strict';

const { chromium } = require('playwright-core');

const CHROMIUM = '/usr/bin/chromium';
// No GPU, no sandbox (we may be root in a container), and nothing that talks to the network
// on its own: the machine has no internet. playwright-core gives every launch a fresh
// temporary --user-data-dir and removes it on close.
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
const COOKIE = 'authgate_session';
const USER = 'alice';
const PASSWORD = 'correct horse battery staple';
const PROTECTED = '/app/dashboard?tab=1';

const SSO = process.argv[2] === 'sso';
const ssoOptions = SSO ? JSON.parse(process.argv[3] || '{}') : null;
const [base, screenshot] = SSO ? [ssoOptions.base, null] : process.argv.slice(2);
if (!base || (!SSO && !screenshot)) {
  console.error("usage: node browser.js BASE_URL SCREENSHOT_PNG\n       node browser.js sso '<options json>'");
  process.exit(2);
}

class CheckFailed extends Error {}

function check(condition, message) {
  if (!condition) throw new CheckFailed(message);
}

/** Asserts the page shows the login page, asked to come back to `next`. */
function assertLoginPage(page, next, when) {
  const url = new URL(page.url());
  check(
    url.origin === base && url.pathname === '/auth/login',
    `${when}: expected the login page ${base}/auth/login, got ${page.url()}`,
  );
  if (next !== undefined) {
    check(
      url.searchParams.get('next') === next,
      `${when}: expected next=${next} on the login page, got ${page.url()}`,
    );
  }
}

/** Clicks `button` and waits until the navigation it causes has loaded. */
async function submit(page, button) {
  const before = page.mainFrame();
  await Promise.all([
    page.waitForEvent('framenavigated', { predicate: (f) => f === before }),
    button.click(),
  ]);
  await page.waitForLoadState('load');
}

async function sessionCookie(context) {
  return (await context.cookies(base)).find((c) => c.name === COOKIE);
}

async function run(page, context) {
  const summary = {};

  // 1. A protected page, not logged in: sent to the login page, with the page in `next`.
  const first = await page.goto(base + PROTECTED);
  check(first !== null, 'no response for the protected page');
  const hop = first.request().redirectedFrom();
  check(hop !== null, `expected a redirect from ${PROTECTED}, got none (status ${first.status()})`);
  const hopStatus = (await hop.response()).status();
  check(hopStatus === 302, `expected a 302 from ${PROTECTED}, got ${hopStatus}`);
  assertLoginPage(page, PROTECTED, 'opening the protected page');
  check(first.status() === 200, `the login page answered ${first.status()}`);
  summary.redirected_to = new URL(page.url()).pathname + new URL(page.url()).search;
  await page.screenshot({ path: screenshot, fullPage: true });
  summary.screenshot = screenshot;

  const username = page.getByLabel('Username');
  const password = page.getByLabel('Password');
  const signIn = page.getByRole('button', { name: 'Sign in' });

  // 2. A wrong password: the page again, with an error and the username kept.
  await username.fill(USER);
  await password.fill('not the password');
  await submit(page, signIn);
  const alert = page.getByRole('alert');
  check((await alert.count()) === 1, `no role=alert error after a wrong password (at ${page.url()})`);
  const error = (await alert.innerText()).trim();
  check(
    error === 'Wrong username or password.',
    `after a wrong password the error reads ${JSON.stringify(error)}`,
  );
  check(
    (await username.inputValue()) === USER,
    `the username field holds ${JSON.stringify(await username.inputValue())} after a failed login`,
  );
  check((await sessionCookie(context)) === undefined, 'a failed login set a session cookie');
  summary.wrong_password_error = error;

  // 3. The right password: back on the page asked for, showing what the upstream returned.
  await password.fill(PASSWORD);
  await submit(page, signIn);
  check(
    page.url() === base + PROTECTED,
    `after logging in expected ${base + PROTECTED}, got ${page.url()}`,
  );
  const body = await page.locator('body').innerText();
  check(
    body.includes(`signed in as ${USER}`),
    `the app page does not say "signed in as ${USER}": ${JSON.stringify(body)}`,
  );
  const cookie = await sessionCookie(context);
  check(cookie !== undefined, 'no session cookie after logging in');
  check(cookie.httpOnly, 'the session cookie is not HttpOnly');
  check(cookie.sameSite === 'Lax', `the session cookie is SameSite=${cookie.sameSite}, not Lax`);
  const scriptCookies = await page.evaluate(() => document.cookie);
  check(
    !scriptCookies.includes(COOKIE),
    `page scripts can read the session cookie: document.cookie = ${JSON.stringify(scriptCookies)}`,
  );
  summary.app_page = body.trim();
  summary.cookie = { httpOnly: cookie.httpOnly, sameSite: cookie.sameSite, secure: cookie.secure };

  // 4. The app's logout button: back to the login page, the cookie gone.
  await submit(page, page.getByRole('button', { name: 'Log out' }));
  assertLoginPage(page, undefined, 'after logging out');
  check((await sessionCookie(context)) === undefined, 'the session cookie survived logout');
  summary.after_logout = new URL(page.url()).pathname;

  // 5. The protected page again: the login page, not the app.
  await page.goto(base + PROTECTED);
  assertLoginPage(page, PROTECTED, 'opening the protected page after logout');
  check(
    !(await page.locator('body').innerText()).includes('signed in as'),
    'the app page is shown after logout',
  );

  summary.ok = true;
  return summary;
}

/** Waits until the page is at `url` (a string or a predicate on URL) and has loaded. */
async function arrive(page, url, when) {
  try {
    await page.waitForURL(url, { waitUntil: 'load' });
  } catch (e) {
    throw new CheckFailed(`${when}: still at ${page.url()} (${e.message.split('\n')[0]})`);
  }
}

/** The sso scenario (see the header). */
async function runSso(page, context, o) {
  const summary = {};
  const cookieOf = async () => (await context.cookies(base)).find((c) => c.name === o.cookie);

  // 1. The protected page, not signed in: authgate's login page, offering the provider.
  await page.goto(base + o.protected);
  assertLoginPage(page, o.protected, 'opening the protected page');
  const link = page.getByRole('link', { name: `Sign in with ${o.provider}` });
  check((await link.count()) === 1, `no "Sign in with ${o.provider}" link on ${page.url()}`);
  summary.login_page = new URL(page.url()).pathname + new URL(page.url()).search;

  // 2. The link: the provider's own login form, on the provider's origin.
  await Promise.all([
    arrive(page, (url) => url.origin !== base && url.pathname.startsWith('/interaction/'), 'following the provider link'),
    link.click(),
  ]);
  summary.provider_page = page.url();

  // 3. Signing in there: back on the protected page, showing what the upstream answered.
  await page.getByLabel('Username').fill(o.user);
  await page.getByLabel('Password').fill(o.password);
  await Promise.all([
    arrive(page, base + o.protected, 'after signing in at the provider'),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  const body = await page.locator('body').innerText();
  check(body.includes(o.expect), `the page does not show ${JSON.stringify(o.expect)}: ${JSON.stringify(body)}`);
  const cookie = await cookieOf();
  check(cookie !== undefined, `no ${o.cookie} cookie after signing in`);
  check(cookie.httpOnly, `the ${o.cookie} cookie is not HttpOnly`);
  check(cookie.sameSite === 'Lax', `the ${o.cookie} cookie is SameSite=${cookie.sameSite}`);
  const states = (await context.cookies(base)).filter((c) => c.name.startsWith('authgate_oidc_'));
  check(states.length === 0, `state cookies left after the login: ${states.map((c) => c.name)}`);
  summary.app_page = body.trim();

  // 4. Logging out with a form posted from the page: the provider asks to confirm, then
  // sends the browser back to authgate's login page; the session cookie is gone.
  await Promise.all([
    arrive(page, (url) => url.origin !== base && url.pathname.startsWith('/session/end'), 'posting the logout form'),
    page.evaluate(() => {
      const form = document.createElement('form');
      form.method = 'post';
      form.action = '/auth/logout';
      document.body.appendChild(form);
      form.submit();
    }),
  ]);
  summary.after_logout = page.url();
  check((await cookieOf()) === undefined, `the ${o.cookie} cookie survived logout`);
  await Promise.all([
    arrive(page, (url) => url.origin === base && url.pathname === '/auth/login', 'confirming the logout at the provider'),
    page.getByRole('button', { name: 'Yes, sign me out' }).click(),
  ]);
  summary.signed_out_at = new URL(page.url()).pathname;

  // 5. The protected page again: the login page, not the app.
  await page.goto(base + o.protected);
  assertLoginPage(page, o.protected, 'opening the protected page after logout');
  check(!(await page.locator('body').innerText()).includes(o.expect), 'the app page is shown after logout');

  summary.ok = true;
  return summary;
}

async function main() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    page.setDefaultTimeout(15000);
    page.setDefaultNavigationTimeout(15000);
    const summary = SSO ? await runSso(page, context, ssoOptions) : await run(page, context);
    summary.browser = `chromium ${browser.version()}`;
    console.log(JSON.stringify(summary));
  } finally {
    await browser.close();
  }
}

// A last resort so that a wedged browser cannot hang the test run.
setTimeout(() => {
  console.error('browser.js: timed out after 120 s');
  process.exit(1);
}, 120000).unref();

main().catch((e) => {
  console.error(e instanceof CheckFailed ? `browser check failed: ${e.message}` : e);
  process.exit(1);
});
