"""Regression tests for issue 13's ladder findings, and for what the property test found since.

Each test drives the real ladder (in-process RQ workers, real Redis) against the world model of
tests/world.py through the fault layer of tests/faults.py, on a virtual clock (tests/harness.py), and
says in its docstring whether it fails on the code before the fix it pins.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import harness as hz
import pytest
from faults import Fault, FaultPlan, faulty_clients


@pytest.fixture
def make(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., hz.Harness]]:
    """Build a harness (world, fault plan, in-process workers) for the test; closed after it."""
    current = hz.install(monkeypatch)
    monkeypatch.setattr(logging.getLogger("remediator"), "level", logging.CRITICAL)
    logging.getLogger().manager._clear_cache()
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


# Automatic retirement, without the approval gate (tests/test_controls*.py cover it): the retire step
# itself runs as soon as the ladder reaches it.
AUTO_RETIRE = {"retirement.automatic": True, "approval.steps": []}


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


@pytest.mark.parametrize("variant", ["not_json", "empty", "success_false", "list"])
def test_a_malformed_coordinator_answer_is_unknown_never_a_crash_nor_an_unknown_host(make, variant):
    """GET /sync/hosts answered 200 with an HTML page, no body, {"success": false} or a list. Before the
    fix an HTML page or an empty body crashed the job (JSONDecodeError; the sweeper then resumed it
    until it gave up), and {"success": false} or no body read as "the coordinator does not know this
    host": the ladder failed at once, holding the incident with nobody paged. Now each is the
    coordinator's state unknown: the ladder waits and diagnoses again."""
    h = make(["h1"])
    h.world.break_agent("h1", "dead")
    h.plan.add(Fault("coordinator.hosts", "malformed", variant=variant, times=1))
    h.fire("h1")
    state = h.finish("h1")
    first = diagnoses(h, "h1")[0]
    assert first["facts"]["coordinator_state"] == "unknown", first
    assert first["detail"] == "plan: wait_reachable | escalate"
    assert state["outcome"] == "healthy", h.steps("h1")
    assert [r for r in h.driver.runs if r.outcome != "finished"] == []


# -- finding 2: retire ----------------------------------------------------------------------------


def provider_says_terminated_but_host_lives(h: hz.Harness, host: str) -> None:
    """The provider lists the instance as gone while the host still answers (an API that lags): the
    diagnosis is made unreachable by a refused connection, the checklist's rsync then gets through."""
    h.world.hosts[host].instance = "terminated"
    h.world.hosts[host].agent = "dead"
    h.world.hosts[host].last_sync -= 400  # critical
    h.plan.add(Fault("ssh.connect", "refused", times=1, host=host))


def test_retire_a_checklist_rsync_that_succeeded_documents_no_loss_retires_nothing_and_imports_the_copy(
    make,
):
    """Issue 13 finding 2. Before a459536 the checklist's rsync result was not looked at: the loss was
    documented (ledger and training log) and, with automatic retirement, the host retired."""
    h = make(["h1"], rules=AUTO_RETIRE)
    games = set(h.world.hosts["h1"].games)
    provider_says_terminated_but_host_lives(h, "h1")
    h.fire("h1")
    state = h.finish("h1")
    assert diagnoses(h, "h1")[0]["detail"] == "plan: retire | escalate"
    retire = next(e for e in h.audit("h1") if e["step"] == "retire")
    assert retire["outcome"] == "declined" and "rsync" in retire["detail"], retire
    assert h.ledger() == [] and h.world.data_loss == [] and h.world.retirements == []
    assert not h.world.hosts["h1"].retired
    assert retire["import"]["result"] == "ran" and h.world.imports, retire
    assert games <= h.world.central["h1"]  # the copy reached the coordinator
    assert state["outcome"] in ("recovered", "escalated")


def test_retire_a_cached_inventory_older_than_the_last_sync_is_not_an_unsynced_count(make):
    """Issue 13 finding 2. The host was counted once, synced afterwards, then its instance was
    terminated: the only count is older than the last sync, so nothing may be documented as lost (it
    would name games that were synced) and the host is not retired. Before a459536 any cached count
    made the checklist's "unsynced games counted" true: loss documented, host retired."""
    h = make(["h1"], rules=AUTO_RETIRE)
    h.remediate("h1", dry_run=True)  # a first look: the inventory is counted and cached
    assert h.finish("h1")["outcome"] == "healthy"
    h.run(120)  # the agent syncs after the count
    h.world.terminate("h1")
    h.run(400)  # no sync since: critical
    h.fire("h1")
    h.finish("h1")
    diag = diagnoses(h, "h1")[-1]
    assert diag["facts"]["cloud_state"] == "terminated" and diag["facts"]["ssh_reachable"] is False
    retire = next(e for e in h.audit("h1") if e["step"] == "retire")
    assert retire["outcome"] == "declined", retire
    assert retire["loss"]["checklist"]["unsynced_games_counted"] is False
    assert h.ledger() == [] and h.world.data_loss == [] and h.world.retirements == []


