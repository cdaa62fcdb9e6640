"""The HTTP API against libvirt's test driver (and a gated fake dump where timing matters)."""

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import stat
import struct
import threading
import time

import httpx
import pytest

from memdump_service import virt
from memdump_service.config import Settings, parse_args
from memdump_service.jobs import INTERRUPTED
from memdump_service.store import Store

from conftest import free_port, running_app, wait_finished, wait_held


def post(client, body, **kwargs):
    return client.post("/api/dumps", json=body, **kwargs)


def test_health(client):
    answer = client.get("/health")
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok"
    assert body["libvirt"]["connected"] is True
    assert body["libvirt"]["driver"] == "TEST"
    assert body["libvirt"]["memory_only"] is False
    assert body["queue"] == {"queued": 0, "running": 0, "max_parallel": 2}
    assert body["auth"] is False
    assert {"wait", "dry_run"} <= set(body["features"])


def test_openapi_only_with_the_option(client, settings):
    assert client.get("/openapi.json").status_code == 404 and client.get("/docs").status_code == 404
    settings.openapi = True
    with running_app(settings) as documented:
        answer = documented.get("/openapi.json")
        assert documented.get("/docs").status_code == 200
    assert answer.status_code == 200
    paths = answer.json()["paths"]
    post_body = paths["/api/dumps"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert post_body["additionalProperties"] is False and {"vms", "vm_ids", "dry_run", "format"} <= set(post_body["properties"])
    assert {"200", "202", "400"} <= set(paths["/api/dumps"]["post"]["responses"])
    assert {"limit", "before", "wait", "marker"} <= {p["name"] for p in paths["/api/dumps"]["get"]["parameters"]}


def test_dump_completes_with_file_hash_and_modes(client, settings):
    answer = post(client, {"vms": ["web01"], "label": "IR-2026-042"})
    assert answer.status_code == 202
    body = answer.json()
    assert isinstance(body["marker"], int)
    dump = body["dumps"][0]
    assert dump["created"] is True and dump["vm"] == "web01" and dump["label"] == "IR-2026-042" and len(dump["dump_id"]) == 32
    done = wait_finished(client, [dump["dump_id"]])[0]
    assert done["state"] == "completed", done["message"]
    assert "not memory-only" in done["message"]
    assert done["progress"] == 100.0
    path = done["dump_path"]
    assert os.path.dirname(path) == settings.dump_dir
    assert dump["dump_id"] in os.path.basename(path) and os.path.basename(path).startswith("web01_")
    data = open(path, "rb").read()
    assert data.startswith(b"TestGuestMagic")
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert done["size_bytes"] == len(data)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(settings.dump_dir).st_mode) == 0o700
    assert done["paused_sec"] is not None and done["duration_sec"] is not None
    assert done["vm_uuid"] == "6695eb01-f6a4-8304-79aa-000000000000"
    assert done["started_at"].endswith("Z") and done["finished_at"].endswith("Z")
    assert not [n for n in os.listdir(settings.dump_dir) if n.startswith(".")]


def test_vm_ids_alias_and_missing_vm_is_not_an_http_error(client):
    answer = post(client, {"vm_ids": ["nosuchvm", "stopped01"]})
    assert answer.status_code == 202
    ids = [d["dump_id"] for d in answer.json()["dumps"]]
    missing, stopped = wait_finished(client, ids)
    assert missing["state"] == "failed" and "does not exist" in missing["message"]
    # A typo's message names what there is, so the responder can correct the name.
    assert "check the name: the domains there are " in missing["message"]
    assert "db01" in missing["message"] and "stopped01" in missing["message"]
    assert stopped["state"] == "failed" and "shut off" in stopped["message"]


def test_unsupported_format_fails_clearly_without_leftovers(client, settings):
    ids = [d["dump_id"] for d in post(client, {"vms": ["web01"], "format": "kdump-zlib"}).json()["dumps"]]
    done = wait_finished(client, ids)[0]
    assert done["state"] == "failed" and "kdump-zlib" in done["message"]
    assert os.listdir(settings.dump_dir) == []


