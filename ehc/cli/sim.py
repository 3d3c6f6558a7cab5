"""``ehc sim``: run a simulated cluster by hand and point kubectl or ehc at it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shlex
import signal
import sys


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "sim",
        help="run a simulated cluster (API server + fake nodes) until Ctrl-C",
        description="Serve a simulated Kubernetes API and a fleet of fake pods that answer on loopback.",
    )
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--pods-per-node", type=int, default=10, help="pods per node (default 10)")
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


def run(args: argparse.Namespace) -> int:
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
            prefix = shlex.join(sim.exec_prefix())
            info.append(f"  {prefix} ehc run --kubeconfig {sim.kubeconfig}")
        else:
            info.append(f"  no network namespace ({sim.fallback_reason}): only closed ports can be injected")
        print("\n".join(info), file=sys.stderr, flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await stop.wait()
    return 0
