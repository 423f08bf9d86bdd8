"""Dead letters and the ledger end to end (issue 15): who can record, what a replay may do, one
dead letter per transaction, the ledger's checked inputs, settings and cap, the SQL files'
grants, and the in-place upgrade of an older dead-letter table.

The worker runs in workerd (`wrangler dev`), PostgREST is the stand-in (requests run with
`authenticator` as session user, as on Supabase), data lands in the session's PostgreSQL.

Worker instances (started once for the module, in parallel):
  rest      rls mode, REST requests, UPLOAD_DEAD_LETTER_TABLE=powersync_dead_letters
  atomic    rls mode, UPLOAD_ATOMIC=true, dead letters
  service   UPLOAD_MODE=service, UPLOAD_TABLES=profiles, UPLOAD_OWNER_COLUMN=user_id, dead letters
  firebase  rls mode in front of a stand-in that also accepts Firebase ID tokens, dead letters
  unchanged rls mode, REST requests, dead letters, UPLOAD_DEAD_LETTER_UNCHANGED=true
  atomic_unchanged  rls mode, UPLOAD_ATOMIC=true, dead letters, UPLOAD_DEAD_LETTER_UNCHANGED=true
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid

import psycopg
import pytest

from tests.e2e.conftest import ROOT
from tests.e2e.test_third_party import (FIREBASE_PROJECT, FIREBASE_UID, firebase_claims,  # noqa: F401
                                        firebase_standin, providers)
from tests.e2e.upload_helpers import body, failure, patch, put, statuses, tx, upload
from tests.support.db import api_session, count, insert_list, insert_profile, insert_todo, new_id, row

DEAD_LETTERS = "powersync_dead_letters"
RECORD = "powersync_record_dead_letter"
REPLAY = "powersync_replay_dead_letter"
CLAIM = "powersync_upload_ledger_claim"
UNCHANGED = "powersync_upload_ledger_unchanged"
LEDGER = "powersync_upload_ledger"
APPLY_PATH = "/rest/v1/rpc/powersync_apply_transaction"
DEAD = {"UPLOAD_DEAD_LETTER_TABLE": DEAD_LETTERS}


@pytest.fixture(scope="module")
def workers(base_vars, start_workers, firebase_standin, providers):  # noqa: F811
    _, _, urls, _ = providers
    configs = {
        "rest": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "false"},
        "atomic": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "true"},
        "service": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "false", "UPLOAD_MODE": "service",
                    "UPLOAD_TABLES": "profiles", "UPLOAD_OWNER_COLUMN": "user_id"},
        "firebase": {**base_vars, **DEAD, "SUPABASE_URL": firebase_standin.url,
                     "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
                     "THIRD_PARTY_FIREBASE_JWKS_URL": urls["firebase"]},
        "unchanged": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "false", "UPLOAD_DEAD_LETTER_UNCHANGED": "true"},
        "atomic_unchanged": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "true", "UPLOAD_DEAD_LETTER_UNCHANGED": "true"},
        "atomic_json": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "true", "UPLOAD_JSON_COLUMNS": "todos.tags"},
    }
    return start_workers(configs)




def letters(db) -> list[dict]:
    return [r[0] for r in db.execute(f"select to_jsonb(d) from {DEAD_LETTERS} d order by id")]


def with_client(payload: dict, client_id: str) -> dict:
    return {**payload, "client_id": client_id}


def bad_todo(sub: str, list_id: str) -> dict:
    """A PUT that the check constraint refuses (priority between 0 and 5): fatal 23514."""
    return put("todos", new_id(), description="p9", list_id=list_id, created_by=sub, priority=9)


# =========================================================================== recording
def test_users_cannot_write_the_dead_letter_table_or_pick_its_owner(as_user, db, user, other_user):
    a, _ = user
    b, _ = other_user
    api = as_user(a)
    plain = {"user_id": a, "entry": {}, "entries": [], "code": "x"}
    chosen_id = api.post(DEAD_LETTERS, json={**plain, "id": 999_999})
    # refused as an identity column ("generated always") before privileges are even checked
    assert (chosen_id.status_code, chosen_id.json()["code"]) in ((400, "428C9"), (403, "42501")), chosen_id.text
    assert api.post(DEAD_LETTERS, json=plain).status_code == 403
    entries = [{"op": "DELETE", "table": "lists", "id": new_id(), "state": "failed"}]
    refused = api.rpc(RECORD, {"entries": entries, "code": "x", "message": "m", "user_id": b})
    assert (refused.status_code, refused.json()["code"]) == (403, "42501"), refused.text
    as_service_mode = api.rpc(RECORD, {"entries": entries, "code": "x", "message": "m",
                                       "owner_column": "owner_id", "allowed_tables": ["lists"]})
    assert as_service_mode.status_code == 403, as_service_mode.text
    assert count(db, DEAD_LETTERS) == 0

    recorded = api.rpc(RECORD, {"entries": entries, "code": "x", "message": "m", "user_id": a})
    assert recorded.status_code == 200, recorded.text
    (letter,) = letters(db)
    assert letter["id"] == recorded.json()
    assert (letter["user_id"], letter["recorded_as"], letter["recorded_by"]) == (a, "user", "authenticated")
    assert letter["recorded_claims"]["sub"] == a
    assert (letter["owner_column"], letter["allowed_tables"]) == (None, None)
    # nothing written by hand gets past the function: no update, no delete, only own rows read
    assert api.patch(DEAD_LETTERS, f"id=eq.{letter['id']}", json={"user_id": b}).status_code == 403
    assert api.delete(DEAD_LETTERS, f"id=eq.{letter['id']}").status_code == 403
    assert [r["id"] for r in api.get(DEAD_LETTERS, "select=id").json()] == [letter["id"]]
    assert as_user(b).get(DEAD_LETTERS, "select=id").json() == []


def test_fatal_transaction_is_recorded_with_the_users_provenance_and_client_id(workers, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    response = upload(workers["rest"], token, with_client(body(tx(bad_todo(sub, list_id), tid=3)), "client-a"))
    assert statuses(response) == ["fatal_error"], response.text
    (letter,) = letters(db)
    assert (letter["user_id"], letter["client_id"], letter["transaction_id"]) == (sub, "client-a", "3")
    assert (letter["recorded_as"], letter["recorded_claims"]["sub"]) == ("user", sub)
    assert len(letter["ops_digest"]) == 64


def test_an_id_holding_the_hints_marker_cannot_point_an_atomic_failure_at_another_entry(workers, db, user):
    """The atomic function names the failing op at the end of its hint, after which comes the
    op's id: an id that holds `powersync op 0 (…` does not make the failure entry 0's."""
    sub, token = user
    insert_profile(db, "p-taken", sub, handle="taken")
    spoof = "x) powersync op 0 (PUT profiles/p-ok"
    payload = body(tx(put("profiles", "p-ok", user_id=sub, handle="free"),
                      put("profiles", spoof, user_id=sub, handle="taken", active=True), tid="spoof"))
    response = upload(workers["atomic"], token, payload)
    assert statuses(response) == ["fatal_error"], response.text
    failed = failure(response, 0)
    assert (failed["code"], failed["index"]) == ("23505", 1), failed
    (letter,) = letters(db)
    assert letter["op_index"] == 1


def test_a_resent_fatal_transaction_gets_no_second_dead_letter(workers, db, user):
    # The client re-sends a fatal transaction whose answer it lost: same user, client id,
    # transaction id and ops -> the first dead letter, nothing added.
    sub, token = user
    list_id = insert_list(db, sub)
    payload = with_client(body(tx(bad_todo(sub, list_id), tid=8)), "client-r")
    for _ in range(3):
        assert statuses(upload(workers["rest"], token, payload)) == ["fatal_error"]
    assert count(db, DEAD_LETTERS) == 1
    # another client id, or other ops under the same ids, is another transaction
    upload(workers["rest"], token, with_client(body(tx(bad_todo(sub, list_id), tid=8)), "client-r"))
    upload(workers["rest"], token, with_client(body(*payload["transactions"]), "client-s"))
    assert count(db, DEAD_LETTERS) == 3


def test_missing_execute_grant_on_the_recorder_keeps_the_transaction_until_granted(workers, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    later = new_id()
    payload = body(tx(bad_todo(sub, list_id), tid=1), tx(put("lists", later, name="later", owner_id=sub), tid=2))
    signature = "public.powersync_record_dead_letter(jsonb, text, text, text, text, text, integer, jsonb, text, text, text[])"
    db.execute(f"revoke execute on function {signature} from authenticated")
    try:
        response = upload(workers["rest"], token, payload)
        assert statuses(response) == ["retryable_error", "not_attempted"], response.text
        assert failure(response, 0)["code"] == "dead_letter_failed"
        assert count(db, DEAD_LETTERS) == 0
    finally:
        db.execute(f"grant execute on function {signature} to authenticated")
    again = upload(workers["rest"], token, payload)
    assert statuses(again) == ["fatal_error", "success"], again.text
    assert count(db, DEAD_LETTERS) == 1
    assert row(db, "lists", later) is not None


def test_third_party_users_fatal_transaction_is_dead_lettered_and_their_queue_moves_on(workers, providers, pg):  # noqa: F811
    _, keys, _, _ = providers
    token = keys["firebase"].sign(firebase_claims())
    theirs, mine = str(uuid.uuid4()), str(uuid.uuid4())
    response = upload(workers["firebase"], token, with_client(body(
        tx(put("firebase_notes", theirs, firebase_uid="x" * 28, body="no"), tid=1),  # RLS: fatal
        tx(put("firebase_notes", mine, firebase_uid=FIREBASE_UID, body="yes"), tid=2),
    ), "fb-client"))
    assert statuses(response) == ["fatal_error", "success"], response.text
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        rows = conn.execute(f"select user_id, recorded_as, transaction_id, client_id from {DEAD_LETTERS}"
                            " where user_id = %s", (FIREBASE_UID,)).fetchall()
        conn.execute(f"delete from {DEAD_LETTERS} where user_id = %s", (FIREBASE_UID,))
        notes = conn.execute("select id::text from public.firebase_notes").fetchall()
    assert rows == [(FIREBASE_UID, "user", "1", "fb-client")]
    assert notes == [(mine,)]


# =========================================================================== replay
def test_replay_of_a_planted_dead_letter_cannot_touch_another_users_rows(as_user, as_service, db, user, other_user):
    # A recorded what deletes B's list and writes into it; the operator replays it through
    # PostgREST with the service key. It runs as A: RLS hides B's list from the DELETE and
    # refuses the PUT, so nothing of B's changes and the refusal is reported and kept.
    a, _ = user
    b, _ = other_user
    b_list = insert_list(db, b, "b's")
    b_todo = insert_todo(db, b, b_list, "b's todo")
    api = as_user(a)
    deleting = api.rpc(RECORD, {"entries": [{"op": "DELETE", "table": "lists", "id": b_list, "state": "failed"}],
                                "code": "x", "message": "m"}).json()
    writing = api.rpc(RECORD, {"entries": [
        {"op": "PATCH", "table": "todos", "id": b_todo, "data": {"description": "hacked"}, "state": "failed"},
        {"op": "PUT", "table": "lists", "id": new_id(), "data": {"name": "in b's name", "owner_id": b},
         "state": "failed"}], "code": "x", "message": "m"}).json()

    result = as_service.rpc(REPLAY, {"dead_letter_id": deleting})
    assert result.status_code == 200, result.text
    assert result.json()["replayed"] is True
    assert row(db, "lists", b_list) is not None, "a replay deleted another user's row"

    refused = as_service.rpc(REPLAY, {"dead_letter_id": writing})
    assert refused.status_code == 200, refused.text
    assert (refused.json()["replayed"], refused.json()["applied"], refused.json()["error"]["code"]) == \
        (False, 0, "42501"), refused.text
    assert row(db, "todos", b_todo)["description"] == "b's todo"
    assert count(db, "lists") == 1
    stored = db.execute(f"select replay_error ->> 'code', replayed_at from {DEAD_LETTERS} where id = %s",
                        (writing,)).fetchone()
    assert stored == ("42501", None), "refusal stored, row left replayable"
    # users cannot replay at all
    assert as_user(a).rpc(REPLAY, {"dead_letter_id": deleting}).status_code in (401, 403)


def test_replay_runs_as_the_custom_role_that_recorded_it_never_with_authenticateds_rights(
        as_user, as_service, db, user):
    """A project's own role with fewer rights than `authenticated` (here: read-only on lists): what
    a user of it recorded cannot be written by the operator's replay either."""
    sub, _ = user
    role = "readonly_user"
    db.execute(f"drop role if exists {role}")
    db.execute(f"create role {role} nologin noinherit; grant {role} to authenticator;"
               f" grant usage on schema public to {role}; grant select on public.lists to {role};"
               f" grant execute on function public.{RECORD} to {role}")
    try:
        list_id = new_id()
        insert = as_user(sub, role=role).post("lists", {"id": list_id, "name": "n", "owner_id": sub})
        assert insert.status_code == 403, insert.text  # the user cannot write lists
        recorded = as_user(sub, role=role).rpc(RECORD, {"entries": [
            {"op": "PUT", "table": "lists", "id": list_id, "data": {"name": "by a read-only user", "owner_id": sub},
             "state": "failed"}], "code": "42501", "message": "m"})
        assert recorded.status_code == 200, recorded.text
        assert db.execute(f"select recorded_by from {DEAD_LETTERS} where id = %s",
                          (recorded.json(),)).fetchone() == (role,)
        result = as_service.rpc(REPLAY, {"dead_letter_id": recorded.json()})
        assert result.status_code == 200, result.text
        assert (result.json()["replayed"], result.json()["error"]["code"]) == (False, "42501"), result.text
        assert row(db, "lists", list_id) is None
    finally:
        db.execute(f"drop owned by {role}; drop role if exists {role}")


