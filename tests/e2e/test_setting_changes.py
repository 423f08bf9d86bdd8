"""An operator changing settings while a transaction is between two attempts.

Each test sends one transaction through a worker of one configuration, treats its answer as
lost (the client keeps it), and sends it again through a worker of another configuration, as
after a deployment that changed a setting. The ledger (sql/atomic_upload.sql) makes the second
attempt answer as the first one would have (docs/upload.md, "Late writes"), the dead-letter
table holds one record per transaction that says what is applied, and a setting that no longer
fits the schema waits for the operator instead of discarding the client's valid data.

Worker instances (started once for the module, in parallel):
  svc        UPLOAD_MODE=service, owner column todos.created_by, UPLOAD_ATOMIC=true
  dl         rls mode, UPLOAD_ATOMIC=true, dead letters, UPLOAD_DEAD_LETTER_UNCHANGED=true
  dl_json    as dl, with UPLOAD_JSON_COLUMNS=todos.tags
  auto       UPLOAD_ATOMIC unset, subrequest budget 100 (room for the statement-timeout fallback)
  auto_dl    as auto, with dead letters
  rest_dl    UPLOAD_ATOMIC=false, dead letters
  bool_rest / bool_atomic   UPLOAD_BOOLEAN_COLUMNS naming an integer column (todos.priority)
"""

from __future__ import annotations

import uuid

import pytest

from tests.e2e.upload_helpers import body, failure, patch, put, statuses, tx, upload
from tests.support.db import insert_list, insert_todo, new_id, row

DEAD = {"UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters"}
RPC = "/rest/v1/rpc/powersync_apply_transaction"
CANCELLED = {"code": "57014", "message": "canceling statement due to statement timeout", "details": None,
             "hint": None}


@pytest.fixture(scope="module")
def workers(base_vars, start_workers):
    return start_workers({
        "svc": {**base_vars, "UPLOAD_ATOMIC": "true", "UPLOAD_MODE": "service",
                "UPLOAD_TABLES": "todos,lists", "UPLOAD_OWNER_COLUMN": "created_by"},
        "dl": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "true", "UPLOAD_DEAD_LETTER_UNCHANGED": "true"},
        "dl_json": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "true", "UPLOAD_DEAD_LETTER_UNCHANGED": "true",
                    "UPLOAD_JSON_COLUMNS": "todos.tags"},
        "auto": {**base_vars, "UPLOAD_SUBREQUEST_BUDGET": "100"},
        "auto_dl": {**base_vars, **DEAD, "UPLOAD_SUBREQUEST_BUDGET": "100"},
        "rest_dl": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "false"},
        "bool_rest": {**base_vars, "UPLOAD_ATOMIC": "false", "UPLOAD_BOOLEAN_COLUMNS": "todos.priority"},
        "bool_atomic": {**base_vars, "UPLOAD_ATOMIC": "true", "UPLOAD_BOOLEAN_COLUMNS": "todos.priority"},
    })


def with_client(payload: dict, client_id: str) -> dict:
    return {**payload, "client_id": client_id}


def letters(db) -> list[dict]:
    return [r[0] for r in db.execute("select to_jsonb(d) from powersync_dead_letters d order by id")]


def test_a_transaction_the_ledger_holds_applied_is_answered_already_applied_when_a_later_setting_refuses_it_before_sending(
        workers, db, user):
    """Applied through the atomic function, its answer lost; the operator then lists the column
    in UPLOAD_JSON_COLUMNS. The re-send is refused before anything is sent (`invalid_json`),
    without asking the ledger, and the ledger refuses that rejection's record (55000: it holds
    the transaction applied): answered `already_applied`, so the user's later transactions go on
    (kept instead, it would be kept on every attempt, the queue behind it for ever)."""
    sub, token = user
    list_id = insert_list(db, sub)
    todo = new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=list_id, created_by=sub,
                                      tags="urgent"),
                                  patch("todos", new_id(), description="gone"), tid=1),
                               tx(put("todos", new_id(), description="later", list_id=list_id,
                                      created_by=sub), tid=2)), "client-json")
    first = upload(workers["dl"], token, {**payload, "transactions": payload["transactions"][:1]})
    assert statuses(first) == ["success"] and first.json()["results"][0]["unchanged"] == [1], first.text
    assert row(db, "todos", todo) is not None

    again = upload(workers["dl_json"], token, payload)
    assert statuses(again) == ["success", "success"], again.text
    result = again.json()["results"][0]
    assert result.get("already_applied") is True, again.text
    assert result.get("unchanged") == [1], f"the ledger's unchanged entry, as first answered: {result}"
    assert [letter["code"] for letter in letters(db)] == ["unchanged"], "nothing was rejected"


