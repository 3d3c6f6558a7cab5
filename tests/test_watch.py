"""PodWatcher (and the same ListWatcher for other resources) through the real kubernetes_asyncio client:
against the simulated API server, and against a tiny scripted server of our own for what the simulator
cannot send (garbage lines, HTTP 410 on a watch, EndpointSlices)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from helpers import until
from kubernetes_asyncio import client

from ehc.kube.client import make_api_client
from ehc.kube.model import ObjectMeta, Pod
from ehc.kube.watch import ListWatcher, PodWatcher, Resource, key_of
from ehc.sim import SimCluster
from ehc.sim.faults import PODS

FAST = (0.01, 0.05)  # backoff for tests: retries stay quick, behaviour is the same


class Recorder:
    """A consumer that reconciles like the coordinator does: pages update its view, and a snapshot
    drops whatever the list did not show."""

    def __init__(self) -> None:
        self.pages: list[int] = []  # pods per page, as handed over
        self.snapshots: list[list[str]] = []
        self.events: list[tuple[str, str]] = []
        self.pods: dict[str, Pod] = {}

    def on_page(self, pods: list[Pod]) -> None:
        self.pages.append(len(pods))
        self.pods.update((p.key, p) for p in pods)

    def on_snapshot(self, keys: set[str]) -> None:
        self.snapshots.append(sorted(keys))
        self.pods = {k: p for k, p in self.pods.items() if k in keys}

    def on_event(self, kind: str, pod: Pod) -> None:
        self.events.append((kind, pod.key))
        if kind == "DELETED":
            self.pods.pop(pod.key, None)
        else:
            self.pods[pod.key] = pod

    def versions(self) -> dict[str, str]:
        return {k: p.metadata.resourceVersion for k, p in self.pods.items()}


def server_versions(sim: SimCluster) -> dict[str, str]:
    return {
        f"{ns}/{name}": obj["metadata"]["resourceVersion"]
        for (ns, name), (obj, _) in sim.api.pods.objects.items()
    }


def manifest(name: str, ns: str = "default") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "extra"}},
        "spec": {"nodeName": "node-0", "containers": [{"name": "c", "image": "pause"}]},
        "status": {
            "phase": "Running",
            "podIP": "127.64.9.9",
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    async with SimCluster(
        nodes=2, pods_per_node=5, netns=False, listeners=False, kubelet_delay=None, bookmark_interval=0.2
    ) as cluster:
        yield cluster


@pytest.fixture
async def api(sim: SimCluster) -> AsyncIterator[client.ApiClient]:
    ac = await make_api_client(sim.kubeconfig)
    async with ac:
        yield ac


@contextlib.asynccontextmanager
async def running(watcher: PodWatcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def start(api: client.ApiClient, rec: Recorder, **kw: Any) -> PodWatcher:
    kw.setdefault("backoff", FAST)
    return PodWatcher(api, on_page=rec.on_page, on_snapshot=rec.on_snapshot, on_event=rec.on_event, **kw)


async def test_paginated_snapshot_then_added_modified_deleted(sim: SimCluster, api: client.ApiClient) -> None:
    rec = Recorder()
    w = start(api, rec, page_size=3)
    async with running(w) as task:
        await asyncio.wait_for(w.wait_synced(), 10)
        assert w.synced and w.pages == 4 and rec.pages == [3, 3, 3, 1]  # 10 pods, 3 per page, one by one
        assert rec.snapshots == [sorted(server_versions(sim))] and len(rec.snapshots[0]) == 10
        first = sim.fleet.pods[0]
        sim.api.create_pod(manifest("newcomer"))
        sim.api.set_pod_condition(first.namespace, first.name, "Ready", "False")
        sim.api.delete_pod("default", "newcomer")
        key = f"{first.namespace}/{first.name}"
        await until(lambda: len(rec.events) == 3, "three events")
        assert rec.events == [
            ("ADDED", "default/newcomer"),
            ("MODIFIED", key),
            ("DELETED", "default/newcomer"),
        ]
        cond = rec.pods[key].condition("Ready")
        assert cond is not None and cond.status == "False"
        assert rec.versions() == server_versions(sim)
        # bookmarks move the version forward without events
        await until(lambda: w.bookmarks > 0, "a bookmark")
        assert int(w.resource_version) >= int(rec.pods[key].metadata.resourceVersion)
        assert w.relists == 0 and w.reconnects == 0 and w.garbage_lines == 0 and not task.done()


def undecodable(name: str) -> dict[str, Any]:
    """A pod the API server stores but ehc cannot read: a probe port that is neither int nor string."""
    pod = manifest(name)
    pod["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": 80.5}}
    return pod


async def test_an_undecodable_pod_is_skipped_by_name_and_blinds_nothing(
    sim: SimCluster, api: client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    sim.api.create_pod(undecodable("odd-listed"))
    rec = Recorder()
    w = start(api, rec, page_size=4)
    async with running(w) as task:
        await asyncio.wait_for(w.wait_synced(), 10)
        # The list carried on past it: every other pod is there, and the odd one counts as present.
        assert sorted(rec.pods) == sorted(k for k in server_versions(sim) if k != "default/odd-listed")
        assert "default/odd-listed" in rec.snapshots[0]
        sim.api.create_pod(undecodable("odd-watched"))
        sim.api.create_pod(manifest("after-it"))
        await until(lambda: ("ADDED", "default/after-it") in rec.events, "the pod after the odd one")
        assert rec.events == [("ADDED", "default/after-it")]  # the odd one was skipped, not replayed
        sim.api.delete_pod("default", "odd-watched")  # a deletion is handed on by its metadata alone
        await until(lambda: ("DELETED", "default/odd-watched") in rec.events, "the odd pod's deletion")
        assert w.undecodable == 2 and w.garbage_lines == 0 and w.reconnects == 0 and not task.done()
    said = [r.getMessage() for r in caplog.records if "does not decode" in r.getMessage()]
    assert len(said) == 2 and "default/odd-listed" in said[0] and "$.spec.containers[0]" in said[0]


async def test_namespace_and_label_selector(sim: SimCluster, api: client.ApiClient) -> None:
    rec = Recorder()
    w = start(api, rec, namespace="default", label_selector="app=extra")
    async with running(w):
        await asyncio.wait_for(w.wait_synced(), 10)
        assert rec.snapshots == [[]]
        sim.api.create_pod(manifest("elsewhere", ns="shop"))
        sim.api.create_pod(manifest("here"))
        await until(lambda: rec.events, "an event")
        assert rec.events == [("ADDED", "default/here")]


@pytest.mark.parametrize("how", ["expire_next_watch", "compact"])
async def test_410_relists_and_loses_nothing(sim: SimCluster, api: client.ApiClient, how: str) -> None:
    rec = Recorder()
    w = start(api, rec)
    async with running(w) as task:
        await asyncio.wait_for(w.wait_synced(), 10)
        victim = sim.fleet.pods[3]
        # No await between these lines: the watcher cannot reconnect before all of them are done.
        if how == "expire_next_watch":
            sim.api.faults.expire_next_watch(1)
            sim.api.close_watches(abrupt=False)
            sim.api.set_pod_condition(victim.namespace, victim.name, "Ready", "False")
            sim.api.create_pod(manifest("during-relist"))
        else:
            sim.api.close_watches(abrupt=True)
            sim.api.set_pod_condition(victim.namespace, victim.name, "Ready", "False")
            sim.api.create_pod(manifest("during-relist"))
            sim.api.compact()  # the watcher's version is now too old: 410 on resumption
        await until(lambda: len(rec.snapshots) == 2, "a second snapshot")
        assert w.relists == 1
        await until(lambda: rec.versions() == server_versions(sim), "consumer matches the server")
        assert "default/during-relist" in rec.pods
        cond = rec.pods[f"{victim.namespace}/{victim.name}"].condition("Ready")
        assert cond is not None and cond.status == "False"
        sim.api.delete_pod("default", "during-relist")  # and it keeps watching after the relist
        await until(lambda: ("DELETED", "default/during-relist") in rec.events, "delete after relist")
        assert w.relists == 1 and not task.done()


async def test_abrupt_close_reconnects_without_relist(sim: SimCluster, api: client.ApiClient) -> None:
    rec = Recorder()
    w = start(api, rec)
    async with running(w):
        await asyncio.wait_for(w.wait_synced(), 10)
        pods = sim.fleet.pods
        for i in range(3):
            await until(lambda: sim.api.watcher_count() == 1, "watch open")
            assert sim.api.close_watches(abrupt=True) == 1
            sim.api.set_pod_condition(pods[i].namespace, pods[i].name, "Ready", "False")
            await until(lambda i=i: len(rec.events) == i + 1, f"event {i}")
        assert [k for k, _ in rec.events] == ["MODIFIED"] * 3
        assert w.reconnects >= 3 and w.watches >= 4
        assert w.relists == 0 and len(rec.snapshots) == 1 and w.lists == 1
        assert rec.versions() == server_versions(sim)


def retry_delays(caplog: pytest.LogCaptureFixture, marker: str) -> list[float]:
    return [
        float(m.group(1))
        for r in caplog.records
        if r.levelno == logging.WARNING and marker in r.getMessage()
        for m in [re.search(r"retrying in ([0-9.]+)s", r.getMessage())]
        if m
    ]


async def test_500_and_429_on_list_and_watch_are_retried(
    sim: SimCluster, api: client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ehc.kube.watch")
    faults = sim.api.faults
    faults.fail(2, 500, verb="GET", path=PODS)
    faults.throttle(1, retry_after=1, verb="GET", path=PODS)
    rec = Recorder()
    w = start(api, rec, page_size=4)
    async with running(w) as task:
        await asyncio.wait_for(w.wait_synced(), 10)
        assert w.reconnects == 3 and w.lists == 1 and len(rec.snapshots) == 1
        assert rec.versions() == server_versions(sim)
        assert len(retry_delays(caplog, "pod list failed: HTTP 500")) == 2
        [throttled] = retry_delays(caplog, "pod list failed: HTTP 429")
        assert throttled >= 1.0  # Retry-After honoured
        # now the watch: drop it, then fail its re-establishment; a change made meanwhile still arrives
        await until(lambda: sim.api.watcher_count() == 1, "watch open")
        faults.fail(3, 500, verb="GET", path=PODS)
        faults.fail(1, 503, verb="GET", path=PODS)
        sim.api.close_watches(abrupt=True)
        p = sim.fleet.pods[5]
        sim.api.set_pod_condition(p.namespace, p.name, "Ready", "False")
        await until(lambda: rec.events == [("MODIFIED", f"{p.namespace}/{p.name}")], "the change")
        assert len(retry_delays(caplog, "pod watch failed: HTTP 5")) == 4
        assert w.relists == 0 and w.lists == 1 and len(rec.snapshots) == 1 and not task.done()
        assert rec.versions() == server_versions(sim)


async def test_callbacks_that_raise_do_not_kill_the_watcher(
    sim: SimCluster, api: client.ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def bad_snapshot(keys: set[str]) -> None:
        raise RuntimeError("snapshot consumer is broken")

    def flaky_event(kind: str, pod: Pod) -> None:
        seen.append(pod.metadata.name)
        if len(seen) == 1:
            raise ValueError("event consumer is broken once")

    w = PodWatcher(
        api, on_page=lambda pods: None, on_snapshot=bad_snapshot, on_event=flaky_event, backoff=FAST
    )
    async with running(w) as task:
        await asyncio.wait_for(w.wait_synced(), 10)
        sim.api.create_pod(manifest("one"))
        sim.api.create_pod(manifest("two"))
        await until(lambda: seen == ["one", "two"], "both events")
        assert w.callback_errors == 2 and w.reconnects == 0 and not task.done()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]
    assert len(errors) == 2


async def test_cancel_closes_the_watch(sim: SimCluster, api: client.ApiClient) -> None:
    w = start(api, Recorder())
    task = asyncio.create_task(w.run())
    await asyncio.wait_for(w.wait_synced(), 10)
    await until(lambda: sim.api.watcher_count() == 1, "watch open")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: sim.api.watcher_count() == 0, "the server saw the watch go away")


class LeaseSpec(msgspec.Struct):
    holderIdentity: str | None = None


class Lease(msgspec.Struct):
    """A lean Lease: the watcher decodes whatever item type the resource names."""

    metadata: ObjectMeta
    spec: LeaseSpec = msgspec.field(default_factory=LeaseSpec)


class Collector:
    """Any resource's pages, snapshots and events, by key."""

    def __init__(self) -> None:
        self.pages: list[list[str]] = []
        self.snapshots: list[list[str]] = []
        self.events: list[tuple[str, str]] = []
        self.items: dict[str, Any] = {}

    def on_page(self, items: list[Any]) -> None:
        self.pages.append([key_of(i) for i in items])
        self.items.update((key_of(i), i) for i in items)

    def on_snapshot(self, keys: set[str]) -> None:
        self.snapshots.append(sorted(keys))
        self.items = {k: i for k, i in self.items.items() if k in keys}

    def on_event(self, kind: str, item: Any) -> None:
        self.events.append((kind, key_of(item)))
        if kind == "DELETED":
            self.items.pop(key_of(item), None)
        else:
            self.items[key_of(item)] = item


