"""End-to-end tests of the token issuer: the built worker in workerd (wrangler dev), a local
JWKS server, and every issued token verified by PyJWT (an implementation independent of the
worker's signing code) against the worker's own JWKS, with PowerSync's rules."""

from __future__ import annotations

import base64
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e.conftest import ANON_KEY, JWT_SECRET, POWERSYNC_URL, SERVICE_KEY
from tests.support.worker import devtool

ISO_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def verify_like_powersync(worker, token: str, alg: str = "RS256", jwks: list[dict] | None = None,
                          audience: str = POWERSYNC_URL) -> dict:
    """PowerSync's checks: kid found in the JWKS (the worker's, or `jwks`), a key of a type
    PowerSync reads (RSA/EC/OKP, `use` absent or `sig`) whose `alg`, when it has one, is the
    token's, the token's alg the expected one (the key's type: RS256, ES256 or EdDSA),
    aud == POWERSYNC_URL, exp - iat <= 86400, sub present. Uses PyJWT, not the worker's code."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg
    keys = jwks if jwks is not None else worker.get("/.well-known/jwks.json").json()["keys"]
    matching = [k for k in keys if k["kid"] == header["kid"]]
    assert matching, f"kid {header['kid']} not in JWKS"
    jwk = matching[0]
    assert jwk["kty"] in ("RSA", "EC", "OKP") and jwk.get("use", "sig") == "sig", jwk
    assert jwk.get("alg", alg) == alg, jwk
    public_key = jwt.PyJWK(jwk).key
    claims = jwt.decode(token, public_key, algorithms=[alg], audience=audience,
                        options={"require": ["sub", "iat", "exp", "aud"]}, leeway=60)
    assert claims["exp"] - claims["iat"] <= 86400
    assert claims["sub"]
    return claims


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def jwks_token(session_keys, standin, kind: str, kid: str, sub: str, **claims) -> str:
    """A session signed with one of the project's signing keys (kind "ec" or "rsa")."""
    now = int(time.time())
    body = {"iss": f"{standin.url}/auth/v1", "aud": "authenticated", "sub": sub,
            "role": "authenticated", "iat": now, "exp": now + 3600}
    body.update(claims)
    key, alg = (session_keys.ec, "ES256") if kind == "ec" else (session_keys.rsa, "RS256")
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


def es256_token(session_keys, standin, kid="ec-1", **claims) -> str:
    return jwks_token(session_keys, standin, "ec", kid, "es-user", **claims)


def rs256_token(session_keys, standin, kid="rsa-1", **claims) -> str:
    return jwks_token(session_keys, standin, "rsa", kid, "rs-user", **claims)


def assert_error(response, status: int, message: str, code: str | None = None):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == message
    if code:
        assert body["code"] == code
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


# --- success ---------------------------------------------------------------------------------

def test_hs256_session_gets_a_powersync_token_in_the_edge_function_shape(worker, session_token):
    before = int(time.time())
    session = session_token("user-hs", expires_in=9 * 3600)
    r = worker.get("/powersync-token", headers=bearer(session))
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"token", "powersync_url", "expires_at", "user_id"} <= set(body)
    assert body["powersync_url"] == POWERSYNC_URL
    assert body["user_id"] == "user-hs"
    assert ISO_MILLIS.match(body["expires_at"]), body["expires_at"]
    claims = verify_like_powersync(worker, body["token"])
    assert claims["sub"] == "user-hs"
    assert claims["aud"] == POWERSYNC_URL
    assert claims["exp"] - claims["iat"] == 8 * 3600
    assert abs(claims["iat"] - before) <= 5
    expires = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(claims["exp"]))
    assert body["expires_at"] == expires
    assert r.headers["Cache-Control"] == "no-store"