def test_a_dependent_transaction_the_ledger_holds_applied_is_answered_already_applied_after_upload_atomic_false(
        workers, db, user):
    """The same through UPLOAD_ATOMIC=true -> false: applied through the function, answer lost,
    re-sent through REST requests, which never ask the ledger; the dependent re-send fails
    (23503), and the ledger refuses its dead letter (55000, applied): answered `already_applied`,
    the user's later transactions after it."""
    sub, token = user
    list_id = insert_list(db, sub)
    payload = with_client(body(tx(put("todos", new_id(), description="d", list_id=list_id, created_by=sub),
                                  {"op": "DELETE", "table": "lists", "id": list_id}, tid=1),
                               tx(put("lists", new_id(), name="later", owner_id=sub), tid=2)), "client-dep")
    first = upload(workers["dl"], token, {**payload, "transactions": payload["transactions"][:1]})
    assert statuses(first) == ["success"], first.text

    again = upload(workers["rest_dl"], token, payload)
    assert statuses(again) == ["success", "success"], again.text
    assert again.json()["results"][0].get("already_applied") is True, again.text
    assert row(db, "lists", list_id) is None, "the first attempt's delete stands"


def test_a_dead_letter_recorded_for_a_held_rest_fallback_rejection_says_what_was_applied(
        workers, db, standin, user):
    """Without a dead-letter table, the statement-timeout fallback applies entry 0 through REST
    and entry 1 is refused (23514): fatal_error, applied_via rest, the ledger holds it rejected.
    That answer is lost; the operator sets UPLOAD_DEAD_LETTER_TABLE; the re-send is answered as
    held and now dead-lettered, its letter saying entry 0 `applied` (it was written, and a
    replay leaves it out), as the letter made with the table set from the start would."""
    sub, token = user
    list_id = insert_list(db, sub)
    todo = insert_todo(db, sub, list_id, "v0")
    payload = with_client(body(tx(patch("todos", todo, description="v1"), patch("todos", todo, priority=9),
                                  tid=1)), "client-dl")
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    first = upload(workers["auto"], token, payload)
    result = first.json()["results"][0]
    assert (result["status"], result.get("applied_via")) == ("fatal_error", "rest"), first.text
    assert row(db, "todos", todo)["description"] == "v1", "entry 0 applied through REST"
    standin.reset()

    again = upload(workers["auto_dl"], token, payload)
    held = again.json()["results"][0]
    assert (held["status"], held.get("applied_via")) == ("fatal_error", "rest"), again.text
    (letter,) = letters(db)
    states = [e["state"] for e in letter["entries"]]
    assert states == ["applied", "failed"], f"the letter says entry 0 was not written: {states}"


def test_one_unchanged_record_per_transaction_even_when_a_setting_changed_between_its_attempts(
        workers, db, user):
    """UPLOAD_DEAD_LETTER_UNCHANGED: an applied transaction's unchanged entries get one record.
    Re-sent through a worker whose UPLOAD_JSON_COLUMNS differ, the ops (and their digest, the
    record's dedup key) differ; the ledger knows the transaction by its entries' digest, and
    the first record is the answer (two would replay the entries twice)."""
    sub, token = user
    list_id = insert_list(db, sub)
    payload = with_client(body(tx(put("todos", new_id(), description="d", list_id=list_id, created_by=sub,
                                      tags='["a"]'),
                                  patch("todos", new_id(), description="gone"), tid=1)), "client-unch")
    first = upload(workers["dl_json"], token, payload)
    assert statuses(first) == ["success"] and first.json()["results"][0]["unchanged"] == [1], first.text
    again = upload(workers["dl"], token, payload)
    result = again.json()["results"][0]
    assert result.get("already_applied") is True and result["unchanged"] == [1], again.text
    recorded = letters(db)
    assert len(recorded) == 1, [(r["id"], r["code"], r["ops_digest"]) for r in recorded]


