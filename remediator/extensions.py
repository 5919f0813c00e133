"""Clients attached to the app by ``init_app`` into ``app.extensions`` (the Flask way)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis
from flask import Flask, current_app

from remediator.config import Settings
from remediator.connections import redis_from_settings

if TYPE_CHECKING:
    from remediator.rules import RulesWatcher


def rules_source(settings: Settings) -> RulesWatcher:
    """A watcher on REMEDIATOR_RULES_FILE, or on the shipped rules when it is unset; reloads on change."""
    from remediator import metrics
    from remediator.rules import RulesWatcher

    return RulesWatcher(settings.rules_file, on_error=lambda _err: metrics.RULES_RELOAD_FAILURES.inc())


def init_app(app: Flask) -> None:
    settings: Settings = app.config["SETTINGS"]
    app.extensions["redis"] = redis_from_settings(settings)
    app.extensions["rules"] = rules_source(settings)


def get_settings() -> Settings:
    return current_app.config["SETTINGS"]


def get_redis() -> redis.Redis:
    conn = current_app.extensions.get("redis")
    if conn is None:
        raise redis.ConnectionError("neither REDIS_URL nor REDIS_SENTINELS is set")
    return conn


def get_rules() -> Any:
    return current_app.extensions["rules"].current()
