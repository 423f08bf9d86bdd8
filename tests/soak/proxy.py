"""A fault-injecting HTTP proxy for the soak: worker -> proxy -> PostgREST stand-in.

The worker's `SUPABASE_URL` points at the proxy. For every request under `/rest/v1` the proxy
draws one fault kind from a seeded RNG (only while faults are on; the session path `/auth/v1`
and everything else always passes):

  pass         forwarded, answer relayed
  http_500     answered 500 without a PostgREST code, never forwarded
  http_503     answered 503 without a PostgREST code, never forwarded
  hang         never forwarded; the connection is held past the worker's timeout, then reset
  reset        never forwarded; the connection is reset at once (TCP RST)
  drop_answer  forwarded and applied upstream, then the answer is dropped (connection reset)
  hang_after   forwarded and applied upstream, then held past the worker's timeout, then reset
  late         held past the worker's timeout, then forwarded and applied upstream, then reset:
               a write that lands after the worker gave up on it (and after whatever it sent
               next), as a request queued behind a busy database can in production
  statement_timeout
               an atomic call (`/rpc/powersync_apply_transaction`) answered 500 `57014`
               `canceling statement due to statement timeout`, never forwarded: a call the
               database cancelled whole, which the worker (`UPLOAD_ATOMIC` unset) then applies
               through REST requests. Only for the transactions `configure(timeout_ok=...)`
               accepts; any other request drawn this kind passes

`configure(late_ok=...)` limits `late` to the paths it accepts (the others pass).

"drop_answer" and "hang_after" are the "applied, answer lost" faults: the stand-in has finished
the request (its database transaction is committed) before the proxy decides not to answer.

"late" is the one fault that applies a write after the worker has given up on it. Outside it,
no write may land late: every other forwarded request carries a deadline (`X-Standin-Deadline`,
`deadline_seconds` after the proxy received it, well inside the worker's timeout), past which the
stand-in rolls it back and answers a statement timeout (57014), as a database whose statement
timeout is shorter than the worker's `UPSTREAM_TIMEOUT_MS` does. Without it, a request the
stand-in serves slowly on a busy machine would be an unplanned late write; `expired` counts the
requests rolled back that way.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from tests.postgrest_standin.standin import read_request_body, serve_in_thread

KINDS = ("pass", "http_500", "http_503", "hang", "reset", "drop_answer", "hang_after", "late",
         "statement_timeout")
ATOMIC_CALL = "/rest/v1/rpc/powersync_apply_transaction"
# What PostgREST answers for a statement the timeout cancelled (SQLSTATE 57014, HTTP 500).
STATEMENT_TIMEOUT = (b'{"code":"57014","details":null,"hint":null,'
                     b'"message":"canceling statement due to statement timeout"}')

# Default per-request probabilities while faults are on (the rest passes).
# About one request in 13 fails: an upload of ~10 requests then completes whole about half the
# time, and otherwise completes its leading transactions (the rest is re-sent).
DEFAULT_RATES = {"http_500": 0.015, "http_503": 0.015, "hang": 0.004, "reset": 0.015,
                 "drop_answer": 0.025, "hang_after": 0.004}

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "content-length", "host"}


class FaultProxy:
    """`FaultProxy(upstream_url, hang_seconds)`; `start()`, `configure(seed, rates)` (faults on),
    `faults_off()`, `counts` (requests by kind), `stop()`."""

    def __init__(self, upstream_url: str, hang_seconds: float = 1.5, deadline_seconds: float = 0.6,
                 host: str = "127.0.0.1"):
        parts = urlsplit(upstream_url)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.hang_seconds = hang_seconds
        self.deadline_seconds = deadline_seconds
        self.expired = 0
        self.dead_letter_answers = 0
        self.in_flight = 0  # requests being handled (a late one is held, then forwarded)
        self.host = host
        self.port: int | None = None
        self._lock = threading.Lock()
        self._rng = random.Random(0)
        self._rates: dict[str, float] | None = None
        self._timeout_ok = None
        self._late_ok = None
        self.counts: Counter = Counter()
        self.other_requests = 0
        self.upstream_errors = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------ control
    def configure(self, seed: int, rates: dict[str, float] | None = None, *, timeout_ok=None,
                  late_ok=None) -> None:
        """Faults on, drawn from `random.Random(seed)`; counters reset. `timeout_ok(client_id,
        transaction_id)`: whether an atomic call of that transaction may be answered
        `statement_timeout` (default: none may); `late_ok(path)`: whether a request to `path` may
        be `late` (default: every one)."""
        rates = dict(DEFAULT_RATES if rates is None else rates)
        unknown = set(rates) - set(KINDS)
        if unknown or sum(rates.values()) > 1:
            raise ValueError(f"bad rates {rates}")
        with self._lock:
            self._rng = random.Random(seed)
            self._rates = rates
            self._timeout_ok = timeout_ok
            self._late_ok = late_ok
            self.counts = Counter()
            self.other_requests = 0
            self.upstream_errors = 0
            self.expired = 0
            self.dead_letter_answers = 0

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no request is being handled (a late write held past the worker's timeout
        lands, or not, before the database is read), at most `timeout` seconds."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self._lock:
                if self.in_flight == 0:
                    return True
            time.sleep(0.05)
        return False

    def faults_off(self) -> None:
        with self._lock:
            self._rates = None

    def choose(self, path: str, body: bytes = b"") -> str:
        with self._lock:
            if not (path == "/rest/v1" or path.startswith("/rest/v1/")):
                self.other_requests += 1
                return "pass"
            kind = "pass"
            if self._rates is not None:
                x = self._rng.random()
                for name, rate in self._rates.items():
                    if x < rate:
                        kind = name
                        break
                    x -= rate
            if kind == "late" and self._late_ok is not None and not self._late_ok(path):
                kind = "pass"
            if kind == "statement_timeout" and not (path == ATOMIC_CALL and self._may_time_out(body)):
                kind = "pass"
            self.counts[kind] += 1
            return kind

    def _may_time_out(self, body: bytes) -> bool:
        if self._timeout_ok is None:
            return False
        try:
            call = json.loads(body)
        except ValueError:
            return False
        return isinstance(call, dict) and bool(self._timeout_ok(call.get("client_id"), call.get("transaction_id")))

    def snapshot(self) -> dict:
        with self._lock:
            return {"by_kind": {k: self.counts.get(k, 0) for k in KINDS},
                    "faults": sum(v for k, v in self.counts.items() if k != "pass"),
                    "rest_requests": sum(self.counts.values()),
                    "other_requests": self.other_requests,
                    "upstream_errors": self.upstream_errors,
                    "expired": self.expired,
                    "dead_letter_answers": self.dead_letter_answers}

    # ------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> int:
        handler = type("_Handler", (_ProxyHandler,), {"app": self})
        self._server, self._thread = serve_in_thread(handler, self.host, port, "soak-proxy")
        self.port = self._server.server_address[1]
        return self.port

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    app: FaultProxy
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, fmt, *args):  # quiet
        pass

    def handle(self):
        try:
            super().handle()
        except (ConnectionResetError, BrokenPipeError, TimeoutError):
            pass  # the worker reset or dropped its connection: nothing to answer

    def do_GET(self):
        self._handle()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        return read_request_body(self)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0, then close)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _forward(self, body: bytes, deadline: float | None):
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if deadline is not None:
            headers["X-Standin-Deadline"] = repr(deadline)
        headers["Host"] = f"{self.app.upstream_host}:{self.app.upstream_port}"
        headers["Content-Length"] = str(len(body))
        for attempt in (0, 1):
            reused = self._upstream is not None
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(self.app.upstream_host,
                                                            self.app.upstream_port, timeout=60)
            try:
                self._upstream.request(self.command, self.path, body=body, headers=headers)
                resp = self._upstream.getresponse()
                data = resp.read()
                out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
                if resp.will_close:
                    self._upstream.close()
                    self._upstream = None
                return resp.status, out, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # a kept-alive upstream connection closed under us: one new connection
                self._upstream.close()
                self._upstream = None
                if attempt == 1 or not reused:
                    raise
        raise AssertionError("unreachable")

    def _handle(self) -> None:
        with self.app._lock:
            self.app.in_flight += 1
        try:
            self._handle_counted()
        finally:
            with self.app._lock:
                self.app.in_flight -= 1

    def _handle_counted(self) -> None:
        received = time.monotonic()
        try:
            body = self._read_body()
        except (ValueError, OSError):
            return self._reset()
        path = urlsplit(self.path).path
        kind = self.app.choose(path, body)
        try:
            if kind == "reset":
                return self._reset()
            if kind == "hang":
                time.sleep(self.app.hang_seconds)
                return self._reset()
            if kind in ("http_500", "http_503"):
                status = int(kind[-3:])
                payload = b'{"message":"injected by the soak proxy"}'
                return self._send(status, [("Content-Type", "application/json")], payload)
            if kind == "statement_timeout":
                return self._send(500, [("Content-Type", "application/json")], STATEMENT_TIMEOUT)
            deadline = None
            if kind == "late":
                time.sleep(self.app.hang_seconds)  # the worker gives up; the write lands after
            else:
                deadline = received + self.app.deadline_seconds
            try:
                status, headers, data = self._forward(body, deadline)
                if deadline is not None and status == 500 and b'"57014"' in data and time.monotonic() > deadline:
                    with self.app._lock:  # rolled back at the deadline (module docs)
                        self.app.expired += 1
                if status == 200 and path.endswith("/rpc/powersync_apply_transaction") and \
                        b'"dead_letter"' in data:
                    with self.app._lock:  # the atomic function answered from a dead letter's ledger record
                        self.app.dead_letter_answers += 1
            except (OSError, http.client.HTTPException) as e:
                with self.app._lock:
                    self.app.upstream_errors += 1
                return self._send(502, [("Content-Type", "application/json")],
                                  ('{"message":"soak proxy: upstream error %s"}' % type(e).__name__).encode())
            if kind in ("drop_answer", "late"):
                return self._reset()
            if kind == "hang_after":
                time.sleep(self.app.hang_seconds)
                return self._reset()
            self._send(status, headers, data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
