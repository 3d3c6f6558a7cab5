"""Services, Endpoints and discovery.k8s.io/v1 EndpointSlices on the simulated API server, through the
real kubernetes_asyncio client (issue 13: health checks for selectorless Services)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.rest import ApiException

from ehc.sim.apiserver import ApiServer
from ehc.sim.patch import STRATEGIC, apply_patch

ENABLED = "endpoint-health-checker.io/enabled"
SELECTOR = f"{ENABLED}=true"
MERGE = "application/merge-patch+json"


def service(name: str, labelled: bool = True) -> dict[str, Any]:
    labels = {ENABLED: "true"} if labelled else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }


def endpoints(name: str, ips: list[str], labelled: bool = True) -> dict[str, Any]:
    labels = {ENABLED: "true"} if labelled else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "subsets": [
            {
                "addresses": [{"ip": ip} for ip in ips],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        ],
    }


def endpoint(ip: str, ready: bool = True) -> dict[str, Any]:
    return {"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": False}}


def endpoint_slice(name: str, ips: list[str], labelled: bool = True) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": "ext", "endpointslice.kubernetes.io/managed-by": "someone"}
    if labelled:
        labels[ENABLED] = "true"
    return {
        "metadata": {"name": name, "labels": labels},
        "addressType": "IPv4",
        "endpoints": [endpoint(ip) for ip in ips],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def names(items: list[Any]) -> list[str]:
    return sorted(i.metadata.name for i in items)


def reason(exc: ApiException) -> str:
    return msgspec.json.decode(exc.body)["reason"]


async def test_discovery_lists_the_new_resources(ac: client.ApiClient) -> None:
    core = {r.name: r for r in (await client.CoreV1Api(ac).get_api_resources()).resources}
    assert core["services"].kind == "Service" and core["services"].namespaced
    assert core["services"].short_names == ["svc"] and "services/status" in core
    assert core["endpoints"].kind == "Endpoints" and core["endpoints"].short_names == ["ep"]
    assert set(core["endpoints"].verbs) >= {"create", "get", "list", "watch", "update", "patch", "delete"}
    groups = {g.name: g for g in (await client.ApisApi(ac).get_api_versions()).groups}
    assert groups["discovery.k8s.io"].preferred_version.group_version == "discovery.k8s.io/v1"
    group = await client.DiscoveryApi(ac).get_api_group()
    assert group.name == "discovery.k8s.io" and [v.version for v in group.versions] == ["v1"]
    disc = await client.DiscoveryV1Api(ac).get_api_resources()
    assert disc.group_version == "discovery.k8s.io/v1"
    [slices] = disc.resources
    assert (slices.name, slices.kind, slices.namespaced) == ("endpointslices", "EndpointSlice", True)


async def test_services_crud_and_optimistic_concurrency(api: ApiServer, ac: client.ApiClient) -> None:
    v1 = client.CoreV1Api(ac)
    created = await v1.create_namespaced_service("default", service("ext"))
    await v1.create_namespaced_service("default", service("plain", labelled=False))
    assert created.kind == "Service" and created.spec.selector is None  # selectorless
    with pytest.raises(ApiException) as e:
        await v1.create_namespaced_service("default", service("ext"))
    assert e.value.status == 409 and reason(e.value) == "AlreadyExists"
    assert names((await v1.list_namespaced_service("default")).items) == ["ext", "plain"]
    labelled = await v1.list_service_for_all_namespaces(label_selector=SELECTOR)
    assert names(labelled.items) == ["ext"]

    got = await v1.read_namespaced_service("ext", "default")
    got.metadata.annotations = {"a": "1"}
    updated = await v1.replace_namespaced_service("ext", "default", got)
    assert int(updated.metadata.resource_version) > int(got.metadata.resource_version)
    got.metadata.annotations = {"a": "2"}
    with pytest.raises(ApiException) as e:  # got still carries the old resourceVersion
        await v1.replace_namespaced_service("ext", "default", got)
    assert e.value.status == 409 and reason(e.value) == "Conflict"
    assert api.services.get("default", "ext")["metadata"]["annotations"] == {"a": "1"}

    # Strategic merge: Service ports merge by port.
    patched = await v1.patch_namespaced_service(
        "ext", "default", {"spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}
    )
    assert [p.port for p in patched.spec.ports] == [80, 443]
    # status is a subresource: a write of the main resource leaves it alone.
    st = {"status": {"conditions": [{"type": "Probed", "status": "True", "reason": "R", "message": "",
                                     "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}  # fmt: skip
    await v1.patch_namespaced_service("ext", "default", st)
    assert "conditions" not in (api.services.get("default", "ext").get("status") or {})
    with_status = await v1.patch_namespaced_service_status("ext", "default", st)
    assert [c.type for c in with_status.status.conditions] == ["Probed"]

    await v1.delete_namespaced_service("ext", "default")
    with pytest.raises(ApiException) as e:
        await v1.read_namespaced_service("ext", "default")
    assert e.value.status == 404


async def test_endpoints_subsets_are_atomic_and_merge_patch(api: ApiServer, ac: client.ApiClient) -> None:
    v1 = client.CoreV1Api(ac)
    await v1.create_namespaced_endpoints("default", endpoints("ext", ["127.64.0.2", "127.64.0.3"]))
    await v1.create_namespaced_endpoints("default", endpoints("plain", ["127.64.0.9"], labelled=False))
    listed = await v1.list_namespaced_endpoints("default", label_selector=SELECTOR)
    assert names(listed.items) == ["ext"]
    assert names((await v1.list_endpoints_for_all_namespaces()).items) == ["ext", "plain"]

    # Strategic merge: subsets has no merge key (+listType=atomic), so the patch replaces it.
    body = {
        "subsets": [
            {
                "addresses": [{"ip": "127.64.0.2"}],
                "notReadyAddresses": [{"ip": "127.64.0.3"}],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        ]
    }
    ep = await v1.patch_namespaced_endpoints("ext", "default", body)
    [subset] = ep.subsets
    assert [a.ip for a in subset.addresses] == ["127.64.0.2"]
    assert [a.ip for a in subset.not_ready_addresses] == ["127.64.0.3"]

    ep = await v1.patch_namespaced_endpoints(
        "ext", "default", {"metadata": {"labels": {ENABLED: None}}}, _content_type=MERGE
    )
    assert ENABLED not in (ep.metadata.labels or {})
    assert (await v1.list_namespaced_endpoints("default", label_selector=SELECTOR)).items == []

    stale = await v1.read_namespaced_endpoints("plain", "default")
    fresh = await v1.replace_namespaced_endpoints("plain", "default", stale)  # no change: same version
    assert fresh.metadata.resource_version == stale.metadata.resource_version
    stale.subsets = None
    fresh = await v1.replace_namespaced_endpoints("plain", "default", stale)
    assert fresh.subsets is None and fresh.metadata.resource_version != stale.metadata.resource_version
    with pytest.raises(ApiException) as e:
        await v1.replace_namespaced_endpoints("plain", "default", stale)
    assert e.value.status == 409
    await v1.delete_namespaced_endpoints("plain", "default")
    assert api.endpoints.get("default", "plain") is None


async def test_endpoint_slice_crud_patches_and_concurrency(api: ApiServer, ac: client.ApiClient) -> None:
    dv1 = client.DiscoveryV1Api(ac)
    created = await dv1.create_namespaced_endpoint_slice(
        "default", endpoint_slice("ext-abc", ["127.64.0.2", "127.64.0.3"])
    )
    assert created.kind == "EndpointSlice" and created.api_version == "discovery.k8s.io/v1"
    await dv1.create_namespaced_endpoint_slice("default", endpoint_slice("other", ["127.64.0.9"], False))
    got = await dv1.read_namespaced_endpoint_slice("ext-abc", "default")
    assert [e.addresses for e in got.endpoints] == [["127.64.0.2"], ["127.64.0.3"]]
    mine = await dv1.list_endpoint_slice_for_all_namespaces(label_selector=SELECTOR)
    assert names(mine.items) == ["ext-abc"]
    assert names((await dv1.list_namespaced_endpoint_slice("default")).items) == ["ext-abc", "other"]

    # Read-modify-write under the resourceVersion: the stale copy loses with 409.
    got.endpoints[1].conditions.ready = False
    got.endpoints[1].conditions.serving = False
    first = await dv1.replace_namespaced_endpoint_slice("ext-abc", "default", got)
    assert int(first.metadata.resource_version) > int(got.metadata.resource_version)
    assert [e.conditions.ready for e in first.endpoints] == [True, False]
    got.endpoints[0].conditions.ready = False
    with pytest.raises(ApiException) as e:
        await dv1.replace_namespaced_endpoint_slice("ext-abc", "default", got)
    assert e.value.status == 409 and reason(e.value) == "Conflict"
    assert api.endpointslices.get("default", "ext-abc")["endpoints"][0]["conditions"]["ready"] is True

    # Strategic merge: endpoints and ports are +listType=atomic, replaced wholesale.
    sm = await dv1.patch_namespaced_endpoint_slice(
        "ext-abc", "default",
        {"endpoints": [endpoint("127.64.0.3", ready=False)],
         "ports": [{"name": "grpc", "port": 9090, "protocol": "TCP"}]},
    )  # fmt: skip
    assert [(e.addresses, e.conditions.ready) for e in sm.endpoints] == [(["127.64.0.3"], False)]
    assert [(p.name, p.port) for p in sm.ports] == [("grpc", 9090)]

    # Merge patch with a resourceVersion: a precondition, as on the real server.
    body = {
        "metadata": {"resourceVersion": sm.metadata.resource_version},
        "endpoints": [endpoint("127.64.0.4")],
    }
    mp = await dv1.patch_namespaced_endpoint_slice("ext-abc", "default", body, _content_type=MERGE)
    assert [e.addresses for e in mp.endpoints] == [["127.64.0.4"]]
    with pytest.raises(ApiException) as e:  # same resourceVersion again: stale now
        await dv1.patch_namespaced_endpoint_slice("ext-abc", "default", body, _content_type=MERGE)
    assert e.value.status == 409

    # JSON patch guarded by a test of the resourceVersion.
    def guarded(rv: str, ready: bool) -> list[dict[str, Any]]:
        return [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "replace", "path": "/endpoints/0/conditions/ready", "value": ready},
        ]

    jp = await dv1.patch_namespaced_endpoint_slice(
        "ext-abc", "default", guarded(mp.metadata.resource_version, False)
    )
    assert jp.endpoints[0].conditions.ready is False
    assert int(jp.metadata.resource_version) > int(mp.metadata.resource_version)
    assert api.write_log.entries[-1].content_type == "application/json-patch+json"
    with pytest.raises(ApiException) as e:
        await dv1.patch_namespaced_endpoint_slice(
            "ext-abc", "default", guarded(mp.metadata.resource_version, True)
        )
    assert e.value.status == 422
    assert api.endpointslices.get("default", "ext-abc")["endpoints"][0]["conditions"]["ready"] is False

    # addressType is required and immutable.
    bad = endpoint_slice("bad", [])
    del bad["addressType"]
    with pytest.raises(ApiException) as e:
        await dv1.create_namespaced_endpoint_slice("default", bad)
    assert e.value.status == 422 and "addressType" in e.value.body
    with pytest.raises(ApiException) as e:
        await dv1.patch_namespaced_endpoint_slice("ext-abc", "default", {"addressType": "IPv6"})
    assert e.value.status == 422 and "immutable" in e.value.body

    await dv1.delete_namespaced_endpoint_slice("ext-abc", "default")
    with pytest.raises(ApiException) as e:
        await dv1.read_namespaced_endpoint_slice("ext-abc", "default")
    assert e.value.status == 404


async def test_label_selected_watch_sees_only_labelled_slices(api: ApiServer, ac: client.ApiClient) -> None:
    dv1 = client.DiscoveryV1Api(ac)
    await dv1.create_namespaced_endpoint_slice("default", endpoint_slice("pre", ["127.64.0.1"]))
    seen: list[tuple[str, str, bool]] = []

    async def consume() -> None:
        async with watch.Watch() as w:
            async for ev in w.stream(
                dv1.list_endpoint_slice_for_all_namespaces, label_selector=SELECTOR, timeout_seconds=30
            ):
                obj = ev["object"]
                seen.append((ev["type"], obj.metadata.name, obj.endpoints[0].conditions.ready))
                if ev["type"] == "DELETED" and obj.metadata.name == "mine":
                    return

    task = asyncio.create_task(consume())
    while not seen:  # the initial ADDED of "pre": the watch is open
        await asyncio.sleep(0.01)
    await dv1.create_namespaced_endpoint_slice("default", endpoint_slice("theirs", ["127.64.0.8"], False))
    await dv1.create_namespaced_endpoint_slice("default", endpoint_slice("mine", ["127.64.0.2"]))
    off = [{"op": "replace", "path": "/endpoints/0/conditions/ready", "value": False}]
    await dv1.patch_namespaced_endpoint_slice("theirs", "default", off)
    await dv1.patch_namespaced_endpoint_slice("mine", "default", off)
    await dv1.delete_namespaced_endpoint_slice("theirs", "default")
    await dv1.delete_namespaced_endpoint_slice("mine", "default")
    await asyncio.wait_for(task, 30)
    assert seen == [
        ("ADDED", "pre", True),
        ("ADDED", "mine", True),
        ("MODIFIED", "mine", False),
        ("DELETED", "mine", False),
    ]


async def test_endpoints_watch_from_resource_version(api: ApiServer, ac: client.ApiClient) -> None:
    v1 = client.CoreV1Api(ac)
    await v1.create_namespaced_endpoints("default", endpoints("ext", ["127.64.0.2"]))
    await v1.create_namespaced_endpoints("default", endpoints("plain", ["127.64.0.3"], labelled=False))
    rv = (await v1.list_namespaced_endpoints("default", label_selector=SELECTOR)).metadata.resource_version
    await v1.patch_namespaced_endpoints("plain", "default", endpoints("plain", ["127.64.0.4"], False))
    await v1.patch_namespaced_endpoints("ext", "default", endpoints("ext", ["127.64.0.5"]))
    # Losing the label reads as DELETED to a label-selected watch.
    await v1.patch_namespaced_endpoints(
        "ext", "default", {"metadata": {"labels": {ENABLED: "false"}}}, _content_type=MERGE
    )
    async with watch.Watch() as w:
        seen = [
            (ev["type"], ev["object"].metadata.name, ev["object"].subsets[0].addresses[0].ip)
            async for ev in w.stream(
                v1.list_namespaced_endpoints, "default", label_selector=SELECTOR,
                resource_version=rv, timeout_seconds=1,
            )
        ]  # fmt: skip
    assert seen == [("MODIFIED", "ext", "127.64.0.5"), ("DELETED", "ext", "127.64.0.5")]


def test_merge_keys_are_per_kind() -> None:
    """The pod table's ``ports`` key (containerPort) must not apply to an EndpointSlice's ports."""
    slice_ = endpoint_slice("s", ["127.64.0.2"])
    patch = msgspec.json.encode({"ports": [{"name": "x", "port": 1}]})
    out = apply_patch(STRATEGIC, slice_, patch, "endpointslices.discovery.k8s.io")
    assert out["ports"] == [{"name": "x", "port": 1}] and out["endpoints"] == slice_["endpoints"]
    svc = service("s")
    out = apply_patch(
        STRATEGIC, svc, msgspec.json.encode({"spec": {"ports": [{"port": 80, "name": "web"}]}}), "services"
    )
    assert out["spec"]["ports"] == [{"name": "web", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
