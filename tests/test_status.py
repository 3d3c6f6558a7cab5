"""The status view (``/status``, ``/status.json``, ``ehc status``) on the real controller, real worker
processes and the real client, against the simulated cluster without a network namespace."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import aiohttp
import msgspec
import pytest
from helpers import until
from test_controller import free_port, serving

from ehc.coordinator import metrics
from ehc.coordinator.status import Status, namespace_of
from ehc.sim import SimCluster

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy/helm/endpoint-health-checker"


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def status_of(base: str, query: str = "") -> Status:
    code, body = await get(f"{base}/status.json{query}")
    assert code == 200, body
    return msgspec.json.decode(body, type=Status)  # the schema: every field, with its type


async def ehc_status(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ehc",
        "status",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_namespace_of_every_kind_of_key() -> None:
    assert namespace_of("shop/web-1") == "shop"
    assert namespace_of("EndpointSlice/shop/db-abc/10.0.0.7") == "shop"
    assert namespace_of("Endpoints/shop/db") == "shop"


async def test_status_page_json_and_cli_show_an_unhealthy_pod_with_its_evidence() -> None:
    async with (
        SimCluster(nodes=2, pods_per_node=8, kubelet_delay=None, netns=False) as sim,
        serving(sim) as (controller, base),
    ):
        fleet, api, settings = sim.fleet, sim.api, controller.settings
        s = await status_of(base)
        assert s.role.leading and s.role.identity == "ehc-status" and s.role.leader == "ehc-status"
        assert s.role.term_started is not None and s.role.term_started <= s.at
        assert s.targets.total == len(fleet.targets()) and s.not_healthy == [] and s.not_healthy_total == 0
        assert not s.failsafe.engaged and s.failsafe.total == len(fleet.targets())
        assert {n.name for n in s.nodes} == {"sim-node-000", "sim-node-001"}
        assert sum(n.targets for n in s.nodes) == len(fleet.targets())
        assert [w.up for w in s.workers] == [True]
        code, _, err = await ehc_status("--url", base)
        assert code == 0, err

        victim = next(p for p in fleet.targets() if p.ports and p.style == "annotation")
        key = f"{victim.namespace}/{victim.name}"
        fleet.close_port(victim, victim.ports[0])  # refused at once: the app is down, the node is up
        await until(lambda: (victim.namespace, victim.name) in api.write_log.first_taken_out())
        await until(lambda: controller.writes.queue_depth == 0 and controller.writes.in_flight == 0)
        s = await status_of(base)
        [row] = s.not_healthy
        assert (row.key, row.object, row.state, row.namespace) == (
            key,
            f"Pod {key}",
            "unhealthy",
            victim.namespace,
        )
        assert row.evidence is not None and row.evidence.detail == "connrefused"
        assert row.evidence.attempts == 1 + settings.probe.retry_count and not row.evidence.node_verdict
        assert row.evidence.took > 0 and row.since is not None and row.node == victim.node
        assert "Ready=False" in row.shows and row.write.startswith("ok at")
        assert any(t.key == key and t.health == "unhealthy" for t in s.transitions)
        assert any(w.key == key and w.outcome == "ok" and "Ready=False" in w.summary for w in s.writes)

        # Filters: another namespace, another state, a limit; a state that is none is refused.
        other = next(ns for ns in {p.namespace for p in fleet.targets()} if ns != victim.namespace)
        s = await status_of(base, f"?namespace={other}")
        assert s.not_healthy == [] and s.namespace == other
        assert all(t.namespace == other for t in s.transitions) and all(
            w.namespace == other for w in s.writes
        )
        assert (await status_of(base, "?state=suspect")).not_healthy == []
        s = await status_of(base, "?limit=0")
        assert s.not_healthy == [] and s.not_healthy_total == 1
        code, body = await get(f"{base}/status.json?state=dead")
        assert code == 400 and "state must be one of" in body

        # The page: the row with its evidence, and what comes from a request escaped.
        code, page = await get(f"{base}/status?namespace=%3Cscript%3Ealert(1)%3C/script%3E")
        assert code == 200 and page.count("<script>") == 1  # its own refresh only
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        code, page = await get(f"{base}/status")
        assert key in page and "connrefused" in page and "Fail-safe off" in page

        # ehc status: 1 while something is unhealthy; the namespace filter; json as served.
        code, out, err = await ehc_status("--url", base)
        assert code == 1, err
        assert re.search(rf"unhealthy\s+Pod {re.escape(key)}\s+{victim.node}\s+connrefused", out), out
        code, out, _ = await ehc_status("--url", base, "--namespace", other, "--unhealthy")
        assert code == 0 and "No target is unhealthy" in out
        code, out, _ = await ehc_status("--url", base, "-o", "json")
        assert code == 1 and msgspec.json.decode(out, type=Status).not_healthy[0].key == key
        code, out, _ = await ehc_status("--url", base, "-o", "wide")
        assert code == 1 and "WORKER" in out and "connrefused" in out

        # Many pages at once are throttled, not served at any cost.
        codes = await asyncio.gather(*(get(f"{base}/status.json") for _ in range(3 * metrics.STATUS_BURST)))
        assert {c for c, _ in codes} == {200, 429}

        # Every series the chart's dashboard and alerts query is one ehc exports.
        _, text = await get(f"{base}/metrics")
        exported = {re.split(r"[{ ]", line)[0] for line in text.splitlines() if line.startswith("ehc_")}
        exported |= {name.removesuffix("_bucket") for name in exported}  # a histogram's own name
        dashboard = (CHART / "dashboards/ehc.json").read_text()
        rules = (CHART / "templates/prometheusrule.yaml").read_text()
        queried = set(re.findall(r"\behc_[a-z0-9_]*[a-z0-9]", dashboard + rules))
        assert queried and queried <= exported, sorted(queried - exported)


async def test_ejections_the_fail_safe_holds_are_shown_held_and_why() -> None:
    async with (
        SimCluster(nodes=2, pods_per_node=8, kubelet_delay=None, netns=False) as sim,
        serving(sim) as (controller, base),
    ):
        with_ports = [p for p in sim.fleet.targets() if p.ports]
        assert len(with_ports) > controller.settings.failsafe_share * len(sim.fleet.targets())
        for pod in with_ports:  # most of the fleet refuses at once: likelier ehc's own trouble
            sim.fleet.close_port(pod, pod.ports[0])
        await until(  # all of them: the lists compared below stay still
            lambda: controller.decider.failsafe and controller.decider.held == len(with_ports),
            "the fail-safe holding every ejection",
        )
        s = await status_of(base)
        assert s.failsafe.engaged and s.failsafe.held == controller.decider.held
        held = [r for r in s.not_healthy if r.state == "held"]
        assert held and all(r.why == "the fail-safe holds ejections" for r in held)
        assert {r.key for r in held} <= {f"{p.namespace}/{p.name}" for p in with_ports}
        assert [r.key for r in (await status_of(base, "?state=held")).not_healthy] == [r.key for r in held]
        _, page = await get(f"{base}/status")
        assert "FAIL-SAFE ENGAGED" in page
        code, out, _ = await ehc_status("--url", base)
        assert code == 1 and "FAIL-SAFE   ENGAGED" in out and "the fail-safe holds ejections" in out


async def test_ehc_status_says_what_to_try_when_it_cannot_reach_ehc() -> None:
    code, out, err = await ehc_status("--url", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 2 and out == ""
    assert "cannot reach ehc" in err and "kubectl -n endpoint-health-checker port-forward" in err


@pytest.mark.parametrize("body", [b"<html>not ehc</html>", json.dumps({"version": 1}).encode()])
async def test_ehc_status_refuses_what_is_not_ehcs_status(body: bytes) -> None:
    async def serve(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(body=body)

    app = aiohttp.web.Application()
    app.router.add_get("/status.json", serve)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        code, _, err = await ehc_status("--url", f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
    assert code == 2 and "is not ehc's status" in err