def test_rls_refusal_recorded_by_the_bridge_is_not_forced_through_by_the_operators_replay(workers, db, user,
                                                                                         other_user):
    sub, token = user
    other, _ = other_user
    list_id = new_id()
    response = upload(workers["rest"], token, body(tx(put("lists", list_id, name="n", owner_id=other), tid=1)))
    assert statuses(response) == ["fatal_error"] and failure(response, 0)["code"] == "42501", response.text
    (letter,) = letters(db)
    with db.transaction():
        result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
        # the caller's role and claims are back for the rest of its transaction
        assert db.execute("select current_user, coalesce(current_setting('request.jwt.claims', true), '')"
                          ).fetchone() == ("postgres", "")
    assert (result["replayed"], result["error"]["code"]) == (False, "42501"), result
    assert row(db, "lists", list_id) is None


def test_service_mode_replay_keeps_the_recorded_owner_and_allowed_tables(workers, as_service, db, user, other_user):
    sub, token = user
    other, _ = other_user
    handle = "taken-" + new_id()
    insert_profile(db, "p-" + new_id(), other, handle=handle)
    mine = "p-" + new_id()
    response = upload(workers["service"], token, body(tx(put("profiles", mine, handle=handle), tid="s1")))
    assert statuses(response) == ["fatal_error"] and failure(response, 0)["code"] == "23505", response.text
    (letter,) = letters(db)
    assert (letter["recorded_as"], letter["user_id"], letter["owner_column"], letter["allowed_tables"]) == \
        ("service", sub, "user_id", ["profiles"])
    db.execute("delete from profiles where handle = %s", (handle,))  # the cause, fixed
    result = as_service.rpc(REPLAY, {"dead_letter_id": letter["id"]})
    assert result.json() == {"applied": 1, "unchanged": [], "replayed": True, "dead_letter_id": letter["id"]}, result.text
    assert row(db, "profiles", mine)["user_id"] == sub

    # a service-mode record naming a table outside the allowed ones is refused on replay
    planted = as_service.rpc(RECORD, {
        "entries": [{"op": "PUT", "table": "lists", "id": new_id(), "data": {"name": "x", "owner_id": sub},
                     "state": "failed"}],
        "code": "x", "message": "m", "user_id": sub, "owner_column": "owner_id", "allowed_tables": ["profiles"]})
    assert planted.status_code == 200, planted.text
    refused = as_service.rpc(REPLAY, {"dead_letter_id": planted.json()}).json()
    assert (refused["replayed"], refused["error"]["code"]) == (False, "42501"), refused
    assert count(db, "lists") == 0


def test_replay_is_recorded_in_the_ledger_so_a_client_resend_applies_nothing(workers, db, user):
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub), tid=21)),
                          "client-l")
    assert statuses(upload(workers["atomic"], token, payload)) == ["fatal_error"]
    (letter,) = letters(db)
    insert_list(db, sub, list_id=missing)
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert result["replayed"] is True, result
    db.execute("update todos set description = 'changed later' where id = %s", (todo,))
    again = upload(workers["atomic"], token, payload)
    assert statuses(again) == ["success"] and again.json()["results"][0].get("already_applied") is True, again.text
    assert row(db, "todos", todo)["description"] == "changed later"


