"""The write queue, with pod status patches, against the simulated API server, through the real
kubernetes_asyncio client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from helpers import until

from ehc.kube.client import make_api_client
from ehc.kube.model import Condition
from ehc.kube.writes import WriteQueue
from ehc.sim import SimCluster
from ehc.sim.faults import PODS_STATUS
from ehc.sim.writelog import WriteEntry
from ehc.sources.pods.writes import STRATEGIC_MERGE, StatusPatch


def rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


_serial = iter(range(1_000_000))


def decision(sim: SimCluster, name: str, *conds: tuple[str, str], ns: str = "default") -> StatusPatch:
    pod = sim.api.get_pod(ns, name)
    uid = pod["metadata"]["uid"] if pod else "no-such-uid"
    return StatusPatch(
        ns,
        name,
        uid,
        tuple(
            Condition(type=t, status=s, reason="EndpointUnhealthy" if s == "False" else "EndpointHealthy",
                      message=f"ehc: {t}={s} #{next(_serial)}", lastTransitionTime=rfc3339())
            for t, s in conds
        ),
    )  # fmt: skip


def add_pods(sim: SimCluster, n: int, prefix: str = "p") -> list[str]:
    names = []
    for i in range(n):
        name = f"{prefix}-{i:03d}"
        sim.api.create_pod(
            {
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"nodeName": "sim-node-000", "containers": [{"name": "c", "image": "pause"}]},
                "status": {
                    "phase": "Running",
                    "podIP": "127.64.1.2",
                    "conditions": [
                        {"type": "Ready", "status": "True"},
                        {"type": "ContainersReady", "status": "True"},
                    ],
                },
            }
        )
        names.append(name)
    return names


class Done:
    """Collects on_done calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[StatusPatch, str, float]] = []

    def __call__(self, d: StatusPatch, outcome: str, seconds: float) -> None:
        assert seconds >= 0
        self.calls.append((d, outcome, seconds))

    def outcomes(self) -> list[str]:
        return [o for _, o, _ in self.calls]

    async def wait(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < n:
            assert time.monotonic() < deadline, f"only {len(self.calls)} of {n} decisions done: {self.calls}"
            await asyncio.sleep(0.01)


@asynccontextmanager
async def cluster() -> AsyncIterator[SimCluster]:
    async with SimCluster(nodes=1, pods_per_node=5, netns=False, listeners=False, kubelet_delay=None) as sim:
        yield sim


@asynccontextmanager
async def running(sim: SimCluster, **kw: Any) -> AsyncIterator[tuple[WriteQueue, Done]]:
    done = Done()
    api = await make_api_client(sim.kubeconfig)
    async with api:
        patcher = WriteQueue(api, on_done=done, **kw)
        task = asyncio.create_task(patcher.run())
        try:
            yield patcher, done
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def status_writes(sim: SimCluster, name: str | None = None, ok: bool | None = None) -> list[WriteEntry]:
    return sim.api.write_log.select(resource="pods", subresource="status", actor="client", name=name, ok=ok)


async def test_one_strategic_merge_patch_per_decision_and_no_get() -> None:
    async with cluster() as sim:
        pods = add_pods(sim, 5)
        before = {n: [c["type"] for c in sim.api.get_pod("default", n)["status"]["conditions"]] for n in pods}
        requests_before = sim.api.requests
        async with running(sim) as (patcher, done):
            decisions = [decision(sim, n, ("Ready", "False")) for n in pods]
            decisions[2] = decision(sim, pods[2], ("endpointHealthCheckSuccess", "False"), ("Ready", "False"))
            for d in decisions:
                patcher.submit(d)
            await done.wait(len(decisions))
        assert done.outcomes() == ["ok"] * len(decisions)
        writes = status_writes(sim)
        assert len(writes) == len(decisions)
        assert sim.api.requests - requests_before == len(decisions)  # every request was a PATCH: no GET
        by_name = {w.name: w for w in writes}
        for d in decisions:
            w = by_name[d.name]
            assert w.verb == "PATCH" and w.content_type == STRATEGIC_MERGE and w.status == 200
            assert w.body == {
                "metadata": {"uid": d.uid},  # a precondition: this pod, not one recreated under its name
                "status": {
                    "conditions": [
                        {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
                         "lastTransitionTime": c.lastTransitionTime}
                        for c in d.conditions
                    ]
                }
            }  # fmt: skip
            assert sim.api.pod_condition("default", d.name, "Ready") == "False"
            after = [c["type"] for c in sim.api.get_pod("default", d.name)["status"]["conditions"]]
            assert set(before[d.name]) <= set(after)  # the kubelet's other conditions are kept
        assert sim.api.pod_condition("default", pods[2], "endpointHealthCheckSuccess") == "False"
        assert sim.api.pod_condition("default", pods[2], "ContainersReady") == "True"
        assert patcher.queue_depth == 0 and patcher.in_flight == 0


async def test_ejections_go_before_recoveries_and_first_values_that_wait_for_the_budget() -> None:
    async with cluster() as sim:
        names = add_pods(sim, 12)
        # A budget of one request at a time, two a second: six recoveries (or first values) are queued
        # first, then six ejections; every ejection lands before any of them.
        async with running(sim, qps=2, burst=1, concurrency=1, batch_window=0.0) as (patcher, done):
            for n in names[:6]:
                patcher.submit(decision(sim, n, ("endpointHealthCheckSuccess", "True")))
            for n in names[6:]:
                patcher.submit(decision(sim, n, ("endpointHealthCheckSuccess", "False"), ("Ready", "False")))
            await done.wait(12, timeout=20)
        assert [w.name for w in status_writes(sim)] == names[6:] + names[:6]


async def test_latest_decision_wins_while_queued() -> None:
    async with cluster() as sim:
        name = add_pods(sim, 1)[0]
        async with running(sim, batch_window=0.2) as (patcher, done):
            ds = [
                decision(sim, name, ("Ready", "False")),
                decision(sim, name, ("Ready", "True")),
                decision(sim, name, ("endpointHealthCheckSuccess", "False"), ("Ready", "False")),
            ]
            for d in ds:
                patcher.submit(d)
            assert patcher.queue_depth == 1
            await done.wait(3)
        assert [(d, o) for d, o, _ in done.calls] == [
            (ds[0], "superseded"),
            (ds[1], "superseded"),
            (ds[2], "ok"),
        ]
        writes = status_writes(sim)
        assert len(writes) == 1
        assert [c["type"] for c in writes[0].conditions()] == ["endpointHealthCheckSuccess", "Ready"]


async def test_newer_decision_supersedes_one_failing_in_flight() -> None:
    async with cluster() as sim:
        name = add_pods(sim, 1)[0]
        sim.api.faults.delay(0.3, count=1, verb="PATCH", path=PODS_STATUS)
        sim.api.faults.fail(1, 500, verb="PATCH", path=PODS_STATUS)
        async with running(sim, batch_window=0.0, backoff=(0.01, 0.05)) as (patcher, done):
            old = decision(sim, name, ("Ready", "False"))
            new = decision(sim, name, ("Ready", "True"))
            patcher.submit(old)
            for _ in range(100):
                if patcher.in_flight:
                    break
                await asyncio.sleep(0.01)
            assert patcher.in_flight == 1
            patcher.submit(new)  # waits: one request per pod at a time
            await done.wait(2)
        assert [(d, o) for d, o, _ in done.calls] == [(old, "superseded"), (new, "ok")]
        writes = status_writes(sim, name)
        assert [w.status for w in writes] == [500, 200]  # the failed old one was not retried
        assert writes[1].conditions()[0]["status"] == "True"


async def test_storms_of_429_and_500_lose_nothing_and_keep_order() -> None:
    async with cluster() as sim:
        names = add_pods(sim, 12)
        sim.api.faults.throttle(4, retry_after=1, verb="PATCH", path=PODS_STATUS)
        sim.api.faults.fail(15, 500, verb="PATCH", path=PODS_STATUS)
        sim.api.faults.fail(5, 503, verb="PATCH", path=PODS_STATUS)
        async with running(sim, backoff=(0.01, 0.1), concurrency=4) as (patcher, done):
            submitted: dict[str, list[StatusPatch]] = {n: [] for n in names}
            for round_, status in enumerate(("False", "True", "False")):
                for n in names:
                    d = decision(sim, n, ("endpointHealthCheckSuccess", status), ("Ready", status))
                    submitted[n].append(d)
                    patcher.submit(d)
                await asyncio.sleep(0.15 * round_)
            await done.wait(3 * len(names), timeout=20)
        assert sim.api.faults.injected == 24
        outcome = {id(d): o for d, o, _ in done.calls}
        assert len(done.calls) == len(outcome) == 3 * len(names)  # exactly one outcome per decision
        assert set(outcome.values()) <= {"ok", "superseded"}
        for n in names:
            ok_writes = status_writes(sim, n, ok=True)
            bodies = [w.body for w in ok_writes]
            expected = [d.body() for d in submitted[n] if outcome[id(d)] == "ok"]
            assert bodies == expected  # each landed once, in submission order
            assert outcome[id(submitted[n][-1])] == "ok"  # the latest always lands
            assert sim.api.pod_condition("default", n, "endpointHealthCheckSuccess") == "False"
        assert patcher.counts["failed"] == 0


async def test_timeouts_are_retried() -> None:
    async with cluster() as sim:
        name = add_pods(sim, 1)[0]
        sim.api.faults.delay(1.0, count=2, verb="PATCH", path=PODS_STATUS)
        async with running(sim, request_timeout=0.2, backoff=(0.01, 0.05)) as (patcher, done):
            patcher.submit(decision(sim, name, ("Ready", "False")))
            await done.wait(1)
            assert patcher.requests == 3
        assert done.outcomes() == ["ok"]
        assert sim.api.pod_condition("default", name) == "False"


async def test_404_is_not_found_without_retry_and_422_is_dropped() -> None:
    async with cluster() as sim:
        name = add_pods(sim, 1)[0]
        async with running(sim) as (patcher, done):
            patcher.submit(decision(sim, "no-such-pod", ("Ready", "False")))
            uid = sim.api.get_pod("default", name)["metadata"]["uid"]
            bad = StatusPatch("default", name, uid, (Condition(type="Ready", status="Maybe"),))
            patcher.submit(bad)
            await done.wait(2)
            await asyncio.sleep(0.2)  # no retry shows up
        assert sorted(done.outcomes()) == ["dropped", "not_found"]
        assert [w.status for w in status_writes(sim, "no-such-pod")] == [404]
        assert [w.status for w in status_writes(sim, name)] == [422]
        assert patcher.requests == 2


async def test_a_write_for_a_pod_recreated_under_its_name_is_refused_and_dropped() -> None:
    # A StatefulSet deletes and recreates its pods under the same names: an ejection decided for the
    # old pod must not land on the new, healthy one.  The UID is the precondition.
    async with cluster() as sim:
        name = add_pods(sim, 1)[0]
        stale = decision(sim, name, ("Ready", "False"))
        old = sim.api.get_pod("default", name)
        sim.api.delete_pod("default", name)
        sim.api.create_pod({**old, "metadata": {"name": name, "namespace": "default"}})
        assert sim.api.get_pod("default", name)["metadata"]["uid"] != stale.uid
        async with running(sim) as (patcher, done):
            patcher.submit(stale)
            await done.wait(1)
            await asyncio.sleep(0.2)  # no retry shows up
        assert done.outcomes() == ["dropped"]
        (write,) = status_writes(sim, name)
        assert write.status == 409 and write.body["metadata"] == {"uid": stale.uid}
        assert sim.api.pod_condition("default", name) == "True"  # the new pod was not touched


async def test_an_outage_of_any_length_loses_nothing_and_is_paced() -> None:
    # Level-triggered: a write stays wanted until it lands.  During an outage the queue sends one write
    # at a time, paced, instead of every write's own retries; the first answer releases them all.
    async with cluster() as sim:
        names = add_pods(sim, 10)
        sim.api.faults.fail(10**6, 500, verb="PATCH", path=PODS_STATUS)
        async with running(sim, backoff=(0.01, 0.05), concurrency=8) as (patcher, done):
            for n in names:
                patcher.submit(decision(sim, n, ("Ready", "False")))
            # Declared after 3 failures in a row; requests sent before that may still be in flight.
            await until(lambda: patcher.outage and patcher.in_flight <= 1, "an outage")
            in_flight: list[int] = []
            # Far past the 8 attempts after which a write used to be given up for good.
            await until(
                lambda: in_flight.append(patcher.in_flight) or patcher.retries >= 10 * 8, "a long outage"
            )
            assert max(in_flight) <= 1 and done.calls == []
            sim.api.faults.clear()
            await done.wait(10)
        assert done.outcomes() == ["ok"] * 10 and not patcher.outage
        for n in names:
            assert [w.status for w in status_writes(sim, n)][-1] == 200
            assert [w.status for w in status_writes(sim, n)].count(200) == 1  # landed once
            assert sim.api.pod_condition("default", n) == "False"


async def test_qps_budget_spreads_writes() -> None:
    async with cluster() as sim:
        names = add_pods(sim, 30)
        async with running(sim, qps=10, burst=1, concurrency=8) as (patcher, done):
            for n in names:
                patcher.submit(decision(sim, n, ("Ready", "False")))
            await done.wait(30, timeout=10)
        assert done.outcomes() == ["ok"] * 30
        times = sorted(w.mono for w in status_writes(sim))
        assert len(times) == 30
        assert times[-1] - times[0] >= 2.5  # 29 intervals of 1/qps, as the server saw them


async def test_can_write_false_holds_and_true_releases() -> None:
    async with cluster() as sim:
        names = add_pods(sim, 5)
        allowed = False
        can_write: Callable[[], bool] = lambda: allowed  # noqa: E731
        async with running(sim, can_write=can_write) as (patcher, done):
            for n in names:
                patcher.submit(decision(sim, n, ("Ready", "False")))
            await asyncio.sleep(0.3)
            assert status_writes(sim) == [] and done.calls == []
            assert patcher.queue_depth == len(names)
            patcher.cancel(f"default/{names[0]}")  # the owner drops a deleted pod's decision, quietly
            assert patcher.queue_depth == len(names) - 1
            allowed = True
            patcher.wake()
            await done.wait(len(names) - 1)
        assert done.outcomes() == ["ok"] * (len(names) - 1)
        assert sorted(w.name for w in status_writes(sim)) == sorted(names[1:])


@pytest.mark.parametrize("qps", [0.0, -1.0])
def test_rejects_bad_settings(qps: float) -> None:
    with pytest.raises(ValueError):
        WriteQueue(None, qps=qps)  # type: ignore[arg-type]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_qps_budget_follows_the_injected_clock() -> None:
    """With the clock standing still the bucket never refills, however long the test waits."""
    async with cluster() as sim:
        names = add_pods(sim, 3)
        clock = FakeClock()
        async with running(sim, qps=1, burst=1, batch_window=0.0, clock=clock) as (patcher, done):
            for n in names:
                patcher.submit(decision(sim, n, ("Ready", "False")))
            await done.wait(1)
            await asyncio.sleep(0.3)
            assert done.outcomes() == ["ok"] and patcher.queue_depth == 2
            clock.now += 1.0  # one second's worth of budget: one more write
            patcher.wake()
            await done.wait(2)
            await asyncio.sleep(0.3)
            assert done.outcomes() == ["ok"] * 2 and patcher.queue_depth == 1
            clock.now += 1.0
            patcher.wake()
            await done.wait(3)
        assert len(status_writes(sim)) == 3


async def test_settled_only_once_a_landed_write_had_time_to_show() -> None:
    # A resync compares desired with observed state only for settled objects: nothing queued or in
    # flight, and no write so recent that the watch may not show it yet (which would duplicate it).
    async with cluster() as sim:
        name = add_pods(sim, 1)[0]
        key = f"default/{name}"
        now = [time.monotonic()]
        async with running(sim, batch_window=0.0, clock=lambda: now[0]) as (patcher, done):
            assert patcher.settled(key)
            patcher.submit(decision(sim, name, ("Ready", "False")))
            assert not patcher.settled(key)
            await done.wait(1)
            assert done.outcomes() == ["ok"] and not patcher.settled(key)
            now[0] += 5.1
            assert patcher.settled(key)
