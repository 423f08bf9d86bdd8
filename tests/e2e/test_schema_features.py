"""Schema features and database limits of a real Supabase project, misconfigured: the upload must
wait (retryable) for what the operator can fix, and report applied only what the database holds.

Rules, views, partitioned tables, identity and generated columns, deferred constraints, triggers
whose own code fails, a role's statement timeout. Each test undoes the schema change it makes
(`finally`), so later tests are not poisoned. (A database in read-only mode, `25006`, is not
tested here: `alter system` would make the PowerSync service's own storage, on the same server,
read-only too, and break the sync suites after it; outcome's unit tests keep `25006` waiting
as schema drift does.)
"""

from __future__ import annotations

from contextlib import contextmanager
from uuid import UUID

import psycopg
import pytest

from tests.e2e.upload_helpers import (a_list, body, delete, failure, patch, put, statuses, tx, upload,
                                      waits_for_the_operator)
from tests.support.db import insert_list, new_id, row


@pytest.fixture(scope="module")
def instances(base_vars, start_workers):
    configs = {
        "rest": {**base_vars, "UPLOAD_ATOMIC": "false"},
        "atomic": {**base_vars, "UPLOAD_ATOMIC": "true"},
        "auto": dict(base_vars),
        "rest_dead": {**base_vars, "UPLOAD_ATOMIC": "false", "UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters"},
        "atomic_dead": {**base_vars, "UPLOAD_ATOMIC": "true", "UPLOAD_DEAD_LETTER_TABLE": "powersync_dead_letters"},
    }
    return start_workers(configs)


@contextmanager
def schema(db, create: str, drop: str):
    db.execute(create)
    try:
        yield
    finally:
        db.execute(drop)


def touching_lists(db, timing: str, code: str):
    """A row trigger `timing` (before/after) update on public.lists running the PL/pgSQL `code`."""
    return schema(db, "create function public.touch_lists() returns trigger language plpgsql as $$"
                      f" begin {code} end $$;"
                      f" create trigger touch_lists {timing} update on public.lists"
                      " for each row execute function public.touch_lists()",
                  "drop trigger if exists touch_lists on public.lists; drop function if exists public.touch_lists()")


# --------------------------------------------------------------------------- triggers whose code fails
# PostgREST answers a SQLSTATE of a class it does not list with 400, which the bridge reads as the
# data's (fatal). Some such classes are raised only by the database's own functions and triggers.

