"""The simulated Vast.ai and Lambda Cloud APIs, read with the real vastai SDK and plain HTTP."""

from __future__ import annotations

import json

import pytest
import requests
from vastai import VastAI

from remediator.clients.providers import CloudState, instance_state, providers_from_settings
from remediator.config import Settings
from remediator.sim import SimCluster

pytestmark = pytest.mark.parametrize("sim_cluster", [6], indirect=True)  # vast: 01 03 05, lambda: 02 04 06


def _vast(sim: SimCluster, key: str | None = None) -> VastAI:
    return VastAI(api_key=key or sim.vast_api_key, server_url=sim.vast_url, retry=1)


def _lambda(sim: SimCluster, key: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key or sim.lambda_api_key}"}
    return requests.get(f"{sim.lambda_url}/api/v1/instances", headers=headers, timeout=10)


def test_vastai_sdk_lists_the_instances_with_their_states(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.stop_instance("host-03")
    sim.terminate_instance("host-05")
    rows = _vast(sim).show_instances()
    by_label = {row["label"]: row for row in rows}
    assert set(by_label) == {"host-01", "host-03"}  # a destroyed Vast.ai instance is no longer listed
    assert by_label["host-01"]["actual_status"] == "running"
    assert (by_label["host-03"]["actual_status"], by_label["host-03"]["intended_status"]) == (
        "exited",
        "stopped",
    )
    assert str(by_label["host-01"]["id"]) == sim.host("host-01").instance_id
    assert by_label["host-01"]["ssh_port"] == sim.host("host-01").ssh_port
    assert _vast(sim).show_instance(int(sim.host("host-05").instance_id)) is None


def test_vast_pages_follow_next_token(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    headers = {"Authorization": f"Bearer {sim.vast_api_key}"}
    ids, token = [], None
    while True:
        params = {"limit": 2, **({"after_token": json.dumps(token)} if token else {})}
        page = requests.get(
            f"{sim.vast_url}/api/v1/instances/", params=params, headers=headers, timeout=10
        ).json()
        ids += [row["id"] for row in page["instances"]]
        token = page["next_token"]
        if not token:
            break
    assert ids == sorted(int(sim.host(h).instance_id) for h in ("host-01", "host-03", "host-05"))


def test_vast_refuses_a_wrong_api_key(sim_cluster: SimCluster) -> None:
    with pytest.raises(requests.HTTPError, match="401"):
        _vast(sim_cluster, key="not-the-key").show_instances()


def test_lambda_lists_instances_with_their_states(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.stop_instance("host-04")
    sim.terminate_instance("host-06")
    answer = _lambda(sim)
    assert answer.status_code == 200
    statuses = {row["name"]: row["status"] for row in answer.json()["data"]}
    assert statuses == {"host-02": "active", "host-04": "unhealthy", "host-06": "terminated"}
    one = requests.get(
        f"{sim.lambda_url}/api/v1/instances/{sim.host('host-02').instance_id}",
        headers={"Authorization": f"Bearer {sim.lambda_api_key}"},
        timeout=10,
    )
    assert one.json()["data"]["ip"] == "127.0.0.1"
    assert _lambda(sim, key="wrong").status_code == 401


def test_provider_outage_answers_503_and_status_pages_say_major(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    status = requests.get(sim.env()["REMEDIATOR_VAST_STATUS_URL"], timeout=10).json()["status"]
    assert status["indicator"] == "none"
    sim.provider_outage(True, provider="vast")
    with pytest.raises(requests.HTTPError, match="503"):
        _vast(sim).show_instances()
    assert (
        requests.get(sim.env()["REMEDIATOR_VAST_STATUS_URL"], timeout=10).json()["status"]["indicator"]
        == "major"
    )
    assert _lambda(sim).status_code == 200
    sim.provider_outage(True)
    assert _lambda(sim).status_code == 503
    lambda_status = requests.get(sim.env()["REMEDIATOR_LAMBDA_STATUS_URL"], timeout=10).json()["status"]
    assert lambda_status["indicator"] == "major"
    sim.provider_outage(False)
    assert len(_vast(sim).show_instances()) == 3


@pytest.mark.parametrize("answer", ["error", "malformed", "not_json"])
def test_provider_answer_fault_makes_the_real_clients_report_unknown_while_status_says_ok(
    sim_cluster: SimCluster, answer: str
) -> None:
    sim = sim_cluster
    providers = providers_from_settings(Settings.from_env(sim.env()))
    vast_host, lambda_host = sim.host("host-01"), sim.host("host-02")
    sim.provider_answer(answer, provider="vast")
    found = instance_state(providers, "vast", vast_host.instance_id)
    assert found.state is CloudState.UNKNOWN and "provider answer unusable" in found.reason
    assert instance_state(providers, "lambda", lambda_host.instance_id).state is CloudState.RUNNING
    assert requests.get(sim.status_url("vast"), timeout=10).json()["status"]["indicator"] == "none"
    sim.provider_answer(answer)
    found = instance_state(providers, "lambda", lambda_host.instance_id)
    assert found.state is CloudState.UNKNOWN and "provider answer unusable" in found.reason
    sim.provider_answer("ok")
    assert instance_state(providers, "vast", vast_host.instance_id).state is CloudState.RUNNING
    assert instance_state(providers, "lambda", lambda_host.instance_id).state is CloudState.RUNNING


def test_provider_answer_error_is_vasts_success_false_with_status_200(sim_cluster: SimCluster) -> None:
    sim = sim_cluster
    sim.provider_answer("error", provider="vast")
    answer = requests.get(
        f"{sim.vast_url}/api/v1/instances/",
        headers={"Authorization": f"Bearer {sim.vast_api_key}"},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["success"] is False
    assert "instances" not in answer.json()
    with pytest.raises(ValueError, match="answer must be one of"):
        sim.provider_answer("sometimes")
