"""False ejections under random packet loss, and detection time, for several retry counts, one run.

    .venv/bin/python perf/bench_loss.py                       # 2 % loss, 120 s per setting (as root)
    .venv/bin/python perf/bench_loss.py --loss 5 --seconds 300 --retry-counts 3 5 7

For each retry count, a fresh simulated cluster (in a private network namespace: the loss is an
nftables ``numgen random`` rule on packets to pod IPs) runs the real ``ehc run``; after warm-up the
whole fleet loses ``--loss`` % of its packets for ``--seconds``.  Every pod taken out of service in
that time is a false ejection.  Then, still under loss, one node is powered off and the time until
each of its pods is taken out of service is measured from the API server's write log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import time

from ehc.sim import SimCluster
from ehc.sim import netns as sim_netns


def marked(sim: SimCluster, since: float) -> dict[tuple[str, str], float]:
    return sim.api.write_log.first_taken_out(since)


async def one(args: argparse.Namespace, retry_count: int) -> dict[str, object]:
    async with SimCluster(nodes=args.nodes, pods_per_node=args.pods_per_node, kubelet_delay=None) as sim:
        fleet = sim.fleet
        gate_pods = [p for p in fleet.targets() if p.style == "gate"]
        proc = await asyncio.create_subprocess_exec(
            *sim.exec_prefix(), sys.executable, "-m", "ehc", "run", "--kubeconfig", sim.kubeconfig,
            "--retry-count", str(retry_count), "--identity", "bench", "--namespace", "default",
            "--metrics-address", "", "--peer-address", "", "--log-level", "error", env={**os.environ},
        )  # fmt: skip
        try:
            while not all(
                sim.api.pod_condition(p.namespace, p.name, "endpointHealthCheckSuccess") == "True"
                for p in gate_pods
            ):
                await asyncio.sleep(0.1)
            await asyncio.sleep(2.0)
            t0 = time.monotonic()
            fleet.set_loss(args.loss)
            await asyncio.sleep(args.seconds)
            false = marked(sim, t0)
            victim = fleet.nodes[0]
            on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
            t1 = time.monotonic()
            fleet.power_off(victim)
            deadline = t1 + 30
            while not on_victim <= marked(sim, t1).keys() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            m = marked(sim, t1)
            detection = sorted(m[k] - t1 for k in on_victim if k in m)
        finally:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
    result = {
        "retry_count": retry_count,
        "targets": len(fleet.targets()),
        "loss_percent": args.loss,
        "seconds": args.seconds,
        "false_ejections": len(false),
        "victim_pods": len(on_victim),
        "detected": len(detection),
        "detection_p50": round(statistics.median(detection), 3) if detection else None,
        "detection_max": round(detection[-1], 3) if detection else None,
    }
    print(
        f"retry-count {retry_count}: {result['targets']} targets, {args.loss}% loss for {args.seconds:.0f}s -> "
        f"{len(false)} false ejections; node power-off: {len(detection)}/{len(on_victim)} detected, "
        f"p50 {result['detection_p50']}s max {result['detection_max']}s",
        flush=True,
    )
    return result


async def main(args: argparse.Namespace) -> list[dict[str, object]]:
    return [await one(args, r) for r in args.retry_counts]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loss", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--pods-per-node", type=int, default=100)
    parser.add_argument("--retry-counts", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--json", metavar="FILE")
    ok, why = sim_netns.available()
    if not ok:
        sys.exit(f"needs a private network namespace for packet loss: {why}")
    a = parser.parse_args()
    results = asyncio.run(main(a))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
