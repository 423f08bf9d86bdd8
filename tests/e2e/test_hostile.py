"""The hostile-user suite (issue 15): user A tries to read, change, delete, replay or block user
B's data through every path the stack exposes, and every attempt must fail AND leave B's data
and queue as they were.

Paths: the worker (`/powersync-upload` with forged owner columns, B's ids, tables outside
`UPLOAD_TABLES`, the bridge's own tables and functions as "tables", B's client and transaction
ids), `/rest/v1` directly with A's token (the data tables, `powersync_dead_letters`,
`powersync_upload_ledger`), every `/rest/v1/rpc` function the SQL files create (called with
arguments that point at B), a session of the `authenticated` role in PostgreSQL (the ledger's
retention setting), and dead letters A gets recorded that an operator then replays, as
`service_role` through `/rpc` and as `postgres` through psql.

Every test runs in rls and service mode (the worker paths also through REST requests instead of
the atomic function) and with a Supabase user and a third-party user (a Firebase uid, not a
uuid). B's state is made the honest way, through the worker: two rows applied (a ledger record in
atomic mode) and one fatal transaction (a dead letter). After A's attempts:

- B's rows, B's dead letters and B's ledger records are exactly as they were (and no row,
  dead letter or ledger record appeared in anybody's name but A's; the table outside the
  allowlist is untouched);
- B's queue works: B's next transaction is applied (not skipped as "already applied"), a re-send
  of B's first transaction is answered from B's ledger record (atomic mode), and B's next fatal
  transaction gets exactly one dead letter, B's.

The data table `hostile_notes` keys its owner by `text` with policies on the JWT's `sub`
(docs/third-party-auth.md), so the same table serves both issuers; `hostile_admin` is a table
the API users have no rights on and that is outside `UPLOAD_TABLES`, which service_role (and so
an operator's replay) can write; `hostile_numbered` and `hostile_accented` are `hostile_notes`
with a numeric id and with an accent-insensitive text id, whose rows each have many spellings.
"""

from __future__ import annotations

import json
import random
import string
import uuid
from dataclasses import dataclass

import psycopg
import pytest
import requests

from tests.e2e.conftest import (ANON_KEY, JWT_SECRET, SECRET_KEY, SERVICE_KEY, RestClient, eq,
                                make_token)
from tests.e2e.test_third_party import FIREBASE_PROJECT, firebase_claims
from tests.e2e.upload_helpers import delete, patch, put, tx, upload
from tests.postgrest_standin.standin import StandIn
from tests.support.db import api_session, new_id
from tests.support.issuers import IssuerServer, ProviderKeys

NOTES = "hostile_notes"
ADMIN = "hostile_admin"
NUMBERED = "hostile_numbered"  # a numeric id: one row has many spellings (`1`, `1.0`)
ACCENTED = "hostile_accented"  # a text id under an accent-insensitive collation (`e`, `é`)
DEAD_LETTERS = "powersync_dead_letters"
LEDGER = "powersync_upload_ledger"
REPLAY = "powersync_replay_dead_letter"
APPLY = "powersync_apply_transaction"
CLAIM = "powersync_upload_ledger_claim"
REJECT = "powersync_upload_ledger_reject"
APPLIED_VIA_REST = "powersync_upload_ledger_applied_via_rest"
REST_BEGIN = "powersync_upload_ledger_rest_begin"
REST_ABANDON = "powersync_upload_ledger_rest_abandon"
RECORD = "powersync_record_dead_letter"

WORKER_MODES = ("rls", "rls-rest", "service", "service-rest")
MODES = ("rls", "service")  # the atomic function (the default once installed)
ISSUERS = ("supabase", "firebase")
REPLAYERS = ("service_role", "postgres")


def owned_table(name: str, id_type: str, body_check: str = "") -> str:
    """A table of notes, its id of `id_type`, each row its `owner_id`'s (the JWT's `sub`) under
    row-level security, writable by the API roles."""
    return f"""
create table if not exists public.{name} (
  id       {id_type} primary key,
  owner_id text not null,
  body     text not null{body_check}
);
alter table public.{name} enable row level security;
drop policy if exists {name}_own on public.{name};
create policy {name}_own on public.{name} for all to authenticated
  using (owner_id = (auth.jwt() ->> 'sub')) with check (owner_id = (auth.jwt() ->> 'sub'));
grant select, insert, update, delete on public.{name} to authenticated, service_role;
"""


HOSTILE_SQL = owned_table(NOTES, "text", " check (body <> 'fatal')") + f"""
create table if not exists public.{ADMIN} (
  id       text primary key,
  owner_id text not null,
  body     text not null
);
alter table public.{ADMIN} enable row level security;
grant select, insert, update, delete on public.{ADMIN} to service_role;
""" + owned_table(NUMBERED, "numeric") + """
do $$
begin
  if not exists (select 1 from pg_catalog.pg_collation where collname = 'hostile_accents') then
    create collation public.hostile_accents (provider = icu, locale = 'und-u-ks-level1', deterministic = false);
  end if;
end
$$;
""" + owned_table(ACCENTED, "text collate public.hostile_accents")


# =========================================================================== the stack
@pytest.fixture(scope="module")
def firebase_issuer():
    """Firebase's key set on loopback: (keys, jwks url)."""
    server = IssuerServer()
    keys = ProviderKeys("fb-hostile-1")
    url = server.serve_jwks("firebase", keys)
    yield keys, url
    server.stop()