def test_a_client_that_reuses_its_transaction_ids_gets_a_record_of_its_new_unchanged_entries(workers, db, user):
    """A client whose local database was reset sends other entries under the ids of an applied
    transaction: another transaction, whose unchanged entries get their own record (the first
    transaction's record is older than the ledger's record of the new one)."""
    sub, token = user
    first = with_client(body(tx(patch("todos", new_id(), description="gone"), tid=1)), "client-reset")
    assert upload(workers["dl"], token, first).json()["results"][0]["unchanged"] == [0]
    second = with_client(body(tx(patch("todos", new_id(), description="also gone"), tid=1)), "client-reset")
    result = upload(workers["dl_json"], token, second).json()["results"][0]
    assert result.get("already_applied") is None and result["unchanged"] == [0], result
    recorded = letters(db)
    assert [r["entries"][0]["data"]["description"] for r in recorded] == ["gone", "also gone"], recorded


def test_rls_to_service_resend_of_an_applied_transaction_applies_nothing_over_a_later_write(workers, db, user):
    sub, token = user
    list_id = insert_list(db, sub)
    todo = insert_todo(db, sub, list_id, "v0")
    t1 = with_client(body(tx(patch("todos", todo, description="v1"), tid=1)), "client-rs")
    assert statuses(upload(workers["dl"], token, t1)) == ["success"]
    t2 = with_client(body(tx(patch("todos", todo, description="v2"), tid=2)), "client-rs")
    assert statuses(upload(workers["dl"], token, t2)) == ["success"]
    again = upload(workers["svc"], token, t1)
    assert again.json()["results"][0].get("already_applied") is True, again.text
    assert row(db, "todos", todo)["description"] == "v2"


def test_a_dead_lettered_transaction_resent_through_service_mode_is_answered_as_recorded(workers, db, user):
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub), tid=1)),
                          "client-sv")
    first = upload(workers["dl"], token, payload)
    assert statuses(first) == ["fatal_error"] and failure(first, 0)["code"] == "23503", first.text
    insert_list(db, sub, list_id=missing)
    again = upload(workers["svc"], token, payload)
    assert statuses(again) == ["fatal_error"] and failure(again, 0)["code"] == "23503", again.text
    assert row(db, "todos", todo) is None
    assert len(letters(db)) == 1


def test_a_rejection_kept_without_a_letter_is_dead_lettered_once_the_table_is_set(workers, db, standin, user):
    """Rejected through the atomic function without a dead-letter table (the ledger keeps it, id
    0); answer lost; UPLOAD_DEAD_LETTER_TABLE set: the re-send is answered as then and gets its
    letter, which replays once the cause is fixed."""
    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub), tid=1)),
                          "client-off-on")
    first = upload(workers["auto"], token, payload)
    assert statuses(first) == ["fatal_error"], first.text
    again = upload(workers["auto_dl"], token, payload)
    assert statuses(again) == ["fatal_error"] and failure(again, 0)["code"] == "23503", again.text
    (letter,) = letters(db)
    insert_list(db, sub, list_id=missing)
    replay = db.execute("select public.powersync_replay_dead_letter(%s)", (letter["id"],)).fetchone()[0]
    assert replay["replayed"] is True, replay
    assert row(db, "todos", todo) is not None
    resent = upload(workers["auto_dl"], token, payload)
    assert resent.json()["results"][0].get("already_applied") is True, resent.text


def test_a_replay_is_refused_over_what_a_later_rest_fallback_left_applied_before_its_rejection(workers, db, standin, user):
    """T1 is dead-lettered (atomic). Later T2 goes through the statement-timeout fallback: its
    entry 0 writes the same row (v2) and stays applied, entry 1 is refused -> fatal_error,
    "applied_via": "rest"; the ledger keeps T2 as rejected after REST. Replaying T1 once its
    cause is fixed would put the row back to T1's v1 over T2's later v2: refused, naming T2, as
    for a fallback that applied T2 whole; the operator may still replay over it on purpose."""
    sub, token = user
    list_id, missing = insert_list(db, sub), new_id()
    todo = insert_todo(db, sub, list_id, "v0")
    t1 = with_client(body(tx(patch("todos", todo, description="v1"),
                             put("todos", new_id(), description="x", list_id=missing, created_by=sub), tid=1)),
                     "client-replay")
    assert statuses(upload(workers["auto_dl"], token, t1)) == ["fatal_error"]
    t2 = with_client(body(tx(patch("todos", todo, description="v2"), patch("todos", todo, priority=9), tid=2)),
                     "client-replay")
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    second = upload(workers["auto_dl"], token, t2)
    standin.reset()
    result = second.json()["results"][0]
    assert (result["status"], result.get("applied_via")) == ("fatal_error", "rest"), second.text
    assert row(db, "todos", todo)["description"] == "v2", "T2's entry 0 stayed applied"
    first_letter = letters(db)[0]
    assert first_letter["transaction_id"] == "1"

    insert_list(db, sub, list_id=missing)  # T1's cause, fixed
    refused = replay_answer(db, first_letter["id"])
    assert "client-replay/2" in refused, refused
    assert row(db, "todos", todo)["description"] == "v2", "the replay of T1 went over T2's later write"
    forced = db.execute("select public.powersync_replay_dead_letter(%s, overwrite_later_writes => true)",
                        (first_letter["id"],)).fetchone()[0]
    assert forced["replayed"] is True, forced
    assert row(db, "todos", todo)["description"] == "v1"


