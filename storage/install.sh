#!/usr/bin/env bash
# Builds the Supabase Storage API server v1.70.6 from source once, into a cache outside the work
# tree, and prints where it is as `export` lines (logs go to stderr):
#
#   eval "$(storage/install.sh)"
#   "$STORAGE_NODE" "$STORAGE_SERVER_ENTRY"      # with the environment of docs/files.md
#
# Source, first found:
#   1. $STORAGE_SERVER_TARBALL, else <repo>/../shared/vendor/supabase-storage-1.70.6.tar.gz
#      (a `git archive` of the tag; its sha256 is checked);
#   2. otherwise GitHub: git clone of tag v1.70.6, its commit checked.
# Toolchain: Node 24.18.1 with npm 11.19.1 (scripts/node.sh).
# One edit before `npm install`: package.json pins pg-boss to a GitHub fork
# ("github:supabase/pg-boss#feat/exactly_once"), which offline machines cannot fetch; it is replaced
# by the registry's pg-boss 10.3.2 (the fork's version; the fork only adds a queue policy used by
# the background job queue, which we keep off: PG_QUEUE_ENABLE=false). Because of the swap, tsc
# reports three type errors, so the server is built without the type check
# (`node build.js && npx resolve-tspaths`).
# About 1-2 minutes and 720 MB the first time (npm install ~40 s with a warm npm cache); the
# second run only checks a stamp file. A half build never counts (temp dir renamed into place).
set -euo pipefail

VERSION=1.70.6
COMMIT=4fa61fba9371c4bd40cbb81509f07bcb3af21683
TARBALL_SHA256=bc06b9ff525fe10eb4d2ba808225a973980b42959d8c11cc7ddbb037826958bc
GIT_URL=${STORAGE_SERVER_GIT_URL:-https://github.com/supabase/storage.git}  # override: a mirror
PG_BOSS_VERSION=10.3.2

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${POWERSYNC_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/powersync-supabase-worker}
DEST=$CACHE/supabase-storage-$VERSION
STAMP=$DEST/.installed
TARBALL=${STORAGE_SERVER_TARBALL:-$ROOT/../shared/vendor/supabase-storage-$VERSION.tar.gz}

log() { echo "storage/install.sh: $*" >&2; }

NODE_BIN=$("$ROOT/scripts/node.sh")
export PATH="$NODE_BIN:$PATH" CI=true

print_env() {
  echo "export STORAGE_NODE=$NODE_BIN/node"
  echo "export STORAGE_SERVER_ENTRY=$DEST/dist/start/server.js"
}

if [ -f "$STAMP" ]; then print_env; exit 0; fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.storage-install.lock"
flock 9
if [ -f "$STAMP" ]; then print_env; exit 0; fi   # another run finished while we waited

rm -rf "$DEST"                                   # a leftover without stamp is a failed build
build=$(mktemp -d "$CACHE/.storage-build.XXXXXX")
trap 'rm -rf "$build"' EXIT
src=$build/supabase-storage-$VERSION
if [ -f "$TARBALL" ]; then
  log "source: $TARBALL"
  actual=$(sha256sum "$TARBALL" | cut -d' ' -f1)
  [ "$actual" = "$TARBALL_SHA256" ] || { log "sha256 mismatch: $actual, want $TARBALL_SHA256"; exit 1; }
  tar xzf "$TARBALL" -C "$build"
  [ -f "$src/package.json" ] || { log "the tarball has no supabase-storage-$VERSION/ folder"; exit 1; }
elif [ -n "${STORAGE_SERVER_TARBALL:-}" ]; then
  log "STORAGE_SERVER_TARBALL=$STORAGE_SERVER_TARBALL does not exist"; exit 1
else
  log "source: $GIT_URL tag v$VERSION (no tarball at $TARBALL)"
  GIT_TERMINAL_PROMPT=0 git -c advice.detachedHead=false clone --quiet --depth 1 \
    --branch "v$VERSION" "$GIT_URL" "$src" >&2
  actual=$(git -C "$src" rev-parse HEAD)
  [ "$actual" = "$COMMIT" ] || { log "tag v$VERSION is commit $actual, want $COMMIT"; exit 1; }
  rm -rf "$src/.git"
fi

# --- the pg-boss swap ---------------------------------------------------------------------------
node -e '
  const fs = require("fs"), dir = process.argv[1], v = process.argv[2];
  const pf = dir + "/package.json", lf = dir + "/package-lock.json";
  const p = JSON.parse(fs.readFileSync(pf, "utf8")), l = JSON.parse(fs.readFileSync(lf, "utf8"));
  if (!p.dependencies || !String(p.dependencies["pg-boss"] || "").startsWith("github:"))
    throw new Error("package.json: pg-boss is not a github: dependency (source changed?)");
  p.dependencies["pg-boss"] = v;
  delete l.packages["node_modules/pg-boss"];
  l.packages[""].dependencies["pg-boss"] = v;
  fs.writeFileSync(pf, JSON.stringify(p, null, 2) + "\n");
  fs.writeFileSync(lf, JSON.stringify(l, null, 2) + "\n");
' "$src" "$PG_BOSS_VERSION"

# --- install and build --------------------------------------------------------------------------
start=$SECONDS
log "npm install (about 40 s with a warm npm cache, more the first time)"
(cd "$src" && npm install --no-audit --no-fund --loglevel=error >&2)
log "build without type check"
(cd "$src" && node ./build.js >&2 && npx --no-install resolve-tspaths >&2)
[ -f "$src/dist/start/server.js" ] || { log "build produced no dist/start/server.js"; exit 1; }

echo "Supabase Storage $VERSION ($COMMIT), Node $(node --version), pg-boss $PG_BOSS_VERSION" > "$src/.installed"
mv -T "$src" "$DEST"
log "built in $((SECONDS - start)) s: $DEST"
print_env
