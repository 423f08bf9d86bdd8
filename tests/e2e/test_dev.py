"""`make dev` (scripts/dev.sh): a value set in .dev.vars wins over what `make dev` would set
itself, every value it sets itself is printed (secrets not shown), and its own defaults never
conflict with the developer's settings (the worker refuses such a conflict: every upload would
answer 500 upload_not_configured).

The settings part (scripts/dev_settings.sh) is sourced on its own for every case; one test runs
the whole script (stand-in started, POWERSYNC=off, the web demo served and its printed address
signed in) from a copy of the repository layout, so a developer's own .dev.vars and ports do not
interfere, and runs `devtool doctor` and `devtool dead-letters list` against it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import requests

from tests.e2e.conftest import ANON_KEY, JWT_SECRET, SERVICE_KEY, make_token
from tests.support.worker import BUILD, DEVTOOL, ROOT, dotenv_value, free_port

SETTINGS = ROOT / "scripts/dev_settings.sh"


def dev_settings(tmp_path: Path, dev_vars: str, calls: str) -> tuple[str, list[str]]:
    """Runs `calls` after sourcing scripts/dev_settings.sh in a directory whose .dev.vars is
    `dev_vars`: what it printed, and the --var arguments it collected."""
    (tmp_path / ".dev.vars").write_text(dev_vars)
    script = f'source "{SETTINGS}"\n{calls}\necho "--- vars"\nprintf "%s\\n" "${{dev_vars[@]}}"\n'
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    printed, args = result.stdout.split("--- vars\n")
    return printed, [a for a in args.splitlines() if a != "--var"]


STACK = 'demo_settings\nsetting POWERSYNC_URL http://127.0.0.1:8080\n'


def test_make_dev_sets_and_prints_the_demo_settings_when_dev_vars_sets_none(tmp_path):
    printed, args = dev_settings(tmp_path, "SUPABASE_JWT_SECRET=x\n", STACK)
    assert args == ["UPLOAD_BOOLEAN_COLUMNS:todos.completed", "UPLOAD_JSON_COLUMNS:todos.tags",
                    "UPLOAD_DEAD_LETTER_TABLE:powersync_dead_letters",
                    "POWERSYNC_URL:http://127.0.0.1:8080"]
    assert printed.splitlines() == ["  UPLOAD_BOOLEAN_COLUMNS=todos.completed",
                                    "  UPLOAD_JSON_COLUMNS=todos.tags",
                                    "  UPLOAD_DEAD_LETTER_TABLE=powersync_dead_letters",
                                    "  POWERSYNC_URL=http://127.0.0.1:8080"]


def test_values_in_dev_vars_win_over_make_devs_own(tmp_path):
    dev_vars = ("export POWERSYNC_URL=\"https://mine.powersync.example\"\n"
                "UPLOAD_BOOLEAN_COLUMNS = 'todos.completed,lists.archived'\n"
                "UPLOAD_JSON_COLUMNS=\n")  # blank: unset for the worker, so make dev's applies
    printed, args = dev_settings(tmp_path, dev_vars, STACK)
    assert args == ["UPLOAD_JSON_COLUMNS:todos.tags", "UPLOAD_DEAD_LETTER_TABLE:powersync_dead_letters"]
    assert "  POWERSYNC_URL: .dev.vars's value" in printed.splitlines()
    assert "  UPLOAD_BOOLEAN_COLUMNS: .dev.vars's value" in printed.splitlines()
    assert "mine.powersync.example" not in printed


def test_make_dev_never_makes_its_defaults_conflict_with_upload_tables(tmp_path):
    # The example: the demo conversions name `todos`, outside UPLOAD_TABLES.
    printed, args = dev_settings(tmp_path, "UPLOAD_TABLES=profiles\n", STACK)
    assert args == ["UPLOAD_DEAD_LETTER_TABLE:powersync_dead_letters", "POWERSYNC_URL:http://127.0.0.1:8080"]
    assert "  UPLOAD_BOOLEAN_COLUMNS: not set (todos is not in .dev.vars's UPLOAD_TABLES)" in printed
    assert "  UPLOAD_JSON_COLUMNS: not set (todos is not in .dev.vars's UPLOAD_TABLES)" in printed
    _, args = dev_settings(tmp_path, "UPLOAD_TABLES= todos , powersync_dead_letters\n", STACK)
    assert args == ["UPLOAD_BOOLEAN_COLUMNS:todos.completed", "UPLOAD_JSON_COLUMNS:todos.tags",
                    "POWERSYNC_URL:http://127.0.0.1:8080"], "a dead-letter table clients write is refused"


def test_secrets_make_dev_sets_are_not_printed(tmp_path):
    printed, args = dev_settings(tmp_path, "", "setting SUPABASE_JWT_SECRET s3cr3t-value secret")
    assert args == ["SUPABASE_JWT_SECRET:s3cr3t-value"]
    assert printed == "  SUPABASE_JWT_SECRET=(secret, not shown)\n"


def repo_copy(tmp_path: Path, dev_vars: dict[str, str]) -> Path:
    """scripts/dev.sh and what it uses, with `dev_vars` as .dev.vars and a wrangler.toml
    without a build step (the worker is already built)."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("dev.sh", "dev_settings.sh"):
        shutil.copy(ROOT / "scripts" / name, root / "scripts" / name)
    (root / "target/debug").mkdir(parents=True)
    (root / "target/debug/devtool").symlink_to(DEVTOOL)
    for name in (".venv", "node_modules", "tests", "examples"):
        (root / name).symlink_to(ROOT / name)
    (root / "wrangler.toml").write_text(f'name = "dev"\nmain = "{BUILD}"\ncompatibility_date = "2026-11-01"\n')
    (root / ".dev.vars").write_text("".join(f"{k}={dotenv_value(v)}\n" for k, v in dev_vars.items()))
    return root


