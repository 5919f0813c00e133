"""A storm's first diagnoses made ahead, many hosts at a time (workers/prefetch.py), against real sshds."""

from __future__ import annotations

import json
import time

import pytest
from rq import Queue
from rq.job import Job

from remediator import keys, store
from remediator.config import Settings
from remediator.intake import (
    LADDER_JOB,
    PREFETCH_CHUNK,
    PREFETCH_JOB,
    PREFETCH_MIN_HOSTS,
    LadderRequest,
    start_ladders,
)
from workers import prefetch
from workers.context import Context
from workers.diagnose import diagnose
from workers.prefetch import diagnose_many, diagnosis_for
from workers.state import LadderState

QUEUE = "remediator"


@pytest.fixture
def ctx(sim_cluster, redis_url, redis_conn, monkeypatch) -> Context:
    for key, value in {**sim_cluster.env(), "REDIS_URL": redis_url}.items():
        monkeypatch.setenv(key, value)
    return Context(Settings.from_env(), redis_conn)


def ladders(conn, host_ids) -> list[tuple[str, str]]:
    """Start a ladder per host as the receiver does (their jobs are not run); (host, ladder id) each."""
    result = start_ladders(conn, QUEUE, [LadderRequest(host_id=h, reason="test") for h in host_ids])
    return [(a["host_id"], a["ladder_id"]) for a in result.accepted]


def state_of(conn, host_id: str) -> LadderState:
    return LadderState.from_hash(store.get_host(conn, host_id))


def test_a_prefetched_diagnosis_is_its_ladder_s_first_used_once_and_later_ones_are_the_ladder_s_own(
    sim_cluster, ctx
):
    started = ladders(ctx.conn, sim_cluster.host_ids)
    assert diagnose_many(ctx, started) == {"diagnosed": 3, "claimed": 0, "failed": 0, "not waiting": 0}
    host = sim_cluster.host_ids[0]
    sim_cluster.make_unreachable(host)  # after the prefetch: what the ladder gets shows who diagnosed
    before = time.time()

    diag, diagnosed_at = diagnosis_for(ctx, host, state_of(ctx.conn, host))
    assert diag.ssh_reachable is True and "prefetch" in diag.sources, diag.sources
    assert diag.at >= state_of(ctx.conn, host).started_at  # made after the ladder began
    assert diagnosed_at <= before  # made ahead, not now

    # Taken once: the next first diagnosis asked for (a resumed job) is made now, over SSH.
    again, again_at = diagnosis_for(ctx, host, state_of(ctx.conn, host))
    assert again.ssh_reachable is False and "prefetch" not in again.sources
    assert again_at >= before


def test_a_diagnosis_after_the_first_is_the_ladder_s_own_even_with_one_prefetched(sim_cluster, ctx):
    host = sim_cluster.host_ids[0]
    ((_, ladder_id),) = started = ladders(ctx.conn, [host])
    diagnose_many(ctx, started)
    state = state_of(ctx.conn, host)
    state.facts = {"ssh_reachable": True}  # the ladder is past its first diagnosis (verifying a step)
    diag, _ = diagnosis_for(ctx, host, state)
    assert "prefetch" not in diag.sources
    assert ctx.conn.exists(keys.PREFETCHED.format(ladder_id))  # left alone (it expires)


def test_a_prefetch_diagnoses_only_hosts_whose_ladder_waits_for_its_first_diagnosis(sim_cluster, ctx):
    started = ladders(ctx.conn, sim_cluster.host_ids)
    host = sim_cluster.host_ids[0]
    diag, _ = diagnosis_for(ctx, host, state_of(ctx.conn, host))  # the ladder came first: its claim
    assert "prefetch" not in diag.sources
    assert diagnose_many(ctx, started) == {"diagnosed": 2, "claimed": 1, "failed": 0, "not waiting": 0}
    store.update_host(ctx.conn, sim_cluster.host_ids[1], facts=json.dumps({"ssh_reachable": True}))
    store.update_host(ctx.conn, sim_cluster.host_ids[2], status="finished")
    ctx.conn.set(keys.CANCEL.format(host), started[0][1])  # its alert resolved: the ladder is stopping
    # Facts committed, the ladder ended, or it is being stopped: nothing to prefetch.
    assert diagnose_many(ctx, started) == {"diagnosed": 0, "claimed": 0, "failed": 0, "not waiting": 3}


def test_a_prefetch_that_never_delivers_holds_the_ladder_only_until_its_claim_lapses(
    sim_cluster, ctx, monkeypatch
):
    monkeypatch.setattr(prefetch, "CLAIM_TTL", 1)
    host = sim_cluster.host_ids[0]
    ((_, ladder_id),) = ladders(ctx.conn, [host])
    # A prefetch job claimed the host and was killed before storing anything.
    ctx.conn.set(keys.PREFETCH_CLAIM.format(ladder_id), prefetch.PREFETCH, ex=1)
    began = time.monotonic()
    diag, _ = diagnosis_for(ctx, host, state_of(ctx.conn, host))
    assert diag.ssh_reachable is True and "prefetch" not in diag.sources
    assert time.monotonic() - began >= 0.5  # it waited for the prefetch, then diagnosed the host itself


@pytest.mark.parametrize("which", ["another ladder", "before the ladder began", "unreadable"])
def test_a_stored_diagnosis_not_made_for_this_ladder_after_it_began_is_never_used(sim_cluster, ctx, which):
    host = sim_cluster.host_ids[0]
    ((_, ladder_id),) = ladders(ctx.conn, [host])
    sim_cluster.make_unreachable(host)
    old = diagnose(ctx, sim_cluster.host_ids[1])  # reachable: would read as "reachable" if it were used
    old.host_id = host
    stored = {"ladder_id": ladder_id, "done_at": time.time(), "diagnosis": old.__dict__}
    if which == "another ladder":
        stored["ladder_id"] = "0" * 32
    elif which == "before the ladder began":
        stored["diagnosis"] = {**old.__dict__, "at": state_of(ctx.conn, host).started_at - 60}
    else:
        stored["diagnosis"] = {**old.__dict__, "at": "soon"}
    ctx.conn.set(keys.PREFETCHED.format(ladder_id), json.dumps(stored, default=str))
    diag, _ = diagnosis_for(ctx, host, state_of(ctx.conn, host))
    assert diag.ssh_reachable is False and "prefetch" not in diag.sources


def test_a_storm_s_prefetch_jobs_are_queued_ahead_of_its_ladders_and_a_few_hosts_get_none(redis_conn):
    hosts = [f"gpu-{i:03d}" for i in range(PREFETCH_CHUNK + 6)]
    started = ladders(redis_conn, hosts)
    queue = Queue(QUEUE, connection=redis_conn)
    jobs = [Job.fetch(job_id, connection=redis_conn) for job_id in queue.job_ids]
    assert [j.func_name for j in jobs[:2]] == [PREFETCH_JOB, PREFETCH_JOB]
    assert {j.func_name for j in jobs[2:]} == {LADDER_JOB} and len(jobs) == 2 + len(hosts)
    # The first chunk first, in the order the ladders were queued; every accepted ladder in one.
    chunks = [[tuple(pair) for pair in j.args[0]] for j in jobs[:2]]
    assert chunks == [started[:PREFETCH_CHUNK], started[PREFETCH_CHUNK:]]

    redis_conn.flushall()
    ladders(redis_conn, hosts[: PREFETCH_MIN_HOSTS - 1])
    assert {Job.fetch(j, connection=redis_conn).func_name for j in queue.job_ids} == {LADDER_JOB}
