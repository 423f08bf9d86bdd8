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

import functools
import itertools
import json
import os
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests/sdk/driver.mjs"


TIMINGS: list[tuple[str, float]] = []


def record_timing(what: str, seconds: float) -> None:
    """A measured time, printed at the end of the test run (conftest's pytest_terminal_summary)."""
    TIMINGS.append((what, seconds))


class SdkError(RuntimeError):
    pass


@functools.cache
def node() -> str:
    """Node 24 (scripts/node.sh): the SDK's better-sqlite3 is compiled against it."""
    bin_dir = subprocess.run(["bash", str(ROOT / "scripts/node.sh")], check=True, text=True,
                             stdout=subprocess.PIPE).stdout.strip()
    return bin_dir + "/node"


class SdkApp:
    def __init__(self, worker_url: str, session_token: str, db_path: Path,
                 max_transactions_per_request: int | None = None, with_attachments: bool = False,
                 track_previous: bool = False):
        self.log_path = Path(str(db_path) + ".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [node(), str(DRIVER)], cwd=DRIVER.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, bufsize=1, env=dict(os.environ, NODE_NO_WARNINGS="1"),
            start_new_session=True)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.call("open", timeout=60, path=str(db_path), workerUrl=worker_url, token=session_token,
                  maxTransactionsPerRequest=max_transactions_per_request, withAttachments=with_attachments,
                  trackPrevious=track_previous)

    def call(self, cmd: str, timeout: float = 60, **args):
        with self._lock:
            msg_id = next(self._ids)
            self.proc.stdin.write(json.dumps({"id": msg_id, "cmd": cmd, "args": args}) + "\n")
            self.proc.stdin.flush()
            result: dict = {}

            def read():
                while True:
                    line = self.proc.stdout.readline()
                    if not line:
                        return
                    try:
                        msg = json.loads(line)
                    except ValueError:
                        continue  # not ours (a library printing to stdout)
                    if msg.get("id") == msg_id:
                        result.update(msg)
                        return

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            reader.join(timeout)
            if not result:
                raise SdkError(f"{cmd}: no answer within {timeout} s\n{self.log()[-3000:]}")
            if not result.get("ok"):
                raise SdkError(f"{cmd}: {result.get('error')}\n{self.log()[-2000:]}")
            return result.get("result")

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

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

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
