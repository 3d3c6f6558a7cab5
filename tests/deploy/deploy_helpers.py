"""Shared by the deploy tests: render the Helm chart with Helm's Go SDK (helm-python-sdk), build
kustomize trees with ``kubectl kustomize``, validate objects offline against the Kubernetes OpenAPI
schemas (kubernetes-validate), and read a rendered Deployment's container."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "endpoint-health-checker"
KUSTOMIZE = ROOT / "deploy" / "kustomize"
OVERLAYS = ("dev", "staging", "prod")
RELEASE = "endpoint-health-checker"  # the release name and namespace the kustomize base mirrors
NAMESPACE = "endpoint-health-checker"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas shipped.
KUBE_VERSIONS = ("1.25.0", "1.37.0")

Obj = dict[str, Any]


@functools.cache
def _chart() -> Any:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (test extra)")
    return helm.Chart.load(str(CHART))


def render_chart(
    values: Obj | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> tuple[list[Obj], str]:
    """Render the chart as ``helm install`` would (schema checked): the objects and NOTES.txt."""
    out = _chart().render(values or {}, name=name, namespace=namespace, is_install=True)
    objects: list[Obj] = []
    notes = ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects, notes


def helm_module() -> Any:
    return pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (test extra)")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: the kustomize builds need `kubectl kustomize`")
    return path


@functools.cache
def _kustomize(directory: str) -> str:
    out = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def kustomize(tree: str) -> list[Obj]:
    """``kubectl kustomize deploy/kustomize/<tree>`` (e.g. ``base``, ``overlays/prod``)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(str(KUSTOMIZE / tree))) if doc]


def kustomize_with_components(tree: str, *components: str) -> list[Obj]:
    """``tree`` with ``deploy/kustomize/components/<name>`` added, as an overlay listing them would."""
    with tempfile.TemporaryDirectory() as overlay:
        rel = os.path.relpath(KUSTOMIZE, overlay)  # kustomize refuses absolute paths
        body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [f"{rel}/{tree}"], "components": [f"{rel}/components/{c}" for c in components]}  # fmt: skip
        Path(overlay, "kustomization.yaml").write_text(yaml.safe_dump(body))
        return [doc for doc in yaml.safe_load_all(_kustomize(overlay)) if doc]


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(objects: list[Obj]) -> Obj:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["ehc"]
    return containers[0]


def env_of(objects: list[Obj]) -> dict[str, str]:
    """The container's plain env values (downward-API entries appear as ``valueFrom:<fieldPath>``)."""
    out: dict[str, str] = {}
    for e in container(objects)["env"]:
        assert e["name"] not in out, f"duplicate env {e['name']}"
        if "valueFrom" in e:
            out[e["name"]] = "valueFrom:" + e["valueFrom"]["fieldRef"]["fieldPath"]
        else:
            out[e["name"]] = e["value"]
    return out


def ingress_by_port(policy: Obj) -> dict[int, list[Obj] | None]:
    """A NetworkPolicy's ingress rules as TCP port -> ``from`` peers (None: from anywhere)."""
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    out: dict[int, list[Obj] | None] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            assert port["protocol"] == "TCP" and port["port"] not in out, rule
            out[port["port"]] = rule.get("from")
    return out


def validate_offline(obj: Obj) -> None:
    """Validate against the Kubernetes OpenAPI schemas shipped in kubernetes-validate (strict: unknown
    fields fail too), for the oldest supported and the newest Kubernetes."""
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (test extra)"
    )
    for version in KUBE_VERSIONS:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as exc:
            raise AssertionError(
                f"{obj['kind']}/{obj['metadata']['name']} is invalid for Kubernetes {version}: {exc.message} "
                f"at {'.'.join(str(p) for p in exc.path)}"
            ) from None


def cpu_millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def memory_mib(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(quantity[:-2]) * units[quantity[-2:]]


def dashboard_queries(dashboard: Obj) -> list[str]:
    """Every PromQL query of a Grafana dashboard: each panel target's ``expr`` (rows' nested panels
    too) and each query variable's query; ``label_values(<selector>, <label>)`` gives its selector
    (``label_values(<label>)``, with no selector, gives nothing)."""
    queries: list[str] = []
    panels = list(dashboard.get("panels", []))
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        queries.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query", "")
        query = (query.get("query", "") if isinstance(query, dict) else query).strip()
        name, _, rest = query.partition("(")
        if name.strip() == "label_values" and rest.endswith(")"):
            selector, comma, _label = rest[:-1].rpartition(",")
            if comma:
                queries.append(selector.strip())
        elif name.strip() == "query_result" and rest.endswith(")"):
            queries.append(rest[:-1].strip())
        elif name.strip() not in ("label_names", "metrics") and query:
            queries.append(query)
    return queries
