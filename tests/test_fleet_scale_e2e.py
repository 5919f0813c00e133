"""The fleet-wide limits hold with a real worker pool: 40 hosts with dead agents on the fleet-scale sim,
healed by ``remediator worker --processes 4`` with at most 3 SSH sessions open at once across all four
work processes (the storm's prefetched diagnoses included), and a handful of provider listings for 40
diagnoses."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from e2e import make_stack
from helpers import alert, wait_for

from remediator import keys, store
from remediator.sim.fleet import FleetCluster

HOSTS = 40
SSH_LIMIT = 3
LISTING_SECONDS = 30  # longer than the whole test: each provider's listing is fetched once or so


def test_a_worker_pool_heals_40_hosts_within_the_ssh_limit_and_shares_the_provider_listings(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = FleetCluster(
        hosts=HOSTS,
        root=tmp_path / "fleet",
        sync_interval=1.0,
        lagging_after=3.0,
        critical_after=6.0,
        game_interval=2.0,
        selfplay=False,
    )
    with sim:
        stack = make_stack(
            sim,
            redis_url,
            tmp_path,
            monkeypatch,
            REMEDIATOR_MAX_SSH_SESSIONS=str(SSH_LIMIT),
            REMEDIATOR_PROVIDER_LISTING_SECONDS=str(LISTING_SECONDS),
        )
        stack.start_worker("--processes", "4")
        try:
            for h in sim.host_ids:
                sim.kill_agent(h)
            for h in sim.host_ids:
                sim.make_critical(h)
            sim.ssh_stats(reset_peak=True)
            listed_before = sum(sim.provider_listings().values())
            stack.post([alert(h) for h in sim.host_ids])  # one Alertmanager group: the storm
            for h in sim.host_ids:
                state = stack.wait_finished(h, timeout=120)
                assert state["outcome"] == "healthy", stack.steps(h)
            wait_for(lambda: int(stack.conn.zcard(keys.SSH_SLOTS)) == 0, timeout=10, what="slots freed")
        finally:
            stack.stop()
        diagnoses = Counter(step for h in sim.host_ids for step, _ in stack.steps(h))["diagnose"]
        firsts = [
            next(e for e in store.get_audit(stack.conn, h) if e["step"] == "diagnose") for h in sim.host_ids
        ]
        listings = sum(sim.provider_listings().values()) - listed_before
        server_peak = sim.ssh_stats()["sessions_peak"]
    # Every host healed by its agent's restart, over SSH shared by four work processes.
    assert all(sim.counts(h)["agent_restarts"] == 1 for h in sim.host_ids)
    # The limit was used and never passed: by the slots' own count, and by the SSH servers' (40 hosts on
    # one server process: its peak of sessions at once is the fleet's). The storm's network check
    # connects to the hosts' SSH ports too, but as TCP probes, never logging in: not sessions.
    assert 1 <= int(stack.conn.get(keys.SSH_SLOTS_PEAK) or 0) <= SSH_LIMIT
    assert server_peak <= SSH_LIMIT
    # One listing per provider (vast and lambda hosts alternate) served every diagnosis; a listing more
    # each where a host that did not answer over SSH asked for a fresh one.
    assert diagnoses >= HOSTS
    # A storm of 40: most first diagnoses were made ahead by the prefetch job, many hosts at a time (the
    # rest by ladders that started before it); each says when it was made.
    ahead = [e for e in firsts if "prefetch" in e["sources"]]
    assert len(ahead) >= HOSTS // 2, [e["sources"].get("ssh") for e in firsts]
    assert all(e["diagnosed_at"] <= e["ts"] for e in firsts)
    assert 2 <= listings <= 4, listings
