"""The benchmarks launch `wrangler dev` through wrangler's API without the devtools inspector
(tests/support/wrangler_dev.mjs) and without wrangler's local observability collector
(X_LOCAL_OBSERVABILITY=false, bench/run.py). Their CPU figures are only meaningful if the worker
behaves the same there: it answers, and its one log line per request is still written and
printed. And the CPU they report must be the worker's own workerd process's (wrangler's dev
proxy, a second workerd, listens on the public port; both are told port 0 when wrangler picks
the port, so they are told apart by that listening socket)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import requests

from tests.e2e.conftest import make_token
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
        line = w.log_line(r)
        lines = [l for l in w.log_lines() if l.get("request_id") == r.headers["X-Request-Id"]]
        assert lines == [line], w.output()[-2000:]
        assert line["route"] == "token" and line["status"] == 200
        assert "inspector" not in " ".join(w.proc.args)
    finally:
        w.stop()


def bench_run():
    """bench/run.py, the benchmarks' helpers (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).resolve().parents[2] / "bench/run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_count_the_cpu_of_the_workers_own_workerd_apart_from_the_proxys(base_vars):
    bench = bench_run()
    w = WorkerProcess(base_vars, inspector=False)
    try:
        pid = bench.workerd_user_pid(w.proc.pid, w.port)
        assert pid is not None
        proxy = bench.listening_inodes(w.port)
        assert proxy, "something listens on the worker's port"
        assert not bench.listens(Path(f"/proc/{pid}"), proxy), "the worker's workerd is not the proxy"
        before = bench.group_cpu(w.proc.pid, w.port)
        with requests.Session() as http:
            for _ in range(300):
                assert http.get(w.url + "/health", timeout=10).status_code == 200
        after = bench.group_cpu(w.proc.pid, w.port)
        assert after["workerd_user"] > before["workerd_user"], (before, after)
        assert after["workerd_entry"] > before["workerd_entry"], (before, after)
    finally:
        w.stop()


def _scripted_warm_up(bench, monkeypatch, windows, *, max_seconds=30):
    """bench.warm_up against a made-up worker whose threads report `windows`: (main ms, other ms)
    of CPU per window of requests; returns its result and how many windows it ran."""
    clock = {"main": 0.0, "other": 0.0, "runs": 0}
    monkeypatch.setattr(bench, "workerd_user_pid", lambda pgid, port: 4242)
    monkeypatch.setattr(bench, "thread_cpu_ms", lambda pid: (clock["main"], clock["other"]))

    def fake_wrk(url, **kwargs):
        main, other = windows[clock["runs"]]
        clock["main"] += main
        clock["other"] += other
        clock["runs"] += 1
        return {"requests": 10}

    monkeypatch.setattr(bench, "wrk", fake_wrk)

    class Worker:
        url = "http://worker.invalid"
        port = 1
        proc = type("Proc", (), {"pid": 1})()

    result = bench.warm_up(Worker(), "/x", window=3, max_seconds=max_seconds, connections=1)
    return result, clock["runs"]


def test_benchmark_warm_up_ends_after_two_windows_in_a_row_with_the_background_threads_quiet(monkeypatch):
    bench = bench_run()
    # Tier-up comes in bursts: a quiet window, a busy one (the count starts again), then two quiet ones.
    result, runs = _scripted_warm_up(bench, monkeypatch, [(100, 50), (100, 1), (100, 9), (100, 2), (100, 1.5), (100, 0)])
    assert runs == 5
    assert result["settled"] is True
    assert result["seconds"] == 15 and result["requests"] == 50
    assert result["background_cpu_ms"] == 50 + 1 + 9 + 2 + 1.5
    assert result["last_window_background_share"] == 0.015


def test_benchmark_warm_up_stops_at_its_cap_and_says_it_did_not_settle(monkeypatch):
    bench = bench_run()
    result, runs = _scripted_warm_up(bench, monkeypatch, [(100, 30)] * 20, max_seconds=12)
    assert runs == 4
    assert result["settled"] is False and result["seconds"] == 12
