"""The few fields of a Pod that ehc reads, as msgspec Structs decoded straight from the API's JSON,
and the generic envelopes around any resource: lists, watch events, bookmarks, error Statuses.

The generated client models build a deep object graph for every field of every pod; at thousands of
pods per second that is the coordinator's bottleneck.  These structs keep only what ehc needs and
ignore everything else while decoding.
"""

from __future__ import annotations

import time
from typing import Generic, Protocol, TypeVar

import msgspec

ANNOTATION = "endpoint-health-checker.io/enabled"
PROBE_ANNOTATION = "endpoint-health-checker.io/probe"
GATE = "endpointHealthCheckSuccess"
READY = "Ready"


def rfc3339(wall: float) -> str:
    """A Kubernetes ``Time`` (second precision, UTC) for a ``time.time()`` value."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class Condition(msgspec.Struct, omit_defaults=True):
    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    lastTransitionTime: str | None = None


class ContainerPort(msgspec.Struct):
    containerPort: int
    name: str | None = None
    protocol: str = "TCP"


class PortAction(msgspec.Struct):
    """A tcpSocket probe: a port by number or by name."""

    port: int | str


class HttpHeader(msgspec.Struct):
    name: str
    value: str = ""


class HttpGetAction(msgspec.Struct):
    port: int | str
    path: str | None = None
    host: str | None = None
    scheme: str | None = None
    httpHeaders: list[HttpHeader] | None = None


class GrpcAction(msgspec.Struct):
    port: int | str  # the API allows a number only; a name is reported, not probed
    service: str | None = None


class Probe(msgspec.Struct):
    tcpSocket: PortAction | None = None
    httpGet: HttpGetAction | None = None
    grpc: GrpcAction | None = None


class Container(msgspec.Struct):
    name: str
    ports: list[ContainerPort] = []
    readinessProbe: Probe | None = None
    livenessProbe: Probe | None = None


class ReadinessGate(msgspec.Struct):
    conditionType: str


class PodSpec(msgspec.Struct):
    nodeName: str | None = None
    containers: list[Container] = []
    readinessGates: list[ReadinessGate] = []


class PodIP(msgspec.Struct):
    ip: str


class PodStatus(msgspec.Struct):
    phase: str | None = None
    podIP: str | None = None
    podIPs: list[PodIP] = []
    conditions: list[Condition] = []


class ObjectMeta(msgspec.Struct):
    name: str
    namespace: str = "default"
    uid: str = ""
    resourceVersion: str = ""
    annotations: dict[str, str] = {}
    labels: dict[str, str] = {}
    deletionTimestamp: str | None = None


class Pod(msgspec.Struct):
    metadata: ObjectMeta
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)

    @property
    def key(self) -> str:
        return f"{self.metadata.namespace}/{self.metadata.name}"

    def condition(self, type_: str) -> Condition | None:
        for c in self.status.conditions:
            if c.type == type_:
                return c
        return None


# ---- EndpointSlices (discovery.k8s.io/v1) and Endpoints (v1): what a selectorless Service routes to --


class EndpointConditions(msgspec.Struct, omit_defaults=True):
    ready: bool | None = None  # nil counts as ready
    serving: bool | None = None
    terminating: bool | None = None


class SliceEndpoint(msgspec.Struct):
    addresses: list[str] = []
    conditions: EndpointConditions = msgspec.field(default_factory=EndpointConditions)
    nodeName: str | None = None
    zone: str | None = None


class EndpointPort(msgspec.Struct):
    port: int | None = None  # nil: every port
    protocol: str | None = "TCP"
    name: str | None = None


class EndpointSlice(msgspec.Struct):
    metadata: ObjectMeta
    addressType: str = "IPv4"
    endpoints: list[SliceEndpoint] | None = None
    ports: list[EndpointPort] | None = None


class EndpointAddress(msgspec.Struct):
    ip: str
    nodeName: str | None = None


class EndpointSubset(msgspec.Struct):
    addresses: list[EndpointAddress] | None = None
    notReadyAddresses: list[EndpointAddress] | None = None
    ports: list[EndpointPort] | None = None


class Endpoints(msgspec.Struct):
    metadata: ObjectMeta
    subsets: list[EndpointSubset] | None = None


class NodeAddress(msgspec.Struct):
    type: str
    address: str


class NodeStatus(msgspec.Struct):
    addresses: list[NodeAddress] = []


class Node(msgspec.Struct):
    """A node, for its own address (the witness of its pods)."""

    metadata: ObjectMeta
    status: NodeStatus = msgspec.field(default_factory=NodeStatus)

    @property
    def internal_ip(self) -> str:
        return next((a.address for a in self.status.addresses if a.type == "InternalIP"), "")


class ListMeta(msgspec.Struct):
    resourceVersion: str = ""
    # "continue" is a Python keyword
    continue_: str | None = msgspec.field(default=None, name="continue")


class HasMetadata(Protocol):
    """What list + watch needs of any item: its name, namespace and resourceVersion."""

    @property
    def metadata(self) -> ObjectMeta: ...


T = TypeVar("T", bound=HasMetadata)


class ObjectList(msgspec.Struct, Generic[T]):
    """Any ``…List`` answer, decoded as ``ObjectList[Pod]`` and the like."""

    metadata: ListMeta
    items: list[T] = []


class WatchEvent(msgspec.Struct):
    """One line of a watch stream; ``object`` is decoded later by type (the item, or Status on ERROR)."""

    type: str
    object: msgspec.Raw


class Status(msgspec.Struct):
    """The API's error body (and a watch ERROR event's object)."""

    code: int = 0
    reason: str = ""
    message: str = ""


class Bookmark(msgspec.Struct):
    metadata: ListMeta


class Named(msgspec.Struct):
    """Just enough of any object to name it, for an object whose other fields do not decode."""

    metadata: ObjectMeta


pod_decoder = msgspec.json.Decoder(Pod)
watch_event_decoder = msgspec.json.Decoder(WatchEvent)
status_decoder = msgspec.json.Decoder(Status)
bookmark_decoder = msgspec.json.Decoder(Bookmark)
named_decoder = msgspec.json.Decoder(Named)
