"""Helpers for the upload bridge's end-to-end tests (tests/e2e/test_upload.py).

CRUD entry builders in the client's wire vocabulary and the upload call; rows in the database
are read and written with tests/support/db.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import requests


UPLOAD_PATH = "/powersync-upload"


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


def waits_for_the_operator(response: requests.Response, code: str, says: str = "") -> None:
    """The first transaction refused with `code`, its message saying `says`, and kept (not
    discarded: the client would drop a fatal one) with the Retry-After of the operator's fix
    (at least 60 s: a migration, a GRANT, a trigger's)."""
    failed = failure(response, 0)
    assert failed["code"] == code and says in failed["message"], failed
    assert statuses(response) == ["retryable_error"], (statuses(response), failed)
    assert int(response.headers["retry-after"]) >= 60, response.headers


def a_list(sub: str, list_id: str, name: str = "n") -> dict:
    """A PUT of a demo `lists` row owned by `sub`."""
    return put("lists", list_id, name=name, owner_id=sub)


# --------------------------------------------------------------------------- waiting
def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1):
    """Polls `predicate()` until it returns something truthy (returned) or the timeout."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() > deadline:
            return value
        time.sleep(interval)


def wait_until_standin_idle(standin, timeout: float = 10.0) -> bool:
    """Waits until every request the stand-in received has been answered (or dropped), so a
    delayed write cannot land in the next test; fails the test when one is still open."""
    idle = wait_for(lambda: all(e.get("status") is not None for e in standin.requests_log()), timeout=timeout)
    open_requests = [e for e in standin.requests_log() if e.get("status") is None]
    assert idle, f"the stand-in still holds {len(open_requests)} request(s) after {timeout} s: {open_requests[:3]}"
    return idle


def upload_log_lines(worker) -> list[dict]:
    return [line for line in worker.log_lines() if line.get("route") == "upload"]
