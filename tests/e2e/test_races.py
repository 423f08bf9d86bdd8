"""Concurrent uploads: the same upload posted twice at once, users racing on the ledger.

Each test forces its interleaving with a slow trigger (pg_sleep) or advisory locks in a
test-only table, so that the two requests overlap in the database, not merely in time.

  race_notes    text id, owner_id (the JWT's sub), body; an AFTER trigger logs every applied
                write in race_log (so a write applied twice shows twice), sleeps when the body
                starts with 'slow' and refuses (23514) a body containing 'bad' after the nap;
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.upload_helpers import patch, put, statuses, upload, wait_until_standin_idle

SQL = """
create table if not exists public.race_notes (
  id       text primary key,
  owner_id text not null,
  body     text not null
);
create table if not exists public.race_log (
  n    bigint generated always as identity primary key,
  op   text not null,
  id   text not null,
  body text not null
);
create or replace function public.race_notes_log() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
  insert into public.race_log (op, id, body) values (tg_op, new.id, new.body);
  if new.body like 'slow%' then perform pg_sleep(1.5); end if;
  if new.body like '%bad%' then
    raise exception using errcode = '23514', message = 'race_notes: body refused';
  end if;
  return null;
end $$;
drop trigger if exists race_notes_log on public.race_notes;
create trigger race_notes_log after insert or update on public.race_notes
  for each row execute function public.race_notes_log();
alter table public.race_notes enable row level security;
drop policy if exists race_notes_own on public.race_notes;
create policy race_notes_own on public.race_notes for all to authenticated
  using (owner_id = (auth.jwt() ->> 'sub')) with check (owner_id = (auth.jwt() ->> 'sub'));
grant select, insert, update, delete on public.race_notes to authenticated, service_role;

"""

DEAD = {"UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters"}
SERVICE = {"UPLOAD_MODE": "service", "UPLOAD_TABLES": "race_notes", "UPLOAD_OWNER_COLUMN": "owner_id"}


@pytest.fixture(scope="module")
def race_schema(pg):
    pg.run_sql(SQL)


@pytest.fixture(scope="module")
def race_workers(race_schema, base_vars, start_workers):
    return start_workers({
        "atomic": {**base_vars, "UPLOAD_ATOMIC": "true"},
        "service": {**base_vars, **SERVICE, "UPLOAD_ATOMIC": "true"},
        "auto-dead": {**base_vars, **DEAD},
        "service-dead": {**base_vars, **SERVICE, **DEAD, "UPLOAD_ATOMIC": "true"},
    })


@pytest.fixture
def race_db(db):
    db.execute("truncate public.race_notes, public.race_log")
    return db


def _log(db, row: str) -> list[tuple]:
    return db.execute("select op, body from public.race_log where id = %s order by n", (row,)).fetchall()


def _together(*calls, stagger: float = 0.3):
    """Runs the calls in threads, each `stagger` seconds after the one before; their results."""
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = []
        for call in calls:
            futures.append(pool.submit(call))
            time.sleep(stagger)
        return [f.result() for f in futures]


@pytest.mark.parametrize("mode", ["atomic", "service", "auto-dead"])
def test_the_same_upload_posted_twice_at_once_applies_each_transaction_once(mode, race_workers, race_db, standin,
                                                                              session_token):
    """A client retry while the first request is still in the database (T1's write naps 1.5 s
    with its ledger claim held): the copy waits on the claim and finds T1 applied; T2 is applied
    by one of them and answered from the ledger to the other; every write applied once, T2 last."""
    worker = race_workers[mode]
    user = str(uuid.uuid4())
    token = session_token(user)
    row = "n-" + str(uuid.uuid4())
    payload = {"client_id": "dev-" + str(uuid.uuid4()), "transactions": [
        {"transaction_id": 1, "crud": [put("race_notes", row, body="slow-1", owner_id=user)]},
        {"transaction_id": 2, "crud": [patch("race_notes", row, body="v2")]},
    ]}
    first, copy = _together(lambda: upload(worker, token, payload), lambda: upload(worker, token, payload))
    wait_until_standin_idle(standin)
    assert statuses(first) == ["success", "success"], first.text
    assert statuses(copy) == ["success", "success"], copy.text
    assert _log(race_db, row) == [("INSERT", "slow-1"), ("UPDATE", "v2")], "each write applied once, in order"
    assert race_db.execute("select body from public.race_notes where id = %s", (row,)).fetchone() == ("v2",)
    # Each transaction applied by one of them and answered from the ledger to the other: T1 by
    # the one that claimed it first (the other waited on its claim), T2 by whichever claimed it
    # first once T1 committed.
    held = [[bool(r.get("already_applied")) for r in answer.json()["results"]] for answer in (first, copy)]
    for t in (0, 1):
        assert sorted([held[0][t], held[1][t]]) == [False, True], (t + 1, first.text, copy.text)


@pytest.mark.parametrize("mode", ["atomic", "service"])
def test_another_user_with_the_same_client_and_transaction_ids_is_neither_held_nor_answered_already_applied(
        mode, race_workers, race_db, standin, session_token):
    """A's call of (client c, transaction 1) holds its ledger claim 1.5 s; B's call of the same
    ids at the same time is applied at once, as B's own."""
    worker = race_workers[mode]
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    row_a, row_b = "a-" + str(uuid.uuid4()), "b-" + str(uuid.uuid4())
    client = "shared-client"
    body_a = {"client_id": client, "transactions": [
        {"transaction_id": 1, "crud": [put("race_notes", row_a, body="slow-a", owner_id=a)]}]}
    body_b = {"client_id": client, "transactions": [
        {"transaction_id": 1, "crud": [put("race_notes", row_b, body="b", owner_id=b)]}]}

    def answered(token, payload):
        answer = upload(worker, token, payload)
        return answer, time.monotonic()

    (ra, a_done), (rb, b_done) = _together(lambda: answered(session_token(a), body_a),
                                           lambda: answered(session_token(b), body_b), stagger=0.3)
    wait_until_standin_idle(standin)
    assert ra.json()["results"] == [{"status": "success", "transaction_id": 1}], ra.text
    assert rb.json()["results"] == [{"status": "success", "transaction_id": 1}], rb.text
    # B, sent 0.3 s after A, is answered while A's write still naps: not held behind A's claim
    assert b_done < a_done, f"B answered {b_done - a_done:.2f} s after A: held behind A's claim"
    assert _log(race_db, row_b) == [("INSERT", "b")]


