"""``ehc run`` end to end: a real process inside the simulated cluster's namespace, real probes, the
real kubernetes_asyncio client, and the simulated API server's write log as the witness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import pytest
from helpers import conditions_are, stop, until

from ehc.sim import SimCluster
from ehc.sim import netns as sim_netns
from ehc.sim.faults import PODS_STATUS
from ehc.sim.fleet import host_ip

pytestmark = pytest.mark.skipif(
    not sim_netns.available()[0], reason=f"needs a network namespace: {sim_netns.available()[1]}"
)

LEASE = "endpoint-health-checker-leader"
FAST = ["--interval", "300ms", "--timeout", "200ms", "--retry-count", "2", "--confirm-spacing", "20ms",
        "--lease-duration", "2s", "--renew-deadline", "1s", "--retry-period", "250ms", "--metrics-address", "",
        "--peer-address", ""]  # fmt: skip


async def start_ehc(sim: SimCluster, identity: str, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *sim.exec_prefix(), sys.executable, "-m", "ehc", "run", "--kubeconfig", sim.kubeconfig,
        "--identity", identity, "--namespace", "default", *FAST, *extra,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@contextlib.asynccontextmanager
async def settled(sim: SimCluster, *flags: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """``ehc run`` leading, every gate pod's first value written; stopped cleanly at the end."""
    proc = await start_ehc(sim, "ehc-a", *flags)
    try:
        await until(conditions_are(sim.api, [p for p in sim.fleet.targets() if p.style == "gate"], "True"))
        yield proc
    finally:
        assert await stop(proc) == 0


def marked_unready(sim: SimCluster) -> dict[tuple[str, str], float]:
    """Pods ehc took out of service: a write setting Ready=False or, for gate pods, the gate False."""
    return sim.api.write_log.first_taken_out()


async def test_gate_values_power_off_and_recovery() -> None:
    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=1.0) as sim:
        fleet, api = sim.fleet, sim.api
        targets = fleet.targets()
        gate_pods = [p for p in targets if p.style == "gate"]
        assert gate_pods and any(p.style == "annotation" for p in targets)
        assert not conditions_are(api, gate_pods, "True")()  # new pods: nobody has set the gate yet
        proc = await start_ehc(sim, "ehc-a")
        try:
            # Every gate pod gets its first value, True, without anything failing; the kubelet
            # (stand-in) then sets them Ready.
            await until(conditions_are(api, gate_pods, "True"))
            await until(conditions_are(api, gate_pods, "True", "Ready"))
            assert marked_unready(sim) == {}

            victim = "sim-node-000"
            on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
            before = len(api.write_log.entries)
            fleet.power_off(victim)
            await until(lambda: on_victim <= marked_unready(sim).keys())
            await asyncio.sleep(0.5)
            assert marked_unready(sim).keys() == on_victim  # nobody else
            # One write per pod for the ejection.
            writes = [
                e for e in api.write_log.entries[before:] if e.actor == "client" and e.resource == "pods"
            ]
            assert sorted((e.namespace, e.name) for e in writes) == sorted(on_victim)

            fleet.recover(victim)
            await until(conditions_are(api, [p for p in fleet.pods_on(victim) if p.style == "gate"], "True"))
        finally:
            assert await stop(proc) == 0


async def test_fail_safe_writes_nothing_when_the_whole_fleet_goes_dark() -> None:
    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None) as sim:
        fleet, api = sim.fleet, sim.api
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        proc = await start_ehc(sim, "ehc-a", "--failsafe-min-targets", "5")
        try:
            await until(conditions_are(api, gate_pods, "True"))
            for node in ("sim-node-000", "sim-node-001", "sim-node-002"):
                fleet.power_off(node)
            await asyncio.sleep(3.0)  # ten intervals: long enough for every target to be confirmed dead
            assert marked_unready(sim) == {}
            events = [
                e
                for e in api.write_log.entries
                if e.resource == "events" and "FailSafeEngaged" in str(e.body)
            ]
            assert events
        finally:
            assert await stop(proc) == 0


