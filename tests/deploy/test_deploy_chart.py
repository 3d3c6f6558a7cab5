"""The Helm chart, rendered by Helm itself (helm-python-sdk bundles Helm's Go SDK): the Deployment
carries the values (env, args, resources, sysctl, securityContext), every object is valid
Kubernetes, the env it sets is accepted by ehc's own settings parser, and the schema rejects bad
values."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    CHART,
    container,
    cpu_millicores,
    env_of,
    helm_module,
    ingress_by_port,
    memory_mib,
    one,
    render_chart,
    validate_offline,
)

from ehc.coordinator import settings as ehc_settings

# The chart's detection profiles; "balanced" must be ehc's own defaults.
PROFILES = {
    "fast": {"HEALTH_CHECK_INTERVAL": "500ms", "HEALTH_CHECK_TIMEOUT": "250ms", "HEALTH_CHECK_RETRY_COUNT": "3",
             "EHC_CONFIRM_SPACING": "50ms", "EHC_RECOVERY_THRESHOLD": "2"},
    "balanced": {"HEALTH_CHECK_INTERVAL": "1s", "HEALTH_CHECK_TIMEOUT": "500ms", "HEALTH_CHECK_RETRY_COUNT": "5",
                 "EHC_CONFIRM_SPACING": "50ms", "EHC_RECOVERY_THRESHOLD": "2"},
    "tolerant": {"HEALTH_CHECK_INTERVAL": "2s", "HEALTH_CHECK_TIMEOUT": "1s", "HEALTH_CHECK_RETRY_COUNT": "7",
                 "EHC_CONFIRM_SPACING": "100ms", "EHC_RECOVERY_THRESHOLD": "3"},
}  # fmt: skip

EXPECTED_KINDS = [
    "ClusterRole", "ClusterRoleBinding", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Role",
    "RoleBinding", "Service", "ServiceAccount",
]  # fmt: skip
STANDARD_LABELS = (
    "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
    "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
)  # fmt: skip


def ehc_accepts(env: dict[str, str]) -> ehc_settings.RunSettings:
    """Parse the Deployment's env the way ``ehc run`` does in the pod (downward-API values filled in)."""
    plain = {k: v for k, v in env.items() if not v.startswith("valueFrom:")}
    plain |= {"POD_NAME": "ehc-0", "POD_NAMESPACE": "ehc"}
    return ehc_settings.load(None, plain)


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def test_default_render_has_every_object_with_standard_labels_and_is_valid() -> None:
    objects, notes = render_chart()
    assert sorted(o["kind"] for o in objects) == EXPECTED_KINDS
    for obj in objects:
        labels = obj["metadata"]["labels"]
        assert all(key in labels for key in STANDARD_LABELS), obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "endpoint-health-checker"
        validate_offline(obj)
    deploy = one(objects, "Deployment")
    selector = deploy["spec"]["selector"]["matchLabels"]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert one(objects, "Service")["spec"]["selector"] == selector
    assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert deploy["spec"]["replicas"] == 2
    assert "1 worker process(es)" in notes
    assert 'profile "balanced"' in notes


def test_default_env_is_ehcs_own_defaults_and_every_setting_is_set() -> None:
    objects, _ = render_chart()
    env = env_of(objects)
    # Every ehc setting is set explicitly (the reference names where they exist).
    assert set(env) == {s.env for s in ehc_settings.SETTINGS}
    assert env["POD_NAME"] == "valueFrom:metadata.name"
    assert env["POD_NAMESPACE"] == "valueFrom:metadata.namespace"
    # Peers on: hot standbys that give the leader a second opinion, reached at the pod's own IP.
    assert env["POD_IP"] == "valueFrom:status.podIP"
    assert (env["EHC_HOT_STANDBY"], env["EHC_SECOND_OPINION"]) == ("true", "true")
    assert env["EHC_PEER_ADDRESS"] == ":9091"
    got = ehc_accepts(env)
    defaults = ehc_settings.load(None, {"POD_NAME": "ehc-0", "POD_NAMESPACE": "ehc"})
    # The chart logs JSON (ehc's default is text, for terminals); everything else is ehc's default.
    assert got.log_format == "json"
    assert {**vars(got), "log_format": "text"} == vars(defaults)
    assert env["LEASE_NAME"] == "endpoint-health-checker-leader"


