"""The simulated API server through the real kubernetes_asyncio client and a generated kubeconfig."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.rest import ApiException

from ehc.sim import SimCluster
from ehc.sim.apiserver import ApiServer
from ehc.sim.faults import PODS_STATUS

TOKEN = "sim-token"


def make_pod(name: str, node: str = "n1", ns: str = "default", app: str = "web") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
        "status": {
            "phase": "Running",
            "podIP": "127.64.0.2",
            "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
        },
    }


@pytest.fixture
async def api(tmp_path: Any) -> AsyncIterator[ApiServer]:
    server = ApiServer(token=TOKEN, history=50, bookmark_interval=0.2)
    await server.start()
    server.create_pod(make_pod("a", "n1"))
    server.create_pod(make_pod("b", "n2", app="db"))
    server.create_pod(make_pod("c", "n1", ns="other"))
    server.kubeconfig_path = server.write_kubeconfig(str(tmp_path / "kubeconfig"))  # type: ignore[attr-defined]
    yield server
    await server.stop()


@pytest.fixture
async def v1(api: ApiServer) -> AsyncIterator[client.CoreV1Api]:
    ac = await config.new_client_from_config(config_file=api.kubeconfig_path)  # type: ignore[attr-defined]
    async with ac:
        yield client.CoreV1Api(ac)


def names(items: list[Any]) -> list[str]:
    return sorted(p.metadata.name for p in items)


async def test_list_cluster_wide_namespaced_and_selectors(v1: client.CoreV1Api) -> None:
    allp = await v1.list_pod_for_all_namespaces()
    assert names(allp.items) == ["a", "b", "c"]
    assert int(allp.metadata.resource_version) > 0
    assert names((await v1.list_namespaced_pod("default")).items) == ["a", "b"]
    assert names((await v1.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1")).items) == [
        "a",
        "c",
    ]
    assert names((await v1.list_namespaced_pod("default", label_selector="app in (db)")).items) == ["b"]
    page = await v1.list_pod_for_all_namespaces(limit=2)
    assert len(page.items) == 2 and page.metadata._continue
    rest = await v1.list_pod_for_all_namespaces(limit=2, _continue=page.metadata._continue)
    assert names(page.items + rest.items) == ["a", "b", "c"]
    with pytest.raises(ApiException) as e:
        await v1.list_pod_for_all_namespaces(field_selector="spec.bogus=x")
    assert e.value.status == 400


async def test_get_and_404_status(v1: client.CoreV1Api) -> None:
    pod = await v1.read_namespaced_pod("a", "default")
    assert pod.spec.node_name == "n1" and pod.status.pod_ip == "127.64.0.2"
    with pytest.raises(ApiException) as e:
        await v1.read_namespaced_pod("nope", "default")
    body = msgspec.json.decode(e.value.body)
    assert e.value.status == 404
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["details"]["name"] == "nope"


async def test_watch_from_resource_version(api: ApiServer, v1: client.CoreV1Api) -> None:
    listed = await v1.list_namespaced_pod("default")
    rv = listed.metadata.resource_version
    api.set_pod_condition("default", "a", "Ready", "False")
    api.create_pod(make_pod("d"))
    api.create_pod(make_pod("x", ns="other"))  # other namespace: not seen
    api.delete_pod("default", "b")
    async with watch.Watch() as w:
        seen = [
            (ev["type"], ev["object"].metadata.name, int(ev["object"].metadata.resource_version))
            async for ev in w.stream(
                v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1
            )
        ]
    assert [(t, n) for t, n, _ in seen] == [("MODIFIED", "a"), ("ADDED", "d"), ("DELETED", "b")]
    rvs = [r for _, _, r in seen]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


async def test_watch_without_rv_sends_initial_state(api: ApiServer, v1: client.CoreV1Api) -> None:
    async with watch.Watch() as w:
        seen = [
            (ev["type"], ev["object"].metadata.name)
            async for ev in w.stream(
                v1.list_pod_for_all_namespaces, field_selector="spec.nodeName=n1", timeout_seconds=1
            )
        ]
    assert seen == [("ADDED", "a"), ("ADDED", "c")]


async def test_watch_too_old_is_410_then_relist_and_watch(api: ApiServer, v1: client.CoreV1Api) -> None:
    old_rv = (await v1.list_namespaced_pod("default")).metadata.resource_version
    for i in range(60):  # history is 50 events: old_rv falls out of it
        api.set_pod_condition("default", "a", "Ready", "False" if i % 2 else "True")
    with pytest.raises(ApiException) as e:
        async with watch.Watch() as w:
            async for _ev in w.stream(
                v1.list_namespaced_pod, "default", resource_version=old_rv, timeout_seconds=1
            ):
                pass
    assert e.value.status == 410
    listed = await v1.list_namespaced_pod("default")  # what a client does after 410: relist, watch on
    api.set_pod_condition("default", "b", "Ready", "False")
    async with watch.Watch() as w:
        got = [
            (ev["type"], ev["object"].metadata.name)
            async for ev in w.stream(
                v1.list_namespaced_pod,
                "default",
                resource_version=listed.metadata.resource_version,
                timeout_seconds=1,
            )
        ]
    assert got == [("MODIFIED", "b")]


def session(api: ApiServer) -> aiohttp.ClientSession:
    """A raw HTTP session trusting the server's self-signed certificate and sending the token."""
    ctx = ssl.create_default_context(cadata=api.ca_pem.decode())
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {TOKEN}"}, connector=aiohttp.TCPConnector(ssl=ctx)
    )


