"""Selectorless Services: which addresses of an EndpointSlice or Endpoints object are checked, and how."""

from __future__ import annotations

from typing import Any

import msgspec

from ehc.kube.model import Endpoints, EndpointSlice
from ehc.sources.endpoints.selection import select_endpoints, select_slice
from ehc.wire.checks import Icmp, Tcp

OPTED = {"endpoint-health-checker.io/enabled": "true", "kubernetes.io/service-name": "db"}


def meta(labels: dict[str, str] | None = None, **annotations: str) -> dict[str, Any]:
    return {"name": "db-1", "namespace": "data", "labels": OPTED | (labels or {}), "annotations": annotations}


def eps(*endpoints: dict[str, Any], ports: list[dict[str, Any]] | None = None, **kw: Any) -> EndpointSlice:
    body = {"metadata": meta(**kw), "addressType": "IPv4", "endpoints": list(endpoints)}
    if ports is not None:
        body["ports"] = ports
    return msgspec.convert(body, EndpointSlice)


def endpoint(address: str, node: str = "vm-1", zone: str = "a") -> dict[str, Any]:
    return {"addresses": [address], "conditions": {"ready": True}, "nodeName": node, "zone": zone}


def test_every_address_is_a_target_checked_on_every_tcp_port() -> None:
    sel = select_slice(
        eps(endpoint("10.0.0.7"), endpoint("10.0.0.8", "vm-2", "b"),
            ports=[{"port": 5432}, {"port": 9187, "name": "metrics"}, {"port": 53, "protocol": "UDP"}])
    )  # fmt: skip
    assert sel.refused == "" and sel.problems == ()
    assert [(t.key, t.ip, t.node, t.zone, t.checks) for t in sel.targets] == [
        ("EndpointSlice/data/db-1/10.0.0.7", "10.0.0.7", "vm-1", "a", (Tcp(5432), Tcp(9187))),
        ("EndpointSlice/data/db-1/10.0.0.8", "10.0.0.8", "vm-2", "b", (Tcp(5432), Tcp(9187))),
    ]


def test_no_tcp_port_means_icmp_and_the_probe_annotation_applies_where_it_can() -> None:
    assert select_slice(eps(endpoint("10.0.0.7"))).targets[0].checks == (Icmp(),)
    assert select_slice(eps(endpoint("10.0.0.7"), ports=[{"port": None}])).targets[0].checks == (Icmp(),)
    icmp = {"endpoint-health-checker.io/probe": "icmp"}
    assert select_slice(eps(endpoint("10.0.0.7"), ports=[{"port": 80}], **icmp)).targets[0].checks == (
        Icmp(),
    )
    sel = select_slice(
        eps(endpoint("10.0.0.7"), ports=[{"port": 80}], **{"endpoint-health-checker.io/probe": "readiness"})
    )
    assert sel.targets[0].checks == (Tcp(80),) and "no readiness probe to follow" in sel.problems[0]


def test_slices_of_the_kubernetes_controllers_are_refused_and_say_why() -> None:
    managed = "endpointslice.kubernetes.io/managed-by"
    sel = select_slice(eps(endpoint("10.0.0.7"), labels={managed: "endpointslice-controller.k8s.io"}))
    assert sel.targets == () and "EndpointSlice controller" in sel.refused and sel.problems == (sel.refused,)
    # A mirrored slice carries the label of the Endpoints object it mirrors: refused, but no mistake.
    sel = select_slice(
        eps(endpoint("10.0.0.7"), labels={managed: "endpointslicemirroring-controller.k8s.io"})
    )
    assert sel.targets == () and "Endpoints object" in sel.refused and sel.problems == ()
    # The Endpoints of a Service with a selector belong to the Endpoints controller.
    e = msgspec.convert(
        {"metadata": meta(**{"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-22T10:00:00Z"}),
         "subsets": [{"addresses": [{"ip": "10.0.0.7"}]}]},
        Endpoints,
    )  # fmt: skip
    sel = select_endpoints(e)
    assert sel.targets == () and "Endpoints controller" in sel.refused and sel.problems == (sel.refused,)
    mine = select_slice(eps(endpoint("10.0.0.7"), labels={"endpointslice.kubernetes.io/managed-by": "me"}))
    assert len(mine.targets) == 1


def test_fqdn_slices_are_refused() -> None:
    s = msgspec.convert(
        {"metadata": meta(), "addressType": "FQDN", "endpoints": [{"addresses": ["db.example"]}]},
        EndpointSlice,
    )
    sel = select_slice(s)
    assert sel.targets == () and sel.refused.startswith("addressType FQDN")


def test_ipv6_an_address_listed_twice_bad_addresses_and_an_empty_slice() -> None:
    sel = select_slice(eps(endpoint("fd00::0a"), endpoint("fd00::a"), endpoint("10.1.2"), {"addresses": []}))
    assert [t.ip for t in sel.targets] == ["fd00::a"]
    assert sel.problems == (
        "endpoints[2] address '10.1.2' is not an IPv4 or IPv6 address; it is not checked",
        "endpoints[3] has no address; it is not checked",
    )
    empty = select_slice(eps())
    assert empty.targets == () and empty.refused == "" and empty.problems == ()


def test_endpoints_ready_and_not_ready_addresses_are_all_checked() -> None:
    e = msgspec.convert(
        {"metadata": meta(), "subsets": [
            {"addresses": [{"ip": "10.0.0.7", "nodeName": "vm-1"}], "notReadyAddresses": [{"ip": "10.0.0.8"}],
             "ports": [{"port": 6379}]},
            {"addresses": [{"ip": "10.0.0.9"}]},
        ]},
        Endpoints,
    )  # fmt: skip
    sel = select_endpoints(e)
    assert [(t.key, t.node, t.checks) for t in sel.targets] == [
        ("Endpoints/data/db-1/10.0.0.7", "vm-1", (Tcp(6379),)),
        ("Endpoints/data/db-1/10.0.0.8", "", (Tcp(6379),)),
        ("Endpoints/data/db-1/10.0.0.9", "", (Icmp(),)),
    ]
