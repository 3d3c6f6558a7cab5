"""Leader election on a ``coordination.k8s.io/v1`` Lease, following client-go's ``leaderelection``.

- A candidate takes the lease when it does not exist (create; 409 AlreadyExists: someone else won),
  when its holder is empty (released), when it already names us, or when it has not *changed* for
  ``leaseDurationSeconds`` as measured by our own monotonic clock since we first observed that version
  of the record.  The holder's clock and the ``renewTime`` it wrote are never compared with ours.
- Every update carries the ``resourceVersion`` it was based on (409 Conflict: we lost the race).
- The leader renews every ``retry_period``.  ``is_leader()`` is True only while the last successful
  renewal was *sent* less than ``renew_deadline`` ago, checked at call time, so a leader whose renew
  loop stalls stops writing by itself; the renew loop steps down at the same moment and goes back to
  acquiring.  Since ``renew_deadline < lease_duration``, the old leader has stopped writing before any
  other candidate can consider the lease expired.
- ``release()`` (SIGTERM) stops leading first, then writes an empty holder with
  ``leaseDurationSeconds: 1`` so a standby takes over at its next retry.
- A leader that cannot do its job (the work ``on_started_leading`` returned ends, e.g. its workers do
  not start) hands the lease over the same way, says why, and backs off before campaigning again:
  holding a lease while protecting nothing would keep the standby from taking over.
- Failures are visible: each failed lease request is logged at WARNING with its status and reason (at
  most one line per ``_SAY_EVERY`` seconds, with a count of the rest), with what to fix for 401/403;
  ``errors`` counts them and ``last_success`` says when a lease request last succeeded.

Requests go through ``ehc.kube.request``: the lease is read and written as plain JSON, so the
MicroTime fields keep exactly the format the API server uses.

Failed attempts are retried every ``retry_period`` (× 1.0–1.2 jitter while acquiring; sooner when the
observed lease expires before that, so a standby replaces a dead leader at the expiry), client-go's
cadence, not the exponential ``Backoff``: a standby must look at the lease at a steady pace to take
over soon after it expires, and a leader must retry its renewal before the renew deadline passes;
a backoff that grows would break both bounds.  One small request per ``retry_period`` per candidate
is no load worth backing off from.

``clock`` (monotonic seconds) is the one time source of the election's logic: lease validity, the
renew deadline and ``is_leader()``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from kubernetes_asyncio.client import ApiClient

from ehc.kube.request import ApiError, Backoff, api_path, request
from ehc.wire.logs import Every

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None] | None]
_SAY_EVERY = 30.0
_GIVE_UP_BACKOFF = (1.0, 60.0)  # before campaigning again after a term whose work failed
_STABLE_TERM = 60.0  # a term that lasted this long resets that backoff
_PAST_EXPIRY = 0.005  # looked at this long after the observed lease's expiry, it has surely expired
_HINTS = {
    401: "ehc's credentials were refused: check its service account token",
    403: "ehc may not use this Lease: its Role in the Lease's namespace must grant leases get, create "
    "and update (the Helm chart and the kustomize base carry it)",
}
_Record = tuple[str, int | None, str | None, str | None, int]


def micro_time(t: float | None = None) -> str:
    """A Kubernetes MicroTime: RFC 3339 UTC with microseconds, e.g. ``2026-11-21T01:02:03.123456Z``."""
    dt = datetime.now(UTC) if t is None else datetime.fromtimestamp(t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _noop() -> None:
    return None


def _spec(obj: dict[str, Any] | None) -> dict[str, Any]:
    spec = (obj or {}).get("spec")
    return spec if isinstance(spec, dict) else {}


def _holder(obj: dict[str, Any] | None) -> str:
    return _spec(obj).get("holderIdentity") or ""


def _record(obj: dict[str, Any]) -> _Record:
    s = _spec(obj)
    return (
        s.get("holderIdentity") or "",
        s.get("leaseDurationSeconds"),
        s.get("acquireTime"),
        s.get("renewTime"),
        s.get("leaseTransitions") or 0,
    )


class LeaderElector:
    """Campaigns for the lease ``namespace/name`` as ``identity``; ``await run()`` until cancelled."""

    def __init__(
        self,
        api: ApiClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 4.0,
        renew_deadline: float = 2.0,
        retry_period: float = 0.5,
        on_started_leading: Callback = _noop,
        on_stopped_leading: Callback = _noop,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError(
                "leader election needs 0 < retry_period < renew_deadline < lease_duration, got "
                f"{retry_period} / {renew_deadline} / {lease_duration}"
            )
        self._api = api
        self._clock = clock
        self._collection = api_path("coordination.k8s.io", "v1", "leases", namespace=namespace)
        self._path = api_path("coordination.k8s.io", "v1", "leases", namespace=namespace, name=name)
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._obj: dict[str, Any] | None = None  # the lease as last read or written by us
        self._observed: _Record | None = None
        self._observed_at = 0.0  # monotonic time we first saw self._observed
        self._leading = False
        self._last_renew = -math.inf  # monotonic time the last successful write was sent
        self._lost = False  # set when a renewal found another holder
        self._released = False
        self._run_task: asyncio.Task[None] | None = None
        self._leading_task: asyncio.Task[Any] | None = None
        self._give_up_backoff = Backoff(*_GIVE_UP_BACKOFF)
        self._saying = Every(_SAY_EVERY, clock)  # lease failures: one line per _SAY_EVERY
        self.observed_holder = ""  # the holder named by the lease as last seen (for logs, /readyz)
        self.previous_holder = ""  # the one before it (whom a new leader took over from)
        self.errors = 0  # failed lease requests
        self.last_error = ""
        self.last_success = -math.inf  # clock() of the last lease request that succeeded
        self.give_ups = 0  # terms ended because the leader's work failed

    # -- public -----------------------------------------------------------------------------------
    def is_leader(self) -> bool:
        return self._leading and self._clock() - self._last_renew < self.renew_deadline

    @property
    def transitions(self) -> int:
        return _spec(self._obj).get("leaseTransitions") or 0

    async def run(self) -> None:
        """Acquire, lead while renewing, step down when a renewal misses the deadline, acquire again.
        Returns after ``release()``; cancelling it steps down without releasing the lease."""
        self._run_task = asyncio.current_task()
        try:
            while not self._released:
                await self._acquire()
                await self._start_leading()
                started = self._clock()
                await self._renew()
                failure = self._work_failure()
                if failure is None:
                    await self._stop_leading(self._why_lost())
                    continue
                await self._give_up(failure, self._clock() - started)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._released and task is not None and task.uncancel() == 0:
                return  # cancelled by release(), not by the owner: a normal end
            raise
        finally:
            self._run_task = None
            await self._stop_leading("stopped")

    async def release(self) -> None:
        """Stop leading, then hand the lease over at once (empty holder, 1 s duration). Idempotent;
        ``run()`` returns and this elector does not campaign again."""
        self._released = True
        task = self._run_task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            await asyncio.wait([task])
        await self._stop_leading("releasing the lease")
        await self._hand_over()

    # -- giving up --------------------------------------------------------------------------------
    def _work_failure(self) -> str | None:
        """Why the leader's work ended (None while it runs, or when there is none)."""
        task = self._leading_task
        if task is None or not task.done():
            return None
        if task.cancelled():
            return "it was cancelled"
        exc = task.exception()
        return f"{type(exc).__name__}: {exc}" if exc else "it ended"

    async def _give_up(self, failure: str, term: float) -> None:
        """The leader cannot do its job: hand the lease over now, then back off before campaigning."""
        self.give_ups += 1
        if term >= _STABLE_TERM:
            self._give_up_backoff.reset()
        delay = self._give_up_backoff.next() + self.retry_period
        log.error(
            "%s cannot lead (%s): giving lease %s/%s up so another replica can, campaigning again in %.1fs",
            self.identity, failure, self.namespace, self.name, delay,
        )  # fmt: skip
        await self._stop_leading(f"its work failed: {failure}")
        await self._hand_over()
        await asyncio.sleep(delay)

    async def _hand_over(self) -> None:
        """Write an empty holder (1 s duration) if the lease still names us: a standby takes over at once."""
        timeout = self.renew_deadline
        for _ in range(3):
            if self._obj is None or _holder(self._obj) != self.identity:
                return
            try:
                self._obj = await self._send("PUT", self._updated(self._obj, release=True), timeout)
                log.info("released lease %s/%s", self.namespace, self.name)
                return
            except Exception as exc:  # best effort: never raise
                if not (isinstance(exc, ApiError) and exc.status == 409):
                    log.warning("could not release lease %s/%s (%s)", self.namespace, self.name, exc)
                    return
            try:  # someone wrote it since we last did: read it and look again
                self._obj = await self._send("GET", None, timeout)
            except Exception:
                return

    def _why_lost(self) -> str:
        if self._lost:
            return f"the lease is now held by {self.observed_holder or 'someone else'}"
        since = self._clock() - self._last_renew
        why = f"the lease was not renewed within the renew deadline ({since:.1f}s since the last renewal"
        return why + (f"; last error: {self.last_error})" if self.last_error else ")")

    # -- campaign ---------------------------------------------------------------------------------
    async def _acquire(self) -> None:
        while True:
            if await self._attempt(self.renew_deadline):
                return
            await asyncio.sleep(self._until_next_try())

    def _until_next_try(self) -> float:
        """client-go's jittered retry period, or less: until the observed lease expires.  A holder that
        renews moves its expiry a lease duration ahead every renewal, so this changes nothing while it
        lives; once it stops, the lease is taken the moment it expires, not up to a retry period later."""
        wait = self.retry_period * random.uniform(1.0, 1.2)
        if self._observed is not None and self._observed[0] and self._observed[0] != self.identity:
            expires = self._observed_at + (self._observed[1] or self.lease_duration) - self._clock()
            wait = min(wait, max(0.0, expires) + _PAST_EXPIRY)
        return wait

    async def _renew(self) -> None:
        """Renew every retry_period; return once the renew deadline passed without success."""
        while True:
            await asyncio.sleep(self.retry_period)
            while True:
                deadline = self._last_renew + self.renew_deadline
                remaining = deadline - self._clock()
                if remaining <= 0 or self._lost or self._work_failure() is not None:
                    return
                if await self._attempt(remaining):
                    break
                if self._lost:
                    return
                await asyncio.sleep(min(self.retry_period, max(0.0, deadline - self._clock())))

    async def _attempt(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await self._try_acquire_or_renew(timeout)
        except TimeoutError:
            self._failed(f"no answer within {timeout:.1f}s")
        except ApiError as exc:
            self._failed(str(exc), _HINTS.get(exc.status, ""))
        except Exception as exc:
            log.warning("lease %s/%s: unexpected error", self.namespace, self.name, exc_info=True)
            self._failed(f"{type(exc).__name__}: {exc}")
        return False

    def _failed(self, what: str, hint: str = "") -> None:
        """Count a failed lease request and say so, at most once per ``_SAY_EVERY`` seconds."""
        self.errors += 1
        self.last_error = what
        if (more := self._saying.due()) is not None:
            log.warning(
                "lease %s/%s: %s%s%s", self.namespace, self.name, what, f"; {hint}" if hint else "", more
            )

    async def _try_acquire_or_renew(self, timeout: float) -> bool:
        """One round of client-go's tryAcquireOrRenew; an ``ApiError`` other than the 404 and 409
        it expects means this round failed."""
        sent = self._clock()
        if self._leading and self._obj is not None:  # fast path: update what we wrote last time
            try:
                return self._won(await self._send("PUT", self._updated(self._obj), timeout), sent)
            except ApiError as exc:
                if exc.status != 409:
                    raise
            sent = self._clock()  # someone else wrote it: read it and decide again
        try:
            got = await self._send("GET", None, timeout)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return await self._create(sent, timeout)
        self._observe(got)
        holder = _holder(got)
        if holder and holder != self.identity:
            if self._leading:
                log.warning("lease %s/%s is now held by %s", self.namespace, self.name, holder)
                self._lost = True
                return False
            if self._lease_valid():
                return False
            log.info("lease %s/%s held by %s has expired", self.namespace, self.name, holder)
        renewed = self._updated(got, new_holder=holder != self.identity)
        return self._won(await self._send("PUT", renewed, timeout), sent)

    async def _create(self, sent: float, timeout: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {},
        }
        body = self._updated(body, new_holder=True)
        body["spec"]["leaseTransitions"] = 0
        try:
            return self._won(await self._send("POST", body, timeout), sent)
        except ApiError as exc:
            if exc.status != 409:
                raise
            log.debug("lease %s/%s was created by someone else", self.namespace, self.name)
            return False

    def _won(self, obj: dict[str, Any], sent: float) -> bool:
        self._obj = obj
        self._observe(obj, sent)
        self._last_renew = sent
        return True

    def _observe(self, obj: dict[str, Any], at: float | None = None) -> None:
        self._obj = obj
        record = _record(obj)
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock() if at is None else at
        if record[0] != self.observed_holder:
            self.previous_holder, self.observed_holder = self.observed_holder, record[0]
            log.info("lease %s/%s: holder is now %r", self.namespace, self.name, record[0])

    def _lease_valid(self) -> bool:
        """Whether the observed record is still within its duration, by our clock since we saw it."""
        if self._observed is None:
            return False
        duration = self._observed[1] or self.lease_duration
        return self._observed_at + duration > self._clock()

    def _updated(
        self, obj: dict[str, Any], *, new_holder: bool = False, release: bool = False
    ) -> dict[str, Any]:
        """A copy of ``obj`` (keeping its resourceVersion) naming us as holder, renewed now."""
        out = dict(obj)
        spec = dict(_spec(obj))
        now = micro_time()
        if release:
            spec.pop("holderIdentity", None)
            spec["leaseDurationSeconds"] = 1
            spec["acquireTime"] = now
        else:
            spec["holderIdentity"] = self.identity
            spec["leaseDurationSeconds"] = math.ceil(self.lease_duration)
            if new_holder:
                spec["acquireTime"] = now
                spec["leaseTransitions"] = (spec.get("leaseTransitions") or 0) + 1
        spec["renewTime"] = now
        out["spec"] = spec
        return out

    # -- leading ----------------------------------------------------------------------------------
    async def _start_leading(self) -> None:
        self._leading = True
        self._lost = False
        log.info("%s became the leader (lease %s/%s)", self.identity, self.namespace, self.name)
        try:
            result = self._on_started()
            if inspect.isawaitable(result):  # long work: runs as a task, cancelled on stepping down
                self._leading_task = asyncio.ensure_future(result)
        except Exception:
            log.exception("on_started_leading failed")

    async def _stop_leading(self, why: str) -> None:
        if not self._leading:
            return
        self._leading = False
        log.warning("%s stopped leading: %s", self.identity, why)
        task, self._leading_task = self._leading_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        try:
            result = self._on_stopped()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("on_stopped_leading failed")

    # -- HTTP -------------------------------------------------------------------------------------
    async def _send(self, method: str, body: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
        """GET or PUT the lease, or POST it to the collection; the lease as the server returned it."""
        path = self._collection if method == "POST" else self._path
        try:
            data = await request(self._api, method, path, body=body, timeout=timeout)
        except ApiError as exc:
            if exc.status in (404, 409):  # answers the election expects: the lease is readable
                self.last_success = self._clock()
            raise
        self.last_success = self._clock()
        return msgspec.json.decode(data, type=dict[str, Any])