@pytest.fixture(scope="module")
def hostile_standin(pg, jwks, firebase_issuer):
    """The PostgREST stand-in in front of the test database with the two hostile tables, trusting
    the project's keys and Firebase's (like Supabase with the Firebase integration)."""
    _, firebase_jwks = firebase_issuer
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(HOSTILE_SQL)
    standin = StandIn(pg.dsn, JWT_SECRET, jwks_url=[jwks.url, firebase_jwks], anon_key=ANON_KEY,
                      service_key=SERVICE_KEY)
    standin.start(port=0)
    yield standin
    standin.stop()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"drop table if exists public.{NOTES}, public.{ADMIN}, public.{NUMBERED}, public.{ACCENTED}")


@pytest.fixture(scope="module")
def hostile_workers(hostile_standin, base_vars, start_workers, firebase_issuer):
    """One worker per mode in front of `hostile_standin`, every one recording dead letters and
    accepting Supabase and Firebase sessions; started concurrently."""
    _, firebase_jwks = firebase_issuer
    common = {**base_vars, "SUPABASE_URL": hostile_standin.url,
              "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
              "THIRD_PARTY_FIREBASE_JWKS_URL": firebase_jwks,
              "UPLOAD_DEAD_LETTER_TABLE": DEAD_LETTERS}
    service = {"UPLOAD_MODE": "service", "UPLOAD_TABLES": f"{NOTES},{NUMBERED},{ACCENTED}", "UPLOAD_OWNER_COLUMN": "owner_id"}
    configs = {
        "rls": {**common, "UPLOAD_ATOMIC": "true"},
        "rls-rest": {**common, "UPLOAD_ATOMIC": "false"},
        "service": {**common, **service, "UPLOAD_ATOMIC": "true"},
        "service-rest": {**common, **service, "UPLOAD_ATOMIC": "false"},
    }
    return start_workers(configs)


# =========================================================================== users and scene
@dataclass
class User:
    name: str
    sub: str
    token: str
    client_id: str


def firebase_uid() -> str:
    return "".join(random.choices(string.ascii_letters + string.digits, k=28))


def make_user(name: str, issuer: str, standin, firebase_keys) -> User:
    if issuer == "supabase":
        sub = str(uuid.uuid4())
        token = make_token(sub, iss=f"{standin.url}/auth/v1")
    else:
        sub = firebase_uid()
        token = firebase_keys.sign(firebase_claims(uid=sub))
    return User(name, sub, token, f"client-{name}-{uuid.uuid4()}")