def test_retire_may_retire_is_asked_before_anything_is_written(make, monkeypatch):
    """Issue 13 finding 2: the rules decide before the loss is documented, so a rules error or a
    "no" cannot leave a documented loss behind a host that was never going to be retired. Before
    a459536 the ledger line and the training-log entry were written first, then the rules asked."""
    from remediator.rules.ruleset import RuleSet

    h = make(["h1"], rules=AUTO_RETIRE)
    h.world.break_agent("h1", "dead")
    h.world.write_games(h.world.hosts["h1"], 5)  # never synced
    h.remediate("h1", dry_run=True)  # a first look counts them
    h.finish("h1")
    h.world.terminate("h1")
    asked: list[tuple[int, int]] = []
    may_retire = RuleSet.may_retire

    def spy(self: RuleSet, facts: Any) -> bool:
        asked.append((len(h.ledger()), len(h.world.data_loss)))
        return may_retire(self, facts)

    monkeypatch.setattr(RuleSet, "may_retire", spy)
    unsynced = len(h.world.unsynced("h1"))
    h.fire("h1")
    state = h.finish("h1")
    assert asked == [(0, 0)]
    assert state["outcome"] == "retired", h.steps("h1")
    assert len(h.ledger()) == 1 and len(h.world.data_loss) == 1 and h.world.hosts["h1"].retired
    assert h.ledger()[0]["games_lost"] == unsynced > 5


@pytest.mark.parametrize("variant", ["empty", "list"])
def test_retire_a_training_log_entry_the_coordinator_did_not_confirm_is_not_written(make, variant):
    """POST /admin/data-loss answered 200 with no body or an empty list, and recorded nothing (a proxy's
    catch-all). Before the fix any 2xx counted as "training log updated", and with automatic
    retirement the host was retired with its loss in no training log (found by the property test).
    Now only an answer saying ``"recorded": true`` counts: the checklist stays incomplete, no
    retirement, a human is paged."""
    h = make(["h1"], rules=AUTO_RETIRE)
    h.world.break_agent("h1", "dead")
    h.world.write_games(h.world.hosts["h1"], 4)
    h.remediate("h1", dry_run=True)
    h.finish("h1")
    h.world.terminate("h1")
    h.plan.add(Fault("coordinator.data_loss", "malformed", variant=variant, times=None))
    h.fire("h1")
    state = h.finish("h1")
    retire = next(e for e in h.audit("h1") if e["step"] == "retire")
    assert retire["outcome"] == "declined" and "could not be documented" in retire["detail"], retire
    assert "did not confirm" in retire["coordinator_error"]
    assert len(h.ledger()) == 1 and h.world.data_loss == [] and h.world.retirements == []
    assert state["outcome"] == "escalated"


# -- finding 3: dry run mutates nothing --------------------------------------------------------------


def mutating(h: hz.Harness) -> list[Any]:
    return [c for c in h.log.calls if c.level == "intent" and c.mutating]


def test_dry_run_fleet_evaluation_sends_no_storm_page_and_pauses_nothing(make):
    """Issue 13 finding 3: two hosts critical at once is a storm (threshold 2) with data at risk; a
    per-ladder dry run records the plan and sends no storm page, pauses no selfplay. At 6145b37 the
    fleet evaluation knew only the deployment's dry run: the storm was paged and paused (fixed by
    01aefa0, before 1dff6d2, where this test passes)."""
    h = make(["h1", "h2"], rules={"fleet.storm_threshold": 2})
    for host in ("h1", "h2"):
        h.world.break_agent(host, "dead")
        h.remediate(host, dry_run=True)
    for host in ("h1", "h2"):
        assert h.finish(host)["outcome"] == "dry-run"
    assert h.conn.hget("remediator:fleet", "storm") == b"1"  # the remediator's own view: a storm
    assert mutating(h) == [] and h.world.pager_events == [] and h.world.paused_by == {}
    assert not any(c.name.startswith(("pager.", "coordinator.pause")) for c in h.log.calls)


