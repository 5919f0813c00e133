"""Operator controls: freeze, maintenance holds, the blast-radius budget and approval before a step.

An SRE lets a robot act on the fleet only if they can stop it at once, bound what it may do, and keep
the irreversible steps for a human. Everything here is state in Redis (it survives restarts), read by
the ladder at each mutating step's boundary: a frozen or held step waits on a scheduled re-check (no
worker is held), while diagnosis, the audit and pages go on.

- **Freeze**: fleet-wide (field ``*``) or for one host, now or in a window (``starts_at``/``ends_at``,
  a maintenance window); every change audited with who and why.
- **Holds**: alerts in the rules' ``alerts.hold`` that are firing (a maintenance alert): fleet-wide
  without a ``host_id`` label, that host's with one.
- **Budget**: the rules' ``budget.limits``, checked and spent atomically just before a mutating step
  runs; exceeding one trips a fleet-wide freeze whose reason names it (and pages once), which stays
  until a human unfreezes. Unfreezing a budget freeze is the human's "go on": the limit that tripped is
  not enforced again until its window has passed (ACK_CONCURRENT for a concurrency limit).
- **Approval**: a step the rules name waits in ``awaiting_approval`` until a human approves or
  denies it (``remediator approve``), or until the rules' timeout, when the ladder escalates.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from remediator import keys, store
from remediator.connections import text
from remediator.rules.types import BudgetLimit

FLEET = "*"  # the freeze of the whole fleet (never a valid host id)
CONTROLS = "_controls"  # the audit trail of operator controls (never a valid host id)
RUNNING_TTL = 6 * 3600.0  # seconds a step counts as running for a concurrency limit at most
ACK_CONCURRENT = 600  # seconds a concurrency limit a human unfroze is not enforced
APPROVAL_TTL = 7 * 86400  # seconds an approval request or answer is kept


@dataclass(frozen=True)
class Freeze:
    scope: str  # FLEET or a host id
    reason: str
    who: str
    at: float
    starts_at: float | None = None
    ends_at: float | None = None
    source: str = "human"  # "human", or "budget" when a budget limit tripped it
    limit: str | None = None  # the budget limit that tripped it
    ack_seconds: float | None = None  # how long unfreezing it lets that limit be exceeded

    def active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return (self.starts_at is None or now >= self.starts_at) and (
            self.ends_at is None or now < self.ends_at
        )

    def expired(self, now: float | None = None) -> bool:
        return self.ends_at is not None and (time.time() if now is None else now) >= self.ends_at

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "active": self.active(),
            "host_id": None if self.scope == FLEET else self.scope,
        }


def _freeze(raw: bytes | str) -> Freeze:
    return Freeze(**json.loads(raw))


def freezes(conn: redis.Redis) -> list[Freeze]:
    """Every freeze in force or scheduled (expired ones are dropped), the fleet's first."""
    now = time.time()
    found: list[Freeze] = []
    expired: list[Freeze] = []
    for raw in conn.hvals(keys.FREEZES):
        item = _freeze(raw)
        (expired if item.expired(now) else found).append(item)
    if expired:
        conn.hdel(keys.FREEZES, *[f.scope for f in expired])
    return sorted(found, key=lambda f: (f.scope != FLEET, f.scope))


def frozen(conn: redis.Redis, host_id: str | None = None) -> Freeze | None:
    """The freeze that stops mutating steps on this host now (the fleet's first), or None."""
    scopes = [FLEET] if host_id is None else [FLEET, host_id]
    now = time.time()
    for raw in conn.hmget(keys.FREEZES, scopes):
        if raw is not None and (item := _freeze(raw)).active(now):
            return item
    return None


def freeze(
    conn: redis.Redis,
    *,
    reason: str,
    who: str,
    host_id: str | None = None,
    starts_at: float | None = None,
    ends_at: float | None = None,
    source: str = "human",
) -> Freeze:
    """Freeze the fleet (or one host), now or for a window; replaces a freeze of the same scope."""
    item = Freeze(host_id or FLEET, reason, who, round(time.time(), 3), starts_at, ends_at, source)
    conn.hset(keys.FREEZES, item.scope, json.dumps(asdict(item)))
    store.append_audit(conn, CONTROLS, "freeze", "set", reason, **item.as_dict())
    return item


def freeze_page_key(item: Freeze) -> str:
    """The dedup key of the page a budget freeze sends (one per trip)."""
    return f"remediator/freeze/{int(item.at * 1000)}"


