"""A PostgREST-compatible stand-in for tests (Supabase flavoured).

PostgREST itself cannot be installed on the test machines, so this small
server speaks the part of PostgREST 12's HTTP API that the upload bridge uses,
in front of a real PostgreSQL, the way Supabase exposes it:

  * ``/rest/v1/<table>``: POST (insert / upsert, bulk), PATCH, DELETE, GET,
    with PostgREST's filters, ``Prefer`` header, error bodies and status codes;
  * ``/rest/v1/rpc/<function>``: POST with named arguments;
  * ``/auth/v1/user``: Supabase Auth's "who am I" endpoint;
  * ``/_standin/...``: a control API for tests (stats, fault injection,
    session revocation, version and connection mode). Not part of PostgREST.

Versions: PostgREST 12 (what Supabase runs) by default; ``postgrest_version=13``
(constructor, ``--postgrest-version``, or ``POST /_standin/config``) switches to
13's answers where the two differ (see VERSION_DIFFERENCES and docs/testing.md, "The PostgREST stand-in").

``close_connections`` (constructor, ``--close-connections``, or
``POST /_standin/config {"close_connections": ...}``) closes every connection
after its answer: ``"http1.0"`` (or ``true``) answers as an HTTP/1.0 server
(http.server's default: no keep-alive); ``"keep-alive-timeout"`` answers HTTP/1.1
without announcing the close, like a proxy whose keep-alive timeout ends right
after each answer. ``false``/``null``: keep-alive, the default.

Each HTTP request is one database transaction: ``BEGIN; SET LOCAL ROLE <role>;
set_config('request.jwt.claims', ...)`` then one statement, then COMMIT, or
ROLLBACK on error, so RLS policies using ``auth.uid()`` behave as on Supabase.
The stand-in connects as a superuser (the DSN's user) and switches role per
request, with ``authenticator`` as the session user as on Supabase; it never formats values
into SQL (parameters + quoted identifiers).
Role settings (``alter role ... set``): PostgREST logs in as its authenticator
role, whose settings are the session's defaults, and applies the impersonated
role's settings in each transaction (PostgREST >= 11.1, "impersonated role
settings"; read when its configuration is loaded or reloaded). The stand-in
applies, in each transaction, the settings of a role named ``authenticator``
(if one exists; Supabase's has ``statement_timeout=8s``, which is what
``service_role``, without a timeout of its own, runs with) and then the
impersonated role's, read for every request.

``X-Standin-Deadline`` (a test hook, not PostgREST's): a request carrying a
``time.monotonic()`` value is rolled back instead of committed once that moment
has passed, and answered as a statement timeout (500, 57014). The fault soak's
proxy sets it so that no write lands after the worker gave up on it, as a
database whose statement timeout is shorter than the worker's
``UPSTREAM_TIMEOUT_MS`` guarantees (tests/soak/proxy.py).

Run:  python -m tests.postgrest_standin.standin --port 54321 \
          --dsn postgresql://postgres@127.0.0.1:5432/postgres --jwt-secret S
Import:  StandIn(dsn, jwt_secret, ...).start(port=0) -> port; .stop()
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt as pyjwt
import psycopg
from psycopg import sql

# The role PostgREST logs in as on Supabase: its settings are each session's defaults.
AUTHENTICATOR_ROLE = "authenticator"
JSON_CT = "application/json; charset=utf-8"
MAX_LOGGED_REQUESTS = 1000
POSTGREST_VERSIONS = (12, 13)
CONNECTION_MODES = (None, "http1.0", "keep-alive-timeout")


def connection_mode(value) -> str | None:
    """``close_connections`` as one of CONNECTION_MODES (``True`` = ``"http1.0"``)."""
    if value is True:
        return "http1.0"
    if value is False or value is None:
        return None
    if value in CONNECTION_MODES:
        return value
    raise ValueError(f"close_connections must be one of {CONNECTION_MODES} or a boolean")

# Where PostgREST 12 (Supabase's) and 13 answer differently, for what this stand-in covers.
# Sources: PostgREST CHANGELOG.md 13.0.0 ("Changed": #3697/#3602 PGRST205, #3600/#3926
# PGRST303; "Added": #2967 Proxy-Status) and src/PostgREST/Error.hs of 12.2 and 13.
VERSION_DIFFERENCES = {
    "unknown table": "12: POST/PATCH/DELETE 404 with body {} (no code); GET 404 42P01 from "
                     "PostgreSQL. 13: 404 PGRST205 'Could not find the table ... in the schema "
                     "cache' for every method",
    "expired JWT": "12: 401 PGRST301 'JWT expired'. 13: 401 PGRST303 'JWT expired' (PGRST303 is "
                   "new in 13: JWT claims errors)",
    "Proxy-Status": "12: none. 13: 'Proxy-Status: PostgREST; error=<code>' on every error",
    "invalid path": "12: 404 with body {} (no code) for a path other than /<table> or /rpc/<name>. "
                    "13: 404 PGRST125 'Invalid path specified in request URL'",
}

# Query-string keys that are not column filters.
RESERVED_PARAMS = {"select", "columns", "on_conflict", "order", "limit", "offset", "apikey"}
UNSUPPORTED_PARAMS = {"and", "or", "not.and", "not.or"}

FILTER_OPS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=",
              "like": "LIKE", "ilike": "ILIKE", "isdistinct": "IS DISTINCT FROM"}
IS_VALUES = {"null": "IS NULL", "not_null": "IS NOT NULL", "true": "IS TRUE",
             "false": "IS FALSE", "unknown": "IS UNKNOWN"}


# --------------------------------------------------------------------------- errors
class HttpError(Exception):
    """An HTTP answer that ends the request early (error or not)."""

    def __init__(self, status: int, body, headers: dict | None = None):
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


class ApiError(HttpError):
    """A PostgREST-shaped error: {"code","details","hint","message"}."""

    def __init__(self, status: int, code: str, message: str, details=None, hint=None,
                 headers: dict | None = None):
        body = {"code": code, "details": details, "hint": hint, "message": message}
        super().__init__(status, body, headers)
        self.code = code


class Unsupported(ApiError):
    """A PostgREST feature this stand-in does not implement (never PostgREST's answer)."""

    def __init__(self, what: str):
        super().__init__(501, "STANDIN501", f"postgrest stand-in: {what} is not supported",
                         None, "Extend tests/postgrest_standin/standin.py if the bridge needs it.")


def pg_error_status(sqlstate: str | None, role: str) -> int:
    """PostgREST's SQLSTATE -> HTTP status table (docs: references/errors)."""
    s = sqlstate or ""
    if not s:
        return 500
    if re.fullmatch(r"PT\d{3}", s):
        return int(s[2:])
    two = s[:2]
    if two == "08":
        return 503
    if two == "09":
        return 500
    if two in ("0L", "0P"):
        return 403
    if s in ("23503", "23505"):
        return 409
    if s == "25006":
        return 405
    if two == "25":
        return 500
    if two == "28":
        return 403
    if two in ("2D", "38", "39", "3B", "40"):
        return 500
    if s == "53400":
        return 500
    if two == "53":
        return 503
    if s == "57P01":  # terminating connection due to administrator command (12.2 and 13)
        return 503
    if two in ("54", "55", "57", "58", "F0", "HV", "XX"):
        return 500
    if s == "P0001":
        return 400
    if two == "P0":
        return 500
    if s in ("42883", "42P01"):
        return 404
    if s == "42P17":
        return 500
    if s == "42501":
        return 401 if role == "anon" else 403
    return 400


def pg_error_to_http(e: psycopg.Error, role: str, version: int = 12) -> HttpError:
    diag = e.diag
    sqlstate = e.sqlstate
    message = diag.message_primary or str(e).strip()
    if sqlstate is None:
        # connection trouble, no server error
        return ApiError(503, "PGRST001", "Database client error. Retrying the connection.",
                        str(e).strip() or None, None)
    if sqlstate == "PGRST":  # RAISE sqlstate 'PGRST' with JSON message/detail
        try:
            m = json.loads(message)
            d = json.loads(diag.message_detail or "{}")
            return HttpError(int(d["status"]),
                             {"code": m.get("code"), "message": m.get("message"),
                              "details": m.get("details"), "hint": m.get("hint")},
                             {str(k): str(v) for k, v in (d.get("headers") or {}).items()})
        except (ValueError, KeyError, TypeError):
            return ApiError(500, "PGRST121", "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\""
                            " error", message, None)
    status = pg_error_status(sqlstate, role)
    if sqlstate == "22023" and message.startswith("role") and message.endswith("does not exist") \
            and version >= 13:
        status = 401  # the JWT's role claim names no role (PostgREST 13, PR #4081)
    return ApiError(status, sqlstate, message, diag.message_detail, diag.message_hint)


# --------------------------------------------------------------------------- parsing helpers
class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def serve_in_thread(handler: type, host: str, port: int, name: str):
    """Serves `handler` on host:port (0: a free port) in a daemon thread; returns (server,
    thread). Shared with the fault soak's proxy (tests/soak/proxy.py)."""
    server = _ThreadingServer((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"{name}:{server.server_address[1]}", daemon=True)
    thread.start()
    return server, thread


def read_request_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The body of the request `handler` is serving: chunked or by Content-Length (also used by
    the fault soak's proxy, tests/soak/proxy.py)."""
    if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
        chunks = []
        while True:
            line = handler.rfile.readline(65537)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline(65537)
        return b"".join(chunks)
    n = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(n) if n > 0 else b""


def parse_prefer(values: list[str]) -> dict[str, str]:
    """Prefer headers -> {key: value}; the first occurrence of a key wins."""
    prefs: dict[str, str] = {}
    for header in values:
        for token in header.split(","):
            token = token.strip()
            if not token:
                continue
            key, _, val = token.partition("=")
            key, val = key.strip().lower(), val.strip()
            if key not in prefs:
                prefs[key] = val
    return prefs


def content_range(lower: int, upper: int, total: int | None) -> str:
    """PostgREST's ``contentRangeH``: ``<lower>-<upper>/<total>``, the range ``*`` when the total
    is 0 or the range is empty, the total ``*`` when not counted."""
    in_range = total != 0 and lower <= upper
    return (f"{lower}-{upper}" if in_range else "*") + "/" + ("*" if total is None else str(total))


def parse_in_list(raw: str, whole: str) -> list[str]:
    """PostgREST's ``in.(a,"b,c",d)`` list: items split on commas; an item may
    be double-quoted, inside quotes backslash escapes the next character."""
    if not (raw.startswith("(") and raw.endswith(")")):
        raise ApiError(400, "PGRST100", f'"failed to parse filter ({whole})" (line 1, column 4)',
                       'unexpected end of input expecting "("', None)
    s = raw[1:-1]
    items: list[str] = []
    if s == "":
        return items
    i, n = 0, len(s)
    while True:
        if i < n and s[i] == '"':
            i += 1
            buf = []
            while i < n and s[i] != '"':
                if s[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(s[i])
                i += 1
            if i >= n:
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({whole})"',
                               "unterminated quoted value", None)
            i += 1  # closing quote
            if i < n and s[i] != ",":
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({whole})"',
                               'unexpected character after a quoted value, expecting ","', None)
            items.append("".join(buf))
        else:
            j = s.find(",", i)
            j = n if j < 0 else j
            item = s[i:j]
            if ")" in item:
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({whole})"',
                               'unexpected ")"', None)
            items.append(item)
            i = j
        if i >= n:
            break
        i += 1  # the comma
        if i >= n:  # trailing comma: empty last item
            items.append("")
            break
    return items


def _reject_constant(name):
    raise ValueError(f"invalid JSON constant {name}")


def load_json(body: bytes):
    try:
        text = body.decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant), text
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "PGRST102", "Empty or invalid json", None, None)


