"""A stand-in for the kubelets' status manager: after someone else sets a pod's Ready=False, it sets
Ready=True again some seconds later if the pod would pass its own probes (node up, ports open) and all
its readiness gates are True. Annotation mode relies on exactly this; gate mode sees Ready return
once the gate condition is True again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ehc.sim.apiserver import ApiServer

Key = tuple[str, str]


def _cond(pod: dict[str, Any], ctype: str) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c.get("status")
    return None


class Kubelet:
    """Reconciles Ready back to True ``delay`` seconds after it was set False, while the pod is healthy."""

    def __init__(self, api: ApiServer, delay: float, healthy: Callable[[dict[str, Any]], bool]) -> None:
        self.api = api
        self.delay = delay
        self.healthy = healthy
        self.restored = 0
        self._pending: dict[Key, asyncio.TimerHandle] = {}
        self._loop = asyncio.get_running_loop()
        api.pods.hooks.append(self._on_change)

    def close(self) -> None:
        for h in self._pending.values():
            h.cancel()
        self._pending.clear()
        if self._on_change in self.api.pods.hooks:
            self.api.pods.hooks.remove(self._on_change)

    def _on_change(self, typ: str, old: dict[str, Any] | None, new: dict[str, Any], actor: str) -> None:
        key = (new["metadata"]["namespace"], new["metadata"]["name"])
        if typ == "DELETED":
            h = self._pending.pop(key, None)
            if h:
                h.cancel()
            return
        if actor != "kubelet" and _cond(new, "Ready") == "False" and key not in self._pending:
            self._pending[key] = self._loop.call_later(self.delay, self._check, key)

    def _check(self, key: Key) -> None:
        self._pending.pop(key, None)
        pod = self.api.pods.get(*key)
        if pod is None or _cond(pod, "Ready") != "False" or pod["metadata"].get("deletionTimestamp"):
            return
        gates = [g.get("conditionType") for g in (pod.get("spec") or {}).get("readinessGates") or []]
        if not self.healthy(pod) or any(_cond(pod, g) != "True" for g in gates):
            self._pending[key] = self._loop.call_later(self.delay, self._check, key)
            return
        self.api.set_pod_condition(*key, "Ready", "True", actor="kubelet")
        self.restored += 1
