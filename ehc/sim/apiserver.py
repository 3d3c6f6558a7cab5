"""A Kubernetes API server for the subset ehc uses, speaking the real paths, verbs, codes and JSON.

Serves pods (list/get/watch/patch status), nodes, namespaces, coordination.k8s.io/v1 Leases,
core/v1 and events.k8s.io/v1 Events, Services, Endpoints, discovery.k8s.io/v1 EndpointSlices (the
objects only: ``ehc.sim.slicectl`` fills slices for Services with selectors), and enough discovery for
kubectl and kubernetes_asyncio. Every write is recorded in ``write_log``; ``faults`` injects errors,
throttling and latency.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import json
import logging
import os
import socket
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from typing import Any

import msgspec
from aiohttp import web

from ehc.sim.faults import Faults
from ehc.sim.patch import PATCH_TYPES, PatchError, apply_patch
from ehc.sim.selectors import SelectorError, combine, field_selector, label_selector
from ehc.sim.store import AlreadyExists, Collection, Conflict, NotFound, Resource, Store, Watcher
from ehc.sim.writelog import WriteEntry, WriteLog, address_changes

log = logging.getLogger(__name__)
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode

_RW = ("create", "delete", "get", "list", "patch", "update", "watch")
RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "pods", "Pod", True, _RW, ("po",), ("status",)),
    Resource("", "v1", "nodes", "Node", False, _RW, ("no",), ("status",)),
    Resource("", "v1", "namespaces", "Namespace", False, _RW, ("ns",)),
    Resource("", "v1", "events", "Event", True, _RW, ("ev",)),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True, _RW),
    Resource("events.k8s.io", "v1", "events", "Event", True, _RW, ("ev",)),
    Resource("", "v1", "services", "Service", True, _RW, ("svc",), ("status",)),
    Resource("", "v1", "endpoints", "Endpoints", True, _RW, ("ep",)),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, _RW),
)
SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0-ehc-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}
_WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ADDRESS_KINDS = frozenset({"endpointslices", "endpoints"})  # writes that record per-address changes
_CONDITION_STATUSES = frozenset({"True", "False", "Unknown"})
_ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def status_body(
    code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None
) -> bytes:
    """A ``meta/v1 Status`` failure object."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, "Unknown"),
        "code": code,
    }
    if details:
        body["details"] = details
    return _encode(body)


class ApiError(Exception):
    """Raised inside handlers; turned into a Status response."""

    def __init__(
        self, code: int, message: str, reason: str | None = None, details: dict[str, Any] | None = None
    ):
        super().__init__(message)
        self.code, self.message, self.reason, self.details = code, message, reason, details


def _json(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _details(res: Resource, name: str) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": res.plural}
    if res.group:
        d["group"] = res.group
    return d


def _age(ts: str | None) -> str:
    if not ts:
        return "<unknown>"
    secs = int(time.time() - calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _conditions(obj: dict[str, Any] | None) -> dict[str, str]:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c.get("type"): c.get("status") for c in conds if isinstance(c, dict)}


def _condition_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, str]:
    """Pod conditions whose status differs between ``old`` and ``new``."""
    before, after = _conditions(old), _conditions(new)
    return {t: s for t, s in after.items() if before.get(t) != s}


