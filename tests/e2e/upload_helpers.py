"""Helpers for the upload bridge's end-to-end tests (tests/e2e/test_upload.py).

CRUD entry builders in the client's wire vocabulary, the upload call, and small
database readers working on the ``db`` fixture's autocommit connection.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests

UPLOAD_PATH = "/powersync-upload"


def new_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- CRUD entries
def put(table: str, id_: str, data: dict | None = None, **kw) -> dict:
    """A PUT entry in the reference write API's vocabulary (`op_data`)."""
    return {"op": "PUT", "table": table, "id": id_, "op_data": dict(data or {}, **kw)}


def patch(table: str, id_: str, data: dict | None = None, **kw) -> dict:
    return {"op": "PATCH", "table": table, "id": id_, "op_data": dict(data or {}, **kw)}


def delete(table: str, id_: str) -> dict:
    return {"op": "DELETE", "table": table, "id": id_}


def tx(*entries: dict, tid: Any = None) -> dict:
    """A transaction of the `{"transactions":[…]}` shape."""
    t: dict = {"crud": list(entries)}
    if tid is not None:
        t["transaction_id"] = tid
    return t


def body(*transactions: dict) -> dict:
    return {"transactions": list(transactions)}


# --------------------------------------------------------------------------- the upload call
def upload(worker, token: str | None, payload: Any = None, *, raw: bytes | str | None = None,
           headers: dict | None = None, timeout: float = 60) -> requests.Response:
    """POST /powersync-upload with `Authorization: Bearer <token>` (no header when None)."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if raw is not None:
        return worker.post(UPLOAD_PATH, data=raw, headers=headers, timeout=timeout)
    return worker.post(UPLOAD_PATH, data=json.dumps(payload), headers=headers, timeout=timeout)


def statuses(response: requests.Response) -> list[str]:
    return [r["status"] for r in response.json()["results"]]


def failure(response: requests.Response, n: int) -> dict:
    """The `failed_operation` of the n-th transaction's result."""
    result = response.json()["results"][n]
    assert "failed_operation" in result, result
    return result["failed_operation"]


# --------------------------------------------------------------------------- database
def insert_list(db, owner: str, name: str = "list", list_id: str | None = None) -> str:
    list_id = list_id or new_id()
    db.execute("insert into lists (id, name, owner_id) values (%s, %s, %s)", (list_id, name, owner))
    return list_id


def insert_todo(db, owner: str, list_id: str, description: str = "todo", **cols) -> str:
    todo_id = cols.pop("id", None) or new_id()
    data = {"id": todo_id, "description": description, "list_id": list_id, "created_by": owner,
            **cols}
    names = ", ".join(data)
    marks = ", ".join(["%s"] * len(data))
    values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in data.values()]
    db.execute(f"insert into todos ({names}) values ({marks})", values)
    return todo_id


def insert_profile(db, id_: str, user_id: str, handle: str | None = None, **cols) -> str:
    data = {"id": id_, "user_id": user_id, "handle": handle, **cols}
    names = ", ".join(data)
    marks = ", ".join(["%s"] * len(data))
    values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in data.values()]
    db.execute(f"insert into profiles ({names}) values ({marks})", values)
    return id_


def row(db, table: str, id_: str) -> dict | None:
    """The row as JSON (jsonb/boolean/uuid columns in their JSON form), or None."""
    r = db.execute(f"select to_jsonb(t) from {table} t where id = %s", (id_,)).fetchone()
    return r[0] if r else None


def rows(db, table: str) -> dict[str, dict]:
    """Every row of a table, by id (created_at left out so states compare)."""
    out = {}
    for (value,) in db.execute(f"select to_jsonb(t) - 'created_at' from {table} t"):
        out[value["id"]] = value
    return out


def count(db, table: str) -> int:
    return db.execute(f"select count(*) from {table}").fetchone()[0]


def snapshot(db) -> dict:
    return {t: rows(db, t) for t in ("lists", "todos", "profiles")}


# --------------------------------------------------------------------------- waiting
def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1):
    """Polls `predicate()` until it returns something truthy (returned) or the timeout."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(interval)


def wait_until_standin_idle(standin, timeout: float = 10.0):
    """Waits until every request the stand-in received has been answered (or dropped), so a
    delayed write cannot land in the next test."""
    return wait_for(lambda: all(e.get("status") is not None for e in standin.requests_log()),
                    timeout=timeout)


def upload_log_lines(worker) -> list[dict]:
    return [line for line in worker.log_lines() if line.get("route") == "upload"]
