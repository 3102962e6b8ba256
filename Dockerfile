# authgate container image: a release build, run as a non-root user on slim Debian.
#
#   docker build -t authgate .
#   docker run --rm -p 8080:8080 -e JWT_SECRET="$(openssl rand -hex 32)" authgate
#
# The shipped gateway.yaml (demo echo upstream) is at /etc/authgate/gateway.yaml; mount your
# own config directory over /etc/authgate (see examples/docker-compose.yml).

# --- build -----------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, against a dummy crate, so this layer is rebuilt only when Cargo.toml or
# Cargo.lock change. (If Cargo.toml ever names extra targets, e.g. [[bench]], create stubs for
# them here too.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# Then the crate itself. COPY keeps the files' old mtimes: touch them so cargo does not take
# the dummy build above for an up-to-date one.
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/authgate /usr/local/bin/authgate

# --- run -------------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: remote JWK Sets (tokens.jwks) are fetched over https, verified with the
# system roots. Not pinned (hadolint DL3008): Debian removes the old version from its mirrors at
# each point release, so a pin would break the build, and we want the current roots anyway.
# The user has a fixed numeric id so that `USER` below is numeric: Kubernetes' runAsNonRoot can
# only verify a numeric user (hadolint DL3066).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 authgate \
    && useradd --system --uid 10001 --gid authgate --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin authgate \
    && mkdir -p /var/lib/authgate \
    && chown authgate:authgate /var/lib/authgate

COPY --from=builder /usr/local/bin/authgate /usr/local/bin/authgate
COPY gateway.yaml /etc/authgate/gateway.yaml

# The shipped gateway.yaml listens on ${AUTHGATE_LISTEN:-127.0.0.1:8080}: all interfaces here.
# The state store (revocations, sessions, refresh tokens, login limits) lives on a volume, so
# it survives a new container; replicas use Redis instead (AUTHGATE_STORE=redis://...).
ENV AUTHGATE_CONFIG=/etc/authgate/gateway.yaml \
    AUTHGATE_LISTEN=0.0.0.0:8080 \
    AUTHGATE_STORE=sqlite:/var/lib/authgate/state.db
VOLUME ["/var/lib/authgate"]

# authgate:authgate, by number (see above).
USER 10001:10001
EXPOSE 8080

# Asks the admin listener (admin.listen in $AUTHGATE_CONFIG, default 127.0.0.1:9090) for
# /healthz; each attempt is bounded to a few seconds by the command itself.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["authgate", "healthcheck"]

# SIGTERM: stop accepting, let in-flight requests finish (up to 30 s), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["authgate"]
CMD ["run"]
