"""End-to-end tests of the file endpoints (/powersync-files/upload|download|delete) through the
built worker in workerd, against the real Supabase Storage server (tests/support/storage.py) on
the same PostgreSQL, in both modes, with a Supabase user and a third-party (Firebase) user.

Bytes really go through the signed URLs: uploaded with PUT to the URL the worker answered,
read back through the download URL, and Storage's own listing shows what it holds.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid

import pytest
import requests

from tests.e2e.conftest import SERVICE_KEY
from tests.e2e.test_third_party import FIREBASE_PROJECT, firebase_claims
from tests.support.issuers import IssuerServer
from tests.support.sdk_client import SdkApp

SERVICE_BUCKET = "attachments"
RLS_BUCKET = "rls-files"
PHOTO_RULES = {"path": "{user_id}/", "max_bytes": 1000, "content_types": ["image/*", "text/plain"]}

RLS_POLICIES = f"""
do $$ begin
  drop policy if exists files_insert_own on storage.objects;
  drop policy if exists files_select_own on storage.objects;
  drop policy if exists files_delete_own on storage.objects;
end $$;
create policy files_insert_own on storage.objects for insert to authenticated
  with check (bucket_id = '{RLS_BUCKET}' and (storage.foldername(name))[1] = auth.jwt() ->> 'sub');
create policy files_select_own on storage.objects for select to authenticated
  using (bucket_id = '{RLS_BUCKET}' and (storage.foldername(name))[1] = auth.jwt() ->> 'sub');
create policy files_delete_own on storage.objects for delete to authenticated
  using (bucket_id = '{RLS_BUCKET}' and (storage.foldername(name))[1] = auth.jwt() ->> 'sub');
"""


@pytest.fixture(scope="module")
def firebase(storage_trusted_keys):
    """Firebase's keys, served to the worker; the Storage server trusts them too."""
    server = IssuerServer()
    keys = storage_trusted_keys
    url = server.serve_jwks("firebase", keys)
    yield keys, url
    server.stop()


@pytest.fixture(scope="module")
def storage(storage_server, pg):
    # the bucket's own limits as the worker's rules: in service mode they hold the bytes to them
    storage_server.create_bucket(SERVICE_BUCKET, SERVICE_KEY, file_size_limit=PHOTO_RULES["max_bytes"],
                                 allowed_mime_types=PHOTO_RULES["content_types"])
    storage_server.create_bucket(RLS_BUCKET, SERVICE_KEY)
    pg.run_sql(RLS_POLICIES)
    return storage_server


@pytest.fixture(scope="module")
def service_worker(storage, base_vars, firebase, start_worker):
    _, jwks_url = firebase
    return start_worker({
        **base_vars,
        "STORAGE_URL": storage.url,
        "STORAGE_MODE": "service",
        "STORAGE_BUCKETS": json.dumps({SERVICE_BUCKET: PHOTO_RULES}),
        "STORAGE_DOWNLOAD_URL_SECONDS": "600",
        "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
        "THIRD_PARTY_FIREBASE_JWKS_URL": jwks_url,
    })


@pytest.fixture(scope="module")
def rls_worker(storage, base_vars, firebase, start_worker):
    _, jwks_url = firebase
    return start_worker({**base_vars, "STORAGE_URL": storage.url,
                         "THIRD_PARTY_FIREBASE_PROJECT_ID": FIREBASE_PROJECT,
                         "THIRD_PARTY_FIREBASE_JWKS_URL": jwks_url})


def call(worker, op: str, token: str, body: dict) -> requests.Response:
    return requests.post(f"{worker.url}/powersync-files/{op}", json=body, timeout=30,
                         headers={"Authorization": f"Bearer {token}"})