def test_dry_run_deployment_sends_no_storm_page_and_pauses_nothing(make):
    """Issue 13 finding 3, with REMEDIATOR_DRY_RUN=true: real alerts, a storm, nothing mutated (passes
    at 1dff6d2 too: a pin, not a fix of this branch)."""
    h = make(["h1", "h2"], rules={"fleet.storm_threshold": 2}, dry_run=True)
    for host in ("h1", "h2"):
        h.world.break_agent(host, "dead")
    h.fire("h1", "h2")
    for host in ("h1", "h2"):
        assert h.finish(host)["outcome"] == "dry-run"
    h.resolve("h1", "h2")
    h.run(300)
    assert mutating(h) == [] and h.world.pager_events == [] and h.world.paused_by == {}
    assert not any(c.mutating for c in h.log.calls)


def test_dry_run_ladder_finding_the_host_healthy_resumes_nothing_and_resolves_no_page(make):
    """Issue 13 finding 3. A storm paused h1 and h2 and paged; their ladders escalated (held). h1's
    agent comes back and syncs. A human's dry run on h1 finds it healthy: it must not resume h1's
    selfplay nor resolve anything (the incident's close does that, for real). At 6145b37 a dry-run
    ladder that ended healthy ran a real ladder's recovery bookkeeping (resume, storm end); fixed by
    01aefa0, before 1dff6d2, where this test passes."""
    h = make(["h1", "h2"], rules={"fleet.storm_threshold": 2, "incident.healthy_for_minutes": 10})
    for host in ("h1", "h2"):
        h.world.break_agent(host, "dead")
        h.world.hosts[host].ssh_up = False
    h.fire("h1", "h2")
    for host in ("h1", "h2"):
        assert h.finish(host)["outcome"] == "escalated"
    assert h.world.hosts["h1"].selfplay_paused and h.world.pager_events
    pages_before = list(h.world.pager_events)
    h.world.hosts["h1"].agent, h.world.hosts["h1"].ssh_up = "running", True
    h.run(35)  # h1 syncs again
    calls = len(h.log.calls)
    assert h.remediate("h1", dry_run=True)["accepted"]
    dry = h.finish("h1")
    assert dry["outcome"] == "healthy" and dry["dry_run"] in (True, "1"), h.steps("h1")
    assert h.world.hosts["h1"].selfplay_paused  # still paused: a dry run resumes nothing
    assert h.world.pager_events == pages_before  # nothing resolved, nothing sent
    assert not [c for c in h.log.calls[calls:] if c.mutating]


def storm_of_two(h: hz.Harness) -> None:
    """h1 and h2 go critical at once (a storm at threshold 2): their selfplay is paused."""
    for host in ("h1", "h2"):
        h.world.break_agent(host, "dead")
    h.fire("h1", "h2")


def test_a_pause_whose_answer_was_lost_is_remembered_and_resumed(make):
    """The storm's pause was applied and its answer lost (a 502 after the coordinator acted, on every
    retry). Before the fix the remediator forgot it (no error is a pause), so nothing ever resumed the
    host (found by the property test, I6). Now a pause that may have been applied is remembered and
    resumed with its host."""
    h = make(["h1", "h2"], rules={"fleet.storm_threshold": 2})
    h.plan.add(Fault("coordinator.pause", "applied_then_failed", variant="5xx", times=None))
    for host in ("h1", "h2"):
        h.world.hosts[host].ssh_up = False  # their ladders escalate: the hosts stay paused
    storm_of_two(h)
    for host in ("h1", "h2"):
        assert h.finish(host)["outcome"] == "escalated"
    assert h.world.hosts["h1"].selfplay_paused and h.world.hosts["h2"].selfplay_paused  # it took effect
    assert {m.decode() for m in h.conn.smembers("remediator:paused")} == {"h1", "h2"}
    h.plan.clear()
    h.resolve("h1", "h2")
    h.run(120)
    assert not any(host.selfplay_paused for host in h.world.hosts.values())


