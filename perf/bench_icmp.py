"""ICMP: ehc's multiplexed socket (IcmpPinger) against aioping, side by side in one run.

    .venv/bin/python perf/bench_icmp.py [--targets 1000,5000] [--rounds 5] [--aioping-rounds 3]

For each fleet size, every target (a distinct 127.x.y.z, all answered by the kernel on loopback) is
pinged once, all at once, on a uvloop loop; a round ends when every ping has an outcome.  Reported per
implementation (medians over rounds): wall time per round, CPU seconds (user + system of this process,
which on loopback includes the kernel's delivery work) per 1,000 pings, replies received / pings sent,
and the aioping/ehc ratios.

aioping opens a raw socket per ping and every raw ICMP socket receives a copy of every ICMP packet,
so its cost grows with the square of the concurrency.  Each aioping round is capped (``--cap``
seconds, then cancelled and reported as "capped"); after a capped round that size is not repeated,
so the whole run stays within a few minutes.  Needs root (raw sockets) or an open ping_group_range.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import socket
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ehc.probe import OK
from ehc.probe.icmp import IcmpPinger
from ehc.wire.checks import Icmp
from ehc.worker.limits import raise_fd_limit

PING_TIMEOUT = 2.0


@dataclass
class Round:
    wall: float
    cpu: float
    sent: int
    replies: int
    failures: dict[str, int] = field(default_factory=dict)
    capped: int = 0  # pings still unfinished when the round was cancelled


@dataclass
class Result:
    impl: str
    targets: int
    rounds: list[Round] = field(default_factory=list)

    def med(self, attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in self.rounds)

    @property
    def cpu_per_1k(self) -> float:
        return statistics.median(r.cpu / r.sent * 1000 for r in self.rounds)


def addresses(n: int) -> list[str]:
    return [f"127.{2 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}" for i in range(n)]


async def ehc_round(pinger: IcmpPinger, targets: list[str]) -> Round:
    loop = asyncio.get_running_loop()
    left = len(targets)
    replies = 0
    failures: dict[str, int] = {}
    finished = loop.create_future()

    def done(outcome: int, latency: float, detail: str) -> None:
        nonlocal left, replies
        if outcome == OK:
            replies += 1
        else:
            failures[detail] = failures.get(detail, 0) + 1
        left -= 1
        if not left:
            finished.set_result(None)

    c0, w0 = time.process_time(), time.perf_counter()
    start, check = pinger.start, Icmp()
    for ip in targets:
        start(ip, socket.AF_INET, check, done)
    await finished
    return Round(time.perf_counter() - w0, time.process_time() - c0, len(targets), replies, failures)


async def aioping_round(targets: list[str], cap: float) -> Round:
    import aioping

    outcomes: dict[str, int] = {}

    async def one(ip: str) -> None:
        try:
            await aioping.ping(ip, PING_TIMEOUT)
            key = "ok"
        except TimeoutError:
            key = "timeout"
        except OSError as exc:
            key = f"errno {exc.errno}"
        outcomes[key] = outcomes.get(key, 0) + 1

    c0, w0 = time.process_time(), time.perf_counter()
    tasks = [asyncio.ensure_future(one(ip)) for ip in targets]
    _, pending = await asyncio.wait(tasks, timeout=cap)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    failures = {k: v for k, v in outcomes.items() if k != "ok"}
    gc.collect()  # close sockets leaked by cancelled pings before the next round
    return Round(wall, cpu, len(targets), outcomes.get("ok", 0), failures, len(pending))


async def main(args: argparse.Namespace) -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    hard = raise_fd_limit()
    loop = asyncio.get_running_loop()
    pinger = IcmpPinger(loop, PING_TIMEOUT)
    desc = pinger.open()
    print(f"# {desc}")
    print(
        f"# RLIMIT_NOFILE {soft} -> {hard}; ping timeout {PING_TIMEOUT}s; aioping cap {args.cap:.0f}s/round"
    )
    if pinger.modes[socket.AF_INET] == "unavailable":
        sys.exit("ICMP unavailable: run as root or open net.ipv4.ping_group_range")
    results: list[tuple[Result, Result]] = []
    for n in args.targets:
        targets = addresses(n)
        ehc = Result("ehc", n)
        await ehc_round(pinger, targets)  # warm-up (dict sizes, timers, ARP-free loopback routes)
        for _ in range(args.rounds):
            ehc.rounds.append(await ehc_round(pinger, targets))
        aio = Result("aioping", n)
        for _ in range(args.aioping_rounds):
            r = await aioping_round(targets, args.cap)
            aio.rounds.append(r)
            print(f"#   aioping {n}: round {len(aio.rounds)} {r.wall:.2f}s {r.failures}", flush=True)
            await asyncio.sleep(0.5)  # let stragglers drain
            if r.capped:
                break
        results.append((ehc, aio))
    pinger.close()

    header = (
        f"{'targets':>7}  {'impl':<8} {'rounds':>6}  {'wall/round':>10}  {'CPU s/1k pings':>14}  "
        f"{'replies/sent':>16}  {'wall ×':>7}  {'CPU ×':>7}  notes"
    )
    print()
    print(header)
    print("-" * len(header))
    for ehc, aio in results:
        for res in (ehc, aio):
            sent = sum(r.sent for r in res.rounds)
            got = sum(r.replies for r in res.rounds)
            ratio_w = ratio_c = ""
            if res is aio:
                ratio_w = f"{aio.med('wall') / ehc.med('wall'):.0f}"
                ratio_c = f"{aio.cpu_per_1k / ehc.cpu_per_1k:.0f}"
            failures: dict[str, int] = {}
            for r in res.rounds:
                for k, v in r.failures.items():
                    failures[k] = failures.get(k, 0) + v
            capped = sum(r.capped for r in res.rounds)
            if capped:
                failures[f"unfinished at {args.cap:.0f}s cap"] = capped
            notes = ", ".join(f"{k} {v}" for k, v in sorted(failures.items()))
            print(
                f"{res.targets:>7}  {res.impl:<8} {len(res.rounds):>6}  {res.med('wall'):>9.3f}s  "
                f"{res.cpu_per_1k:>14.3f}  {f'{got}/{sent} ({100 * got / sent:.1f}%)':>16}  "
                f"{ratio_w:>7}  {ratio_c:>7}  {notes}"
            )
    print("\nwall × and CPU × are aioping / ehc (medians). Replies counted are pings answered in time.")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="1000,5000", help="comma-separated fleet sizes")
    p.add_argument("--rounds", type=int, default=5, help="ehc rounds per size")
    p.add_argument("--aioping-rounds", type=int, default=3, help="aioping rounds per size")
    p.add_argument("--cap", type=float, default=30.0, help="seconds before an aioping round is cancelled")
    args = p.parse_args()
    args.targets = [int(x) for x in args.targets.split(",")]
    return args


if __name__ == "__main__":
    if os.geteuid() != 0:
        print("# not root: ehc uses datagram sockets if allowed; aioping needs them too", file=sys.stderr)
    uvloop.run(main(parse_args()))
