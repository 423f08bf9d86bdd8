#!/usr/bin/env python3
"""Where the worker's CPU goes inside workerd, against the JavaScript workers it is compared with
(issue 19): `perf` samples of the workerd process that runs each worker, with V8's map of its
compiled code, so that every wasm function, JS function, V8 and workerd function is named. Not
part of `make bench`; `make bench-profile` runs it (about 6 minutes) and writes
bench/cpu_profile.md, and target/profiles/<scenario>.perf.data for `perf report -i` (which reads
the names of generated code from /tmp/perf-<pid>.map, left there for it).

    .venv/bin/python bench/cpu_profile.py                 # after `make build`
    CPU_PROFILE_ONLY=rls_put1000,js_put1000 ...           # some scenarios
    CPU_PROFILE_SECONDS=8 CPU_PROFILE_HZ=2999 ...         # knobs (these are the defaults)

Each scenario: one worker under `wrangler dev` as bench/run.py starts it (no inspector, no local
observability collector), warmed up until V8 has recompiled what the request runs (bench/run.py's
warm_up; at most CPU_PROFILE_WARMUP seconds, 90), then `perf record -g -p <its workerd>` while wrk
re-sends one request.
workerd runs with V8's `--perf-basic-prof` (through Miniflare's MINIFLARE_WORKERD_V8_FLAGS):
V8 writes /tmp/perf-<pid>.map, naming the code it generates. The worker is build/index.js with
target/names/index_bg.wasm: the shipped code plus the wasm name section, which scripts/build.sh
keeps aside for this.

A sample counts for the group of its innermost frame that is not a memory copy, an allocator or
the kernel (those count for whoever called them: a copy of a body inside `fetch` is `fetch`'s).
Each group's milliseconds per request are its share of the samples times the process's CPU per
request during the recording (measured from /proc, with perf's own cost in it, so somewhat above
bench/results.md's figures).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402  (bench/run.py: its helpers)
from tests.e2e.conftest import complete_vars, make_token  # noqa: E402

SECONDS = bench.env_int("CPU_PROFILE_SECONDS", 8)
WARMUP = bench.env_int("CPU_PROFILE_WARMUP", 90)  # at most; bench.warm_up
HZ = bench.env_int("CPU_PROFILE_HZ", 2999)
NAMED_WASM = ROOT / "target/names/index_bg.wasm"
OUT_DIR = ROOT / "target/profiles"
REPORT = ROOT / "bench/cpu_profile.md"

OURS = "wasm: the worker's own code"
SERDE = "wasm: serde_json"
RUST_STD = "wasm: Rust core, alloc, dlmalloc (copies, allocation, formatting)"
OTHER_WASM = "wasm: other crates (worker, wasm-bindgen, sha2, base64, ...)"
JS = "JS: the JS worker's code, or wasm-bindgen's glue"
V8 = "V8: built-ins and runtime (JSON, strings, objects, wasm<->JS calls)"
GC = "V8: garbage collection"
COMPILER = "V8: compiler (tier-up)"
API = "workerd: JS API (fetch, Request/Response, Headers, streams, console)"
CRYPTO = "workerd: WebCrypto (BoringSSL: signatures, HMAC, digests)"
IO = "workerd: I/O, HTTP, event loop, kernel"
GROUPS = (OURS, SERDE, RUST_STD, OTHER_WASM, JS, V8, GC, COMPILER, API, CRYPTO, IO)
CRATES = {"powersync_supabase_worker": OURS, "foldhash": OURS, "serde_json": SERDE, "serde_core": SERDE,
          "serde": SERDE, "core": RUST_STD, "alloc": RUST_STD, "std": RUST_STD, "dlmalloc": RUST_STD}
# Frames that count for their caller: copies, allocators, the kernel, libc.
PASS_THROUGH = re.compile(r"^(__mem|__str|tcmalloc|TCMalloc|absl|Absl|v8::internal::libc_|operator new|"
                          r"operator delete|free$|malloc$|__libc|_int_|\[unknown\])")
GC_RE = re.compile(r"Heap::|Scavenge|MarkCompact|Sweeper|cppgc|MinorMS|GCTracer|Evacuat|MarkingVisitor|"
                   r"ConcurrentMarking|MarkingBarrier")
CRYPTO_RE = re.compile(r"^_*(bn_|BN_|RSA_|rsa|EC_|ec_|ecp_|p256|fiat_|sha\d+_block|SHA\d+|EVP_|ED25519|x25519|"
                       r"CRYPTO_|HMAC|bssl::|edwards|ecdsa|ECDSA_|mulx?4x|sqrx?8x|ge_|sc_|md_|ERR_)")
COMPILER_RE = re.compile(r"compiler::|turboshaft|Maglev|wasm::Liftoff|WasmCompilationUnit|Compiler::|"
                         r"CompilationJob|BytecodeGenerator|Parser::|TierUp")


def wasm_crate(name: str) -> str:
    path = name.lstrip("<&").removeprefix("mut ").lstrip("<")
    first = re.split(r"::|\[| ", path, maxsplit=1)[0]
    return CRATES.get(first, OTHER_WASM)


def group_of(stack: list[tuple[str, str]]) -> str:
    """The group of one sample: its innermost frame that does not pass through (leaf first)."""
    for sym, dso in stack:
        if dso == "[kernel.kallsyms]" or dso.startswith("/usr/lib") or PASS_THROUGH.match(sym):
            continue
        if sym.startswith("JS:"):
            if sym.endswith(("-turbofan", "-liftoff")) or "wasm-function" in sym:
                return wasm_crate(sym[3:])
            return JS
        if COMPILER_RE.search(sym):
            return COMPILER
        if GC_RE.search(sym):
            return GC
        if sym.startswith(("Builtins_", "Builtin:", "Stub:", "v8::", "Runtime_", "unibrow::", "icu_")):
            return V8
        if CRYPTO_RE.match(sym) or "SubtleCrypto" in sym:
            return CRYPTO
        if sym.startswith(("workerd::api", "workerd::jsg")) or "jsg::" in sym[:60] or "api::" in sym[:60]:
            return API
        return IO
    return IO  # only kernel or libc frames: the event loop waiting, syscalls


def samples(data: Path):
    """Each sample's stack (leaf first) as (symbol, dso) pairs, from `perf script`."""
    proc = subprocess.Popen(["perf", "script", "-i", str(data), "-F", "ip,sym,dso"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, errors="replace")
    stack: list[tuple[str, str]] = []
    for line in proc.stdout:
        if line.startswith("\t"):
            rest = line.strip().split(" ", 1)[1] if " " in line.strip() else ""
            i = rest.rfind(" (")
            stack.append((rest[:i], rest[i + 2:-1]) if i >= 0 else (rest, ""))
        elif not line.strip() and stack:
            yield stack
            stack = []
    if stack:
        yield stack
    proc.wait()


def analyse(data: Path, cpu_ms_per_request: float) -> dict:
    groups: collections.Counter = collections.Counter()
    ours: collections.Counter = collections.Counter()
    for stack in samples(data):
        group = group_of(stack)
        groups[group] += 1
        if group == OURS:
            leaf = next(s for s, d in stack if s.startswith("JS:"))
            ours[re.sub(r"::h[0-9a-f]{16}.*$|-\d+-(turbofan|liftoff)$", "", leaf[3:])] += 1
    total = sum(groups.values()) or 1
    return {"samples": total,
            "groups": {g: groups[g] / total * cpu_ms_per_request for g in GROUPS},
            "ours": [(f, n / total * cpu_ms_per_request) for f, n in ours.most_common(12)]}


def profile_one(key: str, w, method: str, path: str, token: str | None, body: Path | None) -> dict:
    pid = bench.workerd_user_pid(w.proc.pid, w.port)
    url = w.url + path
    warm = bench.warm_up(w, path, window=2, max_seconds=WARMUP, connections=1, method=method, token=token,
                         body_file=body)
    bench.log(f"{key}: warm-up {warm}")
    data = OUT_DIR / f"{key}.perf.data"
    perf = subprocess.Popen(["perf", "record", "-F", str(HZ), "-g", "-o", str(data), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    cpu0 = bench.task_cpu_ms(pid)
    run = bench.wrk(url, seconds=SECONDS, connections=1, method=method, token=token, body_file=body)
    cpu1 = bench.task_cpu_ms(pid)
    perf.send_signal(2)  # it then writes its data and exits (with SIGINT's status)
    perf.wait(timeout=60)
    said = perf.stderr.read()
    if "Captured and wrote" not in said:
        raise RuntimeError(f"{key}: perf record failed: {said[-1000:]}")
    if not run["ok"]:
        raise RuntimeError(f"{key}: requests failed: {run['errors']}")
    cpu = (cpu1 - cpu0) / run["requests"]
    result = analyse(data, cpu)
    result.update(requests=run["requests"], cpu_ms_per_request=cpu)
    bench.log(f"{key}: {run['requests']} requests, {cpu:.2f} ms CPU per request (perf recording), "
              f"{result['samples']} samples")
    return result


def render(results: dict, labels: dict) -> str:
    keys = list(results)
    lines = [
        "# Where the CPU goes: perf profiles of the workers in workerd",
        "",
        f"Generated by `make bench-profile` (bench/cpu_profile.py) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; perf at {HZ} Hz for {SECONDS} s per "
        "scenario after a warm-up to steady state (bench/run.py's warm_up), wrk with one connection re-sending one request. Milliseconds of the "
        "worker's workerd process per request, by what was running (the script's docstring says how a "
        "sample is counted); the first row includes perf's own cost, so it runs above bench/results.md.",
        "",
        "| | " + " | ".join(labels[k] for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
        "| **CPU per request (ms)** | " + " | ".join(f"**{results[k]['cpu_ms_per_request']:.2f}**" for k in keys) + " |",
    ]
    for g in GROUPS:
        cells = [f"{results[k]['groups'][g]:.2f}" if results[k]["groups"][g] >= 0.005 else "–" for k in keys]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append("| samples | " + " | ".join(str(results[k]["samples"]) for k in keys) + " |")
    for k in keys:
        if results[k]["ours"]:
            lines += ["", f"**{labels[k]}**: the worker's own functions with the most samples (ms per request): "
                      + "; ".join(f"`{f}` {ms:.2f}" for f, ms in results[k]["ours"]) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    if shutil.which("perf") is None:
        print("perf is missing: `make bench-profile` installs it (Debian package linux-perf)", file=sys.stderr)
        return 1
    if not NAMED_WASM.exists() or NAMED_WASM.stat().st_mtime < (ROOT / "build/index_bg.wasm").stat().st_mtime:
        print(f"{NAMED_WASM} is missing or older than build/: run `FORCE_BUILD=1 make build`", file=sys.stderr)
        return 1
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    os.environ["MINIFLARE_WORKERD_V8_FLAGS"] = "--perf-basic-prof"
    with contextlib.ExitStack() as stack:
        named = Path(tempfile.mkdtemp(prefix="cpu-profile-build-"))
        stack.callback(shutil.rmtree, named, ignore_errors=True)
        shutil.copy2(ROOT / "build/index.js", named / "index.js")
        shutil.copy2(NAMED_WASM, named / "index_bg.wasm")
        pg, standin, jwks = bench.start_infrastructure(stack)
        ps_key = bench.powersync_key("profile-1", "RS256")
        worker_vars = complete_vars(standin.url, jwks.url, ps_key, timeout_ms=30000)
        js_vars = bench.js_worker_vars(worker_vars, ps_key)
        ed_key = bench.powersync_key("profile-ed", "EdDSA")
        ed_vars = complete_vars(standin.url, jwks.url, ed_key, timeout_ms=30000)
        js_ed_vars = bench.js_worker_vars(ed_vars, ed_key)
        sub = str(uuid.uuid4())
        token = make_token(sub, iss=f"{standin.url}/auth/v1", expires_in=4 * 3600)
        batches = bench.seeded_batches(pg.dsn, sub)
        work = Path(tempfile.mkdtemp(prefix="cpu-profile-bodies-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        for k in ("put1", "put1000"):
            (work / f"{k}.json").write_text(batches[k]["body"])

        worker = named / "index.js"
        atomic_vars = {**worker_vars, "UPLOAD_ATOMIC": "true"}
        scenarios = {  # key: (label, main, vars, method, path, token, body)
            "js_noop": ("JS no-op", bench.SIGN_ONLY, js_vars, "GET", "/noop", None, None),
            "rust_floor": ("the smallest workers-rs worker", bench.RUST_FLOOR, {}, "GET", "/", None, None),
            "health": ("`/health`", worker, worker_vars, "GET", "/health", None, None),
            "js_token": ("JS jose token (RSA)", bench.JS_TOKEN, js_vars, "GET", "/powersync-token", token, None),
            "token": ("token (RSA)", worker, worker_vars, "GET", "/powersync-token", token, None),
            "js_token_ed": ("JS jose token (Ed25519)", bench.JS_TOKEN, js_ed_vars, "GET", "/powersync-token", token,
                            None),
            "token_ed": ("token (Ed25519)", worker, ed_vars, "GET", "/powersync-token", token, None),
            "js_put1": ("plain JS, 1 PUT", bench.UPLOAD_FLOOR, js_vars, "POST", "/forward", token, "put1"),
            "rls_put1": ("1 PUT (rls)", worker, worker_vars, "POST", "/powersync-upload", token, "put1"),
            "js_put1000": ("plain JS, 1,000 PUTs", bench.UPLOAD_FLOOR, js_vars, "POST", "/forward", token, "put1000"),
            "js_session_put1000": ("JS with session + log, 1,000 PUTs", bench.JS_UPLOAD, js_vars, "POST", "/rls",
                                   token, "put1000"),
            "rls_put1000": ("1,000 PUTs (rls)", worker, worker_vars, "POST", "/powersync-upload", token, "put1000"),
            "atomic_put1000": ("1,000 PUTs (atomic)", worker, atomic_vars, "POST", "/powersync-upload", token,
                               "put1000"),
        }
        only = os.environ.get("CPU_PROFILE_ONLY")
        if only:
            scenarios = {k: v for k, v in scenarios.items() if k in only.split(",")}
        results, labels = {}, {}
        for key, (label, main_, vars_, method, path, tok, body) in scenarios.items():
            w = bench.start_worker(vars_, main_)
            try:
                results[key] = profile_one(key, w, method, path, tok, work / f"{body}.json" if body else None)
            finally:
                w.stop()
            labels[key] = label
        REPORT.write_text(render(results, labels))
        print(REPORT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
