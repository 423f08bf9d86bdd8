"""Honest outcomes end to end (issue 15 items 5-7): the worker in workerd, the PostgREST stand-in
and a real PostgreSQL.

- A missing GRANT (PostgreSQL's `permission denied for table …`, `… for function …`) is the
  operator's mistake: the upload waits (retryable, Retry-After of a migration) with the GRANT
  to run named, and applies once it is granted; a row refused by RLS stays fatal.
- A PATCH or DELETE that changed no row is reported in its transaction's `unchanged`.
- Only PostgREST's answer counts as applied: a catch-all server answering `201 ""` behind
  SUPABASE_URL applies nothing and is reported `unexpected_response`, retryable.

Worker instances (started once for the module, in parallel):
  rest            rls mode through REST requests (UPLOAD_ATOMIC=false)
  atomic          UPLOAD_ATOMIC=true
  auto            UPLOAD_ATOMIC unset (the function whenever it is installed and executable)
  catchall_rest   SUPABASE_URL = a server answering every request `201` with an empty body (REST)
  catchall_auto   the same, UPLOAD_ATOMIC unset
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.e2e.upload_helpers import body, delete, failure, patch, put, statuses, tx, upload
from tests.support.db import insert_list, new_id, row

GRANT_TODOS = "grant select, insert, update, delete on table public.todos to authenticated"
GRANT_EXECUTE = "grant execute on function public.powersync_apply_transaction to authenticated"
FUNCTION = "public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)"


class CatchAll:
    """A server that answers every request `201 Created` with an empty body (what a catch-all
    host or a misrouted proxy might do), counting the requests."""

    def __init__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with owner.lock:
                    owner.requests += 1
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _answer

            def log_message(self, *args):
                pass

        self.lock = threading.Lock()
        self.requests = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def catch_all():
    server = CatchAll()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def instances(base_vars, start_workers, catch_all):
    rest = {**base_vars, "UPLOAD_ATOMIC": "false"}
    configs = {
        "rest": rest,
        "atomic": {**base_vars, "UPLOAD_ATOMIC": "true"},
        "auto": dict(base_vars),
        "catchall_rest": {**rest, "SUPABASE_URL": catch_all.url},
        "catchall_auto": {**base_vars, "SUPABASE_URL": catch_all.url},
        "service_rest": {**rest, "UPLOAD_MODE": "service", "UPLOAD_TABLES": "profiles", "UPLOAD_OWNER_COLUMN": "user_id"},
        "service_atomic": {**base_vars, "UPLOAD_ATOMIC": "true", "UPLOAD_MODE": "service", "UPLOAD_TABLES": "profiles",
                           "UPLOAD_OWNER_COLUMN": "user_id"},
    }
    return start_workers(configs)



@contextmanager
def revoked(db, statement: str, restore: str):
    """Runs `statement` (a REVOKE) for the duration, then `restore` whatever happened: the
    database is shared by the whole session."""
    db.execute(statement)
    try:
        yield
    finally:
        db.execute(restore)


def todo(sub: str, list_id: str, todo_id: str | None = None) -> dict:
    return put("todos", todo_id or new_id(), description="d", list_id=list_id, created_by=sub)


# =========================================================================== 5. missing GRANTs
@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_missing_table_grant_keeps_the_upload_queued_naming_the_grant_until_granted(
        instances, db, user, name):
    worker = instances[name]
    sub, token = user
    list_id = insert_list(db, sub)
    todo_id = new_id()
    payload = body(tx(todo(sub, list_id, todo_id), tid=1), tx(put("lists", new_id(), name="n", owner_id=sub), tid=2))
    with revoked(db, "revoke all on table public.todos from authenticated",
                 "grant select, insert, update, delete on table public.todos to authenticated"):
        response = upload(worker, token, payload)
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 60, response.headers
        assert statuses(response) == ["retryable_error", "not_attempted"]
        result = response.json()["results"][0]
        assert result["retry_after_ms"] >= 60_000
        failed = failure(response, 0)
        # PostgreSQL's own words, then the GRANT that fixes it
        assert failed["code"] == "42501" and failed["http_status"] == 403, failed
        assert failed["message"].startswith("permission denied for table todos"), failed
        assert GRANT_TODOS + "; if the table's privileges are limited on purpose" in failed["message"], failed
        assert row(db, "todos", todo_id) is None
    # granted (as the message says): the same upload applies
    response = upload(worker, token, payload)
    assert response.status_code == 200, response.text
    assert statuses(response) == ["success", "success"]
    assert row(db, "todos", todo_id) is not None


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_policy_that_queries_its_own_table_keeps_the_upload_queued_until_the_operator_fixes_it(
        instances, db, user, name):
    """A policy whose check reads its own table fails every statement with PostgreSQL's `42P17
    infinite recursion detected in policy`: the operator's mistake, not the data's. The upload
    waits (Retry-After ≥ 60 s) and applies once the policy is dropped."""
    worker = instances[name]
    sub, token = user
    list_id = insert_list(db, sub)
    todo_id = new_id()
    payload = body(tx(todo(sub, list_id, todo_id), tid=1))
    with revoked(db, "create policy recursive_check on public.todos for select to authenticated"
                     " using (exists (select 1 from public.todos t where t.id = todos.id))",
                 "drop policy if exists recursive_check on public.todos"):
        response = upload(worker, token, payload)
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 60, response.headers
        assert statuses(response) == ["retryable_error"]
        failed = failure(response, 0)
        assert failed["code"] == "42P17", failed
        assert "infinite recursion" in failed["message"] and "the operator's to fix" in failed["message"], failed
        assert row(db, "todos", todo_id) is None
    response = upload(worker, token, payload)
    assert statuses(response) == ["success"], response.text
    assert row(db, "todos", todo_id) is not None


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_custom_role_claim_the_database_cannot_switch_to_keeps_the_upload_queued_until_set_up(
        instances, db, session_token, name):
    """An access-token hook gives users a role of the project's own: PostgREST switches to it, and
    PostgreSQL refuses a role that does not exist (22023) or is not granted to authenticator
    (42501 `permission denied to set role`). The project's setup, never the data: the upload
    waits (Retry-After of a migration) and applies once the role is set up."""
    worker = instances[name]
    sub, role = new_id(), f"teacher_{name}"
    token = session_token(sub, role=role)
    list_id = new_id()
    payload = body(tx(put("lists", list_id, name="n", owner_id=sub), tid=1))
    db.execute(f"drop role if exists {role}")
    try:
        for step in ("missing", "not granted to authenticator"):
            if step != "missing":
                db.execute(f"create role {role} nologin; grant authenticated to {role}")
            response = upload(worker, token, payload)
            assert response.status_code == 503, (step, response.text)
            assert int(response.headers["Retry-After"]) >= 60, response.headers
            assert statuses(response) == ["retryable_error"], (step, response.text)
            failed = failure(response, 0)
            assert failed["code"] == ("22023" if step == "missing" else "42501"), (step, failed)
            assert "grant it to authenticator" in failed["message"], failed
            assert row(db, "lists", list_id) is None
        db.execute(f"grant {role} to authenticator")
        response = upload(worker, token, payload)
        assert statuses(response) == ["success"], response.text
        assert row(db, "lists", list_id) is not None
    finally:
        db.execute(f"drop role if exists {role}")


def test_row_refused_by_row_level_security_stays_fatal(instances, db, user, other_user_sub):
    sub, token = user
    response = upload(instances["rest"], token, body(tx(put("lists", new_id(), name="n", owner_id=other_user_sub))))
    assert statuses(response) == ["fatal_error"], response.text
    assert failure(response, 0)["code"] == "42501"
    assert "row-level security" in failure(response, 0)["message"]


@pytest.fixture
def other_user_sub() -> str:
    return new_id()


def test_missing_execute_grant_on_the_atomic_function_never_discards(instances, db, user):
    sub, token = user
    first, second = new_id(), new_id()
    with revoked(db, f"revoke execute on function {FUNCTION} from authenticated",
                 f"grant execute on function {FUNCTION} to authenticated"):
        # UPLOAD_ATOMIC=true: the transaction waits, naming the GRANT
        response = upload(instances["atomic"], token, body(tx(put("lists", first, name="a", owner_id=sub), tid=1)))
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) >= 60
        failed = failure(response, 0)
        assert failed["code"] == "42501", failed
        assert failed["message"].startswith("permission denied for function powersync_apply_transaction"), failed
        assert failed["message"].endswith(GRANT_EXECUTE), failed
        assert row(db, "lists", first) is None
        # UPLOAD_ATOMIC unset: the function cannot be used, so REST applies the transaction
        response = upload(instances["auto"], token, body(tx(put("lists", second, name="b", owner_id=sub), tid=1)))
        assert response.status_code == 200, response.text
        assert statuses(response) == ["success"]
        assert row(db, "lists", second)["name"] == "b"
        assert instances["auto"].log_line(response)["upload"]["atomic_function"] == "not_executable"
    response = upload(instances["atomic"], token, body(tx(put("lists", first, name="a", owner_id=sub), tid=1)))
    assert statuses(response) == ["success"], response.text
    assert row(db, "lists", first)["name"] == "a"


# =========================================================================== 6. nothing silent
@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_patch_and_delete_that_changed_no_row_are_reported_unchanged(instances, db, user, name):
    sub, token = user
    theirs = insert_list(db, new_id(), name="theirs")  # hidden from this user by RLS
    mine = new_id()
    first = upload(instances[name], token, body(tx(
        put("lists", mine, name="mine", owner_id=sub),
        patch("lists", theirs, name="x"),   # 1: hidden, changes nothing
        delete("lists", new_id()),          # 2: no such row
        patch("lists", mine, name="mine!"),  # 3: changes its row
        tid=7)))
    assert first.status_code == 200, first.text
    assert first.json()["results"] == [{"status": "success", "transaction_id": 7, "unchanged": [1, 2]}]
    assert row(db, "lists", theirs)["name"] == "theirs"
    assert row(db, "lists", mine)["name"] == "mine!"
    # a transaction whose every write changed its row says nothing more
    second = upload(instances[name], token, body(tx(patch("lists", mine, name="again"), tid=8)))
    assert second.json()["results"] == [{"status": "success", "transaction_id": 8}]
    assert [instances[name].log_line(r)["upload"]["unchanged_entries"] for r in (first, second)] == [2, 0]


@contextmanager
def skipping_trigger(db, table: str, column: str):
    """A BEFORE trigger returning null for rows whose `column` is 'skip' (the classic bug:
    `return old` in a trigger also attached to INSERT): PostgreSQL writes no row, no error."""
    db.execute("create or replace function public.skip_marked() returns trigger language plpgsql as $$"
               " begin if to_jsonb(new) ->> tg_argv[0] = 'skip' then return null; end if; return new; end $$")
    db.execute(f"create trigger skip_marked before insert or update on public.{table}"
               f" for each row execute function public.skip_marked('{column}')")
    try:
        yield
    finally:
        db.execute(f"drop trigger if exists skip_marked on public.{table}")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_put_whose_row_the_database_skipped_is_reported_unchanged_not_silently_applied(instances, db, user, name):
    # Alone in its request the entry is named exactly; two PUTs merged into one upsert share
    # one count (1 of 2), so both are listed, through the function too.
    sub, token = user
    list_id = insert_list(db, sub)
    kept_alone, skipped, kept, skipped_too = new_id(), new_id(), new_id(), new_id()
    with skipping_trigger(db, "todos", "description"):
        response = upload(instances[name], token, body(tx(
            put("todos", skipped, description="skip", list_id=list_id, created_by=sub),
            patch("lists", list_id, name="renamed"),
            put("todos", kept, description="kept", list_id=list_id, created_by=sub),
            put("todos", skipped_too, description="skip", list_id=list_id, created_by=sub),
            put("todos", kept_alone, description="kept", list_id=list_id, created_by=sub, completed=True),
            tid=1)))
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"status": "success", "transaction_id": 1, "unchanged": [0, 2, 3]}]
    assert row(db, "todos", skipped) is None and row(db, "todos", skipped_too) is None
    assert row(db, "todos", kept) is not None and row(db, "todos", kept_alone) is not None


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_put_of_only_the_id_of_a_row_already_there_is_applied_not_unchanged(instances, db, user, name):
    # nothing else to set: PostgREST's upsert and the function both set the id to itself
    sub, token = user
    table = "tags_" + name
    db.execute(f"create table public.{table} (id text primary key);"
               f" grant select, insert, update, delete on public.{table} to authenticated")
    try:
        tag = new_id()
        for tid in (4, 5):  # inserted, then already there
            response = upload(instances[name], token, body(tx(put(table, tag), tid=tid)))
            assert response.json()["results"] == [{"status": "success", "transaction_id": tid}], response.text
        assert db.execute(f"select count(*) from public.{table}").fetchone()[0] == 1
    finally:
        db.execute(f"drop table if exists public.{table}")


@contextmanager
def owned_id_table(db, table: str):
    """A table of ids only (the SDK sends a row whose other columns are null as its id alone)
    whose rows belong to their writer: RLS hides and guards another user's rows."""
    db.execute(f"create table public.{table} (id text primary key,"
               f" owner uuid not null default auth.uid());"
               f" alter table public.{table} enable row level security;"
               f" create policy own on public.{table} for all to authenticated"
               f" using (owner = auth.uid()) with check (owner = auth.uid());"
               f" grant select, insert, update, delete on public.{table} to authenticated")
    try:
        yield
    finally:
        db.execute(f"drop table if exists public.{table}")


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_put_of_only_the_id_of_another_users_row_is_refused_on_both_routes(instances, db, user, name):
    # PostgREST's upsert sets the id to itself, which RLS refuses for a row the user may not
    # update; the function did `on conflict do nothing` and answered success for a write that
    # landed nowhere
    sub, token = user
    table = "owned_" + name
    with owned_id_table(db, table):
        theirs = new_id()
        db.execute(f"insert into public.{table} (id, owner) values (%s, gen_random_uuid())", (theirs,))
        response = upload(instances[name], token, body(tx(put(table, theirs), tid=3)))
        assert response.status_code == 200, response.text
        result = response.json()["results"][0]
        assert (result["status"], result["failed_operation"]["code"]) == ("fatal_error", "42501"), result
        owner = db.execute(f"select owner::text from public.{table} where id = %s", (theirs,)).fetchone()[0]
        assert owner != sub


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_put_of_only_the_id_the_database_skipped_is_reported_unchanged(instances, db, user, name):
    sub, token = user
    table = "owned_" + name
    with owned_id_table(db, table), skipping_trigger(db, table, "id"):
        response = upload(instances[name], token, body(tx(put(table, "skip"), tid=4)))
        assert response.status_code == 200, response.text
        assert response.json()["results"] == [{"status": "success", "transaction_id": 4, "unchanged": [0]}]
        assert db.execute(f"select count(*) from public.{table}").fetchone()[0] == 0


@pytest.mark.parametrize("name", ["rest", "atomic"])
def test_a_policy_on_the_request_method_judges_each_write_as_the_rest_request_it_stands_for(
        instances, db, user, name):
    """PostgREST sets request.method and request.path per request; through the function each
    write runs as the REST request it stands for, so a rule keyed on them (here: no DELETE
    through the Data API) holds on both routes; and the PUT and PATCH it lets pass are applied."""
    sub, token = user
    table = "nodelete_" + name
    db.execute(f"create table public.{table} (id text primary key, note text);"
               f" alter table public.{table} enable row level security;"
               f" create policy rw on public.{table} for all to authenticated using (true) with check (true);"
               f" create policy no_api_delete on public.{table} as restrictive for delete to authenticated"
               f" using (current_setting('request.method', true) is distinct from 'DELETE');"
               f" create policy own_path on public.{table} as restrictive for all to authenticated"
               f" using (current_setting('request.path', true) = '/{table}')"
               f" with check (current_setting('request.path', true) = '/{table}');"
               f" grant select, insert, update, delete on public.{table} to authenticated")
    try:
        kept, patched = new_id(), new_id()
        response = upload(instances[name], token, body(tx(
            put(table, kept, note="a"), put(table, patched, note="b"), patch(table, patched, note="c"),
            delete(table, kept), tid=6)))
        assert response.status_code == 200, response.text
        assert response.json()["results"] == [{"status": "success", "transaction_id": 6, "unchanged": [3]}]
        notes = dict(db.execute(f"select id, note from public.{table}").fetchall())
        assert notes == {kept: "a", patched: "c"}, "the delete was refused by the policy on both routes"
    finally:
        db.execute(f"drop table if exists public.{table}")


@pytest.mark.parametrize("name", ["service_rest", "service_atomic"])
def test_a_service_mode_put_the_database_skipped_is_unchanged_not_blamed_on_another_owner(instances, db, user,
                                                                                           name):
    sub, token = user
    mine = "p-" + new_id()
    with skipping_trigger(db, "profiles", "handle"):
        response = upload(instances[name], token, body(tx(put("profiles", mine, handle="skip"), tid=2)))
    assert response.status_code == 200, response.text
    assert response.json()["results"] == [{"status": "success", "transaction_id": 2, "unchanged": [0]}]
    assert row(db, "profiles", mine) is None


@pytest.mark.parametrize("name,expected", [("rest", [0, 1, 2]), ("atomic", [1])])
def test_merged_delete_short_of_its_ids_lists_its_group_through_rest_and_exactly_through_the_function(
        instances, db, user, name, expected):
    # REST merges the three DELETEs into one id=in.(…) request whose count (2 of 3) cannot say
    # which id matched nothing: all three are listed. The function learns it per id.
    sub, token = user
    a, b = insert_list(db, sub), insert_list(db, sub)
    response = upload(instances[name], token, body(tx(
        delete("lists", a), delete("lists", new_id()), delete("lists", b), tid=1)))
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["unchanged"] == expected
    assert row(db, "lists", a) is None and row(db, "lists", b) is None


# =========================================================================== 7. PostgREST's answer only
@pytest.mark.parametrize("name", ["catchall_rest", "catchall_auto"])
def test_catch_all_server_answering_201_is_never_counted_applied(instances, catch_all, session_token,
                                                                 name):
    worker = instances[name]
    sub = new_id()
    token = session_token(sub, iss=f"{catch_all.url}/auth/v1")  # verified locally (HS256)
    before = catch_all.requests
    response = upload(worker, token, body(
        tx(put("lists", new_id(), name="n", owner_id=sub), delete("lists", new_id()), tid=1),
        tx(patch("lists", new_id(), name="m"), tid=2)))
    assert response.status_code == 503, response.text
    assert response.headers.get("Retry-After")
    answer = response.json()
    assert statuses(response) == ["retryable_error", "not_attempted"]
    assert answer["applied"] == 0, "nothing reported applied"
    failed = failure(response, 0)
    assert (failed["code"], failed["http_status"]) == ("unexpected_response", 201), failed
    assert failed["message"].startswith("HTTP 201 from Supabase is not PostgREST's answer"), failed
    assert failed["details"] == "an empty body", failed
    assert catch_all.requests == before + 1, "the first answer stops the upload"
    logged = worker.log_line(response)["upload"]
    assert logged["failure_codes"] == ["unexpected_response"]
    assert logged["unexpected_responses"] == [failed["message"]]