def test_a_resume_the_coordinator_did_not_confirm_is_tried_again(make):
    """The resume was answered 200 with an empty list by something that resumed nothing. Before the fix
    the remediator took any 2xx as done and forgot the pause: the host stayed paused for good (found
    by the property test, I6). Now the resume must say the host was resumed; otherwise the incident's
    cleanup is tried again, and the host resumed."""
    h = make(["h1", "h2"], rules={"fleet.storm_threshold": 2})
    for host in ("h1", "h2"):
        h.world.hosts[host].ssh_up = False  # their ladders escalate: the hosts stay paused
    storm_of_two(h)
    for host in ("h1", "h2"):
        assert h.finish(host)["outcome"] == "escalated"
    assert h.world.hosts["h1"].selfplay_paused and h.world.hosts["h2"].selfplay_paused
    h.plan.add(Fault("coordinator.resume", "malformed", variant="list", times=2))
    h.resolve("h1", "h2")
    h.run(600)
    assert not any(host.selfplay_paused for host in h.world.hosts.values())
    assert h.conn.smembers("remediator:paused") == set()


def test_a_fleet_evaluation_that_outlived_its_lock_pauses_nothing(make, monkeypatch):
    """Found by the property test (I6). The first storm evaluation freezes (its worker paused) for 60 s
    after reading the affected hosts, past the fleet lock's 30 s; meanwhile other evaluations pause the
    storm's hosts, h2 heals, is resumed and its incident closes. When the frozen evaluation wakes, it
    must not act on what it read a minute ago. Before the fix it paused h2 again -- a host with no open
    incident, which nothing would ever resume."""
    from workers import fleet

    h = make(["h1", "h2", "h3"], rules={"fleet.storm_threshold": 2, "incident.healthy_for_minutes": 0.1})
    h.world.break_agent("h1", "dies_after_restart")  # stays critical, its unsynced games at risk
    h.world.break_agent("h3", "dead")
    h.world.hosts["h3"].ssh_up = False  # stays critical
    h.world.break_agent("h2", "soft_wedged")  # a forced sync heals it
    storm_page = fleet._storm_page
    frozen = []

    def freezes_first(ctx: Any, *args: Any) -> Any:
        if not frozen:
            frozen.append(h.clock.now)
            h.driver.stall(60.0)
        return storm_page(ctx, *args)

    monkeypatch.setattr(fleet, "_storm_page", freezes_first)
    h.fire("h1", "h2", "h3")
    h.run(120)
    assert frozen and h.host("h2")["outcome"] == "healthy"
    assert not h.world.hosts["h2"].selfplay_paused, h.audit("_fleet")
    # Whether the live evaluations paused h1 and h3 meanwhile depends on whether one ran while the
    # frozen one still held the fleet lock (real time, here); what this test names does not.


def test_a_storm_never_pauses_a_host_without_an_open_incident(make):
    """Found by the property test (I6). A human closed h3's incident while its ladder waited; h3's alert
    fires again before that ladder stops (it is not withdrawn: a human's stop stands), so h3 is seen
    critical with no incident of its own. Before the fix the storm h1 starts paused h3 too: nothing
    would ever resume it -- its incident's cleanup had already run, and its resolved alert finds no
    incident to close. A pause is now only for hosts whose open incident will resume them."""
    h = make(["h1", "h2", "h3"], rules={"fleet.storm_threshold": 2})
    h.world.break_agent("h3", "dead")
    h.world.hosts["h3"].ssh_up = False  # its ladder waits between re-checks
    h.fire("h3")
    h.run()
    assert h.close_incident("h3") == 200
    h.run()  # the incident's cleanup runs; the ladder is still waiting for its next re-check
    h.fire("h3")
    h.world.break_agent("h1", "dies_after_restart")  # critical, with unsynced games at risk: a storm
    h.fire("h1")
    h.run()
    assert h.world.hosts["h1"].selfplay_paused
    assert not h.world.hosts["h3"].selfplay_paused
    h.resolve("h3")
    h.run(60)
    assert not h.world.hosts["h3"].selfplay_paused and not h.active("h3")


def test_a_storm_s_resumes_go_to_each_host_s_trail_and_leave_the_fleet_trail_to_the_storm(make):
    """The 1,000-host bench found "storm started" pushed out of the fleet trail, which keeps its last
    entries only: every host's resume was a fleet entry of its own. The storm's pauses stay fleet
    entries (one per evaluation, with its hosts); a host's resume belongs to that host's trail."""
    hosts = ["h1", "h2", "h3"]
    h = make(hosts, rules={"fleet.storm_threshold": 2})
    for host in hosts:
        h.world.break_agent(host, "dies_after_restart")  # critical with games at risk: the storm pauses
    h.fire(*hosts)
    h.run()
    assert all(h.world.hosts[host].selfplay_paused for host in hosts)
    h.resolve(*hosts)
    h.run(60)
    assert not any(h.world.hosts[host].selfplay_paused for host in hosts)
    fleet_steps = [e["step"] for e in h.audit("_fleet")]
    assert "pause-selfplay" in fleet_steps and "resume-selfplay" not in fleet_steps, fleet_steps
    for host in hosts:
        assert [e["outcome"] for e in h.audit(host) if e["step"] == "resume-selfplay"] == ["done"], host