@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_before_update_trigger_updating_its_own_row_keeps_the_upload_queued(instances, db, user, name):
    """A classic `updated_at` trigger written wrong: BEFORE UPDATE, it runs its own `update` of
    the row being updated. PostgreSQL refuses every update of the table: `27000 tuple to be
    updated was already modified by an operation triggered by the current command` (HINT:
    use an AFTER trigger). No row can pass; only the trigger's SQL can cause it, never the data
    PostgREST sends. The write must wait for the operator's fix, not be discarded."""
    sub, token = user
    list_id = insert_list(db, sub, "before")
    payload = body(tx(patch("lists", list_id, name="after"), tid=1))
    with touching_lists(db, "before", "if pg_trigger_depth() < 2 then"
                        " update public.lists set created_at = now() where id = new.id; end if; return new;"):
        response = upload(instances[name], token, payload)
        assert row(db, "lists", list_id)["name"] == "before"
        waits_for_the_operator(response, "27000")
    response = upload(instances[name], token, payload)
    assert statuses(response) == ["success"], response.text
    assert row(db, "lists", list_id)["name"] == "after"


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_trigger_whose_case_lacks_an_else_keeps_the_upload_queued(instances, db, user, name):
    """A PL/pgSQL `case` without `else` in a trigger: a value the trigger's author did not list
    (a new app release's) fails with `20000 case not found` (HINT: CASE statement is missing ELSE
    part). The function's bug, fixed by the operator as one whose `return` is missing (2F005,
    which waits): not a value the column refuses."""
    sub, token = user
    list_id = new_id()
    payload = body(tx(a_list(sub, list_id, name="new-kind"), tid=1))
    with schema(db,
                "create function public.kind_of_list() returns trigger language plpgsql as $$"
                " begin case new.name when 'n' then null; end case; return new; end $$;"
                " create trigger kind_of_list before insert on public.lists"
                " for each row execute function public.kind_of_list()",
                "drop trigger if exists kind_of_list on public.lists; drop function if exists public.kind_of_list()"):
        response = upload(instances[name], token, payload)
        assert row(db, "lists", list_id) is None
        waits_for_the_operator(response, "20000")
    response = upload(instances[name], token, payload)
    assert statuses(response) == ["success"], response.text


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_trigger_recursing_into_its_own_table_keeps_the_upload_queued(instances, db, user, name):
    """The other classic `updated_at` mistake: AFTER UPDATE, running `update` of its own table
    without a depth guard. It recurses until `54001 stack depth limit exceeded`, for every
    update of every user. The values written are one short text: nothing in the data nests."""
    sub, token = user
    list_id = insert_list(db, sub, "before")
    payload = body(tx(patch("lists", list_id, name="after"), tid=1))
    with touching_lists(db, "after", "update public.lists set created_at = now() where id = new.id; return null;"):
        response = upload(instances[name], token, payload)
        assert row(db, "lists", list_id)["name"] == "before"
        waits_for_the_operator(response, "54001")
    response = upload(instances[name], token, payload)
    assert statuses(response) == ["success"], response.text


# --------------------------------------------------------------------------- rules, views, columns
@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_rule_doing_nothing_instead_of_the_insert_is_never_reported_applied(instances, db, user, name):
    """`create rule ... on insert do instead nothing`: over REST PostgREST's statement (a CTE
    with RETURNING) is refused (0A000, the setup's: waits); the atomic function's upsert inserts
    nothing and lists the PUT in `unchanged`. Never a plain success, never fatal."""
    sub, token = user
    list_id = new_id()
    with schema(db, "create rule lists_drop as on insert to public.lists do instead nothing",
                "drop rule if exists lists_drop on public.lists"):
        response = upload(instances[name], token, body(tx(a_list(sub, list_id), tid=1)))
        assert row(db, "lists", list_id) is None
        if name == "atomic":
            assert statuses(response) == ["success"], response.text
            assert response.json()["results"][0].get("unchanged") == [0], response.text
        else:
            waits_for_the_operator(response, "0A000")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_soft_delete_rule_without_returning_keeps_the_delete_queued(instances, db, user, name):
    """`on delete do instead update ... set deleted` (soft delete) without a RETURNING clause:
    both routes delete through a statement with RETURNING (PostgREST's `WITH pgrst_source AS
    (DELETE ... RETURNING 1)` whatever the Prefer header), which PostgreSQL refuses (0A000,
    `You need an unconditional ON DELETE DO INSTEAD rule with a RETURNING clause`): waits."""
    sub, token = user
    list_id = insert_list(db, sub, "kept")
    with schema(db, "create rule lists_soft as on delete to public.lists do instead"
                    " update public.lists set name = 'deleted' where id = old.id",
                "drop rule if exists lists_soft on public.lists"):
        response = upload(instances[name], token, body(tx(delete("lists", list_id), tid=1)))
        assert row(db, "lists", list_id)["name"] == "kept"
        waits_for_the_operator(response, "0A000")


