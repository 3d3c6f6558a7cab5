"""The coordinator in-process, without root: the real controller, real worker processes, the real
kubernetes_asyncio client over HTTP, against the simulated cluster without a network namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from helpers import conditions_are, until

from ehc.coordinator import metrics
from ehc.coordinator.controller import Controller
from ehc.coordinator.settings import load
from ehc.kube.client import make_api_client
from ehc.sim import SimCluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def scrape(url: str) -> tuple[int, dict[str, float]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return resp.status, samples


async def status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


@contextlib.asynccontextmanager
async def serving(sim: SimCluster, identity: str = "ehc-status") -> AsyncIterator[tuple[Controller, str]]:
    """The controller leading, with its metrics server, once every gate pod has its first value."""
    settings = load(None, env={"POD_NAME": identity, "POD_NAMESPACE": "default", "EHC_METRICS_ADDRESS": ""})
    client = await make_api_client(sim.kubeconfig)
    controller = Controller(settings, client)
    port = free_port()
    runner = await metrics.serve(controller, f"127.0.0.1:{port}")
    task = asyncio.create_task(controller.run())
    try:
        await until(conditions_are(sim.api, [p for p in sim.fleet.targets() if p.style == "gate"], "True"))
        await until(lambda: controller.pool is not None and len(controller.pool.stats) == 1)
        yield controller, f"http://127.0.0.1:{port}"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
        await client.close()


async def test_controller_and_metrics_in_process(caplog: pytest.LogCaptureFixture) -> None:
    async with SimCluster(nodes=2, pods_per_node=8, kubelet_delay=None, netns=False) as sim:
        fleet, api = sim.fleet, sim.api
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        async with serving(sim, "ehc-in-process") as (controller, base):
            assert await status(f"{base}/healthz") == 200
            assert await status(f"{base}/readyz") == 200
            code, samples = await scrape(f"{base}/metrics")
            assert code == 200
            assert sum(v for k, v in samples.items() if k.startswith("ehc_targets{")) == len(fleet.targets())
            assert samples["ehc_leader"] == 1 and samples["ehc_failsafe_engaged"] == 0
            assert samples["ehc_failsafe_held_ejections"] == 0
            assert sum(v for k, v in samples.items() if k.startswith("ehc_probes_total{")) > 0
            assert samples['ehc_patches_total{outcome="ok"}'] == len(gate_pods)

            victim = next(p for p in fleet.targets() if p.ports)
            fleet.close_port(victim, victim.ports[0])  # refused at once: the app is down, the node is up
            await until(lambda: (victim.namespace, victim.name) in api.write_log.first_taken_out())
            await asyncio.sleep(0.5)
            assert api.write_log.first_taken_out().keys() == {(victim.namespace, victim.name)}
            _, samples = await scrape(f"{base}/metrics")
            # Gate pods went from unknown to healthy, the victim to unhealthy; the annotation pods
            # started from the Ready=True they showed, so their first answers were no transitions.
            assert samples["ehc_transitions_total"] == len(gate_pods) + 1
        lease = api.collections[("coordination.k8s.io", "v1", "leases")].get(
            "default", controller.settings.lease_name
        )
        assert lease is not None and not lease["spec"].get("holderIdentity")  # released on the way out
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not leading")]
        # its last word is that it shuts down, not that it stands by
        assert said and all(m.startswith("not leading: shutting down") for m in said), said


async def test_a_leader_that_cannot_run_its_workers_gives_the_lease_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Replica a's workers cannot start (their interpreter dies at once); b's can.  a must not sit on the
    # Lease probing nothing: it says why, hands the Lease over, and b protects the pods.
    env = {"POD_NAMESPACE": "default", "EHC_METRICS_ADDRESS": "", "LEASE_DURATION": "2s", "RENEW_DEADLINE": "1s",
           "RETRY_PERIOD": "250ms"}  # fmt: skip
    async with SimCluster(nodes=1, pods_per_node=8, kubelet_delay=None, netns=False) as sim:
        gate_pods = [p for p in sim.fleet.targets() if p.style == "gate"]
        clients = [await make_api_client(sim.kubeconfig) for _ in range(2)]
        broken = {**os.environ, "PYTHONHOME": "/nonexistent"}
        a = Controller(load(None, env={**env, "POD_NAME": "ehc-a"}), clients[0], worker_env=broken)
        b = Controller(load(None, env={**env, "POD_NAME": "ehc-b"}), clients[1])
        tasks = [asyncio.create_task(a.run())]
        try:
            await until(a.elector.is_leader, "a leading")
            assert not a.ready  # leading without workers is not ready
            tasks.append(asyncio.create_task(b.run()))
            await until(lambda: a.elector.give_ups >= 1, "a giving up")
            await until(b.elector.is_leader, "b leading")
            await until(conditions_are(sim.api, gate_pods, "True"), "b setting the gate pods' first values")
            await until(lambda: b.ready, "b ready: its workers probe")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.close()
    said = [r.getMessage() for r in caplog.records if "cannot lead" in r.getMessage()]
    # (the exit code itself is not asserted: asyncio reports 255 when it loses the race to reap a child)
    assert (
        said
        and re.search(r"exited with code -?\d+ 3 times before it was ready", said[0])
        and "giving lease" in said[0]
    )


async def test_readiness_mode_ejects_pods_whose_app_says_no_while_their_ports_accept() -> None:
    """Pods whose HTTP endpoint answers 503 or whose gRPC health says NOT_SERVING, ports still open:
    only those in readiness mode are ejected; their twins in tcp mode stay in, as a connect succeeds.
    The fleet's servers are aiohttp and grpcio's own health servicer, in their own process."""
    env = {"POD_NAME": "ehc-readiness", "POD_NAMESPACE": "default", "EHC_METRICS_ADDRESS": ""}
    async with SimCluster(
        nodes=2, pods_per_node=8, netns=False, kubelet_delay=None, readiness_every=2,
        styles={"annotation": 1, "gate": 1}, templates={"http": 1, "grpc": 1, "tcp-number": 1},
    ) as sim:  # fmt: skip
        fleet, api = sim.fleet, sim.api
        targets = fleet.targets()
        web = next(p for p in targets if p.readiness and p.template == "http")
        rpc = next(p for p in targets if p.readiness and p.template == "grpc")
        twins = [p for p in targets if not p.readiness and p.template in ("http", "grpc")]
        assert twins, "the fleet has tcp-mode pods serving HTTP or gRPC"
        client = await make_api_client(sim.kubeconfig)
        controller = Controller(load(None, env=env), client)
        task = asyncio.create_task(controller.run())
        try:
            gate_pods = [p for p in targets if p.style == "gate"]
            await until(conditions_are(api, gate_pods, "True"), "every gate pod's first value")
            kinds = {key: t.kind for key, t in ((k, r.target) for k, r in controller.pods._pods.items())}
            assert kinds[f"{web.namespace}/{web.name}"] == "http"
            assert kinds[f"{rpc.namespace}/{rpc.name}"] == "grpc"
            for pod in (web, rpc, *twins):
                fleet.set_app_health(pod, False)
            await until(lambda: {web.key, rpc.key} <= api.write_log.first_taken_out().keys(), "the ejections")
            await asyncio.sleep(1.5)  # a few more intervals: nothing else goes
            assert api.write_log.first_taken_out().keys() == {web.key, rpc.key}
            said = {e.name: e.body for e in api.write_log.select(resource="pods", subresource="status", ok=True)
                    if e.name in (web.name, rpc.name) and "False" in str(e.body)}  # fmt: skip
            assert "HTTP 503" in str(said[web.name]) and "health status NOT_SERVING" in str(said[rpc.name])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
