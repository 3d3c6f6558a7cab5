"""Node evidence in the engine: a node's targets judged together, with scripted answers per address.

The per-target chain is made long (retry count 30) so that a flip within these tests can only come
from the node verdict, and node_evidence short (6) so it comes quickly."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from helpers import until
from msgspec.structs import replace

from ehc.probe import FAIL, OK, Done
from ehc.wire.checks import Check, Tcp
from ehc.wire.messages import Health, NodeVerdict, Target, Transition
from ehc.wire.settings import ProbeSettings
from ehc.worker.engine import LOOK_GRACE, WITNESS_MISSES, Engine

SETTINGS = ProbeSettings(
    interval=0.2, timeout=0.1, retry_count=30, recovery_threshold=2, confirm_spacing=0.005, node_evidence=6
)
SHORT_CHAIN = replace(SETTINGS, retry_count=3)
"""A pod alone flips after 4 failures: for tests where per-target judgement must still happen."""


class Network:
    """Stands in for the TCP prober: each address answers as its behaviour says, silence after the
    timeout as a powered-off host would, anything else at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.timeout = timeout
        self.behaviour: dict[str, Callable[[], str]] = {}
        self.calls: list[tuple[float, str]] = []
        self.in_flight = 0

    def open(self) -> str:
        return ""

    def start(self, ip: str, family: int, check: Check, done: Done) -> None:
        self.calls.append((self._loop.time(), ip))
        answer = self.behaviour.get(ip, lambda: "ok")()
        if answer == "ok":
            self._loop.call_soon(done, OK, 0.001, "")
        elif answer == "silent":
            self._loop.call_later(self.timeout, done, FAIL, self.timeout, "timeout")
        else:  # an answer that is a failure: "connrefused", "timeout waiting for the response", ...
            delay = self.timeout if answer.startswith("timeout") else 0.001
            self._loop.call_later(delay, done, FAIL, delay, answer)

    def close(self) -> None:
        pass


class Run:
    def __init__(self, settings: ProbeSettings = SETTINGS) -> None:
        loop = asyncio.get_running_loop()
        self.net = Network(loop, settings.timeout)
        self.witness_net = Network(loop, 2 * settings.heartbeat)
        self.witness_net.behaviour = self.net.behaviour  # one network: the node's address answers as set
        self.transitions: list[Transition] = []
        self.nodes: list[NodeVerdict] = []
        probers = {"tcp": self.net, "witness-tcp": self.witness_net}
        self.engine = Engine(
            loop, settings, self.transitions.append, on_node=self.nodes.append, probers=probers
        )  # type: ignore[arg-type]
        self.engine.start()

    def add(self, node: str, *ips: str) -> list[str]:
        for ip in ips:
            self.engine.upsert(Target(f"pod-{ip}", ip, (Tcp(80),), Health.HEALTHY, node=node))
        return [f"pod-{ip}" for ip in ips]

    def set(self, answer: str | Callable[[], str], *ips: str) -> None:
        for ip in ips:
            self.net.behaviour[ip] = answer if callable(answer) else (lambda a=answer: a)

    def down(self) -> dict[str, Transition]:
        return {tr.key: tr for tr in self.transitions if tr.health == Health.UNHEALTHY}


def ips(node: int, n: int) -> list[str]:
    return [f"127.1.{node}.{i}" for i in range(1, n + 1)]


async def test_a_silent_node_is_judged_down_as_a_whole_and_the_others_are_left_alone() -> None:
    run = Run()
    dead = run.add("n1", *ips(1, 8))
    live = run.add("n2", *ips(2, 4))
    await asyncio.sleep(0.3)  # every target answered at least once
    run.set("silent", *ips(1, 8))
    await until(lambda: len(run.down()) == 8, "the silent node's targets out")
    await asyncio.sleep(0.3)
    down = run.down()
    assert set(down) == set(dead) and not set(down) & set(live)
    assert {tr.node for tr in down.values()} == {"n1"}  # the node's verdict, not eight chains of 31
    assert [(v.node, v.targets) for v in run.nodes] == [("n1", 8)]
    assert run.nodes[0].attempts >= SETTINGS.node_evidence
    assert run.nodes[0].silent_for >= SETTINGS.timeout + LOOK_GRACE
    assert "node n1 silent" in next(iter(down.values())).detail
    run.engine.close()


async def test_the_first_silence_looks_at_every_other_target_of_the_node_at_once() -> None:
    run = Run(
        ProbeSettings(interval=2.0, timeout=0.1, retry_count=30, confirm_spacing=0.005, node_evidence=50)
    )
    run.add("n1", *ips(1, 6))
    await until(lambda: len(run.net.calls) >= 6, "every target probed once")
    await asyncio.sleep(0.1)
    run.set("silent", *ips(1, 6))
    first = run.net.calls[-1][0]
    # The next regular probe of one target fails after the timeout; at that moment the other five
    # are probed, long before their own turn in the 2 s interval.
    await until(lambda: run.engine.looks == 1, "a look")
    looked = {ip for t, ip in run.net.calls if t > first}
    assert looked == set(ips(1, 6))
    assert run.engine.suspects == 6  # all of the node is in doubt at once, for the fail-safe
    run.engine.close()


