"""The upload bridge end to end: POST /powersync-upload through the worker in workerd
(`wrangler dev`), the PostgREST stand-in and a real PostgreSQL with RLS.

Worker instances (started once for the module, in parallel, see `instances`):
  rls        rls mode (writes as the user) through REST requests (UPLOAD_ATOMIC=false),
             UPLOAD_JSON_COLUMNS=todos.tags, UPLOAD_BOOLEAN_COLUMNS=todos.completed
  service    UPLOAD_MODE=service, UPLOAD_TABLES=profiles, UPLOAD_OWNER_COLUMN=user_id (REST)
  atomic     UPLOAD_ATOMIC=true
  auto       UPLOAD_ATOMIC unset (the default: the function whenever it is installed)
  later      UPLOAD_ATOMIC unset, UPLOAD_ATOMIC_FUNCTION=powersync_apply_later (not installed
             until a test creates it), UPLOAD_ATOMIC_RECHECK_SECONDS=2
  dead       UPLOAD_DEAD_LETTER_TABLE=powersync_dead_letters,
             UPLOAD_ERROR_CLASS_OVERRIDES=PGRST204:dangerously_fatal,42703:dangerously_fatal (REST)
  budget     UPLOAD_SUBREQUEST_BUDGET=5 (REST)
  refused    SUPABASE_URL = a closed loopback port (HS256 sessions still verify locally)

Every test gets emptied tables and a reset stand-in (`db`), and fresh uuids.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import time
import uuid

import psycopg
import pytest
import requests

from tests.e2e.conftest import ANON_KEY, ROOT, make_token
from tests.e2e.upload_helpers import (body, delete, failure, patch, put, statuses, tx, upload,
                                      upload_log_lines, wait_until_standin_idle)
from tests.support.db import api_session, count, insert_list, insert_profile, insert_todo, new_id, row, snapshot
from tests.support.upstream import ScriptedUpstream
from tests.support.pg import refused_port

DEAD_LETTERS = "powersync_dead_letters"
RPC_PATH = "/rest/v1/rpc/powersync_apply_transaction"
LATER_FUNCTION = "powersync_apply_later"
LEDGER = "powersync_upload_ledger"


def test_json_text_is_stored_with_every_digit_of_its_numbers(rls_worker, db, user):
    """The JSON column's text is checked and sent as written, never rebuilt through a float."""
    sub, token = user
    list_id, todo_id = insert_list(db, sub), new_id()
    tags = '{"n": 12345678901234567890123, "pi": 3.14159265358979323846}'
    response = upload(rls_worker, token, body(tx(put("todos", todo_id, description="d", list_id=list_id,
                                                     created_by=sub, tags=tags))))
    assert statuses(response) == ["success"], response.text
    stored = db.execute("select tags->>'n', tags->>'pi' from todos where id = %s", (todo_id,)).fetchone()
    assert stored == ("12345678901234567890123", "3.14159265358979323846")


# --------------------------------------------------------------------------- worker instances
@pytest.fixture(scope="module")
def instances(base_vars, start_workers):
    """All the worker configurations this module needs, started concurrently (each
    `wrangler dev` takes several seconds to come up)."""
    refused_url = f"http://127.0.0.1:{refused_port()}"  # connections refused
    rest = {**base_vars, "UPLOAD_ATOMIC": "false"}
    configs = {
        "rls": {**rest, "UPLOAD_JSON_COLUMNS": "todos.tags",
                "UPLOAD_BOOLEAN_COLUMNS": "todos.completed"},
        "service": {**rest, "UPLOAD_MODE": "service", "UPLOAD_TABLES": "profiles",
                    "UPLOAD_OWNER_COLUMN": "user_id"},
        "service_atomic": {**base_vars, "UPLOAD_ATOMIC": "true", "UPLOAD_MODE": "service",
                           "UPLOAD_TABLES": "profiles", "UPLOAD_OWNER_COLUMN": "user_id"},
        "atomic": {**base_vars, "UPLOAD_ATOMIC": "true"},
        "atomic_conflicts": {**base_vars, "UPLOAD_ATOMIC": "true", "UPLOAD_CONFLICT_DETECTION": "true"},
        "auto": dict(base_vars),
        "later": {**base_vars, "UPLOAD_ATOMIC_FUNCTION": LATER_FUNCTION,
                  "UPLOAD_ATOMIC_RECHECK_SECONDS": "2"},
        "dead": {**rest, "UPLOAD_DEAD_LETTER_TABLE": DEAD_LETTERS,
                 "UPLOAD_ERROR_CLASS_OVERRIDES": "PGRST204:dangerously_fatal,42703:dangerously_fatal"},
        "budget": {**rest, "UPLOAD_SUBREQUEST_BUDGET": "5"},
        "refused": {**rest, "SUPABASE_URL": refused_url},
    }
    assert "UPLOAD_ATOMIC" not in configs["auto"], "auto is the default: left unset"
    return start_workers(configs)


@pytest.fixture(scope="module")
def rls_worker(instances):
    return instances["rls"]


@pytest.fixture(scope="module")
def service_worker(instances):
    return instances["service"]


@pytest.fixture(scope="module")
def service_atomic_worker(instances):
    return instances["service_atomic"]


@pytest.fixture(scope="module")
def atomic_worker(instances):
    return instances["atomic"]


@pytest.fixture(scope="module")
def atomic_conflicts_worker(instances):
    return instances["atomic_conflicts"]


@pytest.fixture(scope="module")
def auto_worker(instances):
    return instances["auto"]


@pytest.fixture(scope="module")
def later_worker(instances):
    return instances["later"]


@pytest.fixture(scope="module")
def dead_letter_worker(instances):
    return instances["dead"]


@pytest.fixture(scope="module")
def budget_worker(instances):
    return instances["budget"]


@pytest.fixture(scope="module")
def refused_worker(instances):
    return instances["refused"]




def requests_made(standin) -> int:
    return standin.stats()["requests"]


def assert_retry_response(response, retry_after: str | None = None):
    assert response.status_code == 503, response.text
    assert response.headers.get("Retry-After"), response.headers
    assert int(response.headers["Retry-After"]) >= 1
    if retry_after is not None:
        assert response.headers["Retry-After"] == retry_after


# =========================================================================== authentication
def test_upload_without_authorization_header_is_401(rls_worker, db, standin, user):
    sub, _ = user
    response = upload(rls_worker, None, body(tx(put("lists", new_id(), name="n", owner_id=sub))))
    assert response.status_code == 401
    assert response.json()["error"] == "No authorization header"
    assert response.json()["code"] == "missing_authorization"
    assert requests_made(standin) == 0
    assert count(db, "lists") == 0


