"""Chaos: workers SIGKILLed at random points, SSH faults, coordinator 5xx and slowness.

Everything is real and on loopback: the receiver (in-process), ``remediator worker`` processes, Redis,
the simulated cluster's OpenSSH servers and coordinator. Kill schedules are seeded (``random.Random``)
and every assertion message names the seed, so a failure can be replayed with ``CHAOS_SEED=<seed>``.
``RUN_SLOW=1`` runs more hosts, more kills and more seeds.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from e2e import Stack, kill_worker, running
from helpers import alert, make_settings, wait_for
from rq import Worker

from remediator import keys
from remediator.clients.coordinator import CoordinatorUnavailable, HttpCoordinator
from remediator.clients.ssh import HostSession, rsync_pull
from remediator.exceptions import SSHError
from remediator.sim import SimCluster

SLOW = os.environ.get("RUN_SLOW") == "1"


# -- workers SIGKILLed at random points ------------------------------------------------------------

# The fault of each host and the outcome its ladder must reach.
FAULTS = {
    "agent dead": "healthy",  # restart_agent, then a verified sync
    "agent wedged": "healthy",  # force_sync alone
    "agent dies after restart": "recovered",  # restart_agent fails to stick: recover_data, escalate
    "retired and back": "healthy",  # unretire, then a verified sync
}
RESTART_LOG = "restart-commands.log"  # on each host: one line per restart command started
INTERRUPTED = re.compile(r"attempt (\d+) already ran")


def inject(sim: SimCluster, host_id: str, fault: str) -> None:
    if fault == "agent dead":
        sim.kill_agent(host_id)
    elif fault == "agent wedged":
        sim.wait_for(lambda: sim.host(host_id).agent_pid, 10, 0.05, f"{host_id}'s agent up")
        sim.wedge_agent(host_id)
    elif fault == "agent dies after restart":
        sim.agent_dies_after_restart(host_id)
    elif fault == "retired and back":
        sim.retired_host_back_online(host_id)
        return
    sim.make_critical(host_id)


def claimed_attempts(stack: Stack, host_id: str, steps: set[str]) -> dict[tuple[str, str, int], float]:
    """Every attempt of ``steps`` the audit shows, as (ladder, step, attempt) -> time of its first entry.

    An attempt's first entry is its outcome (``ran``/``failed``/``declined``, written after the action),
    or, when its worker was killed before that, the ``resumed`` entry of the worker that took over."""
    first: dict[tuple[str, str, int], float] = {}
    for entry in stack.audit(host_id):
        if entry["step"] not in steps:
            continue
        if entry["outcome"] in ("ran", "failed", "declined"):
            attempt = entry.get("attempt")
        elif entry["outcome"] == "resumed":
            attempt = int(INTERRUPTED.search(entry["detail"]).group(1))
        else:
            continue
        first.setdefault((entry["ladder_id"], entry["step"], int(attempt)), entry["ts"])
    return first


def intent_markers(stack: Stack, host_id: str, steps: set[str]) -> set[tuple[str, str, int]]:
    """The (ladder, step, attempt) intent markers claimed in Redis (SET NX before a step acts); a
    marker is named ladder:rung:step:attempt."""
    found = set()
    for key in stack.conn.scan_iter(keys.DONE.format(host_id, "*")):
        ladder_id, _rung, step, attempt = key.decode().rsplit(":", 4)[1:]
        if step in steps:
            found.add((ladder_id, step, int(attempt)))
    return found


def per_attempt(windows: dict[tuple[str, str, int], float], actions: list[float]) -> dict[Any, int]:
    """How many actions (host-side times) fall in each attempt's window.

    Attempts of one host run one after another under its lock, so they partition time: attempt k's
    action happens after attempt k-1's first audit entry and before attempt k's own. An action after
    the last attempt's entry belongs to no recorded attempt (key ``None``)."""
    order = sorted(windows.items(), key=lambda kv: kv[1])
    counts: dict[Any, int] = {key: 0 for key, _ in order}
    for at in actions:
        owner = next((key for key, end in order if at <= end + 0.002), None)
        counts[owner] = counts.get(owner, 0) + 1
    return counts


