"""`make dev`'s local backend: a throwaway PostgreSQL with the demo schema
(tests/sql/test_schema.sql: `lists` and `todos` owned by their users, with RLS; plus
sql/atomic_upload.sql and sql/dead_letter.sql), the PostgREST stand-in on the Supabase CLI's
port and, with --powersync-port, the real PowerSync service replicating that database
(powersync/sync-rules.yaml) and trusting the worker's JWKS, and with --storage-port the real
Supabase Storage server on the same database and JWT secret (files in a temp dir), with a bucket
`attachments` whose storage policies let each user use the folder named after their id (the
default path template of service mode). Runs until interrupted, then stops everything.

    python -m tests.support.devstack --port 54321 --jwt-secret S --anon-key A --service-key K \
        [--powersync-port 8080 --worker-url http://127.0.0.1:8787] [--storage-port 5000]
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.postgrest_standin.standin import StandIn  # noqa: E402
from tests.support.pg import TempPostgres  # noqa: E402
from tests.support.powersync import PowerSyncService  # noqa: E402
from tests.support.storage import StorageServer  # noqa: E402

DEV_BUCKET = "attachments"
# Each signed-in user may use the folder named after their id in the dev bucket (rls mode).
DEV_STORAGE_POLICIES = f"""
do $$ begin
  drop policy if exists dev_files_insert on storage.objects;
  drop policy if exists dev_files_select on storage.objects;
  drop policy if exists dev_files_update on storage.objects;
  drop policy if exists dev_files_delete on storage.objects;
end $$;
create policy dev_files_insert on storage.objects for insert to authenticated
  with check (bucket_id = '{DEV_BUCKET}' and (storage.foldername(name))[1] = auth.uid()::text);
create policy dev_files_select on storage.objects for select to authenticated
  using (bucket_id = '{DEV_BUCKET}' and (storage.foldername(name))[1] = auth.uid()::text);
create policy dev_files_update on storage.objects for update to authenticated
  using (bucket_id = '{DEV_BUCKET}' and (storage.foldername(name))[1] = auth.uid()::text);
create policy dev_files_delete on storage.objects for delete to authenticated
  using (bucket_id = '{DEV_BUCKET}' and (storage.foldername(name))[1] = auth.uid()::text);
"""

SQL_FILES = ["tests/sql/test_schema.sql", "sql/atomic_upload.sql", "sql/dead_letter.sql",
             "sql/doctor.sql"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=54321)
    p.add_argument("--jwt-secret", required=True)
    p.add_argument("--anon-key")
    p.add_argument("--service-key")
    p.add_argument("--powersync-port", type=int, default=0, help="0: no PowerSync service")
    p.add_argument("--worker-url", default="http://127.0.0.1:8787")
    p.add_argument("--storage-port", type=int, default=0, help="0: no Storage server")
    args = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with_powersync = args.powersync_port > 0
    pg = TempPostgres(logical_replication=with_powersync,
                      password=secrets.token_urlsafe(16) if with_powersync else None).start()
    standin = service = files = None
    try:
        for f in SQL_FILES:
            pg.run_sql_file(ROOT / f)
        standin = StandIn(pg.dsn, args.jwt_secret, anon_key=args.anon_key, service_key=args.service_key)
        standin.start(port=args.port)
        print(f"supabase stand-in listening on http://127.0.0.1:{args.port} (PostgreSQL {pg.dsn})", flush=True)
        print(f"  see uploaded rows: psql '{pg.dsn}' -c 'select * from lists'", flush=True)
        if with_powersync:
            pg.run_sql("create publication powersync for all tables")
            storage = pg.create_database("psstorage")
            # The worker is not up yet: the service fetches its JWKS when the first client connects.
            service = PowerSyncService(pg.url(with_password=True), pg.url(storage, with_password=True),
                                       jwks_uri=args.worker_url + "/.well-known/jwks.json",
                                       port=args.powersync_port)
            print(f"PowerSync service listening on {service.url} (sync rules: powersync/sync-rules.yaml;"
                  f" log: {service.log_path})", flush=True)
        if args.storage_port > 0:
            files = StorageServer(pg.url(), args.jwt_secret, port=args.storage_port)
            files.create_bucket(DEV_BUCKET, args.service_key)
            pg.run_sql(DEV_STORAGE_POLICIES)
            print(f"Supabase Storage listening on {files.url} (bucket {DEV_BUCKET}: each user's own folder;"
                  f" files in {files.files_dir}; log: {files.log_path})", flush=True)
        print("stack ready", flush=True)
        stop.wait()
    finally:
        if files:
            files.stop()
        if service:
            service.stop()
        if standin:
            standin.stop()
        pg.stop()


if __name__ == "__main__":
    main()
