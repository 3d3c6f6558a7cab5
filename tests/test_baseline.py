"""``perf/baseline.py``, the reference-design checker the load-test harness compares ehc with: its pure
parts (ports, conditions, settings) here, and the design's properties end to end against the
simulated cluster (a real process inside its network namespace, the API server as the witness)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
import time
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from helpers import conditions_are, stop, until

from ehc.kube.model import Pod
from ehc.sim import SimCluster
from ehc.sim import netns as sim_netns
from ehc.sources.pods import Mode

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "perf" / "baseline.py"
GATE = "endpointHealthCheckSuccess"
STANDARD = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("ehc_perf_baseline", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


baseline = _load()

needs_netns = pytest.mark.skipif(
    not sim_netns.available()[0], reason=f"needs a network namespace: {sim_netns.available()[1]}"
)


# ---- pure parts --------------------------------------------------------------------------------


def pod(containers: list[dict], *, gate: bool = False, conditions: list[dict] | None = None) -> Pod:  # type: ignore[type-arg]
    spec: dict = {"nodeName": "n1", "containers": containers}  # type: ignore[type-arg]
    meta: dict = {"name": "p", "namespace": "ns", "uid": "u1"}  # type: ignore[type-arg]
    if gate:
        spec["readinessGates"] = [{"conditionType": GATE}]
    else:
        meta["annotations"] = {"endpoint-health-checker.io/enabled": "true"}
    obj = {
        "metadata": meta,
        "spec": spec,
        "status": {"phase": "Running", "podIP": "10.0.0.7", "conditions": conditions or []},
    }
    return msgspec.json.decode(msgspec.json.encode(obj), type=Pod)


def test_only_numeric_probe_ports_count_and_a_pod_left_without_one_is_pinged() -> None:
    c = {
        "name": "app",
        "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 15000}],
        "readinessProbe": {"httpGet": {"port": "http"}},  # named: IntVal 0, skipped
        "livenessProbe": {"tcpSocket": {"port": 9100}},
    }
    sidecar = {
        "name": "side",
        "readinessProbe": {"grpc": {"port": 9090}},
        "livenessProbe": {"tcpSocket": {"port": 9100}},
    }
    t = baseline.target_of(pod([c, sidecar]))
    assert t.ports == (9100, 9090)  # deduplicated, in the order they are checked
    assert (t.ip, t.mode, t.key) == ("10.0.0.7", Mode.ANNOTATION, "ns/p")
    # Only a named port (or a number written as a string, also IntVal 0): no port left, so ICMP.
    named = {
        "name": "db",
        "ports": [{"name": "pg", "containerPort": 5432}],
        "readinessProbe": {"tcpSocket": {"port": "pg"}},
    }
    quoted = {"name": "x", "readinessProbe": {"tcpSocket": {"port": "8080"}}}
    assert baseline.target_of(pod([named])).ports == ()
    assert baseline.target_of(pod([quoted])).ports == ()
    # ehc's own opt-in and eligibility rules apply: no opt-in, no target.
    plain = pod([c])
    plain.metadata.annotations.clear()
    assert baseline.target_of(plain) is None


def _conds(*pairs: tuple[str, str]) -> list:  # type: ignore[type-arg]
    return pod([], conditions=[{"type": t, "status": s} for t, s in pairs]).status.conditions


def test_the_whole_condition_list_is_written_back_and_only_when_something_changes() -> None:
    ready = _conds(*[(t, "True") for t in STANDARD])
    # Annotation mode: Ready=False on failure, nothing at all on success.
    assert baseline.new_conditions(ready, Mode.ANNOTATION, True) is None
    out = baseline.new_conditions(ready, Mode.ANNOTATION, False, now="2026-01-01T00:00:00Z")
    assert [c.type for c in out] == STANDARD  # every condition, in place
    assert {c.type: c.status for c in out} == {**dict.fromkeys(STANDARD, "True"), "Ready": "False"}
    r = out[STANDARD.index("Ready")]
    assert (r.reason, r.lastTransitionTime) == ("EndpointUnhealthy", "2026-01-01T00:00:00Z")
    assert out[0] is ready[0]  # untouched conditions are sent back exactly as read
    assert baseline.new_conditions(out, Mode.ANNOTATION, False) is None  # already False: no write
    # Gate mode: the gate is appended when absent; failure sets the gate and Ready False.
    new = _conds(*[(t, "False" if t == "Ready" else "True") for t in STANDARD])
    first = baseline.new_conditions(new, Mode.GATE, True)
    assert [c.type for c in first] == [*STANDARD, GATE] and first[-1].status == "True"
    assert first[STANDARD.index("Ready")].status == "False"  # Ready is the kubelet's to set
    assert baseline.new_conditions(first, Mode.GATE, True) is None
    down = baseline.new_conditions(first, Mode.GATE, False)
    assert {c.type: c.status for c in down}[GATE] == "False"
    assert {c.type: c.status for c in down}["Ready"] == "False"
    body = baseline.patch_body(down)
    assert [c["type"] for c in body["status"]["conditions"]] == [*STANDARD, GATE]


def test_settings_flags_over_environment_over_defaults() -> None:
    o = baseline.parse_options([], env={})
    assert (o.interval, o.timeout, o.retry_count, o.concurrency) == (1.0, 1.0, 10, 10)
    assert o.namespace == "default" and o.lease_name == "endpoint-health-checker-baseline"
    env = {"HEALTH_CHECK_INTERVAL": "300ms", "HEALTH_CHECK_TIMEOUT": "2s", "HEALTH_CHECK_RETRY_COUNT": "3",
           "HEALTH_CHECK_CONCURRENCY": "4", "POD_NAME": "me", "POD_NAMESPACE": "ops"}  # fmt: skip
    o = baseline.parse_options([], env=env)
    assert (o.interval, o.timeout, o.retry_count, o.concurrency, o.identity, o.namespace) == (
        0.3, 2.0, 3, 4, "me", "ops",
    )  # fmt: skip
    o = baseline.parse_options(["--retry-count", "2", "--concurrency", "2", "--timeout", "300ms"], env=env)
    assert (o.interval, o.timeout, o.retry_count, o.concurrency) == (0.3, 0.3, 2, 2)
    for bad in (["--interval", "1x"], ["--concurrency", "0"], ["--retry-count", "-1"], ["--timeout", "0s"]):
        with pytest.raises(SystemExit) as exc:
            baseline.parse_options(bad, env={})
        assert exc.value.code == 2


# ---- end to end --------------------------------------------------------------------------------


async def start_baseline(sim: SimCluster, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *sim.exec_prefix(), sys.executable, str(SCRIPT), "--kubeconfig", sim.kubeconfig,
        "--identity", "baseline-a", "--namespace", "default", "--lease-duration", "2s",
        "--renew-deadline", "1s", "--retry-period", "250ms", *args,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


def marked_unready(sim: SimCluster) -> dict[tuple[str, str], float]:
    """Pods taken out of service, by what each write changed (the baseline re-sends whole lists)."""
    return sim.api.write_log.first_taken_out()


def record_requests(sim: SimCluster) -> list[tuple[float, str, str]]:
    """Every request the API server answers, (monotonic time, method, path), in arrival order."""
    seen: list[tuple[float, str, str]] = []
    handle = sim.api._handle

    async def recording(request: web.Request) -> web.StreamResponse:
        seen.append((time.monotonic(), request.method, request.path))
        return await handle(request)

    sim.api._handle = recording  # type: ignore[method-assign]  # bound into the route by start()
    return seen


@needs_netns
async def test_power_off_is_written_by_get_then_patch_of_the_whole_condition_list() -> None:
    sim = SimCluster(nodes=3, pods_per_node=8, kubelet_delay=None)
    seen = record_requests(sim)
    async with sim:
        fleet, api = sim.fleet, sim.api
        proc = await start_baseline(sim, "--interval", "300ms", "--timeout", "200ms", "--retry-count", "1")
        try:
            await until(
                conditions_are(sim.api, [p for p in sim.fleet.targets() if p.style == "gate"], "True")
            )  # the gate's first value, True, for every gate pod
            assert marked_unready(sim) == {}
            victim = "sim-node-000"
            on_victim = {p.key for p in fleet.pods_on(victim) if p.opted_in}
            assert any(p.style == "gate" for p in fleet.pods_on(victim) if p.opted_in)
            fleet.power_off(victim)
            await until(lambda: on_victim <= marked_unready(sim).keys())
            await asyncio.sleep(0.6)
            assert marked_unready(sim).keys() == on_victim  # nobody else
        finally:
            assert await stop(proc) == 0

        patches = api.write_log.select(resource="pods", subresource="status", actor="client")
        assert len(patches) >= len(on_victim) + len([p for p in fleet.targets() if p.style == "gate"])
        # Every PATCH carries every condition the pod has (the read-modify-write of the whole list).
        for e in patches:
            sent = [c["type"] for c in e.conditions()]
            stored = [c["type"] for c in api.get_pod(e.namespace, e.name)["status"]["conditions"]]
            assert len(sent) == len(set(sent)) and set(sent) == set(stored), (e.name, sent, stored)
            assert set(STANDARD) <= set(sent)
        # ... and is preceded by a GET of that pod since its previous PATCH.
        got: set[str] = set()
        n = 0
        for _, method, path in seen:
            if not path.startswith("/api/v1/namespaces/") or not path.endswith("/status"):
                continue
            if method == "GET":
                got.add(path)
            elif method == "PATCH":
                n += 1
                assert path in got, f"PATCH {path} without a GET before it"
                got.discard(path)
        assert n == len(patches)


@needs_netns
async def test_a_dead_node_is_marked_in_waves_by_the_fixed_pool() -> None:
    retry, timeout = 2, 0.3
    async with SimCluster(
        nodes=2, pods_per_node=20, kubelet_delay=None, styles={"annotation": 1, "gate": 1}
    ) as sim:
        fleet = sim.fleet
        victim = "sim-node-000"
        on_victim = {p.key for p in fleet.pods_on(victim) if p.opted_in}
        assert len(on_victim) == 20
        proc = await start_baseline(
            sim, "--interval", "300ms", "--timeout", f"{int(timeout * 1000)}ms",
            "--retry-count", str(retry), "--concurrency", "2",
        )  # fmt: skip
        try:
            await until(
                conditions_are(sim.api, [p for p in sim.fleet.targets() if p.style == "gate"], "True")
            )
            fleet.power_off(victim)
            await until(lambda: on_victim <= marked_unready(sim).keys(), limit=30)
        finally:
            assert await stop(proc) == 0
        marked = marked_unready(sim)
        assert marked.keys() == on_victim
        # Two workers, each held (retry + 1) × timeout per dead pod: ten waves, not one.
        times = sorted(marked.values())
        assert times[-1] - times[0] > 2 * (retry + 1) * timeout, times


@needs_netns
async def test_named_ports_are_not_checked_the_pod_is_pinged_instead() -> None:
    async with SimCluster(
        nodes=1, pods_per_node=8, kubelet_delay=None, styles={"annotation": 1},
        templates={"tcp-named": 1, "tcp-number": 1},
    ) as sim:  # fmt: skip
        fleet = sim.fleet
        named = next(p for p in fleet.targets() if p.template == "tcp-named")  # port "postgres" = 5432
        number = next(p for p in fleet.targets() if p.template == "tcp-number")  # port 8080
        proc = await start_baseline(sim, "--interval", "300ms", "--timeout", "200ms", "--retry-count", "1")
        try:
            await asyncio.sleep(1.0)  # a few rounds of checks, all healthy
            assert marked_unready(sim) == {}
            fleet.close_port(named, 5432)  # the app is down on its named port: the baseline cannot see it
            fleet.close_port(number, 8080)
            await until(lambda: number.key in marked_unready(sim))
            await asyncio.sleep(1.5)  # five more rounds
            assert marked_unready(sim).keys() == {number.key}
            fleet.power_off_pod(named)  # the address goes silent: the ping fails
            await until(lambda: named.key in marked_unready(sim))
        finally:
            assert await stop(proc) == 0
