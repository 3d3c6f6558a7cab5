"""The API server's record of every write, so a harness measures when a pod was marked NotReady
instead of inferring it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ehc.kube.model import GATE, READY


@dataclass(slots=True)
class WriteEntry:
    """One write request (or simulator-internal write, ``actor != "client"``)."""

    mono: float  # time.monotonic() when the request arrived
    wall: float  # time.time() at the same moment
    verb: str  # POST, PUT, PATCH, DELETE
    path: str
    resource: str  # plural, e.g. "pods"
    subresource: str  # "status" or ""
    namespace: str
    name: str
    content_type: str
    body: Any  # decoded JSON body (or the raw text when it did not decode)
    status: int = 0  # HTTP status answered
    changed: bool = False  # whether the object changed (a new resourceVersion)
    actor: str = "client"
    changes: dict[str, str] | None = None  # pod condition type -> new status, for those this write changed

    def conditions(self) -> list[dict[str, Any]]:
        """Pod conditions this write sets, whatever the patch form."""
        body = self.body
        if isinstance(body, dict):
            conds = (body.get("status") or {}).get("conditions")
            return [c for c in conds or [] if isinstance(c, dict)]
        if isinstance(body, list):  # JSON patch
            out: list[dict[str, Any]] = []
            for op in body:
                if not isinstance(op, dict) or not str(op.get("path", "")).startswith("/status/conditions"):
                    continue
                value = op.get("value")
                if isinstance(value, dict):
                    out.append(value)
                elif isinstance(value, list):
                    out.extend(v for v in value if isinstance(v, dict))
            return out
        return []

    def sets_condition(self, ctype: str, status: str) -> bool:
        """Whether this write changed condition ``ctype`` to ``status``, or asked for it explicitly."""
        if self.changes and self.changes.get(ctype) == status:
            return True
        return any(c.get("type") == ctype and c.get("status") == status for c in self.conditions())


class WriteLog:
    """Append-only list of ``WriteEntry`` with waiting and filtering helpers."""

    def __init__(self) -> None:
        self.entries: list[WriteEntry] = []
        self._waiters: list[asyncio.Future[None]] = []

    def append(self, entry: WriteEntry) -> None:
        self.entries.append(entry)
        self._wake()

    def finished(self, entry: WriteEntry) -> None:
        """Called once an entry's status is known, to wake ``wait_for``."""
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self.entries.clear()

    def select(
        self,
        *,
        resource: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        verb: str | None = None,
        subresource: str | None = None,
        actor: str | None = None,
        ok: bool | None = None,
    ) -> list[WriteEntry]:
        """Entries matching every given criterion (``ok``: answered 2xx)."""
        out = []
        for e in self.entries:
            if resource is not None and e.resource != resource:
                continue
            if name is not None and e.name != name:
                continue
            if namespace is not None and e.namespace != namespace:
                continue
            if verb is not None and e.verb != verb:
                continue
            if subresource is not None and e.subresource != subresource:
                continue
            if actor is not None and e.actor != actor:
                continue
            if ok is not None and (200 <= e.status < 300) != ok:
                continue
            out.append(e)
        return out

    def condition_writes(self, ctype: str = "Ready", status: str = "False") -> list[WriteEntry]:
        """Successful pod status writes setting condition ``ctype`` to ``status``."""
        return [
            e
            for e in self.entries
            if e.resource == "pods" and 200 <= e.status < 300 and e.sets_condition(ctype, status)
        ]

    def first_taken_out(self, since: float = 0.0) -> dict[tuple[str, str], float]:
        """(namespace, name) -> monotonic time of the first client write since ``since`` that took the
        pod out of service: changed Ready, or the readiness gate, to False.

        By what each write *changed*, not what its body asks for: a checker that sends the whole
        condition list also "asks" for a Ready=False the pod already had."""
        out: dict[tuple[str, str], float] = {}
        for e in self.entries:
            if e.mono < since or e.actor != "client" or e.resource != "pods" or not 200 <= e.status < 300:
                continue
            if e.changes and "False" in (e.changes.get(GATE), e.changes.get(READY)):
                out.setdefault((e.namespace, e.name), e.mono)
        return out

    def first_marked(self, ctype: str = "Ready", status: str = "False") -> dict[tuple[str, str], float]:
        """(namespace, name) -> monotonic time of the first successful write setting the condition."""
        out: dict[tuple[str, str], float] = {}
        for e in self.condition_writes(ctype, status):
            out.setdefault((e.namespace, e.name), e.mono)
        return out

    async def wait_for(self, predicate: Callable[[WriteLog], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (re-checked after each write); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                return predicate(self)
        return True


def now() -> tuple[float, float]:
    return time.monotonic(), time.time()
