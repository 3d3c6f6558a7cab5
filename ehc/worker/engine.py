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

**Node evidence.**  A powered-off node silences all of its targets at once, and the coordinator
gives each worker whole nodes (``Target.node``), so a worker sees every target of a node.  A node
remembers when any of its targets last *answered* (a success, a refusal, an HTTP status: anything but
silence).  A silent failure of a target believed up, started after the node's last answer, is one
no answer explains: it opens a *node episode* and every other target of the node is probed at once
(the look).  Once ``node_evidence`` attempts on the node's targets have gone unanswered since the
episode's onset, the look has been out for ``LOOK_GRACE`` and still nothing answered, the whole node
is judged down and every target of it believed up flips together.  Any answer closes the episode:
the node is alive and its failing targets are judged one by one, exactly as without node evidence.
Random loss silences attempts one at a time; a false node verdict needs ``node_evidence`` of them in
a row with every other attempt on the node lost too (docs: the arithmetic).

**Witness.**  Optionally each node's own address is checked every ``heartbeat`` (its kubelet port or
ICMP).  Its answers are the node's answers; ``WITNESS_MISSES`` silent heartbeats in a row, with
nothing else heard from the node since, open a node episode at once, so the look starts long before a
pod probe's timeout.  A witness never counts towards a verdict: its false alarms cost probes, not
traffic.  But the look it opened may be judged early: a connect that has had no SYN-ACK for
``LOOK_GRACE`` is as silent as one that timed out, so once ``node_evidence`` of the look's TCP and ICMP
attempts (HTTP and gRPC ones wait on applications, and count only when they time out) have gone
unanswered that long, with nothing heard from the node, the node is judged down.  A witness that has
never answered is not used (a firewall, not a dead node).

**Doubts and questions.**  A target believed up whose failure episode opens, or whose node's look
goes out, is reported as a *doubt* (``on_doubt``), so the leader can ask its peers while the
confirmations run.  A peer's question (``ask``) probes each target asked about at once and answers
from attempts started after the question only: UP for a success, DOWN for an answer that is not one,
SILENT for nothing within the wait.

Nothing blocks and nothing waits in a worker slot: a probe in flight is a socket and an entry in
its prober's deadline queue.  The engine knows no probe kind by name: each check is handed to the
prober the registry names for its kind, and a target with several checks is one attempt that
succeeds only when all of them do.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import random
import socket
import time
from collections.abc import Callable
from functools import partial

from ehc.probe import FAIL, LOCAL_ERROR, OK, Prober, silent
from ehc.probe.registry import PROBERS
from ehc.wire.checks import Check, kind_of, target_kind
from ehc.wire.messages import Health, NodeCensus, NodeVerdict, Opinion, Target, Transition
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
WITNESS_MISSES = 3
"""Silent heartbeats in a row that make the witness look at its node's targets (as BFD's multiplier)."""
_WITNESS_UNHEARD_AFTER = 50
"""Heartbeats without a first answer after which the witness's silence is reported, once."""
_CONNECT_ONLY = frozenset({"tcp", "icmp"})
"""Kinds whose attempt is answered by the node's kernel alone: unanswered means no SYN-ACK, no reply."""
_READ_FIRST = 0.005
LOOK_GRACE = 0.1
"""How long the look at a node's other targets must go unanswered before the node may be judged
down: far longer than a live node's kernel takes to answer a connect, with room for a busy loop."""
_SAME_MOMENT = 0.001
"""Slack when telling whether an attempt started after a question: its start is now minus its latency."""


class _Target:
    """A target's place on the wheel and the state of its current episode."""

    __slots__ = (
        "asked",
        "checks",
        "doubted",
        "family",
        "gen",
        "health",
        "ip",
        "key",
        "kind",
        "node",
        "removed",
        "slot",
        "votes",
    )

    def __init__(self, spec: Target, checks: tuple[Check, ...], kind: str, node: _Node | None) -> None:
        self.key = spec.key
        self.node = node
        self.ip = spec.ip
        self.checks = checks
        self.kind = kind
        self.family = socket.AF_INET6 if ipaddress.ip_address(spec.ip).version == 6 else socket.AF_INET
        self.health = spec.health
        self.gen = 0  # bumped when an episode ends; results of older attempts are ignored
        self.votes = 0  # results in a row contradicting ``health``
        self.doubted = 0.0  # when the first of them started (monotonic)
        self.slot = 0
        self.removed = False
        self.asked: list[_Question] | None = None  # open questions about it, answered by its next results


