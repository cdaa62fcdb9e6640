"""Fixtures for the memdump service tests."""

import contextlib
import shutil
import socket
import threading
import time
import typing as t

import pytest
from fastapi.testclient import TestClient

from memdump_service import virt
from memdump_service.app import create_app
from memdump_service.config import Settings

NODE_XML = """<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
{domains}
  <domain type='test'><name>stopped01</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e19ff</uuid><memory>131072</memory><os><type>hvm</type></os>
    <test:runstate>5</test:runstate></domain>
</node>
"""
DOMAIN = "  <domain type='test'><name>{name}</name><uuid>6695eb01-f6a4-8304-79aa-{num:012d}</uuid><memory>131072</memory><os><type>hvm</type></os></domain>"
TEST_VMS = ["web01", "db01", "app01"] + [f"vm{i:02d}" for i in range(60)]


@pytest.fixture(name="node_uri")
def fixture_node_uri(tmp_path) -> str:
    """A libvirt test-driver node file with running domains TEST_VMS and a shut-off stopped01."""
    domains = "\n".join(DOMAIN.format(name=name, num=i) for i, name in enumerate(TEST_VMS))
    path = tmp_path / "node.xml"
    path.write_text(NODE_XML.format(domains=domains))
    return f"test://{path}"


@pytest.fixture(name="settings")
def fixture_settings(tmp_path, node_uri) -> Settings:
    """Settings on a temp dir and the test driver, without auth (tests that need it set token_file or tokens_file)."""
    return Settings(dump_dir=str(tmp_path / "dumps"), state_file=str(tmp_path / "state" / "jobs.sqlite3"), libvirt_uri=node_uri,
                    progress_interval=0.02, insecure_no_auth=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(settings: Settings) -> t.Iterator[TestClient]:
    """A TestClient whose lifespan (job manager) runs inside the block; it calls the service by a loopback name."""
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        yield client


@contextlib.contextmanager
def real_libvirt_app(base: t.Any, uri: str) -> t.Iterator[TestClient]:
    """A service on a real libvirtd for a whole test module, in base; its images are removed afterwards."""
    settings = Settings(dump_dir=str(base / "dumps"), state_file=str(base / "jobs.sqlite3"), libvirt_uri=uri, progress_interval=0.02,
                        insecure_no_auth=True)
    try:
        with running_app(settings) as client:
            yield client
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(name="client")
def fixture_client(settings) -> t.Iterator[TestClient]:
    """A client of a service on the test driver."""
    with running_app(settings) as client:
        yield client


def wait_records(client: TestClient, dump_ids: t.Sequence[str], ready: t.Callable[[dict], bool], what: str,
                 timeout: float = 10.0, headers=None) -> t.List[dict]:
    """Wait (long-poll) until ready(record) holds for every dump; the records in dump_ids order."""
    deadline = time.monotonic() + timeout
    marker = None
    while time.monotonic() < deadline:
        params: t.Dict[str, t.Any] = {"dump_id": list(dump_ids)}
        if marker is not None:
            params.update(wait=1, marker=marker)
        answer = client.get("/api/dumps", params=params, headers=headers).json()
        marker = answer["marker"]
        by_id = {d["dump_id"]: d for d in answer["dumps"]}
        if all(ready(by_id[i]) for i in dump_ids):
            return [by_id[i] for i in dump_ids]
    raise AssertionError(f"dumps {dump_ids} were not {what} within {timeout} s")


def wait_finished(client: TestClient, dump_ids: t.Sequence[str], timeout: float = 10.0, headers=None) -> t.List[dict]:
    """Wait until every dump is completed or failed; the records in dump_ids order."""
    return wait_records(client, dump_ids, lambda d: d["state"] in ("completed", "failed"), "finished", timeout, headers)


def wait_held(client: TestClient, dump_ids: t.Sequence[str]) -> t.List[dict]:
    """Wait until the Gate's fake dumps report their progress (they then hold until released)."""
    return wait_records(client, dump_ids, lambda d: d["progress"] == 50.0, "held by the gate")


class Gate:
    """Replaces DumpJob.run with a fake that blocks until released (to hold dumps in 'running')."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: t.List[str] = []
        self.lock = threading.Lock()
        self.fail = False

    def run(self, job, on_progress, on_uuid, reserve, space=None):  # pylint: disable=unused-argument
        reserve(0)
        with self.lock:
            self.started.append(job.vm)
        on_uuid("00000000-0000-0000-0000-000000000000")
        on_progress(50.0)
        if not self.release.wait(20):
            raise virt.DumpError("gate never released")
        if self.fail:
            raise virt.DumpError("fake failure", "libvirt_error")
        with open(job.final_path, "wb") as handle:
            handle.write(b"fake image")
        job.memory_only = True
        job.paused_sec = 0.01
        return "0" * 64, 10


@pytest.fixture(name="gate")
def fixture_gate(monkeypatch) -> t.Iterator[Gate]:
    """Dumps block in 'running' until gate.release is set."""
    gate = Gate()

    def fake_run(job, on_progress, on_uuid, reserve, space=None):
        return gate.run(job, on_progress, on_uuid, reserve, space)

    monkeypatch.setattr(virt.DumpJob, "run", fake_run)
    yield gate
    gate.release.set()
