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
# second run only checks a stamp file. A half build never counts (scripts/pinned_build.sh).
set -euo pipefail

VERSION=1.70.6
COMMIT=4fa61fba9371c4bd40cbb81509f07bcb3af21683
TARBALL_SHA256=bc06b9ff525fe10eb4d2ba808225a973980b42959d8c11cc7ddbb037826958bc
GIT_URL=${STORAGE_SERVER_GIT_URL:-https://github.com/supabase/storage.git}  # override: a mirror
PG_BOSS_VERSION=10.3.2

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NAME=storage PACKAGE=supabase-storage TARBALL_VAR=STORAGE_SERVER_TARBALL
TARBALL=${STORAGE_SERVER_TARBALL:-$ROOT/../shared/vendor/supabase-storage-$VERSION.tar.gz}
# shellcheck source=scripts/pinned_build.sh
source "$ROOT/scripts/pinned_build.sh"

print_env() {
  echo "export STORAGE_NODE=$NODE_BIN/node"
  echo "export STORAGE_SERVER_ENTRY=$DEST/dist/start/server.js"
}

pinned_lock
pinned_source

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

pinned_done "Supabase Storage $VERSION ($COMMIT), Node $(node --version), pg-boss $PG_BOSS_VERSION" "$start"
