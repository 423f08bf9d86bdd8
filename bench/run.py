#!/usr/bin/env python3
"""The benchmark suite (`make bench` -> bench/run.sh -> this file). See bench/README.md.

Starts everything locally, drives it with wrk on loopback, and writes bench/results.md and
bench/results.json:

  * a throwaway PostgreSQL (tests.support.pg.TempPostgres) with the test schema and the atomic
    upload function, the PostgREST stand-in in front of it (tests.postgrest_standin.standin),
    a JWKS server for ES256 sessions (tests.support.worker.JwksServer);
  * the release worker under `wrangler dev` (tests.support.worker.WorkerProcess, launched through
    wrangler's API without the devtools inspector): the default configuration (rls uploads) and
    UPLOAD_ATOMIC=true; plus the sign-only JS worker (bench/sign-only/worker.js), the platform's
    floor for the token endpoint; and, for comparison, the worker and the sign-only worker under
    the plain CLI (inspector attached);
  * scenarios: bundle size, cold start, token (HS256 / ES256 sessions), JWKS, sign-only (and, for
    information, sign-only + the worker's one-line request log), uploads
    (1 / 100 / 1,000 PUTs, mixed batch; rls and atomic) against the one-request-per-entry
    baseline (bench/baseline.py).

CPU per request = (utime + stime of a process of the wrangler session, from /proc/<pid>/stat,
after minus before a wrk run) / requests completed in that run; the target is read on the
workerd process that runs the worker.

Every step has a time limit and the whole run a watchdog (BENCH_TIME_LIMIT seconds, default 1200);
everything started is stopped on exit, on an error and on Ctrl-C / SIGTERM.

Knobs (environment): BENCH_ROUNDS (3), BENCH_TOKEN_SECONDS (3), BENCH_TOKEN_CONNECTIONS (8),
BENCH_UPLOAD_SECONDS (3), BENCH_UPLOAD_WARMUP_SECONDS (3: one window of the warm-up),
BENCH_UPLOAD_WARMUP_MAX_SECONDS (60), BENCH_TOKEN_WARMUP_MAX_SECONDS (20), BENCH_COLD_RUNS (10),
BENCH_TIME_LIMIT (1200), BENCH_SKIP_BUNDLE (unset), BENCH_SKIP_MEMORY (unset).
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jwt
import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import (ANON_KEY, JWT_SECRET, SERVICE_KEY,  # noqa: E402
                                SQL_FILES, SessionKeys, complete_vars, make_token)
from tests.postgrest_standin.standin import StandIn  # noqa: E402
from tests.support.pg import TempPostgres  # noqa: E402
from tests.support.worker import WRANGLER, JwksServer, WorkerProcess  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402


# wrangler dev (4.164) runs a local observability collector inside the worker's own workerd
# process unless X_LOCAL_OBSERVABILITY=false: every invocation's trace events and log lines go to
# a collector worker that stores them in SQLite (a Durable Object), about 1.5-2 ms of that
# process's CPU per upload request for every worker (docs/performance.md). A deployed worker's
# CPU carries none of it, so it is off for every worker the benchmarks start, as the devtools
# inspector is (tests/support/wrangler_dev.mjs). bench/upload_profile.py and
# bench/cpu_profile.py import this module and inherit it.
os.environ.setdefault("X_LOCAL_OBSERVABILITY", "false")

BENCH = ROOT / "bench"
LUA = BENCH / "wrk/bench.lua"
SIGN_ONLY = BENCH / "sign-only/worker.js"
UPLOAD_FLOOR = BENCH / "upload-floor/worker.js"
JS_TOKEN = BENCH / "js/token.js"
RUST_FLOOR = BENCH / "rust-floor/build/index.js"  # built by bench/build_rust_floors.sh
WASM_FLOOR = BENCH / "wasm-floor/build/index.js"  # the same
RUST_UPLOAD_FLOOR = BENCH / "rust-upload-floor/build/index.js"  # the same
JS_UPLOAD = BENCH / "js/upload.js"
WRANGLER_DEV_API = ROOT / "tests/support/wrangler_dev.mjs"
BASELINE = BENCH / "baseline.py"
RESULTS_MD = BENCH / "results.md"
RESULTS_JSON = BENCH / "results.json"


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


ROUNDS = env_int("BENCH_ROUNDS", 3)
TOKEN_SECONDS = env_int("BENCH_TOKEN_SECONDS", 3)
TOKEN_CONNECTIONS = env_int("BENCH_TOKEN_CONNECTIONS", 8)
UPLOAD_SECONDS = env_int("BENCH_UPLOAD_SECONDS", 3)
UPLOAD_WARMUP_SECONDS = env_int("BENCH_UPLOAD_WARMUP_SECONDS", 3)  # one window of the warm-up (warm_up)
UPLOAD_WARMUP_MAX_SECONDS = env_int("BENCH_UPLOAD_WARMUP_MAX_SECONDS", 60)
TOKEN_WARMUP_MAX_SECONDS = env_int("BENCH_TOKEN_WARMUP_MAX_SECONDS", 20)
UPLOAD_CONNECTIONS = 1  # one client uploading its queue: uploads are sequential per client
COLD_RUNS = env_int("BENCH_COLD_RUNS", 10)
TIME_LIMIT = env_int("BENCH_TIME_LIMIT", 1200)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets (issue 19): against the JavaScript workers in bench/ (bench/README.md), measured in the
# same run. Never adjusted to what was measured.
TARGET_HEALTH_VS_NOOP = 1.15      # /health vs a JS no-op request (worker workerd CPU)
TARGET_TOKEN_VS_JS = 1.10         # the token endpoint per key type vs the jose token worker (HS256 session)
TARGET_ES256_SESSION_VS_JS = 1.0  # ES256 session, cached JWKS
TARGET_PUT1000_VS_JS = 1.0        # 1,000 PUTs vs the plain JS worker doing the same batch (rls, atomic)
TARGET_PUT1_VS_JS = 1.2           # 1 PUT vs the plain JS worker doing one
TARGET_COLD_VS_JS = 2.0           # the script's cold start (load + first request, CPU) vs the JS worker's
TARGET_BUNDLE_GZIP_BYTES = 500 * 1000  # 500 KB, decimal: the stricter reading
TARGET_MEMORY_ABOVE_BODY_MIB = 16.0    # peak memory of a 5 MiB upload: within body + 16 MiB
METRICS_CONFIG = '[[analytics_engine_datasets]]\nbinding = "METRICS"\ndataset = "powersync_bridge"\n'


class BenchTimeout(Exception):
    pass


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# =========================================================================== processes & CPU
def group_cpu(pgid: int, entry_port: int | None = None) -> dict[str, float]:
    """CPU seconds (utime + stime) of the processes in process group `pgid` (a wrangler dev
    session: WorkerProcess starts it with start_new_session, so pgid = wrangler's pid), by kind:
    workerd_entry (wrangler's proxy workerd, listening on the public port), workerd_user (the
    worker itself), node (wrangler), other."""
    totals = {"workerd_entry": 0.0, "workerd_user": 0.0, "node": 0.0, "other": 0.0}
    listening = listening_inodes(entry_port) if entry_port is not None else set()
    for proc, comm, fields in group_processes(pgid):
        seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
        if comm == "workerd":
            totals["workerd_entry" if listens(proc, listening) else "workerd_user"] += seconds
        elif comm.startswith("node") or comm == "MainThread":
            totals["node"] += seconds
        else:
            totals["other"] += seconds
    return totals


def workerd_count(pgid: int) -> int:
    out = subprocess.run(["pgrep", "-g", str(pgid), "-f", "workerd"], capture_output=True, text=True)
    return len(out.stdout.split())


def powersync_key(kid: str, alg: str = "RS256") -> dict:
    """A fresh PowerSync signing key (PKCS#8 PEM + public JWK): RSA-2048 (RS256), P-256 (ES256)
    or Ed25519 (EdDSA), made in Python so the benchmark does not need the native dev tool built
    (1.5 min on a fresh machine)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    if alg == "RS256":
        private = SessionKeys().rsa
        public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
        public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
    else:
        private = ed25519.Ed25519PrivateKey.generate()
        public_jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    public_jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"kid": kid, "alg": alg, "private_pem": pem, "public_jwk": public_jwk}


def js_worker_vars(worker_vars: dict[str, str], key: dict | None = None) -> dict[str, str]:
    """The JS workers' settings (bench/js/*.js): the worker's session and Supabase settings, and
    with `key` (powersync_key) the PowerSync key the token worker signs with."""
    out = {k: worker_vars[k] for k in ("SUPABASE_URL", "SUPABASE_JWT_SECRET", "SUPABASE_JWKS_URL",
                                       "SUPABASE_ANON_KEY", "POWERSYNC_URL")}
    if key is not None:
        out.update(POWERSYNC_ALG=key["alg"], POWERSYNC_PRIVATE_KEY=key["private_pem"], POWERSYNC_KEY_ID=key["kid"])
    return out


def start_infrastructure(stack: contextlib.ExitStack) -> tuple[TempPostgres, StandIn, JwksServer]:
    """A throwaway PostgreSQL with the test schema and the atomic function, the PostgREST stand-in
    in front of it and a JWKS server, each stopped when `stack` closes."""
    pg = TempPostgres()
    stack.callback(pg.stop)
    pg.start()
    for f in SQL_FILES:
        pg.run_sql_file(f)
    standin = StandIn(pg.dsn, JWT_SECRET, anon_key=ANON_KEY, service_key=SERVICE_KEY)
    standin.start(port=0)
    stack.callback(standin.stop)
    jwks = JwksServer()
    stack.callback(jwks.stop)
    return pg, standin, jwks


def start_worker(vars: dict[str, str], main: Path, *, inspector: bool = False) -> WorkerProcess:
    """`wrangler dev` without the devtools inspector (see tests/support/wrangler_dev.mjs) unless
    `inspector`: then the plain CLI, as `make dev` runs it."""
    return WorkerProcess(vars, main=main, inspector=inspector)


def wrk(url: str, *, seconds: int, connections: int, cpu_of: WorkerProcess | None = None,
        method: str = "GET", token: str | None = None, body_file: Path | None = None) -> dict:
    """One wrk run (-t1); returns requests/s, latency percentiles and workerd CPU per request."""
    env = dict(os.environ, BENCH_METHOD=method, BENCH_TOKEN=token or "",
               BENCH_BODY_FILE=str(body_file) if body_file else "")
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "-s", str(LUA), url]
    before = group_cpu(cpu_of.proc.pid, cpu_of.port) if cpu_of else None
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    after = group_cpu(cpu_of.proc.pid, cpu_of.port) if cpu_of else None
    line = next((l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads(line[len("BENCH_JSON "):])
    n = summary["requests"]
    run = {
        "requests": n,
        "seconds": summary["duration_us"] / 1e6,
        "rps": n / (summary["duration_us"] / 1e6) if summary["duration_us"] else 0.0,
        "p50_ms": summary["latency_us"]["p50"] / 1000,
        "p90_ms": summary["latency_us"]["p90"] / 1000,
        "p99_ms": summary["latency_us"]["p99"] / 1000,
        "errors": summary["errors"],
        "ok": n > 0 and not any(summary["errors"].values()),
    }
    if before is not None and after is not None and n:
        delta = {k: after[k] - before[k] for k in after}
        run["cpu_s"] = delta
        run["cpu_ms_per_req"] = (delta["workerd_entry"] + delta["workerd_user"]) * 1000 / n
        run["cpu_ms_per_req_user"] = delta["workerd_user"] * 1000 / n
        run["cpu_ms_per_req_entry"] = delta["workerd_entry"] * 1000 / n
        run["node_ms_per_req"] = delta["node"] * 1000 / n
    return run


# =========================================================================== bundle
def bundle_size() -> dict:
    """`wrangler deploy --dry-run --outdir <tmp>` with the repo's wrangler.toml (its [build]
    command runs scripts/build.sh), plus the raw and gzipped size of the wasm it would upload."""
    out = Path(tempfile.mkdtemp(prefix="bench-bundle-"))
    try:
        env = dict(os.environ, CI="true", WRANGLER_SEND_METRICS="false", NO_COLOR="1",
                   WRANGLER_LOG_PATH=str(out / "logs"))
        t0 = time.monotonic()
        proc = subprocess.run([str(WRANGLER), "deploy", "--dry-run", "--outdir", str(out / "dist")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                              stdin=subprocess.DEVNULL)
        elapsed = time.monotonic() - t0
        text = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"wrangler deploy --dry-run failed:\n{text[-3000:]}")
        m = re.search(r"Total Upload:\s*([\d.]+)\s*KiB\s*/\s*gzip:\s*([\d.]+)\s*KiB", text)
        wasm_files = sorted((out / "dist").rglob("*.wasm")) or [ROOT / "build/index_bg.wasm"]
        wasm = wasm_files[0].read_bytes()
        return {
            "wrangler_total_kib": float(m.group(1)) if m else None,
            "wrangler_gzip_kib": float(m.group(2)) if m else None,
            "wrangler_line": m.group(0) if m else None,
            "wasm_file": wasm_files[0].name,
            "wasm_bytes": len(wasm),
            "wasm_gzip6_bytes": len(gzip.compress(wasm, 6)),
            "wasm_gzip9_bytes": len(gzip.compress(wasm, 9)),
            "dry_run_seconds": elapsed,
        }
    finally:
        shutil.rmtree(out, ignore_errors=True)


def snapshot_build() -> Path:
    """A private copy of build/ so a rebuild elsewhere (make test, an editor) cannot hot-reload
    the workers in the middle of a measurement."""
    snap = Path(tempfile.mkdtemp(prefix="bench-build-"))
    for name in ("index.js", "index_bg.wasm"):
        shutil.copy2(ROOT / "build" / name, snap / name)
    for extra in ("package.json",):
        if (ROOT / "build" / extra).exists():
            shutil.copy2(ROOT / "build" / extra, snap / extra)
    return snap


WARMUP_BACKGROUND_SHARE = 0.02  # steady: V8's background threads at most 2 % of the main thread's CPU
WARMUP_QUIET_WINDOWS = 2  # in that many windows in a row (tier-up comes in bursts)


def warm_up(w: WorkerProcess, path: str, *, window: int, max_seconds: int, connections: int,
            method: str = "GET", token: str | None = None, body_file: Path | None = None) -> dict:
    """Requests to `path` until the worker runs them in steady state: windows of `window` s until
    WARMUP_QUIET_WINDOWS in a row in each of which the worker's workerd process spent at most
    WARMUP_BACKGROUND_SHARE of its main thread's CPU on its other threads, or `max_seconds`.

    V8 runs each function unoptimized first and recompiles the hot ones with its optimizing
    compiler on background threads once they have run enough, counted in calls and loop
    iterations, not seconds: for the worker's wasm that goes on for hundreds of 1,000-PUT
    uploads (a few seconds of requests at that size are not enough). Those threads' CPU counts in
    every row's figure, so a row measured before it ends carries a one-time cost of its isolate.
    Returns what the warm-up took: its seconds and requests, the other threads' CPU in it (the
    isolate's tier-up, mostly), and whether it settled."""
    pid = workerd_user_pid(w.proc.pid, w.port)
    spent = requests = quiet = 0
    background_ms = 0.0
    while True:
        before = thread_cpu_ms(pid) if pid else (0.0, 0.0)
        run = wrk(w.url + path, seconds=window, connections=connections, method=method, token=token,
                  body_file=body_file)
        after = thread_cpu_ms(pid) if pid else (0.0, 0.0)
        spent += window
        requests += run["requests"]
        main_ms, other_ms = after[0] - before[0], after[1] - before[1]
        background_ms += other_ms
        quiet = quiet + 1 if other_ms <= WARMUP_BACKGROUND_SHARE * main_ms else 0
        settled = pid is not None and quiet >= WARMUP_QUIET_WINDOWS
        if settled or spent >= max_seconds:
            return {"seconds": spent, "requests": requests, "background_cpu_ms": background_ms, "settled": settled,
                    "last_window_background_share": other_ms / main_ms if main_ms else None}


# =========================================================================== cold start
def workerd_user_pid(pgid: int, entry_port: int) -> int | None:
    """The workerd process of a wrangler dev session that runs the worker (not the dev proxy,
    which listens on the public port: found by its listening socket, since both processes are
    told port 0 when wrangler picks the port)."""
    listening = listening_inodes(entry_port)
    for proc, comm, _ in group_processes(pgid):
        if comm == "workerd" and not listens(proc, listening):
            return int(proc.name)
    return None


def group_processes(pgid: int):
    """(/proc/<pid>, command name, /proc/<pid>/stat's fields after the name) of each process
    in process group `pgid`."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # pgrp
            yield proc, stat[stat.index("(") + 1:stat.rindex(")")], fields


def listens(proc: Path, inodes: set[str]) -> bool:
    """Whether process `proc` (/proc/<pid>) holds one of the sockets `inodes`."""
    with contextlib.suppress(OSError):
        return any(link.readlink().name in inodes for link in (proc / "fd").iterdir())
    return False


def listening_inodes(port: int) -> set[str]:
    """The sockets listening on TCP `port`, as a process's fd links name them ("socket:[inode]";
    from /proc/net/tcp and tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":
                    inodes.add(f"socket:[{fields[9]}]")
    return inodes


def thread_cpu_ms(pid: int) -> tuple[float, float]:
    """CPU time of `pid`'s main thread and of its other threads (in workerd: V8's worker thread,
    background compiles) in ms at nanosecond resolution (the first field of
    /proc/<pid>/task/*/schedstat: time spent on the CPU), where /proc/<pid>/stat counts 10 ms
    ticks. Threads that ended are not counted (workerd's threads live as long as it does)."""
    main = other = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            ns = int((task / "schedstat").read_text().split()[0])
            if task.name == str(pid):
                main += ns
            else:
                other += ns
    return main / 1e6, other / 1e6


def task_cpu_ms(pid: int) -> float:
    """CPU time of every thread of `pid` in ms (thread_cpu_ms summed)."""
    return sum(thread_cpu_ms(pid))


# Cold start: what each kind loads into a fresh isolate and asks first: (label, script).
# Each Rust kind is compared with the JS kind after it in COLD_PAIRS; `noop_js` is also the
# runtime's share of a fresh isolate (cold_summary).
COLD_KINDS = {
    "noop_js": ("JS no-op worker (bench/sign-only/worker.js), `GET /noop`", "noop"),
    "rust_load": ("the worker's script loaded only (compile, instantiate, top level; the answer from a JS wrapper)",
                  "rust_load"),
    "js_token_load": ("the JS token worker's script loaded only (the same wrapper)", "token_load"),
    "health": ("the worker, `GET /health`", "rust"),
    "js_token": ("JS jose token worker (bench/js/token.js bundled, RSA key), `GET /powersync-token` (HS256 session)", "token"),
    "token": ("the worker (RSA key), `GET /powersync-token` (HS256 session)", "rust"),
    "js_put1000": ("plain JS upload worker (bench/upload-floor/worker.js), 1,000 PUTs (`/forward`)", "upload"),
    "put1000": ("the worker (rls), 1,000 PUTs", "rust"),
    "wasm_floor": ("the smallest wasm worker (bench/wasm-floor: a synchronous wasm-bindgen export), `GET /`",
                   "wasm_floor"),
    "rust_floor": ("the smallest workers-rs worker (bench/rust-floor), `GET /`", "rust_floor"),
    "rust_put1000": ("the plain JS upload worker's job in Rust (bench/rust-upload-floor), 1,000 PUTs (`/forward`)",
                     "rust_upload"),
}
COLD_PAIRS = (("health", "noop_js", "`/health`"), ("token", "js_token", "token (RSA key, HS256 session)"),
              ("put1000", "js_put1000", "1,000-PUT upload (rls)"))
COLD_LOADER = BENCH / "cold/loader.js"


# The scripts bench/cold/loader.js imports, and whether each has a wasm module beside its JS.
COLD_SCRIPTS = {"rust": True, "noop": False, "token": False, "upload": False, "wasm_floor": True, "rust_floor": True,
                "rust_upload": True}


def start_cold_loader(scripts: dict[str, dict], envs: dict[str, dict]) -> tuple[WorkerProcess, Path]:
    """bench/cold/loader.js under `wrangler dev`, with the scripts to load (the Rust ones: index.js
    + index_bg.wasm, the others one bundled JS module each) copied beside it and each script's env
    as JSON in ENV_<SCRIPT>. A script not given is an empty module (never loaded)."""
    d = Path(tempfile.mkdtemp(prefix="bench-cold-loader-"))
    shutil.copy2(COLD_LOADER, d / "loader.js")
    for name, has_wasm in COLD_SCRIPTS.items():
        files = scripts.get(name, {"js": "export default {}", "wasm": b""})
        (d / f"{name}.js.txt").write_text(files["js"])
        if has_wasm:
            (d / f"{name}.wasm.bin").write_bytes(files["wasm"])
    config = ('rules = [ { type = "Data", globs = ["**/*.bin"] }, { type = "Text", globs = ["**/*.txt"] } ]\n'
              '[[worker_loaders]]\nbinding = "LOADER"\n')
    vars = {f"ENV_{name.upper()}": json.dumps(env) for name, env in envs.items()}
    return WorkerProcess(vars, main=d / "loader.js", inspector=False, extra_config=config), d


def cold_sample(w: WorkerProcess, pid: int, script: str, id_: str, method: str, path: str, *,
                headers: dict | None = None, data: str | None = None) -> dict:
    """The first request of a fresh isolate (a new loader id) and the next one in the same
    isolate (warm): CPU of the loader's workerd process (all threads, ns resolution) and wall time
    of each, through the same loader."""
    http = requests.Session()

    def timed() -> tuple[float, float]:
        c0, t0 = task_cpu_ms(pid), time.perf_counter()
        r = http.request(method, f"{w.url}/{script}/{id_}{path}", headers=headers, data=data, timeout=60)
        wall, cpu = (time.perf_counter() - t0) * 1000, task_cpu_ms(pid) - c0
        if r.status_code != 200:
            raise RuntimeError(f"cold start {script} {path}: {r.status_code} {r.text[:300]}")
        return cpu, wall

    first_cpu, first_wall = timed()
    warm_cpu, warm_wall = timed()
    return {"first_cpu_ms": first_cpu, "first_wall_ms": first_wall, "warm_cpu_ms": warm_cpu, "warm_wall_ms": warm_wall}


def cold_summary(samples: dict[str, list[dict]]) -> dict:
    """Medians per kind (the first round apart: the process's first load of each script), the
    script's own share and the Rust/JS ratios. The runtime's share of a fresh isolate is the JS
    no-op worker's first request (a new isolate, a near-empty script, a trivial request); a
    script's own cold cost is its first request minus that."""
    med = {k: {m: median([r[m] for r in runs[1:] or runs]) for m in runs[0] if m != "round"}
           for k, runs in samples.items() if runs}
    runtime = med["noop_js"]["first_cpu_ms"]
    for k, v in med.items():
        v["own_cpu_ms"] = v["first_cpu_ms"] - runtime
        v["first_extra_cpu_ms"] = v["first_cpu_ms"] - v["warm_cpu_ms"]
        v["process_first_cpu_ms"] = samples[k][0]["first_cpu_ms"]
        firsts = [r["first_cpu_ms"] for r in samples[k][1:]]
        v["first_cpu_spread_ms"] = (max(firsts) - min(firsts)) if len(firsts) > 1 else None
    # The script's own share split: its load (the load-only wrapper's first request − the
    # runtime's) and its first request (the rest).
    for k, load in (("health", "rust_load"), ("token", "rust_load"), ("put1000", "rust_load"),
                    ("js_token", "js_token_load")):
        if k in med and load in med:
            med[k]["load_cpu_ms"] = med[load]["own_cpu_ms"]
            med[k]["request_cpu_ms"] = med[k]["first_cpu_ms"] - med[load]["first_cpu_ms"]
    for k in ("noop_js", "js_put1000"):  # near-empty scripts: their load is within the runtime's share
        if k in med:
            med[k]["load_cpu_ms"] = None
            med[k]["request_cpu_ms"] = None
    pairs = {}
    for rust, js, label in COLD_PAIRS:
        r, j = med[rust], med[js]
        pairs[rust] = {"label": label, "rust": rust, "js": js,
                       "cpu_ratio": r["first_cpu_ms"] / j["first_cpu_ms"] if j["first_cpu_ms"] else None,
                       "wall_ratio": r["first_wall_ms"] / j["first_wall_ms"] if j["first_wall_ms"] else None}
    return {"median": med, "runtime_cpu_ms": runtime, "pairs": pairs}


# =========================================================================== memory
def upload_memory() -> dict:
    """tests/upload_memory.rs (native, counting allocator): the worst peak above the body of the
    hostile 5 MiB upload bodies through the native upload path. Cheap when target/ is fresh."""
    if os.environ.get("BENCH_SKIP_MEMORY"):
        return {"skipped": True}
    t0 = time.monotonic()
    try:
        # the 5 MiB bodies' test alone (the other runs them at the largest accepted limit)
        proc = subprocess.run(["cargo", "test", "--all-features", "--test", "upload_memory", "--", "--nocapture",
                               "--exact", "hostile_five_mib_bodies_stay_far_below_the_isolate_memory_limit"],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"error": "cargo test --test upload_memory timed out"}
    m = re.search(r"worst peak above the body: ([\d.]+) MiB", proc.stdout)
    if proc.returncode != 0 or not m:
        return {"error": f"cargo test --test upload_memory failed ({proc.returncode}): {proc.stderr[-500:]}"}
    return {"worst_above_body_mib": float(m.group(1)), "seconds": time.monotonic() - t0,
            "lines": [l for l in proc.stdout.splitlines() if "MiB" in l]}


# =========================================================================== uploads
def put_todo(id_: str, list_id: str, sub: str, i: int) -> dict:
    return {"op": "PUT", "table": "todos", "id": id_,
            "op_data": {"description": f"todo {i}", "list_id": list_id, "created_by": sub,
                        "priority": i % 6}}


def seeded_batches(dsn: str, sub: str) -> dict[str, dict]:
    """The upload batches (build_batches) of `sub`, with the list their todos belong to inserted."""
    list_id = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("insert into public.lists (id, name, owner_id) values (%s, %s, %s)", (list_id, "bench", sub))
    return build_batches(sub, list_id)


def build_batches(sub: str, list_id: str) -> dict[str, dict]:
    """The upload batches. Each is one transaction in the reference write API's shape
    ({"transactions":[{"transaction_id","crud":[…]}]}), owned by `sub` (RLS)."""
    def new() -> str:
        return str(uuid.uuid4())

    batches = {}
    for n in (1, 1000):
        entries = [put_todo(new(), list_id, sub, i) for i in range(n)]
        batches[f"put{n}"] = {"label": f"{n:,} PUT" + ("s" if n > 1 else ""), "entries": entries}

    # Mixed: PUT/PATCH/DELETE over lists, todos and profiles, 100 entries, in client order.
    l1, p1 = new(), f"profile-{sub}"
    t = [new() for _ in range(40)]
    u = [new() for _ in range(8)]
    mixed = [
        {"op": "PUT", "table": "lists", "id": l1, "op_data": {"name": "groceries", "owner_id": sub}},
        {"op": "PUT", "table": "profiles", "id": p1,
         "op_data": {"user_id": sub, "handle": f"h-{sub[:8]}", "active": True}},
    ]
    mixed += [put_todo(t[i], l1, sub, i) for i in range(40)]                          # 1 bulk upsert
    mixed += [{"op": "PATCH", "table": "todos", "id": t[i],
               "op_data": {"completed": True, "completed_by": sub}} for i in range(20)]  # 1 in.(…)
    mixed += [{"op": "PATCH", "table": "todos", "id": t[i],
               "op_data": {"description": f"edited {i}"}} for i in range(20, 30)]       # 10 requests
    mixed += [{"op": "PATCH", "table": "lists", "id": l1, "op_data": {"name": "renamed"}},
              {"op": "PATCH", "table": "profiles", "id": p1, "op_data": {"settings": {"theme": "dark"}}}]
    mixed += [{"op": "DELETE", "table": "todos", "id": t[i]} for i in range(30, 40)]     # 1 in.(…)
    for i, id_ in enumerate(u):  # interleaved create + edit: nothing to merge, 16 requests
        mixed += [put_todo(id_, l1, sub, 100 + i),
                  {"op": "PATCH", "table": "todos", "id": id_, "op_data": {"priority": (i + 1) % 6}}]
    assert len(mixed) == 100
    batches["mixed"] = {"label": "mixed 100 (3 tables)", "entries": mixed,
                        "expect": {"todos": 30 + 8, "lists": 1, "profiles": 1},
                        "ids": {"todos": t + u, "lists": [l1], "profiles": [p1]}}
    for b in batches.values():
        b["body"] = json.dumps({"transactions": [{"transaction_id": 1, "crud": b["entries"]}]})
    return batches


def check_standin_clean(stats: dict, what: str) -> list[str]:
    bad = {s: n for s, n in stats["by_status"].items() if not s.startswith("2")}
    return [f"{what}: stand-in answered non-2xx {bad}"] if bad else []


def probe_upload(w: WorkerProcess, standin: StandIn, token: str, batch: dict) -> dict:
    """One upload, checked: 200, every transaction applied, and the exact subrequest count."""
    standin.reset()
    t0 = time.perf_counter()
    r = w.post("/powersync-upload", data=batch["body"],
               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
               timeout=60)
    elapsed_ms = (time.perf_counter() - t0) * 1000
    stats = standin.stats()
    if r.status_code != 200:
        raise RuntimeError(f"upload probe: {r.status_code} {r.text[:500]}")
    body = r.json()
    if [x["status"] for x in body["results"]] != ["success"]:
        raise RuntimeError(f"upload probe: not applied: {r.text[:800]}")
    problems = check_standin_clean(stats, "probe")
    if problems:
        raise RuntimeError("; ".join(problems))
    return {"subrequests": stats["requests"], "worker_reported_subrequests": body["subrequests"],
            "latency_ms": elapsed_ms, "by_method": stats["by_method"]}


def verify_rows(dsn: str, sub: str, batches: dict) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        for key, b in batches.items():
            if key == "mixed":
                for table, ids in b["ids"].items():
                    n = db.execute(f"select count(*) from public.{table} where id::text = any(%s)",
                                   (ids,)).fetchone()[0]
                    if n != b["expect"][table]:
                        raise RuntimeError(f"mixed batch: {table} has {n} rows, expected {b['expect'][table]}")
            else:
                ids = [e["id"] for e in b["entries"]]
                n = db.execute("select count(*) from public.todos where id::text = any(%s) and created_by = %s",
                               (ids, sub)).fetchone()[0]
                if n != len(ids):
                    raise RuntimeError(f"{key}: {n} of {len(ids)} rows applied")


def run_baseline(standin: StandIn, token: str, entries_file: Path, seconds: int) -> dict:
    standin.reset()
    proc = subprocess.run([sys.executable, str(BASELINE), "--url", standin.url, "--apikey", ANON_KEY,
                           "--token", token, "--entries", str(entries_file), "--duration", str(seconds)],
                          capture_output=True, text=True, timeout=seconds + 120)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"baseline failed ({proc.returncode}): {proc.stdout[-1000:]} {proc.stderr[-2000:]}")
    result = json.loads(lines[-1])
    result["problems"] = check_standin_clean(standin.stats(), "baseline")
    if result["errors"]:
        result["problems"].append(f"baseline errors: {result['first_errors']}")
    result["ok"] = not result["problems"]
    return result


# =========================================================================== token checks
def check_token_response(r: requests.Response, public_jwk: dict, what: str) -> None:
    if r.status_code != 200:
        raise RuntimeError(f"{what}: {r.status_code} {r.text[:500]}")
    token = r.json()["token"]
    if jwt.get_unverified_header(token)["alg"] != public_jwk["alg"]:
        raise RuntimeError(f"{what}: token alg {jwt.get_unverified_header(token)['alg']}, key {public_jwk['alg']}")
    jwt.decode(token, jwt.PyJWK(public_jwk).key, algorithms=[public_jwk["alg"]],
               options={"verify_aud": False, "verify_exp": False})


# =========================================================================== report
def fmt(v, digits=1, suffix=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{suffix}"
    return f"{v:,}{suffix}"


def verdict(ok: bool | None, info: bool = False) -> str:
    if info:
        return "info"
    return "n/a" if ok is None else ("**pass**" if ok else "**FAIL**")


def render_markdown(res: dict) -> str:
    m = res["meta"]
    out = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` (bench/run.py) on {m['date']} — {m['machine']}; "
        f"{m['wrangler']}, {m['wrk']}; commit {m['commit']}{' (uncommitted changes)' if m['dirty'] else ''}. "
        f"Benchmark phase {m['bench_seconds']:.0f} s"
        + (f", whole `make bench` {m['total_seconds']:.0f} s (including the build)" if m.get("total_seconds") else "")
        + ".",
        "",
        "Everything runs on this one machine over loopback: wrk, `wrangler dev` (workerd), the "
        "PostgREST stand-in (Python) and PostgreSQL share its cores. Absolute numbers are therefore "
        "a local, pessimistic picture; the ratios (measured in the same run, interleaved) are what "
        "carries over. See bench/README.md for the method.",
        "",
        "## Targets",
        "",
        "| Target | Measured | Result |",
        "|---|---|---|",
    ]
    for t in res["targets"]:
        out.append(f"| {t['target']} | {t['measured']} | {verdict(t['pass'], t.get('info', False))} |")

    tk = res["token"]
    d = res["derived"]
    out += [
        "",
        f"## Token (wrk -t1 -c{m['token_connections']} -d{m['token_seconds']}s, {m['rounds']} interleaved rounds, medians)",
        "",
        "CPU columns, per request: **worker workerd** = the workerd process that runs the worker (what the targets "
        "read); **+ proxy** = wrangler's dev proxy workerd; **node** = wrangler's node process. Only the first "
        "exists when deployed.",
        "",
        "| Scenario | req/s | p50 ms | p99 ms | worker workerd CPU ms | + proxy workerd = total ms | wrangler (node) ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in TOKEN_TABLE_ORDER:
        v = tk[key]
        s = v["median"]
        out.append(
            f"| {v['label']} | {fmt(s['rps'], 0)} | {fmt(s['p50_ms'], 2)} | {fmt(s['p99_ms'], 2)} | "
            f"{fmt(s['cpu_ms_per_req_user'], 2)} | + {fmt(s['cpu_ms_per_req_entry'], 2)} = {fmt(s['cpu_ms_per_req'], 2)} | "
            f"{fmt(s['node_ms_per_req'], 2)} |")
    tmj = d["token_minus_js_token_ms"]
    out += [
        "",
        "Where the CPU goes (differences of the medians above; worker workerd CPU per request):",
        "",
        f"- floor of one request (JS no-op): {fmt(d['floor_js_ms'], 2)} ms (+ {fmt(d['floor_proxy_ms'], 2)} ms in "
        "wrangler's proxy workerd);",
        f"- `/health` − JS no-op (workers-rs, the worker's routing and its log line): {fmt(d['rust_overhead_ms'], 2)} ms, of "
        f"which: the smallest workers-rs worker − JS no-op (the wasm entry, `worker`'s glue, the panic-recovery shim) "
        f"{fmt(d['rust_floor_ms'], 2)} ms; `/health` − that worker (routing, the log line, the answer) "
        f"{fmt(d['health_minus_rust_floor_ms'], 2)} ms; for scale, one console.log line in JS (JS no-op + log − JS no-op) "
        f"{fmt(d['log_line_js_ms'], 2)} ms;",
        f"- the platform's own share of a Rust request (the smallest wasm worker − JS no-op: a synchronous call into "
        f"wasm and a Response made from it) {fmt(d['wasm_floor_ms'], 2)} ms; `/health`'s job done in JS (route, request "
        f"id, body, five headers, log line) − JS no-op {fmt(d['health_js_ms'], 2)} ms, and `/health` − that "
        f"{fmt(d['health_minus_health_js_ms'], 2)} ms;",
        f"- one RSA-2048 WebCrypto signature (sign-only − JS no-op): {fmt(d['sign_ms'], 2)} ms;",
        f"- the JS jose token worker (RSA) − JS no-op (verify, claims, sign, JSON, log line): "
        f"{fmt(d['js_token_minus_noop_ms'], 2)} ms; the worker's token (RSA) − `/health`: {fmt(d['token_hs_minus_health_ms'], 2)} ms;",
        f"- the worker's token − the JS jose worker's, same key: RSA {fmt(tmj['RS256'], 2)} ms, P-256 {fmt(tmj['ES256'], 2)} ms, "
        f"Ed25519 {fmt(tmj['EdDSA'], 2)} ms;",
        f"- ES256 session − HS256 session (cached JWKS): the worker {fmt(d['es_session_minus_hs_ms'], 2)} ms, the JS "
        f"worker {fmt(d['js_es_session_minus_hs_ms'], 2)} ms.",
    ]

    up = res["upload"]
    uj = res["upload_js"]
    out += [
        "",
        f"## Upload (wrk -t1 -c1 -d{m['upload_seconds']}s re-posting one batch; {m['rounds']} interleaved rounds, medians)",
        "",
        "One client uploads its queue sequentially: one request at a time. Subrequests = PostgREST requests the "
        "stand-in counted for one upload.",
        "",
        "| Worker | Batch | batches/s | ops/s | p50 ms | p99 ms | subrequests | worker workerd CPU ms | + proxy = total | vs one request per entry (ops/s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    mode_labels = {"rls": "the worker, rls", "atomic": "the worker, atomic", "rls_metrics": "the worker, rls, METRICS binding"}
    for mode, batches_ in up.items():
        for key, v in batches_.items():
            s = v["median"]
            out.append(
                f"| {mode_labels[mode]} | {v['label']} | {fmt(s['rps'], 1)} | {fmt(s['ops_per_s'], 0)} | {fmt(s['p50_ms'], 1)} | "
                f"{fmt(s['p99_ms'], 1)} | {v['subrequests']} | {fmt(s['cpu_ms_per_req_user'], 2)} | "
                f"+ {fmt(s['cpu_ms_per_req_entry'], 2)} = {fmt(s['cpu_ms_per_req'], 2)} | {fmt(v['ratio_vs_baseline'], 1, '×')} |")
    for js_key in COMPARED_UPLOAD_LABELS:
        for key, v in uj[js_key].items():
            s = v["median"]
            out.append(f"| {v['label']} | | {fmt(s['rps'], 1)} | – | {fmt(s['p50_ms'], 1)} | {fmt(s['p99_ms'], 1)} | 1 | "
                       f"{fmt(s['cpu_ms_per_req_user'], 2)} | + {fmt(s['cpu_ms_per_req_entry'], 2)} = "
                       f"{fmt(s['cpu_ms_per_req'], 2)} | |")
    s = uj["noop"]["median"]
    out.append(f"| {uj['noop']['label']} | | {fmt(s['rps'], 1)} | – | {fmt(s['p50_ms'], 1)} | {fmt(s['p99_ms'], 1)} | 0 | "
               f"{fmt(s['cpu_ms_per_req_user'], 2)} | + {fmt(s['cpu_ms_per_req_entry'], 2)} = {fmt(s['cpu_ms_per_req'], 2)} | |")
    bl = res["baseline"]
    out += [
        "",
        f"One request per entry (bench/baseline.py: straight to the stand-in, one keep-alive connection, as the "
        f"client-side connectors do): PUT todos {fmt(bl['put']['median']['ops_per_s'], 0)} ops/s, mixed batch "
        f"{fmt(bl['mixed']['median']['ops_per_s'], 0)} ops/s.",
    ]

    wu = res.get("warmups") or {}
    if wu:
        out += ["", "## Warm-up: each row in steady state before its rounds", "",
                f"Each row's requests are repeated before its rounds (windows of 1 s for tokens, "
                f"{m.get('upload_warmup_seconds', '?')} s for uploads) until, in {WARMUP_QUIET_WINDOWS} windows in a "
                f"row, the worker's workerd process spent at most {WARMUP_BACKGROUND_SHARE:.0%} of its main thread's "
                "CPU on its other threads: V8's optimizing compiler has then recompiled what the requests run (warm_up in bench/run.py). "
                "Background = those threads' CPU during the warm-up: mostly that tier-up, a cost of each new isolate "
                "that the rounds below do not carry (a row that shares a worker with an earlier row finds part of its "
                "code compiled already).",
                "",
                "| Row | warm-up s | requests | background CPU ms | settled |",
                "|---|---:|---:|---:|---|"]
        for key, v in wu.items():
            out.append(f"| {key} | {v['seconds']} | {v['requests']} | {fmt(v['background_cpu_ms'], 0)} | "
                       f"{'yes' if v['settled'] else 'no (cap reached)'} |")

    mc = res.get("metrics_cost") or []
    if mc:
        out += ["", "## The METRICS binding (issue 16): the same rows with and without it", "",
                "| Row | without ms | with ms | difference | per-round differences | noise (spread of the row without, over its rounds) |",
                "|---|---:|---:|---:|---|---:|"]
        for r in mc:
            out.append(f"| {r['label']} | {fmt(r['without_ms'], 2)} | {fmt(r['with_ms'], 2)} | {r['diff_ms']:+.2f} | "
                       f"{', '.join(f'{x:+.2f}' for x in r['round_diffs_ms'])} | {fmt(r['noise_ms'], 2)} |")

    c = res["cold_start"]
    cm = c["median"]
    n = len(next(iter(c["samples"].values()))) - 1
    out += [
        "",
        f"## Cold start: the first request in a fresh isolate ({n} isolates per row, medians)",
        "",
        "Each script runs in a new isolate per sample through the Worker Loader binding (bench/cold/loader.js), "
        "all in one workerd process; CPU = that process's CPU (all threads) during the request. **first request** = "
        "a fresh isolate's first request (isolate creation, the script's compile/instantiate/top-level evaluation, "
        "the request); **warm** = the next request in the same isolate; **own** = first request − the JS no-op "
        f"worker's first request ({fmt(c['runtime_cpu_ms'], 1)} ms: the runtime's share of a fresh isolate, with the "
        "loader's forwarding). **process's first** = the first isolate of that script in the process (round 0, not "
        "in the medians).",
        "",
        "| Script, first request | first request CPU ms | own CPU ms | of which load / request | first request wall ms "
        "| warm CPU ms / wall ms | spread of first-request CPU (max − min) | process's first: CPU ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, (label, _script) in COLD_KINDS.items():
        v = cm[kind]
        split = (f"{fmt(v['load_cpu_ms'], 1)} / {fmt(v['request_cpu_ms'], 1)}" if v.get("load_cpu_ms") is not None
                 else "–")
        out.append(f"| {label} | {fmt(v['first_cpu_ms'], 1)} | {fmt(v['own_cpu_ms'], 1)} | {split} | "
                   f"{fmt(v['first_wall_ms'], 1)} | {fmt(v['warm_cpu_ms'], 2)} / {fmt(v['warm_wall_ms'], 2)} | "
                   f"{fmt(v['first_cpu_spread_ms'], 1)} | {fmt(v['process_first_cpu_ms'], 1)} |")
    out += ["", "**of which load / request**: load = the script's \"loaded only\" row's own CPU (its modules compiled, "
            "instantiated and evaluated, behind a JS wrapper that answers itself); request = the first request's CPU "
            "minus that row's first request (the script's first run of its request path: lazy wasm compilation, JIT "
            "warm-up, key imports). Near-empty scripts' load is within the runtime's share (–)."]

    b = res["bundle"]
    out += ["", "## Bundle size", ""]
    if b.get("skipped"):
        out.append("Skipped (BENCH_SKIP_BUNDLE).")
    else:
        jb = res.get("js_bundle")
        out += [
            "| What | Size |",
            "|---|---:|",
            f"| wasm, raw | {fmt(b['wasm_bytes'])} B ({b['wasm_bytes'] / 1024:,.1f} KiB) |",
            f"| wasm, gzip -6 / -9 | {fmt(b['wasm_gzip6_bytes'])} B / {fmt(b['wasm_gzip9_bytes'])} B |",
            f"| `wrangler deploy --dry-run` total upload | {fmt(b['wrangler_total_kib'], 2)} KiB |",
            f"| `wrangler deploy --dry-run` gzip | {fmt(b['wrangler_gzip_kib'], 2)} KiB |",
        ]
        if jb:
            out.append(f"| the JS token worker (jose bundled), total / gzip | {fmt(jb['total_kib'], 2)} KiB / "
                       f"{fmt(jb['gzip_kib'], 2)} KiB |")
        out += ["", f"wrangler's line: `{b['wrangler_line']}` (dry run incl. the [build] command: {b['dry_run_seconds']:.0f} s)."]
    mem = res.get("memory") or {}
    if mem.get("lines"):
        out += ["", "## Peak memory of 5 MiB uploads (tests/upload_memory.rs, native)", "", "```", *mem["lines"], "```"]
    out += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    problems = res.get("problems") or []
    if problems:
        out += ["", "## Problems seen during the run", ""] + [f"- {p}" for p in problems]
    return "\n".join(out) + "\n"


# =========================================================================== main
# The PUT batches the JavaScript upload workers are measured with (they forward PUTs only).
FLOOR_BATCHES = ("put1", "put1000")
# The workers the worker's uploads are compared with (bench/README.md, "The JavaScript workers").
COMPARED_UPLOAD_LABELS = {
    "js_rls": "plain JS worker (bench/upload-floor/worker.js `/forward`: read, JSON.parse, rows, JSON.stringify, one upsert)",
    "js_atomic": "plain JS worker (`/atomic`: the same as one `rpc/powersync_apply_transaction` call)",
    "js_full_rls": "JS worker + session check (jose) + log line (bench/js/upload.js `/rls`)",
    "js_full_atomic": "JS worker + session check (jose) + log line (bench/js/upload.js `/atomic`)",
    "rust_rls": "the plain JS worker's `/forward` in Rust (bench/rust-upload-floor: workers-rs, serde_json)",
    "rust_atomic": "the plain JS worker's `/atomic` in Rust (bench/rust-upload-floor)",
}
TOKEN_TABLE_ORDER = ("noop_js", "noop_log_js", "health_js", "wasm_floor", "rust_floor", "health", "sign_only", "token_hs256", "js_token_rs256", "token_key_es256",
                     "js_token_es256", "token_key_eddsa", "js_token_eddsa", "token_es256", "js_token_es256_session",
                     "token_hs256_metrics")
# The token endpoint per PowerSync key type (HS256 session), and the JS jose worker with the same key type.
KEY_TYPES = (("RS256", "RSA-2048", "token_hs256", "js_token_rs256"),
             ("ES256", "P-256", "token_key_es256", "js_token_es256"),
             ("EdDSA", "Ed25519", "token_key_eddsa", "js_token_eddsa"))


def js_bundle(main: Path) -> dict:
    """A JS worker bundled as wrangler would upload it (`wrangler deploy --dry-run`): its size,
    beside the worker's, and the bundled module (the cold-start loader runs it)."""
    out = Path(tempfile.mkdtemp(prefix="bench-js-bundle-"))
    try:
        (out / "wrangler.toml").write_text(f'name = "bench-js"\nmain = "{main}"\ncompatibility_date = "2026-11-01"\n')
        env = dict(os.environ, CI="true", WRANGLER_SEND_METRICS="false", NO_COLOR="1", WRANGLER_LOG_PATH=str(out / "logs"))
        proc = subprocess.run([str(WRANGLER), "deploy", "--dry-run", "--outdir", str(out / "dist")], cwd=out, env=env,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        m = re.search(r"Total Upload:\s*([\d.]+)\s*KiB\s*/\s*gzip:\s*([\d.]+)\s*KiB", proc.stdout + proc.stderr)
        bundled = out / "dist" / main.name
        if proc.returncode != 0 or not m or not bundled.exists():
            raise RuntimeError(f"wrangler deploy --dry-run of {main} failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
        return {"total_kib": float(m.group(1)), "gzip_kib": float(m.group(2)), "js": bundled.read_text()}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def summarize(runs: list[dict], keys=("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "cpu_ms_per_req_user",
                                     "cpu_ms_per_req_entry", "node_ms_per_req", "ops_per_s")) -> dict:
    return {k: median([r.get(k) for r in runs]) for k in keys}


def main() -> int:
    t_start = time.monotonic()
    problems: list[str] = []

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    def on_alarm(signum, frame):
        raise BenchTimeout(f"benchmark exceeded BENCH_TIME_LIMIT={TIME_LIMIT}s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TIME_LIMIT)

    with contextlib.ExitStack() as stack:
        # ---------------------------------------------------------------- memory (native)
        log("peak memory of a 5 MiB upload: cargo test --test upload_memory")
        memory = upload_memory()
        log(f"memory: {memory}")
        # ---------------------------------------------------------------- bundle (builds)
        if os.environ.get("BENCH_SKIP_BUNDLE"):
            bundle = {"skipped": True}
        else:
            log("bundle size: wrangler deploy --dry-run (runs the [build] command)")
            bundle = bundle_size()
            log(f"bundle: {bundle['wrangler_line']}; wasm {bundle['wasm_bytes']} B")
        snap = snapshot_build()
        stack.callback(shutil.rmtree, snap, ignore_errors=True)
        main_js = snap / "index.js"

        # ---------------------------------------------------------------- infrastructure
        log("starting PostgreSQL, the PostgREST stand-in and the JWKS server")
        pg, standin, jwks = start_infrastructure(stack)
        session_keys = SessionKeys()
        jwks.keys = [session_keys.jwk("ec", "ec-1")]
        ps_key = powersync_key("bench-1")
        es_key = powersync_key("bench-es256", "ES256")
        ed_key = powersync_key("bench-eddsa", "EdDSA")
        sign_vars = {"POWERSYNC_PRIVATE_KEY": ps_key["private_pem"], "ES256_PRIVATE_KEY": es_key["private_pem"],
                     "EDDSA_PRIVATE_KEY": ed_key["private_pem"]}
        issuer = f"{standin.url}/auth/v1"
        # UPLOAD_ATOMIC unset would use the atomic function (installed here): the REST rows
        # measure REST requests, so they say so; the atomic rows set it to true.
        base_vars = {**complete_vars(standin.url, jwks.url, ps_key, timeout_ms=30000),
                     "UPLOAD_ATOMIC": "false"}
        sub = str(uuid.uuid4())
        hs_token = make_token(sub, iss=issuer, expires_in=4 * 3600)
        now = int(time.time())
        es_token = jwt.encode({"iss": issuer, "aud": "authenticated", "sub": sub, "role": "authenticated",
                               "iat": now, "exp": now + 4 * 3600, "session_id": str(uuid.uuid4())},
                              session_keys.ec, algorithm="ES256", headers={"kid": "ec-1"})
        # The JS workers read the same settings as the worker (bench/js/*.js).
        js_token_vars = js_worker_vars(base_vars)

        # ---------------------------------------------------------------- workers
        log("starting the workers")
        # The Rust worker: rls (RSA key), atomic, the other two key types, and rls with the
        # Analytics Engine binding (issue 16: the metric write's cost).
        w_main = start_worker(base_vars, main_js)
        stack.callback(w_main.stop)
        w_atomic = start_worker({**base_vars, "UPLOAD_ATOMIC": "true"}, main_js)
        stack.callback(w_atomic.stop)
        w_es_key = start_worker({**base_vars, "POWERSYNC_PRIVATE_KEY": es_key["private_pem"],
                                 "POWERSYNC_KEY_ID": es_key["kid"]}, main_js)
        stack.callback(w_es_key.stop)
        w_ed_key = start_worker({**base_vars, "POWERSYNC_PRIVATE_KEY": ed_key["private_pem"],
                                 "POWERSYNC_KEY_ID": ed_key["kid"]}, main_js)
        stack.callback(w_ed_key.stop)
        w_metrics = WorkerProcess(base_vars, main=main_js, inspector=False, extra_config=METRICS_CONFIG)
        stack.callback(w_metrics.stop)
        # The JavaScript workers (bench/README.md, "The JavaScript workers").
        w_sign = start_worker(sign_vars, SIGN_ONLY)
        stack.callback(w_sign.stop)
        w_floor = start_worker({}, RUST_FLOOR)
        stack.callback(w_floor.stop)
        w_wasm_floor = start_worker({}, WASM_FLOOR)
        stack.callback(w_wasm_floor.stop)
        w_js = {}
        for alg, key in (("RS256", ps_key), ("ES256", es_key), ("EdDSA", ed_key)):
            w_js[alg] = start_worker(js_worker_vars(base_vars, key), JS_TOKEN)
            stack.callback(w_js[alg].stop)
        w_upload_floor = start_worker({"SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": ANON_KEY}, UPLOAD_FLOOR)
        stack.callback(w_upload_floor.stop)
        w_js_upload = start_worker(js_token_vars, JS_UPLOAD)
        stack.callback(w_js_upload.stop)
        w_rust_upload = start_worker({"SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": ANON_KEY}, RUST_UPLOAD_FLOOR)
        stack.callback(w_rust_upload.stop)
        for w in (w_main, w_atomic, w_es_key, w_ed_key, w_metrics, w_sign, w_floor, w_wasm_floor, *w_js.values(), w_upload_floor,
                  w_js_upload, w_rust_upload):
            if workerd_count(w.proc.pid) < 1:
                raise RuntimeError("no workerd process found under a wrangler dev process group")

        # sanity: every token scenario answers correctly before it is measured
        bearer = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
        for what, w, token, key in (("token HS256", w_main, hs_token, ps_key), ("token ES256", w_main, es_token, ps_key),
                                    ("token, P-256 key", w_es_key, hs_token, es_key),
                                    ("token, Ed25519 key", w_ed_key, hs_token, ed_key),
                                    ("token, METRICS binding", w_metrics, hs_token, ps_key),
                                    ("JS token RSA", w_js["RS256"], hs_token, ps_key),
                                    ("JS token RSA, ES256 session", w_js["RS256"], es_token, ps_key),
                                    ("JS token P-256", w_js["ES256"], hs_token, es_key),
                                    ("JS token Ed25519", w_js["EdDSA"], hs_token, ed_key)):
            r = w.get("/powersync-token", headers=bearer(token))
            check_token_response(r, key["public_jwk"], what)
            if set(r.json()) != {"token", "powersync_url", "endpoint", "expires_at", "user_id"}:
                raise RuntimeError(f"{what}: answer fields {sorted(r.json())}")
        if w_js["RS256"].get("/powersync-token", headers=bearer(hs_token + "x")).status_code != 401:
            raise RuntimeError("JS token worker accepted a bad signature")
        check_token_response(w_sign.get("/sign"), ps_key["public_jwk"], "sign-only")
        if (w_main.get("/health").status_code != 200 or w_sign.get("/noop").text != "ok"
                or w_sign.get("/noop-log").text != "ok" or w_floor.get("/").text != "ok"
                or w_wasm_floor.get("/").text != "ok" or w_sign.get("/health").json()["status"] != "ok"):
            raise RuntimeError("health / noop did not answer as expected")

        # ---------------------------------------------------------------- token rounds
        variants = {
            "noop_js": ("JS no-op request (sign-only worker `/noop`)", w_sign, "/noop", None),
            "noop_log_js": ("JS no-op + the worker's one log line (sign-only worker `/noop-log`)", w_sign, "/noop-log",
                            None),
            "health_js": ("`/health`'s job in JS (sign-only worker `/health`: route, request id, body, five headers, log line)",
                          w_sign, "/health", None),
            "wasm_floor": ("the smallest wasm worker (bench/wasm-floor: a synchronous wasm-bindgen export)", w_wasm_floor,
                           "/", None),
            "rust_floor": ("the smallest workers-rs worker (bench/rust-floor: `Response::ok`)", w_floor, "/", None),
            "health": ("`/health`", w_main, "/health", None),
            "sign_only": ("JS: one RSA-2048 WebCrypto signature, nothing else (sign-only worker)", w_sign, "/sign", None),
            "token_hs256": ("token, RSA-2048 key (RS256), HS256 session", w_main, "/powersync-token", hs_token),
            "js_token_rs256": ("JS jose worker, RSA-2048 key, HS256 session", w_js["RS256"], "/powersync-token", hs_token),
            "token_key_es256": ("token, P-256 key (ES256), HS256 session", w_es_key, "/powersync-token", hs_token),
            "js_token_es256": ("JS jose worker, P-256 key, HS256 session", w_js["ES256"], "/powersync-token", hs_token),
            "token_key_eddsa": ("token, Ed25519 key (EdDSA), HS256 session", w_ed_key, "/powersync-token", hs_token),
            "js_token_eddsa": ("JS jose worker, Ed25519 key, HS256 session", w_js["EdDSA"], "/powersync-token", hs_token),
            "token_es256": ("token, RSA-2048 key, ES256 session (cached JWKS)", w_main, "/powersync-token", es_token),
            "js_token_es256_session": ("JS jose worker, RSA-2048 key, ES256 session (cached remote JWKS)", w_js["RS256"],
                                       "/powersync-token", es_token),
            "token_hs256_metrics": ("token, RSA-2048 key, HS256 session, with the METRICS binding", w_metrics,
                                    "/powersync-token", hs_token),
        }
        log("token: warm-up")
        warmups: dict[str, dict] = {}

        def warmed(row: str, w: WorkerProcess, path: str, **how) -> None:
            """warm_up, kept for results.md under `row`."""
            warmups[row] = warm_up(w, path, **how)
            log(f"warm-up {row}: {warmups[row]}")

        for key, (_, w, path, token) in variants.items():
            warmed(f"token/{key}", w, path, window=1, max_seconds=TOKEN_WARMUP_MAX_SECONDS,
                   connections=TOKEN_CONNECTIONS, token=token)
        token_runs: dict[str, list[dict]] = {k: [] for k in variants}
        order = list(variants)
        for rnd in range(ROUNDS):
            rotated = order[rnd % len(order):] + order[:rnd % len(order)]
            for key in rotated:
                _, w, path, token = variants[key]
                run = wrk(w.url + path, seconds=TOKEN_SECONDS, connections=TOKEN_CONNECTIONS, cpu_of=w, token=token)
                run["round"] = rnd
                token_runs[key].append(run)
                if not run["ok"]:
                    problems.append(f"token round {rnd} {key}: wrk errors {run['errors']}")
                log(f"round {rnd + 1}/{ROUNDS} {key}: {run['rps']:.0f} req/s, p50 {run['p50_ms']:.2f} ms, "
                    f"CPU {run.get('cpu_ms_per_req_user', 0):.2f} ms/req")
        token = {key: {"label": label, "runs": token_runs[key], "median": summarize(token_runs[key])}
                 for key, (label, *_rest) in variants.items()}

        # ---------------------------------------------------------------- uploads
        log("upload: preparing batches")
        batches = seeded_batches(pg.dsn, sub)
        work = Path(tempfile.mkdtemp(prefix="bench-upload-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        for key, b in batches.items():
            (work / f"{key}.json").write_text(b["body"])
            (work / f"{key}.entries.json").write_text(json.dumps(b["entries"]))
        workers = {"rls": w_main, "atomic": w_atomic, "rls_metrics": w_metrics}
        mode_batches = {"rls": list(batches), "atomic": list(batches), "rls_metrics": list(FLOOR_BATCHES)}
        probes = {}
        for mode, w in workers.items():
            for key in mode_batches[mode]:
                probes[(mode, key)] = probe_upload(w, standin, hs_token, batches[key])
                log(f"probe {mode} {key}: {probes[(mode, key)]['subrequests']} subrequests, "
                    f"{probes[(mode, key)]['latency_ms']:.0f} ms")
        verify_rows(pg.dsn, sub, batches)
        # The workers the uploads are compared with: (worker, path) per comparison row.
        compared_uploads = {
            "js_rls": (w_upload_floor, "/forward"),
            "js_atomic": (w_upload_floor, "/atomic"),
            "js_full_rls": (w_js_upload, "/rls"),
            "js_full_atomic": (w_js_upload, "/atomic"),
            "rust_rls": (w_rust_upload, "/forward"),
            "rust_atomic": (w_rust_upload, "/atomic"),
        }
        for js_key, (w, path) in compared_uploads.items():
            for key in FLOOR_BATCHES:
                standin.reset()
                r = w.post(path, data=batches[key]["body"],
                           headers={"Authorization": f"Bearer {hs_token}", "Content-Type": "application/json"})
                problems_here = check_standin_clean(standin.stats(), f"{js_key} probe {key}")
                if r.status_code != 200 or problems_here or standin.stats()["requests"] != 1:
                    raise RuntimeError(f"{js_key} probe {key}: {r.status_code} {r.text[:300]} {problems_here}")
        if w_js_upload.post("/rls", data=batches["put1"]["body"], headers={"Authorization": f"Bearer {hs_token}x"}).status_code != 401:
            raise RuntimeError("JS upload worker accepted a bad session")

        # V8 first runs each wasm function unoptimized (Liftoff) and recompiles the hot ones with
        # TurboFan on background threads once they have run enough: for the worker's 1,000-PUT
        # upload that takes a few hundred uploads (2026-12-07: 1.8 ms of background CPU per
        # request in the first 5 s, 0.3 at 20-25 s, under 0.1 from 25 s on). A deployed isolate
        # serving traffic has long done so: every upload row, the JS ones too, is warmed up until
        # that has settled.
        log("upload: warm-up")
        for key in batches:
            how = dict(window=UPLOAD_WARMUP_SECONDS, max_seconds=UPLOAD_WARMUP_MAX_SECONDS,
                       connections=UPLOAD_CONNECTIONS, method="POST", token=hs_token, body_file=work / f"{key}.json")
            for mode, w in workers.items():
                if key in mode_batches[mode]:
                    warmed(f"upload/{mode}/{key}", w, "/powersync-upload", **how)
            if key in FLOOR_BATCHES:
                for js_key, (w, path) in compared_uploads.items():
                    warmed(f"upload_js/{js_key}/{key}", w, path, **how)

        upload_runs = {(m, k): [] for m in workers for k in mode_batches[m]}
        floor_runs = {"noop": [], **{(j, k): [] for j in compared_uploads for k in FLOOR_BATCHES}}
        baseline_runs = {"put": [], "mixed": []}
        for rnd in range(ROUNDS):
            for key, b in batches.items():
                for mode, w in workers.items():
                    if key not in mode_batches[mode]:
                        continue
                    standin.reset()
                    run = wrk(w.url + "/powersync-upload", seconds=UPLOAD_SECONDS, connections=UPLOAD_CONNECTIONS,
                              cpu_of=w, method="POST", token=hs_token, body_file=work / f"{key}.json")
                    stats = standin.stats()
                    run["round"] = rnd
                    run["ops_per_s"] = run["rps"] * len(b["entries"])
                    run["standin_requests"] = stats["requests"]
                    run["subrequests_per_batch_observed"] = stats["requests"] / run["requests"] if run["requests"] else None
                    bad = check_standin_clean(stats, f"upload {mode} {key} round {rnd}")
                    if not run["ok"] or bad:
                        run["ok"] = False
                        problems.extend(bad or [f"upload {mode} {key} round {rnd}: wrk errors {run['errors']}"])
                    upload_runs[(mode, key)].append(run)
                    log(f"round {rnd + 1}/{ROUNDS} upload {mode} {key}: {run['ops_per_s']:.0f} ops/s, "
                        f"CPU {run.get('cpu_ms_per_req_user', 0):.2f} ms/req")
                if key not in FLOOR_BATCHES:
                    continue
                for js_key, (w, path) in compared_uploads.items():
                    standin.reset()
                    run = wrk(w.url + path, seconds=UPLOAD_SECONDS, connections=UPLOAD_CONNECTIONS, cpu_of=w,
                              method="POST", token=hs_token, body_file=work / f"{key}.json")
                    run["round"] = rnd
                    bad = check_standin_clean(standin.stats(), f"{js_key} {key} round {rnd}")
                    if not run["ok"] or bad:
                        run["ok"] = False
                        problems.extend(bad or [f"{js_key} {key} round {rnd}: wrk errors {run['errors']}"])
                    floor_runs[(js_key, key)].append(run)
                    log(f"round {rnd + 1}/{ROUNDS} {js_key} {key}: CPU {run.get('cpu_ms_per_req_user', 0):.2f} ms/req")
            run = wrk(w_sign.url + "/noop", seconds=UPLOAD_SECONDS, connections=UPLOAD_CONNECTIONS, cpu_of=w_sign)
            run["round"] = rnd
            floor_runs["noop"].append(run)
            for kind, source in (("put", "put1000"), ("mixed", "mixed")):
                run = run_baseline(standin, hs_token, work / f"{source}.entries.json", UPLOAD_SECONDS)
                run["round"] = rnd
                run["p50_ms"] = run["latency_ms"]["p50"]
                run["p99_ms"] = run["latency_ms"]["p99"]
                baseline_runs[kind].append(run)
                problems.extend(run["problems"])
                log(f"round {rnd + 1}/{ROUNDS} baseline {kind}: {run['ops_per_s']:.0f} ops/s")
        # The baseline stops mid-batch; one more checked upload of every batch restores the
        # batches' end state, which the database must then hold.
        for key, b in batches.items():
            probe_upload(w_main, standin, hs_token, b)
        verify_rows(pg.dsn, sub, batches)

        baseline = {k: {"runs": v, "median": summarize(v, ("ops_per_s", "p50_ms", "p99_ms"))}
                    for k, v in baseline_runs.items()}
        upload = {m: {} for m in workers}
        for (mode, key), runs in upload_runs.items():
            kind = "mixed" if key == "mixed" else "put"
            ratios = [r["ops_per_s"] / b["ops_per_s"] for r, b in zip(runs, baseline_runs[kind]) if b["ops_per_s"]]
            upload[mode][key] = {
                "label": batches[key]["label"], "entries": len(batches[key]["entries"]),
                "subrequests": probes[(mode, key)]["subrequests"],
                "worker_reported_subrequests": probes[(mode, key)]["worker_reported_subrequests"],
                "probe": probes[(mode, key)],
                "runs": runs, "median": summarize(runs),
                "baseline_ops_per_s": baseline[kind]["median"]["ops_per_s"],
                "ratio_vs_baseline": median(ratios), "ratios_vs_baseline": ratios,
            }
        upload_js = {"noop": {"label": "JS no-op request (sign-only worker `/noop`), one connection",
                              "runs": floor_runs["noop"], "median": summarize(floor_runs["noop"])}}
        for (js_key, key), runs in ((k, v) for k, v in floor_runs.items() if k != "noop"):
            upload_js.setdefault(js_key, {})[key] = {"label": f"{COMPARED_UPLOAD_LABELS[js_key]}, {batches[key]['label']}",
                                                     "runs": runs, "median": summarize(runs)}
        jwks_fetches = jwks.fetches

        # ---------------------------------------------------------------- cold start (fresh isolates)
        # Last, with the other workers stopped, so that their idle processes do not share the cores.
        for w in (w_atomic, w_es_key, w_ed_key, w_metrics, *w_js.values(), w_js_upload, w_upload_floor, w_main, w_sign,
                  w_floor, w_wasm_floor, w_rust_upload):
            w.stop()
        log("cold start: bundling the JS token worker, starting the loader")
        js_token_bundle = js_bundle(JS_TOKEN)
        js_token_env = js_worker_vars(base_vars, ps_key)
        loader, loader_dir = start_cold_loader(
            {"rust": {"js": main_js.read_text(), "wasm": (snap / "index_bg.wasm").read_bytes()},
             "noop": {"js": SIGN_ONLY.read_text()}, "token": {"js": js_token_bundle["js"]},
             "upload": {"js": UPLOAD_FLOOR.read_text()},
             **{name: {"js": main.read_text(), "wasm": (main.parent / "index_bg.wasm").read_bytes()}
                for name, main in (("wasm_floor", WASM_FLOOR), ("rust_floor", RUST_FLOOR),
                                   ("rust_upload", RUST_UPLOAD_FLOOR))}},
            {"rust": base_vars, "noop": sign_vars, "token": js_token_env,
             "upload": {"SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": ANON_KEY},
             "rust_upload": {"SUPABASE_URL": standin.url, "SUPABASE_ANON_KEY": ANON_KEY}})
        stack.callback(shutil.rmtree, loader_dir, ignore_errors=True)
        stack.callback(loader.stop)
        loader_pid = workerd_user_pid(loader.proc.pid, loader.port)
        if loader_pid is None:
            raise RuntimeError("cold start: the loader's workerd process was not found")
        upload_headers = {**bearer(hs_token), "Content-Type": "application/json"}
        cold_requests = {
            "noop_js": ("GET", "/noop", None, None),
            "rust_load": ("GET", "/", None, None),
            "js_token_load": ("GET", "/", None, None),
            "health": ("GET", "/health", None, None),
            "js_token": ("GET", "/powersync-token", bearer(hs_token), None),
            "token": ("GET", "/powersync-token", bearer(hs_token), None),
            "js_put1000": ("POST", "/forward", upload_headers, batches["put1000"]["body"]),
            "put1000": ("POST", "/powersync-upload", upload_headers, batches["put1000"]["body"]),
            "wasm_floor": ("GET", "/", None, None),
            "rust_floor": ("GET", "/", None, None),
            "rust_put1000": ("POST", "/forward", upload_headers, batches["put1000"]["body"]),
        }
        cold_samples: dict[str, list[dict]] = {k: [] for k in cold_requests}
        for i in range(COLD_RUNS + 1):  # round 0: the process's first load of each script, reported apart
            for kind, (method, path, headers, data) in cold_requests.items():
                sample = cold_sample(loader, loader_pid, COLD_KINDS[kind][1], f"{kind}-{i}", method, path,
                                     headers=headers, data=data)
                sample["round"] = i
                cold_samples[kind].append(sample)
                log(f"cold start {i}/{COLD_RUNS} {kind}: first request {sample['first_cpu_ms']:.1f} ms CPU / "
                    f"{sample['first_wall_ms']:.1f} ms wall; warm {sample['warm_cpu_ms']:.2f} ms CPU")
        cold = {"samples": cold_samples, **cold_summary(cold_samples)}
        js_bundle_size = {k: v for k, v in js_token_bundle.items() if k != "js"}

    # -------------------------------------------------------------------- derived & targets
    med = {k: token[k]["median"] for k in token}

    def diff(a, b):
        return None if a is None or b is None else a - b

    def cpu(key):  # the target's metric: the worker's own workerd process
        return med[key]["cpu_ms_per_req_user"]

    def per_round(rust_runs, js_runs):
        """Rust/JS CPU ratio of each round (the spread shown beside the ratio of the medians)."""
        return [a["cpu_ms_per_req_user"] / b["cpu_ms_per_req_user"] for a, b in zip(rust_runs, js_runs)
                if a.get("cpu_ms_per_req_user") is not None and b.get("cpu_ms_per_req_user")]

    def spread(ratios):
        return f"rounds {min(ratios):.2f}–{max(ratios):.2f}" if ratios else "no rounds"

    derived = {
        "floor_js_ms": cpu("noop_js"),
        "floor_proxy_ms": med["noop_js"]["cpu_ms_per_req_entry"],
        "rust_overhead_ms": diff(cpu("health"), cpu("noop_js")),
        "log_line_js_ms": diff(cpu("noop_log_js"), cpu("noop_js")),
        "rust_floor_ms": diff(cpu("rust_floor"), cpu("noop_js")),
        "wasm_floor_ms": diff(cpu("wasm_floor"), cpu("noop_js")),
        "health_js_ms": diff(cpu("health_js"), cpu("noop_js")),
        "health_minus_health_js_ms": diff(cpu("health"), cpu("health_js")),
        "health_minus_rust_floor_ms": diff(cpu("health"), cpu("rust_floor")),
        "sign_ms": diff(cpu("sign_only"), cpu("noop_js")),
        "token_hs_minus_health_ms": diff(cpu("token_hs256"), cpu("health")),
        "js_token_minus_noop_ms": diff(cpu("js_token_rs256"), cpu("noop_js")),
        "token_minus_js_token_ms": {alg: diff(cpu(r), cpu(j)) for alg, _, r, j in KEY_TYPES},
        "es_session_minus_hs_ms": diff(cpu("token_es256"), cpu("token_hs256")),
        "js_es_session_minus_hs_ms": diff(cpu("js_token_es256_session"), cpu("js_token_rs256")),
    }

    targets = []

    def ratio_target(target, rust_key, js_key, limit, rust_runs, js_runs, rust_ms, js_ms, extra=""):
        ratio = rust_ms / js_ms if js_ms else None
        rounds = per_round(rust_runs, js_runs)
        targets.append({"target": target, "value": ratio, "rounds": rounds,
                        "measured": f"{ratio:.2f}× ({rust_ms:.2f} vs {js_ms:.2f} ms; {spread(rounds)}){extra}",
                        "pass": ratio is not None and ratio <= limit})

    ratio_target(f"`/health` ≤ {TARGET_HEALTH_VS_NOOP:.2f}× a JS no-op request (worker workerd CPU)", "health", "noop_js",
                 TARGET_HEALTH_VS_NOOP, token_runs["health"], token_runs["noop_js"], cpu("health"), cpu("noop_js"))
    for what, key in (("the smallest wasm worker (bench/wasm-floor: the platform's floor for Rust)", "wasm_floor"),
                      ("the smallest workers-rs worker (bench/rust-floor)", "rust_floor"),
                      ("`/health`", "health")):
        ratio = cpu(key) / cpu("noop_js") if cpu(key) and cpu("noop_js") else None
        with_log = cpu(key) / cpu("noop_log_js") if cpu(key) and cpu("noop_log_js") else None
        targets.append({"target": f"info: {what} vs a JS no-op / vs a JS no-op that writes the same one log line",
                        "measured": f"{fmt(ratio, 2)}× / {fmt(with_log, 2)}× ({fmt(cpu(key), 2)} vs {fmt(cpu('noop_js'), 2)} / "
                                    f"{fmt(cpu('noop_log_js'), 2)} ms)",
                        "value": ratio, "pass": None, "info": True})
    job = cpu("health_js") / cpu("noop_js") if cpu("health_js") and cpu("noop_js") else None
    vs_job = cpu("health") / cpu("health_js") if cpu("health") and cpu("health_js") else None
    targets.append({"target": "info: `/health`'s job in JS (the sign-only worker's `/health`) vs a JS no-op; `/health` vs it",
                    "measured": f"{fmt(job, 2)}× ({fmt(cpu('health_js'), 2)} vs {fmt(cpu('noop_js'), 2)} ms); "
                                f"{fmt(vs_job, 2)}× ({fmt(cpu('health'), 2)} ms; "
                                f"{spread(per_round(token_runs['health'], token_runs['health_js']))})",
                    "value": job, "pass": None, "info": True})
    for alg, name, rust_key, js_key in KEY_TYPES:
        ratio_target(f"token, {name} key, HS256 session ≤ {TARGET_TOKEN_VS_JS:.2f}× the JS jose worker with the same key",
                     rust_key, js_key, TARGET_TOKEN_VS_JS, token_runs[rust_key], token_runs[js_key], cpu(rust_key), cpu(js_key))
    ratio_target(f"token, ES256 session (cached JWKS), RSA key ≤ {TARGET_ES256_SESSION_VS_JS:.2f}× the JS jose worker "
                 "(cached remote JWKS)", "token_es256", "js_token_es256_session", TARGET_ES256_SESSION_VS_JS,
                 token_runs["token_es256"], token_runs["js_token_es256_session"], cpu("token_es256"),
                 cpu("js_token_es256_session"))
    for key, limit in (("put1000", TARGET_PUT1000_VS_JS), ("put1", TARGET_PUT1_VS_JS)):
        for mode in ("rls", "atomic"):
            js = upload_js[f"js_{mode}"][key]
            full = upload_js[f"js_full_{mode}"][key]["median"]["cpu_ms_per_req_user"]
            floor = upload_js[f"rust_{mode}"][key]["median"]["cpu_ms_per_req_user"]
            rust = upload[mode][key]
            rust_ms, js_ms = rust["median"]["cpu_ms_per_req_user"], js["median"]["cpu_ms_per_req_user"]
            ratio_target(f"upload, {rust['label']} ({mode}) ≤ {limit:.2f}× the plain JS worker doing the same "
                         "(worker workerd CPU)", mode, f"js_{mode}", limit, rust["runs"], js["runs"], rust_ms, js_ms,
                         f"; info: {rust_ms / full:.2f}× the JS worker that also verifies the session and logs "
                         f"({full:.2f} ms); the plain JS worker's job in Rust (bench/rust-upload-floor) "
                         f"{floor:.2f} ms = {floor / js_ms:.2f}× the plain JS worker, and the worker {rust_ms / floor:.2f}× it")
    for mode in ("rls", "atomic"):
        m = upload[mode]["mixed"]
        targets.append({"target": f"info: upload, mixed 100 entries over 3 tables ({mode})", "pass": None, "info": True,
                        "value": m["median"]["cpu_ms_per_req_user"],
                        "measured": f"{m['median']['cpu_ms_per_req_user']:.2f} ms CPU, {m['subrequests']} subrequest(s), "
                                    f"{m['ratio_vs_baseline']:.1f}× the one-request-per-entry baseline's ops/s"})
    for rust, js, label in COLD_PAIRS:
        pair = cold["pairs"][rust]
        r, j = cold["median"][rust], cold["median"][js]
        ok = pair["cpu_ratio"] is not None and pair["cpu_ratio"] <= TARGET_COLD_VS_JS
        targets.append({"target": f"cold start, {label}: CPU of the first request in a fresh isolate "
                                  f"≤ {TARGET_COLD_VS_JS:.0f}× the JS worker's",
                        "value": pair["cpu_ratio"], "pass": ok,
                        "measured": f"{pair['cpu_ratio']:.2f}× ({r['first_cpu_ms']:.1f} vs {j['first_cpu_ms']:.1f} ms; the "
                                    f"script's own share {r['own_cpu_ms']:.1f} vs {j['own_cpu_ms']:.1f} ms, the worker's "
                                    f"load {fmt(r.get('load_cpu_ms'), 1)} ms of it); wall "
                                    f"{r['first_wall_ms']:.1f} vs {j['first_wall_ms']:.1f} ms ({pair['wall_ratio']:.2f}×)"})
    cm = cold["median"]
    for what, rust, js in (("the smallest wasm worker (bench/wasm-floor, `GET /`: the platform's floor for any wasm "
                            "worker) vs the JS no-op", "wasm_floor", "noop_js"),
                           ("the smallest workers-rs worker (bench/rust-floor, `GET /`) vs the JS no-op", "rust_floor",
                            "noop_js"),
                           ("1,000 PUTs, the plain JS worker's job in Rust (bench/rust-upload-floor) vs the plain JS "
                            "worker", "rust_put1000", "js_put1000")):
        r, j = cm[rust]["first_cpu_ms"], cm[js]["first_cpu_ms"]
        targets.append({"target": f"info: cold start, {what}", "value": r / j if j else None, "pass": None, "info": True,
                        "measured": f"{fmt(r / j if j else None, 2)}× ({r:.1f} vs {j:.1f} ms; the script's own share "
                                    f"{cm[rust]['own_cpu_ms']:.1f} vs {cm[js]['own_cpu_ms']:.1f} ms)"})
    if bundle.get("skipped") or bundle.get("wrangler_gzip_kib") is None:
        targets.append({"target": "gzipped bundle ≤ 500 KB", "measured": "not measured", "value": None, "pass": None})
    else:
        gz = bundle["wrangler_gzip_kib"] * 1024
        targets.append({"target": "gzipped bundle ≤ 500 KB (wrangler's gzip figure)",
                        "measured": f"{bundle['wrangler_gzip_kib']:.2f} KiB = {gz / 1000:.0f} KB"
                                    + f" (the JS jose token worker: {js_bundle_size['gzip_kib']:.2f} KiB)",
                        "value": gz, "pass": gz <= TARGET_BUNDLE_GZIP_BYTES})
    if memory.get("worst_above_body_mib") is not None:
        worst = memory["worst_above_body_mib"]
        over = [f"{m.group(1).strip()} ({m.group(2)} MiB)" for m in
                (re.match(r"(.*?)\s+body\s+[\d.]+ MiB\s+peak above it\s+([\d.]+) MiB", line) for line in memory["lines"])
                if m and float(m.group(2)) > TARGET_MEMORY_ABOVE_BODY_MIB]
        targets.append({"target": f"peak memory of a 5 MiB upload ≤ body + {TARGET_MEMORY_ABOVE_BODY_MIB:.0f} MiB "
                                  "(tests/upload_memory.rs, native, counting allocator)",
                        "measured": f"body + {worst:.2f} MiB (the worst of its hostile bodies; above 16 MiB: "
                                    f"{', '.join(over) or 'none'}; the test itself asserts < 16 MiB)", "value": worst,
                        "pass": worst <= TARGET_MEMORY_ABOVE_BODY_MIB})
    else:
        targets.append({"target": f"peak memory of a 5 MiB upload ≤ body + {TARGET_MEMORY_ABOVE_BODY_MIB:.0f} MiB",
                        "measured": "not measured in this run (" + memory.get("error", "BENCH_SKIP_MEMORY") + ")",
                        "value": None, "pass": None})
    # Issue 16: the Analytics Engine data point's cost, same configuration with and without the binding.
    metric_rows = [("token (RSA key, HS256 session)", token_runs["token_hs256_metrics"], token_runs["token_hs256"])]
    metric_rows += [(f"upload, {batches[k]['label']} (rls)", upload["rls_metrics"][k]["runs"], upload["rls"][k]["runs"])
                    for k in FLOOR_BATCHES]
    metrics_cost = []
    for label, with_runs, without_runs in metric_rows:
        w_ms = median([r.get("cpu_ms_per_req_user") for r in with_runs])
        wo_ms = median([r.get("cpu_ms_per_req_user") for r in without_runs])
        diffs = [a["cpu_ms_per_req_user"] - b["cpu_ms_per_req_user"] for a, b in zip(with_runs, without_runs)]
        wo_values = [r["cpu_ms_per_req_user"] for r in without_runs]
        noise = (max(wo_values) - min(wo_values)) if len(wo_values) > 1 else None
        metrics_cost.append({"label": label, "with_ms": w_ms, "without_ms": wo_ms, "diff_ms": w_ms - wo_ms,
                             "round_diffs_ms": diffs, "noise_ms": noise})
        targets.append({"target": f"info: the METRICS binding (one Analytics Engine data point per request), {label}",
                        "value": w_ms - wo_ms, "pass": None, "info": True,
                        "measured": f"{w_ms - wo_ms:+.2f} ms ({w_ms:.2f} with vs {wo_ms:.2f} ms without; per-round "
                                    f"differences {', '.join(f'{d:+.2f}' for d in diffs)}; the run's noise: the row without "
                                    f"the binding spans {noise:.2f} ms over its rounds)" if noise is not None else
                                    f"{w_ms - wo_ms:+.2f} ms ({w_ms:.2f} with vs {wo_ms:.2f} ms without)"})
    for mode in ("rls", "atomic"):
        ratio = upload[mode]["put1000"]["ratio_vs_baseline"]
        targets.append({"target": f"info: upload throughput vs one request per entry (1,000-PUT batch, {mode})",
                        "measured": f"{ratio:.1f}× ({upload[mode]['put1000']['median']['ops_per_s']:.0f} vs "
                                    f"{upload[mode]['put1000']['baseline_ops_per_s']:.0f} ops/s), "
                                    f"{upload[mode]['put1000']['subrequests']} subrequest(s)",
                        "value": ratio, "pass": None, "info": True})
    if problems:
        for t in targets:
            t["measured"] += " (see Problems)"

    notes = [
        "Every ratio compares the Rust worker with a JavaScript worker measured in the same run, interleaved "
        "(rounds rotate the order), on the same `wrangler dev`/workerd: the ratio of the medians, with each "
        "round's own ratio beside it. The JavaScript workers are in bench/ (bench/README.md says why each is fair).",
        "CPU per request: utime+stime from /proc/<pid>/stat of the workerd process that runs the worker, after "
        "minus before each wrk run, divided by the requests wrk completed. wrangler's dev proxy (a second "
        "workerd) and node do not exist when deployed and are shown apart; wrk, the stand-in and PostgreSQL are "
        "not included.",
        "Uploads: wrk re-posts one fixed body (bench/wrk/bench.lua); re-sending a batch is idempotent, so every "
        "run does the same work. Each batch is first posted once and checked (every transaction `success`, exact "
        "subrequest count; the JS workers: 200 and one request), the rows are checked in PostgreSQL before and "
        "after, and every run checks the stand-in answered only 2xx.",
        "Cold start: bench/cold/loader.js gives each sample a new isolate through workerd's Worker Loader binding "
        "(one isolate per id) in one long-lived workerd process, the scripts as deployed (the worker's index.js + "
        "wasm; the JS token worker bundled by wrangler). CPU from /proc/<pid>/task/*/schedstat (ns) around each "
        "request. See bench/README.md for how this maps to production.",
        "The stand-in and the JWKS server (Python http.server) run with TCP_NODELAY in the benchmark: otherwise "
        "every response with a body waits ~40 ms for a delayed ACK (Nagle), an artefact real PostgREST does not have.",
        f"Session tokens: HS256 (SUPABASE_JWT_SECRET) and ES256 verified through the JWKS server ({jwks_fetches} "
        "JWKS fetch(es) before the cold-start samples: one per worker instance, Rust or JS, that saw an ES256 "
        "session; the key set is then cached in the isolate).",
        "The METRICS rows: the same worker configuration with `[[analytics_engine_datasets]] binding = \"METRICS\"` "
        "in its wrangler.toml (as deployed; wrangler dev's local dataset accepts the points and discards them), "
        "so the difference is building and handing over one data point per request.",
    ]

    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    wrangler_version = subprocess.run([str(WRANGLER), "--version"], capture_output=True, text=True,
                                      env=dict(os.environ, WRANGLER_SEND_METRICS="false")).stdout.strip().splitlines()
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("Copyright")[0].strip()
    total = None
    if os.environ.get("BENCH_T0"):
        with contextlib.suppress(ValueError):
            total = time.time() - float(os.environ["BENCH_T0"])
    res = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} cores, {platform.platform()}",
            "wrangler": f"wrangler {wrangler_version[-1] if wrangler_version else '?'}",
            "wrk": wrk_version,
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain")),
            "rounds": ROUNDS, "token_seconds": TOKEN_SECONDS, "token_connections": TOKEN_CONNECTIONS,
            "upload_seconds": UPLOAD_SECONDS, "upload_connections": UPLOAD_CONNECTIONS,
            "upload_warmup_seconds": UPLOAD_WARMUP_SECONDS,
            "bench_seconds": time.monotonic() - t_start, "total_seconds": total,
        },
        "targets": targets,
        "token": token,
        "derived": derived,
        "jwks_fetches": jwks_fetches,
        "upload": upload,
        "upload_js": upload_js,
        "warmups": warmups,
        "baseline": baseline,
        "metrics_cost": metrics_cost,
        "bundle": bundle,
        "js_bundle": js_bundle_size,
        "memory": memory,
        "cold_start": cold,
        "notes": notes,
        "problems": problems,
    }
    RESULTS_JSON.write_text(json.dumps(res, indent=2) + "\n")
    RESULTS_MD.write_text(render_markdown(res))
    signal.alarm(0)
    log(f"wrote {RESULTS_MD.relative_to(ROOT)} and {RESULTS_JSON.relative_to(ROOT)} "
        f"({res['meta']['bench_seconds']:.0f} s)")
    print()
    print(RESULTS_MD.read_text().split("## Token")[0])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)
    except BenchTimeout as e:
        print(f"\nbench: {e}; everything started was stopped", file=sys.stderr)
        sys.exit(124)
