"""The fleet: pods answer on real addresses, and injected failures look like the real ones."""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from helpers import connect_from

from ehc.sim import SimCluster, SimPod, Unsupported
from ehc.sim import netns as netns_mod
from ehc.sim.fleet import Fleet, FleetSpec, build_pods, host_ip

NETNS_OK, NETNS_WHY = netns_mod.available()
needs_netns = pytest.mark.skipif(not NETNS_OK, reason=f"fleet namespace unavailable: {NETNS_WHY}")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(fleet: Fleet, ip: str, timeout: float = 0.5) -> bool:
    """One ICMP echo from inside the namespace (raw socket, root only)."""
    v6 = ":" in ip
    if v6:
        sock = fleet.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        sock = fleet.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    payload = b"ehc-sim-ping"
    header = struct.pack("!BBHHH", req_type, 0, 0, ident, 1)
    csum = 0 if v6 else _checksum(header + payload)  # the kernel fills in ICMPv6 checksums
    sock.sendto(struct.pack("!BBHHH", req_type, 0, csum, ident, 1) + payload, (ip, 0))
    try:
        end = timeout
        while end > 0:
            ready, _, _ = select.select([sock], [], [], end)
            if not ready:
                return False
            data, addr = sock.recvfrom(2048)
            icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
            typ, _code, _c, rid, _seq = struct.unpack("!BBHHH", icmp[:8])
            if typ == rep_type and rid == ident and addr[0] == ip:
                return True
            end -= 0.01
        return False
    finally:
        sock.close()


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    async with SimCluster(3, 8, netns=True, kubelet_delay=None, ipv6_every=4) as cluster:
        yield cluster


def test_fleet_description_mix() -> None:
    pods = build_pods(FleetSpec(nodes=50, pods_per_node=400, ipv6_every=25))
    assert len(pods) == 20_000 and len({p.ip for p in pods}) == 20_000
    assert {p.style for p in pods} == {"annotation", "gate", "none", "annotation-off"}
    assert {p.template for p in pods} == {"tcp-number", "tcp-named", "http", "grpc", "icmp", "sidecar"}
    assert any(p.ipv6 for p in pods) and any(len(p.ports) > 1 for p in pods)
    assert all(p.ip.startswith("127.") or p.ip.startswith("fd00:e4c:") for p in pods)


