#!/usr/bin/env python3
"""How large a transaction the atomic function applies within Supabase's statement timeout.

`make bench-atomic` (or `.venv/bin/python bench/atomic_limit.py`); not part of `make test`. See
bench/README.md, "Large atomic transactions".

Starts a throwaway PostgreSQL with the test schema (tests/sql/test_schema.sql: `authenticated`
has Supabase's `statement_timeout` of 8 s, `anon` 3 s) and sql/atomic_upload.sql, the PostgREST
stand-in in front of it (which applies the impersonated role's settings in each request's
transaction, as PostgREST 12 does), and then sends single transactions of N PUTs exactly as the
worker does in RLS mode: `POST /rest/v1/rpc/powersync_apply_transaction` with a user's token
(role `authenticated`), `client_id` and `transaction_id` (exactly once: the ledger records it).

Scenarios, each at 1,000 / 5,000 / 20,000 PUTs (BENCH_ATOMIC_SIZES), BENCH_ATOMIC_ROUNDS rounds
(default 3), median reported:

  * `todos, new rows`: PUTs of new rows to the demo's `todos` (7 columns, RLS, a foreign key);
  * `todos, existing rows`: the same rows PUT again (a re-upload: every row takes the upsert's
    conflict path);
  * `todos, PATCH`: one PATCH per existing row, each with its own data (the function applies
    PATCHes one statement at a time: its slowest kind of op);
  * `wide, new rows`: PUTs of new rows to a 32-column table (30 text columns of 40 characters,
    about 1.6 KB of JSON per row) with the same kind of RLS policy;
  * `REST upsert (fallback)`: the same new `todos` rows as ONE bulk upsert
    (`POST /rest/v1/todos?on_conflict=id`), which is what the bridge sends when it falls back to
    REST after an atomic call timed out.

Each figure is the wall time of the HTTP call through the stand-in (its JSON handling included;
PostgREST would add its own), and, for the atomic scenarios, the database time of the same call
made directly as `authenticated` (no HTTP, the statement alone: what `statement_timeout`
limits). Then the limit: starting from 8 s / (time per PUT at 20,000), sizes grow by 25 % until a
call is cancelled with 57014 (or BENCH_ATOMIC_MAX_OPS, default 200,000, is reached), then shrink
by 10 % until one passes: the largest passing and the smallest failing size are reported.

Writes bench/atomic_limit.json and prints a Markdown table (bench/atomic_limit.md).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.conftest import ANON_KEY, JWT_SECRET, SQL_FILES, make_token  # noqa: E402
from tests.postgrest_standin.standin import StandIn  # noqa: E402
from tests.support.pg import TempPostgres  # noqa: E402

BENCH = ROOT / "bench"
RESULTS_JSON = BENCH / "atomic_limit.json"
RESULTS_MD = BENCH / "atomic_limit.md"
FUNCTION = "powersync_apply_transaction"
WIDE_COLUMNS = 30


def env_list(name: str, default: list[int]) -> list[int]:
    raw = os.environ.get(name)
    return [int(x) for x in raw.split(",")] if raw else default


SIZES = env_list("BENCH_ATOMIC_SIZES", [1000, 5000, 20000])
ROUNDS = int(os.environ.get("BENCH_ATOMIC_ROUNDS", "3"))
MAX_OPS = int(os.environ.get("BENCH_ATOMIC_MAX_OPS", "200000"))
SKIP_LIMIT = bool(os.environ.get("BENCH_ATOMIC_SKIP_LIMIT"))

WIDE_SQL = f"""
create table if not exists public.bench_wide (
  id uuid primary key,
  owner_id uuid not null,
  {", ".join(f"c{i:02d} text" for i in range(1, WIDE_COLUMNS + 1))}
);
alter table public.bench_wide enable row level security;
drop policy if exists bench_wide_own on public.bench_wide;
create policy bench_wide_own on public.bench_wide for all to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
grant select, insert, update, delete on public.bench_wide to authenticated;
"""


def todo_row(user: str, list_id: str, n: int) -> dict:
    return {"description": f"bench todo {n}", "completed": n % 2 == 0, "created_by": user,
            "list_id": list_id, "priority": n % 5, "tags": ["bench", n % 7]}


def wide_row(user: str, n: int) -> dict:
    row = {"owner_id": user}
    for i in range(1, WIDE_COLUMNS + 1):
        row[f"c{i:02d}"] = f"{n:08d}-{i:02d}-" + "x" * 28
    return row


class Bench:
    def __init__(self, pg: TempPostgres, standin: StandIn):
        self.pg = pg
        self.user = str(uuid.uuid4())
        self.token = make_token(self.user)
        self.list_id = str(uuid.uuid4())
        self.http = requests.Session()
        self.url = standin.url
        self.sequence = 0
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("insert into public.lists (id, name, owner_id) values (%s, 'bench', %s)",
                         (self.list_id, self.user))
            self.timeout = conn.execute(
                "select s from pg_db_role_setting d, unnest(d.setconfig) s"
                " where d.setrole = 'authenticated'::regrole and s like 'statement_timeout=%'"
            ).fetchone()[0].split("=", 1)[1]

    def headers(self, prefer: str | None = None) -> dict:
        h = {"apikey": ANON_KEY, "Authorization": f"Bearer {self.token}",
             "Content-Type": "application/json"}
        if prefer:
            h["Prefer"] = prefer
        return h

    def ops(self, kind: str, size: int, ids: list[str] | None = None) -> tuple[list[dict], list[str]]:
        ids = ids or [str(uuid.uuid4()) for _ in range(size)]
        if kind == "wide":
            return [{"op": "PUT", "table": "bench_wide", "id": i, "data": wide_row(self.user, n)}
                    for n, i in enumerate(ids)], ids
        return [{"op": "PUT", "table": "todos", "id": i, "data": todo_row(self.user, self.list_id, n)}
                for n, i in enumerate(ids)], ids

    def existing_todos(self, size: int) -> list[str]:
        """`size` new rows of todos, written directly (fast), to PATCH."""
        with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
            return [r[0] for r in conn.execute(
                "insert into public.todos (id, description, created_by, list_id)"
                " select gen_random_uuid(), 'seeded', %s, %s from generate_series(1, %s)"
                " returning id::text", (self.user, self.list_id, size)).fetchall()]

    def limit_ops(self, kind: str, size: int) -> list[dict]:
        if kind == "patch":
            return self.patches(self.existing_todos(size))
        return self.ops(kind, size)[0]

    def patches(self, ids: list[str]) -> list[dict]:
        return [{"op": "PATCH", "table": "todos", "id": i, "data": {"description": f"patched {n}"}}
                for n, i in enumerate(ids)]

    def next_transaction_id(self) -> str:
        self.sequence += 1
        return f"bench-{self.sequence}"

    def atomic_http(self, ops: list[dict]) -> dict:
        body = json.dumps({"ops": ops, "client_id": "bench-client",
                           "transaction_id": self.next_transaction_id()})
        t0 = time.perf_counter()
        resp = self.http.post(f"{self.url}/rest/v1/rpc/{FUNCTION}", data=body, headers=self.headers(),
                              timeout=120)
        ms = (time.perf_counter() - t0) * 1000
        return outcome(resp, ms, len(ops), len(body))

    def atomic_db(self, ops: list[dict]) -> dict:
        """The same call made directly as `authenticated` with the role's timeout: the statement
        alone, without HTTP or the stand-in's JSON handling."""
        claims = json.dumps({"sub": self.user, "role": "authenticated"})
        with psycopg.connect(self.pg.dsn) as conn:
            conn.execute("select set_config('statement_timeout', %s, true),"
                         " set_config('request.jwt.claims', %s, true)", (self.timeout, claims))
            conn.execute("set local role authenticated")
            t0 = time.perf_counter()
            try:
                row = conn.execute(
                    f"select public.{FUNCTION}(%s::jsonb, null, null, 'bench-db', %s)",
                    (json.dumps(ops), self.next_transaction_id())).fetchone()
                ms = (time.perf_counter() - t0) * 1000
                conn.commit()
                ok = row[0].get("applied") == len(ops)
                return {"ms": ms, "ok": ok, "code": None if ok else "unexpected"}
            except psycopg.Error as e:
                ms = (time.perf_counter() - t0) * 1000
                return {"ms": ms, "ok": False, "code": e.sqlstate}

    def rest_upsert(self, ops: list[dict]) -> dict:
        table = ops[0]["table"]
        rows = [{"id": op["id"], **op["data"]} for op in ops]
        body = json.dumps(rows)
        t0 = time.perf_counter()
        resp = self.http.post(f"{self.url}/rest/v1/{table}?on_conflict=id", data=body,
                              headers=self.headers("resolution=merge-duplicates,return=minimal"),
                              timeout=120)
        ms = (time.perf_counter() - t0) * 1000
        ok = resp.status_code in (200, 201)
        return {"ms": ms, "ok": ok, "code": None if ok else error_code(resp),
                "status": resp.status_code, "ops": len(ops), "body_bytes": len(body)}