class Scene:
    """A and B in one mode, B's state made through the worker (module docs)."""

    def __init__(self, mode, issuer, worker, standin, db, firebase_keys):
        self.mode, self.issuer, self.worker, self.standin, self.db = mode, issuer, worker, standin, db
        self.atomic = not mode.endswith("-rest")
        self.service = mode.startswith("service")
        self.a = make_user("a", issuer, standin, firebase_keys)
        self.b = make_user("b", issuer, standin, firebase_keys)
        self.b1, self.b2, self.b_fatal, self.b_next, self.b_next_fatal = (new_id() for _ in range(5))
        self.a1, self.b_admin = new_id(), new_id()
        db.execute(f"insert into public.{ADMIN} (id, owner_id, body) values (%s, %s, 'b-admin')",
                   (self.b_admin, self.b.sub))
        db.execute(f"insert into public.{NOTES} (id, owner_id, body) values (%s, %s, 'a-one')",
                   (self.a1, self.a.sub))
        # B's first transaction: applied (and recorded in the ledger in atomic mode)
        self.b_first = tx(put(NOTES, self.b1, body="b-one", owner_id=self.b.sub),
                          put(NOTES, self.b2, body="b-two", owner_id=self.b.sub), tid=1)
        r = self.upload(self.b, self.b_first)
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "success", r.text
        # B's second: refused by a check constraint, dead-lettered
        r = self.upload(self.b, tx(put(NOTES, self.b_fatal, body="fatal", owner_id=self.b.sub), tid=2))
        assert r.status_code == 200 and r.json()["results"][0]["status"] == "fatal_error", r.text
        letters = self.dead_letters_of(self.b)
        assert len(letters) == 1, letters
        self.b_dead_letter = letters[0]["id"]
        if self.atomic:
            assert self.ledger_of(self.b), "B's first transaction is in the ledger"
        self.before = self.snapshot()

    # ------------------------------------------------------------------ talking to the stack
    def upload(self, user: User, *transactions, client_id: str | None = None) -> requests.Response:
        payload = {"client_id": client_id or user.client_id, "transactions": list(transactions)}
        r = upload(self.worker, user.token, payload)
        assert r.status_code in (200, 503), f"never a 500 for a caller's upload: {r.status_code} {r.text}"
        return r

    def rest(self, user: User | None) -> RestClient:
        """`/rest/v1` as `user` (the anon key alone for None), as supabase-js sends it."""
        return RestClient(self.standin.url, ANON_KEY, user.token if user else None)

    def service_rest(self) -> RestClient:
        return RestClient(self.standin.url, SECRET_KEY)

    def rows(self, sql: str, *params) -> list:
        return [r[0] for r in self.db.execute(sql, params).fetchall()]

    def dead_letters_of(self, user: User) -> list[dict]:
        return self.rows(f"select to_jsonb(d) from public.{DEAD_LETTERS} d where d.user_id::text = %s"
                         " order by d.id", user.sub)

    def ledger_of(self, user: User) -> list[dict]:
        return self.rows(f"select to_jsonb(l) from public.{LEDGER} l where l.user_id = %s"
                         " order by l.client_id, l.transaction_id", user.sub)

    def snapshot(self) -> dict:
        """Everything that is not A's own: B's rows (and anybody else's), the whole table outside
        the allowlist, every dead letter and ledger record not in A's name."""
        a = self.a.sub
        return {
            "notes": self.rows(f"select to_jsonb(t) from public.{NOTES} t"
                               " where t.owner_id is distinct from %s order by t.id", a),
            "admin": self.rows(f"select to_jsonb(t) from public.{ADMIN} t order by t.id"),
            "dead_letters": self.rows(f"select to_jsonb(d) from public.{DEAD_LETTERS} d"
                                      " where d.user_id::text is distinct from %s order by d.id", a),
            "ledger": self.rows(f"select to_jsonb(l) from public.{LEDGER} l"
                                " where l.user_id is distinct from %s"
                                " order by l.user_id, l.client_id, l.transaction_id", a),
        }

    # ------------------------------------------------------------------ what A throws
    def hostile_ops(self) -> list[dict]:
        """Ops that would hurt B if anything applied them with more rights than A has: the first
        one (a DELETE of B's row) succeeds silently wherever RLS or the owner filter is bypassed."""
        a, b = self.a.sub, self.b.sub
        return [
            {"op": "DELETE", "table": NOTES, "id": self.b1},
            {"op": "PUT", "table": NOTES, "id": self.b2, "data": {"id": self.b2, "body": "hijacked", "owner_id": a}},
            {"op": "PUT", "table": NOTES, "id": "gift-" + new_id(), "data": {"body": "gift", "owner_id": b}},
            {"op": "PATCH", "table": NOTES, "id": self.b2, "data": {"owner_id": a}},
            {"op": "PUT", "table": ADMIN, "id": "admin-" + new_id(), "data": {"body": "admin", "owner_id": a}},
            {"op": "DELETE", "table": ADMIN, "id": self.b_admin},
            {"op": "DELETE", "table": DEAD_LETTERS, "id": str(self.b_dead_letter)},
        ]

    def hostile_entries(self) -> list[dict]:
        """The same as dead-letter entries: none applied, so a replay would apply them all."""
        return [{**op, "state": "failed"} for op in self.hostile_ops()]

    # ------------------------------------------------------------------ the operator
    def replay(self, dead_letter_id: int, replayer: str):
        """The operator replays a dead letter, as service_role through /rpc or as postgres
        through psql. Returns what the replay answered (a refusal is an answer too)."""
        if replayer == "service_role":
            r = self.service_rest().rpc(REPLAY, {"dead_letter_id": dead_letter_id})
            return r.status_code, r.text
        try:
            return "ok", self.db.execute(f"select public.{REPLAY}(%s)", (dead_letter_id,)).fetchone()[0]
        except psycopg.Error as e:
            return "error", f"{e.sqlstate}: {e}"

    def replay_all_new(self, replayer: str) -> dict:
        """Replays every dead letter recorded since the scene was set (not B's genuine one)."""
        known = {d["id"] for d in self.before["dead_letters"]}
        ids = [i for i in self.rows(f"select id from public.{DEAD_LETTERS} order by id") if i not in known]
        return {i: self.replay(i, replayer) for i in ids}


def replay_refused(answer) -> bool:
    """Whether a replay answer (Scene.replay) reports that nothing was applied: an error raised,
    or the function's result saying it did not replay."""
    how, body = answer
    if how == "error" or (isinstance(how, int) and how >= 400):
        return True
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return False
    return isinstance(body, dict) and body.get("replayed") is False and body.get("applied") == 0


def assert_b_unharmed(s: Scene, context=None):
    """B's data as it was, and B's queue working (module docs)."""
    assert s.snapshot() == s.before, f"B's data changed ({context})"
    # B's next transaction is applied: nobody made it look applied already
    r = s.upload(s.b, tx(put(NOTES, s.b_next, body="b-next", owner_id=s.b.sub), tid=3))
    result = r.json()["results"][0]
    assert result["status"] == "success" and "already_applied" not in result, r.text
    assert s.db.execute(f"select owner_id, body from public.{NOTES} where id = %s",
                        (s.b_next,)).fetchone() == (s.b.sub, "b-next")
    # a re-send of B's first transaction (its answer lost): from B's ledger record in atomic mode
    r = s.upload(s.b, s.b_first)
    result = r.json()["results"][0]
    assert result["status"] == "success", r.text
    if s.atomic:
        assert result.get("already_applied") is True, r.text
    # B's next fatal transaction gets exactly one dead letter, B's
    r = s.upload(s.b, tx(put(NOTES, s.b_next_fatal, body="fatal", owner_id=s.b.sub), tid=4))
    assert r.json()["results"][0]["status"] == "fatal_error", r.text
    recorded = [d for d in s.dead_letters_of(s.b) if d["transaction_id"] == "4"]
    assert len(recorded) == 1, recorded
    assert recorded[0]["entries"][0]["id"] == s.b_next_fatal


@pytest.fixture
def scene(mode, issuer, hostile_workers, hostile_standin, db, firebase_issuer):
    db.execute(f"truncate public.{NOTES}, public.{ADMIN}, public.{NUMBERED}, public.{ACCENTED}")
    hostile_standin.reset()
    keys, _ = firebase_issuer
    return Scene(mode, issuer, hostile_workers[mode], hostile_standin, db, keys)


