"""The chart's alerts, evaluated by Prometheus itself: the PrometheusRule groups are rendered by real Helm,
checked with ``promtool check rules`` and unit-tested with ``promtool test rules`` — each alert fires for
the series it is about, after its ``for`` and not before, and stays quiet for the others.

promtool comes from Debian's ``prometheus`` package (``make system`` installs it); a missing one fails."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from conftest import require_binary

CHART = Path(__file__).resolve().parent.parent / "helm" / "ringrift-remediator"
NS = "remediation"
RUNBOOK = "https://runbooks.example.com/sync-host-critical"
VALUES = {
    "prometheusRule": {
        "enabled": True,
        "runbookUrl": RUNBOOK,
        "coordinatorSelector": 'job="ringrift-coordinator"',
        "criticalSyncHosts": {"enabled": True},
    }
}
COORD = 'job="ringrift-coordinator"'
REMEDIATOR = f'namespace="{NS}"'
WARNING_SYNC = {"severity": "warning", "component": "sync"}
WARNING_SELF = {"severity": "warning", "component": "remediator"}
CRITICAL_SELF = {"severity": "critical", "component": "remediator"}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="module")
def groups() -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values=VALUES, name="rr", namespace=NS)
    rule = yaml.safe_load(rendered["ringrift-remediator/templates/prometheusrule.yaml"])
    return rule["spec"]["groups"]


@pytest.fixture
def rules_file(groups, tmp_path) -> Iterator[Path]:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    yield path


def fired(labels: dict[str, str], summary: str, description: str) -> dict[str, Any]:
    return {
        "exp_labels": labels,
        "exp_annotations": {"summary": summary, "description": description, "runbook_url": RUNBOOK},
    }


def run_tests(promtool: str, rules_file: Path, tests: list[dict[str, Any]]) -> None:
    spec = rules_file.parent / "rules_test.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": tests}, sort_keys=False
        )
    )
    done = subprocess.run(
        [promtool, "test", "rules", spec.name],
        cwd=rules_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def description_of(groups: list[dict[str, Any]], alert: str) -> str:
    return next(r for g in groups for r in g["rules"] if r.get("alert") == alert)["annotations"][
        "description"
    ]


def test_promtool_check_rules_accepts_every_rendered_group(promtool, rules_file, groups):
    done = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in done.stdout


def test_sync_lag_warning_fires_after_the_threshold_and_its_for_and_not_before(promtool, rules_file, groups):
    # h1 last synced at t=0 and never again: its lag is t. It passes 1800 s at 31m (the first evaluation
    # above 30m), so SyncLagWarning (for 10m) is pending until 41m. h2 syncs every minute.
    series = "ringrift_host_last_sync_timestamp_seconds"
    description = description_of(groups, "SyncLagWarning")
    run_tests(
        promtool,
        rules_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'{series}{{host_id="h1",{COORD}}}', "values": "0x60"},
                    {"series": f'{series}{{host_id="h2",{COORD}}}', "values": "0+60x60"},
                    {"series": f'{series}{{host_id="h3",job="someone-else"}}', "values": "0x60"},
                ],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "SyncLagWarning", "exp_alerts": []},
                    {"eval_time": "40m", "alertname": "SyncLagWarning", "exp_alerts": []},
                    {
                        "eval_time": "41m",
                        "alertname": "SyncLagWarning",
                        "exp_alerts": [
                            fired(
                                {"host_id": "h1", **WARNING_SYNC},
                                "Host h1 has not synced for 41m 0s",
                                description,
                            )
                        ],
                    },
                ],
            }
        ],
    )


def test_critical_sync_hosts_fires_once_hosts_are_critical_for_five_minutes(promtool, rules_file, groups):
    description = description_of(groups, "CriticalSyncHosts")
    run_tests(
        promtool,
        rules_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f'ringrift_sync_hosts{{state="critical",{COORD}}}', "values": "0x9 2x20"},
                    {"series": f'ringrift_sync_hosts{{state="healthy",{COORD}}}', "values": "50x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "9m", "alertname": "CriticalSyncHosts", "exp_alerts": []},
                    {"eval_time": "14m", "alertname": "CriticalSyncHosts", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "CriticalSyncHosts",
                        "exp_alerts": [
                            fired(
                                {"severity": "critical", "component": "sync", "team": "infrastructure"},
                                "2 host(s) in a critical sync state",
                                description,
                            )
                        ],
                    },
                ],
            }
        ],
    )


def test_probe_alerts_fire_per_host_after_their_for_across_replicas_and_never_on_unknown(
    promtool, rules_file, groups
):
    # Two receiver replicas export the same findings (instance r1, r2): one alert per host, not two.
    # h1's agent dies at 10m; h2 is unreachable from 10m; h3 is never decided (no sample); h4 is fine.
    agent, reach = "remediator_host_agent_running", "remediator_host_reachable"
    series = []
    for instance in ("r1", "r2"):
        where = f'{REMEDIATOR},instance="{instance}"'
        series += [
            {"series": f'{agent}{{host_id="h1",{where}}}', "values": "1x9 0x30"},
            {"series": f'{reach}{{host_id="h1",{where}}}', "values": "1x40"},
            {"series": f'{reach}{{host_id="h2",{where}}}', "values": "1x9 0x30"},
            {"series": f'{reach}{{host_id="h3",{where}}}', "values": "1x40"},
            {"series": f'{agent}{{host_id="h4",{where}}}', "values": "1x40"},
            {"series": f'{reach}{{host_id="h4",{where}}}', "values": "1x40"},
        ]
    agent_down = description_of(groups, "RingRiftSyncAgentDown")
    unreachable = description_of(groups, "RingRiftHostUnreachable")
    run_tests(
        promtool,
        rules_file,
        [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "14m", "alertname": "RingRiftSyncAgentDown", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "RingRiftSyncAgentDown",
                        "exp_alerts": [
                            fired(
                                {"host_id": "h1", **WARNING_SYNC},
                                "The sync agent of host h1 is not running (fleet probe)",
                                agent_down,
                            )
                        ],
                    },
                    {"eval_time": "19m", "alertname": "RingRiftHostUnreachable", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "RingRiftHostUnreachable",
                        "exp_alerts": [
                            fired(
                                {"host_id": "h2", **WARNING_SYNC},
                                "Host h2 does not answer SSH (fleet probe)",
                                unreachable,
                            )
                        ],
                    },
                ],
            }
        ],
    )


def test_probe_stale_fires_when_no_pass_finished_for_the_limit_and_its_for(promtool, rules_file, groups):
    # Passes finish every minute until 10m (the value is the finish time), then none: the age passes
    # 600 s at 21m and the alert (for 5m) fires at 26m, 16 minutes after the last pass.
    description = description_of(groups, "RemediatorProbeStale")
    run_tests(
        promtool,
        rules_file,
        [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f"remediator_probe_last_run_timestamp_seconds{{{REMEDIATOR}}}",
                        "values": "0+60x10 600x30",
                    }
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "RemediatorProbeStale", "exp_alerts": []},
                    {"eval_time": "25m", "alertname": "RemediatorProbeStale", "exp_alerts": []},
                    {
                        "eval_time": "26m",
                        "alertname": "RemediatorProbeStale",
                        "exp_alerts": [
                            fired(
                                WARNING_SELF,
                                "The fleet probe has not finished a pass for 16m 0s",
                                description,
                            )
                        ],
                    },
                ],
            }
        ],
    )


def test_remediator_self_alerts_fire_after_their_for_and_not_before(promtool, rules_file, groups):
    ladders = "remediator_ladders_total"
    run_tests(
        promtool,
        rules_file,
        [
            {  # half the ladders fail from the start: above 25% from 1m on, firing 15m later
                "interval": "1m",
                "input_series": [
                    {"series": f'{ladders}{{{REMEDIATOR},outcome="failed"}}', "values": "0+1x60"},
                    {"series": f'{ladders}{{{REMEDIATOR},outcome="healthy"}}', "values": "0+1x60"},
                ],
                "alert_rule_test": [
                    {"eval_time": "15m", "alertname": "HighRecoveryFailureRate", "exp_alerts": []},
                    {
                        "eval_time": "16m",
                        "alertname": "HighRecoveryFailureRate",
                        "exp_alerts": [
                            fired(
                                CRITICAL_SELF,
                                "More than 25% of remediation ladders are failing",
                                "50% of ladders ended in failed|escalated over 1h: hosts are not being "
                                "recovered automatically and people are being paged.",
                            )
                        ],
                    },
                ],
            },
            {  # 60 queued jobs from 5m (threshold 50, for 15m); workers from 0 to none at 10m
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'remediator_queue_depth{{{REMEDIATOR},state="queued"}}',
                        "values": "0x4 60x40",
                    },
                    {"series": f'remediator_queue_depth{{{REMEDIATOR},state="started"}}', "values": "99x45"},
                    {"series": f"remediator_workers{{{REMEDIATOR}}}", "values": "2x9 0x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "19m", "alertname": "RemediatorQueueBacklog", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "RemediatorQueueBacklog",
                        "exp_alerts": [
                            fired(
                                WARNING_SELF,
                                "Remediation queue backlog: 60 jobs waiting",
                                description_of(groups, "RemediatorQueueBacklog"),
                            )
                        ],
                    },
                    {"eval_time": "14m", "alertname": "RemediatorNoWorker", "exp_alerts": []},
                    {
                        "eval_time": "15m",
                        "alertname": "RemediatorNoWorker",
                        "exp_alerts": [
                            fired(
                                CRITICAL_SELF,
                                "No remediator worker is alive",
                                description_of(groups, "RemediatorNoWorker"),
                            )
                        ],
                    },
                ],
            },
            {  # no remediator_workers series at all: absent() fires after 5m too
                "interval": "1m",
                "input_series": [{"series": "up", "values": "1x10"}],
                "alert_rule_test": [
                    {"eval_time": "4m", "alertname": "RemediatorNoWorker", "exp_alerts": []},
                    {
                        "eval_time": "5m",
                        "alertname": "RemediatorNoWorker",
                        "exp_alerts": [
                            fired(  # absent() keeps the selector's namespace label
                                {**CRITICAL_SELF, "namespace": NS},
                                "No remediator worker is alive",
                                description_of(groups, "RemediatorNoWorker"),
                            )
                        ],
                    },
                ],
            },
            {  # 5xx answers from 2m on (rate > 0 from 3m), for 10m; 2xx never alert
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'remediator_webhook_requests_total{{{REMEDIATOR},code="503"}}',
                        "values": "0x2 1+1x30",
                    },
                    {
                        "series": f'remediator_webhook_requests_total{{{REMEDIATOR},code="202"}}',
                        "values": "0+9x30",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "12m", "alertname": "RemediatorWebhookErrors", "exp_alerts": []},
                    {
                        "eval_time": "13m",
                        "alertname": "RemediatorWebhookErrors",
                        "exp_alerts": [
                            fired(
                                WARNING_SELF,
                                "The remediator receiver answers 5xx to Alertmanager",
                                description_of(groups, "RemediatorWebhookErrors"),
                            )
                        ],
                    },
                ],
            },
            {  # frozen fleet-wide from 1h; a frozen host alone never alerts
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'remediator_automation_frozen{{{REMEDIATOR},host_id=""}}',
                        "values": "0x59 1x300",
                    },
                    {
                        "series": f'remediator_automation_frozen{{{REMEDIATOR},host_id="h1"}}',
                        "values": "1x360",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "4h59m", "alertname": "RemediatorFrozen", "exp_alerts": []},
                    {
                        "eval_time": "5h",
                        "alertname": "RemediatorFrozen",
                        "exp_alerts": [
                            fired(
                                WARNING_SELF,
                                "The remediator has been frozen for over 4h",
                                description_of(groups, "RemediatorFrozen"),
                            )
                        ],
                    },
                ],
            },
        ],
    )


def test_every_alert_of_the_chart_has_a_promtool_unit_test(groups):
    tested = {
        "SyncLagWarning",
        "CriticalSyncHosts",
        "RingRiftHostUnreachable",
        "RingRiftSyncAgentDown",
        "RemediatorProbeStale",
        "HighRecoveryFailureRate",
        "RemediatorQueueBacklog",
        "RemediatorNoWorker",
        "RemediatorWebhookErrors",
        "RemediatorFrozen",
    }
    assert {r["alert"] for g in groups for r in g["rules"] if "alert" in r} == tested
