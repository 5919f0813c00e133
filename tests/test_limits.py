"""Fleet-wide limits against a real Redis: at most N SSH sessions at once, the coordinator call rate
honoured, one provider listing for many hosts, and each one failing safe (no slot, no call)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_httpserver import HTTPServer
from redis.backoff import NoBackoff
from redis.retry import Retry
from test_providers import VAST_KEY, serve_vast, vast_row
from werkzeug import Request, Response

from remediator import keys
from remediator.clients import LimitedSession, real_clients
from remediator.clients.coordinator import HttpCoordinator
from remediator.clients.providers import CloudState, VastProvider, instance_state
from remediator.config import Settings
from remediator.embedded_redis import EmbeddedRedis
from remediator.exceptions import CoordinatorError, CoordinatorUnavailable, LimitUnavailable, ProviderError
from remediator.limits import CallRate, SessionSlots
from remediator.listings import SharedHosts, SharedListing
from remediator.ports import free_port


def in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` in ``count`` threads at once (each its own worker); re-raise the first error."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]


def unreachable_redis() -> redis.Redis:
    """A client of a Redis that is not there, failing each call at once (no client-side retries)."""
    return redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


# -- SSH sessions --------------------------------------------------------------------------------------------


def test_no_more_than_the_limit_of_ssh_sessions_are_open_at_once(redis_url: str) -> None:
    open_now, most = [0], [0]
    guard = threading.Lock()

    def session(_: int) -> None:
        slots = SessionSlots(redis.Redis.from_url(redis_url), limit=3, wait=30)  # a worker of its own
        with slots.slot():
            with guard:
                open_now[0] += 1
                most[0] = max(most[0], open_now[0])
            time.sleep(0.05)  # the session's commands
            with guard:
                open_now[0] -= 1

    in_threads(20, session)
    slots = SessionSlots(redis.Redis.from_url(redis_url), limit=3, wait=30)
    assert most[0] == 3  # the limit was reached, and never passed
    assert slots.peak() == 3 and slots.open() == 0


def test_a_worker_that_dies_holding_a_slot_frees_it_within_the_lease(redis_url: str, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, redis; from remediator.limits import SessionSlots; "
            f"SessionSlots(redis.Redis.from_url({redis_url!r}), 1, 5, lease_ttl=1.0).acquire(); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        holder.kill()  # SIGKILL: no release, no more renewals
        holder.wait()
        started = time.monotonic()
        SessionSlots(redis.Redis.from_url(redis_url), 1, wait=5).acquire().release()
        assert time.monotonic() - started < 2.0  # the lease's 1 s, not the 5 s wait
    finally:
        holder.kill()
        holder.wait()


def test_a_held_slot_is_renewed_beyond_its_lease_and_nobody_else_gets_it(redis_url: str) -> None:
    slots = SessionSlots(redis.Redis.from_url(redis_url), 1, wait=5, lease_ttl=0.6)
    lease = slots.acquire()
    try:
        other = SessionSlots(redis.Redis.from_url(redis_url), 1, wait=1.5, lease_ttl=0.6)
        with pytest.raises(LimitUnavailable, match=r"no SSH session slot free within 1\.5 s"):
            other.acquire()  # 2.5 leases long: renewed all along
    finally:
        lease.release()
    other.acquire().release()


def test_a_short_lease_does_not_expire_the_longer_leases_held_beside_it(redis_url: str) -> None:
    long = SessionSlots(redis.Redis.from_url(redis_url), 2, wait=1, lease_ttl=30)
    short = SessionSlots(redis.Redis.from_url(redis_url), 2, wait=1, lease_ttl=0.3)
    held = long.acquire()
    try:
        brief = short.acquire()
        brief.release()
        time.sleep(0.6)  # the short lease's whole life, twice
        assert long.open() == 1  # the long lease (and the set holding it) is still there
    finally:
        held.release()


def test_a_limited_session_runs_nothing_outside_its_with_block(redis_url: str) -> None:
    from remediator.exceptions import SSHError

    slots = SessionSlots(redis.Redis.from_url(redis_url), 1, wait=1)
    with pytest.raises(SSHError, match="no SSH session slot held"):
        LimitedSession(Refusing(), slots).run("echo OK")


def test_without_redis_the_ssh_limit_waits_and_then_refuses_never_letting_a_session_through() -> None:
    down = unreachable_redis()
    slots = SessionSlots(down, limit=64, wait=0.8)
    started = time.monotonic()
    with pytest.raises(LimitUnavailable, match="Redis did not answer"):
        slots.acquire()
    assert 0.3 < time.monotonic() - started < 3.0


def test_a_redis_that_comes_back_during_the_wait_gives_the_slot(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedRedis(tmp_path / "redis", port=port)
    threading.Timer(0.5, server.start).start()
    try:
        slots = SessionSlots(
            redis.Redis(port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)), limit=1, wait=15
        )
        slots.acquire().release()
        assert slots.peak() == 1
    finally:
        time.sleep(0.1)
        server.stop()


class Refusing:
    """A session whose connect fails (a host refusing): the slot must be given back."""

    def __enter__(self) -> Refusing:
        raise ConnectionRefusedError("refused")

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self, command: str, stdin: str | None = None, timeout: float | None = None):  # pragma: no cover
        raise AssertionError("never connected")


def test_a_session_that_fails_to_connect_gives_its_slot_back(redis_url: str) -> None:
    slots = SessionSlots(redis.Redis.from_url(redis_url), 1, wait=1)
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError), LimitedSession(Refusing(), slots):
            pass
    assert slots.open() == 0


def test_real_clients_put_ssh_rsync_coordinator_and_providers_under_the_limits(redis_url: str) -> None:
    settings = Settings(
        redis_url=redis_url,
        vast_url="http://127.0.0.1:9/vast",
        vast_api_key="k",
        ssh_known_hosts="/dev/null",
        max_ssh_sessions=7,
        coordinator_calls_per_second=3,
    )
    clients = real_clients(settings)
    from remediator.clients.coordinator import HostRecord

    record = HostRecord("h1", "critical", None, False, "127.0.0.1", "root", 22, None, None, "/data/selfplay")
    session = clients.ssh(record)
    assert isinstance(session, LimitedSession) and session.slots.limit == 7
    assert isinstance(clients.coordinator, SharedHosts)
    assert clients.coordinator.limiter.__self__.per_second == 3
    assert isinstance(clients.providers()["vast"], SharedListing)


# -- coordinator calls ---------------------------------------------------------------------------------------


def test_coordinator_calls_stay_within_the_fleet_wide_rate(redis_url: str, server: HTTPServer) -> None:
    arrivals: list[float] = []
    guard = threading.Lock()

    def answer(request: Request) -> Response:
        with guard:
            arrivals.append(time.monotonic())
        return Response(json.dumps({"h1": {"state": "healthy"}}), content_type="application/json")

    server.expect_request("/sync/hosts", method="GET").respond_with_handler(answer)

    def worker(_: int) -> None:
        rate = CallRate(redis.Redis.from_url(redis_url), per_second=10, wait=30)
        coordinator = HttpCoordinator(server.url_for("").rstrip("/"), None, limiter=rate.take)
        for _ in range(8):
            coordinator.hosts()

    started = time.monotonic()
    in_threads(4, worker)  # 32 calls from 4 workers at 10 a second: 3 s at least
    assert len(arrivals) == 32
    assert time.monotonic() - started >= 2.0
    ordered = sorted(arrivals)
    # Any 1 s: at most 10 (a little slack for the HTTP hop after the limiter's own clock).
    assert max(sum(1 for t in ordered if a <= t < a + 0.95) for a in ordered) <= 10
    # The limiter's own count of the most calls it let through in one second: the limit, reached.
    assert int(redis.Redis.from_url(redis_url).get(keys.COORDINATOR_CALLS_PEAK) or 0) == 10


def test_a_coordinator_call_without_its_slot_is_not_sent_and_reads_as_unavailable(server: HTTPServer) -> None:
    down = unreachable_redis()
    coordinator = HttpCoordinator(server.url_for(""), None, limiter=CallRate(down, 5, wait=0.5).take)
    with pytest.raises(CoordinatorUnavailable, match="not sent: coordinator call rate"):
        coordinator.force_sync("h1")
    assert server.log == []


# -- provider listing ---------------------------------------------------------------------------------------


def test_one_provider_listing_serves_many_hosts_within_its_window(redis_url: str, server: HTTPServer) -> None:
    rows = [vast_row(100 + i, "running" if i % 3 else "exited", "running") for i in range(60)]
    serve_vast(server, rows)  # 60 instances: 3 pages a listing
    found: dict[str, CloudState] = {}

    def diagnosis(i: int) -> None:
        shared = SharedListing(
            VastProvider(server.url_for(""), VAST_KEY, retry=1), redis.Redis.from_url(redis_url), 2.0, 30
        )
        found[str(100 + i)] = instance_state({"vast": shared}, "vast", str(100 + i)).state

    in_threads(40, diagnosis)
    assert len(server.log) == 3  # one listing (its three pages) for 40 hosts
    assert found["100"] is CloudState.STOPPED and found["101"] is CloudState.RUNNING
    shared = SharedListing(
        VastProvider(server.url_for(""), VAST_KEY, retry=1), redis.Redis.from_url(redis_url), 2.0, 30
    )
    assert shared.instance_state("999") is CloudState.TERMINATED  # not listed: gone
    time.sleep(2.1)
    shared.instance_state("101")
    assert len(server.log) == 6  # the window is over: listed again


def test_a_diagnosis_of_an_unreachable_host_reads_no_listing_older_than_itself(
    redis_url: str, server: HTTPServer
) -> None:
    serve_vast(server, [vast_row(101, "running")])
    conn = redis.Redis.from_url(redis_url)
    shared = SharedListing(VastProvider(server.url_for(""), VAST_KEY, retry=1), conn, 30.0, 30)
    assert instance_state({"vast": shared}, "vast", "101").state is CloudState.RUNNING
    assert len(server.log) == 1
    began = time.time()
    server.clear()
    serve_vast(server, [])  # the instance is destroyed after that listing
    assert instance_state({"vast": shared}, "vast", "101").state is CloudState.RUNNING  # shared: 30 s
    assert server.log == []
    assert instance_state({"vast": shared}, "vast", "101", since=began).state is CloudState.TERMINATED
    assert len(server.log) == 1  # one fresh listing, then shared again, even with since
    assert instance_state({"vast": shared}, "vast", "101", since=began).state is CloudState.TERMINATED
    assert instance_state({"vast": shared}, "vast", "101").state is CloudState.TERMINATED
    assert len(server.log) == 1


def test_a_failing_provider_listing_is_shared_too_as_unknown(redis_url: str, server: HTTPServer) -> None:
    server.expect_request("/api/v1/instances/").respond_with_json({"success": False, "error": "boom"})

    def diagnosis(i: int) -> None:
        shared = SharedListing(
            VastProvider(server.url_for(""), VAST_KEY, retry=1), redis.Redis.from_url(redis_url), 5.0, 30
        )
        state = instance_state({"vast": shared}, "vast", "101")
        assert state.state is CloudState.UNKNOWN and "success=False" in state.reason

    in_threads(10, diagnosis)
    assert len(server.log) == 1
    assert json.loads(redis.Redis.from_url(redis_url).get(next(iter(_listing_keys(redis_url)))))["error"]


def test_without_redis_a_listing_is_not_fetched_per_host_but_refused(server: HTTPServer) -> None:
    serve_vast(server, [vast_row(101, "running")])
    down = unreachable_redis()
    shared = SharedListing(VastProvider(server.url_for(""), VAST_KEY, retry=1), down, 5.0, wait=0.5)
    assert instance_state({"vast": shared}, "vast", "101").state is CloudState.UNKNOWN
    assert server.log == []
    with pytest.raises(ProviderError):
        shared.instance_state("101")


# -- coordinator host listing ------------------------------------------------------------------------------


def serve_hosts(server: HTTPServer, answers: list[Any]) -> list[float]:
    """``GET /sync/hosts`` answers the next of ``answers`` (a dict, or an HTTP status), the last one
    for good; returns the list of times it was asked."""
    asked: list[float] = []
    guard = threading.Lock()

    def answer(request: Request) -> Response:
        with guard:
            asked.append(time.time())
            now = answers[min(len(asked), len(answers)) - 1]
        if isinstance(now, int):
            return Response("down", status=now)
        return Response(json.dumps(now), content_type="application/json")

    server.expect_request("/sync/hosts", method="GET").respond_with_handler(answer)
    return asked


def shared_hosts(redis_url: str, server: HTTPServer, ttl: float) -> SharedHosts:
    http = HttpCoordinator(server.url_for("").rstrip("/"), None, retries=1)
    return SharedHosts(http, redis.Redis.from_url(redis_url), ttl, wait=30)


def record(state: str, **more: Any) -> dict[str, Any]:
    return {"state": state, "address": "127.0.0.1", "ssh_user": "root", "ssh_port": 22, **more}


def test_one_coordinator_listing_serves_every_read_in_its_window_one_host_each(
    redis_url: str, server: HTTPServer
) -> None:
    fleet = {f"h{i}": record("critical" if i % 2 else "healthy") for i in range(50)}
    asked = serve_hosts(server, [fleet, {**fleet, "h0": record("critical")}])
    found: dict[str, str] = {}

    def diagnosis(i: int) -> None:
        found[f"h{i}"] = shared_hosts(redis_url, server, 2.0).host(f"h{i}").state  # type: ignore[union-attr]

    in_threads(40, diagnosis)
    assert len(asked) == 1  # one listing for 40 reads
    assert found["h0"] == "healthy" and found["h1"] == "critical"
    coordinator = shared_hosts(redis_url, server, 2.0)
    assert coordinator.host("h99") is None  # not in the listing: unknown to the coordinator
    assert sorted(coordinator.hosts()) == sorted(fleet) and len(asked) == 1
    time.sleep(2.1)
    assert coordinator.host("h0").state == "critical"  # type: ignore[union-attr]
    assert len(asked) == 2  # the window is over: listed again


def test_a_read_never_uses_a_listing_fetched_longer_ago_than_its_window(
    redis_url: str, server: HTTPServer
) -> None:
    asked = serve_hosts(server, [{"h1": record("critical")}, {"h1": record("healthy")}])
    coordinator = shared_hosts(redis_url, server, 0.3)
    assert coordinator.host("h1").state == "critical"  # type: ignore[union-attr]
    time.sleep(0.4)
    began = time.time()
    assert coordinator.host("h1").state == "healthy"  # type: ignore[union-attr]
    assert len(asked) == 2 and asked[1] >= began - 0.3


@pytest.mark.parametrize(
    ("answer", "error"),
    [(503, CoordinatorUnavailable), ({"success": False, "error": "boom"}, CoordinatorError)],
)
def test_a_failing_coordinator_listing_is_shared_as_the_same_error(
    redis_url: str, server: HTTPServer, answer: Any, error: type[Exception]
) -> None:
    asked = serve_hosts(server, [answer])
    raised: list[Exception] = []

    def diagnosis(i: int) -> None:
        try:
            shared_hosts(redis_url, server, 5.0).host("h1")
        except CoordinatorError as exc:
            raised.append(exc)

    in_threads(10, diagnosis)
    assert len(asked) == 1 and len(raised) == 10
    assert {type(e) for e in raised} == {error}  # unavailable stays unavailable; never "no such host"


def test_a_host_record_that_cannot_be_trusted_fails_its_own_read_and_is_left_out_of_the_fleet(
    redis_url: str, server: HTTPServer
) -> None:
    serve_hosts(server, [{"h1": record("critical"), "h2": record("critical", data_dir="/data/../etc")}])
    coordinator = shared_hosts(redis_url, server, 5.0)
    with pytest.raises(CoordinatorError, match="unsafe data_dir"):
        coordinator.host("h2")
    assert sorted(coordinator.hosts()) == ["h1"]


def test_without_redis_the_coordinator_listing_is_not_fetched_per_read_but_unavailable(
    server: HTTPServer,
) -> None:
    asked = serve_hosts(server, [{"h1": record("critical")}])
    http = HttpCoordinator(server.url_for("").rstrip("/"), None, retries=1)
    coordinator = SharedHosts(http, unreachable_redis(), 5.0, wait=0.5)
    with pytest.raises(CoordinatorUnavailable, match="not sent"):
        coordinator.host("h1")
    assert asked == []


def test_a_worker_killed_while_fetching_the_listing_holds_the_others_up_seconds_not_a_minute(
    redis_url: str, server: HTTPServer
) -> None:
    release = threading.Event()
    asked: list[float] = []

    def answer(request: Request) -> Response:
        asked.append(time.time())
        if len(asked) == 1:
            release.wait(30)  # the first fetch hangs: its worker is killed before the answer
        return Response(json.dumps({"h1": record("critical")}), content_type="application/json")

    server.expect_request("/sync/hosts", method="GET").respond_with_handler(answer)
    url = server.url_for("").rstrip("/")
    fetcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import redis; from remediator.clients.coordinator import HttpCoordinator; "
            "from remediator.listings import SharedHosts; "
            f"SharedHosts(HttpCoordinator({url!r}, None, retries=1, timeout=60), "
            f"redis.Redis.from_url({redis_url!r}), 5.0, wait=60).host('h1')",
        ]
    )
    conn = redis.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 20
        while not (asked and conn.exists(keys.HOSTS_LISTING_LOCK)):
            assert time.monotonic() < deadline and fetcher.poll() is None, "the fetcher never held the lock"
            time.sleep(0.02)
        fetcher.kill()  # SIGKILL while it holds the fetch lock: no release
        fetcher.wait()
        release.set()
        started = time.monotonic()
        assert shared_hosts(redis_url, server, 5.0).host("h1").state == "critical"  # type: ignore[union-attr]
        # The lock lapses within its short renewed lease (5 s), not the old fixed minute; the
        # reader's 30 s wait would have run out first and read "unavailable".
        assert time.monotonic() - started < 15
        assert len(asked) == 2
    finally:
        fetcher.kill()
        fetcher.wait()
        release.set()


def _listing_keys(redis_url: str) -> list[bytes]:
    pattern = keys.LISTING.format("*")
    return list(redis.Redis.from_url(redis_url).scan_iter(pattern))
