"""Runbook Diagnosis 1-4 as typed facts, each saying where it came from and when."""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from remediator import keys
from remediator.clients import Session
from remediator.clients.coordinator import HostRecord
from remediator.clients.providers import CloudState, instance_state
from remediator.clients.ssh import CommandResult, quote_template
from remediator.exceptions import CoordinatorError, SSHError
from workers.context import Context

LOG_TAIL_LINES = 50
COORDINATOR_LOG_TAIL_BYTES = 8 << 20  # bytes at the end of the coordinator log searched for a host
INVENTORY_SOURCE = (Path(__file__).parent / "host_inventory.py").read_text(encoding="utf-8")
# The host's python3 running INVENTORY_SOURCE from stdin: isolated (-I: no PYTHON* variables, no user
# site-packages; nothing of the host's environment changes what the inventory reports) and without
# site (-S: it needs the standard library only; a host's site-packages cost 20-30 ms per start).
REMOTE_PYTHON = "python3 -I -S -"
INVENTORY_TTL = 30 * 86400  # seconds
AGENT_UNIT = "ringrift-sync-agent"  # the runbook's systemd unit of the sync agent
# Runbook Prevention 4: is the agent under a supervisor that restarts it? systemd's Restart= when the
# host has systemctl; "no systemctl" otherwise (a container: no systemd to supervise anything).
RESTART_POLICY_COMMAND = (
    "if command -v systemctl >/dev/null 2>&1; then "
    f"systemctl show -p Restart {AGENT_UNIT}; else echo 'no systemctl'; fi"
)
SYSTEMD_RESTART = ("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always")
RESTARTS_A_DEAD_AGENT = frozenset({"always", "on-failure", "on-abnormal", "on-abort"})


@dataclass
class Diagnosis:
    host_id: str
    at: float
    coordinator_state: str = "unknown"
    last_sync: float | None = None
    host_retired: bool = False
    known_to_coordinator: bool = True
    ssh_reachable: bool = False
    ssh_error: str | None = None
    agent_running: bool | None = None
    # systemd's Restart= of the agent's unit; "none" without systemd, "unknown" when it could not be read
    agent_restart_policy: str = "unknown"
    inventory: dict[str, Any] | None = None
    inventory_at: float | None = None
    cloud_state: str = "not_asked"
    cloud_detail: str | None = None
    host_log_tail: list[str] = field(default_factory=list)
    coordinator_log_tail: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    record: dict[str, Any] | None = None

    @property
    def disk_full(self) -> bool:
        return any("No space left on device" in line for line in self.host_log_tail)

    def facts(self) -> dict[str, Any]:
        """The per-host facts of the rules vocabulary (docs/rules.md)."""
        inv = self.inventory or {}
        facts: dict[str, Any] = {
            "host_id": self.host_id,
            "coordinator_state": self.coordinator_state,
            "host_retired": self.host_retired,
            "ssh_reachable": self.ssh_reachable,
            "cloud_state": self.cloud_state,
            "disk_full": self.disk_full,
            "data_recoverable": not (self.cloud_state == "terminated" and not self.ssh_reachable),
        }
        if self.agent_running is not None:
            facts["agent_running"] = self.agent_running
        if self.agent_restart_policy != "unknown":
            facts["agent_auto_restart"] = self.agent_restart_policy in RESTARTS_A_DEAD_AGENT
        if self.inventory is not None:
            facts["unsynced_games"] = int(inv.get("unsynced_games", 0))
            facts["unsynced_bytes"] = int(inv.get("unsynced_bytes", 0))
            if "unparseable_file_count" in inv:  # absent from an inventory cached by an older version
                facts["unparseable_files"] = int(inv["unparseable_file_count"])
        if self.last_sync is not None and self.coordinator_state == "critical":
            facts["minutes_critical"] = round(max(0.0, (self.at - self.last_sync) / 60), 2)
        return facts

    def summary(self) -> dict[str, Any]:
        """What the audit shows of a diagnosis: facts and evidence, without file lists."""
        out = asdict(self)
        inv = out.pop("inventory") or {}
        out["inventory"] = {k: v for k, v in inv.items() if k != "files"} if inv else None
        out["host_log_tail"] = self.host_log_tail[-5:]
        out["coordinator_log_tail"] = self.coordinator_log_tail[-5:]
        out.pop("record", None)
        return out