def lease_json(name: str, ns: str, holder: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns}, "spec": {"holderIdentity": holder}}


async def test_another_resource_leases_from_the_simulated_server(
    sim: SimCluster, api: client.ApiClient
) -> None:
    leases = sim.api.leases
    for name, ns in [("a", "default"), ("b", "default"), ("c", "default"), ("elsewhere", "kube-system")]:
        leases.create(lease_json(name, ns, "first"))
    got = Collector()
    resource = Resource("coordination.k8s.io", "v1", "leases", "lease", Lease, namespace="default")
    assert resource.path == "/apis/coordination.k8s.io/v1/namespaces/default/leases"
    w = ListWatcher(
        api, resource, on_page=got.on_page, on_snapshot=got.on_snapshot, on_event=got.on_event,
        page_size=2, backoff=FAST,
    )  # fmt: skip
    async with running(w) as task:
        await asyncio.wait_for(w.wait_synced(), 10)
        assert got.pages == [["default/a", "default/b"], ["default/c"]]
        assert got.snapshots == [["default/a", "default/b", "default/c"]]
        leases.update("default", "b", lease_json("b", "default", "second"))
        leases.delete("default", "c")
        leases.create(lease_json("d", "default", "first"))
        leases.create(lease_json("ignored", "kube-system", "first"))
        await until(lambda: len(got.events) == 3, "three lease events")
        assert got.events == [("MODIFIED", "default/b"), ("DELETED", "default/c"), ("ADDED", "default/d")]
        assert got.items["default/b"].spec.holderIdentity == "second"
        await until(lambda: w.bookmarks > 0, "a bookmark")
        # the same relist on 410 as for pods
        sim.api.close_watches(abrupt=True)
        leases.delete("default", "a")
        sim.api.compact()
        await until(lambda: len(got.snapshots) == 2, "a relist")
        assert w.relists == 1 and sorted(got.items) == ["default/b", "default/d"]
        assert not task.done()


