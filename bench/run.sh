#!/usr/bin/env bash
# authgate side-by-side benchmark: direct, nginx, haproxy-jwt, hyper-minimal and authgate
# variants (stores, TLS, pools, forward-auth), all on 127.0.0.1, bounded in time (about 17
# minutes with the defaults). Prints a table and writes bench/results/latest.json. Settings:
# BENCH_DURATION (10 s per target), BENCH_WARMUP (3 s), BENCH_CONNECTIONS (64), BENCH_ROUNDS
# (3), BENCH_FLOOD (1000000 distinct tokens for the memory check), BENCH_ONLY (a comma list of
# targets and extras: flood, refresh, handshakes, failover).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v redis-server >/dev/null || need+=(redis-server)
command -v taskset >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${need[@]}"
  # Debian starts the packaged services; the benchmark runs its own instances.
  $sudo service nginx stop >/dev/null 2>&1 || true
  $sudo service haproxy stop >/dev/null 2>&1 || true
  $sudo service redis-server stop >/dev/null 2>&1 || true
fi
if [ ! -d tests/node/node_modules/jsonwebtoken ]; then
  (cd tests/node && npm ci --no-audit --no-fund)
fi

cargo build --release --locked
# The hyper-minimal reference row: its own small crate and lock file.
(cd bench/hyper-minimal && cargo build --release --locked)

BENCH_RUN=$(mktemp -d)
export BENCH_RUN
trap 'rm -rf "$BENCH_RUN"' EXIT
BENCH_SECRET=$(openssl rand -hex 32)   # test-only, generated per run
export BENCH_SECRET
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$BENCH_RUN/rs256.pem" 2>/dev/null
# Test-only TLS certificate for 127.0.0.1 (the TLS rows; nginx and authgate serve the same one).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$BENCH_RUN/tls.key" -out "$BENCH_RUN/tls.crt" 2>/dev/null
node bench/gen_tokens.js "$BENCH_RUN" "$BENCH_SECRET" "$BENCH_RUN/rs256.pem" 20000

python3 bench/run.py