def test_free_space_check(settings):
    settings.space_margin = 1 << 60
    with running_app(settings) as client:
        ids = [d["dump_id"] for d in post(client, {"vms": ["web01"]}).json()["dumps"]]
        done = wait_finished(client, ids)[0]
    assert done["state"] == "failed" and "not enough free space" in done["message"]


def test_get_one_filters_and_vm_map(client):
    first = post(client, {"vms": ["web01", "db01"], "label": "IR-1"}).json()["dumps"]
    second = post(client, {"vms": ["app01"], "label": "IR-2"}).json()["dumps"]
    ids = [d["dump_id"] for d in first + second]
    wait_finished(client, ids)
    one = client.get(f"/api/dumps/{ids[0]}")
    assert one.status_code == 200 and one.json()["vm"] == "web01" and "marker" in one.json()
    assert client.get("/api/dumps/" + "0" * 32).status_code == 404
    listed = client.get("/api/dumps").json()
    assert [d["dump_id"] for d in listed["dumps"]] == list(reversed(ids)) and listed["next_before"] is None
    assert listed["vms"]["web01"] == [ids[0]]
    assert {d["vm"] for d in client.get("/api/dumps", params={"label": "IR-1"}).json()["dumps"]} == {"web01", "db01"}
    assert [d["vm"] for d in client.get("/api/dumps", params={"vm": ["app01", "db01"]}).json()["dumps"]] == ["app01", "db01"]
    assert len(client.get("/api/dumps", params={"state": "completed"}).json()["dumps"]) == 3
    assert client.get("/api/dumps", params={"state": "queued"}).json()["dumps"] == []
    assert client.get("/api/dumps", params={"state": "bogus"}).status_code == 400
    assert client.get("/api/dumps", params={"wait": "abc"}).status_code == 422
    assert isinstance(client.get("/api/dumps", params={"wait": 500}).json()["detail"], str)


