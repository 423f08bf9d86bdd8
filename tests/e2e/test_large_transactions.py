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

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from tests.e2e.conftest import ANON_KEY

from tests.e2e.upload_helpers import patch, put, statuses, upload, wait_until_standin_idle

GROUPS = 40          # REST upserts: consecutive PUTs with another set of columns start a new one
ROWS_PER_GROUP = 250  # 10,000 entries: UPLOAD_MAX_ENTRIES' default
TIMEOUT = "150ms"     # the atomic call of 10,000 PUTs takes about 0.5 s here; an upsert of 250, 15 ms


@pytest.fixture(scope="module")
def auto_worker(base_vars, start_worker):
    """UPLOAD_ATOMIC unset (the default: the function whenever it is installed), with room for
    the fallback's 40 requests beside the atomic call."""
    return start_worker({**base_vars, "UPLOAD_SUBREQUEST_BUDGET": "100"})


@pytest.fixture(scope="module")
def auto_worker_with_dead_letters(base_vars, start_worker):
    """As auto_worker, with a dead-letter table."""
    return start_worker({**base_vars, "UPLOAD_SUBREQUEST_BUDGET": "100",
                         "UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters"})


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
    assert answer["subrequests"] == 1 + 1 + GROUPS + 1

    log = standin.requests_log()
    assert [e["path"] for e in log] == (["/rest/v1/rpc/powersync_apply_transaction",
                                         "/rest/v1/rpc/powersync_upload_ledger_rest_begin"]
                                        + ["/rest/v1/todos"] * GROUPS
                                        + ["/rest/v1/rpc/powersync_upload_ledger_applied_via_rest"])
    assert log[0]["status"] == 500, "the atomic call was cancelled"
    assert log[1]["status"] == 200, "marked in the ledger before the first write"
    assert all(e["status"] == 201 for e in log[2:-1]), [e["status"] for e in log[2:-1]]
    assert log[-1]["status"] == 200, "recorded in the ledger"

    stored = db.execute("select id::text from public.todos where list_id = %s", (list_id,)).fetchall()
    assert sorted(r[0] for r in stored) == sorted(ids), "every row, once"
    ledger = db.execute("select transaction_id, dead_letter_id, entries_digest is not null, rest_until"
                        " from public.powersync_upload_ledger where client_id = 'client-big'").fetchall()
    assert ledger == [("7", None, True, None)], "recorded applied, so that a late call of it applies nothing"
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


# The statement-timeout fallback against a second copy of the same queue (audit_concurrency F1)

def _todo(db, user: str, description: str) -> str:
    list_id, row = str(uuid.uuid4()), str(uuid.uuid4())
    db.execute("insert into public.lists (id, name, owner_id) values (%s, 'l', %s)", (list_id, user))
    db.execute("insert into public.todos (id, description, list_id, created_by) values (%s, %s, %s, %s)",
               (row, description, list_id, user))
    return row


def _ledger(db, user: str, client: str) -> list[tuple]:
    return db.execute("select transaction_id, dead_letter_id is not null, rest_until is not null"
                      " from public.powersync_upload_ledger where user_id = %s and client_id = %s"
                      " order by transaction_id", (user, client)).fetchall()


