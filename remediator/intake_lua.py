"""The intake's Lua script (``remediator.intake``): every check and write of one alert payload, run by
Redis atomically. Kept apart from the Python that calls it, so each reads on its own.
"""

# The verdicts of INTAKE_LUA, one per distinct host (or discovery) of a payload.
ACCEPTED, ALREADY_ACTIVE, LIMIT_REACHED, HELD, MONITORING, CANCEL_WITHDRAWN, ATTACHED = 0, 1, 2, 3, 4, 5, 6

# One script checks and writes every ladder of a payload. Redis runs a script atomically, so
# concurrent deliveries of one alert cannot both start a ladder for its host, and the whole payload
# costs one round trip and one reply however many alerts it holds (with WATCH/MULTI/EXEC it took
# three round trips and two replies per command). The job is written the way rq's own atomic
# enqueue writes it (rq.scripts.UNIQUE_ENQUEUE_SCRIPT: the job hash, then RPUSH on the queue), plus
# the queue's entry in rq:queues that Queue.enqueue_many adds.
#
# Nothing is half-written: every check runs before the first write, and the first write is a SET or
# ZADD, which Redis refuses when it is out of memory, failing the script before it changed anything
# (a script without flags is checked for memory only at its first write; later writes then go
# through so that it stays atomic). Unpacks are bounded: Lua's unpack stops at about 8,000 values.
INTAKE_LUA = """
-- KEYS[1] hosts index, KEYS[2] rq queue, KEYS[3] rq:queues, KEYS[4] fleet critical sightings,
-- KEYS[5] open incidents index, then 8 per request: active, ladder starts, cancel, host state, audit
-- trail, job hash, host incident pointer, host incident history.
-- ARGV[1] now, [2] limit window start, [3] limit count, [4] starts kept from, [5] audit length,
-- [6] active ttl, [7] discovery ttl, [8] sightings kept from, [9] requests, [10] sighting values,
-- [11] host state field names, [12] incident key prefix, [13] incident ttl, [14] retry_after seconds
-- (-1: never), [15] history kept; then the sightings (score, host id, ...), the host state field
-- names, and per request: kind ('h' host, 'd' discovery), name, ladder id, audit entry, new incident
-- id, force ('1': a human asked), opened_by, number of job hash values, the host state values (kind
-- 'h' only), the job hash's field, value, ...
local n, nsight, nfields = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local prefix, inc_ttl, retry_after = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14])
local now = tonumber(ARGV[1])
local names = 16 + nsight
local at = names + nfields
local limit = tonumber(ARGV[3])
local verdicts, writes, attach = {}, {}, {}
for i = 1, n do
  local k = 5 + (i - 1) * 8
  local kind, nj = ARGV[at], tonumber(ARGV[at + 7])
  local host = at + 8
  local job = host + (kind == 'h' and nfields or 0)
  local w = {k = k, kind = kind, name = ARGV[at + 1], ladder = ARGV[at + 2], audit = ARGV[at + 3],
    new_inc = ARGV[at + 4], force = ARGV[at + 5] == '1', relapse = ARGV[at + 5] == '2',
    gentle = ARGV[at + 5] == '3', by = ARGV[at + 6],
    host = host, job = job, nj = nj}
  at = job + nj
  local inc, state = nil, nil
  if kind == 'h' then
    inc = redis.call('GET', KEYS[k + 7])
    if inc then
      state = redis.call('HGET', prefix .. inc, 'state')
      if not state or state == 'resolved' then inc, state = nil, nil end
    end
  end
  w.inc = inc
  local active = redis.call('GET', KEYS[k + 1])
  if active then
    if kind == 'h' and not w.gentle and redis.call('HGET', KEYS[k + 4], 'gentle') == '1' then
      -- The host went critical while a prevention ladder works on it: the same ladder goes on, now
      -- with the whole runbook (it re-plans at its next boundary, skipping what already failed).
      w.upgrade = true
    end
    if kind == 'h' and inc and redis.call('GET', KEYS[k + 3]) == active and not w.force then
      -- A resolve asked this ladder to stop and the alert fires again: the ladder goes on. Not when a
      -- human closed the incident (it is closed already, inc is nil): a human's stop stands.
      verdicts[i] = {5, active}
      w.withdraw, w.active = true, active
    else
      verdicts[i] = {1, active}
    end
    attach[#attach + 1] = w
  elseif inc and w.gentle then
    -- A warning never starts a ladder for a host whose incident is open: what prevention could do was
    -- tried (or a critical ladder did more); the critical alert, or a human, takes it from here.
    verdicts[i] = {6, inc}
    attach[#attach + 1] = w
  elseif inc and not w.force and (state == 'held' or (state == 'monitoring' and not w.relapse))
      and not (state == 'held' and retry_after >= 0
      and now - tonumber(redis.call('HGET', prefix .. inc, 'held_since') or now) >= retry_after) then
    verdicts[i] = {state == 'held' and 3 or 4, inc}
    attach[#attach + 1] = w
  else
    local recent = 0
    if kind == 'h' then recent = redis.call('ZCOUNT', KEYS[k + 2], ARGV[2], '+inf') end
    if kind == 'h' and recent >= limit then
      verdicts[i] = {2, tostring(recent)}
      w.limited = true
      attach[#attach + 1] = w
    else
      verdicts[i] = {0, inc or w.new_inc}
      if kind == 'h' then
        if w.force then w.ladder_kind = 'manual'
        elseif w.gentle then w.ladder_kind = 'prevent'
        elseif state == 'held' then w.ladder_kind = 'retry'
        elseif state == 'monitoring' then w.ladder_kind = 'relapse'
        elseif inc then w.ladder_kind = 'retry'
        else w.ladder_kind = 'first' end
      end
      writes[#writes + 1] = w
    end
  end
end
local function open_incident(w, state)
  local id = w.new_inc
  local ikey = prefix .. id
  redis.call('HSET', ikey, 'id', id, 'host_id', w.name, 'state', state, 'opened_at', ARGV[1],
    'opened_by', w.by, 'alerts', w.force and 0 or 1, 'last_alert_at', ARGV[1])
  redis.call('EXPIRE', ikey, inc_ttl)
  redis.call('SET', KEYS[w.k + 7], id, 'EX', inc_ttl)
  redis.call('HSET', KEYS[5], w.name, id)
  redis.call('RPUSH', KEYS[w.k + 8], id)
  redis.call('LTRIM', KEYS[w.k + 8], -tonumber(ARGV[15]), -1)
  redis.call('EXPIRE', KEYS[w.k + 8], inc_ttl)
  return id
end
for _, w in ipairs(attach) do
  if w.kind == 'h' then
    if w.inc and not w.force and not w.relapse then
      -- An alert attaches (counted); a human's refused request or a relapse check writes nothing.
      local ikey = prefix .. w.inc
      redis.call('HINCRBY', ikey, 'alerts', 1)
      redis.call('HSET', ikey, 'last_alert_at', ARGV[1])
      redis.call('EXPIRE', ikey, inc_ttl)
      redis.call('EXPIRE', KEYS[w.k + 7], inc_ttl)
      if w.withdraw then redis.call('HDEL', ikey, 'resolve_requested_at') end
      if not w.gentle then redis.call('HSET', ikey, 'critical', '1') end
    elseif w.limited and not w.inc then
      -- The backstop refused a ladder: the problem is still recorded, held for a human.
      local id = open_incident(w, 'held')
      redis.call('HSET', prefix .. id, 'held_since', ARGV[1], 'held_reason', 'ladder limit reached')
    end
    if w.upgrade then
      redis.call('HSET', KEYS[w.k + 4], 'gentle', '0', 'upgraded', '1')
    end
    if w.withdraw then
      redis.call('DEL', KEYS[w.k + 3])
      redis.call('HDEL', KEYS[w.k + 4], 'cancel_reason')
      local entry = cjson.encode({ts = now, step = 'intake', outcome = 'cancel-withdrawn', job_id = w.active,
        detail = 'the alert fires again before the ladder stopped: the ladder goes on'})
      if redis.call('RPUSH', KEYS[w.k + 5], entry) > tonumber(ARGV[5]) then
        redis.call('LTRIM', KEYS[w.k + 5], -tonumber(ARGV[5]), -1)
      end
    end
  end
end
local hosts, ladders, audit_max = {}, {}, tonumber(ARGV[5])
for _, w in ipairs(writes) do
  local k = w.k
  if w.kind == 'd' then
    redis.call('SET', KEYS[k + 1], w.ladder, 'EX', ARGV[7])
  else
    redis.call('SET', KEYS[k + 1], w.ladder, 'EX', ARGV[6])
    redis.call('DEL', KEYS[k + 3], KEYS[k + 4])
    redis.call('ZADD', KEYS[k + 2], ARGV[1], w.ladder)
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', ARGV[4])
    redis.call('EXPIRE', KEYS[k + 2], inc_ttl)
    local inc = w.inc or open_incident(w, 'remediating')
    local ikey = prefix .. inc
    redis.call('HSET', ikey, 'state', 'remediating', 'ladder_id', w.ladder,
      'ladder:' .. w.ladder, cjson.encode({ladder_id = w.ladder, started_at = now, kind = w.ladder_kind,
      reason = w.by}))
    redis.call('HDEL', ikey, 'held_since', 'held_reason', 'healthy_since')
    redis.call('EXPIRE', ikey, inc_ttl)
    local state = {}
    for f = 0, nfields - 1 do
      state[2 * f + 1] = ARGV[names + f]
      state[2 * f + 2] = ARGV[w.host + f]
    end
    redis.call('HSET', KEYS[k + 4], unpack(state))
    redis.call('HSET', KEYS[k + 4], 'incident_id', inc)
    if not w.gentle then redis.call('HSET', ikey, 'critical', '1') end
    redis.call('EXPIRE', KEYS[k + 4], inc_ttl)
    if redis.call('RPUSH', KEYS[k + 5], w.audit) > audit_max then
      redis.call('LTRIM', KEYS[k + 5], -audit_max, -1)
    end
    redis.call('EXPIRE', KEYS[k + 5], inc_ttl)
    hosts[#hosts + 1] = ARGV[1]
    hosts[#hosts + 1] = w.name
  end
  redis.call('HSET', KEYS[k + 6], unpack(ARGV, w.job, w.job + w.nj - 1))
  ladders[#ladders + 1] = w.ladder
end
for s = 1, #hosts, 1000 do
  redis.call('ZADD', KEYS[1], unpack(hosts, s, math.min(s + 999, #hosts)))
end
for s = 1, #ladders, 1000 do
  redis.call('RPUSH', KEYS[2], unpack(ladders, s, math.min(s + 999, #ladders)))
end
if #ladders > 0 then redis.call('SADD', KEYS[3], KEYS[2]) end
for s = 16, 15 + nsight, 1000 do
  redis.call('ZADD', KEYS[4], unpack(ARGV, s, math.min(s + 999, 15 + nsight)))
end
if nsight > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[8]) end
return verdicts
"""
