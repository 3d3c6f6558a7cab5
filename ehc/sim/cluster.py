"""``SimCluster``: the API server, the fleet, the kubelet and EndpointSlice controller stand-ins and the
namespace, started and torn down together (``async with SimCluster(nodes=…, pods_per_node=…) as sim``)."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
from typing import Any, Self

from ehc.sim import netns as netns_mod
from ehc.sim.apiserver import ApiServer
from ehc.sim.fleet import Fleet, FleetSpec
from ehc.sim.kubelet import Kubelet
from ehc.sim.slicectl import SliceController

log = logging.getLogger(__name__)


class SimCluster:
    """A simulated cluster. ``netns=None`` uses a private network namespace when root (else falls back
    and logs what is lost); ``kubelet_delay=None`` disables the kubelet stand-in; ``slice_controller``
    runs the EndpointSlice controller stand-in for Services with selectors."""

    def __init__(
        self,
        nodes: int = 3,
        pods_per_node: int = 10,
        *,
        spec: FleetSpec | None = None,
        netns: bool | None = None,
        token: str | None = None,
        kubelet_delay: float | None = 5.0,
        listeners: bool = True,
        slice_controller: bool = True,
        bookmark_interval: float = 5.0,
        history: int = 20_000,
        **spec_args: Any,
    ) -> None:
        self.spec = spec or FleetSpec(nodes=nodes, pods_per_node=pods_per_node, **spec_args)
        ok, why = netns_mod.available()
        if netns and not ok:
            raise RuntimeError(f"network namespace requested but unavailable: {why}")
        self.use_netns = ok if netns is None else netns
        self.fallback_reason = "" if self.use_netns else (why or "disabled by caller")
        self.api = ApiServer(token=token, history=history, bookmark_interval=bookmark_interval)
        self.kubelet_delay = kubelet_delay
        self.listeners = listeners
        self.netns: str | None = None
        self.fleet: Fleet
        self.kubelet: Kubelet | None = None
        self.slice_controller: SliceController | None = None
        self._want_slices = slice_controller
        self.kubeconfig = ""
        self._workdir = ""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.use_netns:
            for name in netns_mod.cleanup_stale():
                log.info("ehc sim: removed stale namespace %s", name)
        await self.api.start()
        try:
            if self.use_netns:
                self.netns = netns_mod.create()
                atexit.register(self._atexit)
                # Same address and port inside the namespace, so one kubeconfig works on both sides.
                await self.api.add_socket(netns_mod.listen_in(self.netns, "127.0.0.1", self.api.port))
            if self._want_slices:
                self.slice_controller = SliceController(self.api)
            self.fleet = Fleet(self.api, self.spec, self.netns, self.listeners)
            await self.fleet.start()
            if self.kubelet_delay is not None:
                self.kubelet = Kubelet(self.api, self.kubelet_delay, self.fleet.pod_healthy)
            self._workdir = tempfile.mkdtemp(prefix="ehc-sim-")
            self.kubeconfig = self.api.write_kubeconfig(os.path.join(self._workdir, "kubeconfig"))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.close()
        if self.slice_controller is not None:
            self.slice_controller.close()
        if hasattr(self, "fleet"):
            await self.fleet.stop()
        await self.api.stop()
        self._atexit()
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = ""

    def _atexit(self) -> None:
        if self.netns is not None:
            netns_mod.delete(self.netns)
            with contextlib.suppress(Exception):
                atexit.unregister(self._atexit)
            self.netns = None

    @property
    def url(self) -> str:
        return self.api.url

    def exec_prefix(self) -> list[str]:
        """Prefix for commands that must reach the pods (``ip netns exec NS``; empty without one)."""
        return netns_mod.exec_prefix(self.netns) if self.netns else []