def test_a_copy_of_the_queue_waits_while_a_transaction_goes_through_the_rest_fallback_and_lands_after_it(
        auto_worker, db, standin, session_token):
    """Request A's atomic call of T1 is cancelled by the statement timeout, and its REST PATCH is
    held 2 s (a wait for a pooled connection). Meanwhile a second copy B of the same queue (the
    app restarted) sends T1 and T2. The ledger's mark of T1, made before A's first write, makes
    B's T1 wait (55P03, retryable) and T2 not attempted; before, B applied both, and A's PATCH
    then landed over T2's value, both requests reporting success. B's re-send then finds T1
    applied and applies T2: the row ends with T2's value."""
    user = str(uuid.uuid4())
    row = _todo(db, user, "v0")
    token = session_token(user)
    t1 = {"transaction_id": 1, "crud": [patch("todos", row, description="v1")]}
    t2 = {"transaction_id": 2, "crud": [patch("todos", row, description="v2")]}
    client = "dev-" + str(uuid.uuid4())
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    standin.add_fault({"delay_ms": 2000, "path_prefix": "/rest/v1/todos", "method": "PATCH"})

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(upload, auto_worker, token, {"client_id": client, "transactions": [t1]})
        deadline = time.monotonic() + 10
        while _ledger(db, user, client) != [("1", False, True)]:
            assert time.monotonic() < deadline and not first.done(), "A marks T1 before its first write"
            time.sleep(0.05)
        copy = upload(auto_worker, token, {"client_id": client, "transactions": [t1, t2]})
        a = first.result()

    assert statuses(copy) == ["retryable_error", "not_attempted"], copy.text
    failure = copy.json()["results"][0]["failed_operation"]
    assert failure["code"] == "55P03", failure
    assert "is being applied through REST requests by another upload" in failure["message"], failure
    assert statuses(a) == ["success"], a.text
    assert a.json()["results"][0]["applied_via"] == "rest", a.text
    description = lambda: db.execute("select description from public.todos where id = %s",  # noqa: E731
                                     (row,)).fetchone()[0]
    assert description() == "v1", "A's write landed; T2 waited behind it"
    assert _ledger(db, user, client) == [("1", False, False)], "the mark became the record of T1 applied"

    again = upload(auto_worker, token, {"client_id": client, "transactions": [t1, t2]})
    assert again.json()["results"] == [{"status": "success", "transaction_id": 1, "already_applied": True},
                                       {"status": "success", "transaction_id": 2}], again.text
    assert wait_until_standin_idle(standin)
    assert description() == "v2", "T2 last, as the client wrote it"


def test_a_rest_fallback_that_ends_retryable_ends_its_mark_and_the_resend_goes_on_through_rest_at_once(
        auto_worker, db, standin, session_token):
    """The mark ends, so the re-send need not wait for it; the ledger keeps the transaction as begun
    through REST, so the re-send goes on through REST requests (its atomic call is refused with
    57014, nothing applied)."""
    user = str(uuid.uuid4())
    row = _todo(db, user, "v0")
    token = session_token(user)
    payload = {"client_id": "dev-" + str(uuid.uuid4()),
               "transactions": [{"transaction_id": 1, "crud": [patch("todos", row, description="v1")]}]}
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    standin.add_fault({"status": 503, "path_prefix": "/rest/v1/todos", "method": "PATCH"})
    first = upload(auto_worker, token, payload)
    assert statuses(first) == ["retryable_error"], first.text
    paths = [e["path"] for e in standin.requests_log()]
    assert paths == [RPC, "/rest/v1/rpc/powersync_upload_ledger_rest_begin", "/rest/v1/todos",
                     "/rest/v1/rpc/powersync_upload_ledger_rest_abandon"], paths
    ended = db.execute("select rest_until <= now(), rest_mark from public.powersync_upload_ledger"
                       " where client_id = %s", (payload["client_id"],)).fetchall()
    assert ended == [(True, None)], "the mark ended, the record kept"
    standin.reset()
    again = upload(auto_worker, token, payload)
    result = again.json()["results"][0]
    assert (result["status"], result.get("applied_via")) == ("success", "rest"), again.text
    assert "an earlier upload began applying it through REST requests" in result["applied_via_reason"], again.text
    paths = [e["path"] for e in standin.requests_log()]
    assert paths == [RPC, "/rest/v1/rpc/powersync_upload_ledger_rest_begin", "/rest/v1/todos",
                     "/rest/v1/rpc/powersync_upload_ledger_applied_via_rest"], paths
    assert db.execute("select description from public.todos where id = %s", (row,)).fetchone() == ("v1",)
    assert _ledger(db, user, payload["client_id"]) == [("1", False, False)], "recorded applied"


def _refused_at_the_second_entry(db, session_token) -> tuple[str, str, str, dict]:
    """A user, their todo, their token, and an upload of one transaction of two PATCHes of it: the
    first applies, the second is refused (23514, the priority's check)."""
    user = str(uuid.uuid4())
    row = _todo(db, user, "v0")
    payload = {"client_id": "dev-" + str(uuid.uuid4()),
               "transactions": [{"transaction_id": 1, "crud": [patch("todos", row, description="v1"),
                                                               patch("todos", row, priority=9)]}]}
    return user, row, session_token(user), payload