@pytest.mark.parametrize("name", ["bool_rest", "bool_atomic"])
def test_a_value_the_worker_converted_for_a_stale_boolean_setting_waits_for_the_operator(name, workers, db, user):
    """UPLOAD_BOOLEAN_COLUMNS still names a column a migration made an integer (or names it by
    mistake): the client's 1, a valid value for it, is sent as `true` by the worker, and the
    database refuses that (22P02 invalid input syntax for type integer: "true"). The setting is
    the operator's to fix: the write waits, nothing applied, and the message names the setting;
    once the setting is fixed (a worker without it), the same transaction applies."""
    sub, token = user
    list_id = insert_list(db, sub)
    todo = new_id()
    response = upload(workers[name], token, body(tx(put("todos", todo, description="d", list_id=list_id,
                                                        created_by=sub, priority=1), tid=1)))
    result = response.json()["results"][0]
    assert result["status"] == "retryable_error", f"discarded for the worker's own conversion: {result}"
    assert result["failed_operation"]["code"] == "22P02", result
    assert "UPLOAD_BOOLEAN_COLUMNS names todos.priority" in result["failed_operation"]["message"], result
    assert result["retry_after_ms"] >= 60_000, result
    assert row(db, "todos", todo) is None
    fixed = upload(workers["auto"], token, body(tx(put("todos", todo, description="d", list_id=list_id,
                                                      created_by=sub, priority=1), tid=1)))
    assert statuses(fixed) == ["success"], fixed.text
    assert row(db, "todos", todo)["priority"] == 1


def test_two_replays_of_one_dead_letter_at_once_apply_it_once(workers, db, pg, user):
    import threading

    import psycopg

    sub, token = user
    missing, todo = new_id(), new_id()
    payload = with_client(body(tx(put("todos", todo, description="d", list_id=missing, created_by=sub),
                                  patch("todos", todo, priority=1), tid=1)), "client-twice")
    assert statuses(upload(workers["dl"], token, payload)) == ["fatal_error"]
    (letter,) = letters(db)
    insert_list(db, sub, list_id=missing)
    db.execute("create or replace function public.skew_slow() returns trigger language plpgsql as"
               " $$ begin perform pg_sleep(0.5); return new; end $$")
    db.execute("create trigger skew_slow before insert on public.todos for each row execute function public.skew_slow()")
    answers = []
    try:
        def replay():
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                try:
                    answers.append(conn.execute("select public.powersync_replay_dead_letter(%s)",
                                                (letter["id"],)).fetchone()[0]["replayed"])
                except psycopg.errors.ObjectNotInPrerequisiteState as refused:  # 55000, already replayed
                    answers.append(str(refused).split("\n")[0])
        threads = [threading.Thread(target=replay) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        db.execute("drop trigger skew_slow on public.todos")
        db.execute("drop function public.skew_slow()")
    assert answers.count(True) == 1 and len(answers) == 2, answers
    assert count_todos(db, todo) == 1


def count_todos(db, todo: str) -> int:
    return db.execute("select count(*) from public.todos where id = %s", (todo,)).fetchone()[0]


def replay_answer(db, letter_id: int) -> str:
    """The replay's answer, or its refusal's message."""
    try:
        return str(db.execute("select public.powersync_replay_dead_letter(%s)", (letter_id,)).fetchone()[0])
    except Exception as refused:  # noqa: BLE001 - the refusal is what is asserted
        return str(refused)