async def _raw_watch(api: ApiServer, query: str, seconds: float = 1.0) -> list[dict[str, Any]]:
    events = []
    async with (
        session(api) as s,
        s.get(
            f"{api.url}/api/v1/pods?watch=1&{query}", timeout=aiohttp.ClientTimeout(total=seconds + 5)
        ) as r,
    ):
        assert r.status == 200
        events.extend([msgspec.json.decode(line) async for line in r.content])
    return events


async def test_watch_error_event_shape_bookmarks_and_forced_410(api: ApiServer) -> None:
    api.compact()
    events = await _raw_watch(api, "resourceVersion=2&timeoutSeconds=1")
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["code"] == 410 and status["reason"] == "Expired"
    rv = api.store.rv
    events = await _raw_watch(api, f"resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1")
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks and all(int(b["object"]["metadata"]["resourceVersion"]) >= rv for b in bookmarks)
    api.faults.expire_next_watch()
    events = await _raw_watch(api, f"resourceVersion={rv}&timeoutSeconds=1")
    assert [e["type"] for e in events] == ["ERROR"] and events[0]["object"]["code"] == 410


async def test_patch_status_strategic_merge_keeps_other_conditions(
    api: ApiServer, v1: client.CoreV1Api
) -> None:
    body = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "EndpointUnhealthy"}]}}
    pod = await v1.patch_namespaced_pod_status("a", "default", body)
    conds = {c.type: c.status for c in pod.status.conditions}
    assert conds == {"Ready": "False", "ContainersReady": "True"}
    entry = api.write_log.condition_writes("Ready", "False")[-1]
    assert entry.name == "a" and entry.content_type == "application/strategic-merge-patch+json"
    assert entry.status == 200 and entry.changed and entry.mono > 0 and entry.wall > 0


async def test_a_uid_in_a_write_is_a_precondition(api: ApiServer, v1: client.CoreV1Api) -> None:
    uid = api.get_pod("default", "a")["metadata"]["uid"]
    body = {
        "metadata": {"uid": "not-" + uid},
        "status": {"conditions": [{"type": "Ready", "status": "False"}]},
    }
    with pytest.raises(ApiException) as err:
        await v1.patch_namespaced_pod_status("a", "default", body)
    assert err.value.status == 409
    assert f"UID in precondition: not-{uid}, UID in object meta: {uid}" in err.value.body
    assert api.pod_condition("default", "a") == "True"  # nothing written
    body["metadata"] = {"uid": uid}
    pod = await v1.patch_namespaced_pod_status("a", "default", body)
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "False"