def test_a_replay_never_goes_over_the_users_later_writes_unless_told_to(workers, db, user):
    """T1 is dead-lettered, then the user's T2 edits the same row (T3 another one): replayed once
    its cause was fixed, T1 put the row back as it was before T2, answered as replayed. Now it is
    refused, naming T2 alone, until the operator, having looked at the row, says to go over it."""
    sub, token = user
    list_id, missing = insert_list(db, sub), new_id()
    edited = insert_todo(db, sub, list_id, "first")
    spelled = "{" + edited.upper().replace("-", "") + "}"  # another spelling of the same uuid
    t1 = tx(patch("todos", spelled, description="v1"),
            put("todos", new_id(), description="x", list_id=missing, created_by=sub), tid=1)
    assert statuses(upload(workers["atomic"], token, with_client(body(t1), "client-later"))) == ["fatal_error"]
    (letter,) = letters(db)
    later = body(tx(patch("todos", edited, description="v2"), tid=2),
                 tx(put("todos", new_id(), description="elsewhere", list_id=list_id, created_by=sub), tid=3))
    assert statuses(upload(workers["atomic"], token, with_client(later, "client-later"))) == ["success"] * 2
    insert_list(db, sub, list_id=missing)  # the cause, fixed
    refused = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert (refused["replayed"], refused["error"]["code"]) == (False, "55000"), refused
    message = refused["error"]["message"]
    assert "client-later/2" in message and "client-later/3" not in message, message
    assert "overwrite_later_writes" in refused["error"]["hint"], refused
    assert letters(db)[0]["replay_error"]["code"] == "55000", "stored for the operator"
    assert row(db, "todos", edited)["description"] == "v2"
    told = db.execute(f"select public.{REPLAY}(%s, overwrite_later_writes => true)", (letter["id"],)).fetchone()[0]
    assert told["replayed"] is True, told
    assert row(db, "todos", edited)["description"] == "v1"


def test_row_keys_fold_every_spelling_of_one_number_or_uuid_into_one(db):
    """The replay's guard compares rows by powersync_upload_row_key: each spelling a column reads
    as one value makes one key (found by an audit: 1.0 and a tab after 1 did not)."""
    def key(id_: str) -> str:
        return db.execute("select public.powersync_upload_row_key('t', %s)", (id_,)).fetchone()[0]

    u = "0e0b5a1c-2d3e-4f50-8a6b-7c8d9e0f1a2b"
    for spellings in (("1", "01", "+1", " 1", "1\t", "\n1\r", "1.0", "1.", "1e0", "10e-1", "0.1e1", "0x1", "0X01",
                       "0o1", "0b1", "0x_1", "1.000"),
                      ("1000", "1e3", "1_000", "1.0e3", "0x3e8", "0b1111101000", "0o1750"),
                      ("0", "000", "0.0", "-0", "0x0", "0e9"),
                      (".5", "0.5", "5e-1", "0.50"),
                      (u, u.upper(), "{" + u + "}", u.replace("-", ""))):
        keys = {key(s) for s in spellings}
        assert len(keys) == 1, (spellings, keys)
    assert key("1") == "t/1" and key("1000") == "t/1000", "an integer's key is its digits, as before"
    assert len({key(s) for s in ("1", "10", "1.5", "15", "0x10", "abc", "1e5x")}) == 7, "other values stay apart"


@pytest.mark.parametrize("id_type, letter_id, later_id", [
    ("bigint", "1", "01"),
    ("numeric", "1", "1.0"),
    ("numeric", "10", "1e1"),
    ("bigint", "1", "1\t"),
])
def test_a_later_write_to_the_letters_row_in_another_spelling_holds_a_replay_back(
        workers, db, user, id_type, letter_id, later_id):
    """Found by an audit: a later write of the letter's row spelled `1.0` (a numeric id) or `1`
    and a tab (a bigint one) was not seen as the same row, and the replay went over it."""
    sub, token = user
    db.execute(f"create table public.spelled_rows (id {id_type} primary key, note text)")
    db.execute("grant select, insert, update, delete on public.spelled_rows to authenticated, service_role")
    try:
        db.execute(f"insert into public.spelled_rows (id, note) values ({letter_id}, 'first')")
        missing = new_id()
        t1 = tx(patch("spelled_rows", letter_id, note="v1"),
                put("todos", new_id(), description="x", list_id=missing, created_by=sub), tid=1)
        assert statuses(upload(workers["atomic"], token, with_client(body(t1), "client-spell"))) == ["fatal_error"]
        (letter,) = letters(db)
        t2 = tx(patch("spelled_rows", later_id, note="v2"), tid=2)
        assert statuses(upload(workers["atomic"], token, with_client(body(t2), "client-spell"))) == ["success"]
        insert_list(db, sub, list_id=missing)  # the cause, fixed
        result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
        note = db.execute("select note from public.spelled_rows").fetchone()[0]
        assert (result["replayed"], result.get("error", {}).get("code"), note) == (False, "55000", "v2"), (result, note)
    finally:
        db.execute("drop table public.spelled_rows")


def test_later_writes_to_other_rows_do_not_hold_a_replay_back(workers, db, user):
    """The user went on writing after a dead letter, as clients do: none of it touched the
    letter's rows, so the replay goes through without the operator's word."""
    sub, token = user
    list_id, missing, todo = insert_list(db, sub), new_id(), new_id()
    t1 = tx(put("todos", todo, description="x", list_id=missing, created_by=sub), tid=1)
    assert statuses(upload(workers["atomic"], token, with_client(body(t1), "client-other"))) == ["fatal_error"]
    (letter,) = letters(db)
    later = body(*[tx(put("todos", new_id(), description=f"n{i}", list_id=list_id, created_by=sub), tid=2 + i)
                   for i in range(3)])
    assert statuses(upload(workers["atomic"], token, with_client(later, "client-other"))) == ["success"] * 3
    insert_list(db, sub, list_id=missing)
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert result["replayed"] is True, result
    assert row(db, "todos", todo) is not None


def test_a_later_transaction_too_large_for_its_rows_to_be_kept_holds_a_replay_back(workers, db, user):
    """The ledger keeps the rows of a transaction of up to 1,000 entries; a later one of 1,001
    (none on the letter's row) could have written any row, so it counts as writing the letter's."""
    sub, token = user
    list_id, missing, todo = insert_list(db, sub), new_id(), new_id()
    t1 = tx(put("todos", todo, description="x", list_id=missing, created_by=sub), tid=1)
    assert statuses(upload(workers["atomic"], token, with_client(body(t1), "client-big"))) == ["fatal_error"]
    (letter,) = letters(db)
    big = tx(*[put("todos", new_id(), description=f"n{i}", list_id=list_id, created_by=sub) for i in range(1001)],
             tid=2)
    assert statuses(upload(workers["atomic"], token, with_client(body(big), "client-big"))) == ["success"]
    insert_list(db, sub, list_id=missing)
    refused = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert (refused["replayed"], refused["error"]["code"]) == (False, "55000"), refused
    assert "client-big/2" in refused["error"]["message"], refused
    assert row(db, "todos", todo) is None


def apply_as(pg, sub: str, ops: list[dict], client_id: str, transaction_id: str):
    """The atomic function called as user `sub` (as PostgREST would), committed."""
    with api_session(pg, sub) as conn:
        return conn.execute("select public.powersync_apply_transaction(%s::jsonb, null, null, %s, %s)",
                            (json.dumps(ops), client_id, transaction_id)).fetchone()[0]


def replay_in_own_session(pg, letter_id: int) -> dict:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        return conn.execute(f"select public.{REPLAY}(%s)", (letter_id,)).fetchone()[0]


def test_a_later_write_still_committing_while_a_replay_runs_is_seen_and_kept(workers, db, pg, user):
    """The user's later transaction has written the letter's row but not committed when the
    replay starts: the replay waits for its row lock, and once it commits, sees it and refuses
    (it read the ledger before its writes, and went over it)."""
    sub, token = user
    list_id, missing = insert_list(db, sub), new_id()
    edited = insert_todo(db, sub, list_id, "first")
    t1 = tx(patch("todos", edited, description="v1"),
            put("todos", new_id(), description="x", list_id=missing, created_by=sub), tid=1)
    assert statuses(upload(workers["atomic"], token, with_client(body(t1), "client-race"))) == ["fatal_error"]
    (letter,) = letters(db)
    insert_list(db, sub, list_id=missing)
    result: dict = {}
    with api_session(pg, sub) as later:  # the user's next transaction, still open
        later.execute("select public.powersync_apply_transaction(%s::jsonb, null, null, 'client-race', '2')",
                      (json.dumps([{"op": "PATCH", "table": "todos", "id": edited, "data": {"description": "v2"}}]),))
        replay = threading.Thread(target=lambda: result.update(replay_in_own_session(pg, letter["id"])))
        replay.start()
        deadline = time.monotonic() + 20
        while not db.execute("select exists (select 1 from pg_stat_activity where wait_event_type = 'Lock'"
                             f" and query like '%%{REPLAY}%%')").fetchone()[0]:
            assert time.monotonic() < deadline, "the replay never waited for the later transaction's lock"
            time.sleep(0.05)
        later.commit()
    replay.join(30)
    assert (result["replayed"], result["error"]["code"]) == (False, "55000"), result
    assert "client-race/2" in result["error"]["message"], result
    assert row(db, "todos", edited)["description"] == "v2"


