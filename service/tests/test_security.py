"""Issue 13: deny by default, named tokens with scopes, the audit trail, safe defaults, limits, disk space, retention."""

import hashlib
import json
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from memdump_service import auth, dumps, health, jobs
from memdump_service.app import create_app
from memdump_service.config import ConfigError, Settings
from memdump_service.jobs import JobManager
from memdump_service.store import Store
from memdump_service.virt import DumpError

from conftest import running_app, wait_finished

MIB = 1024 * 1024
CLIENTS = {"reader": ["read"], "collector": ["read", "collect"], "trigger": ["trigger"], "deleter": ["delete"],
           "admin": list(auth.SCOPES)}
# (method, path, body, scope it needs); DELETE last, since it removes the image the others use.
ROUTES = [
    ("GET", "/api/dumps", None, "read"),
    ("GET", "/api/dumps/{id}", None, "read"),
    ("GET", "/api/dumps/{id}/file", None, "collect"),
    ("POST", "/api/dumps/{id}/collected", {"sha256": "{sha}"}, "collect"),
    ("POST", "/api/dumps", {"vms": ["db01"], "dry_run": True}, "trigger"),
    ("DELETE", "/api/dumps/{id}", None, "delete"),
]
TEMPLATES = {"/api/dumps/{id}": "/api/dumps/{dump_id}", "/api/dumps/{id}/file": "/api/dumps/{dump_id}/file",
             "/api/dumps/{id}/collected": "/api/dumps/{dump_id}/collected"}
# Everything str.splitlines() splits a line on.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def write_tokens(path, clients, tokens=None):
    """A 0600 tokens file for clients {name: scopes}; returns {name: token} (given ones kept, others new)."""
    tokens = dict(tokens or {})
    for name in clients:
        tokens.setdefault(name, secrets.token_urlsafe(16))
    body = {"clients": [{"name": name, "token_sha256": hashlib.sha256(tokens[name].encode()).hexdigest(), "scopes": scopes}
                        for name, scopes in clients.items()]}
    fresh = f"{path}.new"
    with open(fresh, "w", encoding="utf-8") as handle:
        json.dump(body, handle)
    os.chmod(fresh, 0o600)
    os.replace(fresh, path)
    return {name: tokens[name] for name in clients}


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(name="tokens")
def fixture_tokens(settings, tmp_path):
    """The service runs with a tokens file of CLIENTS; {name: token}."""
    settings.tokens_file = str(tmp_path / "tokens.json")
    settings.insecure_no_auth = False
    return write_tokens(settings.tokens_file, CLIENTS)


def audit_lines(caplog):
    return [json.loads(record.getMessage()) for record in caplog.records if record.name == "memdump_service.audit"]


def one_completed_dump(client, headers=None, vm="web01"):
    dump_id = client.post("/api/dumps", json={"vms": [vm]}, headers=headers).json()["dumps"][0]["dump_id"]
    record = wait_finished(client, [dump_id], headers=headers)[0]
    assert record["state"] == "completed", record
    return record


# ----- deny by default


def test_every_route_declares_what_it_needs():
    for router in (health.router, dumps.router):
        for route in router.routes:
            assert route.endpoint in auth.REQUIRED, f"{route.path} has no auth.access declaration"
    assert auth.REQUIRED[health.health] == auth.PUBLIC
    assert [scope for endpoint, scope in auth.REQUIRED.items() if scope == auth.PUBLIC] == [auth.PUBLIC]


def test_a_route_without_a_declaration_is_refused_to_everyone(settings, tokens):
    app = create_app(settings)
    app.add_api_route("/api/undeclared", lambda: {"secret": 1})
    with TestClient(app, base_url="http://127.0.0.1") as client:
        answer = client.get("/api/undeclared", headers=bearer(tokens["admin"]))
        assert answer.status_code == 403 and "declares no scope" in answer.json()["detail"]
        assert client.get("/api/undeclared").status_code == 403


HOST_TRICKS = ["x?", "x#", "x/y", "x?/api/dumps", "127.0.0.1?", "127.0.0.1#", "127.0.0.1/api/dumps", "127.0.0.1:80/x",
               "127.0.0.1:x", "[::1", "evil.example", "127.0.0.1@evil", "localhost.", "", "x\\y", "%2F", "..", "127.0.0.1:80?"]


