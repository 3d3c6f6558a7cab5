"""The one write the pod source makes: a strategic-merge PATCH of ``pods/{name}/status``.

The body carries only the conditions that change, ``{"status": {"conditions": [...]}}``, and the
pod's UID, ``{"metadata": {"uid": ...}}``.  The API server merges conditions by ``type``, so the
kubelet's concurrent writes to other conditions are never overwritten, and no GET is needed first.
The UID is a precondition: a write decided for a pod that was deleted and recreated under the same
name (a StatefulSet's) is refused with 409 Conflict instead of landing on the new pod, and the write
queue drops it.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from kubernetes_asyncio.client import ApiClient

from ehc.kube.model import Condition
from ehc.kube.request import api_path, request

STRATEGIC_MERGE = "application/strategic-merge-patch+json"


@dataclass(frozen=True, slots=True)
class StatusPatch:
    """What to write for one pod: only the condition(s) that change."""

    namespace: str
    name: str
    uid: str
    conditions: tuple[Condition, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def urgent(self) -> bool:
        """It takes the pod out of service (a condition set False): ejections go first."""
        return any(c.status == "False" for c in self.conditions)

    @property
    def summary(self) -> str:
        return ", ".join(f"{c.type}={c.status}" for c in self.conditions)

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "status": {"conditions": [msgspec.to_builtins(c) for c in self.conditions]}
        }
        if self.uid:
            body["metadata"] = {"uid": self.uid}
        return body

    async def send(self, api: ApiClient, timeout: float) -> None:
        path = api_path("", "v1", "pods", namespace=self.namespace, name=self.name, subresource="status")
        await request(api, "PATCH", path, body=self.body(), content_type=STRATEGIC_MERGE, timeout=timeout)
