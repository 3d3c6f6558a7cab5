"""The probe engine: owns its targets' schedules and decides when a target changes health.

Each target is probed once per interval at its own phase.  Phases live on a timing wheel: the
interval is cut into slots of about 5 ms, every target sits in a random slot (so start times spread
evenly over the interval: no thundering herd), and one loop timer walks the wheel, starting each
slot's probes when its time comes.  That costs one timer per slot instead of one per probe, and the
schedule lag (how late a slot started) is measured once per slot.  A result that contradicts the target's current health opens an
*episode*: the remaining confirmations needed to flip it are launched at once, ``confirm_spacing``
apart, rather than one after another, so a dead endpoint is declared after about one timeout instead
of ``(1 + retry_count) × timeout``.  Any agreeing result closes the episode (one success resets the
failure count).  A target flips to unhealthy after ``1 + retry_count`` failures in a row and back to
healthy after ``recovery_threshold`` successes in a row; a target of unknown health becomes healthy
on its first success.  Local errors (no descriptors, no ports) say nothing about the endpoint and
never count.

Nothing blocks and nothing waits in a worker slot: a probe in flight is a socket and an entry in
its prober's deadline queue.  The engine knows no probe kind by name: each check is handed to the
prober the registry names for its kind, and a target with several checks is one attempt that
succeeds only when all of them do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import time
from collections.abc import Callable
from functools import partial

from ehc.probe import FAIL, LOCAL_ERROR, OK, Prober
from ehc.probe.registry import PROBERS
from ehc.wire.checks import Check, kind_of, target_kind
from ehc.wire.messages import Health, Target, Transition
from ehc.wire.settings import ProbeSettings
from ehc.worker.stats import LagWindow, LatencyHistogram

log = logging.getLogger("ehc.worker")

_UNKNOWN, _HEALTHY, _UNHEALTHY = Health.UNKNOWN, Health.HEALTHY, Health.UNHEALTHY


TICK = 0.005
"""Target length of a wheel slot (seconds): the granularity of the probe schedule."""
_MAX_SLOTS = 4096
_CATCH_UP = 4
"""Most slots started in one go when the loop runs late."""
_LOCAL_ERROR_LOG_EVERY = 5.0
_MAX_SHAPES = 4096


class _Target:
    """A target's place on the wheel and the state of its current episode."""

    __slots__ = (
        "checks",
        "family",
        "gen",
        "health",
        "ip",
        "key",
        "kind",
        "removed",
        "slot",
        "votes",
    )

    def __init__(self, spec: Target, checks: tuple[Check, ...], kind: str) -> None:
        self.key = spec.key
        self.ip = spec.ip
        self.checks = checks
        self.kind = kind
        self.family = socket.AF_INET6 if ipaddress.ip_address(spec.ip).version == 6 else socket.AF_INET
        self.health = spec.health
        self.gen = 0  # bumped when an episode ends; results of older attempts are ignored
        self.votes = 0  # results in a row contradicting ``health``
        self.slot = 0
        self.removed = False


