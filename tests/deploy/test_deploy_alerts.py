"""The chart's PrometheusRule, checked by the real ``promtool``: the rules parse (``promtool check
rules``) and each alert fires on series that mean trouble and stays quiet on series that do not
(``promtool test rules``), with the labels and annotations an alert manager would get."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import NAMESPACE, one, render_chart

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/setup installs Debian's prometheus)"
)

ENABLED = {"metrics": {"prometheusRule": {"enabled": True}}}
JOB = "endpoint-health-checker-metrics"  # the metrics Service's name with the default release name
LEADER, STANDBY = "ehc-a", "ehc-b"  # the pods


def s(metric: str, values: str, pod: str = LEADER, **labels: str) -> dict[str, str]:
    """One input series of ehc's, labelled as a ServiceMonitor of the metrics Service labels it."""
    labels = {"job": JOB, "namespace": NAMESPACE, "pod": pod, **labels}
    return {
        "series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
        "values": values,
    }


def fired(**labels: str) -> dict[str, str]:
    """An expected alert's labels besides alertname and severity: those its expression keeps."""
    return labels


def kept(pod: str = LEADER, **labels: str) -> dict[str, str]:
    """The labels of an alert whose expression keeps every label of its series."""
    return {"job": JOB, "namespace": NAMESPACE, "pod": pod, **labels}


