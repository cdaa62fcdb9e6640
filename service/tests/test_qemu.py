"""Against the real libvirtd and the stack's QEMU guests (skipped unless tests/stack/stack.sh up exported them)."""

import hashlib
import os
import stat
import subprocess
import time

import pytest


import elfcore
from conftest import real_libvirt_app, wait_finished

URI = os.environ.get("MEMDUMP_TEST_LIBVIRT_URI")
VM = os.environ.get("MEMDUMP_TEST_VM")
VM2 = os.environ.get("MEMDUMP_TEST_VM2")
VM_LARGE = os.environ.get("MEMDUMP_TEST_VM_LARGE")
MIB = int(os.environ.get("MEMDUMP_TEST_VM_MIB", "128"))

pytestmark = pytest.mark.skipif(not (URI and VM), reason="MEMDUMP_TEST_LIBVIRT_URI / MEMDUMP_TEST_VM unset (run tests/stack/stack.sh up)")


@pytest.fixture(name="qclient", scope="module")
def fixture_qclient(tmp_path_factory):
    """One service on the real libvirtd for the module; its images are removed afterwards."""
    with real_libvirt_app(tmp_path_factory.mktemp("qemu"), URI) as client:
        yield client


def dump(client, body, timeout=120.0):
    """Dump and wait; retries when another helper's job on the same guest is in the way."""
    for _attempt in range(5):
        dump_id = client.post("/api/dumps", json=body).json()["dumps"][0]["dump_id"]
        record = wait_finished(client, [dump_id], timeout=timeout)[0]
        if record["state"] == "failed" and "job" in record["message"]:
            time.sleep(2)
            continue
        return record
    return record


def test_health_says_memory_only(qclient):
    body = qclient.get("/health").json()
    assert body["status"] == "ok" and body["libvirt"]["driver"] == "QEMU" and body["libvirt"]["memory_only"] is True


@pytest.mark.parametrize("hash_mode", ["fifo", "after"])
def test_memory_only_elf_dump(qclient, hash_mode):
    qclient.app.state.jobs.settings.hash_mode = hash_mode
    record = dump(qclient, {"vms": [VM], "label": "IR-QEMU-1", "force": True})
    assert record["state"] == "completed", record
    assert record["message"] == "memory-only elf dump completed"
    # What an analyst needs besides the image (Volatility 3 needs the machine type for QEMU's PCI hole).
    assert record["machine"].startswith("pc") and f"<name>{VM}</name>" in record["domain_xml"]
    assert record["qemu_version"].count(".") == 2 and record["libvirt_version"].count(".") == 2
    path = record["dump_path"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    readelf = subprocess.run(["readelf", "-h", path], capture_output=True, text=True, check=True).stdout
    assert "CORE (Core file)" in readelf
    # Size: guest RAM plus headers (and the BIOS ROM mapping QEMU adds as a second PT_LOAD).
    size = os.path.getsize(path)
    assert record["size_bytes"] == size
    _cls, e_type, segments = elfcore.read_header(path)
    assert e_type == 4  # ET_CORE
    ram = MIB * 1024 * 1024
    loads = [s for s in segments if s.p_type == elfcore.PT_LOAD]
    assert sum(s.filesz for s in loads if s.paddr < ram) == ram
    assert max(s.offset + s.filesz for s in segments) <= size < sum(s.filesz for s in loads) + 1024 * 1024
    # Bytes QEMU's loader put at a known physical address.
    marker_file = os.environ.get("MEMDUMP_TEST_MARKER_FILE")
    if marker_file:
        marker = open(marker_file, "rb").read()
        offset = elfcore.phys_to_offset(segments, int(os.environ["MEMDUMP_TEST_MARKER_ADDR"], 0))
        with open(path, "rb") as handle:
            handle.seek(offset)
            assert handle.read(len(marker)) == marker
        ranged = qclient.get(f"/api/dumps/{record['dump_id']}/file", headers={"Range": f"bytes={offset}-{offset + len(marker) - 1}"})
        assert ranged.status_code == 206 and ranged.content == marker
        assert ranged.headers["x-memdump-sha256"] == record["sha256"]
    # The hash recorded while writing (FIFO) is the file's.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    assert record["sha256"] == digest.hexdigest()
    assert 0 < record["paused_sec"] <= record["duration_sec"] + 0.01
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]
    assert qclient.delete(f"/api/dumps/{record['dump_id']}").status_code == 200
    assert not os.path.exists(path)


def test_kdump_formats(qclient):
    record = dump(qclient, {"vms": [VM2 or VM], "format": "kdump-zlib"})
    assert record["state"] == "completed", record
    with open(record["dump_path"], "rb") as handle:
        assert handle.read(8) == b"KDUMP   "
    assert record["sha256"] == hashlib.sha256(open(record["dump_path"], "rb").read()).hexdigest()
    qclient.delete(f"/api/dumps/{record['dump_id']}")
    record = dump(qclient, {"vms": [VM2 or VM], "format": "kdump-lzo"})
    assert record["state"] == "failed" and "kdump-lzo" in record["message"], record
    assert not os.listdir(qclient.app.state.jobs.settings.dump_dir)


@pytest.mark.skipif(not VM_LARGE, reason="MEMDUMP_TEST_VM_LARGE unset")
def test_progress_on_large_guest(qclient):
    for _attempt in range(5):
        dump_id = qclient.post("/api/dumps", json={"vms": [VM_LARGE]}).json()["dumps"][0]["dump_id"]
        seen = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            record = qclient.get(f"/api/dumps/{dump_id}").json()
            if record["state"] == "running":
                seen.add(record["progress"])
            if record["state"] in ("completed", "failed"):
                break
            time.sleep(0.02)
        if record["state"] == "failed" and "job" in record["message"]:
            time.sleep(2)
            continue
        break
    assert record["state"] == "completed", record
    assert any(0 < value < 100 for value in seen), seen
    assert record["paused_sec"] > 0
    assert record["size_bytes"] > int(os.environ.get("MEMDUMP_TEST_VM_LARGE_MIB", "2048")) * 1024 * 1024
    assert qclient.delete(f"/api/dumps/{dump_id}").status_code == 200
