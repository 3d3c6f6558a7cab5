"""Selectorless Services: what an EndpointSlice or Endpoints object shows per address, and the JSON
patch that makes it show ehc's verdicts; each plan is applied with the simulated API server's RFC 6902
implementation and the resulting object is checked field by field."""

from __future__ import annotations

from typing import Any

import msgspec

from ehc.kube.model import Endpoints, EndpointSlice
from ehc.sim.patch import json_patch
from ehc.sources.endpoints.readiness import endpoints_patch, endpoints_shows, slice_patch, slice_shows
from ehc.wire.messages import Health

H, U = Health.HEALTHY, Health.UNHEALTHY


def a_slice(*endpoints: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "db", "namespace": "data", "resourceVersion": "7"},
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"port": 5432}],
    }


def ep(address: str, hints: bool = False, **conditions: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "addresses": [address],
        "nodeName": "vm-1",
        "targetRef": {"kind": "VM", "name": address},
    }
    if conditions:
        out["conditions"] = conditions
    if hints:
        out["hints"] = {"forZones": [{"name": "a"}]}
    return out


def plan_slice(raw: dict[str, Any], want: dict[str, bool]) -> tuple[dict[str, Any], list[str]]:
    ops, changed = slice_patch(msgspec.convert(raw, EndpointSlice), want)
    return json_patch(raw, ops), changed


def test_a_slice_shows_nil_as_ready_and_an_address_healthy_only_if_every_entry_is() -> None:
    s = msgspec.convert(
        a_slice(ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=True), ep("10.0.0.3", ready=True),
                ep("10.0.0.3", ready=False, serving=False), ep("10.0.0.4", ready=False, serving=True, terminating=True),
                ep("not-an-ip")),
        EndpointSlice,
    )  # fmt: skip
    assert slice_shows(s) == {"10.0.0.1": H, "10.0.0.2": U, "10.0.0.3": U, "10.0.0.4": H}


def test_an_unhealthy_address_gets_ready_and_serving_false_and_nothing_else_changes() -> None:
    raw = a_slice(ep("10.0.0.1", hints=True), ep("10.0.0.2", ready=True, serving=True), ep("10.0.0.3"))
    after, changed = plan_slice(raw, {"10.0.0.1": False, "10.0.0.2": True})
    assert changed == ["10.0.0.1"]  # 10.0.0.2 already shows what is wanted; 10.0.0.3 has no verdict
    assert after["endpoints"][0] == ep("10.0.0.1", hints=True, ready=False, serving=False)
    assert after["endpoints"][1:] == raw["endpoints"][1:]
    assert after["ports"] == raw["ports"] and after["metadata"] == raw["metadata"]


def test_recovery_sets_serving_and_ready_unless_terminating_which_is_kept() -> None:
    raw = a_slice(
        ep("10.0.0.1", ready=False, serving=False),
        ep("10.0.0.2", ready=False, serving=False, terminating=True),
    )
    after, changed = plan_slice(raw, {"10.0.0.1": True, "10.0.0.2": True})
    assert changed == ["10.0.0.1", "10.0.0.2"]
    assert after["endpoints"][0]["conditions"] == {"ready": True, "serving": True}
    assert after["endpoints"][1]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    # An unhealthy terminating endpoint stops serving; terminating stays the owner's.
    after, _ = plan_slice(
        a_slice(ep("10.0.0.2", ready=False, serving=True, terminating=True)), {"10.0.0.2": False}
    )
    assert after["endpoints"][0]["conditions"] == {"ready": False, "serving": False, "terminating": True}


def test_an_address_listed_twice_is_written_in_both_entries_and_reported_once() -> None:
    raw = a_slice(ep("10.0.0.1"), ep("10.0.0.9"), ep("10.0.0.1", ready=True))
    after, changed = plan_slice(raw, {"10.0.0.1": False})
    assert changed == ["10.0.0.1"]
    assert [e["conditions"] for e in after["endpoints"] if e["addresses"] == ["10.0.0.1"]] == [
        {"ready": False, "serving": False}
    ] * 2


def test_an_address_the_slice_no_longer_lists_is_never_written_back_and_empty_plans_are_empty() -> None:
    raw = a_slice(ep("10.0.0.1"))
    after, changed = plan_slice(raw, {"10.0.0.7": False})
    assert (after, changed) == (raw, [])
    assert slice_patch(msgspec.convert({**raw, "endpoints": None}, EndpointSlice), {"10.0.0.1": False}) == (
        [],
        [],
    )


def endpoints(*subsets: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "db", "namespace": "data", "resourceVersion": "7"}, "subsets": list(subsets)}


def addr(ip: str) -> dict[str, Any]:
    return {"ip": ip, "nodeName": "vm-1", "hostname": f"h{ip[-1]}", "targetRef": {"kind": "VM", "name": ip}}


def plan_endpoints(raw: dict[str, Any], want: dict[str, bool]) -> tuple[dict[str, Any], list[str]]:
    ops, changed = endpoints_patch(msgspec.convert(raw, Endpoints), want)
    return json_patch(raw, ops), changed


def test_endpoints_addresses_move_between_the_lists_with_everything_they_carry() -> None:
    ports = [{"port": 5432}]
    raw = endpoints(
        {"addresses": [addr("10.0.0.1"), addr("10.0.0.2"), addr("10.0.0.3")], "ports": ports},
        {
            "addresses": [addr("10.0.1.1")],
            "notReadyAddresses": [addr("10.0.1.2"), addr("10.0.1.3")],
            "ports": ports,
        },
    )
    want = {"10.0.0.1": False, "10.0.0.3": False, "10.0.0.2": True, "10.0.1.2": True, "10.0.1.3": False}
    after, changed = plan_endpoints(raw, want)
    assert sorted(changed) == ["10.0.0.1", "10.0.0.3", "10.0.1.2"]
    first, second = after["subsets"]
    assert first["addresses"] == [addr("10.0.0.2")]
    assert sorted(first["notReadyAddresses"], key=lambda a: a["ip"]) == [addr("10.0.0.1"), addr("10.0.0.3")]
    assert sorted(second["addresses"], key=lambda a: a["ip"]) == [addr("10.0.1.1"), addr("10.0.1.2")]
    assert second["notReadyAddresses"] == [addr("10.0.1.3")]
    assert first["ports"] == second["ports"] == ports
    assert endpoints_shows(msgspec.convert(after, Endpoints)) == {
        "10.0.0.1": U, "10.0.0.2": H, "10.0.0.3": U, "10.0.1.1": H, "10.0.1.2": H, "10.0.1.3": U,
    }  # fmt: skip


def test_endpoints_both_ways_in_one_subset_and_an_address_in_two_subsets() -> None:
    raw = endpoints(
        {"addresses": [addr("10.0.0.1"), addr("10.0.0.2")], "notReadyAddresses": [addr("10.0.0.3")]},
        {"addresses": [addr("10.0.0.1")]},
    )
    after, changed = plan_endpoints(raw, {"10.0.0.1": False, "10.0.0.3": True})
    assert sorted(changed) == ["10.0.0.1", "10.0.0.3"]
    assert after["subsets"][0]["addresses"] == [addr("10.0.0.2"), addr("10.0.0.3")]
    assert after["subsets"][0]["notReadyAddresses"] == [addr("10.0.0.1")]
    assert after["subsets"][1] == {"addresses": [], "notReadyAddresses": [addr("10.0.0.1")]}
    assert endpoints_shows(msgspec.convert(after, Endpoints))["10.0.0.1"] == U
