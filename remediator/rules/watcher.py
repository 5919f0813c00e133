"""Reloading the rules when their file changes, as a Kubernetes ConfigMap update does (a symlink swap).

``RulesWatcher.current()`` is cheap: at most once per ``min_interval`` seconds it stats the file (the
path, the symlink's resolved target, its inode and mtime) and reloads on any change. An invalid new
file keeps the rules already loaded: the error is logged and handed to ``on_error`` (a metric), once
per bad version of the file, and the file is tried again when it changes.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from remediator.exceptions import RulesError, RulesSyntaxError
from remediator.rules.loader import default_rules_path, load_rules
from remediator.rules.ruleset import RuleSet
from remediator.rules.source import Problem

logger = logging.getLogger("remediator.rules")

MIN_INTERVAL = 1.0  # seconds between two looks at the file

Signature = tuple[str, int, int, int, int]  # resolved target, device, inode, mtime (ns), size (bytes)
_MISSING: Signature = ("", 0, 0, 0, 0)  # the file cannot be found or read


class RulesWatcher:
    """The current rules of one file, reloaded when the file changes; the first load must succeed."""

    def __init__(
        self,
        path: str | Path | None = None,
        on_error: Callable[[RulesError], None] | None = None,
        min_interval: float = MIN_INTERVAL,
    ) -> None:
        self.path = str(path) if path is not None else str(default_rules_path())
        self.on_error = on_error
        self.min_interval = min_interval
        self._lock = threading.Lock()
        # RQ forks a work horse per job while the worker's sweeper thread may be reading the rules: a
        # lock held at the fork would be held forever in the child, and its first job would hang.
        os.register_at_fork(after_in_child=self._new_lock)
        self._signature = self._stat()
        self._rules = load_rules(self.path)  # raises: there are no old rules to keep yet
        self._failed: Signature | None = None
        self._checked_at = time.monotonic()

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def current(self) -> RuleSet:
        """The rules in force, reloading first if the file changed since the last look."""
        now = time.monotonic()
        if now - self._checked_at < self.min_interval:
            return self._rules
        with self._lock:
            if now - self._checked_at >= self.min_interval:
                self._checked_at = now
                self._reload_if_changed()
            return self._rules

    def _reload_if_changed(self) -> None:
        try:
            signature = self._stat()
        except RulesError as error:
            self._report(error, _MISSING)
            return
        if signature == self._signature or signature == self._failed:
            return
        try:
            rules = load_rules(self.path)
        except RulesError as error:
            self._report(error, signature)
            return
        self._rules, self._signature, self._failed = rules, signature, None
        logger.info("rules reloaded from %s: %d rules", self.path, len(rules.rules))

    def _report(self, error: RulesError, signature: Signature) -> None:
        if signature == self._failed:
            return
        self._failed = signature
        logger.error("rules file %s is invalid; keeping the rules in force:\n%s", self.path, error)
        if self.on_error is not None:
            self.on_error(error)

    def _stat(self) -> Signature:
        try:
            target = os.path.realpath(self.path)
            info = os.stat(target)
        except OSError as error:
            problem = Problem(self.path, 1, "(top level)", f"cannot read the file: {error}")
            raise RulesSyntaxError([problem]) from None
        return (target, info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