def test_another_devices_write_just_before_the_letter_was_recorded_counts_as_later_the_same_clients_does_not(
        workers, db, user):
    """Client A's T1 on a row fails and is recorded a moment after client B's write of that row
    was applied: B's write may have come after A's attempt, so it counts. A's own earlier
    transaction on the row came before (a client sends one after another): it does not."""
    sub, token = user
    list_id, missing = insert_list(db, sub), new_id()
    edited = insert_todo(db, sub, list_id, "first")
    first = tx(patch("todos", edited, description="a0"), tid=0)
    assert statuses(upload(workers["atomic"], token, with_client(body(first), "client-a"))) == ["success"]
    other = tx(patch("todos", edited, description="b"), tid=5)
    assert statuses(upload(workers["atomic"], token, with_client(body(other), "client-b"))) == ["success"]
    t1 = tx(patch("todos", edited, description="v1"),
            put("todos", new_id(), description="x", list_id=missing, created_by=sub), tid=1)
    assert statuses(upload(workers["atomic"], token, with_client(body(t1), "client-a"))) == ["fatal_error"]
    (letter,) = letters(db)
    insert_list(db, sub, list_id=missing)
    refused = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert (refused["replayed"], refused["error"]["code"]) == (False, "55000"), refused
    message = refused["error"]["message"]
    assert "client-b/5" in message and "client-a/0" not in message, message
    assert row(db, "todos", edited)["description"] == "b"
    # without client B's write, client A's own earlier one holds nothing back
    db.execute(f"delete from {LEDGER} where client_id = 'client-b'")
    assert db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]["replayed"] is True
    assert row(db, "todos", edited)["description"] == "v1"


def test_a_later_transaction_reusing_a_discarded_letters_ids_still_holds_a_replay_back(workers, db, pg, user):
    """Only the replays of the user's earlier letters are not counted as later writes: a client
    whose database was reset reuses the ids of a discarded letter for a new write of the row."""
    sub, token = user
    list_id, missing = insert_list(db, sub), new_id()
    edited = insert_todo(db, sub, list_id, "first")
    discarded = tx(put("todos", new_id(), description="d", list_id=missing, created_by=sub), tid=5)
    assert statuses(upload(workers["atomic"], token, with_client(body(discarded), "client-r"))) == ["fatal_error"]
    (first,) = letters(db)
    db.execute("select public.powersync_discard_dead_letter(%s, 'not needed')", (first["id"],))
    t6 = tx(patch("todos", edited, description="v1"),
            put("todos", new_id(), description="x", list_id=missing, created_by=sub), tid=6)
    assert statuses(upload(workers["atomic"], token, with_client(body(t6), "client-r"))) == ["fatal_error"]
    letter = letters(db)[1]
    db.execute(f"delete from {LEDGER} where client_id = 'client-r' and transaction_id = '5'")  # expired
    reused = apply_as(pg, sub, [{"op": "PATCH", "table": "todos", "id": edited, "data": {"description": "v2"}}],
                      "client-r", "5")
    assert reused["applied"] == 1, reused
    insert_list(db, sub, list_id=missing)
    refused = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert (refused["replayed"], refused["error"]["code"]) == (False, "55000"), refused
    assert "client-r/5" in refused["error"]["message"], refused
    assert row(db, "todos", edited)["description"] == "v2"


def test_a_replay_with_the_ledgers_table_but_older_ledger_sql_is_refused_naming_the_file(workers, db, user):
    sub, token = user
    missing, todo = new_id(), new_id()
    t1 = tx(put("todos", todo, description="x", list_id=missing, created_by=sub), tid=1)
    assert statuses(upload(workers["atomic"], token, with_client(body(t1), "client-old"))) == ["fatal_error"]
    (letter,) = letters(db)
    insert_list(db, sub, list_id=missing)
    with db.transaction(force_rollback=True):  # the older file had no row keys
        db.execute("drop function public.powersync_upload_row_key(text, text)")
        refused = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert (refused["replayed"], refused["error"]["code"]) == (False, "55000"), refused
    assert "sql/atomic_upload.sql" in refused["error"]["hint"], refused
    assert db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]["replayed"] is True
    assert row(db, "todos", todo) is not None


def test_the_rows_a_user_records_in_the_ledger_are_bounded_and_kept_as_digests(pg, db, user):
    """powersync_upload_ledger_rows is the user's to call (as the atomic function does): what
    they can store with it stays small, whatever they send."""
    sub, _ = user
    for tid in ("few", "many"):
        claim_as(db, sub, tid)
    with api_session(pg, sub) as conn:
        for tid, keys in (("few", ["todos/" + "x" * 100_000, "todos/1", "todos/1"]),
                          ("many", [f"todos/{i}" for i in range(1001)])):
            conn.execute("select public.powersync_upload_ledger_rows('c', %s, null, %s)", (tid, keys))
    kept = dict(db.execute(f"select transaction_id, row_keys from {LEDGER} where user_id = %s", (sub,)).fetchall())
    assert kept["many"] is None, "over 1,000: not kept (counts as every row)"
    assert len(kept["few"]) == 2 and all(len(k) == 32 for k in kept["few"]), kept["few"]


def test_replays_go_in_the_users_order_and_one_replay_does_not_hold_back_the_next(workers, db, user):
    """Letters A then B of one user: B replayed first was applied, and A's replay then put the
    older values back over it. Now B waits for A; once A is replayed (a later write on record
    now), B is not refused for it: A's writes came first."""
    sub, token = user
    missing, first, second = new_id(), new_id(), new_id()
    for tid, todo in [(1, first), (2, second)]:
        payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub),
                                      tid=tid)), "client-order")
        assert statuses(upload(workers["atomic"], token, payload)) == ["fatal_error"]
    a, b = letters(db)
    insert_list(db, sub, list_id=missing)
    early = db.execute(f"select public.{REPLAY}(%s)", (b["id"],)).fetchone()[0]
    assert (early["replayed"], early["error"]["code"]) == (False, "55000"), early
    assert f"dead letter {a['id']} of the same user" in early["error"]["message"], early
    for letter in (a, b):
        result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
        assert result["replayed"] is True, result
    assert row(db, "todos", first) is not None and row(db, "todos", second) is not None


def test_transaction_applied_since_its_dead_letter_is_not_replayed(workers, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    assert statuses(upload(workers["atomic"], token, with_client(body(tx(bad_todo(sub, list_id), tid=5)),
                                                                 "client-x"))) == ["fatal_error"]
    (letter,) = letters(db)
    # the client (its database reset) applies other ops under the same ids
    renamed = upload(workers["atomic"], token, with_client(body(tx(patch("lists", list_id, name="new"), tid=5)),
                                                          "client-x"))
    assert statuses(renamed) == ["success"], renamed.text
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert (result["replayed"], result["error"]["code"]) == (False, "55000"), result
    assert count(db, "todos") == 0


def test_dead_lettered_transaction_is_never_applied_later_and_its_resend_is_answered_as_recorded(workers, db, user):
    """The client discarded a transaction reported fatal: a call of it that reaches the database
    after the bridge gave up on it, or its re-send after a lost answer, must not apply it once
    its cause is gone (it could undo what the client wrote since). Its replay still can."""
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub), tid=31)),
                          "client-late")
    first = upload(workers["atomic"], token, payload)
    assert statuses(first) == ["fatal_error"] and failure(first, 0)["code"] == "23503", first.text
    insert_list(db, sub, list_id=missing)  # the cause is gone: the same call would now apply
    again = upload(workers["atomic"], token, payload)
    assert statuses(again) == ["fatal_error"], again.text
    assert {k: failure(again, 0)[k] for k in ("index", "code", "message")} == \
        {k: failure(first, 0)[k] for k in ("index", "code", "message")}
    assert count(db, "todos") == 0
    (letter,) = letters(db)
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert result["replayed"] is True, result
    assert row(db, "todos", todo)["description"] == "d"
    resent = upload(workers["atomic"], token, payload)
    assert statuses(resent) == ["success"] and resent.json()["results"][0].get("already_applied") is True, resent.text