def test_token_expires_with_a_session_that_ends_before_the_ttl(worker, session_token):
    session = session_token("user-short", expires_in=600)
    session_exp = jwt.decode(session, options={"verify_signature": False})["exp"]
    r = worker.get("/powersync-token", headers=bearer(session))
    assert r.status_code == 200, r.text
    claims = verify_like_powersync(worker, r.json()["token"])
    assert claims["exp"] == session_exp
    assert r.json()["expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(session_exp))


def test_outlives_session_gives_a_short_session_the_whole_ttl(start_worker, base_vars, session_token):
    w = start_worker(dict(base_vars, POWERSYNC_TOKEN_OUTLIVES_SESSION="true"))
    r = w.get("/powersync-token", headers=bearer(session_token("user-long", expires_in=600)))
    assert r.status_code == 200, r.text
    claims = verify_like_powersync(w, r.json()["token"])
    assert claims["exp"] - claims["iat"] == 8 * 3600


def test_post_is_accepted_like_get(worker, session_token):
    r = worker.post("/powersync-token", headers=bearer(session_token("user-post")))
    assert r.status_code == 200
    assert verify_like_powersync(worker, r.json()["token"])["sub"] == "user-post"


def test_webcrypto_signature_equals_the_pure_rust_signature(worker, session_token, powersync_key):
    token = worker.get("/powersync-token", headers=bearer(session_token())).json()["token"]
    signing_input, signature = token.rsplit(".", 1)
    reference = devtool("sign", "--key-file", powersync_key["pem_file"], "--input", signing_input)
    assert signature == reference


def test_token_header_names_the_configured_key_id(worker, session_token, powersync_key):
    token = worker.get("/powersync-token", headers=bearer(session_token())).json()["token"]
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": powersync_key["kid"]}


def test_es256_session_is_verified_through_the_jwks(worker, session_keys, standin):
    r = worker.get("/powersync-token", headers=bearer(es256_token(session_keys, standin)))
    assert r.status_code == 200, r.text
    assert verify_like_powersync(worker, r.json()["token"])["sub"] == "es-user"


def test_rs256_session_is_verified_through_the_jwks(worker, session_keys, standin):
    r = worker.get("/powersync-token", headers=bearer(rs256_token(session_keys, standin)))
    assert r.status_code == 200, r.text
    assert verify_like_powersync(worker, r.json()["token"])["sub"] == "rs-user"


def test_jwks_is_cached_between_requests(worker, session_keys, standin, jwks):
    worker.get("/powersync-token", headers=bearer(es256_token(session_keys, standin)))
    fetches = jwks.fetches
    for _ in range(3):
        assert worker.get("/powersync-token", headers=bearer(es256_token(session_keys, standin))).status_code == 200
    assert jwks.fetches == fetches


def test_rotated_session_key_is_fetched_on_unknown_kid(start_worker, base_vars, session_keys, standin, jwks):
    w = start_worker(base_vars)
    assert w.get("/powersync-token", headers=bearer(es256_token(session_keys, standin, kid="ec-1"))).status_code == 200
    fetches = jwks.fetches
    jwks.keys = jwks.keys + [session_keys.jwk("ec", "ec-rotated")]
    try:
        r = w.get("/powersync-token", headers=bearer(es256_token(session_keys, standin, kid="ec-rotated")))
        assert r.status_code == 200, r.text
        assert jwks.fetches == fetches + 1
        # Another unknown kid right after does not hammer the JWKS (rate limit); since no refetch
        # was made for it, it may be a key rotated a moment ago: 503 "try again", not 401.
        for _ in range(2):
            r = w.get("/powersync-token", headers=bearer(es256_token(session_keys, standin, kid="ec-unknown")))
            assert_error(r, 503, "Session keys unavailable, try again", "session_keys_unavailable")
        assert jwks.fetches == fetches + 1
    finally:
        jwks.keys = [k for k in jwks.keys if k["kid"] != "ec-rotated"]


def concurrently(n: int, call) -> list:
    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(lambda _: call(), range(n)))


