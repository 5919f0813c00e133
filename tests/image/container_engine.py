"""The container engine that builds and runs the image, and how the Helm chart runs it.

podman (Debian's, what ``make system`` installs) unless ``CONTAINER_ENGINE`` names another; docker
only where its daemon answers. Standard library only: ``make image`` runs this with the system python3.

podman is set up through a ``containers.conf`` of our own, named by ``CONTAINERS_CONF`` (one already
set is respected), so nothing under /etc changes:
- ``runtime = "runc"``: crun refuses hosts with hybrid cgroups (v1 controllers + a v2 mount);
- ``default_ulimits`` no higher than this process's hard limits: podman otherwise asks for 1048576
  open files and processes, which root cannot raise to without CAP_SYS_RESOURCE (and ``--ulimit`` on a
  command line replaces the whole default list, so it is never used here).
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
STATE_DIR = ROOT / "build" / "image"  # engine config and build scratch; gitignored, not in the context
IMAGE_NAME = "ringrift-remediator"
UID = 10001  # the image's user and the chart's runAsUser/runAsGroup/fsGroup
DOCKER_PROBE_TIMEOUT = 10  # seconds for `docker info` to show a daemon answers
NOFILE_CAP = 65536  # open files per container process; far above what gunicorn or a worker opens
NPROC_CAP = 4096  # processes of the container's uid; podman's own limit here can sit below the shell's


class EngineError(RuntimeError):
    """No usable container engine; the message says what to install or start."""


def package_version() -> str:
    """The package version, the image tag (as the chart's appVersion is).

    Read from ``remediator/__init__.py`` as text, not imported: ``make image`` runs under the system
    python, which need not have the project's dependencies (setup.cfg only says ``attr:``).
    """
    text = (ROOT / "remediator" / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    if found is None:
        raise EngineError("remediator/__init__.py does not set __version__")
    return found.group(1)


def image_ref() -> str:
    return f"{IMAGE_NAME}:{package_version()}"


IMAGE_ID_FILE = STATE_DIR / "image-id"  # the id `make image` built here; tests run exactly that image


def built_image_id() -> str | None:
    """The id of the image this checkout's last `make image` built (the tag may be shared with other
    checkouts on the machine, the id is not)."""
    return IMAGE_ID_FILE.read_text().strip() if IMAGE_ID_FILE.is_file() else None


@dataclass(frozen=True)
class Engine:
    name: str  # "podman" or "docker"
    env: dict[str, str] = field(repr=False)  # the environment its commands run in

    def run(
        self, *args: str, check: bool = True, timeout: float | None = None, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``<engine> ARGS``; raises CalledProcessError with the engine's own words when ``check``."""
        return subprocess.run(
            [self.name, *args], env=self.env, check=check, timeout=timeout, capture_output=capture, text=True
        )

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "inspect", ref, check=False).returncode == 0

    def tmpfs(self, path: str) -> list[str]:
        """A writable tmpfs at ``path`` owned by the image's user, as the chart's emptyDirs are."""
        if self.name == "podman":
            return ["--tmpfs", f"{path}:rw,U"]  # U: chown to the container's user (podman has no uid=)
        return ["--tmpfs", f"{path}:rw,uid={UID},gid={UID}"]

    def as_the_chart_runs_it(self) -> list[str]:
        """``run`` options for the chart's pod and container security contexts and its emptyDirs."""
        return [
            "--user", f"{UID}:{UID}",
            "--read-only",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            *self.tmpfs("/tmp"),
            *self.tmpfs("/home/remediator"),
            *self.tmpfs("/run/remediator/metrics"),
        ]  # fmt: skip


def _limit(which: int, cap: int) -> int:
    hard = resource.getrlimit(which)[1]
    return cap if hard == resource.RLIM_INFINITY else min(hard, cap)


def podman_conf() -> Path:
    """Write this machine's containers.conf (see the module docstring) and return its path."""
    nofile, nproc = _limit(resource.RLIMIT_NOFILE, NOFILE_CAP), _limit(resource.RLIMIT_NPROC, NPROC_CAP)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = STATE_DIR / "containers.conf"
    path.write_text(
        "# Written by tests/image/container_engine.py for this machine; named by CONTAINERS_CONF.\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    return path


def _docker_answers() -> bool:
    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, timeout=DOCKER_PROBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def detect() -> Engine:
    """The engine to use: $CONTAINER_ENGINE, else podman when installed, else a docker that answers."""
    env = dict(os.environ)
    wanted = env.get("CONTAINER_ENGINE")
    if wanted not in (None, "", "podman", "docker"):
        raise EngineError(f"CONTAINER_ENGINE={wanted!r}: use podman or docker")
    if wanted != "docker" and shutil.which("podman"):
        env.setdefault("CONTAINERS_CONF", str(podman_conf()))
        return Engine("podman", env)
    if wanted != "podman" and shutil.which("docker") and _docker_answers():
        return Engine("docker", env)
    raise EngineError(
        "no container engine: install podman (`make system` does: apt-get install podman runc "
        "mmdebstrap), or start a docker daemon and set CONTAINER_ENGINE=docker"
    )
