"""The built worker (build/index.js) under `wrangler dev` (workerd), plus a JWKS server.

`WorkerProcess(vars)` writes a throwaway wrangler config (no build step: `make test` builds
once before the end-to-end tests) and a `.dev.vars` with exactly `vars`, starts
`wrangler dev` on a loopback port (the one wrangler binds and reports, unless one is given) and
waits until it answers. Its combined output is kept
in `.output()` so tests can check what the worker logged. `extra_config` is appended to the
wrangler config (bindings, e.g. the metrics dataset). `inspector=False` starts it through
wrangler's API without the devtools inspector (tests/support/wrangler_dev.mjs; the benchmarks).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests

from tests.support.upstream import ScriptedUpstream

ROOT = Path(__file__).resolve().parents[2]
WRANGLER = ROOT / "node_modules/.bin/wrangler"
WRANGLER_DEV_API = Path(__file__).resolve().parent / "wrangler_dev.mjs"
BUILD = ROOT / "build/index.js"
DEVTOOL = ROOT / "target/debug/devtool"


READY = re.compile(r"Ready on http://127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dotenv_value(value: str) -> str:
    """A .dev.vars value that dotenv reads back exactly: single-quoted (literal) unless it holds
    newlines, which only double quotes can carry (as \\n, expanded by dotenv)."""
    if "\n" in value:
        assert '"' not in value and "\\n" not in value, "not representable in .dev.vars"
        return '"' + value.replace("\n", "\\n") + '"'
    assert "'" not in value, "not representable in .dev.vars"
    return "'" + value + "'"


class WorkerProcess:
    def __init__(self, vars: dict[str, str], startup_timeout: float = 60.0, main: Path | None = None,
                 inspector: bool = True, port: int | None = None, extra_config: str = ""):
        main = main or BUILD
        if not main.exists():
            raise RuntimeError(f"{main} is missing: run `make build` (make test does) first")
        self.vars = dict(vars)
        self.dir = Path(tempfile.mkdtemp(prefix="worker-e2e-"))
        (self.dir / "wrangler.toml").write_text(
            f'name = "e2e"\nmain = "{main}"\ncompatibility_date = "2026-11-01"\n' + extra_config
        )
        (self.dir / ".dev.vars").write_text(
            "".join(f"{k}={dotenv_value(v)}\n" for k, v in self.vars.items())
        )
        self.log_path = self.dir / "wrangler.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, CI="true", WRANGLER_SEND_METRICS="false", NO_COLOR="1",
                   WRANGLER_LOG_PATH=str(self.dir / "logs"))
        # Without a port given, wrangler binds one the system picks (port 0) and prints it. A port
        # chosen here first can be taken by another process before wrangler binds it: wrangler's
        # CLI then exits with "Address already in use" (a CI run lost a module to it), its API hangs.
        if inspector:
            command = [str(WRANGLER), "dev", "--ip", "127.0.0.1", "--port", str(port or 0), "--inspector-port", "0"]
        else:
            command = ["node", str(WRANGLER_DEV_API), str(self.dir / "wrangler.toml"), str(port or 0)]
        self.proc = subprocess.Popen(
            command,
            cwd=self.dir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.time() + startup_timeout
        # The port: the one given (a worker restarted at the same address after stop()), or the
        # one wrangler reports ("Ready on http://127.0.0.1:<port>").
        self.port = port
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wrangler dev exited early:\n{self.output()[-3000:]}")
            if self.port is None and (ready := READY.search(self.output())):
                self.port = int(ready.group(1))
            if self.port is not None:
                try:
                    requests.get(self.url + "/health", timeout=2)
                    break
                except requests.RequestException:
                    pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"wrangler dev did not answer:\n{self.output()[-3000:]}")
            time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_lines(self) -> list[dict]:
        """The worker's structured JSON log lines seen so far."""
        lines = []
        for line in self.output().splitlines():
            start = line.find("{")
            if start < 0:
                continue
            try:
                value = json.loads(line[start:])
            except ValueError:
                continue
            if isinstance(value, dict) and ("route" in value or "event" in value):
                lines.append(value)
        return lines

    def log_line(self, response: requests.Response, timeout: float = 10.0) -> dict:
        """The log line of `response` (the one with its X-Request-Id). The worker writes it before
        answering, but wrangler passes it to the output on its own time: it is waited for, since
        the last line read right after the answer can be the request's before."""
        request_id = response.headers["X-Request-Id"]
        deadline = time.time() + timeout
        while True:
            lines = [line for line in self.log_lines() if line.get("request_id") == request_id]
            if lines:
                return lines[0]
            assert time.time() < deadline, f"no log line for request {request_id}:\n{self.output()[-2000:]}"
            time.sleep(0.1)

    def get(self, path: str, **kw) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def request(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class JwksServer:
    """Serves a mutable JWKS at /auth/v1/.well-known/jwks.json and counts fetches.
    `fail_with` makes it answer that status instead; `delay` (seconds) holds every answer back
    (so that concurrent requests overlap a fetch)."""

    def __init__(self):
        self.keys: list[dict] = []
        self.fetches = 0
        self.fail_with: int | None = None
        self.delay = 0.0
        counting = threading.Lock()

        def respond(method, path, headers, sent):
            with counting:
                self.fetches += 1
            time.sleep(self.delay)
            if self.fail_with:
                return self.fail_with, {}, b""
            body = json.dumps({"keys": self.keys}).encode()
            return 200, {"Content-Type": "application/json", "Cache-Control": "public, max-age=600"}, body

        self.upstream = ScriptedUpstream(respond)
        self.url = f"{self.upstream.url}/auth/v1/.well-known/jwks.json"

    def stop(self):
        self.upstream.stop()


def devtool(*args: str) -> str:
    """Runs the native dev tool (built by `make test`) and returns its stdout."""
    return subprocess.run([str(DEVTOOL), *args], check=True, capture_output=True, text=True,
                          cwd=ROOT).stdout.strip()
