"""``ehc run``: the controller, in a cluster (in-cluster config) or against ``--kubeconfig``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

import uvloop

from ehc.coordinator import settings as settings_mod
from ehc.wire.logs import setup_logging
from ehc.worker.limits import raise_fd_limit

log = logging.getLogger("ehc")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="run the controller: watch opted-in pods, probe them, flip their readiness",
        description=(
            'Watch pods that opted in (annotation endpoint-health-checker.io/enabled: "true" or the '
            "readiness gate endpointHealthCheckSuccess), probe them with worker processes, and write their "
            "readiness when they stop or start answering. Only the holder of the leader-election Lease "
            "probes and writes. Every setting is an environment variable and a flag (the flag wins); an "
            "invalid value exits with status 2. Fail-safe: while more than the fail-safe share of all "
            "targets is unhealthy or suspect, no pod is marked unhealthy."
        ),
    )
    p.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, else in-cluster config)"
    )
    settings_mod.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_mod.load(args)
    except settings_mod.SettingsError as exc:
        print(f"ehc run: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    for concern in settings_mod.concerns(settings):
        log.warning("%s", concern)
    raise_fd_limit()
    return uvloop.run(_main(settings, args.kubeconfig))


async def _main(settings: settings_mod.RunSettings, kubeconfig: str | None) -> int:
    from kubernetes_asyncio.config import ConfigException

    from ehc.coordinator import metrics
    from ehc.coordinator.controller import Controller
    from ehc.coordinator.peers import PeerServer
    from ehc.kube.client import make_api_client

    try:
        api = await make_api_client(kubeconfig)
    except Exception as exc:  # the config loaders raise anything from ConfigException to TypeError
        why = str(exc) if isinstance(exc, ConfigException | OSError) else f"{type(exc).__name__}: {exc}"
        log.error("no cluster to talk to: %s (give --kubeconfig, set KUBECONFIG, or run in a pod)", why)
        return 2
    controller = Controller(settings, api)
    try:
        runner = (
            await metrics.serve(controller, settings.metrics_address) if settings.metrics_address else None
        )
    except OSError as exc:  # in use, not an address of this host, not resolvable
        log.error("EHC_METRICS_ADDRESS=%r: cannot listen there: %s", settings.metrics_address, exc)
        await api.close()
        return 2
    peer = PeerServer(settings.identity, controller.peer_opinions)
    if settings.peer_address:
        try:
            await peer.start(settings.peer_address)
        except OSError as exc:
            log.error("EHC_PEER_ADDRESS=%r: cannot listen there: %s", settings.peer_address, exc)
            if runner is not None:
                await runner.cleanup()
            await api.close()
            return 2
        if controller.membership is None:
            in_a_pod = "KUBERNETES_SERVICE_HOST" in os.environ  # the kubelet sets it in every container
            log.log(
                logging.WARNING if in_a_pod else logging.INFO,
                "POD_IP is not set (give it from the downward API's status.podIP): peers cannot reach this "
                "replica, so it keeps no member Lease, and gives and asks no second opinion",
            )
    controller.peer_server = peer
    selectorless = (
        "EndpointSlices and Endpoints in " + (", ".join(settings.selectorless_namespaces) or "every namespace")
        if settings.selectorless else "off"
    )  # fmt: skip
    log.info(
        "ehc starting as %s: interval %ss, timeout %ss, retry count %d, default probe %s, %d worker(s), "
        "lease %s/%s, selectorless Services: %s",
        settings.identity, settings.interval, settings.timeout, settings.retry_count, settings.default_probe,
        settings.workers, settings.namespace, settings.lease_name, selectorless,
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(controller.run())
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("stopping: lease released, workers stopped")
    finally:
        if runner is not None:
            await runner.cleanup()
        await peer.close()
        await api.close()
    return 0