def test_concurrent_sessions_with_a_cold_key_cache_share_one_jwks_fetch(start_worker, base_vars, session_keys,
                                                                        standin, jwks):
    """Single flight: the first request fetches the JWKS, the others of the isolate wait for
    that fetch instead of fetching too; the same when an unknown kid (a rotation) forces a
    refetch."""
    w = start_worker(base_vars)
    fetches = jwks.fetches
    jwks.delay = 0.5
    try:
        token = es256_token(session_keys, standin, kid="ec-1")
        answers = concurrently(8, lambda: w.get("/powersync-token", headers=bearer(token)))
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        assert jwks.fetches == fetches + 1
        jwks.keys = jwks.keys + [session_keys.jwk("ec", "ec-rotated-together")]
        rotated = es256_token(session_keys, standin, kid="ec-rotated-together")
        answers = concurrently(8, lambda: w.get("/powersync-token", headers=bearer(rotated)))
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        assert jwks.fetches == fetches + 2
    finally:
        jwks.delay = 0.0
        jwks.keys = [k for k in jwks.keys if k["kid"] != "ec-rotated-together"]


def test_unknown_kid_after_its_own_refetch_is_401(start_worker, base_vars, session_keys, standin, jwks):
    w = start_worker(base_vars)
    fetches = jwks.fetches
    r = w.get("/powersync-token", headers=bearer(es256_token(session_keys, standin, kid="ec-never-published")))
    assert_error(r, 401, "Unauthorized", "session_invalid")
    assert jwks.fetches == fetches + 1


def test_jwks_cache_seconds_zero_still_verifies_es256_sessions(start_worker, base_vars, session_keys, standin, jwks):
    w = start_worker(dict(base_vars, SUPABASE_JWKS_CACHE_SECONDS="0"))
    for _ in range(2):
        r = w.get("/powersync-token", headers=bearer(es256_token(session_keys, standin)))
        assert r.status_code == 200, r.text


def test_failed_jwks_fetches_back_off_instead_of_one_fetch_per_request(start_worker, base_vars, session_keys, standin, jwks):
    w = start_worker(base_vars)
    fetches = jwks.fetches
    jwks.fail_with = 500
    try:
        for _ in range(6):  # well within the first second of back-off waits
            r = w.get("/powersync-token", headers=bearer(es256_token(session_keys, standin)))
            assert_error(r, 503, "Session keys unavailable, try again", "session_keys_unavailable")
        assert jwks.fetches - fetches <= 2, jwks.fetches - fetches
    finally:
        jwks.fail_with = None


def test_jwk_private_key_in_base64_uses_its_own_kid(start_worker, base_vars, powersync_key, session_token):
    jwk = json.dumps(dict(powersync_key["private_jwk"], kid="from-the-jwk"))
    vars = {k: v for k, v in base_vars.items() if k != "POWERSYNC_KEY_ID"}
    vars["POWERSYNC_PRIVATE_KEY"] = base64.b64encode(jwk.encode()).decode()
    w = start_worker(vars)
    token = w.get("/powersync-token", headers=bearer(session_token())).json()["token"]
    assert jwt.get_unverified_header(token)["kid"] == "from-the-jwk"
    verify_like_powersync(w, token)


def test_pem_with_literal_newlines_and_custom_claims_and_ttl(start_worker, base_vars, powersync_key, session_token):
    vars = dict(base_vars)
    vars["POWERSYNC_PRIVATE_KEY"] = powersync_key["private_pem"].replace("\n", "\\n")
    vars["POWERSYNC_TOKEN_TTL_SECONDS"] = "600"
    vars["POWERSYNC_COPY_CLAIMS"] = "email,role"
    vars["POWERSYNC_TOKEN_ISSUER"] = "https://issuer.example"
    w = start_worker(vars)
    r = w.get("/powersync-token", headers=bearer(session_token("u-claims", email="c@example.test")))
    assert r.status_code == 200, r.text
    claims = verify_like_powersync(w, r.json()["token"])
    assert claims["exp"] - claims["iat"] == 600
    assert (claims["email"], claims["role"], claims["iss"]) == ("c@example.test", "authenticated", "https://issuer.example")


# --- rejected sessions -----------------------------------------------------------------------