def test_a_transaction_a_rest_fallback_applied_in_part_goes_on_through_rest_and_its_rejection_says_so(
        auto_worker, db, standin, session_token):
    """Found by the fault soak's default mode. The fallback applied the first entry, met a refusal
    at the second, and could not record the rejection (kept, retryable). Re-sent through the
    atomic function, the transaction would be refused whole and reported rejected as an atomic
    call (nothing applied), over the first entry's write left in place. The ledger sends it on
    through REST instead: its result says it went through REST, rejected at the second entry,
    after the first was applied."""
    user, row, token, payload = _refused_at_the_second_entry(db, session_token)
    standin.reset()
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    standin.add_fault({"status": 503, "path_prefix": "/rest/v1/rpc/powersync_upload_ledger_reject", "method": "POST"})
    first = upload(auto_worker, token, payload)
    assert statuses(first) == ["retryable_error"], first.text
    assert first.json()["results"][0]["applied_via"] == "rest", first.text
    assert db.execute("select description, priority from public.todos where id = %s", (row,)).fetchone() == \
        ("v1", None), "the first entry is applied"

    again = upload(auto_worker, token, payload)
    result = again.json()["results"][0]
    assert (result["status"], result.get("applied_via")) == ("fatal_error", "rest"), again.text
    assert (result["failed_operation"]["index"], result["failed_operation"]["code"]) == (1, "23514"), again.text
    assert db.execute("select description, priority from public.todos where id = %s", (row,)).fetchone() == \
        ("v1", None)
    assert _ledger(db, user, payload["client_id"]) == [("1", True, False)], "recorded rejected"


@pytest.mark.parametrize("dead_letters", [False, True], ids=["ledger", "dead_letter"])
def test_a_resend_of_a_transaction_the_rest_fallback_rejected_is_answered_as_then_and_says_what_stayed_applied(
        dead_letters, request, db, standin, session_token):
    """The fallback applied the first entry and was refused at the second: fatal_error at entry 1,
    "applied_via": "rest". Re-sent after that answer was lost, the ledger answers for it, nothing
    applied now: the same failure, and "applied_via": "rest" again, since the first entry stayed
    applied. Before, the re-send said nothing of REST (as if, atomic, nothing had been applied),
    and without a dead-letter table it was `dead_lettered` without an index."""
    worker = request.getfixturevalue("auto_worker_with_dead_letters" if dead_letters else "auto_worker")
    user, row, token, payload = _refused_at_the_second_entry(db, session_token)
    standin.reset()
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    first = upload(worker, token, payload)
    reported = first.json()["results"][0]
    assert (reported["status"], reported.get("applied_via")) == ("fatal_error", "rest"), first.text
    assert (reported["failed_operation"]["index"], reported["failed_operation"]["code"]) == (1, "23514")

    again = upload(worker, token, payload)
    held = again.json()["results"][0]
    assert (held["status"], held.get("applied_via")) == ("fatal_error", "rest"), again.text
    named = ("index", "code", "message")
    assert [held["failed_operation"][k] for k in named] == [reported["failed_operation"][k] for k in named], again.text
    if not dead_letters:  # the ledger keeps the whole failure; a dead letter its index, code, message, details
        assert held["failed_operation"] == reported["failed_operation"], again.text
    assert held["applied_via_reason"].startswith("rejected before, after an earlier attempt sent it through REST")
    assert again.json()["subrequests"] == (2 if dead_letters else 1), "the atomic call (and the letter, returned)"
    assert db.execute("select description, priority from public.todos where id = %s", (row,)).fetchone() == \
        ("v1", None)
    if dead_letters:
        assert db.execute("select count(*) from public.powersync_dead_letters where client_id = %s",
                          (payload["client_id"],)).fetchone() == (1,), "one letter"


