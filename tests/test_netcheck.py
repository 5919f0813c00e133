"""The cluster network probe: plain TCP connects on loopback, in parallel, within a deadline."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from remediator.clients.netcheck import (
    check_cluster_network,
    cluster_endpoints,
    cluster_network_ok,
    endpoint_from_url,
    parse_endpoint,
    probe,
)
from remediator.config import Settings
from remediator.exceptions import ConfigError
from remediator.ports import free_port


@pytest.fixture
def listening() -> Iterator[str]:
    """A loopback port that accepts connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def closed() -> str:
    """A loopback port nobody listens on."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def hanging() -> Iterator[str]:
    """A loopback port whose accept queue is full: new connects get no answer, like a dead route."""
    with socket.socket() as sock, socket.socket() as filler:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        filler.connect(sock.getsockname())  # takes the only slot; nobody ever accepts it
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_listening_port_counts_as_reachable(listening: str) -> None:
    check = probe([listening], timeout=2.0)
    assert (check.ok, check.reachable, check.total, check.failures) == (True, 1, 1, {})


def test_a_closed_port_fails_with_connection_refused(closed: str) -> None:
    check = probe([closed], timeout=2.0)
    assert (check.ok, check.reachable, check.total) == (False, 0, 1)
    assert check.failures == {closed: "connection refused"}


def test_a_connect_with_no_answer_is_abandoned_at_the_timeout(hanging: str, listening: str) -> None:
    check = probe([hanging, listening], timeout=0.3)
    assert check.reachable == 1 and check.total == 2
    assert check.failures == {hanging: "no answer within 0.3 s"}


def test_ok_when_at_least_half_answer(listening: str, closed: str) -> None:
    assert probe([listening, closed], timeout=2.0).ok is True
    assert probe([listening, closed], timeout=2.0, min_fraction=0.75).ok is False


@pytest.mark.parametrize(
    ("reachable", "total", "fraction", "ok"),
    [(0, 0, 0.5, True), (1, 2, 0.5, True), (1, 3, 0.5, False), (2, 3, 0.5, True), (3, 4, 1.0, False)],
)
def test_cluster_network_ok_rule(reachable: int, total: int, fraction: float, ok: bool) -> None:
    assert cluster_network_ok(reachable, total, fraction) is ok


def test_malformed_endpoints_are_failures_not_crashes(listening: str) -> None:
    check = probe([listening, "no-port", "host:99999"], timeout=2.0)
    assert check.reachable == 1 and check.total == 3
    assert set(check.failures) == {"no-port", "host:99999"}
    assert "not host:port" in check.failures["no-port"]


def test_repeated_endpoints_are_probed_once(listening: str) -> None:
    assert probe([listening, listening, " "], timeout=2.0).total == 1


def test_endpoint_parsing() -> None:
    assert parse_endpoint("10.0.0.5:22") == ("10.0.0.5", 22)
    assert parse_endpoint("[::1]:2222") == ("::1", 2222)
    assert endpoint_from_url("http://127.0.0.1:5001/api") == "127.0.0.1:5001"
    assert endpoint_from_url("https://coordinator.example") == "coordinator.example:443"
    assert endpoint_from_url("http://[::1]:8080") == "[::1]:8080"


def test_cluster_endpoints_are_coordinator_hosts_ssh_and_configured_probes() -> None:
    settings = Settings(coordinator_url="http://127.0.0.1:5001", network_probes=("127.0.0.1:9100",))
    hosts = {
        "gpu-1": {"address": "127.0.0.2", "ssh_port": 2201},
        "gpu-2": {"address": "127.0.0.3"},
        "gpu-3": {"address": None},
    }
    assert cluster_endpoints(settings, hosts) == [
        "127.0.0.1:5001",
        "127.0.0.2:2201",
        "127.0.0.3:22",
        "127.0.0.1:9100",
    ]


def test_a_malformed_configured_probe_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="REMEDIATOR_NETWORK_PROBES: network probe 'coordinator' is not"):
        cluster_endpoints(Settings(network_probes=("coordinator",)))


def test_check_cluster_network_probes_everything(listening: str, closed: str) -> None:
    host, port = listening.rsplit(":", 1)
    settings = Settings(coordinator_url=f"http://{listening}", network_probes=(closed,))
    check = check_cluster_network(settings, {"h1": {"address": host, "ssh_port": int(port)}}, timeout=2.0)
    assert (check.ok, check.reachable, check.total) == (True, 1, 2)
    assert list(check.failures) == [closed]