def error_code(resp) -> str:
    try:
        return resp.json().get("code") or f"http_{resp.status_code}"
    except ValueError:
        return f"http_{resp.status_code}"


def outcome(resp, ms: float, ops: int, body_bytes: int) -> dict:
    ok = resp.status_code == 200 and resp.json().get("applied") == ops
    return {"ms": ms, "ok": ok, "code": None if ok else error_code(resp), "status": resp.status_code,
            "ops": ops, "body_bytes": body_bytes}


def median(runs: list[dict]) -> float | None:
    times = [r["ms"] for r in runs if r["ok"]]
    return statistics.median(times) if len(times) == len(runs) and times else None


def measure(bench: Bench) -> list[dict]:
    rows = []
    for size in SIZES:
        scenario = {"todos_new": [], "todos_existing": [], "todos_patch": [], "todos_new_db": [], "wide_new": [],
                    "wide_new_db": [], "rest_upsert": []}
        for _ in range(ROUNDS):
            ops, ids = bench.ops("todos", size)
            scenario["todos_new"].append(bench.atomic_http(ops))
            again, _ = bench.ops("todos", size, ids)
            scenario["todos_existing"].append(bench.atomic_http(again))
            scenario["todos_patch"].append(bench.atomic_http(bench.patches(ids)))
            scenario["todos_new_db"].append(bench.atomic_db(bench.ops("todos", size)[0]))
            scenario["wide_new"].append(bench.atomic_http(bench.ops("wide", size)[0]))
            scenario["wide_new_db"].append(bench.atomic_db(bench.ops("wide", size)[0]))
            scenario["rest_upsert"].append(bench.rest_upsert(bench.ops("todos", size)[0]))
        row = {"size": size, "runs": scenario}
        for name, runs in scenario.items():
            row[name] = median(runs)
            row[name + "_codes"] = sorted({r["code"] for r in runs if r["code"]})
        row["body_bytes"] = {"todos": scenario["todos_new"][0]["body_bytes"],
                             "wide": scenario["wide_new"][0]["body_bytes"]}
        print(f"{size:>6} PUTs: " + ", ".join(
            f"{name} {fmt(row[name])}{' ' + ','.join(row[name + '_codes']) if row[name + '_codes'] else ''}"
            for name in scenario), flush=True)
        rows.append(row)
    return rows


