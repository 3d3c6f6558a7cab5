"""``ehc sim``: run a simulated cluster by hand and point kubectl or ehc at it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal
import sys
from typing import TYPE_CHECKING

from ehc.cli import argtypes
from ehc.sim.fleet import BLOCK

if TYPE_CHECKING:
    from ehc.sim import SimCluster

MAX_NODES = 4096  # each node owns a /22 of 127.64.0.0/10
MAX_PODS_PER_NODE = BLOCK - 3
MAX_PODS = 100_000  # the simulated API server holds every pod in memory, and lists them all


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sim",
        help="run a simulated cluster (API server + fake nodes) until Ctrl-C",
        description="Serve a simulated Kubernetes API and a fleet of fake pods that answer on loopback.",
    )
    p.add_argument(
        "--nodes",
        type=argtypes.whole(1, MAX_NODES),
        default=3,
        help=f"number of nodes (default 3, at most {MAX_NODES})",
    )
    p.add_argument(
        "--pods-per-node", type=argtypes.whole(1, MAX_PODS_PER_NODE), default=10,
        help=f"pods per node (default 10, at most {MAX_PODS_PER_NODE})",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="fleet generation seed (default 1)")
    p.add_argument(
        "--ipv6-every", type=int, default=25, help="every Nth pod is IPv6; 0 for none (default 25)"
    )
    p.add_argument("--token", default=None, help="require this bearer token")
    p.add_argument("--kubelet-delay", type=float, default=5.0, help="seconds before the kubelet stand-in "
                   "restores Ready=True (negative disables; default 5)")  # fmt: skip
    p.add_argument("--no-netns", action="store_true", help="do not use a private network namespace")
    p.add_argument("--kubeconfig-out", default=None, help="also copy the kubeconfig to this path")
    p.add_argument(
        "--cleanup", action="store_true", help="only remove leftover ehc-sim-* namespaces and exit"
    )
    p.set_defaults(func=run)


def run_command(sim: SimCluster) -> list[str]:
    """``ehc run`` against ``sim``, inside its network namespace, with its metrics on a port the fleet's
    pods do not use (they listen on every address there)."""
    ports = {p for pod in sim.fleet.pods for p in pod.ports}
    metrics = next(p for p in range(19090, 20000) if p not in ports)
    return [
        *sim.exec_prefix(), sys.executable, "-m", "ehc", "run", "--kubeconfig", sim.kubeconfig,
        "--metrics-address", f"127.0.0.1:{metrics}",
    ]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.nodes * args.pods_per_node > MAX_PODS:
        print(
            f"ehc sim: error: {args.nodes} nodes × {args.pods_per_node} pods is {args.nodes * args.pods_per_node:,} "
            f"pods; at most {MAX_PODS:,} in all",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cleanup:
        from ehc.sim import netns

        for name in netns.cleanup_stale():
            print(f"removed {name}")
        return 0
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    return runner(_serve(args))


async def _serve(args: argparse.Namespace) -> int:
    from ehc.sim import SimCluster

    sim = SimCluster(
        args.nodes,
        args.pods_per_node,
        netns=False if args.no_netns else None,
        token=args.token,
        kubelet_delay=None if args.kubelet_delay < 0 else args.kubelet_delay,
        seed=args.seed,
        ipv6_every=args.ipv6_every,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        if args.kubeconfig_out:
            with open(args.kubeconfig_out, "w", encoding="utf-8") as f:
                f.write(sim.api.kubeconfig())
        fleet = sim.fleet
        print(sim.kubeconfig, flush=True)
        info = [
            f"ehc sim: {len(fleet.pods)} pods on {len(fleet.nodes)} nodes, {len(fleet.targets())} opted in",
            f"  API server: {sim.url}",
            f"  kubectl --kubeconfig {sim.kubeconfig} get pods -A",
        ]
        if sim.netns:
            info.append(f"  network namespace: {sim.netns} (pods reachable only there)")
            info.append(f"  {shlex.join(run_command(sim))}")
        else:
            info.append(f"  no network namespace ({sim.fallback_reason}): only closed ports can be injected")
        print("\n".join(info), file=sys.stderr, flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await stop.wait()
    return 0
