"""The pod source: watched pods in, targets and status writes out.

Each pod from the watch is selected (opt-in, eligibility, checks); problems worth fixing are logged
and recorded as an Event once until they change.  Targets go to the coordinator's ``TargetSink``;
verdicts come back and become condition patches, only for what differs from what the watch last
showed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ehc.kube.events import EventRecorder
from ehc.kube.model import READY, Pod
from ehc.sources import TargetSink, TargetView, kinds_of, outcome
from ehc.sources.pods.conditions import (
    NOTHING,
    REASON_HEALTHY,
    REASON_UNHEALTHY,
    changes,
    conditions,
    current_health,
    observed,
)
from ehc.sources.pods.selection import PodTarget, select
from ehc.sources.pods.writes import StatusPatch
from ehc.wire.checks import describe_all
from ehc.wire.messages import Health, Target, Transition

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pod:
    target: PodTarget
    observed: Mapping[str, str] = field(default_factory=lambda: NOTHING)  # Ready and the gate, as watched
    verdict: Health = Health.UNKNOWN
    evidence: Transition | None = None  # kept while unhealthy: a held ejection is written later with it
    ejected: bool = False  # annotation mode: Ready=False seen on the pod during this unhealthy spell


class PodSource:
    def __init__(
        self,
        sink: TargetSink,
        *,
        submit: Callable[[StatusPatch], None],
        cancel: Callable[[str], None],
        settled: Callable[[str], bool],
        events: EventRecorder,
        default_probe: str = "tcp",
    ) -> None:
        self._sink = sink
        self._submit = submit
        self._cancel = cancel
        self._settled = settled
        self._events = events
        self._default_probe = default_probe
        self._pods: dict[str, _Pod] = {}
        self._warned: dict[str, tuple[str, ...]] = {}  # problems (and opt-outs) already reported, per pod

    # ---- the watch ------------------------------------------------------------------------------

    def page(self, pods: list[Pod]) -> None:
        for pod in pods:
            self._update(pod)

    def snapshot(self, seen: set[str]) -> None:
        for key in list(self._pods.keys() - seen):
            self._drop(key)
        for key in list(self._warned.keys() - seen):
            del self._warned[key]

    def event(self, kind: str, pod: Pod) -> None:
        if kind == "DELETED":
            self._drop(pod.key)
            self._warned.pop(pod.key, None)
        else:
            self._update(pod)

    def _update(self, pod: Pod) -> None:
        sel = select(pod, self._default_probe)
        self._report(pod, sel.problems, sel.skipped)
        target = sel.target
        if target is None:
            self._drop(pod.key)
            return
        key = target.key  # one string for the key everywhere (here, in the decider and the pool)
        seen = observed(pod.status.conditions)
        rec = self._pods.get(key)
        if rec is not None and (rec.target.uid != target.uid or rec.target.mode is not target.mode):
            self._drop(key)  # another pod under the same name, or another mode: start afresh
            rec = None
        moved = rec is None or rec.target.ip != target.ip or rec.target.checks != target.checks
        if rec is None:
            rec = self._pods[key] = _Pod(target)
        rec.target, rec.observed = target, seen
        if moved:
            self._sink.upsert(self._probe_target(rec))
        self._note_ejection(rec)
        self._reconcile(rec)

    def _report(self, pod: Pod, problems: tuple[str, ...], skipped: str) -> None:
        """Log (and record as Events) what is wrong with a pod, once until it changes."""
        opted_out = skipped.startswith("annotation")
        said = (*problems, skipped) if opted_out else problems
        if not said or self._warned.get(pod.key) == said:
            return
        self._warned[pod.key] = said
        if opted_out and not problems:
            log.info("pod %s opted out: %s", pod.key, skipped)
        for problem in problems:
            log.warning("pod %s: %s", pod.key, problem)
            self._events.emit(
                namespace=pod.metadata.namespace, name=pod.metadata.name, uid=pod.metadata.uid,
                type_="Warning", reason="EndpointCheckMisconfigured", message=problem,
            )  # fmt: skip

    def _drop(self, key: str) -> None:
        if self._pods.pop(key, None) is not None:
            self._cancel(key)
            self._sink.remove(key)

    @staticmethod
    def _probe_target(rec: _Pod) -> Target:
        return rec.target.probe_target(current_health(rec.observed, rec.target.mode))

    # ---- the Source contract --------------------------------------------------------------------

    def owns(self, key: str) -> bool:
        return key in self._pods

    def seed(self) -> list[Target]:
        return [self._probe_target(rec) for rec in self._pods.values()]

    def kinds(self) -> Counter[str]:
        return kinds_of(rec.target.checks for rec in self._pods.values())

    def view(self, key: str) -> TargetView | None:
        rec = self._pods.get(key)
        if rec is None:
            return None
        t = rec.target
        shows = ", ".join(f"{k}={v}" for k, v in sorted(rec.observed.items())) or "no conditions"
        address = describe_all(t.checks, t.ip)
        return TargetView(
            f"Pod {key}", t.namespace, t.ip, address, t.node, t.kind, shows, rec.verdict, rec.evidence, key
        )

    def transition(self, tr: Transition, worker: int) -> None:
        target = self._pods[tr.key].target
        log.info(
            "%s %s (node %s, %s mode, worker %d)", tr.key, outcome(tr, target.ip), target.node, target.mode.value, worker,
            extra={"pod": tr.key, "node": target.node, "ip": target.ip, "health": tr.health.name.lower()},
        )  # fmt: skip

    def verdict(self, key: str, verdict: Health, tr: Transition | None) -> None:
        rec = self._pods.get(key)
        if rec is None:
            return
        rec.verdict = verdict
        if tr is not None:  # a new spell; a fail-safe edge (tr None) continues the current one
            rec.evidence = tr if tr.health == Health.UNHEALTHY else None
            rec.ejected = False
            # A pod already showing Ready=False when its spell starts (the kubelet's doing, or ehc's in
            # an earlier term) needs no ejection; if the kubelet then sets it True, that is its call.
            self._note_ejection(rec)
        self._reconcile(rec, tr)

    @staticmethod
    def _note_ejection(rec: _Pod) -> None:
        """Annotation mode's once per spell: Ready=False seen on the pod while it is judged unhealthy."""
        if rec.verdict == Health.UNHEALTHY and rec.observed.get(READY) == "False":
            rec.ejected = True

    def resync(self) -> int:
        written = 0
        for key, rec in self._pods.items():
            if self._settled(key) and (want := self._wanted(rec)):
                log.info("resync: pod %s shows %s; writing %s again", key, dict(rec.observed), want)
                self._write(rec, want, rec.evidence)
                written += 1
        return written

    def reset(self) -> None:
        for rec in self._pods.values():
            rec.verdict, rec.evidence, rec.ejected = Health.UNKNOWN, None, False

    def _reconcile(self, rec: _Pod, tr: Transition | None = None) -> None:
        if want := self._wanted(rec):
            self._write(rec, want, tr or rec.evidence)
        else:
            self._cancel(rec.target.key)

    @staticmethod
    def _wanted(rec: _Pod) -> dict[str, str]:
        return changes(rec.target.mode, rec.verdict, rec.observed, rec.ejected)

    def _write(self, rec: _Pod, want: dict[str, str], evidence: Transition | None) -> None:
        t = rec.target
        self._submit(StatusPatch(t.namespace, t.name, t.uid, conditions(t, want, evidence)))

    # ---- writes ---------------------------------------------------------------------------------

    def written(self, write: StatusPatch, outcome: str) -> None:
        """A status patch finished: a landed one is recorded as an Event on the pod, unless its node was
        judged down as a whole (one Event on the node says that, not seventy on its pods)."""
        if outcome != "ok":
            return
        rec = self._pods.get(write.key)
        if rec is not None and rec.evidence is not None and rec.evidence.node:
            return
        first = write.conditions[0]
        self._events.emit(
            namespace=write.namespace, name=write.name, uid=write.uid,
            type_="Warning" if first.reason == REASON_UNHEALTHY else "Normal",
            reason=first.reason or REASON_HEALTHY, message=first.message or "",
        )  # fmt: skip
