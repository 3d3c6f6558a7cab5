"""Selectorless Services end to end, in process: the real controller with ``EHC_SELECTORLESS``, real
worker processes probing real listeners on loopback addresses, the real kubernetes_asyncio client
over HTTP, against the simulated API server's EndpointSlices and Endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import pytest
from helpers import has_ipv6_loopback, until
from kubernetes_asyncio.client import ApiClient

from ehc.coordinator.controller import Controller
from ehc.coordinator.settings import load
from ehc.kube.client import make_api_client
from ehc.kube.model import EndpointSlice
from ehc.sim.apiserver import ApiServer
from ehc.sim.store import Collection
from ehc.sources.endpoints.kinds import SLICES
from ehc.sources.endpoints.writes import ReadinessPatch

NS = "data"
OPTED = {"endpoint-health-checker.io/enabled": "true", "kubernetes.io/service-name": "db"}
ENV = {
    "POD_NAME": "ehc-selectorless", "POD_NAMESPACE": "default", "EHC_METRICS_ADDRESS": "",
    "EHC_SELECTORLESS": "true", "HEALTH_CHECK_INTERVAL": "200ms", "HEALTH_CHECK_TIMEOUT": "100ms",
    "HEALTH_CHECK_RETRY_COUNT": "1", "EHC_CONFIRM_SPACING": "20ms", "EHC_FAILSAFE_MIN_TARGETS": "1000",
    "LEASE_DURATION": "2s", "RENEW_DEADLINE": "1s", "RETRY_PERIOD": "250ms",
}  # fmt: skip


class Backends:
    """TCP listeners on loopback addresses, one shared port: what a selectorless Service publishes."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.servers: dict[str, asyncio.Server] = {}

    async def up(self, *ips: str) -> None:
        for ip in ips:
            self.servers[ip] = await asyncio.start_server(lambda r, w: w.close(), ip, self.port)

    def down(self, *ips: str) -> None:
        for ip in ips:
            self.servers.pop(ip).close()

    def close(self) -> None:
        self.down(*list(self.servers))


class Harness:
    def __init__(self, api: ApiServer, client: ApiClient, controller: Controller, backends: Backends) -> None:
        self.api, self.client, self.controller, self.backends = api, client, controller, backends

    @property
    def slices(self) -> Collection:
        return self.api.endpointslices

    def create_slice(self, name: str, ips: list[str], *, family: str = "IPv4", **labels: str) -> None:
        self.slices.create({
            "metadata": {"name": name, "namespace": NS, "labels": OPTED | labels},
            "addressType": family,
            "endpoints": [endpoint(ip) for ip in ips],
            "ports": [{"name": "db", "port": self.backends.port, "protocol": "TCP"}],
        })  # fmt: skip

    def slice_conditions(self, name: str) -> list[tuple[str, dict[str, Any]]]:
        obj = self.slices.get(NS, name)
        assert obj is not None
        return [(e["addresses"][0], e.get("conditions", {})) for e in obj.get("endpoints") or []]

    def not_ready(self, name: str) -> set[str]:
        return {ip for ip, c in self.slice_conditions(name) if c.get("ready") is False}

    def patches(self, resource: str, name: str, *, ok: bool | None = True) -> int:
        return len(
            self.api.write_log.select(resource=resource, name=name, verb="PATCH", actor="client", ok=ok)
        )

    def targets(self) -> set[str]:
        return {key for source in self.controller.sources[1:] for key in source._by_target}  # type: ignore[attr-defined]


def endpoint(ip: str, node: str = "vm-1") -> dict[str, Any]:
    return {"addresses": [ip], "conditions": {"ready": True, "serving": True}, "nodeName": node,
            "targetRef": {"kind": "VirtualMachine", "name": f"vm-{ip}"}}  # fmt: skip


@contextlib.asynccontextmanager
async def running(
    tmp_path: Any, prepare: Callable[[ApiServer, Backends], Awaitable[None]] | None = None
) -> AsyncIterator[Harness]:
    """The simulated API server and ehc's controller in process; ``prepare`` runs before it starts."""
    api = ApiServer(token=None, bookmark_interval=0.5)
    await api.start()
    client = await make_api_client(api.write_kubeconfig(str(tmp_path / "kubeconfig")))
    controller = Controller(load(None, env=ENV), client)
    backends = Backends()
    task: asyncio.Task[None] | None = None
    try:
        if prepare is not None:
            await prepare(api, backends)
        task = asyncio.create_task(controller.run())
        yield Harness(api, client, controller, backends)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        backends.close()
        await client.close()
        await api.stop()


