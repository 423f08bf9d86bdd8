"""The real PowerSync service (v1.25.0, built from source by powersync/install.sh) for tests.

    with PowerSyncService(pg.url("postgres", with_password=True),
                          pg.url("psstorage", with_password=True),
                          jwks_uri=worker.url + "/.well-known/jwks.json") as service:
        service.wait_for_initial_replication()
        lines = read_sync_stream(service.url, powersync_token)

The service replicates the app database (logical replication: wal_level=logical and a
publication named `powersync`, see tests/support/pg.py), keeps its buckets in a second Postgres
database, applies powersync/sync-rules.yaml and accepts client tokens verified against
`jwks_uri` (one URI or a list) with `aud` in `audience` (default: its own URL, which is what the worker puts in
`aud` when its POWERSYNC_URL is that URL). Telemetry sharing is off (on by default; it would
try to reach the internet).

Node and the service come from $POWERSYNC_NODE / $POWERSYNC_SERVICE_ENTRY when both are set,
else from powersync/install.sh (builds once, about 1 minute; instant afterwards).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

import requests

from tests.support.node_service import NodeService, installed

ROOT = Path(__file__).resolve().parents[2]
SYNC_RULES = ROOT / "powersync/sync-rules.yaml"


def service_install() -> tuple[str, str]:
    """(node binary, service entry.js): from the environment, else from powersync/install.sh."""
    return installed("powersync/install.sh", "POWERSYNC_NODE", "POWERSYNC_SERVICE_ENTRY")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PowerSyncService(NodeService):
    NAME = "PowerSync service"

    def __init__(self, app_dsn_with_password: str, storage_dsn: str, jwks_uri: str | list[str],
                 audience: str | list[str] | None = None, port: int | None = None,
                 startup_timeout: float = 60.0):
        node, entry = service_install()
        # Admin API token (diagnostics), random per run: only this process knows it.
        self.api_token = secrets.token_urlsafe(24)
        self._start_on_free_ports(lambda: self._start(node, entry, app_dsn_with_password, storage_dsn, jwks_uri,
                                                      audience, port, startup_timeout), port is not None)

    def _start(self, node: str, entry: str, app_dsn_with_password: str, storage_dsn: str,
               jwks_uri: str | list[str], audience: str | list[str] | None, port: int | None,
               startup_timeout: float) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audience = [audience] if isinstance(audience, str) else list(audience or [self.url])
        self.dir = Path(tempfile.mkdtemp(prefix="powersync-service-"))
        config = {
            "replication": {"connections": [
                {"type": "postgresql", "uri": app_dsn_with_password, "sslmode": "disable"}]},
            "storage": {"type": "postgresql", "uri": storage_dsn, "sslmode": "disable"},
            "port": self.port,
            "sync_config": {"path": str(SYNC_RULES)},
            "client_auth": {"jwks_uri": jwks_uri, "audience": self.audience},
            "api": {"tokens": [self.api_token]},
            "telemetry": {"disable_telemetry_sharing": True,
                          "internal_service_endpoint": "http://127.0.0.1:9/unused"},
            "system": {"logging": {"level": "info", "format": "text"}},
        }
        # JSON is YAML: no YAML library needed.
        self.config_path = self.dir / "powersync.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))
        # cwd = the temp dir: the service writes its health probes to ./.probes
        self._run([node, entry, "start", "-c", str(self.config_path)], cwd=self.dir,
                  env=dict(os.environ, NODE_ENV="production", NO_COLOR="1"),
                  log_path=self.dir / "service.log", probe_path="/probes/liveness",
                  timeout=startup_timeout, poll_seconds=0.2)

    def output(self) -> str:
        """The service's log so far (its text logger colours levels even without a TTY: the
        escape codes are removed)."""
        return re.sub(r"\x1b\[[0-9;]*m", "", super().output())

    def diagnostics(self) -> dict:
        """The admin diagnostics (connections, active sync rules, replication state, errors)."""
        r = requests.post(self.url + "/api/admin/v1/diagnostics", json={},
                          headers={"Authorization": f"Bearer {self.api_token}"}, timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    def wait_for_initial_replication(self, timeout: float = 60.0) -> dict:
        """Waits until the active sync rules have finished the initial snapshot of every
        connection (from then on changes stream in by logical replication); returns the
        diagnostics. Fails with the errors the service reports and its log tail."""
        deadline = time.monotonic() + timeout
        last: dict | str = {}
        while True:
            try:
                last = self.diagnostics()
                active = last.get("active_sync_rules") or {}
                connections = active.get("connections") or []
                # snapshot done and a first checkpoint exists: a sync stream can complete
                if connections and all(c.get("initial_replication_done") and c.get("last_checkpoint_ts")
                                       for c in connections):
                    return last
            except (requests.RequestException, ValueError, KeyError) as e:
                last = repr(e)
            exited = self.proc.poll() is not None  # e.g. invalid sync rules are fatal
            if exited or time.monotonic() > deadline:
                why = f"service exited ({self.proc.returncode})" if exited else f"not done after {timeout:.0f} s"
                raise RuntimeError(f"initial replication: {why}; diagnostics: "
                                   f"{json.dumps(last)[:2000]}\n{self.output()[-3000:]}")
            time.sleep(0.3)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the sync protocol, without a client SDK ---------------------------------------------------

class SyncRefused(Exception):
    """The service answered /sync/stream with an HTTP error."""

    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def read_sync_stream(service_url: str, token: str,
                     until: Callable[[list[dict]], bool] = lambda lines: True,
                     timeout: float = 30.0) -> list[dict]:
    """POST /sync/stream as a client would (raw JSON data, checksums) and read NDJSON lines up
    to the first `checkpoint_complete` after which `until(lines so far)` holds (default: the
    first one); returns those lines. Raises SyncRefused on an HTTP error, TimeoutError when the
    condition is not reached within `timeout` seconds (the service sends keepalive lines, so a
    quiet stream still gets here)."""
    deadline = time.monotonic() + timeout
    lines: list[dict] = []
    # read timeout = the whole budget: keepalive lines come only every 20 s
    with requests.post(service_url + "/sync/stream", stream=True, timeout=(5, timeout),
                       json={"raw_data": True, "include_checksum": True},
                       headers={"Authorization": f"Token {token}",
                                "Accept": "application/x-ndjson"}) as r:
        if r.status_code != 200:
            raise SyncRefused(r.status_code, r.text)
        try:
            for raw in r.iter_lines():
                if raw:
                    lines.append(json.loads(raw))
                    if "checkpoint_complete" in lines[-1] and until(lines):
                        return lines
                if time.monotonic() > deadline:
                    break
        except requests.ConnectionError:  # the read timed out
            pass
    raise TimeoutError(f"no matching checkpoint_complete within {timeout:.0f} s; read: "
                       f"{json.dumps(lines)[-2000:]}")


def synced_rows(lines: list[dict]) -> dict[tuple[str, str], dict]:
    """{(table, id): row} after applying the streamed PUT/REMOVE operations in order."""
    rows: dict[tuple[str, str], dict] = {}
    for line in lines:
        data = line.get("data")
        if not isinstance(data, dict):
            continue
        for op in data.get("data") or []:
            key = (op.get("object_type"), op.get("object_id"))
            if op.get("op") == "PUT":
                value = op.get("data")
                rows[key] = json.loads(value) if isinstance(value, str) else value
            elif op.get("op") == "REMOVE":
                rows.pop(key, None)
    return rows
