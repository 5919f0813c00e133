"""Regression tests for issue 13's ladder findings, and for what the property test found since.

Each test drives the real ladder (in-process RQ workers, real Redis) against the world model of
tests/world.py through the fault layer of tests/faults.py, on a virtual clock (tests/harness.py), and
says in its docstring whether it fails on the code before the fix it pins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness as hz
import pytest


@pytest.fixture
def make(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., hz.Harness]]:
    """Build a harness (world, fault plan, in-process workers) for the test; closed after it."""
    current = hz.install(monkeypatch)
    monkeypatch.setattr(logging.getLogger("remediator"), "level", logging.CRITICAL)
    made: list[hz.Harness] = []

    def build(hosts: list[str], rules: dict[str, Any] | None = None, **kwargs: Any) -> hz.Harness:
        rules_file = hz.fast_rules(tmp_path, **(rules or {}))
        h = hz.Harness(tmp_path / f"world{len(made)}", redis_url, hosts, rules_file=rules_file, **kwargs)
        current.harness = h
        made.append(h)
        return h

    yield build
    for h in made:
        h.close()
    current.harness = None


def diagnoses(h: hz.Harness, host: str) -> list[dict[str, Any]]:
    return [e for e in h.audit(host) if e["step"] == "diagnose" and e["outcome"] == "done"]


# -- found by the property test --------------------------------------------------------------------


def test_a_login_banner_neither_makes_a_host_unreachable_nor_spins_its_ladder(make):
    """A host whose shell prints a banner before every command's output. Before the fix diagnosis
    called it unreachable (stdout was not exactly "OK") while wait_reachable's check called it
    reachable (it ignored the output): the ladder re-diagnosed in a tight loop, 12 phases per job and
    a new job at once, opening SSH sessions as fast as it could until the deadline (here: Livelock)."""
    h = make(["h1"])
    h.world.hosts["h1"].banner = True
    h.world.break_agent("h1", "dead")
    h.fire("h1")
    state = h.finish("h1")
    assert state["outcome"] == "healthy", h.steps("h1")
    first = diagnoses(h, "h1")[0]
    assert first["facts"]["ssh_reachable"] is True
    # The banner spoils the inventory's JSON: no count is made up (I8), the agent is restarted anyway.
    assert "unsynced_games" not in first["facts"]
    assert "not JSON" in first["sources"]["inventory"]
    assert len(h.driver.runs) < 10
