"""GET /api/vms: which VMs this host runs (issue 20: one list of VMs for a whole fleet)."""

import hashlib
import json
import os

import pytest

from conftest import TEST_VMS, real_libvirt_app, running_app


def write_tokens(path, clients):
    """A 0600 tokens file for clients {name: (token, scopes)}."""
    body = {"clients": [{"name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}
                        for name, (token, scopes) in clients.items()]}
    path.write_text(json.dumps(body))
    path.chmod(0o600)


def test_lists_every_domain_with_state_uuid_and_whether_it_runs(client):
    answer = client.get("/api/vms")
    assert answer.status_code == 200, answer.text
    vms = answer.json()["vms"]
    assert [vm["name"] for vm in vms] == sorted(TEST_VMS + ["stopped01"])
    by_name = {vm["name"]: vm for vm in vms}
    assert by_name["web01"] == {"name": "web01", "state": "running", "uuid": "6695eb01-f6a4-8304-79aa-000000000000", "active": True}
    assert by_name["stopped01"]["state"] == "shut off" and by_name["stopped01"]["active"] is False


def test_needs_the_read_scope(settings, tmp_path):
    write_tokens(tmp_path / "tokens.json", {"reader": ("reader-token-1", ["read"]), "trigger": ("trigger-token-1", ["trigger"])})
    settings.tokens_file, settings.insecure_no_auth = str(tmp_path / "tokens.json"), False
    with running_app(settings) as client:
        assert client.get("/api/vms").status_code == 401
        refused = client.get("/api/vms", headers={"Authorization": "Bearer trigger-token-1"})
        assert refused.status_code == 403 and "lacks the scope 'read'" in refused.json()["detail"]
        assert client.get("/api/vms", headers={"Authorization": "Bearer reader-token-1"}).status_code == 200


def test_libvirt_unreachable_is_a_clear_error(settings, tmp_path):
    settings.libvirt_uri = f"test://{tmp_path}/missing-node.xml"
    with running_app(settings) as client:
        answer = client.get("/api/vms")
    assert answer.status_code == 502
    detail = answer.json()["detail"]
    assert settings.libvirt_uri in detail and "cannot say which VMs this host runs" in detail


def test_reconnects_after_the_connection_broke(client):
    client.app.state.jobs.virt.connection().close()
    answer = client.get("/api/vms")
    assert answer.status_code == 200 and "web01" in [vm["name"] for vm in answer.json()["vms"]]


@pytest.mark.skipif(not (os.environ.get("MEMDUMP_TEST_LIBVIRT_URI") and os.environ.get("MEMDUMP_TEST_VM")),
                    reason="MEMDUMP_TEST_LIBVIRT_URI / MEMDUMP_TEST_VM unset (run tests/stack/stack.sh up)")
def test_real_libvirt_lists_the_running_guest(tmp_path):
    with real_libvirt_app(tmp_path / "qemu", os.environ["MEMDUMP_TEST_LIBVIRT_URI"]) as client:
        answer = client.get("/api/vms")
    assert answer.status_code == 200, answer.text
    guest = {vm["name"]: vm for vm in answer.json()["vms"]}[os.environ["MEMDUMP_TEST_VM"]]
    assert guest["state"] == "running" and guest["active"] is True and len(guest["uuid"]) == 36
