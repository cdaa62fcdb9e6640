"""Dump methods (issue 15): the request field and reuse rules on the test driver, and live dumps of the stack's real
Linux guest read by Volatility 3 (those skipped unless tests/stack/stack.sh up exported MEMDUMP_TEST_LINUX_VM)."""

import hashlib
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from memdump_service.store import Store

from conftest import real_libvirt_app, wait_finished, wait_held

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
import libvirt_events  # noqa: E402  pylint: disable=wrong-import-position,import-error

URI = os.environ.get("MEMDUMP_TEST_LIBVIRT_URI")
LINUX_VM = os.environ.get("MEMDUMP_TEST_LINUX_VM")
LINUX_MARKER = os.environ.get("MEMDUMP_TEST_LINUX_MARKER", "")
VOL = os.path.join(os.path.dirname(sys.executable), "vol")
needs_linux = pytest.mark.skipif(not (URI and LINUX_VM), reason="MEMDUMP_TEST_LINUX_VM unset (run tests/stack/stack.sh up or linux-up)")


def post(client, body):
    return client.post("/api/dumps", json=body)


def test_method_is_checked(client):
    answer = post(client, {"vms": ["web01"], "method": "hot"})
    assert answer.status_code == 400 and answer.json()["detail"] == "unknown method 'hot'; use one of memory-only, live, auto"
    answer = post(client, {"vms": ["web01"], "method": "live", "format": "kdump-zlib"})
    assert answer.status_code == 400 and "format kdump-zlib is for memory-only dumps" in answer.json()["detail"]
    answer = post(client, {"vms": ["web01"], "format": "qemu-migration"})
    assert answer.status_code == 400 and '"method": "live"' in answer.json()["detail"]
    assert client.get("/api/dumps").json()["dumps"] == []


def test_test_driver_offers_memory_only_and_refuses_live(client):
    assert client.get("/health").json()["methods"] == ["memory-only", "auto"]
    created = post(client, {"vms": ["web01"], "method": "live"}).json()["dumps"][0]
    assert (created["method"], created["format"]) == ("live", "qemu-migration")
    record = wait_finished(client, [created["dump_id"]])[0]
    assert record["state"] == "failed" and record["error_code"] == "unsupported"
    assert record["message"].startswith(f"libvirt at {client.app.state.jobs.settings.libvirt_uri} cannot take live dumps")
    assert record["paused_sec"] is None


def test_reuse_needs_the_same_method_and_format(gate, client):
    gate.release.set()
    first = post(client, {"vms": ["web01"], "label": "IR-M"}).json()["dumps"][0]
    assert wait_finished(client, [first["dump_id"]])[0]["state"] == "completed"
    assert first["method"] == "memory-only" and first["format"] == "elf"
    again = post(client, {"vms": ["web01"], "label": "IR-M", "method": "memory-only", "format": "elf"}).json()["dumps"][0]
    assert (again["dump_id"], again["created"]) == (first["dump_id"], False)
    planned = post(client, {"vms": ["web01"], "label": "IR-M", "method": "live", "dry_run": True}).json()["dumps"][0]
    assert planned == {"vm": "web01", "dump_id": None, "state": None, "label": "IR-M", "method": "live", "format": "qemu-migration",
                       "created": True}
    live = post(client, {"vms": ["web01"], "label": "IR-M", "method": "live"}).json()["dumps"][0]
    assert live["created"] is True and live["dump_id"] != first["dump_id"]
    wait_finished(client, [live["dump_id"]])
    kdump = post(client, {"vms": ["web01"], "label": "IR-M", "format": "kdump-zlib", "dry_run": True}).json()["dumps"][0]
    assert kdump["created"] is True and kdump["format"] == "kdump-zlib"
    live_again = post(client, {"vms": ["web01"], "label": "IR-M", "method": "live"}).json()["dumps"][0]
    assert (live_again["dump_id"], live_again["created"]) == (live["dump_id"], False)


