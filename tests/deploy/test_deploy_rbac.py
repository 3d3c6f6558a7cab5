"""RBAC is exactly what ehc uses: a real ``ehc run`` against the simulated API server does everything
it ever does (lists and watches pods, writes the gate's first value, ejects the pods of a node that
went dark with a status patch and an Event, campaigns for, renews and, on SIGTERM, releases its
Lease; with peers on, creates, renews and lists its member Lease and deletes it on SIGTERM); every
request the server sees is recorded and turned into (API group, resource, verb), and that set must
equal what the chart's ClusterRole and Role grant, and what the kustomize base grants."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
import sys
from typing import Any

import pytest
from aiohttp import web
from deploy_helpers import container, env_of, kustomize, kustomize_with_components, one, render_chart
from helpers import conditions_are, until

from ehc.sim import SimCluster

LEASE_NAMESPACE = "kube-system"
LEASE_NAME = "endpoint-health-checker-leader"
IDENTITY = "ehc-a"
MEMBER_LEASE = f"{LEASE_NAME}-{IDENTITY}"  # the replica's member Lease: <LEASE_NAME>-<pod name>
FAST = ["--interval", "300ms", "--timeout", "200ms", "--retry-count", "1", "--confirm-spacing", "20ms",
        "--lease-duration", "2s", "--renew-deadline", "1s", "--retry-period", "250ms", "--metrics-address", "",
        "--failsafe-min-targets", "1000"]  # fmt: skip

Grant = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)
LEASE_VERBS = {("coordination.k8s.io", "leases", v) for v in ("get", "list", "create", "update", "delete")}


def rbac_request(method: str, path: str, query: dict[str, str]) -> tuple[Grant, str, str] | None:
    """The RBAC attributes of a resource request: ((group, resource, verb), namespace, name); None for
    non-resource paths such as discovery."""
    seg = path.strip("/").split("/")
    if seg[0] == "api" and len(seg) >= 3:
        group, rest = "", seg[2:]
    elif seg[0] == "apis" and len(seg) >= 4:
        group, rest = seg[1], seg[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else ""
    if method == "GET":
        verb = "watch" if query.get("watch", "").lower() in ("1", "true") else ("get" if name else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return (group, resource, verb), namespace, name


def granted(rules: list[dict[str, Any]]) -> dict[Grant, list[str] | None]:
    """(group, resource, verb) -> resourceNames (None: any name)."""
    out: dict[Grant, list[str] | None] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert (group, resource, verb) not in out, f"granted twice: {group, resource, verb}"
                    out[(group, resource, verb)] = rule.get("resourceNames")
    return out


OPTED_IN = (("endpointslices", "db-1"), ("endpoints", "db"))


def opted_in_objects(api: Any, pod: Any, port: int) -> None:
    """A selectorless Service's slice and legacy Endpoints, publishing ``pod``'s address by hand."""
    labels = {"endpoint-health-checker.io/enabled": "true", "kubernetes.io/service-name": "db"}
    api.ensure_namespace("data")
    api.endpointslices.create({
        "metadata": {"name": "db-1", "namespace": "data", "labels": labels}, "addressType": "IPv4",
        "endpoints": [{"addresses": [pod.ip], "conditions": {"ready": True}}], "ports": [{"port": port}],
    })  # fmt: skip
    api.endpoints.create({
        "metadata": {"name": "db", "namespace": "data", "labels": labels},
        "subsets": [{"addresses": [{"ip": pod.ip}], "ports": [{"port": port}]}],
    })  # fmt: skip


async def race_owner_edit(api: Any, plural: str, name: str) -> None:
    """Edit the object while ehc's write of it is on its way, then wait for ehc's write to land."""
    objects = api.endpointslices if plural == "endpointslices" else api.endpoints
    await until(lambda: bool(api.write_log.select(resource=plural, verb="PATCH")), f"ehc writing {plural}")
    owner = copy.deepcopy(objects.get("data", name))
    owner["metadata"].setdefault("annotations", {})["edited-by"] = "owner"
    assert objects.update("data", name, owner, actor="owner")[1]
    await until(
        lambda: bool(api.write_log.select(resource=plural, verb="PATCH", ok=True)), f"{plural} written"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def record_ehc_run(
    selectorless: bool = False, witness: bool = False, peers: bool = True
) -> list[tuple[Grant, str, str]]:
    sim = SimCluster(nodes=3, pods_per_node=6, netns=False, kubelet_delay=None)
    seen: list[tuple[str, str, dict[str, str]]] = []
    handle = sim.api._handle

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path, dict(request.query)))
        return await handle(request)

    sim.api._handle = recording  # type: ignore[method-assign]  # bound into the route by start()
    async with sim:
        fleet, api = sim.fleet, sim.api
        gate = [p for p in fleet.targets() if p.style == "gate"]
        victim = "sim-node-000"
        assert gate and any(p.opted_in and p.ports for p in fleet.pods_on(victim))
        extra = ["--node-witness", "tcp"] if witness else []
        # Peers on (the chart's default): a member Lease and the peer endpoint, reached at POD_IP.
        if peers:
            extra += ["--pod-ip", "127.0.0.1", "--peer-address", f"127.0.0.1:{free_port()}"]
        else:
            extra += ["--peer-address", ""]
        if selectorless:
            backend = next(p for p in fleet.pods_on(victim) if p.ports)
            opted_in_objects(api, backend, backend.ports[0])
            extra += ["--selectorless"]
            # ehc's first write of each object is held up while the owner edits it: the write is refused
            # on the stale version, and ehc reads the object again (get).
            for plural, name in OPTED_IN:
                api.faults.delay(1.0, count=1, verb="PATCH", path=f"/{plural}/{name}$")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ehc", "run", "--kubeconfig", sim.kubeconfig, "--identity", IDENTITY,
            "--namespace", LEASE_NAMESPACE, "--lease-name", LEASE_NAME, *FAST, *extra,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            await until(conditions_are(api, gate, "True"), "every gate pod's first value")
            # Without a network namespace the node's ports refuse connections (pings still answer).
            fleet.power_off(victim)
            if selectorless:
                await asyncio.gather(*(race_owner_edit(api, plural, name) for plural, name in OPTED_IN))
            await until(
                lambda: bool(api.write_log.select(resource="events", actor="client", ok=True)), "an Event"
            )
            await asyncio.sleep(1.0)  # a few lease renewals
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
    return [r for r in (rbac_request(*s) for s in seen) if r is not None]


@pytest.fixture(scope="module")
def recorded() -> list[tuple[Grant, str, str]]:
    return asyncio.run(record_ehc_run())


@pytest.fixture(scope="module")
def recorded_selectorless() -> list[tuple[Grant, str, str]]:
    return asyncio.run(record_ehc_run(selectorless=True))


@pytest.fixture(scope="module")
def recorded_witness() -> list[tuple[Grant, str, str]]:
    return asyncio.run(record_ehc_run(witness=True))


@pytest.fixture(scope="module")
def recorded_without_peers() -> list[tuple[Grant, str, str]]:
    return asyncio.run(record_ehc_run(peers=False))


SELECTORLESS = {(group, resource, verb) for group, resource in (("discovery.k8s.io", "endpointslices"), ("", "endpoints"))
                for verb in ("get", "list", "watch", "patch")}  # fmt: skip


def test_ehc_run_uses_pods_events_and_its_lease(recorded: list[tuple[Grant, str, str]]) -> None:
    used = {g for g, _, _ in recorded}
    # The run exercised every code path that talks to the API (a missing one would make the
    # comparison below vacuous): watch, status patch, Event, the leader Lease's whole life, and the
    # member Lease's (created, renewed, listed with the group's, deleted on SIGTERM).
    assert used == {
        ("", "pods", "list"), ("", "pods", "watch"), ("", "pods/status", "patch"), ("", "events", "create"),
    } | LEASE_VERBS  # fmt: skip
    for (group, resource, verb), namespace, name in recorded:
        if resource == "pods" and verb in ("list", "watch"):
            assert namespace == "", "pods are listed and watched cluster-wide"
        if group == "coordination.k8s.io":
            assert namespace == LEASE_NAMESPACE
            if verb in ("create", "list"):
                assert name == ""
            else:
                assert name in (LEASE_NAME, MEMBER_LEASE), (verb, name)
    # The member Lease is named after the pod, so no resourceNames can name it in advance.
    lease_writes = {(v, n) for (g, _, v), _, n in recorded if g == "coordination.k8s.io"}
    assert {("update", MEMBER_LEASE), ("delete", MEMBER_LEASE)} <= lease_writes
    # Events and status patches go to the pods' own namespaces, so they need a ClusterRole.
    assert {ns for (g, r, v), ns, _ in recorded if r in ("events", "pods/status")} - {LEASE_NAMESPACE}


@pytest.mark.parametrize("source", ["chart", "kustomize base"])
def test_rbac_grants_exactly_what_ehc_uses(recorded: list[tuple[Grant, str, str]], source: str) -> None:
    if source == "chart":
        objects, _ = render_chart({"leaderElection": {"leaseName": LEASE_NAME}})
    else:
        objects = kustomize("base")
    cluster = granted(one(objects, "ClusterRole")["rules"])
    namespaced = granted(one(objects, "Role")["rules"])
    leases = {g for g, _, _ in recorded if g[0] == "coordination.k8s.io"}
    everywhere = {g for g, _, _ in recorded} - leases
    assert set(cluster) == everywhere
    assert all(names is None for names in cluster.values())
    assert set(namespaced) == leases  # Leases only in ehc's own namespace
    # Member Leases are named after the pods: no resourceNames can restrict them.
    assert all(names is None for names in namespaced.values())
    sa = one(objects, "ServiceAccount")["metadata"]
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(objects, kind)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": one(objects, role_kind)["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]


def test_selectorless_uses_exactly_the_grants_of_its_chart_value_and_kustomize_component(
    recorded: list[tuple[Grant, str, str]], recorded_selectorless: list[tuple[Grant, str, str]]
) -> None:
    used = {g for g, _, _ in recorded_selectorless} - {g for g, _, _ in recorded}
    assert used == SELECTORLESS  # every one of them exercised, the get by a write conflict
    chart, _ = render_chart({"leaderElection": {"leaseName": LEASE_NAME}, "selectorless": {"enabled": True}})
    component = kustomize_with_components("base", "selectorless")
    for objects in (chart, component):
        cluster = granted(one(objects, "ClusterRole")["rules"])
        assert set(cluster) == {g for g, _, _ in recorded_selectorless} - {
            g for g, _, _ in recorded_selectorless if g[0] == "coordination.k8s.io"
        }
    # Limited to namespaces: nothing cluster-wide, a Role and RoleBinding in each namespace.
    chart, _ = render_chart({"selectorless": {"enabled": True, "namespaces": ["data", "legacy"]}})
    default, _ = render_chart()
    assert one(chart, "ClusterRole")["rules"] == one(default, "ClusterRole")["rules"]

    def selectorless(kind: str) -> dict[str, Any]:
        return {
            o["metadata"]["namespace"]: o
            for o in chart
            if o["kind"] == kind and "selectorless" in o["metadata"]["name"]
        }

    roles, bindings = selectorless("Role"), selectorless("RoleBinding")
    assert roles.keys() == bindings.keys() == {"data", "legacy"}
    for namespace, role in roles.items():
        assert set(granted(role["rules"])) == SELECTORLESS
        assert bindings[namespace]["roleRef"]["name"] == role["metadata"]["name"]


def test_the_node_witness_uses_exactly_the_grants_of_its_chart_value_and_kustomize_component(
    recorded: list[tuple[Grant, str, str]], recorded_witness: list[tuple[Grant, str, str]]
) -> None:
    used = {g for g, _, _ in recorded_witness} - {g for g, _, _ in recorded}
    assert used == {("", "nodes", "list"), ("", "nodes", "watch")}
    chart, _ = render_chart({"leaderElection": {"leaseName": LEASE_NAME}, "nodeWitness": {"mode": "tcp"}})
    component = kustomize_with_components("base", "node-witness")
    for objects in (chart, component):
        cluster = granted(one(objects, "ClusterRole")["rules"])
        assert set(cluster) == {g for g, _, _ in recorded_witness if g[0] != "coordination.k8s.io"}


def test_without_peers_the_role_keeps_to_the_leader_lease(
    recorded_without_peers: list[tuple[Grant, str, str]],
) -> None:
    """peers.enabled=false: no member Lease, so ehc creates, reads and renews the leader Lease alone,
    and the Role names it; no list or delete, no NetworkPolicy, no peer port."""
    leases = {g for g, _, _ in recorded_without_peers if g[0] == "coordination.k8s.io"}
    assert leases == {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
    for (group, _, verb), _, name in recorded_without_peers:
        if group == "coordination.k8s.io":
            assert name == ("" if verb == "create" else LEASE_NAME)
    objects, _ = render_chart({"leaderElection": {"leaseName": LEASE_NAME}, "peers": {"enabled": False}})
    namespaced = granted(one(objects, "Role")["rules"])
    assert set(namespaced) == leases
    # create cannot be limited to a name; get and update are limited to ehc's own Lease.
    assert namespaced[("coordination.k8s.io", "leases", "create")] is None
    assert namespaced[("coordination.k8s.io", "leases", "get")] == [LEASE_NAME]
    assert namespaced[("coordination.k8s.io", "leases", "update")] == [LEASE_NAME]
    assert not [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert [p["name"] for p in container(objects)["ports"]] == ["metrics"]
    assert env_of(objects)["EHC_PEER_ADDRESS"] == ""
