"""A Node script driven over stdin/stdout, one JSON object a line: what the SDK app
(tests/support/sdk_client.py, tests/sdk/driver.mjs) and the browser
(tests/support/web_browser.py, examples/web/test/browser.mjs) have in common.

    -> {"id": 1, "cmd": "execute", "args": {...}}
    <- {"id": 1, "ok": true, "result": ...}   or   {"id": 1, "ok": false, "error": "..."}

The script runs under Node 24 (scripts/node.sh) in its own process group; its stderr goes to a
log file."""

from __future__ import annotations

import functools
import itertools
import json
import os
import subprocess
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def node() -> str:
    """Node 24 (scripts/node.sh): the SDK's better-sqlite3 is compiled against it."""
    bin_dir = subprocess.run(["bash", str(ROOT / "scripts/node.sh")], check=True, text=True,
                             stdout=subprocess.PIPE).stdout.strip()
    return bin_dir + "/node"


class LineChild:
    """Base of a driver class: `_spawn` starts the script, `call` sends one command and waits
    for its answer (raising `ERROR`, with the last `ERROR_LOG_TAIL` characters of the log when
    the script reports a failure)."""

    ERROR: type[Exception] = RuntimeError
    ERROR_LOG_TAIL = 0

    def _spawn(self, script: Path, cwd: Path, log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [node(), str(script)], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, text=True, bufsize=1, env=dict(os.environ, NODE_NO_WARNINGS="1"),
            start_new_session=True)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

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
                raise self.ERROR(f"{cmd}: no answer within {timeout} s\n{self.log()[-3000:]}")
            if not result.get("ok"):
                tail = f"\n{self.log()[-self.ERROR_LOG_TAIL:]}" if self.ERROR_LOG_TAIL else ""
                raise self.ERROR(f"{cmd}: {result.get('error')}{tail}")
            return result.get("result")

    def log(self) -> str:
        """What the script wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
