"""Replicas that help each other: member Leases, the peer endpoint, and the second opinion's rulings.

Membership runs against the simulated API server through the real client; questions go over real
HTTP to real peer servers (ehc's own, and aiohttp servers that misbehave on purpose)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from helpers import until

from ehc.coordinator.decider import Decider
from ehc.coordinator.opinions import ASK_DEADLINE, Ruling, SecondOpinion
from ehc.coordinator.peers import BURST, MAX_BODY, MAX_KEYS, PATH, PeerClient, PeerError, PeerServer
from ehc.kube.client import make_api_client
from ehc.kube.members import ADDRESS_ANNOTATION, MEMBER_LABEL, Membership, member_lease_name
from ehc.probe import FAIL, OK, Done
from ehc.sim import SimCluster
from ehc.sim.faults import LEASES
from ehc.wire.checks import Check, Tcp
from ehc.wire.messages import Health, Opinion, Target, Transition
from ehc.wire.settings import ProbeSettings
from ehc.worker.engine import Engine

NS, GROUP = "default", "ehc-leader"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- membership ----------------------------------------------------------------------------------


@asynccontextmanager
async def members(
    sim: SimCluster, *identities: str
) -> AsyncIterator[dict[str, tuple[Membership, asyncio.Task[None]]]]:
    api = await make_api_client(sim.kubeconfig)
    out: dict[str, tuple[Membership, asyncio.Task[None]]] = {}
    try:
        for i, identity in enumerate(identities):
            m = Membership(
                api, namespace=NS, group=GROUP, identity=identity, address=f"10.0.0.{i + 1}:9091",
                lease_duration=1.0, renew_every=0.1,
            )  # fmt: skip
            out[identity] = (m, asyncio.create_task(m.run()))
        yield out
    finally:
        for _, task in out.values():
            task.cancel()
        await asyncio.gather(*(t for _, t in out.values()), return_exceptions=True)
        await api.close()


@asynccontextmanager
async def api_only() -> AsyncIterator[SimCluster]:
    async with SimCluster(nodes=1, pods_per_node=1, netns=False, listeners=False, kubelet_delay=None) as sim:
        yield sim


async def test_members_find_each_other_and_forget_one_that_stops_renewing() -> None:
    async with api_only() as sim, members(sim, "ehc-a", "ehc-b", "ehc-c") as ms:
        a, b = ms["ehc-a"][0], ms["ehc-b"][0]
        await until(lambda: a.peers() == {"ehc-b": "10.0.0.2:9091", "ehc-c": "10.0.0.3:9091"}, "a sees both")
        lease = sim.api.leases.get(NS, member_lease_name(GROUP, "ehc-b"))
        assert lease is not None
        assert lease["metadata"]["labels"][MEMBER_LABEL] == GROUP
        assert lease["metadata"]["annotations"][ADDRESS_ANNOTATION] == "10.0.0.2:9091"
        assert lease["spec"]["holderIdentity"] == "ehc-b"
        ms["ehc-c"][1].cancel()  # c stops renewing (killed): forgotten after its lease duration
        await until(lambda: "ehc-c" not in a.peers(), "c forgotten")
        assert set(b.peers()) <= {"ehc-a", "ehc-c"} and "ehc-a" in b.peers()
        await b.leave()  # a replica that stops deletes its own lease
        assert sim.api.leases.get(NS, member_lease_name(GROUP, "ehc-b")) is None


async def test_a_member_whose_leases_are_refused_says_what_to_grant(caplog: pytest.LogCaptureFixture) -> None:
    async with api_only() as sim:
        sim.api.faults.fail(10**6, 403, path=LEASES)
        async with members(sim, "ehc-a") as ms:
            a = ms["ehc-a"][0]
            await until(lambda: a.errors >= 3, "refused member lease requests")
            said = [r.getMessage() for r in caplog.records if r.name == "ehc.kube.members"]
            assert len(said) == 1 and "HTTP 403" in said[0] and "list, create, update and delete" in said[0]
            assert a.peers() == {}


async def test_a_member_lease_that_does_not_decode_is_said_and_costs_only_the_peers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with api_only() as sim, members(sim, "ehc-a", "ehc-b") as ms:
        a, task = ms["ehc-a"]
        await until(lambda: "ehc-b" in a.peers(), "a sees b")
        sim.api.leases.create({
            "metadata": {"name": "odd", "namespace": NS, "labels": {MEMBER_LABEL: GROUP}},
            "spec": {"holderIdentity": "odd", "leaseDurationSeconds": "soon"},
        })  # fmt: skip
        await until(lambda: a.errors >= 2, "the list refused as unreadable")
        assert not task.done()  # ehc goes on
        said = [r.getMessage() for r in caplog.records if r.name == "ehc.kube.members"]
        assert any("unreadable answer" in m and "leaseDurationSeconds" in m for m in said)
        await until(
            lambda: a.peers() == {}, "its view of the peers expires: no second opinion, never a false one"
        )
        sim.api.leases.delete(NS, "odd")
        await until(lambda: "ehc-b" in a.peers(), "a sees b again")


def test_member_lease_names_are_valid_object_names() -> None:
    assert member_lease_name("ehc-leader", "Pod_A.1") == "ehc-leader-pod-a.1"
    assert len(member_lease_name("g", "x" * 400)) == 253


# ---- the peer endpoint ---------------------------------------------------------------------------


@asynccontextmanager
async def peer_server(ask: Callable[[list[str], float], Awaitable[dict[str, Opinion]]]) -> AsyncIterator[str]:
    server = PeerServer("peer-1", ask)
    port = free_port()
    await server.start(f"127.0.0.1:{port}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.close()


async def test_the_peer_endpoint_answers_what_it_probes_and_refuses_what_is_out_of_bounds() -> None:
    asked: list[tuple[list[str], float]] = []

    async def ask(keys: list[str], wait: float) -> dict[str, Opinion]:
        asked.append((keys, wait))
        return {k: Opinion.UP for k in keys if k.startswith("mine/")}

    async with peer_server(ask) as address, aiohttp.ClientSession() as http:
        client = PeerClient()
        got = await client.ask(address, ["mine/a", "other/b"], 0.1, 2.0)
        assert got == {"mine/a": Opinion.UP, "other/b": Opinion.UNKNOWN}
        assert asked == [(["mine/a", "other/b"], 0.1)]
        url = f"http://{address}{PATH}"
        for body, status in [
            (b"not json", 400),
            (b'{"keys": ["a"], "wait": 99}', 400),
            (b'{"keys": ["a"], "wait": 0.1, "extra": 1}', 400),
            (b'{"keys": %s, "wait": 0.1}' % str([f"k{i}" for i in range(MAX_KEYS + 1)]).replace("'", '"').encode(), 400),
            (b"x" * (MAX_BODY + 1), 413),
        ]:  # fmt: skip
            async with http.post(url, data=body) as resp:
                assert resp.status == status, body[:40]
        assert len(asked) == 1  # nothing out of bounds reached the workers
        await client.close()


async def test_the_peer_endpoint_throttles_a_flood() -> None:
    async def ask(keys: list[str], wait: float) -> dict[str, Opinion]:
        return {}

    async with peer_server(ask) as address, aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(BURST + 20):
            async with http.post(f"http://{address}{PATH}", data=b'{"keys": [], "wait": 0.1}') as resp:
                statuses.append(resp.status)
        assert statuses[:BURST] == [200] * BURST and 429 in statuses[BURST:]


# ---- the second opinion ---------------------------------------------------------------------------


class Leader:
    """A SecondOpinion wired to a Decider, as the controller wires them, with peers given by address."""

    def __init__(self, peers: dict[str, str], leading: bool = True) -> None:
        self.peers = peers
        self.leading = leading
        self.verdicts: list[tuple[str, Health]] = []
        self.vetoed: list[tuple[str, str, list[str], bool]] = []
        self.opinions = SecondOpinion(
            peers=lambda: self.peers, leading=lambda: self.leading, node_of=lambda key: "node-1",
            on_settled=self.reconsider,
            on_veto=lambda *a: self.vetoed.append(a),
        )  # fmt: skip
        self.decider = Decider(
            on_verdict=lambda key, v, tr: self.verdicts.append((key, v)),
            failsafe_min_targets=1000,
            may_eject=lambda key: self.opinions.ruling(key) == Ruling.GO,
        )
        for key in ("ns/a", "ns/b"):
            self.decider.track(key)

    def reconsider(self, keys: list[str]) -> None:
        self.decider.reconsider(keys)

    def fail(self, key: str) -> None:
        self.decider.report(0, [Transition(key, Health.UNHEALTHY, Tcp(80), "timeout", 0.2, 3, 0.0)])

    def last(self, key: str) -> Health | None:
        return next((v for k, v in reversed(self.verdicts) if k == key), None)


def answering(
    opinion: Opinion, delay: float = 0.0
) -> Callable[[list[str], float], Awaitable[dict[str, Opinion]]]:
    async def ask(keys: list[str], wait: float) -> dict[str, Opinion]:
        await asyncio.sleep(delay)
        return dict.fromkeys(keys, opinion)

    return ask


async def test_a_peer_that_sees_the_target_alive_vetoes_its_ejection_once_per_partition() -> None:
    async with peer_server(answering(Opinion.UP)) as address:
        leader = Leader({"peer-1": address})
        leader.opinions.doubt(["ns/a", "ns/b"])  # asked while the leader's confirmations run
        await asyncio.sleep(0.2)
        leader.fail("ns/a")
        leader.fail("ns/b")
        assert leader.last("ns/a") == leader.last("ns/b") == Health.UNKNOWN  # not ejected
        assert leader.opinions.vetoes == 2 and leader.opinions.partitions == 1
        assert [(k, first) for k, _, _, first in leader.vetoed] == [("ns/a", True), ("ns/b", False)]
        leader.decider.reconsider(["ns/a"])  # ruled again: still vetoed, not counted again
        assert leader.opinions.vetoes == 2 and leader.last("ns/a") == Health.UNKNOWN
        await leader.opinions.close()


async def test_a_veto_lasts_only_while_a_peer_sees_the_target_alive() -> None:
    seen = {"opinion": Opinion.UP}

    async def ask(keys: list[str], wait: float) -> dict[str, Opinion]:
        return dict.fromkeys(keys, seen["opinion"])

    async with peer_server(ask) as address:
        leader = Leader({"peer-1": address})
        reask = asyncio.create_task(leader.opinions.reask())
        leader.fail("ns/a")  # never doubted: asked now, held meanwhile
        assert leader.last("ns/a") == Health.UNKNOWN
        await until(lambda: leader.opinions.vetoes == 1, "vetoed")
        seen["opinion"] = Opinion.SILENT  # the node really died: the peer no longer hears it
        await until(lambda: leader.last("ns/a") == Health.UNHEALTHY, "ejected once no peer sees it alive")
        assert leader.opinions.partitions == 0
        reask.cancel()
        await leader.opinions.close()


@pytest.mark.parametrize("peer", ["silent", "down", "refusing connections", "slow", "garbage", "500"])
async def test_a_peer_that_does_not_contradict_never_blocks_an_ejection(peer: str) -> None:
    async def garbage(request: web.Request) -> web.Response:
        return web.Response(
            text="{<html>" if peer == "garbage" else "oops", status=200 if peer == "garbage" else 500
        )

    app = web.Application()
    app.add_routes([web.post(PATH, garbage)])
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        if peer in ("silent", "down", "slow"):
            opinion = {"silent": Opinion.SILENT, "down": Opinion.DOWN, "slow": Opinion.UP}[peer]
            ctx = peer_server(answering(opinion, delay=5.0 if peer == "slow" else 0.0))
        else:
            ctx = None
        if ctx is not None:
            async with ctx as address:
                await _ejected_despite(address, within=ASK_DEADLINE + 1.0)
        elif peer == "refusing connections":
            await _ejected_despite(f"127.0.0.1:{free_port()}", within=ASK_DEADLINE + 1.0)
        else:
            await _ejected_despite(f"127.0.0.1:{port}", within=ASK_DEADLINE + 1.0)
    finally:
        await runner.cleanup()


async def _ejected_despite(address: str, within: float) -> None:
    leader = Leader({"peer-1": address})
    leader.opinions.doubt(["ns/a"])
    leader.fail("ns/a")
    await until(lambda: leader.last("ns/a") == Health.UNHEALTHY, "ejected", limit=within)
    assert leader.opinions.vetoes == 0
    await leader.opinions.close()


async def test_without_peers_an_ejection_goes_at_once_and_a_standby_holds_its_own() -> None:
    leader = Leader({})
    leader.fail("ns/a")
    assert leader.last("ns/a") == Health.UNHEALTHY
    standby = Leader({"peer-1": "127.0.0.1:1"}, leading=False)
    standby.fail("ns/a")
    assert standby.last("ns/a") == Health.UNKNOWN  # held until it leads, and asked about then
    standby.leading, standby.peers = True, {}
    standby.decider.reconsider(standby.decider.unhealthy)
    assert standby.last("ns/a") == Health.UNHEALTHY
    await leader.opinions.close()
    await standby.opinions.close()


async def test_a_new_leader_asks_about_everything_it_held_in_one_question_per_peer() -> None:
    asked: list[list[str]] = []

    async def ask(keys: list[str], wait: float) -> dict[str, Opinion]:
        asked.append(keys)
        return dict.fromkeys(keys, Opinion.SILENT)

    async with peer_server(ask) as address:
        standby = Leader({"peer-1": address}, leading=False)
        standby.fail("ns/a")
        standby.fail("ns/b")
        standby.leading = True
        standby.decider.reconsider(standby.decider.unhealthy)
        await until(lambda: standby.last("ns/a") == standby.last("ns/b") == Health.UNHEALTHY, "ejected")
        assert [sorted(keys) for keys in asked] == [["ns/a", "ns/b"]]
        await standby.opinions.close()


async def test_the_client_names_what_a_peer_did_wrong() -> None:
    client = PeerClient()
    with pytest.raises(PeerError, match=r"ClientConnectorError|ConnectionRefused"):
        await client.ask(f"127.0.0.1:{free_port()}", ["a"], 0.1, 1.0)
    await client.close()


# ---- the engine answers questions from fresh attempts only ----------------------------------------


class HeldProber:
    """Stands in for the TCP prober: every attempt waits until the test answers it."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Done]] = []
        self.in_flight = 0
        self.timeout = 1.0

    def open(self) -> str:
        return ""

    def start(self, ip: str, family: int, check: Check, done: Done) -> None:
        self.pending.append((asyncio.get_running_loop().time(), done))

    def answer(self, i: int, outcome: int, detail: str = "") -> None:
        started, done = self.pending[i]
        done(outcome, asyncio.get_running_loop().time() - started, detail)

    def close(self) -> None:
        pass


