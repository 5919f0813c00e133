"""The import stand-in (``python -m remediator.sim.importer``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from remediator.sim import SimCluster, games
from remediator.sim.importer import main


def _recovered(sim: SimCluster, tmp_path: Path, host_id: str) -> tuple[Path, set[str]]:
    written = {g.game_id for g in sim.write_games(host_id, 3)}
    folder = tmp_path / "elsewhere" / "nested"
    folder.mkdir(parents=True)
    for path in games.game_files(sim.host(host_id).data_dir):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder.parent, written


def test_import_with_host_id_counts_files_games_and_new_games(
    sim_cluster: SimCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = sim_cluster
    sim.kill_agent("host-02")
    data_dir, written = _recovered(sim, tmp_path, "host-02")
    argv = ["--data-dir", str(data_dir), "--host-id", "host-02", "--coordinator", sim.coordinator_url]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["host_id"] == "host-02" and summary["files"] >= 1
    assert summary["games"] >= 3 and summary["new_games"] >= 3
    assert written <= sim.central_game_ids("host-02")
    assert sim.counts("host-02")["sync_triggers"] == 0  # no --trigger-sync given


def test_import_fails_clearly_when_the_coordinator_is_down(
    sim_cluster: SimCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, _ = _recovered(sim_cluster, tmp_path, "host-01")
    sim_cluster.coordinator_fault(status=503)
    argv = ["--data-dir", str(data_dir), "--host-id", "host-01", "--coordinator", sim_cluster.coordinator_url]
    assert main(argv) == 1
    assert "503" in capsys.readouterr().err
    assert sim_cluster.counts("host-01")["imports"] == 0


def test_import_of_a_missing_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path / "missing"), "--coordinator", "http://127.0.0.1:9"]) == 2
    assert "not a directory" in capsys.readouterr().err