# --------------------------------------------------------------------------- JWT
class JwtError(Exception):
    def __init__(self, message: str, expired: bool = False):
        super().__init__(message)
        self.expired = expired


# PostgREST allows 30 s of clock skew on `exp`, `iat` and `nbf` (Auth.hs `allowedSkewSeconds`,
# since PR #2772, v11.1; documented by PR #3908). Supabase Auth's `/auth/v1/user` allows none.
POSTGREST_JWT_SKEW_SECONDS = 30


class JwtVerifier:
    """`jwks_url` may be a list: the project's own JWKS plus the key sets of the third-party auth
    providers it trusts (Supabase's PostgREST accepts tokens signed by any of them once a
    Third-party Auth integration is configured). A token's `kid` is looked up in each in turn."""

    def __init__(self, secret: str | None, jwks_url: str | list[str] | None, leeway: float = 0):
        self.secret = secret
        self.jwks_urls = [jwks_url] if isinstance(jwks_url, str) else list(jwks_url or [])
        self.jwks_url = self.jwks_urls[0] if self.jwks_urls else None
        self.leeway = leeway
        self._jwks_clients: list | None = None
        self._lock = threading.Lock()

    def reset_cache(self):
        with self._lock:
            self._jwks_clients = None

    def _clients(self) -> list:
        with self._lock:
            if self._jwks_clients is None:
                self._jwks_clients = [pyjwt.PyJWKClient(url, cache_keys=True, lifespan=600, timeout=5)
                                      for url in self.jwks_urls]
            return self._jwks_clients

    def _jwks_key(self, token: str):
        """The signing key for `token` from the first key set that has its `kid`."""
        error: Exception | None = None
        for client in self._clients():
            try:
                return client.get_signing_key_from_jwt(token).key
            except pyjwt.PyJWKClientError as e:
                error = e
        raise error or pyjwt.PyJWKClientError("no JWKS configured")

    def verify(self, token: str, leeway: float | None = None) -> dict:
        """The token's claims; `leeway` seconds of clock skew (default: the verifier's)."""
        if token.count(".") != 2:
            raise JwtError(f"Expected 3 parts in JWT; got {token.count('.') + 1}")
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.PyJWTError as e:
            raise JwtError(f"JWT cryptographic operation failed: {e}")
        alg = header.get("alg")
        if alg == "HS256":
            if not self.secret:
                raise JwtError("No suitable key or wrong key type (no JWT secret configured)")
            key = self.secret
        elif alg in ("ES256", "RS256", "EdDSA") and self.jwks_url:
            try:
                key = self._jwks_key(token)
            except pyjwt.PyJWKClientError as e:
                raise JwtError(f"No suitable key or wrong key type: {e}")
            except pyjwt.PyJWTError as e:
                raise JwtError(f"JWT cryptographic operation failed: {e}")
        else:
            raise JwtError(f"No suitable key or wrong key type (alg {alg!r})")
        try:
            return pyjwt.decode(token, key, algorithms=[alg], leeway=self.leeway if leeway is None else leeway,
                                options={"verify_aud": False, "verify_iss": False,
                                         "require": []})
        except pyjwt.ExpiredSignatureError:
            raise JwtError("JWT expired", expired=True)
        except pyjwt.InvalidSignatureError:
            raise JwtError("JWT cryptographic operation failed")
        except pyjwt.PyJWTError as e:
            raise JwtError(f"JWT validation failed: {e}")


def looks_like_jwt(s: str) -> bool:
    return s.count(".") == 2 and all(s.split("."))


# --------------------------------------------------------------------------- DB pool
class ConnectionPool:
    def __init__(self, dsn: str, size: int = 8):
        self.dsn = dsn
        self.size = size
        self._idle: queue.LifoQueue = queue.LifoQueue()

    def _new(self):
        return psycopg.connect(self.dsn, autocommit=False, connect_timeout=10,
                               application_name="postgrest-standin")

    @contextmanager
    def connection(self):
        conn = None
        while conn is None:
            try:
                c = self._idle.get_nowait()
            except queue.Empty:
                c = self._new()
            if c.closed or c.broken:
                continue
            conn = c
        try:
            yield conn
        finally:
            self._release(conn)

    def _release(self, conn):
        try:
            if conn.closed or conn.broken:
                return
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            if self._idle.qsize() < self.size:
                self._idle.put(conn)
                return
        except psycopg.Error:
            pass
        try:
            conn.close()
        except psycopg.Error:
            pass

    def close(self):
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
            except psycopg.Error:
                pass


