"""What ehc thinks, and why: the view behind ``/status``, ``/status.json`` and ``ehc status``.

Operators of HAProxy and Envoy first reach for the stats page: every backend, its state, its last
check and the reason.  This is ehc's: who leads, the fail-safe, the workers, every node's targets
by health, each target that is not healthy with its evidence and what ehc wrote, and the latest
transitions and writes.  Healthy targets are counted, never listed, so the view stays small at
50,000 targets.

It is read-only and bounded.  ``StatusBook`` keeps the history nobody else keeps (appends only, a
fixed number of rows).  Suspects and node episodes live in the workers: a ``StatusView`` asks them
(``WorkerPool.inspect``) at most once per ``INSPECT_EVERY`` however many pages are open, and
everything else is read from the coordinator's own state when a page is asked for.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Literal

import msgspec

from ehc.kube.writes import Waiting, Write
from ehc.wire.checks import describe
from ehc.wire.messages import Health, Inspection, NodeVerdict, Transition

if TYPE_CHECKING:
    from ehc.coordinator.controller import Controller

HISTORY = 100
"""Transitions and writes kept for the page."""
LIMIT = 1000
"""Targets that are not healthy listed by default (all are counted); a request may ask for up to MAX_LIMIT."""
MAX_LIMIT = 10_000
NODES_LISTED = 500
"""Nodes listed: every node with a target that is not healthy, then the others, up to this many."""
INSPECT_EVERY = 1.0
"""The workers are asked at most this often; pages in between share the answer."""
_REMEMBERED = 10_000  # objects whose last write outcome is kept

State = Literal["unhealthy", "held", "suspect"]
STATES: tuple[State, ...] = ("unhealthy", "held", "suspect")


class Role(msgspec.Struct, frozen=True):
    identity: str
    leading: bool
    leader: str  # the holder the Lease names ("" when nobody holds it)
    term_started: float | None  # wall time this replica's term started (None: not leading)
    hot_standby: bool
    ready: bool
    peers: list[str]


class FailSafe(msgspec.Struct, frozen=True):
    engaged: bool
    dark: int  # unhealthy or suspect, as the decider counts them
    total: int
    share: float  # dark / total
    threshold: float  # the share above which it engages
    min_targets: int  # a smaller fleet is exempt
    held: int  # ejections it holds back


class Worker(msgspec.Struct, frozen=True):
    index: int
    pid: int
    up: bool
    targets: int
    probes_per_second: float
    lag_p99: float
    restarts: int
    stalls: int


class Node(msgspec.Struct, frozen=True):
    name: str  # "" for targets without a node
    targets: int
    healthy: int
    suspect: int
    unhealthy: int
    unknown: int
    verdict: str  # "down" (judged down as a whole), "looking" (silent: all its targets probed at once), ""
    verdict_at: float | None  # wall time of its last down verdict
    heard_ago: float | None  # seconds since anything of it last answered (None: never)


class Evidence(msgspec.Struct, frozen=True):
    check: str  # "http 10.0.0.7:8080/healthz"
    detail: str  # why the deciding attempt failed
    attempts: int
    took: float  # seconds from the first failed attempt to the verdict
    node_verdict: bool  # decided with its node, not alone


class TargetRow(msgspec.Struct, frozen=True):
    key: str
    object: str
    namespace: str
    address: str
    node: str
    probe: str
    state: State
    why: str  # for a held ejection: what holds it
    since: float | None  # wall time of the transition that made it unhealthy
    evidence: Evidence | None
    shows: str  # what the object shows now
    write: str  # the state of ehc's write of its object: "queued", "sending …", "ok at …", ""


class TransitionRow(msgspec.Struct, frozen=True):
    at: float
    key: str
    namespace: str
    health: str
    check: str
    detail: str
    attempts: int
    took: float
    node: str  # set when decided with its whole node
    worker: int


class WriteRow(msgspec.Struct, frozen=True):
    at: float
    key: str
    namespace: str
    summary: str
    outcome: str
    seconds: float  # from decision to outcome


class Writes(msgspec.Struct, frozen=True):
    queued: int
    outage: bool  # writes fail in a row: sent one at a time until the API server answers
    retries: int
    waiting: list[Waiting]  # the oldest, up to HISTORY


class Counts(msgspec.Struct, frozen=True):
    total: int
    healthy: int
    suspect: int
    unhealthy: int
    unknown: int
    by_kind: dict[str, int]  # by probe kind


class Status(msgspec.Struct, frozen=True, kw_only=True):
    """``/status.json``: one replica's view, at ``at``."""

    version: int = 1
    at: float
    role: Role
    failsafe: FailSafe
    targets: Counts
    workers: list[Worker]
    workers_unanswered: list[int]  # workers that did not answer the inspection in time
    nodes: list[Node]
    nodes_total: int
    not_healthy: list[TargetRow]
    not_healthy_total: int  # matching the filter; more than listed when the limit cut the list
    transitions: list[TransitionRow]
    writes: list[WriteRow]
    queue: Writes
    namespace: str  # the filter ("" : every namespace)
    state: str  # the filter ("" : every state that is not healthy)


