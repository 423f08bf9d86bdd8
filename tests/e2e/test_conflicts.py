"""Conflict detection (`UPLOAD_CONFLICT_DETECTION`, docs/conflicts.md), for real: two official
PowerSync Node SDK apps (tests/sdk, with `trackPrevious` on the demo tables) of one user edit the
same row offline; the worker in workerd, the PostgREST stand-in, PostgreSQL and the PowerSync
service are the real ones.

With the setting on, the second upload is reported `conflict` (handed to the app's onFatalError,
dead-lettered with both sides) and the first client's value stays; with it off, the last writer
wins, as without previous values. Each rule is checked on both routes: REST requests
(`UPLOAD_ATOMIC=false`, conditional writes) and the atomic function (`UPLOAD_ATOMIC=true`, compared
inside its transaction: a conflict applies nothing of the transaction).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.e2e.conftest import SERVICE_KEY
from tests.e2e.upload_helpers import wait_for
from tests.support.sdk_client import SdkApp


ROUTES = ["atomic", "rest"]
RPC_PATH = "/rest/v1/rpc/powersync_apply_transaction"


def resent_uploads(worker) -> list[dict]:
    """The upload log lines' counts of the uploads that re-sent a request, once there is one
    (wrangler passes the worker's lines on in its own time, after the answer)."""
    return wait_for(lambda: [line["upload"] for line in worker.log_lines()
                             if line.get("route") == "upload" and line.get("upload", {}).get("resent")])


def conflict_vars(base_vars: dict, powersync_url: str, detection: bool, route: str) -> dict:
    return {**base_vars, "POWERSYNC_URL": powersync_url,
            "UPLOAD_BOOLEAN_COLUMNS": "todos.completed", "UPLOAD_JSON_COLUMNS": "todos.tags",
            "UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters",
            "UPLOAD_ATOMIC": "true" if route == "atomic" else "false",
            "UPLOAD_CONFLICT_DETECTION": "true" if detection else "false"}


@pytest.fixture(scope="module")
def workers(start_worker, base_vars, powersync_service):
    """workers(detection, route) -> the worker with that setting and route (started once)."""
    started: dict = {}

    def get(detection: bool, route: str):
        if (detection, route) not in started:
            started[detection, route] = start_worker(
                conflict_vars(base_vars, powersync_service.url, detection, route))
        return started[detection, route]
    return get


@pytest.fixture(params=ROUTES)
def detecting_worker(request, workers):
    return workers(True, request.param)


@pytest.fixture(params=ROUTES)
def plain_worker(request, workers):
    return workers(False, request.param)


@pytest.fixture
def detecting_rest_worker(workers):
    return workers(True, "rest")


@pytest.fixture
def detecting_atomic_worker(workers):
    return workers(True, "atomic")


@pytest.fixture
def tracking_apps(tmp_path, session_token, db):
    """tracking_apps(user, worker) -> a connected SdkApp whose tables track previous values."""
    opened: list[SdkApp] = []

    def open_app(user: str, worker) -> SdkApp:
        app = SdkApp(worker.url, session_token(user), tmp_path / f"app-{len(opened)}.db", track_previous=True)
        opened.append(app)
        app.connect()
        return app

    yield open_app
    for app in opened:
        app.close()


def server_name(db, list_id: str) -> str | None:
    row = db.execute("select name from lists where id = %s", (list_id,)).fetchone()
    return row[0] if row else None


def apps_offline_with_a_list(apps, db, worker, user: str, count: int) -> tuple[str, list[SdkApp]]:
    """A list named 'original' that `count` apps of `user` have synced, all now disconnected."""
    list_id = str(uuid.uuid4())
    db.execute("insert into lists (id, name, owner_id) values (%s, 'original', %s)", (list_id, user))
    opened = [apps(user, worker) for _ in range(count)]
    for app in opened:
        app.wait_for("select name from lists where id = ?", [{"name": "original"}], params=[list_id])
        app.disconnect()
    return list_id, opened


def two_apps_offline_with_a_list(apps, db, worker, user: str) -> tuple[str, SdkApp, SdkApp]:
    """A list named 'original' that two apps of `user` have synced, both now disconnected."""
    list_id, (first, second) = apps_offline_with_a_list(apps, db, worker, user, 2)
    return list_id, first, second


def edit_offline_then_upload_in_turn(apps, db, worker, user: str) -> tuple[str, SdkApp, SdkApp]:
    """A list both apps have synced; both rename it while disconnected; first uploads, then second."""
    list_id, first, second = two_apps_offline_with_a_list(apps, db, worker, user)
    first.execute("update lists set name = 'from first' where id = ?", [list_id])
    second.execute("update lists set name = 'from second' where id = ?", [list_id])

    first.connect()
    first.drained()
    assert server_name(db, list_id) == "from first"
    second.connect()
    second.drained()
    return list_id, first, second


def test_second_offline_edit_of_a_row_is_a_conflict_and_the_first_value_stays(tracking_apps, db, detecting_worker, user_a):
    list_id, first, second = edit_offline_then_upload_in_turn(tracking_apps, db, detecting_worker, user_a)

    assert server_name(db, list_id) == "from first"
    # The second app's own copy comes back to the server's value through sync.
    second.wait_for("select name from lists where id = ?", [{"name": "from first"}], params=[list_id])
    reports = second.records()["fatalReports"]
    assert [(r["status"], r["failedOperation"]["code"], r["failedEntry"]["id"]) for r in reports] == [
        ("conflict", "conflict", list_id)]
    assert first.records()["fatalReports"] == []

    dead = db.execute("select user_id::text, code, op_index, entry, details from powersync_dead_letters").fetchall()
    assert len(dead) == 1
    user_id, code, op_index, entry, details = dead[0]
    assert (user_id, code, op_index) == (user_a, "conflict", 0)
    # Both sides: the client's write and what it had seen, and the server's row when it refused.
    assert entry["op"] == "PATCH" and entry["data"] == {"name": "from second"}
    assert entry["previous_values"]["name"] == "original"
    assert json.loads(details)["name"] == "from first"


def test_a_delete_of_a_row_changed_since_is_a_conflict_and_the_row_stays(tracking_apps, db, detecting_worker, user_a):
    list_id, (app,) = apps_offline_with_a_list(tracking_apps, db, detecting_worker, user_a, 1)
    app.execute("delete from lists where id = ?", [list_id])
    db.execute("update lists set name = 'renamed on the server' where id = %s", (list_id,))
    app.connect()
    app.drained()

    assert server_name(db, list_id) == "renamed on the server"
    app.wait_for("select name from lists where id = ?", [{"name": "renamed on the server"}], params=[list_id])
    assert [r["status"] for r in app.records()["fatalReports"]] == ["conflict"]


def test_without_conflict_detection_the_last_writer_wins(tracking_apps, db, plain_worker, user_a):
    list_id, first, second = edit_offline_then_upload_in_turn(tracking_apps, db, plain_worker, user_a)

    assert server_name(db, list_id) == "from second"
    first.wait_for("select name from lists where id = ?", [{"name": "from second"}], params=[list_id])
    assert first.records()["fatalReports"] == [] and second.records()["fatalReports"] == []
    assert db.execute("select count(*) from powersync_dead_letters").fetchone()[0] == 0


def test_an_unconflicted_edit_with_previous_values_applies_and_a_gone_row_stays_unchanged(
        tracking_apps, db, detecting_worker, user_a):
    kept, gone = str(uuid.uuid4()), str(uuid.uuid4())
    db.execute("insert into lists (id, name, owner_id) values (%s, 'a', %s), (%s, 'b', %s)",
               (kept, user_a, gone, user_a))
    app = tracking_apps(user_a, detecting_worker)
    app.wait_for("select count(*) as n from lists", [{"n": 2}])
    app.disconnect()
    app.execute("update lists set name = 'a2' where id = ?", [kept])
    app.execute("update lists set name = 'b2' where id = ?", [gone])
    db.execute("delete from lists where id = %s", (gone,))
    app.connect()
    app.drained()

    assert server_name(db, kept) == "a2"
    assert server_name(db, gone) is None
    assert app.records()["fatalReports"] == []
    deadline = time.monotonic() + 15
    while app.query("select id from lists order by id") != [{"id": kept}]:
        assert time.monotonic() < deadline, app.query("select id, name from lists")
        time.sleep(0.1)


def test_a_re_sent_write_whose_first_answer_was_lost_is_no_conflict(
        tracking_apps, db, standin, detecting_rest_worker, user_a):
    """The fault soak's case: the conditional PATCH commits, its answer is lost (the stand-in drops
    the connection after the write), the worker sends it again: now zero rows hold the previous
    values, but the row holds this write's own values, so it is applied, not a conflict."""
    list_id, (app,) = apps_offline_with_a_list(tracking_apps, db, detecting_rest_worker, user_a, 1)
    app.execute("update lists set name = 'mine' where id = ?", [list_id])
    standin.add_fault({"drop_after": True, "method": "PATCH", "path_prefix": "/rest/v1/lists"})
    app.connect()
    app.drained()

    assert server_name(db, list_id) == "mine"
    assert app.records()["fatalReports"] == []
    assert standin.faults == [], "the fault was used: the first answer was lost"
    uploads = resent_uploads(detecting_rest_worker)
    # the PATCH, its re-send (zero rows), the read of the row, the read of the new values
    assert [(u["resent"], u["subrequests"], u["success"], u["conflict"]) for u in uploads] == [(1, 4, 1, 0)], uploads
    assert db.execute("select count(*) from powersync_dead_letters").fetchone()[0] == 0


# ================================================================ the atomic function's own rules
def test_an_atomic_conflict_applies_nothing_of_its_transaction(tracking_apps, db, detecting_atomic_worker, user_a):
    """The second app renames the list and adds a todo to it in one transaction: the rename is a
    conflict, so the todo, sent in the same call of the atomic function, is not applied either; the
    dead letter holds the whole transaction, every entry `failed`, so a replay applies both."""
    list_id, first, second = two_apps_offline_with_a_list(tracking_apps, db, detecting_atomic_worker, user_a)
    first.execute("update lists set name = 'from first' where id = ?", [list_id])
    todo_id = str(uuid.uuid4())
    second.transaction(
        ("insert into todos (id, list_id, description, created_by, completed) values (?, ?, 'added', ?, 0)",
         [todo_id, list_id, user_a]),
        ("update lists set name = 'from second' where id = ?", [list_id]))
    first.connect()
    first.drained()
    second.connect()
    second.drained()

    assert server_name(db, list_id) == "from first"
    assert db.execute("select count(*) from todos where id = %s", (todo_id,)).fetchone()[0] == 0, \
        "all or nothing: the insert of the conflicting transaction is not applied"
    reports = second.records()["fatalReports"]
    assert [(r["status"], r["failedOperation"]["index"]) for r in reports] == [("conflict", 1)], reports
    (entries, details), = db.execute(
        "select entries, details from powersync_dead_letters where code = 'conflict'").fetchall()
    assert [(e["op"], e["state"]) for e in entries] == [("PUT", "failed"), ("PATCH", "failed")]
    assert json.loads(details)["name"] == "from first"
    # the operator chooses the client's side, in words (the first app's write, which the ledger
    # holds, is the same user's): the replay applies the whole transaction, uncompared
    (dead_id,) = db.execute("select id from powersync_dead_letters").fetchone()
    asked = db.execute("select public.powersync_replay_dead_letter(%s)", (dead_id,)).fetchone()[0]
    assert (asked["replayed"], asked["error"]["code"]) == (False, "55000"), asked
    assert server_name(db, list_id) == "from first"
    replayed = db.execute("select public.powersync_replay_dead_letter(%s, overwrite_later_writes => true)",
                          (dead_id,)).fetchone()[0]
    assert replayed["replayed"] is True, replayed
    assert server_name(db, list_id) == "from second"
    assert db.execute("select count(*) from todos where id = %s", (todo_id,)).fetchone()[0] == 1


def test_an_atomic_call_whose_answer_was_lost_is_already_applied_when_re_sent_not_a_conflict(
        tracking_apps, db, standin, detecting_atomic_worker, user_a):
    """The call commits (the rename and its ledger record), its answer is lost; the re-sent call
    finds the ledger's record before comparing anything: `already_applied`, although the row no
    longer holds the previous values it carries."""
    list_id, (app,) = apps_offline_with_a_list(tracking_apps, db, detecting_atomic_worker, user_a, 1)
    app.execute("update lists set name = 'mine' where id = ?", [list_id])
    standin.add_fault({"drop_after": True, "method": "POST", "path_prefix": RPC_PATH})
    app.connect()
    app.drained()

    assert server_name(db, list_id) == "mine"
    assert standin.faults == [], "the fault was used: the first answer was lost"
    assert app.records()["fatalReports"] == []
    assert db.execute("select count(*) from powersync_dead_letters").fetchone()[0] == 0
    uploads = resent_uploads(detecting_atomic_worker)
    assert [(u["resent"], u["subrequests"], u["already_applied"], u["conflict"]) for u in uploads] == [(1, 2, 1, 0)], \
        uploads


# ============================================ the function itself, called as PostgREST calls it
def apply(as_user, sub: str, ops: list, **args):
    """powersync_apply_transaction through the stand-in's /rpc, as `sub` (RLS applies)."""
    response = as_user(sub).rpc("powersync_apply_transaction", {"ops": ops, **args})
    assert response.status_code == 200, response.text
    return response.json()


def patch_profile(expect: dict, data: dict | None = None) -> dict:
    return {"op": "PATCH", "table": "profiles", "id": "p1", "data": data or {"handle": "new"}, "expect": expect}


def test_atomic_function_compares_as_postgrest_eq_filters_do(db, as_user, user_a):
    """The expected text is cast to the column's type: a reformatted jsonb, `1` for a boolean and
    the same instant in another zone are equal; null is `is null`."""
    db.execute("insert into profiles (id, user_id, handle, settings, active) values"
               " ('p1', %s, 'old', '{\"a\": [1, 2]}', true)", (user_a,))
    db.execute("insert into lists (id, name, owner_id, created_at) values"
               " ('9a6a5e0c-0000-4000-8000-000000000001', 'l', %s, '2026-01-02 03:04:05+00')", (user_a,))
    same = apply(as_user, user_a, [
        patch_profile({"settings": '{"a":[1,2]}', "active": "1", "handle": "old"}),
        {"op": "PATCH", "table": "lists", "id": "9a6a5e0c-0000-4000-8000-000000000001", "data": {"name": "m"},
         "expect": {"name": "l", "created_at": "2026-01-02T05:04:05+02:00"}}], detect_conflicts=True)
    assert same == {"applied": 2, "unchanged": []}
    assert db.execute("select handle from profiles where id = 'p1'").fetchone()[0] == "new"
    # a null previous value matches only a null
    changed = apply(as_user, user_a, [patch_profile({"handle": None}, {"handle": "newer"})], detect_conflicts=True)
    assert changed["conflict"]["index"] == 0 and changed["conflict"]["row"]["handle"] == "new", changed
    db.execute("update profiles set handle = null where id = 'p1'")
    assert apply(as_user, user_a, [patch_profile({"handle": None}, {"handle": "newer"})],
                 detect_conflicts=True) == {"applied": 1, "unchanged": []}


def test_atomic_conflict_rolls_back_the_call_and_records_nothing_in_the_ledger(db, as_user, user_a):
    list_id, new_list = str(uuid.uuid4()), str(uuid.uuid4())
    db.execute("insert into lists (id, name, owner_id) values (%s, 'theirs', %s)", (list_id, user_a))
    ops = [{"op": "PUT", "table": "lists", "id": new_list, "data": {"name": "n", "owner_id": user_a}},
           {"op": "PATCH", "table": "lists", "id": list_id, "data": {"name": "mine"}, "expect": {"name": "seen"}}]
    ids = {"client_id": "c1", "transaction_id": "7", "detect_conflicts": True}
    answer = apply(as_user, user_a, ops, **ids)
    assert answer["applied"] == 0 and answer["conflict"]["index"] == 1, answer
    assert answer["conflict"]["row"]["name"] == "theirs"
    assert server_name(db, new_list) is None and server_name(db, list_id) == "theirs"
    assert db.execute("select count(*) from powersync_upload_ledger").fetchone()[0] == 0
    # the same transaction id with values that hold: applied and recorded; sent again, the ledger
    # answers before anything is compared (the row no longer holds "theirs")
    ops[1]["expect"] = {"name": "theirs"}
    assert apply(as_user, user_a, ops, **ids) == {"applied": 2, "unchanged": []}
    assert apply(as_user, user_a, ops, **ids) == {"applied": 0, "already_applied": True}
    # the ledger's digest leaves "expect" out: the ops as the dead-letter table stores them
    plain = [{k: v for k, v in op.items() if k != "expect"} for op in ops]
    (digest,) = db.execute("select digest from powersync_upload_ledger").fetchone()
    assert digest == db.execute("select encode(sha256(convert_to(%s::jsonb::text, 'UTF8')), 'hex')",
                                (json.dumps(plain),)).fetchone()[0]


def test_atomic_compared_write_of_a_hidden_or_gone_row_is_unchanged_not_a_conflict(db, as_user, user_a, user_b):
    hidden = str(uuid.uuid4())
    db.execute("insert into lists (id, name, owner_id) values (%s, 'theirs', %s)", (hidden, user_b))
    answer = apply(as_user, user_a, [
        {"op": "PATCH", "table": "lists", "id": hidden, "data": {"name": "x"}, "expect": {"name": "seen"}},
        {"op": "DELETE", "table": "lists", "id": hidden, "expect": {"name": "seen"}},
        {"op": "DELETE", "table": "lists", "id": str(uuid.uuid4()), "expect": {"name": "seen"}}],
        detect_conflicts=True)
    assert answer == {"applied": 3, "unchanged": [0, 1, 2]}, "nothing of another user's row is revealed"
    assert server_name(db, hidden) == "theirs"


def test_atomic_function_without_detect_conflicts_ignores_expect_as_before(db, as_user, user_a):
    list_id = str(uuid.uuid4())
    db.execute("insert into lists (id, name, owner_id) values (%s, 'theirs', %s)", (list_id, user_a))
    ops = [{"op": "PATCH", "table": "lists", "id": list_id, "data": {"name": "mine"}, "expect": {"name": "seen"}}]
    assert apply(as_user, user_a, ops) == {"applied": 1, "unchanged": []}
    assert server_name(db, list_id) == "mine"


def test_atomic_function_in_service_mode_compares_only_the_owners_rows(db, client, user_a, user_b):
    """Called with the service key (RLS bypassed) and owner_column/owner_id, as the bridge in
    service mode: another owner's row is left alone (`unchanged`), the owner's own changed row is a
    conflict, and the owner column is never what decides it."""
    service = client(SERVICE_KEY, SERVICE_KEY)
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    db.execute("insert into lists (id, name, owner_id) values (%s, 'changed', %s), (%s, 'seen', %s)",
               (mine, user_a, theirs, user_b))

    def call(ops):
        response = service.rpc("powersync_apply_transaction", {
            "ops": ops, "owner_column": "owner_id", "owner_id": user_a, "detect_conflicts": True})
        assert response.status_code == 200, response.text
        return response.json()

    assert call([{"op": "DELETE", "table": "lists", "id": theirs, "expect": {"name": "seen"}}]) == \
        {"applied": 1, "unchanged": [0]}
    answer = call([{"op": "PATCH", "table": "lists", "id": mine, "data": {"name": "x"}, "expect": {"name": "seen"}}])
    assert answer["conflict"]["index"] == 0 and answer["conflict"]["row"]["name"] == "changed", answer
    assert (server_name(db, mine), server_name(db, theirs)) == ("changed", "seen")


SHAPES_SQL = """
create table if not exists public.shapes (
  id text primary key,
  user_id uuid not null,
  labels text[],
  doc json,
  note text
);
alter table public.shapes enable row level security;
drop policy if exists shapes_own on public.shapes;
create policy shapes_own on public.shapes for all to authenticated
  using (user_id = auth.uid()) with check (user_id = auth.uid());
grant select, insert, update, delete on public.shapes to authenticated, service_role;
"""


@pytest.fixture(scope="module")
def shapes_workers(pg, start_workers, base_vars, powersync_service):
    """A table whose JSON columns are an array and a `json` (neither takes PostgREST's `eq.`
    with JSON text), and a comparing worker per route that converts them."""
    import psycopg
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(SHAPES_SQL)
    workers = start_workers({route: {**conflict_vars(base_vars, powersync_service.url, True, route),
                                     "UPLOAD_JSON_COLUMNS": "todos.tags,shapes.labels,shapes.doc"}
                             for route in ROUTES})
    yield workers
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("drop table if exists public.shapes")


def shape_entry(op: str, data: dict | None, previous: dict) -> dict:
    """An entry as the SDK sends it with trackPrevious: JSON columns' values as JSON text."""
    entry = {"op": op, "type": "shapes", "id": "s1", "previous_values": previous}
    if data is not None:
        entry["data"] = data
    return entry


@pytest.mark.parametrize("route", ROUTES)
def test_a_compared_write_of_array_and_json_columns_is_applied_not_refused(db, shapes_workers, user, route):
    """Previous values of a text[] and a json column: the atomic function compares them as JSON;
    REST, whose `eq.` cannot, leaves them out. Before, either route failed the write (22P02,
    fatal: dead-lettered) for the bridge's own comparison."""
    from tests.e2e.upload_helpers import body, statuses, tx, upload
    sub, token = user
    worker = shapes_workers[route]
    db.execute("delete from shapes")
    db.execute("""insert into shapes values ('s1', %s, '{a,b}', '{"k": 0}', 'old')""", (sub,))
    seen = {"labels": '["a","b"]', "doc": '{"k":0}', "note": "old"}

    edit = shape_entry("PATCH", {"labels": '["a","c"]', "doc": '{"k":1}', "note": "new"}, seen)
    answer = upload(worker, token, body(tx(edit, tid=1)))
    assert answer.status_code == 200 and statuses(answer) == ["success"], answer.text
    assert db.execute("select labels, doc::jsonb, note from shapes").fetchone() == (["a", "c"], {"k": 1}, "new")

    # An edit made from the old values: the atomic function sees the array changed
    stale = shape_entry("PATCH", {"labels": '["x"]'}, seen)
    answer = upload(worker, token, body(tx(stale, tid=2)))
    if route == "atomic":
        assert statuses(answer) == ["conflict"], answer.text
        assert db.execute("select labels from shapes").fetchone() == (["a", "c"],)
    else:
        assert statuses(answer) == ["success"], answer.text
        assert db.execute("select labels from shapes").fetchone() == (["x"],)
        db.execute("""update shapes set labels = '{a,c}'""")

    # A re-send of the first edit after a lost answer: the row already holds its values (json too)
    answer = upload(worker, token, body(tx(edit, tid=3)))
    if route == "atomic":
        assert statuses(answer) == ["success"], answer.text
    else:  # REST cannot check a PATCH that sets an array for holding its values: read as a conflict
        assert statuses(answer) == ["conflict"], answer.text

    gone = shape_entry("DELETE", None, {"labels": '["a","c"]', "doc": '{"k":1}', "note": "new"})
    answer = upload(worker, token, body(tx(gone, tid=4)))
    assert statuses(answer) == ["success"], answer.text
    assert db.execute("select count(*) from shapes").fetchone() == (0,)


@pytest.mark.parametrize("route", ROUTES)
def test_a_compared_delete_is_judged_as_a_delete_by_a_policy_on_the_request_method(db, shapes_workers, user, route):
    """A rule keyed on request.method (no DELETE through the Data API) holds for a DELETE that
    carries previous values too, which the function applies on its own: on both routes the row
    stays, and the DELETE is the same: `unchanged` (the policy refused it; nobody changed the
    row, so it is no conflict)."""
    from tests.e2e.upload_helpers import body, statuses, tx, upload
    sub, token = user
    table = "guarded_" + route
    db.execute(f"create table public.{table} (id text primary key, note text);"
               f" alter table public.{table} enable row level security;"
               f" create policy rw on public.{table} for all to authenticated using (true) with check (true);"
               f" create policy no_api_delete on public.{table} as restrictive for delete to authenticated"
               f" using (current_setting('request.method', true) is distinct from 'DELETE');"
               f" grant select, insert, update, delete on public.{table} to authenticated;"
               f" insert into public.{table} values ('g1', 'kept')")
    try:
        gone = {"op": "DELETE", "type": table, "id": "g1", "previous_values": {"note": "kept"}}
        answer = upload(shapes_workers[route], token, body(tx(gone, tid=1)))
        assert answer.status_code == 200, answer.text
        assert statuses(answer) == ["success"] and answer.json()["results"][0]["unchanged"] == [0], answer.text
        assert db.execute(f"select note from public.{table}").fetchall() == [("kept",)]
    finally:
        db.execute(f"drop table if exists public.{table}")
