# Sourced by powersync/install.sh and storage/install.sh: what building a pinned release from
# source once, into a cache outside the work tree, has in common.
#
# The sourcing script (under `set -euo pipefail`) sets first:
#   ROOT            the repository
#   NAME            short name: logs say "$NAME/install.sh:", lock and temp files are named after it
#   PACKAGE         the release's folder name without version (the tarball's top folder, the cache's)
#   VERSION COMMIT  the tag v$VERSION and the commit it must be (checked after a git clone)
#   TARBALL         where the `git archive` of the tag is looked for; TARBALL_SHA256 its checksum
#   TARBALL_VAR     the name of the setting that overrides TARBALL (a missing file it names fails)
#   GIT_URL         where to clone from when there is no tarball
# then sources this file, which sets CACHE, DEST, STAMP, NODE_BIN (Node 24, scripts/node.sh, put
# on PATH with CI=true) and log, and calls, with its own print_env (the `export` lines) defined:
#   pinned_lock              prints the env and exits when already built; else holds the lock
#   pinned_source            $src: the checked source, in a temp dir $build removed on exit
#   pinned_done "<stamp>" <start>   writes the stamp, moves $src into $DEST, logs the time since
#                                   <start> (a $SECONDS value), prints the env
# A half build never counts: it happens in the temp dir, renamed into place after the stamp is
# written. The lock keeps two concurrent runs from building twice.

CACHE=${POWERSYNC_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/powersync-supabase-worker}
DEST=$CACHE/$PACKAGE-$VERSION
STAMP=$DEST/.installed

log() { echo "$NAME/install.sh: $*" >&2; }

NODE_BIN=$("$ROOT/scripts/node.sh")
export PATH="$NODE_BIN:$PATH" CI=true

pinned_lock() {
  if [ -f "$STAMP" ]; then print_env; exit 0; fi
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.$NAME-install.lock"
  flock 9
  if [ -f "$STAMP" ]; then print_env; exit 0; fi   # another run finished while we waited
}

pinned_source() {
  rm -rf "$DEST"                                   # a leftover without stamp is a failed build
  build=$(mktemp -d "$CACHE/.$NAME-build.XXXXXX")
  trap 'rm -rf "$build"' EXIT
  src=$build/$PACKAGE-$VERSION
  local actual
  if [ -f "$TARBALL" ]; then
    log "source: $TARBALL"
    actual=$(sha256sum "$TARBALL" | cut -d' ' -f1)
    [ "$actual" = "$TARBALL_SHA256" ] || { log "sha256 mismatch: $actual, want $TARBALL_SHA256"; exit 1; }
    tar xzf "$TARBALL" -C "$build"
    [ -f "$src/package.json" ] || { log "the tarball has no $PACKAGE-$VERSION/ folder"; exit 1; }
  elif [ -n "${!TARBALL_VAR:-}" ]; then
    log "$TARBALL_VAR=${!TARBALL_VAR} does not exist"; exit 1
  else
    log "source: $GIT_URL tag v$VERSION (no tarball at $TARBALL)"
    GIT_TERMINAL_PROMPT=0 git -c advice.detachedHead=false clone --quiet --depth 1 \
      --branch "v$VERSION" "$GIT_URL" "$src" >&2
    actual=$(git -C "$src" rev-parse HEAD)
    [ "$actual" = "$COMMIT" ] || { log "tag v$VERSION is commit $actual, want $COMMIT"; exit 1; }
    rm -rf "$src/.git"
  fi
}

pinned_done() {
  echo "$1" > "$src/.installed"
  mv -T "$src" "$DEST"
  log "built in $((SECONDS - $2)) s: $DEST"
  print_env
}