# -- finding 4: fencing ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["rsync", "import"])
def test_fencing_a_worker_that_lost_its_lock_during_a_long_copy_stops_before_its_next_mutation(make, where):
    """Issue 13 finding 4. The worker freezes inside recover_data's rsync (or import) past its lock's
    TTL; the sweeper resumes the ladder on another worker, which recovers and ends it. When the first
    worker wakes, it must make no further mutation (the import after the rsync) and must not end the
    ladder. Before a459536 only the step's commit was fenced: the import and the ladder's end ran."""
    h = make(["h1"])
    h.world.break_agent("h1", "dies_after_restart")
    h.plan.add(Fault(where, "stall", seconds=120.0))
    h.fire("h1")
    state = h.finish("h1")
    assert h.driver.stalls and h.driver.stalls[0]["call"] == where
    stalled = h.driver.stalls[0]["worker"]
    assert state["outcome"] == "recovered", h.steps("h1")
    mine = [
        c
        for c in h.log.calls
        if c.ctx.get("worker") == stalled and c.mutating and c.at > h.driver.stalls[0]["at"]
    ]
    later = [c for c in mine if c.name != where]  # the stalled call itself went through when it woke
    assert later == [], later
    assert not [e for e in h.driver.ends if e["worker"] == stalled and e["ok"]]
    assert next(e for e in h.driver.ends if e["ok"])["worker"] != stalled
    job = next(r for r in h.driver.runs if r.job_id == h.driver.stalls[0]["job"])
    assert str(job.result).startswith("lock lost"), job


def test_fencing_a_worker_that_lost_its_lock_during_the_restart_runs_no_fallback(make):
    """Found by the property test (I4). The worker freezes inside restart_agent's restart command past
    its lock's TTL; another worker takes the ladder on. The restart fails when the first one wakes (no
    systemctl on this host): it must not go on to the fallback command, a mutation of its own. Before
    the fix the step checked the lock once, before the restart, and ran the fallback regardless."""
    h = make(["h1"])
    h.world.hosts["h1"].systemd = False
    h.world.break_agent("h1", "dead")
    h.plan.add(Fault("ssh.restart", "stall", seconds=120.0))
    h.fire("h1")
    h.finish("h1")
    stall = h.driver.stalls[0]
    late = [c for c in h.log.calls if c.ctx.get("job") == stall["job"] and c.name == "ssh.fallback"]
    assert late == [], late
    job = next(r for r in h.driver.runs if r.job_id == stall["job"])
    assert str(job.result).startswith("lock lost"), job


def test_fencing_a_worker_that_froze_taking_the_lock_does_not_mark_an_ended_ladder_running(make):
    """Found by the property test. The worker froze right after taking the host lock (at the fencing
    counter's INCR), past the lock's TTL; the sweeper resumed the ladder elsewhere and it ended. The
    frozen worker then wrote status "running" without checking its lock: the host showed a ladder
    running forever (API, status page). That first write is now fenced like the others."""
    h = make(["h1"])
    h.world.break_agent("h1", "dead")
    h.plan.add(Fault("redis.INCRBY", "stall", seconds=60.0))
    h.fire("h1")
    h.run(120)
    stall = h.driver.stalls[0]
    job = next(r for r in h.driver.runs if r.job_id == stall["job"])
    assert str(job.result).startswith("lock lost"), job
    state = h.host("h1")
    assert state["status"] == "finished" and state["outcome"] == "healthy", state


# -- finding 5: recover_data verification -----------------------------------------------------------


def recover_data_verdicts(h: hz.Harness, host: str) -> list[dict[str, Any]]:
    return [e for e in h.audit(host) if e["step"] == "recover_data" and e["outcome"].startswith("verify")]


