"""Metrics (docs/metrics.md): with the Analytics Engine binding configured under `wrangler dev`,
every request writes one data point whose figures are those of its log line, and the worker
answers exactly as without the binding.

The local dataset discards points, so the worker runs from tests/e2e/metrics_recorder.js: the
built worker unchanged, its METRICS binding wrapped to print each point before passing it on.
The column names come from the table in docs/metrics.md, so the documented layout is what is
checked.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.conftest import ROOT
from tests.e2e.upload_helpers import body, put, tx, upload
from tests.support.db import new_id
from tests.support.worker import WorkerProcess

METRICS_CONFIG = '[[analytics_engine_datasets]]\nbinding = "METRICS"\ndataset = "powersync_bridge"\n'
RECORDER = ROOT / "tests/e2e/metrics_recorder.js"


def documented_columns() -> dict[str, list[str]]:
    """{"index": [...], "blob": [...], "double": [...]}: the names in docs/metrics.md's table,
    in column order."""
    columns: dict[str, dict[int, str]] = {"index": {}, "blob": {}, "double": {}}
    for kind, n, name in re.findall(r"^\| (index|blob|double)(\d+) \| (\w+) \|", (ROOT / "docs/metrics.md").read_text(), re.M):
        columns[kind][int(n)] = name
    return {kind: [names[i] for i in sorted(names)] for kind, names in columns.items()}


@pytest.fixture(scope="module")
def metrics_worker(base_vars):
    w = WorkerProcess({**base_vars, "UPLOAD_ATOMIC": "false"}, main=RECORDER, extra_config=METRICS_CONFIG)
    yield w
    w.stop()


@pytest.fixture(scope="module")
def plain_worker(base_vars, start_worker):
    return start_worker({**base_vars, "UPLOAD_ATOMIC": "false"})


def expected_blob(line: dict, name: str) -> str:
    upload = line.get("upload") or {}
    if name == "status_class":
        return f"{line['status'] // 100}xx"
    if name == "failure_codes":
        return ",".join(dict.fromkeys(upload.get("failure_codes", [])))
    value = line.get(name, upload.get(name))
    return "" if value is None else value


def expected_double(line: dict, name: str) -> float:
    upload, queue, files = line.get("upload") or {}, line.get("queue") or {}, line.get("files")
    if files is not None and name in ("entries", "success", "file_bytes"):
        return float(files[{"entries": "count", "success": "done", "file_bytes": "bytes"}[name]])
    if name == "queue_reported":
        return 1.0 if line.get("queue") else 0.0
    if name == "discarded":  # every transaction the client drops for good
        return float(upload.get("fatal") or 0) + float(upload.get("conflict") or 0)
    if name.startswith("queue_"):
        value = queue.get(name.removeprefix("queue_"))
    else:
        value = line.get(name, upload.get(name))
    return float(value or 0)


def requests_and_points(worker: WorkerProcess) -> list[tuple[dict, dict]]:
    """(log line, data point) per request, in order: each point is printed just before its line."""
    pairs, point = [], None
    for entry in worker.log_lines():
        if entry.get("event") == "data_point":
            assert point is None, f"two points for one request: {point} {entry}"
            point = entry["point"]
        elif "route" in entry:
            assert point is not None, f"no data point for {entry}"
            pairs.append((entry, point))
            point = None
    return pairs


def test_every_request_writes_one_data_point_with_its_log_line_figures(metrics_worker, session_token, db):
    columns = documented_columns()
    assert len(columns["blob"]) == 9 and len(columns["double"]) == 20, columns
    sub = new_id()
    token = session_token(sub)
    health = metrics_worker.get("/health")
    token_ok = metrics_worker.get("/powersync-token", headers={"Authorization": f"Bearer {token}"})
    token_refused = metrics_worker.get("/powersync-token")
    ok = upload(metrics_worker, token, body(tx(put("lists", new_id(), name="n", owner_id=sub), tid=1)),
                headers={"PowerSync-Upload-Queue": "count=7; oldest_seconds=42"})
    assert ok.status_code == 200, ok.text
    bad = upload(metrics_worker, token, body(tx(put("lists", new_id(), name="n", owner_id=new_id()), tid=2)),
                 headers={"PowerSync-Upload-Queue": "count=lots"})
    assert bad.status_code in (200, 503), bad.text
    refused = metrics_worker.post("/powersync-files/upload", headers={"Authorization": f"Bearer {token}"},
                                  json={"files": [{"bucket": "attachments", "path": f"{sub}/../x.jpg",
                                                   "content_type": "image/jpeg", "size": 2048}]})
    assert refused.status_code == 400 and refused.json()["code"] == "file_path_invalid", refused.text
    # This test's six lines, by request id: wrangler passes them on in its own time, and the
    # worker's start-up check wrote a line before them.
    ids = [r.headers["X-Request-Id"] for r in (health, token_ok, token_refused, ok, bad, refused)]
    deadline = time.time() + 10
    while not set(ids) <= {line.get("request_id") for line, _ in requests_and_points(metrics_worker)}:
        assert time.time() < deadline, metrics_worker.output()[-3000:]
        time.sleep(0.2)
    pairs = requests_and_points(metrics_worker)
    by_id = {line["request_id"]: (line, point) for line, point in pairs}
    mine = [by_id[i] for i in ids]
    assert [line["route"] for line, _ in mine] == ["health", "token", "token", "upload", "upload", "files_upload"]
    for line, point in pairs:
        assert "metrics_error" not in line, line
        assert point["blobs"] == [expected_blob(line, name) for name in columns["blob"]], line
        assert point["doubles"] == [expected_double(line, name) for name in columns["double"]], line
        assert point["indexes"] == ([line["user"]] if line.get("user") else []), line
    health, token_ok, token_refused, upload_ok, upload_bad, files_refused = (line for line, _ in mine)
    assert files_refused["code"] == "file_path_invalid" and f"{sub}/" not in str(files_refused)
    assert (files_refused["issuer"], files_refused["user"]) == ("supabase", upload_ok["user"]), "the session is noted"
    assert (token_ok["issuer"], token_ok["session_alg"], token_ok["signing_alg"]) == ("supabase", "HS256", "RS256")
    assert token_refused["code"] == "missing_authorization" and "user" not in token_refused
    assert upload_ok["queue"] == {"count": 7, "oldest_seconds": 42}
    assert upload_ok["upload"]["success"] == 1 and upload_ok["upload"]["write_mode"] == "rls"
    assert "queue" not in upload_bad, "a malformed report is ignored"
    assert upload_bad["upload"]["success"] == 0 and upload_bad["upload"]["failure_codes"]
    output = metrics_worker.output()
    assert sub not in output and token not in output, "no raw user id or token in logs or points"


def test_the_binding_changes_no_answer(metrics_worker, plain_worker, session_token):
    token = session_token(new_id())
    for path, headers in [("/health", {}), ("/powersync-token", {}), ("/nowhere", {}),
                          ("/powersync-token", {"Authorization": f"Bearer {token}"})]:
        with_metrics, without = metrics_worker.get(path, headers=headers), plain_worker.get(path, headers=headers)
        assert with_metrics.status_code == without.status_code, path
        strip = lambda j: {k: v for k, v in j.items() if k not in ("token", "expires_at", "request_id")}
        assert strip(with_metrics.json()) == strip(without.json()), path
