"""What an EndpointSlice or Endpoints object shows for each address, and the JSON patch that makes it
show what ehc wants.

ehc owns readiness of opted-in objects, nothing else:

- **EndpointSlice**: an unhealthy address gets ``ready: false`` and ``serving: false`` (some data
  planes keep routing to ``ready: false, serving: true``); a healthy one ``serving: true`` and
  ``ready: true`` unless it is terminating (the API's rule: a terminating endpoint is never ready).
  ``terminating`` is the owner's and is written back as it was.  ``nil`` reads as true, as
  kube-proxy reads it.
- **Endpoints**: the address moves between ``addresses`` and ``notReadyAddresses`` of its subset with
  a JSON patch ``move``, so its ``targetRef``, ``nodeName`` and ``hostname`` travel with it untouched.

Every entry of an address is written (an address listed twice is one target with one verdict).  The
patches are plans against one version of the object: the writer sends them under a ``test`` of that
version's ``resourceVersion``, so they land on exactly the object they were computed from or not at
all (an owner's edit meanwhile is never overwritten, and an address the owner removed is never
written back).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ehc.kube.model import Endpoints, EndpointSlice, SliceEndpoint
from ehc.sources.address import probe_address
from ehc.wire.messages import Health

Op = dict[str, Any]
Want = Mapping[str, bool]
"""Address → in service (True) or out of service (False); addresses ehc has no verdict on are absent."""


def _address(endpoint: SliceEndpoint) -> str | None:
    # Consumers use an endpoint's first address only (the API says so).
    return probe_address(endpoint.addresses[0])[0] if endpoint.addresses else None


def _slice_conditions(endpoint: SliceEndpoint, healthy: bool) -> dict[str, bool]:
    terminating = endpoint.conditions.terminating
    out = {"ready": healthy and not terminating, "serving": healthy}
    if terminating is not None:
        out["terminating"] = terminating
    return out


def _slice_healthy(endpoint: SliceEndpoint) -> bool:
    c = endpoint.conditions
    return c.serving is not False and (c.ready is not False or bool(c.terminating))


def slice_shows(s: EndpointSlice) -> dict[str, Health]:
    """Each address's health as the slice shows it: healthy only if every entry of it is."""
    shown: dict[str, Health] = {}
    for endpoint in s.endpoints or []:
        address = _address(endpoint)
        if address is not None and shown.get(address) != Health.UNHEALTHY:
            shown[address] = Health.HEALTHY if _slice_healthy(endpoint) else Health.UNHEALTHY
    return shown


def slice_patch(s: EndpointSlice, want: Want) -> tuple[list[Op], list[str]]:
    """The operations that make ``s`` show ``want``, and the addresses they change."""
    ops: list[Op] = []
    changed: dict[str, None] = {}
    for i, endpoint in enumerate(s.endpoints or []):
        address = _address(endpoint)
        if address is None or address not in want:
            continue
        wanted = _slice_conditions(endpoint, want[address])
        current = endpoint.conditions
        if (current.ready is not False) == wanted["ready"] and (current.serving is not False) == wanted[
            "serving"
        ]:
            continue
        ops.append({"op": "add", "path": f"/endpoints/{i}/conditions", "value": wanted})
        changed[address] = None
    return ops, list(changed)


def endpoints_shows(e: Endpoints) -> dict[str, Health]:
    """Each address's health as the Endpoints object shows it: healthy only if it is never listed
    among ``notReadyAddresses``."""
    shown: dict[str, Health] = {}
    for subset in e.subsets or []:
        for field, health in (("addresses", Health.HEALTHY), ("notReadyAddresses", Health.UNHEALTHY)):
            for a in getattr(subset, field) or []:
                address = probe_address(a.ip)[0]
                if address is not None and shown.get(address) != Health.UNHEALTHY:
                    shown[address] = health
    return shown


def endpoints_patch(e: Endpoints, want: Want) -> tuple[list[Op], list[str]]:
    """The ``move`` operations that make ``e`` show ``want``, and the addresses they change.

    Within a subset, addresses leave ``addresses`` from the highest index down (so the lower indices
    stay valid) and are appended to ``notReadyAddresses``; then the returning ones leave
    ``notReadyAddresses`` the same way, whose original entries the appends have not shifted."""
    ops: list[Op] = []
    changed: dict[str, None] = {}
    for i, subset in enumerate(e.subsets or []):
        for source, target, healthy in (
            ("addresses", "notReadyAddresses", False),
            ("notReadyAddresses", "addresses", True),
        ):
            moving = [
                j
                for j, a in enumerate(getattr(subset, source) or [])
                if (address := probe_address(a.ip)[0]) is not None and want.get(address) is healthy
            ]
            if not moving:
                continue
            if not getattr(subset, target):  # absent or empty: a list to append to
                ops.append({"op": "add", "path": f"/subsets/{i}/{target}", "value": []})
            for j in reversed(moving):
                ops.append(
                    {"op": "move", "from": f"/subsets/{i}/{source}/{j}", "path": f"/subsets/{i}/{target}/-"}
                )
                changed[str(probe_address(getattr(subset, source)[j].ip)[0])] = None
    return ops, list(changed)