def unfreeze(conn: redis.Redis, *, who: str, host_id: str | None = None) -> Freeze | None:
    """Lift the freeze of the fleet (or one host); None when there was none. Lifting a freeze the
    budget tripped starts every budget window afresh: a human looked and said go on."""
    scope = host_id or FLEET
    raw = conn.hget(keys.FREEZES, scope)
    if raw is None:
        return None
    item = _freeze(raw)
    conn.hdel(keys.FREEZES, scope)
    if item.source == "budget" and item.limit:
        conn.set(keys.BUDGET_ACK.format(item.limit), who, ex=max(1, int(item.ack_seconds or ACK_CONCURRENT)))
    store.append_audit(
        conn, CONTROLS, "freeze", "lifted", f"unfrozen by {who}", **item.as_dict(), lifted_by=who
    )
    return item


# -- holds: maintenance alerts --------------------------------------------------------------------------


def hold_alert(conn: redis.Redis, alertname: str, host_id: str | None, firing: bool) -> None:
    """Record a hold alert firing (or resolved) for a host, or for the fleet without a host."""
    name = f"{alertname}|{host_id or FLEET}"
    if firing:
        conn.hset(keys.HOLDS, name, f"{time.time():.3f}")
    else:
        conn.hdel(keys.HOLDS, name)


def holds(conn: redis.Redis, host_id: str | None = None) -> list[str]:
    """Hold alerts firing for the fleet, or for this host."""
    found = []
    for raw in conn.hkeys(keys.HOLDS):
        name, _, scope = text(raw).rpartition("|")
        if scope in (FLEET, host_id):
            found.append(name if scope == FLEET else f"{name} ({scope})")
    return sorted(found)


def holds_all(conn: redis.Redis) -> dict[str, list[str]]:
    """Scope (FLEET or a host id) -> the hold alerts firing for it."""
    out: dict[str, list[str]] = {}
    for raw in conn.hkeys(keys.HOLDS):
        name, _, scope = text(raw).rpartition("|")
        out.setdefault(scope, []).append(name)
    return out


# -- budget ---------------------------------------------------------------------------------------------

# KEYS[1] freezes; then one per limit: its window; then one per limit: its acknowledgement.
# ARGV[1] now, [2] member (ladder:step:attempt), [3] host, [4] freeze json (reason filled per limit by
# %s), [5] limits; per limit: name, kind ('rate', 'concurrent', 'hosts'), allowed, window seconds.
# Returns '' when spent, or the name of the limit that tripped (and the freeze is set).
_SPEND = """
local now = tonumber(ARGV[1])
local member, host, n = ARGV[2], ARGV[3], tonumber(ARGV[5])
for i = 1, n do
  local at = 6 + (i - 1) * 4
  local name, kind, allowed, window = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local key = KEYS[1 + i]
  -- enforced unless acknowledged: a human unfroze this limit's trip, skipped until its window has passed
  if redis.call('EXISTS', KEYS[1 + n + i]) == 0 then
    -- 'concurrent' entries are scored with their expiry, the others with when they were spent;
    -- 'hosts' counts distinct hosts, the others ladder steps
    local cutoff, entry = now - window, member
    if kind == 'concurrent' then cutoff = now end
    if kind == 'hosts' then entry = host end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    if not redis.call('ZSCORE', key, entry) and redis.call('ZCARD', key) >= allowed then
      redis.call('HSETNX', KEYS[1], '*', string.format(ARGV[4], name))
      return name
    end
  end
end
for i = 1, n do
  local at = 6 + (i - 1) * 4
  local kind, window = ARGV[at + 1], tonumber(ARGV[at + 3])
  if kind == 'concurrent' then
    redis.call('ZADD', KEYS[1 + i], now + window, member)
  elseif kind == 'hosts' then
    redis.call('ZADD', KEYS[1 + i], now, host)
  else
    redis.call('ZADD', KEYS[1 + i], now, member)
  end
  redis.call('EXPIRE', KEYS[1 + i], math.ceil(window) + 60)
end
return ''
"""
_spend_script: Any = None


def _kind(limit: BudgetLimit) -> tuple[str, int, float]:
    if limit.concurrent is not None:
        return "concurrent", limit.concurrent, RUNNING_TTL
    if limit.distinct_hosts is not None:
        return "hosts", limit.distinct_hosts, float(limit.per_minutes or 0) * 60
    return "rate", int(limit.max or 0), float(limit.per_minutes or 0) * 60


def describe(limit: BudgetLimit) -> str:
    what = limit.step or "mutating steps"
    if limit.concurrent is not None:
        return f"{what} at most {limit.concurrent} at once"
    if limit.distinct_hosts is not None:
        return f"at most {limit.distinct_hosts} hosts acted on per {limit.per_minutes:g} min"
    return f"{what} at most {limit.max} per {limit.per_minutes:g} min"