async def test_the_census_shows_each_node_its_targets_in_doubt_and_then_its_verdict() -> None:
    # What the status page asks a worker: per node, how its targets stand; and which are in doubt.
    run = Run(
        ProbeSettings(interval=2.0, timeout=0.1, retry_count=30, confirm_spacing=0.005, node_evidence=6)
    )
    dead = run.add("n1", *ips(1, 6))
    run.add("n2", *ips(2, 3))
    run.engine.upsert(Target("no-node", "127.1.9.1", (Tcp(80),), Health.UNKNOWN))
    await until(lambda: len(run.net.calls) >= 10, "every target probed once")
    await asyncio.sleep(0.05)
    census, suspects = run.engine.inspect(100)
    by_node = {c.node: c for c in census}
    assert set(by_node) == {"n1", "n2", ""}  # targets without a node are counted under ""
    assert (by_node["n1"].targets, by_node["n1"].suspect, by_node["n1"].looking) == (6, 0, False)
    assert 0 <= by_node["n1"].heard_ago < 1.0 and by_node[""].heard_ago == -1.0 and suspects == []

    run.set("silent", *ips(1, 6))
    await until(lambda: run.engine.looks == 1, "the node in doubt")
    census, suspects = run.engine.inspect(100)
    n1 = next(c for c in census if c.node == "n1")
    assert n1.looking and n1.suspect == 6 and n1.unhealthy == 0 and sorted(suspects) == sorted(dead)
    assert len(run.engine.inspect(2)[1]) == 2  # the list is bounded; the counts are not
    assert next(c for c in census if c.node == "n2").suspect == 0

    await until(lambda: run.nodes, "the node's verdict")
    census, suspects = run.engine.inspect(100)
    n1 = next(c for c in census if c.node == "n1")
    assert (n1.unhealthy, n1.suspect, n1.looking) == (6, 0, False) and suspects == []
    run.engine.close()


async def test_one_silent_target_on_a_live_node_stays_its_own_business() -> None:
    run = Run(SHORT_CHAIN)
    keys = run.add("n1", *ips(1, 8))
    await asyncio.sleep(0.3)
    run.set("silent", ips(1, 8)[0])
    await until(lambda: keys[0] in run.down(), "the silent target out")
    await asyncio.sleep(0.5)
    assert list(run.down()) == [keys[0]]
    assert run.down()[keys[0]].node == "" and run.nodes == []
    run.engine.close()


async def test_half_a_node_refusing_ejects_exactly_those_refusals_are_answers() -> None:
    run = Run(replace(SHORT_CHAIN, node_evidence=2))
    keys = run.add("n1", *ips(1, 8))
    await asyncio.sleep(0.3)
    run.set("connrefused", *ips(1, 8)[:4])
    await until(lambda: len(run.down()) == 4, "the refusing half out")
    await asyncio.sleep(0.5)
    assert set(run.down()) == set(keys[:4]) and run.nodes == []
    run.engine.close()


async def test_a_response_timeout_is_an_answer_of_the_node() -> None:
    # Connected, then the application stalls: the node's kernel answered; only per-target judgement.
    run = Run(replace(SHORT_CHAIN, node_evidence=2))
    run.add("n1", *ips(1, 4))
    await asyncio.sleep(0.3)
    run.set("timeout waiting for the response", *ips(1, 4))
    await until(lambda: len(run.down()) == 4, "the stalled targets out, one by one")
    assert run.nodes == [] and {tr.node for tr in run.down().values()} == {""}
    run.engine.close()


async def test_random_loss_on_a_node_judges_nothing() -> None:
    # 20 % of attempts lost at random on every target of the node: silences come one at a time and
    # the others' answers explain them.  A verdict would need 6 losses in a row with nothing between.
    rng = random.Random(7)
    run = Run(
        ProbeSettings(interval=0.1, timeout=0.05, retry_count=30, confirm_spacing=0.005, node_evidence=6)
    )
    run.add("n1", *ips(1, 12))
    run.set(lambda: "silent" if rng.random() < 0.2 else "ok", *ips(1, 12))
    await until(lambda: run.engine.failures["tcp"] >= 100, "plenty of lost attempts")
    assert run.transitions == [tr for tr in run.transitions if tr.health == Health.HEALTHY]
    assert run.nodes == []
    run.engine.close()


async def test_without_node_evidence_every_target_is_judged_alone() -> None:
    run = Run(replace(SHORT_CHAIN, node_evidence=0))
    run.add("n1", *ips(1, 5))
    await asyncio.sleep(0.3)
    run.set("silent", *ips(1, 5))
    await until(lambda: len(run.down()) == 5, "every target out on its own chain")
    assert run.nodes == [] and run.engine.looks == 0
    assert {(tr.node, tr.attempts) for tr in run.down().values()} == {("", 4)}
    run.engine.close()


