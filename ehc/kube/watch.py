"""List + watch of any resource: resourceVersion, bookmarks, relist on 410, reconnect with backoff.

Requests go through ``ehc.kube.request`` (so through the real kubernetes_asyncio client); the raw JSON
is decoded straight into the lean ``msgspec`` item type the ``Resource`` names, and no generated model
object is ever built.

Life cycle (``ListWatcher.run``)::

    list (paginated) ──on_page…, on_snapshot──▶ watch from the list's resourceVersion ──on_event──▶ …
      ▲                                 │ server timeout / clean end: watch again from the last version
      └──────── 410 (ERROR event or HTTP) ┘ other errors, garbage: back off, watch again from the last version

A snapshot is authoritative: the consumer drops whatever it holds that the snapshot lacks.

Items are decoded one by one: an object ehc cannot read (a field of the wrong type, say) is skipped
with an error naming it and saying what is wrong, and everything else goes on; the watch moves past
it rather than replaying it forever, and it counts as present in a snapshot, so whatever the
consumer last knew of it is kept rather than dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Generic

import aiohttp
import msgspec
from kubernetes_asyncio.client import ApiClient

from ehc.kube.model import (
    HasMetadata,
    ObjectList,
    Pod,
    T,
    bookmark_decoder,
    named_decoder,
    status_decoder,
    watch_event_decoder,
)
from ehc.kube.request import ApiError, Backoff, api_path, excerpt, request, stream

log = logging.getLogger(__name__)

ITEM_EVENTS = frozenset({"ADDED", "MODIFIED", "DELETED"})
MAX_LINE = (
    64 * 1024 * 1024
)  # an object is at most ~1.5 MiB of JSON (etcd); anything near this is not an event
QUICK_END = 1.0  # a watch that ends cleanly this fast with nothing in it is retried with backoff


@dataclass(frozen=True, slots=True)
class Resource(Generic[T]):
    """What to list and watch: a collection (``group`` "" is the core API), optionally one namespace
    and selectors, and the lean struct its items decode into.  ``singular`` names it in logs."""

    group: str
    version: str
    plural: str
    singular: str
    item: type[T]
    namespace: str | None = None
    label_selector: str | None = None
    field_selector: str | None = None

    @property
    def path(self) -> str:
        return api_path(self.group, self.version, self.plural, namespace=self.namespace)

    def query(self) -> dict[str, str]:
        """The selectors, as query parameters of both the list and the watch."""
        out = {}
        if self.label_selector:
            out["labelSelector"] = self.label_selector
        if self.field_selector:
            out["fieldSelector"] = self.field_selector
        return out


class Garbage(Exception):
    """An answer the protocol does not allow: a watch line or a list page that does not decode."""

    def __init__(self, why: str, data: bytes) -> None:
        super().__init__(why)
        self.why = why
        self.data = data

    def __str__(self) -> str:
        return f"{self.why}: {excerpt(self.data)}" if self.data else self.why


def key_of(item: HasMetadata) -> str:
    """``namespace/name``: the key of snapshots and of the consumer's view."""
    return f"{item.metadata.namespace}/{item.metadata.name}"


