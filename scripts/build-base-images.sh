#!/usr/bin/env bash
# Builds, without any container registry, the three base images that Dockerfile and
# docker-compose.yml name, so `docker compose build` works on an air-gapped machine:
#
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm, trimmed like the official
#                          slim image, then `docker import`
#   rust:1.95-bookworm     debian:bookworm-slim + build-essential, pkg-config, git, curl,
#                          ca-certificates (apt), + this machine's Rust 1.95 toolchain copied
#                          to /usr/local/rustup with rustup proxies in /usr/local/cargo/bin and
#                          the official image's ENV (RUSTUP_HOME, CARGO_HOME, PATH, RUST_VERSION)
#   redis:7-bookworm       debian:bookworm-slim + Debian's redis-server 7 (apt), WORKDIR /data,
#                          EXPOSE 6379, CMD ["redis-server","--protected-mode","no"]
#
# With internet access none of this is needed: `docker compose build` pulls the official images.
#
# Usage: scripts/build-base-images.sh [--force] [--check] [TAG...]
#   TAG       only these tags (default: all three)
#   --force   rebuild tags that already exist (the debootstrap tree in the cache is reused;
#             delete SEAT_BASE_CACHE to start from scratch); a rebuilt debian:bookworm-slim
#             also rebuilds the wanted images on top of it
#   --check   only report which tags exist; exit 1 when one is missing
#
# Environment:
#   SEAT_BASE_CACHE        cache directory (default /var/cache/seat-base)
#   DEBIAN_MIRROR          (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR (default http://deb.debian.org/debian-security)
#   RUST_SYSROOT           toolchain to copy (default: `rustc --print sysroot`)
#   STEP_TIMEOUT           seconds allowed for each step (default 1200)
#   HOST_CA_DIR            extra CA certificates (*.crt) of this machine put into the images'
#                          /usr/local/share/ca-certificates (default that same directory);
#                          NO_HOST_CA=1 leaves them out
#
# Needs root (debootstrap) only when debian:bookworm-slim must be created; needs the Debian
# mirror reachable from the host (debootstrap) and from containers (apt-get in docker build).
set -euo pipefail

SUITE=bookworm
DEBIAN_TAG="debian:bookworm-slim"
RUST_TAG="rust:1.95-bookworm"
RUST_SERIES="1.95"
REDIS_TAG="redis:7-bookworm"
ALL_TAGS=("$DEBIAN_TAG" "$RUST_TAG" "$REDIS_TAG")

CACHE=${SEAT_BASE_CACHE:-/var/cache/seat-base}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
STEP_TIMEOUT=${STEP_TIMEOUT:-1200}
HOST_CA_DIR=${HOST_CA_DIR:-/usr/local/share/ca-certificates}
STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ROOTFS="$CACHE/$SUITE-minbase"

log() { printf '[base-images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf '[base-images] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

FORCE=0
CHECK=0
WANT=()
while [ $# -gt 0 ]; do
  case "$1" in
    --force) FORCE=1 ;;
    --check) CHECK=1 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
      case " ${ALL_TAGS[*]} " in
        *" $1 "*) WANT+=("$1") ;;
        *) die "unknown tag $1; this script builds: ${ALL_TAGS[*]}" ;;
      esac ;;
  esac
  shift