@pytest.mark.parametrize("name", ["rest", "atomic"])
@pytest.mark.parametrize("ddl", [
    # identity id the client cannot send; a stored generated column the client sends back
    ("create table public.{t} (id bigint generated always as identity primary key, note text);",
     {"id": "5", "note": "n"}, "428C9"),
    ("create table public.{t} (id uuid primary key, a int, b int generated always as (a * 2) stored);",
     {"id": None, "a": 1, "b": 2}, "428C9"),
    # a partitioned table: its primary key must hold the partition key, so there is no unique id
    ("create table public.{t} (id uuid, k int default 1, note text, primary key (id, k)) partition by list (k);"
     " create table public.{t}_1 partition of public.{t} for values in (1);",
     {"id": None, "note": "n"}, "42P10"),
    # a view whose INSTEAD OF trigger does the insert: no unique index for the upsert
    ("create table public.{t}_base (id uuid primary key, note text);"
     " create view public.{t} as select * from public.{t}_base;"
     " create function public.{t}_ins() returns trigger language plpgsql as $$ begin"
     " insert into public.{t}_base values (new.id, new.note); return new; end $$;"
     " create trigger {t}_ins instead of insert on public.{t} for each row execute function public.{t}_ins();",
     {"id": None, "note": "n"}, "42P10"),
], ids=["identity", "generated", "partitioned", "instead_of_view"])
def test_a_table_no_upsert_can_write_keeps_the_upload_queued(instances, db, user, name, ddl):
    sub, token = user
    create, data, code = ddl
    table = f"sf_{name}"
    data = {k: (v if v is not None else new_id()) for k, v in data.items()}
    kind = "view" if "create view" in create else "table"
    # the objects this case creates only (a grant on every table in public would outlive the test
    # and open the bridge's own tables to authenticated for every test after it)
    made = [table] + ([f"{table}_base"] if kind == "view" else []) + ([f"{table}_1"] if "partition of" in create else [])
    grant = f" grant select, insert, update, delete on {', '.join('public.' + t for t in made)} to authenticated;"
    with schema(db, create.format(t=table) + grant,
                f"drop {kind} if exists public.{table} cascade;"
                f" drop table if exists public.{table}_base cascade; drop function if exists public.{table}_ins()"):
        response = upload(instances[name], token, body(tx(put(table, data.pop("id"), data), tid=1)))
        waits_for_the_operator(response, code)


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_view_with_check_option_refuses_only_the_row(instances, db, user, name):
    """An auto-updatable view with `with check option`: a row outside it is the data's (44000,
    fatal); a row inside it applies, and is held by the base table."""
    sub, token = user
    table = f"sfv_{name}"
    with schema(db, f"create table public.{table}_base (id uuid primary key, note text);"
                    f" create view public.{table} as select * from public.{table}_base where note <> 'bad'"
                    f" with check option;"
                    f" grant select, insert, update, delete on public.{table}, public.{table}_base to authenticated",
                f"drop view if exists public.{table}; drop table if exists public.{table}_base"):
        good, bad = new_id(), new_id()
        response = upload(instances[name], token, body(tx(put(table, good, note="ok"), tid=1),
                                                       tx(put(table, bad, note="bad"), tid=2)))
        assert statuses(response) == ["success", "fatal_error"], response.text
        assert failure(response, 1)["code"] == "44000"
        assert db.execute(f"select note from public.{table}_base where id = %s", (good,)).fetchone() == ("ok",)
        assert db.execute(f"select count(*) from public.{table}_base where id = %s", (bad,)).fetchone() == (0,)


