"""Shared fixtures for the end-to-end tests.

Session-wide: a throwaway PostgreSQL (``pg``) with tests/sql/test_schema.sql,
sql/atomic_upload.sql, sql/dead_letter.sql and sql/doctor.sql loaded, and the PostgREST
stand-in in front of it (``standin``). ``pg`` is ready for logical replication
(wal_level=logical, publication ``powersync``, a password for the URIs) so that
the real PowerSync service (``powersync_service``, started only by the tests
that ask for it) can replicate the same database. Per test: the tables are emptied and the
stand-in's counters/faults/revocations reset (``db``, ``api``).

Keys and tokens:
  JWT_SECRET        HS256 secret the stand-in verifies with
  ANON_KEY          legacy anon key (HS256 JWT, role anon)
  SERVICE_KEY       legacy service_role key (HS256 JWT, role service_role)
  PUBLISHABLE_KEY   new-style sb_publishable_… key (anon)
  SECRET_KEY        new-style sb_secret_… key (service_role)
  make_token(sub, …) -> a Supabase-like user access token
"""

from __future__ import annotations

import secrets
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import jwt
import psycopg
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.postgrest_standin.standin import StandIn  # noqa: E402
from tests.support.pg import TempPostgres  # noqa: E402

JWT_SECRET = "test-jwt-secret-with-at-least-32-characters-long"
ANON_KEY = jwt.encode({"iss": "supabase", "ref": "standin", "role": "anon",
                       "iat": 1700000000, "exp": 4102444800}, JWT_SECRET, algorithm="HS256")
SERVICE_KEY = jwt.encode({"iss": "supabase", "ref": "standin", "role": "service_role",
                          "iat": 1700000000, "exp": 4102444800}, JWT_SECRET, algorithm="HS256")
PUBLISHABLE_KEY = "sb_publishable_standin_test_key"
SECRET_KEY = "sb_secret_standin_test_key"

SQL_FILES = [ROOT / "tests/sql/test_schema.sql", ROOT / "sql/atomic_upload.sql",
             ROOT / "sql/dead_letter.sql", ROOT / "sql/doctor.sql"]
TABLES = ("public.todos, public.lists, public.profiles, public.powersync_dead_letters,"
          " public.powersync_upload_ledger")


def make_token(sub: str | None, role: str = "authenticated", expires_in: int = 3600,
               secret: str = JWT_SECRET, algorithm: str = "HS256", headers: dict | None = None,
               **claims) -> str:
    """A Supabase-like access token (claims can be overridden/added)."""
    now = int(time.time())
    body = {"iss": "http://127.0.0.1/auth/v1", "aud": "authenticated", "role": role,
            "iat": now, "exp": now + expires_in, "session_id": str(uuid.uuid4()),
            "email": f"{sub}@example.test" if sub else "", "phone": "", "aal": "aal1",
            "is_anonymous": False, "app_metadata": {"provider": "email"}, "user_metadata": {}}
    if sub is not None:
        body["sub"] = sub
    body.update(claims)
    return jwt.encode(body, secret, algorithm=algorithm, headers=headers)


