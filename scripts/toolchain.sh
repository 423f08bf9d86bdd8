#!/usr/bin/env bash
# Installs what building and running the worker needs, where missing, and prints the environment
# for the wasm build as `export` lines (eval them). Idempotent: quick when everything is present.
#
#   eval "$(scripts/toolchain.sh)"
#
# Route 1 (a laptop with internet): rustup's wasm32-unknown-unknown target.
# Route 2 (offline machines, see README): Debian's rustc-web + rust-web-src, std built from source.
#   WASM_TOOLCHAIN=debian forces it.
# Pinned: Node 24.18.1 (scripts/node.sh), worker-build, wasm-bindgen-cli (= the wasm-bindgen in Cargo.lock), npm packages
# (package-lock.json: wrangler with workerd, binaryen's wasm-opt).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/[^0-9.]/,""); print; exit}' Cargo.lock)
DEBIAN_WASM_PACKAGES="rustc-web cargo-web rust-web-src lld-22"

log() { echo "toolchain: $*" >&2; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt)"
  local sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

cargo_tool() { # name version crate [extra args]
  local bin=$1 version=$2 crate=$3; shift 3
  if command -v "$bin" >/dev/null 2>&1 && "$bin" --version 2>/dev/null | grep -q "$version"; then return 0; fi
  log "installing $crate $version (cargo install --debug; 1-2 minutes the first time)"
  # --debug: build tools need no optimisation. On 2 cores worker-build compiles in 1m40s instead
  # of ~10 min and wasm-bindgen-cli in 1m16s instead of ~4 min; the debug wasm-bindgen then
  # takes ~1 s per worker build instead of 0.2 s (same output, byte for byte).
  # --locked where the published lockfile resolves here; else the pinned version with fresh deps.
  # (The first try's error, a lockfile entry this registry lacks, is not shown: the second says.)
  cargo install -q --debug "$crate" --version "$version" --locked "$@" 2>/dev/null \
    || cargo install -q --debug "$crate" --version "$version" "$@" >&2
}

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null; then
  # No rustup here: Debian's toolchain serves both the native build and (below) the wasm build.
  apt_install $DEBIAN_WASM_PACKAGES
fi

cargo_tool worker-build "$WORKER_BUILD_VERSION" worker-build
cargo_tool wasm-bindgen "$WASM_BINDGEN_VERSION" wasm-bindgen-cli

# wrangler 4.1xx needs Node >= 22.12: Node 24.18.1 from scripts/node.sh (a cache outside the tree).
command -v npm >/dev/null || apt_install nodejs npm
NODE_BIN=$(scripts/node.sh)
export PATH="$NODE_BIN:$PATH"
if [ ! -x node_modules/.bin/wrangler ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm packages (wrangler, binaryen) from package-lock.json"
  npm ci --no-audit --no-fund --loglevel=error >&2
fi

root=$(pwd)
echo "export PATH=$NODE_BIN:\$PATH"
echo "export WASM_BINDGEN_BIN=$(command -v wasm-bindgen)"
echo "export ESBUILD_BIN=$root/node_modules/.bin/esbuild"
echo "export WASM_OPT_BIN=$root/node_modules/.bin/wasm-opt"
echo "export PATH=$root/node_modules/.bin:\$PATH"

# WASM_TOOLCHAIN=debian forces route 2 (to check the offline route on a machine that has both).
if [ "${WASM_TOOLCHAIN:-}" != debian ] && { rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
   || rustup target add wasm32-unknown-unknown >/dev/null 2>&1; }; then
  log "wasm32 target: rustup"
  echo "export PATH=$HOME/.cargo/bin:\$PATH"
else
  log "wasm32 target: Debian rustc-web with std built from source (offline route)"
  apt_install $DEBIAN_WASM_PACKAGES
  sysroot=$(/usr/bin/rustc --print sysroot)
  # worker-build checks that the target's libdir exists; build-std supplies the real std.
  libdir=$(/usr/bin/rustc --target wasm32-unknown-unknown --print target-libdir)
  [ -d "$libdir" ] || mkdir -p "$libdir"
  echo "export PATH=/usr/bin:\$PATH"
  echo "export RUSTC_BOOTSTRAP=1"
  echo "export CARGO_UNSTABLE_BUILD_STD=std,panic_abort"
  # Keep the two compilers' artifacts apart so native tests and the wasm build do not rebuild
  # each other's dependencies.
  echo "export CARGO_TARGET_DIR=$root/target/wasm"
fi