# --------------------------------------------------------------------------- deferred constraints
def deferred_check_on_lists(db):
    """A constraint trigger checked at COMMIT that refuses a list named `bad` (23514)."""
    return schema(db, "create function public.lists_bad() returns trigger language plpgsql as $$ begin"
                      " if new.name = 'bad' then raise exception using errcode = '23514', message = 'bad name';"
                      " end if; return null; end $$;"
                      " create constraint trigger lists_bad after insert or update on public.lists"
                      " deferrable initially deferred for each row execute function public.lists_bad()",
                  "drop trigger if exists lists_bad on public.lists; drop function if exists public.lists_bad()")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_deferred_constraint_failing_at_commit_applies_nothing_and_reports_nothing_applied(
        instances, db, user, name):
    """A DEFERRABLE INITIALLY DEFERRED check fails at COMMIT, after the atomic function returned
    its result: the transaction is rejected (the data's, 23514), nothing of it is held, and a
    re-send is rejected again (the ledger's record rolled back with it)."""
    sub, token = user
    first, second = new_id(), new_id()
    with deferred_check_on_lists(db):
        payload = {**body(tx(a_list(sub, first, "good"), a_list(sub, second, "bad"), tid="d1")),
                   "client_id": f"c-{name}"}
        for _ in range(2):
            response = upload(instances[name], token, payload)
            assert statuses(response) == ["fatal_error"], response.text
            assert failure(response, 0)["code"] == "23514"
            if name == "atomic":
                assert row(db, "lists", first) is None
        assert row(db, "lists", second) is None


# --------------------------------------------------------------------------- database limits
@pytest.mark.parametrize("name", ["rest", "atomic", "auto"])
@pytest.mark.parametrize("setting", ["statement_timeout = '50ms'", "lock_timeout = '50ms'"])
def test_a_roles_low_timeout_keeps_the_upload_queued(instances, db, pg, user, name, setting):
    """`alter role authenticated set statement_timeout` (or `lock_timeout`) set too low for a
    slow trigger (or a row another session holds locked): every write waits (retryable),
    nothing is discarded or reported applied."""
    sub, token = user
    list_id = insert_list(db, sub, "before")
    payload = {**body(tx(patch("lists", list_id, name="after"), tid="t1")), "client_id": f"to-{name}"}
    db.execute(f"alter role authenticated set {setting}")
    db.execute("create function public.slow_lists() returns trigger language plpgsql as $$"
               " begin perform pg_sleep(0.2); return new; end $$;"
               " create trigger slow_lists before update on public.lists"
               " for each row execute function public.slow_lists()")
    locker = psycopg.connect(pg.dsn)
    try:
        if setting.startswith("lock_timeout"):
            locker.execute("select 1 from public.lists where id = %s for update", (list_id,))
        response = upload(instances[name], token, payload)
        assert statuses(response) == ["retryable_error"], response.text
        assert row(db, "lists", list_id)["name"] == "before"
    finally:
        locker.rollback()
        locker.close()
        db.execute(f"alter role authenticated reset {setting.split()[0]}")
        db.execute("drop trigger if exists slow_lists on public.lists; drop function if exists public.slow_lists()")
    response = upload(instances[name], token, payload)
    assert statuses(response) == ["success"], response.text
    assert row(db, "lists", list_id)["name"] == "after"


@pytest.mark.parametrize("name", ["rest_dead", "atomic_dead"])
def test_a_deferred_constraint_failing_at_commit_is_dead_lettered_as_it_stands(instances, db, user, name):
    """The dead letter of a transaction a deferred check refused at COMMIT says what the database
    holds: through the function nothing (every entry `failed`), through REST the entries the
    halves committed `applied`; one letter however often it is sent."""
    sub, token = user
    first, second = new_id(), new_id()
    with deferred_check_on_lists(db):
        payload = {**body(tx(a_list(sub, first, "good"), a_list(sub, second, "bad"), tid="d2")),
                   "client_id": f"cd-{name}"}
        for _ in range(2):
            response = upload(instances[name], token, payload)
            assert statuses(response) == ["fatal_error"], response.text
        held = row(db, "lists", first) is not None
        letters = [r[0] for r in db.execute(
            "select jsonb_build_object('op_index', op_index, 'code', code, 'states',"
            " (select jsonb_agg(e -> 'state') from jsonb_array_elements(entries) e))"
            " from public.powersync_dead_letters where user_id = %s", (sub,))]
        assert len(letters) == 1, letters
        states = letters[0]["states"]
        assert states[0] == ("applied" if held else "failed"), (held, letters)
        assert states[1] == "failed", letters


