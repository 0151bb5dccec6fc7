# syntax=docker/dockerfile:1
# graphgate container image. Build from the repository root:
#
#     docker build --build-arg VERSION=0.1.0 --build-arg GIT_REVISION=$(git rev-parse HEAD) -t graphgate .
#
# or through deploy/docker-compose.yml (see deploy/README.md). The config is read from
# /etc/graphgate/graphgate.toml (mount it; none is baked in), secrets from the environment
# (`*_env` keys) or from files under /run/secrets (`*_file` keys).
#
# Base images are pinned by digest (a tag can be re-pushed, a digest cannot). To move to a newer
# one: `docker buildx imagetools inspect <image>:<tag>` prints the digest to put here.

# ---------------------------------------------------------------- build
FROM rust:1.88-slim-bookworm@sha256:38bc5a86d998772d4aec2348656ed21438d20fcdce2795b56ca434cf21430d89 AS build
# make: the jemalloc allocator is built from its C sources.
RUN apt-get update \
 && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Everything `cargo build` reads: the manifest names the benches, so they must be here too.
# tests/deploy.rs copies exactly these COPY sources into an empty directory and builds there, so a
# path missing here fails CI before it fails `docker build`.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches

# The git revision is shown by `graphgate_build_info` (metrics) and the start-up log line.
ARG GIT_REVISION=unknown
# A static, stripped binary: glibc linked statically (`crt-static`; glibc >= 2.34 has the DNS and
# files name services built in, so name lookups work without any shared library in the runtime
# image), jemalloc and rustls compiled in, no OpenSSL. The explicit --target keeps build scripts
# and proc macros dynamic. Cache mounts keep the registry and the compiled dependencies between
# builds instead of a stub-source layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    TARGET="$(rustc -vV | sed -n 's/^host: //p')" \
 && GRAPHGATE_GIT_REVISION="$GIT_REVISION" \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$TARGET" \
 && cp "target/$TARGET/release/graphgate" /usr/local/bin/graphgate \
 && mkdir -p /rootfs/etc/graphgate /rootfs/var/lib/graphgate

# ---------------------------------------------------------------- runtime
# distroless/static: CA certificates, /etc/passwd, tzdata and nothing else: no shell, no package
# manager, no curl, no libc (the binary needs none).
FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab

ARG VERSION=0.1.0
ARG GIT_REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="graphgate" \
      org.opencontainers.image.description="Reverse proxy for Meta's Graph API: token injection, exact per-WABA budgets, response cache" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${GIT_REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="gcr.io/distroless/static-debian12:nonroot"

COPY --from=build /usr/local/bin/graphgate /usr/local/bin/graphgate
# /etc/graphgate: where the config is mounted. /var/lib/graphgate: the one writable place, for
# limits.state_file and webhooks.queue_dir (mount a volume there; the root can stay read-only).
COPY --from=build /rootfs/etc/graphgate /etc/graphgate
COPY --from=build --chown=10001:10001 /rootfs/var/lib/graphgate /var/lib/graphgate

# A fixed numeric uid/gid, so file secrets can be made readable to it (chown 10001) and Kubernetes'
# runAsNonRoot can verify it.
USER 10001:10001

# `docker run IMAGE check-config` and `healthcheck` find the same file as the default command.
ENV GRAPHGATE_CONFIG=/etc/graphgate/graphgate.toml \
    RUST_LOG=info

# 8080: the proxy (server.listen). 9090: the admin listener (server.admin_listen: /metrics,
# /healthz, /readyz).
EXPOSE 8080 9090
VOLUME ["/var/lib/graphgate"]

# The binary probes its own admin listener (address from the config; GET /healthz, 2 s at most).
# /readyz is for orchestrators to route by; `graphgate healthcheck --ready` probes it instead.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["graphgate", "healthcheck"]

ENTRYPOINT ["graphgate"]
CMD ["--config", "/etc/graphgate/graphgate.toml"]
