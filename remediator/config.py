"""Settings from the environment: the configuration contract of DESIGN.md.

Nothing here runs at import time; ``Settings.from_env()`` is called by the app factory, the worker
and the CLI. Every secret may also be given as ``<NAME>_FILE`` naming a file that holds it, which is
how Kubernetes Secrets are mounted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from remediator import defaults
from remediator.exceptions import ConfigError

# Every variable the application reads, with its meaning. The Helm chart test checks that the chart
# sets nothing outside this table, so the two cannot drift.
ENV_VARS: dict[str, str] = {
    "REDIS_URL": "Redis for queues, locks, state, audit",
    "REDIS_SENTINELS": "Sentinels (host:port,...) that say where the Redis master is",
    "REDIS_SENTINEL_MASTER": "the master's name at the sentinels",
    "REDIS_SENTINEL_PASSWORD": "password of the sentinels (the master's is in REDIS_URL)",
    "REMEDIATOR_WEBHOOK_TOKEN": "bearer token (or basic-auth password) Alertmanager must send",
    "REMEDIATOR_ADMIN_TOKEN": "bearer token for the /api/v1 write endpoints",
    "REMEDIATOR_READ_TOKEN": "bearer token for the full state and evidence on /api/v1 reads and /ui",
    "REMEDIATOR_ALLOWED_HOSTS": "Host names the receiver answers for, comma-separated (unset: any)",
    "REMEDIATOR_COORDINATOR_URL": "base URL of the RingRift coordinator API",
    "REMEDIATOR_COORDINATOR_ADMIN_KEY": "sent as X-Admin-Key on coordinator admin calls",
    "REMEDIATOR_COORDINATOR_TIMEOUT": "seconds for one coordinator HTTP call",
    "REMEDIATOR_COORDINATOR_LOG": "local coordinator sync log searched for a host's lines",
    "REMEDIATOR_SSH_KEY_FILE": "private key for SSH to hosts",
    "REMEDIATOR_SSH_KNOWN_HOSTS": "known_hosts file; host keys are always checked",
    "REMEDIATOR_SSH_CONNECT_TIMEOUT": "seconds to connect over SSH",
    "REMEDIATOR_SSH_COMMAND_TIMEOUT": "seconds a remote command may run",
    "REMEDIATOR_HOST_SYNC_LOG": "sync log path on a host (a host record's sync_log wins)",
    "REMEDIATOR_AGENT_CHECK_COMMAND": "run on the host; exit 0 when the sync agent runs",
    "REMEDIATOR_AGENT_RESTART_COMMAND": "run on the host to restart the sync agent",
    "REMEDIATOR_AGENT_FALLBACK_COMMAND": "run on the host when the restart command fails",
    "REMEDIATOR_IMPORT_COMMAND": "run by the worker after rsync, {data_dir} and {host_id} substituted",
    "REMEDIATOR_RECOVERY_DIR": "where recovered data goes, one folder per host",
    "REMEDIATOR_RULES_FILE": "the rules file",
    "REMEDIATOR_DRY_RUN": "true: diagnose and plan, mutate nothing",
    "REMEDIATOR_VAST_URL": "Vast.ai API base URL",
    "REMEDIATOR_VAST_API_KEY": "Vast.ai API key",
    "REMEDIATOR_LAMBDA_URL": "Lambda Cloud API base URL",
    "REMEDIATOR_LAMBDA_API_KEY": "Lambda Cloud API key",
    "REMEDIATOR_PAGERDUTY_ROUTING_KEY": "PagerDuty Events v2 routing key",
    "REMEDIATOR_PAGERDUTY_URL": "PagerDuty Events v2 enqueue endpoint",
    "REMEDIATOR_PAGE_WEBHOOK_URL": "generic JSON webhook for pages (Slack-compatible)",
    "REMEDIATOR_ALERTMANAGER_URL": "Alertmanager where escalation alerts are posted back",
    "REMEDIATOR_LEDGER_FILE": "local JSONL data-loss ledger",
    "REMEDIATOR_MAX_BODY_BYTES": "largest webhook body accepted, in bytes",
    "REMEDIATOR_QUEUE": "name of the RQ queue the ladder runs on",
    "REMEDIATOR_LOG_LEVEL": "log level of receiver and workers",
    "REMEDIATOR_LOCK_TTL": "seconds a host lock lives without renewal",
    "REMEDIATOR_NETWORK_PROBES": "extra host:port endpoints probed for the cluster network check",
    "REMEDIATOR_VAST_STATUS_URL": "Vast.ai status page URL for the provider check",
    "REMEDIATOR_LAMBDA_STATUS_URL": "Lambda status page URL for the provider check",
    "REMEDIATOR_MAX_SSH_SESSIONS": "SSH sessions open at once, fleet-wide (all workers)",
    "REMEDIATOR_COORDINATOR_CALLS_PER_SECOND": "coordinator HTTP calls in any one second, fleet-wide",
    "REMEDIATOR_PROVIDER_LISTING_SECONDS": "seconds one provider listing is shared by every worker",
    "REMEDIATOR_COORDINATOR_LISTING_SECONDS": "seconds one coordinator host listing serves every worker",
    "REMEDIATOR_LIMIT_WAIT_SECONDS": "seconds a call waits for its slot under a fleet-wide limit",
}

# Variables that may instead be given as <NAME>_FILE.
SECRET_VARS: frozenset[str] = frozenset(
    {
        "REDIS_SENTINEL_PASSWORD",
        "REMEDIATOR_WEBHOOK_TOKEN",
        "REMEDIATOR_ADMIN_TOKEN",
        "REMEDIATOR_READ_TOKEN",
        "REMEDIATOR_COORDINATOR_ADMIN_KEY",
        "REMEDIATOR_VAST_API_KEY",
        "REMEDIATOR_LAMBDA_API_KEY",
        "REMEDIATOR_PAGERDUTY_ROUTING_KEY",
        "REMEDIATOR_PAGE_WEBHOOK_URL",  # a Slack-style webhook URL is itself the credential
    }
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret from NAME, or from the file NAME_FILE names (trailing newline stripped)."""
    value = env.get(name)
    path = env.get(f"{name}_FILE")
    if value and path:
        raise ConfigError(f"{name} and {name}_FILE are both set; set only one")
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from exc
    return value or None


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?|\[[0-9a-f:.]+\]")