def answered(echo: CommandResult) -> bool:
    """Whether ``echo OK`` got through: exit 0 and ``OK`` as its last line. A login banner printed before
    it (a motd, a shell rc file) does not make a host unreachable. Diagnosis and wait_reachable decide
    reachability with this one test: were they to disagree, a ladder would re-diagnose without end."""
    lines = echo.stdout.strip().splitlines()
    return echo.ok and bool(lines) and lines[-1].strip() == "OK"


def diagnose(ctx: Context, host_id: str, since: float | None = None) -> Diagnosis:
    """``since``: the ladder's start. The coordinator's listing is shared by every worker for a moment
    (``remediator.listings.SharedHosts``): none fetched before the ladder began will do, so that a host
    is never diagnosed from a state older than the alert that sent the ladder."""
    diag = Diagnosis(host_id=host_id, at=time.time())
    try:
        record = ctx.coordinator.host(host_id, since=since)
    except CoordinatorError as exc:
        diag.sources["coordinator"] = f"error: {exc}"
        record = None
    else:
        diag.sources["coordinator"] = f"GET /sync/hosts at {time.time():.0f}"
        if record is None:
            diag.known_to_coordinator = False
    if record is not None:
        diag.record = asdict(record)
        # A retired host is not syncing: for the ladder it is critical, with host_retired set.
        diag.coordinator_state = "critical" if record.state == "retired" else record.state
        diag.last_sync = record.last_sync
        diag.host_retired = record.retired or record.state == "retired"
        # SSH first: the first command reaches the host without waiting on the cloud provider's API.
        _on_host(ctx, diag, record)
        _cloud(ctx, diag, record)
    diag.coordinator_log_tail = _coordinator_log(ctx, host_id)
    if diag.inventory is not None:
        ctx.conn.set(
            keys.INVENTORY.format(host_id),
            json.dumps({"at": diag.at, **{k: v for k, v in diag.inventory.items() if k != "files"}}),
            ex=INVENTORY_TTL,
        )
    return diag


def _cloud(ctx: Context, diag: Diagnosis, record: HostRecord) -> None:
    if not record.provider or not record.instance_id:
        diag.sources["cloud"] = "no provider/instance_id in the host record"
        return

    # A host that answered over SSH is there whatever a listing a few seconds old says; for one that did
    # not, the cloud state decides between waiting and documenting a loss: only a listing fetched after
    # this diagnosis began will do (remediator.listings.SharedListing).
    since = None if diag.ssh_reachable else diag.at
    found = instance_state(ctx.clients.providers(), record.provider, record.instance_id, since)
    diag.cloud_state = str(found.state.value)
    diag.cloud_detail = found.reason
    diag.sources["cloud"] = f"{record.provider} API at {time.time():.0f}"
    if found.state is CloudState.UNKNOWN:
        # Why the state is unknown (the provider's answer was unusable, say) travels with the source,
        # so the audit, wait_reachable and the page all say it rather than a bare "unknown".
        diag.sources["cloud"] += f": {found.reason}"


def _on_host(ctx: Context, diag: Diagnosis, record: HostRecord) -> None:
    """SSH reachability, the data dir inventory, the agent process and the host's sync log.

    Reachability is decided by connecting and ``echo OK`` alone: a later command that fails or times
    out (a slow inventory of a large data dir) is recorded against its own source, and does not turn a
    host that answered into an unreachable one (which would send the ladder to wait_reachable)."""
    try:
        with ctx.clients.ssh(record) as session:
            echo = session.run("echo OK", timeout=ctx.settings.ssh_connect_timeout)
            diag.ssh_reachable = answered(echo)
            diag.sources["ssh"] = f"ssh {record.ssh_user}@{record.address}:{record.ssh_port} echo OK"
            _inspect(ctx, diag, record, session)
    except SSHError as exc:
        if diag.ssh_reachable:  # the host answered; the session broke afterwards
            diag.sources["ssh"] += f"; then: {exc}"
        else:
            diag.ssh_error = str(exc)
            diag.sources["ssh"] = f"failed: {exc}"
    if diag.inventory is None:
        last = ctx.conn.get(keys.INVENTORY.format(diag.host_id))
        if last:
            known = json.loads(last)
            why = "host unreachable now" if not diag.ssh_reachable else diag.sources.get("inventory", "")
            diag.inventory = known
            diag.inventory_at = known.get("at")
            diag.sources["inventory"] = f"last known, from {known.get('at', 0):.0f} ({why})"


