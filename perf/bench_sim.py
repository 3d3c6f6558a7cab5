"""Scale benchmark of the simulated API server: 10,000 pods, full list time, watch throughput.

The server runs here (uvloop); the watch consumer and the HTTP patch client run in separate processes,
as ehc would, so the figures are the server's and not a shared event loop's.

    .venv/bin/python perf/bench_sim.py [--pods 10000] [--patches 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp
import msgspec

from ehc.sim import SimCluster


def _watch_proc(url: str, rv: str, expected: int, ready: mp.Event, out: mp.Queue) -> None:
    """Consume a watch stream, decoding every line (as ehc's watcher does); report first/last times."""

    async def run() -> None:
        decode = msgspec.json.decode
        n, first = 0, 0.0
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.get(f"{url}/api/v1/pods", params={"watch": "1", "resourceVersion": rv}) as r,
        ):
            ready.set()
            async for line in r.content:
                ev = decode(line)
                if ev["type"] != "MODIFIED":
                    continue
                if n == 0:
                    first = time.monotonic()
                n += 1
                if n >= expected:
                    break
        out.put((n, first, time.monotonic()))

    asyncio.run(run())


async def _start_watcher(ctx: Any, api: Any, expected: int) -> tuple[Any, mp.Queue]:
    """A watch process from the server's current version, waiting for ``expected`` events; once it
    is streaming."""
    out: mp.Queue = ctx.Queue()
    ready = ctx.Event()
    proc = ctx.Process(target=_watch_proc, args=(api.url, str(api.store.rv), expected, ready, out))
    proc.start()
    while not ready.is_set():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    return proc, out


def _patch_proc(url: str, names: list[tuple[str, str]], count: int, concurrency: int, out: mp.Queue) -> None:
    """Send ``count`` strategic-merge status patches over HTTP with bounded concurrency."""

    async def run() -> None:
        sem = asyncio.Semaphore(concurrency)
        headers = {"Content-Type": "application/strategic-merge-patch+json"}
        codes: dict[int, int] = {}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

            async def one(i: int) -> None:
                ns, name = names[i % len(names)]
                status = "False" if (i // len(names)) % 2 == 0 else "True"
                body = msgspec.json.encode({"status": {"conditions": [{"type": "Ready", "status": status}]}})
                async with (
                    sem,
                    s.patch(
                        f"{url}/api/v1/namespaces/{ns}/pods/{name}/status", data=body, headers=headers
                    ) as r,
                ):
                    await r.read()
                    codes[r.status] = codes.get(r.status, 0) + 1

            t0 = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(count)))
            out.put((time.monotonic() - t0, codes))

    asyncio.run(run())


async def bench(pods: int, patches: int, http_patches: int) -> None:
    nodes = max(1, pods // 400)
    t0 = time.perf_counter()
    sim = SimCluster(  # the bare API server: no Services, so no EndpointSlice-controller stand-in
        nodes, pods // nodes, netns=False, listeners=False, kubelet_delay=None, history=patches + 10,
        services=False, slice_controller=False,
    )  # fmt: skip
    await sim.start()
    try:
        api = sim.api
        print(
            f"cluster: {len(sim.fleet.pods)} pods on {nodes} nodes, created in {time.perf_counter() - t0:.2f} s"
        )
        names = [p.key for p in sim.fleet.pods]

        # full list, cluster-wide: median of 7 (bytes received and decoded by a msgspec client)
        times, size = [], 0
        async with aiohttp.ClientSession() as s:
            for _ in range(7):
                t = time.perf_counter()
                async with s.get(f"{api.url}/api/v1/pods") as r:
                    body = await r.read()
                server_side = time.perf_counter() - t
                items = len(msgspec.json.decode(body)["items"])
                times.append(server_side)
                size = len(body)
            t = time.perf_counter()
            async with s.get(
                f"{api.url}/api/v1/pods", params={"fieldSelector": f"spec.nodeName={sim.fleet.nodes[0]}"}
            ) as r:
                node_items = len((await r.json())["items"])
            node_list = time.perf_counter() - t
        print(
            f"full list: {items} pods, {size / 1e6:.1f} MB, median {statistics.median(times) * 1000:.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}) over {len(times)} runs"
        )
        print(f"list with fieldSelector spec.nodeName: {node_items} pods in {node_list * 1000:.0f} ms")

        ctx = mp.get_context("spawn")

        # watch throughput, changes made in the server (the stream itself is measured)
        proc, out = await _start_watcher(ctx, api, patches)
        t_start = time.monotonic()
        for i in range(patches):
            ns, name = names[i % len(names)]
            api.set_pod_condition(ns, name, "Ready", "False" if (i // len(names)) % 2 == 0 else "True")
            if i % 500 == 0:
                await asyncio.sleep(0)  # let the stream drain while the burst goes on
        t_made = time.monotonic()
        n, _first, last = await asyncio.to_thread(out.get)
        proc.join()
        print(
            f"watch, in-server patch burst: {n} MODIFIED events in {last - t_start:.2f} s = "
            f"{n / (last - t_start):,.0f} events/s (patches applied at {patches / (t_made - t_start):,.0f}/s)"
        )

        # watch throughput during HTTP PATCH bursts from another process (end to end, as ehc drives it)
        proc, out2 = await _start_watcher(ctx, api, http_patches)
        out3: mp.Queue = ctx.Queue()
        t_start = time.monotonic()
        patcher = ctx.Process(target=_patch_proc, args=(api.url, names, http_patches, 64, out3))
        patcher.start()
        elapsed, codes = await asyncio.to_thread(out3.get)
        n, first, last = await asyncio.to_thread(out2.get)
        patcher.join()
        proc.join()
        print(
            f"HTTP status patches (64 in flight, 1 client process): {http_patches} in {elapsed:.2f} s = "
            f"{http_patches / elapsed:,.0f}/s, codes {codes}"
        )
        print(f"watch during the HTTP burst: {n} events at {n / (last - first):,.0f} events/s (patch-bound)")
    finally:
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument(
        "--patches", type=int, default=20_000, help="in-server status changes for the watch burst"
    )
    parser.add_argument("--http-patches", type=int, default=10_000, help="status patches sent over HTTP")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(bench(args.pods, args.patches, args.http_patches))
    except ImportError:
        asyncio.run(bench(args.pods, args.patches, args.http_patches))


if __name__ == "__main__":
    main()