def test_a_dead_lettered_transaction_rejected_again_keeps_its_letter(workers, db, pg, user):
    """A dead-lettered transaction whose re-send reaches a worker without a dead-letter table (the
    setting removed) is recorded as rejected again: its record keeps the letter, so the answer
    still quotes it and the letter's replay still knows the transaction."""
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub), tid=61)),
                          "client-again")
    first = upload(workers["atomic"], token, payload)
    assert statuses(first) == ["fatal_error"], first.text
    (letter,) = letters(db)
    before = db.execute(f"select dead_letter_id, digest, entries_digest from public.{LEDGER}"
                        " where transaction_id = '61'").fetchone()
    assert before[0] == letter["id"] and before[2] is not None, before
    with api_session(pg, sub, before[2]) as conn:
        assert conn.execute("select public.powersync_upload_ledger_reject('client-again', '61')").fetchone()[0]
    after = db.execute(f"select dead_letter_id, digest, entries_digest from public.{LEDGER}"
                       " where transaction_id = '61'").fetchone()
    assert after == before
    again = upload(workers["atomic"], token, payload)
    assert failure(again, 0)["code"] == failure(first, 0)["code"], again.text


def test_a_rejection_without_a_letter_never_reads_a_dead_letter_kept_under_id_0(db, pg, user, other_user):
    """Dead letter id 0 in the ledger means "rejected, no letter". A row an older dead-letter table
    kept under id 0 (its ids were once a user's to choose) is never read for it."""
    sub, _ = user
    planter, _ = other_user
    db.execute("insert into public.powersync_dead_letters (id, user_id, entry, code, message)"
               " overriding system value values (0, %s, '{}', 'planted', 'from another user')", (planter,))
    with api_session(pg, sub, "c" * 32) as conn:
        assert conn.execute("select public.powersync_upload_ledger_reject('c0', '7')").fetchone()[0]
        answer = conn.execute("select public.powersync_upload_ledger_dead_letter('c0', '7')").fetchone()[0]
    assert answer == {"id": 0}
    with psycopg.connect(pg.dsn) as conn:
        conn.execute("select set_config('request.headers', %s, true)",
                     (json.dumps({"x-powersync-entries-digest": "c" * 32}),))
        assert conn.execute("select public.powersync_upload_ledger_letter_of(%s, 'c0', '7')",
                            (sub,)).fetchone() == (None,)


def test_a_resend_through_a_worker_whose_settings_write_other_ops_is_not_applied_again(workers, db, user):
    """Two attempts of one transaction reach workers whose settings differ (a JSON column set
    between them, or two versions of a gradual deployment): the ops they write differ, and so
    the ledger's digest of them. The ledger knows the re-send by the digest of the entries as
    the client sent them, so it does not apply it again over the client's later transaction."""
    sub, token = user
    list_id, todo = insert_list(db, sub), new_id()
    first = with_client(body(tx(put("todos", todo, description="v1", list_id=list_id, created_by=sub,
                                    tags='["a"]'), tid=41)), "client-skew")
    assert statuses(upload(workers["atomic_json"], token, first)) == ["success"]
    later = with_client(body(tx(patch("todos", todo, description="v2"), tid=42)), "client-skew")
    assert statuses(upload(workers["atomic_json"], token, later)) == ["success"]
    (digest,) = db.execute(f"select entries_digest from public.{LEDGER} where transaction_id = '41'").fetchone()
    assert digest is not None and len(digest) == 32, "the worker sends the entries' digest"
    resent = upload(workers["atomic"], token, first)  # tags written as a JSON string this time
    assert statuses(resent) == ["success"] and resent.json()["results"][0].get("already_applied") is True, resent.text
    stored = row(db, "todos", todo)
    assert (stored["description"], stored["tags"]) == ("v2", ["a"]), "transaction 42 stands"


def test_a_dead_lettered_transaction_resent_through_other_settings_is_answered_as_recorded(workers, db, user):
    """Dead-lettered by one worker, re-sent (after a lost answer) through a worker whose settings
    write its ops differently, once the cause is gone: still answered as the dead letter, and
    nothing applied (the client discarded it; only the replay applies it)."""
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub,
                                      tags='["a"]'), tid=51)), "client-skew")
    first = upload(workers["atomic"], token, payload)
    assert statuses(first) == ["fatal_error"] and failure(first, 0)["code"] == "23503", first.text
    insert_list(db, sub, list_id=missing)  # the same call would now apply
    again = upload(workers["atomic_json"], token, payload)
    assert statuses(again) == ["fatal_error"], again.text
    assert failure(again, 0)["code"] == "23503"
    assert row(db, "todos", todo) is None
    assert len(letters(db)) == 1


def test_replaying_an_older_dead_letter_of_reused_ids_never_marks_the_newer_transaction_applied(workers, db, user):
    """A client reset reuses transaction id 61: its old transaction X and its new one Y are both
    dead-lettered. Replaying X must not leave Y's entries digest on X's record, or Y's re-send
    would be answered as applied without ever being written."""
    sub, token = user
    x_list, x_todo, y_list, y_todo = new_id(), new_id(), new_id(), new_id()
    x = with_client(body(tx(put("todos", x_todo, description="x", list_id=x_list, created_by=sub), tid=61)),
                    "client-reset")
    y = with_client(body(tx(put("todos", y_todo, description="y", list_id=y_list, created_by=sub), tid=61)),
                    "client-reset")
    assert statuses(upload(workers["atomic"], token, x)) == ["fatal_error"]
    assert statuses(upload(workers["atomic"], token, y)) == ["fatal_error"]
    first, second = letters(db)
    insert_list(db, sub, list_id=x_list)
    assert db.execute(f"select public.{REPLAY}(%s)", (first["id"],)).fetchone()[0]["replayed"] is True
    insert_list(db, sub, list_id=y_list)
    resent = upload(workers["atomic"], token, y)  # Y's answer was lost: the client sends it again
    written = row(db, "todos", y_todo) is not None
    assert written or not resent.json()["results"][0].get("already_applied"), resent.text


def test_a_dead_letter_keeps_every_digit_so_its_transaction_stays_recorded_and_replays_as_sent(workers, db, user):
    """A JSON column's number no float holds: the dead letter's ops are the atomic call's, digit
    for digit. Else the ledger's digest of them differs from the call's, and a late call or
    re-send of the rejected transaction would apply it; and a replay would write other data."""
    sub, token = user
    missing, todo = new_id(), new_id()
    tags = '{"n": 12345678901234567890123, "pi": 3.14159265358979323846}'
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub, tags=tags),
                                  tid=41)), "client-digits")
    first = upload(workers["atomic_json"], token, payload)
    assert statuses(first) == ["fatal_error"] and failure(first, 0)["code"] == "23503", first.text
    stored = db.execute(f"select entries->0->'data'->'tags'->>'n', entries->0->'data'->'tags'->>'pi'"
                        f" from {DEAD_LETTERS}").fetchone()
    assert stored == ("12345678901234567890123", "3.14159265358979323846")
    insert_list(db, sub, list_id=missing)  # the cause is gone: the same call would now apply
    again = upload(workers["atomic_json"], token, payload)
    assert statuses(again) == ["fatal_error"], again.text
    assert count(db, "todos") == 0
    (letter,) = letters(db)
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert result["replayed"] is True, result
    assert db.execute("select tags->>'n' from todos where id = %s", (todo,)).fetchone() == ("12345678901234567890123",)


@pytest.mark.parametrize("route", ["rest", "atomic"])
def test_a_replay_types_times_and_dates_as_the_upload_did_not_as_the_operators_session(route, workers, db, pg, user):
    """A zone-less timestamp in the day-month-ambiguous form SQLite apps write: replayed from a
    session with another TimeZone and DateStyle (psql with PGTZ, a GUI client), it landed an hour
    off and with day and month swapped, answered as replayed."""
    sub, token = user
    list_id, missing = insert_list(db, sub), new_id()
    when = "01/02/2024 10:00:00"
    direct, refused = new_id(), new_id()
    ok = upload(workers[route], token, body(tx(put("todos", direct, description="d", list_id=list_id,
                                                   created_by=sub, completed_at=when), tid=1)))
    assert statuses(ok) == ["success"], ok.text
    rejected = upload(workers[route], token, body(tx(put("todos", refused, description="r", list_id=missing,
                                                         created_by=sub, completed_at=when), tid=2)))
    assert statuses(rejected) == ["fatal_error"], rejected.text
    (letter,) = letters(db)
    insert_list(db, sub, list_id=missing)
    with psycopg.connect(pg.dsn, autocommit=True) as operator:
        operator.execute("set timezone = 'Europe/Berlin'")
        operator.execute("set datestyle = 'ISO, DMY'")
        result = operator.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
        assert result["replayed"] is True, result
        assert operator.execute("select current_setting('TimeZone'), current_setting('DateStyle')").fetchone() == \
            ("Europe/Berlin", "ISO, DMY"), "the operator's session is restored"
    assert row(db, "todos", refused)["completed_at"] == row(db, "todos", direct)["completed_at"]


