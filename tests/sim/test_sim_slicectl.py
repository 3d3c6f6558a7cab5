"""The EndpointSlice controller stand-in, through the real kubernetes_asyncio client: slices derived
from Services with selectors and their pods, written only on change, and the write log's
per-address queries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes_asyncio import client, watch

from ehc.sim.apiserver import ApiServer
from ehc.sim.slicectl import ACTOR, CONTROLLER, MANAGED_BY, SERVICE_NAME, SliceController

MERGE = "application/merge-patch+json"


@pytest.fixture
async def ctl(api: ApiServer) -> AsyncIterator[SliceController]:
    c = SliceController(api)
    yield c
    c.close()


def make_pod(
    name: str, ip: str | None, app: str = "web", node: str = "n1", ns: str = "default", ready: bool = True
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True" if ready else "False"},
            {"type": "ContainersReady", "status": "True"},
        ],
    }
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app, "tier": "front"}},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "c", "image": "pause", "ports": [{"name": "http", "containerPort": 8080}]}
            ],
        },
        "status": status,
    }


def make_service(name: str = "web", selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ports": [
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},  # by name
            {"name": "raw", "port": 81, "targetPort": 8081, "protocol": "TCP"},  # by number
            {"name": "metrics", "port": 9100, "protocol": "TCP"},  # no targetPort: the port
        ]
    }
    if selector is not None:
        spec["selector"] = selector
    return {"metadata": {"name": name, "labels": {"team": "a"}}, "spec": spec}


async def web_of_two(api: ApiServer, ac: client.ApiClient) -> tuple[client.CoreV1Api, client.DiscoveryV1Api]:
    """Pods a (127.64.0.2) and b (127.64.0.3) behind the Service "web"; the clients to look at them."""
    api.create_pod(make_pod("a", "127.64.0.2"))
    api.create_pod(make_pod("b", "127.64.0.3"))
    v1, dv1 = client.CoreV1Api(ac), client.DiscoveryV1Api(ac)
    await v1.create_namespaced_service("default", make_service(selector={"app": "web"}))
    return v1, dv1


async def slices_of(dv1: client.DiscoveryV1Api, service: str, ns: str = "default") -> list[Any]:
    got = await dv1.list_namespaced_endpoint_slice(ns, label_selector=f"{SERVICE_NAME}={service}")
    return sorted(got.items, key=lambda s: s.address_type)


def conditions(sl: Any) -> dict[str, tuple[bool, bool, bool]]:
    return {
        e.addresses[0]: (e.conditions.ready, e.conditions.serving, e.conditions.terminating)
        for e in sl.endpoints or []
    }


def slice_writes(api: ApiServer) -> list[Any]:
    return api.write_log.select(resource="endpointslices", actor=ACTOR)


async def test_slices_follow_a_selector_service(
    api: ApiServer, ctl: SliceController, ac: client.ApiClient
) -> None:
    api.create_pod(make_pod("a", "127.64.0.2"))
    api.create_pod(make_pod("b", "127.64.0.3", node="n2", ready=False))
    api.create_pod(make_pod("v6", "fd00:e4c::2"))
    api.create_pod(make_pod("pending", None))  # no IP yet: no endpoint
    api.create_pod(make_pod("db", "127.64.0.9", app="db"))  # other labels
    api.create_pod(make_pod("elsewhere", "127.64.0.8", ns="other"))  # other namespace
    v1, dv1 = client.CoreV1Api(ac), client.DiscoveryV1Api(ac)
    svc = await v1.create_namespaced_service("default", make_service(selector={"app": "web"}))

    v4, v6 = await slices_of(dv1, "web")
    assert (v4.address_type, v6.address_type) == ("IPv4", "IPv6")
    assert v4.metadata.name.startswith("web-") and v4.metadata.name != v6.metadata.name
    assert v4.metadata.labels == {"team": "a", SERVICE_NAME: "web", MANAGED_BY: CONTROLLER}
    [owner] = v4.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("Service", "web", svc.metadata.uid, True)
    assert [(p.name, p.port, p.protocol) for p in v4.ports] == [
        ("http", 8080, "TCP"),
        ("raw", 8081, "TCP"),
        ("metrics", 9100, "TCP"),
    ]
    assert conditions(v4) == {"127.64.0.2": (True, True, False), "127.64.0.3": (False, False, False)}
    assert conditions(v6) == {"fd00:e4c::2": (True, True, False)}
    by_ip = {e.addresses[0]: e for e in v4.endpoints}
    assert by_ip["127.64.0.3"].node_name == "n2"
    ref = by_ip["127.64.0.2"].target_ref
    assert (ref.kind, ref.namespace, ref.name) == ("Pod", "default", "a")
    assert ref.uid == api.get_pod("default", "a")["metadata"]["uid"]
    assert await slices_of(dv1, "web", "other") == []

    # A pod that gets its IP joins; one that stops matching leaves.
    await v1.patch_namespaced_pod_status("pending", "default", {"status": {"podIP": "127.64.0.4"}})
    await v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "api"}}})
    v4, _v6 = await slices_of(dv1, "web")
    assert set(conditions(v4)) == {"127.64.0.3", "127.64.0.4"}


async def test_ready_follows_the_pod_and_the_write_log_times_it(
    api: ApiServer, ctl: SliceController, ac: client.ApiClient
) -> None:
    v1, dv1 = await web_of_two(api, ac)
    [sl] = await slices_of(dv1, "web")
    name, rv = sl.metadata.name, sl.metadata.resource_version
    seen: list[tuple[str, dict[str, tuple[bool, bool, bool]]]] = []

    async def consume() -> None:
        async with watch.Watch() as w:
            async for ev in w.stream(
                dv1.list_namespaced_endpoint_slice, "default", resource_version=rv, timeout_seconds=30
            ):
                seen.append((ev["type"], conditions(ev["object"])))
                if len(seen) == 2:
                    return

    task = asyncio.create_task(consume())
    t0 = time.monotonic()
    off = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "EndpointUnhealthy"}]}}
    await v1.patch_namespaced_pod_status("b", "default", off)
    [after] = await slices_of(dv1, "web")
    assert conditions(after)["127.64.0.3"] == (False, False, False)
    assert int(after.metadata.resource_version) > int(rv)

    [pod_write] = api.write_log.select(resource="pods", name="b")
    [slice_write] = [e for e in slice_writes(api) if e.mono > t0]
    assert slice_write.verb == "PUT" and slice_write.name == name and slice_write.changed
    assert slice_write.addresses == {"127.64.0.3": {"ready": False, "serving": False}}
    out = api.write_log.slice_not_ready(since=t0)
    assert out == {("default", name, "127.64.0.3"): slice_write.mono}
    assert out[("default", name, "127.64.0.3")] >= pod_write.mono
    assert api.write_log.slice_not_ready(since=t0, actor="client") == {}
    assert api.write_log.slice_not_ready(since=slice_write.mono + 1e-6) == {}

    on = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    await v1.patch_namespaced_pod_status("b", "default", on)
    [back] = await slices_of(dv1, "web")
    assert conditions(back)["127.64.0.3"] == (True, True, False)
    back_at = api.write_log.first_address_change("endpointslices", "ready", True, since=t0)
    assert set(back_at) == {("default", name, "127.64.0.3")}
    assert back_at[("default", name, "127.64.0.3")] > out[("default", name, "127.64.0.3")]
    # Taken out once: a later write that leaves it not ready does not count again.
    assert api.write_log.slice_not_ready(since=t0) == out

    await asyncio.wait_for(task, 30)
    assert seen == [
        ("MODIFIED", {"127.64.0.2": (True, True, False), "127.64.0.3": (False, False, False)}),
        ("MODIFIED", {"127.64.0.2": (True, True, False), "127.64.0.3": (True, True, False)}),
    ]


async def test_terminating_and_deleted_pods(
    api: ApiServer, ctl: SliceController, ac: client.ApiClient
) -> None:
    v1, dv1 = await web_of_two(api, ac)
    # The sim deletes at once; the first step of a graceful deletion is this update of the pod.
    pod = api.pods.get("default", "b")
    meta = {**pod["metadata"], "deletionTimestamp": "2024-01-01T00:00:00Z"}
    api.pods.update("default", "b", {**pod, "metadata": meta})
    [sl] = await slices_of(dv1, "web")
    assert conditions(sl) == {"127.64.0.2": (True, True, False), "127.64.0.3": (False, True, True)}

    await v1.delete_namespaced_pod("b", "default")
    [sl] = await slices_of(dv1, "web")
    assert set(conditions(sl)) == {"127.64.0.2"}
    await v1.delete_namespaced_pod("a", "default")
    assert await slices_of(dv1, "web") == []  # no endpoints left: the slice goes
    assert slice_writes(api)[-1].verb == "DELETE"


async def test_writes_only_on_change(api: ApiServer, ctl: SliceController, ac: client.ApiClient) -> None:
    api.create_pod(make_pod("a", "127.64.0.2"))
    v1, dv1 = client.CoreV1Api(ac), client.DiscoveryV1Api(ac)
    await v1.create_namespaced_service("default", make_service(selector={"app": "web"}))
    [sl] = await slices_of(dv1, "web")
    writes = len(slice_writes(api))
    # Fields no endpoint shows: another condition, an annotation, Ready restated, the Service's status.
    await v1.patch_namespaced_pod_status(
        "a", "default", {"status": {"conditions": [{"type": "ContainersReady", "status": "False"}]}}
    )
    await v1.patch_namespaced_pod("a", "default", {"metadata": {"annotations": {"x": "1"}}})
    await v1.patch_namespaced_pod_status(
        "a", "default", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    )
    st = {"status": {"conditions": [{"type": "Probed", "status": "True", "reason": "R", "message": "",
                                     "lastTransitionTime": "2024-01-01T00:00:00Z"}]}}  # fmt: skip
    await v1.patch_namespaced_service_status("web", "default", st)
    [same] = await slices_of(dv1, "web")
    assert len(slice_writes(api)) == writes
    assert same.metadata.resource_version == sl.metadata.resource_version
    # A Service change that shows: its labels are the slice's.
    await v1.patch_namespaced_service("web", "default", {"metadata": {"labels": {"team": "b"}}})
    [relabelled] = await slices_of(dv1, "web")
    assert relabelled.metadata.labels["team"] == "b" and len(slice_writes(api)) == writes + 1


async def test_leaves_selectorless_services_and_foreign_slices_alone(
    api: ApiServer, ctl: SliceController, ac: client.ApiClient
) -> None:
    api.create_pod(make_pod("a", "127.64.0.2"))
    v1, dv1 = client.CoreV1Api(ac), client.DiscoveryV1Api(ac)
    await v1.create_namespaced_service("default", make_service("ext"))  # no selector
    await v1.create_namespaced_service("default", make_service("web", selector={"app": "web"}))
    foreign = []
    for name, service in (("ext-1", "ext"), ("web-theirs", "web")):
        body = {
            "metadata": {"name": name, "labels": {SERVICE_NAME: service, MANAGED_BY: "example.com/op"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.64.0.2"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
        foreign.append(await dv1.create_namespaced_endpoint_slice("default", body))
    await v1.patch_namespaced_pod_status(
        "a", "default", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
    await v1.patch_namespaced_service("ext", "default", {"metadata": {"labels": {"team": "c"}}})
    for before in foreign:
        now = await dv1.read_namespaced_endpoint_slice(before.metadata.name, "default")
        assert now.metadata.resource_version == before.metadata.resource_version
        assert now.endpoints[0].conditions.ready is True
    assert {e.name for e in slice_writes(api)} == {
        s.metadata.name for s in await slices_of(dv1, "web") if s.metadata.labels[MANAGED_BY] == CONTROLLER
    }
    assert [s.metadata.name for s in await slices_of(dv1, "ext")] == ["ext-1"]


async def test_managed_slices_are_restored_and_go_with_their_service(
    api: ApiServer, ctl: SliceController, ac: client.ApiClient
) -> None:
    api.create_pod(make_pod("a", "127.64.0.2"))
    v1, dv1 = client.CoreV1Api(ac), client.DiscoveryV1Api(ac)
    await v1.create_namespaced_service("default", make_service(selector={"app": "web"}))
    [sl] = await slices_of(dv1, "web")
    name = sl.metadata.name
    edit = [{"op": "replace", "path": "/endpoints/0/conditions/ready", "value": False}]
    await dv1.patch_namespaced_endpoint_slice(name, "default", edit)
    [restored] = await slices_of(dv1, "web")
    assert conditions(restored)["127.64.0.2"] == (True, True, False)
    await dv1.delete_namespaced_endpoint_slice(name, "default")
    [recreated] = await slices_of(dv1, "web")
    assert recreated.metadata.name == name and conditions(recreated)["127.64.0.2"] == (True, True, False)
    # Losing the selector, or the Service, takes the controller's slices away.
    await v1.patch_namespaced_service("web", "default", {"spec": {"selector": None}}, _content_type=MERGE)
    assert await slices_of(dv1, "web") == []
    await v1.patch_namespaced_service(
        "web", "default", {"spec": {"selector": {"app": "web"}}}, _content_type=MERGE
    )
    assert len(await slices_of(dv1, "web")) == 1
    await v1.delete_namespaced_service("web", "default")
    assert await slices_of(dv1, "web") == []


async def test_slices_hold_at_most_max_endpoints(api: ApiServer) -> None:
    ctl = SliceController(api, max_endpoints=2)
    try:
        for i in range(5):
            api.create_pod(make_pod(f"p{i}", f"127.64.0.{i + 2}"))
        svc = make_service(selector={"app": "web"})
        svc["metadata"]["namespace"] = "default"
        api.services.create(svc)
        slices = [s for s, _raw in api.endpointslices.objects.values()]
        assert sorted(len(s["endpoints"]) for s in slices) == [1, 2, 2]
        ips = [e["addresses"][0] for s in slices for e in s["endpoints"]]
        assert sorted(ips) == [f"127.64.0.{i + 2}" for i in range(5)]
        for i in range(3):
            api.delete_pod("default", f"p{i}")
        remaining = [s for s, _raw in api.endpointslices.objects.values()]
        assert sorted(e["addresses"][0] for s in remaining for e in s["endpoints"]) == [
            "127.64.0.5",
            "127.64.0.6",
        ]
        assert all(s["endpoints"] for s in remaining)  # emptied slices are deleted
    finally:
        ctl.close()


async def test_endpoints_not_ready_query(api: ApiServer, ac: client.ApiClient) -> None:
    v1 = client.CoreV1Api(ac)
    ports = [{"name": "redis", "port": 6379, "protocol": "TCP"}]
    ips = ["127.64.0.2", "127.64.4.2", "127.64.8.2"]

    def subsets(ready: list[str], not_ready: list[str]) -> dict[str, Any]:
        subset = {"addresses": [{"ip": ip} for ip in ready], "ports": ports}
        if not_ready:
            subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
        return {"metadata": {"name": "redis"}, "subsets": [subset]}

    await v1.create_namespaced_endpoints("default", subsets(ips, []))
    t0 = time.monotonic()
    moved = subsets(ips[1:], ips[:1])
    await v1.patch_namespaced_endpoints("redis", "default", moved)
    first = api.write_log.entries[-1]
    assert first.addresses == {ips[0]: {"ready": False}}
    # The same again, then another address: the first stays as it was first taken out.
    await v1.patch_namespaced_endpoints("redis", "default", moved)
    await v1.patch_namespaced_endpoints("redis", "default", subsets(ips[2:], ips[:2]))
    second = api.write_log.entries[-1]
    assert api.write_log.endpoints_not_ready(since=t0) == {
        ("default", "redis", ips[0]): first.mono,
        ("default", "redis", ips[1]): second.mono,
    }
    assert api.write_log.endpoints_not_ready(since=second.mono) == {("default", "redis", ips[1]): second.mono}
    assert api.write_log.endpoints_not_ready(since=t0, actor=ACTOR) == {}
    assert api.write_log.slice_not_ready(since=t0) == {}


async def test_a_foreign_slice_keeps_its_name(
    api: ApiServer, ctl: SliceController, ac: client.ApiClient
) -> None:
    api.create_pod(make_pod("a", "127.64.0.2"))
    api.create_pod(make_pod("b", "127.64.0.3", app="db"))
    v1, dv1 = client.CoreV1Api(ac), client.DiscoveryV1Api(ac)
    selector = {"app": "web", "tier": "front"}
    await v1.create_namespaced_service("default", make_service(selector=selector))
    [mine] = await slices_of(dv1, "web")
    await v1.delete_namespaced_service("web", "default")
    # Someone else takes the name the controller chose; a new Service's slice must get another one.
    theirs = {
        "metadata": {"name": mine.metadata.name, "labels": {MANAGED_BY: "example.com/op"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.64.0.3"], "conditions": {"ready": False}}],
    }
    theirs_rv = (await dv1.create_namespaced_endpoint_slice("default", theirs)).metadata.resource_version
    await v1.create_namespaced_service("default", make_service(selector=selector))
    [again] = await slices_of(dv1, "web")
    assert again.metadata.name != mine.metadata.name and set(conditions(again)) == {"127.64.0.2"}
    kept = await dv1.read_namespaced_endpoint_slice(mine.metadata.name, "default")
    assert kept.metadata.resource_version == theirs_rv
