"""The one write the address sources make: a JSON patch of an EndpointSlice or Endpoints object,
under a ``test`` of the resourceVersion it was planned against.

Readiness lives inside lists without a merge key, so changing one address is a read-modify-write.
A JSON patch keeps it small (only the entries that change) and the ``test`` makes it optimistic: it
lands on exactly the version it was computed from, or the API server refuses it (422, or 409).
Then the object is read again and the plan made again from what it now holds, so the owner's edit
meanwhile survives, an address the owner removed is not written back, and a write that is no longer
needed is not sent.  The freshest known version (the watch's, or the answer to ehc's own last write,
which the watch may not show yet) is the first base, so the common case is one request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic

from kubernetes_asyncio.client import ApiClient

from ehc.kube.model import T
from ehc.kube.request import ApiError, request
from ehc.sources.endpoints.kinds import AddressKind
from ehc.sources.endpoints.readiness import Op, Want

log = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"
ATTEMPTS = 3
"""Plans tried against fresh versions before giving up until the next resync: an object rewritten
this often is being fought over, and a louder ehc would only add to it."""


@dataclass(slots=True)
class ReadinessPatch(Generic[T]):
    """What one object should show (``want``); ``base()`` gives the freshest known version of it and
    ``seen(obj)`` hears of every newer one this write reads or makes.  After it lands, ``changed``
    holds the addresses it flipped (empty when the object already showed ``want``)."""

    kind: AddressKind[T]
    namespace: str
    name: str
    uid: str
    want: Want
    base: Callable[[], T]
    seen: Callable[[T], None]
    changed: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind.name}/{self.namespace}/{self.name}"

    @property
    def urgent(self) -> bool:
        """It takes an address out of service: ejections go first."""
        return not all(self.want.values())

    @property
    def summary(self) -> str:
        out = [ip for ip, ok in self.want.items() if not ok]
        head = ", ".join(out[:3]) + (f" and {len(out) - 3} more" if len(out) > 3 else "")
        return f"{len(out)} of {len(self.want)} address(es) not ready" + (f": {head}" if out else "")

    async def send(self, api: ApiClient, timeout: float) -> None:
        decode = self.kind.decode
        path = self.kind.path(self.namespace, self.name)
        obj: T | None = self.base()
        for attempt in range(ATTEMPTS):
            if obj is None:
                obj = decode(await request(api, "GET", path, timeout=timeout))
                if self.uid and obj.metadata.uid != self.uid:
                    raise ApiError(404, "NotFound", f"{self.key} was deleted and created again")
                self.seen(obj)
            ops, changed = self.kind.plan(obj, self.want)
            if not ops:
                self.changed = []
                return
            test: Op = {
                "op": "test",
                "path": "/metadata/resourceVersion",
                "value": obj.metadata.resourceVersion,
            }
            try:
                answer = await request(
                    api, "PATCH", path, body=[test, *ops], content_type=JSON_PATCH, timeout=timeout
                )
            except ApiError as err:
                if err.status not in (409, 422) or attempt == ATTEMPTS - 1:
                    raise
                log.debug("%s changed under ehc's write (%s); reading it again", self.key, err)
                obj = None
                continue
            self.seen(decode(answer))
            self.changed = changed
            return