@pytest.mark.parametrize("route", ["rest", "atomic"])
def test_a_value_postgresql_cannot_hold_is_dead_lettered_not_retried_for_ever(route, workers, db, user):
    """A lone surrogate escape (`\\ud800`): the database refuses it for good, and so did the dead
    letter's jsonb, so the transaction was retried for ever. The record holds U+FFFD instead, and
    the failing entry keeps each value's text (1e400 is no float)."""
    sub, token = user
    list_id = insert_list(db, sub)
    payload = body(tx(put("todos", new_id(), description="x\ud800y", list_id=list_id, created_by=sub,
                          tags={"n": "BIG"}), tid=5))
    response = upload(workers[route], token, raw=json.dumps(payload).replace('"BIG"', "1e400"))
    assert statuses(response) == ["fatal_error"], response.text
    (letter,) = letters(db)
    entry = letter["entry"] if isinstance(letter["entry"], dict) else letter["entry"][0]
    assert entry["data"]["description"] == "x\ufffdy", letter
    # (the entry is the whole transaction when the failure names no entry: atomic mode, here)
    assert db.execute(f"select coalesce(entry #>> '{{data,tags,n}}', entry #>> '{{0,data,tags,n}}'),"
                      f" entries #>> '{{0,data,tags,n}}' from {DEAD_LETTERS}").fetchone() == ("1" + "0" * 400,) * 2


def test_dead_letter_of_a_transaction_the_ledger_holds_applied_is_refused_so_the_client_keeps_it(
        as_user, db, user):
    """A late call applied the transaction before the bridge recorded it as rejected: the record
    fails (the bridge then keeps the transaction queued, and its re-send is already applied)."""
    sub, _ = user
    api = as_user(sub)
    list_id = insert_list(db, sub)
    ops = [{"op": "PATCH", "table": "lists", "id": list_id, "data": {"name": "late"}}]
    applied = api.rpc("powersync_apply_transaction", {"ops": ops, "client_id": "client-r", "transaction_id": "9"})
    assert applied.status_code == 200 and applied.json()["applied"] == 1, applied.text
    refused = api.rpc(RECORD, {"entries": [{**ops[0], "state": "failed"}], "code": "23514", "message": "m",
                               "transaction_id": "9", "client_id": "client-r", "op_index": 0})
    assert refused.json()["code"] == "55000", refused.text
    assert letters(db) == []
    # other ops under the same ids (a reused id) are a new transaction: recorded
    other = [{**ops[0], "data": {"name": "other"}, "state": "failed"}]
    recorded = api.rpc(RECORD, {"entries": other, "code": "23514", "message": "m", "transaction_id": "9",
                                "client_id": "client-r", "op_index": 0})
    assert recorded.status_code == 200 and len(letters(db)) == 1, recorded.text


def test_ledger_helpers_behind_the_dead_letter_are_not_callable_by_users(as_user, db, user, other_user):
    a, _ = user
    b, _ = other_user
    api = as_user(a)
    refuse = api.rpc("powersync_upload_ledger_refuse", {"p_user_id": b, "p_client_id": "c", "p_transaction_id": "t",
                                                        "p_digest": "0" * 64, "p_dead_letter_id": 1})
    assert refuse.status_code in (401, 403, 404), refuse.text
    assert api.rpc("powersync_upload_ledger_user", {"p_owner_id": b}).status_code in (401, 403, 404)
    assert count(db, "powersync_upload_ledger") == 0


# =========================================================================== the ledger
def test_ledger_claim_refuses_bad_inputs_from_a_user(as_user, db, user, other_user):
    a, _ = user
    b, _ = other_user
    api = as_user(a)
    good = {"p_client_id": "c", "p_transaction_id": "t", "p_digest": "0" * 64}
    for bad in [{"p_digest": "f" * 2_000_000}, {"p_digest": "A" * 64}, {"p_digest": "0" * 63},
                {"p_client_id": "c" * 257}, {"p_transaction_id": "t" * 257}, {"p_client_id": ""}]:
        answer = api.rpc(CLAIM, {**good, **bad})
        assert (answer.status_code, answer.json()["code"]) == (400, "22023"), (list(bad), answer.text[:200])
    assert count(db, "powersync_upload_ledger") == 0
    # p_owner_id cannot make it another user's record
    assert api.rpc(CLAIM, {**good, "p_owner_id": b}).json() is False
    assert api.rpc(CLAIM, {**good, "p_owner_id": b}).json() is True
    assert db.execute("select user_id from powersync_upload_ledger").fetchall() == [(a,)]
    # the settings are out of reach
    for method in ("get", "post", "patch"):
        answer = getattr(api, method)("powersync_upload_ledger_settings",
                                      **({"json": {"retention": "1 second"}} if method != "get" else {}),
                                      **({"query": "id=eq.true"} if method == "patch" else {}))
        assert answer.status_code in (401, 403), (method, answer.text)


def test_ledgers_unchanged_entries_are_the_callers_own_and_checked(as_user, db, user, other_user):
    """What a re-send reports as unchanged is recorded on the caller's own ledger record only."""
    a, _ = user
    b, _ = other_user
    ids = {"p_client_id": "c", "p_transaction_id": "t"}
    assert as_user(a).rpc(CLAIM, {**ids, "p_digest": "0" * 64}).json() is False
    for bad in ([-1], [1, None]):
        answer = as_user(a).rpc(UNCHANGED, {**ids, "p_unchanged": bad})
        assert (answer.status_code, answer.json()["code"]) == (400, "22023"), (bad, answer.text[:200])
    assert as_user(a).rpc(UNCHANGED, {**ids, "p_unchanged": [2, 5]}).json() == [2, 5]
    assert as_user(a).rpc(UNCHANGED, ids).json() == [2, 5]
    # another user names the same ids, and a's sub as owner: their own (absent) record, not a's
    assert as_user(b).rpc(UNCHANGED, {**ids, "p_owner_id": a, "p_unchanged": [9]}).json() == []
    assert as_user(b).rpc(UNCHANGED, {**ids, "p_owner_id": a}).json() == []
    assert db.execute("select user_id, unchanged from powersync_upload_ledger").fetchall() == [(a, [2, 5])]


def claim_as(db, sub: str, transaction_id: str, settings: str = "") -> bool:
    """A claim as user `sub` in its own transaction (settings: SQL run first in it)."""
    with db.transaction():
        if settings:
            db.execute(settings)
        db.execute("select set_config('request.jwt.claims', %s, true)", (f'{{"sub": "{sub}"}}',))
        db.execute("set local role authenticated")
        return db.execute(f"select public.{CLAIM}('c', %s, %s)", (transaction_id, "1" * 64)).fetchone()[0]


def test_ledger_retention_is_not_a_session_setting_and_is_clamped(db, user, other_user):
    a, _ = user
    b, _ = other_user
    db.execute("insert into powersync_upload_ledger (user_id, client_id, transaction_id, digest, applied_at)"
               " values (%s, 'c', 'hours-old', %s, now() - interval '2 hours'),"
               "        (%s, 'c', 'days-old', %s, now() - interval '2 days')", (a, "2" * 64, a, "2" * 64))
    # a session cannot shorten it (the old function read powersync.ledger_retention)
    claim_as(db, b, "t1", "set local powersync.ledger_retention = '1 second'")
    assert count(db, "powersync_upload_ledger") == 3
    try:
        db.execute("update powersync_upload_ledger_settings set retention = '1 second'")
        claim_as(db, b, "t2")
        kept = [r[0] for r in db.execute("select transaction_id from powersync_upload_ledger where user_id = %s", (a,))]
        assert kept == ["hours-old"], "clamped to at least 1 day"
    finally:
        db.execute("update powersync_upload_ledger_settings set retention = '30 days'")