def refused(response: requests.Response) -> bool:
    """PostgREST's answer to a privilege the role does not have (42501: 401 for anon, else 403)."""
    try:
        code = response.json().get("code")
    except ValueError:
        return False
    return response.status_code in (401, 403) and code == "42501"


# =========================================================================== the worker
@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", WORKER_MODES)
def test_a_cannot_overwrite_patch_delete_or_gift_b_rows_through_the_worker(scene):
    s, a, b = scene, scene.a, scene.b
    # (transaction, what A gets: "fatal" refused and dead-lettered as A's; "unchanged" applied
    # but reported as having changed no row; None: A's own business, not checked)
    attacks = [
        (tx(put(NOTES, s.b1, body="hijacked", owner_id=a.sub)), "fatal"),   # take B's row over
        (tx(put(NOTES, s.b1, body="hijacked", owner_id=b.sub)), "fatal"),   # write it in B's name
        (tx(put(NOTES, s.b2, body="hijacked")), "fatal"),                   # without an owner
        (tx(patch(NOTES, s.b1, body="hijacked")), "unchanged"),
        (tx(patch(NOTES, s.b2, body="hijacked", owner_id=a.sub)), "unchanged"),
        (tx(delete(NOTES, s.b1)), "unchanged"),
        (tx(patch(NOTES, s.b2, id=s.a1, body="renamed")), "unchanged"),     # a PATCH cannot rename
        # a row planted in B's name; A's own row given to B (service mode: the owner is forced
        # to A, so both stay A's business)
        (tx(put(NOTES, "gift-" + new_id(), body="gift", owner_id=b.sub)), None if s.service else "fatal"),
        (tx(patch(NOTES, s.a1, owner_id=b.sub)), None if s.service else "fatal"),
    ]
    fatal = 0
    for n, (attack, expected) in enumerate(attacks):  # one upload each (a retry stops the rest)
        attack["transaction_id"] = 100 + n
        r = s.upload(a, attack)
        result = r.json()["results"][0]
        if expected == "fatal":
            assert result["status"] == "fatal_error", (n, r.text)
            fatal += 1
        elif expected == "unchanged":
            assert result["status"] == "success", (n, r.text)
            assert result.get("unchanged") == [0], f"a write that changed nothing is reported: {r.text}"
    # every refusal is recorded, once, in A's name (never in B's)
    assert len(s.dead_letters_of(a)) == fatal
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ("supabase",))
@pytest.mark.parametrize("mode", WORKER_MODES)
def test_a_cannot_take_b_row_over_by_spelling_its_id_two_ways(scene):
    # Found by an audit: in service mode over REST, PUT "1.0" then PUT "1" were one ownership
    # check, answered with B's row as `1`, matched to the second entry only; the first was then
    # upserted as a row before it, and `on_conflict=id` took B's row 1 over. The worker now knows
    # numbers in any spelling; `é` and `e` (one row under an accent-insensitive collation) it
    # cannot know, and checks the rows before the foreign one again before writing them.
    s, a, b = scene, scene.a, scene.b
    s.db.execute(f"insert into public.{NUMBERED} (id, owner_id, body) values (1, %s, 'b-row')", (b.sub,))
    s.db.execute(f"insert into public.{ACCENTED} (id, owner_id, body) values ('e', %s, 'b-row')", (b.sub,))
    attacks = [(NUMBERED, ("1.0", "1")), (NUMBERED, ("1.00", "1.0")), (NUMBERED, ("1.0",)), (NUMBERED, ("0x1", "1")),
               (ACCENTED, ("é", "e")), (ACCENTED, ("É",))]
    for n, (table, ids) in enumerate(attacks):
        attack = tx(*(put(table, id_, body="mine now", owner_id=a.sub) for id_ in ids), tid=300 + n)
        r = s.upload(a, attack)
        assert r.json()["results"][0]["status"] == "fatal_error", (ids, r.text)
        rows = s.db.execute(f"select id::text, owner_id, body from public.{table}").fetchall()
        assert rows == [("1" if table == NUMBERED else "e", b.sub, "b-row")], (ids, rows)


