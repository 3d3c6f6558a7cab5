"""Which addresses of user-managed EndpointSlices and Endpoints ehc checks, and how.

A selectorless Service routes to whatever its owner publishes by hand: an EndpointSlice
(``discovery.k8s.io/v1``) or a legacy Endpoints object (``v1``).  Such an object opts in with the
label ``endpoint-health-checker.io/enabled: "true"`` (selected server-side).  ehc never writes a slice
that the Kubernetes EndpointSlice controller or the Endpoints mirroring controller manages: they
rewrite it from pods or from the Endpoints object, so ehc's condition would be fought over, and the
pods behind a controller's slice are checked as pods.  Such a slice, opted in, is refused and says why
(a mirrored slice quietly: its label came with the Endpoints object, which ehc checks), as are the
Endpoints of a Service with a selector, which the Endpoints controller writes.

Every address becomes a target keyed by object and address, checked on each TCP port of the object
(all must accept, as for pods) or by ICMP when it has none.  The probe annotation applies where it
means something: ``tcp`` (default) or ``icmp`` (there is no readiness probe to follow).  FQDN slices
are refused: ehc probes addresses, and a name's addresses change behind it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from ehc.kube.model import ANNOTATION, PROBE_ANNOTATION, EndpointPort, Endpoints, EndpointSlice, ObjectMeta
from ehc.sources.address import probe_address
from ehc.wire.checks import Check, Icmp, Tcp
from ehc.wire.messages import Health, Target

OPT_IN_LABEL = ANNOTATION
"""The same key as the pods' annotation, as a label, so the API server selects the objects."""
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
MIRRORING_CONTROLLER = "endpointslicemirroring-controller.k8s.io"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
"""Set only by the Kubernetes Endpoints controller, on the Endpoints of a Service with a selector."""
SLICE, ENDPOINTS = "EndpointSlice", "Endpoints"


@dataclass(frozen=True, slots=True)
class AddressTarget:
    """One address of one object, with what the pipeline needs to know about it."""

    key: str  # "EndpointSlice/ns/name/10.0.0.7"
    kind: str  # SLICE | ENDPOINTS
    namespace: str
    name: str
    ip: str
    node: str
    zone: str
    checks: tuple[Check, ...]

    def probe_target(self, health: Health) -> Target:
        return Target(key=self.key, ip=self.ip, checks=self.checks, health=health, node=self.node)


@dataclass(frozen=True, slots=True)
class Selection:
    """The verdict on one object: its targets, why none (refused), and what is wrong with it."""

    targets: tuple[AddressTarget, ...]
    refused: str = ""  # why the object is not checked at all ("" when it is)
    problems: tuple[str, ...] = ()  # bad input worth a log line and an Event on the object


def opted_in(meta: ObjectMeta) -> bool:
    return meta.labels.get(OPT_IN_LABEL) == "true"


def select_slice(s: EndpointSlice) -> Selection:
    """Decide whether and how the addresses of the slice ``s`` are checked."""
    meta = s.metadata
    manager = meta.labels.get(MANAGED_BY, "")
    if manager == SLICE_CONTROLLER:
        return _refused(
            f"label {OPT_IN_LABEL}=true on a slice managed by the Kubernetes EndpointSlice controller "
            f"({MANAGED_BY}={manager}): it rewrites the slice from the Service's pods, so ehc does not; "
            "annotate the pods instead"
        )
    if manager == MIRRORING_CONTROLLER:  # the label came with the mirrored Endpoints: no mistake to report
        return Selection((), "mirrored from an Endpoints object, which is the one ehc checks and writes")
    if s.addressType not in ("IPv4", "IPv6"):
        return _refused(
            f"addressType {s.addressType}: ehc probes addresses, and a name's addresses change behind it; "
            "publish IPv4 or IPv6 slices to have them checked"
        )
    problems: list[str] = []
    checks = _checks(_probe(meta, problems), s.ports or [])
    seen: dict[str, AddressTarget] = {}
    for i, endpoint in enumerate(s.endpoints or []):
        if not endpoint.addresses:
            problems.append(f"endpoints[{i}] has no address; it is not checked")
            continue
        # Consumers use the first address (the API says so); the others are not routed to.
        address, why = probe_address(endpoint.addresses[0])
        if address is None:
            problems.append(f"endpoints[{i}] address {endpoint.addresses[0]!r} {why}; it is not checked")
        elif address not in seen:  # an address listed twice is one target; both entries are written
            seen[address] = _target(SLICE, meta, address, endpoint.nodeName, endpoint.zone, checks)
    return Selection(tuple(seen.values()), "", tuple(problems))


def select_endpoints(e: Endpoints) -> Selection:
    """Decide whether and how the addresses of the Endpoints object ``e`` are checked (ready and not)."""
    meta = e.metadata
    if TRIGGER_TIME in meta.annotations:
        return _refused(
            f"label {OPT_IN_LABEL}=true on the Endpoints of a Service with a selector (annotation "
            f"{TRIGGER_TIME}): the Endpoints controller rewrites it from the Service's pods, so ehc "
            "does not; annotate the pods instead"
        )
    problems: list[str] = []
    probe = _probe(meta, problems)
    seen: dict[str, AddressTarget] = {}
    for i, subset in enumerate(e.subsets or []):
        checks = _checks(probe, subset.ports or [])
        for field in ("addresses", "notReadyAddresses"):
            for a in getattr(subset, field) or []:
                address, why = probe_address(a.ip)
                if address is None:
                    problems.append(f"subsets[{i}].{field} ip {a.ip!r} {why}; it is not checked")
                elif address not in seen:
                    seen[address] = _target(ENDPOINTS, meta, address, a.nodeName, None, checks)
                elif seen[address].checks != checks:
                    problems.append(
                        f"ip {address} is listed in subsets with different ports; it is checked on the first"
                    )
    return Selection(tuple(seen.values()), "", tuple(problems))


def _refused(why: str) -> Selection:
    return Selection((), why, (why,))


def _probe(meta: ObjectMeta, problems: list[str]) -> str:
    probe = meta.annotations.get(PROBE_ANNOTATION, "tcp")
    if probe in ("tcp", "icmp"):
        return probe
    problems.append(
        f"annotation {PROBE_ANNOTATION}={probe!r}: an address published by hand has no readiness probe "
        "to follow; only tcp and icmp apply here, so it is probed with tcp"
    )
    return "tcp"


def _checks(probe: str, ports: list[EndpointPort]) -> tuple[Check, ...]:
    """A TCP check per TCP port (a nil port means every port: nothing to connect to), else ICMP."""
    if probe == "icmp":
        return (Icmp(),)
    numbers = sorted(
        {p.port for p in ports if p.port and (p.protocol or "TCP") == "TCP" and 0 < p.port < 65536}
    )
    return tuple(Tcp(p) for p in numbers) or (Icmp(),)


def _target(
    kind: str, meta: ObjectMeta, address: str, node: str | None, zone: str | None, checks: tuple[Check, ...]
) -> AddressTarget:
    namespace = sys.intern(meta.namespace)
    return AddressTarget(
        f"{kind}/{namespace}/{meta.name}/{address}",
        kind,
        namespace,
        meta.name,
        address,
        sys.intern(node or ""),
        sys.intern(zone or ""),
        checks,
    )