# Per alert: its severity and cases, each a set of series (1m apart: "0x10" is 0 for 10 minutes),
# when to evaluate, and the alerts expected then (empty: it must stay quiet).
ALERTS: dict[str, dict[str, Any]] = {
    "EhcNoLeader": {"severity": "critical", "cases": [
        {"series": [s("ehc_leader", "0x10"), s("ehc_leader", "0x10", STANDBY),
                    # Another release's leader (other job, or same job in another namespace) does not count.
                    {"series": 'ehc_leader{job="other", namespace="endpoint-health-checker", pod="x"}', "values": "1x10"},
                    {"series": f'ehc_leader{{job="{JOB}", namespace="elsewhere", pod="y"}}', "values": "1x10"}],
         "at": "5m", "alerts": [fired()]},
        # Nothing scraped at all: nobody leads.
        {"series": [{"series": 'up{job="other"}', "values": "1x10"}], "at": "5m", "alerts": [fired()]},
        {"series": [s("ehc_leader", "1x10"), s("ehc_leader", "0x10", STANDBY)], "at": "5m", "alerts": []},
        # A handover shorter than the minute of grace.
        {"series": [s("ehc_leader", "1 1 0x8"), s("ehc_leader", "0 0 0 1x7", STANDBY)], "at": "10m", "alerts": []},
    ]},
    "EhcFailSafeEngaged": {"severity": "critical", "cases": [
        {"series": [s("ehc_failsafe_engaged", "0 1x9"), s("ehc_failsafe_engaged", "0x10", STANDBY)],
         "at": "10m", "alerts": [fired()]},
        {"series": [s("ehc_failsafe_engaged", "0 1 0x8")], "at": "10m", "alerts": []},
    ]},
    "EhcWorkerLagging": {"severity": "warning", "cases": [
        {"series": [s("ehc_schedule_lag_p99_seconds", "0.25x10", worker="0"),
                    s("ehc_schedule_lag_p99_seconds", "0.01x10", worker="1")],
         "at": "10m", "alerts": [fired(pod=LEADER, worker="0")]},
        {"series": [s("ehc_schedule_lag_p99_seconds", "0.05x10", worker="0"),
                    s("ehc_schedule_lag_p99_seconds", "0.01 0.5 0.01x8", worker="1")], "at": "10m", "alerts": []},
    ]},
    "EhcWorkerRestarting": {"severity": "warning", "cases": [
        {"series": [s("ehc_worker_restarts_total", "0 1 2 3x8", worker="0"),
                    s("ehc_worker_stalls_total", "0x10", worker="0"),
                    s("ehc_worker_restarts_total", "0 0 1x8", worker="1"),
                    s("ehc_worker_stalls_total", "0 0 1x8", worker="1")],
         "at": "10m", "alerts": [kept(worker="0"), kept(worker="1")]},
        {"series": [s("ehc_worker_restarts_total", "0 1 2x8", worker="0"),
                    s("ehc_worker_stalls_total", "0x10", worker="0")], "at": "10m", "alerts": []},
    ]},
    "EhcWritesFailing": {"severity": "critical", "cases": [
        {"series": [s("ehc_patch_outage", "0 1x9")], "at": "10m", "alerts": [fired()]},
        {"series": [s("ehc_patch_outage", "0 1 0x8")], "at": "10m", "alerts": []},
    ]},
    "EhcWritesBacklog": {"severity": "warning", "cases": [
        {"series": [s("ehc_patch_queue_depth", "0 500x9")], "at": "10m", "alerts": [fired()]},
        # A burst of ejections drains within minutes.
        {"series": [s("ehc_patch_queue_depth", "0 500 800 20 0x6")], "at": "10m", "alerts": []},
    ]},
    "EhcWritesDropped": {"severity": "warning", "cases": [
        {"series": [s("ehc_patches_total", "0+10x10", outcome="ok"),
                    s("ehc_patches_total", "0 0 3x8", outcome="failed")],
         "at": "5m", "alerts": [kept(outcome="failed")]},
        # Only old failures; a pod that vanished (not_found) is fine.
        {"series": [s("ehc_patches_total", "0+10x20", outcome="ok"),
                    s("ehc_patches_total", "2x20", outcome="failed"),
                    s("ehc_patches_total", "0+1x20", outcome="not_found")], "at": "20m", "alerts": []},
    ]},
    "EhcLeaseErrors": {"severity": "warning", "cases": [
        {"series": [s("ehc_lease_last_success_age_seconds", "0.5 0.5 5+60x8"),
                    s("ehc_lease_last_success_age_seconds", "Inf", STANDBY)],  # never succeeded
         "at": "5m", "alerts": [fired(pod=LEADER), fired(pod=STANDBY)]},
        {"series": [s("ehc_lease_last_success_age_seconds", "0.5 3 0.2x8"),
                    s("ehc_lease_last_success_age_seconds", "0.4 40 0.3x8", STANDBY)], "at": "5m", "alerts": []},
    ]},
    "EhcNoProbes": {"severity": "critical", "cases": [
        # The leader's probe counter stands still (a standby that probes does not count).
        {"series": [s("ehc_leader", "1x10"), s("ehc_targets", "100x10", kind="tcp"),
                    s("ehc_probes_total", "500x10", worker="0", kind="tcp"),
                    s("ehc_leader", "0x10", STANDBY), s("ehc_targets", "100x10", STANDBY, kind="tcp"),
                    s("ehc_probes_total", "0+100x10", STANDBY, worker="0", kind="tcp")],
         "at": "10m", "alerts": [fired()]},
        # The leader has no probe counters at all (its workers never started).
        {"series": [s("ehc_leader", "1x10"), s("ehc_targets", "5x10", kind="icmp")], "at": "10m",
         "alerts": [fired()]},
        {"series": [s("ehc_leader", "1x10"), s("ehc_targets", "100x10", kind="tcp"),
                    s("ehc_probes_total", "0+100x10", worker="0", kind="tcp")], "at": "10m", "alerts": []},
        # Nothing to probe.
        {"series": [s("ehc_leader", "1x10"), s("ehc_targets", "0x10", kind="tcp")], "at": "10m", "alerts": []},
    ]},
    "EhcWatchNotSynced": {"severity": "warning", "cases": [
        {"series": [s("ehc_watch_synced", "1x10", resource="pods"),
                    s("ehc_watch_synced", "0x10", STANDBY, resource="pods"),
                    s("ehc_watch_synced", "1x10", resource="endpointslices")],
         "at": "10m", "alerts": [fired(resource="pods")]},
        # Listing at start-up takes a moment.
        {"series": [s("ehc_watch_synced", "0 0 1x8", resource="pods")], "at": "10m", "alerts": []},
    ]},
    "EhcSuspectedPartition": {"severity": "warning", "cases": [
        {"series": [s("ehc_suspected_partitions", "0 2x9")], "at": "10m", "alerts": [fired()]},
        {"series": [s("ehc_suspected_partitions", "0x10")], "at": "10m", "alerts": []},
    ]},
    "EhcNoPeers": {"severity": "warning", "cases": [
        # The standby sees the leader, the leader sees nobody.
        {"series": [s("ehc_leader", "1x20"), s("ehc_peers", "0x20"),
                    s("ehc_leader", "0x20", STANDBY), s("ehc_peers", "1x20", STANDBY)],
         "at": "20m", "alerts": [fired()]},
        {"series": [s("ehc_leader", "1x20"), s("ehc_peers", "1x20"),
                    s("ehc_leader", "0x20", STANDBY), s("ehc_peers", "1x20", STANDBY)], "at": "20m", "alerts": []},
        # A single replica has nobody to ask.
        {"series": [s("ehc_leader", "1x20"), s("ehc_peers", "0x20")], "at": "20m", "alerts": []},
    ]},
}  # fmt: skip


