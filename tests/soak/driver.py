"""The model-based fault soak (issue 11, "The proof"): simulated PowerSync clients upload random
transactions through the worker while a proxy injects faults between the worker and the
PostgREST stand-in; at the end PostgreSQL must equal a model built from what the worker reported.

Why the comparison is a proof, and why it needs no global lock
--------------------------------------------------------------
Each client owns its own ids: its lists and todos are random uuids no other client writes.
The only rows several clients touch are the *anchors*: one list and one todo per client,
inserted before the run and never deleted or changed by anyone (their owner's workload does not
name them). Cross-client writes aim only at rows whose outcome cannot depend on timing:

- a PUT onto another client's anchor is always refused (42501: RLS, or the service-mode
  ownership check), because the anchor always exists and belongs to someone else;
- a PATCH or DELETE of any id of another client always changes nothing (RLS hides the row;
  service mode filters on the owner), whether or not that row exists at the time;
- a todo may reference another client's anchor list (foreign keys ignore RLS): that list
  always exists, so the reference always holds.

So the final rows of one client depend only on the order of that client's own transactions, and
a client uploads its queue strictly in order (it sends the head of its queue and completes only
a leading run of final results). The model therefore replays each client's transactions in the
order they were completed, each as the worker reported it, on top of the anchors, and unions
the clients' rows. No lock serialises the clients, so the worker sees real concurrency
(several uploads in flight at once, interleaved PostgREST requests).

"As reported": a `success` applies every entry; a `fatal_error` or `conflict` applies the
entries its dead letter marks `applied` (per-entry states) or, for a dead letter without states, the entries
before `failed_operation.index` outside atomic mode and none in atomic mode. The model also
predicts every outcome itself; a report the model disagrees with (a success it would refuse, a
fatal transaction whose unapplied part it would accept, a fatal transaction reported at another
entry than the first one the model refuses) is a *disagreement* and fails the soak,
as does any row that differs, a fatal transaction without a dead letter (whole, with the same
index) or a dead letter for a transaction that was not reported fatal.

Exactly once: each client sends its own PowerSync-style `client_id` with every upload. In atomic
mode the worker's function records (user, client id, transaction id) with the writes, so a
transaction re-sent after a lost answer is answered `success` (`already_applied`) without being
applied again; that makes the dependent patterns below safe there, and they are part of the
atomic mode's default workload (`dependent_deletes=None`: on in atomic mode, off in the others,
where the known gap remains).

Fatal at any position: besides the refusals the workload makes by itself, a share of the
transactions (`SoakConfig.fatal_rate`) gets one entry the database always refuses (a check, a
not-null or a foreign key violation, on a fresh id no other entry names) inserted at a random
position, first to last; the report counts them by position. Every fatal transaction must have
exactly one dead letter (a second one, e.g. after the answer to the first was lost, is a
dead-letter problem), and no other dead letter may exist.

A table without grants: every mode also writes `soak_notes` (tests/soak/service_schema.sql),
whose grants for the API roles are revoked before the run, as Supabase creates new tables since
2026. A write to it is refused with `42501 permission denied`, which is the operator's mistake,
so it must be retryable: the client keeps the transaction and re-sends it. The driver runs the
GRANT during the run (once half of the operations are final, or as soon as half of the clients
still running wait on it: waiting clients idle, and the bounded soak must stay about as fast as
without the missing grant), and from then on the table takes writes like the others. A
transaction discarded for the missing grant would be a fatal result the model does not refuse:
a disagreement.

Conflict detection: the workers run with UPLOAD_CONFLICT_DETECTION=true, and each client sends
previous values (`previous_values`) with a share of its PATCHes and DELETEs (`previous_rate`):
the row as its own local copy holds it, a copy that applies every write at once, refused or not,
as an app's SQLite does. A write the server refused therefore leaves the copy ahead of the server,
and a later entry comparing that row meets a real conflict. The model (tests/soak/model.py)
decides each compared entry against the rows it holds at that point, so a `conflict` result must
be one the model finds at the reported index, and a `success` may not apply one; the run fails on
either. Re-sends are where a false conflict would come from (the row holds the transaction's own
earlier application): the REST rules' read of the new values and the atomic function's ledger must
make them no conflict. Outside atomic mode an entry whose row a later entry of the same transaction
writes again carries no previous values (a known limit of the REST route, docs/conflicts.md). An
entry whose row an earlier entry of its transaction PUT does carry them, and the worker must not
compare it (docs/conflicts.md): a re-sent PUT brings a deleted row back with its defaults, which
the REST route would otherwise read as a false conflict (seed 305193507 found it).

The default configuration ("auto": UPLOAD_ATOMIC unset; also in service mode, "service-auto",
and without a dead-letter table, "auto-no-dead-letters", where the ledger keeps a rejection's
failure as reported, so a re-send is answered as the lost answer was; an answer without it,
`dead_lettered`, is a disagreement): the atomic function, and for a call the
statement timeout cancels, the same transaction through REST requests under the ledger's mark.
The proxy answers a share of the atomic calls with 57014 (`statement_timeout`), only for the
transactions `rest_safe` accepts: applied through REST a transaction is neither all-or-nothing nor
exactly once, and the patterns of the known gap would show. Its outcome is then read as in the
REST modes (`_applied_indexes`). A fallback that ends retryable ends its mark; when that request
fails too, the mark stays for its 10 minutes and the transaction waits (55P03): the driver
expires such marks once their client has no upload in flight (`expire_marks`) and counts them.

Faults: see tests/soak/proxy.py. In atomic mode the proxy also applies a share of the requests
after the worker gave up on them (`late`), by which time the client has re-sent the transaction
and often sent later ones: the ledger must make the late call change nothing. The REST modes do
not get them: a late REST write can undo a later one, the known gap (docs/upload.md); `python -m
tests.soak --modes service --rates ...,late=0.02` shows it. Without that fault no write lands late:
the proxy gives every request a deadline inside the worker's timeout (proxy docs). The client ignores `Retry-After` (it would make the soak wait
minutes) and retries after 10-40 ms, or 100-200 ms while it waits for the missing grant (so
waiting clients do not take the 2-core machine from the others).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import psycopg
import requests

from tests.soak.model import DEFAULTS, DEMO, SERVICE, TABLES, Conflict, Entry, Refused, Schema, State, compares
from tests.soak.proxy import DEFAULT_RATES

@dataclass(frozen=True)
class Mode:
    """A worker configuration the soak runs."""
    service: bool = False       # UPLOAD_MODE=service (the service schema), else rls
    atomic: str | None = None   # UPLOAD_ATOMIC: "true", "false", or None (unset: the default)
    dead_letters: bool = True   # UPLOAD_DEAD_LETTER_TABLE set (else rejections go to the ledger)

    @property
    def ledger(self) -> bool:
        """Through the atomic function and its ledger: exactly once."""
        return self.atomic != "false"

    @property
    def fallback(self) -> bool:
        """A call the statement timeout cancels goes through REST requests (UPLOAD_ATOMIC unset)."""
        return self.atomic is None


# "atomic" demands the function (UPLOAD_ATOMIC=true); "auto" is the default configuration
# (UPLOAD_ATOMIC unset), where a call the statement timeout cancels is applied through REST
# requests instead; the last two are the default configuration in service mode and without a
# dead-letter table (rejections recorded in the ledger only).
MODE_SPECS = {"rls": Mode(atomic="false"), "service": Mode(service=True, atomic="false"),
              "atomic": Mode(atomic="true"), "auto": Mode(),
              "service-auto": Mode(service=True), "auto-no-dead-letters": Mode(dead_letters=False)}
MODES = tuple(MODE_SPECS)
# The modes whose uploads go through the atomic function and its ledger (exactly once).
LEDGER_MODES = tuple(m for m, spec in MODE_SPECS.items() if spec.ledger)
DEAD_LETTERS = "powersync_dead_letters"
FINAL = ("success", "fatal_error", "conflict")
UNGRANTED = SERVICE.notes  # the table granted during the run (module docs)
API_ROLES = "authenticated, service_role"
# A re-send's answer for a transaction the ledger holds as rejected without the failure reported
# then (a ledger older than p_rejection): never expected here.
HELD_REJECTION = "dead_lettered"
LATE_RATE = 0.03  # share of atomic-mode requests the proxy applies after the worker gave up
# share of the auto mode's atomic calls (of transactions safe to apply through REST) that the
# proxy answers with a statement timeout
TIMEOUT_RATE = 0.08


def schema_for(mode: str) -> Schema:
    return SERVICE if MODE_SPECS[mode].service else DEMO


def worker_vars(mode: str, base: dict, proxy_url: str, timeout_ms: int) -> dict:
    """The worker configuration of a soak mode (base: conftest.complete_vars)."""
    spec = MODE_SPECS[mode]
    v = {**base, "SUPABASE_URL": proxy_url, "UPSTREAM_TIMEOUT_MS": str(timeout_ms),
         "UPLOAD_CONFLICT_DETECTION": "true"}
    if spec.dead_letters:
        v["UPLOAD_DEAD_LETTER_TABLE"] = DEAD_LETTERS
    if spec.service:
        v.update({"UPLOAD_MODE": "service",
                  "UPLOAD_TABLES": f"{SERVICE.lists},{SERVICE.todos},{SERVICE.notes}",
                  "UPLOAD_OWNER_COLUMN": "owner_id"})
    if spec.atomic is not None:
        v["UPLOAD_ATOMIC"] = spec.atomic
    return v


def default_rates(mode: str) -> dict[str, float]:
    """The proxy's fault rates in a mode: proxy.DEFAULT_RATES, and in the ledger's modes late writes
    too (LATE_RATE): only the atomic function's ledger makes a write that lands after the worker
    gave up on it harmless; through REST requests it can undo a later write (docs/upload.md, known
    gap). In auto mode also statement timeouts of atomic calls (TIMEOUT_RATE, module docs)."""
    spec = MODE_SPECS[mode]
    rates = dict(DEFAULT_RATES)
    if spec.ledger:
        rates["late"] = LATE_RATE
    if spec.fallback:
        rates["statement_timeout"] = TIMEOUT_RATE
    return rates


def late_ok(path: str) -> bool:
    """Auto mode's `late` requests: the atomic function's and the ledger's calls, except the
    REST fallback's writes (through REST a late write can undo a later one: the known gap, which
    a fallback has too, docs/upload.md) and its mark (`rest_begin`: landing after the worker gave
    up, a mark nobody drops keeps the transaction waiting for its 10 minutes; a liveness cost the
    docs state, which the bounded soak cannot wait out)."""
    return path.startswith("/rest/v1/rpc/") and not path.endswith("/powersync_upload_ledger_rest_begin")


def rest_safe(entries: list[Entry]) -> bool:
    """Whether a transaction may be applied through REST requests and sent again after a lost
    answer without a different result: no dependent pattern (Generator docs), and no entry with
    previous values whose row a later entry writes again (with_previous_values). Only these get
    statement timeouts in auto mode: a fallback is neither all-or-nothing nor exactly once, and
    for the others the known gap would show (docs/upload.md)."""
    return not has_dependent_pattern(entries) and not any(
        e.previous is not None and written_again(entries, k) for k, e in enumerate(entries))


def written_again(entries: list[Entry], k: int) -> bool:
    """Whether an entry after entries[k] writes its row again (a PUT or a PATCH of it)."""
    e = entries[k]
    return any((p.table, p.id) == (e.table, e.id) and p.op in ("PUT", "PATCH") for p in entries[k + 1:])


def rid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# =========================================================================== workload
@dataclass
class Transaction:
    tid: int
    entries: list[Entry]
    fatal_at: int | None = None  # where an always-refused entry was inserted (module docs)

    def wire(self, schema: Schema) -> dict:
        return {"transaction_id": self.tid, "crud": [e.wire(schema) for e in self.entries]}


@dataclass
class Ids:
    sub: str
    lists: list[str]
    todos: list[str]
    anchor_list: str
    anchor_todo: str
    notes: list[str] = field(default_factory=list)  # soak_notes ids (the ungranted table)


class Generator:
    """Random transactions of one client over its own small id space (3 lists, 6 todos, 3 notes),
    with deliberate refusals, always-refused entries at random positions (`fatal_rate`) and
    cross-client writes that cannot depend on timing (module docs)."""

    def __init__(self, rng: random.Random, me: Ids, others: list[Ids], dependent_deletes: bool = False,
                 fatal_rate: float = 0.0, previous_rate: float = 0.0):
        self.rng = rng
        self.dependent_deletes = dependent_deletes
        self.fatal_rate = fatal_rate
        self.previous_rate = previous_rate
        # the client's own local copy (its SQLite): every write applied at once, refused or not,
        # so a write the server refused leaves it behind the server (a real conflict later)
        self.local: dict[str, dict[str, dict]] = {t: {} for t in TABLES}
        self.me = me
        self.others = others
        self.anchor_lists = [me.anchor_list] + [o.anchor_list for o in others]
        self.foreign_ids = [("lists", i) for o in others for i in o.lists + [o.anchor_list]] + \
                           [("todos", i) for o in others for i in o.todos + [o.anchor_todo]] + \
                           [("notes", i) for o in others for i in o.notes]

    def text(self, prefix: str) -> str:
        r = self.rng
        word = "".join(r.choice("abcdefghij") for _ in range(r.randint(1, 8)))
        return f"{prefix} {word}" + (r.choice(["", " é", " 'q'", ' "dq"', " ,)", " 日本"]) if r.random() < 0.2 else "")

    def own_list_for_todo(self) -> str:
        r = self.rng
        return r.choice(self.anchor_lists) if r.random() < 0.15 else r.choice(self.me.lists)

    def todo_data(self, list_id: str, with_priority: bool) -> dict:
        r = self.rng
        d = {"description": self.text("todo"), "completed": r.random() < 0.3,
             "owner": self.me.sub, "list_id": list_id}
        if with_priority:
            d["priority"] = r.randint(0, 5)
        return d

    def entry(self) -> Entry:
        r, me = self.rng, self.me
        kinds = ["put_list", "put_todo", "patch_todo", "patch_list", "delete_todo", "delete_list",
                 "bad_priority_put", "missing_list_put", "bad_priority_patch", "put_foreign_anchor",
                 "put_list_for_other", "patch_list_owner", "foreign_patch_delete"]
        weights = [16, 26, 12, 6, 7, 3, 1.5, 1, 1.5, 1, 1, 1, 3]
        if me.notes:  # rare: each client soon waits on the missing grant (module docs)
            kinds += ["put_note", "patch_note", "delete_note"]
            weights += [0.4, 0.15, 0.15]
        kind = r.choices(kinds, weights=weights)[0]
        if kind == "put_note":
            return Entry("PUT", "notes", r.choice(me.notes), {"body": self.text("note"), "owner": me.sub})
        if kind == "patch_note":
            return Entry("PATCH", "notes", r.choice(me.notes), {"body": self.text("edited")})
        if kind == "delete_note":
            return Entry("DELETE", "notes", r.choice(me.notes))
        if kind == "put_list":
            return Entry("PUT", "lists", r.choice(me.lists), {"name": self.text("list"), "owner": me.sub})
        if kind == "put_todo":
            return Entry("PUT", "todos", r.choice(me.todos), self.todo_data(self.own_list_for_todo(), r.random() < 0.5))
        if kind == "patch_todo":
            data = r.choice([
                {"description": self.text("edited")}, {"completed": r.random() < 0.5},
                {"priority": r.randint(0, 5)}, {"priority": None},
                {"description": self.text("both"), "completed": True},
                {"list_id": r.choice(me.lists)}, {}])
            return Entry("PATCH", "todos", r.choice(me.todos), data)
        if kind == "patch_list":
            return Entry("PATCH", "lists", r.choice(me.lists), {"name": self.text("renamed")})
        if kind == "delete_todo":
            return Entry("DELETE", "todos", r.choice(me.todos))
        if kind == "delete_list":
            return Entry("DELETE", "lists", r.choice(me.lists))
        if kind == "bad_priority_put":
            d = self.todo_data(self.own_list_for_todo(), True)
            d["priority"] = r.choice([9, -1, 6])
            return Entry("PUT", "todos", r.choice(me.todos), d)
        if kind == "missing_list_put":
            return Entry("PUT", "todos", r.choice(me.todos), self.todo_data(rid(r), r.random() < 0.5))
        if kind == "bad_priority_patch":
            return Entry("PATCH", "todos", r.choice(me.todos), {"priority": 9})
        other = r.choice(self.others)
        if kind == "put_foreign_anchor":
            if r.random() < 0.5:
                return Entry("PUT", "lists", other.anchor_list, {"name": self.text("hijack"), "owner": me.sub})
            return Entry("PUT", "todos", other.anchor_todo, self.todo_data(me.anchor_list, False))
        if kind == "put_list_for_other":  # RLS: refused; service: the owner is forced to me
            return Entry("PUT", "lists", r.choice(me.lists), {"name": self.text("gift"), "owner": other.sub})
        if kind == "patch_list_owner":  # RLS: refused when the row exists; service: owner dropped
            return Entry("PATCH", "lists", r.choice(me.lists), {"owner": other.sub, "name": self.text("give")})
        table, id_ = r.choice(self.foreign_ids)
        if r.random() < 0.5:
            return Entry("DELETE", table, id_)
        column = {"lists": "name", "todos": "description", "notes": "body"}[table]
        return Entry("PATCH", table, id_, {column: self.text("x")})

    def fatal_entry(self) -> Entry:
        """An entry the database always refuses, on a fresh id no other entry names (so it makes
        no dependent pattern): a check, not-null or foreign-key violation."""
        r, me = self.rng, self.me
        kind = r.choice(["check", "not_null", "foreign_key"] + (["note_not_null"] if me.notes else []))
        if kind == "check":
            data = self.todo_data(me.anchor_list, True)
            data["priority"] = r.choice([9, -1, 6])
            return Entry("PUT", "todos", rid(r), data)
        if kind == "not_null":
            return Entry("PUT", "lists", rid(r), {"name": None, "owner": me.sub})
        if kind == "foreign_key":
            return Entry("PUT", "todos", rid(r), self.todo_data(rid(r), r.random() < 0.5))
        return Entry("PUT", "notes", rid(r), {"body": None, "owner": me.sub})

    def transaction(self, tid: int) -> Transaction:
        t = self._transaction(tid)
        if self.previous_rate:
            self.with_previous_values(t.entries)
        else:
            for e in t.entries:
                self.local_apply(e)
        return t

    def local_apply(self, e: Entry) -> None:
        rows = self.local[e.table]
        data = {k: v for k, v in (e.data or {}).items() if k != "id"}
        if e.op == "PUT":
            rows[e.id] = {**(rows.get(e.id) or DEFAULTS[e.table]), **data}
        elif e.op == "PATCH" and e.id in rows:
            rows[e.id] = {**rows[e.id], **data}
        elif e.op == "DELETE":
            rows.pop(e.id, None)

    def with_previous_values(self, entries: list[Entry]) -> None:
        """Tracks previous values as the SDK does (`trackPrevious`), for a share `previous_rate`
        of the PATCHes and DELETEs: the local row before the change. An id not in the local copy
        (another client's) gets a made-up value: its row is hidden, so it must stay `unchanged`.
        Outside atomic mode (`dependent_deletes` off) an entry whose row a later entry of the same
        transaction writes again carries none: re-sent after a lost answer, it would find that
        later write and read as a conflict (docs/conflicts.md, Limits), a case of the known gap."""
        r = self.rng
        for k, e in enumerate(entries):
            if e.op in ("PATCH", "DELETE") and r.random() < self.previous_rate:
                row = self.local[e.table].get(e.id)
                if row is not None:
                    e.previous = dict(row)
                else:
                    e.previous = {{"lists": "name", "todos": "description", "notes": "body"}[e.table]: "seen"}
                if not self.dependent_deletes and written_again(entries, k):
                    e.previous = None
            self.local_apply(e)

    def _transaction(self, tid: int) -> Transaction:
        r = self.rng
        if r.random() < 0.08:  # a run of PUTs with one key set: one bulk upsert (and a repeated id)
            list_id = self.own_list_for_todo()
            with_priority = r.random() < 0.5
            ids = [r.choice(self.me.todos) for _ in range(r.randint(2, 8))]
            entries = [Entry("PUT", "todos", i, self.todo_data(list_id, with_priority)) for i in ids]
            if r.random() < 0.3:
                entries.insert(0, Entry("PUT", "lists", list_id, {"name": self.text("list"), "owner": self.me.sub})
                               if list_id in self.me.lists else Entry("DELETE", "todos", r.choice(self.me.todos)))
            return self.with_fatal_entry(tid, entries)
        n = r.choices([1, 2, 3, 4, 5, 6], weights=[30, 25, 18, 12, 8, 7])[0]
        entries = [self.entry() for _ in range(n)]
        if not self.dependent_deletes:
            # KNOWN HOLE (docs/upload.md "Known gap"): a transaction whose later entry changes what an
            # earlier entry does is not safe to re-send after a lost answer. Two such patterns
            # come out of this generator; unless asked for, they are rewritten:
            # - a DELETE of a list an earlier entry points a todo at becomes a DELETE of one of
            #   our todos (on a re-send the todo's PUT fails: 23503);
            # - a PATCH of an id a later entry PUTs becomes a DELETE of it (the first time the
            #   PATCH matches nothing; on a re-send it hits the row the PUT created). A DELETE
            #   before the PUT is safe to re-send.
            # Rewritten until none is left: turning a PATCH of a list into a DELETE can make the
            # first pattern (a todo PUT earlier in the transaction points at that list).
            while (k := dependent_entry(entries)) is not None:
                e = entries[k]
                if e.op == "DELETE":
                    entries[k] = Entry("DELETE", "todos", r.choice(self.me.todos))
                else:
                    entries[k] = Entry("DELETE", e.table, e.id)
        return self.with_fatal_entry(tid, entries)

    def with_fatal_entry(self, tid: int, entries: list[Entry]) -> Transaction:
        """The transaction, with an always-refused entry at a random position (first to last)
        for a share `fatal_rate` of transactions."""
        if self.fatal_rate and self.rng.random() < self.fatal_rate:
            at = self.rng.randint(0, len(entries))
            return Transaction(tid, entries[:at] + [self.fatal_entry()] + entries[at:], fatal_at=at)
        return Transaction(tid, entries)


def dependent_entry(entries: list[Entry]) -> int | None:
    """The first entry whose effect a re-send would change (Generator docs): a DELETE of a list an
    earlier entry points a todo at, or a PATCH of an id a later entry PUTs."""
    for k, e in enumerate(entries):
        if e.op == "DELETE" and e.table == "lists" and any(
                p.table == "todos" and (p.data or {}).get("list_id") == e.id for p in entries[:k]):
            return k
        if e.op == "PATCH" and any(p.op == "PUT" and (p.table, p.id) == (e.table, e.id) for p in entries[k + 1:]):
            return k
    return None


def has_dependent_pattern(entries: list[Entry]) -> bool:
    """Whether a later entry changes what an earlier one does on a re-send (Generator docs)."""
    return dependent_entry(entries) is not None


# =========================================================================== clients
@dataclass
class ClientStats:
    uploads: int = 0
    retried_uploads: int = 0       # uploads after which something had to be sent again
    resent_transactions: int = 0   # transactions sent again (each time)
    network_errors: int = 0
    already_applied: int = 0       # results answered from the atomic function's ledger
    compared_already_applied: int = 0  # of those, transactions with previous values
    grant_retries: int = 0         # head transactions answered retryable for a missing grant
    mark_waits: int = 0            # head transactions answered 55P03: another upload's REST mark
    killed_in_flight: int = 0      # uploads sent before a deploy stopped the worker, ended by a network error
    not_json: int = 0
    http_status: Counter = field(default_factory=Counter)
    result_status: Counter = field(default_factory=Counter)


class Client(threading.Thread):
    """One simulated PowerSync client: its queue, sent head first, completed in order."""

    def __init__(self, index: int, ids: Ids, token: str, queue: list[Transaction], url: str,
                 schema: Schema, seed: str, max_per_upload: int, stop: threading.Event,
                 deploys: "Deploys | None" = None):
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.deploys = deploys
        # tid -> the worker generations (Deploys) that may have served each of its attempts, in order
        self.generations: dict[int, list[set[int]]] = defaultdict(list)
        self.index = index
        # the PowerSync client id of this simulated database (db.getClientId() in the SDK)
        self.client_id = str(uuid.UUID(int=random.Random(f"{seed}:client-id:{index}").getrandbits(128)))
        self.ids = ids
        self.token = token
        self.queue = list(queue)
        self.url = url
        self.schema = schema
        self.rng = random.Random(f"{seed}:client-io:{index}")
        self.max_per_upload = max_per_upload
        self.stop_event = stop
        self.completed: list[tuple[Transaction, dict]] = []
        self.attempts: dict[int, list] = defaultdict(list)  # tid -> what each upload answered for it
        self.stats = ClientStats()
        self.error: BaseException | None = None
        # the head of the queue was last answered "retryable: permission denied" (a missing grant)
        self.waiting_for_grant = False
        # ... or 55P03, held by a REST fallback's mark (auto mode)
        self.waiting_for_mark = False
        # held while an upload is in flight: a mark of this client's made by no upload in flight
        # is one a fallback left behind (the driver's expire_marks)
        self.busy = threading.Lock()

    def run(self):
        try:
            self._run()
        except BaseException as e:  # reported by the driver
            self.error = e

    def _run(self):
        http = requests.Session()
        head = 0
        while head < len(self.queue) and not self.stop_event.is_set():
            batch = self.queue[head:head + self.rng.randint(1, self.max_per_upload)]
            body = {"client_id": self.client_id, "transactions": [t.wire(self.schema) for t in batch]}
            self.stats.uploads += 1
            done = 0
            sent_in, changing = (self.deploys.generation, self.deploys.changing) if self.deploys else (0, False)
            try:
                with self.busy:
                    response = http.post(self.url + "/powersync-upload", data=json.dumps(body),
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"}, timeout=60)
                self.stats.http_status[response.status_code] += 1
                results = None
                if response.status_code in (200, 503):
                    try:
                        results = response.json().get("results")
                    except ValueError:
                        self.stats.not_json += 1
                if isinstance(results, list) and len(results) == len(batch) and all(
                        isinstance(r, dict) and r.get("transaction_id") == t.tid for r, t in zip(results, batch)):
                    for t, r in zip(batch, results):
                        self.stats.result_status[r.get("status")] += 1
                        if r.get("already_applied") is True:
                            self.stats.already_applied += 1
                            self.stats.compared_already_applied += any(e.previous for e in t.entries)
                        f = r.get("failed_operation") or {}
                        self.attempts[t.tid].append([response.status_code, r.get("status"), f.get("index"),
                                                     f.get("code"), r.get("applied_via")])
                    while done < len(batch) and results[done].get("status") in FINAL:
                        self.completed.append((batch[done], results[done]))
                        done += 1
                    head_result = results[done] if done < len(batch) else {}
                    self.waiting_for_grant = waits_for_grant(head_result)
                    self.stats.grant_retries += self.waiting_for_grant
                    self.waiting_for_mark = (head_result.get("failed_operation") or {}).get("code") == "55P03"
                    self.stats.mark_waits += self.waiting_for_mark
                else:
                    for t in batch:
                        self.attempts[t.tid].append([response.status_code, "unusable answer"])
            except requests.RequestException as e:
                self.stats.network_errors += 1
                for t in batch:
                    self.attempts[t.tid].append(["network error", type(e).__name__])
            if self.deploys:
                # a request sent while a deploy stops the worker reaches the old one (killed) or the new one
                gens = range(sent_in, max(self.deploys.generation, sent_in + changing) + 1)
                if not changing and (self.deploys.changing or len(gens) > 1) and \
                        self.attempts[batch[0].tid][-1][0] == "network error":
                    self.stats.killed_in_flight += 1
                for t in batch:
                    self.generations[t.tid].append(set(gens))
                    self.attempts[t.tid][-1].append(f"g{sent_in}" if len(gens) == 1 else f"g{sent_in}..{gens[-1]}")
            head += done
            if done < len(batch):
                self.stats.retried_uploads += 1
                self.stats.resent_transactions += len(batch) - done
                # waiting for the operator's GRANT: a slower pace (module docs)
                time.sleep(self.rng.uniform(0.1, 0.2) if self.waiting_for_grant else self.rng.uniform(0.01, 0.04))


def waits_for_grant(result: dict) -> bool:
    """A result retryable because a privilege is missing (42501 `permission denied for ...`)."""
    failure = result.get("failed_operation") or {}
    return result.get("status") == "retryable_error" and failure.get("code") == "42501"


# =========================================================================== deploys
# `--deploys N`: an operator's `wrangler deploy` with changed settings while clients hold queued,
# half-applied or answer-lost transactions. The worker is stopped (its process killed: an isolate
# eviction, which ends the requests in flight, a REST fallback half-way included) and started
# again at the same address with a random subset of these settings changed, each one a setting
# docs/upload.md and docs/configuration.md let an operator change while writes are queued without
# losing the mode's guarantees:
# - UPLOAD_DEAD_LETTER_TABLE set or unset (ledger modes: a rejection is then the ledger's record
#   only, answered as it was; REST modes: reported, not recorded). A fatal transaction whose last
#   attempt (the one answered final) may have met a worker without the table may lack a dead
#   letter (counted); otherwise it must have exactly one, as without deploys (a worker with the
#   table records one for a rejection the ledger held from an attempt without it);
# - UPLOAD_ATOMIC "true" <-> unset, only in the modes where it is unset (auto, service-auto,
#   auto-no-dead-letters): their workload is safe through REST (rest_safe), and "true" only
#   removes the fallback. Not in atomic mode: its workload has the dependent patterns, which the
#   unset setting's fallback (a call the deadline rolls back answers 57014 too) does not
#   guarantee (docs/upload.md, "What is not guaranteed"). Never "false" in a ledger mode (the known gap);
# - UPLOAD_SUBREQUEST_BUDGET (ledger modes; 16: room for a one-entry transaction over REST with
#   conflict detection, the ownership check and a record), UPLOAD_TIME_BUDGET_MS,
#   UPLOAD_RETRY_AFTER_SECONDS: how much one upload does and how long a client waits, never
#   what is applied;
# - "waiting" settings, which make writes wait for the operator (retryable) and are undone by a
#   later deploy (the last deploy undoes them, and a deploy with one comes at most WAITING_SECONDS
#   before the next): UPLOAD_TABLES without soak_notes (the list lagging behind an app release,
#   `table_not_in_upload_tables`), UPLOAD_ERROR_CLASS_OVERRIDES=23502:retryable (docs/upload.md:
#   make a NOT NULL refusal wait while you migrate), and UPLOAD_ATOMIC=true in the auto modes: a
#   transaction whose REST fallback ended or was killed half-way goes on only through REST
#   requests, so under it that transaction waits, its message saying to unset UPLOAD_ATOMIC
#   (docs/upload.md, statement timeout; the soak's expire_marks ends a killed fallback's mark);
#   UPLOAD_SUBREQUEST_BUDGET=16 in the auto modes: such a transaction too big for it over REST
#   waits for the operator to raise it (docs/upload.md).
# Not changed: UPLOAD_CONFLICT_DETECTION (a stale PATCH applied while it is off is a silent
# overwrite the model cannot tell from a bug when the applying attempt's answer was lost),
# UPLOAD_JSON_COLUMNS (no json column in the soak's tables), UPLOAD_BOOLEAN_COLUMNS (clients send
# booleans: nothing to convert), UPLOAD_DEAD_LETTER_UNCHANGED (records success transactions: verify
# would need their `unchanged`), UPLOAD_MODE, UPLOAD_OWNER_COLUMN (they change what a write means).
WAITING = ("UPLOAD_TABLES", "UPLOAD_ERROR_CLASS_OVERRIDES", "UPLOAD_ATOMIC", "UPLOAD_SUBREQUEST_BUDGET")
WAITING_SECONDS = 15.0


def deploy_settings(mode: str) -> dict[str, list]:
    """The settings a deploy may change in a mode, each with its values (None: unset)."""
    spec = MODE_SPECS[mode]
    schema = schema_for(mode)
    full = f"{SERVICE.lists},{SERVICE.todos},{SERVICE.notes}" if spec.service else None
    s = {"UPLOAD_DEAD_LETTER_TABLE": [DEAD_LETTERS, None],
         "UPLOAD_TIME_BUDGET_MS": ["2000", None],
         "UPLOAD_RETRY_AFTER_SECONDS": ["1", "30", None],
         "UPLOAD_TABLES": [f"{schema.lists},{schema.todos}", full],
         "UPLOAD_ERROR_CLASS_OVERRIDES": ["23502:retryable", None]}
    if spec.ledger:
        s["UPLOAD_SUBREQUEST_BUDGET"] = ["16", None]
    if spec.fallback:
        s["UPLOAD_ATOMIC"] = ["true", None]
    return s


class Deploys:
    """The worker's generations: `redeploy(changes)` (from the caller: stop the mode's worker,
    start it again at the same address with its settings and `changes`, None = unset) is called
    `n` times during the run, when the operations final pass (k+1)/(n+1) of cfg.operations, or
    WAITING_SECONDS after a deploy that made writes wait. Which settings change is drawn from
    the seed; the clients note the generation(s) each attempt may have met."""

    def __init__(self, mode: str, base: dict, n: int, operations: int, seed: int, redeploy, log):
        self.settings = deploy_settings(mode)
        self.current = {k: base.get(k) for k in self.settings}
        self.configs = [dict(self.current)]  # by generation
        self.n = n
        self.operations = operations
        self.rng = random.Random(f"{seed}:deploys:{mode}")
        self.redeploy = redeploy
        self.log = log
        self.generation = 0
        self.changing = False
        self.history: list[dict] = []
        self.since = time.monotonic()

    def due(self, final_operations: int) -> bool:
        k = len(self.history)
        if k >= self.n:
            return False
        waiting = any(self.current[w] != self.configs[0][w] for w in WAITING if w in self.settings)
        return (final_operations >= (k + 1) * self.operations / (self.n + 1)
                or (waiting and time.monotonic() - self.since >= WAITING_SECONDS))

    def deploy(self, started: float, final_operations: int) -> None:
        last = len(self.history) == self.n - 1
        names = sorted(self.settings)
        chosen = self.rng.sample(names, self.rng.randint(1, 3))
        changed = {}
        for name in chosen:
            others = [v for v in self.settings[name] if v != self.current[name]]
            changed[name] = self.rng.choice(others)
        if last:  # the last configuration makes nothing wait: every queue drains
            for w in (w for w in WAITING if w in self.settings):
                if self.current[w] != self.configs[0][w] or w in changed:
                    changed[w] = self.configs[0][w]
        t0 = time.monotonic()
        self.changing = True
        try:
            self.redeploy(changed)
        finally:
            self.current.update(changed)
            self.configs.append(dict(self.current))
            self.generation += 1
            self.changing = False
            self.since = time.monotonic()
        self.history.append({"generation": self.generation, "seconds": t0 - started,
                             "operations": final_operations, "down_seconds": time.monotonic() - t0,
                             "changed": changed})
        self.log(f"  {t0 - started:.0f} s: deploy g{self.generation} ({final_operations} operations final): "
                 f"{json.dumps(changed)}")

    def without_dead_letters(self, generations: set[int]) -> bool:
        return any(self.configs[g].get("UPLOAD_DEAD_LETTER_TABLE") is None for g in generations)


# =========================================================================== the run
@dataclass
class SoakConfig:
    mode: str
    operations: int = 2000         # CRUD entries to complete, all clients together
    clients: int = 6
    seed: int | None = None
    rates: dict | None = None      # proxy fault rates (None: default_rates(mode))
    max_per_upload: int = 3        # transactions per upload request, at most
    fault_phase_seconds: float = 600.0   # faults stop after this long even if queues are not drained
    progress_seconds: float = 15.0
    # also generate the patterns that are unsafe to re-send without exactly-once delivery (module
    # docs); None: on in atomic mode (the ledger makes them safe), off in the REST modes
    dependent_deletes: bool | None = None
    drain_seconds: float = 120.0
    # share of transactions with an always-refused entry inserted at a random position
    fatal_rate: float = 0.08
    # soak_notes starts without grants for the API roles and is granted during the run (module docs)
    ungranted_table: bool = True
    # share of PATCHes and DELETEs sent with previous values (the worker runs with
    # UPLOAD_CONFLICT_DETECTION=true; 0: none are compared)
    previous_rate: float = 0.6
    # times the worker is stopped and started again with changed settings during the run (Deploys)
    deploys: int = 0


@dataclass
class SoakReport:
    mode: str
    seed: int
    clients: int
    transactions: int = 0
    operations: int = 0
    successes: int = 0
    fatal: int = 0
    conflicts: int = 0                # transactions reported `conflict` (each one real: verify)
    compared_entries: int = 0         # completed entries sent with previous values
    compared_resent: int = 0          # completed with previous values after being sent more than once
    compared_already_applied: int = 0
    uploads: int = 0
    retried_uploads: int = 0
    resent_transactions: int = 0
    network_errors: int = 0
    already_applied: int = 0
    grant_retries: int = 0            # results "retryable: permission denied" before the GRANT
    granted: dict | None = None       # when soak_notes was granted (seconds, operations, waiting)
    applied_via_rest: int = 0         # auto mode: completed through REST after a statement timeout
    mark_waits: int = 0               # head transactions answered 55P03 (another upload's mark)
    marks_expired: int = 0            # marks a fallback left, expired by the driver (expire_marks)
    injected_fatal: Counter = field(default_factory=Counter)  # completed, by position
    dependent_deletes: bool = False
    dependent_transactions: int = 0   # completed transactions with a dependent pattern
    proxy: dict = field(default_factory=dict)
    seconds: float = 0.0
    rows_compared: int = 0
    differences: list = field(default_factory=list)
    disagreements: list = field(default_factory=list)
    dead_letter_problems: list = field(default_factory=list)
    dead_letters: int = 0
    dead_letter_format: str = ""
    duplicate_dead_letters: int = 0
    undrained: int = 0
    client_errors: list = field(default_factory=list)
    histories: dict = field(default_factory=dict)
    deploys: list = field(default_factory=list)    # Deploys.history
    fatal_without_dead_letter: int = 0  # allowed: an attempt may have run without the table (Deploys)
    killed_in_flight: int = 0

    @property
    def ok(self) -> bool:
        return not (self.differences or self.disagreements or self.dead_letter_problems
                    or self.undrained or self.client_errors)

    def summary(self, limit: int = 5) -> str:
        p = self.proxy
        kinds = ", ".join(f"{k} {v}" for k, v in p.get("by_kind", {}).items() if k != "pass")
        lines = [
            f"soak {self.mode}: seed {self.seed}, {self.clients} clients, {self.seconds:.1f} s",
            f"  operations {self.operations} in {self.transactions} transactions: "
            f"{self.successes} success, {self.fatal} fatal, {self.conflicts} conflict",
            f"  compared entries (previous values) {self.compared_entries}; transactions with them "
            f"completed after a re-send {self.compared_resent}, answered already applied "
            f"{self.compared_already_applied}",
            f"  uploads {self.uploads}; retried uploads {self.retried_uploads}, "
            f"transactions re-sent {self.resent_transactions}, network errors {self.network_errors}, "
            f"answered already applied {self.already_applied}; dependent patterns "
            f"{'on' if self.dependent_deletes else 'off'} ({self.dependent_transactions} transactions)",
            f"  always-refused entries inserted: {sum(self.injected_fatal.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.injected_fatal.items())) or 'none'}); "
            + (f"{UNGRANTED} granted after {self.granted['seconds']:.1f} s, {self.granted['operations']} "
               f"operations final, {self.granted['waiting']} clients waiting; {self.grant_retries} "
               f"retries for the missing grant" if self.granted else f"{UNGRANTED} never ungranted"),
            f"  upstream requests {p.get('rest_requests', 0)} (+{p.get('other_requests', 0)} other), "
            f"faults {p.get('faults', 0)}: {kinds}; proxy upstream errors {p.get('upstream_errors', 0)}; "
            f"rolled back at the deadline {p.get('expired', 0)}; atomic calls answered from a dead letter "
            f"{p.get('dead_letter_answers', 0)}",
            f"  applied through REST after a statement timeout {self.applied_via_rest}; answered 55P03 "
            f"(another upload's mark) {self.mark_waits}; marks left by a fallback, expired by the driver "
            f"{self.marks_expired}",
            f"  dead letters {self.dead_letters} ({self.dead_letter_format}; "
            f"{self.duplicate_dead_letters} duplicates)",
            *([f"  deploys {len(self.deploys)}, uploads in flight killed {self.killed_in_flight}; "
               f"fatal transactions without a dead letter, last attempt possibly to a "
               f"worker without the table {self.fatal_without_dead_letter}"]
              + [f"    g{d['generation']} at {d['seconds']:.0f} s ({d['operations']} operations final, "
                 f"down {d['down_seconds']:.1f} s): {json.dumps(d['changed'])}" for d in self.deploys]
              if self.deploys else []),
            f"  rows compared {self.rows_compared}; differences {len(self.differences)}, "
            f"disagreements {len(self.disagreements)}, dead-letter problems "
            f"{len(self.dead_letter_problems)}, undrained {self.undrained}",
        ]
        for label, items in (("difference", self.differences), ("disagreement", self.disagreements),
                             ("dead-letter problem", self.dead_letter_problems),
                             ("client error", self.client_errors)):
            for item in items[:limit]:
                lines.append(f"  {label}: {json.dumps(item, default=str)}")
        for key, history in list(self.histories.items())[:limit]:
            lines.append(f"  history of {key}:")
            for h in history:
                lines.append(f"    {json.dumps(h, default=str)}")
        lines.append("  RESULT: " + ("no write lost, database equals the model" if self.ok else "FAILED"))
        return "\n".join(lines)


def _db_rows(conn, schema: Schema) -> dict[str, dict[str, dict]]:
    lists = {r[0]: {"name": r[1], "owner": r[2]} for r in conn.execute(
        f"select id::text, name, {schema.list_owner}::text from public.{schema.lists}")}
    todos = {r[0]: {"description": r[1], "completed": r[2], "owner": r[3], "list_id": r[4], "priority": r[5]}
             for r in conn.execute(
                 f"select id::text, description, completed, {schema.todo_owner}::text, list_id::text, priority"
                 f" from public.{schema.todos}")}
    notes = {r[0]: {"body": r[1], "owner": r[2]} for r in conn.execute(
        f"select id::text, body, {schema.note_owner}::text from public.{schema.notes}")}
    return {"lists": lists, "todos": todos, "notes": notes}


def _grant(conn, granted: bool) -> None:
    """Grants (or revokes) what the bridge needs on the table of the missing grant."""
    if granted:
        conn.execute(f"grant select, insert, update, delete on public.{UNGRANTED} to {API_ROLES}")
    else:
        conn.execute(f"revoke all on public.{UNGRANTED} from {API_ROLES}")


def _reset_tables(conn) -> None:
    conn.execute(f"truncate public.todos, public.lists, public.soak_todos, public.soak_lists,"
                 f" public.{UNGRANTED}, public.{DEAD_LETTERS} restart identity cascade")
    # a rerun with the same seed reuses client and transaction ids
    if conn.execute("select to_regclass('public.powersync_upload_ledger')").fetchone()[0]:
        conn.execute("truncate public.powersync_upload_ledger")


def _insert_anchors(conn, schema: Schema, clients: list[Ids]) -> State:
    state = State()
    for c in clients:
        conn.execute(f"insert into public.{schema.lists} (id, name, {schema.list_owner}) values (%s, %s, %s)",
                     (c.anchor_list, "anchor", c.sub))
        conn.execute(f"insert into public.{schema.todos} (id, description, {schema.todo_owner}, list_id)"
                     f" values (%s, %s, %s, %s)", (c.anchor_todo, "anchor", c.sub, c.anchor_list))
        state.tables["lists"][c.anchor_list] = {"name": "anchor", "owner": c.sub}
        state.tables["todos"][c.anchor_todo] = {"description": "anchor", "completed": False, "owner": c.sub,
                                                "list_id": c.anchor_list, "priority": None}
    return state


def client_ids(seed: int, clients: int) -> list[Ids]:
    """Each client's user and rows, from the seed."""
    master = random.Random(f"{seed}:ids")
    return [Ids(rid(master), [rid(master) for _ in range(3)], [rid(master) for _ in range(6)],
                rid(master), rid(master), [rid(master) for _ in range(3)]) for _ in range(clients)]