done
[ ${#WANT[@]} -gt 0 ] || WANT=("${ALL_TAGS[@]}")

command -v docker >/dev/null || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "no Docker engine reachable (is dockerd running, may this user use it?)"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }
wanted() { case " ${WANT[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
needs_build() { wanted "$1" && { [ "$FORCE" = 1 ] || ! have_image "$1"; }; }

if [ "$CHECK" = 1 ]; then
  missing=0
  for t in "${WANT[@]}"; do
    if have_image "$t"; then log "present: $t"; else log "missing: $t"; missing=1; fi
  done
  exit "$missing"
fi

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif sudo -n true 2>/dev/null; then sudo -n "$@"
  else die "root is needed for: $* (run this script as root or with passwordless sudo)"
  fi
}

# --- the debootstrap tree, cached ---------------------------------------------------------------
ensure_rootfs() {
  if [ -f "$ROOTFS/.seat-base-complete" ]; then
    log "reusing cached debootstrap tree $ROOTFS"
    return
  fi
  if ! command -v debootstrap >/dev/null && [ ! -x /usr/sbin/debootstrap ]; then
    command -v apt-get >/dev/null || die "debootstrap is missing and apt-get is not available"
    log "installing debootstrap with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
      || die "apt-get install debootstrap failed"
  fi
  local debootstrap
  debootstrap=$(command -v debootstrap || echo /usr/sbin/debootstrap)
  as_root mkdir -p "$CACHE"
  as_root rm -rf "$ROOTFS.tmp"
  log "debootstrap --variant=minbase $SUITE from $MIRROR (about 1-3 minutes)"
  local started=$SECONDS
  if ! as_root timeout "$STEP_TIMEOUT" "$debootstrap" --variant=minbase "$SUITE" "$ROOTFS.tmp" "$MIRROR" \
      >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 20 "$CACHE/debootstrap.log" >&2 || true
    die "debootstrap failed (full log: $CACHE/debootstrap.log)"
  fi
  log "debootstrap done in $((SECONDS - started)) s"
  trim_rootfs "$ROOTFS.tmp"
  as_root rm -rf "$ROOTFS"
  as_root mv "$ROOTFS.tmp" "$ROOTFS"
  as_root touch "$ROOTFS/.seat-base-complete"
}

# Makes the tree look like the official slim image: deb822 sources with updates and security,
# no docs/man/locales, no apt caches or lists, services never started by package installs.
trim_rootfs() {
  local r=$1
  as_root rm -f "$r/etc/apt/sources.list"
  as_root tee "$r/etc/apt/sources.list.d/debian.sources" >/dev/null <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  as_root tee "$r/etc/dpkg/dpkg.cfg.d/docker" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
  as_root tee "$r/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  as_root tee "$r/etc/apt/apt.conf.d/docker-no-languages" >/dev/null <<'EOF'
Acquire::Languages "none";
EOF
  as_root tee "$r/etc/apt/apt.conf.d/docker-autoremove-suggests" >/dev/null <<'EOF'
Apt::AutoRemove::SuggestsImportant "false";
EOF
  as_root tee "$r/usr/sbin/policy-rc.d" >/dev/null <<'EOF'
#!/bin/sh
# docker images never start services from package scripts
exit 101
EOF
  as_root chmod 0755 "$r/usr/sbin/policy-rc.d"
  as_root find "$r/usr/share/doc" -mindepth 2 -not -name copyright -not -type d -delete
  as_root find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
  as_root rm -rf "$r/usr/share/man"/* "$r/usr/share/info"/* "$r/usr/share/locale"/*
  as_root rm -rf "$r/var/lib/apt/lists"/* "$r/var/cache/apt"/*.bin "$r/var/cache/apt/archives"/*.deb
  as_root rm -rf "$r/var/log"/*.log "$r/var/log/apt"/* "$r/tmp"/* "$r/var/tmp"/*
  as_root sh -c ": > '$r/etc/resolv.conf'; rm -f '$r/etc/hostname'; echo localhost > '$r/etc/hostname'"
}

# --- debian:bookworm-slim -------------------------------------------------------------------------
build_debian() {
  ensure_rootfs
  # This machine's own extra CAs (e.g. a TLS-inspecting egress proxy in front of crates.io):
  # images that install ca-certificates trust them too, so cargo can fetch crates in docker build.
  as_root rm -rf "$ROOTFS/usr/local/share/ca-certificates"
  as_root mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
  if [ "${NO_HOST_CA:-0}" != 1 ] && compgen -G "$HOST_CA_DIR/*.crt" >/dev/null; then
    as_root cp "$HOST_CA_DIR"/*.crt "$ROOTFS/usr/local/share/ca-certificates/"
    log "adding this machine's extra CAs from $HOST_CA_DIR: $(cd "$HOST_CA_DIR" && echo ./*.crt)"
  fi
  log "docker import $DEBIAN_TAG"
  local started=$SECONDS
  as_root tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOTFS" \
      --exclude=./.seat-base-complete --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
      -c . \
    | timeout "$STEP_TIMEOUT" docker import \
        --change "ENV PATH=$STD_PATH" \
        --change 'CMD ["bash"]' \
        --message "debootstrap --variant=minbase $SUITE ($MIRROR), scripts/build-base-images.sh" \
        - "$DEBIAN_TAG" >/dev/null \
    || die "docker import of $DEBIAN_TAG failed"
  docker run --rm "$DEBIAN_TAG" sh -c '. /etc/os-release && test "$VERSION_CODENAME" = bookworm' \
    || die "$DEBIAN_TAG does not run or is not bookworm"
  log "built $DEBIAN_TAG in $((SECONDS - started)) s"
}

# --- rust:1.95-bookworm -----------------------------------------------------------------------------
build_rust() {
  have_image "$DEBIAN_TAG" || die "$DEBIAN_TAG is needed first"
  command -v rustc >/dev/null || [ -n "${RUST_SYSROOT:-}" ] \
    || die "no Rust toolchain on this machine to copy (install Rust $RUST_SERIES with rustup)"
  local sysroot=${RUST_SYSROOT:-$(rustc --print sysroot)}
  local rustc_bin="$sysroot/bin/rustc"
  [ -x "$rustc_bin" ] || die "$rustc_bin not found"
  local version host
  version=$("$rustc_bin" -V | awk '{print $2}')
  host=$("$rustc_bin" -vV | sed -n 's/^host: //p')
  case "$version" in
    "$RUST_SERIES".*) ;;
    *) die "the toolchain at $sysroot is Rust $version, but $RUST_TAG needs $RUST_SERIES.x (set RUST_SYSROOT)" ;;
  esac
  [ -x "$sysroot/bin/cargo" ] || die "$sysroot/bin/cargo not found: the toolchain has no cargo"
  local name="$version-$host"
  local ctx="$CACHE/rust-context"
  local stamp="$ctx/.source-$name"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sysroot" ]; then
    log "copying toolchain $sysroot (without docs) into the build context"
    as_root rm -rf "$ctx"
    as_root mkdir -p "$ctx/toolchain"
    as_root tar -C "$sysroot" --exclude=./share/doc -c . | as_root tar -C "$ctx/toolchain" -x \
      || die "copying the toolchain failed"
    # World-writable like the official image's RUSTUP_HOME, set here because a chmod -R inside
    # the image would store the whole toolchain a second time in a new layer.
    as_root chmod -R a+w "$ctx/toolchain"
    printf '%s\n' "$sysroot" | as_root tee "$stamp" >/dev/null
  fi
  # Small files go to extra/, copied apart from the large toolchain layer.
  as_root rm -rf "$ctx/extra"
  as_root mkdir -p "$ctx/extra"
  local rustup_bin
  rustup_bin=$(command -v rustup || true)
  [ -z "$rustup_bin" ] || as_root cp -L "$rustup_bin" "$ctx/extra/rustup"
  as_root tee "$ctx/extra/settings.toml" >/dev/null <<EOF
version = "12"
default_toolchain = "$name"
profile = "minimal"
auto_self_update = "disable"

[overrides]
EOF
  as_root tee "$ctx/extra/install-proxies.sh" >/dev/null <<EOF
#!/bin/sh
# Puts cargo, rustc, ... on PATH the way rustup-init does: rustup proxies when rustup was
# copied, else symlinks to the toolchain's own binaries.
set -eu
mkdir -p /usr/local/cargo/bin
cd /usr/local/cargo/bin
if [ -f /tmp/rust-extra/rustup ]; then install -m 0755 /tmp/rust-extra/rustup rustup; fi
install -m 0644 /tmp/rust-extra/settings.toml "\$RUSTUP_HOME/settings.toml"
for tool in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-gdbgui rust-lldb; do
  [ -e "\$RUSTUP_HOME/toolchains/$name/bin/\$tool" ] || continue
  if [ -x rustup ]; then ln -sf rustup "\$tool"; else ln -sf "\$RUSTUP_HOME/toolchains/$name/bin/\$tool" "\$tool"; fi
done
EOF
  as_root tee "$ctx/Dockerfile" >/dev/null <<EOF
FROM $DEBIAN_TAG
ENV RUSTUP_HOME=/usr/local/rustup \\
    CARGO_HOME=/usr/local/cargo \\
    PATH=/usr/local/cargo/bin:$STD_PATH \\
    RUST_VERSION=$version
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      build-essential pkg-config ca-certificates git curl wget xz-utils libssl-dev \\
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rustup/toolchains/$name
COPY extra /tmp/rust-extra/
RUN sh /tmp/rust-extra/install-proxies.sh \\
 && rm -rf /tmp/rust-extra \\
 && chmod a+w /usr/local/rustup /usr/local/rustup/toolchains /usr/local/rustup/settings.toml \\
 && chmod -R a+w /usr/local/cargo \\
 && cargo --version && rustc --version
EOF
  log "docker build $RUST_TAG (apt-get of build-essential, then the toolchain: about 1-3 minutes)"
  local started=$SECONDS
  if ! timeout "$STEP_TIMEOUT" docker build --pull=false -t "$RUST_TAG" "$ctx" >"$CACHE/rust-build.log" 2>&1; then
    tail -n 30 "$CACHE/rust-build.log" >&2 || true
    die "docker build of $RUST_TAG failed (full log: $CACHE/rust-build.log)"
  fi
  docker run --rm "$RUST_TAG" sh -c 'cargo -V && rustc -V && cc --version >/dev/null && test "$(pwd)" = /' >/dev/null \
    || die "$RUST_TAG does not run cargo/rustc/cc"
  log "built $RUST_TAG (Rust $version) in $((SECONDS - started)) s"
}

# --- redis:7-bookworm ---------------------------------------------------------------------------------
build_redis() {
  have_image "$DEBIAN_TAG" || die "$DEBIAN_TAG is needed first"
  local ctx="$CACHE/redis-context"
  as_root mkdir -p "$ctx"
  as_root tee "$ctx/Dockerfile" >/dev/null <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
EOF
  log "docker build $REDIS_TAG (apt-get install redis-server: about 1 minute)"
  local started=$SECONDS
  if ! timeout "$STEP_TIMEOUT" docker build --pull=false -t "$REDIS_TAG" "$ctx" >"$CACHE/redis-build.log" 2>&1; then
    tail -n 30 "$CACHE/redis-build.log" >&2 || true
    die "docker build of $REDIS_TAG failed (full log: $CACHE/redis-build.log)"
  fi
  local v
  v=$(docker run --rm "$REDIS_TAG" redis-server --version) || die "$REDIS_TAG does not run redis-server"
  case "$v" in
    *"v=7."*) ;;
    *) die "$REDIS_TAG runs '$v', not Redis 7" ;;
  esac
  log "built $REDIS_TAG ($(printf '%s' "$v" | grep -o 'v=[0-9.]*')) in $((SECONDS - started)) s"
}

total_started=$SECONDS
built=()
if needs_build "$DEBIAN_TAG"; then
  build_debian
  built+=("$DEBIAN_TAG")
  # Images built on the old debian:bookworm-slim are stale now.
  FORCE=1
else
  wanted "$DEBIAN_TAG" && log "exists, skipped: $DEBIAN_TAG"
fi
if needs_build "$RUST_TAG"; then build_rust; built+=("$RUST_TAG"); else wanted "$RUST_TAG" && log "exists, skipped: $RUST_TAG"; fi
if needs_build "$REDIS_TAG"; then build_redis; built+=("$REDIS_TAG"); else wanted "$REDIS_TAG" && log "exists, skipped: $REDIS_TAG"; fi
if [ ${#built[@]} -gt 0 ]; then
  log "done in $((SECONDS - total_started)) s; built: ${built[*]}"
else
  log "nothing to do (all of ${WANT[*]} exist; --force rebuilds)"
fi
