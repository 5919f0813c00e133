"""What a job needs, built from the environment and the current RQ job: nothing global."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import redis
from rq import Queue, get_current_job

from remediator.clients import Clients, clients_for
from remediator.clients.coordinator import Coordinator
from remediator.config import Settings
from remediator.connections import redis_from_settings

if TYPE_CHECKING:
    from remediator.rules import RuleSet, RulesWatcher

_rules_sources: dict[str | None, RulesWatcher] = {}


def rules_for(settings: Settings) -> RuleSet:
    """The current rules (reloaded when the file changes), cached per process."""
    source = _rules_sources.get(settings.rules_file)
    if source is None:
        from remediator.extensions import rules_source

        source = _rules_sources[settings.rules_file] = rules_source(settings)
    return source.current()


@dataclass
class Context:
    settings: Settings
    conn: redis.Redis
    job_id: str | None = None

    @classmethod
    def current(cls) -> Context:
        """The running job's context: its connection is the worker's, built by
        ``remediator.connections`` (so Sentinel-backed under Sentinel), or a new one outside a job."""
        job = get_current_job()
        settings = Settings.from_env()
        if job is not None:
            return cls(settings, job.connection, job.id)
        conn = redis_from_settings(settings)
        if conn is None:
            raise RuntimeError("no current RQ job and neither REDIS_URL nor REDIS_SENTINELS is set")
        return cls(settings, conn)

    @cached_property
    def clients(self) -> Clients:
        """The outside world (coordinator, hosts, providers, pagers...): ``remediator.clients``."""
        return clients_for(self.settings)

    @property
    def coordinator(self) -> Coordinator:
        return self.clients.coordinator

    @cached_property
    def queue(self) -> Queue:
        return Queue(self.settings.queue, connection=self.conn)

    @property
    def rules(self) -> RuleSet:
        return rules_for(self.settings)

    @property
    def dry_run(self) -> bool:
        return self.settings.dry_run
