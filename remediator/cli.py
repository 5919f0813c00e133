"""The ``remediator`` command."""

from __future__ import annotations

import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import click

from remediator.config import Settings
from remediator.exceptions import ConfigError

DEFAULT_BIND = "0.0.0.0:8080"
DEV_BIND = "127.0.0.1:8080"
SHUTDOWN_GRACE = 10.0  # seconds children get to stop before they are killed


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _redis_server_binary() -> str:
    """The redis-server an embedded Redis would run, or a ClickException saying what to install."""
    from remediator.embedded_redis import redis_server_binary

    try:
        return redis_server_binary()
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc


def _default_web_workers() -> int:
    # The receiver is I/O-bound (Redis round trips): a few processes with threads each go far.
    return min(2 * (os.cpu_count() or 1) + 1, 8)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ringrift-remediator")
def main() -> None:
    """ringrift-remediator: the CriticalSyncHosts runbook, automated safely."""


@main.command()
@click.option("--bind", default=DEFAULT_BIND, show_default=True, help="host:port to listen on")
@click.option("--workers", type=int, default=None, help="gunicorn processes [min(2*cores+1, 8)]")
@click.option("--threads", type=int, default=4, show_default=True, help="threads per process")
@click.option("--timeout", type=int, default=30, show_default=True, help="request timeout, seconds")
def serve(bind: str, workers: int | None, threads: int, timeout: int) -> None:
    """Run the webhook receiver and API under gunicorn."""
    from remediator.web.server import run_gunicorn

    settings = _settings()
    run_gunicorn(
        settings, bind=bind, workers=workers or _default_web_workers(), threads=threads, timeout=timeout
    )


@main.command()
@click.option("--burst", is_flag=True, help="run the jobs there are, then exit")
@click.option("--name", default=None, help="worker name (default: rq's; a prefix with --processes)")
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="work processes under this one command (one scheduler, one sweeper)",
)
def worker(burst: bool, name: str | None, processes: int) -> None:
    """Run RQ workers on the remediator's queue, with the scheduler and the ladder sweeper.

    SIGTERM or SIGINT: each worker finishes the job in hand, then exits (a second one cuts it off)."""
    from workers.runner import run_worker

    try:
        run_worker(_settings(), burst=burst, name=name, processes=processes)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _terminate(procs: list[subprocess.Popen[Any]]) -> None:
    """SIGTERM each child (a warm shutdown), SIGKILL after the grace; then whatever is left in a child's
    process group (a worker's scheduler process that outlived it) goes too, as a supervisor's would."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_GRACE
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for proc in procs:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # each child leads a session (and group) of its own
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.5)  # shutdown only: a moment for the group to go before it is killed


@main.command()
@click.option("--bind", default=DEV_BIND, show_default=True)
@click.option("--workers", "rq_workers", type=int, default=1, show_default=True, help="RQ workers")
def dev(bind: str, rq_workers: int) -> None:
    """Receiver + worker in one command; starts an embedded Redis when REDIS_URL (and REDIS_SENTINELS)
    is unset."""
    from remediator.embedded_redis import EmbeddedRedis

    env = dict(os.environ)
    embedded = None
    binary = None if env.get("REDIS_URL") or env.get("REDIS_SENTINELS") else _redis_server_binary()
    workdir = tempfile.mkdtemp(prefix="remediator-dev-")
    if binary:
        embedded = EmbeddedRedis(os.path.join(workdir, "redis"), binary=binary).start()
        assert embedded.process is not None  # start() returns once its server answers
        env["REDIS_URL"] = embedded.url
        click.echo(f"embedded redis-server at {embedded.url} (pid {embedded.process.pid})")
    if not env.get("REMEDIATOR_WEBHOOK_TOKEN") and not env.get("REMEDIATOR_WEBHOOK_TOKEN_FILE"):
        token_file = os.path.join(workdir, "webhook-token")
        with open(token_file, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(24))
        os.chmod(token_file, 0o600)
        env["REMEDIATOR_WEBHOOK_TOKEN_FILE"] = token_file
        click.echo(f"webhook token written to {token_file} (send it as 'Authorization: Bearer <token>')")
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", os.path.join(workdir, "metrics"))
    os.makedirs(env["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    procs: list[subprocess.Popen[Any]] = []

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even if started with it ignored
    try:
        py = sys.executable
        # Sessions of their own: Ctrl-C reaches this process only, which stops the children in order.
        procs.append(
            subprocess.Popen(
                [py, "-m", "remediator", "serve", "--bind", bind, "--workers", "2"],
                env=env,
                start_new_session=True,
            )
        )
        for _ in range(rq_workers):
            procs.append(
                subprocess.Popen([py, "-m", "remediator", "worker"], env=env, start_new_session=True)
            )
        click.echo(f"receiver on http://{bind}  (Ctrl-C stops everything)")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [p.args for p in procs if p.poll() is not None]
        raise click.ClickException(f"a child process exited: {failed}")
    except KeyboardInterrupt:
        click.echo("stopping")
    finally:
        # The receiver and the workers (with their schedulers) first, Redis last: stopped the other
        # way round, every one of them printed a traceback on its way out.
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        _terminate(procs)
        if embedded:
            embedded.stop()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@click.option("--timeout", type=float, default=240.0, show_default=True, help="seconds before giving up")
def demo(as_json: bool, timeout: float) -> None:
    """Simulated cluster, real alerts, live progress: the product working on this machine."""
    if importlib.util.find_spec("remediator.sim") is None:
        raise click.ClickException(
            "the demo needs the simulated cluster (remediator.sim), which this installation leaves out "
            "(the container image does): run it from a source checkout with `make demo`"
        )
    _redis_server_binary()
    from remediator.demo import run_demo

    sys.exit(run_demo(as_json=as_json, timeout=timeout))


def _attach_optional_commands() -> None:
    from remediator.ops_cli import COMMANDS
    from remediator.rules.cli import rules

    main.add_command(rules)
    for command in COMMANDS:
        main.add_command(command)


_attach_optional_commands()
