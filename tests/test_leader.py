"""Lease-based leader election against the simulated API server, through the real client."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from helpers import until

from ehc.kube.client import make_api_client
from ehc.kube.leader import LeaderElector
from ehc.sim import SimCluster
from ehc.sim.faults import LEASES

NS, LEASE = "default", "ehc-leader"
FAST = {"lease_duration": 1.0, "renew_deadline": 0.6, "retry_period": 0.1}
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class Candidate:
    def __init__(self, elector: LeaderElector, log: list[tuple[str, str, float]]) -> None:
        self.elector = elector
        self.task: asyncio.Task[None] | None = None
        self.log = log

    def started(self) -> None:
        self.log.append((self.elector.identity, "started", time.monotonic()))

    async def stopped(self) -> None:  # async callbacks are awaited too
        self.log.append((self.elector.identity, "stopped", time.monotonic()))

    def events(self, kind: str) -> list[float]:
        return [t for who, k, t in self.log if who == self.elector.identity and k == kind]


@asynccontextmanager
async def candidates(
    sim: SimCluster, *identities: str, **kw: Any
) -> AsyncIterator[tuple[list[Candidate], list[tuple[str, str, float]]]]:
    log: list[tuple[str, str, float]] = []
    out: list[Candidate] = []
    async with AsyncExitStack() as stack:
        for ident in identities:
            api = await stack.enter_async_context(await make_api_client(sim.kubeconfig))
            c = Candidate(None, log)  # type: ignore[arg-type]
            c.elector = LeaderElector(
                api, namespace=NS, name=LEASE, identity=ident,
                on_started_leading=c.started, on_stopped_leading=c.stopped, **{**FAST, **kw},
            )  # fmt: skip
            out.append(c)
        for c in out:
            c.task = asyncio.create_task(c.elector.run())
        try:
            yield out, log
        finally:
            for c in out:
                assert c.task is not None
                c.task.cancel()
            await asyncio.gather(*(c.task for c in out if c.task), return_exceptions=True)


@asynccontextmanager
async def cluster() -> AsyncIterator[SimCluster]:
    async with SimCluster(nodes=1, pods_per_node=1, netns=False, listeners=False, kubelet_delay=None) as sim:
        yield sim


def lease(sim: SimCluster) -> dict[str, Any]:
    obj = sim.api.leases.get(NS, LEASE)
    assert obj is not None
    return obj["spec"]


def leaders(cs: list[Candidate]) -> list[str]:
    return [c.elector.identity for c in cs if c.elector.is_leader()]


async def test_one_leader_one_standby_and_lease_fields() -> None:
    async with cluster() as sim, candidates(sim, "a", "b") as (cs, log):
        await until(lambda: len(leaders(cs)) == 1)
        first = lease(sim)
        await asyncio.sleep(0.5)  # several renewals later: still the same single leader
        assert len(leaders(cs)) == 1
        leader = next(c for c in cs if c.elector.is_leader())
        standby = next(c for c in cs if c is not leader)
        spec = lease(sim)
        assert spec["holderIdentity"] == leader.elector.identity == standby.elector.observed_holder
        assert spec["leaseDurationSeconds"] == 1 and spec["leaseTransitions"] == 0
        assert MICRO.match(spec["acquireTime"]) and MICRO.match(spec["renewTime"])
        assert spec["acquireTime"] == first["acquireTime"] and spec["renewTime"] > first["renewTime"]
        assert len(leader.events("started")) == 1 and not leader.events("stopped")
        assert not standby.events("started")
        # both raced to create the lease: exactly one POST succeeded
        posts = sim.api.write_log.select(resource="leases", verb="POST")
        assert [p.status for p in posts if p.status == 201] == [201]


async def test_release_hands_over_at_once() -> None:
    async with (
        cluster() as sim,
        candidates(sim, "a", "b", lease_duration=3.0, renew_deadline=2.0) as (cs, log),
    ):
        await until(lambda: len(leaders(cs)) == 1)
        leader = next(c for c in cs if c.elector.is_leader())
        standby = next(c for c in cs if c is not leader)
        await asyncio.sleep(0.3)  # the standby has observed the held lease
        t0 = time.monotonic()
        await leader.elector.release()
        assert not leader.elector.is_leader() and len(leader.events("stopped")) == 1
        assert leader.task is not None and leader.task.done()  # run() ended; no new campaign
        assert "holderIdentity" not in lease(sim) or lease(sim)["holderIdentity"] == standby.elector.identity
        t1 = await until(standby.elector.is_leader)
        assert t1 - t0 < 1.0  # well before the 3 s lease would have expired
        assert lease(sim)["holderIdentity"] == standby.elector.identity
        assert lease(sim)["leaseTransitions"] == 1
        assert leader.events("stopped")[0] < standby.events("started")[0]  # never two leaders
        await leader.elector.release()  # idempotent, and it does not touch someone else's lease
        assert lease(sim)["holderIdentity"] == standby.elector.identity


async def test_standby_takes_over_after_expiry_when_leader_vanishes() -> None:
    async with cluster() as sim, candidates(sim, "a", "b") as (cs, log):
        await until(lambda: len(leaders(cs)) == 1)
        leader = next(c for c in cs if c.elector.is_leader())
        standby = next(c for c in cs if c is not leader)
        await asyncio.sleep(0.3)
        assert leader.task is not None
        leader.task.cancel()  # like kill -9: no release
        t0 = time.monotonic()
        await asyncio.gather(leader.task, return_exceptions=True)
        assert lease(sim)["holderIdentity"] == leader.elector.identity
        t1 = await until(standby.elector.is_leader, limit=5)
        # not before the lease (1 s since the standby last saw it change) expired, and not much after
        assert 0.6 <= t1 - t0 <= 1.0 + 3 * FAST["retry_period"] + 0.5
        assert lease(sim)["holderIdentity"] == standby.elector.identity
        assert lease(sim)["leaseTransitions"] == 1


async def test_failed_renewals_stop_leading_within_renew_deadline() -> None:
    async with cluster() as sim, candidates(sim, "a") as ([a], log):
        await until(a.elector.is_leader)
        await asyncio.sleep(0.25)
        sim.api.faults.fail(10_000, 500, path=LEASES)
        t0 = time.monotonic()
        t1 = await until(lambda: not a.elector.is_leader(), limit=3)
        assert t1 - t0 <= FAST["renew_deadline"] + 0.05
        await until(lambda: bool(a.events("stopped")), limit=1)
        assert a.events("stopped")[0] - t0 <= FAST["renew_deadline"] + 0.1
        transitions = lease(sim)["leaseTransitions"]
        sim.api.faults.clear()  # the API comes back: the lease still names us, so we take it back
        await until(a.elector.is_leader, limit=3)
        assert len(a.events("started")) == 2
        assert lease(sim)["leaseTransitions"] == transitions  # same holder: not a transition


async def test_is_leader_goes_false_when_the_renew_loop_stalls() -> None:
    async with cluster() as sim, candidates(sim, "a") as ([a], log):
        await until(a.elector.is_leader)
        sim.api.faults.delay(5.0, path=LEASES)  # renewals hang: nothing returns, nothing fails fast
        t0 = time.monotonic()
        t1 = await until(lambda: not a.elector.is_leader(), limit=3)
        assert t1 - t0 <= FAST["renew_deadline"] + 0.05
        await until(lambda: bool(a.events("stopped")), limit=1)


async def test_takeover_increments_transitions_each_time() -> None:
    async with (
        cluster() as sim,
        candidates(sim, "a", "b", lease_duration=3.0, renew_deadline=2.0) as (cs, log),
    ):
        await until(lambda: len(leaders(cs)) == 1)
        first = next(c for c in cs if c.elector.is_leader())
        second = next(c for c in cs if c is not first)
        await first.elector.release()
        await until(second.elector.is_leader)
        assert lease(sim)["leaseTransitions"] == 1
        third_api = await make_api_client(sim.kubeconfig)
        async with third_api:
            got: list[str] = []
            third = LeaderElector(
                third_api, namespace=NS, name=LEASE, identity="c",
                on_started_leading=lambda: got.append("c"), lease_duration=3.0, renew_deadline=2.0,
                retry_period=0.1,
            )  # fmt: skip
            task = asyncio.create_task(third.run())
            await asyncio.sleep(0.3)
            assert not third.is_leader()
            await second.elector.release()
            await until(third.is_leader)
            assert lease(sim)["leaseTransitions"] == 2 and got == ["c"]
            await third.release()
            await asyncio.wait_for(task, 1)


async def test_is_leader_follows_the_injected_clock() -> None:
    """The renew deadline is measured on the elector's clock: with renewals hanging, leadership ends
    exactly when that clock passes the deadline, not when the test's wall clock does."""
    now = [1000.0]
    async with cluster() as sim, candidates(sim, "a", clock=lambda: now[0]) as ([a], log):
        await until(a.elector.is_leader)
        sim.api.faults.delay(5.0, path=LEASES)  # from now on no renewal lands
        await asyncio.sleep(FAST["renew_deadline"] + 0.2)  # real time passes, the elector's clock does not
        assert a.elector.is_leader()
        now[0] += FAST["renew_deadline"] - 0.01
        assert a.elector.is_leader()
        now[0] += 0.01
        assert not a.elector.is_leader()
        await until(lambda: bool(a.events("stopped")), limit=3)


