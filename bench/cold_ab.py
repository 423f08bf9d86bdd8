#!/usr/bin/env python3
"""Cold starts of two or more builds of the worker, compared in one run (issue 19): each build
in its own cold loader (bench/cold/loader.js, as `make bench` runs it), the first requests of
fresh isolates interleaved between the builds, medians. Not part of `make bench`; a step's
effect on cold starts is measured with it (docs/performance.md, "Cold start").

    cp -r build /tmp/before   # then change and `make build`
    COLD_BUILDS=before=/tmp/before,after=build .venv/bin/python bench/cold_ab.py
    COLD_RUNS=10 COLD_ONLY=health,token ...       # knobs (defaults: 8 isolates, every kind)
    COLD_BUILDS=rsa=build,ed=build COLD_ALGS=ed=EdDSA ...  # one build, the key's type varied

Kinds: `noop` (the JS no-op worker: the runtime's share), `load` (the build's script loaded
only), `health`, `token` (an RSA key unless COLD_ALGS names another type; HS256 session) and `put1000` (1,000 PUTs, rls). CPU is the
loader's workerd process's, read from /proc per thread around each request (0.2 s after the
answer, so that V8's background compiles are counted): "main" is the thread that runs the
isolates, "all" adds V8's worker thread (background compiles), as `make bench` counts it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402  (bench/run.py: its helpers)
import requests  # noqa: E402
from tests.e2e.conftest import complete_vars, make_token  # noqa: E402

RUNS = bench.env_int("COLD_RUNS", 8)
KINDS = ["noop", "load", *os.environ.get("COLD_ONLY", "health,token,put1000").split(",")]


def main() -> int:
    builds = dict(b.split("=", 1) for b in os.environ.get("COLD_BUILDS", "build=build").split(","))
    algs = dict(a.split("=", 1) for a in os.environ.get("COLD_ALGS", "").split(",") if a)
    with contextlib.ExitStack() as stack:
        pg, standin, jwks = bench.start_infrastructure(stack)
        key = bench.powersync_key("cold-ab")
        keys = {name: bench.powersync_key("cold-ab", algs[name]) if name in algs else key for name in builds}
        sub = "11111111-1111-1111-1111-111111111111"
        auth = {"Authorization": f"Bearer {make_token(sub, iss=f'{standin.url}/auth/v1', expires_in=3600)}"}
        loaders = {}
        for name, directory in builds.items():
            d = ROOT / directory
            env = {**complete_vars(standin.url, jwks.url, keys[name], timeout_ms=30000), "UPLOAD_ATOMIC": "false"}
            loader, loader_dir = bench.start_cold_loader(
                {"rust": {"js": (d / "index.js").read_text(), "wasm": (d / "index_bg.wasm").read_bytes()},
                 "noop": {"js": bench.SIGN_ONLY.read_text()}},
                {"rust": env, "noop": {"POWERSYNC_PRIVATE_KEY": key["private_pem"]}})
            stack.callback(loader.stop)
            pid = bench.workerd_user_pid(loader.proc.pid, loader.port)
            if pid is None:
                raise RuntimeError(f"{name}: the loader's workerd process was not found")
            loaders[name] = (loader, pid)
        http = requests.Session()
        samples: dict[tuple[str, str], list[tuple[float, float]]] = collections.defaultdict(list)
        for i in range(RUNS + 1):  # round 0: each process's first isolate of each script, left out
            body = bench.seeded_batches(pg.dsn, sub)["put1000"]["body"]
            requests_by_kind = {
                "noop": ("noop", "GET", "/noop", {}, None),
                "load": ("rust_load", "GET", "/", {}, None),
                "health": ("rust", "GET", "/health", {}, None),
                "token": ("rust", "GET", "/powersync-token", auth, None),
                "put1000": ("rust", "POST", "/powersync-upload", {**auth, "Content-Type": "application/json"}, body),
            }
            for kind in KINDS:
                script, method, path, headers, data = requests_by_kind[kind]
                for name, (loader, pid) in loaders.items():
                    main0, other0 = bench.thread_cpu_ms(pid)
                    r = http.request(method, f"{loader.url}/{script}/{kind}-{i}{path}", headers=headers,
                                     data=data, timeout=60)
                    if r.status_code != 200:
                        raise RuntimeError(f"{name} {kind}: {r.status_code} {r.text[:300]}")
                    time.sleep(0.2)
                    main1, other1 = bench.thread_cpu_ms(pid)
                    if i:
                        samples[(kind, name)].append((main1 - main0, other1 - other0))
            bench.log(f"round {i}/{RUNS} done")
    print(f"\nFirst request of a fresh isolate, CPU ms (medians of {RUNS}): main thread / all threads")
    print("| Kind | " + " | ".join(builds) + " |\n|---|" + "---:|" * len(builds))
    for kind in KINDS:
        cells = []
        for name in builds:
            runs = samples[(kind, name)]
            cells.append(f"{statistics.median(m for m, _ in runs):.2f} / {statistics.median(m + o for m, o in runs):.2f}")
        print(f"| {kind} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
