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
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import baseline

from ehc.kube.model import GATE, READY
from ehc.sim import SimCluster
from ehc.sim.faults import LEASES, PODS_STATUS, DelayRule, ErrorRule, Faults
from ehc.sim.fleet import SimPod
from ehc.sim.slicectl import ACTOR as SLICE_CONTROLLER
from ehc.sim.writelog import WriteEntry
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
    loss: tuple[tuple[int, float], ...] = ((2, 600.0), (5, 600.0))  # (percent, seconds)
    trouble_seconds: float = 30.0
    partition_seconds: float = 20.0
    cap: float = 150.0  # give up waiting for detections after this long (the baseline needs it)
    scale_sizes: tuple[int, ...] = (1_000, 5_000, 10_000, 20_000)
    scale_workers: tuple[int, ...] = (1, 2, 4)
    scale_seconds: float = 10.0
    soak_minutes: float = 10.0
    backends_per_node: int = 5  # power-off scenarios: external backends behind selectorless Services
    seed: int = 1  # the soak's random faults
    log_dir: Path = Path("perf/out/logs")
    progress: Callable[[str], None] = field(default=lambda _text: None)


LEADER_LEASE = "endpoint-health-checker-leader"  # ``ehc run``'s default LEASE_NAME
PARTITION_GROUPS = (61_001, 61_002)
"""Unix groups the two replicas of the partition scenario run as: each one's vantage for ``Fleet.cut``."""


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
    pods_per_node: int | None = None, backends_per_node: int = 0, groups: Sequence[int] | None = None,
) -> AsyncIterator[tuple[SimCluster, list[Replica]]]:  # fmt: skip
    """A fresh settled cluster with ``replicas`` copies of the checker running, warmed up.  With
    ``backends_per_node``, external backends behind selectorless Services too, which ehc checks
    (``--selectorless``) and the baseline cannot."""
    async with SimCluster(
        nodes=nodes or opts.nodes, pods_per_node=pods_per_node or opts.pods_per_node, kubelet_delay=1.0,
        external_per_node=backends_per_node,
    ) as sim:  # fmt: skip
        settle_gates(sim)
        selectorless = backends_per_node > 0 and spec.kind == "ehc"
        if selectorless:
            spec = replace(spec, args=(*spec.args, "--selectorless"))
        reps = await start_replicas(spec, sim, replicas, opts.log_dir, tag, groups)
        try:
            await warm_up(sim, reps, opts, len(sim.fleet.externals()) if selectorless else 0)
            yield sim, reps
        finally:
            await stop_replicas(reps)


async def warm_up(sim: SimCluster, reps: list[Replica], opts: Options, backends: int = 0) -> Replica:
    """Wait until one replica leads and probes every target (pods, and ``backends`` addresses of
    selectorless Services); return it (the leader)."""
    expected = len(sim.fleet.targets()) + backends
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
                f"{reps[0].spec.name} did not pick up all {expected} targets; see {opts.log_dir}"
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