def test_file_streaming_range_and_delete(client):
    dump_id = post(client, {"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
    done = wait_finished(client, [dump_id])[0]
    whole = client.get(f"/api/dumps/{dump_id}/file")
    assert whole.status_code == 200
    assert whole.headers["x-memdump-sha256"] == done["sha256"]
    assert int(whole.headers["content-length"]) == done["size_bytes"]
    assert hashlib.sha256(whole.content).hexdigest() == done["sha256"]
    part = client.get(f"/api/dumps/{dump_id}/file", headers={"Range": "bytes=4-7"})
    assert part.status_code == 206 and part.content == whole.content[4:8]
    # Several ranges in one request: a clear refusal, never a multipart answer whose length is wrong.
    several = client.get(f"/api/dumps/{dump_id}/file", headers={"Range": "bytes=0-1,3-4"})
    assert several.status_code == 400 and "ask for one: bytes=START-END" in several.json()["detail"]
    assert client.get("/api/dumps/" + "0" * 32 + "/file").status_code == 404
    deleted = client.delete(f"/api/dumps/{dump_id}")
    assert deleted.status_code == 200
    assert deleted.json()["file_deleted"] is True and deleted.json()["dump_path"] is None
    assert not os.path.exists(done["dump_path"])
    assert client.get(f"/api/dumps/{dump_id}/file").status_code == 410
    assert client.delete(f"/api/dumps/{dump_id}").status_code == 200
    assert client.get(f"/api/dumps/{dump_id}").json()["state"] == "completed"
    assert client.delete("/api/dumps/" + "0" * 32).status_code == 404


def test_queue_cap_running_409_and_cancel(gate, settings):
    settings.max_parallel = 2
    with running_app(settings) as client:
        vms = ["vm00", "vm01", "vm02", "vm03", "vm04"]
        dumps = post(client, {"vms": vms}).json()["dumps"]
        ids = [d["dump_id"] for d in dumps]
        states = [d["state"] for d in client.get("/api/dumps", params={"dump_id": ids}).json()["dumps"]]
        assert states.count("running") == 2 and states.count("queued") == 3
        assert client.get("/health").json()["queue"] == {"queued": 3, "running": 2, "max_parallel": 2}
        running = wait_held(client, ids[:2])[0]
        assert running["state"] == "running" and running["progress"] == 50.0
        conflict = client.delete(f"/api/dumps/{ids[0]}")
        assert conflict.status_code == 409 and "cannot" in conflict.json()["detail"]
        assert client.get(f"/api/dumps/{ids[0]}/file").status_code == 409
        cancelled = client.delete(f"/api/dumps/{ids[4]}")
        assert cancelled.status_code == 200 and cancelled.json()["message"] == "cancelled by request"
        assert cancelled.json()["state"] == "failed"
        gate.release.set()
        finished = wait_finished(client, ids)
        assert [d["state"] for d in finished] == ["completed"] * 4 + ["failed"]
        assert len(gate.started) == 4


def test_parallel_cap_holds_with_many_queued(gate, settings):
    settings.max_parallel = 3
    with running_app(settings) as client:
        vms = [f"vm{i:02d}" for i in range(50)]
        ids = [d["dump_id"] for d in post(client, {"vms": vms}).json()["dumps"]]
        peak = 0
        stop = threading.Event()

        def watch():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, client.app.state.jobs.counts()["running"])
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        gate.release.set()
        finished = wait_finished(client, ids, timeout=30)
        stop.set()
        watcher.join()
        assert all(d["state"] == "completed" for d in finished)
        assert 1 <= peak <= 3


def test_in_flight_reuse_label_reuse_and_force(gate, client):
    first = post(client, {"vms": ["web01"], "label": "IR-7"}).json()["dumps"][0]
    again = post(client, {"vms": ["web01"], "label": "IR-7", "force": True}).json()["dumps"][0]
    assert again["dump_id"] == first["dump_id"] and again["created"] is False
    gate.release.set()
    wait_finished(client, [first["dump_id"]])
    same = post(client, {"vms": ["web01"], "label": "IR-7"}).json()["dumps"][0]
    assert same["dump_id"] == first["dump_id"] and same["created"] is False and same["state"] == "completed"
    other = post(client, {"vms": ["web01"], "label": "IR-8"}).json()["dumps"][0]
    assert other["created"] is True
    wait_finished(client, [other["dump_id"]])
    forced = post(client, {"vms": ["web01"], "label": "IR-7", "force": True}).json()["dumps"][0]
    assert forced["created"] is True and forced["dump_id"] != first["dump_id"]
    wait_finished(client, [forced["dump_id"]])
    newest = post(client, {"vms": ["web01"], "label": "IR-7"}).json()["dumps"][0]
    assert newest["dump_id"] == forced["dump_id"] and newest["created"] is False
    unlabelled = post(client, {"vms": ["web01"]}).json()["dumps"][0]
    assert unlabelled["created"] is True


def test_in_flight_dump_of_another_incident_or_kind_is_never_handed_out(gate, client):
    """Incident B never gets incident A's running dump: a request that differs in label, method or format gets its
    own dump, which waits in the queue (libvirt runs one job per guest) and runs after the first."""
    first = post(client, {"vms": ["web01"], "label": "IR-A"}).json()["dumps"][0]
    others = [post(client, body).json()["dumps"][0] for body in (
        {"vms": ["web01"], "label": "IR-B"}, {"vms": ["web01"]}, {"vms": ["web01"], "label": "IR-A", "format": "kdump-zlib"},
        {"vms": ["web01"], "label": "IR-A", "method": "live"})]
    assert all(item["created"] is True and item["dump_id"] != first["dump_id"] for item in others), others
    assert len({item["dump_id"] for item in others}) == len(others)
    states = {d["dump_id"]: d["state"] for d in client.get("/api/dumps").json()["dumps"]}
    assert states[first["dump_id"]] == "running" and all(states[item["dump_id"]] == "queued" for item in others), states
    # A second VM is not held up by the queued dumps of the first.
    db = post(client, {"vms": ["db01"], "label": "IR-B"}).json()["dumps"][0]
    assert client.get(f"/api/dumps/{db['dump_id']}").json()["state"] == "running"
    assert gate.started == ["web01", "db01"]
    gate.release.set()
    wait_finished(client, [first["dump_id"], db["dump_id"]] + [item["dump_id"] for item in others])
    assert gate.started == ["web01", "db01"] + ["web01"] * len(others)


def test_request_id_retry(client):
    body = {"vms": ["web01", "db01"], "request_id": "run-1"}
    first = post(client, body).json()["dumps"]
    wait_finished(client, [d["dump_id"] for d in first])
    retry = post(client, body).json()["dumps"]
    assert [d["dump_id"] for d in retry] == [d["dump_id"] for d in first]
    assert [d["created"] for d in retry] == [True, True]
    assert len(client.get("/api/dumps").json()["dumps"]) == 2
    conflict = post(client, {"vms": ["app01"], "request_id": "run-1"})
    assert conflict.status_code == 409 and "request_id" in conflict.json()["detail"]


def test_dry_run_answers_without_creating(gate, client):
    marker = client.get("/api/dumps").json()["marker"]
    body = {"vms": ["web01", "db01"], "label": "IR-D", "format": "elf", "dry_run": True}
    answer = post(client, body)
    assert answer.status_code == 200
    assert answer.json() == {"marker": marker, "dry_run": True, "dumps": [
        {"vm": vm, "dump_id": None, "state": None, "label": "IR-D", "method": "memory-only", "format": "elf", "created": True}
        for vm in ("web01", "db01")]}
    assert client.get("/api/dumps").json()["dumps"] == [] and client.get("/health").json()["queue"]["queued"] == 0
    running = post(client, {"vms": ["web01"], "label": "IR-D"}).json()["dumps"][0]
    wait_held(client, [running["dump_id"]])  # the record no longer changes until the gate is released
    planned = post(client, body).json()["dumps"]
    record = client.get(f"/api/dumps/{running['dump_id']}").json()
    del record["marker"]
    assert planned == [dict(record, created=False), dict(answer.json()["dumps"][1])]
    gate.release.set()
    wait_finished(client, [running["dump_id"]])
    done = post(client, dict(body, vms=["web01"])).json()["dumps"][0]
    assert (done["dump_id"], done["state"], done["created"]) == (running["dump_id"], "completed", False)
    assert post(client, dict(body, vms=["web01"], force=True)).json()["dumps"][0]["created"] is True
    assert len(client.get("/api/dumps").json()["dumps"]) == 1
    assert gate.started == ["web01"]


def test_dry_run_with_request_id(client):
    first = post(client, {"vms": ["app01"], "request_id": "run-7"}).json()["dumps"]
    replay = post(client, {"vms": ["app01"], "request_id": "run-7", "dry_run": True})
    assert replay.status_code == 200 and [(d["dump_id"], d["created"]) for d in replay.json()["dumps"]] == [(first[0]["dump_id"], True)]
    conflict = post(client, {"vms": ["db01"], "request_id": "run-7", "dry_run": True})
    assert conflict.status_code == 409 and "request_id" in conflict.json()["detail"]
    assert post(client, {"vms": ["db01"], "request_id": "run-8", "dry_run": True}).json()["dumps"][0]["dump_id"] is None
    real = post(client, {"vms": ["db01"], "request_id": "run-8"})  # the dry run did not take run-8
    assert real.status_code == 202 and real.json()["dumps"][0]["created"] is True and real.json()["dumps"][0]["dump_id"]
    assert post(client, {"vms": ["db01"], "dry_run": False}).status_code == 202


def test_concurrent_identical_requests_create_one_dump(gate, client):
    answers = []

    def trigger():
        answers.append(post(client, {"vms": ["db01"], "label": "IR-9"}).json())

    threads = [threading.Thread(target=trigger) for _number in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = {a["dumps"][0]["dump_id"] for a in answers}
    assert len(ids) == 1
    assert sum(a["dumps"][0]["created"] for a in answers) == 1
    gate.release.set()
    wait_finished(client, list(ids))
    assert gate.started == ["db01"]


def test_paging(client):
    ids = [post(client, {"vms": [vm]}).json()["dumps"][0]["dump_id"] for vm in ("vm00", "vm01", "vm02", "vm03", "vm04")]
    wait_finished(client, ids)
    newest_first = list(reversed(ids))
    pages = []
    params = {"limit": 2}
    while True:
        page = client.get("/api/dumps", params=params).json()
        pages.append([d["dump_id"] for d in page["dumps"]])
        if page["next_before"] is None:
            break
        assert page["next_before"] == pages[-1][-1] and set(page["vms"]) == {d["vm"] for d in page["dumps"]}
        params["before"] = page["next_before"]
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:]]
    filtered = client.get("/api/dumps", params={"vm": ["vm00", "vm03"], "limit": 1}).json()
    assert [d["vm"] for d in filtered["dumps"]] == ["vm03"] and filtered["next_before"] == ids[3]
    rest = client.get("/api/dumps", params={"vm": ["vm00", "vm03"], "before": ids[3]}).json()
    assert [d["vm"] for d in rest["dumps"]] == ["vm00"] and rest["next_before"] is None
    assert client.get("/api/dumps", params={"limit": 5}).json()["next_before"] is None
    unknown = client.get("/api/dumps", params={"before": "0" * 32})
    assert unknown.status_code == 400 and "before" in unknown.json()["detail"]
    for limit in (0, 10001, "x"):
        assert client.get("/api/dumps", params={"limit": limit}).status_code == 422