def ran(stack: Stack, host_id: str, step: str) -> set[tuple[str, str, int]]:
    return {
        (e["ladder_id"], step, int(e["attempt"]))
        for e in stack.audit(host_id)
        if e["step"] == step and e["outcome"] == "ran"
    }


def assert_at_most_once_per_attempt(
    stack: Stack, host_id: str, steps: set[str], actions: list[float], applied: int, why: str
) -> None:
    """The guarantee, proved per host from three independent records: the intent markers in Redis, the
    audit trail, and what the host or coordinator saw (``actions``: when each one started; ``applied``:
    the sim's counter of those that took effect)."""
    windows = claimed_attempts(stack, host_id, steps)
    assert set(windows) == intent_markers(stack, host_id, steps), f"{why}: audit and markers disagree"
    counts = per_attempt(windows, actions)
    assert counts.get(None, 0) == 0, f"{why}: an action outside every recorded attempt: {counts}"
    assert all(n <= 1 for n in counts.values()), f"{why}: an attempt acted twice: {counts}"
    done = set().union(*(ran(stack, host_id, s) for s in steps))
    assert all(counts[key] == 1 for key in done), f"{why}: an attempt recorded as ran did not act"
    assert len(done) <= applied <= len(actions) <= len(windows), (
        f"{why}: ran={len(done)} applied={applied} started={len(actions)} attempts={len(windows)}"
    )


def host_restart_times(sim: SimCluster, host_id: str) -> list[float]:
    log = sim.host(host_id).root / RESTART_LOG
    return [float(line) for line in log.read_text().split()] if log.exists() else []


def import_times(log: Path, host_id: str) -> list[float]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [float(at) for at, host in (line.split() for line in lines) if host == host_id]


def call_times(sim: SimCluster, host_id: str, kinds: set[str]) -> list[float]:
    return [c["at"] for c in sim.calls if c["call"] in kinds and host_id in c["host_ids"]]


def busy_workers(stack: Stack) -> list[Any]:
    """The stack's live worker processes that RQ says are running a job now."""
    busy = {w.pid for w in Worker.all(connection=stack.conn) if w.get_state() == "busy"}
    return [p for p in stack.workers if p.poll() is None and p.pid in busy]


