"""The decider: turns workers' transitions into the condition changes worth writing.

It compares what a pod's conditions should be (from its health and mode) with what the API server
last showed (from the watch) and asks the patcher for exactly the difference, or to drop what is
queued when there is none: a flap that reverts before it is written costs nothing, and nothing is
written that is already true.

**Fail-safe.**  When more than ``failsafe_share`` of all targets are unhealthy or suspect at once,
the likeliest explanation is ehc's own network, not a mass outage, so ehc stops ejecting: it holds
every new ejection (recoveries still go through), says so loudly (log, metric, Event), and resumes
when the share falls back below the threshold; the ejections still warranted then are written.  A
fleet smaller than ``failsafe_min_targets`` is exempt (one dead pod of three is not a network
failure).  Suspects (targets in an open failure episode) count towards the share so the fail-safe
engages before the first ejection of a mass failure is written, not halfway through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ehc.kube.model import GATE, READY, Condition, rfc3339
from ehc.kube.patcher import Decision
from ehc.sources.pods import Mode, PodTarget
from ehc.wire.checks import describe
from ehc.wire.messages import Health, Transition

log = logging.getLogger(__name__)

REASON_UNHEALTHY = "EndpointUnhealthy"
REASON_HEALTHY = "EndpointHealthy"


_NOTHING: Mapping[str, str] = MappingProxyType({})
_OBSERVED: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}


def _observed(conditions: list[Condition]) -> Mapping[str, str]:
    """The Ready and gate statuses, as one shared read-only mapping per combination: tens of thousands
    of pods share a handful of them instead of a dict each."""
    items = tuple(sorted((c.type, c.status) for c in conditions if c.type in (READY, GATE)))
    shared = _OBSERVED.get(items)
    if shared is None:
        shared = _OBSERVED[items] = MappingProxyType(dict(items))
    return shared


@dataclass(slots=True)
class _Pod:
    target: PodTarget
    # Condition type → status, as last watched (Ready and the gate only).
    observed: Mapping[str, str] = field(default_factory=lambda: _NOTHING)
    health: Health = Health.UNKNOWN
    evidence: Transition | None = None
    ejected: bool = False  # annotation mode: Ready=False seen on the pod during this unhealthy spell


class Decider:
    def __init__(
        self,
        *,
        submit: Callable[[Decision], None],
        cancel: Callable[[str], None],
        on_failsafe: Callable[[bool, int, int], None] | None = None,
        failsafe_share: float = 0.5,
        failsafe_min_targets: int = 10,
    ) -> None:
        self._submit = submit
        self._cancel = cancel
        self._on_failsafe = on_failsafe
        self._share = failsafe_share
        self._min_targets = failsafe_min_targets
        self._pods: dict[str, _Pod] = {}
        self._unhealthy: set[str] = set()
        self._suspects: dict[int, int] = {}
        self.failsafe = False

    # ---- what the API server shows --------------------------------------------------------------

    def observe(self, target: PodTarget, conditions: list[Condition]) -> None:
        """The watch saw this target pod (added, or changed); record its conditions."""
        pod = self._pods.get(target.key)
        if pod is None or pod.target.uid != target.uid or pod.target.mode is not target.mode:
            pod = self._pods[target.key] = _Pod(target)
            self._unhealthy.discard(target.key)
        pod.target = target
        pod.observed = _observed(conditions)
        if pod.health == Health.UNHEALTHY and pod.observed.get(READY) == "False":
            pod.ejected = True
        self._reconcile(pod)

    def observed(self, key: str) -> Mapping[str, str]:
        """The Ready and gate statuses the watch last showed for this target pod."""
        pod = self._pods.get(key)
        return pod.observed if pod is not None else _NOTHING

    def forget(self, key: str) -> None:
        """The pod is gone or no longer a target: drop whatever is queued for it, quietly."""
        if self._pods.pop(key, None) is not None:
            self._unhealthy.discard(key)
            self._cancel(key)
            self._check_failsafe()

    # ---- what the workers say -------------------------------------------------------------------

    def transition(self, tr: Transition) -> None:
        pod = self._pods.get(tr.key)
        if pod is None:
            return
        pod.health = tr.health
        # Kept only while unhealthy (a held ejection is written later); otherwise used once, now.
        pod.evidence = tr if tr.health == Health.UNHEALTHY else None
        pod.ejected = False
        if tr.health == Health.UNHEALTHY:
            self._unhealthy.add(tr.key)
        else:
            self._unhealthy.discard(tr.key)
        # A fail-safe edge re-evaluates every other unhealthy pod; this one is always re-evaluated
        # here, whatever its health: its own recovery may be what released the fail-safe.
        self._check_failsafe(cause=tr.key)
        self._reconcile(pod, tr)

    def suspects(self, worker: int, count: int) -> None:
        """A worker's count of targets with an open failure episode."""
        self._suspects[worker] = count
        self._check_failsafe()

    # ---- decisions ----------------------------------------------------------------------------

    def desired(self, pod: _Pod) -> dict[str, str]:
        """Condition statuses ehc wants on the pod, given its health and mode."""
        gate = pod.target.mode is Mode.GATE
        if pod.health == Health.UNHEALTHY and not self.failsafe:
            return {GATE: "False", READY: "False"} if gate else {READY: "False"}
        if pod.health == Health.HEALTHY and gate:
            return {GATE: "True"}  # Ready follows from the gate; the kubelet sets it
        return {}

    def _reconcile(self, pod: _Pod, evidence: Transition | None = None) -> None:
        want = self.desired(pod)
        changes = {t: s for t, s in want.items() if pod.observed.get(t) != s}
        if pod.target.mode is Mode.ANNOTATION and (pod.ejected or pod.observed.get(READY) != "True"):
            # Ready=False once per unhealthy spell, and only over Ready=True: if the kubelet sets it
            # back, that is its call to make; ehc does not fight it.
            changes.pop(READY, None)
        if not changes:
            self._cancel(pod.target.key)
            return
        now = time.time()
        tr = evidence or pod.evidence
        healthy = pod.health == Health.HEALTHY
        reason = REASON_HEALTHY if healthy else REASON_UNHEALTHY
        message = _message(pod.target, tr, healthy)
        conditions = tuple(
            Condition(type=t, status=s, reason=reason, message=message, lastTransitionTime=rfc3339(now))
            for t, s in sorted(changes.items())
        )
        t = pod.target
        self._submit(Decision(t.namespace, t.name, t.uid, conditions))

    def _check_failsafe(self, cause: str = "") -> None:
        """Engage or release the fail-safe; on a change, re-evaluate every unhealthy pod but ``cause``
        (the pod whose transition triggered it, which its caller re-evaluates itself)."""
        total = len(self._pods)
        dark = len(self._unhealthy) + sum(self._suspects.values())
        engaged = total >= self._min_targets and dark > self._share * total
        if engaged == self.failsafe:
            return
        self.failsafe = engaged
        if engaged:
            log.error(
                "FAIL-SAFE ENGAGED: %d of %d targets are unhealthy or suspect (more than %.0f%%); "
                "ehc stops ejecting pods until the share falls back: its own network is the likelier fault",
                dark, total, self._share * 100,
            )  # fmt: skip
        else:
            log.warning(
                "fail-safe released: %d of %d targets unhealthy or suspect; ejecting again", dark, total
            )
        if self._on_failsafe is not None:
            self._on_failsafe(engaged, dark, total)
        for key in list(self._unhealthy):
            if key != cause:
                self._reconcile(self._pods[key])

    @property
    def held(self) -> int:
        """Ejections the fail-safe is holding back right now."""
        return len(self._unhealthy) if self.failsafe else 0


def _message(target: PodTarget, tr: Transition | None, healthy: bool) -> str:
    if tr is None:
        return "endpoint-health-checker"
    what = describe(tr.check, target.ip)
    if healthy:
        return f"endpoint-health-checker: {what} answered ({tr.attempts} in a row)"
    return f"endpoint-health-checker: {what} failed {tr.attempts} attempts in a row: {tr.detail}"
