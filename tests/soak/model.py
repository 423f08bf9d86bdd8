"""The soak's model of the database: the demo schema's lists and todos, the soak's notes, and what
one CRUD entry does to them in each mode, as PostgreSQL (constraints, RLS) and the bridge's rules
decide.

Rows are kept by logical table ("lists", "todos", "notes") with logical columns; `owner` stands
for the owner column (lists.owner_id, todos.created_by in the demo schema; owner_id in both tables
of the service-mode variant and in soak_notes, tests/soak/service_schema.sql). `Schema` maps them
to the real names. soak_notes starts without grants for the API roles and is granted during the
run (tests/soak/driver.py); a write refused for a missing grant is retryable, so it never reaches
the model, which therefore knows nothing about grants.

Semantics (docs/upload.md "/powersync-upload", sql/atomic_upload.sql, tests/sql/test_schema.sql):
- PUT = insert with the given columns (others get their defaults), or on an existing id update
  only the given columns.
  RLS mode: refused (42501) when the existing row belongs to someone else (ON CONFLICT DO
  UPDATE needs the UPDATE policy's USING) or the new row's owner is not the caller (WITH CHECK).
  Service mode: the owner column is forced to the caller; refused (42501) when the existing
  row belongs to someone else (ownership check).
- PATCH = update the given columns of the row with that id if the caller can see it (RLS: own
  rows; service: the owner filter), else nothing. `id` is dropped; in service mode the owner
  column too; nothing left = nothing sent. RLS mode: a new owner other than the caller is
  refused (42501, WITH CHECK).
- DELETE = delete the row if the caller can see it; deleting a list deletes its todos
  (on delete cascade, which RLS does not filter).
- Constraints: todos.priority between 0 and 5 or null (23514); todos.list_id must name an
  existing list (23503; foreign keys ignore RLS, so another user's list counts); lists.name,
  todos.description and notes.body are not null (23502).
- Conflict detection (UPLOAD_CONFLICT_DETECTION, docs/conflicts.md), for a PATCH or DELETE with
  `previous` values: the compared columns are, for a PATCH, those it sets (after the drops above)
  that have a previous value, for a DELETE every column with one; never the owner in service mode.
  A row the caller cannot see: nothing (as without). A row that holds the previous values of every
  compared column (None = null): applied as without. Otherwise a PATCH whose row already holds
  every value it sets changes nothing (its own earlier application); anything else is a
  `Conflict` (nothing of that entry applied). An entry whose row an earlier entry of its
  transaction PUT compares nothing (`compares`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

LIST_COLUMNS = ("name", "owner")
TODO_COLUMNS = ("description", "completed", "owner", "list_id", "priority")
NOTE_COLUMNS = ("body", "owner")
TABLES = ("lists", "todos", "notes")
DEFAULTS = {"lists": {}, "todos": {"completed": False, "priority": None}, "notes": {}}


@dataclass(frozen=True)
class Schema:
    lists: str = "lists"
    todos: str = "todos"
    list_owner: str = "owner_id"
    todo_owner: str = "created_by"
    notes: str = "soak_notes"
    note_owner: str = "owner_id"

    def table(self, logical: str) -> str:
        return {"lists": self.lists, "todos": self.todos, "notes": self.notes}[logical]

    def logical(self, table: str) -> str:
        return {self.lists: "lists", self.todos: "todos", self.notes: "notes"}[table]

    def owner(self, logical: str) -> str:
        return {"lists": self.list_owner, "todos": self.todo_owner, "notes": self.note_owner}[logical]

    def to_wire(self, logical: str, data: dict) -> dict:
        owner = self.owner(logical)
        return {(owner if k == "owner" else k): v for k, v in data.items()}

    def from_wire(self, logical: str, data: dict) -> dict:
        owner = self.owner(logical)
        return {("owner" if k == owner else k): v for k, v in data.items()}


DEMO = Schema()
SERVICE = Schema(lists="soak_lists", todos="soak_todos", list_owner="owner_id", todo_owner="owner_id")


@dataclass
class Entry:
    """One CRUD entry in logical terms. `data` is None for DELETE; `previous` the row the client
    saw before a PATCH or DELETE (SDK `trackPrevious`), None when not tracked."""
    op: str
    table: str  # logical
    id: str
    data: dict | None = None
    previous: dict | None = None

    def wire(self, schema: Schema) -> dict:
        e = {"op": self.op, "table": schema.table(self.table), "id": self.id}
        if self.data is not None:
            e["data"] = schema.to_wire(self.table, self.data)
        if self.previous is not None:
            e["previous_values"] = schema.to_wire(self.table, self.previous)
        return e


class Refused(Exception):
    def __init__(self, code: str, why: str):
        super().__init__(f"{code}: {why}")
        self.code = code
        self.why = why


class Conflict(Exception):
    """A compared PATCH or DELETE whose row changed since the client saw it."""

    def __init__(self, why: str):
        super().__init__(f"conflict: {why}")
        self.why = why


def compared_columns(entry: Entry, service: bool) -> list[str]:
    """The columns a PATCH or DELETE with previous values is compared on (module docs)."""
    if entry.previous is None or entry.op not in ("PATCH", "DELETE"):
        return []
    columns = [c for c in entry.previous if c != "id" and not (service and c == "owner")]
    if entry.op == "PATCH":
        data = dict(entry.data or {})
        data.pop("id", None)
        if service:
            data.pop("owner", None)
        columns = [c for c in columns if c in data]
    return columns


def compares(entries: list[Entry], i: int) -> bool:
    """Whether entry `i` of a transaction is compared at all: not when an earlier entry of the
    transaction PUT its row (the worker's rule, docs/conflicts.md)."""
    e = entries[i]
    return not any(p.op == "PUT" and (p.table, p.id) == (e.table, e.id) for p in entries[:i])


class State:
    """Rows by logical table and id."""

    def __init__(self, tables: dict[str, dict[str, dict]] | None = None):
        self.tables = tables or {t: {} for t in TABLES}

    def copy(self) -> "State":
        return State(copy.deepcopy(self.tables))

    def apply(self, entry: Entry, user: str, service: bool, detect: bool = False) -> None:
        """Applies `entry` as `user`; raises Refused (and changes nothing) when the database or
        the bridge would refuse it, Conflict when `detect` (UPLOAD_CONFLICT_DETECTION) and the row
        changed since the client saw it."""
        rows = self.tables[entry.table]
        current = rows.get(entry.id)
        compared = compared_columns(entry, service) if detect else []
        if compared and current is not None and current["owner"] == user:
            previous = entry.previous or {}
            changed = [c for c in compared if current.get(c) != previous[c]]
            if changed:
                data = dict(entry.data or {})
                data.pop("id", None)
                if service:
                    data.pop("owner", None)
                if entry.op == "PATCH" and data and all(current.get(c) == v for c, v in data.items()):
                    return  # already holds this PATCH's values: applied, nothing changes
                raise Conflict(f"{entry.op} {entry.table}/{entry.id}: {changed} changed")
        if entry.op == "PUT":
            data = dict(entry.data or {})
            data.pop("id", None)
            if service:
                data["owner"] = user
                if current is not None and current["owner"] != user:
                    raise Refused("42501", "ownership check: another user's row")
            elif current is not None and current["owner"] != user:
                raise Refused("42501", "RLS: upsert onto another user's row")
            new = dict(current) if current is not None else dict(DEFAULTS[entry.table])
            new.update(data)
            if not service and new.get("owner") != user:
                raise Refused("42501", "RLS: new row owned by someone else")
            self._check(entry.table, new)
            rows[entry.id] = new
        elif entry.op == "PATCH":
            data = dict(entry.data or {})
            data.pop("id", None)
            if service:
                data.pop("owner", None)
            if not data or current is None or current["owner"] != user:
                return
            new = {**current, **data}
            if not service and new["owner"] != user:
                raise Refused("42501", "RLS: update gives the row to someone else")
            self._check(entry.table, new)
            rows[entry.id] = new
        elif entry.op == "DELETE":
            if current is None or current["owner"] != user:
                return
            del rows[entry.id]
            if entry.table == "lists":
                todos = self.tables["todos"]
                for tid in [t for t, row in todos.items() if row["list_id"] == entry.id]:
                    del todos[tid]
        else:
            raise ValueError(entry.op)

    def _check(self, table: str, row: dict) -> None:
        if table == "notes":
            if row.get("body") is None:
                raise Refused("23502", "soak_notes.body is null")
            return
        if table == "lists":
            if row.get("name") is None:
                raise Refused("23502", "lists.name is null")
            return
        if row.get("description") is None:
            raise Refused("23502", "todos.description is null")
        p = row.get("priority")
        if p is not None and not 0 <= p <= 5:
            raise Refused("23514", f"priority {p}")
        if row.get("list_id") not in self.tables["lists"]:
            raise Refused("23503", f"list {row.get('list_id')} does not exist")