async def test_leader_failover_after_kill_9() -> None:
    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None) as sim:
        fleet, api = sim.fleet, sim.api
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        a = await start_ehc(sim, "ehc-a")
        await until(conditions_are(api, gate_pods, "True"))
        b = await start_ehc(sim, "ehc-b")
        try:
            await asyncio.sleep(1.0)  # b is a warm standby
            a.kill()  # SIGKILL: no release
            await a.wait()
            victim = "sim-node-000"
            on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
            fleet.power_off(victim)
            # b takes over after the lease expires and ejects the victim's pods.
            await until(lambda: on_victim <= marked_unready(sim).keys(), limit=30)
            await asyncio.sleep(0.5)
            assert marked_unready(sim).keys() == on_victim
        finally:
            assert await stop(b) == 0


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def lease_holder(sim: SimCluster) -> str:
    lease = sim.api.collections[("coordination.k8s.io", "v1", "leases")].get("default", LEASE)
    return (lease or {}).get("spec", {}).get("holderIdentity") or ""


@pytest.mark.parametrize("standby", ["cold", "hot"])
async def test_a_former_leader_writes_nothing_it_decided_in_an_earlier_term(standby: str) -> None:
    """a decides ejections it cannot write (the API refuses), is paused, loses the lease; the node
    comes back; b leads and has nothing to write.  When b hands over and a leads again, a must not
    write what it decided in its earlier term: those pods have been healthy all along."""
    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None) as sim:
        fleet, api = sim.fleet, sim.api
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        hot = ("--hot-standby",) if standby == "hot" else ()
        a = await start_ehc(sim, "ehc-a", *hot)
        await until(conditions_are(api, gate_pods, "True"), "every gate pod's first value")
        b = await start_ehc(sim, "ehc-b", *hot)
        try:
            await asyncio.sleep(1.0)  # b is a warm standby
            victim = "sim-node-000"
            on_victim = [p for p in fleet.pods_on(victim) if p.opted_in]
            api.faults.fail(10**6, 500, verb="PATCH", path=PODS_STATUS)  # a's ejections cannot land
            fleet.power_off(victim)
            await until(lambda: api.faults.injected >= len(on_victim), "a's ejections, refused")
            paused = [a.pid, *children(a.pid)]  # the coordinator and its workers, as a frozen node would
            for pid in paused:
                os.kill(pid, signal.SIGSTOP)
            fleet.recover(victim)
            await until(lambda: lease_holder(sim) == "ehc-b", "b leading")
            api.faults.clear()
            await asyncio.sleep(2.0)  # b probes the pods, all healthy: nothing to write
            since = time.monotonic()
            for pid in paused:
                os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(1.0)  # a finds it lost the lease
            assert await stop(b) == 0  # b releases the lease: a leads again, in a new term
            await until(lambda: lease_holder(sim) == "ehc-a", "a leading again")
            await asyncio.sleep(2.0)  # a's workers (new ones when cold) probe the healthy pods
            assert api.write_log.first_taken_out(since=since) == {}
            assert conditions_are(api, [p for p in on_victim if p.style == "gate"], "True")()
        finally:
            for pid in [a.pid, *children(a.pid)]:
                os.kill(pid, signal.SIGCONT)
            assert await stop(a) == 0
            await stop(b)


def test_demo_json_reports_the_measured_figures() -> None:
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "ehc", "demo", "--json", "--nodes", "3", "--pods-per-node", "12"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["detected"] == summary["victim_pods"] > 0
    assert summary["false_unhealthy"] == 0
    assert summary["writes_per_transition"] == 1.0
    for figure in ("detection_seconds", "unrouted_seconds", "backend_detection_seconds"):
        assert 0 < summary[figure]["p50"] <= summary[figure]["p99"] <= summary[figure]["max"], figure
    # A pod leaves its Service's slice when the slice controller sees ehc's condition write, not before.
    assert summary["unrouted_seconds"]["max"] >= summary["detection_seconds"]["max"]
    assert summary["backends_detected"] == summary["victim_backends"] > 0
    # At most one write per address; fewer when verdicts for one object coincide.
    assert (
        1
        <= summary["writes_per_backend_object"]
        <= summary["victim_backends"] / summary["victim_backend_objects"]
    )


