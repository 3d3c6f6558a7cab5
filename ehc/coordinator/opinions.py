"""A second opinion before ejecting: the leader asks its live peers, and a peer can only veto.

Large failure detectors (SWIM's indirect probes) do not declare a member dead on one prober's word.
When a target falls into doubt on the leader (its failure episode opens, or its node's look goes
out), the leader asks every live peer about it at once, *while* its own confirmations run; each
peer probes it afresh (``ehc.coordinator.peers``).  When the leader's verdict is to eject:

- no live peer, or second opinions off: eject (``GO``);
- a peer saw it answer (UP) since the question: do not eject (``VETO``) — the leader's path to it is
  the likelier fault.  Counted, logged and said once per node (a suspected partition between the
  leader and that node); asked again every ``REASK_EVERY``, and ejected once no peer sees it alive;
- some peer has not answered and ``ASK_DEADLINE`` has not passed since the question: wait (``HOLD``);
- otherwise (every peer answered otherwise, or did not answer in time): eject.

So a peer that is down, slow or answers garbage delays an ejection by at most ``ASK_DEADLINE``
(which the question's head start mostly hides), and a mass failure is still the fail-safe's.  A
standby never ejects on its own: its ejections are held until it leads, and then asked about.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable

from ehc.coordinator.peers import PeerClient, PeerError
from ehc.wire.logs import Every
from ehc.wire.messages import Opinion

log = logging.getLogger(__name__)

ASK_WAIT = 0.15
"""How long a peer probes before it answers: a live node answers a connect in well under a millisecond."""
ASK_DEADLINE = 0.35
"""How long after a question an ejection waits for peers: their wait, a round trip, and slack."""
ASK_BATCH = 0.02
"""Doubts are gathered this long into one question per peer (at most 50 questions a second each)."""
REASK_EVERY = 0.5
"""A vetoed ejection is asked about again this often; a target doubted again sooner is not asked again."""
FRESH_FOR = 5.0
"""Answers older than this are stale: an ejection wanted later asks again."""
_SAY_EVERY = 30.0


class Ruling(enum.Enum):
    GO = "go"
    HOLD = "hold"
    VETO = "veto"


class _Case:
    """One question about one target: who has still to answer, and who saw it alive."""

    __slots__ = ("asked", "up", "waiting")

    def __init__(self, asked: float, peers: Iterable[str]) -> None:
        self.asked = asked
        self.waiting = set(peers)
        self.up: set[str] = set()


class SecondOpinion:
    """Asks peers about targets in doubt and rules on ejections (see the module docstring)."""

    def __init__(
        self,
        *,
        peers: Callable[[], dict[str, str]],
        leading: Callable[[], bool],
        node_of: Callable[[str], str],
        on_settled: Callable[[list[str]], None],
        on_veto: Callable[[str, str, list[str], bool], None],
        client: PeerClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_settled(keys)``: held ejections that can be ruled on again.  ``on_veto(key, node, peers,
        first)``: an ejection vetoed; ``first`` when it opens a suspected partition of its node."""
        self._peers = peers
        self._leading = leading
        self._node_of = node_of
        self._on_settled = on_settled
        self._on_veto = on_veto
        self._client = client or PeerClient()
        self._clock = clock
        self._cases: dict[str, _Case] = {}
        self._held: set[str] = set()  # ejections waiting for answers
        self._vetoed: dict[str, str] = {}  # key -> node, while a peer sees it alive
        self._to_ask: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._saying: dict[str, Every] = {}  # per peer: its failures said once per _SAY_EVERY
        self.vetoes = 0  # ejections vetoed (once per target per suspected partition)
        self.asked: dict[str, int] = {"answered": 0, "failed": 0}  # questions to peers, by outcome

    @property
    def partitions(self) -> int:
        """Nodes (or lone targets) some of whose ejections a peer vetoes right now."""
        return len(set(self._vetoed.values()))

    # ---- doubts → questions -----------------------------------------------------------------------

    def doubt(self, keys: Iterable[str]) -> None:
        """Targets fell into doubt on the leader: ask about them soon (gathered for ``ASK_BATCH``)."""
        if not self._leading():
            return
        now = self._clock()
        # A target doubts again as its confirmations fail: the question already out answers for them.
        self._to_ask.update(
            k for k in keys if (c := self._cases.get(k)) is None or now - c.asked >= REASK_EVERY
        )
        self._ask_soon(ASK_BATCH)

    def _ask_soon(self, delay: float) -> None:
        """Ask about everything wanted in ``delay`` seconds, or sooner if already due sooner."""
        if self._to_ask and (self._flush is None or delay == 0):
            if self._flush is not None:
                self._flush.cancel()
            self._flush = asyncio.get_running_loop().call_later(delay, self._ask_now)

    def _ask_now(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self._flush = None
        keys, self._to_ask = sorted(self._to_ask), set()
        peers = self._peers()
        if not keys or not peers:
            return
        now = self._clock()
        for key in keys:
            self._cases[key] = _Case(now, peers)
        for identity, address in peers.items():
            task = asyncio.get_running_loop().create_task(self._ask(identity, address, keys, now))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        asyncio.get_running_loop().call_later(ASK_DEADLINE, self._settle, keys)

    async def _ask(self, identity: str, address: str, keys: list[str], asked: float) -> None:
        try:
            opinions = await self._client.ask(address, keys, ASK_WAIT, ASK_DEADLINE)
            self.asked["answered"] += 1
        except PeerError as exc:
            self.asked["failed"] += 1
            self._say(
                identity, f"peer {identity} ({address}) gave no opinion: {exc}; ejections go ahead without it"
            )
            opinions = {}
        for key in keys:
            case = self._cases.get(key)
            if case is None or case.asked != asked:
                continue  # answered a question since superseded
            case.waiting.discard(identity)
            if opinions.get(key) == Opinion.UP:
                case.up.add(identity)
        self._settle(keys)

    def _settle(self, keys: list[str]) -> None:
        """Held ejections among ``keys`` that may be ruled on now."""
        now = self._clock()
        ready = [
            k for k in keys
            if k in self._held and ((c := self._cases.get(k)) is None or c.up or not c.waiting
                                    or now >= c.asked + ASK_DEADLINE)
        ]  # fmt: skip
        if ready:
            self._held.difference_update(ready)
            self._on_settled(ready)

    # ---- ejections ----------------------------------------------------------------------------------

    def holding(self, key: str) -> str:
        """Why ``key``'s ejection is held by the second opinion ("" : it is not), for the status page."""
        if key in self._vetoed:
            return "a peer sees it alive: a suspected partition between the leader and it"
        if key in self._held:
            return "asking peers for a second opinion"
        return ""

    def ruling(self, key: str) -> Ruling:
        """May ``key`` be ejected now?"""
        if not self._leading():
            return Ruling.HOLD  # a standby's verdicts wait until it leads, and are asked about then
        peers = self._peers()
        if not peers:
            self._end_veto(key, "no peer left to ask; its ejections go ahead")
            return Ruling.GO
        now = self._clock()
        case = self._cases.get(key)
        if case is None or now - case.asked > FRESH_FOR:
            self._held.add(key)
            self._to_ask.add(key)
            self._ask_soon(0)  # with every other ruling of this turn of the loop: one question per peer
            return Ruling.HOLD
        if case.up:
            node = self._node_of(key) or key
            first = node not in self._vetoed.values()
            if key not in self._vetoed:
                self.vetoes += 1
                self._vetoed[key] = node
                self._on_veto(key, node, sorted(case.up), first)
            return Ruling.VETO
        if case.waiting and now < case.asked + ASK_DEADLINE:
            self._held.add(key)
            return Ruling.HOLD
        self._end_veto(key, "no peer sees it alive any more; its ejections go ahead")
        return Ruling.GO

    def _end_veto(self, key: str, why: str, level: int = logging.WARNING) -> None:
        """``key`` is no longer vetoed; said when it was the last of its node."""
        node = self._vetoed.pop(key, None)
        if node is not None and node not in self._vetoed.values():
            log.log(level, "suspected partition to %s over: %s", node, why)

    async def reask(self) -> None:
        """Ask again about vetoed ejections every ``REASK_EVERY``, until cancelled (level-triggered: a
        veto lasts only as long as a peer keeps seeing the target alive)."""
        while True:
            await asyncio.sleep(REASK_EVERY)
            if self._vetoed and self._leading():
                self._held.update(self._vetoed)
                self._to_ask.update(self._vetoed)
                self._ask_now()

    def clear(self, key: str) -> None:
        """The target recovered or is gone: nothing about it is pending any more."""
        self._cases.pop(key, None)
        self._held.discard(key)
        self._to_ask.discard(key)
        self._end_veto(key, "its targets answer the leader again", logging.INFO)

    def reset(self) -> None:
        """A new term: nothing asked or vetoed in an earlier one counts."""
        self._cases.clear()
        self._held.clear()
        self._to_ask.clear()
        self._vetoed.clear()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.close()

    def _say(self, about: str, what: str) -> None:
        saying = self._saying.setdefault(about, Every(_SAY_EVERY, self._clock))
        if (more := saying.due()) is not None:
            log.warning("%s%s", what, more)