@pytest.mark.parametrize("mode", ["auto-dead", "service-dead"])
def test_a_rejected_transaction_posted_twice_at_once_is_dead_lettered_once_and_answered_rejected_twice(
        mode, race_workers, race_db, standin, session_token):
    """T1 is refused after its write naps (23514); both copies report it rejected, one dead letter
    holds it, the ledger holds it rejected, and T2 is applied once after it."""
    worker = race_workers[mode]
    user = str(uuid.uuid4())
    token = session_token(user)
    row, other = "n-" + str(uuid.uuid4()), "m-" + str(uuid.uuid4())
    client = "dev-" + str(uuid.uuid4())
    payload = {"client_id": client, "transactions": [
        {"transaction_id": 1, "crud": [put("race_notes", row, body="slow-bad", owner_id=user)]},
        {"transaction_id": 2, "crud": [put("race_notes", other, body="t2", owner_id=user)]},
    ]}
    first, copy = _together(lambda: upload(worker, token, payload), lambda: upload(worker, token, payload))
    wait_until_standin_idle(standin)
    assert statuses(first) == ["fatal_error", "success"], first.text
    assert statuses(copy) == ["fatal_error", "success"], copy.text
    letters = race_db.execute("select transaction_id from public.powersync_dead_letters where client_id = %s",
                              (client,)).fetchall()
    assert letters == [("1",)], letters
    ledger = race_db.execute("select transaction_id, dead_letter_id is not null from public.powersync_upload_ledger"
                             " where client_id = %s order by transaction_id", (client,)).fetchall()
    assert ledger == [("1", True), ("2", False)], ledger
    assert _log(race_db, other) == [("INSERT", "t2")], "T2 applied once"
    assert race_db.execute("select count(*) from public.race_notes where id = %s", (row,)).fetchone() == (0,)