def find_limit(bench: Bench, kind: str, ms_per_op: float) -> dict:
    """Grows then shrinks the size from the estimate until the edge is found (see the docstring)."""
    budget_ms = parse_ms(bench.timeout)
    size = min(MAX_OPS, max(1000, int(budget_ms / ms_per_op)))
    passed, failed, tries = None, None, []
    while size <= MAX_OPS:
        result = bench.atomic_http(bench.limit_ops(kind, size))
        tries.append({"size": size, "ms": round(result["ms"]), "code": result["code"]})
        print(f"  limit search ({kind}): {size} ops -> {result['code'] or 'applied'} in {result['ms']:.0f} ms",
              flush=True)
        if result["ok"]:
            passed = max(passed or 0, size)
            if failed is not None or size == MAX_OPS:
                break
            size = min(MAX_OPS, int(size * 1.25))
        elif result["code"] == "57014":
            failed = size if failed is None else min(failed, size)
            if passed is not None:
                break
            size = int(size * 0.9)
        else:
            raise SystemExit(f"unexpected answer at {size} PUTs: {result}")
    return {"kind": kind, "largest_applied": passed, "smallest_cancelled": failed, "tries": tries}


def parse_ms(setting: str) -> float:
    units = {"ms": 1, "s": 1000, "min": 60000}
    for unit, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if setting.endswith(unit):
            return float(setting[: -len(unit)]) * factor
    return float(setting)


def fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:,.0f} ms"


def report(rows: list[dict], limits: list[dict], meta: dict) -> str:
    lines = [
        f"# Large atomic transactions ({meta['date']}, commit {meta['commit']})",
        "",
        f"PostgreSQL {meta['postgres']}, `authenticated` statement_timeout = {meta['timeout']}, "
        f"{meta['rounds']} rounds (median), load average before the run {meta['load']}. "
        "HTTP = the call through the PostgREST stand-in as the worker sends it; DB = the same "
        "statement run directly as `authenticated` (what the timeout limits).",
        "",
        "| ops | todos, new rows: HTTP / DB | todos, existing rows | todos, PATCH | wide rows, new: HTTP / DB "
        "| REST bulk upsert, new todos | body (todos / wide) |",
        "|---:|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {fmt(r['todos_new'])} / {fmt(r['todos_new_db'])} | {fmt(r['todos_existing'])} | {fmt(r['todos_patch'])} "
            f"| {fmt(r['wide_new'])} / {fmt(r['wide_new_db'])} | {fmt(r['rest_upsert'])} "
            f"| {r['body_bytes']['todos'] / 1e6:.1f} / {r['body_bytes']['wide'] / 1e6:.1f} MB |")
    for limit in limits:
        cancelled = limit["smallest_cancelled"] or f"none up to BENCH_ATOMIC_MAX_OPS={MAX_OPS}"
        what = {"todos": "todos, new rows", "wide": "wide rows, new", "patch": "todos, PATCH"}[limit["kind"]]
        lines += ["", f"Limit ({what}, through HTTP): largest applied "
                  f"{limit['largest_applied'] or '-'} ops, smallest cancelled (57014) "
                  f"{cancelled}; tries: "
                  + ", ".join(f"{t['size']} → {t['code'] or 'ok'} ({t['ms']} ms)" for t in limit["tries"])]
    failures = sorted({c for r in rows for k, v in r.items() if k.endswith("_codes") for c in v})
    if failures:
        lines += ["", f"Runs that failed: {', '.join(failures)} (a cell is `-` when any of its runs failed)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rounds": ROUNDS,
    }
    with TempPostgres() as pg:
        for f in SQL_FILES:
            pg.run_sql_file(f)
        pg.run_sql(WIDE_SQL)
        with psycopg.connect(pg.dsn) as conn:
            meta["postgres"] = conn.execute("show server_version").fetchone()[0].split()[0]
        standin = StandIn(pg.dsn, JWT_SECRET, anon_key=ANON_KEY)
        standin.start(port=0)
        try:
            bench = Bench(pg, standin)
            meta["timeout"] = bench.timeout
            rows = measure(bench)
            limits = []
            if not SKIP_LIMIT:
                last = rows[-1]
                for kind, key in (("todos", "todos_new"), ("wide", "wide_new"), ("patch", "todos_patch")):
                    if last[key]:
                        limits.append(find_limit(bench, kind, last[key] / last["size"]))
        finally:
            standin.stop()
    markdown = report(rows, limits, meta)
    RESULTS_MD.write_text(markdown)
    RESULTS_JSON.write_text(json.dumps({"meta": meta, "sizes": rows, "limits": limits}, indent=1) + "\n")
    print(markdown)


if __name__ == "__main__":
    main()
