#!/usr/bin/env bash
# Prints the path of a headless-capable Chromium for the browser tests (tests/e2e/test_web.py),
# installing Debian's `chromium` package where none is found (logs go to stderr). playwright-core
# drives it; no browser is ever downloaded by a test tool.
#
#   CHROMIUM=/path/to/chrome   use that one
#   /usr/bin/chromium          Debian's package (what the tests are checked with)
#   google-chrome              GitHub's Ubuntu runners have it (Ubuntu's `chromium` is a snap stub)
# Idempotent: the second run only looks.
set -euo pipefail
log() { echo "chromium.sh: $*" >&2; }

if [ -n "${CHROMIUM:-}" ]; then
  [ -x "$CHROMIUM" ] || { log "CHROMIUM=$CHROMIUM is not an executable"; exit 1; }
  echo "$CHROMIUM"; exit 0
fi
for candidate in /usr/bin/chromium /usr/bin/google-chrome /usr/bin/google-chrome-stable; do
  if [ -x "$candidate" ]; then echo "$candidate"; exit 0; fi
done
if [ -f /etc/debian_version ] && ! grep -qi ubuntu /etc/os-release 2>/dev/null; then
  log "installing Debian's chromium package (apt, about 1.5 minutes)"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  echo /usr/bin/chromium; exit 0
fi
log "no Chromium found: install Debian's chromium package or Google Chrome, or set CHROMIUM=/path"
exit 1
