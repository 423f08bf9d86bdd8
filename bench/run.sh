#!/usr/bin/env bash
# `make bench`: builds the release worker, makes sure wrk, PostgreSQL and the test venv are there,
# then runs the benchmark suite (bench/run.py), which writes bench/results.md and
# bench/results.json. Not part of `make test`. See bench/README.md.
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

# The venv (pytest, PyJWT, cryptography, psycopg, requests), PostgreSQL, the native dev tool, and
# the release build (`make build` runs scripts/build.sh = worker-build --release when stale).
# bench/run.py then runs `wrangler deploy --dry-run` with the repo's wrangler.toml, whose [build]
# command runs scripts/build.sh again, so the worker measured is always freshly built.
make -s postgres venv build target/debug/devtool

exec .venv/bin/python bench/run.py "$@"
