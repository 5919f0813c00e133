"""Fleet-level escalation end to end (runbook Escalation 1-4): storms and provider outages."""

from __future__ import annotations

from collections import Counter

from e2e import pages_received, pages_to, rules_file
from helpers import alert, wait_for

from remediator import store
from workers.fleet import FLEET


def fleet_events(stack) -> list[tuple[str, str]]:
    return [(e["step"], e["outcome"]) for e in store.get_audit(stack.conn, FLEET)]


def selfplay_calls(sim, kind: str) -> Counter:
    return Counter(h for c in sim.calls if c["call"] == kind and c["status"] == 200 for h in c["host_ids"])


def test_storm_checks_once_pages_once_pauses_exactly_the_affected_hosts_and_undoes_it_on_recovery(
    make_sim_cluster, e2e_stack, server
):
    sim = make_sim_cluster(hosts=10)
    with e2e_stack(sim, workers=2, **pages_to(server)) as stack:
        affected = sim.host_ids[:8]
        healthy = sim.host_ids[8:]
        for h in affected:
            sim.kill_agent(h)
            sim.make_critical(h)
        # Alertmanager delivers the group, then re-sends it: neither may multiply checks or pages.
        stack.post([alert(h) for h in affected])
        stack.post([alert(h) for h in affected])
        for h in affected:
            assert stack.wait_finished(h, timeout=120)["outcome"] == "healthy", stack.steps(h)
        wait_for(lambda: ("storm", "ended") in fleet_events(stack), timeout=30, what="the storm to end")
        events = Counter(fleet_events(stack))
        assert events[("storm", "started")] == 1 and events[("storm", "ended")] == 1
        assert events[("network-check", "ok")] == 1
        assert events[("provider-check", "ok")] == 1
        assert events[("page", "sent")] == 1
        storm_pages = [p for p in pages_received(server) if p["dedup_key"].startswith("remediator/storm/")]
        assert [p["status"] for p in storm_pages] == ["firing", "resolved"]
        assert sorted(storm_pages[0]["hosts"]) == sorted(affected)
        paused, resumed = selfplay_calls(sim, "pause-selfplay"), selfplay_calls(sim, "resume-selfplay")
        assert paused == Counter(affected) and resumed == Counter(affected)
        for h in healthy:
            assert sim.counts(h)["pauses"] == 0 and stack.host(h) == {}


def test_provider_outage_during_a_storm_holds_the_ladders_then_they_resume(make_sim_cluster, e2e_stack):
    sim = make_sim_cluster(hosts=4)
    with e2e_stack(sim) as stack:
        affected = sim.host_ids[:3]
        sim.provider_outage(True)
        for h in affected:
            sim.kill_agent(h)
            sim.make_critical(h)
        stack.post([alert(h) for h in affected])
        for h in affected:
            wait_for(lambda h=h: ("restart_agent", "held") in stack.steps(h), timeout=60, what=f"{h} held")
        assert ("provider-check", "outage") in fleet_events(stack)
        # Held: nothing was done to the hosts while the provider is down; nothing retired.
        assert all(sim.counts(h)["agent_restarts"] == 0 for h in affected)
        sim.provider_outage(False)
        for h in affected:
            assert stack.wait_finished(h, timeout=120)["outcome"] == "healthy", stack.steps(h)
            assert sim.counts(h)["agent_restarts"] == 1 and sim.counts(h)["retires"] == 0
        assert ("provider-check", "ok") in fleet_events(stack)


def test_still_critical_after_n_minutes_pages_once_from_the_scheduled_checks(
    make_sim_cluster, e2e_stack, tmp_path, server
):
    sim = make_sim_cluster(hosts=1)
    h = sim.host_ids[0]
    rules = rules_file(
        tmp_path,
        **{
            "{fact: minutes_in_ladder, gte: 30}": "{fact: minutes_in_ladder, gte: 0.04}",
            "update_interval_minutes: 15": "update_interval_minutes: 0.01",
        },
    )
    with e2e_stack(
        sim,
        REMEDIATOR_RULES_FILE=str(rules),
        **pages_to(server),
    ) as stack:
        sim.kill_agent(h)
        sim.make_unreachable(h)  # the host is down: the ladder waits, re-checking on a schedule
        sim.make_critical(h)
        stack.post([alert(h)])
        # Between checks the worker is free: the ladder is "waiting" on a scheduled job, not sleeping.
        wait_for(lambda: stack.host(h).get("status") == "waiting", timeout=30, what="a scheduled re-check")
        assert stack.wait_finished(h, timeout=60)["outcome"] == "escalated"
        pages = pages_received(server)
        summaries = [p["summary"] for p in pages]
        still = [s for s in summaries if "still critical" in s]
        assert len(still) == 1, summaries
        # One incident, one page: the escalation updates the page already sent, under its dedup key.
        assert len({p["dedup_key"] for p in pages}) == 1, pages
        wait_for(
            lambda: any("needs a human" in p["summary"] for p in pages_received(server)),
            timeout=30,
            what="the page updated to say a human is needed",
        )
