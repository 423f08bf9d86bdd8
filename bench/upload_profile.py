#!/usr/bin/env python3
"""Where an upload's workerd CPU goes (issue 11): a quicker, upload-only companion of
bench/run.py (about 2 minutes). Not part of `make bench`; its figures are for comparing builds
in the same conditions, the official ones stay in bench/results.md.

    .venv/bin/python bench/upload_profile.py            # after `make build`
    PROFILE_ROUNDS=3 PROFILE_SECONDS=3 ...              # knobs (defaults 2 and 3)
    PROFILE_ONLY=empty,rls_put1000 PROFILE_JS=0 ...     # only these worker rows, no JS rows
    PROFILE_BUILDS=before=/tmp/b1,after=build ...       # compare builds (dirs with index.js and
                                                        # index_bg.wasm) in one run, interleaved

The same setup as bench/run.py (PostgreSQL, the PostgREST stand-in, the release worker under
`wrangler dev` without the inspector, HS256 session, wrk -c1 re-posting one body, CPU from
/proc of the worker's workerd process), with requests that stop at successive stages of an
upload, so differences between rows give each stage's cost:

- `/health`: the workers-rs floor;
- upload without a session (401 before the body is read);
- `{"transactions":[]}`: session check + body + parse, no subrequest;
- the same padded to the 1,000-PUT body's size with one long string: + reading the body;
- 1,000 PUTs whose last entry names an invalid table: session + body + parse of 1,000 entries +
  table checks, the transaction fails before planning, no subrequest;
- 1 / 100 / 1,000 PUTs (rls and atomic): everything;

and the JS floor worker (bench/upload-floor/worker.js): reading a 1,000-PUT body, JSON.parse of
it, and the whole PUT batch done in JS (parse, rows, stringify, one fetch, read the answer).
Prints a table and writes bench/upload_profile.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402  (bench/run.py: its helpers)
from tests.e2e.conftest import ANON_KEY, complete_vars, make_token  # noqa: E402

ROUNDS = bench.env_int("PROFILE_ROUNDS", 2)
SECONDS = bench.env_int("PROFILE_SECONDS", 3)
FLOOR = ROOT / "bench/upload-floor/worker.js"
OUT = ROOT / "bench/upload_profile.json"


def main() -> int:
    with contextlib.ExitStack() as stack:
        builds = {}
        for item in os.environ.get("PROFILE_BUILDS", "build=build").split(","):
            name, _, path = item.partition("=")
            snap = Path(tempfile.mkdtemp(prefix=f"profile-{name}-"))
            stack.callback(shutil.rmtree, snap, ignore_errors=True)
            for f in ("index.js", "index_bg.wasm"):
                shutil.copy2(ROOT / path / f, snap / f)
            builds[name] = snap
        pg, standin, jwks = bench.start_infrastructure(stack)
        ps_key = bench.powersync_key("profile-1", "EdDSA")
        base_vars = complete_vars(standin.url, jwks.url, ps_key, timeout_ms=30000)
        sub = str(uuid.uuid4())
        token = make_token(sub, iss=f"{standin.url}/auth/v1", expires_in=4 * 3600)

        workers = {}
        for name, snap in builds.items():
            w_rls = bench.start_worker(base_vars, snap / "index.js")
            stack.callback(w_rls.stop)
            w_atomic = bench.start_worker({**base_vars, "UPLOAD_ATOMIC": "true"}, snap / "index.js")
            stack.callback(w_atomic.stop)
            workers[name] = (w_rls, w_atomic)
        w_js = bench.start_worker({"SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": ANON_KEY}, FLOOR)
        stack.callback(w_js.stop)

        batches = bench.seeded_batches(pg.dsn, sub)
        work = Path(tempfile.mkdtemp(prefix="upload-profile-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        bodies = {k: b["body"] for k, b in batches.items() if k != "mixed"}
        bodies["empty"] = json.dumps({"transactions": []})
        # As long as the 1,000-PUT body, but nothing to parse beyond one long string.
        bodies["padded_empty"] = json.dumps({"transactions": [], "pad": "x" * (len(bodies["put1000"]) - 30)})
        bad = json.loads(bodies["put1000"])
        bad["transactions"][0]["crud"][-1]["table"] = "not-a-table"
        bodies["put1000_bad_table"] = json.dumps(bad)
        for k, text in bodies.items():
            (work / f"{k}.json").write_text(text)

        # Every upload scenario answers as expected before it is measured.
        for key in [k for k in ("put1", "put100", "put1000") if k in batches]:  # bench/run.py's batches
            for pair in workers.values():
                for w in pair:
                    bench.probe_upload(w, standin, token, batches[key])
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        r = next(iter(workers.values()))[0].post("/powersync-upload", data=bodies["put1000_bad_table"], headers=auth)
        assert r.status_code == 200 and r.json()["results"][0]["failed_operation"]["code"] == "invalid_table_name", r.text[:300]
        r = w_js.post("/forward", data=bodies["put1000"], headers=auth)
        assert r.status_code == 200, r.text[:300]

        rust_scenarios = {
            "health": ("`/health` (workers-rs floor)", "rls", "GET", "/health", None, None),
            "token": ("token, `GET /powersync-token` (HS256 session)", "rls", "GET", "/powersync-token", token, None),
            "no_session": ("upload, no session (401, body unread)", "rls", "POST", "/powersync-upload", None, "put1000"),
            "empty": ("upload `{\"transactions\":[]}` (session + parse)", "rls", "POST", "/powersync-upload", token, "empty"),
            "padded_empty": ("upload `{\"transactions\":[]}` padded to the 1,000-PUT body's size (+ reading it)",
                             "rls", "POST", "/powersync-upload", token, "padded_empty"),
            "bad_table": ("1,000 PUTs, last table invalid (session + read + parse + checks)", "rls", "POST",
                          "/powersync-upload", token, "put1000_bad_table"),
            "rls_put1": ("rls 1 PUT", "rls", "POST", "/powersync-upload", token, "put1"),
            "rls_put100": ("rls 100 PUTs", "rls", "POST", "/powersync-upload", token, "put100"),
            "rls_put1000": ("rls 1,000 PUTs", "rls", "POST", "/powersync-upload", token, "put1000"),
            "atomic_put1000": ("atomic 1,000 PUTs", "atomic", "POST", "/powersync-upload", token, "put1000"),
        }
        rust_scenarios = {k: v for k, v in rust_scenarios.items() if v[5] is None or v[5] in bodies}
        only = os.environ.get("PROFILE_ONLY")  # e.g. "empty,rls_put1000": a subset of the worker's rows
        if only:
            rust_scenarios = {k: v for k, v in rust_scenarios.items() if k in only.split(",")}
        scenarios = {}
        for key, (label, w, *rest) in rust_scenarios.items():  # the builds interleaved
            for name, (w_rls, w_atomic) in workers.items():
                prefix = "" if len(workers) == 1 else f"{name}: "
                scenarios[f"{name}.{key}"] = (prefix + label, w_atomic if w == "atomic" else w_rls, *rest)
        if os.environ.get("PROFILE_JS", "1") != "0":
            scenarios.update({
                "js_read": ("JS: read a 1,000-PUT body", w_js, "POST", "/read", None, "put1000"),
                "js_parse": ("JS: read + JSON.parse it", w_js, "POST", "/parse", None, "put1000"),
                "js_forward1": ("JS: 1 PUT forwarded (parse, rows, stringify, fetch)", w_js, "POST", "/forward", token, "put1"),
                "js_forward1000": ("JS: 1,000 PUTs forwarded", w_js, "POST", "/forward", token, "put1000"),
            })
        runs: dict[str, list[dict]] = {k: [] for k in scenarios}
        for rnd in range(ROUNDS):
            for key, (label, w, method, path, tok, body) in scenarios.items():
                run = bench.wrk(w.url + path, seconds=SECONDS, connections=1, cpu_of=w, method=method, token=tok,
                                body_file=work / f"{body}.json" if body else None)
                if key.endswith("no_session"):
                    run["ok"] = run["requests"] > 0  # 401s are the point (wrk counts them as non-2xx)
                runs[key].append(run)
                bench.log(f"round {rnd + 1} {key}: {run['cpu_ms_per_req_user']:.2f} ms/req, "
                          f"{run['rps']:.0f} req/s{'' if run['ok'] else ' (errors: ' + str(run['errors']) + ')'}")
        load = os.getloadavg()
        result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg": load,
                  "rounds": ROUNDS, "seconds": SECONDS,
                  "scenarios": {k: {"label": scenarios[k][0], "runs": v,
                                    "median_cpu_ms": bench.median([r["cpu_ms_per_req_user"] for r in v]),
                                    "median_rps": bench.median([r["rps"] for r in v])} for k, v in runs.items()}}
        OUT.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nload average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
        print("| Scenario | worker workerd CPU ms / request | req/s |\n|---|---:|---:|")
        for k, v in result["scenarios"].items():
            print(f"| {v['label']} | {v['median_cpu_ms']:.2f} | {v['median_rps']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
