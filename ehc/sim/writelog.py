"""The API server's record of every write, so a harness measures when a pod was marked NotReady, or
an address of an EndpointSlice or Endpoints object not ready, instead of inferring it."""

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
    # EndpointSlices and Endpoints: address -> the conditions this write changed ("ready", and for a
    # slice "serving", "terminating") and their new values; a new address counts as changed.
    addresses: dict[str, dict[str, bool]] | None = None

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


def _slice_state(ep: dict[str, Any]) -> dict[str, bool]:
    """An EndpointSlice endpoint's conditions, ``nil`` read as the API documents (ready true, serving
    as ready, terminating false)."""
    c = ep.get("conditions") or {}
    ready = c.get("ready") is not False
    serving = ready if c.get("serving") is None else bool(c["serving"])
    return {"ready": ready, "serving": serving, "terminating": bool(c.get("terminating"))}


def _endpoints_states(obj: dict[str, Any] | None) -> dict[str, dict[str, bool]]:
    """Address -> readiness in an Endpoints object: ready when listed in some subset's ``addresses``,
    not ready when only in ``notReadyAddresses``."""
    out: dict[str, dict[str, bool]] = {}
    for subset in (obj or {}).get("subsets") or []:
        for a in subset.get("notReadyAddresses") or []:
            out.setdefault(a.get("ip"), {"ready": False})
        for a in subset.get("addresses") or []:
            out[a.get("ip")] = {"ready": True}
    return out


def address_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """Per address of ``new`` (an EndpointSlice or Endpoints), the conditions that differ from ``old``
    (all of them for a new address).

    A slice endpoint that is the very same dict at the same place in both versions is skipped unread:
    the slice controller stand-in rewrites a slice of up to 100 endpoints for one pod's change."""
    if new.get("kind") == "Endpoints":
        before, after = _endpoints_states(old), _endpoints_states(new)
    else:
        old_eps = (old or {}).get("endpoints") or []
        n = len(old_eps)
        changed = [
            (i, ep) for i, ep in enumerate(new.get("endpoints") or []) if i >= n or old_eps[i] is not ep
        ]
        if not changed:
            return {}
        after, before = {}, {}
        index: dict[str, dict[str, Any]] | None = None  # address -> old endpoint, built if needed
        for i, ep in changed:
            for ip in ep.get("addresses") or []:
                after[ip] = _slice_state(ep)
                prev = old_eps[i] if i < n and ip in (old_eps[i].get("addresses") or ()) else None
                if prev is None:
                    if index is None:
                        index = {a: o for o in old_eps for a in o.get("addresses") or []}
                    prev = index.get(ip)
                if prev is not None:
                    before[ip] = _slice_state(prev)
    out: dict[str, dict[str, bool]] = {}
    for ip, state in after.items():
        prev = before.get(ip, {})
        diff = {c: v for c, v in state.items() if prev.get(c) is not v}
        if diff:
            out[ip] = diff
    return out


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

    def first_address_change(
        self,
        resource: str,
        condition: str = "ready",
        value: bool = False,
        since: float = 0.0,
        actor: str | None = None,
    ) -> dict[tuple[str, str, str], float]:
        """(namespace, object name, address) -> monotonic time of the first successful write since
        ``since`` (by ``actor``, or anyone) that changed the address's ``condition`` to ``value``, on
        ``resource`` ("endpointslices" or "endpoints").

        By what each write changed, as ``first_taken_out``: an address already not ready is not taken
        out again by a later write of its object."""
        out: dict[tuple[str, str, str], float] = {}
        for e in self.entries:
            if e.mono < since or e.resource != resource or not e.addresses or not 200 <= e.status < 300:
                continue
            if actor is not None and e.actor != actor:
                continue
            for ip, changed in e.addresses.items():
                if changed.get(condition) is value:
                    out.setdefault((e.namespace, e.name, ip), e.mono)
        return out

    def addresses_marked(
        self, ready: bool, since: float = 0.0, actor: str | None = None
    ) -> dict[tuple[str, str, str], float]:
        """``first_address_change`` of ``ready`` over EndpointSlices and Endpoints alike: when each
        address of a selectorless Service's objects was first made ready, or not ready."""
        return {
            **self.first_address_change("endpointslices", "ready", ready, since, actor),
            **self.first_address_change("endpoints", "ready", ready, since, actor),
        }

    def slice_not_ready(
        self, since: float = 0.0, actor: str | None = None
    ) -> dict[tuple[str, str, str], float]:
        """(namespace, slice name, address) -> when an EndpointSlice write first set its ``ready`` false."""
        return self.first_address_change("endpointslices", "ready", False, since, actor)

    def endpoints_not_ready(
        self, since: float = 0.0, actor: str | None = None
    ) -> dict[tuple[str, str, str], float]:
        """(namespace, Endpoints name, address) -> when an Endpoints write first moved it to
        ``notReadyAddresses``."""
        return self.first_address_change("endpoints", "ready", False, since, actor)

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
