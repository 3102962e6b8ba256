#!/usr/bin/env bash
# Runs every test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# node's jsonwebtoken for tests/interop_node.rs and playwright-core for tests/browser.rs, as
# pinned by tests/node/package-lock.json.
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

# Debian's Chromium for tests/browser.rs (driven by playwright-core, installed above; it
# never downloads a browser of its own). Installed only when missing.
if [ ! -x /usr/bin/chromium ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: /usr/bin/chromium missing and no apt-get: tests/browser.rs needs Debian's chromium package" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

# Debian's redis-server for tests/state_store.rs, and openssl for its TLS test's certificates.
# Nothing is started here: each test runs its own server on a free port. Installed only when
# missing.
missing=""
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
if [ -n "$missing" ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh:$missing missing and no apt-get: tests/state_store.rs needs them" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  # shellcheck disable=SC2086 # one word per package
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi

cargo test --locked "$@"
