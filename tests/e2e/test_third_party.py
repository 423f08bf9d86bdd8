"""End-to-end tests of third-party auth sessions (Firebase Auth, Auth0, AWS Cognito, Clerk,
WorkOS, a generic OpenID Connect issuer) through the built worker in workerd.

Keys come from a local server (tests/support/issuers.py) through the worker's
`THIRD_PARTY_*_JWKS_URL` overrides, while the tokens carry each provider's real `iss` and `aud`
formats; the generic OIDC issuer is served by that server itself, so its discovery document is
fetched for real. Every issued PowerSync token is checked with PyJWT like PowerSync does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import uuid

import jwt
import psycopg
import pytest

from tests.e2e.conftest import ANON_KEY, JWT_SECRET, SERVICE_KEY
from tests.e2e.upload_helpers import body as upload_body
from tests.e2e.upload_helpers import failure, put, statuses, tx, upload
from tests.postgrest_standin.standin import StandIn
from tests.e2e.test_token import assert_error, bearer, verify_like_powersync
from tests.support.issuers import IssuerServer, ProviderKeys, claims

FIREBASE_PROJECT = "my-app-prod"
FIREBASE_ISS = f"https://securetoken.google.com/{FIREBASE_PROJECT}"
FIREBASE_UID = "kq3sX9vRZbT1bCq4nW0pYf7LmA82"  # 28 characters, like every Firebase UID
AUTH0_ISS = "https://my-tenant.eu.auth0.com/"
COGNITO_POOL = "us-east-1_AbC123xyz"
COGNITO_ISS = f"https://cognito-idp.us-east-1.amazonaws.com/{COGNITO_POOL}"
CLERK_ISS = "https://clerk.example.com"
WORKOS_ISS = "https://api.workos.com/user_management/client_01HXYZ"


@pytest.fixture(scope="module")
def providers():
    server = IssuerServer()
    keys = {name: ProviderKeys(f"{name}-1") for name in
            ["firebase", "auth0", "cognito", "clerk", "workos", "oidc"]}
    # Google's securetoken set holds RS256 keys; the OIDC issuer here signs ES256.
    keys["oidc"] = ProviderKeys("oidc-1", alg="ES256")
    urls = {name: server.serve_jwks(name, k) for name, k in keys.items() if name != "oidc"}
    oidc_issuer = server.serve_issuer("oidc", keys["oidc"])
    yield server, keys, urls, oidc_issuer
    server.stop()


@pytest.fixture(scope="module")
def tp_worker(providers, base_vars, start_worker):
    server, keys, urls, oidc_issuer = providers
    vars = {
        **base_vars,
        "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
        "THIRD_PARTY_FIREBASE_JWKS_URL": urls["firebase"],
        "THIRD_PARTY_AUTH0_TENANT": "my-tenant",
        "THIRD_PARTY_AUTH0_TENANT_REGION": "eu",
        "THIRD_PARTY_AUTH0_JWKS_URL": urls["auth0"],
        "THIRD_PARTY_AWS_COGNITO_USER_POOL_ID": COGNITO_POOL,
        "THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION": "us-east-1",
        "THIRD_PARTY_AWS_COGNITO_JWKS_URL": urls["cognito"],
        "THIRD_PARTY_CLERK_DOMAIN": "clerk.example.com",
        "THIRD_PARTY_CLERK_JWKS_URL": urls["clerk"],
        "THIRD_PARTY_WORKOS_ISSUER_URL": WORKOS_ISS,
        "THIRD_PARTY_WORKOS_JWKS_URL": urls["workos"],
        "THIRD_PARTY_OIDC_ISSUER": oidc_issuer,
        "THIRD_PARTY_OIDC_AUDIENCE": "my-api",
        "POWERSYNC_COPY_CLAIMS": "email,role",
    }
    return start_worker(vars)


def firebase_claims(uid=FIREBASE_UID, project=FIREBASE_PROJECT, **extra):
    """An ID token as Firebase Auth issues it, plus the `role` custom claim Supabase needs."""
    body = claims(f"https://securetoken.google.com/{project}", uid, aud=project,
                  user_id=uid, auth_time=int(time.time()) - 60, email="fb@example.test",
                  email_verified=True, role="authenticated",
                  firebase={"identities": {"email": ["fb@example.test"]}, "sign_in_provider": "password"})
    body.update(extra)
    return body


def shapes(oidc_issuer):
    """(provider, claims) for one token shaped like each provider's."""
    return [
        ("firebase", firebase_claims()),
        ("auth0", claims(AUTH0_ISS, "auth0|65f0c1d2e3a4b5c6d7e8f901",
                         aud=["https://api.example.com", "https://my-tenant.eu.auth0.com/userinfo"],
                         azp="AbCdEf123", scope="openid profile email", role="authenticated",
                         email="a0@example.test")),
        ("cognito", claims(COGNITO_ISS, "3f1c2b4a-1111-4a2b-9c3d-5e6f7a8b9c0d", token_use="access",
                           client_id="7abc123defclient", scope="aws.cognito.signin.user.admin",
                           username="jdoe", role="authenticated")),
        ("clerk", claims(CLERK_ISS, "user_2abcDEF123ghiJKL", azp="https://app.example.com",
                         sid="sess_2abc", role="authenticated", nbf=int(time.time()) - 5)),
        ("workos", claims(WORKOS_ISS, "user_01HXYZABCDEF", sid="session_01HX", org_id="org_01HX",
                          role="authenticated")),
        ("oidc", claims(oidc_issuer, "oidc-user-1", aud="my-api", role="authenticated",
                        email="oidc@example.test")),
    ]


