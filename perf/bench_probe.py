"""Probe engine benchmark: ehc's worker against a bare uvloop connect loop, side by side, one run.

    .venv/bin/python perf/bench_probe.py            # full run, a few minutes
    .venv/bin/python perf/bench_probe.py --quick    # a smaller sweep for a sanity check
    .venv/bin/python perf/bench_probe.py --json out.json

What it measures (all on loopback, in one invocation, so the machine's noise hits both sides alike):

1. **bare loop**: a uvloop loop that does nothing but non-blocking connects at a fixed concurrency
   (socket, connect, add_writer, SO_ERROR, RST close) — the most a single Python process can do.
   Its probes/s and CPU per 1,000 probes are the yardstick.
2. **ehc capacity**: real ``WorkerPool``s (real worker processes and pipes) holding N TCP targets at a
   1 s interval; N grows until fewer than 99 % of the scheduled probes are done or the schedule lag
   p99 exceeds 100 ms.  The largest passing N is the capacity, reported next to the bare rate.
3. **ehc CPU per probe** at that capacity, from the workers' own CPU accounting, against the bare loop.
4. **ICMP**: 20,000 targets at a 1 s interval on one worker: probes done and lag p99.

The fake endpoints are one wildcard listener with TCP_DEFER_ACCEPT: the kernel completes the
handshake (so the probe succeeds) and discards the half-open connection when the probe's RST
arrives, so the endpoints cost no user-space CPU and never fill an accept queue.  Targets are
distinct 127.x.y.z addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import uvloop

from ehc.coordinator.pool import WorkerPool
from ehc.wire.checks import Icmp, Tcp
from ehc.wire.messages import Health, Stats, Target
from ehc.wire.settings import ProbeSettings
from ehc.worker.limits import raise_fd_limit

LAG_P99_LIMIT = 0.100
DONE_RATIO_LIMIT = 0.99


def address(i: int) -> str:
    """The i-th distinct loopback address, skipping .0 and .255 last octets."""
    a, b = divmod(i, 254)
    return f"127.{1 + (a >> 8) & 0xFF}.{a & 0xFF}.{b + 1}"


def endpoint() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 60)
    s.bind(("0.0.0.0", 0))
    s.listen(65535)
    return s


# ---- bare loop (runs in its own process so its CPU accounting is its own) ------------------------


def bare_child(port: int, addresses: int, seconds: float, concurrency: int) -> dict[str, float]:
    import _socket
    import errno

    linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"
    sock_type = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC

    async def main() -> dict[str, float]:
        loop = asyncio.get_running_loop()
        done = 0
        failed = 0
        i = 0
        stop_at = time.monotonic() + seconds

        def start() -> None:
            nonlocal i
            i += 1
            s = _socket.socket(socket.AF_INET, sock_type)  # the same C-level socket ehc uses
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            if s.connect_ex((address(i % addresses), port)) != errno.EINPROGRESS:
                s.close()
                loop.call_soon(finish_failed)
                return
            fd = s.fileno()
            loop.add_writer(fd, writable, s, fd)

        def finish_failed() -> None:
            nonlocal failed
            failed += 1
            again()

        def writable(s: _socket.socket, fd: int) -> None:
            nonlocal done, failed
            loop.remove_writer(fd)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                failed += 1
            else:
                done += 1
            s.close()
            again()

        def again() -> None:
            if time.monotonic() < stop_at:
                start()
            elif done + failed == i:
                finished.set_result(None)

        finished = loop.create_future()
        cpu0, t0 = time.process_time(), time.monotonic()
        for _ in range(concurrency):
            start()
        await finished
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        return {"probes": done, "failed": failed, "rate": done / wall, "cpu_us_per_probe": cpu / done * 1e6}

    raise_fd_limit()
    return uvloop.run(main())


def run_bare(port: int, addresses: int, seconds: float, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--bare-child", str(port), str(addresses), str(seconds), str(concurrency)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


# ---- ehc worker pool -----------------------------------------------------------------------------


@dataclass
class PoolRun:
    kind: str
    workers: int
    targets: int
    scheduled_rate: float  # probes/s the schedule asks for
    done_rate: float  # probes/s completed
    done_ratio: float
    lag_p50: float
    lag_p99: float
    failures: int
    cpu_us_per_probe: float
    rss_mb_per_worker: float
    passed: bool


async def run_pool(
    kind: str, targets: list[Target], workers: int, settings: ProbeSettings, warmup: float, measure: float
) -> PoolRun:
    log: list[Stats] = []
    pool = WorkerPool(workers, settings, on_transitions=lambda w, t, s: None, on_stats=log.append)
    await pool.start()
    try:
        pool.upsert(targets)
        await asyncio.sleep(warmup)
        mark = len(log)
        first = dict(pool.stats)
        await asyncio.sleep(measure)
        last = dict(pool.stats)
        window = [s for s in log[mark:] if s.worker in first]
    finally:
        await pool.close()
    probes = sum(_probes(last[w]) - _probes(first[w]) for w in first)
    failures = sum(_failures(last[w]) - _failures(first[w]) for w in first)
    cpu = sum(last[w].cpu_seconds - first[w].cpu_seconds for w in first)
    # Elapsed per worker is the sum of its stats windows between the two snapshots.
    elapsed = statistics.mean(sum(s.window_seconds for s in window if s.worker == w) for w in first)
    scheduled = len(targets) / settings.interval
    done_rate = probes / elapsed if elapsed else 0.0
    lag_p99 = max((s.lag_p99 for s in window), default=0.0)
    ratio = done_rate / scheduled
    return PoolRun(
        kind=kind,
        workers=workers,
        targets=len(targets),
        scheduled_rate=scheduled,
        done_rate=done_rate,
        done_ratio=ratio,
        lag_p50=statistics.median([s.lag_p50 for s in window]) if window else 0.0,
        lag_p99=lag_p99,
        failures=failures,
        cpu_us_per_probe=cpu / probes * 1e6 if probes else float("nan"),
        rss_mb_per_worker=statistics.mean(last[w].rss_bytes for w in last) / 2**20,
        passed=ratio >= DONE_RATIO_LIMIT and lag_p99 <= LAG_P99_LIMIT and failures == 0,
    )


def _probes(s: Stats) -> int:
    return sum(s.probes.values())


def _failures(s: Stats) -> int:
    return sum(s.failures.values())


def tcp_targets(n: int, port: int) -> list[Target]:
    check = (Tcp(port),)
    return [Target(f"t{i}", address(i), check, Health.HEALTHY) for i in range(n)]


def icmp_targets(n: int) -> list[Target]:
    return [Target(f"i{i}", address(i), (Icmp(),)) for i in range(n)]


async def capacity(
    port: int, workers: int, start: int, step: int, settings: ProbeSettings, quick: bool
) -> tuple[PoolRun | None, list[PoolRun]]:
    """Grow N by ``step`` until a run fails, then bisect once between the last pass and the failure."""
    runs: list[PoolRun] = []
    best: PoolRun | None = None
    n = start
    warmup, measure = (2.0, 3.0) if quick else (3.0, 5.0)
    while True:
        r = await run_pool("tcp", tcp_targets(n, port), workers, settings, warmup, measure)
        runs.append(r)
        _print_run(r)
        if not r.passed:
            break
        best = r
        n += step
    low = best.targets if best else 0
    for _ in range(1 if quick else 2):
        mid = (low + r.targets) // 2 // 500 * 500
        if mid <= low:
            break
        m = await run_pool("tcp", tcp_targets(mid, port), workers, settings, warmup, measure)
        runs.append(m)
        _print_run(m)
        if m.passed:
            best, low = m, mid
        else:
            r = m
    return best, runs


def _print_run(r: PoolRun) -> None:
    print(
        f"  {r.kind:4} workers={r.workers} targets={r.targets:>6}  done {r.done_rate:>8.0f}/s of "
        f"{r.scheduled_rate:>6.0f}/s ({r.done_ratio:6.1%})  lag p50 {r.lag_p50 * 1000:6.1f}ms "
        f"p99 {r.lag_p99 * 1000:6.1f}ms  fail {r.failures}  cpu {r.cpu_us_per_probe:5.1f}us/probe  "
        f"{'PASS' if r.passed else 'fail'}",
        flush=True,
    )


async def main(args: argparse.Namespace) -> dict[str, object]:
    raise_fd_limit()
    listener = endpoint()
    port = listener.getsockname()[1]
    settings = ProbeSettings(interval=1.0, timeout=0.5, retry_count=3)
    quick = args.quick
    report: dict[str, object] = {"cpus": os.cpu_count(), "quick": quick}

    print("bare uvloop connect loop (own process, concurrency 256):", flush=True)
    bare_runs = [run_bare(port, 20_000, 2.0 if quick else 4.0, 256) for _ in range(1 if quick else 3)]
    for b in bare_runs:
        print(
            f"  {b['rate']:8.0f} probes/s  {b['cpu_us_per_probe']:5.1f}us CPU/probe  failed {b['failed']}",
            flush=True,
        )
    bare_rate = statistics.median(b["rate"] for b in bare_runs)
    bare_cpu = statistics.median(b["cpu_us_per_probe"] for b in bare_runs)
    report["bare"] = {"runs": bare_runs, "rate_median": bare_rate, "cpu_us_per_probe_median": bare_cpu}

    print("ehc capacity at a 1 s interval (>= 99% of scheduled probes done, lag p99 <= 100 ms):", flush=True)
    start, step = (5_000, 5_000) if quick else (10_000, 5_000)
    best, runs = await capacity(port, 1, start, step, settings, quick)
    report["ehc_capacity_runs"] = [asdict(r) for r in runs]
    cap_rate = best.done_rate if best else 0.0
    report["ehc_capacity_targets"] = best.targets if best else 0
    report["ehc_capacity_vs_bare_rate"] = cap_rate / bare_rate
    ehc_cpu = best.cpu_us_per_probe if best else float("nan")
    report["ehc_cpu_us_per_probe"] = ehc_cpu
    report["ehc_vs_bare_cpu_per_probe"] = ehc_cpu / bare_cpu

    if not quick and best is not None:
        print("ehc with 2 workers at 1.5x the 1-worker capacity:", flush=True)
        two = await run_pool("tcp", tcp_targets(int(best.targets * 1.5), port), 2, settings, 3.0, 5.0)
        _print_run(two)
        report["ehc_two_workers"] = asdict(two)

    print("ICMP: 20,000 targets at a 1 s interval on one worker:", flush=True)
    icmp = await run_pool("icmp", icmp_targets(20_000), 1, settings, 3.0, 3.0 if quick else 5.0)
    _print_run(icmp)
    report["icmp_20k"] = asdict(icmp)
    listener.close()

    print()
    print("summary                                   ehc        bare    ehc/bare")
    print(
        f"  probes/s (ehc at capacity, bare at max) {cap_rate:8.0f}  {bare_rate:10.0f}    {cap_rate / bare_rate:6.2f}   goal >= 0.70"
    )
    print(
        f"  CPU seconds per 1,000 probes            {ehc_cpu / 1000:8.4f}  {bare_cpu / 1000:10.4f}    {ehc_cpu / bare_cpu:6.2f}   goal <= 1.50"
    )
    print(f"  capacity at 1 s interval, 1 worker      {report['ehc_capacity_targets']:>8} targets")
    print(
        f"  ICMP 20,000 targets, 1 worker           {icmp.done_ratio:8.1%} done, lag p99 {icmp.lag_p99 * 1000:.1f} ms   {'PASS' if icmp.passed else 'fail'}"
    )
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-child":
        port, addresses, seconds, concurrency = sys.argv[2:6]
        print(json.dumps(bare_child(int(port), int(addresses), float(seconds), int(concurrency))))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sweep, about a minute")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args()
    result = uvloop.run(main(args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