async def test_api_trouble_during_a_power_off_loses_and_duplicates_nothing() -> None:
    from ehc.sim.faults import PODS_STATUS

    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None) as sim:
        fleet, api = sim.fleet, sim.api
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        proc = await start_ehc(sim, "ehc-a")
        try:
            await until(conditions_are(api, gate_pods, "True"))
            # The watch drops and, once reconnecting, must relist after a 410; status patches meet
            # a storm of 500s and 429s.
            api.faults.fail(6, 500, verb="PATCH", path=PODS_STATUS)
            api.faults.throttle(4, retry_after=0.5, verb="PATCH", path=PODS_STATUS)
            api.faults.expire_next_watch(1)
            api.close_watches(abrupt=True)
            victim = "sim-node-000"
            on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
            before = len(api.write_log.entries)
            fleet.power_off(victim)
            await until(lambda: on_victim <= marked_unready(sim).keys())
            await asyncio.sleep(0.5)
            assert marked_unready(sim).keys() == on_victim
            landed = [e for e in api.write_log.entries[before:]
                      if e.actor == "client" and e.resource == "pods" and 200 <= e.status < 300]  # fmt: skip
            assert sorted((e.namespace, e.name) for e in landed) == sorted(on_victim)  # once each
            assert api.faults.injected >= 10
        finally:
            assert await stop(proc) == 0


async def test_ipv6_pods_and_a_pod_deleted_while_its_patch_is_queued() -> None:
    from ehc.sim.faults import PODS_STATUS

    async with SimCluster(nodes=2, pods_per_node=12, kubelet_delay=None, ipv6_every=3) as sim:
        fleet, api = sim.fleet, sim.api
        targets = fleet.targets()
        assert any(p.ipv6 for p in targets)
        gate_pods = [p for p in targets if p.style == "gate"]
        proc = await start_ehc(sim, "ehc-a", "--failsafe-min-targets", "1000")
        try:
            await until(conditions_are(api, gate_pods, "True"))
            victim = "sim-node-000"
            doomed = [p for p in fleet.pods_on(victim) if p.opted_in]
            v6 = {(p.namespace, p.name) for p in doomed if p.ipv6}
            assert v6
            deleted = doomed[0]
            api.faults.delay(1.5, verb="PATCH", path=PODS_STATUS)  # patches queue up behind the delay
            fleet.power_off(victim)
            await asyncio.sleep(1.2)
            api.delete_pod(deleted.namespace, deleted.name)  # gone while its patch waits
            api.faults.clear()
            rest = {(p.namespace, p.name) for p in doomed[1:]}
            await until(lambda: rest <= marked_unready(sim).keys())
            assert v6 <= marked_unready(sim).keys() | {(deleted.namespace, deleted.name)}
            assert proc.returncode is None  # ehc shrugged off the 404
        finally:
            assert await stop(proc) == 0