def hs256_raw(body: dict, secret: bytes, kid: str) -> str:
    """HS256 by hand: PyJWT refuses a PEM public key as an HMAC secret, an attacker does not."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(body).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def powersync_token(worker, token):
    return worker.get("/powersync-token", headers=bearer(token))


# --- accepted --------------------------------------------------------------------------------

def test_each_providers_token_gets_a_powersync_token_for_its_user_id(tp_worker, providers):
    server, keys, _, oidc_issuer = providers
    for name, body in shapes(oidc_issuer):
        r = powersync_token(tp_worker, keys[name].sign(body))
        assert r.status_code == 200, (name, r.text)
        issued = verify_like_powersync(tp_worker, r.json()["token"])
        assert issued["sub"] == body["sub"], name
        assert issued["role"] == "authenticated", name
        if "email" in body:
            assert issued["email"] == body["email"], f"{name}: POWERSYNC_COPY_CLAIMS"
    assert server.fetches["/oidc/.well-known/openid-configuration"] == 1, server.fetches
    # Cached: a second round fetches nothing.
    before = server.total_fetches()
    for name, body in shapes(oidc_issuer):
        assert powersync_token(tp_worker, keys[name].sign(body)).status_code == 200, name
    assert server.total_fetches() == before


def test_firebase_uid_becomes_the_powersync_user_id_for_sync_rules(tp_worker, providers):
    _, keys, _, _ = providers
    r = powersync_token(tp_worker, keys["firebase"].sign(firebase_claims()))
    issued = verify_like_powersync(tp_worker, r.json()["token"])
    # Sync rules: `firebase_uid = token_parameters.user_id()` (user_id() is the token's sub).
    assert issued["sub"] == FIREBASE_UID and len(issued["sub"]) == 28


def test_key_rotation_at_the_provider_is_picked_up_by_one_refetch(tp_worker, providers):
    server, keys, _, _ = providers
    assert powersync_token(tp_worker, keys["clerk"].sign(shapes("x")[3][1])).status_code == 200
    keys["clerk"].rotate("clerk-2")
    before = server.fetches["/clerk/jwks.json"]
    r = powersync_token(tp_worker, keys["clerk"].sign(shapes("x")[3][1]))
    assert r.status_code == 200, r.text
    assert server.fetches["/clerk/jwks.json"] == before + 1


# --- refused ---------------------------------------------------------------------------------

def test_expired_third_party_token_is_401_session_expired(tp_worker, providers):
    _, keys, _, _ = providers
    now = int(time.time())
    token = keys["firebase"].sign(firebase_claims(iat=now - 7200, exp=now - 3600))
    assert_error(powersync_token(tp_worker, token), 401, "Unauthorized", "session_expired")


def test_token_for_another_firebase_project_signed_with_the_shared_keys_is_refused(tp_worker, providers):
    server, keys, _, _ = providers
    # Google signs every project's tokens with the same keys: only iss/aud tell them apart.
    other = keys["firebase"].sign(firebase_claims(project="someone-elses-app"))
    before = server.total_fetches()
    assert_error(powersync_token(tp_worker, other), 401, "Unauthorized", "session_invalid")
    assert server.total_fetches() == before, "an unconfigured issuer never causes a fetch"
    # Our iss but the other project's aud (or no aud) is refused too.
    for aud in ["someone-elses-app", None]:
        body = firebase_claims(aud=aud)
        if aud is None:
            del body["aud"]
        assert_error(powersync_token(tp_worker, keys["firebase"].sign(body)), 401, "Unauthorized", "session_invalid")


def test_token_for_another_tenant_pool_or_domain_is_refused_without_a_fetch(tp_worker, providers):
    server, keys, _, _ = providers
    before = server.total_fetches()
    for name, iss in [("auth0", "https://other-tenant.eu.auth0.com/"),
                      ("auth0", "https://my-tenant.eu.auth0.com"),  # no trailing slash: not Auth0's iss
                      ("cognito", "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other999"),
                      ("clerk", "https://clerk.other.com"),
                      ("workos", "https://api.workos.com/user_management/client_OTHER")]:
        token = keys[name].sign(claims(iss, "someone", role="authenticated"))
        assert_error(powersync_token(tp_worker, token), 401, "Unauthorized", "session_invalid")
    assert server.total_fetches() == before


def test_unknown_issuer_is_refused_and_nothing_is_fetched(tp_worker, providers, jwks):
    server, keys, _, _ = providers
    before, supabase_before = server.total_fetches(), jwks.fetches
    _, firebase_key = keys["firebase"].keys["firebase-1"]
    # A known kid and an unknown one (which would trigger a refetch for a configured issuer).
    for kid in ["firebase-1", "never-seen"]:
        body = claims("https://evil.example.com", "x", role="authenticated")
        token = jwt.encode(body, firebase_key, algorithm="RS256", headers={"kid": kid})
        assert_error(powersync_token(tp_worker, token), 401, "Unauthorized", "session_invalid")
    assert (server.total_fetches(), jwks.fetches) == (before, supabase_before), "no fetch at all"


def test_alg_confusion_hs256_with_a_third_party_issuer_is_refused(tp_worker, providers):
    _, keys, _, _ = providers
    body = firebase_claims()
    # Signed with the provider's public key as an HMAC secret, and with Supabase's own secret.
    for secret in [keys["firebase"].public_pem(), JWT_SECRET.encode()]:
        token = hs256_raw(body, secret, kid="firebase-1")
        assert_error(powersync_token(tp_worker, token), 401, "Unauthorized", "session_invalid")
    unsigned = jwt.encode(body, None, algorithm="none")
    assert_error(powersync_token(tp_worker, unsigned), 401, "Unauthorized", "session_invalid")


def test_role_must_be_authenticated(tp_worker, providers):
    _, keys, _, _ = providers
    for role in [None, "anon", "service_role", "admin"]:
        body = firebase_claims(role=role)
        if role is None:
            del body["role"]
        assert_error(powersync_token(tp_worker, keys["firebase"].sign(body)), 401, "Unauthorized", "session_invalid")


def test_missing_role_is_accepted_only_with_the_setting(providers, base_vars, start_worker):
    _, keys, urls, _ = providers
    w = start_worker({**base_vars, "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
                      "THIRD_PARTY_FIREBASE_JWKS_URL": urls["firebase"],
                      "THIRD_PARTY_ALLOW_MISSING_ROLE": "true"})
    body = firebase_claims()
    del body["role"]
    assert powersync_token(w, keys["firebase"].sign(body)).status_code == 200
    assert_error(powersync_token(w, keys["firebase"].sign(firebase_claims(role="anon"))), 401, "Unauthorized")


def test_oidc_audience_is_enforced(tp_worker, providers):
    _, keys, _, oidc_issuer = providers
    token = keys["oidc"].sign(claims(oidc_issuer, "u", aud="another-api", role="authenticated"))
    assert_error(powersync_token(tp_worker, token), 401, "Unauthorized", "session_invalid")


def test_supabase_sessions_still_pass_beside_third_parties(tp_worker, session_token):
    r = powersync_token(tp_worker, session_token("11111111-1111-4111-8111-111111111111"))
    assert r.status_code == 200, r.text


def test_invalid_third_party_settings_are_reported_together(base_vars, start_worker):
    w = start_worker({**base_vars,
                      "THIRD_PARTY_FIREBASE_PROJECT_ID": "Not A Project",
                      "THIRD_PARTY_AWS_COGNITO_USER_POOL_ID": "us-east-1_Abc",
                      "THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION": "eu-west-1",
                      "THIRD_PARTY_OIDC_ISSUER": "http://idp.example.com"})
    health = w.get("/health").json()
    names = {p["name"] for p in health["session"]["problems"]}
    assert {"THIRD_PARTY_FIREBASE_PROJECT_ID", "THIRD_PARTY_AWS_COGNITO_USER_POOL_REGION",
            "THIRD_PARTY_OIDC_ISSUER"} <= names, health
    assert "Not A Project" not in str(health)


# --- RLS uploads with a third-party token ------------------------------------------------------

# A table owned by a Firebase uid, with the policy Supabase's docs give for third-party auth:
# `auth.uid()` casts `sub` to uuid and fails for a Firebase uid, `auth.jwt() ->> 'sub'` does not.
FIREBASE_NOTES_SQL = """
create table if not exists public.firebase_notes (
  id uuid primary key,
  firebase_uid text not null,
  body text not null
);
alter table public.firebase_notes enable row level security;
drop policy if exists firebase_notes_own on public.firebase_notes;
create policy firebase_notes_own on public.firebase_notes for all to authenticated
  using (firebase_uid = (auth.jwt() ->> 'sub')) with check (firebase_uid = (auth.jwt() ->> 'sub'));
