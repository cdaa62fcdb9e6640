"""The test double of the seed's core service (tests/doubles/core_service.py) on libvirt's test driver."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_port

DOUBLE = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "doubles", "core_service.py")
SEED_FIELDS = {"dump_id", "vm", "state", "progress", "dump_path", "started_at", "finished_at", "duration_sec", "message"}
TOKEN = "double-token-0123"


def call(url, method, path, body=None, token=TOKEN):
    request = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(name="double")
def fixture_double(tmp_path, node_uri):
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o600)
    port = free_port()
    log = open(tmp_path / "log", "wb")  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, DOUBLE, "--listen", f"127.0.0.1:{port}", "--libvirt-uri", node_uri,  # pylint: disable=consider-using-with
                             "--dump-dir", str(tmp_path / "dumps"), "--state-file", str(tmp_path / "state.db"),
                             "--token-file", str(tmp_path / "token")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert call(url, "GET", "/health") == (200, {"status": "ok", "features": []})
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
                time.sleep(0.05)
        yield url, tmp_path / "log"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        log.close()


def test_double_offers_only_the_seed_api_with_real_dumps(double):
    url, log = double
    status, answer = call(url, "POST", "/api/dumps", {"vms": ["web01"], "label": "IR-1", "format": "nonsense", "force": False})
    assert status == 202 and set(answer) == {"dumps"} and set(answer["dumps"][0]) == SEED_FIELDS
    dump_id = answer["dumps"][0]["dump_id"]
    status, again = call(url, "POST", "/api/dumps", {"vm_ids": ["db01"]})
    assert status == 202 and [d["vm"] for d in again["dumps"]] == ["db01"]
    for _attempt in range(200):
        status, listed = call(url, "GET", f"/api/dumps?dump_id={dump_id}&wait=5&marker=0")
        assert status == 200 and set(listed) == {"dumps", "vms"}
        if listed["dumps"][0]["state"] == "completed":
            break
        time.sleep(0.05)
    record = listed["dumps"][0]
    assert set(record) == SEED_FIELDS and listed["vms"] == {"web01": [dump_id]}
    with open(record["dump_path"], "rb") as image:
        assert image.read(14) == b"TestGuestMagic"  # a real dump through libvirt
    assert [d["vm"] for d in call(url, "GET", "/api/dumps?vm=db01")[1]["dumps"]] == ["db01"]
    for method, path in (("GET", f"/api/dumps/{dump_id}"), ("GET", f"/api/dumps/{dump_id}/file"), ("DELETE", f"/api/dumps/{dump_id}")):
        assert call(url, method, path)[0] == 404
    assert call(url, "POST", "/api/dumps", {"vms": []})[0] == 400
    assert call(url, "POST", "/api/dumps", {"vms": ["web01", "web01"]})[0] == 400
    assert call(url, "GET", "/api/dumps", token="wrong") == (401, {"detail": "missing or invalid bearer token"})
    assert call(url, "POST", "/api/dumps", {"vms": ["db01"]}, token="wrong")[0] == 401
    assert "wait=5&marker=0" in log.read_text()  # request lines are logged, query included
