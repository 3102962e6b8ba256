#!/usr/bin/env bash
# Runs every test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# node's jsonwebtoken for tests/interop_node.rs, as pinned by tests/node/package-lock.json.
# Installed only when node_modules is missing or older than the lockfile, so reruns stay fast.
# (npm writes node_modules/.package-lock.json last, so an interrupted install is redone.)
stamp=tests/node/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ tests/node/package-lock.json -nt "$stamp" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "scripts/test.sh: npm not found: tests/interop_node.rs needs Node.js and npm" >&2
    exit 1
  fi
  (cd tests/node && npm ci --no-audit --no-fund)
  touch "$stamp"
fi

cargo test --locked "$@"