async def test_the_engine_answers_from_attempts_started_after_the_question() -> None:
    loop = asyncio.get_running_loop()
    prober = HeldProber()
    doubts: list[str] = []
    engine = Engine(
        loop, ProbeSettings(interval=60, timeout=1.0, retry_count=1), lambda tr: None,
        on_doubt=doubts.append, probers={"tcp": prober},  # type: ignore[dict-item]
    )  # fmt: skip
    engine.start()
    engine.upsert(Target("ns/a", "127.0.0.1", (Tcp(80),), Health.HEALTHY), immediate=True)
    await until(lambda: len(prober.pending) == 1, "the first attempt out")
    await asyncio.sleep(0.01)
    answers: list[dict[str, Opinion]] = []
    engine.ask(["ns/a", "ns/elsewhere"], 5.0, answers.append)
    assert len(prober.pending) == 2  # probed at once
    prober.answer(0, OK)  # started before the question: says nothing about now
    await asyncio.sleep(0.01)
    assert answers == []
    prober.answer(1, FAIL, "connrefused")
    assert answers == [{"ns/a": Opinion.DOWN, "ns/elsewhere": Opinion.UNKNOWN}]
    assert doubts == ["ns/a"]  # its own failure opened an episode: the leader would ask about it
    silent: list[dict[str, Opinion]] = []
    engine.ask(["ns/a"], 0.05, silent.append)
    await until(lambda: bool(silent), "the wait over")
    assert silent == [{"ns/a": Opinion.SILENT}]
    engine.close()
