#!/usr/bin/env bash
# Smoke test of a running worker, local (`make dev`) or deployed:
#
#   scripts/smoke.sh http://127.0.0.1:8787
#   SMOKE_SESSION_TOKEN=<a Supabase access token> scripts/smoke.sh https://<worker>.workers.dev
#
# Checks, in order, stopping at the first failure (exit 1; 2 for bad usage):
#   health       GET /health: 200, "status": "ok", and no part lists a problem (the token route
#                can work while uploads cannot: a deployment that serves no uploads or files
#                names those parts in SMOKE_IGNORE_PARTS, e.g. SMOKE_IGNORE_PARTS=upload,files)
#   jwks         GET /.well-known/jwks.json: every key has a kid and the fields of its type
#                (RSA n/e with alg RS256, EC P-256 x/y with ES256, OKP Ed25519 x with EdDSA)
#   token        GET /powersync-token with the session: 200, token/powersync_url/endpoint/
#                expires_at/user_id; the token is signed by the JWKS key its kid names, with that
#                key's alg (RS256 checked with python3 alone; ES256 and EdDSA need openssl),
#                sub = user_id
#   no-auth      no Authorization header: 401 "No authorization header"
#   bad-token    a malformed session token: 401 "Unauthorized"
#   upload       (SMOKE_UPLOAD=1) POST {"transactions":[]} to /powersync-upload: 200 {"results":[]}
#   upload-body  (SMOKE_UPLOAD_BODY set) POST that JSON: 200 and every result "success"
#                (it really writes: use a row you may create, e.g. in a test table)
#
# The session token is $SMOKE_SESSION_TOKEN, or else one minted by `target/debug/devtool mint`
# with the local dev secret (.dev.vars, or SUPABASE_JWT_SECRET/SUPABASE_URL in the environment):
# that only works against a worker with that same secret, i.e. local dev.
# SMOKE_PUBLIC=1 runs only the checks that need no session (health, jwks, no-auth, bad-token):
# what CI can check after a deploy, where no user's access token is at hand. It says so on its
# last line; it cannot be combined with the upload checks.
# Prints one line per check ("ok   health", "FAIL token: <why>"). Needs bash, curl and python3.
# SMOKE_TIMEOUT (seconds, default 30) bounds each request.
set -euo pipefail

