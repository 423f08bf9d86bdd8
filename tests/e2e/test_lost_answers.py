"""An upload whose answer never reached the client (a deploy evicted the worker after it wrote, a
dropped connection): the client sends the same transactions again, while records of earlier
attempts may still land late. Found by the fault soak with deploys (`python -m tests.soak
--deploys N`, docs/testing.md): seed 404 in service mode, seed 505 in service-auto mode.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.upload_helpers import body, patch, put, statuses, tx, upload
from tests.support.db import insert_list, insert_todo, new_id, row

RPC = "/rest/v1/rpc/powersync_apply_transaction"
CANCELLED = {"code": "57014", "message": "canceling statement due to statement timeout", "details": None,
             "hint": None}
DEAD = {"UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters", "UPLOAD_CONFLICT_DETECTION": "true"}


@pytest.fixture(scope="module")
def workers(base_vars, start_workers):
    return start_workers({
        "rest": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "false"},
        "atomic": {**base_vars, **DEAD, "UPLOAD_ATOMIC": "true"},
        # a record that takes longer than a second is given up on, and lands later
        "auto_impatient": {**base_vars, **DEAD, "UPLOAD_SUBREQUEST_BUDGET": "100", "UPSTREAM_TIMEOUT_MS": "1000"},
    })


@pytest.mark.parametrize("route", ["atomic", "rest"])
def test_a_re_sent_upload_whose_later_transaction_wrote_a_compared_row_is_no_conflict_through_the_function_only(
        workers, db, user, route):
    """Transaction 1 compares and renames a list, transaction 2 writes the list again; the answer
    is lost and both are sent again. Through the atomic function the ledger knows both applied
    (`already_applied`). Over REST requests nothing records what was applied: transaction 1's
    PATCH meets transaction 2's value, which is neither what its client saw nor what it writes,
    and is reported `conflict`, though it was applied (docs/conflicts.md, "Limits"; REST mode is
    not exactly once)."""
    sub, token = user
    list_id = insert_list(db, sub, name="old")
    rename = patch("lists", list_id, name="first")
    rename["previous_values"] = {"name": "old"}
    payload = {**body(tx(rename, tid=1), tx(put("lists", list_id, name="second", owner_id=sub), tid=2)),
               "client_id": "client-evicted"}
    first = upload(workers[route], token, payload)
    assert statuses(first) == ["success", "success"], first.text
    again = upload(workers[route], token, payload)
    assert row(db, "lists", list_id)["name"] == "second"
    if route == "atomic":
        assert statuses(again) == ["success", "success"], again.text
        assert [r.get("already_applied") for r in again.json()["results"]] == [True, True], again.text
    else:
        assert statuses(again) == ["conflict", "success"], again.text


def test_a_late_dead_letter_of_an_attempt_before_a_rest_fallback_is_not_the_transactions_letter(
        workers, db, standin, user):
    """The atomic function rejects the transaction (a check at entry 2); its dead letter's record
    is slow and lands after the worker gave up (`dead_letter_failed`, retryable). The re-send's
    atomic call is cancelled by the statement timeout: the REST fallback applies entry 0, entry 1
    fails (500: retryable, its mark ended). Then the late record lands. It was made before the
    REST requests (every entry `failed`), so it is refused (55P03) instead of becoming the
    transaction's letter, which said entry 0 was never written (a replay would write it again).
    The next attempt goes on through REST and records what it applied."""
    sub, token = user
    list_id = insert_list(db, sub)
    todo = insert_todo(db, sub, list_id, "v0")
    new_list = new_id()
    payload = {**body(tx(patch("todos", todo, description="v1"), put("lists", new_list, name="n", owner_id=sub),
                         patch("todos", todo, priority=9), tid=1)), "client_id": "client-late-letter"}
    worker = workers["auto_impatient"]
    standin.add_fault({"delay_ms": 3000, "path_prefix": "/rest/v1/rpc/powersync_record_dead_letter",
                       "method": "POST", "count": 2})
    started = time.monotonic()
    first = upload(worker, token, payload)
    assert statuses(first) == ["retryable_error"], first.text

    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    standin.add_fault({"status": 500, "path_prefix": "/rest/v1/lists", "method": "POST"})
    second = upload(worker, token, payload)
    assert statuses(second) == ["retryable_error"], second.text
    assert row(db, "todos", todo)["description"] == "v1", "entry 0 applied through REST"
    time.sleep(max(0.0, started + 5 - time.monotonic()))  # the late records land
    standin.reset()
    assert db.execute("select count(*) from powersync_dead_letters where user_id = %s", (sub,)).fetchone()[0] == 0

    third = upload(worker, token, payload)
    result = third.json()["results"][0]
    assert (result["status"], result.get("applied_via")) == ("fatal_error", "rest"), third.text
    assert result["failed_operation"]["index"] == 2, third.text
    states = [[e["state"] for e in r[0]] for r in db.execute(
        "select entries from powersync_dead_letters where user_id = %s", (sub,))]
    assert states == [["applied", "applied", "failed"]], (states, third.text)
    assert row(db, "lists", new_list)["name"] == "n"