def _allowed_hosts(env: Mapping[str, str]) -> tuple[str, ...]:
    """REMEDIATOR_ALLOWED_HOSTS as lowercased host names (no ports); () when unset: any Host."""
    raw = env.get("REMEDIATOR_ALLOWED_HOSTS", "")
    names = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        name = entry.lower().rstrip(".")
        if not _HOST_NAME.fullmatch(name):
            raise ConfigError(
                f"REMEDIATOR_ALLOWED_HOSTS entry {entry!r} is not a host name: list names or addresses "
                "without a port or scheme (any port is accepted), e.g. remediator.ops.svc,localhost,[::1]"
            )
        names.append(name)
    return tuple(dict.fromkeys(names))


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use true or false")


def _number(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be greater than 0")
    return value


# The tokens of the receiver's doors: each opens its own. One value for two of them would let the holder
# of the weaker (Alertmanager's webhook token, in its config) through the stronger.
_TOKENS = (
    ("webhook_token", "REMEDIATOR_WEBHOOK_TOKEN"),
    ("admin_token", "REMEDIATOR_ADMIN_TOKEN"),
    ("read_token", "REMEDIATOR_READ_TOKEN"),
)


def _refuse_shared_tokens(settings: Settings) -> None:
    """Raise ConfigError (naming the variables, never the value) when two tokens are the same."""
    seen: dict[str, str] = {}
    for attr, name in _TOKENS:
        value = getattr(settings, attr)
        if not value:
            continue
        if value in seen:
            raise ConfigError(
                f"{seen[value]} and {name} are the same token; each door needs its own "
                "(e.g. openssl rand -hex 32 for each), or the holder of one could use the other"
            )
        seen[value] = name


SENTINEL_PORT = 26379  # a sentinel's port when REDIS_SENTINELS gives none


def _sentinels(env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """REDIS_SENTINELS as (host, port) pairs: ``host:port,host:port``; ``[v6]:port`` for IPv6."""
    raw = env.get("REDIS_SENTINELS", "")
    found = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\s\[\]]+)(?::(\d+))?", item)
        if not match:
            raise ConfigError(f"REDIS_SENTINELS: {item!r} is not host:port (IPv6: [address]:port)")
        host = match.group(1) or match.group(3)
        port = int(match.group(2) or match.group(4) or SENTINEL_PORT)
        if not 0 < port < 65536:
            raise ConfigError(f"REDIS_SENTINELS: {item!r} has no valid port")
        found.append((host, port))
    return tuple(found)


