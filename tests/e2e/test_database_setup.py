"""The database's own setup refusing a privilege no row could have: the upload waits.

A 42501 is the data's only when it refuses the row itself (a row-level security policy of the
table written, the bridge's refusal of a row another user owns). Any other is the operator's to
fix (docs/upload.md, "Error classes"): a trigger that refreshes a materialized view only its
owner may refresh, one that sets a superuser's parameter, one whose log table's policies refuse
its own insert. Each fails every write of every user; each must leave the upload queued
(retryable), and the write applies once the operator fixes it. (The same rule keeps a missing
GRANT worded in the server's own language waiting: outcome's unit tests, since the local
PostgreSQL has no other locale.)
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from tests.e2e.upload_helpers import a_list, body, delete, patch, put, statuses, tx, upload, waits_for_the_operator
from tests.support.db import new_id


@pytest.fixture(scope="module")
def instances(base_vars, start_workers):
    configs = {
        "rest": {**base_vars, "UPLOAD_ATOMIC": "false"},
        "atomic": {**base_vars, "UPLOAD_ATOMIC": "true"},
        "auto": dict(base_vars),
        "atomic_compared": {**base_vars, "UPLOAD_ATOMIC": "true", "UPLOAD_CONFLICT_DETECTION": "true"},
        "rest_compared": {**base_vars, "UPLOAD_ATOMIC": "false", "UPLOAD_CONFLICT_DETECTION": "true"},
    }
    return start_workers(configs)


@contextmanager
def refreshing_trigger(db):
    """A common Supabase pattern: an AFTER trigger keeps a materialized view of counts fresh.
    PostgreSQL 15 lets only the view's owner refresh it: the trigger (security invoker) fails
    for every API session with `42501 must be owner of materialized view list_counts`."""
    db.execute("create materialized view public.list_counts as select count(*) as n from public.lists;"
               " grant select on public.list_counts to authenticated;"
               " create function public.refresh_list_counts() returns trigger language plpgsql"
               " set search_path = public as $$ begin refresh materialized view public.list_counts;"
               " return null; end $$;"
               " create trigger refresh_list_counts after insert or update or delete on public.lists"
               " for each statement execute function public.refresh_list_counts()")
    try:
        yield
    finally:
        db.execute("drop trigger if exists refresh_list_counts on public.lists;"
                   " drop function if exists public.refresh_list_counts();"
                   " drop materialized view if exists public.list_counts")


@pytest.mark.parametrize("name", ["rest", "atomic", "auto"])
def test_a_trigger_refreshing_a_materialized_view_keeps_the_upload_queued(instances, db, user, name):
    sub, token = user
    list_id = new_id()
    payload = body(tx(a_list(sub, list_id), tid=1))
    with refreshing_trigger(db):
        response = upload(instances[name], token, payload)
        waits_for_the_operator(response, "42501", "must be owner")
    response = upload(instances[name], token, payload)
    assert statuses(response) == ["success"], response.text


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_trigger_setting_a_superuser_parameter_keeps_the_upload_queued(instances, db, user, name):
    """A trigger that sets `session_replication_role` (to skip other triggers) fails for every
    API session: `42501 permission denied to set parameter`. The operator's code, not the data."""
    sub, token = user
    list_id = new_id()
    db.execute("create function public.quiet_lists() returns trigger language plpgsql as $$"
               " begin perform set_config('session_replication_role', 'replica', true); return new; end $$;"
               " create trigger quiet_lists before insert on public.lists"
               " for each row execute function public.quiet_lists()")
    try:
        response = upload(instances[name], token, body(tx(a_list(sub, list_id), tid=1)))
        waits_for_the_operator(response, "42501", "permission denied to set parameter")
    finally:
        db.execute("drop trigger if exists quiet_lists on public.lists; drop function if exists public.quiet_lists()")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_trigger_writing_a_table_without_an_insert_policy_keeps_the_upload_queued(instances, db, user, name):
    """A classic Supabase mistake: a trigger on lists (security invoker) logs into
    public.list_events, which has RLS on and no INSERT policy for authenticated. Every write
    fails with `new row violates row-level security policy for table "list_events"`: a table
    the upload never names, so the refusal is the trigger's setup, not the row's."""
    sub, token = user
    list_id = new_id()
    db.execute("create table public.list_events (id bigint generated always as identity primary key,"
               " list_id uuid, at timestamptz default now());"
               " alter table public.list_events enable row level security;"
               " grant select, insert on public.list_events to authenticated;"
               " create function public.log_list() returns trigger language plpgsql as $$"
               " begin insert into public.list_events (list_id) values (new.id); return new; end $$;"
               " create trigger log_list after insert on public.lists"
               " for each row execute function public.log_list()")
    try:
        response = upload(instances[name], token, body(tx(a_list(sub, list_id), tid=1)))
        waits_for_the_operator(response, "42501", "list_events")
    finally:
        db.execute("drop trigger if exists log_list on public.lists; drop function if exists public.log_list();"
                   " drop table if exists public.list_events")


