"""The peer endpoint: replicas ask each other what their own probes say of targets.

``POST /v1/opinions`` with ``{"keys": [...], "wait": seconds}`` answers
``{"identity": ..., "opinions": {key: "up" | "down" | "silent" | "unknown"}}``: every key this replica
probes is probed at once, and judged only on attempts started after the question (``WorkerPool.ask``);
a key it does not probe is ``unknown``.  It is served on its own port (``EHC_PEER_ADDRESS``), never
next to ``/metrics``.

**Bounded.**  A body over ``MAX_BODY`` bytes, more than ``MAX_KEYS`` keys or a wait outside
(0, ``MAX_WAIT``] is refused with 4xx and a reason; more than ``RATE`` questions a second (``BURST``
at once) or ``MAX_IN_FLIGHT`` open questions answer 429 (a leader gathers its doubts into at most 50
questions a second).  So a question costs at most one extra
attempt on targets this replica already probes, at a bounded rate.

**Safe by direction.**  An answer can only veto an ejection (``ehc.coordinator.opinions``); a caller
who reaches this port can at most make ehc probe what it probes anyway, and a hostile *peer* (one that
can write member Leases in ehc's namespace) can at most delay ejections, never cause one.  The chart's
NetworkPolicy admits only ehc's own pods to this port.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
from aiohttp import web

from ehc.coordinator.http import listen
from ehc.kube.writes import TokenBucket
from ehc.wire.messages import Opinion

log = logging.getLogger(__name__)

PATH = "/v1/opinions"
MAX_BODY = 1024 * 1024
MAX_KEYS = 10_000
MAX_WAIT = 2.0
RATE = 100.0
BURST = 200
MAX_IN_FLIGHT = 16
_NAMES = {o: o.name.lower() for o in Opinion}
_BY_NAME = {name: o for o, name in _NAMES.items()}

Ask = Callable[[list[str], float], Awaitable[dict[str, Opinion]]]


class Question(msgspec.Struct, forbid_unknown_fields=True):
    keys: list[str]
    wait: float


class Reply(msgspec.Struct):
    identity: str
    opinions: dict[str, str]


class PeerError(Exception):
    """A peer gave no usable answer: unreachable, too slow, refused, or garbage."""


class PeerServer:
    """Answers peers' questions with ``ask``."""

    def __init__(self, identity: str, ask: Ask) -> None:
        self.identity = identity
        self._ask = ask
        self._bucket = TokenBucket(RATE, BURST, time.monotonic())
        self._in_flight = 0
        self._runner: web.AppRunner | None = None
        self.served: dict[str, int] = {"answered": 0, "refused": 0, "throttled": 0}

    async def start(self, address: str) -> None:
        """Listen on ``HOST:PORT`` (``:PORT``: every address).  Raises OSError when it cannot."""
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes([web.post(PATH, self._handle)])
        self._runner = await listen(app, address)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _refuse(self, status: int, why: str) -> web.Response:
        self.served["throttled" if status == 429 else "refused"] += 1
        return web.Response(status=status, text=why + "\n")

    async def _handle(self, request: web.Request) -> web.Response:
        if self._in_flight >= MAX_IN_FLIGHT or self._bucket.take(time.monotonic()) > 0:
            return self._refuse(429, "too many questions")
        try:
            q = msgspec.json.decode(await request.read(), type=Question)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, f"a question is at most {MAX_BODY} bytes")
        except msgspec.DecodeError as exc:
            return self._refuse(400, f"not a question: {exc}")
        if len(q.keys) > MAX_KEYS or not (0 < q.wait <= MAX_WAIT and math.isfinite(q.wait)):
            return self._refuse(400, f"at most {MAX_KEYS} keys and a wait in (0, {MAX_WAIT}] seconds")
        self._in_flight += 1
        try:
            opinions = await self._ask(q.keys, q.wait)
        finally:
            self._in_flight -= 1
        self.served["answered"] += 1
        names = {k: _NAMES[opinions.get(k, Opinion.UNKNOWN)] for k in q.keys}
        return web.Response(
            body=msgspec.json.encode(Reply(self.identity, names)), content_type="application/json"
        )


class PeerClient:
    """Asks peers; one HTTP session for all of them."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def ask(self, address: str, keys: list[str], wait: float, timeout: float) -> dict[str, Opinion]:
        """The peer's opinion of each key (UNKNOWN for any it left out).  Raises PeerError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), raise_for_status=False
            )
        body = msgspec.json.encode(Question(keys, wait))
        try:
            async with (
                asyncio.timeout(timeout),
                self._session.post(
                    f"http://{address}{PATH}", data=body, headers={"Content-Type": "application/json"}
                ) as resp,
            ):
                data = await resp.content.read(MAX_BODY + 1)
                if resp.status != 200:
                    raise PeerError(f"HTTP {resp.status}: {data[:120]!r}")
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerError(f"{type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise PeerError(f"no answer within {timeout * 1000:.0f} ms") from None
        try:
            reply = msgspec.json.decode(data, type=Reply)
        except msgspec.DecodeError as exc:
            raise PeerError(f"garbage answer: {exc}") from None
        return {k: _BY_NAME.get(reply.opinions.get(k, ""), Opinion.UNKNOWN) for k in keys}

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
