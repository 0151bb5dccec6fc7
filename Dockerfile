# syntax=docker/dockerfile:1
# graphgate container image. Build from the repository root:
#
#     docker build -t graphgate .
#
# or through deploy/docker-compose.yml (see deploy/README.md). The config is read from
# /etc/graphgate/graphgate.toml (mount it; none is baked in), secrets from the environment
# (`*_env` keys) or from files under /run/secrets (`*_file` keys).

# ---------------------------------------------------------------- build
FROM rust:1-slim-bookworm AS build
# make: the jemalloc allocator is built from its C sources.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, against stub targets: this layer, with every compiled dependency, is reused
# until Cargo.toml or Cargo.lock change, so editing src/ rebuilds only graphgate itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src

COPY src ./src
# The stubs' build outputs are older than the real sources only by mtime: touch so cargo rebuilds.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && cp target/release/graphgate /usr/local/bin/graphgate

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# graphgate needs no OpenSSL: rustls with bundled webpki roots. ca-certificates is kept for tools
# run inside the container; curl is there only for the HEALTHCHECK below (the binary has no probe
# command of its own yet).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid/gid, so file secrets can be made readable to it (chown 10001) and Kubernetes'
# runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 graphgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin graphgate \
 && mkdir -p /etc/graphgate

COPY --from=build /usr/local/bin/graphgate /usr/local/bin/graphgate

USER 10001:10001

# `docker run IMAGE check-config` finds the same file as the default command.
ENV GRAPHGATE_CONFIG=/etc/graphgate/graphgate.toml \
    RUST_LOG=info

# 8080: the proxy (server.listen). 9090: the admin listener (server.admin_listen: /metrics,
# /healthz, /readyz), which the binary's metrics work adds.
EXPOSE 8080 9090

# /healthz answers while the process is up; readiness (/readyz) is for orchestrators to route by.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "2", "--output", "/dev/null", "http://127.0.0.1:9090/healthz"]

ENTRYPOINT ["graphgate"]
CMD ["--config", "/etc/graphgate/graphgate.toml"]
