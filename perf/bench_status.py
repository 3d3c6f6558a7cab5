"""The status page's cost with 50,000 targets: what a page costs to build and send, and what pages
being read cost the probes, side by side in one run.

    .venv/bin/python perf/bench_status.py [--targets 50000] [--unhealthy 500] [--workers 2] [--seconds 20]

The real controller, real worker processes and the real HTTP endpoints: pods are handed to the pod
source as a watch would (no API server: its 50,000-pod lists would be the benchmark), and the
controller believes it leads.  Healthy pods are pinged (distinct 127.x.y.z addresses, answered by the
kernel); ``--unhealthy`` of them, whole nodes of 100, are checked on a closed TCP port, so they are
refused and judged unhealthy, and are listed on the page with their evidence.

Two phases of ``--seconds`` each: *quiet* (nobody reads the page) and *read* (``/status.json`` and
``/status`` alternately, as fast as the endpoint's throttle admits: 4 a second).  Reported: each
format's latency (median [p10 - p90], max) and size, and per phase the workers' schedule lag p99 and
probes per second (medians over the stats windows [min - max]), with the read/quiet ratios.
Needs root (raw ICMP sockets) or an open ping_group_range.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import uvloop
from kubernetes_asyncio.client import ApiClient, Configuration

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ehc.coordinator import metrics
from ehc.coordinator.controller import Controller
from ehc.coordinator.settings import load
from ehc.kube.model import ANNOTATION, PROBE_ANNOTATION, Pod
from ehc.worker.limits import raise_fd_limit

PODS_PER_NODE = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pods(n: int, unhealthy: int, closed: int) -> list[Pod]:
    out = []
    for i in range(n):
        node = i // PODS_PER_NODE
        bad = i < unhealthy
        annotations = {ANNOTATION: "true"} if bad else {ANNOTATION: "true", PROBE_ANNOTATION: "icmp"}
        probe = {"readinessProbe": {"tcpSocket": {"port": closed}}} if bad else {}
        ip = "127.0.0.1" if bad else f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}"
        manifest = {
            "metadata": {
                "name": f"pod-{i:05d}",
                "namespace": f"ns-{i % 20:02d}",
                "uid": f"u{i}",
                "annotations": annotations,
            },
            "spec": {"nodeName": f"node-{node:03d}", "containers": [{"name": "app", **probe}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        out.append(msgspec.convert(manifest, Pod))
    return out


def spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    if not values:
        return "-"
    v = sorted(x * scale for x in values)
    q = statistics.quantiles(v, n=10) if len(v) >= 2 else [v[0]] * 9
    return f"{statistics.median(v):.1f}{unit} [{q[0]:.1f} - {q[-1]:.1f}], max {v[-1]:.1f}{unit}"


async def phase(c: Controller, seconds: float, read: str | None) -> dict[str, Any]:
    """Collect the workers' stats windows for ``seconds``; read the page meanwhile when ``read``."""
    assert c.pool is not None
    seen: dict[int, float] = {}
    lag, rate = [], []
    latency: dict[str, list[float]] = {"json": [], "html": []}
    size: dict[str, int] = {}
    throttled = 0
    end = time.monotonic() + seconds

    async def reader() -> None:
        nonlocal throttled
        async with aiohttp.ClientSession() as http:
            i = 0
            while time.monotonic() < end:
                fmt = ("json", "html")[i % 2]
                i += 1
                t0 = time.perf_counter()
                async with http.get(f"{read}/status{'.json' if fmt == 'json' else ''}") as r:
                    body = await r.read()
                if r.status == 429:
                    throttled += 1
                    await asyncio.sleep(0.05)
                    continue
                latency[fmt].append(time.perf_counter() - t0)
                size[fmt] = len(body)
                await asyncio.sleep(0.25)

    task = asyncio.create_task(reader()) if read else None
    while time.monotonic() < end:
        await asyncio.sleep(0.25)
        for w, s in c.pool.stats.items():
            if seen.get(w) != s.window_seconds and s.window_seconds:
                seen[w] = s.window_seconds
                lag.append(s.lag_p99)
                rate.append(s.window_probes / s.window_seconds)
    if task is not None:
        await task
    return {"lag": lag, "rate": rate, "latency": latency, "size": size, "throttled": throttled}


async def main(args: argparse.Namespace) -> None:
    raise_fd_limit()
    closed = free_port()
    env = {"POD_NAME": "ehc-bench", "POD_NAMESPACE": "default", "EHC_METRICS_ADDRESS": "", "EHC_PEER_ADDRESS": "",
           "EHC_WORKERS": str(args.workers), "HEALTH_CHECK_INTERVAL": args.interval, "HEALTH_CHECK_TIMEOUT": "1s"}  # fmt: skip
    api = ApiClient(Configuration(host="http://127.0.0.1:9"))  # never asked: the controller is not run
    c = Controller(load(None, env=env), api)
    c.elector.is_leader = lambda: True  # type: ignore[method-assign]
    t0 = time.perf_counter()
    c.pods.page(pods(args.targets, args.unhealthy, closed))
    fed = time.perf_counter() - t0
    c.pool = await c._start_pool()
    port = free_port()
    runner = await metrics.serve(c, f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        while len(c.pool.unhealthy()) < args.unhealthy or len(c.pool.stats) < args.workers:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # a whole stats window of steady probing
        quiet = await phase(c, args.seconds, None)
        read = await phase(c, args.seconds, base)
    finally:
        await runner.cleanup()
        await c.pool.close()
        await api.close()
    print(f"{args.targets} targets ({args.unhealthy} unhealthy, listed), {args.workers} workers, interval {args.interval}; "
          f"pods handed to the source in {fed:.1f} s")  # fmt: skip
    for fmt in ("json", "html"):
        lat = read["latency"][fmt]
        print(f"  /status{'.json' if fmt == 'json' else ''}: {len(lat)} pages, latency {spread(lat, 1000, ' ms')}, "
              f"{read['size'].get(fmt, 0) / 1024:.0f} KiB")  # fmt: skip
    print(f"  throttled (429) while reading: {read['throttled']}")
    for name, key, scale, unit in (
        ("schedule lag p99", "lag", 1000, " ms"),
        ("probes/s per worker", "rate", 1, ""),
    ):
        q, r = quiet[key], read[key]
        ratio = (
            statistics.median(r) / statistics.median(q) if q and r and statistics.median(q) else float("nan")
        )
        print(
            f"  {name}: quiet {spread(q, scale, unit)}; read {spread(r, scale, unit)}; read/quiet {ratio:.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=50_000)
    parser.add_argument("--unhealthy", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--interval", default="10s")
    parser.add_argument("--seconds", type=float, default=20.0)
    uvloop.run(main(parser.parse_args()))