def test_a_users_ledger_is_capped_and_only_their_own_oldest_records_go(db, user, other_user):
    a, _ = user
    b, _ = other_user
    try:
        db.execute("update powersync_upload_ledger_settings set max_records_per_user = 10")  # clamped to 1,000
        db.execute("insert into powersync_upload_ledger (user_id, client_id, transaction_id, digest, applied_at)"
                   " select %s, 'c', 'old-' || i, %s, now() - interval '1 hour' + i * interval '1 second'"
                   " from generate_series(1, 1000) as i", (a, "3" * 64))
        db.execute("insert into powersync_upload_ledger (user_id, client_id, transaction_id, digest, applied_at)"
                   " values (%s, 'c', 'b-old', %s, now() - interval '2 hours')", (b, "3" * 64))
        assert claim_as(db, a, "new") is False
        ids = {r[0] for r in db.execute("select transaction_id from powersync_upload_ledger where user_id = %s", (a,))}
        assert len(ids) == 1000 and "old-1" not in ids and "new" in ids and "old-2" in ids
        assert count(db, "powersync_upload_ledger") == 1001, "the other user's record stays"
    finally:
        db.execute("update powersync_upload_ledger_settings set max_records_per_user = 10000")


# =========================================================================== the SQL files
SQL_FILES = [ROOT / "tests/sql/test_schema.sql", ROOT / "sql/atomic_upload.sql", ROOT / "sql/dead_letter.sql",
             ROOT / "sql/doctor.sql"]


def run_file(pg, database: str, path) -> None:
    proc = subprocess.run([*pg.psql_args(database), "-f", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300,
                          env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"})
    assert proc.returncode == 0, proc.stdout


@pytest.fixture
def fresh_database(pg):
    """fresh_database(name) -> a DSN of a new, empty database of the session's server."""
    made = []

    def make(name: str) -> str:
        name = f"{name}_{uuid.uuid4().hex[:8]}"
        pg.create_database(name)
        made.append(name)
        return pg.url(name)

    yield make
    for name in made:
        pg.run_sql(f"drop database if exists {name} with (force)")


TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
API_ROLES = ("anon", "authenticated", "service_role")


def privileges(conn) -> dict:
    """Every privilege an API role holds on the objects the SQL files create."""
    held: dict = {}
    for table in ("powersync_dead_letters", "powersync_upload_ledger", "powersync_upload_ledger_settings"):
        for role in API_ROLES:
            held[(table, role)] = {p for p in TABLE_PRIVILEGES if conn.execute(
                "select has_table_privilege(%s, %s, %s)", (role, f"public.{table}", p)).fetchone()[0]}
            held[(table, role, "columns updatable")] = {c for (c,) in conn.execute(
                "select attname from pg_attribute where attrelid = %s::regclass and attnum > 0"
                " and not attisdropped and has_column_privilege(%s, attrelid, attnum, 'UPDATE')",
                (f"public.{table}", role))}
    sequence = conn.execute("select pg_get_serial_sequence('public.powersync_dead_letters', 'id')").fetchone()[0]
    for role in API_ROLES:
        held[("dead letter ids", role)] = {p for p in ("USAGE", "SELECT", "UPDATE") if conn.execute(
            "select has_sequence_privilege(%s, %s, %s)", (role, sequence, p)).fetchone()[0]}
    functions = conn.execute(
        "select p.oid::regprocedure::text, p.oid from pg_proc p where p.pronamespace = 'public'::regnamespace"
        " and p.proname like 'powersync%%'").fetchall()
    for name, oid in functions:
        held[(name, "EXECUTE")] = {r for r in API_ROLES + ("public",) if conn.execute(
            "select has_function_privilege(%s, %s::oid, 'EXECUTE')", (r, oid)).fetchone()[0]}
    return held


EXPECTED = {
    **{(t, r): set() for t in ("powersync_dead_letters", "powersync_upload_ledger",
                                "powersync_upload_ledger_settings") for r in API_ROLES},
    ("powersync_dead_letters", "authenticated"): {"SELECT"},
    ("powersync_dead_letters", "service_role"): {"SELECT"},
    **{(t, r, "columns updatable"): set() for t in ("powersync_dead_letters", "powersync_upload_ledger",
                                                    "powersync_upload_ledger_settings") for r in API_ROLES},
    ("powersync_dead_letters", "service_role", "columns updatable"):
        {"replayed_at", "replay_result", "replay_error", "replay_attempted_at",
         "discarded_at", "discard_reason", "discarded_by"},
    **{("dead letter ids", r): set() for r in API_ROLES},
    ("powersync_apply_transaction(jsonb,text,text,text,text,boolean)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_claim(text,text,text,text,timestamp with time zone)", "EXECUTE"):
        {"authenticated", "service_role"},
    ("powersync_upload_ledger_dead_letter(text,text,text)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_unchanged(text,text,text,integer[])", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_reject(text,text,text,jsonb)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_applied_via_rest(text,text,text,integer[])", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_rest_begin(text,text,text,text)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_rest_abandon(text,text,text,text)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_applied_since(text,timestamp with time zone)", "EXECUTE"): {"service_role"},
    ("powersync_upload_ledger_rows(text,text,text,text[])", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_row_key(text,text)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_number_key(text)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_policy_gap(text,text)", "EXECUTE"): {"authenticated", "service_role"},
    ("powersync_upload_ledger_refuse(text,text,text,text,bigint)", "EXECUTE"): set(),
    ("powersync_upload_entries_digest()", "EXECUTE"): set(),
    ("powersync_upload_request_token(text)", "EXECUTE"): set(),
    ("powersync_upload_ledger_caller(text,text,text,text)", "EXECUTE"): set(),
    ("powersync_upload_ledger_letter_of(text,text,text)", "EXECUTE"): set(),
    ("powersync_upload_ledger_user(text)", "EXECUTE"): set(),
    ("powersync_upload_ledger_cap(text,integer)", "EXECUTE"): set(),
    ("powersync_record_dead_letter(jsonb,text,text,text,text,text,integer,jsonb,text,text,text[])", "EXECUTE"):
        {"authenticated", "service_role"},
    ("powersync_replay_dead_letter(bigint,boolean)", "EXECUTE"): {"service_role"},
    ("powersync_discard_dead_letter(bigint,text)", "EXECUTE"): {"service_role"},
    ("powersync_doctor(jsonb,text[])", "EXECUTE"): {"service_role"},
}


@pytest.mark.parametrize("defaults", ["none", "supabase_before_2026"])
def test_sql_files_grant_exactly_what_they_need(pg, fresh_database, defaults):
    # Supabase projects created before the 2026 change grant every new table, sequence and
    # function in public to the API roles by default; newer ones grant nothing. Either way the
    # files end with exactly these privileges (and PUBLIC executes none of the functions).
    dsn = fresh_database("grants")
    with psycopg.connect(dsn, autocommit=True) as conn:
        if defaults == "supabase_before_2026":
            for kind in ("tables", "sequences", "functions"):
                conn.execute(f"alter default privileges in schema public grant all on {kind}"
                             " to anon, authenticated, service_role")
    for path in SQL_FILES:
        run_file(pg, dsn.rsplit("/", 1)[1], path)
    with psycopg.connect(dsn, autocommit=True) as conn:
        held = privileges(conn)
    assert held == EXPECTED


def test_rerunning_dead_letter_sql_upgrades_an_older_table_in_place(pg, fresh_database):
    dsn = fresh_database("upgrade")
    database = dsn.rsplit("/", 1)[1]
    for path in SQL_FILES[:2] + [ROOT / "tests/sql/dead_letter_before_issue15.sql"]:
        run_file(pg, database, path)
    user = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"insert into {DEAD_LETTERS} (user_id, transaction_id, op_index, entry, entries, code)"
                     " values (%s, '1', 0, '{}', '[]', '23505'), (null, '2', null, '[]', null, 'x')", (user,))
        # the old table let users choose ids: ones near bigint's end, or right where the numbering
        # goes on, must not end it or fail records
        next_ = conn.execute("select nextval('public.powersync_dead_letters_id_seq')").fetchone()[0]
        conn.execute(f"select setval('public.powersync_dead_letters_id_seq', {next_ - 1})")
        planted = [next_, next_ + 1, 2 ** 62 - 1, 2 ** 62, 2 ** 62 + 1, 2 ** 63 - 2]
        for planted_id in planted:
            conn.execute(f"insert into {DEAD_LETTERS} (id, user_id, entry) values (%s, %s, '{{}}')", (planted_id, user))
        before = conn.execute(f"select id, user_id::text, transaction_id, entry, code from {DEAD_LETTERS}"
                              " where id < %s order by id", (next_,)).fetchall()
    for _ in range(2):  # idempotent
        run_file(pg, database, ROOT / "sql/dead_letter.sql")
    with psycopg.connect(dsn, autocommit=True) as conn:
        after = conn.execute(f"select id, user_id, transaction_id, entry, code from {DEAD_LETTERS}"
                             " where id > 0 order by id").fetchall()
        assert after == before
        # the planted rows are kept, out of the numbering's way
        assert sorted(-i for (i,) in conn.execute(f"select id from {DEAD_LETTERS} where id < 0")) == planted
        assert conn.execute(f"select pg_typeof(user_id)::text from {DEAD_LETTERS} limit 1").fetchone() == ("text",)
        assert conn.execute("select attidentity from pg_attribute where attrelid = %s::regclass"
                            " and attname = 'id'", (DEAD_LETTERS,)).fetchone() == ("a",)
        # new rows continue after the old ids; old rows, without provenance, are not replayable
        new_ids = [conn.execute(f"select public.{RECORD}('[]', 'x', %s, user_id => 'u', owner_column => 'o')",
                                (f"m{n}",)).fetchone()[0] for n in range(3)]
        assert new_ids == [next_, next_ + 1, next_ + 2]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"select public.{REPLAY}(%s)", (before[0][0],))


# =========================================================================== unchanged entries


def test_unchanged_entries_are_recorded_only_with_the_setting_and_replay_as_the_writer(workers, db, user,
                                                                                        other_user):
    """UPLOAD_DEAD_LETTER_UNCHANGED: an applied transaction whose PATCH changed no row (its row
    was gone, or hidden by RLS) is recorded with code `unchanged`; its replay runs as the writer:
    the gone row's PATCH applies once the row is back, the hidden row stays untouched."""
    sub, token = user
    other, _ = other_user
    mine = insert_list(db, sub, name="mine")
    gone, hidden = new_id(), insert_list(db, other, name="b's")
    payload = body(tx(patch("lists", mine, name="renamed"), patch("lists", gone, name="late"),
                      patch("lists", hidden, name="taken"), tid="u1"))

    plain = upload(workers["rest"], token, payload)
    assert statuses(plain) == ["success"] and plain.json()["results"][0]["unchanged"] == [1, 2], plain.text
    assert letters(db) == [], "off by default"

    response = upload(workers["unchanged"], token, with_client(payload, "c-unchanged"))
    assert statuses(response) == ["success"] and response.json()["results"][0]["unchanged"] == [1, 2], response.text
    (letter,) = letters(db)
    assert (letter["code"], letter["op_index"], letter["user_id"], letter["recorded_as"]) == \
        ("unchanged", 1, sub, "user")
    assert [e["state"] for e in letter["entries"]] == ["applied", "unchanged", "unchanged"]
    assert upload(workers["unchanged"], token, with_client(payload, "c-unchanged")).status_code == 200
    assert len(letters(db)) == 1, "a re-send adds no second record"

    insert_list(db, sub, name="back", list_id=gone)  # the operator brings the row back
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    # unchanged: entry 2 of the letter (the hidden row), not the second op sent
    assert (result["replayed"], result["applied"], result["unchanged"]) == (True, 2, [2]), result
    assert db.execute(f"select replay_result -> 'unchanged' from {DEAD_LETTERS} where id = %s",
                      (letter["id"],)).fetchone()[0] == [2]
    assert row(db, "lists", gone)["name"] == "late"
    assert row(db, "lists", hidden)["name"] == "b's", "replayed as the writer: B's row stays hidden"


def test_unchanged_record_of_an_atomic_transaction_replays_once_the_row_is_back(workers, db, user):
    """The ledger holds the transaction applied (it was): the replay of its unchanged entries
    is not refused as "applied since", and a re-send of it still applies nothing."""
    sub, token = user
    gone = new_id()
    payload = with_client(body(tx(patch("lists", gone, name="late"), tid="u4")), "c-atomic-replay")
    response = upload(workers["atomic_unchanged"], token, payload)
    assert statuses(response) == ["success"] and response.json()["results"][0]["unchanged"] == [0], response.text
    (letter,) = letters(db)
    insert_list(db, sub, name="back", list_id=gone)
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert (result["replayed"], result["applied"], result["unchanged"]) == (True, 1, []), result
    assert row(db, "lists", gone)["name"] == "late"
    db.execute("update lists set name = 'changed later' where id = %s", (gone,))
    again = upload(workers["atomic_unchanged"], token, payload)
    assert again.json()["results"][0].get("already_applied") is True, again.text
    assert row(db, "lists", gone)["name"] == "changed later"


@pytest.mark.parametrize("transaction_id", ["", "t" * 300])
def test_dead_letter_of_a_transaction_id_the_ledger_does_not_take_replays(workers, db, user, transaction_id):
    """An empty transaction id, or one over 256 bytes, went without a ledger record: its replay
    does not ask the ledger either (which refuses such ids, 22023, on every attempt)."""
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub),
                                  tid=transaction_id)), "client-long-id")
    assert statuses(upload(workers["atomic"], token, payload)) == ["fatal_error"]
    (letter,) = letters(db)
    assert letter["transaction_id"] == transaction_id
    insert_list(db, sub, list_id=missing)
    result = db.execute(f"select public.{REPLAY}(%s)", (letter["id"],)).fetchone()[0]
    assert result["replayed"] is True, result
    assert row(db, "todos", todo)["description"] == "d"


