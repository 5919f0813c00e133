"""Shared fixtures: a real redis-server for the session, flushed before and after every test."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator

import pytest
import redis
from pytest_httpserver import HTTPServer

from remediator import create_app
from remediator.embedded_redis import EmbeddedRedis
from remediator.ports import free_port

# The image's tests run only after `make image` built it (RUN_IMAGE=1, set by `make image-test` and
# `make test`); a plain pytest leaves them out rather than test a stale image or skip.
collect_ignore = [] if os.environ.get("RUN_IMAGE") == "1" else ["image"]


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


pytest_plugins = ["sim_fixtures"]  # the simulated cluster's fixtures: sim_cluster, make_sim_cluster


@pytest.fixture(scope="session")
def _loopback_http() -> Iterator[HTTPServer]:
    httpserver = HTTPServer(host="127.0.0.1", port=0)
    httpserver.start()
    yield httpserver
    httpserver.stop()


@pytest.fixture
def server(_loopback_http: HTTPServer) -> Iterator[HTTPServer]:
    """A local HTTP server on 127.0.0.1 that answers as each test tells it (shared, cleared per test);
    it stands in for PagerDuty, Slack-style webhooks and the cloud provider APIs."""
    _loopback_http.clear()
    yield _loopback_http
    _loopback_http.clear()


@pytest.fixture
def e2e_stack(redis_url: str, tmp_path, monkeypatch):
    """``e2e.stack_running`` on this test's Redis, tmp_path and monkeypatch:
    ``with e2e_stack(sim, workers=2, REMEDIATOR_DRY_RUN="true") as stack: ...``."""
    from e2e import stack_running

    return functools.partial(stack_running, redis_url=redis_url, tmp=tmp_path, monkeypatch=monkeypatch)


@pytest.fixture
def closed_url() -> str:
    """The base URL of a loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def app(redis_url: str):
    """The real app on the session's Redis, with the test tokens (tests may override this fixture)."""
    from helpers import make_settings

    return create_app({"SETTINGS": make_settings(redis_url), "TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()
