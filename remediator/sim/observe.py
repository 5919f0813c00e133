"""What a test (or the demo) reads of a ``SimCluster``: the coordinator's view of a host, its games on
disk and centrally, the mutation counters and calls the remediator caused. A mixin of
``remediator.sim.cluster.SimCluster``; it only reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from remediator.sim import agentctl, games
from remediator.sim import coordinator as coord
from remediator.sim import provider as prov
from remediator.sim.store import GameStore

if TYPE_CHECKING:
    from remediator.sim.cluster import SimHost

T = TypeVar("T")
COUNTERS = (
    "agent_restarts",  # (re)starts through systemctl restart/start or start_sync.sh over SSH
    "agent_kills",  # agents stopped through systemctl stop or pkill over SSH
    "force_syncs",  # POST /sync/hosts/<id>/sync requests (also refused ones)
    "imports",  # importer runs for the host
    "imported_games",  # games new to the central store from those runs
    "sync_triggers",  # syncs requested by the importer's --trigger-sync
    "unretires",
    "retires",
    "pauses",
    "resumes",
    "data_loss_records",
    "syncs",  # successful syncs by the agent
    "sync_refusals",  # agent syncs refused because the host is retired
)


class UnsyncedGames(NamedTuple):
    count: int  # type: ignore[assignment]  # shadows tuple.count on purpose: callers read .count
    first_at: float | None  # unix seconds of the oldest unsynced game
    last_at: float | None  # unix seconds of the newest unsynced game


class Observation:
    """Reading the cluster (see the module docstring)."""

    if TYPE_CHECKING:  # what the cluster provides
        _lock: threading.RLock
        _store: GameStore | None
        coordinator: coord.CoordinatorState | None
        provider: prov.ProviderState | None

        def host(self, host_id: str) -> SimHost: ...

    def _record(self, host_id: str) -> coord.HostRecord:
        assert self.coordinator is not None, "the cluster is not started"
        self.host(host_id)
        return self.coordinator.hosts[host_id]

    def last_sync(self, host_id: str) -> float:
        """The coordinator's last_sync of the host (unix seconds)."""
        return self._record(host_id).last_sync

    def state(self, host_id: str) -> str:
        """healthy, lagging or critical, as the coordinator answers it now."""
        assert self.coordinator is not None
        return self.coordinator.state_of(self._record(host_id))

    def retired(self, host_id: str) -> bool:
        return self._record(host_id).retired

    def instance_state(self, host_id: str) -> str:
        """running, stopped or terminated, as the provider knows it."""
        assert self.provider is not None
        self.host(host_id)
        return self.provider.instances[host_id].state

    def unsynced_games(self, host_id: str) -> UnsyncedGames:
        """Games on the host created after the coordinator's last_sync, computed locally."""
        found = games.games_since(self.host(host_id).data_dir, self.last_sync(host_id))
        if not found:
            return UnsyncedGames(0, None, None)
        times = [g.created_at for g in found]
        return UnsyncedGames(len(found), min(times), max(times))

    def host_game_ids(self, host_id: str) -> set[str]:
        """Every game id on the host's disk."""
        return {g.game_id for g in games.games_since(self.host(host_id).data_dir, 0.0)}

    def central_game_ids(self, host_id: str | None = None) -> set[str]:
        """Game ids in the coordinator's central store (of one host, or of all)."""
        assert self._store is not None, "the cluster is not started"
        return self._store.game_ids(host_id)

    def counts(self, host_id: str) -> dict[str, int]:
        """Mutation counters of the host (see COUNTERS); missing ones are 0."""
        assert self.coordinator is not None
        host = self.host(host_id)
        found = dict.fromkeys(COUNTERS, 0)
        with self.coordinator.lock:
            found.update(self.coordinator.counters.get(host_id, {}))
        found["agent_restarts"] = agentctl.count(host.paths, agentctl.AGENT_RESTARTS)
        found["agent_kills"] = agentctl.count(host.paths, agentctl.AGENT_KILLS)
        return found

    @property
    def calls(self) -> list[dict[str, Any]]:
        """Every force-sync request and admin call the coordinator got, in order."""
        assert self.coordinator is not None
        with self.coordinator.lock:
            return list(self.coordinator.calls)

    def coordinator_arrivals(self) -> list[float]:
        """The unix time of every request the coordinator got from outside the sim: the contract's calls
        (GET /sync/hosts and /metrics included), not the agents' syncs."""
        assert self.coordinator is not None
        with self.coordinator.lock:
            return list(self.coordinator.arrivals)

    def provider_listings(self) -> dict[str, int]:
        """Full instance listings each provider API was asked for (a Vast.ai listing's first page)."""
        assert self.provider is not None
        with self.provider.lock:
            return dict(self.provider.listings)

    @property
    def data_loss_records(self) -> list[dict[str, Any]]:
        assert self.coordinator is not None
        with self.coordinator.lock:
            return list(self.coordinator.data_loss)

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = ""
    ) -> T:
        """Poll predicate until it returns something truthy (returned); TimeoutError after timeout s."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"not true after {timeout} s: {what or predicate}")
            time.sleep(interval)
