"""The end-to-end harness itself. free_port() only finds a port free at that instant; when
another process takes it before wrangler binds it, wrangler exits with "Address already in use"
and the harness starts the worker again on another port. It looks for that message in the
whole log of the attempt: the error's text holds only the log's end, and in CI wrangler's
bundler once printed a long dump after the message, which hid it and failed a whole module."""

from __future__ import annotations

import socket

import tests.support.worker as harness


def test_worker_whose_chosen_port_is_taken_starts_again_on_another(base_vars, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # held, not listening: nothing answers there
        busy = taken.getsockname()[1]
        chosen = [busy]
        real = harness.free_port
        monkeypatch.setattr(harness, "free_port", lambda: chosen.pop() if chosen else real())
        w = harness.WorkerProcess(base_vars)
        try:
            assert not chosen, "the taken port was tried first"
            assert w.port != busy
            assert w.get("/health").status_code == 200
        finally:
            w.stop()