@pytest.mark.parametrize("name", ["rest", "atomic"])
@pytest.mark.parametrize("check", [
    # the check function not granted to the API role: a missing GRANT (42501), named
    ("create function public.sf_ok(t text) returns boolean language sql as $$ select t <> '' $$;"
     " revoke all on function public.sf_ok(text) from public;", "42501"),
    # the check function names a table without its schema: the atomic function's search path
    # hides it (42P01, waits); over REST it passes
    ("create table public.sf_words (w text); grant select on public.sf_words to authenticated;"
     " create function public.sf_ok(t text) returns boolean language sql as"
     " $$ select not exists (select 1 from sf_words where w = t) $$;", "42P01"),
], ids=["not_granted", "unqualified"])
def test_a_domain_whose_check_function_fails_keeps_the_upload_queued(instances, db, user, name, check):
    sub, token = user
    create, code = check
    table = f"sfd_{name}"
    with schema(db, create + f" create domain public.sf_word as text check (public.sf_ok(value));"
                             f" create table public.{table} (id uuid primary key, word public.sf_word);"
                             f" grant select, insert, update, delete on public.{table} to authenticated",
                f"drop table if exists public.{table}; drop domain if exists public.sf_word;"
                f" drop function if exists public.sf_ok(text); drop table if exists public.sf_words"):
        response = upload(instances[name], token, body(tx(put(table, new_id(), word="hello"), tid=1)))
        if code == "42P01" and name == "rest":
            assert statuses(response) == ["success"], response.text
        else:
            waits_for_the_operator(response, code)


@contextmanager
def parent_and_child(db, deferrable: bool):
    deferred = " deferrable initially deferred" if deferrable else ""
    with schema(db, "create table public.sf_parent (id uuid primary key);"
                    " create table public.sf_child (id uuid primary key, parent_id uuid"
                    f" constraint sf_child_parent references public.sf_parent{deferred});"
                    " grant select, insert, update, delete on public.sf_parent, public.sf_child to authenticated",
                "drop table if exists public.sf_child; drop table if exists public.sf_parent"):
        yield


def child_first(parent: str, child: str) -> dict:
    return body(tx(put("sf_child", child, parent_id=parent), put("sf_parent", parent), tid=1))