class ListWatcher(Generic[T]):
    """Keeps a consumer in sync with the objects of one ``Resource``.

    ``on_page(items)`` receives each page of every (re)list as it arrives, and ``on_snapshot(keys)`` the
    ``namespace/name`` keys of the whole list once it is complete: objects missing from it are gone.
    Pages are handed over one by one, not gathered, so a list of 20,000 pods never holds 20,000 decoded
    pods at once (they would pin their memory long after).  ``on_event(type, item)`` receives ADDED /
    MODIFIED / DELETED in order.  All are called on the loop and must not block; an exception they
    raise is logged and counted, never fatal.

    Counters for metrics: ``lists`` (successful full lists), ``pages`` (list pages fetched), ``relists``
    (lists forced by 410), ``watches`` (watch requests opened), ``reconnects`` (retries after a failure
    of any kind: HTTP error, dropped connection, timeout, ERROR event, garbage line), ``garbage_lines``,
    ``events``, ``bookmarks``, ``callback_errors``, ``undecodable`` (objects skipped because they do
    not decode); ``last_error`` says what went wrong most recently.
    ``synced`` turns True with the first snapshot (even if a callback raised) and stays True.
    """

    def __init__(
        self,
        api: ApiClient,
        resource: Resource[T],
        *,
        on_page: Callable[[list[T]], None],
        on_snapshot: Callable[[set[str]], None],
        on_event: Callable[[str, T], None],
        page_size: int = 500,
        backoff: tuple[float, float] = (0.2, 10.0),
        watch_timeout: int = 300,
        request_timeout: float = 30.0,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, not {page_size}")
        if watch_timeout < 1:
            raise ValueError(f"watch_timeout must be at least 1 second, not {watch_timeout}")
        self._api = api
        self.resource = resource
        self.on_page = on_page
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.page_size = page_size
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
        self.undecodable = 0
        self.last_error: str | None = None

        self._noun = resource.singular
        self._list_decoder = msgspec.json.Decoder(ObjectList[msgspec.Raw])
        self._reported: dict[str, str] = {}  # undecodable objects already reported: key -> resourceVersion
        self._item_decoder = msgspec.json.Decoder(resource.item)
        self._synced = asyncio.Event()
        self._need_list = True
        self._backoff = Backoff(*backoff)  # reset by every valid line: it counts failures without progress
        self._progressed = False  # the current watch connection delivered a valid line

    # -- public -----------------------------------------------------------------------------------
    async def wait_synced(self) -> None:
        """Return once the first snapshot has been delivered."""
        await self._synced.wait()

    async def run(self) -> None:
        """List, then watch, forever; cancel the task to stop (the open response is closed at once)."""
        noun = self._noun
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
                    await self._pause(f"{noun} watch ended at once without any event")
                else:
                    log.debug(
                        "%s watch ended cleanly; resuming from resourceVersion %s",
                        noun,
                        self.resource_version,
                    )
            except ApiError as exc:
                if exc.status == 410 and not self._need_list:
                    await self._relist(exc)
                else:
                    what = "list" if self._need_list else "watch"
                    hint = (
                        f"; ehc's ServiceAccount may not {what} {self.resource.plural}: grant it (the Helm "
                        "chart and the kustomize base carry the exact rules)"
                        if exc.status in (401, 403) else ""
                    )  # fmt: skip
                    await self._pause(f"{noun} {what} failed: {exc}{hint}", exc.retry_after)
            except Garbage as exc:
                if self._need_list:
                    await self._pause(f"{noun} list failed: {exc}")
                else:
                    await self._garbage_line(exc)
            except Exception:  # a bug or an unforeseen error: keep the traceback, keep going
                log.exception(
                    "%s watch: unexpected error during the %s", noun, "list" if self._need_list else "watch"
                )
                await self._pause(None)

    # -- internals --------------------------------------------------------------------------------
    async def _relist(self, exc: ApiError) -> None:
        """The watch's resourceVersion is no longer served (410): list again."""
        self.relists += 1
        self._need_list = True
        self.last_error = f"410: {exc}"
        log.warning(
            "%s watch: resourceVersion %s expired (%s); relisting", self._noun, self.resource_version, exc
        )
        if not self._progressed:  # a relist that expires again at once must not spin
            await self._pause(None, count=False)

    async def _garbage_line(self, exc: Garbage) -> None:
        """Whatever else the stream holds cannot be trusted either: watch again from the last good line."""
        self.garbage_lines += 1
        self.last_error = f"garbage line: {exc.why}"
        log.error(
            "%s watch: garbage line in the stream (%s): %s; restarting the watch from resourceVersion %s",
            self._noun, exc.why, excerpt(exc.data), self.resource_version,
        )  # fmt: skip
        await self._pause(None)

    async def _pause(self, what: str | None, retry_after: float | None = None, *, count: bool = True) -> None:
        """Back off before the next attempt; ``what`` is logged at WARNING (None: already logged)."""
        if count:
            self.reconnects += 1
        delay = self._backoff.next(retry_after)
        if what is not None:
            self.last_error = what
            where = "with a new list" if self._need_list else f"from resourceVersion {self.resource_version}"
            honour = f" (Retry-After {retry_after:g}s)" if retry_after is not None else ""
            log.warning("%s; retrying in %.2fs%s %s", what, delay, honour, where)
        await asyncio.sleep(delay)

    async def _list(self) -> None:
        """The full list, page by page (each handed on at once); then the snapshot's keys."""
        res = self.resource
        keys: set[str] = set()
        rv = ""
        query = {**res.query(), "limit": str(self.page_size)}
        while True:
            body = await request(self._api, "GET", res.path, query=query, timeout=self.request_timeout)
            self.pages += 1
            try:
                page = self._list_decoder.decode(body)
            except msgspec.DecodeError as exc:
                raise Garbage(f"undecodable {self._noun} list ({exc})", body) from None
            del body
            cont = page.metadata.continue_
            # All pages of a real list share the first page's version (a consistent snapshot). Were a
            # server to answer later pages from newer state, watching from the first page's version
            # replays those changes: harmless, where starting later could lose one.
            rv = rv or page.metadata.resourceVersion
            items = []
            for raw in page.items:
                key, _, item = self._decode(raw, "listed")
                if key:
                    keys.add(key)
                if item is not None:
                    items.append(item)
            del page
            self._call(self.on_page, items, what=f"page of {len(items)} {res.plural}")
            if not cont:
                break
            query["continue"] = cont
        if not rv:
            raise Garbage(f"the {self._noun} list carries no resourceVersion", b"")
        self.resource_version = rv
        self.lists += 1
        log.info("%s list: %d %s at resourceVersion %s", self._noun, len(keys), res.plural, rv)
        self._call(self.on_snapshot, keys, what=f"snapshot of {len(keys)} {res.plural}")
        self.synced = True
        self._synced.set()

    def _call(self, callback: Callable[[Any], None], arg: Any, *, what: str) -> None:
        try:
            callback(arg)
        except Exception:
            self.callback_errors += 1
            log.exception("%s watch: the callback for a %s failed", self._noun, what)

    async def _watch(self) -> None:
        """One watch request, read to its end; raises on anything but a clean end."""
        self._progressed = False
        query = {
            **self.resource.query(),
            "watch": "true",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout),
        }
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.request_timeout,
            # Silence longer than the server's own timeout (plus slack) means a dead connection.
            sock_read=self.watch_timeout + self.request_timeout,
        )
        async with stream(self._api, self.resource.path, query=query, timeout=timeout) as content:
            self.watches += 1
            await self._read_lines(content)

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
                    raise Garbage(f"line longer than {MAX_LINE} bytes", b"".join(pending))
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
            raise Garbage(f"not a watch event: {exc}", line) from None
        kind = ev.type
        if kind in ITEM_EVENTS:
            key, rv, item = self._decode(ev.object, kind)
            if not key:
                raise Garbage(f"{kind} object without readable metadata", line)
            self._progress()
            if rv:
                self.resource_version = rv
            if item is None:
                return  # reported; the watch moves on past it
            self.events += 1
            try:
                self.on_event(kind, item)
            except Exception:
                self.callback_errors += 1
                log.exception("%s watch: the event callback failed for %s %s", self._noun, kind, key_of(item))
        elif kind == "BOOKMARK":
            try:
                rv = bookmark_decoder.decode(ev.object).metadata.resourceVersion
            except msgspec.DecodeError as exc:
                raise Garbage(f"undecodable BOOKMARK object: {exc}", line) from None
            if not rv:
                raise Garbage("BOOKMARK without a resourceVersion", line)
            self._progress()
            self.bookmarks += 1
            self.resource_version = rv
        elif kind == "ERROR":
            try:
                st = status_decoder.decode(ev.object)
            except msgspec.DecodeError as exc:
                raise Garbage(f"undecodable ERROR object: {exc}", line) from None
            expired = st.code == 410 or st.reason in ("Expired", "Gone")
            # In-band, but the same error as a status line: 410 relists, anything else backs off.
            status = 410 if expired else st.code or 500
            raise ApiError(status, st.reason, f"{st.message} (watch ERROR event)")
        else:
            raise Garbage(f"unknown event type {kind!r}", line)

    def _decode(self, raw: msgspec.Raw | bytes, what: str) -> tuple[str, str, T | None]:
        """The object's key, resourceVersion and the object itself; when only its metadata decodes the
        object is None (and that is said once per version of it), except for a deletion, which is
        handed on with the metadata alone; ("", "", None) when not even the metadata decodes."""
        try:
            item = self._item_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            why = str(exc)
        else:
            key = key_of(item)
            self._reported.pop(key, None)
            return key, item.metadata.resourceVersion, item
        try:
            named = named_decoder.decode(raw)
        except msgspec.DecodeError:
            return "", "", None
        key, rv = key_of(named), named.metadata.resourceVersion
        if what == "DELETED":
            self._reported.pop(key, None)
            with contextlib.suppress(msgspec.ValidationError):
                return (
                    key,
                    rv,
                    msgspec.convert({"metadata": msgspec.to_builtins(named.metadata)}, self.resource.item),
                )
        self.undecodable += 1
        if self._reported.get(key) != rv:
            self._reported[key] = rv
            self.last_error = f"{self._noun} {key} does not decode: {why}"
            log.error(
                "%s %s (%s, resourceVersion %s) does not decode and is skipped until it changes: %s; "
                "fix the object (ehc keeps what it knew of it, and watches everything else)",
                self._noun, key, what, rv or "?", why,
            )  # fmt: skip
        return key, rv, None

    def _progress(self) -> None:
        self._progressed = True
        self._backoff.reset()


PODS: Resource[Pod] = Resource("", "v1", "pods", "pod", Pod)


class PodWatcher(ListWatcher[Pod]):
    """The pod list + watch the coordinator runs: every pod, or those of ``namespace`` and the
    selectors.  ``settings`` are ``ListWatcher``'s (page size, backoff, timeouts)."""

    def __init__(
        self,
        api: ApiClient,
        *,
        on_page: Callable[[list[Pod]], None],
        on_snapshot: Callable[[set[str]], None],
        on_event: Callable[[str, Pod], None],
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        **settings: Any,
    ) -> None:
        resource = replace(
            PODS, namespace=namespace, label_selector=label_selector, field_selector=field_selector
        )
        super().__init__(
            api, resource, on_page=on_page, on_snapshot=on_snapshot, on_event=on_event, **settings
        )
