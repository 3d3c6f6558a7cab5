"""A stand-in for kube-controller-manager's EndpointSlice controller, so a harness can measure when a
pod's address left its Service's slice after ehc marked the pod NotReady.

For every Service with a selector it keeps the slices of the matching pods, written from a store hook
as each pod or Service write lands (in the API server's own loop, through ``ApiServer.write``, so the
write log records each slice write under ``ACTOR``). As the real controller: endpoints are grouped by
address family and resolved ports, at most ``max_endpoints`` per slice; a slice is written only when
its content changes; slices carry the Service's labels, ``kubernetes.io/service-name``, ``managed-by:
endpointslice-controller.k8s.io`` and an ownerReference to it; a managed slice someone else changes or
deletes is written back. Slices it did not make and Services without a selector are never touched.
Unlike it: writes are synchronous and slices never rebalanced, a Service without endpoints gets no
placeholder slice, and a Service that loses its selector loses its slices.

Cost: a pod write costs a few label lookups (Services are indexed by one selector label), one endpoint
built for each Service selecting the pod, and a write of one slice (at most ``max_endpoints`` long)
only when the endpoint changed. That write shares the unchanged endpoints with the previous version
and splices their JSON, kept encoded, into the stored object's: encoding a whole slice afresh (cold
in the CPU cache) cost several times more than the rest of the write.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ehc.sim.apiserver import ApiServer

ACTOR = "endpointslice-controller"
CONTROLLER = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
MAX_ENDPOINTS = 100  # kube-controller-manager's --max-endpoints-per-slice default

Key = tuple[str, str]
Port = tuple[str, str, int, str | None]  # name, protocol, number, appProtocol
Group = tuple[str, tuple[Port, ...]]  # addressType, ports: the endpoints one slice may hold
_encode = msgspec.json.Encoder().encode


@dataclass(eq=False, slots=True)
class _Slice:
    name: str
    group: Group
    endpoints: dict[Key, tuple[dict[str, Any], msgspec.Raw]] = field(
        default_factory=dict
    )  # pod -> endpoint, JSON


@dataclass(eq=False, slots=True)
class _Service:
    key: Key
    obj: dict[str, Any]
    selector: dict[str, str]
    slices: list[_Slice] = field(default_factory=list)
    where: dict[Key, _Slice] = field(default_factory=dict)  # pod -> the slice holding it
    dirty: dict[_Slice, None] = field(default_factory=dict)  # slices to write, in order


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _container_port(pod: dict[str, Any], name: str, protocol: str) -> int | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == name and (p.get("protocol") or "TCP") == protocol:
                return p.get("containerPort")
    return None


def _ports(service: dict[str, Any], pod: dict[str, Any]) -> tuple[Port, ...]:
    """The Service's ports as this pod serves them: a numeric targetPort, a named one resolved against
    the pod's container ports (skipped when the pod has no such port, as the real controller does), or
    the port itself without a targetPort."""
    out: list[Port] = []
    for sp in (service.get("spec") or {}).get("ports") or []:
        protocol = sp.get("protocol") or "TCP"
        target = sp.get("targetPort")
        if target is None:
            number = sp.get("port")
        elif isinstance(target, int):
            number = target
        else:
            number = _container_port(pod, target, protocol)
        if number is not None:
            out.append((sp.get("name") or "", protocol, number, sp.get("appProtocol")))
    return tuple(out)


def _endpoint(service: dict[str, Any], pod: dict[str, Any]) -> tuple[Group, dict[str, Any]] | None:
    """The pod's slice group and endpoint, or None when it is no endpoint (no IP, or finished)."""
    status = pod.get("status") or {}
    ip = status.get("podIP")
    if not ip or status.get("phase") in ("Succeeded", "Failed"):
        return None
    meta = pod["metadata"]
    serving = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    terminating = meta.get("deletionTimestamp") is not None
    publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    ep: dict[str, Any] = {
        "addresses": [ip],
        "conditions": {
            "ready": publish or (serving and not terminating),
            "serving": serving,
            "terminating": terminating,
        },
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        ep["nodeName"] = node
    ep["targetRef"] = {
        "kind": "Pod",
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta.get("uid"),
    }
    return ("IPv6" if ":" in ip else "IPv4", _ports(service, pod)), ep


class SliceController:
    """Keeps the EndpointSlices of Services with selectors; ``close()`` stops it (slices stay)."""

    def __init__(self, api: ApiServer, max_endpoints: int = MAX_ENDPOINTS) -> None:
        self.api = api
        self.max_endpoints = max_endpoints
        self._services: dict[Key, _Service] = {}
        # (namespace, label, value) -> Services whose selector's first label is that one
        self._index: dict[tuple[str, str, str], dict[Key, None]] = {}
        self._member_of: dict[Key, dict[Key, None]] = {}  # pod -> Services it is an endpoint of
        self._pods: dict[tuple[str, str, str], dict[Key, None]] = {}  # (namespace, label, value) -> pods
        self._owned: dict[Key, tuple[_Service, _Slice]] = {}  # slice (namespace, name) -> owner
        self._hooks = (
            (api.pods, self._on_pod),
            (api.services, self._on_service),
            (api.endpointslices, self._on_slice),
        )
        for col, hook in self._hooks:
            col.hooks.append(hook)
        self._plain_encode = api.endpointslices.encode
        api.endpointslices.encode = self._encode
        for pod, _raw in api.pods.objects.values():
            self._index_pod(pod, True)
        for svc in [obj for obj, _raw in api.services.objects.values()]:
            self._on_service("ADDED", None, svc, "sim")

    def close(self) -> None:
        for col, hook in self._hooks:
            if hook in col.hooks:
                col.hooks.remove(hook)
        self.api.endpointslices.encode = self._plain_encode

    # -- store hooks --------------------------------------------------------------------------
    def _on_pod(self, typ: str, old: dict[str, Any] | None, new: dict[str, Any], actor: str) -> None:
        meta = new["metadata"]
        key = (meta["namespace"], meta["name"])
        labels = meta.get("labels") or {}
        if typ != "MODIFIED" or (old is not None and (old["metadata"].get("labels") or {}) != labels):
            if old is not None:
                self._index_pod(old, False)
            if typ != "DELETED":
                self._index_pod(new, True)
        affected = dict(self._member_of.get(key, {}))  # and those that may select it now:
        pod = None if typ == "DELETED" else new
        if pod is not None:
            for k, v in labels.items():
                affected.update(self._index.get((key[0], k, v), {}))
        for skey in affected:
            svc = self._services[skey]
            self._sync_pod(svc, key, pod)
            self._flush(svc)

    def _on_service(self, typ: str, old: dict[str, Any] | None, new: dict[str, Any], actor: str) -> None:
        key = (new["metadata"]["namespace"], new["metadata"]["name"])
        svc = self._services.get(key)
        selector = None if typ == "DELETED" else (new.get("spec") or {}).get("selector")
        if svc is not None and svc.selector != selector:
            self._drop(svc)
            svc = None
        if not selector:
            return
        if (
            svc is not None
            and old is not None
            and old.get("spec") == new.get("spec")
            and old["metadata"].get("labels") == new["metadata"].get("labels")
        ):
            svc.obj = new  # e.g. a status write: nothing its slices show has changed
            return
        if svc is None:
            svc = self._services[key] = _Service(key, new, dict(selector))
            first = min(selector.items())
            self._index.setdefault((key[0], *first), {})[key] = None
        svc.obj = new
        candidates = dict.fromkeys(svc.where)
        candidates.update(self._pods.get((key[0], *min(selector.items())), {}))
        for pkey in candidates:
            self._sync_pod(svc, pkey, self.api.pods.get(*pkey))
        svc.dirty.update(dict.fromkeys(svc.slices))  # labels, owner or ports may have changed
        self._flush(svc)

    def _on_slice(self, typ: str, old: dict[str, Any] | None, new: dict[str, Any], actor: str) -> None:
        """Someone else wrote or deleted a slice this controller manages: write it back."""
        if actor == ACTOR:
            return
        owned = self._owned.get((new["metadata"]["namespace"], new["metadata"]["name"]))
        if owned is not None:
            svc, sl = owned
            svc.dirty[sl] = None
            self._flush(svc)

    # -- state --------------------------------------------------------------------------------
    def _index_pod(self, pod: dict[str, Any], add: bool) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        for k, v in (meta.get("labels") or {}).items():
            if add:
                self._pods.setdefault((key[0], k, v), {})[key] = None
            elif (pods := self._pods.get((key[0], k, v))) is not None:
                pods.pop(key, None)
                if not pods:
                    del self._pods[(key[0], k, v)]

    def _sync_pod(self, svc: _Service, key: Key, pod: dict[str, Any] | None) -> None:
        """Bring the pod's endpoint in ``svc``'s slices up to date, marking the slices it touches."""
        want = None
        if pod is not None and _matches(svc.selector, pod["metadata"].get("labels") or {}):
            want = _endpoint(svc.obj, pod)
        cur = svc.where.get(key)
        if cur is not None and want is not None and cur.group == want[0]:
            if cur.endpoints[key][0] != want[1]:
                cur.endpoints[key] = (want[1], msgspec.Raw(_encode(want[1])))
                svc.dirty[cur] = None
            return
        if cur is not None:
            del cur.endpoints[key], svc.where[key]
            svc.dirty[cur] = None
            self._unmember(key, svc.key)
        if want is None:
            return
        group, ep = want
        sl = next((s for s in svc.slices if s.group == group and len(s.endpoints) < self.max_endpoints), None)
        if sl is None:
            sl = _Slice(self._new_name(svc, group), group)
            svc.slices.append(sl)
            self._owned[(svc.key[0], sl.name)] = (svc, sl)
        sl.endpoints[key] = (ep, msgspec.Raw(_encode(ep)))
        svc.where[key] = sl
        svc.dirty[sl] = None
        self._member_of.setdefault(key, {})[svc.key] = None

    def _unmember(self, pod: Key, service: Key) -> None:
        services = self._member_of[pod]
        del services[service]
        if not services:
            del self._member_of[pod]

    def _new_name(self, svc: _Service, group: Group) -> str:
        """``<service>-<5 hex>``, the same for the same Service, group and ordinal on every run, and
        never a name another writer's slice already has."""
        ns, name = svc.key
        for n in itertools.count():
            suffix = hashlib.blake2b(repr((group, n)).encode(), digest_size=3).hexdigest()[:5]
            candidate = f"{name}-{suffix}"
            if (ns, candidate) not in self._owned and self.api.endpointslices.get(ns, candidate) is None:
                return candidate
        raise AssertionError("unreachable")

    def _drop(self, svc: _Service) -> None:
        """Stop managing ``svc`` and delete its slices (it was deleted or lost its selector)."""
        index_key = (svc.key[0], *min(svc.selector.items()))
        del self._index[index_key][svc.key]
        if not self._index[index_key]:
            del self._index[index_key]
        del self._services[svc.key]
        for key in svc.where:
            self._unmember(key, svc.key)
        for sl in svc.slices:
            sl.endpoints.clear()
        svc.where.clear()
        svc.dirty.update(dict.fromkeys(svc.slices))
        self._flush(svc)

    # -- writes -------------------------------------------------------------------------------
    def _flush(self, svc: _Service) -> None:
        """Write each marked slice whose stored content differs; delete the emptied ones."""
        ns = svc.key[0]
        col = self.api.endpointslices
        while svc.dirty:
            sl = next(iter(svc.dirty))
            del svc.dirty[sl]
            stored = col.get(ns, sl.name)
            if not sl.endpoints:
                svc.slices.remove(sl)
                del self._owned[(ns, sl.name)]
                if stored is not None:
                    self.api.write(col, "DELETE", ns, sl.name, None, ACTOR)
                continue
            want = self._manifest(svc, sl)
            if stored is None:
                self.api.write(col, "POST", ns, sl.name, want, ACTOR)
            elif any(stored.get(k) != want[k] for k in ("addressType", "endpoints", "ports")) or any(
                stored["metadata"].get(k) != want["metadata"][k] for k in ("labels", "ownerReferences")
            ):
                self.api.write(col, "PUT", ns, sl.name, want, ACTOR)

    def _encode(self, obj: dict[str, Any]) -> bytes:
        """The stored JSON of a slice; one this controller wrote, as it wrote it, gets its endpoints'
        kept JSON spliced in."""
        meta = obj["metadata"]
        owned = self._owned.get((meta.get("namespace"), meta.get("name")))
        eps = obj.get("endpoints")
        if owned is not None and isinstance(eps, list) and len(eps) == len(owned[1].endpoints):
            kept = owned[1].endpoints.values()
            if all(ep is mine for ep, (mine, _raw) in zip(eps, kept, strict=True)):
                return _encode({**obj, "endpoints": [raw for _ep, raw in kept]})
        return self._plain_encode(obj)

    @staticmethod
    def _manifest(svc: _Service, sl: _Slice) -> dict[str, Any]:
        meta = svc.obj["metadata"]
        ns, name = svc.key
        ports = []
        for pname, protocol, number, app in sl.group[1]:
            port: dict[str, Any] = {"name": pname, "protocol": protocol, "port": number}
            if app:
                port["appProtocol"] = app
            ports.append(port)
        owner = {"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta.get("uid"),
                 "controller": True, "blockOwnerDeletion": True}  # fmt: skip
        return {
            "metadata": {
                "name": sl.name,
                "namespace": ns,
                "labels": {**(meta.get("labels") or {}), SERVICE_NAME: name, MANAGED_BY: CONTROLLER},
                "ownerReferences": [owner],
            },
            "addressType": sl.group[0],
            "endpoints": [ep for ep, _raw in sl.endpoints.values()],
            "ports": ports,
        }
