"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on loopback, for tests and the demo.

    with AlertmanagerProcess(tmp_path, "http://127.0.0.1:8080/webhook/alertmanager", bearer_token="t") as am:
        am.post_alerts([{"labels": {"alertname": "CriticalSyncHosts", "host_id": "gpu-1"}}])
        am.alerts()  # what it holds, as GET /api/v2/alerts answers

Its only receiver is a webhook to ``webhook_url`` carrying the bearer token (from a 0600 file) or basic
auth. Clustering is off unless ``peers`` is given or ``cluster=True``; then it gossips on a loopback
port (``.cluster_address``) so a second instance can list the first in its ``peers`` and the pair
behaves as an HA Alertmanager. Cluster timings default to a few seconds so tests do not wait a minute.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from remediator.ports import free_port

log = logging.getLogger(__name__)

BINARIES = ("prometheus-alertmanager", "alertmanager")
STARTUP_TIMEOUT = 30.0  # seconds to wait for /-/ready
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
HTTP_TIMEOUT = 5.0  # seconds for one call to its API
START_ATTEMPTS = 3  # a free port can be taken between choosing and binding it: try again


def find_binary() -> str:
    """The Alertmanager binary on PATH; FileNotFoundError (never a skip) when it is not installed."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError(
        "prometheus-alertmanager is not installed; install the Debian package prometheus-alertmanager"
    )


@dataclass(eq=False, repr=False)
class AlertmanagerProcess:
    """One Alertmanager process with a webhook receiver; a context manager that leaves no process."""

    workdir: Path  # a str is taken too
    webhook_url: str
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    group_wait: str = "0s"
    group_interval: str = "1s"
    repeat_interval: str = "1m"
    peers: Sequence[str] = ()
    send_resolved: bool = True
    _: KW_ONLY
    group_by: Sequence[str] = ("alertname",)
    cluster: bool | None = None  # None: clustered when it has peers
    peer_timeout: str = "1s"
    settle_timeout: str = "2s"
    gossip_interval: str = "200ms"
    pushpull_interval: str = "1s"
    resolve_timeout: str = "5m"
    binary: str | None = None
    startup_timeout: float = STARTUP_TIMEOUT
    port: int | None = field(default=None, init=False)
    cluster_port: int | None = field(default=None, init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.bearer_token and self.basic_auth:
            raise ValueError("AlertmanagerProcess: give bearer_token or basic_auth, not both")
        self.workdir = Path(self.workdir)
        self.group_by = list(self.group_by)
        self.peers = tuple(self.peers)
        if self.cluster is None:
            self.cluster = bool(self.peers)
        self.config_file = self.workdir / "alertmanager.yml"
        self.storage_dir = self.workdir / "data"
        self.log_file = self.workdir / "alertmanager.log"
        self._session = requests.Session()

    def __repr__(self) -> str:
        return f"AlertmanagerProcess(url={self.url if self.port else None!r}, pid={self.pid})"

    @property
    def url(self) -> str:
        """Base URL of its HTTP API, e.g. ``http://127.0.0.1:40123``."""
        if self.port is None:
            raise RuntimeError("Alertmanager is not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def cluster_address(self) -> str | None:
        """``127.0.0.1:<port>`` it gossips on, for another instance's ``peers``; None when not clustered."""
        return f"127.0.0.1:{self.cluster_port}" if self.cluster_port else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    # -- configuration -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The alertmanager.yml it runs with (secrets by file reference only)."""
        http_config: dict[str, Any] = {}
        if self.bearer_token:
            token_file = self.workdir / "webhook-token"
            _write_private(token_file, self.bearer_token)
            http_config["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
        elif self.basic_auth:
            username, password = self.basic_auth
            password_file = self.workdir / "webhook-password"
            _write_private(password_file, password)
            http_config["basic_auth"] = {"username": username, "password_file": str(password_file)}
        webhook: dict[str, Any] = {
            "url": self.webhook_url,
            "send_resolved": self.send_resolved,
            "max_alerts": 0,
        }
        if http_config:
            webhook["http_config"] = http_config
        return {
            "global": {"resolve_timeout": self.resolve_timeout},
            "route": {
                "receiver": "remediator",
                "group_by": self.group_by,
                "group_wait": self.group_wait,
                "group_interval": self.group_interval,
                "repeat_interval": self.repeat_interval,
            },
            "receivers": [{"name": "remediator", "webhook_configs": [webhook]}],
        }

    def _argv(self, binary: str) -> list[str]:
        argv = [
            binary,
            f"--config.file={self.config_file}",
            f"--storage.path={self.storage_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=debug",
        ]
        if self.cluster:
            address = f"127.0.0.1:{self.cluster_port}"
            argv += [
                f"--cluster.listen-address={address}",
                f"--cluster.advertise-address={address}",
                f"--cluster.peer-timeout={self.peer_timeout}",
                f"--cluster.settle-timeout={self.settle_timeout}",
                f"--cluster.gossip-interval={self.gossip_interval}",
                f"--cluster.pushpull-interval={self.pushpull_interval}",
            ]
            argv += [f"--cluster.peer={peer}" for peer in self.peers]
        else:
            argv.append("--cluster.listen-address=")
        return argv

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> AlertmanagerProcess:
        """Write the config, start the process and wait until ``/-/ready`` answers 200."""
        if self.process is not None:
            raise RuntimeError("Alertmanager is already started")
        binary = self.binary or find_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self.config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False), encoding="utf-8")
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            self.cluster_port = free_port(udp=True) if self.cluster else None  # gossip: TCP and UDP
            if self._launch(binary):
                log.info("alertmanager ready at %s (pid %d)", self.url, self.pid)
                return self
            log.warning("alertmanager exited while starting (attempt %d of %d)", attempt, START_ATTEMPTS)
        raise RuntimeError(f"alertmanager would not start; its log:\n{self.log_tail()}")

    def _launch(self, binary: str) -> bool:
        """Start once; True when ready, False when the process exited (e.g. its port was taken)."""
        with open(self.log_file, "ab") as log_out:
            self.process = subprocess.Popen(
                self._argv(binary), stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return False
            with contextlib.suppress(requests.RequestException):
                if self._session.get(self.url + "/-/ready", timeout=1.0).status_code == 200:
                    return True
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"alertmanager not ready within {self.startup_timeout:g} s; its log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; waits so that no process is left behind."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._session.close()

    def __enter__(self) -> AlertmanagerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log, for failure messages."""
        try:
            return "\n".join(
                self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return "(no log)"

    # -- its API -------------------------------------------------------------------------------

    def post_alerts(self, alerts: Iterable[dict[str, Any]]) -> None:
        """``POST /api/v2/alerts``; raises requests.HTTPError when Alertmanager refuses them."""
        response = self._session.post(self.url + "/api/v2/alerts", json=list(alerts), timeout=HTTP_TIMEOUT)
        response.raise_for_status()

    def alerts(self, **filters: Any) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts`` (filters as its query parameters, e.g. ``active=False``)."""
        params = {k: str(v).lower() if isinstance(v, bool) else v for k, v in filters.items()}
        response = self._session.get(self.url + "/api/v2/alerts", params=params, timeout=HTTP_TIMEOUT)
        response.raise_for_status()
        return response.json()


def _write_private(path: Path, secret: str) -> None:
    """Write a secret readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret)