# -- a scripted server of our own ---------------------------------------------------------------------


def pod_json(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv)}}


def event(kind: str, name: str, rv: int) -> bytes:
    return json.dumps({"type": kind, "object": pod_json(name, rv)}).encode()


def error_event(code: int) -> bytes:
    status = {"kind": "Status", "status": "Failure", "code": code, "reason": "Whatever", "message": "m"}
    return json.dumps({"type": "ERROR", "object": status}).encode()


class Piece(bytes):
    """Bytes written as they are (no newline added), followed by a short pause."""


END = Piece(b"")  # ends the stream cleanly


class ScriptedApi:
    """Answers pod lists from ``lists`` (resourceVersion, names) and watches from ``watches``: each a list
    of lines (or ``Piece``s) written then held open unless ``END`` comes, or an HTTP status; when the
    script runs out, watches hang open."""

    def __init__(self, lists: list[tuple[int, list[str]]], watches: list[list[bytes] | int]) -> None:
        self.lists = lists
        self.watches = watches
        self.list_calls = 0
        self.watch_rvs: list[str | None] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") not in ("1", "true", "True"):
            rv, names = self.lists[min(self.list_calls, len(self.lists) - 1)]
            self.list_calls += 1
            items = [pod_json(n, rv) for n in names]
            return web.json_response(
                {"kind": "PodList", "metadata": {"resourceVersion": str(rv)}, "items": items}
            )
        self.watch_rvs.append(request.query.get("resourceVersion"))
        script = self.watches.pop(0) if self.watches else []
        if isinstance(script, int):
            body = {
                "kind": "Status",
                "status": "Failure",
                "code": script,
                "reason": "Expired",
                "message": "gone",
            }
            return web.json_response(body, status=script)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for item in script:
            if item is END:
                await resp.write_eof()
                return resp
            if isinstance(item, Piece):
                await resp.write(item)
                await asyncio.sleep(0.01)  # likely a chunk of its own (correctness does not depend on it)
            else:
                await resp.write(item + b"\n")
        await asyncio.Event().wait()  # held open until the client goes away
        return resp

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/pods", self.handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, handler_cancellation=True, shutdown_timeout=1.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = port or site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def write_kubeconfig(path: Path, port: int) -> str:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(cfg))
    return str(path)


