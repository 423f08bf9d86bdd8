"""The one-request-per-entry baseline for the upload benchmark.

What the official client-side Supabase connectors do (PowerSync's SupabaseConnector.uploadData):
every queued CRUD entry becomes its own PostgREST request, sent one after another:

    PUT    -> POST   /rest/v1/<table>            {...data, id}   Prefer: resolution=merge-duplicates
    PATCH  -> PATCH  /rest/v1/<table>?id=eq.<id> {...data}
    DELETE -> DELETE /rest/v1/<table>?id=eq.<id>

Sent straight to the PostgREST stand-in (no worker in between) over one keep-alive connection,
as the signed-in user (apikey + Authorization: Bearer). Runs in its own process so it does not
share the GIL with the stand-in, which runs inside bench/run.py.

    python bench/baseline.py --url http://127.0.0.1:P --apikey K --token T \
        --entries entries.json --duration 4

Cycles through the entries (in order) until --duration seconds have passed. Prints one JSON line:
{"ops", "elapsed_s", "ops_per_s", "errors", "latency_ms": {"p50", "p99"}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from urllib.parse import quote

import requests


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def prepare(entries: list[dict], base: str) -> list[tuple[str, str, bytes | None, dict]]:
    """(method, url, body, extra headers) per entry, built once so the loop only sends."""
    out = []
    for e in entries:
        table = e["table"]
        data = e.get("op_data") or e.get("data") or {}
        url = f"{base}/rest/v1/{table}"
        filt = "?id=eq." + quote(str(e["id"]), safe="")
        if e["op"] == "PUT":
            out.append(("POST", url, json.dumps({**data, "id": e["id"]}).encode(),
                        {"Prefer": "resolution=merge-duplicates,return=minimal"}))
        elif e["op"] == "PATCH":
            out.append(("PATCH", url + filt, json.dumps(data).encode(),
                        {"Prefer": "return=minimal"}))
        elif e["op"] == "DELETE":
            out.append(("DELETE", url + filt, None, {"Prefer": "return=minimal"}))
        else:
            raise ValueError(f"unknown op {e['op']}")
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--apikey", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--entries", required=True, help="JSON file: a list of CRUD entries")
    p.add_argument("--duration", type=float, default=4.0)
    args = p.parse_args()

    entries = json.loads(open(args.entries).read())
    plan = prepare(entries, args.url.rstrip("/"))
    session = requests.Session()
    session.headers.update({"apikey": args.apikey, "Authorization": f"Bearer {args.token}",
                            "Content-Type": "application/json"})
    latencies: list[float] = []
    errors: list[str] = []
    ops = 0
    start = time.perf_counter()
    deadline = start + args.duration
    i = 0
    while time.perf_counter() < deadline:
        method, url, body, headers = plan[i % len(plan)]
        t0 = time.perf_counter()
        r = session.request(method, url, data=body, headers=headers, timeout=30)
        latencies.append(time.perf_counter() - t0)
        if not 200 <= r.status_code < 300:
            errors.append(f"{method} {url}: {r.status_code} {r.text[:200]}")
        else:
            ops += 1
        i += 1
    elapsed = time.perf_counter() - start
    latencies.sort()
    print(json.dumps({
        "ops": ops, "requests": i, "elapsed_s": elapsed, "ops_per_s": ops / elapsed,
        "errors": len(errors), "first_errors": errors[:3],
        "latency_ms": {"p50": percentile(latencies, 50) * 1000,
                       "p99": percentile(latencies, 99) * 1000},
    }))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
