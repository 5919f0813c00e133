"""Default values; every constant says its unit."""

COORDINATOR_URL = "http://localhost:5001"
COORDINATOR_TIMEOUT = 10.0  # seconds, one HTTP call to the coordinator
SSH_CONNECT_TIMEOUT = 10.0  # seconds (runbook: ssh -o ConnectTimeout=10)
SSH_COMMAND_TIMEOUT = 120.0  # seconds a remote command may run
HOST_SYNC_LOG = "/var/log/ringrift/sync.log"
AGENT_CHECK_COMMAND = "pgrep -f sync_agent"
AGENT_RESTART_COMMAND = "systemctl restart ringrift-sync-agent"
# Stop leftover agents (SIGTERM, up to 10 s to exit, then SIGKILL), then ./start_sync.sh in the login
# directory. '[s]ync_agent' matches an agent's command line but not this shell's own, which holds the
# pattern: the runbook's `pkill -f sync_agent && ./start_sync.sh` runs as `sh -c '...'`, and procps
# pkill, which never matches itself, does match that shell and kills it before start_sync.sh runs.
# `;`, not `&&`: pkill exits 1 when no agent runs, and the agent must be started all the same.
AGENT_FALLBACK_COMMAND = (
    "pkill -f '[s]ync_agent'; "
    "for i in 1 2 3 4 5 6 7 8 9 10; do pgrep -f '[s]ync_agent' >/dev/null || break; sleep 1; done; "
    "pkill -KILL -f '[s]ync_agent'; ./start_sync.sh"
)
IMPORT_COMMAND = "python scripts/import_orphaned_databases.py --data-dir {data_dir} --trigger-sync"
RECOVERY_DIR = "/data/recovered"
PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"
MAX_BODY_BYTES = 1024 * 1024  # bytes (1 MiB)
QUEUE = "remediator"
LOCK_TTL = 60.0  # seconds a host lock lives unless renewed
WORKER_MAINTENANCE_INTERVAL = 30  # seconds between RQ maintenance passes, which also restart a
# scheduler process that died (it does on a Redis outage); rq's own default is 10 minutes
# Fleet-wide limits (remediator/limits.py), shared by every worker through Redis.
MAX_SSH_SESSIONS = 64  # SSH sessions (commands and rsync) open at once, fleet-wide
COORDINATOR_CALLS_PER_SECOND = 25  # coordinator HTTP calls in any one second, fleet-wide
PROVIDER_LISTING_SECONDS = 5.0  # seconds one provider listing serves every worker's diagnoses
COORDINATOR_LISTING_SECONDS = 1.0  # seconds one coordinator host listing serves every worker's reads
LIMIT_WAIT_SECONDS = 120.0  # seconds a call waits for its slot under a limit before it gives up
RSYNC_TIMEOUT = 3600  # seconds one rsync of a host's data dir may run (recover_data)
IMPORT_TIMEOUT = 1800  # seconds the import command may run (recover_data)
# Seconds one RQ job may run before RQ kills it: long enough for recover_data's rsync, the two
# inventories and the import in one job, so those steps' own timeouts are the ones that fire.
JOB_TIMEOUT = RSYNC_TIMEOUT + IMPORT_TIMEOUT + 600
JOB_RESULT_TTL = 86400  # seconds a finished job's result is kept
AUDIT_MAX_ENTRIES = 1000  # entries kept per host's audit trail
HOST_KEYS_TTL = 30 * 86400  # seconds a host's state, audit trail and fence outlive its last change
# What a host, the coordinator or a command said is evidence, stored in the audit trail and the host's
# state: store.py cuts it to these sizes (the cut marked "…[truncated N bytes]"), so a hostile or broken
# host cannot make the audit, the API or the status page arbitrarily large.
EVIDENCE_STRING_MAX_BYTES = 2048  # bytes (UTF-8) of one string: a log line, a command's output, an error body
EVIDENCE_LIST_MAX_ITEMS = 50  # items of one list (the newest kept: log tails) or keys of one object
EVIDENCE_MAX_DEPTH = 6  # levels of nested objects and lists kept
AUDIT_ENTRY_MAX_BYTES = 8192  # bytes of one audit entry as stored (JSON), everything included
HOST_FIELD_MAX_BYTES = 8192  # bytes of one field of a host's state hash as stored
AUDIT_PAGE_ENTRIES = 100  # audit entries per page: the status page's timeline, the API's default limit
# Every step of the ladder, in the order the runbook prefers them (wait_reachable runs only when a host
# cannot be reached); workers/steps registers one module for each but diagnose, and
# tests/test_ladder_steps.py keeps the two equal.
LADDER_STEPS: tuple[str, ...] = (
    "diagnose",
    "wait_reachable",
    "force_sync",
    "restart_agent",
    "recover_data",
    "unretire",
    "retire",
    "escalate",
)
# Steps a host's progress shows only when its ladder plans or runs them (most ladders never wait).
CONDITIONAL_STEPS = frozenset({"wait_reachable"})
HOST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
