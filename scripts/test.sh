#!/usr/bin/env bash
# Runs every test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked "$@"