FORBIDDEN_TABLES = (ADMIN, DEAD_LETTERS, LEDGER, APPLY, REPLAY, RECORD, CLAIM, "rpc")


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", WORKER_MODES)
def test_tables_outside_the_allowlist_and_the_bridge_own_tables_and_functions_are_out_of_reach_of_uploads(scene):
    s, a, b = scene, scene.a, scene.b
    # each table with B's row as the target and data in the table's own columns (an unknown
    # column would only be schema drift)
    targets = {
        ADMIN: (s.b_admin, {"owner_id": a.sub, "body": "forged"}),
        DEAD_LETTERS: (str(s.b_dead_letter), {"user_id": b.sub, "entries": s.hostile_entries(),
                                              "entry": {}, "code": "23514", "replayed_at": None}),
        LEDGER: (b.client_id, {"user_id": b.sub, "client_id": b.client_id, "transaction_id": "3",
                               "digest": "0" * 64}),
    }
    tid = 200
    for table in FORBIDDEN_TABLES:
        target, forged = targets.get(table, (new_id(), {"body": "forged"}))
        for entry in (put(table, target, forged), patch(table, target, forged), delete(table, target),
                      put(table, new_id(), forged)):
            tid += 1
            r = s.upload(a, tx(entry, tid=tid))
            result = r.json()["results"][0]
            assert result["status"] != "success", f"{table} {entry['op']}: {r.text}"
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", WORKER_MODES)
def test_b_client_and_transaction_ids_in_a_upload_neither_replay_nor_block_b(scene):
    s, a, b = scene, scene.a, scene.b
    # B's first transaction, verbatim, under B's client id: refused (A cannot write B's rows)
    r = s.upload(a, s.b_first, client_id=b.client_id)
    assert r.json()["results"][0]["status"] == "fatal_error", r.text
    # B's next transaction ids, first, with A's own row: applied as A's
    r = s.upload(a, tx(put(NOTES, new_id(), body="a-three", owner_id=a.sub), tid=3), client_id=b.client_id)
    assert r.json()["results"][0]["status"] == "success", r.text
    # B's next fatal transaction, verbatim, under B's ids: A's dead letter, not B's
    r = s.upload(a, tx(put(NOTES, s.b_next_fatal, body="fatal", owner_id=b.sub), tid=4),
                 client_id=b.client_id)
    assert r.json()["results"][0]["status"] == "fatal_error", r.text
    assert [d["transaction_id"] for d in s.dead_letters_of(a)] == ["1", "4"]
    assert_b_unharmed(s)


# =========================================================================== /rest/v1 directly
@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_a_cannot_read_or_change_b_rows_through_rest(scene):
    s, a, b = scene, scene.a, scene.b
    api = s.rest(a)
    r = api.get(NOTES, "select=*")
    assert r.status_code == 200 and [x["id"] for x in r.json()] == [s.a1], r.text
    assert api.get(NOTES, f"select=*&id={eq(s.b1)}").json() == []
    assert api.get(NOTES, f"select=*&owner_id={eq(b.sub)}").json() == []
    for query in (f"id={eq(s.b1)}", f"owner_id={eq(b.sub)}", "body=neq.x"):
        api.patch(NOTES, query, json={"body": "hijacked"})
        api.patch(NOTES, query, json={"owner_id": a.sub})
        api.delete(NOTES, query)
    assert refused(api.post(NOTES, json={"id": "gift-" + new_id(), "owner_id": b.sub, "body": "gift"}))
    assert refused(api.post(NOTES, json={"id": s.b1, "owner_id": a.sub, "body": "hijacked"},
                            query="on_conflict=id", prefer="resolution=merge-duplicates"))
    assert refused(api.post(NOTES, json={"id": s.b1, "owner_id": b.sub, "body": "hijacked"},
                            query="on_conflict=id", prefer="resolution=merge-duplicates"))
    # the table outside the allowlist: no rights at all
    assert refused(api.get(ADMIN, "select=*"))
    assert refused(api.post(ADMIN, json={"id": new_id(), "owner_id": a.sub, "body": "admin"}))
    assert refused(api.patch(ADMIN, f"id={eq(s.b_admin)}", json={"body": "hijacked"}))
    assert refused(api.delete(ADMIN, f"id={eq(s.b_admin)}"))
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_a_can_neither_read_change_delete_nor_plant_dead_letters_through_rest(scene):
    s, a, b = scene, scene.a, scene.b
    api = s.rest(a)
    # reading: A's own rows at most (none here), never B's
    r = api.get(DEAD_LETTERS, "select=*")
    assert r.status_code == 200 and r.json() == [], r.text
    assert api.get(DEAD_LETTERS, f"select=*&id=eq.{s.b_dead_letter}").json() == []
    # writing: no insert of any kind, whoever it names, whatever id or time it chooses
    planted = {"user_id": a.sub, "transaction_id": "planted", "op_index": 0,
               "entry": s.hostile_ops()[0], "entries": s.hostile_entries(),
               "code": "23514", "message": "planted"}
    sequence = s.db.execute(f"select pg_get_serial_sequence('public.{DEAD_LETTERS}', 'id')").fetchone()[0]
    last = s.db.execute(f"select last_value from {sequence}").fetchone()[0]
    attempts = [
        planted,
        {**planted, "user_id": b.sub},
        {**planted, "created_at": "2000-01-01T00:00:00Z", "replayed_at": None},
        [{**planted, "id": last + k} for k in range(1, 6)],  # the ids B's next dead letters get
        [{**planted, "user_id": b.sub, "id": last + k} for k in range(1, 6)],
    ]
    for body in attempts:
        r = api.post(DEAD_LETTERS, json=body)
        # an id of A's choosing is refused before the privilege is checked: the id is an
        # identity nobody chooses (428C9, "cannot insert a non-DEFAULT value into column")
        chose_id = isinstance(body, list) and r.status_code == 400 and r.json().get("code") == "428C9"
        assert refused(r) or chose_id, (body, r.status_code, r.text)
    # B's row: neither reset, rewritten, marked replayed nor deleted (RLS hides it at best)
    for change in ({"replayed_at": "2000-01-01T00:00:00Z"}, {"entries": s.hostile_entries()},
                   {"user_id": a.sub}):
        r = api.patch(DEAD_LETTERS, f"id=eq.{s.b_dead_letter}", json=change)
        assert r.status_code >= 400 or r.status_code == 204, r.text
    api.delete(DEAD_LETTERS, f"id=eq.{s.b_dead_letter}")
    api.delete(DEAD_LETTERS, "id=gt.0")
    assert s.dead_letters_of(a) == [], "nothing planted in A's name either"
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_a_cannot_read_or_write_the_ledger_through_rest(scene):
    s, a, b = scene, scene.a, scene.b
    api = s.rest(a)
    forged = {"user_id": b.sub, "client_id": b.client_id, "transaction_id": "3", "digest": "0" * 64}
    assert refused(api.get(LEDGER, "select=*"))
    assert refused(api.post(LEDGER, json=forged))
    assert refused(api.post(LEDGER, json={**forged, "user_id": a.sub}))
    assert refused(api.patch(LEDGER, f"user_id={eq(b.sub)}", json={"digest": "0" * 64}))
    assert refused(api.delete(LEDGER, f"user_id={eq(b.sub)}"))
    assert_b_unharmed(s)


