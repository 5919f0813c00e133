"""Redis key templates, namespaced like rq's (``'rq:failed:{0}'``).

A host id is validated before it is ever formatted into one of these (see ``hosts.validate_host_id``).
Global keys are named so that no per-host template yields them for any valid host id (a host called
``fleet`` or ``sweeper`` must not share a lock with the fleet or the sweeper): tests/test_keys.py
formats every template with every global name and checks.
"""

PREFIX = "remediator"

# -- per host ({0} is a validated host id) -------------------------------------------------------------
LOCK = PREFIX + ":lock:{0}"  # string: the token of the worker holding host {0}
FENCE = PREFIX + ":fence:{0}"  # integer: incremented on every lock acquisition (fencing token)
HOST = PREFIX + ":host:{0}"  # hash: state of host {0}'s ladder (step, outcome, job ids, ...)
AUDIT = PREFIX + ":audit:{0}"  # list of JSON entries: host {0}'s audit trail, oldest first
ACTIVE = PREFIX + ":active:{0}"  # string: id of the ladder job queued or running for host {0}
CANCEL = PREFIX + ":cancel:{0}"  # string: why host {0}'s ladder must stop (resolved alert, ...)
DONE = PREFIX + ":done:{0}:{1}"  # string: step {1} of ladder attempt key already committed for host {0}
LADDER_STARTS = PREFIX + ":ladder-starts:{0}"  # sorted set: ladder start times for host {0}
INVENTORY = PREFIX + ":inventory:{0}"  # JSON: host {0}'s last inventory, kept across ladders
SCRATCH = PREFIX + ":scratch:{0}:{1}"  # hash: what ladder {1} of host {0} has remembered so far
IMPORTED = PREFIX + ":imported:{0}"  # JSON: digest of host {0}'s recovered files last imported
APPROVAL = PREFIX + ":approval:{0}"  # hash: host {0}'s approval request for a step, and its answer
HOST_INCIDENT = PREFIX + ":host-incident:{0}"  # string: id of host {0}'s open incident
HOST_INCIDENTS = PREFIX + ":host-incidents:{0}"  # list: host {0}'s incident ids, oldest first (trimmed)

# -- per incident and per page ({0} is an incident id, or a page's dedup key) -----------------------------
INCIDENT = PREFIX + ":incident:{0}"  # hash: incident {0} (see remediator/incidents.py)
PAGE = PREFIX + ":page:{0}"  # hash: the page with dedup key {0} and its delivery (remediator/paging.py)
PAGE_LOCK = PREFIX + ":page-lock:{0}"  # string: held while page {0} is being delivered
BUDGET = PREFIX + ":budget:{0}"  # sorted set: what budget limit {0} counted in its window
BUDGET_ACK = (
    PREFIX + ":budget-ack:{0}"
)  # string: a human unfroze limit {0}'s trip; not enforced till it expires
LEARNING_TIMES = PREFIX + ":learning:times:{0}"  # list: seconds to healthy of "<signature>|<step>" {0}
LISTING = PREFIX + ":limits:listing:{0}"  # JSON: provider listing {0} ("<provider>:<url digest>"), shared
LISTING_LOCK = PREFIX + ":limits:listing-lock:{0}"  # string: the worker fetching provider listing {0}

# -- per ladder ({0} is a ladder id) -------------------------------------------------------------------
PREFETCH_CLAIM = PREFIX + ":prefetch:claim:{0}"  # string: who diagnoses ladder {0}'s host first (prefetch.py)
PREFETCHED = PREFIX + ":prefetch:diagnosis:{0}"  # JSON: ladder {0}'s first diagnosis, made by a prefetch job

