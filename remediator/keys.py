"""Redis key templates, namespaced like rq's (``'rq:failed:{0}'``).

A host id is validated before it is ever formatted into one of these (see ``hosts.validate_host_id``).
"""

PREFIX = "remediator"

LOCK = PREFIX + ":lock:{0}"  # string: the token of the worker holding host {0}
FENCE = PREFIX + ":fence:{0}"  # integer: incremented on every lock acquisition (fencing token)
HOST = PREFIX + ":host:{0}"  # hash: state of host {0}'s ladder (step, outcome, job ids, ...)
AUDIT = PREFIX + ":audit:{0}"  # list of JSON entries: host {0}'s audit trail, oldest first
ACTIVE = PREFIX + ":active:{0}"  # string: id of the ladder job queued or running for host {0}
CANCEL = PREFIX + ":cancel:{0}"  # string: why host {0}'s ladder must stop (resolved alert, ...)
DONE = PREFIX + ":done:{0}:{1}"  # string: step {1} of ladder attempt key already committed for host {0}
HOSTS = PREFIX + ":hosts"  # sorted set: host ids by last update time (unix seconds)
LADDER_STARTS = PREFIX + ":ladder-starts:{0}"  # sorted set: ladder start times for host {0}
FLEET_CRITICAL = PREFIX + ":fleet:critical"  # sorted set: host id -> time it was last seen critical
FLEET = PREFIX + ":fleet"  # hash: fleet view (storm active, network ok, provider ok, ...)
PAUSED = PREFIX + ":paused"  # set: hosts on which the remediator paused selfplay
INCIDENT = PREFIX + ":incident:{0}"  # hash: open page {0} (dedup key, hosts, time opened)
INCIDENTS = PREFIX + ":incidents"  # set: open incident dedup keys
FLEET_LOCK = PREFIX + ":lock:fleet"  # string: lock held while the fleet escalation is evaluated
SWEEP_LOCK = PREFIX + ":lock:sweeper"  # string: held by the one worker sweeping for dead ladders
INVENTORY = PREFIX + ":inventory:{0}"  # JSON: host {0}'s last inventory, kept across ladders
SCRATCH = PREFIX + ":scratch:{0}:{1}"  # hash: what ladder {1} of host {0} has remembered so far