def test_recover_data_verify_is_not_ok_with_nothing_on_record(make):
    """Issue 13 finding 5. The worker is killed right after the rsync took effect; the resumed ladder
    finds attempt 1 claimed and verifies it: with no recovery on record it fails (and attempt 2
    copies again). Before a459536 an empty record verified OK ("recovered")."""
    h = make(["h1"])
    h.world.break_agent("h1", "dies_after_restart")
    h.plan.add(Fault("rsync", "kill_after"))
    h.fire("h1")
    h.finish("h1")
    verdicts = recover_data_verdicts(h, "h1")
    assert verdicts[0]["outcome"] == "verify-failed", verdicts
    assert verdicts[0]["detail"] == "no recovery is on record for this attempt"
    assert ("recover_data", "resumed") in h.steps("h1")


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        (Fault("ssh.checksums", "timeout"), "timed out"),
        (Fault("ssh.checksums", "malformed", variant="banner", times=2), "not JSON"),
    ],
    ids=["timeout", "login-banner"],
)
def test_recover_data_verify_fails_when_the_checksums_could_not_be_compared(make, fault, why):
    """Issue 13 finding 5: the host's checksum inventory timed out, or answered a login banner before
    its JSON: the copy cannot be checked and verification fails -- never silently skipped. Before
    a459536 there was no such check: a copy compared with nothing verified OK."""
    h = make(["h1"], rules={"ladder.attempts_per_step": 1})
    h.world.break_agent("h1", "dies_after_restart")
    h.plan.add(fault)
    h.fire("h1")
    h.finish("h1")
    verdict = recover_data_verdicts(h, "h1")[0]
    assert verdict["outcome"] == "verify-failed", verdict
    assert verdict["detail"].startswith("the copy could not be checked against the host"), verdict
    assert why in verdict["detail"], verdict


def test_recover_data_verify_flags_a_file_missing_from_the_copy(make, monkeypatch):
    """Issue 13 finding 5: rsync exited 0 but one file the host had is not in the copy (an rsync
    filter, a race on the destination): verification fails naming it. Before a459536 only files in
    the copy were compared."""
    h = make(["h1"], rules={"ladder.attempts_per_step": 1})
    h.world.break_agent("h1", "dies_after_restart")
    rsync = h.inner.rsync

    def loses_a_file(record: Any, dest: Path, **kwargs: Any) -> Any:
        result = rsync(record, dest, **kwargs)
        if not kwargs.get("dry_run"):
            sorted(Path(dest).glob("games_*.db"))[0].unlink()
        return result

    monkeypatch.setattr(h.inner, "rsync", loses_a_file)
    h.fire("h1")
    h.finish("h1")
    verdict = recover_data_verdicts(h, "h1")[0]
    assert verdict == {
        **verdict,
        "outcome": "verify-failed",
        "detail": "files the host had are missing from the copy",
    }
    assert verdict["missing_files"] == ["games_000001.db"]


# -- finding 8: the ladder's part ------------------------------------------------------------------------


class DiagnosisCannotConnect(FaultPlan):
    """Every diagnosis's SSH connection is refused; wait_reachable's own check gets through
    ``answers`` times (None: always), then is refused too: a host that flaps."""

    def __init__(self, h: hz.Harness, answers: int | None) -> None:
        super().__init__()
        self.h = h
        self.answers = answers

    def take(self, name: str, host: str | None = None) -> Fault | None:
        if name == "ssh.connect":
            if self.h.log.context().get("step") == "diagnose":
                return Fault(name, "refused")
            if self.answers is not None:
                if self.answers <= 0:
                    return Fault(name, "refused")
                self.answers -= 1
        return super().take(name, host)


def test_after_a_re_diagnosis_the_unreachable_limit_still_triggers(make):
    """Issue 13 finding 8. The host answers wait_reachable's check once, the re-diagnosis cannot reach
    it, and it stays unreachable: the unreachable clock started by the first diagnosis keeps running,
    so the ladder escalates at the rules' limit (0.1 min) after that diagnosis, not after the second.
    Before a459536 the second wait restarted the clock."""
    h = make(["h1"])
    h.world.break_agent("h1", "dead")
    monkeypatch_plan(h, DiagnosisCannotConnect(h, answers=1))
    h.fire("h1")
    state = h.finish("h1")
    steps = h.steps("h1")
    assert state["outcome"] == "escalated", steps
    assert steps.count(("diagnose", "done")) == 2 and ("wait_reachable", "verify-ok") in steps, steps
    failed = next(
        e for e in h.audit("h1") if e["step"] == "wait_reachable" and e["outcome"] == "verify-failed"
    )
    assert failed["detail"].startswith("host still unreachable after"), failed
    first = float(diagnoses(h, "h1")[0]["ts"])
    assert float(failed["ts"]) - first < 0.1 * 60 + 2 * 1  # the limit and a recheck interval


