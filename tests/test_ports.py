"""Server ports: picked outside the kernel's ephemeral range, and a server whose picked port is taken
before it binds starts on a fresh one instead of failing (or, worse, talking to another's server)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from remediator import embedded_redis, ports
from remediator.embedded_redis import EmbeddedRedis
from remediator.sim import SimCluster


def test_free_ports_are_outside_the_ephemeral_range_distinct_and_free() -> None:
    first, last = ports.ephemeral_range()
    picked = ports.free_ports("127.0.0.1", 40)
    assert len(set(picked)) == 40
    assert all(not first <= p <= last and p >= ports.LOWEST_PORT for p in picked)
    for port in picked:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    udp = ports.free_port(udp=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dgram:
        dgram.bind(("127.0.0.1", udp))


def test_free_ports_finds_a_thousand_at_once_for_a_fleet_scale_sim() -> None:
    picked = ports.free_ports("127.0.0.1", 1000)
    assert len(set(picked)) == 1000


def test_an_outgoing_connection_never_gets_a_picked_port() -> None:
    """What made .ci/run fail: a bind-and-closed port handed out again as a client's local port."""
    first, last = ports.ephemeral_range()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        clients = [socket.create_connection(listener.getsockname()) for _ in range(20)]
        try:
            local = {c.getsockname()[1] for c in clients}
        finally:
            for c in clients:
                c.close()
    assert all(first <= p <= last for p in local)  # the kernel's own picks: inside the range ...
    assert not local & set(ports.free_ports("127.0.0.1", 40))  # ... ours: outside it


@pytest.fixture
def taken() -> Iterator[int]:
    """A port outside the ephemeral range that another process's server holds."""
    with socket.create_server(("127.0.0.1", ports.free_port())) as sock:
        yield sock.getsockname()[1]


def first_then_real(port: int, real: Callable[..., int]) -> Callable[..., int]:
    """A port picker whose first answer is ``port`` (taken meanwhile, as by a racing process)."""
    answers = iter([port])

    def pick(*args: object, **kwargs: object) -> int:
        return next(answers, None) or real(*args, **kwargs)

    return pick


def test_sim_host_whose_port_was_taken_before_its_sshd_bound_moves_to_a_fresh_port(
    taken: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = ports.free_ports, []

    def first_taken(host: str, count: int = 1, **kw: bool) -> list[int]:
        calls.append(count)
        return [taken, *real(host, count - 1, **kw)] if len(calls) == 1 else real(host, count, **kw)

    monkeypatch.setattr(ports, "free_ports", first_taken)
    with SimCluster(hosts=2, root=tmp_path / "sim", selfplay=False) as sim:
        host = sim.host("host-01")
        assert host.ssh_port != taken
        assert "Address already in use" in host.paths.sshd_log.read_text()  # the first start failed
        assert sim.ssh_run("host-01", "echo OK").stdout.strip() == "OK"  # known_hosts has the new port
        assert sim.coordinator is not None and sim.coordinator.hosts["host-01"].ssh_port == host.ssh_port


def test_embedded_redis_whose_port_was_taken_starts_on_a_fresh_one(
    taken: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded_redis, "free_port", first_then_real(taken, ports.free_port))
    with EmbeddedRedis(tmp_path / "r") as server:
        assert server.port != taken
        assert redis.Redis.from_url(server.url).info("server")["process_id"] == server.process.pid


def test_embedded_redis_never_takes_another_redis_on_its_port_for_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with EmbeddedRedis(tmp_path / "other") as other:
        monkeypatch.setattr(embedded_redis, "free_port", first_then_real(other.port, ports.free_port))
        with EmbeddedRedis(tmp_path / "mine") as mine:
            assert mine.port != other.port
            assert redis.Redis.from_url(mine.url).info("server")["process_id"] == mine.process.pid


def test_embedded_redis_on_a_given_port_does_not_move(taken: int, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=f"did not start on port {taken}"):
        EmbeddedRedis(tmp_path / "r", port=taken).start()