@pytest.mark.parametrize(
    ("workers", "profile", "host_network"),
    [(1, "balanced", False), (2, "fast", False), (4, "tolerant", False), (8, "fast", True)],
)
def test_workers_and_profile_reach_the_deployment(workers: int, profile: str, host_network: bool) -> None:
    values = {"workers": workers, "profile": profile, "hostNetwork": host_network, "replicaCount": 3}
    objects, notes = render_chart(values)
    for obj in objects:
        validate_offline(obj)
    env = env_of(objects)
    assert env["EHC_WORKERS"] == str(workers)
    assert {k: env[k] for k in PROFILES[profile]} == PROFILES[profile]
    settings = ehc_accepts(env)
    assert settings.workers == workers
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    assert f"{workers} worker process(es)" in notes

    # Requests follow the workers: 200m + 750m each, 128Mi + 64Mi each; memory limit twice the request.
    resources = container(objects)["resources"]
    assert cpu_millicores(resources["requests"]["cpu"]) == 200 + 750 * workers
    assert memory_mib(resources["requests"]["memory"]) == 128 + 64 * workers
    assert memory_mib(resources["limits"]["memory"]) == 2 * memory_mib(resources["requests"]["memory"])
    assert "cpu" not in resources["limits"]

    spec = pod_spec(objects)
    assert spec["hostNetwork"] is host_network
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == 65532
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(objects)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    if host_network:
        # The host's network namespace: no per-pod sysctl; NET_RAW is the fallback.
        assert "sysctls" not in pod_sc
        assert sc["capabilities"]["add"] == ["NET_RAW"]
        assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    else:
        assert pod_sc["sysctls"] == [{"name": "net.ipv4.ping_group_range", "value": "65532 65532"}]
        assert "add" not in sc["capabilities"]


def test_probes_ports_priority_affinity_and_grace_period() -> None:
    objects, _ = render_chart()
    c = container(objects)
    assert c["ports"] == [
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        {"name": "peer", "containerPort": 9091, "protocol": "TCP"},
    ]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert env_of(objects)["EHC_METRICS_ADDRESS"] == ":9090"
    assert "args" not in c  # the image's entrypoint is `ehc run`; settings come from the env
    spec = pod_spec(objects)
    assert spec["priorityClassName"] == "system-cluster-critical"
    # The lease release on SIGTERM is bounded by RENEW_DEADLINE (2 s), then the workers stop.
    assert spec["terminationGracePeriodSeconds"] >= 10
    term = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    assert spec["volumes"] == [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}]
    assert one(objects, "Service")["spec"]["ports"][0]["targetPort"] == "metrics"