# =========================================================================== /rest/v1/rpc
@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_apply_transaction_rpc_with_owner_arguments_pointing_at_b_changes_nothing_of_b(scene):
    s, a, b = scene, scene.a, scene.b
    api = s.rest(a)
    new_row = {"op": "PUT", "table": NOTES, "id": "planted-" + new_id(), "data": {"body": "planted"}}
    as_b = {"owner_column": "owner_id", "owner_id": b.sub}
    calls = [
        {"ops": s.hostile_ops(), **as_b},
        {"ops": s.hostile_ops()[:1], **as_b},              # DELETE of B's row
        {"ops": s.hostile_ops()[1:2], **as_b},             # PUT over B's row
        {"ops": [new_row], **as_b},                        # a row in B's name
        {"ops": s.hostile_ops()[3:4], "owner_column": "id", "owner_id": s.b2},
        {"ops": s.hostile_ops()[4:5]},                     # the table outside the allowlist
        {"ops": s.hostile_ops()[6:7]},                     # B's dead letter
        {"ops": [new_row], **as_b, "client_id": b.client_id, "transaction_id": "3"},
        {"ops": s.hostile_ops()[:1], **as_b, "client_id": b.client_id, "transaction_id": "1"},
    ]
    for body in calls:
        r = api.rpc(APPLY, body)
        assert r.status_code < 500 or r.json().get("code") != "STANDIN500", r.text
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_ledger_claim_rpc_cannot_mark_b_transaction_applied(scene):
    """A claims B's next (client id, transaction id) with the digest of B's ops, naming B as the
    owner: B's transaction is still applied, not answered "already applied"."""
    s, a, b = scene, scene.a, scene.b
    digest = s.db.execute(f"select digest from public.{LEDGER} where user_id = %s and client_id = %s"
                          " and transaction_id = '1'", (b.sub, b.client_id)).fetchone()[0]
    r = s.rest(a).rpc(CLAIM, {"p_client_id": b.client_id, "p_transaction_id": "5", "p_digest": digest,
                              "p_owner_id": b.sub})
    assert r.status_code < 500, r.text
    # B edits a row elsewhere, then sends transaction 5: the same ops as its first one
    s.db.execute(f"update public.{NOTES} set body = 'edited' where id = %s", (s.b1,))
    s.before = s.snapshot()
    resend = dict(s.b_first, transaction_id=5)
    r = s.upload(b, resend)
    assert r.json()["results"] == [{"status": "success", "transaction_id": 5}], r.text
    assert s.db.execute(f"select body from public.{NOTES} where id = %s", (s.b1,)).fetchone() == ("b-one",)
    s.db.execute(f"update public.{NOTES} set body = 'edited' where id = %s", (s.b1,))
    s.before = s.snapshot()
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("function", [REJECT, APPLIED_VIA_REST, REST_BEGIN, REST_ABANDON])
def test_ledger_record_rpcs_cannot_mark_b_transaction_rejected_or_applied(scene, function):
    """A records B's next (client id, transaction id) as rejected, or as applied through REST, or
    marks it as being applied through REST (or drops such a mark), with the digest of B's entries
    and naming B as the owner: B's transaction is still applied, not answered "rejected before"
    or "already applied", nor kept waiting."""
    s, a, b = scene, scene.a, scene.b
    digest = s.db.execute(f"select entries_digest from public.{LEDGER} where user_id = %s and client_id = %s"
                          " and transaction_id = '1'", (b.sub, b.client_id)).fetchone()
    entries = digest[0] if digest and digest[0] else "0" * 32
    args = {"p_client_id": b.client_id, "p_transaction_id": "5", "p_owner_id": b.sub}
    if function in (REST_BEGIN, REST_ABANDON):
        args["p_mark"] = "0" * 32
    r = s.rest(a).rpc(function, args, headers={"X-PowerSync-Entries-Digest": entries})
    assert r.status_code < 500, r.text
    s.db.execute(f"update public.{NOTES} set body = 'edited' where id = %s", (s.b1,))
    s.before = s.snapshot()
    r = s.upload(b, dict(s.b_first, transaction_id=5))
    assert r.json()["results"] == [{"status": "success", "transaction_id": 5}], r.text
    assert s.db.execute(f"select body from public.{NOTES} where id = %s", (s.b1,)).fetchone() == ("b-one",)
    s.db.execute(f"update public.{NOTES} set body = 'edited' where id = %s", (s.b1,))
    s.before = s.snapshot()
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_ledger_claim_rpc_refuses_huge_digests_and_ids(scene):
    s, a = scene, scene.a
    api = s.rest(a)
    huge = {"p_client_id": a.client_id, "p_transaction_id": "9", "p_digest": "a" * 1_000_000}
    long_client = {"p_client_id": "c" * 10_000, "p_transaction_id": "9", "p_digest": "0" * 64}
    long_transaction = {"p_client_id": a.client_id, "p_transaction_id": "t" * 10_000, "p_digest": "0" * 64}
    not_hex = {"p_client_id": a.client_id, "p_transaction_id": "9", "p_digest": "z" * 64}
    for body in (huge, long_client, long_transaction, not_hex):
        r = api.rpc(CLAIM, body)
        assert 400 <= r.status_code < 500, r.text[:300]
    # through the atomic function the same way
    r = api.rpc(APPLY, {"ops": [], "client_id": "c" * 10_000, "transaction_id": "9"})
    assert 400 <= r.status_code < 500, r.text[:300]
    stored = s.db.execute(f"select max(length(digest)), max(length(client_id)), max(length(transaction_id))"
                          f" from public.{LEDGER}").fetchone()
    assert stored[0] <= 64 and stored[1] <= 256 and stored[2] <= 256, stored
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_ledger_retention_cannot_be_shortened_from_a_user_session_to_prune_b_records(scene, pg):
    """A session of the `authenticated` role (A's claims) sets the retention setting to nothing
    and records a transaction of its own: B's records stay (the retention is not A's to set)."""
    s, a = scene, scene.a
    with api_session(pg, a.sub) as conn:
        conn.execute("select set_config('powersync.ledger_retention', '0 seconds', true)")
        conn.execute(f"select public.{APPLY}(%s::jsonb, null, null, %s, '1')",
                     (json.dumps([{"op": "PUT", "table": NOTES, "id": new_id(),
                                   "data": {"body": "a", "owner_id": a.sub}}]), a.client_id))
    assert_b_unharmed(s)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_replay_rpc_is_not_callable_by_users(scene):
    s, a = scene, scene.a
    r = s.upload(a, tx(put(NOTES, new_id(), body="fatal", owner_id=a.sub), tid=7))
    assert r.json()["results"][0]["status"] == "fatal_error", r.text
    own = s.dead_letters_of(a)[0]["id"]
    for user in (a, None):
        for dead_letter in (s.b_dead_letter, own):
            assert refused(s.rest(user).rpc(REPLAY, {"dead_letter_id": dead_letter}))
    assert_b_unharmed(s)


