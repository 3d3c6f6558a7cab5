"""Kubernetes Events (core/v1) on transitions, rate-limited per object and reason.

``emit()`` never blocks and never raises: it either queues the event, counts it as ``suppressed``
(another event with the same object and reason was accepted less than ``per_pod_interval`` ago; the
suppressed occurrences are folded into the ``count`` of the next event accepted for that object and
reason) or, with the queue full, counts it as ``dropped``.  ``run()`` creates the queued events with a
few requests in flight, through ``ehc.kube.request``.  An API failure is logged and counted in
``failed``, never retried (not even a retryable ``ApiError``) or raised: events are advisory, the objects'
conditions are the record that matters, and retrying them would compete with the status patches for
the API server's attention exactly when it is struggling.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio.client import ApiClient

from ehc.kube.model import rfc3339
from ehc.kube.request import ApiError, api_path, request

log = logging.getLogger(__name__)

TYPES = ("Normal", "Warning")
MAX_MESSAGE = 1024  # the API server rejects longer event messages


@dataclass(slots=True)
class _Event:
    namespace: str
    name: str
    uid: str
    type_: str
    reason: str
    message: str
    kind: str
    api_version: str
    count: int
    first: float  # wall clock of the first occurrence this event stands for
    last: float


class EventRecorder:
    """Queues events with ``emit()``; ``await run()`` sends them until cancelled."""

    def __init__(
        self,
        api: ApiClient,
        *,
        component: str = "endpoint-health-checker",
        host: str = "",
        per_pod_interval: float = 10.0,
        queue_limit: int = 1000,
        concurrency: int = 4,
        request_timeout: float = 5.0,
    ) -> None:
        self._api = api
        self.component = component
        self.host = host
        self.per_pod_interval = per_pod_interval
        self.queue_limit = max(1, queue_limit)
        self.concurrency = max(1, concurrency)
        self.request_timeout = request_timeout
        self._queue: deque[_Event] = deque()
        self._wake = asyncio.Event()
        self._last: dict[tuple[str, str, str, str], float] = {}  # (kind, ns, name, reason) -> accepted
        self._folded: dict[
            tuple[str, str, str, str], tuple[int, float]
        ] = {}  # suppressed: (count, first wall)
        self._next_prune = 0.0
        self._name_ns = 0
        self.sent = 0
        self.suppressed = 0
        self.failed = 0
        self.dropped = 0

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def emit(
        self, *, namespace: str, name: str, uid: str, type_: str, reason: str, message: str,
        kind: str = "Pod", api_version: str = "v1",
    ) -> None:  # fmt: skip
        """Queue an event about the object ``namespace/name`` (a pod unless ``kind`` says otherwise;
        non-blocking, never raises)."""
        if type_ not in TYPES:
            log.error("event %s for %s/%s has invalid type %r; not sent", reason, namespace, name, type_)
            self.failed += 1
            return
        mono, wall = time.monotonic(), time.time()
        if mono >= self._next_prune:
            self._prune(mono)
        key = (kind, namespace, name, reason)
        last = self._last.get(key)
        if last is not None and mono - last < self.per_pod_interval:
            self.suppressed += 1
            count, first = self._folded.get(key, (0, wall))
            self._folded[key] = (count + 1, first)
            return
        if len(self._queue) >= self.queue_limit:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("event queue full (%d); %d events dropped so far", self.queue_limit, self.dropped)
            return
        self._last[key] = mono
        folded, first = self._folded.pop(key, (0, wall))
        self._queue.append(
            _Event(
                namespace,
                name,
                uid,
                type_,
                reason,
                message,
                kind,
                api_version,
                1 + folded,
                min(first, wall),
                wall,
            )
        )
        self._wake.set()

    async def run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = [self._queue.popleft() for _ in range(min(self.concurrency, len(self._queue)))]
            await asyncio.gather(*(self._send(ev) for ev in batch))

    def _prune(self, mono: float) -> None:
        for k in [k for k, t in self._last.items() if mono - t >= self.per_pod_interval]:
            del self._last[k]
        # Suppressed occurrences wait a while for the next event of their kind to carry them.
        horizon = time.time() - max(60.0, 10 * self.per_pod_interval)
        for k in [k for k, (_, first) in self._folded.items() if first < horizon]:
            del self._folded[k]
        self._next_prune = mono + self.per_pod_interval

    def _event_name(self, pod: str, wall: float) -> str:
        """``<pod>.<hex nanoseconds>`` like client-go's recorder, kept unique within this process."""
        ns = max(int(wall * 1e9), self._name_ns + 1)
        self._name_ns = ns
        return f"{pod}.{ns:x}"

    def body(self, ev: _Event) -> dict[str, Any]:
        source: dict[str, str] = {"component": self.component}
        if self.host:
            source["host"] = self.host
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": self._event_name(ev.name, ev.last), "namespace": ev.namespace},
            "involvedObject": {
                "apiVersion": ev.api_version,
                "kind": ev.kind,
                "namespace": ev.namespace,
                "name": ev.name,
                "uid": ev.uid,
            },
            "type": ev.type_,
            "reason": ev.reason,
            "message": ev.message[:MAX_MESSAGE],
            "source": source,
            "firstTimestamp": rfc3339(ev.first),
            "lastTimestamp": rfc3339(ev.last),
            "count": ev.count,
            "reportingComponent": self.component,
            "reportingInstance": self.host or self.component,
        }

    async def _send(self, ev: _Event) -> None:
        path = api_path("", "v1", "events", namespace=ev.namespace)
        try:
            await request(self._api, "POST", path, body=self.body(ev), timeout=self.request_timeout)
        except ApiError as exc:
            self.failed += 1
            log.warning(
                "could not create event %s for %s %s/%s: %s", ev.reason, ev.kind, ev.namespace, ev.name, exc
            )
            return
        except Exception:
            self.failed += 1
            log.warning("unexpected error creating an event", exc_info=True)
            return
        self.sent += 1
