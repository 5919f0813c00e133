"""Host locks: SET NX PX with a fencing counter; renewed while held; lost when taken; released once."""

from __future__ import annotations

import time

import pytest

from remediator import keys
from remediator.exceptions import InvalidHostId, LockLost, LockNotAcquired
from remediator.locks import HostLock


def test_one_worker_holds_a_host_and_a_second_is_refused(redis_conn):
    first = HostLock(redis_conn, "h1", ttl=5, renew=False)
    first.acquire()
    with pytest.raises(LockNotAcquired):
        HostLock(redis_conn, "h1", ttl=5, renew=False).acquire()
    HostLock(redis_conn, "h2", ttl=5, renew=False).acquire()  # another host is another lock
    assert first.release() is True
    HostLock(redis_conn, "h1", ttl=5, renew=False).acquire()


def test_every_acquisition_gets_a_higher_fence_and_the_fence_expires_with_the_host(redis_conn):
    fences = []
    for _ in range(3):
        lock = HostLock(redis_conn, "h1", ttl=5, renew=False)
        fences.append(lock.acquire())
        lock.release()
    assert fences == sorted(fences) and len(set(fences)) == 3
    assert redis_conn.ttl(keys.FENCE.format("h1")) > 0


def test_a_held_lock_is_renewed_past_its_ttl(redis_conn):
    lock = HostLock(redis_conn, "h1", ttl=1.0)  # the shortest: renewed every third of a second
    lock.acquire()
    try:
        time.sleep(2.5)  # a test, not a worker: the renewal thread must keep the lock alive meanwhile
        lock.check()
        assert redis_conn.get(keys.LOCK.format("h1")) == lock.token.encode()
    finally:
        lock.release()


def test_a_lock_taken_over_is_lost_and_check_says_so_before_the_next_mutation(redis_conn):
    lock = HostLock(redis_conn, "h1", ttl=5, renew=False)
    lock.acquire()
    redis_conn.set(keys.LOCK.format("h1"), "another-worker")  # expired and taken by someone else
    with pytest.raises(LockLost):
        lock.check()
    assert lock.renew() is False
    # Releasing a lock that is no longer ours deletes nothing: the other worker keeps it.
    assert lock.release() is False
    assert redis_conn.get(keys.LOCK.format("h1")) == b"another-worker"


def test_a_lock_whose_ttl_ran_out_is_lost(redis_conn):
    lock = HostLock(redis_conn, "h1", ttl=1.0, renew=False)
    lock.acquire()
    redis_conn.pexpire(keys.LOCK.format("h1"), 1)
    time.sleep(0.05)
    with pytest.raises(LockLost):
        lock.check()


def test_a_host_id_that_is_not_valid_never_becomes_a_lock_key(redis_conn):
    with pytest.raises(InvalidHostId):
        HostLock(redis_conn, "../fleet", ttl=5)