def _functions(db) -> list[tuple[str, list[tuple[str, str]], int]]:
    """Every powersync_* function in public (what the SQL files create): its name, input
    arguments (name, type) and how many of them are required (the rest have defaults)."""
    found = []
    for name, names, types, modes, defaults in db.execute(
            "select p.proname, coalesce(p.proargnames, '{}'::text[]),"
            "       array(select pg_catalog.format_type(t.oid, null)"
            "               from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[]))"
            "                    with ordinality as t(oid, ord) order by t.ord),"
            "       coalesce(p.proargmodes::text[], '{}'::text[]), p.pronargdefaults"
            "  from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and p.proname like 'powersync%' order by 1"):
        args = [(n, t) for i, (n, t) in enumerate(zip(names, types))
                if not modes or modes[i] in ("i", "b", "v")]
        found.append((name, args, len(args) - defaults))
    return found


def hostile_argument(s: Scene, name: str, type_: str):
    """A value for an argument of that name and type that points at B, or tries to pass for
    someone A is not."""
    n = name.lower()
    if type_ in ("json", "jsonb"):
        if "entries" in n:
            return s.hostile_entries()
        if "ops" in n:
            return s.hostile_ops()
        if n == "entry":
            return s.hostile_ops()[0]
        return {"sub": s.b.sub, "role": "service_role", "user_id": s.b.sub}
    if type_.endswith("[]"):
        return [NOTES, ADMIN, DEAD_LETTERS, LEDGER]
    if type_ in ("bigint", "integer", "smallint", "numeric"):
        return s.b_dead_letter if "id" in n else 0
    if type_ == "boolean":
        return True
    if type_.startswith("timestamp"):
        return "2000-01-01T00:00:00Z"
    if type_ == "interval":
        return "0 seconds"
    if type_ == "uuid":
        return s.b.sub if s.issuer == "supabase" else str(uuid.uuid4())
    if "column" in n:
        return "owner_id"
    if "client" in n:
        return s.b.client_id
    if "transaction" in n:
        return "4"
    if "digest" in n:
        return "0" * 64
    if n == "p_mark":
        return "0" * 32
    if "table" in n:
        return ADMIN
    if any(k in n for k in ("user", "owner", "sub")):
        return s.b.sub
    if "code" in n:
        return "23514"
    return "hostile"


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("caller", ["user", "anon"])
def test_every_rpc_function_called_with_arguments_pointing_at_b_leaves_b_unharmed(scene, caller):
    """Every function the SQL files create, called by A (or with the anon key alone) through
    /rpc with every argument pointing at B (B's ids, B's owner, entries that would delete and
    take over B's rows); then the operator replays every dead letter that appeared, as
    service_role and as postgres."""
    s = scene
    api = s.rest(s.a if caller == "user" else None)
    functions = _functions(s.db)
    assert {APPLY, CLAIM, REPLAY, RECORD} <= {name for name, _, _ in functions}
    answers = {}
    for name, args, required in functions:
        if not all(n for n, _ in args):
            continue  # unnamed arguments: not callable by name through /rpc
        # every argument pointing at B; and only the required ones (the defaults decide the rest)
        for label, chosen in (("all", args), ("required", args[:required])):
            r = api.rpc(name, {n: hostile_argument(s, n, t) for n, t in chosen})
            answers[f"{name} ({label})"] = (r.status_code, r.text[:200])
            assert r.status_code < 500 or r.json().get("code") not in ("STANDIN500",), r.text
    if caller == "anon":
        assert all(status in (401, 403, 404) for status, _ in answers.values()), answers
    s.replay_all_new("service_role")
    s.replay_all_new("postgres")
    assert_b_unharmed(s, answers)


