"""The kustomize base and overlays, built with ``kubectl kustomize``: valid Kubernetes objects, the
namespace applied everywhere (RBAC subjects included), env values ehc accepts, the overlays
differing the way environments do; and the base not drifting from the Helm chart."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from deploy_helpers import (
    NAMESPACE,
    OVERLAYS,
    container,
    cpu_millicores,
    env_of,
    ingress_by_port,
    kustomize,
    kustomize_with_components,
    memory_mib,
    one,
    render_chart,
    validate_offline,
)

from ehc.coordinator import settings as ehc_settings

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}

# What each overlay is meant to be, and the chart values that describe the same installation.
EXPECTED = {
    "dev": {"namespace": "ehc-dev", "replicas": 1, "workers": 1, "log_level": "debug", "interval": 0.5},
    "staging": {"namespace": "ehc-staging", "replicas": 2, "workers": 2, "log_level": "info", "interval": 1.0},
    "prod": {"namespace": "endpoint-health-checker", "replicas": 3, "workers": 3, "log_level": "info", "interval": 2.0},
}  # fmt: skip
CHART_VALUES = {
    "dev": {"replicaCount": 1, "workers": 1, "profile": "fast",
            "settings": {"logLevel": "debug", "logFormat": "text"}},
    "staging": {"replicaCount": 2, "workers": 2, "profile": "balanced"},
    "prod": {"replicaCount": 3, "workers": 3, "profile": "tolerant",
             "settings": {"patchQps": 200, "patchBurst": 1000}},
}  # fmt: skip


def settings_of(objects: list[dict[str, Any]]) -> ehc_settings.RunSettings:
    env = {k: v for k, v in env_of(objects).items() if not v.startswith("valueFrom:")}
    return ehc_settings.load(None, {**env, "POD_NAME": "ehc-0", "POD_NAMESPACE": "ehc"})


@pytest.mark.parametrize("tree", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_build_is_valid_and_namespaced_consistently(tree: str) -> None:
    objects = kustomize(tree)
    namespace = one(objects, "Namespace")["metadata"]["name"]
    if tree == "base":
        assert namespace == NAMESPACE
    else:
        assert namespace == EXPECTED[tree.removeprefix("overlays/")]["namespace"]
    sa = one(objects, "ServiceAccount")
    for obj in objects:
        validate_offline(obj)
        meta = obj["metadata"]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kustomize"
        assert meta["labels"]["app.kubernetes.io/name"] == "endpoint-health-checker"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, obj["kind"]
        else:
            assert meta["namespace"] == namespace, obj["kind"]
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            # The binding must follow the ServiceAccount into the overlay's namespace.
            assert obj["subjects"] == [
                {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": namespace}
            ]
    deploy = one(objects, "Deployment")
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert one(objects, "Service")["spec"]["selector"] == selector
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    settings_of(objects)  # ehc accepts every env value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_what_its_environment_needs(overlay: str) -> None:
    objects = kustomize(f"overlays/{overlay}")
    want = EXPECTED[overlay]
    settings = settings_of(objects)
    assert one(objects, "Deployment")["spec"]["replicas"] == want["replicas"]
    assert settings.workers == want["workers"]
    assert settings.log_level == want["log_level"]
    assert settings.interval == want["interval"]
    c = container(objects)
    assert c["image"] == "registry.example.com/platform/endpoint-health-checker:0.1.0"
    requests = c["resources"]["requests"]
    # Enough CPU for the workers at the benchmark's load (dev's small fleet needs far less).
    if overlay != "dev":
        assert cpu_millicores(requests["cpu"]) >= 200 + 750 * settings.workers
        assert memory_mib(requests["memory"]) >= 128 + 64 * settings.workers
    assert "cpu" not in c["resources"].get("limits", {})


@pytest.mark.parametrize("tree", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_peers_are_on_and_only_ehcs_own_pods_reach_the_peer_port(tree: str) -> None:
    objects = kustomize(tree)
    env = env_of(objects)
    assert (env["EHC_HOT_STANDBY"], env["EHC_SECOND_OPINION"]) == ("true", "true")
    assert env["POD_IP"] == "valueFrom:status.podIP"
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert ports == {"metrics": 9090, "peer": 9091}
    assert env["EHC_PEER_ADDRESS"] == f":{ports['peer']}"
    assert env["EHC_METRICS_ADDRESS"] == f":{ports['metrics']}"
    settings = settings_of(objects)
    assert (settings.hot_standby, settings.second_opinion, settings.peer_address) == (True, True, ":9091")
    deploy = one(objects, "Deployment")
    selector = deploy["spec"]["selector"]["matchLabels"]
    policy = one(objects, "NetworkPolicy")
    assert policy["metadata"]["namespace"] == deploy["metadata"]["namespace"]
    assert policy["spec"]["podSelector"] == {"matchLabels": selector}
    # The peer port from ehc's own pods (this namespace only), the metrics port from anywhere.
    assert ingress_by_port(policy) == {9091: [{"podSelector": {"matchLabels": selector}}], 9090: None}


def test_overlays_differ_from_each_other() -> None:
    seen = {}
    for overlay in OVERLAYS:
        objects = kustomize(f"overlays/{overlay}")
        s = settings_of(objects)
        seen[overlay] = (
            one(objects, "Namespace")["metadata"]["name"],
            one(objects, "Deployment")["spec"]["replicas"],
            s.workers,
            (s.interval, s.timeout, s.retry_count),
            container(objects)["resources"]["requests"]["cpu"],
        )
    for i, field in enumerate(("namespace", "replicas", "workers", "detection profile", "cpu request")):
        assert len({v[i] for v in seen.values()}) == len(OVERLAYS), f"overlays share a {field}: {seen}"


# -- drift between the chart and the kustomize tree ----------------------------------------------


def normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without what legitimately differs between Helm and kustomize: labels (helm.sh/chart
    and managed-by) and the order of keys. Selectors and everything else stay."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("labels", None)
    if obj["kind"] == "Deployment":
        obj["spec"]["template"]["metadata"].pop("labels", None)
    return obj


def test_base_and_chart_defaults_do_not_drift() -> None:
    chart, _ = render_chart()
    base = [o for o in kustomize("base") if o["kind"] != "Namespace"]  # helm uses --create-namespace

    def key(o: dict[str, Any]) -> tuple[str, str, str]:
        return (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace", ""))

    assert sorted(map(key, chart)) == sorted(map(key, base))
    by_key = {key(o): o for o in base}
    for obj in chart:
        other = by_key[key(obj)]
        # The objects that matter, compared whole: RBAC rules and bindings, the Deployment (env
        # names and values, probes, securityContext, resources, affinity…), Service, PDB.
        assert normalized(obj) == normalized(other), f"{key(obj)} differs between the chart and the base"
        chart_labels, base_labels = obj["metadata"]["labels"], other["metadata"]["labels"]
        shared = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                  "app.kubernetes.io/component", "app.kubernetes.io/part-of")  # fmt: skip
        assert {k: chart_labels[k] for k in shared} == {k: base_labels[k] for k in shared}
    chart_deploy, base_deploy = one(chart, "Deployment"), one(base, "Deployment")
    assert chart_deploy["spec"]["selector"] == base_deploy["spec"]["selector"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_matches_the_chart_with_the_same_values(overlay: str) -> None:
    """An overlay's detection settings are the chart's profile of the same name, and the rest of its
    env is what the chart sets for the same values."""
    objects = kustomize(f"overlays/{overlay}")
    chart, _ = render_chart(CHART_VALUES[overlay], namespace=EXPECTED[overlay]["namespace"])
    assert env_of(objects) == env_of(chart)
    assert one(objects, "Deployment")["spec"]["replicas"] == one(chart, "Deployment")["spec"]["replicas"]
    assert container(objects)["securityContext"] == container(chart)["securityContext"]
    sc_k, sc_c = (
        one(x, "Deployment")["spec"]["template"]["spec"]["securityContext"] for x in (objects, chart)
    )
    assert sc_k == sc_c


def test_the_selectorless_component_is_the_charts_selectorless_value() -> None:
    """An overlay that lists the component installs what the chart does with selectorless.enabled."""
    chart, _ = render_chart({"selectorless": {"enabled": True}})
    built = kustomize_with_components("base", "selectorless")
    assert env_of(built)["EHC_SELECTORLESS"] == "true" and env_of(built) == env_of(chart)
    assert normalized(one(built, "ClusterRole")) == normalized(one(chart, "ClusterRole"))
