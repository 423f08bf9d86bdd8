"""The real Supabase Storage API server (v1.70.6, built from source by storage/install.sh) for
tests and `make dev`.

    with StorageServer(pg.url(), jwt_secret=JWT_SECRET) as storage:
        storage.create_bucket("attachments", service_key=SERVICE_KEY)
        requests.post(storage.url + "/object/sign/attachments/<user>/a.jpg", ...)

Single tenant, files on local disk (a temp dir), against the given PostgreSQL database: the
server runs its own migrations into the `storage` schema at start (and creates the roles anon,
authenticated, service_role when missing). It verifies tokens with the same HS256 secret as the
PostgREST stand-in, so user tokens and the service key work on both; `jwks` adds public keys it
trusts too (a third-party provider's). Its background job queue
stays off (PG_QUEUE_ENABLE=false; see storage/install.sh for why). Its environment is built
from scratch (only PATH and HOME are passed on), so no other service's settings leak into it.

Node and the server come from $STORAGE_NODE / $STORAGE_SERVER_ENTRY when both are set, else
from storage/install.sh (builds once, about 1 minute; instant afterwards).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import requests

from tests.support.node_service import NodeService, installed
from tests.support.powersync import free_port


def server_install() -> tuple[str, str]:
    """(node binary, dist/start/server.js): from the environment, else from storage/install.sh."""
    return installed("storage/install.sh", "STORAGE_NODE", "STORAGE_SERVER_ENTRY")


class StorageServer(NodeService):
    NAME = "Storage server"

    def __init__(self, database_url: str, jwt_secret: str, port: int | None = None,
                 files_dir: str | None = None, startup_timeout: float = 90.0,
                 jwks: dict | None = None):
        node, entry = server_install()
        self._start_on_free_ports(lambda: self._start(node, entry, database_url, jwt_secret, port, files_dir,
                                                      startup_timeout, jwks), port is not None)

    def _start(self, node: str, entry: str, database_url: str, jwt_secret: str, port: int | None,
               files_dir: str | None, startup_timeout: float, jwks: dict | None) -> None:
        self.port = port or free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._own_dir = files_dir is None
        self.dir = Path(files_dir or tempfile.mkdtemp(prefix="supabase-storage-"))
        self.files_dir = self.dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
            "NODE_ENV": "production", "SERVER_HOST": "127.0.0.1", "SERVER_PORT": str(self.port),
            "SERVER_ADMIN_PORT": str(self.admin_port), "SERVER_REGION": "local",
            "TENANT_ID": "stub", "REGION": "local",
            "AUTH_JWT_SECRET": jwt_secret, "AUTH_JWT_ALGORITHM": "HS256",
            "DATABASE_URL": database_url, "DB_INSTALL_ROLES": "true", "DB_ANON_ROLE": "anon",
            "DB_SERVICE_ROLE": "service_role", "DB_AUTHENTICATED_ROLE": "authenticated",
            "DB_SUPER_USER": "postgres",
            "STORAGE_BACKEND": "file", "STORAGE_FILE_BACKEND_PATH": str(self.files_dir),
            "STORAGE_S3_BUCKET": "stub", "PG_QUEUE_ENABLE": "false", "NO_COLOR": "1",
            # The global upload limit (Supabase's default, 50 MB). Unset, Storage reads it as NaN
            # and enforces no size limit at all, not even a bucket's file_size_limit.
            "FILE_SIZE_LIMIT": "52428800",
        }
        if jwks:
            # Asymmetric keys Storage trusts besides the secret (JWT_JWKS), as a Supabase project
            # with third-party auth trusts its providers' keys.
            env["JWT_JWKS"] = json.dumps(jwks)
        # cwd = the server's own folder: it reads ./migrations from there
        self._run([node, entry], cwd=Path(entry).parents[2], env=env,
                  log_path=self.dir / "storage.log", probe_path="/status",
                  timeout=startup_timeout, poll_seconds=0.3)

    @staticmethod
    def headers(token: str) -> dict:
        return {"Authorization": f"Bearer {token}", "apikey": token}

    def create_bucket(self, name: str, service_key: str, public: bool = False, **limits) -> None:
        """Creates a bucket (idempotent). `limits`: file_size_limit, allowed_mime_types."""
        r = requests.post(self.url + "/bucket", headers=self.headers(service_key), timeout=10,
                          json={"id": name, "name": name, "public": public, **limits})
        if r.status_code != 200 and "already exists" not in r.text and "Duplicate" not in r.text:
            raise RuntimeError(f"create bucket {name}: {r.status_code} {r.text}")

    def list_objects(self, bucket: str, prefix: str, service_key: str) -> list[str]:
        """Names of the objects under `prefix` (a folder), as the service role sees them."""
        r = requests.post(self.url + f"/object/list/{bucket}", headers=self.headers(service_key),
                          json={"prefix": prefix, "limit": 1000}, timeout=10)
        r.raise_for_status()
        return [o["name"] for o in r.json() if o.get("id")]

    def stop(self) -> None:
        super().stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