def chaos_run(make_sim_cluster, e2e_stack, tmp_path, seed: int, hosts: int, kills: int) -> None:
    rng = random.Random(seed)
    why = f"seed {seed}"
    sim = make_sim_cluster(hosts=hosts)
    faults = {h: list(FAULTS)[i % len(FAULTS)] for i, h in enumerate(rng.sample(sim.host_ids, hosts))}
    imports_log = tmp_path / "imports.log"
    importer = sim.env()["REMEDIATOR_IMPORT_COMMAND"]
    with e2e_stack(
        sim,
        workers=3,
        # Each command leaves a timestamp where it runs, then lingers a little so kills land inside.
        REMEDIATOR_AGENT_RESTART_COMMAND=(
            f'date +%s.%N >> "$RINGRIFT_HOST_ROOT/{RESTART_LOG}" && '
            "systemctl restart ringrift-sync-agent && sleep 1"
        ),
        REMEDIATOR_IMPORT_COMMAND=(
            f'sh -c \'echo "$(date +%s.%N) $(basename "$0")" >> {imports_log} && sleep 1 && '
            f'exec "$@"\' {{data_dir}} {importer}'
        ),
    ) as stack:
        killed: list[str] = []
        for h, fault in faults.items():
            inject(sim, h, fault)
        stack.post([alert(h) for h in sim.host_ids])
        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 3.0))
            candidates = busy_workers(stack) or [p for p in stack.workers if p.poll() is None]
            victim = candidates[rng.randrange(len(candidates))]
            running_hosts = [h for h in sim.host_ids if stack.host(h).get("status") == "running"]
            kill_worker(victim)
            killed.append(f"worker {stack.workers.index(victim)} while {running_hosts} ran")
            stack.start_worker()
        why += f"; faults {faults}; kills: {killed}"
        states = {h: stack.wait_finished(h, timeout=150) for h in sim.host_ids}
        for h, fault in faults.items():
            steps = stack.steps(h)
            outcome = states[h]["outcome"]
            interrupted = [e for e in stack.audit(h) if e["outcome"] == "resumed" and e["step"] != "sweeper"]
            # A kill may cost a step both of its attempts; the ladder then climbs. It never fails,
            # retires or stops, and without an interrupted attempt it reaches exactly the expected end.
            allowed = {FAULTS[fault]} if not interrupted else {FAULTS[fault], "recovered", "escalated"}
            assert outcome in allowed, f"{why}: {h} ({fault}) ended {outcome}: {steps}"
            assert_at_most_once_per_attempt(
                stack,
                h,
                {"restart_agent"},
                host_restart_times(sim, h),
                sim.counts(h)["agent_restarts"],
                f"{why}: {h} restarts",
            )
            assert_at_most_once_per_attempt(
                stack,
                h,
                {"recover_data"},
                import_times(imports_log, h),
                sim.counts(h)["imports"],
                f"{why}: {h} imports",
            )
            assert_at_most_once_per_attempt(
                stack,
                h,
                {"unretire"},
                call_times(sim, h, {"unretire"}),
                sim.counts(h)["unretires"],
                f"{why}: {h} unretires",
            )
            # force_sync requests come from force_sync and from unretire (which asks for a sync).
            assert_at_most_once_per_attempt(
                stack,
                h,
                {"force_sync", "unretire"},
                call_times(sim, h, {"sync"}),
                sim.counts(h)["force_syncs"],
                f"{why}: {h} force syncs",
            )
            assert sim.counts(h)["retires"] == 0 and sim.counts(h)["data_loss_records"] == 0, why
            if outcome == "healthy":
                assert sim.state(h) == "healthy" and not sim.retired(h), f"{why}: {h}: {steps}"
        # Shown with a failure: which ladders a sweeper resumed and which attempts a kill interrupted.
        resumed = {h: stack.steps(h).count(("sweeper", "resumed")) for h in sim.host_ids}
        cut = {h: [s for s, o in stack.steps(h) if o == "resumed" and s != "sweeper"] for h in sim.host_ids}
        print(f"{why}; resumed by the sweeper: {resumed}; attempts interrupted: {cut}")
        # Imported games are deduplicated by id: nothing reached the central store twice.
        for h in sim.host_ids:
            assert sim.counts(h)["imported_games"] <= len(sim.host_game_ids(h)), why


SEEDS = (
    [int(os.environ["CHAOS_SEED"])] if os.environ.get("CHAOS_SEED") else ([7, 1113, 2024] if SLOW else [7])
)


@pytest.mark.parametrize("seed", SEEDS)
def test_workers_killed_at_random_points_every_ladder_finishes_and_nothing_is_applied_twice(
    make_sim_cluster, e2e_stack, tmp_path, seed
):
    chaos_run(
        make_sim_cluster,
        e2e_stack,
        tmp_path,
        seed,
        hosts=8 if SLOW else 6,
        kills=10 if SLOW else 4,
    )


# -- SSH faults -------------------------------------------------------------------------------------


def wrong_key_known_hosts(sim: SimCluster, host_id: str, path: Path) -> Path:
    """A known_hosts file right for every host but ``host_id``, whose line carries another host's key."""
    other = next(h for h in sim.host_ids if h != host_id)
    lines = sim.known_hosts_file.read_text().splitlines()
    target = next(
        line
        for line in lines
        if line.startswith(f"[{sim.host(host_id).address}]:{sim.host(host_id).ssh_port} ")
    )
    donor = next(
        line for line in lines if line.startswith(f"[{sim.host(other).address}]:{sim.host(other).ssh_port} ")
    )
    forged = target.split()[0] + " " + " ".join(donor.split()[1:])
    path.write_text("\n".join(forged if line == target else line for line in lines) + "\n")
    return path