def _inspect(ctx: Context, diag: Diagnosis, record: HostRecord, session: Session) -> None:
    """The commands after ``echo OK``, each recorded on its own: one failing leaves the others' facts."""
    # No checksums: diagnosis needs counts and sizes; reading every byte is recover_data's job.
    command = quote_template(
        REMOTE_PYTHON + " {data_dir} {last_sync} no-checksums",
        data_dir=record.data_dir,
        last_sync=repr(float(record.last_sync or 0.0)),
    )
    try:
        inv = session.run(command, stdin=INVENTORY_SOURCE)
        if not inv.ok:
            diag.sources["inventory"] = f"failed: exit {inv.exit_status}: {inv.stderr[-200:]}"
        else:
            diag.inventory = json.loads(inv.stdout)
            diag.inventory_at = time.time()
            diag.sources["inventory"] = f"{record.data_dir} on host at {diag.inventory_at:.0f}"
    except SSHError as exc:
        diag.sources["inventory"] = f"failed: {exc}"
    except ValueError:  # something on the host printed more than the inventory (a login banner, ...)
        diag.sources["inventory"] = "failed: the inventory's output is not JSON"
    try:
        agent = session.run(ctx.settings.agent_check_command, timeout=30)
        diag.agent_running = agent.ok
        diag.sources["agent"] = f"{ctx.settings.agent_check_command} -> exit {agent.exit_status}"
    except SSHError as exc:
        diag.sources["agent"] = f"failed: {exc}"  # agent_running stays unknown
    try:
        supervisor = session.run(RESTART_POLICY_COMMAND, timeout=30)
        diag.agent_restart_policy = restart_policy(supervisor.exit_status, supervisor.stdout)
        diag.sources["supervisor"] = f"systemctl show -p Restart {AGENT_UNIT} -> {diag.agent_restart_policy}"
    except SSHError as exc:
        diag.sources["supervisor"] = f"failed: {exc}"  # agent_restart_policy stays unknown
    log_path = record.sync_log or ctx.settings.host_sync_log
    try:
        tail = session.run(f"tail -n {LOG_TAIL_LINES} {shlex.quote(log_path)}", timeout=30)
        diag.host_log_tail = tail.stdout.splitlines()[-LOG_TAIL_LINES:] if tail.ok else []
    except SSHError as exc:
        diag.sources["host_log"] = f"failed: {exc}"


def restart_policy(exit_status: int | None, stdout: str) -> str:
    """The agent unit's Restart= from RESTART_POLICY_COMMAND's answer, in systemd's own words; "none"
    when the host has no systemd (no systemctl, or systemctl without a running systemd); "unknown"."""
    lines = stdout.strip().splitlines()
    if lines == ["no systemctl"]:
        return "none"
    if exit_status != 0:
        return "none" if exit_status == 1 else "unknown"  # "System has not been booted with systemd"
    for line in lines:
        name, _, value = line.strip().partition("=")
        if name == "Restart" and value in SYSTEMD_RESTART:
            return value
    return "unknown"


def _coordinator_log(ctx: Context, host_id: str) -> list[str]:
    path = ctx.settings.coordinator_log
    if not path:
        return []
    # Whole-word match: "h1" must not pick up the lines of "h10".
    pattern = re.compile(rf"(?<![A-Za-z0-9._-]){re.escape(host_id)}(?![A-Za-z0-9._-])")
    try:
        with open(path, "rb") as fh:
            # The log's tail only: a whole coordinator log, scanned per host per diagnosis, grows
            # without bound. The first line read may be cut; it is dropped.
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - COORDINATOR_LOG_TAIL_BYTES))
            if size > COORDINATOR_LOG_TAIL_BYTES:
                fh.readline()
            # The host id's bytes first: a cheap test that passes over almost every line of a log
            # the whole fleet writes to, before a line is decoded and matched as a whole word.
            needle = host_id.encode()
            lines = (raw.decode("utf-8", "replace").rstrip("\n") for raw in fh if needle in raw)
            return list(deque((ln for ln in lines if pattern.search(ln)), maxlen=LOG_TAIL_LINES))
    except OSError:
        return []
