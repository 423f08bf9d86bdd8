"""The whole loop, for real: the official PowerSync Node SDK (@powersync/node, tests/sdk) with our
connector (clients/typescript), the worker in workerd, the PostgREST stand-in, PostgreSQL, and the
real PowerSync service (v1.25.0) replicating that database back to the clients.

Every app here is a real SDK database (better-sqlite3) that signs in with a Supabase-style session
token, gets its PowerSync token from the worker through the connector's `fetchCredentials`, syncs
from the service, and uploads its local writes through the connector's `uploadData` to the worker.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import psycopg
import pytest

from tests.support.powersync import PowerSyncService
from tests.support.sdk_client import SdkApp, record_timing
from tests.support.worker import WorkerProcess, devtool, free_port


def sync_vars(base_vars: dict, powersync_url: str, **extra: str) -> dict:
    """The worker as a PowerSync app's backend: tokens for `powersync_url`, the demo schema's
    column conversions (SQLite 0/1 and JSON text), fatal writes dead-lettered."""
    return {**base_vars, "POWERSYNC_URL": powersync_url,
            "UPLOAD_BOOLEAN_COLUMNS": "todos.completed", "UPLOAD_JSON_COLUMNS": "todos.tags",
            "UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters", **extra}


@pytest.fixture(scope="module")
def sync_worker(start_worker, base_vars, powersync_service):
    return start_worker(sync_vars(base_vars, powersync_service.url))


@pytest.fixture
def apps(tmp_path, session_token, db):
    """apps(user, worker) -> a connected SdkApp for that user (closed after the test)."""
    opened: list[SdkApp] = []

    def open_app(user: str, worker: WorkerProcess, connect: bool = True, **kw) -> SdkApp:
        app = SdkApp(worker.url, session_token(user),
                     tmp_path / f"app-{len(opened)}.db", **kw)
        opened.append(app)
        if connect:
            app.connect()
        return app

    yield open_app
    for app in opened:
        app.close()


def server_lists(db, owner: str) -> list[dict]:
    rows = db.execute("select id::text, name, owner_id::text from lists where owner_id = %s order by id",
                      (owner,)).fetchall()
    return [{"id": r[0], "name": r[1], "owner_id": r[2]} for r in rows]


def server_todos(db, user: str) -> list[dict]:
    rows = db.execute("select id::text, description, completed, list_id::text, created_by::text, priority, tags"
                      " from todos where created_by = %s order by id", (user,)).fetchall()
    return [{"id": r[0], "description": r[1], "completed": int(r[2]), "list_id": r[3],
             "created_by": r[4], "priority": r[5], "tags": r[6]} for r in rows]


LOCAL_LISTS = "select id, name, owner_id from lists order by id"
LOCAL_TODOS = ("select id, description, completed, list_id, created_by, priority, tags"
               " from todos order by id")


def local_todos(app: SdkApp) -> list[dict]:
    rows = app.query(LOCAL_TODOS)
    for r in rows:
        r["tags"] = json.loads(r["tags"]) if r["tags"] is not None else None
    return rows


def assert_in_sync(app: SdkApp, db, user: str, timeout_ms: int = 30000) -> None:
    """The upload queue drains and the app's rows equal the server's rows, which came back through
    replication (created_at is set only by PostgreSQL; the apps never write it)."""
    app.drained(timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        local = (app.query(LOCAL_LISTS), local_todos(app),
                 app.query("select count(*) as n from lists where created_at is null")[0]["n"]
                 + app.query("select count(*) as n from todos where created_at is null")[0]["n"])
        server = (server_lists(db, user), server_todos(db, user), 0)
        if local == server:
            break
        assert time.monotonic() < deadline, f"local {local}\nserver {server}"
        time.sleep(0.1)
    assert app.queue_count() == 0


def new_id() -> str:
    return str(uuid.uuid4())


# --- first sync, own rows, live changes ---------------------------------------------------------

def test_first_sync_with_the_workers_token_gives_exactly_the_users_own_rows_and_live_changes(
        apps, db, sync_worker, user_a, user_b):
    mine, theirs = new_id(), new_id()
    db.execute("insert into lists (id, name, owner_id) values (%s, 'mine', %s), (%s, 'theirs', %s)",
               (mine, user_a, theirs, user_b))
    app = apps(user_a, sync_worker)

    assert app.status()["connected"] is True
    # Waited for: the first complete sync can be a checkpoint from before the service read the
    # insert. The other user's row never comes (the live check below inserts another one).
    app.wait_for(LOCAL_LISTS, [{"id": mine, "name": "mine", "owner_id": user_a}], timeout_ms=15000)

    live = new_id()
    started = time.monotonic()
    db.execute("insert into lists (id, name, owner_id) values (%s, 'live', %s)", (live, user_a))
    db.execute("insert into lists (id, name, owner_id) values (%s, 'not mine', %s)", (new_id(), user_b))
    app.wait_for("select name from lists where id = ?", [{"name": "live"}], params=[live], timeout_ms=15000)
    record_timing("row inserted in PostgreSQL reached the SDK", time.monotonic() - started)
    assert sorted(r["name"] for r in app.query(LOCAL_LISTS)) == ["live", "mine"]


# --- local writes up through the worker and back through replication ----------------------------

def test_local_writes_in_multi_statement_transactions_upload_and_come_back_through_replication(
        apps, db, sync_worker, user_a):
    app = apps(user_a, sync_worker)
    groceries, chores, gone = new_id(), new_id(), new_id()
    milk, eggs, sweep = new_id(), new_id(), new_id()

    app.transaction(
        ("insert into lists (id, name, owner_id) values (?, 'groceries', ?)", [groceries, user_a]),
        ("insert into todos (id, description, completed, list_id, created_by, priority, tags)"
         " values (?, 'milk', 0, ?, ?, 1, ?)", [milk, groceries, user_a, '["dairy"]']),
        ("insert into todos (id, description, completed, list_id, created_by)"
         " values (?, 'eggs', 0, ?, ?)", [eggs, groceries, user_a]),
    )
    app.transaction(
        ("insert into lists (id, name, owner_id) values (?, 'chores', ?)", [chores, user_a]),
        ("insert into lists (id, name, owner_id) values (?, 'gone soon', ?)", [gone, user_a]),
        ("insert into todos (id, description, completed, list_id, created_by)"
         " values (?, 'sweep', 0, ?, ?)", [sweep, chores, user_a]),
    )
    app.transaction(
        ("update todos set completed = 1, completed_by = ? where id = ?", [user_a, milk]),
        ("update lists set name = 'weekly groceries' where id = ?", [groceries]),
        ("delete from todos where id = ?", [eggs]),
        ("delete from lists where id = ?", [gone]),
    )
    app.execute("update todos set description = 'sweep the floor', priority = 3 where id = ?", [sweep])

    assert_in_sync(app, db, user_a)
    assert server_lists(db, user_a) == sorted(
        [{"id": groceries, "name": "weekly groceries", "owner_id": user_a},
         {"id": chores, "name": "chores", "owner_id": user_a}], key=lambda r: r["id"])
    todos = {t["id"]: t for t in server_todos(db, user_a)}
    assert set(todos) == {milk, sweep}
    assert todos[milk]["completed"] == 1 and todos[milk]["tags"] == ["dairy"]
    assert todos[sweep]["description"] == "sweep the floor" and todos[sweep]["priority"] == 3
    assert app.records()["fatalReports"] == []
    # UPLOAD_ATOMIC unset and the function installed: every transaction went through it with
    # the SDK's client id (db.getClientId(), sent by the connector), recorded exactly once
    recorded = db.execute("select client_id, count(*) from powersync_upload_ledger where user_id = %s"
                          " group by client_id", (user_a,)).fetchall()
    assert len(recorded) == 1 and recorded[0][1] == 4, recorded


# --- two users ---------------------------------------------------------------------------------

def test_two_users_at_once_neither_receives_nor_changes_the_others_rows(apps, db, sync_worker, user_a, user_b):
    app_a, app_b = apps(user_a, sync_worker), apps(user_b, sync_worker)
    list_a, list_b = new_id(), new_id()
    app_a.execute("insert into lists (id, name, owner_id) values (?, 'a list', ?)", [list_a, user_a])
    app_b.execute("insert into lists (id, name, owner_id) values (?, 'b list', ?)", [list_b, user_b])
    assert_in_sync(app_a, db, user_a)
    assert_in_sync(app_b, db, user_b)
    assert [r["id"] for r in app_a.query(LOCAL_LISTS)] == [list_a]
    assert [r["id"] for r in app_b.query(LOCAL_LISTS)] == [list_b]

    # B writes A's id: a PUT that would take A's row over (RLS refuses it: fatal), an update and a
    # delete of it (RLS hides A's row from B: they match nothing).
    app_b.transaction(("insert into lists (id, name, owner_id) values (?, 'taken over', ?)", [list_a, user_b]))
    app_b.transaction(("update lists set name = 'renamed by b' where id = ?", [list_a]),
                      ("delete from lists where id = ?", [list_a]))
    assert_in_sync(app_b, db, user_b)

    assert server_lists(db, user_a) == [{"id": list_a, "name": "a list", "owner_id": user_a}]
    assert [r["failedOperation"]["code"] for r in app_b.records()["fatalReports"]] == ["42501"]
    app_a.wait_for(LOCAL_LISTS, server_lists(db, user_a))
    assert [r["id"] for r in app_b.query(LOCAL_LISTS)] == [list_b]


# --- offline and back --------------------------------------------------------------------------

def test_writes_made_while_the_worker_is_down_stay_queued_then_upload_in_order_without_loss(
        apps, db, base_vars, powersync_service, user_a):
    worker = WorkerProcess(sync_vars(base_vars, powersync_service.url))
    port = worker.port  # back at the same address later
    try:
        app = apps(user_a, worker)
        worker.stop()

        lst, t1, t2 = new_id(), new_id(), new_id()
        app.execute("insert into lists (id, name, owner_id) values (?, 'v1', ?)", [lst, user_a])
        app.execute("update lists set name = 'v2' where id = ?", [lst])
        app.transaction(
            ("insert into todos (id, description, completed, list_id, created_by) values (?, 'one', 0, ?, ?)",
             [t1, lst, user_a]),
            ("insert into todos (id, description, completed, list_id, created_by) values (?, 'two', 0, ?, ?)",
             [t2, lst, user_a]),
        )
        app.execute("update lists set name = 'v3' where id = ?", [lst])
        app.execute("delete from todos where id = ?", [t2])

        # The SDK keeps trying (retryDelayMs 300 ms): several failed uploads, nothing completed.
        deadline = time.monotonic() + 20
        while len(app.records()["uploadErrors"]) < 3:
            assert time.monotonic() < deadline, app.records()
            time.sleep(0.2)
        assert app.queue_count() == 6
        assert server_lists(db, user_a) == [] and server_todos(db, user_a) == []

        worker = WorkerProcess(sync_vars(base_vars, powersync_service.url), port=port)
        assert_in_sync(app, db, user_a)
        assert server_lists(db, user_a) == [{"id": lst, "name": "v3", "owner_id": user_a}]
        assert [t["id"] for t in server_todos(db, user_a)] == [t1]
        assert db.execute("select count(*) from todos where created_by = %s", (user_a,)).fetchone()[0] == 1
        # The connector sent the five queued transactions in one request, all applied.
        lines = [line for line in worker.log_lines() if line.get("route") == "upload"]
        uploads = [line["upload"] for line in lines]
        assert uploads[0]["success"] == 5, uploads
        # It reported the SDK's upload queue (getUploadQueueStats: six entries) and how long the
        # head had waited since the first failed try (across the worker's restart).
        assert lines[0]["queue"]["count"] == 6, lines[0]
        assert lines[0]["queue"]["oldest_seconds"] >= 1, lines[0]
    finally:
        worker.stop()


# --- a fatal write does not block the queue ----------------------------------------------------

def test_constraint_violation_is_fatal_dead_lettered_discarded_and_later_writes_still_upload(
        apps, db, sync_worker, user_a):
    app = apps(user_a, sync_worker)
    lst, bad, later = new_id(), new_id(), new_id()
    app.execute("insert into lists (id, name, owner_id) values (?, 'list', ?)", [lst, user_a])
    # priority must be between 0 and 5 (a check constraint only the server has): 23514
    app.execute("insert into todos (id, description, completed, list_id, created_by, priority)"
                " values (?, 'bad', 0, ?, ?, 9)", [bad, lst, user_a])
    app.execute("insert into lists (id, name, owner_id) values (?, 'later', ?)", [later, user_a])

    assert_in_sync(app, db, user_a)  # the bad row is gone locally too: the server never had it
    assert [r["name"] for r in server_lists(db, user_a)] == sorted(
        ["list", "later"], key=lambda n: {"list": lst, "later": later}[n])
    fatal = app.records()["fatalReports"]
    assert [(f["failedOperation"]["code"], f["entries"][0]["id"]) for f in fatal] == [("23514", bad)]
    dead = db.execute("select user_id::text, code, entry from powersync_dead_letters").fetchall()
    assert [(d[0], d[1], d[2]["id"]) for d in dead] == [(user_a, "23514", bad)]


# --- token lifetime ----------------------------------------------------------------------------

def test_short_lived_tokens_are_refreshed_from_the_worker_and_the_client_stays_connected(
        apps, db, start_worker, base_vars, powersync_service, user_a):
    worker = start_worker(sync_vars(base_vars, powersync_service.url, POWERSYNC_TOKEN_TTL_SECONDS="60"))
    app = apps(user_a, worker)
    first = app.records()["credentials"]
    assert len(first) == 1 and first[0]["expiresAt"] - first[0]["at"] <= 61_000

    # The SDK asks for new credentials when 30 s or less remain.
    deadline = time.monotonic() + 50
    while len(app.records()["credentials"]) < 2:
        assert time.monotonic() < deadline, app.records()["credentials"]
        time.sleep(0.5)
    creds = app.records()["credentials"]
    assert creds[1]["token"] != creds[0]["token"]

    row = new_id()
    db.execute("insert into lists (id, name, owner_id) values (%s, 'after refresh', %s)", (row, user_a))
    app.wait_for("select name from lists where id = ?", [{"name": "after refresh"}], params=[row])
    assert app.status()["connected"] is True
    assert app.status()["downloadError"] is None


# --- key rotation ------------------------------------------------------------------------------

def test_key_rotation_keeps_connected_clients_syncing_and_new_keys_tokens_are_accepted(
        apps, db, pg, base_vars, powersync_key, user_a, user_b):
    """The service reads the JWKS of the worker it trusts (a fixed port); the worker restarts on
    that port with a new key and the old public key in POWERSYNC_PREVIOUS_PUBLIC_KEYS."""
    service_port = free_port()
    service_url = f"http://127.0.0.1:{service_port}"
    old_vars = sync_vars(base_vars, service_url)
    new_key = json.loads(devtool("keygen", "--kid", "ps-rotated-2"))
    new_vars = {**old_vars, "POWERSYNC_KEY_ID": new_key["kid"], "POWERSYNC_PRIVATE_KEY": new_key["private_pem"],
                "POWERSYNC_PREVIOUS_PUBLIC_KEYS": json.dumps({"keys": [powersync_key["public_jwk"]]})}
    storage = pg.create_database(f"psstorage_{uuid.uuid4().hex[:8]}")
    worker = WorkerProcess(old_vars)
    worker_port = worker.port  # the new key's worker comes back at the same address
    service = None
    try:
        service = PowerSyncService(pg.url(with_password=True), pg.url(storage, with_password=True),
                                   jwks_uri=worker.url + "/.well-known/jwks.json", port=service_port)
        service.wait_for_initial_replication()
        before = apps(user_a, worker)

        worker.stop()
        worker = WorkerProcess(new_vars, port=worker_port)
        assert [k["kid"] for k in worker.get("/.well-known/jwks.json").json()["keys"]] == \
            [new_key["kid"], powersync_key["kid"]]

        # The connected client keeps its old-key token and keeps syncing.
        row = new_id()
        db.execute("insert into lists (id, name, owner_id) values (%s, 'after rotation', %s)", (row, user_a))
        before.wait_for("select name from lists where id = ?", [{"name": "after rotation"}], params=[row])

        # A new client gets a new-key token; the service fetches the JWKS again for the new kid.
        after = apps(user_b, worker, connect=False)
        after.connect()
        assert after.records()["credentials"][0]["token"]
        header = json.loads(_b64(after.records()["credentials"][0]["token"].split(".")[0]))
        assert header["kid"] == new_key["kid"]
        mine = new_id()
        after.execute("insert into lists (id, name, owner_id) values (?, 'new key', ?)", [mine, user_b])
        assert_in_sync(after, db, user_b)
        assert before.status()["connected"] is True
    finally:
        if service:
            service.stop()
        worker.stop()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{storage}" with (force)')


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


# --- a big transaction -------------------------------------------------------------------------

def test_thousand_row_local_transaction_uploads_through_the_worker_and_syncs_back(apps, db, sync_worker, user_a):
    app = apps(user_a, sync_worker)
    lst = new_id()
    statements = [("insert into lists (id, name, owner_id) values (?, 'big', ?)", [lst, user_a])]
    statements += [("insert into todos (id, description, completed, list_id, created_by) values (?, ?, 0, ?, ?)",
                    [new_id(), f"todo {i}", lst, user_a]) for i in range(999)]
    started = time.monotonic()
    app.transaction(*statements)
    assert_in_sync(app, db, user_a, timeout_ms=120_000)
    record_timing("1,000-row local transaction: upload through the worker + sync back", time.monotonic() - started)
    assert db.execute("select count(*) from todos where list_id = %s", (lst,)).fetchone()[0] == 999