def _record_changes(entry: WriteEntry, plural: str, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """What a write that changed an object changed: pod conditions, or an address's conditions."""
    if plural == "pods":
        entry.changes = _condition_changes(old, new)
    elif plural in _ADDRESS_KINDS:
        entry.addresses = address_changes(old, new)


_Parts = tuple[Resource, str | None, str | None, str]  # resource, namespace, name, subresource


def _request_key(verb: str, parts: _Parts | None) -> tuple[str, str, bool, str]:
    if parts is None:
        return verb, "", False, ""
    res, _ns, name, sub = parts
    return verb, res.plural, name is not None, sub


class ApiServer:
    """The simulated API server. ``await start()``, then point a kubeconfig at ``url``."""

    def __init__(
        self,
        *,
        token: str | None = None,
        history: int = 20_000,
        bookmark_interval: float = 5.0,
        default_watch_timeout: float = 1800.0,
        tls: bool | None = None,
    ) -> None:
        self.token = token
        # client-go (kubectl) never sends a bearer token over plain HTTP, so a token implies TLS.
        self.tls = token is not None if tls is None else tls
        self._ssl: ssl.SSLContext | None = None
        self.ca_pem = b""
        self.bookmark_interval = bookmark_interval
        self.default_watch_timeout = default_watch_timeout
        self.store = Store(history)
        self.collections: dict[tuple[str, str, str], Collection] = {}
        for res in RESOURCES:
            self.collections[(res.group, res.version, res.plural)] = self.store.add(res)
        self.pods = self.collections[("", "v1", "pods")]
        self.nodes = self.collections[("", "v1", "nodes")]
        self.namespaces = self.collections[("", "v1", "namespaces")]
        self.leases = self.collections[("coordination.k8s.io", "v1", "leases")]
        self.events = self.collections[("", "v1", "events")]
        self.events_v1 = self.collections[("events.k8s.io", "v1", "events")]
        self.services = self.collections[("", "v1", "services")]
        self.endpoints = self.collections[("", "v1", "endpoints")]
        self.endpointslices = self.collections[("discovery.k8s.io", "v1", "endpointslices")]
        self.faults = Faults()
        self.write_log = WriteLog()
        self.requests = 0
        # (verb, resource plural, names one object, subresource) -> requests answered, so a harness
        # can count reads (a GET of one pod) as well as writes.
        self.request_counts: Counter[tuple[str, str, bool, str]] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._sites: list[web.BaseSite] = []
        for ns in ("default", "kube-system"):
            self.ensure_namespace(ns)

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _make_tls(self) -> None:
        """A throwaway self-signed certificate for 127.0.0.1 (made with the openssl command)."""
        with tempfile.TemporaryDirectory(prefix="ehc-sim-tls-") as d:
            key, crt = os.path.join(d, "key.pem"), os.path.join(d, "crt.pem")
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                 "-nodes", "-days", "30", "-subj", "/CN=ehc-sim", "-keyout", key, "-out", crt,
                 "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                check=True, capture_output=True,
            )  # fmt: skip
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(crt, key)
            with open(crt, "rb") as f:
                self.ca_pem = f.read()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (port 0 picks one; ``self.port`` tells which)."""
        if self.tls:
            self._make_tls()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = sock.getsockname()[1]
        await self.add_socket(sock)

    async def add_socket(self, sock: socket.socket) -> None:
        """Serve on an already bound socket too (e.g. one bound inside a network namespace)."""
        assert self._runner is not None, "start() first"
        sock.listen(1024)
        sock.setblocking(False)
        site = web.SockSite(self._runner, sock, ssl_context=self._ssl)
        await site.start()
        self._sites.append(site)

    async def stop(self) -> None:
        self.close_watches(abrupt=False)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def kubeconfig(self, server: str | None = None, namespace: str = "default") -> str:
        """Kubeconfig text (JSON, which is YAML) for this server and its token."""
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        cluster: dict[str, Any] = {"server": server or self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "ehc-sim", "cluster": cluster}],
            "users": [{"name": "ehc-sim", "user": user}],
            "contexts": [
                {
                    "name": "ehc-sim",
                    "context": {"cluster": "ehc-sim", "user": "ehc-sim", "namespace": namespace},
                }
            ],
            "current-context": "ehc-sim",
            "preferences": {},
        }
        return json.dumps(cfg, indent=2) + "\n"

    def write_kubeconfig(self, path: str) -> str:
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.kubeconfig())
        return path

    # -- Python API for harnesses -------------------------------------------------------------
    def ensure_namespace(self, name: str) -> None:
        if self.namespaces.get("", name) is None:
            self.namespaces.create(
                {
                    "metadata": {"name": name},
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                },
                actor="sim",
            )

    def create_pod(self, pod: dict[str, Any], actor: str = "sim") -> dict[str, Any]:
        self.ensure_namespace(pod["metadata"].get("namespace", "default"))
        pod["metadata"].setdefault("namespace", "default")
        return self.pods.create(pod, actor=actor)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(namespace, name)

    def pod_condition(self, namespace: str, name: str, ctype: str = "Ready") -> str | None:
        """The status ("True"/"False"/"Unknown") of a pod condition, or None if absent."""
        pod = self.pods.get(namespace, name)
        for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
            if cond.get("type") == ctype:
                return cond.get("status")
        return None

    def patch_pod_status(self, namespace: str, name: str, patch: dict[str, Any], actor: str = "sim") -> bool:
        """Apply a strategic-merge status patch from inside the simulator (kubelet, harness); logged
        with ``actor``. Returns whether the pod changed."""
        mono, wall = time.monotonic(), time.time()
        entry = WriteEntry(
            mono, wall, "PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status", "pods", "status",
            namespace, name, "application/strategic-merge-patch+json", patch, actor=actor,
        )  # fmt: skip
        self.write_log.append(entry)
        try:
            _obj, changed = self._patch(
                self.pods, namespace, name, "status", PATCH_TYPES[2], _encode(patch), actor
            )
        except ApiError as exc:
            entry.status = exc.code
            raise
        entry.status, entry.changed = 200, changed
        self.write_log.finished(entry)
        return changed

    def set_pod_condition(
        self,
        namespace: str,
        name: str,
        ctype: str,
        status: str,
        actor: str = "sim",
        reason: str | None = None,
    ) -> bool:
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if reason:
            cond["reason"] = reason
        return self.patch_pod_status(namespace, name, {"status": {"conditions": [cond]}}, actor)

    def delete_pod(self, namespace: str, name: str, actor: str = "sim") -> None:
        self.pods.delete(namespace, name, actor=actor)

    def write(
        self, col: Collection, verb: str, namespace: str, name: str, obj: dict[str, Any] | None, actor: str
    ) -> bool:
        """A controller's write from inside the simulator (POST ``obj``, PUT ``obj`` as the whole new
        object, or DELETE), logged like a client's request under ``actor``. Returns whether the object
        changed; a PUT equal to the stored object is a no-op, as on the real server."""
        res = col.res
        prefix = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        path = f"{prefix}/namespaces/{namespace}/{res.plural}" if res.namespaced else f"{prefix}/{res.plural}"
        entry = WriteEntry(
            time.monotonic(), time.time(), verb, path if verb == "POST" else f"{path}/{name}", res.plural,
            "", namespace, name, "application/json", None, actor=actor,
        )  # fmt: skip
        self.write_log.append(entry)
        old = col.get(namespace, name)
        if verb == "POST":
            assert obj is not None
            new, changed, status = col.create(obj, actor=actor), True, 201
        elif verb == "PUT":
            assert obj is not None
            new, changed = col.update(namespace, name, obj, actor=actor)
            status = 200
        else:
            new, changed, status = col.delete(namespace, name, actor=actor), True, 200
        entry.status, entry.changed = status, changed
        if changed and verb != "DELETE":
            _record_changes(entry, res.plural, old, new)
        self.write_log.finished(entry)
        return changed

    def close_watches(self, abrupt: bool = True) -> int:
        """End every open watch; ``abrupt`` drops the connection mid-stream (no chunked terminator)."""
        count = 0
        for col in self.collections.values():
            for w in tuple(col.watchers):
                w.close(abrupt=abrupt)
                count += 1
        return count

    def compact(self) -> None:
        """Drop all watch history: resuming from any version older than now answers 410."""
        for col in self.collections.values():
            col.compact()

    def watcher_count(self) -> int:
        return sum(len(c.watchers) for c in self.collections.values())

    # -- HTTP ---------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        verb, path = request.method, request.path
        parts = self._parse(path)  # once per request: counted, logged, dispatched
        self.request_counts[_request_key(verb, parts)] += 1
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _json(status_body(401, "Unauthorized"), 401)
        entry: WriteEntry | None = None
        body = b""
        if verb in _WRITE_VERBS:
            body = await request.read()
            entry = self._log_write(request, body, parts)
        try:
            delay = self.faults.delay_for(verb, path)
            if delay > 0:
                await asyncio.sleep(delay)
            rule = self.faults.error_for(verb, path)
            if rule is not None:
                headers = {}
                details = None
                if rule.retry_after is not None:
                    headers["Retry-After"] = str(max(1, round(rule.retry_after)))
                    details = {"retryAfterSeconds": max(1, round(rule.retry_after))}
                msg = "injected fault" if rule.status != 429 else "too many requests, please try again later"
                resp: web.StreamResponse = _json(
                    status_body(rule.status, msg, details=details), rule.status, headers
                )
            else:
                resp = await self._dispatch(request, verb, path, parts, body, entry)
        except ApiError as exc:
            resp = _json(status_body(exc.code, exc.message, exc.reason, exc.details), exc.code)
        if entry is not None:
            entry.status = resp.status
            self.write_log.finished(entry)
        return resp

    def _log_write(self, request: web.Request, body: bytes, parts: _Parts | None) -> WriteEntry:
        decoded: Any
        try:
            decoded = _decode(body) if body else None
        except msgspec.DecodeError:
            decoded = body.decode("utf-8", "replace")
        res, ns, name, sub = (
            ("", "", "", "") if parts is None else (parts[0].plural, parts[1], parts[2], parts[3])
        )
        entry = WriteEntry(
            time.monotonic(), time.time(), request.method, request.path, res, sub, ns or "", name or "",
            request.content_type, decoded,
        )  # fmt: skip
        self.write_log.append(entry)
        return entry

    def count_requests(self, verb: str, resource: str, *, named: bool | None = None) -> int:
        """Requests so far with this verb on this resource (``named``: on one object, or on the collection)."""
        return sum(
            n
            for (v, r, one, _sub), n in self.request_counts.items()
            if v == verb and r == resource and (named is None or one == named)
        )

    def _parse(self, path: str) -> _Parts | None:
        """Map a resource path to (resource, namespace, name, subresource); None if it names nothing
        this server serves (answered 404)."""
        seg = path.strip("/").split("/")
        if seg[0] == "api" and len(seg) >= 3:
            group, version, rest = "", seg[1], seg[2:]
        elif seg[0] == "apis" and len(seg) >= 4:
            group, version, rest = seg[1], seg[2], seg[3:]
        else:
            return None
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        col = self.collections.get((group, version, rest[0]))
        if col is None:
            return None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3 or (sub and sub not in col.res.subresources):
            return None
        if ns is not None and not col.res.namespaced:
            return None
        return col.res, ns, name, sub

    async def _dispatch(
        self,
        request: web.Request,
        verb: str,
        path: str,
        parts: _Parts | None,
        body: bytes,
        entry: WriteEntry | None,
    ) -> web.StreamResponse:
        disc = self._discovery(path)
        if disc is not None:
            if verb != "GET":
                raise ApiError(
                    405, f"the server does not allow this method on the requested resource ({verb})"
                )
            return disc
        if parts is None:
            raise ApiError(404, "the server could not find the requested resource")
        res, ns, name, sub = parts
        col = self.collections[(res.group, res.version, res.plural)]
        q = request.query
        if name is None:
            if verb == "GET":
                try:
                    match = combine(
                        label_selector(q.get("labelSelector")),
                        field_selector(q.get("fieldSelector"), res.plural),
                    )
                except SelectorError as exc:
                    raise ApiError(400, str(exc)) from None
                if q.get("watch") in ("1", "true", "True"):
                    return await self._watch(request, col, ns, match)
                return self._list(request, col, ns, match)
            if verb == "POST" and (ns is not None or not res.namespaced):
                created = self._create(col, ns or "", body)
                if entry is not None:
                    entry.name, entry.changed = created["metadata"]["name"], True
                    if res.plural in _ADDRESS_KINDS:  # a new address counts as changed
                        entry.addresses = address_changes(None, created)
                return _json(_encode(created), 201)
            raise ApiError(405, f"the server does not allow this method on the requested resource ({verb})")
        key_ns = ns or ""
        if res.namespaced and ns is None:
            raise ApiError(404, "the server could not find the requested resource")
        if verb == "GET":
            raw = col.get_raw(key_ns, name)
            if raw is None:
                raise ApiError(404, f'{res.qualified} "{name}" not found', details=_details(res, name))
            return _json(raw)
        if verb == "PATCH":
            ctype = request.content_type
            if ctype not in PATCH_TYPES:
                raise ApiError(
                    415,
                    "the body of the request was in an unknown format - accepted media types include: "
                    + ", ".join(PATCH_TYPES),
                )
            old = col.get(key_ns, name)
            obj, changed = self._patch(col, key_ns, name, sub, ctype, body, "client")
            if entry is not None:
                entry.changed = changed
                if changed:
                    _record_changes(entry, res.plural, old, obj)
            return _json(_encode(obj))
        if verb == "PUT":
            old = col.get(key_ns, name)
            obj, changed = self._replace(col, key_ns, name, sub, body)
            if entry is not None:
                entry.changed = changed
                if changed:
                    _record_changes(entry, res.plural, old, obj)
            return _json(_encode(obj))
        if verb == "DELETE":
            try:
                obj = col.delete(key_ns, name)
            except NotFound:
                raise ApiError(
                    404, f'{res.qualified} "{name}" not found', details=_details(res, name)
                ) from None
            if entry is not None:
                entry.changed = True
            return _json(_encode(obj))
        raise ApiError(405, f"the server does not allow this method on the requested resource ({verb})")

    # -- verbs --------------------------------------------------------------------------------
    def _list(self, request: web.Request, col: Collection, ns: str | None, match: Any) -> web.Response:
        items = list(col.iter_matching(ns, match))
        rv = str(self.store.rv)
        meta: dict[str, Any] = {"resourceVersion": rv}
        limit = request.query.get("limit")
        start = request.query.get("continue")
        if start:
            try:
                after = tuple(json.loads(start))
            except (ValueError, TypeError):
                raise ApiError(400, "continue key is not valid") from None
            items = [i for i in items if i[0] > after]
        if limit and limit.isdigit() and 0 < int(limit) < len(items):
            n = int(limit)
            meta["continue"] = json.dumps(list(items[n - 1][0]))
            meta["remainingItemCount"] = len(items) - n
            items = items[:n]
        if "as=Table" in request.headers.get("Accept", ""):
            return _json(self._table(col, [col.objects[k][0] for k, _ in items], meta))
        head = _encode({"kind": col.res.kind + "List", "apiVersion": col.res.api_version, "metadata": meta})
        return _json(head[:-1] + b',"items":[' + b",".join(raw for _, raw in items) + b"]}")

    def _table(self, col: Collection, objs: list[dict[str, Any]], meta: dict[str, Any]) -> bytes:
        """Server-side printing for kubectl (``Accept: …;as=Table``)."""
        cols = [("Name", "string", "name")]
        if col.res.plural == "pods":
            cols += [("Ready", "string", ""), ("Status", "string", ""), ("Restarts", "string", "")]
        cols += [("Age", "string", "")]
        if col.res.plural == "pods":
            cols += [("IP", "string", ""), ("Node", "string", "")]
        rows = []
        for obj in objs:
            md = obj.get("metadata", {})
            cells: list[Any] = [md.get("name")]
            if col.res.plural == "pods":
                st = obj.get("status") or {}
                ready = sum(1 for c in st.get("containerStatuses") or [] if c.get("ready"))
                total = len((obj.get("spec") or {}).get("containers") or [])
                cells += [f"{ready}/{total}", st.get("phase", ""), "0"]
            cells.append(_age(md.get("creationTimestamp")))
            if col.res.plural == "pods":
                cells += [
                    (obj.get("status") or {}).get("podIP", "<none>"),
                    (obj.get("spec") or {}).get("nodeName", ""),
                ]
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": md,
                    },
                }
            )
        return _encode(
            {
                "kind": "Table",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": meta,
                "columnDefinitions": [
                    {"name": n, "type": t, "format": f, "description": "", "priority": 0} for n, t, f in cols
                ],
                "rows": rows,
            }
        )

    async def _watch(
        self, request: web.Request, col: Collection, ns: str | None, match: Any
    ) -> web.StreamResponse:
        q = request.query
        try:
            timeout = float(q.get("timeoutSeconds") or self.default_watch_timeout)
        except ValueError:
            raise ApiError(400, "timeoutSeconds must be a number") from None
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true", "True")
        rv = q.get("resourceVersion")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if self.faults.force_410 > 0:
            self.faults.force_410 -= 1
            await self._write_expired(resp, rv, self.store.rv)
            return resp
        w = col.watch(ns, match, rv)
        if isinstance(w, int):
            if w < 0:
                line = _encode(
                    {"type": "ERROR", "object": _decode(status_body(400, f"invalid resourceVersion {rv!r}"))}
                )
                await resp.write(line + b"\n")
            else:
                await self._write_expired(resp, rv, w)
            return resp
        try:
            await self._pump(resp, w, col, timeout, bookmarks)
        except (ConnectionResetError, asyncio.CancelledError):
            w.close()
            raise
        finally:
            w.close()
        if w.abrupt:
            if request.transport is not None:
                request.transport.abort()
            return resp
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    async def _write_expired(self, resp: web.StreamResponse, rv: str | None, oldest: int) -> None:
        status = _decode(status_body(410, f"too old resource version: {rv} ({oldest})", "Expired"))
        await resp.write(_encode({"type": "ERROR", "object": status}) + b"\n")

    async def _pump(
        self, resp: web.StreamResponse, w: Watcher, col: Collection, timeout: float, bookmarks: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        bookmark_head = b'{"type":"BOOKMARK","object":{"kind":"' + col.res.kind.encode() + b'","apiVersion":"'
        bookmark_head += col.res.api_version.encode() + b'","metadata":{"resourceVersion":"'
        while not w.closed:
            if not w.buf:
                until = min(deadline, next_bookmark) if bookmarks else deadline
                wait = until - loop.time()
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await w.wake.wait()
            now = loop.time()
            if now >= deadline or w.closed:
                break
            if bookmarks and now >= next_bookmark:
                w.buf.append(bookmark_head + str(self.store.rv).encode() + b'"}}}\n')
                next_bookmark = now + self.bookmark_interval
            w.wake.clear()
            if w.buf:
                data = b"".join(w.buf)
                w.buf.clear()
                await resp.write(data)
        if w.buf and not w.abrupt:
            await resp.write(b"".join(w.buf))
            w.buf.clear()

    def _create(self, col: Collection, ns: str, body: bytes) -> dict[str, Any]:
        res = col.res
        try:
            obj = _decode(body)
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"error decoding body: {exc}") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "body must be a JSON object")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if res.namespaced:
            if meta.get("namespace") not in (None, "", ns):
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = ns
        if not meta.get("name") and not meta.get("generateName"):
            raise ApiError(
                422, f"{res.kind} is invalid: metadata.name: Required value: name or generateName is required"
            )
        meta.pop("resourceVersion", None)
        self._validate(res, obj)
        if res.plural == "pods":
            self.ensure_namespace(ns)
        try:
            created = col.create(obj)
        except AlreadyExists:
            name = meta["name"]
            raise ApiError(
                409, f'{res.qualified} "{name}" already exists', "AlreadyExists", _details(res, name)
            ) from None
        return created

    def _merge_sub(self, res: Resource, old: dict[str, Any], new: dict[str, Any], sub: str) -> dict[str, Any]:
        """What a write may change: only status via ``/status``, everything but status otherwise."""
        if sub == "status":
            out = dict(old)
            out["metadata"] = dict(old["metadata"])
            if "status" in new:
                out["status"] = new["status"]
            else:
                out.pop("status", None)
            return out
        out = dict(new)
        out["metadata"] = dict(new.get("metadata") or {})
        if "status" in res.subresources:
            if "status" in old:
                out["status"] = old["status"]
            else:
                out.pop("status", None)
        return out

    def _patch(
        self, col: Collection, ns: str, name: str, sub: str, ctype: str, body: bytes, actor: str
    ) -> tuple[dict[str, Any], bool]:
        res = col.res
        old = col.get(ns, name)
        if old is None:
            raise ApiError(404, f'{res.qualified} "{name}" not found', details=_details(res, name))
        try:
            patched = apply_patch(ctype, old, body, res.qualified)
        except PatchError as exc:
            raise ApiError(exc.code, exc.message) from None
        self._check_uid(res, name, old, patched)
        new = self._merge_sub(res, old, patched, sub)
        self._validate(res, new, old)
        rv = (patched.get("metadata") or {}).get("resourceVersion")
        expect = rv if rv and rv != old["metadata"].get("resourceVersion") else None
        try:
            return col.update(ns, name, new, expect, actor=actor)
        except Conflict:
            raise ApiError(409, self._conflict_msg(res, name), "Conflict", _details(res, name)) from None

    def _replace(
        self, col: Collection, ns: str, name: str, sub: str, body: bytes
    ) -> tuple[dict[str, Any], bool]:
        res = col.res
        try:
            obj = _decode(body)
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"error decoding body: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata", {}), dict):
            raise ApiError(400, "body must be a JSON object")
        meta = obj.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise ApiError(400, "the name of the object does not match the name on the URL")
        old = col.get(ns, name)
        if old is None:
            raise ApiError(404, f'{res.qualified} "{name}" not found', details=_details(res, name))
        self._check_uid(res, name, old, obj)
        new = self._merge_sub(res, old, obj, sub)
        self._validate(res, new, old)
        try:
            return col.update(ns, name, new, meta.get("resourceVersion") or None)
        except Conflict:
            raise ApiError(409, self._conflict_msg(res, name), "Conflict", _details(res, name)) from None

    @staticmethod
    def _check_uid(res: Resource, name: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """A write naming a UID is a precondition: it applies only to that incarnation of the object (a
        pod recreated under the same name has another UID), as the real API server enforces."""
        want = (new.get("metadata") or {}).get("uid")
        have = old["metadata"].get("uid")
        if want and want != have:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {res.qualified} "{name}": Precondition failed: '
                f"UID in precondition: {want}, UID in object meta: {have}",
                "Conflict",
                _details(res, name),
            )

    @staticmethod
    def _conflict_msg(res: Resource, name: str) -> str:
        return (
            f'Operation cannot be fulfilled on {res.qualified} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again"
        )

    @staticmethod
    def _validate(res: Resource, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        """The few validations that matter to ehc: well-formed pod conditions, an EndpointSlice's
        required and immutable ``addressType``."""
        if res.kind == "EndpointSlice":
            at = obj.get("addressType")
            if at not in _ADDRESS_TYPES:
                why = (
                    "Required value"
                    if at is None
                    else f'Unsupported value: {at!r}: supported values: "FQDN", "IPv4", "IPv6"'
                )
                raise ApiError(422, f"EndpointSlice.discovery.k8s.io is invalid: addressType: {why}")
            if old is not None and old.get("addressType") != at:
                raise ApiError(
                    422,
                    f"EndpointSlice.discovery.k8s.io is invalid: addressType: Invalid value: {at!r}: "
                    "field is immutable",
                )
            return
        if res.plural != "pods":
            return
        status = obj.get("status")
        if status is None:
            return
        if not isinstance(status, dict):
            raise ApiError(422, "Pod is invalid: status: must be an object")
        conds = status.get("conditions")
        if conds is None:
            return
        if not isinstance(conds, list):
            raise ApiError(422, "Pod is invalid: status.conditions: must be a list")
        seen = set()
        for i, c in enumerate(conds):
            if not isinstance(c, dict) or not isinstance(c.get("type"), str) or not c["type"]:
                raise ApiError(422, f"Pod is invalid: status.conditions[{i}].type: Required value")
            if c.get("status") not in _CONDITION_STATUSES:
                raise ApiError(
                    422,
                    f"Pod is invalid: status.conditions[{i}].status: Unsupported value: {c.get('status')!r}: "
                    'supported values: "False", "True", "Unknown"',
                )
            if c["type"] in seen:
                raise ApiError(
                    422, f"Pod is invalid: status.conditions[{i}].type: Duplicate value: {c['type']!r}"
                )
            seen.add(c["type"])

    # -- discovery ----------------------------------------------------------------------------
    def _discovery(self, path: str) -> web.Response | None:
        p = path.rstrip("/") or "/"
        if p == "/version":
            return _json(_encode(SERVER_VERSION))
        if p in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if p == "/api":
            return _json(
                _encode(
                    {
                        "kind": "APIVersions",
                        "versions": ["v1"],
                        "serverAddressByClientCIDRs": [
                            {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                        ],
                    }
                )
            )
        groups = sorted({r.group for r in RESOURCES if r.group})
        if p == "/apis":
            return _json(
                _encode(
                    {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in groups]}
                )
            )
        if p.startswith("/apis/") and p.count("/") == 2 and p[6:] in groups:
            return _json(_encode(self._group(p[6:])))
        if p == "/api/v1":
            return _json(self._resource_list("", "v1"))
        if p.startswith("/apis/") and p.count("/") == 3:
            _, _, g, v = p.split("/")
            if g in groups and v == "v1":
                return _json(self._resource_list(g, v))
        return None

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        gv = {"groupVersion": f"{group}/v1", "version": "v1"}
        return {
            "kind": "APIGroup",
            "apiVersion": "v1",
            "name": group,
            "versions": [gv],
            "preferredVersion": gv,
        }

    @staticmethod
    def _resource_list(group: str, version: str) -> bytes:
        resources: list[dict[str, Any]] = []
        for r in RESOURCES:
            if r.group != group or r.version != version:
                continue
            entry: dict[str, Any] = {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": list(r.verbs),
            }
            if r.short_names:
                entry["shortNames"] = list(r.short_names)
            resources.append(entry)
            resources.extend(
                {"name": f"{r.plural}/{s}", "singularName": "", "namespaced": r.namespaced, "kind": r.kind,
                 "verbs": ["get", "patch", "update"]}
                for s in r.subresources
            )  # fmt: skip
        gv = f"{group}/{version}" if group else version
        return _encode(
            {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
        )