# Policies no row can pass: the atomic function says so (over REST PostgreSQL's refusal reads as the
# row's, docs/upload.md).
@contextmanager
def insert_only_table(db, table: str):
    """A write-only table (feedback, events): every privilege granted, RLS on, a policy for
    INSERT only. A plain INSERT passes; PostgREST's upsert (the bridge's PUT), which also needs
    SELECT and UPDATE policies, is refused with `new row violates row-level security policy`
    for EVERY row, its own included. The same table kept insert-only by GRANTs waits (42501
    permission denied, docs: "a table without update takes no PUT (the write waits until then)")."""
    db.execute(f"create table public.{table} (id uuid primary key, body text,"
               f" user_id uuid not null default auth.uid());"
               f" alter table public.{table} enable row level security;"
               f" create policy ins on public.{table} for insert to authenticated"
               f" with check (user_id = auth.uid());"
               f" grant select, insert, update, delete on public.{table} to authenticated")
    try:
        yield
    finally:
        db.execute(f"drop table if exists public.{table}")


@pytest.mark.parametrize("name", ["atomic", "auto"])
def test_an_insert_only_table_by_policy_does_not_discard_the_users_own_rows(instances, db, user, name):
    sub, token = user
    table = "feedback_" + name
    with insert_only_table(db, table):
        own = new_id()
        response = upload(instances[name], token, body(tx(put(table, own, body="great app", user_id=sub), tid=1)))
        waits_for_the_operator(response, "42501", "no policy lets authenticated UPDATE")


@pytest.mark.parametrize("name", ["atomic", "auto"])
def test_a_table_with_rls_enabled_and_no_policy_yet_keeps_the_upload_queued(instances, db, user, name):
    """Supabase's dashboard creates tables with RLS enabled and no policy: until the operator
    writes the policies, every write of every user is refused (`new row violates row-level
    security policy`). No row could pass, so no row is at fault: the writes must wait."""
    sub, token = user
    table = "nopolicy_" + name
    db.execute(f"create table public.{table} (id uuid primary key, note text);"
               f" alter table public.{table} enable row level security;"
               f" grant select, insert, update, delete on public.{table} to authenticated")
    try:
        own = new_id()
        response = upload(instances[name], token, body(tx(put(table, own, note="n"), tid=1)))
        waits_for_the_operator(response, "42501", "no policy lets authenticated INSERT")
        db.execute(f"create policy everyone on public.{table} for all to authenticated using (true) with check (true)")
        response = upload(instances[name], token, body(tx(put(table, own, note="n"), tid=1)))
        assert statuses(response) == ["success"], response.text
    finally:
        db.execute(f"drop table if exists public.{table}")


@contextmanager
def table_without_a_policy_for(db, table: str, missing: str):
    """A table whose policies let its owner read and insert, and all but one command (`missing`:
    UPDATE or DELETE: the policy the operator forgot). No row can be updated (or deleted) by
    anyone; PostgreSQL says nothing, the statement changes no row. Holds one row of the user's."""
    commands = [c for c in ("UPDATE", "DELETE") if c != missing]
    db.execute(f"create table public.{table} (id uuid primary key, note text,"
               f" user_id uuid not null default auth.uid());"
               f" alter table public.{table} enable row level security;"
               f" create policy sel on public.{table} for select to authenticated using (user_id = auth.uid());"
               f" create policy ins on public.{table} for insert to authenticated with check (user_id = auth.uid());"
               + "".join(f" create policy p_{c.lower()} on public.{table} for {c} to authenticated"
                         f" using (user_id = auth.uid());" for c in commands)
               + f" grant select, insert, update, delete on public.{table} to authenticated")
    try:
        yield
    finally:
        db.execute(f"drop table if exists public.{table}")


