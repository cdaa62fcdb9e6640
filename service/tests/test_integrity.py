"""The service's part of evidence integrity (issue 24) and of one rule per concept (issue 21): only a client that may
delete an image lets retention remove it, the custody witness, the rules /health publishes, error codes, capability
probing, a streamed image that may not fill the disk, and every setting as a command-line option."""

import dataclasses
import hashlib
import logging
import os
import re
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from memdump_service import rules, virt
from memdump_service.config import Settings, build_parser, parse_args
from memdump_service.jobs import JobManager
from memdump_service.virt import ERROR_CODES, FifoHasher, Libvirt

from conftest import running_app, wait_finished
from test_security import audit_lines, bearer, write_tokens

MIB = 1024 * 1024
CLIENTS = {"collector": ["read", "collect"], "responder": ["read", "collect", "delete"], "trigger": ["trigger", "read"]}
HEAD = {"label": "IR-24", "seq": 7, "hash": "ab" * 32}


@pytest.fixture(name="tokens")
def fixture_tokens(settings, tmp_path):
    """The service runs with a tokens file of CLIENTS; {name: token}."""
    settings.tokens_file = str(tmp_path / "tokens.json")
    settings.insecure_no_auth = False
    return write_tokens(settings.tokens_file, CLIENTS)


def completed(client, token, vm="web01"):
    dump_id = client.post("/api/dumps", json={"vms": [vm]}, headers=bearer(token)).json()["dumps"][0]["dump_id"]
    record = wait_finished(client, [dump_id], headers=bearer(token))[0]
    assert record["state"] == "completed", record
    return record


def collected(client, token, record, head=None):
    body = {"sha256": record["sha256"]}
    if head is not None:
        body["custody_head"] = head
    return client.post(f"/api/dumps/{record['dump_id']}/collected", json=body, headers=bearer(token))


