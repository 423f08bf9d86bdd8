#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs: cargo-fuzz, libFuzzer) for FUZZ_SECONDS each
# and prints, per target, the executions and whether it crashed. Installs what is missing:
# cargo-fuzz (pinned) and a nightly toolchain for AddressSanitizer.
#
#   FUZZ_SECONDS=60 scripts/fuzz.sh             every target, 60 s each (the default)
#   FUZZ_TARGETS="upload_body settings" scripts/fuzz.sh
#
# Toolchain route, first that works:
#   1. nightly from rustup (installed with `--profile minimal` if absent): AddressSanitizer on;
#   2. the stable compiler with `--sanitizer none`: every flag cargo-fuzz then passes is stable
#      (coverage instrumentation is `-C` options), so no RUSTC_BOOTSTRAP is needed. The code
#      under test is safe Rust, so AddressSanitizer adds little; panics, overflows (debug
#      assertions are on) and timeouts are caught either way.
#   FUZZ_TOOLCHAIN=stable forces route 2.
#
# Corpora grow in fuzz/corpus/<target> (gitignored), seeded from fuzz/seeds/<target>; a crash is
# saved in fuzz/artifacts/<target>/ and reproduced with `cargo fuzz run <target> <file>`.
# Exit status: 1 when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-$(cd fuzz/fuzz_targets && ls *.rs | sed 's/\.rs$//' | tr '\n' ' ')}

log() { echo "fuzz: $*" >&2; }

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install --debug; about a minute)"
  cargo install -q --debug cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

toolchain=stable
sanitizer=none
if [ "${FUZZ_TOOLCHAIN:-}" != stable ]; then
  if rustup run nightly rustc --version >/dev/null 2>&1 \
     || rustup toolchain install nightly --profile minimal >&2; then
    toolchain=nightly
    sanitizer=address
  else
    log "no nightly toolchain could be installed: stable compiler, no sanitizer"
  fi
fi
log "toolchain $toolchain ($(rustup run "$toolchain" rustc --version)), sanitizer $sanitizer"

# A real (small, refused as too small) RSA key as a seed gets the key parser past the DER
# structure at once; made here rather than committed.
mkdir -p fuzz/corpus/powersync_key
if command -v openssl >/dev/null && [ ! -e fuzz/corpus/powersync_key/seed-pkcs8.pem ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out fuzz/corpus/powersync_key/seed-pkcs8.pem 2>/dev/null || true
  if [ -s fuzz/corpus/powersync_key/seed-pkcs8.pem ]; then
    { printf '\x01'; openssl pkey -in fuzz/corpus/powersync_key/seed-pkcs8.pem -outform DER; } > fuzz/corpus/powersync_key/seed-pkcs8.der
    { printf '\x02'; openssl rsa -in fuzz/corpus/powersync_key/seed-pkcs8.pem -outform DER -traditional 2>/dev/null; } > fuzz/corpus/powersync_key/seed-pkcs1.der
  fi
fi

build() { cargo "+$toolchain" fuzz build --sanitizer "$sanitizer" "$@"; }
log "building $TARGETS"
build >&2

crashed=0
summary=()
for target in $TARGETS; do
  mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
  before=$(ls "fuzz/artifacts/$target" | wc -l)
  out=$(mktemp)
  log "running $target for ${FUZZ_SECONDS}s"
  set +e
  cargo "+$toolchain" fuzz run --sanitizer "$sanitizer" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 >"$out" 2>&1
  status=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$out" | tail -1 | awk '{print $2}')
  corpus=$(ls "fuzz/corpus/$target" | wc -l)
  after=$(ls "fuzz/artifacts/$target" | wc -l)
  if [ "$status" -ne 0 ] || [ "$after" -gt "$before" ]; then
    crashed=1
    summary+=("$target: CRASH after ${execs:-?} executions (exit $status); see fuzz/artifacts/$target/")
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$out" | head -8 >&2 || true
  else
    summary+=("$target: ${execs:-?} executions in ${FUZZ_SECONDS}s, coverage ${cov:-?}, corpus $corpus, no crash")
  fi
  rm -f "$out"
done

echo "fuzz summary ($toolchain, sanitizer $sanitizer):"
printf '  %s\n' "${summary[@]}"
exit "$crashed"