def upload_file(worker, token, bucket, path, data: bytes, content_type="image/png") -> requests.Response:
    """Asks for an upload URL and, when granted, PUTs the bytes there; returns the worker's answer."""
    r = call(worker, "upload", token, {"files": [
        {"bucket": bucket, "path": path, "content_type": content_type, "size": len(data)}]})
    if r.status_code == 200:
        entry = r.json()["files"][0]
        assert entry["method"] == "PUT"
        put = requests.put(entry["url"], data=data, headers=entry["headers"], timeout=30)
        assert put.status_code == 200, put.text
    return r


def download(worker, token, bucket, path, **extra) -> bytes:
    r = call(worker, "download", token, {"files": [{"bucket": bucket, "path": path}], **extra})
    assert r.status_code == 200, r.text
    got = requests.get(r.json()["files"][0]["url"], timeout=30)
    assert got.status_code == 200, got.text
    return got.content


def firebase_token(firebase, uid: str) -> str:
    keys, _ = firebase
    return keys.sign(firebase_claims(uid=uid, user_id=uid))


@pytest.mark.parametrize("who", ["supabase", "firebase"])
def test_service_mode_upload_through_the_signed_url_then_download_the_same_bytes(
        service_worker, storage, session_token, firebase, who):
    user = str(uuid.uuid4()) if who == "supabase" else "kq3sX9vRZbT1bCq4nW0p" + uuid.uuid4().hex[:8]
    token = session_token(user) if who == "supabase" else firebase_token(firebase, user)
    data = b"\x89PNG\r\n" + uuid.uuid4().bytes
    r = upload_file(service_worker, token, SERVICE_BUCKET, f"{user}/photo one.png", data)
    assert r.status_code == 200, r.text
    assert r.headers.get("Cache-Control") == "no-store"
    assert download(service_worker, token, SERVICE_BUCKET, f"{user}/photo one.png") == data
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == ["photo one.png"]
    r = call(service_worker, "delete", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/photo one.png"}]})
    assert (r.status_code, r.json()["files"][0]["deleted"]) == (200, True), r.text
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == []
    r = call(service_worker, "delete", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/photo one.png"}]})
    assert (r.status_code, r.json()["files"][0]["deleted"]) == (200, False), "deleting again is harmless"


@pytest.mark.parametrize("file, status, code", [
    ({"bucket": SERVICE_BUCKET, "path": "{other}/a.png"}, 403, "file_path_not_allowed"),
    ({"bucket": "avatars", "path": "{user}/a.png"}, 403, "file_bucket_not_allowed"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}/a.png", "size": 1001}, 413, "file_too_large"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}/a.html", "content_type": "text/html"}, 415, "file_type_not_allowed"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}/../{other}/a.png"}, 400, "file_path_invalid"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}//a.png"}, 400, "file_path_invalid"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}/a\u0000.png"}, 400, "file_path_invalid"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}/\u00fc.png"}, 400, "file_path_invalid"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}/a?b.png"}, 400, "file_path_invalid"),
    ({"bucket": SERVICE_BUCKET, "path": "{user}/" + "a" * 252 + ".png"}, 400, "file_path_invalid"),
], ids=["outside_prefix", "bucket_not_allowed", "oversized", "wrong_type", "dotdot", "empty_segment", "control",
        "not_a_storage_character", "question_mark", "segment_over_255_bytes"])
@pytest.mark.parametrize("who", ["supabase", "firebase"])
def test_refused_file_is_refused_before_anything_is_signed_and_storage_holds_nothing_new(
        service_worker, storage, session_token, firebase, who, file, status, code):
    user = str(uuid.uuid4()) if who == "supabase" else "fbUser" + uuid.uuid4().hex[:16]
    other = str(uuid.uuid4())
    token = session_token(user) if who == "supabase" else firebase_token(firebase, user)
    spec = {"content_type": "image/png", "size": 10, **file}
    spec["path"] = spec["path"].format(user=user, other=other)
    # A good file first in the same request: it must not be signed either.
    good = {"bucket": SERVICE_BUCKET, "path": f"{user}/good.png", "content_type": "image/png", "size": 10}
    before = len(storage.output())
    r = call(service_worker, "upload", token, {"files": [good, spec]})
    assert (r.status_code, r.json()["code"], r.json()["index"]) == (status, code, 1), r.text
    assert "url" not in r.text
    new_log = storage.output()[before:]
    assert "sign_upload_url" not in new_log, "Storage was asked to sign"
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == []
    assert storage.list_objects(SERVICE_BUCKET, other, SERVICE_KEY) == []
    line = service_worker.log_line(r)
    assert line["route"] == "files_upload" and line["code"] == code and line["files"]["done"] == 0
    assert user not in json.dumps(line) and "good.png" not in json.dumps(line), "no path in the log"


