"""The pod watcher: list + watch with resourceVersion, bookmarks, relist on 410, reconnect with backoff.

The HTTP requests go through the real kubernetes_asyncio client (auth, TLS, server URL come from the
``ApiClient``), but with ``_preload_content=False``: the raw JSON is decoded straight into the lean
``msgspec`` structs of ``ehc.kube.model`` and no generated model object is ever built.

Life cycle (``PodWatcher.run``)::

    list (paginated) ──on_page…, on_snapshot──▶ watch from the list's resourceVersion ──on_event──▶ …
      ▲                                 │ server timeout / clean end: watch again from the last version
      └──────── 410 (ERROR event or HTTP) ┘ other errors, garbage: back off, watch again from the last version

A snapshot is authoritative: the consumer drops whatever it holds that the snapshot lacks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
from kubernetes_asyncio import client

from ehc.kube.model import (
    Pod,
    bookmark_decoder,
    pod_decoder,
    pod_list_decoder,
    status_decoder,
    watch_event_decoder,
)

log = logging.getLogger(__name__)

POD_EVENTS = frozenset({"ADDED", "MODIFIED", "DELETED"})
MAX_LINE = 64 * 1024 * 1024  # a pod is at most ~1.5 MiB of JSON; anything near this is not an event
MAX_RETRY_AFTER = 300.0  # honour the server's Retry-After, but never stall for longer than this
EXCERPT = 120  # bytes of a garbage line quoted in the log
QUICK_END = 1.0  # a watch that ends cleanly this fast with nothing in it is retried with backoff


def excerpt(data: bytes, size: int = EXCERPT) -> str:
    text = repr(bytes(data[:size]))
    return text + (f" … ({len(data)} bytes)" if len(data) > size else "")


class WatchFailure(Exception):
    """A request or stream failure retried with backoff (from the last resourceVersion)."""

    retry_after: float | None = None


class HttpError(WatchFailure):
    """A non-2xx answer to a list or watch request."""

    def __init__(self, status: int, body: bytes, retry_after: float | None) -> None:
        self.status = status
        self.retry_after = retry_after
        try:
            st = status_decoder.decode(body)
            detail = f"{st.reason or 'error'}: {st.message}" if st.message or st.reason else excerpt(body)
        except msgspec.DecodeError:
            detail = excerpt(body)
        super().__init__(f"HTTP {status} {detail}")


class ErrorEvent(WatchFailure):
    """A watch ERROR event other than 410."""


class Expired(Exception):
    """410 Gone/Expired: the resourceVersion is no longer served; a relist is needed."""


class GarbageLine(Exception):
    """A line of the watch stream that is not a valid watch event."""

    def __init__(self, why: str, line: bytes) -> None:
        super().__init__(why)
        self.why = why
        self.line = line


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by the API server and is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class PodWatcher:
    """Keeps a consumer in sync with the pods of a cluster (or of one namespace).

    ``on_page(pods)`` receives each page of every (re)list as it arrives, and ``on_snapshot(keys)`` the
    keys of the whole list once it is complete: pods missing from it are gone.  Pages are handed over
    one by one, not gathered, so a list of 20,000 pods never holds 20,000 decoded pods at once (they
    would pin their memory long after).  ``on_event(type, pod)`` receives ADDED / MODIFIED / DELETED in
    order.  All are called on the loop and must not block; an exception they raise is logged and
    counted, never fatal.

    Counters for metrics: ``lists`` (successful full lists), ``pages`` (list pages fetched), ``relists``
    (lists forced by 410), ``watches`` (watch requests opened), ``reconnects`` (retries after a failure
    of any kind: HTTP error, dropped connection, timeout, ERROR event, garbage line), ``garbage_lines``,
    ``events``, ``bookmarks``, ``callback_errors``; ``last_error`` says what went wrong most recently.
    ``synced`` turns True with the first snapshot (even if a callback raised) and stays True.
    """

    def __init__(
        self,
        api: client.ApiClient,
        *,
        on_page: Callable[[list[Pod]], None],
        on_snapshot: Callable[[set[str]], None],
        on_event: Callable[[str, Pod], None],
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        backoff: tuple[float, float] = (0.2, 10.0),
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        if watch_timeout < 1:
            raise ValueError(f"watch_timeout must be at least 1 second, not {watch_timeout}")
        self._core = client.CoreV1Api(api)
        self.on_page = on_page
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.page_size = page_size
        self.backoff_base, self.backoff_cap = backoff
        self.watch_timeout = watch_timeout
        self.request_timeout = request_timeout

        self.synced = False
        self.resource_version = ""
        self.lists = 0
        self.pages = 0
        self.relists = 0
        self.watches = 0
        self.reconnects = 0
        self.garbage_lines = 0
        self.events = 0
        self.bookmarks = 0
        self.callback_errors = 0
        self.last_error: str | None = None

        self._synced = asyncio.Event()
        self._need_list = True
        self._attempt = 0  # consecutive failures without progress (drives the backoff)
        self._progressed = False  # the current watch connection delivered a valid line
        self._rng = random.Random()

    # -- public -----------------------------------------------------------------------------------
    async def wait_synced(self) -> None:
        """Return once the first snapshot has been delivered."""
        await self._synced.wait()

    async def run(self) -> None:
        """List, then watch, forever; cancel the task to stop (the open response is closed at once)."""
        self._need_list = True
        while True:
            try:
                if self._need_list:
                    await self._list()
                    self._need_list = False
                loop = asyncio.get_running_loop()
                started = loop.time()
                await self._watch()
                # A server-side timeout or a clean end of the stream: resume from where we are.
                if not self._progressed and loop.time() - started < QUICK_END:
                    await self._pause("pod watch ended at once without any event", None)
                else:
                    log.debug(
                        "pod watch ended cleanly; resuming from resourceVersion %s", self.resource_version
                    )
            except asyncio.CancelledError:
                raise
            except Expired as exc:
                self.relists += 1
                self._need_list = True
                self.last_error = f"410: {exc}"
                log.warning(
                    "pod watch: resourceVersion %s expired (%s); relisting", self.resource_version, exc
                )
                if not self._progressed:  # a relist that expires again at once must not spin
                    await self._pause(None, None, count=False)
            except GarbageLine as exc:
                self.garbage_lines += 1
                self.last_error = f"garbage line: {exc.why}"
                log.error(
                    "pod watch: garbage line in the stream (%s): %s; restarting the watch from resourceVersion %s",
                    exc.why, excerpt(exc.line), self.resource_version,
                )  # fmt: skip
                await self._pause(None, None)
            except Exception as exc:
                what = "list" if self._need_list else "watch"
                retry_after = exc.retry_after if isinstance(exc, WatchFailure) else None
                if isinstance(exc, (WatchFailure, aiohttp.ClientError, OSError, TimeoutError)):
                    await self._pause(f"pod {what} failed: {describe(exc)}", retry_after)
                else:  # a bug or an unforeseen error: keep the traceback, keep going
                    log.exception("pod watch: unexpected error during the %s", what)
                    await self._pause(None, None)

    # -- internals --------------------------------------------------------------------------------
    def _next_delay(self, retry_after: float | None) -> float:
        """Exponential backoff with full jitter; at least the server's Retry-After when it gave one."""
        ceiling = min(self.backoff_cap, self.backoff_base * (2 ** min(self._attempt, 30)))
        self._attempt += 1
        delay = self._rng.uniform(0.0, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    async def _pause(self, what: str | None, retry_after: float | None, *, count: bool = True) -> None:
        """Back off before the next attempt; ``what`` is logged at WARNING (None: already logged)."""
        if count:
            self.reconnects += 1
        delay = self._next_delay(retry_after)
        if what is not None:
            self.last_error = what
            where = "with a new list" if self._need_list else f"from resourceVersion {self.resource_version}"
            honour = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
            log.warning("%s; retrying in %.2fs%s %s", what, delay, honour, where)
        await asyncio.sleep(delay)

    def _request(self, **kwargs: Any) -> Any:
        for key in ("label_selector", "field_selector"):
            value = getattr(self, key)
            if value:
                kwargs[key] = value
        if self.namespace:
            return self._core.list_namespaced_pod(self.namespace, _preload_content=False, **kwargs)
        return self._core.list_pod_for_all_namespaces(_preload_content=False, **kwargs)

    async def _open(self, *, watch: bool, **kwargs: Any) -> aiohttp.ClientResponse:
        resp: aiohttp.ClientResponse = await self._request(watch=watch or None, **kwargs)
        if resp.status == 200:
            return resp
        try:
            body = await resp.content.read(64 * 1024)
        finally:
            resp.close()
        if watch and resp.status == 410:
            raise Expired(f"HTTP 410 {excerpt(body)}")
        raise HttpError(resp.status, body, parse_retry_after(resp.headers.get("Retry-After")))

    async def _list(self) -> None:
        """The full list, page by page (each handed on at once); then the snapshot's keys."""
        timeout = aiohttp.ClientTimeout(total=self.request_timeout, sock_connect=self.request_timeout)
        keys: set[str] = set()
        rv = ""
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.page_size, "_request_timeout": timeout}
            if cont:
                kwargs["_continue"] = cont
            resp = await self._open(watch=False, **kwargs)
            try:
                body = await resp.read()
            except BaseException:
                resp.close()
                raise
            resp.release()
            self.pages += 1
            try:
                page = pod_list_decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise WatchFailure(f"undecodable pod list ({exc}): {excerpt(body)}") from None
            del body
            # All pages of a real list share the first page's version (a consistent snapshot). Were a
            # server to answer later pages from newer state, watching from the first page's version
            # replays those changes: harmless, where starting later could lose one.
            rv = rv or page.metadata.resourceVersion
            keys.update(pod.key for pod in page.items)
            self._call(self.on_page, page.items, what=f"page of {len(page.items)} pods")
            cont = page.metadata.continue_
            if not cont:
                break
        if not rv:
            raise WatchFailure("the pod list carries no resourceVersion")
        self.resource_version = rv
        self.lists += 1
        log.info("pod list: %d pods at resourceVersion %s", len(keys), rv)
        self._call(self.on_snapshot, keys, what=f"snapshot of {len(keys)} pods")
        self.synced = True
        self._synced.set()

    def _call(self, callback: Callable[[Any], None], arg: Any, *, what: str) -> None:
        try:
            callback(arg)
        except Exception:
            self.callback_errors += 1
            log.exception("pod watch: the callback for a %s failed", what)

    async def _watch(self) -> None:
        """One watch request, read to its end; raises on anything but a clean end."""
        self._progressed = False
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.request_timeout,
            # Silence longer than the server's own timeout (plus slack) means a dead connection.
            sock_read=self.watch_timeout + self.request_timeout,
        )
        resp = await self._open(
            watch=True,
            resource_version=self.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_timeout,
            _request_timeout=timeout,
        )
        self.watches += 1
        try:
            await self._read_lines(resp.content)
        except BaseException:
            resp.close()  # drop the connection: the server sees the watch go away at once
            raise
        resp.release()

    async def _read_lines(self, content: aiohttp.StreamReader) -> None:
        pending: list[bytes] = []
        pending_size = 0
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            if b"\n" not in chunk:
                pending.append(chunk)
                pending_size += len(chunk)
                if pending_size > MAX_LINE:
                    raise GarbageLine(f"line longer than {MAX_LINE} bytes", b"".join(pending))
                continue
            if pending:
                pending.append(chunk)
                chunk = b"".join(pending)
                pending.clear()
            lines = chunk.split(b"\n")
            tail = lines.pop()
            for line in lines:
                if line.strip():
                    self._handle_line(line)
            if tail:
                pending.append(tail)
            pending_size = len(tail)
        rest = b"".join(pending)
        if rest.strip():  # a last line without its newline: take it if it is whole
            self._handle_line(rest)

    def _handle_line(self, line: bytes) -> None:
        try:
            ev = watch_event_decoder.decode(line)
        except msgspec.DecodeError as exc:
            raise GarbageLine(f"not a watch event: {exc}", line) from None
        kind = ev.type
        if kind in POD_EVENTS:
            try:
                pod = pod_decoder.decode(ev.object)
            except msgspec.DecodeError as exc:
                raise GarbageLine(f"undecodable {kind} object: {exc}", line) from None
            self._progress()
            if pod.metadata.resourceVersion:
                self.resource_version = pod.metadata.resourceVersion
            self.events += 1
            try:
                self.on_event(kind, pod)
            except Exception:
                self.callback_errors += 1
                log.exception("pod watch: the event callback failed for %s %s", kind, pod.key)
        elif kind == "BOOKMARK":
            try:
                rv = bookmark_decoder.decode(ev.object).metadata.resourceVersion
            except msgspec.DecodeError as exc:
                raise GarbageLine(f"undecodable BOOKMARK object: {exc}", line) from None
            if not rv:
                raise GarbageLine("BOOKMARK without a resourceVersion", line)
            self._progress()
            self.bookmarks += 1
            self.resource_version = rv
        elif kind == "ERROR":
            try:
                st = status_decoder.decode(ev.object)
            except msgspec.DecodeError as exc:
                raise GarbageLine(f"undecodable ERROR object: {exc}", line) from None
            if st.code == 410 or st.reason in ("Expired", "Gone"):
                raise Expired(f"ERROR event 410 {st.reason}: {st.message}")
            raise ErrorEvent(f"ERROR event {st.code} {st.reason}: {st.message}")
        else:
            raise GarbageLine(f"unknown event type {kind!r}", line)

    def _progress(self) -> None:
        self._progressed = True
        self._attempt = 0


def describe(exc: BaseException) -> str:
    """A short one-line description of a request failure."""
    if isinstance(exc, WatchFailure):
        return str(exc)
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if text != exc.__class__.__name__ else text