class _Node:
    """The targets of one node in this worker, when the node last answered, and its open episode."""

    __slots__ = (
        "attempts",
        "epoch",
        "last_answer",
        "looked",
        "members",
        "miss_start",
        "misses",
        "name",
        "onset",
        "opened",
        "witness",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.witness: _Witness | None = None
        self.members: dict[str, _Target] = {}
        self.last_answer = -math.inf  # monotonic time of the latest answer from any of its targets
        self.onset: float | None = None  # start of the first silence no answer explains; None: no episode
        self.opened = 0.0  # when the episode opened and the look went out
        self.attempts = 0  # silent attempts started since the onset
        self.epoch = 0  # bumped per episode: a deferred verdict of an older one is void
        self.looked: set[str] = set()  # a witness's look: connect-only targets that have not answered
        self.misses = 0  # the witness's silent heartbeats in a row
        self.miss_start = 0.0  # when the first of them started


class _Witness:
    """A node's own address, checked every heartbeat."""

    __slots__ = ("beats", "family", "heard", "ip")

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
        self.heard = False  # it answered at least once: only then does its silence mean anything
        self.beats = 0


class _Question:
    """A peer's question about some targets: an opinion per key, the keys still waiting for a result."""

    __slots__ = ("done", "open", "opinions", "since", "timer")

    def __init__(self, since: float, done: Callable[[dict[str, Opinion]], None]) -> None:
        self.since = since
        self.done: Callable[[dict[str, Opinion]], None] | None = done
        self.opinions: dict[str, Opinion] = {}
        self.open: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None


class Engine:
    """Probes a changing set of targets on one event loop and reports transitions."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: ProbeSettings,
        on_transition: Callable[[Transition], None],
        *,
        on_node: Callable[[NodeVerdict], None] = lambda verdict: None,
        on_doubt: Callable[[str], None] = lambda key: None,
        probers: dict[str, Prober] | None = None,
    ) -> None:
        """``on_node`` hears of a node verdict before its targets' transitions, ``on_doubt`` of a target
        believed up falling into doubt.  ``probers`` replaces the registry's prober for the kinds it
        names (tests script outcomes)."""
        self._loop = loop
        self._settings = settings
        self._on_transition = on_transition
        self._on_node = on_node
        self._on_doubt = on_doubt
        self._questions: set[_Question] = set()
        self._fail_needed = 1 + settings.retry_count
        self._recover_needed = settings.recovery_threshold
        self._targets: dict[str, _Target] = {}
        self._nodes: dict[str, _Node] = {}
        self._node_needed = settings.node_evidence
        self._witness_ips: dict[str, str] = {}  # node -> its address, whether or not it has targets here
        self._witness_check = settings.witness
        self._witness_prober: Prober | None = None
        self._beat: asyncio.TimerHandle | None = None
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
        if settings.witness is not None and settings.node_evidence:
            kind = kind_of(settings.witness)
            self._witness_prober = given.get(f"witness-{kind}") or PROBERS[kind](loop, 2 * settings.heartbeat)
        # Targets share their checks and kind: a worker holds tens of thousands, with a few shapes.
        self._shapes: dict[tuple[Check, ...], tuple[tuple[Check, ...], str]] = {}
        # Cumulative figures, read by the worker's stats reporter.
        self.probes = dict.fromkeys(PROBERS, 0)
        self.failures = dict.fromkeys(PROBERS, 0)
        self.local_errors = 0
        self.transitions = 0
        self._suspects = 0  # targets believed up with a failure episode of their own open
        self.looks = 0  # node episodes opened (each probes the node's other targets at once)
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
        if self._witness_prober is not None:
            self._witness_prober.open()
            self._beat = self._loop.call_soon(self._heartbeat)
        return said

    def close(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
        if self._beat is not None:
            self._beat.cancel()
        if self._witness_prober is not None:
            self._witness_prober.close()
        for q in list(self._questions):
            self._answer(q)
        for t in self._targets.values():
            t.removed = True
        self._targets.clear()
        self._nodes.clear()
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
            if old.ip == spec.ip and old.checks == spec.checks and old.node is self._nodes.get(spec.node):
                return
            self.remove(spec.key)
        shape = self._shapes.get(spec.checks)
        if shape is None:
            if not spec.checks:
                raise ValueError("no checks")
            if len(self._shapes) >= _MAX_SHAPES:  # HTTP checks may carry a header or path per pod
                self._shapes.clear()
            shape = self._shapes[spec.checks] = (spec.checks, target_kind(spec.checks))
        node = None
        if spec.node and self._node_needed:
            node = self._nodes.get(spec.node)
            if node is None:
                node = self._nodes[spec.node] = _Node(spec.node)
                self._set_witness(node)
        t = _Target(spec, *shape, node)
        if node is not None:
            node.members[t.key] = t
        self._targets[spec.key] = t
        t.slot = random.randrange(self._slots_n)
        self._wheel[t.slot][t.key] = t
        if immediate:
            self._loop.call_soon(self._attempt, t)

    def remove(self, key: str) -> None:
        t = self._targets.pop(key, None)
        if t is not None:
            if t.votes and t.health != _UNHEALTHY:
                self._suspects -= 1
            t.removed = True
            for q in t.asked or ():
                q.opinions[key] = Opinion.UNKNOWN
                self._settle(q, key)
            del self._wheel[t.slot][key]
            if (node := t.node) is not None:
                del node.members[key]
                node.looked.discard(key)
                if not node.members:
                    del self._nodes[node.name]

    def witness(self, node: str, ip: str) -> None:
        """Check ``ip`` as ``node``'s witness ("" for none).  Raises ValueError for an invalid address."""
        if ip:
            ipaddress.ip_address(ip)
            self._witness_ips[node] = ip
        else:
            self._witness_ips.pop(node, None)
        if (n := self._nodes.get(node)) is not None:
            self._set_witness(n)

    def _set_witness(self, node: _Node) -> None:
        ip = self._witness_ips.get(node.name, "") if self._witness_prober is not None else ""
        if node.witness is None or node.witness.ip != ip:
            node.witness = _Witness(ip) if ip else None
            node.misses = 0

    def ask(self, keys: list[str], wait: float, done: Callable[[dict[str, Opinion]], None]) -> None:
        """A peer's question: probe each target now and call ``done`` with an opinion of every key once
        each one held here has a result from an attempt started since, or ``wait`` seconds passed."""
        q = _Question(time.monotonic(), done)
        self._questions.add(q)
        for key in keys:
            t = self._targets.get(key)
            if t is None or key in q.opinions:
                q.opinions.setdefault(key, Opinion.UNKNOWN)
                continue
            q.opinions[key] = Opinion.SILENT
            q.open.add(key)
            if t.asked is None:
                t.asked = []
            t.asked.append(q)
            self._attempt(t)
        if q.open:
            q.timer = self._loop.call_later(wait, self._answer, q)
        else:
            self._loop.call_soon(self._answer, q)

    def _tell(self, t: _Target, outcome: int, latency: float, detail: str) -> None:
        """A result of ``t`` answers the questions asked before its attempt started."""
        if outcome == LOCAL_ERROR or t.asked is None:
            return
        started = time.monotonic() - latency
        opinion = Opinion.UP if outcome == OK else Opinion.SILENT if silent(detail) else Opinion.DOWN
        for q in [q for q in t.asked if started >= q.since - _SAME_MOMENT]:
            q.opinions[t.key] = opinion
            self._settle(q, t.key)

    def _settle(self, q: _Question, key: str) -> None:
        """``key`` needs nothing more for ``q``: answer it once nothing else does."""
        q.open.discard(key)
        if (t := self._targets.get(key)) is not None and t.asked is not None:
            t.asked.remove(q)
            if not t.asked:
                t.asked = None
        if not q.open:
            self._answer(q)

    def _answer(self, q: _Question) -> None:
        done, q.done = q.done, None
        if done is None:
            return
        if q.timer is not None:
            q.timer.cancel()
        self._questions.discard(q)
        for key in list(q.open):  # silent until now: no longer waited for
            self._settle(q, key)
        done(q.opinions)

    @property
    def witnesses(self) -> tuple[int, int]:
        """Nodes with a witness here, and how many of those witnesses never answered."""
        ws = [n.witness for n in self._nodes.values() if n.witness is not None]
        return len(ws), sum(1 for w in ws if not w.heard)

    def census(self) -> tuple[dict[str, int], dict[str, int]]:
        """Targets by probe kind, and by the health their probes believe."""
        kinds = dict.fromkeys(PROBERS, 0)
        health = [0, 0, 0]
        for t in self._targets.values():
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
            health[t.health] += 1
        return kinds, {h.name.lower(): health[h] for h in Health}

    def inspect(self, limit: int) -> tuple[list[NodeCensus], list[str]]:
        """How every node's targets stand, and the targets in doubt (at most ``limit`` of them): for
        the status page, which asks at most about once a second."""
        now = time.monotonic()
        nodes: dict[str, list[int]] = {}  # name -> [targets, unhealthy, unknown, suspect]
        suspects: list[str] = []
        for t in self._targets.values():
            node = t.node
            counts = nodes.setdefault(node.name if node is not None else "", [0, 0, 0, 0])
            counts[0] += 1
            if t.health == _UNHEALTHY:
                counts[1] += 1
                continue
            if t.health == _UNKNOWN:
                counts[2] += 1
            if t.votes or (node is not None and node.onset is not None):
                counts[3] += 1
                if len(suspects) < limit:
                    suspects.append(t.key)
        census = []
        for name, (targets, unhealthy, unknown, suspect) in nodes.items():
            n = self._nodes.get(name) if name else None
            heard = -1.0 if n is None or n.last_answer == -math.inf else now - n.last_answer
            looking = n is not None and n.onset is not None
            census.append(NodeCensus(name, targets, unhealthy, unknown, suspect, looking, heard))
        return census, suspects

    @property
    def in_flight(self) -> int:
        return sum(prober.in_flight for prober in self._probers.values())

    def health(self, key: str) -> Health:
        return self._targets[key].health

    @property
    def suspects(self) -> int:
        """Targets believed up that are in doubt: in a failure episode of their own, or on a node in an
        open episode (the fail-safe must see a dark fleet coming before the first node verdict)."""
        doubted = self._suspects
        for node in self._nodes.values():
            if node.onset is not None:
                doubted += sum(1 for m in node.members.values() if m.health != _UNHEALTHY and not m.votes)
        return doubted

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
        if t.asked is not None:
            self._tell(t, outcome, latency, detail)
        if outcome == OK and t.health == _HEALTHY and not t.votes:  # the common case: nothing to decide
            self.probes[t.kind] += 1
            self.latency.add(latency)
            if (node := t.node) is not None:
                node.last_answer = time.monotonic()
                if node.onset is not None:
                    node.onset = None  # alive after all
                    node.looked.discard(t.key)
            return
        self._count(t.kind, outcome, latency)
        if t.node is not None and not t.removed:
            self._node_evidence(t, outcome, latency, detail)
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
                    self._suspects -= 1
                t.votes = 0
                t.gen += 1
            return
        t.votes += 1
        if t.votes == 1:
            t.doubted = time.monotonic() - latency
        if believed_up and t.votes == 1:
            self._suspects += 1
            self._on_doubt(t.key)
        needed = self._fail_needed if believed_up else self._recover_needed
        if t.votes >= needed:
            self._flip(t, _UNHEALTHY if believed_up else _HEALTHY, check, detail, latency)
        elif t.votes == 1:
            spacing = self._settings.confirm_spacing
            start = time.monotonic()
            for i in range(1, needed):
                self._loop.call_at(start + i * spacing, self._confirm, t, t.gen)

    # ---- node evidence --------------------------------------------------------------------------

    def _node_evidence(self, t: _Target, outcome: int, latency: float, detail: str) -> None:
        """What one result says about the target's node (before the target itself is judged)."""
        node = t.node
        assert node is not None
        now = time.monotonic()
        node.looked.discard(t.key)  # whatever it said, it is no longer unanswered
        if outcome == LOCAL_ERROR:
            return  # no attempt was made: nothing about the node
        if outcome == OK or not silent(detail):
            # A timeout after the connection was made was answered at some point after the start.
            self._heard(node, now if outcome == OK or not detail.startswith("timeout") else now - latency)
            return
        start = now - latency
        if t.health == _UNHEALTHY or node.last_answer >= start:
            return  # known dead, or the node answered since: the target's own failure
        if node.onset is None:
            self._look(node, start, now, t)
        elif start < node.onset:
            node.onset = start
        node.attempts += 1
        self._node_check(node, node.epoch)

    @staticmethod
    def _heard(node: _Node, at: float) -> None:
        """The node answered at ``at``: alive then, so an episode open since before is over and its
        silent targets are judged one by one.  (The probe fast path inlines this for a success.)"""
        node.last_answer = max(node.last_answer, at)
        if node.onset is not None and at >= node.onset:
            node.onset = None

    def _look(self, node: _Node, onset: float, now: float, seen: _Target | None = None) -> None:
        """Open a node episode: nothing heard from the node since ``onset``; probe every other target
        of it believed up at once (look where it broke).  A witness's look (``seen`` None) may be
        judged early, on the connects still unanswered after ``LOOK_GRACE``."""
        node.onset, node.opened, node.attempts = onset, now, 0
        node.epoch += 1
        node.looked = set()
        self.looks += 1
        for m in node.members.values():
            if m is not seen and m.health != _UNHEALTHY and not m.votes:
                self._on_doubt(m.key)
                self._attempt(m)
                if seen is None and m.kind in _CONNECT_ONLY:
                    node.looked.add(m.key)
        if node.looked:
            self._loop.call_at(now + LOOK_GRACE, self._look_check, node, node.epoch, True)

    def _look_check(self, node: _Node, epoch: int, again: bool) -> None:
        """Judge a witness's look on what is still unanswered, after giving the loop one more turn to
        read what arrived (an answer read late must not count as silence)."""
        if node.onset is None or node.epoch != epoch:
            return
        if again:
            self._loop.call_later(_READ_FIRST, self._look_check, node, epoch, False)
        elif len(node.looked) + node.attempts >= self._node_needed:
            self._node_down(node)

    def _heartbeat(self) -> None:
        """Check every witness once; again one heartbeat later."""
        prober, check = self._witness_prober, self._witness_check
        assert prober is not None and check is not None
        self._beat = self._loop.call_later(self._settings.heartbeat, self._heartbeat)
        now = time.monotonic()
        for node in self._nodes.values():
            if (w := node.witness) is not None:
                done = partial(self._witnessed, node, w, now)
                try:
                    prober.start(w.ip, w.family, check, done)
                except Exception as exc:  # a prober's bug says nothing about the node
                    log.warning(
                        "witness of node %s could not be checked: %s",
                        node.name,
                        _start_failed("witness", exc),
                    )

    def _witnessed(
        self, node: _Node, w: _Witness, start: float, outcome: int, latency: float, detail: str
    ) -> None:
        if node.witness is not w or self._nodes.get(node.name) is not node or outcome == LOCAL_ERROR:
            return
        w.beats += 1
        now = time.monotonic()
        if outcome == OK or not silent(detail):  # the node answered: alive
            w.heard, node.misses = True, 0
            self._heard(node, now)
            return
        if not w.heard:
            if w.beats == _WITNESS_UNHEARD_AFTER:
                log.warning(
                    "witness of node %s (%s) has not answered %d heartbeats (%s); it is not used until it does: "
                    "is the port blocked between ehc and the node?", node.name, w.ip, w.beats, detail,
                )  # fmt: skip
            return
        node.misses += 1
        if node.misses == 1:
            node.miss_start = start
        if (
            node.misses >= WITNESS_MISSES
            and node.onset is None
            and node.last_answer < node.miss_start
            and any(m.health != _UNHEALTHY for m in node.members.values())
        ):
            self._look(node, node.miss_start, now)

    def _node_check(self, node: _Node, epoch: int) -> None:
        if node.onset is None or node.epoch != epoch or node.attempts < self._node_needed:
            return
        due = node.opened + LOOK_GRACE
        if time.monotonic() < due:
            self._loop.call_at(due, self._node_check, node, epoch)
            return
        self._node_down(node)

    def _node_down(self, node: _Node) -> None:
        onset = node.onset
        assert onset is not None
        node.onset = None
        silent_for = time.monotonic() - onset
        up = [m for m in node.members.values() if m.health != _UNHEALTHY]
        if not up:
            return  # every target already judged on its own: nothing left to say
        attempts = node.attempts + len(node.looked)
        self._on_node(NodeVerdict(node.name, len(up), attempts, silent_for, time.time()))
        detail = (
            f"node {node.name} silent: {attempts} attempts on its targets unanswered, "
            f"nothing heard from it for {silent_for * 1000:.0f} ms"
        )
        for m in up:
            self._flip(m, _UNHEALTHY, m.checks[0], detail, silent_for, node=node.name)

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

    def _flip(
        self, t: _Target, health: Health, check: Check, detail: str, latency: float, *, node: str = ""
    ) -> None:
        attempts = max(1, t.votes)
        took = time.monotonic() - t.doubted if t.votes and not node else latency
        if t.votes and t.health != _UNHEALTHY:
            self._suspects -= 1  # it was in doubt, believed up
        t.health = health
        t.votes = 0
        t.gen += 1
        self.transitions += 1
        self._on_transition(
            Transition(t.key, health, check, detail, latency, attempts, time.time(), node, took)
        )


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
        if self._target.node is not None and not self._target.removed:
            self._engine._node_evidence(self._target, outcome, latency, detail)
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
            if t.asked is not None:
                self._engine._tell(t, outcome, latency, detail)
            self._engine._judge(t, self._gen, check, outcome, latency, detail)
