"""The chart's Grafana dashboard (``dashboards/ehc.json``), shipped as a ConfigMap for Grafana's
dashboard sidecar: rendered only when asked, labelled for the sidecar, a dashboard that brings no data
source of its own, every panel explained, every query valid PromQL (the real ``promtool``) that selects
the chosen namespace and job, and the fleet's panels counting the leader's series only (every replica
probes, so summing over pods would count each target once per replica)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    CHART,
    NAMESPACE,
    RELEASE,
    dashboard_queries,
    helm_module,
    one,
    render_chart,
    validate_offline,
)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/setup installs Debian's prometheus)"
)

ENABLED = {"metrics": {"grafanaDashboard": {"enabled": True}}}
DS_UID = "${datasource}"
JOB = f"{RELEASE}-metrics"  # the metrics Service's name, the job a ServiceMonitor of it gives
# What Grafana puts in for its variables; an unknown variable is a KeyError.
GRAFANA_VARS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "datasource": "prometheus",
    "namespace": NAMESPACE,
    "job": JOB,
}
LEADER, STANDBY = "ehc-a", "ehc-b"  # the pods of the promtool unit tests
# Each of these subjects must be graphed by some query.
REQUIRED = (
    "ehc_detection_seconds_bucket", "ehc_patch_latency_seconds_bucket", "ehc_target_health", "ehc_targets",
    "ehc_probes_total", "ehc_schedule_lag_p99_seconds", "ehc_patches_total", "ehc_failsafe_engaged", "ehc_leader",
)  # fmt: skip
# Series every replica has (hot standbys probe too): a query of the fleet's state takes the leader's.
FLEET = (
    "ehc_target_health",
    "ehc_targets{",
    "ehc_detection_seconds",
    "ehc_suspects",
    "ehc_failsafe_dark_share",
)


def dashboard_configmaps(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel but the rows, nested ones (a collapsed row's) included."""
    out, todo = [], list(dashboard["panels"])
    while todo:
        panel = todo.pop(0)
        todo.extend(panel.get("panels", []))
        if panel["type"] != "row":
            out.append(panel)
    return out


def datasources(node: Any) -> list[Any]:
    """Every ``datasource`` value anywhere in the dashboard."""
    if isinstance(node, list):
        return [d for item in node for d in datasources(item)]
    if not isinstance(node, dict):
        return []
    found = [node["datasource"]] if "datasource" in node else []
    return found + [d for value in node.values() for d in datasources(value)]