@needs_netns
async def test_pods_answer_tcp_and_icmp_in_namespace(sim: SimCluster) -> None:
    fleet = sim.fleet
    assert sim.netns and netns_mod.exists(sim.netns)
    v6 = [p for p in fleet.pods if p.ipv6]
    assert v6, "the fixture should include IPv6 pods"
    for p in fleet.pods:
        for port in p.ports:
            assert await connect_from(fleet, p.ip, port) == "ok", (p.name, p.ip, port)
    for p in [*fleet.pods[:3], v6[0]]:
        assert await asyncio.to_thread(ping, fleet, p.ip), p.ip
    # pod IPs exist only in the namespace; the API server is reachable on both sides on one address
    assert await connect_from(fleet, "127.0.0.1", sim.api.port) == "ok"
    if shutil.which("kubectl"):  # the same kubeconfig works from inside the namespace
        proc = await asyncio.create_subprocess_exec(
            *sim.exec_prefix(), "kubectl", "--kubeconfig", sim.kubeconfig, "get", "pods", "-A", "-o", "name",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert len(out.decode().splitlines()) == len(fleet.pods)


@needs_netns
async def test_power_off_times_out_and_recover_restores(sim: SimCluster) -> None:
    fleet = sim.fleet
    node = fleet.nodes[1]
    victims = [p for p in fleet.pods_on(node) if p.ports]
    other = next(p for p in fleet.pods_on(fleet.nodes[0]) if p.ports and not p.ipv6)
    fleet.power_off(node)
    results = await asyncio.gather(*(connect_from(fleet, p.ip, p.ports[0], 0.3) for p in victims))
    assert set(results) == {"timeout"}
    assert not await asyncio.to_thread(ping, fleet, victims[0].ip, 0.3)
    assert await connect_from(fleet, other.ip, other.ports[0]) == "ok"
    assert not fleet.pod_healthy(sim.api.get_pod(victims[0].namespace, victims[0].name) or {})
    fleet.recover(node)
    results = await asyncio.gather(*(connect_from(fleet, p.ip, p.ports[0]) for p in victims))
    assert set(results) == {"ok"}
    assert await asyncio.to_thread(ping, fleet, victims[0].ip)


@needs_netns
async def test_single_pod_power_off_and_closed_port(sim: SimCluster) -> None:
    fleet = sim.fleet
    a, b = [p for p in fleet.pods if p.ports and not p.ipv6][:2]
    fleet.close_port(a, a.ports[0])
    assert await connect_from(fleet, a.ip, a.ports[0]) == "refused"
    assert await connect_from(fleet, b.ip, a.ports[0] if a.ports[0] in b.ports else b.ports[0]) == "ok"
    fleet.open_port(a, a.ports[0])
    assert await connect_from(fleet, a.ip, a.ports[0]) == "ok"
    fleet.power_off_pod(b)
    assert await connect_from(fleet, b.ip, b.ports[0], 0.3) == "timeout"
    fleet.recover_pod(b)
    assert await connect_from(fleet, b.ip, b.ports[0]) == "ok"
    v6 = next(p for p in fleet.pods if p.ipv6 and p.ports)
    fleet.close_port(v6, v6.ports[0])
    assert await connect_from(fleet, v6.ip, v6.ports[0]) == "refused"
    with pytest.raises(Unsupported):
        fleet.set_latency(0.1)


@needs_netns
async def test_random_loss_is_observable(sim: SimCluster) -> None:
    fleet = sim.fleet
    pod: SimPod = next(p for p in fleet.pods if p.ports and not p.ipv6)
    fleet.set_loss(50)
    # A dropped SYN is retransmitted only after 1 s, so with a 0.3 s timeout each connect is one trial.
    results = await asyncio.gather(*(connect_from(fleet, pod.ip, pod.ports[0], 0.3) for _ in range(200)))
    lost = results.count("timeout") / len(results)
    assert 0.2 < lost < 0.95, lost  # loose: SYN and SYN-ACK may both be subject to loss
    assert "refused" not in results
    fleet.set_loss(0)
    results = await asyncio.gather(*(connect_from(fleet, pod.ip, pod.ports[0]) for _ in range(50)))
    assert set(results) == {"ok"}
    fleet.set_loss(100, node=pod.node)
    assert await connect_from(fleet, pod.ip, pod.ports[0], 0.3) == "timeout"
    fleet.reset()
    assert await connect_from(fleet, pod.ip, pod.ports[0]) == "ok"


@needs_netns
async def test_teardown_and_stale_cleanup() -> None:
    async with SimCluster(1, 2, netns=True, kubelet_delay=None) as sim:
        name = sim.netns
        assert name and netns_mod.exists(name)
    assert not netns_mod.exists(name)
    # a namespace left behind by a crashed owner (pid that cannot exist) is removed by the next start
    stale = "ehc-sim-4194999-abcdef"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in netns_mod.cleanup_stale()
        assert not netns_mod.exists(stale)
    finally:
        netns_mod.delete(stale)


async def test_fallback_without_namespace_closes_listeners() -> None:
    async with SimCluster(2, 4, netns=False, kubelet_delay=None) as sim:
        fleet = sim.fleet
        assert sim.netns is None and fleet.capabilities == frozenset({"close"})
        assert not any(p.ipv6 for p in fleet.pods)
        p = next(p for p in fleet.pods if p.ports)
        assert await connect_from(fleet, p.ip, p.ports[0]) == "ok"
        fleet.close_port(p, p.ports[0])
        assert await connect_from(fleet, p.ip, p.ports[0]) == "refused"
        fleet.open_port(p, p.ports[0])
        assert await connect_from(fleet, p.ip, p.ports[0]) == "ok"
        fleet.power_off(p.node)
        assert await connect_from(fleet, p.ip, p.ports[0]) == "refused"  # the best a non-root fleet can do
        fleet.recover(p.node)
        assert await connect_from(fleet, p.ip, p.ports[0]) == "ok"
        with pytest.raises(Unsupported):
            fleet.set_loss(10)


CUT_GID = 61000
_CONNECT = """
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
s.settimeout(0.5)
try:
    s.connect((ip, port))
    print("ok")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as e:
    print(f"oserror {e.errno}")
"""

_PING = """
import select, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
data = struct.pack("!BBHHH", 8, 0, 0, 4242, 1) + b"ehc-sim!"
c = sum(struct.unpack("!8H", data))
c = (c >> 16) + (c & 0xFFFF)
s.sendto(data[:2] + struct.pack("!H", ~(c + (c >> 16)) & 0xFFFF) + data[4:], (sys.argv[1], 0))
while select.select([s], [], [], 0.5)[0]:
    pkt, addr = s.recvfrom(2048)
    if addr[0] == sys.argv[1] and pkt[(pkt[0] & 0x0F) * 4] == 0:
        print("ok")
        break
else:
    print("timeout")
"""


async def run_as(sim: SimCluster, group: int | None, script: str, *args: str) -> str:
    """The output of ``script`` run in the fleet's namespace as unix group ``group``."""
    proc = await asyncio.create_subprocess_exec(
        *sim.exec_prefix(), sys.executable, "-c", script, *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, group=group,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def connect_as(sim: SimCluster, pod: SimPod, group: int | None) -> str:
    """One TCP connect to ``pod`` from a process in the fleet's namespace running as ``group``."""
    return await run_as(sim, group, _CONNECT, pod.ip, str(pod.ports[0]))


@needs_netns
async def test_cut_breaks_one_vantage_silently(sim: SimCluster) -> None:
    fleet = sim.fleet
    n0, n1 = fleet.nodes[:2]
    a = next(p for p in fleet.pods_on(n0) if p.ports and not p.ipv6)
    a6 = next((p for p in fleet.pods_on(n0) if p.ports and p.ipv6), None)
    b = next(p for p in fleet.pods_on(n1) if p.ports)
    assert "cut" in fleet.capabilities
    fleet.cut(CUT_GID, n0)
    assert fleet.cuts == {(CUT_GID, n0)}
    assert await connect_as(sim, a, CUT_GID) == "timeout"  # silent: no refusal, no EPERM
    if a6 is not None:
        assert await connect_as(sim, a6, CUT_GID) == "timeout"
    assert await connect_as(sim, b, CUT_GID) == "ok"  # its other paths stand
    assert await connect_as(sim, a, None) == "ok"  # and everyone else still reaches node 0
    assert await connect_from(fleet, a.ip, a.ports[0]) == "ok"
    assert await asyncio.to_thread(ping, fleet, a.ip)
    assert await run_as(sim, CUT_GID, _PING, a.ip) == "timeout"  # ICMP is cut too
    assert await run_as(sim, CUT_GID, _PING, b.ip if not b.ipv6 else host_ip(1)) == "ok"
    fleet.cut(CUT_GID, n0, on=False)
    assert not fleet.cuts
    assert await connect_as(sim, a, CUT_GID) == "ok"
    assert await run_as(sim, CUT_GID, _PING, a.ip) == "ok"
    fleet.cut(CUT_GID, n0)
    fleet.reset()
    assert not fleet.cuts
    assert await connect_as(sim, a, CUT_GID) == "ok"


async def test_cut_needs_namespace() -> None:
    async with SimCluster(2, 2, netns=False, kubelet_delay=None) as sim:
        with pytest.raises(Unsupported):
            sim.fleet.cut(CUT_GID, sim.fleet.nodes[0])
