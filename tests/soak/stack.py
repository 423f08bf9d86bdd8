"""The soak's stack: the fault proxy in front of the PostgREST stand-in and one worker per mode
whose SUPABASE_URL is the proxy. Shared by tests/e2e/test_soak.py and `python -m tests.soak`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.soak.driver import worker_vars
from tests.soak.proxy import FaultProxy

SERVICE_SCHEMA = Path(__file__).resolve().parent / "service_schema.sql"
TIMEOUT_MS = 1000      # the worker's UPSTREAM_TIMEOUT_MS during the soak
HANG_SECONDS = 1.5     # how long the proxy holds a hung request (past the timeout)
DEADLINE_SECONDS = 0.6  # a forwarded request not committed by then is rolled back (proxy docs)


def start_stack(pg, standin_url: str, base_vars: dict, start_worker, modes) -> tuple[FaultProxy, dict]:
    """Loads the service-mode schema variant, starts the proxy and one worker per mode
    (concurrently). Returns (proxy, {mode: worker}); stop the proxy yourself."""
    pg.run_sql_file(SERVICE_SCHEMA)
    proxy = FaultProxy(standin_url, hang_seconds=HANG_SECONDS, deadline_seconds=DEADLINE_SECONDS)
    proxy.start()
    try:
        with ThreadPoolExecutor(max_workers=len(modes)) as pool:
            futures = {m: pool.submit(start_worker, worker_vars(m, base_vars, proxy.url, TIMEOUT_MS))
                       for m in modes}
            workers = {m: f.result() for m, f in futures.items()}
    except BaseException:
        proxy.stop()
        raise
    return proxy, workers