async def http_get(sim: SimCluster, port: int, path: str) -> tuple[int, str]:
    """GET ``path`` from ehc's metrics server, from inside the cluster's namespace."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:{port}{path}', timeout=5); print(r.status); print(r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code); print(e.read().decode())\n"
    )
    p = await asyncio.create_subprocess_exec(
        *sim.exec_prefix(), sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await p.communicate()
    status, _, body = out.decode().partition("\n")
    return int(status), body


async def metrics(sim: SimCluster, port: int) -> dict[str, float]:
    status, text = await http_get(sim, port, "/metrics")
    assert status == 200
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


async def test_metrics_healthz_and_readyz() -> None:
    async with SimCluster(nodes=2, pods_per_node=8, kubelet_delay=None) as sim:
        gate_pods = [p for p in sim.fleet.targets() if p.style == "gate"]
        proc = await start_ehc(sim, "ehc-a", "--metrics-address", "127.0.0.1:19090")
        try:
            await until(conditions_are(sim.api, gate_pods, "True"))
            await asyncio.sleep(1.5)  # a stats frame from the worker

            assert (await http_get(sim, 19090, "/healthz"))[0] == 200
            assert (await http_get(sim, 19090, "/readyz"))[0] == 200
            samples = await metrics(sim, 19090)
            targets = sum(v for k, v in samples.items() if k.startswith("ehc_targets{"))
            assert targets == len(sim.fleet.targets())
            assert samples["ehc_leader"] == 1 and samples["ehc_failsafe_engaged"] == 0
            assert sum(v for k, v in samples.items() if k.startswith("ehc_probes_total{")) > 0
            assert samples['ehc_probe_latency_seconds_bucket{le="+Inf"}'] > 0
            assert samples['ehc_patches_total{outcome="ok"}'] == len(gate_pods)  # the first gate values
        finally:
            assert await stop(proc) == 0


async def test_a_closed_port_ejects_only_that_pod() -> None:
    async with SimCluster(nodes=2, pods_per_node=8, kubelet_delay=None) as sim:
        fleet, api = sim.fleet, sim.api
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        tcp_pods = [p for p in fleet.targets() if p.ports]
        proc = await start_ehc(sim, "ehc-a")
        try:
            await until(conditions_are(api, gate_pods, "True"))
            victim = tcp_pods[0]
            fleet.close_port(victim, victim.ports[0])  # refused at once: the app is down, the node is up
            await until(lambda: (victim.namespace, victim.name) in marked_unready(sim))
            await asyncio.sleep(0.5)
            assert marked_unready(sim).keys() == {(victim.namespace, victim.name)}
        finally:
            assert await stop(proc) == 0


async def test_the_command_ehc_sim_prints_runs_ehc_in_its_namespace() -> None:
    from ehc.cli.sim import run_command

    async with SimCluster(nodes=1, pods_per_node=8, kubelet_delay=None) as sim:
        gate_pods = [p for p in sim.fleet.targets() if p.style == "gate"]
        command = run_command(sim)
        assert command[: len(sim.exec_prefix())] == sim.exec_prefix()
        proc = await asyncio.create_subprocess_exec(
            *command, "--identity", "ehc-printed", "--namespace", "default"
        )
        try:
            await until(conditions_are(sim.api, gate_pods, "True"), "the printed command at work")
            assert proc.returncode is None  # its metrics port was free: it did not exit
        finally:
            assert await stop(proc) == 0


async def test_selectorless_backends_of_a_powered_off_node_go_out_and_come_back() -> None:
    """External backends behind selectorless Services (slices and legacy Endpoints, their addresses
    spread over nodes) and one slice holding every address of one node: a power-off takes out exactly
    the dead node's addresses, writing each object at most once per address; power-on brings them back."""
    async with SimCluster(nodes=3, pods_per_node=6, kubelet_delay=None, external_per_node=4) as sim:
        fleet, api, log = sim.fleet, sim.api, sim.api.write_log
        victim = "sim-node-000"
        crowd = [p for p in fleet.pods_on(victim) if p.ports and not p.ipv6]  # one slice, one node
        api.ensure_namespace("crowd")
        api.endpointslices.create({
            "metadata": {"name": "crowd", "namespace": "crowd",
                         "labels": {"endpoint-health-checker.io/enabled": "true", "kubernetes.io/service-name": "crowd"}},
            "addressType": "IPv4", "ports": [{"port": p.ports[0]} for p in crowd[:1]],
            "endpoints": [{"addresses": [p.ip], "nodeName": victim} for p in crowd if p.ports[0] == crowd[0].ports[0]],
        })  # fmt: skip
        crowded = {("crowd", "crowd", p.ip) for p in crowd if p.ports[0] == crowd[0].ports[0]}
        backends = {(x.namespace, x.name, x.ip) for x in fleet.externals_on(victim)} | crowded
        objects = {(ns, name) for ns, name, _ in backends}
        assert len(crowded) > 1 and {x.kind for x in fleet.externals_on(victim)} == {
            "EndpointSlice",
            "Endpoints",
        }
        proc = await start_ehc(sim, "ehc-a", "--selectorless")
        try:
            await until(lambda: bool(log.select(resource="leases", ok=True)), "ehc leading")
            await asyncio.sleep(1.5)  # a few intervals of steady state: nothing is written
            t0 = time.monotonic()
            fleet.power_off(victim)

            def out() -> dict[tuple[str, str, str], float]:
                return log.addresses_marked(False, since=t0, actor="client")

            await until(lambda: backends <= out().keys(), "the dead node's addresses out")
            await asyncio.sleep(0.5)
            assert out().keys() == backends  # nobody else's
            writes = [e for e in log.select(actor="client", verb="PATCH", ok=True)
                      if e.resource in ("endpointslices", "endpoints") and e.mono >= t0]  # fmt: skip
            assert {(e.namespace, e.name) for e in writes} == objects
            # At most one write per address of the object on the dead node, fewer when verdicts coincide.
            for o in objects:
                dead = sum((ns, name) == o for ns, name, _ in backends)
                assert 1 <= sum((e.namespace, e.name) == o for e in writes) <= dead, o
            t1 = time.monotonic()
            fleet.recover(victim)

            def back() -> dict[tuple[str, str, str], float]:
                return log.addresses_marked(True, since=t1, actor="client")

            await until(lambda: backends <= back().keys(), "the addresses back")
        finally:
            assert await stop(proc) == 0


