"""The end-to-end harness itself. A worker is started on a port the system picks when wrangler
binds it (port 0), and the harness reads it from wrangler's "Ready on" line. A port chosen by
the harness first (as before) could be taken by another process before wrangler bound it; a CI
run lost a whole module to that ("Address already in use")."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tests.support.worker import WorkerProcess


def test_workers_started_at_once_get_ports_of_their_own_and_each_answers_at_its_url(base_vars):
    with ThreadPoolExecutor(3) as pool:
        workers = list(pool.map(lambda _: WorkerProcess(base_vars), range(3)))
    try:
        assert len({w.port for w in workers}) == 3, [w.port for w in workers]
        for w in workers:
            r = w.get("/health")
            assert r.status_code == 200
            # This worker's own log has the request: its URL reaches its own process.
            assert w.log_line(r)["route"] == "health"
    finally:
        for w in workers:
            w.stop()