def spend(
    conn: redis.Redis, limits: tuple[BudgetLimit, ...], *, step: str, host_id: str, member: str
) -> BudgetLimit | None:
    """Count this action against every limit it falls under, or trip the freeze; returns the limit
    that tripped (nothing was counted then), or None. Idempotent per ``member``."""
    global _spend_script
    applicable = [limit for limit in limits if limit.counts(step) or limit.distinct_hosts is not None]
    if not applicable:
        return None
    if _spend_script is None:
        _spend_script = conn.register_script(_SPEND)
    now = time.time()
    template = Freeze(FLEET, "%s", "budget", round(now, 3), source="budget")
    args: list[Any] = [f"{now:.3f}", member, host_id, json.dumps(asdict(template)), len(applicable)]
    for limit in applicable:
        kind, allowed, window = _kind(limit)
        args += [limit.name, kind, allowed, window]
    tripped = _spend_script(
        keys=[
            keys.FREEZES,
            *[keys.BUDGET.format(limit.name) for limit in applicable],
            *[keys.BUDGET_ACK.format(limit.name) for limit in applicable],
        ],
        args=args,
        client=conn,
    )
    name = tripped.decode() if isinstance(tripped, bytes) else tripped
    if not name:
        return None
    limit = next(limit for limit in applicable if limit.name == name)
    # The freeze's reason names the limit (the script wrote it with the bare name: fill in the rest).
    raw = conn.hget(keys.FREEZES, FLEET)
    if raw is not None and (item := _freeze(raw)).source == "budget" and item.reason == name:
        reason = f"budget limit {name!r} exceeded: {describe(limit)}"
        kind, _, window = _kind(limit)
        ack = ACK_CONCURRENT if kind == "concurrent" else window
        conn.hset(
            keys.FREEZES,
            FLEET,
            json.dumps({**asdict(item), "reason": reason, "limit": name, "ack_seconds": ack}),
        )
        store.append_audit(conn, CONTROLS, "freeze", "set", reason, **{**item.as_dict(), "reason": reason})
    return limit


def release(conn: redis.Redis, limits: tuple[BudgetLimit, ...], *, step: str, member: str) -> None:
    """The step ended: it no longer counts against a concurrency limit."""
    for limit in limits:
        if limit.concurrent is not None and limit.counts(step):
            conn.zrem(keys.BUDGET.format(limit.name), member)


# -- approval --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    host_id: str
    ladder_id: str
    step: str
    state: str  # pending, approved, denied
    asked_at: float
    decided_at: float | None = None
    who: str | None = None
    reason: str | None = None


def approval(conn: redis.Redis, host_id: str) -> Approval | None:
    raw = conn.hgetall(keys.APPROVAL.format(host_id))
    if not raw:
        return None
    data = {text(k): text(v) for k, v in raw.items()}
    return Approval(
        host_id=host_id,
        ladder_id=data["ladder_id"],
        step=data["step"],
        state=data["state"],
        asked_at=float(data["asked_at"]),
        decided_at=float(data["decided_at"]) if data.get("decided_at") else None,
        who=data.get("who") or None,
        reason=data.get("reason") or None,
    )


def ask(conn: redis.Redis, host_id: str, ladder_id: str, step: str) -> tuple[Approval, bool]:
    """The approval for this ladder's step: the existing one, or a new pending request (True)."""
    current = approval(conn, host_id)
    if current is not None and current.ladder_id == ladder_id and current.step == step:
        return current, False
    key = keys.APPROVAL.format(host_id)
    now = round(time.time(), 3)
    conn.delete(key)
    conn.hset(
        key, mapping={"ladder_id": ladder_id, "step": step, "state": "pending", "asked_at": f"{now:.3f}"}
    )
    conn.expire(key, APPROVAL_TTL)
    return Approval(host_id, ladder_id, step, "pending", now), True


def decide(conn: redis.Redis, host_id: str, *, approve: bool, who: str, reason: str) -> Approval | None:
    """A human answers the host's pending approval request; None when none is pending."""
    key = keys.APPROVAL.format(host_id)
    with conn.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.hget(key, "state") != b"pending":
                return None
            pipe.multi()
            pipe.hset(
                key,
                mapping={
                    "state": "approved" if approve else "denied",
                    "decided_at": f"{time.time():.3f}",
                    "who": who,
                    "reason": reason,
                },
            )
            pipe.execute()
        except redis.WatchError:
            return None
    found = approval(conn, host_id)
    assert found is not None
    store.append_audit(
        conn, host_id, "approval", found.state, reason, who=who, step=found.step, ladder_id=found.ladder_id
    )
    return found


def forget_approval(conn: redis.Redis, host_id: str, ladder_id: str) -> None:
    """The ladder ended: its request (answered or not) goes with it."""
    key = keys.APPROVAL.format(host_id)
    if conn.hget(key, "ladder_id") == ladder_id.encode():
        conn.delete(key)