def sessions_opened(sim: SimCluster, host_id: str) -> int:
    """Logins the host's sshd accepted (it logs every one)."""
    return sim.host(host_id).paths.sshd_log.read_text(errors="replace").count("Accepted publickey")


def test_refused_hanging_and_wrong_key_hosts_are_unreachable_and_never_touched(
    make_sim_cluster, e2e_stack, tmp_path
):
    sim = make_sim_cluster(hosts=3, selfplay=False)
    refused, hanging, forged = sim.host_ids
    known_hosts = wrong_key_known_hosts(sim, forged, tmp_path / "known_hosts")
    before = known_hosts.read_text()
    with e2e_stack(sim, workers=2, REMEDIATOR_SSH_KNOWN_HOSTS=str(known_hosts)) as stack:
        for h in sim.host_ids:
            sim.kill_agent(h)  # each host needs a restart: only a connection that is trusted may do it
            sim.make_critical(h)
        sim.make_unreachable(refused)
        sim.hang_host(hanging)
        logins = sessions_opened(sim, forged)
        stack.post([alert(h) for h in sim.host_ids])
        expected = {
            refused: "connection refused",
            hanging: "timed out",  # bounded by REMEDIATOR_SSH_CONNECT_TIMEOUT=3
            forged: "host key not verifiable (refused; check known_hosts)",
        }
        for h, reason in expected.items():
            state = stack.wait_finished(h, timeout=60)
            audit = stack.audit(h)
            diag = next(e for e in audit if e["step"] == "diagnose")
            assert diag["facts"]["ssh_reachable"] is False, (h, diag)
            assert diag["sources"]["ssh"] == f"failed: {reason}", (h, diag["sources"])
            assert diag["detail"] == "plan: wait_reachable | escalate", (h, diag["detail"])
            rechecks = [e for e in audit if e["step"] == "wait_reachable" and e["outcome"] == "verify-failed"]
            assert len(rechecks) == 1 and reason in rechecks[0]["ssh_error"], (h, rechecks)
            assert state["outcome"] == "escalated", (h, stack.steps(h))
            steps = {s for s, _ in stack.steps(h)}
            assert not steps & {"restart_agent", "force_sync", "recover_data", "retire"}, (h, steps)
            counts = sim.counts(h)
            assert counts["agent_restarts"] == counts["retires"] == counts["force_syncs"] == 0, (h, counts)
        # The forged key was refused before authentication: no session ever opened, no command ran,
        # and nothing was learned into the known_hosts file.
        assert sessions_opened(sim, forged) == logins
        assert sim.host(forged).agent_pid is None
        assert known_hosts.read_text() == before


def test_wrong_host_key_is_refused_by_asyncssh_and_by_rsync_not_trusted(
    make_sim_cluster, redis_url, tmp_path
):
    sim = make_sim_cluster(hosts=2, selfplay=False)
    h = sim.host_ids[0]
    sim.write_games(h, 3)
    record = HttpCoordinator(sim.coordinator_url, sim.admin_key).host(h)
    good = make_settings(
        redis_url,
        ssh_known_hosts=str(sim.known_hosts_file),
        ssh_key_file=str(sim.ssh_key_file),
        ssh_connect_timeout=3.0,
    )
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    for known_hosts in (wrong_key_known_hosts(sim, h, tmp_path / "known_hosts"), empty):
        before = known_hosts.read_text()
        bad = make_settings(**{**good.__dict__, "ssh_known_hosts": str(known_hosts)})
        logins = sessions_opened(sim, h)
        with pytest.raises(SSHError, match="host key not verifiable"):
            HostSession(bad, record).connect()
        dest = tmp_path / f"recovered-{known_hosts.name}"
        result = rsync_pull(bad, record, dest, timeout=30)
        assert result.exit_status != 0 and result.files_transferred == 0, result
        assert "Host key verification failed" in result.stderr, result.stderr
        assert not any(dest.iterdir())
        assert sessions_opened(sim, h) == logins and known_hosts.read_text() == before
    # The same calls with the right known_hosts do connect and copy: the refusals above are the key's.
    with HostSession(good, record) as session:
        assert session.run("echo OK").stdout.strip() == "OK"
    result = rsync_pull(good, record, tmp_path / "recovered-good", timeout=30)
    assert result.exit_status == 0 and result.files_transferred > 0, result


