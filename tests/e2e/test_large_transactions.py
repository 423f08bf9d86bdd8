"""Large transactions and the statement timeout (issue 15 item 9).

Supabase cancels any statement of `authenticated` after 8 s (57014, "canceling statement due to
statement timeout"); PostgREST applies the role's `statement_timeout` in each request's
transaction, and so does the stand-in. An atomic call is one statement, so a transaction large
or slow enough is cancelled as a whole, every time it is retried. The bridge then applies it
through REST requests in the same upload (each its own statement with its own timeout) and says
so in the transaction's result (`"applied_via": "rest"`). `bench/atomic_limit.py` measures how
large a transaction the function applies within 8 s; here the timeout is made short instead, so
that a transaction of 10,000 PUTs exceeds it.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from tests.e2e.upload_helpers import patch, put, statuses, upload, wait_until_standin_idle

GROUPS = 40          # REST upserts: consecutive PUTs with another set of columns start a new one
ROWS_PER_GROUP = 250  # 10,000 entries: UPLOAD_MAX_ENTRIES' default
TIMEOUT = "150ms"     # the atomic call of 10,000 PUTs takes about 0.5 s here; an upsert of 250, 15 ms


@pytest.fixture(scope="module")
def auto_worker(base_vars, start_worker):
    """UPLOAD_ATOMIC unset (the default: the function whenever it is installed), with room for
    the fallback's 40 requests beside the atomic call."""
    return start_worker({**base_vars, "UPLOAD_SUBREQUEST_BUDGET": "100"})


@pytest.fixture
def short_statement_timeout(pg, db):
    """`authenticated` gets a statement timeout of TIMEOUT for this test, restored afterwards
    (tests/sql/test_schema.sql sets Supabase's 8 s). PostgREST reads role settings when its
    configuration is reloaded (hence the NOTIFY); the stand-in reads them for every request."""
    def current() -> str | None:
        row = db.execute("select s from pg_db_role_setting d, unnest(d.setconfig) s"
                         " where d.setrole = 'authenticated'::regrole and d.setdatabase = 0"
                         " and s like 'statement_timeout=%'").fetchone()
        return row[0].split("=", 1)[1] if row else None

    before = current()
    db.execute(f"alter role authenticated set statement_timeout = '{TIMEOUT}'")
    db.execute("notify pgrst, 'reload config'")
    try:
        yield TIMEOUT
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            if before is None:
                conn.execute("alter role authenticated reset statement_timeout")
            else:
                conn.execute(f"alter role authenticated set statement_timeout = '{before}'")
            conn.execute("notify pgrst, 'reload config'")
        assert current() == before


def test_transaction_whose_atomic_call_the_statement_timeout_cancels_is_applied_through_rest_saying_so(
        auto_worker, db, standin, session_token, short_statement_timeout):
    user = str(uuid.uuid4())
    list_id = str(uuid.uuid4())
    db.execute("insert into public.lists (id, name, owner_id) values (%s, 'big import', %s)", (list_id, user))
    entries, ids = [], []
    for group in range(GROUPS):
        for n in range(ROWS_PER_GROUP):
            row_id = str(uuid.uuid4())
            ids.append(row_id)
            data = {"description": f"todo {group}/{n}", "list_id": list_id, "created_by": user}
            if group % 2:
                data["priority"] = n % 5
            entries.append(put("todos", row_id, data))
    payload = {"client_id": "client-big", "transactions": [{"transaction_id": 7, "crud": entries}]}

    resp = upload(auto_worker, session_token(user), payload, timeout=120)
    wait_until_standin_idle(standin)

    assert resp.status_code == 200, resp.text
    answer = resp.json()
    result = answer["results"][0]
    assert result["status"] == "success", result
    assert result["applied_via"] == "rest", result
    reason = result["applied_via_reason"]
    for part in ("statement timeout", "57014", f"{GROUPS} REST requests",
                 "neither all-or-nothing nor exactly once"):
        assert part in reason, (part, reason)
    assert answer["subrequests"] == 1 + GROUPS + 1

    log = standin.requests_log()
    assert [e["path"] for e in log] == (["/rest/v1/rpc/powersync_apply_transaction"]
                                        + ["/rest/v1/todos"] * GROUPS
                                        + ["/rest/v1/rpc/powersync_upload_ledger_applied_via_rest"])
    assert log[0]["status"] == 500, "the atomic call was cancelled"
    assert all(e["status"] == 201 for e in log[1:-1]), [e["status"] for e in log[1:-1]]
    assert log[-1]["status"] == 200, "recorded in the ledger"

    stored = db.execute("select id::text from public.todos where list_id = %s", (list_id,)).fetchall()
    assert sorted(r[0] for r in stored) == sorted(ids), "every row, once"
    ledger = db.execute("select transaction_id, dead_letter_id, entries_digest is not null"
                        " from public.powersync_upload_ledger where client_id = 'client-big'").fetchall()
    assert ledger == [("7", None, True)], "recorded applied, so that a late call of it applies nothing"
    line = auto_worker.log_line(resp)["upload"]
    assert line["applied_via_rest"] == 1, line
    assert line["success"] == 1, line


