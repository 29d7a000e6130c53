# One image with the three binaries of the stack: gateway, backend, loadtest.
#
#   docker build -t seat-gateway-stack:latest .      (docker compose build does the same)
#
# Works with the classic builder (docker-compose 1.29) and BuildKit alike: no cache mounts, no
# syntax directive. Dependencies are compiled in their own layer, keyed only on Cargo.toml,
# Cargo.lock and the list of target entry points, so editing sources recompiles only the
# workspace crates. Without registry access, create the base images first:
# scripts/build-base-images.sh (see docs/docker.md).

# --- 1. the workspace reduced to what decides the dependency build ------------------------------
FROM rust:1.95-bookworm AS skeleton
WORKDIR /src
COPY . .
# Keep the manifests, the lock file and a stub for every file cargo needs to find a declared
# target: src/main.rs, src/lib.rs, each `path = "..."`, and the default file of each
# [[bin]]/[[bench]]/[[test]]/[[example]] declared without a path. Auto-discovered tests, benches
# and examples are left out, so adding one does not invalidate the dependency layer.
RUN set -eu; \
    mkdir -p /skeleton; \
    cp Cargo.toml Cargo.lock /skeleton/; \
    for manifest in */Cargo.toml; do \
      crate=${manifest%/Cargo.toml}; \
      mkdir -p "/skeleton/$crate"; \
      cp "$manifest" "/skeleton/$crate/"; \
      { for f in src/main.rs src/lib.rs; do [ ! -f "$crate/$f" ] || echo "$f"; done; \
        awk ' \
          function flush() { if (dir != "" && name != "" && path == "") print dir "/" name ".rs"; \
                             if (path ~ /\.rs$/) print path; dir = ""; name = ""; path = "" } \
          /^[[:space:]]*\[/ { flush(); \
              if ($0 ~ /^\[\[bin\]\]/) dir = "src/bin"; else if ($0 ~ /^\[\[bench\]\]/) dir = "benches"; \
              else if ($0 ~ /^\[\[test\]\]/) dir = "tests"; else if ($0 ~ /^\[\[example\]\]/) dir = "examples"; \
              next } \
          /^[[:space:]]*name[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); name = v } \
          /^[[:space:]]*path[[:space:]]*=/ { v = $0; sub(/^[^"]*"/, "", v); sub(/".*/, "", v); path = v } \
          END { flush() }' "$manifest"; \
      } | sort -u | while read -r f; do \
        [ -f "$crate/$f" ] || { echo "note: $crate/$f is declared but missing; cargo will say so"; continue; }; \
        mkdir -p "/skeleton/$crate/$(dirname "$f")"; \
        case "$f" in */lib.rs) : > "/skeleton/$crate/$f" ;; *) echo 'fn main() {}' > "/skeleton/$crate/$f" ;; esac; \
      done; \
    done; \
    find /skeleton -type f | sort

# --- 2. build ---------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
# Pingora's compression crates build zlib-ng with cmake.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The binaries leave this stage stripped of debug info, so none is built: a cold build writes a
# fraction of the target directory (disk is what a cold build on a small CI machine runs out of)
# and links faster. Profiling builds are made on the host (docs/benchmarks.md).
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_INCREMENTAL=0
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked -p gateway -p backend -p loadtest
COPY . .
# The stubs were compiled a moment ago: make sure cargo sees the real sources as newer.
RUN find gateway backend loadtest resilience -type f -exec touch {} + \
 && cargo build --release --locked -p gateway -p backend -p loadtest \
 && mkdir -p /out \
 && for bin in gateway backend loadtest; do \
      cp "target/release/$bin" /out/ && strip --strip-debug "/out/$bin"; \
    done

# --- 3. runtime -------------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates curl libcap2-bin \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --create-home --shell /usr/sbin/nologin app
COPY --from=builder /out/gateway /out/backend /out/loadtest /usr/local/bin/
# The gateway listens on port 80 as the non-root user: the file capability is set here, in the
# image's own layer, so it holds under any engine, compose version or orchestrator.
RUN setcap cap_net_bind_service=+ep /usr/local/bin/gateway \
 && getcap /usr/local/bin/gateway | grep -q cap_net_bind_service
COPY conf/ /etc/gateway/
WORKDIR /app
USER app
ENV RUST_LOG=info
EXPOSE 80 9901 3001 3002 3003
CMD ["gateway", "-c", "/etc/gateway/gateway.yaml"]
