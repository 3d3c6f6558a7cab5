"""Object storage of the simulated API server: one global resourceVersion, a bounded event history per
resource for watch resumption (410 when a version has left it), and fan-out of encoded watch lines.

Each object is kept both as a dict and as its encoded JSON so that a list of 10,000 pods is a byte join
and each watch event is encoded once, whatever the number of watchers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ehc.sim.selectors import Predicate

_encode = msgspec.json.Encoder().encode
Key = tuple[str, str]  # (namespace or "", name)


def now_rfc3339() -> str:
    """Seconds-precision RFC 3339, the format of metadata timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Resource:
    """What discovery and the router need to know about one resource type."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``pods`` or ``leases.coordination.k8s.io``, as in the server's error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


@dataclass(slots=True)
class Event:
    rv: int
    type: str
    obj: dict[str, Any]
    line: bytes
    old: dict[str, Any] | None


class Conflict(Exception):
    """Stale resourceVersion on update."""


class AlreadyExists(Exception):
    """Create of an existing name."""


class NotFound(Exception):
    """No such object."""


@dataclass(eq=False)
class Watcher:
    """One open watch: a buffer of encoded lines the HTTP handler drains in batches."""

    collection: Collection
    match: Predicate | None
    max_buffer: int = 200_000
    buf: list[bytes] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    abrupt: bool = False

    def push(self, line: bytes) -> None:
        if self.closed:
            return
        self.buf.append(line)
        if len(self.buf) > self.max_buffer:  # a consumer this slow is cut off, as the real server does
            self.close(abrupt=False)
        self.wake.set()

    def close(self, abrupt: bool = False) -> None:
        self.closed = True
        self.abrupt = self.abrupt or abrupt
        self.wake.set()
        self.collection.watchers.discard(self)

    def offer(self, ev: Event) -> None:
        """Deliver ``ev`` if it matches; an object that stops matching is seen as DELETED."""
        if self.match is None or self.match(ev.obj):
            self.push(ev.line)
        elif ev.type == "MODIFIED" and ev.old is not None and self.match(ev.old):
            self.push(b'{"type":"DELETED","object":' + _encode(ev.obj) + b"}\n")


ChangeHook = Callable[[str, dict[str, Any] | None, dict[str, Any], str], None]


class Store:
    """The global resourceVersion counter and the collections sharing it (etcd's role)."""

    def __init__(self, history: int = 20_000) -> None:
        self.rv = 1
        self.history = history
        self.collections: dict[str, Collection] = {}

    def add(self, res: Resource) -> Collection:
        col = Collection(self, res)
        self.collections[res.qualified] = col
        return col

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv


class Collection:
    """All objects of one resource type, its event history and its watchers."""

    def __init__(self, store: Store, res: Resource) -> None:
        self.store = store
        self.res = res
        self.objects: dict[Key, tuple[dict[str, Any], bytes]] = {}
        self.events: deque[Event] = deque()
        self.compacted_rv = 0  # events with rv <= this are no longer in the history
        self.watchers: set[Watcher] = set()
        self.hooks: list[ChangeHook] = []
        # How a stored object becomes JSON; a controller that keeps parts of its objects encoded may
        # splice them in (``msgspec.Raw``) instead of encoding a large object again for each change.
        self.encode: Callable[[dict[str, Any]], bytes] = _encode

    # -- reads --------------------------------------------------------------------------------
    def get(self, ns: str, name: str) -> dict[str, Any] | None:
        entry = self.objects.get((ns, name))
        return entry[0] if entry else None

    def get_raw(self, ns: str, name: str) -> bytes | None:
        entry = self.objects.get((ns, name))
        return entry[1] if entry else None

    def iter_matching(self, ns: str | None, match: Predicate | None) -> Iterator[tuple[Key, bytes]]:
        """Objects in key order (as etcd returns them), optionally one namespace, filtered."""
        for key in sorted(self.objects):
            if ns is not None and key[0] != ns:
                continue
            obj, raw = self.objects[key]
            if match is None or match(obj):
                yield key, raw

    # -- writes -------------------------------------------------------------------------------
    def _commit(
        self, typ: str, key: Key, obj: dict[str, Any], old: dict[str, Any] | None, actor: str
    ) -> None:
        rv = self.store.next_rv()
        obj["metadata"]["resourceVersion"] = str(rv)
        raw = self.encode(obj)
        if typ == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = (obj, raw)
        ev = Event(rv, typ, obj, b'{"type":"' + typ.encode() + b'","object":' + raw + b"}\n", old)
        self.events.append(ev)
        while len(self.events) > self.store.history:
            self.compacted_rv = self.events.popleft().rv
        for w in tuple(self.watchers):
            w.offer(ev)
        for hook in self.hooks:
            hook(typ, old, obj, actor)

    def create(self, obj: dict[str, Any], actor: str = "client") -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "") if self.res.namespaced else ""
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = (ns, meta["name"])
        if key in self.objects:
            raise AlreadyExists(meta["name"])
        obj["kind"], obj["apiVersion"] = self.res.kind, self.res.api_version
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        if self.res.namespaced:
            meta["namespace"] = ns
        self._commit("ADDED", key, obj, None, actor)
        return obj

    def update(
        self, ns: str, name: str, new: dict[str, Any], expect_rv: str | None = None, actor: str = "client"
    ) -> tuple[dict[str, Any], bool]:
        """Store ``new`` (a fresh dict) as the object; returns (object, changed). A no-op update keeps
        the resourceVersion and sends no event, as the real server does."""
        key = (ns, name)
        entry = self.objects.get(key)
        if entry is None:
            raise NotFound(name)
        old = entry[0]
        if expect_rv and expect_rv != old["metadata"]["resourceVersion"]:
            raise Conflict(name)
        meta = new.setdefault("metadata", {})
        for k in ("uid", "creationTimestamp", "name", "namespace", "resourceVersion"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        new["kind"], new["apiVersion"] = self.res.kind, self.res.api_version
        if new == old:
            return old, False
        self._commit("MODIFIED", key, new, old, actor)
        return new, True

    def delete(self, ns: str, name: str, actor: str = "client") -> dict[str, Any]:
        entry = self.objects.get((ns, name))
        if entry is None:
            raise NotFound(name)
        obj = msgspec.json.decode(entry[1])
        self._commit("DELETED", (ns, name), obj, entry[0], actor)
        return obj

    # -- watch --------------------------------------------------------------------------------
    def watch(self, ns: str | None, match: Predicate | None, rv: str | None) -> Watcher | int:
        """Open a watch; returns the compacted version (int) when ``rv`` is too old (410).

        No ``rv`` or "0": synthetic ADDED for every current object, then live events. Otherwise the
        retained events after ``rv``, then live events. Runs without awaiting, so nothing slips
        between replay and registration.
        """
        full = match if ns is None else _and_ns(ns, match)
        w = Watcher(self, full)
        if not rv or rv == "0":
            for _k, raw in self.iter_matching(ns, match):
                w.buf.append(b'{"type":"ADDED","object":' + raw + b"}\n")
        else:
            try:
                since = int(rv)
            except ValueError:
                return -1
            if since < self.compacted_rv:
                return self.compacted_rv
            for ev in self.events:
                if ev.rv > since:
                    w.offer(ev)
        self.watchers.add(w)
        return w

    def compact(self) -> None:
        """Forget the whole event history (any resumption from an older version gets 410)."""
        if self.events:
            self.compacted_rv = self.events[-1].rv
        self.compacted_rv = max(self.compacted_rv, self.store.rv)
        self.events.clear()


def _and_ns(ns: str, match: Predicate | None) -> Predicate:
    if match is None:
        return lambda obj: obj["metadata"].get("namespace") == ns
    return lambda obj: obj["metadata"].get("namespace") == ns and match(obj)
