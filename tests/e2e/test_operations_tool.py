"""The operator's tool end to end (issue 16, items 3 and 4): `devtool doctor` against a healthy
stack and against stacks broken in each way it checks, and every `devtool dead-letters` command.

The worker runs in workerd (`wrangler dev`), PostgREST is the stand-in, data lands in the
session's PostgreSQL; the tool is the native binary (target/debug/devtool) run as an operator
would, with a vars file (the worker's settings) or --supabase-url/--service-key.

The doctor's broken stacks are copies: each test gets a fresh database made from a template that
holds the test schema and the SQL files, with its own stand-in, so breaking it (a revoked GRANT,
RLS off, a dropped function) never touches the shared stack.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import jwt
import psycopg
import pytest

from tests.e2e.conftest import ANON_KEY, JWT_SECRET, ROOT, SECRET_KEY, SERVICE_KEY, SQL_FILES
from tests.e2e.test_dead_letters import run_file
from tests.e2e.upload_helpers import body, put, statuses, tx, upload
from tests.postgrest_standin.standin import StandIn
from tests.support.db import insert_list, new_id, row
from tests.support.pg import refused_port
from tests.support.worker import DEVTOOL

DEAD_LETTERS = "powersync_dead_letters"
APPLY = "public.powersync_apply_transaction(jsonb, text, text, text, text, boolean)"
RECORD = "public.powersync_record_dead_letter(jsonb, text, text, text, text, text, integer, jsonb, text, text, text[])"


def devtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEVTOOL), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def write_vars(path, vars: dict) -> str:
    """A vars file as `devtool dev-vars` writes it (newlines of a PEM as \\n, double-quoted)."""
    path.write_text("".join(f'{k}="' + str(v).replace("\n", "\\n") + '"\n' for k, v in vars.items()))
    return str(path)


@pytest.fixture(scope="module")
def ops_vars(base_vars):
    """The settings of the deployment under test: rls mode, atomic, dead letters, two tables
    (todos.tags is jsonb: converted)."""
    return {**base_vars, "UPLOAD_DEAD_LETTER_TABLE": DEAD_LETTERS, "UPLOAD_ATOMIC": "true",
            "UPLOAD_TABLES": "todos,lists", "UPLOAD_JSON_COLUMNS": "todos.tags"}


@pytest.fixture(scope="module")
def ops_worker(ops_vars, start_worker):
    return start_worker(ops_vars)


# =========================================================================== doctor
def test_doctor_finds_a_healthy_deployment_ready(ops_vars, ops_worker, tmp_path, db):
    result = devtool("doctor", "--worker-url", ops_worker.url, "--vars", write_vars(tmp_path / "vars", ops_vars))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "doctor: ready (0 warning(s))", result.stdout


@pytest.fixture(scope="module")
def template_database(pg):
    """A database with the test schema, the SQL files and the publication: the healthy copy."""
    name = f"doctor_template_{uuid.uuid4().hex[:8]}"
    pg.create_database(name)
    for path in SQL_FILES:
        run_file(pg, name, path)
    pg.run_sql("create publication powersync for all tables", database=name)
    yield name
    pg.run_sql(f"drop database if exists {name} with (force)")


@pytest.fixture
def copy_stack(pg, template_database):
    """A fresh copy of the template with its own stand-in: (dsn, stand-in url)."""
    name = f"doctor_{uuid.uuid4().hex[:8]}"
    pg.run_sql(f"create database {name} template {template_database}")
    standin = StandIn(pg.url(name), JWT_SECRET, anon_key=ANON_KEY, service_key=SERVICE_KEY)
    standin.start(port=0)
    yield pg.url(name), standin.url
    standin.stop()
    pg.run_sql(f"drop database if exists {name} with (force)")


# a service_role key of another project (signed with another secret): PostgREST answers 401
OTHER_PROJECTS_SERVICE_KEY = jwt.encode({"iss": "supabase", "ref": "other", "role": "service_role",
                                         "iat": 1700000000, "exp": 4102444800},
                                        "another-projects-secret-with-32-characters", algorithm="HS256")


def dead_port_url() -> str:
    return f"http://127.0.0.1:{refused_port()}"


# service mode on profiles (its jsonb column converted, as todos.tags is in ops_vars)
SERVICE = {"UPLOAD_MODE": "service", "UPLOAD_TABLES": "profiles", "UPLOAD_JSON_COLUMNS": "profiles.settings"}

# (id, SQL that breaks the copy, settings changed, extra arguments, a line of the report, exit code)
BROKEN = [
    ("healthy_copy", None, {}, [], "doctor: ready (0 warning(s))", 0),
    ("missing_grant", "revoke insert on public.todos from authenticated", {}, [],
     "PROBLEM: authenticated lacks INSERT on public.todos: every upload to it stays queued (42501)", 1),
    ("missing_grant_fix", "revoke all on public.lists from authenticated", {}, [],
     "  fix: grant select, insert, update, delete on table public.lists to authenticated;", 1),
    ("rls_off", "alter table public.todos disable row level security", {}, [],
     "PROBLEM: row-level security is off on public.todos: in rls mode any signed-in user may write any row", 1),
    ("owner_column_missing", None,
     {**SERVICE, "UPLOAD_OWNER_COLUMN": "owner_id"}, [],
     "PROBLEM: uploaded table public.profiles has no column owner_id", 1),
    ("service_role_not_granted", "revoke update on public.profiles from service_role",
     {**SERVICE, "UPLOAD_OWNER_COLUMN": "user_id"}, [],
     "PROBLEM: service_role lacks UPDATE on public.profiles: every upload to it stays queued (42501)", 1),
    ("service_role_under_rls", ("alter role service_role nobypassrls", "alter role service_role bypassrls"),
     {**SERVICE, "UPLOAD_OWNER_COLUMN": "user_id"}, [],
     "PROBLEM: service_role does not bypass row-level security", 1),
    ("json_conversion_of_a_text_column", None, {"UPLOAD_JSON_COLUMNS": "todos.tags,todos.description"}, [],
     "PROBLEM: UPLOAD_JSON_COLUMNS names todos.description, which is text: the client's text is sent as the JSON"
     " value it holds", 1),
    ("boolean_conversion_of_an_integer_column", None, {"UPLOAD_BOOLEAN_COLUMNS": "todos.priority"}, [],
     "  fix: remove todos.priority from UPLOAD_BOOLEAN_COLUMNS (it is for boolean columns)", 1),
    ("boolean_conversion_of_a_boolean_domain",
     "create domain public.flag as boolean; alter table public.todos add column archived public.flag",
     {"UPLOAD_BOOLEAN_COLUMNS": "todos.archived"}, [], "doctor: ready (0 warning(s))", 0),
    ("array_column_without_conversion", "alter table public.todos add column labels text[]", {}, [],
     "warning: public.todos.labels is an array (text[]) not in UPLOAD_JSON_COLUMNS", 0),
    ("owner_column_that_cannot_hold_user_ids", "alter table public.profiles add column org_id bigint",
     {**SERVICE, "UPLOAD_OWNER_COLUMN": "org_id"}, [],
     "PROBLEM: public.profiles.org_id is bigint: service mode writes the user's id", 1),
    ("column_only_grant", "revoke update on public.todos from authenticated;"
     " grant update (description, completed) on public.todos to authenticated", {}, [],
     "warning: authenticated holds UPDATE on only some columns of public.todos", 0),
    ("ledger_writable_by_users", "grant insert on public.powersync_upload_ledger to authenticated", {}, [],
     "PROBLEM: authenticated may INSERT public.powersync_upload_ledger directly", 1),
    ("update_policy_missing", "drop policy todos_update_own on public.todos", {}, [],
     "PROBLEM: no policy on public.todos lets authenticated UPDATE: a PUT of a row that exists", 1),
    ("no_policies_at_all", "drop policy todos_select_own on public.todos; drop policy todos_insert_own on public.todos;"
     " drop policy todos_update_own on public.todos; drop policy todos_delete_own on public.todos", {}, [],
     "  fix: create policy todos_insert on public.todos for insert to authenticated with check (…);", 1),
    ("delete_policy_missing", "drop policy todos_delete_own on public.todos", {}, [],
     "warning: no policy on public.todos lets authenticated DELETE", 0),
    ("view_running_as_its_owner", "create view public.todo_view as select * from public.todos;"
     " grant select, insert, update, delete on public.todo_view to authenticated", {}, ["--tables", "todo_view"],
     "PROBLEM: view public.todo_view runs as its owner", 1),
    ("view_running_as_its_caller", "create view public.todo_view with (security_invoker = on) as"
     " select * from public.todos; grant select, insert, update, delete on public.todo_view to authenticated",
     {}, ["--tables", "todo_view"], "doctor: ready (", 0),
    ("type_schema_without_usage", "create schema app_types; create type app_types.mood as enum ('ok');"
     " alter table public.todos add column mood app_types.mood", {}, [],
     "warning: authenticated lacks USAGE on schema app_types, which holds the type of public.todos.mood", 0),
    ("id_type_schema_without_usage", "create schema app_types; create domain app_types.pid as text;"
     " alter table public.profiles drop constraint profiles_pkey; alter table public.profiles alter column id"
     " type app_types.pid; alter table public.profiles add primary key (id)", {}, ["--tables", "profiles"],
     "PROBLEM: authenticated lacks USAGE on schema app_types, which holds the type of public.profiles.id", 1),
    ("view_invoker_written_as_a_prefix", "create view public.todo_view with (security_invoker = tru) as"
     " select * from public.todos; grant select, insert, update, delete on public.todo_view to authenticated",
     {}, ["--tables", "todo_view"], "doctor: ready (", 0),
    ("type_schema_with_usage", "create schema app_types; create type app_types.mood as enum ('ok');"
     " alter table public.todos add column mood app_types.mood; grant usage on schema app_types to authenticated",
     {}, [], "doctor: ready (0 warning(s))", 0),
    ("id_not_unique", "alter table public.profiles drop constraint profiles_pkey", {}, ["--tables", "profiles"],
     "PROBLEM: public.profiles has no unique index on id alone: every PUT (an upsert on id) is refused (42P10)", 1),
    ("id_unique_only_deferred",
     "alter table public.profiles drop constraint profiles_pkey;"
     " alter table public.profiles add constraint profiles_id_key unique (id) deferrable",
     {}, ["--tables", "profiles"], "PROBLEM: public.profiles has no unique index on id alone", 1),
    ("id_unique_through_a_unique_index",
     "alter table public.profiles drop constraint profiles_pkey; create unique index on public.profiles (id)",
     {}, ["--tables", "profiles"], "doctor: ready (", 0),
    ("uploaded_table_missing", None, {}, ["--tables", "notes"],
     "PROBLEM: uploaded table public.notes does not exist", 1),
    ("atomic_function_missing", f"drop function {APPLY}", {}, [],
     f"PROBLEM: {APPLY} is missing: uploads that need it stay queued", 1),
    ("atomic_function_not_granted", f"revoke execute on function {APPLY} from authenticated", {}, [],
     f"PROBLEM: authenticated may not execute {APPLY}: uploads that need it stay queued (42501)", 1),
    ("ledger_missing", "drop table public.powersync_upload_ledger", {}, [],
     "PROBLEM: table public.powersync_upload_ledger is missing", 1),
    ("ledger_outdated", "alter table public.powersync_upload_ledger drop column dead_letter_id", {}, [],
     "PROBLEM: table public.powersync_upload_ledger is outdated (no column dead_letter_id)", 1),
    ("ledger_dead_letter_lookup_not_granted",
     "revoke execute on function public.powersync_upload_ledger_dead_letter(text, text, text) from authenticated",
     {}, [], "PROBLEM: authenticated may not execute public.powersync_upload_ledger_dead_letter(text, text, text):"
     " uploads that need it stay queued (42501)", 1),
    ("dead_letter_function_missing", f"drop function {RECORD}", {}, [],
     f"PROBLEM: {RECORD} is missing: uploads that need it stay queued", 1),
    ("dead_letter_function_not_granted", f"revoke execute on function {RECORD} from authenticated", {}, [],
     f"PROBLEM: authenticated may not execute {RECORD}: uploads that need it stay queued (42501)", 1),
    ("dead_letter_table_outdated", "alter table public.powersync_dead_letters drop column discarded_at", {}, [],
     "PROBLEM: table public.powersync_dead_letters is outdated (no column discarded_at)", 1),
    ("function_body_of_another_version",  # the same signature, another body: an older copy of the file
     "do $do$ begin execute replace(pg_get_functiondef("
     "'public.powersync_upload_row_key(text, text)'::regprocedure),"
     " 'AS $function$', 'AS $function$ -- an older copy' || chr(10)); end $do$", {}, [],
     "PROBLEM: public.powersync_upload_row_key(text, text) is not the one this checkout's sql/atomic_upload.sql"
     " makes", 1),
    ("publication_missing", "drop publication powersync", {}, [],
     "warning: the publication powersync does not exist: PowerSync cannot replicate the database", 0),
    ("doctor_sql_missing", "drop function public.powersync_doctor(jsonb, text[])", {}, [],
     "  fix: run sql/doctor.sql in the SQL editor (read-only: it lets the doctor read grants, RLS and the publication)", 1),
    ("wrong_jwt_secret", None, {"SUPABASE_JWT_SECRET": "not-this-projects-secret-but-32-characters-long"}, [],
     "PROBLEM: SUPABASE_JWT_SECRET did not sign the project's API keys: it is not this project's JWT secret,"
     " every HS256 session is refused", 1),
    ("session_jwks_unreachable", None, {"SUPABASE_JWT_SECRET": "", "SUPABASE_JWKS_URL": "dead"}, [],
     "and there is no SUPABASE_JWT_SECRET: no session can be verified", 1),
    ("worker_runs_another_key", None, {"POWERSYNC_KEY_ID": "another-kid"}, [],
     "/.well-known/jwks.json does not have the key another-kid of these settings: the worker runs another key", 1),
    ("worker_unreachable", None, {}, ["--worker-url", "dead"], "PROBLEM: the worker is not reachable at", 1),
    ("supabase_unreachable", None, {"SUPABASE_URL": "dead"}, [], "PROBLEM: Supabase is not reachable at", 1),
    ("wrong_service_key", None, {"SUPABASE_SERVICE_ROLE_KEY": OTHER_PROJECTS_SERVICE_KEY}, [],
     "PROBLEM: cannot read the database's setup through powersync_doctor", 1),
]


@pytest.mark.parametrize("name, breaking_sql, settings, args, line, code", BROKEN, ids=[b[0] for b in BROKEN])
def test_doctor_names_each_broken_setup_with_its_fix(name, breaking_sql, settings, args, line, code,
                                                      ops_vars, ops_worker, copy_stack, tmp_path, pg):
    dsn, standin_url = copy_stack
    # a role is the whole cluster's: what breaks one is undone after the check
    breaking_sql, restore = breaking_sql if isinstance(breaking_sql, tuple) else (breaking_sql, None)
    if breaking_sql:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(breaking_sql)
    try:
        check_doctor(dsn, standin_url, settings, args, line, code, ops_vars, ops_worker, tmp_path)
    finally:
        if restore:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(restore)


def check_doctor(dsn, standin_url, settings, args, line, code, ops_vars, ops_worker, tmp_path):
    dead = dead_port_url()
    vars = {**ops_vars, "SUPABASE_URL": standin_url,
            **{k: (dead if v == "dead" else v) for k, v in settings.items()}}
    if vars.get("UPLOAD_MODE") == "service":
        vars["SUPABASE_SERVICE_ROLE_KEY"] = vars.get("SUPABASE_SERVICE_ROLE_KEY", SERVICE_KEY)
    vars = {k: v for k, v in vars.items() if v != ""}
    worker_url = dead if args[:2] == ["--worker-url", "dead"] else ops_worker.url
    extra = [] if args[:2] == ["--worker-url", "dead"] else args
    result = devtool("doctor", "--worker-url", worker_url, "--vars", write_vars(tmp_path / "vars", vars), *extra)
    report = result.stdout.splitlines()
    assert any(line in l for l in report), result.stdout + result.stderr
    assert result.returncode == code, result.stdout + result.stderr
    if code == 1:
        assert report[-1].startswith("doctor: "), report
        assert "problem(s) that lose or block writes" in report[-1]


def test_doctor_reports_a_worker_whose_settings_are_incomplete(ops_vars, start_worker, copy_stack, tmp_path):
    _, standin_url = copy_stack
    broken = {k: v for k, v in ops_vars.items() if k != "POWERSYNC_PRIVATE_KEY"}
    worker = start_worker(broken)
    vars = {**ops_vars, "SUPABASE_URL": standin_url}
    result = devtool("doctor", "--worker-url", worker.url, "--vars", write_vars(tmp_path / "vars", vars))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "PROBLEM: the worker's powersync settings are not usable: POWERSYNC_PRIVATE_KEY" in result.stdout


def test_doctor_without_a_worker_url_is_a_usage_error(tmp_path, ops_vars):
    result = devtool("doctor", "--vars", write_vars(tmp_path / "vars", ops_vars))
    assert result.returncode == 2
    assert "--worker-url is required" in result.stderr


# =========================================================================== dead letters
def dead_letters(standin, *args: str) -> subprocess.CompletedProcess:
    return devtool("dead-letters", *args, "--supabase-url", standin.url, "--service-key", SECRET_KEY)


def as_json(result: subprocess.CompletedProcess):
    assert result.stderr == "", result.stderr
    return json.loads(result.stdout)


def orphan_todo(sub: str) -> tuple[dict, str]:
    """A todo in a list that does not exist yet: refused for good now, fine once the list exists."""
    list_id = new_id()
    return put("todos", new_id(), description="orphan", list_id=list_id, created_by=sub), list_id


def bad_priority(sub: str, list_id: str) -> dict:
    return put("todos", new_id(), description="p9", list_id=list_id, created_by=sub, priority=9)


def dead_letter_of(ops_worker, session_token, sub: str, entry: dict, tid: int) -> None:
    response = upload(ops_worker, session_token(sub), {**body(tx(entry, tid=tid)), "client_id": "c"})
    assert statuses(response) == ["fatal_error"], response.text


@pytest.fixture
def recorded(ops_worker, session_token, db):
    """Three dead letters: user a's two orphan todos (lists created later), user b's bad priority."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    orphans = [orphan_todo(a) for _ in range(2)]
    for i, (entry, _) in enumerate(orphans):
        dead_letter_of(ops_worker, session_token, a, entry, i)
    dead_letter_of(ops_worker, session_token, b, bad_priority(b, insert_list(db, b)), 9)
    ids = [r for (r,) in db.execute(f"select id from {DEAD_LETTERS} order by id")]
    return {"a": a, "b": b, "orphans": orphans, "ids": ids}