def events(sim: SimCluster, reason: str) -> list[dict]:
    return [
        e.body for e in sim.api.write_log.entries if e.resource == "events" and e.body.get("reason") == reason
    ]


async def test_a_powered_off_node_is_judged_down_as_a_whole() -> None:
    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None) as sim, settled(sim):
        fleet, api = sim.fleet, sim.api
        victim = "sim-node-001"
        on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
        fleet.power_off(victim)
        await until(lambda: on_victim <= marked_unready(sim).keys(), "the node's pods out")
        await until(lambda: bool(events(sim, "NodeSilent")), "an Event on the node")
        await asyncio.sleep(0.5)
        assert marked_unready(sim).keys() == on_victim
        [said] = events(sim, "NodeSilent")  # one Event for the node, none per pod
        assert said["involvedObject"]["kind"] == "Node" and said["involvedObject"]["name"] == victim
        assert f"{len(on_victim)} of its targets silent" in said["message"]
        named = {
            (e["involvedObject"]["namespace"], e["involvedObject"]["name"])
            for e in events(sim, "EndpointUnhealthy")
        }
        assert not named & on_victim
        for ns, name in on_victim:  # each pod's condition (Ready, or the gate it has) says why
            said_on_pod = " ".join(
                c.get("message", "") for c in api.get_pod(ns, name)["status"]["conditions"]
            )
            assert f"node {victim} silent" in said_on_pod


async def test_part_of_a_node_failing_ejects_exactly_those_pods() -> None:
    async with SimCluster(nodes=2, pods_per_node=12, kubelet_delay=None) as sim, settled(sim):
        fleet = sim.fleet
        on_node = [p for p in fleet.pods_on("sim-node-000") if p.opted_in and p.ports]
        silent, refusing = on_node[:2], on_node[2:4]
        for p in silent:
            fleet.power_off_pod(p)  # its packets dropped: silence, but the node's other pods answer
        for p in refusing:
            fleet.close_port(p, p.ports[0])
        failing = {(p.namespace, p.name) for p in silent + refusing}
        await until(lambda: failing <= marked_unready(sim).keys(), "the failing pods out")
        await asyncio.sleep(1.0)
        assert marked_unready(sim).keys() == failing
        assert events(sim, "NodeSilent") == []


async def test_random_loss_on_one_node_ejects_nothing() -> None:
    # Six confirmations: a pod alone would need 7 losses in a row; the node needs 10.
    async with (
        SimCluster(nodes=2, pods_per_node=12, kubelet_delay=None) as sim,
        settled(sim, "--retry-count", "6"),
    ):
        sim.fleet.set_loss(20, "sim-node-000")
        await asyncio.sleep(8.0)  # about 25 attempts per pod, 5 of them lost
        sim.fleet.set_loss(0, "sim-node-000")
        assert marked_unready(sim) == {}
        assert events(sim, "NodeSilent") == []


