"""Defaults of the simulated cluster; every constant says its unit.

The thresholds are small so that tests see a host go lagging and critical in seconds, not hours.
"""

LAGGING_AFTER = 3.0  # seconds since the last sync before a host is "lagging"
CRITICAL_AFTER = 6.0  # seconds since the last sync before a host is "critical"
SYNC_INTERVAL = 1.0  # seconds between two syncs of a healthy sync agent
GAME_INTERVAL = 2.0  # seconds between two game files written by a host's self-play
GAMES_PER_FILE = 3  # games in one game file (one SQLite database)
TRIGGER_POLL = 0.1  # seconds between two looks of an agent for a force-sync request
DIES_AFTER = 0.5  # seconds an agent with the "dies after restart" fault lives
STARTUP_TIMEOUT = 30.0  # seconds the cluster may take to come up before start() fails
STOP_TIMEOUT = 5.0  # seconds a process gets after SIGTERM before SIGKILL
PORT_ATTEMPTS = 5  # ports tried for a host's sshd when another process takes the picked one first
PROVIDERS = ("vast", "lambda")  # assigned to hosts in turn
VAST_FIRST_INSTANCE_ID = 7_000_001  # Vast.ai instance ids are integers
VAST_PAGE_LIMIT = 25  # rows per page of Vast.ai's /api/v1/instances/ unless the client asks otherwise
# The fleet-scale sim (remediator/sim/fleet.py): 1,000 hosts share two cores with the remediator, so
# its agents sync less often (100 syncs a second fleet-wide) and its hosts play fewer games.
FLEET_SYNC_INTERVAL = 10.0  # seconds between two syncs of a healthy virtual agent
FLEET_LAGGING_AFTER = 30.0  # seconds since the last sync before a fleet host is "lagging"
FLEET_CRITICAL_AFTER = 60.0  # seconds since the last sync before a fleet host is "critical"
FLEET_GAME_INTERVAL = 30.0  # seconds between two game files of a fleet host's self-play
FLEET_HOSTS_PER_SERVER = 250  # hosts one SSH server process serves
VIRTUAL_PID_BASE = 5_000_000  # virtual agents' pids start here: above Linux's largest pid (4,194,304)
