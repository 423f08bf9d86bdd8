"""A PowerSync app for the end-to-end tests: the official Node SDK (`@powersync/node`) with our
connector (clients/typescript), run by tests/sdk/driver.mjs under Node 24 and driven over
stdin/stdout.

    app = SdkApp(worker.url, session_token, tmp_path / "app.db")
    app.connect()                                  # first sync done
    app.execute("insert into lists ...", [...])
    app.drained()                                  # uploaded and synced back
    app.query("select * from lists")

Every call waits for the driver's answer and raises `SdkError` with the SDK's message on failure.
`records()` gives what the connector reported: fatal outcomes, credential fetches, upload errors.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.line_child import LineChild

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests/sdk/driver.mjs"


TIMINGS: list[tuple[str, float]] = []


def record_timing(what: str, seconds: float) -> None:
    """A measured time, printed at the end of the test run (conftest's pytest_terminal_summary)."""
    TIMINGS.append((what, seconds))


class SdkError(RuntimeError):
    pass


class SdkApp(LineChild):
    ERROR = SdkError
    ERROR_LOG_TAIL = 2000

    def __init__(self, worker_url: str, session_token: str, db_path: Path,
                 max_transactions_per_request: int | None = None, with_attachments: bool = False,
                 track_previous: bool = False):
        self._spawn(DRIVER, cwd=DRIVER.parent, log_path=Path(str(db_path) + ".log"))
        self.call("open", timeout=60, path=str(db_path), workerUrl=worker_url, token=session_token,
                  maxTransactionsPerRequest=max_transactions_per_request, withAttachments=with_attachments,
                  trackPrevious=track_previous)

    # The driver's commands, as methods (see tests/sdk/driver.mjs).
    def connect(self, timeout_ms: int = 30000, **kw):
        return self.call("connect", timeout=timeout_ms / 1000 + 10, timeoutMs=timeout_ms, **kw)

    def disconnect(self):
        return self.call("disconnect")

    def set_token(self, token: str):
        return self.call("setToken", token=token)

    def execute(self, sql: str, params: list | None = None):
        return self.call("execute", sql=sql, params=params or [])

    def transaction(self, *statements: tuple[str, list]):
        return self.call("transaction", statements=[list(s) for s in statements])

    def query(self, sql: str, params: list | None = None) -> list[dict]:
        return self.call("query", sql=sql, params=params or [])

    def status(self) -> dict:
        return self.call("status")

    def queue_count(self) -> int:
        return self.call("queue")["count"]

    def drained(self, timeout_ms: int = 30000) -> dict:
        return self.call("drained", timeout=timeout_ms / 1000 + 10, timeoutMs=timeout_ms)

    def wait_for(self, sql: str, rows: list[dict], params: list | None = None, timeout_ms: int = 30000):
        return self.call("waitFor", timeout=timeout_ms / 1000 + 10, sql=sql, params=params or [],
                         rows=rows, timeoutMs=timeout_ms)

    def records(self) -> dict:
        return self.call("records")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=15)
            except (SdkError, OSError, ValueError):
                pass
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
        self._log.close()

    def __enter__(self) -> "SdkApp":
        return self

    def __exit__(self, *exc):
        self.close()
