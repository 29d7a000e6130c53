#!/usr/bin/env bash
# Fuzzes the gateway's parsers of hostile input with cargo-fuzz (libFuzzer + AddressSanitizer):
#
#   config  whole config text -> gateway::config::parse (size/nesting/alias limits, YAML, validation)
#   xff     X-Forwarded-For bytes, peer and trusted list -> gateway::client::client_ip
#   rate    arbitrary text -> gateway::config::parse_rate (Nr/s, Nr/m)
#
#   scripts/fuzz.sh                     every target for 20 s (CI)
#   FUZZ_SECONDS=600 scripts/fuzz.sh    longer runs
#   scripts/fuzz.sh config              one target
#
# Environment (all optional):
#   FUZZ_SECONDS=20        time per target
#   FUZZ_TIMEOUT=2         seconds one input may take before it counts as a failure (a config
#                          must be accepted or refused fast; libFuzzer reports it as a crash)
#   FUZZ_SANITIZER=address cargo fuzz --sanitizer (address, none, ...)
#   FUZZ_TARGET_DIR        build directory (default gateway/fuzz/target, apart from normal builds)
#   FUZZ_ARGS              more libFuzzer flags, e.g. "-len_control=0 -max_len=262144" to try
#                          long inputs at once (slowness grows with size)
#
# Fails (exit 1) on any crash, panic, timeout or out-of-memory; the input that did it is saved in
# gateway/fuzz/artifacts/<target>/ (reproduce: cargo fuzz run --fuzz-dir gateway/fuzz <target> <file>).
#
# Toolchain: cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sanitizer coverage). The
# nightly toolchain is used when rustup has one; otherwise the stable compiler is run with
# RUSTC_BOOTSTRAP=1, which unlocks those flags on stable (fine for a test tool, never for release
# builds). cargo-fuzz itself is installed with `cargo install cargo-fuzz --locked` when missing.
#
# The corpus grows in gateway/fuzz/corpus/<target>/ (git-ignored); the config target is seeded with
# conf/*.yaml and gateway/fuzz/seeds/config/ (small files with each YAML construct the nesting
# pre-scan must see through: comments, quotes and plain scalars over several lines, block scalars,
# CR line breaks...).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
FUZZ_DIR=gateway/fuzz
SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
TIMEOUT=${FUZZ_TIMEOUT:-2}
SANITIZER=${FUZZ_SANITIZER:-address}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/$FUZZ_DIR/target}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config xff rate)

step() { printf '\n==> %s  [%s]\n' "$*" "$(date -u +%H:%M:%S)"; }
die() { printf 'fuzz.sh: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

toolchain=()
if command -v rustup >/dev/null && rustup toolchain list | grep -q '^nightly'; then
  toolchain=(+nightly)
  step "toolchain: nightly ($(rustup run nightly rustc --version))"
else
  export RUSTC_BOOTSTRAP=1
  step "toolchain: stable with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
fi

# Start from the workspace's lock file so the fuzz build uses the same dependency versions.
[ -f "$FUZZ_DIR/Cargo.lock" ] || cp Cargo.lock "$FUZZ_DIR/Cargo.lock"

fuzz=(cargo "${toolchain[@]}" fuzz)
common_build=(--fuzz-dir "$FUZZ_DIR" --sanitizer "$SANITIZER" --debug-assertions)

step "building the fuzz targets (${targets[*]})"
for t in "${targets[@]}"; do
  "${fuzz[@]}" build "${common_build[@]}" "$t"
done

mkdir -p "$FUZZ_DIR/corpus/config"
cp conf/*.yaml "$FUZZ_DIR"/seeds/config/* "$FUZZ_DIR/corpus/config/" 2>/dev/null || true

failed=()
summary=()
for t in "${targets[@]}"; do
  case "$t" in
    config) extra=(-max_len=32768 "-dict=$FUZZ_DIR/config.dict") ;;
    *) extra=(-max_len=4096) ;;
  esac
  mkdir -p "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/artifacts/$t"
  step "fuzzing $t for ${SECONDS_PER_TARGET}s"
  log=$(mktemp)
  set +e
  "${fuzz[@]}" run "${common_build[@]}" "$t" "$FUZZ_DIR/corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout="$TIMEOUT" \
    -print_final_stats=1 "${extra[@]}" ${FUZZ_ARGS:-} 2>&1 | tee "$log" | grep -E '^(#[0-9]+[[:space:]]+(DONE|INITED)|==[0-9]+== ERROR|SUMMARY|thread .* panicked|stat::)' 
  rc=${PIPESTATUS[0]}
  set -e
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  per_sec=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "$FUZZ_DIR/corpus/$t" -type f | wc -l)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    summary+=("$t: FAILED (exit $rc), see $FUZZ_DIR/artifacts/$t/ and $log")
  else
    summary+=("$t: ok, ${execs:-?} runs, ${per_sec:-?} execs/s, corpus $corpus inputs")
    rm -f "$log"
  fi
done

step "summary"
printf '  %s\n' "${summary[@]}"
[ ${#failed[@]} -eq 0 ] || die "crashes in: ${failed[*]}"
