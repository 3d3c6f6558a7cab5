"""Replicas find each other through the API server alone: each keeps a *member Lease* of its own.

A member Lease lives in ehc's namespace, is labelled ``endpoint-health-checker.io/member: <group>``
(the group is the leader Lease's name, so two installations in one namespace never mix), names its
replica in ``holderIdentity`` and the address peers reach it at in the annotation
``endpoint-health-checker.io/peer-address``.  Every replica renews its own and lists the group's every
``renew_every``; a member counts as live while its record (renewTime, holder, address) has changed
within its ``leaseDurationSeconds`` *by our own clock since we saw it change*, as client-go's leader
election judges a lease, so no two replicas' clocks are ever compared.  A member that stops renewing
is forgotten; one silent for ``_COLLECT_AFTER`` is deleted by whoever notices, and a replica that
stops deletes its own.

Failures are said, not swallowed: each failed request is logged (at most once per ``_SAY_EVERY``,
with what to grant for a 403) and counted in ``errors``; until a list succeeds, there are no peers,
which costs the second opinion and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
from kubernetes_asyncio.client import ApiClient

from ehc.kube.leader import micro_time
from ehc.kube.request import ApiError, api_path, request
from ehc.wire.logs import Every

log = logging.getLogger(__name__)

MEMBER_LABEL = "endpoint-health-checker.io/member"
ADDRESS_ANNOTATION = "endpoint-health-checker.io/peer-address"
_SAY_EVERY = 30.0
_COLLECT_AFTER = 60.0
"""A member Lease unchanged for this long (by our clock) belongs to a replica that is gone: deleted."""
_HINT_403 = (
    "ehc's Role in its own namespace must grant leases get, list, create, update and delete "
    "(the Helm chart and the kustomize base carry it)"
)
_NOT_NAME = re.compile(r"[^a-z0-9.-]+")


def member_lease_name(group: str, identity: str) -> str:
    """``<group>-<identity>``, made a valid object name (lowercase, at most 253 characters)."""
    name = _NOT_NAME.sub("-", f"{group}-{identity}".lower()).strip("-.")
    return name[:253].rstrip("-.")


class _Meta(msgspec.Struct):
    name: str = ""
    annotations: dict[str, str] | None = None


class _Spec(msgspec.Struct):
    holderIdentity: str | None = None  # the API's field names
    leaseDurationSeconds: int | None = None
    renewTime: str | None = None


class _Lease(msgspec.Struct):
    metadata: _Meta = msgspec.field(default_factory=_Meta)
    spec: _Spec = msgspec.field(default_factory=_Spec)


class _LeaseList(msgspec.Struct):
    items: list[_Lease] | None = None


_decode_list = msgspec.json.Decoder(_LeaseList).decode


class _Seen(msgspec.Struct):
    record: tuple[Any, ...]
    since: float  # our clock when the record last changed
    duration: float
    identity: str
    address: str


class Membership:
    """Keeps this replica's member Lease and the live members of its group."""

    def __init__(
        self,
        api: ApiClient,
        *,
        namespace: str,
        group: str,
        identity: str,
        address: str,
        lease_duration: float = 4.0,
        renew_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._clock = clock
        self.namespace = namespace
        self.group = group
        self.identity = identity
        self.address = address
        self.name = member_lease_name(group, identity)
        self.lease_duration = lease_duration
        self.renew_every = renew_every
        self._collection = api_path("coordination.k8s.io", "v1", "leases", namespace=namespace)
        self._path = api_path("coordination.k8s.io", "v1", "leases", namespace=namespace, name=self.name)
        self._obj: dict[str, Any] | None = None
        self._seen: dict[str, _Seen] = {}  # lease name -> what we saw of it
        self._saying = Every(_SAY_EVERY, clock)
        self.errors = 0
        self.last_error = ""

    def peers(self) -> dict[str, str]:
        """The live members other than this replica: identity → address."""
        now = self._clock()
        return {
            s.identity: s.address
            for s in self._seen.values()
            if s.identity != self.identity and s.address and now - s.since < s.duration
        }

    def forget(self, identity: str) -> None:
        """Treat ``identity`` as gone until its lease is renewed again (a leader whose lease expired)."""
        for s in self._seen.values():
            if s.identity == identity:
                s.since = -math.inf

    async def run(self) -> None:
        """Renew our lease and look at the group's, every ``renew_every``, until cancelled."""
        while True:
            for step in (self._renew, self._look):
                try:
                    async with asyncio.timeout(self.renew_every * 2):
                        await step()
                except ApiError as exc:
                    self._failed(str(exc), _HINT_403 if exc.status == 403 else "")
                except TimeoutError:
                    self._failed(f"no answer within {self.renew_every * 2:g}s")
                except msgspec.DecodeError as exc:
                    self._failed(f"unreadable answer: {exc}")
                except Exception as exc:  # never the end of ehc: without members, no second opinion
                    log.warning("member leases: unexpected error", exc_info=True)
                    self._failed(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.renew_every)

    async def leave(self) -> None:
        """Delete our lease (best effort): peers stop asking at once instead of after a lease duration."""
        with contextlib.suppress(Exception):
            await request(self._api, "DELETE", self._path, timeout=2.0)

    # ---- our lease --------------------------------------------------------------------------------

    def _body(self, base: dict[str, Any] | None) -> dict[str, Any]:
        meta = dict((base or {}).get("metadata") or {})
        meta.update(name=self.name, namespace=self.namespace)
        meta["labels"] = {**(meta.get("labels") or {}), MEMBER_LABEL: self.group}
        meta["annotations"] = {**(meta.get("annotations") or {}), ADDRESS_ANNOTATION: self.address}
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": math.ceil(self.lease_duration),
            "renewTime": micro_time(),
        }
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def _renew(self) -> None:
        if self._obj is not None:
            try:
                self._obj = await self._send("PUT", self._path, self._body(self._obj))
                return
            except ApiError as exc:
                if exc.status not in (404, 409):
                    raise
        try:
            self._obj = await self._send("POST", self._collection, self._body(None))
        except ApiError as exc:
            if exc.status != 409:
                raise
            # Ours from an earlier run of this replica: take it over from its current version.
            self._obj = await self._send("GET", self._path, None)
            self._obj = await self._send("PUT", self._path, self._body(self._obj))

    async def _send(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        data = await request(self._api, method, path, body=body, timeout=self.renew_every * 2)
        return msgspec.json.decode(data, type=dict[str, Any])

    # ---- the group's leases -----------------------------------------------------------------------

    async def _look(self) -> None:
        query = {"labelSelector": f"{MEMBER_LABEL}={self.group}"}
        data = await request(self._api, "GET", self._collection, query=query, timeout=self.renew_every * 2)
        now = self._clock()
        seen: dict[str, _Seen] = {}
        for item in _decode_list(data).items or ():
            name, spec = item.metadata.name, item.spec
            identity = spec.holderIdentity or ""
            address = (item.metadata.annotations or {}).get(ADDRESS_ANNOTATION) or ""
            record = (spec.renewTime, identity, address)
            duration = float(spec.leaseDurationSeconds or self.lease_duration)
            old = self._seen.get(name)
            since = old.since if old is not None and old.record == record else now
            seen[name] = _Seen(record, since, duration, identity, address)
            if identity != self.identity and now - since > _COLLECT_AFTER:
                await self._collect(name, identity)
        joined = {s.identity for s in seen.values()} - {s.identity for s in self._seen.values()}
        for identity in sorted(joined - {self.identity}):
            log.info("peer %s joined (member lease in %s)", identity, self.namespace)
        self._seen = seen

    async def _collect(self, name: str, identity: str) -> None:
        log.info(
            "member %s has not renewed its lease for %.0fs: deleting lease %s", identity, _COLLECT_AFTER, name
        )
        path = api_path("coordination.k8s.io", "v1", "leases", namespace=self.namespace, name=name)
        try:
            await request(self._api, "DELETE", path, timeout=self.renew_every * 2)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def _failed(self, what: str, hint: str = "") -> None:
        self.errors += 1
        self.last_error = what
        if (more := self._saying.due()) is None:
            return
        log.warning(
            "member lease %s/%s: %s%s%s; without it there is no second opinion",
            self.namespace, self.name, what, f"; {hint}" if hint else "", more,
        )  # fmt: skip
