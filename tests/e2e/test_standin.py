"""The PostgREST stand-in against a real PostgreSQL: PostgREST's documented
behaviour for the requests the upload bridge makes, Supabase's auth rules,
the SQL files shipped in sql/, and the stand-in's own test-control API."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import jwt
import psycopg
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.postgrest_standin.standin import (StandIn, parse_in_list, parse_prefer,
                                             pg_error_status)
from tests.support.db import count, insert_list, insert_todo, new_id, row
from tests.support.upstream import ScriptedUpstream

from tests.e2e.conftest import (ANON_KEY, JWT_SECRET, PUBLISHABLE_KEY, ROOT, SECRET_KEY, SERVICE_KEY,
                       SQL_FILES, RestClient, eq, make_token)


# --------------------------------------------------------------------------- helpers
def assert_error(resp, status: int, code: str):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code, body
    assert set(body) == {"code", "message", "details", "hint"}
    return body


def todo_payload(owner, list_id, **cols):
    return {"id": new_id(), "description": "d", "list_id": list_id, "created_by": owner, **cols}


# --------------------------------------------------------------------------- parsing units
def test_in_list_parser_follows_postgrest_quoting_rules():
    assert parse_in_list("(a,b,c)", "in") == ["a", "b", "c"]
    assert parse_in_list('("a,b","x)y",plain)', "in") == ["a,b", "x)y", "plain"]
    assert parse_in_list(r'("say \"hi\"","back\\slash")', "in") == ['say "hi"', "back\\slash"]
    assert parse_in_list("()", "in") == []


def test_prefer_parsing_first_occurrence_wins():
    prefs = parse_prefer(["return=minimal, resolution=merge-duplicates",
                          "return=representation,missing=default"])
    assert prefs == {"return": "minimal", "resolution": "merge-duplicates", "missing": "default"}


# --------------------------------------------------------------------------- inserts / upserts
def test_upsert_answers_201_when_it_inserts_a_row_and_200_when_it_inserts_none(
        db, as_user, user_a, postgrest_version):
    # PostgREST 12.0.0 (#1070), same in 13: "POST with Prefer: resolution=merge-duplicates
    # returns 200 instead of 201 when no rows are inserted" (test/spec/Feature/Query/UpsertSpec.hs)
    api = as_user(user_a)
    merge = "resolution=merge-duplicates,return=minimal"
    old, new = {"id": new_id(), "name": "a", "owner_id": user_a}, \
        {"id": new_id(), "name": "b", "owner_id": user_a}
    assert api.post("lists", [old], prefer=merge).status_code == 201
    assert api.post("lists", [old], prefer=merge).status_code == 200, "updated only"
    assert api.post("lists", [old, new], prefer=merge).status_code == 201, "one row new"
    assert api.post("lists", [], prefer=merge).status_code == 200, "nothing at all"
    assert api.post("lists", [{**old, "name": "c"}], query="on_conflict=id",
                    prefer="resolution=merge-duplicates,return=representation").status_code == 200
    assert row(db, "lists", old["id"])["name"] == "c"
    # ignore-duplicates and plain inserts answer 201 even when nothing is written
    assert api.post("lists", [old], prefer="resolution=ignore-duplicates").status_code == 201
    assert api.post("lists", []).status_code == 201


def test_request_past_its_test_deadline_is_rolled_back_as_a_statement_timeout(db, as_user, user_a):
    # X-Standin-Deadline (the fault soak's hook, not PostgREST's): nothing commits after it
    api = as_user(user_a)
    late, due = {"id": new_id(), "name": "late", "owner_id": user_a}, {"id": new_id(), "name": "due", "owner_id": user_a}
    past = api.post("lists", [late], headers={"X-Standin-Deadline": repr(time.monotonic() - 0.001)})
    assert_error(past, 500, "57014")
    assert row(db, "lists", late["id"]) is None
    ahead = api.post("lists", [due], headers={"X-Standin-Deadline": repr(time.monotonic() + 30)})
    assert ahead.status_code == 201, ahead.text
    assert row(db, "lists", due["id"])["name"] == "due"


def test_57p01_admin_shutdown_is_503_and_the_rest_of_57_is_500():
    # PostgREST 12.2 and 13 Error.hs: "57P01" -> 503 before '5':'7':_ -> 500
    assert pg_error_status("57P01", "authenticated") == 503
    assert pg_error_status("57014", "authenticated") == 500
    assert pg_error_status("57P03", "authenticated") == 500


def test_version_and_connection_mode_switch_through_the_control_api_until_reset(db, standin):
    base = standin.url + "/_standin/config"
    assert requests.get(base).json() == {"postgrest_version": 12, "close_connections": None}
    resp = requests.post(base, json={"postgrest_version": 13, "close_connections": True})
    assert resp.json() == {"postgrest_version": 13, "close_connections": "http1.0"}
    resp = requests.post(base, json={"close_connections": "keep-alive-timeout"})
    assert resp.json() == {"postgrest_version": 13, "close_connections": "keep-alive-timeout"}
    assert requests.post(base, json={"close_connections": "sometimes"}).status_code == 400
    assert requests.post(base, json={"postgrest_version": 11}).status_code == 400
    assert requests.post(base, json={"other": 1}).status_code == 400
    standin.reset()
    assert standin.config() == {"postgrest_version": 12, "close_connections": None}
    with pytest.raises(ValueError):
        StandIn("postgresql://unused", JWT_SECRET, postgrest_version=14)


@pytest.mark.parametrize("mode,status_line", [("http1.0", b"HTTP/1.0 200 "),
                                               ("keep-alive-timeout", b"HTTP/1.1 200 ")])
def test_close_connections_modes_close_every_connection_after_its_answer(db, standin, user_a,
                                                                        mode, status_line):
    standin.configure(close_connections=mode)
    headers = {"apikey": PUBLISHABLE_KEY, "Authorization": f"Bearer {make_token(user_a)}"}
    # a keep-alive HTTP/1.1 request on a raw socket: the answer ends with the server closing
    with socket.create_connection(("127.0.0.1", standin.port), timeout=10) as sock:
        sock.sendall(("GET /rest/v1/lists?select=id HTTP/1.1\r\nHost: x\r\n"
                      + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                      + "Connection: keep-alive\r\n\r\n").encode())
        received = b""
        while chunk := sock.recv(65536):  # a timeout here means the connection stayed open
            received += chunk
    head, _, payload = received.partition(b"\r\n\r\n")
    assert head.startswith(status_line), head
    assert b"connection:" not in head.lower(), "the close is not announced"
    assert payload == b"[]", received
    standin.reset()
    conn = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=10)
    conn.request("GET", "/_standin/health")
    resp = conn.getresponse()
    assert (resp.version, resp.will_close) == (11, False), "keep-alive again after reset"
    resp.read()
    conn.close()

def test_bulk_upsert_inserts_then_merges_idempotently(db, as_user, user_a):
    api = as_user(user_a)
    list_id = insert_list(db, user_a)
    rows = [todo_payload(user_a, list_id, description=f"t{i}", priority=i) for i in range(3)]
    prefer = "resolution=merge-duplicates,return=minimal"

    first = api.post("todos", rows, prefer=prefer)
    assert first.status_code == 201, first.text
    assert first.content == b""
    again = api.post("todos", rows, prefer=prefer)  # re-send after e.g. a lost response
    assert again.status_code == 200, again.text  # nothing inserted: 200 since PostgREST 12
    assert count(db, "todos") == 3

    rows[1]["description"] = "changed"
    assert api.post("todos", rows, prefer=prefer).status_code == 200
    assert count(db, "todos") == 3
    assert row(db, "todos", rows[1]["id"])["description"] == "changed"
    assert row(db, "todos", rows[0]["id"])["description"] == "t0"


def test_merge_duplicates_updates_only_the_posted_columns(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    todo_id = insert_todo(db, user_a, list_id, description="old", priority=3, tags=["x"],
                          completed=True)
    resp = as_user(user_a).post(
        "todos", {"id": todo_id, "description": "new", "list_id": list_id, "created_by": user_a},
        prefer="resolution=merge-duplicates")
    assert resp.status_code == 200, resp.text  # an update only
    r = row(db, "todos", todo_id)
    assert r["description"] == "new"
    assert (r["priority"], r["tags"], r["completed"]) == (3, ["x"], True)


def test_ignore_duplicates_keeps_the_existing_row(db, as_user, user_a):
    list_id = insert_list(db, user_a, name="original")
    resp = as_user(user_a).post("lists", [{"id": list_id, "name": "other", "owner_id": user_a},
                                          {"id": new_id(), "name": "fresh", "owner_id": user_a}],
                                prefer="resolution=ignore-duplicates")
    assert resp.status_code == 201, resp.text
    assert row(db, "lists", list_id)["name"] == "original"
    assert count(db, "lists") == 2


def test_on_conflict_parameter_picks_the_conflict_target(db, as_user, user_a):
    db.execute("insert into profiles (id, user_id, handle, active) values ('p1', %s, 'h', true)",
               (user_a,))
    resp = as_user(user_a).post("profiles", {"id": "p1", "user_id": user_a, "handle": "h",
                                             "active": False},
                                query="on_conflict=handle", prefer="resolution=merge-duplicates")
    assert resp.status_code == 200, resp.text  # an update only
    assert row(db, "profiles", "p1")["active"] is False


def test_bulk_insert_with_differing_keys_is_rejected_pgrst102(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    rows = [todo_payload(user_a, list_id), todo_payload(user_a, list_id, priority=1)]
    body = assert_error(as_user(user_a).post("todos", rows), 400, "PGRST102")
    assert body["message"] == "All object keys must match"
    assert count(db, "todos") == 0


def test_columns_param_lifts_the_key_check_and_missing_keys_become_null(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    rows = [todo_payload(user_a, list_id, priority=2), todo_payload(user_a, list_id)]
    resp = as_user(user_a).post("todos", rows,
                                query="columns=id,description,list_id,created_by,priority")
    assert resp.status_code == 201, resp.text
    assert row(db, "todos", rows[0]["id"])["priority"] == 2
    assert row(db, "todos", rows[1]["id"])["priority"] is None


def test_missing_keys_override_defaults_with_null_unless_missing_default(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    rows = [todo_payload(user_a, list_id, completed=True), todo_payload(user_a, list_id)]
    query = "columns=id,description,list_id,created_by,completed"
    # without missing=default the absent "completed" is NULL -> not-null violation
    assert_error(as_user(user_a).post("todos", rows, query=query), 400, "23502")
    resp = as_user(user_a).post("todos", rows, query=query, prefer="missing=default")
    assert resp.status_code == 201, resp.text
    assert "missing=default" in resp.headers["Preference-Applied"]
    assert row(db, "todos", rows[0]["id"])["completed"] is True
    assert row(db, "todos", rows[1]["id"])["completed"] is False
    assert row(db, "todos", rows[1]["id"])["created_at"] is not None


def test_columns_param_ignores_keys_outside_the_list(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    payload = todo_payload(user_a, list_id, priority="not-a-number")
    resp = as_user(user_a).post("todos", payload, query="columns=id,description,list_id,created_by")
    assert resp.status_code == 201, resp.text
    assert row(db, "todos", payload["id"])["priority"] is None


def test_json_values_are_typed_by_the_table(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    payload = todo_payload(user_a, list_id, tags={"labels": ["a", "b"], "n": 1.25},
                           priority="4", completed="true",
                           completed_at="2024-05-01T10:00:00.123456Z")
    resp = as_user(user_a).post("todos", payload, prefer="return=representation")
    assert resp.status_code == 201, resp.text
    [returned] = resp.json()
    assert returned["tags"] == {"labels": ["a", "b"], "n": 1.25}
    assert returned["priority"] == 4 and returned["completed"] is True
    r = row(db, "todos", payload["id"])
    assert r["tags"] == {"labels": ["a", "b"], "n": 1.25}
    assert r["completed_at"].startswith("2024-05-01T10:00:00.123456")


def test_return_minimal_is_default_and_representation_returns_rows(db, as_user, user_a):
    api = as_user(user_a)
    a = api.post("lists", {"id": new_id(), "name": "a", "owner_id": user_a})
    assert a.status_code == 201 and a.content == b""
    b = api.post("lists", [{"id": new_id(), "name": "b", "owner_id": user_a}],
                 prefer="return=representation")
    assert b.status_code == 201
    assert b.headers["Content-Type"].startswith("application/json")
    assert [r["name"] for r in b.json()] == ["b"]
    assert b.json()[0]["created_at"]


def test_repeated_preference_first_occurrence_wins(db, standin, user_a):
    headers = {"apikey": PUBLISHABLE_KEY, "Authorization": f"Bearer {make_token(user_a)}",
               "Content-Type": "application/json"}
    # two Prefer headers (requests cannot repeat a header: use http.client)
    conn = http.client.HTTPConnection("127.0.0.1", standin.port, timeout=10)
    conn.putrequest("POST", "/rest/v1/lists")
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.putheader("Prefer", "return=minimal")
    conn.putheader("Prefer", "return=representation")
    body = json.dumps({"id": new_id(), "name": "x", "owner_id": user_a}).encode()
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    r = conn.getresponse()
    assert (r.status, r.read()) == (201, b"")
    assert r.getheader("Preference-Applied") == "return=minimal"
    conn.close()
    # one header with the key twice
    one = RestClient(standin.url, PUBLISHABLE_KEY, make_token(user_a)).post(
        "lists", {"id": new_id(), "name": "y", "owner_id": user_a},
        prefer="return=representation, return=minimal")
    assert one.status_code == 201 and len(one.json()) == 1


def test_empty_array_inserts_nothing(db, as_user, user_a):
    resp = as_user(user_a).post("lists", [], prefer="return=representation")
    assert resp.status_code == 201 and resp.json() == []


# --------------------------------------------------------------------------- PATCH / DELETE filters
ODD_IDS = ["a,b", "x)y", "(paren", "p&q", 'quote"d', "ünï©ødé ✓ 🚀", "dot.and:colon",
           "back\\slash", "percent%25", "plus+sign", "space here", "eq.looks-like-op",
           "in.(a,b)", "semi;colon", "hash#frag", "slash/and?query=1"]
DECOY_IDS = ["a", "b", "x", "y", "p", "q", "quote", "plus sign", "percent%"]


@pytest.fixture
def profiles(db, user_a):
    for pid in ODD_IDS + DECOY_IDS:
        db.execute("insert into profiles (id, user_id, active) values (%s, %s, false)",
                   (pid, user_a))
    return user_a


@pytest.mark.parametrize("target", ODD_IDS)
def test_patch_eq_filter_with_odd_characters_touches_exactly_that_row(db, as_user, profiles,
                                                                      target):
    resp = as_user(profiles).patch("profiles", f"id={eq(target)}", {"active": True})
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    active = [r[0] for r in db.execute("select id from profiles where active").fetchall()]
    assert active == [target]


@pytest.mark.parametrize("target", ["a,b", 'quote"d', "ünï©ødé ✓ 🚀", "p&q"])
def test_delete_eq_filter_with_odd_characters_deletes_exactly_that_row(db, as_user, profiles,
                                                                       target):
    resp = as_user(profiles).delete("profiles", f"id={eq(target)}")
    assert resp.status_code == 204, resp.text
    assert row(db, "profiles", target) is None
    assert count(db, "profiles") == len(ODD_IDS) + len(DECOY_IDS) - 1


def test_in_filter_with_quoted_values(db, as_user, profiles):
    targets = ["a,b", "x)y", 'quote"d', "back\\slash", "dot.and:colon", "plus+sign"]

    def q(v):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    in_list = "in.(" + ",".join(q(t) for t in targets) + ")"
    resp = as_user(profiles).delete("profiles", "id=" + quote(in_list, safe=""))
    assert resp.status_code == 204, resp.text
    left = {r[0] for r in db.execute("select id from profiles").fetchall()}
    assert left == (set(ODD_IDS) | set(DECOY_IDS)) - set(targets)


def test_in_filter_with_plain_values_and_empty_list(db, as_user, profiles):
    api = as_user(profiles)
    assert api.patch("profiles", "id=" + quote("in.(a,b,x)", safe=""), {"handle": None}
                     ).status_code == 204
    assert api.delete("profiles", "id=in.()").status_code == 204
    assert count(db, "profiles") == len(ODD_IDS) + len(DECOY_IDS)
    assert api.delete("profiles", "id=in.(a,b)").status_code == 204
    assert row(db, "profiles", "a") is None and row(db, "profiles", "a,b") is not None


def test_multiple_filters_are_anded_and_neq_is_null_work(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    t1 = insert_todo(db, user_a, list_id, priority=1)
    t2 = insert_todo(db, user_a, list_id, priority=2)
    t3 = insert_todo(db, user_a, list_id)
    api = as_user(user_a)
    assert api.patch("todos", f"list_id=eq.{list_id}&priority=neq.1", {"description": "neq"}
                     ).status_code == 204
    assert row(db, "todos", t1)["description"] == "todo"
    assert row(db, "todos", t2)["description"] == "neq"
    assert row(db, "todos", t3)["description"] == "todo"  # NULL <> 1 is not true
    assert api.patch("todos", "priority=is.null", {"description": "null"}).status_code == 204
    assert row(db, "todos", t3)["description"] == "null"
    assert api.delete("todos", f"id=eq.{t1}&priority=eq.2").status_code == 204
    assert row(db, "todos", t1) is not None


def test_ownership_check_with_in_and_isdistinct(db, as_service, user_a, user_b):
    mine, theirs, nobody = insert_list(db, user_a), insert_list(db, user_b), new_id()
    ids = ",".join(f'"{i}"' for i in (mine, theirs, nobody))
    resp = as_service.get("lists", f"select=id&id=in.({quote(ids, safe='')})"
                                   f"&owner_id=isdistinct.{quote(user_a, safe='')}")
    assert resp.status_code == 200, resp.text
    assert resp.json() == [{"id": theirs}]
    # NULL is distinct from a value
    list_id = insert_list(db, user_a)
    t_null = insert_todo(db, user_a, list_id, completed_by=None)
    db.execute("update todos set created_by = null where id = %s", (t_null,))
    resp = as_service.get("todos", f"select=id&created_by=isdistinct.{user_a}")
    assert resp.json() == [{"id": t_null}]


def test_patch_and_delete_match_nothing_still_answer_204(db, as_user, user_a):
    api = as_user(user_a)
    assert api.patch("lists", f"id=eq.{new_id()}", {"name": "x"}).status_code == 204
    assert api.delete("lists", f"id=eq.{new_id()}").status_code == 204


def test_patch_and_delete_without_filters_affect_every_visible_row(db, as_user, as_service,
                                                                   user_a, user_b):
    mine = [insert_list(db, user_a), insert_list(db, user_a)]
    theirs = insert_list(db, user_b)
    assert as_user(user_a).patch("lists", "", {"name": "all"}).status_code == 204
    assert {row(db, "lists", i)["name"] for i in mine} == {"all"}
    assert row(db, "lists", theirs)["name"] == "list"  # RLS still applies
    assert as_service.delete("lists", "").status_code == 204
    assert count(db, "lists") == 0


def test_writes_carry_postgrests_content_range_with_the_row_count_only_when_asked(
        db, as_user, user_a, user_b, postgrest_version):
    # PostgREST 12 and 13 (src/PostgREST/Response.hs): POST and DELETE `*/<n>`, PATCH
    # `0-<n-1>/<n>` (`*/0` for none); without `Prefer: count=exact` the total is `*`.
    api = as_user(user_a)
    a, b = new_id(), new_id()
    rows = [{"id": a, "name": "a", "owner_id": user_a}, {"id": b, "name": "b", "owner_id": user_a}]
    upsert = "resolution=merge-duplicates,return=minimal"
    counted, minimal = "return=minimal,count=exact", "return=minimal"
    r = api.post("lists", rows, query="on_conflict=id", prefer=upsert + ",count=exact")
    assert (r.status_code, r.headers["Content-Range"]) == (201, "*/2")
    assert r.headers["Preference-Applied"] == "resolution=merge-duplicates, return=minimal, count=exact"
    r = api.post("lists", rows, query="on_conflict=id", prefer=upsert)
    assert (r.status_code, r.headers["Content-Range"]) == (200, "*/*")
    assert "count" not in r.headers["Preference-Applied"]
    r = api.post("lists", [], prefer=counted)
    assert r.headers["Content-Range"] == "*/0"
    r = api.post("lists", [{"id": new_id(), "name": "c", "owner_id": user_a}],
                 prefer="return=representation,count=exact")
    assert (r.status_code, r.headers["Content-Range"], len(r.json())) == (201, "*/1", 1)

    theirs = insert_list(db, user_b)  # hidden by RLS: counted like a row that does not exist
    r = api.patch("lists", f"id=in.({a},{b},{theirs})", {"name": "x"}, prefer=counted)
    assert (r.status_code, r.headers["Content-Range"]) == (204, "0-1/2")
    r = api.patch("lists", f"id=eq.{a}", {"name": "y"}, prefer=minimal)
    assert r.headers["Content-Range"] == "0-0/*"
    for query in (f"id=eq.{theirs}", f"id=eq.{new_id()}"):
        r = api.patch("lists", query, {"name": "x"}, prefer=counted)
        assert (r.status_code, r.headers["Content-Range"]) == (204, "*/0"), query
        assert api.patch("lists", query, {"name": "x"}, prefer=minimal).headers["Content-Range"] == "*/*"
    r = api.patch("lists", f"id=eq.{a}", {"name": "z"}, prefer="return=representation,count=exact")
    assert (r.status_code, r.headers["Content-Range"]) == (200, "0-0/1")

    r = api.delete("lists", f"id=in.({a},{new_id()},{theirs})", prefer=counted)
    assert (r.status_code, r.headers["Content-Range"]) == (204, "*/1")
    assert r.headers["Preference-Applied"] == "return=minimal, count=exact"
    assert api.delete("lists", f"id=eq.{b}", prefer=minimal).headers["Content-Range"] == "*/*"
    assert api.delete("lists", f"id=eq.{b}", prefer=counted).headers["Content-Range"] == "*/0"
    assert row(db, "lists", theirs) is not None


def test_patch_representation_returns_updated_rows(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    resp = as_user(user_a).patch("lists", f"id=eq.{list_id}", {"name": "renamed"},
                                 prefer="return=representation")
    assert resp.status_code == 200
    assert [r["name"] for r in resp.json()] == ["renamed"]


def test_patch_with_bad_uuid_filter_is_22p02(db, as_user, user_a):
    assert_error(as_user(user_a).patch("lists", "id=eq.not-a-uuid", {"name": "x"}), 400, "22P02")


def test_filter_on_unknown_column_is_42703(db, as_user, user_a):
    body = assert_error(as_user(user_a).delete("lists", "nope=eq.1"), 400, "42703")
    assert body["message"] == "column lists.nope does not exist"


def test_unparsable_filter_is_pgrst100(db, as_user, user_a):
    assert_error(as_user(user_a).delete("lists", "name=equals.1"), 400, "PGRST100")
    assert_error(as_user(user_a).delete("lists", "name=in.(a"), 400, "PGRST100")


def test_get_with_select_filters_and_order(db, as_user, user_a, user_b):
    insert_list(db, user_a, name="b")
    insert_list(db, user_a, name="a")
    insert_list(db, user_b, name="hidden")
    resp = as_user(user_a).get("lists", "select=name&order=name.asc")
    assert resp.status_code == 200
    assert resp.json() == [{"name": "a"}, {"name": "b"}]


# --------------------------------------------------------------------------- RLS
def test_rls_user_cannot_insert_a_row_owned_by_another_user(db, as_user, user_a, user_b):
    body = assert_error(as_user(user_a).post("lists", {"id": new_id(), "name": "x",
                                                       "owner_id": user_b}), 403, "42501")
    assert body["message"] == 'new row violates row-level security policy for table "lists"'
    assert count(db, "lists") == 0


def test_rls_user_cannot_upsert_over_another_users_row(db, as_user, user_a, user_b):
    list_id = insert_list(db, user_b, name="theirs")
    resp = as_user(user_a).post("lists", {"id": list_id, "name": "mine", "owner_id": user_a},
                                prefer="resolution=merge-duplicates")
    assert_error(resp, 403, "42501")
    assert row(db, "lists", list_id)["name"] == "theirs"


def test_rls_user_cannot_update_or_delete_another_users_rows(db, as_user, user_a, user_b):
    list_id = insert_list(db, user_b, name="theirs")
    api = as_user(user_a)
    assert api.patch("lists", f"id=eq.{list_id}", {"name": "hacked"}).status_code == 204
    assert api.delete("lists", f"id=eq.{list_id}").status_code == 204
    assert row(db, "lists", list_id)["name"] == "theirs"


def test_rls_user_cannot_move_own_row_to_another_user(db, as_user, user_a, user_b):
    list_id = insert_list(db, user_a)
    assert_error(as_user(user_a).patch("lists", f"id=eq.{list_id}", {"owner_id": user_b}),
                 403, "42501")
    assert row(db, "lists", list_id)["owner_id"] == user_a


@pytest.mark.parametrize("apikey,bearer", [(SECRET_KEY, None), (SERVICE_KEY, None),
                                           (PUBLISHABLE_KEY, SERVICE_KEY),
                                           (SECRET_KEY, SECRET_KEY)])
def test_service_role_bypasses_rls(db, client, user_a, user_b, apikey, bearer):
    api = client(bearer, apikey)
    list_id = insert_list(db, user_b, name="theirs")
    assert api.post("lists", {"id": new_id(), "name": "for b", "owner_id": user_b}
                    ).status_code == 201
    assert api.patch("lists", f"id=eq.{list_id}", {"name": "by service"}).status_code == 204
    assert row(db, "lists", list_id)["name"] == "by service"
    assert api.delete("lists", f"id=eq.{list_id}").status_code == 204
    assert row(db, "lists", list_id) is None


def test_anon_permission_denied_is_401(db, client, user_a):
    for key in (PUBLISHABLE_KEY, ANON_KEY):
        body = assert_error(client(None, key).post("lists", {"id": new_id(), "name": "x",
                                                             "owner_id": user_a}), 401, "42501")
        assert body["message"] == "permission denied for table lists"


# --------------------------------------------------------------------------- Postgres errors
def test_unique_violation_is_409(db, as_user, user_a):
    db.execute("insert into profiles (id, user_id, handle) values ('p1', %s, 'taken')", (user_a,))
    api = as_user(user_a)
    assert_error(api.post("profiles", {"id": "p2", "user_id": user_a, "handle": "taken"}),
                 409, "23505")
    assert_error(api.post("profiles", {"id": "p1", "user_id": user_a}), 409, "23505")


def test_foreign_key_violation_is_409(db, as_user, user_a):
    assert_error(as_user(user_a).post("todos", todo_payload(user_a, new_id())), 409, "23503")


def test_check_violation_is_400(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    assert_error(as_user(user_a).post("todos", todo_payload(user_a, list_id, priority=9)),
                 400, "23514")


def test_not_null_violation_is_400(db, as_user, user_a):
    assert_error(as_user(user_a).post("lists", {"id": new_id(), "owner_id": user_a}), 400, "23502")


def test_invalid_uuid_is_22p02_400(db, as_user, user_a):
    body = assert_error(as_user(user_a).post("lists", {"id": "nope", "name": "x",
                                                       "owner_id": user_a}), 400, "22P02")
    assert "uuid" in body["message"]


def test_unknown_column_is_pgrst204(db, as_user, user_a):
    body = assert_error(as_user(user_a).post("lists", {"id": new_id(), "name": "x",
                                                       "owner_id": user_a, "colour": "red"}),
                        400, "PGRST204")
    assert body["message"] == "Could not find the 'colour' column of 'lists' in the schema cache"
    assert_error(as_user(user_a).patch("lists", f"id=eq.{new_id()}", {"colour": "red"}),
                 400, "PGRST204")
    assert_error(as_user(user_a).post("lists", {"id": new_id()}, query="columns=id,colour"),
                 400, "PGRST204")


def test_unknown_table_is_a_code_less_404_on_12_and_pgrst205_on_13(db, as_user, user_a,
                                                                    postgrest_version):
    api = as_user(user_a)
    writes = [api.post("nope", {"id": 1}), api.patch("nope", "id=eq.1", {"a": 1}),
              api.delete("nope", "id=eq.1"),
              api.post("nope", [{"id": 1}], prefer="resolution=merge-duplicates")]
    if postgrest_version == 12:
        for resp in writes:  # PostgREST 12's NotFound: {} and no code (#3697, #3836)
            assert (resp.status_code, resp.json()) == (404, {}), resp.text
            assert "Proxy-Status" not in resp.headers
        body = assert_error(api.get("nope", "id=eq.1"), 404, "42P01")
        assert body["message"] == 'relation "public.nope" does not exist'
    else:
        for resp in writes + [api.get("nope", "id=eq.1")]:
            body = assert_error(resp, 404, "PGRST205")
            assert body["message"] == "Could not find the table 'public.nope' in the schema cache"


def test_path_postgrest_does_not_serve_is_a_code_less_404_on_12_and_pgrst125_on_13(db, as_user, user_a,
                                                                                   postgrest_version):
    api = as_user(user_a)
    for resp in (api.post("lists/extra", {"id": new_id()}), api.delete("a/b", "id=eq.1"),
                 api.get("rpc/x/y", "")):
        if postgrest_version == 12:
            assert (resp.status_code, resp.json()) == (404, {}), resp.text
        else:
            body = assert_error(resp, 404, "PGRST125")
            assert body["message"] == "Invalid path specified in request URL"


def test_malformed_json_is_pgrst102(db, as_user, user_a):
    api = as_user(user_a)
    for bad in (b"{not json", b"", b"[1, 2]", b'{"a": NaN}'):
        assert_error(api.request("POST", "lists", data=bad), 400, "PGRST102")
    assert_error(api.request("PATCH", "lists", f"id=eq.{new_id()}", data=b"{"), 400, "PGRST102")


def test_non_json_content_type_is_415(db, as_user, user_a):
    api = as_user(user_a)
    resp = api.request("POST", "lists", data=json.dumps({"id": new_id()}),
                       headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert_error(resp, 415, "PGRST107")


def test_error_responses_carry_proxy_status_from_13_only(db, as_user, user_a, postgrest_version):
    resp = as_user(user_a).post("lists", {"id": new_id(), "colour": "red"})
    assert resp.status_code == 400
    if postgrest_version == 13:  # added in 13.0.0 (#2967)
        assert resp.headers["Proxy-Status"] == "PostgREST; error=PGRST204"
    else:
        assert "Proxy-Status" not in resp.headers


def test_statement_errors_roll_back_the_whole_request(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    rows = [todo_payload(user_a, list_id, priority=1), todo_payload(user_a, list_id, priority=7)]
    assert_error(as_user(user_a).post("todos", rows), 400, "23514")
    assert count(db, "todos") == 0


# --------------------------------------------------------------------------- auth
def test_missing_apikey_is_401_like_the_supabase_gateway(db, client, user_a):
    resp = client(make_token(user_a), None).post("lists", {})
    assert resp.status_code == 401
    assert resp.json()["message"] == "No API key found in request"


def test_invalid_apikey_is_401(db, client, user_a):
    for key in ("not-a-key", make_token(None, role="anon", secret="x" * 40)):
        resp = client(None, key).get("lists")
        assert resp.status_code == 401
        assert resp.json()["message"] == "Invalid API key"


def test_bad_signature_is_pgrst301(db, client, user_a):
    forged = make_token(user_a, secret="another-secret-another-secret-another")
    body = assert_error(client(forged).get("lists"), 401, "PGRST301")
    assert body["message"]
    assert_error(client("garbage").get("lists"), 401, "PGRST301")
    assert_error(client("a.b.c").get("lists"), 401, "PGRST301")


def test_expired_token_is_pgrst301_on_12_and_pgrst303_on_13(db, client, user_a, postgrest_version):
    resp = client(make_token(user_a, expires_in=-60)).get("lists")
    body = assert_error(resp, 401, "PGRST303" if postgrest_version == 13 else "PGRST301")
    assert body["message"] == "JWT expired"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer error=\"invalid_token\"")


def test_a_token_within_postgrests_30_s_clock_skew_is_accepted(db, client, user_a):
    assert client(make_token(user_a, expires_in=-20)).get("lists").status_code == 200


def test_role_claim_is_switched_to_as_postgrest_does_and_without_one_the_token_runs_as_anon(
        db, client, user_a, postgrest_version):
    # PostgREST sets whatever role the claim names, as `authenticator`: PostgreSQL refuses a role
    # not granted to it (42501) and one that does not exist (22023: 400, from PostgREST 13 401)
    # (not `postgres`: Supabase Storage's migrations grant it to authenticator)
    db.execute("drop role if exists standin_not_granted; create role standin_not_granted nologin")
    try:
        refused = client(make_token(user_a, role="standin_not_granted")).get("lists")
    finally:
        db.execute("drop role standin_not_granted")
    body = assert_error(refused, 403, "42501")
    assert body["message"] == 'permission denied to set role "standin_not_granted"'
    body = assert_error(client(make_token(user_a, role="no_such_role")).get("lists"),
                        401 if postgrest_version == 13 else 400, "22023")
    assert body["message"] == 'role "no_such_role" does not exist'
    no_role = jwt.encode({"sub": user_a, "exp": int(time.time()) + 60}, JWT_SECRET)
    anon = make_token(user_a, role="anon")
    as_anon, without_role = client(anon).get("lists"), client(no_role).get("lists")
    assert (without_role.status_code, without_role.text) == (as_anon.status_code, as_anon.text)


def test_claims_reach_postgres_and_role_settings_apply(db, as_user, user_a):
    db.execute("""create or replace function public.whoami() returns jsonb language sql stable
                  as $$ select jsonb_build_object('uid', auth.uid(), 'role', current_user,
                        'timeout', current_setting('statement_timeout'),
                        'email', auth.jwt() ->> 'email',
                        'method', current_setting('request.method', true),
                        'path', current_setting('request.path', true)) $$""")
    db.execute("grant execute on function public.whoami() to authenticated")
    resp = as_user(user_a).rpc("whoami", {})
    assert resp.status_code == 200, resp.text
    # request.path as PostgREST sees it behind Supabase's gateway, which strips /rest/v1
    assert resp.json() == {"uid": user_a, "role": "authenticated", "timeout": "8s",
                           "email": f"{user_a}@example.test", "method": "POST",
                           "path": "/rpc/whoami"}


def test_service_role_keeps_the_statement_timeout_of_the_role_postgrest_connects_as(db, as_service):
    # Supabase: service_role has no timeout of its own; authenticator (PostgREST's login role)
    # has 8 s, a session default that SET ROLE keeps. anon's own 3 s overrides it.
    db.execute("""create or replace function public.my_timeout() returns text language sql stable
                  as $$ select current_setting('statement_timeout') $$""")
    db.execute("grant execute on function public.my_timeout() to anon, service_role")
    resp = as_service.rpc("my_timeout", {})
    assert (resp.status_code, resp.json()) == (200, "8s"), resp.text
    resp = RestClient(as_service.base_url, ANON_KEY).rpc("my_timeout", {})
    assert (resp.status_code, resp.json()) == (200, "3s"), resp.text


def jwks_server(jwks: dict) -> tuple[ScriptedUpstream, str]:
    """A key set served at Supabase's path: the server and the key set's URL."""
    body = json.dumps(jwks).encode()
    server = ScriptedUpstream(lambda method, path, headers, sent: (200, {"Content-Type": "application/json"}, body))
    return server, f"{server.url}/auth/v1/.well-known/jwks.json"


def test_es256_tokens_verify_through_jwks(pg, db, user_a):
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": "kid-1", "alg": "ES256", "use": "sig"})
    jwks, jwks_url = jwks_server({"keys": [jwk]})
    s = StandIn(pg.dsn, JWT_SECRET, jwks_url=jwks_url)
    try:
        s.start(0)
        good = make_token(user_a, secret=key, algorithm="ES256", headers={"kid": "kid-1"})
        unknown_kid = make_token(user_a, secret=key, algorithm="ES256", headers={"kid": "kid-2"})
        other_key = make_token(user_a, secret=ec.generate_private_key(ec.SECP256R1()),
                               algorithm="ES256", headers={"kid": "kid-1"})
        ok = RestClient(s.url, PUBLISHABLE_KEY, good).post(
            "lists", {"id": new_id(), "name": "es", "owner_id": user_a})
        assert ok.status_code == 201, ok.text
        for bad in (unknown_kid, other_key):
            assert_error(RestClient(s.url, PUBLISHABLE_KEY, bad).get("lists"), 401, "PGRST301")
        # legacy HS256 tokens still work next to the JWKS
        assert RestClient(s.url, PUBLISHABLE_KEY, make_token(user_a)).get("lists").status_code == 200
    finally:
        s.stop()
        jwks.stop()


# --------------------------------------------------------------------------- /auth/v1/user
def _auth_user(standin, token=None, apikey=PUBLISHABLE_KEY, **headers):
    h = dict(headers)
    if apikey:
        h["apikey"] = apikey
    if token:
        h["Authorization"] = f"Bearer {token}"
    return requests.get(f"{standin.url}/auth/v1/user", headers=h, timeout=10)


def test_auth_user_returns_the_user_for_a_valid_token(db, standin, user_a):
    resp = _auth_user(standin, make_token(user_a))
    assert resp.status_code == 200
    body = resp.json()
    assert (body["id"], body["aud"], body["role"]) == (user_a, "authenticated", "authenticated")
    assert body["email"] == f"{user_a}@example.test"


def test_auth_user_rejects_missing_expired_and_subless_tokens(db, standin, user_a):
    r = _auth_user(standin)
    assert r.status_code == 401 and r.json()["error_code"] == "no_authorization"
    r = _auth_user(standin, make_token(user_a, expires_in=-10))
    assert r.status_code == 403 and r.json()["error_code"] == "bad_jwt"
    assert r.json()["code"] == 403 and "expired" in r.json()["msg"]
    r = _auth_user(standin, ANON_KEY)
    assert r.status_code == 403 and r.json()["error_code"] == "bad_jwt"
    r = _auth_user(standin, make_token(user_a), apikey=None)
    assert r.status_code == 401


def test_revoked_sessions_get_session_not_found(db, standin, user_a, user_b):
    token_a, token_b = make_token(user_a), make_token(user_b)
    resp = requests.post(f"{standin.url}/_standin/revoke", json={"sub": user_a}, timeout=10)
    assert resp.status_code == 200
    r = _auth_user(standin, token_a)
    assert r.status_code == 403
    assert r.json()["error_code"] == "session_not_found"
    r = _auth_user(standin, token_a, **{"X-Supabase-Api-Version": "2024-01-01"})
    assert r.json() == {"code": "session_not_found",
                        "message": "Session from session_id claim in JWT does not exist"}
    assert _auth_user(standin, token_b).status_code == 200
    # revocation is about the Auth server: PostgREST still accepts the token until exp
    api = RestClient(standin.url, PUBLISHABLE_KEY, token_a)
    assert api.get("lists").status_code == 200
    requests.post(f"{standin.url}/_standin/reset", timeout=10)
    assert _auth_user(standin, token_a).status_code == 200


def test_revoke_by_session_id_and_user_not_found(db, standin, user_a, user_b):
    t1 = make_token(user_a, session_id="s-1")
    t2 = make_token(user_a, session_id="s-2")
    standin.revoke(session_id="s-1")
    assert _auth_user(standin, t1).json()["error_code"] == "session_not_found"
    assert _auth_user(standin, t2).status_code == 200
    requests.post(f"{standin.url}/_standin/revoke",
                  json={"sub": user_b, "error_code": "user_not_found"}, timeout=10)
    r = _auth_user(standin, make_token(user_b))
    assert (r.status_code, r.json()["error_code"]) == (403, "user_not_found")


def test_auth_requests_are_counted_separately(db, standin, user_a):
    _auth_user(standin, make_token(user_a))
    stats = requests.get(f"{standin.url}/_standin/stats", timeout=10).json()
    assert stats["auth_requests"] == 1 and stats["requests"] == 0


# --------------------------------------------------------------------------- rpc: atomic upload
def test_rpc_applies_three_ops_atomically(db, as_user, user_a):
    list_id, todo_id = new_id(), new_id()
    ops = [{"op": "PUT", "table": "lists", "id": list_id,
            "data": {"name": "groceries", "owner_id": user_a}},
           {"op": "PUT", "table": "todos", "id": todo_id,
            "data": {"description": "milk", "list_id": list_id, "created_by": user_a,
                     "tags": ["dairy"], "priority": 2}},
           {"op": "PATCH", "table": "todos", "id": todo_id,
            "data": {"completed": True, "completed_at": "2024-01-01T00:00:00Z"}}]
    resp = as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"applied": 3, "unchanged": []}
    t = row(db, "todos", todo_id)
    assert (t["description"], t["completed"], t["tags"], t["priority"]) == ("milk", True,
                                                                            ["dairy"], 2)
    assert row(db, "lists", list_id)["name"] == "groceries"


def test_rpc_rolls_back_every_op_when_one_fails(db, as_user, user_a):
    list_id = new_id()
    existing = insert_list(db, user_a, name="keep")
    ops = [{"op": "PUT", "table": "lists", "id": list_id, "data": {"name": "n", "owner_id": user_a}},
           {"op": "PATCH", "table": "lists", "id": existing, "data": {"name": "changed"}},
           {"op": "PUT", "table": "todos", "id": new_id(),
            "data": {"description": "x", "list_id": list_id, "created_by": user_a, "priority": 99}}]
    body = assert_error(as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops}),
                        400, "23514")
    assert "powersync op 2 (PUT todos/" in body["hint"]
    assert row(db, "lists", list_id) is None
    assert row(db, "lists", existing)["name"] == "keep"
    assert count(db, "todos") == 0


def test_rpc_put_merges_only_given_columns_and_delete_removes(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    todo_id = insert_todo(db, user_a, list_id, description="orig", priority=4)
    ops = [{"op": "PUT", "table": "todos", "id": todo_id,
            "data": {"description": "new", "list_id": list_id, "created_by": user_a}},
           {"op": "PATCH", "table": "lists", "id": list_id, "data": {}},
           {"op": "DELETE", "table": "lists", "id": new_id()}]
    resp = as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops})
    # the DELETE of a row that does not exist changed nothing; a PATCH without data is no write
    assert resp.json() == {"applied": 3, "unchanged": [2]}
    assert (row(db, "todos", todo_id)["description"], row(db, "todos", todo_id)["priority"]) == \
        ("new", 4)
    resp = as_user(user_a).rpc("powersync_apply_transaction",
                               {"ops": [{"op": "DELETE", "table": "todos", "id": todo_id}]})
    assert resp.json() == {"applied": 1, "unchanged": []}
    assert row(db, "todos", todo_id) is None


def test_rpc_respects_rls_in_user_mode(db, as_user, user_a, user_b):
    theirs = insert_list(db, user_b, name="theirs")
    api = as_user(user_a)
    # PATCH/DELETE of a hidden row: nothing happens, no error
    resp = api.rpc("powersync_apply_transaction", {"ops": [
        {"op": "PATCH", "table": "lists", "id": theirs, "data": {"name": "x"}},
        {"op": "DELETE", "table": "lists", "id": theirs}]})
    assert resp.status_code == 200
    assert resp.json() == {"applied": 2, "unchanged": [0, 1]}, "both changed nothing, and say so"
    assert row(db, "lists", theirs)["name"] == "theirs"
    # PUT over it or PUT a row for someone else: 42501, all rolled back
    mine = new_id()
    for bad in ({"op": "PUT", "table": "lists", "id": theirs,
                 "data": {"name": "x", "owner_id": user_a}},
                {"op": "PUT", "table": "lists", "id": new_id(),
                 "data": {"name": "x", "owner_id": user_b}}):
        resp = api.rpc("powersync_apply_transaction", {"ops": [
            {"op": "PUT", "table": "lists", "id": mine, "data": {"name": "m", "owner_id": user_a}},
            bad]})
        assert_error(resp, 403, "42501")
        assert row(db, "lists", mine) is None


def test_rpc_service_mode_forces_the_owner(db, as_service, user_a, user_b):
    theirs = insert_list(db, user_b, name="theirs")
    theirs_todo = insert_todo(db, user_b, theirs, description="their todo")
    new_list = new_id()
    call = {"owner_column": "owner_id", "owner_id": user_a}
    resp = as_service.rpc("powersync_apply_transaction", {**call, "ops": [
        {"op": "PUT", "table": "lists", "id": new_list, "data": {"name": "n", "owner_id": user_b}},
        {"op": "PATCH", "table": "lists", "id": theirs, "data": {"name": "hacked"}},
        {"op": "PATCH", "table": "lists", "id": new_list, "data": {"owner_id": user_b}},
        {"op": "DELETE", "table": "lists", "id": theirs}]})
    assert resp.status_code == 200, resp.text
    # the PATCH and DELETE of another owner's row changed nothing
    assert resp.json() == {"applied": 4, "unchanged": [1, 3]}
    assert row(db, "lists", new_list)["owner_id"] == user_a
    assert row(db, "lists", theirs)["name"] == "theirs"

    # PUT onto another owner's id is refused and rolls back everything
    other = new_id()
    resp = as_service.rpc("powersync_apply_transaction", {**call, "ops": [
        {"op": "PUT", "table": "lists", "id": other, "data": {"name": "o"}},
        {"op": "PUT", "table": "lists", "id": theirs, "data": {"name": "takeover"}}]})
    body = assert_error(resp, 403, "42501")
    assert "powersync op 1" in body["hint"]
    assert row(db, "lists", other) is None
    assert (row(db, "lists", theirs)["name"], row(db, "lists", theirs)["owner_id"]) == \
        ("theirs", user_b)

    # same with another table and owner column
    resp = as_service.rpc("powersync_apply_transaction", {
        "owner_column": "created_by", "owner_id": user_a,
        "ops": [{"op": "DELETE", "table": "todos", "id": theirs_todo}]})
    assert resp.status_code == 200
    assert row(db, "todos", theirs_todo) is not None


def test_rpc_rejects_malformed_ops(db, as_user, user_a):
    api = as_user(user_a)
    assert_error(api.rpc("powersync_apply_transaction", {"ops": {"op": "PUT"}}), 400, "22023")
    body = assert_error(api.rpc("powersync_apply_transaction", {"ops": [
        {"op": "UPSERT", "table": "lists", "id": new_id()}]}), 400, "22023")
    assert "powersync op 0" in body["hint"]
    assert_error(api.rpc("powersync_apply_transaction", {"ops": [
        {"op": "PUT", "table": "nope", "id": new_id(), "data": {}}]}), 404, "42P01")
    assert_error(api.rpc("powersync_apply_transaction", {"ops": [
        {"op": "PUT", "table": "lists", "id": new_id(), "data": {"colour": 1}}]}), 400, "42703")


def test_rpc_unknown_function_is_pgrst202(db, as_user, user_a):
    body = assert_error(as_user(user_a).rpc("nope", {"a": 1}), 404, "PGRST202")
    assert body["message"] == "Could not find the function public.nope(a) in the schema cache"
    assert_error(as_user(user_a).rpc("powersync_apply_transaction", {"opz": []}), 404, "PGRST202")


def test_rpc_is_not_callable_by_anon(db, client):
    assert_error(client().rpc("powersync_apply_transaction", {"ops": []}), 401, "42501")


# --------------------------------------------------------------------------- dead letters
def test_dead_letters_are_recorded_through_the_rpc_for_the_users_own_id_only(db, as_user, as_service,
                                                                           user_a, user_b):
    entries = [{"op": "PUT", "table": "todos", "id": new_id(), "data": {"priority": 9}, "state": "failed"}]
    letter = {"transaction_id": "42", "op_index": 0, "entries": entries, "code": "23514",
              "message": "check violation", "details": None}
    api = as_user(user_a)
    ok = api.rpc("powersync_record_dead_letter", {**letter, "user_id": user_a})
    assert ok.status_code == 200, ok.text
    assert_error(api.rpc("powersync_record_dead_letter", {**letter, "user_id": user_b}), 403, "42501")
    # the table itself takes no writes from the API roles
    assert_error(api.post("powersync_dead_letters", {"user_id": user_a, "entry": {}}), 403, "42501")
    assert_error(as_service.post("powersync_dead_letters", {"user_id": user_b, "entry": {}}), 403, "42501")
    named = as_service.rpc("powersync_record_dead_letter",
                           {**letter, "user_id": user_b, "owner_column": "created_by"})
    assert named.status_code == 200, named.text
    rows = db.execute("select user_id, recorded_as, code from powersync_dead_letters order by id").fetchall()
    assert rows == [(user_a, "user", "23514"), (user_b, "service", "23514")]
    assert [r["user_id"] for r in api.get("powersync_dead_letters").json()] == [user_a]


def test_sql_files_load_on_top_of_the_test_schema_repeatedly(pg, db):
    for f in SQL_FILES:
        pg.run_sql_file(f)
    rels = {r[0] for r in db.execute(
        "select relname from pg_class where relnamespace = 'public'::regnamespace").fetchall()}
    assert {"lists", "todos", "profiles", "powersync_dead_letters"} <= rels
    prosecdef = db.execute("select prosecdef from pg_proc where proname = "
                           "'powersync_apply_transaction'").fetchone()[0]
    assert prosecdef is False  # SECURITY INVOKER


# --------------------------------------------------------------------------- control API
def _control(standin, name, body=None):
    if body is None and name in ("stats", "requests"):
        return requests.get(f"{standin.url}/_standin/{name}", timeout=10)
    return requests.post(f"{standin.url}/_standin/{name}", json=body, timeout=10)


def test_stats_count_rest_requests_by_method(db, standin, as_user, user_a):
    api = as_user(user_a)
    api.post("lists", {"id": new_id(), "name": "x", "owner_id": user_a})
    api.patch("lists", f"id=eq.{new_id()}", {"name": "y"})
    api.delete("lists", f"id=eq.{new_id()}")
    api.delete("lists", f"id=eq.{new_id()}")
    stats = _control(standin, "stats").json()
    assert stats["requests"] == 4
    assert stats["by_method"] == {"POST": 1, "PATCH": 1, "DELETE": 2}
    log = _control(standin, "requests").json()
    assert [e["method"] for e in log] == ["POST", "PATCH", "DELETE", "DELETE"]
    assert log[0]["headers"]["apikey"] == PUBLISHABLE_KEY and log[0]["status"] == 201
    assert _control(standin, "reset").status_code == 200
    assert _control(standin, "stats").json()["requests"] == 0


def test_status_fault_answers_without_touching_the_db(db, standin, as_user, user_a):
    api = as_user(user_a)
    assert _control(standin, "fault", {"status": 503, "count": 2}).status_code == 200
    payload = {"id": new_id(), "name": "x", "owner_id": user_a}
    for _ in range(2):
        r = api.post("lists", payload)
        assert r.status_code == 503
        assert r.json()["code"] == "STANDIN_FAULT"
    assert count(db, "lists") == 0
    assert api.post("lists", payload).status_code == 201
    stats = _control(standin, "stats").json()
    assert stats["requests"] == 3 and stats["by_method"] == {"POST": 3}


def test_status_fault_with_custom_body_and_headers(db, standin, as_user, user_a):
    _control(standin, "fault", {"status": 429, "body": {"message": "slow down"},
                                "headers": {"Retry-After": "7"}})
    _control(standin, "fault", {"status": 502, "body": "<html>bad gateway</html>"})
    api = as_user(user_a)
    r1, r2 = api.get("lists"), api.get("lists")
    assert (r1.status_code, r1.json(), r1.headers["Retry-After"]) == (429, {"message": "slow down"},
                                                                      "7")
    assert (r2.status_code, r2.text) == (502, "<html>bad gateway</html>")
    assert api.get("lists").status_code == 200


def test_delay_fault_times_out_the_client_but_still_executes(db, standin, as_user, user_a):
    _control(standin, "fault", {"delay_ms": 1500, "count": 1})
    payload = {"id": new_id(), "name": "slow", "owner_id": user_a}
    with pytest.raises(requests.exceptions.ReadTimeout):
        as_user(user_a).post("lists", payload, timeout=0.5)
    deadline = time.time() + 5
    while row(db, "lists", payload["id"]) is None and time.time() < deadline:
        time.sleep(0.05)
    assert row(db, "lists", payload["id"]) is not None


def test_drop_fault_closes_the_connection_without_answer(db, standin, as_user, user_a):
    _control(standin, "fault", {"drop": True, "count": 1})
    payload = {"id": new_id(), "name": "dropped", "owner_id": user_a}
    with pytest.raises(requests.exceptions.ConnectionError):
        as_user(user_a).post("lists", payload)
    assert count(db, "lists") == 0
    assert as_user(user_a).post("lists", payload).status_code == 201


def test_drop_after_fault_commits_then_loses_the_answer(db, standin, as_user, user_a):
    _control(standin, "fault", {"drop_after": True})
    payload = {"id": new_id(), "name": "committed", "owner_id": user_a}
    with pytest.raises(requests.exceptions.ConnectionError):
        as_user(user_a).post("lists", payload)
    assert row(db, "lists", payload["id"]) is not None
    # a retry of a plain insert now conflicts; an upsert is idempotent
    assert as_user(user_a).post("lists", payload).status_code == 409
    assert as_user(user_a).post("lists", payload, prefer="resolution=merge-duplicates"
                                ).status_code == 200  # updates the committed row


def test_faults_can_target_a_method_and_reset_clears_them(db, standin, as_user, user_a):
    _control(standin, "fault", [{"status": 500, "method": "PATCH"}, {"status": 504, "count": 5}])
    api = as_user(user_a)
    assert api.patch("lists", f"id=eq.{new_id()}", {"name": "x"}).status_code == 500
    assert api.get("lists").status_code == 504
    assert _control(standin, "stats").json()["pending_faults"] == 4
    _control(standin, "reset")
    assert api.get("lists").status_code == 200


def test_invalid_fault_spec_is_400(db, standin):
    assert _control(standin, "fault", {"count": 1}).status_code == 400
    assert _control(standin, "fault", {"status": 42}).status_code == 400


# --------------------------------------------------------------------------- CLI
def test_cli_prints_listening_line_and_serves(pg, db, user_a):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.postgrest_standin.standin", "--port", "0", "--dsn", pg.dsn,
         "--jwt-secret", JWT_SECRET, "--anon-key", ANON_KEY, "--service-key", SERVICE_KEY],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("standin listening on 127.0.0.1:"), proc.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        api = RestClient(f"http://127.0.0.1:{port}", ANON_KEY, make_token(user_a))
        assert api.post("lists", {"id": new_id(), "name": "cli", "owner_id": user_a}
                        ).status_code == 201
        assert RestClient(f"http://127.0.0.1:{port}", SERVICE_KEY).get("lists").status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_faults_can_target_the_auth_endpoint(db, standin, user_a):
    _control(standin, "fault", {"status": 500, "path_prefix": "/auth/v1"})
    assert _auth_user(standin, make_token(user_a)).status_code == 500
    assert _auth_user(standin, make_token(user_a)).status_code == 200
    assert as_rest_get_ok(standin, user_a)


def as_rest_get_ok(standin, sub) -> bool:
    return RestClient(standin.url, PUBLISHABLE_KEY, make_token(sub)).get("lists").status_code == 200


def test_concurrent_requests_each_run_in_their_own_transaction(db, standin, user_a, user_b):
    from concurrent.futures import ThreadPoolExecutor

    def write(i):
        sub = user_a if i % 2 else user_b
        api = RestClient(standin.url, PUBLISHABLE_KEY, make_token(sub))
        ok = api.post("lists", {"id": new_id(), "name": f"n{i}", "owner_id": sub}).status_code
        bad = api.post("lists", {"id": new_id(), "name": "x",
                                 "owner_id": user_b if sub == user_a else user_a}).status_code
        return ok, bad

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(write, range(40)))
    assert results == [(201, 403)] * 40
    assert count(db, "lists") == 40
    owners = db.execute("select owner_id::text, count(*) from lists group by 1").fetchall()
    assert dict(owners) == {user_a: 20, user_b: 20}


# --------------------------------------------------------------------------- rpc: grouped ops
# powersync_apply_transaction applies runs of consecutive PUTs (same table, same keys, distinct
# ids) and DELETEs (same table) with one statement each. These tests count the statements with
# a statement-level trigger and check that the result is the same as op by op.
import contextlib  # noqa: E402


@contextlib.contextmanager
def _statements_on(db, table: str):
    """Counts INSERT/UPDATE/DELETE statements on `table` while the block runs:
    yields a function returning {"INSERT": n, ...}."""
    db.execute("create table if not exists _statement_log (tbl text, op text)")
    db.execute("truncate _statement_log")
    db.execute("""create or replace function _log_statement() returns trigger
                  language plpgsql security definer set search_path = public as $$
                  begin insert into _statement_log values (tg_table_name, tg_op); return null; end $$""")
    db.execute(f"create trigger _log_statements after insert or update or delete on {table} "
               "for each statement execute function _log_statement()")
    try:
        yield lambda: dict(db.execute("select op, count(*) from _statement_log where tbl = %s "
                                      "group by op", (table,)).fetchall())
    finally:
        db.execute(f"drop trigger _log_statements on {table}")
        db.execute("drop table _statement_log")
        db.execute("drop function _log_statement()")


def test_rpc_groups_a_thousand_puts_into_one_statement(db, as_user, user_a):
    ids = [new_id() for _ in range(1000)]
    ops = [{"op": "PUT", "table": "lists", "id": i, "data": {"name": f"list {n}", "owner_id": user_a}}
           for n, i in enumerate(ids)]
    with _statements_on(db, "lists") as statements:
        resp = as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"applied": 1000, "unchanged": []}
        assert statements()["INSERT"] == 1
    assert count(db, "lists") == 1000
    assert (row(db, "lists", ids[0])["name"], row(db, "lists", ids[999])["name"]) == \
        ("list 0", "list 999")
    # again over the existing rows: one upsert that updates them all
    ops = [{**op, "data": {**op["data"], "name": op["data"]["name"] + "!"}} for op in ops]
    resp = as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops})
    assert resp.json() == {"applied": 1000, "unchanged": []}
    assert count(db, "lists") == 1000
    assert row(db, "lists", ids[500])["name"] == "list 500!"


def test_rpc_groups_only_consecutive_puts_with_the_same_keys(db, as_user, user_a):
    list_id = insert_list(db, user_a)
    old = insert_todo(db, user_a, list_id, description="old", priority=4)
    a, b, c, d = new_id(), new_id(), new_id(), new_id()
    todo = {"list_id": list_id, "created_by": user_a}
    ops = [{"op": "PUT", "table": "todos", "id": a, "data": {"description": "a", **todo}},
           {"op": "PUT", "table": "todos", "id": b, "data": {**todo, "description": "b"}},
           {"op": "PUT", "table": "todos", "id": old, "data": {"description": "o", **todo}},
           {"op": "PUT", "table": "todos", "id": c, "data": {"description": "c", "priority": 1, **todo}},
           {"op": "PATCH", "table": "todos", "id": a, "data": {"completed": True}},
           {"op": "PUT", "table": "todos", "id": d, "data": {"description": "d", **todo}},
           {"op": "DELETE", "table": "todos", "id": b},
           {"op": "DELETE", "table": "todos", "id": c},
           {"op": "DELETE", "table": "todos", "id": new_id()}]
    with _statements_on(db, "todos") as statements:
        resp = as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops})
        assert resp.status_code == 200, resp.text
        # the grouped DELETE (b, c, an id no row has) says which of its ids matched nothing
        assert resp.json() == {"applied": 9, "unchanged": [8]}
        # (a, b, old) · (c) · PATCH a · (d) · (DELETE b, c, ?)
        assert statements() == {"INSERT": 3, "UPDATE": 4, "DELETE": 1}
    assert (row(db, "todos", a)["completed"], row(db, "todos", d)["description"]) == (True, "d")
    assert (row(db, "todos", old)["description"], row(db, "todos", old)["priority"]) == ("o", 4)
    assert row(db, "todos", b) is None and row(db, "todos", c) is None


def test_rpc_group_with_a_repeated_id_is_split(db, as_user, user_a):
    a, b, c = new_id(), new_id(), new_id()

    def put(id_, name):
        return {"op": "PUT", "table": "lists", "id": id_, "data": {"name": name, "owner_id": user_a}}

    ops = [put(a, "a1"), put(b, "b1"), put(a, "a2"), put(c, "c1"), put(b, "b2"), put(a, "a3"),
           # the same row spelled differently (upper-case uuid): still applied in order
           put(a.upper(), "a4")]
    with _statements_on(db, "lists") as statements:
        resp = as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"applied": 7, "unchanged": []}
        # (a1, b1) · (a2, c1, b2) · (a3, A4: the same row, so applied row by row: 2)
        assert statements()["INSERT"] == 4
    assert [row(db, "lists", i)["name"] for i in (a, b, c)] == ["a4", "b2", "c1"]
    assert count(db, "lists") == 3


def test_rpc_failing_op_in_a_group_rolls_back_and_names_that_op(db, as_user, as_service, user_a):
    existing = insert_list(db, user_a, name="keep")
    list_id = new_id()
    todos = [new_id() for _ in range(5)]
    ops = [{"op": "PUT", "table": "lists", "id": list_id, "data": {"name": "l", "owner_id": user_a}},
           {"op": "PATCH", "table": "lists", "id": existing, "data": {"name": "changed"}}]
    ops += [{"op": "PUT", "table": "todos", "id": t,
             "data": {"description": f"t{n}", "list_id": list_id, "created_by": user_a,
                      "priority": 9 if n == 3 else 1}}
            for n, t in enumerate(todos)]
    body = assert_error(as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops}),
                        400, "23514")
    # ops 2..6 are one group (one statement); op 5 fails, the hint names it
    assert body["hint"] == f"powersync op 5 (PUT todos/{todos[3]})"
    assert "todos_priority_check" in body["message"]
    assert count(db, "todos") == 0
    assert row(db, "lists", list_id) is None
    assert row(db, "lists", existing)["name"] == "keep"

    # a failing DELETE group: same rule
    body = assert_error(as_user(user_a).rpc("powersync_apply_transaction", {"ops": [
        {"op": "DELETE", "table": "lists", "id": existing},
        {"op": "DELETE", "table": "lists", "id": "not-a-uuid"}]}), 400, "22P02")
    assert body["hint"] == "powersync op 1 (DELETE lists/not-a-uuid)"

    # a PUT group whose ids are cast before the upsert (one not a uuid here; always in service mode)
    lists = [new_id(), new_id(), "not-a-uuid"]
    for call in ({}, {"owner_column": "owner_id", "owner_id": user_a}):
        ops = [{"op": "PUT", "table": "lists", "id": i, "data": {"name": "n", "owner_id": user_a}} for i in lists]
        api = as_user(user_a) if not call else as_service
        body = assert_error(api.rpc("powersync_apply_transaction", {**call, "ops": ops}), 400, "22P02")
        assert body["hint"] == "powersync op 2 (PUT lists/not-a-uuid)", call
    assert row(db, "lists", existing) is not None


@contextlib.contextmanager
def _one_row_per_insert(db, table: str, sleep: float = 0):
    """A statement trigger on `table` refusing inserts of several rows (after `sleep` seconds)."""
    db.execute(f"""create or replace function _one_row_per_statement() returns trigger
                   language plpgsql as $$
                   begin
                     perform pg_sleep({sleep});
                     if (select count(*) from inserted) > 1 then
                       raise exception 'one row per statement';
                     end if;
                     return null;
                   end $$""")
    db.execute(f"create trigger _one_row after insert on {table} referencing new table as inserted "
               "for each statement execute function _one_row_per_statement()")
    try:
        yield
    finally:
        db.execute(f"drop trigger _one_row on {table}")
        db.execute("drop function _one_row_per_statement()")


def test_rpc_groups_refused_only_as_one_statement_are_applied_in_halves(db, as_user, user_a):
    # A refusal of a group's statement that no op meets on its own (here a statement trigger
    # refusing inserts of several rows; in the wild, a cast the grouping does not foresee):
    # applied in halves, which is applying them in order, and what came before counted once;
    # a second such group too.
    ids = [new_id() for _ in range(5)]
    put = lambda n, i: {"op": "PUT", "table": "lists", "id": i, "data": {"name": f"l{n}", "owner_id": user_a}}  # noqa: E731
    ops = [{"op": "DELETE", "table": "lists", "id": new_id()}, put(0, ids[0]), put(1, ids[1]), put(2, ids[2]),
           {"op": "DELETE", "table": "lists", "id": new_id()}, put(3, ids[3]), put(4, ids[4])]
    with _one_row_per_insert(db, "lists"):
        resp = as_user(user_a).rpc("powersync_apply_transaction", {"ops": ops})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"applied": 7, "unchanged": [0, 4]}
    assert [row(db, "lists", i)["name"] for i in ids] == ["l0", "l1", "l2", "l3", "l4"]


def test_rpc_group_failing_late_in_a_long_call_names_its_first_op_rather_than_risk_the_timeout(db, user_a):
    # Applying it again in halves could take the call past statement_timeout, and a timeout is
    # retried where the refusal is final: past a fifth of it, the hint names the group's first op.
    ids = [new_id() for _ in range(3)]
    ops = [{"op": "PUT", "table": "lists", "id": i, "data": {"name": "l", "owner_id": user_a}} for i in ids]
    with _one_row_per_insert(db, "lists", sleep=0.3):
        with pytest.raises(psycopg.Error) as refused:
            with db.transaction():
                db.execute("set local statement_timeout = '1s'")
                db.execute("select public.powersync_apply_transaction(%s::jsonb)", (json.dumps(ops),))
    assert refused.value.sqlstate == "P0001", refused.value
    assert refused.value.diag.message_hint == f"powersync op 0 (PUT lists/{ids[0]})"


def test_rpc_group_in_halves_stops_at_another_owners_row_as_op_by_op(db, as_service, user_a, user_b):
    # A group applied in halves (its statement refused by a trigger here) meets another owner's
    # row: the call is refused at that op (42501), as op by op, not by a later op's error.
    theirs = insert_list(db, user_b, name="theirs")
    ops = [{"op": "PUT", "table": "lists", "id": i, "data": {"name": n}}
           for i, n in ((new_id(), "a"), (new_id(), "b"), (theirs, "mine now"), (new_id(), None))]
    with _one_row_per_insert(db, "lists"):
        body = assert_error(as_service.rpc("powersync_apply_transaction",
                                           {"ops": ops, "owner_column": "owner_id", "owner_id": user_a}), 403, "42501")
    assert body["hint"] == f"powersync op 2 (PUT lists/{theirs})", body
    assert row(db, "lists", theirs)["name"] == "theirs"


def test_rpc_group_in_halves_near_the_timeout_names_the_failing_part_rather_than_time_out(db, user_a):
    # Each statement on profiles sleeps 0.42 s (statement_timeout 3 s): halving down to the one
    # refused row would take about 4.2 s; past four fifths of the timeout the part's own error is
    # raised (naming its first op), final, where a timeout would be retried for ever.
    db.execute("insert into profiles (id, user_id, handle) values (%s, %s, 'taken')", (new_id(), user_a))
    db.execute("""create or replace function _slow_statement() returns trigger language plpgsql as $$
                  begin perform pg_sleep(0.42); return null; end $$""")
    db.execute("create trigger _slow before insert on profiles for each statement execute function _slow_statement()")
    ops = [{"op": "PUT", "table": "profiles", "id": f"p-{n}-{new_id()}",
            "data": {"user_id": user_a, "handle": "taken" if n == 15 else f"h-{new_id()}"}} for n in range(16)]
    try:
        with pytest.raises(psycopg.Error) as refused:
            with db.transaction():
                db.execute("set local statement_timeout = '3s'")
                db.execute("select public.powersync_apply_transaction(%s::jsonb)", (json.dumps(ops),))
    finally:
        db.execute("drop trigger _slow on profiles")
        db.execute("drop function _slow_statement()")
    assert refused.value.sqlstate == "23505", refused.value
    assert refused.value.diag.message_hint.startswith("powersync op 12 (PUT profiles/p-12-"), refused.value.diag.message_hint


def test_rpc_refuses_the_bridges_own_tables_even_for_the_service_key(db, as_service, as_user, user_a):
    # service_role may update dead letters (the operator's tools do): an upload must not
    for table in ("powersync_dead_letters", "powersync_upload_ledger", "powersync_upload_ledger_settings"):
        for api, call in ((as_service, {"owner_column": "user_id", "owner_id": user_a}), (as_user(user_a), {})):
            ops = [{"op": "PATCH", "table": table, "id": "1", "data": {"discard_reason": "mine"}}]
            body = assert_error(api.rpc("powersync_apply_transaction", {**call, "ops": ops}), 403, "42501")
            assert body["message"] == f"table {table} is the bridge's own: uploads do not write it", body


def test_rpc_service_mode_forces_the_owner_within_groups(db, as_service, user_a, user_b):
    theirs = insert_list(db, user_b, name="theirs")
    mine = insert_list(db, user_a, name="mine")
    call = {"owner_column": "owner_id", "owner_id": user_a}
    a, b, c = new_id(), new_id(), new_id()
    with _statements_on(db, "lists") as statements:
        resp = as_service.rpc("powersync_apply_transaction", {**call, "ops": [
            {"op": "PUT", "table": "lists", "id": a, "data": {"name": "a", "owner_id": user_b}},
            {"op": "PUT", "table": "lists", "id": b, "data": {"name": "b"}},
            {"op": "PUT", "table": "lists", "id": mine, "data": {"name": "mine!", "owner_id": user_b}},
            {"op": "DELETE", "table": "lists", "id": theirs},
            {"op": "DELETE", "table": "lists", "id": b}]})
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"applied": 5, "unchanged": [3]}
        assert statements()["INSERT"] == 1 and statements()["DELETE"] == 1
    assert [row(db, "lists", i)["owner_id"] for i in (a, mine)] == [user_a, user_a]
    assert row(db, "lists", mine)["name"] == "mine!"
    assert row(db, "lists", b) is None
    assert row(db, "lists", theirs)["name"] == "theirs"  # other owner's row: not deleted

    # another owner's row in the middle of a group: 42501, the hint names that very op
    before = count(db, "lists")
    resp = as_service.rpc("powersync_apply_transaction", {**call, "ops": [
        {"op": "DELETE", "table": "lists", "id": a},
        {"op": "PUT", "table": "lists", "id": c, "data": {"name": "c"}},
        {"op": "PUT", "table": "lists", "id": mine, "data": {"name": "x"}},
        {"op": "PUT", "table": "lists", "id": theirs, "data": {"name": "takeover"}},
        {"op": "PUT", "table": "lists", "id": new_id(), "data": {"name": "d"}}]})
    body = assert_error(resp, 403, "42501")
    assert body["message"] == f"row {theirs} of table lists belongs to another owner"
    assert body["hint"] == f"powersync op 3 (PUT lists/{theirs})"
    assert count(db, "lists") == before
    assert row(db, "lists", c) is None and row(db, "lists", a) is not None
    assert (row(db, "lists", mine)["name"], row(db, "lists", theirs)["owner_id"]) == \
        ("mine!", user_b)
