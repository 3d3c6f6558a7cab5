"""The scenarios: each starts a fresh simulated cluster, runs one checker against it (ehc or the
baseline, as real processes), breaks something, and returns its figures, measured on the API
server's write log and from ``/proc``, under keys that say what they are.

Every cluster starts settled, as a long-running one would be: gate pods already have their gate
True and are Ready, so a checker starting up has nothing to write, and any write is a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import baseline

from ehc.kube.model import GATE, READY
from ehc.sim import SimCluster
from ehc.sim.fleet import SimPod
from loadtest.checkers import CheckerSpec, Replica, Snapshot, start_replicas, stop_replicas

Key = tuple[str, str]
Figures = dict[str, Any]
POD_BY_NAME = r"/pods/[^/]+(/status)?$"  # one pod (GET) or its status (PATCH); not lists or watches


@dataclass
class Options:
    """What every scenario shares; durations in seconds."""

    nodes: int = 50
    pods_per_node: int = 100
    steady_seconds: float = 30.0
    flap_rounds: int = 20  # brief outages per flapping pod
    flap_cycles: int = 3  # long outages per flapping pod
    loss: tuple[tuple[int, float], ...] = ((2, 300.0), (5, 120.0))  # (percent, seconds)
    trouble_seconds: float = 30.0
    cap: float = 150.0  # give up waiting for detections after this long (the baseline needs it)
    scale_sizes: tuple[int, ...] = (1_000, 5_000, 10_000, 20_000)
    scale_workers: tuple[int, ...] = (1, 2, 4)
    scale_seconds: float = 10.0
    log_dir: Path = Path("perf/out/logs")
    progress: Callable[[str], None] = field(default=lambda _text: None)


# ---- the cluster and the checker ---------------------------------------------------------------


def settle_gates(sim: SimCluster) -> None:
    """Give every gate pod its gate True and Ready True, as a previous leader and the kubelet would have."""
    for p in sim.fleet.targets():
        if p.style == "gate":
            sim.api.set_pod_condition(p.namespace, p.name, GATE, "True", actor="sim")
            sim.api.set_pod_condition(p.namespace, p.name, READY, "True", actor="sim")


@contextlib.asynccontextmanager
async def running(
    opts: Options, spec: CheckerSpec, tag: str, *, replicas: int = 1, nodes: int | None = None,
    pods_per_node: int | None = None,
) -> AsyncIterator[tuple[SimCluster, list[Replica]]]:  # fmt: skip
    """A fresh settled cluster with ``replicas`` copies of the checker running, warmed up."""
    async with SimCluster(
        nodes=nodes or opts.nodes, pods_per_node=pods_per_node or opts.pods_per_node, kubelet_delay=1.0
    ) as sim:
        settle_gates(sim)
        reps = await start_replicas(spec, sim, replicas, opts.log_dir, tag)
        try:
            await warm_up(sim, reps, opts)
            yield sim, reps
        finally:
            await stop_replicas(reps)


async def warm_up(sim: SimCluster, reps: list[Replica], opts: Options) -> Replica:
    """Wait until one replica leads and probes every target; return it (the leader)."""
    expected = len(sim.fleet.targets())
    deadline = time.monotonic() + 60 + expected / 200
    while True:
        for r in reps:
            if not r.alive:
                raise RuntimeError(
                    f"{r.identity} exited with {r.proc.returncode if r.proc else '?'}; see {r.log_path}"
                )
            s = await r.snapshot()
            if s.leader and s.targets == expected and ready(r, s, expected):
                await asyncio.sleep(r.spec.interval)  # a round of steady state
                return r
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{reps[0].spec.kind} did not pick up all {expected} targets; see {opts.log_dir}"
            )
        await asyncio.sleep(0.5)


def ready(r: Replica, s: Snapshot, expected: int) -> bool:
    if r.spec.kind == "baseline":
        return s.probes >= expected  # a full round
    return (
        s.worker_targets == expected
        and len(s.probes_by_worker) == r.spec.workers
        and all(n > 0 for n in s.probes_by_worker.values())
    )


async def leader_of(reps: list[Replica]) -> Replica:
    for r in reps:
        if (await r.snapshot()).leader:
            return r
    raise RuntimeError("no replica leads")


# ---- what the write log says --------------------------------------------------------------------


def taken_out(sim: SimCluster, since: float) -> dict[Key, float]:
    return sim.api.write_log.first_taken_out(since)


def pod_writes(sim: SimCluster, since: float, keys: set[Key] | None = None) -> list[Any]:
    """The checker's write requests to pods since ``since`` (whatever the answer)."""
    return [
        e for e in sim.api.write_log.entries
        if e.mono >= since and e.actor == "client" and e.resource == "pods"
        and (keys is None or (e.namespace, e.name) in keys)
    ]  # fmt: skip