def wait_removed(client, token, dump_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = client.get(f"/api/dumps/{dump_id}", headers=bearer(token)).json()
        if record["file_deleted"]:
            return record
        time.sleep(0.05)
    raise AssertionError(f"the image of {dump_id} was not removed in {timeout} s")


# ----- only delete makes an image disappear


def test_a_collect_client_cannot_make_retention_remove_an_image(settings, tokens, caplog):
    caplog.set_level(logging.INFO)
    settings.retention_days, settings.retention_interval = 0.2 / 86400, 0.05
    with running_app(settings) as client:
        record = completed(client, tokens["trigger"])
        answer = collected(client, tokens["collector"], record)
        assert answer.status_code == 200, answer.text
        seen = answer.json()
        # The report is recorded: who collected it and when; it does not allow removal.
        assert seen["collected_by"] == "collector" and seen["collected_at"] and seen["retention_confirmed_at"] is None
        jobs = client.app.state.jobs
        for _round in range(3):  # retention runs (interval 0.05 s) and keeps the image each time
            jobs._apply_retention()  # pylint: disable=protected-access
        assert os.path.exists(record["dump_path"])
        assert not client.get(f"/api/dumps/{record['dump_id']}", headers=bearer(tokens["collector"])).json()["file_deleted"]
        # The responder, who may delete it, confirms: now retention removes it, and the audit line says whose word it was.
        confirmed = collected(client, tokens["responder"], record).json()
        assert confirmed["retention_confirmed_by"] == "responder" and confirmed["collected_by"] == "collector"
        removed = wait_removed(client, tokens["responder"], record["dump_id"])
        assert not os.path.exists(record["dump_path"]) and removed["dump_path"] is None
    retention = [line for line in audit_lines(caplog) if line["event"] == "retention"]
    assert len(retention) == 1 and retention[0]["confirmed_by"] == "responder", retention
    assert retention[0]["allowed_by"] == "confirmation of responder"
    reports = [line for line in audit_lines(caplog) if line["event"] == "collected"]
    assert [(line["client"], line["allows_removal"]) for line in reports] == [("collector", False), ("responder", True)]


def test_the_operator_may_let_collect_clients_allow_removal(settings, tokens, caplog):
    caplog.set_level(logging.INFO)
    settings.retention_days, settings.retention_interval, settings.retention_trusts_collect = 0.2 / 86400, 0.05, True
    with running_app(settings) as client:
        record = completed(client, tokens["trigger"])
        assert collected(client, tokens["collector"], record).json()["retention_confirmed_by"] == "collector"
        wait_removed(client, tokens["collector"], record["dump_id"])
    assert [line["confirmed_by"] for line in audit_lines(caplog) if line["event"] == "retention"] == ["collector"]


def test_uncollected_removal_names_the_option_that_allowed_it(settings, caplog):
    caplog.set_level(logging.INFO)
    settings.retention_days, settings.retention_interval, settings.retention_uncollected = 0.2 / 86400, 0.05, True
    with running_app(settings) as client:
        dump_id = client.post("/api/dumps", json={"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
        wait_finished(client, [dump_id])
        deadline = time.monotonic() + 5
        while not client.get(f"/api/dumps/{dump_id}").json()["file_deleted"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    line = [line for line in audit_lines(caplog) if line["event"] == "retention"][0]
    assert line["confirmed_by"] is None and line["allowed_by"] == "--retention-uncollected"


# ----- the custody witness


def test_custody_heads_are_an_append_only_witness(settings, tokens, caplog):
    caplog.set_level(logging.INFO)
    with running_app(settings) as client:
        assert "custody_heads" in client.get("/health").json()["features"]
        record = completed(client, tokens["trigger"])
        assert record["custody_heads"] == []
        first = collected(client, tokens["collector"], record, HEAD)
        assert first.status_code == 200, first.text
        heads = first.json()["custody_heads"]
        assert [{k: h[k] for k in ("label", "seq", "hash", "client")} for h in heads] == [dict(HEAD, client="collector")]
        assert heads[0]["at"].endswith("Z")
        # A retry of the same report adds nothing; a later head is appended, never replacing the earlier one, even
        # when it is shorter (that is what the verifier looks for).
        collected(client, tokens["collector"], record, HEAD)
        later = dict(HEAD, seq=9, hash="cd" * 32)
        shorter = dict(HEAD, seq=3, hash="ef" * 32)
        collected(client, tokens["responder"], record, later)
        collected(client, tokens["collector"], record, shorter)
        stored = client.get(f"/api/dumps/{record['dump_id']}", headers=bearer(tokens["collector"])).json()["custody_heads"]
        assert [(h["seq"], h["client"]) for h in stored] == [(7, "collector"), (9, "responder"), (3, "collector")]
        assert stored[0] == heads[0]
    # It survives a restart (it is in the job database) ...
    with running_app(settings) as client:
        again = client.get(f"/api/dumps/{record['dump_id']}", headers=bearer(tokens["collector"])).json()["custody_heads"]
        assert again == stored
    # ... and each report is in the audit trail.
    audited = [line["custody_head"] for line in audit_lines(caplog) if line["event"] == "collected"]
    assert audited == [HEAD, later, shorter]


@pytest.mark.parametrize("head, words", [
    ({"label": "bad label", "seq": 1, "hash": "ab" * 32}, "custody_head.label"),
    ({"label": "IR", "seq": -1, "hash": "ab" * 32}, "custody_head.seq"),
    ({"label": "IR", "seq": True, "hash": "ab" * 32}, "custody_head.seq"),
    ({"label": "IR", "seq": "1", "hash": "ab" * 32}, "custody_head.seq"),
    ({"label": "IR", "seq": 1, "hash": "xyz"}, "custody_head.hash"),
    ({"label": "IR", "seq": 1}, "hash"),
    ({"label": "IR", "seq": 1, "hash": "ab" * 32, "extra": 1}, "unknown field"),
    ("IR:1", "custody_head must be an object"),
])
def test_bad_custody_heads_are_refused_and_nothing_is_recorded(client, head, words):
    dump_id = client.post("/api/dumps", json={"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
    record = wait_finished(client, [dump_id])[0]
    answer = client.post(f"/api/dumps/{dump_id}/collected", json={"sha256": record["sha256"], "custody_head": head})
    assert answer.status_code == 400 and words in answer.json()["detail"], answer.text
    after = client.get(f"/api/dumps/{dump_id}").json()
    assert after["custody_heads"] == [] and after["collected_at"] is None


def test_a_wrong_image_hash_records_no_custody_head(client):
    dump_id = client.post("/api/dumps", json={"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
    wait_finished(client, [dump_id])
    answer = client.post(f"/api/dumps/{dump_id}/collected", json={"sha256": "1" * 64, "custody_head": HEAD})
    assert answer.status_code == 409
    assert client.get(f"/api/dumps/{dump_id}").json()["custody_heads"] == []


# ----- one rule per concept: /health publishes what the service enforces


def test_health_publishes_the_rules(client):
    published = client.get("/health").json()["rules"]
    assert published == {
        "vm_name": {"max_length": 255, "forbidden": rules.VM_NAME_FORBIDDEN, "reserved": [".", ".."]},
        "label": {"pattern": "^[A-Za-z0-9._:@+-]{1,128}$"},
        "formats": {"elf": "elf", "kdump-zlib": "kdump", "kdump-lzo": "kdump", "kdump-snappy": "kdump", "win-dmp": "dmp",
                    "qemu-migration": "qevm", "live": "qevm"},
    }
    # The images the service writes carry the published extension.
    dump_id = client.post("/api/dumps", json={"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
    assert wait_finished(client, [dump_id])[0]["dump_path"].endswith("." + published["formats"]["elf"])


NAMES = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=260)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # dry runs change nothing
@given(name=NAMES)
def test_a_vm_name_is_accepted_exactly_when_the_published_rule_allows_it(client, name):
    published = client.get("/health").json()["rules"]["vm_name"]
    allowed = (len(name) <= published["max_length"] and not re.search(published["forbidden"], name)
               and name not in published["reserved"])
    answer = client.post("/api/dumps", json={"vms": [name], "dry_run": True})
    assert answer.status_code == (200 if allowed else 400), (name, answer.text)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # dry runs change nothing
@given(label=st.text(min_size=0, max_size=140) | st.from_regex(r"\A[A-Za-z0-9._:@+-]{1,130}\Z"))
def test_a_label_is_accepted_exactly_when_the_published_pattern_matches(client, label):
    pattern = client.get("/health").json()["rules"]["label"]["pattern"]
    answer = client.post("/api/dumps", json={"vms": ["web01"], "label": label, "dry_run": True})
    assert answer.status_code == (200 if re.fullmatch(pattern, label) else 400), (label, answer.text)


# ----- error codes


def test_error_codes_of_real_failures(settings, monkeypatch):
    settings.max_parallel = 1
    cancelled = threading.Event()
    real_run = virt.DumpJob.run

    def run_once_the_queued_dump_is_cancelled(job, *args, **kwargs):
        # The one worker holds the first dump, so that the last one is still queued when it is cancelled.
        cancelled.wait(20)
        return real_run(job, *args, **kwargs)

    monkeypatch.setattr(virt.DumpJob, "run", run_once_the_queued_dump_is_cancelled)
    with running_app(settings) as client:
        ids = {vm: client.post("/api/dumps", json={"vms": [vm]}).json()["dumps"][0]["dump_id"] for vm in ("nosuchvm", "stopped01")}
        # A live dump on a connection that describes no hypervisor; a queued dump that is cancelled.
        ids["live"] = client.post("/api/dumps", json={"vms": ["web01"], "method": "live"}).json()["dumps"][0]["dump_id"]
        ids["cancelled"] = client.post("/api/dumps", json={"vms": ["db01"], "label": "IR-C"}).json()["dumps"][0]["dump_id"]
        assert client.delete(f"/api/dumps/{ids['cancelled']}").status_code == 200
        cancelled.set()
        records = dict(zip(ids, wait_finished(client, list(ids.values()))))
        ok = client.post("/api/dumps", json={"vms": ["app01"]}).json()["dumps"][0]["dump_id"]
        done = wait_finished(client, [ok])[0]
    assert {name: record["error_code"] for name, record in records.items()} == {
        "nosuchvm": "no_such_vm", "stopped01": "vm_not_running", "live": "unsupported", "cancelled": "cancelled"}
    assert done["state"] == "completed" and done["error_code"] is None
    assert all(record["error_code"] in ERROR_CODES for record in records.values())


def test_not_enough_space_is_insufficient_space(settings, monkeypatch):
    monkeypatch.setattr("memdump_service.jobs.free_bytes", lambda _path: 10 * MIB)
    with running_app(settings) as client:
        dump_id = client.post("/api/dumps", json={"vms": ["web01"]}).json()["dumps"][0]["dump_id"]
        record = wait_finished(client, [dump_id])[0]
    assert record["state"] == "failed" and record["error_code"] == "insufficient_space", record


def test_error_codes_are_documented():
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "api.md"), encoding="utf-8") as handle:
        text = handle.read()
    missing = [code for code in ERROR_CODES if f"`{code}`" not in text]
    assert not missing, f"docs/api.md does not explain the error codes {missing}"


# ----- capability, not identity


def test_capabilities_are_asked_of_libvirt(settings):
    virt = Libvirt(settings.libvirt_uri)
    caps = virt.capabilities()
    assert (caps.memory_only, caps.live, caps.methods, caps.formats) == (False, False, ["memory-only", "auto"], ["elf"])


def test_a_connection_that_describes_a_hypervisor_offers_everything(client, monkeypatch):
    """The decision follows libvirt's answer, whatever the URI: the test driver made to answer the capability call
    is offered every method and format."""
    jobs = client.app.state.jobs
    conn = jobs.virt.connection()
    monkeypatch.setattr(type(conn), "getDomainCapabilities",
                        lambda _self, *args: "<domainCapabilities><path>/usr/bin/qemu-system-x86_64</path></domainCapabilities>")
    jobs.virt.close()
    body = client.get("/health").json()
    assert body["methods"] == ["memory-only", "live", "auto"] and len(body["formats"]) == 6 and body["libvirt"]["memory_only"] is True


def test_domain_capabilities_without_an_emulator_offer_the_plain_dump_only(client, monkeypatch):
    """libvirt 10 and later answer the capability call for the test driver too, naming no emulator (seen with
    Debian 13's libvirt 11): that is no hypervisor, so no memory-only dump is offered."""
    jobs = client.app.state.jobs
    conn = jobs.virt.connection()
    monkeypatch.setattr(type(conn), "getDomainCapabilities",
                        lambda _self, *args: "<domainCapabilities><domain>test</domain><arch>i686</arch></domainCapabilities>")
    jobs.virt.close()
    body = client.get("/health").json()
    assert body["methods"] == ["memory-only", "auto"] and body["formats"] == ["elf"] and body["libvirt"]["memory_only"] is False


# ----- a streamed image never fills the disk


def test_a_stream_that_outgrows_its_grant_stops_before_the_margin(settings, tmp_path, monkeypatch):
    """A live stream can be larger than the guest's memory: past the grant the image grows only while the dump dir
    keeps the margin free; then it stops (the stream is still drained, so the writer is never blocked)."""
    settings.space_margin = 4 * MIB
    free = {"bytes": 300 * MIB}
    jobs = JobManager(settings)
    monkeypatch.setattr("memdump_service.jobs.free_bytes", lambda _path: free["bytes"])
    monkeypatch.setattr("memdump_service.jobs.GROW_STEP", 2 * MIB)
    fifo = tmp_path / "s.fifo"
    os.mkfifo(fifo, 0o600)
    stopped = []
    hasher = FifoHasher(str(fifo), str(tmp_path / "out"), space=lambda total: jobs._space("d", total),  # pylint: disable=protected-access
                        on_stop=lambda: stopped.append(True))

    class Job:  # what _reserve keeps of a running dump: how much it wrote
        @staticmethod
        def bytes_written():
            return os.path.getsize(tmp_path / "out")

    jobs._reserve("d", Job(), 8 * MIB)  # pylint: disable=protected-access  # the "guest memory"
    # While the image grows, the disk fills (what the image itself takes is no longer free).
    real_space = jobs._space  # pylint: disable=protected-access

    def shrinking(dump_id, total):
        free["bytes"] = 300 * MIB - total - 280 * MIB  # 20 MiB at the start, less as the image grows
        real_space(dump_id, total)

    hasher.space = lambda total: shrinking("d", total)
    hasher.start()
    data = os.urandom(64 * MIB)
    writer_done = threading.Event()

    def write():
        with open(fifo, "wb") as handle:
            handle.write(data)
        writer_done.set()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    assert writer_done.wait(30), "the writer was blocked: the stream was not drained"
    hasher.finish()
    size = os.path.getsize(tmp_path / "out")
    assert hasher.error_code == "insufficient_space" and "--space-margin" in hasher.error, hasher.error
    assert stopped == [True]
    assert hasher.size == len(data) and hasher.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    # It stopped while the free space still held the margin.
    assert 8 * MIB <= size and 300 * MIB - size - 280 * MIB >= settings.space_margin, size
    jobs.store.close()


# ----- every setting has a command-line option


def test_every_setting_has_a_command_line_option():
    options = {action.dest for action in build_parser({})._actions}  # pylint: disable=protected-access
    missing = [field.name for field in dataclasses.fields(Settings) if field.name not in options]
    assert not missing, f"settings without a command-line option: {missing}"


def test_new_options_reach_the_settings(tmp_path):
    settings = parse_args(["--insecure-no-auth", "--dump-dir", str(tmp_path), "--retention-trusts-collect", "--space-margin", "1024",
                           "--progress-interval", "0.5", "--stream-idle-timeout", "9", "--max-body", "4096",
                           "--retention-interval", "7"], environ={})
    assert (settings.retention_trusts_collect, settings.space_margin, settings.progress_interval, settings.stream_idle_timeout,
            settings.max_body, settings.retention_interval) == (True, 1024, 0.5, 9.0, 4096, 7.0)