@dataclass(frozen=True)
class Settings:
    """Everything the remediator is configured with. Secrets are marked ``repr=False``."""

    redis_url: str | None = None
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str | None = None
    redis_sentinel_password: str | None = field(default=None, repr=False)
    webhook_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    read_token: str | None = field(default=None, repr=False)
    coordinator_url: str = defaults.COORDINATOR_URL
    coordinator_admin_key: str | None = field(default=None, repr=False)
    coordinator_timeout: float = defaults.COORDINATOR_TIMEOUT
    coordinator_log: str | None = None
    ssh_key_file: str | None = None
    ssh_known_hosts: str | None = None
    ssh_connect_timeout: float = defaults.SSH_CONNECT_TIMEOUT
    ssh_command_timeout: float = defaults.SSH_COMMAND_TIMEOUT
    host_sync_log: str = defaults.HOST_SYNC_LOG
    agent_check_command: str = defaults.AGENT_CHECK_COMMAND
    agent_restart_command: str = defaults.AGENT_RESTART_COMMAND
    agent_fallback_command: str = defaults.AGENT_FALLBACK_COMMAND
    import_command: str = defaults.IMPORT_COMMAND
    recovery_dir: str = defaults.RECOVERY_DIR
    rules_file: str | None = None
    dry_run: bool = False
    vast_url: str | None = None
    vast_api_key: str | None = field(default=None, repr=False)
    lambda_url: str | None = None
    lambda_api_key: str | None = field(default=None, repr=False)
    pagerduty_routing_key: str | None = field(default=None, repr=False)
    pagerduty_url: str = defaults.PAGERDUTY_URL
    page_webhook_url: str | None = field(default=None, repr=False)  # the URL embeds its token
    alertmanager_url: str | None = None
    ledger_file: str | None = None
    max_body_bytes: int = defaults.MAX_BODY_BYTES
    queue: str = defaults.QUEUE
    log_level: str = "INFO"
    lock_ttl: float = defaults.LOCK_TTL
    network_probes: tuple[str, ...] = ()
    vast_status_url: str | None = None
    lambda_status_url: str | None = None
    allowed_hosts: tuple[str, ...] = ()
    max_ssh_sessions: int = defaults.MAX_SSH_SESSIONS
    coordinator_calls_per_second: int = defaults.COORDINATOR_CALLS_PER_SECOND
    provider_listing_seconds: float = defaults.PROVIDER_LISTING_SECONDS
    coordinator_listing_seconds: float = defaults.COORDINATOR_LISTING_SECONDS
    limit_wait_seconds: float = defaults.LIMIT_WAIT_SECONDS

    def __post_init__(self) -> None:
        _refuse_shared_tokens(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the contract's variables; raise ConfigError naming the variable at fault."""
        env = os.environ if env is None else env
        recovery_dir = env.get("REMEDIATOR_RECOVERY_DIR") or defaults.RECOVERY_DIR
        probes = tuple(p.strip() for p in env.get("REMEDIATOR_NETWORK_PROBES", "").split(",") if p.strip())
        sentinels = _sentinels(env)
        sentinel_master = env.get("REDIS_SENTINEL_MASTER") or None
        if sentinels and not sentinel_master:
            raise ConfigError("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not: name the master")
        if sentinel_master and not sentinels:
            raise ConfigError("REDIS_SENTINEL_MASTER is set but REDIS_SENTINELS is not: list the sentinels")
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            redis_sentinels=sentinels,
            redis_sentinel_master=sentinel_master,
            redis_sentinel_password=_secret(env, "REDIS_SENTINEL_PASSWORD"),
            webhook_token=_secret(env, "REMEDIATOR_WEBHOOK_TOKEN"),
            admin_token=_secret(env, "REMEDIATOR_ADMIN_TOKEN"),
            read_token=_secret(env, "REMEDIATOR_READ_TOKEN"),
            coordinator_url=(env.get("REMEDIATOR_COORDINATOR_URL") or defaults.COORDINATOR_URL).rstrip("/"),
            coordinator_admin_key=_secret(env, "REMEDIATOR_COORDINATOR_ADMIN_KEY"),
            coordinator_timeout=_number(env, "REMEDIATOR_COORDINATOR_TIMEOUT", defaults.COORDINATOR_TIMEOUT),
            coordinator_log=env.get("REMEDIATOR_COORDINATOR_LOG") or None,
            ssh_key_file=env.get("REMEDIATOR_SSH_KEY_FILE") or None,
            ssh_known_hosts=env.get("REMEDIATOR_SSH_KNOWN_HOSTS") or None,
            ssh_connect_timeout=_number(env, "REMEDIATOR_SSH_CONNECT_TIMEOUT", defaults.SSH_CONNECT_TIMEOUT),
            ssh_command_timeout=_number(env, "REMEDIATOR_SSH_COMMAND_TIMEOUT", defaults.SSH_COMMAND_TIMEOUT),
            host_sync_log=env.get("REMEDIATOR_HOST_SYNC_LOG") or defaults.HOST_SYNC_LOG,
            agent_check_command=env.get("REMEDIATOR_AGENT_CHECK_COMMAND") or defaults.AGENT_CHECK_COMMAND,
            agent_restart_command=env.get("REMEDIATOR_AGENT_RESTART_COMMAND")
            or defaults.AGENT_RESTART_COMMAND,
            agent_fallback_command=env.get("REMEDIATOR_AGENT_FALLBACK_COMMAND")
            or defaults.AGENT_FALLBACK_COMMAND,
            import_command=env.get("REMEDIATOR_IMPORT_COMMAND") or defaults.IMPORT_COMMAND,
            recovery_dir=recovery_dir,
            rules_file=env.get("REMEDIATOR_RULES_FILE") or None,
            dry_run=_bool(env, "REMEDIATOR_DRY_RUN", False),
            vast_url=env.get("REMEDIATOR_VAST_URL") or None,
            vast_api_key=_secret(env, "REMEDIATOR_VAST_API_KEY"),
            lambda_url=env.get("REMEDIATOR_LAMBDA_URL") or None,
            lambda_api_key=_secret(env, "REMEDIATOR_LAMBDA_API_KEY"),
            pagerduty_routing_key=_secret(env, "REMEDIATOR_PAGERDUTY_ROUTING_KEY"),
            pagerduty_url=env.get("REMEDIATOR_PAGERDUTY_URL") or defaults.PAGERDUTY_URL,
            page_webhook_url=_secret(env, "REMEDIATOR_PAGE_WEBHOOK_URL"),
            alertmanager_url=(env.get("REMEDIATOR_ALERTMANAGER_URL") or "").rstrip("/") or None,
            ledger_file=env.get("REMEDIATOR_LEDGER_FILE") or str(Path(recovery_dir) / "data-loss.jsonl"),
            max_body_bytes=int(
                _number(env, "REMEDIATOR_MAX_BODY_BYTES", defaults.MAX_BODY_BYTES, integer=True)
            ),
            queue=env.get("REMEDIATOR_QUEUE") or defaults.QUEUE,
            log_level=(env.get("REMEDIATOR_LOG_LEVEL") or "INFO").upper(),
            lock_ttl=_number(env, "REMEDIATOR_LOCK_TTL", defaults.LOCK_TTL),
            network_probes=probes,
            vast_status_url=env.get("REMEDIATOR_VAST_STATUS_URL") or None,
            lambda_status_url=env.get("REMEDIATOR_LAMBDA_STATUS_URL") or None,
            allowed_hosts=_allowed_hosts(env),
            max_ssh_sessions=int(
                _number(env, "REMEDIATOR_MAX_SSH_SESSIONS", defaults.MAX_SSH_SESSIONS, integer=True)
            ),
            coordinator_calls_per_second=int(
                _number(
                    env,
                    "REMEDIATOR_COORDINATOR_CALLS_PER_SECOND",
                    defaults.COORDINATOR_CALLS_PER_SECOND,
                    integer=True,
                )
            ),
            provider_listing_seconds=_number(
                env, "REMEDIATOR_PROVIDER_LISTING_SECONDS", defaults.PROVIDER_LISTING_SECONDS
            ),
            coordinator_listing_seconds=_number(
                env, "REMEDIATOR_COORDINATOR_LISTING_SECONDS", defaults.COORDINATOR_LISTING_SECONDS
            ),
            limit_wait_seconds=_number(env, "REMEDIATOR_LIMIT_WAIT_SECONDS", defaults.LIMIT_WAIT_SECONDS),
        )

    @property
    def redis_configured(self) -> bool:
        """Whether a Redis is configured: REDIS_URL, or Sentinel (which may do without REDIS_URL)."""
        return bool(self.redis_url or self.redis_sentinels)

    def secrets(self) -> list[str]:
        """The secret values set, so that logs and answers can be scrubbed of them."""
        return [getattr(self, f.name) for f in fields(self) if not f.repr and getattr(self, f.name)]
