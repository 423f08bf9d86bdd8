"""scripts/smoke.sh against the worker in workerd (`wrangler dev`): it passes against a complete
configuration (including a real upload that lands in PostgreSQL) with each PowerSync key type,
and against a broken one it prints a FAIL line and stops at the first failure. Its signature
checks are run against a small stand-in worker too, which can hand out a forged token."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from tests.e2e.conftest import JWT_SECRET, make_token
from tests.support.worker import DEVTOOL

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "scripts/smoke.sh"
ALL_CHECKS = ["health", "jwks", "token", "no-auth", "bad-token", "upload", "upload-body"]


def smoke(url: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SMOKE_")}
    return subprocess.run(["bash", str(SMOKE), url], env=dict(clean, **env), cwd=ROOT,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def check_lines(result: subprocess.CompletedProcess) -> list[tuple[str, str, str]]:
    """(ok|FAIL, check name, rest) for every check line, in order."""
    print(result.stdout, result.stderr)
    lines = []
    for line in result.stdout.splitlines():
        if line.startswith("ok   "):
            name, _, rest = line[5:].partition("  ")
            lines.append(("ok", name, rest))
        elif line.startswith("FAIL "):
            name, _, rest = line[5:].partition(": ")
            lines.append(("FAIL", name, rest))
    return lines


def test_smoke_passes_against_a_configured_worker_and_the_upload_lands(worker, session_token,
                                                                       db):
    sub, list_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"transactions": [{"transaction_id": 1, "crud": [
        {"op": "PUT", "type": "lists", "id": list_id,
         "data": {"name": "smoke test list", "owner_id": sub}}]}]}
    result = smoke(worker.url, SMOKE_SESSION_TOKEN=session_token(sub), SMOKE_UPLOAD="1",
                   SMOKE_UPLOAD_BODY=json.dumps(body))
    lines = check_lines(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(status, name) for status, name, _ in lines] == [("ok", n) for n in ALL_CHECKS]
    details = {name: rest for _, name, rest in lines}
    assert f"user {sub}" in details["token"]
    assert "1 transaction(s) applied" in details["upload-body"]
    assert result.stdout.rstrip().endswith("all checks passed")
    row = db.execute("select name, owner_id::text from public.lists where id = %s",
                     (list_id,)).fetchone()
    assert row == ("smoke test list", sub)


def test_smoke_mints_a_local_dev_session_token_when_none_is_given(worker, standin, tmp_path):
    """Without SMOKE_SESSION_TOKEN the script mints one with `target/debug/devtool mint`, which
    reads the secret from the repository's .dev.vars (`make dev`). Run from a copy of the
    repository layout so that a developer's own .dev.vars does not interfere."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SMOKE, tmp_path / "scripts/smoke.sh")
    (tmp_path / "target/debug").mkdir(parents=True)
    (tmp_path / "target/debug/devtool").symlink_to(DEVTOOL)
    (tmp_path / ".dev.vars").write_text(
        f"SUPABASE_URL={standin.url}\nSUPABASE_JWT_SECRET={JWT_SECRET}\n")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SMOKE_", "SUPABASE_", "POWERSYNC_"))}
    result = subprocess.run(["bash", str(tmp_path / "scripts/smoke.sh"), worker.url], env=clean,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    lines = check_lines(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [name for _, name, _ in lines] == ALL_CHECKS[:5]
    assert "user 00000000-0000-4000-8000-000000000001" in lines[2][2]


def test_smoke_fails_at_health_when_the_powersync_secrets_are_missing(start_worker, base_vars,
                                                                      session_token):
    broken = start_worker({k: v for k, v in base_vars.items() if not k.startswith("POWERSYNC_")})
    try:
        result = smoke(broken.url, SMOKE_SESSION_TOKEN=session_token(), SMOKE_UPLOAD="1")
    finally:
        broken.stop()
    lines = check_lines(result)
    assert result.returncode != 0
    # The first check fails and nothing runs after it.
    assert [(status, name) for status, name, _ in lines] == [("FAIL", "health")]
    assert "POWERSYNC_PRIVATE_KEY" in lines[0][2], lines[0][2]
    assert result.stdout.rstrip().splitlines()[-1].startswith("FAIL health: ")
    assert "all checks passed" not in result.stdout


def test_smoke_fails_at_health_when_uploads_cannot_work_though_tokens_can(start_worker,
                                                                       base_vars):
    """The owner column in rls mode is an upload problem: /health stays 200 "ok" (the token
    route works) while every upload answers 500. The smoke test fails on it unless the
    deployment says it serves no uploads (SMOKE_IGNORE_PARTS)."""
    broken = start_worker(dict(base_vars, UPLOAD_OWNER_COLUMN="owner_id"))
    health = broken.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert [p["name"] for p in health.json()["upload"]["problems"]] == ["UPLOAD_OWNER_COLUMN"]
    result = smoke(broken.url, SMOKE_PUBLIC="1")
    lines = check_lines(result)
    assert result.returncode == 1
    assert [(status, name) for status, name, _ in lines] == [("FAIL", "health")]
    assert "upload cannot (upload: UPLOAD_OWNER_COLUMN)" in lines[0][2], lines[0][2]
    served_elsewhere = smoke(broken.url, SMOKE_PUBLIC="1", SMOKE_IGNORE_PARTS="upload")
    lines = check_lines(served_elsewhere)
    assert served_elsewhere.returncode == 0, served_elsewhere.stdout
    assert lines[0][:2] == ("ok", "health") and lines[0][2].endswith("; not served: upload)"), lines[0]
    misspelt = smoke(broken.url, SMOKE_PUBLIC="1", SMOKE_IGNORE_PARTS="uploads")
    assert misspelt.returncode == 1
    assert "SMOKE_IGNORE_PARTS names no part: uploads" in check_lines(misspelt)[0][2]


def test_smoke_stops_at_the_first_failing_check(worker, standin):
    """A session signed with the wrong secret: health and jwks pass, token fails, the rest
    (including the upload) never runs."""
    forged = make_token(str(uuid.uuid4()), secret="not-the-project-secret-but-32-chars-long",
                        iss=f"{standin.url}/auth/v1")
    result = smoke(worker.url, SMOKE_SESSION_TOKEN=forged, SMOKE_UPLOAD="1")
    lines = check_lines(result)
    assert result.returncode == 1
    assert [(status, name) for status, name, _ in lines] == [
        ("ok", "health"), ("ok", "jwks"), ("FAIL", "token")]
    assert "HTTP 401" in lines[2][2] and "Unauthorized" in lines[2][2]
    assert result.stdout.rstrip().splitlines()[-1].startswith("FAIL token: ")


def test_smoke_needs_a_base_url():
    result = subprocess.run(["bash", str(SMOKE)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_smoke_checks_es256_and_eddsa_tokens_against_the_jwks(start_worker, base_vars,
                                                               signing_key_of, session_token,
                                                               alg):
    key = signing_key_of(alg)
    w = start_worker(dict(base_vars, POWERSYNC_PRIVATE_KEY=key["private_pem"],
                          POWERSYNC_KEY_ID=key["kid"]))
    result = smoke(w.url, SMOKE_SESSION_TOKEN=session_token("smoke-" + alg))
    lines = check_lines(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(status, name) for status, name, _ in lines] == [("ok", n) for n in ALL_CHECKS[:5]]
    assert f"kid {key['kid']} ({alg})" in lines[2][2], lines[2][2]


def test_smoke_public_runs_only_the_checks_that_need_no_session(worker, tmp_path):
    """SMOKE_PUBLIC=1, what CI runs after a deploy: no session token and no dev tool needed (run
    from a copy of the script, where no target/debug/devtool exists)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SMOKE, tmp_path / "scripts/smoke.sh")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SMOKE_", "SUPABASE_", "POWERSYNC_"))}
    result = subprocess.run(["bash", str(tmp_path / "scripts/smoke.sh"), worker.url],
                            env=dict(clean, SMOKE_PUBLIC="1"), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    lines = check_lines(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [(status, name) for status, name, _ in lines] == [
        ("ok", "health"), ("ok", "jwks"), ("ok", "no-auth"), ("ok", "bad-token")]
    assert "no token or upload was checked" in result.stdout.rstrip().splitlines()[-1]
    refused = smoke(worker.url, SMOKE_PUBLIC="1", SMOKE_UPLOAD="1")
    assert refused.returncode == 2 and "SMOKE_PUBLIC=1" in refused.stderr
    assert "smoke test of" not in refused.stdout


# --- the script's signature checks, against a stand-in that can forge ----------------------

def private_key(alg: str):
    return {"RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "EdDSA": ed25519.Ed25519PrivateKey.generate}[alg]()


def public_jwk(key, alg: str, kid: str) -> dict:
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
    return dict(jwk, alg=alg, use="sig", kid=kid)


class ForgingWorker:
    """Answers like the worker: /health, the JWKS of `published`, and /powersync-token with a
    token signed by `signer` under the published key's kid."""

    def __init__(self, alg: str, published, signer):
        self.jwks = {"keys": [public_jwk(published, alg, "smoke-kid")]}
        self.alg, self.signer = alg, signer
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                auth = self.headers.get("Authorization")
                if self.path == "/health":
                    self.answer(200, {"status": "ok", "version": "forging"})
                elif self.path == "/.well-known/jwks.json":
                    self.answer(200, outer.jwks)
                elif not auth:
                    self.answer(401, {"error": "No authorization header"})
                elif "smoke.not-a.token" in auth:
                    self.answer(401, {"error": "Unauthorized"})
                else:
                    sub = jwt.decode(auth.split()[1], options={"verify_signature": False})["sub"]
                    self.answer(200, outer.token_body(sub))

            def answer(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token_body(self, sub: str) -> dict:
        now = int(time.time())
        url = "https://powersync.example"
        token = jwt.encode({"sub": sub, "aud": url, "iat": now, "exp": now + 600}, self.signer,
                           algorithm=self.alg, headers={"kid": "smoke-kid"})
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 600))
        return {"token": token, "powersync_url": url, "endpoint": url, "expires_at": expires,
                "user_id": sub}


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("forged", [False, True], ids=["signed-by-the-jwks-key", "forged"])
def test_smoke_token_check_verifies_the_signature_with_the_jwks_key(alg, forged):
    published = private_key(alg)
    stand_in = ForgingWorker(alg, published, private_key(alg) if forged else published)
    session = jwt.encode({"sub": "smoke-user"}, "any-secret-at-all-32-characters-long",
                         algorithm="HS256")
    try:
        result = smoke(stand_in.url, SMOKE_SESSION_TOKEN=session)
    finally:
        stand_in.server.shutdown()
    lines = check_lines(result)
    if forged:
        assert result.returncode == 1
        assert [(status, name) for status, name, _ in lines][2] == ("FAIL", "token")
        assert "signature does not verify with JWKS key smoke-kid" in lines[2][2], lines[2][2]
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"kid smoke-kid ({alg})" in lines[2][2], lines[2][2]


def test_smoke_says_when_openssl_cannot_check_a_signature_rather_than_calling_it_forged(tmp_path):
    """An openssl that fails for its own reasons (too old for -rawin) is not a bad signature."""
    key = private_key("EdDSA")
    stand_in = ForgingWorker("EdDSA", key, key)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "openssl").write_text("#!/bin/sh\necho 'pkeyutl: Unknown option: -rawin' >&2\nexit 1\n")
    (fake / "openssl").chmod(0o755)
    session = jwt.encode({"sub": "smoke-user"}, "any-secret-at-all-32-characters-long", algorithm="HS256")
    try:
        result = smoke(stand_in.url, SMOKE_SESSION_TOKEN=session, PATH=f"{fake}:{os.environ['PATH']}")
    finally:
        stand_in.server.shutdown()
    lines = check_lines(result)
    assert lines[2][:2] == ("FAIL", "token"), lines
    assert "openssl could not check the signature: pkeyutl: Unknown option: -rawin" in lines[2][2], lines[2][2]
    assert "does not verify" not in lines[2][2]