def clock(at: float | None) -> str:
    """A wall time as the page and ``ehc status`` show it (UTC)."""
    return "" if at is None else time.strftime("%H:%M:%S", time.gmtime(at))


def namespace_of(key: str) -> str:
    """A target's or write's namespace: keys are "ns/name" (pods) or "Kind/ns/name[/address]"."""
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 and parts[0][:1].isupper() else parts[0]


class StatusBook:
    """The history only the page needs: the latest transitions and writes, nodes' last verdicts,
    each object's last write outcome, and when this term started.  O(1) per record, bounded: what is
    recorded is kept as it came, and turned into rows only when a page asks."""

    def __init__(self) -> None:
        self.transitions: deque[tuple[int, Transition, str]] = deque(maxlen=HISTORY)  # worker, it, its ip
        self.writes: deque[tuple[float, Write, str, float]] = deque(
            maxlen=HISTORY
        )  # at, it, outcome, seconds
        self.last_write: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (outcome, wall time)
        self.node_verdicts: OrderedDict[str, NodeVerdict] = OrderedDict()
        self.term_started: float | None = None

    def transition(self, worker: int, tr: Transition, ip: str) -> None:
        self.transitions.append((worker, tr, ip))

    def node(self, verdict: NodeVerdict) -> None:
        self.node_verdicts.pop(verdict.node, None)
        self.node_verdicts[verdict.node] = verdict
        if len(self.node_verdicts) > _REMEMBERED:
            self.node_verdicts.popitem(last=False)

    def written(self, write: Write, outcome: str, seconds: float) -> None:
        now = time.time()
        key = write.key
        self.writes.append((now, write, outcome, seconds))
        self.last_write.pop(key, None)
        self.last_write[key] = (outcome, now)
        if len(self.last_write) > _REMEMBERED:
            self.last_write.popitem(last=False)


