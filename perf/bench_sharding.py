"""Node evidence needs every target of a node judged in one place: shard whole nodes per worker, or
keep sharding by target and broadcast through the coordinator?  Both costs, measured in one run.

    .venv/bin/python perf/bench_sharding.py

1. **Balance.**  Targets per worker (the busiest over the mean) when the jump hash takes the node's
   name instead of the target's key, for fleets shaped like real clusters, and the share of targets
   that move when a worker is added (both ways move about 1/(N+1)).
2. **The pipe hop a broadcast would add.**  A real WorkerPool (worker processes, pipes, msgpack
   frames) reports transitions of targets on a refusing port; the time from a worker's flip to the
   coordinator's receipt is one hop.  A broadcast needs at least three of them before a node can be
   judged (a suspect up, a look down, the looks' results up), and the results of every attempt during
   an episode crossing the pipe, where node sharding needs none.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections import Counter

from ehc.coordinator.pool import WorkerPool
from ehc.coordinator.sharding import worker_for
from ehc.wire.checks import Tcp
from ehc.wire.messages import Health, Target, Transition
from ehc.wire.settings import ProbeSettings

SHAPES = (  # (nodes, opted-in targets per node)
    (50, 70),  # perf/run.py's fleet
    (200, 30),
    (1_000, 50),
    (20, 250),  # few, dense nodes
)


def balance(nodes: int, per_node: int, workers: int) -> dict[str, float]:
    targets = [(f"node-{n:04d}", f"ns/pod-{n:04d}-{i:03d}") for n in range(nodes) for i in range(per_node)]
    out: dict[str, float] = {}
    for name, shard in (("by target", lambda t: t[1]), ("by node", lambda t: t[0])):
        load = Counter(worker_for(shard(t), workers) for t in targets)
        mean = len(targets) / workers
        out[name] = max(load.values()) / mean
        moved = sum(worker_for(shard(t), workers) != worker_for(shard(t), workers + 1) for t in targets)
        out[f"{name} moved"] = moved / len(targets)
    return out


async def hop_latency(targets: int) -> list[float]:
    with socket.socket() as s:  # a port nobody listens on: every connect is refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    received: list[float] = []

    def on_transitions(worker: int, transitions: list[Transition], suspects: int) -> None:
        received.extend(time.time() - tr.wall_time for tr in transitions)

    settings = ProbeSettings(interval=0.5, timeout=0.25, retry_count=0, confirm_spacing=0.0, node_evidence=0)
    async with WorkerPool(1, settings, on_transitions=on_transitions) as pool:
        pool.upsert(Target(f"t{i}", "127.0.0.1", (Tcp(port),), Health.HEALTHY) for i in range(targets))
        deadline = time.monotonic() + 30
        while len(received) < targets and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    return received


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=int, default=2_000, help="targets flipping for the hop measurement")
    args = p.parse_args()
    print("1. balance: busiest worker / mean, and the share moved when a worker is added")
    print(f"  {'fleet':>24} {'workers':>8} {'by target':>10} {'by node':>8} {'moved (target / node)':>22}")
    for nodes, per_node in SHAPES:
        for workers in (2, 4, 8):
            b = balance(nodes, per_node, workers)
            fleet = f"{nodes} nodes x {per_node}"
            print(
                f"  {fleet:>24} {workers:>8} {b['by target']:>10.3f} {b['by node']:>8.3f} "
                f"{b['by target moved']:>12.3f} / {b['by node moved']:.3f}"
            )
    hops = sorted(asyncio.run(hop_latency(args.targets)))
    q = statistics.quantiles(hops, n=100)
    print(
        f"\n2. one pipe hop, worker flip to coordinator receipt ({len(hops)} transitions, flipping together):"
    )
    print(f"  p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, max {hops[-1] * 1000:.2f} ms")
    print(
        f"  a broadcast's three hops: at least {3 * q[49] * 1000:.2f} ms (p50), {3 * q[98] * 1000:.2f} ms (p99)"
    )


if __name__ == "__main__":
    main()