def test_an_atomic_call_waits_while_the_ledger_marks_its_transaction_and_goes_on_through_rest_once_it_expired(
        auto_worker, db, standin, session_token):
    """A mark left by a worker that stopped half-way (here made through /rpc, as the user may)
    holds every attempt of that transaction (55P03, retryable), until it expires; then the
    transaction goes on through REST requests (some of its writes may be in place)."""
    user = str(uuid.uuid4())
    row = _todo(db, user, "v0")
    token = session_token(user)
    payload = {"client_id": "dev-" + str(uuid.uuid4()),
               "transactions": [{"transaction_id": 1, "crud": [patch("todos", row, description="v1")]}]}
    held = upload(auto_worker, token, payload)  # applied: its entries' digest is in the ledger now
    digest = db.execute("select entries_digest from public.powersync_upload_ledger where client_id = %s",
                        (payload["client_id"],)).fetchone()[0]
    db.execute("delete from public.powersync_upload_ledger where client_id = %s", (payload["client_id"],))
    db.execute("update public.todos set description = 'v0' where id = %s", (row,))
    assert statuses(held) == ["success"]
    mark = requests.post(f"{standin.url}/rest/v1/rpc/powersync_upload_ledger_rest_begin",
                         json={"p_client_id": payload["client_id"], "p_transaction_id": "1", "p_mark": "0" * 32},
                         headers={"Authorization": f"Bearer {token}", "apikey": ANON_KEY,
                                  "X-PowerSync-Entries-Digest": digest}, timeout=10)
    assert mark.json() == {"rest": "begun"}, mark.text

    waiting = upload(auto_worker, token, payload)
    assert statuses(waiting) == ["retryable_error"], waiting.text
    assert waiting.json()["results"][0]["failed_operation"]["code"] == "55P03"
    assert db.execute("select description from public.todos where id = %s", (row,)).fetchone() == ("v0",)

    db.execute("update public.powersync_upload_ledger set rest_until = now() - interval '1 second'"
               " where client_id = %s", (payload["client_id"],))
    expired = upload(auto_worker, token, payload)
    assert [(r["status"], r.get("applied_via")) for r in expired.json()["results"]] == [("success", "rest")], \
        expired.text
    assert db.execute("select description from public.todos where id = %s", (row,)).fetchone() == ("v1",)
    assert _ledger(db, user, payload["client_id"]) == [("1", False, False)]


def test_a_rest_fallback_of_a_transaction_the_ledger_holds_sends_nothing_and_answers_as_held(
        auto_worker, db, standin, session_token):
    """Applied by another copy between the cancelled call and the mark (here: before): the
    fallback sends no write; rejected: answered as rejected before, and nothing is applied."""
    user = str(uuid.uuid4())
    row = _todo(db, user, "v0")
    token = session_token(user)
    client = "dev-" + str(uuid.uuid4())
    applied = {"client_id": client, "transactions": [{"transaction_id": 1,
                                                      "crud": [patch("todos", row, description="v1")]}]}
    assert statuses(upload(auto_worker, token, applied)) == ["success"]
    db.execute("update public.todos set description = 'edited' where id = %s", (row,))
    standin.reset()
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    again = upload(auto_worker, token, applied)
    assert again.json()["results"] == [{"status": "success", "transaction_id": 1, "already_applied": True}], \
        again.text
    assert [e["path"] for e in standin.requests_log()] == [RPC, "/rest/v1/rpc/powersync_upload_ledger_rest_begin"]
    assert db.execute("select description from public.todos where id = %s", (row,)).fetchone() == ("edited",)

    # rejected through the fallback itself: its rejection's record replaces the mark
    refused = {"client_id": client, "transactions": [{"transaction_id": 2,
                                                      "crud": [patch("todos", row, priority=9)]}]}
    standin.add_fault({"status": 500, "path_prefix": RPC, "method": "POST", "body": CANCELLED})
    first = upload(auto_worker, token, refused)
    assert statuses(first) == ["fatal_error"], first.text
    assert first.json()["results"][0]["failed_operation"]["code"] == "23514"
    assert ("2", True, False) in _ledger(db, user, client), "recorded rejected, the mark gone"
    resent = upload(auto_worker, token, refused)
    assert statuses(resent) == ["fatal_error"], resent.text
    held, reported = resent.json()["results"][0], first.json()["results"][0]
    assert held["failed_operation"] == reported["failed_operation"], "answered as it was reported"
    assert held["applied_via_reason"].startswith("rejected before"), resent.text


