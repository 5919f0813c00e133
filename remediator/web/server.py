"""``remediator serve``: the app under gunicorn, configured in code (no gunicorn.conf.py to ship)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import MutableMapping
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from remediator.config import Settings
from remediator.logs import configure_logging


class JsonAccessLogger(Logger):
    """gunicorn's own logs as JSON lines: its error log through our formatter, its access log as JSON."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        from remediator.logs import JsonFormatter, Redactor

        self.redact = Redactor(Settings.from_env().secrets())
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter(self.redact))
        for handler in self.access_log.handlers:
            handler.setFormatter(logging.Formatter("%(message)s"))

    def access(self, resp: Any, req: Any, environ: MutableMapping[str, Any], request_time: Any) -> None:
        if not self.cfg.accesslog:
            return
        entry = {
            "level": "info",
            "logger": "remediator.access",
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": resp.status_code if hasattr(resp, "status_code") else str(resp.status).split()[0],
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "remote": environ.get("REMOTE_ADDR"),
        }
        # The path is the caller's: a secret put into a URL must not reach the log either.
        self.access_log.info(self.redact(json.dumps(entry)))


def _child_exit(_server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class RemediatorApplication(BaseApplication):
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from remediator import create_app

        configure_logging(self.settings.log_level, self.settings.secrets())
        return create_app({"SETTINGS": self.settings})


def gunicorn_options(*, bind: str, workers: int, threads: int, timeout: int) -> dict[str, Any]:
    """The gunicorn settings ``remediator serve`` runs with (bench/ serves its baseline with them too)."""
    return {
        "bind": bind,
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": timeout,
        "graceful_timeout": 20,
        "keepalive": 5,
        "accesslog": "-",
        "errorlog": "-",
        "logger_class": JsonAccessLogger,
        "child_exit": _child_exit,
        "preload_app": False,
        "forwarded_allow_ips": "127.0.0.1",
        # gunicorn 27's runtime-control socket sits at one fixed path per user: two receivers on one
        # machine would share it, and nothing here uses it.
        "control_socket_disable": True,
    }


def run_gunicorn(settings: Settings, *, bind: str, workers: int, threads: int, timeout: int) -> None:
    """Run gunicorn in the foreground until it is told to stop."""
    # Metrics from several processes are aggregated through files in this directory.
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="remediator-metrics-")
    configure_logging(settings.log_level, settings.secrets())
    options = gunicorn_options(bind=bind, workers=workers, threads=threads, timeout=timeout)
    RemediatorApplication(settings, options).run()