@contextlib.asynccontextmanager
async def scripted(tmp_path: Path, server: ScriptedApi) -> AsyncIterator[client.ApiClient]:
    if not server.port:
        await server.start()
    try:
        ac = await make_api_client(write_kubeconfig(tmp_path / "kubeconfig", server.port))
        async with ac:
            yield ac
    finally:
        await server.stop()


async def test_garbage_lines_restart_the_watch_from_the_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = ScriptedApi(
        lists=[(10, ["p0"])],
        watches=[
            [event("ADDED", "a", 11), b"this is not json {", event("ADDED", "lost", 99)],
            [event("MODIFIED", "a", 12), b'{"kind": "Pod", "metadata": {}}'],  # JSON, not a watch event
            [b'{"type": "ADDED", "object": {"metadata": {"namespace": "default"}}}'],  # a pod without a name
            [b'{"type": "FROBNICATE", "object": {}}'],
            [event("ADDED", "c", 13)],
        ],
    )
    rec = Recorder()
    async with scripted(tmp_path, server) as api:
        w = start(api, rec)
        async with running(w) as task:
            await until(lambda: len(rec.events) == 3, "three good events")
            assert rec.events == [("ADDED", "default/a"), ("MODIFIED", "default/a"), ("ADDED", "default/c")]
            assert server.watch_rvs == ["10", "11", "12", "12", "12"]
            assert w.garbage_lines == 4 and w.resource_version == "13"
            assert w.relists == 0 and server.list_calls == 1 and not task.done()
    garbage = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(garbage) == 4 and all("garbage line" in m for m in garbage)
    assert "this is not json" in garbage[0] and "FROBNICATE" in garbage[3]