def test_missing_and_blank_authorization_header_is_rejected_with_401(worker):
    for headers in [{}, {"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}]:
        assert_error(worker.get("/powersync-token", headers=headers), 401, "No authorization header", "missing_authorization")


def test_expired_session_is_rejected_with_401_and_code_session_expired(worker, session_token):
    token = session_token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    assert_error(worker.get("/powersync-token", headers=bearer(token)), 401, "Unauthorized", "session_expired")


@pytest.mark.parametrize("claims", [
    {"aud": "anon"}, {"aud": ["other"]}, {"iss": "https://other.supabase.co/auth/v1"}, {"iss": "supabase"},
])
def test_wrong_audience_or_issuer_is_rejected_with_401(worker, session_token, claims):
    assert_error(worker.get("/powersync-token", headers=bearer(session_token(**claims))), 401, "Unauthorized", "session_invalid")


def test_session_without_sub_is_rejected_with_401(worker, session_token):
    assert_error(worker.get("/powersync-token", headers=bearer(session_token(None))), 401, "Unauthorized", "session_invalid")


@pytest.mark.parametrize("key", [ANON_KEY, SERVICE_KEY], ids=["anon", "service_role"])
def test_project_api_keys_are_not_sessions(worker, key):
    assert_error(worker.get("/powersync-token", headers=bearer(key)), 401, "Unauthorized", "session_invalid")


def test_service_role_claims_with_user_shape_are_rejected(worker, session_token):
    token = session_token(role="service_role")
    assert_error(worker.get("/powersync-token", headers=bearer(token)), 401, "Unauthorized")


def test_tampered_signature_is_rejected_with_401(worker, session_token):
    head, payload, sig = session_token().split(".")
    forged_payload = base64.urlsafe_b64encode(json.dumps(
        dict(json.loads(base64.urlsafe_b64decode(payload + "==")), sub="someone-else")).encode()).rstrip(b"=").decode()
    assert_error(worker.get("/powersync-token", headers=bearer(f"{head}.{forged_payload}.{sig}")), 401, "Unauthorized")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    assert_error(worker.get("/powersync-token", headers=bearer(f"{head}.{payload}.{flipped}")), 401, "Unauthorized")


def test_wrong_secret_is_rejected_with_401(worker, standin):
    token = jwt.encode({"iss": f"{standin.url}/auth/v1", "aud": "authenticated", "sub": "x",
                        "exp": int(time.time()) + 600}, "another-secret-that-is-long-enough-1234", algorithm="HS256")
    assert_error(worker.get("/powersync-token", headers=bearer(token)), 401, "Unauthorized")


def test_alg_none_is_rejected_with_401(worker, standin):
    b64 = lambda v: base64.urlsafe_b64encode(json.dumps(v).encode()).rstrip(b"=").decode()
    token = b64({"alg": "none", "typ": "JWT"}) + "." + b64({
        "iss": f"{standin.url}/auth/v1", "aud": "authenticated", "sub": "x", "exp": int(time.time()) + 600}) + "."
    assert_error(worker.get("/powersync-token", headers=bearer(token)), 401, "Unauthorized", "session_invalid")


def test_hs256_token_signed_with_the_public_jwk_is_rejected(worker, session_keys, standin, jwks):
    """alg confusion: HS256 'signed' with the RSA public key's PEM must not verify."""
    pem = session_keys.rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    body = {"iss": f"{standin.url}/auth/v1", "aud": "authenticated", "sub": "x", "exp": int(time.time()) + 600}
    token = jwt.api_jws.PyJWS().encode(json.dumps(body).encode(), pem, algorithm="HS256", headers={"kid": "rsa-1"}) \
        if False else _hs256_raw(body, pem, kid="rsa-1")
    assert_error(worker.get("/powersync-token", headers=bearer(token)), 401, "Unauthorized")


def _hs256_raw(body: dict, secret: bytes, kid: str) -> str:
    import hashlib
    import hmac
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode()) + "." + b64(json.dumps(body).encode())
    return signing_input + "." + b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def test_es256_token_signed_by_an_unknown_key_is_rejected(worker, standin):
    from cryptography.hazmat.primitives.asymmetric import ec
    other = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode({"iss": f"{standin.url}/auth/v1", "aud": "authenticated", "sub": "x",
                        "exp": int(time.time()) + 600}, other, algorithm="ES256", headers={"kid": "ec-1"})
    assert_error(worker.get("/powersync-token", headers=bearer(token)), 401, "Unauthorized")


@pytest.mark.parametrize("header", ["Bearer garbage", "Bearer a.b.c", "Basic dXNlcjpwYXNz", "Bearer " + "x" * 5000])
def test_garbage_authorization_header_is_rejected_with_401(worker, header):
    assert_error(worker.get("/powersync-token", headers={"Authorization": header}), 401, "Unauthorized")


# --- configuration errors --------------------------------------------------------------------

def test_missing_powersync_secrets_are_named_in_a_500(start_worker, base_vars, session_token):
    vars = {k: v for k, v in base_vars.items() if not k.startswith("POWERSYNC_")}
    w = start_worker(vars)
    body = assert_error(w.get("/powersync-token", headers=bearer(session_token())), 500, "PowerSync not configured", "powersync_not_configured")
    assert body["missing"] == ["POWERSYNC_URL", "POWERSYNC_PRIVATE_KEY", "POWERSYNC_KEY_ID"]
    # Missing header is still reported first, as in the Edge Function.
    assert_error(w.get("/powersync-token"), 401, "No authorization header")
    health = w.get("/health")
    assert health.status_code == 503
    assert {p["name"] for p in health.json()["powersync"]["problems"]} >= {"POWERSYNC_URL", "POWERSYNC_PRIVATE_KEY"}


def test_broken_private_key_is_a_500_failed_to_import_with_a_precise_code(start_worker, base_vars, session_token, powersync_key):
    vars = dict(base_vars)
    vars["POWERSYNC_PRIVATE_KEY"] = powersync_key["private_pem"][:300] + "\n-----END PRIVATE KEY-----\n"
    w = start_worker(vars)
    assert_error(w.get("/powersync-token", headers=bearer(session_token())), 500, "Failed to import private key", "private_key_bad_pem")
    assert w.get("/.well-known/jwks.json").status_code == 500
    # The log says why, and never prints the key.
    assert "PEM key could not be read" in w.output()
    assert powersync_key["private_pem"].splitlines()[2] not in w.output()


def test_unreachable_jwks_is_a_503_while_hs256_still_works(start_worker, base_vars, session_keys, standin, session_token):
    from tests.support.pg import refused_port
    vars = dict(base_vars, SUPABASE_JWKS_URL=f"http://127.0.0.1:{refused_port()}/jwks.json")
    w = start_worker(vars)
    r = w.get("/powersync-token", headers=bearer(es256_token(session_keys, standin)))
    assert_error(r, 503, "Session keys unavailable, try again", "session_keys_unavailable")
    assert "Retry-After" in r.headers
    assert w.get("/powersync-token", headers=bearer(session_token())).status_code == 200


def test_remote_session_check_rejects_a_signed_out_session(start_worker, base_vars, session_token, standin):
    w = start_worker(dict(base_vars, SUPABASE_VERIFY_SESSION_REMOTE="true"))
    user = "22222222-2222-4222-8222-222222222222"
    assert w.get("/powersync-token", headers=bearer(session_token(user))).status_code == 200
    standin.revoke(sub=user)
    try:
        assert_error(w.get("/powersync-token", headers=bearer(session_token(user))), 401, "Unauthorized", "session_revoked")
    finally:
        standin.reset()


def test_remote_session_check_with_a_wrong_anon_key_is_500_for_everyone_not_401_revoked(
        start_worker, base_vars, session_token):
    w = start_worker(dict(base_vars, SUPABASE_VERIFY_SESSION_REMOTE="true", SUPABASE_ANON_KEY="not-the-anon-key"))
    r = w.get("/powersync-token", headers=bearer(session_token()))
    assert_error(r, 500, "Session verification not configured", "auth_check_misconfigured")


def test_remote_session_check_without_an_anon_key_is_not_configured(start_worker, base_vars, session_token):
    vars = {k: v for k, v in base_vars.items() if k != "SUPABASE_ANON_KEY"}
    w = start_worker(dict(vars, SUPABASE_VERIFY_SESSION_REMOTE="true"))
    r = w.get("/powersync-token", headers=bearer(session_token()))
    assert_error(r, 500, "Session verification not configured", "session_not_configured")


# --- JWKS, health, CORS, routing -------------------------------------------------------------

def test_jwks_publishes_the_public_key_and_previous_keys(start_worker, base_vars, powersync_key):
    old = dict(powersync_key["public_jwk"], kid="ps-old")
    w = start_worker(dict(base_vars, POWERSYNC_PREVIOUS_PUBLIC_KEYS=json.dumps({"keys": [old]})))
    r = w.get("/.well-known/jwks.json")
    assert r.status_code == 200
    assert "max-age" in r.headers["Cache-Control"]
    keys = r.json()["keys"]
    assert [k["kid"] for k in keys] == [powersync_key["kid"], "ps-old"]
    for key in keys:
        assert set(key) == {"kty", "n", "e", "alg", "use", "kid"}
        assert (key["kty"], key["alg"], key["use"]) == ("RSA", "RS256", "sig")
    assert keys[0]["n"] == powersync_key["public_jwk"]["n"]


def test_health_names_parts_without_values(worker, base_vars):
    r = worker.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["session"]["configured"] and body["powersync"]["configured"]
    for name, value in base_vars.items():
        if len(value) > 8:
            assert value not in r.text, name


def test_secrets_pasted_under_the_wrong_settings_never_reach_health_or_the_log(start_worker, base_vars,
                                                                              powersync_key):
    """Problems quote the value they find wrong; a private key, a JWT secret or a service key
    pasted under another setting's name is left out of `/health` (unauthenticated) and the log."""
    pem = powersync_key["private_pem"].strip()
    jwt_secret = base_vars["SUPABASE_JWT_SECRET"]
    w = start_worker(dict(base_vars, CORS_ALLOWED_ORIGINS=pem, UPLOAD_TABLES=jwt_secret,
                          STORAGE_BUCKETS=jwt_secret.lower(), UPLOAD_MODE=jwt_secret))
    r = w.get("/health")
    assert r.status_code == 200, "the token still works: " + r.text
    named = {p["name"] for part in r.json().values() if isinstance(part, dict) for p in part.get("problems", [])}
    assert {"CORS_ALLOWED_ORIGINS", "UPLOAD_TABLES", "UPLOAD_MODE"} <= named, r.text
    # the problems are logged when the isolate reads its configuration, before the request's line
    assert w.log_line(r)["route"] == "health"
    log = w.output()
    assert log.count("config_problem") >= 3, log[-2000:]
    for secret in (pem.splitlines()[1], jwt_secret, jwt_secret.lower()):
        assert secret not in r.text and secret.lower() not in r.text.lower(), r.text
        assert secret not in log, "the configuration's log lines quote it"


def test_a_public_key_as_the_jwt_secret_is_refused_so_no_one_can_sign_sessions(start_worker, base_vars,
                                                                               session_token):
    """SUPABASE_JWT_SECRET set to the anon key (public): a session anyone signs with it must not
    get a token. /health names the setting; every session route answers session_not_configured."""
    w = start_worker(dict(base_vars, SUPABASE_JWT_SECRET=ANON_KEY))
    health = w.get("/health").json()
    problems = health["session"]["problems"]
    assert [p["name"] for p in problems] == ["SUPABASE_JWT_SECRET"], problems
    assert "anyone could sign a session" in problems[0]["message"] and ANON_KEY not in json.dumps(health)
    forged = session_token("00000000-0000-4000-8000-00000000beef", secret=ANON_KEY)
    r = w.get("/powersync-token", headers=bearer(forged))
    assert (r.status_code, r.json()["code"]) == (500, "session_not_configured"), r.text


def test_cors_preflight_is_answered(worker):
    r = worker.request("OPTIONS", "/powersync-token", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()


def test_configured_cors_origins_are_enforced(start_worker, base_vars, session_token):
    w = start_worker(dict(base_vars, CORS_ALLOWED_ORIGINS="https://app.example"))
    ok = w.get("/powersync-token", headers=dict(bearer(session_token()), Origin="https://app.example"))
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    other = w.get("/powersync-token", headers=dict(bearer(session_token()), Origin="https://evil.example"))
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = w.request("OPTIONS", "/powersync-token", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Methods" not in pre.headers


def test_unknown_path_is_404_and_wrong_method_is_405_in_the_json_shape(worker):
    assert_error(worker.get("/nope"), 404, "Not found", "not_found")
    r = worker.request("DELETE", "/powersync-token")
    assert_error(r, 405, "Method not allowed; use GET, POST, OPTIONS", "method_not_allowed")
    assert r.headers["Allow"] == "GET, POST, OPTIONS"
    assert worker.request("PUT", "/.well-known/jwks.json").status_code == 405


def test_log_lines_are_structured_and_hold_no_tokens(worker, session_token):
    token = session_token("log-user")
    ok = worker.log_line(worker.get("/powersync-token", headers=bearer(token)))
    failed = worker.log_line(worker.get("/powersync-token", headers=bearer(token[:-4] + "AAAA")))
    assert (ok["route"], ok["status"]) == ("token", 200)
    assert (failed["route"], failed["status"], failed["code"]) == ("token", 401, "session_invalid")
    assert "signature" in failed["detail"]
    for l in [l for l in worker.log_lines() if l.get("route") == "token"]:
        assert {"request_id", "duration_ms", "method"} <= set(l)
    out = worker.output()
    assert token.split(".")[2] not in out and JWT_SECRET not in out


@pytest.mark.parametrize("kind", ["es256", "rs256"])
def test_jwks_signed_session_with_tampered_payload_is_rejected(worker, session_keys, standin, kind):
    make = es256_token if kind == "es256" else rs256_token
    head, payload, sig = make(session_keys, standin).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged = base64.urlsafe_b64encode(json.dumps(dict(claims, sub="someone-else")).encode()).rstrip(b"=").decode()
    r = worker.get("/powersync-token", headers=bearer(f"{head}.{forged}.{sig}"))
    assert_error(r, 401, "Unauthorized", "session_invalid")
    assert worker.log_line(r)["detail"] == "signature does not verify"


# --- key types: ES256 (P-256) and EdDSA (Ed25519) beside RS256 -------------------------------

def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def sec1_pem(private_pem: str) -> str:
    """The same P-256 key as SEC1 `EC PRIVATE KEY` PEM (what `openssl ecparam -genkey` writes)."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


KEY_FORMS = {
    "pkcs8 pem": lambda key: key["private_pem"],
    "sec1 pem with literal \\n": lambda key: sec1_pem(key["private_pem"]).replace("\n", "\\n"),
    "pem with literal \\n": lambda key: key["private_pem"].replace("\n", "\\n"),
    "base64url of the private jwk": lambda key: base64.urlsafe_b64encode(json.dumps(key["private_jwk"]).encode()).decode().rstrip("="),
}


@pytest.mark.parametrize("alg,form", [("ES256", "pkcs8 pem"), ("ES256", "sec1 pem with literal \\n"),
                                      ("EdDSA", "pem with literal \\n"), ("EdDSA", "base64url of the private jwk")])
def test_es256_and_eddsa_keys_issue_tokens_that_verify_against_the_worker_s_jwks(
        start_worker, base_vars, signing_key_of, session_token, alg, form):
    key = signing_key_of(alg)
    w = start_worker(dict(base_vars, POWERSYNC_PRIVATE_KEY=KEY_FORMS[form](key), POWERSYNC_KEY_ID=key["kid"]))
    jwks = w.get("/.well-known/jwks.json").json()["keys"]
    assert jwks == [key["public_jwk"]]  # kty/crv/x(/y), alg, use: sig, kid: what the dev tool printed
    expected = {"ES256": {"kty", "crv", "x", "y", "alg", "use", "kid"}, "EdDSA": {"kty", "crv", "x", "alg", "use", "kid"}}[alg]
    assert set(jwks[0]) == expected
    assert (jwks[0]["kty"], jwks[0]["crv"]) == {"ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}[alg]
    r = w.get("/powersync-token", headers=bearer(session_token("user-" + alg, expires_in=9 * 3600)))
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert jwt.get_unverified_header(token) == {"alg": alg, "typ": "JWT", "kid": key["kid"]}
    claims = verify_like_powersync(w, token, alg)
    assert claims["sub"] == "user-" + alg and claims["exp"] - claims["iat"] == 8 * 3600
    assert len(b64url_decode(token.rsplit(".", 1)[1])) == 64  # ES256: r || s (JWS form); Ed25519: 64 bytes


def test_webcrypto_ed25519_signature_equals_the_pure_rust_signature(start_worker, base_vars, signing_key_of, session_token):
    """Ed25519 is deterministic like RS256: WebCrypto and the pure-Rust signer agree byte for byte."""
    key = signing_key_of("EdDSA")
    w = start_worker(dict(base_vars, POWERSYNC_PRIVATE_KEY=key["private_pem"], POWERSYNC_KEY_ID=key["kid"]))
    for user in ["ed-a", "ed-b"]:
        token = w.get("/powersync-token", headers=bearer(session_token(user))).json()["token"]
        signing_input, signature = token.rsplit(".", 1)
        assert signature == devtool("sign", "--key-file", key["pem_file"], "--input", signing_input)


def test_rotation_from_rsa_to_ed25519_keeps_old_tokens_valid(start_worker, worker, base_vars, powersync_key,
                                                            signing_key_of, session_token):
    """A new Ed25519 key with the previous RSA key in POWERSYNC_PREVIOUS_PUBLIC_KEYS: the JWKS
    lists both (new first), tokens from before the rotation (RS256, the shared worker's) still
    verify against it, and new tokens are EdDSA."""
    old_token = worker.get("/powersync-token", headers=bearer(session_token("rotating-user"))).json()["token"]
    new_key = signing_key_of("EdDSA")
    w = start_worker(dict(base_vars, POWERSYNC_PRIVATE_KEY=new_key["private_pem"], POWERSYNC_KEY_ID=new_key["kid"],
                          POWERSYNC_PREVIOUS_PUBLIC_KEYS=json.dumps({"keys": [powersync_key["public_jwk"]]})))
    keys = w.get("/.well-known/jwks.json").json()["keys"]
    assert keys == [new_key["public_jwk"], powersync_key["public_jwk"]]
    assert [(k["kty"], k["alg"]) for k in keys] == [("OKP", "EdDSA"), ("RSA", "RS256")]
    assert verify_like_powersync(w, old_token, "RS256")["sub"] == "rotating-user"
    new_token = w.get("/powersync-token", headers=bearer(session_token("rotating-user"))).json()["token"]
    assert verify_like_powersync(w, new_token, "EdDSA")["sub"] == "rotating-user"
    # and back: an RSA key with the Ed25519 key as the previous one
    back = start_worker(dict(base_vars, POWERSYNC_PREVIOUS_PUBLIC_KEYS=json.dumps([new_key["public_jwk"]])))
    assert verify_like_powersync(back, new_token, "EdDSA")["sub"] == "rotating-user"


@pytest.mark.parametrize("make_key,code", [
    (lambda key: _p384_pem(), "private_key_unsupported_curve"),
    (lambda key: json.dumps({k: v for k, v in key["private_jwk"].items() if k != "d"}), "private_key_public_only"),
], ids=["p384", "jwk-without-d"])
def test_unusable_key_types_are_a_500_with_a_precise_code(start_worker, base_vars, signing_key_of, session_token,
                                                          make_key, code):
    w = start_worker(dict(base_vars, POWERSYNC_PRIVATE_KEY=make_key(signing_key_of("ES256"))))
    assert_error(w.get("/powersync-token", headers=bearer(session_token())), 500, "Failed to import private key", code)
    problems = w.get("/health").json()["powersync"]["problems"]
    assert [p["name"] for p in problems] == ["POWERSYNC_PRIVATE_KEY"]


def _p384_pem() -> str:
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP384R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
