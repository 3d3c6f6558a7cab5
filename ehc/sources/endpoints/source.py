"""The address source: opted-in EndpointSlices or Endpoints in, one target per address, and one
readiness patch per object out.

Each object from the watch is selected (refused, or its addresses and checks); what is wrong is
logged and recorded as an Event on the object once until it changes.  Every address is a target
whose first health is what the object shows, so ehc owns readiness from then on: a verdict that
differs from what the object shows becomes a patch.  Writes coalesce per object: the write for an
object carries every address with a verdict, the queue keeps the latest, and the patch is planned
when it is sent, against the freshest version known, so a dead node's addresses in one object land
together whenever their verdicts arrive together, and never as one write per address.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic

from ehc.kube.events import EventRecorder
from ehc.kube.model import ObjectMeta, T
from ehc.sources import TargetSink, TargetView, kinds_of, outcome
from ehc.sources.endpoints.kinds import AddressKind
from ehc.sources.endpoints.selection import AddressTarget
from ehc.sources.endpoints.writes import ReadinessPatch
from ehc.wire.checks import describe, describe_all, target_kind
from ehc.wire.messages import Health, Target, Transition

log = logging.getLogger(__name__)

REASON_UNHEALTHY, REASON_HEALTHY = "EndpointUnhealthy", "EndpointHealthy"


@dataclass(slots=True)
class _Address:
    target: AddressTarget
    verdict: Health = Health.UNKNOWN
    evidence: Transition | None = None  # the transition behind the verdict, for the Event


@dataclass(slots=True)
class _Object(Generic[T]):
    key: str  # "<Kind>/<namespace>/<name>": the key of its writes
    watched: T
    written: T | None = None  # the answer to ehc's last write, until the watch shows it (or newer)
    addresses: dict[str, _Address] = field(default_factory=dict)

    @property
    def meta(self) -> ObjectMeta:
        return self.watched.metadata

    def freshest(self) -> T:
        return self.written if self.written is not None else self.watched


def _newer(a: ObjectMeta, b: ObjectMeta) -> bool:
    """Whether ``a`` is a later version than ``b``.  resourceVersions are opaque, but etcd's are
    integers that only grow; anything else counts as not newer (the write then reads again)."""
    try:
        return int(a.resourceVersion) > int(b.resourceVersion)
    except ValueError:
        return False


class AddressSource(Generic[T]):
    def __init__(
        self,
        kind: AddressKind[T],
        sink: TargetSink,
        *,
        submit: Callable[[ReadinessPatch[T]], None],
        cancel: Callable[[str], None],
        settled: Callable[[str], bool],
        events: EventRecorder,
    ) -> None:
        self.kind = kind
        self._prefix = f"{kind.name}/"
        self._sink = sink
        self._submit = submit
        self._cancel = cancel
        self._settled = settled
        self._events = events
        self._objects: dict[str, _Object[T]] = {}  # by "namespace/name", the watch's key
        self._by_target: dict[str, _Object[T]] = {}  # target key -> its object
        self._warned: dict[str, tuple[str, ...]] = {}  # what was said about each object, until it changes

    # ---- the watch ------------------------------------------------------------------------------

    def page(self, items: list[T]) -> None:
        for item in items:
            self._update(item)

    def snapshot(self, seen: set[str]) -> None:
        for name in list(self._objects.keys() - seen):
            self._drop(name)
        for name in list(self._warned.keys() - seen):
            del self._warned[name]

    def event(self, kind: str, item: T) -> None:
        name = f"{item.metadata.namespace}/{item.metadata.name}"
        if kind == "DELETED":
            self._drop(name)
            self._warned.pop(name, None)
        else:
            self._update(item)

    def _update(self, item: T) -> None:
        meta = item.metadata
        name = f"{meta.namespace}/{meta.name}"
        sel = self.kind.select(item)
        self._report(meta, sel.refused, sel.problems)
        rec = self._objects.get(name)
        if rec is not None and (not sel.targets or rec.meta.uid != meta.uid):
            self._drop(name)  # refused, emptied, or another object under the same name: start afresh
            rec = None
        if not sel.targets:
            return
        if rec is None:
            rec = self._objects[name] = _Object(f"{self._prefix}{name}", item)
        rec.watched = item
        if rec.written is not None and not _newer(rec.written.metadata, meta):
            rec.written = None  # the watch caught up with ehc's write, or went past it
        shown = self.kind.shows(rec.freshest())
        wanted = {t.ip: t for t in sel.targets}
        for ip in rec.addresses.keys() - wanted.keys():
            self._forget(rec, ip)
        for ip, target in wanted.items():
            a = rec.addresses.get(ip)
            if a is None:
                a = rec.addresses[ip] = _Address(target)
                self._by_target[target.key] = rec
            elif a.target.checks == target.checks:
                a.target = target  # node or zone may change; the probe does not
                continue
            a.target = target
            self._sink.upsert(target.probe_target(shown.get(ip, Health.UNKNOWN)))
        self._reconcile(rec)

    def _report(self, meta: ObjectMeta, refused: str, problems: tuple[str, ...]) -> None:
        """Log (and record as Events on the object) what is wrong with it, once until it changes."""
        name = f"{meta.namespace}/{meta.name}"
        said = (refused, *problems)
        if self._warned.get(name, ("",)) == said:
            return
        self._warned[name] = said
        if refused and not problems:
            log.info("%s %s is not checked: %s", self.kind.name, name, refused)
        for problem in problems:
            log.warning("%s %s: %s", self.kind.name, name, problem)
            self._event(meta, "Warning", "EndpointCheckMisconfigured", problem)

    def _event(self, meta: ObjectMeta, type_: str, reason: str, message: str) -> None:
        self._events.emit(
            namespace=meta.namespace, name=meta.name, uid=meta.uid, type_=type_, reason=reason,
            message=message, kind=self.kind.name, api_version=self.kind.api_version,
        )  # fmt: skip

    def _forget(self, rec: _Object[T], ip: str) -> None:
        a = rec.addresses.pop(ip)
        del self._by_target[a.target.key]
        self._sink.remove(a.target.key)

    def _drop(self, name: str) -> None:
        rec = self._objects.pop(name, None)
        if rec is None:
            return
        for ip in list(rec.addresses):
            self._forget(rec, ip)
        self._cancel(rec.key)

    # ---- the Source contract --------------------------------------------------------------------

    def owns(self, key: str) -> bool:
        return key.startswith(self._prefix)

    def seed(self) -> list[Target]:
        out = []
        for rec in self._objects.values():
            shown = self.kind.shows(rec.freshest())
            for ip, a in rec.addresses.items():
                out.append(a.target.probe_target(shown.get(ip, Health.UNKNOWN)))
        return out

    def kinds(self) -> Counter[str]:
        return kinds_of(a.target.checks for a in self._addresses())

    def _addresses(self) -> list[_Address]:
        return [a for rec in self._objects.values() for a in rec.addresses.values()]

    def _address(self, key: str) -> tuple[_Object[T], _Address] | None:
        """The object and the address a target key names (None once it is gone)."""
        rec = self._by_target.get(key)
        return None if rec is None else (rec, rec.addresses[key.rsplit("/", 1)[1]])

    def view(self, key: str) -> TargetView | None:
        found = self._address(key)
        if found is None:
            return None
        rec, a = found
        t = a.target
        shown = self.kind.shows(rec.freshest()).get(t.ip, Health.UNKNOWN)
        shows = {Health.HEALTHY: "ready", Health.UNHEALTHY: "not ready"}.get(shown, "not listed")
        address = describe_all(t.checks, t.ip)
        return TargetView(
            f"{self.kind.name} {t.namespace}/{t.name}", t.namespace, t.ip, address, t.node,
            target_kind(t.checks), shows, a.verdict, a.evidence, rec.key,
        )  # fmt: skip

    def transition(self, tr: Transition, worker: int) -> None:
        found = self._address(tr.key)
        if found is None:
            return
        rec, t = found[0], found[1].target
        log.info(
            "%s %s (node %s, worker %d)", tr.key, outcome(tr, t.ip), t.node or "?", worker,
            extra={"object": rec.key, "node": t.node, "ip": t.ip, "health": tr.health.name.lower()},
        )  # fmt: skip

    def verdict(self, key: str, verdict: Health, tr: Transition | None) -> None:
        found = self._address(key)
        if found is None:
            return
        rec, a = found
        a.verdict = verdict
        if tr is not None:
            a.evidence = tr
        self._reconcile(rec)

    def resync(self) -> int:
        written = 0
        for rec in self._objects.values():
            if self._settled(rec.key) and (want := self._differs(rec)):
                log.info("resync: %s does not show %s; writing it again", rec.key, want)
                self._write(rec)
                written += 1
        return written

    def reset(self) -> None:
        for a in self._addresses():
            a.verdict, a.evidence = Health.UNKNOWN, None

    # ---- verdicts → writes ----------------------------------------------------------------------

    @staticmethod
    def _want(rec: _Object[T]) -> dict[str, bool]:
        return {
            ip: a.verdict == Health.HEALTHY for ip, a in rec.addresses.items() if a.verdict != Health.UNKNOWN
        }

    def _differs(self, rec: _Object[T]) -> dict[str, bool]:
        """What the object should show and does not (against the freshest version known)."""
        shown = self.kind.shows(rec.freshest())
        want = self._want(rec)
        return {ip: ok for ip, ok in want.items() if ip in shown and (shown[ip] == Health.HEALTHY) != ok}

    def _reconcile(self, rec: _Object[T]) -> None:
        if self._differs(rec):
            self._write(rec)
        else:
            self._cancel(rec.key)

    def _write(self, rec: _Object[T]) -> None:
        meta = rec.meta

        def seen(obj: T) -> None:  # a version the write read or made: the base of what comes next
            if _newer(obj.metadata, rec.freshest().metadata):
                rec.written = obj

        self._submit(
            ReadinessPatch(
                self.kind, meta.namespace, meta.name, meta.uid, self._want(rec), rec.freshest, seen
            )
        )

    # ---- writes ---------------------------------------------------------------------------------

    def written(self, write: ReadinessPatch[T], outcome: str) -> None:
        """A patch finished: what it flipped is recorded as Events on the object."""
        rec = self._objects.get(f"{write.namespace}/{write.name}")
        if outcome != "ok" or not write.changed or rec is None:
            return
        for healthy, type_, reason in (
            (False, "Warning", REASON_UNHEALTHY),
            (True, "Normal", REASON_HEALTHY),
        ):
            flipped = [ip for ip in write.changed if write.want.get(ip) is healthy]
            if flipped:
                self._event(rec.meta, type_, reason, self._message(rec, flipped, healthy))

    @staticmethod
    def _message(rec: _Object[T], flipped: list[str], healthy: bool) -> str:
        state = "ready again" if healthy else "not ready"
        parts = []
        for ip in flipped:
            a = rec.addresses.get(ip)
            tr = a.evidence if a is not None else None
            if tr is None or a is None:
                parts.append(ip)
                continue
            what = describe(tr.check, ip)
            node = f" on node {a.target.node}" if a.target.node else ""
            parts.append(
                f"{ip}{node}: {what} "
                + ("answered" if healthy else f"failed {tr.attempts} attempts: {tr.detail}")
            )
        return f"endpoint-health-checker: {len(flipped)} address(es) {state}: " + "; ".join(parts)