def test_list_filters_by_user_code_and_age_and_show_gives_the_entries(standin, recorded, db):
    a, b, ids = recorded["a"], recorded["b"], recorded["ids"]
    assert [r["id"] for r in as_json(dead_letters(standin, "list", "--json"))] == ids
    assert [r["user_id"] for r in as_json(dead_letters(standin, "list", "--user", a, "--json"))] == [a, a]
    by_code = as_json(dead_letters(standin, "list", "--code", "23514", "--json"))
    assert [(r["id"], r["user_id"]) for r in by_code] == [(ids[2], b)]
    assert as_json(dead_letters(standin, "list", "--older-than", "1h", "--json")) == []
    db.execute(f"update {DEAD_LETTERS} set created_at = now() - interval '2 days' where id = %s", (ids[0],))
    assert [r["id"] for r in as_json(dead_letters(standin, "list", "--older-than", "1d", "--json"))] == [ids[0]]
    assert [r["id"] for r in as_json(dead_letters(standin, "list", "--limit", "1", "--json"))] == [ids[0]]
    text = dead_letters(standin, "list")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0] == "id\tstate\tcreated_at\tuser_id\tcode\tmessage"
    assert lines[3].startswith(f"{ids[2]}\twaiting\t") and f"\t{b}\t23514\t" in lines[3]
    assert lines[-1] == "3 dead letter(s)"

    shown = as_json(dead_letters(standin, "show", "--id", str(ids[0])))
    entry, _ = recorded["orphans"][0]
    assert [(e["op"], e["table"], e["id"], e["state"]) for e in shown["entries"]] == \
        [("PUT", "todos", entry["id"], "failed")]
    assert (shown["user_id"], shown["recorded_as"], shown["client_id"]) == (a, "user", "c")
    missing = dead_letters(standin, "show", "--id", "999999")
    assert missing.returncode == 1 and "no dead letter with id 999999" in missing.stderr


