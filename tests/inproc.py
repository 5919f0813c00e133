"""RQ workers in the test process, on a virtual clock, that can be SIGKILLed at any call.

``Driver`` runs the remediator's RQ jobs in-process the way rq's own tests do (the job functions,
through ``Job.perform``, with the job's status kept as a worker keeps it), against the real Redis of
the ``redis_url`` fixture:

- **Workers that can be killed.** Each ``Worker`` has its own Redis connection pool. A kill (the
  fault layer's ``kill`` at a call) marks the worker dead and raises ``WorkerKilled`` (a
  BaseException): from then on every command its connections send fails with ``WorkerDead``, so no
  ``finally`` and no ``except`` of the dying job reaches Redis -- its host lock stays until its TTL, its
  job stays ``started``, exactly as after a real SIGKILL -- and the sweeper must resume the ladder.
- **Redis faults.** The same connections consult the fault plan before each command
  (``redis.<COMMAND>``): refused, timeout, applied-then-failed (the reply is lost), kill, stall.
- **Virtual time.** ``install_virtual_time`` gives every ``remediator``/``workers`` module (and
  redis-py's lock and retry) a ``time`` whose ``time()``/``monotonic()``/``sleep()`` are the world's
  clock, and ``intake`` a ``datetime`` on it, so scheduled checks, deadlines and backoffs run on
  virtual seconds. Redis TTLs run on real time: every time the clock moves, ``age_keys`` shortens
  (or expires) every key whose TTL is under a day by the virtual seconds that passed -- except the
  host locks of live workers, which a live worker renews (a stalled or killed worker's lock ages and
  expires like a real one). Keys with longer TTLs cannot expire within a sequence.
- **Scheduled jobs** are moved to the queue when the virtual clock reaches them (``move_due``, as rq's
  scheduler does), and ``advance`` steps the clock from one due job or sweep to the next, running the
  queue until it is quiet at each step (workers are always there to take work), with the sweeper
  every ``SWEEP_EVERY`` virtual seconds.
"""

from __future__ import annotations

import importlib
import pkgutil
import time as real_time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from faults import FaultHooks, FaultPlan, WorkerKilled
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from rq.utils import utcformat
from world import VirtualClock

SWEEP_EVERY = 5.0  # virtual seconds between sweeps (the worker's Sweeper thread: workers/sweeper.py)
RQ_MAINTENANCE_INTERVAL = 30.0  # virtual seconds between rq maintenance passes (WORKER_MAINTENANCE_INTERVAL)
MAX_JOBS_QUIET = 300  # jobs one run_until_quiet may run before it calls it a livelock
AGE_KEYS_BELOW_MS = 86_400_000  # keys with a longer TTL cannot expire within a sequence


# -- virtual time ------------------------------------------------------------------------------------