def substitute(query: str) -> str:
    """The query as Grafana sends it to Prometheus: ``$name`` and ``${name}`` replaced."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: GRAFANA_VARS[m[1] or m[2]], query)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    out = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"promtool {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="module")
def configmap() -> dict[str, Any]:
    objects, _ = render_chart(ENABLED)
    [cm] = dashboard_configmaps(objects)
    return cm


@pytest.fixture(scope="module")
def dashboard(configmap: dict[str, Any]) -> dict[str, Any]:
    return json.loads(configmap["data"]["ehc.json"])


@pytest.fixture(scope="module")
def queries(dashboard: dict[str, Any]) -> list[str]:
    return dashboard_queries(dashboard)


def test_absent_by_default() -> None:
    objects, _ = render_chart()
    assert dashboard_configmaps(objects) == []
    assert "ConfigMap" not in {o["kind"] for o in objects}


def test_enabled_is_one_configmap_labelled_for_the_sidecar(configmap: dict[str, Any]) -> None:
    objects, _ = render_chart(ENABLED)
    assert one(objects, "ConfigMap") is not None
    meta = configmap["metadata"]
    assert meta["name"] == f"{RELEASE}-dashboard"
    assert meta["namespace"] == NAMESPACE
    assert meta["labels"]["grafana_dashboard"] == "1"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "annotations" not in meta
    assert list(configmap["data"]) == ["ehc.json"]
    # The file as shipped, byte for byte (the template adds no trailing newline of its own).
    assert configmap["data"]["ehc.json"] == (CHART / "dashboards" / "ehc.json").read_text().rstrip("\n")
    for obj in objects:
        validate_offline(obj)


def test_label_namespace_and_annotations_are_configurable() -> None:
    values = {"metrics": {"grafanaDashboard": {
        "enabled": True, "label": "dashboards.example.com/load", "labelValue": "yes", "namespace": "monitoring",
        "annotations": {"grafana_folder": "ehc"},
    }}}  # fmt: skip
    objects, _ = render_chart(values, name="blue", namespace="ops")
    [cm] = dashboard_configmaps(objects)
    validate_offline(cm)
    meta = cm["metadata"]
    assert meta["name"] == "blue-endpoint-health-checker-dashboard"
    assert meta["namespace"] == "monitoring"
    assert meta["labels"]["dashboards.example.com/load"] == "yes"
    assert "grafana_dashboard" not in meta["labels"]
    assert meta["annotations"] == {"grafana_folder": "ehc"}
    json.loads(cm["data"]["ehc.json"])


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"enabled": "yes"}, "/metrics/grafanaDashboard/enabled"),
        ({"labelValue": 1}, "/metrics/grafanaDashboard/labelValue"),  # --set-string, or quote it
        ({"label": "grafana dashboard"}, "/metrics/grafanaDashboard/label"),
        ({"namespace": "Monitoring"}, "/metrics/grafanaDashboard/namespace"),
        ({"annotations": {"grafana_folder": 1}}, "/metrics/grafanaDashboard/annotations"),
        ({"folder": "ehc"}, "folder"),  # a typo is not silently ignored
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmValuesError, match="schema") as exc:
        render_chart({"metrics": {"grafanaDashboard": {"enabled": True, **values}}})
    assert where in str(exc.value)


def test_helm_lint_is_clean_with_the_dashboard() -> None:
    helm = helm_module()
    report = helm.lint(str(CHART), ENABLED, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_configmap_is_well_under_the_size_limits(configmap: dict[str, Any]) -> None:
    size = len(json.dumps(configmap).encode())
    assert size < 1024 * 1024  # a ConfigMap's limit
    # Well under: `kubectl apply` copies it into an annotation, whose limit is 256 KiB.
    assert size < 256 * 1024 // 2, size


def test_identity_refresh_and_templated_datasource(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "ehc-overview"
    assert dashboard["title"] == "ehc: endpoint health checker"
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["refresh"] == "30s"
    assert dashboard.get("id") is None  # the sidecar's Grafana assigns it
    assert "__inputs" not in dashboard and "${DS_" not in json.dumps(dashboard)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "job"]
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == ("datasource", "prometheus")
    for name in ("namespace", "job"):
        assert variables[name]["type"] == "query"
        assert (variables[name]["includeAll"], variables[name]["multi"]) == (False, False)  # `=` matchers
    assert variables["namespace"]["query"] == "label_values(ehc_leader, namespace)"
    assert variables["job"]["query"] == 'label_values(ehc_leader{namespace="$namespace"}, job)'
    # No fixed data source anywhere: every panel, target and variable uses the chosen one.
    found = datasources(dashboard)
    assert len(found) > len(panels_of(dashboard))
    assert all(d == {"type": "prometheus", "uid": DS_UID} for d in found), found


def test_every_panel_is_titled_explained_queried_and_placed(dashboard: dict[str, Any]) -> None:
    panels = panels_of(dashboard)
    assert len(panels) >= 8
    ids = [p["id"] for p in [*panels, *(r for r in dashboard["panels"] if r["type"] == "row")]]
    assert len(ids) == len(set(ids)), "duplicate panel id"
    assert {p["type"] for p in panels} <= {"timeseries", "state-timeline", "stat"}
    cells: dict[tuple[int, int], str] = {}
    for p in [*panels, *(r for r in dashboard["panels"] if r["type"] == "row")]:
        title = p["title"]
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, title
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{title!r} overlaps {cells[x, y]!r}"
                cells[x, y] = title
        if p["type"] == "row":
            continue
        assert title.strip(), p["id"]
        assert len(p.get("description", "")) > 80, f"{title}: say what it means and what to do"
        assert p["targets"], title
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]), title
        for t in p["targets"]:
            assert t["expr"].strip() and "legendFormat" in t, title


def test_every_query_selects_the_chosen_namespace_and_job(dashboard: dict[str, Any]) -> None:
    for panel in panels_of(dashboard):
        for t in panel["targets"]:
            expr = t["expr"]
            selectors = re.findall(r"\b(ehc_\w+)\{([^}]*)\}", expr)
            assert selectors, expr
            assert len(selectors) == expr.count("ehc_"), f"a series without a selector: {expr}"
            for metric, matchers in selectors:
                assert matchers.startswith('namespace="$namespace", job="$job"'), (metric, expr)


def test_dashboard_queries_walks_rows_and_variables() -> None:
    dashboard = {
        "panels": [
            {"type": "row", "panels": [{"targets": [{"expr": "up"}, {"refId": "B"}]}]},
            {"targets": [{"expr": "sum(x)"}]},
        ],
        "templating": {"list": [
            {"type": "datasource", "query": "prometheus"},
            {"type": "query", "query": "label_values(namespace)"},
            {"type": "query", "query": 'label_values(a{b="c", d=~"e,f"}, g)'},
            {"type": "query", "query": {"query": "label_values(h, i)", "refId": "V"}},
            {"type": "query", "query": "query_result(topk(3, j))"},
            {"type": "custom", "query": "1,2,3"},
        ]},
    }  # fmt: skip
    assert dashboard_queries(dashboard) == ["sum(x)", "up", 'a{b="c", d=~"e,f"}', "h", "topk(3, j)"]


def test_the_required_subjects_are_graphed(queries: list[str]) -> None:
    for subject in REQUIRED:
        assert any(re.search(rf"\b{subject}\b", q) for q in queries), subject


def test_fleet_panels_take_the_leaders_series_only(queries: list[str]) -> None:
    fleet = [q for q in queries if any(s in q for s in FLEET)]
    assert len(fleet) >= 4
    for q in fleet:
        assert re.search(r"on \(pod\) \(ehc_leader\{[^}]*\} == 1\)", q), q


@needs_promtool
def test_promtool_accepts_every_query(tmp_path: Path, queries: list[str]) -> None:
    rules = [{"record": f"dashboard:q{i}", "expr": substitute(q)} for i, q in enumerate(queries)]
    assert all("$" not in r["expr"] for r in rules)
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    out = promtool("check", "rules", str(path))
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout, out.stdout


def series(metric: str, values: str, pod: str, **labels: str) -> dict[str, str]:
    labels = {"job": JOB, "namespace": NAMESPACE, "pod": pod, **labels}
    return {
        "series": metric + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}",
        "values": values,
    }


@needs_promtool
def test_fleet_queries_count_one_replica_not_all(tmp_path: Path, queries: list[str]) -> None:
    """Both replicas probe the same targets; the fleet's panels show the leader's figures, not twice
    them, and the detection quantile is the leader's histogram's, not a blend with the standby's."""
    by_kind = next(q for q in queries if "sum by (kind) (ehc_targets{" in q)
    by_health = next(q for q in queries if "sum by (health) (ehc_target_health{" in q)
    detection_p99 = next(
        q for q in queries if "histogram_quantile(0.99" in q and "ehc_detection_seconds" in q
    )
    inputs = [series("ehc_leader", "1x15", LEADER), series("ehc_leader", "0x15", STANDBY),
              # Another release in the namespace (another job) does not count either.
              {"series": f'ehc_leader{{job="other", namespace="{NAMESPACE}", pod="x"}}', "values": "1x15"},
              {"series": f'ehc_targets{{job="other", namespace="{NAMESPACE}", pod="x", kind="tcp"}}', "values": "50x15"}]  # fmt: skip
    for pod in (LEADER, STANDBY):
        inputs += [series("ehc_targets", "7x15", pod, kind="tcp"), series("ehc_targets", "3x15", pod, kind="http+tcp"),
                   series("ehc_target_health", "9x15", pod, health="healthy"),
                   series("ehc_target_health", "1x15", pod, health="unhealthy")]  # fmt: skip
    # The leader's detections all took under 0.5 s; the standby's took between 0.5 s and 1 s.
    for le, leader, standby in (("0.5", "0+10x15", "0x15"), ("1.0", "0+10x15", "0+10x15"), ("+Inf", "0+10x15", "0+10x15")):  # fmt: skip
        inputs += [series("ehc_detection_seconds_bucket", leader, LEADER, le=le),
                   series("ehc_detection_seconds_bucket", standby, STANDBY, le=le)]  # fmt: skip
    checks = [
        {"expr": substitute(by_kind), "eval_time": "10m",
         "exp_samples": [{"labels": '{kind="tcp"}', "value": 7}, {"labels": '{kind="http+tcp"}', "value": 3}]},
        {"expr": substitute(by_health), "eval_time": "10m",
         "exp_samples": [{"labels": '{health="healthy"}', "value": 9}, {"labels": '{health="unhealthy"}', "value": 1}]},
        {"expr": f"({substitute(detection_p99)}) < bool 0.5", "eval_time": "10m",
         "exp_samples": [{"labels": "{}", "value": 1}]},
    ]  # fmt: skip
    test_file = tmp_path / "dashboard-test.yaml"
    body = {"rule_files": [], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": inputs, "promql_expr_test": checks}]}  # fmt: skip
    test_file.write_text(yaml.safe_dump(body, sort_keys=False))
    promtool("test", "rules", str(test_file))
