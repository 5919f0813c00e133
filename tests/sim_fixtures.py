"""pytest fixtures for the simulated cluster: a tests plugin (tests/conftest.py lists it in pytest_plugins).

``sim_cluster``: a started 3-host ``SimCluster`` under the test's tmp_path, stopped afterwards; give
``@pytest.mark.parametrize("sim_cluster", [5], indirect=True)`` (a host count) or
``[{"hosts": 2, "critical_after": 4.0}]`` (SimCluster options) to change it.
``make_sim_cluster``: a factory, ``make_sim_cluster(hosts=N, **options)``, for several or custom clusters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from remediator.sim.cluster import SimCluster


@pytest.fixture
def make_sim_cluster(tmp_path: Path) -> Iterator[Callable[..., SimCluster]]:
    """Start SimClusters on demand; every one is stopped at teardown, also when the test failed."""
    started: list[SimCluster] = []

    def make(hosts: int = 3, **options: Any) -> SimCluster:
        sim = SimCluster(hosts=hosts, root=tmp_path / f"sim{len(started)}", **options)
        started.append(sim)
        return sim.start()

    yield make
    for sim in reversed(started):
        sim.stop()


@pytest.fixture
def sim_cluster(request: pytest.FixtureRequest, make_sim_cluster: Callable[..., SimCluster]) -> SimCluster:
    """A started SimCluster (3 hosts unless parametrized with a host count or an options dict)."""
    param = getattr(request, "param", None)
    if param is None:
        return make_sim_cluster()
    if isinstance(param, int):
        return make_sim_cluster(hosts=param)
    return make_sim_cluster(**param)
