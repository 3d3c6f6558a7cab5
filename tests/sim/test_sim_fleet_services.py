"""The fleet's Services: a selector Service per workload, whose slices the controller stand-in keeps,
and external backends behind selectorless Services that fail with their node."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from helpers import connect_from

from ehc.sim import SimCluster
from ehc.sim import netns as netns_mod
from ehc.sim.fleet import (
    EXTERNAL_GROUP,
    EXTERNAL_MANAGER,
    FleetSpec,
    build_externals,
    build_pods,
    node_cidrs,
)
from ehc.sim.slicectl import ACTOR, CONTROLLER, MANAGED_BY, SERVICE_NAME

NETNS_OK, NETNS_WHY = netns_mod.available()
needs_netns = pytest.mark.skipif(not NETNS_OK, reason=f"fleet namespace unavailable: {NETNS_WHY}")
ENABLED = "endpoint-health-checker.io/enabled"


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    async with SimCluster(3, 6, netns=True, kubelet_delay=None, ipv6_every=4, external_per_node=2) as cluster:
        yield cluster


def test_externals_are_grouped_across_nodes() -> None:
    spec = FleetSpec(nodes=50, pods_per_node=400, external_per_node=3)
    externals = build_externals(spec)
    assert len(externals) == 150 and len({x.ip for x in externals}) == 150
    assert not {x.ip for x in externals} & {p.ip for p in build_pods(spec)}
    for x in externals:
        assert ipaddress.ip_address(x.ip) in ipaddress.ip_network(node_cidrs(x.node_index)[0])
    groups = Counter((x.kind, x.namespace, x.name) for x in externals)
    assert max(groups.values()) == EXTERNAL_GROUP
    assert {kind for kind, _, _ in groups} == {"EndpointSlice", "Endpoints"}
    for key in groups:
        nodes = [x.node for x in externals if (x.kind, x.namespace, x.name) == key]
        assert len(set(nodes)) == len(nodes)  # one member per node: a node's death hits some, not all
    small = build_externals(FleetSpec(nodes=3, pods_per_node=2, external_per_node=1))
    assert Counter(x.kind for x in small) == {"EndpointSlice": 2, "Endpoints": 1}
    with pytest.raises(ValueError):
        build_pods(FleetSpec(nodes=1, pods_per_node=1000, external_per_node=100))


async def test_workload_services_get_controller_slices() -> None:
    async with SimCluster(2, 12, netns=False, listeners=False, kubelet_delay=None) as sim:
        api, fleet = sim.api, sim.fleet
        workloads = {(p.namespace, p.template) for p in fleet.pods}
        services = {k: s for k, (s, _raw) in api.services.objects.items()}
        assert set(services) == workloads
        assert all(s["spec"]["selector"] == {"app": name} for (_ns, name), s in services.items())
        slices = [s for s, _raw in api.endpointslices.objects.values()]
        assert all(s["metadata"]["labels"][MANAGED_BY] == CONTROLLER for s in slices)
        by_ip = {e["addresses"][0]: (s, e) for s in slices for e in s["endpoints"]}
        assert set(by_ip) == {p.ip for p in fleet.pods}
        for p in fleet.pods:
            s, e = by_ip[p.ip]
            assert (
                s["metadata"]["labels"][SERVICE_NAME] == p.template
                and s["metadata"]["namespace"] == p.namespace
            )
            assert e["nodeName"] == p.node and e["targetRef"]["name"] == p.name
            assert e["conditions"]["ready"] is (p.style != "gate")  # gate pods wait for their gate
            assert sorted(port["port"] for port in s["ports"]) == sorted(
                cp["containerPort"]
                for c in api.get_pod(*p.key)["spec"]["containers"]
                for cp in c.get("ports", [])
            )  # named targetPorts resolved
        victim = next(p for p in fleet.pods if p.style == "annotation")
        t0 = time.monotonic()
        api.set_pod_condition(victim.namespace, victim.name, "Ready", "False", actor="client")
        [(ns, name, ip)] = api.write_log.slice_not_ready(since=t0, actor=ACTOR)
        assert (ns, ip) == (victim.namespace, victim.ip) and name == by_ip[victim.ip][0]["metadata"]["name"]

    async with SimCluster(1, 4, netns=False, listeners=False, kubelet_delay=None, services=False) as sim:
        assert not sim.api.services.objects and not sim.api.endpointslices.objects


def check_objects(sim: SimCluster) -> None:
    """The API objects publish exactly ``fleet.externals()``, labelled as a third party's are."""
    api, fleet = sim.api, sim.fleet
    externals = fleet.externals()
    assert {x.kind for x in externals} == {"EndpointSlice", "Endpoints"}
    published: dict[tuple[str, str, str, str], str] = {}  # (kind, namespace, name, ip) -> node
    for x in externals:
        svc = api.services.get(x.namespace, x.service)
        assert svc is not None and "selector" not in svc["spec"]
        if x.kind == "EndpointSlice":
            obj = api.endpointslices.get(x.namespace, x.name)
            assert obj is not None
            labels = obj["metadata"]["labels"]
            assert labels == {ENABLED: "true", SERVICE_NAME: x.service, MANAGED_BY: EXTERNAL_MANAGER}
            assert obj["ports"] == [{"name": "postgres", "port": x.port, "protocol": "TCP"}]
            for e in obj["endpoints"]:
                assert e["conditions"] == {"ready": True, "serving": True, "terminating": False}
                published[(x.kind, x.namespace, x.name, e["addresses"][0])] = e["nodeName"]
        else:
            obj = api.endpoints.get(x.namespace, x.name)
            assert obj is not None
            labels = obj["metadata"]["labels"]
            assert labels == {ENABLED: "true", "endpointslice.kubernetes.io/skip-mirror": "true"}
            [subset] = obj["subsets"]
            assert subset["ports"] == [{"name": "redis", "port": x.port, "protocol": "TCP"}]
            for a in subset["addresses"]:
                published[(x.kind, x.namespace, x.name, a["ip"])] = a["nodeName"]
    assert published == {(x.kind, x.namespace, x.name, x.ip): x.node for x in externals}
    touched = {e.name for e in api.write_log.select(resource="endpointslices", actor=ACTOR)}
    assert not touched & {x.name for x in externals}  # the controller leaves them alone