def test_locked_job_manager_does_not_block_the_event_loop(settings):
    """A request that waits for the JobManager's lock (held by a dump worker) must not stall other requests."""
    settings.openapi = True  # /openapi.json is the one route that takes no lock of the JobManager
    with running_app(settings) as client:
        jobs = client.app.state.jobs
        holding, release = threading.Event(), threading.Event()

        def hold_lock():
            with jobs._lock:  # pylint: disable=protected-access
                holding.set()
                release.wait(10)

        holder = threading.Thread(target=hold_lock)
        holder.start()
        holding.wait(5)
        blocked = [threading.Thread(target=post, args=(client, {"vms": ["web01"]})),
                   threading.Thread(target=client.get, args=("/api/dumps",))]
        for thread in blocked:
            thread.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert client.get("/openapi.json").status_code == 200
        elapsed = time.monotonic() - started
        release.set()
        for thread in [holder] + blocked:
            thread.join(10)
        assert elapsed < 2


def test_long_poll_answers_on_state_change(gate, client):
    dump_id = post(client, {"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
    marker = client.get(f"/api/dumps/{dump_id}").json()["marker"]
    started = time.monotonic()
    quiet = client.get("/api/dumps", params={"wait": 0.3, "marker": marker}).json()
    assert 0.25 <= time.monotonic() - started < 2 and quiet["marker"] == marker
    timer = threading.Timer(0.3, gate.release.set)
    timer.start()
    started = time.monotonic()
    answer = client.get(f"/api/dumps/{dump_id}", params={"wait": 10, "marker": marker}).json()
    elapsed = time.monotonic() - started
    assert answer["state"] == "completed" and answer["marker"] > marker
    assert 0.2 < elapsed < 2
    stale = client.get("/api/dumps", params={"wait": 10, "marker": marker - 1})
    assert stale.json()["marker"] == answer["marker"]


def test_restart_recovery(settings):
    with running_app(settings) as client:
        done_id = post(client, {"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
        wait_finished(client, [done_id])
        marker = client.get("/api/dumps").json()["marker"]
    # Fake a crash: one dump was running (with a partial file), one queued.
    os.makedirs(settings.dump_dir, exist_ok=True)
    partial = os.path.join(settings.dump_dir, ".db01_x_running.elf.part")
    stray = os.path.join(settings.dump_dir, ".0123.fifo")
    for path in (partial, stray):
        with open(path, "wb") as handle:
            handle.write(b"partial")
    store = Store(settings.state_file)
    base = {"vm_uuid": None, "label": None, "format": "elf", "progress": 10.0, "message": "", "created_at": "2026-11-25T22:50:01.000000Z",
            "finished_at": None, "duration_sec": None, "dump_path": None, "size_bytes": None, "sha256": None, "paused_sec": None,
            "file_deleted": False, "host": "h"}
    store.save(dict(base, dump_id="r" * 32, seq=100, vm="db01", state="running", started_at="2026-11-25T22:50:01.000000Z", tmp_path=partial))
    store.save(dict(base, dump_id="q" * 32, seq=101, vm="app01", state="queued", started_at=None, tmp_path=None))
    store.close()
    with running_app(settings) as client:
        assert client.get("/api/dumps").json()["marker"] > marker
        interrupted = client.get("/api/dumps/" + "r" * 32).json()
        assert interrupted["state"] == "failed" and interrupted["message"] == INTERRUPTED
        assert interrupted["finished_at"] and interrupted["duration_sec"] is not None
        assert not os.path.exists(partial) and not os.path.exists(stray)
        queued = wait_finished(client, ["q" * 32])[0]
        assert queued["state"] == "completed"
        assert client.get(f"/api/dumps/{done_id}").json()["state"] == "completed"


def test_auth(settings, tmp_path, caplog):
    token = "s3cret-token-value"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    settings.token_file = str(token_file)
    settings.insecure_no_auth = False
    caplog.set_level(logging.DEBUG)
    with running_app(settings) as client:
        good = {"Authorization": f"Bearer {token}"}
        routes = [("get", "/api/dumps"), ("post", "/api/dumps"), ("get", "/api/dumps/x"), ("get", "/api/dumps/x/file"),
                  ("delete", "/api/dumps/x"), ("post", "/api/dumps/x/collected")]
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}, {"Authorization": "Basic " + token}):
            for method, path in routes:
                answer = client.request(method, path, headers=headers, json={"vms": ["web01"]})
                assert answer.status_code == 401, (method, path, headers)
                assert answer.json() == {"detail": "missing or invalid bearer token"}
                assert answer.headers["www-authenticate"] == "Bearer"
            # No route there: nothing to protect, and the answer is the same with or without a token.
            assert client.get("/api/nothing", headers=headers).status_code == 404
        assert client.get("/health").json()["auth"] is True
        dump_id = client.post("/api/dumps", json={"vms": ["web01"]}, headers=good).json()["dumps"][0]["dump_id"]
        wait_finished(client, [dump_id], headers=good)
        assert client.get(f"/api/dumps/{dump_id}/file", headers=good).status_code == 200
    assert token not in caplog.text


def test_bad_token_file(settings, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    settings.token_file = str(empty)
    settings.insecure_no_auth = False
    with pytest.raises(ValueError, match="empty"):
        running_app(settings).__enter__()  # pylint: disable=unnecessary-dunder-call


@pytest.mark.parametrize("body, words", [
    ({"vms": []}, "empty"),
    ({"vms": ["web01", "web01"]}, "more than once"),
    ({"vms": ["a/b"]}, "'/'"),
    ({"vms": ["a\x00b"]}, "control"),
    ({"vms": ["a\nb"]}, "control"),
    ({"vms": ["x" * 256]}, "at most 255"),
    ({"vms": [".."]}, "not a valid name"),
    ({"vms": [""]}, "empty"),
    ({"vms": [1]}, "string"),
    ({"vms": "web01"}, "list"),
    ({}, "vms"),
    ({"vms": ["web01"], "format": "zip"}, "unknown format"),
    ({"vms": ["web01"], "label": "bad label!"}, "label"),
    ({"vms": ["web01"], "label": "x" * 129}, "label"),
    ({"vms": ["web01"], "force": "yes"}, "force"),
    ({"vms": ["web01"], "request_id": "x" * 129}, "request_id"),
    ({"vms": ["web01"], "dry_run": "yes"}, "dry_run"),
    ({"vms": ["web01"], "fromat": "kdump-zlib"}, "unknown field 'fromat'"),
    ({"vms": ["web01"], "a": 1, "b": 2}, "unknown fields 'a', 'b'"),
    ([1, 2], "JSON object"),
])
def test_bad_input(client, body, words):
    answer = post(client, body)
    assert answer.status_code == 400, answer.text
    assert isinstance(answer.json()["detail"], str) and words in answer.json()["detail"]


@pytest.mark.parametrize("content, ctype, status", [
    (b"not json", "application/json", 400),
    (b"", "application/json", 400),
    (b"\xff\xfe{", "application/json", 400),
    (b'{"vms": ["\\ud800"]}', "application/json", 400),
    (b'{"vms": ["web01"]}', "text/plain", 415),
    (b'{"vms": ["' + b"x" * (2 * 1024 * 1024) + b'"]}', "application/json", 413),
])
def test_bad_bodies(client, content, ctype, status):
    answer = client.post("/api/dumps", content=content, headers={"Content-Type": ctype})
    assert answer.status_code == status
    assert isinstance(answer.json()["detail"], str)


def test_libvirt_unreachable(settings, tmp_path):
    settings.libvirt_uri = f"test://{tmp_path}/missing-node.xml"
    with running_app(settings) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and health.json()["libvirt"]["error"]
        dump_id = post(client, {"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
        done = wait_finished(client, [dump_id])[0]
        assert done["state"] == "failed" and "cannot connect to libvirt" in done["message"]


def test_reconnects_after_connection_loss(client):
    jobs = client.app.state.jobs
    conn = jobs.virt.connection()
    conn.close()
    assert client.get("/health").status_code == 200
    assert jobs.virt.connection() is not conn


def test_fifo_reader_never_blocks_when_libvirt_never_opens(tmp_path):
    fifo = tmp_path / "f.fifo"
    os.mkfifo(fifo, 0o600)
    hasher = virt.FifoHasher(str(fifo), str(tmp_path / "out"))
    hasher.start()
    started = time.monotonic()
    hasher.finish()
    assert time.monotonic() - started < 2
    assert hasher.size == 0


def test_fifo_reader_hashes_and_writes(tmp_path):
    fifo = tmp_path / "f.fifo"
    os.mkfifo(fifo, 0o600)
    hasher = virt.FifoHasher(str(fifo), str(tmp_path / "out"))
    hasher.start()
    data = os.urandom(21 * 1024 * 1024 + 17)  # long enough for the streaming writeback to move steps to disk
    with open(fifo, "wb") as writer:
        writer.write(data)
    hasher.finish()
    assert hasher.error is None and hasher.size == len(data)
    assert hasher.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "out").read_bytes() == data
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o600


def test_streaming_writeback_keeps_two_steps_in_flight(tmp_path):
    step = 1024 * 1024
    with open(tmp_path / "img", "wb") as handle:
        writeback = virt.StreamingWriteback(handle.fileno(), step)
        handle.write(b"x" * 5 * step)
        handle.flush()
        writeback.advance(5 * step)
        assert writeback.enabled and writeback.done == 4 * step  # steps 0-3 on disk, 4 handed to writeback
        handle.write(b"y" * 7)
        handle.flush()
    assert (tmp_path / "img").read_bytes() == b"x" * 5 * step + b"y" * 7
    read_end, write_end = os.pipe()
    try:
        on_pipe = virt.StreamingWriteback(write_end, step)
        assert not on_pipe.enabled  # no page cache behind a pipe: nothing to move, nothing to fail
        on_pipe.advance(3 * step)
        assert on_pipe.done == 0
    finally:
        os.close(read_end)
        os.close(write_end)


def test_options_and_env_fallbacks(tmp_path):
    env = {"MEMDUMP_LISTEN": "127.0.0.1:6001", "MEMDUMP_MAX_PARALLEL": "3", "MEMDUMP_DUMP_DIR": str(tmp_path),
           "MEMDUMP_HASH_MODE": "after", "MEMDUMP_LIBVIRT_URI": "test:///default", "MEMDUMP_INSECURE_NO_AUTH": "1"}
    settings = parse_args([], env)
    assert (settings.listen, settings.max_parallel, settings.dump_dir, settings.hash_mode) == ("127.0.0.1:6001", 3, str(tmp_path), "after")
    with pytest.raises(SystemExit):
        parse_args(["--core-api-only"], {})  # a test-only mode, now tests/doubles/core_service.py
    settings = parse_args(["--max-parallel", "1", "--listen", "[::1]:7000"], env)
    assert settings.max_parallel == 1 and settings.listen == "[::1]:7000"
    assert parse_args(["--insecure-no-auth"], {}).listen == "127.0.0.1:5001"
    with pytest.raises(ValueError):
        parse_args(["--tls-cert", "x", "--insecure-no-auth"], {})
    with pytest.raises(ValueError):
        Settings(listen="nohost").validate()


def test_unflatten(tmp_path):
    flat = tmp_path / "flat"
    blocks = [(0, b"KDUMP   header"), (8192, b"x" * 5000), (100, b"patched")]
    with open(flat, "wb") as handle:
        handle.write(virt.FLAT_SIGNATURE.ljust(virt.FLAT_HEADER_SIZE, b"\0"))
        for offset, payload in blocks:
            handle.write(struct.pack(">qq", offset, len(payload)) + payload)
        handle.write(struct.pack(">qq", -1, -1))
    assert virt.is_flattened(str(flat))
    virt.unflatten(str(flat), str(tmp_path / "out"))
    out = (tmp_path / "out").read_bytes()
    assert out.startswith(b"KDUMP   header") and out[100:107] == b"patched" and out[8192:] == b"x" * 5000


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl not installed")
def test_command_line_service_with_tls_and_token(tmp_path, node_uri):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True)
    token = "cli-token-0123456789"
    (tmp_path / "token").write_text(token)
    (tmp_path / "token").chmod(0o600)
    port = free_port()
    env = dict(os.environ, MEMDUMP_DUMP_DIR=str(tmp_path / "dumps"), MEMDUMP_STATE_FILE=str(tmp_path / "state.db"),
               MEMDUMP_LIBVIRT_URI=node_uri, MEMDUMP_TOKEN_FILE=str(tmp_path / "token"), MEMDUMP_TLS_CERT=str(tmp_path / "cert.pem"),
               MEMDUMP_TLS_KEY=str(tmp_path / "key.pem"))
    log = open(tmp_path / "log", "wb")  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, "-m", "memdump_service", "--listen", f"127.0.0.1:{port}"],  # pylint: disable=consider-using-with
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=str(tmp_path / "cert.pem"), timeout=5) as web:
            deadline = time.monotonic() + 30
            health = None
            while health is None and time.monotonic() < deadline:
                try:
                    health = web.get(url + "/health")
                except httpx.TransportError:
                    assert proc.poll() is None, (tmp_path / "log").read_text()
                    time.sleep(0.05)
            assert health is not None, (tmp_path / "log").read_text()
            assert health.status_code == 200 and health.json()["auth"] is True
            assert web.get(url + "/api/dumps").status_code == 401
            answer = web.post(url + "/api/dumps", json={"vms": ["web01"]}, headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 202
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        log.close()
    text = (tmp_path / "log").read_text()
    assert "state=queued" in text and token not in text