@pytest.fixture
async def harness(tmp_path: Any) -> AsyncIterator[Harness]:
    async with running(tmp_path) as h:
        yield h


async def test_a_dead_address_goes_out_of_its_slice_alone_and_comes_back(harness: Harness) -> None:
    ips = ["127.0.3.1", "127.0.3.2", "127.0.3.3"]
    await harness.backends.up(*ips)
    harness.create_slice("db-a", ips)
    await until(lambda: len(harness.targets()) == 3, "the slice's addresses are targets")
    before = harness.slices.get(NS, "db-a")
    harness.backends.down("127.0.3.2")
    await until(lambda: harness.not_ready("db-a") == {"127.0.3.2"}, "the dead address out of the slice")
    after = harness.slice_conditions("db-a")
    assert after[1] == ("127.0.3.2", {"ready": False, "serving": False})
    assert [after[0], after[2]] == [
        ("127.0.3.1", {"ready": True, "serving": True}),
        ("127.0.3.3", {"ready": True, "serving": True}),
    ]
    assert harness.patches("endpointslices", "db-a") == 1
    obj = harness.slices.get(NS, "db-a")
    assert obj is not None and before is not None
    assert [e["targetRef"] for e in obj["endpoints"]] == [e["targetRef"] for e in before["endpoints"]]

    def said() -> bool:  # Events are sent after the write lands, on their own queue
        return any(
            e["reason"] == "EndpointUnhealthy" and e["involvedObject"]["kind"] == "EndpointSlice"
            and e["involvedObject"]["name"] == "db-a" and "127.0.3.2" in e["message"]
            for e, _ in harness.api.events.objects.values()
        )  # fmt: skip

    await until(said, "an Event on the slice naming the address")

    await harness.backends.up("127.0.3.2")
    await until(lambda: not harness.not_ready("db-a"), "the address back in the slice")
    assert harness.slice_conditions("db-a")[1] == ("127.0.3.2", {"ready": True, "serving": True})
    assert harness.patches("endpointslices", "db-a") == 2


async def test_addresses_failing_while_a_write_is_in_flight_go_out_together(harness: Harness) -> None:
    ips = [f"127.0.4.{i}" for i in range(1, 7)]
    await harness.backends.up(*ips)
    harness.create_slice("db-b", ips)
    await until(lambda: len(harness.targets()) == 6, "the slice's addresses are targets")
    held = harness.api.faults.delay(2.0, count=1, verb="PATCH", path="/endpointslices/db-b$")
    harness.backends.down(ips[0])
    await until(lambda: held.remaining == 0, "the first verdict's write held up by the slow API server")
    harness.backends.down(*ips[1:4])
    await until(lambda: harness.not_ready("db-b") == set(ips[:4]), "four dead addresses out of the slice")
    # The three verdicts after the held write waited behind it as one write for the object, planned
    # when sent.
    assert harness.patches("endpointslices", "db-b") == 2


async def test_an_owner_edit_racing_ehc_write_survives_and_removed_addresses_stay_removed(
    harness: Harness,
) -> None:
    await harness.backends.up("127.0.5.1", "127.0.5.3", "127.0.5.4")
    harness.create_slice("db-c", ["127.0.5.1", "127.0.5.2", "127.0.5.3"])
    await until(lambda: len(harness.targets()) == 3, "the slice's addresses are targets")
    path = "/endpointslices/db-c$"
    harness.api.faults.delay(1.0, count=1, verb="PATCH", path=path)
    arrived = harness.patches("endpointslices", "db-c", ok=None)
    # 127.0.5.2 never listened: it goes out.  While ehc's write is on its way, the owner drops
    # 127.0.5.3 and adds 127.0.5.4.
    await until(lambda: harness.patches("endpointslices", "db-c", ok=None) > arrived, "ehc's write arriving")
    obj = harness.slices.get(NS, "db-c")
    assert obj is not None
    owner = msgspec.json.decode(msgspec.json.encode(obj))
    owner["endpoints"] = [e for e in owner["endpoints"] if e["addresses"] != ["127.0.5.3"]] + [
        endpoint("127.0.5.4")
    ]
    harness.slices.update(NS, "db-c", owner, actor="owner")
    await until(lambda: harness.not_ready("db-c") == {"127.0.5.2"}, "the dead address out")
    assert [ip for ip, _ in harness.slice_conditions("db-c")] == ["127.0.5.1", "127.0.5.2", "127.0.5.4"]
    statuses = [
        e.status for e in harness.api.write_log.select(resource="endpointslices", name="db-c", verb="PATCH")
    ]
    assert statuses[-2:] == [422, 200]  # refused on the stale version, planned again, landed
    assert harness.controller.resync_writes == 0  # by the same write, not a later resync