@needs_netns
async def test_externals_fail_with_their_node(sim: SimCluster) -> None:
    fleet = sim.fleet
    check_objects(sim)
    for x in fleet.externals():
        assert await connect_from(fleet, x.ip, x.port) == "ok", x
    # An object with members on the node that dies and on others that live.
    node = fleet.nodes[1]
    mixed = next(
        name
        for name in {x.name for x in fleet.externals()}
        if {x.node for x in fleet.externals() if x.name == name} >= {node, fleet.nodes[0]}
    )
    members = [x for x in fleet.externals() if x.name == mixed]
    fleet.power_off(node)
    results = await asyncio.gather(*(connect_from(fleet, x.ip, x.port, 0.3) for x in members))
    assert {x.node: r for x, r in zip(members, results, strict=True)} == {
        x.node: "timeout" if x.node == node else "ok" for x in members
    }
    fleet.recover(node)
    assert {await connect_from(fleet, x.ip, x.port) for x in members} == {"ok"}


async def test_externals_without_namespace_close_with_their_node() -> None:
    async with SimCluster(2, 2, netns=False, kubelet_delay=None, external_per_node=1) as sim:
        fleet = sim.fleet
        check_objects(sim)
        x = fleet.externals_on(fleet.nodes[0])[0]
        other = fleet.externals_on(fleet.nodes[1])[0]
        assert await connect_from(fleet, x.ip, x.port) == "ok"
        fleet.power_off(x.node)
        assert await connect_from(fleet, x.ip, x.port) == "refused"  # the best a non-root fleet can do
        assert await connect_from(fleet, other.ip, other.port) == "ok"
        fleet.recover(x.node)
        assert await connect_from(fleet, x.ip, x.port) == "ok"