def prometheus_rule(values: dict[str, Any]) -> dict[str, Any]:
    objects, _ = render_chart(values)
    return one(objects, "PrometheusRule")


def write_rules(tmp_path: Path, rule: dict[str, Any]) -> Path:
    """The PrometheusRule's spec is a Prometheus rule file (``groups:``)."""
    path = tmp_path / "ehc-rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"], sort_keys=False))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"promtool {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


def rules_by_name(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    [group] = rule["spec"]["groups"]
    assert group["name"] == "endpoint-health-checker"
    return {r["alert"]: r for r in group["rules"]}


def expand(text: str, labels: dict[str, str]) -> str:
    """The annotation as Prometheus expands it (the rules use only ``{{ $labels.<name> }}``)."""
    out = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m[1]], text)
    assert "{{" not in out, f"unexpected template in {text!r}"
    return out


@pytest.fixture(scope="module")
def rule() -> dict[str, Any]:
    return prometheus_rule(ENABLED)


def test_absent_by_default_and_needs_the_metrics_service() -> None:
    objects, _ = render_chart()
    assert "PrometheusRule" not in {o["kind"] for o in objects}
    helm = pytest.importorskip("helm_python")
    with pytest.raises(helm.HelmRenderError, match=r"needs metrics\.service\.enabled"):
        render_chart({"metrics": {"prometheusRule": {"enabled": True}, "service": {"enabled": False}}})


@pytest.mark.parametrize(("name", "namespace"), [("endpoint-health-checker", NAMESPACE), ("blue", "ops")])
def test_every_selector_names_the_metrics_service_job(name: str, namespace: str) -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kube-prom"}}}}
    objects, _ = render_chart(values, name=name, namespace=namespace)
    rule = one(objects, "PrometheusRule")
    service = one(objects, "Service")["metadata"]["name"]
    assert service.endswith("-metrics")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == namespace
    assert rule["metadata"]["labels"]["release"] == "kube-prom"
    for alert, r in rules_by_name(rule).items():
        selectors = re.findall(r"\b(ehc_\w+)\{([^}]*)\}", r["expr"])
        assert selectors, alert
        assert len(selectors) == r["expr"].count("ehc_"), f"{alert}: a series without a selector"
        for metric, matchers in selectors:
            assert f'job="{service}", namespace="{namespace}"' in matchers, (alert, metric)


def test_promtool_checks_the_rules(tmp_path: Path, rule: dict[str, Any]) -> None:
    out = promtool("check", "rules", str(write_rules(tmp_path, rule)))
    assert f"SUCCESS: {len(ALERTS)} rules found" in out.stdout, out.stdout


def test_every_alert_is_tested_and_explained(rule: dict[str, Any]) -> None:
    rules = rules_by_name(rule)
    assert list(rules) == list(ALERTS)
    for alert, r in rules.items():
        assert r["labels"] == {"severity": ALERTS[alert]["severity"]}, alert
        assert set(r["annotations"]) == {"summary", "description"}, alert
        assert len(r["annotations"]["description"]) > 100, alert
        cases = ALERTS[alert]["cases"]
        assert any(c["alerts"] for c in cases) and any(not c["alerts"] for c in cases), alert


def test_no_peers_alert_only_with_second_opinions() -> None:
    for values in ({"peers": {"enabled": False}}, {"settings": {"secondOpinion": False}}):
        rules = rules_by_name(prometheus_rule({**ENABLED, **values}))
        assert "EhcNoPeers" not in rules
        assert len(rules) == len(ALERTS) - 1


@pytest.mark.parametrize("alert", list(ALERTS))
def test_promtool_unit_tests_each_alert(tmp_path: Path, rule: dict[str, Any], alert: str) -> None:
    r = rules_by_name(rule)[alert]
    tests = []
    for case in ALERTS[alert]["cases"]:
        expected = []
        for labels in case["alerts"]:
            full = {**labels, "severity": ALERTS[alert]["severity"]}
            annotations = {k: expand(v, full) for k, v in r["annotations"].items()}
            expected.append({"exp_labels": full, "exp_annotations": annotations})
        tests.append({
            "interval": "1m",
            "input_series": case["series"],
            "alert_rule_test": [{"eval_time": case["at"], "alertname": alert, "exp_alerts": expected}],
        })  # fmt: skip
    rules_file = write_rules(tmp_path, rule)
    test_file = tmp_path / "ehc-rules-test.yaml"
    body = {"rule_files": [rules_file.name], "evaluation_interval": "1m", "tests": tests}
    test_file.write_text(yaml.safe_dump(body, sort_keys=False))
    promtool("test", "rules", str(test_file))