# -- global ------------------------------------------------------------------------------------------------
HOSTS = PREFIX + ":hosts"  # sorted set: host ids by last update time (unix seconds)
OPEN_INCIDENTS = PREFIX + ":incidents:open"  # hash: host id -> its open incident id
CLEANUP = PREFIX + ":incidents:cleanup"  # sorted set: closed incident id -> time its cleanup was due
FLEET_CRITICAL = PREFIX + ":fleet:critical"  # sorted set: host id -> time it was last seen critical
FLEET = PREFIX + ":fleet"  # hash: fleet view (storm active, network ok, provider ok, ...)
FLEET_RISK = PREFIX + ":fleet:risk"  # hash: host id -> "<unsynced games> <1 if not recoverable>"
PAUSED = PREFIX + ":paused"  # set: hosts on which the remediator paused selfplay
PAGES = PREFIX + ":pages"  # set: dedup keys of pages not yet resolved at their pagers
PAGE_TRIGGERS = PREFIX + ":page-triggers"  # sorted set: dedup key -> time its first trigger was sent
FLEET_LOCK = PREFIX + ":fleet:lock"  # string: lock held while the fleet escalation is evaluated
FLEET_PENDING = PREFIX + ":fleet:pending"  # string: an evaluation was asked for since the last one began
FLEET_WAIT = PREFIX + ":fleet:wait"  # string: why callers wait for the evaluation under way (fleet.py)
SWEEP_LOCK = PREFIX + ":sweeper:lock"  # string: held by the one worker sweeping for dead ladders
FREEZES = PREFIX + ":freezes"  # hash: "*" (the fleet) or host id -> its freeze (remediator/controls.py)
SILENCES = PREFIX + ":silences"  # hash: Alertmanager silence id -> the host and ladder it was made for
HOLDS = PREFIX + ":holds"  # hash: "<alertname>|<host id or *>" -> when a hold alert was seen firing
SILENCE_SWEEP_LOCK = PREFIX + ":silences:lock"  # string: held between two sweeps of Alertmanager's silences
MONITOR_LOCK = PREFIX + ":monitor:lock"  # string: held for one interval by the incident monitor's pass
REPLICATION_PROBE = PREFIX + ":replication:probe"  # integer: written before WAIT (connections.py)
PROBE = PREFIX + ":probe"  # hash: the fleet probe's last pass (started_at, finished_at, hosts, ...)
PROBE_HOSTS = PREFIX + ":probe:hosts"  # hash: host id -> JSON of what the last probe pass found
PROBE_LOCK = PREFIX + ":probe:lock"  # string: the token of the worker running a fleet probe pass
LEARNING = PREFIX + ":learning"  # hash: "<signature>|<lead step>|tried|healed" -> ladders counted
SSH_SLOTS = PREFIX + ":limits:ssh"  # sorted set: lease token -> expiry (ms): SSH sessions open fleet-wide
SSH_SLOTS_FREED = PREFIX + ":limits:ssh:freed"  # list: a token per slot freed, for workers waiting on one
SSH_SLOTS_PEAK = PREFIX + ":limits:ssh:peak"  # integer: most SSH sessions open at once (limits.py)
COORDINATOR_CALLS = PREFIX + ":limits:coordinator"  # sorted set: coordinator calls of the last second
COORDINATOR_CALLS_PEAK = PREFIX + ":limits:coordinator:peak"  # integer: most calls in one second (limits.py)
HOSTS_LISTING = PREFIX + ":limits:hosts"  # hash: host id -> its record in the shared coordinator listing
HOSTS_LISTING_AT = PREFIX + ":limits:hosts:at"  # JSON: when that listing's fetch began (or its error)
HOSTS_LISTING_LOCK = PREFIX + ":limits:hosts:lock"  # string: the worker fetching the host listing

PER_HOST: tuple[str, ...]
GLOBAL: tuple[str, ...]
PER_HOST = (LOCK, FENCE, HOST, AUDIT, ACTIVE, CANCEL, DONE, LADDER_STARTS, INVENTORY, SCRATCH)
PER_HOST += (IMPORTED, APPROVAL, HOST_INCIDENT, HOST_INCIDENTS)
GLOBAL = (HOSTS, OPEN_INCIDENTS, CLEANUP, FLEET_CRITICAL, FLEET, PAUSED, PAGES, PAGE_TRIGGERS)
GLOBAL += (FREEZES, HOLDS, SILENCES, FLEET_LOCK, SWEEP_LOCK, SILENCE_SWEEP_LOCK, MONITOR_LOCK)
GLOBAL += (REPLICATION_PROBE, FLEET_PENDING, FLEET_WAIT, FLEET_RISK)
GLOBAL += (PROBE, PROBE_HOSTS, PROBE_LOCK, LEARNING)
GLOBAL += (SSH_SLOTS, SSH_SLOTS_FREED, SSH_SLOTS_PEAK, COORDINATOR_CALLS, COORDINATOR_CALLS_PEAK)
GLOBAL += (HOSTS_LISTING, HOSTS_LISTING_AT, HOSTS_LISTING_LOCK)