async def test_a_target_that_recovers_closes_the_node_episode() -> None:
    # The node goes quiet, then one target answers before the evidence is complete: no verdict.
    run = Run(
        ProbeSettings(interval=0.2, timeout=0.1, retry_count=30, confirm_spacing=0.005, node_evidence=40)
    )
    run.add("n1", *ips(1, 6))
    await asyncio.sleep(0.3)
    run.set("silent", *ips(1, 6))
    await until(lambda: run.engine.looks == 1, "the node in doubt")
    run.set("ok", ips(1, 6)[0])
    await until(lambda: run.engine.suspects < 6, "the answer ends the node's episode")
    await asyncio.sleep(0.5)
    assert run.nodes == []
    run.engine.close()


WITNESSED = ProbeSettings(
    interval=2.0, timeout=0.1, retry_count=3, confirm_spacing=0.005, node_evidence=6,
    witness=Tcp(10250), heartbeat=0.02,
)  # fmt: skip


async def test_a_node_whose_witness_answers_is_alive_and_its_silent_pods_are_judged_alone() -> None:
    run = Run(WITNESSED)
    keys = run.add("n1", *ips(1, 6))
    run.engine.witness("n1", "127.1.1.250")
    await until(lambda: len(run.net.calls) >= 6, "every target probed once")
    await until(lambda: run.engine.witnesses == (1, 0), "the witness heard")
    run.set("silent", *ips(1, 6))  # every pod silent, the node itself answering: not a dead node
    await until(lambda: len(run.down()) == 6, "the silent pods out, one by one", limit=60)
    assert run.nodes == [] and {tr.node for tr in run.down().values()} == {""}
    assert set(run.down()) == set(keys)
    run.engine.close()


async def test_a_silent_witness_looks_at_its_node_before_any_pod_probe_fails() -> None:
    run = Run(WITNESSED)
    run.add("n1", *ips(1, 6))
    run.engine.witness("n1", "127.1.1.250")
    await until(lambda: len(run.net.calls) >= 6 and run.engine.witnesses == (1, 0), "probed, witness heard")
    calls = len(run.net.calls)
    run.set("silent", *ips(1, 6), "127.1.1.250")  # the power goes
    # WITNESS_MISSES heartbeats later every pod is probed at once, well inside the pods' 2 s interval.
    await until(lambda: run.engine.looks == 1, "the witness's look")
    assert {ip for _, ip in run.net.calls[calls:]} == set(ips(1, 6))
    assert run.engine.failures["tcp"] == 0  # no pod probe had failed yet: the witness alone looked
    await until(lambda: len(run.down()) == 6, "the node judged down on its pods' silence")
    assert [v.node for v in run.nodes] == ["n1"] and WITNESS_MISSES == 3
    run.engine.close()


async def test_a_witness_that_never_answered_is_not_used() -> None:
    run = Run(WITNESSED)
    run.add("n1", *ips(1, 6))
    run.set("silent", "127.1.1.250")  # blocked by a firewall from the start
    run.engine.witness("n1", "127.1.1.250")
    await asyncio.sleep(0.5)  # 25 silent heartbeats
    assert run.engine.witnesses == (1, 1) and run.engine.looks == 0
    run.engine.close()


async def slow_pods_with_a_witness() -> Run:
    """Eight targets whose probes time out only after 2 s, on a node with a 20 ms witness, all heard."""
    run = Run(replace(WITNESSED, interval=5.0, timeout=2.0))
    run.add("n1", *ips(1, 8))
    run.engine.witness("n1", "127.1.1.250")
    await until(lambda: len(run.net.calls) >= 8 and run.engine.witnesses == (1, 0), "probed, witness heard")
    return run


async def test_a_witnesss_look_is_judged_on_connects_unanswered_before_any_pod_probe_times_out() -> None:
    # The witness misses its heartbeats and looks; the look's connects still unanswered LOOK_GRACE
    # later are the evidence: the node is down long before any pod probe times out.
    run = await slow_pods_with_a_witness()
    run.set("silent", *ips(1, 8), "127.1.1.250")
    await until(lambda: len(run.down()) == 8, "the node judged down")
    assert run.engine.failures["tcp"] == 0  # no pod attempt had timed out yet
    assert [(v.node, v.attempts) for v in run.nodes] == [("n1", 8)]
    run.engine.close()


async def test_a_witnesss_look_answered_by_one_pod_judges_nothing() -> None:
    run = await slow_pods_with_a_witness()
    run.set("silent", *ips(1, 8)[1:], "127.1.1.250")  # the node's witness path broke; one pod answers
    await until(lambda: run.engine.looks >= 1, "the witness's look")
    await asyncio.sleep(0.5)
    assert run.nodes == [] and run.down() == {}
    run.engine.close()