class StatusView:
    """Builds a ``Status`` for a request from the controller's state and the workers' latest census."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        self._inspected: tuple[list[Inspection], list[int]] = ([], [])
        self._inspected_at = -INSPECT_EVERY
        self._inspecting: asyncio.Task[tuple[list[Inspection], list[int]]] | None = None

    async def _census(self) -> tuple[list[Inspection], list[int]]:
        """The workers' answer, asked again only once it is ``INSPECT_EVERY`` old (shared meanwhile)."""
        pool = self.c.pool
        if pool is None:
            return [], []
        if time.monotonic() - self._inspected_at < INSPECT_EVERY:
            return self._inspected
        if self._inspecting is None:
            self._inspecting = asyncio.ensure_future(pool.inspect(MAX_LIMIT))
        task = self._inspecting
        try:
            self._inspected = await asyncio.shield(task)
            self._inspected_at = time.monotonic()
        finally:
            if task.done():
                self._inspecting = None
        return self._inspected

    async def status(self, *, namespace: str = "", state: str = "", limit: int = LIMIT) -> Status:
        """Raises ValueError for a state that is not one of ``STATES`` ("" : all of them)."""
        if state and state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)} (got {state!r})")
        limit = max(0, min(limit, MAX_LIMIT))
        inspections, unanswered = await self._census()
        c = self.c
        pool = c.pool
        suspects = {k for i in inspections for k in i.suspects}
        # Targets the probes believe unhealthy (as the workers were last told or reported).
        unhealthy = pool.unhealthy() if pool is not None else []
        rows: list[TargetRow] = []
        matching = 0
        wanted: dict[str, State] = {
            **dict.fromkeys(suspects, "suspect"),
            **dict.fromkeys(unhealthy, "unhealthy"),
        }
        # A row costs a lookup or two: only what is listed is built, unless telling "held" from
        # "unhealthy" for the filter needs it.
        must_build = state in ("unhealthy", "held")
        for key, kind in wanted.items():
            if (namespace and namespace_of(key) != namespace) or (state == "suspect" and kind != "suspect"):
                continue
            if len(rows) >= limit and not must_build:
                matching += 1
                continue
            row = self._row(key, kind)
            if row is None or (state and row.state != state):
                continue
            matching += 1
            if len(rows) < limit:
                rows.append(row)
        rows.sort(key=lambda r: (STATES.index(r.state), r.namespace, r.key))
        return Status(
            at=time.time(),
            role=self._role(),
            failsafe=self._failsafe(),
            targets=self._counts(),
            workers=self._workers(),
            workers_unanswered=unanswered,
            nodes=(nodes := self._nodes(inspections))[:NODES_LISTED],
            nodes_total=len(nodes),
            not_healthy=rows,
            not_healthy_total=matching,
            transitions=[t for t in self._transitions() if not namespace or t.namespace == namespace],
            writes=[w for w in self._writes() if not namespace or w.namespace == namespace],
            queue=self._queue(),
            namespace=namespace,
            state=state,
        )

    # ---- the parts --------------------------------------------------------------------------------

    def _role(self) -> Role:
        c = self.c
        leading = c.elector.is_leader()
        return Role(
            identity=c.settings.identity,
            leading=leading,
            leader=c.elector.observed_holder,
            term_started=c.book.term_started if leading else None,
            hot_standby=c.settings.hot_standby,
            ready=c.ready,
            peers=sorted(c.membership.peers()) if c.membership is not None else [],
        )

    def _failsafe(self) -> FailSafe:
        c, d = self.c, self.c.decider
        dark, total = d.dark, d.total
        return FailSafe(
            engaged=d.failsafe, dark=dark, total=total, share=dark / total if total else 0.0,
            threshold=c.settings.failsafe_share, min_targets=c.settings.failsafe_min_targets, held=d.held,
        )  # fmt: skip

    def _counts(self) -> Counts:
        c = self.c
        kinds = c.targets_by_kind()
        health = {"healthy": 0, "unhealthy": 0, "unknown": 0}
        for s in c.pool.stats.values() if c.pool is not None else ():
            for h, n in s.health.items():
                health[h] = health.get(h, 0) + n
        suspect = c.decider.suspect_count
        return Counts(
            total=kinds.total(), healthy=max(0, health["healthy"] - suspect), suspect=suspect,
            unhealthy=health["unhealthy"], unknown=health["unknown"], by_kind=dict(sorted(kinds.items())),
        )  # fmt: skip

    def _workers(self) -> list[Worker]:
        pool = self.c.pool
        if pool is None:
            return []
        out = []
        for index in range(pool.size):
            s = pool.stats.get(index)
            out.append(
                Worker(
                    index=index,
                    pid=s.pid if s is not None else 0,
                    up=pool.up(index),
                    targets=sum(s.targets.values()) if s is not None else 0,
                    probes_per_second=s.window_probes / s.window_seconds if s and s.window_seconds else 0.0,
                    lag_p99=s.lag_p99 if s is not None else 0.0,
                    restarts=pool.restarts[index],
                    stalls=pool.stalls[index],
                )
            )
        return out

    def _nodes(self, inspections: list[Inspection]) -> list[Node]:
        verdicts = self.c.book.node_verdicts
        nodes = []
        for i in inspections:
            for n in i.nodes:
                v = verdicts.get(n.node)
                healthy = n.targets - n.unhealthy - n.unknown - n.suspect
                verdict = "looking" if n.looking else "down" if v is not None and n.unhealthy else ""
                node = Node(
                    n.node, n.targets, max(0, healthy), n.suspect, n.unhealthy, n.unknown, verdict,
                    v.wall_time if v is not None else None, None if n.heard_ago < 0 else n.heard_ago,
                )  # fmt: skip
                nodes.append(node)
        # Trouble first (most dark targets), then by name.
        nodes.sort(key=lambda n: (-(n.unhealthy + n.suspect), n.verdict == "", n.name))
        return nodes

    def _row(self, key: str, kind: State) -> TargetRow | None:
        c = self.c
        source = c.source_of(key)
        view = source.view(key) if source is not None else None
        if view is None:
            return None
        state: State = kind
        why = ""
        if kind == "unhealthy" and view.verdict != Health.UNHEALTHY:
            why = self._held_by(key)
            state = "held" if why else "unhealthy"
            if not why and view.evidence is None:
                why = "out of service when ehc began probing it, and no answer since"
        ev = view.evidence if view.evidence is not None and view.evidence.health == Health.UNHEALTHY else None
        evidence = None
        if ev is not None:
            evidence = Evidence(describe(ev.check, view.ip), ev.detail, ev.attempts, ev.took, bool(ev.node))
        return TargetRow(
            key=key, object=view.object, namespace=view.namespace, address=view.address, node=view.node,
            probe=view.probe, state=state, why=why, since=ev.wall_time if ev is not None else None,
            evidence=evidence, shows=view.shows, write=self._write_state(view.write),
        )  # fmt: skip

    def _held_by(self, key: str) -> str:
        """Why the probes' unhealthy target is not being ejected ("" : it is, or it was never decided)."""
        c = self.c
        if not c.elector.is_leader():
            return "standing by: only the leader writes"
        if c.decider.failsafe:
            return "the fail-safe holds ejections"
        if c.opinions is not None and (why := c.opinions.holding(key)):
            return why
        return ""

    def _write_state(self, key: str) -> str:
        c = self.c
        if (w := c.writes.state(key)) is not None:
            return w
        last = c.book.last_write.get(key)
        if last is None:
            return ""
        outcome, at = last
        return f"{outcome} at {clock(at)}"

    def _queue(self) -> Writes:
        w = self.c.writes
        waiting, queued = w.waiting(HISTORY)
        return Writes(queued=queued, outage=w.outage, retries=w.retries, waiting=waiting)

    def _transitions(self) -> list[TransitionRow]:
        """The book's transitions, newest first."""
        rows = []
        for worker, tr, ip in reversed(self.c.book.transitions):
            check = describe(tr.check, ip)
            health = tr.health.name.lower()
            row = TransitionRow(
                tr.wall_time,
                tr.key,
                namespace_of(tr.key),
                health,
                check,
                tr.detail,
                tr.attempts,
                tr.took,
                tr.node,
                worker,
            )
            rows.append(row)
        return rows

    def _writes(self) -> list[WriteRow]:
        """The book's writes, newest first."""
        return [
            WriteRow(at, w.key, namespace_of(w.key), w.summary, outcome, seconds)
            for at, w, outcome, seconds in reversed(self.c.book.writes)
        ]