def test_explicit_settings_win_over_the_profile_and_everything_is_configurable() -> None:
    values = {
        "profile": "tolerant",
        "settings": {"timeout": "750ms", "retryCount": 0, "failsafeShare": 0.3, "patchQps": 12.5,
                     "logLevel": "debug", "logFormat": "text", "failsafeMinTargets": 0, "defaultProbe": "readiness"},
        "leaderElection": {"leaseName": "ehc-lock", "leaseDuration": "10s", "renewDeadline": "6s",
                           "retryPeriod": "2s"},
        "metrics": {"port": 8080, "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prom"}}},
        "resources": {"requests": {"cpu": "3", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraArgs": ["--patch-burst", "7"],
        "image": {"repository": "registry.example.com/ehc", "tag": "1.2.3"},
        "nodeSelector": {"node-role.kubernetes.io/infra": ""},
        "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {}},
        "priorityClassName": "",
        "podDisruptionBudget": {"enabled": False},
        "selectorless": {"enabled": True, "namespaces": ["data", "legacy-vms"]},
    }  # fmt: skip
    objects, _ = render_chart(values, name="edge", namespace="ops")
    env = env_of(objects)
    assert env["HEALTH_CHECK_INTERVAL"] == "2s"  # from the profile
    assert env["HEALTH_CHECK_TIMEOUT"] == "750ms"  # explicit
    assert env["HEALTH_CHECK_RETRY_COUNT"] == "0"  # explicit zero is not "unset"
    assert env["EHC_RECOVERY_THRESHOLD"] == "3"
    assert env["EHC_DEFAULT_PROBE"] == "readiness"
    assert env["TZ"] == "UTC"
    s = ehc_accepts(env)
    assert (s.failsafe_share, s.patch_qps, s.log_level, s.log_format, s.failsafe_min_targets) == (
        0.3, 12.5, "debug", "text", 0,
    )  # fmt: skip
    assert (s.lease_name, s.lease_duration, s.renew_deadline, s.retry_period) == ("ehc-lock", 10, 6, 2)
    assert (s.selectorless, s.selectorless_namespaces) == (True, ("data", "legacy-vms"))
    assert s.metrics_address == ":8080"
    c = container(objects)
    assert c["args"] == ["--patch-burst", "7"]
    assert c["image"] == "registry.example.com/ehc:1.2.3"
    assert c["resources"] == values["resources"]
    assert c["ports"][0]["containerPort"] == 8080
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux", **values["nodeSelector"]}  # Helm merges maps
    assert spec["tolerations"] == values["tolerations"]
    assert spec["affinity"] == {"nodeAffinity": {}}
    assert "priorityClassName" not in spec
    kinds = sorted(o["kind"] for o in objects)
    assert "PodDisruptionBudget" not in kinds
    # The Leases (the leader's, "ehc-lock", and the members', named after the pods) in "ops" only.
    role = one([o for o in objects if o["metadata"].get("namespace") == "ops"], "Role")
    assert [(r["resources"], r.get("resourceNames")) for r in role["rules"]] == [(["leases"], None)]
    # The ServiceMonitor (a CRD, so not in the OpenAPI schemas) scrapes the metrics Service's port.
    monitor = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    for obj in objects:
        if obj["kind"] != "ServiceMonitor":
            validate_offline(obj)


def test_image_digest_and_disabled_parts() -> None:
    digest = "sha256:" + "ab" * 32
    values = {
        "image": {"digest": digest},
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "metrics": {"service": {"enabled": False}},
    }
    objects, _ = render_chart(values)
    assert sorted(o["kind"] for o in objects) == ["Deployment", "NetworkPolicy", "PodDisruptionBudget"]
    assert container(objects)["image"] == f"endpoint-health-checker@{digest}"
    assert pod_spec(objects)["serviceAccountName"] == "existing"


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"workers": "three"}, "/workers"),
        ({"workers": 0}, "/workers"),
        ({"workers": 1.5}, "/workers"),
        ({"replicaCount": "2"}, "/replicaCount"),
        ({"profile": "ludicrous"}, "/profile"),
        ({"worker": 2}, "worker"),  # a typo is not silently ignored
        ({"settings": {"interval": "1 second"}}, "/settings/interval"),
        ({"settings": {"retryCount": -1}}, "/settings/retryCount"),
        ({"settings": {"failsafeShare": 1.5}}, "/settings/failsafeShare"),
        ({"settings": {"logLevel": "verbose"}}, "/settings/logLevel"),
        ({"settings": {"defaultProbe": "http"}}, "/settings/defaultProbe"),
        ({"leaderElection": {"leaseDuration": 4}}, "/leaderElection/leaseDuration"),
        ({"hostNetwork": "yes"}, "/hostNetwork"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"selectorless": {"enabled": "yes"}}, "/selectorless/enabled"),
        ({"selectorless": {"namespaces": ["Data"]}}, "/selectorless/namespaces/0"),
        ({"selectorless": {"namespaces": "data"}}, "/selectorless/namespaces"),
        ({"settings": {"secondOpinion": "yes"}}, "/settings/secondOpinion"),
        ({"peers": {"enabled": "yes"}}, "/peers/enabled"),
        ({"peers": {"port": 0}}, "/peers/port"),
        ({"peers": {"address": ":9091"}}, "address"),
        ({"peers": {"networkPolicy": {"metricsFrom": {}}}}, "/peers/networkPolicy/metricsFrom"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmValuesError, match="schema") as exc:
        render_chart(values)
    assert where in str(exc.value)