def test_auto_takes_a_memory_only_dump_where_libvirt_cannot_go_live(client):
    """method auto on the test driver, which describes no hypervisor: libvirt cannot migrate the guest, so the dump is
    memory-only, in the requested format, and the record says so and why."""
    uri = client.app.state.jobs.settings.libvirt_uri
    answer = post(client, {"vms": ["web01"], "label": "IR-A", "method": "auto", "format": "qemu-migration"})
    assert answer.status_code == 400 and '"method": "live" (method auto takes the format of a memory-only dump)' in answer.json()["detail"]
    created = post(client, {"vms": ["web01"], "label": "IR-A", "method": "auto"}).json()["dumps"][0]
    assert (created["method_requested"], created["format_requested"], created["created"]) == ("auto", "elf", True)
    record = wait_finished(client, [created["dump_id"]])[0]
    assert record["state"] == "completed", record["message"]
    assert (record["method"], record["format"], record["method_requested"]) == ("memory-only", "elf", "auto")
    assert record["method_reason"] == (f"auto: libvirt refused a live dump, so the guest is paused for a memory-only dump: libvirt at "
                                       f"{uri} describes no hypervisor that could take a live dump (virConnectGetDomainCapabilities "
                                       "names no emulator)")
    assert record["dump_path"].endswith(f"_{record['dump_id']}.elf") and record["paused_sec"] is not None
    with open(record["dump_path"], "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == record["sha256"]
    assert [name for name in os.listdir(os.path.dirname(record["dump_path"])) if name.startswith(".")] == []
    # An auto request gets the auto dump back, whichever method it ended in; a memory-only request is another kind.
    again = post(client, {"vms": ["web01"], "label": "IR-A", "method": "auto"}).json()["dumps"][0]
    assert (again["dump_id"], again["created"]) == (record["dump_id"], False)
    other = post(client, {"vms": ["web01"], "label": "IR-A", "method": "memory-only", "dry_run": True}).json()["dumps"][0]
    assert other["created"] is True


def test_a_queued_auto_dump_is_stored_without_a_format(gate, client):
    """Its format is unknown until it runs (the store's format column predates auto); a restart loads what start() loads."""
    held = post(client, {"vms": ["web01"]}).json()["dumps"][0]
    wait_held(client, [held["dump_id"]])
    queued = post(client, {"vms": ["web01"], "label": "IR-Q", "method": "auto", "format": "kdump-zlib"}).json()["dumps"][0]
    assert (queued["state"], queued["method"], queued["format"]) == ("queued", "auto", None)
    stored = {r["dump_id"]: r for r in Store(client.app.state.jobs.settings.state_file).load()}[queued["dump_id"]]
    assert (stored["state"], stored["method"], stored["format"], stored["format_requested"]) == ("queued", "auto", None, "kdump-zlib")
    gate.release.set()
    record = wait_finished(client, [queued["dump_id"]])[0]
    assert (record["state"], record["method_requested"], record["format_requested"]) == ("completed", "auto", "kdump-zlib")


# ----- the real Linux guest


@pytest.fixture(name="lclient", scope="module")
def fixture_lclient(tmp_path_factory):
    """One service on the real libvirtd for the module; its images are removed afterwards."""
    with real_libvirt_app(tmp_path_factory.mktemp("live"), URI) as client:
        yield client


@pytest.fixture(name="domain")
def fixture_domain():
    """The Linux guest, through a connection of the test's own."""
    import libvirt  # pylint: disable=import-outside-toplevel
    conn = libvirt.open(URI)
    yield conn.lookupByName(LINUX_VM)
    conn.close()


def dump(client, body, timeout=180.0):
    dump_id = post(client, body).json()["dumps"][0]["dump_id"]
    return wait_finished(client, [dump_id], timeout=timeout)[0]


def volatility_banner(path):
    """The Linux banners Volatility 3 finds in an image (it needs no symbol tables for banners.Banners)."""
    run = subprocess.run([VOL, "-q", "-r", "pretty", "-f", path, "banners.Banners"], capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return re.findall(r"Linux version \S+", run.stdout)


def contains(path, needle):
    """Whether the file holds needle (read in overlapping chunks)."""
    tail = b""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(8 << 20)
            if not chunk:
                return False
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle):]


