"""The condition policy of the two pod modes: which of a pod's conditions ehc wants, given its verdict.

- Gate mode: ehc owns ``endpointHealthCheckSuccess``: False (and Ready False, so the endpoint leaves
  at once) when unhealthy, True when healthy (also a new pod's first value); Ready then follows from
  the gate, set by the kubelet.
- Annotation mode: Ready=False when unhealthy, once per unhealthy spell and only over Ready=True;
  recovery is the kubelet's: if it sets Ready back, that is its call to make, not a fight for ehc.

Only differences from what the watch last showed are written, and a verdict that needs nothing
written withdraws whatever is still queued (a flap that reverts before it is written costs nothing).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType

from ehc.kube.model import GATE, READY, Condition, rfc3339
from ehc.sources.pods.selection import Mode, PodTarget
from ehc.wire.checks import describe
from ehc.wire.messages import Health, Transition

REASON_UNHEALTHY = "EndpointUnhealthy"
REASON_HEALTHY = "EndpointHealthy"

NOTHING: Mapping[str, str] = MappingProxyType({})
_OBSERVED: dict[tuple[tuple[str, str], ...], Mapping[str, str]] = {}


def observed(conditions: list[Condition]) -> Mapping[str, str]:
    """The Ready and gate statuses, as one shared read-only mapping per combination: tens of thousands
    of pods share a handful of them instead of a dict each."""
    items = tuple(sorted((c.type, c.status) for c in conditions if c.type in (READY, GATE)))
    shared = _OBSERVED.get(items)
    if shared is None:
        shared = _OBSERVED[items] = MappingProxyType(dict(items))
    return shared


def changes(mode: Mode, verdict: Health, seen: Mapping[str, str], ejected: bool) -> dict[str, str]:
    """Condition type → status that must be written (empty: nothing to write).

    ``ejected``: annotation mode, Ready=False already seen on the pod during this unhealthy spell."""
    if mode is Mode.GATE:
        if verdict == Health.UNHEALTHY:
            want = {GATE: "False", READY: "False"}
        elif verdict == Health.HEALTHY:
            want = {GATE: "True"}
        else:
            return {}
    elif verdict == Health.UNHEALTHY and not ejected and seen.get(READY) == "True":
        want = {READY: "False"}
    else:
        return {}
    return {t: s for t, s in want.items() if seen.get(t) != s}


def conditions(target: PodTarget, want: Mapping[str, str], tr: Transition | None) -> tuple[Condition, ...]:
    """The conditions to write, each with ehc's reason, a message naming the evidence, and the time."""
    healthy = all(status == "True" for status in want.values())
    reason = REASON_HEALTHY if healthy else REASON_UNHEALTHY
    message = _message(target, tr, healthy)
    now = rfc3339(time.time())
    return tuple(
        Condition(type=t, status=s, reason=reason, message=message, lastTransitionTime=now)
        for t, s in sorted(want.items())
    )


def current_health(seen: Mapping[str, str], mode: Mode) -> Health:
    """What the pod's conditions (type -> status) already say, so a new leader does not re-announce or
    re-write it.

    Gate mode: the gate condition (absent means never decided).  Annotation mode: Ready=True means
    healthy; anything else is left unknown (the kubelet may hold it False for its own reasons).
    """
    if mode is Mode.GATE:
        gate = seen.get(GATE)
        if gate is None:
            return Health.UNKNOWN
        return Health.HEALTHY if gate == "True" else Health.UNHEALTHY
    return Health.HEALTHY if seen.get(READY) == "True" else Health.UNKNOWN


def _message(target: PodTarget, tr: Transition | None, healthy: bool) -> str:
    if tr is None:
        return "endpoint-health-checker"
    what = describe(tr.check, target.ip)
    if healthy:
        return f"endpoint-health-checker: {what} answered ({tr.attempts} in a row)"
    return f"endpoint-health-checker: {what} failed {tr.attempts} attempts in a row: {tr.detail}"