def test_the_network_policy_admits_only_ehcs_own_pods_to_the_peer_port() -> None:
    objects, _ = render_chart()
    policy = one(objects, "NetworkPolicy")
    selector = one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    assert policy["metadata"]["namespace"] == "endpoint-health-checker"
    assert policy["spec"]["podSelector"] == {"matchLabels": selector}
    # The peer port from ehc's own pods (a podSelector alone: this namespace only); the metrics
    # port (and the kubelet's probes on it) from anywhere; nothing else.
    assert ingress_by_port(policy) == {9091: [{"podSelector": {"matchLabels": selector}}], 9090: None}
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert ports == {"metrics": 9090, "peer": 9091}

    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    values = {"peers": {"port": 7946, "networkPolicy": {"metricsFrom": scrapers}}, "metrics": {"port": 8080}}
    objects, notes = render_chart(values)
    policy = one(objects, "NetworkPolicy")
    validate_offline(policy)
    assert ingress_by_port(policy) == {7946: [{"podSelector": {"matchLabels": selector}}], 8080: scrapers}
    ports = {p["name"]: p["containerPort"] for p in container(objects)["ports"]}
    assert ports == {"metrics": 8080, "peer": 7946}
    env = env_of(objects)
    assert env["EHC_PEER_ADDRESS"] == ":7946"
    assert ehc_accepts(env).peer_address == ":7946"
    assert "7946" in notes

    objects, _ = render_chart({"peers": {"networkPolicy": {"enabled": False}}})
    assert "NetworkPolicy" not in [o["kind"] for o in objects]
    assert env_of(objects)["EHC_PEER_ADDRESS"] == ":9091"


def test_peers_off_means_no_peer_address_port_or_policy() -> None:
    objects, notes = render_chart({"peers": {"enabled": False}, "settings": {"hotStandby": False}})
    assert "NetworkPolicy" not in [o["kind"] for o in objects]
    assert [p["name"] for p in container(objects)["ports"]] == ["metrics"]
    env = env_of(objects)
    assert (env["EHC_PEER_ADDRESS"], env["EHC_HOT_STANDBY"]) == ("", "false")
    assert env["POD_IP"] == "valueFrom:status.podIP"  # harmless without peers
    settings = ehc_accepts(env)
    assert (settings.peer_address, settings.hot_standby) == ("", False)
    assert ehc_settings.concerns(settings) == []  # a second opinion without peers is no concern
    assert "member Lease" not in notes


def test_peer_and_metrics_ports_must_differ() -> None:
    helm = helm_module()
    with pytest.raises(helm.HelmRenderError, match="must differ"):
        render_chart({"peers": {"port": 9090}})
    objects, _ = render_chart({"peers": {"enabled": False, "port": 9090}})  # no peer listener: fine
    assert env_of(objects)["EHC_PEER_ADDRESS"] == ""


def test_helm_lint_is_clean() -> None:
    helm = helm_module()
    report = helm.lint(str(CHART), strict=True, namespace="endpoint-health-checker")
    assert report["errors"] == [], report
    # Severity 2 is a warning, 3 an error; the chart's icon (severity 1, info) is optional.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_host_network_root_fallback_is_opt_in_and_only_with_host_network() -> None:
    """Kubernetes gives added capabilities to root processes only (kubernetes/kubernetes#56374), so the
    NET_RAW fallback under hostNetwork takes effect with runAsUser 0, which holds NET_RAW and nothing
    else; without hostNetwork root is refused (the sysctl makes ICMP unprivileged)."""
    helm = helm_module()
    objects, _ = render_chart({"hostNetwork": True, "runAsUser": 0})
    for obj in objects:
        validate_offline(obj)
    pod_sc = pod_spec(objects)["securityContext"]
    sc = container(objects)["securityContext"]
    assert (pod_sc["runAsNonRoot"], pod_sc["runAsUser"], sc["runAsNonRoot"]) == (False, 0, False)
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW"]}
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    with pytest.raises(helm.HelmRenderError, match="only for hostNetwork"):
        render_chart({"runAsUser": 0})


def test_the_load_test_runs_the_charts_profiles() -> None:
    """``perf/run.py --profile`` passes each profile to ``ehc run`` as flags: the chart's values."""
    perf = Path(__file__).resolve().parents[2] / "perf"
    sys.path.insert(0, str(perf))  # run.py imports its harness package from beside it
    try:
        spec = importlib.util.spec_from_file_location("ehc_perf_run", perf / "run.py")
        assert spec is not None and spec.loader is not None
        run = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(run)
    finally:
        sys.path.remove(str(perf))
    env_of_flag = {s.flag: s.env for s in ehc_settings.SETTINGS}
    as_env = {
        name: {env_of_flag[f"--{flag}"]: value for flag, value in flags.items()}
        for name, flags in run.PROFILES.items()
    }
    assert as_env == PROFILES