class VirtualTime:
    """Stands in for the ``time`` module: the clock's time, everything else real."""

    def __init__(self) -> None:
        self.clock: VirtualClock | None = None

    def time(self) -> float:
        return self.clock.now if self.clock else real_time.time()

    def monotonic(self) -> float:
        return self.clock.now if self.clock else real_time.monotonic()

    def sleep(self, seconds: float) -> None:
        if self.clock is None:
            real_time.sleep(seconds)
        else:
            self.clock.advance(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


VIRTUAL = VirtualTime()


class VirtualDatetime(datetime):
    """``datetime`` whose ``now()`` is the virtual clock (intake schedules jobs with it)."""

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return datetime.fromtimestamp(VIRTUAL.time(), tz)

    @classmethod
    def utcnow(cls) -> datetime:  # type: ignore[override]
        return datetime.fromtimestamp(VIRTUAL.time(), UTC).replace(tzinfo=None)


def _product_modules() -> Iterator[Any]:
    import remediator
    import workers

    for package in (remediator, workers):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.startswith(("remediator.sim", "remediator.embedded_redis", "remediator.rules")):
                continue
            if info.name in ("remediator.__main__", "remediator.demo", "workers.runner"):
                continue
            yield importlib.import_module(info.name)


def install_virtual_time(monkeypatch: Any) -> VirtualTime:
    """Give the product modules (and redis-py's lock and retry) the virtual clock."""
    import redis.lock
    import redis.retry

    for module in _product_modules():
        if getattr(module, "time", None) is real_time:
            monkeypatch.setattr(module, "time", VIRTUAL)
        if getattr(module, "datetime", None) is datetime:
            monkeypatch.setattr(module, "datetime", VirtualDatetime)
    monkeypatch.setattr(redis.lock, "mod_time", VIRTUAL)
    monkeypatch.setattr(redis.retry, "sleep", VIRTUAL.sleep)
    return VIRTUAL


# -- killable workers --------------------------------------------------------------------------------


class WorkerDead(redis.exceptions.RedisError):
    """The worker's process is gone: nothing it sends reaches Redis (not retried by redis-py)."""


@dataclass(eq=False)
class Worker:
    name: str
    driver: Driver
    dead: bool = False
    stalled: bool = False
    conn: redis.Redis = field(init=False)

    def __post_init__(self) -> None:
        handle = self

        class KillableConnection(redis.Connection):
            def send_command(self, *args: Any, **kwargs: Any) -> None:
                handle.before(args)
                super().send_command(*args, **kwargs)

            def pack_commands(self, commands: Any) -> Any:
                for command in commands:
                    handle.before(command)
                return super().pack_commands(commands)

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                handle.alive()
                super().send_packed_command(command, check_health)

            def read_response(self, *args: Any, **kwargs: Any) -> Any:
                handle.alive()
                response = super().read_response(*args, **kwargs)
                handle.after(self)
                return response

        pool = redis.ConnectionPool.from_url(self.driver.redis_url, connection_class=KillableConnection)
        self.conn = redis.Redis(connection_pool=pool)
        self._lose_reply = 0
        self._kill_after_reply = False

    def alive(self) -> None:
        if self.dead:
            raise WorkerDead(f"worker {self.name} was killed")

    def before(self, command: Any) -> None:
        self.alive()
        if not self.driver.redis_faults_on or not command:
            return
        raw = command[0]
        name = "redis." + (raw.decode() if isinstance(raw, bytes) else str(raw)).upper()
        fault = self.driver.plan.take(name)
        if fault is None:
            return
        self.driver.log.new(name, "wire", {"command": name}, fault.kind)
        kind = fault.kind
        if kind == "kill":
            self.driver.kill()
        elif kind == "refused":
            raise redis.ConnectionError(f"Error 111 connecting to redis (injected at {name})")
        elif kind == "timeout":
            self.driver.advance_clock(5.0)
            raise redis.TimeoutError(f"Timeout reading from redis (injected at {name})")
        elif kind in ("applied_then_failed", "kill_after"):
            self._lose_reply += 1
            self._kill_after_reply = kind == "kill_after"
        elif kind == "slow":
            self.driver.advance_clock(fault.seconds)
        elif kind == "stall":
            self.driver.stall(fault.seconds)

    def after(self, connection: redis.Connection) -> None:
        if self._lose_reply:
            self._lose_reply -= 1
            if self._kill_after_reply:
                self._kill_after_reply = False
                self.driver.kill()
            connection.disconnect()
            raise redis.ConnectionError("Connection closed by server (after the command ran)")

    def close(self) -> None:
        self.conn.connection_pool.disconnect()


@dataclass
class Running:
    worker: Worker
    job: Job | None
    kind: str  # ladder | discover | cleanup | sweeper | other
    host: str | None = None
    ladder_id: str | None = None


@dataclass
class JobRun:
    """What became of one job run (for invariants and failure messages)."""

    job_id: str
    func: str
    args: tuple[Any, ...]
    worker: str
    at: float
    outcome: str  # finished | failed | killed
    result: Any = None


class Driver(FaultHooks):
    """Runs the remediator's jobs, sweeps and the clock, and answers the fault layer's hooks."""

    def __init__(
        self,
        redis_url: str,
        settings: Any,
        clock: VirtualClock,
        plan: FaultPlan,
        log: Any,
        *,
        age_keys: bool = True,
    ) -> None:
        self.redis_url = redis_url
        self.settings = settings
        self.clock = clock
        self.plan = plan
        self.log = log
        self.conn = redis.Redis.from_url(redis_url)
        self.queue = Queue(settings.queue, connection=self.conn)
        self.scheduled_key = ScheduledJobRegistry(queue=self.queue).key
        self.stack: list[Running] = []
        self.idle: list[Worker] = []
        self.workers = 0
        self.runs: list[JobRun] = []
        self.kills: list[dict[str, Any]] = []
        self.stalls: list[dict[str, Any]] = []
        self.lock_owners: dict[str, list[str]] = {}  # host lock key -> tokens, in acquisition order
        self.live_locks: dict[str, tuple[Any, Worker]] = {}  # lock key -> (HostLock, its worker)
        self.ends: list[dict[str, Any]] = []
        self.orphans: dict[str, float] = {}  # killed jobs -> when rq's maintenance fails them
        self.last_maintenance = clock.now
        self.redis_faults_on = True
        self.snapshot: Callable[[str], Any] = lambda host: None
        self.last_sweep = clock.now
        self._age = self.conn.register_script(AGE_LUA)
        if age_keys:  # on the real clock, Redis ages its keys by itself
            clock.on_advance.append(self._age_keys)
        log.context = self.context

    # -- fault hooks ---------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now

    def advance(self, seconds: float) -> None:
        self.advance_clock(seconds)

    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @property
    def current(self) -> Running | None:
        return self.stack[-1] if self.stack else None

    def kill(self) -> None:
        running = self.current
        if running is None:
            return  # nothing to kill outside a worker
        running.worker.dead = True
        self.kills.append(
            {
                "at": self.clock.now,
                "worker": running.worker.name,
                "job": running.job.id if running.job else None,
                "host": running.host,
                "kind": running.kind,
                "call": self.log.calls[-1].name if self.log.calls else None,
            }
        )
        raise WorkerKilled(f"worker {running.worker.name} SIGKILLed")

    def check_alive(self) -> None:
        running = self.current
        if running is not None and running.worker.dead:
            raise WorkerKilled(f"worker {running.worker.name} is dead")

    def stall(self, seconds: float) -> None:
        """The current worker freezes for ``seconds``: its locks age, other workers go on."""
        running = self.current
        if running is None:
            self.advance_clock(seconds)
            return
        running.worker.stalled = True
        self.stalls.append(
            {
                "job": running.job.id if running.job else None,
                "at": self.clock.now,
                "worker": running.worker.name,
                "host": running.host,
                "seconds": seconds,
                "call": self.log.calls[-1].name if self.log.calls else None,
            }
        )
        try:
            self.run_for(seconds)
        finally:
            running.worker.stalled = False

    # -- locks (HostLock.acquire/release are wrapped by install_lock_tracking) -----------------------
    def lock_acquired(self, lock: Any) -> None:
        running = self.current
        self.lock_owners.setdefault(lock.key, []).append(lock.token)
        if running is not None:
            self.live_locks[lock.key] = (lock, running.worker)

    def lock_released(self, lock: Any) -> None:
        held = self.live_locks.get(lock.key)
        if held is not None and held[0] is lock:
            del self.live_locks[lock.key]

    def lock_token(self, host: str) -> str | None:
        """The token of the host lock the current worker holds (or held) in this job."""
        running = self.current
        if running is None:
            return None
        from remediator import keys

        held = self.live_locks.get(keys.LOCK.format(host))
        if held is not None and held[1] is running.worker:
            return held[0].token
        return None

    def _age_keys(self, before: float, now: float) -> None:
        live = [key for key, (_, worker) in self.live_locks.items() if not worker.dead and not worker.stalled]
        self._age(args=[int((now - before) * 1000), AGE_KEYS_BELOW_MS, *live], client=self.conn)

    # -- the call context ----------------------------------------------------------------------------
    def context(self) -> dict[str, Any]:
        running = self.current
        if running is None:
            return {"worker": None, "kind": "driver"}
        ctx: dict[str, Any] = {
            "worker": running.worker.name,
            "kind": running.kind,
            "job": running.job.id if running.job else None,
            "host": running.host,
            "ladder_id": running.ladder_id,
        }
        if running.kind == "ladder" and running.host:
            from remediator import keys

            fields = ("ladder_id", "step", "attempt", "incident_id", "dry_run", "phase")
            with self.conn.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.HOST.format(running.host), *fields)
                pipe.get(keys.LOCK.format(running.host))
                pipe.get(keys.ACTIVE.format(running.host))
                values, lock_now, active_now = pipe.execute()
            state = {k: (v.decode() if v is not None else None) for k, v in zip(fields, values, strict=True)}
            ctx.update(
                state_ladder=state["ladder_id"],
                step=state["step"],
                attempt=state["attempt"],
                incident=state["incident_id"],
                dry_run=state["dry_run"] == "1",
                phase=state["phase"],
                token=self.lock_token(running.host),
                lock_now=lock_now.decode() if lock_now else None,
                last_owner=(self.lock_owners.get(keys.LOCK.format(running.host)) or [None])[-1],
                active_now=active_now.decode() if active_now else None,
                frozen_now=self._frozen(running.host),
            )
        elif running.kind == "cleanup" and running.job is not None:
            ctx["incident"] = running.job.args[0]
        elif running.kind == "discover" and running.job is not None:
            ctx["dry_run"] = bool(running.job.kwargs.get("dry_run"))
        return ctx

    def _frozen(self, host: str) -> str | None:
        """Why mutating steps on ``host`` must wait now (a freeze, a hold alert), or None."""
        try:
            from remediator import controls
        except ImportError:  # a remediator without operator controls (an older checkout)
            return None
        item = controls.frozen(self.conn, host)
        if item is not None:
            return f"frozen by {item.who}: {item.reason}"
        held = controls.holds(self.conn, host)
        return f"held while {', '.join(held)} fires" if held else None

    # -- workers and jobs ----------------------------------------------------------------------------
    def _worker(self) -> Worker:
        busy = {r.worker for r in self.stack}
        while self.idle:
            worker = self.idle.pop()
            if not worker.dead and worker not in busy:
                return worker
        self.workers += 1
        return Worker(f"w{self.workers}", self)

    def _release(self, worker: Worker) -> None:
        if worker.dead:
            worker.close()
        elif worker not in self.idle:
            self.idle.append(worker)

    @contextmanager
    def running(
        self, kind: str, job: Job | None = None, host: str | None = None, ladder_id: str | None = None
    ) -> Iterator[Running]:
        worker = self._worker()
        entry = Running(worker, job, kind, host, ladder_id)
        self.stack.append(entry)
        try:
            yield entry
        finally:
            self.stack.pop()
            self._release(worker)

    def run_job(self, job_id: str) -> JobRun | None:
        """Run one dequeued job as a worker does: mark it started, perform it, mark it finished or
        failed. Anything of this may meet a Redis fault or a kill, as in a real worker."""
        worker = self._worker()
        entry = Running(worker, None, "other")
        run = JobRun(job_id, "?", (), worker.name, self.clock.now, "finished")
        self.stack.append(entry)
        try:
            job = Job.fetch(job_id, connection=worker.conn)
            run.func = job.func_name.rsplit(".", 1)[-1]
            run.args = tuple(job.args)
            entry.job = job
            entry.kind = {"run_ladder": "ladder", "discover": "discover", "finish_incident": "cleanup"}.get(
                run.func, "other"
            )
            if entry.kind == "ladder":
                entry.host, entry.ladder_id = job.args[0], job.args[1]
            started = datetime.fromtimestamp(self.clock.now, UTC)
            worker.conn.hset(
                job.key,
                mapping={"status": "started", "started_at": utcformat(started), "worker_name": worker.name},
            )
            run.result = job.perform()
            worker.conn.hset(job.key, "status", "finished")
        except NoSuchJobError:
            return None
        except BaseException as exc:
            if worker.dead:
                run.outcome = "killed"
            elif isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            else:
                run.outcome, run.result = "failed", f"{type(exc).__name__}: {exc}"
                try:
                    worker.conn.hset(
                        Job.key_for(job_id), mapping={"status": "failed", "exc_info": run.result[:500]}
                    )
                except (redis.RedisError, WorkerKilled):
                    pass
        finally:
            self.stack.pop()
            self._release(worker)
        self.runs.append(run)
        self._orphaned(job_id)
        return run

    def move_due(self) -> int:
        """Scheduled jobs whose time has come go to the queue (rq's scheduler, on the virtual clock)."""
        due = [i.decode() for i in self.conn.zrangebyscore(self.scheduled_key, 0, self.clock.now)]
        if not due:
            return 0
        with self.conn.pipeline() as pipe:
            for job in Job.fetch_many(due, connection=self.conn):
                if job is not None:
                    self.queue._enqueue_job(job, pipeline=pipe)
            pipe.zrem(self.scheduled_key, *due)
            pipe.execute()
        return len(due)

    def next_due(self) -> float | None:
        first = self.conn.zrange(self.scheduled_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def run_until_quiet(self, limit: int = MAX_JOBS_QUIET) -> int:
        ran = 0
        while True:
            self.move_due()
            raw = self.conn.lpop(self.queue.key)
            if raw is None:
                return ran
            self.run_job(raw.decode())
            ran += 1
            if ran > limit:
                raise Livelock(f"{ran} jobs ran without the clock moving: {self.runs[-5:]}")

    def _orphaned(self, job_id: str) -> None:
        """A job left neither finished nor failed (its worker was killed, or Redis failed it while it
        was marked started or done): rq's maintenance (another worker's) fails it later -- a started
        one once its timeout has passed (StartedJobRegistry), one dequeued but never marked started
        after two passes over the intermediate queue."""
        status, timeout = self.conn.hmget(Job.key_for(job_id), "status", "timeout")
        if status == b"started":
            self.orphans[job_id] = self.clock.now + float(timeout or 180) + 60
        elif status == b"queued":
            self.orphans[job_id] = self.clock.now + 2 * RQ_MAINTENANCE_INTERVAL

    def maintenance(self) -> None:
        """rq's worker maintenance on the virtual clock: orphaned jobs whose time has come fail."""
        self.last_maintenance = self.clock.now
        for job_id, due in list(self.orphans.items()):
            if self.clock.now >= due:
                del self.orphans[job_id]
                key = Job.key_for(job_id)
                if self.conn.hget(key, "status") in (b"started", b"queued"):
                    self.conn.hset(key, mapping={"status": "failed", "exc_info": "orphaned: its worker died"})

    def sweep(self) -> Any:
        from workers.sweeper import sweep

        if self.clock.now >= self.last_maintenance + RQ_MAINTENANCE_INTERVAL:
            self.maintenance()
        self.last_sweep = self.clock.now
        with self.running("sweeper") as entry:
            try:
                return sweep(entry.worker.conn, self.settings)
            except WorkerKilled:
                return "killed"
            except BaseException as exc:
                if entry.worker.dead:
                    return "killed"
                if isinstance(exc, Exception):
                    return f"sweep failed: {type(exc).__name__}: {exc}"  # the Sweeper thread logs, goes on
                raise

    def run_for(self, seconds: float, *, sweeps: bool = True, sweep_every: float = SWEEP_EVERY) -> None:
        """Let ``seconds`` of virtual time pass with workers taking every job when it comes due, and
        the sweeper running every ``sweep_every`` seconds."""
        target = self.clock.now + seconds
        while True:
            self.run_until_quiet()
            if self.clock.now >= target:
                return
            candidates = [target]
            due = self.next_due()
            if due is not None:
                candidates.append(max(due, self.clock.now))
            if sweeps:
                candidates.append(self.last_sweep + sweep_every)
            step = max(min(candidates), self.clock.now)
            if step > self.clock.now:
                self.clock.advance_to(step)
            if sweeps and self.clock.now >= self.last_sweep + sweep_every:
                self.sweep()
            if step == self.clock.now and due is not None and due <= self.clock.now:
                continue


class Livelock(AssertionError):
    """More jobs ran than a quiet queue allows without the clock moving."""


# KEYS: none (every key is examined). ARGV[1]: virtual milliseconds that passed, ARGV[2]: age only keys
# whose TTL is below this, ARGV[3..]: keys not to age (live workers renew them).
AGE_LUA = """
local dt, below = tonumber(ARGV[1]), tonumber(ARGV[2])
local live = {}
for i = 3, #ARGV do live[ARGV[i]] = true end
for _, key in ipairs(redis.call('KEYS', '*')) do
  if not live[key] then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 and ttl < below then
      if ttl <= dt then redis.call('DEL', key) else redis.call('PEXPIRE', key, ttl - dt) end
    end
  end
end
return 0
"""


def install_lock_tracking(monkeypatch: Any, driver_of: Callable[[], Driver | None]) -> None:
    """Wrap HostLock so the driver knows which worker holds which host lock."""
    from remediator.locks import HostLock

    acquire, release = HostLock.acquire, HostLock.release

    def tracked_acquire(self: HostLock) -> int:
        fence = acquire(self)
        driver = driver_of()
        if driver is not None:
            driver.lock_acquired(self)
        return fence

    def tracked_release(self: HostLock) -> bool:
        try:
            return release(self)
        finally:
            driver = driver_of()
            if driver is not None:
                driver.lock_released(self)

    monkeypatch.setattr(HostLock, "acquire", tracked_acquire)
    monkeypatch.setattr(HostLock, "release", tracked_release)


def install_end_tracking(monkeypatch: Any, driver_of: Callable[[], Driver | None]) -> None:
    """Record every attempt to end a ladder: who tried, under which lock token, and whether it ended."""
    from remediator import incidents

    end = incidents.end_ladder

    def tracked(
        conn: Any, host_id: str, ladder_id: str, lock_token: str, outcome: str, *args: Any, **kw: Any
    ) -> Any:
        driver = driver_of()
        ended = end(conn, host_id, ladder_id, lock_token, outcome, *args, **kw)
        if driver is not None:
            from remediator import keys

            running = driver.current
            owners = driver.lock_owners.get(keys.LOCK.format(host_id)) or [None]
            driver.ends.append(
                {
                    "at": driver.clock.now,
                    "host": host_id,
                    "ladder_id": ladder_id,
                    "token": lock_token,
                    "outcome": outcome,
                    "ok": ended.ok,
                    "worker": running.worker.name if running else None,
                    "latest_owner": owners[-1],
                    "world": driver.snapshot(host_id),
                }
            )
        return ended

    monkeypatch.setattr(incidents, "end_ladder", tracked)