# --------------------------------------------------------------------------- catalog
TABLE_SQL = """
select c.oid, c.relname
from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
where n.nspname = %s and c.relname = %s and c.relkind in ('r', 'v', 'm', 'f', 'p')
"""

COLUMNS_SQL = """
select a.attname,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       pg_catalog.pg_get_expr(d.adbin, d.adrelid),
       a.attidentity,
       a.attgenerated,
       case when a.attidentity <> '' then
         pg_catalog.pg_get_serial_sequence(%s, a.attname) end
from pg_catalog.pg_attribute a
left join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
where a.attrelid = %s and a.attnum > 0 and not a.attisdropped
order by a.attnum
"""

PK_SQL = """
select a.attname
from pg_catalog.pg_index i
join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = any (i.indkey)
where i.indrelid = %s and i.indisprimary
order by array_position(i.indkey::int2[], a.attnum)
"""

FUNCTIONS_SQL = """
select p.oid, p.proname, p.pronargs, p.pronargdefaults, p.proretset,
       coalesce(p.proargnames, '{}'::text[]),
       coalesce(p.proargmodes::text[], '{}'::text[]),
       array(select pg_catalog.format_type(t, null) from unnest(p.proargtypes) with ordinality u(t, o)
             order by o),
       rt.typtype, rt.typname, pg_catalog.format_type(p.prorettype, null)
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
join pg_catalog.pg_type rt on rt.oid = p.prorettype
where n.nspname = %s and p.proname = %s and p.prokind in ('f', 'p')
order by p.oid
"""

ROLE_SETTINGS_SQL = """
select s.setting
from pg_catalog.pg_db_role_setting d
cross join lateral unnest(d.setconfig) with ordinality as s(setting, ord)
where d.setrole = (select oid from pg_catalog.pg_roles where rolname = %s)
  and d.setdatabase in (0, (select oid from pg_catalog.pg_database where datname = current_database()))
order by d.setdatabase, s.ord
"""


class Column:
    __slots__ = ("name", "type", "default", "identity", "generated", "sequence")

    def __init__(self, name, type_, default, identity, generated, sequence):
        self.name, self.type, self.default = name, type_, default
        self.identity, self.generated, self.sequence = identity, generated, sequence

    def default_sql(self) -> sql.Composable:
        if self.default is not None:
            # catalog text (pg_get_expr), not user input; escape % for psycopg
            return sql.SQL("(" + self.default.replace("%", "%%") + ")")
        if self.identity and self.sequence:
            return sql.SQL("nextval({}::regclass)").format(sql.Literal(self.sequence))
        return sql.SQL("NULL")

    def type_sql(self) -> sql.Composable:
        return sql.SQL(self.type.replace("%", "%%"))


class Table:
    def __init__(self, schema: str, name: str, columns: list[Column], pk: list[str]):
        self.schema, self.name, self.columns, self.pk = schema, name, columns, pk
        self.by_name = {c.name: c for c in columns}

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def col_ident(self, col: str) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name, col)

    def require_column(self, col: str) -> Column:
        c = self.by_name.get(col)
        if c is None:
            raise ApiError(400, "PGRST204",
                           f"Could not find the '{col}' column of '{self.name}' in the schema cache",
                           None, None)
        return c


# --------------------------------------------------------------------------- the app
class Request:
    def __init__(self, method, path, query, headers, body):
        self.method = method
        self.path = path
        self.query = query  # list of (key, value), decoded
        self.headers = headers  # email.message.Message (case-insensitive)
        self.body = body

    def header(self, name, default=None):
        return self.headers.get(name, default)