def test_unchanged_record_of_an_atomic_transaction_leaves_it_applied_in_the_ledger(workers, db, user):
    """The `unchanged` record is of an applied transaction: it is recorded, and a re-send is
    already applied (not answered as a rejected transaction's dead letter)."""
    sub, token = user
    payload = with_client(body(tx(patch("lists", new_id(), name="gone"), tid="u2")), "c-atomic-unchanged")
    response = upload(workers["atomic_unchanged"], token, payload)
    assert statuses(response) == ["success"] and response.json()["results"][0]["unchanged"] == [0], response.text
    assert [letter["code"] for letter in letters(db)] == ["unchanged"]
    again = upload(workers["atomic_unchanged"], token, payload)
    assert statuses(again) == ["success"] and again.json()["results"][0].get("already_applied") is True, again.text


def test_an_atomic_transaction_whose_answer_was_lost_still_reports_and_records_its_unchanged_entries(
        workers, db, standin, user, other_user):
    """The atomic call commits, its answer is lost (the connection drops after the database
    applied it) and the worker sends it again at once: the ledger answers already applied, with
    the entries the first call changed no row of, so the client learns them and their record is
    made as if the first answer had arrived. Before, the re-send reported none and recorded
    nothing: a write hidden by a policy was gone without a trace."""
    sub, token = user
    other, _ = other_user
    mine, hidden = insert_list(db, sub, name="mine"), insert_list(db, other, name="b's")
    payload = with_client(body(tx(patch("lists", mine, name="renamed"), patch("lists", hidden, name="taken"),
                                  tid="u3")), "c-lost-answer")
    standin.add_fault({"drop_after": True, "method": "POST", "path_prefix": APPLY_PATH})
    response = upload(workers["atomic_unchanged"], token, payload)
    assert standin.faults == [], "the fault was used: the first answer was lost"
    result = response.json()["results"][0]
    assert (result["status"], result.get("already_applied"), result.get("unchanged")) == ("success", True, [1]), \
        response.text
    assert (row(db, "lists", mine)["name"], row(db, "lists", hidden)["name"]) == ("renamed", "b's")
    (letter,) = letters(db)
    assert (letter["code"], letter["op_index"], letter["transaction_id"]) == ("unchanged", 1, "u3")
    assert [e["state"] for e in letter["entries"]] == ["applied", "unchanged"]


def test_a_user_over_the_dead_letter_cap_keeps_their_own_transactions_queued_and_no_one_elses(
        workers, db, user, other_user):
    """Recording is open to a user through /rpc, so a user's waiting dead letters are capped
    (10,000): beyond it their next fatal transaction stays queued (dead_letter_failed), while
    another user's is still recorded and discarded as usual."""
    sub, token = user
    other, other_token = other_user
    db.execute(f"insert into {DEAD_LETTERS} (user_id, entry, entries, code, recorded_as)"
               " select %s, '{}'::jsonb, '[]'::jsonb, 'planted', 'user' from generate_series(1, 10000)", (sub,))
    mine, theirs = insert_list(db, sub), insert_list(db, other)

    response = upload(workers["rest"], token, body(tx(bad_todo(sub, mine), tid="over")))
    assert statuses(response) == ["retryable_error"], response.text
    assert failure(response, 0)["code"] == "dead_letter_failed", response.text
    assert response.status_code == 503

    response = upload(workers["rest"], other_token, body(tx(bad_todo(other, theirs), tid="fine")))
    assert statuses(response) == ["fatal_error"], response.text
    assert db.execute(f"select count(*) from {DEAD_LETTERS} where user_id = %s", (other,)).fetchone()[0] == 1

    db.execute(f"update {DEAD_LETTERS} set replayed_at = now() where user_id = %s and code = 'planted'", (sub,))
    response = upload(workers["rest"], token, body(tx(bad_todo(sub, mine), tid="over")))
    assert statuses(response) == ["fatal_error"], "recorded once the operator has dealt with the waiting ones"