def workloads(cfg: SoakConfig, seed: int, ids: list[Ids], dependent: bool) -> list[list[Transaction]]:
    """Each client's transactions, from the seed: at least its share of cfg.operations entries,
    so all of them together hold at least cfg.operations. The share is rounded up: rounded down,
    6 clients' 333 entries could come to 1,998 or 1,999 of 2,000 (seed 522860893 did)."""
    per_client = max(1, -(-cfg.operations // len(ids)))
    queues = []
    for i, me in enumerate(ids):
        gen = Generator(random.Random(f"{seed}:workload:{i}"), me, [o for o in ids if o is not me],
                        dependent, cfg.fatal_rate, cfg.previous_rate)
        queue, n = [], 0
        while n < per_client:
            t = gen.transaction((i + 1) * 1_000_000 + len(queue))
            queue.append(t)
            n += len(t.entries)
        queues.append(queue)
    return queues


def run_soak(cfg: SoakConfig, worker_url: str, proxy, dsn: str, make_token, log=print,
             redeploy=None, worker_settings: dict | None = None) -> SoakReport:
    """Runs one soak against a worker already configured for `cfg.mode` (worker_vars) whose
    SUPABASE_URL is `proxy`. `make_token(sub)` -> a session token the worker accepts.
    With cfg.deploys, `redeploy(changes)` restarts that worker at the same address with its
    settings (`worker_settings`) and `changes` (Deploys)."""
    seed = cfg.seed if cfg.seed is not None else random.SystemRandom().randrange(1, 2**31)
    schema = schema_for(cfg.mode)
    spec = MODE_SPECS[cfg.mode]
    service = spec.service
    atomic = spec.ledger
    report = SoakReport(cfg.mode, seed, cfg.clients)
    dependent = cfg.dependent_deletes if cfg.dependent_deletes is not None else atomic
    report.dependent_deletes = dependent
    log(f"soak {cfg.mode}: seed {seed} (rerun with SOAK_SEED={seed})")
    ids = client_ids(seed, cfg.clients)
    queues = workloads(cfg, seed, ids, dependent)

    with psycopg.connect(dsn, autocommit=True) as conn:
        _reset_tables(conn)
        _grant(conn, not cfg.ungranted_table)
        anchors = _insert_anchors(conn, schema, ids)
        dl_columns = {r[0] for r in conn.execute(
            "select column_name from information_schema.columns where table_schema = 'public'"
            " and table_name = %s", (DEAD_LETTERS,))}

    deploys = None
    if cfg.deploys:
        if redeploy is None or worker_settings is None:
            raise ValueError("cfg.deploys needs redeploy and worker_settings")
        deploys = Deploys(cfg.mode, worker_settings, cfg.deploys, cfg.operations, seed, redeploy, log)
    stop = threading.Event()
    clients = [Client(i, ids[i], make_token(ids[i].sub), queues[i], worker_url, schema, str(seed),
                      cfg.max_per_upload, stop, deploys) for i in range(cfg.clients)]
    started = time.monotonic()
    safe = {(c.client_id, str(t.tid)) for c in clients for t in c.queue if rest_safe(t.entries)}
    proxy.configure(seed, cfg.rates if cfg.rates is not None else default_rates(cfg.mode),
                    timeout_ok=(lambda client_id, tid: (client_id, tid) in safe) if spec.fallback else None,
                    late_ok=late_ok if spec.fallback else None)
    for c in clients:
        c.start()

    def final_operations() -> int:
        return sum(len(t.entries) for c in clients for t, _ in list(c.completed))

    def grant(force: bool = False) -> None:
        """The operator's GRANT, during the run: once half of the operations are final, or when
        half of the clients still running wait on it (module docs)."""
        if report.granted is not None:
            return
        done = final_operations()
        running = [c for c in clients if c.is_alive()]
        waiting = sum(c.waiting_for_grant for c in running)
        if force or done >= cfg.operations / 2 or 2 * waiting >= len(running):
            with psycopg.connect(dsn, autocommit=True) as conn:
                _grant(conn, True)
            report.granted = {"seconds": time.monotonic() - started, "operations": done, "waiting": waiting}
            log(f"  {time.monotonic() - started:.0f} s: {UNGRANTED} granted ({done} operations final, "
                f"{waiting} of {len(running)} running clients waiting on it)")

    def expire_marks() -> None:
        """Ends the marks REST fallbacks left behind, as their 10 minutes would (the bounded soak
        cannot wait them out): a fallback that ends retryable ends its mark, but that request
        can fail too, and the transaction then waits (55P03) until the mark expires. A client
        sends one upload at a time, so a mark of a client with no upload in flight is one no
        fallback is using; each is counted (marks_expired)."""
        for c in clients:
            if not c.waiting_for_mark or not c.busy.acquire(blocking=False):
                continue
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    report.marks_expired += conn.execute(
                        "update public.powersync_upload_ledger set rest_until = now() - interval '1 second'"
                        " where client_id = %s and rest_until > now()", (c.client_id,)).rowcount
            finally:
                c.busy.release()

    def wait(until: float) -> None:
        last = time.monotonic()
        marks_checked = time.monotonic()
        while any(c.is_alive() for c in clients) and time.monotonic() < until:
            time.sleep(0.2)
            if cfg.ungranted_table:
                grant()
            if deploys is not None and deploys.due(final_operations()):
                deploys.deploy(started, final_operations())
            if spec.fallback and time.monotonic() - marks_checked >= 2:
                marks_checked = time.monotonic()
                expire_marks()
            if time.monotonic() - last >= cfg.progress_seconds:
                last = time.monotonic()
                done = sum(len(t.entries) for c in clients for t, _ in c.completed)
                p = proxy.snapshot()
                log(f"  ... {time.monotonic() - started:.0f} s: {done} operations final, "
                    f"{sum(c.stats.uploads for c in clients)} uploads, {p['faults']} faults, "
                    f"{p['expired']} rolled back at the deadline")

    wait(started + cfg.fault_phase_seconds)
    if cfg.ungranted_table:
        grant(force=True)
    proxy_stats = proxy.snapshot()
    proxy.faults_off()
    if any(c.is_alive() for c in clients):
        log(f"  faults off after {time.monotonic() - started:.0f} s; draining")
    wait(time.monotonic() + cfg.drain_seconds)
    stop.set()
    for c in clients:
        c.join(10)
    # every write of this run has landed (a late one is held past the worker's timeout): none lands
    # after the database is read, nor in the next run's
    if not proxy.wait_idle(30):
        report.client_errors.append({"error": "the proxy still handled requests 30 s after the clients stopped"})
    report.seconds = time.monotonic() - started
    report.proxy = proxy.snapshot()
    report.proxy["faults_phase"] = proxy_stats

    for c in clients:
        if c.error is not None:
            report.client_errors.append({"client": c.index, "error": repr(c.error)})
        report.undrained += len(c.queue) - len(c.completed)
        s = c.stats
        report.uploads += s.uploads
        report.retried_uploads += s.retried_uploads
        report.resent_transactions += s.resent_transactions
        report.network_errors += s.network_errors
        report.already_applied += s.already_applied
        report.compared_already_applied += s.compared_already_applied
        report.grant_retries += s.grant_retries
        report.mark_waits += s.mark_waits
        report.killed_in_flight += s.killed_in_flight
        for tx, result in c.completed:
            report.transactions += 1
            report.operations += len(tx.entries)
            if tx.fatal_at is not None:
                n = len(tx.entries)
                report.injected_fatal["only" if n == 1 else "first" if tx.fatal_at == 0
                                      else "last" if tx.fatal_at == n - 1 else "middle"] += 1
            report.dependent_transactions += has_dependent_pattern(tx.entries)
            report.applied_via_rest += result.get("applied_via") == "rest"
            compared = sum(e.previous is not None for e in tx.entries)
            report.compared_entries += compared
            report.compared_resent += bool(compared) and len(c.attempts.get(tx.tid, [])) > 1
            if result["status"] == "success":
                report.successes += 1
            elif result["status"] == "conflict":
                report.conflicts += 1
            else:
                report.fatal += 1

    with psycopg.connect(dsn, autocommit=True) as conn:
        dl_rows = [dict(zip([d.name for d in cur.description], row))
                   for cur in [conn.execute(f"select * from public.{DEAD_LETTERS} order by id")]
                   for row in cur.fetchall()]
        db = _db_rows(conn, schema)
    report.dead_letters = len(dl_rows)
    report.dead_letter_format = "entries with states" if "entries" in dl_columns else "failing entry only"
    if deploys is not None:
        report.deploys = deploys.history
        if len(deploys.history) < cfg.deploys:
            report.client_errors.append({"error": f"{len(deploys.history)} of {cfg.deploys} deploys ran"})
    # the attempt that completed a transaction is its last one
    maybe_without = (lambda c, tid: deploys.without_dead_letters(c.generations[tid][-1])) if deploys else None
    verify(report, clients, anchors, db, dl_rows, schema, service, atomic, spec.dead_letters, maybe_without)
    return report


# =========================================================================== the proof
def _applied_indexes(tx: Transaction, result: dict, letter: dict | None, atomic: bool) -> tuple[list[int], str]:
    if result["status"] == "success":
        return list(range(len(tx.entries))), "success"
    if letter is not None and isinstance(letter.get("entries"), list):
        return [i for i, e in enumerate(letter["entries"]) if isinstance(e, dict) and e.get("state") in ("applied", "unchanged")], \
            "dead letter states"
    if atomic and result.get("applied_via") != "rest":
        return [], "atomic"
    index = (result.get("failed_operation") or {}).get("index")
    if index is None:
        return [], "no index"
    return list(range(index)), "before failed_operation.index"


def _same_entry(sent: dict, recorded) -> bool:
    if not isinstance(recorded, dict):
        return False
    return (recorded.get("op") == sent["op"] and (recorded.get("table") or recorded.get("type")) == sent["table"]
            and recorded.get("id") == sent["id"]
            and (recorded.get("data") or recorded.get("opData") or recorded.get("op_data")) == sent.get("data"))


def verify(report: SoakReport, clients: list[Client], anchors: State, db: dict, dl_rows: list[dict],
           schema: Schema, service: bool, atomic: bool, dead_letters: bool = True,
           maybe_without_dead_letters=None) -> None:
    letters: dict[str, list[dict]] = defaultdict(list)
    for row in dl_rows:
        letters[str(row.get("transaction_id"))].append(row)
    fatal_tids: set[str] = set()
    final = anchors.copy()
    touched: dict[tuple[str, str], list] = defaultdict(list)

    for c in clients:
        state = anchors.copy()
        for tx, result in c.completed:
            tid = str(tx.tid)
            wire = [{k: v for k, v in e.items() if k != "previous_values"} for e in tx.wire(schema)["crud"]]
            failure = result.get("failed_operation") or {}
            for e in tx.entries:
                touched[(e.table, e.id)].append({"client": c.index, "tid": tx.tid, "status": result["status"],
                                                  "index": failure.get("index"), "code": failure.get("code"),
                                                  "unchanged": result.get("unchanged"),
                                                  "attempts": c.attempts.get(tx.tid),
                                                  "crud": tx.wire(schema)["crud"]})
            letter = None
            if result["status"] in ("fatal_error", "conflict"):
                fatal_tids.add(tid)
                mine = letters.get(tid, [])
                if not mine and maybe_without_dead_letters is not None:
                    if maybe_without_dead_letters(c, tx.tid):  # deploys: its last attempt may have met a worker without the table
                        report.fatal_without_dead_letter += 1
                    else:
                        report.dead_letter_problems.append({"problem": "fatal transaction without dead letter, "
                                                            "its last attempt with the table", "client": c.index,
                                                            "tid": tx.tid, "result": result,
                                                            "attempts": c.attempts.get(tx.tid), "crud": wire})
                elif not mine and not dead_letters:
                    pass  # no dead-letter table: the rejection is the ledger's record only
                elif not mine:
                    report.dead_letter_problems.append({"problem": "fatal transaction without dead letter",
                                                        "client": c.index, "tid": tx.tid, "result": result,
                                                        "crud": wire})
                else:
                    if len(mine) > 1:
                        report.duplicate_dead_letters += len(mine) - 1
                        report.dead_letter_problems.append({"problem": "more than one dead letter for one transaction",
                                                            "client": c.index, "tid": tx.tid,
                                                            "ids": [row.get("id") for row in mine]})
                    letter = mine[-1]
                    for row in mine:
                        _check_letter(report, c, tx, wire, result, row)
            applied, how = _applied_indexes(tx, result, letter, atomic)
            # the model's own view of the outcome, from the state before the transaction
            for i in applied:
                try:
                    state.apply(tx.entries[i], c.ids.sub, service, detect=compares(tx.entries, i))
                except Refused as e:
                    report.disagreements.append({"problem": f"reported applied ({how}) but the model refuses it",
                                                 "client": c.index, "tid": tx.tid, "entry": i, "why": str(e),
                                                 "result": result, "attempts": c.attempts.get(tx.tid),
                                                 "crud": wire})
                except Conflict as e:
                    report.disagreements.append({"problem": f"a real conflict reported applied ({how}): "
                                                            "a silent overwrite", "client": c.index, "tid": tx.tid,
                                                 "entry": i, "why": str(e), "result": result,
                                                 "attempts": c.attempts.get(tx.tid), "crud": wire})
            if result["status"] in ("fatal_error", "conflict"):
                # the first unapplied entry the model does not accept must be what was reported:
                # a refusal for fatal_error, a conflict at the reported index for conflict
                probe = state.copy()
                stopped = None
                for i in range(len(tx.entries)):
                    if i in applied:
                        continue
                    try:
                        probe.apply(tx.entries[i], c.ids.sub, service, detect=compares(tx.entries, i))
                    except (Refused, Conflict) as e:
                        stopped = (i, e)
                        break
                # a merged request refused whole is sent again in halves to name the entry at fault;
                # without room for them in the budget, the message names the request's entries
                at = re.search(r"the entry at fault is one of entries (\d+)\.\.=(\d+)", failure.get("message") or "")
                if (result["status"] == "fatal_error" and stopped and isinstance(stopped[1], Refused)
                        and failure.get("index") is not None and failure.get("index") != stopped[0]
                        and not (at and int(at[1]) == failure.get("index") and stopped[0] <= int(at[2]))):
                    report.disagreements.append({"problem": f"fatal reported at entry {failure.get('index')}, "
                                                            f"the model refuses entry {stopped[0]} first",
                                                 "client": c.index, "tid": tx.tid, "applied": applied,
                                                 "result": result, "crud": wire})
                if failure.get("code") == HELD_REJECTION:
                    report.disagreements.append({"problem": "a rejection answered without the failure reported then",
                                                 "client": c.index, "tid": tx.tid, "result": result, "crud": wire})
                if result["status"] == "fatal_error" and not (stopped and isinstance(stopped[1], Refused)):
                    report.disagreements.append({"problem": "reported fatal but the model accepts the unapplied entries"
                                                            + (f" up to a conflict ({stopped[1]})" if stopped else ""),
                                                 "client": c.index, "tid": tx.tid, "applied": applied,
                                                 "result": result, "crud": wire})
                if result["status"] == "conflict" and not (
                        stopped and isinstance(stopped[1], Conflict) and stopped[0] == failure.get("index")):
                    report.disagreements.append({"problem": "conflict reported where the model finds none"
                                                            + (f" (it stops at entry {stopped[0]}: {stopped[1]})"
                                                               if stopped else ""),
                                                 "client": c.index, "tid": tx.tid, "applied": applied,
                                                 "result": result, "attempts": c.attempts.get(tx.tid),
                                                 "crud": wire})
        # this client's own rows (anchors are the same in every client's state)
        for table in TABLES:
            for id_, row in state.tables[table].items():
                if id_ in anchors.tables[table]:
                    if row != anchors.tables[table][id_]:
                        report.disagreements.append({"problem": "model changed an anchor", "client": c.index,
                                                     "table": table, "id": id_})
                    continue
                final.tables[table][id_] = row

    # The history of the row each disagreement is about (a diverging row that a later entry
    # deletes shows up here, not among the differences).
    for d in report.disagreements:
        tx = next((t for c in clients if c.index == d.get("client") for t, _ in c.completed if t.tid == d.get("tid")),
                  None)
        entry = tx.entries[d["entry"]] if tx is not None and isinstance(d.get("entry"), int) else None
        if entry is not None and len(report.histories) < 5:
            report.histories[f"{schema.table(entry.table)}/{entry.id}"] = touched.get((entry.table, entry.id), [])

    for tid, rows in letters.items():
        if tid not in fatal_tids:
            report.dead_letter_problems.append({"problem": "dead letter for a transaction not reported fatal",
                                                "tid": tid, "rows": len(rows), "code": rows[0].get("code")})

    for table in TABLES:
        want, have = final.tables[table], db[table]
        report.rows_compared += len(set(want) | set(have))
        for id_ in sorted(set(want) | set(have)):
            w, h = want.get(id_), have.get(id_)
            if w == h:
                continue
            kind = "missing in database" if h is None else "not in model" if w is None else "values differ"
            report.differences.append({"table": schema.table(table), "id": id_, "kind": kind,
                                       "model": w, "database": h})
            if len(report.histories) < 5:
                report.histories[f"{schema.table(table)}/{id_}"] = touched.get((table, id_), [])


def _check_letter(report: SoakReport, c: Client, tx: Transaction, wire: list[dict], result: dict, row: dict) -> None:
    problems = []
    index = (result.get("failed_operation") or {}).get("index")
    if str(row.get("user_id")) != c.ids.sub:
        problems.append(f"user_id {row.get('user_id')}")
    if row.get("op_index") != index:
        problems.append(f"op_index {row.get('op_index')} != reported index {index}")
    entries = row.get("entries")
    if isinstance(entries, list):
        if len(entries) != len(wire):
            problems.append(f"{len(entries)} entries recorded of {len(wire)}")
        else:
            for i, (sent, rec) in enumerate(zip(wire, entries)):
                if not isinstance(rec, dict) or (rec.get("op"), rec.get("table"), rec.get("id")) != \
                        (sent["op"], sent["table"], sent["id"]):
                    problems.append(f"entry {i} recorded as {rec}")
                elif rec.get("state") == "unchanged" and (sent["op"] == "PUT" or index is None or i >= index):
                    # only a PATCH or DELETE sent before the failure can have changed no row
                    problems.append(f"entry {i} state unchanged")
                elif rec.get("state") not in ("applied", "failed", "not_attempted", "unchanged"):
                    problems.append(f"entry {i} state {rec.get('state')}")
    elif index is not None and 0 <= index < len(wire):
        if not _same_entry(wire[index], row.get("entry")):
            problems.append(f"entry {row.get('entry')} is not entry {index} {wire[index]}")
    elif not (isinstance(row.get("entry"), list) and len(row["entry"]) == len(wire)):
        problems.append("entry is not the whole transaction")
    if problems:
        report.dead_letter_problems.append({"problem": "dead letter does not match", "client": c.index,
                                            "tid": tx.tid, "details": problems, "result": result})
