"""Reloading rules when a ConfigMap-style symlink swap changes the file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from remediator.exceptions import RulesError
from remediator.rules import RulesWatcher

REPO = Path(__file__).resolve().parent.parent
DEFAULT_TEXT = (REPO / "rules" / "default.yaml").read_text(encoding="utf-8")


class ConfigMapVolume:
    """A directory laid out the way the kubelet mounts a ConfigMap: default.yaml -> ..data/default.yaml."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        self.publish(DEFAULT_TEXT)
        (root / "default.yaml").symlink_to("..data/default.yaml")

    @property
    def path(self) -> Path:
        return self.root / "default.yaml"

    def publish(self, text: str) -> None:
        """Write a new timestamped directory and atomically swap ..data to it, as the kubelet does."""
        self.generation += 1
        version = self.root / f"..2024_01_01_00_00_0{self.generation}"
        version.mkdir()
        (version / "default.yaml").write_text(text, encoding="utf-8")
        temporary = self.root / "..data_tmp"
        temporary.symlink_to(version.name)
        os.replace(temporary, self.root / "..data")


def test_symlink_swap_to_a_valid_file_is_picked_up(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path)
    watcher = RulesWatcher(volume.path, min_interval=0)
    assert watcher.current().ladder.attempts_per_step == 2
    volume.publish(DEFAULT_TEXT.replace("attempts_per_step: 2", "attempts_per_step: 4"))
    assert watcher.current().ladder.attempts_per_step == 4


def test_invalid_new_file_keeps_the_old_rules_logs_and_calls_on_error_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = ConfigMapVolume(tmp_path)
    errors: list[RulesError] = []
    watcher = RulesWatcher(volume.path, on_error=errors.append, min_interval=0)
    before = watcher.current()
    volume.publish(DEFAULT_TEXT.replace("{fact: storm_active, eq: true}", "{fact: storm_actve, eq: true}", 1))
    with caplog.at_level(logging.ERROR, logger="remediator.rules"):
        assert watcher.current() is before
        assert watcher.current() is before  # the same bad version is reported once
    assert len(errors) == 1
    assert "rules[0].when.fact: unknown fact 'storm_actve'" in str(errors[0])
    assert "keeping the rules in force" in caplog.text
    volume.publish(DEFAULT_TEXT.replace("storm_threshold: 3", "storm_threshold: 5"))
    assert watcher.current().fleet.storm_threshold == 5
    assert len(errors) == 1


def test_file_rewritten_in_place_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_TEXT)
    watcher = RulesWatcher(path, min_interval=0)
    path.write_text(DEFAULT_TEXT.replace("deadline_minutes: 60", "deadline_minutes: 90"))
    assert watcher.current().ladder.deadline_minutes == 90


def test_vanished_file_keeps_the_old_rules(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_TEXT)
    errors: list[RulesError] = []
    watcher = RulesWatcher(path, on_error=errors.append, min_interval=0)
    before = watcher.current()
    path.unlink()
    assert watcher.current() is before
    assert watcher.current() is before
    assert len(errors) == 1 and "cannot read the file" in str(errors[0])


def test_the_file_is_looked_at_no_more_than_once_per_interval(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path)
    watcher = RulesWatcher(volume.path, min_interval=3600)
    volume.publish(DEFAULT_TEXT.replace("attempts_per_step: 2", "attempts_per_step: 4"))
    assert watcher.current().ladder.attempts_per_step == 2


def test_first_load_of_an_invalid_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: 2\n")
    with pytest.raises(RulesError, match=r"rules\.yaml:1: version: 2 is not allowed"):
        RulesWatcher(path)


def test_default_watcher_reads_the_shipped_rules() -> None:
    assert RulesWatcher().current().starts_ladder("CriticalSyncHosts")


def test_a_child_forked_while_another_thread_reads_the_rules_does_not_hang(tmp_path) -> None:
    # RQ forks a work horse per job while the worker's sweeper thread reads the rules: the lock that
    # thread held at the fork must not stay held in the child (its first job hung forever).
    import os
    import signal
    import threading

    path = tmp_path / "rules.yaml"
    path.write_text(DEFAULT_TEXT)
    watcher = RulesWatcher(path, min_interval=0.0)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with watcher._lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: read the rules, exit 0 if that returned
        signal.alarm(5)
        watcher.current()
        os._exit(0)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the child hung on the rules lock"
