"""A real Redis Sentinel deployment on loopback for the tests: a master, a replica and three sentinels.

Every process is a ``redis-server`` (the sentinels run with ``--sentinel``), with its data, config and
log in its own folder. The master needs a password (``masterauth`` on both data nodes, since either
may be the master), and so do the sentinels (``requirepass`` + ``sentinel sentinel-pass``), so the
remediator's REDIS_URL credentials and REDIS_SENTINEL_PASSWORD are both exercised. Quorum 2 and short
timings make a failover take a few seconds.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from remediator.embedded_redis import free_port, redis_server_binary

MASTER_NAME = "remediator-ha"
QUORUM = 2
# A master silent this long is subjectively down to a sentinel. 1 s made a freshly promoted master on a
# loaded 2-core CI machine look down and the sentinels failed back; 2 s keeps the test about one failover.
DOWN_AFTER_MS = 2000
FAILOVER_TIMEOUT_MS = 4000  # sentinels retry a failed failover after twice this
STARTUP_TIMEOUT = 10.0  # seconds for a process to answer PING
FORMATION_TIMEOUT = 30.0  # seconds for the sentinels to find each other and the replica


@dataclass
class Node:
    """One redis-server process (data node or sentinel) on a fixed loopback port."""

    name: str
    workdir: Path
    port: int
    args: list[str]
    password: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Node:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.RedisError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = self.workdir / "redis.log"
                        raise RuntimeError(f"{self.name} did not start; see {log}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)

    def kill(self) -> None:
        """SIGKILL, as a node failure: nothing is flushed or handed over."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class SentinelCluster:
    """Master + replica + three sentinels; a context manager."""

    def __init__(self, workdir: Path, password: str, sentinel_password: str) -> None:
        self.workdir = Path(workdir)
        self.password = password
        self.sentinel_password = sentinel_password
        self.binary = redis_server_binary()
        master_port, replica_port = free_port(), free_port()
        self.data_nodes = [
            self._data_node("redis-a", master_port, replica_of=None),
            self._data_node("redis-b", replica_port, replica_of=master_port),
        ]
        self.sentinels = [self._sentinel(f"sentinel-{i}", free_port(), master_port) for i in range(3)]

    # -- layout ------------------------------------------------------------------------------------------
    def _data_node(self, name: str, port: int, replica_of: int | None) -> Node:
        workdir = self.workdir / name
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "no",
            "--requirepass", self.password,
            "--masterauth", self.password,
            "--logfile", str(workdir / "redis.log"),
        ]  # fmt: skip
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        return Node(name, workdir, port, args, self.password)

    def _sentinel(self, name: str, port: int, master_port: int) -> Node:
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "sentinel.conf"  # sentinels rewrite their config: one file each
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    f"dir {workdir}",
                    f"logfile {workdir / 'redis.log'}",
                    f"requirepass {self.sentinel_password}",
                    f"sentinel sentinel-pass {self.sentinel_password}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {QUORUM}",
                    f"sentinel auth-pass {MASTER_NAME} {self.password}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    "",
                ]
            )
        )
        return Node(name, workdir, port, [self.binary, str(config), "--sentinel"], self.sentinel_password)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> SentinelCluster:
        try:
            for node in self.data_nodes + self.sentinels:
                node.start()
            self.wait_formed()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.sentinels + self.data_nodes:
            node.stop()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the remediator is given --------------------------------------------------------------------
    @property
    def sentinels_env(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def env(self, db: int = 0) -> dict[str, str]:
        """The remediator's settings for this deployment (the master's host in REDIS_URL is unused)."""
        return {
            "REDIS_URL": f"redis://:{self.password}@{MASTER_NAME}/{db}",
            "REDIS_SENTINELS": self.sentinels_env,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
            "REDIS_SENTINEL_PASSWORD": self.sentinel_password,
        }

    # -- observing and breaking it -----------------------------------------------------------------------
    def master_addresses(self) -> set[tuple[str, int] | None]:
        """What each live sentinel currently names as the master."""
        found: set[tuple[str, int] | None] = set()
        for sentinel in self.sentinels:
            if not sentinel.alive:
                continue
            client = sentinel.client()
            try:
                addr = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                found.add((str(addr[0]), int(addr[1])) if addr else None)
            except redis.RedisError:
                found.add(None)
            finally:
                client.close()
        return found

    def master(self) -> Node:
        """The data node every sentinel names as the master (raises while they disagree)."""
        (address,) = self.master_addresses()
        assert address is not None, "no sentinel names a master"
        return next(n for n in self.data_nodes if n.port == address[1])

    def node_role(self, node: Node) -> str | None:
        client = node.client()
        try:
            return client.execute_command("ROLE")[0].decode()
        except redis.RedisError:
            return None
        finally:
            client.close()

    def wait_formed(self, timeout: float = FORMATION_TIMEOUT) -> None:
        """Every sentinel knows the master, its replica (linked) and the two other sentinels."""
        deadline = time.monotonic() + timeout
        while True:
            if self._formed():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sentinel deployment did not form in {timeout}s; see {self.workdir}")
            time.sleep(0.1)

    def _formed(self) -> bool:
        try:
            master = self.master()
        except (AssertionError, ValueError, StopIteration):
            return False
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                info = client.sentinel_master(MASTER_NAME)
                if int(info["num-other-sentinels"]) != len(self.sentinels) - 1:
                    return False
                if int(info["num-slaves"]) < 1:
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        replicas = [n for n in self.data_nodes if n is not master and n.alive]
        for replica in replicas:
            client = replica.client()
            try:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            except redis.RedisError:
                return False
            finally:
                client.close()
        return bool(replicas)

    def wait_failover(self, old: Node, timeout: float = 30.0) -> Node:
        """Wait until every sentinel names another data node as the master, and it is one; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            addresses = self.master_addresses()
            if len(addresses) == 1 and None not in addresses:
                (address,) = addresses
                if address[1] != old.port:
                    new = next(n for n in self.data_nodes if n.port == address[1])
                    if self.node_role(new) == "master":
                        return new
            time.sleep(0.05)
        raise AssertionError(f"no failover within {timeout}s; sentinels say {self.master_addresses()}")
