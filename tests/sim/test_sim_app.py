"""Readiness-mode pods: the fleet's HTTP and gRPC ports answer with real servers (aiohttp, grpcio's
health servicer), and one pod's application can turn unhealthy while its ports accept connections."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from helpers import connect_from

from ehc.kube.model import PROBE_ANNOTATION
from ehc.sim import SimCluster, SimPod, Unsupported
from ehc.sim import netns as netns_mod
from ehc.sim.fleet import Fleet, FleetSpec, build_pods, pod_manifest

NETNS_OK, NETNS_WHY = netns_mod.available()
needs_netns = pytest.mark.skipif(not NETNS_OK, reason=f"fleet namespace unavailable: {NETNS_WHY}")

# A gRPC client in its own process: started inside the fleet's namespace, it connects from there (grpc's
# own threads would not inherit a namespace entered by one thread of the test process).
GRPC_CHECK = r"""
import json, sys
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
out = []
for ip, port, service in json.loads(sys.argv[1]):
    target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5)
            out.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        except grpc.RpcError as exc:
            out.append(exc.code().name)
print(json.dumps(out))
"""


async def grpc_check(fleet: Fleet, *checks: tuple[SimPod, str]) -> list[str]:
    """``grpc.health.v1.Health/Check`` on port 9090 of each pod, for the given service: the status
    (SERVING, NOT_SERVING) or the RPC's error code (NOT_FOUND, UNAVAILABLE)."""
    arg = json.dumps([[p.ip, 9090, service] for p, service in checks])
    proc = await asyncio.create_subprocess_exec(
        *fleet.netns_exec_prefix(), sys.executable, "-c", GRPC_CHECK, arg,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def _get(fleet: Fleet, ip: str, port: int, path: str) -> int:
    sock = fleet.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    sock.settimeout(3)
    try:
        sock.connect((ip, port))
    except OSError:
        sock.close()
        raise
    conn = http.client.HTTPConnection(ip, port, timeout=3)
    conn.sock = sock  # already connected, from inside the namespace
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


async def http_get(fleet: Fleet, p: SimPod, port: int = 8080, path: str = "/healthz") -> int | str:
    """The status of a real HTTP GET, or 'refused'."""
    try:
        return await asyncio.to_thread(_get, fleet, p.ip, port, path)
    except ConnectionRefusedError:
        return "refused"


def test_readiness_every_marks_opted_in_pods_only() -> None:
    plain = build_pods(FleetSpec(nodes=4, pods_per_node=50))
    pods = build_pods(FleetSpec(nodes=4, pods_per_node=50, readiness_every=2))
    # the same fleet as without the option (same draws), only annotated
    assert [(p.name, p.ip, p.style) for p in pods] == [(p.name, p.ip, p.style) for p in plain]
    assert not any(p.probe for p in plain)
    opted = [p for p in pods if p.opted_in]
    assert [p.readiness for p in opted] == [i % 2 == 1 for i in range(len(opted))]
    assert not any(p.probe for p in pods if not p.opted_in)
    for p in pods:
        annotations = pod_manifest(p)["metadata"].get("annotations", {})
        assert annotations.get(PROBE_ANNOTATION) == ("readiness" if p.readiness else None)
    grpc_pod = next(p for p in pods if p.template == "grpc")
    probe = pod_manifest(grpc_pod)["spec"]["containers"][0]["readinessProbe"]
    assert probe["grpc"] == {"port": 9090, "service": grpc_pod.name}
    assert next(p for p in pods if p.template == "http").app_checked
    assert not next(p for p in pods if p.template == "tcp-number").app_checked


@pytest.fixture
async def app_sim() -> AsyncIterator[SimCluster]:
    async with SimCluster(
        2, 6, netns=True, kubelet_delay=None, ipv6_every=3, readiness_every=1,
        styles={"annotation": 1, "gate": 1}, templates={"http": 1, "grpc": 1, "tcp-number": 1},
    ) as cluster:  # fmt: skip
        yield cluster


@needs_netns
async def test_http_and_grpc_answer_and_follow_app_health(app_sim: SimCluster) -> None:
    fleet = app_sim.fleet
    assert fleet.app_servers and "app" in fleet.capabilities
    assert all(p.readiness for p in fleet.pods)
    web = next(p for p in fleet.pods if p.template == "http" and not p.ipv6)
    web6 = next(p for p in fleet.pods if p.template == "http" and p.ipv6)
    other_web = next(p for p in fleet.pods if p.template == "http" and p not in (web, web6))
    rpc = next(p for p in fleet.pods if p.template == "grpc" and not p.ipv6)
    rpc6 = next(p for p in fleet.pods if p.template == "grpc" and p.ipv6)
    webs = [web, web6, other_web]

    assert [await http_get(fleet, p) for p in webs] == [200] * 3
    assert await http_get(fleet, web, 9100, "/metrics") == 200
    assert await http_get(fleet, web, 8080, "/nope") == 404  # a real server: unknown paths fail
    assert await grpc_check(fleet, (rpc, rpc.name), (rpc6, rpc6.name), (rpc, "no-such-service")) == [
        "SERVING", "SERVING", "NOT_FOUND",
    ]  # fmt: skip

    for p in (web, web6, rpc6):
        fleet.set_app_health(p, False)
    assert [await http_get(fleet, p) for p in webs] == [503, 503, 200]
    assert await http_get(fleet, web, 9100, "/metrics") == 503
    assert await grpc_check(fleet, (rpc, rpc.name), (rpc6, rpc6.name)) == ["SERVING", "NOT_SERVING"]
    for p, port in ((web, 8080), (web, 9100), (web6, 8080), (rpc6, 9090)):  # TCP probes still pass
        assert await connect_from(fleet, p.ip, port, 1.0) == "ok", (p.name, port)
    manifest = app_sim.api.get_pod(web.namespace, web.name) or {}
    assert not fleet.pod_healthy(manifest)  # its kubelet's httpGet readiness probe fails too

    fleet.set_app_health(web, True)
    assert [await http_get(fleet, p) for p in webs] == [200, 503, 200]
    assert fleet.pod_healthy(manifest)
    fleet.reset()
    assert not fleet.sick_pods
    assert [await http_get(fleet, p) for p in webs] == [200] * 3
    assert await grpc_check(fleet, (rpc, rpc.name), (rpc6, rpc6.name)) == ["SERVING", "SERVING"]


@needs_netns
async def test_app_ports_keep_failure_injection_and_defer_accept(app_sim: SimCluster) -> None:
    fleet = app_sim.fleet
    web = next(p for p in fleet.pods if p.template == "http" and not p.ipv6)
    rpc = next(p for p in fleet.pods if p.template == "grpc")
    # TCP_DEFER_ACCEPT on grpcio's socket: a client that connects and sends nothing is not accepted, so
    # the HTTP/2 server never sends its SETTINGS frame (it does at once on a connection it accepts).
    sock = fleet.socket(socket.AF_INET6 if rpc.ipv6 else socket.AF_INET)
    sock.settimeout(0.5)
    try:
        await asyncio.to_thread(sock.connect, (rpc.ip, 9090))
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(sock.recv, 64)
    finally:
        sock.close()
    fleet.close_port(web, 8080)
    assert await http_get(fleet, web) == "refused"
    assert await http_get(fleet, web, 9100, "/metrics") == 200
    fleet.power_off_pod(rpc)
    assert await connect_from(fleet, rpc.ip, 9090, 0.3) == "timeout"
    fleet.reset()
    assert await http_get(fleet, web) == 200
    assert await grpc_check(fleet, (rpc, rpc.name)) == ["SERVING"]


async def test_fallback_without_namespace_serves_per_address() -> None:
    async with SimCluster(
        2, 3, netns=False, kubelet_delay=None, readiness_every=1,
        styles={"annotation": 1}, templates={"http": 1, "grpc": 1},
    ) as sim:  # fmt: skip
        fleet = sim.fleet
        assert fleet.capabilities == frozenset({"close", "app"})
        web = next(p for p in fleet.pods if p.template == "http")
        rpc = next(p for p in fleet.pods if p.template == "grpc")
        others = [p for p in fleet.pods if p.template == "grpc" and p.node != rpc.node]
        assert await http_get(fleet, web) == 200
        fleet.set_app_health(web, False)
        fleet.set_app_health(rpc, False)
        assert await http_get(fleet, web) == 503
        assert await connect_from(fleet, web.ip, 8080, 1.0) == "ok"
        assert await grpc_check(fleet, (rpc, rpc.name)) == ["NOT_SERVING"]
        # a closed HTTP port refuses, and comes back with the application's health as it was
        fleet.close_port(web, 8080)
        assert await http_get(fleet, web) == "refused"
        assert await http_get(fleet, web, 9100, "/metrics") == 503
        fleet.open_port(web, 8080)
        assert await http_get(fleet, web) == 503
        # a powered-off node's gRPC ports refuse (the gRPC server restarts without them); others serve
        fleet.power_off(rpc.node)
        assert await connect_from(fleet, rpc.ip, 9090, 1.0) == "refused"
        assert await grpc_check(fleet, (others[0], others[0].name)) == ["SERVING"]
        fleet.recover(rpc.node)
        assert await grpc_check(fleet, (rpc, rpc.name)) == ["NOT_SERVING"]
        fleet.reset()
        assert await http_get(fleet, web) == 200
        assert await grpc_check(fleet, (rpc, rpc.name)) == ["SERVING"]


async def test_tcp_only_fleet_has_no_app_servers() -> None:
    async with SimCluster(1, 4, netns=False, kubelet_delay=None) as sim:
        assert not sim.fleet.app_servers and sim.fleet.capabilities == frozenset({"close"})
        with pytest.raises(Unsupported):
            sim.fleet.set_app_health(sim.fleet.pods[0], False)
