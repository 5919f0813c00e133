"""The coordinator HTTP client against the simulated coordinator: what it retries, and what it must not.

A call that cannot be repeated without a second effect (a data-loss record, a retirement) is retried
only when it provably never reached the coordinator; one that can (a read, a sync request, a state
set on a host) is retried on 5xx and connection errors.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from remediator.clients.coordinator import HttpCoordinator
from remediator.exceptions import CoordinatorMaybeApplied, CoordinatorUnavailable

RECORD = {"games_lost": 3, "first_game_at": None, "last_game_at": None, "checklist": {}}


@pytest.fixture
def sim(make_sim_cluster):
    return make_sim_cluster(hosts=1, selfplay=False)


def client(url: str, key: str | None = None) -> HttpCoordinator:
    return HttpCoordinator(url, key, timeout=2.0, backoff=0.01)


@pytest.mark.parametrize("status", [500, 502, 504])
def test_data_loss_record_answered_5xx_after_it_was_stored_is_not_sent_again(sim, status: int) -> None:
    h = sim.host_ids[0]
    sim.coordinator_fault(status=status, applied=True)
    with pytest.raises(CoordinatorMaybeApplied, match="may have applied it"):
        client(sim.coordinator_url, sim.admin_key).record_data_loss({"host_id": h, **RECORD})
    sim.coordinator_fault(None)
    assert len(sim.data_loss_records) == 1  # one training-log entry, not one per attempt


def test_retirement_answered_5xx_after_it_was_applied_is_not_sent_again(sim) -> None:
    h = sim.host_ids[0]
    sim.coordinator_fault(status=502, applied=True)
    with pytest.raises(CoordinatorMaybeApplied):
        client(sim.coordinator_url, sim.admin_key).retire(h, "data_loss", acknowledge_loss=True)
    sim.coordinator_fault(None)
    assert sim.counts(h)["retires"] == 1 and sim.retired(h)


def test_idempotent_posts_are_retried_on_5xx(sim) -> None:
    h = sim.host_ids[0]
    coordinator = client(sim.coordinator_url, sim.admin_key)
    sim.coordinator_fault(status=503, applied=True)
    with pytest.raises(CoordinatorUnavailable, match="failed after 3 attempts: HTTP 503") as caught:
        coordinator.force_sync(h)
    assert not isinstance(caught.value, CoordinatorMaybeApplied)
    with pytest.raises(CoordinatorUnavailable, match="failed after 3 attempts"):
        coordinator.pause_selfplay([h], "storm")
    with pytest.raises(CoordinatorUnavailable, match="failed after 3 attempts"):
        coordinator.unretire(h)
    sim.coordinator_fault(None)
    counts = sim.counts(h)
    assert (counts["force_syncs"], counts["pauses"], counts["unretires"]) == (3, 3, 3)


class DroppingServer:
    """Accepts a connection, reads one whole HTTP request, then closes without answering: the
    request reached the server, and the client cannot know whether it was applied."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(v)
                        for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n"))
                        if k.lower() == b"content-length"
                    ),
                    0,
                )
                while len(body) < length and (chunk := conn.recv(65536)):
                    body += chunk
                self.requests += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def dropping() -> Iterator[DroppingServer]:
    server = DroppingServer()
    yield server
    server.stop()


def test_data_loss_record_whose_connection_drops_after_sending_is_not_sent_again(dropping) -> None:
    with pytest.raises(CoordinatorMaybeApplied, match="failed after it was sent"):
        client(dropping.url, "key").record_data_loss({"host_id": "h1", **RECORD})
    assert dropping.requests == 1


def test_sync_request_whose_connection_drops_is_retried(dropping) -> None:
    with pytest.raises(CoordinatorUnavailable, match="failed after 3 attempts"):
        client(dropping.url).force_sync("h1")
    assert dropping.requests == 3


def test_data_loss_record_refused_connection_is_retried_since_it_was_never_sent(
    closed_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="remediator.clients.coordinator")
    with pytest.raises(CoordinatorUnavailable, match="failed after 3 attempts: ConnectionError") as caught:
        client(closed_url, "key").record_data_loss({"host_id": "h1", **RECORD})
    assert not isinstance(caught.value, CoordinatorMaybeApplied)
    assert caplog.text.count("coordinator POST /admin/data-loss failed (ConnectionError); retrying") == 2