class StandIn:
    """The stand-in server. ``start(port=0)`` runs it in a background thread
    and returns the port; ``stop()`` shuts it down."""

    def __init__(self, dsn: str, jwt_secret: str | None, jwks_url: str | list[str] | None = None,
                 anon_key: str | None = None, service_key: str | None = None,
                 host: str = "127.0.0.1", schemas=("public",), pool_size: int = 8,
                 log_requests: bool = False, jwt_leeway: float = 0,
                 postgrest_version: int = 12, close_connections: bool | str | None = None):
        if postgrest_version not in POSTGREST_VERSIONS:
            raise ValueError(f"postgrest_version must be one of {POSTGREST_VERSIONS}")
        self.default_version = postgrest_version
        self.default_close_connections = connection_mode(close_connections)
        self.dsn = dsn
        self.jwt_secret = jwt_secret
        self.anon_key = anon_key
        self.service_key = service_key
        self.host = host
        self.schemas = list(schemas)
        self.log_requests = log_requests
        self.verifier = JwtVerifier(jwt_secret, jwks_url, jwt_leeway)
        self.pool = ConnectionPool(dsn, pool_size)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self._reset_state()

    # ------------------------------------------------------------ state / control
    def _reset_state(self):
        with self._lock:
            self.rest_requests = 0
            self.auth_requests = 0
            self.by_method: Counter = Counter()
            self.by_status: Counter = Counter()
            self.faults: list[dict] = []
            self.revoked_subs: dict[str, str] = {}
            self.revoked_sessions: set[str] = set()
            self.request_log: list[dict] = []
            self.postgrest_version = self.default_version
            self.close_connections = self.default_close_connections
        self.verifier.reset_cache()

    def reset(self):
        self._reset_state()

    def add_fault(self, spec: dict):
        spec = dict(spec)
        if not any(k in spec for k in ("status", "delay_ms", "drop", "delay_after_ms",
                                       "drop_after")):
            raise ValueError("a fault needs status, delay_ms, drop, delay_after_ms or drop_after")
        if "status" in spec:
            spec["status"] = int(spec["status"])
            if not 100 <= spec["status"] <= 599:
                raise ValueError("status must be 100..599")
        spec["count"] = int(spec.get("count", 1))
        spec.setdefault("path_prefix", "/rest/v1")
        with self._lock:
            self.faults.append(spec)

    def _take_fault(self, method: str, path: str) -> dict | None:
        with self._lock:
            for f in self.faults:
                if f["count"] <= 0 or not path.startswith(f["path_prefix"]):
                    continue
                if f.get("method") and f["method"].upper() != method:
                    continue
                f["count"] -= 1
                fault = dict(f)
                self.faults = [x for x in self.faults if x["count"] > 0]
                return fault
        return None

    def configure(self, postgrest_version: int | None = None,
                  close_connections: bool | str | None = "unchanged") -> dict:
        """Switches the PostgREST version answered and the connection mode until the next
        ``reset()`` (which restores the constructor's values)."""
        if postgrest_version is not None:
            if postgrest_version not in POSTGREST_VERSIONS:
                raise ValueError(f"postgrest_version must be one of {POSTGREST_VERSIONS}")
        if close_connections != "unchanged":
            close_connections = connection_mode(close_connections)
        with self._lock:
            if postgrest_version is not None:
                self.postgrest_version = postgrest_version
            if close_connections != "unchanged":
                self.close_connections = close_connections
            return self.config()

    def config(self) -> dict:
        return {"postgrest_version": self.postgrest_version,
                "close_connections": self.close_connections}

    def revoke(self, sub: str | None = None, session_id: str | None = None,
               error_code: str = "session_not_found"):
        with self._lock:
            if sub:
                self.revoked_subs[str(sub)] = error_code
            if session_id:
                self.revoked_sessions.add(str(session_id))

    def stats(self) -> dict:
        with self._lock:
            return {"requests": self.rest_requests, "by_method": dict(self.by_method),
                    "by_status": {str(k): v for k, v in self.by_status.items()},
                    "auth_requests": self.auth_requests,
                    "pending_faults": sum(f["count"] for f in self.faults)}

    def requests_log(self) -> list[dict]:
        with self._lock:
            return list(self.request_log)

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, port: int = 0) -> int:
        # fail early if the database is unreachable
        with self.pool.connection() as conn:
            conn.execute("select 1")
            conn.rollback()
        handler = type("_Handler", (Handler,), {"standin": self})
        self._server, self._thread = serve_in_thread(handler, self.host, port, "postgrest-standin")
        self.port = self._server.server_address[1]
        print(f"standin listening on {self.host}:{self.port}", flush=True)
        return self.port

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread:
            self._thread.join(timeout=5)
            self._thread = None
        self.pool.close()

    def __enter__(self):
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------ auth
    def _gateway_check(self, req: Request) -> dict:
        """Supabase's API gateway: an apikey is required. Returns the claims
        that the key alone stands for."""
        apikey = req.header("apikey")
        if not apikey:
            for k, v in req.query:
                if k == "apikey":
                    apikey = v
                    break
        if not apikey:
            raise HttpError(401, {"message": "No API key found in request",
                                  "hint": "No `apikey` request header or url param was found."})
        claims = self._key_claims(apikey)
        if claims is None:
            raise HttpError(401, {"message": "Invalid API key",
                                  "hint": "Double check your Supabase `anon` or `service_role` API key."})
        return claims

    def _key_claims(self, key: str) -> dict | None:
        if (self.service_key and key == self.service_key) or key.startswith("sb_secret_"):
            return {"role": "service_role", "iss": "supabase"}
        if (self.anon_key and key == self.anon_key) or key.startswith("sb_publishable_"):
            return {"role": "anon", "iss": "supabase"}
        if looks_like_jwt(key):
            try:
                return self.verifier.verify(key)
            except JwtError:
                return None
        return None

    @staticmethod
    def _bearer(req: Request) -> str | None:
        auth = req.header("Authorization")
        if not auth:
            return None
        parts = auth.strip().split(None, 1)
        if len(parts) == 2 and parts[0].lower() == "bearer" and parts[1].strip():
            return parts[1].strip()
        return None

    def authenticate(self, req: Request) -> dict:
        """Claims of the request (PostgREST behind Supabase's gateway)."""
        key_claims = self._gateway_check(req)
        token = self._bearer(req)
        if token is None:
            claims = key_claims
        elif not looks_like_jwt(token) and self._key_claims(token) is not None:
            claims = self._key_claims(token)  # "Bearer sb_publishable_…" like supabase-js sends
        else:
            try:
                claims = self.verifier.verify(token, leeway=max(self.verifier.leeway, POSTGREST_JWT_SKEW_SECONDS))
            except JwtError as e:
                # PGRST303 (JWT claims errors) exists only from PostgREST 13
                code = "PGRST303" if e.expired and self.postgrest_version >= 13 else "PGRST301"
                raise ApiError(401, code, str(e), None, None,
                               {"WWW-Authenticate": f'Bearer error="invalid_token", '
                                                   f'error_description="{e}"'})
        # A valid JWT without a role claim runs as the anonymous role, as without a JWT
        # (PostgREST's docs, "User Impersonation"; Supabase's db-anon-role is `anon`).
        # Any other role is switched to as PostgREST does (SET ROLE as `authenticator`): a role
        # that does not exist is PostgreSQL's 22023, one not granted to authenticator its 42501
        # (see _RoleCursor and pg_error_to_http).
        role = claims.get("role", "anon")
        if not isinstance(role, str) or not role:
            raise ApiError(401, "PGRST301", "JWT role claim is not a role name", None, None,
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        claims = {**claims, "role": role}
        return claims

    # ------------------------------------------------------------ /auth/v1/user
    def handle_auth_user(self, req: Request):
        new_format = bool(req.header("X-Supabase-Api-Version"))

        def err(status, code, msg):
            if new_format:
                return HttpError(status, {"code": code, "message": msg})
            return HttpError(status, {"code": status, "error_code": code, "msg": msg})

        self._gateway_check(req)
        if req.method != "GET":
            raise err(405, "method_not_allowed", "Method not allowed")
        token = self._bearer(req)
        if token is None:
            raise err(401, "no_authorization", "This endpoint requires a Bearer token")
        try:
            claims = self.verifier.verify(token)
        except JwtError as e:
            reason = "token has invalid claims: token is expired" if e.expired else str(e)
            raise err(403, "bad_jwt", f"invalid JWT: unable to parse or verify signature, {reason}")
        sub = claims.get("sub")
        if not sub:
            raise err(403, "bad_jwt", "invalid claim: missing sub claim")
        with self._lock:
            revoked = self.revoked_subs.get(str(sub))
            session_revoked = str(claims.get("session_id")) in self.revoked_sessions
        if revoked == "user_not_found":
            raise err(403, "user_not_found", "User from sub claim in JWT does not exist")
        if revoked or session_revoked:
            raise err(403, "session_not_found",
                      "Session from session_id claim in JWT does not exist")
        aud = claims.get("aud")
        if isinstance(aud, list):
            aud = aud[0] if aud else ""
        user = {
            "id": sub, "aud": aud or "", "role": claims.get("role", ""),
            "email": claims.get("email", ""), "phone": claims.get("phone", ""),
            "app_metadata": claims.get("app_metadata", {}),
            "user_metadata": claims.get("user_metadata", {}),
            "is_anonymous": bool(claims.get("is_anonymous", False)),
        }
        return 200, {"Content-Type": JSON_CT}, json.dumps(user).encode()

    # ------------------------------------------------------------ /rest/v1
    def handle_rest(self, req: Request):
        claims = self.authenticate(req)
        role = claims["role"]
        rest = req.path[len("/rest/v1"):]
        if rest in ("", "/"):
            if req.method in ("GET", "HEAD"):
                return 200, {"Content-Type": "application/openapi+json; charset=utf-8"}, \
                    json.dumps({"swagger": "2.0", "info": {"title": "postgrest stand-in"}}).encode()
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {req.method}")
        parts = [unquote(p) for p in rest.strip("/").split("/")]
        schema = self._schema(req)
        if len(parts) == 2 and parts[0] == "rpc":
            if req.method not in ("POST",):
                if req.method == "GET":
                    raise Unsupported("GET /rpc (call functions with POST)")
                raise ApiError(405, "PGRST101", "Only GET and POST verbs are allowed for functions")
            return self._run(req, claims, lambda cur: self._rpc(cur, req, schema, parts[1], role))
        if len(parts) != 1:
            # a path PostgREST does not serve (a base URL with a path of its own before /rest/v1)
            if self.postgrest_version >= 13:
                raise ApiError(404, "PGRST125", "Invalid path specified in request URL", None, None)
            raise HttpError(404, {})
        table_name = parts[0]
        handlers = {"POST": self._insert, "PATCH": self._update, "DELETE": self._delete,
                    "GET": self._select, "HEAD": self._select}
        if req.method not in handlers:
            if req.method == "PUT":
                raise Unsupported("PUT (single-row upsert)")
            raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {req.method}")
        handler = handlers[req.method]
        return self._run(req, claims,
                         lambda cur: handler(cur, req, self._table(cur, schema, table_name,
                                                                   req.method)))

    def _schema(self, req: Request) -> str:
        profile = req.header("Content-Profile") if req.method in ("POST", "PATCH", "DELETE", "PUT") \
            else req.header("Accept-Profile")
        if profile:
            if profile not in self.schemas:
                raise ApiError(406, "PGRST106", "The schema must be one of the following: "
                               + ", ".join(self.schemas))
            return profile
        return self.schemas[0]

    def _run(self, req: Request, claims: dict, body_fn):
        role = claims["role"]
        try:
            with self.pool.connection() as conn:
                try:
                    with conn.cursor() as cur:
                        for settings_of in (AUTHENTICATOR_ROLE, role):
                            for (setting,) in cur.execute(ROLE_SETTINGS_SQL, (settings_of,)).fetchall():
                                name, _, value = setting.partition("=")
                                cur.execute("select set_config(%s, %s, true)", (name, value))
                        cur.execute(
                            "select set_config('request.jwt.claims', %s, true),"
                            " set_config('request.method', %s, true),"
                            " set_config('request.path', %s, true),"
                            " set_config('request.headers', %s, true)",
                            # PostgREST sees the path Supabase's gateway forwards,
                            # without /rest/v1 (Kong's strip_path): `/todos`
                            (json.dumps(claims), req.method, req.path.removeprefix("/rest/v1") or "/",
                             json.dumps({k.lower(): v for k, v in req.headers.items()})))
                        # body_fn does catalog lookups first (as the connecting
                        # superuser, like PostgREST's schema cache), then calls
                        # _become(cur, role) before its statement
                        result = body_fn(_RoleCursor(cur, role))
                    deadline = req.header("X-Standin-Deadline")
                    if deadline is not None and time.monotonic() > float(deadline):
                        raise ApiError(500, "57014", "canceling statement due to statement timeout")
                    conn.commit()
                    return result
                except BaseException:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        pass
                    raise
        except psycopg.Error as e:
            raise pg_error_to_http(e, role, self.postgrest_version)

    # ---------------------------------------------------------------- catalog
    def _table(self, cur, schema: str, name: str, method: str = "GET") -> Table:
        row = cur.execute(TABLE_SQL, (schema, name)).fetchone()
        if row is None:
            if self.postgrest_version >= 13:
                raise ApiError(404, "PGRST205",
                               f"Could not find the table '{schema}.{name}' in the schema cache",
                               None, None)
            if method in ("GET", "HEAD"):
                # 12 runs the read and PostgreSQL refuses it
                raise ApiError(404, "42P01", f'relation "{schema}.{name}" does not exist')
            # 12's NotFound for a mutation: 404 with an empty JSON object, no code
            raise HttpError(404, {})
        oid = row[0]
        qualified = sql.Identifier(schema, name).as_string(cur.raw)
        cols = [Column(*r) for r in cur.execute(COLUMNS_SQL, (qualified, oid)).fetchall()]
        pk = [r[0] for r in cur.execute(PK_SQL, (oid,)).fetchall()]
        return Table(schema, name, cols, pk)

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _param(req: Request, name: str) -> str | None:
        for k, v in req.query:
            if k == name:
                return v
        return None

    def _columns_param(self, req: Request, table: Table) -> list[str] | None:
        raw = self._param(req, "columns")
        if raw is None:
            return None
        cols = []
        for c in raw.split(","):
            c = c.strip().strip('"')
            if c and c not in cols:
                table.require_column(c)
                cols.append(c)
        return cols

    def _filters(self, req: Request, table: Table) -> tuple[sql.Composable, list]:
        conds: list[sql.Composable] = []
        params: list = []
        for key, value in req.query:
            if key in RESERVED_PARAMS:
                continue
            if key in UNSUPPORTED_PARAMS:
                raise Unsupported(f"logical operator {key}=")
            if any(t in key for t in ("->", "::", ".", "(")):
                raise Unsupported(f"filter on {key!r} (JSON paths, casts, embedded resources)")
            col = table.by_name.get(key)
            if col is None:
                raise ApiError(400, "42703", f"column {table.name}.{key} does not exist")
            whole = value
            negate = False
            if value.startswith("not."):
                negate, value = True, value[4:]
            op, dot, arg = value.partition(".")
            ident = table.col_ident(key)
            if not dot:
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({whole})" (line 1, column 1)',
                               'unexpected end of input expecting "."', None)
            if op in FILTER_OPS:
                if op in ("like", "ilike"):
                    cond = sql.SQL("{} {} %s").format(ident, sql.SQL(FILTER_OPS[op]))
                    params.append(arg.replace("*", "%"))
                else:
                    cond = sql.SQL("{} {} %s::{}").format(ident, sql.SQL(FILTER_OPS[op]),
                                                          col.type_sql())
                    params.append(arg)
            elif op == "is":
                v = IS_VALUES.get(arg.lower())
                if v is None:
                    raise ApiError(400, "PGRST100", f'"failed to parse filter ({whole})"',
                                   "is. accepts null, not_null, true, false, unknown", None)
                cond = sql.SQL("{} " + v).format(ident)
            elif op == "in":
                items = parse_in_list(arg, whole)
                if not items:
                    cond = sql.SQL("false")
                else:
                    cond = sql.SQL("{} IN ({})").format(
                        ident, sql.SQL(", ").join(sql.SQL("%s::{}").format(col.type_sql())
                                                  for _ in items))
                    params.extend(items)
            elif op in ("cs", "cd", "ov", "sl", "sr", "nxl", "nxr", "adj", "fts", "plfts",
                        "phfts", "wfts", "match", "imatch"):
                raise Unsupported(f"operator {op}.")
            else:
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({whole})" (line 1, column 1)',
                               f'unexpected "{op}" expecting an operator', None)
            conds.append(sql.SQL("NOT ({})").format(cond) if negate else cond)
        if not conds:
            return sql.SQL(""), params
        return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds), params

    def _select_list(self, req: Request, table: Table) -> sql.Composable:
        raw = self._param(req, "select")
        if raw is None or raw.strip() in ("", "*"):
            return sql.SQL("*")
        cols = []
        for c in raw.split(","):
            c = c.strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", c):
                raise Unsupported(f"select={raw} (only plain column lists)")
            if c not in table.by_name:
                raise ApiError(400, "42703", f"column {table.name}.{c} does not exist")
            cols.append(sql.Identifier(c))
        return sql.SQL(", ").join(cols)

    @staticmethod
    def _prefs(req: Request) -> dict[str, str]:
        return parse_prefer(req.headers.get_all("Prefer") or [])

    @staticmethod
    def _check_json_content_type(req: Request):
        ct = req.header("Content-Type")
        if ct is None:
            return
        media = ct.split(";")[0].strip().lower()
        if media not in ("application/json", "application/vnd.pgrst.object+json",
                         "application/vnd.pgrst.object", "*/*", ""):
            raise ApiError(415, "PGRST107", f"The request's Content-Type '{ct}' is not supported",
                           None, None)

    def _mutation_response(self, cur, prefs, applied: list[str], ok_status: int,
                           minimal_status: int, representation: bool, method: str,
                           rows: int | None = None):
        """PostgREST's answer to a write (src/PostgREST/Response.hs, 12 and 13 alike): every
        POST, PATCH and DELETE carries a ``Content-Range`` whose total is the number of rows
        written when ``Prefer: count=exact`` asked for it (then ``count=exact`` is in
        ``Preference-Applied``), ``*`` otherwise: POST and DELETE ``*/<n>`` (range
        ``contentRangeH 1 0``: always ``*``), PATCH ``0-<n-1>/<n>`` (``*/0`` for none); without
        the count ``*/*``, and for PATCH ``0-<n-1>/*``."""
        headers = {}
        text = None
        if representation:
            text, rows = cur.fetchone()
        elif rows is None:
            rows = max(cur.raw.rowcount, 0)
        counted = prefs.get("count") == "exact"
        if counted:
            applied.append("count=exact")
        total = rows if counted else None
        if method == "PATCH":
            headers["Content-Range"] = content_range(0, rows - 1, total)
        else:
            headers["Content-Range"] = content_range(1, 0, total)
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        if representation:
            headers["Content-Type"] = JSON_CT
            return ok_status, headers, text.encode()
        return minimal_status, headers, b""

    @staticmethod
    def _wrap_minimal(stmt: sql.Composable) -> sql.Composable:
        """A write without ``return=representation``: PostgREST still writes through a CTE,
        ``RETURNING 1`` (QueryBuilder's returningF: "we return 1 to know how many rows were
        modified"), and counts its rows. So a table whose rules rewrite the statement (``DO
        INSTEAD NOTHING``, a soft-delete rule without RETURNING) is refused (0A000) as there."""
        return sql.SQL("WITH pgrst_source AS ({stmt} RETURNING 1) SELECT count(*) FROM pgrst_source").format(stmt=stmt)

    def _execute_write(self, cur: "_RoleCursor", stmt: sql.Composable, params, req: Request, table: Table,
                       representation: bool) -> int | None:
        """Runs a write as PostgREST does; the number of rows written when not represented."""
        if representation:
            cur.execute(self._wrap_returning(stmt, req, table), params)
            return None
        cur.execute(self._wrap_minimal(stmt), params)
        return cur.fetchone()[0]

    def _wrap_returning(self, stmt: sql.Composable, req: Request, table: Table) -> sql.Composable:
        return sql.SQL("WITH pgrst_source AS ({stmt} RETURNING {tbl}.*) "
                       "SELECT coalesce(json_agg(pgrst_t), '[]')::text, count(*) FROM "
                       "(SELECT {sel} FROM pgrst_source) AS pgrst_t").format(
            stmt=stmt, tbl=table.ident, sel=self._select_list(req, table))

    # ---------------------------------------------------------------- POST /table
    def _insert(self, cur: "_RoleCursor", req: Request, table: Table):
        self._check_json_content_type(req)
        payload, raw_text = load_json(req.body)
        if isinstance(payload, dict):
            rows, array_text = [payload], "[" + raw_text + "]"
        elif isinstance(payload, list):
            if not all(isinstance(r, dict) for r in payload):
                raise ApiError(400, "PGRST102", "All object keys must match", None, None)
            rows, array_text = payload, raw_text
        else:
            raise ApiError(400, "PGRST102", "Empty or invalid json", None, None)
        prefs = self._prefs(req)
        applied = []

        cols = self._columns_param(req, table)
        restrict = cols is not None
        if cols is None:
            keys0 = list(rows[0].keys()) if rows else []
            for r in rows[1:]:
                if set(r.keys()) != set(keys0):
                    raise ApiError(400, "PGRST102", "All object keys must match", None, None)
            for k in keys0:
                table.require_column(k)
            cols = keys0

        missing_default = prefs.get("missing") == "default"
        if missing_default:
            applied.append("missing=default")

        elem = sql.SQL("e.elem")
        if restrict:
            elem = sql.SQL("(SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) FROM"
                           " jsonb_each(e.elem) AS kv(k, v) WHERE k = ANY(%s))")
        # As PostgREST's fromJsonBodyF: the body's columns only, each typed by the table
        # (json_to_recordset(…) AS _(col type, …)); a column the body leaves out is never read,
        # so a NOT NULL domain it leaves to its default is not refused.
        exprs = []
        for c in cols:
            col = table.by_name[c]
            val = sql.SQL("pgrst_body.{}").format(sql.Identifier(c))
            if missing_default:
                val = sql.SQL("CASE WHEN pgrst_body.pgrst_elem ? {} THEN {} ELSE {} END").format(
                    sql.Literal(c), val, col.default_sql())
            exprs.append(val)
        typed = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), table.by_name[c].type_sql())
                                   for c in cols)
        stmt = sql.SQL(
            "INSERT INTO {tbl} {collist} SELECT {exprs} FROM ("
            "SELECT e.elem AS pgrst_elem, e.ord AS pgrst_ord{record} "
            "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS e(elem, ord){lateral}"
            ") AS pgrst_body ORDER BY pgrst_body.pgrst_ord").format(
            tbl=table.ident,
            collist=(sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Identifier, cols)))
                     if cols else sql.SQL("")),
            exprs=sql.SQL(", ").join(exprs),
            record=sql.SQL(", r.*") if cols else sql.SQL(""),
            lateral=(sql.SQL(" CROSS JOIN LATERAL jsonb_to_record({elem}) AS r({typed})").format(
                elem=elem, typed=typed) if cols else sql.SQL("")))
        # the body's array, then (in the lateral after it) the column list that restricts it
        params: list = [array_text] + ([cols] if restrict and cols else [])

        resolution = prefs.get("resolution")
        on_conflict = self._param(req, "on_conflict")
        conflict_cols = ([c.strip() for c in on_conflict.split(",") if c.strip()]
                         if on_conflict else table.pk)
        merging = False
        if resolution in ("merge-duplicates", "ignore-duplicates") and conflict_cols:
            merging = resolution == "merge-duplicates"
            applied.append(f"resolution={resolution}")
            target = sql.SQL(", ").join(map(sql.Identifier, conflict_cols))
            if resolution == "merge-duplicates" and cols:
                stmt += sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
                    target, sql.SQL(", ").join(
                        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                        for c in cols))
            else:
                stmt += sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(target)

        representation = prefs.get("return") == "representation"
        if prefs.get("return") in ("representation", "minimal"):
            applied.append(f"return={prefs['return']}")
        status = 201
        if merging:
            # Since PostgREST 12.0.0 (#1070) an upsert that inserts no row (every row updated,
            # or an empty array) answers 200, not 201. Whether some row is new is looked up
            # before the write, as the connecting superuser (so RLS and privileges are not
            # involved, as they are not in PostgREST's answer status).
            if all(c in cols for c in conflict_cols):
                new_row = cur.execute(sql.SQL(
                    "SELECT EXISTS (SELECT 1 FROM jsonb_to_recordset(%s::jsonb) AS p({typed})"
                    " WHERE NOT EXISTS (SELECT 1 FROM {tbl} AS t WHERE {match}))").format(
                    tbl=table.ident,
                    typed=sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c),
                                                                     table.by_name[c].type_sql())
                                             for c in conflict_cols),
                    match=sql.SQL(" AND ").join(
                        sql.SQL("t.{c} = p.{c}").format(c=sql.Identifier(c))
                        for c in conflict_cols)), [array_text]).fetchone()[0]
            else:
                new_row = bool(rows)  # a conflict column left to its default: new rows
            status = 201 if new_row else 200
        cur.become()
        rows = self._execute_write(cur, stmt, params, req, table, representation)
        return self._mutation_response(cur, prefs, applied, status, status, representation, "POST", rows=rows)

    # ---------------------------------------------------------------- PATCH /table
    def _update(self, cur: "_RoleCursor", req: Request, table: Table):
        self._check_json_content_type(req)
        payload, raw_text = load_json(req.body)
        if not isinstance(payload, dict):
            raise ApiError(400, "PGRST102", "Empty or invalid json", None, None)
        prefs = self._prefs(req)
        applied = []
        cols = self._columns_param(req, table)
        restrict = cols is not None
        if cols is None:
            cols = list(payload.keys())
            for k in cols:
                table.require_column(k)
        else:
            cols = [c for c in cols if c in payload]
        where, filter_params = self._filters(req, table)
        representation = prefs.get("return") == "representation"
        if prefs.get("return") in ("representation", "minimal"):
            applied.append(f"return={prefs['return']}")
        if not cols:  # nothing to set: no-op
            cur.become()
            if representation:
                cur.execute("select '[]'::text, 0")
            return self._mutation_response(cur, prefs, applied, 200, 204, representation, "PATCH",
                                           rows=0)
        body_sql = sql.SQL("%s::jsonb")
        params: list = [raw_text]
        if restrict:
            body_sql = sql.SQL("(SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb) FROM "
                               "jsonb_each(%s::jsonb) AS kv(k, v) WHERE k = ANY(%s))")
            params.append(cols)
        stmt = sql.SQL("UPDATE {tbl} SET {sets} FROM (SELECT * FROM jsonb_to_record("
                       "{body}) AS r({typed})) AS pgrst_body{where}").format(
            tbl=table.ident,
            sets=sql.SQL(", ").join(sql.SQL("{} = pgrst_body.{}").format(sql.Identifier(c),
                                                                         sql.Identifier(c))
                                    for c in cols),
            typed=sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), table.by_name[c].type_sql())
                                     for c in cols),
            body=body_sql, where=where)
        params.extend(filter_params)
        cur.become()
        rows = self._execute_write(cur, stmt, params, req, table, representation)
        return self._mutation_response(cur, prefs, applied, 200, 204, representation, "PATCH", rows=rows)

    # ---------------------------------------------------------------- DELETE /table
    def _delete(self, cur: "_RoleCursor", req: Request, table: Table):
        prefs = self._prefs(req)
        applied = []
        where, filter_params = self._filters(req, table)
        stmt = sql.SQL("DELETE FROM {tbl}{where}").format(tbl=table.ident, where=where)
        representation = prefs.get("return") == "representation"
        if prefs.get("return") in ("representation", "minimal"):
            applied.append(f"return={prefs['return']}")
        cur.become()
        rows = self._execute_write(cur, stmt, filter_params, req, table, representation)
        return self._mutation_response(cur, prefs, applied, 200, 204, representation, "DELETE", rows=rows)

    # ---------------------------------------------------------------- GET /table
    def _select(self, cur: "_RoleCursor", req: Request, table: Table):
        where, filter_params = self._filters(req, table)
        order_sql = sql.SQL("")
        order = self._param(req, "order")
        if order:
            terms = []
            for term in order.split(","):
                bits = term.strip().split(".")
                if bits[0] not in table.by_name:
                    raise ApiError(400, "42703", f"column {table.name}.{bits[0]} does not exist")
                t = sql.Identifier(bits[0])
                for b in bits[1:]:
                    kw = {"asc": "ASC", "desc": "DESC", "nullsfirst": "NULLS FIRST",
                          "nullslast": "NULLS LAST"}.get(b)
                    if kw is None:
                        raise ApiError(400, "PGRST100", f'"failed to parse order ({order})"')
                    t = sql.SQL("{} " + kw).format(t)
                terms.append(t)
            order_sql = sql.SQL(" ORDER BY ") + sql.SQL(", ").join(terms)
        limit_sql = sql.SQL("")
        for name in ("limit", "offset"):
            v = self._param(req, name)
            if v is not None:
                if not v.isdigit():
                    raise ApiError(400, "PGRST100", f'"failed to parse {name} ({v})"')
                limit_sql += sql.SQL(f" {name.upper()} {int(v)}")
        stmt = sql.SQL("SELECT coalesce(json_agg(pgrst_t), '[]')::text, count(*) FROM "
                       "(SELECT {sel} FROM {tbl}{where}{order}{limit}) AS pgrst_t").format(
            sel=self._select_list(req, table), tbl=table.ident, where=where, order=order_sql,
            limit=limit_sql)
        cur.become()
        text, n = cur.execute(stmt, filter_params).fetchone()
        headers = {"Content-Type": JSON_CT,
                   "Content-Range": f"0-{n - 1}/*" if n else "*/*"}
        return 200, headers, (b"" if req.method == "HEAD" else text.encode())

    # ---------------------------------------------------------------- POST /rpc/fn
    def _rpc(self, cur: "_RoleCursor", req: Request, schema: str, fname: str, role: str):
        self._check_json_content_type(req)
        if req.body.strip():
            payload, raw_text = load_json(req.body)
        else:
            payload, raw_text = {}, "{}"
        if not isinstance(payload, dict):
            raise Unsupported("rpc with a non-object body (bulk calls)")
        keys = list(payload.keys())
        candidates = []
        for row in cur.execute(FUNCTIONS_SQL, (schema, fname)).fetchall():
            (oid, name, nargs, ndefaults, retset, argnames, argmodes, argtypes,
             rettyptype, rettypname, rettype) = row
            if argmodes:
                in_names = [n for n, m in zip(argnames, argmodes) if m in ("i", "b", "v")]
            else:
                in_names = list(argnames[:nargs])
            in_names += [""] * (nargs - len(in_names))
            args = list(zip(in_names, argtypes))
            candidates.append((args, nargs - ndefaults, retset, rettyptype, rettypname))

        def matches(c):
            args, nreq, *_ = c
            names = [a[0] for a in args]
            if len(args) == 1 and names[0] == "" and args[0][1] in ("json", "jsonb"):
                return True  # single unnamed json param: gets the whole body
            if not set(keys) <= set(names):
                return False
            return all(n in keys for n in names[:nreq])

        found = [c for c in candidates if matches(c)]
        if len(found) > 1:
            exact = [c for c in found if {a[0] for a in c[0]} == set(keys)]
            found = exact if len(exact) == 1 else found
        if not found:
            sig = ", ".join(sorted(keys))
            raise ApiError(404, "PGRST202",
                           f"Could not find the function {schema}.{fname}({sig}) in the schema cache",
                           f"Searched for the function {schema}.{fname} with parameters {sig} or "
                           f"with a single unnamed json/jsonb parameter, but no matches were "
                           f"found in the schema cache.", None)
        if len(found) > 1:
            raise ApiError(300, "PGRST203", f"Could not choose the best candidate function "
                           f"between several {schema}.{fname} overloads", None,
                           "Try renaming the parameters or the function itself in the database "
                           "so function overloading can be resolved")
        args, _nreq, retset, rettyptype, rettypname = found[0]
        fn = sql.Identifier(schema, fname)
        params: list = []
        from_items: list[sql.Composable] = []
        if len(args) == 1 and args[0][0] == "" and args[0][1] in ("json", "jsonb"):
            call = sql.SQL("{}(%s::{})").format(fn, sql.SQL(args[0][1]))
            params.append(raw_text)
        else:
            used = [(n, t) for n, t in args if n in keys]
            call = sql.SQL("{}({})").format(fn, sql.SQL(", ").join(
                sql.SQL("{} := pgrst_args.{}").format(sql.Identifier(n), sql.Identifier(n))
                for n, _t in used))
            if used:
                # arguments typed by the function's signature, like PostgREST
                from_items.append(sql.SQL("jsonb_to_record(%s::jsonb) AS pgrst_args({})").format(
                    sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n),
                                                               sql.SQL(t.replace("%", "%%")))
                                       for n, t in used)))
                params.append(raw_text)

        def from_clause(items):
            return (sql.SQL(" FROM ") + sql.SQL(", ").join(items)) if items else sql.SQL("")

        cur.become()
        if rettyptype == "p" and rettypname == "void":
            cur.execute(sql.SQL("SELECT {}{}").format(call, from_clause(from_items)), params)
            return 204, {}, b""
        lateral = sql.SQL("LATERAL {} AS pgrst_r").format(call)
        if retset:
            stmt = sql.SQL("SELECT coalesce(json_agg(pgrst_r), '[]')::text{}").format(
                from_clause(from_items + [lateral]))
        elif rettyptype == "c" or rettypname == "record":
            stmt = sql.SQL("SELECT to_json(pgrst_r)::text{}").format(
                from_clause(from_items + [lateral]))
        else:
            stmt = sql.SQL("SELECT to_json({})::text{}").format(call, from_clause(from_items))
        row = cur.execute(stmt, params).fetchone()
        text = row[0] if row and row[0] is not None else "null"
        return 200, {"Content-Type": JSON_CT}, text.encode()


