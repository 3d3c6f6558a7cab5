"""The decider: turns workers' transitions into verdicts, and holds ejections while the fail-safe is on.

A verdict says what a target's object should show: HEALTHY (in service), UNHEALTHY (out of service)
or UNKNOWN (no opinion: never decided, or an ejection the fail-safe holds back).  The decider knows
keys and health only; what a verdict means for the object (which conditions or fields change) is
its source's business.

**Fail-safe.**  When more than ``failsafe_share`` of all targets are unhealthy or suspect at once,
the likeliest explanation is ehc's own network, not a mass outage, so ehc stops ejecting: every
unhealthy target's verdict becomes UNKNOWN (recoveries still go through), it says so loudly (log,
metric, Event), and when the share falls back below the threshold the verdicts still warranted are
given again.  A fleet smaller than ``failsafe_min_targets`` is exempt (one dead pod of three is not a
network failure).  Suspects (targets in an open failure episode) count towards the share so the
fail-safe engages before the first ejection of a mass failure is written, not halfway through it.
A worker's frame (its transitions and its suspect count) is weighed as one change, so the share
never counts a target twice or not at all on its way from suspect to unhealthy.  Every edge
re-evaluates every unhealthy target, and the targets whose transitions came with the edge always get
their verdicts too, whatever their health.

**Gate.**  An ejection the fail-safe allows still passes ``may_eject(key)`` (the second opinion): while
it says no, the verdict is UNKNOWN, and ``reconsider(keys)`` rules again once it may have changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ehc.wire.messages import Health, Transition

log = logging.getLogger(__name__)

OnVerdict = Callable[[str, Health, Transition | None], None]
"""``on_verdict(key, verdict, transition)``: the transition that caused it, or None for a fail-safe edge."""


class Decider:
    def __init__(
        self,
        *,
        on_verdict: OnVerdict,
        on_failsafe: Callable[[bool, int, int], None] | None = None,
        failsafe_share: float = 0.5,
        failsafe_min_targets: int = 10,
        may_eject: Callable[[str], bool] = lambda key: True,
    ) -> None:
        self._on_verdict = on_verdict
        self._may_eject = may_eject
        self._on_failsafe = on_failsafe
        self._share = failsafe_share
        self._min_targets = failsafe_min_targets
        self._keys: set[str] = set()
        self._unhealthy: set[str] = set()
        self._suspects: dict[int, int] = {}
        self.failsafe = False

    @property
    def total(self) -> int:
        return len(self._keys)

    @property
    def suspect_count(self) -> int:
        """Targets believed up in an open failure episode, as the workers last counted them."""
        return sum(self._suspects.values())

    @property
    def dark(self) -> int:
        """What the fail-safe weighs: targets unhealthy or suspect."""
        return len(self._unhealthy) + self.suspect_count

    @property
    def held(self) -> int:
        """Ejections the fail-safe is holding back right now."""
        return len(self._unhealthy) if self.failsafe else 0

    def reset(self) -> None:
        """A new term: forget every health and suspect count (the targets stay tracked).  Nothing
        decided in an earlier term is acted on in a later one."""
        self._unhealthy.clear()
        self._suspects.clear()
        self.failsafe = False

    # ---- the targets --------------------------------------------------------------------------

    def track(self, key: str) -> None:
        """A target to judge (no opinion until its first transition)."""
        if key not in self._keys:
            self._keys.add(key)
            self._check_failsafe()

    def forget(self, key: str) -> None:
        """The target is gone; later transitions for it are ignored."""
        if key in self._keys:
            self._keys.discard(key)
            self._unhealthy.discard(key)
            self._check_failsafe()

    # ---- what the workers say -------------------------------------------------------------------

    def report(self, worker: int, transitions: list[Transition], suspects: int = -1) -> None:
        """One worker frame: its transitions and its count of suspects (-1: not counted) at one moment.

        Both are applied before the fail-safe is weighed, and only then are verdicts given: weighed
        between the two, a target confirmed down would count twice or not at all, and the fail-safe
        would flap (let go for an instant and eject) in the middle of a mass failure."""
        if suspects >= 0:
            self._suspects[worker] = suspects
        mine = [tr for tr in transitions if tr.key in self._keys]
        for tr in mine:
            if tr.health == Health.UNHEALTHY:
                self._unhealthy.add(tr.key)
            else:
                self._unhealthy.discard(tr.key)
        self._check_failsafe(given={tr.key for tr in mine})
        for tr in mine:
            self._on_verdict(tr.key, self._verdict(tr.key, tr.health), tr)

    def reconsider(self, keys: list[str]) -> None:
        """Rule again on these targets' ejections (the gate's answer may have changed)."""
        for key in keys:
            if key in self._unhealthy:
                self._on_verdict(key, self._verdict(key, Health.UNHEALTHY), None)

    @property
    def unhealthy(self) -> list[str]:
        return list(self._unhealthy)

    # ---- decisions ----------------------------------------------------------------------------

    def _verdict(self, key: str, health: Health) -> Health:
        if health == Health.UNHEALTHY and (self.failsafe or not self._may_eject(key)):
            return Health.UNKNOWN
        return health

    def _check_failsafe(self, given: set[str] | frozenset[str] = frozenset()) -> None:
        """Engage or release the fail-safe; on a change, give every unhealthy target but those in
        ``given`` (whose caller gives their verdicts itself) its verdict again."""
        total, dark = self.total, self.dark
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
            if key not in given:
                self._on_verdict(key, self._verdict(key, Health.UNHEALTHY), None)