class RestClient:
    """Minimal PostgREST client: raw query strings so tests control encoding."""

    def __init__(self, base_url: str, apikey: str | None, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.apikey = apikey
        self.token = token
        self.http = requests.Session()

    def headers(self, prefer=None, extra=None) -> dict:
        h = {"Content-Type": "application/json"}
        if self.apikey is not None:
            h["apikey"] = self.apikey
        if self.token is not None:
            h["Authorization"] = f"Bearer {self.token}"
        if prefer:
            h["Prefer"] = prefer
        h.update(extra or {})
        return h

    def url(self, table: str, query: str = "") -> str:
        return f"{self.base_url}/rest/v1/{table}" + (f"?{query}" if query else "")

    def request(self, method, table, query="", json=None, data=None, prefer=None, headers=None,
                timeout=30):
        return self.http.request(method, self.url(table, query), json=json, data=data,
                                 headers=self.headers(prefer, headers), timeout=timeout)

    def post(self, table, json=None, query="", **kw):
        return self.request("POST", table, query, json=json, **kw)

    def patch(self, table, query, json=None, **kw):
        return self.request("PATCH", table, query, json=json, **kw)

    def delete(self, table, query, **kw):
        return self.request("DELETE", table, query, **kw)

    def get(self, table, query="", **kw):
        return self.request("GET", table, query, **kw)

    def rpc(self, fn, body, **kw):
        return self.request("POST", f"rpc/{fn}", json=body, **kw)


def eq(value: str) -> str:
    """``eq.<value>`` URL-encoded for a query string."""
    return "eq." + quote(value, safe="")


@pytest.fixture(scope="session")
def pg():
    # wal_level=logical costs nothing measurable here and lets the PowerSync service replicate
    # this database; the password only goes into the service's URIs (auth stays trust).
    with TempPostgres(logical_replication=True, password=secrets.token_urlsafe(16)) as server:
        for f in SQL_FILES:
            server.run_sql_file(f)
        server.run_sql("create publication powersync for all tables")
        yield server


@pytest.fixture(scope="session")
def standin(pg):
    s = StandIn(pg.dsn, JWT_SECRET, anon_key=ANON_KEY, service_key=SERVICE_KEY)
    s.start(port=0)
    yield s
    s.stop()


@pytest.fixture
def db(pg, standin):
    """Autocommit superuser connection to the test database; tables emptied
    and the stand-in reset before each test."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"truncate {TABLES} restart identity cascade")
        standin.reset()
        yield conn


@pytest.fixture(params=[12, 13], ids=["postgrest12", "postgrest13"])
def postgrest_version(request, standin, db):
    """Runs a test against the stand-in answering as PostgREST 12 (Supabase's, the default) and
    as 13, where they differ (tests/postgrest_standin/standin.py VERSION_DIFFERENCES); the
    next test's reset restores 12."""
    standin.configure(postgrest_version=request.param)
    return request.param


@pytest.fixture
def user_a() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def user_b() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def client(standin, db):
    """client(token=None, apikey=PUBLISHABLE_KEY) -> RestClient."""
    def make(token: str | None = None, apikey: str | None = PUBLISHABLE_KEY) -> RestClient:
        return RestClient(standin.url, apikey, token)
    return make


@pytest.fixture
def as_user(client):
    """as_user(sub) -> RestClient acting as that signed-in user."""
    return lambda sub, **claims: client(make_token(sub, **claims))


@pytest.fixture
def as_service(client):
    """RestClient with the new-style secret key (service_role, bypasses RLS)."""
    return client(None, SECRET_KEY)


# --- The worker under wrangler dev (workerd) -------------------------------------------------

import json  # noqa: E402

from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from jwt.algorithms import ECAlgorithm, RSAAlgorithm  # noqa: E402

from tests.support.worker import JwksServer, WorkerProcess, devtool  # noqa: E402

POWERSYNC_URL = "https://test-instance.powersync.example"


class SessionKeys:
    """Supabase 'signing keys' for the JWKS: one ES256 and one RS256 key (test-only)."""

    def __init__(self):
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self, kind: str, kid: str) -> dict:
        key = self.ec if kind == "ec" else self.rsa
        algo = ECAlgorithm if kind == "ec" else RSAAlgorithm
        jwk = json.loads(algo.to_jwk(key.public_key()))
        jwk.update({"kid": kid, "alg": "ES256" if kind == "ec" else "RS256", "use": "sig"})
        return jwk


@pytest.fixture(scope="session")
def powersync_key(tmp_path_factory):
    """A fresh PowerSync signing key from the dev tool: dict with kid, private_pem, ... and
    `pem_file`, a path the pure-Rust reference signer reads."""
    key = json.loads(devtool("keygen", "--kid", "ps-test-1"))
    path = tmp_path_factory.mktemp("keys") / "powersync.pem"
    path.write_text(key["private_pem"])
    key["pem_file"] = str(path)
    return key


@pytest.fixture(scope="session")
def signing_key_of(tmp_path_factory):
    """signing_key_of(alg) -> a PowerSync signing key of that type from the dev tool
    (`keygen --alg RS256|ES256|EdDSA`), one per alg per session, shaped like `powersync_key`."""
    made: dict[str, dict] = {}

    def make(alg: str) -> dict:
        if alg not in made:
            key = json.loads(devtool("keygen", "--alg", alg, "--kid", f"ps-{alg.lower()}-1"))
            path = tmp_path_factory.mktemp("keys") / f"powersync-{alg}.pem"
            path.write_text(key["private_pem"])
            key["pem_file"] = str(path)
            made[alg] = key
        return made[alg]

    return make


@pytest.fixture(scope="session")
def session_keys():
    return SessionKeys()


@pytest.fixture(scope="session")
def jwks(session_keys):
    server = JwksServer()
    server.keys = [session_keys.jwk("ec", "ec-1"), session_keys.jwk("rsa", "rsa-1")]
    yield server
    server.stop()


def complete_vars(supabase_url: str, jwks_url: str, powersync_key: dict, timeout_ms: int = 3000) -> dict:
    """A complete worker configuration: Supabase = `supabase_url` (the stand-in), JWKS at
    `jwks_url`, PowerSync key from `devtool keygen`. Shared with bench/run.py."""
    return {
        "SUPABASE_URL": supabase_url,
        "SUPABASE_JWT_SECRET": JWT_SECRET,
        "SUPABASE_JWKS_URL": jwks_url,
        "SUPABASE_ANON_KEY": ANON_KEY,
        "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "POWERSYNC_URL": POWERSYNC_URL,
        "POWERSYNC_KEY_ID": powersync_key["kid"],
        "POWERSYNC_PRIVATE_KEY": powersync_key["private_pem"],
        "UPSTREAM_TIMEOUT_MS": str(timeout_ms),
    }


@pytest.fixture(scope="session")
def base_vars(standin, jwks, powersync_key):
    """A complete configuration: Supabase = the stand-in, JWKS = the local JWKS server."""
    return complete_vars(standin.url, jwks.url, powersync_key)


@pytest.fixture(scope="session")
def worker(base_vars):
    """The worker with the complete configuration (shared by tests that do not change it)."""
    w = WorkerProcess(base_vars)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def start_worker():
    """start_worker(vars) -> WorkerProcess with that exact configuration; stopped when the
    module's tests are done (a whole run would otherwise keep every module's workers alive at
    once: with today's ~20 modules that starved the later modules' worker starts)."""
    started = []

    def start(vars: dict) -> WorkerProcess:
        w = WorkerProcess(vars)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def start_workers(start_worker):
    """start_workers({name: vars}) -> {name: WorkerProcess}, started in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def start(configs: dict) -> dict:
        with ThreadPoolExecutor(max_workers=len(configs)) as pool:
            futures = {name: pool.submit(start_worker, vars) for name, vars in configs.items()}
            return {name: f.result() for name, f in futures.items()}
    return start


@pytest.fixture
def user(session_token):
    """A signed-in Supabase user: (sub, access token)."""
    sub = str(uuid.uuid4())
    return sub, session_token(sub)


@pytest.fixture
def other_user(session_token):
    """A second signed-in Supabase user: (sub, access token)."""
    sub = str(uuid.uuid4())
    return sub, session_token(sub)


@pytest.fixture(scope="session")
def session_token(standin):
    """session_token(sub, **overrides) -> an HS256 user access token the worker accepts
    (iss = <SUPABASE_URL>/auth/v1)."""
    def make(sub: str | None = "11111111-1111-4111-8111-111111111111", **claims) -> str:
        claims.setdefault("iss", f"{standin.url}/auth/v1")
        return make_token(sub, **claims)
    return make


# --- The real PowerSync service ----------------------------------------------------------------

from tests.support.powersync import PowerSyncService  # noqa: E402


@pytest.fixture(scope="session")
def powersync_service(pg, worker):
    """The real PowerSync service v1.25.0 (built once by powersync/install.sh, about 1 minute
    the first time) replicating `pg` with powersync/sync-rules.yaml, buckets in the database
    `psstorage` of the same server; initial replication done. It verifies client tokens with the
    JWKS of `worker` (every worker started with base_vars' PowerSync key serves the same JWKS)
    and accepts only aud = its own URL: tokens from a worker whose POWERSYNC_URL is
    `powersync_service.url`."""
    pg.create_database("psstorage")
    with PowerSyncService(pg.url(with_password=True), pg.url("psstorage", with_password=True),
                          jwks_uri=worker.url + "/.well-known/jwks.json") as service:
        service.wait_for_initial_replication()
        yield service


def pytest_terminal_summary(terminalreporter):
    """Timings the sync tests measured (tests/e2e/test_sync.py), printed after every run."""
    from tests.support.sdk_client import TIMINGS
    if TIMINGS:
        terminalreporter.section("sync timings (real PowerSync service + SDK)")
        for what, seconds in TIMINGS:
            terminalreporter.write_line(f"{seconds:7.2f} s  {what}")


# --- The real Supabase Storage server ------------------------------------------------------------

from tests.support.storage import StorageServer  # noqa: E402


@pytest.fixture(scope="session")
def storage_trusted_keys():
    """A third-party provider's signing keys (shaped as Firebase's: RS256) that the Storage server
    trusts beside the JWT secret, as a Supabase project with third-party auth does."""
    from tests.support.issuers import ProviderKeys
    return ProviderKeys("firebase-storage-1")


@pytest.fixture(scope="session")
def storage_server(pg, storage_trusted_keys):
    """The real Supabase Storage API server v1.70.6 (built once by storage/install.sh, about
    1 minute the first time) against `pg` (its migrations create the `storage` schema there) with
    the stand-in's JWT secret and `storage_trusted_keys`, files on local disk. 10 to 30 s to
    start on a fresh database."""
    with StorageServer(pg.url(), JWT_SECRET, jwks=storage_trusted_keys.jwks()) as server:
        yield server
