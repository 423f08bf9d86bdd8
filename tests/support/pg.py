"""A throwaway PostgreSQL server for tests.

    from tests.support.pg import TempPostgres

    with TempPostgres() as pg:
        pg.run_sql_file("tests/sql/test_schema.sql")
        print(pg.dsn)        # postgresql://postgres@127.0.0.1:<port>/postgres

The cluster lives in a fresh temporary directory, listens on 127.0.0.1 on a
free port (plus a Unix socket inside that directory), trusts every local
connection and runs with fsync=off. ``stop()`` kills it (``-m immediate``) and
deletes the directory.

For the PowerSync service (tests/support/powersync.py): ``logical_replication=True`` starts
the server with ``wal_level=logical``; ``password=...`` gives the database user a password and
``url(database, with_password=True)`` puts it into the URI (the service refuses URIs without
one, PSYNC_S1108; authentication stays ``trust``, so password-less URIs keep working);
``create_database(name)`` adds e.g. the service's bucket-storage database.

``initdb`` refuses to run as root, so when the current user is root the
directory is handed to the ``postgres`` system user and the server binaries
run through ``runuser -u postgres --``. As any other user they run directly.

The binaries are looked up in ``$PG_BIN`` (if set), then the newest
``/usr/lib/postgresql/<major>/bin`` (Debian layout), then ``$PATH``.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. "
    "On Debian/Ubuntu install them with: apt-get install postgresql-15 "
    "(or point PG_BIN at the directory that holds initdb)."
)


class PostgresNotInstalled(RuntimeError):
    """initdb / pg_ctl are not available on this machine."""


def find_pg_bin() -> Path:
    """Directory holding initdb, pg_ctl and psql."""
    env = os.environ.get("PG_BIN")
    if env:
        p = Path(env)
        if (p / "initdb").exists():
            return p
        raise PostgresNotInstalled(f"PG_BIN={env} has no initdb. {INSTALL_HINT}")

    def major(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return -1.0

    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=major, reverse=True):
        return Path(cand).parent
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    raise PostgresNotInstalled(INSTALL_HINT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Sockets held for the whole test session by refused_port().
_REFUSING: list[socket.socket] = []


def refused_port() -> int:
    """A port where every connection is refused for the rest of the session: bound and never
    listening, so the kernel refuses connections and no other process can take it. (A port from
    free_port() is free only until the next server starts: one of the wrangler dev instances
    started at the same time took it once, and answered 404 where a refusal was expected.)"""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    _REFUSING.append(s)
    return s.getsockname()[1]


# What logical replication (the PowerSync service) needs. max_wal_senders and
# max_replication_slots already default to 10, enough for a few services at once.
LOGICAL_REPLICATION_SETTINGS = {"wal_level": "logical"}


class TempPostgres:
    """A disposable PostgreSQL cluster. Use as a context manager or call
    start()/stop() yourself."""

    def __init__(self, port: int | None = None, bin_dir: str | os.PathLike | None = None,
                 os_user: str = "postgres", db_user: str = "postgres",
                 extra_settings: dict[str, str] | None = None,
                 logical_replication: bool = False, password: str | None = None):
        self.requested_port = port
        self.bin_dir = Path(bin_dir) if bin_dir else None
        self.os_user = os_user
        self.db_user = db_user
        self.extra_settings = {**(LOGICAL_REPLICATION_SETTINGS if logical_replication else {}),
                               **(extra_settings or {})}
        self.password = password
        self.port: int | None = None
        self.base_dir: Path | None = None
        self.data_dir: Path | None = None
        self.log_file: Path | None = None
        self._running = False

    # ------------------------------------------------------------------ helpers
    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    def _cmd(self, *args: str) -> list[str]:
        if self.as_root:
            return ["runuser", "-u", self.os_user, "--", *args]
        return list(args)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        # cwd: the postgres user may not be allowed into the caller's cwd
        proc = subprocess.run(self._cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout, cwd=str(self.base_dir or "/"))
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}"
                               + self._log_tail())
        return proc

    def _log_tail(self) -> str:
        try:
            if self.log_file and self.log_file.exists():
                return "\n--- server log ---\n" + self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            pass
        return ""

    # ------------------------------------------------------------------ API
    @property
    def dsn(self) -> str:
        if self.port is None:
            raise RuntimeError("TempPostgres is not started")
        return f"postgresql://{self.db_user}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str = "postgres", with_password: bool = False) -> str:
        """A URI for `database`; with the user's password in it when asked (needs `password`)."""
        if self.port is None:
            raise RuntimeError("TempPostgres is not started")
        user = self.db_user
        if with_password:
            if self.password is None:
                raise RuntimeError("TempPostgres was started without a password")
            user += ":" + quote(self.password, safe="")
        return f"postgresql://{user}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def socket_dir(self) -> str:
        return str(self.base_dir)

    def start(self) -> "TempPostgres":
        if self._running:
            return self
        bin_dir = self.bin_dir or find_pg_bin()
        self.bin_dir = bin_dir
        initdb, pg_ctl = bin_dir / "initdb", bin_dir / "pg_ctl"
        if not initdb.exists() or not pg_ctl.exists():
            raise PostgresNotInstalled(f"{bin_dir} lacks initdb/pg_ctl. {INSTALL_HINT}")

        self.base_dir = Path(tempfile.mkdtemp(prefix="tmp-pg-"))
        if self.as_root:
            try:
                pw = pwd.getpwnam(self.os_user)
            except KeyError:
                raise PostgresNotInstalled(
                    f"running as root but there is no '{self.os_user}' system user. {INSTALL_HINT}")
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base_dir, 0o700)
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "server.log"
        try:
            self._run(str(initdb), "-D", str(self.data_dir), "-A", "trust", "-U", self.db_user,
                      "-E", "UTF8", "--locale=C.UTF-8" if _has_c_utf8() else "--locale=C",
                      "--no-sync")
            last_err: Exception | None = None
            for _attempt in range(5):
                self.port = self.requested_port or free_port()
                opts = [f"-p {self.port}", f"-k {self.base_dir}",
                        "-c listen_addresses=127.0.0.1", "-c fsync=off",
                        "-c synchronous_commit=off", "-c full_page_writes=off"]
                opts += [f"-c {k}={v}" for k, v in self.extra_settings.items()]
                try:
                    self._run(str(pg_ctl), "-D", str(self.data_dir), "-l", str(self.log_file),
                              "-o", " ".join(opts), "-w", "-t", "60", "start")
                    break
                except RuntimeError as e:  # port taken between probe and bind: retry
                    last_err = e
                    if self.requested_port:
                        raise
            else:
                raise last_err  # type: ignore[misc]
            self._running = True
            self._wait_ready()
            if self.password is not None:
                self.run_sql(f"alter role {_ident(self.db_user)} password {_literal(self.password)}")
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not accept connections" + self._log_tail())
                time.sleep(0.05)

    def stop(self) -> None:
        if self._running and self.bin_dir and self.data_dir:
            try:
                subprocess.run(self._cmd(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir),
                                         "-m", "immediate", "-w", "stop"),
                               cwd=str(self.base_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._running = False
        if self.base_dir and self.base_dir.exists():
            shutil.rmtree(self.base_dir, ignore_errors=True)
        self.base_dir = None

    def psql_args(self, database: str = "postgres") -> list[str]:
        psql = (self.bin_dir / "psql") if self.bin_dir else Path("psql")
        return [str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                "-p", str(self.port), "-U", self.db_user, "-d", database]

    def run_sql_file(self, path: str | os.PathLike) -> str:
        """Run a SQL file with psql (ON_ERROR_STOP); returns psql's output,
        raises RuntimeError with psql's message on the first error."""
        proc = subprocess.run([*self.psql_args(), "-f", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300,
                              env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"})
        if proc.returncode != 0:
            raise RuntimeError(f"psql -f {path} failed ({proc.returncode}):\n{proc.stdout}")
        return proc.stdout

    def run_sql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL text (any number of statements) with psql."""
        proc = subprocess.run([*self.psql_args(database), "-c", sql], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}):\n{proc.stdout}")
        return proc.stdout

    def create_database(self, name: str) -> str:
        """Creates database `name` (e.g. the PowerSync service's bucket storage); returns `name`."""
        self.run_sql(f"create database {_ident(name)}")
        return name

    def __enter__(self) -> "TempPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # last resort; normal code calls stop()
        try:
            if self._running:
                self.stop()
        except Exception:
            pass


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _has_c_utf8() -> bool:
    try:
        out = subprocess.run(["locale", "-a"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=10).stdout.lower()
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "c.utf8" in out or "c.utf-8" in out


if __name__ == "__main__":  # manual use: python -m tests.support.pg [sql files...]
    import sys
    with TempPostgres() as pg:
        for f in sys.argv[1:]:
            pg.run_sql_file(f)
        print(pg.dsn, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