async def test_a_write_plans_on_the_freshest_version_and_again_after_a_conflict(harness: Harness) -> None:
    """The write against the API server alone (the slice is not opted in, so the controller leaves it be)."""
    harness.slices.create({
        "metadata": {"name": "db-d", "namespace": NS},
        "addressType": "IPv4",
        "endpoints": [endpoint(f"127.0.6.{i}") for i in (1, 2, 3)],
    })  # fmt: skip
    obj = msgspec.convert(harness.slices.get(NS, "db-d"), EndpointSlice)
    seen: list[EndpointSlice] = [obj]

    async def write(want: dict[str, bool], base: EndpointSlice | None = None) -> list[str]:
        w = ReadinessPatch(SLICES, NS, "db-d", obj.metadata.uid, want, lambda: base or seen[-1], seen.append)
        await w.send(harness.client, 5.0)
        return w.changed

    def statuses() -> list[int]:
        return [e.status for e in harness.api.write_log.select(resource="endpointslices", name="db-d")]

    # Two writes in a row: the second starts from the answer to the first (the watch may not show it
    # yet), so one request each, no failed test and no read.
    assert await write({"127.0.6.1": False}) == ["127.0.6.1"]
    assert await write({"127.0.6.2": False}) == ["127.0.6.2"]
    assert statuses() == [200, 200] and harness.api.count_requests("GET", "endpointslices", named=True) == 0
    # The owner drops 127.0.6.1 and adds 127.0.6.4; a write planned on an older version fails its test,
    # reads the object again and plans on what it now holds.
    raw = harness.slices.get(NS, "db-d")
    assert raw is not None
    raw = {**raw, "endpoints": [*raw["endpoints"][1:], endpoint("127.0.6.4")]}
    harness.slices.update(NS, "db-d", raw, actor="owner")
    assert await write({"127.0.6.1": True, "127.0.6.3": False}, base=obj) == ["127.0.6.3"]
    assert statuses() == [200, 200, 422, 200]
    assert harness.api.count_requests("GET", "endpointslices", named=True) == 1
    assert [(e["addresses"][0], e["conditions"]["ready"]) for e in harness.slices.get(NS, "db-d")["endpoints"]] == [
        ("127.0.6.2", False), ("127.0.6.3", False), ("127.0.6.4", True)
    ]  # fmt: skip
    # Nothing left to change: no request at all.
    assert await write({"127.0.6.3": False}) == [] and statuses() == [200, 200, 422, 200]


