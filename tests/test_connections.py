"""One connection factory (remediator/connections.py): settings, Sentinel, and what failures become.

Against a real Sentinel deployment (tests/redis_sentinel.py): a master, a replica, three sentinels.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import WEBHOOK_TOKEN, alert, bearer, make_settings, payload
from redis_sentinel import MASTER_NAME, SentinelCluster
from rq import Queue
from rq.job import Job

from remediator import create_app, keys
from remediator.config import Settings
from remediator.connections import confirm_replicated, is_sentinel_backed, redis_from_settings
from remediator.exceptions import ConfigError
from workers.rq_worker import RemediatorScheduler

PASSWORD = "conn-master-51ab"
SENTINEL_PASSWORD = "conn-sentinel-0c7e"


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with SentinelCluster(tmp_path_factory.mktemp("sentinel"), PASSWORD, SENTINEL_PASSWORD) as cluster:
        yield cluster


@pytest.fixture
def ha_settings(sentinels: SentinelCluster) -> Iterator[Settings]:
    settings = Settings.from_env(sentinels.env(db=3))
    yield settings
    conn = redis_from_settings(settings)
    assert conn is not None
    conn.flushdb()


# -- settings -----------------------------------------------------------------------------------


def test_sentinels_are_parsed_with_default_port_and_ipv6() -> None:
    settings = Settings.from_env(
        {"REDIS_SENTINELS": " s1:26380, s2 ,[::1]:26381", "REDIS_SENTINEL_MASTER": "mymaster"}
    )
    assert settings.redis_sentinels == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert settings.redis_configured and settings.redis_url is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s1:port", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s1:70000", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
    ],
)
def test_a_bad_sentinel_setting_is_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_sentinel_password_comes_from_its_file_and_is_a_secret(tmp_path: Path) -> None:
    secret = tmp_path / "sentinel-password"
    secret.write_text("s3ntinel-pw\n")
    settings = Settings.from_env(
        {"REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "m", "REDIS_SENTINEL_PASSWORD_FILE": str(secret)}
    )
    assert settings.redis_sentinel_password == "s3ntinel-pw"
    assert "s3ntinel-pw" in settings.secrets() and "s3ntinel-pw" not in repr(settings)


def test_a_unix_socket_url_cannot_go_with_sentinels() -> None:
    settings = Settings.from_env(
        {"REDIS_URL": "unix:///run/redis.sock", "REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "m"}
    )
    with pytest.raises(ConfigError, match="REDIS_URL"):
        redis_from_settings(settings)


# -- the factory under Sentinel -------------------------------------------------------------------


def test_client_reaches_the_master_named_by_the_sentinels_with_the_urls_db_and_password(
    sentinels: SentinelCluster, ha_settings: Settings
) -> None:
    conn = redis_from_settings(ha_settings)
    assert conn is not None and is_sentinel_backed(conn)
    conn.set("conn-test", "on-the-master")
    master = redis.Redis(host="127.0.0.1", port=sentinels.master().port, password=PASSWORD, db=3)
    assert master.get("conn-test") == b"on-the-master"
    assert confirm_replicated(conn) is True  # the replica has it


def test_wrong_sentinel_password_finds_no_master(sentinels: SentinelCluster) -> None:
    env = {**sentinels.env(), "REDIS_SENTINEL_PASSWORD": "wrong"}
    conn = redis_from_settings(Settings.from_env(env))
    assert conn is not None
    with pytest.raises(redis.ConnectionError, match=MASTER_NAME):
        conn.ping()


def test_rq_scheduler_builds_its_connection_through_the_factory(ha_settings: Settings) -> None:
    conn = redis_from_settings(ha_settings)
    assert conn is not None
    scheduler = RemediatorScheduler([Queue("q", connection=conn)], connection=conn, settings=ha_settings)
    assert is_sentinel_backed(scheduler.connection)
    assert scheduler.connection is not conn  # its own, as rq's is (built again after its fork)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_jobs_and_their_context_run_on_the_sentinel_backed_connection(
    sentinels: SentinelCluster, ha_settings: Settings, tmp_path: Path, processes: str
) -> None:
    """In a single worker and in each work process of a pool (which builds its own connection)."""
    conn = redis_from_settings(ha_settings)
    assert conn is not None
    job = Queue("remediator", connection=conn).enqueue("ha_jobs.connection_kinds")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "REMEDIATOR_"))}
    env.update(sentinels.env(db=3))
    env.update(PYTHONPATH=str(Path(__file__).parent), PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "remediator", "worker", "--burst", "--processes", processes],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = Job.fetch(job.id, connection=conn).return_value()
    assert result == {"job": True, "context": True, "db": 3}


# -- what a failure becomes at the receiver ---------------------------------------------------------


def post(app, host: str = "conn-host") -> int:
    resp = app.test_client().post(
        "/webhook/alertmanager",
        data=json.dumps(payload([alert(host)])),
        content_type="application/json",
        headers=bearer(),
    )
    return resp.status_code


def test_receiver_answers_503_while_no_replica_confirms_the_alert(
    sentinels: SentinelCluster, ha_settings: Settings
) -> None:
    app = create_app({"SETTINGS": Settings(**{**ha_settings.__dict__, "webhook_token": WEBHOOK_TOKEN})})
    replica = next(n for n in sentinels.data_nodes if n is not sentinels.master())
    assert replica.process is not None
    replica.process.send_signal(signal.SIGSTOP)  # attached, but acknowledges nothing
    try:
        assert post(app) == 503
    finally:
        replica.process.send_signal(signal.SIGCONT)
    # Stored on the master all the same: the retry is answered as a re-send, with no second ladder.
    assert post(app) == 202
    conn = redis_from_settings(ha_settings)
    assert conn is not None
    assert conn.zcard(keys.LADDER_STARTS.format("conn-host")) == 1


def test_receiver_answers_503_when_its_redis_is_a_read_only_replica(sentinels: SentinelCluster) -> None:
    replica = next(n for n in sentinels.data_nodes if n is not sentinels.master())
    url = f"redis://:{PASSWORD}@127.0.0.1:{replica.port}/4"
    app = create_app({"SETTINGS": make_settings(url)})
    assert post(app) == 503
