"""Node witnesses: each node's own address (its InternalIP), which the worker holding the node's
targets checks every heartbeat when ``EHC_NODE_WITNESS`` is on.  Not a source of targets: nothing is
written on nodes; their answers only tell the engine that a node is alive, their silence where to look.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable

from ehc.kube.model import Node
from ehc.kube.watch import Resource, key_of

log = logging.getLogger(__name__)

NODES: Resource[Node] = Resource("", "v1", "nodes", "node", Node)


class NodeWitnesses:
    """The watched nodes' addresses; ``on_change({node: ip})`` hears of each change ("" when gone)."""

    def __init__(self, on_change: Callable[[dict[str, str]], None]) -> None:
        self._on_change = on_change
        self._ips: dict[str, str] = {}
        self._keys: dict[str, str] = {}  # watch key -> node name
        self._warned: set[str] = set()

    def addresses(self) -> dict[str, str]:
        return dict(self._ips)

    def page(self, nodes: list[Node]) -> None:
        self._tell({name: ip for node in nodes for name, ip in [self._update(node)]})

    def event(self, kind: str, node: Node) -> None:
        if kind == "DELETED":
            self._keys.pop(key_of(node), None)
            self._tell({node.metadata.name: ""})
        else:
            self._tell(dict([self._update(node)]))

    def snapshot(self, seen: set[str]) -> None:
        self._tell({self._keys.pop(key): "" for key in list(self._keys.keys() - seen)})

    def _update(self, node: Node) -> tuple[str, str]:
        name, ip = node.metadata.name, node.internal_ip
        self._keys[key_of(node)] = name
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            if name not in self._warned:
                self._warned.add(name)
                log.warning(
                    "node %s has no usable InternalIP (%r): its pods are judged without a witness", name, ip
                )
            return name, ""
        self._warned.discard(name)
        return name, ip

    def _tell(self, changes: dict[str, str]) -> None:
        changed = {n: ip for n, ip in changes.items() if self._ips.get(n, "") != ip}
        for n, ip in changed.items():
            if ip:
                self._ips[n] = ip
            else:
                self._ips.pop(n, None)
        if changed:
            self._on_change(changed)
