"""The benchmarks launch `wrangler dev` through wrangler's API without the devtools inspector
(tests/support/wrangler_dev.mjs) and without wrangler's local observability collector
(X_LOCAL_OBSERVABILITY=false, bench/run.py). Their CPU figures are only meaningful if the worker
behaves the same there: it answers, and its one log line per request is still written and
printed."""

from __future__ import annotations

from tests.e2e.conftest import make_token
from tests.e2e.upload_helpers import wait_for
from tests.support.worker import WorkerProcess


def test_worker_launched_as_the_benchmarks_do_issues_tokens_and_still_prints_its_log_lines(
        base_vars, standin, monkeypatch):
    monkeypatch.setenv("X_LOCAL_OBSERVABILITY", "false")
    w = WorkerProcess(base_vars, inspector=False)
    try:
        token = make_token("11111111-1111-4111-8111-111111111111", iss=f"{standin.url}/auth/v1")
        r = w.get("/powersync-token", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert r.json()["token"].count(".") == 2
        request_id = r.headers["X-Request-Id"]
        lines = wait_for(lambda: [line for line in w.log_lines() if line.get("request_id") == request_id])
        assert len(lines) == 1, w.output()[-2000:]
        assert lines[0]["route"] == "token" and lines[0]["status"] == 200
        assert "inspector" not in " ".join(w.proc.args)
    finally:
        w.stop()