RPC = "/rest/v1/rpc/powersync_apply_transaction"
CANCELLED = {"code": "57014", "message": "canceling statement due to statement timeout", "details": None,
             "hint": None}


def test_a_late_call_of_a_transaction_applied_through_the_rest_fallback_applies_nothing_over_later_writes(
        auto_worker, db, standin, session_token):
    """T1's first atomic call is held (the network, PostgREST's pool) past the worker's timeout;
    its re-send is cancelled by the statement timeout and applied through REST; T2 changes the
    row. When the first call reaches the database at last, the ledger's record of T1 (made before
    T1 was reported applied) makes it apply nothing: T2's write stays."""
    user, list_id, row = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    db.execute("insert into public.lists (id, name, owner_id) values (%s, 'l', %s)", (list_id, user))
    token = session_token(user)
    t1 = {"transaction_id": 1, "crud": [put("todos", row, description="v1", list_id=list_id, created_by=user)]}
    t2 = {"transaction_id": 2, "crud": [patch("todos", row, description="v2")]}
    description = lambda: db.execute("select description from public.todos where id = %s",  # noqa: E731
                                     (row,)).fetchone()

    # held past UPSTREAM_TIMEOUT_MS (3 s), then applied: the late call
    standin.add_fault({"delay_ms": 6000, "path_prefix": RPC, "method": "POST"})
    first = upload(auto_worker, token, {"client_id": "dev-1", "transactions": [t1]})
    assert statuses(first) == ["retryable_error"], first.text
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    resent = upload(auto_worker, token, {"client_id": "dev-1", "transactions": [t1]})
    assert resent.json()["results"][0]["applied_via"] == "rest", resent.text
    assert statuses(resent) == ["success"], resent.text
    later = upload(auto_worker, token, {"client_id": "dev-1", "transactions": [t2]})
    assert statuses(later) == ["success"], later.text
    assert description() == ("v2",)

    assert wait_until_standin_idle(standin, timeout=20), "the late call ended"
    assert description() == ("v2",), "the late call of T1 applied nothing over T2"
    ledger = db.execute("select transaction_id from public.powersync_upload_ledger where client_id = 'dev-1'"
                        " and user_id = %s order by transaction_id", (user,)).fetchall()
    assert ledger == [("1",), ("2",)]


def test_a_resend_of_a_transaction_applied_through_the_rest_fallback_is_already_applied_with_its_unchanged(
        auto_worker, db, standin, session_token):
    """The first answer is lost: the re-send's atomic call finds the ledger's record of the REST
    fallback and applies nothing, and reports the entry that changed no row as the first answer
    did."""
    user, list_id, row = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    db.execute("insert into public.lists (id, name, owner_id) values (%s, 'l', %s)", (list_id, user))
    token = session_token(user)
    t1 = {"transaction_id": 1, "crud": [put("todos", row, description="v1", list_id=list_id, created_by=user),
                                        {"op": "DELETE", "type": "todos", "id": str(uuid.uuid4())}]}
    payload = {"client_id": "dev-" + str(uuid.uuid4()), "transactions": [t1]}
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    first = upload(auto_worker, token, payload)
    assert first.json()["results"] == [{"status": "success", "transaction_id": 1, "unchanged": [1],
                                        "applied_via": "rest",
                                        "applied_via_reason": first.json()["results"][0]["applied_via_reason"]}]
    db.execute("update public.todos set description = 'edited' where id = %s", (row,))
    again = upload(auto_worker, token, payload)
    assert again.json()["results"] == [{"status": "success", "transaction_id": 1, "unchanged": [1],
                                        "already_applied": True}], again.text
    assert db.execute("select description from public.todos where id = %s", (row,)).fetchone() == ("edited",)
