"""Prometheus metrics and health endpoints for ``ehc run``.

Workers' figures reach the coordinator in their stats frames, so everything is read here, at scrape
time, from the coordinator's own state: no multiprocess-mode files.  The same small HTTP server
answers ``/healthz`` (the process is alive) and ``/readyz`` (watch synced and, when leading, every
worker up; a standby is ready too).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ehc.coordinator.http import listen
from ehc.kube.writes import Write
from ehc.wire.checks import KINDS
from ehc.wire.messages import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ehc.coordinator.controller import Controller

_PATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ControllerCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.patches: Counter[str] = Counter()
        self.patch_seconds = [0] * (len(_PATCH_BUCKETS) + 1)
        self.patch_seconds_sum = 0.0
        controller.on_written = self._written

    def _written(self, write: Write, outcome: str, seconds: float) -> None:
        self.patches[outcome] += 1
        if outcome == "ok":
            i = next((i for i, b in enumerate(_PATCH_BUCKETS) if seconds <= b), len(_PATCH_BUCKETS))
            self.patch_seconds[i] += 1
            self.patch_seconds_sum += seconds

    def collect(self) -> Iterator[object]:
        c = self.c
        pool = c.pool
        targets = GaugeMetricFamily("ehc_targets", "Targets being probed, by probe kind", labels=["kind"])
        kinds = c.targets_by_kind()
        for kind in sorted({*KINDS, *kinds}):
            targets.add_metric([kind], kinds[kind])
        yield targets
        yield GaugeMetricFamily(
            "ehc_leader", "1 while this replica holds the lease", value=int(c.elector.is_leader())
        )
        yield GaugeMetricFamily(
            "ehc_failsafe_engaged", "1 while the fail-safe holds ejections", value=int(c.decider.failsafe)
        )
        yield GaugeMetricFamily(
            "ehc_failsafe_held_ejections",
            "Unhealthy targets whose ejection the fail-safe is holding back right now",
            value=c.decider.held,
        )
        yield CounterMetricFamily(
            "ehc_transitions", "Health transitions reported by workers", value=c.transitions
        )
        yield CounterMetricFamily(
            "ehc_node_verdicts",
            "Nodes judged down as a whole on pooled evidence (each also logged and an Event on the node)",
            value=c.node_verdicts,
        )
        yield GaugeMetricFamily("ehc_patch_queue_depth", "Status patches waiting", value=c.writes.queue_depth)
        yield CounterMetricFamily(
            "ehc_patch_retries",
            "Status patch attempts that failed and are tried again",
            value=c.writes.retries,
        )
        yield GaugeMetricFamily(
            "ehc_patch_outage",
            "1 while status patches fail in a row (sent one at a time until the API server answers)",
            value=int(c.writes.outage),
        )
        yield CounterMetricFamily(
            "ehc_resync_writes",
            "Writes a periodic resync found missing (what ehc wants differed from what the object showed)",
            value=c.resync_writes,
        )
        patches = CounterMetricFamily("ehc_patches", "Status patches by outcome", labels=["outcome"])
        for outcome, n in sorted(self.patches.items()):
            patches.add_metric([outcome], n)
        yield patches
        yield _histogram(
            "ehc_patch_latency_seconds",
            "From decision to patch written",
            _PATCH_BUCKETS,
            self.patch_seconds,
            self.patch_seconds_sum,
        )
        e = c.elector
        yield CounterMetricFamily(
            "ehc_lease_errors", "Failed Lease requests (each logged with its status)", value=e.errors
        )
        yield GaugeMetricFamily(
            "ehc_lease_last_success_age_seconds",
            "Seconds since a Lease request last succeeded (+Inf: never)",
            value=time.monotonic() - e.last_success,
        )
        yield CounterMetricFamily(
            "ehc_leader_give_ups",
            "Terms this replica ended because it could not run its workers",
            value=e.give_ups,
        )
        yield from _peer_metrics(c)
        synced = GaugeMetricFamily(
            "ehc_watch_synced",
            "1 once every watch of the resource has listed (0: see the log)",
            labels=["resource"],
        )
        relists = CounterMetricFamily(
            "ehc_watch_relists", "Lists after a 410, by resource", labels=["resource"]
        )
        undecodable = CounterMetricFamily(
            "ehc_watch_undecodable_objects",
            "Watched objects skipped because they do not decode (each logged with its name and what is wrong)",
            labels=["resource"],
        )
        for resource, watchers in itertools.groupby(c.watchers, key=lambda w: w.resource.plural):
            ws = list(watchers)
            synced.add_metric([resource], int(all(w.synced for w in ws)))
            relists.add_metric([resource], sum(w.relists for w in ws))
            undecodable.add_metric([resource], sum(w.undecodable for w in ws))
        yield synced
        yield relists
        yield undecodable
        if pool is None:
            return
        per_worker = {
            "ehc_worker_targets": GaugeMetricFamily("ehc_worker_targets", "Targets per worker and kind", labels=["worker", "kind"]),
            "probes": CounterMetricFamily("ehc_probes", "Probe attempts (per worker process lifetime)", labels=["worker", "kind"]),
            "failures": CounterMetricFamily("ehc_probe_failures", "Failed probe attempts", labels=["worker", "kind"]),
            "skipped": CounterMetricFamily("ehc_probes_skipped", "Probes not started because the worker fell a whole interval behind", labels=["worker"]),
            "local": CounterMetricFamily("ehc_probe_local_errors", "Probes that could not be made (no descriptors, no socket, a bad address): they count against no target", labels=["worker"]),
            "lag50": GaugeMetricFamily("ehc_schedule_lag_p50_seconds", "Schedule lag p50 over the last stats window", labels=["worker"]),
            "lag": GaugeMetricFamily("ehc_schedule_lag_p99_seconds", "Schedule lag p99 over the last stats window", labels=["worker"]),
            "inflight": GaugeMetricFamily("ehc_probes_in_flight", "Probes in flight", labels=["worker"]),
            "cpu": CounterMetricFamily("ehc_worker_cpu_seconds", "CPU time of the worker process (per process lifetime)", labels=["worker"]),
            "rss": GaugeMetricFamily("ehc_worker_resident_memory_bytes", "Resident memory of the worker process", labels=["worker"]),
            "looks": CounterMetricFamily("ehc_node_looks", "Node episodes opened: a silence nothing explained, so every other target of the node was probed at once (per worker process lifetime)", labels=["worker"]),
            "witnesses": GaugeMetricFamily("ehc_node_witnesses", "Nodes whose own address is checked as their witness, by whether it ever answered (never: not used until it does)", labels=["worker", "heard"]),
            "info": GaugeMetricFamily("ehc_worker_info", "The worker's current process (from its last stats frame)", labels=["worker", "pid"]),
        }  # fmt: skip
        restarts = CounterMetricFamily("ehc_worker_restarts", "Worker processes restarted", labels=["worker"])
        stalls = CounterMetricFamily(
            "ehc_worker_stalls",
            "Workers killed because they held targets but made no probe attempt",
            labels=["worker"],
        )
        latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        latency_sum = 0.0
        for w, s in sorted(pool.stats.items()):
            label = str(w)
            for family, by_kind in (
                ("ehc_worker_targets", s.targets),
                ("probes", s.probes),
                ("failures", s.failures),
            ):
                for kind, n in sorted(by_kind.items()):
                    per_worker[family].add_metric([label, kind], n)
            per_worker["skipped"].add_metric([label], s.skipped_probes)
            per_worker["local"].add_metric([label], s.local_errors)
            per_worker["lag50"].add_metric([label], s.lag_p50)
            per_worker["lag"].add_metric([label], s.lag_p99)
            per_worker["inflight"].add_metric([label], s.in_flight)
            per_worker["cpu"].add_metric([label], s.cpu_seconds)
            per_worker["rss"].add_metric([label], s.rss_bytes)
            per_worker["looks"].add_metric([label], s.looks)
            per_worker["witnesses"].add_metric([label, "yes"], s.witnesses - s.witnesses_unheard)
            per_worker["witnesses"].add_metric([label, "never"], s.witnesses_unheard)
            per_worker["info"].add_metric([label, str(s.pid)], 1)
            previous = 0
            for i, cumulative in enumerate(s.latency_buckets):
                latency_counts[i] += cumulative - previous
                previous = cumulative
            latency_sum += s.latency_sum
        for w, n in enumerate(pool.restarts):
            restarts.add_metric([str(w)], n)
            stalls.add_metric([str(w)], pool.stalls[w])
        yield from per_worker.values()
        yield restarts
        yield stalls
        frames = CounterMetricFamily("ehc_pipe_frames", "Frames over the worker pipes", labels=["direction"])
        sent = CounterMetricFamily("ehc_pipe_bytes", "Bytes over the worker pipes", labels=["direction"])
        for direction in ("in", "out"):
            frames.add_metric([direction], pool.pipe_frames[direction])
            sent.add_metric([direction], pool.pipe_bytes[direction])
        yield frames
        yield sent
        yield _histogram(
            "ehc_probe_latency_seconds",
            "Successful probe latency",
            LATENCY_BUCKETS,
            latency_counts,
            latency_sum,
        )


def _peer_metrics(c: Controller) -> Iterator[object]:
    """Membership, the second opinion asked for, and the opinions given (see ``ehc.coordinator.opinions``)."""
    m, o, server = c.membership, c.opinions, c.peer_server
    yield GaugeMetricFamily(
        "ehc_peers",
        "Live peers (member Leases renewed within their duration)",
        value=len(m.peers()) if m else 0,
    )
    yield CounterMetricFamily(
        "ehc_member_lease_errors",
        "Failed member Lease requests (each logged with its status; without them, no second opinion)",
        value=m.errors if m else 0,
    )
    yield CounterMetricFamily(
        "ehc_ejections_vetoed",
        "Ejections a peer vetoed because it saw the target alive (once per target per suspected partition)",
        value=o.vetoes if o else 0,
    )
    yield GaugeMetricFamily(
        "ehc_suspected_partitions",
        "Nodes whose targets the leader would eject while a peer sees them alive",
        value=o.partitions if o else 0,
    )
    asked = CounterMetricFamily(
        "ehc_peer_questions",
        "Questions this leader asked peers, by outcome (failed: no usable answer in time)",
        labels=["outcome"],
    )
    for outcome, n in sorted((o.asked if o else {"answered": 0, "failed": 0}).items()):
        asked.add_metric([outcome], n)
    yield asked
    served = CounterMetricFamily(
        "ehc_peer_answers",
        "Questions from peers, by outcome (refused: malformed or too big; throttled: 429)",
        labels=["outcome"],
    )
    for outcome, n in sorted((server.served if server else {}).items()):
        served.add_metric([outcome], n)
    yield served


def _histogram(
    name: str, doc: str, bounds: tuple[float, ...], counts: list[int], total: float
) -> HistogramMetricFamily:
    buckets, running = [], 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        running += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


async def serve(controller: Controller, address: str) -> web.AppRunner:
    """Start the metrics/health server on ``HOST:PORT`` (``:PORT`` means every address)."""
    registry = CollectorRegistry()
    registry.register(ControllerCollector(controller))
    started = time.monotonic()

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text=f"ok {time.monotonic() - started:.0f}s\n")

    async def readyz(_: web.Request) -> web.Response:
        if controller.ready:
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: watch not synced or workers down\n")

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)])
    return await listen(app, address)