def test_a_host_that_answers_every_re_check_but_no_diagnosis_is_paced_and_escalated(make):
    """Found while writing the test above: the host answers every wait_reachable check but no
    diagnosis. After each re-diagnosis the wait's attempt was already claimed, so the ladder verified
    at once -- no recheck interval -- and an answered check never looked at the unreachable limit: a
    tight loop of SSH sessions until the ladder's deadline (here: Livelock, no time passes). Now a
    re-check waits a recheck interval after the last, and one that gets an answer still escalates
    once no diagnosis has reached the host for the rules' limit."""
    h = make(["h1"])
    h.world.break_agent("h1", "dead")
    monkeypatch_plan(h, DiagnosisCannotConnect(h, answers=None))
    h.fire("h1")
    state = h.finish("h1")
    assert state["outcome"] == "escalated", h.steps("h1")
    failed = next(
        e for e in h.audit("h1") if e["step"] == "wait_reachable" and e["outcome"] == "verify-failed"
    )
    assert "no diagnosis has reached it" in failed["detail"], failed
    times = [float(d["ts"]) for d in diagnoses(h, "h1")]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(times)), times  # one recheck interval apart
    assert float(failed["ts"]) - times[0] < 0.1 * 60 + 2 * 1


def monkeypatch_plan(h: hz.Harness, plan: FaultPlan) -> None:
    """Swap the harness's fault plan (its clients and workers read it)."""
    h.plan = plan
    h.driver.plan = plan
    h.clients = faulty_clients(h.inner, plan, h.log, h.driver, h.settings)


def test_a_ladder_handing_over_after_max_phases_is_not_dropped_as_locked(make, monkeypatch):
    """Issue 13 finding 8. After MAX_PHASES_PER_JOB phases a job hands over to a new job of the same
    ladder, queued before it releases the host lock; another worker may start that job first. It must
    try again shortly, not return "locked" and leave the ladder to the sweeper. Before a459536 the new
    job was dropped as "locked: another worker is advancing this ladder"."""
    import workers.ladder as ladder
    from remediator.locks import HostLock

    monkeypatch.setattr(ladder, "MAX_PHASES_PER_JOB", 2)
    h = make(["h1"])
    h.world.break_agent("h1", "dies_after_restart")
    release = HostLock.release
    raced = []

    def release_after_a_rival(self: HostLock) -> bool:
        running = h.driver.current
        if (
            not raced
            and running
            and running.job
            and str(h.host("h1").get("waiting_for")) == "continuing in a new job"
        ):
            raced.append(self.key)
            h.driver.run_until_quiet()  # another worker takes the handed-over job while we hold the lock
        return release(self)

    monkeypatch.setattr(HostLock, "release", release_after_a_rival)
    h.fire("h1")
    state = h.finish("h1")
    assert raced
    locked = [r for r in h.driver.runs if str(r.result).startswith("locked")]
    assert locked and all("trying again" in str(r.result) for r in locked), locked
    assert ("sweeper", "resumed") not in h.steps("h1")
    assert state["outcome"] == "recovered", h.steps("h1")


def test_a_ladder_whose_job_crashes_every_time_is_resumed_with_backoff_then_given_up_to_a_human(
    make, monkeypatch
):
    """Issue 13 finding 8. A ladder job that crashes every time (a poison input, a bug): the sweeper
    resumes it with a growing pause, at most MAX_RESUMES times, then fails the ladder, holds the
    incident and pages a human. Before a459536 it was resumed every 5 s until the deadline (and
    nobody was paged)."""
    import workers.prefetch as ladder  # where a ladder's diagnoses are made
    from workers import sweeper

    def poison(ctx: Any, host_id: str, since: float | None = None) -> Any:
        raise RuntimeError("poison: diagnosis crashes")

    monkeypatch.setattr(ladder, "diagnose", poison)
    h = make(["h1"], rules={"ladder.deadline_minutes": 60})
    h.world.break_agent("h1", "dead")
    h.fire("h1")
    state = h.finish("h1", within=1800)
    assert state["outcome"] == "failed" and "given up" in state["outcome_detail"], state
    crashes = [r for r in h.driver.runs if r.outcome == "failed"]
    assert len(crashes) == sweeper.MAX_RESUMES + 1
    gaps = [b.at - a.at for a, b in itertools.pairwise(crashes)]
    assert gaps == sorted(gaps) and gaps[-1] > 4 * gaps[0], gaps  # backing off, not every 5 s
    assert [e.dedup_key for e in h.world.pager_events if e.action == "trigger" and e.status < 300]
    assert incidents_state(h, "h1") == "held"