async def standby_steady(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    """Two replicas in steady state, each measured: what a standby costs (probes, CPU, memory)."""
    async with running(opts, spec, tag, replicas=2) as (sim, reps):
        leader = await leader_of(reps)
        standby = next(r for r in reps if r is not leader)
        keep = ("probes_per_second", "cpu_percent", "rss_mb", "cpu_seconds_per_1000_probes")
        measured = await asyncio.gather(
            *(measure_steady(sim, r, opts.steady_seconds, opts, f"{tag} {role}")
              for r, role in ((leader, "leader"), (standby, "standby")))
        )  # fmt: skip
        return {
            role: {k: m[k] for k in keep} for role, m in zip(("leader", "standby"), measured, strict=True)
        }


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


def unrouted(sim: SimCluster, pods: list[SimPod], since: float) -> list[float]:
    """Seconds from ``since`` to each pod's address leaving its Service's EndpointSlice (written by
    the stand-in for Kubernetes' controller once it sees the pod not ready): what traffic follows."""
    out = {
        (ns, ip): t for (ns, _, ip), t in sim.api.write_log.slice_not_ready(since, SLICE_CONTROLLER).items()
    }
    return sorted(out[(p.namespace, p.ip)] - since for p in pods if (p.namespace, p.ip) in out)


def backend_figures(sim: SimCluster, nodes: list[str], since: float) -> Figures:
    """The selectorless backends on ``nodes``: when each address went not ready, what else did, and
    the checker's writes per object."""
    log = sim.api.write_log
    dead = {(x.namespace, x.name, x.ip) for n in nodes for x in sim.fleet.externals_on(n)}
    out = log.addresses_marked(False, since, "client")
    objects = {(ns, name) for ns, name, _ in dead}
    writes = [e for e in log.entries if e.mono >= since and e.actor == "client" and e.verb == "PATCH"
              and e.resource in ("endpointslices", "endpoints") and (e.namespace, e.name) in objects]  # fmt: skip
    found = sorted(out[k] - since for k in dead if k in out)
    return {
        "victim_backends": len(dead),
        "backend_objects": len(objects),
        "backends_detected": len(found),
        "backend_detection_seconds": quantiles(found),
        "backends_wrongly_marked": len(out.keys() - dead),
        "writes_per_backend_object": round(len(writes) / len(objects), 3) if objects and found else None,
    }


async def power_off_scenario(opts: Options, spec: CheckerSpec, tag: str, fraction: float) -> Figures:
    async with running(opts, spec, tag, backends_per_node=opts.backends_per_node) as (sim, _reps):
        count = max(1, round(fraction * len(sim.fleet.nodes))) if fraction else 1
        nodes = sim.fleet.nodes[:count]
        reads0 = pod_reads(sim)
        opts.progress(f"{tag}: powering off {count} node(s)")
        faults = power_off(sim, nodes)
        found, missed, wrong = await detections(sim, faults, opts.cap)
        since = min(faults.values())
        writes = pod_writes(sim, since, set(faults))
        routed = unrouted(sim, victims_of(sim, nodes), since)
        return {
            **(backend_figures(sim, nodes, since) if spec.kind == "ehc" else {}),
            "service_slice_seconds": quantiles(routed),
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


async def pod_level(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    """Failures of pods, not nodes: one pod on a live node goes silent (its address drops everything),
    then half of another node's TCP pods refuse (every probe port closed).  Exactly those go out."""
    async with running(opts, spec, tag) as (sim, _reps):
        fleet = sim.fleet
        lone = next(p for p in fleet.pods_on(fleet.nodes[1]) if p.opted_in and p.ports)
        opts.progress(f"{tag}: one pod silent")
        silent_at = time.monotonic()
        fleet.power_off_pod(lone.key)
        found, missed, wrong = await detections(sim, {lone.key: silent_at}, opts.cap)
        tcp = [p for p in fleet.pods_on(fleet.nodes[2]) if p.opted_in and p.ports]
        half = tcp[: len(tcp) // 2]
        opts.progress(f"{tag}: {len(half)} pods of a node refuse")
        refused_at = time.monotonic()
        for p in half:
            for port in p.ports:
                fleet.close_port(p.key, port)
        refused, missed2, wrong2 = await detections(sim, {p.key: refused_at for p in half}, opts.cap)
        return {
            "silent_pod_seconds": quantiles(found),
            "refusing_pods": len(half),
            "refusing_detection_seconds": quantiles(refused),
            "not_detected_within_cap": len(missed) + len(missed2),
            "wrongly_marked": len(wrong) + len(wrong2),
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


async def failover(opts: Options, spec: CheckerSpec, tag: str, graceful: bool = False) -> Figures:
    """The leader dies as a node powers off: SIGKILL (no release: the standby waits out the lease) or,
    ``graceful``, SIGTERM (it hands the lease over)."""
    async with running(opts, spec, tag, replicas=2) as (sim, reps):
        leader = await leader_of(reps)
        standby = next(r for r in reps if r is not leader)
        node = sim.fleet.nodes[1]
        faults = power_off(sim, [node])
        killed = time.monotonic()
        stopping = asyncio.create_task(leader.stop()) if graceful else None
        if stopping is None:
            leader.kill()
        opts.progress(f"{tag}: leader {'stopped' if graceful else 'killed'}, node down")
        found, missed, wrong = await detections(sim, faults, opts.cap)
        if stopping is not None:
            await stopping
        # The leader Lease's writes naming the standby (its member Lease names it too).
        lease_writes = [
            e for e in sim.api.write_log.entries
            if e.mono >= killed and e.resource == "leases" and e.name == LEADER_LEASE and e.actor == "client"
            and 200 <= e.status < 300 and standby.identity in str(e.body)
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


async def partition(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    """The leader's path to one node breaks silently while the standby's still works (each replica runs
    as its own unix group: ``Fleet.cut``): its pods must stay in service.  Then, with the path healed,
    another node powers off (the cost of asking a peer first), and finally the cut node powers off too
    (the peer no longer sees it: ejected)."""
    async with running(opts, spec, tag, replicas=2, groups=PARTITION_GROUPS) as (sim, reps):
        leader = await leader_of(reps)
        standby = next(r for r in reps if r is not leader)
        deadline = time.monotonic() + 60
        expected = len(sim.fleet.targets())
        while not (
            (await leader.snapshot()).peers >= 1 and ready(standby, await standby.snapshot(), expected)
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tag}: the standby never probed everything, or the leader never saw it")
            await asyncio.sleep(0.5)
        cut_node, other = sim.fleet.nodes[1], sim.fleet.nodes[2]
        cut_pods = {p.key for p in sim.fleet.pods_on(cut_node) if p.opted_in}
        assert leader.group is not None
        t0 = time.monotonic()
        sim.fleet.cut(leader.group, cut_node)
        opts.progress(f"{tag}: the leader's path to {cut_node} cut")
        await asyncio.sleep(opts.partition_seconds)
        during = await leader.snapshot()
        falsely = taken_out(sim, t0)
        vetoed_events = [
            e for e in sim.api.write_log.entries
            if e.mono >= t0 and e.resource == "events" and (e.body or {}).get("reason") == "EjectionVetoed"
        ]  # fmt: skip
        sim.fleet.cut(leader.group, cut_node, on=False)
        await asyncio.sleep(3 * spec.interval)  # the leader hears the node again
        faults = power_off(sim, [other])
        found, missed, wrong = await detections(sim, faults, opts.cap)
        sim.fleet.cut(leader.group, cut_node)
        await asyncio.sleep(3 * spec.interval)  # cut again: vetoed again
        # Only the pods still in service can be ejected (without a second opinion the cut took them out).
        dead = {k: t for k, t in power_off(sim, [cut_node]).items() if k not in falsely}
        found_cut, missed_cut, _ = await detections(sim, dead, opts.cap) if dead else ([], [], set())
        return {
            "cut_pods": len(cut_pods),
            "cut_seconds": opts.partition_seconds,
            "ejected_while_cut": len(falsely.keys() & cut_pods),
            "other_pods_ejected_while_cut": len(falsely.keys() - cut_pods),
            "vetoed": during.vetoed,
            "vetoed_events": len(vetoed_events),
            "power_off_detection_seconds": quantiles(found),
            "power_off_not_detected": len(missed),
            "power_off_wrongly_marked": len(wrong),
            "cut_node_power_off_detection_seconds": quantiles(found_cut),
            "cut_node_not_detected": len(missed_cut),
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


# ---- 9. soak ------------------------------------------------------------------------------------

PATCH_TIMEOUT = 10.0  # how long ehc waits for a status PATCH's answer (its write queue's request timeout)
# API trouble, kind -> weight.  ``patch_past_timeout`` holds status PATCHes longer than ehc waits for an
# answer: ehc gives up and sends them again (the simulated server cancels a request whose client hung up).
API_FAULTS = {"patch_500": 3, "patch_429": 3, "patch_slow": 2, "patch_past_timeout": 1, "lease_500": 2,
              "lease_429": 1, "watch_drop": 2, "watch_410": 2}  # fmt: skip


@dataclass
class Fault:
    """One injected fault, from when until when it could act (monotonic; equal for one-off faults)."""

    kind: str
    start: float
    end: float
    detail: str


@dataclass
class Outage:
    """One node powered off: when, its opted-in pods, and when it came back."""

    node: str
    off: float
    victims: frozenset[Key]
    on: float = math.inf


def pod_conditions(pod: dict[str, Any] | None) -> dict[str, str]:
    conds = ((pod or {}).get("status") or {}).get("conditions") or []
    return {c.get("type"): c.get("status") for c in conds}


class Commits:
    """When the API server applied each checker change that took a pod out of service, from its store's
    commit hook (the one the kubelet stand-in listens on).  The write log stamps a request when it
    arrives; an injected delay holds it before it applies, so only the commit says when the pod left
    service."""

    def __init__(self, sim: SimCluster) -> None:
        self.taken_out: list[tuple[float, Key]] = []  # in commit order
        sim.api.pods.hooks.append(self._on_change)

    def _on_change(self, typ: str, old: dict[str, Any] | None, new: dict[str, Any], actor: str) -> None:
        if actor != "client" or typ != "MODIFIED":
            return
        before, after = pod_conditions(old), pod_conditions(new)
        if any(after.get(t) == "False" != before.get(t) for t in (GATE, READY)):
            meta = new["metadata"]
            self.taken_out.append((time.monotonic(), (meta["namespace"], meta["name"])))


class Increase:
    """A counter summed over processes and their resets (a new term's worker pool, a killed leader),
    as Prometheus' increase() does: a value below the last one means the counter started again at 0."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.total = 0

    def add(self, who: str, value: int) -> None:
        prev = self.last.get(who, 0)
        self.total += value - prev if value >= prev else value
        self.last[who] = value


def start_api_fault(
    faults: Faults, kind: str, rng: random.Random
) -> tuple[ErrorRule | DelayRule, str, float]:
    """Start a burst of ``kind``: the rule (to lift later), what it does, and how long it still acts
    once lifted (a delay holds the requests that arrived before)."""
    if kind == "patch_500":
        return faults.fail(10**9, 500, verb="PATCH", path=PODS_STATUS), "500 on status PATCHes", 0.0
    if kind == "patch_429":
        wait = rng.choice((1, 2, 3))
        rule = faults.throttle(10**9, wait, verb="PATCH", path=PODS_STATUS)
        return rule, f"429 Retry-After {wait}s on status PATCHes", 0.0
    if kind == "lease_500":
        return faults.fail(10**9, 500, path=LEASES), "500 on Lease requests", 0.0
    if kind == "lease_429":
        return faults.throttle(10**9, 1.0, path=LEASES), "429 Retry-After 1s on Lease requests", 0.0
    if kind == "patch_slow":
        delay = rng.uniform(0.5, 3.0)
    else:
        delay = rng.uniform(PATCH_TIMEOUT + 0.5, PATCH_TIMEOUT + 3.0)
    return faults.delay(delay, verb="PATCH", path=PODS_STATUS), f"status PATCHes held {delay:.1f}s", delay


def duplicated_writes(entries: list[WriteEntry]) -> tuple[int, list[WriteEntry]]:
    """The checker's landed status writes that changed nothing (``changes`` empty), and those of them
    that restate what its own earlier landed write had set, nobody having changed it since (in the
    write log's order): the same change landing twice."""
    mine: dict[tuple[Key, str], str] = {}  # (pod, condition) -> status the checker's last change set
    no_op, dup = 0, []
    for e in entries:
        if e.resource != "pods" or e.subresource != "status" or not 200 <= e.status < 300:
            continue
        key = (e.namespace, e.name)
        sets = {c.get("type"): c.get("status") for c in e.conditions()}
        if e.actor != "client":
            if e.changed:  # the kubelet (or the harness) changed it since
                for ctype in sets:
                    mine.pop((key, ctype), None)
        elif e.changes:
            mine.update({(key, ctype): status for ctype, status in e.changes.items()})
        else:
            no_op += 1
            if sets and all(mine.get((key, ctype)) == status for ctype, status in sets.items()):
                dup.append(e)
    return no_op, dup


def leader_changes(entries: list[WriteEntry], since: float) -> list[tuple[float, str]]:
    """(time, new holder) of each landed Lease write since ``since`` that names another holder than the
    last one named."""
    out: list[tuple[float, str]] = []
    holder = None
    for e in entries:
        if (
            e.resource != "leases"
            or e.actor != "client"
            or not 200 <= e.status < 300
            or not isinstance(e.body, dict)
        ):
            continue
        named = (e.body.get("spec") or {}).get("holderIdentity")
        if named and named != holder:
            if holder is not None and e.mono >= since:
                out.append((e.mono, named))
            holder = named
    return out


async def until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


class Soak:
    """The soak's injectors, each on its own seeded random stream, and what they injected when."""

    def __init__(
        self, opts: Options, spec: CheckerSpec, tag: str, sim: SimCluster, reps: list[Replica]
    ) -> None:
        self.opts, self.spec, self.tag, self.sim, self.reps = opts, spec, tag, sim, reps
        self.commits = Commits(sim)
        self.faults: list[Fault] = []
        self.outages: list[Outage] = []
        self.restarts, self.stalls = Increase(), Increase()
        self.stopped: set[int] = set()  # SIGSTOPped worker pids not continued yet
        self.skipped = 0  # worker faults not injected: no leader with workers at that moment
        self.log_start = len(sim.api.write_log.entries)
        self.refused0 = sim.api.faults.injected
        self.t0 = time.monotonic()
        self.end = self.t0 + 60 * opts.soak_minutes

    def rng(self, stream: str) -> random.Random:
        """One stream per injector, so each one's choices repeat with the seed whatever the interleaving."""
        return random.Random(f"{self.opts.seed}/{stream}")

    async def run(self) -> None:
        jobs = (
            self.power_offs(),
            self.api_trouble(),
            self.worker_trouble(),
            self.kill_leader(),
            self.sample(),
        )
        tasks = [asyncio.create_task(job) for job in jobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.sim.api.faults.clear()
            for pid in self.stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    async def power_offs(self) -> None:
        """Each minute a different node goes dark for 20–30 s."""
        rng = self.rng("power")
        nodes = rng.sample(self.sim.fleet.nodes, len(self.sim.fleet.nodes))
        for k in range(max(1, int(self.opts.soak_minutes))):
            node = nodes[k % len(nodes)]
            await until(self.t0 + 60 * k + rng.uniform(5, 25))
            off = time.monotonic()
            outage = Outage(node, off, frozenset(power_off(self.sim, [node])))
            self.outages.append(outage)
            await asyncio.sleep(rng.uniform(20, 30))
            self.sim.fleet.recover(node)
            outage.on = time.monotonic()

    async def api_trouble(self) -> None:
        """Every 2–8 s a burst of API trouble (``API_FAULTS``), one at a time: errors and delays for 1–8 s
        (Lease errors 0.5–5 s, around the 2 s renew deadline), or every watch dropped or sent to 410."""
        rng = self.rng("api")
        api = self.sim.api
        while True:
            await asyncio.sleep(rng.uniform(2, 8))
            if time.monotonic() >= self.end:
                return
            kind = rng.choices(list(API_FAULTS), list(API_FAULTS.values()))[0]
            start = time.monotonic()
            if kind.startswith("watch"):
                count = api.close_watches(abrupt=kind == "watch_drop")
                if kind == "watch_410":  # each reconnecting watch is told its version expired: relist
                    api.faults.expire_next_watch(count)
                self.faults.append(Fault(kind, start, start, f"{count} watches"))
                continue
            seconds = rng.uniform(1, 8) if kind.startswith("patch") else rng.uniform(0.5, 5)
            rule, detail, lingers = start_api_fault(api.faults, kind, rng)
            await asyncio.sleep(seconds)
            rule.remaining = 0  # lifted: a rule with nothing remaining matches nothing
            self.faults.append(Fault(kind, start, time.monotonic() + lingers, f"{seconds:.1f}s of {detail}"))

    async def worker_trouble(self) -> None:
        """Every 8–20 s, SIGKILL one of the leader's workers, or SIGSTOP it and SIGCONT it 2–8 s later."""
        rng = self.rng("worker")
        while True:
            await asyncio.sleep(rng.uniform(8, 20))
            kind, pause, pick = rng.choice(("worker_kill", "worker_stop")), rng.uniform(2, 8), rng.random()
            if time.monotonic() >= self.end:
                return
            pid = await self.leader_worker(pick)
            start = time.monotonic()
            try:
                if pid is None:
                    raise ProcessLookupError
                os.kill(pid, signal.SIGKILL if kind == "worker_kill" else signal.SIGSTOP)
            except ProcessLookupError:
                self.skipped += 1
                continue
            if kind == "worker_stop":
                self.stopped.add(pid)
                await asyncio.sleep(pause)
                with contextlib.suppress(ProcessLookupError):  # ehc may have killed it as silent meanwhile
                    os.kill(pid, signal.SIGCONT)
                self.stopped.discard(pid)
            self.faults.append(Fault(kind, start, time.monotonic(), f"pid {pid}"))

    async def leader_worker(self, pick: float) -> int | None:
        """One of the leader's workers, as its /metrics names them and still its child; None between terms."""
        try:
            leader = await leader_of(self.reps)
        except RuntimeError:
            return None
        children = set(leader.worker_pids())
        pids = sorted(p for p in (await leader.snapshot()).worker_pids.values() if p in children)
        return pids[int(pick * len(pids))] if pids else None

    async def kill_leader(self) -> None:
        """Once, 30–70 % of the way through: kill -9 the leader, so the standby takes over, and start a
        new standby, as the Deployment would."""
        await until(self.t0 + self.rng("leader").uniform(0.3, 0.7) * (self.end - self.t0))
        while time.monotonic() < self.end:
            try:
                leader = await leader_of(self.reps)
            except RuntimeError:  # between terms (Lease trouble): try again shortly
                await asyncio.sleep(0.5)
                continue
            start = time.monotonic()
            leader.kill()
            self.faults.append(Fault("leader_kill", start, start, leader.identity))
            identity = f"{self.tag}-{self.spec.name}-{len(self.reps)}"
            standby = Replica(self.spec, self.sim, identity, self.opts.log_dir)
            await standby.start()
            self.reps.append(standby)
            return

    async def sample(self) -> None:
        """Every second, ehc's worker restart and stall counters, and the progress line."""
        while time.monotonic() < self.end:
            await self.read_counters()
            down = ", ".join(sorted(self.sim.fleet.down_nodes)) or "none"
            self.opts.progress(f"{self.tag}: {self.end - time.monotonic():.0f}s left, "
                               f"{len(self.faults)} faults so far, node off: {down}")  # fmt: skip
            await asyncio.sleep(1.0)

    async def read_counters(self) -> None:
        for r in list(self.reps):
            if r.alive and (s := await r.snapshot()).scraped:
                self.restarts.add(r.identity, s.restarts)
                self.stalls.add(r.identity, s.stalls)

    def story(self, key: Key, since: float, until: float) -> list[str]:
        """What the write log holds for one pod between two moments, one line per write."""
        return [
            f"{e.mono - self.t0:.3f}s {e.actor} {e.verb} -> {e.status} changed {e.changes} "
            f"sets { {c.get('type'): c.get('status') for c in e.conditions()} }"
            for e in self.sim.api.write_log.entries[self.log_start :]
            if (e.namespace, e.name) == key and since <= e.mono <= until
        ]

    def figures(self) -> Figures:
        entries = self.sim.api.write_log.entries[self.log_start :]
        node_of = {p.key: p.node for p in self.sim.fleet.targets()}

        def at(t: float) -> float:
            return round(t - self.t0, 3)

        outages, lost, samples, lasts, during = [], [], [], [], 0
        for o in self.outages:
            first: dict[Key, float] = {}
            for t, key in self.commits.taken_out:
                if key in o.victims and o.off <= t < o.on:
                    first.setdefault(key, t)
            missing = sorted(o.victims - first.keys())
            samples += [t - o.off for t in first.values()]
            last = max(first.values()) - o.off if first and not missing else None
            if last is not None:
                lasts.append(last)
            window_end = o.off + last if last is not None else o.on
            kinds = sorted({f.kind for f in self.faults if f.start <= window_end and f.end >= o.off})
            during += any(k in API_FAULTS for k in kinds)
            outages.append({
                "node": o.node, "off_at": at(o.off), "off_seconds": round(o.on - o.off, 1), "victims": len(o.victims),
                "lost": len(missing), "last_out_seconds": round(last, 3) if last is not None else None,
                "faults_meanwhile": kinds,
            })  # fmt: skip
            lost += [{"pod": f"{k[0]}/{k[1]}", "node": o.node, "off_at": at(o.off), "on_at": at(o.on),
                      "writes": self.story(k, o.off, o.on + 5)} for k in missing]  # fmt: skip
        wrong = [
            {"pod": f"{key[0]}/{key[1]}", "node": node_of.get(key), "committed_at": at(t),
             "writes": self.story(key, t - 30, t + 5)}
            for t, key in self.commits.taken_out
            if not any(o.node == node_of.get(key) and o.off <= t < o.on for o in self.outages)
        ]  # fmt: skip
        no_op, dup = duplicated_writes(entries)
        changes = leader_changes(self.sim.api.write_log.entries, self.t0)
        stuck = [p for p in self.sim.fleet.targets() if out_of_service(self.sim, p)]
        writes = [e for e in entries if e.actor == "client" and e.resource == "pods"]
        return {
            "minutes": self.opts.soak_minutes,
            "seed": self.opts.seed,
            "targets": len(node_of),
            "workers": self.spec.workers,
            "power_offs": len(self.outages),
            "victim_pods": sum(len(o.victims) for o in self.outages),
            "ejections_lost": len(lost),
            "wrong_writes": len(wrong),
            "duplicated_writes": len(dup),
            "no_op_writes": no_op,
            "last_pod_out_seconds": quantiles(lasts),
            "power_offs_during_api_trouble": during,
            "faults_injected": dict(sorted(Counter(f.kind for f in self.faults).items())),
            "requests_refused": self.sim.api.faults.injected - self.refused0,
            "worker_faults_skipped": self.skipped,
            "worker_restarts": self.restarts.total,
            "worker_stalls": self.stalls.total,
            "leader_changes": len(changes),
            "out_of_service_at_end": len(stuck),
            "pod_write_attempts": len(writes),
            "pod_writes_landed": sum(1 for e in writes if 200 <= e.status < 300),
            "outages": outages,
            "findings": {
                "lost": lost[:20],
                "wrong": wrong[:20],
                "duplicated": [self.story((e.namespace, e.name), e.mono - 30, e.mono + 5) for e in dup[:20]],
                "out_of_service_at_end": [f"{p.namespace}/{p.name}" for p in stuck[:20]],
            },
            "leader_change_log": [f"{at(t)}s {holder}" for t, holder in changes],
            "fault_log": [
                f"{at(f.start)}s {f.kind}: {f.detail}" for f in sorted(self.faults, key=lambda f: f.start)
            ],
            "samples": sorted(round(x, 4) for x in samples),
        }


async def soak(opts: Options, spec: CheckerSpec, tag: str) -> Figures:
    """Everything at once for ``soak_minutes``, ehc only, leader and standby: each minute a node goes
    dark for 20–30 s while the API server errs, throttles, stalls and drops watches, the leader's
    workers are killed or frozen, and once the leader itself is killed.  Measured on what the API
    server applied: no ejection lost, no pod wrongly taken out, no change landing twice."""
    async with running(opts, spec, tag, replicas=2) as (sim, reps):
        s = Soak(opts, spec, tag, sim, reps)
        await s.read_counters()
        s.restarts.total = s.stalls.total = 0  # the soak counts from here
        await s.run()
        deadline = time.monotonic() + 60
        while any(out_of_service(sim, p) for p in sim.fleet.targets()) and time.monotonic() < deadline:
            opts.progress(f"{tag}: faults over, waiting for every pod back in service")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # a late write would land now
        await s.read_counters()
        return s.figures()
