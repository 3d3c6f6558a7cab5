"""Kubernetes Events from the recorder, read back from the simulated API server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from helpers import until
from kubernetes_asyncio import client

from ehc.kube.client import make_api_client
from ehc.kube.events import EventRecorder
from ehc.sim import SimCluster

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@asynccontextmanager
async def recorder(**kw: Any) -> AsyncIterator[tuple[SimCluster, EventRecorder, client.CoreV1Api]]:
    async with SimCluster(nodes=1, pods_per_node=1, netns=False, listeners=False, kubelet_delay=None) as sim:
        api = await make_api_client(sim.kubeconfig)
        async with api:
            rec = EventRecorder(api, **kw)
            task = asyncio.create_task(rec.run())
            try:
                yield sim, rec, client.CoreV1Api(api)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


def emit(rec: EventRecorder, pod: str, reason: str, type_: str = "Warning", ns: str = "default") -> None:
    rec.emit(namespace=ns, name=pod, uid=f"uid-{pod}", type_=type_, reason=reason, message=f"{pod} {reason}")


async def test_event_has_the_right_fields() -> None:
    async with recorder(host="node-1") as (sim, rec, v1):
        rec.emit(
            namespace="default", name="web-1", uid="1234", type_="Warning", reason="EndpointUnhealthy",
            message="tcp 10.0.0.7:8080: timeout after 3 probes",
        )  # fmt: skip
        await until(lambda: rec.sent == 1)
        listed = await v1.list_namespaced_event("default", field_selector="involvedObject.name=web-1")
        assert len(listed.items) == 1
        ev = listed.items[0]
        assert ev.metadata.name.startswith("web-1.") and re.fullmatch(r"web-1\.[0-9a-f]+", ev.metadata.name)
        obj = ev.involved_object
        assert (obj.kind, obj.api_version, obj.namespace, obj.name, obj.uid) == (
            "Pod", "v1", "default", "web-1", "1234",
        )  # fmt: skip
        assert (ev.type, ev.reason, ev.message) == (
            "Warning", "EndpointUnhealthy", "tcp 10.0.0.7:8080: timeout after 3 probes",
        )  # fmt: skip
        assert ev.source.component == "endpoint-health-checker" and ev.source.host == "node-1"
        assert ev.count == 1 and ev.first_timestamp == ev.last_timestamp
        raw = sim.api.events.get("default", ev.metadata.name)
        assert raw is not None
        assert RFC3339.match(raw["firstTimestamp"]) and RFC3339.match(raw["lastTimestamp"])
        assert rec.failed == rec.suppressed == rec.dropped == 0


async def test_rate_limited_per_pod_and_reason() -> None:
    async with recorder(per_pod_interval=0.4) as (sim, rec, v1):
        for _ in range(3):
            emit(rec, "a", "EndpointUnhealthy")
        emit(rec, "a", "EndpointHealthy", "Normal")  # another reason: its own budget
        emit(rec, "b", "EndpointUnhealthy")  # another pod: its own budget
        assert rec.suppressed == 2
        await until(lambda: rec.sent == 3)
        await asyncio.sleep(0.45)
        emit(rec, "a", "EndpointUnhealthy")  # the interval passed: sent, carrying the suppressed two
        await until(lambda: rec.sent == 4)
        listed = await v1.list_namespaced_event("default", field_selector="involvedObject.name=a")
        got = sorted((e.reason, e.count) for e in listed.items)
        assert got == [("EndpointHealthy", 1), ("EndpointUnhealthy", 1), ("EndpointUnhealthy", 3)]
        assert rec.suppressed == 2 and rec.failed == 0


async def test_api_failure_is_counted_and_the_recorder_keeps_going() -> None:
    async with recorder() as (sim, rec, v1):
        sim.api.faults.fail(1, 500, verb="POST", path=r"/events$")
        emit(rec, "a", "EndpointUnhealthy")
        await until(lambda: rec.failed == 1)
        emit(rec, "b", "EndpointUnhealthy")
        emit(rec, "c", "FailSafeEngaged")
        await until(lambda: rec.sent == 2)
        listed = await v1.list_namespaced_event("default")
        assert sorted(e.involved_object.name for e in listed.items) == ["b", "c"]
        assert rec.failed == 1


async def test_full_queue_drops_instead_of_blocking() -> None:
    async with SimCluster(nodes=1, pods_per_node=1, netns=False, listeners=False, kubelet_delay=None) as sim:
        api = await make_api_client(sim.kubeconfig)
        async with api:
            rec = EventRecorder(api, queue_limit=2)
            for pod in ("a", "b", "c"):
                emit(rec, pod, "EndpointUnhealthy")
            emit(rec, "x", "EndpointUnhealthy", type_="Bogus")  # invalid type: counted, not raised
            assert (rec.queue_depth, rec.dropped, rec.failed) == (2, 1, 1)
            task = asyncio.create_task(rec.run())
            try:
                await until(lambda: rec.sent == 2)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