@pytest.mark.parametrize("allowed_hosts", [[], ["*"]], ids=["default-hosts", "any-host"])
def test_host_header_tricks_never_reach_evidence_without_a_token(settings, tokens, allowed_hosts):
    """With the Host check (default) the tricks get 400; with it switched off ('*') the route's guard still says 401."""
    settings.allowed_hosts = allowed_hosts
    with running_app(settings) as client:
        record = one_completed_dump(client, bearer(tokens["admin"]))
        before = client.get("/api/dumps", headers=bearer(tokens["admin"])).json()["dumps"]
        files = sorted(os.listdir(settings.dump_dir))
        sent = 0
        for host in HOST_TRICKS:
            for method, path, body, _scope in ROUTES:
                url = path.replace("{id}", record["dump_id"])
                payload = json.loads(json.dumps(body).replace("{sha}", record["sha256"])) if body else None
                for headers in ({}, {"Authorization": "Bearer nope"}):
                    try:
                        answer = client.request(method, url, json=payload, headers=dict(headers, host=host))
                    except (httpx.LocalProtocolError, ValueError):
                        continue  # httpx would not send it
                    sent += 1
                    expected = (400,) if not allowed_hosts else (401,)
                    assert answer.status_code in expected, (host, method, url, headers, answer.status_code, answer.text)
            # A valid token does not make a bad Host acceptable where the Host check is on.
            answer = client.get("/api/dumps", headers=dict(bearer(tokens["admin"]), host=host))
            assert answer.status_code == (200 if allowed_hosts else 400), (host, answer.status_code)
        assert sent >= len(HOST_TRICKS) * len(ROUTES)
        assert client.get("/api/dumps", headers=bearer(tokens["admin"])).json()["dumps"] == before
        assert sorted(os.listdir(settings.dump_dir)) == files and os.path.exists(record["dump_path"])


def test_default_hosts_are_loopback_names_and_the_listen_address():
    assert Settings(listen="127.0.0.1:5001").hosts() == ["127.0.0.1", "[::1]", "localhost"]
    assert "[::1]" in Settings(listen="[::1]:5001").hosts()
    wide = Settings(listen="0.0.0.0:5001").hosts()
    assert "0.0.0.0" not in wide and "localhost" in wide and len(wide) > 3  # and this host's names
    assert "192.0.2.7" in Settings(listen="192.0.2.7:5001").hosts()
    assert Settings(allowed_hosts=["memdump.example"]).hosts() == ["memdump.example"]


# ----- named tokens, scopes, audit


def test_scopes_per_route_with_audit_lines(settings, tokens, caplog):
    caplog.set_level(logging.INFO)
    with running_app(settings) as client:
        record = one_completed_dump(client, bearer(tokens["admin"]))
        caplog.clear()
        sent = []
        for method, path, body, scope in ROUTES:
            url = path.replace("{id}", record["dump_id"])
            payload = json.loads(json.dumps(body).replace("{sha}", record["sha256"])) if body else None
            for name, scopes in CLIENTS.items():
                answer = client.request(method, url, json=payload, headers=bearer(tokens[name]))
                sent.append((name, method, TEMPLATES.get(path, path), answer.status_code))
                if scope in scopes:
                    assert answer.status_code in (200, 202), (name, method, url, answer.text)
                else:
                    assert answer.status_code == 403, (name, method, url, answer.text)
                    detail = answer.json()["detail"]
                    assert f"'{name}'" in detail and f"lacks the scope '{scope}'" in detail, detail
        anonymous = client.get(f"/api/dumps/{record['dump_id']}/file")
        assert anonymous.status_code == 401
        lines = [line for line in audit_lines(caplog) if line["event"] == "request"]
    assert [(line["client"], line["method"], line["route"], line["status"]) for line in lines] == sent + [
        (None, "GET", "/api/dumps/{dump_id}/file", 401)]
    for line in lines:
        assert line["event"] == "request" and line["remote"] == "testclient" and line["time"].endswith("Z")
        assert line["dump_id"] == (record["dump_id"] if "{dump_id}" in line["route"] else None)
    dry_runs = [line for line in lines if line["method"] == "POST" and line["route"] == "/api/dumps" and line["status"] == 200]
    assert dry_runs and all(line["dry_run"] is True and line["vms"] == ["db01"] for line in dry_runs)
    for token in tokens.values():
        assert token not in caplog.text