@needs_linux
def test_live_dump_of_a_running_linux_guest(lclient, domain):
    import libvirt  # pylint: disable=import-outside-toplevel
    assert lclient.get("/health").json()["methods"] == ["memory-only", "live", "auto"]
    limit_before = domain.migrateGetMaxDowntime(0)
    states = []
    polling = threading.Event()

    def poll_state():
        while not polling.is_set():
            if domain.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                states.append(domain.state()[0])
            time.sleep(0.005)

    watch = libvirt_events.LifecycleWatch(URI, LINUX_VM)
    poller = threading.Thread(target=poll_state, daemon=True)
    poller.start()
    try:
        record = dump(lclient, {"vms": [LINUX_VM], "method": "live"})
    finally:
        polling.set()
        poller.join()
    pauses = watch.pauses()
    assert record["state"] == "completed", record
    assert (record["method"], record["format"]) == ("live", "qemu-migration")
    assert record["message"].startswith("live dump completed: the guest kept running")
    path = record["dump_path"]
    assert path.endswith(".qevm")
    with open(path, "rb") as handle:
        assert handle.read(4) == b"QEVM"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    assert digest.hexdigest() == record["sha256"] and os.path.getsize(path) == record["size_bytes"]
    # The pause is the span of libvirt's lifecycle events (the guest's pause, bench P7), small under TCG; libvirt's
    # downtime statistic is kept beside it; the guest ran while the job did.
    downtime_ms = domain.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)["downtime"]
    assert record["libvirt_downtime_sec"] == downtime_ms / 1000
    assert record["pause_source"] == "lifecycle_events" and 0 < record["paused_sec"] < 1.0, record
    assert libvirt.VIR_DOMAIN_RUNNING in states, states
    assert len(pauses) == 1 and pauses[0] < 1.0, pauses  # one short pause, for the last pages
    assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert domain.migrateGetMaxDowntime(0) == limit_before  # the guest's migration setting is put back
    assert contains(path, LINUX_MARKER.encode())
    assert volatility_banner(path)


@needs_linux
def test_memory_only_elf_of_the_linux_guest_is_read_by_volatility(lclient):
    record = dump(lclient, {"vms": [LINUX_VM], "method": "memory-only"})
    assert record["state"] == "completed" and record["dump_path"].endswith(".elf"), record
    with open(record["dump_path"], "rb") as handle:
        assert handle.read(4) == b"\x7fELF"
    assert contains(record["dump_path"], LINUX_MARKER.encode())
    assert volatility_banner(record["dump_path"])


@needs_linux
def test_live_dump_that_takes_too_long_is_aborted(lclient, domain):
    import libvirt  # pylint: disable=import-outside-toplevel
    settings = lclient.app.state.jobs.settings
    settings.live_max_seconds = 0.05
    try:
        record = dump(lclient, {"vms": [LINUX_VM], "method": "live", "force": True})
    finally:
        settings.live_max_seconds = 120.0
    assert record["state"] == "failed", record
    assert "aborted after --live-max-seconds 0.05" in record["message"] and "use method memory-only" in record["message"]
    assert record["error_code"] == "live_timeout"
    assert record["dump_path"] is None and record["paused_sec"] is None
    assert [name for name in os.listdir(settings.dump_dir) if name.startswith(".")] == []
    assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING


@needs_linux
def test_a_failing_statistics_call_never_discards_a_completed_live_image(lclient, monkeypatch, caplog):
    """libvirt's job statistics after the dump only tell the pause: when that call fails, the image is kept."""
    import libvirt  # pylint: disable=import-outside-toplevel
    from memdump_service import virt  # pylint: disable=import-outside-toplevel
    real = virt.DumpJob.job_stats

    def failing(dom, flags=0):
        if flags & virt.VIR_DOMAIN_JOB_STATS_COMPLETED:
            raise libvirt.libvirtError("injected: job statistics unavailable")
        return real(dom, flags)

    monkeypatch.setattr(virt.DumpJob, "job_stats", staticmethod(failing))
    record = dump(lclient, {"vms": [LINUX_VM], "method": "live", "force": True})
    assert record["state"] == "completed" and record["error_code"] is None, record
    assert record["libvirt_downtime_sec"] is None and record["pause_source"] == "lifecycle_events"
    assert os.path.getsize(record["dump_path"]) == record["size_bytes"]
    with open(record["dump_path"], "rb") as handle:
        assert handle.read(4) == b"QEVM"
    assert "job statistics are unavailable" in caplog.text


BLOCKER_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
    <shmem name='{name}'><model type='ivshmem-plain'/><size unit='M'>4</size></shmem>
  </devices>
</domain>"""


@needs_linux
def test_auto_goes_live_where_the_guest_can_migrate(lclient):
    created = post(lclient, {"vms": [LINUX_VM], "method": "auto"}).json()["dumps"][0]
    record = wait_finished(lclient, [created["dump_id"]], timeout=180.0)[0]
    assert record["state"] == "completed", record
    assert (record["method"], record["format"], record["method_requested"]) == ("live", "qemu-migration", "auto")
    assert record["method_reason"] == "auto: libvirt accepted a live dump (the guest can migrate)"
    assert record["dump_path"].endswith(".qevm") and record["paused_sec"] < 1.0
    with open(record["dump_path"], "rb") as handle:
        assert handle.read(4) == b"QEVM"


@needs_linux
def test_live_dump_of_a_guest_that_cannot_migrate_names_libvirts_reason(lclient):
    import libvirt  # pylint: disable=import-outside-toplevel
    name = LINUX_VM.rsplit("-", 1)[0] + "-nomigrate"
    conn = libvirt.open(URI)
    # A transient guest (gone when destroyed) whose ivshmem device in peer mode blocks migration in QEMU.
    domain = conn.createXML(BLOCKER_XML.format(name=name))
    try:
        record = dump(lclient, {"vms": [name], "method": "live"})
        assert record["state"] == "failed", record
        assert record["message"].startswith(f"libvirt cannot take a live dump of VM '{name}': ")
        assert "ivshmem" in record["message"] and record["message"].endswith("; method memory-only pauses the guest instead")
        assert [n for n in os.listdir(lclient.app.state.jobs.settings.dump_dir) if n.startswith(".")] == []
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        # method auto: the refused live dump becomes a memory-only one, and the record says why in libvirt's words.
        record = dump(lclient, {"vms": [name], "method": "auto", "format": "elf"})
        assert record["state"] == "completed", record
        assert (record["method"], record["format"], record["method_requested"]) == ("memory-only", "elf", "auto")
        assert record["method_reason"].startswith("auto: libvirt refused a live dump, so the guest is paused for a memory-only "
                                                  "dump: ") and "ivshmem" in record["method_reason"]
        assert record["dump_path"].endswith(".elf") and record["paused_sec"] > 0
        with open(record["dump_path"], "rb") as handle:
            assert handle.read(4) == b"\x7fELF"
        assert [n for n in os.listdir(lclient.app.state.jobs.settings.dump_dir) if n.startswith(".")] == []
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    finally:
        domain.destroy()
        conn.close()
        if os.path.exists(f"/dev/shm/{name}"):  # QEMU's shared memory file outlives the guest
            os.unlink(f"/dev/shm/{name}")
