"""Rows in the test schema (tests/sql/test_schema.sql), written and read directly as the
superuser through the ``db`` fixture's autocommit connection: the ground truth the end-to-end
tests compare the stand-in's and the worker's behaviour against."""

from __future__ import annotations

import json
import uuid
from contextlib import contextmanager

import psycopg


def new_id() -> str:
    return str(uuid.uuid4())


def insert(db, table: str, data: dict) -> None:
    """INSERT one row; dict and list values are stored as JSON."""
    names = ", ".join(data)
    marks = ", ".join(["%s"] * len(data))
    values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in data.values()]
    db.execute(f"insert into {table} ({names}) values ({marks})", values)


def insert_list(db, owner: str, name: str = "list", list_id: str | None = None) -> str:
    list_id = list_id or new_id()
    insert(db, "lists", {"id": list_id, "name": name, "owner_id": owner})
    return list_id


def insert_todo(db, owner: str, list_id: str, description: str = "todo", **cols) -> str:
    todo_id = cols.pop("id", None) or new_id()
    insert(db, "todos", {"id": todo_id, "description": description, "list_id": list_id,
                         "created_by": owner, **cols})
    return todo_id


def insert_profile(db, id_: str, user_id: str, handle: str | None = None, **cols) -> str:
    insert(db, "profiles", {"id": id_, "user_id": user_id, "handle": handle, **cols})
    return id_


def row(db, table: str, id_: str) -> dict | None:
    """The row as JSON (jsonb/boolean/uuid columns in their JSON form), or None."""
    r = db.execute(f"select to_jsonb(t) from {table} t where id = %s", (id_,)).fetchone()
    return r[0] if r else None


def rows(db, table: str) -> dict[str, dict]:
    """Every row of a table, by id (created_at left out so states compare)."""
    return {value["id"]: value for (value,) in db.execute(f"select to_jsonb(t) - 'created_at' from {table} t")}


def count(db, table: str) -> int:
    return db.execute(f"select count(*) from {table}").fetchone()[0]


def snapshot(db) -> dict:
    return {t: rows(db, t) for t in ("lists", "todos", "profiles")}


@contextmanager
def api_session(pg, sub: str, entries_digest: str | None = None, role: str = "authenticated"):
    """A PostgreSQL session as PostgREST opens one for a request (one transaction): `role`, the
    JWT claims naming `sub`, and the X-PowerSync-Entries-Digest header when given."""
    with psycopg.connect(pg.dsn) as conn:
        conn.execute(f"set local role {role}")
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps({"sub": sub, "role": role}),))
        if entries_digest is not None:
            conn.execute("select set_config('request.headers', %s, true)",
                         (json.dumps({"x-powersync-entries-digest": entries_digest}),))
        yield conn
