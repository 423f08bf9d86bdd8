"""The worker's tokens against the REAL PowerSync service (v1.25.0, powersync/install.sh), with no
client SDK: raw `POST /sync/stream` requests, NDJSON lines read up to `checkpoint_complete`.

The service replicates the test database (`pg`) with powersync/sync-rules.yaml (each user: their
own lists and todos) and trusts the worker's JWKS with aud = the service's own URL. `ps_worker`
is the worker configured for it (POWERSYNC_URL = the service's URL); the shared `worker` has the
same PowerSync key (same JWKS) but another POWERSYNC_URL.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

import psycopg

from tests.e2e.conftest import POWERSYNC_URL
from tests.support.powersync import PowerSyncService, SyncRefused, free_port, read_sync_stream, synced_rows


@pytest.fixture(scope="module")
def ps_worker(start_worker, base_vars, powersync_service):
    """The worker whose tokens are meant for this PowerSync service."""
    return start_worker({**base_vars, "POWERSYNC_URL": powersync_service.url})


def powersync_token(worker, session_token, user: str) -> str:
    r = worker.get("/powersync-token", headers={"Authorization": f"Bearer {session_token(user)}"})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def bucket_names(lines: list[dict]) -> list[str]:
    """The buckets of the first checkpoint, without the service's prefix: v1.25 names them
    `<sync config version>#<definition>[<parameters>]`, e.g. `1#user_data["<uuid>"]`."""
    first = next(line["checkpoint"] for line in lines if "checkpoint" in line)
    return sorted(b["bucket"].split("#", 1)[-1] for b in first["buckets"])


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_service_accepts_worker_token_and_first_sync_completes(powersync_service, ps_worker,
                                                               session_token, db):
    user = str(uuid.uuid4())
    r = ps_worker.get("/powersync-token", headers={"Authorization": f"Bearer {session_token(user)}"})
    assert r.status_code == 200, r.text
    assert r.json()["powersync_url"] == powersync_service.url  # the client connects there
    started = time.monotonic()
    lines = read_sync_stream(powersync_service.url, r.json()["token"])
    assert time.monotonic() - started < 10
    assert "checkpoint" in lines[0], lines
    assert "checkpoint_complete" in lines[-1], lines
    # one bucket, parameterised by the token's sub (request.user_id()); empty for a new user
    assert bucket_names(lines) == [f'user_data["{user}"]']
    assert synced_rows(lines) == {}


def test_user_receives_exactly_their_own_rows(powersync_service, ps_worker, session_token, db,
                                              user_a, user_b):
    list_a, list_a2, list_b = (str(uuid.uuid4()) for _ in range(3))
    todo_a, todo_b, todo_b_in_a = (str(uuid.uuid4()) for _ in range(3))
    with db.transaction():  # one transaction: replicated (and checkpointed) as a whole
        for list_id, name, owner in [(list_b, "B's list", user_b), (list_a, "A's list", user_a),
                                     (list_a2, "A's second list", user_a)]:
            db.execute("insert into lists (id, name, owner_id) values (%s, %s, %s)",
                       (list_id, name, owner))
        for todo_id, list_id, creator, text in [
                (todo_b, list_b, user_b, "B's todo"), (todo_a, list_a, user_a, "A's todo"),
                # created by B in A's list: the rules go by created_by, so it is B's
                (todo_b_in_a, list_a, user_b, "B's todo in A's list")]:
            db.execute("insert into todos (id, list_id, created_by, description) "
                       "values (%s, %s, %s, %s)", (todo_id, list_id, creator, text))

    expected = {
        user_a: {("lists", list_a): "A's list", ("lists", list_a2): "A's second list",
                 ("todos", todo_a): "A's todo"},
        user_b: {("lists", list_b): "B's list", ("todos", todo_b): "B's todo",
                 ("todos", todo_b_in_a): "B's todo in A's list"},
    }
    for user, want in expected.items():
        token = powersync_token(ps_worker, session_token, user)
        # Replication is asynchronous: read checkpoints until this user's rows have arrived.
        # They were committed together with the other user's rows, so any leak would be
        # in the same checkpoint.
        lines = read_sync_stream(powersync_service.url, token,
                                 until=lambda lines: set(want) <= set(synced_rows(lines)))
        rows = synced_rows(lines)
        assert set(rows) == set(want), f"user {user} got {sorted(rows)}"
        for (table, row_id), text in want.items():
            row = rows[(table, row_id)]
            assert row["id"] == row_id
            assert row["name" if table == "lists" else "description"] == text
        assert bucket_names(lines) == [f'user_data["{user}"]']


def test_token_for_another_audience_is_refused_by_the_service(powersync_service, ps_worker,
                                                              worker, session_token):
    user = str(uuid.uuid4())
    wrong_aud = powersync_token(worker, session_token, user)   # POWERSYNC_URL = elsewhere
    right_aud = powersync_token(ps_worker, session_token, user)
    # same signing key, served in the JWKS the service trusts: only the audience differs
    assert jwt.get_unverified_header(wrong_aud)["kid"] == jwt.get_unverified_header(right_aud)["kid"]
    assert jwt.decode(wrong_aud, options={"verify_signature": False})["aud"] == POWERSYNC_URL

    with pytest.raises(SyncRefused) as refused:
        read_sync_stream(powersync_service.url, wrong_aud)
    assert refused.value.status == 401, refused.value.body
    assert json.loads(refused.value.body)["error"]["code"] == "PSYNC_S2105"  # unexpected "aud"
    assert "checkpoint_complete" in read_sync_stream(powersync_service.url, right_aud)[-1]


@pytest.mark.parametrize("part", ["payload", "signature"])
def test_tampered_token_is_refused_by_the_service(powersync_service, ps_worker, session_token,
                                                  user_a, user_b, part):
    header, payload, signature = powersync_token(ps_worker, session_token, user_a).split(".")
    if part == "payload":  # impersonation: sub changed to another user, signature kept
        claims = json.loads(b64url_decode(payload))
        claims["sub"] = user_b
        payload = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    else:                  # one bit of the signature flipped
        raw = bytearray(b64url_decode(signature))
        raw[len(raw) // 2] ^= 0x01
        signature = b64url_encode(bytes(raw))

    with pytest.raises(SyncRefused) as refused:
        read_sync_stream(powersync_service.url, f"{header}.{payload}.{signature}")
    assert refused.value.status == 401, refused.value.body
    error = json.loads(refused.value.body)["error"]
    assert (error["code"], error["description"]) == ("PSYNC_S2101", "signature verification failed")


def test_service_accepts_es256_and_eddsa_tokens_from_workers_with_those_keys(
        pg, db, start_worker, base_vars, signing_key_of, session_token):
    """Two workers, one with a P-256 key and one with an Ed25519 key, and a PowerSync service of
    their own (its own storage database, a port fixed in advance so that the workers' POWERSYNC_URL
    is its URL) trusting both workers' JWKS: each worker's tokens open a sync stream, and a
    changed signature is refused."""
    service_port = free_port()
    service_url = f"http://127.0.0.1:{service_port}"
    workers = {}
    for alg in ["ES256", "EdDSA"]:
        key = signing_key_of(alg)
        workers[alg] = start_worker({**base_vars, "POWERSYNC_URL": service_url,
                                     "POWERSYNC_PRIVATE_KEY": key["private_pem"], "POWERSYNC_KEY_ID": key["kid"]})
    storage = pg.create_database(f"psstorage_{uuid.uuid4().hex[:8]}")
    try:
        with PowerSyncService(pg.url(with_password=True), pg.url(storage, with_password=True),
                              jwks_uri=[w.url + "/.well-known/jwks.json" for w in workers.values()],
                              port=service_port) as service:
            service.wait_for_initial_replication()
            for alg, w in workers.items():
                user = str(uuid.uuid4())
                token = powersync_token(w, session_token, user)
                assert jwt.get_unverified_header(token)["alg"] == alg
                lines = read_sync_stream(service.url, token)
                assert "checkpoint_complete" in lines[-1], (alg, lines)
                assert bucket_names(lines) == [f'user_data["{user}"]']

                header, payload, signature = token.split(".")
                raw = bytearray(b64url_decode(signature))
                raw[len(raw) // 2] ^= 0x01
                with pytest.raises(SyncRefused) as refused:
                    read_sync_stream(service.url, f"{header}.{payload}.{b64url_encode(bytes(raw))}")
                assert refused.value.status == 401, refused.value.body
                assert json.loads(refused.value.body)["error"]["code"] == "PSYNC_S2101", (alg, refused.value.body)
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f'drop database if exists "{storage}" with (force)')


def test_firebase_users_worker_token_is_accepted_with_the_firebase_uid_as_user_id(
        powersync_service, start_worker, base_vars, db):
    """Firebase + Supabase + PowerSync: a Firebase ID token (with the `role` claim Supabase needs)
    gets a worker token the real service accepts, and the service parameterises the user's bucket
    by the Firebase uid (`request.user_id()` / `token_parameters.user_id`)."""
    from tests.e2e.test_third_party import FIREBASE_PROJECT, FIREBASE_UID, firebase_claims
    from tests.support.issuers import IssuerServer, ProviderKeys

    server = IssuerServer()
    try:
        keys = ProviderKeys("firebase-1")
        worker = start_worker({**base_vars, "POWERSYNC_URL": powersync_service.url,
                               "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
                               "THIRD_PARTY_FIREBASE_JWKS_URL": server.serve_jwks("firebase", keys)})
        r = worker.get("/powersync-token", headers={"Authorization": f"Bearer {keys.sign(firebase_claims())}"})
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == FIREBASE_UID
        lines = read_sync_stream(powersync_service.url, r.json()["token"])
        assert "checkpoint_complete" in lines[-1], lines
        assert bucket_names(lines) == [f'user_data["{FIREBASE_UID}"]']
    finally:
        server.stop()