def pod_reads(sim: SimCluster) -> int:
    return sim.api.count_requests("GET", "pods", named=True)


async def detections(
    sim: SimCluster, faults: dict[Key, float], cap: float
) -> tuple[list[float], list[Key], set[Key]]:
    """Seconds from each pod's fault to its first taken-out write; the pods not taken out within ``cap``;
    and, after a moment for stragglers, the pods taken out that had no fault (wrongly marked)."""
    since = min(faults.values())
    deadline = since + cap
    while not faults.keys() <= taken_out(sim, since).keys() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # anything wrongly marked would show up now
    m = taken_out(sim, since)
    found = sorted(m[k] - faults[k] for k in faults if k in m)
    return found, sorted(k for k in faults if k not in m), m.keys() - faults.keys()


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    p99 = values[0] if len(values) == 1 else statistics.quantiles(values, n=100, method="inclusive")[98]
    return {"p50": round(statistics.median(values), 3), "p99": round(p99, 3), "max": round(max(values), 3)}


def victims_of(sim: SimCluster, nodes: list[str]) -> list[SimPod]:
    return [p for n in nodes for p in sim.fleet.pods_on(n) if p.opted_in]


def power_off(sim: SimCluster, nodes: list[str]) -> dict[Key, float]:
    """Power the nodes off one after another; each victim pod's fault time is its node's."""
    faults: dict[Key, float] = {}
    for node in nodes:
        t = time.monotonic()
        sim.fleet.power_off(node)
        faults.update({p.key: t for p in sim.fleet.pods_on(node) if p.opted_in})
    return faults


def reference_model_seconds(victims: int, spec: CheckerSpec) -> float | None:
    """The design note's estimate for the reference: ⌈victims / concurrency⌉ × (retries + 1) × timeout,
    with the baseline's defaults (the harness runs it with them)."""
    if spec.kind != "baseline":
        return None
    o = baseline.Options()
    return math.ceil(victims / o.concurrency) * (o.retry_count + 1) * o.timeout