def test_make_dev_runs_the_worker_with_the_dev_vars_values_and_prints_its_own(tmp_path, powersync_key):
    port, supabase_port = free_port(), free_port()
    supabase_url = f"http://127.0.0.1:{supabase_port}"
    mine = "https://mine.powersync.example"
    root = repo_copy(tmp_path, {
        "SUPABASE_URL": supabase_url, "SUPABASE_JWT_SECRET": JWT_SECRET,
        "SUPABASE_ANON_KEY": ANON_KEY, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "POWERSYNC_KEY_ID": powersync_key["kid"], "POWERSYNC_PRIVATE_KEY": powersync_key["private_pem"],
        "POWERSYNC_URL": mine, "UPLOAD_TABLES": "profiles",
    })
    storage_port, web_port = free_port(), free_port()
    env = dict(os.environ, DEV_PORT=str(port), SUPABASE_PORT=str(supabase_port), POWERSYNC="off",
               STORAGE_PORT=str(storage_port), WEB_PORT=str(web_port),
               DEV_INSPECTOR_PORT=str(free_port()), CI="true", WRANGLER_SEND_METRICS="false",
               NO_COLOR="1", WRANGLER_LOG_PATH=str(tmp_path / "logs"))
    proc = subprocess.Popen(["bash", str(root / "scripts/dev.sh")], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 240  # the Storage server migrates its schema first (~30 s)
        while not any(line.startswith("worker ready") for line in lines):
            assert proc.poll() is None and time.time() < deadline, "".join(lines)
            time.sleep(0.2)
        output = "".join(lines)
        # What make dev set itself, and what it left to .dev.vars, each on its own line.
        assert "  POWERSYNC_URL: .dev.vars's value\n" in output, output
        assert "  UPLOAD_DEAD_LETTER_TABLE=powersync_dead_letters\n" in output, output
        assert "  UPLOAD_BOOLEAN_COLUMNS: not set (todos is not in .dev.vars's UPLOAD_TABLES)\n" in output
        assert "worker ready: configuration complete\n" in output, output
        assert "configuration problem" not in output
        user = str(uuid.uuid4())
        token = make_token(user, iss=f"{supabase_url}/auth/v1")
        auth = {"Authorization": f"Bearer {token}"}
        r = requests.get(f"http://127.0.0.1:{port}/powersync-token", headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["powersync_url"] == mine, "the worker got .dev.vars's POWERSYNC_URL"
        profile = f"p-{uuid.uuid4()}"
        body = {"batch": [{"op": "PUT", "table": "profiles", "id": profile,
                           "data": {"user_id": user, "handle": profile}}]}
        r = requests.post(f"http://127.0.0.1:{port}/powersync-upload", headers=auth, json=body, timeout=60)
        assert r.status_code == 200, r.text
        # The web demo (docs/web.md): its address opens signed in (a session token in the fragment).
        web = re.search(rf"^Web demo: http://127\.0\.0\.1:{web_port}/\?worker=http%3A%2F%2F127\.0\.0\.1%3A{port}"
                        r"#session=(\S+)$", output, re.M)
        assert web, output
        session = requests.get(f"http://127.0.0.1:{port}/powersync-token",
                               headers={"Authorization": f"Bearer {web.group(1)}"}, timeout=30)
        assert session.status_code == 200, session.text
        deadline = time.time() + 60
        while True:
            try:
                page = requests.get(f"http://127.0.0.1:{web_port}/", timeout=5)
                break
            except requests.RequestException:
                assert time.time() < deadline, "the web demo was not served"
                time.sleep(0.3)
        assert page.status_code == 200 and "<title>To-dos" in page.text, page.text[:500]
        dsn = re.search(r"\(PostgreSQL (.+)\)\n", output).group(1)
        with psycopg.connect(dsn) as conn:
            row = conn.execute("select user_id::text from public.profiles where id = %s", (profile,)).fetchone()
        assert row == (user,)

        # the operator's tool against make dev's stack, with the developer's .dev.vars
        doctor = subprocess.run([str(DEVTOOL), "doctor", "--worker-url", f"http://127.0.0.1:{port}",
                                 "--vars", str(root / ".dev.vars")], capture_output=True, text=True, timeout=120)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert doctor.stdout.splitlines()[-1].startswith("doctor: ready"), doctor.stdout
        listed = subprocess.run([str(DEVTOOL), "dead-letters", "list", "--vars", str(root / ".dev.vars")],
                                capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert listed.stdout.splitlines()[-1] == "0 dead letter(s)", listed.stdout

        # The Storage server beside it (rls mode: the dev policies allow the user's own folder).
        assert f"  STORAGE_URL=http://127.0.0.1:{storage_port}\n" in output, output
        assert "/powersync-files/upload" in output, "make dev prints how to try the file endpoints"
        file = {"bucket": "attachments", "path": f"{user}/hello.txt"}
        r = requests.post(f"http://127.0.0.1:{port}/powersync-files/upload", headers=auth, timeout=30,
                          json={"files": [{**file, "content_type": "text/plain", "size": 6}]})
        assert r.status_code == 200, r.text
        entry = r.json()["files"][0]
        assert requests.put(entry["url"], data=b"hello!", headers=entry["headers"], timeout=30).status_code == 200
        r = requests.post(f"http://127.0.0.1:{port}/powersync-files/download", headers=auth, timeout=30,
                          json={"files": [file]})
        assert requests.get(r.json()["files"][0]["url"], timeout=30).content == b"hello!"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