def test_a_selection_larger_than_the_limit_is_handled_a_page_at_a_time_and_says_so(standin, recorded, db):
    a, ids = recorded["a"], recorded["ids"]
    # a dry run leaves its page waiting: running it again would show the same page
    dry = dead_letters(standin, "discard", "--user", a, "--reason", "paged", "--limit", "1", "--dry-run", "--json")
    assert dry.returncode == 1 and "give a larger --limit" in as_json(dry)[-1]["message"], dry.stdout
    first = dead_letters(standin, "discard", "--user", a, "--reason", "paged", "--limit", "1", "--json")
    assert first.returncode == 1, "not everything asked was done: " + first.stdout
    done, more = as_json(first)
    assert done["dead_letter_id"] == ids[0] and more["more"] is True and "run the command again" in more["message"]
    second = dead_letters(standin, "discard", "--user", a, "--reason", "paged", "--limit", "2", "--json")
    assert second.returncode == 0, second.stdout
    assert [o["dead_letter_id"] for o in as_json(second)] == [ids[1]]
    assert db.execute(f"select count(*) from {DEAD_LETTERS} where user_id = %s and discarded_at is not null",
                      (a,)).fetchone() == (2,)


def test_replay_dry_run_changes_nothing_and_replay_applies_once_the_cause_is_fixed(standin, recorded, db):
    first = recorded["ids"][0]
    entry, list_id = recorded["orphans"][0]
    dry = as_json(dead_letters(standin, "replay", "--id", str(first), "--dry-run", "--json"))
    (would,) = dry
    assert (would["dead_letter_id"], would["dry_run"], would["user_id"], would["code"]) == \
        (first, True, recorded["a"], "23503")
    # the entries a replay would apply, as the bridge writes them (no state)
    assert [(o["op"], o["table"], o["id"], o["data"]["list_id"], "state" in o) for o in would["would_apply"]] == \
        [("PUT", "todos", entry["id"], list_id, False)]
    letter = db.execute(f"select replayed_at, replay_error from {DEAD_LETTERS} where id = %s", (first,)).fetchone()
    assert letter == (None, None)

    # the cause is not fixed: nothing applied, the error kept, exit 1
    failed = dead_letters(standin, "replay", "--id", str(first), "--json")
    assert failed.returncode == 1
    assert as_json(failed)[0]["replayed"] is False
    assert db.execute(f"select replay_error is not null, replayed_at from {DEAD_LETTERS} where id = %s",
                      (first,)).fetchone() == (True, None)
    assert row(db, "todos", entry["id"]) is None

    insert_list(db, recorded["a"], list_id=list_id)
    done = dead_letters(standin, "replay", "--id", str(first), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert as_json(done)[0]["replayed"] is True
    assert row(db, "todos", entry["id"])["description"] == "orphan"
    again = dead_letters(standin, "replay", "--id", str(first), "--json")
    assert again.returncode == 1
    assert "no waiting dead letter" in as_json(again)[0]["error"]["message"]


def test_replay_a_selection_replays_only_the_chosen_users_dead_letters(standin, recorded, db):
    for entry, list_id in recorded["orphans"]:
        insert_list(db, recorded["a"], list_id=list_id)
    done = dead_letters(standin, "replay", "--user", recorded["a"], "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(o["dead_letter_id"] for o in as_json(done)) == recorded["ids"][:2]
    for entry, _ in recorded["orphans"]:
        assert row(db, "todos", entry["id"]) is not None
    waiting = as_json(dead_letters(standin, "list", "--json"))
    assert [r["user_id"] for r in waiting] == [recorded["b"]]
    assert [r["id"] for r in as_json(dead_letters(standin, "list", "--state", "replayed", "--json"))] == \
        recorded["ids"][:2]
    # a selection is required: no accidental "replay everything"
    bare = dead_letters(standin, "replay")
    assert bare.returncode == 1 and "replay what?" in bare.stderr
    # the word to go over a user's later writes is given for one letter, never a selection
    for selection in (["--user", recorded["b"]], ["--ids", str(recorded["ids"][2])]):
        broad = dead_letters(standin, "replay", *selection, "--overwrite-later-writes")
        assert broad.returncode == 1 and "give --id N" in broad.stderr, broad.stderr
    assert [r["user_id"] for r in as_json(dead_letters(standin, "list", "--json"))] == [recorded["b"]]


def test_replay_holds_a_users_later_letters_behind_an_earlier_one_still_waiting(standin, recorded, db):
    # User a's first letter still fails (its list is missing), the second could apply: replayed
    # now, its writes would land before the first one's, which the user made first. In the same
    # run or not.
    (first_entry, _), (second_entry, second_list) = recorded["orphans"]
    insert_list(db, recorded["a"], list_id=second_list)
    held = dead_letters(standin, "replay", "--user", recorded["a"], "--json")
    assert held.returncode == 1
    first, second = as_json(held)
    assert (first["dead_letter_id"], first["replayed"]) == (recorded["ids"][0], False)
    assert (second["dead_letter_id"], second["replayed"], second["skipped"]) == (recorded["ids"][1], False, True)
    assert f"dead letter {recorded['ids'][0]} of the same user" in second["reason"]
    assert row(db, "todos", second_entry["id"]) is None
    assert [r["id"] for r in as_json(dead_letters(standin, "list", "--user", recorded["a"], "--json"))] == \
        recorded["ids"][:2]
    # a dry run says which earlier dead letter it waits for
    (dry,) = as_json(dead_letters(standin, "replay", "--id", str(recorded["ids"][1]), "--dry-run", "--json"))
    assert dry["earlier_waiting"] == recorded["ids"][0], dry
    # named alone too: the earlier one still waits
    (alone,) = as_json(dead_letters(standin, "replay", "--id", str(recorded["ids"][1]), "--json"))
    assert alone["skipped"] is True and row(db, "todos", second_entry["id"]) is None
    # another user's letters are not held by it
    other = as_json(dead_letters(standin, "replay", "--ids", f"{recorded['ids'][0]},{recorded['ids'][2]}", "--json"))
    assert [o["dead_letter_id"] for o in other] == [recorded["ids"][0], recorded["ids"][2]]
    assert "skipped" not in other[1]


def test_discard_keeps_the_reason_and_a_discarded_dead_letter_is_never_replayed(standin, recorded, db, as_service):
    ids = recorded["ids"]
    no_reason = dead_letters(standin, "discard", "--id", str(ids[2]))
    assert no_reason.returncode == 1 and "--reason is required" in no_reason.stderr
    dry = as_json(dead_letters(standin, "discard", "--code", "23514", "--reason", "bad data", "--dry-run", "--json"))
    assert dry == [{"dead_letter_id": ids[2], "dry_run": True, "user_id": recorded["b"], "code": "23514",
                    "would_discard_with_reason": "bad data"}]
    assert db.execute(f"select discarded_at from {DEAD_LETTERS} where id = %s", (ids[2],)).fetchone() == (None,)

    done = dead_letters(standin, "discard", "--code", "23514", "--reason", "priority 9 was a typo", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert as_json(done)[0]["discarded"] is True
    kept = db.execute(f"select discard_reason, discarded_by, discarded_at is not null, entries is not null"
                      f" from {DEAD_LETTERS} where id = %s", (ids[2],)).fetchone()
    assert kept == ("priority 9 was a typo", "service_role", True, True)
    assert [r["id"] for r in as_json(dead_letters(standin, "list", "--json"))] == ids[:2]
    assert [r["id"] for r in as_json(dead_letters(standin, "list", "--state", "discarded", "--json"))] == [ids[2]]
    # neither the tool nor a direct call replays it
    assert dead_letters(standin, "replay", "--id", str(ids[2])).returncode == 1
    refused = as_service.rpc("powersync_replay_dead_letter", {"dead_letter_id": ids[2]})
    assert refused.json()["code"] == "55000", refused.text
    # discarding it again changes nothing (the function is idempotent; the tool only picks waiting ones)
    again = as_service.rpc("powersync_discard_dead_letter", {"dead_letter_id": ids[2], "reason": "other"})
    assert again.status_code == 200 and again.json()["discard_reason"] == "priority 9 was a typo"
    empty = as_service.rpc("powersync_discard_dead_letter", {"dead_letter_id": ids[0], "reason": " "})
    assert empty.json()["code"] == "22023", empty.text


def test_dead_letter_commands_name_the_fix_when_the_service_role_lacks_its_grant(standin, recorded, db):
    db.execute(f"revoke select on public.{DEAD_LETTERS} from service_role")
    try:
        result = dead_letters(standin, "list")
    finally:
        db.execute(f"grant select on public.{DEAD_LETTERS} to service_role")
    assert result.returncode == 1
    assert "run sql/dead_letter.sql again" in result.stderr, result.stderr


def test_discarding_frees_room_under_a_users_dead_letter_cap(standin, ops_worker, session_token, db):
    """A user at the cap (10,000 waiting) has their next fatal transaction kept queued; once the
    operator discards one of them with the tool, the next one is recorded (discarded ones do not
    wait)."""
    sub = str(uuid.uuid4())
    db.execute(f"insert into {DEAD_LETTERS} (user_id, entry, entries, code, recorded_as)"
               " select %s, '{}'::jsonb, '[]'::jsonb, 'planted', 'user' from generate_series(1, 10000)", (sub,))
    list_id = insert_list(db, sub)
    payload = {**body(tx(bad_priority(sub, list_id), tid="over")), "client_id": "c"}
    response = upload(ops_worker, session_token(sub), payload)
    assert statuses(response) == ["retryable_error"], response.text
    (first,) = as_json(dead_letters(standin, "list", "--user", sub, "--limit", "1", "--json"))
    assert dead_letters(standin, "discard", "--id", str(first["id"]), "--reason", "planted").returncode == 0
    response = upload(ops_worker, session_token(sub), payload)
    assert statuses(response) == ["fatal_error"], response.text