async def test_controller_managed_and_fqdn_slices_are_refused_with_an_event(harness: Harness) -> None:
    await harness.backends.up("127.0.7.1")
    harness.create_slice(
        "web-abcde",
        ["127.0.7.1"],
        **{"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
    )
    harness.create_slice("db-fqdn", ["db.example.com"], family="FQDN")
    harness.create_slice("db-ok", ["127.0.7.1"])

    def events() -> dict[str, str]:
        return {
            e["involvedObject"]["name"]: e["message"]
            for e, _ in harness.api.events.objects.values()
            if e["reason"] == "EndpointCheckMisconfigured"
        }

    await until(lambda: {"web-abcde", "db-fqdn"} <= events().keys(), "the refusals said on the objects")
    assert "EndpointSlice controller" in events()["web-abcde"] and "FQDN" in events()["db-fqdn"]
    await until(lambda: len(harness.targets()) == 1, "the one slice ehc may write is checked")
    assert harness.targets() == {"EndpointSlice/data/db-ok/127.0.7.1"}


async def test_legacy_endpoints_move_addresses_keeping_what_they_carry(harness: Harness) -> None:
    ips = ["127.0.8.1", "127.0.8.2"]
    await harness.backends.up(*ips)
    addresses = [{"ip": ip, "nodeName": "vm-1", "hostname": f"db-{i}", "targetRef": {"kind": "VirtualMachine", "name": f"vm-{i}"}}
                 for i, ip in enumerate(ips)]  # fmt: skip
    harness.api.endpoints.create({
        "metadata": {"name": "legacy", "namespace": NS, "labels": {"endpoint-health-checker.io/enabled": "true"}},
        "subsets": [{"addresses": addresses, "ports": [{"port": harness.backends.port}]}],
    })  # fmt: skip

    def subset() -> dict[str, Any]:
        obj = harness.api.endpoints.get(NS, "legacy")
        assert obj is not None
        return obj["subsets"][0]

    await until(lambda: len(harness.targets()) == 2, "the addresses are targets")
    harness.backends.down("127.0.8.2")
    await until(lambda: subset().get("notReadyAddresses") == [addresses[1]], "the dead address not ready")
    assert subset()["addresses"] == [addresses[0]]
    await harness.backends.up("127.0.8.2")
    await until(lambda: not subset().get("notReadyAddresses"), "the address ready again")
    assert subset()["addresses"] == addresses[:1] + addresses[1:]
    assert harness.patches("endpoints", "legacy") == 2


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here")
async def test_ipv6_slices_and_an_address_listed_twice(harness: Harness) -> None:
    await harness.backends.up("::1")
    harness.slices.create({
        "metadata": {"name": "db-v6", "namespace": NS, "labels": OPTED},
        "addressType": "IPv6",
        "endpoints": [endpoint("::1"), endpoint("0:0:0:0:0:0:0:1")],  # one address, two spellings
        "ports": [{"port": harness.backends.port}],
    })  # fmt: skip
    await until(lambda: len(harness.targets()) == 1, "one target for the address")
    harness.backends.down("::1")
    await until(lambda: len(harness.not_ready("db-v6")) == 2, "both entries out")
    assert harness.patches("endpointslices", "db-v6") == 1


async def test_an_empty_slice_is_harmless_and_checked_once_it_has_endpoints(harness: Harness) -> None:
    harness.slices.create(
        {"metadata": {"name": "db-e", "namespace": NS, "labels": OPTED}, "addressType": "IPv4"}
    )
    await harness.backends.up("127.0.9.1")
    harness.create_slice("db-f", ["127.0.9.1"])
    await until(lambda: len(harness.targets()) == 1, "the other slice checked")
    obj = harness.slices.get(NS, "db-e")
    assert obj is not None
    harness.slices.update(NS, "db-e", {**obj, "endpoints": [endpoint("127.0.9.2")],
                                        "ports": [{"port": harness.backends.port}]})  # fmt: skip
    await until(lambda: harness.not_ready("db-e") == {"127.0.9.2"}, "the new, dead address out")


async def test_a_slice_deleted_while_its_write_is_queued_is_not_written(harness: Harness) -> None:
    await harness.backends.up("127.0.10.1")
    harness.create_slice("db-g", ["127.0.10.1", "127.0.10.2"])
    await until(lambda: len(harness.targets()) == 2, "the slice's addresses are targets")
    harness.api.faults.fail(1000, 503, verb="PATCH", path="/endpointslices/db-g$")  # retried while wanted
    await until(lambda: harness.patches("endpointslices", "db-g", ok=None) >= 2, "the write retried")
    harness.slices.delete(NS, "db-g")
    await until(lambda: not harness.targets(), "the targets gone with the slice")
    tried = harness.patches("endpointslices", "db-g", ok=None)
    await asyncio.sleep(1.0)  # the write queue's backoff is at most a second: it would have tried again
    assert harness.patches("endpointslices", "db-g", ok=None) == tried
    assert harness.slices.get(NS, "db-g") is None and harness.controller.writes.queue_depth == 0


async def test_a_forbidden_watch_says_what_to_fix_and_keeps_readyz_false_but_the_rest_is_protected(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """No RBAC for EndpointSlices (403): ehc still leads and protects what it can watch (here a legacy
    Endpoints object), says what to grant, and is not ready, so the fault shows."""

    async def prepare(api: ApiServer, backends: Backends) -> None:
        api.faults.fail(10_000, 403, verb="GET", path="/endpointslices")
        await backends.up("127.0.11.1")
        api.endpoints.create({
            "metadata": {"name": "legacy", "namespace": NS, "labels": {"endpoint-health-checker.io/enabled": "true"}},
            "subsets": [{"addresses": [{"ip": "127.0.11.1"}], "ports": [{"port": backends.port}]}],
        })  # fmt: skip

    async with running(tmp_path, prepare) as h:
        await until(h.controller.elector.is_leader, "leading without the slices")
        h.backends.down("127.0.11.1")

        def not_ready() -> bool:
            obj = h.api.endpoints.get(NS, "legacy")
            return obj is not None and bool(obj["subsets"][0].get("notReadyAddresses"))

        await until(not_ready, "the dead address taken out all the same")
        assert not h.controller.ready
        assert {w.resource.plural: w.synced for w in h.controller.watchers} == {
            "pods": True, "endpointslices": False, "endpoints": True,
        }  # fmt: skip
        assert any("may not list endpointslices: grant it" in r.getMessage() for r in caplog.records)