async def test_the_node_witness_is_honoured_a_node_that_answers_is_alive() -> None:
    """Every opted-in pod of a node goes silent while the node itself still answers (its kubelet port
    refuses: an answer): with the witness, they are judged one by one, with no node verdict.  Then the
    whole node loses power: judged down as a whole."""
    # Two small nodes both failing would engage the fail-safe: exempt this fleet.
    flags = ("--node-witness", "tcp", "--node-heartbeat", "50ms", "--failsafe-min-targets", "1000")
    async with SimCluster(nodes=2, pods_per_node=8, kubelet_delay=None) as sim, settled(sim, *flags):
        fleet = sim.fleet
        await asyncio.sleep(1.0)  # the witnesses heard
        pods = [p for p in fleet.pods_on("sim-node-000") if p.opted_in]
        for p in pods:
            fleet.power_off_pod(p)
        silent = {(p.namespace, p.name) for p in pods}
        await until(lambda: silent <= marked_unready(sim).keys(), "the silent pods out, one by one")
        assert events(sim, "NodeSilent") == []
        others = {(p.namespace, p.name) for p in fleet.pods_on("sim-node-001") if p.opted_in}
        fleet.power_off("sim-node-001")
        await until(lambda: others <= marked_unready(sim).keys(), "the dead node's pods out")
        await until(lambda: bool(events(sim, "NodeSilent")), "the node judged down as a whole")
        assert [e["involvedObject"]["name"] for e in events(sim, "NodeSilent")] == ["sim-node-001"]


async def test_a_hot_standby_probes_before_it_leads_and_takes_over_with_the_same_workers() -> None:
    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None) as sim:
        fleet, api = sim.fleet, sim.api
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        a = await start_ehc(sim, "ehc-a", "--hot-standby")
        await until(conditions_are(api, gate_pods, "True"))
        b = await start_ehc(sim, "ehc-b", "--hot-standby")
        try:
            await until(
                lambda: lease_holder(sim) == "ehc-a" and len(children(b.pid)) == 1, "b probing, a leading"
            )
            standby_workers = children(b.pid)
            a.kill()  # SIGKILL, no release, and a node dies with it
            await a.wait()
            victim = "sim-node-000"
            on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
            fleet.power_off(victim)
            await until(lambda: lease_holder(sim) == "ehc-b", "b leading", limit=30)
            await until(lambda: on_victim <= marked_unready(sim).keys(), "b's ejections")
            await asyncio.sleep(0.5)
            assert marked_unready(sim).keys() == on_victim
            assert children(b.pid) == standby_workers  # the workers that probed while b stood by
        finally:
            assert await stop(b) == 0


async def test_peers_that_are_down_or_answer_garbage_never_stop_a_real_ejection() -> None:
    """Two members whose Leases say they are live: one on the node that dies (it refuses, then drops
    everything), one at a port that answers HTTP but not as a peer.  The leader asks them before ejecting
    a dead node's pods, gets nothing usable, ejects within the ask's deadline, and keeps running."""
    async with SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None) as sim:
        fleet, api = sim.fleet, sim.api
        http_pod = next(
            p for p in fleet.pods if p.style == "gate" and 8080 in p.ports and p.node != "sim-node-000"
        )
        for name, address in (
            ("ghost-dead", f"{host_ip(0)}:9091"),
            ("ghost-garbage", f"{http_pod.ip}:8080"),
        ):
            api.leases.create({
                "metadata": {"name": f"{LEASE}-{name}", "namespace": "default",
                             "labels": {"endpoint-health-checker.io/member": LEASE},
                             "annotations": {"endpoint-health-checker.io/peer-address": address}},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 3600,
                         "renewTime": "2026-01-01T00:00:00.000000Z"},
            })  # fmt: skip
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        a = await start_ehc(
            sim, "ehc-a", "--peer-address", "127.0.0.1:19391", "--failsafe-min-targets", "1000",
            "--metrics-address", "127.0.0.1:19392",
        )  # fmt: skip
        try:
            await until(conditions_are(api, gate_pods, "True"))
            await asyncio.sleep(1.0)  # the ghosts are known as peers
            victim = "sim-node-000"
            on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
            fleet.power_off(victim)
            await until(lambda: on_victim <= marked_unready(sim).keys(), "the dead node's pods out")
            assert events(sim, "EjectionVetoed") == []
            assert a.returncode is None  # the leader lives on
            said = await metrics(sim, 19392)
            assert said["ehc_peers"] == 2 and said['ehc_peer_questions_total{outcome="failed"}'] >= 2
            assert said["ehc_ejections_vetoed_total"] == 0
        finally:
            assert await stop(a) == 0
