"""The incidents' Lua scripts (``remediator.incidents``): resolving, closing and a ladder's end, each
one atomic step in Redis. Kept apart from the Python that calls them, so each reads on its own.
"""

# Closing an incident, shared by the scripts below. Expects locals: inc (id), ikey (its key), now, by,
# why, and KEYS host_incident (hkey), open index (okey), cleanup set (ckey), audit (akey); ttl, audit_max.
_CLOSE = """
local function close_incident(inc, ikey, hkey, okey, ckey, akey, host, now, by, why, ttl, entry, audit_max)
  redis.call('HSET', ikey, 'state', 'resolved', 'closed_at', now, 'closed_by', by, 'close_reason', why,
    'cleanup', 'pending')
  -- The host leaves the fleet window with its incident: a closed problem must not keep (or start) a
  -- storm while the recovery bookkeeping runs.
  redis.call('ZREM', KEYS[#KEYS], host)
  redis.call('EXPIRE', ikey, ttl)
  if redis.call('GET', hkey) == inc then redis.call('DEL', hkey) end
  if redis.call('HGET', okey, host) == inc then redis.call('HDEL', okey, host) end
  redis.call('ZADD', ckey, now, inc)
  if redis.call('RPUSH', akey, entry) > audit_max then redis.call('LTRIM', akey, -audit_max, -1) end
  redis.call('EXPIRE', akey, ttl)
end
"""

# A resolved alert. KEYS: host_incident, open index, cleanup, audit, active, cancel, host state, and
# (last, for every script using _CLOSE) the fleet window.
# ARGV: host, now, prefix of incident keys, ttl, audit_max, closed entry, cancel entry, cancel reason,
# active ttl, '1' when the alert is a warning (rules alerts.prevent). Returns {0} nothing open (nothing
# is written), {1, ladder} cancel requested, {2, incident} closed now.
RESOLVE_LUA = (
    _CLOSE
    + """
local inc = redis.call('GET', KEYS[1])
local active = redis.call('GET', KEYS[5])
if not inc and not active then return {0, ''} end
if ARGV[10] == '1' then
  -- A warning resolved: it ends only what warnings started (a prevention ladder, an incident no
  -- critical alert joined), never a critical ladder or incident.
  if active and redis.call('HGET', KEYS[7], 'gentle') ~= '1' then return {0, ''} end
  if not active and redis.call('HGET', ARGV[3] .. inc, 'critical') == '1' then return {0, ''} end
end
local ttl, audit_max = tonumber(ARGV[4]), tonumber(ARGV[5])
if active then
  redis.call('SET', KEYS[6], active, 'EX', ARGV[9])
  redis.call('HSET', KEYS[7], 'cancel_reason', ARGV[8])
  if redis.call('RPUSH', KEYS[4], ARGV[7]) > audit_max then redis.call('LTRIM', KEYS[4], -audit_max, -1) end
  if inc then redis.call('HSET', ARGV[3] .. inc, 'resolve_requested_at', ARGV[2]) end
  return {1, active}
end
close_incident(inc, ARGV[3] .. inc, KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], 'alert',
  'the alert resolved', ttl, ARGV[6], audit_max)
return {2, inc}
"""
)

# A human (or the coordinator's healthy reports) closes the host's open incident; a running ladder is
# asked to stop at its next step boundary. KEYS as RESOLVE_LUA; ARGV: host, now, prefix, ttl,
# audit_max, closed entry, by, why, active ttl, expected incident id ('' any).
# Returns {0} nothing open, {2, incident, ladder or ''} closed.
CLOSE_LUA = (
    _CLOSE
    + """
local inc = redis.call('GET', KEYS[1])
if not inc or (ARGV[10] ~= '' and inc ~= ARGV[10]) then return {0, '', ''} end
local active = redis.call('GET', KEYS[5]) or ''
if active ~= '' then
  redis.call('SET', KEYS[6], active, 'EX', ARGV[9])
  redis.call('HSET', KEYS[7], 'cancel_reason', ARGV[8])
end
close_incident(inc, ARGV[3] .. inc, KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[7],
  ARGV[8], tonumber(ARGV[4]), ARGV[6], tonumber(ARGV[5]))
return {2, inc, active}
"""
)

# A ladder ends. Only the ladder that owns the host, under the lock it still holds, may end it; a
# "stopped" end also needs its cancel still pending (a firing alert may have withdrawn it).
# KEYS: active, cancel, lock, host state, host_incident, open index, cleanup, audit, worker metrics,
# fleet window.
# ARGV: ladder, lock token, outcome, now, prefix, ttl, audit_max, closed entry, detail, nfields,
# host state field, value, ..., the incident's next state, the ladder's end audit entry, its metric field.
# Returns {1, incident or '', new state} ended; {0} superseded or lock lost; {-1} cancel withdrawn.
END_LUA = (
    _CLOSE
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0, '', ''} end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return {0, '', ''} end
local outcome, now = ARGV[3], ARGV[4]
if outcome == 'stopped' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return {-1, '', ''} end
redis.call('DEL', KEYS[1], KEYS[2])
local n = tonumber(ARGV[10])
if n > 0 then redis.call('HSET', KEYS[4], unpack(ARGV, 11, 10 + 2 * n)) end
-- The ladder's last audit entry and its count in the metrics land with its end, never before or after.
if redis.call('RPUSH', KEYS[8], ARGV[12 + 2 * n]) > tonumber(ARGV[7]) then
  redis.call('LTRIM', KEYS[8], -tonumber(ARGV[7]), -1)
end
redis.call('HINCRBYFLOAT', KEYS[9], ARGV[13 + 2 * n], 1)
local function record_end(ikey)
  local ref = redis.call('HGET', ikey, 'ladder:' .. ARGV[1])
  if ref then
    local entry = cjson.decode(ref)
    entry['outcome'] = outcome
    entry['detail'] = ARGV[9]
    entry['finished_at'] = tonumber(now)
    redis.call('HSET', ikey, 'ladder:' .. ARGV[1], cjson.encode(entry))
  end
end
local inc = redis.call('GET', KEYS[5])
if not inc then
  -- The incident was closed under the running ladder (by a human): its record still gets the end.
  local closed = redis.call('HGET', KEYS[4], 'incident_id')
  if closed then record_end(ARGV[5] .. closed) end
  return {1, '', ''}
end
local ikey = ARGV[5] .. inc
record_end(ikey)
local state = ARGV[11 + 2 * n]
if state == 'resolved' then
  close_incident(inc, ikey, KEYS[5], KEYS[6], KEYS[7], KEYS[8], redis.call('HGET', ikey, 'host_id'), now,
    'alert', 'the alert resolved; the ladder stopped', tonumber(ARGV[6]), ARGV[8], tonumber(ARGV[7]))
elseif state == 'monitoring' then
  redis.call('HSET', ikey, 'state', state, 'healthy_since', now)
  redis.call('HDEL', ikey, 'held_since', 'held_reason')
elseif state == 'held' then
  redis.call('HSET', ikey, 'state', state, 'held_since', now, 'held_reason', 'ladder ended ' .. outcome)
else
  redis.call('HSET', ikey, 'state', state)
  redis.call('HDEL', ikey, 'held_since', 'held_reason')
end
redis.call('EXPIRE', ikey, tonumber(ARGV[6]))
return {1, inc, state}
"""
)