@pytest.mark.parametrize("kind", ["garbage", "wrong_secret", "expired", "anon_key", "no_sub"])
def test_upload_with_invalid_session_token_is_401(rls_worker, db, standin, session_token, kind):
    sub = new_id()
    token = {
        "garbage": "not-a-jwt",
        "wrong_secret": make_token(sub, secret="another-secret-another-secret-another-secret",
                                   iss=f"{standin.url}/auth/v1"),
        "expired": session_token(sub, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "anon_key": ANON_KEY,
        "no_sub": session_token(None),
    }[kind]
    response = upload(rls_worker, token, body(tx(put("lists", new_id(), name="n", owner_id=sub))))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "Unauthorized"
    assert requests_made(standin) == 0
    assert count(db, "lists") == 0


# =========================================================================== body shapes
def _entry(shape_keys: dict, op: str, table: str, id_: str, data: dict | None) -> dict:
    entry = {"op": op, shape_keys["table"]: table, "id": id_}
    if data is not None:
        entry[shape_keys["data"]] = data
    return entry


@pytest.mark.parametrize("shape,table_key,data_key", [
    ("transactions", "table", "op_data"),
    ("transactions", "type", "data"),
    ("batch", "table", "data"),
    ("batch", "table", "opData"),
    ("operations", "type", "opData"),
    ("operations", "type", "op_data"),
])
def test_every_body_shape_and_field_alias_is_applied(rls_worker, db, user, shape, table_key,
                                                     data_key):
    sub, token = user
    keys = {"table": table_key, "data": data_key}
    list_id, doomed = new_id(), insert_list(db, sub, "doomed")
    entries = [
        _entry(keys, "PUT", "lists", list_id, {"name": "first", "owner_id": sub}),
        _entry(keys, "PATCH", "lists", list_id, {"name": "second"}),
        _entry(keys, "DELETE", "lists", doomed, None),
    ]
    payload = ({"transactions": [{"transaction_id": 42, "crud": entries}]}
               if shape == "transactions" else {shape: entries})
    response = upload(rls_worker, token, payload)
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [
        {"status": "success", "transaction_id": 42 if shape == "transactions" else None}]
    assert response.json()["applied"] == 1
    assert row(db, "lists", list_id)["name"] == "second"
    assert row(db, "lists", doomed) is None


@pytest.mark.parametrize("payload,field", [
    ("this is not json", "$"),
    ([1, 2], "$"),
    ({"something": []}, "$"),
    ({"batch": [], "operations": []}, "$"),
    ({"batch": {"op": "PUT"}}, "batch"),
    ({"transactions": [{"transaction_id": 1}]}, "transactions[0].crud"),
    ({"transactions": [{"transaction_id": {"x": 1}, "crud": []}]},
     "transactions[0].transaction_id"),
    ({"transactions": [{"crud": []}, {"crud": [
        {"op": "PUT", "table": "lists", "id": "a", "op_data": {"name": "x"}},
        {"op": "UPSERT", "table": "lists", "id": "b"}]}]}, "transactions[1].crud[1].op"),
    ({"batch": [{"op": "PUT", "table": "lists", "data": {}}]}, "batch[0].id"),
    ({"batch": [{"op": "PUT", "table": "lists", "id": True}]}, "batch[0].id"),
    ({"operations": [{"op": "PUT", "id": "a", "data": {}}]}, "operations[0].table"),
    ({"batch": [{"op": "PUT", "table": "lists", "id": "a", "data": "name=x"}]}, "batch[0].data"),
    ({"batch": [{"op": "PUT", "table": "lists", "id": "a", "data": {"name": "x"},
                 "opData": {"name": "y"}}]}, "batch[0].opData"),
])
def test_malformed_body_is_400_naming_the_field(rls_worker, db, standin, user, payload, field):
    _, token = user
    if isinstance(payload, str):
        response = upload(rls_worker, token, raw=payload)
    else:
        response = upload(rls_worker, token, payload)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["code"] == "invalid_body"
    assert answer["field"] == field
    assert answer["error"].startswith(f"{field}: ")
    assert requests_made(standin) == 0, "a malformed body is refused as a whole"
    assert count(db, "lists") == 0


@pytest.mark.parametrize("too_large", ["transactions", "entries", "bytes"])
def test_too_large_body_is_413(rls_worker, db, standin, user, too_large):
    sub, token = user
    if too_large == "transactions":  # default UPLOAD_MAX_TRANSACTIONS = 1000
        payload = body(*[tx(delete("lists", new_id())) for _ in range(1001)])
    elif too_large == "entries":  # default UPLOAD_MAX_ENTRIES = 10000
        payload = {"batch": [delete("lists", str(i)) for i in range(10_001)]}
    else:  # default UPLOAD_MAX_BODY_BYTES = 5 MiB
        payload = body(tx(put("lists", new_id(), name="x" * (5 * 1024 * 1024 + 10), owner_id=sub)))
    response = upload(rls_worker, token, payload)
    assert response.status_code == 413, response.text[:500]
    assert response.json()["code"] == "payload_too_large"
    assert requests_made(standin) == 0
    assert count(db, "lists") == 0


def test_compressed_body_is_415_and_nothing_is_written(rls_worker, db, standin, user):
    """workerd hands the worker a request body as it came: a gzip body would read as bad JSON."""
    sub, token = user
    raw = json.dumps(body(tx(put("lists", new_id(), name="zipped", owner_id=sub)))).encode()
    response = requests.post(f"{rls_worker.url}/powersync-upload", data=gzip.compress(raw), timeout=30,
                             headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                      "Content-Encoding": "gzip"})
    assert response.status_code == 415, response.text[:500]
    assert response.json()["code"] == "unsupported_encoding"
    assert "gzip" in response.json()["error"]
    assert requests_made(standin) == 0
    assert count(db, "lists") == 0


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _open_chunked_upload(worker, token: str | None) -> socket.socket:
    """A raw POST /powersync-upload with `Transfer-Encoding: chunked` (no Content-Length) whose
    body the caller sends (or never finishes)."""
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=30)
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    sock.sendall((f"POST /powersync-upload HTTP/1.1\r\nHost: 127.0.0.1:{worker.port}\r\n{auth}"
                  "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
    return sock


def _status_line(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    answer = b""
    while b"\r\n" not in answer:
        data = sock.recv(4096)
        if not data:
            break
        answer += data
    return answer.split(b"\r\n", 1)[0].decode(errors="replace")


def test_chunked_body_over_the_limit_is_413_without_content_length(rls_worker, db, standin, user):
    """requests sends a generator body with Transfer-Encoding: chunked: no length to refuse it by."""
    _, token = user
    sent = {"bytes": 0}

    def generate():
        yield b'{"batch":[{"op":"PUT","table":"lists","id":"a","op_data":{"name":"'
        chunk = b"x" * 65536
        for _ in range(6 * 16):  # 6 MiB > the default UPLOAD_MAX_BODY_BYTES (5 MiB)
            sent["bytes"] += len(chunk)
            yield chunk
        yield b'"}}]}'

    response = requests.post(f"{rls_worker.url}/powersync-upload", data=generate(), timeout=60,
                             headers={"Authorization": f"Bearer {token}",
                                      "Content-Type": "application/json"})
    assert "Content-Length" not in response.request.headers
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413, response.text[:500]
    assert response.json()["code"] == "payload_too_large"
    assert requests_made(standin) == 0
    assert count(db, "lists") == 0


def test_chunked_body_over_the_limit_is_refused_while_the_client_is_still_sending(rls_worker, user):
    """The 413 comes as soon as the limit is passed: the worker does not wait for (or buffer)
    the rest of a body that never ends."""
    _, token = user
    sock = _open_chunked_upload(rls_worker, token)
    try:
        sock.sendall(_chunked(b'{"batch":[{"op":"PUT","table":"lists","id":"a","op_data":{"n":"'))
        chunk = _chunked(b"x" * 65536)
        try:
            for _ in range(5 * 16 + 2):  # just over 5 MiB, then the client stalls: no terminating chunk
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the worker answered and closed while the last chunks were on their way (seen once)
        started = time.monotonic()
        status = _status_line(sock, timeout=20)
        assert status.split(" ")[1:2] == ["413"], status
        assert time.monotonic() - started < 20
    finally:
        sock.close()


@pytest.mark.parametrize("token", [None, "not-a-jwt"])
def test_upload_body_is_not_read_before_the_session_is_verified(rls_worker, db, standin, token):
    """A caller without a valid session gets its 401 while its (endless) body is still being
    sent: the worker never waits for it."""
    sock = _open_chunked_upload(rls_worker, token)
    try:
        sock.sendall(_chunked(b'{"batch":[' + b" " * 1024))
        started = time.monotonic()
        status = _status_line(sock, timeout=20)  # the body is never finished
        assert status.split(" ")[1:2] == ["401"], status
        assert time.monotonic() - started < 20
    finally:
        sock.close()
    assert requests_made(standin) == 0


# =========================================================================== writes
def test_put_inserts_rows(rls_worker, db, user):
    sub, token = user
    list_id, todo_id = new_id(), new_id()
    response = upload(rls_worker, token, body(tx(
        put("lists", list_id, name="groceries", owner_id=sub),
        put("todos", todo_id, description="milk", list_id=list_id, created_by=sub, priority=3),
    )))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"]
    assert row(db, "lists", list_id)["name"] == "groceries"
    todo = row(db, "todos", todo_id)
    assert (todo["description"], todo["list_id"], todo["created_by"], todo["priority"],
            todo["completed"]) == ("milk", list_id, sub, 3, False)


def test_put_over_an_existing_row_updates_it(rls_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub, "old name")
    response = upload(rls_worker, token, body(tx(put("lists", list_id, name="new name",
                                                     owner_id=sub))))
    assert statuses(response) == ["success"]
    assert row(db, "lists", list_id)["name"] == "new name"
    assert count(db, "lists") == 1


def test_patch_updates_only_the_given_columns(rls_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    todo_id = insert_todo(db, sub, list_id, "before", priority=4, completed=True,
                          tags=["keep"])
    before = row(db, "todos", todo_id)
    response = upload(rls_worker, token, body(tx(patch("todos", todo_id, description="after"))))
    assert statuses(response) == ["success"]
    after = row(db, "todos", todo_id)
    assert after["description"] == "after"
    assert {k: v for k, v in after.items() if k != "description"} == \
        {k: v for k, v in before.items() if k != "description"}


def test_patch_cannot_rename_the_primary_key(rls_worker, db, user):
    # The client keeps addressing the row by its id; a PATCH that moved it to another id would
    # detach it from every later write (and could collide with another row).
    sub, token = user
    profile, stolen = "p-" + new_id(), "p-" + new_id()
    insert_profile(db, profile, sub, handle="h-" + new_id(), active=False)
    response = upload(rls_worker, token, body(tx(
        patch("profiles", profile, {"id": stolen, "active": True}),
        patch("profiles", profile, {"id": stolen}),
    )))
    assert statuses(response) == ["success"], response.text
    assert row(db, "profiles", profile)["active"] is True
    assert row(db, "profiles", stolen) is None


def test_patch_with_null_sets_the_column_to_null(rls_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    todo_id = insert_todo(db, sub, list_id, "t", priority=2, tags={"a": 1},
                          completed_at="2026-01-01T00:00:00Z")
    response = upload(rls_worker, token, body(tx(
        patch("todos", todo_id, priority=None, tags=None, completed_at=None))))
    assert statuses(response) == ["success"]
    todo = row(db, "todos", todo_id)
    assert (todo["priority"], todo["tags"], todo["completed_at"]) == (None, None, None)
    assert todo["description"] == "t"


def test_delete_removes_the_row(rls_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    doomed = [insert_todo(db, sub, list_id, f"d{i}") for i in range(3)]
    kept = insert_todo(db, sub, list_id, "kept")
    response = upload(rls_worker, token, body(tx(*[delete("todos", t) for t in doomed])))
    assert statuses(response) == ["success"]
    assert all(row(db, "todos", t) is None for t in doomed)
    assert row(db, "todos", kept)["description"] == "kept"
    assert row(db, "lists", list_id) is not None


def test_puts_with_different_columns_are_not_merged_into_one_upsert(rls_worker, db, user):
    # A bulk upsert sets every column of the union for every row: a column one PUT does not
    # send must not be overwritten with NULL because another PUT sent it.
    sub, token = user
    list_id = insert_list(db, sub)
    existing = insert_todo(db, sub, list_id, "existing", priority=3, tags=["keep"])
    fresh = new_id()
    response = upload(rls_worker, token, body(tx(
        put("todos", fresh, description="fresh", list_id=list_id, created_by=sub, priority=1,
            tags='["new"]'),
        put("todos", existing, description="existing, edited", list_id=list_id, created_by=sub),
    )))
    assert statuses(response) == ["success"], response.text
    edited = row(db, "todos", existing)
    assert edited["description"] == "existing, edited"
    assert (edited["priority"], edited["tags"]) == (3, ["keep"])
    assert (row(db, "todos", fresh)["priority"], row(db, "todos", fresh)["tags"]) == (1, ["new"])


@pytest.fixture
def notes_table(db):
    """A table whose `id` is unique but not its primary key (a surrogate key is)."""
    db.execute("create table public.notes (pk bigserial primary key, id text not null unique, "
               "body text)")
    db.execute("grant all on table public.notes to authenticated, service_role")
    db.execute("grant usage on sequence public.notes_pk_seq to authenticated, service_role")
    yield "notes"
    db.execute("drop table public.notes")


def test_put_of_an_existing_row_upserts_by_id_when_id_is_not_the_primary_key(
        rls_worker, db, user, notes_table):
    # Without ?on_conflict=id PostgREST would upsert on the primary key (pk), so re-sending a PUT
    # (a retry after a lost answer) would fail for good with 23505 on the id's unique index.
    _, token = user
    note = "n-" + new_id()
    first = upload(rls_worker, token, body(tx(put(notes_table, note, body="v1"), tid=1)))
    assert statuses(first) == ["success"], first.text
    again = upload(rls_worker, token, body(tx(put(notes_table, note, body="v2"),
                                              put(notes_table, "m-" + new_id(), body="other"),
                                              tid=2)))
    assert again.status_code == 200, again.text
    assert statuses(again) == ["success"], again.text
    assert db.execute("select body from notes where id = %s", (note,)).fetchone() == ("v2",)
    assert db.execute("select count(*) from notes").fetchone() == (2,)


def test_entries_on_the_same_row_apply_in_order(rls_worker, db, user):
    sub, token = user
    twice, recreated, gone = new_id(), new_id(), new_id()
    response = upload(rls_worker, token, body(tx(
        put("lists", twice, name="first", owner_id=sub),
        put("lists", twice, name="second", owner_id=sub),
        put("lists", recreated, name="v1", owner_id=sub),
        delete("lists", recreated),
        put("lists", recreated, name="v2", owner_id=sub),
        put("lists", gone, name="short-lived", owner_id=sub),
        patch("lists", gone, name="patched"),
        delete("lists", gone),
    )))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"]
    assert row(db, "lists", twice)["name"] == "second"
    assert row(db, "lists", recreated)["name"] == "v2"
    assert row(db, "lists", gone) is None


def test_two_puts_of_one_id_are_applied_in_order_in_two_upserts_and_the_later_wins(rls_worker, db,
                                                                                 standin, user):
    sub, token = user
    a, b = new_id(), new_id()
    response = upload(rls_worker, token, body(tx(
        put("lists", a, name="a v1", owner_id=sub),
        put("lists", b, name="b", owner_id=sub),
        put("lists", a, name="a v2", owner_id=sub),
    )))
    assert statuses(response) == ["success"], response.text
    assert requests_made(standin) == 2, "the repeated id starts a second upsert"
    assert (row(db, "lists", a)["name"], row(db, "lists", b)["name"]) == ("a v2", "b")


def test_refused_put_followed_by_a_put_of_the_same_id_is_fatal_at_the_refused_one(rls_worker, db,
                                                                                 standin, user):
    """Applied in order, the first PUT (another user's owner_id: RLS) fails and the transaction
    stops there; keeping only the later row would report success instead (found by the soak)."""
    sub, token = user
    a = new_id()
    response = upload(rls_worker, token, body(tx(
        put("lists", a, name="not mine", owner_id=new_id()),
        put("lists", a, name="mine", owner_id=sub),
    )))
    assert statuses(response) == ["fatal_error"], response.text
    assert response.json()["results"][0]["failed_operation"]["index"] == 0
    assert response.json()["results"][0]["failed_operation"]["code"] == "42501"
    assert count(db, "lists") == 0


def test_ids_equal_only_after_casting_are_applied_in_order_not_refused(rls_worker, db, standin,
                                                                       user):
    # A uuid in upper and in lower case is one row: one upsert of both would fail with 21000
    sub, token = user
    lower, other = new_id(), new_id()
    response = upload(rls_worker, token, body(tx(
        put("lists", lower.upper(), name="first", owner_id=sub),
        put("lists", other, name="other", owner_id=sub),
        put("lists", lower, name="second", owner_id=sub),
    )))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"], response.text
    assert row(db, "lists", lower)["name"] == "second"
    assert row(db, "lists", other)["name"] == "other"
    assert count(db, "lists") == 2


def test_entry_id_is_the_row_id_and_numeric_ids_are_text(rls_worker, db, user):
    sub, token = user
    list_id, ignored = new_id(), new_id()
    number = int(uuid.uuid4().int % 10**12)
    response = upload(rls_worker, token, {"batch": [
        {"op": "put", "table": "lists", "id": list_id,
         "data": {"id": ignored, "name": "entry id wins", "owner_id": sub}},
        {"op": "PUT", "table": "profiles", "id": number, "data": {"user_id": sub}},
        {"op": "Patch", "table": "profiles", "id": number, "data": {"handle": "h" + str(number)}},
    ]})
    assert statuses(response) == ["success"], response.text
    assert row(db, "lists", list_id)["name"] == "entry id wins"
    assert row(db, "lists", ignored) is None
    assert row(db, "profiles", str(number))["handle"] == "h" + str(number)


def test_resent_batch_is_idempotent(rls_worker, db, user):
    sub, token = user
    list_id, t1, t2, t3 = new_id(), new_id(), new_id(), new_id()
    old_list = insert_list(db, sub, "old")
    old_todo = insert_todo(db, sub, old_list, "old todo")
    payload = body(
        tx(put("lists", list_id, name="l", owner_id=sub),
           put("todos", t1, description="one", list_id=list_id, created_by=sub),
           put("todos", t2, description="two", list_id=list_id, created_by=sub), tid=1),
        tx(patch("todos", t1, description="one!", completed=1),
           put("todos", t3, description="three", list_id=list_id, created_by=sub, tags='["x"]'),
           delete("todos", t2), tid=2),
        tx(delete("todos", old_todo), delete("lists", old_list),
           patch("lists", list_id, name="renamed"), tid=3),
    )
    first = upload(rls_worker, token, payload)
    assert first.status_code == 200, first.text
    assert statuses(first) == ["success"] * 3
    state = snapshot(db)
    assert set(state["todos"]) == {t1, t3}
    assert set(state["lists"]) == {list_id}
    assert state["lists"][list_id]["name"] == "renamed"

    second = upload(rls_worker, token, payload)
    assert second.status_code == 200, second.text
    assert statuses(second) == ["success"] * 3
    assert snapshot(db) == state


def test_json_text_and_0_1_are_stored_as_jsonb_and_boolean(rls_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    t1, t2 = new_id(), new_id()
    response = upload(rls_worker, token, body(
        tx(put("todos", t1, description='{"not": "converted"}', list_id=list_id, created_by=sub,
               tags='["a", "b"]', completed=1),
           put("todos", t2, description="two", list_id=list_id, created_by=sub,
               tags='{"k": {"n": 1}}', completed=0)),
    ))
    assert statuses(response) == ["success"], response.text
    first, second = row(db, "todos", t1), row(db, "todos", t2)
    assert (first["tags"], first["completed"]) == (["a", "b"], True)
    assert first["description"] == '{"not": "converted"}', "only configured columns convert"
    assert (second["tags"], second["completed"]) == ({"k": {"n": 1}}, False)
    types = db.execute("select jsonb_typeof(tags), pg_typeof(completed)::text from todos "
                       "where id = %s", (t1,)).fetchone()
    assert types == ("array", "boolean")

    response = upload(rls_worker, token, body(tx(patch("todos", t1, tags="[]", completed=0),
                                                 patch("todos", t2, tags='"text"', completed=1))))
    assert statuses(response) == ["success"], response.text
    assert (row(db, "todos", t1)["tags"], row(db, "todos", t1)["completed"]) == ([], False)
    assert (row(db, "todos", t2)["tags"], row(db, "todos", t2)["completed"]) == ("text", True)


def test_text_that_is_not_json_in_a_json_column_is_refused_unsent_never_stored_quoted(rls_worker, db, standin, user):
    """Sent as a JSON string, `[oops` would be stored in the jsonb column as "[oops", quotes and
    all, with a success answer: the client's value altered, not written."""
    sub, token = user
    list_id = insert_list(db, sub)
    todo = new_id()
    response = upload(rls_worker, token, body(tx(put("todos", todo, description="d", list_id=list_id,
                                                     created_by=sub, tags="[oops"))))
    assert statuses(response) == ["fatal_error"], response.text
    assert failure(response, 0)["code"] == "invalid_json", response.text
    assert "todos.tags" in failure(response, 0)["message"]
    assert row(db, "todos", todo) is None
    assert [e["path"] for e in standin.requests_log()].count("/rest/v1/todos") == 0, "nothing was sent"


def test_long_metadata_and_an_empty_id_fail_only_their_own_transaction_never_the_whole_queue(rls_worker, db, user):
    """The SDK queues both (a write's 70 KiB `_metadata`; an app's `INSERT … (id) VALUES ('')`).
    Answered 400 for the whole body, they held every transaction sent with them, for ever."""
    sub, token = user
    list_id = insert_list(db, sub)
    first, second = new_id(), new_id()
    with_metadata = {**put("todos", second, description="m", list_id=list_id, created_by=sub),
                     "metadata": "m" * 70 * 1024}
    response = upload(rls_worker, token, body(
        tx(put("todos", first, description="f", list_id=list_id, created_by=sub), tid=1),
        tx(with_metadata, tid=2),
        tx(put("todos", "", description="e", list_id=list_id, created_by=sub), tid=3),
    ))
    assert statuses(response) == ["success", "success", "fatal_error"], response.text
    assert failure(response, 2)["code"] == "invalid_id", response.text
    assert row(db, "todos", first) is not None and row(db, "todos", second) is not None


def test_ids_with_special_characters_touch_exactly_their_row(rls_worker, db, standin, user):
    sub, token = user
    p = uuid.uuid4().hex[:6] + "-"
    odd = [p + s for s in ["a,b", "a)b", "(a)", "a&b=c", 'a"b', "a\\b", "a b", "a.b:c",
                           "a%2Cb", "*", "ünï-日本-🙂", "a;b", "a?b#c", "a+b"]]
    decoys = [p + s for s in ["a", "b", "a,b,", "ab", "a", "c", '"a,b"', "a\\\\b", "ab=c",
                              "a,b)", "ünï", "a%2cb", "a b ", "(a", "a)", "a&b"]]
    decoys = sorted(set(decoys) - set(odd))
    for d in decoys:
        insert_profile(db, d, sub, handle="decoy " + d, active=False)
    decoy_state = {d: row(db, "profiles", d) for d in decoys}

    # created (one bulk upsert), flagged (one merged PATCH ... in.(…)), renamed one by one (eq.)
    deleted_together, deleted_alone = odd[:5], odd[5]
    kept = odd[6:]
    response = upload(rls_worker, token, body(
        tx(*[put("profiles", i, user_id=sub, active=False) for i in odd], tid="create"),
        tx(*[patch("profiles", i, active=True) for i in odd], tid="flag"),
        tx(*[patch("profiles", i, handle=f"handle {n}") for n, i in enumerate(odd)], tid="rename"),
        tx(*[delete("profiles", i) for i in deleted_together], tid="delete-many"),
        tx(delete("profiles", deleted_alone), tid="delete-one"),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"] * 5
    # the quoting paths were all taken: one bulk upsert, one PATCH id=in.(…), one PATCH id=eq.
    # per id, one DELETE id=in.(…), one DELETE id=eq.
    assert requests_made(standin) == 1 + 1 + len(odd) + 1 + 1

    for n, i in enumerate(odd):
        r = row(db, "profiles", i)
        if i in kept:
            assert r is not None, f"{i!r} missing"
            assert (r["active"], r["handle"]) == (True, f"handle {n}"), i
        else:
            assert r is None, f"{i!r} not deleted"
    for d in decoys:
        assert row(db, "profiles", d) == decoy_state[d], f"decoy {d!r} was touched"
    assert count(db, "profiles") == len(kept) + len(decoys)


def test_id_with_nul_is_fatal_never_sent_and_dead_lettered(dead_letter_worker, db, standin,
                                                          user):
    # PostgREST cuts an in.(…) value at its first NUL: a merged DELETE of "<x>\0b" would have
    # deleted row <x>.
    sub, token = user
    victim, other = "p-" + new_id(), "p-" + new_id()
    for p in (victim, other):
        insert_profile(db, p, sub, handle="h-" + new_id())
    later = new_id()
    response = upload(dead_letter_worker, token, body(
        tx(delete("profiles", other), delete("profiles", victim + "\u0000b"), tid="nul"),
        tx(patch("profiles", other, active=True), patch("profiles", victim + "\u0000", active=True),
           tid="nul-patch"),
        tx(put("lists", later, name="later", owner_id=sub), tid="later"),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["fatal_error", "fatal_error", "success"]
    for n in (0, 1):
        assert (failure(response, n)["code"], failure(response, n)["index"]) == ("invalid_id", 1)
    assert row(db, "profiles", victim) is not None, "the NUL id touched another row"
    assert row(db, "profiles", other) is not None, "nothing of the transaction was sent"
    assert [e["path"] for e in standin.requests_log()].count("/rest/v1/profiles") == 0
    letters = [r[0] for r in db.execute(
        f"select transaction_id from {DEAD_LETTERS} order by id")]
    assert letters == ["nul", "nul-patch"]


# =========================================================================== RLS mode
def test_rls_user_cannot_update_or_delete_another_users_rows(rls_worker, db, user, other_user):
    a, _ = user
    b, b_token = other_user
    list_id = insert_list(db, a, "a's list")
    todo_id = insert_todo(db, a, list_id, "a's todo", priority=1)
    profile_id = insert_profile(db, "profile-" + new_id(), a, handle="a-" + new_id())
    before = snapshot(db)
    response = upload(rls_worker, b_token, body(
        tx(patch("todos", todo_id, description="hacked", priority=5), tid=1),
        tx(patch("lists", list_id, name="hacked"), patch("profiles", profile_id, active=True),
           tid=2),
        tx(delete("todos", todo_id), delete("lists", list_id), delete("profiles", profile_id),
           tid=3),
    ))
    # RLS hides the rows: zero rows matched, which PostgREST answers 204 like a no-op
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"] * 3
    assert snapshot(db) == before


def test_rls_insert_of_a_row_owned_by_another_user_is_fatal_42501(rls_worker, db, user,
                                                                  other_user):
    a, _ = user
    b, b_token = other_user
    new_list, own_list = new_id(), new_id()
    a_list = insert_list(db, a, "a's list")
    response = upload(rls_worker, b_token, body(
        tx(put("lists", new_list, name="for a", owner_id=a), tid="insert-for-a"),
        tx(put("lists", a_list, name="taken over", owner_id=b), tid="take-over"),
        tx(put("lists", own_list, name="mine", owner_id=b), tid="own"),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["fatal_error", "fatal_error", "success"]
    for n in (0, 1):
        f = failure(response, n)
        assert (f["code"], f["index"]) == ("42501", 0), f
    assert row(db, "lists", new_list) is None
    assert row(db, "lists", a_list)["name"] == "a's list"
    assert row(db, "lists", a_list)["owner_id"] == a
    assert row(db, "lists", own_list)["owner_id"] == b


# =========================================================================== service mode
def test_service_mode_put_forces_the_owner_column_to_the_session_user(service_worker, db, user,
                                                                      other_user):
    a, _ = user
    b, b_token = other_user
    claimed_for_a, no_owner = "p-" + new_id(), "p-" + new_id()
    response = upload(service_worker, b_token, body(
        tx(put("profiles", claimed_for_a, user_id=a, handle="h-" + new_id())),
        tx(put("profiles", no_owner, handle="h-" + new_id())),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success", "success"]
    assert row(db, "profiles", claimed_for_a)["user_id"] == b
    assert row(db, "profiles", no_owner)["user_id"] == b


def test_service_mode_patch_and_delete_of_another_users_rows_do_nothing(service_worker, db, user,
                                                                        other_user):
    a, _ = user
    b, b_token = other_user
    a_profile = insert_profile(db, "a-" + new_id(), a, handle="a-" + new_id(), active=False)
    b_profile = insert_profile(db, "b-" + new_id(), b, handle="b-" + new_id(), active=False)
    a_before = row(db, "profiles", a_profile)
    response = upload(service_worker, b_token, body(
        tx(patch("profiles", a_profile, active=True, handle="stolen"), tid=1),
        tx(delete("profiles", a_profile), tid=2),
        # the owner column cannot be moved by a PATCH either
        tx(patch("profiles", b_profile, user_id=a, active=True), tid=3),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"] * 3
    assert row(db, "profiles", a_profile) == a_before
    assert row(db, "profiles", b_profile)["user_id"] == b
    assert row(db, "profiles", b_profile)["active"] is True


@pytest.mark.parametrize("route", ["service", "service_atomic"])
def test_service_mode_patch_of_only_the_owner_column_is_unchanged_not_a_plain_success(instances, db, user,
                                                                                     other_user, route):
    """The owner column is never changed: a PATCH of it alone writes nothing, and says so, on an
    existing row as on a missing one."""
    a, _ = user
    b, b_token = other_user
    b_profile = insert_profile(db, "b-" + new_id(), b, handle="b-" + new_id(), active=False)
    before = row(db, "profiles", b_profile)
    response = upload(instances[route], b_token, {"client_id": "c-" + new_id(), "transactions": [
        tx(patch("profiles", b_profile, user_id=a), tid=1),
        tx(patch("profiles", "no-such-" + new_id(), user_id=a), tid=2),
        tx(patch("profiles", b_profile, user_id=a, active=True), tid=3),
    ]})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["status"], r.get("unchanged")) for r in results] == [
        ("success", [0]), ("success", [0]), ("success", None)], response.text
    assert row(db, "profiles", b_profile) == {**before, "active": True}


def test_service_mode_put_onto_another_users_id_is_fatal_42501(service_worker, db, user,
                                                              other_user):
    a, _ = user
    b, b_token = other_user
    a_profile = insert_profile(db, "a-" + new_id(), a, handle="a-" + new_id(), active=False)
    a_before = row(db, "profiles", a_profile)
    later = "b-" + new_id()
    response = upload(service_worker, b_token, body(
        tx(put("profiles", "b-" + new_id(), handle="b1-" + new_id(), active=True),
           put("profiles", a_profile, handle="stolen", active=True), tid="steal"),
        tx(put("profiles", later, handle="b2-" + new_id()), tid="later"),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["fatal_error", "success"]
    f = failure(response, 0)
    assert (f["code"], f["index"]) == ("42501", 1), f
    assert row(db, "profiles", a_profile) == a_before
    assert row(db, "profiles", later)["user_id"] == b


@pytest.mark.parametrize("mode", ["rest", "atomic"])
def test_service_mode_applies_the_writes_of_a_user_whose_uuid_sub_is_upper_case(
        mode, service_worker, service_atomic_worker, db, session_token):
    # The owner column (uuid) prints the sub in lower case: the user's own rows are still theirs.
    worker = service_atomic_worker if mode == "atomic" else service_worker
    sub = str(uuid.uuid4()).upper()
    token = session_token(sub)
    mine, also_mine, gone = ("p-" + new_id() for _ in range(3))
    insert_profile(db, also_mine, sub.lower(), handle="h-" + new_id(), active=False)
    insert_profile(db, gone, sub.lower(), handle="h-" + new_id(), active=False)
    response = upload(worker, token, body(
        tx(put("profiles", mine, handle="h-" + new_id()), put("profiles", also_mine, handle="again-" + mine),
           tid="puts"),
        tx(patch("profiles", mine, active=True), delete("profiles", gone), tid="patch-delete"),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success", "success"], response.text
    assert not any(r.get("unchanged") for r in response.json()["results"]), response.text
    assert row(db, "profiles", mine)["user_id"] == sub.lower()
    assert row(db, "profiles", mine)["active"] is True
    assert row(db, "profiles", also_mine)["handle"] == "again-" + mine
    assert row(db, "profiles", gone) is None


def test_service_mode_with_the_anon_key_as_service_key_is_a_configuration_problem_and_writes_wait(
        base_vars, start_worker, db, user):
    # With the anon key the policies would refuse every PUT (fatal) and hide every row from
    # PATCH and DELETE (`success`, unchanged): /health says so, and uploads stay queued.
    sub, token = user
    worker = start_worker({**base_vars, "UPLOAD_MODE": "service", "UPLOAD_TABLES": "profiles",
                           "UPLOAD_OWNER_COLUMN": "user_id", "SUPABASE_SERVICE_ROLE_KEY": ANON_KEY})
    problems = worker.get("/health").json()["upload"]["problems"]
    assert [p["name"] for p in problems] == ["SUPABASE_SERVICE_ROLE_KEY"], problems
    assert problems[0]["message"].startswith("is the same key as SUPABASE_ANON_KEY: UPLOAD_MODE=service needs "
                                             "the project's service key (a secret key"), problems
    assert ANON_KEY not in json.dumps(problems)
    profile = "p-" + new_id()
    response = upload(worker, token, body(tx(put("profiles", profile, handle="h-" + new_id()))))
    assert (response.status_code, response.json()["code"]) == (500, "upload_not_configured"), response.text
    assert row(db, "profiles", profile) is None


@pytest.mark.parametrize("atomic", ["false", "true"])
def test_service_mode_owner_column_that_cannot_hold_user_ids_keeps_the_writes_queued(
        atomic, pg, base_vars, start_worker, db, user):
    # UPLOAD_OWNER_COLUMN naming a bigint column: the worker writes the sub there itself, so the
    # database's 22P02 is the configuration's to fix, not the user's data (was fatal).
    sub, token = user
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("create table if not exists public.org_notes (id text primary key, org_id bigint, body text);"
                     "grant select, insert, update, delete on public.org_notes to service_role")
    try:
        worker = start_worker({**base_vars, "UPLOAD_ATOMIC": atomic, "UPLOAD_MODE": "service",
                               "UPLOAD_TABLES": "org_notes", "UPLOAD_OWNER_COLUMN": "org_id"})
        note = "n-" + new_id()
        response = upload(worker, token, body(tx(put("org_notes", note, body="hello"), tid=1)))
        assert_retry_response(response)
        failure = response.json()["results"][0]["failed_operation"]
        assert (failure["code"], failure["index"]) == ("22P02", 0), failure
        assert "UPLOAD_OWNER_COLUMN" in failure["message"] and "the upload waits" in failure["message"], failure
        assert int(response.headers["Retry-After"]) >= 60
        assert db.execute("select count(*) from public.org_notes").fetchone()[0] == 0
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("drop table if exists public.org_notes")


def test_service_mode_refuses_anonymous_sign_ins(service_worker, db, standin, session_token):
    # The service key bypasses RLS and anyone can sign in anonymously with the public anon key:
    # unless UPLOAD_ALLOW_ANONYMOUS=true, such sessions write nothing (403; the client keeps its
    # queue, e.g. until the user links a permanent account: the sub stays the same).
    sub = new_id()
    profile = "p-" + new_id()
    payload = body(tx(put("profiles", profile, handle="h-" + new_id())))
    response = upload(service_worker, session_token(sub, is_anonymous=True), payload)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "anonymous_not_allowed"
    assert requests_made(standin) == 0
    assert row(db, "profiles", profile) is None
    signed_in = upload(service_worker, session_token(sub, is_anonymous=False), payload)
    assert statuses(signed_in) == ["success"], signed_in.text
    assert row(db, "profiles", profile)["user_id"] == sub


def test_service_mode_keeps_a_write_to_a_table_outside_the_allowlist_queued_and_refuses_its_own_tables(
    service_worker, db, standin, user
):
    # A table UPLOAD_TABLES lacks is the operator's to add (an app release ahead of the list):
    # the write waits, nothing sent. The bridge's own tables are refused for good.
    sub, token = user
    list_id = new_id()
    waits = upload(service_worker, token, body(tx(put("lists", list_id, name="n", owner_id=sub)), tx(put("todos", new_id()))))
    assert waits.status_code == 503, waits.text
    assert statuses(waits) == ["retryable_error", "not_attempted"]
    assert failure(waits, 0)["code"] == "table_not_in_upload_tables"
    assert "UPLOAD_TABLES" in failure(waits, 0)["message"]
    assert int(waits.headers["retry-after"]) >= 60
    refused = upload(service_worker, token, body(tx(put("powersync_dead_letters", "1", entry={}))))
    assert refused.status_code == 200, refused.text
    assert statuses(refused) == ["fatal_error"]
    assert failure(refused, 0)["code"] == "table_not_allowed"
    assert requests_made(standin) == 0
    assert count(db, "lists") == 0


# =========================================================================== data errors
def _duplicate_handle(db, sub, list_id):
    handle = "taken-" + new_id()
    insert_profile(db, "q-" + new_id(), sub, handle=handle)
    return put("profiles", "p-" + new_id(), user_id=sub, handle=handle)


DATA_ERRORS = {
    # name: (expected code, builder(db, sub, list_id) -> the failing entry)
    "unique_violation_23505": ("23505", _duplicate_handle),
    "foreign_key_violation_23503": ("23503", lambda db, sub, list_id: put(
        "todos", new_id(), description="orphan", list_id=new_id(), created_by=sub)),
    "check_violation_23514": ("23514", lambda db, sub, list_id: put(
        "todos", new_id(), description="urgent", list_id=list_id, created_by=sub, priority=9)),
    "not_null_violation_23502": ("23502", lambda db, sub, list_id: put(
        "todos", new_id(), list_id=list_id, created_by=sub)),
    "invalid_uuid_22P02": ("22P02", lambda db, sub, list_id: put(
        "todos", new_id(), description="bad", list_id="not-a-uuid", created_by=sub)),
}


@pytest.mark.parametrize("case", list(DATA_ERRORS))
def test_data_error_is_fatal_with_its_code_and_index_and_later_transactions_succeed(
        rls_worker, db, user, case):
    sub, token = user
    code, build = DATA_ERRORS[case]
    list_id = insert_list(db, sub, "existing")
    failing = build(db, sub, list_id)
    first, later = new_id(), new_id()
    response = upload(rls_worker, token, body(
        tx(put("lists", first, name="first", owner_id=sub), tid=1),
        tx(patch("lists", list_id, name="patched"), failing, tid=2),
        tx(put("lists", later, name="later", owner_id=sub), tid=3),
    ))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert statuses(response) == ["success", "fatal_error", "success"]
    assert [r["transaction_id"] for r in answer["results"]] == [1, 2, 3]
    f = failure(response, 1)
    assert f["code"] == code, f
    assert f["index"] == 1, f
    assert isinstance(f["message"], str) and f["message"], f
    assert "details" in f
    assert answer["applied"] == 2
    assert row(db, "lists", first) is not None
    assert row(db, "lists", later) is not None, "processing continues after a fatal error"
    assert row(db, failing["table"], failing["id"]) is None


def test_permanent_error_that_postgrest_answers_500_is_fatal_not_retried_for_ever(
        rls_worker, db, standin, user):
    # An index row too large (54000) is a property of the row: PostgREST answers 500, and
    # retrying would fail the same way for ever, blocking every later write of this user.
    sub, token = user
    huge_handle = os.urandom(12_000).hex()  # incompressible: the unique index cannot hold it
    profile, later = "p-" + new_id(), new_id()
    response = upload(rls_worker, token, body(
        tx(put("profiles", profile, user_id=sub, handle=huge_handle), tid=1),
        tx(put("lists", later, name="later", owner_id=sub), tid=2),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["fatal_error", "success"]
    f = failure(response, 0)
    assert (f["code"], f["index"], f["http_status"]) == ("54000", 0, 500), f
    assert row(db, "profiles", profile) is None
    assert row(db, "lists", later) is not None


@pytest.mark.parametrize("case", ["unknown_column", "unknown_table"])
def test_schema_drift_is_retryable_with_a_longer_retry_after(rls_worker, db, user, case,
                                                             postgrest_version):
    # An app release that writes a column (or table) before its migration ships: the operator
    # fixes the schema and the queued writes go through; discarding them would lose them.
    sub, token = user
    list_id, later = new_id(), new_id()
    drifting = (put("lists", list_id, name="n", owner_id=sub, added_in_v2=1)
                if case == "unknown_column" else put("lists_v2", list_id, name="n"))
    response = upload(rls_worker, token, body(
        tx(drifting, tid=1),
        tx(put("lists", later, name="later", owner_id=sub), tid=2),
    ))
    assert_retry_response(response)
    assert int(response.headers["Retry-After"]) >= 60
    assert statuses(response) == ["retryable_error", "not_attempted"]
    f = failure(response, 0)
    # PostgREST 12 (Supabase's) answers a write to an unknown table with a bare 404 {}, 13 with
    # PGRST205; an unknown column is PGRST204 on both
    assert f["code"] == ("PGRST204" if case == "unknown_column"
                         else "http_404" if postgrest_version == 12 else "PGRST205"), f
    assert response.json()["results"][0]["retry_after_ms"] >= 60_000
    assert count(db, "lists") == 0


def test_operator_dangerously_fatal_override_makes_a_schema_drift_code_fatal_and_dead_lettered(
        dead_letter_worker, db, user):
    # UPLOAD_ERROR_CLASS_OVERRIDES=PGRST204:dangerously_fatal,42703:dangerously_fatal on this worker
    sub, token = user
    list_id, later = new_id(), new_id()
    response = upload(dead_letter_worker, token, body(
        tx(put("lists", list_id, name="n", owner_id=sub, never_a_column=1), tid=1),
        tx(put("lists", later, name="later", owner_id=sub), tid=2),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["fatal_error", "success"]
    assert failure(response, 0)["code"] in ("PGRST204", "42703")
    letters = [r[0] for r in db.execute(f"select code from {DEAD_LETTERS}")]
    assert letters == [failure(response, 0)["code"]]
    assert row(db, "lists", list_id) is None and row(db, "lists", later) is not None


# =========================================================================== the response
def test_response_has_one_result_per_transaction_in_order(rls_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    response = upload(rls_worker, token, body(
        tx(put("lists", new_id(), name="a", owner_id=sub), tid=10),
        tx(put("todos", new_id(), description="p9", list_id=list_id, created_by=sub,
               priority=9), tid="second"),
        tx(),  # no entries: nothing to do
        tx(patch("lists", list_id, name="b")),
        tx(put("not a table", "x"), tid=5),
    ))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) >= {"results", "applied"}
    results = answer["results"]
    assert [r["status"] for r in results] == [
        "success", "fatal_error", "success", "success", "fatal_error"]
    assert [r["transaction_id"] for r in results] == [10, "second", None, None, 5]
    assert answer["applied"] == 3
    for r in results:
        assert r["status"] in {"success", "fatal_error", "retryable_error", "not_attempted"}
        if r["status"] == "success":
            assert "failed_operation" not in r
    f = results[1]["failed_operation"]
    assert set(f) >= {"index", "code", "message", "details"}
    assert (f["index"], f["code"]) == (0, "23514")
    assert results[4]["failed_operation"]["code"] == "invalid_table_name"
    assert results[4]["failed_operation"]["index"] == 0


def test_empty_upload_is_an_empty_success(rls_worker, db, standin, user):
    _, token = user
    response = upload(rls_worker, token, {"transactions": []})
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [] and response.json()["applied"] == 0
    for payload in ({"batch": []}, {"operations": []}):  # one transaction without entries
        response = upload(rls_worker, token, payload)
        assert response.status_code == 200, response.text
        assert response.json()["results"] == [{"status": "success", "transaction_id": None}]
    assert requests_made(standin) == 0


# =========================================================================== upstream failures
@pytest.mark.parametrize("status,upstream_retry_after,expected_retry_after", [
    (500, None, "5"),
    (503, None, "5"),
    (503, "30", "30"),
])
def test_upstream_5xx_is_retryable_and_later_transactions_not_attempted(
        rls_worker, db, standin, user, status, upstream_retry_after, expected_retry_after):
    sub, token = user
    l1, l2, l3 = new_id(), new_id(), new_id()
    payload = body(
        tx(put("lists", l1, name="one", owner_id=sub), tid=1),
        tx(put("todos", new_id(), description="two", list_id=l1, created_by=sub),
           patch("lists", l1, name="one patched"), tid=2),
        tx(put("lists", l2, name="three", owner_id=sub), tid=3),
        tx(put("lists", l3, name="four", owner_id=sub), tid=4),
    )
    fault = {"status": status, "path_prefix": "/rest/v1/todos"}
    if upstream_retry_after:
        fault["headers"] = {"Retry-After": upstream_retry_after}
    standin.add_fault(fault)
    response = upload(rls_worker, token, payload)
    assert_retry_response(response, expected_retry_after)
    assert statuses(response) == ["success", "retryable_error", "not_attempted", "not_attempted"]
    result = response.json()["results"][1]
    assert result["failed_operation"]["index"] == 0
    assert result["failed_operation"]["code"] == f"http_{status}", result
    assert result["retry_after_ms"] == int(expected_retry_after) * 1000
    assert response.json()["applied"] == 1
    # only what was reported applied is in the database
    assert row(db, "lists", l1)["name"] == "one"
    assert count(db, "todos") == 0
    assert row(db, "lists", l2) is None and row(db, "lists", l3) is None
    assert requests_made(standin) == 2

    # the client sends the rest again: it completes
    payload["transactions"] = payload["transactions"][1:]
    again = upload(rls_worker, token, payload)
    assert again.status_code == 200, again.text
    assert statuses(again) == ["success"] * 3
    assert row(db, "lists", l1)["name"] == "one patched"
    assert count(db, "todos") == 1 and count(db, "lists") == 3


@pytest.mark.parametrize("fault", [
    {"status": 401, "body": {"message": "Invalid API key"}},
    {"status": 404, "body": "<html>not found</html>"},
    {"status": 429, "body": "slow down"},
    {"status": 402, "body": {"message": "Service for this project is restricted due to "
                                        "exceeding usage quota"}},
    {"status": 500, "body": {"code": "40001", "message": "could not serialize access",
                             "details": None, "hint": None}},
    {"status": 503, "body": {"code": "PGRST001", "message": "Database client error",
                             "details": None, "hint": None}},
], ids=["gateway-401", "gateway-404", "429", "restricted-project-402", "serialization-40001",
        "db-unreachable-PGRST001"])
def test_transient_upstream_errors_are_retryable_not_fatal(rls_worker, db, standin, user, fault):
    # a fatal answer here would make the client discard data that retrying would have saved
    sub, token = user
    list_id = new_id()
    standin.add_fault(fault)
    response = upload(rls_worker, token, body(tx(put("lists", list_id, name="n", owner_id=sub))))
    assert_retry_response(response)
    assert statuses(response) == ["retryable_error"], response.text
    assert row(db, "lists", list_id) is None
    again = upload(rls_worker, token, body(tx(put("lists", list_id, name="n", owner_id=sub))))
    assert statuses(again) == ["success"]
    assert row(db, "lists", list_id) is not None


def test_session_the_database_refuses_as_expired_is_retryable(base_vars, start_worker, db, session_token,
                                                               postgrest_version):
    # A worker allowing more clock skew (SUPABASE_JWT_LEEWAY_SECONDS=120) than PostgREST (30 s):
    # the token expired 60 s ago passes the worker and PostgREST answers 401 PGRST301 "JWT
    # expired" (12) or PGRST303 (13). The client refreshes its session and retries; discarding
    # the writes would lose them.
    worker = start_worker({**base_vars, "UPLOAD_ATOMIC": "false", "SUPABASE_JWT_LEEWAY_SECONDS": "120"})
    sub = new_id()
    now = int(time.time())
    token = session_token(sub, iat=now - 3600, exp=now - 60)
    list_id = new_id()
    response = upload(worker, token, body(tx(put("lists", list_id, name="n", owner_id=sub)),
                                          tx(put("lists", new_id(), name="m", owner_id=sub))))
    assert_retry_response(response)
    assert statuses(response) == ["retryable_error", "not_attempted"], response.text
    assert failure(response, 0)["code"] == ("PGRST303" if postgrest_version == 13 else "PGRST301")
    assert count(db, "lists") == 0


def test_long_id_lists_are_split_into_urls_below_8_kib(rls_worker, db, standin, user):
    sub, token = user
    list_id = insert_list(db, sub)
    todos = [insert_todo(db, sub, list_id, "t") for _ in range(600)]
    kept = insert_todo(db, sub, list_id, "kept")
    response = upload(rls_worker, token, body(
        tx(*[patch("todos", t, completed=1) for t in todos]),
        tx(*[delete("todos", t) for t in todos[:400]]),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success", "success"]
    log = standin.requests_log()
    assert len(log) >= 4, "600 uuids do not fit one URL"
    for e in log:
        assert len(f"{standin.url}{e['path']}?{e['query']}") <= 8000, len(e["query"])
    assert count(db, "todos") == 201
    remaining = db.execute("select bool_and(completed) from todos where id <> %s",
                           (kept,)).fetchone()[0]
    assert remaining is True
    assert row(db, "todos", kept)["completed"] is False


def test_upstream_timeout_is_retryable(rls_worker, db, standin, user):
    sub, token = user
    l1, l2, t1 = new_id(), new_id(), new_id()
    payload = body(
        tx(put("lists", l1, name="one", owner_id=sub), tid=1),
        tx(put("todos", t1, description="slow", list_id=l1, created_by=sub), tid=2),
        tx(put("lists", l2, name="three", owner_id=sub), tid=3),
    )
    # UPSTREAM_TIMEOUT_MS = 3000
    standin.add_fault({"delay_ms": 4500, "path_prefix": "/rest/v1/todos"})
    started = time.time()
    response = upload(rls_worker, token, payload)
    elapsed = time.time() - started
    assert_retry_response(response)
    assert statuses(response) == ["success", "retryable_error", "not_attempted"]
    assert response.json()["results"][1]["failed_operation"]["code"] == "timeout"
    assert 2.5 <= elapsed < 4.5, elapsed  # the worker gave up before the answer came
    assert row(db, "lists", l1) is not None
    assert row(db, "lists", l2) is None
    # the slow request may still be applied after the worker gave up: that is why it is
    # retryable; wait for it so it cannot land in another test, then retry
    assert wait_until_standin_idle(standin)
    payload["transactions"] = payload["transactions"][1:]
    again = upload(rls_worker, token, payload)
    assert again.status_code == 200, again.text
    assert statuses(again) == ["success", "success"]
    assert count(db, "todos") == 1 and count(db, "lists") == 2


def test_refused_connection_is_retryable(refused_worker, db, standin, session_token):
    sub = new_id()
    token = session_token(sub, iss=f"{refused_worker.vars['SUPABASE_URL']}/auth/v1")
    response = upload(refused_worker, token, body(
        tx(put("lists", new_id(), name="a", owner_id=sub), tid=1),
        tx(put("lists", new_id(), name="b", owner_id=sub), tid=2),
    ), headers={"Origin": "https://app.example"})
    assert_retry_response(response)
    # a browser client can read Retry-After
    assert response.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example")
    assert "retry-after" in response.headers.get("Access-Control-Expose-Headers", "").lower()
    assert statuses(response) == ["retryable_error", "not_attempted"]
    f = failure(response, 0)
    assert f["code"] == "network_error", f
    assert response.json()["applied"] == 0
    assert count(db, "lists") == 0


def test_write_whose_answer_was_lost_is_retryable_and_resending_it_is_harmless(
        rls_worker, db, standin, user):
    sub, token = user
    l1, l2, t1 = new_id(), new_id(), new_id()
    payload = body(
        tx(put("lists", l1, name="one", owner_id=sub), tid=1),
        tx(put("todos", t1, description="committed", list_id=l1, created_by=sub, priority=1),
           tid=2),
        tx(put("lists", l2, name="three", owner_id=sub), tid=3),
    )
    # the stand-in commits the insert, then drops the connection without answering, twice: the
    # request is sent again at once after the first loss (idempotent), the second makes it
    # retryable
    standin.add_fault({"drop_after": True, "path_prefix": "/rest/v1/todos", "count": 2})
    response = upload(rls_worker, token, payload)
    assert_retry_response(response)
    assert response.json()["subrequests"] == 3, "list, todo, todo again"
    assert statuses(response) == ["success", "retryable_error", "not_attempted"]
    assert failure(response, 1)["code"] in ("network_error", "timeout")
    assert row(db, "todos", t1)["description"] == "committed", "the write was applied"
    assert row(db, "lists", l2) is None
    state = snapshot(db)

    again = upload(rls_worker, token, payload)  # the client sends everything again
    assert again.status_code == 200, again.text
    assert statuses(again) == ["success"] * 3
    after = snapshot(db)
    assert after["todos"] == state["todos"]
    assert set(after["lists"]) == {l1, l2}

    # one lost answer alone: the write is sent again at once and the upload succeeds
    standin.add_fault({"drop_after": True, "path_prefix": "/rest/v1/todos"})
    once = upload(rls_worker, token, payload)
    assert once.status_code == 200, once.text
    assert once.json()["subrequests"] == 4
    assert snapshot(db) == after


@pytest.mark.parametrize("mode", ["http1.0", "keep-alive-timeout"])
def test_uploads_to_an_upstream_that_closes_every_connection_succeed_at_the_first_try(
        rls_worker, db, standin, user, mode):
    # Hole 8: an HTTP/1.0 upstream (or a proxy past its keep-alive timeout) closes each
    # connection after its answer; workerd reuses the closed connection and the next request
    # fails with "Network connection lost". Every request is idempotent, so one that got no
    # answer at all is sent again at once; before that, this upload never succeeded at once.
    sub, token = user
    lists = [insert_list(db, sub, name="start") for _ in range(12)]
    standin.configure(close_connections=mode)
    failed = []
    for attempt in range(8):
        # 3 transactions of 4 PATCHes with distinct data: 12 requests, none merged
        payload = body(*(tx(*(patch("lists", lists[t * 4 + i], name=f"{attempt}-{t}-{i}")
                              for i in range(4)), tid=attempt * 10 + t) for t in range(3)))
        before = requests_made(standin)
        response = upload(rls_worker, token, payload)
        if response.status_code != 200:
            failed.append(f"upload {attempt + 1}: {response.text}")
            continue
        assert statuses(response) == ["success"] * 3
        assert requests_made(standin) - before >= 12
        assert [row(db, "lists", lists[n])["name"] for n in range(12)] == \
            [f"{attempt}-{n // 4}-{n % 4}" for n in range(12)]
    assert not failed, f"{len(failed)} of 8 uploads failed:\n" + "\n".join(failed)
    time.sleep(0.5)  # the last log line
    logged = [(line.get("upload") or {}) for line in upload_log_lines(rls_worker)[-8:]]
    print(f"8 uploads of 12 requests, upstream closing connections ({mode}); re-sent per upload:",
          [u.get("resent") for u in logged], "subrequests:", [u.get("subrequests") for u in logged])


# =========================================================================== subrequest budget
def test_subrequest_budget_is_respected_and_the_remainder_completes_on_resend(
        budget_worker, db, standin, user):
    sub, token = user
    home = insert_list(db, sub, "home")
    todos = [insert_todo(db, sub, home, f"t{i}") for i in range(6)]
    new_lists = [new_id() for _ in range(6)]
    # alternating PUT lists / DELETE todos: one request each, nothing merges
    transactions = []
    for i in range(6):
        transactions.append(tx(put("lists", new_lists[i], name=f"l{i}", owner_id=sub),
                               tid=2 * i))
        transactions.append(tx(delete("todos", todos[i]), tid=2 * i + 1))

    remaining, rounds = transactions, 0
    while remaining:
        rounds += 1
        assert rounds <= 3, "12 one-request transactions need 3 uploads with a budget of 5"
        before = requests_made(standin)
        response = upload(budget_worker, token, body(*remaining))
        made = requests_made(standin) - before
        assert made <= 5, f"{made} PostgREST requests for a budget of 5"
        st = statuses(response)
        done = st.count("success")
        assert st == ["success"] * done + ["not_attempted"] * (len(remaining) - done), st
        assert done == min(5, len(remaining))
        assert response.json()["subrequests"] == made
        if done < len(remaining):
            assert_retry_response(response)
        else:
            assert response.status_code == 200, response.text
        assert [r["transaction_id"] for r in response.json()["results"]] == \
            [t["transaction_id"] for t in remaining]
        remaining = remaining[done:]
    assert rounds == 3
    assert all(row(db, "lists", l) is not None for l in new_lists)
    assert all(row(db, "todos", t) is None for t in todos)


def _too_big_for_five(db, sub):
    """A transaction of 6 PATCHes with different data: 6 requests, over a budget of 5."""
    list_id = insert_list(db, sub)
    todos = [insert_todo(db, sub, list_id, f"t{i}") for i in range(6)]
    return todos, tx(*[patch("todos", t, priority=i % 6) for i, t in enumerate(todos)], tid="big")


def test_transaction_too_big_for_the_budget_is_applied_through_the_atomic_function(
        budget_worker, db, standin, user):
    sub, token = user
    todos, big = _too_big_for_five(db, sub)
    response = upload(budget_worker, token, body(big))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"]
    assert [e["path"] for e in standin.requests_log()] == [RPC_PATH]
    assert [row(db, "todos", t)["priority"] for t in todos] == [0, 1, 2, 3, 4, 5]


def test_transaction_too_big_for_the_budget_without_the_atomic_function_waits_for_it_naming_it(
        budget_worker, db, standin, user):
    """Installing the function is the operator's to do: the transaction stays queued (Retry-After
    of a migration), never discarded, and applies once it is installed."""
    sub, token = user
    todos, big = _too_big_for_five(db, sub)
    db.execute("alter function public.powersync_apply_transaction(jsonb, text, text, text, text, boolean) "
               "rename to powersync_apply_transaction_away")
    try:
        response = upload(budget_worker, token, body(big))
    finally:
        db.execute("alter function public.powersync_apply_transaction_away(jsonb, text, text, text, text, boolean) "
                   "rename to powersync_apply_transaction")
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 60, response.headers
    assert statuses(response) == ["retryable_error"]
    f = failure(response, 0)
    assert (f["code"], f["index"]) == ("too_many_requests_for_budget", None), f
    assert "atomic mode" in f["message"], f
    assert all(row(db, "todos", t)["priority"] is None for t in todos)
    response = upload(budget_worker, token, body(big))
    assert statuses(response) == ["success"], response.text
    assert [row(db, "todos", t)["priority"] for t in todos] == [0, 1, 2, 3, 4, 5]


def test_thousand_puts_with_identical_columns_are_one_request(budget_worker, db, standin, user):
    sub, token = user
    ids = [new_id() for _ in range(1000)]
    response = upload(budget_worker, token, body(
        tx(*[put("lists", i, name=f"list {n}", owner_id=sub) for n, i in enumerate(ids)])))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"]
    assert requests_made(standin) == 1
    assert response.json()["subrequests"] == 1
    assert count(db, "lists") == 1000
    assert row(db, "lists", ids[999])["name"] == "list 999"


# =========================================================================== atomic mode
def test_atomic_transaction_is_rolled_back_when_its_third_op_fails(atomic_worker, db, standin,
                                                                   user):
    sub, token = user
    list_id, t1, t2, later = new_id(), new_id(), new_id(), new_id()
    response = upload(atomic_worker, token, body(
        tx(put("lists", list_id, name="l", owner_id=sub),
           put("todos", t1, description="ok", list_id=list_id, created_by=sub),
           put("todos", t2, description="bad", list_id=list_id, created_by=sub, priority=9),
           tid="all-or-nothing"),
        tx(put("lists", later, name="later", owner_id=sub), tid="later"),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["fatal_error", "success"]
    f = failure(response, 0)
    assert (f["code"], f["index"]) == ("23514", 2), f
    assert row(db, "lists", list_id) is None
    assert row(db, "todos", t1) is None
    assert row(db, "todos", t2) is None
    assert row(db, "lists", later) is not None
    assert requests_made(standin) == 2


@pytest.mark.parametrize("mode", ["rest", "atomic"])
def test_writes_that_leave_out_a_not_null_domain_column_apply(mode, rls_worker, atomic_worker, db, user):
    # Only the columns an op gives are typed (as PostgREST does): the atomic function read every
    # absent column as a NULL of its type, so a NOT NULL domain refused (23502) every DELETE,
    # every PATCH of other columns and every PUT leaving it to its default: all dead-lettered.
    worker = {"rest": rls_worker, "atomic": atomic_worker}[mode]
    sub, token = user
    db.execute("create domain public.handle_text as text not null")
    db.execute("create table public.handles (id uuid primary key, note text,"
               " handle public.handle_text default 'anon', owner_id uuid not null default auth.uid())")
    db.execute("alter table public.handles enable row level security")
    db.execute("create policy handles_own on public.handles for all to authenticated"
               " using (owner_id = auth.uid()) with check (owner_id = auth.uid())")
    db.execute("grant select, insert, update, delete on public.handles to authenticated")
    try:
        a, b, c = new_id(), new_id(), new_id()
        response = upload(worker, token, body(
            tx(put("handles", a, note="a"), put("handles", b, note="b"), put("handles", c, note="c", handle="cc"),
               tid="puts"),
            tx(patch("handles", a, note="a2"), delete("handles", b), tid="patch-delete")))
        assert statuses(response) == ["success", "success"], response.text
        rows = {r[0]: r[1:] for r in db.execute("select id::text, note, handle from public.handles").fetchall()}
        assert rows == {a: ("a2", "anon"), c: ("c", "cc")}, rows
        # a null the client sends is still refused, as PostgREST would
        response = upload(worker, token, body(tx(put("handles", new_id(), note="n", handle=None))))
        assert statuses(response) == ["fatal_error"], response.text
        assert failure(response, 0)["code"] == "23502"
    finally:
        db.execute("drop table public.handles")
        db.execute("drop domain public.handle_text")


def test_atomic_function_types_values_in_the_tables_column_order_and_collation(atomic_worker, db, user):
    # The first bad value of a row is reported in the table's column order, as before the typing
    # change; ids keep their column's collation, so two spellings of one id under a
    # case-insensitive collation are one row (the second DELETE is unchanged, not applied).
    sub, token = user
    db.execute("create collation if not exists public.ci (provider = icu, locale = 'und-u-ks-level2',"
               " deterministic = false)")
    db.execute("create table public.typed (id text collate public.ci primary key, b_short varchar(5), a_flag boolean)")
    db.execute("grant select, insert, update, delete on public.typed to authenticated")
    try:
        response = upload(atomic_worker, token, body(tx(put("typed", "row-1", a_flag="maybe", b_short="too long"))))
        assert statuses(response) == ["fatal_error"], response.text
        assert failure(response, 0)["code"] == "22001", "b_short comes first in the table: " + response.text
        db.execute("insert into public.typed (id) values ('ABC')")
        response = upload(atomic_worker, token, body(tx(delete("typed", "ABC"), delete("typed", "abc"))))
        assert statuses(response) == ["success"], response.text
        assert response.json()["results"][0].get("unchanged") == [1], response.text
        assert db.execute("select count(*) from public.typed").fetchone() == (0,)
    finally:
        db.execute("drop table public.typed")


@pytest.mark.parametrize("mode", ["rest", "atomic"])
def test_refusal_of_one_row_of_a_merged_write_names_that_entry(mode, rls_worker, atomic_worker, db, user):
    # PUTs with the same columns are one upsert, DELETEs of one table one delete (one statement
    # each, refused whole): the failure names the entry that causes it, not the group's first.
    # REST applies the entries before it, atomic mode none.
    sub, token = user
    worker = atomic_worker if mode == "atomic" else rls_worker
    list_id = insert_list(db, sub)
    todos = [new_id() for _ in range(4)]
    response = upload(worker, token, body(tx(
        *[put("todos", t, description=f"t{n}", list_id=list_id, created_by=sub, priority=9 if n == 2 else n)
          for n, t in enumerate(todos)], tid="puts")))
    assert statuses(response) == ["fatal_error"], response.text
    assert (failure(response, 0)["code"], failure(response, 0)["index"]) == ("23514", 2), response.text
    expected = [True, True, False, False] if mode == "rest" else [False] * 4
    assert [row(db, "todos", t) is not None for t in todos] == expected

    lists = [insert_list(db, sub) for _ in range(2)]
    response = upload(worker, token, body(tx(
        delete("lists", lists[0]), delete("lists", lists[1]), delete("lists", "not-a-uuid"), tid="deletes")))
    assert statuses(response) == ["fatal_error"], response.text
    assert (failure(response, 0)["code"], failure(response, 0)["index"]) == ("22P02", 2), response.text
    expected = [False, False] if mode == "rest" else [True, True]
    assert [row(db, "lists", i) is not None for i in lists] == expected


@pytest.mark.parametrize("mode", ["rest", "atomic"])
def test_a_second_delete_of_one_row_in_a_transaction_is_reported_unchanged(mode, rls_worker, atomic_worker, db,
                                                                          user):
    sub, token = user
    worker = atomic_worker if mode == "atomic" else rls_worker
    doomed, other = insert_list(db, sub), insert_list(db, sub)
    response = upload(worker, token, body(tx(delete("lists", doomed), delete("lists", other),
                                             delete("lists", other.upper()), delete("lists", doomed), tid="twice")))
    assert response.json()["results"] == [{"status": "success", "transaction_id": "twice", "unchanged": [2, 3]}], \
        response.text
    assert row(db, "lists", doomed) is None and row(db, "lists", other) is None


def test_atomic_transaction_is_one_rpc_request(atomic_worker, db, standin, user):
    sub, token = user
    old_list = insert_list(db, sub, "old")
    old_todo = insert_todo(db, sub, old_list, "old")
    list_id, t1, t2 = new_id(), new_id(), new_id()
    response = upload(atomic_worker, token, body(tx(
        put("lists", list_id, name="l", owner_id=sub),
        put("todos", t1, description="one", list_id=list_id, created_by=sub),
        put("todos", t2, description="two", list_id=list_id, created_by=sub, priority=5),
        patch("todos", t1, description="one!", completed=True),
        delete("todos", old_todo),
        patch("lists", old_list, name="renamed"),
    )))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success"]
    assert requests_made(standin) == 1
    assert [e["path"] for e in standin.requests_log()] == [RPC_PATH]
    assert row(db, "lists", list_id)["name"] == "l"
    assert (row(db, "todos", t1)["description"], row(db, "todos", t1)["completed"]) == \
        ("one!", True)
    assert row(db, "todos", t2)["priority"] == 5
    assert row(db, "todos", old_todo) is None
    assert row(db, "lists", old_list)["name"] == "renamed"


def test_atomic_function_pins_its_search_path_so_public_objects_cannot_shadow_built_ins(
        atomic_worker, pg, db, user):
    # Anyone who can create functions in public could otherwise slip in a better match for a
    # built-in the function calls (format(text, text) beats pg_catalog's variadic format) and
    # have it run with the caller's rights on every upload.
    config = db.execute("select proconfig from pg_proc where oid = "
                        "'public.powersync_apply_transaction(jsonb,text,text,text,text,boolean)'::regprocedure"
                        ).fetchone()[0]
    assert config == ["search_path=pg_catalog, pg_temp"]
    sub, token = user
    db.execute("create table public.shadow_calls (arg text)")
    db.execute("grant insert on public.shadow_calls to authenticated, service_role")
    db.execute("create function public.format(f text, a text) returns text language plpgsql as "
               "$$ begin insert into public.shadow_calls values (a); "
               "return pg_catalog.format(f, a); end $$")
    try:
        l1, l2 = new_id(), new_id()
        response = upload(atomic_worker, token, body(tx(put("lists", l1, name="a", owner_id=sub),
                                                        put("lists", l2, name="b", owner_id=sub))))
        assert statuses(response) == ["success"], response.text
        assert row(db, "lists", l2)["name"] == "b"
        assert db.execute("select count(*) from public.shadow_calls").fetchone() == (0,), \
            "a function in public ran inside the atomic upload"
    finally:
        db.execute("drop function public.format(text, text)")
        db.execute("drop table public.shadow_calls")


def test_ambiguous_atomic_function_overload_is_retryable_until_the_operator_drops_it(
        atomic_worker, db, user):
    # A second powersync_apply_transaction the same call could mean (PGRST203) is a setup
    # mistake, like a missing function (PGRST202): the writes wait until it is fixed.
    sub, token = user
    list_id = new_id()
    payload = body(tx(put("lists", list_id, name="l", owner_id=sub), tid=1))
    db.execute("create function public.powersync_apply_transaction(ops jsonb, dry_run boolean "
               "default false) returns jsonb language sql as $$ select '{}'::jsonb $$")
    try:
        response = upload(atomic_worker, token, payload)
        assert_retry_response(response)
        assert statuses(response) == ["retryable_error"], response.text
        assert failure(response, 0)["code"] == "PGRST203"
        assert row(db, "lists", list_id) is None
    finally:
        db.execute("drop function public.powersync_apply_transaction(jsonb, boolean)")
    again = upload(atomic_worker, token, payload)
    assert statuses(again) == ["success"], again.text
    assert row(db, "lists", list_id)["name"] == "l"


# =========================================================================== exactly once
CLIENT = "0f6a2c4e-1b7d-4e8a-9c3f-5d2e8a7b6c10"


def ledger_rows(db, sub: str) -> list[tuple]:
    return db.execute(f"select client_id, transaction_id from public.{LEDGER} where user_id = %s"
                      " order by transaction_id", (sub,)).fetchall()


def rpc_calls(standin) -> list[int | None]:
    """The status of each call of the atomic function the stand-in saw, in order."""
    wait_until_standin_idle(standin)
    return [e["status"] for e in standin.requests_log() if e["path"] == RPC_PATH]


def test_resent_transaction_with_dependent_entries_is_applied_once_and_answered_already_applied(
        atomic_worker, db, standin, user):
    # The known gap's two patterns: a todo put into a list the same transaction then deletes
    # (on delete cascade), and a PATCH of a row a later PUT creates (the re-sent PATCH would hit
    # the row and fail its check). Without exactly-once, the re-send after a lost answer fails.
    sub, token = user
    list_id = insert_list(db, sub, "doomed")
    todo, later = new_id(), new_id()
    payload = {"client_id": CLIENT, **body(
        tx(put("todos", todo, description="t", list_id=list_id, created_by=sub),
           delete("lists", list_id), tid=41),
        tx(patch("todos", later, priority=9),
           put("todos", later, description="new", list_id=insert_list(db, sub), created_by=sub),
           tid=42))}
    first = upload(atomic_worker, token, payload)
    assert first.status_code == 200, first.text
    # the PATCH ran before the PUT that creates its row: it changed nothing, and says so
    assert first.json()["results"] == [{"status": "success", "transaction_id": 41},
                                       {"status": "success", "transaction_id": 42, "unchanged": [0]}]
    state = snapshot(db)
    assert row(db, "lists", list_id) is None and row(db, "todos", todo) is None
    assert row(db, "todos", later)["description"] == "new"
    assert ledger_rows(db, sub) == [(CLIENT, "41"), (CLIENT, "42")]

    again = upload(atomic_worker, token, payload)  # the answer was lost: the client re-sends
    assert again.status_code == 200, again.text
    # what changed no row the first time is reported again: the ledger kept it
    assert again.json()["results"] == [
        {"status": "success", "transaction_id": 41, "already_applied": True},
        {"status": "success", "transaction_id": 42, "already_applied": True, "unchanged": [0]}]
    assert again.json()["applied"] == 2
    assert snapshot(db) == state, "nothing applied twice"
    assert rpc_calls(standin) == [200, 200, 200, 200]


def test_answer_lost_after_commit_is_resent_at_once_and_answered_from_the_ledger(
        atomic_worker, db, standin, user):
    sub, token = user
    list_id = insert_list(db, sub, "doomed")
    todo = new_id()
    payload = {"client_id": CLIENT, **body(
        tx(put("todos", todo, description="t", list_id=list_id, created_by=sub),
           delete("lists", list_id), tid=7))}
    # the stand-in commits the call, then drops the connection without answering: the worker
    # sends it again at once, and the function answers from its ledger
    standin.add_fault({"drop_after": True, "path_prefix": RPC_PATH})
    response = upload(atomic_worker, token, payload)
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [
        {"status": "success", "transaction_id": 7, "already_applied": True}]
    assert response.json()["subrequests"] == 2
    assert row(db, "lists", list_id) is None and row(db, "todos", todo) is None
    assert ledger_rows(db, sub) == [(CLIENT, "7")]


def test_upload_without_client_id_or_transaction_id_is_applied_as_before_without_a_record(
        atomic_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub, "doomed")
    todo = new_id()
    dependent = tx(put("todos", todo, description="t", list_id=list_id, created_by=sub),
                   delete("lists", list_id), tid=9)
    assert statuses(upload(atomic_worker, token, body(dependent))) == ["success"]
    # the known gap, without a client id: the re-send fails at the PUT (its list is gone)
    again = upload(atomic_worker, token, body(dependent))
    assert statuses(again) == ["fatal_error"], again.text
    assert (failure(again, 0)["code"], failure(again, 0)["index"]) == ("23503", 0)
    # a client id but no transaction id: nothing to key a record on
    nameless = {"client_id": CLIENT, **body(tx(put("lists", new_id(), name="n", owner_id=sub)))}
    assert statuses(upload(atomic_worker, token, nameless)) == ["success"]
    assert ledger_rows(db, sub) == []


def test_reused_transaction_id_with_other_entries_is_applied_not_skipped(atomic_worker, db, user):
    # A client whose local database was reset may send new transactions under old ids: the
    # ledger's digest of the entries tells them apart.
    sub, token = user
    a, b = new_id(), new_id()
    first = {"client_id": CLIENT, **body(tx(put("lists", a, name="a", owner_id=sub), tid=1))}
    other = {"client_id": CLIENT, **body(tx(put("lists", b, name="b", owner_id=sub), tid=1))}
    assert statuses(upload(atomic_worker, token, first)) == ["success"]
    response = upload(atomic_worker, token, other)
    assert response.json()["results"] == [{"status": "success", "transaction_id": 1}]
    assert row(db, "lists", b)["name"] == "b"
    assert ledger_rows(db, sub) == [(CLIENT, "1")]


def test_ledger_is_per_user_and_out_of_reach_of_api_users(atomic_worker, db, standin, user,
                                                          other_user):
    # the same client id and transaction id from another user is another transaction
    sub, token = user
    other_sub, other_token = other_user
    mine, theirs = new_id(), new_id()
    assert statuses(upload(atomic_worker, token, {"client_id": CLIENT, **body(
        tx(put("lists", mine, name="m", owner_id=sub), tid=5))})) == ["success"]
    response = upload(atomic_worker, other_token, {"client_id": CLIENT, **body(
        tx(put("lists", theirs, name="t", owner_id=other_sub), tid=5))})
    assert response.json()["results"] == [{"status": "success", "transaction_id": 5}]
    assert row(db, "lists", theirs) is not None
    # the table itself: no privileges for API roles (RLS on, no policies)
    read = requests.get(f"{standin.url}/rest/v1/{LEDGER}?select=*",
                        headers={"apikey": ANON_KEY, "Authorization": f"Bearer {token}"}, timeout=10)
    assert read.status_code in (401, 403), read.text
    assert read.json()["code"] == "42501"


def test_ledger_records_the_session_user_not_an_owner_id_a_caller_passes(db, pg, user, other_user):
    # Called directly with a user's JWT claims (as PostgREST sets them), owner_id cannot choose
    # whose ledger is written: a user cannot mark another user's transactions applied.
    sub, _ = user
    victim, _ = other_user
    with api_session(pg, sub) as conn:
        conn.execute("select public.powersync_upload_ledger_claim('c', '1', %s, %s)", ("d" * 64, victim))
    assert db.execute(f"select user_id from public.{LEDGER}").fetchall() == [(sub,)]


def test_ledger_keys_a_service_caller_by_the_owner_id_even_when_its_key_carries_a_sub(db, pg, user,
                                                                                      other_user):
    # A service key minted with a `sub` of its own would otherwise put every user in one ledger:
    # another user's transaction with the same ids and ops would be answered already applied.
    first, _ = user
    second, _ = other_user
    claims = json.dumps({"sub": "the-service", "role": "service_role"})
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("set local role service_role")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (claims,))
        applied = [conn.execute("select public.powersync_upload_ledger_claim('c', '1', %s, %s)",
                                ("d" * 64, owner)).fetchone()[0] for owner in (first, second)]
    assert applied == [False, False]
    assert sorted(db.execute(f"select user_id from public.{LEDGER}").fetchall()) == sorted([(first,), (second,)])


def test_without_dead_letters_a_rejected_transaction_is_never_applied_later(atomic_worker, db, user):
    """The client discards a transaction reported fatal. A call of it that reaches the database
    later (an attempt the worker gave up on), or its re-send after a lost answer, must not apply
    it once its cause is gone: it could undo what the client wrote since. Without a dead-letter
    table the worker records the rejection in the ledger (powersync_upload_ledger_reject)."""
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = {"client_id": CLIENT, **body(
        tx(put("todos", todo, description="d", list_id=missing, created_by=sub), tid=31))}
    first = upload(atomic_worker, token, payload)
    assert statuses(first) == ["fatal_error"] and failure(first, 0)["code"] == "23503", first.text
    assert first.json()["subrequests"] == 2, "the atomic call and the ledger's record"
    insert_list(db, sub, list_id=missing)  # the cause is gone: the same call would now apply
    again = upload(atomic_worker, token, payload)
    assert statuses(again) == ["fatal_error"], again.text
    assert failure(again, 0) == failure(first, 0), "answered as it was reported"
    assert again.json()["subrequests"] == 1, "the atomic call alone: the ledger holds the rejection"
    assert row(db, "todos", todo) is None
    (dead_letter_id,) = db.execute(f"select dead_letter_id from public.{LEDGER} where user_id = %s"
                                   " and transaction_id = '31'", (sub,)).fetchone()
    assert dead_letter_id == 0


def test_without_dead_letters_a_resent_conflict_is_answered_as_the_same_conflict(atomic_conflicts_worker, db, user):
    """A conflict re-sent after its answer was lost (or a late call of it) is answered from the
    ledger. Without a dead-letter table the ledger keeps the failure as reported, so the answer
    is the same conflict at the same entry, which the connector passes to onConflict; before, it
    was a `fatal_error` `dead_lettered` without an index."""
    sub, token = user
    list_id = insert_list(db, sub, "server")
    payload = {"client_id": CLIENT, **body(tx(
        put("lists", new_id(), name="other", owner_id=sub),
        {**patch("lists", list_id, name="mine"), "previous_values": {"name": "local"}}, tid=41))}
    first = upload(atomic_conflicts_worker, token, payload)
    assert statuses(first) == ["conflict"], first.text
    assert (failure(first, 0)["index"], failure(first, 0)["code"]) == (1, "conflict")
    again = upload(atomic_conflicts_worker, token, payload)
    assert again.json()["results"] == first.json()["results"], again.text
    assert again.json()["subrequests"] == 1, "the atomic call alone: the ledger holds the rejection"
    assert row(db, "lists", list_id)["name"] == "server"


def test_a_user_may_only_reject_their_own_transactions_and_only_with_an_entries_digest(db, pg, user, other_user):
    sub, _ = user
    victim, _ = other_user
    digest = json.dumps({"x-powersync-entries-digest": "a" * 32})
    with api_session(pg, sub) as conn:
        conn.execute("savepoint s")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("select public.powersync_upload_ledger_reject('c', '1', %s)", (victim,))
        conn.execute("rollback to savepoint s")
        conn.execute("select set_config('request.headers', %s, true)", (digest,))
        conn.execute("select public.powersync_upload_ledger_reject('c', '1', %s)", (victim,))
    assert db.execute(f"select user_id, dead_letter_id from public.{LEDGER}").fetchall() == [(sub, 0)]


def test_a_rejection_a_user_keeps_through_rpc_is_a_bounded_object_and_cannot_claim_rest_writes(db, pg, user):
    """p_rejection is what a later call of the user's own transaction is answered with: an object
    of at most 8192 bytes, and never the ledger's own facts (the letter's id, whether an attempt
    went through REST)."""
    sub, _ = user
    digest = json.dumps({"x-powersync-entries-digest": "a" * 32})
    with api_session(pg, sub) as conn:
        conn.execute("select set_config('request.headers', %s, true)", (digest,))
        for bad in ('"text"', "[1]", json.dumps({"message": "x" * 8200})):
            conn.execute("savepoint s")
            with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_rejection must be a JSON object"):
                conn.execute("select public.powersync_upload_ledger_reject('c', '1', null, %s::jsonb)", (bad,))
            conn.execute("rollback to savepoint s")
        kept = {"index": 0, "code": "23514", "message": "m", "id": 5, "applied_via": "rest"}
        assert conn.execute("select public.powersync_upload_ledger_reject('c', '1', null, %s::jsonb)",
                            (json.dumps(kept),)).fetchone()[0]
        answer = conn.execute("select public.powersync_upload_ledger_dead_letter('c', '1')").fetchone()[0]
    assert answer == {"id": 0, "index": 0, "code": "23514", "message": "m"}


def test_a_user_rejecting_through_rpc_stays_within_their_ledger_cap(db, pg, user):
    """powersync_upload_ledger_reject is open to users through /rpc: like the claim, it keeps each
    user's records within max_records_per_user."""
    sub, _ = user
    try:
        db.execute(f"update public.{LEDGER}_settings set max_records_per_user = 10")  # clamped to 1,000
        with api_session(pg, sub, "a" * 32) as conn:
            answers = conn.execute("select public.powersync_upload_ledger_reject('c', g::text)"
                                   " from generate_series(1, 1500) as g").fetchall()
        assert {a for (a,) in answers} == {True}
        held = db.execute(f"select count(*) from public.{LEDGER} where user_id = %s", (sub,)).fetchone()[0]
        assert held <= 1000, held
    finally:
        db.execute(f"update public.{LEDGER}_settings set max_records_per_user = 10000")


def test_a_ledger_record_another_calls_pruning_deletes_meanwhile_is_made_again(db, pg, user, other_user):
    """Y, a re-send of an expired transaction, finds its record while X, another user's call,
    prunes it before Y has locked it: Y must still leave a record, or every later call of that
    transaction would be applied again."""
    sub, _ = user
    other, _ = other_user
    digest = "d" * 64
    db.execute(f"insert into public.{LEDGER} (user_id, client_id, transaction_id, digest, applied_at)"
               " select 'someone', 'c', g::text, %s, now() - interval '50 days' from generate_series(1, 100) g",
               (digest,))
    db.execute(f"insert into public.{LEDGER} (user_id, client_id, transaction_id, digest, applied_at)"
               " values (%s, 'c1', 'old1', %s, now() - interval '40 days')", (sub, digest))
    db.execute("""create or replace function public.test_nap() returns trigger language plpgsql as $$
                  begin
                    if current_setting('test.nap', true) = 'on' then perform pg_sleep(1.5); end if;
                    return null;
                  end $$""")
    db.execute(f"create trigger test_nap after insert on public.{LEDGER}"
               " for each statement execute function public.test_nap()")

    def claim(user_id: str, client: str, transaction: str, nap: bool) -> bool:
        with api_session(pg, user_id) as conn:
            conn.execute("select set_config('test.nap', %s, true)", ("on" if nap else "off",))
            return conn.execute("select public.powersync_upload_ledger_claim(%s, %s, %s)",
                                (client, transaction, digest)).fetchone()[0]
    try:
        answers = {}
        resend = threading.Thread(target=lambda: answers.update(y=claim(sub, "c1", "old1", True)))
        resend.start()
        time.sleep(0.5)  # Y has pruned the 100 oldest and found old1; it naps before locking it
        assert claim(other, "cx", "x1", False) is False  # X prunes old1
        resend.join()
    finally:
        db.execute(f"drop trigger if exists test_nap on public.{LEDGER}")
        db.execute("drop function if exists public.test_nap()")
    assert answers["y"] is False, "applied again: its record had expired"
    assert db.execute(f"select count(*) from public.{LEDGER} where user_id = %s and transaction_id = 'old1'",
                      (sub,)).fetchone()[0] == 1


def test_expired_ledger_records_are_pruned_by_later_calls(atomic_worker, db, user):
    sub, token = user
    db.execute(f"insert into public.{LEDGER} (user_id, client_id, transaction_id, digest, applied_at)"
               " values ('someone', 'old-client', '1', 'x', now() - interval '31 days'),"
               "        ('someone', 'old-client', '2', 'x', now() - interval '29 days')")
    assert statuses(upload(atomic_worker, token, {"client_id": CLIENT, **body(
        tx(put("lists", new_id(), name="n", owner_id=sub), tid=1))})) == ["success"]
    left = set(db.execute(f"select user_id, transaction_id from public.{LEDGER}").fetchall())
    assert left == {("someone", "2"), (sub, "1")}, "kept 30 days (powersync_upload_ledger_settings)"


def test_rerunning_the_sql_file_upgrades_the_older_functions_and_keeps_the_ledger(
        atomic_worker, db, pg, user):
    sub, token = user
    db.execute(f"insert into public.{LEDGER} (user_id, client_id, transaction_id, digest)"
               " values ('kept', 'c', '1', 'x')")
    # what older installs left: the function without client_id/transaction_id, and the one
    # without detect_conflicts
    db.execute("create function public.powersync_apply_transaction(ops jsonb, owner_column text"
               " default null, owner_id text default null) returns jsonb language sql"
               " as $$ select '{}'::jsonb $$")
    db.execute("create function public.powersync_apply_transaction(ops jsonb, owner_column text"
               " default null, owner_id text default null, client_id text default null,"
               " transaction_id text default null) returns jsonb language sql"
               " as $$ select '{}'::jsonb $$")
    # and two that `create or replace` cannot change: the ledger reject returning void, the
    # ledger cap with a default for p_cap (the whole file failed over them, changing nothing)
    db.execute("drop function public.powersync_upload_ledger_reject(text, text, text, jsonb)")
    db.execute("create function public.powersync_upload_ledger_reject(p_client_id text,"
               " p_transaction_id text, p_owner_id text default null) returns void"
               " language sql as $$ select $$")
    db.execute("drop function public.powersync_upload_ledger_cap(text, integer)")
    db.execute("create function public.powersync_upload_ledger_cap(p_user_id text,"
               " p_cap integer default 10000) returns void language sql as $$ select $$")
    pg.run_sql_file(ROOT / "sql/atomic_upload.sql")
    pg.run_sql_file(ROOT / "sql/atomic_upload.sql")  # and again: nothing changes
    shapes = dict(db.execute(
        "select p.proname, pg_get_function_result(p.oid) || ' ' || p.pronargdefaults from pg_proc p"
        " where p.proname in ('powersync_upload_ledger_reject', 'powersync_upload_ledger_cap')").fetchall())
    assert shapes == {"powersync_upload_ledger_reject": "boolean 2", "powersync_upload_ledger_cap": "void 0"}
    rejects = [r[0] for r in db.execute(
        "select p.oid::regprocedure::text from pg_proc p where p.proname = 'powersync_upload_ledger_reject'")]
    assert rejects == ["powersync_upload_ledger_reject(text,text,text,jsonb)"], "the three-argument copy is gone"
    signatures = [r[0] for r in db.execute(
        "select p.oid::regprocedure::text from pg_proc p where p.proname = 'powersync_apply_transaction'")]
    assert signatures == ["powersync_apply_transaction(jsonb,text,text,text,text,boolean)"]
    assert db.execute(f"select count(*) from public.{LEDGER} where user_id = 'kept'").fetchone() == (1,)
    list_id = new_id()
    response = upload(atomic_worker, token, {"client_id": CLIENT, **body(
        tx(put("lists", list_id, name="l", owner_id=sub), tid=1))})
    assert statuses(response) == ["success"], response.text


def test_rerunning_the_sql_file_while_a_call_holds_the_ledger_settings_waits_for_it_without_deadlock(db, pg):
    """A call of the function reads the ledger settings, then writes the ledger
    (powersync_upload_ledger_claim); the file run again meanwhile waits for that call, and both
    finish. Taking the ledger first, the file deadlocked with such a call (40P01)."""
    with psycopg.connect(pg.dsn) as call:
        call.execute("select retention from public.powersync_upload_ledger_settings").fetchone()
        rerun: dict = {}
        thread = threading.Thread(target=lambda: rerun.update(
            out=_run_or_error(lambda: pg.run_sql_file(ROOT / "sql/atomic_upload.sql"))))
        thread.start()
        time.sleep(1.0)  # the file is waiting now (on the settings' lock, or after the ledger's)
        call.execute(f"insert into public.{LEDGER} (user_id, client_id, transaction_id, digest)"
                     " values ('lock-order', 'c', '1', 'x')")
        call.commit()
        thread.join(timeout=120)
    assert not isinstance(rerun.get("out"), Exception), rerun.get("out")
    assert db.execute(f"select count(*) from public.{LEDGER} where user_id = 'lock-order'").fetchone() == (1,)


def test_rerunning_the_sql_file_while_a_rejection_waits_on_the_ledger_does_not_deadlock(db, pg, user):
    """powersync_upload_ledger_reject reads the ledger settings before it writes the ledger, in
    the order the file run again locks them. A rejection waiting on another call's record while
    the file runs: both finish (the other way round one of them failed with 40P01)."""
    sub, _ = user
    out: dict = {}

    def reject():
        with api_session(pg, sub, "b" * 32) as conn:
            return conn.execute("select public.powersync_upload_ledger_reject('c', '1')").fetchone()[0]

    with psycopg.connect(pg.dsn) as holder:
        holder.execute(f"insert into public.{LEDGER} (user_id, client_id, transaction_id, digest)"
                       " values (%s, 'c', '1', 'x')", (sub,))
        rejection = threading.Thread(target=lambda: out.update(reject=_run_or_error(reject)))
        rejection.start()
        time.sleep(0.5)  # the rejection waits on the holder's record
        rerun = threading.Thread(target=lambda: out.update(
            rerun=_run_or_error(lambda: pg.run_sql_file(ROOT / "sql/atomic_upload.sql"))))
        rerun.start()
        time.sleep(1.0)  # the file waits too (within its 3 s lock_timeout)
        holder.commit()
        rejection.join(timeout=120)
        rerun.join(timeout=120)
    assert out.get("reject") is True, out.get("reject")
    assert not isinstance(out.get("rerun"), Exception), out.get("rerun")


def test_rerunning_the_sql_file_while_a_call_holds_the_ledger_long_fails_fast_and_changes_nothing(db, pg, user):
    """Every new call queues behind a lock the file waits for: the file waits at most its
    lock_timeout (3 s), then fails whole, so uploads are not held up behind it for longer."""
    sub, _ = user
    db.execute(f"comment on table public.{LEDGER} is 'before the re-run'")
    with psycopg.connect(pg.dsn) as holder:
        holder.execute(f"insert into public.{LEDGER} (user_id, client_id, transaction_id, digest)"
                       " values (%s, 'c', 'held', 'x')", (sub,))
        started = time.monotonic()
        out = _run_or_error(lambda: pg.run_sql_file(ROOT / "sql/atomic_upload.sql"))
        waited = time.monotonic() - started
        # meanwhile a call of the function is not held up past the file's lock_timeout
        holder.rollback()
    assert isinstance(out, Exception) and "lock timeout" in str(out), out
    assert waited < 20, f"the file waited {waited:.1f} s"
    comment = f"select obj_description('public.{LEDGER}'::regclass)"
    assert db.execute(comment).fetchone()[0] == "before the re-run", "the failed run changed nothing (one transaction)"
    pg.run_sql_file(ROOT / "sql/atomic_upload.sql")  # and run again at a quiet moment, it goes through
    assert db.execute(comment).fetchone()[0] != "before the re-run"


def _run_or_error(run):
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - reported by the test's assertion
        return e


# =========================================================================== UPLOAD_ATOMIC unset
def test_unset_upload_atomic_uses_the_installed_function_one_request_per_transaction(
        auto_worker, db, standin, user):
    sub, token = user
    list_id = insert_list(db, sub, "doomed")
    todo = new_id()
    payload = {"client_id": CLIENT, **body(
        tx(put("todos", todo, description="t", list_id=list_id, created_by=sub),
           delete("lists", list_id), tid=3))}
    response = upload(auto_worker, token, payload)
    assert response.status_code == 200, response.text
    assert response.json()["subrequests"] == 1
    assert [e["path"] for e in standin.requests_log()] == [RPC_PATH]
    again = upload(auto_worker, token, payload)
    assert again.json()["results"][0].get("already_applied") is True, again.text


def test_unset_upload_atomic_without_the_function_falls_back_to_rest_and_finds_it_later(
        later_worker, db, standin, user):
    # The worker's function (UPLOAD_ATOMIC_FUNCTION=powersync_apply_later) is not installed yet.
    sub, token = user
    a, b, c = new_id(), new_id(), new_id()
    later_path = f"/rest/v1/rpc/{LATER_FUNCTION}"

    first = upload(later_worker, token, body(tx(put("lists", a, name="a", owner_id=sub), tid=1)))
    assert statuses(first) == ["success"], first.text
    assert first.json()["subrequests"] == 2, "the failed probe counts"
    wait_until_standin_idle(standin)
    assert [(e["path"], e["status"]) for e in standin.requests_log()] == \
        [(later_path, 404), ("/rest/v1/lists", 201)]
    assert row(db, "lists", a)["name"] == "a"

    standin.reset()
    second = upload(later_worker, token, body(tx(put("lists", b, name="b", owner_id=sub), tid=2)))
    assert statuses(second) == ["success"]
    assert [e["path"] for e in standin.requests_log()] == ["/rest/v1/lists"], \
        "remembered missing: not looked for again before the re-check interval"

    db.execute(f"create function public.{LATER_FUNCTION}(ops jsonb, owner_column text default null,"
               " owner_id text default null, client_id text default null,"
               " transaction_id text default null) returns jsonb language sql"
               " as $$ select public.powersync_apply_transaction(ops, owner_column, owner_id,"
               " client_id, transaction_id) $$")
    db.execute(f"grant execute on function public.{LATER_FUNCTION}(jsonb, text, text, text, text)"
               " to authenticated")
    try:
        time.sleep(2.2)  # UPLOAD_ATOMIC_RECHECK_SECONDS=2
        standin.reset()
        third = upload(later_worker, token, body(tx(put("lists", c, name="c", owner_id=sub), tid=3)))
        assert statuses(third) == ["success"], third.text
        assert [e["path"] for e in standin.requests_log()] == [later_path]
        assert row(db, "lists", c)["name"] == "c"
    finally:
        db.execute(f"drop function public.{LATER_FUNCTION}(jsonb, text, text, text, text)")


# =========================================================================== dead letters
def test_fatal_transactions_are_recorded_in_the_dead_letter_table(dead_letter_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    ok1, ok2, bad_todo, orphan = new_id(), new_id(), new_id(), new_id()
    bad_data = {"description": "p9", "list_id": list_id, "created_by": sub, "priority": 9}
    response = upload(dead_letter_worker, token, body(
        tx(put("lists", ok1, name="ok", owner_id=sub), tid=1),
        tx(patch("lists", list_id, name="x"), put("todos", bad_todo, bad_data), tid="t-2"),
        tx(put("lists", ok2, name="ok", owner_id=sub), tid=3),
        tx(put("todos", orphan, description="o", list_id=new_id(), created_by=sub), tid=7),
    ))
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success", "fatal_error", "success", "fatal_error"]
    letters = [r[0] for r in db.execute(
        f"select to_jsonb(d) from {DEAD_LETTERS} d order by id")]
    assert len(letters) == 2, letters
    first, second = letters
    assert first["user_id"] == sub
    assert first["transaction_id"] == "t-2"
    assert first["op_index"] == 1
    assert first["code"] == "23514"
    assert first["message"]
    assert first["entry"] == {"op": "PUT", "table": "todos", "id": bad_todo, "data": bad_data}
    # the whole transaction, in order, with what became of each entry
    assert first["entries"] == [
        {"op": "PATCH", "table": "lists", "id": list_id, "data": {"name": "x"}, "state": "applied"},
        {"op": "PUT", "table": "todos", "id": bad_todo, "data": {**bad_data, "id": bad_todo},
         "state": "failed"},
    ]
    assert (second["user_id"], second["transaction_id"], second["op_index"], second["code"]) == \
        (sub, "7", 0, "23503")
    assert second["entry"]["id"] == orphan
    recorded_ids = {json.dumps(letter["entry"]) for letter in letters}
    assert not any(ok1 in e or ok2 in e for e in recorded_ids), "successes are not recorded"


def test_transaction_whose_dead_letter_cannot_be_written_is_kept_not_discarded(
        dead_letter_worker, db, standin, user):
    sub, token = user
    list_id, bad, later = insert_list(db, sub), new_id(), new_id()
    payload = body(
        tx(put("todos", bad, description="p9", list_id=list_id, created_by=sub, priority=9), tid=1),
        tx(put("lists", later, name="later", owner_id=sub), tid=2),
    )
    standin.add_fault({"status": 503, "path_prefix": "/rest/v1/rpc/powersync_record_dead_letter"})
    response = upload(dead_letter_worker, token, payload)
    assert_retry_response(response)
    assert statuses(response) == ["retryable_error", "not_attempted"], response.text
    f = failure(response, 0)
    assert (f["code"], f["index"]) == ("dead_letter_failed", 0), f
    assert f["message"].startswith("23514: "), f
    assert count(db, DEAD_LETTERS) == 0
    # once the table takes writes again the client's retry records it and completes
    again = upload(dead_letter_worker, token, payload)
    assert statuses(again) == ["fatal_error", "success"], again.text
    assert count(db, DEAD_LETTERS) == 1


def test_dead_lettered_transaction_is_replayed_once_its_cause_is_fixed(
        dead_letter_worker, db, user):
    # A todo written before its list exists (23503) is dead-lettered with its transaction; the
    # operator creates the list and replays what was not applied, all or nothing.
    sub, token = user
    home, missing = insert_list(db, sub, "home"), new_id()
    done, first, second = insert_todo(db, sub, home, "done"), new_id(), new_id()
    response = upload(dead_letter_worker, token, body(tx(
        patch("todos", done, completed=True),
        put("todos", first, description="one", list_id=missing, created_by=sub, tags=None),
        put("todos", second, description="two", list_id=missing, created_by=sub, tags='["x"]'),
        delete("todos", done),
        tid="late-list")))
    assert statuses(response) == ["fatal_error"], response.text
    assert (failure(response, 0)["code"], failure(response, 0)["index"]) == ("23503", 1)
    letter_id, entries = db.execute(
        f"select id, entries from {DEAD_LETTERS} where transaction_id = 'late-list'").fetchone()
    assert [e["state"] for e in entries] == ["applied", "failed", "failed", "not_attempted"]
    assert row(db, "todos", done)["completed"] is True, "the applied prefix stays applied"

    db.execute("insert into lists (id, name, owner_id) values (%s, 'late', %s)", (missing, sub))
    db.execute("update todos set completed = false where id = %s", (done,))  # a later write
    # replayed as the user who recorded it (RLS mode): their policies allow all three
    result = db.execute("select public.powersync_replay_dead_letter(%s)", (letter_id,)).fetchone()[0]
    assert result == {"applied": 3, "unchanged": [], "replayed": True, "dead_letter_id": letter_id}
    assert row(db, "todos", first)["list_id"] == missing
    assert row(db, "todos", second)["tags"] == '["x"]', "the data as the bridge wrote it"
    assert row(db, "todos", done) is None, "the DELETE that was never attempted is applied"
    assert db.execute(f"select replayed_at is not null from {DEAD_LETTERS} where id = %s",
                      (letter_id,)).fetchone() == (True,)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        db.execute("select public.powersync_replay_dead_letter(%s)", (letter_id,))


# =========================================================================== logs
def test_each_upload_is_logged_once_without_token_or_row_data(rls_worker, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    secret_value = "row-secret-" + uuid.uuid4().hex
    bad_token = make_token(sub, secret="wrong-secret-wrong-secret-wrong-secret-x")

    ok = upload(rls_worker, token, body(
        tx(put("todos", new_id(), description=secret_value, list_id=list_id, created_by=sub),
           tid=1),
        tx(put("todos", new_id(), description=secret_value, list_id=list_id, created_by=sub,
               priority=9), tid=2),
    ))
    assert ok.status_code == 200, ok.text
    refused = upload(rls_worker, bad_token, body(tx(put("lists", new_id(), name=secret_value,
                                                        owner_id=sub))))
    assert refused.status_code == 401

    # each request's own line, found by its X-Request-Id (the module's worker logs other tests'
    # requests too, some of them late), and only one per request
    logged_ok, logged_refused = rls_worker.log_line(ok), rls_worker.log_line(refused)
    time.sleep(0.5)  # a second line for either would have come by now
    for response in (ok, refused):
        request_id = response.headers["X-Request-Id"]
        assert len([l for l in rls_worker.log_lines() if l.get("request_id") == request_id]) == 1, request_id
    assert (logged_ok["route"], logged_ok["method"], logged_ok["status"]) == ("upload", "POST", 200)
    counts = logged_ok["upload"]
    assert (counts["success"], counts["fatal"], counts["retryable"], counts["not_attempted"]) == \
        (1, 1, 0, 0)
    assert counts["subrequests"] == 2
    assert counts["failure_codes"] == ["23514"]
    assert (logged_refused["route"], logged_refused["status"]) == ("upload", 401)

    output = rls_worker.output()
    assert secret_value not in output, "row data was logged"
    assert token not in output, "the access token was logged"
    assert bad_token not in output, "the refused token was logged"
    assert token.split(".")[2] not in output, "the token's signature was logged"


# --------------------------------------------------------------------------- scripted upstreams
def RedirectServer(status: int, target: str) -> ScriptedUpstream:
    """Answers every request with `status` and `Location: <target><same path and query>`: a
    SUPABASE_URL that is not the final address (`http://` redirected to `https://`, a moved host)."""
    return ScriptedUpstream(lambda method, path, headers, sent: (status, {"Location": target + path}, b""))


@pytest.mark.parametrize("atomic, status", [("false", 301), ("false", 303), ("true", 301), ("true", 308)])
def test_a_redirect_is_never_followed_and_the_writes_stay_queued(
        base_vars, start_worker, db, standin, session_token, atomic, status):
    """fetch follows redirects by default, and re-sends a redirected POST (301, 302) or any
    redirected request (303) as a GET without its body: PostgREST's 200 to that GET, with a
    row count, read as the upsert or the delete applied while nothing was written."""
    redirect = RedirectServer(status, standin.url)
    try:
        worker = start_worker({**base_vars, "UPLOAD_ATOMIC": atomic, "SUPABASE_URL": redirect.url})
        sub = new_id()
        token = session_token(sub, iss=f"{redirect.url}/auth/v1")
        kept = insert_list(db, sub, name="kept")
        before = snapshot(db)
        response = upload(worker, token, body(
            tx(put("lists", new_id(), name="new", owner_id=sub), delete("lists", kept), tid=1)))
        assert_retry_response(response)
        assert statuses(response) == ["retryable_error"], response.text
        f = failure(response, 0)
        assert f["code"] == f"http_{status}", f
        assert "redirect" in f["message"] and "SUPABASE_URL" in f["message"], f
        assert response.json()["applied"] == 0
        assert snapshot(db) == before
        assert requests_made(standin) == 0, "the redirect was followed"
        assert redirect.requests and all(not r.startswith("GET") for r in redirect.requests), redirect.requests
    finally:
        redirect.stop()


@pytest.mark.parametrize("mode", ["rls", "service"])
@pytest.mark.parametrize("answer", ["json-500", "html-502", "text-200"])
def test_credentials_an_upstream_echoes_reach_neither_the_answer_nor_the_log(
        base_vars, start_worker, session_token, mode, answer):
    """A debugging proxy, an echo service or a gateway's error page behind a wrong SUPABASE_URL
    answers with the request's own headers: the service key (service mode) or the user's session
    (rls mode) must not come back to the app, nor go into the log line."""
    def respond(method, path, headers, sent):
        echoed = "".join(f"{name}: {value}\n" for name, value in headers.items())
        if answer == "json-500":
            return 500, {"Content-Type": "application/json"}, json.dumps(
                {"code": "XX000", "message": echoed, "details": echoed, "hint": echoed}).encode()
        if answer == "html-502":
            return 502, {"Content-Type": "text/html"}, f"<html><pre>{echoed}</pre></html>".encode()
        return 200, {"Content-Type": "text/plain"}, echoed.encode()

    echo = ScriptedUpstream(respond)
    try:
        vars = {**base_vars, "SUPABASE_URL": echo.url}
        if mode == "service":
            vars.update(UPLOAD_MODE="service", UPLOAD_OWNER_COLUMN="owner_id", UPLOAD_TABLES="lists")
        worker = start_worker(vars)
        sub = new_id()
        token = session_token(sub, iss=f"{echo.url}/auth/v1")
        response = upload(worker, token, body(tx(put("lists", new_id(), name="n", owner_id=sub), tid=1)))
        assert statuses(response) == ["retryable_error"], response.text
        assert echo.requests, "the upstream was asked"
        line = json.dumps(worker.log_line(response))
        secrets = [token, base_vars["SUPABASE_ANON_KEY"], base_vars["SUPABASE_SERVICE_ROLE_KEY"]]
        for secret in secrets:
            assert secret not in response.text, (mode, answer, response.text[:500])
            assert secret not in line, (mode, answer, line[:500])
        assert "[redacted]" in response.text, response.text[:500]
    finally:
        echo.stop()



def test_no_transaction_is_started_once_an_upload_has_run_its_time_budget(base_vars, start_worker, db, standin,
                                                                          session_token):
    """Six REST transactions whose writes take 2 s each, a 3 s budget: the first two are applied,
    the rest are not started (not_attempted, 503) and never written afterwards. The client gets its
    answer in about 4 s instead of 12, and a client that gave up would not be followed by 12 s of
    writes of a queue it sends again."""
    worker = start_worker({**base_vars, "UPLOAD_ATOMIC": "false", "UPLOAD_TIME_BUDGET_MS": "3000"})
    user = str(uuid.uuid4())
    ids = [str(uuid.uuid4()) for _ in range(6)]
    standin.add_fault({"delay_ms": 2000, "path_prefix": "/rest/v1/lists", "count": 6})
    payload = {"client_id": "c-" + new_id(), "transactions": [
        {"transaction_id": i + 1, "crud": [put("lists", ids[i], name=f"n{i}", owner_id=user)]} for i in range(6)]}
    started = time.time()
    response = upload(worker, session_token(user), payload, timeout=30)
    elapsed = time.time() - started
    assert response.status_code == 503, response.text
    assert statuses(response) == ["success"] * 2 + ["not_attempted"] * 4, response.text
    assert elapsed < 8, elapsed
    assert worker.log_line(response)["upload"]["time_budget_spent"] is True
    time.sleep(3)
    written = db.execute("select id::text from public.lists where id = any(%s::uuid[])", (ids,)).fetchall()
    assert sorted(r[0] for r in written) == sorted(ids[:2]), "nothing written after the answer"
