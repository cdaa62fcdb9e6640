"""The Host header check (memdump_service.hostcheck) is the same on every Starlette the lock installs (Python 3.9 to 3.13)."""

import pytest

from conftest import running_app


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:5001", "localhost:5001", "LOCALHOST", "[::1]", "[::1]:5001"])
def test_a_loopback_name_with_or_without_a_port_is_answered(settings, host):
    with running_app(settings) as client:
        answer = client.get("/health", headers={"host": host})
        assert answer.status_code == 200, (host, answer.status_code, answer.text)


@pytest.mark.parametrize("host", ["127.0.0.1:80/x", "127.0.0.1:x", "[::1", "[::1]x", "evil.example", "127.0.0.1@evil", "", "::1",
                                  "127.0.0.1:5001:5001", "[::1]:123456"])
def test_a_malformed_or_foreign_host_is_refused(settings, host):
    with running_app(settings) as client:
        answer = client.get("/health", headers={"host": host})
        assert answer.status_code == 400 and answer.text == "Invalid host header", (host, answer.status_code, answer.text)


def test_allowed_hosts_take_a_domain_wildcard(settings):
    settings.allowed_hosts = ["*.dfir.example"]
    with running_app(settings) as client:
        assert client.get("/health", headers={"host": "hv1.dfir.example:5001"}).status_code == 200
        assert client.get("/health", headers={"host": "dfir.example"}).status_code == 400
        assert client.get("/health", headers={"host": "127.0.0.1"}).status_code == 400
