"""Shared fixtures: a real redis-server for the session, flushed before and after every test."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import redis

from remediator.embedded_redis import EmbeddedRedis


def require_binary(name: str) -> str:
    """The path of a system binary the tests need; a missing one fails the test (never skips)."""
    path = shutil.which(name) or (shutil.which(name, path="/usr/sbin:/sbin"))
    if not path:
        pytest.fail(f"{name} is not installed; `make test` installs it (apt-get) before running the suite")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One real redis-server (from Debian's redis-server package) on a private loopback port."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), binary=require_binary("redis-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The URL of the session's Redis, flushed before and after the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    try:
        client.flushall()
    except redis.ConnectionError:  # a test may have stopped the server on purpose
        pass
    client.close()


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


from remediator.sim.testing import make_sim_cluster, sim_cluster  # noqa: E402, F401
