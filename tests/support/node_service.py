"""What the PowerSync service (tests/support/powersync.py) and the Storage server
(tests/support/storage.py) have in common: a Node program built once from pinned source by an
install script, run in its own process group with its output in a log file, live once a probe
URL answers 200, stopped with SIGTERM and, after 15 s, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]

_installed: dict[str, tuple[str, str]] = {}


def installed(script: str, node_var: str, entry_var: str) -> tuple[str, str]:
    """(node binary, entry script): from $`node_var` / $`entry_var` when both are set, else from
    what `script` (e.g. "powersync/install.sh", run once per test process) prints."""
    node, entry = os.environ.get(node_var), os.environ.get(entry_var)
    if node and entry:
        return node, entry
    if script not in _installed:
        proc = subprocess.run(["bash", str(ROOT / script)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=1800,
                              env=dict(os.environ, CI="true"))
        if proc.returncode != 0:
            raise RuntimeError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        found = dict(line.removeprefix("export ").split("=", 1)
                     for line in proc.stdout.splitlines() if line.startswith("export "))
        _installed[script] = found[node_var], found[entry_var]
    return _installed[script]


class NodeService:
    """Base of a service class: `_run` starts it and waits until it is live (stops it when it is
    not); `stop` ends it (a subclass adds its own cleanup)."""

    NAME = "service"  # in error messages

    url: str

    def _run(self, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path,
             probe_path: str, timeout: float, poll_seconds: float) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        try:
            self._wait_live(probe_path, timeout, poll_seconds)
        except BaseException:
            self.stop()
            raise

    def _start_on_free_ports(self, start, ports_given: bool, attempts: int = 3) -> None:
        """Calls `start()`, which picks free ports and runs the service (`_run`), again on other
        free ports when another process took one between the pick (`free_port`, which only finds
        a port free at that instant) and the service's bind: Node's EADDRINUSE, in the output the
        error holds. Ports the caller gave are never changed."""
        for attempt in range(attempts):
            try:
                start()
                return
            except RuntimeError as e:
                if ports_given or attempt == attempts - 1 or "EADDRINUSE" not in str(e):
                    raise

    def _wait_live(self, probe_path: str, timeout: float, poll_seconds: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.NAME} exited ({self.proc.returncode}):\n{self.output()[-4000:]}")
            try:
                if requests.get(self.url + probe_path, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.NAME} not live after {timeout:.0f} s:\n{self.output()[-4000:]}")
            time.sleep(poll_seconds)

    def output(self) -> str:
        """The service's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM (the service stops cleanly), then SIGKILL after 15 s; closes the log."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        if not self._log.closed:
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