async def test_lines_split_and_joined_across_chunks(tmp_path: Path) -> None:
    a = event("ADDED", "a", 11) + b"\n"
    server = ScriptedApi(
        lists=[(10, [])],
        watches=[
            [
                Piece(a[:7]),
                Piece(a[7:30]),
                Piece(a[30:] + event("ADDED", "b", 12)[:5]),
                Piece(event("ADDED", "b", 12)[5:] + b"\n\n" + event("ADDED", "c", 13) + b"\n"),
                END,
            ],
            [Piece(event("MODIFIED", "c", 14)), END],  # the last line lacks its newline
        ],
    )
    rec = Recorder()
    async with scripted(tmp_path, server) as api:
        w = start(api, rec)
        async with running(w):
            await until(lambda: len(server.watch_rvs) == 3, "the third watch")
            assert rec.events == [
                ("ADDED", "default/a"),
                ("ADDED", "default/b"),
                ("ADDED", "default/c"),
                ("MODIFIED", "default/c"),
            ]
            assert server.watch_rvs == ["10", "13", "14"]
            assert w.garbage_lines == 0 and w.reconnects == 0 and w.relists == 0


async def test_http_410_and_error_events_on_the_watch(tmp_path: Path) -> None:
    server = ScriptedApi(
        lists=[(10, ["p0"]), (20, ["p0", "p1"])],
        watches=[[error_event(500)], 410, [error_event(410)], [event("ADDED", "b", 21)]],
    )
    rec = Recorder()
    async with scripted(tmp_path, server) as api:
        w = start(api, rec)
        async with running(w):
            await until(lambda: rec.events, "an event after the relists")
            # ERROR 500: resume from the same version; HTTP 410: relist; ERROR 410: relist again
            assert server.watch_rvs == ["10", "10", "20", "20"]
            assert server.list_calls == 3 and w.relists == 2 and w.reconnects >= 1
            assert rec.snapshots == [
                ["default/p0"],
                ["default/p0", "default/p1"],
                ["default/p0", "default/p1"],
            ]
            assert rec.events == [("ADDED", "default/b")]


