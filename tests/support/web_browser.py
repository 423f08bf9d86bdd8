"""The web demo (examples/web) in a real browser, for tests/e2e/test_web.py.

    page = DemoPage.start(tmp_dir)            # vite build into tmp_dir, then vite preview on a free port
    browser = Browser()                       # Debian's /usr/bin/chromium, headless, via playwright-core
    tab = browser.open(page.url_for(worker.url, session_token))
    browser.wait_for(tab, "window.demo.lastUpload !== null")
    browser.eval(tab, "window.demo.db.getAll('select * from todos')")

The browser is driven by examples/web/test/browser.mjs over stdin/stdout (one JSON object per
line), under Node 24 (scripts/node.sh), as tests/support/sdk_client.py drives the Node SDK.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import requests

from tests.support.line_child import LineChild, node
from tests.support.worker import free_port

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "examples/web"
DRIVER = WEB / "test/browser.mjs"
VITE = WEB / "node_modules/vite/bin/vite.js"


class BrowserError(RuntimeError):
    pass


class DemoPage:
    """The page, built for this run, served by `vite preview` on 127.0.0.1:<free port>."""

    def __init__(self, port: int, proc: subprocess.Popen, log_path: Path):
        self.port = port
        self.origin = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log_path = log_path

    @classmethod
    def start(cls, log_dir: Path) -> "DemoPage":
        """Builds the page into `log_dir`/dist (about 3 s; never touches examples/web/dist, so
        parallel runs and a `make dev` beside them do not collide) and serves it."""
        env = dict(os.environ, CI="true", NO_COLOR="1")
        env["PATH"] = str(Path(node()).parent) + os.pathsep + env.get("PATH", "")
        out = log_dir / "dist"
        subprocess.run([node(), str(VITE), "build", "--logLevel", "warn", "--outDir", str(out), "--emptyOutDir",
                        "--bypass-lock"],
                       cwd=WEB, env=env, check=True)
        # The port is picked here (free_port), and another process can take it before Vite binds
        # it: Vite then exits (strictPort, vite.config.js) and the page starts on another one.
        for attempt in range(3):
            port = free_port()
            log_path = log_dir / f"vite-preview-{attempt}.log"
            log = open(log_path, "wb")
            # --bypass-lock (here and in the build): Vite allows one build and one preview per
            # project at a time unless told otherwise; each run has its own outDir.
            proc = subprocess.Popen([node(), str(VITE), "preview", "--port", str(port), "--outDir", str(out),
                                     "--bypass-lock"], cwd=WEB, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
            page = cls(port, proc, log_path)
            deadline = time.time() + 30
            while True:
                try:
                    requests.get(page.origin + "/", timeout=2).raise_for_status()
                    return page
                except requests.RequestException:
                    if proc.poll() is not None or time.time() > deadline:
                        page.stop()
                        shown = log_path.read_text()
                        if attempt < 2 and "already in use" in shown:
                            break
                        raise BrowserError(f"vite preview did not start:\n{shown[-2000:]}")
                    time.sleep(0.2)
        raise AssertionError("unreachable")

    def url_for(self, worker_url: str, session_token: str | None = None, retry_delay_ms: int = 1000) -> str:
        url = f"{self.origin}/?worker={quote(worker_url, safe='')}&retryDelayMs={retry_delay_ms}"
        return url + (f"#session={session_token}" if session_token else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Browser(LineChild):
    """One headless Chromium profile (tabs share IndexedDB and shared workers, like one person's
    browser)."""

    ERROR = BrowserError

    def __init__(self, log_path: Path):
        self._spawn(DRIVER, cwd=WEB, log_path=log_path)
        self.version = self.call("launch", timeout=60)

    def open(self, url: str) -> int:
        return self.call("open", url=url)

    def eval(self, tab: int, expression: str):
        return self.call("eval", tab=tab, expression=expression)

    def wait_for(self, tab: int, expression: str, timeout_ms: int = 30000):
        return self.call("waitFor", timeout=timeout_ms / 1000 + 10, tab=tab, expression=expression,
                         timeoutMs=timeout_ms)

    def fill(self, tab: int, selector: str, value) -> None:
        self.call("fill", tab=tab, selector=selector, value=value)

    def click(self, tab: int, selector: str) -> None:
        self.call("click", tab=tab, selector=selector)

    def type(self, tab: int, text: str) -> None:
        """Keystrokes into whatever has the focus now (`fill` focuses its element first)."""
        self.call("type", tab=tab, text=text)

    def texts(self, tab: int, selector: str) -> list[str]:
        return self.call("text", tab=tab, selector=selector)

    def screenshot(self, tab: int, path: Path) -> None:
        self.call("screenshot", tab=tab, path=str(path))

    def errors(self, tab: int) -> list[dict]:
        return self.call("errors", tab=tab)

    def warnings(self, tab: int) -> list[dict]:
        return self.call("warnings", tab=tab)

    def close(self) -> None:
        try:
            self.call("close", timeout=20)
        except BrowserError:
            pass
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
        self._log.close()