@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
def test_dead_letters_a_records_through_rpc_are_a_own_and_replay_with_a_rights_only(scene):
    """A calls the recorder directly with entries built to hurt B when replayed: naming B as the
    owner, an owner column and allowed tables (service-mode provenance), its own id and time, B's
    client and transaction ids and B's next ops. Whatever is recorded is A's, with A's claims and
    the database's time, one row per transaction; the operator's replays (service_role, then
    postgres) apply it as A, so they report a refusal and B stays as it was."""
    s, a, b = scene, scene.a, scene.b
    api = s.rest(a)
    planted = {"entries": s.hostile_entries(), "code": "23514", "message": "planted"}
    # in B's name, or with a service-mode provenance: refused, or recorded as A's own
    for extra in ({"user_id": b.sub}, {"owner_column": "owner_id"}, {"allowed_tables": [NOTES, ADMIN]},
                  {"user_id": b.sub, "owner_column": "owner_id", "allowed_tables": None}):
        r = api.rpc(RECORD, {**planted, **extra, "transaction_id": "p-" + new_id()})
        assert r.status_code < 500, r.text
    # an id, a time or a provenance of its own choosing: there is no such argument
    for extra in ({"id": 1}, {"created_at": "2000-01-01T00:00:00Z"}, {"recorded_as": "service"}):
        r = api.rpc(RECORD, {**planted, **extra})
        assert 400 <= r.status_code < 500, r.text
    # B's next fatal transaction (its client and transaction ids, its ops), recorded first by A
    b_next_fatal = [{"op": "PUT", "table": NOTES, "id": s.b_next_fatal,
                     "data": {"id": s.b_next_fatal, "body": "fatal", "owner_id": b.sub}, "state": "failed"}]
    for _ in range(2):  # twice: one dead letter per transaction
        r = api.rpc(RECORD, {"entries": b_next_fatal, "code": "23514", "message": "m",
                             "client_id": b.client_id, "transaction_id": "4"})
        assert r.status_code == 200, r.text
    # and plainly, A's own: recorded
    r = api.rpc(RECORD, {**planted, "transaction_id": "plain", "client_id": a.client_id})
    assert r.status_code == 200, r.text
    mine = s.dead_letters_of(a)
    assert [d["transaction_id"] for d in mine].count("4") == 1, mine
    assert "plain" in [d["transaction_id"] for d in mine]
    for d in mine:
        assert d["user_id"] == a.sub
        assert d.get("recorded_as") == "user" and (d.get("recorded_claims") or {}).get("sub") == a.sub, d
        assert not d.get("owner_column") and not d.get("allowed_tables"), d
    now = s.db.execute("select now()").fetchone()[0]
    assert all(abs((now - s.db.execute(f"select created_at from public.{DEAD_LETTERS} where id = %s",
                                       (d["id"],)).fetchone()[0]).total_seconds()) < 120 for d in mine)
    for replayer in REPLAYERS:
        answers = s.replay_all_new(replayer)
        assert answers and all(replay_refused(answer) for answer in answers.values()), answers
    assert_b_unharmed(s)


# =========================================================================== the operator's replay
@pytest.mark.parametrize("issuer", ISSUERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("replayer", REPLAYERS)
def test_dead_letters_a_gets_recorded_through_the_worker_replay_without_touching_b(scene, replayer):
    """A sends transactions built to hurt B once replayed with an operator's rights (a DELETE of
    B's row that RLS or the owner filter makes a silent no-op, then a write over B's row that is
    refused, so the whole transaction is dead-lettered; a write to the table outside the
    allowlist). The operator replays all of A's dead letters: each is applied with no more than
    A's rights, so nothing of B's changes and the refusals are reported, not forced."""
    s, a, b = scene, scene.a, scene.b
    attacks = [
        tx(delete(NOTES, s.b1), put(NOTES, s.b2, body="hijacked", owner_id=a.sub), tid=11),
        tx(delete(NOTES, s.b1), put(NOTES, "gift-" + new_id(), body="gift", owner_id=b.sub),
           put(NOTES, new_id(), body="fatal", owner_id=a.sub), tid=12),
        tx(put(ADMIN, "admin-" + new_id(), body="admin", owner_id=a.sub), delete(ADMIN, s.b_admin),
           delete(NOTES, s.b1), tid=13),
    ]
    for attack in attacks:
        r = s.upload(a, attack)
        assert r.json()["results"][0]["status"] != "success", r.text
    letters = s.dead_letters_of(a)
    assert len(letters) >= 2, letters
    answers = s.replay_all_new(replayer)
    assert set(answers) == {d["id"] for d in letters}
    # each would need more than A's rights: refused, and the refusal reported, not forced
    assert all(replay_refused(answer) for answer in answers.values()), answers
    assert_b_unharmed(s, answers)
