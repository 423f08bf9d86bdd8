#!/usr/bin/env bash
# `make bench`: installs what is missing (wrk, PostgreSQL, the test venv, the build tools), builds
# the release worker, then runs the benchmark suite (bench/run.py), which writes
# bench/results.md and bench/results.json. Not part of `make test`. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENCH_T0=${BENCH_T0:-$(date +%s.%N)}
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench: installing wrk (apt)"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk >/dev/null
fi
make -s postgres

# The venv (pytest, PyJWT, cryptography, psycopg, requests) downloads while the release build
# (`make build` = scripts/build.sh: build tools where missing, then worker-build --release when
# stale) compiles. bench/run.py then runs `wrangler deploy --dry-run` with the repo's
# wrangler.toml, whose [build] command runs scripts/build.sh again, so the worker measured is
# always freshly built.
venv_log=$(mktemp)
make -s venv >"$venv_log" 2>&1 &
venv_pid=$!
make -s build
if ! wait "$venv_pid"; then
  cat "$venv_log" >&2
  exit 1
fi
rm -f "$venv_log"

# The Rust floors: the smallest workers-rs worker and the plain JS upload worker's job in Rust.
bench/build_rust_floors.sh

# The JavaScript comparison workers' one dependency (jose, pinned in bench/js/package-lock.json),
# installed again only when the lock file changed; wrangler bundles it (esbuild) when it starts them.
if [ ! -f bench/js/node_modules/.package-lock.json ] || [ bench/js/package-lock.json -nt bench/js/node_modules/.package-lock.json ]; then
  echo "bench: installing bench/js (npm ci)"
  (cd bench/js && npm ci --no-audit --no-fund --loglevel=error)
fi

exec .venv/bin/python bench/run.py "$@"
