"""The two kinds of object a selectorless Service routes through, each as one record: where it lives
in the API, how its items decode, which of its addresses are checked, what it shows and how to
patch it.  The source, the writer and the watch read these and know no kind themselves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic

import msgspec

from ehc.kube.model import Endpoints, EndpointSlice, T
from ehc.kube.request import api_path
from ehc.kube.watch import Resource
from ehc.sources.endpoints.readiness import (
    Op,
    Want,
    endpoints_patch,
    endpoints_shows,
    slice_patch,
    slice_shows,
)
from ehc.sources.endpoints.selection import (
    ENDPOINTS,
    OPT_IN_LABEL,
    SLICE,
    Selection,
    select_endpoints,
    select_slice,
)
from ehc.wire.messages import Health


@dataclass(frozen=True)
class AddressKind(Generic[T]):
    name: str  # SLICE | ENDPOINTS, also the first part of every key of this kind
    group: str
    version: str
    plural: str
    item: type[T]
    select: Callable[[T], Selection]
    shows: Callable[[T], dict[str, Health]]
    plan: Callable[[T, Want], tuple[list[Op], list[str]]]
    decode: Callable[[bytes], T] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "decode", msgspec.json.Decoder(self.item).decode)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str) -> str:
        return api_path(self.group, self.version, self.plural, namespace=namespace, name=name)

    def resource(self, namespace: str | None = None) -> Resource[T]:
        """The opted-in objects, selected by the API server (of one namespace, or all)."""
        return Resource(
            self.group, self.version, self.plural, self.name, self.item,
            namespace=namespace or None, label_selector=f"{OPT_IN_LABEL}=true",
        )  # fmt: skip


SLICES: AddressKind[EndpointSlice] = AddressKind(
    SLICE, "discovery.k8s.io", "v1", "endpointslices", EndpointSlice, select_slice, slice_shows, slice_patch
)
ENDPOINTS_KIND: AddressKind[Endpoints] = AddressKind(
    ENDPOINTS, "", "v1", "endpoints", Endpoints, select_endpoints, endpoints_shows, endpoints_patch
)
KINDS = (SLICES, ENDPOINTS_KIND)