async def test_patch_status_merge_and_json_patch(api: ApiServer, v1: client.CoreV1Api) -> None:
    pod = await v1.patch_namespaced_pod_status(
        "a", "default", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    assert [(c.type, c.status) for c in pod.status.conditions] == [
        ("Ready", "False")
    ]  # merge patch replaces lists
    pod = await v1.patch_namespaced_pod_status(
        "b", "default", [{"op": "replace", "path": "/status/conditions/0/status", "value": "False"}]
    )
    assert {c.type: c.status for c in pod.status.conditions} == {"Ready": "False", "ContainersReady": "True"}
    assert api.write_log.entries[-1].content_type == "application/json-patch+json"
    assert api.write_log.entries[-1].sets_condition("Ready", "False")


async def test_patch_errors_have_status_bodies(api: ApiServer) -> None:
    url = f"{api.url}/api/v1/namespaces/default/pods"
    cases = [
        ("nope/status", "application/strategic-merge-patch+json", b"{}", 404),
        ("a/status", "application/json", b"{}", 415),
        ("a/status", "application/strategic-merge-patch+json", b"{oops", 400),
        (
            "a/status",
            "application/merge-patch+json",
            b'{"status":{"conditions":[{"type":"Ready","status":"Maybe"}]}}',
            422,
        ),
        (
            "a/status",
            "application/strategic-merge-patch+json",
            b'{"status":{"conditions":[{"status":"True"}]}}',
            422,
        ),
    ]
    async with session(api) as s:
        for path, ctype, body, code in cases:
            async with s.patch(f"{url}/{path}", data=body, headers={"Content-Type": ctype}) as r:
                assert r.status == code, (path, ctype, body)
                status = await r.json()
                assert status["kind"] == "Status" and status["code"] == code
        async with s.get(f"{api.url}/api/v1/pods", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401


async def test_noop_patch_keeps_resource_version(api: ApiServer, v1: client.CoreV1Api) -> None:
    before = (await v1.read_namespaced_pod("a", "default")).metadata.resource_version
    pod = await v1.patch_namespaced_pod_status(
        "a", "default", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    )
    assert pod.metadata.resource_version == before
    assert not api.write_log.entries[-1].changed


async def test_leases_optimistic_concurrency(api: ApiServer, v1: client.CoreV1Api) -> None:
    coord = client.CoordinationV1Api(v1.api_client)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="ehc", namespace="kube-system"),
        spec=client.V1LeaseSpec(holder_identity="me", lease_duration_seconds=15),
    )
    created = await coord.create_namespaced_lease("kube-system", lease)
    assert created.metadata.resource_version and created.spec.holder_identity == "me"
    with pytest.raises(ApiException) as e:
        await coord.create_namespaced_lease("kube-system", lease)
    assert e.value.status == 409 and msgspec.json.decode(e.value.body)["reason"] == "AlreadyExists"
    got = await coord.read_namespaced_lease("ehc", "kube-system")
    got.spec.holder_identity = "other"
    updated = await coord.replace_namespaced_lease("ehc", "kube-system", got)
    assert updated.spec.holder_identity == "other"
    assert int(updated.metadata.resource_version) > int(got.metadata.resource_version)
    with pytest.raises(ApiException) as e:  # got carries the old resourceVersion now
        await coord.replace_namespaced_lease("ehc", "kube-system", got)
    assert e.value.status == 409 and msgspec.json.decode(e.value.body)["reason"] == "Conflict"
    assert [x.metadata.name for x in (await coord.list_namespaced_lease("kube-system")).items] == ["ehc"]
    with pytest.raises(ApiException) as e:
        await coord.read_namespaced_lease("ehc", "default")
    assert e.value.status == 404


async def test_events_core_and_events_v1(api: ApiServer, v1: client.CoreV1Api) -> None:
    ev = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="a."),
        involved_object=client.V1ObjectReference(kind="Pod", name="a", namespace="default"),
        reason="EndpointUnhealthy",
        message="tcp 8080: timeout",
        type="Warning",
    )
    created = await v1.create_namespaced_event("default", ev)
    assert created.metadata.name.startswith("a.") and created.reason == "EndpointUnhealthy"
    listed = await v1.list_namespaced_event("default", field_selector="involvedObject.name=a")
    assert [e.reason for e in listed.items] == ["EndpointUnhealthy"]
    evapi = client.EventsV1Api(v1.api_client)
    ev2 = client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="b.1"),
        event_time="2024-01-01T00:00:00.000000Z",
        reason="EndpointHealthy",
        action="Probe",
        reporting_controller="ehc",
        reporting_instance="ehc-0",
        regarding=client.V1ObjectReference(kind="Pod", name="b", namespace="default"),
        type="Normal",
    )
    await evapi.create_namespaced_event("default", ev2)
    assert [e.reason for e in (await evapi.list_event_for_all_namespaces()).items] == ["EndpointHealthy"]
    assert {e.resource for e in api.write_log.select(verb="POST")} == {"events"}