class _RoleCursor:
    """A cursor wrapper: catalog lookups run as the connecting superuser until
    ``become()`` switches to the request's role (SET LOCAL ROLE).

    Like PostgREST on Supabase, the request then runs with ``authenticator`` as its session
    user (SET LOCAL SESSION AUTHORIZATION, when the database has that role: see
    tests/sql/test_schema.sql), so a function can only ``set role`` to the roles
    ``authenticator`` is a member of, not to any role as a superuser session could."""

    def __init__(self, cur, role):
        self._cur = cur
        self._role = role
        self.raw = cur

    def become(self):
        # one round trip (no parameters: the simple query protocol runs both statements)
        self._cur.execute(sql.SQL(
            "SELECT set_config('session_authorization', 'authenticator', true)"
            " WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'authenticator');"
            " SET LOCAL ROLE {}").format(sql.Identifier(self._role)))

    def execute(self, *a, **kw):
        return self._cur.execute(*a, **kw)

    def fetchone(self):
        return self._cur.fetchone()

    def fetchall(self):
        return self._cur.fetchall()


# --------------------------------------------------------------------------- HTTP layer
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate sends: without this each answer waits ~40 ms for a
    # delayed ACK.
    disable_nagle_algorithm = True
    server_version = "postgrest-standin/1"
    standin: StandIn  # set by StandIn.start()

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.standin.log_requests:
            sys.stderr.write("standin: %s - %s\n" % (self.address_string(), fmt % args))

    # all verbs go through one dispatcher
    def do_GET(self):
        self._dispatch()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_HEAD = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        return read_request_body(self)

    def _send(self, status: int, headers: dict, body: bytes):
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Status"
        mode = self.standin.close_connections
        if mode == "http1.0":
            # an HTTP/1.0 upstream, like http.server's default: answers HTTP/1.0 and closes the
            # connection after this answer (HTTP/1.0 means close unless keep-alive is said)
            self.protocol_version = "HTTP/1.0"
            self.close_connection = True
        elif mode == "keep-alive-timeout":
            # a proxy whose keep-alive timeout ends right after each answer: an HTTP/1.1 answer
            # that does not announce it, then the connection is closed
            self.close_connection = True
        self.send_response(status, phrase)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _json(self, status, obj, headers=None):
        h = {"Content-Type": JSON_CT}
        h.update(headers or {})
        self._send(status, h, json.dumps(obj).encode())

    def _dispatch(self):
        app = self.standin
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self._drop()
            return
        split = urlsplit(self.path)
        path = split.path
        req = Request(self.command, path, parse_qsl(split.query, keep_blank_values=True),
                      self.headers, body)
        try:
            if path.startswith("/_standin/"):
                return self._control(req)
            if path == "/rest/v1" or path.startswith("/rest/v1/"):
                kind = "rest"
            elif path.startswith("/auth/v1/"):
                kind = "auth"
            else:
                return self._json(404, {"message": f"no route for {path}"})
            with app._lock:
                if kind == "rest":
                    app.rest_requests += 1
                    app.by_method[self.command] += 1
                else:
                    app.auth_requests += 1
                entry = {"method": self.command, "path": path, "query": split.query,
                         "headers": {k.lower(): v for k, v in self.headers.items()},
                         "body": body.decode("utf-8", "replace"), "status": None,
                         "time": time.time()}
                app.request_log.append(entry)
                del app.request_log[:-MAX_LOGGED_REQUESTS]

            fault = app._take_fault(self.command, path)
            if fault:
                entry["fault"] = {k: v for k, v in fault.items() if k != "count"}
                if fault.get("delay_ms"):
                    time.sleep(fault["delay_ms"] / 1000)
                if fault.get("drop"):
                    entry["status"] = "dropped"
                    return self._drop()
                if "status" in fault:
                    fb = fault.get("body")
                    headers = dict(fault.get("headers") or {})
                    if fb is None:
                        fb = {"code": "STANDIN_FAULT", "details": None, "hint": None,
                              "message": f"injected fault: HTTP {fault['status']}"}
                    if isinstance(fb, str):
                        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
                        payload = fb.encode()
                    else:
                        headers.setdefault("Content-Type", JSON_CT)
                        payload = json.dumps(fb).encode()
                    self._record_status(entry, fault["status"])
                    return self._send(fault["status"], headers, payload)

            try:
                if kind == "rest":
                    status, headers, payload = app.handle_rest(req)
                elif path == "/auth/v1/user":
                    status, headers, payload = app.handle_auth_user(req)
                else:
                    raise HttpError(404, {"code": 404, "error_code": "not_found",
                                          "msg": f"no route for {path}"})
            except HttpError as e:
                status, payload = e.status, json.dumps(e.body).encode()
                headers = {"Content-Type": JSON_CT, **e.headers}
                if isinstance(e, ApiError) and app.postgrest_version >= 13:
                    headers.setdefault("Proxy-Status", f"PostgREST; error={e.code}")

            if fault and fault.get("delay_after_ms"):
                time.sleep(fault["delay_after_ms"] / 1000)
            if fault and fault.get("drop_after"):
                entry["status"] = "dropped"
                return self._drop()
            self._record_status(entry, status)
            self._send(status, headers, payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # a stand-in bug: answer 500 and say so
            traceback.print_exc()
            try:
                self._json(500, {"code": "STANDIN500", "details": repr(e), "hint": None,
                                 "message": "postgrest stand-in internal error"})
            except OSError:
                self.close_connection = True

    def _record_status(self, entry, status):
        with self.standin._lock:
            entry["status"] = status
            self.standin.by_status[status] += 1

    def _control(self, req: Request):
        app = self.standin
        name = req.path[len("/_standin/"):].strip("/")
        try:
            payload = json.loads(req.body.decode() or "null") if req.body.strip() else None
        except ValueError:
            return self._json(400, {"message": "invalid JSON"})
        if name == "health":
            return self._json(200, {"ok": True})
        if name == "stats" and req.method == "GET":
            return self._json(200, app.stats())
        if name == "requests" and req.method == "GET":
            return self._json(200, app.requests_log())
        if name == "reset" and req.method == "POST":
            app.reset()
            return self._json(200, {"ok": True})
        if name == "fault" and req.method == "POST":
            specs = payload if isinstance(payload, list) else [payload]
            try:
                for s in specs:
                    if not isinstance(s, dict):
                        raise ValueError("a fault is a JSON object")
                    app.add_fault(s)
            except (ValueError, TypeError) as e:
                return self._json(400, {"message": str(e)})
            return self._json(200, {"ok": True, "pending_faults": app.stats()["pending_faults"]})
        if name == "config" and req.method == "GET":
            return self._json(200, app.config())
        if name == "config" and req.method == "POST":
            if not isinstance(payload, dict) or not set(payload) <= {"postgrest_version",
                                                                     "close_connections"}:
                return self._json(400, {"message": "give postgrest_version and/or "
                                                   "close_connections"})
            try:
                version = payload.get("postgrest_version")
                return self._json(200, app.configure(
                    int(version) if version is not None else None,
                    payload.get("close_connections", "unchanged")))
            except (ValueError, TypeError) as e:
                return self._json(400, {"message": str(e)})
        if name == "revoke" and req.method == "POST":
            if not isinstance(payload, dict) or not (payload.get("sub") or payload.get("session_id")):
                return self._json(400, {"message": "give sub and/or session_id"})
            app.revoke(payload.get("sub"), payload.get("session_id"),
                       payload.get("error_code", "session_not_found"))
            return self._json(200, {"ok": True})
        return self._json(404, {"message": f"unknown control endpoint {req.method} {req.path}"})


# --------------------------------------------------------------------------- CLI
def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tests.postgrest_standin.standin",
                                description="PostgREST-compatible stand-in for tests")
    p.add_argument("--port", type=int, default=int(os.environ.get("STANDIN_PORT", "0")))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--dsn", default=os.environ.get("STANDIN_DSN"),
                   help="PostgreSQL DSN of a superuser (required)")
    p.add_argument("--jwt-secret", default=os.environ.get("STANDIN_JWT_SECRET"),
                   help="HS256 secret (Supabase's legacy JWT secret)")
    p.add_argument("--jwks-url", default=os.environ.get("STANDIN_JWKS_URL"),
                   help="JWKS with ES256/RS256 public keys (Supabase signing keys)")
    p.add_argument("--anon-key", default=os.environ.get("STANDIN_ANON_KEY"))
    p.add_argument("--service-key", default=os.environ.get("STANDIN_SERVICE_KEY"))
    p.add_argument("--schemas", default="public", help="exposed schemas, comma separated")
    p.add_argument("--jwt-leeway", type=float, default=0.0, help="seconds of clock skew allowed")
    p.add_argument("--log-requests", action="store_true", help="log each request to stderr")
    p.add_argument("--postgrest-version", type=int, choices=POSTGREST_VERSIONS,
                   default=int(os.environ.get("STANDIN_POSTGREST_VERSION", "12")),
                   help="PostgREST version whose answers to give (default 12, Supabase's)")
    p.add_argument("--close-connections", choices=CONNECTION_MODES[1:], default=None,
                   help="close every connection after its answer: as an HTTP/1.0 server, or "
                        "as a proxy whose keep-alive timeout ends after each answer")
    args = p.parse_args(argv)
    if not args.dsn:
        p.error("--dsn is required")
    if not args.jwt_secret and not args.jwks_url:
        p.error("--jwt-secret or --jwks-url is required")
    standin = StandIn(args.dsn, args.jwt_secret, jwks_url=args.jwks_url, anon_key=args.anon_key,
                      service_key=args.service_key, host=args.host,
                      schemas=[s.strip() for s in args.schemas.split(",") if s.strip()],
                      log_requests=args.log_requests, jwt_leeway=args.jwt_leeway,
                      postgrest_version=args.postgrest_version,
                      close_connections=args.close_connections)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        standin.start(args.port)
    except psycopg.Error as e:
        print(f"standin: cannot connect to the database: {e}", file=sys.stderr, flush=True)
        return 2
    except OSError as e:
        print(f"standin: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr, flush=True)
        return 2
    try:
        while not stop.wait(0.5):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
