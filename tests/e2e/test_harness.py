"""The end-to-end harness itself. A worker is started on a port the system picks when wrangler
binds it (port 0), and the harness reads it from wrangler's "Ready on" line. A port chosen by
the harness first (as before) could be taken by another process before wrangler bound it; a CI
run lost a whole module to that ("Address already in use"). The PowerSync service, the
Storage server and the demo page's server (Vite) are told their ports, so one taken before they
bound it makes the harness start them again on other ports."""

from __future__ import annotations

import socket
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

import tests.support.powersync as powersync
import tests.support.storage as storage_module
import tests.support.web_browser as web_browser
from tests.e2e.conftest import JWT_SECRET
from tests.support.powersync import PowerSyncService
from tests.support.storage import StorageServer
from tests.support.web_browser import DemoPage
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


@pytest.fixture
def taken_port():
    """A port another process holds (listening), as a port picked by free_port() and taken
    before the service bound it would be."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def picks_first(monkeypatch, module, port: int) -> list[int]:
    """Makes `module.free_port()` return `port` once, then free ports; returns what is left of
    the planted pick (empty once it was used)."""
    planted, real = [port], module.free_port
    monkeypatch.setattr(module, "free_port", lambda: planted.pop() if planted else real())
    return planted


def test_powersync_service_whose_picked_port_was_taken_starts_again_on_another(pg, worker, taken_port, monkeypatch):
    planted = picks_first(monkeypatch, powersync, taken_port)
    storage = pg.create_database(f"psstorage_{uuid.uuid4().hex[:8]}")
    with PowerSyncService(pg.url(with_password=True), pg.url(storage, with_password=True),
                          jwks_uri=worker.url + "/.well-known/jwks.json") as service:
        assert not planted, "the taken port was tried first"
        assert service.port != taken_port
        assert requests.get(service.url + "/probes/liveness", timeout=10).status_code == 200


def test_storage_server_whose_picked_port_was_taken_starts_again_on_another(pg, taken_port, monkeypatch):
    planted = picks_first(monkeypatch, storage_module, taken_port)
    with StorageServer(pg.url(), JWT_SECRET) as server:
        assert not planted, "the taken port was tried first"
        assert server.port != taken_port
        assert requests.get(server.url + "/status", timeout=10).status_code == 200


def test_demo_page_whose_picked_port_was_taken_is_served_on_another(taken_port, monkeypatch, tmp_path):
    planted = picks_first(monkeypatch, web_browser, taken_port)
    page = DemoPage.start(tmp_path)
    try:
        assert not planted, "the taken port was tried first"
        assert page.port != taken_port
        assert "<html" in requests.get(page.origin + "/", timeout=10).text.lower()
    finally:
        page.stop()