def test_a_deferred_foreign_key_lets_a_transaction_write_the_child_first_through_the_atomic_function(
        instances, db, user):
    """A DEFERRABLE INITIALLY DEFERRED foreign key exists so that one transaction may write a
    child before its parent. The atomic function applies the transaction as one, and the child
    lands. REST requests each commit alone, so there the child's is refused (23503, documented in
    docs/upload.md): dead-lettered, and its replay, through the function, applies it whole."""
    sub, token = user
    parent, child = new_id(), new_id()
    with parent_and_child(db, deferrable=True):
        response = upload(instances["atomic"], token, child_first(parent, child))
        assert statuses(response) == ["success"], response.text
        assert db.execute("select parent_id from public.sf_child where id = %s", (child,)).fetchone() == (UUID(parent),)
        other_parent, other_child = new_id(), new_id()
        response = upload(instances["rest_dead"], token, child_first(other_parent, other_child))
        assert statuses(response) == ["fatal_error"] and failure(response, 0)["code"] == "23503", response.text
        letter = db.execute("select id from public.powersync_dead_letters where user_id = %s", (sub,)).fetchone()
        replayed = db.execute("select public.powersync_replay_dead_letter(%s)", (letter[0],)).fetchone()[0]
        assert replayed.get("replayed") is not False, replayed
        assert db.execute("select parent_id from public.sf_child where id = %s",
                          (other_child,)).fetchone() == (UUID(other_parent),)


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_trigger_whose_audit_table_refuses_every_row_keeps_the_upload_queued(instances, db, user, name):
    """An AFTER trigger logs each write into an audit table whose `actor` column is NOT NULL and
    that the trigger never fills: `23502 null value in column "actor" of relation "sf_audit"`,
    for every write of every user. The table refused is not one the upload writes (as with the
    row-level security refusal of a trigger's log table): the setup's, so the write waits."""
    sub, token = user
    list_id = new_id()
    with schema(db, "create table public.sf_audit (id bigint generated always as identity primary key,"
                    " list_id uuid, actor uuid not null);"
                    " grant select, insert on public.sf_audit to authenticated;"
                    " create function public.sf_audit_lists() returns trigger language plpgsql as $$"
                    " begin insert into public.sf_audit (list_id) values (new.id); return null; end $$;"
                    " create trigger sf_audit_lists after insert on public.lists"
                    " for each row execute function public.sf_audit_lists()",
                "drop trigger if exists sf_audit_lists on public.lists;"
                " drop function if exists public.sf_audit_lists(); drop table if exists public.sf_audit"):
        response = upload(instances[name], token, body(tx(a_list(sub, list_id), tid=1)))
        waits_for_the_operator(response, "23502")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_policy_recursing_through_a_function_keeps_the_upload_queued(instances, db, user, name):
    """The other well-known Supabase policy mistake: a policy calls a (security invoker) helper
    that reads the policy's own table, so each read runs the policy again, until `54001 stack
    depth limit exceeded` (PostgreSQL detects the direct form, 42P17, which waits; through a
    function it cannot). Every write of every user of the table fails; none is the data's."""
    sub, token = user
    table = f"sfp_{name}"
    with schema(db, f"create table public.{table} (id uuid primary key, owner_id uuid);"
                    f" alter table public.{table} enable row level security;"
                    f" grant select, insert, update, delete on public.{table} to authenticated;"
                    f" create function public.{table}_mine(i uuid) returns boolean language sql stable as"
                    f" $$ select exists (select 1 from public.{table} where id = i and owner_id = auth.uid()) $$;"
                    f" create policy all_own on public.{table} for all to authenticated"
                    f" using (public.{table}_mine(id)) with check (owner_id = auth.uid())",
                f"drop table if exists public.{table} cascade; drop function if exists public.{table}_mine(uuid)"):
        mine = new_id()
        db.execute(f"insert into public.{table} values (%s, %s)", (mine, sub))
        response = upload(instances[name], token, body(tx(patch(table, mine, owner_id=sub), tid=1)))
        waits_for_the_operator(response, "54001")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_view_whose_instead_of_trigger_skips_the_write_reports_it_unchanged(instances, db, user, name):
    """A view written through INSTEAD OF triggers: one that returns NULL skipped the row (nothing
    written), so the PATCH and the DELETE are listed in `unchanged`; the base table still holds
    the row as it was."""
    sub, token = user
    table = f"sfi_{name}"
    with schema(db, f"create table public.{table}_base (id uuid primary key, note text);"
                    f" create view public.{table} as select * from public.{table}_base;"
                    f" create function public.{table}_skip() returns trigger language plpgsql as"
                    f" $$ begin return null; end $$;"
                    f" create trigger {table}_u instead of update or delete on public.{table}"
                    f" for each row execute function public.{table}_skip();"
                    f" grant select, insert, update, delete on public.{table}, public.{table}_base to authenticated",
                f"drop view if exists public.{table}; drop table if exists public.{table}_base;"
                f" drop function if exists public.{table}_skip()"):
        one, two = new_id(), new_id()
        db.execute(f"insert into public.{table}_base values (%s, 'kept'), (%s, 'kept')", (one, two))
        response = upload(instances[name], token, body(tx(patch(table, one, note="changed"), delete(table, two), tid=1)))
        assert statuses(response) == ["success"], response.text
        assert response.json()["results"][0].get("unchanged") == [0, 1], response.text
        assert db.execute(f"select count(*) from public.{table}_base where note = 'kept'").fetchone() == (2,)
