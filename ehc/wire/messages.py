"""What crosses the pipes between the coordinator and its workers.

Frames are msgpack (msgspec) payloads, each a tagged message.  Workers send *transitions*, not probe
results, so pipe traffic grows with state changes rather than with the probe rate.
"""

from __future__ import annotations

from enum import IntEnum

import msgspec

from ehc.wire.checks import Check, kind_of, port_of
from ehc.wire.settings import ProbeSettings


class Health(IntEnum):
    UNKNOWN = 0
    HEALTHY = 1
    UNHEALTHY = 2


# Upper bounds (seconds) of the probe-latency histogram buckets sent in Stats; +Inf is implied.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Target(msgspec.Struct, frozen=True, array_like=True):
    """Something to probe: healthy while every one of its checks succeeds."""

    key: str
    ip: str
    checks: tuple[Check, ...]
    health: Health = Health.UNKNOWN
    """Last known health: a restarted worker resumes from it instead of re-announcing every target."""
    node: str = ""
    """The node it runs on ("" when unknown): a node's targets fail together, and are judged together."""


# ---- coordinator → worker -------------------------------------------------------------------------


class Init(msgspec.Struct, tag="init"):
    worker: int
    settings: ProbeSettings
    stats_interval: float = 1.0


class Upsert(msgspec.Struct, tag="upsert"):
    targets: list[Target]


class Remove(msgspec.Struct, tag="remove"):
    keys: list[str]


class Witnesses(msgspec.Struct, tag="witnesses"):
    """Nodes' own addresses to check as their witnesses ("" stops a node's witness)."""

    nodes: dict[str, str]


class Ask(msgspec.Struct, tag="ask"):
    """A peer's question about some of this worker's targets: probe each now, and answer within ``wait``
    seconds from attempts started after the question (see ``Opinion``)."""

    id: int
    keys: list[str]
    wait: float


class Inspect(msgspec.Struct, tag="inspect"):
    """The status page's question: how every node of this worker stands, and which targets are in doubt
    (at most ``limit`` of them named)."""

    id: int
    limit: int


class Stop(msgspec.Struct, tag="stop"):
    pass


ToWorker = Init | Upsert | Remove | Witnesses | Ask | Inspect | Stop


# ---- worker → coordinator -------------------------------------------------------------------------


class Opinion(IntEnum):
    """What a replica's own fresh probes say of a target, asked for a second opinion."""

    UNKNOWN = 0  # not probed here, or no attempt could be made
    UP = 1  # an attempt started after the question succeeded
    DOWN = 2  # it answered, but not as a healthy target does (refused, an HTTP error status, ...)
    SILENT = 3  # no answer within the wait


class Hello(msgspec.Struct, tag="hello"):
    worker: int
    pid: int
    probers: str
    """What the probers said when they opened (how ICMP is done, or why it cannot be)."""


class Transition(msgspec.Struct, frozen=True, array_like=True):
    """A target changed health; the evidence is the attempt that decided it."""

    key: str
    health: Health
    check: Check  # the check that failed; on success, the target's first check
    detail: str  # "" on success, else why the attempt failed ("timeout", "connrefused", ...)
    latency: float
    attempts: int  # agreeing attempts in a row that decided it
    wall_time: float
    node: str = ""  # set when its node was judged down as a whole (see NodeVerdict), not the target alone
    took: float = 0.0
    """Seconds from the start of the first attempt that contradicted the old health to this verdict
    (for a node's verdict, since the node went silent): how long detection took."""

    @property
    def kind(self) -> str:
        return kind_of(self.check)

    @property
    def port(self) -> int:
        return port_of(self.check)


class NodeVerdict(msgspec.Struct, frozen=True, array_like=True):
    """A whole node judged down on pooled evidence: ``attempts`` on its targets went unanswered, and
    none of them (nor its witness) answered for ``silent_for`` seconds.  Its ``targets`` believed up
    flip together, each as a Transition naming the node."""

    node: str
    targets: int
    attempts: int
    silent_for: float
    wall_time: float


class Transitions(msgspec.Struct, tag="transitions"):
    items: list[Transition]
    suspects: int = -1
    """The worker's suspect count after these transitions, so the coordinator never counts a target
    both as suspect and as unhealthy (-1: not given)."""
    nodes: list[NodeVerdict] = []
    """Node verdicts behind some of ``items``, so the coordinator says it once per node."""
    doubts: list[str] = []
    """Targets believed up that just fell into doubt (a failure episode opened, or their node's look
    went out): the leader asks its peers about them while the confirmations run."""


class Answers(msgspec.Struct, tag="answers"):
    """The answer to an ``Ask``: an opinion for every key asked (UNKNOWN for keys not held here)."""

    id: int
    opinions: dict[str, Opinion]


class NodeCensus(msgspec.Struct, frozen=True, array_like=True):
    """How one node's targets in one worker stand, as its probes believe ("" : targets without a node)."""

    node: str
    targets: int
    unhealthy: int
    unknown: int
    suspect: int  # believed up, in an open failure episode (their own, or the node's)
    looking: bool  # a node episode is open: nothing heard from it since a silence began
    heard_ago: float  # seconds since any of its targets (or its witness) last answered; -1: never


class Inspection(msgspec.Struct, tag="inspection"):
    """The answer to an ``Inspect``."""

    id: int
    nodes: list[NodeCensus]
    suspects: list[str]  # at most the limit asked for


class Suspects(msgspec.Struct, tag="suspects"):
    """How many of a worker's targets, believed up, are in an open failure episode right now.

    Sent when the count changes (at most every 50 ms): the fail-safe needs to see a mass failure
    coming before the first of it is confirmed."""

    worker: int
    count: int


class Stats(msgspec.Struct, tag="stats", kw_only=True):
    """Periodic figures from one worker.  Counters are cumulative for the worker's lifetime."""

    worker: int
    pid: int
    # By probe kind (a target mixing kinds counts under "a+b"); a new kind needs no new field.
    targets: dict[str, int]
    health: dict[str, int] = {}  # by the health the probes believe: healthy, unhealthy, unknown
    probes: dict[str, int]
    failures: dict[str, int]
    in_flight: int
    local_errors: int
    skipped_probes: int  # not started because the worker fell a whole interval behind
    transitions: int
    looks: int = 0  # node episodes opened (each probed the node's other targets at once)
    witnesses: int = 0  # nodes with a witness address
    witnesses_unheard: int = 0  # of those, witnesses that never answered (not used until they do)
    latency_buckets: list[int]  # cumulative counts per LATENCY_BUCKETS bound, +Inf last
    latency_sum: float
    # Schedule lag over the last window: how late a probe started against its slot.
    window_seconds: float
    window_probes: int
    lag_p50: float
    lag_p99: float
    lag_max: float
    cpu_seconds: float
    rss_bytes: int


FromWorker = Hello | Transitions | Answers | Inspection | Suspects | Stats