def test_token_file_is_one_client_with_every_scope(settings, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "token").write_text("only-token-0123\n")
    (tmp_path / "token").chmod(0o600)
    settings.token_file, settings.insecure_no_auth = str(tmp_path / "token"), False
    with running_app(settings) as client:
        record = one_completed_dump(client, bearer("only-token-0123"))
        assert client.delete(f"/api/dumps/{record['dump_id']}", headers=bearer("only-token-0123")).status_code == 200
    assert {line["client"] for line in audit_lines(caplog)} == {"token-file"}
    assert "only-token-0123" not in caplog.text


def test_tokens_file_change_is_picked_up_and_a_broken_one_denies_everyone(settings, tokens, caplog):
    path = settings.tokens_file
    with running_app(settings) as client:
        assert client.get("/api/dumps", headers=bearer(tokens["reader"])).status_code == 200
        kept = {"admin": CLIENTS["admin"]}
        write_tokens(path, kept, tokens)  # reader revoked, without a restart
        assert client.get("/api/dumps", headers=bearer(tokens["reader"])).status_code == 401
        assert client.get("/api/dumps", headers=bearer(tokens["admin"])).status_code == 200
        breakages = [("not JSON", lambda: open(path, "w", encoding="utf-8").write("{"), "not valid JSON"),
                     ("group-readable", lambda: os.chmod(path, 0o640), "chmod 600"),
                     ("removed", lambda: os.unlink(path), "cannot read token file")]
        for what, damage, words in breakages:
            caplog.clear()
            damage()
            for _request in range(3):
                answer = client.get("/api/dumps", headers=bearer(tokens["admin"]))
                assert answer.status_code == 503, what
                assert answer.json()["detail"] == auth.UNAVAILABLE and path not in answer.text
            errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1 and words in errors[0] and path in errors[0], (what, errors)  # once per change
            write_tokens(path, kept, tokens)
            assert client.get("/api/dumps", headers=bearer(tokens["admin"])).status_code == 200, what


@pytest.mark.parametrize("mode, refused", [(0o644, True), (0o640, True), (0o620, True), (0o604, True), (0o602, True),
                                           (0o600, False), (0o400, False), (0o700, False)])
