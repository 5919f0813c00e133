"""A simulated RingRift cluster for tests, benchmarks and the demo.

``SimCluster`` starts a coordinator (the DESIGN.md contract), one real OpenSSH ``sshd`` per host with a
sync agent, self-play game files and command shims, fake Vast.ai and Lambda Cloud APIs, and offers
fault injection. See ``remediator.sim.cluster`` for the layout; its pytest fixtures
are in ``tests/sim_fixtures.py`` (the product never imports pytest).
``remediator.sim.fleet.FleetCluster`` is the same cluster at fleet scale (1,000 hosts on shared SSH
server processes and one agent engine); import it from there.
"""

from remediator.sim.cluster import COUNTERS, SimCluster, SimHost, UnsyncedGames
from remediator.sim.errors import SimError

__all__ = ["COUNTERS", "SimCluster", "SimError", "SimHost", "UnsyncedGames"]