def test_the_ledgers_mark_is_the_marking_uploads_own(db, standin, session_token):
    """A re-send of the mark after a lost answer (the same token) is answered begun again;
    another token (another upload) waits (55P03) and cannot end it; the token that made it can."""
    user = str(uuid.uuid4())
    token = session_token(user)

    def call(function: str, mark: str) -> requests.Response:
        return requests.post(f"{standin.url}/rest/v1/rpc/{function}",
                             json={"p_client_id": "dev-m", "p_transaction_id": "1", "p_mark": mark},
                             headers={"Authorization": f"Bearer {token}", "apikey": ANON_KEY,
                                      "X-PowerSync-Entries-Digest": "a" * 32}, timeout=10)

    mine, theirs = "1" * 32, "2" * 32
    assert call("powersync_upload_ledger_rest_begin", mine).json() == {"rest": "begun"}
    assert call("powersync_upload_ledger_rest_begin", mine).json() == {"rest": "begun"}, "the same upload's re-send"
    busy = call("powersync_upload_ledger_rest_begin", theirs)
    assert busy.json()["code"] == "55P03", busy.text
    assert call("powersync_upload_ledger_rest_abandon", theirs).json() is True
    assert _ledger(db, user, "dev-m") == [("1", False, True)], "another upload's token leaves the mark"
    assert call("powersync_upload_ledger_rest_abandon", mine).json() is True
    ended = db.execute("select rest_until <= now(), rest_mark from public.powersync_upload_ledger"
                       " where user_id = %s and client_id = 'dev-m'", (user,)).fetchall()
    assert ended == [(True, None)], "ended; the record stays (the transaction goes on through REST)"
    assert call("powersync_upload_ledger_rest_begin", theirs).json() == {"rest": "begun"}, "an ended mark holds nothing"
    refused = call("powersync_upload_ledger_rest_begin", "not hex")
    assert refused.status_code == 400 and refused.json()["code"] == "22023", refused.text


def _session(pg, sub: str, headers: dict) -> psycopg.Connection:
    """A connection as PostgREST runs a request of this user, with these request headers."""
    conn = psycopg.connect(pg.dsn, autocommit=True)
    conn.execute("set role authenticated")
    conn.execute("select set_config('request.jwt.claims', %s, false)",
                 (json.dumps({"sub": sub, "role": "authenticated"}),))
    conn.execute("select set_config('request.headers', %s, false)", (json.dumps(headers),))
    return conn


def test_only_the_upload_that_marked_a_transaction_records_it_rejected_or_applied(pg, db):
    """Another copy's rejection of the transaction (its atomic call failed for good just before
    the mark, or a late record) and another upload's record of it applied are refused (55P03)
    while the mark stands: ended by them, a copy would apply the client's later transactions
    before the marking upload's writes land. The marking upload's own record ends it."""
    user, entries, mine, theirs = str(uuid.uuid4()), "a" * 32, "1" * 32, "2" * 32
    marking = _session(pg, user, {"x-powersync-entries-digest": entries, "x-powersync-rest-mark": mine})
    assert marking.execute("select public.powersync_upload_ledger_rest_begin('dev-r', '1', null, %s)",
                           (mine,)).fetchone()[0] == {"rest": "begun"}
    for headers, call in (
            ({"x-powersync-entries-digest": entries}, "powersync_upload_ledger_reject('dev-r', '1')"),
            ({"x-powersync-entries-digest": entries, "x-powersync-rest-mark": theirs},
             "powersync_upload_ledger_applied_via_rest('dev-r', '1')")):
        other = _session(pg, user, headers)
        with pytest.raises(psycopg.errors.LockNotAvailable, match="being applied through REST requests"):
            other.execute(f"select public.{call}")
        assert _ledger(db, user, "dev-r") == [("1", False, True)], f"{call}: the mark stands"
    assert marking.execute("select public.powersync_upload_ledger_applied_via_rest('dev-r', '1')").fetchone()[0]
    assert _ledger(db, user, "dev-r") == [("1", False, False)], "recorded applied, the mark ended"