def incidents_state(h: hz.Harness, host: str) -> str | None:
    from remediator import incidents

    current = incidents.current(h.conn, host)
    return current.state.value if current else None


def test_per_host_keys_get_a_ttl(make):
    """Issue 13 finding 8: every key the ladder writes for a host expires (30 days after its last
    change), so hosts that left the fleet do not stay in Redis forever. Before a459536 the host's
    state, audit trail and fencing counter never expired."""
    h = make(["h1"])
    h.world.break_agent("h1", "dies_after_restart")
    h.fire("h1")
    h.finish("h1")
    per_host = [k.decode() for k in h.conn.scan_iter("remediator:*h1*")]
    assert {"remediator:host:h1", "remediator:audit:h1", "remediator:fence:h1"} <= set(per_host)
    forever = [k for k in per_host if h.conn.ttl(k) < 0]
    assert forever == [], forever


# -- the fault layer over the real simulated cluster ------------------------------------------------


@pytest.mark.parametrize("variant", ["banner", "truncated"])
def test_over_real_ssh_a_checksum_inventory_that_is_not_json_fails_recover_data_verification(
    make_sim_cluster, redis_url, tmp_path, monkeypatch, variant
):
    """Issue 13 finding 5 against the real simulated cluster (OpenSSH, real rsync, the real importer):
    the fault layer spoils the output of the checksum inventory the real host sent back -- a login
    banner before its JSON, or its JSON cut short. Verification fails, saying why; the copy is never
    taken as checked. (This runs on the real clock, with the in-process workers of tests/inproc.py.)"""
    from e2e import FAST_RULES
    from faults import FaultPlan, faulty_clients
    from inproc import Driver
    from world import CallLog, RealClock

    from remediator import clients, keys
    from remediator.config import Settings
    from remediator.intake import LadderRequest, start_ladders

    sim = make_sim_cluster(hosts=1, selfplay=False)
    host = sim.host_ids[0]
    rules = tmp_path / "rules.yaml"
    rules.write_text(FAST_RULES.read_text().replace("attempts_per_step: 2", "attempts_per_step: 1"))
    env = {
        **sim.env(),
        "REDIS_URL": redis_url,
        "REMEDIATOR_RULES_FILE": str(rules),
        "REMEDIATOR_SSH_CONNECT_TIMEOUT": "3",
        "REMEDIATOR_LEDGER_FILE": str(tmp_path / "ledger.jsonl"),
        "REMEDIATOR_LOCK_TTL": "6",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    clock, plan = RealClock(), FaultPlan()
    log = CallLog(clock)
    driver = Driver(redis_url, settings, clock, plan, log, age_keys=False)
    faulty = faulty_clients(clients.real_clients(settings), plan, log, driver, settings)
    plan.add(Fault("ssh.checksums", "malformed", variant=variant, times=None))
    sim.write_games(host, 3)
    sim.agent_dies_after_restart(host)
    sim.make_critical(host)
    with clients.install(lambda _settings: faulty):
        start_ladders(driver.conn, settings.queue, [LadderRequest(host, "test")])
        deadline = clock.now + 90
        while driver.conn.exists(keys.ACTIVE.format(host)) and clock.now < deadline:
            driver.run_for(0.5)
    audit = [e for e in store_audit(driver.conn, host) if e["step"] == "recover_data"]
    ran = next(e for e in audit if e["outcome"] == "ran")
    assert ran["rsync_exit"] == 0 and ran["files"] > 0  # the real copy was made
    verdict = next(e for e in audit if e["outcome"].startswith("verify"))
    assert verdict["outcome"] == "verify-failed", verdict
    assert verdict["detail"].startswith("the copy could not be checked against the host"), verdict
    assert any(c.name == "ssh.checksums" and c.fault == "malformed" for c in log.calls)
    assert sim.counts(host)["retires"] == 0 and sim.counts(host)["data_loss_records"] == 0


def store_audit(conn: Any, host: str) -> list[dict[str, Any]]:
    from remediator import store

    return store.get_audit(conn, host)
