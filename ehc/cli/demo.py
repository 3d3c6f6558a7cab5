"""``ehc demo``: ehc's main job on the embedded simulated cluster, measured.

Starts the simulated cluster (pods behind Services whose EndpointSlices a stand-in for Kubernetes'
controller derives from the pods, and external backends published through selectorless Services),
runs the real ``ehc run --selectorless`` (a separate process, talking to the simulated API server
through a kubeconfig, probing real sockets), waits until every gate pod has its first value, powers
one node off, waits until ehc has taken its pods and backends out of service, powers it back on, and
reports what the API server's write log saw: time to each pod's NotReady, to its address leaving its
Service's EndpointSlice (what traffic follows), to each backend address going not ready; what was
wrongly marked; API writes per transition and per object; recovery times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import time
from typing import Any

from ehc.cli import argtypes
from ehc.kube.model import GATE
from ehc.sim import SimCluster
from ehc.sim import netns as sim_netns
from ehc.sim.slicectl import ACTOR as SLICE_CONTROLLER


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run ehc against the embedded simulated cluster: power a node off and measure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--nodes", type=argtypes.positive, default=20, help="simulated nodes (default 20)")
    p.add_argument("--pods-per-node", type=argtypes.positive, default=100, help="pods per node (default 100)")
    p.add_argument("--workers", type=argtypes.positive, default=1, help="ehc worker processes (default 1)")
    p.add_argument(
        "--backends-per-node", type=argtypes.whole(0, 20), default=5,
        help="external backends per node behind selectorless Services (default 5)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument(
        "--timeout", type=float, default=60.0, help="give up waiting for a phase after this many seconds"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        summary = asyncio.run(_demo(args))
    except TimeoutError as exc:
        print(f"ehc demo: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    complete = (
        summary["detected"] == summary["victim_pods"]
        and summary["backends_detected"] == summary["victim_backends"]
        and summary["status_exit"] == 1  # ehc's own view says so too
    )
    return 0 if summary["false_unhealthy"] == 0 and complete else 1


def _say(args: argparse.Namespace, text: str) -> None:
    if not args.json:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


async def _wait(predicate: Any, limit: float, what: str, progress: Any = None) -> None:
    deadline = time.monotonic() + limit
    last = 0.0
    while not predicate():
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"gave up after {limit:.0f}s waiting for {what}")
        if progress is not None and now - last >= 1.0:
            progress()
            last = now
        await asyncio.sleep(0.05)


async def _demo(args: argparse.Namespace) -> dict[str, Any]:
    can_netns, why = sim_netns.available()
    limits: list[str] = []
    if not can_netns:
        limits.append(
            f"no private network namespace ({why}): a powered-off node is simulated by closing its "
            "listeners, so connections are refused at once instead of timing out"
        )
    async with SimCluster(
        nodes=args.nodes,
        pods_per_node=args.pods_per_node,
        kubelet_delay=1.0,
        external_per_node=args.backends_per_node,
    ) as sim:
        fleet = sim.fleet
        targets = fleet.targets()
        gate_pods = [p for p in targets if p.style == "gate"]
        _say(args, f"simulated cluster: {len(fleet.pods)} pods on {args.nodes} nodes, {len(targets)} opted in "
                   f"({len(gate_pods)} with the readiness gate), {len(fleet.externals())} backend addresses "
                   f"behind selectorless Services; kubeconfig {sim.kubeconfig}")  # fmt: skip
        status_url = f"http://127.0.0.1:{_free_port()}"  # the status page, in the cluster's namespace
        proc = await asyncio.create_subprocess_exec(
            *sim.exec_prefix(), sys.executable, "-m", "ehc", "run", "--kubeconfig", sim.kubeconfig,
            "--workers", str(args.workers), "--identity", "ehc-demo", "--namespace", "default",
            "--metrics-address", status_url.removeprefix("http://"), "--peer-address", "", "--log-level", "warning",
            "--selectorless", env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            return await _scenario(args, sim, proc, targets, gate_pods, limits, status_url)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()


async def _scenario(args: argparse.Namespace, sim: SimCluster, proc: Any, targets: list[Any], gate_pods: list[Any],
                    limits: list[str], status_url: str) -> dict[str, Any]:  # fmt: skip
    fleet, api, log = sim.fleet, sim.api, sim.api.write_log
    started = time.monotonic()

    def gates_set() -> int:
        return sum(api.pod_condition(p.namespace, p.name, GATE) == "True" for p in gate_pods)

    await _wait(lambda: gates_set() == len(gate_pods), args.timeout, "every gate pod's first value",
                lambda: _say(args, f"  probing: {gates_set()}/{len(gate_pods)} gate pods have their first value"))  # fmt: skip
    _say(
        args, f"every target probed; {len(gate_pods)} gate pods set True in {time.monotonic() - started:.1f}s"
    )
    await asyncio.sleep(2.0)  # a couple of intervals of steady state: nothing must be written

    victim = fleet.nodes[0]
    on_victim = {(p.namespace, p.name) for p in fleet.pods_on(victim) if p.opted_in}
    # Each pod's address in its Service's slice, as the stand-in for Kubernetes' controller writes it.
    routed = {(p.namespace, p.ip) for p in fleet.pods_on(victim) if p.opted_in}
    backends = {(x.namespace, x.name, x.ip) for x in fleet.externals_on(victim)}
    before = len(log.entries)
    t0 = time.monotonic()
    fleet.power_off(victim)
    _say(args, f"powered off {victim} ({len(on_victim)} opted-in pods, {len(backends)} backend addresses)")

    def marked() -> dict[tuple[str, str], float]:
        return log.first_taken_out(since=t0)

    def unrouted() -> dict[tuple[str, str], float]:  # (namespace, pod IP) -> left its Service's slice
        out: dict[tuple[str, str], float] = {}
        for (ns, _, ip), t in log.slice_not_ready(since=t0, actor=SLICE_CONTROLLER).items():
            out[(ns, ip)] = min(t, out.get((ns, ip), t))
        return out

    def backends_out() -> dict[tuple[str, str, str], float]:
        return log.addresses_marked(False, since=t0, actor="client")

    def done() -> bool:
        return (
            on_victim <= marked().keys() and routed <= unrouted().keys() and backends <= backends_out().keys()
        )

    await _wait(done, args.timeout, f"{victim}'s pods and backends to be taken out of service",
                lambda: _say(args, f"  {len(on_victim & marked().keys())}/{len(on_victim)} of {victim}'s pods marked NotReady, "
                                   f"{len(backends & backends_out().keys())}/{len(backends)} backend addresses not ready"))  # fmt: skip
    await asyncio.sleep(1.0)  # anything wrongly marked would show up now
    m, r, b = marked(), unrouted(), backends_out()
    detection = sorted(m[k] - t0 for k in on_victim if k in m)
    unrouting = sorted(r[k] - t0 for k in routed)
    backend_detection = sorted(b[k] - t0 for k in backends)
    wrong = sorted(f"{ns}/{name}" for ns, name in m.keys() - on_victim)
    wrong += sorted(f"{ns}/{name} {ip}" for ns, name, ip in b.keys() - backends)
    victim_writes = [e for e in log.entries[before:] if e.actor == "client" and e.resource == "pods"
                     and (e.namespace, e.name) in on_victim]  # fmt: skip
    objects = {(ns, name) for ns, name, _ in backends}
    object_writes = [e for e in log.entries[before:] if e.actor == "client" and e.verb == "PATCH"
                     and e.resource in ("endpointslices", "endpoints") and (e.namespace, e.name) in objects]  # fmt: skip
    _say(args, f"all {len(detection)} pods marked NotReady (slowest after {detection[-1]:.2f}s), out of their "
               f"Services' slices after {unrouting[-1]:.2f}s; {len(backend_detection)} backend addresses in "
               f"{len(objects)} objects not ready after {_last(backend_detection):.2f}s")  # fmt: skip

    # What ehc itself says about it: `ehc status`, as an operator would run it.
    status = await asyncio.create_subprocess_exec(
        *sim.exec_prefix(), sys.executable, "-m", "ehc", "status", "--url", status_url, "--unhealthy",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    said = (await status.communicate())[0].decode().splitlines()
    listed = [line for line in said[1:] if line.startswith("unhealthy ")]
    _say(args, f"`ehc status --unhealthy` (exit {status.returncode}) lists {len(listed)} unhealthy targets:")
    for line in [*said[:6], *(["  …"] if len(said) > 6 else [])]:
        _say(args, f"  {line}")

    t1 = time.monotonic()
    fleet.recover(victim)
    gate_victims = [p for p in gate_pods if (p.namespace, p.name) in on_victim]

    def recovered() -> int:
        return sum(api.pod_condition(p.namespace, p.name, GATE) == "True" for p in gate_victims)

    await _wait(lambda: recovered() == len(gate_victims), args.timeout, "the gate pods to recover")
    recovery = time.monotonic() - t1
    _say(args, f"{victim} back: its {len(gate_victims)} gate pods set True again after {recovery:.2f}s")

    def back() -> dict[tuple[str, str, str], float]:
        return log.addresses_marked(True, since=t1, actor="client")

    await _wait(lambda: backends <= back().keys(), args.timeout, "the backends to be ready again")
    ready_again = back()
    backend_recovery = max((ready_again[k] - t1 for k in backends), default=0.0)
    return {
        "pods": len(fleet.pods),
        "targets": len(targets),
        "gate_pods": len(gate_pods),
        "workers": args.workers,
        "victim_node": victim,
        "victim_pods": len(on_victim),
        "detected": len(detection),
        "detection_seconds": _spread(detection),
        "unrouted_seconds": _spread(unrouting),
        "victim_backends": len(backends),
        "victim_backend_objects": len(objects),
        "backends_detected": len(backend_detection),
        "backend_detection_seconds": _spread(backend_detection),
        "false_unhealthy": len(wrong),
        "false_unhealthy_pods": wrong[:20],
        "writes_per_transition": round(len(victim_writes) / max(1, len(detection)), 3),
        "writes_per_backend_object": round(len(object_writes) / max(1, len(objects)), 3),
        "status_exit": status.returncode,
        "status_unhealthy_listed": len(listed),
        "recovery_seconds_gate": round(recovery, 3),
        "recovery_seconds_backends": round(backend_recovery, 3),
        "node_monitor_grace_period_seconds": 40,
        "network_namespace": sim.netns,
        "limits": limits,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _last(values: list[float]) -> float:
    return values[-1] if values else 0.0


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "p50": round(statistics.median(values), 3),
        "p99": round(_quantile(values, 0.99), 3),
        "max": round(values[-1], 3),
    }


def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def _row(d: dict[str, float]) -> str:
    return f"{d['p50']:.2f}s / {d['p99']:.2f}s / {d['max']:.2f}s"


def _print_summary(s: dict[str, Any]) -> None:
    d = s["detection_seconds"]
    rows = [
        ("pods / opted in / gate", f"{s['pods']} / {s['targets']} / {s['gate_pods']}"),
        ("workers", s["workers"]),
        (f"pods on {s['victim_node']} marked NotReady", f"{s['detected']} of {s['victim_pods']}"),
        ("power-off → NotReady p50 / p99 / max", _row(d)),
        ("power-off → out of the Service's EndpointSlice", _row(s["unrouted_seconds"])),
        (
            f"backend addresses on {s['victim_node']} not ready",
            f"{s['backends_detected']} of {s['victim_backends']} "
            f"(in {s['victim_backend_objects']} selectorless objects)",
        ),
        ("power-off → backend not ready p50 / p99 / max", _row(s["backend_detection_seconds"])),
        ("Kubernetes alone (node-monitor grace period)", f"{s['node_monitor_grace_period_seconds']}s"),
        ("pods or backends wrongly marked", s["false_unhealthy"]),
        ("API writes per pod transition", s["writes_per_transition"]),
        ("API writes per backend object", s["writes_per_backend_object"]),
        (
            "`ehc status --unhealthy`: exit / unhealthy listed",
            f"{s['status_exit']} / {s['status_unhealthy_listed']}",
        ),
        ("gate pods recovered after power-on", f"{s['recovery_seconds_gate']:.2f}s"),
        ("backends ready again after power-on", f"{s['recovery_seconds_backends']:.2f}s"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    for limit in s["limits"]:
        print(f"  note: {limit}")