async def test_a_standby_looks_again_the_moment_the_observed_lease_expires() -> None:
    """While the holder renews, a standby looks every retry period; once the record stops changing,
    its next look is at the lease's expiry, not up to a retry period after it."""
    now = [1000.0]
    async with cluster() as sim, candidates(sim, "a") as ([a], _):
        await until(a.elector.is_leader)
        b = LeaderElector(
            await make_api_client(sim.kubeconfig), namespace=NS, name=LEASE, identity="b",
            clock=lambda: now[0], **FAST,
        )  # fmt: skip
        assert not await b._try_acquire_or_renew(1.0)  # observed a's record at now[0]
        assert FAST["retry_period"] <= b._until_next_try() <= 1.2 * FAST["retry_period"]
        now[0] += FAST["lease_duration"] - 0.05  # the record has not changed since: 50 ms to expiry
        assert 0.05 < b._until_next_try() < 0.06
        now[0] += 1.0
        assert b._until_next_try() < 0.01  # expired: look now
        await b._api.close()


@pytest.mark.parametrize(
    ("lease_duration", "renew_deadline", "retry_period"), [(2, 2, 0.5), (4, 2, 2), (4, 2, 0)]
)
def test_rejects_inconsistent_timings(
    lease_duration: float, renew_deadline: float, retry_period: float
) -> None:
    with pytest.raises(ValueError):
        LeaderElector(
            None,  # type: ignore[arg-type]
            namespace=NS, name=LEASE, identity="a", lease_duration=lease_duration,
            renew_deadline=renew_deadline, retry_period=retry_period,
        )  # fmt: skip


async def test_lease_failures_are_said_with_what_to_fix_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    # Missing RBAC: every Lease request is refused.  A broken replica must not look healthy and quiet.
    async with cluster() as sim:
        sim.api.faults.fail(10**6, 403, path=LEASES)
        async with candidates(sim, "ehc-a") as ([a], _):
            await until(lambda: a.elector.errors >= 5, "several refused lease requests")
            assert not a.elector.is_leader() and a.elector.last_success == float("-inf")
            said = [r for r in caplog.records if r.name == "ehc.kube.leader" and "HTTP 403" in r.getMessage()]
            assert len(said) == 1  # one line per 30 s, not one per retry
            assert (
                said[0].levelname == "WARNING"
                and "must grant leases get, create and update" in said[0].getMessage()
            )
            sim.api.faults.clear()
            await until(a.elector.is_leader, "leading once the API lets it")
            assert time.monotonic() - a.elector.last_success < 5
