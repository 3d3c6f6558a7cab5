"""The write queue: every write ehc makes to objects it protects, batched, rate-limited, retried, and
coalesced per object: the latest write for an object wins.

A *write* is what a source wants written on one object (a pod's status conditions today): it has the
object's ``key`` and knows its own request (``send``).  The queue knows no kind of object.

Rules (DESIGN.md §1 "Patcher"):

- At most one request per object is in flight, and an object has at most one queued write: submitting
  a newer one replaces the queued one (reported ``"superseded"``), and an older write that failed
  while a newer one waits is not retried (also ``"superseded"``).  So an older write never lands
  after a newer one.
- Writes submitted within ``batch_window`` of the first one of a burst are released together, up to
  ``concurrency`` requests in flight, each request paying one token of a ``qps``/``burst`` bucket.
- Ejections first: a write that takes something out of service (``urgent``) is sent before any
  other write that is ready, so a mass failure's ejections never queue behind first values or
  recoveries for tokens or request slots.
- Level-triggered: a write stays wanted until it lands, is replaced, or is cancelled.  What
  ``ApiError.retryable`` calls retryable (no answer, timeouts, 408, 429, 5xx) is retried for as long
  as it is wanted, with the one ``Backoff`` (exponential, full jitter, capped), never sooner than the
  server's Retry-After.  A 429 or 503 with Retry-After also pauses all sending for that long: the
  server asked this client, not this object, to slow down.
- An outage is one fact, not one per object: after ``OUTAGE_AFTER`` retryable failures in a row the
  queue sends one write at a time, paced by the same backoff, so a dead API server gets a trickle
  instead of every queued write's retries and the QPS budget is still whole when it comes back; the
  first answer ends the outage and every queued write goes at once.  Outcomes: 404 is
  ``"not_found"`` (INFO), 409/422 ``"dropped"`` (WARNING; 409 is also a write whose UID precondition
  no longer holds), any other status ``"failed"`` (ERROR, with what to fix for 401/403).
- ``can_write()`` is asked immediately before each request; while it is False nothing is sent and
  nothing is dropped.

Every submitted write gets exactly one ``on_done(write, outcome, seconds_since_submit)`` call, except
those removed by ``cancel()`` or ``close()`` (the owner asked for that itself; a cancelled request
already in flight still reports ``"ok"`` if it landed, and is otherwise dropped silently).

``clock`` (monotonic seconds) drives the batching window, the backoff deadlines, the Retry-After pause
and the token bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from typing import Protocol

import msgspec
from kubernetes_asyncio.client import ApiClient

from ehc.kube.request import ApiError, Backoff

log = logging.getLogger(__name__)

OUTCOMES = ("ok", "not_found", "dropped", "failed", "superseded")
OUTAGE_AFTER = 3
"""Retryable failures in a row that make an outage: from then on one write at a time until one lands."""
_HINTS = {
    401: "; ehc's credentials were refused: check its service account token",
    403: "; ehc may not write this: grant its ServiceAccount the permission (the Helm chart and the "
    "kustomize base carry the exact rules)",
}
_HOLD_POLL = 0.05  # how often a held queue asks can_write() again (wake() makes it immediate)


class Write(Protocol):
    """What to write on one object; the queue keeps the latest per ``key``."""

    @property
    def key(self) -> str: ...

    @property
    def urgent(self) -> bool:
        """It takes something out of service: sent before every other write that is ready."""
        ...

    @property
    def summary(self) -> str:
        """What it writes, in a few words (for the status page)."""
        ...

    async def send(self, api: ApiClient, timeout: float) -> None:
        """Make the request; raise ``ApiError`` when it does not land."""


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0:
            raise ValueError("qps must be > 0")
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take a token and return 0, or return the seconds until one is available (taking nothing)."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Waiting(msgspec.Struct, frozen=True):
    """A write not yet landed, as the status page shows it."""

    key: str
    summary: str
    age: float  # seconds since it was submitted
    attempts: int
    sending: bool
    error: str  # why its last attempt failed ("" before any)


class _Item:
    __slots__ = ("attempts", "cancelled", "error", "ready_at", "seq", "submitted", "urgent", "write")

    def __init__(self, write: Write, submitted: float, ready_at: float, seq: int) -> None:
        self.write = write
        self.urgent = write.urgent
        self.submitted = submitted
        self.ready_at = ready_at  # not before: batching window, backoff
        self.seq = seq
        self.attempts = 0
        self.cancelled = False
        self.error = ""


class WriteQueue:
    """``submit()`` writes from anywhere on the loop; ``await run()`` once to send them."""

    def __init__(
        self,
        api: ApiClient,
        *,
        qps: float = 20.0,
        burst: int = 40,
        concurrency: int = 8,
        batch_window: float = 0.02,
        backoff: tuple[float, float] = (0.1, 1.0),
        can_write: Callable[[], bool] = lambda: True,
        on_done: Callable[[Write, str, float], None] | None = None,
        request_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._clock = clock
        self._bucket = TokenBucket(qps, burst, clock())
        self._api = api
        self.concurrency = concurrency
        self.batch_window = max(0.0, batch_window)
        self._backoff = Backoff(*backoff)  # by each write's own attempt count, or the outage's
        self.request_timeout = request_timeout
        self._can_write = can_write
        self._on_done = on_done
        self._pending: dict[str, _Item] = {}  # queued, at most one per object (the latest)
        self._inflight: dict[str, _Item] = {}  # being sent, at most one per object
        # (ready_at, seq, key) of queued writes, ejections apart; stale entries are skipped.
        self._urgent: list[tuple[float, int, str]] = []
        self._heap: list[tuple[float, int, str]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._seq = 0
        self._window_end = 0.0
        self._paused_until = 0.0  # a 429's Retry-After, or an outage's pacing, pauses all sending
        self.failures_in_a_row = 0  # retryable failures since the API server last answered
        self._landed: dict[str, float] = {}  # key -> when its latest write landed (until settled)
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.requests = 0
        self.retries = 0  # attempts that failed and were (or will be) tried again

    # -- owner's API ------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def state(self, key: str) -> str | None:
        """What is happening to ``key``'s write, for the status page (None: nothing queued or in flight)."""
        item = self._inflight.get(key) or self._pending.get(key)
        if item is None:
            return None
        sending = "sending" if self._inflight.get(key) is item else "queued"
        tried = f", {item.attempts} attempt(s) failed, the last: {item.error}" if item.error else ""
        return f"{sending} for {self._clock() - item.submitted:.1f}s{tried}"

    def waiting(self, limit: int) -> tuple[list[Waiting], int]:
        """The oldest ``limit`` writes queued or in flight (oldest first), and how many there are."""
        items = [*self._inflight.values(), *(i for k, i in self._pending.items() if k not in self._inflight)]
        now = self._clock()
        oldest = heapq.nsmallest(limit, items, key=lambda i: i.submitted)
        rows = []
        for i in oldest:
            key = i.write.key
            sending = self._inflight.get(key) is i
            rows.append(Waiting(key, i.write.summary, now - i.submitted, i.attempts, sending, i.error))
        return rows, len(items)

    def submit(self, w: Write) -> None:
        """Queue ``w``; a write still queued for the same object is replaced ("superseded")."""
        now = self._clock()
        if now >= self._window_end:  # open a batching window; later submissions join it
            self._window_end = now + self.batch_window
        ready = self._window_end
        key = w.key
        old = self._pending.get(key)
        if old is not None:
            ready = max(ready, old.ready_at)  # a newer write does not skip the object's backoff
            self._report(old, "superseded", now)
        self._seq += 1
        item = _Item(w, now, ready, self._seq)
        self._pending[key] = item
        self._push(item)
        self._wake.set()

    def cancel(self, key: str) -> None:
        """The object is gone: drop its queued write and do not retry its in-flight one. Quiet."""
        self._pending.pop(key, None)
        self._landed.pop(key, None)
        inflight = self._inflight.get(key)
        if inflight is not None:
            inflight.cancelled = True
        self._wake.set()

    def clear(self) -> int:
        """Drop every queued write, and retry none in flight (leadership lost); return how many were
        queued.  Writes submitted afterwards are queued as usual."""
        dropped = len(self._pending)
        self._pending.clear()
        self._heap.clear()
        self._urgent.clear()
        for item in self._inflight.values():
            item.cancelled = True
        return dropped

    def settled(self, key: str, within: float = 5.0) -> bool:
        """Nothing queued or in flight for ``key``, and nothing landed in the last ``within`` seconds (a
        watch may not show that write yet): a resync may compare desired with observed state."""
        if key in self._pending or key in self._inflight:
            return False
        landed = self._landed.get(key)
        if landed is None:
            return True
        if self._clock() - landed < within:
            return False
        del self._landed[key]
        return True

    def wake(self) -> None:
        """Re-check at once (e.g. ``can_write()`` just turned True) instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        """Send until cancelled; in-flight requests are cancelled with it."""
        try:
            while True:
                self._wake.clear()
                wait = self._dispatch(self._clock())
                if wait is None:
                    await self._wake.wait()
                else:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
        finally:
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    # -- dispatching ------------------------------------------------------------------------------
    def _head(self, heap: list[tuple[float, int, str]]) -> tuple[float, int, str] | None:
        """The heap's first entry that is still a queued write and not in flight (stale ones go)."""
        while heap:
            entry = heap[0]
            item = self._pending.get(entry[2])
            if item is None or item.seq != entry[1] or entry[2] in self._inflight:
                heapq.heappop(heap)  # superseded, cancelled, or pushed again when its request ends
                continue
            return entry
        return None

    def _dispatch(self, now: float) -> float | None:
        """Start every request that may start now, ejections first; return how long until something
        may change (None: nothing to do until woken by a submit or a finished request)."""
        while True:
            urgent, other = self._head(self._urgent), self._head(self._heap)
            if urgent is None and other is None:
                return None
            # The ejection that is ready, else whichever write is ready first.
            if urgent is not None and (other is None or urgent[0] <= max(now, other[0])):
                heap, (ready_at, _, key) = self._urgent, urgent
            else:
                heap, (ready_at, _, key) = self._heap, other  # type: ignore[misc]
            wait = max(ready_at, self._paused_until) - now
            if wait > 0:
                return wait
            if len(self._inflight) >= (1 if self.outage else self.concurrency):
                return None
            if not self._can_write():
                return _HOLD_POLL
            wait = self._bucket.take(now)
            if wait > 0:
                return wait
            heapq.heappop(heap)
            item = self._pending.pop(key)
            self._inflight[key] = item
            task = asyncio.create_task(self._send(item), name=f"ehc-patch {key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, item: _Item) -> None:
        key = item.write.key
        outcome: str | None = None
        retry_after: float | None = None
        pause_all = False
        detail = ""
        try:
            if not self._can_write():  # lost the lease between dispatch and now: hold it again
                self._requeue(item, self._clock(), 0.0, "write not allowed")
                return
            item.attempts += 1
            self.requests += 1
            await item.write.send(self._api, self.request_timeout)
            outcome = "ok"
        except ApiError as err:
            if err.status == 404:
                outcome = "not_found"
                log.info("%s is gone; dropping its write", key)
            elif err.status in (409, 422):
                outcome = "dropped"
                log.warning("write of %s rejected (%s); dropped", key, err)
            elif err.retryable:
                detail = str(err)
                retry_after = err.retry_after
                pause_all = err.status in (429, 503)
            else:
                outcome = "failed"
                hint = _HINTS.get(err.status, "")
                log.error("write of %s failed (%s)%s", key, err, hint)
        except asyncio.CancelledError:
            self._inflight.pop(key, None)
            raise
        except Exception as exc:  # an unexpected client error must not kill the queue
            log.warning("unexpected error writing %s", key, exc_info=True)
            detail = f"{type(exc).__name__}: {exc}"
        now = self._clock()
        if outcome is not None:
            self._answered(now)
            self._finish(item, outcome, now)
            return
        self.retries += 1
        self.failures_in_a_row += 1
        delay = self._backoff.delay(item.attempts - 1, retry_after)
        if pause_all and retry_after is not None:
            self._paused_until = max(self._paused_until, now + retry_after)
        if self.outage:
            if self.failures_in_a_row == OUTAGE_AFTER:
                log.warning(
                    "writes are failing (%d in a row, latest: %s); %d queued, retried for as long as they "
                    "are wanted, one at a time until the API server answers", self.failures_in_a_row, detail,
                    len(self._pending) + len(self._inflight),
                )  # fmt: skip
            pace = self._backoff.delay(self.failures_in_a_row - OUTAGE_AFTER, retry_after)
            self._paused_until = max(self._paused_until, now + pace)
        log.debug("write of %s: %s; retry in %.2fs (attempt %d)", key, detail, delay, item.attempts)
        self._requeue(item, now, delay, detail)

    @property
    def outage(self) -> bool:
        """Writes fail in a row: one at a time until one is answered."""
        return self.failures_in_a_row >= OUTAGE_AFTER

    def _answered(self, now: float) -> None:
        """The API server answered: an outage is over, and every queued write may go at once."""
        if self.outage:
            log.warning(
                "the API server answers again after %d failed writes in a row; sending the %d queued",
                self.failures_in_a_row, len(self._pending),
            )  # fmt: skip
            self._paused_until = 0.0
            self._heap, self._urgent = [], []
            for item in self._pending.values():
                item.ready_at = min(item.ready_at, now)
                self._push(item)
        self.failures_in_a_row = 0

    def _requeue(self, item: _Item, now: float, delay: float, why: str) -> None:
        """Put a not-yet-written write back, unless it was cancelled or a newer one is waiting."""
        key = item.write.key
        self._inflight.pop(key, None)
        item.error = why
        if item.cancelled:
            pass
        elif key in self._pending:
            self._report(item, "superseded", now)
        else:
            item.ready_at = now + delay
            self._pending[key] = item
            self._push(item)
        self._push_pending(key)
        self._wake.set()

    def _finish(self, item: _Item, outcome: str, now: float) -> None:
        key = item.write.key
        self._inflight.pop(key, None)
        if outcome == "ok":
            self._landed[key] = now
        if not item.cancelled or outcome == "ok":
            self._report(item, outcome, now)
        self._push_pending(key)
        self._wake.set()

    def _push(self, item: _Item) -> None:
        heapq.heappush(self._urgent if item.urgent else self._heap, (item.ready_at, item.seq, item.write.key))

    def _push_pending(self, key: str) -> None:
        nxt = self._pending.get(key)
        if nxt is not None:
            self._push(nxt)

    def _report(self, item: _Item, outcome: str, now: float) -> None:
        self.counts[outcome] += 1
        if self._on_done is None:
            return
        try:
            self._on_done(item.write, outcome, now - item.submitted)
        except Exception:
            log.exception("write queue on_done callback failed")