class Engine:
    """Probes a changing set of targets on one event loop and reports transitions."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: ProbeSettings,
        on_transition: Callable[[Transition], None],
        *,
        probers: dict[str, Prober] | None = None,
    ) -> None:
        """``probers`` replaces the registry's prober for the kinds it names (tests script outcomes)."""
        self._loop = loop
        self._settings = settings
        self._on_transition = on_transition
        self._fail_needed = 1 + settings.retry_count
        self._recover_needed = settings.recovery_threshold
        self._targets: dict[str, _Target] = {}
        self._slots_n = max(1, min(_MAX_SLOTS, round(settings.interval / TICK)))
        self._slot_len = settings.interval / self._slots_n
        self._wheel: list[dict[str, _Target]] = [{} for _ in range(self._slots_n)]
        self._origin = time.monotonic()  # when tick 0 was due
        self._next_tick = 0
        self._driver: asyncio.Handle | None = None
        given = probers or {}
        self._probers: dict[str, Prober] = {
            kind: given.get(kind) or cls(loop, settings.timeout) for kind, cls in PROBERS.items()
        }
        # Targets share their checks and kind: a worker holds tens of thousands, with a few shapes.
        self._shapes: dict[tuple[Check, ...], tuple[tuple[Check, ...], str]] = {}
        # Cumulative figures, read by the worker's stats reporter.
        self.probes = dict.fromkeys(PROBERS, 0)
        self.failures = dict.fromkeys(PROBERS, 0)
        self.local_errors = 0
        self.transitions = 0
        self.suspects = 0  # targets believed up with a failure episode open
        self.skipped_probes = 0  # probes not started because the loop fell a whole interval behind
        self._local_error_logged_at = -_LOCAL_ERROR_LOG_EVERY
        self._local_errors_unlogged = 0
        self.latency = LatencyHistogram()
        self.lag = LagWindow()

    def start(self) -> str:
        """Open the probers and start the wheel; return what the probers said (for the start-up log)."""
        said = "; ".join(line for prober in self._probers.values() if (line := prober.open()))
        self._origin = time.monotonic()
        self._next_tick = 0
        self._driver = self._loop.call_at(self._origin, self._drive)
        return said

    def close(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
        for t in self._targets.values():
            t.removed = True
        self._targets.clear()
        self._wheel = [{} for _ in range(self._slots_n)]
        for prober in self._probers.values():
            prober.close()

    # ---- target set ---------------------------------------------------------------------------

    def upsert(self, spec: Target, *, immediate: bool = False) -> None:
        """Add a target or change its address/checks (which starts it afresh from ``spec.health``).

        ``immediate`` probes it now rather than at a random phase of the interval.
        Raises ValueError for an invalid IP address or a target without checks.
        """
        old = self._targets.get(spec.key)
        if old is not None:
            if old.ip == spec.ip and old.checks == spec.checks:
                return
            self.remove(spec.key)
        shape = self._shapes.get(spec.checks)
        if shape is None:
            if not spec.checks:
                raise ValueError("no checks")
            if len(self._shapes) >= _MAX_SHAPES:  # HTTP checks may carry a header or path per pod
                self._shapes.clear()
            shape = self._shapes[spec.checks] = (spec.checks, target_kind(spec.checks))
        t = _Target(spec, *shape)
        self._targets[spec.key] = t
        t.slot = random.randrange(self._slots_n)
        self._wheel[t.slot][t.key] = t
        if immediate:
            self._loop.call_soon(self._attempt, t)

    def remove(self, key: str) -> None:
        t = self._targets.pop(key, None)
        if t is not None:
            if t.votes and t.health != _UNHEALTHY:
                self.suspects -= 1
            t.removed = True
            del self._wheel[t.slot][key]

    @property
    def target_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(PROBERS, 0)
        for t in self._targets.values():
            counts[t.kind] = counts.get(t.kind, 0) + 1
        return counts

    @property
    def in_flight(self) -> int:
        return sum(prober.in_flight for prober in self._probers.values())

    def health(self, key: str) -> Health:
        return self._targets[key].health

    # ---- schedule -----------------------------------------------------------------------------

    def _drive(self) -> None:
        """Start the probes of the slots whose time has come, then sleep until the next slot.

        A late loop catches up at most ``_CATCH_UP`` slots at a time, handing the loop back between
        bursts so completions are read; a loop more than a whole interval late skips the missed
        slots rather than probe everything at once.
        """
        n, slot_len, origin = self._slots_n, self._slot_len, self._origin
        tick = self._next_tick
        now = time.monotonic()
        current = int((now - origin) / slot_len)
        if current - tick >= n:
            resume = current - n + 1
            self.skipped_probes += sum(len(self._wheel[k % n]) for k in range(tick, min(resume, tick + n)))
            tick = resume
        last = min(current, tick + _CATCH_UP - 1)
        try:
            while tick <= last:
                slot = self._wheel[tick % n]
                tick += 1
                if slot:
                    self.lag.add(max(0.0, now - (origin + (tick - 1) * slot_len)), len(slot))
                    for t in slot.values():  # probes never call back synchronously
                        self._attempt(t)
                    now = time.monotonic()
        finally:  # whatever went wrong above, the wheel keeps turning
            self._next_tick = tick
            if tick <= current:
                self._driver = self._loop.call_soon(self._drive)
            else:
                self._driver = self._loop.call_at(origin + tick * slot_len, self._drive)

    def _confirm(self, t: _Target, gen: int) -> None:
        if not t.removed and t.gen == gen:
            self._attempt(t)

    def _attempt(self, t: _Target) -> None:
        if t.removed:
            return
        checks = t.checks
        if len(checks) == 1:
            check = checks[0]
            done = partial(self._on_result, t, t.gen, check)
            try:
                self._probers[t.kind].start(t.ip, t.family, check, done)
            except Exception as exc:  # a prober's bug is a local error for this target, not the loop's end
                self._loop.call_soon(done, LOCAL_ERROR, 0.0, _start_failed(t.kind, exc))
        else:
            _AllChecks(self, t)

    # ---- judgement ----------------------------------------------------------------------------

    def _count(self, kind: str, outcome: int, latency: float) -> None:
        if outcome == LOCAL_ERROR:
            self.local_errors += 1
            return
        self.probes[kind] += 1
        if outcome == OK:
            self.latency.add(latency)
        else:
            self.failures[kind] += 1

    def _on_result(
        self, t: _Target, gen: int, check: Check, outcome: int, latency: float, detail: str
    ) -> None:
        if outcome == OK and t.health == _HEALTHY and not t.votes:  # the common case: nothing to decide
            self.probes[t.kind] += 1
            self.latency.add(latency)
            return
        self._count(t.kind, outcome, latency)
        self._judge(t, gen, check, outcome, latency, detail)

    def _judge(self, t: _Target, gen: int, check: Check, outcome: int, latency: float, detail: str) -> None:
        if t.removed or gen != t.gen:
            return
        if outcome == LOCAL_ERROR:
            self._log_local_error(t, detail)
            return
        ok = outcome == OK
        if ok and t.health == _UNKNOWN:
            self._flip(t, _HEALTHY, check, detail, latency)
            return
        believed_up = t.health != _UNHEALTHY
        if ok == believed_up:  # agrees: any open episode is over
            if t.votes:
                if believed_up:
                    self.suspects -= 1
                t.votes = 0
                t.gen += 1
            return
        t.votes += 1
        if believed_up and t.votes == 1:
            self.suspects += 1
        needed = self._fail_needed if believed_up else self._recover_needed
        if t.votes >= needed:
            self._flip(t, _UNHEALTHY if believed_up else _HEALTHY, check, detail, latency)
        elif t.votes == 1:
            spacing = self._settings.confirm_spacing
            start = time.monotonic()
            for i in range(1, needed):
                self._loop.call_at(start + i * spacing, self._confirm, t, t.gen)

    def _log_local_error(self, t: _Target, detail: str) -> None:
        """Say so, at most every few seconds: when descriptors run out, they run out for thousands."""
        now = time.monotonic()
        if now - self._local_error_logged_at < _LOCAL_ERROR_LOG_EVERY:
            self._local_errors_unlogged += 1
            return
        more = (
            f" ({self._local_errors_unlogged} more since the last report)"
            if self._local_errors_unlogged
            else ""
        )
        log.warning(
            "probe of %s (%s) could not be made: %s; it does not count against the target%s",
            t.key,
            t.ip,
            detail,
            more,
        )
        self._local_error_logged_at = now
        self._local_errors_unlogged = 0

    def _flip(self, t: _Target, health: Health, check: Check, detail: str, latency: float) -> None:
        attempts = max(1, t.votes)
        if health == _UNHEALTHY:
            self.suspects -= 1
        t.health = health
        t.votes = 0
        t.gen += 1
        self.transitions += 1
        self._on_transition(Transition(t.key, health, check, detail, latency, attempts, time.time()))


def _start_failed(kind: str, exc: Exception) -> str:
    return f"the {kind} probe could not start: {type(exc).__name__}: {exc}"


class _AllChecks:
    """One attempt on a target with several checks: it succeeds only if every check does.

    The evidence is the first failure (a local error only when nothing failed); on success, the
    target's first check with the slowest latency."""

    __slots__ = ("_engine", "_fail", "_gen", "_latency", "_local", "_target", "_waiting")

    def __init__(self, engine: Engine, t: _Target) -> None:
        self._engine = engine
        self._target = t
        self._gen = t.gen
        self._waiting = len(t.checks)
        self._fail: tuple[int, Check, float, str] | None = None
        self._local: tuple[int, Check, float, str] | None = None
        self._latency = 0.0
        for check in t.checks:
            kind = kind_of(check)
            done = partial(self._on_check, check)
            try:
                engine._probers[kind].start(t.ip, t.family, check, done)
            except Exception as exc:
                engine._loop.call_soon(done, LOCAL_ERROR, 0.0, _start_failed(kind, exc))

    def _on_check(self, check: Check, outcome: int, latency: float, detail: str) -> None:
        self._engine._count(kind_of(check), outcome, latency)
        if outcome == FAIL and self._fail is None:
            self._fail = (FAIL, check, latency, detail)
        elif outcome == LOCAL_ERROR and self._local is None:
            self._local = (LOCAL_ERROR, check, latency, detail)
        self._latency = max(self._latency, latency)
        self._waiting -= 1
        if not self._waiting:
            t = self._target
            outcome, check, latency, detail = (
                self._fail or self._local or (OK, t.checks[0], self._latency, "")
            )
            self._engine._judge(t, self._gen, check, outcome, latency, detail)
