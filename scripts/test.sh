#!/usr/bin/env bash
# Runs every test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# node's jsonwebtoken for tests/interop_node.rs, oidc-provider for tests/oidc_module.rs and
# tests/sso.rs, and playwright-core for tests/browser.rs and tests/sso.rs, as pinned by
# tests/node/package-lock.json.
# Installed only when node_modules is missing or older than the lockfile, so reruns stay fast.
# (npm writes node_modules/.package-lock.json last, so an interrupted install is redone.)
stamp=tests/node/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ tests/node/package-lock.json -nt "$stamp" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "scripts/test.sh: npm not found: tests/interop_node.rs and tests/browser.rs need Node.js and npm" >&2
    exit 1
  fi
  (cd tests/node && npm ci --no-audit --no-fund)
  touch "$stamp"
fi

# Debian packages the tests run for real, each started by the tests themselves on free ports
# (nothing is started here), installed in one apt-get run when any is missing:
#   chromium      tests/browser.rs, tests/sso.rs (driven by playwright-core; it never
#                 downloads a browser)
#   redis-server  tests/state_store.rs, tests/replicas.rs
#   openssl       certificates for the Redis TLS test
#   curl          a second HTTP/2 and TLS client in tests/tls.rs
#   nginx         the auth_request edge in tests/forward_auth.rs
#   caddy         the forward_auth edge in tests/forward_auth.rs
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing="$missing nginx"
command -v caddy >/dev/null 2>&1 || missing="$missing caddy"
if [ -n "$missing" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh:$missing missing and no apt-get to install them" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  # shellcheck disable=SC2086 # one word per package
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
  # Debian starts packaged services; the tests run their own instances.
  $sudo service redis-server stop >/dev/null 2>&1 || true
  $sudo service nginx stop >/dev/null 2>&1 || true
  $sudo service caddy stop >/dev/null 2>&1 || true
fi

cargo test --locked "$@"
