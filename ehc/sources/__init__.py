"""What is probed and what is written: one package per kind of watched object.

A *source* watches one kind of object, decides which of them are targets and how each is checked,
tells the coordinator when a target appears, changes or goes (through a ``TargetSink``), and turns
the decider's verdicts into writes on the objects, comparing what it wants written with what the
watch last showed.  ``pods/`` and ``endpoints/`` (the addresses of selectorless Services' EndpointSlices and
Endpoints) are the sources; a new one is a new package here that fulfils ``Source``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple, Protocol

from ehc.kube.writes import Write
from ehc.wire.checks import Check, describe, target_kind
from ehc.wire.messages import Health, Target, Transition


def outcome(tr: Transition, ip: str) -> str:
    """What a transition's last attempts did, for the log line every source writes about it."""
    unhealthy = tr.health == Health.UNHEALTHY
    said = f": {tr.detail}" if tr.detail else f" in {tr.latency * 1000:.1f}ms"
    return (
        f"{'UNHEALTHY' if unhealthy else 'healthy'}: {describe(tr.check, ip)} "
        f"{'failed' if unhealthy else 'answered'} after {tr.attempts} attempt(s){said}"
    )


def kinds_of(checks: Iterable[tuple[Check, ...]]) -> Counter[str]:
    """Targets by probe kind, each distinct check list judged once (tens of thousands share a few)."""
    kinds: Counter[str] = Counter()
    for shape, n in Counter(checks).items():
        kinds[target_kind(shape)] += n
    return kinds


class TargetView(NamedTuple):
    """One target as the status page shows it."""

    object: str  # "Pod shop/web-1", "EndpointSlice shop/db-abc"
    namespace: str
    ip: str
    address: str  # the checks, as the logs name them: "http 10.0.0.7:8080/healthz"
    node: str
    probe: str  # the probe kind(s): "tcp", "http+tcp"
    shows: str  # what the object shows now: "Ready=False", "not ready"
    verdict: Health  # what ehc wants it to show (UNKNOWN: no opinion, or an ejection held back)
    evidence: Transition | None  # the transition behind an unhealthy verdict
    write: str  # the key of the object's writes in the write queue


class TargetSink(Protocol):
    """Where a source sends its targets: the coordinator (which probes them while it leads)."""

    def upsert(self, target: Target) -> None:
        """A new target, or one whose address or checks changed (it restarts from ``target.health``)."""

    def remove(self, key: str) -> None:
        """The target is gone or no longer eligible."""


class Source(Protocol):
    def owns(self, key: str) -> bool:
        """Whether ``key`` is one of this source's targets."""

    def seed(self) -> list[Target]:
        """Every current target, with the health its object already shows (for a new leader)."""

    def kinds(self) -> Counter[str]:
        """Targets by probe kind, for metrics."""

    def transition(self, tr: Transition, worker: int) -> None:
        """A worker reported a health change of one of this source's targets (to log it)."""

    def verdict(self, key: str, verdict: Health, tr: Transition | None) -> None:
        """What the target's object should now say: HEALTHY (in service), UNHEALTHY (out of service)
        or UNKNOWN (no opinion: never decided, or an ejection the fail-safe holds back).  ``tr`` is
        the transition that caused it; None when the verdict only changed because of the fail-safe."""

    def view(self, key: str) -> TargetView | None:
        """The target ``key`` for the status page (None when it is not this source's)."""

    def resync(self) -> int:
        """Compare what every settled target's object should show with what the watch last showed, and
        write what differs; return how many writes that took (a missed write, found again)."""

    def reset(self) -> None:
        """Leadership was lost: forget every verdict (a new term starts from what the objects show)."""

    def written(self, write: Write, outcome: str) -> None:
        """One of this source's writes finished (``outcome`` as the write queue reports it)."""