def test_names_with_every_punctuation_storage_accepts_upload_download_and_delete(service_worker, storage, session_token):
    """Storage signs a download URL's path undecoded and checks it against the decoded name: a
    name with `:` or `@` sent percent-encoded got a URL that never verified."""
    user = str(uuid.uuid4())
    token = session_token(user)
    name = "2024-01-01T10:00:00 a&b=c+d,e;f$g@h!i*j'k(l)_m-n.png"
    data = b"\x89PNG" + uuid.uuid4().bytes
    assert upload_file(service_worker, token, SERVICE_BUCKET, f"{user}/{name}", data).status_code == 200
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == [name]
    assert download(service_worker, token, SERVICE_BUCKET, f"{user}/{name}") == data
    r = call(service_worker, "delete", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/{name}"}]})
    assert (r.status_code, r.json()["files"][0]["deleted"]) == (200, True), r.text
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == []


def test_a_bucket_missing_in_storage_is_the_operators_not_a_missing_file(storage, base_vars, start_worker, session_token):
    """A bucket listed in STORAGE_BUCKETS but never created: Storage answers 404 (`The related
    resource does not exist`, `Bucket not found`); the upload must not read as the user's."""
    worker = start_worker({**base_vars, "STORAGE_URL": storage.url, "STORAGE_MODE": "service",
                           "STORAGE_BUCKETS": "never-created"})
    user = str(uuid.uuid4())
    r = call(worker, "upload", session_token(user), {"files": [
        {"bucket": "never-created", "path": f"{user}/a.png", "content_type": "image/png", "size": 3}]})
    assert (r.status_code, r.json()["code"]) == (502, "storage_failed"), r.text
    # Storage answers a delete or download there as of an object it does not have (it looks the
    # object up, not the bucket): the worker asks for the bucket, and never reports it done
    for op in ("delete", "download"):
        r = call(worker, op, session_token(user), {"files": [{"bucket": "never-created", "path": f"{user}/a.png"}]})
        assert (r.status_code, r.json()["code"]) == (502, "storage_failed"), (op, r.text)


def test_a_storage_url_ending_in_object_is_refused_and_a_delete_of_nothing_stays_not_deleted(
        service_worker, storage, base_vars, start_worker, session_token):
    """`<storage>/object` as STORAGE_URL would make Storage read the bucket as `object` and answer
    "no such object" for everything (Storage 1.70): refused as a configuration problem. A delete
    of nothing in a bucket Storage has is still `deleted: false` (the bucket was asked for)."""
    user = str(uuid.uuid4())
    token = session_token(user)
    assert upload_file(service_worker, token, SERVICE_BUCKET, f"{user}/keep.png", b"kept").status_code == 200
    wrong = start_worker({**base_vars, "STORAGE_URL": storage.url + "/object", "STORAGE_MODE": "service",
                          "STORAGE_BUCKETS": json.dumps({SERVICE_BUCKET: PHOTO_RULES})})
    assert [p["name"] for p in wrong.get("/health").json()["files"]["problems"]] == ["STORAGE_URL"]
    r = call(wrong, "delete", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/keep.png"}]})
    assert (r.status_code, r.json()["code"]) == (500, "storage_not_configured"), r.text
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == ["keep.png"]
    r = call(service_worker, "delete", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/none.png"}]})
    assert (r.status_code, r.json()["files"][0]["deleted"]) == (200, False), r.text


def test_a_wrong_storage_url_never_reports_a_delete_done_and_the_file_stays(
        service_worker, storage, base_vars, start_worker, session_token):
    """STORAGE_URL with a path Storage does not serve: every answer is a 404 that is not
    Storage's "no such object"; a delete answered `deleted: false` would be dropped by the client
    while the file stays."""
    user = str(uuid.uuid4())
    token = session_token(user)
    assert upload_file(service_worker, token, SERVICE_BUCKET, f"{user}/keep.png", b"kept").status_code == 200
    wrong = start_worker({**base_vars, "STORAGE_URL": storage.url + "/storage/v1", "STORAGE_MODE": "service",
                          "STORAGE_BUCKETS": json.dumps({SERVICE_BUCKET: PHOTO_RULES})})
    for op in ("delete", "download"):
        r = call(wrong, op, token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/keep.png"}]})
        assert (r.status_code, r.json()["code"]) == (502, "storage_failed"), (op, r.text)
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == ["keep.png"]


def test_rls_mode_a_session_storage_finds_expired_is_401_session_expired_so_the_client_refreshes(
        rls_worker, storage, session_token):
    """A session expired 10 s ago: within the worker's 30 s leeway, refused by Storage (no clock
    skew allowed there) with its AccessDenied shape (statusCode 403, `"exp" claim timestamp
    check failed`). The user's to refresh, as the worker answers an expired session itself: not
    the configuration's `502 storage_failed`, nor `file_denied`, which a client takes as final."""
    user = str(uuid.uuid4())
    r = call(rls_worker, "upload", session_token(user, expires_in=-10), {"files": [
        {"bucket": RLS_BUCKET, "path": f"{user}/a.bin", "content_type": "image/png", "size": 1}]})
    assert (r.status_code, r.json()["code"]) == (401, "session_expired"), r.text
    r = call(rls_worker, "upload", session_token(user), {"files": [
        {"bucket": RLS_BUCKET, "path": f"{user}/a.bin", "content_type": "image/png", "size": 1}]})
    assert r.status_code == 200, r.text


def test_expired_download_url_is_refused_by_storage(service_worker, storage, session_token):
    user = str(uuid.uuid4())
    token = session_token(user)
    assert upload_file(service_worker, token, SERVICE_BUCKET, f"{user}/a.txt", b"soon gone", "text/plain").status_code == 200
    r = call(service_worker, "download", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/a.txt"}], "expires_in": 1})
    assert r.status_code == 200 and r.json()["files"][0]["expires_in"] == 1
    url = r.json()["files"][0]["url"]
    time.sleep(2.5)
    got = requests.get(url, timeout=30)
    assert got.status_code in (400, 401, 403) and b"soon gone" not in got.content, got.text
    assert "xpired" in got.text or "jwt" in got.text.lower()


def test_download_lifetime_is_capped_by_the_setting(service_worker, storage, session_token):
    user = str(uuid.uuid4())
    token = session_token(user)
    assert upload_file(service_worker, token, SERVICE_BUCKET, f"{user}/b.txt", b"x", "text/plain").status_code == 200
    r = call(service_worker, "download", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/b.txt"}], "expires_in": 86400})
    assert r.json()["files"][0]["expires_in"] == 600
    r = call(service_worker, "download", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/missing.txt"}]})
    assert (r.status_code, r.json()["code"]) == (404, "file_not_found")


def test_batch_of_files_gets_one_url_each_in_order(service_worker, storage, session_token):
    user = str(uuid.uuid4())
    token = session_token(user)
    files = [{"bucket": SERVICE_BUCKET, "path": f"{user}/{i}.txt", "content_type": "text/plain", "size": 1} for i in range(5)]
    r = call(service_worker, "upload", token, {"files": files})
    assert r.status_code == 200, r.text
    for i, entry in enumerate(r.json()["files"]):
        assert entry["path"] == f"{user}/{i}.txt"
        assert requests.put(entry["url"], data=str(i).encode(), headers=entry["headers"], timeout=30).status_code == 200
    r = call(service_worker, "download", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f["path"]} for f in files]})
    assert [requests.get(e["url"], timeout=30).content for e in r.json()["files"]] == [b"0", b"1", b"2", b"3", b"4"]
    r = call(service_worker, "delete", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f["path"]} for f in files]})
    assert [e["deleted"] for e in r.json()["files"]] == [True] * 5
    assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == []


@pytest.mark.parametrize("who", ["supabase", "firebase"])
def test_rls_mode_is_refused_by_a_storage_policy_and_allowed_by_another(rls_worker, storage, session_token, firebase, who):
    """The user's own token goes to Storage (a Firebase ID token too: Storage trusts Firebase's
    keys, as a Supabase project with third-party auth does), and the policies decide."""
    user = str(uuid.uuid4()) if who == "supabase" else "fbRls" + uuid.uuid4().hex[:20]
    other = str(uuid.uuid4())
    token = session_token(user) if who == "supabase" else firebase_token(firebase, user)
    # files_insert_own allows the user's own folder ...
    data = b"mine" + uuid.uuid4().bytes
    r = upload_file(rls_worker, token, RLS_BUCKET, f"{user}/a.bin", data, "application/octet-stream")
    assert r.status_code == 200, r.text
    assert download(rls_worker, token, RLS_BUCKET, f"{user}/a.bin") == data
    # ... and no policy allows another user's: Storage refuses (400 with statusCode "403").
    r = upload_file(rls_worker, token, RLS_BUCKET, f"{other}/a.bin", b"theirs", "application/octet-stream")
    assert (r.status_code, r.json()["code"]) == (403, "file_denied"), r.text
    assert storage.list_objects(RLS_BUCKET, other, SERVICE_KEY) == []
    # no policy at all on the service bucket for users
    r = upload_file(rls_worker, token, SERVICE_BUCKET, f"{user}/a.bin", b"x", "application/octet-stream")
    assert (r.status_code, r.json()["code"]) == (403, "file_denied"), r.text
    # the other user cannot read or delete the file; its owner can delete it
    r = call(rls_worker, "download", session_token(other), {"files": [{"bucket": RLS_BUCKET, "path": f"{user}/a.bin"}]})
    assert (r.status_code, r.json()["code"]) in ((403, "file_denied"), (404, "file_not_found")), r.text
    r = call(rls_worker, "delete", session_token(other), {"files": [{"bucket": RLS_BUCKET, "path": f"{user}/a.bin"}]})
    assert (r.status_code, r.json()["code"]) == (403, "file_denied"), r.text
    assert storage.list_objects(RLS_BUCKET, user, SERVICE_KEY) == ["a.bin"]
    r = call(rls_worker, "delete", token, {"files": [{"bucket": RLS_BUCKET, "path": f"{user}/a.bin"}]})
    assert r.json()["files"][0]["deleted"] is True
    assert storage.list_objects(RLS_BUCKET, user, SERVICE_KEY) == []


def test_rls_mode_checks_paths_before_asking_storage(rls_worker, storage, session_token):
    user = str(uuid.uuid4())
    before = len(storage.output())
    r = call(rls_worker, "upload", session_token(user), {"files": [
        {"bucket": RLS_BUCKET, "path": f"{user}/../x/a.bin", "content_type": "image/png", "size": 1}]})
    assert (r.status_code, r.json()["code"]) == (400, "file_path_invalid")
    assert "sign_upload_url" not in storage.output()[before:]


def test_storage_down_is_retryable(base_vars, start_worker, session_token):
    from tests.support.pg import refused_port
    worker = start_worker({**base_vars, "STORAGE_URL": f"http://127.0.0.1:{refused_port()}"})
    user = str(uuid.uuid4())
    r = call(worker, "download", session_token(user), {"files": [{"bucket": RLS_BUCKET, "path": f"{user}/a"}]})
    assert (r.status_code, r.json()["code"]) == (503, "storage_unavailable")
    assert r.headers.get("Retry-After") == "5"


QUEUED_UPLOAD, SYNCED = 0, 3  # @powersync/common AttachmentState


def wait_until(what: str, check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)


def attachment(app: SdkApp, id: str) -> dict | None:
    return next((r for r in app.call("attachmentRecords") if r["id"] == id), None)


def test_sdk_attachment_queue_uploads_once_when_back_online_then_another_device_downloads_and_it_deletes(
        service_worker, storage, session_token, tmp_path):
    """The official Node SDK's AttachmentQueue with the connector's WorkerStorageAdapter: a file
    saved offline stays queued locally, is uploaded once when the app is back online, another
    device downloads the same bytes, and deleting it removes it from Storage."""
    user = str(uuid.uuid4())
    token = session_token(user)
    file_id = str(uuid.uuid4())
    data = b"\x89PNG\r\n" + os.urandom(120)
    with SdkApp(service_worker.url, token, tmp_path / "phone.db", with_attachments=True) as phone:
        phone.call("attachments", workerUrl=service_worker.url, bucket=SERVICE_BUCKET, directory=str(tmp_path / "phone-files"))
        phone.call("offline", value=True)
        phone.call("saveFile", id=file_id, base64=base64.b64encode(data).decode(), mediaType="image/png", fileExtension="png")
        wait_until("upload attempted offline", lambda: any(r.get("error") == "offline" for r in phone.call("fileRequests")))
        time.sleep(1.5)  # several sync rounds while offline
        record = attachment(phone, file_id)
        assert record["state"] == QUEUED_UPLOAD and record["local_uri"], record
        assert base64.b64decode(phone.call("readLocal", id=file_id)) == data, "kept locally"
        assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == []

        phone.call("offline", value=False)
        wait_until("uploaded", lambda: (attachment(phone, file_id) or {}).get("state") == SYNCED)
        assert storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == [f"{file_id}.png"]
        time.sleep(1.5)  # more sync rounds: nothing is uploaded again
        puts = [r for r in phone.call("fileRequests") if r["kind"] == "signed PUT"]
        assert puts == [{"kind": "signed PUT", "status": 200}], puts

        with SdkApp(service_worker.url, token, tmp_path / "laptop.db", with_attachments=True) as laptop:
            laptop.call("attachments", workerUrl=service_worker.url, bucket=SERVICE_BUCKET, directory=str(tmp_path / "laptop-files"))
            laptop.call("watch", items=[{"id": file_id, "fileExtension": "png", "mediaType": "image/png"}])
            wait_until("downloaded", lambda: (attachment(laptop, file_id) or {}).get("state") == SYNCED)
            assert base64.b64decode(laptop.call("readLocal", id=file_id)) == data

        phone.call("deleteAttachment", id=file_id)
        wait_until("deleted from Storage", lambda: storage.list_objects(SERVICE_BUCKET, user, SERVICE_KEY) == [])
        # Through the worker (the app records the request when its answer has come).
        wait_until("the delete answered", lambda: "/powersync-files/delete" in {r["kind"] for r in phone.call("fileRequests")})


def test_doctor_checks_the_buckets_storage_holds_against_the_workers_rules(storage, service_worker, base_vars,
                                                                          tmp_path):
    # Storage checks its bucket limits only when the bytes arrive, after the worker signed: a
    # limit tighter than the worker's rules, or a bucket Storage lacks, is found before any file.
    from tests.e2e.test_operations_tool import devtool, write_vars
    storage.create_bucket("doctor-tight", SERVICE_KEY, file_size_limit=500, allowed_mime_types=["image/png"])
    storage.create_bucket("doctor-loose", SERVICE_KEY)
    vars = {**base_vars, "STORAGE_URL": storage.url, "STORAGE_MODE": "service",
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "STORAGE_BUCKETS": json.dumps({SERVICE_BUCKET: PHOTO_RULES, "doctor-tight": PHOTO_RULES,
                                           "doctor-missing": PHOTO_RULES, "doctor-loose": PHOTO_RULES})}
    result = devtool("doctor", "--worker-url", service_worker.url, "--vars", write_vars(tmp_path / "vars", vars))
    report = result.stdout
    assert "PROBLEM: bucket doctor-missing (STORAGE_BUCKETS) does not exist in Storage" in report, report
    assert "warning: Storage takes files of at most 500 bytes in bucket doctor-tight, the worker signs up to 1000" \
        in report, report
    assert "warning: Storage takes only image/png in bucket doctor-tight, the worker signs image/*, text/plain" \
        in report, report
    # service mode: Storage holds the bytes sent to a signed URL to the bucket's limits alone
    assert "warning: Storage takes files of any size in bucket doctor-loose, the worker's rule is 1000 bytes" \
        in report, report
    assert "warning: Storage takes any type in bucket doctor-loose, the worker's rule is image/*, text/plain" \
        in report, report
    assert f"bucket {SERVICE_BUCKET}" not in report, "a bucket whose limits are the rules is ready: " + report
    assert result.returncode == 1, report


def test_doctor_in_rls_mode_checks_the_policies_on_storage_objects(storage, rls_worker, base_vars, tmp_path):
    # RLS_POLICIES allow insert, select and delete: a file uploaded again (the adapter upserts)
    # needs update too
    from tests.e2e.test_operations_tool import devtool, write_vars
    vars = {**base_vars, "STORAGE_URL": storage.url, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "STORAGE_BUCKETS": json.dumps({RLS_BUCKET: PHOTO_RULES})}
    result = devtool("doctor", "--worker-url", rls_worker.url, "--vars", write_vars(tmp_path / "vars", vars))
    report = result.stdout
    assert "warning: no policy on storage.objects lets authenticated UPDATE" in report, report
    assert "lets authenticated INSERT" not in report and "lets authenticated SELECT" not in report, report



# --- Limits, active content and clocks (the files audit) ---------------------------------------

def _signed_upload(worker, token, bucket, path, declared: int, content_type="image/png") -> dict:
    r = call(worker, "upload", token, {"files": [
        {"bucket": bucket, "path": path, "content_type": content_type, "size": declared}]})
    assert r.status_code == 200, r.text
    return r.json()["files"][0]


def _stored_size(storage, bucket, user, name) -> int | None:
    r = requests.post(storage.url + f"/object/list/{bucket}", headers=storage.headers(SERVICE_KEY),
                      json={"prefix": user, "limit": 1000}, timeout=10)
    r.raise_for_status()
    return next((o["metadata"]["size"] for o in r.json() if o["name"] == name and o.get("metadata")), None)


def test_storage_holds_the_bytes_sent_to_a_signed_url_to_the_buckets_size_limit(service_worker, storage,
                                                                                  session_token):
    """docs/files.md: Storage's bucket limit binds the bytes actually sent, so a client that
    declares 10 bytes cannot then PUT more (the adapter's `storage_http_413`). The bucket has
    file_size_limit 1000 (= max_bytes); the client declares 10 bytes and PUTs 5000 with a
    Content-Length. (The Storage the tests and `make dev` ran had no FILE_SIZE_LIMIT, so its
    global limit was NaN and no limit held at all.)"""
    user = str(uuid.uuid4())
    token = session_token(user)
    entry = _signed_upload(service_worker, token, SERVICE_BUCKET, f"{user}/big.png", declared=10)
    put = requests.put(entry["url"], data=b"\x89PNG" + b"x" * 4996, headers=entry["headers"], timeout=30)
    stored = _stored_size(storage, SERVICE_BUCKET, user, "big.png")
    assert stored is None, f"5000 bytes stored in a bucket limited to 1000 (PUT {put.status_code} {put.text})"
    assert put.status_code == 400 and put.json()["statusCode"] == "413", put.text


ACTIVE_TYPES = ("text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml")


def _served_inline_as_active_content(response: requests.Response) -> bool:
    kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    disposition = (response.headers.get("Content-Disposition") or "").lower()
    return kind in ACTIVE_TYPES and not disposition.startswith("attachment")


def test_service_mode_download_urls_do_not_serve_script_from_the_storage_origin(service_worker, storage,
                                                                               session_token):
    """The bucket's rules are the docs' (`image/*`, Storage's allowed MIME types the same):
    `image/svg+xml` passes both, and the worker's download URL serves it inline, as
    image/svg+xml, from the project's Storage origin: a script in it runs there for anyone the
    user sends the link to (service mode: the user has no Storage rights of their own)."""
    user = str(uuid.uuid4())
    token = session_token(user)
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(document.domain)</script></svg>"
    assert upload_file(service_worker, token, SERVICE_BUCKET, f"{user}/x.svg", svg, "image/svg+xml").status_code == 200
    r = call(service_worker, "download", token, {"files": [{"bucket": SERVICE_BUCKET, "path": f"{user}/x.svg"}]})
    assert r.status_code == 200, r.text
    got = requests.get(r.json()["files"][0]["url"], timeout=30)
    assert got.status_code == 200 and got.content == svg
    assert not _served_inline_as_active_content(got), dict(got.headers)


def test_default_rules_do_not_let_a_user_serve_html_from_the_storage_origin(storage, base_vars, start_worker,
                                                                            session_token):
    """`STORAGE_BUCKETS=<name>` (default rules: any type) and a bucket without MIME limits, as the
    docs' simplest setup: Storage turns `text/html` into text/plain when it serves a file, but
    compares case-sensitively (`contentType.includes('text/html')`), so `Text/HTML` was served as
    it is and a browser rendered the page, from the project's Storage origin. Download URLs are
    attachments now."""
    storage.create_bucket("open-types", SERVICE_KEY)
    worker = start_worker({**base_vars, "STORAGE_URL": storage.url, "STORAGE_MODE": "service",
                           "STORAGE_BUCKETS": "open-types"})
    user = str(uuid.uuid4())
    token = session_token(user)
    page = b"<html><body><script>alert(document.domain)</script></body></html>"
    for name, kind in (("a.html", "Text/HTML"), ("b.xhtml", "application/xhtml+xml")):
        assert upload_file(worker, token, "open-types", f"{user}/{name}", page, kind).status_code == 200
        r = call(worker, "download", token, {"files": [{"bucket": "open-types", "path": f"{user}/{name}"}]})
        got = requests.get(r.json()["files"][0]["url"], timeout=30)
        assert got.status_code == 200 and got.content == page
        assert not _served_inline_as_active_content(got), (kind, dict(got.headers))


def test_rls_mode_a_session_storage_finds_not_yet_valid_is_retryable_not_a_bad_session(
        rls_worker, storage, session_token):
    """A session whose `nbf` is 10 s ahead (an issuer whose clock runs ahead of Storage's, within
    the worker's 30 s leeway, which the worker accepts): Storage allows no clock skew and refuses
    it (`"nbf" claim timestamp check failed`). The worker answered 401 `session_invalid`, telling
    the client its session is bad; a refreshed session carries a newer `nbf` and is refused the
    same way, while the same request a few seconds later passes. It is a wait, not the user's
    session: 503 with Retry-After, as the upload bridge treats PostgREST's "not yet valid"
    (docs/upload.md: PGRST3xx retryable)."""
    user = str(uuid.uuid4())
    token = session_token(user, nbf=int(time.time()) + 10)
    before = len(storage.output())
    r = call(rls_worker, "upload", token, {"files": [
        {"bucket": RLS_BUCKET, "path": f"{user}/a.bin", "content_type": "image/png", "size": 1}]})
    assert r.status_code != 200, "Storage refuses an nbf ahead of its clock"
    assert "nbf" in storage.output()[before:], "the worker accepted the session and Storage refused it"
    assert (r.status_code, r.json()["code"]) == (503, "storage_unavailable"), r.text
    assert r.headers.get("Retry-After"), r.headers