async def test_faults_seen_by_client(api: ApiServer, v1: client.CoreV1Api) -> None:
    body = {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    api.faults.throttle(1, retry_after=2, verb="PATCH", path=PODS_STATUS)
    api.faults.fail(1, 500, verb="PATCH", path=PODS_STATUS)
    await v1.list_pod_for_all_namespaces()  # not matched by the filters
    with pytest.raises(ApiException) as e:
        await v1.patch_namespaced_pod_status("a", "default", body)
    assert e.value.status == 429 and e.value.headers["Retry-After"] == "2"
    with pytest.raises(ApiException) as e:
        await v1.patch_namespaced_pod_status("a", "default", body)
    assert e.value.status == 500
    await v1.patch_namespaced_pod_status("a", "default", body)
    assert [w.status for w in api.write_log.select(resource="pods", verb="PATCH")] == [429, 500, 200]
    assert api.faults.injected == 2

    api.faults.delay(0.3, count=1, verb="GET")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await v1.list_pod_for_all_namespaces()
    assert loop.time() - t0 >= 0.3  # the injected delay itself, not a performance bound


async def test_close_watches_abruptly(api: ApiServer, v1: client.CoreV1Api) -> None:
    rv = (await v1.list_pod_for_all_namespaces()).metadata.resource_version
    got: list[str] = []

    async def consume() -> None:
        async with watch.Watch() as w:
            async for ev in w.stream(v1.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=30):
                got.append(ev["type"])  # noqa: PERF401 - observed while the stream is open

    task = asyncio.create_task(consume())
    for _ in range(100):
        if api.watcher_count():
            break
        await asyncio.sleep(0.01)
    api.set_pod_condition("default", "a", "Ready", "False")
    for _ in range(100):
        if got:
            break
        await asyncio.sleep(0.01)
    assert api.close_watches(abrupt=True) == 1
    with pytest.raises(aiohttp.ClientPayloadError):
        await asyncio.wait_for(task, 5)
    assert got == ["MODIFIED"]


async def test_kubelet_restores_ready_when_healthy() -> None:
    async with SimCluster(1, 4, netns=False, listeners=False, kubelet_delay=0.1, ipv6_every=0) as sim:
        gate_pod = (
            next(p for p in sim.fleet.pods if p.style == "gate")
            if any(p.style == "gate" for p in sim.fleet.pods)
            else None
        )
        p = sim.fleet.pods[0]
        sim.api.set_pod_condition(p.namespace, p.name, "Ready", "False", actor="ehc")
        assert await sim.api.write_log.wait_for(lambda log: bool(log.select(actor="kubelet")), 5)
        assert sim.api.pod_condition(p.namespace, p.name) == "True"
        if gate_pod is not None:
            sim.api.patch_pod_status(
                gate_pod.namespace, gate_pod.name,
                {"status": {"conditions": [{"type": "endpointHealthCheckSuccess", "status": "False"},
                                           {"type": "Ready", "status": "False"}]}},
                actor="ehc",
            )  # fmt: skip
            await asyncio.sleep(0.3)
            assert sim.api.pod_condition(gate_pod.namespace, gate_pod.name) == "False"  # gate still False


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
async def test_kubectl_get_pods(api: ApiServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        "kubectl", "--kubeconfig", api.kubeconfig_path, "get", "pods", "-A",  # type: ignore[attr-defined]
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "KUBECACHEDIR": "/nonexistent-cache"},
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "READY"]
    assert sorted(line.split()[1] for line in lines[1:]) == ["a", "b", "c"]