def test_the_per_user_cap_never_deletes_an_unexpired_mark(pg, db):
    user = str(uuid.uuid4())
    db.execute("update public.powersync_upload_ledger_settings set max_records_per_user = 1000")
    try:
        marking = _session(pg, user, {"x-powersync-entries-digest": "a" * 32})
        marking.execute("select public.powersync_upload_ledger_rest_begin('dev-c', '1', null, %s)", ("1" * 32,))
        other = _session(pg, user, {"x-powersync-entries-digest": "b" * 32})
        for i in range(1001):
            other.execute("select public.powersync_upload_ledger_claim('dev-other', %s, %s)", (str(i), "c" * 64))
        assert _ledger(db, user, "dev-c") == [("1", False, True)], "the mark stands"
        assert db.execute("select count(*) from public.powersync_upload_ledger where user_id = %s",
                          (user,)).fetchone()[0] <= 1001, "the others are capped"
    finally:
        db.execute("update public.powersync_upload_ledger_settings set max_records_per_user = 10000")


def test_a_user_holds_at_most_100_marks_at_a_time(pg, db):
    """The cap leaves unexpired marks, so marks are bounded on their own: beyond 100 live ones,
    rest_begin is refused (54000: the bridge keeps the transaction and retries later); a mark's
    re-send and other users are unaffected."""
    user = str(uuid.uuid4())
    marking = _session(pg, user, {"x-powersync-entries-digest": "a" * 32})
    begin = "select public.powersync_upload_ledger_rest_begin('dev-many', %s, null, %s)"
    for i in range(100):
        assert marking.execute(begin, (str(i), "1" * 32)).fetchone()[0] == {"rest": "begun"}
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="100 transactions of this user"):
        marking.execute(begin, ("100", "1" * 32))
    assert marking.execute(begin, ("7", "1" * 32)).fetchone()[0] == {"rest": "begun"}, "its own re-send"
    other = _session(pg, str(uuid.uuid4()), {"x-powersync-entries-digest": "a" * 32})
    assert other.execute(begin, ("100", "1" * 32)).fetchone()[0] == {"rest": "begun"}
    db.execute("update public.powersync_upload_ledger set rest_until = now() - interval '1 second'"
               " where user_id = %s and transaction_id = '0'", (user,))
    assert marking.execute(begin, ("100", "1" * 32)).fetchone()[0] == {"rest": "begun"}, "one expired: room"


def test_a_rejection_whose_dead_letter_is_held_already_still_meets_the_mark(pg, db):
    """The dead-letter table holds a letter of the same ops already (the record of the same
    transaction's unchanged entries, from an earlier attempt): recording the rejection finds it,
    and still meets the ledger's mark, as a new letter would: refused (55P03) for another upload,
    the mark ended for the marking upload's own."""
    user = str(uuid.uuid4())
    row = _todo(db, user, "v0")
    digest, mine = "a" * 32, "1" * 32
    record = ("select public.powersync_record_dead_letter(entries => %s::jsonb, code => %s, message => 'm',"
              " transaction_id => '1', client_id => 'dev-d', op_index => 0)")
    entries = lambda state: json.dumps([{"op": "PATCH", "table": "todos", "id": row,  # noqa: E731
                                         "data": {"description": "v1"}, "state": state}])
    first = _session(pg, user, {"x-powersync-entries-digest": digest}).execute(
        record, (entries("unchanged"), "unchanged")).fetchone()[0]
    marking = _session(pg, user, {"x-powersync-entries-digest": digest, "x-powersync-rest-mark": mine})
    marking.execute("select public.powersync_upload_ledger_rest_begin('dev-d', '1', null, %s)", (mine,))
    other = _session(pg, user, {"x-powersync-entries-digest": digest})
    with pytest.raises(psycopg.errors.LockNotAvailable, match="being applied through REST requests"):
        other.execute(record, (entries("failed"), "23503"))
    assert _ledger(db, user, "dev-d") == [("1", False, True)], "the mark stands"
    assert marking.execute(record, (entries("failed"), "23503")).fetchone()[0] == first
    assert _ledger(db, user, "dev-d") == [("1", True, False)], "recorded rejected, the mark ended"
