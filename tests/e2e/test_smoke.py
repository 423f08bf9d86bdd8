"""scripts/smoke.sh against the worker in workerd (`wrangler dev`): it passes against a complete
configuration (including a real upload that lands in PostgreSQL), and against a broken one it
prints a FAIL line and stops at the first failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

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