@pytest.mark.parametrize("name", ["atomic", "auto", "atomic_compared"])
def test_a_patch_of_a_table_no_update_policy_lets_anyone_write_waits_instead_of_being_unchanged(
        instances, db, user, name):
    """RLS on, policies for SELECT and INSERT, none for UPDATE (forgotten): every PATCH of every
    user changes no row. Reported `unchanged` (or, compared with its previous values, a
    `conflict` against the row it could read), the client dropped it. No row can pass: it waits,
    and applies once the policy exists."""
    sub, token = user
    table = "noupdate_" + name
    with table_without_a_policy_for(db, table, "UPDATE"):
        own = new_id()
        db.execute(f"insert into public.{table} (id, note, user_id) values (%s, 'v0', %s)", (own, sub))
        entry = patch(table, own, note="v1")
        entry["previous_values"] = {"note": "v0"}
        payload = body(tx(entry, tid=1))
        response = upload(instances[name], token, payload)
        waits_for_the_operator(response, "42501", "no policy lets authenticated UPDATE")
        db.execute(f"create policy upd on public.{table} for update to authenticated using (user_id = auth.uid())")
        response = upload(instances[name], token, payload)
        assert statuses(response) == ["success"] and not response.json()["results"][0].get("unchanged"), response.text
        assert db.execute(f"select note from public.{table} where id = %s", (own,)).fetchone()[0] == "v1"


@pytest.mark.parametrize("name", ["atomic", "auto", "atomic_compared"])
def test_a_delete_of_a_table_no_delete_policy_lets_anyone_write_waits_instead_of_being_unchanged(
        instances, db, user, name):
    sub, token = user
    table = "nodelete_" + name
    with table_without_a_policy_for(db, table, "DELETE"):
        own = new_id()
        db.execute(f"insert into public.{table} (id, note, user_id) values (%s, 'v0', %s)", (own, sub))
        removal = delete(table, own)
        removal["previous_values"] = {"note": "v0"}  # compared with UPLOAD_CONFLICT_DETECTION
        payload = body(tx(removal, tid=1))
        response = upload(instances[name], token, payload)
        waits_for_the_operator(response, "42501", "no policy lets authenticated DELETE")
        db.execute(f"create policy del on public.{table} for delete to authenticated using (user_id = auth.uid())")
        response = upload(instances[name], token, payload)
        assert statuses(response) == ["success"] and not response.json()["results"][0].get("unchanged"), response.text
        assert db.execute(f"select count(*) from public.{table} where id = %s", (own,)).fetchone()[0] == 0


def test_a_delete_a_policy_refuses_on_purpose_is_unchanged_not_waiting(instances, db, user):
    """A table users may not delete from on purpose says so with a policy no row passes
    (`using (false)`): a DELETE is the row's, reported `unchanged` as before, and nothing waits."""
    sub, token = user
    table = "nodelete_on_purpose"
    with table_without_a_policy_for(db, table, "DELETE"):
        db.execute(f"create policy no_delete on public.{table} for delete to authenticated using (false)")
        own = new_id()
        db.execute(f"insert into public.{table} (id, note, user_id) values (%s, 'v0', %s)", (own, sub))
        response = upload(instances["atomic"], token, body(tx(delete(table, own), tid=1)))
        assert statuses(response) == ["success"] and response.json()["results"][0]["unchanged"] == [0], response.text


def test_a_patch_of_a_row_a_policy_hides_is_still_unchanged(instances, db, user, other_user):
    """The policies exist and hide another user's row: its PATCH changed no row, reported
    `unchanged` as before (the row's, not the setup's)."""
    sub, token = user
    other, _ = other_user
    table = "hidden_rows"
    with table_without_a_policy_for(db, table, "none"):
        theirs = new_id()
        db.execute(f"insert into public.{table} (id, note, user_id) values (%s, 'v0', %s)", (theirs, other))
        response = upload(instances["atomic"], token, body(tx(patch(table, theirs, note="mine"), tid=1)))
        assert statuses(response) == ["success"] and response.json()["results"][0]["unchanged"] == [0], response.text


@pytest.mark.parametrize("name", ["atomic_compared", "rest_compared"])
def test_a_compared_write_a_policy_refuses_on_a_row_nobody_changed_is_unchanged_not_a_conflict(
        instances, db, user, other_user, name):
    """A team's table: everyone reads every row, only the owner updates or deletes it. Another
    user's PATCH and DELETE, sent with the previous values they saw, change no row: the policies
    refused them, nobody changed the row. `unchanged`, as without conflict detection, not a
    `conflict` ("the row changed since the client saw it")."""
    sub, token = user
    owner, _ = other_user
    table = "team_notes_" + name
    db.execute(f"create table public.{table} (id uuid primary key, note text,"
               f" user_id uuid not null default auth.uid());"
               f" alter table public.{table} enable row level security;"
               f" create policy sel on public.{table} for select to authenticated using (true);"
               f" create policy ins on public.{table} for insert to authenticated with check (user_id = auth.uid());"
               f" create policy upd on public.{table} for update to authenticated using (user_id = auth.uid());"
               f" create policy del on public.{table} for delete to authenticated using (user_id = auth.uid());"
               f" grant select, insert, update, delete on public.{table} to authenticated")
    try:
        theirs = new_id()
        db.execute(f"insert into public.{table} (id, note, user_id) values (%s, 'v0', %s)", (theirs, owner))
        edit = patch(table, theirs, note="mine")
        edit["previous_values"] = {"note": "v0"}
        removal = delete(table, theirs)
        removal["previous_values"] = {"note": "v0", "user_id": owner}
        for tid, entry in ((1, edit), (2, removal)):
            response = upload(instances[name], token, body(tx(entry, tid=tid)))
            result = response.json()["results"][0]
            assert result["status"] == "success" and result["unchanged"] == [0], response.text
        assert db.execute(f"select note from public.{table} where id = %s", (theirs,)).fetchone()[0] == "v0"
        # a row someone did change is still a conflict
        db.execute(f"update public.{table} set note = 'v1' where id = %s", (theirs,))
        response = upload(instances[name], token, body(tx(edit, tid=3)))
        assert statuses(response) == ["conflict"], response.text
    finally:
        db.execute(f"drop table if exists public.{table}")


