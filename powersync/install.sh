#!/usr/bin/env bash
# Builds the PowerSync service v1.25.0 from source once, into a cache outside the work tree, and
# prints where it is as `export` lines (logs go to stderr):
#
#   eval "$(powersync/install.sh)"
#   "$POWERSYNC_NODE" "$POWERSYNC_SERVICE_ENTRY" start -c powersync.yaml
#
# Source, first found:
#   1. $POWERSYNC_SERVICE_TARBALL, else <repo>/../shared/vendor/powersync-service-1.25.0.tar.gz
#      (a `git archive` of the tag; its sha256 is checked);
#   2. otherwise GitHub: git clone of tag v1.25.0, its commit checked (GitHub's own tarballs are
#      gzipped differently, so the commit is what is pinned, not a tarball hash).
# Toolchain: Node 24.18.1 (scripts/node.sh) and pnpm 11.0.9 (the repo's `packageManager`,
# installed with npm into the cache; not global, not corepack, which would download by itself).
# Two edits before `pnpm install`, both outside the service's runtime:
#   - drop "@pnpm/workspace.projects-reader" from the root package.json (dev-only script
#     dependency; one of its own dependencies is missing from the registry);
#   - '@mongodb-js/zstd': false under allowBuilds (MongoDB-only optional compressor whose install
#     script downloads from GitHub).
# About 1 minute (downloads included; pnpm install ~15 s, tsc build ~40 s on 2 cores) and 900 MB
# the first time; the second run only checks a stamp file.
# A half build never counts, and two concurrent runs do not build twice (scripts/pinned_build.sh).
set -euo pipefail

VERSION=1.25.0
COMMIT=d3216be9f1f285fd4f2622a7d987ebaf4c2b8e0c
TARBALL_SHA256=c692037ec7e3da9313485e4e47ff0a0fbb0ee86e3ed04dba53d941b9f5fb9d14
GIT_URL=${POWERSYNC_SERVICE_GIT_URL:-https://github.com/powersync-ja/powersync-service.git}  # override: a mirror
PNPM_VERSION=11.0.9

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=powersync PACKAGE=powersync-service TARBALL_VAR=POWERSYNC_SERVICE_TARBALL
TARBALL=${POWERSYNC_SERVICE_TARBALL:-$ROOT/../shared/vendor/powersync-service-$VERSION.tar.gz}
# shellcheck source=scripts/pinned_build.sh
source "$ROOT/scripts/pinned_build.sh"
PNPM_DIR=$CACHE/pnpm-$PNPM_VERSION

print_env() {
  echo "export POWERSYNC_NODE=$NODE_BIN/node"
  echo "export POWERSYNC_SERVICE_ENTRY=$DEST/service/lib/entry.js"
}

pinned_lock

# --- pnpm ---------------------------------------------------------------------------------------
if [ ! -x "$PNPM_DIR/node_modules/.bin/pnpm" ]; then
  log "installing pnpm $PNPM_VERSION into $PNPM_DIR"
  rm -rf "$PNPM_DIR.tmp"
  npm install --prefix "$PNPM_DIR.tmp" --no-save --no-package-lock --no-audit --no-fund \
    --loglevel=error "pnpm@$PNPM_VERSION" >&2
  rm -rf "$PNPM_DIR"
  mv "$PNPM_DIR.tmp" "$PNPM_DIR"
fi
PNPM=$PNPM_DIR/node_modules/.bin/pnpm
export PATH="$PNPM_DIR/node_modules/.bin:$PATH"   # `pnpm build` calls pnpm itself
[ "$("$PNPM" --version)" = "$PNPM_VERSION" ] || { log "pnpm is not $PNPM_VERSION"; exit 1; }

# --- source -------------------------------------------------------------------------------------
pinned_source

# --- the two edits ------------------------------------------------------------------------------
node -e '
  const fs = require("fs"), f = process.argv[1], p = JSON.parse(fs.readFileSync(f, "utf8"));
  if (!p.devDependencies || !("@pnpm/workspace.projects-reader" in p.devDependencies))
    throw new Error("package.json: @pnpm/workspace.projects-reader not found (source changed?)");
  delete p.devDependencies["@pnpm/workspace.projects-reader"];
  fs.writeFileSync(f, JSON.stringify(p, null, 2) + "\n");
' "$src/package.json"
grep -q "^  '@mongodb-js/zstd': true$" "$src/pnpm-workspace.yaml" \
  || { log "pnpm-workspace.yaml: '@mongodb-js/zstd': true not found (source changed?)"; exit 1; }
sed -i "s/^  '@mongodb-js\/zstd': true$/  '@mongodb-js\/zstd': false/" "$src/pnpm-workspace.yaml"

# --- install and build --------------------------------------------------------------------------
start=$SECONDS
log "pnpm install (about 15 s)"
# store and metadata cache in our cache too: deleting it resets everything
(cd "$src" && "$PNPM" install --no-frozen-lockfile --store-dir "$CACHE/pnpm-store" \
   --cache-dir "$CACHE/pnpm-cache" --reporter=append-only >&2)
log "pnpm build (about 40 s)"
(cd "$src" && "$PNPM" build >&2)
[ -f "$src/service/lib/entry.js" ] || { log "build produced no service/lib/entry.js"; exit 1; }

pinned_done "PowerSync service $VERSION ($COMMIT), Node $(node --version), pnpm $PNPM_VERSION" "$start"
