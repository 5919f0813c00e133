"""The host page's advice: a fixed recommendation when diagnosis found nothing that restarts the agent."""

from __future__ import annotations

from remediator import store


def test_a_host_without_a_restart_policy_gets_the_supervisor_advice_in_every_view(client, redis_conn):
    store.update_host(
        redis_conn, "gpu-1", status="finished", outcome="prevented", facts={"agent_auto_restart": False}
    )
    store.update_host(
        redis_conn, "gpu-2", status="finished", outcome="healthy", facts={"agent_auto_restart": True}
    )
    store.update_host(
        redis_conn, "gpu-3", status="finished", outcome="healthy", facts={"ssh_reachable": False}
    )
    page = client.get("/ui/hosts/gpu-1").get_data(as_text=True)
    assert 'data-advice="supervise-agent"' in page and "Restart=on-failure" in page
    summary = client.get("/api/v1/hosts/gpu-1").get_json()
    assert summary["view"] == "summary" and [a["id"] for a in summary["advice"]] == ["supervise-agent"]
    for supervised_or_unknown in ("gpu-2", "gpu-3"):  # unknown is not "unsupervised": no advice
        assert 'id="advice"' not in client.get(f"/ui/hosts/{supervised_or_unknown}").get_data(as_text=True)
        assert client.get(f"/api/v1/hosts/{supervised_or_unknown}").get_json()["advice"] == []
