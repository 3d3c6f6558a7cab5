"""Prometheus metrics, health endpoints and the status page for ``ehc run``.

Workers' figures reach the coordinator in their stats frames, so everything is read here, at scrape
time, from the coordinator's own state: no multiprocess-mode files.  The same small HTTP server
answers ``/healthz`` (the process is alive), ``/readyz`` (watch synced and, when leading, every
worker up; a standby is ready too), and ``/status`` and ``/status.json`` (``ehc.coordinator.status``),
throttled to ``STATUS_RATE`` a second so no number of open pages costs the probes anything.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from ehc.coordinator import statuspage
from ehc.coordinator.http import listen
from ehc.coordinator.status import LIMIT, StatusView
from ehc.kube.writes import TokenBucket, Write
from ehc.wire.checks import KINDS
from ehc.wire.messages import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ehc.coordinator.controller import Controller

STATUS_RATE, STATUS_BURST = 4.0, 8
"""Status requests a second (and at once) before 429: each may read every target's state."""
_PATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
DETECTION_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Histogram:
    """Counts per bucket (not cumulative; +Inf last) and the sum, for a histogram read at scrape time."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # the bucket of the first bound >= value (Prometheus's le), +Inf past the last
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class ControllerCollector(Collector):
    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self.patches: Counter[str] = Counter()
        self.patch_seconds = Histogram(_PATCH_BUCKETS)
        controller.on_written = self._written

    def _written(self, write: Write, outcome: str, seconds: float) -> None:
        self.patches[outcome] += 1
        if outcome == "ok":
            self.patch_seconds.observe(seconds)

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
        d = c.decider
        yield GaugeMetricFamily(
            "ehc_failsafe_dark_share",
            "Share of targets unhealthy or suspect, as the fail-safe weighs them",
            value=d.dark / d.total if d.total else 0.0,
        )
        yield GaugeMetricFamily(
            "ehc_failsafe_threshold_share",
            "The share of dark targets above which the fail-safe engages",
            value=c.settings.failsafe_share,
        )
        yield GaugeMetricFamily(
            "ehc_suspects",
            "Targets believed up in an open failure episode (confirming)",
            value=d.suspect_count,
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
        yield _histogram("ehc_patch_latency_seconds", "From decision to patch written", self.patch_seconds)
        yield _histogram(
            "ehc_detection_seconds",
            "From the first failed attempt to the verdict, for targets judged unhealthy "
            "(for a node judged down as a whole, from when it went silent)",
            c.detection,
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
        latency = Histogram(LATENCY_BUCKETS)
        health = GaugeMetricFamily(
            "ehc_target_health", "Targets by the health their probes believe", labels=["health"]
        )
        by_health: Counter[str] = Counter({"healthy": 0, "unhealthy": 0, "unknown": 0})
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
            by_health.update(s.health)
            previous = 0
            for i, cumulative in enumerate(s.latency_buckets):
                latency.counts[i] += cumulative - previous
                previous = cumulative
            latency.sum += s.latency_sum
        for w, n in enumerate(pool.restarts):
            restarts.add_metric([str(w)], n)
            stalls.add_metric([str(w)], pool.stalls[w])
        for h, n in sorted(by_health.items()):
            health.add_metric([h], n)
        yield health
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
        yield _histogram("ehc_probe_latency_seconds", "Successful probe latency", latency)


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


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets, running = [], 0
    for bound, n in zip((*h.bounds, float("inf")), h.counts, strict=True):
        running += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


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

    view = StatusView(controller)
    bucket = TokenBucket(STATUS_RATE, STATUS_BURST, time.monotonic())

    async def status(request: web.Request) -> web.StreamResponse:
        if wait := bucket.take(time.monotonic()):
            return web.Response(
                status=429, text="too many status requests\n", headers={"Retry-After": f"{wait:.0f}"}
            )
        q = request.query
        query = {k: q[k] for k in ("namespace", "state", "limit") if q.get(k)}
        try:
            s = await view.status(
                namespace=q.get("namespace", ""), state=q.get("state", ""), limit=int(q.get("limit", LIMIT))
            )
        except ValueError as exc:
            return web.Response(status=400, text=f"bad query {urlencode(query)!r}: {exc}\n")
        if request.path.endswith(".json"):
            return web.Response(body=msgspec.json.encode(s), content_type="application/json")
        return web.Response(text=statuspage.render(s, query), content_type="text/html")

    app = web.Application()
    app.add_routes([
        web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz),
        web.get("/status", status), web.get("/status.json", status),
    ])  # fmt: skip
    return await listen(app, address)
