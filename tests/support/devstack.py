"""`make dev`'s local Supabase stand-in: a throwaway PostgreSQL with the demo schema
(tests/sql/test_schema.sql: `lists` and `todos` owned by their users, with RLS; plus
sql/atomic_upload.sql and sql/dead_letter.sql) and the PostgREST stand-in on the Supabase CLI's
port. Runs until interrupted, then stops both.

    python -m tests.support.devstack --port 54321 --jwt-secret S --anon-key A --service-key K
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.postgrest_standin.standin import StandIn  # noqa: E402
from tests.support.pg import TempPostgres  # noqa: E402

SQL_FILES = ["tests/sql/test_schema.sql", "sql/atomic_upload.sql", "sql/dead_letter.sql"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=54321)
    p.add_argument("--jwt-secret", required=True)
    p.add_argument("--anon-key")
    p.add_argument("--service-key")
    args = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    pg = TempPostgres().start()
    standin = None
    try:
        for f in SQL_FILES:
            pg.run_sql_file(ROOT / f)
        standin = StandIn(pg.dsn, args.jwt_secret, anon_key=args.anon_key, service_key=args.service_key)
        standin.start(port=args.port)
        print(f"supabase stand-in listening on http://127.0.0.1:{args.port} (PostgreSQL {pg.dsn})", flush=True)
        print(f"  see uploaded rows: psql '{pg.dsn}' -c 'select * from lists'", flush=True)
        stop.wait()
    finally:
        if standin:
            standin.stop()
        pg.stop()


if __name__ == "__main__":
    main()