async def sleep_with_progress(opts: Options, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        opts.progress(f"{what}: {left:.0f}s left")
        await asyncio.sleep(min(1.0, left))


# ---- 1. steady state ----------------------------------------------------------------------------


def scheduled_rate(sim: SimCluster, interval: float) -> float:
    """Probe attempts per second the schedule asks for: one per port (one ping without ports) per interval."""
    return sum(max(1, len(p.ports)) for p in sim.fleet.targets()) / interval


def steady_figures(sim: SimCluster, r: Replica, a: Snapshot, b: Snapshot, samples: list[Snapshot],
                   interval: float) -> Figures:  # fmt: skip
    """Rates, lag, CPU and memory between two snapshots of the same replica."""
    seconds = b.mono - a.mono
    probes = b.probes - a.probes
    targets = len(sim.fleet.targets())
    if r.spec.kind == "baseline":  # its schedule is one check per target per interval, whatever the ports
        scheduled, done = targets / interval, b.checks - a.checks
    else:
        scheduled, done = scheduled_rate(sim, interval), probes
    cpu_coord = (
        (b.coordinator.cpu_seconds - a.coordinator.cpu_seconds) if a.coordinator and b.coordinator else 0.0
    )
    before = {w.pid: w.cpu_seconds for w in a.workers}
    cpu_workers = sum(w.cpu_seconds - before.get(w.pid, 0.0) for w in b.workers)
    per_k = 1000 / probes if probes else float("nan")
    out: Figures = {
        "targets": targets,
        "seconds": round(seconds, 1),
        # ehc schedules a probe per port per interval; the baseline a check (1+ attempts) per target.
        "scheduled_per_second": round(scheduled),
        "done_per_second": round(done / seconds),
        "done_ratio": round(done / seconds / scheduled, 4),
        "probes_per_second": round(probes / seconds),
        "cpu_seconds_per_1000_probes": {
            "coordinator": round(cpu_coord * per_k, 4),
            "workers": round(cpu_workers * per_k, 4),
            "total": round((cpu_coord + cpu_workers) * per_k, 4),
        },
        "cpu_percent": {"coordinator": round(100 * cpu_coord / seconds, 1), "workers": round(100 * cpu_workers / seconds, 1)},
        "rss_mb": {
            "coordinator": round(b.coordinator.rss_bytes / 2**20, 1) if b.coordinator else None,
            "workers": [round(w.rss_bytes / 2**20, 1) for w in b.workers],
        },
    }  # fmt: skip
    if r.spec.kind == "ehc":
        p50s = [x for s in samples for x in s.lag_p50]
        p99s = [x for s in samples for x in s.lag_p99]
        out["schedule_lag_ms"] = {
            "p50": round(1000 * statistics.median(p50s), 2) if p50s else None,
            "p99_median": round(1000 * statistics.median(p99s), 2) if p99s else None,
            "p99_max": round(1000 * max(p99s), 2) if p99s else None,
        }
        out["skipped_probes"] = b.skipped - a.skipped
        out["pipe_frames_per_second"] = round((b.pipe_frames - a.pipe_frames) / seconds, 1)
        out["pipe_bytes_per_second"] = round((b.pipe_bytes - a.pipe_bytes) / seconds)
    return out


async def measure_steady(sim: SimCluster, r: Replica, seconds: float, opts: Options, what: str) -> Figures:
    reads0, t0 = pod_reads(sim), time.monotonic()
    a = await r.snapshot()
    samples = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        opts.progress(f"{what}: {end - time.monotonic():.0f}s left")
        await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
        samples.append(await r.snapshot())
    b = samples[-1] if samples else await r.snapshot()
    out = steady_figures(sim, r, a, b, samples, r.spec.interval)
    out["api_writes"] = len(pod_writes(sim, t0))
    out["api_pod_reads"] = pod_reads(sim) - reads0
    return out


async def steady(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    async with running(opts, spec, tag) as (sim, reps):
        out = await measure_steady(sim, reps[0], opts.steady_seconds, opts, f"{tag} steady state")
        out["rss_bytes_per_target"] = rss_per_target(out, spec)
        return out


def rss_per_target(out: Figures, spec: CheckerSpec) -> dict[str, float | None]:
    """Whole-process RSS over targets: an upper bound; the scale scenario gives the marginal cost."""
    rss, targets = out["rss_mb"], out["targets"]
    per_worker = targets / max(1, spec.workers)
    workers = rss["workers"]
    return {
        "coordinator": round(rss["coordinator"] * 2**20 / targets) if rss["coordinator"] else None,
        "worker": round(statistics.mean(workers) * 2**20 / per_worker) if workers else None,
    }


# ---- 2. node power-off --------------------------------------------------------------------------


async def power_off_scenario(opts: Options, spec: CheckerSpec, tag: str, fraction: float) -> Figures:
    async with running(opts, spec, tag) as (sim, _reps):
        count = max(1, round(fraction * len(sim.fleet.nodes))) if fraction else 1
        nodes = sim.fleet.nodes[:count]
        reads0 = pod_reads(sim)
        opts.progress(f"{tag}: powering off {count} node(s)")
        faults = power_off(sim, nodes)
        found, missed, wrong = await detections(sim, faults, opts.cap)
        writes = pod_writes(sim, min(faults.values()), set(faults))
        return {
            "nodes_powered_off": count,
            "victim_pods": len(faults),
            "detected": len(found),
            "not_detected_within_cap": len(missed),
            "cap_seconds": opts.cap,
            "detection_seconds": quantiles(found),
            "wrongly_marked": len(wrong),
            "writes_per_transition": round(len(writes) / len(found), 3) if found else None,
            "pod_reads_per_transition": round((pod_reads(sim) - reads0) / len(found), 3) if found else None,
            "reference_model_seconds": reference_model_seconds(len(faults), spec),
            "samples": [round(x, 4) for x in found],
        }


# ---- 3. random loss -----------------------------------------------------------------------------


async def loss_scenario(opts: Options, spec: CheckerSpec, tag: str, percent: int, seconds: float) -> Figures:
    async with running(opts, spec, tag) as (sim, _reps):
        t0 = time.monotonic()
        sim.fleet.set_loss(percent)
        await sleep_with_progress(opts, seconds, f"{tag}: {percent}% loss")
        false = taken_out(sim, t0)
        node = sim.fleet.nodes[-1]
        faults = power_off(sim, [node])
        found, missed, wrong_after = await detections(sim, faults, opts.cap)
        return {
            "loss_percent": percent,
            "seconds": seconds,
            "targets": len(sim.fleet.targets()),
            "false_ejections": len(false),
            "false_ejection_pods": sorted(f"{ns}/{n}" for ns, n in false)[:20],
            "victim_pods": len(faults),
            "detected": len(found),
            "not_detected_within_cap": len(missed),
            "detection_seconds": quantiles(found),
            "wrongly_marked_after_power_off": len(wrong_after),
            "samples": [round(x, 4) for x in found],
        }


# ---- 4. flapping pods ---------------------------------------------------------------------------


async def outage(sim: SimCluster, pods: list[SimPod], seconds: float) -> None:
    """The pods go silent for ``seconds``."""
    for p in pods:
        sim.fleet.power_off_pod(p.key)
    await asyncio.sleep(seconds)
    for p in pods:
        sim.fleet.recover_pod(p.key)


def flappers(sim: SimCluster, count: int) -> list[SimPod]:
    """TCP pods of both opt-in styles, on different nodes."""
    out, seen = [], set()
    for p in sim.fleet.targets():
        if p.ports and p.node not in seen and p.style == ("gate", "annotation")[len(out) % 2]:
            out.append(p)
            seen.add(p.node)
        if len(out) == count:
            break
    return out


async def flapping(
    opts: Options, spec: CheckerSpec, tag: str, brief: float = 0.1, long: float = 4.0
) -> Figures:
    """Brief outages (shorter than the confirmation span: nothing must be written), then outages long
    enough to be detected (each must cost exactly one write per change)."""
    rng = random.Random(7)
    rounds, cycles = opts.flap_rounds, opts.flap_cycles
    async with running(opts, spec, tag) as (sim, reps):
        pods = flappers(sim, 6)
        keys = {p.key for p in pods}
        t0 = time.monotonic()
        a = await reps[0].snapshot()
        for i in range(rounds):
            opts.progress(f"{tag}: brief outage {i + 1}/{rounds}")
            await outage(sim, pods, brief)
            await asyncio.sleep(rng.uniform(0.3, 0.8))
        await asyncio.sleep(3.0)
        b = await reps[0].snapshot()
        brief_writes = pod_writes(sim, t0, keys)
        t1 = time.monotonic()
        for c in range(cycles):
            opts.progress(f"{tag}: long outage {c + 1}/{cycles}")
            await outage(sim, pods, long)
            await asyncio.sleep(long)
        await asyncio.sleep(2.0)
        writes = pod_writes(sim, t1, keys)
        changes = [e for e in writes if e.changes]
        return {
            "pods": len(pods),
            "brief_outages": {
                "per_pod": rounds,
                "outage_ms": round(brief * 1000),
                "probe_failures_seen": (b.failures - a.failures) if spec.kind == "ehc" else None,
                "writes": len(brief_writes),
            },
            "long_outages": {
                "per_pod": cycles,
                "outage_seconds": long,
                "writes": len(writes),
                "writes_that_changed_a_condition": len(changes),
                "writes_per_change": round(len(writes) / len(changes), 3) if changes else None,
                "ejections_written": sum(1 for e in changes if "False" in (e.changes.get(GATE), e.changes.get(READY))),
            },
        }  # fmt: skip


# ---- 5. API trouble -----------------------------------------------------------------------------


def service_condition(p: SimPod) -> str:
    """The condition a checker sets False to take the pod out of service."""
    return GATE if p.style == "gate" else READY


def out_of_service(sim: SimCluster, p: SimPod) -> bool:
    return sim.api.pod_condition(p.namespace, p.name, service_condition(p)) == "False"


async def api_trouble(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    """The API server answers 429 (Retry-After 1 s), then 500, to every request on a single pod for
    ``trouble_seconds``, while a node goes down, comes back and goes down again.  Afterwards every
    victim must be out of service (nothing lost), each change written once (nothing duplicated) and
    none overtaken by an older decision (order kept)."""
    async with running(opts, spec, tag) as (sim, _reps):
        faults_api = sim.api.faults
        node = sim.fleet.nodes[0]
        victims = victims_of(sim, [node])
        keys = {p.key for p in victims}
        injected0 = faults_api.injected
        third = opts.trouble_seconds / 3
        t0 = time.monotonic()
        faults_api.fail(10**9, 429, path=POD_BY_NAME, retry_after=1.0)
        sim.fleet.power_off(node)
        await sleep_with_progress(opts, third, f"{tag}: 429s, node down")
        sim.fleet.recover(node)
        await sleep_with_progress(opts, third / 2, f"{tag}: 429s, node back")
        faults_api.clear()
        faults_api.fail(10**9, 500, path=POD_BY_NAME)
        await sleep_with_progress(opts, third / 2, f"{tag}: 500s, node back")
        sim.fleet.power_off(node)
        await sleep_with_progress(opts, third, f"{tag}: 500s, node down again")
        faults_api.clear()
        cleared = time.monotonic()
        injected = faults_api.injected - injected0
        deadline = cleared + opts.cap
        while not all(out_of_service(sim, p) for p in victims) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        settled = time.monotonic()
        await asyncio.sleep(2.0)
        writes = pod_writes(sim, t0, keys)
        landed = [e for e in writes if 200 <= e.status < 300]
        duplicated = stale = 0
        for p in victims:
            ctype = service_condition(p)
            seq = [
                e.changes[ctype]
                for e in landed
                if (e.namespace, e.name) == p.key and e.changes and ctype in e.changes
            ]
            duplicated += sum(1 for e in landed if (e.namespace, e.name) == p.key and not e.changes)
            stale += int(bool(seq) and seq[-1] != "False")
        lost = sum(1 for p in victims if not out_of_service(sim, p))
        return {
            "trouble_seconds": opts.trouble_seconds,
            "victim_pods": len(victims),
            "requests_refused": injected,
            "write_attempts": len(writes),
            "writes_landed": len(landed),
            "lost": lost,
            "duplicated_writes": duplicated,
            "order_violations": stale,
            "all_out_of_service_after_clear_seconds": round(settled - cleared, 2) if lost == 0 else None,
            "wrongly_marked": len(taken_out(sim, t0).keys() - keys),
        }  # fmt: skip


# ---- 6. leader failover -------------------------------------------------------------------------


async def failover(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    async with running(opts, spec, tag, replicas=2) as (sim, reps):
        leader = await leader_of(reps)
        standby = next(r for r in reps if r is not leader)
        node = sim.fleet.nodes[1]
        faults = power_off(sim, [node])
        killed = time.monotonic()
        leader.kill()
        opts.progress(f"{tag}: leader killed, node down")
        found, missed, wrong = await detections(sim, faults, opts.cap)
        lease_writes = [
            e for e in sim.api.write_log.entries
            if e.mono >= killed and e.resource == "leases" and e.actor == "client" and 200 <= e.status < 300
            and standby.identity in str(e.body)
        ]  # fmt: skip
        return {
            "victim_pods": len(faults),
            "standby_took_lease_seconds": round(lease_writes[0].mono - killed, 3) if lease_writes else None,
            "last_pod_written_seconds": round(max(found), 3) if found else None,
            "detection_seconds": quantiles(found),
            "not_detected_within_cap": len(missed),
            "wrongly_marked": len(wrong),
            "samples": [round(x, 4) for x in found],
        }


# ---- 7. worker crash ----------------------------------------------------------------------------


async def worker_crash(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    """SIGKILL one of ehc's workers; the coordinator must respawn it and resume its targets as they were."""
    async with running(opts, spec, tag) as (sim, reps):
        r = reps[0]
        before = await r.snapshot()
        index, pid = next(iter(sorted(before.worker_pids.items())))
        old = set(r.worker_pids())
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        respawned = resumed = None
        while time.monotonic() - t0 < 30 and resumed is None:
            now = time.monotonic()
            if respawned is None and set(r.worker_pids()) - old:
                respawned = now - t0
            if respawned is not None:
                s = await r.snapshot()
                if s.worker_pids.get(index, pid) != pid and s.probes_by_worker.get(index, 0) > 0:
                    resumed = time.monotonic() - t0
            await asyncio.sleep(0.01 if respawned is None else 0.1)
        await asyncio.sleep(5.0)
        after = await r.snapshot()
        share = before.probes_by_worker  # the killed worker's share of the schedule
        rate = scheduled_rate(sim, spec.interval) * share.get(index, 0) / max(1, sum(share.values()))
        return {
            "workers": spec.workers,
            "respawn_seconds": round(respawned, 3) if respawned is not None else None,
            "first_stats_seconds": round(resumed, 3) if resumed is not None else None,
            "missed_probes_at_most": round(rate * resumed) if resumed is not None else None,
            "restarts": after.restarts - before.restarts,
            "false_transitions": after.transitions - before.transitions,
            "api_writes": len(pod_writes(sim, t0)),
        }


# ---- 8. scale -----------------------------------------------------------------------------------


async def scale_point(opts: Options, spec: CheckerSpec, tag: str, pods: int) -> Figures:
    nodes = max(1, pods // 100)
    async with running(opts, spec, tag, nodes=nodes, pods_per_node=pods // nodes) as (sim, reps):
        out = await measure_steady(sim, reps[0], opts.scale_seconds, opts, f"{tag} {pods} pods")
        lag = out.get("schedule_lag_ms", {})
        out["pods"] = nodes * (pods // nodes)
        out["workers"] = spec.workers if spec.kind == "ehc" else None
        out["saturated"] = out["done_ratio"] < 0.99 or (lag.get("p99_max") or 0) > 100
        return out


def rss_slope(points: list[Figures]) -> dict[str, float | None]:
    """Bytes of RSS per extra target (least squares over the sizes): the marginal memory per target."""
    if len(points) < 2:
        return {"coordinator": None, "worker": None}
    xs = [p["targets"] for p in points]

    def slope(ys: list[float]) -> float:
        mx, my = statistics.mean(xs), statistics.mean(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)

    coord = [p["rss_mb"]["coordinator"] * 2**20 for p in points]
    worker = [sum(p["rss_mb"]["workers"]) * 2**20 for p in points]
    return {"coordinator": round(slope(coord)), "worker": round(slope(worker)) if any(worker) else None}