# -- coordinator faults ------------------------------------------------------------------------------


def slow_rules(tmp_path: Path) -> Path:
    """The fast test rules, but a host (or the coordinator) may stay unreachable for 30 s."""
    from e2e import FAST_RULES

    rules = tmp_path / "rules.yaml"
    text = FAST_RULES.read_text()
    assert "unreachable_escalate_after_minutes: 0.1 " in text
    rules.write_text(
        text.replace("unreachable_escalate_after_minutes: 0.1 ", "unreachable_escalate_after_minutes: 0.5 ")
    )
    return rules


def clear_fault_after(sim: SimCluster, predicate: Any, what: str) -> threading.Thread:
    """Clear the coordinator fault once predicate holds (checked every 50 ms, for at most 60 s)."""

    def run() -> None:
        try:
            wait_for(predicate, timeout=60, what=what)
        finally:
            sim.coordinator_fault(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


COORDINATOR_FAULTS = {
    "503": ({"status": 503}, "HTTP 503"),
    "slow": ({"delay": 2.0}, "ReadTimeout"),  # beyond REMEDIATOR_COORDINATOR_TIMEOUT=0.5
}


@pytest.mark.parametrize("fault", list(COORDINATOR_FAULTS))
def test_coordinator_down_during_diagnosis_waits_rechecks_and_finishes_after_it_clears(
    make_sim_cluster, e2e_stack, tmp_path, fault
):
    sim = make_sim_cluster(hosts=1)
    h = sim.host_ids[0]
    args, error = COORDINATOR_FAULTS[fault]
    with e2e_stack(
        sim,
        REMEDIATOR_RULES_FILE=str(slow_rules(tmp_path)),
        REMEDIATOR_COORDINATOR_TIMEOUT="0.5",
    ) as stack:
        sim.kill_agent(h)
        sim.make_critical(h)
        sim.coordinator_fault(**args)
        stack.post([alert(h)])
        # The fault lasts until the ladder has re-checked the coordinator at least once while down.
        clearer = clear_fault_after(
            sim,
            lambda: "coordinator still unreachable" in (stack.host(h).get("last_verify") or ""),
            "a re-check while the coordinator is down",
        )
        state = stack.wait_finished(h, timeout=90)
        clearer.join()
        audit = stack.audit(h)
        diagnoses = [e for e in audit if e["step"] == "diagnose"]
        # Bounded retries, then a clear audit entry saying why nothing is known ...
        assert (
            diagnoses[0]["sources"]["coordinator"]
            == f"error: GET /sync/hosts failed after 3 attempts: {error}"
        )
        assert diagnoses[0]["detail"] == "plan: wait_reachable | escalate"
        wait = next(e for e in audit if e["step"] == "wait_reachable" and e["outcome"] == "ran")
        assert wait["detail"] == "coordinator unavailable during diagnosis: waiting to diagnose again"
        # ... with backoff between the attempts (0.5 s, then 1 s), as the worker logged it ...
        log = (tmp_path / "worker0.log").read_text()
        assert (
            "coordinator GET /sync/hosts failed" in log
            and "retrying in 0.5s" in log
            and "retrying in 1.0s" in log
        )
        # ... then, once it answers, a fresh diagnosis and the right step: the host is healthy.
        assert ("wait_reachable", "verify-ok") in stack.steps(h)
        assert len(diagnoses) == 2 and diagnoses[1]["facts"]["agent_running"] is False
        assert state["outcome"] == "healthy", stack.steps(h)
        assert ("escalate", "ran") not in stack.steps(h)
        counts = sim.counts(h)
        assert counts["agent_restarts"] == 1 and counts["retires"] == 0 and counts["imports"] == 0, counts


@pytest.mark.parametrize("fault", list(COORDINATOR_FAULTS))
def test_coordinator_down_during_force_sync_rechecks_instead_of_climbing(make_sim_cluster, e2e_stack, fault):
    sim = make_sim_cluster(hosts=1)
    h = sim.host_ids[0]
    args, error = COORDINATOR_FAULTS[fault]
    marker = f"sleep 1.{'53' if fault == '503' else '57'}"
    with e2e_stack(
        sim,
        REMEDIATOR_COORDINATOR_TIMEOUT="0.5",
        # The restart lingers, so the fault can start while it runs: force_sync comes next.
        REMEDIATOR_AGENT_RESTART_COMMAND=f"systemctl restart ringrift-sync-agent && {marker}",
    ) as stack:
        sim.kill_agent(h)
        sim.make_critical(h)
        stack.post([alert(h)])
        wait_for(lambda: running(marker), timeout=30, what="the restart to run")
        sim.coordinator_fault(**args)
        clearer = clear_fault_after(
            sim,
            lambda: any(e.get("coordinator_error") for e in stack.audit(h) if e["step"] == "force_sync"),
            "force_sync to meet the fault",
        )
        state = stack.wait_finished(h, timeout=90)
        clearer.join()
        audit = stack.audit(h)
        down = next(e for e in audit if e["step"] == "force_sync" and e["outcome"] == "ran")
        assert down["sync_requested"] is False and error in down["coordinator_error"], down
        assert "coordinator unavailable" in down["detail"]
        # The coordinator was down, not the host: no climb to recover_data, no escalation, no retirement.
        assert state["outcome"] == "healthy", stack.steps(h)
        steps = {s for s, _ in stack.steps(h)}
        assert not steps & {"recover_data", "escalate", "retire"}, stack.steps(h)
        counts = sim.counts(h)
        assert counts["agent_restarts"] == 1 and counts["retires"] == 0 and counts["imports"] == 0, counts


def test_coordinator_client_retries_5xx_with_backoff_and_never_repeats_a_timed_out_post(make_sim_cluster):
    sim = make_sim_cluster(hosts=1, selfplay=False)
    h = sim.host_ids[0]
    client = HttpCoordinator(sim.coordinator_url, sim.admin_key, timeout=0.5)
    sim.coordinator_fault(status=503)
    with pytest.raises(CoordinatorUnavailable, match="failed after 3 attempts: HTTP 503"):
        client.force_sync(h)
    assert sim.counts(h)["force_syncs"] == 0  # a 503 is a refusal: nothing applied
    # A slow coordinator applies a POST the client has given up on: sending it again would apply it
    # twice (a second training-log entry here), so a timed-out POST is reported, not repeated.
    sim.coordinator_fault(delay=1.5)
    record = {"host_id": h, "games_lost": 3, "first_game_at": None, "last_game_at": None, "checklist": {}}
    with pytest.raises(CoordinatorUnavailable, match="not retried"):
        client.record_data_loss(record)
    with pytest.raises(CoordinatorUnavailable, match="failed after 3 attempts: ReadTimeout"):
        client.hosts()  # reads are safe to repeat
    sim.wait_for(lambda: sim.counts(h)["data_loss_records"], 10, 0.05, "the slow call to land")
    sim.coordinator_fault(None)
    time.sleep(1.6)  # any repeat would have landed by now
    assert sim.counts(h)["data_loss_records"] == 1
    assert client.host(h) is not None  # and it answers again once the fault clears