def test_token_files_must_be_private(settings, tmp_path, mode, refused):
    for option in ("token_file", "tokens_file"):
        path = tmp_path / option
        if option == "token_file":
            path.write_text("a-token-value\n")
        else:
            write_tokens(str(path), {"admin": ["read"]})
        path.chmod(mode)
        check = Settings(**dict(vars(settings), insecure_no_auth=False, **{option: str(path)}))
        if refused:
            with pytest.raises(ConfigError) as exc:
                create_app(check)
            assert str(path) in str(exc.value) and f"chmod 600 {path}" in str(exc.value) and f"{mode:04o}" in str(exc.value)
        else:
            create_app(check)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_token_file_of_another_user_is_refused(tmp_path):
    path = tmp_path / "token"
    path.write_text("a-token-value\n")
    path.chmod(0o600)
    os.chown(path, 4242, 4242)
    with pytest.raises(ConfigError, match="belongs to uid 4242"):
        auth.Credentials(str(path), single_token=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file to another user")
def test_state_file_the_service_cannot_open_is_named_with_its_owner(tmp_path, node_uri):
    # What a redeployment under another user leaves: a state path the service cannot open (here a directory of uid 4242).
    state = tmp_path / "state.sqlite"
    state.mkdir()
    os.chown(state, 4242, 4242)
    with pytest.raises(ConfigError, match=r"cannot open the state file .*belongs to uid 4242, and the service runs as uid 0"):
        Store(str(state))
    proc = subprocess.run([sys.executable, "-m", "memdump_service", "--libvirt-uri", node_uri, "--dump-dir", str(tmp_path / "d"),
                           "--state-file", str(state), "--insecure-no-auth"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "cannot open the state file" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


EMPTY_HASH = hashlib.sha256(b"").hexdigest()
GOOD = {"name": "a", "token_sha256": "ab" * 32, "scopes": ["read"]}


@pytest.mark.parametrize("content, words", [
    ("{", "not valid JSON"),
    ("[]", '{"clients": [...]}'),
    ('{"clients": [], "extra": 1}', '{"clients": [...]}'),
    (json.dumps({"clients": [dict(GOOD, scope=["read"])]}), "exactly the keys"),
    (json.dumps({"clients": [{"name": "a", "token_sha256": "ab" * 32}]}), "exactly the keys"),
    (json.dumps({"clients": [dict(GOOD, scopes=["admin"])]}), "scopes must be"),
    (json.dumps({"clients": [dict(GOOD, scopes=[])]}), "scopes must be"),
    (json.dumps({"clients": [dict(GOOD, token_sha256="abc")]}), "64 hex digits"),
    (json.dumps({"clients": [dict(GOOD, token_sha256=EMPTY_HASH)]}), "non-empty token"),
    (json.dumps({"clients": [GOOD, dict(GOOD, name="b")]}), "same token"),
    (json.dumps({"clients": [GOOD, dict(GOOD, token_sha256="cd" * 32)]}), "unique"),
    (json.dumps({"clients": [dict(GOOD, name="a b")]}), "unique, 1-64 characters"),
])
def test_bad_tokens_files_are_refused_at_start(tmp_path, content, words):
    path = tmp_path / "tokens.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as exc:
        auth.Credentials(str(path), single_token=False)
    assert words in str(exc.value) and str(path) in str(exc.value)


# ----- safe defaults


@pytest.mark.parametrize("options, words", [
    ({}, "no authentication configured"),
    ({"insecure_no_auth": True, "listen": "0.0.0.0:5001"}, "only on a loopback listener"),
    ({"insecure_no_auth": True, "listen": "192.0.2.7:5001", "insecure_listen": True}, "only on a loopback listener"),
    ({"insecure_no_auth": True, "token_file": "t"}, "contradicts"),
    ({"token_file": "t", "tokens_file": "u"}, "not both"),
    ({"token_file": "t", "listen": "0.0.0.0:5001"}, "needs TLS"),
    ({"token_file": "t", "listen": "[::]:5001"}, "needs TLS"),
    ({"token_file": "t", "listen": "kvm01.example:5001"}, "needs TLS"),
    ({"token_file": "t", "tls_client_ca": "ca.pem"}, "needs TLS"),
])
def test_unsafe_settings_are_refused(options, words):
    with pytest.raises(ConfigError, match=words):
        Settings(**options).validate()


@pytest.mark.parametrize("options", [
    {"insecure_no_auth": True, "listen": "127.0.0.1:5001"},
    {"insecure_no_auth": True, "listen": "127.8.9.10:5001"},
    {"insecure_no_auth": True, "listen": "[::1]:5001"},
    {"insecure_no_auth": True, "listen": "localhost:5001"},
    {"token_file": "t", "listen": "0.0.0.0:5001", "tls_cert": "c", "tls_key": "k"},
    {"token_file": "t", "listen": "0.0.0.0:5001", "insecure_listen": True},
])
def test_safe_settings_are_accepted(options):
    Settings(**options).validate()


@pytest.mark.parametrize("args, words", [
    ([], "no authentication configured: give --tokens-file FILE"),
    (["--insecure-no-auth", "--listen", "0.0.0.0:5999"], "only on a loopback listener"),
    (["--token-file", "{token}", "--listen", "0.0.0.0:5999"], "needs TLS: give --tls-cert and --tls-key, or --insecure-listen"),
    (["--token-file", "{loose}"], "is readable or writable by group or others (mode 0644); run chmod 600"),
])
def test_command_line_refuses_unsafe_starts(tmp_path, node_uri, args, words):
    (tmp_path / "token").write_text("a-token-value\n")
    (tmp_path / "token").chmod(0o600)
    (tmp_path / "loose").write_text("a-token-value\n")
    (tmp_path / "loose").chmod(0o644)
    argv = [arg.format(token=tmp_path / "token", loose=tmp_path / "loose") for arg in args]
    proc = subprocess.run([sys.executable, "-m", "memdump_service", "--libvirt-uri", node_uri, "--dump-dir", str(tmp_path / "d"),
                           "--state-file", str(tmp_path / "s.db")] + argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr


# ----- input


def test_line_breaks_cover_every_character_splitlines_splits_on():
    assert {chr(code) for code in range(0x110000) if len(f"a{chr(code)}b".splitlines()) > 1} == set(LINE_BREAKS)


@pytest.mark.parametrize("char", list(LINE_BREAKS), ids=[f"U+{ord(c):04X}" for c in LINE_BREAKS])
def test_names_with_line_breaks_are_refused(client, char):
    for body in ({"vms": [f"web{char}01"]}, {"vm_ids": [f"web{char}01"]}, {"vms": ["web01"], "label": f"IR{char}1"},
                 {"vms": ["web01"], "request_id": f"run{char}1"}):
        answer = client.post("/api/dumps", json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert "\n" not in answer.json()["detail"] and char not in answer.json()["detail"]
    assert client.get("/api/dumps").json()["dumps"] == []


# ----- limits


def test_held_long_polls_are_capped(gate, settings):
    settings.max_waiters = 2
    with running_app(settings) as client:
        dump_id = client.post("/api/dumps", json={"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
        marker = client.get(f"/api/dumps/{dump_id}").json()["marker"]
        held = [threading.Thread(target=client.get, args=("/api/dumps",), kwargs={"params": {"wait": 10, "marker": marker}})
                for _number in range(2)]
        for thread in held:
            thread.start()
        # Both long-polls held before the third asks (a fixed sleep was too short on a loaded machine).
        notifier = client.app.state.jobs.notifier
        deadline = time.monotonic() + 10
        while len(notifier._waiters) < 2 and time.monotonic() < deadline:  # pylint: disable=protected-access
            time.sleep(0.01)
        started = time.monotonic()
        extra = client.get(f"/api/dumps/{dump_id}", params={"wait": 10, "marker": marker})
        elapsed = time.monotonic() - started
        assert extra.status_code == 200 and extra.json()["marker"] == marker and elapsed < 1, elapsed
        assert all(thread.is_alive() for thread in held)
        gate.release.set()
        for thread in held:
            thread.join(10)
            assert not thread.is_alive()


# ----- disk


def test_parallel_dumps_cannot_together_overfill_the_disk(settings, monkeypatch):
    """Two 128 MiB test-driver guests, 64 MiB margin each, 300 MiB free: one fits, both do not."""
    settings.max_parallel = 2
    monkeypatch.setattr(jobs, "free_bytes", lambda _path: 300 * MIB)
    granted, refused = threading.Event(), threading.Event()
    grant = JobManager._reserve  # pylint: disable=protected-access

    def reserve(self, dump_id, job, memory):
        try:
            grant(self, dump_id, job, memory)
        except DumpError:
            refused.set()
            raise
        if not granted.is_set():
            granted.set()
            refused.wait(10)  # keep the first dump "running" until the second asked for its space

    monkeypatch.setattr(JobManager, "_reserve", reserve)
    with running_app(settings) as client:
        ids = [d["dump_id"] for d in client.post("/api/dumps", json={"vms": ["web01", "db01"]}).json()["dumps"]]
        records = wait_finished(client, ids)
        assert sorted(r["state"] for r in records) == ["completed", "failed"], records
        failed = next(r for r in records if r["state"] == "failed")
        assert failed["message"] == (f"not enough free space in {settings.dump_dir}: {192 * MIB} bytes needed (guest memory "
                                     f"{128 * MIB} + margin {64 * MIB}), {300 * MIB} free of which {192 * MIB} are reserved "
                                     "by 1 running dump")
        assert failed["paused_sec"] is None and failed["dump_path"] is None
        # Once the first is done, its space is no longer reserved (the fake free space did not shrink).
        again = client.post("/api/dumps", json={"vms": [failed["vm"]]}).json()["dumps"][0]["dump_id"]
        assert wait_finished(client, [again])[0]["state"] == "completed"


# ----- collected, retention


def test_collected_route(gate, client):
    gate.release.set()
    record = one_completed_dump(client)
    url = f"/api/dumps/{record['dump_id']}/collected"
    wrong = client.post(url, json={"sha256": "1" * 64})
    assert wrong.status_code == 409 and "differs" in wrong.json()["detail"]
    for body, words in (({}, "sha256"), ({"sha256": "xyz"}, "64 hex digits"), ({"sha256": record["sha256"], "by": "me"}, "unknown field")):
        answer = client.post(url, json=body)
        assert answer.status_code == 400 and words in answer.json()["detail"], answer.text
    assert client.get(f"/api/dumps/{record['dump_id']}").json()["collected_at"] is None
    assert client.post("/api/dumps/" + "0" * 32 + "/collected", json={"sha256": record["sha256"]}).status_code == 404
    done = client.post(url, json={"sha256": record["sha256"].upper()})
    assert done.status_code == 200 and done.json()["collected_at"].endswith("Z")
    assert client.post(url, json={"sha256": record["sha256"]}).json()["collected_at"] == done.json()["collected_at"]
    gate.release.clear()
    running = client.post("/api/dumps", json={"vms": ["db01"]}).json()["dumps"][0]
    answer = client.post(f"/api/dumps/{running['dump_id']}/collected", json={"sha256": record["sha256"]})
    assert answer.status_code == 409 and "running" in answer.json()["detail"]
    gate.release.set()


def wait_deleted(client, dump_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/api/dumps/{dump_id}").json()
        if record["file_deleted"]:
            return record
        time.sleep(0.05)
    raise AssertionError(f"the image of {dump_id} was not removed in {timeout} s")


def test_retention_removes_images_only_once_collected(settings, caplog):
    caplog.set_level(logging.INFO)
    settings.retention_days, settings.retention_interval = 0.5 / 86400, 0.05  # half a second
    with running_app(settings) as client:
        kept, collected = one_completed_dump(client, vm="web01"), one_completed_dump(client, vm="db01")
        time.sleep(1)
        assert os.path.exists(kept["dump_path"]) and os.path.exists(collected["dump_path"])
        client.post(f"/api/dumps/{collected['dump_id']}/collected", json={"sha256": collected["sha256"]})
        removed = wait_deleted(client, collected["dump_id"])
        assert removed["dump_path"] is None and removed["state"] == "completed" and not os.path.exists(collected["dump_path"])
        time.sleep(0.5)
        assert os.path.exists(kept["dump_path"]) and not client.get(f"/api/dumps/{kept['dump_id']}").json()["file_deleted"]
    lines = [line for line in audit_lines(caplog) if line["event"] == "retention"]
    assert [(line["dump_id"], line["path"], line["sha256"]) for line in lines] == [
        (collected["dump_id"], collected["dump_path"], collected["sha256"])]
    assert "--retention-days" in lines[0]["reason"]


def test_retention_uncollected(settings):
    settings.retention_days, settings.retention_interval, settings.retention_uncollected = 0.2 / 86400, 0.05, True
    with running_app(settings) as client:
        record = one_completed_dump(client)
        assert wait_deleted(client, record["dump_id"])["collected_at"] is None
        assert not os.path.exists(record["dump_path"])


def test_retention_max_bytes_removes_the_oldest_collected_images(settings, caplog):
    caplog.set_level(logging.INFO)
    settings.max_bytes, settings.retention_interval = 1 << 40, 0.05
    with running_app(settings) as client:
        records = [one_completed_dump(client, vm=vm) for vm in ("web01", "db01", "app01", "vm00")]
        size = records[0]["size_bytes"]
        settings.max_bytes = 2 * size  # room for two of the four images
        for record in records[:3]:  # the newest, vm00, is not collected: it stays and counts
            client.post(f"/api/dumps/{record['dump_id']}/collected", json={"sha256": record["sha256"]})
        wait_deleted(client, records[1]["dump_id"])
        time.sleep(0.3)
        deleted = [client.get(f"/api/dumps/{r['dump_id']}").json()["file_deleted"] for r in records]
    assert deleted == [True, True, False, False]
    reasons = [line["reason"] for line in audit_lines(caplog) if line["event"] == "retention"]
    assert len(reasons) == 2 and all("--max-bytes" in reason for reason in reasons)


def test_job_database_without_collected_at_is_upgraded(settings):
    os.makedirs(os.path.dirname(settings.state_file))
    with sqlite3.connect(settings.state_file) as db:
        db.execute("CREATE TABLE dumps (dump_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, vm TEXT NOT NULL, vm_uuid TEXT, label TEXT, "
                   "format TEXT NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '', "
                   "created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, duration_sec REAL, dump_path TEXT, tmp_path TEXT, "
                   "size_bytes INTEGER, sha256 TEXT, paused_sec REAL, file_deleted INTEGER NOT NULL DEFAULT 0, host TEXT NOT NULL)")
        db.execute("INSERT INTO dumps (dump_id, seq, vm, format, state, created_at, sha256, host) VALUES "
                   "('d' || hex(randomblob(15)), 1, 'web01', 'elf', 'completed', '2026-11-25T22:50:01.000000Z', ?, 'h')", ("a" * 64,))
    with running_app(settings) as client:
        record = client.get("/api/dumps").json()["dumps"][0]
        assert record["collected_at"] is None
        answer = client.post(f"/api/dumps/{record['dump_id']}/collected", json={"sha256": "a" * 64})
        assert answer.status_code == 200 and answer.json()["collected_at"]