grant select, insert, update, delete on public.firebase_notes to authenticated;
drop table if exists public.firebase_lists;
create table public.firebase_lists (
  id uuid primary key,
  owner_id uuid not null default auth.uid(),
  name text not null
);
alter table public.firebase_lists enable row level security;
create policy firebase_lists_own on public.firebase_lists for all to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
grant select, insert, update, delete on public.firebase_lists to authenticated;
"""

# The operator's fix for third-party users: a text owner and `auth.jwt() ->> 'sub'`.
FIREBASE_LISTS_FIXED_SQL = """
drop policy firebase_lists_own on public.firebase_lists;
alter table public.firebase_lists alter column owner_id drop default;
alter table public.firebase_lists alter column owner_id type text;
alter table public.firebase_lists alter column owner_id set default (auth.jwt() ->> 'sub');
create policy firebase_lists_own on public.firebase_lists for all to authenticated
  using (owner_id = (auth.jwt() ->> 'sub')) with check (owner_id = (auth.jwt() ->> 'sub'));
"""


@pytest.fixture(scope="module")
def firebase_standin(pg, providers, jwks):
    """A PostgREST stand-in that, like Supabase's PostgREST with Firebase configured as a
    third-party provider, accepts tokens signed with the project's own keys or Firebase's."""
    _, _, urls, _ = providers
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(FIREBASE_NOTES_SQL)
    standin = StandIn(pg.dsn, JWT_SECRET, jwks_url=[jwks.url, urls["firebase"]], anon_key=ANON_KEY,
                      service_key=SERVICE_KEY)
    standin.start(port=0)
    yield standin
    standin.stop()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("drop table if exists public.firebase_notes, public.firebase_lists")


@pytest.fixture(scope="module")
def firebase_rls(firebase_standin, providers, base_vars, start_worker):
    """The worker in RLS mode in front of `firebase_standin`, accepting Firebase sessions."""
    _, _, urls, _ = providers
    return start_worker({**base_vars, "SUPABASE_URL": firebase_standin.url,
                         "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
                         "THIRD_PARTY_FIREBASE_JWKS_URL": urls["firebase"]})


def test_rls_upload_with_a_firebase_token_lands_rows_owned_by_the_firebase_uid(firebase_rls, providers, pg):
    _, keys, _, _ = providers
    token = keys["firebase"].sign(firebase_claims())
    mine, theirs = str(uuid.uuid4()), str(uuid.uuid4())
    r = upload(firebase_rls, token, upload_body(tx(put("firebase_notes", mine, firebase_uid=FIREBASE_UID, body="hello"))))
    assert r.status_code == 200, r.text
    assert statuses(r) == ["success"]
    # Someone else's uid: RLS refuses it, as PostgREST would.
    r = upload(firebase_rls, token, upload_body(tx(put("firebase_notes", theirs, firebase_uid="x" * 28, body="no"))))
    assert r.status_code == 200 and statuses(r) == ["fatal_error"], r.text
    with psycopg.connect(pg.dsn) as conn:
        rows = conn.execute("select id::text, firebase_uid from public.firebase_notes").fetchall()
    assert rows == [(mine, FIREBASE_UID)]


def test_rls_keyed_by_auth_uid_keeps_a_firebase_users_write_queued_until_the_schema_is_fixed(
        firebase_rls, providers, pg):
    """A schema written for Supabase's own users (`owner_id uuid default auth.uid()`, policies on
    `auth.uid()`) cannot take a Firebase uid, which is not a uuid: PostgreSQL refuses the cast
    with 22P02. That is the operator's schema, not the user's data, so the write waits
    (retryable, nothing written) and lands once the operator moves to a text column and
    `auth.jwt() ->> 'sub'` (docs/third-party-auth.md); before, it was discarded."""
    _, keys, _, _ = providers
    token = keys["firebase"].sign(firebase_claims())
    list_id = str(uuid.uuid4())
    body = upload_body(tx(put("firebase_lists", list_id, name="groceries")))
    r = upload(firebase_rls, token, body)
    assert r.status_code == 503, r.text
    assert statuses(r) == ["retryable_error"], r.text
    failed = failure(r, 0)
    assert failed["code"] == "22P02", failed
    assert "auth.jwt() ->> 'sub'" in failed["message"] and "the upload waits" in failed["message"], failed
    assert int(r.headers["Retry-After"]) >= 60
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        assert conn.execute("select count(*) from public.firebase_lists").fetchone()[0] == 0
        conn.execute(FIREBASE_LISTS_FIXED_SQL)
    r = upload(firebase_rls, token, body)
    assert r.status_code == 200 and statuses(r) == ["success"], r.text
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("select id::text, owner_id from public.firebase_lists").fetchall() == \
            [(list_id, FIREBASE_UID)]


def test_a_non_uuid_value_of_the_users_own_in_a_uuid_column_is_still_the_datas_fault(firebase_rls, providers):
    """Only the caller's own id, which the client cannot choose, keeps a 22P02 queued."""
    _, keys, _, _ = providers
    token = keys["firebase"].sign(firebase_claims())
    r = upload(firebase_rls, token, upload_body(tx(put("firebase_notes", "not-a-uuid", firebase_uid=FIREBASE_UID,
                                                       body="x"))))
    assert r.status_code == 200 and statuses(r) == ["fatal_error"], r.text
    assert failure(r, 0)["code"] == "22P02"