def test_over_rest_a_compared_patch_no_update_policy_lets_through_is_unchanged_not_a_conflict(instances, db, user):
    """REST requests cannot tell a forgotten policy from the row's (docs/upload.md): the PATCH is
    `unchanged`, as without conflict detection, not a `conflict`."""
    sub, token = user
    table = "noupdate_rest_compared"
    with table_without_a_policy_for(db, table, "UPDATE"):
        own = new_id()
        db.execute(f"insert into public.{table} (id, note, user_id) values (%s, 'v0', %s)", (own, sub))
        entry = patch(table, own, note="v1")
        entry["previous_values"] = {"note": "v0"}
        response = upload(instances["rest_compared"], token, body(tx(entry, tid=1)))
        result = response.json()["results"][0]
        assert result["status"] == "success" and result["unchanged"] == [0], response.text


# The database out of room for any row, under codes that are otherwise the data's (23514, 2200H).
@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_trigger_logging_into_a_partitioned_table_without_this_months_partition_keeps_the_upload_queued(
        instances, db, user, name):
    """An audit log partitioned by month, written by a trigger, whose next partition nobody
    created (pg_partman's maintenance stopped): every write of every user fails with `23514 no
    partition of relation "list_log" found for row`, a check violation's code. The write waits,
    and applies once the partition exists."""
    sub, token = user
    list_id = new_id()
    db.execute("create table public.list_log (list_id uuid, at timestamptz not null default now())"
               " partition by range (at);"
               " create table public.list_log_old partition of public.list_log"
               " for values from ('2000-01-01') to ('2001-01-01');"
               " grant insert on public.list_log to authenticated, service_role;"
               " create function public.log_list_write() returns trigger language plpgsql as $$"
               " begin insert into public.list_log (list_id) values (new.id); return new; end $$;"
               " create trigger log_list_write after insert or update on public.lists"
               " for each row execute function public.log_list_write()")
    try:
        payload = body(tx(a_list(sub, list_id), tid=1))
        response = upload(instances[name], token, payload)
        waits_for_the_operator(response, "23514", "create it, or a default partition")
        db.execute("create table public.list_log_rest partition of public.list_log default")
        response = upload(instances[name], token, payload)
        assert statuses(response) == ["success"], response.text
        assert db.execute("select count(*) from public.list_log where list_id = %s", (list_id,)).fetchone()[0] == 1
    finally:
        db.execute("drop trigger if exists log_list_write on public.lists;"
                   " drop function if exists public.log_list_write(); drop table if exists public.list_log")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_serial_column_whose_sequence_is_used_up_keeps_the_upload_queued(instances, db, user, name):
    """A `serial` (int4) counter column outgrown: `2200H nextval: reached maximum value of
    sequence`, refusing every insert of every user. The write waits for a bigger sequence."""
    sub, token = user
    table = "numbered_" + name
    db.execute(f"create table public.{table} (id uuid primary key, n serial, note text);"
               f" grant select, insert, update, delete on public.{table} to authenticated, service_role;"
               f" grant usage on sequence public.{table}_n_seq to authenticated, service_role;"
               f" select setval('public.{table}_n_seq', 2147483647)")
    try:
        own = new_id()
        payload = body(tx(put(table, own, note="n"), tid=1))
        response = upload(instances[name], token, payload)
        waits_for_the_operator(response, "2200H", "make the column and its sequence bigint")
        db.execute(f"alter sequence public.{table}_n_seq as bigint maxvalue 9223372036854775807;"
                   f" alter table public.{table} alter column n type bigint")
        response = upload(instances[name], token, payload)
        assert statuses(response) == ["success"], response.text
    finally:
        db.execute(f"drop table if exists public.{table}")