if [ $# -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 <base-url>   e.g. $0 http://127.0.0.1:8787" >&2
  exit 2
fi
BASE=${1%/}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIMEOUT=${SMOKE_TIMEOUT:-30}
WORK=$(mktemp -d)
umask 077
trap 'rm -rf "$WORK"' EXIT

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL setup: $tool is not installed"; exit 1; }
done

# request METHOD PATH [curl args...]: the body goes to $WORK/body, the status to $WORK/status.
request() {
  local method=$1 path=$2
  shift 2
  if ! curl -sS --max-time "$TIMEOUT" -X "$method" -o "$WORK/body" -w '%{http_code}' \
       "$@" "$BASE$path" >"$WORK/status" 2>"$WORK/curl"; then
    echo "$method $path: $(tr -s '\n' ' ' <"$WORK/curl" | sed 's/ *$//')"
    return 1
  fi
}

# verify CHECK [args...]: judges $WORK/status and $WORK/body; prints a detail (ok) or why (fail).
verify() {
  python3 - "$WORK" "$@" <<'PY'
import base64, hashlib, json, re, sys
from datetime import datetime, timezone

work, check, args = sys.argv[1], sys.argv[2], sys.argv[3:]
status = int(open(f"{work}/status").read().strip() or 0)
raw = open(f"{work}/body", "rb").read()


class Fail(Exception):
    pass


def body():
    try:
        return json.loads(raw)
    except ValueError:
        text = raw[:200].decode("utf-8", "replace")
        raise Fail(f"HTTP {status}, not JSON: {text!r}")


def want(code):
    if status != code:
        detail = raw[:300].decode("utf-8", "replace").strip()
        raise Fail(f"HTTP {status} (expected {code}): {detail}")


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_parts(token, what):
    parts = token.split(".")
    if len(parts) != 3:
        raise Fail(f"{what} is not a JWT")
    try:
        return json.loads(b64url(parts[0])), json.loads(b64url(parts[1])), parts
    except ValueError:
        raise Fail(f"{what} is not a readable JWT")


def openssl_valid(public_der, signing_input, signature, command):
    """Verifies with the openssl command line (python3's standard library has no EC or EdDSA)."""
    import shutil, subprocess
    if not shutil.which("openssl"):
        raise Fail("openssl is not installed: it is needed to check an ES256 or EdDSA token")
    pem = ("-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(public_der).decode()
           + "-----END PUBLIC KEY-----\n")
    for name, data in (("pub.pem", pem.encode()), ("signed", signing_input), ("sig", signature)):
        with open(f"{work}/{name}", "wb") as f:
            f.write(data)
    args = [a.format(work=work) for a in command]
    done = subprocess.run(["openssl", *args], capture_output=True, timeout=30)
    said = (done.stdout + done.stderr).decode("utf-8", "replace")
    if done.returncode == 0:
        return True
    if "verification failure" in said.lower():
        return False
    # not a verdict on the signature: openssl itself could not check it (too old for -rawin, …)
    first = next((line for line in said.splitlines() if line.strip()), f"exit {done.returncode}")
    raise Fail(f"openssl could not check the signature: {first.strip()[:200]}")


def der_integer(value):
    value = value.lstrip(b"\x00") or b"\x00"
    if value[0] & 0x80:
        value = b"\x00" + value
    return b"\x02" + bytes([len(value)]) + value


def es256_valid(jwk, signing_input, signature):
    """ECDSA P-256 with SHA-256; the JWS signature is r || s, openssl wants it DER-encoded."""
    if len(signature) != 64:
        return False
    point = b"\x04" + b64url(jwk["x"]) + b64url(jwk["y"])
    der = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + point
    pair = der_integer(signature[:32]) + der_integer(signature[32:])
    return openssl_valid(der, signing_input, b"\x30" + bytes([len(pair)]) + pair,
                         ["dgst", "-sha256", "-verify", "{work}/pub.pem",
                          "-signature", "{work}/sig", "{work}/signed"])


def eddsa_valid(jwk, signing_input, signature):
    der = bytes.fromhex("302a300506032b6570032100") + b64url(jwk["x"])
    return openssl_valid(der, signing_input, signature,
                         ["pkeyutl", "-verify", "-pubin", "-inkey", "{work}/pub.pem", "-rawin",
                          "-in", "{work}/signed", "-sigfile", "{work}/sig"])


def rs256_valid(jwk, signing_input, signature):
    """RSASSA-PKCS1-v1_5 with SHA-256, verified with the public key only (stdlib)."""
    n = int.from_bytes(b64url(jwk["n"]), "big")
    e = int.from_bytes(b64url(jwk["e"]), "big")
    size = (n.bit_length() + 7) // 8
    s = int.from_bytes(signature, "big")
    if len(signature) != size or s >= n:
        return False
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    digest = hashlib.sha256(signing_input).digest()
    expected = b"\x00\x01" + b"\xff" * (size - 3 - len(digest_info) - len(digest)) + b"\x00"
    return pow(s, e, n).to_bytes(size, "big") == expected + digest_info + digest


# kty -> (its fields besides kid, its crv, its alg, the signature check)
KEY_TYPES = {
    "RSA": (("n", "e"), None, "RS256", rs256_valid),
    "EC": (("crv", "x", "y"), "P-256", "ES256", es256_valid),
    "OKP": (("crv", "x"), "Ed25519", "EdDSA", eddsa_valid),
}


PARTS = ("session", "powersync", "upload", "files", "worker")


def health(ignored=""):
    data = body()
    ignore = {part.strip() for part in ignored.split(",") if part.strip()}
    unknown = sorted(ignore - set(PARTS))
    if unknown:
        raise Fail(f"SMOKE_IGNORE_PARTS names no part: {', '.join(unknown)} "
                   f"(the parts: {', '.join(PARTS)})")
    problems = {part: [p.get("name", "?") for p in data[part].get("problems") or []]
                for part in PARTS if isinstance(data.get(part), dict)}
    listed = "; ".join(f"{part}: {', '.join(names)}" for part, names in problems.items() if names)
    if status != 200 or data.get("status") != "ok":
        raise Fail(f"HTTP {status}, status {data.get('status')!r}" + (f" ({listed})" if listed else ""))
    broken = [part for part, names in problems.items() if names and part not in ignore]
    if broken:
        raise Fail(f"the token route works, but {', '.join(broken)} cannot ({listed}); "
                   f"a deployment that does not serve a part names it in SMOKE_IGNORE_PARTS")
    skipped = [part for part, names in problems.items() if names and part in ignore]
    return f"version {data.get('version', '?')}" + (
        f"; not served: {', '.join(skipped)}" if skipped else "")


def jwks():
    want(200)
    keys = body().get("keys")
    if not isinstance(keys, list) or not keys:
        raise Fail("no keys")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in KEY_TYPES:
            raise Fail(f"a key's kty is not RSA, EC or OKP: {json.dumps(key)[:200]}")
        fields, crv, alg, _ = KEY_TYPES[key["kty"]]
        absent = [f for f in ("kid", *fields) if not key.get(f)]
        if absent:
            raise Fail(f"a key lacks {', '.join(absent)}: {json.dumps(key)[:200]}")
        if key.get("crv") != crv or key.get("alg") != alg:
            raise Fail(f"key {key['kid']}: kty {key['kty']!r} with crv {key.get('crv')!r} "
                       f"and alg {key.get('alg')!r} (expected crv {crv!r}, alg {alg!r})")
    with open(f"{work}/jwks.json", "wb") as f:
        f.write(raw)
    return "kids " + ", ".join(key["kid"] for key in keys)


def token():
    want(200)
    data = body()
    fields = ("token", "powersync_url", "endpoint", "expires_at", "user_id")
    absent = [f for f in fields if not isinstance(data.get(f), str) or not data[f]]
    if absent:
        raise Fail(f"body lacks {', '.join(absent)}: {raw[:300].decode('utf-8', 'replace')}")
    if data["endpoint"] != data["powersync_url"]:
        raise Fail(f"endpoint {data['endpoint']!r} != powersync_url {data['powersync_url']!r}")
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", data["expires_at"]):
        raise Fail(f"expires_at {data['expires_at']!r} is not an ISO 8601 UTC time")
    session = open(f"{work}/session").read().strip()
    _, session_claims, _ = jwt_parts(session, "the session token")
    if "sub" in session_claims and data["user_id"] != session_claims["sub"]:
        raise Fail(f"user_id {data['user_id']!r} != the session's sub {session_claims['sub']!r}")
    header, claims, parts = jwt_parts(data["token"], "token")
    keys = json.load(open(f"{work}/jwks.json"))["keys"]
    key = next((k for k in keys if k.get("kid") == header.get("kid")), None)
    if key is None:
        raise Fail(f"token kid {header.get('kid')!r} is not in the JWKS")
    if header.get("alg") != key["alg"]:
        raise Fail(f"token alg {header.get('alg')!r}, but JWKS key {key['kid']} is {key['alg']}")
    valid = KEY_TYPES[key["kty"]][3]
    if not valid(key, f"{parts[0]}.{parts[1]}".encode(), b64url(parts[2])):
        raise Fail(f"token signature does not verify with JWKS key {key['kid']}")
    if claims.get("sub") != data["user_id"]:
        raise Fail(f"token sub {claims.get('sub')!r} != user_id {data['user_id']!r}")
    aud = claims.get("aud")
    if data["powersync_url"] not in (aud if isinstance(aud, list) else [aud]):
        raise Fail(f"token aud {aud!r} does not contain {data['powersync_url']!r}")
    exp = datetime.fromtimestamp(claims.get("exp", 0), timezone.utc)
    if exp <= datetime.now(timezone.utc):
        raise Fail(f"token already expired ({exp.isoformat()})")
    return (f"user {data['user_id']}, kid {key['kid']} ({key['alg']}), "
            f"expires {data['expires_at']}")


def error(code, message):
    want(int(code))
    data = body()
    if data.get("error") != message:
        raise Fail(f"error {data.get('error')!r}, expected {message!r}")
    return f"{code} {message!r}, code {data.get('code')}"


def upload_empty():
    want(200)
    results = body().get("results")
    if results != []:
        raise Fail(f"results {json.dumps(results)[:300]}, expected []")
    return "200 {\"results\":[]}"


def upload_body():
    want(200)
    results = body().get("results")
    if not isinstance(results, list) or not results:
        raise Fail(f"no results: {raw[:300].decode('utf-8', 'replace')}")
    failed = [r for r in results if not isinstance(r, dict) or r.get("status") != "success"]
    if failed:
        raise Fail(f"{len(failed)} of {len(results)} transactions not applied: "
                   + json.dumps(failed[0])[:300])
    return f"{len(results)} transaction(s) applied"


checks = {"health": health, "jwks": jwks, "token": token, "error": error,
          "upload": upload_empty, "upload-body": upload_body}
try:
    print(checks[check](*args))
except Fail as e:
    print(e)
    sys.exit(1)
PY
}

# check NAME FUNCTION: runs FUNCTION (a request and a verify); one line; exits on failure.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok   $name${out:+  ($out)}"
  else
    out=${out//$'\n'/ }
    echo "FAIL $name: ${out:0:2000}"
    exit 1
  fi
}

session_token() {
  if [ -n "${SMOKE_SESSION_TOKEN:-}" ]; then
    printf '%s' "$SMOKE_SESSION_TOKEN"
  elif [ -x "$ROOT/target/debug/devtool" ]; then
    (cd "$ROOT" && target/debug/devtool mint) || return 1
  else
    echo "SMOKE_SESSION_TOKEN is not set and target/debug/devtool is missing (make dev builds it)" >&2
    return 1
  fi
}

check_health() { request GET /health && verify health "${SMOKE_IGNORE_PARTS:-}"; }
check_jwks() { request GET /.well-known/jwks.json && verify jwks; }
check_token() {
  if ! session_token >"$WORK/session" 2>"$WORK/session.err" || [ ! -s "$WORK/session" ]; then
    echo "no session token: $(cat "$WORK/session.err")"
    return 1
  fi
  # The header goes through a file (mode 600 in a private directory), not the command line.
  printf 'Authorization: Bearer %s\n' "$(cat "$WORK/session")" >"$WORK/auth"
  request GET /powersync-token -H "@$WORK/auth" || return 1
  verify token && return 0
  if [ -z "${SMOKE_SESSION_TOKEN:-}" ]; then
    echo "(minted with the local dev secret: against a deployment, set SMOKE_SESSION_TOKEN)"
  fi
  return 1
}
check_no_auth() { request GET /powersync-token && verify error 401 "No authorization header"; }
check_bad_token() {
  request GET /powersync-token -H "Authorization: Bearer smoke.not-a.token" &&
    verify error 401 "Unauthorized"
}
check_upload() {
  request POST /powersync-upload -H "@$WORK/auth" \
    -H "Content-Type: application/json" --data-binary '{"transactions":[]}' && verify upload
}
check_upload_body() {
  printf '%s' "$SMOKE_UPLOAD_BODY" >"$WORK/upload.json"
  request POST /powersync-upload -H "@$WORK/auth" \
    -H "Content-Type: application/json" --data-binary "@$WORK/upload.json" && verify upload-body
}

PUBLIC=${SMOKE_PUBLIC:-}
case "$PUBLIC" in
  "" | 0) PUBLIC= ;;
  1)
    if [ "${SMOKE_UPLOAD:-}" = 1 ] || [ -n "${SMOKE_UPLOAD_BODY:-}" ]; then
      echo "SMOKE_PUBLIC=1 runs no check that needs a session: drop SMOKE_UPLOAD/SMOKE_UPLOAD_BODY" >&2
      exit 2
    fi ;;
  *) echo "SMOKE_PUBLIC must be 1 or unset, not '$PUBLIC'" >&2; exit 2 ;;
esac

echo "smoke test of $BASE"
check health check_health
check jwks check_jwks
[ -n "$PUBLIC" ] || check token check_token
check no-auth check_no_auth
check bad-token check_bad_token
if [ "${SMOKE_UPLOAD:-}" = 1 ]; then
  check upload check_upload
fi
if [ -n "${SMOKE_UPLOAD_BODY:-}" ]; then
  check upload-body check_upload_body
fi
if [ -n "$PUBLIC" ]; then
  echo "all public checks passed (SMOKE_PUBLIC=1: no session, so no token or upload was checked)"
else
  echo "all checks passed"
fi