def test_supabase_sessions_upload_beside_firebase_ones_through_the_same_bridge(firebase_rls, firebase_standin,
                                                                              session_keys, pg):
    from tests.e2e.test_token import jwks_token
    user = str(uuid.uuid4())
    token = jwks_token(session_keys, firebase_standin, "ec", "ec-1", user)
    list_id = str(uuid.uuid4())
    r = upload(firebase_rls, token, upload_body(tx(put("lists", list_id, name="groceries", owner_id=user))))
    assert r.status_code == 200 and statuses(r) == ["success"], r.text
    with psycopg.connect(pg.dsn) as conn:
        assert conn.execute("select owner_id::text from public.lists where id = %s", (list_id,)).fetchone() == (user,)


def test_a_provider_the_project_does_not_trust_keeps_uploads_queued_and_says_where_to_add_it(
        providers, base_vars, start_worker, db):
    """Firebase set in the worker, not under the project's Third-party Auth (the default stand-in
    trusts only the project's keys): PostgREST refuses every Firebase session (PGRST301). That
    is the operator's setup: the writes wait at least 60 s a try (they were retried every 5 s as
    an outage, for ever), and the message says where to add the provider."""
    _, keys, urls, _ = providers
    worker = start_worker({**base_vars, "UPLOAD_ATOMIC": "false",
                           "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
                           "THIRD_PARTY_FIREBASE_JWKS_URL": urls["firebase"]})
    token = keys["firebase"].sign(firebase_claims())
    r = upload(worker, token, upload_body(tx(put("lists", str(uuid.uuid4()), name="n", owner_id=FIREBASE_UID))))
    assert r.status_code == 503 and statuses(r) == ["retryable_error"], r.text
    failed = failure(r, 0)
    assert failed["code"] == "PGRST301" and "Third-party Auth" in failed["message"], failed
    assert int(r.headers["Retry-After"]) >= 60
    assert db.execute("select count(*) from public.lists").fetchone() == (0,)


def test_unreachable_provider_keys_are_503_try_again_not_401(providers, base_vars, start_worker):
    from tests.support.pg import refused_port
    _, keys, _, _ = providers
    w = start_worker({**base_vars, "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
                      "THIRD_PARTY_FIREBASE_JWKS_URL": f"http://127.0.0.1:{refused_port()}/jwks.json"})
    r = powersync_token(w, keys["firebase"].sign(firebase_claims()))
    assert_error(r, 503, "Session keys unavailable, try again", "session_keys_unavailable")
    assert r.headers["Retry-After"]