async def test_connection_refused_until_the_server_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ScriptedApi(lists=[(5, ["p0"])], watches=[])
    server.port = port
    rec = Recorder()
    ac = await make_api_client(write_kubeconfig(tmp_path / "kubeconfig", port))
    async with ac:
        w = start(ac, rec)
        try:
            async with running(w):
                await until(lambda: w.reconnects >= 2, "retries while nothing listens")
                assert not w.synced and w.last_error and "pod list failed" in w.last_error
                await server.start(port)
                await asyncio.wait_for(w.wait_synced(), 10)
                await until(lambda: server.watch_rvs == ["5"], "the watch")
        finally:
            await server.stop()
    assert rec.snapshots == [["default/p0"]]
    assert any(r.levelno == logging.WARNING and "pod list failed" in r.getMessage() for r in caplog.records)


class EndpointConditions(msgspec.Struct):
    ready: bool | None = None
    serving: bool | None = None


class Endpoint(msgspec.Struct):
    addresses: list[str]
    conditions: EndpointConditions = msgspec.field(default_factory=EndpointConditions)


class EndpointSlice(msgspec.Struct):
    metadata: ObjectMeta
    endpoints: list[Endpoint] = []


def slice_json(name: str, rv: int, ready: bool) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": str(rv)},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": ready, "serving": ready}}],
    }


async def test_another_resource_endpointslices_from_a_scripted_server(tmp_path: Path) -> None:
    """The simulator serves no EndpointSlices: a list and a watch of discovery.k8s.io/v1 of our own."""
    path = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"
    queries: list[dict[str, str]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        queries.append(dict(request.query))
        if request.query.get("watch") != "true":
            body = {"kind": "EndpointSliceList", "metadata": {"resourceVersion": "7"},
                    "items": [slice_json("web-abc", 7, True)]}  # fmt: skip
            return web.json_response(body)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for kind, obj in [
            ("MODIFIED", slice_json("web-abc", 8, False)),
            ("ADDED", slice_json("web-def", 9, True)),
        ]:
            await resp.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        await asyncio.Event().wait()  # held open until the client goes away
        return resp

    app = web.Application()
    app.router.add_get(path, handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    got = Collector()
    resource = Resource(
        "discovery.k8s.io", "v1", "endpointslices", "endpointslice", EndpointSlice,
        namespace="shop", label_selector="kubernetes.io/service-name=web",
    )  # fmt: skip
    try:
        ac = await make_api_client(write_kubeconfig(tmp_path / "kubeconfig", port))
        async with ac:
            w = ListWatcher(
                ac, resource, on_page=got.on_page, on_snapshot=got.on_snapshot, on_event=got.on_event,
                backoff=FAST,
            )  # fmt: skip
            async with running(w):
                await until(lambda: len(got.events) == 2, "two slice events")
                assert got.snapshots == [["shop/web-abc"]]
                assert got.events == [("MODIFIED", "shop/web-abc"), ("ADDED", "shop/web-def")]
                conditions = got.items["shop/web-abc"].endpoints[0].conditions
                assert (conditions.ready, conditions.serving) == (False, False)
                assert w.resource_version == "9" and w.reconnects == 0
    finally:
        await runner.cleanup()
    selector = "kubernetes.io/service-name=web"
    assert queries[0] == {"labelSelector": selector, "limit": "500"}
    assert queries[1] == {
        "labelSelector": selector, "watch": "true", "resourceVersion": "7", "allowWatchBookmarks": "true",
        "timeoutSeconds": "300",
    }  # fmt: skip
